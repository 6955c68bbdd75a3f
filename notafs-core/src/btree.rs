//! A copy-on-write B-tree, generic over what its leaves hold.
//!
//! Both the file table and every file's extent tree are instances. Nodes read
//! from disk are never modified: the first change to a node copies it into
//! memory (`Child::Mem`) and hands its old block to the caller to free, so the
//! committed tree stays intact on disk until the new root is written. At
//! commit, [`Tree::write`] serialises the in-memory nodes bottom-up into fresh
//! blocks, each parent recording its children's addresses and checksums.
//!
//! Nodes split and merge by *bytes*, not entry counts, because entries have
//! variable sizes (names, checksum lists). Every entry is at most a quarter
//! of a node's payload, so a split always yields two valid nodes.
//!
//! Branch entries are `(separator key, child pointer)`; every key in child `i`
//! is `>= separator[i]` and `< separator[i+1]`. Separators are lower bounds,
//! not necessarily tight (deletions may leave a gap), which is why `floor`
//! may look one child to the left.
//!
//! Reading is driven by the height recorded in the parent (root slot or
//! inode) and the level each node declares must equal the expected one, so a
//! walk always terminates: a cycle on disk shows up as a level mismatch.
use std::fmt::Debug;

use std::sync::Arc;

use crate::inode_patch::PatchMap;
use crate::node::{self, Ptr};
use crate::{Error, Result};

pub use crate::btree_node::{in_bounds, Child, Kind, Node, MAX_HEIGHT};
use crate::btree_rec::*;
pub use crate::node_io::NodeIo;

/// A tree: its root, its height (0 = empty) and the owner recorded in its
/// nodes. Blocks of on-disk nodes replaced by a modification accumulate in
/// `freed` for the allocator.
#[derive(Debug)]
pub struct Tree<T: Kind> {
    pub root: Option<Child<T>>,
    pub height: u8,
    pub owner: u64,
    pub freed: Vec<u64>,
    /// Nodes made dirty so far (an upper bound on what a commit must write).
    pub dirty_nodes: usize,
    /// Inode patches of the root slot this tree comes from, applied to
    /// every value read (file table only; inode_patch.rs).
    pub patch: Option<Arc<PatchMap>>,
}

impl<T: Kind> Clone for Tree<T> {
    fn clone(&self) -> Self {
        Tree {
            root: self.root.clone(),
            height: self.height,
            owner: self.owner,
            freed: self.freed.clone(),
            dirty_nodes: self.dirty_nodes,
            patch: self.patch.clone(),
        }
    }
}

impl<T: Kind> Tree<T> {
    /// An empty tree.
    pub fn empty(owner: u64) -> Self {
        Tree {
            root: None,
            height: 0,
            owner,
            freed: Vec::new(),
            dirty_nodes: 0,
            patch: None,
        }
    }

    /// The tree stored at `root` with `height` levels (a null root is empty).
    pub fn from_disk(root: Ptr, height: u8, owner: u64) -> Result<Self> {
        if root.is_null() != (height == 0) || height as usize > MAX_HEIGHT {
            return Err(Error::corrupt(format!(
                "{} root {:?} with height {height}",
                node::kind_name(T::KIND),
                root
            )));
        }
        Ok(Tree {
            root: if root.is_null() {
                None
            } else {
                Some(Child::Disk(root))
            },
            height,
            owner,
            freed: Vec::new(),
            dirty_nodes: 0,
            patch: None,
        })
    }

    /// The on-disk root, if the tree has no unwritten changes.
    pub fn disk_root(&self) -> Option<Ptr> {
        match &self.root {
            None => Some(Ptr::NULL),
            Some(Child::Disk(p)) => Some(*p),
            Some(Child::Mem(_)) => None,
        }
    }

    pub fn is_dirty(&self) -> bool {
        matches!(self.root, Some(Child::Mem(_)))
    }

    /// Value stored under `k`.
    pub fn get(&self, io: &NodeIo, k: &T::K) -> Result<Option<T::V>> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        let mut v = get_rec(io, root, self.height - 1, self.owner, k)?;
        if let (Some(v), Some(p)) = (v.as_mut(), &self.patch) {
            T::patch(v, p);
        }
        Ok(v)
    }

    /// The entry with the greatest key `<= k`.
    pub fn floor(&self, io: &NodeIo, k: &T::K) -> Result<Option<(T::K, T::V)>> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        let mut kv = floor_rec(io, root, self.height - 1, self.owner, k)?;
        if let (Some((_, v)), Some(p)) = (kv.as_mut(), &self.patch) {
            T::patch(v, p);
        }
        Ok(kv)
    }

    /// Read ahead the `n` leaves from the one holding `start` (those not
    /// cached yet, in one batch): for large sequential reads, so that
    /// extent leaves do not cost one synchronous device read each. Best
    /// effort: a leaf that cannot be read ahead is read, and its error
    /// reported, by the lookup that needs it.
    pub fn prefetch_leaves(&self, io: &NodeIo, start: &T::K, n: usize) -> Result<()> {
        match &self.root {
            Some(root) if self.height >= 2 => {
                prefetch_rec(io, root, self.height - 1, self.owner, start, n)
            }
            _ => Ok(()),
        }
    }

    /// Visit entries with key `>= start` in order until `f` returns false.
    pub fn scan(
        &self,
        io: &NodeIo,
        start: Option<&T::K>,
        f: &mut dyn FnMut(&T::K, &T::V) -> Result<bool>,
    ) -> Result<()> {
        let Some(root) = &self.root else {
            return Ok(());
        };
        match &self.patch {
            None => scan_rec(io, root, self.height - 1, self.owner, start, None, None, f)?,
            Some(p) => {
                let mut g = |k: &T::K, v: &T::V| {
                    let mut v = v.clone();
                    T::patch(&mut v, p);
                    f(k, &v)
                };
                scan_rec(
                    io,
                    root,
                    self.height - 1,
                    self.owner,
                    start,
                    None,
                    None,
                    &mut g,
                )?
            }
        };
        Ok(())
    }

    /// Insert or replace; returns the previous value.
    pub fn insert(&mut self, io: &NodeIo, k: T::K, v: T::V) -> Result<Option<T::V>> {
        // The value stored is what readers must see from now on (callers
        // store values they read through the patch, and `get`, `remove` and
        // this function return patched values): the patch would otherwise
        // override it.
        let before = self.patch.clone();
        if let Some(p) = self.patch.as_mut() {
            T::forget_patch(&v, Arc::make_mut(p));
            if p.is_empty() {
                self.patch = None;
            }
        }
        let payload = io.layout.payload();
        if self.root.is_none() {
            self.root = Some(Child::Mem(Box::new(Node::Leaf(vec![(k, v)]))));
            self.height = 1;
            self.dirty_nodes += 1;
            return Ok(None);
        }
        let owner = self.owner;
        let root = self
            .root
            .as_mut()
            .ok_or_else(|| Error::Internal("root".into()))?;
        let (old, split) = insert_rec(
            io,
            root,
            self.height - 1,
            owner,
            k,
            v,
            payload,
            &mut self.freed,
            &mut self.dirty_nodes,
        )?;
        if let Some((sep, right)) = split {
            let left = self
                .root
                .take()
                .ok_or_else(|| Error::Internal("root".into()))?;
            let lkey = match &left {
                Child::Mem(n) => n.first_key().cloned(),
                Child::Disk(_) => None,
            }
            .ok_or_else(|| Error::Internal("split of a disk node".into()))?;
            self.root = Some(Child::Mem(Box::new(Node::Branch(vec![
                (lkey, left),
                (sep, right),
            ]))));
            self.height += 1;
            self.dirty_nodes += 1;
            if self.height as usize > MAX_HEIGHT {
                return Err(Error::corrupt("tree grew beyond the maximum height"));
            }
        }
        let mut old = old;
        if let (Some(o), Some(p)) = (old.as_mut(), &before) {
            T::patch(o, p);
            // The value replaced (a rename over an existing entry) is gone
            // from the tree: so is its patch.
            if let Some(cur) = self.patch.as_mut() {
                T::forget_patch(o, Arc::make_mut(cur));
                if cur.is_empty() {
                    self.patch = None;
                }
            }
        }
        Ok(old)
    }

    /// Remove `k`; returns its value. Nothing is copied when `k` is absent.
    pub fn remove(&mut self, io: &NodeIo, k: &T::K) -> Result<Option<T::V>> {
        if self.get(io, k)?.is_none() {
            return Ok(None);
        }
        let payload = io.layout.payload();
        let owner = self.owner;
        let root = self
            .root
            .as_mut()
            .ok_or_else(|| Error::Internal("root".into()))?;
        let old = remove_rec(
            io,
            root,
            self.height - 1,
            owner,
            k,
            payload,
            &mut self.freed,
            &mut self.dirty_nodes,
        )?;
        // Shrink: an empty root empties the tree; a branch with one child is
        // replaced by that child.
        loop {
            match &mut self.root {
                Some(Child::Mem(n)) if n.len() == 0 => {
                    self.root = None;
                    self.height = 0;
                    break;
                }
                Some(Child::Mem(n)) if self.height > 1 && n.len() == 1 => {
                    if let Node::Branch(e) = &mut **n {
                        let (_, c) = e.remove(0);
                        self.root = Some(c);
                        self.height -= 1;
                    } else {
                        break;
                    }
                }
                _ => break,
            }
        }
        let mut old = old;
        if let Some(p) = self.patch.as_mut() {
            if let Some(o) = old.as_mut() {
                T::patch(o, p);
                // The entry is gone: so is its patch (a rename stores the
                // patched value again under the new key).
                T::forget_patch(o, Arc::make_mut(p));
            }
            if p.is_empty() {
                self.patch = None;
            }
        }
        Ok(old)
    }

    /// Write every in-memory node bottom-up. `alloc` returns the block for a
    /// new node; encoded nodes are appended to `out` for the caller to write
    /// in as few device requests as possible.
    pub fn write(
        &mut self,
        io: &NodeIo,
        generation: u64,
        alloc: &mut dyn FnMut() -> Result<u64>,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<Ptr> {
        let owner = self.owner;
        let height = self.height;
        let p = match &mut self.root {
            None => Ptr::NULL,
            Some(c) => write_rec(io, c, height - 1, owner, generation, alloc, out)?,
        };
        self.dirty_nodes = 0;
        Ok(p)
    }

    /// Visit every node of the tree (on disk and in memory) with its level,
    /// for fsck and for reachability; `f` gets the pointer (None for memory
    /// nodes), the level and the decoded node, and the key bounds the node's
    /// keys must respect.
    pub fn walk(
        &self,
        io: &NodeIo,
        f: &mut dyn FnMut(Option<Ptr>, u8, &Node<T>, Option<&T::K>, Option<&T::K>) -> Result<()>,
    ) -> Result<()> {
        let Some(root) = &self.root else {
            return Ok(());
        };
        walk_rec(io, root, self.height - 1, self.owner, None, None, f)
    }
}

#[cfg(test)]
mod tests {
    //! The B-tree against `BTreeMap`: random inserts, replacements,
    //! removals, point and floor lookups and scans, with the tree written
    //! to the device and reloaded from its root every so often (so both
    //! in-memory and on-disk nodes, splits and merges are exercised).
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use notafs_blockdev::memory::MemoryDevice;

    use super::*;
    use crate::extent_tree::{Extent, Extents};
    use crate::{FormatOptions, Fs};

    fn rng(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    fn check(io: &NodeIo, t: &Tree<Extents>, m: &BTreeMap<u64, Extent>, s: &mut u64) {
        // Point lookups, present and absent.
        for _ in 0..8 {
            let k = rng(s) % 4000;
            assert_eq!(t.get(io, &k).unwrap(), m.get(&k).cloned(), "get {k}");
            let want = m.range(..=k).next_back().map(|(a, b)| (*a, b.clone()));
            assert_eq!(t.floor(io, &k).unwrap(), want, "floor {k}");
        }
        // A scan from a random key stops where asked.
        let from = rng(s) % 4000;
        let limit = (rng(s) % 50) as usize + 1;
        let mut got = Vec::new();
        t.scan(io, Some(&from), &mut |k, v| {
            got.push((*k, v.clone()));
            Ok(got.len() < limit)
        })
        .unwrap();
        let want: Vec<(u64, Extent)> = m
            .range(from..)
            .take(limit)
            .map(|(a, b)| (*a, b.clone()))
            .collect();
        assert_eq!(got, want, "scan from {from}");
    }

    #[test]
    fn matches_btreemap() {
        let dev = Arc::new(MemoryDevice::new(4096, 16384).unwrap());
        let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
        let io = fs.io().clone();
        let (lo, hi) = (io.layout.data_start, io.layout.data_end);
        for seed in 1..=6u64 {
            let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut t: Tree<Extents> = Tree::empty(42);
            let mut m: BTreeMap<u64, Extent> = BTreeMap::new();
            // Node blocks for written trees: a bump allocator over the
            // upper half of the data area (the filesystem never uses it).
            let mut next = lo + (hi - lo) / 2;
            for step in 0..3000u32 {
                let k = rng(&mut s) % 4000;
                if rng(&mut s) % 3 == 0 {
                    assert_eq!(t.remove(&io, &k).unwrap(), m.remove(&k), "remove {k}");
                } else {
                    // Values of varied size, so nodes split unevenly.
                    let n = 1 + (rng(&mut s) % 40) as usize;
                    let v = Extent {
                        pblock: lo + rng(&mut s) % ((hi - lo) / 2 - 64),
                        crcs: (0..n).map(|_| rng(&mut s) as u32).collect(),
                    };
                    assert_eq!(
                        t.insert(&io, k, v.clone()).unwrap(),
                        m.insert(k, v),
                        "insert {k}"
                    );
                }
                if step % 97 == 0 {
                    check(&io, &t, &m, &mut s);
                }
                if step % 500 == 499 {
                    let mut out = Vec::new();
                    let root = t
                        .write(
                            &io,
                            2,
                            &mut || {
                                next += 1;
                                assert!(next < hi, "test ran out of node blocks");
                                Ok(next)
                            },
                            &mut out,
                        )
                        .unwrap();
                    for (b, buf) in &out {
                        io.dev.write(*b, buf).unwrap();
                    }
                    t = Tree::from_disk(root, t.height, 42).unwrap();
                    check(&io, &t, &m, &mut s);
                }
            }
            // Everything, in order.
            let mut all = Vec::new();
            t.scan(&io, None, &mut |k, v| {
                all.push((*k, v.clone()));
                Ok(true)
            })
            .unwrap();
            let want: Vec<(u64, Extent)> = m.iter().map(|(a, b)| (*a, b.clone())).collect();
            assert_eq!(all, want, "seed {seed}: full scan");
            assert!(t.height >= 2, "seed {seed}: the tree never split");
        }
    }
}
