//! Consistency check and repair: the library behind `fsck.notafs`, and the
//! oracle of the crash harness.
//!
//! The check walks one generation completely: both superblock copies, every
//! root slot, every node of the file table and of every extent tree, every
//! extent, the free-space list; it accounts for every block of the device
//! (`used + free + pending + reserved = total`). It never writes.
//!
//! Repairs live in [`crate::repair`], which builds on this module.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use notafs_blockdev::BlockDevice;

use crate::allocator::{self, ExtentSet};
use crate::btree::{in_bounds, Node, NodeIo, Tree};
use crate::extent_tree::Extents;
use crate::file_table::{EntryKey, FileType, Files, Inode, ROOT_INO};
use crate::fs::{Fs, OpenOptions};
use crate::root_ring::RootSlot;
use crate::superblock::Superblock;
use crate::{Error, Result};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Expected after a crash or harmless (a torn newest slot, an empty slot).
    Info,
    /// Damage that does not affect the checked generation (a bad superblock
    /// copy, an older generation that does not verify).
    Warning,
    /// The checked generation is inconsistent.
    Error,
}

/// One finding.
#[derive(Clone, Debug)]
pub struct Problem {
    pub severity: Severity,
    /// Stable short code, for scripts and tests (`superblock`, `slot`,
    /// `tree`, `claimed-twice`, `free-overlap`, `leak`, `extent`, `size`,
    /// `name`, `orphan`, `data`, `root`, `count`).
    pub code: &'static str,
    pub message: String,
}

/// Options of [`check`].
#[derive(Default)]
pub struct CheckOptions<'a> {
    /// Check this retained generation instead of the newest.
    pub generation: Option<u64>,
    /// Read every data block and verify its checksum.
    pub verify_data: bool,
    /// Called with (bytes verified, bytes to verify) during `verify_data`.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
    /// Bytes of cache to use.
    pub cache_bytes: Option<usize>,
}

/// Figures gathered by the check.
#[derive(Clone, Debug, Default)]
pub struct CheckStats {
    pub files: u64,
    pub dirs: u64,
    pub file_bytes: u64,
    pub nodes: u64,
    pub data_blocks: u64,
    pub free_blocks: u64,
    pub pending_blocks: u64,
    pub reserved_blocks: u64,
    pub leaked_blocks: u64,
    pub verified_bytes: u64,
}

/// The result of a check.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// Generation checked (None when no root could be opened).
    pub generation: Option<u64>,
    /// Newest generation that opens (what a normal mount would use).
    pub newest: Option<u64>,
    pub superblock: Option<Superblock>,
    pub problems: Vec<Problem>,
    pub stats: CheckStats,
    /// Generations whose roots verified, newest first.
    pub retained: Vec<u64>,
    /// Files with data blocks that failed their checksum (`verify_data`).
    pub damaged: Vec<DamagedFile>,
}

/// A file some of whose data blocks failed their checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedFile {
    pub ino: u64,
    /// Full path from the root (`/dir/file`).
    pub path: String,
    /// Damaged runs of file blocks: (first block, number of blocks).
    pub blocks: Vec<(u64, u64)>,
}

impl CheckReport {
    /// No errors in the checked generation (warnings and infos allowed).
    pub fn is_clean(&self) -> bool {
        self.generation.is_some() && !self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    /// Problems of at least `s`.
    pub fn count(&self, s: Severity) -> usize {
        self.problems.iter().filter(|p| p.severity >= s).count()
    }

    fn push(&mut self, severity: Severity, code: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            severity,
            code,
            message: message.into(),
        });
    }
}

/// Check the filesystem on `dev`. Returns Err only when the device is not a
/// notafs filesystem at all or cannot be read; damage is reported in the
/// report.
pub fn check(dev: Arc<dyn BlockDevice>, opts: &CheckOptions<'_>) -> Result<CheckReport> {
    let (sb, source) = Fs::read_superblock(dev.as_ref())?;
    let mut r = CheckReport {
        generation: None,
        newest: None,
        superblock: Some(sb.clone()),
        problems: Vec::new(),
        stats: CheckStats::default(),
        retained: Vec::new(),
        damaged: Vec::new(),
    };
    check_superblocks(dev.as_ref(), &sb, source, &mut r);

    let open = |g: Option<u64>| {
        Fs::open(
            dev.clone(),
            &OpenOptions {
                read_only: true,
                generation: g,
                cache_bytes: opts.cache_bytes.unwrap_or(crate::DEFAULT_CACHE_BYTES),
                discard: false,
                write_behind: None,
            },
        )
    };
    let fs = match open(None) {
        Ok(fs) => fs,
        // An I/O error is not damage: the caller reports it (exit 8) and
        // nothing is repaired on its strength.
        Err(e) if e.is_io() => return Err(e),
        Err(e) => {
            r.push(
                Severity::Error,
                "root",
                format!("no generation can be opened: {e}"),
            );
            return Ok(r);
        }
    };
    let newest = fs.generation();
    r.newest = Some(newest);
    for s in fs.slot_status() {
        match (&s.state, &s.roots_ok) {
            (Err(e), _) if e == "empty" => {}
            (Err(e), _) => r.push(
                Severity::Info,
                "slot",
                format!("root slot {}: {e}", s.index),
            ),
            // A checksum-valid root newer than the one opened: a power cut
            // cannot leave one (the slot is written after a barrier behind
            // its trees), so it is damage, and a commit would overwrite it.
            (Ok(slot), Some(Err(e))) if slot.generation > newest => r.push(
                Severity::Error,
                "skipped-root",
                format!(
                    "root slot {} (generation {}, newer than the newest readable {newest}) is \
                     checksum-valid but its file table does not verify: {e}",
                    s.index, slot.generation
                ),
            ),
            (Ok(slot), Some(Err(e))) => r.push(
                Severity::Warning,
                "slot",
                format!(
                    "root slot {} (generation {}): roots do not verify: {e}",
                    s.index, slot.generation
                ),
            ),
            (Ok(slot), _) if slot.generation > newest => r.push(
                Severity::Info,
                "slot",
                format!(
                    "root slot {} holds generation {} newer than the newest valid",
                    s.index, slot.generation
                ),
            ),
            _ => {}
        }
    }
    r.retained = fs.generations().iter().map(|g| g.generation).collect();
    let fs = match opts.generation {
        None => fs,
        Some(g) => match open(Some(g)) {
            Ok(fs) => fs,
            Err(e) => {
                r.push(Severity::Error, "root", format!("generation {g}: {e}"));
                return Ok(r);
            }
        },
    };
    r.generation = Some(fs.generation());
    let slot = fs.committed_slot();
    match check_generation(&fs, &slot, opts, &mut r) {
        Err(e) if e.is_io() => return Err(e),
        Err(e) => r.push(Severity::Error, "tree", e.to_string()),
        Ok(()) => {}
    }
    Ok(r)
}

fn check_superblocks(dev: &dyn BlockDevice, sb: &Superblock, source: u64, r: &mut CheckReport) {
    let bs = sb.block_size as usize;
    let mut buf = vec![0u8; bs];
    for addr in [0, sb.backup_address()] {
        let res = dev.read(addr, &mut buf).map_err(Error::from).and_then(|_| {
            Superblock::decode(&buf, addr, sb.block_size, dev.geometry().block_count)
        });
        match res {
            Ok(copy) if copy == *sb => {}
            Ok(_) => r.push(
                Severity::Warning,
                "superblock",
                format!("superblock copy at block {addr} differs from the one in use"),
            ),
            Err(e) => r.push(
                Severity::Warning,
                "superblock",
                format!("superblock copy at block {addr}: {e}"),
            ),
        }
    }
    if source != 0 {
        r.push(
            Severity::Warning,
            "superblock",
            "primary superblock unusable: the backup was used",
        );
    }
}

fn claim(set: &mut ExtentSet, start: u64, len: u64, what: &str, r: &mut CheckReport) {
    if set.overlaps(start, len) {
        r.push(
            Severity::Error,
            "claimed-twice",
            format!("{what}: blocks {start}+{len} are referenced more than once"),
        );
        // Record the part that is new so accounting stays meaningful.
        let mut cursor = start;
        for (s, l) in set.intersect(start, len) {
            if s > cursor {
                let _ = set.insert(cursor, s - cursor);
            }
            cursor = s + l;
        }
        if cursor < start + len {
            let _ = set.insert(cursor, start + len - cursor);
        }
    } else {
        let _ = set.insert(start, len);
    }
}

fn check_generation(
    fs: &Fs,
    slot: &RootSlot,
    opts: &CheckOptions<'_>,
    r: &mut CheckReport,
) -> Result<()> {
    let io = fs.io().clone();
    let layout = io.layout;
    let nb = layout.node_blocks;
    let bs = layout.block_size as u64;
    let mut claimed = ExtentSet::new();
    let files = Tree::<Files>::from_disk(slot.files, slot.files_height, 0)?;

    // File table: nodes, key bounds, inodes.
    let mut inodes: Vec<(EntryKey, Inode)> = Vec::new();
    let mut nodes = 0u64;
    files.walk(&io, &mut |p, _level, node, lo, hi| {
        if let Some(p) = p {
            claim(&mut claimed, p.block, nb, "file table node", r);
            nodes += 1;
        }
        let keys: Vec<&EntryKey> = match node {
            Node::Leaf(e) => e.iter().map(|x| &x.0).collect(),
            Node::Branch(e) => e.iter().map(|x| &x.0).collect(),
        };
        for k in keys {
            if !in_bounds(k, lo, hi) {
                r.push(
                    Severity::Error,
                    "tree",
                    format!("file table key {k:?} outside its parent's range"),
                );
            }
        }
        if let Node::Leaf(e) = node {
            inodes.extend(e.iter().cloned());
        }
        Ok(())
    })?;

    let names: HashMap<u64, (u64, &str)> = inodes
        .iter()
        .map(|(k, i)| (i.ino, (k.parent, k.name.as_str())))
        .collect();
    let path_of = |ino: u64| full_path(&names, ino);
    let mut seen: HashMap<u64, EntryKey> = HashMap::new();
    let mut dirs: HashSet<u64> = HashSet::from([ROOT_INO]);
    for (k, i) in &inodes {
        if let Some(prev) = seen.insert(i.ino, k.clone()) {
            r.push(
                Severity::Error,
                "tree",
                format!("inode {} has two entries: {:?} and {:?}", i.ino, prev, k),
            );
        }
        if i.ino >= slot.next_ino {
            r.push(
                Severity::Error,
                "count",
                format!("inode {} not below next inode {}", i.ino, slot.next_ino),
            );
        }
        if i.kind == FileType::Dir {
            dirs.insert(i.ino);
        }
    }
    if inodes.len() as u64 != slot.inode_count {
        r.push(
            Severity::Error,
            "count",
            format!(
                "root counts {} inodes, the table holds {}",
                slot.inode_count,
                inodes.len()
            ),
        );
    }
    // Reachability from the root: catches missing parents and cycles.
    let mut children: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (k, i) in &inodes {
        if !dirs.contains(&k.parent) {
            r.push(
                Severity::Error,
                "orphan",
                format!("{:?}: parent inode {} is not a directory", k.name, k.parent),
            );
        }
        children.entry(k.parent).or_default().push(i.ino);
    }
    let mut reached: HashSet<u64> = HashSet::new();
    let mut stack = vec![(ROOT_INO, 0usize)];
    while let Some((d, depth)) = stack.pop() {
        if depth > crate::path::MAX_DEPTH {
            r.push(
                Severity::Error,
                "orphan",
                "directory tree deeper than 64 levels",
            );
            break;
        }
        if let Some(c) = children.get(&d) {
            for &ino in c {
                if reached.insert(ino) && dirs.contains(&ino) {
                    stack.push((ino, depth + 1));
                }
            }
        }
    }
    for (k, i) in &inodes {
        if !reached.contains(&i.ino) {
            r.push(
                Severity::Error,
                "orphan",
                format!(
                    "inode {} ({:?}) is unreachable from the root (directory cycle?)",
                    i.ino, k.name
                ),
            );
        }
    }

    // Extent trees.
    let total_bytes: u64 = inodes
        .iter()
        .filter(|(_, i)| i.kind == FileType::File)
        .fold(0u64, |a, (_, i)| a.saturating_add(i.size));
    let mut verified = 0u64;
    let mut data_blocks = 0u64;
    for (k, i) in &inodes {
        match i.kind {
            FileType::Dir => {
                r.stats.dirs += 1;
                continue;
            }
            FileType::File => r.stats.files += 1,
        }
        r.stats.file_bytes = r.stats.file_bytes.saturating_add(i.size);
        let ext = Tree::<Extents>::from_disk(i.extents, i.extent_height, i.ino)?;
        let mut extents: Vec<(u64, crate::extent_tree::Extent)> = Vec::new();
        let res = ext.walk(&io, &mut |p, _, node, lo, hi| {
            if let Some(p) = p {
                claim(&mut claimed, p.block, nb, "extent node", r);
                nodes += 1;
            }
            match node {
                Node::Leaf(e) => {
                    for (key, v) in e {
                        if !in_bounds(key, lo, hi) {
                            r.push(
                                Severity::Error,
                                "tree",
                                format!(
                                    "{:?}: extent key {key} outside its parent's range",
                                    k.name
                                ),
                            );
                        }
                        extents.push((*key, v.clone()));
                    }
                }
                Node::Branch(e) => {
                    for (key, _) in e {
                        if !in_bounds(key, lo, hi) {
                            r.push(
                                Severity::Error,
                                "tree",
                                format!(
                                    "{:?}: extent separator {key} outside its parent's range",
                                    k.name
                                ),
                            );
                        }
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = res {
            r.push(
                Severity::Error,
                "tree",
                format!("{:?} (inode {}): {e}", k.name, i.ino),
            );
            continue;
        }
        let limit = i.size.div_ceil(bs);
        let mut to_verify: Vec<(u64, Vec<u32>, u64)> = Vec::new();
        let mut prev_end = 0u64;
        for (lb, e) in &extents {
            let Some(end) = lb.checked_add(e.len()) else {
                r.push(
                    Severity::Error,
                    "extent",
                    format!("{:?}: extent at block {lb} overflows", k.name),
                );
                continue;
            };
            if *lb < prev_end {
                r.push(
                    Severity::Error,
                    "extent",
                    format!("{:?}: extents overlap at file block {lb}", k.name),
                );
            }
            prev_end = prev_end.max(end);
            if end > limit {
                r.push(
                    Severity::Error,
                    "size",
                    format!(
                        "{:?}: extent {lb}+{} past the end of the file ({} bytes)",
                        k.name,
                        e.len(),
                        i.size
                    ),
                );
            }
            claim(&mut claimed, e.pblock, e.len(), "data extent", r);
            data_blocks += e.len();
            if opts.verify_data {
                to_verify.push((e.pblock, e.crcs.clone(), *lb));
            }
        }
        if opts.verify_data {
            let path = path_of(i.ino);
            let bad = verify_runs(&io, &mut to_verify, bs, &mut verified, total_bytes, opts)?;
            if !bad.is_empty() {
                let n: u64 = bad.iter().map(|x| x.1).sum();
                let list: Vec<String> = bad
                    .iter()
                    .take(8)
                    .map(|(b, n)| format!("{}..{}", b * bs, (b + n) * bs))
                    .collect();
                r.push(
                    Severity::Error,
                    "data",
                    format!(
                        "{path}: {n} data block(s) fail their checksum (bytes {}{})",
                        list.join(", "),
                        if bad.len() > 8 { ", ..." } else { "" }
                    ),
                );
                r.damaged.push(DamagedFile {
                    ino: i.ino,
                    path,
                    blocks: bad,
                });
            }
        }
    }
    r.stats.verified_bytes = verified;
    r.stats.data_blocks = data_blocks;
    r.stats.nodes = nodes;

    // Free list and accounting.
    let list = match allocator::read_list(&io, slot.freelist, slot.freelist_nodes, slot.generation)
    {
        Ok(l) => l,
        Err(e) if e.is_io() => return Err(e),
        Err(e) => {
            r.push(
                Severity::Error,
                "free-list",
                format!("the free-space list does not verify: {e}"),
            );
            return Ok(());
        }
    };
    let listed_total = list.entries.iter().fold(0u64, |a, e| a.saturating_add(e.1));
    if listed_total > layout.data_end - layout.data_start {
        r.push(
            Severity::Error,
            "free-list",
            format!(
                "the free-space list lists {listed_total} blocks, the data area has {}",
                layout.data_end - layout.data_start
            ),
        );
    }
    for b in &list.nodes {
        claim(&mut claimed, *b, nb, "free-list node", r);
    }
    let mut free = 0u64;
    let mut pending = 0u64;
    let mut listed = ExtentSet::new();
    for &(s, l, t) in &list.entries {
        if claimed.overlaps(s, l) {
            r.push(
                Severity::Error,
                "free-overlap",
                format!("free extent {s}+{l} contains referenced blocks"),
            );
        }
        if listed.insert(s, l).is_err() {
            r.push(
                Severity::Error,
                "free-overlap",
                format!("free extent {s}+{l} listed twice"),
            );
        }
        if t == 0 {
            free = free.saturating_add(l);
        } else {
            pending = pending.saturating_add(l);
        }
    }
    let reserved = layout.data_start + (layout.block_count - layout.data_end);
    let accounted = claimed
        .total()
        .saturating_add(free)
        .saturating_add(pending)
        .saturating_add(reserved);
    r.stats.free_blocks = free;
    r.stats.pending_blocks = pending;
    r.stats.reserved_blocks = reserved;
    if accounted < layout.block_count {
        let leaked = layout.block_count - accounted;
        r.stats.leaked_blocks = leaked;
        r.push(
            Severity::Error,
            "leak",
            format!("{leaked} blocks are neither referenced nor free (leaked)"),
        );
    } else if accounted > layout.block_count {
        r.push(
            Severity::Error,
            "free-overlap",
            format!("{} blocks counted twice", accounted - layout.block_count),
        );
    }
    if slot.free_blocks != free || slot.pending_blocks != pending {
        r.push(
            Severity::Error,
            "count",
            format!(
                "root records {} free / {} pending blocks, the list holds {free} / {pending}",
                slot.free_blocks, slot.pending_blocks
            ),
        );
    }
    Ok(())
}

/// Full path of inode `ino` from the root, through the parent links of the
/// checked table (bounded: a cycle or a missing parent gives `?/...`).
fn full_path(names: &HashMap<u64, (u64, &str)>, ino: u64) -> String {
    let mut parts = Vec::new();
    let mut cur = ino;
    for _ in 0..=crate::path::MAX_DEPTH + 1 {
        if cur == ROOT_INO {
            parts.reverse();
            return format!("/{}", parts.join("/"));
        }
        match names.get(&cur) {
            Some((parent, name)) => {
                parts.push(*name);
                cur = *parent;
            }
            None => break,
        }
    }
    parts.reverse();
    format!("?/{}", parts.join("/"))
}

/// Read and verify data extents, merging physically contiguous ones into
/// reads of up to 16 MiB, on a reader thread, so the device streams at its
/// sequential speed while this thread checks the previous run's CRCs.
/// `runs` holds (physical block, CRCs, file block). Returns the damaged
/// file blocks as sorted (first, count) runs; a read error is an error (an
/// I/O error is not damage).
fn verify_runs(
    io: &NodeIo,
    runs: &mut Vec<(u64, Vec<u32>, u64)>,
    bs: u64,
    verified: &mut u64,
    total: u64,
    opts: &CheckOptions<'_>,
) -> Result<Vec<(u64, u64)>> {
    const MAX_RUN: u64 = 16 << 20;
    runs.sort_by_key(|x| x.0);
    // (physical start, length, file block) of each extent, to map a bad
    // physical block back to its file block.
    let map: Vec<(u64, u64, u64)> = runs
        .iter()
        .map(|(p, c, l)| (*p, c.len() as u64, *l))
        .collect();
    // Merge contiguous runs.
    let mut merged: Vec<(u64, Vec<u32>)> = Vec::new();
    for (start, crcs, _) in runs.drain(..) {
        match merged.last_mut() {
            Some((s, c))
                if *s + c.len() as u64 == start
                    && (c.len() + crcs.len()) as u64 * bs <= MAX_RUN =>
            {
                c.extend_from_slice(&crcs)
            }
            _ => merged.push((start, crcs)),
        }
    }
    type Msg = (
        u64,
        usize,
        std::result::Result<(Vec<u8>, usize), notafs_blockdev::BlockError>,
    );
    let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(2);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let plan: Vec<(u64, usize)> = merged.iter().map(|(s, c)| (*s, c.len())).collect();
    let mut bad_physical: Vec<u64> = Vec::new();
    let res = std::thread::scope(|sc| -> Result<()> {
        let dev = &io.dev;
        sc.spawn(move || {
            for (start, n) in plan {
                let len = n * bs as usize;
                let mut buf = back_rx.try_recv().unwrap_or_default();
                // A 4096-aligned window: O_DIRECT backends read straight
                // into it instead of bouncing through a copy.
                buf.resize(len + 4096, 0);
                let a = buf.as_ptr().align_offset(4096).min(4096);
                let res = dev.read(start, &mut buf[a..a + len]).map(|_| (buf, a));
                if tx.send((start, len, res)).is_err() {
                    return;
                }
            }
        });
        for (start, crcs) in &merged {
            let Ok((_, len, res)) = rx.recv() else {
                return Err(Error::Internal("data reader thread stopped".into()));
            };
            match res {
                Err(source) => {
                    return Err(Error::Io {
                        what: "data",
                        block: *start,
                        source,
                    })
                }
                Ok((buf, a)) => {
                    for (i, (chunk, want)) in
                        buf[a..a + len].chunks(bs as usize).zip(crcs).enumerate()
                    {
                        if crate::checksum::crc(chunk) != *want {
                            bad_physical.push(*start + i as u64);
                        }
                    }
                    let _ = back_tx.send(buf);
                }
            }
            *verified += len as u64;
            if let Some(p) = opts.progress {
                p((*verified).min(total), total);
            }
        }
        Ok(())
    });
    res?;
    let mut bad: Vec<u64> = bad_physical
        .iter()
        .filter_map(|&pb| {
            let i = map.partition_point(|m| m.0 <= pb).checked_sub(1)?;
            let (p, n, l) = map[i];
            (pb < p + n).then(|| l + (pb - p))
        })
        .collect();
    bad.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for b in bad {
        match out.last_mut() {
            Some((s, n)) if *s + *n == b => *n += 1,
            _ => out.push((b, 1)),
        }
    }
    Ok(out)
}

/// Blocks referenced by generation `slot` (trees, data, free-list nodes).
/// Errors when the generation does not verify.
pub(crate) fn reachable(io: &NodeIo, slot: &RootSlot) -> Result<ExtentSet> {
    reachable_counted(io, slot).map(|x| x.0)
}

/// [`reachable`], plus the number of inodes and the highest inode number.
pub(crate) fn reachable_counted(io: &NodeIo, slot: &RootSlot) -> Result<(ExtentSet, u64, u64)> {
    let nb = io.layout.node_blocks;
    let mut set = ExtentSet::new();
    let files = Tree::<Files>::from_disk(slot.files, slot.files_height, 0)?;
    let mut inodes = Vec::new();
    files.walk(io, &mut |p, _, node, _, _| {
        if let Some(p) = p {
            set.insert(p.block, nb)?;
        }
        if let Node::Leaf(e) = node {
            inodes.extend(e.iter().map(|x| x.1));
        }
        Ok(())
    })?;
    let count = inodes.len() as u64;
    let max_ino = inodes.iter().map(|i| i.ino).max().unwrap_or(ROOT_INO);
    for i in inodes {
        let ext = Tree::<Extents>::from_disk(i.extents, i.extent_height, i.ino)?;
        ext.walk(io, &mut |p, _, node, _, _| {
            if let Some(p) = p {
                set.insert(p.block, nb)?;
            }
            if let Node::Leaf(e) = node {
                for (_, x) in e {
                    set.insert(x.pblock, x.len())?;
                }
            }
            Ok(())
        })?;
    }
    // A free list that does not verify holds nothing anyone can follow:
    // its nodes are not held (the trees above are what must stay intact).
    match allocator::read_list(io, slot.freelist, slot.freelist_nodes, slot.generation) {
        Ok(list) => {
            for b in list.nodes {
                if !set.overlaps(b, nb) {
                    set.insert(b, nb)?;
                }
            }
        }
        Err(e) if e.is_io() => return Err(e),
        Err(_) => {}
    }
    Ok((set, count, max_ino))
}
