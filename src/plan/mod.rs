//! Plan: from what the scan found and what the database knows, decide every
//! file's fate (CONTRACT §1.1–1.4): temp names, versions and late arrivals,
//! what is already processed, and Policy A's verdicts. It is pure: the engine
//! does the I/O (listings, queries, the pause between the two looks) and
//! hands the results in, in two steps — [`draft`] after the first look and
//! [`Draft::settle`] after the second.

pub mod versions;

use crate::domain::{Decision, FileReport, FolderError};
use crate::scan::{Candidate, ScanResult};
use crate::source::Entry;
use crate::store::{KnownVersion, SupersededFile};
use chrono::{DateTime, Utc};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    /// Another client holds it open for writing (the deny-write open was refused).
    OpenForWrite,
    /// Size or timestamps changed between the second look and the end of the download.
    ChangedDuringRead,
    /// Its folder could not be listed for the second look.
    FolderUnlisted(String),
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
            Self::ChangedDuringRead => {
                f.write_str("changed between the second look and the end of its download")
            }
            Self::FolderUnlisted(why) => {
                write!(
                    f,
                    "its folder could not be listed for the second look: {why}"
                )
            }
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

/// The group key of a file version (see [`versions::group_key`]).
pub fn key_of(remitter: &str, file_name: &str) -> String {
    versions::group_key(remitter, &strip_ts_basename(file_name))
}

/// True when version `a` is older than version `b` of the same group
/// (CONTRACT §6 order; names that differ only in case are the same file).
fn older(a: &str, b: &str) -> bool {
    newest_first(&a.to_lowercase(), &b.to_lowercase()) == Ordering::Greater
}

/// What the first step needs: the scan and what the database knows.
pub struct Inputs<'a> {
    /// The first look.
    pub scan: ScanResult,
    /// Every claimed version of the groups the scan found (see `Store::group_versions`).
    pub known: &'a [KnownVersion],
    /// Older versions earlier runs superseded and that wait for their move.
    pub remembered: &'a [SupersededFile],
    /// The share's clock.
    pub now: DateTime<Utc>,
    /// Policy A's minimum age.
    pub min_age: Duration,
}

/// Decisions taken so far, whatever the second look finds.
#[derive(Debug, Default)]
pub struct Decided {
    /// Files found in remitter folders, temp names included.
    pub scanned: usize,
    /// One report per file decided.
    pub reports: Vec<FileReport>,
    /// Remitter folders that could not be listed.
    pub folder_errors: Vec<FolderError>,
    /// Older versions to remember and archive.
    pub to_archive: Vec<SupersededFile>,
    /// Rows whose archived content is in the source again: archive it again.
    pub rearchive: Vec<i64>,
}

impl Decided {
    fn supersede(&mut self, old: &Candidate, newer: &str, reason: String) {
        self.reports
            .push(FileReport::new(old, Decision::Superseded, Some(reason)));
        self.to_archive.push(SupersededFile {
            id: 0,
            remitter: old.remitter.clone(),
            file_name: old.entry.name.clone(),
            size: old.entry.size as i64,
            mtime: old.entry.mtime,
            newer_file_name: newer.to_string(),
        });
    }

    fn wait(&mut self, g: &Group, why: &Unstable) {
        self.reports.push(FileReport::new(
            &g.newest,
            Decision::Unstable,
            Some(why.to_string()),
        ));
        for old in &g.superseded {
            self.reports.push(FileReport::new(
                old,
                Decision::Superseded,
                Some(format!(
                    "archive waits: newest version {} is not stable yet",
                    g.newest.entry.name
                )),
            ));
        }
    }

    /// Once the newest version of `g` has been processed (`report`), its older
    /// versions are archived — unless it turned out unstable after all, when
    /// the group waits whole.
    pub fn after_processing(&mut self, g: &Group, report: &FileReport) {
        if matches!(report.decision, Decision::Unstable | Decision::Deferred) {
            for old in &g.superseded {
                self.reports.push(FileReport::new(
                    old,
                    Decision::Superseded,
                    Some(format!(
                        "archive waits: newest version {} is not stable yet",
                        g.newest.entry.name
                    )),
                ));
            }
        } else {
            self.supersede_older(g);
        }
    }

    /// Archives the older versions of `g`.
    fn supersede_older(&mut self, g: &Group) {
        for old in &g.superseded {
            self.supersede(
                old,
                &g.newest.entry.name,
                format!(
                    "older version of {}; moved to the archive in the background",
                    g.newest.entry.name
                ),
            );
        }
    }
}

/// The plan after the first look: decided files, and groups whose newest
/// version is old enough and waits for the second look.
#[derive(Debug)]
pub struct Draft {
    /// What is decided already.
    pub decided: Decided,
    /// Groups waiting for the second look.
    pub pending: Vec<Group>,
}

/// The plan after both looks.
#[derive(Debug)]
pub struct Plan {
    /// What is decided.
    pub decided: Decided,
    /// Groups whose newest version is stable: download, claim and send it.
    pub work: Vec<Group>,
}

/// First step: temp names, remembered superseded versions, versions and late
/// arrivals, already processed versions, and Policy A's age test.
pub fn draft(input: Inputs<'_>) -> Draft {
    let Inputs {
        scan,
        known,
        remembered,
        now,
        min_age,
    } = input;
    let mut d = Decided {
        scanned: scan.candidates.len() + scan.ignored.len(),
        ..Default::default()
    };
    for (remitter, reason) in scan.folder_errors {
        d.folder_errors.push(FolderError {
            remitter,
            reason: format!("remitter folder could not be listed: {reason}"),
        });
    }
    for (remitter, name) in scan.ignored {
        d.reports.push(FileReport {
            remitter,
            file_name: name,
            decision: Decision::Ignored,
            status: None,
            reason: Some("temp-like name".into()),
        });
    }
    // Versions an earlier run superseded stay superseded until moved, even
    // when they are now alone in their group.
    let remembered: HashSet<(&str, &str, i64, DateTime<Utc>)> = remembered
        .iter()
        .map(|e| (e.remitter.as_str(), e.file_name.as_str(), e.size, e.mtime))
        .collect();
    let (candidates, earlier): (Vec<Candidate>, Vec<Candidate>) =
        scan.candidates.into_iter().partition(|c| {
            !remembered.contains(&(
                c.remitter.as_str(),
                c.entry.name.as_str(),
                c.entry.size as i64,
                c.entry.mtime,
            ))
        });
    for c in &earlier {
        d.reports.push(FileReport::new(
            c,
            Decision::Superseded,
            Some("superseded by an earlier run; waiting for the archive move".into()),
        ));
    }
    // The newest claimed version of each group, and the claimed rows by name.
    let mut claimed_newest: HashMap<String, &str> = HashMap::new();
    let mut by_name: HashMap<(&str, &str), Vec<&KnownVersion>> = HashMap::new();
    for k in known {
        let slot = claimed_newest
            .entry(key_of(&k.remitter, &k.file_name))
            .or_insert(&k.file_name);
        if older(slot, &k.file_name) {
            *slot = &k.file_name;
        }
        by_name
            .entry((&k.remitter, &k.file_name))
            .or_default()
            .push(k);
    }
    let mut pending = Vec::new();
    for g in group(candidates) {
        let e = &g.newest.entry;
        // A late arrival: the whole group is older than a version already claimed.
        if let Some(claimed) = claimed_newest
            .get(&key_of(&g.newest.remitter, &e.name))
            .filter(|c| older(&e.name, c))
        {
            for old in std::iter::once(&g.newest).chain(&g.superseded) {
                d.supersede(
                    old,
                    claimed,
                    format!("older than {claimed}, which was already claimed; never sent"),
                );
            }
            continue;
        }
        // A claim still `processing` (lease recovery) or `retry_requested`
        // (an operator sent it back) goes through the claim again.
        let seen = by_name
            .get(&(g.newest.remitter.as_str(), e.name.as_str()))
            .and_then(|ks| {
                ks.iter().find(|k| {
                    k.size == e.size as i64 && k.mtime == e.mtime && !k.status.wants_claim()
                })
            });
        if let Some(k) = seen {
            let mut reason =
                "same name, size and last-write time as a recorded version".to_string();
            if k.archived && k.status.is_archivable() {
                // Its content was archived before and is back in the source.
                d.rearchive.push(k.id);
                reason.push_str("; uploaded again after it was archived: archived again");
            }
            d.reports.push(
                FileReport::new(&g.newest, Decision::AlreadyProcessed, Some(reason))
                    .with_status(k.status.clone()),
            );
            d.supersede_older(&g);
            continue;
        }
        match old_enough(e.newest_time(), now, min_age) {
            Ok(()) => pending.push(g),
            Err(why) => d.wait(&g, &why),
        }
    }
    Draft {
        decided: d,
        pending,
    }
}

impl Draft {
    /// Remitter folders to list again for the second look.
    pub fn folders_to_recheck(&self) -> BTreeSet<String> {
        self.pending
            .iter()
            .map(|g| g.newest.remitter.clone())
            .collect()
    }

    /// Second step: `second` holds the second look of each folder of
    /// [`Self::folders_to_recheck`]; a folder that could not be listed is
    /// that folder's error and its files wait.
    pub fn settle(self, second: &HashMap<String, Result<Vec<Entry>, String>>) -> Plan {
        let Draft {
            decided: mut d,
            pending,
        } = self;
        let second: HashMap<&str, Result<HashMap<&str, &Entry>, &String>> = second
            .iter()
            .map(|(remitter, listing)| {
                let by_name = listing
                    .as_ref()
                    .map(|l| l.iter().map(|e| (e.name.as_str(), e)).collect());
                (remitter.as_str(), by_name)
            })
            .collect();
        let mut failed_folders = BTreeSet::new();
        let mut work = Vec::new();
        for g in pending {
            let c = &g.newest;
            let verdict = match second.get(c.remitter.as_str()) {
                None => Err(Unstable::FolderUnlisted("not listed".into())),
                Some(Err(why)) => {
                    if failed_folders.insert(c.remitter.clone()) {
                        d.folder_errors.push(FolderError {
                            remitter: c.remitter.clone(),
                            reason: format!(
                                "remitter folder could not be listed for the second look: {why}"
                            ),
                        });
                    }
                    Err(Unstable::FolderUnlisted(why.to_string()))
                }
                Some(Ok(listing)) => match listing.get(c.entry.name.as_str()) {
                    None => Err(Unstable::Vanished),
                    Some(e)
                        if e.size != c.entry.size
                            || e.mtime != c.entry.mtime
                            || e.ctime != c.entry.ctime =>
                    {
                        Err(Unstable::Changed)
                    }
                    Some(_) => Ok(()),
                },
            };
            match verdict {
                Ok(()) => work.push(g),
                Err(why) => d.wait(&g, &why),
            }
        }
        Plan { decided: d, work }
    }
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

    /// The clock of the table: files are 1,000 s old unless a case says otherwise.
    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    /// `(remitter, name, size, age in seconds)`.
    type File = (&'static str, &'static str, u64, i64);
    /// `(id, remitter, name, size, age, status, archived)`.
    type Row = (
        i64,
        &'static str,
        &'static str,
        i64,
        i64,
        &'static str,
        bool,
    );

    fn scan_of(files: &[File]) -> ScanResult {
        let now = at(0);
        let mut out = ScanResult::default();
        for &(remitter, name, size, age) in files {
            let t = now - chrono::Duration::seconds(age);
            let entry = Entry {
                name: name.into(),
                is_dir: false,
                size,
                mtime: t,
                ctime: t,
            };
            if name.starts_with("~$") {
                out.ignored.push((remitter.into(), name.into()));
            } else {
                out.candidates.push(Candidate {
                    remitter: remitter.into(),
                    entry,
                });
            }
        }
        out
    }

    fn rows(rows: &[Row]) -> Vec<KnownVersion> {
        rows.iter()
            .map(
                |&(id, remitter, name, size, age, status, archived)| KnownVersion {
                    id,
                    remitter: remitter.into(),
                    file_name: name.into(),
                    size,
                    mtime: at(-age),
                    status: status.parse().unwrap(),
                    archived,
                },
            )
            .collect()
    }

    fn draft_of(files: &[File], known: &[Row], remembered: &[File]) -> Draft {
        let remembered: Vec<SupersededFile> = remembered
            .iter()
            .map(|&(remitter, name, size, age)| SupersededFile {
                id: 1,
                remitter: remitter.into(),
                file_name: name.into(),
                size: size as i64,
                mtime: at(-age),
                newer_file_name: "newer".into(),
            })
            .collect();
        draft(Inputs {
            scan: scan_of(files),
            known: &rows(known),
            remembered: &remembered,
            now: at(0),
            min_age: Duration::from_secs(60),
        })
    }

    fn decisions(d: &Decided) -> Vec<(String, Decision)> {
        let mut v: Vec<_> = d
            .reports
            .iter()
            .map(|r| (r.file_name.clone(), r.decision))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn names(v: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut v: Vec<String> = v.into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn first_look_table() {
        use Decision::*;
        struct Case {
            what: &'static str,
            files: &'static [File],
            known: &'static [Row],
            remembered: &'static [File],
            decided: &'static [(&'static str, Decision)],
            pending: &'static [&'static str],
            archive: &'static [(&'static str, &'static str)],
            rearchive: &'static [i64],
        }
        let cases = [
            Case {
                what: "a new file old enough waits for the second look",
                files: &[("acme", "a.csv", 5, 1000)],
                known: &[],
                remembered: &[],
                decided: &[],
                pending: &["a.csv"],
                archive: &[],
                rearchive: &[],
            },
            Case {
                what: "too recent: the group waits whole, nothing archived",
                files: &[
                    ("acme", "r_20240102.csv", 5, 10),
                    ("acme", "r_20240101.csv", 5, 1000),
                ],
                known: &[],
                remembered: &[],
                decided: &[("r_20240101.csv", Superseded), ("r_20240102.csv", Unstable)],
                pending: &[],
                archive: &[],
                rearchive: &[],
            },
            Case {
                what: "temp names are ignored",
                files: &[("acme", "~$a.xlsx", 5, 1000)],
                known: &[],
                remembered: &[],
                decided: &[("~$a.xlsx", Ignored)],
                pending: &[],
                archive: &[],
                rearchive: &[],
            },
            Case {
                what: "a late-arriving older version alone is superseded by the claimed one",
                files: &[("acme", "r_20240101.csv", 5, 1000)],
                known: &[(1, "acme", "r_20240102.csv", 7, 5000, "success", true)],
                remembered: &[],
                decided: &[("r_20240101.csv", Superseded)],
                pending: &[],
                archive: &[("r_20240101.csv", "r_20240102.csv")],
                rearchive: &[],
            },
            Case {
                what: "late arrival across case: remitter and name compare case-insensitively",
                files: &[("Acme", "R_20240101.csv", 5, 1000)],
                known: &[(
                    1,
                    "acme",
                    "r_20240102093000.csv",
                    7,
                    5000,
                    "itm_failed",
                    false,
                )],
                remembered: &[],
                decided: &[("R_20240101.csv", Superseded)],
                pending: &[],
                archive: &[("R_20240101.csv", "r_20240102093000.csv")],
                rearchive: &[],
            },
            Case {
                what: "an old version uploaded again with new content is superseded",
                files: &[("acme", "r_20240101.csv", 9, 1000)],
                known: &[
                    (1, "acme", "r_20240101.csv", 5, 9000, "success", true),
                    (2, "acme", "r_20240102.csv", 7, 5000, "success", true),
                ],
                remembered: &[],
                decided: &[("r_20240101.csv", Superseded)],
                pending: &[],
                archive: &[("r_20240101.csv", "r_20240102.csv")],
                rearchive: &[],
            },
            Case {
                what: "a version newer than the claimed one goes on",
                files: &[("acme", "r_20240103.csv", 5, 1000)],
                known: &[(1, "acme", "r_20240102.csv", 7, 5000, "success", true)],
                remembered: &[],
                decided: &[],
                pending: &["r_20240103.csv"],
                archive: &[],
                rearchive: &[],
            },
            Case {
                what: "the claimed name with new content is a new version",
                files: &[("acme", "r_20240102.csv", 9, 1000)],
                known: &[(1, "acme", "r_20240102.csv", 7, 5000, "success", true)],
                remembered: &[],
                decided: &[],
                pending: &["r_20240102.csv"],
                archive: &[],
                rearchive: &[],
            },
            Case {
                what: "same name, size and time: already processed, older versions archived",
                files: &[
                    ("acme", "r_20240102.csv", 7, 5000),
                    ("acme", "r_20240101.csv", 5, 6000),
                ],
                known: &[(1, "acme", "r_20240102.csv", 7, 5000, "itm_failed", false)],
                remembered: &[],
                decided: &[
                    ("r_20240101.csv", Superseded),
                    ("r_20240102.csv", AlreadyProcessed),
                ],
                pending: &[],
                archive: &[("r_20240101.csv", "r_20240102.csv")],
                rearchive: &[],
            },
            Case {
                what: "archived content back in the source is archived again",
                files: &[("acme", "a.csv", 7, 5000)],
                known: &[(4, "acme", "a.csv", 7, 5000, "success", true)],
                remembered: &[],
                decided: &[("a.csv", AlreadyProcessed)],
                pending: &[],
                archive: &[],
                rearchive: &[4],
            },
            Case {
                what: "a failed file back in the source is not archived",
                files: &[("acme", "a.csv", 7, 5000)],
                known: &[(4, "acme", "a.csv", 7, 5000, "itm_failed", true)],
                remembered: &[],
                decided: &[("a.csv", AlreadyProcessed)],
                pending: &[],
                archive: &[],
                rearchive: &[],
            },
            Case {
                what: "a claim left processing goes through the claim again",
                files: &[("acme", "a.csv", 7, 5000)],
                known: &[(4, "acme", "a.csv", 7, 5000, "processing", false)],
                remembered: &[],
                decided: &[],
                pending: &["a.csv"],
                archive: &[],
                rearchive: &[],
            },
            Case {
                what: "a retry requested by an operator goes through the claim again",
                files: &[("acme", "a.csv", 7, 5000)],
                known: &[(4, "acme", "a.csv", 7, 5000, "retry_requested", false)],
                remembered: &[],
                decided: &[],
                pending: &["a.csv"],
                archive: &[],
                rearchive: &[],
            },
            Case {
                what: "a retried version older than a claimed one of its group is superseded",
                files: &[("acme", "r_20240101.csv", 5, 6000)],
                known: &[
                    (
                        4,
                        "acme",
                        "r_20240101.csv",
                        5,
                        6000,
                        "retry_requested",
                        false,
                    ),
                    (5, "acme", "r_20240102.csv", 7, 5000, "success", false),
                ],
                remembered: &[],
                decided: &[("r_20240101.csv", Superseded)],
                pending: &[],
                archive: &[("r_20240101.csv", "r_20240102.csv")],
                rearchive: &[],
            },
            Case {
                what: "a retried version with a newer one in the source waits for it (never sent itself)",
                files: &[
                    ("acme", "r_20240101.csv", 5, 6000),
                    ("acme", "r_20240102.csv", 7, 1000),
                ],
                known: &[(
                    4,
                    "acme",
                    "r_20240101.csv",
                    5,
                    6000,
                    "retry_requested",
                    false,
                )],
                remembered: &[],
                decided: &[],
                pending: &["r_20240102.csv"],
                archive: &[],
                rearchive: &[],
            },
            Case {
                what: "an operator's verdict is not sent again",
                files: &[("acme", "a.csv", 7, 5000)],
                known: &[(4, "acme", "a.csv", 7, 5000, "ops_done", false)],
                remembered: &[],
                decided: &[("a.csv", AlreadyProcessed)],
                pending: &[],
                archive: &[],
                rearchive: &[],
            },
            Case {
                what: "a remembered superseded version stays superseded, alone",
                files: &[("acme", "r_20240101.csv", 5, 1000)],
                known: &[],
                remembered: &[("acme", "r_20240101.csv", 5, 1000)],
                decided: &[("r_20240101.csv", Superseded)],
                pending: &[],
                archive: &[],
                rearchive: &[],
            },
            Case {
                what: "a replaced remembered version is a new file",
                files: &[("acme", "r_20240101.csv", 6, 1000)],
                known: &[],
                remembered: &[("acme", "r_20240101.csv", 5, 1000)],
                decided: &[],
                pending: &["r_20240101.csv"],
                archive: &[],
                rearchive: &[],
            },
        ];
        for c in cases {
            let d = draft_of(c.files, c.known, c.remembered);
            let want: Vec<(String, Decision)> = c
                .decided
                .iter()
                .map(|(n, dec)| (n.to_string(), *dec))
                .collect();
            assert_eq!(decisions(&d.decided), want, "{}", c.what);
            assert_eq!(
                names(d.pending.iter().map(|g| g.newest.entry.name.clone())),
                names(c.pending.iter().map(|n| n.to_string())),
                "{}",
                c.what
            );
            let archive: Vec<(String, String)> = d
                .decided
                .to_archive
                .iter()
                .map(|s| (s.file_name.clone(), s.newer_file_name.clone()))
                .collect();
            let want: Vec<(String, String)> = c
                .archive
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            assert_eq!(archive, want, "{}", c.what);
            assert_eq!(d.decided.rearchive, c.rearchive, "{}", c.what);
        }
    }

    #[test]
    fn second_look_table() {
        let files: &[File] = &[
            ("acme", "same.csv", 5, 1000),
            ("acme", "grown.csv", 5, 1000),
            ("acme", "gone.csv", 5, 1000),
            ("beta", "r_20240102.csv", 5, 1000),
            ("beta", "r_20240101.csv", 5, 2000),
            ("gamma", "x.csv", 5, 1000),
        ];
        let d = draft_of(files, &[], &[]);
        assert_eq!(
            d.folders_to_recheck().into_iter().collect::<Vec<_>>(),
            ["acme", "beta", "gamma"]
        );
        let listing = |fs: &[File]| -> Result<Vec<Entry>, String> {
            Ok(scan_of(fs)
                .candidates
                .into_iter()
                .map(|c| c.entry)
                .collect())
        };
        let second = HashMap::from([
            (
                "acme".to_string(),
                listing(&[
                    ("acme", "same.csv", 5, 1000),
                    ("acme", "grown.csv", 9, 1000),
                ]),
            ),
            (
                "beta".to_string(),
                listing(&[
                    ("beta", "r_20240102.csv", 5, 1000),
                    ("beta", "r_20240101.csv", 5, 2000),
                ]),
            ),
            ("gamma".to_string(), Err("permission denied".to_string())),
        ]);
        let plan = d.settle(&second);
        assert_eq!(
            names(plan.work.iter().map(|g| g.newest.entry.name.clone())),
            ["r_20240102.csv", "same.csv"]
        );
        let reasons: Vec<(String, Decision, String)> = {
            let mut v: Vec<_> = plan
                .decided
                .reports
                .iter()
                .map(|r| (r.file_name.clone(), r.decision, r.reason.clone().unwrap()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        assert_eq!(
            reasons,
            [
                (
                    "gone.csv".into(),
                    Decision::Unstable,
                    Unstable::Vanished.to_string()
                ),
                (
                    "grown.csv".into(),
                    Decision::Unstable,
                    Unstable::Changed.to_string()
                ),
                (
                    "x.csv".into(),
                    Decision::Unstable,
                    Unstable::FolderUnlisted("permission denied".into()).to_string()
                ),
            ]
        );
        assert_eq!(plan.decided.folder_errors.len(), 1);
        assert_eq!(plan.decided.folder_errors[0].remitter, "gamma");
        // Older versions of a stable group are archived once it was processed,
        // and wait when the download found it unstable after all.
        let g = plan
            .work
            .iter()
            .find(|g| g.newest.remitter == "beta")
            .unwrap();
        assert_eq!(g.superseded.len(), 1);
        let mut d = Decided::default();
        d.after_processing(g, &FileReport::new(&g.newest, Decision::Unstable, None));
        assert!(d.to_archive.is_empty());
        assert_eq!(d.reports[0].decision, Decision::Superseded);
        d.after_processing(g, &FileReport::new(&g.newest, Decision::Processed, None));
        assert_eq!(d.to_archive.len(), 1);
        assert_eq!(d.to_archive[0].file_name, "r_20240101.csv");
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
