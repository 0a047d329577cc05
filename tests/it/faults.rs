//! Faults and awkward input against the real share and database: what an
//! operator sees when the archive is not writable, a file cannot be read,
//! names are unusual, or two coordinators share one database.

use crate::helpers::{Opts, decision_of, md5_hex, spawn_app};
use coordinator::source::FileSource;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The archive folder is not writable: the run still answers 200, the file
/// stays in source with its status, and a later pass archives it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_failure_is_retried_by_the_next_pass() {
    let mut app = spawn_app(Opts::default()).await;
    app.put("acme", "remit.csv", b"content").await;
    let blocked = format!("{}/acme", app.archive_dir);
    app.remitter_share.mkdir_all(&blocked).await.unwrap();
    chmod(&app.local(&blocked), 0o555);

    let body = app.run_ok().await;
    assert_eq!(decision_of(&body, "acme", "remit.csv")["status"], "success");
    assert!(app.in_source("acme", "remit.csv"));
    let rows = app.files().await;
    assert!(!rows[0].archived);
    assert_eq!(app.events(rows[0].id).await, ["processing", "success"]);

    chmod(&app.local(&blocked), 0o775);
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["already_processed"], 1, "{body}");
    app.eventually(30, "archived on retry", || async {
        app.in_archive("acme", "remit.csv")
    })
    .await;
    assert!(!app.in_source("acme", "remit.csv"));
    app.run_ok().await;
    assert_eq!(
        app.events(rows[0].id).await,
        ["processing", "success", "archive_succeeded"]
    );
    assert_eq!(app.fakes.itm_calls().len(), 1);
    app.finish().await;
}

/// A file the coordinator may not read: reported as an error, nothing sent,
/// no claim left; the other files go through; IQube is told once when it
/// keeps failing; once readable it is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_file_is_an_error_and_picked_up_once_readable() {
    let mut app = spawn_app(Opts {
        read_failure_notify_after: 2,
        ..Opts::default()
    })
    .await;
    app.put("acme", "locked.csv", b"locked").await;
    app.put("acme", "fine.csv", b"fine").await;
    let locked = app.local(&format!("{}/acme/locked.csv", app.source_dir));
    chmod(&locked, 0o000);

    let body = app.run_ok().await;
    let d = decision_of(&body, "acme", "locked.csv");
    assert_eq!(d["decision"], "error", "{body}");
    assert!(
        d["reason"].as_str().unwrap().contains("download failed"),
        "{d}"
    );
    assert_eq!(decision_of(&body, "acme", "fine.csv")["status"], "success");
    assert_eq!(body["summary"]["errors"], 1);
    let names: Vec<String> = app.files().await.into_iter().map(|r| r.file_name).collect();
    assert_eq!(names, ["fine.csv"], "no claim for the unreadable file");
    let sent = app.fakes.foi_names();
    assert_eq!(sent, ["fine.csv"]);
    assert_eq!(
        app.fakes.iqube_attempts(),
        0,
        "one failure tells nobody yet"
    );

    for _ in 0..3 {
        let body = app.run_ok().await;
        assert_eq!(
            decision_of(&body, "acme", "locked.csv")["decision"],
            "error"
        );
    }
    let calls = app.fakes.iqube_calls();
    assert_eq!(calls.len(), 1, "told once, not on every run: {calls:?}");
    assert_eq!(calls[0].body["event"], "file_failed");
    assert_eq!(calls[0].body["status"], "read_failed");
    assert_eq!(calls[0].body["file_name"], "locked.csv");
    assert_eq!(app.count("files").await, 1);

    chmod(&locked, 0o664);
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", "locked.csv")["status"],
        "success",
        "{body}"
    );
    assert_eq!(app.fakes.foi_calls().len(), 2);
    assert_eq!(app.fakes.iqube_calls().len(), 1);
    app.finish().await;
}

/// Unicode, spaces, `#`, `%`, `&`, quotes and a long name in remitter and file
/// names: the FOI URL is percent-encoded, SQL parameterised, names kept exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_names_go_through_unchanged() {
    let mut app = spawn_app(Opts::default()).await;
    let remitter = "Zürich & Co #1 'ltd' 100%";
    let long = format!("{}_20240101.csv", "x".repeat(150));
    let names = [
        "Überweisung 50% #2 & more_20240101.csv",
        "a;b,c=d+e'f.xlsx",
        long.as_str(),
        "empty.csv",
    ];
    for n in names {
        let bytes: &[u8] = if n == "empty.csv" { b"" } else { n.as_bytes() };
        app.put(remitter, n, bytes).await;
    }
    let body = app.run_ok().await;
    for n in names {
        assert_eq!(
            decision_of(&body, remitter, n)["status"],
            "success",
            "{n}: {body}"
        );
    }
    let foi = app.fakes.foi_calls();
    assert_eq!(foi.len(), names.len());
    for c in &foi {
        assert_eq!(c.remitter, remitter);
        assert_eq!(
            c.raw_path,
            "/extract/Z%C3%BCrich%20%26%20Co%20%231%20%27ltd%27%20100%25"
        );
    }
    let empty = foi.iter().find(|c| c.file_name == "empty.csv").unwrap();
    assert_eq!((empty.size, empty.md5.as_str()), (0, md5_hex(b"").as_str()));
    let rows = app.files().await;
    let mut stored: Vec<&str> = rows.iter().map(|r| r.file_name.as_str()).collect();
    stored.sort();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(stored, want);
    for n in names {
        app.eventually(30, &format!("{n} archived"), || async {
            app.in_archive(remitter, n)
        })
        .await;
    }
    app.finish().await;
}

/// A file replaced by different content under the same name after it was
/// processed is a new version: processed again, both rows kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_content_under_the_same_name_is_a_new_version() {
    let mut app = spawn_app(Opts::default()).await;
    app.put("acme", "remit.csv", b"version one").await;
    app.run_ok().await;
    app.eventually(30, "first archived", || async {
        app.in_archive("acme", "remit.csv")
    })
    .await;
    app.put("acme", "remit.csv", b"version two, longer").await;
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", "remit.csv")["status"],
        "success",
        "{body}"
    );
    let md5s: Vec<String> = app.files().await.into_iter().map(|r| r.md5).collect();
    assert_eq!(
        md5s,
        [md5_hex(b"version one"), md5_hex(b"version two, longer")]
    );
    // The archive keeps both: the second move got a suffix, nothing overwritten.
    app.eventually(30, "second archived", || async {
        app.archive_names("acme").len() == 2
    })
    .await;
    assert_eq!(app.archive_names("acme"), ["remit (1).csv", "remit.csv"]);
    let first = std::fs::read(app.local(&format!("{}/acme/remit.csv", app.archive_dir))).unwrap();
    assert_eq!(first, b"version one");
    app.finish().await;
}

/// Two coordinators on one database and one share, triggered at once, round
/// after round: every file processed exactly once, losers answered 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_process_every_file_exactly_once() {
    let mut app = spawn_app(Opts::default()).await;
    let other = app.start_another().await;
    let other_url = format!("http://{}/api/v1/coordinator/runs", other.addr);
    let token = app.token.clone().unwrap();
    let mut statuses = Vec::new();
    for round in 0..10 {
        for i in 0..25 {
            app.put(
                &format!("r{}", i % 3),
                &format!("f{round}_{i}.csv"),
                format!("{round}/{i}").as_bytes(),
            )
            .await;
        }
        let second = app.http.post(&other_url).bearer_auth(&token).send();
        let (a, b) = tokio::join!(app.trigger(), second);
        let b = b.unwrap();
        statuses.push(a.0);
        statuses.push(b.status().as_u16());
        if b.status() == 409 {
            let body: serde_json::Value = b.json().await.unwrap();
            assert_eq!(body["error"], "run_in_progress");
        }
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&409),
        "simultaneous triggers never overlapped: {statuses:?}"
    );
    // Sweep up anything a losing round left, then count calls per file.
    app.run_ok().await;
    let mut per_file: HashMap<String, usize> = HashMap::new();
    for c in app.fakes.foi_calls() {
        *per_file
            .entry(format!("{}/{}", c.remitter, c.file_name))
            .or_default() += 1;
    }
    assert_eq!(per_file.len(), 250);
    assert!(per_file.values().all(|n| *n == 1), "{per_file:?}");
    assert_eq!(app.fakes.itm_calls().len(), 250);
    assert_eq!(app.count("files").await, 250);
    // Every file archived once, under its own name: no collision, no suffix.
    app.eventually(60, "all archived", || async {
        (0..3)
            .map(|r| app.archive_names(&format!("r{r}")).len())
            .sum::<usize>()
            == 250
    })
    .await;
    for r in 0..3 {
        assert!(
            app.archive_names(&format!("r{r}"))
                .iter()
                .all(|n| !n.contains(" ("))
        );
    }
    other.shutdown.cancel();
    let _ = other.done.await;
    app.finish().await;
}

/// A remitter folder the coordinator may not list: reported, the other
/// remitters go through, and once it is readable its files are processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_remitter_folder_does_not_stop_the_others() {
    let mut app = spawn_app(Opts::default()).await;
    app.put("closed", "a.csv", b"a").await;
    app.put("open", "b.csv", b"b").await;
    let closed = app.local(&format!("{}/closed", app.source_dir));
    chmod(&closed, 0o000);

    let body = app.run_ok().await;
    assert_eq!(body["summary"]["errors"], 1, "{body}");
    assert_eq!(
        body["summary"]["folder_errors"][0]["remitter"], "closed",
        "{body}"
    );
    assert_eq!(decision_of(&body, "open", "b.csv")["status"], "success");
    assert_eq!(app.files().await.len(), 1);

    chmod(&closed, 0o775);
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "closed", "a.csv")["status"],
        "success",
        "{body}"
    );
    assert_eq!(app.fakes.foi_calls().len(), 2);
    app.finish().await;
}

/// Issue 12 item 8: a remitter folder whose listing times out (any error
/// but denied or gone) is that folder's error, not the run's: the other
/// folders go through (CONTRACT §1.1), and the folder's files are processed
/// by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_listing_that_times_out_is_that_folders_error() {
    let app = spawn_app(Opts::default()).await;
    app.put("slow", "a.csv", b"a").await;
    app.put("fine", "b.csv", b"b").await;
    let slow = format!("{}/slow", app.source_dir);
    let share = crate::gate::Gate::failing_list(app.server.engine.source().clone(), &slow, 1);
    let engine = app.server.engine.over(share);

    let report = engine.run("test").await.expect("the run completes");
    let s = serde_json::to_value(&report.summary).unwrap();
    assert_eq!(s["errors"], 1, "{s}");
    assert_eq!(s["folder_errors"][0]["remitter"], "slow", "{s}");
    assert!(
        s["folder_errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{s}"
    );
    assert_eq!(app.fakes.foi_names(), ["b.csv"]);

    let report = engine.run("test").await.expect("the next run completes");
    assert_eq!(report.summary.processed, 1, "{:?}", report.summary);
    assert_eq!(app.fakes.foi_names(), ["b.csv", "a.csv"]);
    app.finish().await;
}

/// Issue 12 item 8: a FOI URL with credentials and a query string that
/// cannot be reached: the failure is recorded and told to IQube, and neither
/// the event's detail, nor IQube's reason, nor the coordinator's log carries
/// the URL's secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_error_never_carries_the_urls_secrets() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (user_pw, query) = ("pw-in-url-7f3a", "query-secret-9c1b");
    let mut app = spawn_app(Opts {
        foi_url: Some(format!(
            "http://foi:{user_pw}@127.0.0.1:{closed}/extract/{{remitter}}?key={query}"
        )),
        ..Opts::default()
    })
    .await;
    app.put("acme", "remit.csv", b"remittance").await;
    let body = app.run_ok().await;
    let row = &app.files().await[0];
    assert_eq!(row.status, "extraction_service_failed", "{body}");
    let detail: serde_json::Value = sqlx::query_scalar(
        "SELECT detail FROM file_events WHERE file_id = $1 AND status = 'extraction_service_failed'",
    )
    .bind(row.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    app.eventually(30, "IQube told", || async {
        !app.fakes.iqube_calls().is_empty()
    })
    .await;
    let reason = app.fakes.iqube_calls()[0].body["reason"].to_string();
    assert!(reason.contains("connection failed"), "{reason}");
    let log = std::env::var("IT_LOG_DIR")
        .ok()
        .map(|d| {
            std::fs::read_to_string(format!("{d}/it-{}.log", std::process::id()))
                .unwrap_or_default()
        })
        .unwrap_or_default();
    for text in [detail.to_string(), reason, body.to_string(), log] {
        assert!(
            !text.contains(user_pw) && !text.contains(query),
            "a URL secret leaked: {text}"
        );
    }
    app.finish().await;
}

/// A remitter folder with 10,000 files (IT_MANY_FILES to change it): one scan,
/// every file processed once and archived, and a second run that sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_with_ten_thousand_files() {
    let n: usize = std::env::var("IT_MANY_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut app = spawn_app(Opts::default()).await;
    app.put("bulk", "seed.csv", b"seed").await;
    // Written on the server side: 10,000 writes over SMB would only time the test.
    let dir = app.local(&format!("{}/bulk", app.source_dir));
    for i in 0..n {
        std::fs::write(dir.join(format!("f{i:05}.csv")), format!("{i}")).unwrap();
    }
    let t = std::time::Instant::now();
    let body = app.run_ok().await;
    eprintln!("{} files: run and archive took {:?}", n + 1, t.elapsed());
    let s = &body["summary"];
    assert_eq!(
        (
            s["scanned"].as_u64(),
            s["succeeded"].as_u64(),
            s["errors"].as_u64()
        ),
        (Some(n as u64 + 1), Some(n as u64 + 1), Some(0)),
        "{s}"
    );
    assert_eq!(app.fakes.foi_calls().len(), n + 1);
    assert_eq!(app.count("files").await, n as i64 + 1);
    app.eventually(300, "all archived", || async {
        app.archive_names("bulk").len() == n + 1
    })
    .await;
    let again = app.run_ok().await;
    assert_eq!(again["summary"]["scanned"], 0, "{again}");
    assert_eq!(app.fakes.foi_calls().len(), n + 1);
    app.finish().await;
}
