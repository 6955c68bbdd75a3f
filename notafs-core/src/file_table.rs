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
//!       10    6 reserved (0)
//!       16    8 size in bytes (files; 0 for directories)
//!       24    8 modification time, ns since the Unix epoch
//!       32    8 extent tree root block (0 = none)
//!       40    4 extent tree root CRC-32C
//!       44    4 reserved (0)
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
}

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
        e.bytes(&[0; 6]);
        e.u64(v.size);
        e.u64(v.mtime_ns);
        e.u64(v.extents.block);
        e.u32(v.extents.crc);
        e.u32(0);
    }
    fn dec_val(d: &mut Dec<'_>, layout: &Layout) -> Result<Inode> {
        let ino = d.u64()?;
        let kind = match d.u8()? {
            1 => FileType::File,
            2 => FileType::Dir,
            t => return Err(Error::corrupt(format!("inode {ino}: unknown type {t}"))),
        };
        let extent_height = d.u8()?;
        d.take(6)?;
        let size = d.u64()?;
        let mtime_ns = d.u64()?;
        let extents = Ptr {
            block: d.u64()?,
            crc: d.u32()?,
        };
        d.u32()?;
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
        })
    }
}
