//! Archive, in the background after a run has answered: superseded versions,
//! then housekeeping of `success`/`ops_*` files, then the notification outbox.
//! Moves never overwrite; a failed move stays in place for the next pass.

use crate::downstream::Notifier;
use crate::source::{FileSource, SourceError, join};
use crate::store::Store;
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
        self.source.mkdir_all(&dir).await?;
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
        let due = match self.store.pending_superseded().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "could not list superseded versions");
                return;
            }
        };
        for f in due {
            let path = join(&[&self.source_dir, &f.remitter, &f.file_name]);
            let resolved = match self.source.stat(&path).await {
                Ok(e) if e.size as i64 == f.size && e.mtime == f.mtime => {
                    match self.move_to_archive(&f.remitter, &f.file_name).await {
                        Ok(to) => {
                            tracing::info!(remitter = %f.remitter, file = %f.file_name, to = %to, "archived superseded version");
                            report.moved += 1;
                            Some(Some(to))
                        }
                        Err(e) => {
                            tracing::warn!(remitter = %f.remitter, file = %f.file_name, error = %e, "archive move failed; retried next pass");
                            report.failed += 1;
                            None
                        }
                    }
                }
                Ok(_) => {
                    tracing::info!(remitter = %f.remitter, file = %f.file_name, "superseded version was replaced; the next run decides again");
                    Some(None)
                }
                Err(SourceError::NotFound(_)) => {
                    tracing::info!(remitter = %f.remitter, file = %f.file_name, "superseded version already gone");
                    Some(None)
                }
                Err(e) => {
                    tracing::warn!(remitter = %f.remitter, file = %f.file_name, error = %e, "archive check failed; retried next pass");
                    report.failed += 1;
                    None
                }
            };
            if let Some(to) = resolved
                && let Err(e) = self.store.resolve_superseded(f.id, to.as_deref()).await
            {
                tracing::error!(remitter = %f.remitter, file = %f.file_name, error = %e, "could not record the superseded version's move");
                report.failed += 1;
            }
        }
    }

    /// Housekeeping: archive every `success`/`ops_*` file still in the source,
    /// provided the file there is still the version that was processed.
    pub async fn housekeeping(&self, report: &mut PassReport) {
        let due = match self.store.archive_candidates().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "housekeeping could not list files to archive");
                return;
            }
        };
        for f in due {
            let path = join(&[&self.source_dir, &f.remitter, &f.file_name]);
            match self.source.stat(&path).await {
                Ok(e) if e.size as i64 == f.size && e.mtime == f.mtime => {}
                Ok(_) => {
                    // A new version replaced it: the next run processes that one.
                    tracing::info!(remitter = %f.remitter, file = %f.file_name, "source holds a newer version; not archived");
                    continue;
                }
                Err(SourceError::NotFound(_)) => {
                    tracing::warn!(remitter = %f.remitter, file = %f.file_name, "file to archive is not in the source folder");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(remitter = %f.remitter, file = %f.file_name, error = %e, "archive check failed; retried next pass");
                    report.failed += 1;
                    continue;
                }
            }
            match self.move_to_archive(&f.remitter, &f.file_name).await {
                Ok(to) => match self.store.mark_archived(f.id, &to).await {
                    Ok(()) => report.moved += 1,
                    Err(e) => {
                        tracing::error!(file_id = f.id, to = %to, error = %e, "moved but not recorded");
                        report.failed += 1;
                    }
                },
                Err(e) => {
                    tracing::warn!(remitter = %f.remitter, file = %f.file_name, error = %e, "archive move failed; retried next pass");
                    report.failed += 1;
                }
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
