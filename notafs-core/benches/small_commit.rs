//! Small durable commits: 4 KiB append + commit, the pattern of a pack
//! store's control file and of an fsync-heavy program, against the raw
//! limit measured in the same run on the same device (4 KiB pwrite +
//! fdatasync on a preallocated file), with the commit-log protocol (one
//! flush per commit, the default) and with the barrier protocol (two).
//! Also the write amplification (bytes the filesystem wrote per byte
//! appended). Best of NOTAFS_BENCH_ROUNDS rounds (default 3).
//!
//!     cargo bench -p notafs-core --bench small_commit
//!     NOTAFS_BENCH_DIRECT=1 cargo bench -p notafs-core --bench small_commit
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use notafs_blockdev::file::{FileDevice, FileOptions};
use notafs_core::{FormatOptions, Fs, OpenOptions};

mod common;
use common::{preallocate, Counting};

const IMAGE: u64 = 256 << 20;

fn raw(path: &str, n: usize, direct: bool) -> f64 {
    preallocate(path, IMAGE);
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_DIRECT);
    }
    let f = o.open(path).unwrap();
    // An aligned 4 KiB buffer for O_DIRECT.
    let mut v = vec![0u8; 8192];
    let a = v.as_ptr().align_offset(4096);
    let buf = &mut v[a..a + 4096];
    buf.fill(0x5a);
    let t = Instant::now();
    for i in 0..n {
        f.write_at(buf, (i as u64) * 4096).unwrap();
        f.sync_data().unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn notafs(path: &str, n: usize, direct: bool, log: bool) -> (f64, f64) {
    preallocate(path, IMAGE);
    let dev = FileDevice::open(
        std::path::Path::new(path),
        &FileOptions {
            direct,
            ..Default::default()
        },
    )
    .unwrap();
    let dev = Arc::new(Counting {
        inner: dev,
        written: AtomicU64::new(0),
    });
    drop(Fs::format(dev.clone(), &FormatOptions::default()).unwrap());
    let fs = Fs::open(dev.clone(), &OpenOptions::default()).unwrap();
    fs.set_commit_log(log);
    let f = fs.create("control").unwrap();
    f.append(&[1u8; 4096]).unwrap();
    fs.commit().unwrap();
    let before = dev.written.load(Ordering::Relaxed);
    let rec = vec![0x5au8; 4096];
    let t = Instant::now();
    for _ in 0..n {
        f.append(&rec).unwrap();
        fs.commit().unwrap();
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let wa = (dev.written.load(Ordering::Relaxed) - before) as f64 / (n as f64 * 4096.0);
    drop(f);
    drop(fs);
    (rate, wa)
}

fn main() {
    let rounds: usize = std::env::var("NOTAFS_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let n: usize = std::env::var("NOTAFS_BENCH_COMMITS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let direct = std::env::var("NOTAFS_BENCH_DIRECT").is_ok_and(|v| v == "1");
    let dir = std::env::var("NOTAFS_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let path = format!("{dir}/notafs-small-commit-{}.img", std::process::id());
    let (mut best_raw, mut best_log, mut best_bar) = (0f64, (0f64, 0f64), (0f64, 0f64));
    for _ in 0..rounds {
        best_raw = best_raw.max(raw(&path, n, direct));
        let l = notafs(&path, n, direct, true);
        if l.0 > best_log.0 {
            best_log = l;
        }
        let b = notafs(&path, n, direct, false);
        if b.0 > best_bar.0 {
            best_bar = b;
        }
    }
    let _ = std::fs::remove_file(&path);
    println!(
        "small commits: {n} x (4 KiB append + commit), best of {rounds}, dir {dir}, O_DIRECT: {direct}"
    );
    println!("| contender | commits/s | vs raw | write amplification |");
    println!("|---|---:|---:|---:|");
    println!("| raw 4 KiB pwrite + fdatasync | {best_raw:.0} | 1.00 | 1.0 |");
    println!(
        "| notafs, commit log (default) | {:.0} | {:.2} | {:.1} |",
        best_log.0,
        best_log.0 / best_raw,
        best_log.1
    );
    println!(
        "| notafs, barrier protocol | {:.0} | {:.2} | {:.1} |",
        best_bar.0,
        best_bar.0 / best_raw,
        best_bar.1
    );
}
