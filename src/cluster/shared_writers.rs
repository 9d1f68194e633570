//! Shared storage (Pattern A): what a node asks of the writers.
//!
//! - A row or database delete must also remove matching rows that other writers acknowledged but
//!   still hold in their buffers. Before it rewrites files, the deleting node asks every other
//!   writer to flush and waits until their files are registered and applied here, so the files
//!   it then reads hold every row acknowledged before the delete.
//! - Rows are buffered on writers only (so that flush reaches them all): a continuous query run
//!   by a leader that is not a writer hands its results to a writer.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use futures::future::join_all;

use super::Cluster;
use super::network::PeerError;
use super::protocol::{FLUSH_PATH, FlushAnswer, FlushRequest, WRITE_PATH, WriteLines};
use crate::buffer::MeasurementKey;
use crate::flush::Flusher;
use crate::ingest::{Ingester, PayloadFormat, Precision, WriteRequest};
use crate::meta::nodes::Capability;

impl Cluster {
    /// Lets peers ask this writer to flush, and to take rows a continuous query produced.
    pub fn serve_writers_peers(&self, flusher: Arc<Flusher>, ingester: Arc<Ingester>) {
        if self.flusher.set(flusher).is_err() || self.ingester.set(ingester).is_err() {
            tracing::warn!("writers' requests were already being served");
        }
    }

    /// Hands line-protocol rows (µs timestamps) to a healthy writer; tries the next writer
    /// only when one could not be reached at all, since another may have taken them.
    pub async fn write_on_a_writer(&self, database: &str, lines: String) -> Result<(), String> {
        let request = WriteLines {
            database: database.to_owned(),
            lines,
        };
        let mut failures = Vec::new();
        for writer in self.nodes_for(Capability::Ingest) {
            let answer = self
                .client
                .call::<_, FlushAnswer>(&writer.address, WRITE_PATH, &request, self.request_timeout)
                .await;
            match answer {
                Ok(FlushAnswer { error: None }) => return Ok(()),
                Ok(FlushAnswer { error: Some(e) }) => return Err(format!("{}: {e}", writer.id)),
                Err(e @ PeerError::NotConnected { .. }) => failures.push(e.to_string()),
                Err(e) => return Err(format!("{}: {e}", writer.id)),
            }
        }
        Err(format!("no writer took the rows ({})", failures.join("; ")))
    }

    /// Asks every other writer to flush `measurement` of `database` (every measurement of it
    /// when `None`; each flushes within `timeout`, its own flush deadline), then waits until
    /// this node has applied what they registered. The error names the writers that did not.
    pub async fn flush_other_writers(
        &self,
        database: &str,
        measurement: Option<&str>,
        timeout: Duration,
    ) -> Result<(), String> {
        let writers: Vec<_> = self
            .nodes()
            .into_iter()
            .filter(|n| !n.is_local && n.role.ingests())
            .collect();
        let request = FlushRequest {
            database: database.to_owned(),
            measurement: measurement.map(str::to_owned),
        };
        let answers = join_all(writers.iter().map(|writer| {
            self.client.call::<_, FlushAnswer>(
                &writer.address,
                FLUSH_PATH,
                &request,
                timeout + self.request_timeout,
            )
        }))
        .await;
        let failures: Vec<String> = writers
            .iter()
            .zip(answers)
            .filter_map(|(writer, answer)| match answer {
                Ok(FlushAnswer { error: None }) => None,
                Ok(FlushAnswer { error: Some(e) }) => Some(format!("{}: {e}", writer.id)),
                Err(e) => Some(format!("{}: {e}", writer.id)),
            })
            .collect();
        if !failures.is_empty() {
            return Err(format!(
                "writers whose buffered rows could not be flushed: {}",
                failures.join("; ")
            ));
        }
        self.sync_metadata(timeout)
            .await
            .map_err(|e| format!("the other writers' files are not applied here yet: {e}"))
    }
}

/// `POST /internal/write`.
pub(super) async fn serve_write(
    State(cluster): State<Arc<Cluster>>,
    Json(request): Json<WriteLines>,
) -> Json<FlushAnswer> {
    let Some(ingester) = cluster.ingester.get() else {
        return Json(FlushAnswer {
            error: Some("this node takes no writes".into()),
        });
    };
    let written = ingester
        .write(WriteRequest {
            database: request.database,
            format: PayloadFormat::LineProtocol(Precision::Microseconds),
            body: request.lines.into(),
            received_at_us: chrono::Utc::now().timestamp_micros(),
        })
        .await;
    Json(FlushAnswer {
        error: written.err().map(|e| e.to_string()),
    })
}

/// `POST /internal/flush`.
pub(super) async fn serve_flush(
    State(cluster): State<Arc<Cluster>>,
    Json(request): Json<FlushRequest>,
) -> Json<FlushAnswer> {
    let Some(flusher) = cluster.flusher.get() else {
        return Json(FlushAnswer {
            error: Some("this node does not flush yet (it is starting)".into()),
        });
    };
    let flushed = async {
        match request.measurement {
            Some(measurement) => {
                let key = MeasurementKey {
                    database: request.database,
                    measurement,
                };
                flusher.flush(&key).await
            }
            None => flusher.flush_database(&request.database).await,
        }
    };
    let error = match tokio::time::timeout(flusher.timeout(), flushed).await {
        Ok(Ok(_)) => None,
        Ok(Err(err)) => Some(err.to_string()),
        Err(_) => Some(format!("no flush within {:?}", flusher.timeout())),
    };
    Json(FlushAnswer { error })
}
