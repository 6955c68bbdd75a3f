//! Reproducers of notafs-core bugs found while building fsck.notafs. Each is
//! Regression tests for core bugs found by the fsck corpus work (all fixed).
mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use notafs_core::check::{check, CheckOptions};
use notafs_core::raw::crc;

fn header(buf: &mut [u8], kind: u8, level: u8, count: u16, address: u64, owner: u64) {
    buf[0..4].copy_from_slice(NODE_MAGIC);
    buf[4] = kind;
    buf[5] = level;
    buf[6..8].copy_from_slice(&count.to_le_bytes());
    put64(buf, 8, address);
    put64(buf, 16, 5);
    put64(buf, 24, owner);
}

/// File `a` gets an extent tree of `height` levels in which every branch
/// has 200 entries, all pointing to the same child: a DAG of 6 nodes that a
/// walk without memory visits 200^(height-1) times.
fn dag_image(height: u8) -> Vec<u8> {
    let mut img = Img::new(good_image());
    let a = img.entry("a");
    let ext0 = img.ext_leaf(a.ext_block)[0].clone();
    let base = 900u64;
    // Leaf.
    {
        let blk = img.block_mut(base);
        blk.fill(0);
        header(blk, 2, 0, 1, base, a.ino);
        Img::encode_ext_leaf(blk, &[ext0]);
    }
    let mut child = (base, crc(img.block(base)));
    for level in 1..height {
        let b = base + level as u64;
        let blk = img.block_mut(b);
        blk.fill(0);
        header(blk, 2, level, 200, b, a.ino);
        for i in 0..200usize {
            let o = 32 + i * 20;
            put64(blk, o, i as u64);
            put64(blk, o + 8, child.0);
            put32(blk, o + 16, child.1);
        }
        child = (b, crc(img.block(b)));
    }
    img.edit_entries(|es| {
        for e in es.iter_mut().filter(|e| e.name == b"a") {
            e.ext_block = child.0;
            e.ext_crc = child.1;
            e.ext_height = height;
        }
    });
    img.b
}

fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<std::thread::Result<T>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    rx.recv_timeout(limit).ok()
}

/// Height 3 (40,000 leaf visits) ends: the walk is correct, only exponential.
#[test]
fn shared_subtree_small_is_reported() {
    let img = dag_image(3);
    let r = check(mem(&img), &CheckOptions::default()).unwrap();
    assert!(!r.is_clean());
    assert!(r
        .problems
        .iter()
        .any(|p| p.code == "claimed-twice" || p.message.contains("outside the range")));
}

// CORE BUG: check() walks every tree without remembering visited nodes, so
// a DAG of a few nodes (every branch entry pointing to the same valid child,
// checksums all correct) is visited 200^(height-1) times, and every visit
// pushes a "claimed-twice" problem: with height 5 that is 1.6e9 visits and
// as many Strings, so `fsck.notafs -n` hangs and exhausts memory. The mount
// read path (Tree::scan from read_at) has the same exponential walk. Fix:
// in check, stop descending into a node already claimed (report it once);
// in the read path, bound the work per read (e.g. visited set or a limit
// on nodes per scan proportional to the file's size).
#[test]
fn shared_subtree_dag_does_not_hang_check() {
    let img = dag_image(5);
    let r = bounded(Duration::from_secs(10), move || {
        check(mem(&img), &CheckOptions::default()).map(|r| r.problems.len())
    });
    match r {
        None => panic!("check() did not finish within 10 s on a 6-node DAG"),
        Some(Err(_)) => panic!("check() panicked"),
        Some(Ok(_)) => {}
    }
}

// CORE BUG (same root cause, read path): reading file `a` through a DAG of
// 6 extent nodes does not finish.
#[test]
fn shared_subtree_dag_does_not_hang_read() {
    let img = dag_image(5);
    let r = bounded(Duration::from_secs(10), move || mount_and_read(&img));
    assert!(
        r.is_some(),
        "mount + read of every file did not finish within 10 s"
    );
}

// CORE BUG: repair() treats a generation whose only errors are
// "free-overlap"/"leak"/"count" as fixable by rebuilding the free list. But
// a file extent pointing into free space is not a free-list problem: the
// data behind it was never written by this generation (or has been reused),
// so rebuilding "legitimises" the bad pointer: after `fsck -y` the check is
// clean (exit 1, then 0) while file `a` can no longer be read (data checksum
// mismatch), although generation 4, where `a` is intact, was still there to
// roll back to. Fix: when a referenced extent overlaps the free list, prefer
// rolling back (or verify the data of the overlapping extents first).
#[test]
fn repair_does_not_legitimise_pointer_into_free_space() {
    let good = good_image();
    let mut i = Img::new(good);
    let ns = i.newest_slot();
    let head = le64(i.slot(ns), 56);
    let free_start = le64(i.block(head), 48);
    i.edit_extents("a", |v| v[0].pblock = free_start);
    let dev = mem(&i.b);
    let before = check(dev.clone(), &CheckOptions::default()).unwrap();
    assert!(!before.is_clean());
    notafs_core::repair::repair(dev.clone(), &CheckOptions::default()).unwrap();
    let fs = notafs_core::Fs::open(dev, &notafs_core::OpenOptions::default()).unwrap();
    let data = fs.snapshot().read_to_vec("a");
    assert!(
        data.is_ok(),
        "after repair, generation {} is 'clean' but a does not read: {:?}",
        fs.generation(),
        data.err()
    );
}
