//! Version timestamps in file names (CONTRACT §6): `strip_ts_basename` and the
//! newest-first order that decides which version of a logical file is processed.

use chrono::{NaiveDate, NaiveDateTime};
use std::cmp::Ordering;

/// The timestamp found at the end of a file's stem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionStamp {
    /// The instant the name encodes (an 8-digit date is midnight).
    pub at: NaiveDateTime,
    /// True for the 14-digit `YYYYMMDDHHMMSS` form, which wins a tie.
    pub full: bool,
}

/// A file name split into its logical name and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The name without separator and timestamp, extension kept.
    pub base_name: String,
    /// The version timestamp, if the name carries a supported one.
    pub stamp: Option<VersionStamp>,
}

/// Splits `name` into `base_name` and version timestamp (CONTRACT §6).
pub fn parse_version(name: &str) -> Versioned {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let digits = stem.len() - stem.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let run = &stem[stem.len() - digits..];
    let stamp = match digits {
        14 => NaiveDateTime::parse_from_str(run, "%Y%m%d%H%M%S")
            .ok()
            .map(|at| VersionStamp { at, full: true }),
        8 => NaiveDate::parse_from_str(run, "%Y%m%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|at| VersionStamp { at, full: false }),
        _ => None,
    };
    // chrono accepts some lenient inputs; a valid stamp must print back as itself.
    let stamp = stamp.filter(|s| {
        let fmt = if s.full { "%Y%m%d%H%M%S" } else { "%Y%m%d" };
        s.at.format(fmt).to_string() == run
    });
    match stamp {
        None => Versioned {
            base_name: name.to_string(),
            stamp: None,
        },
        Some(stamp) => {
            let mut head = &stem[..stem.len() - digits];
            if let Some(stripped) = head.strip_suffix(['_', '-', '.', ' ']) {
                head = stripped;
            }
            Versioned {
                base_name: format!("{head}{ext}"),
                stamp: Some(stamp),
            }
        }
    }
}

/// The logical name of a file: `name` with its version timestamp stripped.
pub fn strip_ts_basename(name: &str) -> String {
    parse_version(name).base_name
}

/// The key grouping versions of one logical file: remitter and base name,
/// lower-cased (CONTRACT §6), as `remitter/base_name` (a folder name holds no `/`).
pub fn group_key(remitter: &str, base_name: &str) -> String {
    format!("{}/{}", remitter.to_lowercase(), base_name.to_lowercase())
}

/// Orders two file names of one group, newest first (CONTRACT §6): later stamp,
/// then the 14-digit form, then timestamped over plain, then by name descending.
pub fn newest_first(a: &str, b: &str) -> Ordering {
    let (va, vb) = (parse_version(a).stamp, parse_version(b).stamp);
    let by_stamp = match (va, vb) {
        (Some(x), Some(y)) => y.at.cmp(&x.at).then(y.full.cmp(&x.full)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    by_stamp.then_with(|| b.cmp(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_ts_basename_table() {
        let cases: &[(&str, &str)] = &[
            // CONTRACT §6 examples
            ("remit_20240101.xlsx", "remit.xlsx"),
            ("remit_20240102.xlsx", "remit.xlsx"),
            ("remit_20240101093000.xlsx", "remit.xlsx"),
            ("remit_20240101T093000.xlsx", "remit_20240101T093000.xlsx"),
            ("remit_20240101T103000.xlsx", "remit_20240101T103000.xlsx"),
            // separators
            ("remit-20240101.xlsx", "remit.xlsx"),
            ("remit.20240101.xlsx", "remit.xlsx"),
            ("remit 20240101.xlsx", "remit.xlsx"),
            ("remit20240101.xlsx", "remit.xlsx"),
            ("remit__20240101.xlsx", "remit_.xlsx"),
            // invalid dates are not timestamps
            ("remit_20241301.xlsx", "remit_20241301.xlsx"),
            ("remit_20240230.xlsx", "remit_20240230.xlsx"),
            ("remit_20240101250000.xlsx", "remit_20240101250000.xlsx"),
            ("remit_20240101126000.xlsx", "remit_20240101126000.xlsx"),
            ("remit_20240229.xlsx", "remit.xlsx"),
            ("remit_20230229.xlsx", "remit_20230229.xlsx"),
            // 6, 12, 16, 17 digits
            ("remit_240101.xlsx", "remit_240101.xlsx"),
            ("remit_202401011230.xlsx", "remit_202401011230.xlsx"),
            ("remit_2024010112300012.xlsx", "remit_2024010112300012.xlsx"),
            (
                "remit_20240101123000123.xlsx",
                "remit_20240101123000123.xlsx",
            ),
            // ms suffix after a separator
            (
                "remit_20240101123000.123.xlsx",
                "remit_20240101123000.123.xlsx",
            ),
            // preceded by another digit: a 9-digit run is not a date
            ("remit_120240101.xlsx", "remit_120240101.xlsx"),
            // no extension
            ("remit_20240101", "remit"),
            ("remit", "remit"),
            // dots in the stem: only the last extension counts
            ("remit.v2_20240101.tar.gz", "remit.v2_20240101.tar.gz"),
            ("remit.v2_20240101.csv", "remit.v2.csv"),
            ("a.b.c-20240101093000.csv", "a.b.c.csv"),
            // only digits
            ("20240101.csv", ".csv"),
        ];
        for (name, want) in cases {
            assert_eq!(strip_ts_basename(name), *want, "{name}");
        }
    }

    #[test]
    fn stamps_are_parsed() {
        let v = parse_version("x_20240102030405.csv");
        let s = v.stamp.unwrap();
        assert!(s.full);
        assert_eq!(s.at.to_string(), "2024-01-02 03:04:05");
        let d = parse_version("x_20240102.csv").stamp.unwrap();
        assert!(!d.full);
        assert_eq!(d.at.to_string(), "2024-01-02 00:00:00");
        assert_eq!(parse_version("x.csv").stamp, None);
    }

    #[test]
    fn newest_first_table() {
        // (a, b, a is newer than b)
        let cases: &[(&str, &str, bool)] = &[
            ("r_20240102.xlsx", "r_20240101.xlsx", true),
            ("r_20240101093000.xlsx", "r_20240101.xlsx", true),
            ("r_20240101000000.xlsx", "r_20240101.xlsx", true),
            ("r_20231231235959.xlsx", "r_20240101.xlsx", false),
            ("r_20240101.xlsx", "r.xlsx", true),
            ("r-20240101.xlsx", "r_20240101.xlsx", false),
            ("r_20240101120000.xlsx", "r_20240101110000.xlsx", true),
        ];
        for (a, b, a_newer) in cases {
            let want = if *a_newer {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            assert_eq!(newest_first(a, b), want, "{a} vs {b}");
            assert_eq!(newest_first(b, a), want.reverse(), "{b} vs {a}");
        }
        let mut names = vec![
            "r.xlsx",
            "r_20240101.xlsx",
            "r_20240103.xlsx",
            "r_20240102235959.xlsx",
        ];
        names.sort_by(|a, b| newest_first(a, b));
        assert_eq!(
            names,
            vec![
                "r_20240103.xlsx",
                "r_20240102235959.xlsx",
                "r_20240101.xlsx",
                "r.xlsx"
            ]
        );
    }
}
