//! The same content under another name (CONTRACT §12), as planning sees
//! it: the contents claimed for the run's remitters within the window (one
//! query per run), which candidates may be copies and whose copies they
//! are, and the order in which possible copies of one run are decided.
//! Pure; the real run's guard against two copies claimed at once is the
//! claim's own statement (`content_owner`), this is what a dry run decides
//! by and what a real run's candidates are ordered by.

use super::Group;
use super::versions::newest_first;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

/// The order of copies of one run (CONTRACT §12): the first by the order of
/// section 6 (later stamp first, then the name's own order) is processed,
/// the others are held. Between `a.csv` and `a (1).csv`: `a.csv` first.
pub fn copy_order(a: &str, b: &str) -> Ordering {
    newest_first(a, b)
}

/// A candidate's place among the run's *possible copies*: the candidates of
/// one remitter with one size (only those can have equal bytes). A real run
/// claims a member only once every earlier member (by [`copy_order`]) has
/// been read, so the first copy is the one claimed first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CopyPlace {
    /// `remitter/size`: the members' shared key.
    pub class: String,
    /// 0 for the first by [`copy_order`].
    pub pos: i32,
}

/// Gives every possible copy of a run (`DUPLICATE_CONTENT=hold`) its
/// [`CopyPlace`], and takes the members of each class in their copy order:
/// they swap places in the fair-share order among themselves (the slots of
/// a remitter, so other remitters' turns are untouched), so an earlier copy
/// is always taken before a later one, and a later one waiting for it never
/// waits for a candidate nobody took.
pub fn order_copies(work: &mut [(i32, Group)]) {
    let mut classes: HashMap<(String, u64), Vec<usize>> = HashMap::new();
    for (i, (_, g)) in work.iter().enumerate() {
        classes
            .entry((g.newest.remitter.clone(), g.newest.entry.size))
            .or_default()
            .push(i);
    }
    for ((remitter, size), slots) in classes {
        if slots.len() < 2 {
            continue;
        }
        let mut members: Vec<Group> = slots.iter().map(|&i| work[i].1.clone()).collect::<Vec<_>>();
        members.sort_by(|a, b| copy_order(&a.newest.entry.name, &b.newest.entry.name));
        let class = format!("{remitter}/{size}");
        for (pos, (&slot, mut g)) in slots.iter().zip(members).enumerate() {
            g.copies = Some(CopyPlace {
                class: class.clone(),
                pos: i32::try_from(pos).unwrap_or(i32::MAX),
            });
            work[slot].1 = g;
        }
    }
}

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

    /// For candidates (remitter, name, md5) (`None` where the bytes were
    /// not read): which are copies, of what. A copy of a claimed content
    /// under the same name is no copy (the same name and bytes are the same
    /// version); the first of several candidates with one new content by
    /// [`copy_order`] is not a copy, the others are copies of it.
    pub fn verdicts(&self, candidates: &[(&str, &str, Option<&str>)]) -> Vec<Option<CopyOf>> {
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by(|&a, &b| copy_order(candidates[a].1, candidates[b].1));
        let mut first: HashMap<(&str, &str), &str> = HashMap::new();
        let mut verdicts = vec![None; candidates.len()];
        for i in order {
            let (remitter, name, md5) = candidates[i];
            let Some(md5) = md5 else { continue };
            if let Some((id, owner)) = self.by_md5.get(&(remitter.to_string(), md5.to_string())) {
                verdicts[i] = (owner != name).then(|| CopyOf::Claimed {
                    id: *id,
                    file_name: owner.clone(),
                });
                continue;
            }
            match first.get(&(remitter, md5)) {
                Some(earlier) => {
                    verdicts[i] = Some(CopyOf::InThisRun {
                        file_name: earlier.to_string(),
                    })
                }
                None => {
                    first.insert((remitter, md5), name);
                }
            }
        }
        verdicts
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
            // Two copies of a new content in one run: the first by copy
            // order goes (the name's own order: `r` before `l`), wherever
            // it stands in the list.
            (
                &[
                    ("acme", "l.csv", Some("new")),
                    ("acme", "r.csv", Some("new")),
                    ("beta", "l.csv", Some("new")),
                ],
                vec![sibling("r.csv"), None, None],
            ),
            // A later stamp goes first; a name without a stamp comes last.
            (
                &[
                    ("acme", "pay.csv", Some("n2")),
                    ("acme", "pay_20240101.csv", Some("n2")),
                    ("acme", "copy_20240102.csv", Some("n2")),
                ],
                vec![
                    sibling("copy_20240102.csv"),
                    sibling("copy_20240102.csv"),
                    None,
                ],
            ),
        ];
        for (candidates, want) in cases {
            assert_eq!(&index.verdicts(candidates), want, "{candidates:?}");
        }
    }

    fn group(remitter: &str, name: &str, size: u64) -> Group {
        let t = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
        Group {
            base_name: name.into(),
            newest: crate::scan::Candidate {
                remitter: remitter.into(),
                entry: crate::source::Entry {
                    name: name.into(),
                    is_dir: false,
                    size,
                    mtime: t,
                    ctime: t,
                },
            },
            superseded: Vec::new(),
            copies: None,
        }
    }

    #[test]
    fn possible_copies_swap_places_into_copy_order() {
        // (remitter, name, size) in the fair-share order.
        let mut work: Vec<(i32, Group)> = [
            ("acme", "a (1).csv", 10),
            ("beta", "x.csv", 10),
            ("acme", "b.csv", 7),
            ("acme", "a.csv", 10),
            ("acme", "c_20240102.csv", 10),
        ]
        .iter()
        .enumerate()
        .map(|(rank, (r, n, s))| (rank as i32, group(r, n, *s)))
        .collect();
        order_copies(&mut work);
        type Row<'a> = (i32, &'a str, Option<(&'a str, i32)>);
        let got: Vec<Row> = work
            .iter()
            .map(|(rank, g)| {
                (
                    *rank,
                    g.newest.entry.name.as_str(),
                    g.copies.as_ref().map(|c| (c.class.as_str(), c.pos)),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                // The stamped name first, then `a.csv` before `a (1).csv`,
                // in the slots acme's size-10 files had.
                (0, "c_20240102.csv", Some(("acme/10", 0))),
                (1, "x.csv", None),
                (2, "b.csv", None),
                (3, "a.csv", Some(("acme/10", 1))),
                (4, "a (1).csv", Some(("acme/10", 2))),
            ]
        );
    }
}
