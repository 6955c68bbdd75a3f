//! The filesystem handle: format, open, transactions and commit.
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
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use notafs_blockdev::BlockDevice;
use tracing::{debug, info, warn};

use crate::allocator::{self, Allocator};
use crate::btree::{NodeIo, Tree};
use crate::cache::NodeCache;
use crate::extent_tree::Extents;
use crate::file_table::{EntryKey, FileType, Files, Inode, ROOT_INO};
use crate::node::{Layout, Ptr};
use crate::root_ring::RootSlot;
use crate::superblock::{self, Superblock};
use crate::{path, Error, Result};

/// Default cache size: 32 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

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
    /// guarantee changes. Off by default (the crash harness needs the device
    /// log to be deterministic); the CLI turns it on for large copies.
    pub write_behind: Option<u64>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            generation: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
            discard: false,
            write_behind: None,
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

#[cfg(feature = "fault-injection")]
static FAULTS: Mutex<Faults> = Mutex::new(Faults {
    skip_barrier: false,
    root_before_data: false,
    reuse_freed_immediately: false,
    skip_verify: false,
    forget_last_extent: false,
});

/// The faults in force (crash-harness use only).
#[cfg(feature = "fault-injection")]
pub fn current_faults() -> Faults {
    *FAULTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Switches that break the commit protocol on purpose, for the crash
/// harness to prove it notices. Only with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Do not issue the barrier between the data and the root slot.
    pub skip_barrier: bool,
    /// Write the root slot before the data and nodes.
    pub root_before_data: bool,
    /// Reuse blocks freed by this commit at once (as the OCaml notafs does).
    pub reuse_freed_immediately: bool,
    /// Do not verify checksums on read.
    pub skip_verify: bool,
    /// Drop the last buffered run of each file at commit.
    pub forget_last_extent: bool,
}

/// Per-inode state of a transaction: the inode, its extent tree with
/// in-memory changes, and its buffered partial blocks.
pub(crate) struct InodeState {
    pub key: EntryKey,
    pub inode: Inode,
    pub ext: Tree<Extents>,
    pub buf: BTreeMap<u64, Vec<u8>>,
}

pub(crate) struct Txn {
    pub files: Tree<Files>,
    pub next_ino: u64,
    pub inode_count: u64,
    pub alloc: Allocator,
    /// Allocator as of the last commit, for abort.
    pub base_alloc: Allocator,
    /// Inodes with changes not yet in `files`.
    pub inodes: HashMap<u64, InodeState>,
    /// Keys of inodes that have open handles, with the number of handles
    /// (an entry goes away with its last handle, so the map is bounded by
    /// the files open at once).
    pub handles: HashMap<u64, (EntryKey, usize)>,
    pub buffered_bytes: usize,
    pub changed: bool,
}

pub(crate) struct Committed {
    pub slot: RootSlot,
    pub free_list: Vec<u64>,
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
}

/// An open notafs filesystem. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Fs {
    pub(crate) inner: Arc<Inner>,
}

/// How well the root ring verifies under superblock `sb`: (newest
/// decodable generation, number of decodable slots). Used only to choose
/// between two disagreeing superblock copies; a read error scores nothing.
fn ring_score(dev: &dyn BlockDevice, sb: &Superblock) -> (u64, u32) {
    let bs = sb.block_size as usize;
    let mut ring = vec![0u8; bs * sb.ring_slots as usize];
    if dev.read(sb.ring_start, &mut ring).is_err() {
        return (0, 0);
    }
    let mut best = (0, 0);
    for i in 0..sb.ring_slots {
        let raw = &ring[i as usize * bs..(i as usize + 1) * bs];
        if let Ok(s) = RootSlot::decode(raw, i, sb.ring_slots, &sb.uuid) {
            best = (best.0.max(s.generation), best.1 + 1);
        }
    }
    best
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Creation time honouring `SOURCE_DATE_EPOCH` for reproducible images.
fn source_time() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| now_ns() / 1_000_000_000)
}

impl Fs {
    /// Create a new, empty filesystem on `dev`, overwriting both superblock
    /// copies and every root slot, and open it. Constant time: the data area
    /// is not touched.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use notafs_blockdev::memory::MemoryDevice;
    /// use notafs_core::{Fs, FormatOptions};
    /// let dev = Arc::new(MemoryDevice::new(4096, 1024).unwrap());
    /// let fs = Fs::format(dev, &FormatOptions::default()).unwrap();
    /// let f = fs.create("hello.txt").unwrap();
    /// f.write_at(0, b"hi").unwrap();
    /// assert_eq!(fs.commit().unwrap(), 2);
    /// ```
    pub fn format(dev: Arc<dyn BlockDevice>, opts: &FormatOptions) -> Result<Fs> {
        let sb = Self::plan(dev.as_ref(), opts)?;
        let bs = sb.block_size as usize;
        // Three flush epochs, so that a power cut at any instant leaves
        // either no filesystem or a complete one that checks clean:
        // 1. blank the primary superblock (the signature): from here on the
        //    device is not a notafs filesystem (an earlier one's backup with
        //    a blank primary and nothing newer than generation 1 is not
        //    taken for one either, see `read_superblock`);
        // 2. wipe the ring, write generation 1 (free list, barrier, root
        //    slot, flush: commit.rs), then the backup superblock;
        // 3. barrier, the primary superblock, last (as btrfs does), flush.
        dev.write(0, &vec![0u8; bs])?;
        dev.barrier()?;
        // A slot of an earlier filesystem must never be mistaken for ours
        // (its UUID would differ, but zeros are clearer).
        let zeros = vec![0u8; bs * sb.ring_slots as usize];
        dev.write(sb.ring_start, &zeros)?;
        // The first generation: empty table, free list = the whole data area.
        let layout = Layout::from_superblock(&sb);
        let mut alloc = Allocator::empty();
        alloc
            .free
            .insert(layout.data_start, layout.data_end - layout.data_start)?;
        crate::commit::write_generation(
            dev.as_ref(),
            &sb,
            &mut alloc,
            crate::commit::NewRoot {
                generation: 1,
                time_ns: sb.created.saturating_mul(1_000_000_000),
                files: Ptr::NULL,
                files_height: 0,
                next_ino: ROOT_INO + 1,
                inode_count: 0,
            },
            &mut Vec::new(),
            crate::commit::CommitFaults::default(),
        )?;
        dev.write(sb.backup_address(), &sb.encode(sb.backup_address()))?;
        dev.barrier()?;
        dev.write(0, &sb.encode(0))?;
        dev.flush()?;
        info!(
            blocks = sb.block_count,
            block_size = sb.block_size,
            "formatted"
        );
        Fs::open(dev, &OpenOptions::default())
    }

    /// The superblock `format` would write on `dev` (for dry runs).
    pub fn plan(dev: &dyn BlockDevice, opts: &FormatOptions) -> Result<Superblock> {
        let geo = dev.geometry();
        if !notafs_blockdev::Geometry::valid_block_size(geo.block_size) {
            return Err(Error::InvalidArgument(format!(
                "device block size {}",
                geo.block_size
            )));
        }
        let node_size = opts
            .node_size
            .unwrap_or(superblock::MIN_NODE_SIZE.max(geo.block_size));
        if !node_size.is_power_of_two()
            || node_size < superblock::MIN_NODE_SIZE.max(geo.block_size)
            || node_size > 1 << 20
        {
            return Err(Error::InvalidArgument(format!(
                "node size {node_size} must be a power of two in {}..=1048576",
                superblock::MIN_NODE_SIZE.max(geo.block_size)
            )));
        }
        if !(superblock::MIN_ROOT_SLOTS..=superblock::MAX_ROOT_SLOTS).contains(&opts.root_slots) {
            return Err(Error::InvalidArgument(format!(
                "{} root slots: must be 2..=64",
                opts.root_slots
            )));
        }
        if opts.label.len() > superblock::LABEL_LEN || opts.label.contains('\0') {
            return Err(Error::InvalidArgument(
                "label longer than 64 bytes or containing NUL".into(),
            ));
        }
        let min = superblock::min_blocks(opts.root_slots, node_size / geo.block_size);
        if geo.block_count < min {
            return Err(Error::InvalidArgument(format!(
                "device of {} blocks is too small: at least {min} blocks of {} bytes are needed",
                geo.block_count, geo.block_size
            )));
        }
        let uuid = match opts.uuid {
            Some(u) => u,
            None => {
                let mut u: [u8; 16] = rand::random();
                u[6] = (u[6] & 0x0f) | 0x40;
                u[8] = (u[8] & 0x3f) | 0x80;
                u
            }
        };
        Ok(Superblock {
            version_major: superblock::VERSION_MAJOR,
            version_minor: superblock::VERSION_MINOR,
            compat: 0,
            ro_compat: 0,
            incompat: 0,
            uuid,
            block_size: geo.block_size,
            node_size,
            block_count: geo.block_count,
            ring_start: 1,
            ring_slots: opts.root_slots,
            created: opts.time.unwrap_or_else(source_time),
            label: opts.label.clone(),
        })
    }

    /// Read the superblock. Rules, in order (docs/FORMAT.md, "Superblock
    /// copies"):
    /// * an I/O error reading a copy is an error, never a reason to prefer
    ///   the other copy;
    /// * both copies decode and agree: the primary;
    /// * both decode but disagree (a copy damaged with its checksum
    ///   recomputed, or a repair interrupted): the copy under which the root
    ///   ring verifies best (newest decodable generation, then most
    ///   decodable slots; the primary on a tie), so one bad copy can never
    ///   redirect the ring;
    /// * only one decodes: that one, except that a primary that does not
    ///   decode with a backup whose ring holds nothing newer than
    ///   generation 1 is an interrupted `mkfs` (mkfs writes the primary
    ///   last, in its own flush epoch): not a filesystem.
    ///
    /// Returns the superblock and the address of the copy used.
    pub fn read_superblock(dev: &dyn BlockDevice) -> Result<(Superblock, u64)> {
        let geo = dev.geometry();
        if geo.block_count < 2 {
            return Err(Error::NotNotafs(format!(
                "device of {} blocks is too small",
                geo.block_count
            )));
        }
        let last = geo.block_count - 1;
        let read = |addr: u64, what: &'static str| -> Result<(Vec<u8>, Result<Superblock>)> {
            let mut buf = vec![0u8; geo.block_size as usize];
            dev.read(addr, &mut buf).map_err(|source| Error::Io {
                what,
                block: addr,
                source,
            })?;
            let sb = Superblock::decode(&buf, addr, geo.block_size, geo.block_count);
            Ok((buf, sb))
        };
        let (pbuf, primary) = read(0, "primary superblock")?;
        if let Err(e @ Error::Unsupported(_)) = primary {
            return Err(e);
        }
        let (_, backup) = read(last, "backup superblock")?;
        let backup = match backup {
            Ok(b) if b.block_count == geo.block_count => Ok(b),
            Ok(_) => Err(Error::corrupt("backup copy describes another device size")),
            Err(e) => Err(e),
        };
        match (primary, backup) {
            (Ok(p), Ok(b)) => {
                if p == b {
                    return Ok((p, 0));
                }
                let (sp, sbk) = (ring_score(dev, &p), ring_score(dev, &b));
                if sbk > sp {
                    warn!(
                        "the two superblock copies disagree; using the backup, under which the \
                         root ring verifies (newest generation {} vs {})",
                        sbk.0, sp.0
                    );
                    Ok((b, last))
                } else {
                    warn!("the two superblock copies disagree; using the primary");
                    Ok((p, 0))
                }
            }
            (Ok(p), Err(_)) => Ok((p, 0)),
            (Err(e), Ok(b)) => {
                // The primary is the signature. Without it, a backup whose
                // ring holds nothing newer than generation 1 is an
                // interrupted mkfs (or an empty filesystem: nothing to lose).
                if ring_score(dev, &b).0 <= 1 {
                    let what = if pbuf.iter().all(|&c| c == 0) {
                        "no superblock at block 0"
                    } else {
                        "no valid superblock at block 0"
                    };
                    return Err(Error::NotNotafs(format!(
                        "{what} (the backup copy describes an empty, never-committed \
                         filesystem: an interrupted mkfs)"
                    )));
                }
                warn!("primary superblock unusable ({e}); using the backup copy");
                Ok((b, last))
            }
            (Err(e), Err(Error::Unsupported(m))) => match e {
                Error::NotNotafs(_) => Err(e),
                _ => Err(Error::Unsupported(m)),
            },
            (Err(e), Err(_)) => Err(e),
        }
    }

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
        for i in 0..sb.ring_slots {
            let raw = &ring[i as usize * bs..(i as usize + 1) * bs];
            let state = RootSlot::decode(raw, i, sb.ring_slots, &sb.uuid).map_err(|e| match e {
                Error::Corrupt(m) => m,
                e => e.to_string(),
            });
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

    /// Verify the file-table root a slot points to.
    fn verify_files_root(io: &NodeIo, s: &RootSlot) -> Result<()> {
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
    fn read_free_list(io: &NodeIo, s: &RootSlot) -> Result<allocator::FreeList> {
        let list = allocator::read_list(io, s.freelist, s.freelist_nodes, s.generation)?;
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

    /// Open the filesystem on `dev` at its newest valid generation (or the
    /// one asked for). Reads the superblock, the ring and the free list:
    /// nothing proportional to the data.
    pub fn open(dev: Arc<dyn BlockDevice>, opts: &OpenOptions) -> Result<Fs> {
        let (sb, sb_source) = Self::read_superblock(dev.as_ref())?;
        let layout = Layout::from_superblock(&sb);
        let cache_nodes = (opts.cache_bytes / 2) / sb.node_size as usize;
        let io = NodeIo {
            dev: dev.clone(),
            cache: Arc::new(NodeCache::new(cache_nodes)),
            layout,
        };
        let scanned = Self::scan_slots(&io, &sb)?;
        // Candidates: slots whose file table verifies (readable), newest
        // first, each with its free list when that verified too.
        let mut candidates: Vec<(RootSlot, Option<allocator::FreeList>)> = Vec::new();
        let mut slots = Vec::new();
        for (st, list) in scanned {
            if let (Ok(s), Some(Ok(()))) = (&st.state, &st.roots_ok) {
                candidates.push((*s, list));
            }
            slots.push(st);
        }
        candidates.sort_by(|a, b| b.0.generation.cmp(&a.0.generation));
        if candidates.is_empty() {
            let why: Vec<String> = slots
                .iter()
                .map(|s| match (&s.state, &s.roots_ok) {
                    (Err(e), _) => format!("slot {}: {e}", s.index),
                    (Ok(r), Some(Err(e))) => {
                        format!("slot {} (generation {}): {e}", s.index, r.generation)
                    }
                    (Ok(r), _) => format!("slot {} (generation {}): ok", s.index, r.generation),
                })
                .collect();
            return Err(Error::NoValidRoot(why.join("; ")));
        }
        let newest = candidates[0].0.generation;
        let pick = match opts.generation {
            None => 0,
            Some(g) => candidates
                .iter()
                .position(|c| c.0.generation == g && newest - g < sb.ring_slots as u64)
                .ok_or(Error::NoSuchGeneration(g))?,
        };
        let (slot, list) = candidates.swap_remove(pick);
        // A checksum-valid root newer than the one opened was skipped
        // because its file table does not verify. A power cut cannot cause
        // that (a slot is written only after a barrier behind its trees):
        // it is damage, and writing would overwrite that slot for good.
        let skipped: Vec<String> = slots
            .iter()
            .filter_map(|s| match (&s.state, &s.roots_ok) {
                (Ok(r), Some(Err(e))) if r.generation > slot.generation => {
                    Some(format!("generation {} does not verify ({e})", r.generation))
                }
                _ => None,
            })
            .collect();
        let mut needs_check = None;
        if !skipped.is_empty() {
            if opts.generation.is_none() {
                warn!(
                    generation = slot.generation,
                    "newer root slots are checksum-valid but do not verify: {}; opened the \
                     newest that does",
                    skipped.join(", ")
                );
            }
            needs_check = Some(format!(
                "opened generation {}, but {}",
                slot.generation,
                skipped.join(", ")
            ));
        }
        let (list, alloc) = match list.map(|l| allocator::allocator_from(&l, 0).map(|a| (l, a))) {
            Some(Ok(x)) => (x.0, Some(x.1)),
            Some(Err(e)) => return Err(Error::Internal(format!("free list re-check: {e}"))),
            None => {
                let why = slots
                    .iter()
                    .find_map(|s| match (&s.state, &s.free_list) {
                        (Ok(r), Some(Err(e))) if r.generation == slot.generation => Some(e.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                if needs_check.is_none() && opts.generation.is_none() {
                    warn!(
                        generation = slot.generation,
                        "the free-space list does not verify ({why}); files are readable, \
                         writes refused until fsck.notafs rebuilds it"
                    );
                }
                needs_check.get_or_insert(format!(
                    "the free-space list of generation {} does not verify: {why}",
                    slot.generation
                ));
                (allocator::FreeList::default(), None)
            }
        };
        let read_only = opts.read_only
            || pick != 0
            || needs_check.is_some()
            || sb.ro_compat & !superblock::RO_COMPAT_KNOWN != 0;
        let mut alloc = alloc.unwrap_or_else(Allocator::empty);
        let upto = (slot.generation + 1).saturating_sub(sb.ring_slots as u64);
        let _ = alloc.release(upto)?;
        let files = Tree::<Files>::from_disk(slot.files, slot.files_height, 0)?;
        let txn = Txn {
            files,
            next_ino: slot.next_ino,
            inode_count: slot.inode_count,
            base_alloc: alloc.clone(),
            alloc,
            inodes: HashMap::new(),
            handles: HashMap::new(),
            buffered_bytes: 0,
            changed: false,
        };
        debug!(generation = slot.generation, "opened");
        let failed = Arc::new(AtomicBool::new(false));
        let write_behind = match opts.write_behind {
            Some(n) if !read_only => {
                crate::write_behind::WriteBehind::start(dev.clone(), n, failed.clone())
            }
            _ => None,
        };
        Ok(Fs {
            inner: Arc::new(Inner {
                dev,
                sb,
                sb_source,
                io,
                read_only,
                committed: RwLock::new(Committed {
                    slot,
                    free_list: list.nodes,
                    recent: Vec::new(),
                }),
                txn: Mutex::new(txn),
                pins: Mutex::new(BTreeMap::new()),
                write_behind,
                failed,
                cache_bytes: opts.cache_bytes.max(1 << 20),
                discard: opts.discard && !read_only,
                slots,
                needs_check,
                asked_read_only: opts.read_only,
            }),
        })
    }

    /// Turn protocol-breaking faults on or off for the whole process
    /// (crash-harness use only: every filesystem opened afterwards has them).
    #[cfg(feature = "fault-injection")]
    pub fn set_faults(f: Faults) {
        *FAULTS.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    #[cfg(feature = "fault-injection")]
    fn faults(&self) -> Faults {
        current_faults()
    }

    #[cfg(not(feature = "fault-injection"))]
    #[inline(always)]
    fn faults(&self) -> NoFaults {
        NoFaults::default()
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

    fn check_writable(&self) -> Result<()> {
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
        t.alloc.reserve = self.commit_reserve(t, 0);
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
    fn fail<T>(&self, e: Error) -> Result<T> {
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
        for (g, r) in all.iter().rev() {
            if *g > cur.generation || cur.generation - *g >= n {
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

    /// Whether the transaction holds uncommitted changes.
    pub fn has_changes(&self) -> bool {
        self.txn().changed
    }

    // ----- namespace -------------------------------------------------------

    /// Resolve `p` in the transaction: (key, inode), or None for the root.
    pub(crate) fn lookup(t: &Txn, io: &NodeIo, p: &str) -> Result<Option<(EntryKey, Inode)>> {
        resolve(&t.files, io, p, &|i| {
            t.inodes.get(&i.ino).map_or(i, |st| st.inode)
        })
    }

    /// Key under which `p` would be created, checking its parent directory.
    fn new_key(t: &Txn, io: &NodeIo, p: &str) -> Result<EntryKey> {
        let comps = path::components(p)?;
        let Some((name, dirs)) = comps.split_last() else {
            return Err(Error::Exists("/".into()));
        };
        let parent = if dirs.is_empty() {
            ROOT_INO
        } else {
            let dir = dirs.join("/");
            match Self::lookup(t, io, &dir)? {
                Some((_, i)) if i.kind == FileType::Dir => i.ino,
                Some(_) => return Err(Error::NotADirectory(dir)),
                None => ROOT_INO,
            }
        };
        Ok(EntryKey {
            parent,
            name: (*name).to_string(),
        })
    }

    fn drain_freed(t: &mut Txn, layout: &Layout) -> Result<()> {
        let freed = std::mem::take(&mut t.files.freed);
        for b in freed {
            t.alloc.free(b, layout.node_blocks)?;
        }
        Ok(())
    }

    fn create_inode(&self, p: &str, kind: FileType) -> Result<(EntryKey, Inode)> {
        self.check_writable()?;
        let io = self.io().clone();
        let mut t = self.txn();
        let key = Self::new_key(&t, &io, p)?;
        if t.files.get(&io, &key)?.is_some() {
            return Err(Error::Exists(p.to_string()));
        }
        // The next inode number comes from the root slot: one the decoder
        // would reject, or the last one, must not reach the table.
        if t.next_ino <= ROOT_INO || t.next_ino == u64::MAX {
            return Err(Error::corrupt(format!(
                "root records next inode number {}",
                t.next_ino
            )));
        }
        let inode = Inode {
            ino: t.next_ino,
            kind,
            size: 0,
            mtime_ns: now_ns(),
            extents: Ptr::NULL,
            extent_height: 0,
        };
        self.reserve_check(&mut t, 4)?;
        t.files.insert(&io, key.clone(), inode)?;
        Self::drain_freed(&mut t, &io.layout)?;
        t.next_ino += 1;
        t.inode_count += 1;
        t.changed = true;
        Ok((key, inode))
    }

    /// Create an empty file; fails if `p` exists.
    pub fn create(&self, p: &str) -> Result<crate::File> {
        let (key, inode) = self.create_inode(p, FileType::File)?;
        self.txn().handles.entry(inode.ino).or_insert((key, 0)).1 += 1;
        Ok(crate::File::new(self.clone(), inode.ino))
    }

    /// Open an existing file, or create it when `create` is set; with
    /// `truncate`, drop its content.
    pub fn open_file_with(&self, p: &str, create: bool, truncate: bool) -> Result<crate::File> {
        let found = {
            let t = self.txn();
            match Self::lookup(&t, self.io(), p) {
                Ok(f) => f,
                Err(Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            }
        };
        match found {
            None if path::components(p)?.is_empty() => Err(Error::IsADirectory(p.to_string())),
            None if create => self.create(p),
            None => Err(Error::NotFound(p.to_string())),
            Some((_, i)) if i.kind == FileType::Dir => Err(Error::IsADirectory(p.to_string())),
            Some((key, i)) => {
                self.txn().handles.entry(i.ino).or_insert((key, 0)).1 += 1;
                let f = crate::File::new(self.clone(), i.ino);
                if truncate {
                    f.set_len(0)?;
                }
                Ok(f)
            }
        }
    }

    /// Open an existing file.
    pub fn open_file(&self, p: &str) -> Result<crate::File> {
        self.open_file_with(p, false, false)
    }

    /// Create a directory; its parent must exist.
    pub fn create_dir(&self, p: &str) -> Result<()> {
        self.create_inode(p, FileType::Dir).map(|_| ())
    }

    /// Create a directory and its missing parents.
    pub fn create_dir_all(&self, p: &str) -> Result<()> {
        let comps = path::components(p)?;
        for i in 1..=comps.len() {
            let sub = comps[..i].join("/");
            match self.stat(&sub) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => return Err(Error::NotADirectory(sub)),
                Err(Error::NotFound(_)) => self.create_dir(&sub)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Metadata of `p` as the transaction sees it.
    pub fn stat(&self, p: &str) -> Result<Metadata> {
        let t = self.txn();
        match Self::lookup(&t, self.io(), p)? {
            None => Ok(Metadata {
                ino: ROOT_INO,
                kind: FileType::Dir,
                size: 0,
                mtime_ns: self.committed_slot().time_ns,
            }),
            Some((_, i)) => Ok(meta_of(&i)),
        }
    }

    /// Whether `p` exists.
    pub fn exists(&self, p: &str) -> Result<bool> {
        match self.stat(p) {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Entries of directory `p`, sorted by name.
    pub fn read_dir(&self, p: &str) -> Result<Vec<DirEntry>> {
        let t = self.txn();
        let dir = match Self::lookup(&t, self.io(), p)? {
            None => ROOT_INO,
            Some((_, i)) if i.kind == FileType::Dir => i.ino,
            Some(_) => return Err(Error::NotADirectory(p.to_string())),
        };
        let mut v = list_dir(&t.files, self.io(), dir)?;
        for e in v.iter_mut() {
            if let Some(st) = t.inodes.get(&e.meta.ino) {
                e.meta = meta_of(&st.inode);
            }
        }
        Ok(v)
    }

    /// Remove a file or an empty directory.
    pub fn remove(&self, p: &str) -> Result<()> {
        self.check_writable()?;
        let io = self.io().clone();
        let mut t = self.txn();
        let (key, inode) = Self::lookup(&t, &io, p)?
            .ok_or_else(|| Error::InvalidArgument("cannot remove the root directory".into()))?;
        if inode.kind == FileType::Dir && !list_dir(&t.files, &io, inode.ino)?.is_empty() {
            return Err(Error::DirectoryNotEmpty(p.to_string()));
        }
        let count = Self::one_less(t.inode_count)?;
        self.free_inode_data(&mut t, &io, inode)?;
        t.files.remove(&io, &key)?;
        Self::drain_freed(&mut t, &io.layout)?;
        t.handles.remove(&inode.ino);
        t.inode_count = count;
        t.changed = true;
        Ok(())
    }

    /// Remove `p` and everything below it.
    pub fn remove_all(&self, p: &str) -> Result<()> {
        let m = self.stat(p)?;
        if m.is_dir() {
            for e in self.read_dir(p)? {
                let child = format!("{}/{}", p.trim_end_matches('/'), e.name);
                self.remove_all(&child)?;
            }
        }
        if path::components(p)?.is_empty() {
            return Ok(());
        }
        self.remove(p)
    }

    /// Free every data block and extent node of `inode`.
    fn free_inode_data(&self, t: &mut Txn, io: &NodeIo, inode: Inode) -> Result<()> {
        if inode.kind != FileType::File {
            return Ok(());
        }
        let tree = match t.inodes.remove(&inode.ino) {
            Some(st) => {
                t.buffered_bytes -= st.buf.len() * io.layout.block_size as usize;
                for b in &st.ext.freed {
                    t.alloc.free(*b, io.layout.node_blocks)?;
                }
                st.ext
            }
            None => Tree::<Extents>::from_disk(inode.extents, inode.extent_height, inode.ino)?,
        };
        let mut runs = Vec::new();
        tree.scan(io, None, &mut |_, e| {
            runs.push((e.pblock, e.len()));
            Ok(true)
        })?;
        let mut nodes = Vec::new();
        tree.walk(io, &mut |p, _, _, _, _| {
            if let Some(p) = p {
                nodes.push(p.block);
            }
            Ok(())
        })?;
        for (s, l) in runs {
            t.alloc.free(s, l)?;
        }
        for b in nodes {
            t.alloc.free(b, io.layout.node_blocks)?;
        }
        Ok(())
    }

    /// Rename `from` to `to` atomically, replacing `to` if it is a file (or
    /// an empty directory when `from` is a directory).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.check_writable()?;
        let io = self.io().clone();
        let mut t = self.txn();
        let (fkey, finode) = Self::lookup(&t, &io, from)?
            .ok_or_else(|| Error::InvalidArgument("cannot rename the root directory".into()))?;
        let tkey = Self::new_key(&t, &io, to)?;
        if fkey == tkey {
            return Ok(());
        }
        // A directory cannot move below itself.
        if finode.kind == FileType::Dir {
            let mut p = tkey.parent;
            let mut depth = 0;
            while p != ROOT_INO {
                if p == finode.ino {
                    return Err(Error::InvalidArgument(format!(
                        "cannot move {from} inside itself"
                    )));
                }
                p = parent_of(&t.files, &io, p)?;
                depth += 1;
                if depth > path::MAX_DEPTH {
                    return Err(Error::corrupt("directory chain too deep"));
                }
            }
        }
        // Refuse before changing anything: a failed rename leaves no trace.
        self.reserve_check(&mut t, 8)?;
        if let Some(existing) = t.files.get(&io, &tkey)? {
            let count = Self::one_less(t.inode_count)?;
            let existing = t
                .inodes
                .get(&existing.ino)
                .map(|s| s.inode)
                .unwrap_or(existing);
            match (finode.kind, existing.kind) {
                (FileType::File, FileType::Dir) => return Err(Error::IsADirectory(to.to_string())),
                (FileType::Dir, FileType::File) => {
                    return Err(Error::NotADirectory(to.to_string()))
                }
                (FileType::Dir, FileType::Dir)
                    if !list_dir(&t.files, &io, existing.ino)?.is_empty() =>
                {
                    return Err(Error::DirectoryNotEmpty(to.to_string()))
                }
                _ => {}
            }
            self.free_inode_data(&mut t, &io, existing)?;
            t.handles.remove(&existing.ino);
            t.inode_count = count;
        }
        self.reserve_check(&mut t, 8)?;
        let rec = t
            .files
            .remove(&io, &fkey)?
            .ok_or_else(|| Error::NotFound(from.to_string()))?;
        t.files.insert(&io, tkey.clone(), rec)?;
        Self::drain_freed(&mut t, &io.layout)?;
        if let Some(st) = t.inodes.get_mut(&finode.ino) {
            st.key = tkey.clone();
        }
        if let Some(k) = t.handles.get_mut(&finode.ino) {
            k.0 = tkey;
        }
        t.changed = true;
        Ok(())
    }

    /// The inode count after removing one (the count comes from the root
    /// slot, so zero with an entry to remove is damage).
    fn one_less(count: u64) -> Result<u64> {
        count
            .checked_sub(1)
            .ok_or_else(|| Error::corrupt("root counts no inodes, yet one is being removed"))
    }

    // ----- commit ----------------------------------------------------------

    /// Blocks a commit may need beyond what is already reserved: nodes made
    /// dirty so far, the file table path, the free list, and `extra` nodes.
    fn commit_reserve(&self, t: &Txn, extra: u64) -> u64 {
        let l = &self.inner.io.layout;
        // Buffered partial blocks get their device blocks at commit.
        let buffered = (t.buffered_bytes / l.block_size as usize) as u64;
        let dirty: usize = t.files.dirty_nodes
            + t.inodes
                .values()
                .map(|s| s.ext.dirty_nodes + 2)
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
        (dirty as u64 + list_nodes + 2 * height + 8 + extra) * l.node_blocks + buffered
    }

    pub(crate) fn reserve_check_pub(&self, t: &mut Txn, extra_blocks: u64) -> Result<()> {
        let r = self.commit_reserve(t, 0) + extra_blocks;
        t.alloc.reserve = r;
        if t.alloc.free.total() < r {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// Refuse an operation that would eat into what the commit needs.
    fn reserve_check(&self, t: &mut Txn, extra_nodes: u64) -> Result<()> {
        let r = self.commit_reserve(t, extra_nodes);
        t.alloc.reserve = r;
        if t.alloc.free.total() < r {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// Make every change since the last commit durable at once. Returns the
    /// new generation. On a device error the filesystem refuses further
    /// writes (reopen it: the last commit is intact).
    pub fn commit(&self) -> Result<u64> {
        self.check_writable()?;
        let mut t = self.txn();
        match self.commit_locked(&mut t) {
            Ok(g) => Ok(g),
            Err(e) => self.fail(e),
        }
    }

    fn commit_locked(&self, t: &mut Txn) -> Result<u64> {
        let io = self.io().clone();
        let layout = io.layout;
        let (prev, old_list) = {
            let c = self
                .inner
                .committed
                .read()
                .unwrap_or_else(|e| e.into_inner());
            (c.slot, c.free_list.clone())
        };
        let generation = next_generation(prev.generation)?;
        let faults = self.faults();
        t.alloc.reserve = 0;

        // 1. Buffered data, then extent trees into the file table.
        let inos: Vec<u64> = t.inodes.keys().copied().collect();
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        for ino in &inos {
            crate::file::flush_buffer(self, t, *ino, faults.forget_last_extent, true)?;
        }
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
            t.files.insert(&io, st.key.clone(), st.inode)?;
            Self::drain_freed(t, &layout)?;
        }
        t.buffered_bytes = 0;
        let alloc = &mut t.alloc;
        let files_root = t.files.write(
            &io,
            generation,
            &mut || alloc.alloc_exact(layout.node_blocks, true),
            &mut out,
        )?;

        // 2-6. The old free list is freed by this commit; the new one, the
        // nodes, barrier, root slot, flush: commit.rs.
        for b in &old_list {
            t.alloc.free(*b, layout.node_blocks)?;
        }
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
            },
            &mut out,
            crate::commit::CommitFaults {
                skip_barrier: faults.skip_barrier,
                root_before_data: faults.root_before_data,
                reuse_freed_immediately: faults.reuse_freed_immediately,
            },
        )?;
        let slot = written.slot;
        let list_blocks = written.free_list;
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

    /// Make pending blocks reusable once no retained generation and no
    /// live snapshot can reference them.
    fn release(&self, t: &mut Txn) -> Result<()> {
        let g = self.generation();
        let mut upto = (g + 1).saturating_sub(self.inner.sb.ring_slots as u64);
        let pins = self.inner.pins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((&min, _)) = pins.iter().next() {
            upto = upto.min(min);
        }
        drop(pins);
        let released = t.alloc.release(upto)?;
        if self.inner.discard {
            // A hint on blocks no retained root references: whatever the
            // device does with them (nothing, zeros, garbage) is harmless.
            for (s, l) in released {
                if let Err(e) = self.inner.dev.discard(s, l) {
                    debug!("discard of {s}+{l} failed: {e}");
                }
            }
        }
        Ok(())
    }

    /// Drop every change since the last commit.
    pub fn abort(&self) -> Result<()> {
        let mut t = self.txn();
        let slot = self.committed_slot();
        t.files = Tree::from_disk(slot.files, slot.files_height, 0)?;
        t.next_ino = slot.next_ino;
        t.inode_count = slot.inode_count;
        t.alloc = t.base_alloc.clone();
        t.inodes.clear();
        t.buffered_bytes = 0;
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

    /// A read-only view of the last committed generation that never waits
    /// for the writer. Blocks it references are not reused while it lives.
    pub fn snapshot(&self) -> crate::Snapshot {
        let slot = self.committed_slot();
        crate::Snapshot::new(self.clone(), slot)
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

/// Write encoded blocks sorted by address, merging adjacent ones into single
/// requests, handed to the device as one batch.
pub(crate) fn meta_of(i: &Inode) -> Metadata {
    Metadata {
        ino: i.ino,
        kind: i.kind,
        size: i.size,
        mtime_ns: i.mtime_ns,
    }
}

/// Resolve path `p` in the file table `files`: its key and inode, or None
/// for the root. `current` maps an inode to its up-to-date version (the
/// transaction's changes not yet in the table).
pub(crate) fn resolve(
    files: &Tree<Files>,
    io: &NodeIo,
    p: &str,
    current: &dyn Fn(Inode) -> Inode,
) -> Result<Option<(EntryKey, Inode)>> {
    let comps = path::components(p)?;
    let mut parent = ROOT_INO;
    let mut found = None;
    for (i, c) in comps.iter().enumerate() {
        let key = EntryKey {
            parent,
            name: (*c).to_string(),
        };
        let ino = current(
            files
                .get(io, &key)?
                .ok_or_else(|| Error::NotFound(p.to_string()))?,
        );
        if i + 1 < comps.len() && ino.kind != FileType::Dir {
            return Err(Error::NotADirectory(p.to_string()));
        }
        parent = ino.ino;
        found = Some((key, ino));
    }
    Ok(found)
}

/// Entries of directory `dir` in `files`.
pub(crate) fn list_dir(files: &Tree<Files>, io: &NodeIo, dir: u64) -> Result<Vec<DirEntry>> {
    let mut v = Vec::new();
    let start = EntryKey {
        parent: dir,
        name: String::new(),
    };
    files.scan(io, Some(&start), &mut |k, i| {
        if k.parent != dir {
            return Ok(false);
        }
        v.push(DirEntry {
            name: k.name.clone(),
            meta: meta_of(i),
        });
        Ok(true)
    })?;
    Ok(v)
}

/// Parent inode of directory `ino` (a scan: renames of directories are
/// rare, and this only runs to refuse moving a directory into itself).
fn parent_of(files: &Tree<Files>, io: &NodeIo, ino: u64) -> Result<u64> {
    let mut parent = None;
    files.scan(io, None, &mut |k, i| {
        if i.ino == ino {
            parent = Some(k.parent);
            return Ok(false);
        }
        Ok(true)
    })?;
    parent.ok_or_else(|| Error::corrupt(format!("directory {ino} has no entry")))
}

/// Stand-in for `Faults` when fault injection is compiled out: every switch
/// is a constant false, so the checks vanish.
#[cfg(not(feature = "fault-injection"))]
#[derive(Clone, Copy, Default)]
struct NoFaults {
    skip_barrier: bool,
    root_before_data: bool,
    reuse_freed_immediately: bool,
    skip_verify: bool,
    forget_last_extent: bool,
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Fs>();
}
