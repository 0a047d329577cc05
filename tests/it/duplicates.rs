//! CONTRACT §12, the same content under another name, with
//! `DUPLICATE_CONTENT=hold` (real Samba and Postgres): a copy is claimed as
//! `duplicate_content` and not sent; IQube is told once; an operator's
//! retry sends it as new, a resolve archives it. With `process` (the
//! default) nothing changes.

use crate::helpers::{Opts, TestApp, decision_of, spawn_app};
use serde_json::{Value, json};

fn hold() -> Opts {
    Opts {
        flags: vec![("--duplicate-content", "hold".to_string())],
        ..Opts::default()
    }
}

fn id_of(app_files: &[crate::helpers::FileRow], name: &str) -> i64 {
    app_files
        .iter()
        .find(|f| f.file_name == name)
        .unwrap_or_else(|| panic!("a row for {name}"))
        .id
}

async fn post(app: &TestApp, path: String, body: Value) {
    let resp = app
        .http
        .post(format!("{}{path}", app.base_url))
        .bearer_auth(app.token.as_deref().unwrap())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
}

async fn detail_of_last_event(app: &TestApp, id: i64) -> Value {
    sqlx::query_scalar("SELECT detail FROM file_events WHERE file_id = $1 ORDER BY id DESC LIMIT 1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// `a.csv` is processed; the same bytes as `a (1).csv` are held (FOI and
/// ITM not called, IQube once, the detail naming `a.csv`'s id); a retry
/// sends the copy once with its own ITM key; a third copy resolved by an
/// operator is archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_under_another_name_is_held_then_retried_or_resolved() {
    let mut app = spawn_app(hold()).await;
    let bytes = b"date,amount\n2026-03-01,100.00\n";
    app.put("acme", "a.csv", bytes).await;
    app.run_ok().await;
    app.put("acme", "a (1).csv", bytes).await;
    let body = app.run_ok().await;
    let d = decision_of(&body, "acme", "a (1).csv");
    assert_eq!(
        (d["decision"].as_str(), d["status"].as_str()),
        (Some("held_duplicate"), Some("duplicate_content")),
        "{body}"
    );
    assert_eq!(body["summary"]["held_duplicates"], 1, "{body}");
    assert_eq!(
        app.fakes.foi_calls().len(),
        1,
        "FOI not called for the copy"
    );
    assert_eq!(
        app.fakes.itm_calls().len(),
        1,
        "ITM not called for the copy"
    );
    let files = app.files().await;
    let (first, copy) = (id_of(&files, "a.csv"), id_of(&files, "a (1).csv"));
    let detail = detail_of_last_event(&app, copy).await;
    assert_eq!(detail["duplicate_of"], json!(first), "{detail}");
    assert_eq!(detail["duplicate_of_name"], "a.csv", "{detail}");
    assert_eq!(app.events(copy).await, ["processing", "duplicate_content"]);
    app.eventually(30, "IQube told once", || async {
        app.fakes.iqube_calls().len() == 1
    })
    .await;
    let told = &app.fakes.iqube_calls()[0].body;
    assert_eq!(
        (told["status"].as_str(), told["file_name"].as_str()),
        (Some("duplicate_content"), Some("a (1).csv")),
        "{told}"
    );
    assert!(told["reason"].as_str().unwrap().contains("a.csv"), "{told}");
    // Awaiting an operator: a failure status.
    let failed: Value = app
        .http
        .get(format!(
            "{}/api/v1/coordinator/files?status=failed",
            app.base_url
        ))
        .bearer_auth(app.token.as_deref().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<i64> = failed["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [copy], "{failed}");
    // The next run leaves it alone (already processed: held).
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", "a (1).csv")["decision"],
        "already_processed"
    );
    assert_eq!(app.fakes.foi_calls().len(), 1);

    post(
        &app,
        format!("/api/v1/coordinator/files/{copy}/retry"),
        json!({"reason": "a second remittance after all"}),
    )
    .await;
    let body = app.run_ok().await;
    let d = decision_of(&body, "acme", "a (1).csv");
    assert_eq!(
        (d["decision"].as_str(), d["status"].as_str()),
        (Some("processed"), Some("success")),
        "sent as new: {body}"
    );
    let itm = app.fakes.itm_calls();
    assert_eq!(itm.len(), 2, "sent once");
    assert_ne!(
        itm[0].idempotency_key, itm[1].idempotency_key,
        "its own ITM key"
    );

    app.put("acme", "a - copy.csv", bytes).await;
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", "a - copy.csv")["status"],
        "duplicate_content"
    );
    let third = id_of(&app.files().await, "a - copy.csv");
    post(
        &app,
        format!("/api/v1/coordinator/files/{third}/resolve"),
        json!({"status": "ops_duplicate", "reason": "the remitter sent it twice"}),
    )
    .await;
    app.run_ok().await;
    app.eventually(30, "the resolved copy archived", || async {
        app.in_archive("acme", "a - copy.csv")
    })
    .await;
    assert_eq!(
        app.fakes.foi_calls().len(),
        2,
        "the resolved copy never sent"
    );
    app.finish().await;
}

/// The same new bytes under two names in one run: exactly one is sent, the
/// other held. A version of a name with new bytes is never a duplicate;
/// another remitter's file with the same bytes is processed; so is a copy
/// of a file claimed longer than DUPLICATE_WINDOW_DAYS ago.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_in_one_run_other_remitters_new_versions_and_the_window() {
    let mut app = spawn_app(hold()).await;
    let twin = b"twin content\n";
    app.put("acme", "twin (1).csv", twin).await;
    app.put("acme", "twin.csv", twin).await;
    app.put("beta", "twin (1).csv", twin).await;
    let body = app.run_ok().await;
    // The first by copy order (CONTRACT §6's order: `twin.csv` before
    // `twin (1).csv`) is sent, the other held naming it.
    assert_eq!(
        decision_of(&body, "acme", "twin.csv")["status"],
        "success",
        "{body}"
    );
    let held = decision_of(&body, "acme", "twin (1).csv");
    assert_eq!(held["decision"], "held_duplicate", "{body}");
    assert!(
        held["reason"].as_str().unwrap().contains("twin.csv"),
        "{held}"
    );
    assert_eq!(
        decision_of(&body, "beta", "twin (1).csv")["decision"],
        "processed",
        "another remitter's file is no copy"
    );
    assert_eq!(app.fakes.foi_calls().len(), 2, "{body}");

    // The same name with new bytes: a new version, not a copy of anything.
    app.put("acme", "report.csv", b"march").await;
    app.run_ok().await;
    app.put("acme", "report.csv", b"april").await;
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", "report.csv")["status"],
        "success",
        "{body}"
    );

    // A copy of a file claimed longer ago than the window is processed.
    app.put("acme", "old.csv", b"old content").await;
    app.run_ok().await;
    sqlx::query("UPDATE content_owner SET claimed_at = now() - interval '91 days' WHERE md5 = md5('old content')")
        .execute(&app.db)
        .await
        .unwrap();
    app.put("acme", "old (1).csv", b"old content").await;
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", "old (1).csv")["status"],
        "success",
        "{body}"
    );
    app.finish().await;
}

/// `DUPLICATE_CONTENT=process` (the default): both copies are sent, as
/// before CONTRACT §12.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_copies_are_processed() {
    let mut app = spawn_app(Opts::default()).await;
    app.put("acme", "a.csv", b"same").await;
    app.run_ok().await;
    app.put("acme", "a (1).csv", b"same").await;
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", "a (1).csv")["status"],
        "success",
        "{body}"
    );
    assert_eq!(app.fakes.itm_calls().len(), 2);
    app.finish().await;
}

/// A dry run with `hold` reports a copy as `would_hold_duplicate`, naming
/// what it copies (a claimed file, or a file of the same run that a real run
/// sends first), and claims, sends and moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_names_the_copies_a_real_run_would_hold() {
    let mut app = spawn_app(hold()).await;
    app.put("acme", "a.csv", b"first content").await;
    app.run_ok().await;
    app.put("acme", "a (1).csv", b"first content").await;
    app.put("acme", "b.csv", b"unique content").await;
    app.put("acme", "twin (1).csv", b"twin content").await;
    app.put("acme", "twin.csv", b"twin content").await;
    let rows = app.files().await.len();
    let resp = app
        .http
        .post(format!("{}/api/v1/coordinator/runs", app.base_url))
        .bearer_auth(app.token.as_deref().unwrap())
        .json(&json!({"dry_run": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let decision = |name: &str| {
        let d = decision_of(&body, "acme", name);
        (
            d["decision"].as_str().unwrap().to_string(),
            d["reason"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (copy, why) = decision("a (1).csv");
    assert_eq!(copy, "would_hold_duplicate", "{body}");
    assert!(why.contains("a.csv"), "{why}");
    assert_eq!(decision("b.csv").0, "would_process", "{body}");
    // The one a real run sends first (copy order), the other held.
    let (first, copy) = (decision("twin.csv"), decision("twin (1).csv"));
    assert_eq!(first.0, "would_process", "{body}");
    assert_eq!(copy.0, "would_hold_duplicate", "{body}");
    assert!(copy.1.contains("twin.csv"), "{}", copy.1);
    assert_eq!(body["summary"]["would_hold_duplicate"], 2, "{body}");
    assert_eq!(body["summary"]["would_process"], 2, "{body}");
    assert_eq!(app.files().await.len(), rows, "nothing claimed");
    assert_eq!(app.fakes.foi_calls().len(), 1, "nothing sent");
    app.finish().await;
}
