//! A random 4 KiB read (one whole, aligned block) makes no heap allocation
//! of its own: each was a malloc and a free of cold memory per read, on the
//! path of issue 10's random-read target (profiled at 1 reader). Counted
//! per thread by a counting global allocator, so that other tests' threads
//! do not disturb the count.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use notafs_blockdev::memory::MemoryDevice;
use notafs_core::{FormatOptions, Fs, OpenOptions};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

/// Every block starts with its file block number.
fn data(blocks: u64) -> Vec<u8> {
    let mut v = vec![0x5Au8; (blocks * 4096) as usize];
    for (i, b) in v.chunks_mut(4096).enumerate() {
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    v
}

#[test]
fn block_reads_allocate_nothing_once_the_cache_is_full() {
    const BLOCKS: u64 = 2048; // 8 MiB: an extent tree of two levels
    let dev = Arc::new(MemoryDevice::new(4096, 8192).unwrap());
    let content = data(BLOCKS);
    {
        let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
        fs.create("f").unwrap().write_at(0, &content).unwrap();
        fs.commit().unwrap();
    }
    // A small cache (a 64-block data cache), filled below: from then on an
    // admitted miss reuses the buffer of the entry it evicts.
    let fs = Fs::open(
        dev,
        &OpenOptions {
            read_only: true,
            cache_bytes: 1 << 20,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let snap = fs.snapshot();
    let f = snap.open("f").unwrap();
    let mut buf = vec![0u8; 4096];
    let check = |buf: &[u8], blk: u64| {
        assert!(
            buf == &content[(blk * 4096) as usize..][..4096],
            "block {blk}"
        )
    };
    // Warm the node caches (every extent leaf) and fill the data cache.
    for blk in (0..BLOCKS).step_by(8) {
        assert_eq!(f.read_at(blk * 4096, &mut buf).unwrap(), 4096);
        check(&buf, blk);
    }
    // Misses (blocks not read yet) and hits (the same blocks again).
    let blocks: Vec<u64> = (1..BLOCKS).step_by(8).take(200).collect();
    let before = allocs();
    for &blk in &blocks {
        f.read_at(blk * 4096, &mut buf).unwrap();
        f.read_at(blk * 4096, &mut buf).unwrap();
    }
    let n = allocs() - before;
    for &blk in &blocks {
        f.read_at(blk * 4096, &mut buf).unwrap();
        check(&buf, blk);
    }
    assert!(n <= 4, "400 4 KiB reads made {n} allocations");
}
