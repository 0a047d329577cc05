//! F) ITM failure + idempotency.

use crate::fakes::ItmBehavior;
use crate::helpers::{Opts, decision_of, spawn_app};

/// F1: ITM answers `status=failed` → `itm_failed`, IQube told, file kept, never resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_itm_failed_file_is_not_archived_and_not_reprocessed() {
    let mut app = spawn_app(Opts::default()).await;
    app.fakes.set_itm(ItmBehavior::Failed);
    app.put("acme", "remit_20240115.xlsx", b"remittance").await;
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", "remit_20240115.xlsx")["status"],
        "itm_failed",
        "{body}"
    );
    let rows = app.files().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "itm_failed");
    assert_eq!(app.events(rows[0].id).await, ["processing", "itm_failed"]);
    let detail: serde_json::Value =
        sqlx::query_scalar("SELECT detail FROM file_events WHERE status = 'itm_failed'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(
        detail["reason"].as_str().unwrap().contains("failed"),
        "{detail}"
    );
    assert_eq!(app.fakes.itm_calls().len(), 1);
    app.eventually(30, "IQube notified", || async {
        !app.fakes.iqube_calls().is_empty()
    })
    .await;
    let n = &app.fakes.iqube_calls()[0].body;
    assert_eq!(
        (n["event"].as_str(), n["status"].as_str()),
        (Some("file_failed"), Some("itm_failed"))
    );

    app.fakes.set_itm(ItmBehavior::Success);
    for _ in 0..2 {
        let again = app.run_ok().await;
        assert_eq!(
            decision_of(&again, "acme", "remit_20240115.xlsx")["decision"],
            "already_processed"
        );
    }
    assert_eq!(
        (app.fakes.foi_calls().len(), app.fakes.itm_calls().len()),
        (1, 1)
    );
    assert_eq!(app.fakes.iqube_calls().len(), 1);
    assert_eq!(app.count("files").await, 1);
    assert_eq!(app.count("file_events").await, 2);
    assert!(app.in_source("acme", "remit_20240115.xlsx"));
    assert!(app.archive_names("acme").is_empty());
    app.finish().await;
}

/// ITM answering non-2xx is `itm_failed` too, with the same Idempotency-Key shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_itm_http_500_is_itm_failed() {
    let mut app = spawn_app(Opts::default()).await;
    app.fakes.set_itm(ItmBehavior::Raw(500, "down".into()));
    app.put("acme", "x.csv", b"x").await;
    app.run_ok().await;
    assert_eq!(app.files().await[0].status, "itm_failed");
    let calls = app.fakes.itm_calls();
    assert!(
        calls[0]
            .idempotency_key
            .as_deref()
            .unwrap()
            .starts_with("coordinator-")
    );
    app.finish().await;
}
