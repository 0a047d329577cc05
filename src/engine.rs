//! The run engine: scan → plan (group, stability) → process (claim, FOI,
//! ITM, notify) → archive in the background. It depends on the
//! [`FileSource`] and downstream traits, so each can be swapped or faked.

use crate::archive::{Archiver, PassReport};
use crate::domain::Decision;
use crate::downstream::{Extractor, Notifier, Submitter};
use crate::plan::{self, Group};
use crate::process::{FileReport, Processor};
use crate::scan::{self, Candidate, names::TempNameFilter};
use crate::source::FileSource;
use crate::store::{RunStart, Store, SupersededFile};
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// The knobs of a run.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Share-relative folder of remitter folders.
    pub source_dir: String,
    /// Share-relative archive folder.
    pub archive_dir: String,
    /// Local folder for download spools.
    pub spool_dir: PathBuf,
    /// Temp-name filter.
    pub ignore: TempNameFilter,
    /// Policy A minimum age.
    pub stable_min_age: Duration,
    /// Policy A gap between the two looks.
    pub stable_check_interval: Duration,
    /// Files processed at once.
    pub max_concurrent_files: usize,
    /// How long a `processing` claim may go without an update before another
    /// run takes it over (its process is presumed dead).
    pub claim_lease: Duration,
    /// Failed reads of one file version before IQube is told (once).
    pub read_failure_notify_after: u32,
    /// Most time one background pass spends delivering notifications.
    pub delivery_budget: Duration,
}

/// Counts and per-file decisions of one run (CONTRACT §4).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Files found in remitter folders, temp names included.
    pub scanned: usize,
    /// Temp-like names.
    pub ignored: usize,
    /// Older versions (archived, or waiting for their group's newest).
    pub superseded: usize,
    /// Newest versions that may still be uploading.
    pub unstable: usize,
    /// Versions that had a row already.
    pub already_processed: usize,
    /// Versions claimed and sent downstream by this run.
    pub processed: usize,
    /// Processed with status `success`.
    pub succeeded: usize,
    /// Processed with a failure status.
    pub failed: usize,
    /// Files that could not be read or recorded.
    pub errors: usize,
    /// One entry per file, with the decision and its reason.
    pub files: Vec<FileReport>,
    /// Remitter folders that could not be listed (counted in `errors`).
    pub folder_errors: Vec<FolderError>,
}

/// A remitter folder the scan could not list.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FolderError {
    /// Remitter folder name.
    pub remitter: String,
    /// Why.
    pub reason: String,
}

impl Summary {
    fn push(&mut self, r: FileReport) {
        match r.decision {
            Decision::Ignored => self.ignored += 1,
            Decision::Superseded => self.superseded += 1,
            Decision::Unstable => self.unstable += 1,
            Decision::AlreadyProcessed => self.already_processed += 1,
            Decision::Processed => {
                self.processed += 1;
                if r.status.as_deref() == Some("success") {
                    self.succeeded += 1;
                } else {
                    self.failed += 1;
                }
            }
            Decision::Error => self.errors += 1,
        }
        self.files.push(r);
    }
}

/// A completed run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Run id.
    pub run_id: Uuid,
    /// Always `completed`.
    pub status: &'static str,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End (before the background archive).
    pub finished_at: DateTime<Utc>,
    /// Counts and decisions.
    pub summary: Summary,
}

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another run holds the lock.
    #[error("a run is already in progress")]
    Busy {
        /// The running run, when known.
        running: Option<Uuid>,
    },
    /// The run could not be performed.
    #[error("run failed ({code}): {message}")]
    Failed {
        /// Run id.
        run_id: Uuid,
        /// Start.
        started_at: DateTime<Utc>,
        /// Stable machine code.
        code: &'static str,
        /// For a person.
        message: String,
    },
}

/// The engine and its collaborators.
pub struct Engine {
    /// The share.
    pub source: Arc<dyn FileSource>,
    /// Postgres.
    pub store: Arc<dyn Store>,
    /// FOI.
    pub foi: Arc<dyn Extractor>,
    /// ITM.
    pub itm: Arc<dyn Submitter>,
    /// IQube.
    pub iqube: Arc<dyn Notifier>,
    /// Knobs.
    pub settings: RunSettings,
    /// Background work (archive passes, in-flight runs) to wait for on shutdown.
    pub tracker: TaskTracker,
    /// Name of this process in the `runs` table.
    pub instance: String,
    /// Count of finished background passes (for tests and, later, metrics).
    pub passes_done: tokio::sync::watch::Sender<u64>,
    /// Cancelled on shutdown: background passes start no new move or
    /// delivery, so the process exits promptly even while IQube hangs.
    pub stop: tokio_util::sync::CancellationToken,
    /// Archive name reservations a pass could not release, for the next pass.
    pub leftover_reservations: Arc<std::sync::Mutex<Vec<crate::source::Reservation>>>,
}

impl Engine {
    fn archiver(&self) -> Archiver {
        Archiver {
            source: self.source.clone(),
            store: self.store.clone(),
            iqube: self.iqube.clone(),
            source_dir: self.settings.source_dir.clone(),
            archive_dir: self.settings.archive_dir.clone(),
            made_dirs: Default::default(),
            stop: self.stop.clone(),
            leftovers: self.leftover_reservations.clone(),
            delivery_budget: self.settings.delivery_budget,
        }
    }

    /// One background pass now: superseded versions, notifications, housekeeping.
    pub async fn background_pass(&self) -> PassReport {
        let report = self.archiver().pass().await;
        self.passes_done.send_modify(|n| *n += 1);
        report
    }

    /// Schedules a background pass on the tracker.
    pub fn spawn_background(self: &Arc<Self>) {
        let me = self.clone();
        self.tracker.spawn(async move {
            me.background_pass().await;
        });
    }

    /// Performs one run; the archive continues in the background afterwards.
    pub async fn run(self: &Arc<Self>, trigger: &str) -> Result<RunReport, RunError> {
        let run_id = Uuid::new_v4();
        let started_at = Utc::now();
        let span = tracing::info_span!("run", %run_id, trigger);
        let fail = |code: &'static str, message: String| RunError::Failed {
            run_id,
            started_at,
            code,
            message,
        };
        let lease = match self.store.begin_run(run_id, trigger, &self.instance).await {
            Ok(RunStart::Started(l)) => l,
            Ok(RunStart::Busy(running)) => return Err(RunError::Busy { running }),
            Err(e) => {
                let message = format!("the run could not be recorded: {e}");
                tracing::error!(%run_id, error = %message, "run failed");
                // No outbox without a database: tell IQube directly, once.
                let payload = run_failed_payload(run_id, &message);
                if let Err(e) = self
                    .iqube
                    .notify(&payload, &format!("run_failed:{run_id}"))
                    .await
                {
                    tracing::error!(%run_id, error = %e, "IQube could not be told of the failed run");
                }
                return Err(fail("database_unavailable", message));
            }
        };
        let outcome = tracing::Instrument::instrument(self.perform(run_id), span.clone()).await;
        let finished_at = Utc::now();
        let result = match outcome {
            Ok(summary) => {
                let report = RunReport {
                    run_id,
                    status: "completed",
                    started_at,
                    finished_at,
                    summary,
                };
                let body = serde_json::to_value(&report.summary).unwrap_or_default();
                if let Err(e) = self
                    .store
                    .finish_run(run_id, "completed", &body, None, None)
                    .await
                {
                    tracing::error!(%run_id, error = %e, "could not record the run's outcome");
                }
                self.spawn_background();
                Ok(report)
            }
            Err((code, message)) => {
                tracing::error!(%run_id, code, error = %message, "run failed");
                let payload = run_failed_payload(run_id, &message);
                if let Err(e) = self
                    .store
                    .finish_run(
                        run_id,
                        "failed",
                        &json!({}),
                        Some((code, &message)),
                        Some(&payload),
                    )
                    .await
                {
                    tracing::error!(%run_id, error = %e, "could not record the failed run; telling IQube directly");
                    let _ = self
                        .iqube
                        .notify(&payload, &format!("run_failed:{run_id}"))
                        .await;
                }
                self.spawn_background();
                Err(fail(code, message))
            }
        };
        lease.release().await;
        result
    }

    async fn perform(&self, run_id: Uuid) -> Result<Summary, (&'static str, String)> {
        let s = &self.settings;
        let scanned = scan::scan(
            self.source.as_ref(),
            &s.source_dir,
            &s.archive_dir,
            &s.ignore,
        )
        .await
        .map_err(|e| ("scan_failed", format!("the share could not be listed: {e}")))?;
        let mut summary = Summary {
            scanned: scanned.candidates.len() + scanned.ignored.len(),
            ..Default::default()
        };
        for (remitter, reason) in scanned.folder_errors {
            summary.errors += 1;
            summary.folder_errors.push(FolderError {
                remitter,
                reason: format!("remitter folder could not be listed: {reason}"),
            });
        }
        for (remitter, name) in scanned.ignored {
            summary.push(FileReport {
                remitter,
                file_name: name,
                decision: Decision::Ignored,
                status: None,
                reason: Some("temp-like name".into()),
            });
        }
        // Versions an earlier run superseded stay superseded until moved, even
        // when they are now alone in their group.
        let earlier = self
            .store
            .pending_superseded()
            .await
            .map_err(|e| ("database_error", e.to_string()))?;
        let earlier: HashSet<(&str, &str, i64, DateTime<Utc>)> = earlier
            .iter()
            .map(|e| (e.remitter.as_str(), e.file_name.as_str(), e.size, e.mtime))
            .collect();
        let (candidates, already_superseded): (Vec<Candidate>, Vec<Candidate>) =
            scanned.candidates.into_iter().partition(|c| {
                !earlier.contains(&(
                    c.remitter.as_str(),
                    c.entry.name.as_str(),
                    c.entry.size as i64,
                    c.entry.mtime,
                ))
            });
        for c in &already_superseded {
            summary.push(FileReport::new(
                c,
                Decision::Superseded,
                Some("superseded by an earlier run; waiting for the archive move".into()),
            ));
        }
        let groups = plan::group(candidates);
        let names: Vec<(String, String)> = groups
            .iter()
            .map(|g| (g.newest.remitter.clone(), g.newest.entry.name.clone()))
            .collect();
        let known = self
            .store
            .known_versions(&names)
            .await
            .map_err(|e| ("database_error", e.to_string()))?;
        let mut known_by_name: HashMap<(&str, &str), Vec<&crate::store::KnownVersion>> =
            HashMap::new();
        for k in &known {
            known_by_name
                .entry((&k.remitter, &k.file_name))
                .or_default()
                .push(k);
        }
        let mut to_archive: Vec<SupersededFile> = Vec::new();
        let mut pending: Vec<&Group> = Vec::new();
        for g in &groups {
            let e = &g.newest.entry;
            // A claim still `processing` goes through the claim again (lease recovery).
            let seen = known_by_name
                .get(&(g.newest.remitter.as_str(), e.name.as_str()))
                .and_then(|ks| {
                    ks.iter().find(|k| {
                        k.size == e.size as i64 && k.mtime == e.mtime && k.status != "processing"
                    })
                });
            match seen {
                Some(k) => {
                    let mut r = FileReport::new(
                        &g.newest,
                        Decision::AlreadyProcessed,
                        Some("same name, size and last-write time as a recorded version".into()),
                    );
                    r.status = Some(k.status.clone());
                    summary.push(r);
                    self.supersede(g, &mut summary, &mut to_archive);
                }
                None => pending.push(g),
            }
        }
        if !pending.is_empty() {
            let now = match self.source.server_now(&s.archive_dir).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "server clock unavailable; using the local clock for Policy A");
                    Utc::now()
                }
            };
            let newest: Vec<&Candidate> = pending.iter().map(|g| &g.newest).collect();
            let verdicts = plan::stability(
                self.source.as_ref(),
                &s.source_dir,
                &newest,
                now,
                s.stable_min_age,
                s.stable_check_interval,
            )
            .await
            .map_err(|e| {
                (
                    "scan_failed",
                    format!("the share could not be listed again: {e}"),
                )
            })?;
            let mut stable: Vec<&Group> = Vec::new();
            for (g, v) in pending.into_iter().zip(verdicts) {
                match v {
                    Ok(()) => stable.push(g),
                    Err(why) => {
                        summary.push(FileReport::new(
                            &g.newest,
                            Decision::Unstable,
                            Some(why.to_string()),
                        ));
                        for old in &g.superseded {
                            summary.push(FileReport::new(
                                old,
                                Decision::Superseded,
                                Some(format!(
                                    "archive waits: newest version {} is not stable yet",
                                    g.newest.entry.name
                                )),
                            ));
                        }
                    }
                }
            }
            std::fs::create_dir_all(&s.spool_dir).map_err(|e| {
                (
                    "spool_unavailable",
                    format!("cannot create {}: {e}", s.spool_dir.display()),
                )
            })?;
            let processor = Processor {
                source: self.source.clone(),
                store: self.store.clone(),
                foi: self.foi.clone(),
                itm: self.itm.clone(),
                source_dir: s.source_dir.clone(),
                spool_dir: s.spool_dir.clone(),
                claim_lease: s.claim_lease,
                read_failure_notify_after: s.read_failure_notify_after,
            };
            let jobs: Vec<_> = stable
                .iter()
                .map(|g| processor.process(run_id, &g.newest, &g.base_name).boxed())
                .collect();
            let reports: Vec<FileReport> = futures::stream::iter(jobs)
                .buffer_unordered(s.max_concurrent_files)
                .collect()
                .await;
            for r in reports {
                summary.push(r);
            }
            for g in stable {
                self.supersede(g, &mut summary, &mut to_archive);
            }
        }
        tracing::info!(
            scanned = summary.scanned,
            processed = summary.processed,
            unstable = summary.unstable,
            errors = summary.errors,
            "run completed"
        );
        if let Err(e) = self.store.record_superseded(run_id, &to_archive).await {
            // Not fatal: nothing was moved, and the next run decides again.
            tracing::error!(error = %e, "could not record superseded versions; they wait for the next run");
        }
        Ok(summary)
    }

    fn supersede(&self, g: &Group, summary: &mut Summary, to_archive: &mut Vec<SupersededFile>) {
        for old in &g.superseded {
            summary.push(FileReport::new(
                old,
                Decision::Superseded,
                Some(format!(
                    "older version of {}; moved to the archive in the background",
                    g.newest.entry.name
                )),
            ));
            to_archive.push(SupersededFile {
                id: 0,
                remitter: old.remitter.clone(),
                file_name: old.entry.name.clone(),
                size: old.entry.size as i64,
                mtime: old.entry.mtime,
                newer_file_name: g.newest.entry.name.clone(),
            });
        }
    }
}

/// The IQube payload of a run that could not be performed.
pub fn run_failed_payload(run_id: Uuid, reason: &str) -> serde_json::Value {
    json!({
        "event": "run_failed",
        "remitter": null,
        "file_name": null,
        "status": "failed",
        "reason": reason,
        "run_id": run_id,
    })
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
