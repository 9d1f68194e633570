//! Row deletes: the rows of one measurement that match a `where` predicate are removed by
//! rewriting every Parquet file holding one of them, then swapping the old files for the new ones
//! in ONE manifest command.
//!
//! Crash safety, step by step: rewritten files are written to a local work directory, their keys
//! journaled in [`PendingUploads`] and only then uploaded, so an upload a crash left unregistered
//! is removed at start-up. The swap is a single `ReplaceFiles` command: queries see the old files
//! or the new ones, never both and never neither. Old files become tombstones whose objects
//! [`crate::reclaim`] deletes once no running query can still be reading them.
//!
//! A row is deleted when the predicate is TRUE for it; a row for which it is NULL (say, a column
//! the row lacks) stays. Buffered rows are flushed first so they are covered too (with shared
//! storage, those of every writer); rows written after the delete started are not.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, SchemaRef};
use chrono::Utc;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use futures::StreamExt;
use parquet::file::metadata::{FooterTail, KeyValue, ParquetMetaData, ParquetMetaDataReader};

use crate::buffer::{Buffers, MeasurementKey};
use crate::compact::merge::{MergeError, OutputFile, WrittenFile, file_properties};
use crate::config::DeleteConfig;
use crate::crash_hook::{CrashHook, Step};
use crate::flush::{FlushError, Flusher};
use crate::ingest::names;
use crate::meta::{ApplyError, FileEntry, Meta, MetaCommand, SettleError};
use crate::query::{QueryEngine, check_where};
use crate::storage::paths::rewritten_key;
use crate::storage::{Storage, StorageError};

/// Environment variable naming the step at which a row delete aborts (crash tests).
pub const CRASH_ENV: &str = "ARC_TEST_DELETE_CRASH_AT";

/// Name of the one file a per-file statement reads.
const FILE_TABLE: &str = "file";

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "Delete would affect {rows} rows, exceeding the maximum of {max}. Adjust \
         delete.max_rows_per_delete or refine the where clause."
    )]
    TooManyRows { rows: u64, max: u64 },
    #[error(
        "Delete would affect {rows} rows (threshold: {threshold}). Set confirm=true to proceed."
    )]
    NeedsConfirmation { rows: u64, threshold: u64 },
    #[error("measurement '{measurement}' not found in database '{database}'")]
    NotFound {
        database: String,
        measurement: String,
    },
    #[error("the measurement's files changed during the delete (compaction or retention): {0}")]
    Conflict(ApplyError),
    /// Shutdown came before the cluster settled the swap; the rewritten files stay journaled.
    #[error("the delete's file swap is unsettled: {0}")]
    Unsettled(String),
    #[error("flushing buffered rows: {0}")]
    Flush(#[from] FlushError),
    /// Shared storage: rows other writers buffer would escape the delete; nothing was changed.
    #[error("{0}; nothing was deleted")]
    OtherWriters(String),
    #[error("reading rows: {0}")]
    Read(DataFusionError),
    #[error("writing a rewritten file: {0}")]
    Write(#[from] MergeError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("delete work directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pending-uploads journal: {0}")]
    Journal(std::io::Error),
}

/// A delete as asked for.
#[derive(Debug, Clone)]
pub struct DeleteRequest {
    pub database: String,
    pub measurement: String,
    pub predicate: String,
    pub dry_run: bool,
    pub confirm: bool,
}

/// What a delete removed (or, dry, would remove).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeleteOutcome {
    pub deleted_rows: u64,
    /// Files holding matching rows, in manifest order.
    pub affected_files: Vec<String>,
    /// Of those, the ones replaced by a rewritten file (the others held only matching rows).
    pub rewritten_files: usize,
    pub elapsed_ms: f64,
}

/// A checked `where` clause.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    pub sql: String,
    /// `1=1`, `TRUE` or `1`: every row.
    pub whole_table: bool,
}

/// Pure: checks a `where` clause (an optional leading `WHERE` is dropped) and whether it names
/// every row. Only a single SQL expression with nothing after it is accepted.
pub fn check_predicate(text: &str) -> Result<Predicate, DeleteError> {
    let trimmed = text.trim();
    let sql = match trimmed.split_at_checked(5) {
        Some((keyword, rest))
            if keyword.eq_ignore_ascii_case("where")
                && (rest.is_empty() || rest.starts_with(char::is_whitespace)) =>
        {
            rest.trim()
        }
        _ => trimmed,
    };
    if sql.is_empty() {
        return Err(DeleteError::Invalid(
            "where clause is required. To delete all rows, use where '1=1' with confirm=true"
                .into(),
        ));
    }
    check_where(sql).map_err(DeleteError::Invalid)?;
    let invalid = |e: &dyn std::fmt::Display| DeleteError::Invalid(format!("invalid where: {e}"));
    let mut parser = Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .map_err(|e| invalid(&e))?;
    parser.parse_expr().map_err(|e| invalid(&e))?;
    let rest = parser.peek_token();
    if rest.token != Token::EOF {
        return Err(invalid(&format!(
            "unexpected '{rest}' after the expression"
        )));
    }
    let compact: String = sql
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    Ok(Predicate {
        sql: sql.to_string(),
        whole_table: matches!(compact.as_str(), "1=1" | "TRUE" | "1"),
    })
}

/// Pure: whether a delete matching `rows` rows may go ahead.
pub fn check_limits(rows: u64, confirm: bool, config: &DeleteConfig) -> Result<(), DeleteError> {
    if rows > config.max_rows_per_delete {
        return Err(DeleteError::TooManyRows {
            rows,
            max: config.max_rows_per_delete,
        });
    }
    if rows > config.confirmation_threshold && !confirm {
        return Err(DeleteError::NeedsConfirmation {
            rows,
            threshold: config.confirmation_threshold,
        });
    }
    Ok(())
}

/// A file with matching rows.
struct Affected {
    file: FileEntry,
    matched: u64,
}

/// Runs row deletes, one at a time per node.
pub struct Deleter {
    pub meta: Arc<Meta>,
    pub buffers: Arc<Buffers>,
    pub storage: Storage,
    pub flusher: Arc<Flusher>,
    pub query: Arc<QueryEngine>,
    pub config: DeleteConfig,
    /// Where rewritten files are written before upload; emptied at the start of each delete.
    pub work_dir: PathBuf,
    pub node_id: String,
    pub crash_hook: CrashHook,
    pub running: tokio::sync::Mutex<()>,
    /// With shared storage: the cluster whose other writers flush before a delete.
    pub other_writers: Option<Arc<crate::cluster::Cluster>>,
}

impl Deleter {
    pub async fn run(&self, request: &DeleteRequest) -> Result<DeleteOutcome, DeleteError> {
        let started = Instant::now();
        for (what, name, valid) in [
            (
                "database",
                &request.database,
                names::valid_database(&request.database),
            ),
            (
                "measurement",
                &request.measurement,
                names::valid_measurement(&request.measurement),
            ),
        ] {
            if !valid {
                return Err(DeleteError::Invalid(if name.is_empty() {
                    format!("{what} is required")
                } else {
                    format!("invalid {what} name '{name}'")
                }));
            }
        }
        let predicate = check_predicate(&request.predicate)?;
        if predicate.whole_table && !request.confirm {
            return Err(DeleteError::Invalid(
                "Full table delete detected (where 1=1). Set confirm=true to proceed.".into(),
            ));
        }
        if !request.dry_run && !request.confirm {
            return Err(DeleteError::Invalid(
                "Confirmation required for a delete. Set confirm=true, or dry_run=true to preview."
                    .into(),
            ));
        }

        let key = MeasurementKey {
            database: request.database.clone(),
            measurement: request.measurement.clone(),
        };
        let limits = Some(request.confirm);
        let mut outcome = self
            .remove_matching(&key, &predicate, request.dry_run, limits)
            .await?;
        outcome.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok(outcome)
    }

    /// Removes every row of `[start_us, end_us)`, with no row limits: how a continuous query
    /// clears its window before writing it again. A measurement that does not exist has nothing
    /// to remove. Returns the rows removed.
    pub async fn remove_time_range(
        &self,
        database: &str,
        measurement: &str,
        start_us: i64,
        end_us: i64,
    ) -> Result<u64, DeleteError> {
        let bound = |us: i64| {
            chrono::DateTime::<Utc>::from_timestamp_micros(us)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                .ok_or_else(|| DeleteError::Invalid(format!("time {us} µs is out of range")))
        };
        let predicate = Predicate {
            sql: format!(
                "time >= '{}' AND time < '{}'",
                bound(start_us)?,
                bound(end_us)?
            ),
            whole_table: false,
        };
        let key = MeasurementKey {
            database: database.to_string(),
            measurement: measurement.to_string(),
        };
        match self.remove_matching(&key, &predicate, false, None).await {
            Ok(outcome) => Ok(outcome.deleted_rows),
            Err(DeleteError::NotFound { .. }) => Ok(0),
            Err(err) => Err(err),
        }
    }

    /// The delete itself; `limits` is the request's `confirm` when the configured row limits
    /// apply.
    async fn remove_matching(
        &self,
        key: &MeasurementKey,
        predicate: &Predicate,
        dry_run: bool,
        limits: Option<bool>,
    ) -> Result<DeleteOutcome, DeleteError> {
        let _one_at_a_time = self.running.lock().await;
        // Another writer may hold the only rows of the measurement yet.
        self.flush_other_writers(&key.database, Some(&key.measurement))
            .await?;
        let exists = self.buffers.lock().has_data(key)
            || self.meta.state().has_files(&key.database, &key.measurement);
        if !exists {
            return Err(DeleteError::NotFound {
                database: key.database.clone(),
                measurement: key.measurement.clone(),
            });
        }
        self.flusher.flush(key).await?;
        let schema = self
            .query
            .measurement_schema(&key.database, &key.measurement)
            .ok_or_else(|| DeleteError::NotFound {
                database: key.database.clone(),
                measurement: key.measurement.clone(),
            })?;
        self.check_against_schema(predicate, &schema).await?;

        let files: Vec<FileEntry> = self
            .meta
            .state()
            .files_of(&key.database, &key.measurement)
            .into_iter()
            .cloned()
            .collect();
        let mut affected = Vec::new();
        for file in files {
            let matched = self.count_matches(&file, predicate, &schema).await?;
            if matched > 0 {
                affected.push(Affected { file, matched });
            }
        }
        let deleted_rows = affected.iter().map(|a| a.matched).sum();
        if let Some(confirm) = limits {
            check_limits(deleted_rows, confirm, &self.config)?;
        }
        let mut outcome = DeleteOutcome {
            deleted_rows,
            affected_files: affected.iter().map(|a| a.file.path.clone()).collect(),
            rewritten_files: 0,
            elapsed_ms: 0.0,
        };
        if !dry_run && !affected.is_empty() {
            outcome.rewritten_files = self.replace(key, &affected, predicate, &schema).await?;
        }
        Ok(outcome)
    }

    /// With shared storage: has every other writer flush `measurement` of `database` (all of
    /// its measurements when `None`), so the files hold every row acknowledged so far.
    pub async fn flush_other_writers(
        &self,
        database: &str,
        measurement: Option<&str>,
    ) -> Result<(), DeleteError> {
        match &self.other_writers {
            Some(cluster) => cluster
                .flush_other_writers(database, measurement, self.flusher.timeout())
                .await
                .map_err(DeleteError::OtherWriters),
            None => Ok(()),
        }
    }

    /// Removes what a crashed delete left in the work directory. Only one delete runs at a
    /// time, so anything there when none runs is leftovers.
    pub async fn remove_leftovers(&self) -> Result<(), DeleteError> {
        match tokio::fs::remove_dir_all(&self.work_dir).await {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                Err(DeleteError::WorkDir {
                    path: self.work_dir.clone(),
                    source,
                })
            }
            _ => Ok(()),
        }
    }

    /// A session whose one table is `file` (or, with no file, an empty table of the schema).
    async fn session(
        &self,
        file: Option<&FileEntry>,
        schema: &SchemaRef,
    ) -> Result<SessionContext, DeleteError> {
        let ctx = self.query.file_session();
        match file {
            Some(file) => {
                let options = ParquetReadOptions::default().schema(schema);
                ctx.register_parquet(FILE_TABLE, self.query.storage_url(&file.path), options)
                    .await
                    .map_err(DeleteError::Read)?;
            }
            None => {
                let empty = MemTable::try_new(Arc::clone(schema), vec![vec![]])
                    .map_err(DeleteError::Read)?;
                ctx.register_table(FILE_TABLE, Arc::new(empty))
                    .map_err(DeleteError::Read)?;
            }
        }
        Ok(ctx)
    }

    /// Plans the count over no rows, so an unknown column or a non-boolean predicate is the
    /// caller's mistake (400), found before any file is read.
    async fn check_against_schema(
        &self,
        predicate: &Predicate,
        schema: &SchemaRef,
    ) -> Result<(), DeleteError> {
        let ctx = self.session(None, schema).await?;
        let checked = async {
            ctx.sql(&count_sql(predicate)).await?.collect().await?;
            Ok::<(), DataFusionError>(())
        };
        checked
            .await
            .map_err(|e| DeleteError::Invalid(format!("invalid where: {}", e.strip_backtrace())))
    }

    async fn count_matches(
        &self,
        file: &FileEntry,
        predicate: &Predicate,
        schema: &SchemaRef,
    ) -> Result<u64, DeleteError> {
        let ctx = self.session(Some(file), schema).await?;
        let counted = async {
            let batches = ctx.sql(&count_sql(predicate)).await?.collect().await?;
            Ok::<u64, DataFusionError>(
                batches
                    .first()
                    .filter(|b| b.num_rows() == 1)
                    .map_or(0, |b| {
                        b.column(0).as_primitive::<Int64Type>().value(0) as u64
                    }),
            )
        };
        counted.await.map_err(DeleteError::Read)
    }

    /// Rewrites the affected files and swaps them in; returns how many were rewritten.
    async fn replace(
        &self,
        key: &MeasurementKey,
        affected: &[Affected],
        predicate: &Predicate,
        schema: &SchemaRef,
    ) -> Result<usize, DeleteError> {
        self.remove_leftovers().await?;
        tokio::fs::create_dir_all(&self.work_dir)
            .await
            .map_err(|source| DeleteError::WorkDir {
                path: self.work_dir.clone(),
                source,
            })?;
        let result = self
            .rewrite_and_swap(key, affected, predicate, schema)
            .await;
        if let Err(err) = tokio::fs::remove_dir_all(&self.work_dir).await {
            tracing::warn!(dir = %self.work_dir.display(), error = %err, "could not remove delete work files");
        }
        result
    }

    async fn rewrite_and_swap(
        &self,
        key: &MeasurementKey,
        affected: &[Affected],
        predicate: &Predicate,
        schema: &SchemaRef,
    ) -> Result<usize, DeleteError> {
        let rewritten_at = Utc::now();
        let mut added = Vec::new();
        for (index, item) in affected.iter().enumerate() {
            if item.matched >= item.file.rows {
                continue;
            }
            let local = self.work_dir.join(format!("{index}.parquet"));
            let written = self
                .rewrite_file(&item.file, predicate, schema, &local)
                .await?;
            if written.rows == 0 {
                continue;
            }
            let entry = FileEntry {
                path: rewritten_key(&item.file.path, &key.measurement, rewritten_at, index),
                min_time_us: written.min_time_us,
                max_time_us: written.max_time_us,
                rows: written.rows,
                size_bytes: written.size_bytes,
                sha256: written.sha256,
                created_at_us: rewritten_at.timestamp_micros(),
                origin_node: self.node_id.clone(),
                ..item.file.clone()
            };
            added.push((entry, local));
        }

        let pending = self.flusher.pending_uploads();
        if !added.is_empty() {
            let journal = Arc::clone(pending);
            let keys: Vec<String> = added.iter().map(|(e, _)| e.path.clone()).collect();
            tokio::task::spawn_blocking(move || journal.record(&keys))
                .await
                .expect("journal task panicked")
                .map_err(DeleteError::Journal)?;
            self.crash_hook.crash_if(Step::AfterJournal);
            for (entry, local) in &added {
                if let Err(err) = self.storage.put_file(&entry.path, local).await {
                    self.abandon(&added).await;
                    return Err(err.into());
                }
            }
            self.crash_hook.crash_if(Step::AfterUpload);
        }

        let command = MetaCommand::ReplaceFiles {
            database: key.database.clone(),
            measurement: key.measurement.clone(),
            removed: affected.iter().map(|a| a.file.path.clone()).collect(),
            added: added.iter().map(|(e, _)| e.clone()).collect(),
            at_us: Utc::now().timestamp_micros(),
            compactor_epoch: None,
        };
        let meta = Arc::clone(&self.meta);
        let swapped = tokio::task::spawn_blocking(move || meta.commit_until_settled(command))
            .await
            .expect("meta commit task panicked");
        match swapped {
            Ok(()) => {}
            Err(SettleError::Rejected(err)) => {
                if !added.is_empty() {
                    self.abandon(&added).await;
                }
                return Err(DeleteError::Conflict(err));
            }
            Err(SettleError::Unsettled(reason)) => return Err(DeleteError::Unsettled(reason)),
        }
        self.crash_hook.crash_if(Step::AfterSwap);
        if !added.is_empty() {
            pending.settled();
        }
        Ok(added.len())
    }

    /// Writes the file's rows for which the predicate is not TRUE to `local`, keeping the file's
    /// own columns, row order, sort order and footer metadata.
    async fn rewrite_file(
        &self,
        file: &FileEntry,
        predicate: &Predicate,
        schema: &SchemaRef,
        local: &Path,
    ) -> Result<WrittenFile, DeleteError> {
        let footer = self.footer(file).await?;
        let own_columns: Vec<String> = footer
            .file_metadata()
            .schema_descr()
            .root_schema()
            .get_fields()
            .iter()
            .map(|f| quote_identifier(f.name()))
            .collect();
        let sorting = footer
            .row_groups()
            .first()
            .and_then(|g| g.sorting_columns().cloned())
            .unwrap_or_default();
        let key_values: Vec<KeyValue> = footer
            .file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .filter(|kv| kv.key != "ARROW:schema")
            .cloned()
            .collect();

        let ctx = self.session(Some(file), schema).await?;
        let sql = format!(
            "SELECT {} FROM {FILE_TABLE} WHERE ({}) IS NOT TRUE",
            own_columns.join(", "),
            predicate.sql
        );
        let frame = ctx.sql(&sql).await.map_err(DeleteError::Read)?;
        let output_schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let mut stream = frame.execute_stream().await.map_err(DeleteError::Read)?;

        // Encoding is CPU work: it runs on the blocking pool, fed batch by batch.
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<RecordBatch>(2);
        let properties = file_properties(&output_schema, sorting, key_values);
        let path = local.to_path_buf();
        let writer = tokio::task::spawn_blocking(move || {
            let mut output = OutputFile::create(&path, &output_schema, properties)?;
            while let Some(batch) = receiver.blocking_recv() {
                output.write(&batch)?;
            }
            output.finish()
        });
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(DeleteError::Read)?;
            if sender.send(batch).await.is_err() {
                break; // The writer failed; its error is reported below.
            }
        }
        drop(sender);
        Ok(writer.await.expect("delete writer panicked")?)
    }

    /// A stored file's Parquet footer, fetched with two ranged reads.
    async fn footer(&self, file: &FileEntry) -> Result<ParquetMetaData, DeleteError> {
        let corrupt = |e: parquet::errors::ParquetError| DeleteError::Read(e.into());
        let size = file.size_bytes;
        let tail = self
            .storage
            .get_range(&file.path, size.saturating_sub(8)..size)
            .await?;
        let tail: &[u8; 8] = tail.as_ref().try_into().map_err(|_| {
            corrupt(parquet::errors::ParquetError::General(format!(
                "{} is shorter than a Parquet footer",
                file.path
            )))
        })?;
        let length = FooterTail::try_new(tail)
            .map_err(corrupt)?
            .metadata_length() as u64;
        let start = size.checked_sub(8 + length).ok_or_else(|| {
            corrupt(parquet::errors::ParquetError::General(format!(
                "{} has a footer longer than the file",
                file.path
            )))
        })?;
        let bytes = self.storage.get_range(&file.path, start..size - 8).await?;
        ParquetMetaDataReader::decode_metadata(&bytes).map_err(corrupt)
    }

    async fn abandon(&self, added: &[(FileEntry, PathBuf)]) {
        let keys: Vec<String> = added.iter().map(|(e, _)| e.path.clone()).collect();
        self.flusher
            .pending_uploads()
            .abandon(&self.storage, &keys)
            .await;
    }
}

fn count_sql(predicate: &Predicate) -> String {
    format!(
        "SELECT count(*) FROM {FILE_TABLE} WHERE ({}) IS TRUE",
        predicate.sql
    )
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> String {
        match check_predicate(text) {
            Err(DeleteError::Invalid(message)) => message,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn predicates_are_one_expression_and_whole_table_ones_are_recognised() {
        let checked = check_predicate("  WHERE host = 'a' AND time < '2024-01-01'").unwrap();
        assert_eq!(checked.sql, "host = 'a' AND time < '2024-01-01'");
        assert!(!checked.whole_table);
        for whole in ["1=1", " 1 = 1 ", "true", "where TRUE", "1"] {
            assert!(check_predicate(whole).unwrap().whole_table, "{whole}");
        }
        assert!(!check_predicate("1=1 AND host = 'a'").unwrap().whole_table);

        assert!(invalid("").contains("required"));
        assert!(invalid("WHERE ").contains("required"));
        assert!(invalid("host = 'a'; DROP TABLE cpu").contains("';'"));
        assert!(invalid("n IN (SELECT 1)").contains("SELECT"));
        assert!(invalid("host = 'a").contains("unbalanced"));
        assert!(invalid("host = 'a' OR").contains("invalid where"));
        assert!(invalid("host = 'a' host").contains("after the expression"));
        // Keywords are whole words outside string literals.
        assert!(check_predicate("offset > 3 AND dataset = 'x'").is_ok());
        assert!(check_predicate("host = 'set-1' OR note = 'drop; -- it'").is_ok());
        assert!(invalid("host = 'a' OR 1 = 1; SELECT 1").contains("';'"));
    }

    #[test]
    fn limits_refuse_too_many_rows_and_unconfirmed_large_deletes() {
        let config = DeleteConfig {
            enabled: true,
            confirmation_threshold: 10,
            max_rows_per_delete: 100,
        };
        assert!(check_limits(10, false, &config).is_ok());
        assert!(matches!(
            check_limits(11, false, &config),
            Err(DeleteError::NeedsConfirmation {
                rows: 11,
                threshold: 10
            })
        ));
        assert!(check_limits(100, true, &config).is_ok());
        assert!(matches!(
            check_limits(101, true, &config),
            Err(DeleteError::TooManyRows {
                rows: 101,
                max: 100
            })
        ));
    }
}
