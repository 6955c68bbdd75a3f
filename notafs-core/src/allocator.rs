//! Free space: extents of free blocks, persisted copy-on-write as a list of
//! nodes written fresh by every commit.
//!
//! The one rule that makes the root swap safe: **a block freed by commit `g`
//! is not reused before commit `g + N`** (N = root slots). Commit `c`
//! overwrites the slot of generation `c - N`, so while it runs, generations
//! `c - N .. c - 1` are all still on disk and must stay intact; a block freed
//! by `g` was last referenced by `g - 1`, so it is safe exactly when
//! `g - 1 < c - N`. Blocks allocated and freed within one transaction were
//! never referenced by any root and are reusable at once. Readers holding a
//! snapshot pin their generation and delay reuse further.
//!
//! Free-space list node (kind 3):
//! ```text
//! offset  size  field
//! ------  ----  -----------------------------------------------------------
//!      0    32  node header (count = entries in this node)
//!     32     8  next node: block (0 = last)
//!     40     4  next node: CRC-32C
//!     44     4  reserved (0)
//!     48  24*n  entries: start u64 | length u64 | tag u64
//!               tag 0 = free; tag g > 0 = freed by commit g, reusable from
//!               commit g + N on
//! ```
//! The list is ordered by (tag, start); extents never overlap.
use std::collections::BTreeMap;

use crate::node::{self, Header, Layout, Ptr, KIND_FREELIST, NODE_HEADER};
use crate::{Error, Result};

/// A set of block ranges, merged on insert. It also counts its *units*:
/// how many disjoint runs of `unit` contiguous blocks its extents hold
/// (sum of `len / unit`), kept up to date by every insert and remove, so
/// that the allocator knows in O(1) how many tree nodes of `unit` blocks
/// the free space can still take (see [`Allocator::alloc`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentSet {
    map: BTreeMap<u64, u64>,
    total: u64,
    /// Blocks per unit (0 counts as 1).
    unit: u64,
    /// Sum over the extents of `len / unit`.
    units: u64,
}

impl ExtentSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Blocks in the set.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Number of extents.
    pub fn extents(&self) -> usize {
        self.map.len()
    }

    /// Blocks per unit counted by [`ExtentSet::units`] (1 unless set).
    pub fn unit(&self) -> u64 {
        self.unit.max(1)
    }

    /// Count units of `unit` blocks from now on (O(extents) when it
    /// changes, nothing otherwise).
    pub fn set_unit(&mut self, unit: u64) {
        let unit = unit.max(1);
        if unit != self.unit() || self.unit == 0 {
            self.unit = unit;
            self.units = self.map.values().map(|l| l / unit).sum();
        }
    }

    /// Disjoint runs of `unit` contiguous blocks the set holds: the sum
    /// over its extents of `len / unit`.
    pub fn units(&self) -> u64 {
        self.units
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(s, l)| (*s, *l))
    }

    /// Whether any block of `[start, start+len)` is in the set.
    pub fn overlaps(&self, start: u64, len: u64) -> bool {
        let end = start + len;
        if let Some((s, l)) = self.map.range(..end).next_back() {
            return s + l > start;
        }
        false
    }

    /// Whether all of `[start, start+len)` is in the set.
    pub fn contains(&self, start: u64, len: u64) -> bool {
        match self.map.range(..=start).next_back() {
            Some((s, l)) => s + l >= start + len,
            None => false,
        }
    }

    /// Add a range; it must not overlap the set.
    pub fn insert(&mut self, start: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.overlaps(start, len) {
            return Err(Error::corrupt(format!("blocks {start}+{len} freed twice")));
        }
        let u = self.unit();
        let mut s = start;
        let mut l = len;
        if let Some((&ps, &pl)) = self.map.range(..start).next_back() {
            if ps + pl == start {
                self.map.remove(&ps);
                self.units -= pl / u;
                s = ps;
                l += pl;
            }
        }
        if let Some(&nl) = self.map.get(&(start + len)) {
            self.map.remove(&(start + len));
            self.units -= nl / u;
            l += nl;
        }
        self.map.insert(s, l);
        self.units += l / u;
        self.total += len;
        Ok(())
    }

    /// Remove a range that is entirely in the set.
    pub fn remove(&mut self, start: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (s, l) = match self.map.range(..=start).next_back() {
            Some((s, l)) if s + l >= start + len => (*s, *l),
            _ => return Err(Error::corrupt(format!("blocks {start}+{len} are not free"))),
        };
        let u = self.unit();
        self.map.remove(&s);
        self.units -= l / u;
        if s < start {
            self.map.insert(s, start - s);
            self.units += (start - s) / u;
        }
        if s + l > start + len {
            self.map.insert(start + len, s + l - start - len);
            self.units += (s + l - start - len) / u;
        }
        self.total -= len;
        Ok(())
    }

    /// Ranges of `[start, start+len)` that are in the set.
    pub fn intersect(&self, start: u64, len: u64) -> Vec<(u64, u64)> {
        let end = start + len;
        let mut out = Vec::new();
        let first = self
            .map
            .range(..=start)
            .next_back()
            .map(|(s, _)| *s)
            .unwrap_or(start);
        for (&s, &l) in self.map.range(first..end) {
            let a = s.max(start);
            let b = (s + l).min(end);
            if a < b {
                out.push((a, b - a));
            }
        }
        out
    }

    /// An extent of at least `n` blocks among the first `FIND_SCAN`
    /// extents from `from`, else among the first `FIND_SCAN` of the set: a
    /// bounded look, so that free space made of millions of small holes
    /// costs each allocation a few microseconds, not a scan of all of them
    /// (the caller falls back to first fit).
    fn find_at_least(&self, n: u64, from: u64) -> Option<(u64, u64)> {
        const FIND_SCAN: usize = 1024;
        self.map
            .range(from..)
            .take(FIND_SCAN)
            .chain(self.map.iter().take(FIND_SCAN))
            .find(|(_, l)| **l >= n)
            .map(|(s, l)| (*s, *l))
    }

    /// The first extent of at least `n` blocks, else the largest one.
    fn find(&self, n: u64) -> Option<(u64, u64)> {
        let mut best: Option<(u64, u64)> = None;
        for (&s, &l) in &self.map {
            if l >= n {
                return Some((s, l));
            }
            if best.is_none_or(|(_, bl)| l > bl) {
                best = Some((s, l));
            }
        }
        best
    }
}

/// The allocator state of one transaction.
#[derive(Clone, Debug)]
pub struct Allocator {
    /// Reusable now.
    pub free: ExtentSet,
    /// Freed by an earlier commit (key), not yet reusable.
    pub pending: BTreeMap<u64, ExtentSet>,
    /// Allocated by this transaction (not referenced by any root).
    pub fresh: ExtentSet,
    /// Committed blocks freed by this transaction.
    pub freed: ExtentSet,
    /// Blocks only a commit may use: what it may still need, in whole
    /// tree nodes of `free.unit()` blocks (the filesystem sets the unit to
    /// its node size; fs.rs `commit_reserve`).
    ///
    /// **Invariant** (what makes an accepted write's commit succeed): an
    /// allocation with `metadata` false (data, or nodes written early)
    /// never leaves fewer than `reserve` free blocks, nor lowers
    /// `free.units()` (the places a node fits in) below
    /// `reserve.div_ceil(unit)`: it is shortened to what keeps them, or
    /// refused with NoSpace (`reserve_cap`). Freeing never removes a
    /// place, and a node allocation (`alloc_exact(unit, true)`, first fit)
    /// takes exactly one. So once a check has found the places the commit
    /// needs, they stay free whatever data is allocated before the commit,
    /// and the commit's nodes all find one. Counting blocks alone is not
    /// enough with nodes of several blocks: data split the last extents a
    /// node fits in, and commits failed after the writes were accepted.
    pub reserve: u64,
    /// Where the last data allocation without a usable hint ended: the
    /// next one continues there (in memory only; 0 = none yet).
    pub data_cursor: u64,
    /// Data allocations of at least this many blocks that start a new run
    /// (no usable hint, not at the cursor) start on a multiple of it when
    /// a free extent allows: the device's preferred I/O size in blocks
    /// (`Geometry::preferred_io / block_size`), [`DEFAULT_DATA_ALIGN`]
    /// unless set otherwise. 0 or 1: no alignment. In memory only.
    pub data_align: u64,
}

/// Data allocations without a usable hint prefer free extents of at least
/// this many blocks over smaller holes (which tree nodes, allocated first
/// fit, reuse). So the blocks one commit writes form a few long runs, not
/// one run per hole: one write request per run, and a commit log of runs
/// that fits in the root slot (root_ring.rs), hence one flush per commit.
pub const DATA_RUN_PREF: u64 = 64;

/// [`Allocator::data_align`] until the device's is set: 256 blocks, i.e.
/// 1 MiB with 4 KiB blocks (the block size mkfs and the backends default
/// to, and the `preferred_io` every backend reports by default). Device
/// block `b` is at byte `b * block_size`, so a run starting on a multiple
/// of it starts on a 1 MiB boundary of the device. Measured: 1 MiB direct
/// writes at +40 KiB from a 1 MiB boundary were 20-31 % slower than
/// aligned ones on the loop device of docs/BENCHMARKS.md.
pub const DEFAULT_DATA_ALIGN: u64 = 256;

impl Allocator {
    /// An allocator with nothing free (read-only opens whose free list did
    /// not verify).
    pub fn empty() -> Allocator {
        Allocator {
            free: ExtentSet::new(),
            pending: BTreeMap::new(),
            fresh: ExtentSet::new(),
            freed: ExtentSet::new(),
            reserve: 0,
            data_cursor: 0,
            data_align: DEFAULT_DATA_ALIGN,
        }
    }

    /// Where a data allocation of `want` blocks that starts a new run in
    /// free extent `(s, l)` should start: on the next multiple of
    /// `data_align` when the allocation is at least that large and the
    /// extent holds all of it from there (or, for an extent too short for
    /// all of it anyway, a whole aligned unit); else in the first extent
    /// of the bounded search from `from` that does; else at `s` as before
    /// (space is too fragmented for alignment to be worth a scan).
    /// Returns the start and the free blocks from it.
    fn aligned_start(&self, s: u64, l: u64, want: u64, from: u64) -> (u64, u64) {
        let a = self.data_align;
        if a <= 1 || want < a {
            return (s, l);
        }
        let up = |x: u64| x.div_ceil(a).saturating_mul(a);
        let s2 = up(s);
        let room = (s + l).saturating_sub(s2);
        if room >= want || (l < want && room >= a) {
            return (s2, room);
        }
        match self.free.find_at_least(want.saturating_add(a - 1), from) {
            Some((fs, fl)) => {
                let s2 = up(fs);
                (s2, fs + fl - s2)
            }
            None => (s, l),
        }
    }

    /// Blocks neither free nor pending.
    pub fn pending_total(&self) -> u64 {
        self.pending.values().map(|s| s.total()).sum::<u64>() + self.freed.total()
    }

    /// Move pending extents freed by commits `<= upto` to the free set;
    /// returns the extents released.
    pub fn release(&mut self, upto: u64) -> Result<Vec<(u64, u64)>> {
        let keep = self.pending.split_off(&(upto + 1));
        let ready = std::mem::replace(&mut self.pending, keep);
        let mut out = Vec::new();
        for (_, set) in ready {
            for (s, l) in set.iter() {
                self.free.insert(s, l)?;
                out.push((s, l));
            }
        }
        Ok(out)
    }

    /// Allocate up to `n` blocks, preferring to start at `hint` (so appends
    /// continue their last extent), else where the last such allocation
    /// ended, else the first extent of at least `max(n, DATA_RUN_PREF)`
    /// blocks, else the first that holds all `n`, else the largest.
    /// `metadata` may dip into the commit reserve.
    pub fn alloc(&mut self, n: u64, hint: Option<u64>, metadata: bool) -> Result<(u64, u64)> {
        let avail = if metadata {
            self.free.total()
        } else {
            self.free.total().saturating_sub(self.reserve)
        };
        if n == 0 || avail == 0 {
            return Err(Error::NoSpace);
        }
        let want = n.min(avail);
        let mut pick = None;
        if let Some(h) = hint {
            if let Some((s, l)) = self.free.map.range(..=h).next_back().map(|(s, l)| (*s, *l)) {
                if s + l > h {
                    pick = Some((h, want.min(s + l - h)));
                }
            }
        }
        let (start, len) = match pick {
            Some(p) => p,
            None => {
                let c = self.data_cursor;
                let at_cursor = self
                    .free
                    .map
                    .range(..=c)
                    .next_back()
                    .map(|(s, l)| (*s, *l))
                    .filter(|(s, l)| c > 0 && s + l >= c + want.min(DATA_RUN_PREF));
                let (s, l) = match at_cursor {
                    // Continuing the cursor's run keeps one commit's data
                    // in few runs (one request each): not realigned.
                    Some((s, l)) => (c, s + l - c),
                    None => {
                        let (s, l) = match self.free.find_at_least(want.max(DATA_RUN_PREF), c) {
                            Some(e) => e,
                            None => self.free.find(want).ok_or(Error::NoSpace)?,
                        };
                        self.aligned_start(s, l, want, c)
                    }
                };
                let got = want.min(l);
                self.data_cursor = s + got;
                (s, got)
            }
        };
        let len = self.reserve_cap(start, len, metadata)?;
        self.free.remove(start, len)?;
        self.fresh.insert(start, len)?;
        Ok((start, len))
    }

    /// Allocate exactly `n` contiguous blocks (tree nodes).
    pub fn alloc_exact(&mut self, n: u64, metadata: bool) -> Result<u64> {
        let avail = if metadata {
            self.free.total()
        } else {
            self.free.total().saturating_sub(self.reserve)
        };
        if avail < n {
            return Err(Error::NoSpace);
        }
        let start = self
            .free
            .map
            .iter()
            .find(|(_, l)| **l >= n)
            .map(|(s, _)| *s)
            .ok_or(Error::NoSpace)?;
        if self.reserve_cap(start, n, metadata)? < n {
            return Err(Error::NoSpace);
        }
        self.free.remove(start, n)?;
        self.fresh.insert(start, n)?;
        Ok(start)
    }

    /// How many blocks of the free range `[start, start+len)` an allocation
    /// may take from `start` and keep the commit reserve's node places
    /// (the invariant at `reserve`): all of them for `metadata`; else the
    /// longest prefix that leaves `free.units() >= reserve.div_ceil(unit)`
    /// (or, if the places are already short, that removes none), NoSpace
    /// if that is nothing.
    fn reserve_cap(&self, start: u64, len: u64, metadata: bool) -> Result<u64> {
        if metadata {
            return Ok(len);
        }
        let u = self.free.unit();
        let Some((s, l)) = self
            .free
            .map
            .range(..=start)
            .next_back()
            .map(|(s, l)| (*s, *l))
            .filter(|(s, l)| s + l >= start + len)
        else {
            // Not free: `remove` reports it.
            return Ok(len);
        };
        // Taking k blocks at offset a of the extent leaves it a/u + (l-a-k)/u
        // places of its l/u: it may lose `spare`, so the part after the
        // allocation must keep `keep` places, i.e. l-a-k >= keep*u.
        let a = start - s;
        let spare = self.free.units().saturating_sub(self.reserve.div_ceil(u));
        let keep = (l / u - a / u).saturating_sub(spare);
        let got = len.min((l - a).saturating_sub(keep * u));
        if got == 0 {
            return Err(Error::NoSpace);
        }
        Ok(got)
    }

    /// Free `[start, start+len)`: fresh blocks become free at once, committed
    /// ones wait in `freed` for this commit's generation.
    pub fn free(&mut self, start: u64, len: u64) -> Result<()> {
        // A block that is already free or pending cannot be referenced: the
        // image claims it twice. Freeing it again would count it twice and
        // let two owners allocate it.
        if self.free.overlaps(start, len) || self.pending.values().any(|p| p.overlaps(start, len)) {
            return Err(Error::corrupt(format!(
                "blocks {start}+{len} are referenced but listed as free"
            )));
        }
        let fresh_parts = self.fresh.intersect(start, len);
        let mut cursor = start;
        for (s, l) in fresh_parts {
            if s > cursor {
                self.freed.insert(cursor, s - cursor)?;
            }
            self.fresh.remove(s, l)?;
            self.free.insert(s, l)?;
            cursor = s + l;
        }
        if cursor < start + len {
            self.freed.insert(cursor, start + len - cursor)?;
        }
        Ok(())
    }
}

/// Bytes of the free-list node body before the entries.
const LIST_PREFIX: usize = 16;
const ENTRY_LEN: usize = 24;

/// Entries that fit in one free-list node.
pub fn entries_per_node(layout: &Layout) -> usize {
    (layout.node_size as usize - NODE_HEADER - LIST_PREFIX) / ENTRY_LEN
}

/// All (start, len, tag) entries the list for this state must hold, with
/// this transaction's frees tagged `generation`.
pub fn list_entries(a: &Allocator, generation: u64) -> Vec<(u64, u64, u64)> {
    let mut v: Vec<(u64, u64, u64)> = a.free.iter().map(|(s, l)| (s, l, 0)).collect();
    for (g, set) in &a.pending {
        v.extend(set.iter().map(|(s, l)| (s, l, *g)));
    }
    v.extend(a.freed.iter().map(|(s, l)| (s, l, generation)));
    v
}

/// Encode the list into nodes at `blocks` (already allocated), writing from
/// the tail so each node can carry its successor's checksum. Returns the head.
pub fn encode_list(
    layout: &Layout,
    entries: &[(u64, u64, u64)],
    blocks: &[u64],
    generation: u64,
    out: &mut Vec<(u64, Vec<u8>)>,
) -> Result<Ptr> {
    let per = entries_per_node(layout);
    if blocks.len() * per < entries.len() {
        return Err(Error::Internal("free list does not fit".into()));
    }
    let mut next = Ptr::NULL;
    for (i, &block) in blocks.iter().enumerate().rev() {
        let chunk: &[(u64, u64, u64)] = entries
            .get(i * per..entries.len().min((i + 1) * per))
            .unwrap_or(&[]);
        let mut buf = vec![0u8; layout.node_size as usize];
        let h = Header {
            kind: KIND_FREELIST,
            level: 0,
            count: chunk.len() as u16,
            address: block,
            generation,
            owner: 0,
        };
        node::write_header(&mut buf, &h);
        let mut o = NODE_HEADER;
        buf[o..o + 8].copy_from_slice(&next.block.to_le_bytes());
        buf[o + 8..o + 12].copy_from_slice(&next.crc.to_le_bytes());
        o += LIST_PREFIX;
        for (s, l, t) in chunk {
            buf[o..o + 8].copy_from_slice(&s.to_le_bytes());
            buf[o + 8..o + 16].copy_from_slice(&l.to_le_bytes());
            buf[o + 16..o + 24].copy_from_slice(&t.to_le_bytes());
            o += ENTRY_LEN;
        }
        next = Ptr {
            block,
            crc: crate::checksum::crc(&buf),
        };
        out.push((block, buf));
    }
    Ok(next)
}

/// Decoded free-space list of a generation: its nodes and entries.
#[derive(Default)]
pub struct FreeList {
    pub nodes: Vec<u64>,
    /// The generation's free space: the list's entries with the slot's
    /// delta applied.
    pub entries: Vec<(u64, u64, u64)>,
    /// The list's own entries (equal to `entries` without a delta).
    pub base: Vec<(u64, u64, u64)>,
}

/// The free space of the generation `slot` names: its list, read and
/// validated, with the slot's free-space delta (validated) applied.
pub fn read_slot_list(
    io: &crate::btree::NodeIo,
    slot: &crate::root_ring::RootSlot,
) -> Result<FreeList> {
    let mut list = read_list(io, slot.freelist, slot.freelist_nodes, slot.generation)?;
    let delta = slot.delta.entries();
    if !delta.is_empty() {
        // The base must be a valid list on its own: a delta could hide
        // overlapping entries, which the next delta would then treat
        // differently from this one.
        let mut all = ExtentSet::new();
        for &(s, l, _) in &list.base {
            all.insert(s, l)
                .map_err(|_| Error::corrupt(format!("free extent {s}+{l} overlaps another")))?;
        }
        check_delta(&io.layout, delta, slot.generation)?;
        list.entries = apply_delta(&list.base, delta);
    }
    // The list's own nodes are in use while a slot names them. (Entries
    // overlapping each other are reported by `allocator_from` at open and
    // by the check's accounting, with their own message.)
    let nb = io.layout.node_blocks;
    let mut free = ExtentSet::new();
    for &(s, l, _) in &list.entries {
        let _ = free.insert(s, l);
    }
    if let Some(b) = list.nodes.iter().find(|b| free.overlaps(**b, nb)) {
        return Err(Error::corrupt(format!(
            "free-space list node {b} is listed as free"
        )));
    }
    Ok(list)
}

/// Read and validate the free-space list starting at `head` (`count` nodes).
pub fn read_list(
    io: &crate::btree::NodeIo,
    head: Ptr,
    count: u32,
    generation: u64,
) -> Result<FreeList> {
    let layout = &io.layout;
    let max_nodes = (layout.data_end - layout.data_start) / layout.node_blocks;
    if count as u64 > max_nodes {
        return Err(Error::corrupt(format!(
            "free list of {count} nodes cannot fit"
        )));
    }
    // The count is only a claim until the nodes are read: it must not size
    // an allocation (u32::MAX nodes would ask for 32 GiB up front).
    let mut nodes = Vec::new();
    let mut entries = Vec::new();
    let mut ptr = head;
    // Counting down from the declared length bounds the walk: a cycle
    // cannot make it loop.
    for i in 0..count {
        if ptr.is_null() {
            return Err(Error::corrupt(format!(
                "free list ends after {i} of {count} nodes"
            )));
        }
        let (h, data) = io.read_raw(ptr, KIND_FREELIST, Some(0), 0)?;
        let per = entries_per_node(layout);
        if h.count as usize > per {
            return Err(Error::corrupt(format!(
                "free list node at {} holds {} entries",
                ptr.block, h.count
            )));
        }
        let o = NODE_HEADER;
        let next = Ptr {
            block: crate::codec::le64(&data, o),
            crc: crate::codec::le32(&data, o + 8),
        };
        let mut p = o + LIST_PREFIX;
        for _ in 0..h.count {
            let s = crate::codec::le64(&data, p);
            let l = crate::codec::le64(&data, p + 8);
            let t = crate::codec::le64(&data, p + 16);
            if !layout.run_in_range(s, l) {
                return Err(Error::corrupt(format!(
                    "free extent {s}+{l} outside the data area"
                )));
            }
            if t > generation {
                return Err(Error::corrupt(format!(
                    "free extent {s}+{l} tagged with future generation {t}"
                )));
            }
            entries.push((s, l, t));
            p += ENTRY_LEN;
        }
        nodes.push(ptr.block);
        ptr = next;
    }
    if !ptr.is_null() {
        return Err(Error::corrupt("free list longer than its declared length"));
    }
    Ok(FreeList {
        nodes,
        base: entries.clone(),
        entries,
    })
}

/// Tag of a range that a free-space delta marks *in use* (absent from the
/// list). Never a generation: u64::MAX is not valid on disk.
pub const TAG_USED: u64 = u64::MAX;

/// Entries sorted by start (list entries never overlap).
fn by_start(v: &[(u64, u64, u64)]) -> Vec<(u64, u64, u64)> {
    let mut v = v.to_vec();
    v.sort_unstable_by_key(|e| e.0);
    v
}

/// The free-space delta from list `base` to list `cur` (feature
/// `INCOMPAT_FREE_DELTA`, FORMAT.md "Free-space delta"): the ranges whose
/// tag differs, each with its tag in `cur` ([`TAG_USED`] where `cur` does
/// not list it), sorted by start, disjoint, adjacent ranges of one tag
/// merged. `apply_delta(base, list_delta(base, cur))` lists exactly the
/// blocks of `cur` with the same tags.
pub fn list_delta(base: &[(u64, u64, u64)], cur: &[(u64, u64, u64)]) -> Vec<(u64, u64, u64)> {
    let a = by_start(base);
    let b = by_start(cur);
    let mut pts: Vec<u64> = a
        .iter()
        .chain(b.iter())
        .flat_map(|e| [e.0, e.0 + e.1])
        .collect();
    pts.sort_unstable();
    pts.dedup();
    // The tag of block x in a sorted list, with a cursor that only moves
    // forward (x increases).
    fn tag_at(v: &[(u64, u64, u64)], i: &mut usize, x: u64) -> u64 {
        while *i < v.len() && v[*i].0 + v[*i].1 <= x {
            *i += 1;
        }
        match v.get(*i) {
            Some(e) if e.0 <= x => e.2,
            _ => TAG_USED,
        }
    }
    let (mut ia, mut ib) = (0, 0);
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for w in pts.windows(2) {
        let (x, y) = (w[0], w[1]);
        let ta = tag_at(&a, &mut ia, x);
        let tb = tag_at(&b, &mut ib, x);
        if ta == tb {
            continue;
        }
        match out.last_mut() {
            Some(l) if l.0 + l.1 == x && l.2 == tb => l.1 += y - x,
            _ => out.push((x, y - x, tb)),
        }
    }
    out
}

/// List `base` with `delta` applied: every range of the delta takes the
/// delta's tag ([`TAG_USED`]: not listed). `delta` must be sorted by start
/// and disjoint (`check_delta`). Returns entries sorted by start.
pub fn apply_delta(base: &[(u64, u64, u64)], delta: &[(u64, u64, u64)]) -> Vec<(u64, u64, u64)> {
    let a = by_start(base);
    let mut out: Vec<(u64, u64, u64)> = Vec::with_capacity(a.len() + delta.len());
    let mut j = 0;
    for &(s, l, t) in &a {
        let end = s + l;
        let mut cur = s;
        // Delta ranges that end before this entry cannot cut it or any
        // later one (both lists are sorted by start).
        while j < delta.len() && delta[j].0 + delta[j].1 <= s {
            j += 1;
        }
        let mut k = j;
        while cur < end && k < delta.len() && delta[k].0 < end {
            let (ds, dl, _) = delta[k];
            if ds > cur {
                out.push((cur, ds - cur, t));
            }
            cur = cur.max(ds + dl);
            k += 1;
        }
        if cur < end {
            out.push((cur, end - cur, t));
        }
    }
    out.extend(delta.iter().filter(|d| d.2 != TAG_USED).copied());
    out.sort_unstable_by_key(|e| e.0);
    out
}

/// Validate a delta read from a root slot of generation `generation`:
/// sorted, disjoint, non-empty ranges inside the data area, tags that are
/// free (0), a generation not after the slot's, or [`TAG_USED`].
pub fn check_delta(layout: &Layout, delta: &[(u64, u64, u64)], generation: u64) -> Result<()> {
    let mut prev_end = 0u64;
    for &(s, l, t) in delta {
        if l == 0 || !layout.run_in_range(s, l) {
            return Err(Error::corrupt(format!(
                "free-space delta range {s}+{l} outside the data area"
            )));
        }
        if s < prev_end {
            return Err(Error::corrupt(format!(
                "free-space delta range {s}+{l} out of order or overlapping"
            )));
        }
        if t != TAG_USED && t > generation {
            return Err(Error::corrupt(format!(
                "free-space delta range {s}+{l} tagged with future generation {t}"
            )));
        }
        prev_end = s + l;
    }
    Ok(())
}

/// Build an allocator from a list's entries (validating overlaps).
pub fn allocator_from(list: &FreeList, reserve: u64) -> Result<Allocator> {
    let mut a = Allocator {
        reserve,
        ..Allocator::empty()
    };
    let mut all = ExtentSet::new();
    for &(s, l, t) in &list.entries {
        all.insert(s, l)
            .map_err(|_| Error::corrupt(format!("free extent {s}+{l} overlaps another")))?;
        if t == 0 {
            a.free.insert(s, l)?;
        } else {
            a.pending.entry(t).or_default().insert(s, l)?;
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    //! `ExtentSet` against a set of single blocks: merged on insert, split
    //! on remove, overlaps refused, totals exact.
    use std::collections::BTreeSet;

    use super::{Allocator, ExtentSet, DATA_RUN_PREF};

    /// Scattered single-block data writes (random overwrites, no usable
    /// hint) land in one run when a long free extent exists, not one per
    /// small hole below it; with only small holes left they still succeed.
    #[test]
    fn data_without_hint_goes_to_long_runs() {
        let mut a = Allocator::empty();
        for h in 0..500u64 {
            a.free.insert(100 + 2 * h, 1).unwrap();
        }
        a.free.insert(5000, 4000).unwrap();
        for _ in 0..256 {
            let (_, got) = a.alloc(1, None, false).unwrap();
            assert_eq!(got, 1);
        }
        assert_eq!(a.fresh.total(), 256);
        let runs: Vec<(u64, u64)> = a.fresh.iter().collect();
        assert_eq!(runs, vec![(5000, 256)], "one run in the long extent");
        // A hint that is free still wins (appends continue their extent).
        let (s, _) = a.alloc(1, Some(100), false).unwrap();
        assert_eq!(s, 100);
        // Only holes shorter than DATA_RUN_PREF left: they are used.
        let mut b = Allocator::empty();
        for h in 0..300u64 {
            b.free.insert(10 * h, DATA_RUN_PREF / 8).unwrap();
        }
        let before = b.free.total();
        for _ in 0..100 {
            b.alloc(1, None, false).unwrap();
        }
        assert_eq!(b.free.total(), before - 100);
        assert_eq!(b.fresh.total(), 100);
    }

    /// The commit reserve's invariant (`Allocator::reserve`) under random
    /// data allocations (with and without hints, nodes written early) and
    /// frees, with nodes of 1, 2 and 4 blocks: the unit count matches the
    /// extents, data never lowers the places for nodes below the reserve
    /// nor the free blocks below it, and afterwards the commit can
    /// allocate every node the reserve counted. With no reserve, data
    /// allocation is never refused while anything is free.
    #[test]
    fn data_allocation_keeps_the_reserved_node_places() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut r = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..300 {
            let u = [1u64, 2, 4][round % 3];
            let mut a = Allocator::empty();
            let mut at = 0;
            while at < 3000 {
                let len = 1 + r() % 13;
                a.free.insert(at, len).unwrap();
                at += len + r() % 4;
            }
            a.free.set_unit(u);
            let places = |a: &Allocator| a.free.iter().map(|(_, l)| l / u).sum::<u64>();
            assert_eq!(a.free.units(), places(&a));
            let need = r() % (places(&a) * 3 / 4 + 1);
            // Not always whole nodes: counted up.
            a.reserve = (need * u).saturating_sub(r() % u);
            let mut taken: Vec<(u64, u64)> = Vec::new();
            for step in 0..1000 {
                let (units, total) = (a.free.units(), a.free.total());
                let res = match r() % 12 {
                    0..=3 => a.alloc(1 + r() % 9, None, false),
                    4..=8 => a.alloc(1 + r() % 9, Some(r() % 3100), false),
                    9 | 10 => a.alloc_exact(u, false).map(|s| (s, u)),
                    _ => {
                        if !taken.is_empty() {
                            let (s, l) = taken.swap_remove((r() % taken.len() as u64) as usize);
                            a.free(s, l).unwrap();
                        }
                        continue;
                    }
                };
                match res {
                    Ok(x) => taken.push(x),
                    Err(crate::Error::NoSpace) => {
                        assert_eq!((a.free.units(), a.free.total()), (units, total));
                    }
                    Err(e) => panic!("round {round} step {step}: {e}"),
                }
                assert_eq!(a.free.units(), places(&a), "round {round} step {step}");
                assert!(
                    a.free.units() >= need.min(units),
                    "round {round} step {step}: nodes of {u}: {} places left, reserve {need}",
                    a.free.units()
                );
                assert!(a.free.total() >= a.reserve.min(total));
            }
            // The commit: every node the reserve counted finds a place.
            a.reserve = 0;
            for i in 0..need {
                a.alloc_exact(u, true)
                    .unwrap_or_else(|e| panic!("round {round}: node {i} of {need}: {e}"));
            }
            // Without a reserve, data takes whatever is free.
            while a.free.total() > 0 {
                a.alloc(1 + r() % 9, Some(r() % 3100), false).unwrap();
                assert_eq!(a.free.units(), places(&a));
            }
        }
    }

    /// A data allocation of at least `data_align` blocks that starts a new
    /// run starts on a multiple of it when a free extent allows, also on a
    /// fragmented allocator; small ones still take the first hole, the
    /// cursor's run and a free hint are continued as they are, and with
    /// only unaligned holes of exactly the size left it still succeeds.
    #[test]
    fn large_data_runs_start_aligned() {
        let mut a = Allocator::empty();
        assert_eq!(a.data_align, 256, "1 MiB of 4 KiB blocks by default");
        // Fragmented but roomy: 100 holes of 3 blocks, then long unaligned
        // extents.
        for h in 0..100u64 {
            a.free.insert(10 + 5 * h, 3).unwrap();
        }
        a.free.insert(1000, 260).unwrap();
        a.free.insert(1400, 3000).unwrap();
        let (s, got) = a.alloc(256, None, false).unwrap();
        assert_eq!((s, got), (1536, 256), "first 256-block boundary with room");
        // The next large one continues at the cursor (aligned already).
        let (s, got) = a.alloc(256, None, false).unwrap();
        assert_eq!((s, got), (1792, 256));
        // The cursor's run is continued as it is, even by a large one.
        a.alloc(3, None, false).unwrap();
        let (s, got) = a.alloc(256, None, false).unwrap();
        assert_eq!((s, got), (2051, 256));
        // A free hint wins over alignment (appends continue their extent).
        let (s, _) = a.alloc(256, Some(1000), false).unwrap();
        assert_eq!(s, 1000);

        // Only unaligned extents of exactly the size: still served.
        let mut b = Allocator::empty();
        for h in 0..4u64 {
            b.free.insert(300 + 600 * h, 256).unwrap();
        }
        let (s, got) = b.alloc(256, None, false).unwrap();
        assert_eq!((s, got), (300, 256));
        // An extent shorter than the request: an aligned whole unit of it.
        let mut c = Allocator::empty();
        c.free.insert(100, 700).unwrap();
        c.free.insert(5000, 100).unwrap();
        let (s, got) = c.alloc(1024, None, false).unwrap();
        assert_eq!((s, got), (256, 544));
        // Small data starting a new run: the extent's start.
        let mut e = Allocator::empty();
        e.free.insert(1000, 300).unwrap();
        assert_eq!(e.alloc(100, None, false).unwrap(), (1000, 100));
        // Alignment off: the extent's start.
        let mut d = Allocator::empty();
        d.data_align = 0;
        d.free.insert(10, 3000).unwrap();
        assert_eq!(d.alloc(256, None, false).unwrap(), (10, 256));
        // Another unit (2048 blocks: 1 MiB of 512-byte blocks).
        let mut f = Allocator::empty();
        f.data_align = 2048;
        f.free.insert(10, 9000).unwrap();
        assert_eq!(f.alloc(2048, None, false).unwrap(), (2048, 2048));
        assert_eq!(f.alloc(256, None, false).unwrap(), (4096, 256), "cursor");
    }

    /// Per-block tags (None = in use) as list entries: maximal runs.
    fn runs(tags: &[Option<u64>]) -> Vec<(u64, u64, u64)> {
        let mut v: Vec<(u64, u64, u64)> = Vec::new();
        for (b, t) in tags.iter().enumerate() {
            let Some(t) = *t else { continue };
            match v.last_mut() {
                Some(l) if l.0 + l.1 == b as u64 && l.2 == t => l.1 += 1,
                _ => v.push((b as u64, 1, t)),
            }
        }
        v
    }

    fn blocks(entries: &[(u64, u64, u64)], n: usize) -> Vec<Option<u64>> {
        let mut out = vec![None; n];
        for &(s, l, t) in entries {
            for b in s..s + l {
                assert!(out[b as usize].is_none(), "block {b} listed twice");
                out[b as usize] = Some(t);
            }
        }
        out
    }

    /// The free-space delta against a per-block model: applying the delta
    /// from `base` to `cur` to `base` lists exactly `cur`'s blocks with
    /// `cur`'s tags, the delta is sorted, disjoint and maximal, and it is
    /// empty when nothing changed. Lists are shuffled (the on-disk list is
    /// ordered by tag, not start).
    #[test]
    fn free_delta_matches_block_model() {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut r = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for round in 0..2000 {
            let n = 1 + (r() % 300) as usize;
            let tag = |x: u64| match x % 5 {
                0 | 1 => None,
                2 | 3 => Some(0),
                _ => Some(1 + x % 4),
            };
            let mut base_tags: Vec<Option<u64>> = Vec::new();
            let mut t = tag(r());
            for _ in 0..n {
                if r() % 4 == 0 {
                    t = tag(r());
                }
                base_tags.push(t);
            }
            // cur: base with a few random ranges changed.
            let mut cur_tags = base_tags.clone();
            for _ in 0..(r() % 6) {
                let a = (r() % n as u64) as usize;
                let b = (a + 1 + (r() % 20) as usize).min(n);
                let t = tag(r());
                for x in &mut cur_tags[a..b] {
                    *x = t;
                }
            }
            let mut base = runs(&base_tags);
            let mut cur = runs(&cur_tags);
            base.reverse();
            let half = cur.len() / 2;
            cur.rotate_left(half);
            let d = super::list_delta(&base, &cur);
            for w in d.windows(2) {
                assert!(w[0].0 + w[0].1 <= w[1].0, "round {round}: unsorted {w:?}");
                assert!(
                    w[0].0 + w[0].1 < w[1].0 || w[0].2 != w[1].2,
                    "round {round}: not merged {w:?}"
                );
            }
            if base_tags == cur_tags {
                assert!(d.is_empty(), "round {round}: delta {d:?} for no change");
            }
            let got = super::apply_delta(&base, &d);
            assert_eq!(blocks(&got, n), cur_tags, "round {round}: delta {d:?}");
        }
    }

    #[test]
    fn extent_set_matches_block_set() {
        for seed in 1..=8u64 {
            let mut s = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
            let mut r = move || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s
            };
            let mut set = ExtentSet::new();
            let mut blocks: BTreeSet<u64> = BTreeSet::new();
            for _ in 0..4000 {
                let start = r() % 500;
                let len = 1 + r() % 12;
                let range: Vec<u64> = (start..start + len).collect();
                let any = range.iter().any(|b| blocks.contains(b));
                let all = range.iter().all(|b| blocks.contains(b));
                assert_eq!(set.overlaps(start, len), any);
                assert_eq!(set.contains(start, len), all);
                if r() % 2 == 0 {
                    assert_eq!(set.insert(start, len).is_ok(), !any, "insert {start}+{len}");
                    if !any {
                        blocks.extend(range);
                    }
                } else {
                    assert_eq!(set.remove(start, len).is_ok(), all, "remove {start}+{len}");
                    if all {
                        for b in range {
                            blocks.remove(&b);
                        }
                    }
                }
                assert_eq!(set.total(), blocks.len() as u64);
                // Extents are maximal: disjoint, non-adjacent, in order.
                let ext: Vec<(u64, u64)> = set.iter().collect();
                for w in ext.windows(2) {
                    assert!(w[0].0 + w[0].1 < w[1].0, "not merged: {w:?}");
                }
                let flat: Vec<u64> = ext.iter().flat_map(|(a, l)| *a..a + l).collect();
                assert_eq!(flat, blocks.iter().copied().collect::<Vec<_>>());
            }
        }
    }
}
