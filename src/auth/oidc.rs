//! Bearer tokens of the company's identity provider (CONTRACT §11): a JWT
//! signed (RS256 or ES256) by a key of the provider's JWKS, with our issuer
//! and audience, not expired, becomes a [`Principal`] of [`Via::Jwt`].
//!
//! The signature and the standard claims are checked by `jsonwebtoken`, with
//! an explicit algorithm allow-list ([`ALLOWED_ALGORITHMS`]): `alg: none`,
//! HMAC (say, a token "signed" with the public key as an HMAC secret) and
//! every other algorithm are refused before a key is looked up. A key is
//! used only for the algorithm its JWK is for (its `kty`, `crv` and `alg`).
//!
//! The JWKS is fetched on the first token, cached, and fetched again when a
//! token names a `kid` the cache does not hold, at most once per
//! [`REFRESH_INTERVAL`]: a burst of tokens with made-up kids costs the
//! provider one request a minute, and callers that arrive during a fetch wait
//! for that fetch instead of starting their own.

use super::{AuthFailure, Principal, Role, Via};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};

/// The only signature algorithms accepted.
pub const ALLOWED_ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

/// Clock skew tolerated on `exp` and `nbf`, seconds. The provider's and our
/// clocks are both NTP-synchronised, so a few seconds would do; 30 s covers a
/// drifting VM clock while adding little to a token's life (access tokens
/// live 5 to 60 minutes). The crate's default of 60 s is more than needed.
pub const LEEWAY_SECS: u64 = 30;

/// At most one JWKS fetch per this interval (CONTRACT §11: once a minute).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// A whole-request timeout for the client given to [`OidcVerifier::new`]: a
/// fetch holds up the requests whose kid is not cached (the others go on),
/// so it should be short.
pub const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// While no JWKS was ever fetched (the provider was unreachable at the first
/// token), a fetch is tried again after at most this long: every JWT is
/// refused until one succeeds, so a minute would be a long outage.
const RETRY_UNLOADED: Duration = Duration::from_secs(5);

/// The largest JWKS read; a real one is a few kilobytes.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// The longest bearer looked at; real JWTs are a few kilobytes.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Where the identity provider is and how its tokens name roles and actors
/// (`OIDC_*`, CONTRACT §3 and §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// `OIDC_ISSUER`: the `iss` every token must carry.
    pub issuer: String,
    /// `OIDC_AUDIENCE`: a value the token's `aud` must hold.
    pub audience: String,
    /// `OIDC_JWKS_URL`: the provider's key set (http or https).
    pub jwks_url: String,
    /// `OIDC_ROLES_CLAIM`: the claim holding the roles (default `roles`); an
    /// exact top-level claim name, since names such as
    /// `https://example.com/roles` hold dots.
    pub roles_claim: String,
    /// `OIDC_NAME_CLAIM`: the claim naming the actor (default `sub`).
    pub name_claim: String,
}

/// Whether `bearer` has the shape of a JWT (three base64url segments, the
/// first two non-empty): a cheap test, so that a caller can look the bearer
/// up as a named token first and hand only JWT-shaped ones to
/// [`OidcVerifier::verify`]. The signature may be empty, so that an
/// `alg: none` token is refused as an invalid JWT, not as an unknown token.
pub fn looks_like_jwt(bearer: &str) -> bool {
    let b64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut parts = bearer.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => {
            !header.is_empty()
                && !payload.is_empty()
                && b64url(header)
                && b64url(payload)
                && b64url(signature)
        }
        _ => false,
    }
}

/// A key of the JWKS and the one algorithm it verifies.
struct VerifyingKey {
    key: DecodingKey,
    alg: Algorithm,
}

/// The usable keys of the last JWKS fetched, by `kid` (a kid may name
/// several keys, say an RSA and an EC one).
type KeySet = HashMap<String, Vec<Arc<VerifyingKey>>>;

/// What the last fetch did, guarded by the mutex that makes fetches one at a
/// time.
#[derive(Default)]
struct FetchState {
    /// When the last fetch ended, successful or not.
    last: Option<Instant>,
    /// Why it failed, if it did.
    error: Option<String>,
}

/// Why the JWKS could not be had.
#[derive(Debug, thiserror::Error)]
enum JwksError {
    #[error("JWKS request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("JWKS larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("JWKS is not a key set: {0}")]
    Json(#[from] serde_json::Error),
}

/// Checks bearer JWTs against the identity provider's keys (see the module
/// documentation); one per process, shared by every request.
pub struct OidcVerifier {
    cfg: OidcConfig,
    http: reqwest::Client,
    refresh_interval: Duration,
    /// `None` until the first successful fetch.
    keys: RwLock<Option<Arc<KeySet>>>,
    fetch: Mutex<FetchState>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("cfg", &self.cfg)
            .field("refresh_interval", &self.refresh_interval)
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    /// A verifier for `cfg`, fetching the JWKS with `http` (built by
    /// `downstream::http_client`, so that `EXTRA_CA_CERTS_FILE` applies).
    /// Nothing is fetched until the first token.
    pub fn new(cfg: OidcConfig, http: reqwest::Client) -> Self {
        Self {
            cfg,
            http,
            refresh_interval: REFRESH_INTERVAL,
            keys: RwLock::new(None),
            fetch: Mutex::new(FetchState::default()),
        }
    }

    /// The same verifier with another least interval between two JWKS
    /// fetches than [`REFRESH_INTERVAL`] (tests use a short one).
    pub fn with_refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// The principal of a bearer JWT: its actor is the name claim, its role
    /// the highest role named by the roles claim (`None` if it names none).
    /// A token that does not verify is [`AuthFailure::InvalidJwt`] (the text
    /// is for the log); a JWKS that could never be fetched is
    /// [`AuthFailure::Unavailable`].
    pub async fn verify(&self, bearer: &str) -> Result<Principal, AuthFailure> {
        if bearer.len() > MAX_TOKEN_BYTES {
            return Err(invalid(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let header = jsonwebtoken::decode_header(bearer)
            .map_err(|e| invalid(format!("unreadable header: {e}")))?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("no kid in the header".into()))?;
        let key = self.key(kid, header.alg).await?;

        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[&self.cfg.issuer]);
        validation.set_audience(&[&self.cfg.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(bearer, &key.key, &validation)
            .map_err(|e| invalid(refusal(&e)))?
            .claims;

        let actor = claims
            .get(&self.cfg.name_claim)
            .and_then(Value::as_str)
            .filter(|name| !name.trim().is_empty())
            .ok_or_else(|| invalid(format!("no {} claim", self.cfg.name_claim)))?;
        Ok(Principal {
            actor: actor.to_string(),
            role: highest_role(claims.get(&self.cfg.roles_claim)),
            via: Via::Jwt,
        })
    }

    /// The key `kid` names for `alg`, from the cache or after a refresh.
    async fn key(&self, kid: &str, alg: Algorithm) -> Result<Arc<VerifyingKey>, AuthFailure> {
        let keys = match self.cached().await {
            Some(keys) if keys.contains_key(kid) => keys,
            _ => {
                self.refresh().await?;
                self.cached()
                    .await
                    .ok_or_else(|| AuthFailure::Unavailable("JWKS not fetched".into()))?
            }
        };
        let Some(candidates) = keys.get(kid) else {
            return Err(invalid(format!("unknown kid {kid:?}")));
        };
        candidates
            .iter()
            .find(|k| k.alg == alg)
            .cloned()
            .ok_or_else(|| {
                let algs: Vec<_> = candidates.iter().map(|k| format!("{:?}", k.alg)).collect();
                invalid(format!(
                    "key {kid:?} is for {}, the token says {alg:?}",
                    algs.join(", ")
                ))
            })
    }

    async fn cached(&self) -> Option<Arc<KeySet>> {
        self.keys.read().await.clone()
    }

    /// Fetches the JWKS again, unless a fetch ended while this caller waited
    /// for its turn or less than the refresh interval ago: then that fetch's
    /// outcome stands. `Ok` when a key set is cached (new or not), else
    /// [`AuthFailure::Unavailable`].
    async fn refresh(&self) -> Result<(), AuthFailure> {
        let asked = Instant::now();
        let mut state = self.fetch.lock().await;
        let loaded = self.keys.read().await.is_some();
        let least = if loaded {
            self.refresh_interval
        } else {
            self.refresh_interval.min(RETRY_UNLOADED)
        };
        let recent = state
            .last
            .is_some_and(|at| at >= asked || at.elapsed() < least);
        if !recent {
            let fetched = self.fetch_jwks().await;
            state.last = Some(Instant::now());
            match fetched {
                Ok(set) => {
                    tracing::info!(url = %self.cfg.jwks_url, kids = set.len(), "JWKS fetched");
                    *self.keys.write().await = Some(Arc::new(set));
                    state.error = None;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(url = %self.cfg.jwks_url, error = %e, "JWKS fetch failed");
                    state.error = Some(e.to_string());
                }
            }
        }
        if self.keys.read().await.is_some() {
            Ok(())
        } else {
            Err(AuthFailure::Unavailable(
                state
                    .error
                    .clone()
                    .unwrap_or_else(|| "JWKS not fetched yet".into()),
            ))
        }
    }

    /// Fetches and reads the JWKS; keys we cannot use are left out (logged).
    async fn fetch_jwks(&self) -> Result<KeySet, JwksError> {
        let mut resp = self
            .http
            .get(&self.cfg.jwks_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await?
            .error_for_status()?;
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(JwksError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Err(JwksError::TooLarge);
            }
        }
        /// A key set whose keys are read one by one, so that one odd key
        /// does not hide the others.
        #[derive(serde::Deserialize)]
        struct RawSet {
            keys: Vec<Value>,
        }
        let raw: RawSet = serde_json::from_slice(&body)?;
        let mut set = KeySet::new();
        for jwk in raw.keys {
            match usable(jwk) {
                Ok((kid, key)) => set.entry(kid).or_default().push(Arc::new(key)),
                Err(why) => tracing::debug!(url = %self.cfg.jwks_url, %why, "JWK left out"),
            }
        }
        if set.is_empty() {
            tracing::warn!(url = %self.cfg.jwks_url, "JWKS holds no RS256 or ES256 signing key");
        }
        Ok(set)
    }
}

/// A JWK's kid and the key with the one algorithm it may verify, or why it
/// is of no use: not a signing key, no kid, not RSA nor P-256, or made for
/// another algorithm.
fn usable(raw: Value) -> Result<(String, VerifyingKey), String> {
    let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("unreadable: {e}"))?;
    let kid = jwk.common.key_id.clone().ok_or("no kid")?;
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return Err(format!("{kid}: not a signing key"));
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return Err(format!("{kid}: neither RSA nor P-256")),
    };
    if let Some(stated) = jwk.common.key_algorithm
        && stated != KeyAlgorithm::from(alg)
    {
        return Err(format!("{kid}: for {stated:?}"));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("{kid}: {e}"))?;
    Ok((kid, VerifyingKey { key, alg }))
}

/// The highest role a roles claim names: a JSON array of strings, or one
/// string of space-separated names; anything else names none.
fn highest_role(claim: Option<&Value>) -> Option<Role> {
    match claim? {
        Value::String(s) => s.split_whitespace().filter_map(Role::parse).max(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(Role::parse)
            .max(),
        _ => None,
    }
}

/// The longest reason kept for the log.
const MAX_REASON_CHARS: usize = 300;

/// An [`AuthFailure::InvalidJwt`] for `why`. The reason may quote the token
/// (a kid, a bad header's text), so control characters are replaced and its
/// length is bounded: it goes to the log as it is.
fn invalid(why: String) -> AuthFailure {
    AuthFailure::InvalidJwt(
        why.chars()
            .take(MAX_REASON_CHARS)
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect(),
    )
}

/// Why `jsonwebtoken` refused a token, in words for the log.
fn refusal(e: &jsonwebtoken::errors::Error) -> String {
    match e.kind() {
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidAlgorithm => "algorithm does not match the key".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("no {claim} claim"),
        _ => e.to_string(),
    }
}

#[cfg(test)]
#[path = "../../tests/it/idp.rs"]
mod idp;

#[cfg(test)]
mod tests {
    use super::idp::{Alg, FakeIdp, now};
    use super::*;
    use serde_json::json;

    fn config(idp: &FakeIdp) -> OidcConfig {
        OidcConfig {
            issuer: idp.issuer().into(),
            audience: idp.audience().into(),
            jwks_url: idp.jwks_url().into(),
            roles_claim: "roles".into(),
            name_claim: "sub".into(),
        }
    }

    fn verifier_for(cfg: OidcConfig) -> OidcVerifier {
        let http = crate::downstream::http_client(Duration::from_secs(5), &[]).unwrap();
        OidcVerifier::new(cfg, http)
    }

    fn verifier(idp: &FakeIdp) -> OidcVerifier {
        verifier_for(config(idp))
    }

    fn jwt(actor: &str, role: Option<Role>) -> Principal {
        Principal {
            actor: actor.into(),
            role,
            via: Via::Jwt,
        }
    }

    /// Asserts an `InvalidJwt` whose reason contains `says`.
    #[track_caller]
    fn assert_invalid(got: Result<Principal, AuthFailure>, says: &str) {
        match got {
            Err(AuthFailure::InvalidJwt(why)) => {
                assert!(why.contains(says), "reason {why:?} lacks {says:?}")
            }
            other => panic!("expected InvalidJwt({says:?}), got {other:?}"),
        }
    }

    /// `claims` with `edits` merged in (a `null` removes the claim).
    fn with(mut claims: Value, edits: Value) -> Value {
        for (k, v) in edits.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    }

    #[tokio::test]
    async fn an_rs256_token_gives_its_role_and_subject_and_the_jwks_is_cached() {
        let idp = FakeIdp::start().await;
        let v = verifier(&idp);
        let token = idp.token(Alg::Rs256, idp.claims("alice", &["operator"]));
        assert!(looks_like_jwt(&token));
        assert_eq!(
            v.verify(&token).await,
            Ok(jwt("alice", Some(Role::Operator)))
        );
        assert_eq!(
            v.verify(&token).await,
            Ok(jwt("alice", Some(Role::Operator)))
        );
        assert_eq!(idp.jwks_hits(), 1, "fetched once, then cached");
    }

    #[tokio::test]
    async fn an_es256_token_is_accepted() {
        let idp = FakeIdp::start().await;
        let token = idp.token(Alg::Es256, idp.claims("bob", &["viewer"]));
        assert_eq!(
            verifier(&idp).verify(&token).await,
            Ok(jwt("bob", Some(Role::Viewer)))
        );
    }

    #[tokio::test]
    async fn the_highest_of_several_roles_counts_and_a_string_claim_is_split() {
        let idp = FakeIdp::start().await;
        let v = verifier(&idp);
        let cases = [
            (
                json!(["viewer", "admin", "operator", "auditor"]),
                Some(Role::Admin),
            ),
            (json!(["viewer", 7, "operator"]), Some(Role::Operator)),
            (json!("viewer operator"), Some(Role::Operator)),
            (json!("admin"), Some(Role::Admin)),
            (json!("  viewer  "), Some(Role::Viewer)),
        ];
        for (roles, role) in cases {
            let claims = with(idp.claims("carol", &[]), json!({ "roles": roles }));
            let token = idp.token(Alg::Es256, claims);
            assert_eq!(v.verify(&token).await, Ok(jwt("carol", role)), "{roles}");
        }
    }

    #[tokio::test]
    async fn a_token_naming_no_known_role_is_a_principal_without_a_role() {
        let idp = FakeIdp::start().await;
        let v = verifier(&idp);
        for roles in [
            json!(["Admin", "superuser"]),
            json!([]),
            json!(""),
            json!(3),
            json!({"admin": true}),
            Value::Null,
        ] {
            let claims = with(idp.claims("dave", &[]), json!({ "roles": roles }));
            let token = idp.token(Alg::Rs256, claims);
            assert_eq!(v.verify(&token).await, Ok(jwt("dave", None)), "{roles}");
        }
    }

    #[tokio::test]
    async fn the_roles_and_name_claims_can_be_others() {
        let idp = FakeIdp::start().await;
        let v = verifier_for(OidcConfig {
            roles_claim: "https://example.com/groups".into(),
            name_claim: "email".into(),
            ..config(&idp)
        });
        let claims = with(
            idp.claims("id-123", &["admin"]),
            json!({"https://example.com/groups": ["viewer"], "email": "erin@example.com"}),
        );
        assert_eq!(
            v.verify(&idp.token(Alg::Rs256, claims)).await,
            Ok(jwt("erin@example.com", Some(Role::Viewer))),
            "the configured claims, not roles and sub"
        );
        let no_email = idp.token(Alg::Rs256, idp.claims("id-123", &["admin"]));
        assert_invalid(v.verify(&no_email).await, "no email claim");
    }

    #[tokio::test]
    async fn issuer_audience_and_times_are_checked() {
        let idp = FakeIdp::start().await;
        let v = verifier(&idp);
        let base = idp.claims("frank", &["admin"]);
        let refused = [
            (json!({"iss": "https://evil.example/"}), "wrong issuer"),
            (json!({"iss": null}), "no iss claim"),
            (json!({"aud": "someone-else"}), "wrong audience"),
            (json!({"aud": ["a", "b"]}), "wrong audience"),
            (json!({"aud": null}), "no aud claim"),
            (json!({"exp": now() - 120}), "expired"),
            (json!({"exp": null}), "no exp claim"),
            (json!({"nbf": now() + 120}), "not valid yet"),
            (json!({"sub": null}), "no sub claim"),
            (json!({"sub": ""}), "no sub claim"),
        ];
        for (edit, says) in refused {
            let token = idp.token(Alg::Rs256, with(base.clone(), edit.clone()));
            assert_invalid(v.verify(&token).await, says);
        }
        // Within the leeway, and an audience among several.
        let accepted = [
            json!({"exp": now() - 10}),
            json!({"nbf": now() + 10}),
            json!({"aud": ["other", idp.audience()]}),
        ];
        for edit in accepted {
            let token = idp.token(Alg::Es256, with(base.clone(), edit.clone()));
            assert_eq!(
                v.verify(&token).await,
                Ok(jwt("frank", Some(Role::Admin))),
                "{edit}"
            );
        }
    }

    #[tokio::test]
    async fn forged_tokens_are_refused() {
        let idp = FakeIdp::start().await;
        let v = verifier(&idp);
        let claims = idp.claims("mallory", &["admin"]);

        assert!(looks_like_jwt(&idp.token_alg_none(claims.clone())));
        assert_invalid(
            v.verify(&idp.token_alg_none(claims.clone())).await,
            "header",
        );
        assert_invalid(
            v.verify(&idp.token_hs256_with_public_key(claims.clone()))
                .await,
            "HS256 is not accepted",
        );
        assert_eq!(idp.jwks_hits(), 0, "refused before any key is looked up");

        let viewer = idp.token(Alg::Rs256, idp.claims("mallory", &["viewer"]));
        assert!(v.verify(&viewer).await.is_ok());
        let tampered = FakeIdp::tampered(&viewer, claims.clone());
        assert_invalid(v.verify(&tampered).await, "bad signature");

        for alg in [Alg::Rs256, Alg::Es256] {
            let other = idp.token_other_key(alg, claims.clone());
            assert_invalid(v.verify(&other).await, "bad signature");
        }
        // An RS256 header naming the EC key.
        let crossed = idp.token_unknown_kid(Alg::Rs256, &idp.kid(Alg::Es256), claims.clone());
        assert_invalid(
            v.verify(&crossed).await,
            "is for ES256, the token says RS256",
        );
        assert_eq!(idp.jwks_hits(), 1);
    }

    #[tokio::test]
    async fn garbage_is_an_invalid_jwt() {
        let idp = FakeIdp::start().await;
        let v = verifier(&idp);
        let long = format!("eyJ{}.eyJ.sig", "A".repeat(MAX_TOKEN_BYTES));
        for bearer in [
            "",
            "garbage",
            "a.b.c",
            "eyJhbGciOiJSUzI1NiJ9.e30.",
            "x.y.z.w",
            &long,
        ] {
            assert!(
                matches!(v.verify(bearer).await, Err(AuthFailure::InvalidJwt(_))),
                "{bearer:.40}"
            );
        }
        assert_eq!(idp.jwks_hits(), 0);
    }

    #[tokio::test]
    async fn a_reason_quoting_the_token_cannot_forge_log_lines() {
        let idp = FakeIdp::start().await;
        let v = verifier(&idp);
        let kid = format!("evil\nlevel=INFO msg=forged{}", "x".repeat(1000));
        let token = idp.token_unknown_kid(Alg::Rs256, &kid, idp.claims("m", &[]));
        let Err(AuthFailure::InvalidJwt(why)) = v.verify(&token).await else {
            panic!("an unknown kid")
        };
        assert!(why.starts_with("unknown kid \"evil\\nlevel"), "{why}");
        assert!(!why.chars().any(char::is_control), "{why}");
        assert_eq!(why.chars().count(), MAX_REASON_CHARS);

        let header = format!("{{\"alg\":\"none\\n{}\"}}", "y".repeat(1000));
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let bearer = format!("{}.{}.", b64(&header), b64("{}"));
        let Err(AuthFailure::InvalidJwt(why)) = v.verify(&bearer).await else {
            panic!("an unreadable header")
        };
        assert!(!why.chars().any(char::is_control), "{why}");
        assert!(why.chars().count() <= MAX_REASON_CHARS, "{why}");
    }

    #[test]
    fn the_shape_of_a_jwt_is_told_cheaply() {
        for yes in ["eyJh.eyJz.c2ln", "a-_b.c.", "A.B.C"] {
            assert!(looks_like_jwt(yes), "{yes}");
        }
        for no in [
            "",
            "coord_alice_dGhpcyBpcyBub3QgYSBKV1Q",
            "a.b",
            "a.b.c.d",
            "a..c",
            ".b.c",
            "a b.c.d",
            "a.b.c=",
            "a+b.c.d",
        ] {
            assert!(!looks_like_jwt(no), "{no}");
        }
    }

    #[tokio::test]
    async fn an_unknown_kid_fetches_the_jwks_again_at_most_once_per_interval() {
        let idp = FakeIdp::start().await;
        let interval = Duration::from_millis(400);
        let v = verifier(&idp).with_refresh_interval(interval);
        let good = idp.token(Alg::Rs256, idp.claims("gina", &["viewer"]));
        let bogus = |n: u32| {
            idp.token_unknown_kid(
                Alg::Rs256,
                &format!("bogus-{n}"),
                idp.claims("gina", &["admin"]),
            )
        };

        assert!(v.verify(&good).await.is_ok());
        assert_eq!(idp.jwks_hits(), 1);
        assert_invalid(v.verify(&bogus(1)).await, "unknown kid \"bogus-1\"");
        assert_eq!(idp.jwks_hits(), 1, "fetched less than an interval ago");

        tokio::time::sleep(interval + Duration::from_millis(50)).await;
        assert_invalid(v.verify(&bogus(2)).await, "unknown kid");
        assert_invalid(v.verify(&bogus(3)).await, "unknown kid");
        assert_eq!(idp.jwks_hits(), 2, "one refresh for the two");
        assert!(v.verify(&good).await.is_ok());
        assert_eq!(idp.jwks_hits(), 2);
    }

    #[tokio::test]
    async fn a_burst_of_unknown_kids_costs_the_provider_one_fetch() {
        let idp = FakeIdp::start().await;
        let v = verifier(&idp);
        let tokens: Vec<String> = (0..20)
            .map(|n| idp.token_unknown_kid(Alg::Es256, &format!("bogus-{n}"), idp.claims("h", &[])))
            .collect();
        let outcomes = futures::future::join_all(tokens.iter().map(|t| v.verify(t))).await;
        for got in outcomes {
            assert_invalid(got, "unknown kid");
        }
        assert_eq!(
            idp.jwks_hits(),
            1,
            "the first fetch, shared; no refresh within the minute"
        );

        // With no least interval at all, callers that arrive during a fetch
        // still wait for it rather than start their own.
        let eager = verifier(&idp).with_refresh_interval(Duration::ZERO);
        let outcomes = futures::future::join_all(tokens.iter().map(|t| eager.verify(t))).await;
        for got in outcomes {
            assert_invalid(got, "unknown kid");
        }
        assert_eq!(idp.jwks_hits(), 2, "one more fetch for the 20");
    }

    #[tokio::test]
    async fn a_rotated_key_is_accepted_after_the_refresh() {
        let idp = FakeIdp::start().await;
        let interval = Duration::from_millis(300);
        let v = verifier(&idp).with_refresh_interval(interval);
        let old = idp.token(Alg::Rs256, idp.claims("ivan", &["operator"]));
        assert!(v.verify(&old).await.is_ok());

        tokio::time::sleep(interval + Duration::from_millis(50)).await;
        idp.rotate(Alg::Rs256, "rsa-2");
        let new = idp.token(Alg::Rs256, idp.claims("ivan", &["admin"]));
        assert_eq!(v.verify(&new).await, Ok(jwt("ivan", Some(Role::Admin))));
        assert_eq!(v.verify(&old).await, Ok(jwt("ivan", Some(Role::Operator))));
        assert_eq!(idp.jwks_hits(), 2);
    }

    #[tokio::test]
    async fn a_jwks_never_fetched_is_unavailable_until_the_provider_answers() {
        let idp = FakeIdp::start().await;
        let interval = Duration::from_millis(300);
        let v = verifier(&idp).with_refresh_interval(interval);
        let token = idp.token(Alg::Es256, idp.claims("judy", &["viewer"]));
        idp.set_down(true);
        for _ in 0..2 {
            assert!(
                matches!(v.verify(&token).await, Err(AuthFailure::Unavailable(_))),
                "JWKS answers 503"
            );
        }
        assert_eq!(idp.jwks_hits(), 1, "not asked again at once");

        idp.set_down(false);
        tokio::time::sleep(interval + Duration::from_millis(50)).await;
        assert_eq!(v.verify(&token).await, Ok(jwt("judy", Some(Role::Viewer))));
        assert_eq!(idp.jwks_hits(), 2);

        // Once keys are cached, a provider outage only stops refreshes.
        idp.set_down(true);
        tokio::time::sleep(interval + Duration::from_millis(50)).await;
        let bogus = idp.token_unknown_kid(Alg::Es256, "bogus", idp.claims("judy", &[]));
        assert_invalid(v.verify(&bogus).await, "unknown kid");
        assert_eq!(idp.jwks_hits(), 3);
        assert_eq!(v.verify(&token).await, Ok(jwt("judy", Some(Role::Viewer))));
    }

    #[tokio::test]
    async fn an_unreachable_jwks_is_unavailable() {
        let idp = FakeIdp::start().await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let v = verifier_for(OidcConfig {
            jwks_url: format!("http://127.0.0.1:{port}/jwks"),
            ..config(&idp)
        });
        let token = idp.token(Alg::Rs256, idp.claims("kim", &["viewer"]));
        match v.verify(&token).await {
            Err(AuthFailure::Unavailable(why)) => assert!(why.contains("JWKS"), "{why}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn keys_of_no_use_are_left_out_of_the_set() {
        let idp = FakeIdp::start().await;
        let keys = idp.jwks()["keys"].as_array().unwrap().clone();
        let (rsa, ec) = (keys[0].clone(), keys[1].clone());
        assert!(
            usable(rsa.clone()).is_ok_and(|(kid, k)| kid == "rsa-1" && k.alg == Algorithm::RS256)
        );
        assert!(
            usable(ec.clone()).is_ok_and(|(kid, k)| kid == "ec-1" && k.alg == Algorithm::ES256)
        );
        let refused = [
            (
                with(rsa.clone(), json!({"use": "enc"})),
                "not a signing key",
            ),
            (with(rsa.clone(), json!({"alg": "RS384"})), "for RS384"),
            (with(rsa.clone(), json!({"alg": "PS256"})), "for PS256"),
            (with(ec.clone(), json!({"alg": "RS256"})), "for RS256"),
            (with(rsa.clone(), json!({"kid": null})), "no kid"),
            (
                with(ec.clone(), json!({"crv": "P-384"})),
                "neither RSA nor P-256",
            ),
            (
                json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}),
                "neither RSA nor P-256",
            ),
        ];
        for (jwk, says) in refused {
            match usable(jwk.clone()) {
                Err(why) => assert!(why.contains(says), "{jwk}: {why}"),
                Ok(_) => panic!("{jwk} was taken"),
            }
        }
    }
}
