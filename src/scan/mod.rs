//! Scan: list `<source>/<remitter>/<file>` on the share, dropping temp-like
//! names, deeper folders, files at the source root and the archive folder.

pub mod names;

use crate::source::{Entry, FileSource, SourceError, join};
use futures::StreamExt;
use names::TempNameFilter;

/// Folder listings in flight at once: they overlap on the SMB connection.
pub const LISTINGS_AT_ONCE: usize = 16;

/// A file directly inside a remitter folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    /// Remitter folder name.
    pub remitter: String,
    /// Listing entry (name, size, times).
    pub entry: Entry,
}

impl Candidate {
    /// Share-relative path of the file.
    pub fn path(&self, source_dir: &str) -> String {
        join(&[source_dir, &self.remitter, &self.entry.name])
    }
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// Files that may be processed.
    pub candidates: Vec<Candidate>,
    /// Temp-like files, as `(remitter, name)`: never touched.
    pub ignored: Vec<(String, String)>,
    /// Remitter folders that were listed.
    pub remitters: usize,
    /// Remitter folders that could not be listed, with why.
    pub folder_errors: Vec<(String, String)>,
}

/// Lists every remitter folder of `source_dir`, several at once. A remitter
/// folder that cannot be listed (denied, gone, timed out, an I/O error) is
/// reported in `folder_errors` and the others go on (CONTRACT §1.1); only a
/// failure to list `source_dir` itself (the share) fails the scan.
pub async fn scan(
    source: &dyn FileSource,
    source_dir: &str,
    archive_dir: &str,
    filter: &TempNameFilter,
) -> Result<ScanResult, SourceError> {
    let mut out = ScanResult::default();
    let mut remitters: Vec<String> = source
        .list(source_dir)
        .await?
        .into_iter()
        .filter(|e| e.is_dir)
        .map(|e| e.name)
        .filter(|name| {
            let path = join(&[source_dir, name]);
            // The archive (or a folder holding it) is never a remitter.
            !(archive_dir == path || archive_dir.starts_with(&format!("{path}/")))
        })
        .collect();
    remitters.sort();
    let mut listings = futures::stream::iter(remitters)
        .map(|remitter| async move {
            let listing = source.list(&join(&[source_dir, &remitter])).await;
            (remitter, listing)
        })
        .buffered(LISTINGS_AT_ONCE);
    while let Some((remitter, listing)) = listings.next().await {
        let mut entries = match listing {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(remitter = %remitter, error = %e, "remitter folder could not be listed");
                out.folder_errors.push((remitter, e.to_string()));
                continue;
            }
        };
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for entry in entries.into_iter().filter(|e| !e.is_dir) {
            if filter.is_temp(&entry.name) {
                out.ignored.push((remitter.clone(), entry.name));
            } else {
                out.candidates.push(Candidate {
                    remitter: remitter.clone(),
                    entry,
                });
            }
        }
        out.remitters += 1;
    }
    Ok(out)
}
