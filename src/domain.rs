//! Statuses and decisions shared by every stage of a run.

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
    /// Could not be read or recorded; nothing was sent.
    Error,
}
