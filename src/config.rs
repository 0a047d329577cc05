//! One configuration struct, read from the environment (CONTRACT §3) with a
//! command-line flag able to override each variable. Each variable is
//! declared once, in `ConfigArgs`: its name, type, default, range and help.
//! Secrets may come from `<VAR>_FILE`; they are kept out of `Debug` output
//! and logs.

use crate::auth::oidc::OidcConfig;
use crate::scan::names::{DEFAULT_PATTERNS, TempNameFilter};
use crate::source::smb::{Signing, SmbConfig};
use crate::store::AuditKey;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Command, FromArgMatches, ValueEnum};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A configuration problem, naming the variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {var}: {message}")]
pub struct ConfigError {
    /// The environment variable (or its `_FILE` twin) at fault.
    pub var: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(var: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var: var.to_string(),
        message: message.into(),
    }
}

/// A value of a variable (or of its flag) that clap refused, told as
/// `VAR: message` like every other configuration error; any other clap error
/// (help, version, an unknown flag) is handed back for clap to report.
impl TryFrom<clap::Error> for ConfigError {
    type Error = clap::Error;

    fn try_from(e: clap::Error) -> Result<Self, clap::Error> {
        if !matches!(
            e.kind(),
            ErrorKind::ValueValidation | ErrorKind::InvalidValue
        ) {
            return Err(e);
        }
        // clap names the argument as it shows it, `--smb-port <SMB_PORT>`;
        // its long flag finds the argument, and the argument its variable.
        let long = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(shown)) => shown
                .split_whitespace()
                .next()
                .and_then(|flag| flag.strip_prefix("--"))
                .map(str::to_string),
            _ => None,
        };
        let cmd = ConfigArgs::augment_args(Command::new("coordinator"));
        let Some(arg) = long.and_then(|long| {
            cmd.get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()))
        }) else {
            return Err(e);
        };
        let Some(var) = arg.get_env().map(|v| v.to_string_lossy().into_owned()) else {
            return Err(e);
        };
        let value = match e.get(ContextKind::InvalidValue) {
            // A secret's value is never repeated.
            Some(ContextValue::String(v)) if !arg.is_hide_env_values_set() => format!(" {v:?}"),
            _ => String::new(),
        };
        let why = match (e.kind(), e.get(ContextKind::ValidValue)) {
            (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) => {
                format!("not one of {}", valid.join(", "))
            }
            _ => std::error::Error::source(&e).map_or_else(String::new, |why| why.to_string()),
        };
        Ok(ConfigError {
            var,
            message: format!("invalid value{value}: {why}"),
        })
    }
}

/// What a run does with a file whose content was claimed for its remitter
/// under another name (CONTRACT §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DuplicateContent {
    /// Send it like any other file (the behaviour before CONTRACT §12).
    Process,
    /// Claim it as `duplicate_content`, send nothing, tell IQube once.
    Hold,
}

/// Deployment environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Env {
    /// A developer's machine: the API token may be absent.
    Local,
    /// A shared development deployment.
    Dev,
    /// Production.
    Prod,
}

/// A secret (database URL, API token, SMB password); shown as `<redacted>`
/// in `Debug`, so neither `ConfigArgs` nor `Config` can leak it into a log.
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

/// How clap takes a secret from a flag or variable.
impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One year, the longest duration any variable takes.
const YEAR_SECS: f64 = 31_536_000.0;

/// A value parser of seconds from `min` to `max`, fractions allowed
/// (`"0.5"`): every duration variable is parsed by it, with its own range.
fn secs(
    min: f64,
    max: f64,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s| {
        s.parse::<f64>()
            .ok()
            .filter(|f| (min..=max).contains(f))
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("not a number of seconds from {min} to {max}"))
    }
}

/// The smallest timeout: a timeout of 0 would fail every call.
const MIN_TIMEOUT_SECS: f64 = 0.001;

/// An `http` or `https` URL.
fn http_url(s: &str) -> Result<String, String> {
    let u = reqwest::Url::parse(s).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err("URL must be http or https".into());
    }
    Ok(s.to_string())
}

/// An `http` or `https` URL in which `{remitter}` may stand anywhere (it is
/// replaced by the remitter before each call).
fn url_template(s: &str) -> Result<String, String> {
    http_url(&s.replace("{remitter}", "r"))?;
    Ok(s.to_string())
}

/// A share-relative folder: `\` taken as `/`, empty segments dropped (`/` is
/// the share root, `""`).
fn share_dir(s: &str) -> Result<String, std::convert::Infallible> {
    Ok(crate::source::join(&[&s.replace('\\', "/")]))
}

/// An `INSTANCE_ID`: trimmed, 1 to 200 characters, no control characters.
fn instance_id(s: &str) -> Result<String, &'static str> {
    let id = s.trim();
    if id.is_empty() || id.chars().count() > 200 || id.chars().any(char::is_control) {
        return Err("must be 1 to 200 characters, without control characters");
    }
    Ok(id.to_string())
}

/// The default `INSTANCE_ID`: host name and process id (CONTRACT §10),
/// computed when the arguments are parsed.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "coordinator".into());
    format!("{host}:{}", std::process::id())
}

/// The database part of the environment (all `migrate` needs).
#[derive(Debug, Args, Clone)]
pub struct DbArgs {
    /// Postgres connection string (secret; or DATABASE_URL_FILE)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// File holding DATABASE_URL
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
}

/// What every program but `migrate` needs: the database, the audit key (to
/// write or check the chain) and the deployment environment (which decides
/// whether a missing key may be the development one). `ConfigArgs` holds it,
/// and so do `token` and `audit`, so each variable is declared once.
#[derive(Debug, Args, Clone)]
pub struct BaseArgs {
    /// The database.
    #[command(flatten)]
    pub db: DbArgs,
    /// The key the coordinator writes with.
    #[command(flatten)]
    pub audit: AuditKeyArgs,
    /// Deployment environment (local: API_TOKEN and AUDIT_KEY optional)
    #[arg(long, env = "ENV", value_enum, default_value_t = Env::Prod)]
    pub env: Env,
}

/// `AUDIT_KEY` and its `_FILE` twin: `serve`, `run` and `audit verify`.
#[derive(Debug, Args, Clone)]
pub struct AuditKeyArgs {
    /// Key of the audit trail's HMAC chain; the same on every instance, never stored in the database; required unless ENV=local (secret)
    #[arg(long, env = "AUDIT_KEY", hide_env_values = true)]
    pub audit_key: Option<Secret>,
    /// File holding AUDIT_KEY
    #[arg(long, env = "AUDIT_KEY_FILE")]
    pub audit_key_file: Option<PathBuf>,
}

impl AuditKeyArgs {
    /// The key, from the variable or its `_FILE`; without either, the
    /// public development key when `env` is local, else an error.
    pub fn resolve(self, env: Env) -> Result<AuditKey, ConfigError> {
        match secret(
            self.audit_key,
            self.audit_key_file,
            "AUDIT_KEY",
            "AUDIT_KEY_FILE",
        )? {
            Some(key) => {
                AuditKey::new(key.expose().as_bytes()).map_err(|e| err("AUDIT_KEY", e.to_string()))
            }
            None if env == Env::Local => Ok(AuditKey::development()),
            None => Err(err(
                "AUDIT_KEY",
                "required unless ENV=local (or set AUDIT_KEY_FILE)",
            )),
        }
    }
}

/// What start-up and `audit verify` say when the development key is used.
pub const DEVELOPMENT_AUDIT_KEY_WARNING: &str = "AUDIT_KEY is not set: the audit chain is keyed \
     with the public development key (ENV=local), so it proves nothing; set AUDIT_KEY outside development";

/// Every variable of CONTRACT §3, as flags with environment fallbacks. The
/// values are parsed and range-checked here; what needs more than one
/// variable, or a file, is checked by `Config::from_args`.
#[derive(Debug, Args, Clone)]
pub struct ConfigArgs {
    /// The database, the audit key and the deployment environment.
    #[command(flatten)]
    pub base: BaseArgs,
    /// HTTP listen address
    #[arg(long, env = "BIND_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], 8080)))]
    pub bind_addr: SocketAddr,
    /// Bearer token for every /api/ route; required unless ENV=local (secret)
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub api_token: Option<Secret>,
    /// File holding API_TOKEN
    #[arg(long, env = "API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// SMB server host (required)
    #[arg(long, env = "SMB_HOST")]
    pub smb_host: Option<String>,
    /// SMB server port
    #[arg(long, env = "SMB_PORT", default_value_t = 445, value_parser = clap::value_parser!(u16).range(1..))]
    pub smb_port: u16,
    /// Share name (required)
    #[arg(long, env = "SMB_SHARE")]
    pub smb_share: Option<String>,
    /// NTLM user name (required)
    #[arg(long, env = "SMB_USERNAME")]
    pub smb_username: Option<String>,
    /// NTLM password (secret; required, or SMB_PASSWORD_FILE)
    #[arg(long, env = "SMB_PASSWORD", hide_env_values = true)]
    pub smb_password: Option<Secret>,
    /// File holding SMB_PASSWORD
    #[arg(long, env = "SMB_PASSWORD_FILE")]
    pub smb_password_file: Option<PathBuf>,
    /// NTLM domain (empty by default)
    #[arg(
        long,
        env = "SMB_DOMAIN",
        default_value = "",
        hide_default_value = true
    )]
    pub smb_domain: String,
    /// Folder of remitter folders, relative to the share root
    #[arg(long, env = "SMB_SOURCE_DIR", default_value = "/", value_parser = share_dir)]
    pub smb_source_dir: String,
    /// Archive folder, relative to the share root (never the root, never SMB_SOURCE_DIR)
    #[arg(long, env = "SMB_ARCHIVE_DIR", default_value = "archive", value_parser = share_dir)]
    pub smb_archive_dir: String,
    /// Bound on each SMB metadata call and each transfer request, seconds
    #[arg(long, env = "SMB_TIMEOUT_SECS", default_value = "30", value_parser = secs(MIN_TIMEOUT_SECS, YEAR_SECS))]
    pub smb_timeout_secs: Duration,
    /// SMB signing: every message when the server requires it, else only the tree connect (if_required, as smbclient and Windows do); or every message whatever the server asks (required)
    #[arg(long, env = "SMB_SIGNING", value_enum, default_value_t = Signing::IfRequired)]
    pub smb_signing: Signing,
    /// FOI extraction endpoint, http or https; {remitter} is replaced (required)
    #[arg(long, env = "FOI_API_URL", value_parser = url_template)]
    pub foi_api_url: Option<String>,
    /// ITM submission endpoint, http or https (required)
    #[arg(long, env = "ITM_API_URL", value_parser = http_url)]
    pub itm_api_url: Option<String>,
    /// IQube notification endpoint, http or https (required)
    #[arg(long, env = "IQUBE_API_URL", value_parser = http_url)]
    pub iqube_api_url: Option<String>,
    /// Whole-request timeout of a FOI call, seconds
    #[arg(long, env = "FOI_TIMEOUT_SECS", default_value = "120", value_parser = secs(MIN_TIMEOUT_SECS, YEAR_SECS))]
    pub foi_timeout_secs: Duration,
    /// Retries of a FOI call after a timeout, refused or reset connection (at most 10)
    #[arg(long, env = "FOI_RETRIES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub foi_retries: u32,
    /// Whole-request timeout of an ITM call, seconds
    #[arg(long, env = "ITM_TIMEOUT_SECS", default_value = "30", value_parser = secs(MIN_TIMEOUT_SECS, YEAR_SECS))]
    pub itm_timeout_secs: Duration,
    /// PEM file of CA certificates trusted for https downstream URLs, in addition to the system's
    #[arg(long, env = "EXTRA_CA_CERTS_FILE")]
    pub extra_ca_certs_file: Option<PathBuf>,
    /// Issuer of the identity provider's JWTs, exactly as in their `iss`; with OIDC_AUDIENCE and OIDC_JWKS_URL, JWT bearers are accepted
    #[arg(long, env = "OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Audience a JWT's `aud` must hold (with OIDC_ISSUER)
    #[arg(long, env = "OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// The identity provider's JWKS, http or https (with OIDC_ISSUER)
    #[arg(long, env = "OIDC_JWKS_URL", value_parser = http_url)]
    pub oidc_jwks_url: Option<String>,
    /// JWT claim holding the roles (viewer, operator, admin; an array or a space-separated string)
    #[arg(long, env = "OIDC_ROLES_CLAIM", default_value = "roles")]
    pub oidc_roles_claim: String,
    /// JWT claim naming the actor in the audit trail
    #[arg(long, env = "OIDC_NAME_CLAIM", default_value = "sub")]
    pub oidc_name_claim: String,
    /// Whole-request timeout of an IQube call, seconds
    #[arg(long, env = "IQUBE_TIMEOUT_SECS", default_value = "10", value_parser = secs(MIN_TIMEOUT_SECS, YEAR_SECS))]
    pub iqube_timeout_secs: Duration,
    /// Minimum age of a file's newest timestamp by the server's clock, seconds
    #[arg(long, env = "STABLE_MIN_AGE_SECS", default_value = "60", value_parser = secs(0.0, YEAR_SECS))]
    pub stable_min_age_secs: Duration,
    /// Gap between the two looks of the stability check, seconds (fractions allowed)
    #[arg(long, env = "STABLE_CHECK_INTERVAL_SECS", default_value = "5", value_parser = secs(0.0, YEAR_SECS))]
    pub stable_check_interval_secs: Duration,
    /// Files with FOI and ITM at once in one run, 1 to 256 (a quarter more are downloaded and claimed ahead)
    #[arg(long, env = "MAX_CONCURRENT_FILES", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_concurrent_files: u16,
    /// Comma-separated temp-name patterns (prefix*, *suffix, exact); replaces the CONTRACT §5 list
    #[arg(long, env = "IGNORE_NAME_PATTERNS", default_value = DEFAULT_PATTERNS, value_parser = TempNameFilter::parse)]
    pub ignore_name_patterns: TempNameFilter,
    /// Retired: claims are taken over when their instance is dead (three missed heartbeats), never by age. Accepted and ignored, with a warning
    #[arg(long, env = "CLAIM_LEASE_SECS", hide = true)]
    pub claim_lease_secs: Option<String>,
    /// Failed reads of one file version before IQube is told, once (at least 1)
    #[arg(long, env = "READ_FAILURE_NOTIFY_AFTER", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub read_failure_notify_after: u32,
    /// Local folder for spooling downloads
    #[arg(long, env = "SPOOL_DIR", default_value_os_t = std::env::temp_dir())]
    pub spool_dir: PathBuf,
    /// Seconds between background housekeeping passes in `serve`; 0 = only after runs
    #[arg(long, env = "HOUSEKEEPING_INTERVAL_SECS", default_value = "300", value_parser = secs(0.0, YEAR_SECS))]
    pub housekeeping_interval_secs: Duration,
    /// Seconds between runs `serve` starts by itself (trigger `schedule`); 0 = only on request
    #[arg(long, env = "RUN_INTERVAL_SECS", default_value = "0", value_parser = secs(0.0, YEAR_SECS))]
    pub run_interval_secs: Duration,
    /// Days a finished run keeps its per-file list (its counts are kept for good); 0 = forever
    #[arg(long, env = "RUN_DETAIL_RETENTION_DAYS", default_value_t = 30)]
    pub run_detail_retention_days: u32,
    /// A new file with the same content as one claimed for its remitter under another name: process it, or hold it (status duplicate_content)
    #[arg(long, env = "DUPLICATE_CONTENT", value_enum, default_value_t = DuplicateContent::Process)]
    pub duplicate_content: DuplicateContent,
    /// Days after a file's claim during which the same content under another name is a duplicate (with DUPLICATE_CONTENT=hold), 1 to 3650
    #[arg(long, env = "DUPLICATE_WINDOW_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub duplicate_window_days: u32,
    /// This process's name among the instances on one database; two live processes may not share one [default: <host name>:<process id>]
    #[arg(long, env = "INSTANCE_ID", default_value_t = default_instance_id(), hide_default_value = true, value_parser = instance_id)]
    pub instance_id: String,
    /// Seconds between heartbeats, 0.1 to 300 (fractions allowed); an instance not heard from for three is dead and its claims are taken over
    #[arg(long, env = "INSTANCE_HEARTBEAT_SECS", default_value = "5", value_parser = secs(0.1, 300.0))]
    pub instance_heartbeat_secs: Duration,
}

impl ConfigArgs {
    /// The arguments `flags` give (`["--smb-host", "h", …]`, no program
    /// name), every other variable at its default and the environment
    /// ignored: for tests, and for a program that embeds the coordinator.
    pub fn from_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut matches = Self::augment_args(Command::new("coordinator"))
            .no_binary_name(true)
            .mut_args(|a| a.env(None::<&'static str>))
            .try_get_matches_from(flags)?;
        Self::from_arg_matches_mut(&mut matches)
    }
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
    /// `AUDIT_KEY` (the development key when `ENV=local` left it unset).
    pub audit_key: AuditKey,
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
    /// The identity provider whose JWTs are accepted (`OIDC_*`), if any.
    pub oidc: Option<OidcConfig>,
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
    /// Process or hold the same content under another name (CONTRACT §12).
    pub duplicate_content: DuplicateContent,
    /// Days after a claim during which the same content is a duplicate.
    pub duplicate_window_days: u32,
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

/// A secret from its variable or from the file its `_FILE` twin names (one
/// trailing newline dropped); setting both is an error.
fn secret(
    value: Option<Secret>,
    file: Option<PathBuf>,
    var: &'static str,
    file_var: &'static str,
) -> Result<Option<Secret>, ConfigError> {
    match (value.filter(|v| !v.0.is_empty()), file) {
        (Some(_), Some(_)) => Err(err(var, format!("set {var} or {file_var}, not both"))),
        (Some(v), None) => Ok(Some(v)),
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

/// A variable with no default that must be set (clap's own `required`
/// would report it before the variables checked here, in its own format).
fn required(v: Option<String>, var: &'static str) -> Result<String, ConfigError> {
    v.filter(|s| !s.trim().is_empty())
        .ok_or_else(|| err(var, "required but not set"))
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

/// The identity provider: issuer, audience and JWKS URL all set, or none
/// (JWTs are then not accepted); a partial set names the first one missing.
fn oidc(
    issuer: Option<String>,
    audience: Option<String>,
    jwks_url: Option<String>,
    roles_claim: String,
    name_claim: String,
) -> Result<Option<OidcConfig>, ConfigError> {
    let set = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let (issuer, audience, jwks_url) = (set(issuer), set(audience), set(jwks_url));
    if issuer.is_none() && audience.is_none() && jwks_url.is_none() {
        return Ok(None);
    }
    let together = |var: &str| {
        err(
            var,
            "required when any of OIDC_ISSUER, OIDC_AUDIENCE, OIDC_JWKS_URL is set (all three, or none)",
        )
    };
    let issuer = issuer.ok_or_else(|| together("OIDC_ISSUER"))?;
    let audience = audience.ok_or_else(|| together("OIDC_AUDIENCE"))?;
    let jwks_url = jwks_url.ok_or_else(|| together("OIDC_JWKS_URL"))?;
    for (claim, var) in [
        (&roles_claim, "OIDC_ROLES_CLAIM"),
        (&name_claim, "OIDC_NAME_CLAIM"),
    ] {
        if claim.trim().is_empty() {
            return Err(err(var, "must name a claim"));
        }
    }
    Ok(Some(OidcConfig {
        issuer,
        audience,
        jwks_url,
        roles_claim,
        name_claim,
    }))
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
    /// Checks what the parsed arguments cannot check one by one: required
    /// variables, secrets and their files, the two folders together, the CA
    /// file. The first problem found is returned.
    pub fn from_args(a: ConfigArgs) -> Result<Self, ConfigError> {
        let api_token = secret(a.api_token, a.api_token_file, "API_TOKEN", "API_TOKEN_FILE")?;
        if api_token.is_none() && a.base.env != Env::Local {
            return Err(err(
                "API_TOKEN",
                "required unless ENV=local (or set API_TOKEN_FILE)",
            ));
        }
        let database_url = a.base.db.database_url()?;
        let smb_password = secret(
            a.smb_password,
            a.smb_password_file,
            "SMB_PASSWORD",
            "SMB_PASSWORD_FILE",
        )?
        .ok_or_else(|| err("SMB_PASSWORD", "required but not set"))?;
        let smb = SmbConfig {
            host: required(a.smb_host, "SMB_HOST")?,
            port: a.smb_port,
            share: required(a.smb_share, "SMB_SHARE")?,
            username: required(a.smb_username, "SMB_USERNAME")?,
            password: smb_password.0,
            domain: a.smb_domain,
            timeout: a.smb_timeout_secs,
            signing: a.smb_signing,
        };
        if a.smb_archive_dir.is_empty() {
            return Err(err("SMB_ARCHIVE_DIR", "must not be the share root"));
        }
        if a.smb_archive_dir == a.smb_source_dir {
            return Err(err("SMB_ARCHIVE_DIR", "must differ from SMB_SOURCE_DIR"));
        }
        let audit_key = a.base.audit.resolve(a.base.env)?;
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let mut warnings: Vec<String> = Vec::new();
        if audit_key.is_development() {
            warnings.push(DEVELOPMENT_AUDIT_KEY_WARNING.into());
        }
        Ok(Self {
            env: a.base.env,
            bind_addr: a.bind_addr,
            api_token,
            database_url,
            audit_key,
            smb,
            source_dir: a.smb_source_dir,
            archive_dir: a.smb_archive_dir,
            foi_url: required(a.foi_api_url, "FOI_API_URL")?,
            itm_url: required(a.itm_api_url, "ITM_API_URL")?,
            iqube_url: required(a.iqube_api_url, "IQUBE_API_URL")?,
            foi_timeout: a.foi_timeout_secs,
            foi_retries: a.foi_retries,
            itm_timeout: a.itm_timeout_secs,
            iqube_timeout: a.iqube_timeout_secs,
            extra_ca_certs: ca_certs(a.extra_ca_certs_file)?,
            oidc: oidc(
                a.oidc_issuer,
                a.oidc_audience,
                a.oidc_jwks_url,
                a.oidc_roles_claim,
                a.oidc_name_claim,
            )?,
            stable_min_age: a.stable_min_age_secs,
            stable_check_interval: a.stable_check_interval_secs,
            max_concurrent_files: usize::from(a.max_concurrent_files),
            ignore: a.ignore_name_patterns,
            spool_dir: a.spool_dir,
            read_failure_notify_after: a.read_failure_notify_after,
            duplicate_content: a.duplicate_content,
            duplicate_window_days: a.duplicate_window_days,
            housekeeping_interval: nonzero(a.housekeeping_interval_secs),
            run_interval: nonzero(a.run_interval_secs),
            run_detail_retention: nonzero(Duration::from_secs(
                u64::from(a.run_detail_retention_days) * 86_400,
            )),
            instance_id: a.instance_id,
            instance_heartbeat: a.instance_heartbeat_secs,
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
                .chain(warnings)
                .collect(),
        })
    }

    /// Warnings for settings that are accepted but no longer mean
    /// anything, and for the development audit key.
    pub fn warnings(&self) -> &[String] {
        &self.retired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags of a complete configuration.
    const FULL: &[(&str, &str)] = &[
        ("--database-url", "postgres://u:dbpw@h/db"),
        ("--api-token", "tok"),
        ("--audit-key", "auditkey-0123456789"),
        ("--smb-host", "127.0.0.1"),
        ("--smb-share", "s"),
        ("--smb-username", "u"),
        ("--smb-password", "pw"),
        ("--foi-api-url", "http://foi/extract/{remitter}"),
        ("--itm-api-url", "http://itm/submit"),
        ("--iqube-api-url", "http://iqube/notify"),
    ];

    /// `FULL` with `edits` (a flag and `Some` value sets or replaces it, a
    /// flag and `None` removes it), parsed as the binary parses it.
    fn args(edits: &[(&str, Option<&str>)]) -> Result<ConfigArgs, ConfigError> {
        let mut flags = FULL.to_vec();
        for (flag, value) in edits {
            flags.retain(|(f, _)| f != flag);
            if let Some(v) = value {
                flags.push((flag, v));
            }
        }
        ConfigArgs::from_flags(flags.iter().map(|(f, v)| format!("{f}={v}"))).map_err(|e| {
            ConfigError::try_from(e).unwrap_or_else(|e| panic!("not a variable's error: {e}"))
        })
    }

    fn config(edits: &[(&str, Option<&str>)]) -> Result<Config, ConfigError> {
        Config::from_args(args(edits)?)
    }

    #[test]
    fn defaults_apply() {
        let c = config(&[]).unwrap();
        assert_eq!(c.env, Env::Prod);
        assert_eq!(c.smb.port, 445);
        assert_eq!(c.smb.domain, "");
        assert_eq!(c.source_dir, "");
        assert_eq!(c.archive_dir, "archive");
        assert_eq!(c.bind_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.max_concurrent_files, 4);
        assert_eq!(c.smb.timeout, Duration::from_secs(30));
        assert_eq!(c.smb.signing, Signing::IfRequired);
        assert_eq!(c.foi_timeout, Duration::from_secs(120));
        assert_eq!(c.foi_retries, 2);
        assert_eq!(c.itm_timeout, Duration::from_secs(30));
        assert_eq!(c.iqube_timeout, Duration::from_secs(10));
        assert_eq!(c.stable_min_age, Duration::from_secs(60));
        assert_eq!(c.stable_check_interval, Duration::from_secs(5));
        assert_eq!(c.ignore, TempNameFilter::default());
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
        assert_eq!(c.oidc, None, "JWTs only when configured");
        assert_eq!(c.instance_heartbeat, Duration::from_secs(5));
        let pid = format!(":{}", std::process::id());
        assert!(
            c.instance_id.ends_with(&pid) && c.instance_id.len() > pid.len(),
            "host name and process id: {}",
            c.instance_id
        );
    }

    #[test]
    fn values_are_taken_as_given() {
        let c = config(&[
            ("--instance-id", Some(" node-a ")),
            ("--instance-heartbeat-secs", Some("0.5")),
            ("--smb-source-dir", Some("\\in\\")),
            ("--smb-archive-dir", Some("/out//done/")),
            ("--run-interval-secs", Some("1.5")),
            ("--housekeeping-interval-secs", Some("0")),
            ("--run-detail-retention-days", Some("0")),
            ("--max-concurrent-files", Some("256")),
            ("--foi-retries", Some("10")),
            ("--env", Some("dev")),
            ("--smb-signing", Some("required")),
        ])
        .unwrap();
        assert_eq!(c.instance_id, "node-a");
        assert_eq!(c.smb.signing, Signing::Required);
        assert_eq!(c.instance_heartbeat, Duration::from_millis(500));
        assert_eq!(
            (c.source_dir.as_str(), c.archive_dir.as_str()),
            ("in", "out/done")
        );
        assert_eq!(c.run_interval, Some(Duration::from_millis(1500)));
        assert_eq!(c.housekeeping_interval, None, "0: only after runs");
        assert_eq!(c.run_detail_retention, None, "0: forever");
        assert_eq!((c.max_concurrent_files, c.foi_retries), (256, 10));
        assert_eq!(c.env, Env::Dev);
    }

    #[test]
    fn each_bad_variable_is_named() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("--smb-share", None, "SMB_SHARE"),
            ("--smb-host", None, "SMB_HOST"),
            ("--smb-password", None, "SMB_PASSWORD"),
            ("--database-url", None, "DATABASE_URL"),
            ("--api-token", None, "API_TOKEN"),
            ("--audit-key", None, "AUDIT_KEY"),
            ("--audit-key", Some("short"), "AUDIT_KEY"),
            ("--foi-api-url", Some("not a url"), "FOI_API_URL"),
            ("--foi-api-url", Some("ftp://foi/{remitter}"), "FOI_API_URL"),
            ("--itm-api-url", None, "ITM_API_URL"),
            (
                "--iqube-api-url",
                Some("mailto:iqube@example.org"),
                "IQUBE_API_URL",
            ),
            ("--smb-port", Some("70000"), "SMB_PORT"),
            ("--smb-signing", Some("always"), "SMB_SIGNING"),
            ("--env", Some("staging"), "ENV"),
            ("--stable-min-age-secs", Some("-1"), "STABLE_MIN_AGE_SECS"),
            ("--max-concurrent-files", Some("0"), "MAX_CONCURRENT_FILES"),
            (
                "--max-concurrent-files",
                Some("257"),
                "MAX_CONCURRENT_FILES",
            ),
            ("--foi-timeout-secs", Some("0"), "FOI_TIMEOUT_SECS"),
            ("--foi-retries", Some("11"), "FOI_RETRIES"),
            (
                "--ignore-name-patterns",
                Some("a*b*"),
                "IGNORE_NAME_PATTERNS",
            ),
            ("--bind-addr", Some("nowhere"), "BIND_ADDR"),
            ("--run-interval-secs", Some("soon"), "RUN_INTERVAL_SECS"),
            ("--smb-archive-dir", Some("/"), "SMB_ARCHIVE_DIR"),
            ("--smb-archive-dir", Some(""), "SMB_ARCHIVE_DIR"),
            (
                "--read-failure-notify-after",
                Some("0"),
                "READ_FAILURE_NOTIFY_AFTER",
            ),
            ("--instance-id", Some("a\tb"), "INSTANCE_ID"),
            (
                "--instance-heartbeat-secs",
                Some("0.05"),
                "INSTANCE_HEARTBEAT_SECS",
            ),
            (
                "--instance-heartbeat-secs",
                Some("301"),
                "INSTANCE_HEARTBEAT_SECS",
            ),
        ];
        for (flag, value, var) in cases {
            let e = config(&[(flag, *value)]).unwrap_err();
            assert_eq!(e.var, *var, "{flag}={value:?}: {e}");
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("configuration error: {var}: "))
                    && shown.lines().count() == 1,
                "{shown}"
            );
        }
        let e = config(&[
            ("--smb-archive-dir", Some("in")),
            ("--smb-source-dir", Some("/in/")),
        ])
        .unwrap_err();
        assert_eq!(e.var, "SMB_ARCHIVE_DIR", "{e}");
    }

    #[test]
    fn a_refused_value_is_shown_with_what_was_expected() {
        let e = config(&[("--env", Some("staging"))]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration error: ENV: invalid value \"staging\": not one of local, dev, prod"
        );
        let e = config(&[("--smb-port", Some("abc"))]).unwrap_err();
        assert!(e.message.starts_with("invalid value \"abc\": "), "{e}");
        let e = config(&[("--instance-heartbeat-secs", Some("0.05"))]).unwrap_err();
        assert!(e.message.ends_with("from 0.1 to 300"), "{e}");
    }

    #[test]
    fn other_command_line_errors_are_left_to_clap() {
        let e = ConfigArgs::from_flags(["--no-such-flag"]).unwrap_err();
        assert!(ConfigError::try_from(e).is_err());
    }

    #[test]
    fn a_claim_lease_from_an_old_configuration_is_ignored_with_a_warning() {
        let c = config(&[("--claim-lease-secs", Some("2"))]).unwrap();
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
        let c = config(&[("--api-token", None), ("--env", Some("local"))]).unwrap();
        assert!(c.api_token.is_none());
    }

    #[test]
    fn local_env_without_an_audit_key_uses_the_development_key_and_says_so() {
        let c = config(&[("--audit-key", None), ("--env", Some("local"))]).unwrap();
        assert!(c.audit_key.is_development());
        assert_eq!(c.warnings(), [DEVELOPMENT_AUDIT_KEY_WARNING]);
        let c = config(&[("--env", Some("local"))]).unwrap();
        assert!(!c.audit_key.is_development() && c.warnings().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "from-a-file-0123456789\n").unwrap();
        let c = config(&[("--audit-key", None), ("--audit-key-file", p.to_str())]).unwrap();
        assert!(!c.audit_key.is_development());
        let both = config(&[("--audit-key-file", p.to_str())]).unwrap_err();
        assert_eq!(both.var, "AUDIT_KEY");
    }

    #[test]
    fn secrets_come_from_files_without_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let p = p.to_str().unwrap();
        let c = config(&[("--smb-password", None), ("--smb-password-file", Some(p))]).unwrap();
        assert_eq!(c.smb.password, "s3cret");
        let both = config(&[("--smb-password-file", Some(p))]).unwrap_err();
        assert_eq!(both.var, "SMB_PASSWORD");
        let nope = dir.path().join("nope");
        let missing =
            config(&[("--api-token", None), ("--api-token-file", nope.to_str())]).unwrap_err();
        assert_eq!(missing.var, "API_TOKEN_FILE");
    }

    #[test]
    fn extra_ca_certs_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let c = config(&[("--extra-ca-certs-file", ca.to_str())]).unwrap();
        assert_eq!(c.extra_ca_certs.len(), 1);
        assert!(config(&[]).unwrap().extra_ca_certs.is_empty());

        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        for (path, says) in [
            (dir.path().join("missing.pem"), "cannot read"),
            (not_pem, "holds no PEM certificate"),
        ] {
            let e = config(&[("--extra-ca-certs-file", path.to_str())]).unwrap_err();
            assert_eq!(e.var, "EXTRA_CA_CERTS_FILE");
            assert!(
                e.to_string()
                    .starts_with("configuration error: EXTRA_CA_CERTS_FILE: ")
                    && e.to_string().contains(says),
                "{e}"
            );
        }
    }

    /// The three OIDC variables that go together.
    const OIDC: &[(&str, Option<&str>)] = &[
        (
            "--oidc-issuer",
            Some("https://idp.example.com/realms/finance"),
        ),
        ("--oidc-audience", Some("coordinator")),
        (
            "--oidc-jwks-url",
            Some("https://idp.example.com/realms/finance/certs"),
        ),
    ];

    #[test]
    fn oidc_is_configured_by_three_variables_together() {
        let c = config(OIDC).unwrap();
        assert_eq!(
            c.oidc,
            Some(OidcConfig {
                issuer: "https://idp.example.com/realms/finance".into(),
                audience: "coordinator".into(),
                jwks_url: "https://idp.example.com/realms/finance/certs".into(),
                roles_claim: "roles".into(),
                name_claim: "sub".into(),
            })
        );
        let mut custom = OIDC.to_vec();
        custom.extend([
            ("--oidc-roles-claim", Some("https://example.com/groups")),
            ("--oidc-name-claim", Some("email")),
        ]);
        let oidc = config(&custom).unwrap().oidc.unwrap();
        assert_eq!(
            (oidc.roles_claim.as_str(), oidc.name_claim.as_str()),
            ("https://example.com/groups", "email")
        );
        assert_eq!(
            config(&[("--oidc-roles-claim", Some("groups"))])
                .unwrap()
                .oidc,
            None,
            "a claim name alone turns nothing on"
        );
    }

    #[test]
    fn a_partial_oidc_configuration_names_the_first_missing_variable() {
        let without = |flags: &[&str]| {
            let mut edits = OIDC.to_vec();
            edits.retain(|(f, _)| !flags.contains(f));
            config(&edits).unwrap_err()
        };
        for (missing, var) in [
            (&["--oidc-issuer"][..], "OIDC_ISSUER"),
            (&["--oidc-audience"], "OIDC_AUDIENCE"),
            (&["--oidc-jwks-url"], "OIDC_JWKS_URL"),
            (&["--oidc-issuer", "--oidc-audience"], "OIDC_ISSUER"),
            (&["--oidc-audience", "--oidc-jwks-url"], "OIDC_AUDIENCE"),
        ] {
            let e = without(missing);
            assert_eq!(e.var, var, "without {missing:?}: {e}");
            assert!(e.message.contains("all three, or none"), "{e}");
        }
        for (flag, value, var) in [
            ("--oidc-audience", " ", "OIDC_AUDIENCE"),
            ("--oidc-jwks-url", "ftp://idp/certs", "OIDC_JWKS_URL"),
            ("--oidc-jwks-url", "not a url", "OIDC_JWKS_URL"),
            ("--oidc-roles-claim", "", "OIDC_ROLES_CLAIM"),
            ("--oidc-name-claim", " ", "OIDC_NAME_CLAIM"),
        ] {
            let mut edits = OIDC.to_vec();
            edits.retain(|(f, _)| *f != flag);
            edits.push((flag, Some(value)));
            let e = config(&edits).unwrap_err();
            assert_eq!(e.var, var, "{flag}={value:?}: {e}");
        }
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let a = args(&[]).unwrap();
        let c = Config::from_args(a.clone()).unwrap();
        for shown in [format!("{a:?}"), format!("{c:?}")] {
            for s in ["dbpw", "\"tok\"", "\"pw\"", "auditkey"] {
                assert!(!shown.contains(s), "{s} leaked in {shown}");
            }
        }
    }
}
