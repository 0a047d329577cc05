//! Where remittance files come from. The engine sees a share only through
//! [`FileSource`], so a local folder or an in-memory fake can stand in for SMB.

pub mod smb;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::path::Path;

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Bare name inside its folder.
    pub name: String,
    /// True for folders.
    pub is_dir: bool,
    /// Size in bytes.
    pub size: u64,
    /// Last-write time, by the server's clock.
    pub mtime: DateTime<Utc>,
    /// Change time (metadata), by the server's clock.
    pub ctime: DateTime<Utc>,
}

impl Entry {
    /// The newest of the entry's timestamps: what Policy A ages.
    pub fn newest_time(&self) -> DateTime<Utc> {
        self.mtime.max(self.ctime)
    }
}

/// What a downloaded file turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Hex MD5 of the bytes read.
    pub md5: String,
    /// Bytes read.
    pub size: u64,
    /// The file's metadata after the last byte was read, taken while it was
    /// still open: what the bytes read correspond to.
    pub after: Entry,
}

/// A name reserved by [`FileSource::reserve`]: the path and the token its
/// placeholder holds, by which the holder recognises its own placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Share-relative path of the reserved name.
    pub path: String,
    /// Unique token written into the placeholder.
    pub token: String,
}

impl Reservation {
    /// A fresh reservation of `path` with a unique token (not yet made).
    pub fn new(path: &str) -> Self {
        Reservation {
            path: path.to_string(),
            token: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// The placeholder's bytes: says what it is to an operator who finds one
    /// left by a crash between reservation and move.
    pub fn placeholder(&self) -> Vec<u8> {
        format!(
            "coordinator: archive name reserved for a move in progress ({}); \
             an empty or reserved file left here by an interrupted move can be removed\n",
            self.token
        )
        .into_bytes()
    }
}

/// Errors of a file source, classified so callers can tell "gone" from "broken".
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The target of a rename or create already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// Access was denied.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Another client holds the file open in a conflicting way.
    #[error("busy (open elsewhere): {0}")]
    Busy(String),
    /// The call did not finish within its timeout.
    #[error("timed out after {secs}s: {op}")]
    Timeout {
        /// Which operation.
        op: String,
        /// The bound that elapsed.
        secs: u64,
    },
    /// The connection to the server broke (aborted, reset, not connected).
    #[error("connection lost during {op}: {message}")]
    Disconnected {
        /// Which operation, with its path.
        op: String,
        /// What went wrong.
        message: String,
    },
    /// Protocol or local I/O failure.
    #[error("{op}: {message}")]
    Io {
        /// Which operation, with its path.
        op: String,
        /// What went wrong.
        message: String,
    },
}

/// Paths are relative to the share root, with `/` as separator.
#[async_trait]
pub trait FileSource: Send + Sync {
    /// Lists a folder (without `.` and `..`).
    async fn list(&self, dir: &str) -> Result<Vec<Entry>, SourceError>;
    /// Metadata of one path.
    async fn stat(&self, path: &str) -> Result<Entry, SourceError>;
    /// Copies `path` into the local file `dest`, streaming, and hashes it.
    /// The file is opened denying writers: while another client holds it open
    /// for writing this fails with [`SourceError::Busy`], and no client can
    /// open it for writing while it is read.
    async fn fetch(&self, path: &str, dest: &Path) -> Result<Fetched, SourceError>;
    /// Creates `dir` and its parents if missing.
    async fn mkdir_all(&self, dir: &str) -> Result<(), SourceError>;
    /// Reserves the name `reservation.path`: creates it exclusively
    /// (atomically on the server) as a small placeholder holding the
    /// reservation's token.
    /// `AlreadyExists` when the name is taken. Only the holder of a
    /// reservation ever renames onto that name.
    async fn reserve(&self, reservation: &Reservation) -> Result<(), SourceError>;
    /// Moves `from` onto the name `to` this caller reserved, replacing only
    /// its own placeholder.
    async fn rename_onto_reservation(
        &self,
        from: &str,
        to: &Reservation,
    ) -> Result<(), SourceError>;
    /// Removes a reservation's placeholder after a failed move, only if the
    /// name still holds that placeholder (never a moved file).
    async fn release(&self, reservation: &Reservation) -> Result<(), SourceError>;
    /// Moves `from` to `to`; fails with `AlreadyExists` rather than overwrite.
    /// Reserves `to` first, so a concurrent move can never be replaced.
    async fn rename_no_replace(&self, from: &str, to: &str) -> Result<(), SourceError> {
        let r = Reservation::new(to);
        self.reserve(&r).await?;
        match self.rename_onto_reservation(from, &r).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(release) = self.release(&r).await {
                    tracing::warn!(path = %to, error = %release, "archive name reservation left in place");
                }
                Err(e)
            }
        }
    }
    /// The server's current time, as the server stamps files.
    async fn server_now(&self, scratch_dir: &str) -> Result<DateTime<Utc>, SourceError>;
}

/// Joins share-relative path parts with `/`, skipping empty ones.
pub fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .flat_map(|p| p.split('/'))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    #[test]
    fn join_skips_empty_parts() {
        assert_eq!(super::join(&["", "a", "b/c"]), "a/b/c");
        assert_eq!(super::join(&["src/", "/r", "f.csv"]), "src/r/f.csv");
        assert_eq!(super::join(&["", ""]), "");
    }
}
