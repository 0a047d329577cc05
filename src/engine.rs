//! The run engine: scan → plan (group, stability) → process (claim, FOI,
//! ITM, notify) → archive in the background. It depends on the
//! [`FileSource`] and downstream traits, so each can be swapped or faked.

use crate::archive::{Archiver, PassReport};
pub use crate::domain::FolderError;
use crate::domain::{Decision, FileReport, FileStatus};
use crate::downstream::{Extractor, Notification, Notifier, Submitter};
use crate::metrics::Metrics;
use crate::plan;
use crate::process::kept::KeptOutcomes;
use crate::process::{Claimed, Processor};
use crate::scan::{self, names::TempNameFilter};
use crate::source::FileSource;
use crate::store::{KnownVersion, RunEnd, RunStart, Store};
use backon::Retryable;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
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
    /// Files processed at once by this instance.
    pub max_concurrent_files: usize,
    /// Failed reads of one file version before IQube is told (once).
    pub read_failure_notify_after: u32,
    /// Process or hold the same content under another name (CONTRACT §12).
    pub duplicate_content: crate::config::DuplicateContent,
    /// Days after a claim during which the same content is a duplicate.
    pub duplicate_window_days: u32,
    /// How long a finished run keeps its per-file list (None: forever).
    pub run_detail_retention: Option<Duration>,
    /// Most time one background pass spends delivering notifications.
    pub delivery_budget: Duration,
}

/// Counts and per-file decisions of one run (CONTRACT §4).
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
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
    /// Dry runs only: files a real run would claim and send downstream.
    pub would_process: usize,
    /// Claimed and held as the same content as an earlier file under another
    /// name (`DUPLICATE_CONTENT=hold`); not sent, awaiting an operator.
    pub held_duplicates: usize,
    /// Dry runs only: files a real run would hold as duplicates.
    pub would_hold_duplicate: usize,
    /// Files that could not be read or recorded.
    pub errors: usize,
    /// Stable files not started because the coordinator was stopping; the
    /// next run takes them.
    pub deferred: usize,
    /// True when a stop (SIGTERM) cut the run short: files already claimed
    /// finished, the others (`deferred`) were left untouched.
    pub cut_short: bool,
    /// One entry per file, with the decision and its reason: every file
    /// processed or in error, and the others up to [`LISTED_FILES`] entries.
    /// Left out of the run list; replaced by `files_pruned: true` once
    /// `RUN_DETAIL_RETENTION_DAYS` have passed.
    #[schema(required = false)]
    pub files: Vec<FileReport>,
    /// True when files were left out of `files` (the counts still cover them).
    pub files_truncated: bool,
    /// Remitter folders that could not be listed (counted in `errors`).
    /// Left out of the run list.
    #[schema(required = false)]
    pub folder_errors: Vec<FolderError>,
}

/// Past this many entries a summary lists only files processed or in error
/// (CONTRACT §4), so a share of 100,000 files does not store megabytes per run.
pub const LISTED_FILES: usize = 1000;

/// Files downloaded and claimed ahead of the FOI/ITM slots: a quarter of
/// them (at least one), enough to keep the slots busy while a download and
/// a claim take a fraction of a downstream call.
fn claimed_ahead(max_concurrent_files: usize) -> usize {
    max_concurrent_files.div_ceil(4).max(1)
}

impl Summary {
    fn push(&mut self, r: FileReport) {
        let always = matches!(
            r.decision,
            Decision::Processed
                | Decision::WouldProcess
                | Decision::Error
                | Decision::HeldDuplicate
                | Decision::WouldHoldDuplicate
        );
        match r.decision {
            Decision::Ignored => self.ignored += 1,
            Decision::Superseded => self.superseded += 1,
            Decision::Unstable => self.unstable += 1,
            Decision::AlreadyProcessed => self.already_processed += 1,
            Decision::Processed => {
                self.processed += 1;
                if r.status == Some(FileStatus::Success) {
                    self.succeeded += 1;
                } else {
                    self.failed += 1;
                }
            }
            Decision::WouldProcess => self.would_process += 1,
            Decision::HeldDuplicate => self.held_duplicates += 1,
            Decision::WouldHoldDuplicate => self.would_hold_duplicate += 1,
            Decision::Error => self.errors += 1,
            Decision::Deferred => {
                self.deferred += 1;
                self.cut_short = true;
            }
        }
        if always || self.files.len() < LISTED_FILES {
            self.files.push(r);
        } else {
            self.files_truncated = true;
        }
    }
}

/// A completed run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunReport {
    /// Run id.
    pub run_id: Uuid,
    /// Always `completed`.
    #[schema(value_type = String, example = "completed")]
    pub status: &'static str,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End (before the background archive).
    pub finished_at: DateTime<Utc>,
    /// Counts and decisions.
    pub summary: Summary,
    /// True for a dry run: nothing was claimed, sent or moved.
    pub dry_run: bool,
}

/// Why a run could not be performed: its machine code, HTTP status and
/// exit code, in one place for the API and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunFailure {
    /// The share could not be listed.
    ScanFailed,
    /// The run could not even be recorded.
    DatabaseUnavailable,
    /// Postgres failed during the run.
    DatabaseError,
    /// The local spool folder could not be created.
    SpoolUnavailable,
    /// The run task itself failed (a bug).
    Internal,
}

impl RunFailure {
    /// The stable machine code (`error` in the body).
    pub fn code(self) -> &'static str {
        match self {
            Self::ScanFailed => "scan_failed",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::DatabaseError => "database_error",
            Self::SpoolUnavailable => "spool_unavailable",
            Self::Internal => "internal_error",
        }
    }

    /// The HTTP status of the failed run: 502 when the share failed us, 503
    /// when a resource of our own did, 500 for a bug.
    pub fn http_status(self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::ScanFailed => StatusCode::BAD_GATEWAY,
            Self::DatabaseUnavailable | Self::DatabaseError | Self::SpoolUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
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
    /// This instance stopped (SIGTERM) or was presumed dead before the run
    /// ended: another live instance finishes it.
    #[error("run {run_id} was handed over to another instance")]
    HandedOver {
        /// The run, to look up with `GET /runs/{run_id}`.
        run_id: Uuid,
    },
    /// The run could not be performed.
    #[error("run failed ({}): {message}", failure.code())]
    Failed {
        /// Run id.
        run_id: Uuid,
        /// Start.
        started_at: DateTime<Utc>,
        /// What failed.
        failure: RunFailure,
        /// For a person.
        message: String,
        /// True for a dry run.
        dry_run: bool,
    },
}

impl RunError {
    /// The JSON body of a run that did not complete, the same for the API
    /// and for `coordinator run`.
    pub fn body(&self) -> serde_json::Value {
        match self {
            Self::Busy { running } => json!({
                "error": "run_in_progress",
                "message": "a run is already in progress",
                "run_id": running,
            }),
            Self::HandedOver { run_id } => json!({
                "error": "run_handed_over",
                "message": "this instance stopped before the run ended; another instance finishes it (GET /api/v1/coordinator/runs/{run_id} shows its outcome)",
                "run_id": run_id,
            }),
            Self::Failed {
                run_id,
                started_at,
                failure,
                message,
                dry_run,
            } => json!({
                "run_id": run_id,
                "status": "failed",
                "started_at": started_at,
                "error": failure.code(),
                "message": message,
                "dry_run": dry_run,
            }),
        }
    }

    /// The HTTP status of the answer.
    pub fn http_status(&self) -> axum::http::StatusCode {
        match self {
            Self::Busy { .. } => axum::http::StatusCode::CONFLICT,
            Self::HandedOver { .. } => axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Self::Failed { failure, .. } => failure.http_status(),
        }
    }
}

/// What the engine works with: the share, the database, the downstreams,
/// its metrics and the outcomes it keeps. Shared, behind one `Arc`, with the
/// processors and archivers it makes, so none copies them field by field.
#[derive(Clone)]
pub struct Deps {
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
    /// Counters and histograms of this engine, rendered by `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// Downstream answers whose write failed, written by a later run or pass.
    pub kept: Arc<KeptOutcomes>,
}

/// Which process an engine is, among the instances.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `INSTANCE_ID`: in the `runs` table and each file report.
    pub instance: String,
    /// This process among the instances: it holds claims and candidates.
    pub incarnation: Uuid,
}

/// The engine: its dependencies and settings, and the state of this
/// process's runs and background work.
pub struct Engine {
    deps: Arc<Deps>,
    settings: Arc<RunSettings>,
    /// `INSTANCE_ID`: in the `runs` table and each file report.
    instance: String,
    /// This process among the instances: it holds claims and candidates.
    incarnation: Uuid,
    /// Background work (archive passes, in-flight runs) to wait for on shutdown.
    tracker: TaskTracker,
    /// Held while this process takes a run's candidates: one taker per
    /// process, so it never holds more than its own capacity.
    taking: Arc<tokio::sync::Mutex<()>>,
    /// Told when this instance stored a run's candidates: its idle taker
    /// starts at once instead of at its next look.
    work_added: Arc<tokio::sync::Notify>,
    /// Count of finished background passes (for tests and, later, metrics).
    passes_done: tokio::sync::watch::Sender<u64>,
    /// Cancelled on shutdown: background passes start no new move or
    /// delivery, so the process exits promptly even while IQube hangs.
    stop: CancellationToken,
    /// Held while kept outcomes are written.
    kept_writer: Arc<tokio::sync::Mutex<()>>,
}

impl Engine {
    /// An engine over `deps` with `settings`, as the process `identity`;
    /// nothing runs until it is asked to.
    pub fn new(deps: Deps, settings: RunSettings, identity: Identity) -> Arc<Engine> {
        Arc::new(Engine {
            deps: Arc::new(deps),
            settings: Arc::new(settings),
            instance: identity.instance,
            incarnation: identity.incarnation,
            tracker: TaskTracker::new(),
            taking: Default::default(),
            work_added: Default::default(),
            passes_done: tokio::sync::watch::channel(0).0,
            stop: CancellationToken::new(),
            kept_writer: Default::default(),
        })
    }

    /// An engine with the same store, downstreams and settings over another
    /// share (a wrapper that injects faults, in tests), with its own
    /// background work.
    pub fn over(&self, source: Arc<dyn FileSource>) -> Arc<Engine> {
        Arc::new(Engine {
            deps: Arc::new(Deps {
                source,
                ..(*self.deps).clone()
            }),
            settings: self.settings.clone(),
            instance: format!("{}-over", self.instance),
            incarnation: self.incarnation,
            tracker: TaskTracker::new(),
            taking: self.taking.clone(),
            work_added: self.work_added.clone(),
            passes_done: tokio::sync::watch::channel(0).0,
            stop: Default::default(),
            kept_writer: self.kept_writer.clone(),
        })
    }

    /// The share, the database, the downstreams, metrics and kept outcomes.
    pub fn deps(&self) -> &Deps {
        &self.deps
    }

    /// The share.
    pub fn source(&self) -> &Arc<dyn FileSource> {
        &self.deps.source
    }

    /// The database.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.deps.store
    }

    /// Counters and histograms of this engine, rendered by `GET /metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.deps.metrics
    }

    /// The knobs of its runs.
    pub fn settings(&self) -> &RunSettings {
        &self.settings
    }

    /// `INSTANCE_ID`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// This process among the instances.
    pub fn incarnation(&self) -> Uuid {
        self.incarnation
    }

    /// Background work (archive passes, in-flight runs) to wait for on shutdown.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Cancelled on shutdown: no new claim, move or delivery starts after it.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Told when this instance stored a run's candidates.
    pub fn work_added(&self) -> &tokio::sync::Notify {
        &self.work_added
    }

    /// The count of finished background passes, to read or wait on.
    pub fn passes_done(&self) -> tokio::sync::watch::Receiver<u64> {
        self.passes_done.subscribe()
    }

    fn archiver(&self) -> Archiver {
        Archiver::new(self.deps.clone(), self.settings.clone(), self.stop.clone())
    }

    /// Writes the outcomes kept after a failed write, with the claim they
    /// were got under; one whose claim was taken over meanwhile stays kept
    /// until this process's takeover of that version writes it.
    pub async fn write_kept_outcomes(&self) {
        // One writer at a time: a run and a background pass may both start one.
        let _one = self.kept_writer.lock().await;
        for k in self.deps.kept.all() {
            let o = k.recorded_later();
            let written = self
                .deps
                .store
                .set_status(
                    k.file_id,
                    k.token,
                    o.status.clone(),
                    &o.detail,
                    o.notification.as_ref(),
                )
                .await;
            match written {
                Ok(()) => {
                    tracing::info!(remitter = %k.remitter, file = %k.file_name, status = o.status.as_str(), "kept outcome recorded");
                    self.deps.metrics.file_recorded(o.status.as_str());
                    self.deps.kept.written(&k);
                }
                Err(e) => {
                    tracing::warn!(remitter = %k.remitter, file = %k.file_name, error = %e, "kept outcome not recorded yet")
                }
            }
        }
    }

    /// One background pass now: kept outcomes, superseded versions,
    /// notifications, housekeeping.
    pub async fn background_pass(&self) -> PassReport {
        self.write_kept_outcomes().await;
        let report = self.archiver().pass().await;
        if let Some(age) = self.settings.run_detail_retention {
            match self.deps.store.prune_run_details(age).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(runs = n, "per-file lists of old runs pruned"),
                Err(e) => tracing::warn!(error = %e, "could not prune old runs' per-file lists"),
            }
        }
        self.seal_audit_chain(false).await;
        self.passes_done.send_modify(|n| *n += 1);
        report
    }

    /// Seals the audit chain (CONTRACT §11) and publishes its head in
    /// `coordinator_audit_chain_head_info`; best effort: a failed seal is a
    /// warning (`after_run`) or a debug line, the next pass seals what it
    /// left. After a run the head is also logged (`audit chain head`), and
    /// so is any new seal.
    pub async fn seal_audit_chain(&self, after_run: bool) {
        match self.deps.store.seal_audit_chain().await {
            Ok(sealed) => {
                if let Some((table, row)) = sealed.suspect {
                    tracing::error!(
                        table = table.as_str(),
                        row,
                        "audit chain: a row just sealed has no valid MAC: written behind the \
                         coordinator's back, or with another AUDIT_KEY (coordinator audit verify names it)"
                    );
                }
                let Some(head) = &sealed.head else { return };
                let link = head.link_hex();
                self.deps.metrics.set_audit_chain_head(head.seal_id, &link);
                if after_run || sealed.seals_written > 0 {
                    tracing::info!(
                        seal_id = head.seal_id,
                        link = %link,
                        seals_written = sealed.seals_written,
                        rows_sealed = sealed.rows_sealed,
                        "audit chain head"
                    );
                }
            }
            Err(e) if after_run => {
                tracing::warn!(error = %e, "the audit chain could not be sealed; the next pass seals it")
            }
            Err(e) => tracing::debug!(error = %e, "the audit chain could not be sealed"),
        }
    }

    /// Schedules a background pass on the tracker.
    pub fn spawn_background(self: &Arc<Self>) {
        let me = self.clone();
        self.tracker.spawn(async move {
            me.background_pass().await;
        });
    }

    /// Performs one run, shared with every live instance (CONTRACT §10):
    /// this instance scans and plans it, every instance takes its
    /// candidates, and this one writes the summary once every candidate has
    /// a report. The archive continues in the background afterwards.
    pub async fn run(self: &Arc<Self>, trigger: &str) -> Result<RunReport, RunError> {
        let run_id = Uuid::new_v4();
        let started_at = Utc::now();
        let clock = std::time::Instant::now();
        let cpu_at_start = crate::telemetry::process_cpu();
        let span = tracing::info_span!("run", %run_id, trigger);
        // A run whose owner died is finished first (adopted), then this one starts.
        let mut adopted_one = false;
        loop {
            match self
                .deps
                .store
                .begin_run(run_id, trigger, &self.instance, self.incarnation)
                .await
            {
                Ok(RunStart::Started) => break,
                Ok(RunStart::Busy {
                    running,
                    owner_alive: false,
                }) if !adopted_one => {
                    adopted_one = true;
                    if !self.adopt(running).await {
                        return Err(RunError::Busy {
                            running: Some(running),
                        });
                    }
                }
                Ok(RunStart::Busy { running, .. }) => {
                    return Err(RunError::Busy {
                        running: Some(running),
                    });
                }
                Err(e) => {
                    let message = format!("the run could not be recorded: {e}");
                    tracing::error!(%run_id, error = %message, "run failed");
                    // No outbox without a database: tell IQube directly, once.
                    let payload = Notification::RunFailed {
                        run_id,
                        reason: &message,
                    }
                    .payload();
                    if let Err(e) = self
                        .deps
                        .iqube
                        .notify(&payload, &format!("run_failed:{run_id}"))
                        .await
                    {
                        tracing::error!(%run_id, error = %e, "IQube could not be told of the failed run");
                    }
                    self.deps.metrics.run_finished("failed", clock.elapsed());
                    return Err(RunError::Failed {
                        run_id,
                        started_at,
                        failure: RunFailure::DatabaseUnavailable,
                        message,
                        dry_run: false,
                    });
                }
            }
        }
        let outcome = tracing::Instrument::instrument(
            async {
                let d = self.plan_run(run_id).await?;
                self.complete_run(run_id, d).await
            },
            span,
        )
        .await;
        if let (Some(a), Some(b)) = (cpu_at_start, crate::telemetry::process_cpu()) {
            // The whole process: with a run at a time, nearly all of it is the run's.
            tracing::info!(%run_id, cpu_s = (b.saturating_sub(a)).as_secs_f64(), wall_s = clock.elapsed().as_secs_f64(), "run's CPU");
        }
        self.end_run(run_id, started_at, clock, outcome).await
    }

    /// Finishes a run whose owner died or stopped (CONTRACT §10: the starter
    /// may die): plans it if its starter died before planning, takes its
    /// remaining candidates and writes its summary, `finished_by` this
    /// instance. False when another instance adopted it first.
    pub async fn adopt(self: &Arc<Self>, run_id: Uuid) -> bool {
        let plan = match self.deps.store.adopt_run(run_id, self.incarnation).await {
            Ok(Some(plan)) => plan,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(%run_id, error = %e, "could not adopt the run; trying again later");
                return false;
            }
        };
        tracing::info!(%run_id, planned = plan.is_some(), "adopted a run whose owner is gone");
        let started_at = Utc::now();
        let clock = std::time::Instant::now();
        let span = tracing::info_span!("run", %run_id, adopted = true);
        let outcome = tracing::Instrument::instrument(
            async {
                let d = match plan {
                    Some(plan) => serde_json::from_value(plan).map_err(|e| {
                        (
                            RunFailure::Internal,
                            format!("the run's stored plan could not be read: {e}"),
                        )
                    })?,
                    None => self.plan_run(run_id).await?,
                };
                self.complete_run(run_id, d).await
            },
            span,
        )
        .await;
        match self.end_run(run_id, started_at, clock, outcome).await {
            Ok(report) => {
                tracing::info!(%run_id, processed = report.summary.processed, "adopted run completed")
            }
            Err(e) => tracing::warn!(%run_id, error = %e, "adopted run did not complete"),
        }
        true
    }

    /// Records the end of a run this instance owns, and answers for it.
    async fn end_run(
        self: &Arc<Self>,
        run_id: Uuid,
        started_at: DateTime<Utc>,
        clock: std::time::Instant,
        outcome: Result<Summary, Ended>,
    ) -> Result<RunReport, RunError> {
        let fail = |failure: RunFailure, message: String| {
            self.deps.metrics.run_finished("failed", clock.elapsed());
            RunError::Failed {
                run_id,
                started_at,
                failure,
                message,
                dry_run: false,
            }
        };
        match outcome {
            Ok(summary) => {
                let finished_at = Utc::now();
                let body = serde_json::to_value(&summary).unwrap_or_default();
                let end = RunEnd {
                    run_id,
                    owner: self.incarnation,
                    finished_by: &self.instance,
                    status: "completed",
                    summary: &body,
                    error: None,
                    notification: None,
                };
                match self
                    .persist("recording the run's outcome", || {
                        self.deps.store.finish_run(&end)
                    })
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(%run_id, "the run was adopted by another instance meanwhile (this one was presumed dead); its summary is that instance's");
                        return Err(RunError::HandedOver { run_id });
                    }
                    Err(e) => {
                        tracing::error!(%run_id, error = %e, "could not record the run's outcome")
                    }
                }
                self.deps.metrics.run_finished("completed", clock.elapsed());
                // The pass first: sealing must not delay the archive (a
                // run starting meanwhile would find the files still there).
                self.spawn_background();
                self.seal_audit_chain(true).await;
                Ok(RunReport {
                    run_id,
                    status: "completed",
                    started_at,
                    finished_at,
                    summary,
                    dry_run: false,
                })
            }
            Err(Ended::HandedOver) => Err(RunError::HandedOver { run_id }),
            Err(Ended::Failed(failure, message)) => {
                tracing::error!(%run_id, code = failure.code(), error = %message, "run failed");
                let payload = Notification::RunFailed {
                    run_id,
                    reason: &message,
                }
                .payload();
                let end = RunEnd {
                    run_id,
                    owner: self.incarnation,
                    finished_by: &self.instance,
                    status: "failed",
                    summary: &json!({}),
                    error: Some((failure.code(), &message)),
                    notification: Some(&payload),
                };
                if let Err(e) = self
                    .persist("recording the failed run", || {
                        self.deps.store.finish_run(&end)
                    })
                    .await
                {
                    tracing::error!(%run_id, error = %e, "could not record the failed run; telling IQube directly");
                    let _ = self
                        .deps
                        .iqube
                        .notify(&payload, &format!("run_failed:{run_id}"))
                        .await;
                }
                self.spawn_background();
                self.seal_audit_chain(true).await;
                Err(fail(failure, message))
            }
        }
    }

    /// A dry run's verdict on copies (CONTRACT §12, `hold`): the files it
    /// would process that may be copies — the size of a content claimed for
    /// the remitter within the window, or of another such file — are read
    /// and hashed (nothing claimed or kept), and a copy is reported
    /// `would_hold_duplicate` naming what it copies. One query for the
    /// contents; files of any other size are not read.
    async fn dry_copies(&self, reports: &mut [FileReport], would: &[(usize, scan::Candidate)]) {
        if would.is_empty() {
            return;
        }
        let remitters: Vec<String> = would
            .iter()
            .map(|(_, c)| c.remitter.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let known = match self
            .deps
            .store
            .known_contents(&remitters, self.settings.duplicate_window_days)
            .await
        {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "dry run: the duplicate check was skipped");
                return;
            }
        };
        let index = plan::duplicates::ContentIndex::new(known);
        let candidates: Vec<&scan::Candidate> = would.iter().map(|(_, c)| c).collect();
        let sized: Vec<(&str, &str, u64)> = candidates
            .iter()
            .map(|c| (c.remitter.as_str(), c.entry.name.as_str(), c.entry.size))
            .collect();
        let read = index.to_read(&sized);
        let mut md5s = Vec::with_capacity(candidates.len());
        for (c, read) in candidates.iter().zip(read) {
            md5s.push(if read {
                crate::process::hash_only(&self.deps, &self.settings, c).await
            } else {
                None
            });
        }
        let keyed: Vec<(&str, &str, Option<&str>)> = candidates
            .iter()
            .zip(&md5s)
            .map(|(c, m)| (c.remitter.as_str(), c.entry.name.as_str(), m.as_deref()))
            .collect();
        for ((i, _), verdict) in would.iter().zip(index.verdicts(&keyed)) {
            let Some(copy) = verdict else { continue };
            let what = match copy {
                plan::duplicates::CopyOf::Claimed { id, file_name } => {
                    format!("{file_name} (file {id})")
                }
                plan::duplicates::CopyOf::InThisRun { file_name } => {
                    format!("{file_name}, which this run would send first")
                }
            };
            let r = &mut reports[*i];
            r.decision = Decision::WouldHoldDuplicate;
            r.reason = Some(format!(
                "the same content as {what}: a real run would hold it as duplicate_content"
            ));
        }
    }

    /// Computes every decision a real run would take, and performs none
    /// (CONTRACT §9): the same scan, queries and two looks as [`Self::run`],
    /// then the files a real run would send are reported `would_process`.
    /// It takes no run lock, so it neither waits for nor blocks a real run;
    /// it writes only its own `runs` row, and tells IQube nothing.
    pub async fn dry_run(&self, trigger: &str) -> Result<RunReport, RunError> {
        let run_id = Uuid::new_v4();
        let started_at = Utc::now();
        let span = tracing::info_span!("dry_run", %run_id, trigger);
        let outcome = tracing::Instrument::instrument(self.look(), span).await;
        let finished_at = Utc::now();
        match outcome {
            Ok((
                plan::Plan {
                    decided: mut d,
                    work,
                },
                known,
            )) => {
                let mut would = Vec::new();
                for g in &work {
                    let e = &g.newest.entry;
                    // A claim in flight: a real run's claim would find it.
                    let in_flight = known.iter().any(|k| {
                        k.remitter == g.newest.remitter
                            && k.file_name == e.name
                            && k.size == e.size as i64
                            && k.mtime == e.mtime
                            && k.status == FileStatus::Processing
                    });
                    let report = if in_flight {
                        FileReport::new(
                            &g.newest,
                            Decision::AlreadyProcessed,
                            Some("claimed by a run that has not finished (a real run takes the claim over only once the instance holding it is dead)".into()),
                        )
                        .with_status(FileStatus::Processing)
                    } else {
                        FileReport::new(
                            &g.newest,
                            Decision::WouldProcess,
                            Some("stable and not processed before: a real run would claim it and send it downstream".into()),
                        )
                    };
                    d.after_processing(g, &report);
                    if report.decision == Decision::WouldProcess {
                        would.push((d.reports.len(), g.newest.clone()));
                    }
                    d.reports.push(report);
                }
                if self.settings.duplicate_content == crate::config::DuplicateContent::Hold {
                    self.dry_copies(&mut d.reports, &would).await;
                }
                let summary = summarize(d);
                let body = serde_json::to_value(&summary).unwrap_or_default();
                let row = crate::store::DryRunRow {
                    run_id,
                    trigger,
                    instance: &self.instance,
                    started_at,
                    status: "completed",
                    summary: &body,
                    error: None,
                };
                if let Err(e) = self.deps.store.record_dry_run(&row).await {
                    tracing::error!(%run_id, error = %e, "could not record the dry run");
                }
                tracing::info!(%run_id, would_process = summary.would_process, "dry run completed");
                Ok(RunReport {
                    run_id,
                    status: "completed",
                    started_at,
                    finished_at,
                    summary,
                    dry_run: true,
                })
            }
            Err((failure, message)) => {
                tracing::warn!(%run_id, code = failure.code(), error = %message, "dry run failed");
                let row = crate::store::DryRunRow {
                    run_id,
                    trigger,
                    instance: &self.instance,
                    started_at,
                    status: "failed",
                    summary: &json!({}),
                    error: Some((failure.code(), &message)),
                };
                if let Err(e) = self.deps.store.record_dry_run(&row).await {
                    tracing::error!(%run_id, error = %e, "could not record the failed dry run");
                }
                Err(RunError::Failed {
                    run_id,
                    started_at,
                    failure,
                    message,
                    dry_run: true,
                })
            }
        }
    }

    /// The first look, the queries, the pause and the second look: every
    /// decision before any download, with the claimed versions of the groups
    /// found. Reads only; shared by real and dry runs.
    async fn look(&self) -> Result<(plan::Plan, Vec<KnownVersion>), (RunFailure, String)> {
        let s = &self.settings;
        let db_error = |e: crate::store::StoreError| (RunFailure::DatabaseError, e.to_string());
        let scan = scan::scan(
            self.deps.source.as_ref(),
            &s.source_dir,
            &s.archive_dir,
            &s.ignore,
        )
        .await
        .map_err(|e| {
            (
                RunFailure::ScanFailed,
                format!("the share could not be listed: {e}"),
            )
        })?;
        tracing::debug!(
            folders = scan.remitters,
            candidates = scan.candidates.len(),
            "first look done"
        );
        // Every folder's first look is done: the second comes one interval
        // from now, and the queries below run during that interval.
        let second_look_at = tokio::time::Instant::now() + s.stable_check_interval;
        let keys: Vec<String> = scan
            .candidates
            .iter()
            .map(|c| plan::key_of(&c.remitter, &c.entry.name))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let known = self
            .deps
            .store
            .group_versions(&keys)
            .await
            .map_err(db_error)?;
        let remembered = self
            .deps
            .store
            .pending_superseded()
            .await
            .map_err(db_error)?;
        let now = match self.deps.source.server_now().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "server clock unavailable; using the local clock for Policy A");
                Utc::now()
            }
        };
        let draft = plan::draft(plan::Inputs {
            scan,
            known: &known,
            remembered: &remembered,
            now,
            min_age: s.stable_min_age,
        });
        // The second look: one listing per remitter folder with a pending file.
        let mut second = HashMap::new();
        let folders = draft.folders_to_recheck();
        if !folders.is_empty() {
            let warm = self.deps.store.warm_up(s.max_concurrent_files);
            let _ = tokio::join!(
                tokio::time::sleep_until(second_look_at),
                tokio::time::timeout_at(second_look_at, warm)
            );
        }
        let mut listings = futures::stream::iter(folders)
            .map(|remitter| async move {
                let listing = self
                    .deps
                    .source
                    .list(&crate::source::join(&[&s.source_dir, &remitter]))
                    .await
                    .map_err(|e| e.to_string());
                (remitter, listing)
            })
            .buffer_unordered(scan::LISTINGS_AT_ONCE);
        while let Some((remitter, listing)) = listings.next().await {
            if let Err(why) = &listing {
                tracing::warn!(remitter = %remitter, error = %why, "second look: folder could not be listed");
            }
            second.insert(remitter, listing);
        }
        tracing::debug!(folders = second.len(), "second look done");
        Ok((draft.settle(&second), known))
    }

    /// Scans and plans a run, then stores its plan and its candidates
    /// (ranked for the fair share) as the run's work.
    async fn plan_run(&self, run_id: Uuid) -> Result<plan::Decided, Ended> {
        let s = &self.settings;
        // Before the plan reads the rows: a kept outcome makes its row final.
        self.write_kept_outcomes().await;
        let (
            plan::Plan {
                decided: mut d,
                work,
            },
            _,
        ) = self.look().await.map_err(Ended::from)?;
        if let Err(e) = self.deps.store.rearchive(run_id, &d.rearchive).await {
            tracing::error!(error = %e, "could not queue re-uploaded files for the archive; the next run tries again");
        }
        if !work.is_empty() {
            std::fs::create_dir_all(&s.spool_dir).map_err(|e| {
                Ended::Failed(
                    RunFailure::SpoolUnavailable,
                    format!("cannot create {}: {e}", s.spool_dir.display()),
                )
            })?;
        }
        // Round-robin across remitters, oldest first within one (CONTRACT §10);
        // possible copies among themselves in copy order (§12).
        let mut work = plan::fair_share(work);
        if s.duplicate_content == crate::config::DuplicateContent::Hold {
            plan::duplicates::order_copies(&mut work);
        }
        if work.is_empty() {
            // Nothing to share: no plan to store (an adopter would plan again).
            return Ok(d);
        }
        d.keep_rows_for(&work);
        let stored = serde_json::to_value(&d).map_err(|e| {
            Ended::Failed(
                RunFailure::Internal,
                format!("the plan could not be encoded: {e}"),
            )
        })?;
        self.persist("storing the run's work", || {
            self.deps.store.add_work(run_id, &stored, &work)
        })
        .await
        .map_err(|e| Ended::Failed(RunFailure::DatabaseError, e.to_string()))?;
        tracing::debug!(candidates = work.len(), "run planned");
        self.work_added.notify_waiters();
        Ok(d)
    }

    /// Takes candidates until none is open (this instance's and the
    /// others'), then builds the summary from every report. A stop with
    /// another live instance hands the run over; with none, the candidates
    /// not started are closed as `deferred`.
    async fn complete_run(&self, run_id: Uuid, mut d: plan::Decided) -> Result<Summary, Ended> {
        let db =
            |e: crate::store::StoreError| Ended::Failed(RunFailure::DatabaseError, e.to_string());
        loop {
            self.take_candidates(run_id).await;
            let open = self
                .persist("counting the run's open candidates", || {
                    self.deps.store.open_work(run_id)
                })
                .await
                .map_err(db)?;
            if open == 0 {
                break;
            }
            if self.stop.is_cancelled() {
                let others = self
                    .persist("looking for other instances", || {
                        self.deps.store.others_alive(self.incarnation)
                    })
                    .await
                    .map_err(db)?;
                if others
                    && self
                        .persist("handing the run over", || {
                            self.deps.store.hand_over(run_id, self.incarnation)
                        })
                        .await
                        .map_err(db)?
                {
                    tracing::info!(%run_id, open, "stopping: the run is handed over to the other instances");
                    return Err(Ended::HandedOver);
                }
                self.close_as_deferred(run_id).await.map_err(db)?;
            }
            // Others hold the rest: wait for their reports (or their death).
            tokio::select! {
                _ = tokio::time::sleep(WORK_POLL) => {}
                _ = self.stop.cancelled(), if !self.stop.is_cancelled() => {}
            }
        }
        let results = self
            .persist("reading the run's reports", || {
                self.deps.store.run_results(run_id)
            })
            .await
            .map_err(db)?;
        for (group, report) in results {
            let report = report.unwrap_or_else(|| {
                FileReport::new(
                    &group.newest,
                    Decision::Error,
                    Some("no report was recorded for this candidate".into()),
                )
            });
            d.after_processing(&group, &report);
            d.reports.push(report);
        }
        let to_archive = std::mem::take(&mut d.to_archive);
        let summary = summarize(d);
        tracing::info!(
            scanned = summary.scanned,
            processed = summary.processed,
            unstable = summary.unstable,
            errors = summary.errors,
            "run completed"
        );
        if let Err(e) = self.deps.store.record_superseded(run_id, &to_archive).await {
            // Not fatal: nothing was moved, and the next run decides again.
            tracing::error!(error = %e, "could not record superseded versions; they wait for the next run");
        }
        Ok(summary)
    }

    /// A stopping owner with no other live instance: the candidates nobody
    /// started (and those of dead instances) are reported `deferred`,
    /// untouched, for the next run.
    async fn close_as_deferred(&self, run_id: Uuid) -> Result<(), crate::store::StoreError> {
        let reports: Vec<(i32, FileReport)> = self
            .deps
            .store
            .take_work(run_id, self.incarnation, i64::MAX)
            .await?
            .into_iter()
            .map(|t| {
                let mut report = crate::process::deferred(&t.group.newest);
                report.instance = Some(self.instance.clone());
                (t.seq, report)
            })
            .collect();
        self.deps
            .store
            .complete_work(run_id, self.incarnation, &self.instance, &reports)
            .await?;
        Ok(())
    }

    /// A run's bookkeeping (reports, progress, the run's end) lives in
    /// Postgres: tried again through transient errors (a restart, an
    /// outage) for as long as this instance runs, a few times once it stops.
    async fn persist<T, F, Fut>(
        &self,
        what: &'static str,
        f: F,
    ) -> Result<T, crate::store::StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
    {
        let after_stop = std::sync::atomic::AtomicU32::new(0);
        f.retry(crate::store::TRANSIENT_RETRY.without_max_times())
            .when(|e: &crate::store::StoreError| {
                e.is_transient()
                    && (!self.stop.is_cancelled()
                        || after_stop.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            < ATTEMPTS_AFTER_STOP)
            })
            .notify(|e, pause| tracing::warn!(error = %e, ?pause, "{what}: trying again"))
            .await
    }

    /// Takes the run's candidates, up to this instance's capacity at a
    /// time, until none is left to take and every one it took is reported.
    /// Two stages: a few files are downloaded and claimed ahead, so a file
    /// that leaves FOI/ITM is followed at once by one ready to send. At
    /// most `max_concurrent_files` are with FOI and ITM at a time, and at
    /// most `claimed_ahead` more are held; a candidate is taken only with a
    /// free place.
    pub async fn take_candidates(&self, run_id: Uuid) {
        let _one_taker = self.taking.lock().await;
        let s = &self.settings;
        if let Err(e) = std::fs::create_dir_all(&s.spool_dir) {
            tracing::error!(error = %e, dir = %s.spool_dir.display(), "no spool folder; taking no candidates");
            return;
        }
        let processor = Processor::new(
            self.deps.clone(),
            self.settings.clone(),
            self.incarnation,
            self.stop.clone(),
        );
        let places = Arc::new(tokio::sync::Semaphore::new(
            s.max_concurrent_files + claimed_ahead(s.max_concurrent_files),
        ));
        let sending = tokio::sync::Semaphore::new(s.max_concurrent_files);
        let mut held = futures::stream::FuturesUnordered::new();
        let copies = crate::process::copies::CopyOrder::default();
        // Reports are written in batches, one statement for all that are
        // ready while the previous batch was being written.
        let mut reports: Vec<(i32, FileReport)> = Vec::new();
        let mut writing: Option<futures::future::BoxFuture<'_, ()>> = None;
        let mut taking: Option<futures::future::BoxFuture<'_, _>> = None;
        let mut asked = 0;
        // Taken ahead of a free place (at most `claimed_ahead` more), so a
        // file that ends is followed at once, not after a take's round trip.
        let mut queue = std::collections::VecDeque::new();
        let ahead = claimed_ahead(s.max_concurrent_files);
        // Once a take finds fewer candidates than it asked for, the rest are
        // held by others: this call takes no more (the owner looks again).
        let mut exhausted = false;
        loop {
            if self.stop.is_cancelled() || processor.work_lost() {
                // Given back below, with any other candidate not reported.
                queue.clear();
            }
            while !queue.is_empty() {
                let Ok(place) = places.clone().try_acquire_owned() else {
                    break;
                };
                if let Some((t, ticket)) = queue.pop_front() {
                    held.push(
                        self.process_candidate(&processor, &sending, run_id, t, ticket, place),
                    );
                }
            }
            let want = (places.available_permits() + ahead).saturating_sub(queue.len());
            if taking.is_none()
                && want > 0
                && !exhausted
                && !self.stop.is_cancelled()
                && !processor.work_lost()
            {
                asked = want;
                taking = Some(Box::pin(self.deps.store.take_work(
                    run_id,
                    self.incarnation,
                    want as i64,
                )));
            }
            if writing.is_none() && !reports.is_empty() {
                let batch = std::mem::take(&mut reports);
                writing = Some(Box::pin(self.record_reports(run_id, batch)));
            }
            if taking.is_none() && writing.is_none() && held.is_empty() && queue.is_empty() {
                break;
            }
            // The files held go on while a take or a write waits for Postgres.
            tokio::select! {
                taken = in_flight(&mut taking) => {
                    taking = None;
                    match taken {
                        Ok(taken) => {
                            exhausted = taken.len() < asked;
                            // Registered in take order: a possible copy
                            // waits only for members ahead of it.
                            queue.extend(taken.into_iter().map(|t| {
                                let ticket = t.group.copies.as_ref().map(|p| copies.take(p));
                                (t, ticket)
                            }));
                        }
                        Err(e) => {
                            // The owner looks again after its pause.
                            tracing::warn!(error = %e, "could not take candidates; trying again later");
                            exhausted = true;
                        }
                    }
                }
                Some(done) = held.next(), if !held.is_empty() => reports.extend(done),
                () = in_flight(&mut writing) => writing = None,
            }
        }
        // Every candidate taken is reported or given back by now; one whose
        // report could not be written is given back too, so the run can end.
        if let Err(e) = self
            .deps
            .store
            .release_work(run_id, self.incarnation, None)
            .await
        {
            tracing::warn!(error = %e, "could not give back unreported candidates");
        }
    }

    /// One candidate: claim, then FOI and ITM with a sending place; its
    /// report, for the run's work (`None`: given back, or taken over).
    async fn process_candidate(
        &self,
        processor: &Processor,
        sending: &tokio::sync::Semaphore,
        run_id: Uuid,
        t: crate::store::TakenWork,
        copies: Option<crate::process::copies::CopyTicket>,
        _place: tokio::sync::OwnedSemaphorePermit,
    ) -> Option<(i32, FileReport)> {
        let c = &t.group.newest;
        if t.taken_over {
            tracing::info!(remitter = %c.remitter, file = %c.entry.name, "candidate taken over from a dead instance");
        }
        let mut report = match processor
            .claim(run_id, t.seq, c, &t.group.base_name, copies)
            .await
        {
            Claimed::Done(report) => report,
            Claimed::File(file) => {
                let _sending = sending.acquire().await;
                processor.send(run_id, c, file).await
            }
            Claimed::Stopping => {
                if let Err(e) = self
                    .deps
                    .store
                    .release_work(run_id, self.incarnation, Some(t.seq))
                    .await
                {
                    tracing::warn!(error = %e, "could not give the candidate back");
                }
                return None;
            }
            Claimed::Lost => return None,
        };
        if let (Decision::Processed, Some(status)) = (report.decision, &report.status) {
            self.deps.metrics.file_recorded(status.as_str());
        }
        report.instance = Some(self.instance.clone());
        Some((t.seq, report))
    }

    /// Writes a batch of reports; a report refused (its candidate taken
    /// over meanwhile) is the new holder's to give.
    async fn record_reports(&self, run_id: Uuid, batch: Vec<(i32, FileReport)>) {
        let written = self
            .persist("recording candidates' reports", || {
                self.deps
                    .store
                    .complete_work(run_id, self.incarnation, &self.instance, &batch)
            })
            .await;
        match written {
            Ok(recorded) => {
                for (seq, r) in batch.iter().filter(|(seq, _)| !recorded.contains(seq)) {
                    tracing::warn!(seq, remitter = %r.remitter, file = %r.file_name, "the candidate was taken over meanwhile; its report is the new holder's");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, reports = batch.len(), "reports could not be recorded; their candidates are given back")
            }
        }
    }
}

/// Awaits the future in `slot`, or never when there is none (a `select!`
/// branch with nothing to wait for).
async fn in_flight<T>(slot: &mut Option<futures::future::BoxFuture<'_, T>>) -> T {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// How a run this instance owns ended without a summary.
enum Ended {
    /// It could not be performed.
    Failed(RunFailure, String),
    /// This instance stopped; another finishes it.
    HandedOver,
}

impl From<(RunFailure, String)> for Ended {
    fn from((f, m): (RunFailure, String)) -> Self {
        Self::Failed(f, m)
    }
}

/// How often an owner looks at the progress of the others, and an idle
/// instance for a run to take part in.
pub const WORK_POLL: Duration = Duration::from_millis(200);

/// Attempts at a run's bookkeeping once the instance is stopping.
const ATTEMPTS_AFTER_STOP: u32 = 3;

/// The summary of a run's decisions.
fn summarize(d: plan::Decided) -> Summary {
    let mut summary = Summary {
        scanned: d.scanned,
        ..Default::default()
    };
    for f in d.folder_errors {
        summary.errors += 1;
        summary.folder_errors.push(f);
    }
    for r in d.reports {
        summary.push(r);
    }
    summary
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
