//! The operator's routes (CONTRACT §9): run and file history, retry and
//! resolve. Parameters are checked here; the queries are
//! [`OperatorStore`](crate::store::OperatorStore)'s.

use super::{AppError, AppState, parse_body};
use crate::domain::{FileStatus, OpsVerdict};
use crate::store::{FileFilter, StatusFilter};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 50;
/// Most rows per page.
pub const MAX_LIMIT: i64 = 500;

/// `?limit=&before=` of the run list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    limit: Option<String>,
    before: Option<String>,
}

/// `?limit=&before=&remitter=&status=&q=` of the file list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    limit: Option<String>,
    before: Option<String>,
    remitter: Option<String>,
    status: Option<String>,
    q: Option<String>,
}

/// Body of a retry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    reason: String,
}

/// Body of a resolve.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    status: String,
    reason: String,
}

fn bad(message: impl Into<String>) -> AppError {
    AppError::BadRequest(message.into())
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, AppError> {
    q.map(|Query(t)| t).map_err(|e| bad(e.body_text()))
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, AppError> {
    p.map(|Path(t)| t).map_err(|e| bad(e.body_text()))
}

/// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
fn limit(given: Option<&str>) -> Result<i64, AppError> {
    match given {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| bad(format!("limit must be an integer from 1 to {MAX_LIMIT}"))),
    }
}

/// A non-empty reason, trimmed.
fn reason(r: &str) -> Result<String, AppError> {
    let r = r.trim();
    if r.is_empty() {
        Err(bad("reason must not be empty"))
    } else {
        Ok(r.to_string())
    }
}

/// `GET /api/v1/coordinator/runs`
pub async fn list_runs(
    State(state): State<AppState>,
    q: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let q = query(q)?;
    let limit = limit(q.limit.as_deref())?;
    let before = q
        .before
        .map(|b| {
            Uuid::parse_str(&b).map_err(|_| bad("before must be a run id from a previous `next`"))
        })
        .transpose()?;
    let page = state.ops.runs(before, limit).await?;
    Ok(Json(json!({"runs": page.items, "next": page.next})))
}

/// `GET /api/v1/coordinator/runs/{run_id}`
pub async fn get_run(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Value>, AppError> {
    let run = state.ops.run(path(id)?).await?;
    Ok(Json(json!(run)))
}

/// `GET /api/v1/coordinator/files`
pub async fn list_files(
    State(state): State<AppState>,
    q: Result<Query<FilesQuery>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let q = query(q)?;
    let limit = limit(q.limit.as_deref())?;
    let before = q
        .before
        .map(|b| {
            b.parse::<i64>()
                .map_err(|_| bad("before must be a file id from a previous `next`"))
        })
        .transpose()?;
    let status = match q.status.as_deref() {
        None => None,
        Some("failed") => Some(StatusFilter::Failed),
        Some(s) => Some(StatusFilter::Is(s.parse::<FileStatus>().map_err(|e| {
            bad(format!("status: {e}; or `failed` for every failure"))
        })?)),
    };
    let filter = FileFilter {
        remitter: q.remitter.filter(|r| !r.is_empty()),
        status,
        q: q.q.filter(|s| !s.is_empty()),
    };
    let page = state.ops.files(&filter, before, limit).await?;
    Ok(Json(json!({"files": page.items, "next": page.next})))
}

/// `GET /api/v1/coordinator/files/{id}`
pub async fn get_file(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<Value>, AppError> {
    let file = state.ops.file(path(id)?).await?;
    Ok(Json(json!(file)))
}

/// `POST /api/v1/coordinator/files/{id}/retry`
pub async fn retry_file(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let id = path(id)?;
    let req: RetryRequest =
        parse_body(body)?.ok_or_else(|| bad("a body with reason is required"))?;
    let file = state.ops.retry(id, &reason(&req.reason)?).await?;
    tracing::info!(file_id = id, "retry requested by an operator");
    Ok(Json(json!(file)))
}

/// `POST /api/v1/coordinator/files/{id}/resolve`
pub async fn resolve_file(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let id = path(id)?;
    let req: ResolveRequest =
        parse_body(body)?.ok_or_else(|| bad("a body with status and reason is required"))?;
    let verdict = OpsVerdict::try_from(req.status.as_str()).map_err(|e| bad(e.to_string()))?;
    let file = state
        .ops
        .resolve(id, verdict, &reason(&req.reason)?)
        .await?;
    tracing::info!(file_id = id, status = %file.status, "resolved by an operator");
    Ok(Json(json!(file)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn limits() {
        assert_eq!(super::limit(None).ok(), Some(50));
        assert_eq!(super::limit(Some("500")).ok(), Some(500));
        for bad in ["0", "501", "-1", "x", ""] {
            assert!(super::limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
