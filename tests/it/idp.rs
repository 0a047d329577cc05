//! A fake identity provider for the OIDC tests (CONTRACT §11): a JWKS
//! server on 127.0.0.1 in the test process, counting its requests, and the
//! tokens a real provider would issue, signed with an RSA and a P-256 key
//! made when the provider starts, as well as the forgeries the coordinator
//! must refuse.
//!
//! ```text
//! let idp = FakeIdp::start().await;
//! // OIDC_ISSUER = idp.issuer(), OIDC_AUDIENCE = idp.audience(),
//! // OIDC_JWKS_URL = idp.jwks_url()
//! let admin = idp.token(Alg::Rs256, idp.claims("alice", &["admin"]));
//! let forged = idp.token_hs256_with_public_key(idp.claims("mallory", &["admin"]));
//! let mut claims = idp.claims("bob", &["viewer"]);
//! claims["exp"] = json!(now() - 3600);
//! let expired = idp.token(Alg::Es256, claims);
//! // ... after the coordinator has seen them:
//! assert_eq!(idp.jwks_hits(), 1);
//! ```
//!
//! The unit tests of `src/auth/oidc.rs` include this file too (`#[path]`),
//! so it uses nothing of the coordinator crate, and the integration tests
//! get a fake that those unit tests already exercise.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Which of the provider's keys signs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// The RSA 2048 key.
    Rs256,
    /// The P-256 key.
    Es256,
}

/// A private key, its kid and its public JWK.
#[derive(Clone)]
struct Key {
    kid: String,
    alg: Algorithm,
    private: EncodingKey,
    /// The public key as a PEM `PUBLIC KEY` (SPKI), as a naive verifier
    /// would hold it (RSA only).
    public_pem: Option<String>,
    jwk: Value,
}

/// A fresh RSA 2048 key (`rcgen`'s ring backend cannot make one).
fn rsa_key(kid: &str) -> Key {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::EncodePublicKey;
    let private = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("RSA key");
    let der = private.to_pkcs1_der().expect("PKCS#1 DER");
    let spki = private
        .to_public_key()
        .to_public_key_der()
        .expect("SPKI DER");
    let b64 = STANDARD.encode(spki.as_bytes());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).expect("base64 is ASCII"))
        .collect();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    );
    key(
        kid,
        Algorithm::RS256,
        EncodingKey::from_rsa_der(der.as_bytes()),
        Some(pem),
    )
}

/// A fresh P-256 key.
fn ec_key(kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate().expect("P-256 key");
    key(
        kid,
        Algorithm::ES256,
        EncodingKey::from_ec_der(&pair.serialize_der()),
        None,
    )
}

fn key(kid: &str, alg: Algorithm, private: EncodingKey, public_pem: Option<String>) -> Key {
    let mut jwk = Jwk::from_encoding_key(&private, alg).expect("JWK of the key");
    jwk.common.key_id = Some(kid.to_string());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Key {
        kid: kid.to_string(),
        alg,
        private,
        public_pem,
        jwk: serde_json::to_value(jwk).expect("JWK as JSON"),
    }
}

/// The keys: the current one of each kind signs, all are served.
struct Keys {
    rsa: Key,
    ec: Key,
    /// Keys rotated out of signing, still in the JWKS (as providers do for
    /// the life of the tokens they signed).
    retired: Vec<Key>,
}

struct Shared {
    keys: Mutex<Keys>,
    hits: AtomicUsize,
    down: AtomicBool,
}

impl Shared {
    fn keys(&self) -> MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Shared {
    /// The JWKS as served.
    fn jwks(&self) -> Value {
        let keys = self.keys();
        let served: Vec<&Value> = [&keys.rsa, &keys.ec]
            .into_iter()
            .chain(&keys.retired)
            .map(|k| &k.jwk)
            .collect();
        json!({ "keys": served })
    }
}

/// `GET /jwks`: the key set, or 503 while the provider is down.
async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.hits.fetch_add(1, Ordering::SeqCst);
    if shared.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    Json(shared.jwks()).into_response()
}

/// The seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The fake provider; its server stops when it is dropped.
pub struct FakeIdp {
    issuer: String,
    jwks_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeIdp {
    /// Makes the keys (an RSA one takes a moment) and starts the JWKS
    /// server on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let keys = tokio::task::spawn_blocking(|| Keys {
            rsa: rsa_key("rsa-1"),
            ec: ec_key("ec-1"),
            retired: Vec::new(),
        })
        .await
        .expect("key generation");
        let shared = Arc::new(Shared {
            keys: Mutex::new(keys),
            hits: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake IdP");
        let addr = listener.local_addr().expect("its address");
        let app = Router::new()
            .route("/jwks", get(jwks))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake IdP serves");
        });
        Self {
            issuer: format!("http://{addr}/"),
            jwks_url: format!("http://{addr}/jwks"),
            shared,
            server,
        }
    }

    /// `OIDC_ISSUER`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `OIDC_AUDIENCE`.
    pub fn audience(&self) -> &str {
        "coordinator"
    }

    /// `OIDC_JWKS_URL`.
    pub fn jwks_url(&self) -> &str {
        &self.jwks_url
    }

    /// How many times the JWKS was asked for.
    pub fn jwks_hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// The JWKS it serves (public keys only).
    pub fn jwks(&self) -> Value {
        self.shared.jwks()
    }

    /// While `down`, the JWKS answers 503.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// The kid of the key that signs `alg` tokens now.
    pub fn kid(&self, alg: Alg) -> String {
        self.current(alg).kid
    }

    /// Valid claims for `sub` with `roles` in the `roles` claim: this
    /// provider's issuer and audience, issued now, expiring in five minutes.
    pub fn claims(&self, sub: &str, roles: &[&str]) -> Value {
        json!({
            "iss": self.issuer,
            "aud": self.audience(),
            "sub": sub,
            "roles": roles,
            "iat": now(),
            "exp": now() + 300,
        })
    }

    /// A token with `claims`, signed by the current `alg` key, naming its kid.
    pub fn token(&self, alg: Alg, claims: Value) -> String {
        sign(&self.current(alg), None, &claims)
    }

    /// A token signed by the current `alg` key but naming a kid the JWKS
    /// does not hold.
    pub fn token_unknown_kid(&self, alg: Alg, kid: &str, claims: Value) -> String {
        sign(&self.current(alg), Some(kid), &claims)
    }

    /// A token that names the current `alg` key's kid but is signed by
    /// another key of the same kind, one the JWKS does not hold.
    pub fn token_other_key(&self, alg: Alg, claims: Value) -> String {
        let kid = self.kid(alg);
        let other = match alg {
            Alg::Rs256 => rsa_key(&kid),
            Alg::Es256 => ec_key(&kid),
        };
        sign(&other, None, &claims)
    }

    /// `alg: none`, no signature, naming the RSA kid.
    pub fn token_alg_none(&self, claims: Value) -> String {
        let header = json!({"alg": "none", "typ": "JWT", "kid": self.kid(Alg::Rs256)});
        format!(
            "{}.{}.",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    }

    /// HS256 with the RSA public key (its PEM) as the HMAC secret, naming
    /// the RSA kid: the classic forgery of a verifier that lets the token
    /// choose the algorithm.
    pub fn token_hs256_with_public_key(&self, claims: Value) -> String {
        let rsa = self.current(Alg::Rs256);
        let pem = rsa.public_pem.expect("an RSA key has a PEM");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(rsa.kid);
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(pem.as_bytes()).expect("HMAC key"),
        )
        .expect("HS256 token")
    }

    /// `token` with its claims replaced by `claims` and its header and
    /// signature kept.
    pub fn tampered(token: &str, claims: Value) -> String {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "a JWT: {token}");
        format!(
            "{}.{}.{}",
            parts[0],
            b64(claims.to_string().as_bytes()),
            parts[2]
        )
    }

    /// Key rotation: a fresh `alg` key under `kid` joins the JWKS and signs
    /// from now on; the old key stays in the JWKS.
    pub fn rotate(&self, alg: Alg, kid: &str) {
        let new = match alg {
            Alg::Rs256 => rsa_key(kid),
            Alg::Es256 => ec_key(kid),
        };
        let mut keys = self.shared.keys();
        let slot = match alg {
            Alg::Rs256 => &mut keys.rsa,
            Alg::Es256 => &mut keys.ec,
        };
        let old = std::mem::replace(slot, new);
        keys.retired.push(old);
    }

    fn current(&self, alg: Alg) -> Key {
        let keys = self.shared.keys();
        match alg {
            Alg::Rs256 => keys.rsa.clone(),
            Alg::Es256 => keys.ec.clone(),
        }
    }
}

/// `claims` signed by `key`, its header naming `kid` (default: the key's).
fn sign(key: &Key, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(kid.unwrap_or(&key.kid).to_string());
    jsonwebtoken::encode(&header, claims, &key.private).expect("signed token")
}
