//! Archive, in the background after a run has answered: superseded versions,
//! then housekeeping of `success`/`ops_*` files, then the notification outbox.
//! Moves never overwrite; a failed move stays in place for the next pass.

use crate::downstream::Notifier;
use crate::source::{Entry, FileSource, SourceError, join};
use crate::store::{ArchiveCandidate, Store, SupersededFile};
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

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
    record: Record,
}

/// Where a move is recorded.
enum Record {
    /// `superseded_files.id`.
    Superseded(i64),
    /// `files.id`.
    Processed(i64),
}

impl From<SupersededFile> for Due {
    fn from(f: SupersededFile) -> Self {
        Due {
            remitter: f.remitter,
            file_name: f.file_name,
            size: f.size,
            mtime: f.mtime,
            record: Record::Superseded(f.id),
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
            record: Record::Processed(f.id),
        }
    }
}

/// Moves files into the archive and delivers queued notifications.
pub struct Archiver {
    /// The share.
    pub source: Arc<dyn FileSource>,
    /// Postgres.
    pub store: Arc<dyn Store>,
    /// IQube.
    pub iqube: Arc<dyn Notifier>,
    /// Share-relative source folder.
    pub source_dir: String,
    /// Share-relative archive folder.
    pub archive_dir: String,
    /// Archive folders known to exist during this pass.
    pub made_dirs: std::sync::Mutex<std::collections::HashSet<String>>,
}

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
    /// Moves `remitter/name` into the archive under a free name; returns the archive path.
    pub async fn move_to_archive(&self, remitter: &str, name: &str) -> Result<String, SourceError> {
        let from = join(&[&self.source_dir, remitter, name]);
        let dir = join(&[&self.archive_dir, remitter]);
        // One mkdir per remitter and pass, not one per file.
        let known = self
            .made_dirs
            .lock()
            .map(|d| d.contains(&dir))
            .unwrap_or(false);
        if !known {
            self.source.mkdir_all(&dir).await?;
            if let Ok(mut d) = self.made_dirs.lock() {
                d.insert(dir.clone());
            }
        }
        for n in 0..1000 {
            let to = join(&[&dir, &suffixed(name, n)]);
            match self.source.rename_no_replace(&from, &to).await {
                Ok(()) => return Ok(to),
                Err(SourceError::AlreadyExists(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(SourceError::AlreadyExists(format!(
            "{dir}/{name} and 999 suffixed names"
        )))
    }

    /// Archives the superseded versions runs recorded, provided the file in
    /// the source is still that version; one that is gone or was replaced is
    /// resolved without a move.
    pub async fn archive_superseded(&self, report: &mut PassReport) {
        match self.store.pending_superseded().await {
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
        match self.store.archive_candidates().await {
            Ok(due) => {
                self.move_due(due.into_iter().map(Due::from).collect(), report)
                    .await
            }
            Err(e) => tracing::warn!(error = %e, "housekeeping could not list files to archive"),
        }
    }

    /// Checks each due file against one listing of its remitter folder, moves
    /// the ones that still hold the recorded version (a few at a time: the
    /// database work overlaps the serialised SMB calls) and records the result.
    async fn move_due(&self, due: Vec<Due>, report: &mut PassReport) {
        let mut by_remitter: BTreeMap<String, Vec<Due>> = BTreeMap::new();
        for d in due {
            by_remitter.entry(d.remitter.clone()).or_default().push(d);
        }
        for (remitter, files) in by_remitter {
            let listing: HashMap<String, Entry> = match self
                .source
                .list(&join(&[&self.source_dir, &remitter]))
                .await
            {
                Ok(entries) => entries.into_iter().map(|e| (e.name.clone(), e)).collect(),
                Err(SourceError::NotFound(_)) => HashMap::new(),
                Err(e) => {
                    tracing::warn!(remitter = %remitter, error = %e, "archive check failed; retried next pass");
                    report.failed += files.len();
                    continue;
                }
            };
            // A processed file missing from the source may have been moved by
            // an earlier pass whose answer was lost: look in the archive once.
            let archived: HashMap<String, Entry> = if files.iter().any(|d| {
                matches!(d.record, Record::Processed(_)) && !listing.contains_key(&d.file_name)
            }) {
                match self
                    .source
                    .list(&join(&[&self.archive_dir, &remitter]))
                    .await
                {
                    Ok(entries) => entries.into_iter().map(|e| (e.name.clone(), e)).collect(),
                    Err(_) => HashMap::new(),
                }
            } else {
                HashMap::new()
            };
            let archived = &archived;
            // One move per name and pass: two moves of one name at once could
            // both find the same free archive name. Only a due file that still
            // matches the source moves, so that is the one that takes the name.
            let mut moving = std::collections::HashSet::new();
            let jobs: Vec<_> = files
                .into_iter()
                .filter_map(|d| {
                    let current = listing.get(&d.file_name).cloned();
                    let moves = current
                        .as_ref()
                        .is_some_and(|e| e.size as i64 == d.size && e.mtime == d.mtime);
                    if moves && !moving.insert(d.file_name.clone()) {
                        return None;
                    }
                    Some(self.move_one(d, current, archived).boxed())
                })
                .collect();
            let outcomes: Vec<bool> = futures::stream::iter(jobs)
                .buffer_unordered(4)
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
        }
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
        let moved_to = match current {
            Some(e) if e.size as i64 == d.size && e.mtime == d.mtime => {
                match self.move_to_archive(&d.remitter, &d.file_name).await {
                    Ok(to) => Some(to),
                    Err(e) => {
                        tracing::warn!(remitter = %d.remitter, file = %d.file_name, error = %e, "archive move failed; retried next pass");
                        return Some(false);
                    }
                }
            }
            Some(_) => {
                tracing::info!(remitter = %d.remitter, file = %d.file_name, "the source holds another version now; not archived");
                None
            }
            None => {
                // Moved by a pass that lost the server's answer: the archive holds it.
                let found = (0..1000)
                    .map(|n| suffixed(&d.file_name, n))
                    .take_while(|name| archived.contains_key(name))
                    .find(|name| {
                        archived
                            .get(name)
                            .is_some_and(|e| e.size as i64 == d.size && e.mtime == d.mtime)
                    });
                match found {
                    Some(name) => {
                        tracing::info!(remitter = %d.remitter, file = %d.file_name, "already in the archive (an earlier move's answer was lost)");
                        Some(join(&[&self.archive_dir, &d.remitter, &name]))
                    }
                    None => {
                        tracing::warn!(remitter = %d.remitter, file = %d.file_name, "file to archive is not in the source folder");
                        None
                    }
                }
            }
        };
        let recorded = match (&d.record, &moved_to) {
            (Record::Superseded(id), to) => self.store.resolve_superseded(*id, to.as_deref()).await,
            (Record::Processed(id), Some(to)) => self.store.mark_archived(*id, to).await,
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

    /// Delivers queued IQube notifications; undelivered ones stay queued.
    pub async fn deliver_notifications(&self, report: &mut PassReport) {
        let pending = match self.store.pending_notifications(500).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the notification outbox");
                return;
            }
        };
        for n in pending {
            let result = self.iqube.notify(&n.payload, &n.key).await;
            if let Err(e) = &result {
                tracing::warn!(key = %n.key, error = %e, "IQube notification not delivered; kept for later");
            } else {
                report.notified += 1;
            }
            if let Err(e) = self
                .store
                .notification_attempted(n.id, result.err().as_deref())
                .await
            {
                tracing::error!(key = %n.key, error = %e, "could not record a notification attempt");
            }
        }
    }

    /// One background pass, under the housekeeping lock so one runs at a time
    /// across instances: superseded versions, notifications, housekeeping.
    pub async fn pass(&self) -> PassReport {
        let mut report = PassReport::default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let lease = loop {
            match self.store.try_housekeeping_lock().await {
                Ok(Some(l)) => break Some(l),
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
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
            self.deliver_notifications(&mut report).await;
            self.housekeeping(&mut report).await;
        } else {
            tracing::warn!("another housekeeping pass kept the lock; this one is skipped");
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
