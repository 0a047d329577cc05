//! ITM, where extraction results go (CONTRACT §8).

use super::{DownstreamError, ItmSubmission, Submitter, snippet};
use async_trait::async_trait;

/// HTTP client for ITM.
pub struct ItmClient {
    http: reqwest::Client,
    url: String,
}

impl ItmClient {
    /// A client over `http` (see [`super::http_client`]).
    pub fn new(http: reqwest::Client, url: String) -> Self {
        Self { http, url }
    }
}

/// Success is a 2xx JSON object whose `status` is `success`, case-insensitively.
pub fn accepted(status: u16, body: &[u8]) -> Result<(), DownstreamError> {
    if !(200..300).contains(&status) {
        return Err(DownstreamError::Status {
            service: "ITM",
            status,
            body: snippet(body),
        });
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        DownstreamError::Body(format!("ITM answer is not JSON: {e}: {}", snippet(body)))
    })?;
    match v.get("status").and_then(|s| s.as_str()) {
        Some(s) if s.eq_ignore_ascii_case("success") => Ok(()),
        _ => Err(DownstreamError::Body(format!(
            "ITM did not accept: {}",
            snippet(body)
        ))),
    }
}

#[async_trait]
impl Submitter for ItmClient {
    async fn submit(
        &self,
        sub: &ItmSubmission,
        idempotency_key: &str,
    ) -> Result<(), DownstreamError> {
        let resp = self
            .http
            .post(&self.url)
            .header("Idempotency-Key", idempotency_key)
            .json(sub)
            .send()
            .await
            .map_err(DownstreamError::from_reqwest)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(DownstreamError::from_reqwest)?;
        accepted(status, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::accepted;

    #[test]
    fn acceptance_table() {
        let cases: &[(u16, &str, bool)] = &[
            (200, r#"{"status":"success"}"#, true),
            (201, r#"{"status":"SUCCESS","id":1}"#, true),
            (200, r#"{"status":"failed"}"#, false),
            (200, r#"{}"#, false),
            (200, r#"[]"#, false),
            (200, "ok", false),
            (500, r#"{"status":"success"}"#, false),
            (409, r#"{"status":"success"}"#, false),
        ];
        for (code, body, ok) in cases {
            assert_eq!(
                accepted(*code, body.as_bytes()).is_ok(),
                *ok,
                "{code} {body}"
            );
        }
    }
}
