//! The same content under another name (CONTRACT §12), as planning sees
//! it: the contents claimed for the run's remitters within the window (one
//! query per run), and which candidates may be copies and whose copies
//! they are. Pure; the real run's guard against two copies claimed at once
//! is the claim's own statement (`content_owner`), this is what a dry run
//! decides by.

use std::collections::{HashMap, HashSet};

/// A content claimed for a remitter within the window: its owner file.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KnownContent {
    /// Remitter folder.
    pub remitter: String,
    /// Hex MD5.
    pub md5: String,
    /// Bytes.
    pub size: i64,
    /// The owner's `files.id`.
    pub file_id: i64,
    /// The owner's name.
    pub file_name: String,
}

/// What a copy is a copy of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOf {
    /// A file claimed before (within the window).
    Claimed {
        /// Its `files.id`.
        id: i64,
        /// Its name.
        file_name: String,
    },
    /// Another candidate of the same run, first in the run's order.
    InThisRun {
        /// Its name.
        file_name: String,
    },
}

/// The known contents, by remitter: what a candidate is checked against.
#[derive(Debug, Default)]
pub struct ContentIndex {
    by_md5: HashMap<(String, String), (i64, String)>,
    sizes: HashSet<(String, i64)>,
}

impl ContentIndex {
    /// The index of `known`.
    pub fn new(known: Vec<KnownContent>) -> Self {
        let mut index = Self::default();
        for k in known {
            index.sizes.insert((k.remitter.clone(), k.size));
            index
                .by_md5
                .insert((k.remitter, k.md5), (k.file_id, k.file_name));
        }
        index
    }

    /// The candidates (remitter, name, size) whose bytes must be read to
    /// know whether they are copies: a size that a known content of the
    /// remitter has, or that another candidate of the remitter has. Any
    /// other candidate cannot be a copy, so it is never read.
    pub fn to_read<'a>(&self, candidates: &[(&'a str, &'a str, u64)]) -> Vec<bool> {
        let mut seen: HashMap<(&str, u64), usize> = HashMap::new();
        for (remitter, _, size) in candidates {
            *seen.entry((remitter, *size)).or_default() += 1;
        }
        candidates
            .iter()
            .map(|(remitter, _, size)| {
                seen[&(*remitter, *size)] > 1
                    || self.sizes.contains(&(remitter.to_string(), *size as i64))
            })
            .collect()
    }

    /// For candidates (remitter, name, md5) in the run's order (`None`
    /// where the bytes were not read): which are copies, of what. A copy
    /// of a claimed content under the same name is no copy (the same name
    /// and bytes are the same version); the first of several candidates
    /// with one new content is not a copy, the others are copies of it.
    pub fn verdicts(&self, candidates: &[(&str, &str, Option<&str>)]) -> Vec<Option<CopyOf>> {
        let mut first: HashMap<(&str, &str), &str> = HashMap::new();
        candidates
            .iter()
            .map(|(remitter, name, md5)| {
                let md5 = (*md5)?;
                if let Some((id, owner)) = self.by_md5.get(&(remitter.to_string(), md5.to_string()))
                {
                    return (owner != name).then(|| CopyOf::Claimed {
                        id: *id,
                        file_name: owner.clone(),
                    });
                }
                match first.get(&(*remitter, md5)) {
                    Some(earlier) => Some(CopyOf::InThisRun {
                        file_name: earlier.to_string(),
                    }),
                    None => {
                        first.insert((remitter, md5), name);
                        None
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(remitter: &str, md5: &str, size: i64, id: i64, name: &str) -> KnownContent {
        KnownContent {
            remitter: remitter.into(),
            md5: md5.into(),
            size,
            file_id: id,
            file_name: name.into(),
        }
    }

    #[test]
    fn only_candidates_that_can_be_copies_are_read() {
        let index = ContentIndex::new(vec![known("acme", "m1", 10, 1, "a.csv")]);
        let c = [
            ("acme", "a (1).csv", 10), // the size of a known content
            ("acme", "b.csv", 11),     // unique: never read
            ("beta", "a.csv", 10),     // another remitter's size
            ("beta", "x.csv", 7),      // two candidates of one size
            ("beta", "y.csv", 7),
        ];
        assert_eq!(index.to_read(&c), [true, false, false, true, true]);
    }

    #[test]
    fn verdicts() {
        let index = ContentIndex::new(vec![
            known("acme", "m1", 10, 1, "a.csv"),
            known("beta", "m2", 10, 2, "b.csv"),
        ]);
        let claimed = |id, name: &str| {
            Some(CopyOf::Claimed {
                id,
                file_name: name.into(),
            })
        };
        let sibling = |name: &str| {
            Some(CopyOf::InThisRun {
                file_name: name.into(),
            })
        };
        type Case<'a> = (
            &'a [(&'a str, &'a str, Option<&'a str>)],
            Vec<Option<CopyOf>>,
        );
        let cases: &[Case] = &[
            // A copy of a claimed content under another name.
            (
                &[("acme", "a (1).csv", Some("m1"))],
                vec![claimed(1, "a.csv")],
            ),
            // The same name: the same version, not a copy.
            (&[("acme", "a.csv", Some("m1"))], vec![None]),
            // Another remitter's content is not this remitter's.
            (&[("beta", "a.csv", Some("m1"))], vec![None]),
            // Not read: no verdict.
            (&[("acme", "z.csv", None)], vec![None]),
            // Two copies of a new content in one run: the first goes.
            (
                &[
                    ("acme", "l.csv", Some("new")),
                    ("acme", "r.csv", Some("new")),
                    ("beta", "l.csv", Some("new")),
                ],
                vec![None, sibling("l.csv"), None],
            ),
        ];
        for (candidates, want) in cases {
            assert_eq!(&index.verdicts(candidates), want, "{candidates:?}");
        }
    }
}
