//! The root ring: N root slots, one block each, right after the primary
//! superblock. Commit `g` writes slot `g mod N`, so the last N committed
//! generations are all on disk and the newest one is never overwritten by the
//! next commit.
//!
//! Why it survives power loss: a slot is written only after a barrier that
//! orders it behind every block it points to, and it carries a BLAKE2b-256
//! checksum, the filesystem UUID and its generation. A torn or garbage slot
//! fails its checksum and is skipped; a slot left over from an earlier format
//! fails the UUID test; a slot whose trees do not verify (its blocks were
//! never written) is skipped too. Mount takes the newest slot that passes all
//! of this and falls back to older ones, so no single bad write is fatal.
//!
//! ```text
//! offset  size  field
//! ------  ----  -----------------------------------------------------------
//!      0     8  magic "NOTAFSRT"
//!      8     8  generation (>= 1; must be slot index mod N)
//!     16    16  filesystem UUID
//!     32     8  commit time, nanoseconds since the Unix epoch
//!     40     8  file table root: block (0 = empty table)
//!     48     4  file table root: CRC-32C of the node
//!     52     1  file table height (0 = empty, else levels)
//!     53     3  reserved (0)
//!     56     8  free-space list head: block (0 = none)
//!     64     4  free-space list head: CRC-32C of the node
//!     68     4  free-space list length, in nodes
//!     72     8  next inode number
//!     80     8  number of inodes (files and directories, root excluded)
//!     88     8  blocks in use (nodes, data, superblocks, ring)
//!     96     8  blocks free now
//!    104     8  blocks freed but held for older generations (pending)
//!    112     4  commit log length L, in entries (0 = no log; only with
//!                 the commit-log incompat feature)
//!    116     4  free-space delta length D, in entries (0 = none; only with
//!                 the free-delta incompat feature; at most 160)
//!    120    32  BLAKE2b-256 of the tail, bytes 256..256+12L+24D+40P
//!                 (zeros when L = D = P = 0)
//!    152     4  inode patch count P (0 = none; only with the inode-patch
//!                 incompat feature; at most 32)
//!    156    68  reserved (0)
//!    224    32  BLAKE2b-256 of bytes 0..224
//!    256   12L  commit log: L entries of
//!                 0  8  block address; with the log-runs incompat
//!                         feature, a run: bits 0..40 first block,
//!                         bits 40..64 blocks in the run minus 1
//!                 8  4  CRC-32C of that block's bytes; with log runs,
//!                         CRC-32C of the run's per-block CRC-32Cs
//!                         (each 4 bytes little-endian, in block order)
//!  256+12L 24D  free-space delta: D entries of
//!                 0  8  first block
//!                 8  8  length in blocks (>= 1)
//!                16  8  tag: 0 free, g pending (freed by commit g),
//!                         u64::MAX in use
//!  ..+24D   40P  inode patches (inode_patch.rs): P entries
//! ```
//!
//! The free-space delta (feature `INCOMPAT_FREE_DELTA`): the free-space list
//! a slot names is the *base* list, written by an earlier commit, and the
//! delta lists the ranges whose state changed since (sorted by start,
//! disjoint). The generation's free space is the base with every delta range
//! set to the delta's tag. A small commit writes only the slot, not a new
//! list: the list is rewritten (a new base, D = 0) only when the delta no
//! longer fits. The base list's nodes stay in use while a slot names them,
//! and are freed by the commit that writes the next base, so the reuse rule
//! protects them for every retained slot that still names them.
//!
//! The commit log (feature `INCOMPAT_COMMIT_LOG`): a small commit writes its
//! blocks *and* its root slot in one flush epoch, with no barrier between
//! them, and lists in the slot every block it wrote with the block's
//! CRC-32C. A power cut can then leave the slot without some of those blocks;
//! so open checks the log of the newest decodable slot (reading every block
//! listed) and treats a slot whose log does not verify as a commit that
//! never completed: not damage, and the previous generation is the newest.
//! Only the newest slot needs this: commit g+1 starts after commit g's flush
//! returned, so a slot with a newer slot beside it is durable with all its
//! blocks. The log lists only blocks the new root references (the
//! allocator's `fresh` set at commit), so no later write can change a
//! listed block while the slot is the newest. Large commits (more blocks
//! than fit in the slot) keep the barrier protocol and an empty log.
//!
//! Log runs (feature `INCOMPAT_LOG_RUNS`): an entry names a run of
//! contiguous blocks instead of one block, so a commit whose blocks are
//! scattered over many tree nodes but allocated in a few runs (random
//! overwrites: hundreds of data blocks and extent leaves) still fits in one
//! slot and takes one flush. The run's check value is the CRC-32C of the
//! CRC-32Cs of its blocks: open reads every block of the run, as for
//! single-block entries, so a block that missed the flush fails it exactly
//! as it failed its own entry (a differing block changes its CRC-32C, and a
//! CRC-32C over 4-byte values detects any single changed value). A log
//! lists at most [`LOG_BYTES_MAX`] of blocks, which bounds what open reads
//! to verify it; larger commits keep the barrier protocol. An entry whose
//! first block would not fit in 40 bits is never written as a run (such
//! commits keep the barrier protocol); without the feature the whole 8
//! bytes are the block address, and every entry is one block.
use crate::checksum::blake;
use crate::codec::{le32, le64};
use crate::inode_patch::{InodePatch, Patches, PATCH_ENTRY_LEN, PATCH_MAX};
use crate::node::Ptr;
use crate::{Error, Result};

pub const SLOT_MAGIC: [u8; 8] = *b"NOTAFSRT";
const SLOT_CHECKSUM_OFFSET: usize = 224;
pub const SLOT_LEN: usize = 256;
const LOG_LEN_OFFSET: usize = 112;
const DELTA_LEN_OFFSET: usize = 116;
const LOG_DIGEST_OFFSET: usize = 120;
const PATCH_LEN_OFFSET: usize = 152;
/// Size of one free-space delta entry, and the most a slot carries.
pub const DELTA_ENTRY_LEN: usize = 24;
pub const DELTA_MAX: usize = 160;
/// Where the commit log starts, and the size of one entry.
pub const LOG_OFFSET: usize = 256;
pub const LOG_ENTRY_LEN: usize = 12;
/// Log runs: bits of the first block, and the most blocks in one run.
pub const RUN_START_BITS: u32 = 40;
pub const RUN_MAX_BLOCKS: u64 = 1 << 24;
/// The most bytes of blocks one commit log lists (what open reads to
/// verify the newest slot).
pub const LOG_BYTES_MAX: u64 = 16 << 20;

/// One commit-log entry: `count` contiguous blocks from `start` and their
/// check value (the block's CRC-32C when `count` is 1 without log runs;
/// with log runs, [`run_check`] of the blocks' CRC-32Cs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRun {
    pub start: u64,
    pub count: u64,
    pub check: u32,
}

/// The check value of a log run: CRC-32C over the run's per-block
/// CRC-32Cs, each as 4 little-endian bytes, in block order.
pub fn run_check(crcs: impl IntoIterator<Item = u32>) -> u32 {
    crcs.into_iter()
        .fold(0, |acc, c| crc32c::crc32c_append(acc, &c.to_le_bytes()))
}

/// Commit-log entries that fit beside a free-space delta of `delta`
/// entries and `patches` inode patches.
pub fn log_capacity_with(block_size: u32, delta: usize, patches: usize) -> usize {
    (block_size as usize)
        .saturating_sub(LOG_OFFSET + delta * DELTA_ENTRY_LEN + patches * PATCH_ENTRY_LEN)
        / LOG_ENTRY_LEN
}

/// Inode patches a slot of `block_size` bytes can hold (with nothing else
/// in its tail).
pub fn patch_capacity(block_size: u32) -> usize {
    ((block_size as usize).saturating_sub(LOG_OFFSET) / PATCH_ENTRY_LEN).min(PATCH_MAX)
}

/// Free-space delta entries a slot of `block_size` bytes can hold beside
/// `patches` inode patches.
pub fn delta_capacity(block_size: u32, patches: usize) -> usize {
    ((block_size as usize).saturating_sub(LOG_OFFSET + patches * PATCH_ENTRY_LEN) / DELTA_ENTRY_LEN)
        .min(DELTA_MAX)
}

/// The free-space delta of a root slot (see the module comment): kept
/// inline so that a slot stays a plain `Copy` value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FreeDelta {
    len: u16,
    e: [(u64, u64, u64); DELTA_MAX],
}

impl Default for FreeDelta {
    fn default() -> Self {
        FreeDelta {
            len: 0,
            e: [(0, 0, 0); DELTA_MAX],
        }
    }
}

impl std::fmt::Debug for FreeDelta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FreeDelta({} entries)", self.len)
    }
}

impl FreeDelta {
    /// A delta of `v`, or None when it has more than [`DELTA_MAX`] entries.
    pub fn new(v: &[(u64, u64, u64)]) -> Option<FreeDelta> {
        if v.len() > DELTA_MAX {
            return None;
        }
        let mut d = FreeDelta::default();
        d.e[..v.len()].copy_from_slice(v);
        d.len = v.len() as u16;
        Some(d)
    }

    pub fn entries(&self) -> &[(u64, u64, u64)] {
        &self.e[..self.len as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The block holding the root slot of generation `g`: slot `g mod N` of
/// the ring. The only place the slot address is computed.
pub fn slot_address(sb: &crate::superblock::Superblock, g: u64) -> u64 {
    sb.ring_start + g % sb.ring_slots as u64
}

/// A root of one committed generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RootSlot {
    pub generation: u64,
    pub uuid: [u8; 16],
    pub time_ns: u64,
    pub files: Ptr,
    pub files_height: u8,
    pub freelist: Ptr,
    pub freelist_nodes: u32,
    pub next_ino: u64,
    pub inode_count: u64,
    pub used_blocks: u64,
    pub free_blocks: u64,
    pub pending_blocks: u64,
    /// Entries in the commit log (0: written behind a barrier).
    pub log_len: u32,
    /// Free-space changes since the base list `freelist` (empty: the list
    /// is this generation's own).
    pub delta: FreeDelta,
    /// New extent roots, sizes and mtimes of inodes changed since the file
    /// table `files` was written (inode_patch.rs).
    pub patches: Patches,
}

impl RootSlot {
    /// Encode into one block of `block_size` bytes, without a commit log.
    pub fn encode(&self, block_size: u32) -> Vec<u8> {
        let mut s = *self;
        s.log_len = 0;
        s.encode_with_log(block_size, &[])
    }

    /// Encode with the commit log `log` and the slot's free-space delta;
    /// the caller keeps `log.len()` within [`log_capacity_with`] the delta
    /// (the delta always fits: it is only used when it does), and writes
    /// runs longer than one block only on filesystems with log runs, with
    /// `start` below 2^40.
    pub fn encode_with_log(&self, block_size: u32, log: &[LogRun]) -> Vec<u8> {
        let mut b = vec![0u8; block_size as usize];
        let patches =
            &self.patches.entries()[..self.patches.entries().len().min(patch_capacity(block_size))];
        let delta = &self.delta.entries()[..self
            .delta
            .entries()
            .len()
            .min(delta_capacity(block_size, patches.len()))];
        let n = log
            .len()
            .min(log_capacity_with(block_size, delta.len(), patches.len()));
        for (i, r) in log[..n].iter().enumerate() {
            let o = LOG_OFFSET + i * LOG_ENTRY_LEN;
            debug_assert!(r.count >= 1 && r.count <= RUN_MAX_BLOCKS);
            debug_assert!(r.count == 1 || r.start >> RUN_START_BITS == 0);
            // A one-block run is encoded as its bare address: the entry of
            // a filesystem without log runs.
            let packed = r.start | (r.count - 1) << RUN_START_BITS;
            b[o..o + 8].copy_from_slice(&packed.to_le_bytes());
            b[o + 8..o + 12].copy_from_slice(&r.check.to_le_bytes());
        }
        let d0 = LOG_OFFSET + n * LOG_ENTRY_LEN;
        for (i, (s, l, t)) in delta.iter().enumerate() {
            let o = d0 + i * DELTA_ENTRY_LEN;
            b[o..o + 8].copy_from_slice(&s.to_le_bytes());
            b[o + 8..o + 16].copy_from_slice(&l.to_le_bytes());
            b[o + 16..o + 24].copy_from_slice(&t.to_le_bytes());
        }
        let p0 = d0 + delta.len() * DELTA_ENTRY_LEN;
        for (i, p) in patches.iter().enumerate() {
            let o = p0 + i * PATCH_ENTRY_LEN;
            p.encode(&mut b[o..o + PATCH_ENTRY_LEN]);
        }
        b[LOG_LEN_OFFSET..LOG_LEN_OFFSET + 4].copy_from_slice(&(n as u32).to_le_bytes());
        b[DELTA_LEN_OFFSET..DELTA_LEN_OFFSET + 4]
            .copy_from_slice(&(delta.len() as u32).to_le_bytes());
        b[PATCH_LEN_OFFSET..PATCH_LEN_OFFSET + 4]
            .copy_from_slice(&(patches.len() as u32).to_le_bytes());
        let tail_end = p0 + patches.len() * PATCH_ENTRY_LEN;
        if tail_end > LOG_OFFSET {
            let d = blake(&b[LOG_OFFSET..tail_end]);
            b[LOG_DIGEST_OFFSET..LOG_DIGEST_OFFSET + 32].copy_from_slice(&d);
        }
        b[0..8].copy_from_slice(&SLOT_MAGIC);
        b[8..16].copy_from_slice(&self.generation.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        b[32..40].copy_from_slice(&self.time_ns.to_le_bytes());
        b[40..48].copy_from_slice(&self.files.block.to_le_bytes());
        b[48..52].copy_from_slice(&self.files.crc.to_le_bytes());
        b[52] = self.files_height;
        b[56..64].copy_from_slice(&self.freelist.block.to_le_bytes());
        b[64..68].copy_from_slice(&self.freelist.crc.to_le_bytes());
        b[68..72].copy_from_slice(&self.freelist_nodes.to_le_bytes());
        b[72..80].copy_from_slice(&self.next_ino.to_le_bytes());
        b[80..88].copy_from_slice(&self.inode_count.to_le_bytes());
        b[88..96].copy_from_slice(&self.used_blocks.to_le_bytes());
        b[96..104].copy_from_slice(&self.free_blocks.to_le_bytes());
        b[104..112].copy_from_slice(&self.pending_blocks.to_le_bytes());
        let sum = blake(&b[..SLOT_CHECKSUM_OFFSET]);
        b[SLOT_CHECKSUM_OFFSET..SLOT_CHECKSUM_OFFSET + 32].copy_from_slice(&sum);
        b
    }

    /// Decode slot `index` of a ring of `slots`; `Err` explains why the slot
    /// is unusable (empty, torn, foreign, absurd). Pointers are range-checked
    /// by the caller, who knows the device.
    pub fn decode(b: &[u8], index: u32, slots: u32, uuid: &[u8; 16]) -> Result<RootSlot> {
        if b.len() < SLOT_LEN {
            return Err(Error::corrupt("root slot shorter than 256 bytes"));
        }
        if b[0..8] != SLOT_MAGIC {
            return Err(if b[..SLOT_LEN].iter().all(|&c| c == 0) {
                Error::corrupt("empty")
            } else {
                Error::corrupt("bad magic (garbage or torn write)")
            });
        }
        if blake(&b[..SLOT_CHECKSUM_OFFSET])[..]
            != b[SLOT_CHECKSUM_OFFSET..SLOT_CHECKSUM_OFFSET + 32]
        {
            return Err(Error::corrupt("checksum mismatch (torn or damaged write)"));
        }
        let s = RootSlot {
            generation: le64(b, 8),
            uuid: b[16..32].try_into().map_err(|_| Error::corrupt("uuid"))?,
            time_ns: le64(b, 32),
            files: Ptr {
                block: le64(b, 40),
                crc: le32(b, 48),
            },
            files_height: b[52],
            freelist: Ptr {
                block: le64(b, 56),
                crc: le32(b, 64),
            },
            freelist_nodes: le32(b, 68),
            next_ino: le64(b, 72),
            inode_count: le64(b, 80),
            used_blocks: le64(b, 88),
            free_blocks: le64(b, 96),
            pending_blocks: le64(b, 104),
            log_len: le32(b, LOG_LEN_OFFSET),
            delta: FreeDelta::default(),
            patches: Patches::default(),
        };
        let mut s = s;
        let d_len = le32(b, DELTA_LEN_OFFSET) as usize;
        let p_len = le32(b, PATCH_LEN_OFFSET) as usize;
        if p_len > patch_capacity(b.len() as u32)
            || d_len > delta_capacity(b.len() as u32, p_len)
            || s.log_len as usize > log_capacity_with(b.len() as u32, d_len, p_len)
        {
            return Err(Error::corrupt(format!(
                "commit log of {}, free-space delta of {d_len} and {p_len} inode patches do not \
                 fit the slot",
                s.log_len
            )));
        }
        if d_len > 0 || p_len > 0 {
            // The delta is part of every reading of this generation (not
            // only of the newest slot, like the log): check the tail here.
            let d0 = LOG_OFFSET + s.log_len as usize * LOG_ENTRY_LEN;
            let p0 = d0 + d_len * DELTA_ENTRY_LEN;
            let end = p0 + p_len * PATCH_ENTRY_LEN;
            if blake(&b[LOG_OFFSET..end])[..] != b[LOG_DIGEST_OFFSET..LOG_DIGEST_OFFSET + 32] {
                return Err(Error::corrupt(
                    "slot tail digest mismatch (torn or damaged write)",
                ));
            }
            let v: Vec<(u64, u64, u64)> = (0..d_len)
                .map(|i| {
                    let o = d0 + i * DELTA_ENTRY_LEN;
                    (le64(b, o), le64(b, o + 8), le64(b, o + 16))
                })
                .collect();
            s.delta =
                FreeDelta::new(&v).ok_or_else(|| Error::corrupt("free-space delta too long"))?;
            let v: Vec<InodePatch> = (0..p_len)
                .map(|i| InodePatch::decode(&b[p0 + i * PATCH_ENTRY_LEN..]))
                .collect();
            s.patches = Patches::new(&v).ok_or_else(|| Error::corrupt("too many inode patches"))?;
        }
        if &s.uuid != uuid {
            return Err(Error::corrupt(
                "UUID differs from the superblock (left over from an earlier format)",
            ));
        }
        if s.generation == 0 || s.generation == u64::MAX {
            return Err(Error::corrupt(format!(
                "absurd generation {}",
                s.generation
            )));
        }
        if s.generation % slots as u64 != index as u64 {
            return Err(Error::corrupt(format!(
                "generation {} does not belong in slot {index}",
                s.generation
            )));
        }
        if (s.files.block == 0) != (s.files_height == 0) {
            return Err(Error::corrupt("file table pointer and height disagree"));
        }
        if s.files_height as usize > crate::btree::MAX_HEIGHT {
            return Err(Error::corrupt(format!(
                "file table height {}",
                s.files_height
            )));
        }
        Ok(s)
    }

    /// The commit log of a slot decoded from `b` (checked against its
    /// digest; `Err` means the slot's log is damaged). `runs`: the
    /// filesystem has log runs (else every entry is one block).
    pub fn decode_log(&self, b: &[u8], runs: bool) -> Result<Vec<LogRun>> {
        let n = self.log_len as usize;
        if n == 0 {
            return Ok(Vec::new());
        }
        let end = LOG_OFFSET + n * LOG_ENTRY_LEN;
        let tail_end = end
            + self.delta.entries().len() * DELTA_ENTRY_LEN
            + self.patches.entries().len() * PATCH_ENTRY_LEN;
        if b.len() < tail_end {
            return Err(Error::corrupt("commit log past the end of the slot"));
        }
        if blake(&b[LOG_OFFSET..tail_end])[..] != b[LOG_DIGEST_OFFSET..LOG_DIGEST_OFFSET + 32] {
            return Err(Error::corrupt("commit log digest mismatch"));
        }
        Ok((0..n)
            .map(|i| {
                let o = LOG_OFFSET + i * LOG_ENTRY_LEN;
                let packed = le64(b, o);
                let check = le32(b, o + 8);
                if runs {
                    LogRun {
                        start: packed & ((1 << RUN_START_BITS) - 1),
                        count: (packed >> RUN_START_BITS) + 1,
                        check,
                    }
                } else {
                    LogRun {
                        start: packed,
                        count: 1,
                        check,
                    }
                }
            })
            .collect())
    }
}
