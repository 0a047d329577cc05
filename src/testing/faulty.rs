//! A store that can be taken down: a database outage for the engine tests.

use crate::domain::{FileReport, FileStatus};
use crate::metrics::Backlog;
use crate::plan::Group;
use crate::plan::duplicates::CopyPlace;
use crate::store::{
    ActiveRun, ArchiveCandidate, ArchiveStore, Claim, ClaimRequest, ClaimStore, DryRunRow, Guard,
    KnownVersion, OutboxStore, PendingNotification, PgStore, RunEnd, RunStart, RunStore,
    StoreError, SupersededFile, TakenWork, WorkStore,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// A test's [`PgStore`], or, while it is down, a database that answers
/// nothing: every call fails with a transient [`StoreError::Unavailable`].
pub struct FaultyStore {
    inner: PgStore,
    down: AtomicBool,
}

impl FaultyStore {
    /// Up, over `inner`.
    pub fn new(inner: PgStore) -> Self {
        Self {
            inner,
            down: AtomicBool::new(false),
        }
    }

    /// Takes the database down (every call fails) or brings it back.
    pub fn set_unavailable(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("injected database outage".into()))
        } else {
            Ok(())
        }
    }
}

/// Implements a store trait for [`FaultyStore`]: each method listed fails
/// while the store is down and is the inner store's otherwise. Methods that
/// return no `Result` follow in a block of their own, written out.
macro_rules! forward {
    (
        $trait:ident { $(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)* }
        $({ $($extra:tt)* })?
    ) => {
        #[async_trait]
        impl $trait for FaultyStore {
            $(async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                self.up()?;
                self.inner.$name($($arg),*).await
            })*
            $($($extra)*)?
        }
    };
}

forward!(
    RunStore {
        fn ping(&self) -> ();
        fn begin_run(&self, run_id: Uuid, trigger: &str, instance: &str, owner: Uuid) -> RunStart;
        fn finish_run(&self, end: &RunEnd<'_>) -> bool;
        fn prune_run_details(&self, older_than: Duration) -> u64;
        fn record_dry_run(&self, row: &DryRunRow<'_>) -> ();
        fn backlog(&self) -> Backlog;
        fn seal_audit_chain(&self) -> crate::store::audit_chain::Sealed;
    }
    {
        async fn warm_up(&self, connections: usize) {
            if self.up().is_ok() {
                self.inner.warm_up(connections).await
            }
        }
    }
);

forward!(ClaimStore {
    fn group_versions(&self, keys: &[String]) -> Vec<KnownVersion>;
    fn known_contents(&self, remitters: &[String], window_days: u32) -> Vec<crate::plan::duplicates::KnownContent>;
    fn claim(&self, req: &ClaimRequest<'_>) -> Claim;
    fn set_status(
        &self,
        file_id: i64,
        token: Uuid,
        status: FileStatus,
        detail: &Value,
        notification: Option<&Value>
    ) -> ();
    fn rearchive(&self, run_id: Uuid, file_ids: &[i64]) -> ();
    fn record_read_failure(
        &self,
        remitter: &str,
        file_name: &str,
        size: i64,
        mtime: DateTime<Utc>,
        error: &str,
        notify_after: u32,
        notification: &Value
    ) -> u32;
    fn record_superseded(&self, run_id: Uuid, files: &[SupersededFile]) -> ();
});

forward!(OutboxStore {
    fn take_due_notifications(&self, limit: i64) -> Vec<PendingNotification>;
    fn notification_attempted(&self, id: i64, error: Option<&str>) -> ();
});

forward!(ArchiveStore {
    fn archive_candidates(&self) -> Vec<ArchiveCandidate>;
    fn mark_archived(&self, file_id: i64, archive_path: &str) -> ();
    fn pending_superseded(&self) -> Vec<SupersededFile>;
    fn resolve_superseded(&self, id: i64, file_id: Option<i64>, archive_path: Option<&str>) -> ();
    fn try_housekeeping_lock(&self) -> Option<Guard>;
});

forward!(WorkStore {
    fn add_work(&self, run_id: Uuid, plan: &Value, work: &[(i32, Group)]) -> ();
    fn active_run(&self) -> Option<ActiveRun>;
    fn adopt_run(&self, run_id: Uuid, owner: Uuid) -> Option<Option<Value>>;
    fn hand_over(&self, run_id: Uuid, owner: Uuid) -> bool;
    fn take_work(&self, run_id: Uuid, holder: Uuid, limit: i64) -> Vec<TakenWork>;
    fn complete_work(
        &self,
        run_id: Uuid,
        holder: Uuid,
        instance: &str,
        reports: &[(i32, FileReport)]
    ) -> Vec<i32>;
    fn release_work(&self, run_id: Uuid, holder: Uuid, seq: Option<i32>) -> ();
    fn earlier_copies_elsewhere(&self, run_id: Uuid, place: &CopyPlace, holder: Uuid) -> i64;
    fn open_work(&self, run_id: Uuid) -> i64;
    fn run_results(&self, run_id: Uuid) -> Vec<(Group, Option<FileReport>)>;
    fn others_alive(&self, me: Uuid) -> bool;
});
