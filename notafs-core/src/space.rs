//! Space held for older generations: released when no retained
//! generation or snapshot can reference it, and given back early (the
//! oldest generations dropped, their slots wiped first) when space runs
//! out, so that deleting frees space at the next commit.
use std::sync::atomic::Ordering;

use tracing::{debug, warn};

use crate::fs::Fs;
use crate::txn::Txn;
use crate::Result;

impl Fs {
    /// Make pending blocks reusable once no retained generation and no
    /// live snapshot can reference them.
    pub(crate) fn release(&self, t: &mut Txn) -> Result<()> {
        let g = self.generation();
        let normal = (g + 1).saturating_sub(self.inner.sb.ring_slots as u64);
        // Space pressure after a commit: fewer than 1/16 of the data blocks
        // free while older generations hold freed blocks. Keep only the
        // newest generation (see `reclaim`).
        let layout = &self.inner.io.layout;
        let data = layout.data_end - layout.data_start;
        let upto = if t.alloc.free.total() < data / 16 && self.held_for_old(t) > 0 {
            g
        } else {
            normal
        };
        self.release_upto(t, upto)
    }

    /// Blocks pending for generations older than the newest committed one.
    pub(crate) fn held_for_old(&self, t: &Txn) -> u64 {
        let g = self.generation();
        t.alloc.pending.range(..=g).map(|(_, s)| s.total()).sum()
    }

    /// Out of space: give up every retained generation but the newest
    /// committed one (wiping their slots durably first), so that blocks
    /// freed by committed removals and overwrites become reusable now, as
    /// on ext4, instead of N commits later. Returns whether anything was
    /// released. Snapshots still pin what they read.
    pub(crate) fn reclaim(&self, t: &mut Txn) -> Result<bool> {
        if self.inner.read_only || self.held_for_old(t) == 0 {
            return Ok(false);
        }
        let before = t.alloc.free.total();
        self.release_upto(t, self.generation())?;
        Ok(t.alloc.free.total() > before)
    }

    pub(crate) fn release_upto(&self, t: &mut Txn, upto: u64) -> Result<()> {
        let g = self.generation();
        let normal = (g + 1).saturating_sub(self.inner.sb.ring_slots as u64);
        let mut upto = upto.min(g).max(normal);
        let pins = self.inner.pins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((&min, _)) = pins.iter().next() {
            upto = upto.min(min);
        }
        drop(pins);
        if upto > normal {
            // Wipe the dropped generations' slots, durably, before any of
            // their blocks can be reused: a slot must never name blocks
            // that were overwritten.
            let sb = &self.inner.sb;
            let first = normal
                .max(self.inner.dropped_below.load(Ordering::SeqCst))
                .max(1);
            if first < upto {
                for old in first..upto {
                    let w = self.inner.dev.write(
                        crate::root_ring::slot_address(sb, old),
                        &vec![0u8; sb.block_size as usize],
                    );
                    if let Err(e) = w {
                        return self.fail(e.into());
                    }
                }
                if let Err(e) = self.inner.dev.flush() {
                    return self.fail(e.into());
                }
                warn!(
                    kept = g,
                    "space is short: dropped generations {first}..={} early so that freed \
                     blocks can be reused (generation {g} and newer are retained)",
                    upto - 1
                );
                self.inner.dropped_below.store(upto, Ordering::SeqCst);
            }
        }
        let released = t.alloc.release(upto)?;
        if self.inner.discard {
            // A hint on blocks no retained root references: whatever the
            // device does with them (nothing, zeros, garbage) is harmless.
            for (s, l) in released {
                if let Err(e) = self.inner.dev.discard(s, l) {
                    debug!("discard of {s}+{l} failed: {e}");
                }
            }
        }
        Ok(())
    }
}
