//! Operator-managed metadata: API tokens (hashes only), declared databases, retention policies
//! and continuous queries with their execution histories. Part of the one state machine, so a
//! cluster replicates them like the file manifest.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Executions kept per retention policy and per continuous query.
const HISTORY_LEN: usize = 100;

/// Status of a continuous-query execution that wrote its window.
pub const CQ_COMPLETED: &str = "completed";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Read,
    Write,
    Delete,
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Delete => "delete",
            Permission::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Permission> {
        match text.trim().to_ascii_lowercase().as_str() {
            "read" => Some(Permission::Read),
            "write" => Some(Permission::Write),
            "delete" => Some(Permission::Delete),
            "admin" => Some(Permission::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: u64,
    pub name: String,
    pub description: String,
    pub permissions: Vec<Permission>,
    /// `$pbkdf2-sha256$<iterations>$<salt>$<key>`: the secret itself is never stored.
    pub hash: String,
    /// First 16 hex digits of SHA-256(secret): finds the candidate without a slow hash.
    pub lookup: String,
    pub created_at_us: i64,
    pub expires_at_us: Option<i64>,
    pub enabled: bool,
}

impl TokenRecord {
    pub fn allows(&self, needed: Permission) -> bool {
        self.permissions
            .iter()
            .any(|p| *p == needed || *p == Permission::Admin)
    }

    pub fn usable_at(&self, now_us: i64) -> bool {
        self.enabled && self.expires_at_us.is_none_or(|t| now_us < t)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRecord {
    pub name: String,
    pub created_at_us: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    pub id: u64,
    pub name: String,
    pub database: String,
    /// `None`: every measurement of the database.
    pub measurement: Option<String>,
    pub retention_days: u32,
    pub buffer_days: u32,
    pub is_active: bool,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionExecution {
    pub id: u64,
    pub policy_id: u64,
    pub executed_at_us: i64,
    pub status: String,
    pub deleted_count: u64,
    pub files_deleted: u64,
    pub cutoff_us: i64,
    pub duration_ms: f64,
    pub error: Option<String>,
    /// The firing of `scheduler.retention_schedule` a scheduled run covered; `None` for a run
    /// asked for through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_us: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContinuousQuery {
    pub id: u64,
    pub name: String,
    pub description: Option<String>,
    pub database: String,
    pub source_measurement: String,
    pub destination_measurement: String,
    /// SQL with `{start_time}` and `{end_time}` placeholders.
    pub query: String,
    /// As given (`"1m"`), and in µs.
    pub interval: String,
    pub interval_us: i64,
    pub tag_columns: Vec<String>,
    pub retention_days: Option<u32>,
    pub delete_source_after_days: Option<u32>,
    pub is_active: bool,
    /// End of the last window that ran successfully.
    pub last_processed_us: Option<i64>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CqExecution {
    pub id: u64,
    pub query_id: u64,
    pub execution_id: String,
    pub executed_at_us: i64,
    pub status: String,
    pub start_us: i64,
    pub end_us: i64,
    pub records_written: u64,
    pub duration_s: f64,
    pub error: Option<String>,
    /// Run by the scheduler (not asked for through the API): a window runs this way once.
    #[serde(default)]
    pub scheduled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminCommand {
    /// Adds a token; its `id` is assigned by the state machine.
    CreateToken(TokenRecord),
    UpdateToken {
        id: u64,
        name: Option<String>,
        description: Option<String>,
        permissions: Option<Vec<Permission>>,
        expires_at_us: Option<Option<i64>>,
    },
    SetTokenSecret {
        id: u64,
        hash: String,
        lookup: String,
    },
    SetTokenEnabled {
        id: u64,
        enabled: bool,
    },
    DeleteToken {
        id: u64,
    },
    CreateDatabase(DatabaseRecord),
    DropDatabase {
        name: String,
    },
    /// Creates (id 0: assigned) or replaces a policy.
    PutRetentionPolicy(RetentionPolicy),
    DeleteRetentionPolicy {
        id: u64,
    },
    /// Records an execution (id assigned).
    RecordRetentionExecution(RetentionExecution),
    /// Creates (id 0: assigned) or replaces a continuous query.
    PutContinuousQuery(ContinuousQuery),
    DeleteContinuousQuery {
        id: u64,
    },
    /// Records an execution (id assigned); a successful one moves the query's
    /// `last_processed_us` to the end of its window.
    RecordCqExecution(CqExecution),
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminError {
    #[error("name '{0}' is already in use")]
    NameTaken(String),
    #[error("token {0} not found")]
    UnknownToken(u64),
    #[error("database '{0}' already exists")]
    DatabaseExists(String),
    #[error("database '{0}' not found")]
    UnknownDatabase(String),
    #[error("retention policy {0} not found")]
    UnknownPolicy(u64),
    #[error("continuous query {0} not found")]
    UnknownContinuousQuery(u64),
    #[error("retention policy {policy} already ran for its scheduled run at {slot_us} µs")]
    RetentionSlotDone { policy: u64, slot_us: i64 },
    #[error("continuous query {query} already processed its window up to {end_us} µs")]
    CqWindowDone { query: u64, end_us: i64 },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdminState {
    next_id: u64,
    tokens: BTreeMap<u64, TokenRecord>,
    databases: BTreeMap<String, DatabaseRecord>,
    retention_policies: BTreeMap<u64, RetentionPolicy>,
    retention_history: BTreeMap<u64, VecDeque<RetentionExecution>>,
    #[serde(default)]
    continuous_queries: BTreeMap<u64, ContinuousQuery>,
    #[serde(default)]
    cq_history: BTreeMap<u64, VecDeque<CqExecution>>,
    /// The latest scheduled run recorded per retention policy (µs), kept apart from the
    /// bounded history: whoever runs the schedule next (another leader) starts after it.
    #[serde(default)]
    retention_slots: BTreeMap<u64, i64>,
}

fn name_free<'a>(
    mut names: impl Iterator<Item = (u64, &'a str)>,
    name: &str,
    except: u64,
) -> Result<(), AdminError> {
    match names.any(|(id, n)| id != except && n == name) {
        true => Err(AdminError::NameTaken(name.to_string())),
        false => Ok(()),
    }
}

fn push_history<T>(history: &mut VecDeque<T>, item: T) {
    if history.len() == HISTORY_LEN {
        history.pop_front();
    }
    history.push_back(item);
}

impl AdminState {
    pub fn check(&self, command: &AdminCommand) -> Result<(), AdminError> {
        let token_names = || self.tokens.values().map(|t| (t.id, t.name.as_str()));
        let known_token = |id: u64| match self.tokens.contains_key(&id) {
            true => Ok(()),
            false => Err(AdminError::UnknownToken(id)),
        };
        match command {
            AdminCommand::CreateToken(token) => name_free(token_names(), &token.name, 0),
            AdminCommand::UpdateToken { id, name, .. } => {
                known_token(*id)?;
                name.as_deref()
                    .map_or(Ok(()), |n| name_free(token_names(), n, *id))
            }
            AdminCommand::SetTokenSecret { id, .. }
            | AdminCommand::SetTokenEnabled { id, .. }
            | AdminCommand::DeleteToken { id } => known_token(*id),
            AdminCommand::CreateDatabase(db) => match self.databases.contains_key(&db.name) {
                true => Err(AdminError::DatabaseExists(db.name.clone())),
                false => Ok(()),
            },
            AdminCommand::DropDatabase { .. } => Ok(()),
            AdminCommand::PutRetentionPolicy(policy) => {
                if policy.id != 0 && !self.retention_policies.contains_key(&policy.id) {
                    return Err(AdminError::UnknownPolicy(policy.id));
                }
                let names = self
                    .retention_policies
                    .values()
                    .map(|p| (p.id, p.name.as_str()));
                name_free(names, &policy.name, policy.id)
            }
            AdminCommand::DeleteRetentionPolicy { id } => self.retention_policy(*id).map(|_| ()),
            AdminCommand::RecordRetentionExecution(execution) => {
                self.retention_policy(execution.policy_id)?;
                match (execution.slot_us, self.retention_slot(execution.policy_id)) {
                    (Some(slot_us), Some(done)) if slot_us <= done => {
                        Err(AdminError::RetentionSlotDone {
                            policy: execution.policy_id,
                            slot_us,
                        })
                    }
                    _ => Ok(()),
                }
            }
            AdminCommand::PutContinuousQuery(query) => {
                if query.id != 0 {
                    self.continuous_query(query.id)?;
                }
                let names = self
                    .continuous_queries
                    .values()
                    .map(|q| (q.id, q.name.as_str()));
                name_free(names, &query.name, query.id)
            }
            AdminCommand::DeleteContinuousQuery { id } => self.continuous_query(*id).map(|_| ()),
            AdminCommand::RecordCqExecution(execution) => {
                let query = self.continuous_query(execution.query_id)?;
                // Two schedulers (an old and a new leader) never both record a window.
                let done = query
                    .last_processed_us
                    .is_some_and(|d| execution.end_us <= d);
                if execution.scheduled && execution.status == CQ_COMPLETED && done {
                    return Err(AdminError::CqWindowDone {
                        query: execution.query_id,
                        end_us: execution.end_us,
                    });
                }
                Ok(())
            }
        }
    }

    /// Applies a command that [`AdminState::check`] accepted.
    pub fn apply(&mut self, command: &AdminCommand) {
        match command.clone() {
            AdminCommand::CreateToken(mut token) => {
                token.id = self.allocate_id();
                self.tokens.insert(token.id, token);
            }
            AdminCommand::UpdateToken {
                id,
                name,
                description,
                permissions,
                expires_at_us,
            } => {
                let token = self.tokens.get_mut(&id).expect("checked");
                if let Some(name) = name {
                    token.name = name;
                }
                if let Some(description) = description {
                    token.description = description;
                }
                if let Some(permissions) = permissions {
                    token.permissions = permissions;
                }
                if let Some(expires_at_us) = expires_at_us {
                    token.expires_at_us = expires_at_us;
                }
            }
            AdminCommand::SetTokenSecret { id, hash, lookup } => {
                let token = self.tokens.get_mut(&id).expect("checked");
                token.hash = hash;
                token.lookup = lookup;
            }
            AdminCommand::SetTokenEnabled { id, enabled } => {
                self.tokens.get_mut(&id).expect("checked").enabled = enabled;
            }
            AdminCommand::DeleteToken { id } => {
                self.tokens.remove(&id);
            }
            AdminCommand::CreateDatabase(db) => {
                self.databases.insert(db.name.clone(), db);
            }
            AdminCommand::DropDatabase { name } => {
                self.databases.remove(&name);
                let dropped: Vec<u64> = self
                    .retention_policies
                    .values()
                    .filter(|p| p.database == name)
                    .map(|p| p.id)
                    .collect();
                for id in dropped {
                    self.retention_policies.remove(&id);
                    self.retention_history.remove(&id);
                }
                self.continuous_queries.retain(|_, q| q.database != name);
                let queries = &self.continuous_queries;
                self.cq_history.retain(|id, _| queries.contains_key(id));
            }
            AdminCommand::PutRetentionPolicy(mut policy) => {
                if policy.id == 0 {
                    policy.id = self.allocate_id();
                }
                self.retention_policies.insert(policy.id, policy);
            }
            AdminCommand::DeleteRetentionPolicy { id } => {
                self.retention_policies.remove(&id);
                self.retention_history.remove(&id);
                self.retention_slots.remove(&id);
            }
            AdminCommand::RecordRetentionExecution(mut execution) => {
                execution.id = self.allocate_id();
                if let Some(slot_us) = execution.slot_us {
                    self.retention_slots.insert(execution.policy_id, slot_us);
                }
                let history = self
                    .retention_history
                    .entry(execution.policy_id)
                    .or_default();
                push_history(history, execution);
            }
            AdminCommand::PutContinuousQuery(mut query) => {
                if query.id == 0 {
                    query.id = self.allocate_id();
                }
                self.continuous_queries.insert(query.id, query);
            }
            AdminCommand::DeleteContinuousQuery { id } => {
                self.continuous_queries.remove(&id);
                self.cq_history.remove(&id);
            }
            AdminCommand::RecordCqExecution(mut execution) => {
                execution.id = self.allocate_id();
                if execution.status == CQ_COMPLETED {
                    let query = self
                        .continuous_queries
                        .get_mut(&execution.query_id)
                        .expect("checked");
                    // A manual run of an older window does not send the scheduler back.
                    query.last_processed_us = Some(
                        query
                            .last_processed_us
                            .map_or(execution.end_us, |done| done.max(execution.end_us)),
                    );
                }
                let history = self.cq_history.entry(execution.query_id).or_default();
                push_history(history, execution);
            }
        }
    }

    fn allocate_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    pub fn token(&self, id: u64) -> Option<&TokenRecord> {
        self.tokens.get(&id)
    }

    pub fn token_named(&self, name: &str) -> Option<&TokenRecord> {
        self.tokens.values().find(|t| t.name == name)
    }

    pub fn databases(&self) -> impl Iterator<Item = &DatabaseRecord> {
        self.databases.values()
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseRecord> {
        self.databases.get(name)
    }

    pub fn retention_policies(&self) -> impl Iterator<Item = &RetentionPolicy> {
        self.retention_policies.values()
    }

    pub fn retention_policy(&self, id: u64) -> Result<&RetentionPolicy, AdminError> {
        self.retention_policies
            .get(&id)
            .ok_or(AdminError::UnknownPolicy(id))
    }

    pub fn retention_policy_named(&self, name: &str) -> Option<&RetentionPolicy> {
        self.retention_policies.values().find(|p| p.name == name)
    }

    pub fn continuous_queries(&self) -> impl Iterator<Item = &ContinuousQuery> {
        self.continuous_queries.values()
    }

    pub fn continuous_query(&self, id: u64) -> Result<&ContinuousQuery, AdminError> {
        self.continuous_queries
            .get(&id)
            .ok_or(AdminError::UnknownContinuousQuery(id))
    }

    /// Oldest first.
    pub fn cq_history(&self, query_id: u64) -> impl DoubleEndedIterator<Item = &CqExecution> {
        self.cq_history.get(&query_id).into_iter().flatten()
    }

    /// The latest scheduled run recorded for a retention policy (µs).
    pub fn retention_slot(&self, policy_id: u64) -> Option<i64> {
        self.retention_slots.get(&policy_id).copied()
    }

    /// Oldest first.
    pub fn retention_history(
        &self,
        policy_id: u64,
    ) -> impl DoubleEndedIterator<Item = &RetentionExecution> {
        self.retention_history.get(&policy_id).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str) -> TokenRecord {
        TokenRecord {
            id: 0,
            name: name.into(),
            description: String::new(),
            permissions: vec![Permission::Read],
            hash: "h".into(),
            lookup: "l".into(),
            created_at_us: 0,
            expires_at_us: Some(100),
            enabled: true,
        }
    }

    fn applied(state: &mut AdminState, command: AdminCommand) -> Result<(), AdminError> {
        state.check(&command)?;
        state.apply(&command);
        Ok(())
    }

    #[test]
    fn tokens_get_ids_unique_names_and_updates() {
        let mut state = AdminState::default();
        applied(&mut state, AdminCommand::CreateToken(token("a"))).unwrap();
        applied(&mut state, AdminCommand::CreateToken(token("b"))).unwrap();
        let a = state.token_named("a").unwrap().id;
        let b = state.token_named("b").unwrap().id;
        assert_ne!(a, b);
        assert_eq!(
            applied(&mut state, AdminCommand::CreateToken(token("a"))),
            Err(AdminError::NameTaken("a".into()))
        );
        let rename = AdminCommand::UpdateToken {
            id: b,
            name: Some("a".into()),
            description: None,
            permissions: None,
            expires_at_us: None,
        };
        assert_eq!(
            applied(&mut state, rename),
            Err(AdminError::NameTaken("a".into()))
        );
        let update = AdminCommand::UpdateToken {
            id: a,
            name: Some("a".into()),
            description: None,
            permissions: Some(vec![Permission::Admin]),
            expires_at_us: Some(None),
        };
        applied(&mut state, update).unwrap();
        let a_token = state.token(a).unwrap();
        assert!(a_token.allows(Permission::Delete));
        assert!(a_token.usable_at(i64::MAX));
        assert!(!state.token(b).unwrap().usable_at(100));
        applied(&mut state, AdminCommand::DeleteToken { id: a }).unwrap();
        assert_eq!(
            applied(&mut state, AdminCommand::DeleteToken { id: a }),
            Err(AdminError::UnknownToken(a))
        );
    }

    #[test]
    fn execution_history_is_bounded_and_goes_with_its_policy() {
        let mut state = AdminState::default();
        let policy = RetentionPolicy {
            id: 0,
            name: "month".into(),
            database: "db".into(),
            measurement: None,
            retention_days: 30,
            buffer_days: 7,
            is_active: true,
            created_at_us: 0,
            updated_at_us: 0,
        };
        applied(&mut state, AdminCommand::PutRetentionPolicy(policy.clone())).unwrap();
        assert_eq!(
            applied(&mut state, AdminCommand::PutRetentionPolicy(policy)),
            Err(AdminError::NameTaken("month".into()))
        );
        let id = state.retention_policy_named("month").unwrap().id;
        for i in 0..(HISTORY_LEN as i64 + 5) {
            let execution = RetentionExecution {
                id: 0,
                policy_id: id,
                executed_at_us: i,
                status: "completed".into(),
                deleted_count: 0,
                files_deleted: 0,
                cutoff_us: 0,
                duration_ms: 0.0,
                error: None,
                slot_us: Some(i * 10),
            };
            applied(
                &mut state,
                AdminCommand::RecordRetentionExecution(execution),
            )
            .unwrap();
        }
        assert_eq!(state.retention_history(id).count(), HISTORY_LEN);
        let last_slot = (HISTORY_LEN as i64 + 4) * 10;
        assert_eq!(state.retention_slot(id), Some(last_slot));
        // A scheduled run at or before the last recorded one is a second run of it.
        let mut again = state.retention_history(id).last().unwrap().clone();
        assert_eq!(
            applied(
                &mut state,
                AdminCommand::RecordRetentionExecution(again.clone())
            ),
            Err(AdminError::RetentionSlotDone {
                policy: id,
                slot_us: last_slot
            })
        );
        assert_eq!(
            state.retention_history(id).next().unwrap().executed_at_us,
            5
        );
        // A run asked for by hand names no firing and is always recorded.
        again.slot_us = None;
        applied(&mut state, AdminCommand::RecordRetentionExecution(again)).unwrap();
        assert_eq!(state.retention_slot(id), Some(last_slot));
        applied(&mut state, AdminCommand::DeleteRetentionPolicy { id }).unwrap();
        assert_eq!(state.retention_history(id).count(), 0);
        assert_eq!(state.retention_slot(id), None);
        assert_eq!(
            applied(&mut state, AdminCommand::DeleteRetentionPolicy { id }),
            Err(AdminError::UnknownPolicy(id))
        );
    }

    #[test]
    fn continuous_queries_advance_only_on_success_and_go_with_their_database() {
        let mut state = AdminState::default();
        let query = ContinuousQuery {
            id: 0,
            name: "cpu_1m".into(),
            description: None,
            database: "prod".into(),
            source_measurement: "cpu".into(),
            destination_measurement: "cpu_1m".into(),
            query: "SELECT 1 WHERE {start_time} < {end_time}".into(),
            interval: "1m".into(),
            interval_us: 60_000_000,
            tag_columns: vec!["host".into()],
            retention_days: None,
            delete_source_after_days: None,
            is_active: true,
            last_processed_us: None,
            created_at_us: 1,
            updated_at_us: 1,
        };
        applied(&mut state, AdminCommand::PutContinuousQuery(query.clone())).unwrap();
        assert_eq!(
            applied(&mut state, AdminCommand::PutContinuousQuery(query)),
            Err(AdminError::NameTaken("cpu_1m".into()))
        );
        let id = state.continuous_queries().next().unwrap().id;
        let execution = |status: &str, end_us| CqExecution {
            id: 0,
            query_id: id,
            execution_id: "x".into(),
            executed_at_us: end_us,
            status: status.into(),
            start_us: end_us - 60_000_000,
            end_us,
            records_written: 0,
            duration_s: 0.0,
            error: None,
            scheduled: false,
        };
        applied(
            &mut state,
            AdminCommand::RecordCqExecution(execution("failed", 120_000_000)),
        )
        .unwrap();
        assert_eq!(state.continuous_query(id).unwrap().last_processed_us, None);
        applied(
            &mut state,
            AdminCommand::RecordCqExecution(execution(CQ_COMPLETED, 60_000_000)),
        )
        .unwrap();
        assert_eq!(
            state.continuous_query(id).unwrap().last_processed_us,
            Some(60_000_000)
        );
        applied(
            &mut state,
            AdminCommand::RecordCqExecution(execution(CQ_COMPLETED, 30_000_000)),
        )
        .unwrap();
        assert_eq!(
            state.continuous_query(id).unwrap().last_processed_us,
            Some(60_000_000),
            "an older window does not move it back"
        );
        assert_eq!(state.cq_history(id).count(), 3);
        // The scheduler records a window once; a second scheduler's record of it is refused.
        let scheduled = |end_us| CqExecution {
            scheduled: true,
            ..execution(CQ_COMPLETED, end_us)
        };
        assert_eq!(
            applied(
                &mut state,
                AdminCommand::RecordCqExecution(scheduled(60_000_000))
            ),
            Err(AdminError::CqWindowDone {
                query: id,
                end_us: 60_000_000
            })
        );
        applied(
            &mut state,
            AdminCommand::RecordCqExecution(scheduled(120_000_000)),
        )
        .unwrap();
        assert_eq!(state.cq_history(id).count(), 4);
        assert_eq!(
            applied(&mut state, AdminCommand::DeleteContinuousQuery { id: 999 }),
            Err(AdminError::UnknownContinuousQuery(999))
        );
        applied(
            &mut state,
            AdminCommand::DropDatabase {
                name: "prod".into(),
            },
        )
        .unwrap();
        assert_eq!(state.continuous_queries().count(), 0);
        assert_eq!(state.cq_history(id).count(), 0);
    }
}
