//! Process one stable file version: download (hashed; into memory up to
//! 1 MiB, else streamed to a spool file), claim in Postgres, extract with FOI, submit to ITM, record the
//! outcome and queue the IQube notification of a failure.

pub mod copies;
pub mod kept;

use crate::config::DuplicateContent;
use crate::domain::{Decision, FileStatus};
use crate::downstream::{FoiOutcome, ItmSubmission, Notification};
use crate::engine::{Deps, RunSettings};
use crate::plan::Unstable;
use crate::scan::Candidate;
use crate::source::{Content, SourceError};
use crate::store::{Claim, ClaimRequest, Earlier, StoreError, TRANSIENT_RETRY};
use backon::Retryable;
use kept::{KeptOutcome, Outcome};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use crate::domain::FileReport;

/// The key ITM sees on every attempt for one file version.
pub fn idempotency_key(remitter: &str, file_name: &str, md5: &str) -> String {
    let mut h = Sha256::new();
    for part in [remitter, file_name, md5] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    format!("coordinator-{}", hex::encode(&h.finalize()[..16]))
}

/// A file after [`Processor::claim`].
pub enum Claimed {
    /// Nothing to send: the report says why (unstable, known, unreadable).
    Done(FileReport),
    /// Claimed by this instance and downloaded: ready for FOI.
    File(ClaimedFile),
    /// Not started because this instance is stopping: give the candidate
    /// back for another instance (or the next run).
    Stopping,
    /// The candidate was taken over (this instance was presumed dead):
    /// nothing was claimed, and its report belongs to the new holder.
    Lost,
}

/// A downloaded file this run holds the claim of.
pub struct ClaimedFile {
    file_id: i64,
    token: Uuid,
    fetched: crate::source::Fetched,
    /// Removed when the file is done with.
    _spool: Spool,
    /// Counted in `coordinator_files_in_flight` until the file is done with.
    _in_flight: crate::metrics::InFlight,
}

/// Everything processing needs, shared by the files of one run.
pub struct Processor {
    /// The share, the database, FOI, ITM, metrics and kept outcomes.
    deps: Arc<Deps>,
    /// The source and spool folders, and when IQube hears of failed reads.
    settings: Arc<RunSettings>,
    /// This process (its incarnation): the holder of its claims.
    holder: Uuid,
    /// Cancelled on shutdown: no file is claimed after it; files already
    /// claimed go on to their outcome.
    stop: CancellationToken,
    /// Set once a candidate was found taken over: this instance was
    /// presumed dead, and takes nothing more in this run.
    work_lost: AtomicBool,
}

/// Attempts at a claim through a database blip (about 30 s in all); then
/// the file is an error for this run (nothing sent) and the next run takes it.
const CLAIM_ATTEMPTS: usize = 10;

/// Deletes the spool file however processing ends (a killed process leaves
/// it behind; [`sweep_stale_spools`] removes those).
struct Spool {
    path: PathBuf,
    /// False once the download turned out to be held in memory.
    used: bool,
}

/// The spool file name prefix of this process: `coordinator-<pid>-`.
fn spool_prefix(pid: u32) -> String {
    format!("coordinator-{pid}-")
}

/// Removes spool files left in `dir` by coordinator processes that no longer
/// run (killed mid-file). Files of live processes are kept. Returns how many
/// were removed.
pub fn sweep_stale_spools(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("coordinator-")
            .filter(|_| name.ends_with(".spool"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %dir.display(), "removed spool files of stopped processes");
    }
    removed
}

/// The MD5 of `c`'s bytes as they are now, read for a dry run's
/// duplicate check (CONTRACT §12): nothing claimed, the spool file (if the
/// file was large) removed at once; `None` when it could not be read or
/// changed since the second look (the dry run then says nothing of copies).
pub async fn hash_only(deps: &Deps, settings: &RunSettings, c: &Candidate) -> Option<String> {
    let spool = Spool {
        path: settings.spool_dir.join(format!(
            "{}{}.spool",
            spool_prefix(std::process::id()),
            Uuid::new_v4().simple()
        )),
        used: true,
    };
    if std::fs::create_dir_all(&settings.spool_dir).is_err() {
        return None;
    }
    let fetched = deps
        .source
        .fetch(&c.path(&settings.source_dir), &spool.path)
        .await
        .map_err(|e| tracing::info!(remitter = %c.remitter, file = %c.entry.name, error = %e, "dry run: not read for the duplicate check"))
        .ok()?;
    let (e, a) = (&c.entry, &fetched.after);
    let unchanged = fetched.size == e.size && a.size == e.size && a.mtime == e.mtime;
    unchanged.then_some(fetched.md5)
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.used {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Processor {
    /// A processor of `holder`'s claims; it stops claiming once `stop` is cancelled.
    pub fn new(
        deps: Arc<Deps>,
        settings: Arc<RunSettings>,
        holder: Uuid,
        stop: CancellationToken,
    ) -> Self {
        Self {
            deps,
            settings,
            holder,
            stop,
            work_lost: AtomicBool::new(false),
        }
    }

    /// True once a candidate was found taken over: take nothing more.
    pub fn work_lost(&self) -> bool {
        self.work_lost.load(Ordering::Relaxed)
    }

    /// A download failed: nothing was claimed or sent. Counts the failure and
    /// tells IQube once when the same version keeps failing.
    async fn read_failed(&self, run_id: Uuid, c: &Candidate, error: &str) -> FileReport {
        tracing::warn!(error, "download failed; nothing sent");
        let n = self.settings.read_failure_notify_after;
        let payload = Notification::ReadFailed {
            run_id,
            remitter: &c.remitter,
            file_name: &c.entry.name,
            failures: n,
            reason: error,
        }
        .payload();
        let counted = self
            .deps
            .store
            .record_read_failure(
                &c.remitter,
                &c.entry.name,
                c.entry.size as i64,
                c.entry.mtime,
                error,
                n,
                &payload,
            )
            .await;
        let reason = match counted {
            Ok(times) => format!("download failed ({times} time(s) so far): {error}"),
            Err(e) => {
                tracing::error!(error = %e, "could not count the read failure");
                format!("download failed: {error}")
            }
        };
        FileReport::new(c, Decision::Error, Some(reason))
    }

    /// The first half of processing, before any downstream call: download
    /// (checked against the second look) and claim. Runs can do this for the
    /// next files while earlier ones are with FOI and ITM.
    #[tracing::instrument(name = "process", skip_all, fields(remitter = %c.remitter, file = %c.entry.name))]
    /// A possible copy (`copies`) claims only after the earlier ones
    /// (CONTRACT §12: the first by copy order is processed).
    pub async fn claim(
        &self,
        run_id: Uuid,
        seq: i32,
        c: &Candidate,
        base_name: &str,
        copies: Option<copies::CopyTicket>,
    ) -> Claimed {
        if self.stop.is_cancelled() {
            return Claimed::Stopping;
        }
        if self.work_lost.load(Ordering::Relaxed) {
            return Claimed::Lost;
        }
        let mut spool = Spool {
            path: self.settings.spool_dir.join(format!(
                "{}{}.spool",
                spool_prefix(std::process::id()),
                Uuid::new_v4().simple()
            )),
            used: true,
        };
        let fetched = match self
            .deps
            .source
            .fetch(&c.path(&self.settings.source_dir), &spool.path)
            .await
        {
            Ok(f) => {
                // Held in memory: there is no spool file to remove later.
                spool.used = matches!(f.content, Content::Spooled(_));
                f
            }
            Err(SourceError::Busy(_)) => {
                tracing::info!("open for writing by another client; left for a later run");
                return Claimed::Done(FileReport::new(
                    c,
                    Decision::Unstable,
                    Some(Unstable::OpenForWrite.to_string()),
                ));
            }
            Err(e) => return Claimed::Done(self.read_failed(run_id, c, &e.to_string()).await),
        };
        self.deps.metrics.bytes_read(fetched.size);
        // The bytes read must be the version that passed Policy A (CONTRACT §1.4).
        let (e, a) = (&c.entry, &fetched.after);
        if fetched.size != e.size || a.size != e.size || a.mtime != e.mtime || a.ctime != e.ctime {
            tracing::info!(
                listed_size = e.size,
                read_size = fetched.size,
                "changed after the second look; nothing claimed"
            );
            return Claimed::Done(FileReport::new(
                c,
                Decision::Unstable,
                Some(Unstable::ChangedDuringRead.to_string()),
            ));
        }
        if let Some(ticket) = &copies {
            ticket.read(&fetched.md5);
            let store = &self.deps.store;
            ticket
                .wait_turn(
                    &fetched.md5,
                    || store.earlier_copies_elsewhere(run_id, ticket.place(), self.holder),
                    &self.stop,
                )
                .await;
        }
        // A download that was under way when the stop came is dropped, unclaimed.
        if self.stop.is_cancelled() {
            return Claimed::Stopping;
        }
        let req = ClaimRequest {
            run_id,
            remitter: &c.remitter,
            file_name: &c.entry.name,
            base_name,
            md5: &fetched.md5,
            size: fetched.size as i64,
            mtime: c.entry.mtime,
            ctime: c.entry.ctime,
            seq,
            holder: self.holder,
            token: Uuid::new_v4(),
            duplicate_window_days: self.settings.duplicate_window_days,
            find_copies: self.settings.duplicate_content == DuplicateContent::Hold,
        };
        // Tried again through a database blip with the same token: a claim
        // whose answer was lost is found as this process's own.
        let claim = (|| self.deps.store.claim(&req))
            .retry(TRANSIENT_RETRY.with_max_times(CLAIM_ATTEMPTS))
            .when(|e: &StoreError| e.is_transient() && !self.stop.is_cancelled())
            .notify(
                |e, pause| tracing::warn!(error = %e, ?pause, "claim not made yet; trying again"),
            )
            .await;
        let (file_id, token) = match claim {
            Ok(Claim::New {
                id,
                token,
                copy_of: Some(earlier),
                ..
            }) => {
                return Claimed::Done(
                    self.hold_copy(run_id, c, &fetched.md5, id, token, earlier)
                        .await,
                );
            }
            Ok(Claim::New {
                id,
                token,
                recovered,
                copy_of: None,
            }) => {
                if recovered {
                    self.deps.metrics.claim_taken_over();
                }
                (id, token)
            }
            Ok(Claim::Exists { status, .. }) => {
                let reason = if status == FileStatus::Processing {
                    "claimed by a live instance that has not finished it"
                } else {
                    "this content was claimed before"
                };
                return Claimed::Done(
                    FileReport::new(c, Decision::AlreadyProcessed, Some(reason.into()))
                        .with_status(status),
                );
            }
            Err(StoreError::WorkLost) => {
                tracing::error!(
                    "the candidate was taken over (this instance was presumed dead); taking nothing more in this run"
                );
                self.work_lost.store(true, Ordering::Relaxed);
                return Claimed::Lost;
            }
            Err(e) => {
                tracing::error!(error = %e, "claim failed; nothing sent");
                return Claimed::Done(FileReport::new(
                    c,
                    Decision::Error,
                    Some(format!("claim failed: {e}")),
                ));
            }
        };
        tracing::info!(file_id, md5 = %fetched.md5, size = fetched.size, "claimed");
        Claimed::File(ClaimedFile {
            file_id,
            token,
            fetched,
            _spool: spool,
            _in_flight: self.deps.metrics.file_in_flight(),
        })
    }

    /// Holds a claimed file whose content `earlier` brought first
    /// (CONTRACT §12, `DUPLICATE_CONTENT=hold`): status `duplicate_content`
    /// with the earlier file in the event's detail, one IQube
    /// `file_failed`, written like any outcome (kept through a database
    /// blip); nothing is sent.
    async fn hold_copy(
        &self,
        run_id: Uuid,
        c: &Candidate,
        md5: &str,
        file_id: i64,
        token: Uuid,
        earlier: Earlier,
    ) -> FileReport {
        let status = FileStatus::DuplicateContent;
        let reason = format!(
            "the same content as {} (file {}), claimed for this remitter under that name; \
             not sent (retry it to send it as new, or resolve it)",
            earlier.file_name, earlier.id
        );
        tracing::info!(duplicate_of = earlier.id, duplicate_of_name = %earlier.file_name, "held: the same content under another name");
        let notification = Notification::FileFailed {
            run_id,
            remitter: &c.remitter,
            file_name: &c.entry.name,
            status: &status,
            reason: &reason,
        }
        .payload();
        let kept = KeptOutcome {
            remitter: c.remitter.clone(),
            file_name: c.entry.name.clone(),
            md5: md5.to_string(),
            file_id,
            token,
            outcome: Outcome {
                status,
                detail: json!({
                    "reason": reason,
                    "duplicate_of": earlier.id,
                    "duplicate_of_name": earlier.file_name,
                    "run_id": run_id,
                }),
                failure: Some(reason.clone()),
                notification: Some(notification),
            },
        };
        let mut report = self.record(c, kept).await;
        if report.decision == Decision::Processed {
            report.decision = Decision::HeldDuplicate;
        }
        report
    }

    /// The second half: FOI, then ITM, and the outcome recorded (with the
    /// IQube notification of a failure) by the holder of the claim. A
    /// version whose earlier outcome was kept (its write failed) is not sent
    /// again: the kept outcome is written.
    #[tracing::instrument(name = "process", skip_all, fields(remitter = %c.remitter, file = %c.entry.name))]
    pub async fn send(&self, run_id: Uuid, c: &Candidate, file: ClaimedFile) -> FileReport {
        let ClaimedFile {
            file_id,
            token,
            fetched,
            ..
        } = file;
        // No renewal: a live instance's claim is never taken over.
        let outcome = match self
            .deps
            .kept
            .take(&c.remitter, &c.entry.name, &fetched.md5)
        {
            Some(kept) => {
                tracing::info!(
                    file_id,
                    "downstream answered an earlier claim of this version; writing that answer"
                );
                kept.recorded_later()
            }
            None => {
                self.downstream(run_id, c, &fetched.md5, &fetched.content)
                    .await
            }
        };
        let kept = KeptOutcome {
            remitter: c.remitter.clone(),
            file_name: c.entry.name.clone(),
            md5: fetched.md5.clone(),
            file_id,
            token,
            outcome,
        };
        self.record(c, kept).await
    }

    /// Writes an outcome, again after a transient database error (with
    /// backoff) until it is written or this instance stops (the claim stays
    /// ours while this process beats). From the first failed attempt on,
    /// the outcome is kept (journaled), so neither a give-up nor a crash
    /// during the retries makes FOI or ITM be called again for it.
    async fn record(&self, c: &Candidate, kept: KeptOutcome) -> FileReport {
        let o = &kept.outcome;
        let write = || {
            self.deps.store.set_status(
                kept.file_id,
                kept.token,
                o.status.clone(),
                &o.detail,
                o.notification.as_ref(),
            )
        };
        let status = o.status.clone();
        let mut written = write().await;
        if written.as_ref().is_err_and(StoreError::is_transient) {
            self.deps.kept.keep_retrying(kept.clone());
            written = write
                .retry(TRANSIENT_RETRY.without_max_times())
                .when(|e: &StoreError| e.is_transient() && !self.stop.is_cancelled())
                .notify(|e, pause| {
                    tracing::warn!(error = %e, ?pause, status = status.as_str(), "outcome not recorded yet; trying again")
                })
                .await;
            // Written, or refused for good: nothing left to keep.
            self.deps.kept.retried(
                &kept,
                !written.as_ref().is_err_and(StoreError::is_transient),
            );
        }
        match written {
            Ok(()) => {
                tracing::info!(status = status.as_str(), "processed");
                FileReport {
                    remitter: c.remitter.clone(),
                    file_name: c.entry.name.clone(),
                    decision: Decision::Processed,
                    status: Some(status),
                    reason: kept.outcome.failure,
                    instance: None,
                }
            }
            Err(e) if e.is_transient() => {
                tracing::error!(error = %e, status = status.as_str(), "could not record the outcome; kept for a later write");
                FileReport::new(
                    c,
                    Decision::Error,
                    Some(format!(
                        "outcome {} not recorded: {e}; kept, and written by a later run \
                         without calling FOI or ITM again",
                        status.as_str()
                    )),
                )
                .with_status(FileStatus::Processing)
            }
            Err(e) => {
                tracing::warn!(error = %e, status = status.as_str(), "outcome not recorded (the claim is no longer this run's)");
                FileReport::new(
                    c,
                    Decision::Error,
                    Some(format!("outcome {} not recorded: {e}", status.as_str())),
                )
                .with_status(FileStatus::Processing)
            }
        }
    }

    /// FOI, then ITM on success: the outcome of one claimed file.
    async fn downstream(
        &self,
        run_id: Uuid,
        c: &Candidate,
        md5: &str,
        content: &Content,
    ) -> Outcome {
        let (status, detail, failure) = match self
            .deps
            .foi
            .extract(&c.remitter, &c.entry.name, content)
            .await
        {
            FoiOutcome::Failure { status, reason } => (
                status,
                json!({"step": "foi", "reason": reason}),
                Some(reason),
            ),
            FoiOutcome::Success(result) => {
                let sub = ItmSubmission {
                    remitter: c.remitter.clone(),
                    file_name: c.entry.name.clone(),
                    md5: md5.to_string(),
                    result,
                };
                let key = idempotency_key(&c.remitter, &c.entry.name, md5);
                match self.deps.itm.submit(&sub, &key).await {
                    Ok(()) => (
                        FileStatus::Success,
                        json!({"step": "itm", "idempotency_key": key}),
                        None,
                    ),
                    Err(e) => (
                        FileStatus::ItmFailed,
                        json!({"step": "itm", "idempotency_key": key, "reason": e.to_string()}),
                        Some(e.to_string()),
                    ),
                }
            }
        };
        let notification = failure.as_deref().map(|reason| {
            Notification::FileFailed {
                run_id,
                remitter: &c.remitter,
                file_name: &c.entry.name,
                status: &status,
                reason,
            }
            .payload()
        });
        Outcome {
            status,
            detail,
            failure,
            notification,
        }
    }
}

/// The report of a file left for the next run because of a stop.
pub fn deferred(c: &Candidate) -> FileReport {
    tracing::info!(remitter = %c.remitter, file = %c.entry.name, "stopping: not claimed; left for the next run");
    FileReport::new(
        c,
        Decision::Deferred,
        Some("not started: the coordinator was stopping; the next run takes it".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::idempotency_key;

    #[test]
    fn stale_spools_of_dead_processes_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join(format!(
            "{}x.spool",
            super::spool_prefix(std::process::id())
        ));
        // Pid numbers above the kernel's limit are never alive.
        let dead = dir.path().join("coordinator-4999999-x.spool");
        let other = dir.path().join("unrelated.spool");
        for p in [&mine, &dead, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(super::sweep_stale_spools(dir.path()), 1);
        assert!(mine.exists() && other.exists() && !dead.exists());
    }

    #[test]
    fn idempotency_key_is_stable_and_distinct() {
        let a = idempotency_key("r", "f.csv", "abc");
        assert_eq!(a, idempotency_key("r", "f.csv", "abc"));
        assert_ne!(a, idempotency_key("r", "f.csv", "abd"));
        assert_ne!(
            idempotency_key("ab", "c", "m"),
            idempotency_key("a", "bc", "m")
        );
        assert!(a.starts_with("coordinator-"));
    }
}
