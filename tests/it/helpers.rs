//! `spawn_app` and friends: each test gets its own database, its own folder on
//! the real Samba share, its own fakes and its own coordinator on a free port,
//! and talks to the coordinator over HTTP.

use crate::fakes::Fakes;
use coordinator::app::{Server, start};
use coordinator::config::{Config, ConfigArgs};
use coordinator::source::FileSource;
use coordinator::source::smb::{SmbConfig, SmbShare};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The servers the project's scripts started (scripts/test.sh).
#[derive(Clone, Debug)]
pub struct TestEnv {
    pub smb: SmbConfig,
    pub share_path: PathBuf,
    pub database_url: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the integration tests need the private Samba and Postgres. \
             Run them with `scripts/test.sh` (it installs and starts both), or start them with \
             `scripts/test-env-up.sh` and `source` the env file it prints."
        )
    })
}

impl TestEnv {
    pub fn from_env() -> Self {
        TestEnv {
            smb: SmbConfig {
                host: var("IT_SMB_HOST"),
                port: var("IT_SMB_PORT").parse().expect("IT_SMB_PORT"),
                share: var("IT_SMB_SHARE"),
                username: var("IT_SMB_USERNAME"),
                password: var("IT_SMB_PASSWORD"),
                domain: String::new(),
                timeout: Duration::from_secs(20),
                signing: Default::default(),
            },
            share_path: PathBuf::from(var("IT_SMB_SHARE_PATH")),
            database_url: var("DATABASE_URL"),
        }
    }
}

/// Per-test knobs of the coordinator.
#[derive(Debug, Clone)]
pub struct Opts {
    pub min_age_secs: f64,
    pub interval_secs: f64,
    pub foi_timeout_secs: f64,
    pub itm_timeout_secs: f64,
    pub max_concurrent_files: usize,
    pub foi_retries: u32,
    /// Overrides the fake FOI URL (e.g. the resetting listener).
    pub foi_url: Option<String>,
    pub api_token: Option<String>,
    /// Overrides the SMB password the coordinator uses (not the remitter's).
    pub smb_password: Option<String>,
    /// Overrides the SMB port the coordinator uses.
    pub smb_port: Option<u16>,
    pub read_failure_notify_after: u32,
    /// INSTANCE_HEARTBEAT_SECS.
    pub heartbeat_secs: f64,
    /// Servers other than the suite's (a private Samba or Postgres).
    pub env: Option<TestEnv>,
    /// Period of the background pass in `serve` (0: only after runs).
    pub housekeeping_interval_secs: f64,
    /// RUN_INTERVAL_SECS: period of scheduled runs (0: only on request).
    pub run_interval_secs: f64,
    /// Serve the fakes over TLS with this configuration (`https://` URLs).
    pub fakes_tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// `EXTRA_CA_CERTS_FILE` of the coordinator.
    pub extra_ca_file: Option<PathBuf>,
    /// More configuration flags (`--oidc-issuer`, ...).
    pub flags: Vec<(&'static str, String)>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            min_age_secs: 0.0,
            interval_secs: 0.0,
            foi_timeout_secs: 10.0,
            itm_timeout_secs: 10.0,
            max_concurrent_files: 4,
            foi_retries: 0,
            foi_url: None,
            api_token: Some(new_token()),
            smb_password: None,
            smb_port: None,
            read_failure_notify_after: 3,
            heartbeat_secs: 5.0,
            env: None,
            housekeeping_interval_secs: 0.0,
            run_interval_secs: 0.0,
            fakes_tls: None,
            extra_ca_file: None,
            flags: Vec::new(),
        }
    }
}

/// A coordinator under test with everything around it.
pub struct TestApp {
    pub base_url: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
    pub db: PgPool,
    db_name: String,
    admin_url: String,
    /// Share-relative folder of this test.
    pub root: String,
    pub source_dir: String,
    pub archive_dir: String,
    pub share_path: PathBuf,
    /// A separate SMB connection, writing as a remitter would.
    pub remitter_share: Arc<SmbShare>,
    pub fakes: Fakes,
    pub server: Server,
    /// The configuration the coordinator was started with.
    pub args: ConfigArgs,
    passes: tokio::sync::watch::Receiver<u64>,
}

fn db_url_with_name(admin: &str, name: &str) -> String {
    let mut u = reqwest::Url::parse(admin).expect("DATABASE_URL is a URL");
    u.set_path(&format!("/{name}"));
    u.to_string()
}

/// Everything around a coordinator, before it starts: database, share
/// folder, fakes and the configuration pointing at them.
pub struct Prepared {
    pub args: ConfigArgs,
    pub db_url: String,
    pub db_name: String,
    pub admin_url: String,
    pub root: String,
    pub source_dir: String,
    pub archive_dir: String,
    pub share_path: PathBuf,
    pub remitter_share: Arc<SmbShare>,
    pub fakes: Fakes,
    pub token: Option<String>,
}

impl Prepared {
    /// The variables that point the real binary at this test's database,
    /// share folder and fakes (all but the secrets, which callers pass as
    /// they like: in the environment or in files).
    pub fn binary_env(&self) -> Vec<(&'static str, String)> {
        let a = &self.args;
        vec![
            ("DATABASE_URL", self.db_url.clone()),
            ("SMB_HOST", a.smb_host.clone().unwrap()),
            ("SMB_PORT", a.smb_port.to_string()),
            ("SMB_SHARE", a.smb_share.clone().unwrap()),
            ("SMB_USERNAME", a.smb_username.clone().unwrap()),
            ("SMB_SOURCE_DIR", self.source_dir.clone()),
            ("SMB_ARCHIVE_DIR", self.archive_dir.clone()),
            ("FOI_API_URL", self.fakes.foi_url()),
            ("ITM_API_URL", self.fakes.itm_url()),
            ("IQUBE_API_URL", self.fakes.iqube_url()),
            ("STABLE_MIN_AGE_SECS", "0".into()),
            ("STABLE_CHECK_INTERVAL_SECS", "0".into()),
            (
                "INSTANCE_HEARTBEAT_SECS",
                a.instance_heartbeat_secs.as_secs_f64().to_string(),
            ),
            ("SPOOL_DIR", a.spool_dir.display().to_string()),
            (
                "AUDIT_KEY",
                a.base
                    .audit
                    .audit_key
                    .as_ref()
                    .map(|k| k.expose().to_string())
                    .unwrap_or_default(),
            ),
        ]
    }

    /// A connection to the test's database.
    pub async fn db(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.db_url)
            .await
            .expect("connect to the test database")
    }
}

/// Logs of the coordinators under test: into `$IT_LOG_DIR` when set (the
/// test command greps them for secrets afterwards), else to stderr.
pub fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let Ok(dir) = std::env::var("IT_LOG_DIR") else {
        coordinator::telemetry::init();
        return;
    };
    let path = PathBuf::from(dir).join(format!("it-{}.log", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open the test log file");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("debug,pavao=off"))
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
}

/// A fresh API token carrying `IT_SECRET_MARK`, so the secret check finds any leak.
pub fn new_token() -> String {
    let mark = std::env::var("IT_SECRET_MARK").unwrap_or_else(|_| "tok".into());
    format!("{mark}-{}", Uuid::new_v4().simple())
}

/// Copies a coordinator process's log into `$IT_LOG_DIR` for the secret check.
pub fn keep_log(text: &str) {
    if let Ok(dir) = std::env::var("IT_LOG_DIR") {
        let path = PathBuf::from(dir).join(format!("serve-{}.log", Uuid::new_v4().simple()));
        let _ = std::fs::write(path, text);
    }
}

pub async fn spawn_app(opts: Opts) -> TestApp {
    let p = prepare(opts).await;
    let cfg = Config::from_args(p.args.clone()).expect("valid test configuration");
    let server = start(&cfg).await.expect("start the coordinator");
    let passes = server.engine.passes_done();
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect(&p.db_url)
        .await
        .expect("connect to the test database");
    TestApp {
        base_url: format!("http://{}", server.addr),
        http: reqwest::Client::new(),
        token: p.token,
        db,
        db_name: p.db_name,
        admin_url: p.admin_url,
        root: p.root,
        source_dir: p.source_dir,
        archive_dir: p.archive_dir,
        share_path: p.share_path,
        remitter_share: p.remitter_share,
        fakes: p.fakes,
        server,
        args: p.args,
        passes,
    }
}

pub async fn prepare(opts: Opts) -> Prepared {
    init_logs();
    let env = opts.env.clone().unwrap_or_else(TestEnv::from_env);
    let id = Uuid::new_v4().simple().to_string();
    let db_name = format!("it_{id}");
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&env.database_url)
        .await
        .expect("connect to the test Postgres (DATABASE_URL)");
    sqlx::query(&format!("CREATE DATABASE \"{db_name}\""))
        .execute(&admin)
        .await
        .expect("create the test database");
    admin.close().await;
    let db_url = db_url_with_name(&env.database_url, &db_name);

    let root = format!("it-{id}");
    let source_dir = format!("{root}/source");
    let archive_dir = format!("{root}/archive");
    let remitter_share = Arc::new(SmbShare::new(env.smb.clone()));
    remitter_share
        .mkdir_all(&source_dir)
        .await
        .expect("create the test folder on the share over SMB");

    let fakes = Fakes::start(opts.fakes_tls.clone()).await;
    // Parsed from flags as the binary parses its variables (the
    // environment of the test process is not read).
    let spool_dir = std::env::temp_dir().join(format!("coordinator-spool-{id}"));
    let mut flags = vec![
        ("--database-url", db_url.clone()),
        (
            "--env",
            if opts.api_token.is_some() {
                "dev"
            } else {
                "local"
            }
            .into(),
        ),
        ("--bind-addr", "127.0.0.1:0".into()),
        ("--smb-host", env.smb.host.clone()),
        (
            "--smb-port",
            opts.smb_port.unwrap_or(env.smb.port).to_string(),
        ),
        ("--smb-share", env.smb.share.clone()),
        ("--smb-username", env.smb.username.clone()),
        (
            "--smb-password",
            opts.smb_password
                .clone()
                .unwrap_or_else(|| env.smb.password.clone()),
        ),
        ("--smb-source-dir", source_dir.clone()),
        ("--smb-archive-dir", archive_dir.clone()),
        (
            "--foi-api-url",
            opts.foi_url.clone().unwrap_or_else(|| fakes.foi_url()),
        ),
        ("--itm-api-url", fakes.itm_url()),
        ("--iqube-api-url", fakes.iqube_url()),
        ("--foi-timeout-secs", opts.foi_timeout_secs.to_string()),
        ("--foi-retries", opts.foi_retries.to_string()),
        ("--itm-timeout-secs", opts.itm_timeout_secs.to_string()),
        ("--iqube-timeout-secs", "5".into()),
        ("--stable-min-age-secs", opts.min_age_secs.to_string()),
        (
            "--stable-check-interval-secs",
            opts.interval_secs.to_string(),
        ),
        (
            "--max-concurrent-files",
            opts.max_concurrent_files.to_string(),
        ),
        (
            "--housekeeping-interval-secs",
            opts.housekeeping_interval_secs.to_string(),
        ),
        ("--run-interval-secs", opts.run_interval_secs.to_string()),
        ("--spool-dir", spool_dir.display().to_string()),
        (
            "--read-failure-notify-after",
            opts.read_failure_notify_after.to_string(),
        ),
        ("--instance-heartbeat-secs", opts.heartbeat_secs.to_string()),
    ];
    if let Some(token) = &opts.api_token {
        flags.push(("--api-token", token.clone()));
    }
    // Marked, so the secret check finds the key in any log.
    flags.push(("--audit-key", new_token()));
    if let Some(ca) = &opts.extra_ca_file {
        flags.push(("--extra-ca-certs-file", ca.display().to_string()));
    }
    flags.extend(opts.flags.iter().cloned());
    let args = ConfigArgs::from_flags(flags.iter().map(|(f, v)| format!("{f}={v}")))
        .expect("valid test configuration flags");
    Prepared {
        args,
        db_url,
        db_name,
        admin_url: env.database_url,
        root,
        source_dir,
        archive_dir,
        share_path: env.share_path,
        remitter_share,
        fakes,
        token: opts.api_token,
    }
}

/// A row of `files`.
#[derive(Debug, Clone)]
pub struct FileRow {
    pub id: i64,
    pub remitter: String,
    pub file_name: String,
    pub base_name: String,
    pub md5: String,
    pub size: i64,
    pub status: String,
    pub archived: bool,
}

impl TestApp {
    /// Writes a file into a remitter folder over SMB.
    pub async fn put(&self, remitter: &str, name: &str, bytes: &[u8]) {
        let dir = format!("{}/{remitter}", self.source_dir);
        self.remitter_share
            .mkdir_all(&dir)
            .await
            .expect("mkdir over SMB");
        self.remitter_share
            .write_file(&format!("{dir}/{name}"), bytes.to_vec())
            .await
            .expect("write over SMB");
    }

    /// `POST /api/v1/coordinator/runs` with the token.
    pub async fn trigger(&self) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/api/v1/coordinator/runs", self.base_url));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("call the coordinator");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON answer"))
    }

    /// `POST /api/v1/coordinator/files/{id}/retry` with a reason; expects 200.
    pub async fn retry(&self, id: i64) {
        let resp = self
            .http
            .post(format!(
                "{}/api/v1/coordinator/files/{id}/retry",
                self.base_url
            ))
            .bearer_auth(self.token.as_deref().unwrap_or_default())
            .json(&serde_json::json!({"reason": "send it again"}))
            .send()
            .await
            .expect("call the coordinator");
        assert_eq!(resp.status(), 200);
    }

    /// Triggers a run without waiting for its answer; returns once ITM has
    /// received a call (the run is then inside a file's downstream calls).
    pub async fn trigger_until_itm_called(
        &self,
    ) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        let url = format!("{}/api/v1/coordinator/runs", self.base_url);
        let mut req = self.http.post(url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let run = tokio::spawn(req.send());
        self.eventually(30, "ITM reached", || async {
            !self.fakes.itm_calls().is_empty()
        })
        .await;
        run
    }

    /// Triggers a run, expects 200, and waits for its background pass.
    pub async fn run_ok(&mut self) -> Value {
        let (status, body) = self.trigger().await;
        assert_eq!(status, 200, "run answered {status}: {body}");
        assert_eq!(body["status"], "completed", "{body}");
        self.wait_background().await;
        body
    }

    /// Waits until every background pass scheduled so far has finished.
    pub async fn wait_background(&mut self) {
        let runs: i64 = sqlx::query_scalar(
            // Dry runs schedule no pass.
            "SELECT count(*) FROM runs WHERE status <> 'running' AND NOT dry_run AND instance = $1",
        )
        .bind(self.server.engine.instance())
        .fetch_one(&self.db)
        .await
        .unwrap();
        let want = runs as u64;
        tokio::time::timeout(
            Duration::from_secs(300),
            self.passes.wait_for(|n| *n >= want),
        )
        .await
        .expect("background pass did not finish within 300 s")
        .expect("engine gone");
    }

    pub async fn files(&self) -> Vec<FileRow> {
        sqlx::query("SELECT id, remitter, file_name, base_name, md5, size, status, archived_at IS NOT NULL AS archived FROM files ORDER BY id")
            .fetch_all(&self.db)
            .await
            .unwrap()
            .into_iter()
            .map(|r| FileRow {
                id: r.get("id"),
                remitter: r.get("remitter"),
                file_name: r.get("file_name"),
                base_name: r.get("base_name"),
                md5: r.get("md5"),
                size: r.get("size"),
                status: r.get("status"),
                archived: r.get("archived"),
            })
            .collect()
    }

    /// Statuses of a file's events, in order.
    pub async fn events(&self, file_id: i64) -> Vec<String> {
        sqlx::query_scalar("SELECT status FROM file_events WHERE file_id = $1 ORDER BY id")
            .bind(file_id)
            .fetch_all(&self.db)
            .await
            .unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Backing path of a share-relative path.
    pub fn local(&self, rel: &str) -> PathBuf {
        self.share_path.join(rel)
    }

    pub fn in_source(&self, remitter: &str, name: &str) -> bool {
        self.local(&format!("{}/{remitter}/{name}", self.source_dir))
            .is_file()
    }

    pub fn in_archive(&self, remitter: &str, name: &str) -> bool {
        self.local(&format!("{}/{remitter}/{name}", self.archive_dir))
            .is_file()
    }

    /// Names in the archive folder of a remitter.
    pub fn archive_names(&self, remitter: &str) -> Vec<String> {
        let dir = self.local(&format!("{}/{remitter}", self.archive_dir));
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Polls `check` until it holds or `secs` pass.
    pub async fn eventually<F, Fut>(&self, secs: u64, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if check().await {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("not within {secs}s: {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a second coordinator on the same database and share.
    pub async fn start_another(&self) -> Server {
        let mut args = self.args.clone();
        // Its own INSTANCE_ID: two live processes may not share one.
        args.instance_id = format!("another-{}", uuid::Uuid::new_v4().simple());
        let cfg = Config::from_args(args).expect("valid test configuration");
        start(&cfg).await.expect("start another coordinator")
    }

    /// Stops the coordinator and removes the test's database and share folder
    /// (kept when IT_KEEP_ARTIFACTS=1).
    pub async fn finish(self) {
        self.server.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.server.done).await;
        self.db.close().await;
        if std::env::var("IT_KEEP_ARTIFACTS").as_deref() == Ok("1") {
            eprintln!(
                "kept: database {} and share folder {}",
                self.db_name,
                self.share_path.join(&self.root).display()
            );
            return;
        }
        let _ = std::fs::remove_dir_all(self.share_path.join(&self.root));
        let _ = std::fs::remove_dir_all(&self.args.spool_dir);
        drop_database(&self.admin_url, &self.db_name).await;
    }
}

/// Drops a test's database (best effort: cleanup must not fail a test).
pub async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(admin) = PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}

/// The summary entry of one file.
pub fn decision_of<'a>(body: &'a Value, remitter: &str, name: &str) -> &'a Value {
    body["summary"]["files"]
        .as_array()
        .and_then(|fs| {
            fs.iter()
                .find(|f| f["remitter"] == remitter && f["file_name"] == name)
        })
        .unwrap_or_else(|| panic!("no summary entry for {remitter}/{name} in {body}"))
}

/// Hex MD5 of bytes.
pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(bytes))
}

/// Joins the instances as `id` (a fresh incarnation, a heartbeat of a
/// minute: alive for the test) and returns its incarnation.
pub async fn join_instance(db: &PgPool, id: &str) -> Uuid {
    use coordinator::store::{InstanceInfo, InstanceStore, Joined, PgStore};
    let me = InstanceInfo {
        instance_id: id.into(),
        incarnation: Uuid::new_v4(),
        version: "test".into(),
        heartbeat: Duration::from_secs(60),
        max_concurrent_files: 4,
    };
    let joined = PgStore::from_pool(db.clone()).join(&me).await.unwrap();
    assert_eq!(joined, Joined::Yes);
    me.incarnation
}

/// A real run `running`, owned by `owner` (instance `instance`), as its
/// starter records it; returns its id.
pub async fn running_run(db: &PgPool, owner: Uuid, instance: &str) -> Uuid {
    let run_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO runs (id, status, trigger, instance, owner) VALUES ($1, 'running', 'test', $2, $3)",
    )
    .bind(run_id)
    .bind(instance)
    .bind(owner)
    .execute(db)
    .await
    .unwrap();
    run_id
}

/// A migrated test database with no coordinator running against it, for
/// tests that drive the store alone (no instance's taker or adopter acts
/// behind their back). Dropped by [`StoreDb::finish`].
pub struct StoreDb {
    pub store: coordinator::store::PgStore,
    pub db: PgPool,
    admin_url: String,
    db_name: String,
}

impl StoreDb {
    pub async fn new() -> Self {
        let p = prepare(Opts::default()).await;
        let store = coordinator::app::migrated_store(&p.db_url)
            .await
            .expect("migrate the test database");
        let db = store.pool().clone();
        StoreDb {
            store,
            db,
            admin_url: p.admin_url,
            db_name: p.db_name,
        }
    }

    pub async fn finish(self) {
        self.db.close().await;
        drop_database(&self.admin_url, &self.db_name).await;
    }
}
