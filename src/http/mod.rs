//! The HTTP API (CONTRACT §4): the run endpoint behind a bearer token, and
//! unauthenticated health and readiness probes. Errors are JSON
//! `{error, message}` through one [`AppError`].

use crate::config::Secret;
use crate::engine::{Engine, RunError};
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
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The run engine.
    pub engine: Arc<Engine>,
    /// Required bearer token, if any.
    pub api_token: Option<Secret>,
}

/// Every error the API answers with.
#[derive(Debug)]
pub enum AppError {
    /// Missing or wrong bearer token.
    Unauthorized,
    /// Another run is in progress.
    RunInProgress(Option<uuid::Uuid>),
    /// The run could not be performed.
    RunFailed(RunError),
    /// No such route.
    NotFound,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            AppError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthorized", "message": "missing or wrong bearer token"}),
            ),
            AppError::RunInProgress(running) => (
                StatusCode::CONFLICT,
                json!({"error": "run_in_progress", "message": "a run is already in progress", "run_id": running}),
            ),
            AppError::RunFailed(RunError::Failed {
                run_id,
                started_at,
                code,
                message,
            }) => (
                if code == "scan_failed" {
                    StatusCode::BAD_GATEWAY
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                json!({"run_id": run_id, "status": "failed", "started_at": started_at, "error": code, "message": message}),
            ),
            AppError::RunFailed(RunError::Busy { running }) => {
                return AppError::RunInProgress(running).into_response();
            }
            AppError::NotFound => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": "no such route"}),
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

async fn create_run(State(state): State<AppState>) -> Result<Response, AppError> {
    // The run is its own task: a client that hangs up must not cancel it half-way.
    let engine = state.engine.clone();
    let handle = state
        .engine
        .tracker
        .spawn(async move { engine.run("api").await });
    match handle.await {
        Ok(Ok(report)) => Ok((StatusCode::OK, Json(report)).into_response()),
        Ok(Err(RunError::Busy { running })) => Err(AppError::RunInProgress(running)),
        Ok(Err(e)) => Err(AppError::RunFailed(e)),
        Err(join) => Err(AppError::RunFailed(RunError::Failed {
            run_id: uuid::Uuid::nil(),
            started_at: chrono::Utc::now(),
            code: "internal_error",
            message: format!("the run task failed: {join}"),
        })),
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
        .route("/api/v1/coordinator/runs", post(create_run))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { AppError::NotFound })
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(64 * 1024))
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
