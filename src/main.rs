//! `arcdb`: run a node with the configuration found in `arc.toml` and `ARC_*` variables.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use arcdb::config::{self, LogFormat};
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "Clustered time-series database compatible with Arc")]
struct Args {
    /// Configuration file (default: first of ./arc.toml, /etc/arc/arc.toml, ~/.arc/arc.toml).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let loaded = match config::load(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("arcdb: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(&loaded.config.log.level, loaded.config.log.format);
    if let Some(source) = &loaded.source {
        tracing::info!(file = %source.display(), "configuration loaded");
    }
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    match serve(loaded.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("arcdb: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str, format: LogFormat) {
    // openraft narrates every step at info; its warnings and errors are what operators need.
    let filter = EnvFilter::try_from_env("ARC_LOG_FILTER").unwrap_or_else(|_| {
        EnvFilter::new(format!("{},openraft=warn", level.to_ascii_lowercase()))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Console => builder.init(),
    }
}

fn serve(config: config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let (requested, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = requested.send(true);
        });
        loop {
            let mut shutdown = shutdown.clone();
            let signalled = async move {
                let _ = shutdown.wait_for(|s| *s).await;
            };
            match arcdb::node::run(config.clone(), signalled)
                .await
                .context("node failed")?
            {
                arcdb::node::RunEnd::Stopped => return Ok(()),
                arcdb::node::RunEnd::Restart => tracing::info!("starting again"),
            }
        }
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
