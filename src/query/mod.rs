//! SQL over the buffers and the manifest's Parquet files, with DataFusion.
//!
//! Every query gets a fresh session whose default schema is the request's database, so a bare
//! `measurement` means `<x-arc-database>.measurement` (or `default.measurement`).

mod table;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::buffer::Buffers;
use crate::ingest::names;
use crate::meta::Meta;
use crate::storage::Storage;

pub use table::{STORAGE_URL, TableSources, TimeRange, time_range};

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

pub struct QueryEngine {
    sources: Arc<TableSources>,
    runtime: Arc<RuntimeEnv>,
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
    pub fn new(meta: Arc<Meta>, buffers: Arc<Buffers>, storage: &Storage) -> QueryEngine {
        let runtime = RuntimeEnvBuilder::new()
            .build_arc()
            .expect("default runtime environment builds");
        let url = ObjectStoreUrl::parse(STORAGE_URL).expect("static URL parses");
        runtime.register_object_store(url.as_ref(), storage.object_store());
        QueryEngine {
            sources: Arc::new(TableSources {
                meta,
                buffers,
                files_scanned: Default::default(),
            }),
            runtime,
        }
    }

    /// Parquet files handed to scans so far.
    pub fn files_scanned(&self) -> u64 {
        self.sources.files_scanned.load(Ordering::Relaxed)
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

    /// Validates and plans one read-only statement and starts executing it.
    pub async fn execute(
        &self,
        sql: &str,
        header_database: Option<&str>,
    ) -> Result<SendableRecordBatchStream, QueryError> {
        let statement = validate(sql)?;
        let database = header_database.unwrap_or(DEFAULT_DATABASE);
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
        ctx.register_catalog(
            CATALOG,
            Arc::new(table::ArcCatalog {
                sources: Arc::clone(&self.sources),
            }),
        );
        let state = ctx.state();
        let references = state.resolve_table_references(&statement)?;
        if header_database.is_some() && references.iter().any(|r| r.schema().is_some()) {
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
        Ok(frame.execute_stream().await?)
    }
}

const DANGEROUS: &str = "Dangerous SQL operation not allowed";

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

/// Column names of a schema, for response envelopes.
pub fn column_names(schema: &arrow::datatypes::Schema) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

/// Per-query figures reported in `profile` when the client asks for them.
pub type Profile = BTreeMap<&'static str, u64>;

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
