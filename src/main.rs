//! `arcdb`: run a node with the configuration found in `arc.toml` and `ARC_*` variables.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use arcdb::config::{self, LogFormat};
use arcdb::logging;
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "Clustered time-series database compatible with Arc")]
struct Args {
    /// Configuration file (default: first of ./arc.toml, /etc/arc/arc.toml, ~/.arc/arc.toml).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Subcommand>,
}

#[derive(clap::Subcommand)]
enum Subcommand {
    /// Exits 0 when the local server answers `GET /health` with 200 (a container HEALTHCHECK
    /// that needs no curl in the image).
    Healthcheck {
        /// The server's API port.
        #[arg(long, env = "ARC_SERVER_PORT", default_value_t = 8000)]
        port: u16,
    },
}

/// Longest a health check waits for the answer.
const HEALTHCHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Subcommand::Healthcheck { port }) = args.command {
        return healthcheck(port);
    }
    let loaded = match config::load(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("arcdb: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(&loaded.config.log.level, loaded.config.log.format);
    logging::init_node_span(&loaded.config);
    logging::enter_node_span();
    if let Some(source) = &loaded.source {
        tracing::info!(file = %source.display(), "configuration loaded");
    }
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    // Arc Enterprise deployments set it; every feature here is available without one.
    if std::env::var_os("ARC_LICENSE_KEY").is_some() {
        tracing::info!("ARC_LICENSE_KEY is set and ignored: arcdb needs no license key");
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(logging::enter_node_span)
        .on_thread_stop(logging::exit_node_span)
        .build()
        .context("starting the async runtime")?;
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

fn healthcheck(port: u16) -> ExitCode {
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                let client = reqwest::Client::builder()
                    .timeout(HEALTHCHECK_TIMEOUT)
                    .build()?;
                let url = format!("http://127.0.0.1:{port}/health");
                Ok(client.get(url).send().await?.status())
            })
        });
    match answer {
        Ok(status) if status.is_success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("arcdb: /health answered {status}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("arcdb: /health did not answer: {err:#}");
            ExitCode::FAILURE
        }
    }
}
