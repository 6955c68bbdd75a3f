//! The one function that makes a generation durable: used by `format`
//! (generation 1), by every commit, and by every repair.
//!
//! Two protocols. The *commit-log* protocol (feature
//! `INCOMPAT_COMMIT_LOG`, every small commit): the nodes, the free list and
//! the root slot go out together and one flush makes them durable; the slot
//! lists every block the commit wrote with its CRC-32C, and open verifies
//! the newest slot's list (root_ring.rs says why that is enough). One flush
//! on the critical path instead of two. The *barrier* protocol (large
//! commits, format, repairs, filesystems without the feature):
//!
//! Barrier protocol (docs/FORMAT.md, "Commit"):
//! 1. the caller has written (or queued in `out`) every data block and tree
//!    node the new root references, all in blocks no retained generation
//!    references;
//! 2. the free-space list of the new generation is sized, allocated (from
//!    the start of free extents, which never adds an entry) and encoded;
//! 3. nodes and list are written;
//! 4. **barrier**: nothing after it may reach the media before all of it;
//! 5. the root slot `g mod N` is written (one block, BLAKE2b-checked);
//! 6. **flush**: only now is the generation acknowledged. Steps 5 and 6 are
//!    one `write_fua` of the slot: on a device with a native FUA (NBD) a
//!    single FUA write, which suffices because of step 4; elsewhere
//!    exactly write + flush.
//!
//! Why it survives a power cut: until step 5 reaches the media, every
//! retained root is intact (nothing it references was overwritten: freed
//! blocks stay pending for N generations), and a torn or missing slot fails
//! its checksum so open takes the previous one. After step 5 the slot can
//! only be read with everything it references, thanks to step 4.
use std::collections::HashMap;

use notafs_blockdev::BlockDevice;

use crate::allocator::{self, Allocator};
use crate::inode_patch::Patches;
use crate::node::{Layout, Ptr};
use crate::root_ring::{
    delta_capacity, log_capacity_with, run_check, slot_address, FreeDelta, LogRun, RootSlot,
    LOG_BYTES_MAX, RUN_MAX_BLOCKS, RUN_START_BITS,
};
use crate::superblock::{Superblock, INCOMPAT_COMMIT_LOG, INCOMPAT_FREE_DELTA, INCOMPAT_LOG_RUNS};
use crate::Result;

/// What the new root names, apart from the free space `write_generation`
/// computes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewRoot {
    pub generation: u64,
    pub time_ns: u64,
    pub files: Ptr,
    pub files_height: u8,
    pub next_ino: u64,
    pub inode_count: u64,
    /// Inode patches against the file table `files` (inode_patch.rs).
    pub patches: Patches,
}

/// Protocol breaks the crash harness switches on to prove it notices them
/// (always false outside the `fault-injection` feature).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CommitFaults {
    pub skip_barrier: bool,
    pub root_before_data: bool,
    pub reuse_freed_immediately: bool,
    /// Leave data blocks out of the commit log.
    pub log_omits_data: bool,
    /// Leave the last range out of the free-space delta.
    pub delta_drops_range: bool,
    /// Check each log run by its first block only (writer and open).
    pub log_run_first_block_only: bool,
}

/// The free-space list the last generation names (its base list, when it
/// carries a delta), which the next commit may keep naming with a delta.
#[derive(Clone, Copy)]
pub(crate) struct ListBase<'a> {
    pub head: Ptr,
    pub nodes: &'a [u64],
    /// The list's own entries (before any delta).
    pub entries: &'a [(u64, u64, u64)],
}

/// A generation made durable.
pub(crate) struct Written {
    pub slot: RootSlot,
    /// Blocks of the free-space list it names (freed by the commit that
    /// writes the next list).
    pub free_list: Vec<u64>,
    /// Entries of that list when this commit wrote it (None: it kept the
    /// base list and wrote a delta).
    pub new_base: Option<Vec<(u64, u64, u64)>>,
}

/// Write generation `root.generation`: the nodes queued in `out`, the free
/// space of `alloc`, the root slot, and make them durable. `alloc` must
/// already hold this generation's frees (`freed`) and allocations.
/// `data_crcs`: CRC-32C of every data block this transaction wrote (None
/// when unknown): with it, a small commit uses the commit-log protocol.
/// `base`: the list the previous generation names (None for format and
/// repairs, which always write a whole list).
///
/// Free space goes out in one of two forms (FORMAT.md, "Free-space
/// delta"): with feature `INCOMPAT_FREE_DELTA`, when the changes since the
/// base list fit in the slot (and leave room for the commit log when there
/// is one), the slot keeps naming the base list and carries the delta: no
/// list node is written. Otherwise the base list's nodes are freed (tag g,
/// so every retained slot naming them keeps them for N commits) and a new
/// whole list is written.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_generation(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    alloc: &mut Allocator,
    root: NewRoot,
    out: &mut Vec<(u64, Vec<u8>)>,
    data_crcs: Option<&HashMap<u64, u32>>,
    base: Option<ListBase<'_>>,
    faults: CommitFaults,
) -> Result<Written> {
    let layout = Layout::from_superblock(sb);
    if faults.reuse_freed_immediately {
        let freed = std::mem::take(&mut alloc.freed);
        for (s, l) in freed.iter() {
            alloc.free.insert(s, l)?;
        }
    }
    let use_log = sb.incompat & INCOMPAT_COMMIT_LOG != 0
        && data_crcs.is_some()
        && !faults.skip_barrier
        && !faults.root_before_data;
    if let Some(b) = base.filter(|_| sb.incompat & INCOMPAT_FREE_DELTA != 0) {
        let mut delta =
            allocator::list_delta(b.entries, &allocator::list_entries(alloc, root.generation));
        if faults.delta_drops_range {
            delta.pop();
        }
        let np = root.patches.entries().len();
        // The delta is kept whenever it fits; the commit log only when it
        // fits beside it (commit_log decides) (else this commit takes the barrier protocol, which
        // needs no log, still without rewriting the list).
        let fits = delta.len() <= delta_capacity(sb.block_size, np);
        if let (true, Some(d)) = (fits, FreeDelta::new(&delta)) {
            let slot = new_slot(sb, &layout, alloc, &root, b.head, b.nodes.len(), d);
            let slot = write_slot(dev, sb, alloc, slot, out, data_crcs, use_log, faults)?;
            return Ok(Written {
                slot,
                free_list: b.nodes.to_vec(),
                new_base: None,
            });
        }
    }
    // A whole new list: the one the previous generation names is freed by
    // this commit.
    if let Some(b) = base {
        for &blk in b.nodes {
            alloc.free(blk, layout.node_blocks)?;
        }
    }
    let per = allocator::entries_per_node(&layout);
    let n_nodes = allocator::list_entries(alloc, root.generation)
        .len()
        .div_ceil(per)
        .max(1);
    let mut list_blocks = Vec::with_capacity(n_nodes);
    for _ in 0..n_nodes {
        list_blocks.push(alloc.alloc_exact(layout.node_blocks, true)?);
    }
    let entries = allocator::list_entries(alloc, root.generation);
    let head = allocator::encode_list(&layout, &entries, &list_blocks, root.generation, out)?;
    let slot = new_slot(
        sb,
        &layout,
        alloc,
        &root,
        head,
        n_nodes,
        FreeDelta::default(),
    );
    let slot = write_slot(dev, sb, alloc, slot, out, data_crcs, use_log, faults)?;
    Ok(Written {
        slot,
        free_list: list_blocks,
        new_base: Some(entries),
    })
}

/// The root slot of `root`, naming the free-space list at `list` (`nodes`
/// long) with `delta` on top, and the block counts of `alloc`.
fn new_slot(
    sb: &Superblock,
    layout: &Layout,
    alloc: &Allocator,
    root: &NewRoot,
    list: Ptr,
    nodes: usize,
    delta: FreeDelta,
) -> RootSlot {
    let free = alloc.free.total();
    let pending = alloc.pending_total();
    RootSlot {
        generation: root.generation,
        uuid: sb.uuid,
        time_ns: root.time_ns,
        files: root.files,
        files_height: root.files_height,
        freelist: list,
        freelist_nodes: nodes as u32,
        next_ino: root.next_ino,
        inode_count: root.inode_count,
        used_blocks: layout.block_count - free - pending,
        free_blocks: free,
        pending_blocks: pending,
        log_len: 0,
        delta,
        patches: root.patches,
    }
}

/// Write the queued blocks and the root slot by the commit-log protocol
/// (`use_log` and the log fits) or the barrier protocol; returns the slot
/// as written.
#[allow(clippy::too_many_arguments)]
fn write_slot(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    alloc: &Allocator,
    slot: RootSlot,
    out: &mut Vec<(u64, Vec<u8>)>,
    data_crcs: Option<&HashMap<u64, u32>>,
    use_log: bool,
    faults: CommitFaults,
) -> Result<RootSlot> {
    let slot_block = slot_address(sb, slot.generation);
    let log = match data_crcs {
        Some(d) if use_log => commit_log(alloc, out, d, sb, &slot, faults),
        _ => None,
    };
    if let Some(log) = log {
        // One flush epoch: nodes, list and slot together.
        let mut slot = slot;
        slot.log_len = log.len() as u32;
        out.push((slot_block, slot.encode_with_log(sb.block_size, &log)));
        write_coalesced(dev, out)?;
        // Never a FUA slot here: the slot goes out with the nodes and data
        // blocks, unordered, and this one flush is what makes *them*
        // durable. A FUA slot alone would acknowledge a commit whose blocks
        // a power cut could still lose (docs/BLOCK-SEMANTICS.md, "Commit
        // sequence on NBD").
        dev.flush()?;
        return Ok(slot);
    }
    let slot_buf = slot.encode(sb.block_size);
    if faults.root_before_data {
        dev.write(slot_block, &slot_buf)?;
    }
    write_coalesced(dev, out)?;
    if !faults.skip_barrier {
        dev.barrier()?;
    }
    if faults.root_before_data {
        dev.flush()?;
    } else {
        // Slot, then flush: with a native FUA (NBD `SEND_FUA`) one FUA write
        // instead. Enough here, unlike in the commit-log protocol: the
        // barrier above already orders (or, on NBD, flushes) everything the
        // slot references, so once the slot itself is durable, all of it
        // is. Devices without FUA do exactly write + flush (the default).
        dev.write_fua(slot_block, &slot_buf)?;
    }
    Ok(slot)
}

/// Seal a commit-log generation: write the log-free slot `slot` (a new
/// generation naming the same trees and free list, see `Inner::seal`) and
/// flush. With `write_generation`, the only writers of a root slot.
pub(crate) fn write_seal(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    slot: &RootSlot,
) -> notafs_blockdev::Result<()> {
    debug_assert_eq!(slot.log_len, 0);
    // A FUA write where the device has one (else write + flush): the seal
    // names only trees and a free list that the sealed generation's flush
    // already made durable, so nothing but the slot itself needs it.
    dev.write_fua(
        slot_address(sb, slot.generation),
        &slot.encode(sb.block_size),
    )
}

/// The commit log of a commit: every block the new root references that
/// this transaction wrote (`alloc.fresh`), with its CRC-32C, taken from the
/// node buffers in `out` or from `data_crcs`; with log runs, contiguous
/// blocks as one entry (root_ring.rs). None when it does not fit the slot,
/// lists more than `LOG_BYTES_MAX`, or a block's CRC is unknown (then the
/// barrier protocol is used).
fn commit_log(
    alloc: &Allocator,
    out: &[(u64, Vec<u8>)],
    data_crcs: &HashMap<u64, u32>,
    sb: &Superblock,
    slot: &RootSlot,
    faults: CommitFaults,
) -> Option<Vec<LogRun>> {
    let cap = log_capacity_with(
        sb.block_size,
        slot.delta.entries().len(),
        slot.patches.entries().len(),
    ) as u64;
    let runs = sb.incompat & INCOMPAT_LOG_RUNS != 0;
    let fresh = alloc.fresh.total();
    if fresh > LOG_BYTES_MAX / sb.block_size as u64
        || (!runs && fresh > cap)
        || (runs && alloc.fresh.iter().count() as u64 > cap)
    {
        return None;
    }
    let bs = sb.block_size as usize;
    let mut node_crcs: HashMap<u64, u32> = HashMap::new();
    for (b, buf) in out {
        for (i, chunk) in buf.chunks(bs).enumerate() {
            node_crcs.insert(b + i as u64, crate::checksum::crc(chunk));
        }
    }
    // (run, the CRC-32Cs of its blocks)
    let mut log: Vec<(LogRun, Vec<u32>)> = Vec::new();
    for (s, l) in alloc.fresh.iter() {
        for b in s..s + l {
            let crc = match (node_crcs.get(&b), data_crcs.get(&b)) {
                (Some(c), _) => *c,
                (None, Some(_)) if faults.log_omits_data => continue,
                (None, Some(c)) => *c,
                (None, None) => return None,
            };
            match log.last_mut() {
                Some((r, crcs)) if runs && r.start + r.count == b && r.count < RUN_MAX_BLOCKS => {
                    r.count += 1;
                    crcs.push(crc);
                }
                _ => {
                    if runs && b >> RUN_START_BITS != 0 {
                        return None;
                    }
                    log.push((
                        LogRun {
                            start: b,
                            count: 1,
                            check: crc,
                        },
                        vec![crc],
                    ))
                }
            }
        }
    }
    if log.len() as u64 > cap {
        return None;
    }
    Some(
        log.into_iter()
            .map(|(mut r, crcs)| {
                if runs {
                    // The broken protocol the crash harness must catch: a
                    // run checked by its first block alone.
                    r.check = if faults.log_run_first_block_only {
                        run_check(crcs.into_iter().take(1))
                    } else {
                        run_check(crcs)
                    };
                }
                r
            })
            .collect(),
    )
}

/// Write `(block, bytes)` pairs, merging runs of adjacent blocks into one
/// request each and handing them to the device as one batch (so backends
/// with many requests in flight can use them). Empties `out`.
pub(crate) fn write_coalesced(dev: &dyn BlockDevice, out: &mut Vec<(u64, Vec<u8>)>) -> Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    out.sort_by_key(|x| x.0);
    let bs = dev.geometry().block_size as u64;
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    for (b, buf) in out.drain(..) {
        match runs.last_mut() {
            Some((s, data))
                if *s + data.len() as u64 / bs == b && data.len() + buf.len() <= 8 << 20 =>
            {
                data.extend_from_slice(&buf)
            }
            _ => runs.push((b, buf)),
        }
    }
    let reqs: Vec<notafs_blockdev::WriteReq<'_>> = runs
        .iter()
        .map(|(b, d)| notafs_blockdev::WriteReq { block: *b, data: d })
        .collect();
    dev.write_batch(&reqs)?;
    Ok(())
}
