//! Outcomes that FOI and ITM gave but that could not be written to Postgres
//! (it stayed down past the claim's lease). They are kept, in memory and in
//! a journal file in `SPOOL_DIR`, so that the write is finished later —
//! by the next run or background pass, or by this process's takeover of the
//! claim — without calling FOI or ITM again for that version.

use crate::domain::FileStatus;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use uuid::Uuid;

/// The name of the journal file in `SPOOL_DIR`.
pub const JOURNAL: &str = "kept-outcomes.json";

/// What downstream answered for one claimed file, ready to be written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The file's new status.
    pub status: FileStatus,
    /// The status event's detail.
    pub detail: Value,
    /// Why it failed, for the run's report.
    pub failure: Option<String>,
    /// The IQube payload of a failure, queued with the status.
    pub notification: Option<Value>,
}

/// An outcome whose write failed, with the claim it was got under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptOutcome {
    /// Remitter folder.
    pub remitter: String,
    /// File name.
    pub file_name: String,
    /// MD5 of the content that was sent.
    pub md5: String,
    /// `files.id`.
    pub file_id: i64,
    /// The claim token the answer was got under.
    pub token: Uuid,
    /// What downstream answered.
    pub outcome: Outcome,
}

impl KeptOutcome {
    /// The outcome as it is written later: its detail says so.
    pub fn recorded_later(&self) -> Outcome {
        let mut outcome = self.outcome.clone();
        if let Value::Object(map) = &mut outcome.detail {
            map.insert(
                "recorded_later".into(),
                Value::String(
                    "the first write of this outcome failed; written from the answer kept, \
                     without calling FOI or ITM again"
                        .into(),
                ),
            );
        }
        outcome
    }
}

type Key = (String, String, String);

/// The kept outcomes of this process, by version (remitter, name, MD5).
#[derive(Debug, Default)]
pub struct KeptOutcomes {
    entries: Mutex<HashMap<Key, KeptOutcome>>,
    /// Versions whose run is still retrying the write itself: a later pass
    /// leaves those to it.
    retrying: Mutex<std::collections::HashSet<Key>>,
    /// Where they are journaled; `None` keeps them in memory only.
    journal: Option<PathBuf>,
}

impl KeptOutcomes {
    /// Outcomes journaled in `dir`, loaded from an earlier process's journal
    /// (an unreadable one is logged and set aside, never silently dropped).
    pub fn journaled(dir: &std::path::Path) -> Self {
        let path = dir.join(JOURNAL);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<KeptOutcome>>(&bytes) {
                Ok(list) => {
                    if !list.is_empty() {
                        tracing::warn!(
                            count = list.len(),
                            "outcomes kept by an earlier process are waiting to be written"
                        );
                    }
                    list.into_iter().map(|k| (key_of(&k), k)).collect()
                }
                Err(e) => {
                    let aside = path.with_extension("unreadable");
                    tracing::error!(error = %e, path = %aside.display(), "the kept-outcome journal is unreadable; set aside for an operator");
                    let _ = std::fs::rename(&path, &aside);
                    HashMap::new()
                }
            },
            Err(_) => HashMap::new(),
        };
        Self {
            entries: Mutex::new(entries),
            retrying: Mutex::default(),
            journal: Some(path),
        }
    }

    /// Keeps `k` (replacing an older entry for the same version).
    pub fn keep(&self, k: KeptOutcome) {
        let mut entries = self.lock();
        entries.insert(key_of(&k), k);
        self.save(&entries);
    }

    /// Takes the kept outcome of a version, if any.
    pub fn take(&self, remitter: &str, file_name: &str, md5: &str) -> Option<KeptOutcome> {
        let mut entries = self.lock();
        let k = entries.remove(&(remitter.into(), file_name.into(), md5.into()));
        if k.is_some() {
            self.save(&entries);
        }
        k
    }

    /// Forgets `k` once it is written (unless a newer one replaced it).
    pub fn written(&self, k: &KeptOutcome) {
        let mut entries = self.lock();
        if entries.get(&key_of(k)) == Some(k) {
            entries.remove(&key_of(k));
            self.save(&entries);
        }
    }

    /// Every kept outcome whose run is no longer retrying its write.
    pub fn all(&self) -> Vec<KeptOutcome> {
        let retrying = self.retrying.lock().map(|r| r.clone()).unwrap_or_default();
        self.lock()
            .iter()
            .filter(|(key, _)| !retrying.contains(*key))
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Keeps `k` while its run retries the write (see [`Self::all`]);
    /// [`Self::retried`] ends that.
    pub fn keep_retrying(&self, k: KeptOutcome) {
        if let Ok(mut r) = self.retrying.lock() {
            r.insert(key_of(&k));
        }
        self.keep(k);
    }

    /// The run stopped retrying `k`: written (or refused for good) when
    /// `done`, else left for a later run or pass.
    pub fn retried(&self, k: &KeptOutcome, done: bool) {
        if let Ok(mut r) = self.retrying.lock() {
            r.remove(&key_of(k));
        }
        if done {
            self.written(k);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, KeptOutcome>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rewrites the journal (write a temporary file, then rename, so a crash
    /// leaves the old or the new journal, never half of one).
    fn save(&self, entries: &HashMap<Key, KeptOutcome>) {
        let Some(path) = &self.journal else { return };
        let result = (|| -> std::io::Result<()> {
            if entries.is_empty() {
                return match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                };
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let list: Vec<&KeptOutcome> = entries.values().collect();
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&list)?)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, path = %path.display(), "could not journal the kept outcomes; they are kept in memory");
        }
    }
}

fn key_of(k: &KeptOutcome) -> Key {
    (k.remitter.clone(), k.file_name.clone(), k.md5.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kept(md5: &str) -> KeptOutcome {
        KeptOutcome {
            remitter: "acme".into(),
            file_name: "a.csv".into(),
            md5: md5.into(),
            file_id: 7,
            token: Uuid::nil(),
            outcome: Outcome {
                status: FileStatus::Success,
                detail: json!({"step": "itm"}),
                failure: None,
                notification: None,
            },
        }
    }

    #[test]
    fn kept_outcomes_survive_a_restart_and_leave_when_written() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeptOutcomes::journaled(dir.path());
        first.keep(kept("m1"));
        first.keep(kept("m2"));
        let again = KeptOutcomes::journaled(dir.path());
        assert_eq!(again.all().len(), 2);
        assert_eq!(again.take("acme", "a.csv", "m1"), Some(kept("m1")));
        again.written(&kept("m2"));
        assert!(again.all().is_empty());
        assert!(!dir.path().join(JOURNAL).exists());
        assert!(KeptOutcomes::journaled(dir.path()).all().is_empty());
    }

    #[test]
    fn an_outcome_its_run_still_retries_is_left_to_that_run() {
        let kept_outcomes = KeptOutcomes::default();
        kept_outcomes.keep_retrying(kept("m"));
        assert!(kept_outcomes.all().is_empty(), "its run is on it");
        kept_outcomes.retried(&kept("m"), false);
        assert_eq!(
            kept_outcomes.all(),
            [kept("m")],
            "given up: a later pass writes it"
        );
        kept_outcomes.keep_retrying(kept("m"));
        kept_outcomes.retried(&kept("m"), true);
        assert!(kept_outcomes.all().is_empty(), "written by its run");
    }

    #[test]
    fn an_unreadable_journal_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(JOURNAL), b"{not json").unwrap();
        assert!(KeptOutcomes::journaled(dir.path()).all().is_empty());
        assert!(dir.path().join("kept-outcomes.unreadable").exists());
    }

    #[test]
    fn a_later_write_says_it_was_kept() {
        let o = kept("m").recorded_later();
        assert!(o.detail["recorded_later"].is_string());
        assert_eq!(o.detail["step"], "itm");
    }
}
