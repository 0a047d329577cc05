//! IQube, which tells operators about failed files and runs (CONTRACT §8).
//! Payloads come from the notification outbox, so delivery may be retried.

use super::{Notifier, foi::describe, snippet};
use async_trait::async_trait;

/// HTTP client for IQube.
pub struct IqubeClient {
    http: reqwest::Client,
    url: String,
}

impl IqubeClient {
    /// A client over `http` (see [`super::http_client`]).
    pub fn new(http: reqwest::Client, url: String) -> Self {
        Self { http, url }
    }
}

#[async_trait]
impl Notifier for IqubeClient {
    async fn notify(&self, payload: &serde_json::Value, key: &str) -> Result<(), String> {
        let resp = self
            .http
            .post(&self.url)
            .header("Idempotency-Key", key)
            .json(payload)
            .send()
            .await
            .map_err(describe)?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            let body = resp.bytes().await.unwrap_or_default();
            Err(format!(
                "IQube answered HTTP {}: {}",
                status.as_u16(),
                snippet(&body)
            ))
        }
    }
}
