//! The data cache (issue 10): small verified reads are served from memory
//! the second time, large reads neither use nor fill it, and what it serves
//! is always what the reader's generation holds.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::{BlockDevice, Geometry, WriteReq};
use notafs_core::{FormatOptions, Fs, OpenOptions};

/// A memory device that counts read requests.
struct Counting {
    inner: MemoryDevice,
    reads: AtomicU64,
}

impl BlockDevice for Counting {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn read(&self, b: u64, buf: &mut [u8]) -> notafs_blockdev::Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(b, buf)
    }
    fn read_batch(&self, r: &mut [(u64, &mut [u8])]) -> notafs_blockdev::Result<()> {
        self.reads.fetch_add(r.len() as u64, Ordering::SeqCst);
        self.inner.read_batch(r)
    }
    fn write(&self, b: u64, d: &[u8]) -> notafs_blockdev::Result<()> {
        self.inner.write(b, d)
    }
    fn write_batch(&self, w: &[WriteReq<'_>]) -> notafs_blockdev::Result<()> {
        self.inner.write_batch(w)
    }
    fn write_zeroes(&self, b: u64, c: u64) -> notafs_blockdev::Result<()> {
        self.inner.write_zeroes(b, c)
    }
    fn discard(&self, b: u64, c: u64) -> notafs_blockdev::Result<()> {
        self.inner.discard(b, c)
    }
    fn flush(&self) -> notafs_blockdev::Result<()> {
        self.inner.flush()
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// A filesystem with `path` holding `data`, committed, reopened (cold
/// caches) on a counting device.
fn setup(path: &str, data: &[u8]) -> (Arc<Counting>, Fs) {
    let dev = Arc::new(Counting {
        inner: MemoryDevice::new(4096, 4096).unwrap(),
        reads: AtomicU64::new(0),
    });
    {
        let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
        fs.create(path).unwrap().write_at(0, data).unwrap();
        fs.commit().unwrap();
    }
    let fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
    (dev, fs)
}

#[test]
fn second_small_read_comes_from_memory() {
    let data = pattern(7, 4 << 20);
    let (dev, fs) = setup("f", &data);
    let f = fs.open_file("f").unwrap();
    for off in [0u64, 4096 * 100 + 17, 3 << 20] {
        let mut a = vec![0u8; 8192];
        let before = dev.reads.load(Ordering::SeqCst);
        assert_eq!(f.read_at(off, &mut a).unwrap(), 8192);
        let first = dev.reads.load(Ordering::SeqCst) - before;
        assert!(first > 0, "a cold read must reach the device");
        assert_eq!(a, data[off as usize..off as usize + 8192]);
        let mut b = vec![0u8; 8192];
        let before = dev.reads.load(Ordering::SeqCst);
        assert_eq!(f.read_at(off, &mut b).unwrap(), 8192);
        assert_eq!(
            dev.reads.load(Ordering::SeqCst) - before,
            0,
            "a warm read at {off} reached the device"
        );
        assert_eq!(b, a);
    }
    // A snapshot shares the cache.
    let snap = fs.snapshot();
    let sf = snap.open("f").unwrap();
    let mut c = vec![0u8; 8192];
    let before = dev.reads.load(Ordering::SeqCst);
    sf.read_at(0, &mut c).unwrap();
    assert_eq!(dev.reads.load(Ordering::SeqCst) - before, 0);
    assert_eq!(c, data[..8192]);
}

#[test]
fn large_reads_do_not_fill_the_cache() {
    let data = pattern(9, 4 << 20);
    let (dev, fs) = setup("f", &data);
    let f = fs.open_file("f").unwrap();
    let mut big = vec![0u8; 2 << 20];
    f.read_at(0, &mut big).unwrap();
    assert_eq!(big, data[..2 << 20]);
    let mut small = vec![0u8; 4096];
    let before = dev.reads.load(Ordering::SeqCst);
    f.read_at(4096 * 10, &mut small).unwrap();
    assert!(
        dev.reads.load(Ordering::SeqCst) > before,
        "a block seen only by a large read was cached (scans would evict the working set)"
    );
    assert_eq!(small, data[4096 * 10..4096 * 11]);
}

#[test]
fn cached_blocks_never_leak_across_generations() {
    // Overwrite the same range many times, committing each time, so blocks
    // are freed and reused; every generation's snapshot and the live file
    // must read their own bytes, warm or cold.
    let dev = Arc::new(Counting {
        inner: MemoryDevice::new(4096, 512).unwrap(),
        reads: AtomicU64::new(0),
    });
    let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
    fs.create("f").unwrap();
    for round in 0..40u8 {
        let v = pattern(round, 3 * 4096 + 100);
        let f = fs.open_file("f").unwrap();
        f.write_at(0, &v).unwrap();
        let mut got = vec![0u8; v.len()];
        f.read_at(0, &mut got).unwrap();
        assert_eq!(got, v, "round {round}: read before commit");
        fs.commit().unwrap();
        for _ in 0..2 {
            let mut got = vec![0u8; v.len()];
            fs.open_file("f").unwrap().read_at(0, &mut got).unwrap();
            assert_eq!(got, v, "round {round}: read after commit");
            let snap = fs.snapshot();
            let mut got = vec![0u8; v.len()];
            snap.open("f").unwrap().read_at(0, &mut got).unwrap();
            assert_eq!(got, v, "round {round}: snapshot read");
        }
    }
    // Older retained generations still read their own content.
    for g in fs.generations() {
        let old = Fs::open(
            dev.clone(),
            &OpenOptions {
                read_only: true,
                generation: Some(g.generation),
                ..OpenOptions::default()
            },
        );
        if let Ok(old) = old {
            let mut got = vec![0u8; 3 * 4096 + 100];
            let snap = old.snapshot();
            if let Ok(f) = snap.open("f") {
                f.read_at(0, &mut got).unwrap();
                assert!(
                    (0..40u8).any(|r| got == pattern(r, got.len())),
                    "generation {} reads bytes no round wrote",
                    g.generation
                );
            }
        }
    }
}

/// Large reads check their CRCs on two threads: damage anywhere in them is
/// still found, and reported at the right block.
#[test]
fn large_read_finds_damage_in_either_half() {
    const BLOCKS: u64 = 2048; // 8 MiB: above the parallel-check threshold
    for victim in [3u64, 1000, 1024, 1500, BLOCKS - 1] {
        let dev = Arc::new(MemoryDevice::new(4096, 8192).unwrap());
        {
            let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
            let mut data = vec![0u8; (BLOCKS * 4096) as usize];
            for (i, b) in data.chunks_mut(4096).enumerate() {
                b[..8].copy_from_slice(b"LBLOCK##");
                b[8..16].copy_from_slice(&(i as u64).to_le_bytes());
            }
            fs.create("f").unwrap().write_at(0, &data).unwrap();
            fs.commit().unwrap();
        }
        // Find the victim's physical block and flip a byte in it.
        let mut buf = vec![0u8; 4096];
        let pb = (0..8192u64)
            .find(|&b| {
                dev.read(b, &mut buf).unwrap();
                &buf[..8] == b"LBLOCK##" && buf[8..16] == victim.to_le_bytes()
            })
            .expect("victim block on the device");
        buf[100] ^= 0x40;
        dev.write(pb, &buf).unwrap();
        let fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
        let mut out = vec![0u8; (BLOCKS * 4096) as usize];
        match fs.open_file("f").unwrap().read_at(0, &mut out) {
            Err(notafs_core::Error::Checksum { block, .. }) => {
                assert_eq!(
                    block, pb,
                    "victim {victim}: damage reported at the wrong block"
                )
            }
            other => panic!("victim {victim}: damaged block not detected: {other:?}"),
        }
    }
}

/// With a data cache of at least 64 MiB (`cache_bytes` 256 MiB and up),
/// every write fills it, large ones too: reading back any block just
/// written reads nothing from the device. With the default cache a large
/// write does not (it would evict the readers' working set).
#[test]
fn a_large_cache_is_filled_by_every_write() {
    for (cache, expect_hit) in [(512usize << 20, true), (32 << 20, false)] {
        let dev = Arc::new(Counting {
            inner: MemoryDevice::new(4096, 4096).unwrap(),
            reads: AtomicU64::new(0),
        });
        drop(Fs::format(dev.clone(), &FormatOptions::default()).unwrap());
        let fs = Fs::open(
            dev.clone(),
            &OpenOptions {
                cache_bytes: cache,
                write_behind: None,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        let f = fs.create("/pack").unwrap();
        let data = pattern(9, 2 << 20);
        f.write_at(0, &data).unwrap();
        fs.commit().unwrap();
        let before = dev.reads.load(Ordering::SeqCst);
        let mut b = vec![0u8; 4096];
        for blk in [3u64, 200, 511] {
            f.read_at(blk * 4096, &mut b).unwrap();
            assert!(b[..] == data[(blk * 4096) as usize..][..4096]);
        }
        let reads = dev.reads.load(Ordering::SeqCst) - before;
        if expect_hit {
            assert_eq!(reads, 0, "cache {cache}: {reads} device reads");
        } else {
            assert!(reads >= 3, "cache {cache}: {reads} device reads");
        }
    }
}
