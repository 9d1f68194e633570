//! Query endpoints: SQL in, Arc's JSON envelope or an Arrow IPC stream out, streamed batch by
//! batch so a large result never sits in memory whole.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::CompressionType;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow::record_batch::RecordBatch;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use datafusion::execution::SendableRecordBatchStream;
use futures::{Stream, StreamExt};
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::{Value, json};

use crate::metrics::metrics;
use crate::query::{MeasurementSummary, QueryError, ShowCommand, parse_show};

use super::{ApiError, AppState, json_rows, msgpack};

const DATABASE_HEADER: &str = "x-arc-database";
const PROFILE_HEADER: &str = "x-arc-profile";
const ARROW_COMPRESSION_HEADER: &str = "x-arc-arrow-compression";
const ARROW_DICTIONARY_HEADER: &str = "x-arc-arrow-dictionary";
const EXECUTION_TIME_TRAILER: &str = "arc-execution-time-ms";
/// Arc's message for a query past `query.timeout` (504).
const TIMED_OUT: &str = "Query timed out";

/// A query error in Arc's query envelope.
pub struct QueryFailure {
    status: StatusCode,
    message: String,
    started: Instant,
}

impl QueryFailure {
    fn new(status: StatusCode, message: impl Into<String>, started: Instant) -> QueryFailure {
        QueryFailure {
            status,
            message: message.into(),
            started,
        }
    }

    /// A request the node cannot serve yet (starting, draining), in the query envelope.
    fn from_api(err: ApiError, started: Instant) -> QueryFailure {
        QueryFailure::new(err.status, err.message, started)
    }

    fn from_error(err: QueryError, started: Instant) -> QueryFailure {
        let status = match err {
            QueryError::Invalid(_) => StatusCode::BAD_REQUEST,
            QueryError::Execution(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        QueryFailure::new(status, err.to_string(), started)
    }
}

impl IntoResponse for QueryFailure {
    fn into_response(self) -> Response {
        let body = json!({
            "success": false,
            "error": self.message,
            "columns": null,
            "data": null,
            "row_count": 0,
            "execution_time_ms": elapsed_ms(self.started),
            "timestamp": now(),
        });
        (self.status, Json(body)).into_response()
    }
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Reads `{"sql": "..."}` and the database header.
fn request_sql<'h>(
    body: &Bytes,
    headers: &'h HeaderMap,
    started: Instant,
) -> Result<(String, Option<&'h str>), QueryFailure> {
    let bad = |message: String| QueryFailure::new(StatusCode::BAD_REQUEST, message, started);
    let parsed: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    let sql = parsed
        .get("sql")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("request body needs a string field 'sql'".into()))?;
    let database = match headers.get(DATABASE_HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| bad("x-arc-database header is not valid text".into()))?,
        ),
    };
    Ok((sql.to_string(), database))
}

/// A query past planning and its first batch.
struct Started {
    stream: SendableRecordBatchStream,
    first: Option<RecordBatch>,
    deadline: Instant,
    files_scanned: Arc<std::sync::atomic::AtomicU64>,
}

/// `SHOW` is answered by the JSON endpoint only, as in Arc.
fn refuse_show(sql: &str, endpoint: &str, started: Instant) -> Result<(), QueryFailure> {
    match parse_show(sql) {
        Some(_) => Err(QueryFailure::new(
            StatusCode::BAD_REQUEST,
            format!(
                "SHOW commands are not supported on the {endpoint} endpoint; use /api/v1/query"
            ),
            started,
        )),
        None => Ok(()),
    }
}

/// Runs the query and waits for its first batch, so planning and early execution errors still
/// get a proper status; the rest streams.
async fn start(
    state: &AppState,
    sql: &str,
    database: Option<&str>,
    started: Instant,
) -> Result<Started, QueryFailure> {
    let counters = &metrics().query;
    counters.requests.inc();
    let failed = |failure: QueryFailure| {
        counters.errors.inc();
        if failure.status == StatusCode::GATEWAY_TIMEOUT {
            counters.timeouts.inc();
        }
        failure
    };
    let engine = state
        .query_engine()
        .map_err(|e| failed(QueryFailure::from_api(e, started)))?;
    let deadline = started + state.query_timeout;
    let timed_out = || {
        failed(QueryFailure::new(
            StatusCode::GATEWAY_TIMEOUT,
            TIMED_OUT,
            started,
        ))
    };
    let running = tokio::time::timeout_at(deadline.into(), engine.execute(sql, database))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| failed(QueryFailure::from_error(e, started)))?;
    let files_scanned = running.files_scanned();
    let mut stream = running.stream;
    let first = tokio::time::timeout_at(deadline.into(), stream.next())
        .await
        .map_err(|_| timed_out())?
        .transpose()
        .map_err(|e| failed(QueryFailure::from_error(e.into(), started)))?;
    counters.latency.observe(started.elapsed().as_secs_f64());
    Ok(Started {
        stream,
        first,
        deadline,
        files_scanned,
    })
}

/// The rest of a result, ending with an error item past the deadline.
fn batches_until(
    stream: SendableRecordBatchStream,
    first: Option<RecordBatch>,
    deadline: Instant,
) -> impl Stream<Item = Result<RecordBatch, String>> {
    let rest = stream.map(|r| r.map_err(|e| e.to_string()));
    counted(futures::stream::iter(first.map(Ok)).chain(until_deadline(rest, deadline)))
}

/// Counts a started query's rows as they go out, and its outcome once the stream ends or fails
/// (a client that hangs up first leaves it uncounted).
fn counted(
    batches: impl Stream<Item = Result<RecordBatch, String>>,
) -> impl Stream<Item = Result<RecordBatch, String>> {
    futures::stream::unfold(
        (Box::pin(batches), false),
        |(mut batches, failed)| async move {
            let counters = &metrics().query;
            match batches.next().await {
                Some(Ok(batch)) => {
                    counters.rows.inc_by(batch.num_rows() as u64);
                    Some((Ok(batch), (batches, failed)))
                }
                Some(Err(message)) => {
                    if !failed {
                        counters.errors.inc();
                        if message == TIMED_OUT {
                            counters.timeouts.inc();
                        }
                    }
                    Some((Err(message), (batches, true)))
                }
                None => {
                    if !failed {
                        counters.success.inc();
                    }
                    None
                }
            }
        },
    )
}

fn until_deadline(
    stream: impl Stream<Item = Result<RecordBatch, String>> + Send + 'static,
    deadline: Instant,
) -> impl Stream<Item = Result<RecordBatch, String>> {
    futures::stream::unfold(
        (Box::pin(stream), false),
        move |(mut stream, done)| async move {
            if done {
                return None;
            }
            match tokio::time::timeout_at(deadline.into(), stream.next()).await {
                Ok(Some(item)) => Some((item, (stream, false))),
                Ok(None) => None,
                Err(_) => Some((Err(TIMED_OUT.to_string()), (stream, true))),
            }
        },
    )
}

pub async fn json(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, QueryFailure> {
    let started = Instant::now();
    let (sql, database) = request_sql(&body, &headers, started)?;
    if let Some(show) = parse_show(&sql) {
        return show_response(&state, show, database, started);
    }
    let profile = headers
        .get(PROFILE_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    json_response(&state, &sql, database, profile, started).await
}

/// Streams a query's result in Arc's JSON envelope.
async fn json_response(
    state: &AppState,
    sql: &str,
    database: Option<&str>,
    profile: bool,
    started: Instant,
) -> Result<Response, QueryFailure> {
    let query = start(state, sql, database, started).await?;
    let columns: Vec<String> = query
        .stream
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let head = format!(
        "{{\"success\":true,\"columns\":{},\"data\":[",
        serde_json::to_string(&columns).expect("strings serialize")
    );
    let files_scanned = profile.then(|| Arc::clone(&query.files_scanned));
    let batches = batches_until(query.stream, query.first, query.deadline);
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) })
        .chain(row_chunks(batches, started, files_scanned));
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Row arrays, then the envelope's closing fields.
fn row_chunks(
    batches: impl Stream<Item = Result<RecordBatch, String>> + Send + 'static,
    started: Instant,
    files_scanned: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    // Formatting numbers costs more than scanning them: encode two batches at once, in order.
    let encoded = batches
        .map(|item| async move {
            let batch = item?;
            let rows = batch.num_rows();
            let bytes = tokio::task::spawn_blocking(move || json_rows::encode_rows(&batch))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((Bytes::from(bytes), rows))
        })
        .buffered(2);
    futures::stream::unfold(
        (Box::pin(encoded), 0usize, false),
        move |(mut encoded, rows, finished)| {
            let files_scanned = files_scanned.clone();
            async move {
                if finished {
                    return None;
                }
                let tail = |extra: String| {
                    format!(
                        "],\"row_count\":{rows},\"execution_time_ms\":{},\"timestamp\":{}{extra}}}",
                        elapsed_ms(started),
                        json!(now()),
                    )
                };
                match encoded.next().await {
                    Some(Ok((bytes, batch_rows))) => {
                        // Every row starts with a comma; the first row of the result must not.
                        let bytes = if rows == 0 && !bytes.is_empty() {
                            bytes.slice(1..)
                        } else {
                            bytes
                        };
                        Some((Ok(bytes), (encoded, rows + batch_rows, false)))
                    }
                    Some(Err(message)) => {
                        // Headers are sent: close the JSON so it stays parseable, and say why.
                        tracing::error!(error = %message, "query failed while streaming");
                        let tail = tail(format!(",\"error\":{}", json!(message)));
                        Some((Ok(Bytes::from(tail)), (encoded, rows, true)))
                    }
                    None => {
                        let profile = files_scanned
                            .map(|n| {
                                format!(
                                    ",\"profile\":{{\"files_scanned\":{}}}",
                                    n.load(std::sync::atomic::Ordering::Relaxed)
                                )
                            })
                            .unwrap_or_default();
                        Some((Ok(Bytes::from(tail(profile))), (encoded, rows, true)))
                    }
                }
            }
        },
    )
}

fn show_response(
    state: &AppState,
    show: ShowCommand,
    header_database: Option<&str>,
    started: Instant,
) -> Result<Response, QueryFailure> {
    let engine = state
        .query_engine()
        .map_err(|e| QueryFailure::from_api(e, started))?;
    let (columns, data): (Vec<&str>, Vec<Value>) = match show {
        ShowCommand::Databases => (
            vec!["database"],
            engine
                .databases()
                .into_iter()
                .map(|db| json!([db]))
                .collect(),
        ),
        ShowCommand::Measurements { database } => {
            let database = database
                .or(header_database.map(str::to_string))
                .unwrap_or_else(|| crate::query::DEFAULT_DATABASE.to_string());
            (
                vec![
                    "database",
                    "table_name",
                    "storage_path",
                    "file_count",
                    "total_size_mb",
                ],
                engine
                    .measurements(Some(&database))
                    .into_iter()
                    .map(|m: MeasurementSummary| {
                        json!([
                            m.database,
                            m.measurement,
                            format!("{}/{}/", m.database, m.measurement),
                            m.file_count,
                            m.total_size_bytes as f64 / (1024.0 * 1024.0),
                        ])
                    })
                    .collect(),
            )
        }
    };
    let counters = &metrics().query;
    counters.requests.inc();
    counters.success.inc();
    counters.rows.inc_by(data.len() as u64);
    Ok(Json(json!({
        "success": true,
        "columns": columns,
        "row_count": data.len(),
        "data": data,
        "execution_time_ms": elapsed_ms(started),
        "timestamp": now(),
    }))
    .into_response())
}

pub async fn arrow(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, QueryFailure> {
    let started = Instant::now();
    let (sql, database) = request_sql(&body, &headers, started)?;
    refuse_show(&sql, "Arrow", started)?;
    let compression = match headers.get(ARROW_COMPRESSION_HEADER).map(|v| v.as_bytes()) {
        None => None,
        Some(b"zstd") => Some(CompressionType::ZSTD),
        Some(b"lz4") => Some(CompressionType::LZ4_FRAME),
        Some(other) => {
            return Err(QueryFailure::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unsupported x-arc-arrow-compression '{}': use zstd or lz4",
                    String::from_utf8_lossy(other)
                ),
                started,
            ));
        }
    };
    let options = IpcWriteOptions::default()
        .try_with_compression(compression)
        .map_err(|e| {
            QueryFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), started)
        })?;
    let dictionary = headers
        .get(ARROW_DICTIONARY_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    let query = start(&state, &sql, database, started).await?;
    let schema = if dictionary {
        dictionary_schema(&query.stream.schema(), query.first.as_ref())
    } else {
        query.stream.schema()
    };
    let batches = {
        let schema = Arc::clone(&schema);
        batches_until(query.stream, query.first, query.deadline)
            .map(move |batch| batch.and_then(|b| conform(b, &schema).map_err(|e| e.to_string())))
    };
    let encoder = IpcEncoder::new(&schema, options).map_err(|e| {
        QueryFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), started)
    })?;
    // Arc reports the execution time in a trailer, once the last batch is out.
    let trailer = futures::stream::once(async move {
        let mut trailers = HeaderMap::new();
        let value = format!("{:.3}", elapsed_ms(started));
        trailers.insert(
            EXECUTION_TIME_TRAILER,
            value.parse().expect("a number is a valid header value"),
        );
        Ok(Frame::trailers(trailers))
    });
    let frames = arrow_body(batches, encoder)
        .map(|data| data.map(Frame::data))
        .chain(trailer);
    Ok((
        [
            (header::CONTENT_TYPE, "application/vnd.apache.arrow.stream"),
            (header::TRAILER, EXECUTION_TIME_TRAILER),
        ],
        Body::new(StreamBody::new(frames)),
    )
        .into_response())
}

/// With `x-arc-arrow-dictionary: true`, string columns whose values repeat in the first batch
/// (at most half of them distinct) are sent dictionary-encoded.
fn dictionary_schema(schema: &SchemaRef, first: Option<&RecordBatch>) -> SchemaRef {
    let Some(first) = first else {
        return Arc::clone(schema);
    };
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(first.columns())
        .map(|(field, column)| {
            let repeats = column.as_string_opt::<i32>().is_some_and(|strings| {
                let distinct: HashSet<Option<&str>> = strings.iter().collect();
                distinct.len() * 2 <= strings.len()
            });
            if repeats {
                let dictionary =
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
                field.as_ref().clone().with_data_type(dictionary)
            } else {
                field.as_ref().clone()
            }
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Casts a batch's columns to the types of the schema being sent.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| arrow::compute::cast(column, field.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// Encodes IPC messages into a buffer drained after each batch.
struct IpcEncoder {
    writer: StreamWriter<Vec<u8>>,
}

impl IpcEncoder {
    fn new(
        schema: &arrow::datatypes::Schema,
        options: IpcWriteOptions,
    ) -> Result<Self, arrow::error::ArrowError> {
        Ok(IpcEncoder {
            writer: StreamWriter::try_new_with_options(Vec::new(), schema, options)?,
        })
    }

    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(self.writer.get_mut()))
    }
}

fn arrow_body(
    batches: impl Stream<Item = Result<RecordBatch, String>> + Send + 'static,
    encoder: IpcEncoder,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold(
        (Box::pin(batches), Some(encoder)),
        |(mut batches, encoder)| async move {
            let mut encoder = encoder?;
            match batches.next().await {
                Some(Ok(batch)) => {
                    let result = encoder.writer.write(&batch).map(|_| encoder.take());
                    Some((
                        result.map_err(std::io::Error::other),
                        (batches, Some(encoder)),
                    ))
                }
                // A failed stream ends without the end-of-stream marker, so readers notice.
                Some(Err(message)) => Some((Err(std::io::Error::other(message)), (batches, None))),
                None => {
                    let result = encoder.writer.finish().map(|_| encoder.take());
                    Some((result.map_err(std::io::Error::other), (batches, None)))
                }
            }
        },
    )
}

/// `POST /api/v1/query/estimate`: counts the rows a query would return.
pub async fn estimate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, QueryFailure> {
    let started = Instant::now();
    let (sql, database) = request_sql(&body, &headers, started)?;
    let inner = sql.trim().trim_end_matches(';');
    let counted = format!("SELECT COUNT(*) FROM ({inner}) AS estimate");
    let outcome = match start(&state, &counted, database, started).await {
        Ok(query) => {
            let batches: Vec<_> = batches_until(query.stream, query.first, query.deadline)
                .collect()
                .await;
            batches
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map(|batches| {
                    batches
                        .first()
                        .and_then(|b| {
                            b.column(0)
                                .as_primitive_opt::<arrow::datatypes::Int64Type>()
                                .map(|c| c.value(0))
                        })
                        .unwrap_or(0)
                })
        }
        Err(failure) => Err(failure.message),
    };
    Ok(Json(match outcome {
        Ok(rows) => {
            let (level, message) = match rows {
                ..=10_000 => ("none", "Query looks fine"),
                10_001..=100_000 => ("low", "Query returns more than 10,000 rows"),
                100_001..=1_000_000 => (
                    "medium",
                    "Query returns more than 100,000 rows; consider LIMIT",
                ),
                _ => (
                    "high",
                    "Query returns more than 1,000,000 rows; use LIMIT or the Arrow endpoint",
                ),
            };
            json!({
                "success": true,
                "estimated_rows": rows,
                "warning_level": level,
                "warning_message": message,
                "execution_time_ms": elapsed_ms(started),
            })
        }
        Err(error) => json!({
            "success": false,
            "estimated_rows": null,
            "warning_level": "error",
            "warning_message": "Could not estimate the query",
            "error": error,
            "execution_time_ms": elapsed_ms(started),
        }),
    }))
}

/// `GET /api/v1/measurements`: measurements with their file counts.
pub async fn measurements(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, QueryFailure> {
    let started = Instant::now();
    let engine = state
        .query_engine()
        .map_err(|e| QueryFailure::from_api(e, started))?;
    let list: Vec<Value> = engine
        .measurements(params.get("database").map(String::as_str))
        .into_iter()
        .map(|m| {
            json!({
                "database": m.database,
                "measurement": m.measurement,
                "file_count": m.file_count,
                "total_size_mb": m.total_size_bytes as f64 / (1024.0 * 1024.0),
                "storage_path": format!("{}/{}/", m.database, m.measurement),
            })
        })
        .collect();
    Ok(Json(json!({
        "success": true,
        "count": list.len(),
        "measurements": list,
        "execution_time_ms": elapsed_ms(started),
    })))
}

/// `GET /api/v1/query/{measurement}`: Arc's paginated read of one measurement.
pub async fn measurement_rows(
    State(state): State<Arc<AppState>>,
    Path(measurement): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, QueryFailure> {
    let started = Instant::now();
    let sql = crate::query::paginated_select(&measurement, &params)
        .map_err(|message| QueryFailure::new(StatusCode::BAD_REQUEST, message, started))?;
    json_response(&state, &sql, None, false, started).await
}

/// `POST /api/v1/query/msgpack`: the whole result, column-major, in one MessagePack map.
pub async fn msgpack(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, QueryFailure> {
    let started = Instant::now();
    let (sql, database) = request_sql(&body, &headers, started)?;
    refuse_show(&sql, "MessagePack", started)?;
    let query = start(&state, &sql, database, started).await?;
    let schema = query.stream.schema();
    let batches: Vec<RecordBatch> = batches_until(query.stream, query.first, query.deadline)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|message| {
            let status = if message == TIMED_OUT {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            QueryFailure::new(status, message, started)
        })?;
    let mut writer = msgpack::Writer::default();
    writer.map_header(7);
    writer.str("success");
    writer.bool(true);
    writer.str("columns");
    writer.array_header(schema.fields().len());
    for field in schema.fields() {
        writer.str(field.name());
    }
    writer.str("types");
    writer.array_header(schema.fields().len());
    for field in schema.fields() {
        writer.str(&msgpack::type_name(field.data_type()));
    }
    writer.str("data");
    writer.array_header(schema.fields().len());
    for column in 0..schema.fields().len() {
        msgpack::write_column(&mut writer, &batches, column);
    }
    writer.str("row_count");
    writer.uint(batches.iter().map(|b| b.num_rows() as u64).sum());
    writer.str("execution_time_ms");
    writer.float(elapsed_ms(started));
    writer.str("timestamp");
    writer.str(&now());
    Ok(([(header::CONTENT_TYPE, "application/msgpack")], writer.out).into_response())
}
