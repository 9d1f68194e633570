//! The Compose deployments under `deploy/compose`, brought up for real with `docker-compose`:
//! writes go through the front door while the writer is killed, a reader is cut off the
//! network and comes back, and every node ends up holding every acknowledged row once.
//! Images are made as in `docker_image.rs` (no registry is reachable here).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cluster_harness::eventually;
use crate::docker_image::{build_image, docker, docker_available, docker_build, ensure_base_image};
use crate::garage;
use crate::harness::free_port;
use crate::workload::Outcome;

const TOKEN: &str = "compose-test-admin-token-0123456789abcdef";
const ROWS_PER_WRITE: u64 = 200;

/// One `docker-compose` project; taken down with its volumes and images when dropped.
struct Deployment {
    /// The deployment's files, then the test's overrides.
    files: Vec<String>,
    project: String,
    env: Vec<(String, String)>,
    images: Vec<String>,
    /// Where clients reach the deployment.
    front_door: String,
    /// The admin token.
    token: String,
    /// Holds the test's override files.
    _overrides: tempfile::TempDir,
}

impl Deployment {
    fn command(&self) -> Command {
        let mut command = Command::new("docker-compose");
        for file in &self.files {
            command.args(["-f", file]);
        }
        command
            .args(["-p", &self.project])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    fn compose(&self, args: &[&str]) -> String {
        let output = self
            .command()
            .args(args)
            .output()
            .expect("docker-compose runs");
        assert!(
            output.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    /// The API of one node, reached on its address in the project's network.
    fn node_url(&self, service: &str, path: &str) -> String {
        let ip = docker(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.container(service),
        ]);
        format!("http://{ip}:8000{path}")
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = self.command().args(["down", "-v", "-t", "1"]).output();
        for image in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

/// Several deployments at once would crowd two cores; the tests take turns.
static ONE_DEPLOYMENT_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn compose_available() -> bool {
    let found = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: `docker-compose` is not installed; this test needs it");
    }
    found
}

/// Rows acknowledged through the front door, and when.
#[derive(Default)]
struct Acks {
    ids: BTreeSet<u64>,
    /// Rows of requests whose answer did not say (stored at most once).
    unsure: BTreeSet<u64>,
    /// When each acknowledged request was sent, and when its acknowledgement came.
    times: Vec<(Instant, Instant)>,
}

fn body(first: u64) -> String {
    (first..first + ROWS_PER_WRITE)
        .map(|id| {
            format!(
                "load,client=compose id={id}i {}\n",
                1_768_471_200_000_000_000u64 + id * 1000
            )
        })
        .collect()
}

/// Writes batches of new rows through `url` until `stop`, one request at a time.
async fn write_until(
    url: String,
    token: String,
    acks: Arc<Mutex<Acks>>,
    mut stop: watch::Receiver<bool>,
) {
    let client = reqwest::Client::new();
    let mut next = 0;
    while !*stop.borrow() {
        let sent = Instant::now();
        let response = client
            .post(format!("{url}/write?db=compose"))
            .bearer_auth(&token)
            .body(body(next))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let ids = next..next + ROWS_PER_WRITE;
        next += ROWS_PER_WRITE;
        {
            let mut acks = acks.lock().unwrap();
            match Outcome::of(&response) {
                Outcome::Acknowledged => {
                    acks.ids.extend(ids);
                    acks.times.push((sent, Instant::now()));
                }
                Outcome::Indeterminate => acks.unsure.extend(ids),
                Outcome::Failed => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Every id `url` stores for the test's table, or `None` while it cannot answer.
async fn stored_ids(url: &str, token: &str) -> Option<Vec<u64>> {
    let response = reqwest::Client::new()
        .post(format!("{url}/api/v1/query"))
        .bearer_auth(token)
        .json(&json!({"sql": "SELECT id FROM compose.load ORDER BY id"}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    body["data"]
        .as_array()?
        .iter()
        .map(|row| row[0].as_u64())
        .collect()
}

/// Whether `ids` holds every acknowledged row once, and nothing that was never sent.
fn holds_exactly(ids: &[u64], acks: &Acks) -> bool {
    let stored: BTreeSet<u64> = ids.iter().copied().collect();
    stored.len() == ids.len()
        && acks.ids.is_subset(&stored)
        && stored
            .iter()
            .all(|id| acks.ids.contains(id) || acks.unsure.contains(id))
}

/// The images a deployment runs, made for one test (no registry is reachable).
#[derive(Clone)]
struct Images {
    arcdb: String,
    haproxy: String,
    /// Garage, standing in for MinIO as the S3 service.
    s3: String,
}

/// Tagged for `test` alone: each test removes its images when it ends.
fn build_images(test: &str) -> Images {
    ensure_base_image();
    let tag = format!("{test}-{}", std::process::id());
    let root = env!("CARGO_MANIFEST_DIR");
    let images = Images {
        arcdb: format!("arcdb-compose-test:{tag}"),
        haproxy: format!("arcdb-haproxy-test:{tag}"),
        s3: format!("arcdb-garage-test:{tag}"),
    };
    build_image(&images.arcdb, Path::new(env!("CARGO_BIN_EXE_arcdb")));
    docker_build(
        &images.haproxy,
        Path::new(&format!("{root}/deploy/compose/haproxy")),
    );
    build_garage_image(&images.s3);
    images
}

/// Garage's configuration in the S3 service's container: MinIO's port and Arc's default region.
const GARAGE_CONFIG: &str = r#"metadata_dir = "/data/meta"
data_dir = "/data/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "0.0.0.0:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "0.0.0.0:9000"
root_domain = ".s3.garage.localhost"
"#;

/// An image of the Garage binary the suite installs. Its entrypoint ignores the arguments a
/// deployment gives MinIO (`server /data ...`), so only the image name changes.
fn build_garage_image(tag: &str) {
    let context = tempfile::tempdir().unwrap();
    let binary = garage::garage_binary();
    let binary = if binary.is_absolute() {
        binary
    } else {
        let found = Command::new("sh")
            .args(["-c", "command -v garage"])
            .output()
            .expect("sh runs");
        String::from_utf8_lossy(&found.stdout).trim().into()
    };
    std::fs::copy(&binary, context.path().join("garage")).unwrap_or_else(|e| {
        panic!(
            "cannot copy garage ({}): {e}; `.ci/run` installs it",
            binary.display()
        )
    });
    std::fs::write(context.path().join("garage.toml"), GARAGE_CONFIG).unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM debian:bookworm-slim\n\
         COPY garage /usr/local/bin/garage\n\
         COPY garage.toml /etc/garage.toml\n\
         ENTRYPOINT [\"sh\", \"-c\", \"exec garage -c /etc/garage.toml server\", \"--\"]\n",
    )
    .unwrap();
    docker_build(tag, context.path());
}

/// The deployment in `deploy/compose/{dir}` (its `files`) with the test's `overrides` (file
/// name, contents) and `env`, not yet started.
fn deployment(
    dir: &str,
    files: &[&str],
    overrides: &[(&str, String)],
    env: Vec<(&str, String)>,
    images: Images,
) -> Deployment {
    let pid = std::process::id();
    let root = env!("CARGO_MANIFEST_DIR");
    let override_dir = tempfile::tempdir().unwrap();
    let mut paths: Vec<String> = files
        .iter()
        .map(|file| format!("{root}/deploy/compose/{dir}/{file}"))
        .collect();
    for (name, contents) in overrides {
        let path = override_dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        paths.push(path.to_str().unwrap().to_owned());
    }
    let front_door = free_port();
    let mut all_env = vec![
        ("ARCDB_IMAGE", images.arcdb.clone()),
        ("HAPROXY_IMAGE", images.haproxy.clone()),
        ("S3_IMAGE", images.s3.clone()),
        ("FRONT_DOOR_PORT", front_door.to_string()),
    ];
    all_env.extend(env);
    Deployment {
        files: paths,
        project: format!("arcdbtest{pid}{}", dir.replace('-', "")),
        env: all_env
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        images: vec![images.arcdb, images.haproxy, images.s3],
        front_door: format!("http://127.0.0.1:{front_door}"),
        token: TOKEN.to_owned(),
        _overrides: override_dir,
    }
}

const CLUSTER_SECRET: &str = "compose-test-cluster-secret-0123456789abcdef";

/// The settings the deployments ask for.
fn secrets() -> Vec<(&'static str, String)> {
    vec![
        ("ARC_AUTH_BOOTSTRAP_TOKEN", TOKEN.to_owned()),
        ("ARC_CLUSTER_SHARED_SECRET", CLUSTER_SECRET.to_owned()),
    ]
}

/// Starts the S3 service `service` and gives it the test bucket and key.
fn start_s3(deployment: &Deployment, service: &str) {
    deployment.compose(&["up", "-d", "--no-build", service]);
    let container = deployment.container(service);
    garage::set_up_bucket(|args| {
        let output = Command::new("docker")
            .args(["exec", &container, "garage", "-c", "/etc/garage.toml"])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            Ok(text)
        } else {
            Err(format!("garage {args:?} in {container}: {text}"))
        }
    });
}

/// Polls until `url` acknowledges a write; a timeout names the last answer.
async fn takes_writes(url: &str, token: &str) {
    let started = Instant::now();
    let client = reqwest::Client::new();
    let mut last_answer;
    loop {
        let response = client
            .post(format!("{url}/write?db=compose"))
            .bearer_auth(token)
            .body("warmup,client=compose v=1i 1\n")
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match response {
            Ok(response) if response.status() == StatusCode::NO_CONTENT => break,
            Ok(response) => {
                last_answer = format!(
                    "{} {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                )
            }
            Err(err) => last_answer = err.to_string(),
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{url} took no write in 180 s; its last answer: {last_answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{url} took a write after {:.1} s of trying",
        started.elapsed().as_secs_f64()
    );
}

/// Polls until `service` holds every row in `acks` once, and nothing never sent; prints it.
async fn converges(deployment: &Deployment, service: &str, acks: &Acks) {
    let converged = eventually(
        &format!("{service} holds every acknowledged row once"),
        Duration::from_secs(120),
        || async {
            let ids = stored_ids(&deployment.node_url(service, ""), &deployment.token).await?;
            holds_exactly(&ids, acks).then_some(ids.len())
        },
    )
    .await;
    eprintln!("{service}: {converged} rows, every acknowledged one once");
}

/// Writes through the front door while reader-02 is taken off the network and reconnected,
/// then while writer-01 is killed; both readers must end up holding every acknowledged row once.
async fn writes_survive_a_cut_reader_and_a_killed_writer(deployment: &Deployment) {
    let (cut, killed, readers) = ("reader-02", "writer-01", ["reader-01", "reader-02"]);
    let front_door = deployment.front_door.clone();
    let started = Instant::now();
    takes_writes(&front_door, &deployment.token).await;
    let acks = Arc::new(Mutex::new(Acks::default()));
    let (stop, stopped) = watch::channel(false);
    let writes = tokio::spawn(write_until(
        front_door,
        deployment.token.clone(),
        Arc::clone(&acks),
        stopped,
    ));
    let acked = || acks.lock().unwrap().ids.len();
    let more_acked = |what: &'static str, from: usize| {
        eventually(what, Duration::from_secs(60), move || async move {
            (acked() >= from + 2000).then_some(())
        })
    };
    more_acked("writes are acknowledged", 0).await;

    // A reader off the network while writes go on (the others keep Raft's majority), then back.
    let network = format!("{}_default", deployment.project);
    let cut_container = deployment.container(cut);
    docker(&["network", "disconnect", &network, &cut_container]);
    let before_cut = acks.lock().unwrap().ids.clone();
    more_acked("writes go on while a reader is cut off", before_cut.len()).await;
    docker(&["network", "connect", &network, &cut_container]);
    eventually(
        "the reconnected reader catches up",
        Duration::from_secs(120),
        || async {
            let ids = stored_ids(&deployment.node_url(cut, ""), &deployment.token).await?;
            let stored: BTreeSet<u64> = ids.into_iter().collect();
            before_cut.is_subset(&stored).then_some(())
        },
    )
    .await;

    docker(&["kill", &deployment.container(killed)]);
    let killed_at = Instant::now();
    let resumed = eventually(
        "writes resume after a writer's loss",
        Duration::from_secs(120),
        || async {
            acks.lock()
                .unwrap()
                .times
                .iter()
                .find(|(sent, _)| *sent > killed_at)
                .map(|(_, acknowledged)| *acknowledged)
        },
    )
    .await;
    eprintln!(
        "seconds from `docker kill` of {killed} to the first write sent after it and \
         acknowledged through the front door: {:.1}",
        resumed.duration_since(killed_at).as_secs_f64()
    );
    more_acked("writes go on after the writer's loss", acked()).await;
    stop.send(true).unwrap();
    writes.await.unwrap();
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    eprintln!(
        "{} rows acknowledged, {} unsure, over {:.1} s",
        acks.ids.len(),
        acks.unsure.len(),
        started.elapsed().as_secs_f64()
    );
    for reader in readers {
        converges(deployment, reader, &acks).await;
    }
}

/// Pattern B: 1 writer, 2 readers with replication and failover, HAProxy in front. The writer
/// is killed mid-load: writes resume through the front door once a reader is promoted, and no
/// acknowledged row is lost. A reader cut off the network and reconnected converges.
#[tokio::test]
async fn local_storage_deployment_survives_a_killed_writer_and_a_cut_off_reader() {
    if !docker_available() || !compose_available() {
        return;
    }
    let _turn = ONE_DEPLOYMENT_AT_A_TIME.lock().await;
    let deployment = deployment(
        "local-storage",
        &["docker-compose.yml"],
        &[],
        secrets(),
        build_images("local-storage"),
    );
    deployment.compose(&["up", "-d", "--no-build"]);
    writes_survive_a_cut_reader_and_a_killed_writer(&deployment).await;
}

/// Pattern A: 3 writers behind HAProxy checking `/ready`, 2 readers and a compactor on one
/// bucket (Garage in MinIO's place). One writer is killed mid-load: the front door routes
/// around it and no acknowledged row is lost; a reader cut off and reconnected converges.
#[tokio::test]
async fn shared_storage_deployment_survives_a_killed_writer_and_a_cut_off_reader() {
    if !docker_available() || !compose_available() {
        return;
    }
    let _turn = ONE_DEPLOYMENT_AT_A_TIME.lock().await;
    let mut env = secrets();
    env.extend([
        ("S3_BUCKET", garage::BUCKET.to_owned()),
        ("S3_ACCESS_KEY", garage::ACCESS_KEY.to_owned()),
        ("S3_SECRET_KEY", garage::SECRET_KEY.to_owned()),
    ]);
    let deployment = deployment(
        "shared-storage",
        &["docker-compose.yml"],
        &[],
        env,
        build_images("shared-storage"),
    );
    start_s3(&deployment, "s3");
    deployment.compose(&["up", "-d", "--no-build"]);
    writes_survive_a_cut_reader_and_a_killed_writer(&deployment).await;
}

/// The test's changes to the seeds' example: this build's images, and Garage's key (it takes
/// only keys of its own format) in MinIO's place.
fn seeds_example_override(images: &Images) -> String {
    let keys = format!(
        "    environment:\n      ARC_STORAGE_S3_ACCESS_KEY: {}\n      ARC_STORAGE_S3_SECRET_KEY: {}\n",
        garage::ACCESS_KEY,
        garage::SECRET_KEY
    );
    let mut yaml = format!(
        "version: \"3.8\"\nservices:\n  minio:\n    image: {}\n",
        images.s3
    );
    for service in ["arc-writer", "arc-reader-1", "arc-reader-2"] {
        yaml += &format!("  {service}:\n    image: {}\n{keys}", images.arcdb);
    }
    yaml
}

/// The admin token a node printed at first start, from the containers' logs.
fn printed_token(deployment: &Deployment, services: &[&str]) -> Option<String> {
    services.iter().find_map(|service| {
        let output = Command::new("docker")
            .args(["logs", &deployment.container(service)])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.lines().find_map(|line| {
            let (_, token) = line.split_once("Admin API token")?;
            Some(token.rsplit(' ').next()?.trim().to_owned())
        })
    })
}

/// The seeds' "Deployment Example" file, word for word but for the image names: without a shared
/// secret the nodes refuse to start and say which variable to set (the seeds: "Arc refuses to
/// start replication without it"); with the override beside it that supplies the secret, the
/// writer takes writes and both readers answer with every acknowledged row.
#[tokio::test]
async fn the_seeds_deployment_example_runs_with_only_the_image_changed() {
    if !docker_available() || !compose_available() {
        return;
    }
    let _turn = ONE_DEPLOYMENT_AT_A_TIME.lock().await;
    let images = build_images("seeds-example");
    let test_override = ("test-images.yml", seeds_example_override(&images));
    let mut without_secret = deployment(
        "seeds-example",
        &["docker-compose.yml"],
        std::slice::from_ref(&test_override),
        vec![],
        images.clone(),
    );
    without_secret.compose(&["up", "-d", "--no-build", "arc-writer"]);
    let writer = without_secret.container("arc-writer");
    let refusal = eventually(
        "the writer refuses to start without a shared secret",
        Duration::from_secs(60),
        || async {
            let state = docker(&["inspect", "--format", "{{.State.Status}}", &writer]);
            if state != "exited" {
                return None;
            }
            let output = Command::new("docker")
                .args(["logs", &writer])
                .output()
                .ok()?;
            Some(
                String::from_utf8_lossy(&output.stdout).into_owned()
                    + &String::from_utf8_lossy(&output.stderr),
            )
        },
    )
    .await;
    assert!(
        refusal.contains("ARC_CLUSTER_SHARED_SECRET"),
        "the refusal names the variable to set: {refusal}"
    );
    eprintln!(
        "without a shared secret: {}",
        refusal.lines().last().unwrap_or_default()
    );
    // Keeps the images for the run with the secret.
    without_secret.images.clear();
    drop(without_secret);

    let mut deployment = deployment(
        "seeds-example",
        &["docker-compose.yml", "docker-compose.override.yml"],
        &[test_override],
        vec![("ARC_CLUSTER_SHARED_SECRET", CLUSTER_SECRET.to_owned())],
        images,
    );
    start_s3(&deployment, "minio");
    deployment.compose(&["up", "-d", "--no-build"]);
    let nodes = ["arc-writer", "arc-reader-1", "arc-reader-2"];
    deployment.token = eventually(
        "a node prints the first admin token",
        Duration::from_secs(120),
        || async { printed_token(&deployment, &nodes) },
    )
    .await;
    let writer = deployment.node_url("arc-writer", "");
    takes_writes(&writer, &deployment.token).await;
    let mut acks = Acks::default();
    let client = reqwest::Client::new();
    for first in (0..10 * ROWS_PER_WRITE).step_by(ROWS_PER_WRITE as usize) {
        let response = client
            .post(format!("{writer}/write?db=compose"))
            .bearer_auth(&deployment.token)
            .body(body(first))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        acks.ids.extend(first..first + ROWS_PER_WRITE);
    }
    for reader in ["arc-reader-1", "arc-reader-2"] {
        converges(&deployment, reader, &acks).await;
    }
}
