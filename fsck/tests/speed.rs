//! Speed of fsck.notafs on a 10 GiB sparse image holding a dozen files
//! (about 3 GiB of real data). Ignored by default (it writes 3 GiB):
//!
//! ```text
//! NOTAFS_SPEED_IMAGE=/work/tgt/speed.img cargo test --release -p fsck --test speed -- --ignored --nocapture
//! ```
//! The image is built once and reused; then `fsck.notafs -n` (metadata only)
//! and `fsck.notafs -n --verify-data --direct` are timed, and
//! `dd iflag=direct` of the same image for the device bandwidth.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use notafs_blockdev::file::FileDevice;
use notafs_core::{FormatOptions, Fs};

const SIZE: u64 = 10 << 30;
const FILES: usize = 12;
const FILE_BYTES: u64 = 256 << 20;

fn build(path: &str) {
    let dev = Arc::new(FileDevice::create(path, SIZE).unwrap());
    let fs = Fs::format(dev, &FormatOptions::default()).unwrap();
    let chunk: Vec<u8> = common::pattern(7, 8 << 20);
    for i in 0..FILES {
        let f = fs.create(&format!("file{i:02}")).unwrap();
        let mut off = 0;
        while off < FILE_BYTES {
            f.write_at(off, &chunk).unwrap();
            off += chunk.len() as u64;
        }
        fs.commit().unwrap();
    }
}

#[test]
#[ignore]
fn ten_gib_image() {
    let path =
        std::env::var("NOTAFS_SPEED_IMAGE").unwrap_or_else(|_| "/tmp/notafs-speed.img".into());
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(SIZE) {
        let t = Instant::now();
        build(&path);
        println!("built {path} in {:?}", t.elapsed());
    }
    let lim = Duration::from_secs(3600);
    let t = Instant::now();
    let r = common::run_fsck(&["-n", &path], lim);
    let meta = t.elapsed();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    println!("{}", r.stdout.lines().last().unwrap_or(""));
    println!("metadata-only check (fsck -n, whole process): {meta:?}");
    // Metadata only, warm cache, second run.
    let t = Instant::now();
    let r = common::run_fsck(&["-n", &path], lim);
    println!("metadata-only check, second run: {:?}", t.elapsed());
    assert_eq!(r.code, 0);
    let data = (FILES as u64 * FILE_BYTES) as f64;
    for direct in [true, false] {
        let mut args = vec!["-n", "--verify-data", "-v"];
        if direct {
            args.push("--direct");
        }
        args.push(&path);
        let t = Instant::now();
        let r = common::run_fsck(&args, lim);
        let s = t.elapsed().as_secs_f64();
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        println!(
            "--verify-data{}: {:.2} s, {:.0} MiB/s of file data",
            if direct { " --direct" } else { "" },
            s,
            data / s / (1 << 20) as f64
        );
    }
    let t = Instant::now();
    let out = std::process::Command::new("dd")
        .args([
            &format!("if={path}"),
            "of=/dev/null",
            "bs=1M",
            "iflag=direct",
            &format!("count={}", FILES as u64 * FILE_BYTES / (1 << 20) + 64),
        ])
        .output()
        .unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "dd iflag=direct of the first {} MiB: {:.2} s, {:.0} MiB/s ({})",
        FILES as u64 * FILE_BYTES / (1 << 20) + 64,
        s,
        (FILES as u64 * FILE_BYTES + (64 << 20)) as f64 / s / (1 << 20) as f64,
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
    );
}
