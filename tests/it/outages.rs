//! Outages of the servers themselves, on private instances so the rest of
//! the suite is not disturbed: the share going away and coming back, and
//! Postgres restarted in the middle of a run.

use crate::fakes::ItmBehavior;
use crate::helpers::{Opts, TestEnv, spawn_app};
use coordinator::source::smb::SmbConfig;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A private Samba (and Postgres, when asked) from `scripts/test-env-up.sh`.
pub(crate) struct PrivateServers {
    pub(crate) vars: HashMap<String, String>,
    state_dir: String,
    /// smbd processes this test started itself, reaped on drop.
    started: std::sync::Mutex<Vec<std::process::Child>>,
}

impl PrivateServers {
    pub(crate) fn start(with_postgres: bool) -> Self {
        Self::start_with(with_postgres, &[])
    }

    /// As `start`, with extra variables for the script (e.g. `IT_SMB_ENCRYPT`).
    pub(crate) fn start_with(with_postgres: bool, script_env: &[(&str, &str)]) -> Self {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut cmd = Command::new("bash");
        cmd.arg(format!("{root}/scripts/test-env-up.sh"))
            .env_remove("IT_STATE_DIR")
            .env_remove("IT_PG_DATA")
            .env_remove("IT_SMB_ENCRYPT")
            .env_remove("IT_SMB_SIGNING")
            .envs(script_env.iter().copied())
            .stderr(Stdio::inherit());
        if with_postgres {
            cmd.env_remove("DATABASE_URL");
        }
        let out = cmd.output().expect("run scripts/test-env-up.sh");
        assert!(out.status.success(), "test-env-up failed");
        let envfile = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .lines()
            .last()
            .unwrap()
            .to_string();
        let mut vars = HashMap::new();
        for line in std::fs::read_to_string(&envfile).unwrap().lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                vars.insert(k.to_string(), v.trim_matches('\'').to_string());
            }
        }
        let state_dir = vars["IT_STATE_DIR"].clone();
        PrivateServers {
            vars,
            state_dir,
            started: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn env(&self) -> TestEnv {
        TestEnv {
            smb: SmbConfig {
                host: self.vars["IT_SMB_HOST"].clone(),
                port: self.vars["IT_SMB_PORT"].parse().unwrap(),
                share: self.vars["IT_SMB_SHARE"].clone(),
                username: self.vars["IT_SMB_USERNAME"].clone(),
                password: self.vars["IT_SMB_PASSWORD"].clone(),
                domain: String::new(),
                timeout: Duration::from_secs(5),
                signing: Default::default(),
            },
            share_path: PathBuf::from(&self.vars["IT_SMB_SHARE_PATH"]),
            database_url: self
                .vars
                .get("DATABASE_URL")
                .cloned()
                .unwrap_or_else(|| std::env::var("DATABASE_URL").unwrap()),
        }
    }

    fn port_open(&self) -> bool {
        std::net::TcpStream::connect((
            "127.0.0.1",
            self.vars["IT_SMB_PORT"].parse::<u16>().unwrap(),
        ))
        .is_ok()
    }

    /// Stops every smbd of this instance (they all run with its private config).
    async fn stop_smbd(&self) {
        let conf = &self.vars["IT_SMB_CONF"];
        let _ = Command::new("pkill").args(["-TERM", "-f", conf]).status();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.port_open() {
            assert!(tokio::time::Instant::now() < deadline, "smbd did not stop");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn start_smbd(&self) {
        let child = Command::new("smbd")
            .args([
                "--foreground",
                "--debug-stdout",
                "-s",
                &self.vars["IT_SMB_CONF"],
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smbd");
        self.started.lock().unwrap().push(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !self.port_open() {
            assert!(tokio::time::Instant::now() < deadline, "smbd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn restart_postgres(&self) {
        restart_postgres(&self.vars["IT_PG_BIN"], &self.vars["IT_PG_DATA"]);
    }

    /// `pg_ctl stop` of the private cluster: it stays down until [`Self::start_postgres`].
    fn stop_postgres(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w"]);
    }

    /// Starts the private cluster again on its port.
    fn start_postgres(&self) {
        let url = reqwest::Url::parse(&self.vars["DATABASE_URL"]).unwrap();
        let port = url.port().unwrap().to_string();
        // Inside the data folder: the state folder is not writable by postgres.
        let log = format!("{}/started-again.log", self.vars["IT_PG_DATA"]);
        self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            &log,
            "-o",
            &format!("-p {port}"),
        ]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{}/pg_ctl", self.vars["IT_PG_BIN"]))
            .args(["-D", &self.vars["IT_PG_DATA"]])
            .args(args)
            .current_dir("/")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {args:?} failed");
    }
}

impl PrivateServers {
    /// A coordinator under test on these servers.
    pub(crate) async fn app(&self, opts: Opts) -> crate::helpers::TestApp {
        spawn_app(Opts {
            env: Some(self.env()),
            ..opts
        })
        .await
    }
}

/// Triggers runs (Postgres may still be coming back: 5xx answers are
/// expected) until the test's one file is `success`, within 60 s.
async fn runs_until_one_success(app: &crate::helpers::TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = app.trigger().await;
        let rows = if code == 200 {
            app.files().await
        } else {
            Vec::new()
        };
        if rows.len() == 1 && rows[0].status == "success" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the file never reached success: {code} {body} {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `pg_ctl restart` of a private cluster, as its owner.
fn restart_postgres(bin: &str, data: &str) {
    let status = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            &format!("{bin}/pg_ctl"),
            "restart",
            "-D",
            data,
            "-m",
            "fast",
            "-w",
        ])
        .current_dir("/")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl restart failed");
}

impl Drop for PrivateServers {
    fn drop(&mut self) {
        let root = env!("CARGO_MANIFEST_DIR");
        let _ = Command::new("bash")
            .arg(format!("{root}/scripts/test-env-down.sh"))
            .arg(&self.state_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for mut child in self.started.lock().unwrap().drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The share goes away: the run fails (502) and IQube is told once; the share
/// comes back: the next run processes the file normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_down_then_back() {
    let servers = PrivateServers::start(false);
    let mut app = servers.app(Opts::default()).await;
    app.put("acme", "remit.csv", b"remittance").await;
    app.run_ok().await;
    app.put("acme", "later.csv", b"later").await;

    servers.stop_smbd().await;
    let (status, body) = app.trigger().await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "scan_failed");
    app.wait_background().await;
    app.eventually(30, "IQube told of the failed run", || async {
        !app.fakes.iqube_calls().is_empty()
    })
    .await;
    assert_eq!(app.fakes.iqube_calls()[0].body["event"], "run_failed");

    servers.start_smbd().await;
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["succeeded"], 1, "{body}");
    let sent = app.fakes.foi_names();
    assert_eq!(sent, ["remit.csv", "later.csv"]);
    assert_eq!(app.fakes.iqube_calls().len(), 1);
    app.eventually(30, "archived after the outage", || async {
        app.in_archive("acme", "later.csv")
    })
    .await;
    app.finish().await;
}

/// Postgres restarts while ITM holds a file: the outcome write is retried
/// until Postgres is back (issue 12 item 4), so the file reaches `success`
/// with exactly one FOI and one ITM call; no row is left `processing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_run_is_recovered() {
    let servers = PrivateServers::start(true);
    let app = servers
        .app(Opts {
            // ITM holds the file 2 s.
            foi_timeout_secs: 2.0,
            itm_timeout_secs: 3.0,
            ..Opts::default()
        })
        .await;
    app.fakes.set_itm(ItmBehavior::Slow(Duration::from_secs(2)));
    app.put("acme", "remit.csv", b"remittance").await;

    let run = app.trigger_until_itm_called().await;
    let (bin, data) = (
        servers.vars["IT_PG_BIN"].clone(),
        servers.vars["IT_PG_DATA"].clone(),
    );
    let restart = tokio::task::spawn_blocking(move || restart_postgres(&bin, &data));
    let resp = run.await.unwrap().expect("the run request is answered");
    restart.await.unwrap();
    let status = resp.status().as_u16();
    assert!(status == 200 || (500..600).contains(&status), "{status}");

    app.fakes.set_itm(ItmBehavior::Success);
    runs_until_one_success(&app).await;
    assert_eq!(app.fakes.itm_calls().len(), 1, "ITM is called once");
    assert_eq!(app.fakes.foi_calls().len(), 1, "FOI is called once");
    let processing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM files WHERE status = 'processing'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(processing, 0);
    servers.restart_postgres();
    app.finish().await;
}

/// Issue 12 item 4: Postgres goes down while ITM holds a file and stays
/// down: the answer is kept (journaled, so a crash meanwhile would not lose
/// it) and its write tried again; once Postgres is back it is written, and
/// the run answers, without calling FOI or ITM again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_kept_through_an_outage_is_written_without_a_second_call() {
    let servers = PrivateServers::start(true);
    let app = servers
        .app(Opts {
            foi_timeout_secs: 1.0,
            itm_timeout_secs: 10.0,
            ..Opts::default()
        })
        .await;
    // ITM holds the request until Postgres is down: its answer comes only
    // then, whatever the time a stop takes on a loaded machine.
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    app.fakes.set_itm(ItmBehavior::Held(release.clone()));
    app.put("acme", "remit.csv", b"remittance").await;

    let run = app.trigger_until_itm_called().await;
    tokio::task::block_in_place(|| servers.stop_postgres());
    release.add_permits(1);
    let journal = app.args.spool_dir.join(coordinator::process::kept::JOURNAL);
    app.eventually(30, "the answer kept in the journal", || async {
        std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("remit.csv"))
    })
    .await;
    tokio::task::block_in_place(|| servers.start_postgres());
    let resp = run.await.unwrap().expect("the run request is answered");
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (status, body["summary"]["succeeded"].as_i64()),
        (200, Some(1)),
        "{body}"
    );

    runs_until_one_success(&app).await;
    assert_eq!(app.fakes.itm_calls().len(), 1, "ITM is not called again");
    assert_eq!(app.fakes.foi_calls().len(), 1, "FOI is not called again");
    let id = app.files().await[0].id;
    let events: Vec<(String, serde_json::Value)> =
        sqlx::query_as("SELECT status, detail FROM file_events WHERE file_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&app.db)
            .await
            .unwrap();
    let statuses: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(statuses[..2], ["processing", "success"], "{events:?}");
    assert!(
        statuses[2..].iter().all(|s| *s == "archive_succeeded"),
        "{events:?}"
    );
    assert!(
        !std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .contains("remit.csv"),
        "written, so no longer kept"
    );
    servers.restart_postgres();
    app.finish().await;
}

/// smbd dies while a file is being read: the file is an error (nothing
/// claimed, nothing sent); once the share is back it is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smbd_killed_mid_read() {
    let servers = PrivateServers::start(false);
    let mut app = servers.app(Opts::default()).await;
    let big = vec![7u8; 128 << 20];
    app.put("acme", "big.bin", &big).await;
    let spool = app.args.spool_dir.clone();

    let url = format!("{}/api/v1/coordinator/runs", app.base_url);
    let run = tokio::spawn(
        app.http
            .post(url)
            .bearer_auth(app.token.clone().unwrap())
            .send(),
    );
    // Reading has started once the spool file holds some bytes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let spooled: u64 = std::fs::read_dir(&spool)
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if spooled > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the read never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    servers.stop_smbd().await;
    let resp = run.await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    if status == 200 {
        assert_eq!(body["summary"]["errors"], 1, "{body}");
    } else {
        assert_eq!(status, 502, "{body}");
    }
    assert_eq!(app.count("files").await, 0, "no claim without a whole read");
    assert!(app.fakes.foi_calls().is_empty());

    servers.start_smbd().await;
    let body = app.run_ok().await;
    assert_eq!(body["summary"]["succeeded"], 1, "{body}");
    let foi = app.fakes.foi_calls();
    assert_eq!((foi.len(), foi[0].size), (1, big.len()));
    app.finish().await;
}

/// The share goes away in the middle of an archive pass: the run already
/// answered 200; the next pass moves the rest; every file is archived once
/// with exactly one `archive_succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_gone_mid_archive() {
    let servers = PrivateServers::start(false);
    let mut app = servers.app(Opts::default()).await;
    app.put("acme", "seed.csv", b"seed").await;
    let dir = app.local(&format!("{}/acme", app.source_dir));
    for i in 0..600 {
        std::fs::write(dir.join(format!("f{i:03}.csv")), format!("{i}")).unwrap();
    }
    let (status, body) = app.trigger().await;
    assert_eq!(status, 200, "{body}");
    app.eventually(60, "the archive pass started", || async {
        !app.archive_names("acme").is_empty()
    })
    .await;
    servers.stop_smbd().await;
    app.wait_background().await;
    let moved = app.archive_names("acme").len();
    assert!(
        moved < 601,
        "the outage came too late to interrupt the pass"
    );

    servers.start_smbd().await;
    app.run_ok().await;
    // Every file once, with its own bytes. An outage between a name's
    // exclusive create and the placeholder's write can leave that name as an
    // empty file, which later moves skip (never removed: it cannot be told
    // from an empty archived file); nothing else may be there.
    let archive = app.local(&format!("{}/acme", app.archive_dir));
    let archived = || {
        let mut contents = Vec::new();
        let mut empty = Vec::new();
        for e in std::fs::read_dir(&archive).unwrap().flatten() {
            let bytes = std::fs::read(e.path()).unwrap();
            if bytes.is_empty() {
                empty.push(e.file_name().to_string_lossy().into_owned());
            } else {
                contents.push(String::from_utf8(bytes).unwrap());
            }
        }
        contents.sort();
        (contents, empty)
    };
    app.eventually(120, "all archived", || async { archived().0.len() >= 601 })
        .await;
    let (contents, empty) = archived();
    let mut want: Vec<String> = (0..600).map(|i| i.to_string()).collect();
    want.push("seed".into());
    want.sort();
    assert_eq!(contents, want, "each file once, none moved twice");
    assert!(empty.len() <= 2, "interrupted reservations: {empty:?}");
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM file_events WHERE status = 'archive_succeeded'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(events, 601);
    let unarchived: i64 =
        sqlx::query_scalar("SELECT count(*) FROM files WHERE archived_at IS NULL")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(unarchived, 0);
    app.finish().await;
}

/// Postgres restarts mid-run: the run is a row, not a session's lock, and
/// the restart counts as a heartbeat of every instance, so nothing is
/// presumed dead: the run goes on (its writes tried again) and every file
/// is sent once, the one in flight included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_sends_each_file_once() {
    let servers = PrivateServers::start(true);
    let mut app = servers
        .app(Opts {
            foi_timeout_secs: 1.0,
            itm_timeout_secs: 4.0,
            max_concurrent_files: 1,
            ..Opts::default()
        })
        .await;
    app.fakes.set_itm(ItmBehavior::Slow(Duration::from_secs(2)));
    for name in ["a.csv", "b.csv", "c.csv"] {
        app.put("acme", name, name.as_bytes()).await;
    }
    let run = app.trigger_until_itm_called().await;
    let first: uuid::Uuid = sqlx::query_scalar("SELECT id FROM runs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    tokio::task::spawn_blocking({
        let (bin, data) = (
            servers.vars["IT_PG_BIN"].clone(),
            servers.vars["IT_PG_DATA"].clone(),
        );
        move || restart_postgres(&bin, &data)
    })
    .await
    .unwrap();
    let resp = run.await.unwrap().expect("the run request is answered");
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    // The restart is not a death: the run carried on and finished all three.
    assert_eq!(
        (status, body["summary"]["succeeded"].as_i64()),
        (200, Some(3)),
        "{body}"
    );
    let (run_status, by_first): (String, i64) = sqlx::query_as(
        "SELECT status, (SELECT count(*) FROM files WHERE run_id = $1) FROM runs WHERE id = $1",
    )
    .bind(first)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((run_status.as_str(), by_first), ("completed", 3));

    app.fakes.set_itm(ItmBehavior::Success);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, _) = app.trigger().await;
        let rows = app.files().await;
        if code == 200 && rows.len() == 3 && rows.iter().all(|r| r.status == "success") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never finished: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut sent: Vec<String> = app
        .fakes
        .itm_calls()
        .into_iter()
        .map(|c| c.body["file_name"].as_str().unwrap().to_string())
        .collect();
    sent.sort();
    assert_eq!(sent, ["a.csv", "b.csv", "c.csv"], "each file sent once");
    app.wait_background().await;
    app.finish().await;
}
