//! The SMB share, through `pavao` (Samba's libsmbclient).
//!
//! libsmbclient is blocking and pavao serialises every call behind one
//! process-wide lock, so each operation runs on a blocking thread and is
//! bounded by a timeout. A client that failed with a connection-level error
//! is dropped and rebuilt on the next call. libsmbclient's `rename` replaces
//! an existing target, so a move first reserves its target name with an
//! exclusive create (see `rename_onto_reservation`). Downloads open the file
//! through a second context whose share mode denies writers: Samba refuses
//! that open (EBUSY) while another client holds the file open for writing,
//! and refuses writers while the download holds it.

use super::{Entry, Fetched, FileSource, Reservation, SourceError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use pavao::{
    SmbClient, SmbCredentials, SmbDialect, SmbDirentType, SmbError, SmbMode, SmbOpenOptions,
    SmbOptions, SmbShareMode,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How to reach the share. `Debug` never shows the password.
#[derive(Clone)]
pub struct SmbConfig {
    /// Server host name or address.
    pub host: String,
    /// TCP port (445 by default).
    pub port: u16,
    /// Share name.
    pub share: String,
    /// NTLM user.
    pub username: String,
    /// NTLM password.
    pub password: String,
    /// NTLM domain (workgroup), may be empty.
    pub domain: String,
    /// Bound on every metadata call and on each request of a transfer.
    pub timeout: Duration,
}

impl std::fmt::Debug for SmbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmbConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("share", &self.share)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("domain", &self.domain)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The native contexts of this share (pavao's share mode is per context).
struct Clients {
    /// Share mode deny-none: listings, metadata, writes, renames.
    normal: SmbClient,
    /// Share mode deny-write: downloads.
    deny_write: SmbClient,
}

/// A share reached over SMB2/3 (see the module docs for the client's limits).
pub struct SmbShare {
    config: SmbConfig,
    clients: Mutex<Option<Arc<Clients>>>,
}

/// Characters escaped in libsmbclient URLs: it percent-decodes paths and
/// treats `?` as the start of options.
const PATH_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The dialect bounds every client of this process uses (pavao requires one policy).
pub fn smb_options() -> SmbOptions {
    SmbOptions::default()
        .min_protocol(SmbDialect::Smb210)
        .max_protocol(SmbDialect::Smb311)
        .no_auto_anonymous_login(true)
        .case_sensitive(false)
}

/// Builds a raw pavao client for `config` with the process-wide options and
/// the given share mode. Tests use it to write files as a remitter would.
pub fn new_client(config: &SmbConfig, share_mode: SmbShareMode) -> Result<SmbClient, SmbError> {
    let client = SmbClient::new(
        SmbCredentials::default()
            .server(format!("smb://{}:{}", config.host, config.port))
            .share(format!("/{}", config.share))
            .username(&config.username)
            .password(&config.password)
            .workgroup(&config.domain),
        smb_options().open_share_mode(share_mode),
    )?;
    client.set_timeout(config.timeout)?;
    Ok(client)
}

/// The pavao path (`/a/b%20c`) of a share-relative path (`a/b c`).
pub fn url_path(path: &str) -> String {
    let mut out = String::new();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.extend(utf8_percent_encode(seg, PATH_ESCAPE));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn to_utc(t: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(t)
}

fn classify(op: &str, err: SmbError) -> SourceError {
    match err {
        SmbError::Io(e) => {
            let message = e.to_string();
            match e.raw_os_error() {
                Some(libc_errno::ENOENT) | Some(libc_errno::ENOTDIR) => {
                    SourceError::NotFound(op.to_string())
                }
                Some(libc_errno::EEXIST) => SourceError::AlreadyExists(op.to_string()),
                Some(libc_errno::EACCES) | Some(libc_errno::EPERM) => {
                    SourceError::PermissionDenied(op.to_string())
                }
                Some(libc_errno::EBUSY) | Some(libc_errno::ETXTBSY) => {
                    SourceError::Busy(op.to_string())
                }
                // ENOMEM: libsmbclient's answer, seen here, when its cached
                // connection to an smbd that was restarted cannot be reused.
                Some(
                    libc_errno::ENOMEM
                    | libc_errno::EPIPE
                    | libc_errno::ECONNABORTED
                    | libc_errno::ECONNRESET
                    | libc_errno::ENOTCONN
                    | libc_errno::ECONNREFUSED,
                ) => SourceError::Disconnected {
                    op: op.to_string(),
                    message,
                },
                _ => SourceError::Io {
                    op: op.to_string(),
                    message,
                },
            }
        }
        other => SourceError::Io {
            op: op.to_string(),
            message: other.to_string(),
        },
    }
}

/// The errno values we classify (Linux numbering, which libsmbclient uses here).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const ENOTDIR: i32 = 20;
    pub const ETXTBSY: i32 = 26;
    pub const EPIPE: i32 = 32;
    pub const ECONNABORTED: i32 = 103;
    pub const ECONNRESET: i32 = 104;
    pub const ENOTCONN: i32 = 107;
    pub const ECONNREFUSED: i32 = 111;
}

/// True for errors after which the native connection may be unusable.
fn is_connection_error(e: &SourceError) -> bool {
    matches!(
        e,
        SourceError::Io { .. } | SourceError::Timeout { .. } | SourceError::Disconnected { .. }
    )
}

/// Whether an operation may simply be sent again on a fresh connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads and idempotent changes: one retry after a lost connection.
    OnDisconnect,
    /// Renames and writes: a lost answer may hide a success.
    Never,
}

impl SmbShare {
    /// A share handle; nothing is connected until the first call.
    pub fn new(config: SmbConfig) -> Self {
        Self {
            config,
            clients: Mutex::new(None),
        }
    }

    fn clients(&self) -> Result<Arc<Clients>, SourceError> {
        let mut guard = self.clients.lock().map_err(|_| SourceError::Io {
            op: "smb client".into(),
            message: "client lock poisoned".into(),
        })?;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let mk = |mode| new_client(&self.config, mode).map_err(|e| classify("connect", e));
        let clients = Arc::new(Clients {
            normal: mk(SmbShareMode::DenyNone)?,
            deny_write: mk(SmbShareMode::DenyWrite)?,
        });
        *guard = Some(clients.clone());
        Ok(clients)
    }

    fn reset(&self) {
        if let Ok(mut g) = self.clients.lock() {
            *g = None;
        }
    }

    /// Runs `f` on a blocking thread with the share's clients, bounded by
    /// `timeout`. A connection-level failure drops the clients so the next
    /// call reconnects; with [`Retry::OnDisconnect`] that happens once at once.
    async fn call<T, F>(
        &self,
        op: String,
        timeout: Option<Duration>,
        retry: Retry,
        f: F,
    ) -> Result<T, SourceError>
    where
        T: Send + 'static,
        F: Fn(&Clients) -> Result<T, SourceError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let first = self.call_once(&op, timeout, f.clone()).await;
        match first {
            Err(SourceError::Disconnected { .. }) if retry == Retry::OnDisconnect => {
                tracing::warn!(op = %op, "SMB connection lost; reconnecting once");
                self.call_once(&op, timeout, f).await
            }
            other => other,
        }
    }

    async fn call_once<T, F>(
        &self,
        op: &str,
        timeout: Option<Duration>,
        f: Arc<F>,
    ) -> Result<T, SourceError>
    where
        T: Send + 'static,
        F: Fn(&Clients) -> Result<T, SourceError> + Send + Sync + 'static,
    {
        let clients = match self.clients() {
            Ok(c) => c,
            Err(e) => {
                self.reset();
                return Err(e);
            }
        };
        let task = tokio::task::spawn_blocking(move || f(&clients));
        let joined = match timeout {
            Some(t) => match tokio::time::timeout(t, task).await {
                Ok(j) => j,
                Err(_) => {
                    self.reset();
                    return Err(SourceError::Timeout {
                        op: op.to_string(),
                        secs: t.as_secs(),
                    });
                }
            },
            None => task.await,
        };
        let result = joined.map_err(|e| SourceError::Io {
            op: op.to_string(),
            message: format!("blocking task failed: {e}"),
        })?;
        if let Err(e) = &result
            && is_connection_error(e)
        {
            self.reset();
        }
        result
    }

    /// A raw pavao client with this share's settings, for tools and tests.
    pub fn raw_client(&self, share_mode: SmbShareMode) -> Result<SmbClient, SourceError> {
        new_client(&self.config, share_mode).map_err(|e| classify("connect", e))
    }

    /// Writes `bytes` to `path` (creating or truncating it).
    pub async fn write_file(&self, path: &str, bytes: Vec<u8>) -> Result<(), SourceError> {
        let p = path.to_string();
        self.call(
            format!("write {path}"),
            Some(self.config.timeout),
            Retry::OnDisconnect,
            move |c| write_bytes(&c.normal, &p, &bytes),
        )
        .await
    }

    /// Removes the file at `path`.
    pub async fn remove_file(&self, path: &str) -> Result<(), SourceError> {
        let p = path.to_string();
        self.call(
            format!("unlink {path}"),
            Some(self.config.timeout),
            Retry::Never,
            move |c| {
                c.normal
                    .unlink(url_path(&p))
                    .map_err(|e| classify(&format!("unlink {p}"), e))
            },
        )
        .await
    }
}

fn write_bytes(client: &SmbClient, path: &str, bytes: &[u8]) -> Result<(), SourceError> {
    let op = format!("write {path}");
    let mut f = client
        .open_with(
            url_path(path),
            SmbOpenOptions::default()
                .write(true)
                .create(true)
                .truncate(true),
        )
        .map_err(|e| classify(&op, e))?;
    f.write_all(bytes)
        .map_err(|e| classify(&op, SmbError::Io(e)))?;
    Ok(())
}

fn entry_of(i: pavao::SmbDirentInfo) -> Entry {
    Entry {
        is_dir: i.get_type() == SmbDirentType::Dir,
        name: i.name,
        size: i.size,
        mtime: to_utc(i.mtime),
        ctime: to_utc(i.ctime),
    }
}

fn stat_entry(client: &SmbClient, path: &str) -> Result<Entry, SourceError> {
    let st = client
        .stat(url_path(path))
        .map_err(|e| classify(&format!("stat {path}"), e))?;
    Ok(Entry {
        name: path.rsplit('/').next().unwrap_or(path).to_string(),
        is_dir: st.mode.is_dir(),
        size: st.size,
        mtime: to_utc(st.modified),
        ctime: to_utc(st.created),
    })
}

#[async_trait]
impl FileSource for SmbShare {
    async fn list(&self, dir: &str) -> Result<Vec<Entry>, SourceError> {
        let d = dir.to_string();
        self.call(
            format!("list {dir}"),
            Some(self.config.timeout),
            Retry::OnDisconnect,
            move |c| {
                match c.normal.list_dirplus(url_path(&d)) {
                    Ok(items) => Ok(items.into_iter().map(entry_of).collect()),
                    // pavao drops opendir's errno; it is still this thread's last one.
                    Err(SmbError::BadFileDescriptor) => {
                        match std::io::Error::last_os_error().raw_os_error() {
                            Some(libc_errno::EACCES | libc_errno::EPERM) => {
                                Err(SourceError::PermissionDenied(format!("list {d}")))
                            }
                            Some(libc_errno::ENOENT | libc_errno::ENOTDIR) => {
                                Err(SourceError::NotFound(format!("list {d}")))
                            }
                            _ => match stat_entry(&c.normal, &d) {
                                Ok(e) if !e.is_dir => {
                                    Err(SourceError::NotFound(format!("{d} is not a folder")))
                                }
                                // It is a folder: a passing failure; try once more.
                                Ok(_) => match c.normal.list_dirplus(url_path(&d)) {
                                    Ok(items) => Ok(items.into_iter().map(entry_of).collect()),
                                    Err(_) => Err(SourceError::Disconnected {
                                        op: format!("list {d}"),
                                        message: "the folder could not be opened".into(),
                                    }),
                                },
                                Err(e) => Err(e),
                            },
                        }
                    }
                    Err(e) => Err(classify(&format!("list {d}"), e)),
                }
            },
        )
        .await
    }

    async fn stat(&self, path: &str) -> Result<Entry, SourceError> {
        let p = path.to_string();
        self.call(
            format!("stat {path}"),
            Some(self.config.timeout),
            Retry::OnDisconnect,
            move |c| stat_entry(&c.normal, &p),
        )
        .await
    }

    async fn fetch(&self, path: &str, dest: &Path) -> Result<Fetched, SourceError> {
        let p = path.to_string();
        let dest: PathBuf = dest.to_path_buf();
        // No overall bound: each request is bounded by the native timeout.
        self.call(
            format!("read {path}"),
            None,
            Retry::OnDisconnect,
            move |c| {
                let op = format!("read {p}");
                let mut f = c
                    .deny_write
                    .open_with(url_path(&p), SmbOpenOptions::default().read(true))
                    .map_err(|e| classify(&op, e))?;
                let mut out = std::fs::File::create(&dest).map_err(|e| SourceError::Io {
                    op: format!("create spool file {}", dest.display()),
                    message: e.to_string(),
                })?;
                let mut hasher = Md5::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut size = 0u64;
                loop {
                    let n = f
                        .read(&mut buf)
                        .map_err(|e| classify(&op, SmbError::Io(e)))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n]).map_err(|e| SourceError::Io {
                        op: format!("write spool file {}", dest.display()),
                        message: e.to_string(),
                    })?;
                    size += n as u64;
                }
                // While `f` is open no SMB client can have it open for writing.
                let after = stat_entry(&c.normal, &p)?;
                drop(f);
                Ok(Fetched {
                    md5: hex::encode(hasher.finalize()),
                    size,
                    after,
                })
            },
        )
        .await
    }

    async fn mkdir_all(&self, dir: &str) -> Result<(), SourceError> {
        let d = dir.to_string();
        self.call(
            format!("mkdir {dir}"),
            Some(self.config.timeout),
            Retry::OnDisconnect,
            move |c| {
                let mut cur = String::new();
                for seg in d.split('/').filter(|s| !s.is_empty()) {
                    if !cur.is_empty() {
                        cur.push('/');
                    }
                    cur.push_str(seg);
                    match stat_entry(&c.normal, &cur) {
                        Ok(e) if e.is_dir => continue,
                        Ok(_) => {
                            return Err(SourceError::AlreadyExists(format!(
                                "{cur} exists and is not a folder"
                            )));
                        }
                        Err(SourceError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                    match c.normal.mkdir(url_path(&cur), SmbMode::from(0o775)) {
                        Ok(()) => {}
                        Err(e) => match classify(&format!("mkdir {cur}"), e) {
                            SourceError::AlreadyExists(_) => {}
                            other => return Err(other),
                        },
                    }
                }
                Ok(())
            },
        )
        .await
    }

    /// `O_CREAT|O_EXCL`: the server creates the name only if it is free,
    /// atomically, so two movers can never both hold one name.
    async fn reserve(&self, reservation: &Reservation) -> Result<(), SourceError> {
        let (p, bytes) = (reservation.path.clone(), reservation.placeholder());
        self.call(
            format!("reserve {}", reservation.path),
            Some(self.config.timeout),
            Retry::Never,
            move |c| {
                let op = format!("reserve {p}");
                let mut f = c
                    .normal
                    .open_with(
                        url_path(&p),
                        SmbOpenOptions::default()
                            .write(true)
                            .create(true)
                            .exclusive(true),
                    )
                    .map_err(|e| classify(&op, e))?;
                f.write_all(&bytes)
                    .map_err(|e| classify(&op, SmbError::Io(e)))
            },
        )
        .await
    }

    /// libsmbclient's rename tries a no-replace rename and, on EEXIST,
    /// unlinks the target and renames again (SMBC_rename_ctx). The target is
    /// our own placeholder, which nobody else renames onto, so the unlink only
    /// ever removes that placeholder. If another mover reserves the name in
    /// the gap after that unlink, the second rename fails (no replace) with
    /// EEXIST and nothing is lost.
    async fn rename_onto_reservation(
        &self,
        from: &str,
        to: &Reservation,
    ) -> Result<(), SourceError> {
        let (f, t) = (from.to_string(), to.path.clone());
        self.call(
            format!("rename {from} -> {}", to.path),
            Some(self.config.timeout),
            Retry::Never,
            move |c| {
                c.normal
                    .rename(url_path(&f), url_path(&t))
                    .map_err(|e| classify(&format!("rename {f} -> {t}"), e))
            },
        )
        .await
    }

    /// Reads the name back and unlinks it only when it holds this
    /// reservation's token: a moved file (a rename whose answer was lost) or
    /// another mover's placeholder is left alone.
    async fn release(&self, reservation: &Reservation) -> Result<(), SourceError> {
        let (p, want) = (reservation.path.clone(), reservation.placeholder());
        self.call(
            format!("release {}", reservation.path),
            Some(self.config.timeout),
            Retry::OnDisconnect,
            move |c| {
                let op = format!("release {p}");
                let st = match stat_entry(&c.normal, &p) {
                    Ok(st) => st,
                    Err(SourceError::NotFound(_)) => return Ok(()),
                    Err(e) => return Err(e),
                };
                if st.is_dir || st.size != want.len() as u64 {
                    return Ok(());
                }
                let mut f = c
                    .normal
                    .open_with(url_path(&p), SmbOpenOptions::default().read(true))
                    .map_err(|e| classify(&op, e))?;
                let mut got = Vec::with_capacity(want.len());
                f.read_to_end(&mut got)
                    .map_err(|e| classify(&op, SmbError::Io(e)))?;
                drop(f);
                if got == want {
                    c.normal
                        .unlink(url_path(&p))
                        .map_err(|e| classify(&op, e))?;
                }
                Ok(())
            },
        )
        .await
    }

    async fn server_now(&self, scratch_dir: &str) -> Result<DateTime<Utc>, SourceError> {
        self.mkdir_all(scratch_dir).await?;
        let marker = super::join(&[scratch_dir, ".coordinator-clock"]);
        self.call(
            "server clock".to_string(),
            Some(self.config.timeout),
            Retry::OnDisconnect,
            move |c| {
                let stamp = Utc::now().to_rfc3339();
                write_bytes(&c.normal, &marker, stamp.as_bytes())?;
                Ok(stat_entry(&c.normal, &marker)?.mtime)
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_path_escapes_what_libsmbclient_decodes() {
        assert_eq!(url_path(""), "/");
        assert_eq!(url_path("a/b.csv"), "/a/b.csv");
        assert_eq!(url_path("r 1/50%?#&.csv"), "/r%201/50%25%3F%23%26.csv");
        assert_eq!(url_path("ü/x"), "/%C3%BC/x");
    }

    #[test]
    fn debug_hides_the_password() {
        let c = SmbConfig {
            host: "h".into(),
            port: 445,
            share: "s".into(),
            username: "u".into(),
            password: "hunter2".into(),
            domain: String::new(),
            timeout: Duration::from_secs(1),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
