//! `notafs dump`: the on-disk structure, for debugging.
//!
//! Works from the raw device, not through a mounted [`Fs`], so that it can
//! show as much as possible of a damaged image: the superblock, every root
//! slot, and for one generation the file table nodes, every inode with its
//! extent tree and extents, and the free-space list. Every node is read,
//! verified (checksum from its parent, magic, address, kind, level, owner)
//! and decoded by notafs-core's own decoders ([`NodeIo`], the [`Files`] and
//! [`Extents`] tree kinds, [`read_list`]): the format is decoded in one
//! place only. Damage is printed in place and the walk goes on. Visited
//! nodes are remembered, so a cycle cannot make it loop. Never writes.
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;

use notafs_blockdev::BlockDevice;
use notafs_core::raw::{
    read_slot_list, Child, Extents, Files, Inode, Layout, Node, NodeCache, NodeIo, Ptr,
    KIND_EXTENTS, KIND_FILES, MAX_HEIGHT,
};
use notafs_core::{FileType, Fs, RootSlot, Superblock};

use crate::common::{format_time_ns, format_uuid, CliError, CliResult};

struct Walker {
    io: NodeIo,
    seen: HashSet<u64>,
    out: String,
}

impl Walker {
    fn line(&mut self, depth: usize, s: impl AsRef<str>) {
        let _ = writeln!(self.out, "{:indent$}{}", "", s.as_ref(), indent = depth * 2);
    }

    /// Mark `p` visited; Err when it was already (a cycle or shared node).
    fn visit(&mut self, p: Ptr) -> Result<(), String> {
        if !self.seen.insert(p.block) {
            return Err(format!(
                "block {} already visited (cycle or shared node)",
                p.block
            ));
        }
        Ok(())
    }

    /// Walk the file table; collect (parent, name, inode).
    fn files(&mut self, p: Ptr, level: u8, depth: usize, acc: &mut Vec<Entry>) {
        let r = self.visit(p).and_then(|()| {
            let (h, _) = self
                .io
                .read_raw(p, KIND_FILES, Some(level), 0)
                .map_err(|e| e.to_string())?;
            let n = self
                .io
                .load::<Files>(p, level, 0)
                .map_err(|e| e.to_string())?;
            Ok((h, n))
        });
        let (h, node) = match r {
            Ok(x) => x,
            Err(e) => return self.line(depth, format!("!! file table node {}: {e}", p.block)),
        };
        self.line(
            depth,
            format!(
                "node {} level {} generation {} entries {}",
                p.block, h.level, h.generation, h.count
            ),
        );
        match node {
            Node::Leaf(es) => acc.extend(es.into_iter().map(|(k, ino)| Entry {
                parent: k.parent,
                name: k.name,
                ino,
            })),
            Node::Branch(cs) => {
                for (k, c) in cs {
                    self.line(depth + 1, format!("key ({}, {:?}) ->", k.parent, k.name));
                    match c {
                        Child::Disk(c) => self.files(c, level - 1, depth + 1, acc),
                        Child::Mem(_) => self.line(depth + 1, "!! in-memory child"),
                    }
                }
            }
        }
    }

    /// Walk an extent tree, printing nodes and extents.
    fn extents(&mut self, p: Ptr, level: u8, owner: u64, depth: usize, bs: u64) {
        let r = self.visit(p).and_then(|()| {
            let (h, _) = self
                .io
                .read_raw(p, KIND_EXTENTS, Some(level), owner)
                .map_err(|e| e.to_string())?;
            let n = self
                .io
                .load::<Extents>(p, level, owner)
                .map_err(|e| e.to_string())?;
            Ok((h, n))
        });
        let (h, node) = match r {
            Ok(x) => x,
            Err(e) => return self.line(depth, format!("!! extent node {}: {e}", p.block)),
        };
        self.line(
            depth,
            format!(
                "extent node {} level {} generation {} entries {}",
                p.block, h.level, h.generation, h.count
            ),
        );
        match node {
            Node::Leaf(es) => {
                for (lblock, x) in es {
                    let (len, pblock) = (x.len(), x.pblock);
                    self.line(
                        depth + 1,
                        format!(
                            "file blocks {lblock}..{} (bytes {}..{}) -> device blocks {pblock}..{}",
                            lblock.saturating_add(len),
                            lblock.saturating_mul(bs),
                            lblock.saturating_add(len).saturating_mul(bs),
                            pblock.saturating_add(len)
                        ),
                    );
                }
            }
            Node::Branch(cs) => {
                for (k, c) in cs {
                    self.line(depth + 1, format!("from file block {k} ->"));
                    match c {
                        Child::Disk(c) => self.extents(c, level - 1, owner, depth + 1, bs),
                        Child::Mem(_) => self.line(depth + 1, "!! in-memory child"),
                    }
                }
            }
        }
    }

    /// The free space of a generation, decoded and validated by the core:
    /// its list's nodes, the slot's delta, then the resulting entries.
    fn free_list(&mut self, slot: &RootSlot) {
        let list = match read_slot_list(&self.io, slot) {
            Ok(l) => l,
            Err(e) => return self.line(1, format!("!! {e}")),
        };
        let nodes: Vec<String> = list.nodes.iter().map(|b| b.to_string()).collect();
        self.line(1, format!("nodes at blocks {}", nodes.join(" ")));
        if !slot.delta.is_empty() {
            self.line(
                1,
                format!(
                    "the slot's delta changes {} ranges of that list (written by an earlier commit)",
                    slot.delta.entries().len()
                ),
            );
        }
        let mut free = 0u64;
        let mut pending: BTreeMap<u64, u64> = BTreeMap::new();
        for (s, l, t) in list.entries {
            if t == 0 {
                free = free.saturating_add(l);
                self.line(
                    2,
                    format!("free    {s}..{} ({l} blocks)", s.saturating_add(l)),
                );
            } else {
                *pending.entry(t).or_default() += l;
                self.line(
                    2,
                    format!(
                        "pending {s}..{} ({l} blocks, freed by generation {t})",
                        s.saturating_add(l)
                    ),
                );
            }
        }
        self.line(1, format!("total free: {free} blocks"));
        for (g, n) in pending {
            self.line(1, format!("pending from generation {g}: {n} blocks"));
        }
    }
}

struct Entry {
    parent: u64,
    name: String,
    ino: Inode,
}

fn ptr(p: Ptr) -> String {
    if p.is_null() {
        "none".into()
    } else {
        format!("block {} (crc {:08x})", p.block, p.crc)
    }
}

/// Dump the structure of the filesystem on `dev`, at `generation` or the
/// newest slot that decodes.
pub fn dump_device(
    dev: &Arc<dyn BlockDevice>,
    generation: Option<u64>,
    out: &mut dyn Write,
) -> CliResult<()> {
    let geo = dev.geometry();
    let (sb, src) = Fs::read_superblock(dev.as_ref())?;
    let layout = Layout::from_superblock(&sb);
    let mut wk = Walker {
        io: NodeIo {
            dev: dev.clone(),
            cache: Arc::new(NodeCache::new(64)),
            data_cache: Arc::new(NodeCache::new(16)),
            decoded: Arc::new(notafs_core::raw::DecodedCache::new(16)),
            layout,
        },
        seen: HashSet::new(),
        out: String::new(),
    };
    superblock(&mut wk, &sb, src, geo.block_count);

    // Root slots.
    wk.line(
        0,
        format!("root ring: blocks {}..{}", sb.ring_start, sb.data_start()),
    );
    let bs = sb.block_size as usize;
    let mut ring = vec![0u8; bs * sb.ring_slots as usize];
    dev.read(sb.ring_start, &mut ring)
        .map_err(|e| CliError::op(format!("reading the root ring: {e}")))?;
    let mut slots: Vec<RootSlot> = Vec::new();
    for i in 0..sb.ring_slots {
        let raw = &ring[i as usize * bs..(i as usize + 1) * bs];
        match RootSlot::decode(raw, i, sb.ring_slots, &sb.uuid) {
            Ok(s) => {
                wk.line(
                    1,
                    format!(
                        "slot {i}: generation {} at {} UTC; file table {} height {}; free list {} x{} \
                         + {} delta ranges; {} inode patches; next ino {}; inodes {}; used {} free {} \
                         pending {}",
                        s.generation,
                        format_time_ns(s.time_ns),
                        ptr(s.files),
                        s.files_height,
                        ptr(s.freelist),
                        s.freelist_nodes,
                        s.delta.entries().len(),
                        s.patches.entries().len(),
                        s.next_ino,
                        s.inode_count,
                        s.used_blocks,
                        s.free_blocks,
                        s.pending_blocks
                    ),
                );
                slots.push(s);
            }
            Err(notafs_core::Error::Corrupt(m)) => wk.line(1, format!("slot {i}: {m}")),
            Err(e) => wk.line(1, format!("slot {i}: {e}")),
        }
    }
    let pick = match generation {
        Some(g) => slots
            .iter()
            .find(|s| s.generation == g)
            .copied()
            .ok_or_else(|| {
                CliError::not_found(format!("generation {g} is not in any root slot"))
            })?,
        None => slots
            .iter()
            .max_by_key(|s| s.generation)
            .copied()
            .ok_or_else(|| CliError::op("no root slot decodes"))?,
    };
    wk.line(0, "");
    wk.line(0, format!("generation {}:", pick.generation));

    // File table.
    wk.line(0, format!("file table (height {}):", pick.files_height));
    let mut entries = Vec::new();
    if pick.files_height as usize > MAX_HEIGHT {
        wk.line(1, format!("!! height {} is absurd", pick.files_height));
    } else if !pick.files.is_null() && pick.files_height > 0 {
        wk.files(pick.files, pick.files_height - 1, 1, &mut entries);
    }
    // The slot's inode patches replace the table's extent root, size and
    // mtime of files written since the table was (the table's own extent
    // root may no longer exist).
    let mut patched = std::collections::HashSet::new();
    for e in &mut entries {
        if let Some(p) = pick.patches.entries().iter().find(|p| p.ino == e.ino.ino) {
            // A hostile patch is shown, not followed (the core's open
            // refuses such a slot; dump reads whatever is there).
            if p.extents.is_null() != (p.extent_height == 0)
                || p.extent_height as usize > MAX_HEIGHT
            {
                wk.line(
                    1,
                    format!(
                        "!! the patch of inode {} has extent root {} with height {}",
                        p.ino, p.extents.block, p.extent_height
                    ),
                );
                continue;
            }
            p.apply(&mut e.ino);
            patched.insert(e.ino.ino);
        }
    }
    if !pick.patches.is_empty() {
        wk.line(
            1,
            format!(
                "the root slot patches {} inodes (extent root, size, mtime)",
                pick.patches.entries().len()
            ),
        );
    }

    // Inodes with their paths and extents.
    let parents: std::collections::HashMap<u64, (u64, String)> = entries
        .iter()
        .map(|e| (e.ino.ino, (e.parent, e.name.clone())))
        .collect();
    let path_of = |e: &Entry| -> String {
        let mut parts = vec![e.name.clone()];
        let mut p = e.parent;
        let mut n = 0;
        while p != notafs_core::ROOT_INO {
            match parents.get(&p) {
                Some((pp, name)) if n < 64 => {
                    parts.push(name.clone());
                    p = *pp;
                    n += 1;
                }
                _ => {
                    parts.push(format!("<orphan of inode {p}>"));
                    break;
                }
            }
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    };
    let mut shown: Vec<(String, &Entry)> = entries.iter().map(|e| (path_of(e), e)).collect();
    shown.sort_by(|a, b| a.0.cmp(&b.0));
    wk.line(0, "");
    wk.line(0, format!("inodes ({}):", shown.len()));
    for (path, e) in shown {
        let i = &e.ino;
        let kind = match i.kind {
            FileType::File => "file",
            FileType::Dir => "dir ",
        };
        wk.line(
            1,
            format!(
                "{kind} ino {} {path} size {} mtime {} UTC{}",
                i.ino,
                i.size,
                format_time_ns(i.mtime_ns),
                if patched.contains(&i.ino) {
                    " (patched by the root slot)"
                } else {
                    ""
                }
            ),
        );
        if !i.extents.is_null() {
            // The core's decoder has checked the height against MAX_HEIGHT.
            wk.extents(
                i.extents,
                i.extent_height - 1,
                i.ino,
                2,
                sb.block_size as u64,
            );
        }
    }

    // Free space.
    wk.line(0, "");
    wk.line(
        0,
        format!("free-space list ({} nodes):", pick.freelist_nodes),
    );
    wk.free_list(&pick);
    match out.write_all(wk.out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::op(format!("writing output: {e}")))
        }
        _ => Ok(()),
    }
}

fn superblock(wk: &mut Walker, sb: &Superblock, src: u64, dev_blocks: u64) {
    wk.line(
        0,
        format!(
            "superblock ({}):",
            if src == 0 {
                "primary, block 0".to_string()
            } else {
                format!("BACKUP copy at block {src}; the primary is unusable")
            }
        ),
    );
    wk.line(
        1,
        format!("version {}.{}", sb.version_major, sb.version_minor),
    );
    wk.line(
        1,
        format!(
            "features compat {:#x} ro_compat {:#x} incompat {:#x}",
            sb.compat, sb.ro_compat, sb.incompat
        ),
    );
    wk.line(1, format!("uuid {}", format_uuid(&sb.uuid)));
    wk.line(1, format!("label {:?}", sb.label));
    wk.line(
        1,
        format!(
            "block size {} node size {} ({} blocks per node)",
            sb.block_size,
            sb.node_size,
            sb.node_blocks()
        ),
    );
    wk.line(
        1,
        format!(
            "block count {} (device {dev_blocks}); data area {}..{}; backup at {}",
            sb.block_count,
            sb.data_start(),
            sb.data_end(),
            sb.backup_address()
        ),
    );
    wk.line(
        1,
        format!(
            "created {} UTC",
            format_time_ns(sb.created.saturating_mul(1_000_000_000))
        ),
    );
}

/// Dump the filesystem an open [`Fs`] lives on.
pub fn dump(fs: &Fs, out: &mut dyn Write) -> CliResult<()> {
    dump_device(fs.device(), Some(fs.generation()), out)
}
