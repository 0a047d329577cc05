//! One configuration struct, read from the environment (CONTRACT §3) with a
//! command-line flag able to override each variable. Secrets may come from
//! `<VAR>_FILE`; they are kept out of `Debug` output and logs.

use crate::scan::names::{DEFAULT_PATTERNS, TempNameFilter};
use crate::source::smb::SmbConfig;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A configuration problem, naming the variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {var}: {message}")]
pub struct ConfigError {
    /// The environment variable (or its `_FILE` twin) at fault.
    pub var: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Deployment environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Env {
    /// A developer's machine: the API token may be absent.
    Local,
    /// A shared development deployment.
    Dev,
    /// Production.
    Prod,
}

/// The database connection string; shown as `<redacted>` in `Debug`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The database part of the environment (all `migrate` needs).
#[derive(Debug, Args, Clone, Default)]
pub struct DbArgs {
    /// Postgres connection string [env: DATABASE_URL] (secret; or DATABASE_URL_FILE)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding DATABASE_URL [env: DATABASE_URL_FILE]
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
}

/// Every variable of CONTRACT §3, as flags with environment fallbacks.
#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// local, dev or prod [default: prod]
    #[arg(long, env = "ENV")]
    pub env: Option<String>,
    /// HTTP listen address [default: 0.0.0.0:8080]
    #[arg(long, env = "BIND_ADDR")]
    pub bind_addr: Option<String>,
    /// Bearer token for every /api/ route; required unless ENV=local (secret)
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// File holding API_TOKEN
    #[arg(long, env = "API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// SMB server host (required)
    #[arg(long, env = "SMB_HOST")]
    pub smb_host: Option<String>,
    /// SMB server port [default: 445]
    #[arg(long, env = "SMB_PORT")]
    pub smb_port: Option<String>,
    /// Share name (required)
    #[arg(long, env = "SMB_SHARE")]
    pub smb_share: Option<String>,
    /// NTLM user name (required)
    #[arg(long, env = "SMB_USERNAME")]
    pub smb_username: Option<String>,
    /// NTLM password (secret; required, or SMB_PASSWORD_FILE)
    #[arg(long, env = "SMB_PASSWORD", hide_env_values = true)]
    pub smb_password: Option<String>,
    /// File holding SMB_PASSWORD
    #[arg(long, env = "SMB_PASSWORD_FILE")]
    pub smb_password_file: Option<PathBuf>,
    /// NTLM domain [default: empty]
    #[arg(long, env = "SMB_DOMAIN")]
    pub smb_domain: Option<String>,
    /// Folder of remitter folders, relative to the share root [default: share root]
    #[arg(long, env = "SMB_SOURCE_DIR")]
    pub smb_source_dir: Option<String>,
    /// Archive folder, relative to the share root [default: archive]
    #[arg(long, env = "SMB_ARCHIVE_DIR")]
    pub smb_archive_dir: Option<String>,
    /// Bound on each SMB metadata call and each transfer request, seconds [default: 30]
    #[arg(long, env = "SMB_TIMEOUT_SECS")]
    pub smb_timeout_secs: Option<String>,
    /// FOI extraction endpoint; {remitter} is replaced (required)
    #[arg(long, env = "FOI_API_URL")]
    pub foi_api_url: Option<String>,
    /// ITM submission endpoint (required)
    #[arg(long, env = "ITM_API_URL")]
    pub itm_api_url: Option<String>,
    /// IQube notification endpoint (required)
    #[arg(long, env = "IQUBE_API_URL")]
    pub iqube_api_url: Option<String>,
    /// Whole-request timeout of a FOI call, seconds [default: 120]
    #[arg(long, env = "FOI_TIMEOUT_SECS")]
    pub foi_timeout_secs: Option<String>,
    /// Retries of a FOI call after a timeout, refused or reset connection [default: 2]
    #[arg(long, env = "FOI_RETRIES")]
    pub foi_retries: Option<String>,
    /// Whole-request timeout of an ITM call, seconds [default: 30]
    #[arg(long, env = "ITM_TIMEOUT_SECS")]
    pub itm_timeout_secs: Option<String>,
    /// PEM file of CA certificates trusted for https downstream URLs, in addition to the system's [default: none]
    #[arg(long, env = "EXTRA_CA_CERTS_FILE")]
    pub extra_ca_certs_file: Option<PathBuf>,
    /// Whole-request timeout of an IQube call, seconds [default: 10]
    #[arg(long, env = "IQUBE_TIMEOUT_SECS")]
    pub iqube_timeout_secs: Option<String>,
    /// Minimum age of a file's newest timestamp by the server's clock, seconds [default: 60]
    #[arg(long, env = "STABLE_MIN_AGE_SECS")]
    pub stable_min_age_secs: Option<String>,
    /// Gap between the two looks of the stability check, seconds [default: 5]
    #[arg(long, env = "STABLE_CHECK_INTERVAL_SECS")]
    pub stable_check_interval_secs: Option<String>,
    /// Files with FOI and ITM at once in one run (a quarter more are downloaded and claimed ahead) [default: 4]
    #[arg(long, env = "MAX_CONCURRENT_FILES")]
    pub max_concurrent_files: Option<String>,
    /// Comma-separated temp-name patterns (prefix*, *suffix, exact) [default: CONTRACT §5 list]
    #[arg(long, env = "IGNORE_NAME_PATTERNS")]
    pub ignore_name_patterns: Option<String>,
    /// Retired: claims are taken over when their instance is dead (three missed heartbeats), never by age. Accepted and ignored, with a warning
    #[arg(long, env = "CLAIM_LEASE_SECS", hide = true)]
    pub claim_lease_secs: Option<String>,
    /// Failed reads of one file version before IQube is told, once [default: 3]
    #[arg(long, env = "READ_FAILURE_NOTIFY_AFTER")]
    pub read_failure_notify_after: Option<String>,
    /// Local folder for spooling downloads [default: the system temp folder]
    #[arg(long, env = "SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Seconds between background housekeeping passes in `serve`; 0 = only after runs [default: 300]
    #[arg(long, env = "HOUSEKEEPING_INTERVAL_SECS")]
    pub housekeeping_interval_secs: Option<String>,
    /// Seconds between runs `serve` starts by itself (trigger `schedule`); 0 = only on request [default: 0]
    #[arg(long, env = "RUN_INTERVAL_SECS")]
    pub run_interval_secs: Option<String>,
    /// Days a finished run keeps its per-file list (its counts are kept for good); 0 = forever [default: 30]
    #[arg(long, env = "RUN_DETAIL_RETENTION_DAYS")]
    pub run_detail_retention_days: Option<String>,
    /// This process's name among the instances on one database; two live processes may not share one [default: <host name>:<process id>]
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Seconds between heartbeats; an instance not heard from for three is dead and its claims are taken over [default: 5]
    #[arg(long, env = "INSTANCE_HEARTBEAT_SECS")]
    pub instance_heartbeat_secs: Option<String>,
}

/// The validated configuration of a coordinator process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Deployment environment.
    pub env: Env,
    /// HTTP listen address.
    pub bind_addr: SocketAddr,
    /// Required bearer token, if any.
    pub api_token: Option<Secret>,
    /// Postgres connection string.
    pub database_url: Secret,
    /// The share.
    pub smb: SmbConfig,
    /// Folder of remitter folders (share-relative, may be empty).
    pub source_dir: String,
    /// Archive folder (share-relative).
    pub archive_dir: String,
    /// FOI endpoint template.
    pub foi_url: String,
    /// ITM endpoint.
    pub itm_url: String,
    /// IQube endpoint.
    pub iqube_url: String,
    /// FOI whole-request timeout.
    pub foi_timeout: Duration,
    /// FOI retries on transport failures.
    pub foi_retries: u32,
    /// ITM whole-request timeout.
    pub itm_timeout: Duration,
    /// IQube whole-request timeout.
    pub iqube_timeout: Duration,
    /// CA certificates trusted for HTTPS downstreams besides the system's.
    pub extra_ca_certs: Vec<reqwest::Certificate>,
    /// Policy A minimum age.
    pub stable_min_age: Duration,
    /// Policy A gap between looks.
    pub stable_check_interval: Duration,
    /// Files processed at once.
    pub max_concurrent_files: usize,
    /// Temp-name filter.
    pub ignore: TempNameFilter,
    /// Where downloads are spooled.
    pub spool_dir: PathBuf,
    /// Failed reads of one version before IQube is told.
    pub read_failure_notify_after: u32,
    /// Period of the background housekeeping pass (None: only after runs).
    pub housekeeping_interval: Option<Duration>,
    /// Period of the runs `serve` starts by itself (None: only on request).
    pub run_interval: Option<Duration>,
    /// How long a finished run keeps its per-file list (None: forever).
    pub run_detail_retention: Option<Duration>,
    /// `INSTANCE_ID`.
    pub instance_id: String,
    /// `INSTANCE_HEARTBEAT_SECS`.
    pub instance_heartbeat: Duration,
    /// Settings accepted but no longer used, said once at start-up.
    retired: Vec<String>,
}

/// The default `INSTANCE_ID`: host name and process id (CONTRACT §10).
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "coordinator".into());
    format!("{host}:{}", std::process::id())
}

fn instance_id(v: Option<String>) -> Result<String, ConfigError> {
    const VAR: &str = "INSTANCE_ID";
    let Some(id) = v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) else {
        return Ok(default_instance_id());
    };
    if id.chars().count() > 200 || id.chars().any(char::is_control) {
        return Err(err(
            VAR,
            "must be at most 200 characters, without control characters",
        ));
    }
    Ok(id)
}

fn secret(
    value: Option<String>,
    file: Option<PathBuf>,
    var: &'static str,
    file_var: &'static str,
) -> Result<Option<Secret>, ConfigError> {
    match (value.filter(|v| !v.is_empty()), file) {
        (Some(_), Some(_)) => Err(err(var, format!("set {var} or {file_var}, not both"))),
        (Some(v), None) => Ok(Some(Secret(v))),
        (None, Some(path)) => {
            let raw = std::fs::read_to_string(&path)
                .map_err(|e| err(file_var, format!("cannot read {}: {e}", path.display())))?;
            let v = raw
                .strip_suffix("\r\n")
                .or_else(|| raw.strip_suffix('\n'))
                .unwrap_or(&raw);
            if v.is_empty() {
                return Err(err(file_var, format!("{} is empty", path.display())));
            }
            Ok(Some(Secret(v.to_string())))
        }
        (None, None) => Ok(None),
    }
}

fn required(v: Option<String>, var: &'static str) -> Result<String, ConfigError> {
    v.filter(|s| !s.trim().is_empty())
        .ok_or_else(|| err(var, "required but not set"))
}

fn parsed<T: FromStr>(v: Option<String>, var: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match v.filter(|s| !s.trim().is_empty()) {
        None => Ok(default),
        Some(s) => s
            .trim()
            .parse()
            .map_err(|e| err(var, format!("invalid value {s:?}: {e}"))),
    }
}

fn secs(v: Option<String>, var: &'static str, default: f64) -> Result<Duration, ConfigError> {
    let f: f64 = parsed(v, var, default)?;
    if !(0.0..=31_536_000.0).contains(&f) {
        return Err(err(
            var,
            format!("{f} is not a number of seconds from 0 to one year"),
        ));
    }
    Ok(Duration::from_secs_f64(f))
}

fn url(v: Option<String>, var: &'static str) -> Result<String, ConfigError> {
    let s = required(v, var)?;
    let probe = s.replace("{remitter}", "r");
    let u = reqwest::Url::parse(&probe).map_err(|e| err(var, format!("invalid URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(err(var, "URL must be http or https"));
    }
    Ok(s)
}

/// The certificates of `EXTRA_CA_CERTS_FILE`: at least one, or an error.
fn ca_certs(path: Option<PathBuf>) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    const VAR: &str = "EXTRA_CA_CERTS_FILE";
    let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(&path)
        .map_err(|e| err(VAR, format!("cannot read {}: {e}", path.display())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| err(VAR, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(
            VAR,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn rel_dir(v: Option<String>, default: &str) -> String {
    let s = v.unwrap_or_else(|| default.to_string()).replace('\\', "/");
    crate::source::join(&[&s])
}

impl DbArgs {
    /// The database URL, from the variable or its `_FILE`.
    pub fn database_url(self) -> Result<Secret, ConfigError> {
        secret(
            self.database_url,
            self.database_url_file,
            "DATABASE_URL",
            "DATABASE_URL_FILE",
        )?
        .ok_or_else(|| err("DATABASE_URL", "required but not set"))
    }
}

impl Config {
    /// Validates the arguments; the first problem found is returned.
    pub fn from_args(a: ConfigArgs) -> Result<Self, ConfigError> {
        let env = match a.env.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None | Some("prod") => Env::Prod,
            Some("dev") => Env::Dev,
            Some("local") => Env::Local,
            Some(other) => return Err(err("ENV", format!("{other:?} is not local, dev or prod"))),
        };
        let bind_addr = parsed(
            a.bind_addr,
            "BIND_ADDR",
            SocketAddr::from(([0, 0, 0, 0], 8080)),
        )?;
        let api_token = secret(a.api_token, a.api_token_file, "API_TOKEN", "API_TOKEN_FILE")?;
        if api_token.is_none() && env != Env::Local {
            return Err(err(
                "API_TOKEN",
                "required unless ENV=local (or set API_TOKEN_FILE)",
            ));
        }
        let database_url = a.db.database_url()?;
        let smb_password = secret(
            a.smb_password,
            a.smb_password_file,
            "SMB_PASSWORD",
            "SMB_PASSWORD_FILE",
        )?
        .ok_or_else(|| err("SMB_PASSWORD", "required but not set"))?;
        let smb = SmbConfig {
            host: required(a.smb_host, "SMB_HOST")?,
            port: parsed(a.smb_port, "SMB_PORT", 445u16)?,
            share: required(a.smb_share, "SMB_SHARE")?,
            username: required(a.smb_username, "SMB_USERNAME")?,
            password: smb_password.0,
            domain: a.smb_domain.unwrap_or_default(),
            timeout: secs(a.smb_timeout_secs, "SMB_TIMEOUT_SECS", 30.0)?,
        };
        if smb.timeout.is_zero() {
            return Err(err("SMB_TIMEOUT_SECS", "must be more than 0"));
        }
        let max_concurrent_files = parsed(a.max_concurrent_files, "MAX_CONCURRENT_FILES", 4usize)?;
        if !(1..=256).contains(&max_concurrent_files) {
            return Err(err("MAX_CONCURRENT_FILES", "must be from 1 to 256"));
        }
        let ignore = TempNameFilter::parse(
            a.ignore_name_patterns
                .as_deref()
                .unwrap_or(DEFAULT_PATTERNS),
        )
        .map_err(|e| err("IGNORE_NAME_PATTERNS", e.to_string()))?;
        let housekeeping = secs(
            a.housekeeping_interval_secs,
            "HOUSEKEEPING_INTERVAL_SECS",
            300.0,
        )?;
        let run_interval = secs(a.run_interval_secs, "RUN_INTERVAL_SECS", 0.0)?;
        let source_dir = rel_dir(a.smb_source_dir, "");
        let archive_dir = rel_dir(a.smb_archive_dir, "archive");
        if archive_dir.is_empty() {
            return Err(err("SMB_ARCHIVE_DIR", "must not be the share root"));
        }
        if archive_dir == source_dir {
            return Err(err("SMB_ARCHIVE_DIR", "must differ from SMB_SOURCE_DIR"));
        }
        let timeout = |v, var, d| {
            let t = secs(v, var, d)?;
            if t.is_zero() {
                return Err(err(var, "must be more than 0"));
            }
            Ok(t)
        };
        let cfg = Self {
            env,
            bind_addr,
            api_token,
            database_url,
            smb,
            source_dir,
            archive_dir,
            foi_url: url(a.foi_api_url, "FOI_API_URL")?,
            itm_url: url(a.itm_api_url, "ITM_API_URL")?,
            iqube_url: url(a.iqube_api_url, "IQUBE_API_URL")?,
            foi_timeout: timeout(a.foi_timeout_secs, "FOI_TIMEOUT_SECS", 120.0)?,
            foi_retries: parsed(a.foi_retries, "FOI_RETRIES", 2u32)?.min(10),
            itm_timeout: timeout(a.itm_timeout_secs, "ITM_TIMEOUT_SECS", 30.0)?,
            iqube_timeout: timeout(a.iqube_timeout_secs, "IQUBE_TIMEOUT_SECS", 10.0)?,
            extra_ca_certs: ca_certs(a.extra_ca_certs_file)?,
            stable_min_age: secs(a.stable_min_age_secs, "STABLE_MIN_AGE_SECS", 60.0)?,
            stable_check_interval: secs(
                a.stable_check_interval_secs,
                "STABLE_CHECK_INTERVAL_SECS",
                5.0,
            )?,
            max_concurrent_files,
            ignore,
            spool_dir: a.spool_dir.unwrap_or_else(std::env::temp_dir),
            read_failure_notify_after: parsed(
                a.read_failure_notify_after,
                "READ_FAILURE_NOTIFY_AFTER",
                3u32,
            )?
            .max(1),
            housekeeping_interval: (!housekeeping.is_zero()).then_some(housekeeping),
            run_interval: (!run_interval.is_zero()).then_some(run_interval),
            run_detail_retention: {
                let days = parsed(
                    a.run_detail_retention_days,
                    "RUN_DETAIL_RETENTION_DAYS",
                    30u32,
                )?;
                (days > 0).then(|| Duration::from_secs(u64::from(days) * 86_400))
            },
            retired: a
                .claim_lease_secs
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    format!(
                        "CLAIM_LEASE_SECS={v} is ignored: a claim is taken over only when its \
                         instance is dead (three missed INSTANCE_HEARTBEAT_SECS), never by age, \
                         so a slow FOI call is never sent twice; remove the variable"
                    )
                })
                .into_iter()
                .collect(),
            instance_id: instance_id(a.instance_id)?,
            instance_heartbeat: {
                let beat = secs(a.instance_heartbeat_secs, "INSTANCE_HEARTBEAT_SECS", 5.0)?;
                if !(0.1..=300.0).contains(&beat.as_secs_f64()) {
                    return Err(err(
                        "INSTANCE_HEARTBEAT_SECS",
                        "must be from 0.1 to 300 seconds",
                    ));
                }
                beat
            },
        };
        Ok(cfg)
    }

    /// Warnings for settings that are accepted but no longer mean anything.
    pub fn warnings(&self) -> &[String] {
        &self.retired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> ConfigArgs {
        ConfigArgs {
            db: DbArgs {
                database_url: Some("postgres://u:dbpw@h/db".into()),
                database_url_file: None,
            },
            api_token: Some("tok".into()),
            smb_host: Some("127.0.0.1".into()),
            smb_share: Some("s".into()),
            smb_username: Some("u".into()),
            smb_password: Some("pw".into()),
            foi_api_url: Some("http://foi/extract/{remitter}".into()),
            itm_api_url: Some("http://itm/submit".into()),
            iqube_api_url: Some("http://iqube/notify".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_apply() {
        let c = Config::from_args(full()).unwrap();
        assert_eq!(c.env, Env::Prod);
        assert_eq!(c.smb.port, 445);
        assert_eq!(c.source_dir, "");
        assert_eq!(c.archive_dir, "archive");
        assert_eq!(c.bind_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.max_concurrent_files, 4);
        assert_eq!(c.smb.timeout, Duration::from_secs(30));
        assert_eq!(c.foi_timeout, Duration::from_secs(120));
        assert_eq!(c.foi_retries, 2);
        assert_eq!(c.itm_timeout, Duration::from_secs(30));
        assert_eq!(c.iqube_timeout, Duration::from_secs(10));
        assert_eq!(c.stable_min_age, Duration::from_secs(60));
        assert_eq!(c.stable_check_interval, Duration::from_secs(5));
        assert!(c.warnings().is_empty());
        assert_eq!(c.read_failure_notify_after, 3);
        assert_eq!(c.housekeeping_interval, Some(Duration::from_secs(300)));
        assert_eq!(c.run_interval, None, "runs only on request by default");
        assert_eq!(
            c.run_detail_retention,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(c.spool_dir, std::env::temp_dir());
        assert!(c.extra_ca_certs.is_empty());
        assert_eq!(c.instance_heartbeat, Duration::from_secs(5));
        let pid = format!(":{}", std::process::id());
        assert!(
            c.instance_id.ends_with(&pid) && c.instance_id.len() > pid.len(),
            "host name and process id: {}",
            c.instance_id
        );
    }

    #[test]
    fn an_instance_id_and_a_fractional_heartbeat_are_taken_as_given() {
        let mut a = full();
        a.instance_id = Some(" node-a ".into());
        a.instance_heartbeat_secs = Some("0.5".into());
        let c = Config::from_args(a).unwrap();
        assert_eq!(c.instance_id, "node-a");
        assert_eq!(c.instance_heartbeat, Duration::from_millis(500));
    }

    #[test]
    fn each_bad_variable_is_named() {
        type Edit = fn(&mut ConfigArgs);
        let cases: &[(Edit, &str)] = &[
            (|a| a.smb_share = None, "SMB_SHARE"),
            (|a| a.smb_host = None, "SMB_HOST"),
            (|a| a.smb_password = None, "SMB_PASSWORD"),
            (|a| a.db.database_url = None, "DATABASE_URL"),
            (|a| a.api_token = None, "API_TOKEN"),
            (|a| a.foi_api_url = Some("not a url".into()), "FOI_API_URL"),
            (|a| a.itm_api_url = None, "ITM_API_URL"),
            (|a| a.smb_port = Some("70000".into()), "SMB_PORT"),
            (|a| a.env = Some("staging".into()), "ENV"),
            (
                |a| a.stable_min_age_secs = Some("-1".into()),
                "STABLE_MIN_AGE_SECS",
            ),
            (
                |a| a.max_concurrent_files = Some("0".into()),
                "MAX_CONCURRENT_FILES",
            ),
            (
                |a| a.foi_timeout_secs = Some("0".into()),
                "FOI_TIMEOUT_SECS",
            ),
            (
                |a| a.ignore_name_patterns = Some("a*b*".into()),
                "IGNORE_NAME_PATTERNS",
            ),
            (|a| a.bind_addr = Some("nowhere".into()), "BIND_ADDR"),
            (
                |a| a.run_interval_secs = Some("soon".into()),
                "RUN_INTERVAL_SECS",
            ),
            (|a| a.smb_archive_dir = Some("/".into()), "SMB_ARCHIVE_DIR"),
            (|a| a.instance_id = Some("a\tb".into()), "INSTANCE_ID"),
            (
                |a| a.instance_heartbeat_secs = Some("0.05".into()),
                "INSTANCE_HEARTBEAT_SECS",
            ),
            (
                |a| a.instance_heartbeat_secs = Some("301".into()),
                "INSTANCE_HEARTBEAT_SECS",
            ),
        ];
        for (edit, var) in cases {
            let mut a = full();
            edit(&mut a);
            let e = Config::from_args(a).unwrap_err();
            assert_eq!(e.var, *var, "{e}");
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn a_claim_lease_from_an_old_configuration_is_ignored_with_a_warning() {
        let mut a = full();
        a.claim_lease_secs = Some("2".into());
        let c = Config::from_args(a).unwrap();
        let [w] = c.warnings() else {
            panic!("one warning: {:?}", c.warnings())
        };
        assert!(
            w.contains("CLAIM_LEASE_SECS=2 is ignored") && w.contains("dead"),
            "{w}"
        );
    }

    #[test]
    fn local_env_needs_no_token() {
        let mut a = full();
        a.api_token = None;
        a.env = Some("local".into());
        assert!(Config::from_args(a).unwrap().api_token.is_none());
    }

    #[test]
    fn secrets_come_from_files_without_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let mut a = full();
        a.smb_password = None;
        a.smb_password_file = Some(p.clone());
        assert_eq!(Config::from_args(a).unwrap().smb.password, "s3cret");
        let mut both = full();
        both.smb_password_file = Some(p);
        assert_eq!(Config::from_args(both).unwrap_err().var, "SMB_PASSWORD");
        let mut missing = full();
        missing.api_token = None;
        missing.api_token_file = Some(dir.path().join("nope"));
        assert_eq!(
            Config::from_args(missing).unwrap_err().var,
            "API_TOKEN_FILE"
        );
    }

    #[test]
    fn extra_ca_certs_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let mut a = full();
        a.extra_ca_certs_file = Some(ca);
        assert_eq!(Config::from_args(a).unwrap().extra_ca_certs.len(), 1);
        assert!(Config::from_args(full()).unwrap().extra_ca_certs.is_empty());

        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        for (path, says) in [
            (dir.path().join("missing.pem"), "cannot read"),
            (not_pem, "holds no PEM certificate"),
        ] {
            let mut a = full();
            a.extra_ca_certs_file = Some(path);
            let e = Config::from_args(a).unwrap_err();
            assert_eq!(e.var, "EXTRA_CA_CERTS_FILE");
            assert!(
                e.to_string()
                    .starts_with("configuration error: EXTRA_CA_CERTS_FILE: ")
                    && e.to_string().contains(says),
                "{e}"
            );
        }
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let c = Config::from_args(full()).unwrap();
        let shown = format!("{c:?}");
        for s in ["dbpw", "\"tok\"", "\"pw\""] {
            assert!(!shown.contains(s), "{s} leaked in {shown}");
        }
    }
}
