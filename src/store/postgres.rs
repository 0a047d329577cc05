//! The Postgres store. The unique key `(remitter, file_name, md5)` makes two
//! concurrent claims of one version impossible; a unique index makes one
//! real run at a time across every instance, and a session advisory lock
//! one housekeeping pass.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row};
use std::time::Duration;
use uuid::Uuid;

use super::audit_chain::{self, AuditKey, FileBinding, file_event_mac};
use super::{
    ArchiveCandidate, ArchiveStore, Claim, ClaimRequest, ClaimStore, DryRunRow, Earlier, Guard,
    KnownVersion, LEGACY_CLAIM_LEASE, OutboxStore, PendingNotification, RunEnd, RunStart, RunStore,
    StoreError, SupersededFile, file_failed_key,
};
use crate::domain::{ARCHIVE_SUCCEEDED, FileStatus};
use crate::plan::versions::group_key;
use async_trait::async_trait;

/// Embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A row when process `holder` holds candidate `$1` of run `$2`.
fn holds_work_sql(holder: &str) -> String {
    format!(
        "SELECT 1 FROM run_work w WHERE w.seq = $1 AND w.run_id = $2 \
         AND w.taken_by = {holder} AND w.state = 'taken'"
    )
}

const HOUSEKEEPING_LOCK_KEY: i64 = 0x636f_6f72_6402;
/// One audit sealer at a time, across every instance (a transaction lock).
pub(crate) const AUDIT_SEAL_LOCK_KEY: i64 = 0x636f_6f72_6403;

pub(crate) trait Step<T> {
    fn step(self, step: &'static str) -> Result<T, StoreError>;
}

impl<T> Step<T> for Result<T, sqlx::Error> {
    fn step(self, step: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query { step, source })
    }
}

/// The Postgres store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// MACs every history row it writes (CONTRACT §11).
    audit_key: AuditKey,
}

impl PgStore {
    /// Connects lazily: the pool opens connections on first use, so `serve`
    /// starts even while the database is down.
    pub fn connect_lazy(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(url)
            .step("parsing DATABASE_URL")?;
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool. Its history rows are MACed with the
    /// development key until [`Self::with_audit_key`] (tests only).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            audit_key: AuditKey::development(),
        }
    }

    /// The same store, writing its history rows with `key` (`AUDIT_KEY`).
    pub fn with_audit_key(self, key: AuditKey) -> Self {
        Self {
            audit_key: key,
            ..self
        }
    }

    /// The key its history rows are written with.
    pub fn audit_key(&self) -> &AuditKey {
        &self.audit_key
    }

    /// The file that owns `remitter`'s content `md5` (CONTRACT §12).
    async fn content_owner(
        &self,
        remitter: &str,
        md5: &str,
    ) -> Result<Option<Earlier>, StoreError> {
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT f.id, f.file_name FROM content_owner o JOIN files f ON f.id = o.file_id \
             WHERE o.remitter = $1 AND o.md5 = $2",
        )
        .bind(remitter)
        .bind(md5)
        .fetch_optional(&self.pool)
        .await
        .step("reading the file that owns a content")?;
        Ok(row.map(|(id, file_name)| Earlier { id, file_name }))
    }

    /// For a claim made again (its answer lost, or its holder dead): the
    /// file that owns its content, when that is another file and this one
    /// was never sent back by an operator (a retry is sent as new).
    async fn copy_of_claimed(
        &self,
        find_copies: bool,
        id: i64,
        remitter: &str,
        md5: &str,
    ) -> Result<Option<Earlier>, StoreError> {
        if !find_copies {
            return Ok(None);
        }
        let retried: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM file_events WHERE file_id = $1 AND status = 'retry_requested')",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .step("looking for an operator's retry")?;
        if retried {
            return Ok(None);
        }
        Ok(self
            .content_owner(remitter, md5)
            .await?
            .filter(|owner| owner.id != id))
    }

    /// The pool, for tests and tools.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        if self.migrations_applied().await {
            return Ok(());
        }
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// True when every embedded migration is applied, successfully and with
    /// its checksum: then start-up skips the migrator, whose lock would make
    /// instances starting together wait for each other. Anything else (no
    /// table yet, a missing, failed or changed migration) goes through the
    /// migrator, which applies or refuses it.
    pub async fn migrations_applied(&self) -> bool {
        let applied: Vec<(i64, Vec<u8>)> =
            match sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
            {
                Ok(rows) => rows,
                Err(_) => return false,
            };
        MIGRATOR.iter().all(|m| {
            applied
                .iter()
                .any(|(v, c)| *v == m.version && c.as_slice() == &*m.checksum)
        })
    }
}

#[async_trait]
impl RunStore for PgStore {
    /// Holds the connections until all are open, so each is a distinct one;
    /// leaves one for others (the run lock holds one too).
    async fn warm_up(&self, connections: usize) {
        let max = self.pool.options().get_max_connections() as usize;
        let n = connections.min(max.saturating_sub(2));
        let held = futures::future::join_all((0..n).map(|_| self.pool.acquire())).await;
        drop(held);
    }

    /// True when a trivial query answers.
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .step("ping")?;
        Ok(())
    }

    /// Inserts the `running` row; the unique index on running real runs
    /// refuses a second one, across every instance.
    async fn begin_run(
        &self,
        run_id: Uuid,
        trigger: &str,
        instance: &str,
        owner: Uuid,
    ) -> Result<RunStart, StoreError> {
        // A run that ends between the refused insert and the lookup leaves
        // nothing to name: try again.
        for _ in 0..5 {
            let inserted = sqlx::query(
                "INSERT INTO runs (id, status, trigger, instance, owner) VALUES ($1, 'running', $2, $3, $4) \
                 ON CONFLICT ((true)) WHERE status = 'running' AND NOT dry_run DO NOTHING",
            )
            .bind(run_id)
            .bind(trigger)
            .bind(instance)
            .bind(owner)
            .execute(&self.pool)
            .await
            .step("recording the run")?
            .rows_affected();
            if inserted == 1 {
                return Ok(RunStart::Started);
            }
            let running: Option<(Uuid, bool)> = sqlx::query_as(
                "SELECT id, owner IS NOT NULL AND coordinator_alive(owner) FROM runs \
                 WHERE status = 'running' AND NOT dry_run",
            )
            .fetch_optional(&self.pool)
            .await
            .step("finding the running run")?;
            if let Some((running, owner_alive)) = running {
                return Ok(RunStart::Busy {
                    running,
                    owner_alive,
                });
            }
        }
        Err(StoreError::Unavailable(
            "runs kept starting and ending while this one tried to start".into(),
        ))
    }

    /// Records a run's end by its owner; a failed run gets its `run_failed`
    /// notification in the same transaction.
    async fn finish_run(&self, end: &RunEnd<'_>) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.step("starting a transaction")?;
        let n = sqlx::query(
            "UPDATE runs SET status = $3, finished_at = now(), summary = $4, error = $5, message = $6, \
               finished_by = $7, plan = NULL \
             WHERE id = $1 AND owner = $2 AND status = 'running'",
        )
        .bind(end.run_id)
        .bind(end.owner)
        .bind(end.status)
        .bind(end.summary)
        .bind(end.error.map(|e| e.0))
        .bind(end.error.map(|e| e.1))
        .bind(end.finished_by)
        .execute(&mut *tx)
        .await
        .step("recording the run's outcome")?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        if let Some(payload) = end.notification {
            enqueue(
                &mut tx,
                &format!("run_failed:{}", end.run_id),
                None,
                Some(end.run_id),
                payload,
            )
            .await?;
        }
        // The candidates' rows served the run; its summary keeps the reports.
        sqlx::query("DELETE FROM run_work WHERE run_id = $1")
            .bind(end.run_id)
            .execute(&mut *tx)
            .await
            .step("clearing the run's work")?;
        tx.commit().await.step("committing the run's outcome")?;
        Ok(true)
    }

    async fn prune_run_details(&self, older_than: Duration) -> Result<u64, StoreError> {
        let pruned = sqlx::query(
            "UPDATE runs SET summary = (summary - 'files') || '{\"files_pruned\": true}'::jsonb \
             WHERE finished_at < now() - make_interval(secs => $1) AND summary ? 'files'",
        )
        .bind(older_than.as_secs_f64())
        .execute(&self.pool)
        .await
        .step("pruning old runs' per-file lists")?;
        Ok(pruned.rows_affected())
    }

    async fn record_dry_run(&self, row: &DryRunRow<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO runs (id, status, trigger, instance, started_at, finished_at, summary, error, message, dry_run) \
             VALUES ($1, $2, $3, $4, $5, now(), $6, $7, $8, true)",
        )
        .bind(row.run_id)
        .bind(row.status)
        .bind(row.trigger)
        .bind(row.instance)
        .bind(row.started_at)
        .bind(row.summary)
        .bind(row.error.map(|e| e.0))
        .bind(row.error.map(|e| e.1))
        .execute(&self.pool)
        .await
        .step("recording the dry run")?;
        Ok(())
    }

    async fn backlog(&self) -> Result<crate::metrics::Backlog, StoreError> {
        let (outbox_pending, archive_pending, awaiting_operator): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM notifications WHERE delivered_at IS NULL), \
                        (SELECT count(*) FROM files WHERE archived_at IS NULL \
                           AND (status = 'success' OR status LIKE 'ops\\_%')) \
                          + (SELECT count(*) FROM superseded_files WHERE resolved_at IS NULL), \
                        (SELECT count(*) FROM files WHERE status IN ($1, $2, $3, $4))",
        )
        .bind(FileStatus::ExtractionFilePasswordFailed.as_str())
        .bind(FileStatus::ExtractionFileFailed.as_str())
        .bind(FileStatus::ExtractionServiceFailed.as_str())
        .bind(FileStatus::ItmFailed.as_str())
        .fetch_one(&self.pool)
        .await
        .step("counting the backlog")?;
        Ok(crate::metrics::Backlog {
            outbox_pending,
            archive_pending,
            awaiting_operator,
        })
    }

    async fn seal_audit_chain(&self) -> Result<audit_chain::Sealed, StoreError> {
        audit_chain::seal(&self.pool, &self.audit_key).await
    }
}

#[async_trait]
impl ClaimStore for PgStore {
    /// Every claimed version of these groups: one query per scan.
    async fn group_versions(&self, keys: &[String]) -> Result<Vec<KnownVersion>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_as(
            "SELECT id, remitter, file_name, size, mtime, ctime, status, archived_at IS NOT NULL AS archived \
             FROM files WHERE group_key = ANY($1)")
        .bind(keys)
        .fetch_all(&self.pool)
        .await
        .step("looking up known versions")
    }

    async fn known_contents(
        &self,
        remitters: &[String],
        window_days: u32,
    ) -> Result<Vec<crate::plan::duplicates::KnownContent>, StoreError> {
        sqlx::query_as(
            "SELECT o.remitter, o.md5, f.size, f.id AS file_id, f.file_name \
             FROM content_owner o JOIN files f ON f.id = o.file_id \
             WHERE o.remitter = ANY($1) AND o.claimed_at >= now() - make_interval(days => $2)",
        )
        .bind(remitters)
        .bind(window_days as i32)
        .fetch_all(&self.pool)
        .await
        .step("reading the contents claimed within the window")
    }

    /// Claims a file version: a new row in `processing` with its first event,
    /// or the existing row (whose size and timestamps are refreshed so the
    /// next scan skips it without a download).
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let ClaimRequest {
            run_id,
            remitter,
            file_name,
            base_name,
            md5,
            size,
            mtime,
            ctime,
            seq,
            holder,
            token,
            duplicate_window_days,
            find_copies,
        } = *req;
        // The usual case in one statement (one round trip): this process
        // still holds the candidate, the version is new, and its
        // `processing` event, whose MAC binds it to the version (its id is
        // not known before the statement).
        let detail = json!({"run_id": run_id});
        let mac = file_event_mac(
            &self.audit_key,
            FileStatus::Processing.as_str(),
            &detail,
            FileBinding::Version {
                remitter,
                file_name,
                md5,
            },
        );
        let (holds_work, id, owns): (bool, Option<i64>, bool) = sqlx::query_as(&format!(
            "WITH lock AS (SELECT EXISTS ({}) AS held), \
             ins AS (INSERT INTO files (remitter, file_name, base_name, md5, size, mtime, status, run_id, claim_token, group_key, ctime, claimed_by) \
               SELECT $3, $4, $5, $6, $7, $8, 'processing', $2, $9, $10, $12, $13 FROM lock WHERE lock.held \
               ON CONFLICT ON CONSTRAINT files_version_key DO NOTHING RETURNING id), \
             ev AS (INSERT INTO file_events (file_id, status, detail, mac) SELECT id, 'processing', $11, $14 FROM ins), \
             own AS (INSERT INTO content_owner (remitter, md5, file_id, claimed_at) SELECT $3, $6, id, now() FROM ins \
               ON CONFLICT (remitter, md5) DO UPDATE SET file_id = EXCLUDED.file_id, claimed_at = EXCLUDED.claimed_at \
               WHERE content_owner.claimed_at < now() - make_interval(days => $15) RETURNING file_id) \
             SELECT (SELECT held FROM lock), (SELECT id FROM ins), EXISTS (SELECT 1 FROM own)",
            holds_work_sql("$13")
        ))
        .bind(seq)
        .bind(run_id)
        .bind(remitter)
        .bind(file_name)
        .bind(base_name)
        .bind(md5)
        .bind(size)
        .bind(mtime)
        .bind(token)
        .bind(group_key(remitter, base_name))
        .bind(&detail)
        .bind(ctime)
        .bind(holder)
        .bind(mac)
        .bind(duplicate_window_days as i32)
        .fetch_one(&self.pool)
        .await
        .step("claiming the file")?;
        if !holds_work {
            return Err(StoreError::WorkLost);
        }
        if let Some(id) = id {
            // Another file of the remitter owns this content: name it.
            let copy_of = if find_copies && !owns {
                self.content_owner(remitter, md5).await?
            } else {
                None
            };
            return Ok(Claim::New {
                id,
                token,
                recovered: false,
                copy_of,
            });
        }
        let mut tx = self.pool.begin().await.step("starting a transaction")?;
        let holds_work: bool =
            sqlx::query_scalar(&format!("SELECT EXISTS ({})", holds_work_sql("$3")))
                .bind(seq)
                .bind(run_id)
                .bind(holder)
                .fetch_one(&mut *tx)
                .await
                .step("checking the candidate is still this process's")?;
        if !holds_work {
            return Err(StoreError::WorkLost);
        }
        // The version has a row (rows are never deleted): take over a claim
        // whose process died, else report it; archived content back in the
        // source is archived again. A live holder's claim is never taken
        // over, however long its file takes; one from before instances
        // (no holder) once it is older than the old lease.
        // A `retry_requested` row is taken over too: an operator sent it back.
        let row = sqlx::query(
            "WITH old AS (SELECT id, status = 'retry_requested' AS retry, \
                 status = 'retry_requested' OR (status = 'processing' AND claimed_by IS DISTINCT FROM $6 AND \
                   CASE WHEN claimed_by IS NULL THEN updated_at < now() - make_interval(secs => $10) \
                        ELSE NOT coordinator_alive(claimed_by) END) AS expired \
               FROM files WHERE remitter = $1 AND file_name = $2 AND md5 = $3 FOR UPDATE) \
             UPDATE files f SET size = $4, mtime = $5, ctime = $9, \
               status = CASE WHEN old.expired THEN 'processing' ELSE f.status END, \
               run_id = CASE WHEN old.expired THEN $7 ELSE f.run_id END, \
               claim_token = CASE WHEN old.expired THEN $8 ELSE f.claim_token END, \
               claimed_by = CASE WHEN old.expired THEN $6 ELSE f.claimed_by END, \
               updated_at = CASE WHEN old.expired THEN now() ELSE f.updated_at END, \
               archived_at = CASE WHEN f.status = 'success' OR f.status LIKE 'ops\\_%' THEN NULL ELSE f.archived_at END \
             FROM old WHERE f.id = old.id \
             RETURNING f.id, f.status, old.expired AS taken_over, old.retry, \
               f.claimed_by = $6 AND f.claim_token = $8 AND f.status = 'processing' AS mine",
        )
        .bind(remitter)
        .bind(file_name)
        .bind(md5)
        .bind(size)
        .bind(mtime)
        .bind(holder)
        .bind(run_id)
        .bind(token)
        .bind(ctime)
        .bind(LEGACY_CLAIM_LEASE.as_secs_f64())
        .fetch_one(&mut *tx)
        .await
        .step("reading the existing claim")?;
        let id: i64 = row.try_get("id").step("reading the existing claim")?;
        let taken_over: bool = row
            .try_get("taken_over")
            .step("reading the existing claim")?;
        let retry: bool = row.try_get("retry").step("reading the existing claim")?;
        let mine: Option<bool> = row.try_get("mine").step("reading the existing claim")?;
        let claim = if mine == Some(true) && !taken_over {
            // This very claim, made before with this token, its answer lost
            // (a connection dropped): it is this process's already.
            Claim::New {
                copy_of: self.copy_of_claimed(find_copies, id, remitter, md5).await?,
                id,
                token,
                recovered: false,
            }
        } else if taken_over {
            let detail = if retry {
                json!({"run_id": run_id, "retry": "an operator asked for this file to be sent again"})
            } else {
                json!({"run_id": run_id, "recovered": "the instance holding the claim died"})
            };
            insert_event(
                &mut tx,
                &self.audit_key,
                id,
                FileStatus::Processing.as_str(),
                &detail,
            )
            .await?;
            // A dead holder's copy is held by whoever takes it over; an
            // operator's retry is sent as new.
            let copy_of = if retry {
                None
            } else {
                self.copy_of_claimed(find_copies, id, remitter, md5).await?
            };
            Claim::New {
                copy_of,
                id,
                token,
                recovered: !retry,
            }
        } else {
            Claim::Exists {
                id,
                status: row.try_get("status").step("reading the existing claim")?,
            }
        };
        tx.commit().await.step("committing the claim")?;
        Ok(claim)
    }

    async fn set_status(
        &self,
        file_id: i64,
        token: Uuid,
        status: FileStatus,
        detail: &Value,
        notification: Option<&Value>,
    ) -> Result<(), StoreError> {
        let Some(payload) = notification else {
            // No notification: one statement, one round trip.
            let recorded: Option<i64> = sqlx::query_scalar(
                "WITH up AS (UPDATE files SET status = $2, updated_at = now() \
                   WHERE id = $1 AND claim_token = $3 AND status = 'processing' RETURNING id) \
                 INSERT INTO file_events (file_id, status, detail, mac) SELECT id, $2, $4, $5 FROM up RETURNING file_id",
            )
            .bind(file_id)
            .bind(&status)
            .bind(token)
            .bind(detail)
            .bind(file_event_mac(
                &self.audit_key,
                status.as_str(),
                detail,
                FileBinding::Id(file_id),
            ))
            .fetch_optional(&self.pool)
            .await
            .step("updating the file status")?;
            return match recorded {
                Some(_) => Ok(()),
                None => Err(StoreError::ClaimLost(file_id)),
            };
        };
        let mut tx = self.pool.begin().await.step("starting a transaction")?;
        let updated = sqlx::query(
            "UPDATE files SET status = $2, updated_at = now() \
             WHERE id = $1 AND claim_token = $3 AND status = 'processing'",
        )
        .bind(file_id)
        .bind(&status)
        .bind(token)
        .execute(&mut *tx)
        .await
        .step("updating the file status")?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::ClaimLost(file_id));
        }
        insert_event(&mut tx, &self.audit_key, file_id, status.as_str(), detail).await?;
        // One notification per claim: a retried file that fails again is
        // told again. The first claim keeps the key it always had.
        let claims: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM file_events WHERE file_id = $1 AND status = 'processing'",
        )
        .bind(file_id)
        .fetch_one(&mut *tx)
        .await
        .step("counting the file's claims")?;
        enqueue(
            &mut tx,
            &file_failed_key(file_id, claims),
            Some(file_id),
            None,
            payload,
        )
        .await?;
        tx.commit().await.step("committing the file status")?;
        Ok(())
    }

    async fn rearchive(&self, run_id: Uuid, file_ids: &[i64]) -> Result<(), StoreError> {
        if file_ids.is_empty() {
            return Ok(());
        }
        // A move recorded after the run started may have happened after its
        // listing saw the file: then the file is not back, only seen before
        // it went (a later run queues it if it really is back). Both times
        // are the database's.
        sqlx::query(
            "UPDATE files SET archived_at = NULL WHERE id = ANY($1) AND archived_at IS NOT NULL \
             AND (status = 'success' OR status LIKE 'ops\\_%') \
             AND archived_at < (SELECT started_at FROM runs WHERE id = $2)",
        )
        .bind(file_ids)
        .bind(run_id)
        .execute(&self.pool)
        .await
        .step("queueing archived files for the archive again")?;
        Ok(())
    }

    async fn record_read_failure(
        &self,
        remitter: &str,
        file_name: &str,
        size: i64,
        mtime: DateTime<Utc>,
        error: &str,
        notify_after: u32,
        notification: &Value,
    ) -> Result<u32, StoreError> {
        let mut tx = self.pool.begin().await.step("starting a transaction")?;
        let failures: i32 = sqlx::query_scalar(
            "INSERT INTO read_failures (remitter, file_name, size, mtime, failures, last_error) \
             VALUES ($1, $2, $3, $4, 1, $5) \
             ON CONFLICT (remitter, file_name, size, mtime) DO UPDATE \
               SET failures = read_failures.failures + 1, last_failed_at = now(), last_error = EXCLUDED.last_error \
             RETURNING failures",
        )
        .bind(remitter)
        .bind(file_name)
        .bind(size)
        .bind(mtime)
        .bind(error)
        .fetch_one(&mut *tx)
        .await
        .step("counting a read failure")?;
        if failures as i64 >= notify_after as i64 {
            let first = sqlx::query(
                "UPDATE read_failures SET notified_at = now() \
                 WHERE remitter = $1 AND file_name = $2 AND size = $3 AND mtime = $4 AND notified_at IS NULL",
            )
            .bind(remitter)
            .bind(file_name)
            .bind(size)
            .bind(mtime)
            .execute(&mut *tx)
            .await
            .step("marking a read failure notified")?;
            if first.rows_affected() == 1 {
                let key = format!(
                    "read_failed:{remitter}/{file_name}/{size}/{}",
                    mtime.timestamp()
                );
                enqueue(&mut tx, &key, None, None, notification).await?;
            }
        }
        tx.commit().await.step("committing a read failure")?;
        Ok(failures.max(0) as u32)
    }

    async fn record_superseded(
        &self,
        run_id: Uuid,
        files: &[SupersededFile],
    ) -> Result<(), StoreError> {
        if files.is_empty() {
            return Ok(());
        }
        let remitters: Vec<&str> = files.iter().map(|f| f.remitter.as_str()).collect();
        let names: Vec<&str> = files.iter().map(|f| f.file_name.as_str()).collect();
        let sizes: Vec<i64> = files.iter().map(|f| f.size).collect();
        let mtimes: Vec<DateTime<Utc>> = files.iter().map(|f| f.mtime).collect();
        let newer: Vec<&str> = files.iter().map(|f| f.newer_file_name.as_str()).collect();
        let ctimes: Vec<Option<DateTime<Utc>>> = files.iter().map(|f| f.ctime).collect();
        let file_ids: Vec<Option<i64>> = files.iter().map(|f| f.file_id).collect();
        // Unique among the versions still waiting for their move only: one
        // archived before and copied back is a new row (archived again).
        sqlx::query(
            "INSERT INTO superseded_files (remitter, file_name, size, mtime, newer_file_name, run_id, ctime, file_id) \
             SELECT r, f, s, m, n, $6, c, i FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], \
                 $5::text[], $7::timestamptz[], $8::bigint[]) AS u(r, f, s, m, n, c, i) \
             ON CONFLICT (remitter, file_name, size, mtime) WHERE resolved_at IS NULL DO NOTHING",
        )
        .bind(&remitters)
        .bind(&names)
        .bind(&sizes)
        .bind(&mtimes)
        .bind(&newer)
        .bind(run_id)
        .bind(&ctimes)
        .bind(&file_ids)
        .execute(&self.pool)
        .await
        .step("recording superseded versions")?;
        Ok(())
    }
}

#[async_trait]
impl OutboxStore for PgStore {
    /// Takes due rows (never attempted first, then oldest due) and, in the
    /// same statement, counts the attempt and sets the next one after the
    /// backoff: `5 s · 2^(attempts-1)`, at most an hour (`retry_delay`).
    async fn take_due_notifications(
        &self,
        limit: i64,
    ) -> Result<Vec<PendingNotification>, StoreError> {
        let rows = sqlx::query(
            "UPDATE notifications n SET attempts = n.attempts + 1, \
               next_attempt_at = now() + make_interval(secs => least(3600, 5 * power(2, least(n.attempts, 20)))) \
             FROM (SELECT id FROM notifications \
                   WHERE delivered_at IS NULL AND next_attempt_at <= now() \
                   ORDER BY attempts > 0, next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) due \
             WHERE n.id = due.id \
             RETURNING n.id, n.dedupe_key, n.payload",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .step("taking due notifications")?;
        let mut out = rows
            .into_iter()
            .map(|r| {
                Ok(PendingNotification {
                    id: r.try_get("id")?,
                    key: r.try_get("dedupe_key")?,
                    payload: r.try_get("payload")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .step("reading due notifications")?;
        out.sort_by_key(|n| n.id);
        Ok(out)
    }

    /// Records the outcome of an attempt (the attempt itself was counted when taken).
    async fn notification_attempted(&self, id: i64, error: Option<&str>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notifications SET last_error = $2, \
             delivered_at = CASE WHEN $2::text IS NULL THEN now() ELSE NULL END WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .execute(&self.pool)
        .await
        .step("recording a notification attempt")?;
        Ok(())
    }
}

#[async_trait]
impl ArchiveStore for PgStore {
    /// Files whose status makes them due for the archive and that are not archived yet.
    async fn archive_candidates(&self) -> Result<Vec<ArchiveCandidate>, StoreError> {
        sqlx::query_as(
            "SELECT id, remitter, file_name, size, mtime, ctime, md5 FROM files \
             WHERE archived_at IS NULL AND (status = 'success' OR status LIKE 'ops\\_%') ORDER BY id")
        .fetch_all(&self.pool)
        .await
        .step("listing files to archive")
    }

    /// Records an archive move: `archived_at` and one `archive_succeeded` event.
    async fn mark_archived(&self, file_id: i64, archive_path: &str) -> Result<(), StoreError> {
        // One statement: the move and its one `archive_succeeded` event.
        let detail = json!({"archive_path": archive_path});
        sqlx::query(
            "WITH up AS (UPDATE files SET archived_at = now(), archive_path = $2 \
               WHERE id = $1 AND archived_at IS NULL RETURNING id) \
             INSERT INTO file_events (file_id, status, detail, mac) SELECT id, $3, $4, $5 FROM up",
        )
        .bind(file_id)
        .bind(archive_path)
        .bind(ARCHIVE_SUCCEEDED)
        .bind(&detail)
        .bind(file_event_mac(
            &self.audit_key,
            ARCHIVE_SUCCEEDED,
            &detail,
            FileBinding::Id(file_id),
        ))
        .execute(&self.pool)
        .await
        .step("recording the archive move")?;
        Ok(())
    }

    async fn pending_superseded(&self) -> Result<Vec<SupersededFile>, StoreError> {
        sqlx::query_as(
            "SELECT s.id, s.remitter, s.file_name, s.size, s.mtime, s.ctime, s.newer_file_name, s.file_id, f.md5 \
             FROM superseded_files s LEFT JOIN files f ON f.id = s.file_id \
             WHERE s.resolved_at IS NULL ORDER BY s.id",
        )
        .fetch_all(&self.pool)
        .await
        .step("listing superseded versions")
    }

    async fn resolve_superseded(
        &self,
        id: i64,
        file_id: Option<i64>,
        archive_path: Option<&str>,
    ) -> Result<(), StoreError> {
        let detail = json!({"archive_path": archive_path, "superseded": true});
        // The event is written only for a version with a `files` row,
        // which the caller read with the superseded row (never changed).
        let mac = file_id.map(|f| {
            file_event_mac(
                &self.audit_key,
                ARCHIVE_SUCCEEDED,
                &detail,
                FileBinding::Id(f),
            )
        });
        // One statement: the superseded row, and a claimed version's row
        // with its one `archive_succeeded` event when it was moved (once per
        // move: the superseded row resolves once; a version archived before
        // and copied back gets a second event, as any move does).
        sqlx::query(
            "WITH s AS (UPDATE superseded_files SET resolved_at = now(), archive_path = $2 \
               WHERE id = $1 AND resolved_at IS NULL RETURNING file_id), \
             up AS (UPDATE files f SET archived_at = now(), archive_path = $2 FROM s \
               WHERE $2::text IS NOT NULL AND f.id = s.file_id RETURNING f.id) \
             INSERT INTO file_events (file_id, status, detail, mac) SELECT id, $3, $4, $5 FROM up",
        )
        .bind(id)
        .bind(archive_path)
        .bind(ARCHIVE_SUCCEEDED)
        .bind(&detail)
        .bind(mac)
        .execute(&self.pool)
        .await
        .step("resolving a superseded version")?;
        Ok(())
    }

    async fn try_housekeeping_lock(&self) -> Result<Option<Guard>, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .step("acquiring a connection for housekeeping")?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(HOUSEKEEPING_LOCK_KEY)
            .fetch_one(&mut *conn)
            .await
            .step("taking the housekeeping lock")?;
        Ok(got.then(|| Box::new(HousekeepingLease { conn: Some(conn) }) as Guard))
    }
}

/// Holds the housekeeping lock; dropping it closes the connection, which frees the lock.
pub struct HousekeepingLease {
    conn: Option<PoolConnection<Postgres>>,
}

impl Drop for HousekeepingLease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

/// Writes one `file_events` row of a known file, with its MAC.
pub(crate) async fn insert_event(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    key: &AuditKey,
    file_id: i64,
    status: &str,
    detail: &Value,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO file_events (file_id, status, detail, mac) VALUES ($1, $2, $3, $4)")
        .bind(file_id)
        .bind(status)
        .bind(detail)
        .bind(file_event_mac(
            key,
            status,
            detail,
            FileBinding::Id(file_id),
        ))
        .execute(&mut **tx)
        .await
        .step("recording a file event")?;
    Ok(())
}

pub(crate) async fn enqueue(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    key: &str,
    file_id: Option<i64>,
    run_id: Option<Uuid>,
    payload: &Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO notifications (dedupe_key, file_id, run_id, payload) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(key)
    .bind(file_id)
    .bind(run_id)
    .bind(payload)
    .execute(&mut **tx)
    .await
    .step("queueing a notification")?;
    Ok(())
}
