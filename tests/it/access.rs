//! CONTRACT §11, who may do what: named tokens with roles, `401` against
//! `403` on every route, and the audit trail of the operator's actions.
//! Tested on the router itself (`oneshot`, a real database).

use crate::operator::Api;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The least role of each protected operation, as the contract gives it.
fn contract_role(method: &str, path: &str) -> &'static str {
    match (method, path) {
        (_, p) if p.starts_with("/api/v1/coordinator/tokens") => "admin",
        (_, "/api/v1/coordinator/audit") => "admin",
        ("GET", _) => "viewer",
        ("POST", "/api/v1/coordinator/runs")
        | ("POST", "/api/v1/coordinator/files/{id}/retry")
        | ("POST", "/api/v1/coordinator/files/{id}/resolve") => "operator",
        _ => panic!("{method} {path}: no role in the contract"),
    }
}

const RANK: [&str; 3] = ["viewer", "operator", "admin"];

fn rank(role: &str) -> usize {
    RANK.iter().position(|r| *r == role).expect("a role")
}

impl Api {
    /// A named token made through `POST /tokens` with the bootstrap token.
    pub(crate) async fn named_token(&self, name: &str, role: &str) -> String {
        let (status, body) = self
            .call_as(
                "POST",
                "/api/v1/coordinator/tokens",
                Some(json!({"name": name, "role": role})),
                Some(&self.token.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(
            (body["name"].as_str(), body["role"].as_str()),
            (Some(name), Some(role))
        );
        let secret = body["secret"].as_str().expect("a secret").to_string();
        assert!(secret.starts_with(&format!("coord_{name}_")), "{secret}");
        secret
    }

    async fn audit_rows(&self) -> Vec<(String, String, String, Option<String>)> {
        sqlx::query_as("SELECT actor, action, outcome, target FROM audit_events ORDER BY id")
            .fetch_all(&self.db)
            .await
            .unwrap()
    }
}

/// Every protected route × {no token, unknown, expired, revoked, viewer,
/// operator, admin}: the four bad bearers `401` (and write no audit row),
/// a role below the route's `403` (one `refused` row each, naming the
/// actor), the others get through. The route's role is read from the
/// OpenAPI document (`x-required-role` and the security requirement) and
/// must be the contract's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_kind_of_bearer_as_its_role_allows() {
    let api = Api::new().await;
    let mut bearers: BTreeMap<&str, String> = BTreeMap::new();
    for role in RANK {
        bearers.insert(role, api.named_token(&format!("t-{role}"), role).await);
    }
    bearers.insert("admin", api.token.clone());
    let expired = api.named_token("old", "admin").await;
    sqlx::query("UPDATE tokens SET expires_at = now() - interval '1 second' WHERE name = 'old'")
        .execute(&api.db)
        .await
        .unwrap();
    let revoked = api.named_token("gone", "admin").await;
    let (status, body) = api
        .call_as(
            "DELETE",
            "/api/v1/coordinator/tokens/gone",
            None,
            Some(&api.token.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["revoked_at"].is_string(), "{body}");
    let unknown = format!("coord_nobody_{}", "A".repeat(43));
    let forged = format!("coord_t-admin_{}", "A".repeat(43));
    let before = api.audit_rows().await.len();

    let (_, doc) = api.call_as("GET", "/api/v1/openapi.json", None, None).await;
    let mut protected = 0;
    let mut refusals = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/coordinator") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            let role = op["x-required-role"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no x-required-role"));
            assert_eq!(role, contract_role(&method, path), "{method} {path}");
            assert_eq!(
                op["security"],
                json!([{"bearer": [role]}]),
                "{method} {path}"
            );
            for code in ["401", "403"] {
                assert!(
                    op["responses"][code].is_object(),
                    "{method} {path}: {code} not documented"
                );
            }
            protected += 1;
            // Parameters that do not parse and bodies with an unknown field:
            // whoever gets through is stopped by the handler (400), so
            // nothing is done.
            let uri = path
                .replace("{run_id}", "not-a-uuid")
                .replace("{id}", "not-an-id")
                .replace("{name}", "no-such-token");
            let body = (method != "GET").then_some(r#"{"unknown_probe_field": true}"#);
            for bad in [
                None,
                Some(unknown.as_str()),
                Some(forged.as_str()),
                Some(expired.as_str()),
                Some(revoked.as_str()),
                Some("Bearer-less junk"),
            ] {
                let (status, bytes) = api.send(&method, &uri, bad, body).await;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} with {bad:?}: {bytes:?}"
                );
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(v["error"], "unauthorized", "{v}");
            }
            for (who, bearer) in &bearers {
                let (status, bytes) = api.send(&method, &uri, Some(bearer), body).await;
                if rank(who) < rank(role) {
                    refusals += 1;
                    assert_eq!(
                        status,
                        StatusCode::FORBIDDEN,
                        "{method} {path} as {who}: {bytes:?}"
                    );
                    let v: Value = serde_json::from_slice(&bytes).unwrap();
                    assert_eq!(v["error"], "forbidden", "{v}");
                } else {
                    assert!(
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                        "{method} {path} as {who}: {status} {bytes:?}"
                    );
                }
            }
        }
    }
    assert!(protected >= 12, "only {protected} protected operations");
    let rows = api.audit_rows().await;
    let new = &rows[before..];
    // The admin's own attempt to revoke a token that does not exist is an
    // action that failed; every other new row is a refusal.
    let (refused, other): (Vec<_>, Vec<_>) = new.iter().partition(|r| r.2 == "refused");
    assert_eq!(
        refused.len(),
        refusals,
        "one row per 403, none per 401: {new:?}"
    );
    assert!(refused.iter().all(|r| r.0.starts_with("t-")), "{new:?}");
    let revoke = (
        "bootstrap".to_string(),
        "token.revoke".to_string(),
        "failed".to_string(),
        Some("no-such-token".to_string()),
    );
    assert_eq!(other, [&revoke], "{new:?}");
    // Each 401 is counted by its reason instead.
    let (_, metrics) = api.send("GET", "/metrics", None, None).await;
    let metrics = String::from_utf8_lossy(&metrics);
    for (reason, per_route) in [
        ("missing", 1),
        ("unknown", 3),
        ("expired", 1),
        ("revoked", 1),
    ] {
        let line = format!(
            "coordinator_auth_failures_total{{reason=\"{reason}\"}} {}",
            per_route * protected
        );
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    assert!(
        new.iter()
            .any(|(actor, action, _, target)| actor == "t-viewer"
                && action == "file.retry"
                && target.as_deref() == Some("not-an-id")),
        "{new:?}"
    );
    api.finish().await;
}

/// Columns of `audit_events` a test reads back.
#[derive(Debug, sqlx::FromRow)]
struct AuditRow {
    role: Option<String>,
    action: String,
    target: Option<String>,
    outcome: String,
    reason: Option<String>,
    request_id: Option<String>,
}

/// A retry by token `alice` names her in the audit trail and in the file's
/// own event; a resolve by her too; the token list shows her token's last
/// use and never a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_actions_carry_her_name() {
    let api = Api::new().await;
    let alice = api.named_token("alice", "operator").await;
    let id = api.file("acme", "a.csv", "itm_failed").await;
    let as_alice = async |action: &str, body: Value| {
        let uri = format!("/api/v1/coordinator/files/{id}/{action}");
        api.call_as("POST", &uri, Some(body), Some(&alice)).await
    };
    let (status, body) = as_alice("retry", json!({"reason": "ITM is back"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = as_alice("retry", json!({"reason": "again"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let verdict = json!({"status": "ops_keyed_by_hand", "reason": "done by hand"});
    let (status, body) = as_alice("resolve", verdict).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT role, action, target, outcome, reason, request_id FROM audit_events WHERE actor = 'alice' ORDER BY id",
    )
    .fetch_all(&api.db)
    .await
    .unwrap();
    let short: Vec<_> = rows
        .iter()
        .map(|r| (r.action.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        short,
        [
            ("file.retry", "ok"),
            ("file.retry", "failed"),
            ("file.resolve", "ok")
        ],
        "{rows:?}"
    );
    for r in &rows {
        assert_eq!(
            (r.role.as_deref(), r.target.as_deref()),
            (Some("operator"), Some(id.to_string().as_str())),
            "{r:?}"
        );
        assert!(
            r.request_id.as_deref().is_some_and(|id| !id.is_empty()),
            "a request id: {r:?}"
        );
    }
    assert_eq!(rows[0].reason.as_deref(), Some("ITM is back"));
    assert!(
        rows[1]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("only a failure status")),
        "{rows:?}"
    );

    let (_, file) = api.get(&format!("/api/v1/coordinator/files/{id}")).await;
    let actors: Vec<(&str, &str)> = file["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["detail"]["actor"].is_string())
        .map(|e| {
            (
                e["status"].as_str().unwrap(),
                e["detail"]["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actors,
        [("retry_requested", "alice"), ("ops_keyed_by_hand", "alice")],
        "{file}"
    );

    let (status, list) = api.get("/api/v1/coordinator/tokens").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let text = list.to_string();
    assert!(!text.contains(&alice) && !text.contains("secret"), "{text}");
    let mine = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "alice")
        .expect("alice's token");
    assert_eq!(
        (mine["role"].as_str(), mine["created_by"].as_str()),
        (Some("operator"), Some("bootstrap"))
    );
    // `last_used_at` is written in the background, once a minute at most.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let used: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT last_used_at FROM tokens WHERE name = 'alice'")
                .fetch_one(&api.db)
                .await
                .unwrap();
        if used.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last_used_at never written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    api.finish().await;
}

/// `GET /audit`: newest first, paged by `before`, filtered by actor,
/// action, target, since and until; bad parameters are `400`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_pages_and_filters() {
    let api = Api::new().await;
    for name in ["a1", "a2", "a3"] {
        api.named_token(name, "viewer").await;
    }
    let (status, body) = api
        .call_as(
            "DELETE",
            "/api/v1/coordinator/tokens/a2",
            None,
            Some(&api.token.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .call_as(
            "DELETE",
            "/api/v1/coordinator/tokens/a2",
            None,
            Some(&api.token.clone()),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("already_revoked")),
        "{body}"
    );
    let (status, body) = api
        .call_as(
            "POST",
            "/api/v1/coordinator/tokens",
            Some(json!({"name": "a2", "role": "admin"})),
            Some(&api.token.clone()),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("token_exists")),
        "{body}"
    );
    for bad in [
        json!({"name": "bootstrap", "role": "viewer"}),
        json!({"name": "x", "role": "root"}),
        json!({"name": "x", "role": "viewer", "expires_in_days": 0}),
    ] {
        let (status, body) = api
            .call_as(
                "POST",
                "/api/v1/coordinator/tokens",
                Some(bad.clone()),
                Some(&api.token.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }

    let targets = |v: &Value| -> Vec<String> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}:{}:{}",
                    e["action"].as_str().unwrap(),
                    e["target"].as_str().unwrap_or("-"),
                    e["outcome"].as_str().unwrap()
                )
            })
            .collect()
    };
    let (status, all) = api.get("/api/v1/coordinator/audit").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(
        targets(&all),
        [
            "token.create:a2:failed",
            "token.revoke:a2:failed",
            "token.revoke:a2:ok",
            "token.create:a3:ok",
            "token.create:a2:ok",
            "token.create:a1:ok"
        ],
        "{all}"
    );
    assert!(
        all["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "bootstrap" && e["role"] == "admin"),
        "{all}"
    );
    let (_, p1) = api.get("/api/v1/coordinator/audit?limit=4").await;
    assert_eq!(targets(&p1).len(), 4);
    let next = p1["next"].as_str().expect("a next page").to_string();
    let (_, p2) = api
        .get(&format!("/api/v1/coordinator/audit?limit=4&before={next}"))
        .await;
    assert_eq!(targets(&p2), ["token.create:a2:ok", "token.create:a1:ok"]);
    assert_eq!(p2["next"], Value::Null);
    let (_, f) = api
        .get("/api/v1/coordinator/audit?action=token.revoke&target=a2")
        .await;
    assert_eq!(
        targets(&f),
        ["token.revoke:a2:failed", "token.revoke:a2:ok"]
    );
    let (_, f) = api.get("/api/v1/coordinator/audit?actor=nobody").await;
    assert_eq!(targets(&f), Vec::<String>::new());
    let (_, f) = api
        .get("/api/v1/coordinator/audit?since=2000-01-01T00:00:00Z&until=2001-01-01T00:00:00Z")
        .await;
    assert_eq!(targets(&f), Vec::<String>::new());
    let (_, f) = api
        .get("/api/v1/coordinator/audit?since=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(targets(&f).len(), 6);
    for bad in [
        "limit=0",
        "before=x",
        "since=yesterday",
        "until=2026-13-01T00:00:00Z",
        "colour=red",
    ] {
        let (status, body) = api.get(&format!("/api/v1/coordinator/audit?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    api.finish().await;
}

/// `coordinator <args>` on `api`'s database as the login `carol`: exit
/// code, standard output, standard error.
fn cli(api: &Api, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("USER", "carol")
        .env("DATABASE_URL", &api.db_url)
        .env("AUDIT_KEY", &api.audit_key)
        .output()
        .expect("run the coordinator binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `coordinator token create|list|revoke` and `coordinator audit export`:
/// the secret printed once (and working), the list without secrets, a
/// revocation the router sees within 5 s, each action exported as a JSON
/// line with the actor `cli:carol`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_and_audit_commands() {
    let api = Api::new().await;
    let (code, out, err) = cli(
        &api,
        &[
            "token",
            "create",
            "--name",
            "bob",
            "--role",
            "viewer",
            "--expires-in-days",
            "30",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let secret = out.trim().to_string();
    assert!(
        secret.starts_with("coord_bob_") && !out.trim().contains('\n'),
        "{out}"
    );
    let (status, body) = api
        .call_as("GET", "/api/v1/coordinator/runs", None, Some(&secret))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = api
        .call_as("POST", "/api/v1/coordinator/runs", None, Some(&secret))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (code, _, err) = cli(
        &api,
        &["token", "create", "--name", "bob", "--role", "admin"],
    );
    assert_eq!(code, 1, "a taken name: {err}");
    assert!(err.contains("exists already"), "{err}");
    let (code, _, err) = cli(
        &api,
        &["token", "create", "--name", "bad name", "--role", "admin"],
    );
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = cli(&api, &["token", "create", "--name", "x", "--role", "root"]);
    assert_eq!(code, 2, "clap refuses the role: {err}");

    let (code, list, err) = cli(&api, &["token", "list"]);
    assert_eq!(code, 0, "{err}");
    let bob = list
        .lines()
        .find(|l| l.starts_with("bob "))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        bob.contains("viewer") && !list.contains(&secret[10..]),
        "{list}"
    );

    let (code, _, err) = cli(&api, &["token", "revoke", "bob"]);
    assert_eq!(code, 0, "{err}");
    let revoked = std::time::Instant::now();
    loop {
        let (status, _) = api
            .call_as("GET", "/api/v1/coordinator/runs", None, Some(&secret))
            .await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked.elapsed().as_secs_f64() < 5.0,
            "still accepted 5 s after revoke"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (code, _, err) = cli(&api, &["token", "revoke", "bob"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = cli(&api, &["token", "revoke", "nobody"]);
    assert_eq!(code, 1, "{err}");

    let (code, out, err) = cli(&api, &["audit", "export", "--since", "2000-01-01"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let what: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r["actor"].as_str().unwrap(),
                r["action"].as_str().unwrap(),
                r["target"].as_str().unwrap_or("-"),
                r["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        what,
        [
            "cli:carol token.create bob ok",
            "bob run.start - refused",
            "cli:carol token.create bob failed",
            "cli:carol token.revoke bob ok",
            "cli:carol token.revoke bob failed",
            "cli:carol token.revoke nobody failed",
        ],
        "{out}"
    );
    let (code, out, err) = cli(
        &api,
        &[
            "audit",
            "export",
            "--since",
            "2000-01-01",
            "--until",
            "2000-01-02",
        ],
    );
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, _, err) = cli(&api, &["audit", "export", "--since", "soon"]);
    assert_eq!(code, 2, "{err}");
    // Every row written above (API and CLI) carries a MAC that verifies.
    let (code, out, err) = cli(&api, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok: 6 rows checked"), "{out}");
    api.finish().await;
}

/// Starting a run and a dry run are recorded with the run's id, the actor
/// and `ok`; a run refused as `409` (another one in progress) as `failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_recorded_with_who_started_them() {
    let mut app = crate::helpers::spawn_app(crate::helpers::Opts::default()).await;
    let resp = app
        .http
        .post(format!("{}/api/v1/coordinator/tokens", app.base_url))
        .bearer_auth(app.token.clone().unwrap())
        .json(&json!({"name": "olga", "role": "operator"}))
        .send()
        .await
        .unwrap();
    let olga: Value = resp.json().await.unwrap();
    let olga = olga["secret"].as_str().unwrap().to_string();
    app.put("acme", "remit.csv", b"remittance").await;
    let (http, base) = (app.http.clone(), app.base_url.clone());
    let post = |body: Value| {
        http.post(format!("{base}/api/v1/coordinator/runs"))
            .bearer_auth(&olga)
            .json(&body)
            .send()
    };
    let dry: Value = post(json!({"dry_run": true}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let real: Value = post(json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(real["status"], "completed", "{real}");
    app.wait_background().await;
    let other = crate::helpers::join_instance(&app.db, "elsewhere").await;
    let busy = crate::helpers::running_run(&app.db, other, "elsewhere").await;
    let refused = post(json!({})).await.unwrap();
    assert_eq!(refused.status(), 409);

    type Row = (String, String, Option<String>, String, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT actor, action, target, outcome, reason FROM audit_events WHERE action LIKE 'run.%' ORDER BY id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let id = |v: &Value| v["run_id"].as_str().map(str::to_string);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        rows[0],
        (
            "olga".into(),
            "run.dry_run".into(),
            id(&dry),
            "ok".into(),
            None
        )
    );
    assert_eq!(
        rows[1],
        (
            "olga".into(),
            "run.start".into(),
            id(&real),
            "ok".into(),
            None
        )
    );
    assert_eq!(
        (&rows[2].1, rows[2].2.as_deref(), rows[2].3.as_str()),
        (
            &"run.start".to_string(),
            Some(busy.to_string().as_str()),
            "failed"
        ),
        "{rows:?}"
    );
    assert!(
        rows[2]
            .4
            .as_deref()
            .is_some_and(|r| r.starts_with("run_in_progress")),
        "{rows:?}"
    );
    sqlx::query("UPDATE runs SET status = 'abandoned', finished_at = now() WHERE id = $1")
        .bind(busy)
        .execute(&app.db)
        .await
        .unwrap();
    app.finish().await;
}

/// JWTs of the company's identity provider (a fake JWKS server here):
/// RS256 and ES256 accepted with the role their `roles` claim names and the
/// actor their `sub`; every forgery and every wrong claim `401`, with the
/// reason in the log only; a `viewer` JWT `403` on retry, recorded; an
/// unknown `kid` fetches the JWKS again at most once a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_of_the_identity_provider() {
    use crate::idp::{Alg, FakeIdp, now};
    let idp = FakeIdp::start().await;
    let api = Api::with_args(|a| {
        a.oidc_issuer = Some(idp.issuer().to_string());
        a.oidc_audience = Some(idp.audience().to_string());
        a.oidc_jwks_url = Some(idp.jwks_url().to_string());
    })
    .await;
    let id = api.file("acme", "a.csv", "itm_failed").await;
    let retry = format!("/api/v1/coordinator/files/{id}/retry");
    let reason = json!({"reason": "from the IdP"});

    let viewer = idp.token(Alg::Rs256, idp.claims("vic@example.com", &["viewer"]));
    let (status, body) = api
        .call_as("GET", "/api/v1/coordinator/runs", None, Some(&viewer))
        .await;
    assert_eq!(status, StatusCode::OK, "RS256 viewer: {body}");
    let (status, body) = api
        .call_as("POST", &retry, Some(reason.clone()), Some(&viewer))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{body}"
    );
    let (status, _) = api
        .call_as("GET", "/api/v1/coordinator/audit", None, Some(&viewer))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let hits = idp.jwks_hits();
    assert_eq!(hits, 1, "the JWKS fetched once, then cached");

    let mut claims = idp.claims("ops-a", &["viewer", "operator"]);
    let operator = idp.token(Alg::Es256, claims.clone());
    let (status, body) = api
        .call_as("POST", &retry, Some(reason.clone()), Some(&operator))
        .await;
    assert_eq!(status, StatusCode::OK, "ES256 operator: {body}");

    let forged: Vec<(&str, String)> = vec![
        ("wrong issuer", {
            let mut c = idp.claims("x", &["admin"]);
            c["iss"] = json!("https://evil.example/");
            idp.token(Alg::Rs256, c)
        }),
        ("wrong audience", {
            let mut c = idp.claims("x", &["admin"]);
            c["aud"] = json!("someone-else");
            idp.token(Alg::Rs256, c)
        }),
        ("expired", {
            let mut c = idp.claims("x", &["admin"]);
            c["exp"] = json!(now() - 3600);
            idp.token(Alg::Es256, c)
        }),
        (
            "unknown kid",
            idp.token_unknown_kid(Alg::Rs256, "nobody", idp.claims("x", &["admin"])),
        ),
        ("alg none", idp.token_alg_none(idp.claims("x", &["admin"]))),
        (
            "HS256 with the public key",
            idp.token_hs256_with_public_key(idp.claims("x", &["admin"])),
        ),
        ("tampered", {
            claims["roles"] = json!(["admin"]);
            FakeIdp::tampered(&operator, claims.clone())
        }),
        (
            "another key",
            idp.token_other_key(Alg::Rs256, idp.claims("x", &["admin"])),
        ),
    ];
    for (what, token) in &forged {
        let (status, body) = api
            .call_as("GET", "/api/v1/coordinator/runs", None, Some(token))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(
            body["message"], "missing or wrong bearer token",
            "no reason in the answer: {body}"
        );
    }
    let again = idp.token_unknown_kid(Alg::Es256, "nobody-else", idp.claims("x", &["admin"]));
    let (status, _) = api
        .call_as("GET", "/api/v1/coordinator/runs", None, Some(&again))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        idp.jwks_hits(),
        hits,
        "unknown kids within a minute of the last fetch fetch nothing (at most once a minute)"
    );

    let rows: Vec<(String, Option<String>, String, String)> =
        sqlx::query_as("SELECT actor, role, action, outcome FROM audit_events ORDER BY id")
            .fetch_all(&api.db)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            (
                "vic@example.com".to_string(),
                Some("viewer".to_string()),
                "file.retry".to_string(),
                "refused".to_string()
            ),
            (
                "vic@example.com".to_string(),
                Some("viewer".to_string()),
                "audit.list".to_string(),
                "refused".to_string()
            ),
            (
                "ops-a".to_string(),
                Some("operator".to_string()),
                "file.retry".to_string(),
                "ok".to_string()
            ),
        ],
        "no row for a 401"
    );
    let (_, metrics) = api.send("GET", "/metrics", None, None).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(&format!(
            "coordinator_auth_failures_total{{reason=\"invalid_jwt\"}} {}",
            forged.len() + 1
        )),
        "{metrics}"
    );
    api.finish().await;

    // Keys that cannot be had: the bearer may be good, so not 401 but 503.
    let dark = Api::with_args(|a| {
        a.oidc_issuer = Some(idp.issuer().to_string());
        a.oidc_audience = Some(idp.audience().to_string());
        a.oidc_jwks_url = Some("http://127.0.0.1:9/jwks".to_string());
    })
    .await;
    let (status, body) = dark
        .call_as("GET", "/api/v1/coordinator/runs", None, Some(&viewer))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("credentials_unavailable")
        ),
        "{body}"
    );
    dark.finish().await;
}
