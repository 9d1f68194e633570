//! The repository's `Dockerfile` makes a working image: non-root, `/app/data` as a volume, ports
//! 8000 and 9000, healthy by its own HEALTHCHECK, configured by `ARC_*` variables, serving
//! writes and queries.
//!
//! No registry is reachable here, so the base image comes from `debootstrap` (tagged with the
//! name the Dockerfile uses), and the compile stage is fed from this build: the test keeps the
//! Dockerfile's runtime stage word for word and puts in front of it a stage of the same name
//! holding this build's binary, stripped, as the compile stage would leave it. This engine's
//! legacy builder cannot replace a stage from outside (`--build-context` needs BuildKit with
//! Dockerfile 1.4), hence the splice.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::cluster_harness::eventually;

/// The Dockerfile's runtime base image.
pub const BASE_IMAGE: &str = "debian:bookworm-slim";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

pub fn docker(args: &[&str]) -> String {
    let output = run("docker", args);
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Whether a Docker engine answers; says so loudly when not.
pub fn docker_available() -> bool {
    let answered = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !answered {
        eprintln!("SKIPPED: no Docker engine answers `docker info`; this test needs one");
    }
    answered
}

/// Makes [`BASE_IMAGE`] from Debian's packages unless the engine has it.
pub fn ensure_base_image() {
    // Tests run in parallel: one of them makes it, the others wait.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    if run("docker", &["image", "inspect", BASE_IMAGE])
        .status
        .success()
    {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let rootfs = root.path().join("rootfs");
    let rootfs = rootfs.to_str().unwrap();
    let output = run(
        "debootstrap",
        &[
            "--variant=minbase",
            "bookworm",
            rootfs,
            "http://deb.debian.org/debian",
        ],
    );
    assert!(
        output.status.success(),
        "debootstrap failed (is it installed? .ci/run installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let import = format!("tar -C {rootfs} -c . | docker import - {BASE_IMAGE}");
    let output = run("sh", &["-c", &import]);
    assert!(output.status.success(), "docker import failed: {output:?}");
}

/// The Dockerfile with its compile stage replaced by `binary` (see the module comment).
fn build_context(dir: &Path, binary: &Path) {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("the repository has a Dockerfile");
    let runtime_start = dockerfile
        .rfind("\nFROM ")
        .expect("a multi-stage Dockerfile");
    let runtime = &dockerfile[runtime_start..];
    assert!(
        runtime.contains("COPY --from=build /out/arcdb"),
        "the runtime stage takes the binary from the build stage's /out"
    );
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let stripped = out.join("arcdb");
    let output = run(
        "strip",
        &["-o", stripped.to_str().unwrap(), binary.to_str().unwrap()],
    );
    assert!(output.status.success(), "strip failed: {output:?}");
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        out.join("ca-certificates.crt"),
    )
    .expect("the host's CA roots");
    let spliced = format!("FROM scratch AS build\nCOPY out/ /out/\n{runtime}");
    std::fs::write(dir.join("Dockerfile"), spliced).unwrap();
}

/// Builds the repository's image as `tag`, holding `binary` (see the module comment).
pub fn build_image(tag: &str, binary: &Path) {
    let context = tempfile::tempdir().unwrap();
    build_context(context.path(), binary);
    docker_build(tag, context.path());
}

/// `docker build` of the context in `dir`, tagged `tag`.
pub fn docker_build(tag: &str, dir: &Path) {
    docker(&["build", "--quiet", "-t", tag, dir.to_str().unwrap()]);
}

#[tokio::test]
async fn the_image_runs_as_a_non_root_healthy_server_configured_by_environment() {
    if !docker_available() {
        return;
    }
    ensure_base_image();
    let tag = format!("arcdb-image-test:{}", std::process::id());
    build_image(&tag, Path::new(env!("CARGO_BIN_EXE_arcdb")));
    let name = format!("arcdb-image-test-{}", std::process::id());
    let token = "image-test-admin-token-0123456789abcdef";
    let container = Container(name.clone(), tag.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        "127.0.0.1::8000",
        "-e",
        &format!("ARC_AUTH_BOOTSTRAP_TOKEN={token}"),
        "-e",
        "ARC_INGEST_MAX_BUFFER_AGE_MS=200",
        "-e",
        "ARC_LICENSE_KEY=ARC-XXXX-XXXX-XXXX-XXXX",
        &tag,
    ]);

    let inspect = |format: &str| docker(&["inspect", "--format", format, &name]);
    assert_eq!(docker(&["exec", &name, "id", "-u"]), "10001");
    assert!(inspect("{{json .Config.Volumes}}").contains("/app/data"));
    let ports = inspect("{{json .Config.ExposedPorts}}");
    assert!(
        ports.contains("8000/tcp") && ports.contains("9000/tcp"),
        "{ports}"
    );
    let health = eventually(
        "the HEALTHCHECK passes",
        Duration::from_secs(90),
        || async {
            let status = inspect("{{.State.Health.Status}}");
            assert_ne!(status, "unhealthy", "{:?}", run("docker", &["logs", &name]));
            (status == "healthy").then_some(status)
        },
    )
    .await;
    eprintln!("container health: {health}");

    let address = docker(&["port", &name, "8000/tcp"]);
    let url = |path: &str| format!("http://{address}{path}");
    let client = reqwest::Client::new();
    let written = client
        .post(url("/write?db=image"))
        .bearer_auth(token)
        .body("cpu,host=a v=1\ncpu,host=b v=2\n")
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), StatusCode::NO_CONTENT);
    let answer: serde_json::Value =
        eventually("the rows are queryable", Duration::from_secs(30), || {
            let client = client.clone();
            let url = url("/api/v1/query");
            async move {
                let response = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({"sql": "SELECT count(*) FROM image.cpu"}))
                    .send()
                    .await
                    .ok()?;
                response.json().await.ok()
            }
        })
        .await;
    assert_eq!(answer["data"][0][0], 2, "{answer}");
    // The flush wrote into the volume, as the non-root user.
    let files = eventually("a flush writes a file", Duration::from_secs(30), || async {
        let files = docker(&["exec", &name, "find", "/app/data", "-name", "*.parquet"]);
        (!files.is_empty()).then_some(files)
    })
    .await;
    eprintln!("files in the volume: {files}");
    // The server logs to stderr, which `docker logs` hands back on its own stderr.
    let logs = String::from_utf8_lossy(&run("docker", &["logs", &name]).stderr).into_owned();
    assert!(
        logs.contains("ARC_LICENSE_KEY is set and ignored"),
        "{logs}"
    );
    assert!(!logs.contains("ARC-XXXX-XXXX-XXXX-XXXX"));
    drop(container);
}

/// Removes the container and its image when the test ends, passed or not.
struct Container(String, String);

impl Drop for Container {
    fn drop(&mut self) {
        run("docker", &["rm", "-f", "-v", &self.0]);
        run("docker", &["rmi", "-f", &self.1]);
    }
}
