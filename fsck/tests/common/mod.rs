//! Shared helpers of the fsck tests: build good images, decode and rewrite
//! their on-disk structures (keeping every checksum chain valid), and run
//! the real binary.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::BlockDevice;
use notafs_core::raw::{blake, crc};
use notafs_core::{FormatOptions, Fs, OpenOptions};

pub const BS: usize = 4096;
pub const BLOCKS: u64 = 1024;
pub const SLOTS: u32 = 8;
pub const UUID: [u8; 16] = [0x11; 16];
pub const NODE_MAGIC: &[u8; 4] = b"NTND";

pub fn fsck_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fsck-notafs")
}

/// Deterministic file content.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

/// A good image: a directory, a few files, a fragmented file whose extent
/// tree has two levels, several generations; the newest commit changes
/// `a`, `dir/b` and `frag` so their newest nodes are not shared with older
/// generations (damage to them can be rolled back).
/// `good_image` plus one data-only commit: its root slot carries inode
/// patches (and a free-space delta) over generation 5's file table.
pub fn good_image_patched() -> Vec<u8> {
    let dev = Arc::new(MemoryDevice::new(BS as u32, BLOCKS).unwrap());
    dev.write(0, &good_image()).unwrap();
    let fs = Fs::open(
        dev.clone(),
        &OpenOptions {
            write_behind: None,
            ..Default::default()
        },
    )
    .unwrap();
    fs.set_commit_log(false);
    fs.open_file("a").unwrap().append(&pattern(5, 700)).unwrap();
    fs.open_file("dir/b")
        .unwrap()
        .write_at(0, &pattern(6, 50))
        .unwrap();
    fs.commit().unwrap();
    drop(fs);
    let (sb, _) = Fs::read_superblock(dev.as_ref()).unwrap();
    let newest = (0..sb.ring_slots)
        .filter_map(|i| {
            let mut b = vec![0u8; BS];
            dev.read(sb.ring_start + i as u64, &mut b).unwrap();
            notafs_core::RootSlot::decode(&b, i, sb.ring_slots, &sb.uuid).ok()
        })
        .max_by_key(|s| s.generation)
        .unwrap();
    assert_eq!(
        newest.patches.entries().len(),
        2,
        "the newest slot patches a and b"
    );
    dev.to_vec()
}

pub fn good_image() -> Vec<u8> {
    let dev = Arc::new(MemoryDevice::new(BS as u32, BLOCKS).unwrap());
    let fs = Fs::format(
        dev.clone(),
        &FormatOptions {
            uuid: Some(UUID),
            root_slots: SLOTS,
            time: Some(1_700_000_000),
            label: "corpus".into(),
            ..FormatOptions::default()
        },
    )
    .unwrap();
    // Barrier commits: one generation per commit, no sealing slot at close
    // (the corpus counts generations).
    fs.set_commit_log(false);
    fs.create_dir("dir").unwrap();
    let a = fs.create("a").unwrap();
    a.write_at(0, &pattern(1, 3 * BS + 100)).unwrap();
    let b = fs.create("dir/b").unwrap();
    b.write_at(0, &pattern(2, 20 * BS)).unwrap();
    fs.create("empty").unwrap();
    fs.commit().unwrap();
    // A fragmented file: one block every other block, 300 extents.
    let f = fs.create("frag").unwrap();
    for i in 0..300u64 {
        f.write_at(i * 2 * BS as u64, &pattern(i as u8, BS))
            .unwrap();
    }
    fs.commit().unwrap();
    let c = fs.create("dir/c").unwrap();
    c.write_at(0, &pattern(3, 5000)).unwrap();
    fs.commit().unwrap();
    a.write_at(10, b"changed in the newest generation").unwrap();
    b.write_at(BS as u64 * 2, &pattern(9, 100)).unwrap();
    f.write_at(0, &pattern(77, 64)).unwrap();
    // An attribute change, so the newest generation has a file table of its
    // own (a data-only commit would carry its inodes as patches in the
    // slot and share the table with generation 4, which the damage cases
    // rely on not happening).
    fs.set_attrs("a", Some(0o640), None, None).unwrap();
    fs.commit().unwrap();
    drop((a, b, c, f));
    drop(fs);
    dev.to_vec()
}

pub fn mem(bytes: &[u8]) -> Arc<dyn BlockDevice> {
    Arc::new(MemoryDevice::from_vec(BS as u32, bytes.to_vec()))
}

pub fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
pub fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
pub fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}
pub fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

/// An image being damaged.
pub struct Img {
    pub b: Vec<u8>,
}

/// One file-table leaf entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub parent: u64,
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: u8,
    pub ext_height: u8,
    pub size: u64,
    pub mtime: u64,
    pub ext_block: u64,
    pub ext_crc: u32,
}

/// One extent-leaf entry.
#[derive(Clone, Debug)]
pub struct Ext {
    pub key: u64,
    pub pblock: u64,
    pub crcs: Vec<u32>,
}

impl Img {
    pub fn new(b: Vec<u8>) -> Img {
        Img { b }
    }
    pub fn blocks(&self) -> u64 {
        (self.b.len() / BS) as u64
    }
    pub fn block(&self, n: u64) -> &[u8] {
        &self.b[n as usize * BS..(n as usize + 1) * BS]
    }
    pub fn block_mut(&mut self, n: u64) -> &mut [u8] {
        &mut self.b[n as usize * BS..(n as usize + 1) * BS]
    }

    // ---- superblock ----
    pub fn sb_rehash(&mut self, addr: u64) {
        let blk = self.block_mut(addr);
        let s = blake(&blk[..224]);
        blk[224..256].copy_from_slice(&s);
    }
    /// Edit both superblock copies (or one) and re-checksum them.
    pub fn sb_edit(&mut self, both: bool, f: impl Fn(&mut [u8])) {
        let last = self.blocks() - 1;
        let addrs: Vec<u64> = if both { vec![0, last] } else { vec![0] };
        for a in addrs {
            f(self.block_mut(a));
            self.sb_rehash(a);
        }
    }

    // ---- root slots ----
    pub fn slot(&self, i: u32) -> &[u8] {
        self.block(1 + i as u64)
    }
    pub fn slot_gen(&self, i: u32) -> u64 {
        le64(self.slot(i), 8)
    }
    pub fn slot_valid(&self, i: u32) -> bool {
        let s = self.slot(i);
        &s[0..8] == b"NOTAFSRT" && blake(&s[..224])[..] == s[224..256]
    }
    /// Index of the slot holding the newest generation.
    pub fn newest_slot(&self) -> u32 {
        (0..SLOTS)
            .filter(|&i| self.slot_valid(i))
            .max_by_key(|&i| self.slot_gen(i))
            .unwrap()
    }
    pub fn newest_gen(&self) -> u64 {
        self.slot_gen(self.newest_slot())
    }
    pub fn slot_edit(&mut self, i: u32, f: impl FnOnce(&mut [u8])) {
        let blk = self.block_mut(1 + i as u64);
        f(blk);
        let s = blake(&blk[..224]);
        blk[224..256].copy_from_slice(&s);
    }
    /// (block, crc, height) of the newest file table root.
    pub fn files_root(&self) -> (u64, u32, u8) {
        let s = self.slot(self.newest_slot());
        (le64(s, 40), le32(s, 48), s[52])
    }

    // ---- nodes ----
    pub fn node_gen(&self, block: u64) -> u64 {
        le64(self.block(block), 16)
    }
    pub fn node_level(&self, block: u64) -> u8 {
        self.block(block)[5]
    }
    pub fn node_count(&self, block: u64) -> u16 {
        u16::from_le_bytes([self.block(block)[6], self.block(block)[7]])
    }

    /// Rewrite the node at `block` with `f`, then fix the checksum chain:
    /// every node and root slot holding a pointer (block, old crc) gets the
    /// new crc, recursively up to the root slots.
    pub fn node_edit(&mut self, block: u64, f: impl FnOnce(&mut [u8])) {
        let old = crc(self.block(block));
        f(self.block_mut(block));
        self.fix_chain(block, old, &mut std::collections::HashSet::from([block]));
    }

    /// `seen`: blocks already rewritten by this edit. An edit can itself
    /// make two nodes point at each other (a node copied over its
    /// successor): each is fixed once, and the cycle stays for the check
    /// to find.
    fn fix_chain(&mut self, block: u64, old: u32, seen: &mut std::collections::HashSet<u64>) {
        let new = crc(self.block(block));
        if new == old {
            return;
        }
        let mut pat = block.to_le_bytes().to_vec();
        pat.extend_from_slice(&old.to_le_bytes());
        for n in 1..self.blocks() - 1 {
            if n == block {
                continue;
            }
            let is_slot = n <= SLOTS as u64;
            let blk = self.block(n);
            if !is_slot && &blk[0..4] != NODE_MAGIC {
                continue;
            }
            if is_slot && &blk[0..8] != b"NOTAFSRT" {
                continue;
            }
            let hits: Vec<usize> = blk
                .windows(12)
                .enumerate()
                .filter(|(_, w)| *w == &pat[..])
                .map(|(i, _)| i)
                .collect();
            if hits.is_empty() {
                continue;
            }
            let old_n = crc(blk);
            for h in hits {
                put32(self.block_mut(n), h + 8, new);
            }
            if is_slot {
                let blk = self.block_mut(n);
                let s = blake(&blk[..224]);
                blk[224..256].copy_from_slice(&s);
            } else if seen.insert(n) {
                self.fix_chain(n, old_n, seen);
            }
        }
    }

    /// Make the CRC-32C of `block` equal `target` by choosing its last 4
    /// bytes (node padding), so a node can point to itself.
    pub fn forge_crc(&mut self, block: u64, target: u32) {
        let len = BS;
        let base = {
            let blk = self.block_mut(block);
            blk[len - 4..].fill(0);
            crc(blk)
        };
        let zero = crc(&vec![0u8; len]);
        // Columns: effect of each patch bit on the CRC (affine in the data).
        let mut cols = [0u32; 32];
        for (i, c) in cols.iter_mut().enumerate() {
            let mut z = vec![0u8; len];
            z[len - 4..].copy_from_slice(&(1u32 << i).to_le_bytes());
            *c = crc(&z) ^ zero;
        }
        let want = target ^ base;
        // Solve sum(p_i * cols[i]) = want over GF(2).
        let mut rows: Vec<(u32, u32)> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| (*c, 1u32 << i))
            .collect();
        // Gaussian elimination on (value, combination).
        let mut basis: Vec<(u32, u32)> = Vec::new();
        for (mut v, mut comb) in rows.drain(..) {
            for &(bv, bc) in &basis {
                if v ^ bv < v {
                    v ^= bv;
                    comb ^= bc;
                }
            }
            if v != 0 {
                basis.push((v, comb));
                basis.sort_by(|a, b| b.0.cmp(&a.0));
            }
        }
        let (mut v, mut comb) = (want, 0u32);
        for &(bv, bc) in &basis {
            if v ^ bv < v {
                v ^= bv;
                comb ^= bc;
            }
        }
        assert_eq!(v, 0, "crc not forgeable");
        let blk = self.block_mut(block);
        blk[len - 4..].copy_from_slice(&comb.to_le_bytes());
        assert_eq!(crc(blk), target);
    }

    // ---- file table leaves ----
    pub fn files_leaf(&self, block: u64) -> Vec<Entry> {
        let b = self.block(block);
        assert_eq!(b[5], 0, "not a leaf");
        let mut o = 32;
        let mut v = Vec::new();
        for _ in 0..self.node_count(block) {
            let parent = le64(b, o);
            let nl = u16::from_le_bytes([b[o + 8], b[o + 9]]) as usize;
            let name = b[o + 10..o + 10 + nl].to_vec();
            o += 10 + nl;
            v.push(Entry {
                parent,
                name,
                ino: le64(b, o),
                kind: b[o + 8],
                ext_height: b[o + 9],
                size: le64(b, o + 16),
                mtime: le64(b, o + 24),
                ext_block: le64(b, o + 32),
                ext_crc: le32(b, o + 40),
            });
            o += 48;
        }
        v
    }

    pub fn encode_files_leaf(buf: &mut [u8], entries: &[Entry]) {
        buf[32..].fill(0);
        let mut o = 32;
        for e in entries {
            put64(buf, o, e.parent);
            buf[o + 8..o + 10].copy_from_slice(&(e.name.len() as u16).to_le_bytes());
            buf[o + 10..o + 10 + e.name.len()].copy_from_slice(&e.name);
            o += 10 + e.name.len();
            put64(buf, o, e.ino);
            buf[o + 8] = e.kind;
            buf[o + 9] = e.ext_height;
            put64(buf, o + 16, e.size);
            put64(buf, o + 24, e.mtime);
            put64(buf, o + 32, e.ext_block);
            put32(buf, o + 40, e.ext_crc);
            o += 48;
        }
        buf[6..8].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    }

    /// The newest file table leaf (the test image's table is one leaf).
    pub fn table_leaf(&self) -> u64 {
        let (b, _, h) = self.files_root();
        assert_eq!(h, 1, "test image file table should be a single leaf");
        b
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.files_leaf(self.table_leaf())
    }

    pub fn entry(&self, name: &str) -> Entry {
        self.entries()
            .into_iter()
            .find(|e| e.name == name.as_bytes())
            .unwrap_or_else(|| panic!("no entry {name}"))
    }

    /// Rewrite the file table leaf with edited entries.
    pub fn edit_entries(&mut self, f: impl FnOnce(&mut Vec<Entry>)) {
        let leaf = self.table_leaf();
        let mut e = self.entries();
        f(&mut e);
        self.node_edit(leaf, |buf| Img::encode_files_leaf(buf, &e));
    }

    // ---- extent leaves ----
    pub fn ext_leaf(&self, block: u64) -> Vec<Ext> {
        let b = self.block(block);
        assert_eq!(b[5], 0, "not a leaf");
        let mut o = 32;
        let mut v = Vec::new();
        for _ in 0..self.node_count(block) {
            let key = le64(b, o);
            let pblock = le64(b, o + 8);
            let n = le32(b, o + 16) as usize;
            let crcs = (0..n).map(|i| le32(b, o + 20 + 4 * i)).collect();
            o += 20 + 4 * n;
            v.push(Ext { key, pblock, crcs });
        }
        v
    }

    pub fn encode_ext_leaf(buf: &mut [u8], v: &[Ext]) {
        buf[32..].fill(0);
        let mut o = 32;
        for e in v {
            put64(buf, o, e.key);
            put64(buf, o + 8, e.pblock);
            put32(buf, o + 16, e.crcs.len() as u32);
            for (i, c) in e.crcs.iter().enumerate() {
                put32(buf, o + 20 + 4 * i, *c);
            }
            o += 20 + 4 * e.crcs.len();
        }
        buf[6..8].copy_from_slice(&(v.len() as u16).to_le_bytes());
    }

    /// Edit the (single-leaf) extent tree of file `name`.
    pub fn edit_extents(&mut self, name: &str, f: impl FnOnce(&mut Vec<Ext>)) {
        let e = self.entry(name);
        assert_eq!(e.ext_height, 1, "{name} should have a one-leaf extent tree");
        let mut v = self.ext_leaf(e.ext_block);
        f(&mut v);
        self.node_edit(e.ext_block, |buf| Img::encode_ext_leaf(buf, &v));
    }

    /// Branch entries (key, block, crc) of a branch node.
    pub fn branch(&self, block: u64, key_len: usize) -> Vec<(Vec<u8>, u64, u32)> {
        let b = self.block(block);
        assert!(b[5] > 0, "not a branch");
        let mut o = 32;
        let mut v = Vec::new();
        for _ in 0..self.node_count(block) {
            let kl = if key_len == 0 {
                10 + u16::from_le_bytes([b[o + 8], b[o + 9]]) as usize
            } else {
                key_len
            };
            v.push((b[o..o + kl].to_vec(), le64(b, o + kl), le32(b, o + kl + 8)));
            o += kl + 12;
        }
        v
    }

    /// Offset in the node of branch entry `i`'s pointer (extent trees: 8-byte keys).
    pub fn ext_branch_ptr_off(i: usize) -> usize {
        32 + i * 20 + 8
    }
}

/// What a mount does with an image: Ok(generation) after reading every file,
/// or the error text.
pub fn mount_and_read(bytes: &[u8]) -> Result<u64, String> {
    let fs = Fs::open(mem(bytes), &OpenOptions::default()).map_err(|e| e.to_string())?;
    let g = fs.generation();
    let snap = fs.snapshot();
    read_tree(&snap).map_err(|e| format!("generation {g} opened, but: {e}"))?;
    Ok(g)
}

/// Read every file reachable from the root (bounded: depth and count).
pub fn read_tree(snap: &notafs_core::Snapshot) -> Result<(), String> {
    let mut stack = vec![(String::from("/"), 0usize)];
    let mut seen = 0usize;
    let mut first_err = None;
    while let Some((dir, depth)) = stack.pop() {
        if depth > 70 || seen > 10_000 {
            return Err("directory tree too deep or too large".into());
        }
        let list = match snap.read_dir(&dir) {
            Ok(l) => l,
            Err(e) => {
                first_err.get_or_insert(format!("{dir}: {e}"));
                continue;
            }
        };
        for e in list {
            seen += 1;
            let p = if dir == "/" {
                format!("/{}", e.name)
            } else {
                format!("{dir}/{}", e.name)
            };
            if e.meta.is_dir() {
                stack.push((p, depth + 1));
            } else if e.meta.size <= 64 << 20 {
                if let Err(err) = snap.read_to_vec(&p) {
                    first_err.get_or_insert(format!("{p}: {err}"));
                }
            }
        }
    }
    match first_err {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run the real binary with a time limit (a hang fails the test).
pub fn run_fsck(args: &[&str], limit: Duration) -> Run {
    let mut child = Command::new(fsck_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fsck");
    let start = Instant::now();
    let out_h = child.stdout.take().unwrap();
    let err_h = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || std::io::read_to_string(out_h).unwrap_or_default());
    let t2 = std::thread::spawn(move || std::io::read_to_string(err_h).unwrap_or_default());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fsck {args:?} hung (killed after {limit:?})");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = t1.join().unwrap();
    let stderr = t2.join().unwrap();
    let code = status.code().unwrap_or(-1);
    assert_ne!(code, 101, "fsck panicked: {args:?}\n{stderr}");
    assert!(code >= 0, "fsck killed by a signal: {args:?}\n{stderr}");
    Run {
        code,
        stdout,
        stderr,
    }
}

pub fn write_image(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(bytes).unwrap();
    p
}

pub fn hash(bytes: &[u8]) -> [u8; 32] {
    blake(bytes)
}
