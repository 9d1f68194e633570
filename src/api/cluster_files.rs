//! `GET /api/v1/cluster/files`: the replicated file manifest as this node has applied it, in
//! pages ordered by path.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, bad};
use crate::meta::FileEntry;

const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

#[derive(Deserialize)]
pub struct FilesQuery {
    database: Option<String>,
    /// The last path of the previous page.
    cursor: Option<String>,
    limit: Option<usize>,
}

/// Pure: the page of `files` after `cursor`, the number matching, and the next cursor.
fn page<'a>(
    mut files: Vec<&'a FileEntry>,
    cursor: Option<&str>,
    limit: usize,
) -> (Vec<&'a FileEntry>, usize, Option<String>) {
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let total = files.len();
    let after: Vec<&FileEntry> = files
        .into_iter()
        .filter(|f| cursor.is_none_or(|c| f.path.as_str() > c))
        .collect();
    let more = after.len() > limit;
    let page: Vec<&FileEntry> = after.into_iter().take(limit).collect();
    let next = more.then(|| page.last().map(|f| f.path.clone())).flatten();
    (page, total, next)
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<FilesQuery>,
) -> Result<Json<Value>, ApiError> {
    let services = state.services()?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let meta = services.meta.state();
    let files: Vec<&FileEntry> = meta
        .files()
        .filter(|f| query.database.as_ref().is_none_or(|db| &f.database == db))
        .collect();
    let cursor = query.cursor.as_deref().filter(|c| !c.is_empty());
    let (files, total, next_cursor) = page(files, cursor, limit);
    let mut body = json!({ "files": files, "total": total });
    if let Some(next) = next_cursor {
        body["next_cursor"] = Value::from(next);
    }
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            database: "db".into(),
            measurement: "m".into(),
            min_time_us: 0,
            max_time_us: 0,
            rows: 1,
            size_bytes: 1,
            sha256: String::new(),
            min_lsn: 0,
            max_lsn: 0,
            log: String::new(),
            columns: Default::default(),
            tags: Vec::new(),
            created_at_us: 0,
            origin_node: "n".into(),
        }
    }

    #[test]
    fn pages_follow_the_cursor_and_end_without_one() {
        let files: Vec<FileEntry> = ["c", "a", "b", "d", "e"].map(entry).into();
        let all: Vec<&FileEntry> = files.iter().collect();
        let paths = |page: &[&FileEntry]| page.iter().map(|f| f.path.clone()).collect::<Vec<_>>();
        let (first, total, next) = page(all.clone(), None, 2);
        assert_eq!((paths(&first), total), (vec!["a".into(), "b".into()], 5));
        assert_eq!(next.as_deref(), Some("b"));
        let (second, _, next) = page(all.clone(), next.as_deref(), 2);
        assert_eq!(paths(&second), ["c", "d"]);
        let (last, _, next) = page(all, next.as_deref(), 2);
        assert_eq!((paths(&last), next), (vec!["e".to_owned()], None));
    }
}
