//! Engine unit tests over the in-memory share and downstream fakes, on a
//! Postgres database of their own (`testing::TestDb`).

use super::*;
use crate::archive::PassReport;
use crate::domain::FileStatus;
use crate::downstream::{DownstreamError, FoiOutcome};
use crate::process::idempotency_key;
use crate::store::{InstanceInfo, InstanceStore, Joined, RunStore};
use crate::testing::{
    self, FakeFoi, FakeIqube, FakeItm, FaultyStore, MemSource, TestDb, md5_hex, t0,
};

fn err_status(f: RunFailure) -> u16 {
    f.http_status().as_u16()
}

/// A row of the `files` table.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct FileRow {
    id: i64,
    remitter: String,
    file_name: String,
    base_name: String,
    md5: String,
    size: i64,
    mtime: DateTime<Utc>,
    ctime: Option<DateTime<Utc>>,
    status: FileStatus,
    run_id: Option<Uuid>,
    archive_path: Option<String>,
    archived_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    claim_token: Option<Uuid>,
    claimed_by: Option<Uuid>,
}

impl FileRow {
    /// True once the archive move is recorded.
    fn archived(&self) -> bool {
        self.archived_at.is_some()
    }
}

/// A row of `file_events`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct EventRow {
    /// Status (or `archive_succeeded`).
    status: String,
    /// Step details.
    detail: serde_json::Value,
}

/// A row of the notification outbox.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct NotificationRow {
    id: i64,
    dedupe_key: String,
    payload: serde_json::Value,
    attempts: i32,
    last_error: Option<String>,
    /// True once IQube accepted it.
    delivered: bool,
    next_attempt_at: DateTime<Utc>,
}

/// A row of `runs`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct RunRow {
    id: Uuid,
    status: String,
    trigger: String,
    instance: String,
    /// The summary (`null` until the run ends).
    summary: serde_json::Value,
    /// The error code of a failed run.
    error: Option<String>,
    message: Option<String>,
    dry_run: bool,
    owner: Option<Uuid>,
    finished_by: Option<String>,
    plan: Option<serde_json::Value>,
}

/// The stand-ins, a database of the test's own and an engine over them.
struct Harness {
    src: Arc<MemSource>,
    /// The engines' store: the test's database, or an outage.
    store: Arc<FaultyStore>,
    foi: Arc<FakeFoi>,
    itm: Arc<FakeItm>,
    iqube: Arc<FakeIqube>,
    engine: Arc<Engine>,
    db: TestDb,
    /// The spool folder, removed when the harness goes.
    _spool: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Self {
        Self::with(|s| s).await
    }

    /// A harness whose engine `test` has the test settings changed by `settings`.
    async fn with(settings: impl FnOnce(RunSettings) -> RunSettings) -> Self {
        let db = TestDb::new().await;
        let spool = tempfile::tempdir().expect("a spool folder");
        let src = Arc::new(MemSource::new());
        let store = Arc::new(FaultyStore::new(db.store().clone()));
        let foi = Arc::new(FakeFoi::new());
        let itm = Arc::new(FakeItm::new());
        let iqube = Arc::new(FakeIqube::new());
        let deps = Deps {
            source: src.clone(),
            store: store.clone(),
            foi: foi.clone(),
            itm: itm.clone(),
            iqube: iqube.clone(),
            metrics: Default::default(),
            kept: Default::default(),
        };
        let settings = settings(testing::settings(spool.path().to_path_buf()));
        let h = Self {
            src,
            store,
            foi,
            itm,
            iqube,
            engine: Engine::new(deps, settings, identity("test")),
            db,
            _spool: spool,
        };
        h.join(h.engine.incarnation()).await;
        h
    }

    /// Another process named `instance` over the same share, database,
    /// downstreams and settings, with outcomes kept of its own; it is alive.
    async fn another(&self, instance: &str) -> Arc<Engine> {
        let e = &self.engine;
        let deps = Deps {
            kept: Default::default(),
            ..e.deps().clone()
        };
        let engine = Engine::new(deps, e.settings().clone(), identity(instance));
        self.join(engine.incarnation()).await;
        engine
    }

    /// Registers `incarnation` as a live instance for the rest of the test
    /// (one heartbeat an hour, never missed): claims, candidates and runs
    /// of a process without a live `instances` row are taken over.
    async fn join(&self, incarnation: Uuid) {
        let me = InstanceInfo {
            // Unique: a test may start a process again under the same name.
            instance_id: incarnation.to_string(),
            incarnation,
            version: "test".into(),
            heartbeat: Duration::from_secs(3600),
            max_concurrent_files: 2,
        };
        let joined = self.db.store().join(&me).await;
        assert_eq!(joined.expect("joining the instances"), Joined::Yes);
    }

    /// Declares an instance dead, as three missed heartbeats would: its
    /// claims, candidates and runs are taken over.
    async fn mark_dead(&self, incarnation: Uuid) {
        sqlx::query("UPDATE instances SET stopped_at = now() WHERE incarnation = $1")
            .bind(incarnation)
            .execute(self.pool())
            .await
            .expect("marking the instance dead");
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.db.store().pool()
    }

    /// One run, then its background pass; panics unless the run completes.
    async fn run(&self) -> RunReport {
        let report = self.try_run().await;
        report.unwrap_or_else(|e| panic!("run did not complete: {e}"))
    }

    /// One run, then its background pass.
    async fn try_run(&self) -> Result<RunReport, RunError> {
        let result = self.engine.run("test").await;
        self.settle().await;
        result
    }

    /// Waits for every background task spawned so far.
    async fn settle(&self) {
        self.engine.tracker().close();
        self.engine.tracker().wait().await;
    }

    /// One more background pass (archive retries, outbox, housekeeping).
    async fn pass(&self) -> PassReport {
        self.engine.background_pass().await
    }

    /// Every `files` row, by id.
    async fn files(&self) -> Vec<FileRow> {
        sqlx::query_as(
            "SELECT id, remitter, file_name, base_name, md5, size, mtime, ctime, status, run_id, \
               archive_path, archived_at, updated_at, claim_token, claimed_by FROM files ORDER BY id",
        )
        .fetch_all(self.pool())
        .await
        .expect("reading the files")
    }

    /// The only `files` row; panics unless there is exactly one.
    async fn only_row(&self) -> FileRow {
        let rows = self.files().await;
        assert_eq!(rows.len(), 1, "rows: {rows:?}");
        rows[0].clone()
    }

    /// The event statuses of a file, oldest first.
    async fn events(&self, file_id: i64) -> Vec<String> {
        self.event_rows(file_id)
            .await
            .into_iter()
            .map(|e| e.status)
            .collect()
    }

    /// The events of a file with their details, oldest first.
    async fn event_rows(&self, file_id: i64) -> Vec<EventRow> {
        sqlx::query_as("SELECT status, detail FROM file_events WHERE file_id = $1 ORDER BY id")
            .bind(file_id)
            .fetch_all(self.pool())
            .await
            .expect("reading the file's events")
    }

    /// The notification outbox, by id.
    async fn notifications(&self) -> Vec<NotificationRow> {
        sqlx::query_as(
            "SELECT id, dedupe_key, payload, attempts, last_error, \
               delivered_at IS NOT NULL AS delivered, next_attempt_at FROM notifications ORDER BY id",
        )
        .fetch_all(self.pool())
        .await
        .expect("reading the outbox")
    }

    /// Makes every undelivered notification due now, as if its backoff had passed.
    async fn make_notifications_due(&self) {
        sqlx::query("UPDATE notifications SET next_attempt_at = now() WHERE delivered_at IS NULL")
            .execute(self.pool())
            .await
            .expect("making the notifications due");
    }

    /// Every run, oldest first.
    async fn runs(&self) -> Vec<RunRow> {
        sqlx::query_as(
            "SELECT id, status, trigger, instance, coalesce(summary, 'null') AS summary, error, \
               message, dry_run, owner, finished_by, plan FROM runs ORDER BY started_at, id",
        )
        .fetch_all(self.pool())
        .await
        .expect("reading the runs")
    }

    /// Sets a status without an event, as an operator's SQL would (`ops_done`).
    async fn set_status_raw(&self, file_id: i64, status: &str) {
        sqlx::query("UPDATE files SET status = $2 WHERE id = $1")
            .bind(file_id)
            .bind(status)
            .execute(self.pool())
            .await
            .expect("setting the status");
    }

    fn spool_is_empty(&self) -> bool {
        std::fs::read_dir(&self.engine.settings().spool_dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    }
}

/// A process named `instance`, new at each start.
fn identity(instance: &str) -> Identity {
    Identity {
        instance: instance.into(),
        incarnation: Uuid::new_v4(),
    }
}

/// A last-write time well past the 60 s minimum age.
fn old() -> DateTime<Utc> {
    t0() - chrono::Duration::hours(1)
}

/// The report of `name`; panics when the run did not mention it.
fn report_of<'a>(r: &'a RunReport, name: &str) -> &'a FileReport {
    r.summary
        .files
        .iter()
        .find(|f| f.file_name == name)
        .unwrap_or_else(|| panic!("{name} not in {:?}", r.summary.files))
}

fn password_failure() -> FoiOutcome {
    FoiOutcome::Failure {
        status: FileStatus::ExtractionFilePasswordFailed,
        reason: "file is password protected".into(),
    }
}

#[tokio::test]
async fn happy_path_processes_submits_and_archives() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit_20240101.xlsx", b"hello", old());

    let r = h.run().await;

    assert_eq!(r.status, "completed");
    assert_eq!((r.summary.scanned, r.summary.processed), (1, 1));
    assert_eq!((r.summary.succeeded, r.summary.failed), (1, 0));
    let f = report_of(&r, "remit_20240101.xlsx");
    assert_eq!(f.decision, Decision::Processed);
    assert_eq!(f.status.as_ref().map(FileStatus::as_str), Some("success"));

    let row = h.only_row().await;
    assert_eq!(
        (row.remitter.as_str(), row.file_name.as_str()),
        ("acme", "remit_20240101.xlsx")
    );
    assert_eq!(row.base_name, "remit.xlsx");
    assert_eq!(row.md5, md5_hex(b"hello"));
    assert_eq!((row.size, row.mtime), (5, old()));
    assert_eq!(row.status, "success");
    assert_eq!(
        row.archive_path.as_deref(),
        Some("archive/acme/remit_20240101.xlsx")
    );
    assert_eq!(
        h.events(row.id).await,
        ["processing", "success", "archive_succeeded"]
    );

    assert!(!h.src.exists("in/acme/remit_20240101.xlsx"));
    assert_eq!(
        h.src.read("archive/acme/remit_20240101.xlsx").as_deref(),
        Some(&b"hello"[..])
    );

    let foi = h.foi.calls();
    assert_eq!(foi.len(), 1);
    assert_eq!(
        (foi[0].remitter.as_str(), foi[0].file_name.as_str()),
        ("acme", "remit_20240101.xlsx")
    );
    assert_eq!(foi[0].bytes, b"hello");

    let itm = h.itm.calls();
    assert_eq!(itm.len(), 1);
    let (sub, key) = &itm[0];
    assert_eq!(sub.remitter, "acme");
    assert_eq!(sub.file_name, "remit_20240101.xlsx");
    assert_eq!(sub.md5, md5_hex(b"hello"));
    assert_eq!(sub.result, FakeFoi::default_result());
    assert_eq!(
        *key,
        idempotency_key("acme", "remit_20240101.xlsx", &md5_hex(b"hello"))
    );
    let success = &h.event_rows(row.id).await[1];
    assert_eq!(success.detail["idempotency_key"], json!(key));

    let runs: Vec<RunRow> = h.runs().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].id, runs[0].status.as_str()),
        (r.run_id, "completed")
    );
    assert_eq!(runs[0].summary["processed"], json!(1));
    assert!(h.notifications().await.is_empty());
    assert!(h.iqube.calls().is_empty());
    assert!(h.spool_is_empty(), "spool files are removed");
    assert_eq!(*h.engine.passes_done().borrow(), 1);
}

#[tokio::test]
async fn superseded_versions_are_archived_without_a_row() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit_20240101.xlsx", b"v1", old());
    h.src.put("in/acme/remit_20240101093000.xlsx", b"v2", old());
    h.src.put("in/acme/remit_20240102.xlsx", b"v3", old());

    let r = h.run().await;

    assert_eq!((r.summary.superseded, r.summary.processed), (2, 1));
    for old_name in ["remit_20240101.xlsx", "remit_20240101093000.xlsx"] {
        assert_eq!(report_of(&r, old_name).decision, Decision::Superseded);
    }
    let row = h.only_row().await;
    assert_eq!(row.file_name, "remit_20240102.xlsx");
    assert_eq!(h.foi.calls().len(), 1);
    assert_eq!(h.src.fetches(), ["in/acme/remit_20240102.xlsx"]);
    assert!(h.src.files_under("in").is_empty());
    assert_eq!(
        h.src.files_under("archive"),
        [
            "archive/acme/remit_20240101.xlsx",
            "archive/acme/remit_20240101093000.xlsx",
            "archive/acme/remit_20240102.xlsx",
        ]
    );
}

#[tokio::test]
async fn archive_name_collision_gets_a_suffix_and_overwrites_nothing() {
    let h = Harness::new().await;
    h.src
        .put("archive/acme/remit_20240101.xlsx", b"earlier", old());
    h.src
        .put("archive/acme/remit_20240102.xlsx", b"earlier too", old());
    h.src
        .put("archive/acme/remit_20240102 (1).xlsx", b"and again", old());
    h.src.put("in/acme/remit_20240101.xlsx", b"v1", old());
    h.src.put("in/acme/remit_20240102.xlsx", b"v2", old());

    h.run().await;

    let read = |p: &str| h.src.read(p).unwrap_or_default();
    assert_eq!(read("archive/acme/remit_20240101.xlsx"), b"earlier");
    assert_eq!(read("archive/acme/remit_20240101 (1).xlsx"), b"v1");
    assert_eq!(read("archive/acme/remit_20240102.xlsx"), b"earlier too");
    assert_eq!(read("archive/acme/remit_20240102 (1).xlsx"), b"and again");
    assert_eq!(read("archive/acme/remit_20240102 (2).xlsx"), b"v2");
    assert_eq!(
        h.only_row().await.archive_path.as_deref(),
        Some("archive/acme/remit_20240102 (2).xlsx")
    );
    assert!(h.src.files_under("in").is_empty());
}

#[tokio::test]
async fn a_group_with_a_young_newest_waits_whole() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit_20240101.xlsx", b"v1", old());
    let young = t0() - chrono::Duration::seconds(10);
    h.src.put("in/acme/remit_20240102.xlsx", b"v2", young);

    let r = h.run().await;

    assert_eq!((r.summary.unstable, r.summary.superseded), (1, 1));
    let newest = report_of(&r, "remit_20240102.xlsx");
    assert_eq!(newest.decision, Decision::Unstable);
    assert!(
        newest
            .reason
            .as_deref()
            .is_some_and(|w| w.contains("10s ago")),
        "{newest:?}"
    );
    assert!(
        report_of(&r, "remit_20240101.xlsx")
            .reason
            .as_deref()
            .is_some_and(|w| w.contains("archive waits")),
    );
    assert!(h.files().await.is_empty());
    assert!(h.src.fetches().is_empty());
    assert!(h.foi.calls().is_empty());
    assert_eq!(
        h.src.files_under("in"),
        ["in/acme/remit_20240101.xlsx", "in/acme/remit_20240102.xlsx"]
    );
    assert!(h.src.files_under("archive").is_empty());

    // Once old enough, the group is processed and its older version archived.
    h.src.set_now(t0() + chrono::Duration::minutes(2));
    let h2 = Harness {
        engine: h.another("test").await,
        ..h
    };
    let r = h2.run().await;
    assert_eq!((r.summary.processed, r.summary.superseded), (1, 1));
    assert_eq!(h2.only_row().await.file_name, "remit_20240102.xlsx");
    assert!(h2.src.files_under("in").is_empty());
}

#[tokio::test]
async fn a_file_open_for_writing_is_unstable() {
    let h = Harness::new().await;
    h.src.put("in/acme/a.csv", b"half", old());
    h.src.mark_open_for_write("in/acme/a.csv");
    h.src.put("in/acme/b.csv", b"whole", old());

    let r = h.run().await;

    let a = report_of(&r, "a.csv");
    assert_eq!(a.decision, Decision::Unstable);
    assert_eq!(
        a.reason.as_deref(),
        Some("open for writing by another client")
    );
    assert_eq!(report_of(&r, "b.csv").decision, Decision::Processed);
    assert_eq!(h.only_row().await.file_name, "b.csv");
    // The deny-write open of a.csv was refused: nothing claimed or sent.
    let sent: Vec<String> = h.foi.calls().into_iter().map(|c| c.file_name).collect();
    assert_eq!(sent, ["b.csv"]);
    assert!(h.src.exists("in/acme/a.csv"));
}

#[tokio::test]
async fn a_recent_change_time_makes_an_old_file_unstable() {
    // A Windows copy keeps the source's last-write time; the change time is new.
    let h = Harness::new().await;
    h.src.put("in/acme/copied.csv", b"half", old());
    h.src
        .set_ctime("in/acme/copied.csv", t0() - chrono::Duration::seconds(5));

    let r = h.run().await;

    let f = report_of(&r, "copied.csv");
    assert_eq!(f.decision, Decision::Unstable);
    assert_eq!(
        f.reason.as_deref(),
        Some("last written 5s ago (server clock)")
    );
    assert!(h.files().await.is_empty());
    assert!(h.src.fetches().is_empty());
    assert!(h.src.exists("in/acme/copied.csv"));
}

#[tokio::test]
async fn temp_names_are_ignored_and_counted() {
    let h = Harness::new().await;
    for name in ["~$remit.xlsx", "remit.xlsx.part", "Thumbs.db", ".hidden"] {
        h.src.put(&format!("in/acme/{name}"), b"x", old());
    }
    h.src.put("in/acme/remit.xlsx", b"real", old());

    let r = h.run().await;

    assert_eq!(r.summary.scanned, 5);
    assert_eq!(r.summary.ignored, 4);
    assert_eq!(r.summary.processed, 1);
    assert_eq!(report_of(&r, "Thumbs.db").decision, Decision::Ignored);
    assert_eq!(h.only_row().await.file_name, "remit.xlsx");
    assert_eq!(h.src.fetches(), ["in/acme/remit.xlsx"]);
    assert_eq!(
        h.src.files_under("in"),
        [
            "in/acme/.hidden",
            "in/acme/Thumbs.db",
            "in/acme/remit.xlsx.part",
            "in/acme/~$remit.xlsx",
        ]
    );
}

#[tokio::test]
async fn a_known_name_size_and_mtime_is_skipped_without_download() {
    let h = Harness::new().await;
    h.foi.set(password_failure());
    h.src.put("in/acme/remit.xlsx", b"locked", old());
    h.run().await;
    let row = h.only_row().await;
    assert_eq!(row.status, "extraction_file_password_failed");

    // A download now would fail: the run must not try one.
    h.src.fail_fetch("in/acme/remit.xlsx");
    let r = h.run().await;

    let f = report_of(&r, "remit.xlsx");
    assert_eq!(f.decision, Decision::AlreadyProcessed);
    assert_eq!(
        f.status.as_ref().map(FileStatus::as_str),
        Some("extraction_file_password_failed")
    );
    assert_eq!((r.summary.already_processed, r.summary.errors), (1, 0));
    assert_eq!(h.src.fetches().len(), 1, "only the first run downloaded");
    assert_eq!(h.foi.calls().len(), 1);
    assert_eq!(h.files().await, [row]);
    assert_eq!(h.notifications().await.len(), 1);
    assert_eq!(h.iqube.delivered().len(), 1);
}

#[tokio::test]
async fn same_content_with_a_new_mtime_is_already_processed_by_the_claim() {
    let h = Harness::new().await;
    h.foi.set(password_failure());
    h.src.put("in/acme/remit.xlsx", b"locked", old());
    h.run().await;

    let touched = old() + chrono::Duration::minutes(5);
    h.src.put("in/acme/remit.xlsx", b"locked", touched);
    let r = h.run().await;

    let f = report_of(&r, "remit.xlsx");
    assert_eq!(f.decision, Decision::AlreadyProcessed);
    assert_eq!(f.reason.as_deref(), Some("this content was claimed before"));
    assert_eq!(
        f.status.as_ref().map(FileStatus::as_str),
        Some("extraction_file_password_failed")
    );
    assert_eq!(
        h.src.fetches().len(),
        2,
        "the changed mtime needs a download"
    );
    assert_eq!(h.foi.calls().len(), 1);
    let row = h.only_row().await;
    assert_eq!(
        row.mtime, touched,
        "the claim refreshes the last-write time"
    );
    assert_eq!(
        h.events(row.id).await,
        ["processing", "extraction_file_password_failed"]
    );

    // The refreshed row lets the next run skip the download.
    let r = h.run().await;
    assert_eq!(
        report_of(&r, "remit.xlsx").decision,
        Decision::AlreadyProcessed
    );
    assert_eq!(h.src.fetches().len(), 2);
}

#[tokio::test]
async fn new_content_under_an_old_name_gets_a_new_row() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit.xlsx", b"first", old());
    h.run().await;
    assert!(!h.src.exists("in/acme/remit.xlsx"));

    h.src.put(
        "in/acme/remit.xlsx",
        b"second, longer",
        old() + chrono::Duration::minutes(1),
    );
    let r = h.run().await;

    assert_eq!(report_of(&r, "remit.xlsx").decision, Decision::Processed);
    let rows = h.files().await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].md5, md5_hex(b"first"));
    assert_eq!(rows[1].md5, md5_hex(b"second, longer"));
    assert!(rows.iter().all(|f| f.status == "success"));
    assert_eq!(
        rows[1].archive_path.as_deref(),
        Some("archive/acme/remit (1).xlsx")
    );
    assert_eq!(
        h.src.read("archive/acme/remit.xlsx").as_deref(),
        Some(&b"first"[..])
    );
    let keys: Vec<String> = h.itm.calls().into_iter().map(|(_, k)| k).collect();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1]);
}

#[tokio::test]
async fn a_fetch_failure_is_an_error_and_other_files_proceed() {
    let h = Harness::new().await;
    h.src.put("in/acme/a.csv", b"a", old());
    h.src.put("in/acme/b.csv", b"b", old());
    h.src.put("in/beta/c.csv", b"c", old());
    h.src.fail_fetch("in/acme/a.csv");

    let r = h.run().await;

    let a = report_of(&r, "a.csv");
    assert_eq!(a.decision, Decision::Error);
    assert!(
        a.reason
            .as_deref()
            .is_some_and(|w| w.contains("download failed"))
    );
    assert_eq!((r.summary.errors, r.summary.succeeded), (1, 2));
    let names: Vec<String> = h.files().await.into_iter().map(|f| f.file_name).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"b.csv".into()) && names.contains(&"c.csv".into()));
    let sent: Vec<String> = h.foi.calls().into_iter().map(|c| c.file_name).collect();
    assert!(!sent.contains(&"a.csv".to_string()) && sent.len() == 2);
    assert_eq!(h.itm.calls().len(), 2);
    assert!(h.notifications().await.is_empty());
    assert_eq!(h.src.files_under("in"), ["in/acme/a.csv"]);
    assert!(h.spool_is_empty());
}

#[tokio::test]
async fn extraction_failures_notify_once_and_skip_itm() {
    let cases = [
        FileStatus::ExtractionFilePasswordFailed,
        FileStatus::ExtractionFileFailed,
        FileStatus::ExtractionServiceFailed,
    ];
    for status in cases {
        let h = Harness::new().await;
        h.foi.set(FoiOutcome::Failure {
            status: status.clone(),
            reason: "no matched template".into(),
        });
        h.src.put("in/acme/remit.xlsx", b"x", old());

        let r = h.run().await;

        assert_eq!(
            (r.summary.processed, r.summary.failed),
            (1, 1),
            "{status:?}"
        );
        let row = h.only_row().await;
        assert_eq!(row.status, status.as_str());
        assert_eq!(h.events(row.id).await, ["processing", status.as_str()]);
        assert_eq!(h.event_rows(row.id).await[1].detail["step"], json!("foi"));
        assert!(h.itm.calls().is_empty(), "{status:?}");
        assert!(h.src.exists("in/acme/remit.xlsx"), "failed files stay");
        assert!(!row.archived());

        let outbox = h.notifications().await;
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].dedupe_key, format!("file_failed:{}", row.id));
        assert!(outbox[0].delivered);
        let sent = h.iqube.delivered();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].key, format!("file_failed:{}", row.id));
        assert_eq!(
            sent[0].payload,
            json!({
                "event": "file_failed",
                "remitter": "acme",
                "file_name": "remit.xlsx",
                "status": status.as_str(),
                "reason": "no matched template",
                "run_id": r.run_id,
            })
        );

        // Later passes and runs do not notify again.
        h.pass().await;
        h.run().await;
        assert_eq!(h.iqube.calls().len(), 1, "{status:?}");
        assert_eq!(h.foi.calls().len(), 1, "{status:?}");
    }
}

#[tokio::test]
async fn an_undelivered_notification_is_kept_backed_off_and_delivered_once() {
    let h = Harness::new().await;
    h.iqube.set_up(false);
    h.foi.set(password_failure());
    h.src.put("in/acme/remit.xlsx", b"x", old());

    h.run().await;
    // Refused once; the next pass does not hammer IQube before the backoff.
    h.pass().await;
    assert_eq!(h.iqube.calls().len(), 1);
    h.make_notifications_due().await;
    h.pass().await;

    let outbox = h.notifications().await;
    assert_eq!(outbox.len(), 1);
    assert!(!outbox[0].delivered);
    assert_eq!(outbox[0].attempts, 2);
    assert!(outbox[0].last_error.is_some());
    assert!(h.iqube.delivered().is_empty());

    h.iqube.set_up(true);
    h.make_notifications_due().await;
    let report = h.pass().await;
    assert_eq!(report.notified, 1);
    h.make_notifications_due().await;
    h.pass().await;

    let outbox = h.notifications().await;
    assert!(outbox[0].delivered);
    assert_eq!(outbox[0].last_error, None);
    assert_eq!(h.iqube.delivered().len(), 1);
    assert_eq!(h.iqube.calls().len(), 3, "two refused, one accepted");
}

#[tokio::test]
async fn an_itm_failure_is_itm_failed_and_notified() {
    let h = Harness::new().await;
    h.itm.set(Err(DownstreamError::Status {
        service: "ITM",
        status: 500,
        body: "boom".into(),
    }));
    h.src.put("in/acme/remit.xlsx", b"x", old());

    let r = h.run().await;

    let f = report_of(&r, "remit.xlsx");
    assert_eq!(
        f.status.as_ref().map(FileStatus::as_str),
        Some("itm_failed")
    );
    assert_eq!(f.reason.as_deref(), Some("ITM answered HTTP 500: boom"));
    let row = h.only_row().await;
    assert_eq!(row.status, "itm_failed");
    assert_eq!(h.events(row.id).await, ["processing", "itm_failed"]);
    let detail = &h.event_rows(row.id).await[1].detail;
    assert_eq!(detail["reason"], json!("ITM answered HTTP 500: boom"));
    assert_eq!(
        detail["idempotency_key"],
        json!(idempotency_key("acme", "remit.xlsx", &row.md5))
    );
    assert_eq!(h.itm.calls().len(), 1);
    assert!(h.src.exists("in/acme/remit.xlsx"));
    let sent = h.iqube.delivered();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].payload["status"], json!("itm_failed"));
}

#[tokio::test]
async fn a_failed_listing_fails_the_run_and_notifies_once() {
    // (how the share is set up, label)
    type Setup = fn(&MemSource);
    let cases: [(Setup, &str); 2] = [
        (
            |s| {
                s.put("in/acme/remit.xlsx", b"x", old());
                s.fail_list(true);
            },
            "listing error",
        ),
        (
            |s| s.put("elsewhere/acme/remit.xlsx", b"x", old()),
            "no source folder",
        ),
    ];
    for (setup, label) in cases {
        let h = Harness::new().await;
        setup(&h.src);

        let err = h.try_run().await.expect_err(label);

        let RunError::Failed {
            run_id, failure, ..
        } = err
        else {
            panic!("{label}: not a failed run: {err:?}");
        };
        assert_eq!(failure, RunFailure::ScanFailed, "{label}");
        assert_eq!(err_status(failure), 502);
        let runs = h.runs().await;
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, "failed");
        assert_eq!(runs[0].error.as_deref(), Some("scan_failed"));
        let outbox = h.notifications().await;
        assert_eq!(outbox.len(), 1, "{label}");
        assert_eq!(outbox[0].dedupe_key, format!("run_failed:{run_id}"));
        let sent = h.iqube.delivered();
        assert_eq!(sent.len(), 1, "{label}");
        assert_eq!(sent[0].payload["event"], json!("run_failed"));
        assert_eq!(sent[0].payload["file_name"], serde_json::Value::Null);
        assert_eq!(sent[0].payload["run_id"], json!(run_id));
        assert!(h.files().await.is_empty());
        assert!(h.foi.calls().is_empty());

        h.pass().await;
        assert_eq!(h.iqube.calls().len(), 1, "{label}: delivered once");
    }
}

#[tokio::test]
async fn an_unavailable_database_fails_the_run_and_tells_iqube_directly() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit.xlsx", b"x", old());
    h.store.set_unavailable(true);

    let err = h.try_run().await.expect_err("no database");

    let RunError::Failed {
        run_id, failure, ..
    } = err
    else {
        panic!("not a failed run: {err:?}");
    };
    assert_eq!(failure.code(), "database_unavailable");
    assert_eq!(err_status(failure), 503);
    let sent = h.iqube.delivered();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].key, format!("run_failed:{run_id}"));
    assert!(h.src.fetches().is_empty());
    assert!(h.foi.calls().is_empty());
    assert!(h.src.exists("in/acme/remit.xlsx"));
}

/// One real run at a time across instances: a run whose owner lives makes
/// the next one busy; once that owner is dead, the next starter adopts its
/// run (unplanned: it plans it itself), finishes it, then runs its own.
#[tokio::test]
async fn a_second_run_is_busy_while_its_owner_lives_and_adopts_it_once_dead() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit.xlsx", b"x", old());
    let (holder, other) = (Uuid::new_v4(), Uuid::new_v4());
    h.join(other).await;
    let started = h.store.begin_run(holder, "manual", "other", other).await;
    assert_eq!(started.unwrap(), RunStart::Started);

    let err = h.engine.run("test").await.expect_err("a run in progress");

    assert!(
        matches!(err, RunError::Busy { running: Some(id) } if id == holder),
        "{err:?}"
    );
    assert_eq!(h.runs().await.len(), 1);
    assert!(h.src.fetches().is_empty());
    assert!(h.files().await.is_empty());

    // Its instance died before it planned anything: the next starter
    // finishes that run first (the file is processed by it), then its own.
    h.mark_dead(other).await;
    let r = h.run().await;
    assert_nothing_sent_by_its_own_run(&r, "remit.xlsx");
    let runs = h.runs().await;
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0].status.as_str(), runs[0].finished_by.as_deref()),
        ("completed", Some("test"))
    );
    assert_eq!(runs[0].summary["processed"], 1, "{}", runs[0].summary);
    assert_eq!(
        runs[0].summary["files"][0]["instance"], "test",
        "{}",
        runs[0].summary
    );
    assert_eq!(runs[1].status, "completed");
    assert_eq!(h.foi.calls().len(), 1, "sent once");
}

/// The run after an adopted one sent nothing: the adopted run processed
/// `name`, whose file is already processed or, once that run's background
/// pass moved it, no longer in the source.
fn assert_nothing_sent_by_its_own_run(r: &RunReport, name: &str) {
    assert_eq!(r.summary.processed, 0, "{:?}", r.summary);
    assert!(
        r.summary
            .files
            .iter()
            .filter(|f| f.file_name == name)
            .all(|f| f.decision == Decision::AlreadyProcessed),
        "{:?}",
        r.summary.files
    );
}

#[tokio::test]
async fn housekeeping_archives_an_ops_file() {
    let h = Harness::new().await;
    h.foi.set(password_failure());
    h.src.put("in/acme/remit.xlsx", b"x", old());
    h.run().await;
    let id = h.only_row().await.id;
    assert!(h.src.exists("in/acme/remit.xlsx"), "failed files stay");

    h.set_status_raw(id, "ops_done").await;
    let report = h.pass().await;

    assert_eq!(report.moved, 1);
    assert!(!h.src.exists("in/acme/remit.xlsx"));
    assert!(h.src.exists("archive/acme/remit.xlsx"));
    let row = h.only_row().await;
    assert_eq!(row.archive_path.as_deref(), Some("archive/acme/remit.xlsx"));
    assert_eq!(
        h.events(id).await,
        [
            "processing",
            "extraction_file_password_failed",
            "archive_succeeded"
        ]
    );
}

#[tokio::test]
async fn housekeeping_leaves_a_replaced_success_file_alone() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit.xlsx", b"first", old());
    h.src.fail_rename("in/acme/remit.xlsx");
    h.run().await;
    let row = h.only_row().await;
    assert_eq!((row.status.as_str(), row.archived()), ("success", false));

    // A new version lands under the same name before the archive retries.
    h.src.clear_faults();
    let replaced = old() + chrono::Duration::minutes(10);
    h.src.put("in/acme/remit.xlsx", b"second", replaced);
    let report = h.pass().await;

    assert_eq!(report.moved, 0);
    assert!(!h.only_row().await.archived());
    assert_eq!(
        h.src.read("in/acme/remit.xlsx").as_deref(),
        Some(&b"second"[..])
    );
    assert!(h.src.files_under("archive").is_empty());
    assert_eq!(h.events(row.id).await, ["processing", "success"]);

    // The next run processes the new version and archives it.
    let r = h.run().await;
    assert_eq!(report_of(&r, "remit.xlsx").decision, Decision::Processed);
    let rows = h.files().await;
    assert_eq!(rows.len(), 2);
    assert!(!rows[0].archived());
    assert!(rows[1].archived());
}

#[tokio::test]
async fn a_failed_archive_move_is_retried_and_recorded_once() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit.xlsx", b"x", old());
    h.src.fail_rename("in/acme/remit.xlsx");

    let r = h.run().await;

    assert_eq!(
        report_of(&r, "remit.xlsx")
            .status
            .as_ref()
            .map(FileStatus::as_str),
        Some("success")
    );
    let id = h.only_row().await.id;
    assert_eq!(h.events(id).await, ["processing", "success"]);
    assert!(h.src.exists("in/acme/remit.xlsx"));
    assert_eq!(h.pass().await.failed, 1);
    assert!(!h.only_row().await.archived());

    h.src.clear_faults();
    let report = h.pass().await;
    assert_eq!((report.moved, report.failed), (1, 0));
    assert_eq!(h.pass().await, PassReport::default());
    assert_eq!(
        h.events(id).await,
        ["processing", "success", "archive_succeeded"]
    );
    assert!(h.src.exists("archive/acme/remit.xlsx"));
    assert!(!h.src.exists("in/acme/remit.xlsx"));
    assert_eq!(h.foi.calls().len(), 1);
    assert_eq!(h.itm.calls().len(), 1);
}

#[tokio::test]
async fn archive_folders_outside_remitter_folders_are_not_scanned() {
    // The archive inside the source folder is never a remitter.
    let h = Harness::with(|s| RunSettings {
        archive_dir: "in/archive".into(),
        ..s
    })
    .await;
    h.src.put("in/archive/acme/old.csv", b"archived", old());
    h.src.put("in/root.csv", b"at the root", old());
    h.src.put("in/acme/deeper/x.csv", b"too deep", old());
    h.src.put("in/acme/remit.xlsx", b"x", old());

    let r = h.run().await;

    assert_eq!(r.summary.scanned, 1);
    assert_eq!(h.only_row().await.file_name, "remit.xlsx");
    assert_eq!(h.src.fetches(), ["in/acme/remit.xlsx"]);
    assert!(h.src.exists("in/archive/acme/remit.xlsx"));
    assert!(h.src.exists("in/root.csv"));
    assert!(h.src.exists("in/acme/deeper/x.csv"));
}

#[tokio::test]
async fn a_superseded_version_whose_move_failed_is_never_processed() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit_20240101.xlsx", b"old", old());
    h.src.put("in/acme/remit_20240102.xlsx", b"new", old());
    h.src.fail_rename("in/acme/remit_20240101.xlsx");

    let r = h.run().await;
    assert_eq!(
        report_of(&r, "remit_20240101.xlsx").decision,
        Decision::Superseded
    );
    assert!(
        h.src.exists("in/acme/remit_20240101.xlsx"),
        "the move failed"
    );

    // Alone in its group now, it is still the superseded version: not processed.
    let r = h.run().await;
    let again = report_of(&r, "remit_20240101.xlsx");
    assert_eq!(again.decision, Decision::Superseded, "{again:?}");
    assert_eq!(h.foi.calls().len(), 1);
    assert_eq!(h.files().await.len(), 1);

    h.src.clear_faults();
    h.pass().await;
    assert!(!h.src.exists("in/acme/remit_20240101.xlsx"));
    assert_eq!(
        h.src.files_under("archive"),
        [
            "archive/acme/remit_20240101.xlsx",
            "archive/acme/remit_20240102.xlsx"
        ]
    );
    assert_eq!(h.foi.calls().len(), 1);
}

/// An instance killed while ITM holds its file: its run stays `running`
/// and its claim `processing` while it lives; once it is dead, the next
/// starter adopts the run, takes the claim over (a second `processing`
/// event, the same ITM key) and finishes the run as `finished_by` itself.
#[tokio::test]
async fn a_dead_instances_claim_and_run_are_taken_over_with_the_same_itm_key() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit.csv", b"bytes", old());
    let b = h.another("test-2").await;
    h.itm.set_hang(true);
    let killed = tokio::spawn({
        let b = b.clone();
        async move { b.run("test").await }
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.itm.calls().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "ITM not reached");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    killed.abort();
    let _ = killed.await;
    h.itm.set_hang(false);
    let id = h.only_row().await.id;

    // Alive: its run is in progress, its claim untouched.
    let busy = h
        .engine
        .run("test")
        .await
        .expect_err("b's run is in progress");
    assert!(matches!(busy, RunError::Busy { .. }), "{busy:?}");
    assert_eq!(h.events(id).await, ["processing"]);

    // Dead: adopted and finished, the claim taken over once.
    h.mark_dead(b.incarnation()).await;
    let r = h.run().await;
    assert_nothing_sent_by_its_own_run(&r, "remit.csv");
    assert_eq!(
        h.events(id).await,
        ["processing", "processing", "success", "archive_succeeded"]
    );
    let itm = h.itm.calls();
    assert_eq!(itm.len(), 2);
    assert_eq!(itm[0].1, itm[1].1, "the same Idempotency-Key");
    let runs = h.runs().await;
    assert_eq!(
        (runs[0].status.as_str(), runs[0].finished_by.as_deref()),
        ("completed", Some("test"))
    );
    let f = &runs[0].summary["files"][0];
    assert_eq!(
        (f["status"].as_str(), f["instance"].as_str()),
        (Some("success"), Some("test")),
        "{f}"
    );
    assert_eq!(
        h.engine
            .metrics()
            .render()
            .unwrap()
            .lines()
            .find(|l| l.starts_with("coordinator_claims_taken_over_total")),
        Some("coordinator_claims_taken_over_total 1")
    );
    // Not sent again: the next run leaves it alone.
    h.run().await;
    assert_eq!(h.itm.calls().len(), 2);
}

#[tokio::test]
async fn a_move_whose_answer_was_lost_is_recorded_from_the_archive() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit.xlsx", b"x", old());
    h.src.fail_rename("in/acme/remit.xlsx");
    h.run().await;
    let row = h.only_row().await;
    assert!(!row.archived());

    // The server did move it, but the answer never arrived.
    h.src.clear_faults();
    h.src.mkdir_all("archive/acme").await.unwrap();
    h.src.mv("in/acme/remit.xlsx", "archive/acme/remit.xlsx");
    h.pass().await;

    let row = h.only_row().await;
    assert_eq!(row.archive_path.as_deref(), Some("archive/acme/remit.xlsx"));
    assert_eq!(
        h.events(row.id).await,
        ["processing", "success", "archive_succeeded"]
    );
    assert_eq!(h.src.files_under("archive"), ["archive/acme/remit.xlsx"]);
}

#[tokio::test]
async fn the_lost_answer_recovery_never_takes_another_file_for_the_moved_one() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit.xlsx", b"bytes", old());
    h.src.fail_rename("in/acme/remit.xlsx");
    h.run().await;

    // The source file is gone; the archive holds, under its name, a file of
    // the same size and time that is not it (put there by someone else),
    // and the moved file under the next name.
    h.src.clear_faults();
    h.src.mkdir_all("archive/acme").await.unwrap();
    h.src.put("archive/acme/remit.xlsx", b"xxxxx", old());
    h.src
        .mv("in/acme/remit.xlsx", "archive/acme/remit (1).xlsx");
    h.pass().await;

    let row = h.only_row().await;
    assert_eq!(
        row.archive_path.as_deref(),
        Some("archive/acme/remit (1).xlsx")
    );
    assert_eq!(
        h.src.read("archive/acme/remit.xlsx").as_deref(),
        Some(&b"xxxxx"[..])
    );
}

#[tokio::test]
async fn a_taken_name_is_never_replaced_and_a_move_takes_the_next_name() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit.xlsx", b"new", old());
    h.src.fail_rename("in/acme/remit.xlsx");
    h.run().await;
    h.src.clear_faults();
    h.src.mkdir_all("archive/acme").await.unwrap();
    h.src.put("archive/acme/remit.xlsx", b"first", old());
    h.src.put("archive/acme/remit (1).xlsx", b"older", old());
    h.pass().await;

    assert_eq!(
        h.only_row().await.archive_path.as_deref(),
        Some("archive/acme/remit (2).xlsx")
    );
    assert_eq!(
        h.src.read("archive/acme/remit.xlsx").as_deref(),
        Some(&b"first"[..])
    );
    assert_eq!(
        h.src.read("archive/acme/remit (1).xlsx").as_deref(),
        Some(&b"older"[..])
    );
    assert_eq!(
        h.src.read("archive/acme/remit (2).xlsx").as_deref(),
        Some(&b"new"[..])
    );
}

#[tokio::test]
async fn a_file_held_open_for_writing_is_not_archived_until_released() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit.xlsx", b"x", old());
    h.src.fail_rename("in/acme/remit.xlsx");
    h.run().await;
    h.src.clear_faults();
    h.src.mark_open_for_write("in/acme/remit.xlsx");
    h.pass().await;
    assert!(!h.only_row().await.archived(), "a writer holds it");
    assert_eq!(h.src.files_under("archive"), Vec::<String>::new());

    h.src.clear_faults();
    h.pass().await;
    assert!(h.only_row().await.archived());
    assert_eq!(h.src.files_under("archive"), ["archive/acme/remit.xlsx"]);
}

/// A file an operator sent back (`retry_requested`) is claimed again by the
/// next run, sent with the same ITM key, and a new failure is queued under
/// a key of its own.
#[tokio::test]
async fn a_retry_requested_file_is_claimed_and_sent_again() {
    let h = Harness::new().await;
    h.itm.set(Err(DownstreamError::Connect("ITM down".into())));
    h.src.put("in/acme/remit.csv", b"x", old());
    h.run().await;
    let id = h.only_row().await.id;
    h.set_status_raw(id, "retry_requested").await;

    let r = h.run().await;

    assert_eq!((r.summary.processed, r.summary.failed), (1, 1));
    assert_eq!(
        h.events(id).await,
        ["processing", "itm_failed", "processing", "itm_failed"]
    );
    let keys: Vec<String> = h
        .notifications()
        .await
        .into_iter()
        .map(|n| n.dedupe_key)
        .collect();
    assert_eq!(
        keys,
        [format!("file_failed:{id}"), format!("file_failed:{id}:2")]
    );
    let calls = h.itm.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].1, calls[1].1, "the same Idempotency-Key");
    // Not retried again: the next run leaves it alone.
    h.run().await;
    assert_eq!(h.itm.calls().len(), 2);
}

#[tokio::test]
async fn a_dry_run_decides_like_a_run_and_does_nothing() {
    let h = Harness::new().await;
    h.src.put("in/acme/remit_20240101.csv", b"old", old());
    h.src.put("in/acme/remit_20240202.csv", b"new", old());
    h.src.put("in/acme/fresh.csv", b"fresh", t0());
    // A real run holds the lock meanwhile: the dry run neither waits nor fails.
    let (held, owner) = (Uuid::new_v4(), Uuid::new_v4());
    h.join(owner).await;
    let started = h.store.begin_run(held, "api", "x", owner).await.unwrap();
    assert_eq!(started, RunStart::Started, "no run in progress");
    let r = h.engine.dry_run("test").await.expect("dry run completes");
    let body = serde_json::json!({});
    let end = crate::store::RunEnd {
        run_id: held,
        owner,
        finished_by: "x",
        status: "completed",
        summary: &body,
        error: None,
        notification: None,
    };
    assert!(h.store.finish_run(&end).await.unwrap());
    h.settle().await;
    assert!(r.dry_run);
    assert_eq!(
        report_of(&r, "remit_20240202.csv").decision,
        Decision::WouldProcess
    );
    assert_eq!(
        report_of(&r, "remit_20240101.csv").decision,
        Decision::Superseded
    );
    assert_eq!(report_of(&r, "fresh.csv").decision, Decision::Unstable);
    assert_eq!(
        (
            r.summary.would_process,
            r.summary.processed,
            r.summary.failed
        ),
        (1, 0, 0)
    );
    assert!(h.foi.calls().is_empty() && h.itm.calls().is_empty());
    assert!(h.files().await.is_empty());
    assert_eq!(h.src.files_under("archive/acme").len(), 0);
    let runs = h.runs().await;
    let dry: Vec<&RunRow> = runs.iter().filter(|r| r.dry_run).collect();
    assert_eq!(dry.len(), 1);
    assert_eq!(
        (dry[0].status.as_str(), dry[0].trigger.as_str()),
        ("completed", "test")
    );
    assert_eq!(*h.engine.passes_done().borrow(), 0, "no background pass");
    assert!(h.spool_is_empty());
}

/// Issue 12, item 2: a delivery still waiting for IQube's answer when the
/// pass's budget runs out, or when shutdown is requested, is awaited and
/// recorded; it is never dropped and sent again by the next pass.
#[tokio::test]
async fn a_delivery_cut_by_the_budget_or_shutdown_is_awaited_not_sent_again() {
    for stop in [false, true] {
        let h = Harness::with(|s| RunSettings {
            delivery_budget: Duration::from_millis(50),
            ..s
        })
        .await;
        h.iqube.set_delay(Duration::from_millis(400));
        h.foi.set(password_failure());
        h.src.put("in/acme/remit.xlsx", b"x", old());

        h.engine.run("test").await.expect("the run completes");
        if stop {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while h.iqube.calls().is_empty() {
                assert!(tokio::time::Instant::now() < deadline, "IQube never called");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            h.engine.stop().cancel();
        }
        h.settle().await;
        let outbox = h.notifications().await;
        assert_eq!(outbox.len(), 1);
        assert!(outbox[0].delivered, "stop={stop}: {outbox:?}");
        h.make_notifications_due().await;
        h.pass().await;
        assert_eq!(h.iqube.calls().len(), 1, "stop={stop}: sent once");
    }
}

/// A processed file replaced by other bytes of the same size that keep its
/// last-write time (a copy that keeps the source's time): only its change
/// time moved. The move refuses it (not archived), and the next run
/// downloads it and sends the new content as a new version.
#[tokio::test]
async fn a_file_whose_change_time_moved_is_not_archived_and_is_sent_again() {
    let h = Harness::new().await;
    let path = "in/acme/remit.csv";
    h.src.put(path, b"first", old());
    h.src.fail_rename(path);
    let r = h.run().await;
    assert_eq!(report_of(&r, "remit.csv").decision, Decision::Processed);
    assert!(h.src.exists(path), "the first move failed");
    h.src.put(path, b"other", old());
    h.src.set_ctime(path, old() + chrono::Duration::minutes(5));
    h.src.clear_faults();

    h.pass().await;
    assert_eq!(
        h.src.read(path).as_deref(),
        Some(&b"other"[..]),
        "not archived"
    );
    assert!(!h.only_row().await.archived());

    let r = h.run().await;
    let f = report_of(&r, "remit.csv");
    assert_eq!(f.decision, Decision::Processed, "{f:?}");
    let sent: Vec<Vec<u8>> = h.foi.calls().into_iter().map(|c| c.bytes).collect();
    assert_eq!(sent, [b"first".to_vec(), b"other".to_vec()]);
    let rows = h.files().await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[1].archived() && !rows[0].archived(), "{rows:?}");
    assert_eq!(
        h.src.read("archive/acme/remit.csv").as_deref(),
        Some(&b"other"[..])
    );
}

/// Only the change time moved, the content is the same: the next run
/// downloads it once more, finds the row by MD5 and refreshes its recorded
/// times, so the pass moves it (it is not left in the source for good).
#[tokio::test]
async fn a_file_whose_change_time_alone_moved_is_refreshed_and_archived() {
    let h = Harness::new().await;
    let path = "in/acme/remit.csv";
    h.src.put(path, b"first", old());
    h.src.fail_rename(path);
    h.run().await;
    let moved = old() + chrono::Duration::minutes(5);
    h.src.set_ctime(path, moved);
    h.src.clear_faults();
    h.pass().await;
    assert!(
        h.src.exists(path),
        "the recorded version is not the one in the source"
    );

    let r = h.run().await;
    let f = report_of(&r, "remit.csv");
    assert_eq!(f.decision, Decision::AlreadyProcessed, "{f:?}");
    assert_eq!(h.foi.calls().len(), 1, "not sent again");
    assert_eq!(h.src.fetches().len(), 2, "downloaded once more");
    let row = h.only_row().await;
    assert_eq!(row.ctime, Some(moved));
    assert!(row.archived(), "{row:?}");
    assert!(!h.src.exists(path));
    assert_eq!(
        h.events(row.id).await,
        ["processing", "success", "archive_succeeded"]
    );
}

/// A processed and archived old version copied back after a newer one was
/// claimed is superseded (never sent again) and archived again with its
/// row: a second `archive_succeeded`, as every move writes one.
#[tokio::test]
async fn a_processed_old_version_copied_back_is_archived_again_with_its_row() {
    let h = Harness::new().await;
    h.src.put("in/acme/r_20240101.csv", b"old", old());
    h.run().await;
    h.src.put("in/acme/r_20240102.csv", b"new", old());
    h.run().await;
    h.src.put("in/acme/r_20240101.csv", b"old", old());
    let r = h.run().await;
    assert_eq!(
        report_of(&r, "r_20240101.csv").decision,
        Decision::Superseded
    );
    assert!(!h.src.exists("in/acme/r_20240101.csv"));
    assert_eq!(
        h.src.read("archive/acme/r_20240101 (1).csv").as_deref(),
        Some(&b"old"[..])
    );
    let row = h.files().await[0].clone();
    assert_eq!(row.file_name, "r_20240101.csv");
    assert_eq!(
        row.archive_path.as_deref(),
        Some("archive/acme/r_20240101 (1).csv")
    );
    assert_eq!(
        h.events(row.id).await,
        [
            "processing",
            "success",
            "archive_succeeded",
            "archive_succeeded"
        ]
    );
    assert_eq!(h.foi.calls().len(), 2, "never sent again");
}

/// CONTRACT §12, two copies in one run: the first by copy order is sent,
/// even when the other one is older (taken first by fair share alone) and
/// read first. `a.csv`'s read is held back until `a (1).csv` was read; a
/// third file of the same size with other bytes is claimed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_copies_in_one_run_the_first_by_copy_order_is_sent() {
    let h = Harness::with(|s| RunSettings {
        duplicate_content: crate::config::DuplicateContent::Hold,
        max_concurrent_files: 4,
        ..s
    })
    .await;
    let later = old() + chrono::Duration::minutes(1);
    h.src.put("in/acme/a.csv", b"same bytes", later);
    h.src.put("in/acme/a (1).csv", b"same bytes", old());
    h.src.put("in/acme/b.csv", b"othr bytes", old());
    let gate = h.src.pause_fetch("in/acme/a.csv");
    let engine = h.engine.clone();
    let run = tokio::spawn(async move { engine.run("test").await });
    // `b.csv` (other bytes) is claimed while `a.csv` is held back, and
    // `a (1).csv` has been read by then.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let names: Vec<String> = h.files().await.into_iter().map(|f| f.file_name).collect();
            let fetched = h.src.fetches();
            if names.iter().any(|n| n == "b.csv")
                && fetched.iter().any(|p| p.ends_with("a (1).csv"))
            {
                assert!(
                    !names.iter().any(|n| n == "a (1).csv"),
                    "the later copy claimed before the earlier one was read"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("b.csv claimed and a (1).csv read while a.csv waits");
    gate.add_permits(1);
    let r = run.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    h.settle().await;

    let first = report_of(&r, "a.csv");
    assert_eq!(first.status, Some(FileStatus::Success), "{r:?}");
    let copy = report_of(&r, "a (1).csv");
    assert_eq!(copy.decision, Decision::HeldDuplicate, "{r:?}");
    let rows = h.files().await;
    let id = |name: &str| rows.iter().find(|f| f.file_name == name).unwrap().id;
    let held = h.event_rows(id("a (1).csv")).await;
    assert_eq!(held.last().unwrap().detail["duplicate_of"], id("a.csv"));
    let mut sent: Vec<String> = h.foi.calls().into_iter().map(|c| c.file_name).collect();
    sent.sort();
    assert_eq!(sent, ["a.csv", "b.csv"]);
}

/// The look at other instances' earlier copies: members of the class
/// before this one, taken by another live incarnation and not done; not
/// this one's, not later ones, not pending ones (given back).
#[tokio::test]
async fn earlier_copies_elsewhere_counts_only_earlier_members_others_hold() {
    use crate::plan::duplicates::{CopyPlace, order_copies};
    use crate::store::WorkStore;
    let h = Harness::new().await;
    let store = h.db.store();
    let (me, other) = (h.engine.incarnation(), Uuid::new_v4());
    h.join(other).await;
    let run_id = Uuid::new_v4();
    store.begin_run(run_id, "manual", "test", me).await.unwrap();
    let g = |name: &str| plan::Group {
        base_name: name.into(),
        newest: scan::Candidate {
            remitter: "acme".into(),
            entry: crate::source::Entry {
                name: name.into(),
                is_dir: false,
                size: 10,
                mtime: old(),
                ctime: old(),
            },
        },
        superseded: vec![],
        copies: None,
    };
    let mut work = vec![(0, g("c.csv")), (1, g("b.csv")), (2, g("a.csv"))];
    order_copies(&mut work);
    store
        .add_work(run_id, &serde_json::json!({}), &work)
        .await
        .unwrap();
    let place = |pos| CopyPlace {
        class: "acme/10".into(),
        pos,
    };
    // The other instance takes c.csv (position 0).
    let taken = store.take_work(run_id, other, 1).await.unwrap();
    assert_eq!(taken[0].group.copies, Some(place(0)));
    let (first, last) = (place(0), place(2));
    let n = |place, holder| store.earlier_copies_elsewhere(run_id, place, holder);
    assert_eq!(n(&last, me).await.unwrap(), 1);
    assert_eq!(n(&first, me).await.unwrap(), 0, "nothing before the first");
    assert_eq!(n(&last, other).await.unwrap(), 0, "its own member");
    store.release_work(run_id, other, None).await.unwrap();
    assert_eq!(n(&last, me).await.unwrap(), 0, "given back: not waited for");
}
