//! In-memory stand-ins for the share, the database and the downstream
//! services, for unit tests of the engine without servers.

use crate::domain::FileReport;
use crate::domain::{ARCHIVE_SUCCEEDED, FileStatus};
use crate::downstream::{
    DownstreamError, Extractor, FoiOutcome, ItmSubmission, Notifier, Submitter,
};
use crate::engine::{Deps, Engine, Identity, RunSettings};
use crate::scan::names::TempNameFilter;
use crate::source::{Content, Entry, Expected, Fetched, FileSource, Moved, SourceError, join};
use crate::store::{
    ActiveRun, ArchiveCandidate, ArchiveStore, Claim, ClaimRequest, ClaimStore, Guard,
    KnownVersion, OutboxStore, PendingNotification, RunStart, RunStore, StoreError, SupersededFile,
    TakenWork, WorkStore,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use uuid::Uuid;

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
        let bytes = {
            let mut s = lock(&self.state);
            s.fetches.push(path.clone());
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
    hex::encode(Md5::digest(bytes))
}

/// A row of the `files` table.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    /// Row id.
    pub id: i64,
    /// Remitter folder.
    pub remitter: String,
    /// File name.
    pub file_name: String,
    /// Logical name.
    pub base_name: String,
    /// Hex MD5.
    pub md5: String,
    /// Size when last seen.
    pub size: i64,
    /// Last-write time when last seen.
    pub mtime: DateTime<Utc>,
    /// Change time when last seen.
    pub ctime: Option<DateTime<Utc>>,
    /// Latest status.
    pub status: FileStatus,
    /// The run that claimed it.
    pub run_id: Uuid,
    /// Where the archive move put it.
    pub archive_path: Option<String>,
    /// Last claim or status change.
    pub updated_at: DateTime<Utc>,
    /// The token of the current claim.
    pub claim_token: Uuid,
    /// The process (incarnation) holding the current claim.
    pub claimed_by: Uuid,
}

impl FileRow {
    /// True once the archive move is recorded.
    pub fn archived(&self) -> bool {
        self.archive_path.is_some()
    }
}

/// A row of `file_events`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// The file.
    pub file_id: i64,
    /// Status (or `archive_succeeded`).
    pub status: String,
    /// Step details.
    pub detail: Value,
}

/// A row of the notification outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationRow {
    /// Outbox id.
    pub id: i64,
    /// `file_failed:<file_id>` or `run_failed:<run_id>`.
    pub dedupe_key: String,
    /// The JSON body.
    pub payload: Value,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// True once IQube accepted it.
    pub delivered: bool,
    /// Not attempted again before this time (backoff).
    pub next_attempt_at: DateTime<Utc>,
}

/// A row of `runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// Run id.
    pub id: Uuid,
    /// `running`, `completed`, `failed` or `abandoned`.
    pub status: String,
    /// What started it.
    pub trigger: String,
    /// Which process ran it.
    pub instance: String,
    /// The summary, once finished.
    pub summary: Value,
    /// The error code and message of a failed run.
    pub error: Option<(String, String)>,
    /// True for a dry run's row.
    pub dry_run: bool,
    /// The incarnation that finishes it (`None`: handed over).
    pub owner: Option<Uuid>,
    /// The `INSTANCE_ID` that finished it.
    pub finished_by: Option<String>,
    /// The stored plan, once planned.
    pub plan: Option<Value>,
}

/// A row of `run_work`.
#[derive(Debug, Clone)]
struct WorkRow {
    run_id: Uuid,
    seq: i32,
    remitter: String,
    rank: i32,
    group: crate::plan::Group,
    taken_by: Option<Uuid>,
    done: bool,
    report: Option<FileReport>,
}

#[derive(Debug, Default)]
struct StoreState {
    files: Vec<FileRow>,
    events: Vec<EventRow>,
    notifications: Vec<NotificationRow>,
    runs: Vec<RunRow>,
    superseded: Vec<(SupersededFile, Option<Option<String>>)>,
    read_failures: std::collections::HashMap<String, u32>,
    work: Vec<WorkRow>,
    /// Incarnations the tests declared dead (every other one is alive).
    dead: std::collections::HashSet<Uuid>,
    unavailable: bool,
}

impl StoreState {
    fn check(&self) -> Result<(), StoreError> {
        if self.unavailable {
            Err(StoreError::Unavailable("injected database outage".into()))
        } else {
            Ok(())
        }
    }

    fn alive(&self, incarnation: Uuid) -> bool {
        !self.dead.contains(&incarnation)
    }

    fn takeable(&self, w: &WorkRow, holder: Uuid) -> bool {
        !w.done
            && match w.taken_by {
                None => true,
                Some(by) => by != holder && !self.alive(by),
            }
    }

    fn event(&mut self, file_id: i64, status: &str, detail: Value) {
        self.events.push(EventRow {
            file_id,
            status: status.to_string(),
            detail,
        });
    }

    fn enqueue(&mut self, key: String, payload: &Value) {
        if self.notifications.iter().any(|n| n.dedupe_key == key) {
            return;
        }
        let id = self.notifications.len() as i64 + 1;
        self.notifications.push(NotificationRow {
            id,
            dedupe_key: key,
            payload: payload.clone(),
            attempts: 0,
            last_error: None,
            delivered: false,
            next_attempt_at: Utc::now(),
        });
    }
}

/// An in-memory [`Store`](crate::store::Store) with the semantics of the Postgres one.
#[derive(Debug, Default)]
pub struct MemStore {
    state: Arc<Mutex<StoreState>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every undelivered notification due now, as if its backoff had passed.
    pub fn make_notifications_due(&self) {
        for n in lock(&self.state).notifications.iter_mut() {
            n.next_attempt_at = Utc::now();
        }
    }

    /// Every `files` row, by id.
    pub fn files(&self) -> Vec<FileRow> {
        lock(&self.state).files.clone()
    }

    /// One `files` row.
    pub fn file(&self, id: i64) -> Option<FileRow> {
        lock(&self.state).files.iter().find(|f| f.id == id).cloned()
    }

    /// The event statuses of a file, oldest first.
    pub fn events(&self, file_id: i64) -> Vec<String> {
        self.event_rows(file_id)
            .into_iter()
            .map(|e| e.status)
            .collect()
    }

    /// The events of a file with their details, oldest first.
    pub fn event_rows(&self, file_id: i64) -> Vec<EventRow> {
        lock(&self.state)
            .events
            .iter()
            .filter(|e| e.file_id == file_id)
            .cloned()
            .collect()
    }

    /// The notification outbox, by id.
    pub fn notifications(&self) -> Vec<NotificationRow> {
        lock(&self.state).notifications.clone()
    }

    /// Every run, oldest first.
    pub fn runs(&self) -> Vec<RunRow> {
        lock(&self.state).runs.clone()
    }

    /// Sets a status without an event, as an operator's SQL would (`ops_done`).
    pub fn set_status_raw(&self, file_id: i64, status: &str) {
        let mut s = lock(&self.state);
        if let Some(f) = s.files.iter_mut().find(|f| f.id == file_id) {
            f.status = status.parse().expect("a file status");
        }
    }

    /// Makes every call fail with [`StoreError::Unavailable`] (or work again).
    pub fn set_unavailable(&self, down: bool) {
        lock(&self.state).unavailable = down;
    }

    /// Declares an instance dead, as three missed heartbeats would: its
    /// claims, candidates and runs are taken over.
    pub fn mark_dead(&self, incarnation: Uuid) {
        lock(&self.state).dead.insert(incarnation);
    }
}

#[async_trait]
impl RunStore for MemStore {
    async fn ping(&self) -> Result<(), StoreError> {
        lock(&self.state).check()
    }

    async fn begin_run(
        &self,
        run_id: Uuid,
        trigger: &str,
        instance: &str,
        owner: Uuid,
    ) -> Result<RunStart, StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        if let Some(r) = s.runs.iter().find(|r| r.status == "running" && !r.dry_run) {
            return Ok(RunStart::Busy {
                running: r.id,
                owner_alive: r.owner.is_some_and(|o| s.alive(o)),
            });
        }
        s.runs.push(RunRow {
            id: run_id,
            status: "running".into(),
            trigger: trigger.into(),
            instance: instance.into(),
            summary: Value::Null,
            error: None,
            dry_run: false,
            owner: Some(owner),
            finished_by: None,
            plan: None,
        });
        Ok(RunStart::Started)
    }

    async fn finish_run(&self, end: &crate::store::RunEnd<'_>) -> Result<bool, StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        let Some(r) = s
            .runs
            .iter_mut()
            .find(|r| r.id == end.run_id && r.owner == Some(end.owner) && r.status == "running")
        else {
            return Ok(false);
        };
        r.status = end.status.into();
        r.summary = end.summary.clone();
        r.error = end.error.map(|(c, m)| (c.into(), m.into()));
        r.finished_by = Some(end.finished_by.into());
        r.plan = None;
        if let Some(payload) = end.notification {
            s.enqueue(format!("run_failed:{}", end.run_id), payload);
        }
        s.work.retain(|w| w.run_id != end.run_id);
        Ok(true)
    }

    async fn prune_run_details(&self, _older_than: Duration) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn record_dry_run(&self, row: &crate::store::DryRunRow<'_>) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        s.runs.push(RunRow {
            id: row.run_id,
            status: row.status.into(),
            trigger: row.trigger.into(),
            instance: row.instance.into(),
            summary: row.summary.clone(),
            error: row.error.map(|(c, m)| (c.into(), m.into())),
            dry_run: true,
            owner: None,
            finished_by: None,
            plan: None,
        });
        Ok(())
    }

    async fn backlog(&self) -> Result<crate::metrics::Backlog, StoreError> {
        lock(&self.state).check()?;
        Ok(crate::metrics::Backlog::default())
    }
}

#[async_trait]
impl ClaimStore for MemStore {
    async fn group_versions(&self, keys: &[String]) -> Result<Vec<KnownVersion>, StoreError> {
        let s = lock(&self.state);
        s.check()?;
        Ok(s.files
            .iter()
            .filter(|f| keys.contains(&crate::plan::versions::group_key(&f.remitter, &f.base_name)))
            .map(|f| KnownVersion {
                id: f.id,
                remitter: f.remitter.clone(),
                file_name: f.file_name.clone(),
                size: f.size,
                mtime: f.mtime,
                ctime: f.ctime,
                status: f.status.clone(),
                archived: f.archived(),
            })
            .collect())
    }

    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let ClaimRequest {
            run_id,
            remitter,
            file_name,
            base_name,
            md5,
            size,
            mtime,
            ctime,
            seq,
            holder,
            token,
        } = *req;
        let mut s = lock(&self.state);
        s.check()?;
        let holds = s
            .work
            .iter()
            .any(|w| w.run_id == run_id && w.seq == seq && w.taken_by == Some(holder) && !w.done);
        if !holds {
            return Err(StoreError::WorkLost);
        }
        let dead = s.dead.clone();
        let now = Utc::now();
        if let Some(f) = s
            .files
            .iter_mut()
            .find(|f| f.remitter == remitter && f.file_name == file_name && f.md5 == md5)
        {
            if f.claimed_by == holder
                && f.claim_token == token
                && f.status == FileStatus::Processing
            {
                return Ok(Claim::New {
                    id: f.id,
                    token,
                    recovered: false,
                });
            }
            f.size = size;
            f.mtime = mtime;
            f.ctime = Some(ctime);
            if f.status.is_archivable() {
                f.archive_path = None;
            }
            let retry = f.status == FileStatus::RetryRequested;
            let expired = retry
                || f.status == FileStatus::Processing
                    && f.claimed_by != holder
                    && dead.contains(&f.claimed_by);
            if !expired {
                return Ok(Claim::Exists {
                    id: f.id,
                    status: f.status.clone(),
                });
            }
            f.run_id = run_id;
            f.updated_at = now;
            f.claim_token = token;
            f.claimed_by = holder;
            f.status = FileStatus::Processing;
            let id = f.id;
            let detail = if retry {
                json!({"run_id": run_id, "retry": "an operator asked for this file to be sent again"})
            } else {
                json!({"run_id": run_id, "recovered": "the instance holding the claim died"})
            };
            s.event(id, FileStatus::Processing.as_str(), detail);
            return Ok(Claim::New {
                id,
                token,
                recovered: !retry,
            });
        }
        let id = s.files.len() as i64 + 1;
        s.files.push(FileRow {
            id,
            remitter: remitter.into(),
            file_name: file_name.into(),
            base_name: base_name.into(),
            md5: md5.into(),
            size,
            mtime,
            ctime: Some(ctime),
            status: FileStatus::Processing,
            run_id,
            archive_path: None,
            updated_at: now,
            claim_token: token,
            claimed_by: holder,
        });
        s.event(
            id,
            FileStatus::Processing.as_str(),
            json!({"run_id": run_id}),
        );
        Ok(Claim::New {
            id,
            token,
            recovered: false,
        })
    }

    async fn set_status(
        &self,
        file_id: i64,
        token: Uuid,
        status: FileStatus,
        detail: &Value,
        notification: Option<&Value>,
    ) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        let Some(f) = s.files.iter_mut().find(|f| {
            f.id == file_id && f.claim_token == token && f.status == FileStatus::Processing
        }) else {
            return Err(StoreError::ClaimLost(file_id));
        };
        f.status = status.clone();
        f.updated_at = Utc::now();
        s.event(file_id, status.as_str(), detail.clone());
        if let Some(payload) = notification {
            let claims = s
                .events
                .iter()
                .filter(|e| e.file_id == file_id && e.status == FileStatus::Processing.as_str())
                .count();
            let key = crate::store::file_failed_key(file_id, claims as i64);
            s.enqueue(key, payload);
        }
        Ok(())
    }

    async fn rearchive(&self, file_ids: &[i64]) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        for f in s.files.iter_mut().filter(|f| file_ids.contains(&f.id)) {
            if f.status.is_archivable() {
                f.archive_path = None;
            }
        }
        Ok(())
    }

    async fn record_read_failure(
        &self,
        remitter: &str,
        file_name: &str,
        size: i64,
        mtime: DateTime<Utc>,
        _error: &str,
        notify_after: u32,
        notification: &Value,
    ) -> Result<u32, StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        let key = format!(
            "read_failed:{remitter}/{file_name}/{size}/{}",
            mtime.timestamp()
        );
        let count = s.read_failures.entry(key.clone()).or_insert(0);
        *count += 1;
        let n = *count;
        if n >= notify_after {
            s.enqueue(key, notification);
        }
        Ok(n)
    }

    async fn record_superseded(
        &self,
        _run_id: Uuid,
        files: &[SupersededFile],
    ) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        for f in files {
            // Unique among the versions still waiting for their move.
            let known = s.superseded.iter().any(|(k, resolved)| {
                resolved.is_none()
                    && k.remitter == f.remitter
                    && k.file_name == f.file_name
                    && k.size == f.size
                    && k.mtime == f.mtime
            });
            if !known {
                let mut row = f.clone();
                row.id = s.superseded.len() as i64 + 1;
                s.superseded.push((row, None));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl WorkStore for MemStore {
    async fn add_work(
        &self,
        run_id: Uuid,
        plan: &Value,
        work: &[(i32, crate::plan::Group)],
    ) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        if let Some(r) = s.runs.iter_mut().find(|r| r.id == run_id) {
            r.plan = Some(plan.clone());
        }
        for (seq, (rank, g)) in work.iter().enumerate() {
            s.work.push(WorkRow {
                run_id,
                seq: seq as i32,
                remitter: g.newest.remitter.to_lowercase(),
                rank: *rank,
                group: g.clone(),
                taken_by: None,
                done: false,
                report: None,
            });
        }
        Ok(())
    }

    async fn active_run(&self) -> Result<Option<ActiveRun>, StoreError> {
        let s = lock(&self.state);
        s.check()?;
        Ok(s.runs
            .iter()
            .find(|r| r.status == "running" && !r.dry_run)
            .map(|r| ActiveRun {
                run_id: r.id,
                owner_alive: r.owner.is_some_and(|o| s.alive(o)),
                planned: r.plan.is_some(),
                takeable: s.work.iter().any(|w| {
                    w.run_id == r.id && !w.done && w.taken_by.is_none_or(|by| !s.alive(by))
                }),
            }))
    }

    async fn adopt_run(
        &self,
        run_id: Uuid,
        owner: Uuid,
    ) -> Result<Option<Option<Value>>, StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        let dead = s.dead.clone();
        Ok(s.runs
            .iter_mut()
            .find(|r| {
                r.id == run_id && r.status == "running" && r.owner.is_none_or(|o| dead.contains(&o))
            })
            .map(|r| {
                r.owner = Some(owner);
                r.plan.clone()
            }))
    }

    async fn hand_over(&self, run_id: Uuid, owner: Uuid) -> Result<bool, StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        Ok(s.runs
            .iter_mut()
            .find(|r| r.id == run_id && r.owner == Some(owner) && r.status == "running")
            .map(|r| r.owner = None)
            .is_some())
    }

    async fn take_work(
        &self,
        run_id: Uuid,
        holder: Uuid,
        limit: i64,
    ) -> Result<Vec<TakenWork>, StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        let mut order: Vec<usize> = (0..s.work.len())
            .filter(|&i| s.work[i].run_id == run_id && s.takeable(&s.work[i], holder))
            .collect();
        order.sort_by_key(|&i| {
            let w = &s.work[i];
            (w.rank, w.remitter.clone(), w.seq)
        });
        order.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        order.sort_unstable();
        let mut taken = Vec::new();
        for i in order {
            let w = &mut s.work[i];
            let taken_over = w.taken_by.is_some();
            w.taken_by = Some(holder);
            taken.push(TakenWork {
                seq: w.seq,
                group: w.group.clone(),
                taken_over,
            });
        }
        Ok(taken)
    }

    async fn complete_work(
        &self,
        run_id: Uuid,
        seq: i32,
        holder: Uuid,
        _instance: &str,
        report: &FileReport,
    ) -> Result<bool, StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        Ok(s.work
            .iter_mut()
            .find(|w| w.run_id == run_id && w.seq == seq && w.taken_by == Some(holder) && !w.done)
            .map(|w| {
                w.done = true;
                w.report = Some(report.clone());
            })
            .is_some())
    }

    async fn release_work(
        &self,
        run_id: Uuid,
        holder: Uuid,
        seq: Option<i32>,
    ) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        for w in s.work.iter_mut().filter(|w| {
            w.run_id == run_id
                && seq.is_none_or(|q| q == w.seq)
                && w.taken_by == Some(holder)
                && !w.done
        }) {
            w.taken_by = None;
        }
        Ok(())
    }

    async fn open_work(&self, run_id: Uuid) -> Result<i64, StoreError> {
        let s = lock(&self.state);
        s.check()?;
        Ok(s.work
            .iter()
            .filter(|w| w.run_id == run_id && !w.done)
            .count() as i64)
    }

    async fn pending_work(
        &self,
        run_id: Uuid,
    ) -> Result<Vec<(i32, crate::plan::Group)>, StoreError> {
        let s = lock(&self.state);
        s.check()?;
        Ok(s.work
            .iter()
            .filter(|w| w.run_id == run_id && !w.done && w.taken_by.is_none())
            .map(|w| (w.seq, w.group.clone()))
            .collect())
    }

    async fn run_results(
        &self,
        run_id: Uuid,
    ) -> Result<Vec<(crate::plan::Group, Option<FileReport>)>, StoreError> {
        let s = lock(&self.state);
        s.check()?;
        Ok(s.work
            .iter()
            .filter(|w| w.run_id == run_id)
            .map(|w| (w.group.clone(), w.report.clone()))
            .collect())
    }

    async fn others_alive(&self, _me: Uuid) -> Result<bool, StoreError> {
        lock(&self.state).check()?;
        Ok(false)
    }
}

#[async_trait]
impl OutboxStore for MemStore {
    async fn take_due_notifications(
        &self,
        limit: i64,
    ) -> Result<Vec<PendingNotification>, StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        let now = Utc::now();
        let mut due: Vec<&mut NotificationRow> = s
            .notifications
            .iter_mut()
            .filter(|n| !n.delivered && n.next_attempt_at <= now)
            .collect();
        due.sort_by_key(|n| (n.attempts > 0, n.next_attempt_at, n.id));
        Ok(due
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(0))
            .map(|n| {
                n.attempts += 1;
                let delay = crate::store::retry_delay(n.attempts);
                n.next_attempt_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
                PendingNotification {
                    id: n.id,
                    key: n.dedupe_key.clone(),
                    payload: n.payload.clone(),
                }
            })
            .collect())
    }

    async fn notification_attempted(&self, id: i64, error: Option<&str>) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        if let Some(n) = s.notifications.iter_mut().find(|n| n.id == id) {
            n.last_error = error.map(str::to_string);
            n.delivered = error.is_none();
        }
        Ok(())
    }
}

#[async_trait]
impl ArchiveStore for MemStore {
    async fn archive_candidates(&self) -> Result<Vec<ArchiveCandidate>, StoreError> {
        let s = lock(&self.state);
        s.check()?;
        Ok(s.files
            .iter()
            .filter(|f| !f.archived() && f.status.is_archivable())
            .map(|f| ArchiveCandidate {
                id: f.id,
                remitter: f.remitter.clone(),
                file_name: f.file_name.clone(),
                size: f.size,
                mtime: f.mtime,
                ctime: f.ctime,
                md5: f.md5.clone(),
            })
            .collect())
    }

    async fn mark_archived(&self, file_id: i64, archive_path: &str) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        let Some(f) = s
            .files
            .iter_mut()
            .find(|f| f.id == file_id && !f.archived())
        else {
            return Ok(());
        };
        f.archive_path = Some(archive_path.into());
        s.event(
            file_id,
            ARCHIVE_SUCCEEDED,
            json!({"archive_path": archive_path}),
        );
        Ok(())
    }

    async fn pending_superseded(&self) -> Result<Vec<SupersededFile>, StoreError> {
        let s = lock(&self.state);
        s.check()?;
        Ok(s.superseded
            .iter()
            .filter(|(_, resolved)| resolved.is_none())
            .map(|(f, _)| f.clone())
            .collect())
    }

    async fn resolve_superseded(
        &self,
        id: i64,
        archive_path: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        s.check()?;
        let Some((f, resolved)) = s.superseded.iter_mut().find(|(f, _)| f.id == id) else {
            return Ok(());
        };
        if resolved.is_some() {
            return Ok(());
        }
        *resolved = Some(archive_path.map(str::to_string));
        // A claimed version moved: its row and its one event, as Postgres does.
        let file_id = f.file_id;
        if let (Some(file_id), Some(to)) = (file_id, archive_path)
            && let Some(row) = s.files.iter_mut().find(|r| r.id == file_id)
        {
            row.archive_path = Some(to.into());
            s.event(
                file_id,
                ARCHIVE_SUCCEEDED,
                json!({"archive_path": to, "superseded": true}),
            );
        }
        Ok(())
    }

    async fn try_housekeeping_lock(&self) -> Result<Option<Guard>, StoreError> {
        lock(&self.state).check()?;
        Ok(Some(Box::new(())))
    }
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
        run_detail_retention: None,
        delivery_budget: Duration::from_secs(30),
    }
}

/// An engine named `test` over the stand-ins, with `settings`.
pub fn engine(
    settings: RunSettings,
    source: Arc<MemSource>,
    store: Arc<MemStore>,
    foi: Arc<FakeFoi>,
    itm: Arc<FakeItm>,
    iqube: Arc<FakeIqube>,
) -> Arc<Engine> {
    let deps = Deps {
        source,
        store,
        foi,
        itm,
        iqube,
        metrics: Default::default(),
        kept: Default::default(),
    };
    let identity = Identity {
        instance: "test".into(),
        incarnation: Uuid::new_v4(),
    };
    Engine::new(deps, settings, identity)
}
