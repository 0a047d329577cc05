//! Named tokens (CONTRACT §11): rows of `tokens`, each with the SHA-256 of
//! its secret and never the secret itself. Created, listed and revoked by an
//! admin (CLI or API); looked up by name on every request that carries one
//! (through the authenticator's short cache).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::postgres::Step;
use super::{PgStore, StoreError};
use crate::auth::Role;

/// A token as `token list` and `GET /tokens` show it (never its secret).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TokenView {
    /// Its name: the actor of what it does.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    #[schema(value_type = Role)]
    pub role: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Who created it (an actor name).
    pub created_by: String,
    /// When it stops working; null: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last accepted (written at most once a minute per instance).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked; null while valid.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

/// What a request's bearer is checked against.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRecord {
    /// Its role, as stored.
    pub role: String,
    /// SHA-256 of the secret.
    pub secret_sha256: Vec<u8>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation, if any.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Why a token could not be created or revoked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The name is taken (names of revoked tokens too: the audit trail names them).
    #[error("a token named {0:?} exists already (names of revoked tokens are not reused)")]
    NameTaken(String),
    /// No token of that name.
    #[error("no token named {0:?}")]
    NotFound(String),
    /// Revoked before.
    #[error("the token {0:?} is revoked already")]
    AlreadyRevoked(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new token's row.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its role.
    pub role: Role,
    /// SHA-256 of its secret.
    pub secret_sha256: &'a [u8],
    /// Who creates it.
    pub created_by: &'a str,
    /// Days until it expires; `None`: never.
    pub expires_in_days: Option<u32>,
}

/// The `tokens` table.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a new token.
    async fn create_token(&self, new: &NewToken<'_>) -> Result<TokenView, TokenError>;
    /// Every token, newest first.
    async fn list_tokens(&self) -> Result<Vec<TokenView>, StoreError>;
    /// Revokes a token (from now on, within the authenticator's cache time).
    async fn revoke_token(&self, name: &str, by: &str) -> Result<TokenView, TokenError>;
    /// The token to check a bearer against.
    async fn find_token(&self, name: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Notes that a token was accepted just now.
    async fn token_used(&self, name: &str) -> Result<(), StoreError>;
}

const TOKEN_COLUMNS: &str =
    "name, role, created_at, created_by, expires_at, last_used_at, revoked_at, revoked_by";

#[async_trait]
impl TokenStore for PgStore {
    async fn create_token(&self, new: &NewToken<'_>) -> Result<TokenView, TokenError> {
        let row: Option<TokenView> = sqlx::query_as(&format!(
            "INSERT INTO tokens (name, role, secret_sha256, created_by, expires_at) \
             VALUES ($1, $2, $3, $4, now() + make_interval(days => $5)) \
             ON CONFLICT (name) DO NOTHING RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(new.name)
        .bind(new.role.as_str())
        .bind(new.secret_sha256)
        .bind(new.created_by)
        .bind(new.expires_in_days.map(|d| d as i32))
        .fetch_optional(self.pool())
        .await
        .step("creating a token")?;
        row.ok_or_else(|| TokenError::NameTaken(new.name.to_string()))
    }

    async fn list_tokens(&self) -> Result<Vec<TokenView>, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at DESC, name"
        ))
        .fetch_all(self.pool())
        .await
        .step("listing tokens")
    }

    async fn revoke_token(&self, name: &str, by: &str) -> Result<TokenView, TokenError> {
        let revoked: Option<TokenView> = sqlx::query_as(&format!(
            "UPDATE tokens SET revoked_at = now(), revoked_by = $2 \
             WHERE name = $1 AND revoked_at IS NULL RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(name)
        .bind(by)
        .fetch_optional(self.pool())
        .await
        .step("revoking a token")?;
        if let Some(view) = revoked {
            return Ok(view);
        }
        match self.find_token(name).await? {
            Some(_) => Err(TokenError::AlreadyRevoked(name.to_string())),
            None => Err(TokenError::NotFound(name.to_string())),
        }
    }

    async fn find_token(&self, name: &str) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query_as(
            "SELECT role, secret_sha256, expires_at, revoked_at FROM tokens WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .step("looking up a token")
    }

    async fn token_used(&self, name: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE tokens SET last_used_at = now() WHERE name = $1")
            .bind(name)
            .execute(self.pool())
            .await
            .step("noting a token's use")?;
        Ok(())
    }
}
