//! C) Policy A: files that may still be uploading are not touched.

use crate::helpers::{Opts, decision_of, md5_hex, spawn_app};
use coordinator::source::FileSource;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// C1: a file written just now is younger than STABLE_MIN_AGE_SECS: skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_newly_written_file_is_unstable_and_skipped() {
    let mut app = spawn_app(Opts {
        min_age_secs: 3600.0,
        ..Opts::default()
    })
    .await;
    app.put("acme", "remit_20240101.xlsx", b"fresh").await;
    app.put("acme", "remit_20231201.xlsx", b"older version")
        .await;
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["unstable"], 1, "{body}");
    let d = decision_of(&body, "acme", "remit_20240101.xlsx");
    assert_eq!(d["decision"], "unstable");
    assert!(
        d["reason"].as_str().unwrap().contains("server clock"),
        "{d}"
    );
    // Nothing touched: no row, no call, no move (not even the older version).
    assert_eq!(app.count("files").await, 0);
    assert_eq!(
        app.fakes.foi_calls().len() + app.fakes.itm_calls().len() + app.fakes.iqube_attempts(),
        0
    );
    assert!(app.in_source("acme", "remit_20240101.xlsx"));
    assert!(app.in_source("acme", "remit_20231201.xlsx"));
    assert!(app.archive_names("acme").is_empty());
    app.finish().await;
}

/// C2: a slow upload (a remitter's SMB client still writing) is skipped until it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_slow_upload_is_skipped_until_complete() {
    let mut app = spawn_app(Opts {
        min_age_secs: 0.0,
        interval_secs: 1.0,
        ..Opts::default()
    })
    .await;
    let name = "big_remit_20240101.csv";
    app.remitter_share
        .mkdir_all(&format!("{}/acme", app.source_dir))
        .await
        .unwrap();
    let path = format!("{}/acme/{name}", app.source_dir);
    let client = crate::remitter::client();
    let (started, first_chunk) = mpsc::channel::<()>();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_writer = stop.clone();
    // A remitter's SMB client writing slowly through one open handle.
    let writer = std::thread::spawn(move || {
        let mut f = crate::remitter::open_for_writing(&client, &path);
        let mut written = Vec::new();
        let mut i = 0u8;
        while !stop_writer.load(Ordering::SeqCst) {
            let chunk = vec![b'a' + (i % 26); 16 * 1024];
            f.write_all(&chunk).unwrap();
            written.extend_from_slice(&chunk);
            if i == 0 {
                started.send(()).unwrap();
            }
            i = i.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(f);
        drop(client);
        written
    });
    tokio::task::spawn_blocking(move || first_chunk.recv().unwrap())
        .await
        .unwrap();

    let body = app.run_ok().await;
    let d = decision_of(&body, "acme", name);
    assert_eq!(d["decision"], "unstable", "{body}");
    assert_eq!(app.count("files").await, 0);
    assert_eq!(app.fakes.foi_calls().len(), 0);
    assert!(app.in_source("acme", name));
    assert!(app.archive_names("acme").is_empty());

    stop.store(true, Ordering::SeqCst);
    let whole = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();

    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", name)["decision"],
        "processed",
        "{body}"
    );
    let rows = app.files().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].md5.as_str(), rows[0].size),
        (md5_hex(&whole).as_str(), whole.len() as i64)
    );
    let foi = app.fakes.foi_calls();
    assert_eq!((foi.len(), foi[0].size), (1, whole.len()));
    app.finish().await;
}
