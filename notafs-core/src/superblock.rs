//! The superblock: the immutable parameters of a filesystem.
//!
//! Two copies, one in the first block and one in the last block of the
//! device. They are written once by `format` (and by fsck when it restores a
//! damaged copy) and never change afterwards, so a crash can at worst damage
//! one copy while it is being written, and the other one survives. Each copy
//! carries its own block address: a copy read from the wrong place (a
//! misdirected write, a shifted image) is rejected.
//!
//! ```text
//! offset  size  field
//! ------  ----  -----------------------------------------------------------
//!      0     8  magic  "NOTAFS\0\x01"
//!      8     4  format major version (1)
//!     12     4  format minor version (0)
//!     16     8  compat feature flags      (unknown bits: ignored;
//!                 bit 0 = inode attributes, see file_table.rs)
//!     24     8  ro_compat feature flags   (unknown bits: mount read-only)
//!     32     8  incompat feature flags    (unknown bits: refuse to mount;
//!                 bit 0 = commit log, see root_ring.rs)
//!     40    16  filesystem UUID
//!     56     4  block size B, bytes (power of two, 512..=65536)
//!     60     4  node size, bytes (multiple of B, >= 4096)
//!     64     8  block count of the filesystem
//!     72     8  address of this copy (block number)
//!     80     8  first block of the root ring
//!     88     4  number of root slots N (2..=64)
//!     92     1  data checksum algorithm   (1 = CRC-32C)
//!     93     1  node checksum algorithm   (1 = CRC-32C)
//!     94     1  root checksum algorithm   (2 = BLAKE2b-256)
//!     95     1  reserved (0)
//!     96     8  creation time, seconds since the Unix epoch
//!    104    64  label, UTF-8, NUL padded
//!    168    56  reserved (0)
//!    224    32  BLAKE2b-256 of bytes 0..224
//!    256   B-256 zero
//! ```
use crate::checksum::blake;
use crate::codec::{le32, le64};
use crate::{Error, Result};

pub const MAGIC: [u8; 8] = *b"NOTAFS\0\x01";

/// The erase mark: block 0 of a device whose filesystem is being replaced
/// by `mkfs` (the mark, then zeros to the end of the block).
///
/// ```text
/// offset  size  field
/// ------  ----  -----------------------------------------------------------
///      0    16  "NOTAFS-ERASED\0\0\0"
///     16   B-16 zero
/// ```
///
/// Why it exists: a primary superblock that does not decode normally makes
/// `open` fall back to the backup copy (bit rot or a lost write in block 0
/// must not lose a filesystem). But `mkfs` over an old filesystem destroys
/// it on purpose, over several flush epochs (discard, wipe, new ring, new
/// superblocks): a power cut in between would leave the old backup, the old
/// ring and half-discarded data, which the fallback would open as a damaged
/// old filesystem. `mkfs` therefore first writes this mark over block 0 and
/// flushes (one atomic block write: the old filesystem is intact or gone),
/// and never touches block 0 again until the new primary superblock, the
/// last write of the format. A device whose block 0 carries the mark is not
/// a filesystem, whatever the backup says.
pub const ERASED_MAGIC: [u8; 16] = *b"NOTAFS-ERASED\0\0\0";

/// The erase mark, padded to a block of `block_size` bytes.
pub fn erase_mark(block_size: usize) -> Vec<u8> {
    let mut b = vec![0u8; block_size];
    b[..ERASED_MAGIC.len()].copy_from_slice(&ERASED_MAGIC);
    b
}

/// Whether `block` (block 0 as read) carries the erase mark.
pub fn is_erase_mark(block: &[u8]) -> bool {
    block.starts_with(&ERASED_MAGIC)
}
pub const VERSION_MAJOR: u32 = 1;
pub const VERSION_MINOR: u32 = 0;
/// Bytes of the superblock that are meaningful (the rest of the block is zero).
pub const SUPERBLOCK_LEN: usize = 256;
const CHECKSUM_OFFSET: usize = 224;
pub const LABEL_LEN: usize = 64;

pub const ALGO_CRC32C: u8 = 1;
pub const ALGO_BLAKE2B256: u8 = 2;

/// Incompat feature: small commits use the one-flush protocol, their root
/// slot carrying a commit log (root_ring.rs). A reader that did not verify
/// the log could accept a root whose blocks never reached the disk, so an
/// older reader must refuse the filesystem.
pub const INCOMPAT_COMMIT_LOG: u64 = 1 << 0;

/// Incompat feature: a root slot may name an older free-space list (its
/// base) plus a delta of the ranges that changed since (root_ring.rs), so a
/// small commit does not rewrite the whole list. A reader that ignored the
/// delta would take blocks in use for free, so an older reader must refuse.
pub const INCOMPAT_FREE_DELTA: u64 = 1 << 1;

/// Incompat feature: a root slot may carry inode patches (new extent root,
/// size, mtime of files written since the file table was), so a small
/// commit does not rewrite the file table (inode_patch.rs). A reader that
/// ignored them would follow extent roots that no longer exist.
pub const INCOMPAT_INODE_PATCH: u64 = 1 << 2;

/// Incompat feature: a commit-log entry may name a run of contiguous
/// blocks, checked by the CRC-32C of their CRC-32Cs (root_ring.rs, "Log
/// runs"), so commits of many blocks still take one flush. A reader that
/// took a run for one block would verify only its first block and accept a
/// commit whose other blocks never reached the disk, so an older reader
/// must refuse.
pub const INCOMPAT_LOG_RUNS: u64 = 1 << 3;

/// Compat feature: inodes may carry permission bits and an owner in bytes
/// 10..16 and 44..48 (file_table.rs). Readers that ignore it see default
/// permissions; it changes nothing else.
pub const COMPAT_ATTRS: u64 = 1 << 0;

/// Feature bits known to this version.
pub const COMPAT_KNOWN: u64 = COMPAT_ATTRS;
pub const RO_COMPAT_KNOWN: u64 = 0;
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_COMMIT_LOG | INCOMPAT_FREE_DELTA | INCOMPAT_INODE_PATCH | INCOMPAT_LOG_RUNS;

pub const MIN_ROOT_SLOTS: u32 = 2;
pub const MAX_ROOT_SLOTS: u32 = 64;
pub const MIN_NODE_SIZE: u32 = 4096;

/// The decoded superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub version_major: u32,
    pub version_minor: u32,
    pub compat: u64,
    pub ro_compat: u64,
    pub incompat: u64,
    pub uuid: [u8; 16],
    pub block_size: u32,
    pub node_size: u32,
    pub block_count: u64,
    pub ring_start: u64,
    pub ring_slots: u32,
    pub created: u64,
    pub label: String,
}

impl Superblock {
    /// Blocks per tree node.
    pub fn node_blocks(&self) -> u64 {
        (self.node_size / self.block_size) as u64
    }

    /// First block available for data and metadata.
    pub fn data_start(&self) -> u64 {
        self.ring_start + self.ring_slots as u64
    }

    /// One past the last block available for data and metadata (the last
    /// block of the device holds the backup superblock).
    pub fn data_end(&self) -> u64 {
        self.block_count - 1
    }

    /// Address of the backup copy.
    pub fn backup_address(&self) -> u64 {
        self.block_count - 1
    }

    /// Blocks that are never allocatable: the superblock copies and the ring.
    pub fn reserved_blocks(&self) -> u64 {
        2 + self.ring_slots as u64
    }

    /// Encode the copy that lives at block `address`, padded to one block.
    pub fn encode(&self, address: u64) -> Vec<u8> {
        let mut b = vec![0u8; self.block_size as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version_major.to_le_bytes());
        b[12..16].copy_from_slice(&self.version_minor.to_le_bytes());
        b[16..24].copy_from_slice(&self.compat.to_le_bytes());
        b[24..32].copy_from_slice(&self.ro_compat.to_le_bytes());
        b[32..40].copy_from_slice(&self.incompat.to_le_bytes());
        b[40..56].copy_from_slice(&self.uuid);
        b[56..60].copy_from_slice(&self.block_size.to_le_bytes());
        b[60..64].copy_from_slice(&self.node_size.to_le_bytes());
        b[64..72].copy_from_slice(&self.block_count.to_le_bytes());
        b[72..80].copy_from_slice(&address.to_le_bytes());
        b[80..88].copy_from_slice(&self.ring_start.to_le_bytes());
        b[88..92].copy_from_slice(&self.ring_slots.to_le_bytes());
        b[92] = ALGO_CRC32C;
        b[93] = ALGO_CRC32C;
        b[94] = ALGO_BLAKE2B256;
        b[96..104].copy_from_slice(&self.created.to_le_bytes());
        let label = self.label.as_bytes();
        let n = label.len().min(LABEL_LEN);
        b[104..104 + n].copy_from_slice(&label[..n]);
        let sum = blake(&b[..CHECKSUM_OFFSET]);
        b[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 32].copy_from_slice(&sum);
        b
    }

    /// Decode and validate a copy read from block `address` of a device of
    /// `device_blocks` blocks of `device_block_size` bytes. Every field is
    /// checked against the device, so the result can be trusted for sizing.
    pub fn decode(
        b: &[u8],
        address: u64,
        device_block_size: u32,
        device_blocks: u64,
    ) -> Result<Superblock> {
        if b.len() < SUPERBLOCK_LEN {
            return Err(Error::NotNotafs("superblock shorter than 256 bytes".into()));
        }
        if b[0..8] != MAGIC {
            return Err(Error::NotNotafs("bad superblock magic".into()));
        }
        if blake(&b[..CHECKSUM_OFFSET])[..] != b[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 32] {
            return Err(Error::corrupt(format!(
                "superblock copy at block {address}: checksum mismatch"
            )));
        }
        let sb = Superblock {
            version_major: le32(b, 8),
            version_minor: le32(b, 12),
            compat: le64(b, 16),
            ro_compat: le64(b, 24),
            incompat: le64(b, 32),
            uuid: b[40..56].try_into().map_err(|_| Error::corrupt("uuid"))?,
            block_size: le32(b, 56),
            node_size: le32(b, 60),
            block_count: le64(b, 64),
            ring_start: le64(b, 80),
            ring_slots: le32(b, 88),
            created: le64(b, 96),
            label: {
                let raw = &b[104..104 + LABEL_LEN];
                let end = raw.iter().position(|&c| c == 0).unwrap_or(LABEL_LEN);
                String::from_utf8_lossy(&raw[..end]).into_owned()
            },
        };
        let own = le64(b, 72);
        let bad = |m: String| {
            Err(Error::corrupt(format!(
                "superblock at block {address}: {m}"
            )))
        };
        if own != address {
            return bad(format!(
                "copy claims address {own}: misplaced or misdirected"
            ));
        }
        if sb.version_major != VERSION_MAJOR {
            return Err(Error::Unsupported(format!(
                "format version {}.{} (this build reads {}.x)",
                sb.version_major, sb.version_minor, VERSION_MAJOR
            )));
        }
        let unknown = sb.incompat & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Error::Unsupported(format!(
                "unknown incompatible feature flags {unknown:#x}: written by a newer notafs"
            )));
        }
        if b[92] != ALGO_CRC32C || b[93] != ALGO_CRC32C || b[94] != ALGO_BLAKE2B256 {
            return Err(Error::Unsupported(format!(
                "checksum algorithms {}/{}/{}",
                b[92], b[93], b[94]
            )));
        }
        if !sb.block_size.is_power_of_two() || !(512..=65536).contains(&sb.block_size) {
            return bad(format!("block size {} invalid", sb.block_size));
        }
        if sb.block_size != device_block_size {
            return bad(format!(
                "block size {} differs from the device's {} (open with --block-size {})",
                sb.block_size, device_block_size, sb.block_size
            ));
        }
        if sb.node_size < MIN_NODE_SIZE.max(sb.block_size)
            || !sb.node_size.is_power_of_two()
            || sb.node_size > 1 << 20
        {
            return bad(format!("node size {} invalid", sb.node_size));
        }
        if !(MIN_ROOT_SLOTS..=MAX_ROOT_SLOTS).contains(&sb.ring_slots) {
            return bad(format!("{} root slots (must be 2..=64)", sb.ring_slots));
        }
        if sb.ring_start != 1 {
            return bad(format!("root ring at block {} (must be 1)", sb.ring_start));
        }
        if sb.block_count > device_blocks {
            return bad(format!(
                "filesystem has {} blocks but the device only {}",
                sb.block_count, device_blocks
            ));
        }
        if sb.block_count < min_blocks(sb.ring_slots, sb.node_size / sb.block_size) {
            return bad(format!("block count {} too small", sb.block_count));
        }
        if address != 0 && address != sb.block_count - 1 {
            return bad("copy is neither at the start nor at the end".into());
        }
        Ok(sb)
    }
}

/// Smallest block count a filesystem with these parameters can have: the
/// superblocks, the ring and room for a handful of nodes and data.
pub fn min_blocks(ring_slots: u32, node_blocks: u32) -> u64 {
    2 + ring_slots as u64 + 16 * node_blocks as u64
}
