//! Who is calling (CONTRACT §11): a bearer is `API_TOKEN` (the `bootstrap`
//! admin), a named token of the `tokens` table, or a JWT of the company's
//! identity provider; each becomes a [`Principal`] with a [`Role`], and each
//! route declares the least role it needs.

pub mod authn;
pub mod oidc;
pub mod tokens;

pub use authn::Authenticator;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a caller may do; ordered, each role may do what the ones below it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every `GET` route.
    Viewer,
    /// Also starts runs (dry or not), retries and resolves files.
    Operator,
    /// Also manages tokens and reads the audit log.
    Admin,
}

impl Role {
    /// The name used in the API, the tables and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored or claimed role name (exact, lowercase).
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a principal's credentials came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `API_TOKEN`.
    Bootstrap,
    /// A named token (`coordinator token create`).
    Token,
    /// A JWT of the identity provider.
    Jwt,
    /// No bearer, on a local deployment without `API_TOKEN`.
    Open,
}

/// A caller whose bearer verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Token name or JWT subject (or `OIDC_NAME_CLAIM`), as recorded in the audit trail.
    pub actor: String,
    /// Its role; `None` for a JWT that verified but names none of the roles
    /// (a known actor who may do nothing: every route answers `403`).
    pub role: Option<Role>,
    /// What kind of bearer it was.
    pub via: Via,
}

impl Principal {
    /// The built-in admin of `API_TOKEN`.
    pub fn bootstrap() -> Self {
        Self {
            actor: "bootstrap".into(),
            role: Some(Role::Admin),
            via: Via::Bootstrap,
        }
    }

    /// Whether it may call a route that needs `needed`.
    pub fn may(&self, needed: Role) -> bool {
        self.role.is_some_and(|r| r >= needed)
    }
}

/// Why a bearer was refused with `401` (the reason is logged and counted
/// in `coordinator_auth_failures_total{reason}`, never answered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    Missing,
    /// Not a token of ours, nor a JWT.
    #[error("unknown token")]
    Unknown,
    /// A named token past its expiry.
    #[error("token expired")]
    Expired,
    /// A named token that was revoked.
    #[error("token revoked")]
    Revoked,
    /// A JWT that does not verify (signature, issuer, audience, expiry,
    /// algorithm, unknown key); the text says which, for the log.
    #[error("invalid JWT: {0}")]
    InvalidJwt(String),
    /// The credentials could not be checked (database or JWKS unreachable).
    #[error("credentials could not be checked: {0}")]
    Unavailable(String),
}

impl AuthFailure {
    /// The `reason` label of `coordinator_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
            AuthFailure::InvalidJwt(_) => "invalid_jwt",
            AuthFailure::Unavailable(_) => "unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("Admin"), None);
        let p = Principal {
            actor: "a".into(),
            role: Some(Role::Operator),
            via: Via::Token,
        };
        assert!(p.may(Role::Viewer) && p.may(Role::Operator) && !p.may(Role::Admin));
        let none = Principal { role: None, ..p };
        assert!(!none.may(Role::Viewer));
    }
}
