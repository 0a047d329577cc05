//! Complete files, exactly once (issue 6): late-arriving older versions, files
//! still held open for writing or rewritten during their download, a folder
//! that fails the second look, claims that stay their holder's, the run lock,
//! the bounded per-file list and archived content uploaded again.

use crate::fakes::FoiBehavior;
use crate::gate::{Gate, Point};
use crate::helpers::{Opts, StoreDb, decision_of, join_instance, md5_hex, running_run, spawn_app};
use chrono::Utc;
use coordinator::domain::FileStatus;
use coordinator::store::{Claim, ClaimRequest, ClaimStore, InstanceStore, StoreError};
use serde_json::json;
use std::io::Write;
use std::time::Duration;
use uuid::Uuid;

/// CONTRACT §1.2: `remit_20240101.csv` dropped after `remit_20240102.csv`
/// was processed and archived is superseded and archived, never sent; and
/// so is an old version uploaded again with new content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_arriving_older_version_is_superseded_not_sent() {
    let mut app = spawn_app(Opts::default()).await;
    app.put("acme", "remit_20240101.csv", b"first day").await;
    app.run_ok().await;
    app.put("acme", "remit_20240102.csv", b"second day").await;
    app.run_ok().await;
    app.eventually(30, "both archived", || async {
        app.in_archive("acme", "remit_20240101.csv") && app.in_archive("acme", "remit_20240102.csv")
    })
    .await;
    assert_eq!(
        app.fakes.foi_names(),
        ["remit_20240101.csv", "remit_20240102.csv"]
    );

    // A version older than the claimed newest arrives late, alone.
    app.put("acme", "remit_20231231.csv", b"late").await;
    // The old version comes back with other bytes.
    app.put("acme", "remit_20240101.csv", b"first day, corrected")
        .await;
    let body = app.run_ok().await;
    for name in ["remit_20231231.csv", "remit_20240101.csv"] {
        let d = decision_of(&body, "acme", name);
        assert_eq!(d["decision"], "superseded", "{body}");
        assert!(
            d["reason"].as_str().unwrap().contains("remit_20240102.csv"),
            "{d}"
        );
    }
    app.eventually(30, "late versions archived", || async {
        !app.in_source("acme", "remit_20231231.csv") && !app.in_source("acme", "remit_20240101.csv")
    })
    .await;
    assert!(app.in_archive("acme", "remit_20231231.csv"));
    assert_eq!(app.archive_names("acme").len(), 4, "nothing replaced");
    assert_eq!(app.fakes.foi_calls().len(), 2, "nothing more sent");
    assert_eq!(app.fakes.itm_calls().len(), 2);
    assert_eq!(app.count("files").await, 2, "no row for a late arrival");
    app.finish().await;
}

/// CONTRACT §1.3: a remitter's client holds the file open for writing (a
/// stalled Windows copy): the half file is never sent; once the writer
/// closes, the whole file goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_held_open_for_writing_is_unstable_until_closed() {
    let mut app = spawn_app(Opts::default()).await;
    app.put("acme", "other.csv", b"whole").await;
    let path = format!("{}/acme/copy.csv", app.source_dir);
    let writer = crate::remitter::client();
    let mut file = crate::remitter::open_for_writing(&writer, &path);
    file.write_all(b"first half;").unwrap();

    let body = app.run_ok().await;
    let d = decision_of(&body, "acme", "copy.csv");
    assert_eq!(d["decision"], "unstable", "{body}");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("open for writing by another client"),
        "{d}"
    );
    assert_eq!(
        decision_of(&body, "acme", "other.csv")["decision"],
        "processed"
    );
    assert_eq!(
        app.fakes.foi_names(),
        ["other.csv"],
        "the half file is not sent"
    );
    assert_eq!(app.count("files").await, 1);
    assert!(app.in_source("acme", "copy.csv"));

    file.write_all(b"second half").unwrap();
    drop(file);
    drop(writer);
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", "copy.csv")["decision"],
        "processed",
        "{body}"
    );
    let sent = app.fakes.foi_calls();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].md5, md5_hex(b"first half;second half"));
    let row = app
        .files()
        .await
        .into_iter()
        .find(|r| r.file_name == "copy.csv")
        .unwrap();
    assert_eq!(row.md5, md5_hex(b"first half;second half"));
    app.finish().await;
}

/// CONTRACT §1.4: the file is rewritten after the second look, just before
/// its download: nothing is claimed or sent in this run; the next run sends
/// the new content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_after_the_second_look_is_not_claimed() {
    let mut app = spawn_app(Opts::default()).await;
    app.put("acme", "remit.csv", b"as listed").await;
    let path = format!("{}/acme/remit.csv", app.source_dir);
    let gate = Gate::new(
        app.server.engine.source().clone(),
        Point::BeforeFetch,
        &path,
    );
    let engine = app.server.engine.over(gate.clone());
    let run = tokio::spawn(async move { engine.run("test").await });
    gate.wait_reached().await;
    std::fs::write(app.local(&path), b"rewritten, longer than before").unwrap();
    gate.go.notify_one();
    let report = run.await.unwrap().expect("the run completes");
    let r = report
        .summary
        .files
        .iter()
        .find(|f| f.file_name == "remit.csv")
        .unwrap();
    assert_eq!(
        serde_json::to_value(r.decision).unwrap(),
        "unstable",
        "{r:?}"
    );
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .contains("changed between the second look"),
        "{r:?}"
    );
    assert_eq!(app.count("files").await, 0, "nothing claimed");
    assert!(app.fakes.foi_calls().is_empty(), "nothing sent");

    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", "remit.csv")["status"],
        "success",
        "{body}"
    );
    assert_eq!(
        app.fakes.foi_calls()[0].md5,
        md5_hex(b"rewritten, longer than before")
    );
    app.finish().await;
}

/// CONTRACT §1.1: a remitter folder that disappears between the two looks is
/// that folder's error; the other folders are processed and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_gone_at_the_second_look_is_only_that_folders_error() {
    let app = spawn_app(Opts::default()).await;
    app.put("acme", "a.csv", b"a").await;
    app.put("gone", "g.csv", b"g").await;
    let gone_dir = format!("{}/gone", app.source_dir);
    // The first listing of the folder is the scan; the second, the second look.
    let gate = Gate::nth(
        app.server.engine.source().clone(),
        Point::BeforeList,
        &gone_dir,
        1,
    );
    let engine = app.server.engine.over(gate.clone());
    let run = tokio::spawn(async move { engine.run("test").await });
    gate.wait_reached().await;
    std::fs::remove_dir_all(app.local(&gone_dir)).unwrap();
    gate.go.notify_one();
    let report = run.await.unwrap().expect("the run completes");
    let s = &report.summary;
    assert_eq!((s.processed, s.succeeded, s.errors), (1, 1, 1), "{s:?}");
    assert_eq!(s.folder_errors.len(), 1, "{s:?}");
    assert_eq!(s.folder_errors[0].remitter, "gone");
    assert!(s.folder_errors[0].reason.contains("second look"), "{s:?}");
    let g = s.files.iter().find(|f| f.file_name == "g.csv").unwrap();
    assert_eq!(serde_json::to_value(g.decision).unwrap(), "unstable");
    assert_eq!(app.fakes.foi_names(), ["a.csv"]);
    app.finish().await;
}

/// Claims by liveness (CONTRACT §10), on Postgres: a live holder's claim is
/// never taken over; once its instance is dead the holder of the candidate
/// takes it over; the old holder can then neither write its outcome nor
/// claim again, and nobody overwrites an operator's verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_live_claims_holder_writes_its_outcome() {
    // The store alone: no instance's taker or adopter acts meanwhile.
    let t = StoreDb::new().await;
    let store = t.store.clone();
    let (a, b) = (
        join_instance(&t.db, "a").await,
        join_instance(&t.db, "b").await,
    );
    // The candidate, as `take_work` leaves it: held by `a`.
    let run_id = running_run(&t.db, a, "a").await;
    let hold = |holder: Uuid| {
        let db = t.db.clone();
        async move {
            sqlx::query(
                "INSERT INTO run_work (run_id, seq, remitter, rank, item, state, taken_by) \
                 VALUES ($1, 0, 'acme', 0, '{}', 'taken', $2) \
                 ON CONFLICT (run_id, seq) DO UPDATE SET taken_by = $2",
            )
            .bind(run_id)
            .bind(holder)
            .execute(&db)
            .await
            .unwrap();
        }
    };
    let claim_with = |holder: Uuid, token: Uuid| {
        let store = store.clone();
        async move {
            store
                .claim(&ClaimRequest {
                    run_id,
                    seq: 0,
                    holder,
                    token,
                    remitter: "acme",
                    file_name: "a.csv",
                    base_name: "a.csv",
                    md5: "0123",
                    size: 1,
                    mtime: Utc::now(),
                    ctime: Utc::now(),
                    duplicate_window_days: 90,
                    find_copies: true,
                })
                .await
        }
    };
    let claim = |holder: Uuid| claim_with(holder, Uuid::new_v4());
    hold(a).await;
    let Claim::New { id, token: old, .. } = claim(a).await.unwrap() else {
        panic!("a new claim");
    };
    // The same claim tried again (its answer lost) is found as a's own.
    assert_eq!(
        claim_with(a, old).await.unwrap(),
        Claim::New {
            id,
            token: old,
            recovered: false,
            copy_of: None,
        }
    );
    // `b` took the candidate over, but `a` lives: its claim stands.
    hold(b).await;
    assert!(
        matches!(claim(a).await, Err(StoreError::WorkLost)),
        "a no longer holds the candidate"
    );
    assert_eq!(
        claim(b).await.unwrap(),
        Claim::Exists {
            id,
            status: FileStatus::Processing
        },
        "a live holder's claim is never taken over"
    );
    // `a` stops (dead at once): `b` takes the claim over.
    store.leave(a).await.unwrap();
    let Claim::New {
        id: same,
        token: new,
        recovered: true,
        copy_of: None,
    } = claim(b).await.unwrap()
    else {
        panic!("taken over");
    };
    assert_eq!(same, id);
    assert!(matches!(
        store
            .set_status(id, old, FileStatus::Success, &json!({}), None)
            .await,
        Err(StoreError::ClaimLost(_))
    ));
    store
        .set_status(id, new, FileStatus::ItmFailed, &json!({}), None)
        .await
        .unwrap();
    // An operator's verdict is never overwritten by a late writer.
    sqlx::query("UPDATE files SET status = 'ops_resent_by_hand' WHERE id = $1")
        .bind(id)
        .execute(&t.db)
        .await
        .unwrap();
    assert!(matches!(
        store
            .set_status(id, new, FileStatus::Success, &json!({}), None)
            .await,
        Err(StoreError::ClaimLost(_))
    ));
    let status: String = sqlx::query_scalar("SELECT status FROM files WHERE id = $1")
        .bind(id)
        .fetch_one(&t.db)
        .await
        .unwrap();
    assert_eq!(status, "ops_resent_by_hand");
    let events: Vec<String> =
        sqlx::query_scalar("SELECT status FROM file_events WHERE file_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&t.db)
            .await
            .unwrap();
    assert_eq!(events, ["processing", "processing", "itm_failed"]);
    t.finish().await;
}

/// A FOI call far slower than three heartbeats, with a second instance
/// looking for work all along: the live holder's candidate and claim are
/// never taken over, so FOI and ITM see the file once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_file_of_a_live_instance_is_never_taken_over() {
    let mut app = spawn_app(Opts {
        heartbeat_secs: 0.2,
        ..Opts::default()
    })
    .await;
    let other = app.start_another().await;
    // FOI takes 3 s = 15 heartbeats (and longer than a 2 s lease would have allowed).
    app.fakes.set_foi(FoiBehavior::Slow(Duration::from_secs(3)));
    app.put("acme", "slow.csv", b"slow").await;
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["succeeded"], 1, "{body}");
    assert_eq!(app.fakes.foi_calls().len(), 1);
    assert_eq!(app.fakes.itm_calls().len(), 1);
    let id = app.files().await[0].id;
    // `run_ok` waited for the background pass: archived too.
    assert_eq!(
        app.events(id).await,
        ["processing", "success", "archive_succeeded"]
    );
    let takeovers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM file_events WHERE detail ? 'recovered'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(takeovers, 0);
    other.shutdown.cancel();
    let _ = other.done.await;
    app.finish().await;
}

/// Runs posted at the same instant from two instances: one runs, every
/// refusal is a 409 naming the running run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_run_always_names_the_running_run() {
    let app = spawn_app(Opts::default()).await;
    let other = app.start_another().await;
    let other_url = format!("http://{}/api/v1/coordinator/runs", other.addr);
    for _ in 0..10 {
        let post_other = app
            .http
            .post(&other_url)
            .bearer_auth(app.token.clone().unwrap())
            .send();
        let (a, b) = tokio::join!(app.trigger(), post_other);
        let b = b.unwrap();
        let b = (
            b.status().as_u16(),
            b.json::<serde_json::Value>().await.unwrap(),
        );
        let mut codes = vec![];
        for (code, body) in [a, b] {
            if code == 409 {
                assert_eq!(body["error"], "run_in_progress", "{body}");
                assert!(body["run_id"].is_string(), "{body}");
            } else {
                assert_eq!(code, 200, "{body}");
            }
            codes.push(code);
        }
        assert!(codes.contains(&200), "one of them ran: {codes:?}");
    }
    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE status = 'running'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(running, 0);
    other.shutdown.cancel();
    let _ = other.done.await;
    app.finish().await;
}

/// CONTRACT §4: past 1,000 entries the per-file list keeps only files
/// processed or in error and says so; the counts still cover every file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_file_list_is_bounded() {
    let mut app = spawn_app(Opts::default()).await;
    app.put("acme", "real.csv", b"real").await;
    let dir = app.local(&format!("{}/acme", app.source_dir));
    for i in 0..1_100 {
        std::fs::write(dir.join(format!("~$temp{i:04}.xlsx")), b"t").unwrap();
    }
    let body = app.run_ok().await;
    let s = &body["summary"];
    assert_eq!(s["scanned"], 1_101, "{s}");
    assert_eq!(s["ignored"], 1_100);
    assert_eq!(s["processed"], 1);
    assert_eq!(s["files_truncated"], true);
    let files = s["files"].as_array().unwrap();
    assert_eq!(files.len(), 1_001);
    assert!(files.iter().any(|f| f["file_name"] == "real.csv"));
    let stored: serde_json::Value =
        sqlx::query_scalar("SELECT summary FROM runs WHERE id = $1::uuid")
            .bind(body["run_id"].as_str().unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(stored["files"].as_array().unwrap().len(), 1_001);
    assert_eq!(stored["files_truncated"], true);
    app.finish().await;
}

/// CONTRACT §1.6: the same content uploaded again after it was archived is
/// archived again (once more `archive_succeeded`), not left in the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_content_uploaded_again_is_archived_again() {
    let mut app = spawn_app(Opts::default()).await;
    app.put("acme", "remit.csv", b"paid").await;
    app.run_ok().await;
    app.eventually(30, "archived", || async {
        app.in_archive("acme", "remit.csv")
    })
    .await;

    app.put("acme", "remit.csv", b"paid").await;
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", "remit.csv")["decision"],
        "already_processed",
        "{body}"
    );
    app.eventually(30, "archived again", || async {
        !app.in_source("acme", "remit.csv")
    })
    .await;
    assert_eq!(app.archive_names("acme"), ["remit (1).csv", "remit.csv"]);
    assert_eq!(app.fakes.foi_calls().len(), 1, "sent once");
    let id = app.files().await[0].id;
    assert_eq!(
        app.events(id).await,
        [
            "processing",
            "success",
            "archive_succeeded",
            "archive_succeeded"
        ]
    );
    // And nothing happens on the next run.
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["scanned"], 0, "{body}");
    app.finish().await;
}

/// History is pruned: a run finished longer ago than
/// RUN_DETAIL_RETENTION_DAYS (30 by default) loses its per-file list in the
/// next background pass and keeps its counts; recent runs keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_runs_lose_their_per_file_list_and_keep_their_counts() {
    let mut app = spawn_app(Opts::default()).await;
    let old = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO runs (id, status, trigger, instance, started_at, finished_at, summary) \
         VALUES ($1, 'completed', 'api', 'x', now() - interval '41 days', now() - interval '40 days', $2)",
    )
    .bind(old)
    .bind(json!({"scanned": 3, "processed": 1, "files": [{"file_name": "a.csv"}]}))
    .execute(&app.db)
    .await
    .unwrap();
    app.put("acme", "new.csv", b"new").await;
    let body = app.run_ok().await;
    let summary = |id: String| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, serde_json::Value>(
                "SELECT summary FROM runs WHERE id = $1::uuid",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let pruned = summary(old.to_string()).await;
    assert_eq!(
        pruned,
        json!({"scanned": 3, "processed": 1, "files_pruned": true})
    );
    let recent = summary(body["run_id"].as_str().unwrap().to_string()).await;
    assert_eq!(recent["files"].as_array().unwrap().len(), 1, "{recent}");
    app.finish().await;
}

/// A run's listing may see a file just before a background pass moves it;
/// its plan, reading the rows after the move, then takes the file for one
/// uploaded again. Only a move recorded before the run started is requeued
/// (else the pass "moves" it again and its history gets a second
/// `archive_succeeded`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_files_archived_before_the_run_started_are_archived_again() {
    use coordinator::store::ClaimStore;
    let s = StoreDb::new().await;
    let owner = join_instance(&s.db, "rearchiver").await;
    let run = running_run(&s.db, owner, "rearchiver").await;
    let mut ids = Vec::new();
    for (name, offset) in [("before.csv", "-1 second"), ("after.csv", "1 second")] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO files (remitter, file_name, base_name, md5, size, mtime, status, group_key, archived_at) \
             VALUES ('acme', $1, $1, md5($1), 1, now(), 'success', 'acme/' || $1, \
                     (SELECT started_at FROM runs WHERE id = $2) + $3::interval) RETURNING id",
        )
        .bind(name)
        .bind(run)
        .bind(offset)
        .fetch_one(&s.db)
        .await
        .unwrap();
        ids.push(id);
    }
    s.store.rearchive(run, &ids).await.unwrap();
    let queued: Vec<(String, bool)> =
        sqlx::query_as("SELECT file_name, archived_at IS NULL FROM files ORDER BY id")
            .fetch_all(&s.db)
            .await
            .unwrap();
    assert_eq!(
        queued,
        [("before.csv".into(), true), ("after.csv".into(), false)]
    );
    s.finish().await;
}
