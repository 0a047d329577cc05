//! The secrets of named tokens: `coord_<name>_<43 characters>`, 32 random
//! bytes in base64url after the name, so a request's token is looked up by
//! its name and then checked by the SHA-256 of the whole secret.

use super::Role;
use crate::store::{AuditEntry, AuditStore, NewToken, Outcome, TokenError, TokenStore, TokenView};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Every named token starts so.
const PREFIX: &str = "coord_";
/// Length of the random part (32 bytes in base64url without padding).
const RANDOM_CHARS: usize = 43;

/// Names the contract gives other meanings: `API_TOKEN`'s and the
/// unauthenticated caller's.
pub const RESERVED_NAMES: [&str; 2] = ["bootstrap", "anonymous"];

/// Checks a new token's name: 1 to 64 of `A-Z a-z 0-9 . _ @ -`, starting
/// with a letter or digit, and none of [`RESERVED_NAMES`].
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(ok_char)
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "a token name is 1 to 64 of A-Z a-z 0-9 . _ @ -, starting with a letter or digit; got {name:?}"
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!("{name:?} is reserved"));
    }
    Ok(())
}

/// Longest expiry a token may be given.
pub const MAX_EXPIRY_DAYS: u32 = 3650;

/// Why a token was not created or revoked.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// A bad name or expiry (nothing was written).
    #[error("{0}")]
    Invalid(String),
    /// Refused by the table (a taken name, no such token, revoked already),
    /// or the database failed.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Creates a token for `by` (the actor, whose other fields the audit row
/// takes) and records the attempt; answers the row and the secret, shown
/// once. The API and the CLI both create tokens through here.
pub async fn create(
    tokens: &dyn TokenStore,
    audit: &dyn AuditStore,
    by: &AuditEntry,
    name: &str,
    role: Role,
    expires_in_days: Option<u32>,
) -> Result<(TokenView, String), ManageError> {
    check_name(name).map_err(ManageError::Invalid)?;
    if expires_in_days.is_some_and(|d| !(1..=MAX_EXPIRY_DAYS).contains(&d)) {
        return Err(ManageError::Invalid(format!(
            "expires_in_days must be from 1 to {MAX_EXPIRY_DAYS}"
        )));
    }
    let secret = new_secret(name)
        .map_err(|e| ManageError::Invalid(format!("no random bytes for the secret: {e}")))?;
    let hash = hash(&secret);
    let result = tokens
        .create_token(&NewToken {
            name,
            role,
            secret_sha256: &hash,
            created_by: &by.actor,
            expires_in_days,
        })
        .await;
    let (outcome, reason) = match &result {
        Ok(_) => (Outcome::Ok, format!("role {role}")),
        Err(e) => (Outcome::Failed, e.to_string()),
    };
    record(audit, by, "token.create", name, outcome, Some(reason)).await;
    Ok((result?, secret))
}

/// Revokes `name` for `by` and records the attempt (API and CLI).
pub async fn revoke(
    tokens: &dyn TokenStore,
    audit: &dyn AuditStore,
    by: &AuditEntry,
    name: &str,
) -> Result<TokenView, ManageError> {
    let result = tokens.revoke_token(name, &by.actor).await;
    let (outcome, reason) = match &result {
        Ok(_) => (Outcome::Ok, None),
        Err(e) => (Outcome::Failed, Some(e.to_string())),
    };
    record(audit, by, "token.revoke", name, outcome, reason).await;
    Ok(result?)
}

/// The audit row of a token action; a failure to record it is logged (the
/// action itself is decided).
async fn record(
    audit: &dyn AuditStore,
    by: &AuditEntry,
    action: &str,
    name: &str,
    outcome: Outcome,
    reason: Option<String>,
) {
    let entry = AuditEntry {
        action: action.to_string(),
        target: Some(name.to_string()),
        outcome,
        reason,
        ..by.clone()
    };
    if let Err(e) = audit.record(&entry).await {
        tracing::error!(error = %e, action = %entry.action, actor = %entry.actor,
            "an audit event could not be recorded");
    }
}

/// A new secret for `name` (from the operating system's random source).
pub fn new_secret(name: &str) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{PREFIX}{name}_{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The name inside a bearer that has the shape of a named token.
pub fn name_of(bearer: &str) -> Option<&str> {
    let rest = bearer.strip_prefix(PREFIX)?;
    let split = rest.len().checked_sub(RANDOM_CHARS + 1)?;
    if !rest.is_char_boundary(split) || rest.as_bytes()[split] != b'_' {
        return None;
    }
    let name = &rest[..split];
    (!name.is_empty()).then_some(name)
}

/// What is stored of a secret.
pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_names_its_token() {
        for name in ["alice", "ops_team", "a.b-c@d", "x_y_z"] {
            let s = new_secret(name).expect("random bytes");
            assert_eq!(name_of(&s), Some(name), "{s}");
            assert_ne!(s, new_secret(name).expect("random bytes"));
        }
        assert_eq!(name_of("coord_"), None);
        assert_eq!(name_of("something else"), None);
        assert_eq!(name_of(&format!("coord__{}", "a".repeat(43))), None);
        assert_eq!(name_of(&format!("coord_a-{}", "a".repeat(43))), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("alice").is_ok());
        assert!(check_name("svc.report-1@team").is_ok());
        for bad in [
            "",
            "-x",
            "a b",
            "bootstrap",
            "anonymous",
            &"a".repeat(65),
            "é",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
