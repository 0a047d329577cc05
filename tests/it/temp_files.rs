//! D) Temp / partial names are ignored by the scan.

use crate::helpers::{Opts, decision_of, spawn_app};

/// D1: temp-like files stay in source and never get a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_temp_files_are_ignored_by_the_scan() {
    let mut app = spawn_app(Opts::default()).await;
    let temps = [
        "~$remit.xlsx",
        ".~lock.remit.xlsx#",
        "._remit.xlsx",
        ".hidden",
        "remit.tmp",
        "remit.TEMP",
        "remit.part",
        "remit.partial",
        "remit.crdownload",
        "remit.download",
        "remit.filepart",
        "remit.swp",
        "remit.xlsx~",
        "Thumbs.db",
        "desktop.ini",
    ];
    for t in temps {
        app.put("acme", t, b"temp").await;
    }
    app.put("acme", "remit.xlsx", b"real file").await;
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["ignored"], temps.len(), "{body}");
    assert_eq!(body["summary"]["scanned"], temps.len() + 1, "{body}");
    for t in temps {
        assert_eq!(decision_of(&body, "acme", t)["decision"], "ignored");
        assert!(app.in_source("acme", t), "{t} must stay in source");
    }
    let rows = app.files().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].file_name, "remit.xlsx");
    let sent = app.fakes.foi_names();
    assert_eq!(sent, ["remit.xlsx"]);
    app.eventually(30, "the real file archived", || async {
        app.in_archive("acme", "remit.xlsx")
    })
    .await;
    assert_eq!(app.archive_names("acme"), ["remit.xlsx"]);
    app.finish().await;
}
