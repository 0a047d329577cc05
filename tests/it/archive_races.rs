//! The archive never loses a file (CONTRACT §1.6), on the real share:
//! colliding names moved in one pass and by two instances, and, made
//! deterministic with a source that pauses at a chosen point, a competing
//! move that takes the name a mover was about to use, a new upload right
//! after the pass's listing, and a file a remitter holds open for writing.

use crate::gate::{Gate, Point};
use crate::helpers::{Opts, TestApp, TestEnv, decision_of, spawn_app};
use coordinator::archive::Archiver;
use coordinator::engine::{Deps, RunSettings};
use coordinator::source::smb::SmbShare;
use coordinator::source::{Expected, FileSource};
use coordinator::store::PgStore;
use sqlx::postgres::PgPoolOptions;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

/// An archiver of `app`'s share and database over `source`, as a second
/// instance would run it.
async fn archiver(app: &TestApp, source: Arc<dyn FileSource>) -> Arc<Archiver> {
    let url = String::from(app.args.base.db.database_url.as_ref().unwrap().expose());
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    let engine = &app.server.engine;
    let deps = Deps {
        source,
        store: Arc::new(PgStore::from_pool(pool)),
        ..engine.deps().clone()
    };
    let settings = RunSettings {
        source_dir: app.source_dir.clone(),
        archive_dir: app.archive_dir.clone(),
        delivery_budget: Duration::from_secs(5),
        ..engine.settings().clone()
    };
    Arc::new(Archiver::new(
        Arc::new(deps),
        Arc::new(settings),
        Default::default(),
    ))
}

/// Every file of a folder on the share's disk: name → content.
fn contents(app: &TestApp, dir: &str) -> BTreeMap<String, String> {
    std::fs::read_dir(app.local(dir))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let bytes = std::fs::read(e.path()).unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        String::from_utf8_lossy(&bytes).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn chmod(app: &TestApp, rel: &str, mode: u32) {
    std::fs::set_permissions(app.local(rel), std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `remit.csv` processed while the archive folder is not writable, so it
/// waits in the source for a pass of the test's own archiver.
async fn processed_not_archived(app: &mut TestApp, bytes: &[u8]) {
    app.put("acme", "remit.csv", bytes).await;
    let blocked = format!("{}/acme", app.archive_dir);
    app.remitter_share.mkdir_all(&blocked).await.unwrap();
    chmod(app, &blocked, 0o555);
    let body = app.run_ok().await;
    assert_eq!(decision_of(&body, "acme", "remit.csv")["status"], "success");
    assert!(!app.files().await[0].archived);
    chmod(app, &blocked, 0o775);
}

/// Names that collide under the ` (n)` rule, moved by one pass (60 at once)
/// and then by a second instance: every file ends in the archive with its
/// own bytes, none replaced, none left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_names_are_all_archived_with_their_own_bytes() {
    let n = 30;
    let mut app = spawn_app(Opts::default()).await;
    let mut want: Vec<String> = Vec::new();
    for i in 0..n {
        let c = format!("round 1, n{i}.csv");
        app.put("acme", &format!("n{i}.csv"), c.as_bytes()).await;
        want.push(c);
    }
    app.run_ok().await;
    // Each n{i}.csv again (its archive name is taken) and a file literally
    // named n{i} (1).csv: both want the archive name n{i} (1).csv.
    // Rounds differ in length: a same-size file with the same whole-second
    // time under a processed name would be skipped as already processed.
    let round = |r: &'static str| {
        (0..n).flat_map(move |i| {
            [
                (format!("n{i}.csv"), format!("round {r}, n{i}.csv")),
                (
                    format!("n{i} (1).csv"),
                    format!("round {r}, literal n{i} (1).csv"),
                ),
            ]
        })
    };
    for (name, c) in round("two") {
        app.put("acme", &name, c.as_bytes()).await;
        want.push(c);
    }
    app.run_ok().await;
    let other = app.start_another().await;
    for (name, c) in round("three") {
        app.put("acme", &name, c.as_bytes()).await;
        want.push(c);
    }
    let mut passes = other.engine.passes_done();
    let resp = app
        .http
        .post(format!("http://{}/api/v1/coordinator/runs", other.addr))
        .bearer_auth(app.token.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::timeout(Duration::from_secs(120), passes.wait_for(|n| *n >= 1))
        .await
        .expect("the other instance's pass finished")
        .unwrap();
    let archive = format!("{}/acme", app.archive_dir);
    let mut got: Vec<String> = contents(&app, &archive).into_values().collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "each file once, with its own bytes");
    assert!(contents(&app, &format!("{}/acme", app.source_dir)).is_empty());
    let unarchived: i64 =
        sqlx::query_scalar("SELECT count(*) FROM files WHERE archived_at IS NULL")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(unarchived, 0);
    other.shutdown.cancel();
    let _ = other.done.await;
    app.finish().await;
}

/// The version of `path` on the share now, as a move expects it.
async fn expected(app: &TestApp, path: &str) -> Expected {
    let e = app.remitter_share.stat(path).await.unwrap();
    Expected {
        size: e.size,
        mtime: e.mtime,
        ctime: Some(e.ctime),
    }
}

/// Mover A finds `a.csv` taken and is held just before it moves the second
/// `a.csv` to `a (1).csv`; mover B then moves a source file literally named
/// `a (1).csv` onto that name. A's rename is refused by the share (never a
/// replace) and A takes `a (2).csv`: every file keeps its own bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_competing_move_onto_the_same_name_takes_the_next_name() {
    let app = spawn_app(Opts::default()).await;
    let archive = format!("{}/acme", app.archive_dir);
    app.remitter_share.mkdir_all(&archive).await.unwrap();
    app.remitter_share
        .write_file(&format!("{archive}/a.csv"), b"first a.csv".to_vec())
        .await
        .unwrap();
    app.put("acme", "a.csv", b"second a.csv").await;
    app.put("acme", "a (1).csv", b"literal a (1).csv").await;
    let source = format!("{}/acme", app.source_dir);
    let (exp_a, exp_b) = (
        expected(&app, &format!("{source}/a.csv")).await,
        expected(&app, &format!("{source}/a (1).csv")).await,
    );

    // Held at its second attempt: the first found `a.csv` taken.
    let gate = Gate::nth(
        app.remitter_share.clone(),
        Point::BeforeMove,
        &format!("{source}/a.csv"),
        1,
    );
    let a = archiver(&app, gate.clone()).await;
    let b = archiver(&app, Arc::new(SmbShare::new(TestEnv::from_env().smb))).await;
    let moving = tokio::spawn(async move { a.move_to_archive("acme", "a.csv", &exp_a).await });
    gate.wait_reached().await;
    let to_b = b
        .move_to_archive("acme", "a (1).csv", &exp_b)
        .await
        .unwrap();
    gate.go.notify_one();
    let to_a = moving.await.unwrap().unwrap();

    assert_eq!(to_b, Some(format!("{archive}/a (1).csv")));
    assert_eq!(to_a, Some(format!("{archive}/a (2).csv")));
    let got = contents(&app, &archive);
    let want: BTreeMap<String, String> = [
        ("a.csv", "first a.csv"),
        ("a (1).csv", "literal a (1).csv"),
        ("a (2).csv", "second a.csv"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(got, want);
    assert!(contents(&app, &source).is_empty());
    app.finish().await;
}

/// A new upload under the processed file's name lands after the pass listed
/// the folder: the move's own open sees another size and time, nothing is
/// archived, and the next run processes the new upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_after_the_pass_listing_is_not_archived_unprocessed() {
    let mut app = spawn_app(Opts::default()).await;
    processed_not_archived(&mut app, b"processed version").await;
    let gate = Gate::new(
        app.remitter_share.clone(),
        Point::AfterList,
        &format!("{}/acme", app.source_dir),
    );
    let a = archiver(&app, gate.clone()).await;
    let pass = tokio::spawn(async move { a.pass().await });
    gate.wait_reached().await;
    app.put("acme", "remit.csv", b"new upload, not processed yet")
        .await;
    gate.go.notify_one();
    let report = pass.await.unwrap();

    assert_eq!(report.moved, 0, "{report:?}");
    let archive = format!("{}/acme", app.archive_dir);
    assert!(contents(&app, &archive).is_empty());
    assert!(!app.files().await[0].archived);
    assert_eq!(
        contents(&app, &format!("{}/acme", app.source_dir))["remit.csv"],
        "new upload, not processed yet"
    );
    let body = app.run_ok().await;
    assert_eq!(decision_of(&body, "acme", "remit.csv")["status"], "success");
    app.eventually(30, "the new upload archived", || async {
        contents(&app, &archive)
            .get("remit.csv")
            .map(String::as_str)
            == Some("new upload, not processed yet")
    })
    .await;
    app.finish().await;
}

/// A remitter holds the processed file open for writing (without having
/// written yet) when the pass comes: the share refuses the move (sharing
/// violation), nothing is archived and the pass counts a failure to retry.
/// Once the writer lets go, the next pass archives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_held_open_for_writing_is_not_archived_until_released() {
    let mut app = spawn_app(Opts::default()).await;
    processed_not_archived(&mut app, b"processed version").await;
    let path = format!("{}/acme/remit.csv", app.source_dir);
    let archive = format!("{}/acme", app.archive_dir);
    let a = archiver(&app, app.remitter_share.clone()).await;
    let client = crate::remitter::client();
    let held = crate::remitter::open_existing_for_writing(&client, &path);

    let report = a.pass().await;
    assert_eq!((report.moved, report.failed), (0, 1), "{report:?}");
    assert!(contents(&app, &archive).is_empty());
    assert!(!app.files().await[0].archived);

    drop(held);
    let report = a.pass().await;
    assert_eq!((report.moved, report.failed), (1, 0), "{report:?}");
    assert_eq!(contents(&app, &archive)["remit.csv"], "processed version");
    assert!(app.files().await[0].archived);
    app.finish().await;
}
