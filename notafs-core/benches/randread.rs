//! Random 4 KiB reads (issue 10): notafs on an O_DIRECT image file against
//! raw O_DIRECT preads of the same device, at 1, 4 and 16 concurrent
//! readers (threads), best of several rounds; then the same with a hot set
//! that fits in the data cache.
//!
//!     cargo bench -p notafs-core --bench randread
//!
//! Env: NOTAFS_BENCH_MB (file size, 1024), NOTAFS_BENCH_ROUNDS (3),
//! NOTAFS_BENCH_DIR (/var/tmp), NOTAFS_BENCH_READS (reads per reader per
//! round, 20000), NOTAFS_BENCH_HOT_MB (hot set, 4), NOTAFS_BENCH_THREADS
//! (reader counts, comma-separated, "1,4,16"), NOTAFS_BENCH_ONLY (`raw` or
//! `notafs`: run one contender alone, for profiling it with perf/strace).
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::time::Instant;

use notafs_blockdev::file::{FileDevice, FileOptions};
use notafs_core::{FormatOptions, Fs, OpenOptions};

mod common;

/// First 8 bytes of every block of the benchmark file.
const STAMP: u64 = 0x6e6f_7461_6673_5244;

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
/// block-aligned offsets below `span` bytes, from sequence `seq`. Every run
/// gets its own sequence: the contender going second must not read the very
/// blocks the first one just read (the host may still hold them).
fn run(
    threads: usize,
    reads: u64,
    span: u64,
    seq: u64,
    read: &(dyn Fn(u64, &mut [u8]) + Sync),
) -> f64 {
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        for t in 0..threads {
            sc.spawn(move || {
                let mut buf = AlignedBuf::new();
                let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1) ^ (seq << 32);
                // Mix the seed in before the first offset.
                for _ in 0..4 {
                    next(&mut s);
                }
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

/// NOTAFS_BENCH_CPU=1: the CPU notafs adds per 4 KiB read, without the
/// kernel or a disk: a file on a memory device read through notafs, against
/// reads of random blocks of the same memory device (a 4 KiB copy from
/// memory that is not in the CPU caches, like a DMA'd block).
fn cpu_only(size: u64, reads: u64, rounds: u64) {
    use notafs_blockdev::memory::MemoryDevice;
    use notafs_blockdev::BlockDevice;
    let blocks = size / 4096 + size / 4096 / 4 + 16384;
    let dev = Arc::new(MemoryDevice::new(4096, blocks).expect("memory device"));
    {
        let fs = Fs::format(dev.clone(), &FormatOptions::default()).expect("format");
        let f = fs.create("data").expect("create");
        let chunk: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
        let mut off = 0;
        while off < size {
            f.write_at(off, &chunk).expect("write");
            off += chunk.len() as u64;
        }
        fs.commit().expect("commit");
    }
    let fs = Fs::open(dev.clone(), &OpenOptions::default()).expect("open fs");
    let snap = fs.snapshot();
    let file = snap.open("data").expect("open file");
    let mut buf = AlignedBuf::new();
    let (mut best_dev, mut best_fs) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..rounds {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let t = Instant::now();
        for _ in 0..reads {
            let b = next(&mut s) % (size / 4096);
            dev.read(16384 + b, buf.as_mut()).expect("read");
        }
        best_dev = best_dev.min(t.elapsed().as_nanos() as f64 / reads as f64);
        let t = Instant::now();
        for _ in 0..reads {
            let off = (next(&mut s) % (size / 4096)) * 4096;
            assert_eq!(file.read_at(off, buf.as_mut()).expect("read"), 4096);
        }
        best_fs = best_fs.min(t.elapsed().as_nanos() as f64 / reads as f64);
    }
    println!(
        "memory device, {} MiB file: device read {best_dev:.0} ns, notafs read {best_fs:.0} ns, notafs adds {:.0} ns per 4 KiB read",
        size >> 20,
        best_fs - best_dev
    );
}

fn main() {
    let mb = env("NOTAFS_BENCH_MB", 1024);
    let rounds = env("NOTAFS_BENCH_ROUNDS", 3);
    let reads = env("NOTAFS_BENCH_READS", 20000);
    let hot_mb = env("NOTAFS_BENCH_HOT_MB", 4);
    let thread_counts: Vec<usize> = std::env::var("NOTAFS_BENCH_THREADS")
        .unwrap_or_else(|_| "1,4,16".into())
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    let only = std::env::var("NOTAFS_BENCH_ONLY").unwrap_or_default();
    let (do_raw, do_fs) = (only != "notafs", only != "raw");
    let dir = std::env::var("NOTAFS_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    if std::env::var("NOTAFS_BENCH_CPU").is_ok() {
        cpu_only(mb << 20, reads, rounds);
        return;
    }
    // NOTAFS_BENCH_IMAGE: keep the image at this path and reuse it when it
    // exists (profiling the reads without the write phase).
    let keep = std::env::var("NOTAFS_BENCH_IMAGE").ok();
    let path = keep
        .clone()
        .unwrap_or_else(|| format!("{dir}/notafs-randread-{}.img", std::process::id()));
    let size = mb << 20;
    let reuse = keep.is_some() && std::path::Path::new(&path).exists();
    if !reuse {
        common::preallocate(&path, size + (size / 4) + (64 << 20));
    }
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
    if !reuse {
        let fs = Fs::format(open(), &FormatOptions::default()).expect("format");
        let f = fs.create("data").expect("create");
        let mut chunk: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
        let mut off = 0;
        while off < size {
            // Every block starts with a stamp (magic, file block number), so
            // that the raw contender can find where the file lies.
            for (i, b) in chunk.chunks_mut(4096).enumerate() {
                b[..8].copy_from_slice(&STAMP.to_le_bytes());
                b[8..16].copy_from_slice(&(off / 4096 + i as u64).to_le_bytes());
            }
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
    // Raw reads go to the very blocks notafs reads: the file is written in
    // 8 MiB pieces on an empty filesystem, so it lies contiguously from the
    // block stamped 0 (checked on a sample of blocks below).
    let base = {
        let mut buf = AlignedBuf::new();
        let mut at = 0u64;
        loop {
            raw.read_exact_at(buf.as_mut(), at).expect("scan image");
            let b = buf.as_mut();
            if b[..8] == STAMP.to_le_bytes() && b[8..16] == 0u64.to_le_bytes() {
                break at;
            }
            at += 4096;
            assert!(at < (256 << 20), "file block 0 not found in the image");
        }
    };
    {
        let mut buf = AlignedBuf::new();
        let mut s = 7u64;
        for _ in 0..64 {
            let blk = next(&mut s) % (size / 4096);
            raw.read_exact_at(buf.as_mut(), base + blk * 4096)
                .expect("pread");
            assert_eq!(
                buf.as_mut()[8..16],
                blk.to_le_bytes(),
                "file not contiguous"
            );
        }
    }
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
    let raw_read = |off: u64, b: &mut [u8]| {
        raw.read_exact_at(b, off + base).expect("pread");
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
    if std::env::var("NOTAFS_BENCH_LAT").is_ok() {
        // One reader, raw and notafs reads interleaved one by one (same
        // device state for both), each at its own random offsets:
        // per-read latency percentiles.
        let mut a = AlignedBuf::new();
        let mut b = AlignedBuf::new();
        let mut s = 0x1234_5678_9abc_def1u64;
        let mut s2 = 0x0fed_cba9_8765_4321u64;
        let (mut lr, mut lf) = (Vec::new(), Vec::new());
        // Warm up first: caches full, allocator arenas grown.
        for _ in 0..reads {
            let off = (next(&mut s2) % (size / 4096)) * 4096;
            fs_read(off, b.as_mut());
        }
        for _ in 0..reads {
            let off = (next(&mut s) % (size / 4096)) * 4096;
            let t = Instant::now();
            raw_read(off, a.as_mut());
            let r = t.elapsed();
            let off = (next(&mut s2) % (size / 4096)) * 4096;
            let t = Instant::now();
            fs_read(off, b.as_mut());
            let f = t.elapsed();
            lr.push(r.as_nanos() as u64);
            lf.push(f.as_nanos() as u64);
        }
        lr.sort_unstable();
        lf.sort_unstable();
        let p = |v: &Vec<u64>, q: f64| v[((v.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
        println!(
            "raw    p10 {:.1} p50 {:.1} p90 {:.1} p99 {:.1} us",
            p(&lr, 0.1),
            p(&lr, 0.5),
            p(&lr, 0.9),
            p(&lr, 0.99)
        );
        println!(
            "notafs p10 {:.1} p50 {:.1} p90 {:.1} p99 {:.1} us",
            p(&lf, 0.1),
            p(&lf, 0.5),
            p(&lf, 0.9),
            p(&lf, 0.99)
        );
    }
    let mut workloads = vec![("whole file", size), ("hot set", hot_mb << 20)];
    if std::env::var("NOTAFS_BENCH_LAT").is_ok() {
        workloads.clear();
    }
    // NOTAFS_BENCH_HOT_MB=0: no hot-set rows.
    workloads.retain(|w| w.1 > 0);
    for (label, span) in workloads {
        for &threads in &thread_counts {
            let (mut best_raw, mut best_fs) = (0f64, 0f64);
            for r in 0..rounds {
                // Alternate who goes first (the machine is shared).
                for who in if r % 2 == 0 { [0, 1] } else { [1, 0] } {
                    if who == 0 && do_raw {
                        best_raw = best_raw.max(run(threads, reads, span, 2 * r + 1, &raw_read));
                    } else if who == 1 && do_fs {
                        best_fs = best_fs.max(run(threads, reads, span, 2 * r + 2, &fs_read));
                    }
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
    if keep.is_none() {
        let _ = std::fs::remove_file(&path);
    }
}
