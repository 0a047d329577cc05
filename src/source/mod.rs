//! Where remittance files come from. The engine sees a share only through
//! [`FileSource`], so a local folder or an in-memory fake can stand in for SMB.

pub mod smb;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::path::Path;

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Files up to this size are downloaded into memory; larger ones are
/// streamed to the spool file (so memory stays bounded by
/// `MAX_CONCURRENT_FILES` × this, whatever the file sizes).
pub const IN_MEMORY_MAX: u64 = 1 << 20;

/// Where the bytes of a downloaded file are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Held in memory (at most [`IN_MEMORY_MAX`] bytes).
    Memory(Vec<u8>),
    /// Written to this local spool file.
    Spooled(std::path::PathBuf),
}

/// What a downloaded file turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Hex MD5 of the bytes read.
    pub md5: String,
    /// Bytes read.
    pub size: u64,
    /// The file's metadata after the last byte was read, asked on a handle
    /// still open: any change since the second look (size, last-write or
    /// change time), also one made during the read, shows here.
    pub after: Entry,
    /// The bytes read.
    pub content: Content,
}

/// The version a move expects to find at its source: the size and
/// timestamps the file had when it was processed or found superseded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Size in bytes.
    pub size: u64,
    /// Last-write time, by the server's clock.
    pub mtime: DateTime<Utc>,
    /// Change time, by the server's clock; `None` for versions recorded
    /// before it was stored (then size and last-write time decide).
    pub ctime: Option<DateTime<Utc>>,
}

impl Expected {
    /// True when `e` is a file with this size and these timestamps.
    pub fn matches(&self, e: &Entry) -> bool {
        self.matches_but_ctime(e) && self.ctime.is_none_or(|c| c == e.ctime)
    }

    /// True when `e` is a file with this size and last-write time, whatever
    /// its change time: a rename changes the change time, so a file found
    /// in the archive is compared with this.
    pub fn matches_but_ctime(&self, e: &Entry) -> bool {
        !e.is_dir && e.size == self.size && e.mtime == self.mtime
    }
}

/// What [`FileSource::move_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// The file is at its new name.
    Done,
    /// The source holds another version now (its metadata here): not moved.
    Changed(Entry),
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
    /// Downloads `path` and hashes it: into memory up to [`IN_MEMORY_MAX`]
    /// bytes, else streamed into the local file `spool`.
    /// The file is opened denying writers: while another client holds it open
    /// for writing this fails with [`SourceError::Busy`], and no client can
    /// open it for writing while it is read. Writers that share modes do not
    /// stop (a process on the file server, NFS) are caught by
    /// [`Fetched::after`], taken after the last byte.
    async fn fetch(&self, path: &str, spool: &Path) -> Result<Fetched, SourceError>;
    /// Creates `dir` and its parents if missing.
    async fn mkdir_all(&self, dir: &str) -> Result<(), SourceError>;
    /// Moves `from` to `to`, never replacing a file at `to`
    /// (`AlreadyExists`), and only while `from` is still the `expected`
    /// version. The check and the rename are one step on the server: no
    /// upload can land between them, and a file another client holds open
    /// for writing is not moved (`Busy`).
    async fn move_file(
        &self,
        from: &str,
        to: &str,
        expected: &Expected,
    ) -> Result<Moved, SourceError>;
    /// Connects ahead of the first call (start-up work); a later call
    /// connects by itself if this failed or the connection was lost.
    async fn connect(&self) -> Result<(), SourceError> {
        Ok(())
    }
    /// The server's current time, as the server stamps files. Reads only
    /// (a dry run writes nothing on the share).
    async fn server_now(&self) -> Result<DateTime<Utc>, SourceError>;
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
