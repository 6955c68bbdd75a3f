//! Repair: the library behind `fsck.notafs -p/-y`.
//!
//! Repairs are themselves copy-on-write commits (through
//! [`crate::commit::write_generation`]): they write new structures to blocks
//! no retained generation references, then a new root slot after a barrier.
//! A crash during a repair leaves the previous roots intact, and running it
//! again finishes the job (repairs are idempotent).
//!
//! Rule: keep everything that can be kept. Derivable structures (the free
//! list, counts) are rebuilt from the trees; damaged data blocks cost those
//! blocks only; rolling back is the last resort, and `-p` never loses
//! anything (see [`RepairPolicy`]).
use std::sync::Arc;

use notafs_blockdev::BlockDevice;

use crate::allocator::{self, Allocator, ExtentSet};
use crate::btree::{Node, NodeIo, Tree};
use crate::check::{check, CheckOptions, Problem, Severity};
use crate::extent_tree::Extents;
use crate::file_table::{Files, ROOT_INO};
use crate::fs::{Fs, OpenOptions};
use crate::root_ring::RootSlot;
use crate::superblock::Superblock;
use crate::{Error, Result};

/// What a repair did.
#[derive(Clone, Debug, Default)]
pub struct RepairReport {
    pub actions: Vec<String>,
    /// Repairs the policy did not allow (they would lose something).
    pub declined: Vec<String>,
    pub new_generation: Option<u64>,
}

/// Rewrite a bad superblock copy from the good one.
pub fn repair_superblocks(dev: &dyn BlockDevice) -> Result<Vec<String>> {
    let (sb, _) = Fs::read_superblock(dev)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; sb.block_size as usize];
    for addr in [0, sb.backup_address()] {
        dev.read(addr, &mut buf)?;
        let ok = matches!(Superblock::decode(&buf, addr, sb.block_size, dev.geometry().block_count), Ok(c) if c == sb);
        if !ok {
            dev.write(addr, &sb.encode(addr))?;
            out.push(format!("rewrote the superblock copy at block {addr}"));
        }
    }
    if !out.is_empty() {
        dev.flush()?;
    }
    Ok(out)
}

/// Commit a new generation whose file table is generation `base`'s, with a
/// free-space list rebuilt from what is reachable: blocks of `base` are in
/// use, blocks of the other retained generations older than `base` are held
/// as pending (so they stay readable), everything else is free (reclaiming
/// leaks and dropping the damaged newer generations).
pub fn rebuild_from(dev: Arc<dyn BlockDevice>, base: u64) -> Result<RepairReport> {
    let fs = Fs::open(
        dev.clone(),
        &OpenOptions {
            read_only: true,
            generation: None,
            cache_bytes: crate::DEFAULT_CACHE_BYTES,
            discard: false,
            write_behind: None,
        },
    )
    .or_else(|_| {
        Fs::open(
            dev.clone(),
            &OpenOptions {
                read_only: true,
                generation: Some(base),
                cache_bytes: crate::DEFAULT_CACHE_BYTES,
                discard: false,
                write_behind: None,
            },
        )
    })?;
    let io = fs.io().clone();
    let layout = io.layout;
    let sb = fs.superblock().clone();
    let slots: Vec<RootSlot> = fs
        .slot_status()
        .iter()
        .filter_map(|s| s.state.as_ref().ok().copied())
        .collect();
    let newest_seen = slots.iter().map(|s| s.generation).max().unwrap_or(base);
    let base_slot = *slots
        .iter()
        .find(|s| s.generation == base)
        .ok_or(Error::NoSuchGeneration(base))?;
    // A slot left by a one-flush commit cut short must go before anything
    // is written: a later write could complete its commit log.
    fs.wipe_residue()?;
    let (used, inode_count, max_ino) = reachable_counted(&io, &base_slot)?;
    let mut held = ExtentSet::new();
    let generation = crate::fs::next_generation(newest_seen)?;
    // Hold the blocks of every other generation still in the ring, newer
    // ones included: until the new root is durable a crash must find them
    // intact, and older ones stay readable for N more commits.
    for s in &slots {
        if s.generation == base {
            continue;
        }
        // An I/O error must not drop a generation's blocks from the held
        // set (they could then be overwritten): it stops the repair.
        let set = match reachable(&io, s) {
            Err(e) if e.is_io() => return Err(e),
            r => r,
        };
        if let Ok(set) = set {
            for (st, l) in set.iter() {
                for (a, n) in subtract(&subtract_set(st, l, &used), &held) {
                    held.insert(a, n)?;
                }
            }
        }
    }
    let mut alloc = Allocator::empty();
    let mut cursor = layout.data_start;
    let mut taken = ExtentSet::new();
    for (s, l) in used.iter().chain(held.iter()) {
        let _ = taken.insert(s, l);
    }
    for (s, l) in taken.iter() {
        if s > cursor {
            alloc.free.insert(cursor, s - cursor)?;
        }
        cursor = cursor.max(s + l);
    }
    if cursor < layout.data_end {
        alloc.free.insert(cursor, layout.data_end - cursor)?;
    }
    // The old list nodes of `base` are in `used`; the new root does not
    // reference them, so they are held like older generations' blocks.
    let base_list = match allocator::read_list(
        &io,
        base_slot.freelist,
        base_slot.freelist_nodes,
        base_slot.generation,
    ) {
        Ok(l) => l,
        Err(e) if e.is_io() => return Err(e),
        Err(_) => allocator::FreeList::default(),
    };
    for b in &base_list.nodes {
        if alloc.freed.overlaps(*b, layout.node_blocks)
            || alloc.free.overlaps(*b, layout.node_blocks)
        {
            continue;
        }
        alloc.freed.insert(*b, layout.node_blocks)?;
    }
    if !held.is_empty() {
        alloc.pending.insert(generation, held);
    }
    let next_ino = base_slot
        .next_ino
        .max(max_ino.checked_add(1).ok_or_else(|| {
            Error::corrupt(format!(
                "inode number {max_ino} leaves no next inode number"
            ))
        })?);
    crate::commit::write_generation(
        dev.as_ref(),
        &sb,
        &mut alloc,
        crate::commit::NewRoot {
            generation,
            time_ns: base_slot.time_ns,
            files: base_slot.files,
            files_height: base_slot.files_height,
            next_ino,
            inode_count,
            patches: base_slot.patches,
        },
        &mut Vec::new(),
        None,
        None,
        crate::commit::CommitFaults::default(),
    )?;
    // The generations newer than `base` were abandoned: wipe their slots so
    // they are no longer offered as retained (their blocks stay held, so a
    // crash before or during this is harmless).
    let mut wiped = false;
    for s in &slots {
        if s.generation > base && s.generation != generation {
            let addr = crate::root_ring::slot_address(&sb, s.generation);
            if addr != crate::root_ring::slot_address(&sb, generation) {
                dev.write(addr, &vec![0u8; sb.block_size as usize])?;
                wiped = true;
            }
        }
    }
    if wiped {
        dev.flush()?;
    }
    let mut rep = RepairReport::default();
    rep.actions.push(if base < fs.generation() || base < newest_seen {
        format!("rolled back to generation {base} as new generation {generation}, free space rebuilt")
    } else {
        format!("rebuilt the free-space list as generation {generation}")
    });
    rep.new_generation = Some(generation);
    Ok(rep)
}

/// Parts of `[s, s+l)` not in `set`.
fn subtract_set(s: u64, l: u64, set: &ExtentSet) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut cursor = s;
    for (a, n) in set.intersect(s, l) {
        if a > cursor {
            out.push((cursor, a - cursor));
        }
        cursor = a + n;
    }
    if cursor < s + l {
        out.push((cursor, s + l - cursor));
    }
    out
}

fn subtract(parts: &[(u64, u64)], set: &ExtentSet) -> Vec<(u64, u64)> {
    parts
        .iter()
        .flat_map(|&(s, l)| subtract_set(s, l, set))
        .collect()
}

/// Which repairs [`repair_with`] may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairPolicy {
    /// Only repairs that lose nothing (`fsck -p`): rewrite a superblock
    /// copy from the one the ring verifies under, rebuild the free-space
    /// list and counts from the trees.
    Lossless,
    /// Also repairs that give something up to save the rest (`fsck -y`):
    /// damaged data blocks become holes, an unreadable newer root is
    /// abandoned, and as a last resort the filesystem rolls back to the
    /// newest consistent retained generation.
    Full,
}

/// Check, then make every repair (`RepairPolicy::Full`).
pub fn repair(dev: Arc<dyn BlockDevice>, opts: &CheckOptions<'_>) -> Result<RepairReport> {
    repair_with(dev, opts, RepairPolicy::Full)
}

/// Check, then repair what `policy` allows, keeping everything it can:
/// 1. superblock copies (lossless: the copy in use is the one the ring
///    verifies under);
/// 2. a newer root whose file table does not verify is abandoned (its data
///    cannot be read anyway: `Full` only);
/// 3. the free-space list and counts are rebuilt from the trees of the
///    retained generations (lossless);
/// 4. data blocks that fail their checksum become holes in their file, and
///    only there (`Full` only; every other file and every retained
///    generation is kept);
/// 5. only when the newest generation's trees themselves are inconsistent,
///    roll back to the newest retained generation that checks clean
///    (`Full` only).
///
/// An I/O error stops the repair with an error: nothing is changed on its
/// strength. Repairs that `policy` forbids are listed in
/// [`RepairReport::declined`]. Call [`check`] again to confirm.
pub fn repair_with(
    dev: Arc<dyn BlockDevice>,
    opts: &CheckOptions<'_>,
    policy: RepairPolicy,
) -> Result<RepairReport> {
    let mut rep = RepairReport::default();
    let full = policy == RepairPolicy::Full;
    rep.actions.extend(repair_superblocks(dev.as_ref())?);
    let r = check(dev.clone(), opts)?;
    if r.is_clean() && opts.generation.is_none() {
        return Ok(rep);
    }
    if let Some(g) = opts.generation {
        if !full {
            rep.declined.push(format!(
                "rolling back to generation {g} drops every newer one"
            ));
            return Ok(rep);
        }
        return rollback(dev, opts, Some(g), rep);
    }
    let errors: Vec<&Problem> = r
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .collect();
    let structural = r.generation.is_none()
        || errors.iter().any(|p| {
            !matches!(
                p.code,
                "leak" | "count" | "free-overlap" | "free-list" | "skipped-root" | "data"
            )
        });
    if structural {
        if !full {
            rep.declined.push(
                "the newest generation's trees are inconsistent: rolling back to an older \
                 generation loses the newer ones"
                    .into(),
            );
            return Ok(rep);
        }
        return rollback(dev, opts, None, rep);
    }
    let newest = r.generation.unwrap_or_default();
    let skipped = errors.iter().any(|p| p.code == "skipped-root");
    if skipped && !full {
        rep.declined.push(format!(
            "a root newer than generation {newest} is unreadable; abandoning it needs fsck -y"
        ));
        return Ok(rep);
    }
    let rebuild = skipped
        || errors
            .iter()
            .any(|p| matches!(p.code, "leak" | "count" | "free-overlap" | "free-list"));
    // Referenced blocks inside free space may have been overwritten by a
    // later allocation: find out which before legitimising the pointers.
    let mut damaged = r.damaged.clone();
    if rebuild && !opts.verify_data && errors.iter().any(|p| p.code == "free-overlap") {
        let rv = check(
            dev.clone(),
            &CheckOptions {
                generation: None,
                verify_data: true,
                progress: None,
                cache_bytes: opts.cache_bytes,
            },
        )?;
        damaged = rv.damaged;
    }
    if !damaged.is_empty() && !full {
        for d in &damaged {
            let n: u64 = d.blocks.iter().map(|x| x.1).sum();
            rep.declined.push(format!(
                "{}: {n} damaged data block(s) would become holes (reading as zeros)",
                d.path
            ));
        }
        // A rebuild alone would be lossless, but it would make the damaged
        // blocks look legitimate: leave everything for fsck -y.
        return Ok(rep);
    }
    if rebuild {
        let sub = rebuild_from(dev.clone(), newest)?;
        rep.actions.extend(sub.actions);
        rep.new_generation = sub.new_generation;
    }
    if !damaged.is_empty() {
        let fs = Fs::open(
            dev.clone(),
            &OpenOptions {
                read_only: false,
                generation: None,
                cache_bytes: opts.cache_bytes.unwrap_or(crate::DEFAULT_CACHE_BYTES),
                discard: false,
                write_behind: None,
            },
        )?;
        // A repair is one commit: the barrier protocol, no sealing slot.
        fs.set_commit_log(false);
        let bs = fs.superblock().block_size as u64;
        for d in &damaged {
            let f = fs.open_file(&d.path)?;
            for &(b, n) in &d.blocks {
                f.punch_blocks(b, n)?;
            }
            let lost: u64 = d.blocks.iter().map(|x| x.1).sum();
            rep.actions.push(format!(
                "{}: {lost} damaged data block(s) ({} bytes at {}) now read as zeros; the rest \
                 of the file and every other file are kept",
                d.path,
                lost * bs,
                d.blocks
                    .iter()
                    .map(|(b, n)| format!("{}..{}", b * bs, (b + n) * bs))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rep.new_generation = Some(fs.commit()?);
    }
    Ok(rep)
}

/// Last resort: roll back to the newest retained generation (at most
/// `upto`) that checks clean or needs only a free-space rebuild.
fn rollback(
    dev: Arc<dyn BlockDevice>,
    opts: &CheckOptions<'_>,
    upto: Option<u64>,
    mut rep: RepairReport,
) -> Result<RepairReport> {
    let r = check(dev.clone(), opts)?;
    let mut candidates = r.retained.clone();
    if let Some(g) = upto {
        candidates.retain(|x| *x <= g);
    }
    let mut why: Vec<String> = Vec::new();
    if candidates.is_empty() {
        why.push(format!("retained generations: {:?}", r.retained));
    }
    for g in candidates {
        let at = |verify_data| {
            check(
                dev.clone(),
                &CheckOptions {
                    generation: Some(g),
                    verify_data,
                    progress: None,
                    cache_bytes: opts.cache_bytes,
                },
            )
        };
        let mut rg = at(opts.verify_data)?;
        // Referenced blocks inside free space may have been overwritten: a
        // rebuild would legitimise them, so their data must verify.
        if !opts.verify_data && rg.problems.iter().any(|p| p.code == "free-overlap") {
            rg = at(true)?;
        }
        let fixable_by_rebuild = rg.generation.is_some()
            && rg
                .problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .all(|p| matches!(p.code, "leak" | "count" | "free-overlap" | "free-list"));
        if fixable_by_rebuild {
            let sub = rebuild_from(dev.clone(), g)?;
            rep.actions.extend(sub.actions);
            rep.new_generation = sub.new_generation;
            return Ok(rep);
        }
        let first = rg
            .problems
            .iter()
            .find(|p| p.severity == Severity::Error)
            .map(|p| format!("[{}] {}", p.code, p.message))
            .unwrap_or_default();
        why.push(format!("generation {g}: {first}"));
    }
    Err(Error::NoValidRoot(format!(
        "no retained generation is consistent; nothing safe to roll back to ({})",
        why.join("; ")
    )))
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
    let files = Tree::<Files>::from_slot(slot)?;
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
    // The slot's inode patches name the extent trees in use.
    if let Some(p) = &files.patch {
        for i in &mut inodes {
            <Files as crate::btree::Kind>::patch(i, p);
        }
    }
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
