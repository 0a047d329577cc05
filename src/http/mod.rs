//! The HTTP API (CONTRACT §4, §9): the run endpoint and the operator's
//! history, retry and resolve routes behind a bearer token, and
//! unauthenticated health and readiness probes. Errors are JSON
//! `{error, message}` through one [`AppError`].

mod operator;
mod page;

use crate::config::Secret;
use crate::engine::{Engine, RunError, RunFailure};
use crate::store::{OperatorError, OperatorStore};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The run engine.
    pub engine: Arc<Engine>,
    /// Required bearer token, if any.
    pub api_token: Option<Secret>,
    /// The operator's queries and actions (Postgres).
    pub ops: Arc<dyn OperatorStore>,
}

/// Every error the API answers with.
#[derive(Debug)]
pub enum AppError {
    /// Missing or wrong bearer token.
    Unauthorized,
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
}

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest query string the API accepts.
pub const MAX_QUERY_BYTES: usize = 2048;

/// Options of a run; the body may be empty or `{}`, and an unknown field is
/// an error rather than silently ignored.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Decide everything, do nothing (CONTRACT §9).
    #[serde(default)]
    pub dry_run: bool,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            AppError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthorized", "message": "missing or wrong bearer token"}),
            ),
            AppError::RunFailed(e) => (e.http_status(), e.body()),
            AppError::NotFound => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": "no such route"}),
            ),
            AppError::NoSuchItem(message) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": message}),
            ),
            AppError::Conflict { code, message } => (
                StatusCode::CONFLICT,
                json!({"error": code, "message": message}),
            ),
            AppError::Database(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "database_error", "message": message}),
            ),
            AppError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed", "message": "this route does not take that method"}),
            ),
            AppError::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "message": message}),
            ),
            AppError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "payload_too_large", "message": format!("request bodies are limited to {MAX_BODY_BYTES} bytes")}),
            ),
            AppError::UriTooLong => (
                StatusCode::URI_TOO_LONG,
                json!({"error": "uri_too_long", "message": format!("query strings are limited to {MAX_QUERY_BYTES} bytes")}),
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

async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, AppError> {
    if let Some(token) = &state.api_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
            return Err(AppError::Unauthorized);
        }
    }
    Ok(next.run(req).await)
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

async fn create_run(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let options = parse_run_request(body)?;
    // The run is its own task: a client that hangs up must not cancel it half-way.
    let engine = state.engine.clone();
    let handle = state.engine.tracker.spawn(async move {
        if options.dry_run {
            engine.dry_run("api").await
        } else {
            engine.run("api").await
        }
    });
    match handle.await {
        Ok(Ok(report)) => Ok((StatusCode::OK, Json(report)).into_response()),
        Ok(Err(e)) => Err(AppError::RunFailed(e)),
        Err(join) => Err(AppError::RunFailed(RunError::Failed {
            run_id: uuid::Uuid::nil(),
            started_at: chrono::Utc::now(),
            failure: RunFailure::Internal,
            message: format!("the run task failed: {join}"),
            dry_run: false,
        })),
    }
}

/// `GET /metrics`: the engine's series in the Prometheus text format, with
/// the backlog gauges counted now (one query; on a database error the last
/// counts stay and the scrape still answers).
async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.engine.metrics;
    match state.engine.store.backlog().await {
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

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let db = state.engine.store.ping().await.map_err(|e| e.to_string());
    let share = tokio::time::timeout(
        Duration::from_secs(10),
        state.engine.source.list(&state.engine.settings.source_dir),
    )
    .await
    .map_err(|_| "timed out".to_string())
    .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
    let ready = db.is_ok() && share.is_ok();
    let show = |r: &Result<(), String>| match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e}),
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "database": show(&db),
        "share": show(&share),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// The router with its middleware.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/coordinator/runs",
            post(create_run).get(operator::list_runs),
        )
        .route("/api/v1/coordinator/runs/{run_id}", get(operator::get_run))
        .route("/api/v1/coordinator/files", get(operator::list_files))
        .route("/api/v1/coordinator/files/{id}", get(operator::get_file))
        .route(
            "/api/v1/coordinator/files/{id}/retry",
            post(operator::retry_file),
        )
        .route(
            "/api/v1/coordinator/files/{id}/resolve",
            post(operator::resolve_file),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(page::routes())
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .with_state(state)
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
}
