//! The public option and information types of a filesystem handle.
use crate::file_table::FileType;
use crate::root_ring::RootSlot;
use crate::superblock::Superblock;

/// Default cache size: 32 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

/// Default write-behind threshold: 8 MiB of file data between background
/// flushes (measured: buffered appends 0.88x raw without, 1.08x with).
pub const DEFAULT_WRITE_BEHIND: u64 = 8 << 20;

/// Options for [`Fs::format`].
#[derive(Clone, Debug)]
pub struct FormatOptions {
    /// Volume label (at most 64 bytes of UTF-8).
    pub label: String,
    /// UUID; random when None.
    pub uuid: Option<[u8; 16]>,
    /// Root slots N (2..=64): the number of generations kept.
    pub root_slots: u32,
    /// Tree node size in bytes (default: max(4096, block size)).
    pub node_size: Option<u32>,
    /// Creation time in seconds (default: now, or `SOURCE_DATE_EPOCH`).
    pub time: Option<u64>,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            label: String::new(),
            uuid: None,
            root_slots: 8,
            node_size: None,
            time: None,
        }
    }
}

/// Options for [`Fs::open`].
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Refuse all changes.
    pub read_only: bool,
    /// Open this retained generation instead of the newest (read-only).
    pub generation: Option<u64>,
    /// Bytes of RAM for cached nodes and buffered writes.
    pub cache_bytes: usize,
    /// Discard blocks when they become reusable (after N commits), so thin
    /// devices and SSDs get them back. Off by default; `Fs::trim` does it on
    /// demand.
    pub discard: bool,
    /// Flush the device in the background after every this many bytes of
    /// file data written (None: off). Commits then wait for much less; no
    /// guarantee changes (a flush only makes things durable sooner). On by
    /// default ([`DEFAULT_WRITE_BEHIND`]); the flusher thread starts only
    /// once that much has been written. The crash harness turns it off: it
    /// makes the device's operation log depend on timing.
    pub write_behind: Option<u64>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            generation: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
            discard: false,
            write_behind: Some(DEFAULT_WRITE_BEHIND),
        }
    }
}

/// A retained generation, as listed by [`Fs::generations`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationInfo {
    pub generation: u64,
    pub time_ns: u64,
    pub inodes: u64,
    pub used_blocks: u64,
    pub free_blocks: u64,
    pub pending_blocks: u64,
}

/// What a root slot looked like at open, for `info` and fsck.
#[derive(Clone, Debug)]
pub struct SlotStatus {
    pub index: u32,
    /// The decoded slot, or why it is unusable.
    pub state: std::result::Result<RootSlot, String>,
    /// Whether its file-table root verified (only for decodable slots):
    /// the generation is readable.
    pub roots_ok: Option<std::result::Result<(), String>>,
    /// Whether its free-space list read and added up (only for decodable
    /// slots): the generation can be written on.
    pub free_list: Option<std::result::Result<(), String>>,
}

/// Space and identity figures of an open filesystem.
#[derive(Clone, Debug)]
pub struct FsInfo {
    pub superblock: Superblock,
    pub generation: u64,
    pub block_size: u32,
    pub block_count: u64,
    pub free_blocks: u64,
    pub pending_blocks: u64,
    pub used_blocks: u64,
    pub inodes: u64,
    pub read_only: bool,
    /// Which superblock copy was used (0 = primary, else the backup's block).
    pub superblock_source: u64,
    /// Why writes are refused until `fsck.notafs` has run, if they are.
    pub needs_check: Option<String>,
}

/// Metadata of a file or directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub ino: u64,
    pub kind: FileType,
    pub size: u64,
    pub mtime_ns: u64,
    /// Permission bits, when set (None: 0644 for files, 0755 for dirs).
    pub mode: Option<u16>,
    /// Owner (uid, gid), when set (None: whoever mounts).
    pub owner: Option<(u32, u32)>,
}

impl Metadata {
    pub fn is_dir(&self) -> bool {
        self.kind == FileType::Dir
    }
    pub fn is_file(&self) -> bool {
        self.kind == FileType::File
    }
}

/// A directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub meta: Metadata,
}
