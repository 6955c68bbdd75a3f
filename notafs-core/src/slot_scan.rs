//! The root-ring scan of open: decode every slot, check the commit log of
//! the newest, verify each file-table root and free-space list; and the
//! wipe of a cut-short commit's slot before the first write. I/O errors
//! are returned as errors, never taken for an invalid slot.
use tracing::debug;

use crate::allocator;
use crate::btree::NodeIo;
use crate::fs::{Fs, SlotStatus};
use crate::root_ring::RootSlot;
use crate::superblock::Superblock;
use crate::{Error, Result};

/// How open describes the slot of a one-flush commit cut short.
pub(crate) const RESIDUE: &str = "commit cut short";

impl Fs {
    /// Decode every root slot and verify the roots of the decodable ones.
    /// An I/O error anywhere is returned as an error: it says nothing about
    /// the slot, so it must not make the slot look invalid.
    pub(crate) fn scan_slots(
        io: &NodeIo,
        sb: &Superblock,
    ) -> Result<Vec<(SlotStatus, Option<allocator::FreeList>)>> {
        let bs = sb.block_size as usize;
        let mut ring = vec![0u8; bs * sb.ring_slots as usize];
        io.dev
            .read(sb.ring_start, &mut ring)
            .map_err(|source| Error::Io {
                what: "root ring",
                block: sb.ring_start,
                source,
            })?;
        let mut out = Vec::new();
        let mut states: Vec<std::result::Result<RootSlot, String>> = (0..sb.ring_slots)
            .map(|i| {
                let raw = &ring[i as usize * bs..(i as usize + 1) * bs];
                RootSlot::decode(raw, i, sb.ring_slots, &sb.uuid).map_err(|e| match e {
                    Error::Corrupt(m) => m,
                    e => e.to_string(),
                })
            })
            .collect();
        // The newest decodable slot may come from a one-flush commit that a
        // power cut interrupted: its commit log must verify (root_ring.rs).
        if let Some(i) = (0..states.len())
            .filter(|&i| states[i].is_ok())
            .max_by_key(|&i| states[i].as_ref().map(|s| s.generation).unwrap_or(0))
        {
            let raw = &ring[i * bs..(i + 1) * bs];
            let slot = states[i].clone().map_err(Error::Corrupt)?;
            let runs = sb.incompat & crate::superblock::INCOMPAT_LOG_RUNS != 0;
            match Self::verify_commit_log(io, &slot, raw, runs) {
                Ok(()) => {}
                Err(e) if e.is_io() => return Err(e),
                Err(e) => states[i] = Err(format!("{RESIDUE}: {e}")),
            }
        }
        for (i, state) in states.into_iter().enumerate() {
            let i = i as u32;
            let mut list = None;
            let mut roots_ok = None;
            let mut free_list = None;
            if let Ok(s) = &state {
                roots_ok = Some(match Self::verify_files_root(io, s) {
                    Err(e) if e.is_io() => return Err(e),
                    r => r.map_err(|e| e.to_string()),
                });
                free_list = Some(match Self::read_free_list(io, s) {
                    Err(e) if e.is_io() => return Err(e),
                    Ok(l) => {
                        list = Some(l);
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                });
            }
            out.push((
                SlotStatus {
                    index: i,
                    state,
                    roots_ok,
                    free_list,
                },
                list,
            ));
        }
        Ok(out)
    }

    /// Check the commit log of the newest slot: every block it lists must
    /// hold what the commit wrote. A mismatch means the commit's flush never
    /// completed: the slot is crash residue, not damage.
    /// `runs`: the filesystem has log runs (root_ring.rs).
    pub(crate) fn verify_commit_log(
        io: &NodeIo,
        slot: &RootSlot,
        raw: &[u8],
        runs: bool,
    ) -> Result<()> {
        let f = crate::faults::current_faults();
        if slot.log_len == 0 || f.skip_log_verify || f.skip_verify {
            return Ok(());
        }
        let g = slot.generation;
        let log = slot
            .decode_log(raw, runs)
            .map_err(|e| Error::corrupt(format!("generation {g}: {e}")))?;
        let bs = io.layout.block_size as u64;
        // Validate every entry before reading anything: a hostile slot must
        // not make open read outside the data area or more than a commit
        // ever lists.
        let mut total = 0u64;
        for r in &log {
            if !io.layout.run_in_range(r.start, r.count) {
                return Err(Error::corrupt(format!(
                    "generation {g}: commit log names blocks {}+{} outside the data area",
                    r.start, r.count
                )));
            }
            total += r.count;
        }
        if total > crate::root_ring::LOG_BYTES_MAX / bs {
            return Err(Error::corrupt(format!(
                "generation {g}: commit log lists {total} blocks, more than a commit log may"
            )));
        }
        // Read in batches of at most LOG_READ_BATCH bytes (bounded memory),
        // each run in pieces; per-block CRC-32Cs kept per entry.
        const LOG_READ_BATCH: u64 = 4 << 20;
        let per_batch = (LOG_READ_BATCH / bs).max(1);
        // (entry index, first block, blocks) of every piece, in log order.
        let mut pieces: Vec<(usize, u64, u64)> = Vec::new();
        for (i, r) in log.iter().enumerate() {
            let mut b = r.start;
            let end = r.start + r.count;
            if f.log_run_first_block_only {
                pieces.push((i, b, 1));
                continue;
            }
            while b < end {
                let n = (end - b).min(per_batch);
                pieces.push((i, b, n));
                b += n;
            }
        }
        let mut crcs: Vec<Vec<u32>> = vec![Vec::new(); log.len()];
        let mut k = 0;
        while k < pieces.len() {
            let mut j = k;
            let mut blocks = 0;
            while j < pieces.len() && (j == k || blocks + pieces[j].2 <= per_batch) {
                blocks += pieces[j].2;
                j += 1;
            }
            let mut bufs: Vec<Vec<u8>> = pieces[k..j]
                .iter()
                .map(|p| vec![0u8; (p.2 * bs) as usize])
                .collect();
            {
                let mut reqs: Vec<(u64, &mut [u8])> = pieces[k..j]
                    .iter()
                    .zip(bufs.iter_mut())
                    .map(|(p, buf)| (p.1, buf.as_mut_slice()))
                    .collect();
                io.dev.read_batch(&mut reqs).map_err(|source| Error::Io {
                    what: "commit log block",
                    block: pieces[k].1,
                    source,
                })?;
            }
            for (p, buf) in pieces[k..j].iter().zip(&bufs) {
                crcs[p.0].extend(buf.chunks(bs as usize).map(crate::checksum::crc));
            }
            k = j;
        }
        for (r, c) in log.iter().zip(crcs) {
            let ok = if runs {
                crate::root_ring::run_check(c) == r.check
            } else {
                c.first() == Some(&r.check)
            };
            if !ok {
                return Err(Error::corrupt(format!(
                    "generation {g}: blocks {}+{} of its commit log do not hold what the \
                     commit wrote (the commit did not complete before a power cut)",
                    r.start, r.count
                )));
            }
        }
        Ok(())
    }

    /// Verify the file-table root a slot points to.
    pub(crate) fn verify_files_root(io: &NodeIo, s: &RootSlot) -> Result<()> {
        // Inode patches are part of the file table of this generation.
        crate::inode_patch::check_patches(&io.layout, s.patches.entries(), s.next_ino)?;
        if !s.files.is_null() {
            io.read_raw(
                s.files,
                crate::node::KIND_FILES,
                Some(s.files_height - 1),
                0,
            )?;
        }
        Ok(())
    }

    /// Read a slot's free-space list and check that it can describe this
    /// device (no more blocks than exist, no overlaps).
    pub(crate) fn read_free_list(io: &NodeIo, s: &RootSlot) -> Result<allocator::FreeList> {
        let list = allocator::read_slot_list(io, s)?;
        let listed = list.entries.iter().fold(0u64, |a, e| a.saturating_add(e.1));
        if listed > io.layout.data_end - io.layout.data_start {
            return Err(Error::corrupt(format!(
                "free list lists {listed} blocks, the data area has {}",
                io.layout.data_end - io.layout.data_start
            )));
        }
        allocator::allocator_from(&list, 0)?;
        Ok(list)
    }

    /// Zero the slot of a one-flush commit that a power cut interrupted
    /// (its commit log did not verify at open), and flush, before anything
    /// else is written: otherwise a later write that happened to put the
    /// same bytes in its missing blocks would bring that commit back after
    /// newer ones were accepted. Writers call it before their first write.
    pub(crate) fn wipe_residue(&self) -> Result<()> {
        let sb = &self.inner.sb;
        let mut wiped = false;
        for s in &self.inner.slots {
            if matches!(&s.state, Err(e) if e.starts_with(RESIDUE)) {
                let b = sb.ring_start + s.index as u64;
                self.inner
                    .dev
                    .write(b, &vec![0u8; sb.block_size as usize])?;
                wiped = true;
            }
        }
        if wiped {
            self.inner.dev.flush()?;
            debug!("wiped the root slot of a commit cut short");
        }
        Ok(())
    }
}
