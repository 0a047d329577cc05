//! The operator's routes (CONTRACT §9): run and file history, retry and
//! resolve. Parameters are checked here; the queries are
//! [`OperatorStore`](crate::store::OperatorStore)'s.

use super::access::Caller;
use super::{AppError, AppState, ErrorBody, parse_body};
use crate::domain::{FileStatus, OpsVerdict};
use crate::store::Outcome;
use crate::store::{FileDetail, FileFilter, FileView, InstanceView, RunView, StatusFilter};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 50;
/// Most rows per page.
pub const MAX_LIMIT: i64 = 500;

/// `?limit=&before=` of the run list. The fields are text so that a bad
/// value gets this module's message; the document gives their real types.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Runs per page, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next` of the previous page: runs started before this one.
    #[param(value_type = Option<Uuid>)]
    before: Option<String>,
}

/// `?limit=&before=&remitter=&status=&q=` of the file list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FilesQuery {
    /// Files per page, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next` of the previous page: files with a smaller id.
    #[param(value_type = Option<i64>)]
    before: Option<String>,
    /// Exact remitter folder.
    remitter: Option<String>,
    /// A file status, or `failed` for every failure status.
    status: Option<String>,
    /// Substring of the file name, case-insensitive (`%` and `_` literal).
    q: Option<String>,
}

/// Body of a retry.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// Why, for the file's history; must not be blank.
    #[schema(min_length = 1)]
    reason: String,
}

/// Body of a resolve.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The verdict: `ops_` followed by 1–40 of `a-z 0-9 _`.
    #[schema(pattern = "^ops_[a-z0-9_]{1,40}$", example = "ops_keyed_by_hand")]
    status: String,
    /// Why, for the file's history; must not be blank.
    #[schema(min_length = 1)]
    reason: String,
}

/// A page of the run list, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunsPage {
    /// The runs, each with the counts of its summary only.
    runs: Vec<RunView>,
    /// The `before` of the next page; null on the last.
    next: Option<String>,
}

/// A page of the file list, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct FilesPage {
    /// The files.
    files: Vec<FileView>,
    /// The `before` of the next page; null on the last.
    next: Option<String>,
}

pub(super) fn bad(message: impl Into<String>) -> AppError {
    AppError::BadRequest(message.into())
}

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, AppError> {
    q.map(|Query(t)| t).map_err(|e| bad(e.body_text()))
}

pub(super) fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, AppError> {
    p.map(|Path(t)| t).map_err(|e| bad(e.body_text()))
}

/// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub(super) fn limit(given: Option<&str>) -> Result<i64, AppError> {
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
pub(super) fn reason(r: &str) -> Result<String, AppError> {
    let r = r.trim();
    if r.is_empty() {
        Err(bad("reason must not be empty"))
    } else {
        Ok(r.to_string())
    }
}

/// `?before=`: the `next` of a previous page, an id of `what` kind.
pub(super) fn cursor<T: std::str::FromStr>(
    before: Option<String>,
    what: &str,
) -> Result<Option<T>, AppError> {
    before
        .map(|b| {
            b.parse::<T>()
                .map_err(|_| bad(format!("before must be {what} from a previous `next`")))
        })
        .transpose()
}

/// The run history, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/coordinator/runs",
    tag = "operator",
    params(RunsQuery),
    responses(
        (status = 200, description = "A page of runs", body = RunsPage),
        (status = 400, description = "`invalid_request`: a bad `limit` or `before`, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
        (status = 503, description = "`database_error`", body = ErrorBody),
    )
)]
pub async fn list_runs(
    State(state): State<AppState>,
    q: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<RunsPage>, AppError> {
    let q = query(q)?;
    let limit = limit(q.limit.as_deref())?;
    let before: Option<Uuid> = cursor(q.before, "a run id")?;
    let page = state.ops.runs(before, limit).await?;
    Ok(Json(RunsPage {
        runs: page.items,
        next: page.next,
    }))
}

/// One run, as its `POST` answered (with the per-file list), plus
/// `trigger` and `dry_run`.
#[utoipa::path(
    get,
    path = "/api/v1/coordinator/runs/{run_id}",
    tag = "operator",
    params(("run_id" = Uuid, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run", body = RunView),
        (status = 400, description = "`invalid_request`: not a UUID", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such run", body = ErrorBody),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
        (status = 503, description = "`database_error`", body = ErrorBody),
    )
)]
pub async fn get_run(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<RunView>, AppError> {
    Ok(Json(state.ops.run(path(id)?).await?))
}

/// File versions, newest first, filtered.
#[utoipa::path(
    get,
    path = "/api/v1/coordinator/files",
    tag = "operator",
    params(FilesQuery),
    responses(
        (status = 200, description = "A page of files", body = FilesPage),
        (status = 400, description = "`invalid_request`: a bad `limit`, `before` or `status`, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
        (status = 503, description = "`database_error`", body = ErrorBody),
    )
)]
pub async fn list_files(
    State(state): State<AppState>,
    q: Result<Query<FilesQuery>, QueryRejection>,
) -> Result<Json<FilesPage>, AppError> {
    let q = query(q)?;
    let limit = limit(q.limit.as_deref())?;
    let before: Option<i64> = cursor(q.before, "a file id")?;
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
    Ok(Json(FilesPage {
        files: page.items,
        next: page.next,
    }))
}

/// One file with its events and IQube notifications.
#[utoipa::path(
    get,
    path = "/api/v1/coordinator/files/{id}",
    tag = "operator",
    params(("id" = i64, Path, description = "The file's `files.id`")),
    responses(
        (status = 200, description = "The file with its history", body = FileDetail),
        (status = 400, description = "`invalid_request`: not an integer", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such file", body = ErrorBody),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
        (status = 503, description = "`database_error`", body = ErrorBody),
    )
)]
pub async fn get_file(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<FileDetail>, AppError> {
    Ok(Json(state.ops.file(path(id)?).await?))
}

/// Sends a file with a failure status again: it becomes `retry_requested`
/// and the next run that finds the same version claims it.
#[utoipa::path(
    post,
    path = "/api/v1/coordinator/files/{id}/retry",
    tag = "operator",
    params(("id" = i64, Path, description = "The file's `files.id`")),
    request_body = RetryRequest,
    responses(
        (status = 200, description = "The file, now `retry_requested`", body = FileView),
        (status = 400, description = "`invalid_request`: no body, a blank reason, an unknown field, or a bad id", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such file", body = ErrorBody),
        (status = 409, description = "`not_retryable`: the status is not a failure status", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
        (status = 503, description = "`database_error`", body = ErrorBody),
    )
)]
pub async fn retry_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<FileView>, AppError> {
    let id = path(id)?;
    let req: RetryRequest =
        parse_body(body)?.ok_or_else(|| bad("a body with reason is required"))?;
    let why = reason(&req.reason)?;
    let entry = caller.audit(
        "file.retry",
        Some(id.to_string()),
        Outcome::Ok,
        Some(why.clone()),
    );
    let file = acted(
        &state,
        &caller,
        entry.clone(),
        state.ops.retry(id, &why, &entry).await,
    )
    .await?;
    tracing::info!(file_id = id, actor = %caller.principal.actor, "retry requested by an operator");
    Ok(Json(file))
}

/// The result of an action that records its own `ok` row; a failed one is
/// recorded here, on its own, with the error as its reason.
async fn acted<T>(
    state: &AppState,
    caller: &Caller,
    mut entry: crate::store::AuditEntry,
    result: Result<T, crate::store::OperatorError>,
) -> Result<T, AppError> {
    match result {
        Ok(t) => Ok(t),
        Err(e) => {
            entry.outcome = Outcome::Failed;
            entry.reason = Some(format!(
                "{e} (reason given: {})",
                entry.reason.unwrap_or_default()
            ));
            caller.record(state, entry).await;
            Err(e.into())
        }
    }
}

/// An operator's verdict on a file that is not being processed; the next
/// housekeeping pass archives it.
#[utoipa::path(
    post,
    path = "/api/v1/coordinator/files/{id}/resolve",
    tag = "operator",
    params(("id" = i64, Path, description = "The file's `files.id`")),
    request_body = ResolveRequest,
    responses(
        (status = 200, description = "The file, with the verdict as its status", body = FileView),
        (status = 400, description = "`invalid_request`: no body, a bad `ops_` word, a blank reason, an unknown field, or a bad id", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such file", body = ErrorBody),
        (status = 409, description = "`not_resolvable`: the file is `processing`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
        (status = 503, description = "`database_error`", body = ErrorBody),
    )
)]
pub async fn resolve_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<FileView>, AppError> {
    let id = path(id)?;
    let req: ResolveRequest =
        parse_body(body)?.ok_or_else(|| bad("a body with status and reason is required"))?;
    let verdict = OpsVerdict::try_from(req.status.as_str()).map_err(|e| bad(e.to_string()))?;
    let why = reason(&req.reason)?;
    let entry = caller.audit(
        "file.resolve",
        Some(id.to_string()),
        Outcome::Ok,
        Some(format!("{}: {why}", verdict.as_str())),
    );
    let result = state.ops.resolve(id, verdict, &why, &entry).await;
    let file = acted(&state, &caller, entry, result).await?;
    tracing::info!(file_id = id, status = %file.status, actor = %caller.principal.actor, "resolved by an operator");
    Ok(Json(file))
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

/// The answer of the instance list.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstancesPage {
    /// Every instance heard from in the last hour, by id.
    instances: Vec<InstanceView>,
}

/// How far back the instance list looks.
const INSTANCES_SEEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(3600);

/// The instances heard from in the last hour (CONTRACT §10), alive or not.
#[utoipa::path(
    get,
    path = "/api/v1/coordinator/instances",
    tag = "operator",
    responses(
        (status = 200, description = "The instances", body = InstancesPage),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
        (status = 503, description = "`database_error`", body = ErrorBody),
    )
)]
pub async fn list_instances(
    State(state): State<AppState>,
) -> Result<Json<InstancesPage>, AppError> {
    let instances = state
        .instances
        .instances(INSTANCES_SEEN_WITHIN)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "the instance list failed in the database");
            AppError::Database(e.to_string())
        })?;
    Ok(Json(InstancesPage { instances }))
}
