//! Tree nodes on disk: header, pointers, and the checks every node passes
//! before any of its content is believed.
//!
//! A node is `node_size` bytes (>= 4096, one or more blocks). Its CRC-32C is
//! not in the node but in the pointer to it (the parent entry or the root
//! slot), so a stale or misdirected node is caught even when it is
//! internally consistent. It also records its own address, its tree kind, its
//! level, and the owner inode of an extent tree, so a node read from the
//! wrong place or linked into the wrong tree is rejected.
//!
//! ```text
//! offset  size  field
//! ------  ----  -----------------------------------------------------------
//!      0     4  magic "NTND"
//!      4     1  kind: 1 = file table, 2 = extent tree, 3 = free-space list
//!      5     1  level: 0 = leaf
//!      6     2  number of entries
//!      8     8  address of this node (block number)
//!     16     8  generation that wrote it
//!     24     8  owner: inode number for extent trees, else 0
//!     32     -  entries (layout per kind), then zeros to node_size
//! ```
use crate::codec::le64;
use crate::{Error, Result};

pub const NODE_MAGIC: [u8; 4] = *b"NTND";
pub const NODE_HEADER: usize = 32;

pub const KIND_FILES: u8 = 1;
pub const KIND_EXTENTS: u8 = 2;
pub const KIND_FREELIST: u8 = 3;

/// A pointer to a node (or a run of data): address plus the CRC-32C the
/// target must have. `block == 0` is the null pointer (block 0 always holds
/// the superblock, so no node can live there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ptr {
    pub block: u64,
    pub crc: u32,
}

impl Ptr {
    pub const NULL: Ptr = Ptr { block: 0, crc: 0 };
    pub const ENCODED_LEN: usize = 12;

    pub fn is_null(&self) -> bool {
        self.block == 0
    }
}

/// Where things may live on this filesystem; every pointer read from disk is
/// checked against it.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub block_size: u32,
    pub node_size: u32,
    pub node_blocks: u64,
    pub block_count: u64,
    /// First allocatable block.
    pub data_start: u64,
    /// One past the last allocatable block.
    pub data_end: u64,
    /// Longest extent, in blocks: a quarter of a node's payload, so a leaf
    /// always holds at least four extents.
    pub max_extent: u32,
    pub ring_slots: u32,
}

impl Layout {
    pub fn from_superblock(sb: &crate::superblock::Superblock) -> Layout {
        let node_blocks = sb.node_blocks();
        let max_extent = (((sb.node_size as usize - NODE_HEADER) / 4 - 20) / 4) as u32;
        Layout {
            block_size: sb.block_size,
            node_size: sb.node_size,
            node_blocks,
            block_count: sb.block_count,
            data_start: sb.data_start(),
            data_end: sb.data_end(),
            max_extent,
            ring_slots: sb.ring_slots,
        }
    }

    /// Whether a node may start at `block`.
    pub fn node_in_range(&self, block: u64) -> bool {
        block >= self.data_start
            && block
                .checked_add(self.node_blocks)
                .is_some_and(|e| e <= self.data_end)
    }

    /// Whether `len` blocks from `block` lie inside the allocatable area.
    pub fn run_in_range(&self, block: u64, len: u64) -> bool {
        len > 0
            && block >= self.data_start
            && block.checked_add(len).is_some_and(|e| e <= self.data_end)
    }

    /// Usable entry bytes in a node.
    pub fn payload(&self) -> usize {
        self.node_size as usize - NODE_HEADER
    }
}

/// Decoded node header.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub kind: u8,
    pub level: u8,
    pub count: u16,
    pub address: u64,
    pub generation: u64,
    pub owner: u64,
}

pub fn write_header(buf: &mut [u8], h: &Header) {
    buf[0..4].copy_from_slice(&NODE_MAGIC);
    buf[4] = h.kind;
    buf[5] = h.level;
    buf[6..8].copy_from_slice(&h.count.to_le_bytes());
    buf[8..16].copy_from_slice(&h.address.to_le_bytes());
    buf[16..24].copy_from_slice(&h.generation.to_le_bytes());
    buf[24..32].copy_from_slice(&h.owner.to_le_bytes());
}

/// Check a node's bytes against what its parent expects: checksum, magic,
/// address, kind, level and owner.
pub fn verify(buf: &[u8], ptr: Ptr, kind: u8, level: Option<u8>, owner: u64) -> Result<Header> {
    let crc = crate::checksum::crc(buf);
    if crc != ptr.crc {
        return Err(Error::Checksum {
            what: kind_name(kind),
            block: ptr.block,
        });
    }
    verify_header(buf, ptr, kind, level, owner)
}

/// The checks of [`verify`] but the checksum: for bytes that already passed
/// it (the node cache holds only verified bytes, keyed by block and CRC),
/// against what this particular pointer expects (kind, level, owner).
pub fn verify_header(
    buf: &[u8],
    ptr: Ptr,
    kind: u8,
    level: Option<u8>,
    owner: u64,
) -> Result<Header> {
    let what = kind_name(kind);
    if buf.len() < NODE_HEADER {
        return Err(Error::corrupt(format!(
            "{what} node at {}: too short",
            ptr.block
        )));
    }
    if buf[0..4] != NODE_MAGIC {
        return Err(Error::corrupt(format!(
            "{what} node at {}: bad magic",
            ptr.block
        )));
    }
    let h = Header {
        kind: buf[4],
        level: buf[5],
        count: u16::from_le_bytes([buf[6], buf[7]]),
        address: le64(buf, 8),
        generation: le64(buf, 16),
        owner: le64(buf, 24),
    };
    check_header(&h, ptr, kind, level, owner)?;
    Ok(h)
}

/// A decoded header against what the pointer that led to it expects.
pub fn check_header(h: &Header, ptr: Ptr, kind: u8, level: Option<u8>, owner: u64) -> Result<()> {
    let what = kind_name(kind);
    if h.address != ptr.block {
        return Err(Error::corrupt(format!(
            "{what} node at {} claims address {} (misdirected write)",
            ptr.block, h.address
        )));
    }
    if h.kind != kind {
        return Err(Error::corrupt(format!(
            "node at {} is of kind {} where a {what} node was expected",
            ptr.block, h.kind
        )));
    }
    if let Some(l) = level {
        if h.level != l {
            return Err(Error::corrupt(format!(
                "{what} node at {} has level {} where {l} was expected",
                ptr.block, h.level
            )));
        }
    }
    if h.owner != owner {
        return Err(Error::corrupt(format!(
            "{what} node at {} belongs to inode {} not {owner}",
            ptr.block, h.owner
        )));
    }
    Ok(())
}

pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_FILES => "file table",
        KIND_EXTENTS => "extent tree",
        KIND_FREELIST => "free-space list",
        _ => "unknown",
    }
}
