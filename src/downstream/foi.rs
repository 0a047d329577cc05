//! FOI, the extraction service (CONTRACT §8): multipart upload, bounded
//! retries on transport failures, and the answer mapping as a pure function.

use super::{DownstreamError, Extractor, should_retry, snippet};
use crate::domain::FileStatus;
use crate::source::Content;
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use std::time::Duration;

/// The outcome of an extraction.
#[derive(Debug, Clone, PartialEq)]
pub enum FoiOutcome {
    /// FOI extracted the file; `result` goes to ITM unchanged.
    Success(Value),
    /// Extraction failed with this status and reason.
    Failure {
        /// One of the `extraction_*` statuses.
        status: FileStatus,
        /// Why, for the event detail and IQube.
        reason: String,
    },
}

fn fail(status: FileStatus, reason: impl Into<String>) -> FoiOutcome {
    FoiOutcome::Failure {
        status,
        reason: reason.into(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Maps an HTTP answer of FOI to an outcome; first matching rule wins (CONTRACT §8).
pub fn map_response(status: u16, body: &[u8]) -> FoiOutcome {
    use FileStatus::*;
    if status == 400 || status == 422 {
        return fail(
            ExtractionFileFailed,
            format!("FOI answered HTTP {status}: {}", snippet(body)),
        );
    }
    if !(200..300).contains(&status) {
        return fail(
            ExtractionServiceFailed,
            format!("FOI answered HTTP {status}: {}", snippet(body)),
        );
    }
    let json: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return fail(
                ExtractionServiceFailed,
                format!("FOI answer is not JSON: {e}"),
            );
        }
    };
    let Value::Object(obj) = json else {
        return fail(ExtractionServiceFailed, "FOI answer is not a JSON object");
    };
    let failed = match obj.get("failed") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => {
            return fail(
                ExtractionServiceFailed,
                format!(
                    "FOI `failed` is not an array: {}",
                    snippet(other.to_string().as_bytes())
                ),
            );
        }
    };
    if !failed.is_empty() {
        let reasons: Vec<String> = failed
            .iter()
            .map(|entry| match entry {
                Value::String(s) => s.clone(),
                Value::Object(o) => match o.get("reason") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => entry.to_string(),
                },
                other => other.to_string(),
            })
            .collect();
        let reason = reasons.join("; ");
        let status = if reasons
            .iter()
            .any(|r| r.to_lowercase().contains("password"))
        {
            ExtractionFilePasswordFailed
        } else {
            ExtractionFileFailed
        };
        return fail(status, reason);
    }
    match obj.get("result") {
        None => fail(ExtractionServiceFailed, "FOI answer has no `result`"),
        Some(r) if is_empty(r) => fail(ExtractionServiceFailed, "FOI `result` is empty"),
        Some(r) => FoiOutcome::Success(r.clone()),
    }
}

/// Characters escaped when a remitter name goes into the FOI URL path.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `FOI_API_URL` with `{remitter}` replaced by the percent-encoded name.
pub fn endpoint(template: &str, remitter: &str) -> String {
    template.replace(
        "{remitter}",
        &utf8_percent_encode(remitter, SEGMENT).to_string(),
    )
}

/// The pause before the first retry of a FOI call; it doubles for each next one.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(500);

/// The longest one extraction may take: every attempt timing out, plus the
/// pauses between them.
pub fn longest_extraction(timeout: Duration, retries: u32) -> Duration {
    let pauses = (0..retries)
        .map(|i| RETRY_BACKOFF * 2u32.pow(i))
        .sum::<Duration>();
    timeout * (retries + 1) + pauses
}

/// HTTP client for FOI.
pub struct FoiClient {
    http: reqwest::Client,
    template: String,
    retries: u32,
    backoff: Duration,
}

impl FoiClient {
    /// A client over `http` (see [`super::http_client`]) with `retries` on
    /// transport failures.
    pub fn new(http: reqwest::Client, template: String, retries: u32) -> Self {
        Self {
            http,
            template,
            retries,
            backoff: RETRY_BACKOFF,
        }
    }

    async fn attempt(
        &self,
        url: &str,
        file_name: &str,
        content: &Content,
    ) -> Result<FoiOutcome, DownstreamError> {
        let local = |what: &str, e: std::io::Error| DownstreamError::Local(format!("{what}: {e}"));
        let (body, len) = match content {
            Content::Memory(bytes) => (reqwest::Body::from(bytes.clone()), bytes.len() as u64),
            Content::Spooled(path) => {
                let (len, blocks) =
                    crate::spool::read_blocks(path).map_err(|e| local("open spool file", e))?;
                (reqwest::Body::wrap_stream(blocks), len)
            }
        };
        let part = reqwest::multipart::Part::stream_with_length(body, len)
            .file_name(file_name.to_string())
            .mime_str("application/octet-stream")
            .map_err(|e| DownstreamError::Local(e.to_string()))?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let resp = self
            .http
            .post(url)
            .multipart(form)
            .send()
            .await
            .map_err(DownstreamError::from_reqwest)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(DownstreamError::from_reqwest)?;
        Ok(map_response(status, &body))
    }

    /// The pauses between attempts: `backoff`, doubling, `retries` of them.
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.backoff)
            .with_factor(2.0)
            .with_max_delay(Duration::from_secs(3600))
            .with_max_times(self.retries as usize)
    }
}

#[async_trait]
impl Extractor for FoiClient {
    /// Sends the file, again after a missing answer (timeout, refused or
    /// reset; [`should_retry`]) up to `retries` times; an answer is mapped
    /// (CONTRACT §8) and never retried, nor is a local failure.
    async fn extract(&self, remitter: &str, file_name: &str, content: &Content) -> FoiOutcome {
        let url = endpoint(&self.template, remitter);
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let sent = (|| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.attempt(&url, file_name, content)
        })
        .retry(self.backoff())
        .when(should_retry)
        .notify(|e, pause| tracing::warn!(error = %e, ?pause, "FOI call failed; trying again"))
        .await;
        match sent {
            Ok(outcome) => outcome,
            Err(e @ DownstreamError::Local(_)) => fail(
                FileStatus::ExtractionServiceFailed,
                format!("the file could not be sent to FOI: {e}"),
            ),
            Err(e) => fail(
                FileStatus::ExtractionServiceFailed,
                format!(
                    "FOI unreachable after {} attempts: {e}",
                    attempts.load(std::sync::atomic::Ordering::Relaxed)
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FileStatus::*;
    use serde_json::json;

    fn status_of(o: &FoiOutcome) -> Option<FileStatus> {
        match o {
            FoiOutcome::Success(_) => None,
            FoiOutcome::Failure { status, .. } => Some(status.clone()),
        }
    }

    #[test]
    fn mapping_table() {
        let ok = json!({"result": [{"amount": 1}], "failed": []}).to_string();
        let cases: Vec<(u16, String, Option<FileStatus>)> = vec![
            (400, ok.clone(), Some(ExtractionFileFailed)),
            (422, "{}".into(), Some(ExtractionFileFailed)),
            (500, ok.clone(), Some(ExtractionServiceFailed)),
            (404, ok.clone(), Some(ExtractionServiceFailed)),
            (302, ok.clone(), Some(ExtractionServiceFailed)),
            (200, "not json".into(), Some(ExtractionServiceFailed)),
            (200, "[1,2]".into(), Some(ExtractionServiceFailed)),
            (200, "\"str\"".into(), Some(ExtractionServiceFailed)),
            (200, "null".into(), Some(ExtractionServiceFailed)),
            (
                200,
                json!({"failed": [{"reason": "Invalid PASSWORD"}]}).to_string(),
                Some(ExtractionFilePasswordFailed),
            ),
            (
                200,
                json!({"failed": ["password protected"], "result": [1]}).to_string(),
                Some(ExtractionFilePasswordFailed),
            ),
            (
                200,
                json!({"failed": [{"reason": "no matched template"}, {"reason": "password"}]})
                    .to_string(),
                Some(ExtractionFilePasswordFailed),
            ),
            (
                200,
                json!({"failed": [{"reason": "no matched template"}], "result": [1]}).to_string(),
                Some(ExtractionFileFailed),
            ),
            (
                200,
                json!({"failed": [{"reason": "data format error"}]}).to_string(),
                Some(ExtractionFileFailed),
            ),
            (
                200,
                json!({"failed": "x"}).to_string(),
                Some(ExtractionServiceFailed),
            ),
            (200, json!({}).to_string(), Some(ExtractionServiceFailed)),
            (
                200,
                json!({"result": null}).to_string(),
                Some(ExtractionServiceFailed),
            ),
            (
                200,
                json!({"result": []}).to_string(),
                Some(ExtractionServiceFailed),
            ),
            (
                200,
                json!({"result": {}}).to_string(),
                Some(ExtractionServiceFailed),
            ),
            (
                200,
                json!({"result": ""}).to_string(),
                Some(ExtractionServiceFailed),
            ),
            (
                200,
                json!({"result": [], "failed": []}).to_string(),
                Some(ExtractionServiceFailed),
            ),
            (200, ok.clone(), None),
            (
                201,
                json!({"result": {"k": 1}, "failed": null}).to_string(),
                None,
            ),
        ];
        for (code, body, want) in cases {
            assert_eq!(
                status_of(&map_response(code, body.as_bytes())),
                want,
                "{code} {body}"
            );
        }
    }

    #[test]
    fn success_passes_result_unchanged() {
        let body = json!({"result": {"rows": [1, 2], "x": "y"}}).to_string();
        assert_eq!(
            map_response(200, body.as_bytes()),
            FoiOutcome::Success(json!({"rows": [1, 2], "x": "y"}))
        );
    }

    #[test]
    fn remitter_is_percent_encoded() {
        assert_eq!(
            endpoint("http://f/extract/{remitter}", "invest@det.com"),
            "http://f/extract/invest%40det.com"
        );
        assert_eq!(
            endpoint("http://f/x/{remitter}", "a b/c?#%"),
            "http://f/x/a%20b%2Fc%3F%23%25"
        );
    }
}
