//! The IQube outbox under a failing IQube: rows IQube keeps rejecting back
//! off and never hold back newer notifications; a rejected row is attempted
//! again only after its backoff and delivered exactly once.

use crate::fakes::{FoiBehavior, IqubeBehavior};
use crate::helpers::{Opts, spawn_app};
use std::time::Duration;

const REMITTER: &str = "acme";

/// 600 old rows IQube keeps rejecting (more than one pass ever took) do not
/// stop a new failure's notification: the pass after its run delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_rejected_notifications_do_not_starve_a_new_one() {
    let mut app = spawn_app(Opts::default()).await;
    sqlx::query(
        "INSERT INTO notifications (dedupe_key, payload, attempts, last_error, created_at) \
         SELECT 'old:' || g, jsonb_build_object('event', 'run_failed', 'reason', 'old ' || g), \
                3, 'IQube answered HTTP 422', now() - interval '1 day' \
         FROM generate_series(1, 600) AS g",
    )
    .execute(&app.db)
    .await
    .unwrap();
    app.fakes
        .set_iqube(IqubeBehavior::RejectKeysStartingWith("old:".into()));
    app.fakes
        .set_foi(FoiBehavior::Raw(422, "no template".into()));
    app.put(REMITTER, "remit.csv", b"remittance").await;

    app.run_ok().await;

    let calls = app.fakes.iqube_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].body["file_name"], "remit.csv");
    let id = app.files().await[0].id;
    assert_eq!(
        calls[0].idempotency_key.as_deref(),
        Some(format!("file_failed:{id}").as_str())
    );
    let (delivered, old_pending): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE delivered_at IS NOT NULL), \
                count(*) FILTER (WHERE delivered_at IS NULL AND dedupe_key LIKE 'old:%') \
         FROM notifications",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((delivered, old_pending), (1, 600));
    app.finish().await;
}

/// IQube rejects: the row is not attempted again before its backoff (the
/// periodic passes in between leave it alone), then delivered once when
/// IQube is back, with its dedupe key as `Idempotency-Key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_notification_backs_off_and_is_delivered_once() {
    let mut app = spawn_app(Opts {
        housekeeping_interval_secs: 0.3,
        ..Opts::default()
    })
    .await;
    app.fakes.set_iqube(IqubeBehavior::Down);
    app.fakes.set_foi(FoiBehavior::Raw(400, "bad".into()));
    app.put(REMITTER, "remit.csv", b"remittance").await;
    app.run_ok().await;
    app.eventually(30, "first attempt", || async {
        app.fakes.iqube_attempts() == 1
    })
    .await;

    // Three more passes inside the first backoff (5 s): no new attempt.
    let passes = *app.server.engine.passes_done().borrow();
    let mut rx = app.server.engine.passes_done();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|n| *n >= passes + 3))
        .await
        .unwrap()
        .unwrap();
    let (attempts, due_later): (i32, bool) =
        sqlx::query_as("SELECT attempts, next_attempt_at > now() FROM notifications")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        (attempts, due_later, app.fakes.iqube_attempts()),
        (1, true, 1)
    );

    app.fakes.set_iqube(IqubeBehavior::Ok);
    app.eventually(30, "delivered after the backoff", || async {
        !app.fakes.iqube_calls().is_empty()
    })
    .await;
    let passes = *app.server.engine.passes_done().borrow();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|n| *n >= passes + 2))
        .await
        .unwrap()
        .unwrap();
    let calls = app.fakes.iqube_calls();
    assert_eq!(calls.len(), 1, "delivered once: {calls:?}");
    let id = app.files().await[0].id;
    assert_eq!(
        calls[0].idempotency_key.as_deref(),
        Some(format!("file_failed:{id}").as_str())
    );
    let (attempts, delivered): (i32, bool) =
        sqlx::query_as("SELECT attempts, delivered_at IS NOT NULL FROM notifications")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((attempts, delivered), (2, true));
    assert_eq!(app.count("runs").await, 1, "no other run was triggered");
    app.finish().await;
}

/// Issue 12 item 2: shutdown comes while IQube is still answering slowly:
/// the request in flight is awaited and recorded delivered, so the next
/// process does not send it again (IQube is told once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_in_flight_at_shutdown_is_awaited_and_not_sent_again() {
    let mut app = spawn_app(Opts::default()).await;
    app.fakes
        .set_iqube(IqubeBehavior::Slow(Duration::from_secs(2)));
    app.fakes
        .set_foi(FoiBehavior::Raw(422, "no template".into()));
    app.put(REMITTER, "remit.csv", b"remittance").await;
    let (status, body) = app.trigger().await;
    assert_eq!(status, 200, "{body}");
    app.eventually(30, "IQube received the notification", || async {
        app.fakes.iqube_attempts() == 1
    })
    .await;
    app.server.shutdown.cancel();
    app.wait_background().await;
    let (attempts, delivered): (i32, bool) =
        sqlx::query_as("SELECT attempts, delivered_at IS NOT NULL FROM notifications")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((attempts, delivered), (1, true), "awaited, not dropped");

    // A new process over the same database: nothing left to send.
    app.fakes.set_iqube(IqubeBehavior::Ok);
    sqlx::query("UPDATE notifications SET next_attempt_at = now()")
        .execute(&app.db)
        .await
        .unwrap();
    let other = app.start_another().await;
    other.engine.background_pass().await;
    assert_eq!(app.fakes.iqube_attempts(), 1, "IQube was told once");
    other.shutdown.cancel();
    let _ = other.done.await;
    app.finish().await;
}
