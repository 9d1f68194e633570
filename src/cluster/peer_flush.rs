//! Shared storage (Pattern A): a row delete must also remove matching rows that other writers
//! acknowledged but still hold in their buffers. Before it rewrites files, the deleting node asks
//! every other writer to flush the measurement and waits until their files are registered and
//! applied here, so the files it then reads hold every row acknowledged before the delete.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use futures::future::join_all;

use super::Cluster;
use super::protocol::{FLUSH_PATH, FlushAnswer, FlushRequest};
use crate::buffer::MeasurementKey;
use crate::flush::Flusher;

impl Cluster {
    /// Lets peers ask this node to flush a measurement.
    pub fn serve_flushes(&self, flusher: Arc<Flusher>) {
        if self.flusher.set(flusher).is_err() {
            tracing::warn!("flushes were already being served");
        }
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
