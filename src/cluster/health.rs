//! Members' health as this node sees it, from the heartbeats it receives. The state decision is a
//! pure function of the time since the last heartbeat; the book only records arrivals.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::wal::Lsn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Healthy,
    Unhealthy,
    Dead,
    Joining,
    Leaving,
}

impl NodeState {
    pub const ALL: [NodeState; 5] = [
        NodeState::Healthy,
        NodeState::Unhealthy,
        NodeState::Dead,
        NodeState::Joining,
        NodeState::Leaving,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Healthy => "healthy",
            NodeState::Unhealthy => "unhealthy",
            NodeState::Dead => "dead",
            NodeState::Joining => "joining",
            NodeState::Leaving => "leaving",
        }
    }
}

/// How many missed heartbeats make a peer unhealthy (twice as many: dead).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub heartbeat_interval: Duration,
    pub unhealthy_after: u32,
}

/// A member's state from what is known about it: a learner is still joining, a member that said
/// it is leaving stays leaving until it beats again, otherwise missed heartbeats decide.
pub fn node_state(
    silent_for: Duration,
    is_voter: bool,
    leaving: bool,
    thresholds: Thresholds,
) -> NodeState {
    if !is_voter {
        return NodeState::Joining;
    }
    if leaving {
        return NodeState::Leaving;
    }
    let interval = thresholds.heartbeat_interval.as_millis().max(1);
    let missed = silent_for.as_millis() / interval;
    let threshold = u128::from(thresholds.unhealthy_after);
    if missed < threshold {
        NodeState::Healthy
    } else if missed < 2 * threshold {
        NodeState::Unhealthy
    } else {
        NodeState::Dead
    }
}

#[derive(Debug, Clone)]
struct PeerRecord {
    /// When this node first knew the peer as a member: silence counts from here until the
    /// first heartbeat.
    known_since: Instant,
    last_heartbeat: Option<(Instant, DateTime<Utc>)>,
    leaving: bool,
    replicated_lsn: Option<Lsn>,
}

/// What this node has heard from each peer (by name).
#[derive(Debug)]
pub struct HealthBook {
    /// Peers not heard from yet count as silent since this node started watching.
    watching_since: Instant,
    peers: HashMap<String, PeerRecord>,
}

/// A peer's health as of now.
#[derive(Debug, Clone)]
pub struct PeerHealth {
    pub silent_for: Duration,
    pub leaving: bool,
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// What its last heartbeat said it replicated (readers only).
    pub replicated_lsn: Option<Lsn>,
}

impl HealthBook {
    pub fn new(now: Instant) -> HealthBook {
        HealthBook {
            watching_since: now,
            peers: HashMap::new(),
        }
    }

    /// Notes that `peer` is a member, so a member that joins later is not judged by silence from
    /// before it existed.
    pub fn note_member(&mut self, peer: &str, now: Instant) {
        self.peers.entry(peer.to_owned()).or_insert(PeerRecord {
            known_since: now,
            last_heartbeat: None,
            leaving: false,
            replicated_lsn: None,
        });
    }

    pub fn record_heartbeat(
        &mut self,
        peer: &str,
        leaving: bool,
        replicated_lsn: Option<Lsn>,
        now: Instant,
    ) {
        let record = self.peers.entry(peer.to_owned()).or_insert(PeerRecord {
            known_since: now,
            last_heartbeat: None,
            leaving,
            replicated_lsn,
        });
        record.last_heartbeat = Some((now, Utc::now()));
        record.leaving = leaving;
        record.replicated_lsn = replicated_lsn;
    }

    /// `peer` was heard from by other means than a heartbeat: it is alive, and nothing else
    /// about it changed.
    pub fn record_contact(&mut self, peer: &str, now: Instant) {
        let record = self.peers.entry(peer.to_owned()).or_insert(PeerRecord {
            known_since: now,
            last_heartbeat: None,
            leaving: false,
            replicated_lsn: None,
        });
        record.last_heartbeat = Some((now, Utc::now()));
    }

    pub fn peer(&self, peer: &str, now: Instant) -> PeerHealth {
        let record = self.peers.get(peer);
        let last = record.and_then(|r| r.last_heartbeat);
        let since = match (record, last) {
            (_, Some((at, _))) => at,
            (Some(record), None) => record.known_since,
            (None, None) => self.watching_since,
        };
        PeerHealth {
            silent_for: now.saturating_duration_since(since),
            leaving: record.is_some_and(|r| r.leaving),
            last_heartbeat: last.map(|(_, wall)| wall),
            replicated_lsn: record.and_then(|r| r.replicated_lsn),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        heartbeat_interval: Duration::from_secs(1),
        unhealthy_after: 3,
    };

    #[test]
    fn missed_heartbeats_make_a_voter_unhealthy_then_dead() {
        let state = |ms| node_state(Duration::from_millis(ms), true, false, T);
        assert_eq!(state(0), NodeState::Healthy);
        assert_eq!(state(2_999), NodeState::Healthy);
        assert_eq!(state(3_000), NodeState::Unhealthy);
        assert_eq!(state(5_999), NodeState::Unhealthy);
        assert_eq!(state(6_000), NodeState::Dead);
    }

    #[test]
    fn learners_are_joining_and_a_leaving_node_stays_leaving() {
        assert_eq!(
            node_state(Duration::ZERO, false, false, T),
            NodeState::Joining
        );
        assert_eq!(
            node_state(Duration::from_secs(60), true, true, T),
            NodeState::Leaving
        );
    }

    #[test]
    fn the_book_measures_silence_from_the_last_heartbeat_or_from_the_start() {
        let start = Instant::now();
        let mut book = HealthBook::new(start);
        let later = start + Duration::from_secs(5);
        assert_eq!(book.peer("a", later).silent_for, Duration::from_secs(5));
        book.record_heartbeat("a", true, Some(7), later);
        let peer = book.peer("a", later + Duration::from_secs(1));
        assert_eq!(peer.silent_for, Duration::from_secs(1));
        assert!(peer.leaving && peer.last_heartbeat.is_some());
        assert_eq!(peer.replicated_lsn, Some(7));
        book.record_heartbeat("a", false, None, later);
        assert!(!book.peer("a", later).leaving);
        let contact = later + Duration::from_secs(3);
        book.record_contact("a", contact);
        assert_eq!(book.peer("a", contact).silent_for, Duration::ZERO);

        book.note_member("b", later);
        let much_later = later + Duration::from_secs(2);
        assert_eq!(
            book.peer("b", much_later).silent_for,
            Duration::from_secs(2)
        );
        book.note_member("b", much_later);
        assert_eq!(
            book.peer("b", much_later).silent_for,
            Duration::from_secs(2)
        );
    }
}
