//! Statuses and decisions shared by every stage of a run.

use crate::scan::Candidate;
use serde::Serialize;

/// A file's processing status (CONTRACT §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// Claimed; downstream calls may be in flight.
    Processing,
    /// Extracted and accepted by ITM.
    Success,
    /// FOI could not open the file: it is password protected.
    ExtractionFilePasswordFailed,
    /// FOI rejected the file (no template, data format, 400/422).
    ExtractionFileFailed,
    /// FOI was unreachable or answered nonsense.
    ExtractionServiceFailed,
    /// ITM did not accept the result.
    ItmFailed,
}

impl FileStatus {
    /// The name stored in Postgres.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::Success => "success",
            Self::ExtractionFilePasswordFailed => "extraction_file_password_failed",
            Self::ExtractionFileFailed => "extraction_file_failed",
            Self::ExtractionServiceFailed => "extraction_service_failed",
            Self::ItmFailed => "itm_failed",
        }
    }

    /// True for the statuses that end processing with a failure.
    pub fn is_failure(self) -> bool {
        !matches!(self, Self::Processing | Self::Success)
    }
}

/// The event status of an archive move (events only, never a file status).
pub const ARCHIVE_SUCCEEDED: &str = "archive_succeeded";

/// What a run decided about one file, as the summary reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Temp-like name: never touched.
    Ignored,
    /// An older version of a group: archived, not processed.
    Superseded,
    /// May still be uploading: left alone this run.
    Unstable,
    /// This version has a row already: not sent again.
    AlreadyProcessed,
    /// Claimed and sent downstream this run.
    Processed,
    /// A dry run's verdict: a real run would claim it and send it downstream.
    WouldProcess,
    /// Could not be read or recorded; nothing was sent.
    Error,
}

/// What the run reports for one file.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileReport {
    /// Remitter folder.
    pub remitter: String,
    /// File name.
    pub file_name: String,
    /// What the run did with it.
    pub decision: Decision,
    /// The file's status after this run, when it has a row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl FileReport {
    /// A report for `c` with no status.
    pub fn new(c: &Candidate, decision: Decision, reason: Option<String>) -> Self {
        Self {
            remitter: c.remitter.clone(),
            file_name: c.entry.name.clone(),
            decision,
            status: None,
            reason,
        }
    }

    /// The same report with the file's status.
    pub fn with_status(mut self, status: impl Into<String>) -> Self {
        self.status = Some(status.into());
        self
    }
}

/// A remitter folder that could not be listed, at either look.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FolderError {
    /// Remitter folder name.
    pub remitter: String,
    /// Why.
    pub reason: String,
}
