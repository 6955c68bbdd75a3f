//! `notafs dump`: the on-disk structure, for debugging.
//!
//! Works from the raw device, not through a mounted [`Fs`], so that it can
//! show as much as possible of a damaged image: the superblock, every root
//! slot, and for one generation the file table nodes, every inode with its
//! extent tree and extents, and the free-space list. Every node is checked
//! (checksum from its parent, magic, address, kind) before it is decoded;
//! damage is printed in place and the walk goes on. Visited nodes are
//! remembered, so a cycle cannot make it loop. Never writes.
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;

use notafs_blockdev::BlockDevice;
use notafs_core::codec::Dec;
use notafs_core::raw::{
    crc, Layout, Ptr, KIND_EXTENTS, KIND_FILES, KIND_FREELIST, MAX_HEIGHT, NODE_HEADER,
};
use notafs_core::{Fs, RootSlot, Superblock};

use crate::common::{format_time_ns, format_uuid, CliError, CliResult};

struct Walker<'a> {
    dev: &'a dyn BlockDevice,
    layout: Layout,
    seen: HashSet<u64>,
    out: String,
}

/// A node header as read from disk.
struct Hdr {
    level: u8,
    count: u16,
    generation: u64,
}

impl Walker<'_> {
    fn line(&mut self, depth: usize, s: impl AsRef<str>) {
        let _ = writeln!(self.out, "{:indent$}{}", "", s.as_ref(), indent = depth * 2);
    }

    /// Read and check the node at `p`; Err is a description of the damage.
    fn read(&mut self, p: Ptr, kind: u8, owner: u64) -> Result<(Hdr, Vec<u8>), String> {
        if !self.layout.node_in_range(p.block) {
            return Err(format!(
                "pointer to block {} outside the data area {}..{}",
                p.block, self.layout.data_start, self.layout.data_end
            ));
        }
        if !self.seen.insert(p.block) {
            return Err(format!(
                "block {} already visited (cycle or shared node)",
                p.block
            ));
        }
        let mut buf = vec![0u8; self.layout.node_size as usize];
        self.dev
            .read(p.block, &mut buf)
            .map_err(|e| format!("read error: {e}"))?;
        let c = crc(&buf);
        if c != p.crc {
            return Err(format!(
                "checksum {c:08x} but the parent expects {:08x}",
                p.crc
            ));
        }
        if &buf[0..4] != b"NTND" {
            return Err("bad node magic".into());
        }
        let u64at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap_or([0; 8]));
        let h = Hdr {
            level: buf[5],
            count: u16::from_le_bytes([buf[6], buf[7]]),
            generation: u64at(16),
        };
        if buf[4] != kind {
            return Err(format!("node of kind {} where {kind} was expected", buf[4]));
        }
        if u64at(8) != p.block {
            return Err(format!("node claims address {} (misdirected)", u64at(8)));
        }
        if u64at(24) != owner {
            return Err(format!("node owned by inode {} not {owner}", u64at(24)));
        }
        Ok((h, buf))
    }

    /// Walk the file table; collect (parent, name, inode fields).
    fn files(&mut self, p: Ptr, level: u8, depth: usize, acc: &mut Vec<Entry>) {
        let (h, buf) = match self.read(p, KIND_FILES, 0) {
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
        if h.level != level {
            self.line(
                depth,
                format!("!! level {} where {level} was expected", h.level),
            );
            return;
        }
        let mut d = Dec::new(&buf[NODE_HEADER..], "file table");
        let mut children = Vec::new();
        for _ in 0..h.count {
            let r = (|| -> notafs_core::Result<()> {
                let parent = d.u64()?;
                let len = d.u16()? as usize;
                let name = String::from_utf8_lossy(d.take(len)?).into_owned();
                if h.level == 0 {
                    let ino = d.u64()?;
                    let kind = d.u8()?;
                    let eh = d.u8()?;
                    d.take(6)?;
                    let size = d.u64()?;
                    let mtime = d.u64()?;
                    let eb = d.u64()?;
                    let ec = d.u32()?;
                    d.u32()?;
                    acc.push(Entry {
                        parent,
                        name,
                        ino,
                        kind,
                        size,
                        mtime,
                        ext: Ptr { block: eb, crc: ec },
                        ext_height: eh,
                    });
                } else {
                    let b = d.u64()?;
                    let c = d.u32()?;
                    children.push((parent, name, Ptr { block: b, crc: c }));
                }
                Ok(())
            })();
            if let Err(e) = r {
                self.line(depth, format!("!! {e}"));
                return;
            }
        }
        for (parent, name, c) in children {
            self.line(depth + 1, format!("key ({parent}, {name:?}) ->"));
            self.files(c, h.level - 1, depth + 1, acc);
        }
    }

    /// Walk an extent tree, printing nodes and extents.
    fn extents(&mut self, p: Ptr, level: u8, owner: u64, depth: usize, bs: u64) {
        let (h, buf) = match self.read(p, KIND_EXTENTS, owner) {
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
        if h.level != level {
            self.line(
                depth,
                format!("!! level {} where {level} was expected", h.level),
            );
            return;
        }
        let mut d = Dec::new(&buf[NODE_HEADER..], "extent tree");
        let mut children = Vec::new();
        for _ in 0..h.count {
            let r = (|| -> notafs_core::Result<()> {
                let lblock = d.u64()?;
                if h.level == 0 {
                    let pblock = d.u64()?;
                    let len = d.u32()? as u64;
                    if len > self.layout.max_extent as u64 {
                        return Err(notafs_core::Error::Corrupt(format!(
                            "extent of {len} blocks"
                        )));
                    }
                    d.take(4 * len as usize)?;
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
                } else {
                    let b = d.u64()?;
                    let c = d.u32()?;
                    children.push((lblock, Ptr { block: b, crc: c }));
                }
                Ok(())
            })();
            if let Err(e) = r {
                self.line(depth, format!("!! {e}"));
                return;
            }
        }
        for (k, c) in children {
            self.line(depth + 1, format!("from file block {k} ->"));
            self.extents(c, h.level - 1, owner, depth + 1, bs);
        }
    }

    fn free_list(&mut self, head: Ptr, count: u32) {
        let mut p = head;
        let mut free = 0u64;
        let mut pending: BTreeMap<u64, u64> = BTreeMap::new();
        for i in 0..count {
            if p.is_null() {
                self.line(1, format!("!! list ends after {i} of {count} nodes"));
                break;
            }
            let (h, buf) = match self.read(p, KIND_FREELIST, 0) {
                Ok(x) => x,
                Err(e) => return self.line(1, format!("!! free list node {}: {e}", p.block)),
            };
            self.line(
                1,
                format!(
                    "node {} generation {} entries {}",
                    p.block, h.generation, h.count
                ),
            );
            let mut d = Dec::new(&buf[NODE_HEADER..], "free list");
            let r = (|| -> notafs_core::Result<Ptr> {
                let next = Ptr {
                    block: d.u64()?,
                    crc: d.u32()?,
                };
                d.u32()?;
                for _ in 0..h.count {
                    let s = d.u64()?;
                    let l = d.u64()?;
                    let t = d.u64()?;
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
                Ok(next)
            })();
            match r {
                Ok(n) => p = n,
                Err(e) => return self.line(2, format!("!! {e}")),
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
    ino: u64,
    kind: u8,
    size: u64,
    mtime: u64,
    ext: Ptr,
    ext_height: u8,
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
        dev: dev.as_ref(),
        layout,
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
                        "slot {i}: generation {} at {} UTC; file table {} height {}; free list {} x{}; \
                         next ino {}; inodes {}; used {} free {} pending {}",
                        s.generation,
                        format_time_ns(s.time_ns),
                        ptr(s.files),
                        s.files_height,
                        ptr(s.freelist),
                        s.freelist_nodes,
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

    // Inodes with their paths and extents.
    let parents: std::collections::HashMap<u64, (u64, String)> = entries
        .iter()
        .map(|e| (e.ino, (e.parent, e.name.clone())))
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
        let kind = match e.kind {
            1 => "file",
            2 => "dir ",
            _ => "????",
        };
        wk.line(
            1,
            format!(
                "{kind} ino {} {path} size {} mtime {} UTC",
                e.ino,
                e.size,
                format_time_ns(e.mtime)
            ),
        );
        if !e.ext.is_null() {
            if e.ext_height == 0 || e.ext_height as usize > MAX_HEIGHT {
                wk.line(2, format!("!! extent tree height {}", e.ext_height));
            } else {
                wk.extents(e.ext, e.ext_height - 1, e.ino, 2, sb.block_size as u64);
            }
        }
    }

    // Free space.
    wk.line(0, "");
    wk.line(
        0,
        format!("free-space list ({} nodes):", pick.freelist_nodes),
    );
    let max_nodes = (layout.data_end - layout.data_start) / layout.node_blocks.max(1);
    if pick.freelist_nodes as u64 > max_nodes {
        wk.line(1, format!("!! {} nodes cannot fit", pick.freelist_nodes));
    } else {
        wk.free_list(pick.freelist, pick.freelist_nodes);
    }
    match out.write_all(wk.out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::op(format!("writing output: {e}")))
        }
        _ => Ok(()),
    }
}

fn superblock(wk: &mut Walker<'_>, sb: &Superblock, src: u64, dev_blocks: u64) {
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
