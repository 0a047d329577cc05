//! Superseded (older) versions (CONTRACT §1.2, §1.3, §1.6; issue 12): an old
//! version copied back after its archive is archived again; a failed older
//! version stays in the source until an operator acts, and a retried one is
//! archived with its row; an older version still being written waits like
//! any unstable file; remitter folders that differ only in case are one
//! group; a file whose change time moved is not archived as the version
//! that was processed.

use crate::fakes::ItmBehavior;
use crate::gate::{Gate, Point};
use crate::helpers::{Opts, TestApp, decision_of, md5_hex, spawn_app};
use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use coordinator::source::{Entry, Expected, Fetched, FileSource, Moved, SourceError, join};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Sets the last-write time of a file on the share's disk.
fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn mtime_of(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// Rows of `superseded_files`: `(remitter, file_name, resolved, archive_path)`.
async fn superseded_rows(app: &TestApp) -> Vec<(String, String, bool, Option<String>)> {
    sqlx::query_as(
        "SELECT remitter, file_name, resolved_at IS NOT NULL, archive_path FROM superseded_files ORDER BY id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap()
}

async fn row(app: &TestApp, id: i64) -> crate::helpers::FileRow {
    app.files().await.into_iter().find(|f| f.id == id).unwrap()
}

fn reason<'a>(body: &'a serde_json::Value, remitter: &str, name: &str) -> &'a str {
    decision_of(body, remitter, name)["reason"]
        .as_str()
        .unwrap_or_default()
}

/// Item 3: an old version archived once and copied back with the same
/// bytes, size and last-write time is superseded again and moved again,
/// under a suffixed name; nothing is sent downstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_version_copied_back_after_its_archive_is_archived_again() {
    let mut app = spawn_app(Opts::default()).await;
    let (old, new) = ("report_20240101120000.csv", "report_20240102120000.csv");
    app.put("acme", old, b"v1").await;
    app.put("acme", new, b"v2").await;
    let body = app.run_ok().await;
    assert_eq!(decision_of(&body, "acme", old)["decision"], "superseded");
    app.eventually(30, "both versions archived", || async {
        app.in_archive("acme", old) && app.in_archive("acme", new)
    })
    .await;
    let archived = app.local(&format!("{}/acme/{old}", app.archive_dir));
    let t = mtime_of(&archived);

    // The old version is copied back: same bytes, size and last-write time.
    app.put("acme", old, b"v1").await;
    let copy = app.local(&format!("{}/acme/{old}", app.source_dir));
    set_mtime(&copy, t);
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", old)["decision"],
        "superseded",
        "{body}"
    );
    app.eventually(30, "the copy archived again", || async {
        !app.in_source("acme", old)
    })
    .await;
    let suffixed = "report_20240101120000 (1).csv";
    assert!(
        app.in_archive("acme", suffixed),
        "{:?}",
        app.archive_names("acme")
    );
    assert_eq!(
        std::fs::read(app.local(&format!("{}/acme/{suffixed}", app.archive_dir))).unwrap(),
        b"v1"
    );
    assert_eq!(std::fs::read(&archived).unwrap(), b"v1", "never replaced");
    let rows = superseded_rows(&app).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r.2), "{rows:?}");
    assert_eq!(app.fakes.foi_names(), [new], "nothing else sent");
    assert_eq!(app.count("files").await, 1);
    app.finish().await;
}

/// `old` fails at ITM (`itm_failed`), then `new` arrives and succeeds and
/// is archived: returns the old version's row id and the second run's answer.
async fn failed_then_superseded(
    app: &mut TestApp,
    old: &str,
    new: &str,
) -> (i64, serde_json::Value) {
    app.fakes.set_itm(ItmBehavior::Failed);
    app.put("acme", old, b"old").await;
    let body = app.run_ok().await;
    assert_eq!(decision_of(&body, "acme", old)["status"], "itm_failed");
    let old_id = app.files().await[0].id;
    app.fakes.set_itm(ItmBehavior::Success);
    app.put("acme", new, b"new").await;
    let body = app.run_ok().await;
    app.eventually(30, "the new version archived", || async {
        app.in_archive("acme", new)
    })
    .await;
    (old_id, body)
}

/// Item 7: a failed older version stays in the source, untouched, until an
/// operator acts (CONTRACT §1); once retried it is superseded (never sent:
/// a newer version was claimed) and archived with its row and one
/// `archive_succeeded` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_older_version_stays_until_retried_then_is_archived_with_its_row() {
    let mut app = spawn_app(Opts::default()).await;
    let (old, new) = ("remit_20240101.csv", "remit_20240102.csv");
    let (old_id, body) = failed_then_superseded(&mut app, old, new).await;
    assert_eq!(decision_of(&body, "acme", new)["status"], "success");
    assert_eq!(decision_of(&body, "acme", old)["decision"], "superseded");
    assert!(
        reason(&body, "acme", old).contains("until an operator acts"),
        "{body}"
    );
    assert!(app.in_source("acme", old), "a failed file stays");
    assert!(!app.in_archive("acme", old));
    assert!(!row(&app, old_id).await.archived);
    assert!(superseded_rows(&app).await.is_empty());

    app.retry(old_id).await;
    let body = app.run_ok().await;
    let d = decision_of(&body, "acme", old);
    assert_eq!(d["decision"], "superseded", "{body}");
    assert!(!app.in_source("acme", old), "archived by the pass");
    assert!(app.in_archive("acme", old));
    let r = row(&app, old_id).await;
    assert!(r.archived, "{r:?}");
    assert_eq!(r.status, "retry_requested");
    let events = app.events(old_id).await;
    assert_eq!(
        events,
        [
            "processing",
            "itm_failed",
            "retry_requested",
            "archive_succeeded"
        ]
    );
    let path: Option<String> = sqlx::query_scalar("SELECT archive_path FROM files WHERE id = $1")
        .bind(old_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(path, Some(format!("{}/acme/{old}", app.archive_dir)));
    // Sent once each: the retried old version was not sent again.
    assert_eq!(app.fakes.foi_names(), [old, new]);
    assert_eq!(app.fakes.itm_calls().len(), 2);
    // Another run and pass change nothing.
    app.run_ok().await;
    assert_eq!(app.events(old_id).await.len(), 4);
    app.finish().await;
}

/// Item 6 (a): with a large `STABLE_MIN_AGE_SECS`, a group whose newest
/// version is old but whose older version was just written: the newest is
/// processed, the older one is not recorded and stays in the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_just_written_is_not_archived() {
    let mut app = spawn_app(Opts {
        min_age_secs: 600.0,
        ..Opts::default()
    })
    .await;
    let (old, new) = ("remit_20240101.csv", "remit_20240102.csv");
    app.put("acme", new, b"new, written an hour ago").await;
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    set_mtime(
        &app.local(&format!("{}/acme/{new}", app.source_dir)),
        hour_ago,
    );
    app.put("acme", old, b"old, still being copied").await;
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", new)["status"],
        "success",
        "{body}"
    );
    assert_eq!(decision_of(&body, "acme", old)["decision"], "superseded");
    assert!(
        reason(&body, "acme", old).contains("still being written"),
        "{body}"
    );
    assert!(superseded_rows(&app).await.is_empty(), "not recorded");
    app.eventually(30, "the newest archived", || async {
        app.in_archive("acme", new)
    })
    .await;
    assert!(app.in_source("acme", old), "it waits in the source");
    assert!(!app.in_archive("acme", old));
    assert_eq!(app.fakes.foi_names(), [new]);
    app.finish().await;
}

/// Item 6 (b): the older version is appended to between the two looks: it
/// waits (no row, not moved); the newest is processed. A later run, once it
/// is stable, archives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_written_to_between_the_looks_is_not_archived() {
    let mut app = spawn_app(Opts::default()).await;
    let (old, new) = ("remit_20240101.csv", "remit_20240102.csv");
    app.put("acme", old, b"old").await;
    app.put("acme", new, b"new").await;
    let dir = format!("{}/acme", app.source_dir);
    // The first listing of the folder is the scan; the second, the second look.
    let gate = Gate::nth(
        app.server.engine.source().clone(),
        Point::BeforeList,
        &dir,
        1,
    );
    let engine = app.server.engine.over(gate.clone());
    let runner = engine.clone();
    let run = tokio::spawn(async move { runner.run("test").await });
    gate.wait_reached().await;
    let path = app.local(&format!("{dir}/{old}"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b", and more");
    std::fs::write(&path, &bytes).unwrap();
    gate.go.notify_one();
    let report = run.await.unwrap().expect("the run completes");
    engine.tracker().close();
    engine.tracker().wait().await;
    let of = |name: &str| {
        report
            .summary
            .files
            .iter()
            .find(|f| f.file_name == name)
            .unwrap()
            .clone()
    };
    assert_eq!(serde_json::to_value(of(new).decision).unwrap(), "processed");
    let o = of(old);
    assert_eq!(serde_json::to_value(o.decision).unwrap(), "superseded");
    assert!(
        o.reason.as_deref().unwrap().contains("still being written"),
        "{o:?}"
    );
    assert!(superseded_rows(&app).await.is_empty(), "not recorded");
    assert!(app.in_source("acme", old));
    assert!(!app.in_archive("acme", old));

    // Stable now: the next run archives it (the newest was archived, so it
    // is a late arrival now).
    let body = app.run_ok().await;
    assert!(reason(&body, "acme", old).contains("never sent"), "{body}");
    app.eventually(30, "the older version archived", || async {
        app.in_archive("acme", old)
    })
    .await;
    assert_eq!(
        std::fs::read(app.local(&format!("{}/acme/{old}", app.archive_dir))).unwrap(),
        bytes
    );
    assert_eq!(app.fakes.foi_names(), [new]);
    app.finish().await;
}

/// Item 8: remitter folders `Acme` and `acme` holding versions of one base
/// name are one group: the newest is processed, the other is superseded and
/// archived under its own folder name. (The folders are made on the
/// server's disk: over SMB the second name would open the first folder.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remitter_folders_differing_only_in_case_are_one_group() {
    let mut app = spawn_app(Opts::default()).await;
    let (old, new) = ("remit_20240101.csv", "remit_20240102.csv");
    let source = app.local(&app.source_dir);
    let owner = std::fs::metadata(&source).unwrap();
    for (folder, name, bytes) in [("Acme", new, &b"new"[..]), ("acme", old, &b"old"[..])] {
        let dir = source.join(folder);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
        for p in [dir.clone(), dir.join(name)] {
            std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid())).unwrap();
        }
    }
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "Acme", new)["status"],
        "success",
        "{body}"
    );
    assert_eq!(decision_of(&body, "acme", old)["decision"], "superseded");
    assert!(reason(&body, "acme", old).contains(new), "{body}");
    app.eventually(
        30,
        "the older version archived in its own folder",
        || async { app.in_archive("acme", old) },
    )
    .await;
    assert!(!app.in_source("acme", old));
    assert_eq!(app.fakes.foi_names(), [new]);
    assert_eq!(app.count("files").await, 1);
    // The next run finds the newest processed and nothing else to do.
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["processed"], 0, "{body}");
    app.finish().await;
}

/// Item 8 with item 6: the older version sits in the folder `acme`, its
/// newest in `Acme`; it is appended to between the two looks. One group:
/// its own folder is listed again too, so it waits (not recorded, not moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_in_the_other_case_folder_gets_its_second_look() {
    let app = spawn_app(Opts::default()).await;
    let (old, new) = ("remit_20240101.csv", "remit_20240102.csv");
    let source = app.local(&app.source_dir);
    let owner = std::fs::metadata(&source).unwrap();
    for (folder, name, bytes) in [("Acme", new, &b"new"[..]), ("acme", old, &b"old"[..])] {
        let dir = source.join(folder);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
        for p in [dir.clone(), dir.join(name)] {
            std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid())).unwrap();
        }
    }
    let dir = format!("{}/acme", app.source_dir);
    let gate = Gate::nth(
        app.server.engine.source().clone(),
        Point::BeforeList,
        &dir,
        1,
    );
    let engine = app.server.engine.over(gate.clone());
    let runner = engine.clone();
    let run = tokio::spawn(async move { runner.run("test").await });
    gate.wait_reached().await;
    std::fs::write(app.local(&format!("{dir}/{old}")), b"old, and more").unwrap();
    gate.go.notify_one();
    let report = run.await.unwrap().expect("the run completes");
    engine.tracker().close();
    engine.tracker().wait().await;
    let o = report
        .summary
        .files
        .iter()
        .find(|f| f.file_name == old)
        .unwrap();
    assert!(
        o.reason.as_deref().unwrap().contains("still being written"),
        "{o:?}"
    );
    assert_eq!(report.summary.processed, 1);
    assert!(superseded_rows(&app).await.is_empty(), "not recorded");
    assert!(app.in_source("acme", old));
    assert_eq!(app.fakes.foi_names(), [new]);
    app.finish().await;
}

/// The share as a server that reports a file's real change time (Windows,
/// most NAS): Samba reports the last-write time as the change time, so over
/// it a change that keeps the last-write time is invisible. This wrapper
/// reads the change time from the share's disk and refuses a move whose
/// expected change time is no longer the file's, as such a server's open
/// would show it.
struct DiskChangeTime {
    inner: Arc<dyn FileSource>,
    disk: PathBuf,
}

impl DiskChangeTime {
    fn ctime(&self, path: &str) -> Option<DateTime<Utc>> {
        let m = std::fs::metadata(self.disk.join(path)).ok()?;
        DateTime::from_timestamp(m.ctime(), m.ctime_nsec() as u32).map(|t| t.trunc_subsecs(6))
    }

    fn with_ctime(&self, path: &str, mut e: Entry) -> Entry {
        if let Some(c) = self.ctime(path) {
            e.ctime = c;
        }
        e
    }
}

#[async_trait]
impl FileSource for DiskChangeTime {
    async fn list(&self, dir: &str) -> Result<Vec<Entry>, SourceError> {
        let entries = self.inner.list(dir).await?;
        Ok(entries
            .into_iter()
            .map(|e| {
                let path = join(&[dir, &e.name]);
                self.with_ctime(&path, e)
            })
            .collect())
    }
    async fn stat(&self, path: &str) -> Result<Entry, SourceError> {
        let e = self.inner.stat(path).await?;
        Ok(self.with_ctime(path, e))
    }
    async fn fetch(&self, path: &str, dest: &Path) -> Result<Fetched, SourceError> {
        let mut f = self.inner.fetch(path, dest).await?;
        f.after = self.with_ctime(path, f.after);
        Ok(f)
    }
    async fn mkdir_all(&self, dir: &str) -> Result<(), SourceError> {
        self.inner.mkdir_all(dir).await
    }
    async fn move_file(
        &self,
        from: &str,
        to: &str,
        expected: &Expected,
    ) -> Result<Moved, SourceError> {
        let now = self.stat(from).await?;
        if !expected.matches(&now) {
            return Ok(Moved::Changed(now));
        }
        let inner = Expected {
            ctime: None,
            ..expected.clone()
        };
        self.inner.move_file(from, to, &inner).await
    }
    async fn server_now(&self) -> Result<DateTime<Utc>, SourceError> {
        self.inner.server_now().await
    }
}

/// Item 8: just before the archive moves a processed file, it is replaced
/// by other bytes of the same size with its last-write time restored (its
/// change time moves): it is not archived, and the next run sends the new
/// content as a new version (over a share that reports real change times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_change_time_moved_before_its_move_is_not_archived() {
    let app = spawn_app(Opts::default()).await;
    app.put("acme", "remit.csv", b"first").await;
    let path = format!("{}/acme/remit.csv", app.source_dir);
    let share: Arc<dyn FileSource> = Arc::new(DiskChangeTime {
        inner: app.server.engine.source().clone(),
        disk: app.share_path.clone(),
    });
    let gate = Gate::new(share, Point::BeforeMove, &path);
    let engine = app.server.engine.over(gate.clone());
    let runner = engine.clone();
    let run = tokio::spawn(async move { runner.run("test").await });
    gate.wait_reached().await;
    let local = app.local(&path);
    let t = mtime_of(&local);
    std::fs::write(&local, b"other").unwrap();
    set_mtime(&local, t);
    gate.go.notify_one();
    let report = run.await.unwrap().expect("the run completes");
    assert_eq!(report.summary.processed, 1, "{:?}", report.summary.files);
    engine.tracker().close();
    engine.tracker().wait().await;
    assert_eq!(std::fs::read(&local).unwrap(), b"other", "not archived");
    assert!(app.archive_names("acme").is_empty());
    assert!(!app.files().await[0].archived);

    let again = app.server.engine.over(engine.source().clone());
    let report = again.run("test").await.expect("the run completes");
    let f = report
        .summary
        .files
        .iter()
        .find(|f| f.file_name == "remit.csv")
        .unwrap();
    assert_eq!(
        serde_json::to_value(f.decision).unwrap(),
        "processed",
        "{f:?}"
    );
    again.tracker().close();
    again.tracker().wait().await;
    let sent: Vec<String> = app.fakes.foi_calls().into_iter().map(|c| c.md5).collect();
    assert_eq!(sent, [md5_hex(b"first"), md5_hex(b"other")]);
    let rows = app.files().await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(!rows[0].archived && rows[1].archived, "{rows:?}");
    assert_eq!(
        std::fs::read(app.local(&format!("{}/acme/remit.csv", app.archive_dir))).unwrap(),
        b"other"
    );
    app.finish().await;
}

/// A retried older version is moved, but the answer to its rename is lost
/// (the file is renamed into the archive while the gate holds the move, so
/// the move itself then finds nothing): the next pass finds it in the
/// archive by its row's content and records the move on that row, with one
/// `archive_succeeded`, instead of resolving it as gone without a trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_older_versions_lost_move_is_recorded_with_its_row() {
    let mut app = spawn_app(Opts::default()).await;
    let (old, new) = ("remit_20240101.csv", "remit_20240102.csv");
    let (old_id, _) = failed_then_superseded(&mut app, old, new).await;
    app.retry(old_id).await;

    let from = format!("{}/acme/{old}", app.source_dir);
    let gate = Gate::new(app.server.engine.source().clone(), Point::BeforeMove, &from);
    let engine = app.server.engine.over(gate.clone());
    let mut passes = engine.passes_done();
    let run = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run("test").await }
    });
    gate.wait_reached().await;
    std::fs::rename(
        app.local(&from),
        app.local(&format!("{}/acme/{old}", app.archive_dir)),
    )
    .unwrap();
    gate.go.notify_one();
    run.await.unwrap().expect("the run completes");
    tokio::time::timeout(Duration::from_secs(60), passes.wait_for(|n| *n >= 1))
        .await
        .expect("the run's pass ends")
        .unwrap();
    assert!(
        !row(&app, old_id).await.archived,
        "the pass saw its move fail"
    );

    engine.background_pass().await;
    let r = row(&app, old_id).await;
    assert!(r.archived, "recorded on its row: {r:?}");
    let events = app.events(old_id).await;
    assert_eq!(
        events.iter().filter(|e| *e == "archive_succeeded").count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        app.fakes.itm_calls().len(),
        2,
        "the old version never sent again"
    );
    app.finish().await;
}
