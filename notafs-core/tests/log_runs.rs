//! Commit-log runs (issue 10, FORMAT.md "Log runs"): a commit of many
//! blocks allocated in a few runs (random overwrites) lists runs in its
//! slot and takes one flush; filesystems without the feature keep one
//! block per entry; hostile runs are refused before anything is read.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::{BlockDevice, Geometry, WriteReq};
use notafs_core::check::{check, CheckOptions};
use notafs_core::raw::blake;
use notafs_core::{FormatOptions, Fs, OpenOptions, RootSlot};

/// Counts flushes (a barrier is a flush on this device) and bytes read.
struct Counting {
    inner: MemoryDevice,
    flushes: AtomicU64,
    read: AtomicU64,
    /// Write requests (a batch counts each of its requests).
    requests: AtomicU64,
}

impl BlockDevice for Counting {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn read(&self, b: u64, buf: &mut [u8]) -> notafs_blockdev::Result<()> {
        self.read.fetch_add(buf.len() as u64, Ordering::SeqCst);
        self.inner.read(b, buf)
    }
    fn write(&self, b: u64, d: &[u8]) -> notafs_blockdev::Result<()> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.write(b, d)
    }
    fn write_batch(&self, w: &[WriteReq<'_>]) -> notafs_blockdev::Result<()> {
        self.requests.fetch_add(w.len() as u64, Ordering::SeqCst);
        self.inner.write_batch(w)
    }
    fn write_zeroes(&self, b: u64, c: u64) -> notafs_blockdev::Result<()> {
        self.inner.write_zeroes(b, c)
    }
    fn discard(&self, b: u64, c: u64) -> notafs_blockdev::Result<()> {
        self.inner.discard(b, c)
    }
    fn flush(&self) -> notafs_blockdev::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush()
    }
}

fn device(blocks: u64) -> Arc<Counting> {
    Arc::new(Counting {
        inner: MemoryDevice::new(4096, blocks).unwrap(),
        flushes: AtomicU64::new(0),
        read: AtomicU64::new(0),
        requests: AtomicU64::new(0),
    })
}

fn opts() -> OpenOptions {
    OpenOptions {
        write_behind: None,
        ..OpenOptions::default()
    }
}

fn block(seed: u64) -> Vec<u8> {
    (0..4096u64)
        .map(|i| (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(0x9E37_79B9)) as u8)
        .collect()
}

/// Drop feature bits from both superblock copies (an image made before
/// them).
fn clear_incompat(dev: &dyn BlockDevice, bits: u64) {
    let (mut sb, _) = Fs::read_superblock(dev).unwrap();
    sb.incompat &= !bits;
    dev.write(0, &sb.encode(0)).unwrap();
    let last = sb.block_count - 1;
    dev.write(last, &sb.encode(last)).unwrap();
    dev.flush().unwrap();
}

/// The newest slot of `dev`, raw and decoded, and its address.
fn newest_slot(dev: &dyn BlockDevice) -> (Vec<u8>, RootSlot, u64) {
    let (sb, _) = Fs::read_superblock(dev).unwrap();
    let mut best: Option<(Vec<u8>, RootSlot, u64)> = None;
    for i in 0..sb.ring_slots {
        let mut raw = vec![0u8; 4096];
        dev.read(sb.ring_start + i as u64, &mut raw).unwrap();
        if let Ok(s) = RootSlot::decode(&raw, i, sb.ring_slots, &sb.uuid) {
            if best.as_ref().is_none_or(|b| s.generation > b.1.generation) {
                best = Some((raw, s, sb.ring_start + i as u64));
            }
        }
    }
    best.unwrap()
}

/// 40 commits of 256 random 4 KiB overwrites into a 32 MiB file; returns
/// flushes and write requests per commit over the last 20 (after the
/// ring's pending blocks were reused) and the log length of the last slot. Reads everything back
/// after a reopen and checks the image.
fn overwrite_rounds(dev: &Arc<Counting>) -> (f64, f64, u32) {
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    let f = fs.create("/data").unwrap();
    let blocks = 8192u64;
    let mut model: Vec<u64> = (0..blocks).collect();
    let mut all = Vec::with_capacity((blocks * 4096) as usize);
    for b in 0..blocks {
        all.extend_from_slice(&block(b));
    }
    f.write_at(0, &all).unwrap();
    fs.commit().unwrap();
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let (mut before, mut req_before) = (0, 0);
    for round in 0..40 {
        if round == 20 {
            before = dev.flushes.load(Ordering::SeqCst);
            req_before = dev.requests.load(Ordering::SeqCst);
        }
        for _ in 0..256 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let b = s % blocks;
            let seed = 1_000_000 + round * 1000 + (s >> 40);
            model[b as usize] = seed;
            f.write_at(b * 4096, &block(seed)).unwrap();
        }
        fs.commit().unwrap();
    }
    let per = (dev.flushes.load(Ordering::SeqCst) - before) as f64 / 20.0;
    let reqs = (dev.requests.load(Ordering::SeqCst) - req_before) as f64 / 20.0;
    // Before the handle seals its last log commit on close.
    let log_len = newest_slot(dev.as_ref()).1.log_len;
    drop(f);
    drop(fs);
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    let got = fs.snapshot().read_to_vec("/data").unwrap();
    for (b, seed) in model.iter().enumerate() {
        assert!(
            got[b * 4096..(b + 1) * 4096] == block(*seed)[..],
            "block {b} differs"
        );
    }
    drop(fs);
    let r = check(dev.clone(), &CheckOptions::default()).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    (per, reqs, log_len)
}

/// 256 scattered overwrites dirty ~150 extent leaves and write ~420
/// blocks, more than a slot's 320 one-block entries: with runs the commit
/// still takes one flush (2 with the barrier protocol, as before).
#[test]
fn scattered_overwrites_take_one_flush() {
    let dev = device(65536);
    drop(Fs::format(dev.clone(), &FormatOptions::default()).unwrap());
    let (per, reqs, log_len) = overwrite_rounds(&dev);
    eprintln!(
        "log runs: {per:.2} flushes and {reqs:.1} write requests per commit, last log \
         {log_len} entries"
    );
    assert!(log_len > 0, "the last commit used the commit log");
    assert!(per <= 1.05, "{per:.2} flushes per commit");
    // The 256 data blocks go out as one contiguous batch at the commit,
    // not one request per write; what remains is the copied tree nodes.
    assert!(reqs < 200.0, "{reqs:.1} write requests per commit");
}

/// An image without the feature writes one block per entry, so the same
/// commits do not fit and take the barrier protocol; everything still
/// reads back and checks clean.
#[test]
fn without_the_feature_entries_are_blocks() {
    let dev = device(65536);
    drop(Fs::format(dev.clone(), &FormatOptions::default()).unwrap());
    clear_incompat(dev.as_ref(), notafs_core::superblock::INCOMPAT_LOG_RUNS);
    let (per, _, log_len) = overwrite_rounds(&dev);
    eprintln!("one block per entry: {per:.2} flushes per commit");
    assert_eq!(log_len, 0, "too many blocks for one-block entries");
    assert!(per >= 1.9, "{per:.2} flushes per commit");
    // Small commits still use the log, one block per entry.
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    let f = fs.open_file("/data").unwrap();
    f.write_at(0, &block(7)).unwrap();
    fs.commit().unwrap();
    let (raw, slot, _) = newest_slot(dev.as_ref());
    assert!(slot.log_len >= 2, "{}", slot.log_len);
    for i in 0..slot.log_len as usize {
        let o = 256 + 12 * i;
        let packed = u64::from_le_bytes(raw[o..o + 8].try_into().unwrap());
        assert!(packed >> 40 == 0, "entry {i} is a run: {packed:#x}");
    }
}

/// Rewrite the newest slot's log entry `i` with `f`, then the tail digest
/// and the slot checksum, so the damage reaches the log parser.
fn edit_log(dev: &dyn BlockDevice, i: usize, f: impl Fn(&mut [u8])) {
    let (mut raw, slot, addr) = newest_slot(dev);
    let o = 256 + 12 * i;
    f(&mut raw[o..o + 12]);
    let end = 256
        + 12 * slot.log_len as usize
        + 24 * slot.delta.entries().len()
        + 40 * slot.patches.entries().len();
    let d = blake(&raw[256..end]);
    raw[120..152].copy_from_slice(&d);
    let s = blake(&raw[..224]);
    raw[224..256].copy_from_slice(&s);
    dev.write(addr, &raw).unwrap();
}

/// Hostile runs (checksums recomputed): a count reaching past the data
/// area, a huge count inside it, a first block past the device, a wrong
/// check value. Each makes the newest slot a commit cut short: open takes
/// the previous generation, reads no more than a commit log may list, and
/// nothing panics.
#[test]
fn hostile_runs_are_refused() {
    let dev = device(16384);
    drop(Fs::format(dev.clone(), &FormatOptions::default()).unwrap());
    let fs = Fs::open(dev.clone(), &opts()).unwrap();
    let f = fs.create("/a").unwrap();
    f.write_at(0, &[7u8; 64 << 10]).unwrap();
    fs.commit().unwrap();
    f.write_at(64 << 10, &[9u8; 64 << 10]).unwrap();
    fs.commit().unwrap();
    let g = fs.generation();
    // The image before the handle seals its last log commit on close.
    let (_, slot, _) = newest_slot(dev.as_ref());
    assert_eq!(slot.generation, g);
    assert!(slot.log_len > 0);
    let mut image = vec![0u8; 4096 * 16384];
    dev.inner.read(0, &mut image).unwrap();
    drop(f);
    drop(fs);
    let put = |e: &mut [u8], v: u64| e[..8].copy_from_slice(&v.to_le_bytes());
    let get = |e: &[u8]| u64::from_le_bytes(e[..8].try_into().unwrap());
    let cases: Vec<(&str, Box<dyn Fn(&mut [u8])>)> = vec![
        (
            "count past the data area",
            Box::new(move |e: &mut [u8]| put(e, (get(e) & ((1 << 40) - 1)) | (20000 << 40))),
        ),
        (
            "largest count",
            Box::new(move |e: &mut [u8]| put(e, 100 | (((1 << 24) - 1) << 40))),
        ),
        (
            "first block past the device",
            Box::new(move |e: &mut [u8]| put(e, (1 << 40) - 1)),
        ),
        ("wrong check", Box::new(|e: &mut [u8]| e[8] ^= 1)),
    ];
    for (what, f) in cases {
        dev.inner.write(0, &image).unwrap();
        edit_log(dev.as_ref(), 0, f);
        dev.read.store(0, Ordering::SeqCst);
        let fs =
            Fs::open(dev.clone(), &opts()).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
        assert_eq!(fs.generation(), g - 1, "{what}");
        let read = dev.read.load(Ordering::SeqCst);
        assert!(read < 4 << 20, "{what}: open read {read} bytes");
        // The previous generation is whole.
        let got = fs.snapshot().read_to_vec("/a").unwrap();
        assert_eq!(got, vec![7u8; 64 << 10], "{what}");
        drop(fs);
    }
}
