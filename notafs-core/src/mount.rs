//! Format and open: planning a new filesystem, reading and choosing the
//! superblock copy, scanning the root ring, choosing the generation to open
//! and deciding whether it may be written.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use notafs_blockdev::BlockDevice;
use tracing::{debug, info, warn};

use crate::allocator::{self, Allocator};
use crate::btree::{NodeIo, Tree};
use crate::cache::NodeCache;
use crate::file_table::{Files, ROOT_INO};
use crate::fs::{now_ns, Committed, FormatOptions, Fs, Inner, OpenOptions};
use crate::node::{Layout, Ptr};
use crate::root_ring::RootSlot;
use crate::superblock::{self, Superblock};
use crate::txn::Txn;
use crate::{Error, Result};

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
        // either the old filesystem intact, no filesystem, or the new one
        // complete and clean:
        // 1. the erase mark over the primary superblock (`Fs::erase`): from
        //    here on the device is not a notafs filesystem, whatever an old
        //    backup copy and ring still say (see `read_superblock`);
        // 2. wipe the ring, write generation 1 (free list, barrier, root
        //    slot, flush: commit.rs), then the backup superblock;
        // 3. barrier, the primary superblock, last (as btrfs does), flush.
        Self::erase(dev.as_ref())?;
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
                patches: Default::default(),
            },
            &mut Vec::new(),
            None,
            None,
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

    /// Make `dev` not a filesystem, atomically: write the erase mark over
    /// block 0 and flush (superblock.rs explains why). Whatever filesystem
    /// was there is intact until the mark is durable and gone after it; the
    /// rest of the device is untouched, so a caller may then discard or
    /// wipe anything but block 0 and a power cut leaves no half-destroyed
    /// filesystem behind. `format` begins with it; `mkfs` calls it before
    /// discarding.
    pub fn erase(dev: &dyn BlockDevice) -> Result<()> {
        let geo = dev.geometry();
        if geo.block_count == 0 {
            return Ok(());
        }
        let io = |what: &'static str| {
            move |source| Error::Io {
                what,
                block: 0,
                source,
            }
        };
        dev.write(0, &crate::superblock::erase_mark(geo.block_size as usize))
            .map_err(io("erase mark"))?;
        dev.flush().map_err(io("flush after the erase mark"))
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
            compat: superblock::COMPAT_ATTRS,
            ro_compat: 0,
            incompat: superblock::INCOMPAT_COMMIT_LOG
                | superblock::INCOMPAT_FREE_DELTA
                | superblock::INCOMPAT_INODE_PATCH
                | superblock::INCOMPAT_LOG_RUNS,
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
        if crate::superblock::is_erase_mark(&pbuf) {
            return Err(Error::NotNotafs(
                "block 0 holds the erase mark of an interrupted mkfs.notafs (the filesystem \
                 that was here was being replaced): run mkfs.notafs again"
                    .into(),
            ));
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

    /// Open the filesystem on `dev` at its newest valid generation (or the
    /// one asked for). Reads the superblock, the ring and the free list:
    /// nothing proportional to the data.
    pub fn open(dev: Arc<dyn BlockDevice>, opts: &OpenOptions) -> Result<Fs> {
        let (sb, sb_source) = Self::read_superblock(dev.as_ref())?;
        let layout = Layout::from_superblock(&sb);
        // The cache budget: half for buffered writes (fs.rs), a quarter for
        // decoded-and-verified nodes, a quarter for file-data blocks.
        let cache_nodes = (opts.cache_bytes / 4) / sb.node_size as usize;
        let cache_data = (opts.cache_bytes / 4) / sb.block_size as usize;
        let io = NodeIo {
            dev: dev.clone(),
            cache: Arc::new(NodeCache::new(cache_nodes)),
            data_cache: Arc::new(NodeCache::new(cache_data)),
            // Decoded nodes take more room than their bytes: an eighth of
            // the node count (the raw bytes stay cached behind them).
            decoded: Arc::new(crate::cache::DecodedCache::new(cache_nodes / 8)),
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
        // Blocks freed by commits up to the oldest generation still in the
        // ring are referenced by no slot: reusable. Normally that is
        // g + 1 - N; after generations were dropped for space (their slots
        // wiped) it is later.
        let oldest_on_ring = slots
            .iter()
            .filter_map(|s| s.state.as_ref().ok().map(|r| r.generation))
            .filter(|&x| x <= slot.generation)
            .min()
            .unwrap_or(slot.generation);
        let upto = (slot.generation + 1)
            .saturating_sub(sb.ring_slots as u64)
            .max(if pick == 0 { oldest_on_ring } else { 0 });
        let _ = alloc.release(upto)?;
        let files = Tree::<Files>::from_slot(&slot)?;
        let txn = Txn {
            files,
            next_ino: slot.next_ino,
            inode_count: slot.inode_count,
            base_alloc: alloc.clone(),
            alloc,
            inodes: HashMap::new(),
            handles: HashMap::new(),
            buffered_bytes: 0,
            data_crcs: HashMap::new(),
            data_crcs_overflow: false,
            changed: false,
        };
        debug!(generation = slot.generation, "opened");
        let failed = Arc::new(AtomicBool::new(false));
        let write_behind = match opts.write_behind {
            Some(n) if !read_only => Some(crate::write_behind::WriteBehind::start(
                dev.clone(),
                n,
                failed.clone(),
            )),
            _ => None,
        };
        let fs = Fs {
            inner: Arc::new(Inner {
                dev,
                sb,
                sb_source,
                io,
                read_only,
                committed: RwLock::new(Committed {
                    slot,
                    free_list: list.nodes,
                    free_base: Arc::new(list.base),
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
                // Only a handle seals its own commits: a log slot found at
                // open is confirmed by this handle's first commit.
                sealed: AtomicBool::new(true),
                commit_log: AtomicBool::new(true),
                dropped_below: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        if !fs.inner.read_only {
            fs.wipe_residue()?;
        }
        Ok(fs)
    }
}

/// How well the root ring verifies under superblock `sb`: (newest
/// decodable generation, number of decodable slots). Used only to choose
/// between two disagreeing superblock copies; a read error scores nothing.
pub(crate) fn ring_score(dev: &dyn BlockDevice, sb: &Superblock) -> (u64, u32) {
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

/// Creation time honouring `SOURCE_DATE_EPOCH` for reproducible images.
pub(crate) fn source_time() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| now_ns() / 1_000_000_000)
}
