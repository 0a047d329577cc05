//! E) FOI extraction failure mapping (CONTRACT §8), against the fake FOI.
//! Common expectations: the failure status in the DB, IQube told once, ITM
//! not called, the file left in the source folder and not archived.

use crate::fakes::FoiBehavior;
use crate::helpers::{Opts, TestApp, decision_of, spawn_app};
use serde_json::json;

const REMITTER: &str = "invest@det.com";
const NAME: &str = "remit_20240115.xlsx";

async fn expect_failure(mut app: TestApp, want: &str) -> TestApp {
    app.put(REMITTER, NAME, b"remittance bytes").await;
    let body = app.run_ok().await;
    let d = decision_of(&body, REMITTER, NAME);
    assert_eq!(
        (d["decision"].as_str(), d["status"].as_str()),
        (Some("processed"), Some(want)),
        "{body}"
    );
    assert_eq!(body["summary"]["failed"], 1, "{body}");

    let rows = app.files().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, want);
    assert_eq!(app.events(rows[0].id).await, ["processing", want]);
    assert!(app.fakes.itm_calls().is_empty(), "ITM must not be called");

    app.eventually(30, "IQube notified", || async {
        !app.fakes.iqube_calls().is_empty()
    })
    .await;
    let iq = app.fakes.iqube_calls();
    assert_eq!(iq.len(), 1, "{iq:?}");
    let n = &iq[0].body;
    assert_eq!(n["event"], "file_failed");
    assert_eq!(
        (
            n["remitter"].as_str(),
            n["file_name"].as_str(),
            n["status"].as_str()
        ),
        (Some(REMITTER), Some(NAME), Some(want))
    );
    assert_eq!(n["run_id"], body["run_id"]);
    assert!(n["reason"].as_str().is_some_and(|r| !r.is_empty()), "{n}");

    assert!(
        app.in_source(REMITTER, NAME),
        "a failed file stays in source"
    );
    assert!(
        app.archive_names(REMITTER).is_empty(),
        "a failed file is not archived"
    );
    app
}

async fn case(behavior: FoiBehavior, want: &str) {
    let app = spawn_app(Opts::default()).await;
    app.fakes.set_foi(behavior);
    expect_failure(app, want).await.finish().await;
}

/// E1: invalid password → `extraction_file_password_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e1_invalid_password_maps_to_password_failed() {
    case(
        FoiBehavior::Json(
            json!({"result": [], "failed": [{"file": NAME, "reason": "Invalid password"}]}),
        ),
        "extraction_file_password_failed",
    )
    .await;
}

/// E2: non-object JSON / unparsable answer → `extraction_service_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2_non_dict_json_maps_to_service_failed() {
    case(
        FoiBehavior::Json(json!(["not", "an", "object"])),
        "extraction_service_failed",
    )
    .await;
}

/// E2 (parse issue): a body that is not JSON at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2b_unparsable_body_maps_to_service_failed() {
    case(
        FoiBehavior::Raw(200, "<html>oops</html>".into()),
        "extraction_service_failed",
    )
    .await;
}

/// E3: `failed[]` with "no matched template" → `extraction_file_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e3_no_matched_template_maps_to_file_failed() {
    case(
        FoiBehavior::Json(json!({"result": [], "failed": [{"reason": "no matched template"}]})),
        "extraction_file_failed",
    )
    .await;
}

/// E4: `failed[]` with "data format error" → `extraction_file_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e4_data_format_error_maps_to_file_failed() {
    case(
        FoiBehavior::Json(json!({"result": [{"x": 1}], "failed": ["data format error"]})),
        "extraction_file_failed",
    )
    .await;
}

/// E5: HTTP 422 → `extraction_file_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e5_http_422_maps_to_file_failed() {
    case(
        FoiBehavior::Raw(422, r#"{"detail":"unprocessable"}"#.into()),
        "extraction_file_failed",
    )
    .await;
}

/// E6: HTTP 400 → `extraction_file_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e6_http_400_maps_to_file_failed() {
    case(
        FoiBehavior::Raw(400, "bad request".into()),
        "extraction_file_failed",
    )
    .await;
}

/// E7: `result` missing → `extraction_service_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e7_missing_result_maps_to_service_failed() {
    case(
        FoiBehavior::Json(json!({"failed": []})),
        "extraction_service_failed",
    )
    .await;
}

/// E8: `result` empty → `extraction_service_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e8_empty_result_maps_to_service_failed() {
    case(
        FoiBehavior::Json(json!({"result": [], "failed": []})),
        "extraction_service_failed",
    )
    .await;
}

/// Other non-2xx (500) → `extraction_service_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_http_500_maps_to_service_failed() {
    case(
        FoiBehavior::Raw(500, "internal error".into()),
        "extraction_service_failed",
    )
    .await;
}

/// FOI hanging past FOI_TIMEOUT_SECS, after the retries → `extraction_service_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_timeout_after_retries_maps_to_service_failed() {
    let app = spawn_app(Opts {
        foi_timeout_secs: 1.0,
        foi_retries: 1,
        ..Opts::default()
    })
    .await;
    app.fakes.set_foi(FoiBehavior::Hang);
    let app = expect_failure(app, "extraction_service_failed").await;
    assert_eq!(app.fakes.foi_calls().len(), 2, "one call and one retry");
    app.finish().await;
}

/// FOI resetting the connection, after the retries → `extraction_service_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_connection_reset_maps_to_service_failed() {
    let probe = crate::fakes::Fakes::start(None).await;
    let app = spawn_app(Opts {
        foi_retries: 1,
        foi_url: Some(probe.reset_url.clone()),
        ..Opts::default()
    })
    .await;
    expect_failure(app, "extraction_service_failed")
        .await
        .finish()
        .await;
}

/// E9: after an extraction failure, later runs do not reprocess the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e9_password_failure_is_not_reprocessed_on_later_runs() {
    let app = spawn_app(Opts::default()).await;
    app.fakes.set_foi(FoiBehavior::Json(
        json!({"failed": [{"reason": "password required"}]}),
    ));
    let mut app = expect_failure(app, "extraction_file_password_failed").await;
    // FOI would now succeed: the file must still not be sent again.
    app.fakes.set_foi(FoiBehavior::success());
    for _ in 0..2 {
        let body = app.run_ok().await;
        let d = decision_of(&body, REMITTER, NAME);
        assert_eq!(d["decision"], "already_processed", "{body}");
        assert_eq!(d["status"], "extraction_file_password_failed");
    }
    assert_eq!(app.fakes.foi_calls().len(), 1);
    assert!(app.fakes.itm_calls().is_empty());
    assert_eq!(app.fakes.iqube_calls().len(), 1);
    assert_eq!(app.count("files").await, 1);
    assert_eq!(app.count("file_events").await, 2);
    assert!(app.in_source(REMITTER, NAME));
    app.finish().await;
}

/// IQube down: the notification is kept and delivered by a later pass, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iqube_down_notification_is_kept_and_delivered_once_later() {
    let mut app = spawn_app(Opts::default()).await;
    app.fakes.set_foi(FoiBehavior::Raw(400, "bad".into()));
    app.fakes.set_iqube(crate::fakes::IqubeBehavior::Down);
    app.put(REMITTER, NAME, b"remittance bytes").await;
    app.run_ok().await;
    assert!(app.fakes.iqube_attempts() >= 1, "delivery was attempted");
    assert!(app.fakes.iqube_calls().is_empty());
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE delivered_at IS NULL")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(pending, 1);

    app.fakes.set_iqube(crate::fakes::IqubeBehavior::Ok);
    // As if the row's backoff had passed.
    sqlx::query("UPDATE notifications SET next_attempt_at = now()")
        .execute(&app.db)
        .await
        .unwrap();
    app.run_ok().await;
    app.run_ok().await;
    let calls = app.fakes.iqube_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].body["status"], "extraction_file_failed");
    assert_eq!(app.fakes.foi_calls().len(), 1);
    app.finish().await;
}

/// `serve`'s periodic pass delivers a kept notification without another run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_pass_delivers_kept_notifications() {
    let mut app = spawn_app(Opts {
        housekeeping_interval_secs: 0.3,
        ..Opts::default()
    })
    .await;
    app.fakes.set_foi(FoiBehavior::Raw(422, "no".into()));
    app.fakes.set_iqube(crate::fakes::IqubeBehavior::Down);
    app.put(REMITTER, NAME, b"remittance bytes").await;
    app.run_ok().await;
    assert!(app.fakes.iqube_calls().is_empty());
    app.fakes.set_iqube(crate::fakes::IqubeBehavior::Ok);
    app.eventually(30, "delivered by a periodic pass", || async {
        !app.fakes.iqube_calls().is_empty()
    })
    .await;
    let runs = app.count("runs").await;
    assert_eq!(runs, 1, "no other run was triggered");
    // Later passes do not deliver it again.
    let passes = *app.server.engine.passes_done().borrow();
    let mut rx = app.server.engine.passes_done();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        rx.wait_for(|n| *n >= passes + 2),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(app.fakes.iqube_calls().len(), 1);
    app.finish().await;
}
