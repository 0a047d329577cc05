//! CONTRACT §11 "Tamper evidence": the history refuses UPDATE, DELETE and
//! TRUNCATE, and `coordinator audit verify` (the binary) passes an intact
//! history and names the row of each kind of tampering done with the
//! triggers dropped by a superuser: an edit, a deletion, an insertion, a
//! copy and a swap. Each tampering has a database of its own.

use crate::helpers::{Opts, TestApp, TestEnv, spawn_app};
use coordinator::store::audit_chain::canonical_json;
use coordinator::store::{AuditEntry, AuditKey, Outcome, insert_audit_event};
use serde_json::{Value, json};
use std::time::Duration;

/// A coordinator that ran three files through (each `processing`,
/// `success`, `archive_succeeded`), with two `audit_events` rows written by
/// the lead's helper, all sealed.
async fn app_with_history() -> TestApp {
    let mut app = spawn_app(Opts::default()).await;
    for i in 0..3 {
        app.put(
            "acme",
            &format!("remit_{i}.csv"),
            format!("a,b\n{i},x\n").as_bytes(),
        )
        .await;
    }
    // The run writes its own `run.start` row; two more are written here.
    app.run_ok().await;
    let key = key_of(&app);
    for (action, outcome) in [
        ("run.start", Outcome::Ok),
        ("token.create", Outcome::Refused),
    ] {
        let row = AuditEntry {
            actor: "alice".into(),
            role: Some("operator".into()),
            action: action.into(),
            target: Some("ops-token".into()),
            outcome,
            reason: (outcome == Outcome::Refused).then(|| "operator may not manage tokens".into()),
            remote_addr: Some("127.0.0.1".into()),
            request_id: None,
        };
        insert_audit_event(&app.db, &key, &row)
            .await
            .expect("an audit event");
    }
    assert_eq!(app.count("file_events").await, 9);
    all_sealed(&app).await;
    app
}

fn key_text(app: &TestApp) -> String {
    app.args
        .base
        .audit
        .audit_key
        .as_ref()
        .expect("the test coordinator has an AUDIT_KEY")
        .expose()
        .to_string()
}

fn key_of(app: &TestApp) -> AuditKey {
    AuditKey::new(key_text(app).as_bytes()).expect("a valid key")
}

/// Rows of `table` that no seal covers yet.
async fn unsealed(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE (xid::text)::bigint >= \
           coalesce((SELECT max(xid_to) FROM audit_seals WHERE table_name = '{table}'), 0)"
    ))
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// Waits (with a deadline) until the sealer of `serve` covered every row.
async fn all_sealed(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if unsealed(app, "file_events").await == 0 && unsealed(app, "audit_events").await == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rows were not sealed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `coordinator audit verify` on the app's database with `key`: exit code
/// and what it printed.
async fn verify(app: &TestApp, key: &str) -> (Option<i32>, String) {
    let url = app
        .args
        .base
        .db
        .database_url
        .as_ref()
        .unwrap()
        .expose()
        .to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["audit", "verify"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ENV", "prod")
        .env("DATABASE_URL", url)
        .env("AUDIT_KEY", key)
        .output()
        .await
        .expect("run coordinator audit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    crate::helpers::keep_log(&text);
    (out.status.code(), text)
}

/// Drops the append-only triggers, as a superuser can.
async fn drop_triggers(app: &TestApp) {
    for (table, trigger) in [
        ("file_events", "file_events_append_only"),
        ("audit_events", "audit_events_append_only"),
    ] {
        sqlx::query(&format!("DROP TRIGGER {trigger} ON {table}"))
            .execute(&app.db)
            .await
            .unwrap();
    }
}

async fn event_ids(app: &TestApp) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM file_events ORDER BY id")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

/// Asserts `verify` exits 1 naming `row` of `table`, saying `what`.
async fn broken(app: &TestApp, table: &str, row: i64, what: &str) {
    let (code, out) = verify(app, &key_text(app)).await;
    assert_eq!(code, Some(1), "{out}");
    let named = format!("chain broken: {table} row {row}: ");
    assert!(
        out.contains(&named) && out.contains(what),
        "want {named:?} and {what:?}: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_is_append_only_and_an_intact_chain_verifies() {
    let app = app_with_history().await;
    for sql in [
        "UPDATE file_events SET detail = '{}' WHERE id = (SELECT min(id) FROM file_events)",
        "DELETE FROM file_events WHERE id = (SELECT max(id) FROM file_events)",
        "UPDATE audit_events SET outcome = 'ok'",
        "DELETE FROM audit_events",
        "TRUNCATE file_events",
        "TRUNCATE audit_events",
        "DELETE FROM audit_seals",
        "UPDATE audit_seals SET legacy = true",
    ] {
        let e = sqlx::query(sql)
            .execute(&app.db)
            .await
            .expect_err(&format!("refused: {sql}"));
        assert!(e.to_string().contains("is append-only"), "{sql}: {e}");
    }

    let (code, out) = verify(&app, &key_text(&app)).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ok: 12 rows checked (") && out.contains("; 0 newer than the last seal"),
        "{out}"
    );
    // The head verify found is the one the coordinator publishes.
    let head = out
        .lines()
        .find_map(|l| l.strip_prefix("head: seal "))
        .expect("a head line");
    let (seal_id, link) = head.split_once(" link ").unwrap();
    let want =
        format!("coordinator_audit_chain_head_info{{seal_id=\"{seal_id}\",link=\"{link}\"}} 1");
    app.eventually(10, "the head in /metrics", || async {
        let metrics = reqwest::get(format!("{}/metrics", app.base_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics.lines().any(|l| l == want)
    })
    .await;

    // Another key: the first row does not verify.
    let first = event_ids(&app).await[0];
    let (code, out) = verify(&app, "not-the-key-the-coordinator-has").await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "chain broken: file_events row {first}: its MAC does not verify"
        )),
        "{out}"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_detail_is_named() {
    let app = app_with_history().await;
    drop_triggers(&app).await;
    let row = event_ids(&app).await[4];
    sqlx::query(
        "UPDATE file_events SET detail = detail || '{\"reason\": \"edited\"}' WHERE id = $1",
    )
    .bind(row)
    .execute(&app.db)
    .await
    .unwrap();
    broken(&app, "file_events", row, "was changed").await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_event_is_named_with_its_predecessor() {
    let app = app_with_history().await;
    drop_triggers(&app).await;
    let ids = event_ids(&app).await;
    sqlx::query("DELETE FROM file_events WHERE id = $1")
        .bind(ids[5])
        .execute(&app.db)
        .await
        .unwrap();
    broken(
        &app,
        "file_events",
        ids[5],
        &format!("was deleted (the successor of row {}", ids[4]),
    )
    .await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inserted_event_is_named_sealed_or_not() {
    let app = app_with_history().await;
    // The triggers refuse UPDATE and DELETE only: anyone may insert.
    let forged: i64 = sqlx::query_scalar(
        "INSERT INTO file_events (file_id, status, detail) \
         SELECT min(id), 'success', '{}' FROM files RETURNING id",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    broken(&app, "file_events", forged, "has no MAC: inserted behind").await;
    // Once the sealer has taken it into a seal, it is named all the same.
    all_sealed(&app).await;
    broken(&app, "file_events", forged, "has no MAC: inserted behind").await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_event_is_named() {
    let app = app_with_history().await;
    let original = event_ids(&app).await[1];
    let copy: i64 = sqlx::query_scalar(
        "INSERT INTO file_events (file_id, status, detail, mac) \
         SELECT file_id, status, detail, mac FROM file_events WHERE id = $1 RETURNING id",
    )
    .bind(original)
    .fetch_one(&app.db)
    .await
    .unwrap();
    all_sealed(&app).await;
    broken(
        &app,
        "file_events",
        copy,
        &format!("carries the same MAC as row {original}"),
    )
    .await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_order_is_named() {
    let app = app_with_history().await;
    drop_triggers(&app).await;
    let ids = event_ids(&app).await;
    let (a, b) = (ids[2], ids[6]);
    // Each row keeps a valid MAC (it moves with its content): only the
    // seal's digests show that the order changed.
    sqlx::query(
        "UPDATE file_events e SET file_id = s.file_id, status = s.status, detail = s.detail, \
           mac = s.mac, created_at = s.created_at \
         FROM (SELECT $1::bigint AS target, file_id, status, detail, mac, created_at FROM file_events WHERE id = $2 \
               UNION ALL \
               SELECT $2::bigint, file_id, status, detail, mac, created_at FROM file_events WHERE id = $1) s \
         WHERE e.id = s.target",
    )
    .bind(a)
    .bind(b)
    .execute(&app.db)
    .await
    .unwrap();
    broken(&app, "file_events", a, "was changed since seal").await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_audit_event_is_named() {
    let app = app_with_history().await;
    drop_triggers(&app).await;
    let row: i64 = sqlx::query_scalar("SELECT max(id) FROM audit_events")
        .fetch_one(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET outcome = 'ok', reason = NULL WHERE id = $1")
        .bind(row)
        .execute(&app.db)
        .await
        .unwrap();
    broken(&app, "audit_events", row, "was changed").await;
    app.finish().await;
}

/// The canonical encoding a MAC covers is the same for a `detail` as
/// written and as read back from jsonb: numbers, unicode, nesting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detail_encodes_alike_before_and_after_a_jsonb_round_trip() {
    let db = sqlx::PgPool::connect(&TestEnv::from_env().database_url)
        .await
        .unwrap();
    let details = [
        json!({"run_id": "7d1c", "b": 1, "a": [1, 2, {"z": null, "y": true}]}),
        json!({"n": 1e18, "m": 1e19, "big": 1e300, "tiny": 1.5e-7, "neg": -0.0, "f": 0.1, "i": -42}),
        json!({"u": u64::MAX, "i": i64::MIN, "two": 2.0, "pi": std::f64::consts::PI}),
        json!({"é": "naïve ☃ \u{1F600}", "tab\t": "quote \" backslash \\ newline \n", "": ""}),
        json!({"deep": {"er": {"est": [[], {}, [{"k": "v"}]]}}, "long_key_sorts_by_bytes": 1, "Z": 2}),
    ];
    for written in details {
        let read: Value = sqlx::query_scalar("SELECT $1::jsonb")
            .bind(&written)
            .fetch_one(&db)
            .await
            .unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        canonical_json(&written, &mut a);
        canonical_json(&read, &mut b);
        assert_eq!(
            String::from_utf8(a).unwrap(),
            String::from_utf8(b).unwrap(),
            "written {written}, read back {read}"
        );
    }
    db.close().await;
}

/// "Rows written before this migration are sealed into the chain once, on
/// upgrade": a database migrated up to 0010 with history in it, then
/// upgraded: the old rows (no MAC) go into one legacy seal per table and
/// verify; a row without a MAC written after the upgrade does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_from_before_the_chain_are_sealed_once_as_legacy() {
    use coordinator::store::MIGRATOR;
    use coordinator::store::audit_chain::{VerifyError, seal, verify};
    use std::borrow::Cow;

    let env = TestEnv::from_env();
    let name = format!("it_legacy_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&env.database_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&admin)
        .await
        .unwrap();
    let mut url = reqwest::Url::parse(&env.database_url).unwrap();
    url.set_path(&format!("/{name}"));
    let db = sqlx::PgPool::connect(url.as_str()).await.unwrap();

    // The schema of the version before the chain, with its history.
    let before = sqlx::migrate::Migrator {
        migrations: Cow::Owned(
            MIGRATOR
                .iter()
                .filter(|m| m.version < 11)
                .cloned()
                .collect(),
        ),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    };
    before.run(&db).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO files (remitter, file_name, base_name, md5, size, mtime, status, group_key) \
           VALUES ('acme', 'a.csv', 'a.csv', 'd41d8', 1, now(), 'success', 'acme/a.csv'); \
         INSERT INTO file_events (file_id, status, detail) VALUES \
           (1, 'processing', '{\"run_id\": \"old\"}'), (1, 'success', '{}'); \
         INSERT INTO audit_events (actor, action, outcome) VALUES ('bootstrap', 'run.start', 'ok');",
    )
    .execute(&db)
    .await
    .unwrap();

    MIGRATOR.run(&db).await.unwrap();
    let key = AuditKey::new(b"the upgrade test's key").unwrap();
    let row = AuditEntry {
        actor: "alice".into(),
        role: Some("admin".into()),
        action: "token.create".into(),
        target: Some("ops".into()),
        outcome: Outcome::Ok,
        reason: None,
        remote_addr: None,
        request_id: None,
    };
    insert_audit_event(&db, &key, &row).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        seal(&db, &key).await.unwrap();
        let legacy: Vec<(String, i64)> = sqlx::query_as(
            "SELECT table_name, row_count FROM audit_seals WHERE legacy ORDER BY table_name",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        let ok = verify(&db, &key).await.unwrap();
        if ok.unsealed == 0 {
            assert_eq!(
                legacy,
                [
                    ("audit_events".to_string(), 1),
                    ("file_events".to_string(), 2)
                ]
            );
            assert_eq!(ok.rows, 4, "{ok:?}");
            break;
        }
        // Another test's transaction still holds the horizon back.
        assert!(tokio::time::Instant::now() < deadline, "not sealed: {ok:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // After the upgrade, a row without a MAC was not written by the coordinator.
    let late: i64 = sqlx::query_scalar(
        "INSERT INTO file_events (file_id, status, detail) VALUES (1, 'success', '{}') RETURNING id",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    match verify(&db, &key).await {
        Err(VerifyError::Broken(why)) => assert_eq!(
            why,
            format!("file_events row {late}: has no MAC: inserted behind the coordinator's back")
        ),
        other => panic!("not found: {other:?}"),
    }
    db.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&admin)
        .await;
    admin.close().await;
}
