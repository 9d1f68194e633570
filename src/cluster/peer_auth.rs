//! Authentication of node-to-node requests: every request carries the sender's node id, the
//! cluster name, a random nonce, a timestamp, the SHA-256 of its body and an HMAC-SHA256 (keyed
//! by the shared secret) over those and the request's path. A receiver refuses another cluster's
//! requests, stale timestamps, bad signatures and nonces it has already seen, all from the headers
//! alone, so a sender without the secret cannot make it read a body; the body is then checked
//! against its signed digest.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};

pub const NODE_HEADER: &str = "x-arc-node";
pub const CLUSTER_HEADER: &str = "x-arc-cluster";
pub const NONCE_HEADER: &str = "x-arc-nonce";
pub const TIMESTAMP_HEADER: &str = "x-arc-timestamp";
pub const SIGNATURE_HEADER: &str = "x-arc-signature";
pub const BODY_DIGEST_HEADER: &str = "x-arc-body-sha256";

/// Seconds a request's timestamp may differ from the receiver's clock.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// The authentication fields of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub node: String,
    pub cluster: String,
    pub nonce: String,
    pub timestamp: i64,
    /// Hex SHA-256 of the body.
    pub body_digest: String,
    pub signature: String,
}

impl SignedHeaders {
    pub fn pairs(&self) -> [(&'static str, String); 6] {
        [
            (NODE_HEADER, self.node.clone()),
            (CLUSTER_HEADER, self.cluster.clone()),
            (NONCE_HEADER, self.nonce.clone()),
            (TIMESTAMP_HEADER, self.timestamp.to_string()),
            (BODY_DIGEST_HEADER, self.body_digest.clone()),
            (SIGNATURE_HEADER, self.signature.clone()),
        ]
    }

    /// Reads the fields from request headers; `None` when one is missing or malformed.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<SignedHeaders> {
        let text = |name: &str| headers.get(name)?.to_str().ok().map(str::to_owned);
        Some(SignedHeaders {
            node: text(NODE_HEADER)?,
            cluster: text(CLUSTER_HEADER)?,
            nonce: text(NONCE_HEADER)?,
            timestamp: text(TIMESTAMP_HEADER)?.parse().ok()?,
            body_digest: text(BODY_DIGEST_HEADER)?,
            signature: text(SIGNATURE_HEADER)?,
        })
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("authentication headers missing or malformed")]
    Missing,
    #[error("cluster name '{0}' is not this cluster's")]
    WrongCluster(String),
    #[error("timestamp is {0} s away from this node's clock")]
    Stale(i64),
    #[error("signature does not match (wrong shared secret?)")]
    BadSignature,
    #[error("nonce was already used")]
    Replayed,
    #[error("body does not match its signed digest")]
    BodyMismatch,
}

/// Signs outgoing requests and verifies incoming ones for one node.
pub struct PeerAuth {
    key: hmac::Key,
    cluster: String,
    node: String,
    random: SystemRandom,
    /// Nonces accepted recently, with the timestamp they came with.
    seen: Mutex<NonceCache>,
}

impl std::fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerAuth")
            .field("cluster", &self.cluster)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl PeerAuth {
    pub fn new(shared_secret: &str, cluster: &str, node: &str) -> PeerAuth {
        PeerAuth {
            key: hmac::Key::new(hmac::HMAC_SHA256, shared_secret.as_bytes()),
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            random: SystemRandom::new(),
            seen: Mutex::new(NonceCache::default()),
        }
    }

    pub fn sign(&self, path: &str, body: &[u8], now: i64) -> SignedHeaders {
        let mut nonce = [0u8; 16];
        self.random
            .fill(&mut nonce)
            .expect("the system random source works");
        let mut signed = SignedHeaders {
            node: self.node.clone(),
            cluster: self.cluster.clone(),
            nonce: hex(&nonce),
            timestamp: now,
            body_digest: body_digest(body),
            signature: String::new(),
        };
        signed.signature = hex(hmac::sign(&self.key, &signed_message(path, &signed)).as_ref());
        signed
    }

    /// Accepts a request's headers once: signed by a holder of the shared secret for this
    /// cluster and `path`, fresh, and with a nonce not seen while its timestamp is fresh. Needs
    /// no body, so it runs before one is read.
    pub fn verify_headers<'h>(
        &self,
        headers: Option<&'h SignedHeaders>,
        path: &str,
        now: i64,
    ) -> Result<&'h SignedHeaders, Refusal> {
        let headers = headers.ok_or(Refusal::Missing)?;
        if headers.cluster != self.cluster {
            return Err(Refusal::WrongCluster(headers.cluster.clone()));
        }
        // Saturating: a hostile timestamp must not overflow.
        let skew = now.saturating_sub(headers.timestamp);
        if skew.unsigned_abs() > MAX_CLOCK_SKEW_SECS.unsigned_abs() {
            return Err(Refusal::Stale(skew));
        }
        let signature = unhex(&headers.signature).ok_or(Refusal::BadSignature)?;
        hmac::verify(&self.key, &signed_message(path, headers), &signature)
            .map_err(|_| Refusal::BadSignature)?;
        self.seen
            .lock()
            .unwrap()
            .insert(&headers.nonce, headers.timestamp, now)?;
        Ok(headers)
    }

    /// Checks a body against the digest its verified headers carry.
    pub fn verify_body(headers: &SignedHeaders, body: &[u8]) -> Result<(), Refusal> {
        if body_digest(body) == headers.body_digest {
            Ok(())
        } else {
            Err(Refusal::BodyMismatch)
        }
    }
}

fn body_digest(body: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, body).as_ref())
}

fn signed_message(path: &str, headers: &SignedHeaders) -> Vec<u8> {
    [
        "arc-peer",
        path,
        &headers.nonce,
        &headers.node,
        &headers.cluster,
        &headers.timestamp.to_string(),
        &headers.body_digest,
    ]
    .join("\0")
    .into_bytes()
}

/// Nonces seen within the freshness window; older ones are forgotten, since their timestamps
/// are refused as stale anyway.
#[derive(Default)]
struct NonceCache {
    by_nonce: HashMap<String, i64>,
    by_time: BTreeMap<i64, Vec<String>>,
}

impl NonceCache {
    fn insert(&mut self, nonce: &str, timestamp: i64, now: i64) -> Result<(), Refusal> {
        let oldest_fresh = now - MAX_CLOCK_SKEW_SECS;
        while let Some(entry) = self.by_time.first_entry() {
            if *entry.key() >= oldest_fresh {
                break;
            }
            for old in entry.remove() {
                self.by_nonce.remove(&old);
            }
        }
        if self.by_nonce.contains_key(nonce) {
            return Err(Refusal::Replayed);
        }
        self.by_nonce.insert(nonce.to_owned(), timestamp);
        self.by_time
            .entry(timestamp)
            .or_default()
            .push(nonce.to_owned());
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    impl PeerAuth {
        fn verify(
            &self,
            headers: Option<&SignedHeaders>,
            path: &str,
            body: &[u8],
            now: i64,
        ) -> Result<(), Refusal> {
            let headers = self.verify_headers(headers, path, now)?;
            PeerAuth::verify_body(headers, body)
        }
    }

    #[test]
    fn a_signed_request_is_accepted_once() {
        let sender = PeerAuth::new(SECRET, "prod", "reader-01");
        let receiver = PeerAuth::new(SECRET, "prod", "writer-01");
        let signed = sender.sign("/internal/heartbeat", b"{}", 1_000);
        assert_eq!(
            receiver.verify(Some(&signed), "/internal/heartbeat", b"{}", 1_010),
            Ok(())
        );
        assert_eq!(
            receiver.verify(Some(&signed), "/internal/heartbeat", b"{}", 1_011),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn wrong_secret_cluster_body_path_and_stale_requests_are_refused() {
        let receiver = PeerAuth::new(SECRET, "prod", "writer-01");
        let wrong_secret = PeerAuth::new("another-secret-of-enough-length!!", "prod", "x");
        let wrong_cluster = PeerAuth::new(SECRET, "staging", "x");
        let sender = PeerAuth::new(SECRET, "prod", "x");
        let now = 5_000;
        let check = |signed: &SignedHeaders, path: &str, body: &[u8], at: i64| {
            receiver.verify(Some(signed), path, body, at)
        };
        assert_eq!(
            check(&wrong_secret.sign("/p", b"b", now), "/p", b"b", now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            check(&wrong_cluster.sign("/p", b"b", now), "/p", b"b", now),
            Err(Refusal::WrongCluster("staging".into()))
        );
        assert_eq!(
            check(&sender.sign("/p", b"b", now), "/p", b"other", now),
            Err(Refusal::BodyMismatch)
        );
        let mut swapped = sender.sign("/p", b"b", now);
        swapped.body_digest = body_digest(b"other");
        assert_eq!(
            check(&swapped, "/p", b"other", now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            check(&sender.sign("/p", b"b", now), "/q", b"b", now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            check(&sender.sign("/p", b"b", now - 301), "/p", b"b", now),
            Err(Refusal::Stale(301))
        );
        assert_eq!(
            check(&sender.sign("/p", b"b", now + 400), "/p", b"b", now),
            Err(Refusal::Stale(-400))
        );
        let mut ancient = sender.sign("/p", b"b", now);
        ancient.timestamp = i64::MIN;
        assert_eq!(
            check(&ancient, "/p", b"b", now),
            Err(Refusal::Stale(i64::MAX))
        );
        let mut forged = sender.sign("/p", b"b", now);
        forged.node = "writer-01".into();
        assert_eq!(check(&forged, "/p", b"b", now), Err(Refusal::BadSignature));
        assert_eq!(
            receiver.verify(None, "/p", b"b", now),
            Err(Refusal::Missing)
        );
    }

    #[test]
    fn nonces_are_forgotten_once_their_timestamps_are_stale() {
        let mut cache = NonceCache::default();
        cache.insert("a", 100, 100).unwrap();
        assert_eq!(cache.insert("a", 100, 200), Err(Refusal::Replayed));
        cache.insert("b", 500, 500).unwrap();
        assert!(!cache.by_nonce.contains_key("a"));
        assert_eq!(cache.by_nonce.len(), 1);
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(unhex(&hex(&[0, 15, 255])), Some(vec![0, 15, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
