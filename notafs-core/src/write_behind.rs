//! Write-behind flushing: a background thread that flushes the device while
//! the writer keeps going, so that the barrier and flush of the next commit
//! find little left to make durable.
//!
//! A flush is always allowed by the block contract (it only makes more
//! things durable sooner), so this changes no crash guarantee: the commit
//! still issues its own barrier and flush. It is on by default; the
//! deterministic crash harness turns it off (it makes the device's
//! operation log depend on timing). The thread is started the first time
//! the threshold is crossed, so the many short-lived handles that never
//! write that much (tools, checks) cost nothing.
//!
//! It only runs on devices whose writes may wait in a host page cache
//! ([`BlockDevice::host_cached_writes`]: buffered image files, loop devices
//! without direct I/O). On O_DIRECT image files and raw block devices a
//! completed write is already at the device, whose own cache drains without
//! being asked: an early flush there only makes the writes issued meanwhile
//! wait behind it (append bench, O_DIRECT image and direct-I/O loop device:
//! 1 MiB writes overlapping a background flush took a median 14 ms instead
//! of 1.8; docs/BENCHMARKS.md). The commit's own flush is unaffected.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use notafs_blockdev::BlockDevice;
use tracing::{debug, warn};

struct State {
    pending: u64,
    requested: bool,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

/// The flusher thread and what the writer uses to wake it.
pub(crate) struct WriteBehind {
    shared: Arc<Shared>,
    threshold: u64,
    dev: Arc<dyn BlockDevice>,
    failed: Arc<AtomicBool>,
    /// The device's writes may wait in a host cache: the only case where
    /// flushing early does anything but stall writes. Otherwise `written`
    /// does nothing and no thread is ever started.
    active: bool,
    /// Started on the first crossing of the threshold.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl WriteBehind {
    /// A flusher for `dev` that flushes after every `threshold` bytes
    /// written; a failed flush sets `failed` (the filesystem then refuses
    /// writes, as after any failed flush). No thread runs yet.
    pub fn start(
        dev: Arc<dyn BlockDevice>,
        threshold: u64,
        failed: Arc<AtomicBool>,
    ) -> WriteBehind {
        let active = dev.host_cached_writes();
        if !active {
            debug!(
                device = %dev.describe(),
                "write-behind off: writes reach the device uncached, commits flush"
            );
        }
        WriteBehind {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    pending: 0,
                    requested: false,
                    stop: false,
                }),
                cond: Condvar::new(),
            }),
            threshold: threshold.max(1),
            dev,
            failed,
            active,
            thread: Mutex::new(None),
        }
    }

    fn spawn(&self) -> Option<JoinHandle<()>> {
        let s = self.shared.clone();
        let dev = self.dev.clone();
        let failed = self.failed.clone();
        let r = std::thread::Builder::new()
            .name("notafs-write-behind".into())
            .spawn(move || loop {
                {
                    let mut g = s.state.lock().unwrap_or_else(|e| e.into_inner());
                    while !g.requested && !g.stop {
                        g = s.cond.wait(g).unwrap_or_else(|e| e.into_inner());
                    }
                    if g.stop {
                        return;
                    }
                    g.requested = false;
                }
                if let Err(e) = dev.flush() {
                    warn!("background flush failed: {e}; refusing further writes");
                    failed.store(true, Ordering::SeqCst);
                }
            });
        match r {
            Ok(t) => Some(t),
            Err(e) => {
                // Only slower commits: the commit flushes anyway.
                warn!("could not start the write-behind thread: {e}");
                None
            }
        }
    }

    /// Account `bytes` just written; wake the flusher past the threshold.
    pub fn written(&self, bytes: u64) {
        if !self.active {
            return;
        }
        let wake = {
            let mut g = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            g.pending += bytes;
            if g.pending >= self.threshold {
                g.pending = 0;
                g.requested = true;
                self.shared.cond.notify_one();
                true
            } else {
                false
            }
        };
        if wake {
            let mut t = self.thread.lock().unwrap_or_else(|e| e.into_inner());
            if t.is_none() {
                *t = self.spawn();
            }
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        {
            let mut g = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            g.stop = true;
            self.shared.cond.notify_one();
        }
        let t = self
            .thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use notafs_blockdev::memory::MemoryDevice;
    use notafs_blockdev::{BlockDevice, Geometry, Result};

    use super::WriteBehind;

    /// A memory device that counts flushes and says whether its writes are
    /// host-cached as told.
    struct Dev {
        inner: MemoryDevice,
        cached: bool,
        flushes: AtomicU64,
    }

    impl BlockDevice for Dev {
        fn geometry(&self) -> Geometry {
            self.inner.geometry()
        }
        fn read(&self, block: u64, buf: &mut [u8]) -> Result<()> {
            self.inner.read(block, buf)
        }
        fn write(&self, block: u64, data: &[u8]) -> Result<()> {
            self.inner.write(block, data)
        }
        fn write_zeroes(&self, block: u64, count: u64) -> Result<()> {
            self.inner.write_zeroes(block, count)
        }
        fn discard(&self, block: u64, count: u64) -> Result<()> {
            self.inner.discard(block, count)
        }
        fn flush(&self) -> Result<()> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            self.inner.flush()
        }
        fn host_cached_writes(&self) -> bool {
            self.cached
        }
    }

    /// Flushes seen within `wait` after announcing 40 thresholds' worth.
    fn flushes_after_writes(cached: bool, wait: Duration) -> u64 {
        let dev = Arc::new(Dev {
            inner: MemoryDevice::new(4096, 64).unwrap(),
            cached,
            flushes: AtomicU64::new(0),
        });
        let wb = WriteBehind::start(dev.clone(), 1 << 20, Arc::new(AtomicBool::new(false)));
        for _ in 0..40 {
            wb.written(1 << 20);
        }
        let t = Instant::now();
        while dev.flushes.load(Ordering::SeqCst) == 0 && t.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(wb);
        dev.flushes.load(Ordering::SeqCst)
    }

    /// Background flushes happen on a device whose writes may sit in a
    /// host cache, and never on one whose writes reach the device at
    /// completion (O_DIRECT, raw devices), where they only stall writes.
    #[test]
    fn background_flushes_only_for_host_cached_writes() {
        assert!(
            flushes_after_writes(true, Duration::from_secs(10)) > 0,
            "host-cached device: no background flush"
        );
        assert_eq!(
            flushes_after_writes(false, Duration::from_millis(300)),
            0,
            "uncached device: background flush issued"
        );
    }
}
