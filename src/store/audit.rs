//! The audit trail (CONTRACT §11): one `audit_events` row per operator
//! action, and per action refused to a known actor (`403`); read back newest
//! first by keyset, as every list of CONTRACT §9, or exported as a whole.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Postgres, QueryBuilder};

use super::audit_chain::insert_audit_event;
use super::operator::{OperatorError, Page, page};
use super::postgres::Step;
use super::{PgStore, StoreError};

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused to the actor (`403`).
    Refused,
    /// Allowed, and it failed (the reason says why).
    Failed,
}

impl Outcome {
    /// The outcome of a stored name.
    pub fn parse(s: &str) -> Option<Outcome> {
        [Outcome::Ok, Outcome::Refused, Outcome::Failed]
            .into_iter()
            .find(|o| o.as_str() == s)
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// One row to record.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Token name or JWT subject; `anonymous` when none.
    pub actor: String,
    /// The actor's role, if it has one.
    pub role: Option<String>,
    /// What was done or attempted: `run.start`, `run.dry_run`, `file.retry`,
    /// `file.resolve`, `token.create`, `token.revoke`, or a refused route's action.
    pub action: String,
    /// Run id, file id or token name.
    pub target: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// The operator's reason, or why it was refused or failed.
    pub reason: Option<String>,
    /// The caller's address.
    pub remote_addr: Option<String>,
    /// The request's `x-request-id`.
    pub request_id: Option<String>,
}

/// A row as `GET /audit` and `audit export` show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditView {
    /// Row id (the `before` of paging).
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// Their role then.
    pub role: Option<String>,
    /// What.
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    /// Why.
    pub reason: Option<String>,
    /// From where.
    pub remote_addr: Option<String>,
    /// Which request.
    pub request_id: Option<String>,
}

/// Filters of `GET /audit`; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact action.
    pub action: Option<String>,
    /// Exact target.
    pub target: Option<String>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
}

/// The `audit_events` table.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Records one row on its own.
    async fn record(&self, entry: &AuditEntry) -> Result<i64, StoreError>;
    /// One page, newest first: `limit` rows with an id below `before`.
    async fn audit_page(
        &self,
        filter: &AuditFilter,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Page<AuditView>, OperatorError>;
    /// Up to `limit` rows with an id above `after`, oldest first (the export
    /// walks the whole trail in such batches, in bounded memory).
    async fn audit_batch(
        &self,
        filter: &AuditFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditView>, StoreError>;
}

const AUDIT_COLUMNS: &str =
    "id, at, actor, role, action, target, outcome, reason, remote_addr, request_id";

fn filtered<'a>(q: &mut QueryBuilder<'a, Postgres>, f: &'a AuditFilter) {
    q.push(" WHERE true");
    if let Some(a) = &f.actor {
        q.push(" AND actor = ").push_bind(a);
    }
    if let Some(a) = &f.action {
        q.push(" AND action = ").push_bind(a);
    }
    if let Some(t) = &f.target {
        q.push(" AND target = ").push_bind(t);
    }
    if let Some(s) = f.since {
        q.push(" AND at >= ").push_bind(s);
    }
    if let Some(u) = f.until {
        q.push(" AND at < ").push_bind(u);
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn record(&self, entry: &AuditEntry) -> Result<i64, StoreError> {
        let mut conn = self
            .pool()
            .acquire()
            .await
            .step("acquiring a connection for the audit trail")?;
        insert_audit_event(&mut *conn, self.audit_key(), entry).await
    }

    async fn audit_page(
        &self,
        filter: &AuditFilter,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Page<AuditView>, OperatorError> {
        let mut q = QueryBuilder::new(format!("SELECT {AUDIT_COLUMNS} FROM audit_events"));
        filtered(&mut q, filter);
        if let Some(b) = before {
            q.push(" AND id < ").push_bind(b);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(limit + 1);
        let rows: Vec<AuditView> = q
            .build_query_as()
            .fetch_all(self.pool())
            .await
            .step("listing the audit trail")?;
        Ok(page(rows, limit, |r| r.id.to_string()))
    }

    async fn audit_batch(
        &self,
        filter: &AuditFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditView>, StoreError> {
        let mut q = QueryBuilder::new(format!("SELECT {AUDIT_COLUMNS} FROM audit_events"));
        filtered(&mut q, filter);
        q.push(" AND id > ").push_bind(after);
        q.push(" ORDER BY id LIMIT ").push_bind(limit);
        q.build_query_as()
            .fetch_all(self.pool())
            .await
            .step("exporting the audit trail")
    }
}
