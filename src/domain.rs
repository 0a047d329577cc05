//! Statuses and decisions shared by every stage of a run.

use crate::scan::Candidate;
use serde::{Deserialize, Serialize};

/// A file's status (CONTRACT §7 and §9): the text stored in `files.status`
/// and in `file_events.status`, and the JSON string of the API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
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
    /// Held, not sent: the same content as a file claimed for the same
    /// remitter under another name within `DUPLICATE_WINDOW_DAYS`
    /// (CONTRACT §12, `DUPLICATE_CONTENT=hold`).
    DuplicateContent,
    /// An operator asked for a failed file to be sent again: the next run
    /// that finds this version in the source claims it again.
    RetryRequested,
    /// An operator's verdict (`ops_<word>`); the file is archived.
    Ops(OpsVerdict),
}

/// An operator's verdict: `ops_` followed by 1–40 of `a-z 0-9 _`, checked
/// when it is made, so a stored or answered verdict is always well-formed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OpsVerdict(String);

impl OpsVerdict {
    /// The whole status, `ops_<word>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for OpsVerdict {
    type Error = InvalidStatus;

    fn try_from(s: &str) -> Result<Self, InvalidStatus> {
        let word = s.strip_prefix("ops_").unwrap_or_default();
        let ok = (1..=40).contains(&word.len())
            && word
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(InvalidStatus(s.to_string()))
        }
    }
}

/// A text that is not a file status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a file status: {0:?} (an operator's verdict is ops_ followed by 1-40 of a-z, 0-9, _)")]
pub struct InvalidStatus(pub String);

impl FileStatus {
    /// Every status but an operator's verdict, which is `ops_` and a word.
    pub const NAMED: [FileStatus; 8] = [
        Self::Processing,
        Self::Success,
        Self::ExtractionFilePasswordFailed,
        Self::ExtractionFileFailed,
        Self::ExtractionServiceFailed,
        Self::ItmFailed,
        Self::DuplicateContent,
        Self::RetryRequested,
    ];

    /// The statuses that end processing with a failure (awaiting an
    /// operator): the four downstream failures and a held duplicate.
    pub const FAILURES: [FileStatus; 5] = [
        Self::ExtractionFilePasswordFailed,
        Self::ExtractionFileFailed,
        Self::ExtractionServiceFailed,
        Self::ItmFailed,
        Self::DuplicateContent,
    ];

    /// The name stored in Postgres and shown in JSON.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Processing => "processing",
            Self::Success => "success",
            Self::ExtractionFilePasswordFailed => "extraction_file_password_failed",
            Self::ExtractionFileFailed => "extraction_file_failed",
            Self::ExtractionServiceFailed => "extraction_service_failed",
            Self::ItmFailed => "itm_failed",
            Self::DuplicateContent => "duplicate_content",
            Self::RetryRequested => "retry_requested",
            Self::Ops(v) => v.as_str(),
        }
    }

    /// True for the statuses that end processing with a failure (an
    /// operator may retry them).
    pub fn is_failure(&self) -> bool {
        Self::FAILURES.contains(self)
    }

    /// True for the statuses whose files the archive moves (CONTRACT §1.6).
    pub fn is_archivable(&self) -> bool {
        matches!(self, Self::Success | Self::Ops(_))
    }

    /// True while the next run must claim this version (again): a claim left
    /// `processing`, or a retry an operator asked for.
    pub fn wants_claim(&self) -> bool {
        matches!(self, Self::Processing | Self::RetryRequested)
    }
}

impl std::str::FromStr for FileStatus {
    type Err = InvalidStatus;

    fn from_str(s: &str) -> Result<Self, InvalidStatus> {
        Ok(match s {
            "processing" => Self::Processing,
            "success" => Self::Success,
            "extraction_file_password_failed" => Self::ExtractionFilePasswordFailed,
            "extraction_file_failed" => Self::ExtractionFileFailed,
            "extraction_service_failed" => Self::ExtractionServiceFailed,
            "itm_failed" => Self::ItmFailed,
            "duplicate_content" => Self::DuplicateContent,
            "retry_requested" => Self::RetryRequested,
            other => Self::Ops(OpsVerdict::try_from(other)?),
        })
    }
}

impl TryFrom<String> for FileStatus {
    type Error = InvalidStatus;

    fn try_from(s: String) -> Result<Self, InvalidStatus> {
        s.parse()
    }
}

impl From<FileStatus> for String {
    fn from(s: FileStatus) -> String {
        s.as_str().to_string()
    }
}

impl std::fmt::Display for FileStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for FileStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// In the API a status is a string: one of [`FileStatus::NAMED`] or a verdict,
/// `ops_` and 1–40 of `a-z 0-9 _` (the pattern says both).
impl utoipa::PartialSchema for FileStatus {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let named: Vec<&str> = Self::NAMED.iter().map(Self::as_str).collect();
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(format!(
                "^({}|ops_[a-z0-9_]{{1,40}})$",
                named.join("|")
            )))
            .description(Some(format!(
                "A file's status: {}, or an operator's verdict `ops_<word>` \
                 (1-40 of a-z, 0-9, _). Failure statuses: {}.",
                named.join(", "),
                Self::FAILURES.map(|s| s.as_str().to_string()).join(", ")
            )))
            .examples([
                serde_json::json!("itm_failed"),
                serde_json::json!("ops_keyed_by_hand"),
            ])
            .into()
    }
}

impl utoipa::ToSchema for FileStatus {}

/// `files.status` is text: a status is written as its name and read back
/// through [`FileStatus::from_str`], so an unknown text is a decode error.
impl sqlx::Type<sqlx::Postgres> for FileStatus {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for FileStatus {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for FileStatus {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(<&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?.parse()?)
    }
}

/// The event status of an archive move (events only, never a file status).
pub const ARCHIVE_SUCCEEDED: &str = "archive_succeeded";

#[cfg(test)]
mod tests {
    use super::FileStatus;

    #[test]
    fn statuses_round_trip_and_verdicts_are_checked() {
        let named: Vec<&str> = FileStatus::NAMED.iter().map(FileStatus::as_str).collect();
        for s in named
            .iter()
            .copied()
            .chain(["ops_done", "ops_a", "ops_0_x"])
        {
            let st: FileStatus = s.parse().unwrap();
            assert_eq!(st.as_str(), s);
            assert_eq!(serde_json::to_value(&st).unwrap(), s);
        }
        assert_eq!(
            named,
            [
                "processing",
                "success",
                "extraction_file_password_failed",
                "extraction_file_failed",
                "extraction_service_failed",
                "itm_failed",
                "duplicate_content",
                "retry_requested",
            ],
            "NAMED (the API's pattern) lists every status but a verdict"
        );
        let long = format!("ops_{}", "a".repeat(41));
        for bad in [
            "ops_",
            "ops_Done",
            "ops_a-b",
            "ops_é",
            "archive_succeeded",
            "",
            &long,
        ] {
            assert!(bad.parse::<FileStatus>().is_err(), "{bad}");
            assert!(serde_json::from_value::<FileStatus>(bad.into()).is_err());
        }
        assert!(
            format!("ops_{}", "a".repeat(40))
                .parse::<FileStatus>()
                .is_ok()
        );
        let failures: Vec<_> = ["itm_failed", "ops_x", "retry_requested", "success"]
            .map(|s| s.parse::<FileStatus>().unwrap().is_failure())
            .into();
        assert_eq!(failures, [true, false, false, false]);
    }
}

/// What a run decided about one file, as the summary reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Claimed and held, not sent: the same content as an earlier file of
    /// the remitter under another name (`DUPLICATE_CONTENT=hold`).
    HeldDuplicate,
    /// A dry run's verdict: a real run would hold it as a duplicate.
    WouldHoldDuplicate,
    /// Could not be read or recorded; nothing was sent.
    Error,
    /// Not started: the coordinator was stopping (SIGTERM). Untouched; the
    /// next run takes it.
    Deferred,
}

/// What the run reports for one file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct FileReport {
    /// Remitter folder.
    pub remitter: String,
    /// File name.
    pub file_name: String,
    /// What the run did with it.
    pub decision: Decision,
    /// The file's status after this run, when it has a row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<FileStatus>,
    /// Why, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `INSTANCE_ID` that processed it (candidates of the run only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
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
            instance: None,
        }
    }

    /// The same report with the file's status.
    pub fn with_status(mut self, status: FileStatus) -> Self {
        self.status = Some(status);
        self
    }
}

/// A remitter folder that could not be listed, at either look.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FolderError {
    /// Remitter folder name.
    pub remitter: String,
    /// Why.
    pub reason: String,
}
