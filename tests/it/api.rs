//! CONTRACT §4 around the runs: authentication, probes, and scan failures.

use crate::helpers::{Opts, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_need_the_bearer_token_and_probes_do_not() {
    let app = spawn_app(Opts::default()).await;
    let url = format!("{}/api/v1/coordinator/runs", app.base_url);
    let none = app.http.post(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let body: serde_json::Value = none.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let wrong = app
        .http
        .post(&url)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        app.count("runs").await,
        0,
        "no run for an unauthorized call"
    );

    let health = app
        .http
        .get(format!("{}/healthz", app.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = app
        .http
        .get(format!("{}/readyz", app.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        (
            body["database"]["ok"].as_bool(),
            body["share"]["ok"].as_bool()
        ),
        (Some(true), Some(true))
    );
    app.finish().await;
}

/// A source folder that does not exist fails the run: 5xx, recorded, IQube told once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_source_folder_fails_the_run_and_notifies_once() {
    let mut app = spawn_app(Opts::default()).await;
    std::fs::remove_dir_all(app.local(&app.source_dir)).unwrap();
    let (status, body) = app.trigger().await;
    assert!((500..600).contains(&status), "{status} {body}");
    assert_eq!(body["status"], "failed");
    assert_eq!(body["error"], "scan_failed");
    let run_id = body["run_id"].as_str().unwrap().to_string();
    app.wait_background().await;
    let stored: String = sqlx::query_scalar("SELECT status FROM runs WHERE id = $1::uuid")
        .bind(&run_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, "failed");
    app.eventually(30, "IQube told of the failed run", || async {
        !app.fakes.iqube_calls().is_empty()
    })
    .await;
    let calls = app.fakes.iqube_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["event"], "run_failed");
    assert_eq!(calls[0].body["run_id"], run_id.as_str());
    assert!(calls[0].body["remitter"].is_null() && calls[0].body["file_name"].is_null());

    // The share is back: the next run completes normally.
    app.put("acme", "x.csv", b"x").await;
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["processed"], 1, "{body}");
    assert_eq!(app.fakes.iqube_calls().len(), 1);
    app.finish().await;
}

/// One run at a time: a trigger during a run answers 409 naming the running run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_trigger_during_a_run_gets_409() {
    let mut app = spawn_app(Opts {
        interval_secs: 2.0,
        ..Opts::default()
    })
    .await;
    app.put("acme", "x.csv", b"x").await;
    let ((s1, b1), (s2, b2)) = tokio::join!(app.trigger(), async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        app.trigger().await
    });
    assert_eq!((s1, s2), (200, 409), "{b1} {b2}");
    assert_eq!(b2["error"], "run_in_progress");
    assert_eq!(b2["run_id"], b1["run_id"]);
    app.wait_background().await;
    assert_eq!(app.fakes.foi_calls().len(), 1);
    assert_eq!(app.count("runs").await, 1);
    app.finish().await;
}

async fn scan_fails_with_one_run_failed(opts: Opts) {
    let mut app = spawn_app(opts).await;
    app.put("acme", "x.csv", b"x").await;
    let (status, body) = app.trigger().await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["error"].as_str()),
        (Some("failed"), Some("scan_failed"))
    );
    app.wait_background().await;
    app.eventually(30, "IQube told of the failed run", || async {
        !app.fakes.iqube_calls().is_empty()
    })
    .await;
    let calls = app.fakes.iqube_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["event"], "run_failed");
    assert_eq!(calls[0].body["run_id"], body["run_id"]);
    assert_eq!(app.count("files").await, 0);
    assert!(app.fakes.foi_calls().is_empty());
    let ready = app
        .http
        .get(format!("{}/readyz", app.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    app.finish().await;
}

/// Wrong SMB credentials: the run fails (502), is recorded, IQube told once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_smb_credentials_fail_the_run() {
    scan_fails_with_one_run_failed(Opts {
        smb_password: Some("not-the-password".into()),
        ..Opts::default()
    })
    .await;
}

/// Share unreachable (nothing listens on the port): the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_share_fails_the_run() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    scan_fails_with_one_run_failed(Opts {
        smb_port: Some(closed),
        ..Opts::default()
    })
    .await;
}

/// Malformed or oversized requests get a 4xx JSON error and start no run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_errors_and_start_no_run() {
    let app = spawn_app(Opts::default()).await;
    let runs = format!("{}/api/v1/coordinator/runs", app.base_url);
    let token = app.token.clone().unwrap();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            app.http.post(&runs).bearer_auth(&token).body("{not json"),
            400,
            "invalid_request",
        ),
        (
            app.http
                .post(&runs)
                .bearer_auth(&token)
                .body(r#"{"dry_runn": true}"#),
            400,
            "invalid_request",
        ),
        (
            app.http.post(&runs).bearer_auth(&token).body("[]"),
            400,
            "invalid_request",
        ),
        (
            app.http
                .post(&runs)
                .bearer_auth(&token)
                .body(vec![b' '; 100 * 1024]),
            413,
            "payload_too_large",
        ),
        (
            app.http
                .post(format!("{runs}?{}", "x".repeat(4096)))
                .bearer_auth(&token),
            414,
            "uri_too_long",
        ),
        (
            // GET lists runs (CONTRACT §9); DELETE is no method of the route.
            app.http.delete(&runs).bearer_auth(&token),
            405,
            "method_not_allowed",
        ),
        (
            app.http
                .post(format!("{}/api/v1/nope", app.base_url))
                .bearer_auth(&token),
            404,
            "not_found",
        ),
        (
            app.http.post(&runs).bearer_auth(&token).body("{bad"),
            400,
            "invalid_request",
        ),
    ];
    for (req, status, error) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let body: serde_json::Value = resp.json().await.expect("a JSON error body");
        assert_eq!(body["error"], error, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    // Unauthenticated: 401 comes before the body is looked at.
    let resp = app.http.post(&runs).body("{not json").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(app.count("runs").await, 0, "no run was started");
    // An empty object is a valid request.
    let resp = app
        .http
        .post(&runs)
        .bearer_auth(&token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    app.finish().await;
}
