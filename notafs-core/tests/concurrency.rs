//! `Fs` is shared across threads: readers of committed data proceed while a
//! writer works, and never see uncommitted or torn state.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::BlockDevice;
use notafs_core::{FormatOptions, Fs};

#[test]
fn snapshot_readers_see_whole_generations_while_writer_commits() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::new(4096, 16384).unwrap());
    let fs = Fs::format(dev, &FormatOptions::default()).unwrap();
    // Two files always written with the same byte in one transaction: a
    // reader that ever sees them differ has seen a mix of generations.
    for n in ["x", "y"] {
        fs.create(n).unwrap().write_at(0, &[0u8; 300_000]).unwrap();
    }
    fs.commit().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let fs = fs.clone();
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            let mut checked = 0u64;
            let mut worst = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let s = fs.snapshot();
                let x = s.read_to_vec("x").unwrap();
                let y = s.read_to_vec("y").unwrap();
                worst = worst.max(t0.elapsed());
                assert_eq!(x.len(), 300_000);
                assert!(x.iter().all(|&b| b == x[0]), "torn file x");
                assert_eq!(x, y, "generation {} mixes two commits", s.generation());
                checked += 1;
            }
            (checked, worst)
        }));
    }
    let writer_start = Instant::now();
    for i in 1..=60u8 {
        for n in ["x", "y"] {
            fs.open_file(n)
                .unwrap()
                .write_at(0, &vec![i; 300_000])
                .unwrap();
        }
        fs.commit().unwrap();
    }
    let writer = writer_start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let (checked, worst) = r.join().unwrap();
        assert!(checked > 0, "reader made no progress");
        eprintln!("reader: {checked} snapshots checked, worst {worst:?} (writer took {writer:?})");
    }
    let s = fs.snapshot();
    assert!(s.read_to_vec("x").unwrap().iter().all(|&b| b == 60));
}

#[test]
fn uncommitted_changes_are_invisible_to_snapshots() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::new(4096, 4096).unwrap());
    let fs = Fs::format(dev, &FormatOptions::default()).unwrap();
    let f = fs.create("a").unwrap();
    f.write_at(0, b"committed").unwrap();
    fs.commit().unwrap();
    f.write_at(0, b"UNCOMMITTED").unwrap();
    fs.create("b").unwrap();
    let s = fs.snapshot();
    assert_eq!(s.read_to_vec("a").unwrap(), b"committed");
    assert!(s.stat("b").is_err());
    fs.abort().unwrap();
    let mut buf = [0u8; 9];
    fs.open_file("a").unwrap().read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"committed");
    assert!(!fs.exists("b").unwrap());
}

#[test]
fn pinned_snapshot_survives_many_commits() {
    // Blocks of a live snapshot must not be reused even after more than N
    // commits, on a device small enough that reuse would happen otherwise.
    let dev: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::new(4096, 300).unwrap());
    let fs = Fs::format(
        dev,
        &FormatOptions {
            root_slots: 2,
            ..Default::default()
        },
    )
    .unwrap();
    fs.create("f")
        .unwrap()
        .write_at(0, &[7u8; 100_000])
        .unwrap();
    fs.commit().unwrap();
    let old = fs.snapshot();
    let mut commits = 0;
    for i in 0..20u8 {
        let f = fs.open_file("f").unwrap();
        if f.write_at(0, &vec![i; 100_000]).is_err() {
            fs.abort().unwrap();
            continue;
        }
        if fs.commit().is_ok() {
            commits += 1;
        } else {
            fs.abort().unwrap();
        }
    }
    assert!(commits >= 2, "only {commits} commits");
    assert!(old.read_to_vec("f").unwrap().iter().all(|&b| b == 7));
}
