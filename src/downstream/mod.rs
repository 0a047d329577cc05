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
pub use iqube::{IqubeClient, Notification};
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
    /// `Ok` when ITM accepted; the reason it did not otherwise.
    async fn submit(
        &self,
        sub: &ItmSubmission,
        idempotency_key: &str,
    ) -> Result<(), DownstreamError>;
}

/// Delivers one notification payload.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// `Ok` once IQube accepted the payload; an error keeps it for later.
    async fn notify(&self, payload: &serde_json::Value, key: &str) -> Result<(), DownstreamError>;
}

/// Why a call to FOI, ITM or IQube did not give an answer the contract
/// accepts. Its text never carries the URL (credentials or a query string
/// in a configured URL must not reach events, IQube or logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownstreamError {
    /// No answer within the whole-request timeout.
    #[error("timeout: {0}")]
    Timeout(String),
    /// The connection could not be made (refused, unreachable, TLS refused):
    /// nothing was received by the service.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The connection broke during the exchange (reset, closed early).
    #[error("transport error: {0}")]
    Transport(String),
    /// The service answered with a status the contract does not accept.
    #[error("{service} answered HTTP {status}: {body}")]
    Status {
        /// `FOI`, `ITM` or `IQube`.
        service: &'static str,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The answer's body is not what the contract says (not JSON, not accepted).
    #[error("{0}")]
    Body(String),
    /// Something on our side failed before the request could be sent
    /// (the spool file, building the request): the service saw nothing.
    #[error("local error: {0}")]
    Local(String),
}

impl DownstreamError {
    /// A transport error in words, with its cause chain and without the URL.
    pub fn from_reqwest(e: reqwest::Error) -> Self {
        let kind = if e.is_timeout() {
            Self::Timeout
        } else if e.is_connect() {
            Self::Connect
        } else {
            Self::Transport
        };
        let e = e.without_url();
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        kind(msg)
    }
}

/// True when sending the same request again may help: the service did not
/// answer (timeout, refused, reset). An answer, or a local failure, is final.
pub fn should_retry(e: &DownstreamError) -> bool {
    matches!(
        e,
        DownstreamError::Timeout(_) | DownstreamError::Connect(_) | DownstreamError::Transport(_)
    )
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

#[cfg(test)]
mod tests {
    use super::{DownstreamError, should_retry};

    #[test]
    fn only_missing_answers_are_retried() {
        let cases = [
            (DownstreamError::Timeout("t".into()), true),
            (DownstreamError::Connect("refused".into()), true),
            (DownstreamError::Transport("reset".into()), true),
            (
                DownstreamError::Status {
                    service: "FOI",
                    status: 503,
                    body: String::new(),
                },
                false,
            ),
            (DownstreamError::Body("not JSON".into()), false),
            (DownstreamError::Local("spool file gone".into()), false),
        ];
        for (e, want) in cases {
            assert_eq!(should_retry(&e), want, "{e}");
        }
    }

    #[tokio::test]
    async fn transport_errors_never_carry_the_url() {
        // A closed port: the connect fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://user:pw-secret@127.0.0.1:{port}/x?token=q-secret");
        let e = reqwest::Client::new().get(&url).send().await.unwrap_err();
        let e = DownstreamError::from_reqwest(e);
        assert!(matches!(e, DownstreamError::Connect(_)), "{e:?}");
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains("pw-secret") && !text.contains("q-secret"),
            "{text}"
        );
    }
}
