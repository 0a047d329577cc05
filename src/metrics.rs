//! Prometheus metrics (CONTRACT §9, `GET /metrics`). One [`Metrics`] per
//! engine, each with its own registry, so several coordinators in one
//! process (the integration tests) never share or double-register a series.
//! The engine counts where things happen; the backlog gauges are set from
//! one query per scrape.

use crate::downstream::{
    DownstreamError, Extractor, FoiOutcome, ItmSubmission, Notifier, Submitter,
};
use crate::source::Content;
use async_trait::async_trait;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// The `Content-Type` of [`Metrics::render`] (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Backlog an operator watches, counted by the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Notifications not delivered yet.
    pub outbox_pending: i64,
    /// Files and superseded versions waiting for their archive move.
    pub archive_pending: i64,
    /// Files with a failure status nobody resolved or retried yet.
    pub awaiting_operator: i64,
}

/// The coordinator's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    runs: Family<Labels, Counter>,
    scheduled_skipped: Counter,
    run_duration: Histogram,
    files: Family<Labels, Counter>,
    downstream: HistogramFamily,
    bytes_read: Counter,
    outbox_pending: Gauge,
    archive_pending: Gauge,
    awaiting_operator: Gauge,
    last_run: Family<Labels, Gauge<f64, AtomicU64>>,
    files_in_flight: Gauge,
    claims_taken_over: Counter,
    auth_failures: Family<Labels, Counter>,
    audit_chain_head: Family<Labels, Gauge>,
}

/// One file this instance holds (claimed, not yet recorded): counted in
/// `coordinator_files_in_flight` until dropped.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Seconds, from 5 ms to about 20 minutes: downstream calls and whole runs.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

fn status(s: &str) -> Labels {
    vec![("status", s.to_string())]
}

fn downstream_labels(service: &str, outcome: &str) -> Labels {
    vec![
        ("service", service.to_string()),
        ("outcome", outcome.to_string()),
    ]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every series registered; run outcomes and downstream calls start at
    /// 0 so a scrape shows them before the first run (the last-run
    /// timestamps appear with the first run of each status).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let runs = Family::<Labels, Counter>::default();
        let scheduled_skipped = Counter::default();
        let run_duration = seconds_histogram();
        let files = Family::<Labels, Counter>::default();
        let downstream: HistogramFamily = Family::new_with_constructor(seconds_histogram);
        let bytes_read = Counter::default();
        let (outbox_pending, archive_pending, awaiting_operator) =
            (Gauge::default(), Gauge::default(), Gauge::default());
        let last_run = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let (files_in_flight, claims_taken_over) = (Gauge::default(), Counter::default());
        let auth_failures = Family::<Labels, Counter>::default();
        let audit_chain_head = Family::<Labels, Gauge>::default();
        // prometheus-client appends `_total` to counter names.
        registry.register(
            "coordinator_runs",
            "Runs finished, by status (dry runs not counted)",
            runs.clone(),
        );
        registry.register(
            "coordinator_scheduled_runs_skipped",
            "Scheduled runs skipped because another run was in progress",
            scheduled_skipped.clone(),
        );
        registry.register(
            "coordinator_run_duration_seconds",
            "Duration of runs, from the run lock to the answer",
            run_duration.clone(),
        );
        registry.register(
            "coordinator_files",
            "File outcomes recorded, by status",
            files.clone(),
        );
        registry.register(
            "coordinator_downstream_request_duration_seconds",
            "Duration of FOI (retries included), ITM and IQube calls, by service and outcome",
            downstream.clone(),
        );
        registry.register(
            "coordinator_bytes_read",
            "Bytes downloaded from the share",
            bytes_read.clone(),
        );
        registry.register(
            "coordinator_outbox_pending",
            "IQube notifications not delivered yet",
            outbox_pending.clone(),
        );
        registry.register(
            "coordinator_archive_pending",
            "Files and superseded versions waiting for their archive move",
            archive_pending.clone(),
        );
        registry.register(
            "coordinator_files_awaiting_operator",
            "Files with a failure status not yet resolved or retried",
            awaiting_operator.clone(),
        );
        registry.register(
            "coordinator_last_run_timestamp_seconds",
            "Unix time of the end of the last run, by status",
            last_run.clone(),
        );
        registry.register(
            "coordinator_files_in_flight",
            "Files this instance holds now: claimed and not yet recorded",
            files_in_flight.clone(),
        );
        registry.register(
            "coordinator_claims_taken_over",
            "Claims this instance took over from a dead instance (or a lapsed claim from before instances)",
            claims_taken_over.clone(),
        );
        registry.register(
            "coordinator_auth_failures",
            "Requests refused with 401, by reason (missing, unknown, expired, revoked, invalid_jwt, unavailable)",
            auth_failures.clone(),
        );
        registry.register(
            "coordinator_audit_chain_head_info",
            "The newest seal of the audit chain (CONTRACT §11): 1 for its id and link, so that a copy \
             outside the database shows whether the chain's tail was cut",
            audit_chain_head.clone(),
        );
        for s in ["completed", "failed"] {
            drop(runs.get_or_create(&status(s)));
        }
        drop(files.get_or_create(&status("success")));
        for service in ["foi", "itm", "iqube"] {
            for outcome in ["ok", "error"] {
                drop(downstream.get_or_create(&downstream_labels(service, outcome)));
            }
        }
        Self {
            registry,
            runs,
            scheduled_skipped,
            run_duration,
            files,
            downstream,
            bytes_read,
            outbox_pending,
            archive_pending,
            awaiting_operator,
            last_run,
            files_in_flight,
            claims_taken_over,
            auth_failures,
            audit_chain_head,
        }
    }

    /// A bearer was refused with `401` for `reason`.
    pub fn auth_failed(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// The audit chain's newest seal: the one series of
    /// `coordinator_audit_chain_head_info`.
    pub fn set_audit_chain_head(&self, seal_id: i64, link_hex: &str) {
        let labels = vec![
            ("seal_id", seal_id.to_string()),
            ("link", link_hex.to_string()),
        ];
        if self.audit_chain_head.get(&labels).is_some() {
            return;
        }
        self.audit_chain_head.clear();
        self.audit_chain_head.get_or_create(&labels).set(1);
    }

    /// A file was claimed by this instance: in flight until the guard drops.
    pub fn file_in_flight(&self) -> InFlight {
        self.files_in_flight.inc();
        InFlight(self.files_in_flight.clone())
    }

    /// Files this instance holds now.
    pub fn files_in_flight(&self) -> i64 {
        self.files_in_flight.get()
    }

    /// A claim of a dead holder was taken over.
    pub fn claim_taken_over(&self) {
        self.claims_taken_over.inc();
    }

    /// A real run ended with `status` (`completed` or `failed`) after `took`.
    pub fn run_finished(&self, status_: &str, took: Duration) {
        self.runs.get_or_create(&status(status_)).inc();
        self.run_duration.observe(took.as_secs_f64());
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        self.last_run.get_or_create(&status(status_)).set(now);
    }

    /// A scheduled run found another run in progress and did not start.
    pub fn scheduled_run_skipped(&self) {
        self.scheduled_skipped.inc();
    }

    /// A file's outcome was recorded with `status`.
    pub fn file_recorded(&self, status_: &str) {
        self.files.get_or_create(&status(status_)).inc();
    }

    /// `n` bytes were read from the share.
    pub fn bytes_read(&self, n: u64) {
        self.bytes_read.inc_by(n);
    }

    /// A call to `service` (`foi`, `itm`, `iqube`) ended with `outcome`
    /// (`ok` or `error`) after `took`.
    pub fn downstream_call(&self, service: &'static str, outcome: &'static str, took: Duration) {
        self.downstream
            .get_or_create(&downstream_labels(service, outcome))
            .observe(took.as_secs_f64());
    }

    /// The backlog as counted now.
    pub fn set_backlog(&self, b: Backlog) {
        self.outbox_pending.set(b.outbox_pending);
        self.archive_pending.set(b.archive_pending);
        self.awaiting_operator.set(b.awaiting_operator);
    }

    /// Every series in the Prometheus text format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Times the calls of an [`Extractor`], [`Submitter`] or [`Notifier`] into
/// `coordinator_downstream_request_duration_seconds`.
pub struct Timed<T: ?Sized> {
    inner: Arc<T>,
    metrics: Arc<Metrics>,
}

impl<T: ?Sized> Timed<T> {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: Arc<T>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { inner, metrics })
    }
}

fn outcome(ok: bool) -> &'static str {
    if ok { "ok" } else { "error" }
}

#[async_trait]
impl<T: Extractor + ?Sized> Extractor for Timed<T> {
    async fn extract(&self, remitter: &str, file_name: &str, content: &Content) -> FoiOutcome {
        let start = Instant::now();
        let out = self.inner.extract(remitter, file_name, content).await;
        let ok = matches!(out, FoiOutcome::Success(_));
        self.metrics
            .downstream_call("foi", outcome(ok), start.elapsed());
        out
    }
}

#[async_trait]
impl<T: Submitter + ?Sized> Submitter for Timed<T> {
    async fn submit(
        &self,
        sub: &ItmSubmission,
        idempotency_key: &str,
    ) -> Result<(), DownstreamError> {
        let start = Instant::now();
        let out = self.inner.submit(sub, idempotency_key).await;
        self.metrics
            .downstream_call("itm", outcome(out.is_ok()), start.elapsed());
        out
    }
}

#[async_trait]
impl<T: Notifier + ?Sized> Notifier for Timed<T> {
    async fn notify(&self, payload: &serde_json::Value, key: &str) -> Result<(), DownstreamError> {
        let start = Instant::now();
        let out = self.inner.notify(payload, key).await;
        self.metrics
            .downstream_call("iqube", outcome(out.is_ok()), start.elapsed());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_in_prometheus_text() {
        let m = Metrics::new();
        m.run_finished("completed", Duration::from_millis(1500));
        m.file_recorded("itm_failed");
        m.bytes_read(42);
        m.downstream_call("foi", "ok", Duration::from_millis(10));
        m.set_backlog(Backlog {
            outbox_pending: 3,
            archive_pending: 2,
            awaiting_operator: 1,
        });
        let text = m.render().unwrap();
        for line in [
            "# TYPE coordinator_runs_total counter",
            "coordinator_runs_total{status=\"completed\"} 1",
            "coordinator_runs_total{status=\"failed\"} 0",
            "coordinator_run_duration_seconds_count 1",
            "coordinator_files_total{status=\"itm_failed\"} 1",
            "coordinator_files_total{status=\"success\"} 0",
            "coordinator_bytes_read_total 42",
            "coordinator_downstream_request_duration_seconds_count{service=\"foi\",outcome=\"ok\"} 1",
            "coordinator_outbox_pending 3",
            "coordinator_archive_pending 2",
            "coordinator_files_awaiting_operator 1",
            "# TYPE coordinator_last_run_timestamp_seconds gauge",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
