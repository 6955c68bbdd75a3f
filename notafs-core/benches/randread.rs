//! Random 4 KiB reads (issue 10): notafs on an O_DIRECT image file against
//! raw O_DIRECT preads of the same device, at 1, 4 and 16 concurrent
//! readers (threads), best of several rounds; then the same with a hot set
//! that fits in the data cache.
//!
//!     cargo bench -p notafs-core --bench randread
//!
//! Env: NOTAFS_BENCH_MB (file size, 1024), NOTAFS_BENCH_ROUNDS (3),
//! NOTAFS_BENCH_DIR (/var/tmp), NOTAFS_BENCH_READS (reads per reader per
//! round, 20000), NOTAFS_BENCH_HOT_MB (hot set, 4).
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::time::Instant;

use notafs_blockdev::file::{FileDevice, FileOptions};
use notafs_core::{FormatOptions, Fs, OpenOptions};

mod common;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift: cheap, seeded, identical for every contender.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// IOPS of `threads` readers each doing `reads` reads of 4 KiB at random
/// block-aligned offsets below `span` bytes.
fn run(threads: usize, reads: u64, span: u64, read: &(dyn Fn(u64, &mut [u8]) + Sync)) -> f64 {
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        for t in 0..threads {
            sc.spawn(move || {
                let mut buf = AlignedBuf::new();
                let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                for _ in 0..reads {
                    let off = (next(&mut s) % (span / 4096)) * 4096;
                    read(off, buf.as_mut());
                }
            });
        }
    });
    (threads as u64 * reads) as f64 / t0.elapsed().as_secs_f64()
}

/// A 4 KiB buffer aligned for O_DIRECT.
struct AlignedBuf(Vec<u8>, usize);
impl AlignedBuf {
    fn new() -> Self {
        let v = vec![0u8; 8192];
        let at = v.as_ptr().align_offset(4096);
        AlignedBuf(v, at)
    }
    fn as_mut(&mut self) -> &mut [u8] {
        let at = self.1;
        &mut self.0[at..at + 4096]
    }
}

fn main() {
    let mb = env("NOTAFS_BENCH_MB", 1024);
    let rounds = env("NOTAFS_BENCH_ROUNDS", 3);
    let reads = env("NOTAFS_BENCH_READS", 20000);
    let hot_mb = env("NOTAFS_BENCH_HOT_MB", 4);
    let dir = std::env::var("NOTAFS_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let path = format!("{dir}/notafs-randread-{}.img", std::process::id());
    let size = mb << 20;
    common::preallocate(&path, size + (size / 4) + (64 << 20));
    let open = || {
        Arc::new(
            FileDevice::open(
                std::path::Path::new(&path),
                &FileOptions {
                    direct: true,
                    ..Default::default()
                },
            )
            .expect("open image"),
        )
    };
    {
        let fs = Fs::format(open(), &FormatOptions::default()).expect("format");
        let f = fs.create("data").expect("create");
        let chunk: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
        let mut off = 0;
        while off < size {
            f.write_at(off, &chunk).expect("write");
            off += chunk.len() as u64;
        }
        fs.commit().expect("commit");
    }
    let raw = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .expect("open raw");
    let fs = Fs::open(
        open(),
        &OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .expect("open fs");
    let snap = fs.snapshot();
    let file = snap.open("data").expect("open file");
    // Raw reads land on the data area of the image: the same device region
    // notafs reads from (its file is laid out contiguously after format).
    let raw_read = |off: u64, b: &mut [u8]| {
        raw.read_exact_at(b, off + (16 << 20)).expect("pread");
    };
    let fs_read = |off: u64, b: &mut [u8]| {
        assert_eq!(file.read_at(off, b).expect("read"), b.len());
    };
    println!(
        "random 4 KiB reads, O_DIRECT image of {} MiB on {dir}, {reads} reads per reader, best of {rounds}",
        mb
    );
    println!(
        "{:<34} {:>10} {:>10} {:>7}",
        "workload", "raw IOPS", "notafs", "ratio"
    );
    for (label, span) in [("whole file", size), ("hot set", hot_mb << 20)] {
        for threads in [1usize, 4, 16] {
            let (mut best_raw, mut best_fs) = (0f64, 0f64);
            for r in 0..rounds {
                // Alternate who goes first (the machine is shared).
                if r % 2 == 0 {
                    best_raw = best_raw.max(run(threads, reads, span, &raw_read));
                    best_fs = best_fs.max(run(threads, reads, span, &fs_read));
                } else {
                    best_fs = best_fs.max(run(threads, reads, span, &fs_read));
                    best_raw = best_raw.max(run(threads, reads, span, &raw_read));
                }
            }
            println!(
                "{:<34} {:>10.0} {:>10.0} {:>7.2}",
                format!("{label}, {threads} readers"),
                best_raw,
                best_fs,
                best_fs / best_raw
            );
        }
    }
    drop(file);
    drop(snap);
    drop(fs);
    let _ = std::fs::remove_file(&path);
}
