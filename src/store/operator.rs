//! What an operator reads and does without a SQL prompt (CONTRACT §9): run
//! and file history, paged newest first by keyset (never `OFFSET`, so a page
//! costs the same at row 1,000,000 as at row 1), and the retry and resolve
//! actions. Postgres only: these are tested against a real database.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::audit::AuditEntry;
use super::audit_chain::insert_audit_event;
use super::postgres::{Step, insert_event};
use super::{PgStore, StoreError};
use crate::domain::{FileStatus, OpsVerdict};

/// Why an operator query or action was refused.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No row with that id.
    #[error("{0}")]
    NotFound(String),
    /// The row is in a state that does not allow the action.
    #[error("{message}")]
    Conflict {
        /// Stable machine code (`not_retryable`, `not_resolvable`).
        code: &'static str,
        /// For a person.
        message: String,
    },
    /// A `before` cursor that names no row.
    #[error("{0}")]
    BadCursor(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One page of a list, newest first.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// The `before` of the next page; `None` on the last.
    pub next: Option<String>,
}

/// A run as the history shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RunView {
    /// Run id.
    pub run_id: Uuid,
    /// `running`, `completed`, `failed` or `abandoned`.
    pub status: String,
    /// `api`, `cli` or `schedule`.
    pub trigger: String,
    /// True for a dry run (nothing claimed, sent or moved).
    pub dry_run: bool,
    /// The `INSTANCE_ID` that started it.
    pub instance: String,
    /// The `INSTANCE_ID` that finished it (another one when its starter
    /// died or stopped first); null while running.
    pub finished_by: Option<String>,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End; null while running.
    pub finished_at: Option<DateTime<Utc>>,
    /// Counts (and, for one run, the per-file list); null while running.
    #[schema(value_type = Option<crate::engine::Summary>)]
    pub summary: Option<Value>,
    /// Machine code of a failed run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why a run failed or was abandoned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A file version as the history shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FileView {
    /// `files.id`.
    pub id: i64,
    /// Remitter folder.
    pub remitter: String,
    /// File name.
    pub file_name: String,
    /// Name without its timestamp (CONTRACT §6).
    pub base_name: String,
    /// MD5 of the content.
    pub md5: String,
    /// Size in bytes.
    pub size: i64,
    /// Current status.
    pub status: FileStatus,
    /// When it was moved to the archive.
    pub archived_at: Option<DateTime<Utc>>,
    /// First claim.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// One `file_events` row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EventView {
    /// A status, or `archive_succeeded`.
    pub status: String,
    /// What happened, in detail (any JSON; a retry or resolve holds the reason).
    pub detail: Value,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// One IQube notification of a file.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct NotificationView {
    /// `file_failed`.
    pub event: Option<String>,
    /// The status it reports.
    pub status: Option<String>,
    /// When IQube accepted it; null while queued.
    pub delivered_at: Option<DateTime<Utc>>,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// A file with its history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FileDetail {
    /// The file.
    #[serde(flatten)]
    pub file: FileView,
    /// Its events, oldest first.
    pub events: Vec<EventView>,
    /// Its IQube notifications, oldest first.
    pub notifications: Vec<NotificationView>,
}

/// The `status` filter of the file list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this status.
    Is(FileStatus),
    /// Any of the four failure statuses.
    Failed,
}

/// Filters of the file list.
#[derive(Debug, Clone, Default)]
pub struct FileFilter {
    /// Exact remitter folder.
    pub remitter: Option<String>,
    /// A status or every failure.
    pub status: Option<StatusFilter>,
    /// Substring of the file name, case-insensitive.
    pub q: Option<String>,
}

/// The operator's queries and actions.
#[async_trait]
pub trait OperatorStore: Send + Sync {
    /// Runs, newest first, before run `before`.
    async fn runs(&self, before: Option<Uuid>, limit: i64) -> Result<Page<RunView>, OperatorError>;
    /// One run with its per-file list.
    async fn run(&self, id: Uuid) -> Result<RunView, OperatorError>;
    /// Files, newest first, with ids below `before`.
    async fn files(
        &self,
        filter: &FileFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Page<FileView>, OperatorError>;
    /// One file with its events and notifications.
    async fn file(&self, id: i64) -> Result<FileDetail, OperatorError>;
    /// Sends a failed file back: `retry_requested`, with the reason and the
    /// actor in its event, and `audit` recorded in the same transaction.
    async fn retry(
        &self,
        id: i64,
        reason: &str,
        audit: &AuditEntry,
    ) -> Result<FileView, OperatorError>;
    /// An operator's verdict on a file that is not being processed (event
    /// and audit row as for a retry).
    async fn resolve(
        &self,
        id: i64,
        verdict: OpsVerdict,
        reason: &str,
        audit: &AuditEntry,
    ) -> Result<FileView, OperatorError>;
}

const FILE_COLUMNS: &str = "id, remitter, file_name, base_name, md5, size, status, archived_at, \
     claimed_at AS created_at, updated_at";

const RUN_COLUMNS: &str = "id AS run_id, status, trigger, dry_run, instance, finished_by, started_at, finished_at, error, message";

/// `status IN (<the failures>)`, spelled as the partial index `files_failed`
/// is, so the planner can use it.
fn failed_condition() -> String {
    let list: Vec<String> = FileStatus::FAILURES
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("status IN ({})", list.join(", "))
}

/// `%q%` for `ILIKE`, with `\`, `%` and `_` taken literally.
fn contains_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.chars() {
        if matches!(c, '\\' | '%' | '_') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Splits `limit + 1` rows into a page and its cursor.
pub(super) fn page<T>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Page<T> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    let next = if more { rows.last().map(key) } else { None };
    Page { items: rows, next }
}

impl PgStore {
    async fn file_view(
        &self,
        conn: &mut sqlx::PgConnection,
        id: i64,
    ) -> Result<FileView, OperatorError> {
        sqlx::query_as(&format!("SELECT {FILE_COLUMNS} FROM files WHERE id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await
            .step("reading a file")?
            .ok_or_else(|| OperatorError::NotFound(format!("no file with id {id}")))
    }

    /// Locks a file's row for an action and returns its status.
    async fn lock_file(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        id: i64,
    ) -> Result<FileStatus, OperatorError> {
        sqlx::query_scalar("SELECT status FROM files WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .step("locking a file")?
            .ok_or_else(|| OperatorError::NotFound(format!("no file with id {id}")))
    }

    /// Writes an operator's status and its event, and answers the file.
    async fn operator_status(
        &self,
        mut tx: sqlx::Transaction<'_, Postgres>,
        id: i64,
        status: FileStatus,
        reason: &str,
        audit: &AuditEntry,
    ) -> Result<FileView, OperatorError> {
        sqlx::query("UPDATE files SET status = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(&status)
            .execute(&mut *tx)
            .await
            .step("writing an operator's status")?;
        insert_event(
            &mut tx,
            self.audit_key(),
            id,
            status.as_str(),
            &json!({"reason": reason, "by": "operator", "actor": audit.actor}),
        )
        .await?;
        insert_audit_event(&mut *tx, self.audit_key(), audit).await?;
        let file = self.file_view(&mut tx, id).await?;
        tx.commit().await.step("committing an operator's status")?;
        Ok(file)
    }
}

#[async_trait]
impl OperatorStore for PgStore {
    async fn runs(&self, before: Option<Uuid>, limit: i64) -> Result<Page<RunView>, OperatorError> {
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!(
            "SELECT {RUN_COLUMNS}, summary - 'files' - 'folder_errors' AS summary FROM runs"
        ));
        if let Some(b) = before {
            let start: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT started_at FROM runs WHERE id = $1")
                    .bind(b)
                    .fetch_optional(self.pool())
                    .await
                    .step("reading a run cursor")?;
            let start = start
                .ok_or_else(|| OperatorError::BadCursor(format!("before: no run with id {b}")))?;
            qb.push(" WHERE (started_at, id) < (")
                .push_bind(start)
                .push(", ")
                .push_bind(b)
                .push(")");
        }
        qb.push(" ORDER BY started_at DESC, id DESC LIMIT ")
            .push_bind(limit + 1);
        let rows: Vec<RunView> = qb
            .build_query_as()
            .fetch_all(self.pool())
            .await
            .step("listing runs")?;
        Ok(page(rows, limit, |r| r.run_id.to_string()))
    }

    async fn run(&self, id: Uuid) -> Result<RunView, OperatorError> {
        sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS}, summary FROM runs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .step("reading a run")?
        .ok_or_else(|| OperatorError::NotFound(format!("no run with id {id}")))
    }

    async fn files(
        &self,
        filter: &FileFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Page<FileView>, OperatorError> {
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {FILE_COLUMNS} FROM files WHERE true"));
        if let Some(b) = before {
            qb.push(" AND id < ").push_bind(b);
        }
        if let Some(r) = &filter.remitter {
            qb.push(" AND remitter = ").push_bind(r.clone());
        }
        match &filter.status {
            Some(StatusFilter::Failed) => {
                qb.push(" AND ").push(failed_condition());
            }
            Some(StatusFilter::Is(s)) => {
                qb.push(" AND status = ").push_bind(s.clone());
            }
            None => {}
        }
        if let Some(q) = &filter.q {
            qb.push(" AND file_name ILIKE ")
                .push_bind(contains_pattern(q));
        }
        qb.push(" ORDER BY id DESC LIMIT ").push_bind(limit + 1);
        let rows: Vec<FileView> = qb
            .build_query_as()
            .fetch_all(self.pool())
            .await
            .step("listing files")?;
        Ok(page(rows, limit, |f| f.id.to_string()))
    }

    async fn file(&self, id: i64) -> Result<FileDetail, OperatorError> {
        let mut conn = self.pool().acquire().await.step("acquiring a connection")?;
        let file = self.file_view(&mut conn, id).await?;
        let events = sqlx::query_as(
            "SELECT status, detail, created_at FROM file_events WHERE file_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await
        .step("reading a file's events")?;
        let notifications = sqlx::query_as(
            "SELECT payload->>'event' AS event, payload->>'status' AS status, delivered_at, attempts, last_error \
             FROM notifications WHERE file_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await
        .step("reading a file's notifications")?;
        Ok(FileDetail {
            file,
            events,
            notifications,
        })
    }

    async fn retry(
        &self,
        id: i64,
        reason: &str,
        audit: &AuditEntry,
    ) -> Result<FileView, OperatorError> {
        let mut tx = self.pool().begin().await.step("starting a transaction")?;
        let status = Self::lock_file(&mut tx, id).await?;
        if !status.is_failure() {
            return Err(OperatorError::Conflict {
                code: "not_retryable",
                message: format!(
                    "file {id} has status {status}; only a failure status can be retried"
                ),
            });
        }
        self.operator_status(tx, id, FileStatus::RetryRequested, reason, audit)
            .await
    }

    async fn resolve(
        &self,
        id: i64,
        verdict: OpsVerdict,
        reason: &str,
        audit: &AuditEntry,
    ) -> Result<FileView, OperatorError> {
        let mut tx = self.pool().begin().await.step("starting a transaction")?;
        if Self::lock_file(&mut tx, id).await? == FileStatus::Processing {
            return Err(OperatorError::Conflict {
                code: "not_resolvable",
                message: format!(
                    "file {id} is being processed; resolve it once the run has recorded its outcome"
                ),
            });
        }
        self.operator_status(tx, id, FileStatus::Ops(verdict), reason, audit)
            .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_wildcards_are_taken_literally() {
        assert_eq!(super::contains_pattern(r"a_b%c\d"), r"%a\_b\%c\\d%");
        assert_eq!(super::contains_pattern(""), "%%");
    }

    #[test]
    fn a_page_has_a_cursor_only_when_more_rows_follow() {
        let p = super::page(vec![5, 4, 3], 2, |n| n.to_string());
        assert_eq!((p.items, p.next.as_deref()), (vec![5, 4], Some("4")));
        let p = super::page(vec![5, 4], 2, |n| n.to_string());
        assert_eq!((p.items, p.next), (vec![5, 4], None));
    }
}
