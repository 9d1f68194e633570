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
use crate::docker_image::{build_image, docker, docker_available, ensure_base_image};
use crate::harness::free_port;
use crate::workload::Outcome;

const TOKEN: &str = "compose-test-admin-token-0123456789abcdef";
const ROWS_PER_WRITE: u64 = 200;

/// One `docker-compose` project; taken down with its volumes and images when dropped.
struct Deployment {
    file: String,
    project: String,
    env: Vec<(String, String)>,
    images: Vec<String>,
    /// Where clients reach the deployment.
    front_door: String,
}

impl Deployment {
    fn compose(&self, args: &[&str]) -> String {
        let output = Command::new("docker-compose")
            .args(["-f", &self.file, "-p", &self.project])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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
        let _ = Command::new("docker-compose")
            .args([
                "-f",
                &self.file,
                "-p",
                &self.project,
                "down",
                "-v",
                "-t",
                "1",
            ])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output();
        for image in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

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
    times: Vec<Instant>,
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
async fn write_until(url: String, acks: Arc<Mutex<Acks>>, mut stop: watch::Receiver<bool>) {
    let client = reqwest::Client::new();
    let mut next = 0;
    while !*stop.borrow() {
        let response = client
            .post(format!("{url}/write?db=compose"))
            .bearer_auth(TOKEN)
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
                    acks.times.push(Instant::now());
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
async fn stored_ids(url: &str) -> Option<Vec<u64>> {
    let response = reqwest::Client::new()
        .post(format!("{url}/api/v1/query"))
        .bearer_auth(TOKEN)
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

fn deployment(dir: &str) -> Deployment {
    ensure_base_image();
    let pid = std::process::id();
    let root = env!("CARGO_MANIFEST_DIR");
    let arcdb_image = format!("arcdb-compose-test:{pid}");
    build_image(&arcdb_image, Path::new(env!("CARGO_BIN_EXE_arcdb")));
    let haproxy_image = format!("arcdb-haproxy-test:{pid}");
    docker(&[
        "build",
        "--quiet",
        "-t",
        &haproxy_image,
        &format!("{root}/deploy/compose/haproxy"),
    ]);
    let front_door = free_port();
    let deployment = Deployment {
        file: format!("{root}/deploy/compose/{dir}/docker-compose.yml"),
        project: format!("arcdbtest{pid}{}", dir.replace('-', "")),
        env: [
            ("ARCDB_IMAGE", arcdb_image.clone()),
            ("HAPROXY_IMAGE", haproxy_image.clone()),
            ("FRONT_DOOR_PORT", front_door.to_string()),
            ("ARC_AUTH_BOOTSTRAP_TOKEN", TOKEN.to_owned()),
            (
                "ARC_CLUSTER_SHARED_SECRET",
                "compose-test-cluster-secret-0123456789abcdef".to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        images: vec![arcdb_image, haproxy_image],
        front_door: format!("http://127.0.0.1:{front_door}"),
    };
    deployment.compose(&["up", "-d", "--no-build"]);
    deployment
}

/// Pattern B: 1 writer, 2 readers with replication and failover, HAProxy in front. The writer
/// is killed mid-load: writes resume through the front door once a reader is promoted, and no
/// acknowledged row is lost. A reader cut off the network and reconnected converges.
#[tokio::test]
async fn local_storage_deployment_survives_a_killed_writer_and_a_cut_off_reader() {
    if !docker_available() || !compose_available() {
        return;
    }
    let deployment = deployment("local-storage");
    let front_door = deployment.front_door.clone();
    let started = Instant::now();
    eventually(
        "the front door takes writes",
        Duration::from_secs(180),
        || {
            let url = front_door.clone();
            async move {
                let response = reqwest::Client::new()
                    .post(format!("{url}/write?db=compose"))
                    .bearer_auth(TOKEN)
                    .body("warmup,client=compose v=1i 1\n")
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .ok()?;
                (response.status() == StatusCode::NO_CONTENT).then_some(())
            }
        },
    )
    .await;
    eprintln!(
        "the front door took writes {:.1} s after `up`",
        started.elapsed().as_secs_f64()
    );

    let acks = Arc::new(Mutex::new(Acks::default()));
    let (stop, stopped) = watch::channel(false);
    let writes = tokio::spawn(write_until(front_door.clone(), Arc::clone(&acks), stopped));
    eventually(
        "writes are acknowledged",
        Duration::from_secs(60),
        || async { (acks.lock().unwrap().ids.len() >= 2000).then_some(()) },
    )
    .await;

    // A reader off the network while writes go on (two of three nodes keep Raft's majority),
    // then back.
    let network = format!("{}_default", deployment.project);
    let cut_container = deployment.container("reader-02");
    docker(&["network", "disconnect", &network, &cut_container]);
    let before_cut = acks.lock().unwrap().ids.clone();
    let acked_at_cut = before_cut.len();
    eventually(
        "writes go on while a reader is cut off",
        Duration::from_secs(60),
        || async { (acks.lock().unwrap().ids.len() >= acked_at_cut + 2000).then_some(()) },
    )
    .await;
    docker(&["network", "connect", &network, &cut_container]);
    eventually(
        "the reconnected reader catches up",
        Duration::from_secs(120),
        || async {
            let ids = stored_ids(&deployment.node_url("reader-02", "")).await?;
            let stored: BTreeSet<u64> = ids.into_iter().collect();
            before_cut.is_subset(&stored).then_some(())
        },
    )
    .await;

    docker(&["kill", &deployment.container("writer-01")]);
    let killed = Instant::now();
    let resumed = eventually(
        "writes resume after the writer's loss",
        Duration::from_secs(120),
        || async {
            acks.lock()
                .unwrap()
                .times
                .iter()
                .copied()
                .find(|t| *t > killed)
        },
    )
    .await;
    eprintln!(
        "seconds from `docker kill` of the writer to the first write acknowledged again through \
         the front door: {:.1}",
        resumed.duration_since(killed).as_secs_f64()
    );
    let acked_at_resume = acks.lock().unwrap().ids.len();
    eventually(
        "writes go on after the failover",
        Duration::from_secs(60),
        || async { (acks.lock().unwrap().ids.len() >= acked_at_resume + 2000).then_some(()) },
    )
    .await;
    stop.send(true).unwrap();
    writes.await.unwrap();
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    eprintln!(
        "{} rows acknowledged, {} unsure, over {:.1} s",
        acks.ids.len(),
        acks.unsure.len(),
        started.elapsed().as_secs_f64()
    );

    for service in ["reader-01", "reader-02"] {
        let converged = eventually(
            &format!("{service} holds every acknowledged row once"),
            Duration::from_secs(120),
            || async {
                let ids = stored_ids(&deployment.node_url(service, "")).await?;
                holds_exactly(&ids, &acks).then_some(ids.len())
            },
        )
        .await;
        eprintln!("{service}: {converged} rows, every acknowledged one once");
    }
}
