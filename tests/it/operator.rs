//! CONTRACT §9, operating the coordinator. The HTTP behaviour (auth, paging,
//! filters, 4xx bodies, validation of retry and resolve) is tested on the
//! router itself with `oneshot` against a real database; retry and resolve
//! through runs with real Samba and Postgres.

use crate::fakes::{FoiBehavior, ItmBehavior};
use crate::helpers::{Opts, TestApp, decision_of, md5_hex, prepare, spawn_app};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use coordinator::config::Config;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tower::ServiceExt;
use uuid::Uuid;

/// A router over a fresh database, nothing bound (also used by `openapi`).
pub(crate) struct Api {
    pub(crate) router: Router,
    pub(crate) token: String,
    pub(crate) db: PgPool,
    pub(crate) db_url: String,
    /// The `AUDIT_KEY` the router writes with (the CLI needs the same).
    pub(crate) audit_key: String,
    db_name: String,
    admin_url: String,
}

/// The `AUDIT_KEY` of a test configuration.
pub(crate) fn args_key(a: &coordinator::config::ConfigArgs) -> String {
    a.base
        .audit
        .audit_key
        .as_ref()
        .map(|k| k.expose().to_string())
        .expect("the tests give every coordinator an AUDIT_KEY")
}

impl Api {
    pub(crate) async fn new() -> Api {
        Self::with_args(|_| {}).await
    }

    /// A router whose configuration `change` altered first.
    pub(crate) async fn with_args(
        change: impl FnOnce(&mut coordinator::config::ConfigArgs),
    ) -> Api {
        let p = prepare(Opts::default()).await;
        let mut args = p.args.clone();
        change(&mut args);
        let cfg = Config::from_args(args).expect("valid test configuration");
        let (router, _engine, _membership) = coordinator::app::build_router(&cfg)
            .await
            .expect("build the router");
        let db = PgPoolOptions::new()
            .max_connections(2)
            .connect(&p.db_url)
            .await
            .expect("connect to the test database");
        Api {
            router,
            token: p.token.expect("a token"),
            db,
            db_url: p.db_url.clone(),
            audit_key: args_key(&p.args),
            db_name: p.db_name,
            admin_url: p.admin_url,
        }
    }

    /// Sends one request with `token` (if any) and a JSON `body` (if any);
    /// answers the status and the raw body.
    pub(crate) async fn send(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Bytes) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    /// Sends one request with `token` (if any), answers status and JSON.
    pub(crate) async fn call_as(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        let (status, bytes) = self.send(method, uri, token, body.as_deref()).await;
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {uri}: not JSON ({e}): {bytes:?}"));
        (status, json)
    }

    pub(crate) async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call_as("GET", uri, None, Some(&self.token.clone()))
            .await
    }

    pub(crate) async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call_as("POST", uri, Some(body), Some(&self.token.clone()))
            .await
    }

    /// Inserts a file row with a `processing` event; returns its id.
    pub(crate) async fn file(&self, remitter: &str, name: &str, status: &str) -> i64 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO files (remitter, file_name, base_name, md5, size, mtime, status, group_key) \
             VALUES ($1, $2, $2, md5($1 || $2), 10, now(), $3, lower($1 || '/' || $2)) RETURNING id",
        )
        .bind(remitter)
        .bind(name)
        .bind(status)
        .fetch_one(&self.db)
        .await
        .unwrap();
        sqlx::query("INSERT INTO file_events (file_id, status) VALUES ($1, 'processing')")
            .bind(id)
            .execute(&self.db)
            .await
            .unwrap();
        id
    }

    async fn status_of(&self, id: i64) -> String {
        sqlx::query_scalar("SELECT status FROM files WHERE id = $1")
            .bind(id)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub(crate) async fn finish(self) {
        self.db.close().await;
        if std::env::var("IT_KEEP_ARTIFACTS").as_deref() == Ok("1") {
            return;
        }
        crate::helpers::drop_database(&self.admin_url, &self.db_name).await;
    }
}

fn ids(body: &Value, list: &str) -> Vec<i64> {
    body[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {body}"))
        .iter()
        .map(|f| f["id"].as_i64().unwrap())
        .collect()
}

fn assert_error(got: (StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"], code, "{}", got.1);
    assert!(got.1["message"].is_string(), "{}", got.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_routes_need_the_bearer_token() {
    let api = Api::new().await;
    let id = api.file("acme", "a.csv", "itm_failed").await;
    let body = json!({"reason": "x", "status": "ops_done"});
    for (method, uri) in [
        ("GET", "/api/v1/coordinator/runs".to_string()),
        (
            "GET",
            format!("/api/v1/coordinator/runs/{}", Uuid::new_v4()),
        ),
        ("GET", "/api/v1/coordinator/files".to_string()),
        ("GET", format!("/api/v1/coordinator/files/{id}")),
        ("POST", format!("/api/v1/coordinator/files/{id}/retry")),
        ("POST", format!("/api/v1/coordinator/files/{id}/resolve")),
    ] {
        for token in [None, Some("wrong")] {
            let got = api.call_as(method, &uri, Some(body.clone()), token).await;
            assert_error(got, StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    assert_eq!(api.status_of(id).await, "itm_failed", "nothing was changed");
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_list_pages_newest_first_and_filters() {
    let api = Api::new().await;
    let a1 = api.file("acme", "Remit_1.csv", "success").await;
    let a2 = api.file("acme", "remit_2.csv", "itm_failed").await;
    let b1 = api
        .file("beta", "100%_sure.csv", "extraction_file_failed")
        .await;
    let b2 = api.file("beta", "100x_sure.csv", "ops_done").await;
    let a3 = api
        .file("acme", "other.csv", "extraction_service_failed")
        .await;
    let b3 = api.file("beta", "REMIT_3.csv", "retry_requested").await;

    let (status, all) = api.get("/api/v1/coordinator/files").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(ids(&all, "files"), [b3, a3, b2, b1, a2, a1]);
    assert_eq!(all["next"], Value::Null);
    let f = &all["files"][5];
    for field in [
        "id",
        "remitter",
        "file_name",
        "base_name",
        "md5",
        "size",
        "status",
        "archived_at",
        "created_at",
        "updated_at",
    ] {
        assert!(f.get(field).is_some(), "{field} missing in {f}");
    }
    assert_eq!(
        (
            f["remitter"].as_str(),
            f["file_name"].as_str(),
            f["status"].as_str()
        ),
        (Some("acme"), Some("Remit_1.csv"), Some("success"))
    );

    // Pages of two, following `next` to the end.
    let mut seen = Vec::new();
    let mut uri = "/api/v1/coordinator/files?limit=2".to_string();
    loop {
        let (status, page) = api.get(&uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page_ids = ids(&page, "files");
        assert!(page_ids.len() <= 2);
        seen.extend(page_ids);
        match page["next"].as_str() {
            Some(next) => uri = format!("/api/v1/coordinator/files?limit=2&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen, [b3, a3, b2, b1, a2, a1]);

    let list = |q: &'static str| {
        let api = &api;
        async move {
            let (status, body) = api.get(&format!("/api/v1/coordinator/files?{q}")).await;
            assert_eq!(status, StatusCode::OK, "{q}: {body}");
            ids(&body, "files")
        }
    };
    assert_eq!(list("remitter=acme").await, [a3, a2, a1]);
    assert_eq!(list("status=failed").await, [a3, b1, a2]);
    assert_eq!(list("status=itm_failed").await, [a2]);
    assert_eq!(list("status=ops_done").await, [b2]);
    assert_eq!(list("status=retry_requested").await, [b3]);
    assert_eq!(list("status=failed&remitter=beta").await, [b1]);
    assert_eq!(list("q=remit").await, [b3, a2, a1], "case-insensitive");
    assert_eq!(list("q=0%25_").await, [b1], "% and _ are literal");
    assert_eq!(list("q=remit&remitter=beta&limit=1").await, [b3]);
    assert_eq!(list("q=nothing").await, Vec::<i64>::new());

    for bad in [
        "limit=0",
        "limit=501",
        "limit=ten",
        "limit=-1",
        "before=x",
        "status=bogus",
        "status=ops_",
        "status=archive_succeeded",
        "sort=id",
    ] {
        let got = api.get(&format!("/api/v1/coordinator/files?{bad}")).await;
        assert_error(got, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let (status, _) = api.get("/api/v1/coordinator/files?limit=500").await;
    assert_eq!(status, StatusCode::OK);
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_without_their_file_lists_and_one_run_with_it() {
    let api = Api::new().await;
    let mut runs = Vec::new();
    for (i, trigger) in ["cli", "api", "schedule"].into_iter().enumerate() {
        let id = Uuid::new_v4();
        let summary = json!({
            "scanned": i, "processed": 1, "succeeded": 1, "failed": 0,
            "files": [{"remitter": "acme", "file_name": format!("f{i}.csv"), "decision": "processed", "status": "success"}],
            "files_truncated": false,
        });
        sqlx::query(
            "INSERT INTO runs (id, status, trigger, instance, started_at, finished_at, summary, dry_run) \
             VALUES ($1, 'completed', $2, 'test', now() - make_interval(mins => $3), now(), $4, $5)",
        )
        .bind(id)
        .bind(trigger)
        .bind(10 - i as i32)
        .bind(&summary)
        .bind(i == 1)
        .execute(&api.db)
        .await
        .unwrap();
        runs.push(id.to_string());
    }
    let failed = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO runs (id, status, trigger, instance, finished_at, summary, error, message) \
         VALUES ($1, 'failed', 'api', 'test', now(), '{}', 'scan_failed', 'the share could not be listed')",
    )
    .bind(failed)
    .execute(&api.db)
    .await
    .unwrap();
    runs.push(failed.to_string());
    runs.reverse();

    let (status, list) = api.get("/api/v1/coordinator/runs").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let got: Vec<&str> = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, runs, "newest first");
    let first = &list["runs"][3];
    assert_eq!(
        (first["trigger"].as_str(), first["dry_run"].as_bool()),
        (Some("cli"), Some(false))
    );
    assert_eq!(list["runs"][2]["dry_run"], true);
    assert_eq!(first["summary"]["scanned"], 0);
    assert!(first["summary"].get("files").is_none(), "{first}");
    assert!(first["finished_at"].is_string() && first["started_at"].is_string());

    // Paging by run id.
    let (_, p1) = api.get("/api/v1/coordinator/runs?limit=3").await;
    assert_eq!(p1["runs"].as_array().unwrap().len(), 3);
    let next = p1["next"].as_str().expect("a next page").to_string();
    assert_eq!(next, runs[2]);
    let (_, p2) = api
        .get(&format!("/api/v1/coordinator/runs?limit=3&before={next}"))
        .await;
    assert_eq!(p2["runs"][0]["run_id"], runs[3].as_str());
    assert_eq!(p2["next"], Value::Null);

    // One run: the POST answer's body plus trigger and dry_run.
    let (status, one) = api
        .get(&format!("/api/v1/coordinator/runs/{}", runs[3]))
        .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["status"], "completed");
    assert_eq!(one["trigger"], "cli");
    assert_eq!(one["summary"]["files"][0]["file_name"], "f0.csv");
    let (_, bad_run) = api.get(&format!("/api/v1/coordinator/runs/{failed}")).await;
    assert_eq!(
        (bad_run["status"].as_str(), bad_run["error"].as_str()),
        (Some("failed"), Some("scan_failed"))
    );

    let unknown = api
        .get(&format!("/api/v1/coordinator/runs/{}", Uuid::new_v4()))
        .await;
    assert_error(unknown, StatusCode::NOT_FOUND, "not_found");
    for bad in [
        "/api/v1/coordinator/runs/not-a-uuid".to_string(),
        "/api/v1/coordinator/runs?before=nope".to_string(),
        format!("/api/v1/coordinator/runs?before={}", Uuid::new_v4()),
        "/api/v1/coordinator/runs?limit=1000".to_string(),
    ] {
        assert_error(
            api.get(&bad).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shows_its_history_and_retry_and_resolve_are_checked() {
    let api = Api::new().await;
    let failed = api.file("acme", "a.csv", "itm_failed").await;
    let done = api.file("acme", "b.csv", "success").await;
    let busy = api.file("acme", "c.csv", "processing").await;
    sqlx::query(
        "INSERT INTO file_events (file_id, status, detail) VALUES ($1, 'itm_failed', '{\"reason\": \"ITM said no\"}')",
    )
    .bind(failed)
    .execute(&api.db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO notifications (dedupe_key, file_id, payload, attempts, delivered_at) \
         VALUES ('file_failed:' || $1, $1, '{\"event\": \"file_failed\", \"status\": \"itm_failed\"}', 1, now())",
    )
    .bind(failed)
    .execute(&api.db)
    .await
    .unwrap();

    let (status, file) = api
        .get(&format!("/api/v1/coordinator/files/{failed}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{file}");
    assert_eq!(file["id"], failed);
    let events: Vec<&str> = file["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["processing", "itm_failed"]);
    assert_eq!(file["events"][1]["detail"]["reason"], "ITM said no");
    assert!(file["events"][1]["created_at"].is_string());
    let n = &file["notifications"][0];
    assert_eq!(
        (
            n["event"].as_str(),
            n["status"].as_str(),
            n["attempts"].as_i64()
        ),
        (Some("file_failed"), Some("itm_failed"), Some(1))
    );
    assert!(n["delivered_at"].is_string());

    let url = |id: i64, action: &str| format!("/api/v1/coordinator/files/{id}/{action}");
    // Retry: only a failure, with a reason.
    for body in [
        json!({}),
        json!({"reason": ""}),
        json!({"reason": "   "}),
        json!({"reason": 5}),
        json!({"reason": "x", "force": true}),
        json!([]),
    ] {
        let got = api.post(&url(failed, "retry"), body).await;
        assert_error(got, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let empty = api
        .call_as("POST", &url(failed, "retry"), None, Some(&api.token))
        .await;
    assert_error(empty, StatusCode::BAD_REQUEST, "invalid_request");
    for id in [done, busy] {
        let got = api
            .post(&url(id, "retry"), json!({"reason": "again"}))
            .await;
        assert_error(got, StatusCode::CONFLICT, "not_retryable");
    }
    let (status, retried) = api
        .post(
            &url(failed, "retry"),
            json!({"reason": "ITM fixed its mapping"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["status"], "retry_requested");
    assert_eq!(retried["id"], failed);
    let again = api
        .post(&url(failed, "retry"), json!({"reason": "twice"}))
        .await;
    assert_error(again, StatusCode::CONFLICT, "not_retryable");
    let (_, file) = api
        .get(&format!("/api/v1/coordinator/files/{failed}"))
        .await;
    let last = file["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "retry_requested");
    assert_eq!(last["detail"]["reason"], "ITM fixed its mapping");

    // Resolve: an ops_ word and a reason; never while processing.
    for body in [
        json!({"status": "ops_done"}),
        json!({"status": "ops_done", "reason": ""}),
        json!({"status": "done", "reason": "x"}),
        json!({"status": "ops_", "reason": "x"}),
        json!({"status": "ops_Done", "reason": "x"}),
        json!({"status": format!("ops_{}", "a".repeat(41)), "reason": "x"}),
        json!({"status": "success", "reason": "x"}),
    ] {
        let got = api.post(&url(done, "resolve"), body).await;
        assert_error(got, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let got = api
        .post(
            &url(busy, "resolve"),
            json!({"status": "ops_done", "reason": "x"}),
        )
        .await;
    assert_error(got, StatusCode::CONFLICT, "not_resolvable");
    assert_eq!(api.status_of(busy).await, "processing");
    let (status, resolved) = api
        .post(
            &url(failed, "resolve"),
            json!({"status": "ops_sent_by_hand", "reason": "keyed in manually"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["status"], "ops_sent_by_hand");
    let (_, listed) = api
        .get("/api/v1/coordinator/files?status=ops_sent_by_hand")
        .await;
    assert_eq!(ids(&listed, "files"), [failed]);
    let events: Vec<(String, Value)> =
        sqlx::query_as("SELECT status, detail FROM file_events WHERE file_id = $1 ORDER BY id")
            .bind(failed)
            .fetch_all(&api.db)
            .await
            .unwrap();
    assert_eq!(
        events
            .last()
            .map(|(s, d)| (s.as_str(), d["reason"].clone())),
        Some(("ops_sent_by_hand", json!("keyed in manually")))
    );

    // Unknown and malformed ids.
    for (method, uri, body) in [
        ("GET", "/api/v1/coordinator/files/999999".to_string(), None),
        ("POST", url(999_999, "retry"), Some(json!({"reason": "x"}))),
        (
            "POST",
            url(999_999, "resolve"),
            Some(json!({"status": "ops_done", "reason": "x"})),
        ),
    ] {
        let got = api.call_as(method, &uri, body, Some(&api.token)).await;
        assert_error(got, StatusCode::NOT_FOUND, "not_found");
    }
    for uri in [
        "/api/v1/coordinator/files/abc",
        "/api/v1/coordinator/files/1.5",
    ] {
        assert_error(
            api.get(uri).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    api.finish().await;
}

/// `POST …/files/{id}/retry` over HTTP; expects 200.
async fn retry(app: &TestApp, id: i64, reason: &str) {
    let resp = app
        .http
        .post(format!(
            "{}/api/v1/coordinator/files/{id}/retry",
            app.base_url
        ))
        .bearer_auth(app.token.as_deref().unwrap())
        .json(&json!({"reason": reason}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Retry through runs: the next run sends the same version again with the
/// same `Idempotency-Key`, a new failure is told to IQube once more, and a
/// retry that then succeeds is archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_file_is_sent_again_and_notified_once_per_failure() {
    let mut app = spawn_app(Opts::default()).await;
    let name = "remit_20240115.csv";
    app.fakes.set_itm(ItmBehavior::Failed);
    app.put("acme", name, b"remittance").await;
    let body = app.run_ok().await;
    assert_eq!(decision_of(&body, "acme", name)["status"], "itm_failed");
    let id = app.files().await[0].id;
    app.eventually(30, "IQube told of the first failure", || async {
        app.fakes.iqube_calls().len() == 1
    })
    .await;

    // Not retried: the next run leaves it alone.
    let body = app.run_ok().await;
    assert_eq!(
        decision_of(&body, "acme", name)["decision"],
        "already_processed"
    );
    assert_eq!(app.fakes.itm_calls().len(), 1);

    retry(&app, id, "ITM was misconfigured").await;
    let body = app.run_ok().await;
    let d = decision_of(&body, "acme", name);
    assert_eq!(
        (d["decision"].as_str(), d["status"].as_str()),
        (Some("processed"), Some("itm_failed")),
        "{body}"
    );
    app.eventually(30, "IQube told of the second failure", || async {
        app.fakes.iqube_calls().len() == 2
    })
    .await;

    app.fakes.set_itm(ItmBehavior::Success);
    retry(&app, id, "ITM is fixed").await;
    let body = app.run_ok().await;
    assert_eq!(decision_of(&body, "acme", name)["status"], "success");
    app.eventually(30, "archived", || async { app.in_archive("acme", name) })
        .await;

    let itm = app.fakes.itm_calls();
    assert_eq!(itm.len(), 3, "sent once per claim");
    let key = itm[0].idempotency_key.clone().expect("a key");
    assert!(itm.iter().all(|c| c.idempotency_key.as_ref() == Some(&key)));
    assert_eq!(app.fakes.foi_calls().len(), 3);
    assert_eq!(
        app.events(id).await,
        [
            "processing",
            "itm_failed",
            "retry_requested",
            "processing",
            "itm_failed",
            "retry_requested",
            "processing",
            "success",
            "archive_succeeded"
        ]
    );
    let keys: Vec<String> = sqlx::query_scalar("SELECT dedupe_key FROM notifications ORDER BY id")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(
        keys,
        [format!("file_failed:{id}"), format!("file_failed:{id}:2")]
    );
    // One more pass: nobody is told twice.
    app.server.engine.background_pass().await;
    assert_eq!(app.fakes.iqube_calls().len(), 2);
    let rows = app.files().await;
    assert_eq!((rows.len(), rows[0].status.as_str()), (1, "success"));
    assert_eq!(rows[0].md5, md5_hex(b"remittance"));
    app.finish().await;
}

/// Resolve: the verdict is written and the next background pass archives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_file_is_archived_by_the_next_pass() {
    let mut app = spawn_app(Opts::default()).await;
    app.fakes.set_foi(FoiBehavior::Raw(
        422,
        r#"{"status": "failed", "failed": [{"reason": "no template"}]}"#.into(),
    ));
    app.put("acme", "odd.csv", b"odd").await;
    let body = app.run_ok().await;
    let status = decision_of(&body, "acme", "odd.csv")["status"].clone();
    assert!(
        status
            .as_str()
            .is_some_and(|s| s.starts_with("extraction_")),
        "{body}"
    );
    let id = app.files().await[0].id;
    assert!(app.in_source("acme", "odd.csv"));

    let resp = app
        .http
        .post(format!(
            "{}/api/v1/coordinator/files/{id}/resolve",
            app.base_url
        ))
        .bearer_auth(app.token.as_deref().unwrap())
        .json(&json!({"status": "ops_keyed_manually", "reason": "typed into ITM by hand"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    app.server.engine.background_pass().await;
    assert!(app.in_archive("acme", "odd.csv"));
    assert!(!app.in_source("acme", "odd.csv"));
    let rows = app.files().await;
    assert_eq!(
        (rows[0].status.as_str(), rows[0].archived),
        ("ops_keyed_manually", true)
    );
    let events = app.events(id).await;
    assert_eq!(events[2..], ["ops_keyed_manually", "archive_succeeded"]);
    assert_eq!(app.fakes.itm_calls().len(), 0);
    app.finish().await;
}

/// A late arrival still wins: a retried version older than a version of its
/// group claimed since is superseded, not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_version_older_than_a_claimed_one_is_superseded() {
    let mut app = spawn_app(Opts::default()).await;
    let (old, new) = ("remit_20240101.csv", "remit_20240102.csv");
    app.fakes.set_itm(ItmBehavior::Failed);
    app.put("acme", old, b"old").await;
    app.run_ok().await;
    app.fakes.set_itm(ItmBehavior::Success);
    app.put("acme", new, b"new").await;
    let body = app.run_ok().await;
    assert_eq!(decision_of(&body, "acme", old)["decision"], "superseded");
    // A failed file stays in the source until an operator acts (CONTRACT §1).
    assert!(app.in_source("acme", old));
    let old_id = app
        .files()
        .await
        .into_iter()
        .find(|f| f.file_name == old)
        .unwrap()
        .id;

    app.retry(old_id).await;
    let body = app.run_ok().await;
    let d = decision_of(&body, "acme", old);
    assert_eq!(d["decision"], "superseded", "{body}");
    let itm: Vec<String> = app
        .fakes
        .itm_calls()
        .iter()
        .map(|c| c.body["file_name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(itm, [old, new], "the retried version was not sent again");
    // Archived with its row once the operator acted.
    assert!(!app.in_source("acme", old));
    assert_eq!(
        app.events(old_id).await[2..],
        ["retry_requested", "archive_succeeded"]
    );
    app.finish().await;
}
