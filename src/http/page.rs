//! The status page (CONTRACT §9): three files embedded in the binary, served
//! without a token. The page reads the API with the token the operator types
//! in; it loads nothing from anywhere else, which the CSP enforces.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("../../assets/status/index.html");
const SCRIPT: &str = include_str!("../../assets/status/status.js");
const STYLE: &str = include_str!("../../assets/status/status.css");

/// Only this origin, no inline script or style, no framing.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `GET /`, `/assets/status.js` and `/assets/status.css`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/assets/status.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/status.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
