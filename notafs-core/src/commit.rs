//! The one function that makes a generation durable: used by `format`
//! (generation 1), by every commit, and by every repair.
//!
//! Protocol (docs/FORMAT.md, "Commit"):
//! 1. the caller has written (or queued in `out`) every data block and tree
//!    node the new root references, all in blocks no retained generation
//!    references;
//! 2. the free-space list of the new generation is sized, allocated (from
//!    the start of free extents, which never adds an entry) and encoded;
//! 3. nodes and list are written;
//! 4. **barrier**: nothing after it may reach the media before all of it;
//! 5. the root slot `g mod N` is written (one block, BLAKE2b-checked);
//! 6. **flush**: only now is the generation acknowledged.
//!
//! Why it survives a power cut: until step 5 reaches the media, every
//! retained root is intact (nothing it references was overwritten: freed
//! blocks stay pending for N generations), and a torn or missing slot fails
//! its checksum so open takes the previous one. After step 5 the slot can
//! only be read with everything it references, thanks to step 4.
use notafs_blockdev::BlockDevice;

use crate::allocator::{self, Allocator};
use crate::node::{Layout, Ptr};
use crate::root_ring::{slot_address, RootSlot};
use crate::superblock::Superblock;
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
}

/// Protocol breaks the crash harness switches on to prove it notices them
/// (always false outside the `fault-injection` feature).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CommitFaults {
    pub skip_barrier: bool,
    pub root_before_data: bool,
    pub reuse_freed_immediately: bool,
}

/// A generation made durable.
pub(crate) struct Written {
    pub slot: RootSlot,
    /// Blocks of its free-space list (freed by the next commit).
    pub free_list: Vec<u64>,
}

/// Write generation `root.generation`: the nodes queued in `out`, the free
/// list of `alloc`, a barrier, the root slot, a flush. `alloc` must already
/// hold this generation's frees (`freed`) and allocations.
pub(crate) fn write_generation(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    alloc: &mut Allocator,
    root: NewRoot,
    out: &mut Vec<(u64, Vec<u8>)>,
    faults: CommitFaults,
) -> Result<Written> {
    let layout = Layout::from_superblock(sb);
    if faults.reuse_freed_immediately {
        let freed = std::mem::take(&mut alloc.freed);
        for (s, l) in freed.iter() {
            alloc.free.insert(s, l)?;
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
    let free = alloc.free.total();
    let pending = alloc.pending_total();
    let slot = RootSlot {
        generation: root.generation,
        uuid: sb.uuid,
        time_ns: root.time_ns,
        files: root.files,
        files_height: root.files_height,
        freelist: head,
        freelist_nodes: n_nodes as u32,
        next_ino: root.next_ino,
        inode_count: root.inode_count,
        used_blocks: layout.block_count - free - pending,
        free_blocks: free,
        pending_blocks: pending,
    };
    let slot_block = slot_address(sb, root.generation);
    let slot_buf = slot.encode(sb.block_size);
    if faults.root_before_data {
        dev.write(slot_block, &slot_buf)?;
    }
    write_coalesced(dev, out)?;
    if !faults.skip_barrier {
        dev.barrier()?;
    }
    if !faults.root_before_data {
        dev.write(slot_block, &slot_buf)?;
    }
    dev.flush()?;
    Ok(Written {
        slot,
        free_list: list_blocks,
    })
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
