//! A fault-injecting wrapper over any [`BlockDevice`], deterministic from a
//! seed: the same seed, configuration and sequence of operations give the
//! same faults.
//!
//! Faults:
//! * EIO on exactly the Nth read / write / flush / operation of any kind
//!   (counting from 1 since creation or [`FaultDevice::reset_counters`]);
//! * EIO with a probability per operation kind;
//! * a bit flip in the data returned by a read, with a probability;
//! * lost writes: the write reports success but is silently dropped.
//!
//! What counts as what: `write_zeroes`, each write of a `write_batch` and a
//! native `write_fua` count as writes (an emulated `write_fua` as a write
//! and a flush); `barrier` counts as a flush; discards are counted and can
//! only fail through `fail_op_at` (a hint seldom fails on real devices).
//! An injected EIO happens *before* the inner device is touched, which is one
//! of the outcomes the contract allows for a failed write ("range undefined").
//!
//! The configuration sits behind a mutex so a test can arm a fault mid-run.
use std::io;
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{BlockDevice, BlockError, Geometry, Result, WriteReq};

/// What to inject. `Default` injects nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Fail the Nth read (1-based) with EIO.
    pub fail_read_at: Option<u64>,
    /// Fail the Nth write (1-based) with EIO.
    pub fail_write_at: Option<u64>,
    /// Fail the Nth flush or barrier (1-based) with EIO.
    pub fail_flush_at: Option<u64>,
    /// Fail the Nth operation of any kind (1-based) with EIO.
    pub fail_op_at: Option<u64>,
    /// Probability in 0..=1 that a read fails with EIO.
    pub read_error_rate: f64,
    /// Probability that a write fails with EIO.
    pub write_error_rate: f64,
    /// Probability that a flush or barrier fails with EIO.
    pub flush_error_rate: f64,
    /// Probability that a successful read has one random bit flipped.
    pub bit_flip_rate: f64,
    /// Probability that a write reports Ok but is dropped.
    pub lost_write_rate: f64,
}

/// Operation counters and injected-fault counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    /// All operations (reads + writes + flushes + discards).
    pub ops: u64,
    pub injected_errors: u64,
    pub bit_flips: u64,
    pub lost_writes: u64,
}

/// One injected fault, in the order they happened (for determinism checks
/// and to tell a test what went wrong).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultEvent {
    /// EIO returned by operation number `op` (in [`FaultStats::ops`] numbering).
    Error { op: u64, kind: OpKind },
    /// Bit `bit` of the buffer returned by operation `op` was flipped.
    BitFlip { op: u64, bit: u64 },
    /// The write of operation `op` at `block` was dropped.
    LostWrite { op: u64, block: u64 },
}

/// Kinds of operations, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write,
    Flush,
    Discard,
}

struct State {
    cfg: FaultConfig,
    rng: StdRng,
    stats: FaultStats,
    events: Vec<FaultEvent>,
}

/// Most events kept in the log (the counters keep counting past it).
const MAX_EVENTS: usize = 1 << 16;

/// The fault-injecting wrapper.
pub struct FaultDevice<D: BlockDevice> {
    inner: D,
    state: Mutex<State>,
}

/// What to do with an operation, decided under the lock.
enum Verdict {
    Fail,
    Pass,
    /// Reads: pass, then flip this bit of the buffer (index drawn later).
    Flip(u64),
    /// Writes: report Ok without writing.
    Drop,
}

impl<D: BlockDevice> FaultDevice<D> {
    /// Wrap `inner`; all randomness comes from `seed`.
    pub fn new(inner: D, seed: u64, cfg: FaultConfig) -> Self {
        FaultDevice {
            inner,
            state: Mutex::new(State {
                cfg,
                rng: StdRng::seed_from_u64(seed),
                stats: FaultStats::default(),
                events: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Unwrap.
    pub fn into_inner(self) -> D {
        self.inner
    }

    /// The current configuration.
    pub fn config(&self) -> FaultConfig {
        self.lock().cfg.clone()
    }

    /// Replace the configuration (counters and random stream continue).
    pub fn set_config(&self, cfg: FaultConfig) {
        self.lock().cfg = cfg;
    }

    /// Change the configuration in place, e.g.
    /// `dev.configure(|c| c.fail_write_at = Some(7))`.
    pub fn configure(&self, f: impl FnOnce(&mut FaultConfig)) {
        f(&mut self.lock().cfg);
    }

    /// Fail the `n`th write from now (n = 1: the next write).
    pub fn fail_next_write(&self, n: u64) {
        let mut s = self.lock();
        s.cfg.fail_write_at = Some(s.stats.writes + n);
    }

    /// Fail the `n`th read from now.
    pub fn fail_next_read(&self, n: u64) {
        let mut s = self.lock();
        s.cfg.fail_read_at = Some(s.stats.reads + n);
    }

    /// Fail the `n`th flush or barrier from now.
    pub fn fail_next_flush(&self, n: u64) {
        let mut s = self.lock();
        s.cfg.fail_flush_at = Some(s.stats.flushes + n);
    }

    /// Restart the random stream from `seed`.
    pub fn reseed(&self, seed: u64) {
        self.lock().rng = StdRng::seed_from_u64(seed);
    }

    /// Counters so far.
    pub fn stats(&self) -> FaultStats {
        self.lock().stats
    }

    /// Injected faults so far, oldest first.
    pub fn events(&self) -> Vec<FaultEvent> {
        self.lock().events.clone()
    }

    /// Zero the counters and forget the event log (the `*_at` positions count
    /// from here on).
    pub fn reset_counters(&self) {
        let mut s = self.lock();
        s.stats = FaultStats::default();
        s.events.clear();
    }

    /// Count one operation and decide its fate. `bits` is the size of a read
    /// buffer in bits (for choosing the bit to flip).
    fn decide(&self, kind: OpKind, block: u64, bits: u64) -> Verdict {
        let mut guard = self.lock();
        let s = &mut *guard;
        s.stats.ops += 1;
        let op = s.stats.ops;
        let (nth, at, rate) = match kind {
            OpKind::Read => {
                s.stats.reads += 1;
                (s.stats.reads, s.cfg.fail_read_at, s.cfg.read_error_rate)
            }
            OpKind::Write => {
                s.stats.writes += 1;
                (s.stats.writes, s.cfg.fail_write_at, s.cfg.write_error_rate)
            }
            OpKind::Flush => {
                s.stats.flushes += 1;
                (s.stats.flushes, s.cfg.fail_flush_at, s.cfg.flush_error_rate)
            }
            OpKind::Discard => {
                s.stats.discards += 1;
                (s.stats.discards, None, 0.0)
            }
        };
        // Draw from the stream only for armed rates, so that arming one kind
        // of fault does not shift the others' sequence more than necessary.
        let fail = at == Some(nth)
            || s.cfg.fail_op_at == Some(op)
            || (rate > 0.0 && s.rng.gen_bool(rate.min(1.0)));
        let push = |s: &mut State, e: FaultEvent| {
            if s.events.len() < MAX_EVENTS {
                s.events.push(e);
            }
        };
        if fail {
            s.stats.injected_errors += 1;
            push(s, FaultEvent::Error { op, kind });
            tracing::debug!(op, ?kind, "fault: injected EIO");
            return Verdict::Fail;
        }
        match kind {
            OpKind::Read if s.cfg.bit_flip_rate > 0.0 && bits > 0 => {
                if s.rng.gen_bool(s.cfg.bit_flip_rate.min(1.0)) {
                    let bit = s.rng.gen_range(0..bits);
                    s.stats.bit_flips += 1;
                    push(s, FaultEvent::BitFlip { op, bit });
                    return Verdict::Flip(bit);
                }
                Verdict::Pass
            }
            OpKind::Write if s.cfg.lost_write_rate > 0.0 => {
                if s.rng.gen_bool(s.cfg.lost_write_rate.min(1.0)) {
                    s.stats.lost_writes += 1;
                    push(s, FaultEvent::LostWrite { op, block });
                    return Verdict::Drop;
                }
                Verdict::Pass
            }
            _ => Verdict::Pass,
        }
    }
}

fn eio(op: &'static str) -> BlockError {
    BlockError::io(op, io::Error::from_raw_os_error(libc::EIO))
}

impl<D: BlockDevice> BlockDevice for FaultDevice<D> {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    fn read(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        // Bad requests are the inner device's to reject; they are not counted
        // so fault positions refer to real I/O only.
        crate::check_io(&self.inner.geometry(), block, buf.len())?;
        match self.decide(OpKind::Read, block, buf.len() as u64 * 8) {
            Verdict::Fail => Err(eio("read")),
            Verdict::Flip(bit) => {
                self.inner.read(block, buf)?;
                buf[(bit / 8) as usize] ^= 1 << (bit % 8);
                Ok(())
            }
            _ => self.inner.read(block, buf),
        }
    }

    fn write(&self, block: u64, data: &[u8]) -> Result<()> {
        crate::check_io(&self.inner.geometry(), block, data.len())?;
        match self.decide(OpKind::Write, block, 0) {
            Verdict::Fail => Err(eio("write")),
            Verdict::Drop => Ok(()),
            _ => self.inner.write(block, data),
        }
    }

    fn write_zeroes(&self, block: u64, count: u64) -> Result<()> {
        crate::check_range(&self.inner.geometry(), block, count)?;
        match self.decide(OpKind::Write, block, 0) {
            Verdict::Fail => Err(eio("write_zeroes")),
            Verdict::Drop => Ok(()),
            _ => self.inner.write_zeroes(block, count),
        }
    }

    fn discard(&self, block: u64, count: u64) -> Result<()> {
        crate::check_range(&self.inner.geometry(), block, count)?;
        match self.decide(OpKind::Discard, block, 0) {
            Verdict::Fail => Err(eio("discard")),
            _ => self.inner.discard(block, count),
        }
    }

    fn flush(&self) -> Result<()> {
        match self.decide(OpKind::Flush, 0, 0) {
            Verdict::Fail => Err(eio("flush")),
            _ => self.inner.flush(),
        }
    }

    fn barrier(&self) -> Result<()> {
        match self.decide(OpKind::Flush, 0, 0) {
            Verdict::Fail => Err(eio("barrier")),
            _ => self.inner.barrier(),
        }
    }

    fn write_fua(&self, block: u64, data: &[u8]) -> Result<()> {
        if !self.inner.has_fua() {
            // Through this wrapper, so the write and the flush are each a
            // fault opportunity, as they would be if the caller did both.
            self.write(block, data)?;
            return self.flush();
        }
        crate::check_io(&self.inner.geometry(), block, data.len())?;
        match self.decide(OpKind::Write, block, 0) {
            Verdict::Fail => Err(eio("write")),
            Verdict::Drop => Ok(()),
            _ => self.inner.write_fua(block, data),
        }
    }

    fn has_fua(&self) -> bool {
        self.inner.has_fua()
    }

    fn host_cached_writes(&self) -> bool {
        self.inner.host_cached_writes()
    }

    fn write_batch(&self, writes: &[WriteReq<'_>]) -> Result<()> {
        // Each write of the batch is its own fault opportunity.
        for w in writes {
            self.write(w.block, w.data)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("fault({})", self.inner.describe())
    }
}
