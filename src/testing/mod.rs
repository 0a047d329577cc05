//! Stand-ins for unit tests of the engine: an in-memory share and fake
//! downstream services, and a Postgres database of its own per test
//! ([`TestDb`], with [`FaultyStore`] for outages).

mod db;
mod faulty;

pub use db::TestDb;
pub use faulty::FaultyStore;

use crate::downstream::{
    DownstreamError, Extractor, FoiOutcome, ItmSubmission, Notifier, Submitter,
};
use crate::engine::RunSettings;
use crate::scan::names::TempNameFilter;
use crate::source::{Content, Entry, Expected, Fetched, FileSource, Moved, SourceError, join};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Locks a test mutex, ignoring poisoning (a failed assertion elsewhere).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The folder holding `path` (`""` for the share root).
fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// The last segment of `path`.
fn base(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

/// 2024-06-03 12:00:00 UTC: the clock a new [`MemSource`] starts at.
pub fn t0() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_717_416_000, 0).unwrap_or_default()
}

/// One file of a [`MemSource`].
#[derive(Debug, Clone)]
struct MemFile {
    bytes: Vec<u8>,
    mtime: DateTime<Utc>,
    ctime: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct SourceState {
    files: BTreeMap<String, MemFile>,
    dirs: BTreeSet<String>,
    now: DateTime<Utc>,
    open_for_write: HashSet<String>,
    replace_on_fetch: std::collections::HashMap<String, Vec<u8>>,
    fail_fetch: HashSet<String>,
    fail_rename: HashSet<String>,
    fail_list: bool,
    fetches: Vec<String>,
    paused: std::collections::HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>,
}

impl SourceState {
    fn add_dirs(&mut self, dir: &str) {
        let mut cur = dir;
        while !cur.is_empty() {
            self.dirs.insert(cur.to_string());
            cur = parent(cur);
        }
    }

    fn is_dir(&self, dir: &str) -> bool {
        dir.is_empty() || self.dirs.contains(dir)
    }
}

/// An in-memory share: files and folders by share-relative path, a settable
/// server clock, and fault injection.
#[derive(Debug)]
pub struct MemSource {
    state: Mutex<SourceState>,
}

impl Default for MemSource {
    fn default() -> Self {
        Self::new()
    }
}

impl MemSource {
    /// An empty share whose clock reads [`t0`].
    pub fn new() -> Self {
        Self {
            state: Mutex::new(SourceState {
                now: t0(),
                ..Default::default()
            }),
        }
    }

    /// Writes a file (replacing any), creating its folders; ctime = mtime.
    pub fn put(&self, path: &str, bytes: &[u8], mtime: DateTime<Utc>) {
        let path = join(&[path]);
        let mut s = lock(&self.state);
        s.add_dirs(parent(&path));
        s.files.insert(
            path,
            MemFile {
                bytes: bytes.to_vec(),
                mtime,
                ctime: mtime,
            },
        );
    }

    /// Sets the change time of an existing file (a copy keeps mtime, not ctime).
    pub fn set_ctime(&self, path: &str, ctime: DateTime<Utc>) {
        if let Some(f) = lock(&self.state).files.get_mut(&join(&[path])) {
            f.ctime = ctime;
        }
    }

    /// True when a file or folder exists at `path`.
    pub fn exists(&self, path: &str) -> bool {
        let path = join(&[path]);
        let s = lock(&self.state);
        s.files.contains_key(&path) || s.dirs.contains(&path)
    }

    /// The bytes of a file, if it exists.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        lock(&self.state)
            .files
            .get(&join(&[path]))
            .map(|f| f.bytes.clone())
    }

    /// Every file below the folder `prefix`, sorted.
    pub fn files_under(&self, prefix: &str) -> Vec<String> {
        let prefix = join(&[prefix]);
        lock(&self.state)
            .files
            .keys()
            .filter(|p| prefix.is_empty() || p.starts_with(&format!("{prefix}/")))
            .cloned()
            .collect()
    }

    /// Sets the server clock.
    pub fn set_now(&self, now: DateTime<Utc>) {
        lock(&self.state).now = now;
    }

    /// The server clock.
    pub fn now(&self) -> DateTime<Utc> {
        lock(&self.state).now
    }

    /// Moves a file as another client would, unconditionally (the target
    /// folder must exist).
    pub fn mv(&self, from: &str, to: &str) {
        let mut s = lock(&self.state);
        if let Some(f) = s.files.remove(&join(&[from])) {
            s.files.insert(join(&[to]), f);
        }
    }

    /// Makes `path` look held open for writing by another client.
    pub fn mark_open_for_write(&self, path: &str) {
        lock(&self.state).open_for_write.insert(join(&[path]));
    }

    /// Rewrites `path` with `bytes` (stamped with the share's clock) just
    /// before its next fetch reads it: a change after the second look.
    pub fn replace_on_fetch(&self, path: &str, bytes: &[u8]) {
        lock(&self.state)
            .replace_on_fetch
            .insert(join(&[path]), bytes.to_vec());
    }

    /// Makes every fetch of `path` fail with [`SourceError::Io`].
    pub fn fail_fetch(&self, path: &str) {
        lock(&self.state).fail_fetch.insert(join(&[path]));
    }

    /// Makes every move from `path` fail with [`SourceError::PermissionDenied`].
    pub fn fail_rename(&self, path: &str) {
        lock(&self.state).fail_rename.insert(join(&[path]));
    }

    /// Makes every listing fail (or work again).
    pub fn fail_list(&self, fail: bool) {
        lock(&self.state).fail_list = fail;
    }

    /// Removes every injected fault and open-for-write mark.
    pub fn clear_faults(&self) {
        let mut s = lock(&self.state);
        s.fail_fetch.clear();
        s.fail_rename.clear();
        s.open_for_write.clear();
        s.fail_list = false;
    }

    /// Makes the fetches of `path` wait, after they are recorded, until the
    /// returned gate gets a permit (`add_permits(1)` lets one through).
    pub fn pause_fetch(&self, path: &str) -> std::sync::Arc<tokio::sync::Semaphore> {
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        lock(&self.state).paused.insert(join(&[path]), gate.clone());
        gate
    }

    /// Every path a fetch was attempted for, in order (failed ones included).
    pub fn fetches(&self) -> Vec<String> {
        lock(&self.state).fetches.clone()
    }
}

fn file_entry(name: &str, f: &MemFile) -> Entry {
    Entry {
        name: name.to_string(),
        is_dir: false,
        size: f.bytes.len() as u64,
        mtime: f.mtime,
        ctime: f.ctime,
    }
}

fn dir_entry(name: &str, now: DateTime<Utc>) -> Entry {
    Entry {
        name: name.to_string(),
        is_dir: true,
        size: 0,
        mtime: now,
        ctime: now,
    }
}

#[async_trait]
impl FileSource for MemSource {
    async fn list(&self, dir: &str) -> Result<Vec<Entry>, SourceError> {
        let dir = join(&[dir]);
        let s = lock(&self.state);
        if s.fail_list {
            return Err(SourceError::Io {
                op: format!("list {dir}"),
                message: "injected listing failure".into(),
            });
        }
        if !s.is_dir(&dir) {
            return Err(SourceError::NotFound(format!("list {dir}")));
        }
        let dirs = s
            .dirs
            .iter()
            .filter(|d| parent(d) == dir)
            .map(|d| dir_entry(base(d), s.now));
        let files = s
            .files
            .iter()
            .filter(|(p, _)| parent(p) == dir)
            .map(|(p, f)| file_entry(base(p), f));
        Ok(dirs.chain(files).collect())
    }

    async fn stat(&self, path: &str) -> Result<Entry, SourceError> {
        let path = join(&[path]);
        let s = lock(&self.state);
        if let Some(f) = s.files.get(&path) {
            Ok(file_entry(base(&path), f))
        } else if s.is_dir(&path) {
            Ok(dir_entry(base(&path), s.now))
        } else {
            Err(SourceError::NotFound(format!("stat {path}")))
        }
    }

    async fn fetch(&self, path: &str, dest: &Path) -> Result<Fetched, SourceError> {
        let path = join(&[path]);
        let gate = {
            let mut s = lock(&self.state);
            s.fetches.push(path.clone());
            s.paused.get(&path).cloned()
        };
        if let Some(gate) = gate {
            let _ = gate.acquire().await.map(|p| p.forget());
        }
        let bytes = {
            let mut s = lock(&self.state);
            if s.fail_fetch.contains(&path) {
                return Err(SourceError::Io {
                    op: format!("read {path}"),
                    message: "injected read failure".into(),
                });
            }
            if s.open_for_write.contains(&path) {
                return Err(SourceError::Busy(format!("open {path}")));
            }
            if let Some(bytes) = s.replace_on_fetch.remove(&path) {
                let now = s.now;
                if let Some(f) = s.files.get_mut(&path) {
                    f.bytes = bytes;
                    f.mtime = now;
                    f.ctime = now;
                }
            }
            match s.files.get(&path) {
                Some(f) => (f.bytes.clone(), file_entry(base(&path), f)),
                None => return Err(SourceError::NotFound(format!("read {path}"))),
            }
        };
        let (bytes, after) = bytes;
        let (md5, size) = (md5_hex(&bytes), bytes.len() as u64);
        let content = if size > crate::source::IN_MEMORY_MAX {
            tokio::fs::write(dest, &bytes)
                .await
                .map_err(|e| SourceError::Io {
                    op: format!("write spool file {}", dest.display()),
                    message: e.to_string(),
                })?;
            Content::Spooled(dest.to_path_buf())
        } else {
            Content::Memory(bytes)
        };
        Ok(Fetched {
            md5,
            size,
            after,
            content,
        })
    }

    async fn mkdir_all(&self, dir: &str) -> Result<(), SourceError> {
        let dir = join(&[dir]);
        let mut s = lock(&self.state);
        let mut cur = dir.as_str();
        while !cur.is_empty() {
            if s.files.contains_key(cur) {
                return Err(SourceError::AlreadyExists(format!(
                    "{cur} exists and is not a folder"
                )));
            }
            cur = parent(cur);
        }
        s.add_dirs(&dir);
        Ok(())
    }

    /// Atomic, as on the share: the check and the rename under one lock.
    async fn move_file(
        &self,
        from: &str,
        to: &str,
        expected: &Expected,
    ) -> Result<Moved, SourceError> {
        let (from, to) = (join(&[from]), join(&[to]));
        let mut s = lock(&self.state);
        if s.fail_rename.contains(&from) {
            return Err(SourceError::PermissionDenied(format!(
                "move {from} -> {to}"
            )));
        }
        if s.open_for_write.contains(&from) {
            return Err(SourceError::Busy(format!("move {from}")));
        }
        let Some(f) = s.files.get(&from) else {
            return Err(SourceError::NotFound(format!("move {from}")));
        };
        let now = file_entry(base(&from), f);
        if !expected.matches(&now) {
            return Ok(Moved::Changed(now));
        }
        if s.files.contains_key(&to) || s.dirs.contains(&to) {
            return Err(SourceError::AlreadyExists(to));
        }
        if !s.is_dir(parent(&to)) {
            return Err(SourceError::NotFound(format!("move {from} -> {to}")));
        }
        if let Some(f) = s.files.remove(&from) {
            s.files.insert(to, f);
        }
        Ok(Moved::Done)
    }

    async fn server_now(&self) -> Result<DateTime<Utc>, SourceError> {
        Ok(self.now())
    }
}

/// Hex MD5 of `bytes`, as a fetch reports it.
pub fn md5_hex(bytes: &[u8]) -> String {
    crate::hash::md5_hex(bytes).expect("OpenSSL computes an MD5")
}

/// One call FOI received.
#[derive(Debug, Clone, PartialEq)]
pub struct FoiCall {
    /// Remitter.
    pub remitter: String,
    /// File name.
    pub file_name: String,
    /// The spooled bytes it was sent.
    pub bytes: Vec<u8>,
}

/// A fake FOI answering with a settable outcome (success by default).
#[derive(Debug)]
pub struct FakeFoi {
    calls: Mutex<Vec<FoiCall>>,
    outcome: Mutex<FoiOutcome>,
}

impl Default for FakeFoi {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeFoi {
    /// The result a default [`FakeFoi`] extracts.
    pub fn default_result() -> Value {
        json!([{"invoice": "INV-1", "amount": "100.00"}])
    }

    /// Answers `Success(default_result())`.
    pub fn new() -> Self {
        Self {
            calls: Mutex::new(Vec::new()),
            outcome: Mutex::new(FoiOutcome::Success(Self::default_result())),
        }
    }

    /// Sets the answer to every later call.
    pub fn set(&self, outcome: FoiOutcome) {
        *lock(&self.outcome) = outcome;
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<FoiCall> {
        lock(&self.calls).clone()
    }
}

#[async_trait]
impl Extractor for FakeFoi {
    async fn extract(&self, remitter: &str, file_name: &str, content: &Content) -> FoiOutcome {
        let bytes = match content {
            Content::Memory(b) => b.clone(),
            Content::Spooled(p) => std::fs::read(p).unwrap_or_default(),
        };
        lock(&self.calls).push(FoiCall {
            remitter: remitter.into(),
            file_name: file_name.into(),
            bytes,
        });
        lock(&self.outcome).clone()
    }
}

/// A fake ITM answering with a settable result (accepting by default).
#[derive(Debug)]
pub struct FakeItm {
    calls: Mutex<Vec<(ItmSubmission, String)>>,
    answer: Mutex<Result<(), DownstreamError>>,
    /// Takes each call and never answers (an instance killed mid-call).
    hang: AtomicBool,
}

impl Default for FakeItm {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeItm {
    /// Accepts every submission.
    pub fn new() -> Self {
        Self {
            calls: Mutex::new(Vec::new()),
            answer: Mutex::new(Ok(())),
            hang: AtomicBool::new(false),
        }
    }

    /// Sets the answer to every later call.
    pub fn set(&self, answer: Result<(), DownstreamError>) {
        *lock(&self.answer) = answer;
    }

    /// Later calls are taken and never answered (or answered again).
    pub fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Ordering::Relaxed);
    }

    /// Every submission so far, with its idempotency key.
    pub fn calls(&self) -> Vec<(ItmSubmission, String)> {
        lock(&self.calls).clone()
    }
}

#[async_trait]
impl Submitter for FakeItm {
    async fn submit(
        &self,
        sub: &ItmSubmission,
        idempotency_key: &str,
    ) -> Result<(), DownstreamError> {
        lock(&self.calls).push((sub.clone(), idempotency_key.into()));
        if self.hang.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        lock(&self.answer).clone()
    }
}

/// One delivery attempt IQube saw.
#[derive(Debug, Clone, PartialEq)]
pub struct IqubeCall {
    /// The JSON body.
    pub payload: Value,
    /// The `Idempotency-Key`.
    pub key: String,
    /// True when IQube was up and took it.
    pub accepted: bool,
}

/// A fake IQube that is up (accepting) or down (refusing).
#[derive(Debug)]
pub struct FakeIqube {
    calls: Mutex<Vec<IqubeCall>>,
    up: AtomicBool,
    /// How long each answer takes (the call is seen at once).
    delay: Mutex<Duration>,
}

impl Default for FakeIqube {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeIqube {
    /// An IQube that is up.
    pub fn new() -> Self {
        Self {
            calls: Mutex::new(Vec::new()),
            up: AtomicBool::new(true),
            delay: Mutex::new(Duration::ZERO),
        }
    }

    /// Makes every later answer take `delay`.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.delay) = delay;
    }

    /// Brings IQube up or down.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// Every attempt so far, refused ones included.
    pub fn calls(&self) -> Vec<IqubeCall> {
        lock(&self.calls).clone()
    }

    /// The attempts IQube accepted.
    pub fn delivered(&self) -> Vec<IqubeCall> {
        self.calls().into_iter().filter(|c| c.accepted).collect()
    }
}

#[async_trait]
impl Notifier for FakeIqube {
    async fn notify(&self, payload: &Value, key: &str) -> Result<(), DownstreamError> {
        let accepted = self.up.load(Ordering::SeqCst);
        lock(&self.calls).push(IqubeCall {
            payload: payload.clone(),
            key: key.into(),
            accepted,
        });
        let delay = *lock(&self.delay);
        tokio::time::sleep(delay).await;
        if accepted {
            Ok(())
        } else {
            Err(DownstreamError::Status {
                service: "IQube",
                status: 503,
                body: "down".into(),
            })
        }
    }
}

/// Settings over the stand-ins: source `in`, archive `archive`, spooling
/// into `spool_dir`, default temp names, 60 s minimum age, no wait between
/// looks, two files at once.
pub fn settings(spool_dir: std::path::PathBuf) -> RunSettings {
    RunSettings {
        source_dir: "in".into(),
        archive_dir: "archive".into(),
        spool_dir,
        ignore: TempNameFilter::default(),
        stable_min_age: Duration::from_secs(60),
        stable_check_interval: Duration::ZERO,
        max_concurrent_files: 2,
        read_failure_notify_after: 3,
        duplicate_content: crate::config::DuplicateContent::Process,
        duplicate_window_days: 90,
        run_detail_retention: None,
        delivery_budget: Duration::from_secs(30),
    }
}
