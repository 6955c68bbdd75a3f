//! Every backend behaves like the memory device on random operation
//! sequences, and rejects bad requests without panicking or touching data.
mod common;

use std::cell::RefCell;
use std::sync::Arc;

use common::*;
use notafs_blockdev::file::{AlignedBuf, FileDevice, FileOptions, IoEngine};
use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::raw::{RawDevice, RawOptions};
use notafs_blockdev::{BlockDevice, BlockError, WriteReq, MAX_REQUEST_BYTES};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

// ---------------------------------------------------------------------------
// The model test

/// One operation; block numbers and counts are reduced modulo the device
/// size when applied, sometimes landing past the end on purpose.
#[derive(Clone, Debug)]
enum Op {
    Write {
        block: u16,
        count: u8,
        seed: u8,
        unaligned: bool,
    },
    Read {
        block: u16,
        count: u8,
        unaligned: bool,
    },
    WriteZeroes {
        block: u16,
        count: u8,
    },
    Discard {
        block: u16,
        count: u8,
    },
    /// Writes (block, count, seed, unaligned buffer) handed over as one
    /// `write_batch`; with `adjacent` each starts where the previous ended,
    /// so the backend can merge them.
    Batch {
        writes: Vec<(u16, u8, u8, bool)>,
        adjacent: bool,
    },
    /// Reads (block, count, unaligned buffer) as one `read_batch`.
    ReadBatch {
        reads: Vec<(u16, u8, bool)>,
        adjacent: bool,
    },
    Misaligned {
        block: u16,
        extra: u8,
    },
    Flush,
    Barrier,
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        let pick = u8::arbitrary(g) % 22;
        match pick {
            0..=5 => Op::Write {
                block: u16::arbitrary(g),
                count: u8::arbitrary(g),
                seed: u8::arbitrary(g),
                unaligned: bool::arbitrary(g),
            },
            6..=10 => Op::Read {
                block: u16::arbitrary(g),
                count: u8::arbitrary(g),
                unaligned: bool::arbitrary(g),
            },
            11..=12 => Op::WriteZeroes {
                block: u16::arbitrary(g),
                count: u8::arbitrary(g),
            },
            13..=14 => Op::Discard {
                block: u16::arbitrary(g),
                count: u8::arbitrary(g),
            },
            15 | 20 => Op::Batch {
                writes: (0..1 + usize::arbitrary(g) % 8)
                    .map(|_| {
                        (
                            u16::arbitrary(g),
                            u8::arbitrary(g),
                            u8::arbitrary(g),
                            bool::arbitrary(g),
                        )
                    })
                    .collect(),
                adjacent: bool::arbitrary(g),
            },
            21 => Op::ReadBatch {
                reads: (0..1 + usize::arbitrary(g) % 8)
                    .map(|_| (u16::arbitrary(g), u8::arbitrary(g), bool::arbitrary(g)))
                    .collect(),
                adjacent: bool::arbitrary(g),
            },
            16 => Op::Misaligned {
                block: u16::arbitrary(g),
                extra: u8::arbitrary(g),
            },
            17 => Op::Barrier,
            _ => Op::Flush,
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        match self.clone() {
            Op::Write {
                block,
                count,
                seed,
                unaligned,
            } => Box::new(
                (block, count)
                    .shrink()
                    .map(move |(block, count)| Op::Write {
                        block,
                        count,
                        seed,
                        unaligned,
                    }),
            ),
            Op::Batch { writes, adjacent } => Box::new(
                writes
                    .shrink()
                    .map(move |writes| Op::Batch { writes, adjacent }),
            ),
            Op::ReadBatch { reads, adjacent } => Box::new(
                reads
                    .shrink()
                    .map(move |reads| Op::ReadBatch { reads, adjacent }),
            ),
            _ => quickcheck::empty_shrinker(),
        }
    }
}

/// Map a raw (block, count) to one the device mostly accepts: 1 in 16 goes
/// past the end to check that both sides refuse it.
fn range(n: u64, block: u16, count: u8) -> (u64, u64) {
    let count = 1 + (count as u64 % 8);
    let block = if block % 16 == 15 {
        n - 1 + (block as u64 % 3) // past the end for count ≥ 2 or block ≥ n
    } else {
        block as u64 % n
    };
    (block, count)
}

/// The ranges of a batch: each from `range`, or with `adjacent` each after
/// the previous one (physically contiguous, so backends may merge them).
fn batch_ranges(n: u64, raw: impl Iterator<Item = (u16, u8)>, adjacent: bool) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (block, count) in raw {
        let (b, c) = range(n, block, count);
        match out.last() {
            Some(&(pb, pc)) if adjacent => out.push((pb + pc, c)),
            _ => out.push((b, c)),
        }
    }
    out
}

/// Bytes of `len` at an address that is *not* 4096-aligned when `unaligned`
/// (exercises the O_DIRECT bounce path) and aligned otherwise.
struct TestBuf {
    raw: AlignedBuf,
    off: usize,
    len: usize,
}

impl TestBuf {
    fn new(len: usize, unaligned: bool) -> TestBuf {
        let off = if unaligned { 8 } else { 0 };
        TestBuf {
            raw: AlignedBuf::zeroed(len + off, 4096).expect("alloc"),
            off,
            len,
        }
    }
    fn get(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

fn same_outcome(
    what: &str,
    a: &notafs_blockdev::Result<()>,
    b: &notafs_blockdev::Result<()>,
) -> Result<(), String> {
    match (a, b) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(x), Err(y)) if std::mem::discriminant(x) == std::mem::discriminant(y) => Ok(()),
        _ => Err(format!("{what}: memory {a:?} vs backend {b:?}")),
    }
}

/// Apply `ops` to `dev` and to a memory device that starts with the same
/// content; every read must agree on every block whose content is defined
/// (not discarded since its last write).
fn check_against_memory(dev: &dyn BlockDevice, ops: &[Op]) -> Result<(), String> {
    let geo = dev.geometry();
    let bs = geo.block_size as usize;
    let n = geo.block_count;
    let mut init = vec![0u8; n as usize * bs];
    dev.read(0, &mut init)
        .map_err(|e| format!("initial read: {e}"))?;
    let mem = MemoryDevice::from_vec(geo.block_size, init);
    let mut known = vec![true; n as usize];

    let compare = |block: u64, a: &[u8], b: &[u8], known: &[bool]| -> Result<(), String> {
        for (i, (x, y)) in a.chunks(bs).zip(b.chunks(bs)).enumerate() {
            let blk = block + i as u64;
            if known[blk as usize] && x != y {
                return Err(format!("block {blk} differs from the memory device"));
            }
        }
        Ok(())
    };

    for (i, op) in ops.iter().enumerate() {
        let what = format!("op {i} {op:?}");
        match op {
            Op::Write {
                block,
                count,
                seed,
                unaligned,
            } => {
                let (b, c) = range(n, *block, *count);
                let mut buf = TestBuf::new(c as usize * bs, *unaligned);
                for k in 0..c {
                    let p = pattern(*seed as u64, b + k, bs);
                    buf.get_mut()[k as usize * bs..(k as usize + 1) * bs].copy_from_slice(&p);
                }
                let r1 = mem.write(b, buf.get());
                let r2 = dev.write(b, buf.get());
                same_outcome(&what, &r1, &r2)?;
                if r1.is_ok() {
                    known[b as usize..(b + c) as usize].fill(true);
                }
            }
            Op::Read {
                block,
                count,
                unaligned,
            } => {
                let (b, c) = range(n, *block, *count);
                let mut x = vec![0u8; c as usize * bs];
                let mut y = TestBuf::new(c as usize * bs, *unaligned);
                let r1 = mem.read(b, &mut x);
                let r2 = dev.read(b, y.get_mut());
                same_outcome(&what, &r1, &r2)?;
                if r1.is_ok() {
                    compare(b, &x, y.get(), &known).map_err(|e| format!("{what}: {e}"))?;
                }
            }
            Op::WriteZeroes { block, count } => {
                let (b, c) = range(n, *block, *count);
                let r1 = mem.write_zeroes(b, c);
                let r2 = dev.write_zeroes(b, c);
                same_outcome(&what, &r1, &r2)?;
                if r1.is_ok() {
                    known[b as usize..(b + c) as usize].fill(true);
                }
            }
            Op::Discard { block, count } => {
                let (b, c) = range(n, *block, *count);
                let r1 = mem.discard(b, c);
                let r2 = dev.discard(b, c);
                same_outcome(&what, &r1, &r2)?;
                if r1.is_ok() {
                    // Unspecified until rewritten.
                    known[b as usize..(b + c) as usize].fill(false);
                }
            }
            Op::Batch { writes, adjacent } => {
                let ranges = batch_ranges(n, writes.iter().map(|w| (w.0, w.1)), *adjacent);
                let bufs: Vec<(u64, TestBuf)> = ranges
                    .iter()
                    .zip(writes)
                    .map(|(&(b, c), &(_, _, seed, unaligned))| {
                        let mut buf = TestBuf::new(c as usize * bs, unaligned);
                        for k in 0..c {
                            buf.get_mut()[k as usize * bs..(k as usize + 1) * bs]
                                .copy_from_slice(&pattern(seed as u64, b + k, bs));
                        }
                        (b, buf)
                    })
                    .collect();
                let reqs: Vec<WriteReq<'_>> = bufs
                    .iter()
                    .map(|(b, d)| WriteReq {
                        block: *b,
                        data: d.get(),
                    })
                    .collect();
                // Writes of a batch are unordered, so overlapping writes with
                // different data would have no defined result: skip those.
                let overlap = ranges.iter().enumerate().any(|(i, (b1, c1))| {
                    ranges
                        .iter()
                        .skip(i + 1)
                        .any(|(b2, c2)| *b1 < b2 + c2 && *b2 < b1 + c1)
                });
                if overlap {
                    continue;
                }
                let r1 = mem.write_batch(&reqs);
                let r2 = dev.write_batch(&reqs);
                same_outcome(&what, &r1, &r2)?;
                // "Stops at the first error": the writes before it completed.
                for &(b, c) in &ranges {
                    if b + c > n {
                        break;
                    }
                    known[b as usize..(b + c) as usize].fill(true);
                }
            }
            Op::ReadBatch { reads, adjacent } => {
                let ranges = batch_ranges(n, reads.iter().map(|r| (r.0, r.1)), *adjacent);
                let mut x: Vec<Vec<u8>> = ranges
                    .iter()
                    .map(|&(_, c)| vec![0u8; c as usize * bs])
                    .collect();
                let mut y: Vec<TestBuf> = ranges
                    .iter()
                    .zip(reads)
                    .map(|(&(_, c), r)| TestBuf::new(c as usize * bs, r.2))
                    .collect();
                let mut xr: Vec<(u64, &mut [u8])> = ranges
                    .iter()
                    .zip(x.iter_mut())
                    .map(|(&(b, _), v)| (b, &mut v[..]))
                    .collect();
                let mut yr: Vec<(u64, &mut [u8])> = ranges
                    .iter()
                    .zip(y.iter_mut())
                    .map(|(&(b, _), v)| (b, v.get_mut()))
                    .collect();
                let r1 = mem.read_batch(&mut xr);
                let r2 = dev.read_batch(&mut yr);
                drop((xr, yr));
                same_outcome(&what, &r1, &r2)?;
                if r1.is_ok() {
                    for ((&(b, _), a), c) in ranges.iter().zip(&x).zip(&y) {
                        compare(b, a, c.get(), &known).map_err(|e| format!("{what}: {e}"))?;
                    }
                }
            }
            Op::Misaligned { block, extra } => {
                let (b, _) = range(n, *block, 1);
                let len = bs + 1 + (*extra as usize % (bs - 1));
                let data = vec![0xEEu8; len];
                if dev.write(b, &data).is_ok() {
                    return Err(format!("{what}: misaligned write of {len} bytes accepted"));
                }
                let mut rb = vec![0u8; len];
                if dev.read(b, &mut rb).is_ok() {
                    return Err(format!("{what}: misaligned read of {len} bytes accepted"));
                }
            }
            Op::Flush => dev.flush().map_err(|e| format!("{what}: {e}"))?,
            Op::Barrier => dev.barrier().map_err(|e| format!("{what}: {e}"))?,
        }
    }
    // Final full comparison.
    let mut x = vec![0u8; n as usize * bs];
    let mut y = vec![0u8; n as usize * bs];
    mem.read(0, &mut x).map_err(|e| e.to_string())?;
    dev.read(0, &mut y).map_err(|e| e.to_string())?;
    compare(0, &x, &y, &known).map_err(|e| format!("final read: {e}"))
}

thread_local! {
    /// The device under test for the quickcheck property (quickcheck takes a
    /// plain fn, so the device is passed through here; each case starts from
    /// the device's current content, so one device serves every case).
    static DUT: RefCell<Option<Arc<dyn BlockDevice>>> = const { RefCell::new(None) };
}

fn prop(ops: Vec<Op>) -> TestResult {
    let dev = DUT.with(|d| d.borrow().clone()).expect("device under test");
    match check_against_memory(&*dev, &ops) {
        Ok(()) => TestResult::passed(),
        Err(e) => TestResult::error(format!("{}: {e}", dev.describe())),
    }
}

fn quickcheck_device(dev: Arc<dyn BlockDevice>, tests: u64) {
    DUT.with(|d| *d.borrow_mut() = Some(dev));
    QuickCheck::new()
        .tests(tests)
        .rng(Gen::new(40))
        .quickcheck(prop as fn(Vec<Op>) -> TestResult);
    DUT.with(|d| *d.borrow_mut() = None);
}

#[test]
fn model_memory() {
    quickcheck_device(Arc::new(MemoryDevice::new(512, 70).unwrap()), 200);
}

#[test]
fn model_file_buffered() {
    let dir = disk_tempdir();
    // 70 blocks and a partial one: the partial tail must be ignored.
    let img = make_image(dir.path(), "img", 70 * 4096 + 100);
    let dev = FileDevice::open(&img, &FileOptions::default()).unwrap();
    assert_eq!(dev.geometry().block_count, 70);
    quickcheck_device(Arc::new(dev), 150);
}

#[test]
fn model_file_buffered_512() {
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 300 * 512);
    let opts = FileOptions {
        block_size: Some(512),
        ..Default::default()
    };
    quickcheck_device(Arc::new(FileDevice::open(&img, &opts).unwrap()), 100);
}

fn open_direct(img: &std::path::Path) -> Option<FileDevice> {
    let opts = FileOptions {
        direct: true,
        ..Default::default()
    };
    match FileDevice::open(img, &opts) {
        Ok(d) => Some(d),
        Err(e @ BlockError::Unsupported { .. }) => {
            println!("SKIPPED: O_DIRECT refused by the filesystem of {img:?}: {e}");
            None
        }
        Err(e) => panic!("open O_DIRECT: {e}"),
    }
}

#[test]
fn model_file_direct() {
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 70 * 4096);
    let Some(dev) = open_direct(&img) else { return };
    quickcheck_device(Arc::new(dev), 150);
}

// The same models with batches on the other engines (preadv/pwritev one at
// a time, or on threads) instead of io_uring (the default where available).

#[test]
fn model_file_buffered_sequential_batches() {
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 70 * 4096);
    let dev = FileDevice::open(&img, &FileOptions::default()).unwrap();
    dev.set_io_engine(IoEngine::Sequential);
    assert_eq!(dev.io_engine(), IoEngine::Sequential);
    quickcheck_device(Arc::new(dev), 100);
}

#[test]
fn model_file_direct_sequential_batches() {
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 70 * 4096);
    let Some(dev) = open_direct(&img) else { return };
    dev.set_io_engine(IoEngine::Sequential);
    quickcheck_device(Arc::new(dev), 100);
}

#[test]
fn model_raw_loop_4096_direct_io_sequential_batches() {
    model_raw_engine(Some(4096), None, IoEngine::Sequential);
}

#[test]
fn model_file_direct_threaded_batches() {
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 70 * 4096);
    let Some(dev) = open_direct(&img) else { return };
    dev.set_io_engine(IoEngine::Threads);
    assert_eq!(dev.io_engine(), IoEngine::Threads);
    quickcheck_device(Arc::new(dev), 100);
}

#[test]
fn model_raw_loop_512_threaded_batches() {
    model_raw_engine(None, None, IoEngine::Threads);
}

fn model_raw(sector: Option<u32>, block_size: Option<u32>) {
    model_raw_engine(sector, block_size, IoEngine::Uring)
}

fn model_raw_engine(sector: Option<u32>, block_size: Option<u32>, engine: IoEngine) {
    let _g = loop_lock();
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 70 * 4096);
    // Give the image non-zero content so "reads zeros" is not a free pass.
    {
        let f = FileDevice::open(&img, &FileOptions::default()).unwrap();
        for b in 0..70 {
            f.write(b, &pattern(99, b, 4096)).unwrap();
        }
        f.flush().unwrap();
    }
    let Some(lo) = attach_or_skip(&img, sector) else {
        return;
    };
    let dev = RawDevice::open(
        &lo.dev,
        &RawOptions {
            read_only: false,
            block_size,
        },
    )
    .unwrap();
    let geo = dev.geometry();
    let expect_bs = block_size.or(sector).unwrap_or(512);
    assert_eq!(geo.block_size, expect_bs);
    assert_eq!(geo.size_bytes(), 70 * 4096);
    // Content seen through the loop device is the image's.
    let mut first = vec![0u8; expect_bs as usize];
    dev.read(0, &mut first).unwrap();
    assert_eq!(first, pattern(99, 0, 4096)[..expect_bs as usize]);
    dev.set_io_engine(engine);
    quickcheck_device(Arc::new(dev), 60);
}

#[test]
fn model_raw_loop_512() {
    model_raw(None, None);
}

#[test]
fn model_raw_loop_4096_direct_io() {
    model_raw(Some(4096), None);
}

#[test]
fn model_raw_loop_512_with_4k_blocks() {
    model_raw(None, Some(4096));
}

/// Which backends declare that written data may wait in a host page cache
/// (what write-behind flushes early): buffered image files and loop
/// devices without direct I/O; not O_DIRECT image files nor a loop device
/// with direct I/O opened raw.
#[test]
fn host_cached_writes_per_backend() {
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 64 * 4096);
    let buffered = FileDevice::open(&img, &FileOptions::default()).unwrap();
    assert!(buffered.host_cached_writes(), "buffered image file");
    drop(buffered);
    match FileDevice::open(
        &img,
        &FileOptions {
            direct: true,
            ..Default::default()
        },
    ) {
        Ok(d) => assert!(!d.host_cached_writes(), "O_DIRECT image file"),
        Err(BlockError::Unsupported { .. }) => println!("SKIPPED O_DIRECT: refused here"),
        Err(e) => panic!("O_DIRECT open: {e}"),
    }
    let _g = loop_lock();
    let raw = |lo: &LoopDev| {
        let d = RawDevice::open(&lo.dev, &RawOptions::default()).unwrap();
        // Through the Arc forwarding too, as the filesystem holds it.
        let d: Arc<dyn BlockDevice> = Arc::new(d);
        d.host_cached_writes()
    };
    let Some(lo) = attach_or_skip(&img, None) else {
        return;
    };
    assert!(raw(&lo), "loop device without direct I/O");
    drop(lo);
    let Some(lo) = attach_or_skip(&img, Some(4096)) else {
        return;
    };
    let name = lo.dev.file_name().unwrap().to_string_lossy().to_string();
    let dio = std::fs::read_to_string(format!("/sys/block/{name}/loop/dio")).unwrap_or_default();
    if dio.trim() == "1" {
        assert!(!raw(&lo), "loop device with direct I/O");
    } else {
        println!("SKIPPED: the host filesystem refused direct I/O for {name}");
    }
}

// ---------------------------------------------------------------------------
// Bad requests

/// Every malformed request fails with the right error and changes nothing.
fn bad_requests(dev: &dyn BlockDevice) {
    let geo = dev.geometry();
    let bs = geo.block_size as usize;
    let n = geo.block_count;
    let name = dev.describe();
    // Known content in the first and last blocks.
    let first = pattern(1, 0, bs);
    let last = pattern(1, n - 1, bs);
    dev.write(0, &first).unwrap();
    dev.write(n - 1, &last).unwrap();

    let mut buf = vec![0u8; bs];
    let misaligned = [bs - 1, bs + 1, 1, bs / 2];
    for len in misaligned {
        let data = vec![0xAB; len];
        assert!(
            matches!(dev.write(0, &data), Err(BlockError::Misaligned { .. })),
            "{name}: write of {len}"
        );
        let mut rb = vec![0; len];
        assert!(
            matches!(dev.read(0, &mut rb), Err(BlockError::Misaligned { .. })),
            "{name}: read of {len}"
        );
    }
    // Zero length.
    assert!(
        matches!(dev.write(0, &[]), Err(BlockError::Empty)),
        "{name}"
    );
    assert!(
        matches!(dev.read(0, &mut []), Err(BlockError::Empty)),
        "{name}"
    );
    assert!(
        matches!(dev.write_zeroes(0, 0), Err(BlockError::Empty)),
        "{name}"
    );
    assert!(
        matches!(dev.discard(0, 0), Err(BlockError::Empty)),
        "{name}"
    );
    // Out of range: at the end, straddling the end, far away.
    for block in [n, n + 1, u64::MAX / 2, u64::MAX] {
        assert!(
            matches!(dev.write(block, &first), Err(BlockError::OutOfRange { .. })),
            "{name}: write at {block}"
        );
        assert!(
            matches!(
                dev.read(block, &mut buf),
                Err(BlockError::OutOfRange { .. })
            ),
            "{name}: read at {block}"
        );
    }
    let two = vec![0xCD; 2 * bs];
    assert!(
        matches!(dev.write(n - 1, &two), Err(BlockError::OutOfRange { .. })),
        "{name}: straddling write"
    );
    // block + count overflows u64.
    for (b, c) in [
        (u64::MAX, 2),
        (2, u64::MAX),
        (u64::MAX, u64::MAX),
        (n - 1, 2),
        (0, n + 1),
    ] {
        assert!(
            matches!(dev.write_zeroes(b, c), Err(BlockError::OutOfRange { .. })),
            "{name}: write_zeroes({b}, {c})"
        );
        assert!(
            matches!(dev.discard(b, c), Err(BlockError::OutOfRange { .. })),
            "{name}: discard({b}, {c})"
        );
    }
    // A huge buffer: rejected before any I/O. calloc'd and never touched, so
    // it costs address space, not memory.
    let huge = vec![0u8; MAX_REQUEST_BYTES as usize + bs];
    assert!(
        matches!(dev.write(0, &huge), Err(BlockError::TooLarge { .. })),
        "{name}: huge write"
    );
    drop(huge);
    let mut huge = vec![0u8; MAX_REQUEST_BYTES as usize + bs];
    assert!(
        matches!(dev.read(0, &mut huge), Err(BlockError::TooLarge { .. })),
        "{name}: huge read"
    );
    drop(huge);
    // A batch with a bad request fails.
    let reqs = [
        WriteReq {
            block: n,
            data: &first,
        },
        WriteReq {
            block: 0,
            data: &first[..bs - 1],
        },
    ];
    assert!(dev.write_batch(&reqs).is_err(), "{name}: bad batch");
    // Nothing changed.
    dev.read(0, &mut buf).unwrap();
    assert_eq!(buf, first, "{name}: first block changed");
    dev.read(n - 1, &mut buf).unwrap();
    assert_eq!(buf, last, "{name}: last block changed");
}

#[test]
fn bad_requests_memory() {
    bad_requests(&MemoryDevice::new(4096, 16).unwrap());
}

#[test]
fn bad_requests_file() {
    let dir = disk_tempdir();
    let dev = FileDevice::create(dir.path().join("img"), 16 * 4096).unwrap();
    bad_requests(&dev);
    let img = make_image(dir.path(), "img2", 16 * 4096);
    if let Some(d) = open_direct(&img) {
        bad_requests(&d);
    }
}

#[test]
fn bad_requests_fault_wrapper() {
    let dev = notafs_blockdev::fault::FaultDevice::new(
        MemoryDevice::new(512, 16).unwrap(),
        7,
        Default::default(),
    );
    bad_requests(&dev);
    // Rejected requests are not counted as I/O.
    assert_eq!(dev.stats().writes, 2);
}

#[test]
fn bad_requests_raw() {
    let _g = loop_lock();
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 16 * 4096);
    for sector in [None, Some(4096)] {
        let Some(lo) = attach_or_skip(&img, sector) else {
            return;
        };
        let dev = RawDevice::open(&lo.dev, &RawOptions::default()).unwrap();
        bad_requests(&dev);
    }
}

// ---------------------------------------------------------------------------
// Backend-specific behaviour

#[test]
fn file_too_small_and_partial_tail() {
    let dir = disk_tempdir();
    let small = make_image(dir.path(), "small", 4095);
    let e = FileDevice::open(&small, &FileOptions::default())
        .err()
        .expect("a file smaller than one block must be refused");
    assert!(e.to_string().contains("smaller than one"), "{e}");
    let empty = make_image(dir.path(), "empty", 0);
    assert!(FileDevice::open(&empty, &FileOptions::default()).is_err());
    assert!(FileDevice::create(dir.path().join("c"), 100).is_err());

    // 2 blocks + 1000 bytes: the tail is never touched.
    let img = make_image(dir.path(), "tail", 2 * 4096 + 1000);
    std::fs::write(&img, vec![0x5A; 2 * 4096 + 1000]).unwrap();
    let dev = FileDevice::open(&img, &FileOptions::default()).unwrap();
    assert_eq!(dev.geometry().block_count, 2);
    dev.write(1, &[0u8; 4096]).unwrap();
    dev.write_zeroes(0, 2).unwrap();
    dev.discard(0, 2).unwrap();
    dev.flush().unwrap();
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(bytes.len(), 2 * 4096 + 1000);
    assert!(bytes[2 * 4096..].iter().all(|&b| b == 0x5A));
}

#[test]
fn file_bad_block_size() {
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 1 << 20);
    for bs in [0, 100, 256, 4095, 1 << 17] {
        let o = FileOptions {
            block_size: Some(bs),
            ..Default::default()
        };
        assert!(FileDevice::open(&img, &o).is_err(), "block size {bs}");
    }
}

fn allocated_bytes(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn file_create_is_sparse_and_discard_punches_holes() {
    let dir = disk_tempdir();
    let p = dir.path().join("img");
    let dev = FileDevice::create(&p, 64 << 20).unwrap();
    assert_eq!(dev.geometry().block_count, (64 << 20) / 4096);
    assert!(allocated_bytes(&p) < 1 << 20, "create must be sparse");
    let data: Vec<u8> = (0..256).flat_map(|b| pattern(3, b, 4096)).collect();
    dev.write(0, &data).unwrap();
    dev.flush().unwrap();
    let full = allocated_bytes(&p);
    assert!(full >= 1 << 20, "1 MiB written, {full} allocated");
    if dev.geometry().caps.discard {
        dev.discard(0, 256).unwrap();
        dev.flush().unwrap();
        assert!(
            allocated_bytes(&p) < full / 2,
            "discard should punch a hole: {} still allocated",
            allocated_bytes(&p)
        );
    } else {
        println!("SKIPPED hole check: filesystem cannot punch holes");
    }
    // write_zeroes reads back zeros whatever path it takes.
    dev.write(10, &data[..8 * 4096]).unwrap();
    dev.write_zeroes(11, 5).unwrap();
    let mut rb = vec![1u8; 8 * 4096];
    dev.read(10, &mut rb).unwrap();
    assert_eq!(rb[..4096], data[..4096]);
    assert!(rb[4096..6 * 4096].iter().all(|&b| b == 0));
    assert_eq!(rb[6 * 4096..], data[6 * 4096..8 * 4096]);
}

#[test]
fn file_read_only() {
    let dir = disk_tempdir();
    let p = dir.path().join("img");
    let rw = FileDevice::create(&p, 1 << 20).unwrap();
    rw.write(3, &pattern(5, 3, 4096)).unwrap();
    rw.flush().unwrap();
    drop(rw);
    let ro = FileDevice::open(
        &p,
        &FileOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut b = vec![0u8; 4096];
    ro.read(3, &mut b).unwrap();
    assert_eq!(b, pattern(5, 3, 4096));
    assert!(ro.write(3, &b).is_err());
    assert!(ro.write_zeroes(3, 1).is_err());
    assert!(ro.discard(3, 1).is_err());
    ro.read(3, &mut b).unwrap();
    assert_eq!(b, pattern(5, 3, 4096));
}

#[test]
fn file_direct_large_unaligned_transfer() {
    // Larger than the 1 MiB bounce chunk, from an unaligned buffer.
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 4 << 20);
    let Some(dev) = open_direct(&img) else { return };
    let data: Vec<u8> = (0..700).flat_map(|b| pattern(8, b, 4096)).collect();
    let mut tb = TestBuf::new(data.len(), true);
    tb.get_mut().copy_from_slice(&data);
    assert_ne!(tb.get().as_ptr() as usize % 4096, 0);
    dev.write(5, tb.get()).unwrap();
    let mut rb = TestBuf::new(data.len(), true);
    dev.read(5, rb.get_mut()).unwrap();
    assert!(rb.get() == &data[..]);
    // And the buffered view of the same file agrees.
    dev.flush().unwrap();
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[5 * 4096..5 * 4096 + data.len()] == data[..]);
}

#[test]
fn raw_exclusive_and_geometry() {
    let _g = loop_lock();
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 8 << 20);
    let Some(lo) = attach_or_skip(&img, None) else {
        return;
    };
    let a = RawDevice::open(&lo.dev, &RawOptions::default()).unwrap();
    let geo = a.geometry();
    assert_eq!(geo.block_size, 512);
    assert_eq!(geo.block_count, (8 << 20) / 512);
    assert!(a.physical_sector_size() >= 512);
    assert!(a.describe().contains(&lo.dev.display().to_string()));
    // A second exclusive opener is refused with Busy, naming the device.
    match RawDevice::open(&lo.dev, &RawOptions::default()) {
        Err(e @ BlockError::Busy { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&lo.dev.display().to_string()), "{msg}")
        }
        Err(e) => panic!("expected Busy, got {e}"),
        Ok(_) => panic!("second exclusive open succeeded"),
    }
    // Read-only openers do not claim the device.
    let ro = RawDevice::open(
        &lo.dev,
        &RawOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    a.write(7, &pattern(4, 7, 512)).unwrap();
    let mut b = vec![0u8; 512];
    ro.read(7, &mut b).unwrap();
    assert_eq!(b, pattern(4, 7, 512));
    assert!(ro.write(7, &b).is_err());
    drop(a);
    // Released on drop.
    let again = RawDevice::open(&lo.dev, &RawOptions::default()).unwrap();
    // Block size below the logical sector, or not a power of two: refused.
    drop(again);
    for bs in [256, 1000, 3 << 10] {
        let o = RawOptions {
            block_size: Some(bs),
            ..Default::default()
        };
        assert!(RawDevice::open(&lo.dev, &o).is_err(), "block size {bs}");
    }
    // A regular file is not a block device.
    assert!(RawDevice::open(&img, &RawOptions::default()).is_err());
}

#[test]
fn raw_discard_and_write_zeroes() {
    let _g = loop_lock();
    let dir = disk_tempdir();
    let img = make_image(dir.path(), "img", 8 << 20);
    let Some(lo) = attach_or_skip(&img, Some(4096)) else {
        return;
    };
    let dev = RawDevice::open(&lo.dev, &RawOptions::default()).unwrap();
    assert_eq!(dev.geometry().block_size, 4096);
    let data: Vec<u8> = (0..512).flat_map(|b| pattern(6, b, 4096)).collect();
    dev.write(0, &data).unwrap();
    dev.flush().unwrap();
    dev.write_zeroes(10, 20).unwrap();
    let mut rb = vec![1u8; 40 * 4096];
    dev.read(0, &mut rb).unwrap();
    assert_eq!(rb[..10 * 4096], data[..10 * 4096]);
    assert!(rb[10 * 4096..30 * 4096].iter().all(|&b| b == 0));
    assert_eq!(rb[30 * 4096..], data[30 * 4096..40 * 4096]);
    // Discard is accepted; a loop device punches holes in its backing file.
    dev.discard(100, 400).unwrap();
    dev.flush().unwrap();
    if dev.geometry().caps.discard {
        assert!(allocated_bytes(&img) < 1 << 20, "{}", allocated_bytes(&img));
    }
    // Rewritten discarded blocks read back their new content.
    dev.write(200, &data[..4096]).unwrap();
    let mut one = vec![0u8; 4096];
    dev.read(200, &mut one).unwrap();
    assert_eq!(one, data[..4096]);
}
