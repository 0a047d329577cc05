//! The admin's routes (CONTRACT §11): named tokens and the audit trail.

use super::access::Caller;
use super::operator::{bad, cursor, limit, path, query};
use super::{AppError, AppState, ErrorBody, parse_body};
use crate::auth::{Role, tokens};
use crate::store::{AuditFilter, AuditView, TokenError, TokenView};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The token list.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokensPage {
    /// Every token, newest first (revoked ones too; never a secret).
    tokens: Vec<TokenView>,
}

/// Body of a token's creation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Its name, the actor of what it does: 1 to 64 of `A-Z a-z 0-9 . _ @ -`.
    #[schema(example = "alice")]
    name: String,
    /// `viewer`, `operator` or `admin`.
    role: Role,
    /// Days until it expires (1 to 3650); absent: never.
    #[schema(minimum = 1, maximum = 3650)]
    expires_in_days: Option<u32>,
}

/// A created token: shown once, stored only as a hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// The token.
    #[serde(flatten)]
    token: TokenView,
    /// The bearer to give its owner; never shown again.
    secret: String,
}

/// Every named token (never a secret).
#[utoipa::path(
    get,
    path = "/api/v1/coordinator/tokens",
    tag = "admin",
    responses(
        (status = 200, description = "The tokens", body = TokensPage),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
        (status = 503, description = "`database_error`", body = ErrorBody),
    )
)]
pub async fn list_tokens(State(state): State<AppState>) -> Result<Json<TokensPage>, AppError> {
    let tokens = state
        .tokens
        .list_tokens()
        .await
        .map_err(TokenError::Store)?;
    Ok(Json(TokensPage { tokens }))
}

/// Creates a named token; its secret is in this answer only.
#[utoipa::path(
    post,
    path = "/api/v1/coordinator/tokens",
    tag = "admin",
    request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "The token, with its secret (shown once)", body = CreatedToken),
        (status = 400, description = "`invalid_request`: a bad name, role or expiry, or an unknown field", body = ErrorBody),
        (status = 409, description = "`token_exists`: the name is taken (revoked names too)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
        (status = 503, description = "`database_error`", body = ErrorBody),
    )
)]
pub async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), AppError> {
    let req: CreateTokenRequest =
        parse_body(body)?.ok_or_else(|| bad("a body with name and role is required"))?;
    let (token, secret) = tokens::create(
        state.tokens.as_ref(),
        state.audit.as_ref(),
        &caller.actor(),
        &req.name,
        req.role,
        req.expires_in_days,
    )
    .await?;
    tracing::info!(token = %token.name, role = %token.role, actor = %caller.principal.actor, "token created");
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

/// Revokes a named token: every instance refuses it within 5 seconds.
#[utoipa::path(
    delete,
    path = "/api/v1/coordinator/tokens/{name}",
    tag = "admin",
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 200, description = "The token, revoked", body = TokenView),
        (status = 404, description = "`not_found`: no such token", body = ErrorBody),
        (status = 409, description = "`already_revoked`", body = ErrorBody),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
        (status = 503, description = "`database_error`", body = ErrorBody),
    )
)]
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<TokenView>, AppError> {
    let name = path(name)?;
    let token = tokens::revoke(
        state.tokens.as_ref(),
        state.audit.as_ref(),
        &caller.actor(),
        &name,
    )
    .await?;
    tracing::info!(token = %token.name, actor = %caller.principal.actor, "token revoked");
    Ok(Json(token))
}

/// `?limit=&before=&actor=&action=&target=&since=&until=` of the audit trail.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Rows per page, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next` of the previous page: rows with a smaller id.
    #[param(value_type = Option<i64>)]
    before: Option<String>,
    /// Exact actor (token name or JWT subject).
    actor: Option<String>,
    /// Exact action (`run.start`, `file.retry`, `token.create`, ...).
    action: Option<String>,
    /// Exact target (run id, file id or token name).
    target: Option<String>,
    /// Rows at or after this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    since: Option<String>,
    /// Rows before this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    until: Option<String>,
}

/// A page of the audit trail, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// The rows.
    events: Vec<AuditView>,
    /// The `before` of the next page; null on the last.
    next: Option<String>,
}

/// An RFC 3339 time of a filter.
fn time(v: Option<String>, name: &str) -> Result<Option<DateTime<Utc>>, AppError> {
    v.map(|s| {
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                bad(format!(
                    "{name} must be an RFC 3339 time, e.g. 2026-12-04T00:00:00Z"
                ))
            })
    })
    .transpose()
}

/// The audit trail, newest first: every operator action, and every one
/// refused to a known actor.
#[utoipa::path(
    get,
    path = "/api/v1/coordinator/audit",
    tag = "admin",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of the audit trail", body = AuditPage),
        (status = 400, description = "`invalid_request`: a bad `limit`, `before`, `since` or `until`, or an unknown parameter", body = ErrorBody),
        (status = 414, description = "`uri_too_long`", body = ErrorBody),
        (status = 503, description = "`database_error`", body = ErrorBody),
    )
)]
pub async fn list_audit(
    State(state): State<AppState>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, AppError> {
    let q = query(q)?;
    let limit = limit(q.limit.as_deref())?;
    let before: Option<i64> = cursor(q.before, "an audit event id")?;
    let filter = AuditFilter {
        actor: q.actor,
        action: q.action,
        target: q.target,
        since: time(q.since, "since")?,
        until: time(q.until, "until")?,
    };
    let page = state.audit.audit_page(&filter, limit, before).await?;
    Ok(Json(AuditPage {
        events: page.items,
        next: page.next,
    }))
}
