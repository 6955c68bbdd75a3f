//! notafs-rsswriter IMAGE BYTES COMMIT_EVERY [WRITE_SIZE]: the writer
//! process of the bounded-memory test (`tests/tests/memory.rs`). Opens the
//! formatted IMAGE with a 32 MiB cache, appends BYTES bytes of pseudo-random
//! data to the new file `big` in WRITE_SIZE writes (default 1 MiB), commits
//! every COMMIT_EVERY bytes (0: once, at the end) and prints one line of
//! figures:
//! `bytes B secs S hwm_kib H rss_kib R hwm_open_kib O generation G`,
//! where H is the peak resident set (VmHWM) of the whole run and O the
//! peak before the first write.
//!
//! The byte at offset `p` of the file is a function of `p` alone ([`fill`]),
//! so the test can verify any sampled range afterwards.
//!
//! With `NOTAFS_RSSWRITER_HOLD=1` the writer also keeps a copy of every
//! write in memory: the control that shows the measurement sees growth.
use std::sync::Arc;
use std::time::Instant;

use notafs_blockdev::file::{FileDevice, FileOptions};
use notafs_core::{Fs, OpenOptions};

/// Bytes per write by default.
pub const CHUNK: usize = 1 << 20;
/// The cache the writer opens the filesystem with.
pub const CACHE_BYTES: usize = 32 << 20;

/// Fill `buf` with the file content at offset `off`: 8-byte words of a
/// stateless 64-bit mix of the word index (so offsets 4 GiB apart differ).
pub fn fill(off: u64, buf: &mut [u8]) {
    let mut p = off;
    let end = off + buf.len() as u64;
    while p < end {
        let w = p / 8;
        let mut z = w.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let v = z.to_le_bytes();
        let lo = (p - w * 8) as usize;
        let n = (8 - lo).min((end - p) as usize);
        let at = (p - off) as usize;
        buf[at..at + n].copy_from_slice(&v[lo..lo + n]);
        p += n as u64;
    }
}

/// A field of /proc/self/status, in KiB.
pub fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !(4..=5).contains(&args.len()) {
        eprintln!("usage: notafs-rsswriter IMAGE BYTES COMMIT_EVERY [WRITE_SIZE]");
        std::process::exit(2);
    }
    let bytes: u64 = args[2].parse().expect("BYTES");
    let every: u64 = args[3].parse().expect("COMMIT_EVERY");
    let write_size: usize = args
        .get(4)
        .map_or(CHUNK, |s| s.parse().expect("WRITE_SIZE"));
    assert!(write_size > 0, "WRITE_SIZE must be positive");
    let hold = std::env::var_os("NOTAFS_RSSWRITER_HOLD").is_some_and(|v| v == "1");
    let mut held: Vec<Vec<u8>> = Vec::new();
    let dev = FileDevice::open(&args[1], &FileOptions::default()).expect("open image");
    let fs = Fs::open(
        Arc::new(dev),
        &OpenOptions {
            cache_bytes: CACHE_BYTES,
            ..OpenOptions::default()
        },
    )
    .expect("open filesystem");
    let f = fs.create("big").expect("create big");
    let mut buf = vec![0u8; write_size];
    let hwm_open = status_kib("VmHWM");
    let start = Instant::now();
    let mut done = 0u64;
    let mut since_commit = 0u64;
    while done < bytes {
        let n = (bytes - done).min(write_size as u64) as usize;
        fill(done, &mut buf[..n]);
        let at = f.append(&buf[..n]).expect("append");
        assert_eq!(at, done, "append landed at the wrong offset");
        if hold {
            held.push(buf[..n].to_vec());
        }
        done += n as u64;
        since_commit += n as u64;
        if every > 0 && since_commit >= every {
            fs.commit().expect("commit");
            since_commit = 0;
        }
    }
    fs.commit().expect("final commit");
    // Close as a user would (seals a one-flush commit: one more generation).
    fs.close().expect("close");
    let generation = fs.generation();
    let secs = start.elapsed().as_secs_f64();
    // Touch what was held so it cannot be optimised away.
    let held_bytes: usize = held.iter().map(|v| v.len()).sum();
    std::hint::black_box(held_bytes);
    println!(
        "bytes {bytes} secs {secs:.3} hwm_kib {} rss_kib {} hwm_open_kib {hwm_open} generation {generation}",
        status_kib("VmHWM"),
        status_kib("VmRSS"),
    );
}
