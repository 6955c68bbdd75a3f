//! Core benchmark (not a test): append a large file in 1 MiB writes with a
//! commit every 64 MiB, then read it back sequentially, on an image file,
//! and compare with raw sequential I/O measured by `dd` on the same
//! filesystem in the same run. Also reports write amplification (device
//! bytes written / file bytes) and peak RSS.
//!
//! Run: `cargo bench -p notafs-core --bench append`
//! Env: NOTAFS_BENCH_MB (default 1024), NOTAFS_BENCH_DIR (default /var/tmp).
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use notafs_blockdev::{BlockDevice, Geometry, Result as BResult, WriteReq};
use notafs_core::{FormatOptions, Fs, OpenOptions};

/// Counts bytes written through it.
struct Counting<D> {
    inner: D,
    written: AtomicU64,
}

impl<D: BlockDevice> BlockDevice for Counting<D> {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn read(&self, b: u64, buf: &mut [u8]) -> BResult<()> {
        self.inner.read(b, buf)
    }
    fn write(&self, b: u64, d: &[u8]) -> BResult<()> {
        self.written.fetch_add(d.len() as u64, Ordering::Relaxed);
        self.inner.write(b, d)
    }
    fn write_batch(&self, w: &[WriteReq<'_>]) -> BResult<()> {
        for r in w {
            self.written
                .fetch_add(r.data.len() as u64, Ordering::Relaxed);
        }
        self.inner.write_batch(w)
    }
    fn write_zeroes(&self, b: u64, c: u64) -> BResult<()> {
        self.inner.write_zeroes(b, c)
    }
    fn discard(&self, b: u64, c: u64) -> BResult<()> {
        self.inner.discard(b, c)
    }
    fn flush(&self) -> BResult<()> {
        self.inner.flush()
    }
    fn barrier(&self) -> BResult<()> {
        self.inner.barrier()
    }
}

fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn dd(args: &[&str]) -> f64 {
    let t = Instant::now();
    let st = Command::new("dd")
        .args(args)
        .arg("status=none")
        .status()
        .expect("dd");
    assert!(st.success(), "dd {args:?} failed");
    t.elapsed().as_secs_f64()
}

fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| k / 1024.0)
        .unwrap_or(0.0)
}

fn main() {
    let mb: u64 = std::env::var("NOTAFS_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let dir = std::env::var("NOTAFS_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let raw = format!("{dir}/notafs-bench-raw.img");
    let img = format!("{dir}/notafs-bench.img");
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&img);

    // Raw limit: the same amount, 1 MiB writes, buffered + fdatasync (the
    // image-file backend's mode), then a cold sequential read.
    let count = format!("count={mb}");
    let raw_w = dd(&[
        "if=/dev/zero",
        &format!("of={raw}"),
        "bs=1M",
        &count,
        "conv=fdatasync",
    ]);
    let cold = drop_caches();
    let raw_r = dd(&[&format!("if={raw}"), "of=/dev/null", "bs=1M"]);
    let _ = std::fs::remove_file(&raw);

    // notafs on an image file of twice the size.
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(mb * 2 * 1048576 + 64 * 1048576).unwrap();
    drop(f);
    let dev =
        notafs_blockdev::open(&img, &notafs_blockdev::OpenOptions::default()).expect("open image");
    let dev: Arc<Counting<Box<dyn BlockDevice>>> = Arc::new(Counting {
        inner: dev,
        written: AtomicU64::new(0),
    });
    let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
    let before = dev.written.load(Ordering::Relaxed);
    let chunk: Vec<u8> = (0..1048576u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let t = Instant::now();
    let file = fs.create("store.0.suffix").unwrap();
    for i in 0..mb {
        file.append(&chunk).unwrap();
        if (i + 1) % 64 == 0 {
            fs.commit().unwrap();
        }
    }
    fs.commit().unwrap();
    let nf_w = t.elapsed().as_secs_f64();
    let written = dev.written.load(Ordering::Relaxed) - before;
    drop(file);
    drop(fs);

    drop_caches();
    let fs = Fs::open(
        dev.clone(),
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let snap = fs.snapshot();
    let f = snap.open("store.0.suffix").unwrap();
    let mut buf = vec![0u8; 1048576];
    let t = Instant::now();
    let mut off = 0;
    while off < f.len() {
        let n = f.read_at(off, &mut buf).unwrap();
        off += n as u64;
    }
    let nf_r = t.elapsed().as_secs_f64();
    assert_eq!(off, mb * 1048576);
    let _ = std::fs::remove_file(&img);

    let mbs = |s: f64| mb as f64 / s;
    println!("notafs-core append/read benchmark, {mb} MiB, dir {dir}, page cache dropped: {cold}");
    println!(
        "raw dd write (1 MiB, fdatasync):   {:8.1} MiB/s",
        mbs(raw_w)
    );
    println!(
        "notafs append (1 MiB, commit/64M): {:8.1} MiB/s  ratio {:.2}",
        mbs(nf_w),
        raw_w / nf_w
    );
    println!(
        "raw dd read (1 MiB):               {:8.1} MiB/s",
        mbs(raw_r)
    );
    println!(
        "notafs sequential read (1 MiB):    {:8.1} MiB/s  ratio {:.2}",
        mbs(nf_r),
        raw_r / nf_r
    );
    println!(
        "write amplification: {:.4} (device bytes {} / file bytes {})",
        written as f64 / (mb * 1048576) as f64,
        written,
        mb * 1048576
    );
    println!(
        "peak RSS: {:.1} MiB (cache {} MiB)",
        peak_rss_mb(),
        notafs_core::DEFAULT_CACHE_BYTES >> 20
    );
}
