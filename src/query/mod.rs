//! SQL over the buffers and the manifest's Parquet files, with DataFusion.
//!
//! Every query gets a fresh session whose default schema is the request's database, so a bare
//! `measurement` means `<x-arc-database>.measurement` (or `default.measurement`).

mod functions;
mod latest_plan;
mod latest_rows;
mod table;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::buffer::Buffers;
use crate::ingest::names;
use crate::meta::Meta;
use crate::storage::Storage;

pub use table::{STORAGE_URL, TableSources};

/// Arc's limit on SQL text.
pub const MAX_SQL_CHARS: usize = 10_000;
const CATALOG: &str = "arc";
pub const DEFAULT_DATABASE: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The client's fault: bad SQL, forbidden statement, unknown table or column (400).
    #[error("{0}")]
    Invalid(String),
    /// The query failed while running (500).
    #[error("{0}")]
    Execution(String),
}

impl From<DataFusionError> for QueryError {
    fn from(err: DataFusionError) -> QueryError {
        match err.find_root() {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(..)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(..) => QueryError::Invalid(err.strip_backtrace()),
            _ => QueryError::Execution(err.strip_backtrace()),
        }
    }
}

/// Statements answered without DataFusion, as Arc does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShowCommand {
    Databases,
    /// `SHOW TABLES|MEASUREMENTS [FROM db]`.
    Measurements {
        database: Option<String>,
    },
}

/// Recognises Arc's `SHOW` commands (case-insensitive, optional trailing `;`).
pub fn parse_show(sql: &str) -> Option<ShowCommand> {
    let text = sql.trim().trim_end_matches(';').trim();
    let words: Vec<&str> = text.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    match upper
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["SHOW", "DATABASES"] => Some(ShowCommand::Databases),
        ["SHOW", "TABLES" | "MEASUREMENTS"] => Some(ShowCommand::Measurements { database: None }),
        ["SHOW", "TABLES" | "MEASUREMENTS", "FROM", _] => Some(ShowCommand::Measurements {
            database: Some(words[3].trim_matches('"').to_string()),
        }),
        _ => None,
    }
}

/// A query being executed.
pub struct RunningQuery {
    pub stream: SendableRecordBatchStream,
    files_scanned: Arc<AtomicU64>,
}

impl RunningQuery {
    /// A handle to the count of Parquet files the query's scans opened (final once the stream
    /// has been drained).
    pub fn files_scanned(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.files_scanned)
    }
}

pub struct QueryEngine {
    sources: Arc<TableSources>,
    runtime: Arc<RuntimeEnv>,
    /// Functions Arc users write that DataFusion names differently.
    arc_functions: Vec<ScalarUDF>,
}

/// A measurement's summary for `SHOW TABLES` and the listing endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasurementSummary {
    pub database: String,
    pub measurement: String,
    pub file_count: usize,
    pub total_size_bytes: u64,
}

impl QueryEngine {
    pub fn new(
        meta: Arc<Meta>,
        buffers: Arc<Buffers>,
        view: Option<Arc<crate::replication::ReplicaView>>,
        storage: &Storage,
        log: String,
    ) -> QueryEngine {
        let runtime = RuntimeEnvBuilder::new()
            .build_arc()
            .expect("default runtime environment builds");
        let url = ObjectStoreUrl::parse(STORAGE_URL).expect("static URL parses");
        runtime.register_object_store(url.as_ref(), storage.object_store());
        QueryEngine {
            sources: Arc::new(TableSources {
                meta,
                buffers,
                view,
                log,
                latest: latest_rows::LatestRowsCache::default(),
            }),
            runtime,
            arc_functions: functions::arc_functions(),
        }
    }

    /// The object store URL of a storage key, for statements that read one file.
    pub fn storage_url(&self, key: &str) -> String {
        format!("{STORAGE_URL}{key}")
    }

    /// The table schema a query sees for a measurement (`time`, then its columns by name).
    pub fn measurement_schema(&self, database: &str, measurement: &str) -> Option<SchemaRef> {
        let state = self.sources.meta.state();
        let columns = &state.measurement(database, measurement)?.columns;
        Some(table::table_schema(
            columns
                .iter()
                .map(|(n, t)| (n.clone(), crate::buffer::data_type(*t)))
                .collect(),
        ))
    }

    /// A session for maintenance statements over single files (row deletes): the storage
    /// backend and Arc's functions, one partition so rows keep their file order, and strings
    /// read as the files store them.
    pub fn file_session(&self) -> SessionContext {
        let mut config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
        config
            .options_mut()
            .execution
            .parquet
            .schema_force_view_types = false;
        let ctx = SessionContext::new_with_config_rt(config, Arc::clone(&self.runtime));
        for function in &self.arc_functions {
            ctx.register_udf(function.clone());
        }
        ctx
    }

    pub fn databases(&self) -> Vec<String> {
        self.sources.databases().into_iter().collect()
    }

    /// Measurements (of one database, or all), with their file counts and sizes.
    pub fn measurements(&self, database: Option<&str>) -> Vec<MeasurementSummary> {
        let keys = self.sources.measurement_keys();
        let state = self.sources.meta.state();
        keys.into_iter()
            .filter(|k| database.is_none_or(|db| db == k.database))
            .map(|k| {
                let files = state.files_of(&k.database, &k.measurement);
                MeasurementSummary {
                    file_count: files.len(),
                    total_size_bytes: files.iter().map(|f| f.size_bytes).sum(),
                    database: k.database,
                    measurement: k.measurement,
                }
            })
            .collect()
    }

    /// Validates and plans one read-only statement and starts executing it. Unqualified names
    /// are measurements of `header_database` (the `x-arc-database` header), which then rules
    /// out `db.measurement` names, or else of the default database.
    pub async fn execute(
        &self,
        sql: &str,
        header_database: Option<&str>,
    ) -> Result<RunningQuery, QueryError> {
        let database = header_database.unwrap_or(DEFAULT_DATABASE);
        self.execute_in(sql, database, header_database.is_some())
            .await
    }

    /// [`QueryEngine::execute`] with unqualified names in `database` and `db.measurement`
    /// names allowed: how continuous queries run.
    pub async fn execute_in_database(
        &self,
        sql: &str,
        database: &str,
    ) -> Result<RunningQuery, QueryError> {
        self.execute_in(sql, database, false).await
    }

    async fn execute_in(
        &self,
        sql: &str,
        database: &str,
        only_this_database: bool,
    ) -> Result<RunningQuery, QueryError> {
        let statement = validate(sql)?;
        if !names::valid_database(database) {
            return Err(QueryError::Invalid(format!(
                "invalid database name '{database}'"
            )));
        }
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, database)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(false);
        let ctx = SessionContext::new_with_config_rt(config, Arc::clone(&self.runtime));
        for function in &self.arc_functions {
            ctx.register_udf(function.clone());
        }
        ctx.add_optimizer_rule(Arc::new(latest_plan::LatestRowsRule));
        let files_scanned = Arc::new(AtomicU64::new(0));
        ctx.register_catalog(
            CATALOG,
            Arc::new(table::ArcCatalog {
                sources: Arc::clone(&self.sources),
                files_scanned: Arc::clone(&files_scanned),
            }),
        );
        let state = ctx.state();
        let references = state.resolve_table_references(&statement)?;
        if only_this_database && references.iter().any(|r| r.schema().is_some()) {
            return Err(QueryError::Invalid(
                "Cross-database queries (db.table syntax) not allowed when x-arc-database header is set"
                    .into(),
            ));
        }
        let plan = state.statement_to_plan(statement).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|_| QueryError::Invalid(DANGEROUS.into()))?;
        let frame = ctx.execute_logical_plan(plan).await?;
        Ok(RunningQuery {
            stream: frame.execute_stream().await?,
            files_scanned,
        })
    }
}

const DANGEROUS: &str = "Dangerous SQL operation not allowed";

/// Largest `limit` of `GET /api/v1/query/{measurement}`.
const MAX_PAGE_ROWS: u64 = 1_000_000;
/// Longest `where` of `GET /api/v1/query/{measurement}`.
const MAX_WHERE_CHARS: usize = 4096;

/// Builds Arc's `SELECT * FROM db.m [WHERE …] ORDER BY … LIMIT … OFFSET …` from query
/// parameters, refusing anything that could smuggle in another statement.
pub fn paginated_select(
    measurement: &str,
    params: &std::collections::HashMap<String, String>,
) -> Result<String, String> {
    let database = params
        .get("database")
        .map_or(DEFAULT_DATABASE, String::as_str);
    if !names::valid_database(database) {
        return Err(format!("invalid database name '{database}'"));
    }
    if !names::valid_measurement(measurement) {
        return Err(format!("invalid measurement name '{measurement}'"));
    }
    let number = |key: &str, default: u64| -> Result<u64, String> {
        params.get(key).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| format!("{key} must be a non-negative integer, got '{v}'"))
        })
    };
    let limit = number("limit", 100)?;
    if limit > MAX_PAGE_ROWS {
        return Err(format!("limit must be at most {MAX_PAGE_ROWS}"));
    }
    let offset = number("offset", 0)?;
    let order_by = order_by_clause(params.get("order_by").map_or("time DESC", String::as_str))?;
    let mut sql = format!("SELECT * FROM \"{database}\".\"{measurement}\"");
    if let Some(filter) = params.get("where").filter(|w| !w.trim().is_empty()) {
        check_where(filter)?;
        sql.push_str(&format!(" WHERE ({filter})"));
    }
    sql.push_str(&format!(
        " ORDER BY {order_by} LIMIT {limit} OFFSET {offset}"
    ));
    Ok(sql)
}

fn order_by_clause(text: &str) -> Result<String, String> {
    let mut terms = Vec::new();
    for term in text.split(',') {
        let words: Vec<&str> = term.split_whitespace().collect();
        let (column, direction) = match words.as_slice() {
            [column] => (*column, "ASC"),
            [column, direction]
                if direction.eq_ignore_ascii_case("asc")
                    || direction.eq_ignore_ascii_case("desc") =>
            {
                (*column, *direction)
            }
            _ => return Err(format!("invalid order_by term '{}'", term.trim())),
        };
        let identifier = column.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && column
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            return Err(format!("invalid order_by column '{column}'"));
        }
        terms.push(format!("\"{column}\" {}", direction.to_ascii_uppercase()));
    }
    Ok(terms.join(", "))
}

/// Arc's screen for a user-supplied `where` clause (paginated reads, row deletes): bounded
/// length, no comments or statement breaks, no statement keywords, balanced quotes and brackets.
pub fn check_where(filter: &str) -> Result<(), String> {
    if filter.chars().count() > MAX_WHERE_CHARS {
        return Err(format!(
            "where must be at most {MAX_WHERE_CHARS} characters"
        ));
    }
    // String literals are data, not SQL: `host = 'set-1'` is fine.
    let mut in_literal = false;
    let outside_literals: String = filter
        .chars()
        .map(|c| {
            if c == '\'' {
                in_literal = !in_literal;
                c
            } else if in_literal {
                ' '
            } else {
                c
            }
        })
        .collect();
    let lower = outside_literals.to_ascii_lowercase();
    for token in [";", "--", "/*", "*/", "xp_", "sp_"] {
        if lower.contains(token) {
            return Err(format!("where may not contain '{token}'"));
        }
    }
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .collect();
    for keyword in [
        "drop", "delete", "insert", "update", "truncate", "alter", "create", "exec", "execute",
        "union", "select", "copy", "attach", "detach", "load", "install", "pragma", "call", "set",
    ] {
        if words.contains(&keyword) {
            return Err(format!(
                "where may not contain {}",
                keyword.to_ascii_uppercase()
            ));
        }
    }
    let quotes = filter.matches('\'').count();
    let opened = filter.matches('(').count();
    let closed = filter.matches(')').count();
    if !quotes.is_multiple_of(2) || opened != closed {
        return Err("where has unbalanced quotes or parentheses".into());
    }
    Ok(())
}

/// Whether `sql` passes the checks every query does, without planning it (its tables may not
/// exist yet).
pub fn check_read_only(sql: &str) -> Result<(), QueryError> {
    validate(sql).map(|_| ())
}

/// Arc's checks: non-empty, at most 10,000 characters, one statement, and a query (no DDL, DML,
/// COPY, SET, …).
fn validate(sql: &str) -> Result<Statement, QueryError> {
    if sql.trim().is_empty() {
        return Err(QueryError::Invalid("SQL query is empty".into()));
    }
    if sql.chars().count() > MAX_SQL_CHARS {
        return Err(QueryError::Invalid(format!(
            "SQL query exceeds the maximum length of {MAX_SQL_CHARS} characters"
        )));
    }
    let mut statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})
        .map_err(|e| QueryError::Invalid(format!("SQL syntax error: {e}")))?;
    if statements.len() > 1 {
        return Err(QueryError::Invalid(
            "Multiple SQL statements are not allowed".into(),
        ));
    }
    let statement = statements
        .pop_front()
        .ok_or_else(|| QueryError::Invalid("SQL query is empty".into()))?;
    match &statement {
        Statement::Statement(inner) if matches!(**inner, SqlStatement::Query(_)) => Ok(statement),
        _ => Err(QueryError::Invalid(DANGEROUS.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_read_only_queries_pass() {
        assert!(validate("SELECT 1").is_ok());
        assert!(validate("SELECT * FROM cpu WHERE host = 'a;b';").is_ok());
        for (sql, message) in [
            ("", "empty"),
            ("SELECT 1; SELECT 2", "Multiple SQL statements"),
            ("DROP TABLE cpu", DANGEROUS),
            ("DELETE FROM cpu", DANGEROUS),
            ("INSERT INTO cpu VALUES (1)", DANGEROUS),
            ("CREATE TABLE x (a INT)", DANGEROUS),
            ("COPY cpu TO 'x.parquet'", DANGEROUS),
            ("SET datafusion.execution.batch_size = 1", DANGEROUS),
            ("SELEC 1", "syntax"),
        ] {
            let err = validate(sql).unwrap_err().to_string();
            assert!(err.contains(message), "{sql}: {err}");
        }
        let long = format!("SELECT '{}'", "x".repeat(MAX_SQL_CHARS));
        assert!(
            validate(&long)
                .unwrap_err()
                .to_string()
                .contains("maximum length")
        );
    }

    #[test]
    fn paginated_select_builds_safe_sql() {
        let params = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::HashMap<_, _>>()
        };
        assert_eq!(
            paginated_select("cpu", &params(&[])).unwrap(),
            "SELECT * FROM \"default\".\"cpu\" ORDER BY \"time\" DESC LIMIT 100 OFFSET 0"
        );
        assert_eq!(
            paginated_select(
                "cpu",
                &params(&[
                    ("database", "prod"),
                    ("limit", "5"),
                    ("offset", "10"),
                    ("order_by", "host asc, time DESC"),
                    ("where", "host = 'a' AND (usage > 1)"),
                ])
            )
            .unwrap(),
            "SELECT * FROM \"prod\".\"cpu\" WHERE (host = 'a' AND (usage > 1)) \
             ORDER BY \"host\" ASC, \"time\" DESC LIMIT 5 OFFSET 10"
        );
        for bad in [
            params(&[("limit", "1000001")]),
            params(&[("limit", "-1")]),
            params(&[("order_by", "time; DROP")]),
            params(&[("order_by", "time sideways")]),
            params(&[("where", "1=1; DROP TABLE x")]),
            params(&[("where", "1=1 UNION SELECT 1")]),
            params(&[("where", "host = 'a")]),
            params(&[("where", "(a > 1")]),
            params(&[("where", "a -- comment")]),
            params(&[("database", "bad db")]),
        ] {
            assert!(paginated_select("cpu", &bad).is_err(), "{bad:?}");
        }
        assert!(paginated_select("9cpu", &params(&[])).is_err());
    }

    #[test]
    fn show_commands_are_recognised() {
        assert_eq!(parse_show("show databases;"), Some(ShowCommand::Databases));
        assert_eq!(
            parse_show("SHOW MEASUREMENTS"),
            Some(ShowCommand::Measurements { database: None })
        );
        assert_eq!(
            parse_show(" SHOW TABLES FROM prod "),
            Some(ShowCommand::Measurements {
                database: Some("prod".into())
            })
        );
        assert_eq!(parse_show("SHOW COLUMNS FROM cpu"), None);
        assert_eq!(parse_show("SELECT 1"), None);
    }
}
