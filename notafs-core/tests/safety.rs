//! Never lose an acknowledged commit (issue 8): I/O errors are not
//! corruption, a checksum-valid but inconsistent root is repaired without
//! rolling back, the superblock copy in use is the one the ring verifies
//! under, and one bad data block costs that block, not the filesystem.
//!
//! Hostile images are crafted by patching a formatted device and
//! recomputing every checksum on the way up (node CRCs live in the parent
//! pointer, root slots and superblocks carry a BLAKE2b), so the damage
//! reaches the parsers.
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::{BlockDevice, BlockError, Geometry, WriteReq};
use notafs_core::check::{check, CheckOptions};
use notafs_core::raw::{blake, crc};
use notafs_core::repair::{repair, repair_with, RepairPolicy};
use notafs_core::{Error, FormatOptions, Fs, OpenOptions};

const BS: usize = 4096;
const BLOCKS: u64 = 2048;
const SLOTS: u64 = 8;

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

fn opts(read_only: bool) -> OpenOptions {
    OpenOptions {
        read_only,
        ..OpenOptions::default()
    }
}

/// A device that answers EIO for reads of chosen blocks (always, or only
/// the first time each is read), and records which blocks were read.
struct Eio {
    inner: Arc<MemoryDevice>,
    bad: Mutex<HashSet<u64>>,
    once: bool,
    read: Mutex<Vec<u64>>,
}

impl Eio {
    fn new(inner: Arc<MemoryDevice>, bad: &[u64], once: bool) -> Arc<Eio> {
        Arc::new(Eio {
            inner,
            bad: Mutex::new(bad.iter().copied().collect()),
            once,
            read: Mutex::new(Vec::new()),
        })
    }
}

impl BlockDevice for Eio {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn read(&self, block: u64, buf: &mut [u8]) -> notafs_blockdev::Result<()> {
        let n = (buf.len() / BS) as u64;
        let mut bad = self.bad.lock().unwrap();
        for b in block..block + n {
            self.read.lock().unwrap().push(b);
            if bad.contains(&b) {
                if self.once {
                    bad.remove(&b);
                }
                return Err(BlockError::io("read", std::io::Error::from_raw_os_error(5)));
            }
        }
        self.inner.read(block, buf)
    }
    fn write(&self, block: u64, data: &[u8]) -> notafs_blockdev::Result<()> {
        self.inner.write(block, data)
    }
    fn write_zeroes(&self, block: u64, count: u64) -> notafs_blockdev::Result<()> {
        self.inner.write_zeroes(block, count)
    }
    fn discard(&self, block: u64, count: u64) -> notafs_blockdev::Result<()> {
        self.inner.discard(block, count)
    }
    fn flush(&self) -> notafs_blockdev::Result<()> {
        self.inner.flush()
    }
    fn write_batch(&self, writes: &[WriteReq<'_>]) -> notafs_blockdev::Result<()> {
        for w in writes {
            self.write(w.block, w.data)?;
        }
        Ok(())
    }
}

/// A populated image: files in a directory and at the root over ten
/// commits, every file with distinct, recognisable content.
fn populated() -> (Arc<MemoryDevice>, BTreeMap<String, Vec<u8>>) {
    let dev = Arc::new(MemoryDevice::new(BS as u32, BLOCKS).unwrap());
    let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
    fs.create_dir("d").unwrap();
    let mut files = BTreeMap::new();
    for i in 0..10u32 {
        let name = if i % 2 == 0 {
            format!("d/f{i}")
        } else {
            format!("f{i}")
        };
        let data: Vec<u8> = (0..(3 * BS + 100 * i as usize))
            .map(|k| (k as u32).wrapping_mul(2654435761).wrapping_add(i) as u8 ^ (k >> 12) as u8)
            .collect();
        fs.create(&name).unwrap().write_at(0, &data).unwrap();
        fs.commit().unwrap();
        files.insert(name, data);
    }
    drop(fs);
    (dev, files)
}

fn block(dev: &MemoryDevice, b: u64) -> Vec<u8> {
    let mut v = vec![0u8; BS];
    dev.read(b, &mut v).unwrap();
    v
}

/// The block of the newest root slot.
fn newest_slot(dev: &MemoryDevice) -> u64 {
    let copy = Arc::new(MemoryDevice::from_vec(BS as u32, dev.to_vec()));
    let fs = Fs::open(copy, &opts(true)).unwrap();
    1 + fs.generation() % SLOTS
}

/// Patch a root slot and recompute its BLAKE2b.
fn slot_edit(dev: &MemoryDevice, b: u64, f: impl FnOnce(&mut [u8])) {
    let mut s = block(dev, b);
    f(&mut s);
    let h = blake(&s[..224]);
    s[224..256].copy_from_slice(&h);
    dev.write(b, &s).unwrap();
}

/// Patch the head node of a slot's free list, fixing its CRC in the slot.
fn free_list_edit(dev: &MemoryDevice, slot: u64, f: impl FnOnce(&mut [u8])) {
    let head = le64(&block(dev, slot), 56);
    let mut node = block(dev, head);
    f(&mut node);
    dev.write(head, &node).unwrap();
    let c = crc(&node);
    slot_edit(dev, slot, |s| put32(s, 64, c));
}

fn assert_files(fs: &Fs, files: &BTreeMap<String, Vec<u8>>) {
    let snap = fs.snapshot();
    for (name, data) in files {
        assert_eq!(&snap.read_to_vec(name).unwrap(), data, "{name}");
    }
}

fn image_bytes(dev: &MemoryDevice) -> Vec<u8> {
    let mut v = vec![0u8; BS * BLOCKS as usize];
    dev.read(0, &mut v).unwrap();
    v
}

/// Every block read during open, failing once or always: the open either
/// fails with an I/O error or opens the newest generation, and a write
/// after it never overwrites or rolls back the newest commit.
#[test]
fn read_errors_during_open_never_lose_the_newest_commit() {
    let (dev, files) = populated();
    let newest = Fs::open(dev.clone(), &opts(true)).unwrap().generation();
    let probe = Eio::new(dev.clone(), &[], false);
    drop(Fs::open(probe.clone(), &opts(false)).unwrap());
    let mut blocks: Vec<u64> = probe.read.lock().unwrap().clone();
    blocks.sort_unstable();
    blocks.dedup();
    assert!(blocks.len() > SLOTS as usize, "{blocks:?}");
    let mut failed_opens = 0;
    for &b in &blocks {
        for once in [false, true] {
            let d = Arc::new(MemoryDevice::from_vec(BS as u32, dev.to_vec()));
            let faulty = Eio::new(d.clone(), &[b], once);
            match Fs::open(faulty.clone(), &opts(false)) {
                Err(e) => {
                    assert!(
                        e.is_io(),
                        "block {b}: open failed with {e}, not an I/O error"
                    );
                    failed_opens += 1;
                }
                Ok(fs) => {
                    assert_eq!(fs.generation(), newest, "block {b} once={once}");
                    // Write through the faulty device, then look with a
                    // clean one: the newest commit is still there.
                    let _ = fs.create("new").and_then(|f| f.write_at(0, b"x"));
                    let _ = fs.commit();
                }
            }
            let fs = Fs::open(d.clone(), &opts(true)).unwrap();
            assert!(fs.generation() >= newest, "block {b} once={once}");
            assert_files(&fs, &files);
            assert!(
                fs.generations().iter().any(|g| g.generation == newest),
                "block {b}: generation {newest} is gone"
            );
        }
    }
    assert!(failed_opens > 0);
}

/// An overlapping free-list entry in the newest root (checksums
/// recomputed): the newest generation still opens and reads, writes wait
/// for fsck, and a lossless repair rebuilds the list from the trees
/// without rolling anything back.
#[test]
fn overlapping_free_list_entry_is_rebuilt_not_rolled_back() {
    let (dev, files) = populated();
    let before = Fs::open(dev.clone(), &opts(true)).unwrap();
    let newest = before.generation();
    let retained = before.generations().len();
    drop(before);
    let slot = newest_slot(&dev);
    free_list_edit(&dev, slot, |n| {
        let count = u16::from_le_bytes([n[6], n[7]]) as usize;
        let first = n[48..72].to_vec();
        n[48 + 24 * count..72 + 24 * count].copy_from_slice(&first);
        n[6..8].copy_from_slice(&(count as u16 + 1).to_le_bytes());
    });
    let fs = Fs::open(dev.clone(), &opts(false)).unwrap();
    assert_eq!(fs.generation(), newest);
    assert_files(&fs, &files);
    assert!(matches!(fs.create("x"), Err(Error::NeedsCheck(_))));
    assert!(matches!(fs.commit(), Err(Error::NeedsCheck(_)) | Ok(_)));
    drop(fs);
    let r = check(dev.clone(), &CheckOptions::default()).unwrap();
    assert!(!r.is_clean());
    // Found by the accounting (free-overlap), or, when the newest slot names
    // that list as the base of a free-space delta, when the list is read
    // (a base list must be valid on its own).
    assert!(
        r.problems
            .iter()
            .any(|p| p.code == "free-overlap" || p.code == "free-list"),
        "{:?}",
        r.problems
    );
    let rep = repair_with(
        dev.clone(),
        &CheckOptions::default(),
        RepairPolicy::Lossless,
    )
    .unwrap();
    assert!(rep.declined.is_empty(), "{:?}", rep.declined);
    assert_eq!(rep.new_generation, Some(newest + 1), "{:?}", rep.actions);
    let r = check(dev.clone(), &CheckOptions::default()).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    let fs = Fs::open(dev.clone(), &opts(false)).unwrap();
    assert_files(&fs, &files);
    assert!(fs.generations().len() >= retained);
    fs.create("after").unwrap().write_at(0, b"ok").unwrap();
    fs.commit().unwrap();
}

/// A free list counting more blocks than the device has: not silently
/// skipped (the next write would overwrite that root), but opened for
/// reading, reported by check, and rebuilt.
#[test]
fn free_list_larger_than_the_device_is_reported_and_rebuilt() {
    let (dev, files) = populated();
    let newest = Fs::open(dev.clone(), &opts(true)).unwrap().generation();
    let slot = newest_slot(&dev);
    free_list_edit(&dev, slot, |n| put64(n, 56, 1 << 40));
    let fs = Fs::open(dev.clone(), &opts(false)).unwrap();
    assert_eq!(fs.generation(), newest);
    assert!(fs.info().needs_check.is_some());
    assert!(matches!(fs.create("x"), Err(Error::NeedsCheck(_))));
    drop(fs);
    let r = check(dev.clone(), &CheckOptions::default()).unwrap();
    assert!(!r.is_clean(), "{:?}", r.problems);
    let rep = repair_with(
        dev.clone(),
        &CheckOptions::default(),
        RepairPolicy::Lossless,
    )
    .unwrap();
    assert!(rep.declined.is_empty(), "{:?}", rep.declined);
    let fs = Fs::open(dev.clone(), &opts(false)).unwrap();
    assert_eq!(fs.generation(), newest + 1);
    assert_files(&fs, &files);
}

/// Primary superblock with the slot count changed 8 -> 4 and its BLAKE2b
/// recomputed, backup intact: the backup (under which the ring verifies) is
/// used, the primary is rewritten from it, and nothing is rolled back.
#[test]
fn the_superblock_copy_the_ring_verifies_under_wins() {
    let (dev, files) = populated();
    let newest = Fs::open(dev.clone(), &opts(true)).unwrap().generation();
    let mut sb = block(&dev, 0);
    put32(&mut sb, 88, 4);
    let h = blake(&sb[..224]);
    sb[224..256].copy_from_slice(&h);
    dev.write(0, &sb).unwrap();
    let fs = Fs::open(dev.clone(), &opts(true)).unwrap();
    assert_eq!(fs.generation(), newest);
    assert_eq!(fs.superblock().ring_slots, SLOTS as u32);
    drop(fs);
    let rep = repair_with(
        dev.clone(),
        &CheckOptions::default(),
        RepairPolicy::Lossless,
    )
    .unwrap();
    assert!(
        rep.actions.iter().any(|a| a.contains("block 0")),
        "{:?}",
        rep.actions
    );
    assert_eq!(rep.new_generation, None, "{:?}", rep.actions);
    let backup = block(&dev, BLOCKS - 1);
    assert_eq!(le64(&backup, 80), 1);
    assert_eq!(
        u32::from_le_bytes(backup[88..92].try_into().unwrap()),
        SLOTS as u32
    );
    let r = check(dev.clone(), &CheckOptions::default()).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    let fs = Fs::open(dev.clone(), &opts(true)).unwrap();
    assert_eq!(fs.generation(), newest);
    assert_eq!(fs.generations().len(), SLOTS as usize);
    assert_files(&fs, &files);
}

/// One damaged data block: the report names the file by its full path;
/// preen declines and writes nothing; -y turns that block into a hole and
/// keeps every other file and every retained generation.
#[test]
fn one_bad_data_block_costs_that_block_only() {
    let (dev, files) = populated();
    let fs = Fs::open(dev.clone(), &opts(true)).unwrap();
    let newest = fs.generation();
    let retained = fs.generations().len();
    drop(fs);
    // The second block of d/f4, found by its content.
    let victim = "d/f4";
    let want = &files[victim][BS..2 * BS];
    let img = image_bytes(&dev);
    let pb = (0..BLOCKS)
        .find(|b| &img[*b as usize * BS..(*b as usize + 1) * BS] == want)
        .expect("data block on disk");
    dev.write(pb, &vec![0xA5u8; BS]).unwrap();
    let vopts = CheckOptions {
        verify_data: true,
        ..CheckOptions::default()
    };
    let r = check(dev.clone(), &vopts).unwrap();
    assert_eq!(r.damaged.len(), 1);
    assert_eq!(r.damaged[0].path, "/d/f4");
    assert_eq!(r.damaged[0].blocks, vec![(1, 1)]);
    assert!(r.problems.iter().any(|p| p.message.contains("/d/f4")));
    let before = image_bytes(&dev);
    let rep = repair_with(dev.clone(), &vopts, RepairPolicy::Lossless).unwrap();
    assert!(!rep.declined.is_empty());
    assert!(rep.actions.is_empty(), "{:?}", rep.actions);
    assert!(before == image_bytes(&dev), "preen wrote to the image");
    let rep = repair(dev.clone(), &vopts).unwrap();
    assert_eq!(rep.new_generation, Some(newest + 1), "{:?}", rep.actions);
    let r = check(dev.clone(), &vopts).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    let fs = Fs::open(dev.clone(), &opts(true)).unwrap();
    assert!(fs.generations().len() >= retained.min(SLOTS as usize));
    let snap = fs.snapshot();
    for (name, data) in &files {
        let got = snap.read_to_vec(name).unwrap();
        if name == victim {
            let mut want = data.clone();
            want[BS..2 * BS].fill(0);
            assert!(got == want, "{name}: only the damaged block may change");
        } else {
            assert!(&got == data, "{name}");
        }
    }
    // Idempotent: a second repair changes nothing.
    let before = image_bytes(&dev);
    let rep = repair(dev.clone(), &vopts).unwrap();
    assert!(rep.actions.is_empty(), "{:?}", rep.actions);
    assert!(before == image_bytes(&dev));
}

/// Every crash state of a format: no filesystem, or one that opens and
/// checks clean (the primary superblock is written last, alone).
#[test]
fn a_crash_during_format_leaves_nothing_or_a_clean_filesystem() {
    use notafs_blockdev::crash::{CrashDevice, EnumOptions};
    let crash = Arc::new(CrashDevice::new(BS as u32, 256).unwrap());
    drop(Fs::format(crash.clone(), &FormatOptions::default()).unwrap());
    let mut states = 0;
    let mut opened = 0;
    for st in crash.states(&EnumOptions::default()) {
        let dev = Arc::new(MemoryDevice::from_vec(BS as u32, st.image().to_vec()));
        states += 1;
        match Fs::open(dev.clone(), &opts(true)) {
            Err(Error::NotNotafs(_)) => {}
            Err(e) => panic!("state {states}: {e}"),
            Ok(_) => {
                opened += 1;
                let r = check(dev.clone(), &CheckOptions::default()).unwrap();
                assert!(
                    r.is_clean() && r.problems.iter().all(|p| p.code != "superblock"),
                    "state {states}: {:?}",
                    r.problems
                );
            }
        }
    }
    assert!(
        states > 10 && opened > 0,
        "{states} states, {opened} opened"
    );
}
