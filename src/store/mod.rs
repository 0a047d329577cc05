//! Postgres: claims, statuses, events, runs and the notification outbox
//! (CONTRACT §7). The engine depends on [`Store`], the sum of one trait per
//! concern ([`RunStore`], [`ClaimStore`], [`OutboxStore`], [`ArchiveStore`]);
//! the operator's queries ([`OperatorStore`], CONTRACT §9) are Postgres only.

mod audit;
pub mod audit_chain;
mod instances;
mod operator;
mod postgres;
mod tokens;
mod work;

pub use audit::{AuditEntry, AuditFilter, AuditStore, AuditView, Outcome};
pub use instances::{InstanceInfo, InstanceStore, InstanceView, Joined};

pub use audit_chain::{AuditKey, ChainHead, insert_audit_event};
pub use operator::{
    EventView, FileDetail, FileFilter, FileView, NotificationView, OperatorError, OperatorStore,
    Page, RunView, StatusFilter,
};
pub use postgres::{MIGRATOR, PgStore};
pub use tokens::{NewToken, TokenError, TokenRecord, TokenStore, TokenView};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::FileStatus;

#[cfg(test)]
mod tests {
    #[test]
    fn retry_delay_doubles_from_five_seconds_up_to_an_hour() {
        let secs: Vec<u64> = (1..=12).map(|n| super::retry_delay(n).as_secs()).collect();
        assert_eq!(
            secs,
            [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(super::retry_delay(u32::MAX).as_secs(), 3600);
    }
}

/// Database errors, with the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A query failed.
    #[error("database error while {step}: {source}")]
    Query {
        /// What the store was doing.
        step: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A store without a driver error failed (fakes, future backends).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The claim is no longer this process's: another instance took it over
    /// (this one was presumed dead). Nothing was written.
    #[error("the claim of file {0} was taken over by another instance; nothing written")]
    ClaimLost(i64),
    /// The run's candidate is no longer this process's: another instance
    /// took it over (this one was presumed dead). Nothing was claimed.
    #[error(
        "the candidate was taken over by another instance (this one was presumed dead); nothing claimed"
    )]
    WorkLost,
}

impl StoreError {
    /// True when the same write may succeed if tried again shortly: the
    /// database could not be reached or dropped the connection (restart,
    /// failover, pool exhausted). A refused claim or a rejected statement is
    /// final.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Query { source, .. } => match source {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed => true,
                // Class 08 (connection exception), 57P01-57P03 (shutdown,
                // crash, not accepting connections yet), 40001/40P01
                // (serialization failure, deadlock).
                sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                    c.starts_with("08")
                        || matches!(&*c, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
                }),
                _ => false,
            },
            Self::Unavailable(_) => true,
            Self::Migrate(_) | Self::ClaimLost(_) | Self::WorkLost => false,
        }
    }
}

/// A stored version seen again by a scan.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct KnownVersion {
    /// Row id.
    pub id: i64,
    /// Remitter folder.
    pub remitter: String,
    /// File name.
    pub file_name: String,
    /// Size when last seen.
    pub size: i64,
    /// Last-write time when last seen.
    pub mtime: DateTime<Utc>,
    /// Change time when last seen (`None` for rows from before it was stored).
    pub ctime: Option<DateTime<Utc>>,
    /// Current status.
    pub status: FileStatus,
    /// True once it was moved to the archive.
    pub archived: bool,
}

/// One file version to claim, as downloaded (see [`ClaimStore::claim`]).
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The run claiming it.
    pub run_id: Uuid,
    /// Its candidate in the run's work, which `holder` must hold.
    pub seq: i32,
    /// The claiming process (its incarnation).
    pub holder: Uuid,
    /// The claim's token, made by the claimer: the same request tried again
    /// after a lost answer finds its own claim (`Claim::New` again).
    pub token: Uuid,
    /// Remitter folder.
    pub remitter: &'a str,
    /// File name.
    pub file_name: &'a str,
    /// The logical name (timestamp stripped).
    pub base_name: &'a str,
    /// Hex MD5 of the bytes read.
    pub md5: &'a str,
    /// Bytes read.
    pub size: i64,
    /// Last-write time at the second look.
    pub mtime: DateTime<Utc>,
    /// Change time at the second look.
    pub ctime: DateTime<Utc>,
    /// Days after a claim during which the same content under another name
    /// is a copy of it (`DUPLICATE_WINDOW_DAYS`).
    pub duplicate_window_days: u32,
    /// Whether to name the earlier file when this content has one
    /// (`DUPLICATE_CONTENT=hold`; one more query, on that path only).
    pub find_copies: bool,
}

/// The file that brought a content first, of which a new claim is a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earlier {
    /// Its `files.id`.
    pub id: i64,
    /// Its name.
    pub file_name: String,
}

/// Pauses between attempts at a statement after a transient database error
/// (claims, outcomes, a run's bookkeeping): 100 ms doubling up to 5 s.
pub const TRANSIENT_RETRY: backon::ExponentialBuilder = backon::ExponentialBuilder::new()
    .with_min_delay(std::time::Duration::from_millis(100))
    .with_factor(2.0)
    .with_max_delay(std::time::Duration::from_secs(5));

/// How long a claim made before instances existed (`claimed_by` NULL) may
/// stay `processing` before it is taken over: the old default lease.
pub const LEGACY_CLAIM_LEASE: std::time::Duration = std::time::Duration::from_secs(900);

/// The result of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This process owns the claim and must drive it to a final status; only
    /// the holder of `token` may renew it or write its outcome.
    New {
        /// Row id.
        id: i64,
        /// The claim token.
        token: Uuid,
        /// True when a dead holder's claim was taken over (not a first
        /// claim, nor an operator's retry).
        recovered: bool,
        /// A first claim whose content another file of the remitter brought
        /// within the window (asked for with `find_copies`): that file.
        copy_of: Option<Earlier>,
    },
    /// The version was claimed before (by any run): it is not sent again.
    Exists {
        /// Row id.
        id: i64,
        /// Its status.
        status: FileStatus,
    },
}

/// A file due for the archive.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ArchiveCandidate {
    /// Row id.
    pub id: i64,
    /// Remitter folder.
    pub remitter: String,
    /// File name.
    pub file_name: String,
    /// Size recorded when it was processed.
    pub size: i64,
    /// Last-write time recorded when it was processed.
    pub mtime: DateTime<Utc>,
    /// Change time recorded when it was processed (`None` for old rows).
    pub ctime: Option<DateTime<Utc>>,
    /// MD5 of the processed content.
    pub md5: String,
}

/// A notification waiting for delivery.
#[derive(Debug, Clone)]
pub struct PendingNotification {
    /// Outbox id.
    pub id: i64,
    /// The dedupe key, sent as `Idempotency-Key`.
    pub key: String,
    /// The JSON body.
    pub payload: Value,
}

/// An older version a run decided to archive without processing.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct SupersededFile {
    /// Row id (0 before it is recorded).
    pub id: i64,
    /// Remitter folder.
    pub remitter: String,
    /// File name.
    pub file_name: String,
    /// Size when it was superseded.
    pub size: i64,
    /// Last-write time when it was superseded.
    pub mtime: DateTime<Utc>,
    /// Change time when it was superseded (`None` for old rows).
    pub ctime: Option<DateTime<Utc>>,
    /// The version that superseded it.
    pub newer_file_name: String,
    /// The `files` row of this version, when it was claimed before (a
    /// retried older version, say): the move archives that row too.
    pub file_id: Option<i64>,
    /// That row's MD5, read back with it (never written here): a move whose
    /// answer was lost is then recognised in the archive by its content.
    #[sqlx(default)]
    pub md5: Option<String>,
}

/// The outbox key of a file's failure: `file_failed:<id>` for its first
/// claim (as before retries existed), `file_failed:<id>:<n>` for its n-th.
pub fn file_failed_key(file_id: i64, claims: i64) -> String {
    if claims <= 1 {
        format!("file_failed:{file_id}")
    } else {
        format!("file_failed:{file_id}:{claims}")
    }
}

/// How long a notification waits after its `attempts`-th attempt before the
/// next: 5 s doubling per attempt, at most an hour.
pub fn retry_delay(attempts: u32) -> std::time::Duration {
    let secs = 5u64.saturating_mul(1u64 << attempts.saturating_sub(1).min(20));
    std::time::Duration::from_secs(secs.min(3600))
}

/// The one row a dry run writes (CONTRACT §9), once it has finished.
#[derive(Debug, Clone)]
pub struct DryRunRow<'a> {
    /// Run id.
    pub run_id: Uuid,
    /// `api`, `cli` or `schedule`.
    pub trigger: &'a str,
    /// Name of the process.
    pub instance: &'a str,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// `completed` or `failed`.
    pub status: &'a str,
    /// The summary (counts and per-file list).
    pub summary: &'a Value,
    /// The error code and message of a failed dry run.
    pub error: Option<(&'a str, &'a str)>,
}

/// The outcome of starting a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStart {
    /// The run is recorded `running`, owned by the starter.
    Started,
    /// Another run is in progress.
    Busy {
        /// The running run.
        running: Uuid,
        /// False when its owner is dead or it was handed over: it waits
        /// for a live instance to adopt it.
        owner_alive: bool,
    },
}

/// The end of a real run, written by its owner.
#[derive(Debug, Clone)]
pub struct RunEnd<'a> {
    /// Run id.
    pub run_id: Uuid,
    /// The owner (incarnation) finishing it.
    pub owner: Uuid,
    /// Its `INSTANCE_ID`, stored as `finished_by`.
    pub finished_by: &'a str,
    /// `completed` or `failed`.
    pub status: &'a str,
    /// The summary.
    pub summary: &'a Value,
    /// A failed run's code and message.
    pub error: Option<(&'a str, &'a str)>,
    /// A failed run's `run_failed` notification.
    pub notification: Option<&'a Value>,
}

/// A held lock that is released when dropped.
pub type Guard = Box<dyn Send + Sync>;

/// Everything the engine needs from its database.
pub trait Store: RunStore + ClaimStore + OutboxStore + ArchiveStore + WorkStore {}

impl<T: RunStore + ClaimStore + OutboxStore + ArchiveStore + WorkStore + ?Sized> Store for T {}

/// Runs: the run lock, their rows, and pruning of old per-file lists.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// True when the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Opens up to `connections` connections ahead of need (while a run
    /// waits for its second look), so its first files do not each wait for
    /// a connection to be set up. Best effort: a failure shows later.
    async fn warm_up(&self, _connections: usize) {}
    /// Records the run as running, owned by `owner`, unless another real
    /// run is in progress (across every instance).
    async fn begin_run(
        &self,
        run_id: Uuid,
        trigger: &str,
        instance: &str,
        owner: Uuid,
    ) -> Result<RunStart, StoreError>;
    /// Records a run's end, provided `end.owner` still owns it (`false`
    /// otherwise, and nothing is written); a failed run's `run_failed`
    /// notification is queued with it.
    async fn finish_run(&self, end: &RunEnd<'_>) -> Result<bool, StoreError>;
    /// Drops the per-file list (`summary.files`) of runs that finished more
    /// than `older_than` ago; their counts stay. Returns how many were pruned.
    async fn prune_run_details(&self, older_than: std::time::Duration) -> Result<u64, StoreError>;
    /// Records a finished dry run: its `runs` row (`dry_run = true`), and
    /// nothing else. Takes no lock.
    async fn record_dry_run(&self, row: &DryRunRow<'_>) -> Result<(), StoreError>;
    /// The backlog gauges of `/metrics` (outbox, archive, files awaiting an
    /// operator), in one query.
    async fn backlog(&self) -> Result<crate::metrics::Backlog, StoreError>;
    /// Seals the audit chain up to the transactions finished now (CONTRACT
    /// §11) and answers its head; a store without a chain has none.
    async fn seal_audit_chain(&self) -> Result<audit_chain::Sealed, StoreError> {
        Ok(audit_chain::Sealed {
            head: None,
            seals_written: 0,
            rows_sealed: 0,
            suspect: None,
        })
    }
}

/// Claims: what a scan knows about versions, claims and their outcomes.
#[async_trait]
pub trait ClaimStore: Send + Sync {
    /// Every claimed version of these groups (keys from
    /// `plan::versions::group_key`), in one query.
    async fn group_versions(&self, keys: &[String]) -> Result<Vec<KnownVersion>, StoreError>;
    /// The contents claimed for these remitters within `window_days`, by
    /// their owner files (CONTRACT §12), in one query.
    async fn known_contents(
        &self,
        remitters: &[String],
        window_days: u32,
    ) -> Result<Vec<crate::plan::duplicates::KnownContent>, StoreError>;
    /// Claims a file version (see [`Claim`]) for `holder`, which must still
    /// hold candidate `seq` of the run ([`StoreError::WorkLost`] otherwise).
    /// A claim still `processing` whose holder is dead (or, made before
    /// instances, not updated for [`LEGACY_CLAIM_LEASE`]), and a
    /// `retry_requested` version sent back by an operator, are taken over (a
    /// new `processing` event, a new token) and returned as `Claim::New`; a
    /// live holder's claim never is, however long its file takes. A version claimed and
    /// archived before whose content is back in the source is due for the
    /// archive again. An existing row's size and timestamps are refreshed to
    /// these, so the next scan skips it and the archive moves this version.
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError>;
    /// Sets a file's status with its event, queueing its notification
    /// atomically (once per claim of the file), provided `token` still holds
    /// the claim ([`StoreError::ClaimLost`] otherwise, and nothing is written).
    async fn set_status(
        &self,
        file_id: i64,
        token: Uuid,
        status: FileStatus,
        detail: &Value,
        notification: Option<&Value>,
    ) -> Result<(), StoreError>;
    /// Archived rows whose content is in the source again: due for the
    /// archive again, unless their move was recorded after run `run_id`
    /// started (its listing may have seen the file before that move).
    async fn rearchive(&self, run_id: Uuid, file_ids: &[i64]) -> Result<(), StoreError>;
    /// Counts a failed read of a file version; once it has failed
    /// `notify_after` times, queues `notification` (once per version) in the
    /// same transaction. Returns the failure count.
    #[allow(clippy::too_many_arguments)]
    async fn record_read_failure(
        &self,
        remitter: &str,
        file_name: &str,
        size: i64,
        mtime: DateTime<Utc>,
        error: &str,
        notify_after: u32,
        notification: &Value,
    ) -> Result<u32, StoreError>;
    /// Remembers superseded versions (a version still waiting for its move is
    /// kept as is; one moved before and back in the source is a new row).
    async fn record_superseded(
        &self,
        run_id: Uuid,
        files: &[SupersededFile],
    ) -> Result<(), StoreError>;
}

/// The IQube outbox.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Takes up to `limit` undelivered notifications that are due (never
    /// attempted first, then oldest due), counts an attempt on each and
    /// backs each off (see [`retry_delay`]) before it is sent.
    async fn take_due_notifications(
        &self,
        limit: i64,
    ) -> Result<Vec<PendingNotification>, StoreError>;
    /// Records the outcome of an attempt (`None`: delivered).
    async fn notification_attempted(&self, id: i64, error: Option<&str>) -> Result<(), StoreError>;
}

/// The archive: what is due for a move, and the record of each move.
#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// `success`/`ops_*` files not archived yet.
    async fn archive_candidates(&self) -> Result<Vec<ArchiveCandidate>, StoreError>;
    /// Records an archive move and its `archive_succeeded` event, once.
    async fn mark_archived(&self, file_id: i64, archive_path: &str) -> Result<(), StoreError>;
    /// Superseded versions not yet resolved.
    async fn pending_superseded(&self) -> Result<Vec<SupersededFile>, StoreError>;
    /// Resolves a superseded version: moved to `archive_path`, or (`None`)
    /// gone from the source. A move of a version with a `files` row records
    /// that row's `archived_at` and its one `archive_succeeded` event with it.
    /// `file_id` is the version's `files` row, as `pending_superseded` read
    /// it (its event's MAC is bound to it).
    async fn resolve_superseded(
        &self,
        id: i64,
        file_id: Option<i64>,
        archive_path: Option<&str>,
    ) -> Result<(), StoreError>;
    /// The housekeeping lock, or `None` while another pass holds it.
    async fn try_housekeeping_lock(&self) -> Result<Option<Guard>, StoreError>;
}

/// A run as an idle instance sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRun {
    /// Run id.
    pub run_id: Uuid,
    /// False when its owner is dead or it was handed over.
    pub owner_alive: bool,
    /// True once its plan is stored.
    pub planned: bool,
    /// True when a candidate waits to be taken (pending, or held by a dead instance).
    pub takeable: bool,
}

/// A candidate taken by this instance.
#[derive(Debug, Clone)]
pub struct TakenWork {
    /// Its place in the run's work.
    pub seq: i32,
    /// The group to process.
    pub group: crate::plan::Group,
    /// True when it was taken from a dead instance.
    pub taken_over: bool,
}

/// The shared work of runs (CONTRACT §10): the plan, one row per candidate,
/// taken by any live instance with `FOR UPDATE SKIP LOCKED`.
#[async_trait]
pub trait WorkStore: Send + Sync {
    /// Stores the run's plan and its candidates, ranked, in one transaction.
    async fn add_work(
        &self,
        run_id: Uuid,
        plan: &Value,
        work: &[(i32, crate::plan::Group)],
    ) -> Result<(), StoreError>;
    /// The real run in progress, if any.
    async fn active_run(&self) -> Result<Option<ActiveRun>, StoreError>;
    /// Makes `owner` the owner of a run whose owner is dead or gone;
    /// `Some(plan)` when it did (the plan is `None` while unplanned).
    async fn adopt_run(
        &self,
        run_id: Uuid,
        owner: Uuid,
    ) -> Result<Option<Option<Value>>, StoreError>;
    /// Gives the run up for adoption (a draining owner): `false` when `owner` did not own it.
    async fn hand_over(&self, run_id: Uuid, owner: Uuid) -> Result<bool, StoreError>;
    /// Takes up to `limit` candidates for `holder`: pending ones, and those
    /// held by a dead instance; round-robin across remitters.
    async fn take_work(
        &self,
        run_id: Uuid,
        holder: Uuid,
        limit: i64,
    ) -> Result<Vec<TakenWork>, StoreError>;
    /// Records candidates' reports (by `seq`), each provided `holder` still
    /// holds it; returns the `seq`s recorded (the others were taken over).
    async fn complete_work(
        &self,
        run_id: Uuid,
        holder: Uuid,
        instance: &str,
        reports: &[(i32, crate::domain::FileReport)],
    ) -> Result<Vec<i32>, StoreError>;
    /// Gives candidate `seq` back unprocessed (a draining instance), or
    /// (`None`) every candidate `holder` still holds.
    async fn release_work(
        &self,
        run_id: Uuid,
        holder: Uuid,
        seq: Option<i32>,
    ) -> Result<(), StoreError>;
    /// Members of `place`'s class of possible copies before it, held by
    /// other instances and not done yet (CONTRACT §12: the earlier copy is
    /// claimed first).
    async fn earlier_copies_elsewhere(
        &self,
        run_id: Uuid,
        place: &crate::plan::duplicates::CopyPlace,
        holder: Uuid,
    ) -> Result<i64, StoreError>;
    /// Candidates not done yet.
    async fn open_work(&self, run_id: Uuid) -> Result<i64, StoreError>;
    /// Every candidate's group and report, in order (reports of done ones).
    async fn run_results(
        &self,
        run_id: Uuid,
    ) -> Result<Vec<(crate::plan::Group, Option<crate::domain::FileReport>)>, StoreError>;
    /// True when another live instance that is not draining exists.
    async fn others_alive(&self, me: Uuid) -> Result<bool, StoreError>;
}
