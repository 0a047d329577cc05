//! The real `coordinator serve` process, configured only through CONTRACT §3
//! variables (secrets from `_FILE`s): runs over HTTP, a graceful stop that
//! finishes the files in flight, and a SIGKILL mid-file recovered after the
//! claim's lease.

use crate::fakes::ItmBehavior;
use crate::helpers::{Opts, Prepared, prepare};
use coordinator::source::FileSource;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `coordinator serve`.
struct Serve {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
    token: String,
    spool: PathBuf,
}

impl Serve {
    /// Starts the binary for `p` with `extra` variables on top, and waits
    /// for it to answer `/healthz`.
    async fn start(p: &Prepared, extra: &[(&str, &str)]) -> Serve {
        let s = Serve::spawn(p, extra);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = s.http.get(format!("{}/healthz", s.base)).send().await
                && r.status() == 200
            {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "serve did not answer /healthz: {}",
                s.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the binary for `p` with `extra` variables on top.
    fn spawn(p: &Prepared, extra: &[(&str, &str)]) -> Serve {
        let a = &p.args;
        let dir = tempfile::tempdir().unwrap();
        let token = p.token.clone().unwrap();
        std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
        std::fs::write(
            dir.path().join("smbpw"),
            format!("{}\n", a.smb_password.as_ref().unwrap().expose()),
        )
        .unwrap();
        let log = dir.path().join("coordinator.log");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "debug,smb2=info")
            .env("ENV", "prod")
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("API_TOKEN_FILE", dir.path().join("token"))
            .envs(p.binary_env())
            .env("SMB_PASSWORD_FILE", dir.path().join("smbpw"))
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start coordinator serve");
        Serve {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
            http: reqwest::Client::new(),
            token,
            spool: p.args.spool_dir.clone(),
        }
    }

    /// `GET path` with the token: status and JSON body.
    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("call serve");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or_default())
    }

    /// The instance list, by id.
    async fn instances(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        let (status, body) = self.get("/api/v1/coordinator/instances").await;
        assert_eq!(status, 200, "{body}");
        body["instances"]
            .as_array()
            .expect("an instances list")
            .iter()
            .map(|i| (i["instance_id"].as_str().unwrap().to_string(), i.clone()))
            .collect()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn trigger(
        &self,
    ) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + use<> {
        self.http
            .post(format!("{}/api/v1/coordinator/runs", self.base))
            .bearer_auth(&self.token)
            .send()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit code (None when killed by a signal).
    async fn wait(&mut self) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "serve did not exit: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        crate::helpers::keep_log(&self.log_text());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.spool);
    }
}

/// Starts `coordinator run` for `p` (secrets in the environment), its
/// summary to a file; returns the child and that file.
fn cli_run(p: &Prepared, extra: &[(&str, &str)]) -> (Child, tempfile::NamedTempFile) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("ENV", "local")
        .envs(p.binary_env())
        .env(
            "SMB_PASSWORD",
            p.args.smb_password.as_ref().unwrap().expose(),
        )
        .envs(extra.iter().copied())
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start coordinator run");
    (child, out)
}

/// Issue 12 item 5: after SIGTERM only the files already claimed finish;
/// the rest are not claimed, stay in the source without a row, and the
/// summary says the run was cut short — in `serve` (whose answer then comes
/// at once, not after the whole run) and in `coordinator run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_claims_nothing_more_in_serve_and_in_run() {
    const FILES: usize = 30;
    let check_db = |db: sqlx::PgPool| async move {
        let (rows, processing): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status = 'processing') FROM files",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(processing, 0, "no claim left dangling");
        rows
    };
    let check_summary = |body: &serde_json::Value, rows: i64| {
        let s = &body["summary"];
        assert_eq!(s["cut_short"], true, "{body}");
        let (processed, deferred) = (
            s["processed"].as_i64().unwrap(),
            s["deferred"].as_i64().unwrap(),
        );
        // One with ITM, one claimed ahead (MAX_CONCURRENT_FILES=1).
        assert!((1..=2).contains(&processed), "{body}");
        assert_eq!(processed + deferred, FILES as i64, "{body}");
        assert_eq!(rows, processed, "a row only for what was claimed");
    };
    let slow = [("MAX_CONCURRENT_FILES", "1")];
    let thirty_files_and_a_slow_itm = || async {
        let p = prepare(Opts::default()).await;
        p.fakes.set_itm(ItmBehavior::Slow(Duration::from_secs(1)));
        for i in 0..FILES {
            let name = format!("f{i:02}.csv");
            put(&p, "acme", &name, name.as_bytes()).await;
        }
        p
    };

    // serve
    let p = thirty_files_and_a_slow_itm().await;
    let mut serve = Serve::start(&p, &slow).await;
    let run = tokio::spawn(serve.trigger());
    until(30, "ITM reached", || !p.fakes.itm_calls().is_empty()).await;
    let t = std::time::Instant::now();
    serve.signal("-TERM");
    let resp = run.await.unwrap().expect("the request is answered");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(serve.wait().await, Some(0), "{}", serve.log_text());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stopped after {:?}",
        t.elapsed()
    );
    let rows = check_db(p.db().await).await;
    check_summary(&body, rows);
    assert_eq!(p.fakes.foi_calls().len() as i64, rows, "nothing more sent");
    let left = std::fs::read_dir(p.share_path.join(&p.source_dir).join("acme"))
        .unwrap()
        .count();
    // Nothing moved either: the pass after the run starts no move once stopping.
    assert_eq!(left, FILES, "the deferred files untouched");

    // coordinator run
    let p = thirty_files_and_a_slow_itm().await;
    let (mut child, out) = cli_run(&p, &slow);
    until(30, "ITM reached", || !p.fakes.itm_calls().is_empty()).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(tokio::time::Instant::now() < deadline, "run did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(0), "a cut-short run still completed");
    let body: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path()).unwrap()).unwrap();
    let rows = check_db(p.db().await).await;
    check_summary(&body, rows);
    assert_eq!(p.fakes.foi_calls().len() as i64, rows, "nothing more sent");
}

async fn put(p: &Prepared, remitter: &str, name: &str, bytes: &[u8]) {
    let dir = format!("{}/{remitter}", p.source_dir);
    p.remitter_share.mkdir_all(&dir).await.unwrap();
    p.remitter_share
        .write_file(&format!("{dir}/{name}"), bytes.to_vec())
        .await
        .unwrap();
}

/// Polls `check` every 50 ms until it gives a value, for at most `secs`.
async fn poll<T, F: std::future::Future<Output = Option<T>>>(
    secs: u64,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {secs}s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {secs}s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_runs_over_http_and_stops_gracefully() {
    let p = prepare(Opts::default()).await;
    let mut serve = Serve::start(&p, &[]).await;
    put(&p, "acme", "remit_20240101.csv", b"a,b\n1,2\n").await;

    let unauthorized = serve
        .http
        .post(format!("{}/api/v1/coordinator/runs", serve.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let resp = serve.trigger().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["summary"]["succeeded"], 1, "{body}");
    assert_eq!(p.fakes.itm_calls().len(), 1);
    let archived = p
        .share_path
        .join(&p.archive_dir)
        .join("acme/remit_20240101.csv");
    until(30, "archived", || archived.is_file()).await;

    serve.signal("-TERM");
    let code = serve.wait().await;
    let log = serve.log_text();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("coordinator listening"), "{log}");
    for secret in [
        serve.token.as_str(),
        p.args.smb_password.as_ref().unwrap().expose(),
    ] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

/// SIGTERM during a run: the in-flight files finish, the request is answered,
/// no claim is left `processing`, exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_finishes_the_files_in_flight() {
    let p = prepare(Opts::default()).await;
    p.fakes.set_itm(ItmBehavior::Slow(Duration::from_secs(2)));
    let mut serve = Serve::start(&p, &[]).await;
    put(&p, "acme", "a.csv", b"a").await;
    put(&p, "acme", "b.csv", b"b").await;

    let run = tokio::spawn(serve.trigger());
    // Both files are claimed and with ITM (four at once): both are in flight.
    until(30, "ITM reached by both", || p.fakes.itm_calls().len() == 2).await;
    serve.signal("-TERM");

    let resp = run
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["summary"]["succeeded"], 2, "{body}");
    assert_eq!(serve.wait().await, Some(0), "{}", serve.log_text());

    let db = p.db().await;
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM files ORDER BY file_name")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(statuses, ["success", "success"]);
    let runs: Vec<String> = sqlx::query_scalar("SELECT status FROM runs")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(runs, ["completed"]);
}

/// RUN_INTERVAL_SECS in the real binary: a scheduled run takes the file
/// with nobody calling; SIGTERM while it is in flight lets it finish, stops
/// the schedule (no run after it) and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_schedule_after_its_run_in_flight() {
    let p = prepare(Opts::default()).await;
    p.fakes.set_itm(ItmBehavior::Slow(Duration::from_secs(2)));
    put(&p, "acme", "a.csv", b"a").await;
    let mut serve = Serve::start(&p, &[("RUN_INTERVAL_SECS", "1")]).await;
    until(30, "ITM reached by a scheduled run", || {
        !p.fakes.itm_calls().is_empty()
    })
    .await;
    serve.signal("-TERM");
    assert_eq!(serve.wait().await, Some(0), "{}", serve.log_text());

    let db = p.db().await;
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM files")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(statuses, ["success"]);
    let runs: Vec<(String, String)> = sqlx::query_as("SELECT status, trigger FROM runs")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(runs, [("completed".to_string(), "schedule".to_string())]);
}

/// An instance `id` with fast heartbeats and its own spool folder (each
/// instance keeps its own kept-outcome journal there).
fn node(p: &Prepared, id: &'static str, max_concurrent: usize) -> Vec<(&'static str, String)> {
    let spool = p.args.spool_dir.join(id);
    vec![
        ("INSTANCE_ID", id.to_string()),
        (FAST_BEATS.0, FAST_BEATS.1.to_string()),
        ("SPOOL_DIR", spool.display().to_string()),
        ("MAX_CONCURRENT_FILES", max_concurrent.to_string()),
    ]
}

/// `n` files `<prefix>NN.csv` in `remitter`'s folder, each its own content.
async fn put_numbered(p: &Prepared, remitter: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let name = format!("{prefix}{i:02}.csv");
        put(p, remitter, &name, name.as_bytes()).await;
    }
}

fn env_of<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Issue 13 items 3 and 4: the instance that started a run is killed while
/// ITM holds its file. The other instance adopts the run, takes the dead
/// instance's claim over within 3 × heartbeat + 1 s, sends the file again
/// with the same Idempotency-Key, and finishes the run (`completed`,
/// `finished_by` itself); the killed instance's id is free again and its
/// spool file swept when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_file_and_run_are_finished_by_another() {
    let p = prepare(Opts::default()).await;
    p.fakes.set_itm(ItmBehavior::Hang);
    let (a_env, b_env) = (node(&p, "node-a", 4), node(&p, "node-b", 4));
    let mut a = Serve::start(&p, &env_of(&a_env)).await;
    let b = Serve::start(&p, &env_of(&b_env)).await;
    put(&p, "acme", "remit.csv", b"remittance").await;

    let run = tokio::spawn(a.trigger());
    until(30, "ITM reached", || !p.fakes.itm_calls().is_empty()).await;
    p.fakes.set_itm(ItmBehavior::Success);
    a.signal("-KILL");
    let killed = std::time::Instant::now();
    assert_eq!(a.wait().await, None, "killed by the signal");
    assert!(
        run.await.unwrap().is_err(),
        "the request died with the process"
    );

    let db = p.db().await;
    let run_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM runs")
        .fetch_one(&db)
        .await
        .unwrap();
    poll(30, "the claim taken over", || async {
        let claims: i64 =
            sqlx::query_scalar("SELECT count(*) FROM file_events WHERE status = 'processing'")
                .fetch_one(&db)
                .await
                .unwrap();
        (claims == 2).then_some(())
    })
    .await;
    // 3 × 0.5 s + 1 s, and half a second for a loaded machine's polling.
    let took = killed.elapsed();
    eprintln!("claim taken over {took:?} after SIGKILL (heartbeat 0.5 s)");
    assert!(
        took < Duration::from_millis(3000),
        "taken over after {took:?}"
    );

    let (status, finished_by, summary) = poll(30, "the run finished", || async {
        let row: (String, Option<String>, Option<serde_json::Value>) =
            sqlx::query_as("SELECT status, finished_by, summary FROM runs WHERE id = $1")
                .bind(run_id)
                .fetch_one(&db)
                .await
                .unwrap();
        (row.0 != "running").then_some(row)
    })
    .await;
    assert_eq!(
        (status.as_str(), finished_by.as_deref()),
        ("completed", Some("node-b"))
    );
    let summary = summary.unwrap();
    let f = &summary["files"][0];
    assert_eq!(
        (f["status"].as_str(), f["instance"].as_str()),
        (Some("success"), Some("node-b")),
        "{summary}"
    );
    // The POST's client lost its connection; GET shows the outcome.
    let (code, got) = b.get(&format!("/api/v1/coordinator/runs/{run_id}")).await;
    assert_eq!(
        (
            code,
            got["status"].as_str(),
            got["instance"].as_str(),
            got["finished_by"].as_str()
        ),
        (200, Some("completed"), Some("node-a"), Some("node-b")),
        "{got}"
    );
    let itm = p.fakes.itm_calls();
    assert_eq!(itm.len(), 2, "one submission per instance");
    assert_eq!(itm[0].idempotency_key, itm[1].idempotency_key);
    let events: Vec<String> = sqlx::query_scalar("SELECT status FROM file_events ORDER BY id")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(
        events[..3],
        ["processing", "processing", "success"],
        "{events:?}"
    );
    let metrics = b
        .http
        .get(format!("{}/metrics", b.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "coordinator_claims_taken_over_total 1"),
        "{metrics}"
    );

    // node-a comes back under its id (its old process is dead): its spool
    // file is swept.
    let a_again = Serve::start(&p, &env_of(&a_env)).await;
    let spool = a_env[2].1.clone();
    let left: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().ends_with(".spool"))
        .collect();
    assert!(
        left.is_empty(),
        "the killed process's spool file is swept: {left:?}"
    );
    assert_eq!(a_again.instances().await["node-a"]["alive"], true);
}

/// Issue 13 items 2 and 5: one run, three instances, 150 files with FOI
/// slowed so the run takes seconds: the POST to one answers when every
/// candidate has an outcome; every instance processed some, each file went
/// to FOI once and to ITM once, and every entry names its instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_run_and_send_each_file_once() {
    const FILES: usize = 150;
    let p = prepare(Opts::default()).await;
    p.fakes
        .set_foi(crate::fakes::FoiBehavior::Slow(Duration::from_millis(100)));
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        nodes.push(Serve::start(&p, &env_of(&node(&p, id, 2))).await);
    }
    for r in ["acme", "globex", "initech"] {
        put_numbered(&p, r, &format!("{r}-"), FILES / 3).await;
    }
    let resp = nodes[0].trigger().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let s = &body["summary"];
    assert_eq!(
        (s["processed"].as_u64(), s["succeeded"].as_u64()),
        (Some(FILES as u64), Some(FILES as u64)),
        "{body}"
    );
    let mut by = std::collections::BTreeMap::<String, usize>::new();
    for f in s["files"].as_array().unwrap() {
        *by.entry(f["instance"].as_str().unwrap_or("none").to_string())
            .or_default() += 1;
    }
    assert_eq!(
        by.keys().collect::<Vec<_>>(),
        ["node-a", "node-b", "node-c"],
        "each instance processed some: {by:?}"
    );
    let mut names: Vec<String> = p.fakes.foi_names();
    assert_eq!(names.len(), FILES, "FOI once per file");
    names.sort();
    names.dedup();
    assert_eq!(names.len(), FILES);
    let mut keys: Vec<String> = p
        .fakes
        .itm_calls()
        .into_iter()
        .filter_map(|c| c.idempotency_key)
        .collect();
    assert_eq!(keys.len(), FILES, "ITM once per file");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), FILES);
    let db = p.db().await;
    let (finished_by, claims): (Option<String>, i64) = sqlx::query_as(
        "SELECT finished_by, (SELECT count(*) FROM file_events WHERE status = 'processing') \
         FROM runs WHERE id = $1::uuid",
    )
    .bind(body["run_id"].as_str().unwrap())
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        (finished_by.as_deref(), claims),
        (Some("node-a"), FILES as i64)
    );
}

/// Issue 13 item 2: `coordinator run` takes part in its own run like any
/// instance, and a live `serve` takes the run's candidates beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_run_is_shared_with_a_serve_instance() {
    const FILES: usize = 30;
    let p = prepare(Opts::default()).await;
    p.fakes
        .set_foi(crate::fakes::FoiBehavior::Slow(Duration::from_millis(100)));
    let _b = Serve::start(&p, &env_of(&node(&p, "node-b", 2))).await;
    put_numbered(&p, "acme", "f", FILES).await;
    let (mut child, out) = cli_run(&p, &env_of(&node(&p, "the-cli", 2)));
    let code = poll(60, "coordinator run exited", || {
        let done = child.try_wait().unwrap().map(|s| s.code());
        async move { done }
    })
    .await;
    assert_eq!(code, Some(0));
    let body: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path()).unwrap()).unwrap();
    assert_eq!(body["summary"]["succeeded"], FILES, "{body}");
    let mut by = std::collections::BTreeSet::new();
    for f in body["summary"]["files"].as_array().unwrap() {
        by.insert(f["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(
        by.into_iter().collect::<Vec<_>>(),
        ["node-b", "the-cli"],
        "{body}"
    );
    assert_eq!(p.fakes.foi_calls().len(), FILES, "each file once");
}

/// Issue 13 item 3: SIGKILL of an instance (not the starter) while ITM
/// holds several of its files: the run completes; each of the killed
/// instance's files reaches ITM again with the same `Idempotency-Key`; no
/// other file is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_helpers_files_are_taken_over_and_nothing_else_is_sent_twice() {
    const FILES: usize = 12;
    let p = prepare(Opts::default()).await;
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    p.fakes.set_itm(ItmBehavior::Held(release.clone()));
    let a = Serve::start(&p, &env_of(&node(&p, "node-a", 1))).await;
    let mut b = Serve::start(&p, &env_of(&node(&p, "node-b", 3))).await;
    put_numbered(&p, "acme", "f", FILES).await;
    let run = tokio::spawn(a.trigger());
    let db = p.db().await;
    let b_inc: uuid::Uuid =
        sqlx::query_scalar("SELECT incarnation FROM instances WHERE instance_id = 'node-b'")
            .fetch_one(&db)
            .await
            .unwrap();
    // node-a holds one file at ITM, node-b three.
    until(30, "four files at ITM", || p.fakes.itm_calls().len() >= 4).await;
    b.signal("-KILL");
    assert_eq!(b.wait().await, None);
    let sent_before: Vec<String> = p
        .fakes
        .itm_calls()
        .into_iter()
        .map(|c| c.body["file_name"].as_str().unwrap().to_string())
        .collect();
    let held_by_b: Vec<String> = sqlx::query_scalar(
        "SELECT file_name FROM files WHERE claimed_by = $1 AND status = 'processing' ORDER BY 1",
    )
    .bind(b_inc)
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(
        held_by_b.iter().any(|n| sent_before.contains(n)),
        "node-b had files at ITM when killed: {held_by_b:?} {sent_before:?}"
    );
    release.add_permits(1000);
    let resp = run.await.unwrap().expect("the run is answered");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["summary"]["succeeded"], FILES, "{body}");
    let mut calls: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for c in p.fakes.itm_calls() {
        calls
            .entry(c.body["file_name"].as_str().unwrap().to_string())
            .or_default()
            .push(c.idempotency_key.unwrap_or_default());
    }
    assert_eq!(calls.len(), FILES);
    for (name, keys) in &calls {
        if held_by_b.contains(name) && sent_before.contains(name) {
            assert_eq!(keys.len(), 2, "{name}: sent again after the takeover");
            assert_eq!(keys[0], keys[1], "{name}: the same Idempotency-Key");
        } else {
            assert_eq!(keys.len(), 1, "{name} sent twice: {calls:?}");
        }
    }
    for f in body["summary"]["files"].as_array().unwrap() {
        if held_by_b.contains(&f["file_name"].as_str().unwrap().to_string()) {
            assert_eq!(f["instance"], "node-a", "{f}");
        }
    }
}

/// Issue 13 item 6 with two instances: SIGTERM to the instance that owns a
/// run while it holds a file: `/readyz` turns 503 at once while `/healthz`
/// stays 200, it finishes that file, hands the run over
/// (its POST answers `503 run_handed_over` naming the run) and exits 0;
/// the other instance finishes the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_owner_hands_its_run_to_the_other_instance() {
    let p = prepare(Opts::default()).await;
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    p.fakes.set_itm(ItmBehavior::Held(release.clone()));
    let mut a = Serve::start(&p, &env_of(&node(&p, "node-a", 1))).await;
    put_numbered(&p, "acme", "f", 4).await;
    let run = tokio::spawn(a.trigger());
    until(30, "ITM reached", || !p.fakes.itm_calls().is_empty()).await;
    // node-b joins while node-a holds its first file.
    let b = Serve::start(&p, &env_of(&node(&p, "node-b", 4))).await;
    a.signal("-TERM");
    // Not ready at once (while ITM still holds its file), alive all along.
    poll(10, "node-a's /readyz 503", || async {
        (a.get("/readyz").await.0 == 503).then_some(())
    })
    .await;
    assert_eq!(a.get("/healthz").await.0, 200);
    release.add_permits(100);
    let resp = run.await.unwrap().expect("the POST is answered");
    let code = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (code, body["error"].as_str()),
        (503, Some("run_handed_over")),
        "{body}"
    );
    assert_eq!(a.wait().await, Some(0), "{}", a.log_text());
    let run_id = body["run_id"].as_str().unwrap().to_string();
    let got = poll(30, "the handed-over run finished", || async {
        let (_, got) = b.get(&format!("/api/v1/coordinator/runs/{run_id}")).await;
        (got["status"] != "running").then_some(got)
    })
    .await;
    assert_eq!(got["status"], "completed", "{got}");
    assert_eq!(got["summary"]["succeeded"], 4, "{got}");
    let db = p.db().await;
    let finished_by: Option<String> =
        sqlx::query_scalar("SELECT finished_by FROM runs WHERE id = $1::uuid")
            .bind(&run_id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(finished_by.as_deref(), Some("node-b"));
    let mut keys: Vec<String> = p
        .fakes
        .itm_calls()
        .into_iter()
        .filter_map(|c| c.idempotency_key)
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 4, "each file sent once");
    let held_by_a = got["summary"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["instance"] == "node-a")
        .count();
    assert!(
        (1..=2).contains(&held_by_a),
        "node-a finished what it held: {got}"
    );
}

/// Peak resident memory of a process, from /proc (kB).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// A large file (1 GiB, or IT_BIG_FILE_MB) goes through with bounded memory:
/// streamed from the share to a spool file and from there to FOI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_streamed_with_bounded_memory() {
    let mb: usize = std::env::var("IT_BIG_FILE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let p = prepare(Opts::default()).await;
    let serve = Serve::start(&p, &[]).await;
    let dir = format!("{}/acme", p.source_dir);
    p.remitter_share.mkdir_all(&dir).await.unwrap();
    let path = format!("{dir}/big_20240101.bin");
    let client = crate::remitter::client();
    let t = std::time::Instant::now();
    let expected_md5 = tokio::task::spawn_blocking(move || {
        use md5::Digest;
        use std::io::Write;
        let mut f = crate::remitter::open_for_writing(&client, &path);
        let mut h = md5::Md5::new();
        let mut chunk = vec![0u8; 1 << 20];
        for i in 0..mb {
            // Every MiB differs, so a lost or repeated chunk changes the MD5.
            chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
            f.write_all(&chunk).unwrap();
            h.update(&chunk);
        }
        hex::encode(h.finalize())
    })
    .await
    .unwrap();
    eprintln!("writing took {:?}", t.elapsed());

    let t = std::time::Instant::now();
    let resp = serve.trigger().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["summary"]["succeeded"], 1, "{body}");
    eprintln!("run took {:?}", t.elapsed());
    let foi = p.fakes.foi_calls();
    assert_eq!(
        (foi[0].size, foi[0].md5.as_str()),
        (mb << 20, expected_md5.as_str())
    );
    let peak_mb = peak_rss_kb(serve.child.id()) / 1024;
    assert!(peak_mb < 100, "peak RSS {peak_mb} MiB for a {mb} MiB file");
    eprintln!("peak RSS {peak_mb} MiB for a {mb} MiB file");
}

/// IQube accepts connections and never answers (with a 5 s client
/// timeout): the archive still moves the success file promptly, SIGTERM
/// stops `serve` once the request in flight has timed out (it is awaited,
/// not dropped: issue 12 item 2), and the notification is kept and
/// delivered once by the next process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_iqube_holds_back_neither_the_archive_nor_shutdown() {
    use crate::fakes::IqubeBehavior;
    use std::os::unix::fs::PermissionsExt;
    let p = prepare(Opts::default()).await;
    p.fakes.set_iqube(IqubeBehavior::Hang);
    let extra = [
        ("IQUBE_TIMEOUT_SECS", "5"),
        ("READ_FAILURE_NOTIFY_AFTER", "1"),
        ("HOUSEKEEPING_INTERVAL_SECS", "1"),
    ];
    let mut serve = Serve::start(&p, &extra).await;
    put(&p, "acme", "good.csv", b"good").await;
    put(&p, "acme", "locked.csv", b"locked").await;
    // An unreadable file: its read_failed notification is queued by the run.
    let locked = p.share_path.join(&p.source_dir).join("acme/locked.csv");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();

    let resp = serve.trigger().await.unwrap();
    assert_eq!(resp.status(), 200);
    until(30, "IQube reached", || p.fakes.iqube_attempts() >= 1).await;
    let archived = p.share_path.join(&p.archive_dir).join("acme/good.csv");
    until(15, "success file archived while IQube hangs", || {
        archived.is_file()
    })
    .await;

    let t = std::time::Instant::now();
    serve.signal("-TERM");
    assert_eq!(serve.wait().await, Some(0), "{}", serve.log_text());
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());

    let db = p.db().await;
    let (attempts, delivered): (i32, bool) =
        sqlx::query_as("SELECT attempts, delivered_at IS NOT NULL FROM notifications")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(!delivered && attempts >= 1, "kept: {attempts}");

    // IQube answers again: the next process delivers it, once.
    p.fakes.set_iqube(IqubeBehavior::Ok);
    let serve = Serve::start(&p, &extra).await;
    until(60, "delivered after the backoff", || {
        !p.fakes.iqube_calls().is_empty()
    })
    .await;
    // IQube has the call before the coordinator records the delivery.
    poll(10, "recorded as delivered", || async {
        let delivered: bool =
            sqlx::query_scalar("SELECT delivered_at IS NOT NULL FROM notifications")
                .fetch_one(&db)
                .await
                .unwrap();
        delivered.then_some(())
    })
    .await;
    let calls = p.fakes.iqube_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].body["status"], "read_failed");
    drop(serve);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Heartbeats of 0.5 s: dead after 1.5 s without one.
const FAST_BEATS: (&str, &str) = ("INSTANCE_HEARTBEAT_SECS", "0.5");

/// Issue 13 item 1: each instance is listed with its heartbeat; a second
/// live process with the same `INSTANCE_ID` refuses to start, naming the
/// variable; a killed instance is dead within three heartbeats (and its id
/// free again), a stopped one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_beat_and_a_live_id_cannot_be_used_twice() {
    let p = prepare(Opts::default()).await;
    let mut a = Serve::start(&p, &[("INSTANCE_ID", "node-a"), FAST_BEATS]).await;
    let mut b = Serve::start(&p, &[("INSTANCE_ID", "node-b"), FAST_BEATS]).await;
    let listed = a.instances().await;
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        ["node-a", "node-b"],
        "{listed:?}"
    );
    for i in listed.values() {
        assert_eq!(i["alive"], true, "{i}");
        assert_eq!(i["draining"], false, "{i}");
        assert_eq!(i["files_in_flight"], 0, "{i}");
        assert_eq!(i["max_concurrent_files"], 4, "{i}");
        assert_eq!(i["version"], env!("CARGO_PKG_VERSION"), "{i}");
        assert!(
            i["started_at"].is_string() && i["last_seen_at"].is_string(),
            "{i}"
        );
    }
    // The heartbeat moves on.
    let first = listed["node-b"]["last_seen_at"]
        .as_str()
        .unwrap()
        .to_string();
    poll(10, "the next heartbeat", || async {
        (b.instances().await["node-b"]["last_seen_at"] != first.as_str()).then_some(())
    })
    .await;

    // A second live node-a refuses to start, and says why.
    let mut twin = Serve::spawn(&p, &[("INSTANCE_ID", "node-a"), FAST_BEATS]);
    assert_eq!(twin.wait().await, Some(2), "{}", twin.log_text());
    let why = twin.log_text();
    assert!(
        why.contains("INSTANCE_ID") && why.contains("node-a") && why.contains("in use"),
        "{why}"
    );
    assert_eq!(
        a.instances().await["node-a"]["alive"],
        true,
        "the holder is untouched"
    );

    // Killed: dead within three heartbeats (1.5 s), plus polling slack.
    b.signal("-KILL");
    assert_eq!(b.wait().await, None);
    let killed = std::time::Instant::now();
    while a.instances().await["node-b"]["alive"] != false {
        assert!(
            killed.elapsed() < Duration::from_millis(2500),
            "node-b still alive {:?} after SIGKILL",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its id is free again.
    let b2 = Serve::start(&p, &[("INSTANCE_ID", "node-b"), FAST_BEATS]).await;
    assert_eq!(b2.instances().await["node-b"]["alive"], true);

    // Stopped cleanly: dead at once, no three-beat wait.
    a.signal("-TERM");
    assert_eq!(a.wait().await, Some(0), "{}", a.log_text());
    let node_a = &b2.instances().await["node-a"];
    assert_eq!(node_a["alive"], false, "{node_a}");
}

/// Issue 13 item 6: on SIGTERM the instance answers `/readyz` with 503
/// (`draining`, also in the instance list) while `/healthz` stays 200 and
/// the file it holds finishes; it starts no new run, then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_readyz_503_healthz_200_until_the_file_held_is_done() {
    let p = prepare(Opts::default()).await;
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    p.fakes.set_itm(ItmBehavior::Held(release.clone()));
    put(&p, "acme", "held.csv", b"held").await;
    let mut serve = Serve::start(&p, &[("INSTANCE_ID", "drainer"), FAST_BEATS]).await;
    assert_eq!(serve.get("/readyz").await.0, 200);
    let run = tokio::spawn(serve.trigger());
    until(30, "ITM reached", || !p.fakes.itm_calls().is_empty()).await;
    let listed = serve.instances().await;
    assert_eq!(listed["drainer"]["draining"], false);
    poll(10, "the file in flight shown", || async {
        (serve.instances().await["drainer"]["files_in_flight"] == 1).then_some(())
    })
    .await;

    serve.signal("-TERM");
    let ready = poll(10, "/readyz 503", || async {
        let (status, body) = serve.get("/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(ready["status"], "draining", "{ready}");
    assert_eq!(ready["draining"], true, "{ready}");
    assert_eq!(serve.get("/healthz").await.0, 200, "alive while draining");
    let (status, refused) = {
        let resp = serve.trigger().await.unwrap();
        (
            resp.status().as_u16(),
            resp.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(
        (status, refused["error"].as_str()),
        (503, Some("draining")),
        "{refused}"
    );
    // The heartbeat that says so is sent at once, and lands a moment later.
    poll(5, "draining in the instance list", || async {
        (serve.instances().await["drainer"]["draining"] == true).then_some(())
    })
    .await;
    assert!(
        serve.child.try_wait().unwrap().is_none(),
        "still finishing its file"
    );

    release.add_permits(1);
    let resp = run.await.unwrap().expect("the run is answered");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["summary"]["succeeded"], 1, "{body}");
    assert_eq!(serve.wait().await, Some(0), "{}", serve.log_text());
    let db = p.db().await;
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT status, stopped_at IS NOT NULL FROM files, instances WHERE instance_id = 'drainer'",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(rows, [("success".to_string(), true)]);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(runs, 1, "the refused POST started no run");
}

/// Issue 14: a token revoked through one instance is refused by another
/// within 5 seconds (each instance caches a token it looked up for at most
/// 2 s); the token is made by `coordinator token create`, so the CLI's
/// secret works on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_working_on_another_instance_within_5_seconds() {
    let p = prepare(Opts::default()).await;
    let (a_env, b_env) = (node(&p, "node-a", 2), node(&p, "node-b", 2));
    let a = Serve::start(&p, &env_of(&a_env)).await;
    let b = Serve::start(&p, &env_of(&b_env)).await;
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["token", "create", "--name", "dave", "--role", "viewer"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &p.db_url)
        .env("AUDIT_KEY", crate::operator::args_key(&p.args))
        .output()
        .expect("coordinator token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dave = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let status_on = |s: &Serve| {
        let req = s
            .http
            .get(format!("{}/api/v1/coordinator/runs", s.base))
            .bearer_auth(&dave);
        async move { req.send().await.expect("call serve").status().as_u16() }
    };
    assert_eq!(status_on(&a).await, 200);
    assert_eq!(status_on(&b).await, 200, "b has it in its cache now");

    let resp = a
        .http
        .delete(format!("{}/api/v1/coordinator/tokens/dave", a.base))
        .bearer_auth(&a.token)
        .send()
        .await
        .expect("revoke through a");
    assert_eq!(resp.status().as_u16(), 200);
    let revoked = std::time::Instant::now();
    poll(5, "b refuses the revoked token", || async {
        (status_on(&b).await == 401).then_some(())
    })
    .await;
    let took = revoked.elapsed();
    assert_eq!(status_on(&a).await, 401);
    eprintln!("revocation seen by the other instance after {took:?}");
    let db = p.db().await;
    let row: (String, String, Option<String>) = sqlx::query_as(
        "SELECT actor, outcome, target FROM audit_events WHERE action = 'token.revoke'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(row, ("bootstrap".into(), "ok".into(), Some("dave".into())));
    let addr: Option<String> =
        sqlx::query_scalar("SELECT remote_addr FROM audit_events WHERE action = 'token.revoke'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(addr.as_deref(), Some("127.0.0.1"), "the peer's address");
}
