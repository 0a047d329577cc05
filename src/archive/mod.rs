//! Archive, in the background after a run has answered: superseded versions,
//! then housekeeping of `success`/`ops_*` files, then the notification outbox
//! (bounded in time, so it never holds the archive or shutdown back).
//! A move never overwrites (the rename refuses an existing name and the next
//! suffix is tried) and moves only the version that was processed: the
//! check and the rename are one step on the share. Moves overlap, across
//! folders and within one; a failed move stays in place for the next pass.

use crate::engine::{Deps, RunSettings};
use crate::source::{Entry, Expected, Moved, SourceError, join};
use crate::store::{ArchiveCandidate, SupersededFile};
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `name` with ` (n)` before its extension: the n-th alternative archive name.
pub fn suffixed(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    match name.rfind('.') {
        Some(i) if i > 0 => format!("{} ({n}){}", &name[..i], &name[i..]),
        _ => format!("{name} ({n})"),
    }
}

/// A file due for the archive, from either list.
struct Due {
    remitter: String,
    file_name: String,
    size: i64,
    mtime: DateTime<Utc>,
    /// Change time, where it was recorded.
    ctime: Option<DateTime<Utc>>,
    /// MD5 of the processed content (superseded versions were never read).
    md5: Option<String>,
    record: Record,
}

/// Where a move is recorded.
enum Record {
    /// `superseded_files.id`, and its `files` row when it has one.
    Superseded(i64, Option<i64>),
    /// `files.id`.
    Processed(i64),
}

impl Due {
    /// The size and timestamps this file had when it was processed or
    /// found superseded.
    fn expected(&self) -> Expected {
        Expected {
            size: u64::try_from(self.size).unwrap_or(u64::MAX),
            mtime: self.mtime,
            ctime: self.ctime,
        }
    }

    /// True when `e` is still that version.
    fn matches(&self, e: &Entry) -> bool {
        self.expected().matches(e)
    }

    /// True when `e`, found in the archive, may be this version moved: the
    /// rename changed its change time, so that one is not compared.
    fn matches_archived(&self, e: &Entry) -> bool {
        self.expected().matches_but_ctime(e)
    }
}

impl From<SupersededFile> for Due {
    fn from(f: SupersededFile) -> Self {
        Due {
            remitter: f.remitter,
            file_name: f.file_name,
            size: f.size,
            mtime: f.mtime,
            ctime: f.ctime,
            // A claimed version's content; versions never read have none.
            md5: f.md5,
            record: Record::Superseded(f.id, f.file_id),
        }
    }
}

impl From<ArchiveCandidate> for Due {
    fn from(f: ArchiveCandidate) -> Self {
        Due {
            remitter: f.remitter,
            file_name: f.file_name,
            size: f.size,
            mtime: f.mtime,
            ctime: f.ctime,
            md5: Some(f.md5),
            record: Record::Processed(f.id),
        }
    }
}

/// Moves files into the archive and delivers queued notifications.
pub struct Archiver {
    /// The share, the database and IQube.
    deps: Arc<Deps>,
    /// The source and archive folders, and the delivery budget of a pass.
    settings: Arc<RunSettings>,
    /// Archive folders known to exist during this pass.
    made_dirs: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Cancelled on shutdown: no new move or delivery starts after it.
    stop: CancellationToken,
}

/// Remitter folders whose moves run at once.
const FOLDERS_AT_ONCE: usize = 8;
/// Moves at once within one folder.
const MOVES_PER_FOLDER: usize = 8;
/// Notifications sent to IQube at once.
const DELIVERY_CONCURRENCY: usize = 4;
/// Most notifications one pass attempts.
const DELIVERY_MAX_PER_PASS: usize = 500;

/// What a pass did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Files moved.
    pub moved: usize,
    /// Moves that failed and wait for the next pass.
    pub failed: usize,
    /// Notifications delivered.
    pub notified: usize,
}

impl Archiver {
    /// An archiver over `deps` with `settings`; it starts nothing new once
    /// `stop` is cancelled.
    pub fn new(deps: Arc<Deps>, settings: Arc<RunSettings>, stop: CancellationToken) -> Self {
        Self {
            deps,
            settings,
            made_dirs: Default::default(),
            stop,
        }
    }

    /// Moves `remitter/name` into the archive under the first free name
    /// (` (n)` suffixes), provided the source still holds the `expected`
    /// version; `Ok(None)` when it holds another one (nothing moved). The
    /// share refuses a taken name, so no archived file is ever replaced.
    pub async fn move_to_archive(
        &self,
        remitter: &str,
        name: &str,
        expected: &Expected,
    ) -> Result<Option<String>, SourceError> {
        let from = join(&[&self.settings.source_dir, remitter, name]);
        let dir = join(&[&self.settings.archive_dir, remitter]);
        // One mkdir per remitter and pass, not one per file.
        let known = self
            .made_dirs
            .lock()
            .map(|d| d.contains(&dir))
            .unwrap_or(false);
        if !known {
            self.deps.source.mkdir_all(&dir).await?;
            if let Ok(mut d) = self.made_dirs.lock() {
                d.insert(dir.clone());
            }
        }
        for n in 0..1000 {
            let to = join(&[&dir, &suffixed(name, n)]);
            match self.deps.source.move_file(&from, &to, expected).await {
                Ok(Moved::Done) => return Ok(Some(to)),
                Ok(Moved::Changed(_)) => return Ok(None),
                Err(SourceError::AlreadyExists(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(SourceError::AlreadyExists(format!(
            "{dir}/{name} and 999 suffixed names"
        )))
    }

    /// Moves `d` if the source still holds its version (checked by the move
    /// itself, so an upload that replaced it after the pass's listing is
    /// never archived unprocessed). `Ok(None)`: not moved, nothing to retry.
    async fn checked_move(&self, d: &Due) -> Result<Option<String>, SourceError> {
        let moved = self
            .move_to_archive(&d.remitter, &d.file_name, &d.expected())
            .await?;
        if moved.is_none() {
            tracing::info!(remitter = %d.remitter, file = %d.file_name, "replaced since the pass's listing; not archived");
        }
        Ok(moved)
    }

    /// True when the archived file `name` has the content that was processed
    /// (by MD5), so another file of the same size and time is never taken
    /// for it. Superseded versions have no MD5.
    async fn same_content(&self, d: &Due, name: &str) -> bool {
        let Some(md5) = &d.md5 else { return true };
        let Ok(tmp) = tempfile::NamedTempFile::new() else {
            return false;
        };
        let path = join(&[&self.settings.archive_dir, &d.remitter, name]);
        match self.deps.source.fetch(&path, tmp.path()).await {
            Ok(f) => f.md5 == *md5,
            Err(e) => {
                tracing::warn!(path = %path, error = %e, "archived file could not be read to compare");
                false
            }
        }
    }

    /// Archives the superseded versions runs recorded, provided the file in
    /// the source is still that version; one that is gone or was replaced is
    /// resolved without a move. A version with a `files` row (claimed
    /// before) is archived with it: `archived_at` and `archive_succeeded`.
    pub async fn archive_superseded(&self, report: &mut PassReport) {
        match self.deps.store.pending_superseded().await {
            Ok(due) => {
                self.move_due(due.into_iter().map(Due::from).collect(), report)
                    .await
            }
            Err(e) => tracing::warn!(error = %e, "could not list superseded versions"),
        }
    }

    /// Housekeeping: archive every `success`/`ops_*` file still in the source,
    /// provided the file there is still the version that was processed.
    pub async fn housekeeping(&self, report: &mut PassReport) {
        match self.deps.store.archive_candidates().await {
            Ok(due) => {
                self.move_due(due.into_iter().map(Due::from).collect(), report)
                    .await
            }
            Err(e) => tracing::warn!(error = %e, "housekeeping could not list files to archive"),
        }
    }

    /// Checks each due file against one listing of its remitter folder, moves
    /// the ones that still hold the recorded version and records the result;
    /// several folders and several moves per folder at once.
    async fn move_due(&self, due: Vec<Due>, report: &mut PassReport) {
        let mut by_remitter: BTreeMap<String, Vec<Due>> = BTreeMap::new();
        for d in due {
            by_remitter.entry(d.remitter.clone()).or_default().push(d);
        }
        let folders: Vec<PassReport> = futures::stream::iter(by_remitter)
            .map(|(remitter, files)| self.move_folder(remitter, files))
            .buffer_unordered(FOLDERS_AT_ONCE)
            .collect()
            .await;
        for f in folders {
            report.moved += f.moved;
            report.failed += f.failed;
        }
    }

    /// [`Self::move_due`] for the due files of one remitter folder.
    async fn move_folder(&self, remitter: String, files: Vec<Due>) -> PassReport {
        let mut report = PassReport::default();
        let listing: HashMap<String, Entry> = match self
            .deps
            .source
            .list(&join(&[&self.settings.source_dir, &remitter]))
            .await
        {
            Ok(entries) => entries.into_iter().map(|e| (e.name.clone(), e)).collect(),
            Err(SourceError::NotFound(_)) => HashMap::new(),
            Err(e) => {
                tracing::warn!(remitter = %remitter, error = %e, "archive check failed; retried next pass");
                report.failed += files.len();
                return report;
            }
        };
        // A file with a row (processed, or a claimed older version) missing
        // from the source may have been moved by an earlier pass whose answer
        // was lost: look in the archive once.
        let archived: HashMap<String, Entry> = if files
            .iter()
            .any(|d| d.md5.is_some() && !listing.contains_key(&d.file_name))
        {
            match self
                .deps
                .source
                .list(&join(&[&self.settings.archive_dir, &remitter]))
                .await
            {
                Ok(entries) => entries.into_iter().map(|e| (e.name.clone(), e)).collect(),
                Err(_) => HashMap::new(),
            }
        } else {
            HashMap::new()
        };
        let archived = &archived;
        // One move per name and pass: of two due rows for one name only the
        // one that matches the source can move.
        let mut moving = std::collections::HashSet::new();
        let jobs: Vec<_> = files
            .into_iter()
            .filter_map(|d| {
                let current = listing.get(&d.file_name).cloned();
                let moves = current.as_ref().is_some_and(|e| d.matches(e));
                if moves && !moving.insert(d.file_name.clone()) {
                    return None;
                }
                Some(self.move_one(d, current, archived).boxed())
            })
            .collect();
        let outcomes: Vec<bool> = futures::stream::iter(jobs)
            .buffer_unordered(MOVES_PER_FOLDER)
            .filter_map(|o| async move { o })
            .collect()
            .await;
        for moved in outcomes {
            if moved {
                report.moved += 1;
            } else {
                report.failed += 1;
            }
        }
        report
    }

    /// Moves one due file if `current` is still its version, and records it.
    /// `Some(true)` moved, `Some(false)` failed (retried next pass), `None`
    /// nothing to move.
    async fn move_one(
        &self,
        d: Due,
        current: Option<Entry>,
        archived: &HashMap<String, Entry>,
    ) -> Option<bool> {
        // After a shutdown request no new move starts; the next pass does it.
        if self.stop.is_cancelled() {
            return None;
        }
        let moved_to = match current {
            Some(e) if d.matches(&e) => match self.checked_move(&d).await {
                Ok(Some(to)) => Some(to),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(remitter = %d.remitter, file = %d.file_name, error = %e, "archive move failed; retried next pass");
                    return Some(false);
                }
            },
            Some(_) => {
                tracing::info!(remitter = %d.remitter, file = %d.file_name, "the source holds another version now; not archived");
                None
            }
            None => {
                // Moved by a pass that lost the server's answer: the archive
                // holds it under one of its names, with its size, time and content.
                let mut found = None;
                for name in (0..1000).map(|n| suffixed(&d.file_name, n)) {
                    let Some(e) = archived.get(&name) else { break };
                    if d.matches_archived(e) && self.same_content(&d, &name).await {
                        found = Some(name);
                        break;
                    }
                }
                match found {
                    Some(name) => {
                        tracing::info!(remitter = %d.remitter, file = %d.file_name, "already in the archive (an earlier move's answer was lost)");
                        Some(join(&[&self.settings.archive_dir, &d.remitter, &name]))
                    }
                    None => {
                        tracing::warn!(remitter = %d.remitter, file = %d.file_name, "file to archive is not in the source folder");
                        None
                    }
                }
            }
        };
        let recorded = match (&d.record, &moved_to) {
            (Record::Superseded(id, file_id), to) => {
                self.deps
                    .store
                    .resolve_superseded(*id, *file_id, to.as_deref())
                    .await
            }
            (Record::Processed(id), Some(to)) => self.deps.store.mark_archived(*id, to).await,
            // A processed file that is gone or replaced stays listed: an operator decides.
            (Record::Processed(_), None) => return None,
        };
        match (recorded, moved_to) {
            (Ok(()), Some(to)) => {
                tracing::info!(remitter = %d.remitter, file = %d.file_name, to = %to, "archived");
                Some(true)
            }
            (Ok(()), None) => None,
            (Err(e), to) => {
                tracing::error!(remitter = %d.remitter, file = %d.file_name, moved_to = ?to, error = %e, "archive result not recorded");
                Some(false)
            }
        }
    }

    /// Delivers due IQube notifications, a few at once. Each row taken
    /// counts an attempt and is backed off before it is sent (so an attempt
    /// cut short by a crash is not retried at once); undelivered rows stay
    /// queued. Rows never attempted go first, so old failures cannot hold
    /// back new notifications. Once `delivery_budget` has passed or shutdown
    /// was requested no new request starts, but requests already sent are
    /// awaited (each is bounded by `IQUBE_TIMEOUT_SECS`): dropping one whose
    /// answer is on its way would send it again on the next pass, and IQube
    /// would be told twice.
    pub async fn deliver_notifications(&self, report: &mut PassReport) {
        let deadline = tokio::time::Instant::now() + self.settings.delivery_budget;
        let mut taken = 0;
        while taken < DELIVERY_MAX_PER_PASS
            && !self.stop.is_cancelled()
            && tokio::time::Instant::now() < deadline
        {
            let batch = match self
                .deps
                .store
                .take_due_notifications(DELIVERY_CONCURRENCY as i64)
                .await
            {
                Ok(b) if b.is_empty() => break,
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the notification outbox");
                    return;
                }
            };
            taken += batch.len();
            let sends = futures::future::join_all(batch.iter().map(|n| async move {
                let result = self.deps.iqube.notify(&n.payload, &n.key).await;
                if let Err(e) = &result {
                    tracing::warn!(key = %n.key, error = %e, "IQube notification not delivered; kept for later");
                }
                let error = result.as_ref().err().map(ToString::to_string);
                self.record_attempt(n.id, &n.key, error.as_deref()).await;
                result.is_ok()
            }));
            report.notified += sends.await.into_iter().filter(|ok| *ok).count();
        }
    }

    async fn record_attempt(&self, id: i64, key: &str, error: Option<&str>) {
        if let Err(e) = self.deps.store.notification_attempted(id, error).await {
            tracing::error!(key = %key, error = %e, "could not record a notification attempt");
        }
    }

    /// One background pass, under the housekeeping lock so one runs at a time
    /// across instances: superseded versions and housekeeping first, then the
    /// outbox within its time budget, so a hanging IQube never holds back the
    /// archive. After shutdown was requested it stops starting new work.
    pub async fn pass(&self) -> PassReport {
        let mut report = PassReport::default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let lease = loop {
            match self.deps.store.try_housekeeping_lock().await {
                Ok(Some(l)) => break Some(l),
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = self.stop.cancelled() => break None,
                    }
                }
                Ok(None) => break None,
                Err(e) => {
                    tracing::warn!(error = %e, "housekeeping lock unavailable");
                    break None;
                }
            }
        };
        if let Some(_lease) = lease {
            self.archive_superseded(&mut report).await;
            self.housekeeping(&mut report).await;
            self.deliver_notifications(&mut report).await;
        } else {
            tracing::warn!(
                "another housekeeping pass kept the lock (or shutdown began); this one is skipped"
            );
        }
        tracing::info!(
            moved = report.moved,
            failed = report.failed,
            notified = report.notified,
            "background pass done"
        );
        report
    }
}

#[cfg(test)]
mod tests {
    use super::suffixed;

    #[test]
    fn suffix_goes_before_the_extension() {
        assert_eq!(suffixed("a.csv", 0), "a.csv");
        assert_eq!(suffixed("a.csv", 1), "a (1).csv");
        assert_eq!(suffixed("a.tar.gz", 2), "a.tar (2).gz");
        assert_eq!(suffixed("noext", 3), "noext (3)");
        assert_eq!(suffixed(".hidden", 1), ".hidden (1)");
    }
}
