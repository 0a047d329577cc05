//! Turns a request's bearer into a [`Principal`]: `API_TOKEN` (the
//! `bootstrap` admin, compared in constant time), a named token (looked up
//! by its name, checked by its hash), or, when configured, a JWT of the
//! identity provider. Named tokens are cached for [`TOKEN_CACHE_TTL`], so a
//! revocation reaches every instance within that time and a request costs
//! no query while its token is cached.

use super::oidc::{OidcVerifier, looks_like_jwt};
use super::{AuthFailure, Principal, Role, Via, tokens};
use crate::config::Secret;
use crate::store::{TokenRecord, TokenStore};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// How long a looked-up token is trusted before it is read again: the
/// contract's 5 s for a revocation to reach every instance, with room for
/// the request in flight.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(2);
/// `last_used_at` is written at most this often per token and instance.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);
/// Entries kept before the cache is emptied (bogus names cost a lookup each).
const CACHE_MAX: usize = 10_000;

struct Cached {
    record: Option<TokenRecord>,
    read_at: Instant,
}

/// The credentials of one process.
pub struct Authenticator {
    bootstrap: Option<Secret>,
    /// `ENV=local` without `API_TOKEN`: a request without a bearer is the
    /// `anonymous` admin (a bearer given is still checked).
    open: bool,
    tokens: Arc<dyn TokenStore>,
    oidc: Option<OidcVerifier>,
    cache: Mutex<HashMap<String, Cached>>,
    last_used: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `bootstrap` is `API_TOKEN`; without it the API is open only when
    /// `open`. JWTs are accepted when `oidc` is given.
    pub fn new(
        bootstrap: Option<Secret>,
        open: bool,
        tokens: Arc<dyn TokenStore>,
        oidc: Option<OidcVerifier>,
    ) -> Self {
        Self {
            bootstrap,
            open,
            tokens,
            oidc,
            cache: Mutex::new(HashMap::new()),
            last_used: Mutex::new(HashMap::new()),
        }
    }

    /// The caller of a request whose `Authorization` header is `header`.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthFailure> {
        let Some(bearer) = header.and_then(bearer_of) else {
            return if self.open && header.is_none() {
                Ok(Principal {
                    actor: "anonymous".into(),
                    role: Some(Role::Admin),
                    via: Via::Open,
                })
            } else {
                Err(AuthFailure::Missing)
            };
        };
        if let Some(token) = &self.bootstrap
            && bool::from(bearer.as_bytes().ct_eq(token.expose().as_bytes()))
        {
            return Ok(Principal::bootstrap());
        }
        if let Some(name) = tokens::name_of(bearer) {
            return self.named(name, bearer).await;
        }
        match &self.oidc {
            Some(oidc) if looks_like_jwt(bearer) => oidc.verify(bearer).await,
            _ => Err(AuthFailure::Unknown),
        }
    }

    async fn named(&self, name: &str, bearer: &str) -> Result<Principal, AuthFailure> {
        let record = self.record(name).await?;
        let Some(record) = record else {
            return Err(AuthFailure::Unknown);
        };
        if !bool::from(tokens::hash(bearer).ct_eq(&record.secret_sha256)) {
            return Err(AuthFailure::Unknown);
        }
        if record.revoked_at.is_some() {
            return Err(AuthFailure::Revoked);
        }
        if record.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(AuthFailure::Expired);
        }
        let role = Role::parse(&record.role).ok_or_else(|| {
            AuthFailure::Unavailable(format!("token {name:?} has an unknown role"))
        })?;
        self.note_use(name);
        Ok(Principal {
            actor: name.to_string(),
            role: Some(role),
            via: Via::Token,
        })
    }

    /// The token's row, from the cache while fresh.
    async fn record(&self, name: &str) -> Result<Option<TokenRecord>, AuthFailure> {
        if let Some(hit) = lock(&self.cache)
            .get(name)
            .filter(|c| c.read_at.elapsed() < TOKEN_CACHE_TTL)
        {
            return Ok(hit.record.clone());
        }
        let record = self
            .tokens
            .find_token(name)
            .await
            .map_err(|e| AuthFailure::Unavailable(e.to_string()))?;
        let mut cache = lock(&self.cache);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            name.to_string(),
            Cached {
                record: record.clone(),
                read_at: Instant::now(),
            },
        );
        Ok(record)
    }

    /// Writes `last_used_at` in the background, at most once a minute.
    fn note_use(&self, name: &str) {
        {
            let mut seen = lock(&self.last_used);
            if seen
                .get(name)
                .is_some_and(|at| at.elapsed() < LAST_USED_EVERY)
            {
                return;
            }
            if seen.len() >= CACHE_MAX {
                seen.clear();
            }
            seen.insert(name.to_string(), Instant::now());
        }
        let (tokens, name) = (self.tokens.clone(), name.to_string());
        tokio::spawn(async move {
            if let Err(e) = tokens.token_used(&name).await {
                tracing::debug!(token = %name, error = %e, "last use of a token not recorded");
            }
        });
    }
}

/// A poisoned lock only means another request panicked holding it; the map is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The credentials of `Authorization: Bearer <credentials>` (the scheme's
/// case does not matter, RFC 9110).
fn bearer_of(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    let rest = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty()).then_some(rest)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_credentials() {
        use super::bearer_of;
        assert_eq!(bearer_of("Bearer abc"), Some("abc"));
        assert_eq!(bearer_of("bearer  abc "), Some("abc"));
        assert_eq!(bearer_of("Basic abc"), None);
        assert_eq!(bearer_of("Bearer "), None);
        assert_eq!(bearer_of("Bearerabc"), None);
    }
}
