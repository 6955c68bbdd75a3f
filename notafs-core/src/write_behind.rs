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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use notafs_blockdev::BlockDevice;
use tracing::warn;

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
