//! Hostile-image and API-argument audit: every case here once panicked,
//! hung, allocated without bound, or wrote metadata no reader accepts.
//! Images are crafted by patching a formatted device and re-checksumming
//! (node CRCs live in the parent pointer, root slots carry a BLAKE2b).
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::{BlockDevice, Capabilities, Geometry};
use notafs_core::check::{check, CheckOptions};
use notafs_core::raw::{blake, crc};
use notafs_core::repair::repair;
use notafs_core::{Error, FormatOptions, Fs, OpenOptions, MAX_FILE_SIZE};

// ---- an allocator that refuses (and records) absurd single requests ----

/// Largest single allocation request seen (only requests over 1 GiB are
/// recorded; they are refused).
static HUGE_REQUEST: AtomicUsize = AtomicUsize::new(0);
const HUGE: usize = 1 << 30;

struct Guard;

unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() > HUGE {
            HUGE_REQUEST.fetch_max(l.size(), Ordering::SeqCst);
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if l.size() > HUGE {
            HUGE_REQUEST.fetch_max(l.size(), Ordering::SeqCst);
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if n > HUGE {
            HUGE_REQUEST.fetch_max(n, Ordering::SeqCst);
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Guard = Guard;

// ---- image helpers ----

const BS: usize = 4096;
const BLOCKS: u64 = 1024;
const SLOTS: u32 = 8;

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

fn fmt_opts() -> FormatOptions {
    FormatOptions {
        uuid: Some([0x22; 16]),
        root_slots: SLOTS,
        time: Some(1_700_000_000),
        ..FormatOptions::default()
    }
}

/// Format a memory device, let `f` populate it (it is committed), return
/// the bytes.
fn image(f: impl FnOnce(&Fs)) -> Vec<u8> {
    let dev = Arc::new(MemoryDevice::new(BS as u32, BLOCKS).unwrap());
    let fs = Fs::format(dev.clone(), &fmt_opts()).unwrap();
    f(&fs);
    fs.commit().unwrap();
    drop(fs);
    dev.to_vec()
}

fn mem(b: &[u8]) -> Arc<dyn BlockDevice> {
    Arc::new(MemoryDevice::from_vec(BS as u32, b.to_vec()))
}

struct Img {
    b: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Entry {
    parent: u64,
    name: Vec<u8>,
    ino: u64,
    kind: u8,
    ext_height: u8,
    size: u64,
    ext_block: u64,
    ext_crc: u32,
}

impl Img {
    fn blocks(&self) -> u64 {
        (self.b.len() / BS) as u64
    }
    fn block(&self, n: u64) -> &[u8] {
        &self.b[n as usize * BS..(n as usize + 1) * BS]
    }
    fn block_mut(&mut self, n: u64) -> &mut [u8] {
        &mut self.b[n as usize * BS..(n as usize + 1) * BS]
    }
    fn slot_valid(&self, i: u32) -> bool {
        let s = self.block(1 + i as u64);
        &s[0..8] == b"NOTAFSRT" && blake(&s[..224])[..] == s[224..256]
    }
    fn newest_slot(&self) -> u32 {
        (0..SLOTS)
            .filter(|&i| self.slot_valid(i))
            .max_by_key(|&i| le64(self.block(1 + i as u64), 8))
            .unwrap()
    }
    fn slot_edit(&mut self, i: u32, f: impl FnOnce(&mut [u8])) {
        let blk = self.block_mut(1 + i as u64);
        f(blk);
        let s = blake(&blk[..224]);
        blk[224..256].copy_from_slice(&s);
    }
    /// Keep only the newest slot, renumbered to generation `g` (moved to
    /// the slot `g` belongs in).
    fn set_generation(&mut self, g: u64) {
        let src = self.newest_slot();
        let mut slot = self.block(1 + src as u64).to_vec();
        for i in 0..SLOTS {
            self.block_mut(1 + i as u64).fill(0);
        }
        put64(&mut slot, 8, g);
        let s = blake(&slot[..224]);
        slot[224..256].copy_from_slice(&s);
        let dst = (g % SLOTS as u64) as u32;
        self.block_mut(1 + dst as u64).copy_from_slice(&slot);
    }
    fn node_edit(&mut self, block: u64, f: impl FnOnce(&mut [u8])) {
        let old = crc(self.block(block));
        f(self.block_mut(block));
        self.fix_chain(block, old, 0);
    }
    fn fix_chain(&mut self, block: u64, old: u32, depth: usize) {
        assert!(depth < 40);
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
            if !is_slot && &blk[0..4] != b"NTND" {
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
            } else {
                self.fix_chain(n, old_n, depth + 1);
            }
        }
    }
    fn table_leaf(&self) -> u64 {
        let s = self.block(1 + self.newest_slot() as u64);
        assert_eq!(s[52], 1, "file table should be one leaf");
        le64(s, 40)
    }
    fn entries(&self) -> Vec<Entry> {
        let b = self.block(self.table_leaf());
        let n = u16::from_le_bytes([b[6], b[7]]);
        let mut o = 32;
        let mut v = Vec::new();
        for _ in 0..n {
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
                ext_block: le64(b, o + 32),
                ext_crc: le32(b, o + 40),
            });
            o += 48;
        }
        v
    }
    fn edit_entries(&mut self, f: impl FnOnce(&mut Vec<Entry>)) {
        let leaf = self.table_leaf();
        let mut e = self.entries();
        f(&mut e);
        self.node_edit(leaf, |buf| {
            buf[32..].fill(0);
            let mut o = 32;
            for e in &e {
                put64(buf, o, e.parent);
                buf[o + 8..o + 10].copy_from_slice(&(e.name.len() as u16).to_le_bytes());
                buf[o + 10..o + 10 + e.name.len()].copy_from_slice(&e.name);
                o += 10 + e.name.len();
                put64(buf, o, e.ino);
                buf[o + 8] = e.kind;
                buf[o + 9] = e.ext_height;
                put64(buf, o + 16, e.size);
                put64(buf, o + 32, e.ext_block);
                put32(buf, o + 40, e.ext_crc);
                o += 48;
            }
            buf[6..8].copy_from_slice(&(e.len() as u16).to_le_bytes());
        });
    }
}

fn opts() -> OpenOptions {
    OpenOptions::default()
}

/// Run `f` on a thread; fail if it does not finish within `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?} (hang)"))
}

// ---- a sparse device far larger than RAM ----

struct Sparse {
    geo: Geometry,
    blocks: Mutex<HashMap<u64, Vec<u8>>>,
}

impl Sparse {
    fn new(block_count: u64) -> Arc<Sparse> {
        Arc::new(Sparse {
            geo: Geometry {
                block_size: BS as u32,
                block_count,
                atomic_unit: BS as u32,
                preferred_io: 1 << 20,
                caps: Capabilities {
                    discard: true,
                    write_zeroes: true,
                    native_barrier: true,
                },
            },
            blocks: Mutex::new(HashMap::new()),
        })
    }
    fn get(&self, b: u64) -> Vec<u8> {
        self.blocks
            .lock()
            .unwrap()
            .get(&b)
            .cloned()
            .unwrap_or_else(|| vec![0; BS])
    }
    fn put(&self, b: u64, d: &[u8]) {
        self.blocks.lock().unwrap().insert(b, d.to_vec());
    }
}

impl BlockDevice for Sparse {
    fn geometry(&self) -> Geometry {
        self.geo
    }
    fn read(&self, block: u64, buf: &mut [u8]) -> notafs_blockdev::Result<()> {
        notafs_blockdev::check_io(&self.geo, block, buf.len())?;
        for (i, c) in buf.chunks_mut(BS).enumerate() {
            c.copy_from_slice(&self.get(block + i as u64));
        }
        Ok(())
    }
    fn write(&self, block: u64, data: &[u8]) -> notafs_blockdev::Result<()> {
        notafs_blockdev::check_io(&self.geo, block, data.len())?;
        for (i, c) in data.chunks(BS).enumerate() {
            self.put(block + i as u64, c);
        }
        Ok(())
    }
    fn write_zeroes(&self, block: u64, count: u64) -> notafs_blockdev::Result<()> {
        notafs_blockdev::check_range(&self.geo, block, count)?;
        let mut m = self.blocks.lock().unwrap();
        m.retain(|b, _| *b < block || *b >= block + count);
        Ok(())
    }
    fn discard(&self, block: u64, count: u64) -> notafs_blockdev::Result<()> {
        self.write_zeroes(block, count)
    }
    fn flush(&self) -> notafs_blockdev::Result<()> {
        Ok(())
    }
}

/// Slot 1 (generation 1) of a freshly formatted sparse device, edited by
/// `f` and re-hashed.
fn sparse_slot_edit(d: &Sparse, f: impl FnOnce(&mut Vec<u8>)) {
    let mut s = d.get(2);
    f(&mut s);
    let h = blake(&s[..224]);
    s[224..256].copy_from_slice(&h);
    d.put(2, &s);
}

// ---- the cases ----

/// check.rs: sizes of files are summed; three legal files of the maximum
/// size overflowed the u64 sum (a panic in debug builds).
#[test]
fn check_sums_sizes_of_huge_sparse_files() {
    let img = image(|fs| {
        for n in ["a", "b", "c"] {
            fs.create(n).unwrap().set_len(MAX_FILE_SIZE).unwrap();
        }
    });
    let r = check(mem(&img), &CheckOptions::default()).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
}

/// fs.rs: a root at generation u64::MAX-2 (valid on disk). `generations`
/// added N to it, opening an old generation added N to the asked one, and
/// commits ran into u64::MAX: the slot written was one no reader accepts,
/// and the next release overflowed.
#[test]
fn generation_near_u64_max() {
    let mut img = Img {
        b: image(|fs| {
            fs.create("f").unwrap().write_at(0, b"data").unwrap();
        }),
    };
    let top = u64::MAX - 2;
    img.set_generation(top);
    let dev = mem(&img.b);
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    assert_eq!(fs.generation(), top);
    assert_eq!(fs.generations()[0].generation, top);
    // One more generation is representable; the one after is not.
    fs.create("g").unwrap();
    assert_eq!(fs.commit().unwrap(), top + 1);
    fs.create("h").unwrap();
    let e = fs.commit().unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    drop(fs);
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    assert_eq!(fs.generation(), top + 1);
    assert!(fs.exists("g").unwrap());
    let old = Fs::open(
        dev.clone(),
        &OpenOptions {
            generation: Some(top),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(old.generation(), top);
    assert!(check(dev, &CheckOptions::default()).unwrap().is_clean());
}

/// check.rs: a repair at the last representable generation wrote a root
/// slot at u64::MAX, which no reader accepts, and reported success.
#[test]
fn repair_at_last_generation() {
    let mut img = Img {
        b: image(|fs| {
            fs.create("f").unwrap().write_at(0, b"data").unwrap();
        }),
    };
    let top = u64::MAX - 1;
    img.set_generation(top);
    let dev = mem(&img.b);
    let o = CheckOptions {
        generation: Some(top),
        ..CheckOptions::default()
    };
    match repair(dev.clone(), &o) {
        Err(_) => {}
        Ok(rep) => {
            let g = rep.new_generation.expect("a rebuild happened");
            let fs = Fs::open(dev.clone(), &opts()).unwrap();
            assert_eq!(
                fs.generation(),
                g,
                "repair reported a root no reader accepts"
            );
        }
    }
    assert_eq!(Fs::open(dev, &opts()).unwrap().generation(), top);
}

/// fs.rs: next inode number taken from the root slot: u64::MAX overflowed
/// on create; 0 or 1 created an inode the decoder rejects, so the commit
/// wrote a file table no reader accepts.
#[test]
fn create_with_bad_next_inode() {
    for bad in [u64::MAX, 0, 1] {
        let mut img = Img {
            b: image(|fs| {
                fs.create("f").unwrap();
            }),
        };
        let s = img.newest_slot();
        img.slot_edit(s, |b| put64(b, 72, bad));
        let dev = mem(&img.b);
        let fs = Fs::open(dev.clone(), &opts()).unwrap();
        let g = fs.generation();
        let e = fs.create("new").unwrap_err();
        assert!(matches!(e, Error::Corrupt(_)), "next_ino {bad}: {e}");
        let _ = fs.commit();
        drop(fs);
        let fs = Fs::open(dev, &opts()).unwrap();
        assert!(fs.generation() >= g);
        fs.snapshot().read_dir("").unwrap();
    }
}

/// fs.rs: the inode count taken from the root slot underflowed when a file
/// was removed or replaced by a rename.
#[test]
fn remove_with_zero_inode_count() {
    let mut img = Img {
        b: image(|fs| {
            fs.create("a").unwrap();
            fs.create("b").unwrap();
        }),
    };
    let s = img.newest_slot();
    img.slot_edit(s, |b| put64(b, 80, 0));
    let fs = Fs::open(mem(&img.b), &opts()).unwrap();
    let e = fs.remove("a").unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    let e = fs.rename("a", "b").unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
}

/// allocator.rs: a file whose extent points into free space. Removing it
/// put the blocks in `freed` while they were also free: they were counted
/// twice (`used = count - free - pending` underflowed at commit) and would
/// be handed out twice.
#[test]
fn free_of_blocks_already_free() {
    let mut img = Img {
        b: image(|fs| {
            fs.create("f")
                .unwrap()
                .write_at(0, &vec![7u8; 4 * BS])
                .unwrap();
        }),
    };
    let e = img.entries().into_iter().find(|e| e.name == b"f").unwrap();
    assert_eq!(e.ext_height, 1);
    // One extent of 249 blocks at block 700: free space in this image.
    img.node_edit(e.ext_block, |buf| {
        buf[32..].fill(0);
        put64(buf, 32, 0);
        put64(buf, 40, 700);
        put32(buf, 48, 249);
        buf[6..8].copy_from_slice(&1u16.to_le_bytes());
    });
    img.edit_entries(|v| {
        for x in v.iter_mut() {
            if x.name == b"f" {
                x.size = 249 * BS as u64;
            }
        }
    });
    let fs = Fs::open(mem(&img.b), &opts()).unwrap();
    let e = fs.remove("f").unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    let _ = fs.commit();
    let _ = fs.info();
}

/// allocator.rs: the free list's node count sized a Vec before any node
/// was read: u32::MAX nodes on a large device asked for 32 GiB.
#[test]
fn free_list_count_does_not_size_an_allocation() {
    let d = Sparse::new(1 << 40);
    drop(Fs::format(d.clone(), &fmt_opts()).unwrap());
    sparse_slot_edit(&d, |s| put32(s, 68, u32::MAX));
    // The only generation's file table is fine: it opens for reading, and
    // writes wait for fsck to rebuild the free list.
    let fs = Fs::open(d, &opts()).unwrap();
    assert!(matches!(fs.create("x"), Err(Error::NeedsCheck(_))));
    assert_eq!(HUGE_REQUEST.load(Ordering::SeqCst), 0);
}

/// fs.rs: the lengths of the free list's entries were summed before their
/// overlaps were checked: on a device of 2^62 blocks a few overlapping
/// entries overflowed the sum.
#[test]
fn free_list_lengths_sum_does_not_overflow() {
    let d = Sparse::new(1 << 62);
    drop(Fs::format(d.clone(), &fmt_opts()).unwrap());
    let slot = d.get(2);
    let head = le64(&slot, 56);
    let mut node = d.get(head);
    let (s, l) = (le64(&node, 48), le64(&node, 56));
    assert!(l > 1 << 61);
    for i in 0..8 {
        put64(&mut node, 48 + 24 * i, s);
        put64(&mut node, 48 + 24 * i + 8, l);
        put64(&mut node, 48 + 24 * i + 16, 0);
    }
    node[6..8].copy_from_slice(&8u16.to_le_bytes());
    d.put(head, &node);
    let c = crc(&node);
    sparse_slot_edit(&d, |s| put32(s, 64, c));
    let fs = Fs::open(d, &opts()).unwrap();
    assert!(matches!(fs.create("x"), Err(Error::NeedsCheck(_))));
}

/// digest.rs: directories shared by two entries at every level (a DAG in
/// a damaged file table) made the digest walk 2^depth paths: a hang.
#[test]
fn digest_of_directory_dag_terminates() {
    let mut img = Img {
        b: image(|fs| fs.create_dir("d").unwrap()),
    };
    img.edit_entries(|v| {
        let tmpl = v[0].clone();
        v.clear();
        v.push(Entry {
            parent: 1,
            name: b"d".to_vec(),
            ino: 2,
            ..tmpl.clone()
        });
        for i in 0..30u64 {
            for n in [b"a", b"b"] {
                v.push(Entry {
                    parent: 2 + i,
                    name: n.to_vec(),
                    ino: 3 + i,
                    ..tmpl.clone()
                });
            }
        }
    });
    let fs = Fs::open(mem(&img.b), &opts()).unwrap();
    let r = within(Duration::from_secs(20), move || fs.snapshot().digest());
    assert!(matches!(r, Err(Error::Corrupt(_))), "{r:?}");
}

/// check.rs: a repair (the rebuild for a `count` problem) computed the next
/// inode number as the highest one plus one: u64::MAX overflowed.
#[test]
fn repair_with_largest_inode_number() {
    let mut img = Img {
        b: image(|fs| {
            fs.create("f").unwrap();
        }),
    };
    img.edit_entries(|v| v[0].ino = u64::MAX);
    let dev = mem(&img.b);
    let r = check(dev.clone(), &CheckOptions::default()).unwrap();
    assert!(!r.is_clean());
    assert!(repair(dev, &CheckOptions::default()).is_err());
}

/// cache.rs: the cache preallocated its index for `cache_bytes` worth of
/// nodes, so a large `cache_bytes` (an API argument) panicked or aborted.
#[test]
fn open_with_huge_cache_bytes() {
    let img = image(|fs| {
        fs.create("f").unwrap().write_at(0, b"x").unwrap();
    });
    let fs = Fs::open(
        mem(&img),
        &OpenOptions {
            cache_bytes: usize::MAX,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(fs.snapshot().read_to_vec("f").unwrap(), b"x");
}
