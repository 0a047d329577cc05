//! The other teams' services: FOI extracts, ITM takes results, IQube is told
//! of failures. The engine sees them through these traits.

pub mod foi;
pub mod iqube;
pub mod itm;

use crate::source::Content;
use async_trait::async_trait;
use serde::Serialize;
use std::time::Duration;

pub use foi::{FoiClient, FoiOutcome};
pub use iqube::IqubeClient;
pub use itm::ItmClient;

/// Uploads a file for extraction.
#[async_trait]
pub trait Extractor: Send + Sync {
    /// Sends the downloaded `content` (named `file_name` for FOI) and maps the answer.
    async fn extract(&self, remitter: &str, file_name: &str, content: &Content) -> FoiOutcome;
}

/// What ITM receives for one extracted file version.
#[derive(Debug, Clone, Serialize)]
pub struct ItmSubmission {
    /// Remitter folder name.
    pub remitter: String,
    /// File name as on the share.
    pub file_name: String,
    /// Hex MD5 of the content.
    pub md5: String,
    /// FOI's `result`, unchanged.
    pub result: serde_json::Value,
}

/// Submits extraction results.
#[async_trait]
pub trait Submitter: Send + Sync {
    /// `Ok` when ITM accepted; `Err(reason)` otherwise.
    async fn submit(&self, sub: &ItmSubmission, idempotency_key: &str) -> Result<(), String>;
}

/// Delivers one notification payload.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// `Ok` once IQube accepted the payload; `Err(reason)` to keep it for later.
    async fn notify(&self, payload: &serde_json::Value, key: &str) -> Result<(), String>;
}

/// The one way the FOI, ITM and IQube clients are built: HTTPS through
/// rustls, certificates verified against the system's trust store plus
/// `extra_roots` (EXTRA_CA_CERTS_FILE), and a whole-request `timeout`.
/// A certificate that does not verify fails the call; nothing is retried
/// in plaintext.
pub fn http_client(
    timeout: Duration,
    extra_roots: &[reqwest::Certificate],
) -> reqwest::Result<reqwest::Client> {
    extra_roots
        .iter()
        .cloned()
        .fold(
            reqwest::Client::builder()
                .use_rustls_tls()
                .tls_built_in_native_certs(true)
                .timeout(timeout),
            reqwest::ClientBuilder::add_root_certificate,
        )
        .build()
}

/// Shortens a response body for an event's detail or a log line.
pub fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let mut out: String = s.chars().take(500).collect();
    if s.chars().count() > 500 {
        out.push('…');
    }
    out
}
