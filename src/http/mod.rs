//! The HTTP API (CONTRACT §4, §9): the run endpoint and the operator's
//! history, retry and resolve routes behind a bearer token, and
//! unauthenticated health and readiness probes and OpenAPI document. Errors
//! are JSON `{error, message}` ([`ErrorBody`]) through one [`AppError`].
//!
//! Every route but the status page's is registered through
//! [`OpenApiRouter`] with `routes!`: registering a route and documenting it
//! are the same line, and the document is what `GET /api/v1/openapi.json`
//! answers.

mod access;
mod admin;
mod openapi;
mod operator;
mod page;

use crate::auth::{Authenticator, Role};
use crate::engine::{Engine, RunError, RunFailure, RunReport};
use crate::instance::Membership;
use crate::store::{
    AuditStore, InstanceStore, OperatorError, OperatorStore, Outcome, TokenError, TokenStore,
};
use access::{Caller, needs};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The run engine.
    pub engine: Arc<Engine>,
    /// Who is calling: `API_TOKEN`, named tokens, JWTs.
    pub auth: Arc<Authenticator>,
    /// The audit trail (CONTRACT §11).
    pub audit: Arc<dyn AuditStore>,
    /// Named tokens, for the admin's routes.
    pub tokens: Arc<dyn TokenStore>,
    /// The operator's queries and actions (Postgres).
    pub ops: Arc<dyn OperatorStore>,
    /// The instances table, for their list.
    pub instances: Arc<dyn InstanceStore>,
    /// This process among the instances: draining after SIGTERM.
    pub membership: Arc<Membership>,
}

/// Every error the API answers with.
#[derive(Debug)]
pub enum AppError {
    /// Missing, unknown, expired or revoked bearer, or a JWT that does not verify.
    Unauthorized,
    /// The caller's role may not do this.
    Forbidden(String),
    /// The bearer could not be checked now (the database or the identity
    /// provider's keys unreachable): it may well be good.
    CredentialsUnavailable(String),
    /// The run could not be performed, or another run holds the lock.
    RunFailed(RunError),
    /// No such route.
    NotFound,
    /// No row with that id.
    NoSuchItem(String),
    /// The item's state does not allow the action.
    Conflict {
        /// Stable machine code.
        code: &'static str,
        /// For a person.
        message: String,
    },
    /// The database failed while answering an operator's request.
    Database(String),
    /// The route exists, the method does not.
    MethodNotAllowed,
    /// The request is malformed (body or query).
    BadRequest(String),
    /// The body is larger than the API accepts.
    PayloadTooLarge,
    /// The query string is longer than the API accepts.
    UriTooLong,
    /// This instance is stopping (SIGTERM) and starts no run.
    Draining,
}

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest query string the API accepts.
pub const MAX_QUERY_BYTES: usize = 2048;

/// Options of a run; the body may be empty or `{}`, and an unknown field is
/// an error rather than silently ignored.
#[derive(Debug, Default, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Decide everything, do nothing (CONTRACT §9).
    #[serde(default)]
    pub dry_run: bool,
}

/// The body of every error answer: `error` and `message`, and for a run that
/// did not complete the run's fields (`RunError::body` builds those).
/// (Read back, refusing unknown fields, only by the tests.)
#[derive(Debug, Serialize, ToSchema)]
#[cfg_attr(test, derive(serde::Deserialize), serde(deny_unknown_fields))]
pub struct ErrorBody {
    /// Stable machine code: `invalid_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `not_retryable`, `not_resolvable`,
    /// `run_in_progress`, `payload_too_large`, `uri_too_long`,
    /// `database_error`, `credentials_unavailable`, `draining`, `run_handed_over`, or a failed run's code (`scan_failed`,
    /// `database_unavailable`, `spool_unavailable`, `internal_error`).
    #[schema(example = "not_found")]
    pub error: String,
    /// For a person.
    pub message: String,
    /// `409 run_in_progress`: the running run; a run that failed: its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Uuid>,
    /// A run that failed: `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "failed")]
    pub status: Option<String>,
    /// A run that failed: when it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// A run that failed: whether it was a dry run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

impl ErrorBody {
    fn new(error: &str, message: impl Into<String>) -> Self {
        Self {
            error: error.to_string(),
            message: message.into(),
            run_id: None,
            status: None,
            started_at: None,
            dry_run: None,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            AppError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                ErrorBody::new("unauthorized", "missing or wrong bearer token"),
            ),
            AppError::Forbidden(message) => {
                (StatusCode::FORBIDDEN, ErrorBody::new("forbidden", message))
            }
            AppError::CredentialsUnavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody::new(
                    "credentials_unavailable",
                    format!("the bearer could not be checked now; try again: {why}"),
                ),
            ),
            AppError::RunFailed(e) => {
                let status = e.http_status();
                return (status, Json(e.body())).into_response();
            }
            AppError::NotFound => (
                StatusCode::NOT_FOUND,
                ErrorBody::new("not_found", "no such route"),
            ),
            AppError::NoSuchItem(message) => {
                (StatusCode::NOT_FOUND, ErrorBody::new("not_found", message))
            }
            AppError::Conflict { code, message } => {
                (StatusCode::CONFLICT, ErrorBody::new(code, message))
            }
            AppError::Database(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody::new("database_error", message),
            ),
            AppError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorBody::new("method_not_allowed", "this route does not take that method"),
            ),
            AppError::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                ErrorBody::new("invalid_request", message),
            ),
            AppError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorBody::new(
                    "payload_too_large",
                    format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
                ),
            ),
            AppError::UriTooLong => (
                StatusCode::URI_TOO_LONG,
                ErrorBody::new(
                    "uri_too_long",
                    format!("query strings are limited to {MAX_QUERY_BYTES} bytes"),
                ),
            ),
            AppError::Draining => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody::new(
                    "draining",
                    "this instance is stopping and starts no run; ask another instance",
                ),
            ),
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<OperatorError> for AppError {
    fn from(e: OperatorError) -> Self {
        match e {
            OperatorError::NotFound(m) => AppError::NoSuchItem(m),
            OperatorError::Conflict { code, message } => AppError::Conflict { code, message },
            OperatorError::BadCursor(m) => AppError::BadRequest(m),
            OperatorError::Store(e) => {
                tracing::error!(error = %e, "operator request failed in the database");
                AppError::Database(e.to_string())
            }
        }
    }
}

impl From<crate::auth::tokens::ManageError> for AppError {
    fn from(e: crate::auth::tokens::ManageError) -> Self {
        match e {
            crate::auth::tokens::ManageError::Invalid(m) => AppError::BadRequest(m),
            crate::auth::tokens::ManageError::Token(e) => e.into(),
        }
    }
}

impl From<TokenError> for AppError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::NotFound(_) => AppError::NoSuchItem(e.to_string()),
            TokenError::NameTaken(_) => AppError::Conflict {
                code: "token_exists",
                message: e.to_string(),
            },
            TokenError::AlreadyRevoked(_) => AppError::Conflict {
                code: "already_revoked",
                message: e.to_string(),
            },
            TokenError::Store(e) => OperatorError::Store(e).into(),
        }
    }
}

/// Reads a JSON object body into `T` (its unknown fields refused by `T`);
/// `None` for an empty body.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<Option<T>, AppError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge
        } else {
            AppError::BadRequest(e.body_text())
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let invalid = |e: String| {
        AppError::BadRequest(format!(
            "the body must be a JSON object with known fields: {e}"
        ))
    };
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v @ serde_json::Value::Object(_)) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| invalid(e.to_string())),
        Ok(_) => Err(invalid("not an object".into())),
        Err(e) => Err(invalid(e.to_string())),
    }
}

/// Refuses over-long query strings before anything else looks at them.
async fn limit_query(req: Request, next: Next) -> Result<Response, AppError> {
    if req.uri().query().is_some_and(|q| q.len() > MAX_QUERY_BYTES) {
        return Err(AppError::UriTooLong);
    }
    Ok(next.run(req).await)
}

fn parse_run_request(body: Result<Bytes, BytesRejection>) -> Result<RunRequest, AppError> {
    Ok(parse_body(body)?.unwrap_or_default())
}

/// Performs one run and answers when every candidate has been processed;
/// the archive part continues in the background.
#[utoipa::path(
    post,
    path = "/api/v1/coordinator/runs",
    tag = "runs",
    request_body(
        content = RunRequest,
        description = "Empty, or a JSON object of the run's options (an unknown field is refused)"
    ),
    responses(
        (status = 200, description = "The run completed (files may have failed); with `dry_run`, every decision and nothing done", body = RunReport),
        (status = 400, description = "`invalid_request`: a malformed body or an unknown field", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller's role is below `operator`", body = ErrorBody),
        (status = 409, description = "`run_in_progress`; `run_id` names the running run (never for a dry run)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
        (status = 500, description = "`internal_error`: the run task failed", body = ErrorBody),
        (status = 502, description = "`scan_failed`: the share could not be listed; the run is recorded as failed", body = ErrorBody),
        (status = 503, description = "`database_unavailable`, `database_error` or `spool_unavailable`; `draining`: this instance got SIGTERM and starts no run; `run_handed_over`: it got SIGTERM during the run and another instance finishes it (`run_id`)", body = ErrorBody),
    )
)]
async fn create_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let options = parse_run_request(body)?;
    let action = if options.dry_run {
        "run.dry_run"
    } else {
        "run.start"
    };
    if state.membership.is_draining() {
        caller
            .record(
                &state,
                caller.audit(action, None, Outcome::Failed, Some("draining".into())),
            )
            .await;
        return Err(AppError::Draining);
    }
    // The run is its own task: a client that hangs up must not cancel it half-way.
    let engine = state.engine.clone();
    let dry_run = options.dry_run;
    let handle = state.engine.tracker().spawn(async move {
        if dry_run {
            engine.dry_run("api").await
        } else {
            engine.run("api").await
        }
    });
    let result = match handle.await {
        Ok(r) => r,
        Err(join) => Err(RunError::Failed {
            run_id: uuid::Uuid::nil(),
            started_at: chrono::Utc::now(),
            failure: RunFailure::Internal,
            message: format!("the run task failed: {join}"),
            dry_run,
        }),
    };
    // Recorded once the run is known (its id, how it ended).
    let entry = match &result {
        Ok(report) => caller.audit(action, Some(report.run_id.to_string()), Outcome::Ok, None),
        Err(RunError::HandedOver { run_id }) => caller.audit(
            action,
            Some(run_id.to_string()),
            Outcome::Ok,
            Some("handed over to another instance (this one got SIGTERM)".into()),
        ),
        Err(e) => {
            let body = e.body();
            let text = |k: &str| {
                body.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            caller.audit(
                action,
                body.get("run_id")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
                Outcome::Failed,
                Some(format!("{}: {}", text("error"), text("message"))),
            )
        }
    };
    caller.record(&state, entry).await;
    match result {
        Ok(report) => Ok((StatusCode::OK, Json(report)).into_response()),
        Err(e) => Err(AppError::RunFailed(e)),
    }
}

/// `GET /metrics`: the engine's series in the Prometheus text format, with
/// the backlog gauges counted now (one query; on a database error the last
/// counts stay and the scrape still answers).
async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.engine.metrics();
    match state.engine.store().backlog().await {
        Ok(b) => m.set_backlog(b),
        Err(e) => tracing::warn!(error = %e, "metrics: the backlog could not be counted"),
    }
    match m.render() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics could not be rendered");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The answer of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// The process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    responses(
        (status = 200, description = "Alive", body = Health),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
    )
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The answer of `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
struct Readiness {
    /// `ready`, `not_ready`, or `draining` (after SIGTERM: finishing its
    /// files, taking no new work).
    #[schema(example = "ready")]
    status: &'static str,
    /// True after SIGTERM.
    draining: bool,
    /// Whether Postgres answers.
    database: Check,
    /// Whether the share's source folder can be listed.
    share: Check,
}

/// One dependency of [`Readiness`].
#[derive(Debug, Serialize, ToSchema)]
struct Check {
    /// True when it answered.
    ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<Result<(), String>> for Check {
    fn from(r: Result<(), String>) -> Self {
        Self {
            ok: r.is_ok(),
            error: r.err(),
        }
    }
}

/// The database and the share answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
        (status = 503, description = "Not ready: which of the two failed, or draining after SIGTERM", body = Readiness),
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let db = state.engine.store().ping().await.map_err(|e| e.to_string());
    let share = tokio::time::timeout(
        Duration::from_secs(10),
        state
            .engine
            .source()
            .list(&state.engine.settings().source_dir),
    )
    .await
    .map_err(|_| "timed out".to_string())
    .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
    let draining = state.membership.is_draining();
    let ready = db.is_ok() && share.is_ok() && !draining;
    let body = Readiness {
        status: if draining {
            "draining"
        } else if ready {
            "ready"
        } else {
            "not_ready"
        },
        draining,
        database: db.into(),
        share: share.into(),
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// This API's OpenAPI 3.1 document, built from the routes as they are registered.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
    )
)]
async fn openapi_json(Extension(doc): Extension<Arc<utoipa::openapi::OpenApi>>) -> Response {
    Json(&*doc).into_response()
}

/// Every documented route: those under `/api/v1/coordinator` each with
/// the least role it needs ([`needs`], which also documents it), the rest
/// open. API routes are added here, with `routes!`; `tests/it/openapi.rs`
/// fails on a path the router serves that the document lacks (the status
/// page's aside).
fn documented(state: &AppState) -> OpenApiRouter<AppState> {
    use Role::{Admin, Operator, Viewer};
    let s = state;
    let mut api = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json))
        .routes(needs(s, Operator, "run.start", routes!(create_run)))
        .routes(needs(s, Viewer, "runs.list", routes!(operator::list_runs)))
        .routes(needs(s, Viewer, "run.get", routes!(operator::get_run)))
        .routes(needs(
            s,
            Viewer,
            "files.list",
            routes!(operator::list_files),
        ))
        .routes(needs(s, Viewer, "file.get", routes!(operator::get_file)))
        .routes(needs(
            s,
            Operator,
            "file.retry",
            routes!(operator::retry_file),
        ))
        .routes(needs(
            s,
            Operator,
            "file.resolve",
            routes!(operator::resolve_file),
        ))
        .routes(needs(
            s,
            Viewer,
            "instances.list",
            routes!(operator::list_instances),
        ))
        .routes(needs(s, Admin, "tokens.list", routes!(admin::list_tokens)))
        .routes(needs(
            s,
            Admin,
            "token.create",
            routes!(admin::create_token),
        ))
        .routes(needs(
            s,
            Admin,
            "token.revoke",
            routes!(admin::revoke_token),
        ))
        .routes(needs(s, Admin, "audit.list", routes!(admin::list_audit)));
    // An empty body is a run with no options, which `#[utoipa::path]` cannot say.
    openapi::optional_body(api.get_openapi_mut(), "/api/v1/coordinator/runs");
    api
}

/// The router with its middleware: the documented routes, the status page,
/// and the document itself for `openapi_json`.
pub fn router(state: AppState) -> Router {
    let (documented, doc) = documented(&state).split_for_parts();
    Router::new()
        .merge(documented)
        .route("/metrics", axum::routing::get(metrics))
        .merge(page::routes())
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .with_state(state)
        .layer(Extension(Arc::new(doc)))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(limit_query))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_request_bodies() {
        let ok = |b: &str| parse_run_request(Ok(Bytes::from(b.to_string()))).is_ok();
        assert!(ok(""));
        assert!(ok("  \n"));
        assert!(ok("{}"));
        assert!(!ok("{not json"));
        assert!(!ok(r#"{"dry_runn": true}"#));
        assert!(ok(r#"{"dry_run": true}"#));
        assert!(ok(r#"{"dry_run": false}"#));
        assert!(!ok(r#"{"dry_run": "yes"}"#));
        assert!(!ok("[]"));
        assert!(!ok("null"));
    }

    /// Every error answer is an [`ErrorBody`] (which refuses unknown
    /// fields), so the document's error schema is the bodies' real shape.
    #[tokio::test]
    async fn every_error_body_is_the_documented_one() {
        let failed = |failure| {
            AppError::RunFailed(RunError::Failed {
                run_id: Uuid::new_v4(),
                started_at: Utc::now(),
                failure,
                message: "m".into(),
                dry_run: false,
            })
        };
        let errors = [
            AppError::Unauthorized,
            AppError::Forbidden("role viewer may not".into()),
            AppError::CredentialsUnavailable("JWKS down".into()),
            AppError::RunFailed(RunError::Busy { running: None }),
            AppError::RunFailed(RunError::Busy {
                running: Some(Uuid::new_v4()),
            }),
            failed(RunFailure::ScanFailed),
            failed(RunFailure::DatabaseUnavailable),
            failed(RunFailure::DatabaseError),
            failed(RunFailure::SpoolUnavailable),
            failed(RunFailure::Internal),
            AppError::NotFound,
            AppError::NoSuchItem("no file 1".into()),
            AppError::Conflict {
                code: "not_retryable",
                message: "m".into(),
            },
            AppError::Database("down".into()),
            AppError::MethodNotAllowed,
            AppError::BadRequest("bad".into()),
            AppError::PayloadTooLarge,
            AppError::UriTooLong,
        ];
        for e in errors {
            let what = format!("{e:?}");
            let resp = e.into_response();
            assert!(resp.status().is_client_error() || resp.status().is_server_error());
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .expect("a body");
            let body: ErrorBody =
                serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{what}: {e}: {bytes:?}"));
            assert!(!body.error.is_empty() && !body.message.is_empty(), "{what}");
        }
    }
}
