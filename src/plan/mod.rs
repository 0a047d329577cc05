//! Plan: group versions of one logical file, pick the newest, and decide
//! which newest versions are stable enough to touch (Policy A).

pub mod versions;

use crate::scan::Candidate;
use crate::source::{FileSource, SourceError, join};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use versions::{newest_first, strip_ts_basename};

/// Versions of one logical file of one remitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The logical name (timestamp stripped), as found on the newest version.
    pub base_name: String,
    /// The version to process.
    pub newest: Candidate,
    /// Older versions, to archive without processing.
    pub superseded: Vec<Candidate>,
}

/// Groups candidates by remitter and base name, case-insensitively (CONTRACT §6).
pub fn group(candidates: Vec<Candidate>) -> Vec<Group> {
    let mut groups: BTreeMap<(String, String), Vec<Candidate>> = BTreeMap::new();
    for c in candidates {
        let key = (
            c.remitter.to_lowercase(),
            strip_ts_basename(&c.entry.name).to_lowercase(),
        );
        groups.entry(key).or_default().push(c);
    }
    groups
        .into_values()
        .filter_map(|mut members| {
            members.sort_by(|a, b| newest_first(&a.entry.name, &b.entry.name));
            let mut it = members.into_iter();
            let newest = it.next()?;
            Some(Group {
                base_name: strip_ts_basename(&newest.entry.name),
                newest,
                superseded: it.collect(),
            })
        })
        .collect()
}

/// Why a file is not stable yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unstable {
    /// Its newest timestamp is too recent by the server's clock.
    TooRecent {
        /// Age in whole seconds.
        age_secs: i64,
    },
    /// Size or timestamps changed between the two looks.
    Changed,
    /// It disappeared between the two looks.
    Vanished,
    /// Another client holds it open for writing.
    OpenForWrite,
}

impl std::fmt::Display for Unstable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooRecent { age_secs } => {
                write!(f, "last written {age_secs}s ago (server clock)")
            }
            Self::Changed => f.write_str("size or timestamps changed between two looks"),
            Self::Vanished => f.write_str("disappeared between two looks"),
            Self::OpenForWrite => f.write_str("open for writing by another client"),
        }
    }
}

/// Policy A's first test: old enough by the server's clock.
pub fn old_enough(
    newest_time: DateTime<Utc>,
    now: DateTime<Utc>,
    min_age: Duration,
) -> Result<(), Unstable> {
    let age = now.signed_duration_since(newest_time);
    let min = chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::MAX);
    if age >= min {
        Ok(())
    } else {
        Err(Unstable::TooRecent {
            age_secs: age.num_seconds(),
        })
    }
}

/// Policy A over `files` (indexes into the caller's list): age, a second
/// look `interval` later, and the deny-write probe where the source has one.
/// Returns a verdict per input, in order.
pub async fn stability(
    source: &dyn FileSource,
    source_dir: &str,
    files: &[&Candidate],
    now: DateTime<Utc>,
    min_age: Duration,
    interval: Duration,
) -> Result<Vec<Result<(), Unstable>>, SourceError> {
    let mut verdicts: Vec<Result<(), Unstable>> = files
        .iter()
        .map(|c| old_enough(c.entry.newest_time(), now, min_age))
        .collect();
    if verdicts.iter().all(|v| v.is_err()) {
        return Ok(verdicts);
    }
    tokio::time::sleep(interval).await;
    // Second look: one listing per remitter folder, not one call per file.
    let mut second: HashMap<String, HashMap<String, crate::source::Entry>> = HashMap::new();
    for (c, v) in files.iter().zip(&verdicts) {
        if v.is_ok() && !second.contains_key(&c.remitter) {
            let listing = source.list(&join(&[source_dir, &c.remitter])).await?;
            second.insert(
                c.remitter.clone(),
                listing.into_iter().map(|e| (e.name.clone(), e)).collect(),
            );
        }
    }
    for (c, v) in files.iter().zip(verdicts.iter_mut()) {
        if v.is_err() {
            continue;
        }
        match second.get(&c.remitter).and_then(|m| m.get(&c.entry.name)) {
            None => *v = Err(Unstable::Vanished),
            Some(e)
                if e.size != c.entry.size
                    || e.mtime != c.entry.mtime
                    || e.ctime != c.entry.ctime =>
            {
                *v = Err(Unstable::Changed)
            }
            Some(_) => {}
        }
    }
    for (c, v) in files.iter().zip(verdicts.iter_mut()) {
        if v.is_err() {
            continue;
        }
        match source.open_for_write_elsewhere(&c.path(source_dir)).await {
            Ok(true) => *v = Err(Unstable::OpenForWrite),
            Ok(false) => {}
            Err(SourceError::NotFound(_)) => *v = Err(Unstable::Vanished),
            // Other probe failures (permissions, say) surface when the file is read.
            Err(e) => tracing::warn!(file = %c.entry.name, error = %e, "write-open probe failed"),
        }
    }
    Ok(verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Entry;

    fn cand(remitter: &str, name: &str) -> Candidate {
        let t = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        Candidate {
            remitter: remitter.into(),
            entry: Entry {
                name: name.into(),
                is_dir: false,
                size: 1,
                mtime: t,
                ctime: t,
            },
        }
    }

    #[test]
    fn groups_pick_newest_and_supersede_the_rest() {
        let gs = group(vec![
            cand("a", "remit_20240101.xlsx"),
            cand("a", "remit_20240102.xlsx"),
            cand("a", "REMIT_20240101093000.xlsx"),
            cand("b", "remit_20240101.xlsx"),
            cand("A", "other.csv"),
            cand("a", "remit_20240101T093000.xlsx"),
            cand("a", "remit_20240101T103000.xlsx"),
        ]);
        let summary: Vec<(String, String, Vec<String>)> = gs
            .iter()
            .map(|g| {
                (
                    g.newest.remitter.clone(),
                    g.newest.entry.name.clone(),
                    g.superseded.iter().map(|c| c.entry.name.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("A".into(), "other.csv".into(), vec![]),
                (
                    "a".into(),
                    "remit_20240102.xlsx".into(),
                    vec![
                        "REMIT_20240101093000.xlsx".into(),
                        "remit_20240101.xlsx".into()
                    ]
                ),
                ("a".into(), "remit_20240101T093000.xlsx".into(), vec![]),
                ("a".into(), "remit_20240101T103000.xlsx".into(), vec![]),
                ("b".into(), "remit_20240101.xlsx".into(), vec![]),
            ]
        );
    }

    #[test]
    fn age_is_measured_on_the_given_clock() {
        let t = DateTime::<Utc>::from_timestamp(1_000, 0).unwrap();
        let now = DateTime::<Utc>::from_timestamp(1_030, 0).unwrap();
        assert!(old_enough(t, now, Duration::from_secs(30)).is_ok());
        assert_eq!(
            old_enough(t, now, Duration::from_secs(31)),
            Err(Unstable::TooRecent { age_secs: 30 })
        );
        // A timestamp in the future (clock skew) is never old enough.
        assert!(old_enough(now, t, Duration::ZERO).is_err());
    }
}
