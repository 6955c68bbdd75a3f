//! Helpers shared by the notafs-core benchmarks.
#![allow(dead_code)]

pub mod peers;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use notafs_blockdev::{BlockDevice, Geometry, Result as BResult, WriteReq};

/// Counts bytes written and flushes (flush, barrier, FUA writes) through it.
pub struct Counting<D> {
    pub inner: D,
    pub written: AtomicU64,
    pub flushes: AtomicU64,
}

impl<D> Counting<D> {
    pub fn new(inner: D) -> Self {
        Counting {
            inner,
            written: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }
    /// (bytes written, flushes) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.flushes.load(Ordering::Relaxed),
        )
    }
}

impl<D: BlockDevice> BlockDevice for Counting<D> {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn read(&self, b: u64, buf: &mut [u8]) -> BResult<()> {
        self.inner.read(b, buf)
    }
    fn read_batch(&self, r: &mut [(u64, &mut [u8])]) -> BResult<()> {
        self.inner.read_batch(r)
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
    fn write_fua(&self, b: u64, d: &[u8]) -> BResult<()> {
        self.written.fetch_add(d.len() as u64, Ordering::Relaxed);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.inner.write_fua(b, d)
    }
    fn has_fua(&self) -> bool {
        self.inner.has_fua()
    }
    fn write_zeroes(&self, b: u64, c: u64) -> BResult<()> {
        self.inner.write_zeroes(b, c)
    }
    fn discard(&self, b: u64, c: u64) -> BResult<()> {
        self.inner.discard(b, c)
    }
    fn flush(&self) -> BResult<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.inner.flush()
    }
    fn barrier(&self) -> BResult<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.inner.barrier()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Drop the page cache (root only); false when not allowed.
pub fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Allocate `bytes` for `path` as a partition would be; without fallocate,
/// a sparse file (the host filesystem then allocates during the run, for
/// every contender alike).
pub fn preallocate(path: &str, bytes: u64) {
    let st = Command::new("fallocate")
        .args(["-l", &bytes.to_string(), path])
        .status();
    if !st.is_ok_and(|s| s.success()) {
        let f = std::fs::File::create(path).expect("create image");
        f.set_len(bytes).expect("size image");
    }
}

/// Reset the process's peak RSS (Linux: clear_refs 5).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak RSS of this process in MiB (VmHWM).
pub fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| k / 1024.0)
        .unwrap_or(0.0)
}
