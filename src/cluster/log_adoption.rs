//! Shared storage with `cluster.shared_wal` (beyond Arc): a writer lost for good loses nothing it
//! acknowledged. Each writer copies its WAL to the bucket before acknowledging; when a writer has
//! been silent for `failover_timeout`, the Raft leader gives its log to a healthy writer
//! (`AdoptLog`), which flushes the copied entries into files under that log. From then on only
//! the adopter registers files of the log, and the lost writer, if it returns, starts a new log
//! and sets its old WAL aside. A writer acknowledges only while a leader confirmed, less than a
//! lease ago, that its log is still its own, and a leader gives a log away only after a silence
//! longer than a lease and no sooner than a lease after it became leader (as writer failover in
//! Pattern B does), so a writer that is cut off stops acknowledging before its log moves.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Cluster;
use crate::config::NodeRole;
use crate::meta::MetaCommand;

/// How often the leader looks at the writers.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// A writer as the leader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WriterSeen {
    pub name: String,
    /// The log it writes now.
    pub log: String,
    pub silent_for: Duration,
}

/// Pure: which logs to give to whom. A writer silent for `timeout` loses its log to the first
/// writer by name that is not silent; a log whose adopter went silent moves on the same way.
/// `adopted` maps logs already taken over to their adopter; `given_away` names writers whose
/// log this leader gave away while they stayed silent (their next log holds nothing yet).
pub fn adoptions(
    writers: &[WriterSeen],
    adopted: &BTreeMap<String, String>,
    given_away: &HashSet<String>,
    timeout: Duration,
    leading_for: Duration,
) -> Vec<(String, String)> {
    if leading_for < timeout {
        return Vec::new();
    }
    let silent = |name: &str| {
        writers
            .iter()
            .find(|w| w.name == name)
            .is_none_or(|w| w.silent_for >= timeout)
    };
    let Some(heir) = writers.iter().find(|w| w.silent_for < timeout) else {
        return Vec::new();
    };
    let lost = writers
        .iter()
        .filter(|w| w.silent_for >= timeout && !given_away.contains(&w.name))
        .map(|w| w.log.clone());
    let orphaned = adopted
        .iter()
        .filter(|(_, by)| silent(by))
        .map(|(log, _)| log.clone());
    lost.chain(orphaned)
        .map(|log| (log, heir.name.clone()))
        .collect()
}

impl Cluster {
    /// The log this shared-storage writer writes, once known.
    pub fn writes_log(&self, log: String) {
        if self.log.set(log).is_err() {
            tracing::warn!("this writer's log was already set");
        }
    }

    /// Whether another writer took this writer's log over (it must start a new one).
    pub fn log_taken_over(&self) -> bool {
        self.log.get().is_some_and(|log| {
            self.applied
                .state
                .read()
                .unwrap()
                .adopter_of(log)
                .is_some_and(|by| by != self.local.name)
        })
    }

    /// Gives lost writers' logs to healthy writers while this node leads, until `stop`.
    pub(super) async fn run_log_adoption(
        self: Arc<Self>,
        timeout: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut leading_since: Option<Instant> = None;
        let mut given_away: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(since) = self.leading_since(&mut leading_since) else {
                given_away.clear();
                continue;
            };
            let leading_for = since.elapsed();
            let writers = self.writers_seen();
            given_away.retain(|name| {
                writers
                    .iter()
                    .any(|w| w.name == *name && w.silent_for >= timeout)
            });
            let adopted = self.applied.state.read().unwrap().adopted_logs().clone();
            for (log, by) in adoptions(&writers, &adopted, &given_away, timeout, leading_for) {
                tracing::warn!(log = %log, by = %by, "a writer is lost: another writer takes its log over");
                let command = MetaCommand::AdoptLog {
                    log: log.clone(),
                    by,
                    at_us: chrono::Utc::now().timestamp_micros(),
                };
                match self.submit(command).await {
                    Ok(()) => {
                        if let Some(owner) = writers.iter().find(|w| w.log == log) {
                            given_away.insert(owner.name.clone());
                        }
                    }
                    Err(err) => {
                        tracing::warn!(log = %log, error = %err, "could not hand a lost writer's log over")
                    }
                }
            }
        }
    }

    fn writers_seen(&self) -> Vec<WriterSeen> {
        let now = Instant::now();
        let nodes = self.nodes();
        // The order `nodes` takes them in.
        let health = self.health.lock().unwrap();
        let state = self.applied.state.read().unwrap();
        nodes
            .into_iter()
            .filter(|n| n.role == NodeRole::Writer)
            .map(|n| WriterSeen {
                log: state.log_of(&n.id),
                silent_for: if n.is_local {
                    Duration::ZERO
                } else {
                    health.peer(&n.id, now).silent_for
                },
                name: n.id,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn writer(name: &str, silent_s: u64) -> WriterSeen {
        WriterSeen {
            name: name.into(),
            log: name.into(),
            silent_for: Duration::from_secs(silent_s),
        }
    }

    #[test]
    fn a_silent_writers_log_goes_to_the_first_live_writer_once() {
        let writers = [writer("w1", 5), writer("w2", 0), writer("w3", 0)];
        let none = (BTreeMap::new(), HashSet::new());
        let give = |given: &HashSet<String>, leading_s| {
            adoptions(
                &writers,
                &none.0,
                given,
                TIMEOUT,
                Duration::from_secs(leading_s),
            )
        };
        assert_eq!(give(&none.1, 1), [], "a new leader waits out a lease");
        assert_eq!(give(&none.1, 9), [("w1".into(), "w2".into())]);
        let given = HashSet::from(["w1".to_owned()]);
        assert_eq!(give(&given, 9), [], "not again while it stays silent");
        let all_silent = [writer("w1", 5), writer("w2", 5)];
        assert_eq!(
            adoptions(&all_silent, &none.0, &none.1, TIMEOUT, TIMEOUT),
            [],
            "nobody to take it"
        );
    }

    #[test]
    fn a_log_whose_adopter_went_silent_moves_on() {
        let writers = [writer("w1", 5), writer("w2", 5), writer("w3", 0)];
        let adopted = BTreeMap::from([("w1".to_owned(), "w2".to_owned())]);
        let given = HashSet::from(["w1".to_owned(), "w2".to_owned()]);
        assert_eq!(
            adoptions(&writers, &adopted, &given, TIMEOUT, TIMEOUT),
            [("w1".into(), "w3".into())]
        );
    }
}
