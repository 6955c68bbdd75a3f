//! The writer transaction: what changed since the last commit (inodes with
//! their in-memory extent trees and buffered partial blocks, the file table,
//! the allocator), and the write path that changes it.
//!
//! Whole blocks of a write go straight to freshly allocated device blocks
//! (never over a block a committed generation references); partial blocks
//! are merged with the old content and kept in a bounded buffer until they
//! fill up, the buffer limit is reached, or the commit. Either way nothing is
//! visible to other generations until the root swap (commit.rs).
//!
//! This module does not know the filesystem handle: what it needs from it
//! (node I/O, the commit reserve, failure latching) comes through
//! [`TxnEnv`], so the handle (fs.rs), the file handles (file.rs) and the
//! commit all depend on it and it depends on none of them.
use std::collections::{BTreeMap, HashMap};

use crate::allocator::Allocator;
use crate::btree::{NodeIo, Tree};
use crate::data;
use crate::extent_tree::{Extent, Extents};
use crate::file_table::{EntryKey, Files, Inode};
use crate::{Error, Result};

/// What the write path needs from the filesystem handle.
pub(crate) trait TxnEnv {
    /// Cached, verified node reads and the device.
    fn io(&self) -> &NodeIo;
    /// Set the commit reserve before allocating data blocks.
    fn reserve_for_data(&self, t: &mut Txn) -> Result<()>;
    /// Out of space: release what older generations hold (keeping the
    /// newest committed one); whether anything was released.
    fn reclaim(&self, t: &mut Txn) -> Result<bool>;
    /// Account bytes written (for write-behind).
    fn note_written(&self, bytes: u64);
    /// Latch a device failure: the handle stops accepting writes.
    fn fail_write<T>(&self, e: Error) -> Result<T>;
    /// Bytes of partial blocks buffered before they are written early.
    fn buffer_limit(&self) -> usize;
    /// The generation committed last.
    fn generation(&self) -> u64;
    /// Whether reads verify checksums.
    fn verify_reads(&self) -> bool;
}

/// Per-inode state of a transaction: the inode, its extent tree with
/// in-memory changes, and its buffered partial blocks.
pub(crate) struct InodeState {
    pub key: EntryKey,
    pub inode: Inode,
    pub ext: Tree<Extents>,
    pub buf: BTreeMap<u64, Vec<u8>>,
}

pub(crate) struct Txn {
    pub files: Tree<Files>,
    pub next_ino: u64,
    pub inode_count: u64,
    pub alloc: Allocator,
    /// Allocator as of the last commit, for abort.
    pub base_alloc: Allocator,
    /// Inodes with changes not yet in `files`.
    pub inodes: HashMap<u64, InodeState>,
    /// Keys of inodes that have open handles, with the number of handles
    /// (an entry goes away with its last handle, so the map is bounded by
    /// the files open at once).
    pub handles: HashMap<u64, (EntryKey, usize)>,
    pub buffered_bytes: usize,
    /// CRC-32C of each data block written by this transaction, for the
    /// commit log (bounded: past `DATA_CRCS_MAX` it stops and the commit
    /// uses the barrier protocol).
    pub data_crcs: HashMap<u64, u32>,
    pub data_crcs_overflow: bool,
    pub changed: bool,
}

/// Data blocks whose CRCs a transaction remembers for the commit log (more
/// than any slot can list: the log is only for small commits).
pub(crate) const DATA_CRCS_MAX: usize = 4096;

impl Txn {
    fn note_data(&mut self, pb: u64, crcs: &[u32]) {
        if self.data_crcs_overflow {
            return;
        }
        if self.data_crcs.len() + crcs.len() > DATA_CRCS_MAX {
            self.data_crcs.clear();
            self.data_crcs_overflow = true;
            return;
        }
        for (i, c) in crcs.iter().enumerate() {
            self.data_crcs.insert(pb + i as u64, *c);
        }
    }
}

/// Make sure `ino` has a transaction state, loading its inode.
pub(crate) fn state<'a>(t: &'a mut Txn, io: &NodeIo, ino: u64) -> Result<&'a mut InodeState> {
    if !t.inodes.contains_key(&ino) {
        let key = t
            .handles
            .get(&ino)
            .map(|h| h.0.clone())
            .ok_or(Error::Stale)?;
        let inode = t.files.get(io, &key)?.ok_or(Error::Stale)?;
        if inode.ino != ino {
            return Err(Error::Stale);
        }
        let ext = Tree::<Extents>::from_disk(inode.extents, inode.extent_height, ino)?;
        t.inodes.insert(
            ino,
            InodeState {
                key,
                inode,
                ext,
                buf: BTreeMap::new(),
            },
        );
    }
    t.inodes.get_mut(&ino).ok_or(Error::Stale)
}

/// The inode of `ino` as the transaction sees it, without loading state.
pub(crate) fn current(t: &Txn, io: &NodeIo, ino: u64) -> Result<Inode> {
    if let Some(st) = t.inodes.get(&ino) {
        return Ok(st.inode);
    }
    let key = &t.handles.get(&ino).ok_or(Error::Stale)?.0;
    match t.files.get(io, key)? {
        Some(i) if i.ino == ino => Ok(i),
        _ => Err(Error::Stale),
    }
}

pub(crate) fn drain(t: &mut Txn, ino: u64, node_blocks: u64) -> Result<()> {
    let freed = match t.inodes.get_mut(&ino) {
        Some(st) => std::mem::take(&mut st.ext.freed),
        None => return Ok(()),
    };
    for b in freed {
        t.alloc.free(b, node_blocks)?;
    }
    Ok(())
}

/// Remove the mapping of file blocks `[lb, lb+n)`, freeing the device blocks.
pub(crate) fn unmap(t: &mut Txn, io: &NodeIo, ino: u64, lb: u64, n: u64) -> Result<()> {
    let end = lb.saturating_add(n);
    let st = state(t, io, ino)?;
    let start = st.ext.floor(io, &lb)?.map(|(k, _)| k).unwrap_or(lb);
    let mut hits: Vec<(u64, Extent)> = Vec::new();
    st.ext.scan(io, Some(&start), &mut |k, e| {
        if *k >= end {
            return Ok(false);
        }
        if k.saturating_add(e.len()) > lb {
            hits.push((*k, e.clone()));
        }
        Ok(true)
    })?;
    let mut frees = Vec::new();
    for (k, e) in hits {
        st.ext.remove(io, &k)?;
        let a = k.max(lb);
        let b = k.saturating_add(e.len()).min(end);
        frees.push((e.pblock + (a - k), b - a));
        if k < lb {
            let left = Extent {
                pblock: e.pblock,
                crcs: e.crcs[..(lb - k) as usize].to_vec(),
            };
            st.ext.insert(io, k, left)?;
        }
        if k.saturating_add(e.len()) > end {
            let off = (end - k) as usize;
            let right = Extent {
                pblock: e.pblock + off as u64,
                crcs: e.crcs[off..].to_vec(),
            };
            st.ext.insert(io, end, right)?;
        }
    }
    for (s, l) in frees {
        t.alloc.free(s, l)?;
    }
    drain(t, ino, io.layout.node_blocks)
}

/// Map file blocks `lb..` to device blocks `pb..` with checksums `crcs`
/// (the range must be unmapped), extending the previous extent when it is
/// physically contiguous, so appends keep few, long extents.
pub(crate) fn map(
    t: &mut Txn,
    io: &NodeIo,
    ino: u64,
    lb: u64,
    pb: u64,
    crcs: &[u32],
) -> Result<()> {
    let max = io.layout.max_extent as usize;
    let st = state(t, io, ino)?;
    let mut done = 0usize;
    if lb > 0 {
        if let Some((k, mut e)) = st.ext.floor(io, &(lb - 1))? {
            if k + e.len() == lb && e.pblock + e.len() == pb && e.crcs.len() < max {
                let take = (max - e.crcs.len()).min(crcs.len());
                e.crcs.extend_from_slice(&crcs[..take]);
                st.ext.insert(io, k, e)?;
                done = take;
            }
        }
    }
    while done < crcs.len() {
        let take = (crcs.len() - done).min(max);
        let e = Extent {
            pblock: pb + done as u64,
            crcs: crcs[done..done + take].to_vec(),
        };
        st.ext.insert(io, lb + done as u64, e)?;
        done += take;
    }
    drain(t, ino, io.layout.node_blocks)
}

/// Write whole blocks `data` at file block `lb` to newly allocated device
/// blocks and map them. Each chunk is written before the old mapping of its
/// range is dropped, so a failure (no space, device error) leaves the blocks
/// not yet written with their old content; `done` counts blocks written.
pub(crate) fn write_blocks<E: TxnEnv>(
    env: &E,
    t: &mut Txn,
    ino: u64,
    lb: u64,
    data: &[u8],
    done: &mut u64,
    committing: bool,
) -> Result<()> {
    let r = write_runs(env, t, ino, &[(lb, data)], committing);
    *done = r.1.first().copied().unwrap_or(0);
    r.0
}

/// Write runs of whole blocks `(file block, bytes)` of `ino` to newly
/// allocated device blocks and map them: every chunk is allocated first,
/// then all go to the device as one batch (adjacent device blocks merged
/// into one request: data allocated without a hint is contiguous, see
/// `allocator::DATA_RUN_PREF`, so 256 scattered 4 KiB blocks are one 1 MiB
/// write), then mapped. A failure to allocate writes and maps what was
/// allocated before it and returns the error; the old mapping of what was
/// not written stays. Returns, with the result, the blocks mapped from the
/// start of each run (a prefix: the rest of a run keeps its old mapping).
fn write_runs<E: TxnEnv>(
    env: &E,
    t: &mut Txn,
    ino: u64,
    runs: &[(u64, &[u8])],
    committing: bool,
) -> (Result<()>, Vec<u64>) {
    let mut mapped = vec![0u64; runs.len()];
    let io = env.io().clone();
    let bs = io.layout.block_size as usize;
    // (run index, file block, device block, blocks, offset in the run)
    let mut plan: Vec<(usize, u64, u64, u64, usize)> = Vec::new();
    let mut failed = None;
    'runs: for (ri, (lb, data)) in runs.iter().enumerate() {
        let (lb, n) = (*lb, (data.len() / bs) as u64);
        // Continue the previous extent on disk when possible.
        let mut hint = None;
        if lb > 0 {
            let floor = match state(t, &io, ino).and_then(|st| st.ext.floor(&io, &(lb - 1))) {
                Ok(f) => f,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            if let Some((k, e)) = floor {
                if k + e.len() == lb {
                    hint = Some(e.pblock + e.len());
                }
            }
        }
        let mut done = 0;
        while done < n {
            let got = (|| {
                if committing {
                    t.alloc.reserve = 0;
                } else {
                    env.reserve_for_data(t)?;
                    // Each chunk planned but not yet mapped may dirty an
                    // extent leaf at the commit: keep room for it too.
                    t.alloc.reserve += (plan.len() as u64 + 1) * io.layout.node_blocks;
                }
                match t.alloc.alloc(n - done, hint, committing) {
                    Err(Error::NoSpace) if !committing && env.reclaim(t)? => {
                        env.reserve_for_data(t)?;
                        t.alloc.alloc(n - done, hint, committing)
                    }
                    r => r,
                }
            })();
            let (pb, got) = match got {
                Ok(x) => x,
                Err(e) => {
                    failed = Some(e);
                    break 'runs;
                }
            };
            plan.push((ri, lb + done, pb, got, done as usize * bs));
            hint = Some(pb + got);
            done += got;
        }
    }
    let chunks: Vec<(u64, &[u8])> = plan
        .iter()
        .map(|&(ri, _, pb, got, o)| (pb, &runs[ri].1[o..o + got as usize * bs]))
        .collect();
    if let Err(e) = write_chunks(io.dev.as_ref(), chunks) {
        return (env.fail_write(e), mapped);
    }
    env.note_written(plan.iter().map(|p| p.3 * bs as u64).sum());
    for (j, &(ri, flb, pb, got, o)) in plan.iter().enumerate() {
        let chunk = &runs[ri].1[o..o + got as usize * bs];
        let crcs: Vec<u32> = chunk.chunks(bs).map(crate::checksum::crc).collect();
        // Small writes are read back soon (a pack store reads what it just
        // appended): keep them in the data cache, as data.rs would after
        // reading them (same key: block and CRC). A data cache of at least
        // WRITE_FILL_MIN bytes (cache_bytes of 4x that) keeps every write:
        // whoever sized it so wants recent data served from memory (a pack
        // store reads records it wrote anywhere in the store).
        let fill_all = io.data_cache.capacity() as u64 * bs as u64 >= crate::data::WRITE_FILL_MIN;
        if fill_all || chunk.len() as u64 <= crate::data::CACHED_READ_MAX {
            for (i, (b, crc)) in chunk.chunks(bs).zip(&crcs).enumerate() {
                io.data_cache.put_copy(pb + i as u64, *crc, b);
            }
        }
        t.note_data(pb, &crcs);
        if let Err(e) = unmap(t, &io, ino, flb, got).and_then(|_| map(t, &io, ino, flb, pb, &crcs))
        {
            // The chunks after this one were written but will not be
            // mapped: give their fresh blocks back (never referenced).
            for &(_, _, pb, got, _) in &plan[j + 1..] {
                let _ = t.alloc.free(pb, got);
            }
            return (Err(e), mapped);
        }
        // Chunks of a run are planned in order: mapped is a prefix.
        mapped[ri] += got;
    }
    if let Some(e) = failed {
        return (Err(e), mapped);
    }
    if !committing {
        if let Err(e) = spill_metadata(env, t, ino) {
            return (Err(e), mapped);
        }
    }
    (Ok(()), mapped)
}

/// Write `(device block, bytes)` chunks as batches in device order, runs
/// of adjacent chunks merged into one request of at most `MERGE_MAX` bytes
/// (copied; a batch stops copying once `MERGE_MAX` bytes were, so one batch
/// copies less than 2 x `MERGE_MAX`); a chunk with no neighbour goes out as
/// it is.
fn write_chunks(
    dev: &dyn notafs_blockdev::BlockDevice,
    mut chunks: Vec<(u64, &[u8])>,
) -> Result<()> {
    const MERGE_MAX: usize = 8 << 20;
    if chunks.is_empty() {
        return Ok(());
    }
    let bs = dev.geometry().block_size as u64;
    chunks.sort_unstable_by_key(|c| c.0);
    let mut i = 0;
    while i < chunks.len() {
        // Groups of adjacent chunks, until MERGE_MAX bytes were copied.
        let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
        let mut copied = 0;
        while i < chunks.len() && copied < MERGE_MAX {
            let s = i;
            let mut len = chunks[i].1.len();
            i += 1;
            while i < chunks.len()
                && chunks[i - 1].0 + chunks[i - 1].1.len() as u64 / bs == chunks[i].0
                && len + chunks[i].1.len() <= MERGE_MAX
            {
                len += chunks[i].1.len();
                i += 1;
            }
            if i - s > 1 {
                copied += len;
            }
            groups.push(s..i);
        }
        let merged: Vec<Vec<u8>> = groups
            .iter()
            .filter(|g| g.len() > 1)
            .map(|g| {
                let mut v = Vec::new();
                for c in &chunks[g.clone()] {
                    v.extend_from_slice(c.1);
                }
                v
            })
            .collect();
        let mut m = merged.iter();
        let mut reqs: Vec<notafs_blockdev::WriteReq<'_>> = Vec::with_capacity(groups.len());
        for g in &groups {
            let data: &[u8] = if g.len() > 1 {
                m.next().map(|v| v.as_slice()).unwrap_or_default()
            } else {
                chunks[g.start].1
            };
            reqs.push(notafs_blockdev::WriteReq {
                block: chunks[g.start].0,
                data,
            });
        }
        dev.write_batch(&reqs)?;
    }
    Ok(())
}

/// Write a file's in-memory extent-tree nodes early, to fresh blocks, once
/// they exceed a quarter of the cache, so that one transaction can be far
/// larger than RAM. The nodes are not referenced by any root until the
/// commit; if they change again they are copied and their fresh blocks
/// freed at once. Running out of space here is not an error: the nodes just
/// stay in memory until the commit.
pub(crate) fn spill_metadata<E: TxnEnv>(env: &E, t: &mut Txn, ino: u64) -> Result<()> {
    let io = env.io().clone();
    let limit = (env.buffer_limit() / 2) / io.layout.node_size as usize;
    let dirty = t.inodes.get(&ino).map_or(0, |s| s.ext.dirty_nodes);
    if dirty <= limit.max(16) {
        return Ok(());
    }
    let generation = env.generation() + 1;
    let Some(mut st) = t.inodes.remove(&ino) else {
        return Ok(());
    };
    let mut out = Vec::new();
    let alloc = &mut t.alloc;
    let nb = io.layout.node_blocks;
    let res = st.ext.write(
        &io,
        generation,
        &mut || alloc.alloc_exact(nb, false),
        &mut out,
    );
    t.inodes.insert(ino, st);
    match res {
        Ok(_) | Err(Error::NoSpace) => {}
        Err(e) => return Err(e),
    }
    // Spilled nodes are not in the commit log's sources: this commit will
    // use the barrier protocol.
    t.data_crcs.clear();
    t.data_crcs_overflow = true;
    if let Err(e) = crate::commit::write_coalesced(io.dev.as_ref(), &mut out) {
        return env.fail_write(e);
    }
    drain(t, ino, nb)
}

/// Write out the buffered partial blocks of `ino`.
/// `committing`: the commit is spending its reserve, so data written now
/// may use it (it was accounted for when the blocks were buffered).
pub(crate) fn flush_buffer<E: TxnEnv>(
    env: &E,
    t: &mut Txn,
    ino: u64,
    forget_last: bool,
    committing: bool,
) -> Result<()> {
    let bs = env.io().layout.block_size as usize;
    let buf = match t.inodes.get_mut(&ino) {
        Some(st) => std::mem::take(&mut st.buf),
        None => return Ok(()),
    };
    t.buffered_bytes = t.buffered_bytes.saturating_sub(buf.len() * bs);
    // Group consecutive blocks into runs written with one request each.
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    for (lb, data) in buf {
        match runs.last_mut() {
            Some((s, v)) if *s + (v.len() / bs) as u64 == lb && v.len() < (4 << 20) => {
                v.extend_from_slice(&data)
            }
            _ => runs.push((lb, data)),
        }
    }
    if forget_last {
        runs.pop();
    }
    let refs: Vec<(u64, &[u8])> = runs.iter().map(|(lb, d)| (*lb, d.as_slice())).collect();
    let (res, mapped) = write_runs(env, t, ino, &refs, committing);
    if res.is_err() {
        // What was not written stays buffered: those writes were accepted.
        if let Some(st) = t.inodes.get_mut(&ino) {
            let mut back = 0;
            for ((lb, data), m) in runs.iter().zip(&mapped) {
                for (i, b) in data.chunks(bs).enumerate().skip(*m as usize) {
                    if st.buf.insert(lb + i as u64, b.to_vec()).is_none() {
                        back += bs;
                    }
                }
            }
            t.buffered_bytes += back;
        }
    }
    res
}

/// Current content of file block `lb` (for a read-modify-write).
pub(crate) fn load_block<E: TxnEnv>(env: &E, t: &mut Txn, ino: u64, lb: u64) -> Result<Vec<u8>> {
    let io = env.io().clone();
    let bs = io.layout.block_size as u64;
    let verify = env.verify_reads();
    let st = state(t, &io, ino)?;
    if let Some(b) = st.buf.get(&lb) {
        return Ok(b.clone());
    }
    let mut v = vec![0u8; bs as usize];
    if lb * bs < st.inode.size {
        data::read_at(&io, &st.ext, None, st.inode.size, lb * bs, &mut v, verify)?;
    }
    Ok(v)
}
