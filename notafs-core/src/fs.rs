//! The filesystem handle ([`Fs`]): its shared state, accessors, commit,
//! abort, pins and trim. Format and open are in `mount.rs`, the namespace
//! operations in `namespace.rs`, file handles in `file.rs`, the transaction
//! and its write path in `txn.rs`, the durable root swap in `commit.rs`.
//!
//! One writer transaction is open at all times; every change (create, write,
//! rename, remove, ...) goes into it, and [`Fs::commit`] makes all of them
//! durable at once with a single root-slot write. Readers that want committed
//! data take a [`Snapshot`](crate::Snapshot), which never waits for the
//! writer.
//!
//! Commit protocol (see `docs/FORMAT.md`):
//! 1. write buffered file data and every modified tree node to free blocks;
//! 2. write the new free-space list;
//! 3. **barrier**;
//! 4. write root slot `g mod N`;
//! 5. **flush**. Only then does `commit` return Ok.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use notafs_blockdev::BlockDevice;
use tracing::{debug, warn};

use crate::allocator;
use crate::btree::{NodeIo, Tree};
use crate::file_table::EntryKey;
use crate::root_ring::RootSlot;
use crate::superblock::Superblock;
use crate::txn::{Txn, TxnEnv};
use crate::{Error, Result};

pub use crate::options::*;

pub(crate) struct Committed {
    pub slot: RootSlot,
    /// Nodes of the free-space list the slot names (its base list when the
    /// slot carries a delta).
    pub free_list: Vec<u64>,
    /// That list's own entries, before the slot's delta: what the next
    /// commit's delta is computed against.
    pub free_base: Arc<Vec<(u64, u64, u64)>>,
    /// Slots committed through this handle (for `generations`).
    pub recent: Vec<RootSlot>,
}

pub(crate) struct Inner {
    pub dev: Arc<dyn BlockDevice>,
    pub sb: Superblock,
    pub sb_source: u64,
    pub io: NodeIo,
    pub read_only: bool,
    pub committed: RwLock<Committed>,
    pub txn: Mutex<Txn>,
    pub pins: Mutex<BTreeMap<u64, usize>>,
    pub failed: Arc<AtomicBool>,
    pub write_behind: Option<crate::write_behind::WriteBehind>,
    pub cache_bytes: usize,
    pub discard: bool,
    pub slots: Vec<SlotStatus>,
    /// Why writes are refused until fsck has run (see [`Error::NeedsCheck`]).
    pub needs_check: Option<String>,
    /// The caller asked for a read-only open (so `ReadOnly`, not
    /// `NeedsCheck`, is the answer to a write).
    pub asked_read_only: bool,
    /// The newest slot on disk carries no commit log (so damage to its
    /// blocks can never be mistaken for an interrupted commit). False after
    /// a commit-log commit until [`Fs::close`] (or drop) seals it.
    pub sealed: AtomicBool,
    /// Small commits use the one-flush commit-log protocol.
    pub commit_log: AtomicBool,
    /// Generations below this were dropped early for space (their slots
    /// wiped): no longer retained.
    pub dropped_below: std::sync::atomic::AtomicU64,
}

impl Inner {
    /// Seal the newest generation: write a root slot `g+1` naming the same
    /// trees and free list as `g`, without a commit log, and flush. From
    /// then on the newest slot needs no log check, so damage to the blocks
    /// of `g` is reported as damage instead of being taken for a commit cut
    /// short by a power cut. A torn seal leaves `g` newest, whose log still
    /// verifies: nothing is lost. Returns whether a slot was written.
    fn seal(&self) -> Result<bool> {
        if self.read_only
            || self.failed.load(Ordering::SeqCst)
            || self.sealed.load(Ordering::SeqCst)
        {
            return Ok(false);
        }
        let mut c = self.committed.write().unwrap_or_else(|e| e.into_inner());
        let g = crate::fs::next_generation(c.slot.generation)?;
        let slot = RootSlot {
            generation: g,
            time_ns: now_ns(),
            log_len: 0,
            ..c.slot
        };
        let res = crate::commit::write_seal(self.dev.as_ref(), &self.sb, &slot);
        if let Err(e) = res {
            self.failed.store(true, Ordering::SeqCst);
            return Err(e.into());
        }
        c.slot = slot;
        c.recent.push(slot);
        if c.recent.len() > self.sb.ring_slots as usize {
            c.recent.remove(0);
        }
        self.sealed.store(true, Ordering::SeqCst);
        debug!(generation = g, "sealed");
        Ok(true)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.seal() {
            warn!("could not seal the last commit at close: {e} (it stays readable)");
        }
    }
}

/// An open notafs filesystem. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Fs {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Fs {
    /// Turn protocol-breaking faults on or off for the whole process
    /// (crash-harness use only: every filesystem opened afterwards has them).
    #[cfg(feature = "fault-injection")]
    pub fn set_faults(f: crate::faults::Faults) {
        crate::faults::set_faults(f)
    }

    pub(crate) fn faults(&self) -> crate::faults::Faults {
        crate::faults::current_faults()
    }

    pub(crate) fn txn(&self) -> MutexGuard<'_, Txn> {
        self.inner.txn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn io(&self) -> &NodeIo {
        &self.inner.io
    }

    pub(crate) fn verify_reads(&self) -> bool {
        !self.faults().skip_verify
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if let (Some(why), false) = (&self.inner.needs_check, self.inner.asked_read_only) {
            return Err(Error::NeedsCheck(why.clone()));
        }
        if self.inner.read_only {
            return Err(Error::ReadOnly);
        }
        if self.inner.failed.load(Ordering::SeqCst) {
            return Err(Error::Failed);
        }
        Ok(())
    }

    pub(crate) fn check_writable_pub(&self) -> Result<()> {
        self.check_writable()
    }

    /// Bytes of partial blocks buffered before they are written early.
    pub(crate) fn buffer_limit(&self) -> usize {
        self.inner.cache_bytes / 2
    }

    /// Set the commit reserve before allocating data blocks.
    pub(crate) fn reserve_for_data(&self, t: &mut Txn) -> Result<()> {
        let r = self.commit_reserve(t, 0);
        self.set_reserve(t, r);
        Ok(())
    }

    /// Tell the write-behind flusher (if any) about data just written.
    pub(crate) fn note_written(&self, bytes: u64) {
        if let Some(w) = &self.inner.write_behind {
            w.written(bytes);
        }
    }

    pub(crate) fn fail_write<T>(&self, e: Error) -> Result<T> {
        self.fail(e)
    }

    /// Mark the filesystem failed after a device write error.
    pub(crate) fn fail<T>(&self, e: Error) -> Result<T> {
        if let Error::Device(_) = &e {
            self.inner.failed.store(true, Ordering::SeqCst);
            warn!("device failure, refusing further writes: {e}");
        }
        Err(e)
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.inner.sb
    }

    /// The device this filesystem lives on.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.inner.dev
    }

    /// Last committed generation.
    pub fn generation(&self) -> u64 {
        self.committed_slot().generation
    }

    pub(crate) fn committed_slot(&self) -> RootSlot {
        self.inner
            .committed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .slot
    }

    /// Whether the filesystem was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// What each root slot held at open time.
    pub fn slot_status(&self) -> &[SlotStatus] {
        &self.inner.slots
    }

    /// Retained generations, newest first (those whose slot and roots
    /// verified at open, plus commits made since).
    pub fn generations(&self) -> Vec<GenerationInfo> {
        let cur = self.committed_slot();
        let n = self.inner.sb.ring_slots as u64;
        let mut v: Vec<GenerationInfo> = Vec::new();
        let fresh = self
            .inner
            .slots
            .iter()
            .filter_map(|s| match (&s.state, &s.roots_ok) {
                (Ok(r), Some(Ok(()))) => Some(*r),
                _ => None,
            });
        let mut all: BTreeMap<u64, RootSlot> = fresh.map(|r| (r.generation, r)).collect();
        for r in &self
            .inner
            .committed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .recent
        {
            all.insert(r.generation, *r);
        }
        all.insert(cur.generation, cur);
        let dropped = self.inner.dropped_below.load(Ordering::SeqCst);
        for (g, r) in all.iter().rev() {
            if *g > cur.generation || cur.generation - *g >= n || *g < dropped {
                continue;
            }
            v.push(GenerationInfo {
                generation: *g,
                time_ns: r.time_ns,
                inodes: r.inode_count,
                used_blocks: r.used_blocks,
                free_blocks: r.free_blocks,
                pending_blocks: r.pending_blocks,
            });
        }
        v
    }

    /// Space figures (of the transaction in progress).
    pub fn info(&self) -> FsInfo {
        let t = self.txn();
        let free = t.alloc.free.total();
        let pending = t.alloc.pending_total();
        FsInfo {
            superblock: self.inner.sb.clone(),
            generation: self.generation(),
            block_size: self.inner.sb.block_size,
            block_count: self.inner.sb.block_count,
            free_blocks: free,
            pending_blocks: pending,
            used_blocks: self.inner.sb.block_count - free - pending,
            inodes: t.inode_count,
            read_only: self.inner.read_only,
            superblock_source: self.inner.sb_source,
            needs_check: self.inner.needs_check.clone(),
        }
    }

    /// Seal the last commit (see the commit log in `root_ring.rs`): after a
    /// one-flush commit, write a log-free root slot naming the same state.
    /// Done automatically when the last handle is dropped; call it to see
    /// the error. Uncommitted changes stay uncommitted.
    pub fn close(&self) -> Result<()> {
        let mut t = self.txn();
        if self.inner.seal()? {
            self.release(&mut t)?;
        }
        Ok(())
    }

    /// Use the one-flush commit-log protocol for small commits (the default
    /// on filesystems with the feature), or always the barrier protocol.
    /// A handle that commits once and closes (a command-line tool) gains
    /// nothing from the log: the seal at close costs the flush it saved and
    /// one more root slot, so the tools turn it off.
    pub fn set_commit_log(&self, on: bool) {
        self.inner.commit_log.store(on, Ordering::Relaxed);
    }

    /// Whether the transaction holds uncommitted changes.
    pub fn has_changes(&self) -> bool {
        self.txn().changed
    }

    // ----- namespace -------------------------------------------------------

    // ----- commit ----------------------------------------------------------

    /// Blocks a commit may need beyond what is already reserved: nodes made
    /// dirty so far, the file table path, the free list, and `extra` nodes.
    pub(crate) fn commit_reserve(&self, t: &Txn, extra: u64) -> u64 {
        let l = &self.inner.io.layout;
        // Buffered partial blocks get their device blocks at commit.
        let buffered = self.buffered_cost((t.buffered_bytes / l.block_size as usize) as u64);
        // Buffered blocks are mapped at the commit: each may dirty an
        // extent leaf then, at most one per leaf the file can have (an
        // extent entry takes at most ~32 bytes, leaves may be half full),
        // plus the branches above them (a fraction of that: fan-out > 32)
        // and one path.
        let per_leaf = (l.payload() / 64).max(1) as u64;
        let dirty: usize = t.files.dirty_nodes
            + t.inodes
                .values()
                .map(|s| {
                    let leaves = (s.inode.size / l.block_size as u64) / per_leaf + 1;
                    let buffered = (s.buf.len() as u64).min(leaves) as usize;
                    s.ext.dirty_nodes + 2 + buffered + buffered / 32 + s.ext.height as usize
                })
                .sum::<usize>();
        let per = allocator::entries_per_node(l) as u64;
        let list_entries = t.alloc.free.extents() as u64
            + t.alloc
                .pending
                .values()
                .map(|s| s.extents() as u64)
                .sum::<u64>()
            + t.alloc.freed.extents() as u64
            + 8;
        let list_nodes = list_entries.div_ceil(per) + 1;
        let height = t.files.height as u64 + 1;
        // Writing the inode patches into the table copies up to one leaf
        // path per patched inode.
        let patched = t.files.patch.as_ref().map_or(0, |p| p.len() as u64) * height;
        (dirty as u64 + list_nodes + 2 * height + patched + 8 + extra) * l.node_blocks + buffered
    }

    /// Blocks of the reserve for `blocks` data blocks the commit allocates
    /// (buffered ones) before its nodes. With nodes of one block, one
    /// each. With nodes of `nb` > 1 blocks, taking k blocks at offset a of
    /// a free extent of l blocks can cost it l/nb - a/nb - (l-a-k)/nb <=
    /// ceil(k/nb) + 1 <= 2k node places, which the nodes allocated after
    /// would miss: two nodes' worth each.
    fn buffered_cost(&self, blocks: u64) -> u64 {
        let nb = self.inner.io.layout.node_blocks;
        if nb <= 1 {
            blocks
        } else {
            blocks * 2 * nb
        }
    }

    /// Make `r` blocks the commit reserve, counted in places for whole
    /// nodes (the allocator's invariant at `Allocator::reserve`).
    fn set_reserve(&self, t: &mut Txn, r: u64) {
        t.alloc.free.set_unit(self.inner.io.layout.node_blocks);
        t.alloc.reserve = r;
    }

    /// Refuse to buffer `extra_buffered` more blocks (written at the
    /// commit) if the commit could then not allocate everything it needs.
    pub(crate) fn reserve_check_pub(&self, t: &mut Txn, extra_buffered: u64) -> Result<()> {
        let r = self.commit_reserve(t, 0) + self.buffered_cost(extra_buffered);
        self.reserve_check_blocks(t, r)
    }

    /// Free blocks the commit reserve can count on: those in places for
    /// whole nodes (all of them when a node is one block; a one-block hole
    /// holds no two-block node, and a reserve counted in blocks would let
    /// a fragmented, nearly full device accept writes whose commit then
    /// finds no place for its nodes).
    fn usable_free(&self, t: &Txn) -> u64 {
        let nb = self.inner.io.layout.node_blocks;
        if t.alloc.free.unit() == nb {
            return t.alloc.free.units() * nb;
        }
        t.alloc.free.iter().map(|(_, l)| l / nb * nb).sum()
    }

    /// Refuse an operation that would eat into what the commit needs.
    pub(crate) fn reserve_check(&self, t: &mut Txn, extra_nodes: u64) -> Result<()> {
        let r = self.commit_reserve(t, extra_nodes);
        self.reserve_check_blocks(t, r)
    }

    /// Make `r` blocks the reserve; NoSpace if the free places for nodes
    /// (after reclaiming space held for old generations) are fewer. From
    /// then on data allocation keeps them (`Allocator::reserve`).
    fn reserve_check_blocks(&self, t: &mut Txn, r: u64) -> Result<()> {
        self.set_reserve(t, r);
        if self.usable_free(t) < r && !(self.reclaim(t)? && self.usable_free(t) >= r) {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// Make every change since the last commit durable at once. Returns the
    /// new generation. On a device error the filesystem refuses further
    /// writes (reopen it: the last commit is intact); on any other error
    /// (no space for the commit's metadata, damage found on the way) the
    /// transaction is dropped, as by [`Fs::abort`].
    pub fn commit(&self) -> Result<u64> {
        self.check_writable()?;
        let mut t = self.txn();
        match self.commit_locked(&mut t) {
            Ok(g) => Ok(g),
            Err(e @ Error::Device(_)) => self.fail(e),
            Err(e) => {
                // A commit that stopped half way (no space, damage found
                // on the way) has changed the transaction: nodes marked
                // written that never were, inodes moved into patches or
                // the table. Nothing may be committed on top of that: the
                // transaction is dropped (the last committed generation is
                // what remains), or, if even that fails, writes are
                // refused until the filesystem is reopened.
                if let Err(a) = self.abort_locked(&mut t) {
                    self.inner.failed.store(true, Ordering::SeqCst);
                    warn!("commit failed ({e}) and its transaction could not be dropped ({a}): refusing further writes until reopened");
                }
                Err(e)
            }
        }
    }

    fn commit_locked(&self, t: &mut Txn) -> Result<u64> {
        let io = self.io().clone();
        let layout = io.layout;
        let (prev, old_list, old_base) = {
            let c = self
                .inner
                .committed
                .read()
                .unwrap_or_else(|e| e.into_inner());
            (c.slot, c.free_list.clone(), c.free_base.clone())
        };
        let generation = next_generation(prev.generation)?;
        let faults = self.faults();
        t.alloc.reserve = 0;

        // 1. Buffered data, then extent trees into the file table, or into
        // inode patches (inode_patch.rs) when this commit only wrote to
        // files: the file table then stays as it is.
        let inos: Vec<u64> = t.inodes.keys().copied().collect();
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        for ino in &inos {
            crate::txn::flush_buffer(self, t, *ino, faults.forget_last_extent, true)?;
        }
        let patching = self.patchable(t, &prev)?;
        if !patching {
            Self::materialize_patches(t, &io)?;
        }
        let mut new_patches: Vec<crate::inode_patch::InodePatch> = Vec::new();
        for ino in inos {
            let Some(mut st) = t.inodes.remove(&ino) else {
                continue;
            };
            let alloc = &mut t.alloc;
            let ptr = st.ext.write(
                &io,
                generation,
                &mut || alloc.alloc_exact(layout.node_blocks, true),
                &mut out,
            )?;
            for b in std::mem::take(&mut st.ext.freed) {
                t.alloc.free(b, layout.node_blocks)?;
            }
            st.inode.extents = ptr;
            st.inode.extent_height = st.ext.height;
            if patching {
                new_patches.push(crate::inode_patch::InodePatch::of(&st.inode));
            } else {
                t.files.insert(&io, st.key.clone(), st.inode)?;
            }
            Self::drain_freed(t, &layout)?;
        }
        t.buffered_bytes = 0;
        let mut patches = crate::inode_patch::Patches::default();
        if patching {
            let mut map: crate::inode_patch::PatchMap =
                t.files.patch.as_deref().cloned().unwrap_or_default();
            if faults.patch_drops_inode {
                new_patches.pop();
            }
            for p in new_patches {
                map.insert(p.ino, p);
            }
            let v: Vec<crate::inode_patch::InodePatch> = map.values().copied().collect();
            match crate::inode_patch::Patches::new(&v)
                .filter(|_| v.len() <= crate::root_ring::patch_capacity(layout.block_size))
            {
                Some(p) => {
                    patches = p;
                    t.files.patch = Some(std::sync::Arc::new(map));
                }
                None => {
                    // Too many files written since the table was: write
                    // them all into it.
                    t.files.patch = Some(std::sync::Arc::new(map));
                    Self::materialize_patches(t, &io)?;
                }
            }
        }
        Self::drain_freed(t, &layout)?;
        let alloc = &mut t.alloc;
        let files_root = t.files.write(
            &io,
            generation,
            &mut || alloc.alloc_exact(layout.node_blocks, true),
            &mut out,
        )?;

        // 2-6. The free space (a delta against the list the last slot names,
        // or a new list that frees it), the nodes, barrier, root slot,
        // flush: commit.rs.
        let written = crate::commit::write_generation(
            self.inner.dev.as_ref(),
            &self.inner.sb,
            &mut t.alloc,
            crate::commit::NewRoot {
                generation,
                time_ns: now_ns(),
                files: files_root,
                files_height: t.files.height,
                next_ino: t.next_ino,
                inode_count: t.inode_count,
                patches,
            },
            &mut out,
            (!t.data_crcs_overflow && self.inner.commit_log.load(Ordering::Relaxed))
                .then_some(&t.data_crcs),
            Some(crate::commit::ListBase {
                head: prev.freelist,
                nodes: &old_list,
                entries: &old_base,
            }),
            crate::commit::CommitFaults {
                skip_barrier: faults.skip_barrier,
                root_before_data: faults.root_before_data,
                reuse_freed_immediately: faults.reuse_freed_immediately,
                log_omits_data: faults.log_omits_data,
                log_run_first_block_only: faults.log_run_first_block_only,
                delta_drops_range: faults.delta_drops_range,
            },
        )?;
        t.data_crcs.clear();
        t.data_crcs_overflow = false;
        let slot = written.slot;
        let list_blocks = written.free_list;
        let new_base = written.new_base;
        self.inner.sealed.store(slot.log_len == 0, Ordering::SeqCst);
        let (free, pending) = (slot.free_blocks, slot.pending_blocks);

        // Durable: publish and prepare the next transaction.
        {
            let mut c = self
                .inner
                .committed
                .write()
                .unwrap_or_else(|e| e.into_inner());
            c.slot = slot;
            c.free_list = list_blocks;
            if let Some(b) = new_base {
                c.free_base = Arc::new(b);
            }
            let n = self.inner.sb.ring_slots as usize;
            c.recent.push(slot);
            if c.recent.len() > n {
                c.recent.remove(0);
            }
        }
        let freed = std::mem::take(&mut t.alloc.freed);
        if !freed.is_empty() {
            t.alloc.pending.insert(generation, freed);
        }
        t.alloc.fresh = allocator::ExtentSet::new();
        self.release(t)?;
        t.base_alloc = t.alloc.clone();
        t.changed = false;
        debug!(generation, free, pending, "committed");
        Ok(generation)
    }

    /// Whether this commit can leave the file table as it is and carry the
    /// changed inodes as patches: the feature is on, the transaction
    /// changed no directory entry, inode count or attribute, only the
    /// extents, size and mtime of existing files.
    fn patchable(&self, t: &Txn, prev: &crate::root_ring::RootSlot) -> Result<bool> {
        if self.inner.sb.incompat & crate::superblock::INCOMPAT_INODE_PATCH == 0
            || t.files.is_dirty()
            || t.next_ino != prev.next_ino
            || t.inode_count != prev.inode_count
        {
            return Ok(false);
        }
        let io = self.io();
        for st in t.inodes.values() {
            match t.files.get(io, &st.key)? {
                Some(i)
                    if i.ino == st.inode.ino
                        && i.kind == crate::file_table::FileType::File
                        && st.inode.kind == i.kind
                        && st.inode.mode == i.mode
                        && st.inode.owner == i.owner => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Write the inode patches the file table carries into it (one scan of
    /// the table finds their entries) and drop them, so that what the
    /// commit inserts next is what readers see.
    fn materialize_patches(t: &mut Txn, io: &NodeIo) -> Result<()> {
        let Some(map) = t.files.patch.clone() else {
            return Ok(());
        };
        let mut found: Vec<(EntryKey, crate::file_table::Inode)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        t.files.scan(io, None, &mut |k, v| {
            if map.contains_key(&v.ino) {
                if !seen.insert(v.ino) {
                    return Err(Error::corrupt(format!(
                        "inode {} has two entries in the file table",
                        v.ino
                    )));
                }
                found.push((k.clone(), *v));
            }
            Ok(seen.len() < map.len())
        })?;
        // Removing an entry drops its inode's patch (btree.rs), so every
        // patch left names an entry; one that does not is damage, and
        // dropping it would bring back the table's stale extent root.
        if let Some(ino) = map.keys().find(|i| !seen.contains(*i)) {
            return Err(Error::corrupt(format!(
                "the root slot patches inode {ino}, which is not in the file table"
            )));
        }
        t.files.patch = None;
        for (k, v) in found {
            t.files.insert(io, k, v)?;
        }
        // The table nodes those inserts copied are freed by this commit.
        Self::drain_freed(t, &io.layout)
    }

    /// Drop every change since the last commit.
    pub fn abort(&self) -> Result<()> {
        let mut t = self.txn();
        self.abort_locked(&mut t)
    }

    fn abort_locked(&self, t: &mut Txn) -> Result<()> {
        let slot = self.committed_slot();
        t.files = Tree::from_slot(&slot)?;
        t.next_ino = slot.next_ino;
        t.inode_count = slot.inode_count;
        t.alloc = t.base_alloc.clone();
        t.inodes.clear();
        t.buffered_bytes = 0;
        t.data_crcs.clear();
        t.data_crcs_overflow = false;
        t.changed = false;
        // Handles whose file no longer exists (created in the aborted
        // transaction) or moved back become stale or follow the old name.
        let io = self.io().clone();
        let handles: Vec<(u64, (EntryKey, usize))> = t.handles.drain().collect();
        for (ino, (key, n)) in handles {
            if let Some(i) = t.files.get(&io, &key)? {
                if i.ino == ino {
                    t.handles.insert(ino, (key, n));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn pin(&self, g: u64) {
        *self
            .inner
            .pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(g)
            .or_insert(0) += 1;
    }

    pub(crate) fn unpin(&self, g: u64) {
        let mut p = self.inner.pins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = p.get_mut(&g) {
            *c -= 1;
            if *c == 0 {
                p.remove(&g);
            }
        }
    }

    /// Discard every free block (those no retained generation references).
    /// Returns the number of blocks discarded.
    pub fn trim(&self) -> Result<u64> {
        self.check_writable()?;
        let t = self.txn();
        let mut n = 0;
        for (s, l) in t.alloc.free.iter() {
            self.inner.dev.discard(s, l)?;
            n += l;
        }
        self.inner.dev.flush()?;
        Ok(n)
    }
}

/// The generation a commit after `g` gets. u64::MAX is never valid on disk
/// (it has no successor), so the generation before it is the last one.
pub(crate) fn next_generation(g: u64) -> Result<u64> {
    g.checked_add(1)
        .filter(|n| *n < u64::MAX)
        .ok_or_else(|| Error::corrupt(format!("generation {g} leaves no room for another commit")))
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Fs>();
}

impl TxnEnv for Fs {
    fn io(&self) -> &NodeIo {
        Fs::io(self)
    }
    fn reserve_for_data(&self, t: &mut Txn) -> Result<()> {
        Fs::reserve_for_data(self, t)
    }
    fn reclaim(&self, t: &mut Txn) -> Result<bool> {
        Fs::reclaim(self, t)
    }
    fn note_written(&self, bytes: u64) {
        Fs::note_written(self, bytes)
    }
    fn fail_write<T>(&self, e: Error) -> Result<T> {
        Fs::fail_write(self, e)
    }
    fn buffer_limit(&self) -> usize {
        Fs::buffer_limit(self)
    }
    fn generation(&self) -> u64 {
        Fs::generation(self)
    }
    fn verify_reads(&self) -> bool {
        Fs::verify_reads(self)
    }
}
