//! Large batches on the file and raw backends, on every engine (io_uring,
//! preadv/pwritev on threads, and one at a time): thousands of scattered 4 KiB writes, adjacent
//! runs that are merged, requests longer than one merged request, more bounce
//! memory than one group holds; every byte checked against a model.
mod common;

use std::process::Command;

use common::*;
use notafs_blockdev::file::{AlignedBuf, FileDevice, FileOptions, IoEngine};
use notafs_blockdev::raw::{RawDevice, RawOptions};
use notafs_blockdev::{BlockDevice, WriteReq, NO_URING_ENV};

/// Deterministic pseudo-random numbers (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A buffer of `len` bytes that starts 8 bytes past a 4096-byte boundary
/// when `unaligned` (forcing the O_DIRECT bounce path).
struct Buf(AlignedBuf, usize, usize);
impl Buf {
    fn new(len: usize, unaligned: bool, fill: impl Fn(usize) -> u8) -> Buf {
        let off = if unaligned { 8 } else { 0 };
        let mut a = AlignedBuf::zeroed(len + off, 4096).unwrap();
        for i in 0..len {
            a[off + i] = fill(i);
        }
        Buf(a, off, len)
    }
    fn get(&self) -> &[u8] {
        &self.0[self.1..self.1 + self.2]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.0[self.1..self.1 + self.2]
    }
}

fn byte(seed: u64, pos: u64) -> u8 {
    (pos.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(31)).to_le_bytes()[3]
}

/// Apply one write batch to the device and the model.
fn write_batch(dev: &dyn BlockDevice, model: &mut [u8], reqs: &[(u64, usize, bool)], seed: u64) {
    let bs = dev.geometry().block_size as u64;
    let bufs: Vec<Buf> = reqs
        .iter()
        .map(|&(b, len, un)| Buf::new(len, un, |i| byte(seed, b * bs + i as u64)))
        .collect();
    let wr: Vec<WriteReq<'_>> = reqs
        .iter()
        .zip(&bufs)
        .map(|(&(b, _, _), d)| WriteReq {
            block: b,
            data: d.get(),
        })
        .collect();
    dev.write_batch(&wr).expect("write_batch");
    for (&(b, len, _), d) in reqs.iter().zip(&bufs) {
        let at = (b * bs) as usize;
        model[at..at + len].copy_from_slice(d.get());
    }
}

/// Read `reqs` with one read_batch and compare with the model.
fn check_read_batch(dev: &dyn BlockDevice, model: &[u8], reqs: &[(u64, usize, bool)], what: &str) {
    let bs = dev.geometry().block_size as u64;
    let mut bufs: Vec<Buf> = reqs
        .iter()
        .map(|&(_, len, un)| Buf::new(len, un, |_| 0xEE))
        .collect();
    let mut rr: Vec<(u64, &mut [u8])> = reqs
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&(b, _, _), d)| (b, d.get_mut()))
        .collect();
    dev.read_batch(&mut rr).expect("read_batch");
    for (&(b, len, _), d) in reqs.iter().zip(&bufs) {
        let at = (b * bs) as usize;
        assert!(
            d.get() == &model[at..at + len],
            "{what}: read_batch of block {b} (+{len} bytes) differs"
        );
    }
}

fn exercise(dev: &dyn BlockDevice, what: &str) {
    let geo = dev.geometry();
    let bs = geo.block_size as usize;
    let n = geo.block_count;
    let mut model = vec![0u8; n as usize * bs];
    dev.read(0, &mut model).unwrap();
    let mut rng = Rng(0x1234_5678 ^ bs as u64);

    // 1. 3000 scattered 4 KiB writes (distinct blocks), half unaligned.
    let per = 4096 / bs;
    let mut blocks: Vec<u64> = (0..n / per as u64).map(|k| k * per as u64).collect();
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let scattered: Vec<(u64, usize, bool)> = blocks[..3000]
        .iter()
        .map(|&b| (b, 4096, rng.next().is_multiple_of(2)))
        .collect();
    write_batch(dev, &mut model, &scattered, 1);

    // 2. Adjacent runs (merged), one request of 9 MiB (split), mixed alignment.
    let mib = (1 << 20) / bs as u64;
    let mut reqs = Vec::new();
    let mut b = 2 * mib;
    for k in 0..40u64 {
        let len = 4096 * (1 + (k % 5) as usize);
        reqs.push((b, len, k % 3 == 0));
        b += (len / bs) as u64;
    }
    reqs.push((20 * mib, 9 << 20, false));
    write_batch(dev, &mut model, &reqs, 2);

    // 3. 40 MiB of unaligned 1 MiB writes: more bounce memory than one group.
    let big: Vec<(u64, usize, bool)> = (0..40u64).map(|k| (k * mib, 1 << 20, true)).collect();
    write_batch(dev, &mut model, &big, 3);

    // Reads: scattered, adjacent, large, unaligned; then the whole device.
    let reads: Vec<(u64, usize, bool)> = blocks[1000..4000]
        .iter()
        .map(|&b| (b, 4096, rng.next().is_multiple_of(2)))
        .collect();
    check_read_batch(dev, &model, &reads, what);
    check_read_batch(dev, &model, &reqs, what);
    check_read_batch(dev, &model, &big, what);
    let mut all = vec![0u8; n as usize * bs];
    dev.read(0, &mut all).unwrap();
    assert!(
        all == model,
        "{what}: device content differs from the model"
    );
    dev.flush().unwrap();
}

const IMAGE: u64 = 48 << 20;

fn file_case(direct: bool, engine: IoEngine) {
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", IMAGE);
    let dev = match FileDevice::open(
        &img,
        &FileOptions {
            direct,
            ..Default::default()
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            println!("SKIPPED: {e}");
            return;
        }
    };
    dev.set_io_engine(engine);
    let what = format!("{} on {:?}", dev.describe(), dev.io_engine());
    println!("{what}");
    exercise(&dev, &what);
}

#[test]
fn file_buffered_uring() {
    file_case(false, IoEngine::Uring);
}

#[test]
fn file_buffered_sequential() {
    file_case(false, IoEngine::Sequential);
}

#[test]
fn file_direct_uring() {
    file_case(true, IoEngine::Uring);
}

#[test]
fn file_direct_sequential() {
    file_case(true, IoEngine::Sequential);
}

#[test]
fn file_direct_threads() {
    file_case(true, IoEngine::Threads);
}

#[test]
fn file_buffered_threads() {
    file_case(false, IoEngine::Threads);
}

fn raw_case(sector: Option<u32>, engine: IoEngine) {
    let _g = loop_lock();
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", IMAGE);
    let Some(lo) = attach_or_skip(&img, sector) else {
        return;
    };
    let dev = RawDevice::open(&lo.dev, &RawOptions::default()).unwrap();
    dev.set_io_engine(engine);
    let what = format!("{} on {:?}", dev.describe(), dev.io_engine());
    println!("{what}");
    exercise(&dev, &what);
}

#[test]
fn raw_loop_4096_uring() {
    raw_case(Some(4096), IoEngine::Uring);
}

#[test]
fn raw_loop_512_sequential() {
    raw_case(None, IoEngine::Sequential);
}

#[test]
fn raw_loop_4096_threads() {
    raw_case(Some(4096), IoEngine::Threads);
}

/// NOTAFS_NO_URING=1 forces the fallback (threads): checked in a child
/// process (the probe runs once per process).
#[test]
fn no_uring_env_forces_the_fallback() {
    if std::env::var(NO_URING_ENV).is_ok() {
        let dir = disk_tempdir();
        let img = make_image(dir.path(), "img", 1 << 20);
        let dev = FileDevice::open(&img, &FileOptions::default()).unwrap();
        assert_eq!(dev.io_engine(), IoEngine::Threads);
        dev.set_io_engine(IoEngine::Uring);
        assert_eq!(dev.io_engine(), IoEngine::Threads);
        println!("\nFALLBACK-OK");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["no_uring_env_forces_the_fallback", "--exact", "--nocapture"])
        .env(NO_URING_ENV, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("FALLBACK-OK"), "{text}");
}

/// (read, write) system calls made by this thread so far, from
/// /proc/thread-self/io (`syscr`/`syscw`: read(2)/pread/preadv and the write
/// family; work io_uring does in the kernel is not counted).
fn syscalls() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
    let get = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .expect("syscr/syscw")
    };
    (get("syscr:"), get("syscw:"))
}

/// System calls (reads, writes) `f` makes on this thread, less what reading
/// the counters costs.
fn count_syscalls(f: impl FnOnce()) -> (u64, u64) {
    let a = syscalls();
    let b = syscalls();
    let (or, ow) = (b.0 - a.0, b.1 - a.1);
    let c = syscalls();
    f();
    let d = syscalls();
    (
        (d.0 - c.0).saturating_sub(or),
        (d.1 - c.1).saturating_sub(ow),
    )
}

/// Adjacent requests of a batch are merged: 64 adjacent 4 KiB writes and
/// reads in separate buffers are one pwritev and one preadv (one at a time
/// engine, counted on this thread), not 64 system calls.
#[test]
fn adjacent_requests_are_merged_into_one_system_call() {
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 4 << 20);
    let dev = FileDevice::open(&img, &FileOptions::default()).unwrap();
    dev.set_io_engine(IoEngine::Sequential);
    let bufs: Vec<Vec<u8>> = (0..64u8).map(|k| vec![k; 4096]).collect();
    let reqs: Vec<WriteReq<'_>> = bufs
        .iter()
        .enumerate()
        .map(|(k, b)| WriteReq {
            block: 100 + k as u64,
            data: b,
        })
        .collect();
    let (_, w) = count_syscalls(|| dev.write_batch(&reqs).unwrap());
    assert!(w <= 1, "64 adjacent writes took {w} write system calls");
    let mut back: Vec<Vec<u8>> = vec![vec![0u8; 4096]; 64];
    let mut rr: Vec<(u64, &mut [u8])> = back
        .iter_mut()
        .enumerate()
        .map(|(k, b)| (100 + k as u64, &mut b[..]))
        .collect();
    let (r, _) = count_syscalls(|| dev.read_batch(&mut rr).unwrap());
    assert!(r <= 1, "64 adjacent reads took {r} read system calls");
    assert!(back == bufs);
}

/// On io_uring, a batch of scattered requests is submitted together: 64
/// scattered 4 KiB writes and reads make (almost) no read/write system calls
/// on this thread, where one at a time they make 64 each.
#[test]
fn scattered_batches_go_through_io_uring() {
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 4 << 20);
    let dev = FileDevice::open(&img, &FileOptions::default()).unwrap();
    dev.set_io_engine(IoEngine::Uring);
    if dev.io_engine() != IoEngine::Uring {
        println!("SKIPPED: io_uring is not available here");
        return;
    }
    let bufs: Vec<Vec<u8>> = (0..64u8).map(|k| vec![k ^ 0x5A; 4096]).collect();
    let reqs: Vec<WriteReq<'_>> = bufs
        .iter()
        .enumerate()
        .map(|(k, b)| WriteReq {
            block: 3 * k as u64 + 1,
            data: b,
        })
        .collect();
    let (_, w) = count_syscalls(|| dev.write_batch(&reqs).unwrap());
    assert!(
        w < 8,
        "64 scattered writes on io_uring: {w} write system calls"
    );
    let mut back: Vec<Vec<u8>> = vec![vec![0u8; 4096]; 64];
    let mut rr: Vec<(u64, &mut [u8])> = back
        .iter_mut()
        .enumerate()
        .map(|(k, b)| (3 * k as u64 + 1, &mut b[..]))
        .collect();
    let (r, _) = count_syscalls(|| dev.read_batch(&mut rr).unwrap());
    assert!(
        r < 8,
        "64 scattered reads on io_uring: {r} read system calls"
    );
    assert!(back == bufs);
    // The same batch one at a time: 64 system calls each, as counted here.
    dev.set_io_engine(IoEngine::Sequential);
    let (_, w) = count_syscalls(|| dev.write_batch(&reqs).unwrap());
    assert_eq!(w, 64);
}
