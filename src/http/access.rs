//! Who may call what (CONTRACT §11). Every `/api/` route but the OpenAPI
//! document is registered through [`needs`], which declares the least
//! [`Role`] it takes and the action it is in the audit trail: the same call
//! guards the route (`401` for a bearer that does not verify, `403`, with an
//! `audit_events` row, for a role below it; `503` when the credentials
//! cannot be checked: the database or the JWKS unreachable) and writes the role into the
//! route's OpenAPI operation (`security: bearer: [role]`, which OpenAPI 3.1
//! allows for role names, and `x-required-role`).

use super::{AppError, AppState};
use crate::auth::{AuthFailure, Principal, Role};
use crate::store::{AuditEntry, Outcome};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use std::net::SocketAddr;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa_axum::router::UtoipaMethodRouter;

/// A caller whose bearer verified and whose role suffices, with what the
/// audit trail records of its request; an extension of the request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// The peer's address (the TCP connection's).
    pub remote_addr: Option<String>,
    /// The request's `x-request-id`.
    pub request_id: Option<String>,
}

impl Caller {
    fn of(principal: Principal, req: &Request) -> Self {
        Self {
            principal,
            remote_addr: req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(a)| a.ip().to_string()),
            request_id: req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }

    /// An audit row of this caller.
    pub fn audit(
        &self,
        action: &str,
        target: Option<String>,
        outcome: Outcome,
        reason: Option<String>,
    ) -> AuditEntry {
        AuditEntry {
            actor: self.principal.actor.clone(),
            role: self.principal.role.map(|r| r.as_str().to_string()),
            action: action.to_string(),
            target,
            outcome,
            reason,
            remote_addr: self.remote_addr.clone(),
            request_id: self.request_id.clone(),
        }
    }

    /// The caller's part of an audit row (actor, role, address, request),
    /// for actions that fill in the rest themselves.
    pub fn actor(&self) -> AuditEntry {
        self.audit("", None, Outcome::Ok, None)
    }

    /// Records `entry` on its own; a failure is logged, never answered
    /// (the action itself was decided already).
    pub async fn record(&self, state: &AppState, entry: AuditEntry) {
        if let Err(e) = state.audit.record(&entry).await {
            tracing::error!(error = %e, action = %entry.action, actor = %entry.actor,
                "an audit event could not be recorded");
        }
    }
}

/// What a route needs, as [`authorize`] checks it.
#[derive(Clone)]
struct Need {
    state: AppState,
    role: Role,
    action: &'static str,
    /// The route's path template, for the target of a refusal.
    template: String,
}

impl Need {
    /// The value of the template's parameter (`{id}`, `{name}`, `{run_id}`)
    /// in `path`: the file id, token name or run id a refusal names.
    fn target(&self, path: &str) -> Option<String> {
        self.template
            .split('/')
            .zip(path.split('/'))
            .find(|(t, _)| t.starts_with('{'))
            .map(|(_, v)| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    }
}

/// Registers `route` as needing `role`; `action` names it in the audit
/// trail when it is refused (`403`). Use it for every protected route.
pub(super) fn needs(
    state: &AppState,
    role: Role,
    action: &'static str,
    (schemas, mut paths, method_router): UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState> {
    let requirement = SecurityRequirement::new(super::openapi::BEARER, [role.as_str()]);
    for item in paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            op.security = Some(vec![requirement.clone()]);
            let ext = ExtensionsBuilder::new()
                .add("x-required-role", role.as_str())
                .build();
            match &mut op.extensions {
                Some(e) => e.merge(ext),
                None => op.extensions = Some(ext),
            }
            for (code, text) in [
                ("401", "`unauthorized`: no bearer, or one that is unknown, expired, revoked or does not verify".to_string()),
                ("403", format!("`forbidden`: the caller's role is below `{role}`")),
                ("503", "`credentials_unavailable`: the bearer could not be checked (the database or the identity provider's keys unreachable)".to_string()),
            ] {
                match op.responses.responses.get_mut(code) {
                    // A route's own 503 gains the credentials' one.
                    Some(RefOr::T(r)) if code == "503" => {
                        r.description = format!("{}; {text}", r.description);
                    }
                    Some(_) => {}
                    None => {
                        op.responses
                            .responses
                            .insert(code.to_string(), error_response(&text));
                    }
                }
            }
            let note = format!("Needs role `{role}` or above.");
            op.description = Some(match op.description.take() {
                Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
                _ => note,
            });
        }
    }
    let need = Need {
        state: state.clone(),
        role,
        action,
        template: paths.paths.keys().next().cloned().unwrap_or_default(),
    };
    let method_router = method_router.route_layer(middleware::from_fn_with_state(need, authorize));
    (schemas, paths, method_router)
}

/// A documented error answer: `description`, with the [`ErrorBody`](super::ErrorBody) schema.
fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// `401` unless the bearer verifies, `403` (recorded) unless its role suffices.
async fn authorize(
    State(need): State<Need>,
    mut req: Request,
    next: Next,
) -> Result<Response, AppError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let principal = match need.state.auth.authenticate(header).await {
        Ok(p) => p,
        Err(failure) => {
            need.state.engine.metrics().auth_failed(failure.reason());
            tracing::warn!(reason = failure.reason(), detail = %failure, path = %req.uri().path(),
                "request refused: bearer not accepted");
            // The bearer may well be good: say the check failed, not the caller.
            if let AuthFailure::Unavailable(why) = failure {
                return Err(AppError::CredentialsUnavailable(why));
            }
            return Err(AppError::Unauthorized);
        }
    };
    let caller = Caller::of(principal, &req);
    if !caller.principal.may(need.role) {
        let reason = format!(
            "role {} may not do this (needs {})",
            caller.principal.role.map_or("none", Role::as_str),
            need.role
        );
        tracing::warn!(actor = %caller.principal.actor, action = need.action, %reason, "request refused: forbidden");
        let target = need.target(req.uri().path());
        caller
            .record(
                &need.state,
                caller.audit(need.action, target, Outcome::Refused, Some(reason.clone())),
            )
            .await;
        return Err(AppError::Forbidden(reason));
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}
