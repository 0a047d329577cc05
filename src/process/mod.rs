//! Process one stable file version: download (hashed; into memory up to
//! 1 MiB, else streamed to a spool file), claim in Postgres, extract with FOI, submit to ITM, record the
//! outcome and queue the IQube notification of a failure.

use crate::domain::{Decision, FileStatus};
use crate::downstream::{Extractor, FoiOutcome, ItmSubmission, Submitter};
use crate::plan::Unstable;
use crate::scan::Candidate;
use crate::source::{Content, FileSource, SourceError};
use crate::store::{Claim, Store, StoreError};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The IQube payload of a failed file.
pub fn file_failed_payload(
    run_id: Uuid,
    remitter: &str,
    file_name: &str,
    status: &FileStatus,
    reason: &str,
) -> serde_json::Value {
    json!({
        "event": "file_failed",
        "remitter": remitter,
        "file_name": file_name,
        "status": status.as_str(),
        "reason": reason,
        "run_id": run_id,
    })
}

/// A file after [`Processor::claim`].
pub enum Claimed {
    /// Nothing to send: the report says why (unstable, known, unreadable).
    Done(FileReport),
    /// Claimed by this run and downloaded: ready for FOI.
    File(ClaimedFile),
}

/// A downloaded file this run holds the claim of.
pub struct ClaimedFile {
    file_id: i64,
    token: Uuid,
    /// When the claim was made: its lease runs from here, also while the
    /// file waits for a FOI/ITM slot.
    claimed_at: tokio::time::Instant,
    fetched: crate::source::Fetched,
    /// Removed when the file is done with.
    _spool: Spool,
}

/// Everything processing needs, shared by the files of one run.
pub struct Processor {
    /// The share.
    pub source: Arc<dyn FileSource>,
    /// Postgres.
    pub store: Arc<dyn Store>,
    /// FOI.
    pub foi: Arc<dyn Extractor>,
    /// ITM.
    pub itm: Arc<dyn Submitter>,
    /// Share-relative source folder.
    pub source_dir: String,
    /// Local spool folder.
    pub spool_dir: PathBuf,
    /// Lease of a `processing` claim (see `Store::claim`).
    pub claim_lease: std::time::Duration,
    /// Failed reads of one version before IQube is told.
    pub read_failure_notify_after: u32,
    /// Set once a claim found the run lock gone: no more claims in this run.
    pub lock_lost: AtomicBool,
    /// Where the bytes read are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The IQube payload of a file that keeps failing to be read.
pub fn read_failed_payload(
    run_id: Uuid,
    remitter: &str,
    file_name: &str,
    failures: u32,
    reason: &str,
) -> serde_json::Value {
    json!({
        "event": "file_failed",
        "remitter": remitter,
        "file_name": file_name,
        "status": "read_failed",
        "reason": format!("could not be read {failures} times; last: {reason}"),
        "run_id": run_id,
    })
}

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

impl Drop for Spool {
    fn drop(&mut self) {
        if self.used {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Processor {
    /// A download failed: nothing was claimed or sent. Counts the failure and
    /// tells IQube once when the same version keeps failing.
    async fn read_failed(&self, run_id: Uuid, c: &Candidate, error: &str) -> FileReport {
        tracing::warn!(error, "download failed; nothing sent");
        let n = self.read_failure_notify_after;
        let payload = read_failed_payload(run_id, &c.remitter, &c.entry.name, n, error);
        let counted = self
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
    pub async fn claim(&self, run_id: Uuid, c: &Candidate, base_name: &str) -> Claimed {
        if self.lock_lost.load(Ordering::Relaxed) {
            return Claimed::Done(FileReport::new(
                c,
                Decision::Error,
                Some(lock_lost_reason()),
            ));
        }
        let mut spool = Spool {
            path: self.spool_dir.join(format!(
                "{}{}.spool",
                spool_prefix(std::process::id()),
                Uuid::new_v4().simple()
            )),
            used: true,
        };
        let fetched = match self
            .source
            .fetch(&c.path(&self.source_dir), &spool.path)
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
        self.metrics.bytes_read(fetched.size);
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
        let claim = self
            .store
            .claim(
                run_id,
                &c.remitter,
                &c.entry.name,
                base_name,
                &fetched.md5,
                fetched.size as i64,
                c.entry.mtime,
                c.entry.ctime,
                self.claim_lease,
            )
            .await;
        let (file_id, token) = match claim {
            Ok(Claim::New { id, token }) => (id, token),
            Ok(Claim::Exists { status, .. }) => {
                let reason = if status == FileStatus::Processing {
                    "claimed by a run that has not finished (its lease has not run out)"
                } else {
                    "this content was claimed before"
                };
                return Claimed::Done(
                    FileReport::new(c, Decision::AlreadyProcessed, Some(reason.into()))
                        .with_status(status),
                );
            }
            Err(StoreError::RunLockLost) => {
                tracing::error!("the run lock is gone; this run claims nothing more");
                self.lock_lost.store(true, Ordering::Relaxed);
                return Claimed::Done(FileReport::new(
                    c,
                    Decision::Error,
                    Some(lock_lost_reason()),
                ));
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
            claimed_at: tokio::time::Instant::now(),
            fetched,
            _spool: spool,
        })
    }

    /// The second half: FOI, then ITM, and the outcome recorded (with the
    /// IQube notification of a failure) by the holder of the claim.
    #[tracing::instrument(name = "process", skip_all, fields(remitter = %c.remitter, file = %c.entry.name))]
    pub async fn send(&self, run_id: Uuid, c: &Candidate, file: ClaimedFile) -> FileReport {
        let ClaimedFile {
            file_id,
            token,
            claimed_at,
            fetched,
            ..
        } = file;
        let downstream = self.downstream(c, &fetched.md5, &fetched.content);
        let (status, detail, failure) = self.renewing(file_id, token, claimed_at, downstream).await;
        let notification = failure
            .as_deref()
            .map(|reason| file_failed_payload(run_id, &c.remitter, &c.entry.name, &status, reason));
        if let Err(e) = self
            .store
            .set_status(
                file_id,
                token,
                status.clone(),
                &detail,
                notification.as_ref(),
            )
            .await
        {
            tracing::error!(error = %e, status = status.as_str(), "could not record the outcome");
            return FileReport::new(
                c,
                Decision::Error,
                Some(format!("outcome {} not recorded: {e}", status.as_str())),
            )
            .with_status(FileStatus::Processing);
        }
        tracing::info!(status = status.as_str(), "processed");
        FileReport {
            remitter: c.remitter.clone(),
            file_name: c.entry.name.clone(),
            decision: Decision::Processed,
            status: Some(status.clone()),
            reason: failure,
        }
    }

    /// FOI, then ITM on success: the status, the event detail and the
    /// failure reason (for IQube) of one claimed file.
    async fn downstream(
        &self,
        c: &Candidate,
        md5: &str,
        content: &Content,
    ) -> (FileStatus, serde_json::Value, Option<String>) {
        match self.foi.extract(&c.remitter, &c.entry.name, content).await {
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
                match self.itm.submit(&sub, &key).await {
                    Ok(()) => (
                        FileStatus::Success,
                        json!({"step": "itm", "idempotency_key": key}),
                        None,
                    ),
                    Err(reason) => (
                        FileStatus::ItmFailed,
                        json!({"step": "itm", "idempotency_key": key, "reason": reason}),
                        Some(reason),
                    ),
                }
            }
        }
    }

    /// Awaits `work` while renewing the claim every third of its lease, so a
    /// slow but live file is never taken over by another run.
    async fn renewing<T>(
        &self,
        file_id: i64,
        token: Uuid,
        claimed_at: tokio::time::Instant,
        work: impl Future<Output = T>,
    ) -> T {
        // Due a period after the claim: at once for a file that waited that
        // long for its slot.
        let period = renewal_period(self.claim_lease);
        let mut tick = tokio::time::interval_at(claimed_at + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tick.tick() => match self.store.renew_claim(file_id, token).await {
                    Ok(true) => tracing::debug!(file_id, "claim renewed"),
                    Ok(false) => tracing::warn!(file_id, "the claim was taken over while in flight"),
                    Err(e) => tracing::warn!(file_id, error = %e, "could not renew the claim"),
                },
            }
        }
    }
}

/// How often a claim in flight is renewed: a third of its lease.
fn renewal_period(lease: std::time::Duration) -> std::time::Duration {
    (lease / 3).max(std::time::Duration::from_millis(100))
}

fn lock_lost_reason() -> String {
    "not claimed: the run lock was lost (its database session ended); a later run takes the file"
        .into()
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
