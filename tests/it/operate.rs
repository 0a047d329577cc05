//! Operating the coordinator (CONTRACT §9, issue 7): dry runs over HTTP and
//! through the real binary, scheduled runs (RUN_INTERVAL_SECS), and
//! `GET /metrics`.

use crate::fakes::ItmBehavior;
use crate::helpers::{Opts, TestApp, decision_of, prepare, spawn_app};
use coordinator::source::FileSource;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Ages a file on the share by an hour (through the share's backing folder),
/// so Policy A's minimum age passes for it.
fn age(app: &TestApp, remitter: &str, name: &str) {
    let path = app.local(&format!("{}/{remitter}/{name}", app.source_dir));
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
}

/// Every file under `dir` (relative path → size), recursively.
fn tree(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, e.metadata().unwrap().len());
            }
        }
    }
    out
}

/// Row counts of every table a real run writes, runs aside.
async fn table_counts(app: &TestApp) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    for t in [
        "files",
        "file_events",
        "notifications",
        "superseded_files",
        "read_failures",
    ] {
        out.push((t, app.count(t).await));
    }
    out
}

async fn post_run(app: &TestApp, body: &str) -> (u16, Value) {
    let resp = app
        .http
        .post(format!("{}/api/v1/coordinator/runs", app.base_url))
        .bearer_auth(app.token.as_deref().unwrap())
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// A dry run reports what a real run would decide about each kind of file,
/// and leaves the database (but its own row), the share and the downstream
/// services alone; the real run after it does what it predicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reports_every_decision_and_changes_nothing() {
    let mut app = spawn_app(Opts {
        min_age_secs: 600.0,
        ..Default::default()
    })
    .await;
    // A version processed before (ITM refused it, so it stays in the source).
    app.fakes.set_itm(ItmBehavior::Failed);
    app.put("acme", "done.csv", b"done").await;
    age(&app, "acme", "done.csv");
    app.run_ok().await;
    app.eventually(30, "IQube told of the ITM failure", || async {
        app.fakes.iqube_calls().len() == 1
    })
    .await;
    app.fakes.set_itm(ItmBehavior::Success);

    app.put("acme", "new.csv", b"new").await;
    age(&app, "acme", "new.csv");
    app.put("acme", "stmt_20240101.csv", b"old version").await;
    age(&app, "acme", "stmt_20240101.csv");
    app.put("acme", "stmt_20240202.csv", b"new version").await;
    age(&app, "acme", "stmt_20240202.csv");
    app.put("acme", "fresh.csv", b"still uploading").await;
    app.put("acme", "~$temp.xlsx", b"lock").await;

    let share_before = tree(&app.local(&app.root));
    let tables_before = table_counts(&app).await;
    let calls_before = (
        app.fakes.foi_calls().len(),
        app.fakes.itm_calls().len(),
        app.fakes.iqube_attempts(),
    );
    let passes_before = *app.server.engine.passes_done().borrow();

    let (status, body) = post_run(&app, r#"{"dry_run": true}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dry_run"], true, "{body}");
    assert_eq!(body["status"], "completed", "{body}");
    let s = &body["summary"];
    assert_eq!(
        (
            s["scanned"].as_u64(),
            s["would_process"].as_u64(),
            s["processed"].as_u64(),
            s["succeeded"].as_u64(),
            s["failed"].as_u64(),
        ),
        (Some(6), Some(2), Some(0), Some(0), Some(0)),
        "{body}"
    );
    for (name, decision) in [
        ("new.csv", "would_process"),
        ("stmt_20240202.csv", "would_process"),
        ("stmt_20240101.csv", "superseded"),
        ("fresh.csv", "unstable"),
        ("~$temp.xlsx", "ignored"),
        ("done.csv", "already_processed"),
    ] {
        assert_eq!(
            decision_of(&body, "acme", name)["decision"],
            decision,
            "{name}: {body}"
        );
    }
    assert_eq!(
        decision_of(&body, "acme", "done.csv")["status"],
        "itm_failed"
    );

    // Only its own row, marked as a dry run.
    let run_id = body["run_id"].as_str().unwrap();
    let (stored, trigger, dry): (String, String, bool) =
        sqlx::query_as("SELECT status, trigger, dry_run FROM runs WHERE id = $1::uuid")
            .bind(run_id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        (stored.as_str(), trigger.as_str(), dry),
        ("completed", "api", true)
    );
    let stored_summary: Value = sqlx::query_scalar("SELECT summary FROM runs WHERE id = $1::uuid")
        .bind(run_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored_summary, body["summary"]);
    assert_eq!(app.count("runs").await, 2);
    assert_eq!(table_counts(&app).await, tables_before);
    // The share: nothing moved, nothing written but the clock probe, which
    // every run rewrites in place.
    assert_eq!(tree(&app.local(&app.root)), share_before);
    assert_eq!(
        (
            app.fakes.foi_calls().len(),
            app.fakes.itm_calls().len(),
            app.fakes.iqube_attempts(),
        ),
        calls_before
    );
    assert_eq!(
        *app.server.engine.passes_done().borrow(),
        passes_before,
        "a dry run schedules no background pass"
    );

    // The real run does what the dry run said.
    let real = app.run_ok().await;
    assert_eq!(real["dry_run"], false);
    let mut sent = app.fakes.foi_names();
    sent.sort();
    assert_eq!(sent[..], ["done.csv", "new.csv", "stmt_20240202.csv"]);
    assert_eq!(real["summary"]["processed"], 2, "{real}");
    app.finish().await;
}

/// A dry run while a real run holds the lock answers 200 at once (never
/// 409, never waiting), and the real run completes undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_never_waits_for_or_blocks_a_real_run() {
    let mut app = spawn_app(Opts::default()).await;
    app.fakes.set_itm(ItmBehavior::Slow(Duration::from_secs(5)));
    app.put("acme", "slow.csv", b"slow").await;
    let real = app.trigger_until_itm_called().await;

    let (status, body) = post_run(&app, r#"{"dry_run": true}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dry_run"], true);
    // The file in flight is what a real run's claim would find: taken.
    let slow = decision_of(&body, "acme", "slow.csv");
    assert_eq!(
        (&slow["decision"], &slow["status"]),
        (
            &Value::from("already_processed"),
            &Value::from("processing")
        ),
        "{body}"
    );
    assert!(
        !real.is_finished(),
        "the dry run answered only after the real run"
    );
    let resp = real.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let real_body: Value = resp.json().await.unwrap();
    assert_eq!(real_body["summary"]["succeeded"], 1, "{real_body}");
    app.wait_background().await;
    let rows: Vec<(String, bool)> =
        sqlx::query_as("SELECT status, dry_run FROM runs ORDER BY started_at")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            ("completed".to_string(), false),
            ("completed".to_string(), true)
        ]
    );
    assert_eq!(app.fakes.itm_calls().len(), 1);
    app.finish().await;
}

/// `coordinator run --dry-run` through the real binary: prints the summary
/// with `dry_run: true`, exits 0, sends nothing and claims nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_dry_run_prints_the_summary_and_exits_0() {
    let p = prepare(Opts::default()).await;
    let dir = format!("{}/acme", p.source_dir);
    p.remitter_share.mkdir_all(&dir).await.unwrap();
    p.remitter_share
        .write_file(&format!("{dir}/remit.csv"), b"a,b\n".to_vec())
        .await
        .unwrap();
    let a = &p.args;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["run", "--dry-run"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("ENV", "local")
        .envs(p.binary_env())
        .env("SMB_PASSWORD", a.smb_password.as_ref().unwrap().expose())
        .output()
        .await
        .expect("run the coordinator binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    crate::helpers::keep_log(&stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let body: Value = serde_json::from_str(&stdout).expect("a JSON summary on stdout");
    assert_eq!(body["dry_run"], true, "{body}");
    assert_eq!(body["summary"]["would_process"], 1, "{body}");
    assert_eq!(
        decision_of(&body, "acme", "remit.csv")["decision"],
        "would_process"
    );
    assert!(p.fakes.foi_calls().is_empty() && p.fakes.itm_calls().is_empty());
    let db = p.db().await;
    let files: i64 = sqlx::query_scalar("SELECT count(*) FROM files")
        .fetch_one(&db)
        .await
        .unwrap();
    let runs: Vec<(String, bool)> = sqlx::query_as("SELECT trigger, dry_run FROM runs")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!((files, runs), (0, vec![("cli".to_string(), true)]));
    assert!(
        p.share_path
            .join(&p.source_dir)
            .join("acme/remit.csv")
            .is_file()
    );
    db.close().await;
    let _ = std::fs::remove_dir_all(p.share_path.join(&p.root));
}

/// RUN_INTERVAL_SECS=1: a file goes through with nobody triggering a run,
/// recorded with trigger `schedule`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_processes_a_file_without_any_trigger() {
    let app = spawn_app(Opts {
        run_interval_secs: 1.0,
        ..Default::default()
    })
    .await;
    app.put("acme", "remit.csv", b"scheduled").await;
    app.eventually(60, "processed by a scheduled run", || async {
        app.files().await.iter().any(|f| f.status == "success")
    })
    .await;
    let run_id: uuid::Uuid =
        sqlx::query_scalar("SELECT run_id FROM files WHERE file_name = 'remit.csv'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    let trigger: String = sqlx::query_scalar("SELECT trigger FROM runs WHERE id = $1")
        .bind(run_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(trigger, "schedule");
    assert_eq!(app.fakes.itm_calls().len(), 1);
    app.finish().await;
}

/// While another live instance's run is in progress, scheduled runs skip
/// quietly: no run row, no failure, no IQube call. Once it ends the
/// schedule goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_run_that_meets_a_running_one_skips_quietly() {
    let app = spawn_app(Opts {
        run_interval_secs: 0.5,
        ..Default::default()
    })
    .await;
    // "Another run": a live instance (heartbeat of an hour) owning a run
    // that has no candidates to share yet.
    let (other, elsewhere) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    sqlx::query(
        "INSERT INTO instances (instance_id, incarnation, version, heartbeat_secs, max_concurrent_files) \
         VALUES ('elsewhere', $1, 'test', 3600, 4)",
    )
    .bind(elsewhere)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO runs (id, status, trigger, instance, owner) \
         VALUES ($1, 'running', 'api', 'elsewhere', $2)",
    )
    .bind(other)
    .bind(elsewhere)
    .execute(&app.db)
    .await
    .unwrap();
    app.put("acme", "remit.csv", b"waits").await;
    app.eventually(30, "two scheduled runs skipped", || async {
        metric(
            &scrape(&app).await,
            "coordinator_scheduled_runs_skipped_total",
        ) >= 2.0
    })
    .await;
    assert_eq!(app.count("runs").await, 1, "only the other run's row");
    assert_eq!(app.count("files").await, 0);
    assert_eq!(app.fakes.iqube_attempts(), 0);

    sqlx::query("UPDATE runs SET status = 'completed', finished_at = now() WHERE id = $1")
        .bind(other)
        .execute(&app.db)
        .await
        .unwrap();
    app.eventually(60, "processed once the other run ended", || async {
        app.files().await.iter().any(|f| f.status == "success")
    })
    .await;
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE status = 'failed'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(failed, 0);
    assert_eq!(app.fakes.iqube_attempts(), 0);
    app.finish().await;
}

async fn scrape(app: &TestApp) -> String {
    let resp = app
        .http
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// The value of the series `series` (name with labels, as rendered), 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// `GET /metrics` needs no token, names every required series, and its
/// counters move with a run (a dry run is not counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_no_token_and_move_with_runs() {
    let mut app = spawn_app(Opts::default()).await;
    let resp = app
        .http
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let before = resp.text().await.unwrap();
    let names = [
        "coordinator_runs_total",
        "coordinator_run_duration_seconds",
        "coordinator_files_total",
        "coordinator_downstream_request_duration_seconds",
        "coordinator_bytes_read_total",
        "coordinator_outbox_pending",
        "coordinator_archive_pending",
        "coordinator_files_awaiting_operator",
        "coordinator_files_in_flight",
        "coordinator_claims_taken_over_total",
        "coordinator_last_run_timestamp_seconds",
    ];
    // The last-run timestamps appear with the first run.
    for name in &names[..names.len() - 1] {
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{before}"
        );
    }

    let ok = b"twelve bytes";
    app.put("acme", "ok.csv", ok).await;
    app.run_ok().await;
    let after = scrape(&app).await;
    for name in names {
        assert!(
            after.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{after}"
        );
    }
    let delta = |series: &str| metric(&after, series) - metric(&before, series);
    assert_eq!(delta("coordinator_runs_total{status=\"completed\"}"), 1.0);
    assert_eq!(delta("coordinator_files_total{status=\"success\"}"), 1.0);
    assert_eq!(delta("coordinator_bytes_read_total"), ok.len() as f64);
    assert_eq!(delta("coordinator_run_duration_seconds_count"), 1.0);
    assert_eq!(
        metric(&after, "coordinator_files_in_flight"),
        0.0,
        "none held after the run"
    );
    assert_eq!(delta("coordinator_claims_taken_over_total"), 0.0);
    for service in ["foi", "itm"] {
        let series = format!(
            "coordinator_downstream_request_duration_seconds_count{{service=\"{service}\",outcome=\"ok\"}}"
        );
        assert_eq!(delta(&series), 1.0, "{series}\n{after}");
    }
    assert!(
        metric(
            &after,
            "coordinator_last_run_timestamp_seconds{status=\"completed\"}"
        ) > 1.7e9
    );

    // An ITM failure waits for an operator; IQube is told through the outbox.
    app.fakes.set_itm(ItmBehavior::Failed);
    app.put("acme", "bad.csv", b"bad").await;
    app.run_ok().await;
    app.eventually(30, "IQube told", || async {
        app.fakes.iqube_calls().len() == 1
    })
    .await;
    let after = scrape(&app).await;
    assert_eq!(
        metric(&after, "coordinator_files_total{status=\"itm_failed\"}"),
        1.0
    );
    assert_eq!(metric(&after, "coordinator_files_awaiting_operator"), 1.0);
    assert_eq!(metric(&after, "coordinator_outbox_pending"), 0.0);
    assert_eq!(
        metric(
            &after,
            "coordinator_downstream_request_duration_seconds_count{service=\"iqube\",outcome=\"ok\"}"
        ),
        1.0
    );

    // Dry runs are not counted.
    let (status, _) = post_run(&app, r#"{"dry_run": true}"#).await;
    assert_eq!(status, 200);
    let last = scrape(&app).await;
    assert_eq!(
        metric(&last, "coordinator_runs_total{status=\"completed\"}"),
        metric(&after, "coordinator_runs_total{status=\"completed\"}")
    );
    app.finish().await;
}

/// Start-up skips the migrator (and its lock) only when every migration is
/// applied with its checksum; one that is missing is applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_migrates_only_what_is_missing() {
    let app = spawn_app(Opts::default()).await;
    let url = String::from(app.args.base.db.database_url.as_ref().unwrap().expose());
    let store = coordinator::store::PgStore::connect_lazy(&url).unwrap();
    assert!(store.migrations_applied().await, "spawn_app migrated");
    store.migrate().await.unwrap();

    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 7")
        .execute(&app.db)
        .await
        .unwrap();
    assert!(!store.migrations_applied().await);
    store.migrate().await.unwrap();
    assert!(store.migrations_applied().await);
    let (n, succeeded): (i64, bool) = sqlx::query_as(
        "SELECT count(*), bool_and(success) FROM _sqlx_migrations WHERE version = 7",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((n, succeeded), (1, true), "0007 applied again");
    app.finish().await;
}
