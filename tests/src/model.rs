//! The in-memory model: what every committed generation must contain.
//!
//! A [`Tree`] is the user-visible content (file path -> bytes, plus the set
//! of directories). The model keeps the transaction in progress and, for
//! every generation that was committed, its tree and the positions in the
//! crash device's log at which the commit started and returned.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::workload::Op;

/// Bytes of the deterministic data pattern at `pos` for `seed`. Every write
/// of the harness writes `pattern(seed, off..off+len)`, so a byte that
/// shows up in the wrong place or the wrong generation is recognisable.
pub fn pattern_byte(seed: u32, pos: u64) -> u8 {
    let x = (pos as u32)
        .wrapping_mul(0x9E37_79B1)
        .wrapping_add(seed.wrapping_mul(0x85EB_CA77))
        .rotate_left(13)
        ^ seed;
    (x ^ (x >> 16) ^ (x >> 8)) as u8 | 1
}

/// `len` pattern bytes starting at `pos`.
pub fn pattern(seed: u32, pos: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| pattern_byte(seed, pos + i))
        .collect()
}

/// User-visible content of one generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tree {
    pub files: BTreeMap<String, Vec<u8>>,
    pub dirs: BTreeSet<String>,
}

impl Tree {
    fn parent_ok(&self, p: &str) -> bool {
        match p.rsplit_once('/') {
            None => true,
            Some((d, _)) => self.dirs.contains(d),
        }
    }

    fn exists(&self, p: &str) -> bool {
        self.files.contains_key(p) || self.dirs.contains(p)
    }

    fn dir_empty(&self, d: &str) -> bool {
        let pre = format!("{d}/");
        !self.files.keys().any(|k| k.starts_with(&pre))
            && !self.dirs.iter().any(|k| k.starts_with(&pre))
    }

    /// A one-line summary: names and sizes.
    pub fn summary(&self) -> String {
        let mut v: Vec<String> = self.dirs.iter().map(|d| format!("{d}/")).collect();
        v.extend(
            self.files
                .iter()
                .map(|(k, b)| format!("{k}:{}B#{:08x}", b.len(), fnv(b))),
        );
        format!("{{{}}}", v.join(", "))
    }

    /// Describe how `other` differs from `self` (first few differences).
    pub fn diff(&self, other: &Tree) -> String {
        let mut out = Vec::new();
        for (k, v) in &self.files {
            match other.files.get(k) {
                None => out.push(format!("{k} missing")),
                Some(w) if w.len() != v.len() => {
                    out.push(format!("{k}: size {} instead of {}", w.len(), v.len()))
                }
                Some(w) if w != v => {
                    let i = v
                        .iter()
                        .zip(w.iter())
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    out.push(format!("{k}: bytes differ from offset {i}"))
                }
                _ => {}
            }
        }
        for k in other.files.keys() {
            if !self.files.contains_key(k) {
                out.push(format!("{k} unexpected"));
            }
        }
        for d in self.dirs.symmetric_difference(&other.dirs) {
            out.push(format!("directory {d} differs"));
        }
        out.truncate(6);
        out.join("; ")
    }
}

/// FNV-1a, for short content fingerprints in messages.
pub fn fnv(b: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for x in b {
        h = (h ^ *x as u32).wrapping_mul(0x0100_0193);
    }
    h
}

/// One call of `commit` (or of a repair, which commits too).
#[derive(Clone, Debug)]
pub struct CommitRec {
    /// The generation it produced (or would have produced).
    pub generation: u64,
    /// `CrashDevice::ops()` when the call started.
    pub start_op: usize,
    /// `CrashDevice::ops()` when it returned Ok; None if it failed.
    pub end_op: Option<usize>,
    /// What it was (commit, repair).
    pub what: &'static str,
}

/// Everything the oracle needs about a run.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Every generation committed (or inherited from the base image).
    pub gens: BTreeMap<u64, Arc<Tree>>,
    /// The newest generation of the base image (durable before the log).
    pub base_generation: u64,
    /// Commits made during the logged run, in order.
    pub commits: Vec<CommitRec>,
    /// Length of the log at the end of the run.
    pub total_ops: usize,
    /// Root slots of the filesystem.
    pub root_slots: u32,
    /// Generations a repair rolled back (no longer required to be
    /// retained; if still listed as retained they must still read right).
    pub dropped: std::collections::BTreeSet<u64>,
    /// A `Format` op of the run (mkfs workloads): where it sits in the log.
    pub format: Option<CommitRec>,
    /// The generations of the filesystem the format replaced.
    pub old_gens: BTreeMap<u64, Arc<Tree>>,
}

impl History {
    /// Generations a crash image standing for every cut in `cut..=last_cut`
    /// may show: at least the last commit that returned Ok by `last_cut`, at
    /// most the last commit that had issued a request by `cut`.
    pub fn allowed(&self, cut: usize, last_cut: usize) -> (u64, u64) {
        let mut lo = self.base_generation;
        let mut hi = self.base_generation;
        for c in &self.commits {
            if let Some(e) = c.end_op {
                if e <= last_cut {
                    lo = lo.max(c.generation);
                }
                if c.start_op < cut {
                    hi = hi.max(c.generation);
                }
            }
        }
        (lo, hi)
    }
}

/// The model's live state: the transaction in progress over the last
/// committed generation.
#[derive(Clone, Debug)]
pub struct Model {
    pub txn: Tree,
    pub generation: u64,
    pub hist: History,
}

impl Model {
    pub fn new(generation: u64, tree: Tree, root_slots: u32) -> Model {
        let mut hist = History {
            base_generation: generation,
            root_slots,
            ..History::default()
        };
        hist.gens.insert(generation, Arc::new(tree.clone()));
        Model {
            txn: tree,
            generation,
            hist,
        }
    }

    /// The committed tree of the current generation.
    pub fn committed(&self) -> Arc<Tree> {
        self.hist.gens[&self.generation].clone()
    }

    /// Whether `op` is valid in the current transaction (invalid ops are
    /// skipped by the executor, so any subsequence of a workload runs).
    pub fn valid(&self, op: &Op) -> bool {
        let t = &self.txn;
        match op {
            Op::Create(p) | Op::Mkdir(p) => !t.exists(p) && t.parent_ok(p),
            Op::Write { path, .. } | Op::Append { path, .. } | Op::SetLen { path, .. } => {
                t.files.contains_key(path)
            }
            Op::Rename { from, to } => {
                t.files.contains_key(from) && !t.dirs.contains(to) && t.parent_ok(to)
            }
            Op::Remove(p) => t.files.contains_key(p) || (t.dirs.contains(p) && t.dir_empty(p)),
            Op::Repair { back } => {
                let target = self.generation.saturating_sub(*back as u64);
                *back > 0
                    && self.hist.gens.contains_key(&target)
                    && target + self.hist.root_slots as u64 > self.generation
            }
            Op::Commit | Op::Abort | Op::Reopen | Op::Trim | Op::Format { .. } => true,
        }
    }

    /// Apply a valid non-commit op to the transaction.
    pub fn apply(&mut self, op: &Op) {
        let t = &mut self.txn;
        match op {
            Op::Create(p) => {
                t.files.insert(p.clone(), Vec::new());
            }
            Op::Mkdir(p) => {
                t.dirs.insert(p.clone());
            }
            Op::Write {
                path,
                off,
                len,
                seed,
            } => {
                let f = t.files.get_mut(path).expect("valid");
                let end = *off as usize + *len as usize;
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[*off as usize..end].copy_from_slice(&pattern(*seed, *off, *len as usize));
            }
            Op::Append { path, len, seed } => {
                let f = t.files.get_mut(path).expect("valid");
                let off = f.len() as u64;
                f.extend_from_slice(&pattern(*seed, off, *len as usize));
            }
            Op::SetLen { path, size } => {
                t.files
                    .get_mut(path)
                    .expect("valid")
                    .resize(*size as usize, 0);
            }
            Op::Rename { from, to } => {
                if from != to {
                    let v = t.files.remove(from).expect("valid");
                    t.files.insert(to.clone(), v);
                }
            }
            Op::Remove(p) => {
                if t.files.remove(p).is_none() {
                    t.dirs.remove(p);
                }
            }
            Op::Abort | Op::Reopen => self.revert(),
            Op::Commit | Op::Repair { .. } | Op::Trim | Op::Format { .. } => {}
        }
    }

    /// Drop the transaction.
    pub fn revert(&mut self) {
        self.txn = (*self.committed()).clone();
    }

    /// Record a successful commit of the transaction as `generation`.
    pub fn commit(&mut self, generation: u64, start_op: usize, end_op: usize, what: &'static str) {
        self.hist
            .gens
            .insert(generation, Arc::new(self.txn.clone()));
        self.generation = generation;
        self.hist.commits.push(CommitRec {
            generation,
            start_op,
            end_op: Some(end_op),
            what,
        });
    }

    /// Record the sealing slot a handle writes at close after a one-flush
    /// commit: a new generation holding the committed tree.
    pub fn seal(&mut self, generation: u64, start_op: usize, end_op: usize) {
        let tree = self.committed();
        self.hist.gens.insert(generation, tree);
        self.generation = generation;
        self.hist.commits.push(CommitRec {
            generation,
            start_op,
            end_op: Some(end_op),
            what: "seal",
        });
    }

    /// The device was formatted anew (log positions `start_op..end_op`):
    /// the history so far becomes the old filesystem's, the new one starts
    /// empty at generation 1.
    pub fn formatted(&mut self, root_slots: u32, start_op: usize, end_op: Option<usize>) {
        self.hist.old_gens = std::mem::take(&mut self.hist.gens);
        self.hist.commits.clear();
        self.hist.base_generation = 1;
        self.hist.root_slots = root_slots;
        self.hist.format = Some(CommitRec {
            generation: 1,
            start_op,
            end_op,
            what: "format",
        });
        self.txn = Tree::default();
        self.generation = 1;
        self.hist.gens.insert(1, Arc::new(Tree::default()));
    }

    /// Record a commit that failed (nothing of it may become visible).
    pub fn failed_commit(&mut self, start_op: usize) {
        self.hist.commits.push(CommitRec {
            generation: self.generation + 1,
            start_op,
            end_op: None,
            what: "failed commit",
        });
    }
}
