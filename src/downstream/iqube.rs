//! IQube, which tells operators about failed files and runs (CONTRACT §8).
//! Payloads come from the notification outbox, so delivery may be retried.

use super::{DownstreamError, Notifier, snippet};
use crate::domain::FileStatus;
use async_trait::async_trait;
use serde_json::json;
use uuid::Uuid;

/// What IQube is told: every payload the coordinator sends is built here.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification<'a> {
    /// A claimed file version ended in a failure status.
    FileFailed {
        /// The run that processed it.
        run_id: Uuid,
        /// Remitter folder.
        remitter: &'a str,
        /// File name.
        file_name: &'a str,
        /// Its failure status.
        status: &'a FileStatus,
        /// Why, in words.
        reason: &'a str,
    },
    /// A file version could not be read `failures` times (nothing was
    /// claimed or sent); status `read_failed`.
    ReadFailed {
        /// The run of the last failure.
        run_id: Uuid,
        /// Remitter folder.
        remitter: &'a str,
        /// File name.
        file_name: &'a str,
        /// Failed reads so far.
        failures: u32,
        /// The last error.
        reason: &'a str,
    },
    /// A run could not be performed (`remitter` and `file_name` null).
    RunFailed {
        /// The failed run.
        run_id: Uuid,
        /// Why.
        reason: &'a str,
    },
}

impl Notification<'_> {
    /// The JSON body IQube receives:
    /// `{"event", "remitter", "file_name", "status", "reason", "run_id"}`.
    pub fn payload(&self) -> serde_json::Value {
        match self {
            Self::FileFailed {
                run_id,
                remitter,
                file_name,
                status,
                reason,
            } => json!({
                "event": "file_failed",
                "remitter": remitter,
                "file_name": file_name,
                "status": status.as_str(),
                "reason": reason,
                "run_id": run_id,
            }),
            Self::ReadFailed {
                run_id,
                remitter,
                file_name,
                failures,
                reason,
            } => json!({
                "event": "file_failed",
                "remitter": remitter,
                "file_name": file_name,
                "status": "read_failed",
                "reason": format!("could not be read {failures} times; last: {reason}"),
                "run_id": run_id,
            }),
            Self::RunFailed { run_id, reason } => json!({
                "event": "run_failed",
                "remitter": null,
                "file_name": null,
                "status": "failed",
                "reason": reason,
                "run_id": run_id,
            }),
        }
    }
}

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
    async fn notify(&self, payload: &serde_json::Value, key: &str) -> Result<(), DownstreamError> {
        let resp = self
            .http
            .post(&self.url)
            .header("Idempotency-Key", key)
            .json(payload)
            .send()
            .await
            .map_err(DownstreamError::from_reqwest)?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            let body = resp.bytes().await.unwrap_or_default();
            Err(DownstreamError::Status {
                service: "IQube",
                status: status.as_u16(),
                body: snippet(&body),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Notification;
    use crate::domain::FileStatus;
    use serde_json::json;
    use uuid::Uuid;

    #[test]
    fn every_payload_has_the_contract_fields() {
        let run_id = Uuid::nil();
        let cases = [
            (
                Notification::FileFailed {
                    run_id,
                    remitter: "acme",
                    file_name: "a.csv",
                    status: &FileStatus::ItmFailed,
                    reason: "no",
                },
                json!({"event": "file_failed", "remitter": "acme", "file_name": "a.csv",
                       "status": "itm_failed", "reason": "no", "run_id": run_id}),
            ),
            (
                Notification::ReadFailed {
                    run_id,
                    remitter: "acme",
                    file_name: "a.csv",
                    failures: 3,
                    reason: "denied",
                },
                json!({"event": "file_failed", "remitter": "acme", "file_name": "a.csv",
                       "status": "read_failed", "reason": "could not be read 3 times; last: denied",
                       "run_id": run_id}),
            ),
            (
                Notification::RunFailed {
                    run_id,
                    reason: "share down",
                },
                json!({"event": "run_failed", "remitter": null, "file_name": null,
                       "status": "failed", "reason": "share down", "run_id": run_id}),
            ),
        ];
        for (n, want) in cases {
            assert_eq!(n.payload(), want);
        }
    }
}
