//! Plan: from what the scan found and what the database knows, decide every
//! file's fate (CONTRACT §1.1–1.4): temp names, versions and late arrivals,
//! what is already processed, and Policy A's verdicts. It is pure: the engine
//! does the I/O (listings, queries, the pause between the two looks) and
//! hands the results in, in two steps — [`draft`] after the first look and
//! [`Draft::settle`] after the second.

pub mod duplicates;
pub mod versions;

use crate::domain::{Decision, FileReport, FileStatus, FolderError};
use crate::scan::{Candidate, ScanResult};
use crate::source::Entry;
use crate::store::{KnownVersion, SupersededFile};
use chrono::{DateTime, Utc};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use versions::{newest_first, strip_ts_basename};

/// Versions of one logical file of one remitter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Group {
    /// The logical name (timestamp stripped), as found on the newest version.
    pub base_name: String,
    /// The version to process.
    pub newest: Candidate,
    /// Older versions, to archive without processing.
    pub superseded: Vec<Candidate>,
    /// Its place among the run's possible copies (`DUPLICATE_CONTENT=hold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies: Option<duplicates::CopyPlace>,
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
                copies: None,
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

/// A file version by remitter, name, size and last-write time.
type VersionKey<'a> = (&'a str, &'a str, i64, DateTime<Utc>);

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

/// True when the stored row `k` is the version `e` of its file: same size
/// and last-write time, and the same change time where the row has one.
fn same_version(k: &KnownVersion, e: &Entry) -> bool {
    k.size == e.size as i64 && k.mtime == e.mtime && k.ctime.is_none_or(|c| c == e.ctime)
}

/// An older version on its way to the archive. It passes Policy A like a
/// newest version (old enough at the first look, unchanged at the second)
/// before it is recorded and moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Older {
    /// The version.
    pub version: Candidate,
    /// The version that supersedes it.
    pub newer: String,
    /// Why, for its report once it is recorded.
    pub reason: String,
}

/// Decisions taken so far, whatever the second look finds. Serialisable, so
/// a run's plan can be stored and the run finished by another instance than
/// the one that scanned (CONTRACT §10).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
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
    /// The claimed rows of the scanned groups, by [`row_key`]: an older
    /// version with a row is archived with it, or stays (a failure).
    rows: HashMap<String, Vec<KnownVersion>>,
}

/// The key of a file's rows in [`Decided`]: remitter and file name, exactly
/// as they are (a folder name holds no `/`).
fn row_key(remitter: &str, file_name: &str) -> String {
    format!("{remitter}/{file_name}")
}

impl Decided {
    /// Keeps only the rows [`Self::after_processing`] can still need (those
    /// of the older versions of `work`), so a stored plan stays small on a
    /// share of tens of thousands of known files.
    pub fn keep_rows_for(&mut self, work: &[(i32, Group)]) {
        let needed: std::collections::HashSet<String> = work
            .iter()
            .flat_map(|(_, g)| g.superseded.iter())
            .map(|c| row_key(&c.remitter, &c.entry.name))
            .collect();
        self.rows.retain(|k, _| needed.contains(k));
    }

    /// The stored row of this very version (name, size and timestamps), the
    /// latest when several match.
    fn row_of(&self, c: &Candidate) -> Option<&KnownVersion> {
        self.rows
            .get(&row_key(&c.remitter, &c.entry.name))?
            .iter()
            .filter(|k| same_version(k, &c.entry))
            .max_by_key(|k| k.id)
    }

    /// The first look at an older version: one whose row is a failure stays
    /// in the source until an operator acts (CONTRACT §1), one that is too
    /// recent waits like any unstable file; the others go to the second look.
    fn first_look_older(
        &mut self,
        old: &Candidate,
        newer: &str,
        reason: String,
        now: DateTime<Utc>,
        min_age: Duration,
    ) -> Option<Older> {
        if let Some(status) = self
            .row_of(old)
            .map(|k| k.status.clone())
            .filter(FileStatus::is_failure)
        {
            self.reports.push(
                FileReport::new(
                    old,
                    Decision::Superseded,
                    Some(format!(
                        "{reason}; not archived: it failed ({}) and stays in the source until an operator acts",
                        status.as_str()
                    )),
                )
                .with_status(status),
            );
            return None;
        }
        if let Err(why) = old_enough(old.entry.newest_time(), now, min_age) {
            self.wait_older(old, &why);
            return None;
        }
        Some(Older {
            version: old.clone(),
            newer: newer.to_string(),
            reason,
        })
    }

    /// An older version that is not stable: reported, not recorded, not moved.
    fn wait_older(&mut self, old: &Candidate, why: &Unstable) {
        self.reports.push(FileReport::new(
            old,
            Decision::Superseded,
            Some(format!("archive waits: still being written ({why})")),
        ));
    }

    /// Records a stable older version for the archive, with its row if it
    /// has one (the move then archives the row too).
    fn supersede(&mut self, old: &Older) {
        let c = &old.version;
        let row = self.row_of(c).map(|k| (k.id, k.status.clone()));
        let mut report = FileReport::new(c, Decision::Superseded, Some(old.reason.clone()));
        if let Some((_, status)) = &row {
            report = report.with_status(status.clone());
        }
        self.reports.push(report);
        self.to_archive.push(SupersededFile {
            id: 0,
            remitter: c.remitter.clone(),
            file_name: c.entry.name.clone(),
            size: c.entry.size as i64,
            mtime: c.entry.mtime,
            ctime: Some(c.entry.ctime),
            newer_file_name: old.newer.clone(),
            file_id: row.map(|(id, _)| id),
            md5: None,
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
            let why = if report.decision == Decision::Deferred {
                "was not processed (the coordinator was stopping)"
            } else {
                "is not stable yet"
            };
            for old in &g.superseded {
                self.reports.push(FileReport::new(
                    old,
                    Decision::Superseded,
                    Some(format!(
                        "archive waits: newest version {} {why}",
                        g.newest.entry.name
                    )),
                ));
            }
        } else {
            self.supersede_older(g);
        }
    }

    /// Archives the older versions of `g` (each passed Policy A already).
    fn supersede_older(&mut self, g: &Group) {
        for old in &g.superseded {
            self.supersede(&Older {
                version: old.clone(),
                newer: g.newest.entry.name.clone(),
                reason: older_reason(&g.newest.entry.name),
            });
        }
    }
}

/// The report of an older version of a group recorded for the archive.
fn older_reason(newest: &str) -> String {
    format!("older version of {newest}; moved to the archive in the background")
}

/// The plan after the first look: decided files, and groups whose newest
/// version is old enough and waits for the second look.
#[derive(Debug)]
pub struct Draft {
    /// What is decided already.
    pub decided: Decided,
    /// Groups waiting for the second look; their older versions are old
    /// enough and are looked at again too.
    pub pending: Vec<Group>,
    /// Older versions whose group's newest was decided already (processed
    /// before, or a late arrival), waiting for the second look.
    pub pending_older: Vec<Older>,
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
            instance: None,
        });
    }
    // Versions an earlier run superseded stay superseded until moved, even
    // when they are now alone in their group (a change time that moved
    // makes it another version).
    let remembered: HashMap<VersionKey<'_>, Option<DateTime<Utc>>> = remembered
        .iter()
        .map(|e| {
            (
                (e.remitter.as_str(), e.file_name.as_str(), e.size, e.mtime),
                e.ctime,
            )
        })
        .collect();
    let (candidates, earlier): (Vec<Candidate>, Vec<Candidate>) =
        scan.candidates.into_iter().partition(|c| {
            let key = (
                c.remitter.as_str(),
                c.entry.name.as_str(),
                c.entry.size as i64,
                c.entry.mtime,
            );
            !remembered
                .get(&key)
                .is_some_and(|ctime| ctime.is_none_or(|t| t == c.entry.ctime))
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
    for k in known {
        let slot = claimed_newest
            .entry(key_of(&k.remitter, &k.file_name))
            .or_insert(&k.file_name);
        if older(slot, &k.file_name) {
            *slot = &k.file_name;
        }
        d.rows
            .entry(row_key(&k.remitter, &k.file_name))
            .or_default()
            .push(k.clone());
    }
    let mut pending = Vec::new();
    let mut pending_older = Vec::new();
    for mut g in group(candidates) {
        let e = &g.newest.entry;
        // A late arrival: the whole group is older than a version already claimed.
        if let Some(claimed) = claimed_newest
            .get(&key_of(&g.newest.remitter, &e.name))
            .filter(|c| older(&e.name, c))
        {
            for old in std::iter::once(&g.newest).chain(&g.superseded) {
                let reason = format!("older than {claimed}, which was already claimed; never sent");
                pending_older.extend(d.first_look_older(old, claimed, reason, now, min_age));
            }
            continue;
        }
        // A claim still `processing` (lease recovery) or `retry_requested`
        // (an operator sent it back) goes through the claim again.
        let seen = d
            .rows
            .get(&row_key(&g.newest.remitter, &e.name))
            .and_then(|ks| {
                ks.iter()
                    .find(|k| same_version(k, e) && !k.status.wants_claim())
            })
            .cloned();
        if let Some(k) = seen {
            let mut reason = "same name, size and timestamps as a recorded version".to_string();
            if k.archived && k.status.is_archivable() {
                // Its content was archived before and is back in the source.
                d.rearchive.push(k.id);
                reason.push_str("; uploaded again after it was archived: archived again");
            }
            d.reports.push(
                FileReport::new(&g.newest, Decision::AlreadyProcessed, Some(reason))
                    .with_status(k.status.clone()),
            );
            for old in &g.superseded {
                let reason = older_reason(&e.name);
                pending_older.extend(d.first_look_older(old, &e.name, reason, now, min_age));
            }
            continue;
        }
        match old_enough(e.newest_time(), now, min_age) {
            Ok(()) => {
                // Its older versions: those that may not be archived (yet)
                // are reported now; the others are looked at again with it.
                let newest = g.newest.entry.name.clone();
                let older = std::mem::take(&mut g.superseded);
                for old in older {
                    if d.first_look_older(&old, &newest, older_reason(&newest), now, min_age)
                        .is_some()
                    {
                        g.superseded.push(old);
                    }
                }
                pending.push(g)
            }
            Err(why) => d.wait(&g, &why),
        }
    }
    Draft {
        decided: d,
        pending,
        pending_older,
    }
}

/// What the second look says of one file of the first: `Ok` when it is
/// there with the same size and timestamps. A folder that could not be
/// listed is recorded as that folder's error, once.
fn second_look(
    c: &Candidate,
    second: &HashMap<&str, Result<HashMap<&str, &Entry>, &String>>,
    failed_folders: &mut BTreeSet<String>,
    d: &mut Decided,
) -> Result<(), Unstable> {
    match second.get(c.remitter.as_str()) {
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
    }
}

impl Draft {
    /// Remitter folders to list again for the second look: those of every
    /// pending version, newest or older.
    pub fn folders_to_recheck(&self) -> BTreeSet<String> {
        self.pending
            .iter()
            .flat_map(|g| std::iter::once(&g.newest).chain(&g.superseded))
            .chain(self.pending_older.iter().map(|o| &o.version))
            .map(|c| c.remitter.clone())
            .collect()
    }

    /// Second step: `second` holds the second look of each folder of
    /// [`Self::folders_to_recheck`]; a folder that could not be listed is
    /// that folder's error and its files wait.
    pub fn settle(self, second: &HashMap<String, Result<Vec<Entry>, String>>) -> Plan {
        let Draft {
            decided: mut d,
            pending,
            pending_older,
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
        for mut g in pending {
            match second_look(&g.newest, &second, &mut failed_folders, &mut d) {
                Ok(()) => {
                    // Older versions still being written wait; the rest are
                    // archived once the newest has been processed.
                    let older = std::mem::take(&mut g.superseded);
                    for old in older {
                        match second_look(&old, &second, &mut failed_folders, &mut d) {
                            Ok(()) => g.superseded.push(old),
                            Err(why) => d.wait_older(&old, &why),
                        }
                    }
                    work.push(g)
                }
                Err(why) => d.wait(&g, &why),
            }
        }
        for o in pending_older {
            match second_look(&o.version, &second, &mut failed_folders, &mut d) {
                Ok(()) => d.supersede(&o),
                Err(why) => d.wait_older(&o.version, &why),
            }
        }
        Plan { decided: d, work }
    }
}

/// The order in which a run's groups are taken (CONTRACT §10, fair share):
/// round-robin across remitters (case-insensitively), oldest file first
/// within one remitter, so a remitter with thousands of files never holds
/// another's one file back for more than one round. Each group comes with
/// its rank, its place among its remitter's groups.
pub fn fair_share(work: Vec<Group>) -> Vec<(i32, Group)> {
    let mut by_remitter: BTreeMap<String, Vec<Group>> = BTreeMap::new();
    for g in work {
        by_remitter
            .entry(g.newest.remitter.to_lowercase())
            .or_default()
            .push(g);
    }
    let mut ranked = Vec::new();
    for groups in by_remitter.values_mut() {
        groups.sort_by(|a, b| {
            (a.newest.entry.newest_time(), &a.newest.entry.name)
                .cmp(&(b.newest.entry.newest_time(), &b.newest.entry.name))
        });
    }
    for (remitter, groups) in by_remitter {
        for (rank, g) in groups.into_iter().enumerate() {
            ranked.push((i32::try_from(rank).unwrap_or(i32::MAX), remitter.clone(), g));
        }
    }
    ranked.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    ranked.into_iter().map(|(rank, _, g)| (rank, g)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Entry;

    #[test]
    fn fair_share_takes_remitters_in_turn_oldest_first() {
        let file = |remitter: &str, name: &str, age: i64| {
            let mut c = cand(remitter, name);
            c.entry.mtime = at(-age);
            c.entry.ctime = at(-age);
            group(vec![c]).remove(0)
        };
        // (remitter, name, age in seconds) -> (name, rank) in the order taken.
        type Files<'a> = &'a [(&'a str, &'a str, i64)];
        type Taken<'a> = &'a [(&'a str, i32)];
        let cases: &[(Files, Taken)] = &[
            (&[], &[]),
            (
                &[
                    ("a", "a3", 10),
                    ("a", "a1", 30),
                    ("a", "a2", 20),
                    ("b", "b1", 1),
                ],
                &[("a1", 0), ("b1", 0), ("a2", 1), ("a3", 2)],
            ),
            // Remitters compare case-insensitively: one remitter, one turn.
            (
                &[("Acme", "x", 5), ("acme", "y", 6), ("zed", "z", 1)],
                &[("y", 0), ("z", 0), ("x", 1)],
            ),
            // Equal times: by name.
            (&[("a", "q", 1), ("a", "p", 1)], &[("p", 0), ("q", 1)]),
        ];
        for (files, want) in cases {
            let work: Vec<Group> = files.iter().map(|&(r, n, age)| file(r, n, age)).collect();
            let got: Vec<(String, i32)> = fair_share(work)
                .into_iter()
                .map(|(rank, g)| (g.newest.entry.name, rank))
                .collect();
            let want: Vec<(String, i32)> = want.iter().map(|&(n, k)| (n.to_string(), k)).collect();
            assert_eq!(got, want, "{files:?}");
        }
    }

    #[test]
    fn a_remitter_with_many_files_holds_anothers_one_file_back_one_round_at_most() {
        let mut work: Vec<Group> = (0..500)
            .map(|i| group(vec![cand("a", &format!("a{i:03}.csv"))]).remove(0))
            .collect();
        work.push(group(vec![cand("b", "b.csv")]).remove(0));
        let order = fair_share(work);
        let at = order
            .iter()
            .position(|(_, g)| g.newest.remitter == "b")
            .unwrap();
        assert!(at <= 1, "b's file is taken {at}th");
    }

    #[test]
    fn a_plan_survives_a_round_trip_through_json() {
        let draft = draft(Inputs {
            scan: scan_of(&[
                ("acme", "r_20240101.csv", 1, 1000),
                ("acme", "r_20240102.csv", 1, 1000),
                ("acme", "~$r.csv", 1, 1000),
            ]),
            known: &rows(&[(
                7,
                "acme",
                "r_20240101.csv",
                1,
                1000,
                "extraction_file_failed",
                false,
            )]),
            remembered: &[],
            now: at(0),
            min_age: Duration::from_secs(60),
        });
        let plan = draft.settle(&HashMap::new());
        let json = serde_json::to_value(&plan.decided).unwrap();
        let back: Decided = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        assert_eq!(back.reports, plan.decided.reports);
        // The rows travel too: the failed older version is still found failed.
        let old = cand("acme", "r_20240101.csv");
        let mut old = old;
        old.entry.mtime = at(-1000);
        old.entry.ctime = at(-1000);
        assert_eq!(
            back.row_of(&old).map(|k| k.status.clone()),
            Some(FileStatus::ExtractionFileFailed)
        );
        let groups = serde_json::to_value(&plan.work).unwrap();
        assert_eq!(
            serde_json::from_value::<Vec<Group>>(groups).unwrap(),
            plan.work
        );
    }

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
                    ctime: Some(at(-age)),
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
                ctime: Some(at(-age)),
                newer_file_name: "newer".into(),
                file_id: None,
                md5: None,
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

    /// A second look of every remitter folder of `files`, holding `files`.
    fn listings(files: &[File]) -> HashMap<String, Result<Vec<Entry>, String>> {
        let mut out: HashMap<String, Result<Vec<Entry>, String>> = HashMap::new();
        for c in scan_of(files).candidates {
            if let Ok(l) = out.entry(c.remitter).or_insert_with(|| Ok(Vec::new())) {
                l.push(c.entry);
            }
        }
        out
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
            assert_eq!(
                names(d.pending.iter().map(|g| g.newest.entry.name.clone())),
                names(c.pending.iter().map(|n| n.to_string())),
                "{}",
                c.what
            );
            // The second look finds every file as the first did.
            let d = d.settle(&listings(c.files));
            let want: Vec<(String, Decision)> = c
                .decided
                .iter()
                .map(|(n, dec)| (n.to_string(), *dec))
                .collect();
            assert_eq!(decisions(&d.decided), want, "{}", c.what);
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

    /// Older versions (issue 12): Policy A applies to them as to a newest
    /// version; a failed one stays for an operator; one with another row
    /// status is archived with its row; remitter folders that differ only in
    /// case are one group. Each case is drafted, settled with its second
    /// look, and its newest versions processed.
    #[test]
    fn older_versions_table() {
        use Decision::*;
        struct Case {
            what: &'static str,
            files: &'static [File],
            known: &'static [Row],
            /// The second look (`None`: as the first).
            second: Option<&'static [File]>,
            /// Folders the second look must list.
            recheck: &'static [&'static str],
            /// `(name, decision, part of its reason)`.
            decided: &'static [(&'static str, Decision, &'static str)],
            /// Newest versions to process.
            work: &'static [&'static str],
            /// `(remitter, name, file_id)` recorded for the archive, after processing.
            archive: &'static [(&'static str, &'static str, Option<i64>)],
        }
        let cases = [
            Case {
                what: "an older version just written waits; the newest is processed",
                files: &[
                    ("acme", "r_20240102.csv", 5, 1000),
                    ("acme", "r_20240101.csv", 5, 10),
                ],
                known: &[],
                second: None,
                recheck: &["acme"],
                decided: &[("r_20240101.csv", Superseded, "still being written")],
                work: &["r_20240102.csv"],
                archive: &[],
            },
            Case {
                what: "an older version that changes between the looks waits",
                files: &[
                    ("acme", "r_20240102.csv", 5, 1000),
                    ("acme", "r_20240101.csv", 5, 1000),
                ],
                known: &[],
                second: Some(&[
                    ("acme", "r_20240102.csv", 5, 1000),
                    ("acme", "r_20240101.csv", 9, 1000),
                ]),
                recheck: &["acme"],
                decided: &[("r_20240101.csv", Superseded, "still being written")],
                work: &["r_20240102.csv"],
                archive: &[],
            },
            Case {
                what: "a stable older version is archived after its newest",
                files: &[
                    ("acme", "r_20240102.csv", 5, 1000),
                    ("acme", "r_20240101.csv", 5, 1000),
                ],
                known: &[],
                second: None,
                recheck: &["acme"],
                decided: &[("r_20240101.csv", Superseded, "older version of")],
                work: &["r_20240102.csv"],
                archive: &[("acme", "r_20240101.csv", None)],
            },
            Case {
                what: "a late arrival just written waits",
                files: &[("acme", "r_20240101.csv", 5, 10)],
                known: &[(1, "acme", "r_20240102.csv", 7, 5000, "success", true)],
                second: None,
                recheck: &[],
                decided: &[("r_20240101.csv", Superseded, "still being written")],
                work: &[],
                archive: &[],
            },
            Case {
                what: "a late arrival that changes between the looks waits",
                files: &[("acme", "r_20240101.csv", 5, 1000)],
                known: &[(1, "acme", "r_20240102.csv", 7, 5000, "success", true)],
                second: Some(&[("acme", "r_20240101.csv", 6, 1000)]),
                recheck: &["acme"],
                decided: &[("r_20240101.csv", Superseded, "still being written")],
                work: &[],
                archive: &[],
            },
            Case {
                what: "a late arrival gone at the second look waits",
                files: &[("acme", "r_20240101.csv", 5, 1000)],
                known: &[(1, "acme", "r_20240102.csv", 7, 5000, "success", true)],
                second: Some(&[]),
                recheck: &["acme"],
                decided: &[("r_20240101.csv", Superseded, "archive waits")],
                work: &[],
                archive: &[],
            },
            Case {
                what: "older versions of an already processed newest pass both looks",
                files: &[
                    ("acme", "r_20240102.csv", 7, 5000),
                    ("acme", "r_20240101.csv", 5, 10),
                    ("acme", "r_20231231.csv", 5, 1000),
                ],
                known: &[(1, "acme", "r_20240102.csv", 7, 5000, "success", false)],
                second: None,
                recheck: &["acme"],
                decided: &[
                    ("r_20231231.csv", Superseded, "older version of"),
                    ("r_20240101.csv", Superseded, "still being written"),
                    ("r_20240102.csv", AlreadyProcessed, "same name"),
                ],
                work: &[],
                archive: &[("acme", "r_20231231.csv", None)],
            },
            Case {
                what: "a failed older version stays in the source for an operator",
                files: &[
                    ("acme", "r_20240102.csv", 7, 1000),
                    ("acme", "r_20240101.csv", 5, 6000),
                ],
                known: &[(4, "acme", "r_20240101.csv", 5, 6000, "itm_failed", false)],
                second: None,
                recheck: &["acme"],
                decided: &[("r_20240101.csv", Superseded, "until an operator acts")],
                work: &["r_20240102.csv"],
                archive: &[],
            },
            Case {
                what: "a failed late arrival stays in the source for an operator",
                files: &[("acme", "r_20240101.csv", 5, 6000)],
                known: &[
                    (
                        4,
                        "acme",
                        "r_20240101.csv",
                        5,
                        6000,
                        "extraction_file_failed",
                        false,
                    ),
                    (5, "acme", "r_20240102.csv", 7, 5000, "success", true),
                ],
                second: None,
                recheck: &[],
                decided: &[("r_20240101.csv", Superseded, "until an operator acts")],
                work: &[],
                archive: &[],
            },
            Case {
                what: "a retried late arrival is archived with its row",
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
                    (5, "acme", "r_20240102.csv", 7, 5000, "success", true),
                ],
                second: None,
                recheck: &["acme"],
                decided: &[("r_20240101.csv", Superseded, "already claimed")],
                work: &[],
                archive: &[("acme", "r_20240101.csv", Some(4))],
            },
            Case {
                what: "a processed older version still in the source is archived with its row",
                files: &[
                    ("acme", "r_20240102.csv", 7, 1000),
                    ("acme", "r_20240101.csv", 5, 6000),
                ],
                known: &[(4, "acme", "r_20240101.csv", 5, 6000, "success", false)],
                second: None,
                recheck: &["acme"],
                decided: &[("r_20240101.csv", Superseded, "older version of")],
                work: &["r_20240102.csv"],
                archive: &[("acme", "r_20240101.csv", Some(4))],
            },
            Case {
                what: "an old name with another content has no row to archive",
                files: &[("acme", "r_20240101.csv", 9, 1000)],
                known: &[
                    (4, "acme", "r_20240101.csv", 5, 6000, "itm_failed", false),
                    (5, "acme", "r_20240102.csv", 7, 5000, "success", true),
                ],
                second: None,
                recheck: &["acme"],
                decided: &[("r_20240101.csv", Superseded, "already claimed")],
                work: &[],
                archive: &[("acme", "r_20240101.csv", None)],
            },
            Case {
                what: "remitter folders that differ only in case are one group",
                files: &[
                    ("Acme", "r_20240102.csv", 7, 1000),
                    ("acme", "r_20240101.csv", 5, 1000),
                ],
                known: &[],
                second: None,
                recheck: &["Acme", "acme"],
                decided: &[(
                    "r_20240101.csv",
                    Superseded,
                    "older version of r_20240102.csv",
                )],
                work: &["r_20240102.csv"],
                archive: &[("acme", "r_20240101.csv", None)],
            },
            Case {
                what: "an older version in the other-case folder waits for its own second look",
                files: &[
                    ("acme", "r_20240102.csv", 7, 1000),
                    ("ACME", "r_20240101.csv", 5, 1000),
                ],
                known: &[],
                second: Some(&[
                    ("acme", "r_20240102.csv", 7, 1000),
                    ("ACME", "r_20240101.csv", 6, 1000),
                ]),
                recheck: &["ACME", "acme"],
                decided: &[("r_20240101.csv", Superseded, "still being written")],
                work: &["r_20240102.csv"],
                archive: &[],
            },
            Case {
                what: "a late arrival in the other-case folder is superseded",
                files: &[("ACME", "r_20240101.csv", 5, 1000)],
                known: &[(5, "acme", "r_20240102.csv", 7, 5000, "success", true)],
                second: None,
                recheck: &["ACME"],
                decided: &[("r_20240101.csv", Superseded, "already claimed")],
                work: &[],
                archive: &[("ACME", "r_20240101.csv", None)],
            },
        ];
        for c in cases {
            let draft = draft_of(c.files, c.known, &[]);
            assert_eq!(
                draft.folders_to_recheck().into_iter().collect::<Vec<_>>(),
                c.recheck,
                "{}",
                c.what
            );
            let mut plan = draft.settle(&listings(c.second.unwrap_or(c.files)));
            assert_eq!(
                names(plan.work.iter().map(|g| g.newest.entry.name.clone())),
                names(c.work.iter().map(|n| n.to_string())),
                "{}",
                c.what
            );
            for g in &plan.work {
                let done = FileReport::new(&g.newest, Decision::Processed, None);
                plan.decided.after_processing(g, &done);
            }
            let mut got: Vec<(String, Decision, String)> = plan
                .decided
                .reports
                .iter()
                .map(|r| {
                    (
                        r.file_name.clone(),
                        r.decision,
                        r.reason.clone().unwrap_or_default(),
                    )
                })
                .collect();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(got.len(), c.decided.len(), "{}: {got:?}", c.what);
            for ((name, decision, reason), want) in got.iter().zip(c.decided) {
                assert_eq!((name.as_str(), *decision), (want.0, want.1), "{}", c.what);
                assert!(reason.contains(want.2), "{}: {reason}", c.what);
            }
            let archive: Vec<(String, String, Option<i64>)> = plan
                .decided
                .to_archive
                .iter()
                .map(|s| (s.remitter.clone(), s.file_name.clone(), s.file_id))
                .collect();
            let want: Vec<(String, String, Option<i64>)> = c
                .archive
                .iter()
                .map(|(r, n, i)| (r.to_string(), n.to_string(), *i))
                .collect();
            assert_eq!(archive, want, "{}", c.what);
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
