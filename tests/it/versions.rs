//! B) Scan + newest selection (timestamp versions).

use crate::helpers::{Opts, TestApp, decision_of, spawn_app};

/// Runs once and checks: newest processed (one row, success), older versions
/// archived without a row or a downstream call.
async fn newest_processed_older_archived(
    app: &mut TestApp,
    remitter: &str,
    older: &[&str],
    newest: &str,
) {
    let body = app.run_ok().await;
    check_group(app, &body, remitter, older, newest).await;
}

async fn check_group(
    app: &TestApp,
    body: &serde_json::Value,
    remitter: &str,
    older: &[&str],
    newest: &str,
) {
    assert_eq!(
        decision_of(body, remitter, newest)["decision"],
        "processed",
        "{body}"
    );
    for old in older {
        assert_eq!(
            decision_of(body, remitter, old)["decision"],
            "superseded",
            "{body}"
        );
        app.eventually(30, &format!("{old} archived"), || async {
            app.in_archive(remitter, old)
        })
        .await;
        assert!(!app.in_source(remitter, old));
    }
    let rows: Vec<_> = app
        .files()
        .await
        .into_iter()
        .filter(|r| r.remitter == remitter)
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].file_name.as_str(), rows[0].status.as_str()),
        (newest, "success")
    );
    let sent: Vec<String> = app
        .fakes
        .foi_calls()
        .into_iter()
        .filter(|c| c.remitter == remitter)
        .map(|c| c.file_name)
        .collect();
    assert_eq!(sent, [newest]);
}

/// B1: 14-digit timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b1_fourteen_digit_versions_archive_older_process_newest() {
    let mut app = spawn_app(Opts::default()).await;
    app.put("acme", "report_20240101120000.csv", b"v1").await;
    app.put("acme", "report_20240102120000.csv", b"v2").await;
    newest_processed_older_archived(
        &mut app,
        "acme",
        &["report_20240101120000.csv"],
        "report_20240102120000.csv",
    )
    .await;
    app.finish().await;
}

/// B2: several remitters, each with versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_multiple_remitters_each_newest_processed() {
    let mut app = spawn_app(Opts::default()).await;
    for r in ["alpha", "beta", "gamma co"] {
        app.put(r, "remit_20240101.xlsx", format!("{r} old").as_bytes())
            .await;
        app.put(r, "remit_20240301.xlsx", format!("{r} new").as_bytes())
            .await;
        app.put(r, "remit_20240201.xlsx", format!("{r} mid").as_bytes())
            .await;
    }
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["superseded"], 6, "{body}");
    for r in ["alpha", "beta", "gamma co"] {
        check_group(
            &app,
            &body,
            r,
            &["remit_20240101.xlsx", "remit_20240201.xlsx"],
            "remit_20240301.xlsx",
        )
        .await;
    }
    assert_eq!(app.fakes.itm_calls().len(), 3);
    assert_eq!(app.count("files").await, 3);
    app.finish().await;
}

/// B3: 8-digit timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_eight_digit_versions_archive_older_process_newest() {
    let mut app = spawn_app(Opts::default()).await;
    app.put("acme", "remit_20240101.xlsx", b"old").await;
    app.put("acme", "remit_20240102.xlsx", b"new").await;
    newest_processed_older_archived(
        &mut app,
        "acme",
        &["remit_20240101.xlsx"],
        "remit_20240102.xlsx",
    )
    .await;
    app.finish().await;
}

/// B4: mixed 8- and 14-digit: the 14-digit one is newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b4_mixed_eight_and_fourteen_digits_fourteen_wins() {
    let mut app = spawn_app(Opts::default()).await;
    app.put("acme", "remit_20240101.xlsx", b"date only").await;
    app.put("acme", "remit_20240101093000.xlsx", b"with time")
        .await;
    newest_processed_older_archived(
        &mut app,
        "acme",
        &["remit_20240101.xlsx"],
        "remit_20240101093000.xlsx",
    )
    .await;
    app.finish().await;
}

/// B5: unsupported formats (`T` separator) are separate groups, each processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b5_t_separator_is_not_grouped_each_file_is_processed() {
    let mut app = spawn_app(Opts::default()).await;
    let names = ["remit_20240101T093000.xlsx", "remit_20240101T103000.xlsx"];
    app.put("acme", names[0], b"first").await;
    app.put("acme", names[1], b"second").await;
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["superseded"], 0, "{body}");
    assert_eq!(body["summary"]["processed"], 2, "{body}");
    let rows = app.files().await;
    let mut got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.file_name.as_str(), r.base_name.as_str()))
        .collect();
    got.sort();
    assert_eq!(got, [(names[0], names[0]), (names[1], names[1])]);
    let mut sent = app.fakes.foi_names();
    sent.sort();
    assert_eq!(sent, names);
    assert_eq!(app.fakes.itm_calls().len(), 2);
    app.finish().await;
}
