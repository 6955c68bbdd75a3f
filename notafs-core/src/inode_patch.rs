//! Inode patches (feature `INCOMPAT_INODE_PATCH`): the newest extent root,
//! size and modification time of files that small commits changed since
//! the file table was last written, carried in the root slot.
//!
//! Appending to a file changes its inode (extent root, size, mtime), and an
//! inode lives in a file-table leaf: without patches, every small commit
//! rewrites that leaf and its path to the root. With them, a commit that
//! only wrote file data (no create, remove, rename or attribute change)
//! leaves the file table as it is and records the changed inodes' new
//! values in its slot; readers of that generation apply them to the inodes
//! they read (`Tree<Files>` does it on every lookup and scan). When the
//! patches no longer fit, or a commit changes the namespace, the commit
//! writes them into the file table and the slot carries none.
//!
//! ```text
//! patch entry (40 bytes), sorted by inode number, no duplicates:
//! offset  size  field
//!      0     8  inode number (>= 2)
//!      8     8  extent tree root: block (0 = none)
//!     16     4  extent tree root: CRC-32C
//!     20     1  extent tree height (0 = none)
//!     21     3  reserved (0)
//!     24     8  size in bytes (<= 2^63 - 1)
//!     32     8  modification time, ns since the Unix epoch
//! ```
//!
//! Why it survives power loss: the patches are in the slot, under its
//! checksum, so a root and its patches are chosen together; the extent
//! trees they point to are written before the slot like any other node.
//! The file table's own copy of a patched inode names an older extent root
//! whose nodes may already be reused: no reader ever follows it without
//! the patch, because every `Tree<Files>` of a generation is built from its
//! slot ([`crate::btree::Tree::from_slot`]).
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::codec::{le32, le64};
use crate::file_table::Inode;
use crate::node::{Layout, Ptr};
use crate::{Error, Result};

/// Size of one patch entry and the most a slot carries.
pub const PATCH_ENTRY_LEN: usize = 40;
pub const PATCH_MAX: usize = 32;

/// The new extent root, size and mtime of one inode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodePatch {
    pub ino: u64,
    pub extents: Ptr,
    pub extent_height: u8,
    pub size: u64,
    pub mtime_ns: u64,
}

impl InodePatch {
    /// The patch that gives an inode `i`'s extent root, size and mtime.
    pub fn of(i: &Inode) -> InodePatch {
        InodePatch {
            ino: i.ino,
            extents: i.extents,
            extent_height: i.extent_height,
            size: i.size,
            mtime_ns: i.mtime_ns,
        }
    }

    /// Apply to `i` (which must be the same inode).
    pub fn apply(&self, i: &mut Inode) {
        i.extents = self.extents;
        i.extent_height = self.extent_height;
        i.size = self.size;
        i.mtime_ns = self.mtime_ns;
    }

    pub fn encode(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.ino.to_le_bytes());
        b[8..16].copy_from_slice(&self.extents.block.to_le_bytes());
        b[16..20].copy_from_slice(&self.extents.crc.to_le_bytes());
        b[20] = self.extent_height;
        b[21..24].fill(0);
        b[24..32].copy_from_slice(&self.size.to_le_bytes());
        b[32..40].copy_from_slice(&self.mtime_ns.to_le_bytes());
    }

    /// Decode without validation (see [`check_patches`]).
    pub fn decode(b: &[u8]) -> InodePatch {
        InodePatch {
            ino: le64(b, 0),
            extents: Ptr {
                block: le64(b, 8),
                crc: le32(b, 16),
            },
            extent_height: b[20],
            size: le64(b, 24),
            mtime_ns: le64(b, 32),
        }
    }
}

/// The patches of one root slot, inline so that a slot stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Patches {
    len: u8,
    e: [InodePatch; PATCH_MAX],
}

impl Default for Patches {
    fn default() -> Self {
        Patches {
            len: 0,
            e: [InodePatch::default(); PATCH_MAX],
        }
    }
}

impl std::fmt::Debug for Patches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Patches({} inodes)", self.len)
    }
}

impl Patches {
    /// Patches from `v` (sorted by inode number), or None past [`PATCH_MAX`].
    pub fn new(v: &[InodePatch]) -> Option<Patches> {
        if v.len() > PATCH_MAX {
            return None;
        }
        let mut p = Patches::default();
        p.e[..v.len()].copy_from_slice(v);
        p.len = v.len() as u8;
        Some(p)
    }

    pub fn entries(&self) -> &[InodePatch] {
        &self.e[..self.len as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// As a map for lookups (None when there are none).
    pub fn map(&self) -> Option<Arc<PatchMap>> {
        (!self.is_empty()).then(|| Arc::new(self.entries().iter().map(|p| (p.ino, *p)).collect()))
    }
}

/// Patches by inode number.
pub type PatchMap = BTreeMap<u64, InodePatch>;

/// Validate the patches of a slot: sorted by inode number without
/// duplicates, inode numbers in `2..next_ino`, root and height agreeing,
/// roots inside the data area, sizes a file can have.
pub fn check_patches(layout: &Layout, p: &[InodePatch], next_ino: u64) -> Result<()> {
    let mut prev = 0u64;
    for x in p {
        if x.ino <= crate::file_table::ROOT_INO || x.ino >= next_ino || x.ino <= prev {
            return Err(Error::corrupt(format!(
                "inode patch for inode {} (out of order, repeated or not below the next \
                 inode number {next_ino})",
                x.ino
            )));
        }
        if x.extents.is_null() != (x.extent_height == 0)
            || x.extent_height as usize > crate::btree::MAX_HEIGHT
            || (!x.extents.is_null() && !layout.node_in_range(x.extents.block))
        {
            return Err(Error::corrupt(format!(
                "inode patch for inode {}: extent root {} with height {} is not valid",
                x.ino, x.extents.block, x.extent_height
            )));
        }
        if x.size > crate::file::MAX_FILE_SIZE {
            return Err(Error::corrupt(format!(
                "inode patch for inode {}: size {} too large",
                x.ino, x.size
            )));
        }
        prev = x.ino;
    }
    Ok(())
}
