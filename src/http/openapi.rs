//! What the OpenAPI document holds beyond the routes registered with
//! `routes!` (CONTRACT §9): its title, the bearer-token security scheme, and
//! the paths served by routes that live elsewhere.

use super::ErrorBody;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The name of the security scheme in the document.
pub(super) const BEARER: &str = "bearer";

/// The document the routes are added to.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "coordinator",
        description = "Takes remittance files from an SMB share into the finance back office, \
                       exactly once. Every `/api/` route but this document needs a bearer token \
                       whose role is at least the one the operation names."
    ),
    paths(metrics),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme),
    tags(
        (name = "runs", description = "Performing a run (CONTRACT §4)"),
        (name = "operator", description = "Run and file history, retry and resolve (CONTRACT §9)"),
        (name = "admin", description = "Named tokens and the audit trail (CONTRACT §11)"),
        (name = "probes", description = "Liveness, readiness and metrics, without a token"),
        (name = "meta", description = "This document"),
    )
)]
struct Base;

/// The document before any route is registered.
pub(super) fn base() -> utoipa::openapi::OpenApi {
    Base::openapi()
}

/// Adds the `bearer` scheme (`Authorization: Bearer <API_TOKEN>`).
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "API_TOKEN (the `bootstrap` admin), a named token (`coordinator token create`), \
                         or a JWT of the identity provider (OIDC_ISSUER); each operation lists the least \
                         role it needs: `viewer` < `operator` < `admin`",
                    ))
                    .build(),
            ),
        );
    }
}

/// Marks the request body of `POST path` as optional (it may be empty).
pub(super) fn optional_body(doc: &mut utoipa::openapi::OpenApi, path: &str) {
    if let Some(body) = doc
        .paths
        .paths
        .get_mut(path)
        .and_then(|item| item.post.as_mut())
        .and_then(|op| op.request_body.as_mut())
    {
        body.required = Some(utoipa::openapi::Required::False);
    }
}

/// Prometheus text format, without a token. Only documents the path: the
/// route itself lives in the metrics module, registered on the router
/// outside the token layer.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    responses(
        (status = 200, description = "The metrics, Prometheus text format 0.0.4", body = String,
         content_type = "text/plain; version=0.0.4"),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
    )
)]
#[allow(dead_code)] // only its `#[utoipa::path]` is used, in `Base`
fn metrics() {}
