//! notafs: a copy-on-write filesystem for a few large files, living directly
//! on a block device, where every commit is one atomic root swap.
//!
//! ```
//! use std::sync::Arc;
//! use notafs_blockdev::memory::MemoryDevice;
//! use notafs_core::{Fs, FormatOptions, OpenOptions};
//!
//! let dev = Arc::new(MemoryDevice::new(4096, 4096).unwrap());
//! let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
//! fs.create_dir("index").unwrap();
//! let f = fs.create("index/data").unwrap();
//! f.append(b"hello ").unwrap();
//! f.append(b"world").unwrap();
//! let g = fs.commit().unwrap();
//!
//! let fs = Fs::open(dev, &OpenOptions::default()).unwrap();
//! assert_eq!(fs.generation(), g);
//! assert_eq!(fs.snapshot().read_to_vec("index/data").unwrap(), b"hello world");
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![forbid(unsafe_code)]

mod allocator;
mod btree;
mod btree_codec;
mod btree_node;
mod btree_rec;
mod cache;
pub mod check;
mod check_data;
mod check_report;
mod check_tree;
mod checksum;
#[doc(hidden)]
pub mod codec;
mod commit;
mod data;
pub mod digest;
mod error;
mod extent_tree;
mod faults;
mod file;
mod file_table;
mod fs;
mod inode_patch;
mod mount;
mod namespace;
mod node;
mod node_io;
mod options;
pub mod path;
pub mod repair;
mod root_ring;
mod slot_scan;
mod snapshot;
mod space;
pub mod superblock;
mod txn;
mod write_behind;

pub use error::{Error, Result};
#[cfg(feature = "fault-injection")]
pub use faults::{current_faults, Faults};
pub use file::{Cursor, File, MAX_FILE_SIZE};
pub use file_table::{FileType, ROOT_INO};
pub use fs::{
    DirEntry, FormatOptions, Fs, FsInfo, GenerationInfo, Metadata, OpenOptions, SlotStatus,
    DEFAULT_CACHE_BYTES, DEFAULT_WRITE_BEHIND,
};
pub use root_ring::RootSlot;
pub use snapshot::{Snapshot, SnapshotFile};
pub use superblock::Superblock;

/// Internals exposed for fsck, the crash harness and corruption tests.
pub mod raw {
    pub use crate::allocator::{entries_per_node, read_list, read_slot_list, ExtentSet, FreeList};
    pub use crate::btree::{Child, Kind, Node, NodeIo, Tree, MAX_HEIGHT};
    pub use crate::cache::{DecodedCache, NodeCache};
    pub use crate::checksum::{blake, crc};
    pub use crate::extent_tree::{Extent, Extents};
    pub use crate::file_table::{EntryKey, Files, Inode};
    pub use crate::inode_patch::{InodePatch, Patches};
    pub use crate::node::{
        Header, Layout, Ptr, KIND_EXTENTS, KIND_FILES, KIND_FREELIST, NODE_HEADER,
    };
    pub use crate::root_ring::{FreeDelta, SLOT_LEN};
}
