//! Fault tests in Jepsen's shape: a workload whose every request is recorded as acknowledged,
//! failed or indeterminate; a schedule of faults drawn from a seed; a checker that compares what
//! is stored with what was acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use rmpv::Value;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster_harness::Link;
use crate::harness::{Compression, Server, admin_client, map, msgpack};

/// 2026-01-15T10:00:00Z; row `id` is stamped `BASE_US + id` µs, so no two rows share a time.
pub const BASE_US: i64 = 1_768_471_200_000_000;

/// Whether the long soak profile runs (`ARCDB_SOAK=1`), rather than the CI profile.
pub fn soak() -> bool {
    std::env::var("ARCDB_SOAK").is_ok_and(|v| v == "1")
}

/// The schedule's seed: `ARCDB_FAULT_SEED` to replay a failure, else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("ARCDB_FAULT_SEED")
        .ok()
        .map(|s| s.parse().expect("ARCDB_FAULT_SEED is a number"))
        .unwrap_or(default)
}

/// What a client may conclude about the rows of one request from its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the rows must be stored exactly once.
    Acknowledged,
    /// A definite refusal before the write was taken: the rows must not be stored.
    Failed,
    /// A timeout, a cut connection, or an answer that does not say: stored at most once.
    Indeterminate,
}

impl Outcome {
    /// The outcome a response (or its absence) tells.
    pub fn of(response: &Result<reqwest::Response, reqwest::Error>) -> Outcome {
        match response {
            Ok(r) if r.status().is_success() => Outcome::Acknowledged,
            // 500, 502 and 504 come from a node that may have passed the request on.
            Ok(r) if matches!(r.status().as_u16(), 500 | 502 | 504) => Outcome::Indeterminate,
            Ok(_) => Outcome::Failed,
            // No connection: the server never saw the request.
            Err(e) if e.is_connect() => Outcome::Failed,
            Err(_) => Outcome::Indeterminate,
        }
    }
}

/// Every row id handed out, with what its request's answer said.
#[derive(Default)]
pub struct Ledger {
    next_id: AtomicI64,
    rows: Mutex<HashMap<i64, Outcome>>,
    requests: Mutex<BTreeMap<&'static str, [usize; 3]>>,
    /// When each acknowledged request was sent and when its answer arrived, in arrival order.
    acknowledged_at: Mutex<Vec<(Instant, Instant)>>,
}

impl Ledger {
    pub fn new() -> Arc<Ledger> {
        Arc::default()
    }

    fn take(&self, count: i64) -> Vec<i64> {
        let first = self.next_id.fetch_add(count, Ordering::SeqCst);
        (first..first + count).collect()
    }

    fn record(&self, ids: &[i64], format: Format, outcome: Outcome, sent_at: Instant) {
        let mut rows = self.rows.lock().unwrap();
        rows.extend(ids.iter().map(|id| (*id, outcome)));
        let mut requests = self.requests.lock().unwrap();
        requests.entry(format.name()).or_default()[outcome as usize] += 1;
        if outcome == Outcome::Acknowledged {
            let acknowledged = (sent_at, Instant::now());
            self.acknowledged_at.lock().unwrap().push(acknowledged);
        }
    }

    /// When the first acknowledgement of a request sent after `instant` arrived.
    pub fn first_acknowledged_after(&self, instant: Instant) -> Option<Instant> {
        let acknowledged = self.acknowledged_at.lock().unwrap();
        acknowledged
            .iter()
            .find(|(sent, _)| *sent > instant)
            .map(|(_, at)| *at)
    }

    /// Requests per format: acknowledged, failed, indeterminate.
    pub fn requests(&self) -> String {
        let requests = self.requests.lock().unwrap();
        let counts: Vec<String> = requests
            .iter()
            .map(|(format, [ok, failed, unknown])| format!("{format} {ok}/{failed}/{unknown}"))
            .collect();
        counts.join(", ")
    }
}

/// The write formats a client uses in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    MsgpackColumnar,
    MsgpackRows,
    /// `/write` (InfluxDB 1.x).
    InfluxV1,
    /// `/api/v2/write`.
    InfluxV2,
    /// `/api/v1/write/line-protocol`.
    ArcLineProtocol,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::MsgpackColumnar,
        Format::MsgpackRows,
        Format::InfluxV1,
        Format::InfluxV2,
        Format::ArcLineProtocol,
    ];

    fn name(self) -> &'static str {
        match self {
            Format::MsgpackColumnar => "msgpack-columnar",
            Format::MsgpackRows => "msgpack-rows",
            Format::InfluxV1 => "influx-v1",
            Format::InfluxV2 => "influx-v2",
            Format::ArcLineProtocol => "arc-line-protocol",
        }
    }
}

/// Where a workload writes: database and measurement.
#[derive(Debug, Clone)]
pub struct Table {
    pub database: String,
    pub measurement: String,
}

impl Table {
    pub fn new(database: &str, measurement: &str) -> Table {
        Table {
            database: database.into(),
            measurement: measurement.into(),
        }
    }
}

/// A write of rows `ids` (tag `client`, field `id`) to `base` (a node's URL).
fn write_request(
    client: &reqwest::Client,
    base: &str,
    table: &Table,
    writer: usize,
    ids: &[i64],
    format: Format,
    compression: Compression,
) -> reqwest::RequestBuilder {
    let (db, m) = (table.database.as_str(), table.measurement.as_str());
    let time = |id: &i64| BASE_US + id;
    let tag = format!("c{writer}");
    let (path, body) = match format {
        Format::MsgpackColumnar => {
            let columns = map(vec![
                (
                    "time",
                    Value::Array(ids.iter().map(|id| time(id).into()).collect()),
                ),
                (
                    "id",
                    Value::Array(ids.iter().map(|id| (*id).into()).collect()),
                ),
                (
                    "client",
                    Value::Array(ids.iter().map(|_| tag.as_str().into()).collect()),
                ),
            ]);
            let payload = map(vec![("m", m.into()), ("columns", columns)]);
            ("/api/v1/write/msgpack".to_owned(), msgpack(&payload))
        }
        Format::MsgpackRows => {
            let rows = ids
                .iter()
                .map(|id| {
                    map(vec![
                        ("m", m.into()),
                        ("t", time(id).into()),
                        ("fields", map(vec![("id", (*id).into())])),
                        ("tags", map(vec![("client", tag.as_str().into())])),
                    ])
                })
                .collect();
            (
                "/api/v1/write/msgpack".to_owned(),
                msgpack(&Value::Array(rows)),
            )
        }
        Format::InfluxV1 | Format::InfluxV2 | Format::ArcLineProtocol => {
            let lines: String = ids
                .iter()
                .map(|id| format!("{m},client={tag} id={id}i {}\n", time(id) * 1000))
                .collect();
            let path = match format {
                Format::InfluxV1 => format!("/write?db={db}"),
                Format::InfluxV2 => format!("/api/v2/write?bucket={db}&org=any"),
                _ => format!("/api/v1/write/line-protocol?db={db}"),
            };
            (path, lines.into_bytes())
        }
    };
    let mut request = client
        .post(format!("{base}{path}"))
        .header("x-arc-database", db)
        .body(compression.apply(&body));
    if compression != Compression::None {
        let coding = if compression == Compression::Gzip {
            "gzip"
        } else {
            "zstd"
        };
        request = request.header("content-encoding", coding);
    }
    request
}

/// Client tasks that run until stopped.
pub struct Clients {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Clients {
    /// Spawns `count` clients; client `c` runs `client(c, stopped)`.
    fn spawn<F, Fut>(count: usize, client: F) -> Clients
    where
        F: Fn(usize, watch::Receiver<bool>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..count)
            .map(|c| tokio::spawn(client(c, stopped.clone())))
            .collect();
        Clients { stop, tasks }
    }

    /// Stops the clients; each finishes the request it is in.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.unwrap();
        }
    }
}

/// How clients behave.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    pub clients: usize,
    /// Per-request deadline: past it the request is indeterminate.
    pub timeout: Duration,
    pub formats: Vec<Format>,
    /// Pause after each request, to hold the volume a long run stores (and checks) down.
    pub pause: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            clients: 4,
            timeout: Duration::from_secs(10),
            formats: Format::ALL.to_vec(),
            pause: Duration::ZERO,
        }
    }
}

/// Starts clients writing rows with unique ids to the nodes at `targets` (base URLs), recording
/// into `ledger`. Client `c` starts on target `c`; after any answer but an acknowledgement it
/// moves to the next one, as a load balancer would.
pub fn start_writes(
    ledger: &Arc<Ledger>,
    targets: Vec<String>,
    table: Table,
    options: WorkloadOptions,
) -> Clients {
    let targets = Arc::new(targets);
    Clients::spawn(options.clients, |c, stopped| {
        let (ledger, targets, table, options) = (
            Arc::clone(ledger),
            Arc::clone(&targets),
            table.clone(),
            options.clone(),
        );
        async move { run_client(c, &targets, &table, &options, &ledger, stopped).await }
    })
}

async fn run_client(
    c: usize,
    targets: &[String],
    table: &Table,
    options: &WorkloadOptions,
    ledger: &Ledger,
    stopped: watch::Receiver<bool>,
) {
    let client = admin_client();
    let mut rng = StdRng::seed_from_u64(c as u64);
    let mut target = c % targets.len();
    for attempt in 0usize.. {
        if *stopped.borrow() {
            return;
        }
        let ids = ledger.take(rng.random_range(20..200));
        let format = options.formats[attempt % options.formats.len()];
        let compression = Compression::ALL[attempt % 3];
        let request = write_request(
            &client,
            &targets[target],
            table,
            c,
            &ids,
            format,
            compression,
        );
        let sent_at = Instant::now();
        let response = request.timeout(options.timeout).send().await;
        let outcome = Outcome::of(&response);
        if let Ok(response) = response {
            // The whole answer is read, so an indeterminate outcome is never a half-read one.
            let _ = response.bytes().await;
        }
        ledger.record(&ids, format, outcome, sent_at);
        if outcome != Outcome::Acknowledged {
            target = (target + 1) % targets.len();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(options.pause).await;
    }
}

/// How many times each row id is stored.
pub type Stored = HashMap<i64, usize>;

/// What the checker found.
#[derive(Debug)]
pub struct Verdict {
    pub acknowledged: usize,
    pub failed: usize,
    pub indeterminate: usize,
    pub indeterminate_stored: usize,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rows acknowledged, {} refused, {} indeterminate ({} of them stored)",
            self.acknowledged, self.failed, self.indeterminate, self.indeterminate_stored
        )
    }
}

/// Every acknowledged row stored exactly once; no row stored that was never sent; indeterminate
/// rows stored at most once; refused rows not stored.
pub fn check(ledger: &Ledger, stored: &Stored) -> Result<Verdict, String> {
    let rows = ledger.rows.lock().unwrap();
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    let mut indeterminate_stored = 0;
    for (id, outcome) in rows.iter() {
        let times = stored.get(id).copied().unwrap_or(0);
        match (outcome, times) {
            (Outcome::Acknowledged, 0) => missing.push(*id),
            (Outcome::Acknowledged, 1) | (Outcome::Failed, 0) | (Outcome::Indeterminate, 0) => {}
            (Outcome::Indeterminate, 1) => indeterminate_stored += 1,
            (outcome, times) => problems.push(format!("row {id} ({outcome:?}) stored {times}×")),
        }
    }
    if !missing.is_empty() {
        missing.sort_unstable();
        problems.push(format!(
            "{} acknowledged rows missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    let invented: Vec<&i64> = stored.keys().filter(|id| !rows.contains_key(id)).collect();
    if !invented.is_empty() {
        problems.push(format!(
            "{} rows stored that were never sent, e.g. {:?}",
            invented.len(),
            &invented[..invented.len().min(10)]
        ));
    }
    if problems.len() > 20 {
        let more = problems.len() - 20;
        problems.truncate(20);
        problems.push(format!("... and {more} more"));
    }
    let count = |wanted| rows.values().filter(|o| **o == wanted).count();
    let verdict = Verdict {
        acknowledged: count(Outcome::Acknowledged),
        failed: count(Outcome::Failed),
        indeterminate: count(Outcome::Indeterminate),
        indeterminate_stored,
    };
    if problems.is_empty() {
        Ok(verdict)
    } else {
        Err(format!("{verdict}:\n{}", problems.join("\n")))
    }
}

/// Acknowledged rows stored nowhere, and rows stored more than once.
pub fn lost_and_duplicated(ledger: &Ledger, stored: &Stored) -> (usize, usize) {
    let rows = ledger.rows.lock().unwrap();
    let lost = rows
        .iter()
        .filter(|(id, outcome)| **outcome == Outcome::Acknowledged && !stored.contains_key(id))
        .count();
    let duplicated = stored.values().filter(|times| **times > 1).count();
    (lost, duplicated)
}

/// The row ids a node's queries return for `table`, with how often each appears.
pub async fn queried_ids(server: &Server, table: &Table) -> Result<Stored, String> {
    let sql = format!(
        "SELECT id FROM \"{}\".\"{}\"",
        table.database, table.measurement
    );
    let response = server
        .client
        .post(server.url("/api/v1/query"))
        .json(&json!({ "sql": sql }))
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    if status != StatusCode::OK {
        return Err(format!("{status}: {body}"));
    }
    let mut stored = Stored::new();
    for row in body["data"].as_array().ok_or("no data")? {
        let id = row[0].as_i64().or_else(|| row["id"].as_i64());
        *stored
            .entry(id.ok_or_else(|| format!("bad row {row}"))?)
            .or_default() += 1;
    }
    Ok(stored)
}

/// Kinds of metadata records the metadata workload creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Record {
    Token,
    Database,
    RetentionPolicy,
}

impl Record {
    const ALL: [Record; 3] = [Record::Token, Record::Database, Record::RetentionPolicy];

    fn create(self, client: &reqwest::Client, base: &str, name: &str) -> reqwest::RequestBuilder {
        let (path, body) = match self {
            Record::Token => (
                "/api/v1/auth/tokens",
                json!({ "name": name, "permissions": ["read"] }),
            ),
            Record::Database => ("/api/v1/databases", json!({ "name": name })),
            Record::RetentionPolicy => (
                "/api/v1/retention",
                json!({ "name": name, "database": "faults", "retention_days": 3650 }),
            ),
        };
        client.post(format!("{base}{path}")).json(&body)
    }
}

/// Names of every record of the workload's that `server` lists.
pub async fn listed_records(server: &Server) -> Result<BTreeSet<(Record, String)>, String> {
    let mut listed = BTreeSet::new();
    for record in Record::ALL {
        let path = match record {
            Record::Token => "/api/v1/auth/tokens",
            Record::Database => "/api/v1/databases",
            Record::RetentionPolicy => "/api/v1/retention",
        };
        let response = server
            .client
            .get(server.url(path))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("{path}: {status} {body}"));
        }
        let items = match record {
            Record::Token => &body["tokens"],
            Record::Database => &body["databases"],
            Record::RetentionPolicy => &body,
        };
        for item in items.as_array().ok_or_else(|| format!("{path}: {body}"))? {
            let name = item["name"].as_str().unwrap_or_default();
            if name.starts_with(METADATA_PREFIX) {
                listed.insert((record, name.to_owned()));
            }
        }
    }
    Ok(listed)
}

const METADATA_PREFIX: &str = "fault-";

/// Every metadata change requested, with what its answer said.
#[derive(Default)]
pub struct MetadataLedger {
    /// Each request's outcome, and the answer's status or the client's error.
    records: Mutex<BTreeMap<(Record, String), (Outcome, String)>>,
}

impl MetadataLedger {
    /// Acknowledged records listed; refused ones not; nothing listed that was never asked for.
    pub fn check(&self, listed: &BTreeSet<(Record, String)>) -> Result<[usize; 3], String> {
        let records = self.records.lock().unwrap();
        let mut problems = Vec::new();
        let mut counts = [0; 3];
        for (record, (outcome, answer)) in records.iter() {
            counts[*outcome as usize] += 1;
            let present = listed.contains(record);
            match outcome {
                Outcome::Acknowledged if !present => {
                    problems.push(format!("{record:?} lost ({answer})"))
                }
                Outcome::Failed if present => {
                    problems.push(format!("{record:?} refused but present ({answer})"))
                }
                _ => {}
            }
        }
        for record in listed.iter().filter(|r| !records.contains_key(r)) {
            problems.push(format!("{record:?} never requested"));
        }
        if problems.is_empty() {
            Ok(counts)
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// Starts `clients` clients creating tokens, databases and retention policies through the nodes
/// at `targets`, recording into `ledger`, moving on to the next node after anything but an
/// acknowledgement.
pub fn start_metadata_changes(
    ledger: &Arc<MetadataLedger>,
    targets: Vec<String>,
    clients: usize,
) -> Clients {
    let targets = Arc::new(targets);
    Clients::spawn(clients, |c, stopped| {
        let (ledger, targets) = (Arc::clone(ledger), Arc::clone(&targets));
        async move {
            let client = admin_client();
            let mut target = c % targets.len();
            for n in 0usize.. {
                if *stopped.borrow() {
                    return;
                }
                let record = Record::ALL[n % Record::ALL.len()];
                let name = format!("{METADATA_PREFIX}{c}-{n}");
                let response = record
                    .create(&client, &targets[target], &name)
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await;
                let outcome = Outcome::of(&response);
                let answer = match response {
                    Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                    Err(e) => e.to_string(),
                };
                let entry = (outcome, answer);
                ledger.records.lock().unwrap().insert((record, name), entry);
                if outcome != Outcome::Acknowledged {
                    target = (target + 1) % targets.len();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
}

/// A fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9, then restart after the hold.
    Kill,
    /// SIGSTOP, then SIGCONT after the hold.
    Pause,
    /// Cut the target off from every other node (refused or black-holed), then heal.
    Isolate(Link),
    /// Slow every link of the target, then heal.
    Slow(Duration),
}

/// Which node a fault hits, resolved when it is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Whoever leads Raft at that moment.
    Leader,
    /// The node at this index of the cluster's list.
    Member(usize),
}

#[derive(Debug, Clone)]
pub struct Step {
    pub fault: Fault,
    pub target: Target,
    pub hold: Duration,
    /// Quiet time before the fault, so the workload makes progress between faults.
    pub gap: Duration,
}

/// A fixed sequence of faults: the same seed gives the same steps.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub steps: Vec<Step>,
}

impl Schedule {
    /// `rounds` steps that go through `faults` in a shuffled order each cycle (so every kind
    /// occurs once `rounds` reaches their number), about half of them aimed at the leader, the
    /// rest at one of `members` nodes; each fault held 0.5–4 s after a quiet gap of 0.2–1.5 s.
    pub fn generate(seed: u64, rounds: usize, faults: &[Fault], members: usize) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut cycle: Vec<Fault> = Vec::new();
        let steps = (0..rounds)
            .map(|_| Step {
                fault: {
                    if cycle.is_empty() {
                        cycle = faults.to_vec();
                        cycle.shuffle(&mut rng);
                    }
                    cycle.pop().expect("refilled when empty")
                },
                target: if rng.random_bool(0.5) {
                    Target::Leader
                } else {
                    Target::Member(rng.random_range(0..members))
                },
                hold: Duration::from_millis(rng.random_range(500..4_000)),
                gap: Duration::from_millis(rng.random_range(200..1_500)),
            })
            .collect();
        Schedule { steps }
    }
}

/// What happened, in order, printed with the seed if the test fails.
pub struct History {
    seed: u64,
    started: Instant,
    events: Mutex<Vec<String>>,
    faults: AtomicUsize,
}

impl History {
    pub fn new(seed: u64) -> History {
        History {
            seed,
            started: Instant::now(),
            events: Mutex::default(),
            faults: AtomicUsize::new(0),
        }
    }

    pub fn note(&self, event: impl Into<String>) {
        let line = format!(
            "{:>8.3}s {}",
            self.started.elapsed().as_secs_f64(),
            event.into()
        );
        self.events.lock().unwrap().push(line);
    }

    pub fn fault(&self, event: impl Into<String>) {
        self.faults.fetch_add(1, Ordering::Relaxed);
        self.note(event);
    }

    pub fn faults(&self) -> usize {
        self.faults.load(Ordering::Relaxed)
    }

    pub fn dump(&self) -> String {
        format!(
            "seed {} (replay with ARCDB_FAULT_SEED={}):\n{}",
            self.seed,
            self.seed,
            self.events.lock().unwrap().join("\n")
        )
    }
}

impl Drop for History {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("fault history, {}", self.dump());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let faults = [Fault::Kill, Fault::Pause, Fault::Isolate(Link::BlackHoled)];
        let a = Schedule::generate(7, 30, &faults, 3);
        let b = Schedule::generate(7, 30, &faults, 3);
        let c = Schedule::generate(8, 30, &faults, 3);
        let shape = |s: &Schedule| format!("{:?}", s.steps);
        assert_eq!(shape(&a), shape(&b));
        assert_ne!(shape(&a), shape(&c));
        let first_cycle: Vec<Fault> = a.steps[..3].iter().map(|s| s.fault).collect();
        for fault in faults {
            assert!(first_cycle.contains(&fault), "{fault:?} in {first_cycle:?}");
        }
    }

    #[test]
    fn the_checker_finds_lost_duplicated_and_invented_rows() {
        let ledger = Ledger::default();
        ledger.record(
            &[1, 2],
            Format::InfluxV1,
            Outcome::Acknowledged,
            Instant::now(),
        );
        ledger.record(
            &[3],
            Format::InfluxV1,
            Outcome::Indeterminate,
            Instant::now(),
        );
        ledger.record(&[4], Format::InfluxV1, Outcome::Failed, Instant::now());
        let stored = |pairs: &[(i64, usize)]| pairs.iter().copied().collect::<Stored>();
        let good = check(&ledger, &stored(&[(1, 1), (2, 1), (3, 1)])).unwrap();
        assert_eq!((good.acknowledged, good.indeterminate_stored), (2, 1));
        for bad in [
            stored(&[(1, 1)]),
            stored(&[(1, 2), (2, 1)]),
            stored(&[(1, 1), (2, 1), (3, 2)]),
            stored(&[(1, 1), (2, 1), (4, 1)]),
            stored(&[(1, 1), (2, 1), (9, 1)]),
        ] {
            assert!(check(&ledger, &bad).is_err(), "{bad:?}");
        }
    }
}
