//! Pass 2-4 of the check: walk one generation completely (file table,
//! every extent tree, the free-space list) and account for every block.
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::allocator::{self, ExtentSet};
use crate::btree::{in_bounds, Node, Tree};
use crate::check_data::{full_path, verify_runs};
use crate::check_report::{CheckOptions, CheckReport, DamagedFile, Severity};
use crate::extent_tree::Extents;
use crate::file_table::{EntryKey, FileType, Files, Inode, ROOT_INO};
use crate::fs::Fs;
use crate::root_ring::RootSlot;
use crate::Result;

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

pub(crate) fn check_generation(
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
    let files = Tree::<Files>::from_slot(slot)?;

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
            inodes.extend(e.iter().map(|(k, i)| {
                let mut i = *i;
                if let Some(p) = &files.patch {
                    <Files as crate::btree::Kind>::patch(&mut i, p);
                }
                (k.clone(), i)
            }));
        }
        Ok(())
    })?;

    let names: HashMap<u64, (u64, &str)> = inodes
        .iter()
        .map(|(k, i)| (i.ino, (k.parent, k.name.as_str())))
        .collect();
    let path_of = |ino: u64| full_path(&names, ino);
    // Every inode patch must name a file of the table (a writer only
    // patches files it wrote to; namespace changes write the table).
    for p in slot.patches.entries() {
        if !inodes
            .iter()
            .any(|(_, i)| i.ino == p.ino && i.kind == FileType::File)
        {
            r.push(
                Severity::Error,
                "tree",
                format!(
                    "the root slot patches inode {}, which is not a file of the table",
                    p.ino
                ),
            );
        }
    }
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
    let list = match allocator::read_slot_list(&io, slot) {
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
