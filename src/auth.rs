//! API tokens: generation, slow salted hashes, verification with a short-lived cache, and the
//! first admin token. Token records live in `meta` (hashes only), so every node sees changes.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
use crate::meta::{
    AdminCommand, AdminError, ApplyError, Meta, MetaCommand, MetaError, Permission, TokenRecord,
};

/// PBKDF2-HMAC-SHA256 rounds (OWASP's figure, as Arc uses).
const PBKDF2_ROUNDS: u32 = 600_000;
const HASH_SCHEME: &str = "pbkdf2-sha256";
pub const ADMIN_TOKEN_NAME: &str = "admin";
pub const RECOVERY_TOKEN_NAME: &str = "arc-recovery";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("Authentication required")]
    Missing,
    #[error("Invalid or expired token")]
    Invalid,
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// `N` bytes from the OS random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the OS random source works");
    bytes
}

/// A fresh secret: 32 random bytes, URL-safe base64 (44 characters).
pub fn generate_secret() -> String {
    URL_SAFE.encode(random_bytes::<32>())
}

/// The fast, non-secret index of a secret: 16 hex digits of its SHA-256.
pub fn lookup_key(secret: &str) -> String {
    secret_digest(secret)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `$pbkdf2-sha256$<rounds>$<salt>$<key>` for a secret.
pub fn hash_secret(secret: &str) -> String {
    let salt = random_bytes::<16>();
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(PBKDF2_ROUNDS).expect("non-zero"),
        &salt,
        secret.as_bytes(),
        &mut key,
    );
    format!(
        "${HASH_SCHEME}${PBKDF2_ROUNDS}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(key)
    )
}

/// Constant-time check of a secret against a stored hash; malformed hashes never match.
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    let parts: Vec<&str> = hash.split('$').collect();
    let [_, scheme, rounds, salt, key] = parts.as_slice() else {
        return false;
    };
    let (Some(rounds), Ok(salt), Ok(key)) = (
        rounds.parse::<u32>().ok().and_then(NonZeroU32::new),
        STANDARD_NO_PAD.decode(salt),
        STANDARD_NO_PAD.decode(key),
    ) else {
        return false;
    };
    *scheme == HASH_SCHEME
        && ring::pbkdf2::verify(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            &salt,
            secret.as_bytes(),
            &key,
        )
        .is_ok()
}

/// A new token record for `secret` (its id is assigned when committed).
pub fn new_token(
    name: &str,
    description: &str,
    permissions: Vec<Permission>,
    secret: &str,
    now_us: i64,
    expires_at_us: Option<i64>,
) -> TokenRecord {
    TokenRecord {
        id: 0,
        name: name.to_string(),
        description: description.to_string(),
        permissions,
        hash: hash_secret(secret),
        lookup: lookup_key(secret),
        created_at_us: now_us,
        expires_at_us,
        enabled: true,
    }
}

fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

struct CachedVerification {
    token_id: u64,
    /// The hash the secret was checked against: a rotation changes it.
    hash: String,
    verified_at: Instant,
}

/// Checks secrets against the token records. A verified secret is remembered for `cache_ttl`
/// so the slow hash runs once per TTL; the record itself (enabled, expiry, existence) is read
/// on every request, so revoking or deleting a token takes effect at once.
pub struct Authenticator {
    meta: Arc<Meta>,
    ttl: Duration,
    max_entries: usize,
    cache: Mutex<HashMap<[u8; 32], CachedVerification>>,
    /// Held while a slow hash runs, so concurrent first requests with one secret hash it once.
    verifying: Mutex<()>,
    last_used_us: Mutex<HashMap<u64, i64>>,
}

impl Authenticator {
    pub fn new(meta: Arc<Meta>, config: &AuthConfig) -> Authenticator {
        Authenticator {
            meta,
            ttl: Duration::from_secs(config.cache_ttl),
            max_entries: config.max_cache_size,
            cache: Mutex::default(),
            verifying: Mutex::default(),
            last_used_us: Mutex::default(),
        }
    }

    pub fn meta(&self) -> &Arc<Meta> {
        &self.meta
    }

    /// The token a secret belongs to, if it is usable now. Blocking when the hash must be
    /// checked: call from a blocking context.
    pub fn authenticate(&self, secret: &str) -> Result<TokenRecord, AuthError> {
        let digest = secret_digest(secret);
        let token = match self.cached(&digest) {
            Some(cached) => cached?,
            None => {
                let _one_at_a_time = self.verifying.lock().unwrap();
                match self.cached(&digest) {
                    Some(cached) => cached?,
                    None => {
                        let token = self.verify_slowly(secret)?;
                        self.remember(digest, &token);
                        token
                    }
                }
            }
        };
        self.admit(token)
    }

    /// [`Authenticator::authenticate`] without the slow hash: `None` when the secret is not in
    /// the cache. Cheap enough for the request path.
    pub fn authenticate_cached(&self, secret: &str) -> Option<Result<TokenRecord, AuthError>> {
        let token = self.cached(&secret_digest(secret))?;
        Some(token.and_then(|token| self.admit(token)))
    }

    /// Accepts a verified token if it is usable now, and notes its use.
    fn admit(&self, token: TokenRecord) -> Result<TokenRecord, AuthError> {
        let now = now_us();
        if !token.usable_at(now) {
            return Err(AuthError::Invalid);
        }
        self.last_used_us.lock().unwrap().insert(token.id, now);
        Ok(token)
    }

    /// The token of a verification still in the cache: `None` on a miss, an error if the token
    /// was deleted or rotated since.
    fn cached(&self, digest: &[u8; 32]) -> Option<Result<TokenRecord, AuthError>> {
        let (id, hash) = self.cache.lock().unwrap().get(digest).and_then(|entry| {
            (entry.verified_at.elapsed() < self.ttl).then(|| (entry.token_id, entry.hash.clone()))
        })?;
        let state = self.meta.state();
        Some(match state.admin().token(id) {
            Some(token) if token.hash == hash => Ok(token.clone()),
            _ => Err(AuthError::Invalid),
        })
    }

    fn verify_slowly(&self, secret: &str) -> Result<TokenRecord, AuthError> {
        let lookup = lookup_key(secret);
        let candidates: Vec<TokenRecord> = self
            .meta
            .state()
            .admin()
            .tokens()
            .filter(|t| t.lookup == lookup)
            .cloned()
            .collect();
        candidates
            .into_iter()
            .find(|t| verify_secret(secret, &t.hash))
            .ok_or(AuthError::Invalid)
    }

    fn remember(&self, digest: [u8; 32], token: &TokenRecord) {
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= self.max_entries {
            cache.retain(|_, entry| entry.verified_at.elapsed() < self.ttl);
            if cache.len() >= self.max_entries {
                cache.clear();
            }
        }
        cache.insert(
            digest,
            CachedVerification {
                token_id: token.id,
                hash: token.hash.clone(),
                verified_at: Instant::now(),
            },
        );
    }

    /// Forgets every cached verification (after a change to tokens on this node).
    pub fn invalidate(&self) {
        self.cache.lock().unwrap().clear();
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub fn cache_size(&self) -> usize {
        self.cache.lock().unwrap().len()
    }

    pub fn last_used_us(&self, token_id: u64) -> Option<i64> {
        self.last_used_us.lock().unwrap().get(&token_id).copied()
    }

    /// Commits a token change and drops cached verifications, so the change holds at once here.
    pub fn commit(&self, command: AdminCommand) -> Result<(), MetaError> {
        let result = self.meta.commit(MetaCommand::Admin(command));
        self.invalidate();
        result
    }
}

/// What start-up did about the first admin token.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Tokens existed and nothing was asked for.
    Nothing,
    /// The admin token was created with a random secret, to be shown once.
    CreatedRandom { secret: String },
    /// A token was created from the configured secret (`name` says which).
    CreatedFromConfig { name: String },
}

/// Creates the first admin token when there is none; with `force_bootstrap`, adds a recovery
/// admin token for the configured secret unless that secret already works.
pub fn bootstrap(meta: &Meta, config: &AuthConfig) -> Result<Bootstrap, MetaError> {
    let configured = config.bootstrap_token.trim();
    let all = vec![
        Permission::Read,
        Permission::Write,
        Permission::Delete,
        Permission::Admin,
    ];
    let now = now_us();
    let (has_tokens, secret_known, recovery_names) = {
        let state = meta.state();
        let admin = state.admin();
        let lookup = lookup_key(configured);
        let known = !configured.is_empty()
            && admin
                .tokens()
                .any(|t| t.lookup == lookup && verify_secret(configured, &t.hash));
        let names: Vec<String> = admin.tokens().map(|t| t.name.clone()).collect();
        (admin.tokens().next().is_some(), known, names)
    };
    if !has_tokens {
        let (secret, outcome) = if configured.is_empty() {
            let secret = generate_secret();
            (secret.clone(), Bootstrap::CreatedRandom { secret })
        } else {
            let name = ADMIN_TOKEN_NAME.to_string();
            (
                configured.to_string(),
                Bootstrap::CreatedFromConfig { name },
            )
        };
        let token = new_token(
            ADMIN_TOKEN_NAME,
            "Initial admin token",
            all,
            &secret,
            now,
            None,
        );
        return create_unless_taken(meta, token, outcome);
    }
    if config.force_bootstrap && !configured.is_empty() && !secret_known {
        let name = (0..)
            .map(|n| match n {
                0 => RECOVERY_TOKEN_NAME.to_string(),
                n => format!("{RECOVERY_TOKEN_NAME}-{n}"),
            })
            .find(|name| !recovery_names.contains(name))
            .expect("an unused name exists");
        let token = new_token(&name, "Recovery admin token", all, configured, now, None);
        return create_unless_taken(meta, token, Bootstrap::CreatedFromConfig { name });
    }
    Ok(Bootstrap::Nothing)
}

/// Creates a start-up token. Nodes of a cluster starting together each propose one: the first
/// applied stands, and the others find its name taken and make none (only the winner prints).
fn create_unless_taken(
    meta: &Meta,
    token: TokenRecord,
    outcome: Bootstrap,
) -> Result<Bootstrap, MetaError> {
    match meta.commit(MetaCommand::Admin(AdminCommand::CreateToken(token))) {
        Ok(()) => Ok(outcome),
        Err(MetaError::Rejected(ApplyError::Admin(AdminError::NameTaken(_)))) => {
            Ok(Bootstrap::Nothing)
        }
        Err(err) => Err(err),
    }
}

/// The secret a request carries, in Arc's order: `Authorization: Bearer`, `Authorization:
/// Token`, the raw `Authorization` value, `x-api-key`, then `?p=`.
pub fn request_secret(headers: &axum::http::HeaderMap, query: Option<&str>) -> Option<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if let Some(value) = header("authorization") {
        let secret = ["Bearer ", "Token "]
            .iter()
            .find_map(|scheme| {
                value
                    .get(..scheme.len())
                    .filter(|p| p.eq_ignore_ascii_case(scheme))
                    .map(|_| value[scheme.len()..].trim())
            })
            .unwrap_or(value);
        return Some(secret.to_string());
    }
    if let Some(value) = header("x-api-key") {
        return Some(value.to_string());
    }
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "p")
        .map(|(_, v)| percent_decode(v))
        .filter(|v| !v.is_empty())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn secrets_are_long_random_and_verify_only_against_their_hash() {
        let a = generate_secret();
        let b = generate_secret();
        assert_eq!(a.len(), 44);
        assert_ne!(a, b);
        let hash = hash_secret(&a);
        assert!(hash.starts_with("$pbkdf2-sha256$600000$"));
        assert!(!hash.contains(&a));
        assert!(verify_secret(&a, &hash));
        assert!(!verify_secret(&b, &hash));
        assert!(!verify_secret(&a, "$pbkdf2-sha256$x$y$z"));
        assert_ne!(hash, hash_secret(&a), "salted");
        assert_eq!(lookup_key(&a).len(), 16);
    }

    #[test]
    fn secrets_are_found_in_arcs_order() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            request_secret(&headers, Some("db=x&p=q%2Bs")),
            Some("q+s".into())
        );
        headers.insert("x-api-key", "key".parse().unwrap());
        assert_eq!(request_secret(&headers, Some("p=q")), Some("key".into()));
        for (value, expected) in [
            ("Bearer abc", "abc"),
            ("bearer abc", "abc"),
            ("Token abc", "abc"),
            ("abc", "abc"),
        ] {
            headers.insert("authorization", value.parse().unwrap());
            assert_eq!(request_secret(&headers, None), Some(expected.into()));
        }
        assert_eq!(request_secret(&HeaderMap::new(), Some("p=")), None);
    }

    #[test]
    fn a_start_up_token_whose_name_another_node_took_first_is_not_made_twice() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        let token = |secret: &str| {
            new_token(
                ADMIN_TOKEN_NAME,
                "",
                vec![Permission::Admin],
                secret,
                1,
                None,
            )
        };
        let winner = || Bootstrap::CreatedRandom {
            secret: "a".repeat(40),
        };
        assert_eq!(
            create_unless_taken(&meta, token(&"a".repeat(40)), winner()).unwrap(),
            winner()
        );
        let loser = Bootstrap::CreatedRandom {
            secret: "b".repeat(40),
        };
        assert_eq!(
            create_unless_taken(&meta, token(&"b".repeat(40)), loser).unwrap(),
            Bootstrap::Nothing
        );
        assert_eq!(meta.state().admin().tokens().count(), 1);
    }

    #[test]
    fn bootstrap_creates_one_admin_then_only_recovery_tokens_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        let mut config = AuthConfig::default();
        let Bootstrap::CreatedRandom { secret } = bootstrap(&meta, &config).unwrap() else {
            panic!("first start creates a random admin token");
        };
        assert_eq!(bootstrap(&meta, &config).unwrap(), Bootstrap::Nothing);
        config.bootstrap_token = "r".repeat(40);
        assert_eq!(bootstrap(&meta, &config).unwrap(), Bootstrap::Nothing);
        config.force_bootstrap = true;
        assert_eq!(
            bootstrap(&meta, &config).unwrap(),
            Bootstrap::CreatedFromConfig {
                name: RECOVERY_TOKEN_NAME.into()
            }
        );
        assert_eq!(bootstrap(&meta, &config).unwrap(), Bootstrap::Nothing);

        let auth = Authenticator::new(Arc::new(meta), &AuthConfig::default());
        let admin = auth.authenticate(&secret).unwrap();
        assert_eq!(admin.name, ADMIN_TOKEN_NAME);
        assert!(admin.allows(Permission::Admin));
        assert_eq!(
            auth.authenticate(&"r".repeat(40)).unwrap().name,
            RECOVERY_TOKEN_NAME
        );
        assert!(matches!(
            auth.authenticate("wrong"),
            Err(AuthError::Invalid)
        ));
        // Revocation holds at once even though the verification is cached.
        auth.commit(AdminCommand::SetTokenEnabled {
            id: admin.id,
            enabled: false,
        })
        .unwrap();
        assert!(matches!(
            auth.authenticate(&secret),
            Err(AuthError::Invalid)
        ));
    }
}
