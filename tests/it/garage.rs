//! A single-node Garage (a real S3-compatible server) on loopback, shared by the tests of this
//! process and killed with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::{die_with_parent, free_port};

pub const BUCKET: &str = "arc-data";
pub const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
pub const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const REGION: &str = "garage";

pub struct Garage {
    pub s3_endpoint: String,
    _dir: tempfile::TempDir,
}

pub fn garage_binary() -> PathBuf {
    if let Ok(path) = std::env::var("GARAGE_BIN") {
        return path.into();
    }
    let in_cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|home| home.join("bin/garage"));
    match in_cargo_home {
        Ok(path) if path.exists() => path,
        _ => "garage".into(),
    }
}

fn garage(config: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new(garage_binary())
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run garage ({}): {e}", garage_binary().display()))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("garage {args:?} failed: {text}"))
    }
}

fn start() -> Garage {
    let dir = tempfile::tempdir().unwrap();
    let (rpc, s3, admin) = (free_port(), free_port(), free_port());
    let config = dir.path().join("garage.toml");
    std::fs::write(
        &config,
        format!(
            r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"
[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "arcdb-test-admin"
"#,
            root = dir.path().display(),
            secret = SECRET_KEY,
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("garage.log")).unwrap();
    let mut server = Command::new(garage_binary());
    server
        .arg("-c")
        .arg(&config)
        .arg("server")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    die_with_parent(&mut server);
    // The parent-death signal follows the spawning thread, and test threads end early: spawn
    // from a thread that lives as long as the test process.
    let (spawned_tx, spawned) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let child = server.spawn();
        let failed = child.is_err();
        spawned_tx.send(child.map(|_| ())).unwrap();
        if !failed {
            loop {
                std::thread::park();
            }
        }
    });
    spawned.recv().unwrap().unwrap_or_else(|e| {
        panic!(
            "cannot start garage ({}): {e}; install it with `cargo install garage --locked`",
            garage_binary().display()
        )
    });

    set_up_bucket(|args| garage(&config, args));
    Garage {
        s3_endpoint: format!("127.0.0.1:{s3}"),
        _dir: dir,
    }
}

/// Gives a freshly started single-node Garage its layout, [`BUCKET`] and the key
/// [`ACCESS_KEY`]/[`SECRET_KEY`] allowed on it; `garage` runs one CLI command against it.
pub fn set_up_bucket(garage: impl Fn(&[&str]) -> Result<String, String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let node_id = loop {
        match garage(&["node", "id"]) {
            Ok(out) => {
                let id = out
                    .split_whitespace()
                    .find_map(|token| token.split_once('@').map(|(id, _)| id.to_string()));
                if let Some(id) = id {
                    break id;
                }
            }
            Err(err) if Instant::now() > deadline => panic!("garage did not start: {err}"),
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let steps: [&[&str]; 5] = [
        &["layout", "assign", "-z", "dc1", "-c", "1G", &node_id],
        &["layout", "apply", "--version", "1"],
        &["bucket", "create", BUCKET],
        &[
            "key", "import", "--yes", "-n", "test", ACCESS_KEY, SECRET_KEY,
        ],
        &[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "test",
        ],
    ];
    for step in steps {
        // The layout may need a moment before buckets can be created.
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(err) = garage(step) {
            assert!(Instant::now() < deadline, "{err}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The process-wide Garage, started on first use.
pub fn garage_server() -> &'static Garage {
    static GARAGE: OnceLock<Garage> = OnceLock::new();
    GARAGE.get_or_init(start)
}

/// `ARC_*` settings that point arcdb at the shared Garage bucket under its own prefix.
pub fn s3_env(endpoint: &str, prefix: &str) -> Vec<(String, String)> {
    [
        ("ARC_STORAGE_BACKEND", "s3"),
        ("ARC_STORAGE_S3_BUCKET", BUCKET),
        ("ARC_STORAGE_S3_ENDPOINT", endpoint),
        ("ARC_STORAGE_S3_REGION", REGION),
        ("ARC_STORAGE_S3_ACCESS_KEY", ACCESS_KEY),
        ("ARC_STORAGE_S3_SECRET_KEY", SECRET_KEY),
        ("ARC_STORAGE_S3_USE_SSL", "false"),
        ("ARC_STORAGE_S3_PATH_STYLE", "true"),
        ("ARC_STORAGE_S3_PREFIX", prefix),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
