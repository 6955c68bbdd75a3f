//! The file table: one B-tree of directory entries keyed by
//! `(parent inode, name)`, whose values are the inodes themselves.
//!
//! Keying by parent makes a directory listing one range scan and a rename one
//! remove plus one insert, whatever the size of the directory; changing a
//! file rewrites the O(log n) nodes on its path, never the whole table.
//!
//! ```text
//! key:    parent inode u64 | name length u16 | name (UTF-8, 1..=255 bytes)
//! value (48 bytes):
//!   offset size field
//!        0    8 inode number (unique, never reused; 1 is the root directory)
//!        8    1 type: 1 = file, 2 = directory
//!        9    1 extent tree height (0 = no extents)
//!       10    2 attributes (feature COMPAT_ATTRS; 0 = defaults):
//!                 bits 0..11 permission bits (with bit 15)
//!                 bit 14 owner recorded (uid, gid below)
//!                 bit 15 permission bits recorded
//!                 (0: 0644 for files, 0755 for directories, owned by
//!                 whoever mounts)
//!       12    4 owner uid (valid with bit 14)
//!       16    8 size in bytes (files; 0 for directories)
//!       24    8 modification time, ns since the Unix epoch
//!       32    8 extent tree root block (0 = none)
//!       40    4 extent tree root CRC-32C
//!       44    4 owner gid (valid with bit 14)
//! ```
use crate::btree::{Kind, MAX_HEIGHT};
use crate::codec::{Dec, Enc};
use crate::node::{Layout, Ptr, KIND_FILES};
use crate::{Error, Result};

/// Inode number of the root directory (implicit: it has no entry).
pub const ROOT_INO: u64 = 1;

/// Key of the file table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryKey {
    pub parent: u64,
    pub name: String,
}

/// Type of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    File,
    Dir,
}

/// An inode as stored in the file table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub kind: FileType,
    pub size: u64,
    pub mtime_ns: u64,
    pub extents: Ptr,
    pub extent_height: u8,
    /// Permission bits, when set (None: 0644 / 0755).
    pub mode: Option<u16>,
    /// Owner (uid, gid), when set (None: whoever mounts).
    pub owner: Option<(u32, u32)>,
}

/// Bits of the attributes field at offset 10 of an inode.
const ATTR_MODE_SET: u16 = 1 << 15;
const ATTR_OWNER_SET: u16 = 1 << 14;
const ATTR_PERM_MASK: u16 = 0o7777;

pub const INODE_LEN: usize = 48;

/// The file-table tree kind.
pub struct Files;

impl Kind for Files {
    const KIND: u8 = KIND_FILES;
    type K = EntryKey;
    type V = Inode;

    fn key_len(k: &EntryKey) -> usize {
        10 + k.name.len()
    }
    fn enc_key(k: &EntryKey, e: &mut Enc) {
        e.u64(k.parent);
        e.u16(k.name.len() as u16);
        e.bytes(k.name.as_bytes());
    }
    fn dec_key(d: &mut Dec<'_>) -> Result<EntryKey> {
        let parent = d.u64()?;
        let len = d.u16()? as usize;
        let raw = d.take(len)?;
        crate::path::check_name(raw)
            .map_err(|r| Error::corrupt(format!("file table name: {r}")))?;
        let name = String::from_utf8(raw.to_vec())
            .map_err(|_| Error::corrupt("file table name: not UTF-8"))?;
        Ok(EntryKey { parent, name })
    }
    fn val_len(_: &Inode) -> usize {
        INODE_LEN
    }
    fn enc_val(v: &Inode, e: &mut Enc) {
        e.u64(v.ino);
        e.u8(match v.kind {
            FileType::File => 1,
            FileType::Dir => 2,
        });
        e.u8(v.extent_height);
        let mut attrs = 0u16;
        if let Some(m) = v.mode {
            attrs |= ATTR_MODE_SET | (m & ATTR_PERM_MASK);
        }
        if v.owner.is_some() {
            attrs |= ATTR_OWNER_SET;
        }
        let (uid, gid) = v.owner.unwrap_or((0, 0));
        e.u16(attrs);
        e.u32(uid);
        e.u64(v.size);
        e.u64(v.mtime_ns);
        e.u64(v.extents.block);
        e.u32(v.extents.crc);
        e.u32(gid);
    }
    fn patch(v: &mut Inode, p: &crate::inode_patch::PatchMap) {
        if let Some(x) = p.get(&v.ino) {
            x.apply(v);
        }
    }

    fn forget_patch(v: &Inode, p: &mut crate::inode_patch::PatchMap) {
        p.remove(&v.ino);
    }

    fn dec_val(d: &mut Dec<'_>, layout: &Layout) -> Result<Inode> {
        let ino = d.u64()?;
        let kind = match d.u8()? {
            1 => FileType::File,
            2 => FileType::Dir,
            t => return Err(Error::corrupt(format!("inode {ino}: unknown type {t}"))),
        };
        let extent_height = d.u8()?;
        let attrs = d.u16()?;
        let uid = d.u32()?;
        let size = d.u64()?;
        let mtime_ns = d.u64()?;
        let extents = Ptr {
            block: d.u64()?,
            crc: d.u32()?,
        };
        let gid = d.u32()?;
        if attrs & !(ATTR_MODE_SET | ATTR_OWNER_SET | ATTR_PERM_MASK) != 0
            || (attrs & ATTR_MODE_SET == 0 && attrs & ATTR_PERM_MASK != 0)
            || (attrs & ATTR_OWNER_SET == 0 && (uid != 0 || gid != 0))
        {
            return Err(Error::corrupt(format!(
                "inode {ino}: attribute bits {attrs:#06x} are not valid"
            )));
        }
        let mode = (attrs & ATTR_MODE_SET != 0).then_some(attrs & ATTR_PERM_MASK);
        let owner = (attrs & ATTR_OWNER_SET != 0).then_some((uid, gid));
        if ino <= ROOT_INO {
            return Err(Error::corrupt(format!("inode number {ino} is reserved")));
        }
        if extents.is_null() != (extent_height == 0) || extent_height as usize > MAX_HEIGHT {
            return Err(Error::corrupt(format!(
                "inode {ino}: extent root and height disagree"
            )));
        }
        if !extents.is_null() && !layout.node_in_range(extents.block) {
            return Err(Error::corrupt(format!(
                "inode {ino}: extent root {} outside the data area",
                extents.block
            )));
        }
        if kind == FileType::Dir && (size != 0 || !extents.is_null()) {
            return Err(Error::corrupt(format!("directory inode {ino} has data")));
        }
        // A file can address at most 2^64 - 1 bytes; block indexes must fit.
        if size > i64::MAX as u64 {
            return Err(Error::corrupt(format!("inode {ino}: absurd size {size}")));
        }
        Ok(Inode {
            ino,
            kind,
            size,
            mtime_ns,
            extents,
            extent_height,
            mode,
            owner,
        })
    }
}

impl crate::btree::Tree<Files> {
    /// The file table of the generation `slot` names, with the slot's inode
    /// patches applied to every inode read through it. Every reader of a
    /// generation's file table is built here: the table's own copy of a
    /// patched inode names an extent root that may no longer exist.
    pub fn from_slot(slot: &crate::root_ring::RootSlot) -> Result<Self> {
        let mut t = Self::from_disk(slot.files, slot.files_height, 0)?;
        t.patch = slot.patches.map();
        Ok(t)
    }
}
