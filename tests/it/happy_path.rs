//! A) Happy path.

use crate::helpers::{Opts, decision_of, md5_hex, spawn_app};

/// A1: FOI success → ITM success → DB `success` → archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_happy_path_calls_itm_once_and_archives() {
    let mut app = spawn_app(Opts::default()).await;
    let remitter = "invest@det.com";
    let name = "remittance_advice_20240115.xlsx";
    let bytes = b"PK\x03\x04 seed remittance advice for invest@det.com".repeat(100);
    app.put(remitter, name, &bytes).await;

    let body = app.run_ok().await;
    let s = &body["summary"];
    assert_eq!(
        (
            s["scanned"].as_i64(),
            s["processed"].as_i64(),
            s["succeeded"].as_i64()
        ),
        (Some(1), Some(1), Some(1)),
        "{body}"
    );
    assert_eq!(decision_of(&body, remitter, name)["status"], "success");

    // FOI got the whole file, named, as the `file` part, at the encoded remitter path.
    let foi = app.fakes.foi_calls();
    assert_eq!(foi.len(), 1);
    assert_eq!(foi[0].raw_path, "/extract/invest%40det.com");
    assert_eq!(foi[0].remitter, remitter);
    assert_eq!(
        (foi[0].part_name.as_str(), foi[0].file_name.as_str()),
        ("file", name)
    );
    assert_eq!(
        (foi[0].md5.clone(), foi[0].size),
        (md5_hex(&bytes), bytes.len())
    );

    // ITM got exactly one submission carrying FOI's result unchanged.
    let itm = app.fakes.itm_calls();
    assert_eq!(itm.len(), 1);
    assert_eq!(itm[0].body["remitter"], remitter);
    assert_eq!(itm[0].body["file_name"], name);
    assert_eq!(itm[0].body["md5"], md5_hex(&bytes));
    assert_eq!(
        itm[0].body["result"],
        serde_json::json!([{"invoice": "INV-1", "amount": "100.00"}])
    );
    assert!(
        itm[0]
            .idempotency_key
            .as_deref()
            .is_some_and(|k| !k.is_empty())
    );
    assert_eq!(app.fakes.iqube_attempts(), 0);

    // DB: one success row, then archived with exactly the three events.
    let rows = app.files().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].status.as_str(), rows[0].md5.as_str()),
        ("success", md5_hex(&bytes).as_str())
    );
    assert_eq!(rows[0].base_name, "remittance_advice.xlsx");
    assert_eq!(rows[0].size, bytes.len() as i64);
    app.eventually(30, "file moved to the archive", || async {
        app.in_archive(remitter, name)
    })
    .await;
    assert!(!app.in_source(remitter, name));
    let rows = app.files().await;
    assert!(rows[0].archived);
    assert_eq!(
        app.events(rows[0].id).await,
        ["processing", "success", "archive_succeeded"]
    );

    // A second run finds nothing new and calls nobody.
    let again = app.run_ok().await;
    assert_eq!(again["summary"]["processed"], 0, "{again}");
    assert_eq!(
        (app.fakes.foi_calls().len(), app.fakes.itm_calls().len()),
        (1, 1)
    );
    assert_eq!(app.count("files").await, 1);
    assert_eq!(app.count("file_events").await, 3);
    app.finish().await;
}
