//! Image-file backend: a regular file used as a block device.
//!
//! * read/write: positional `pread`/`pwrite` (std's `FileExt`), looping on
//!   short transfers, so one handle can be shared by many threads.
//! * flush: `fdatasync`. barrier: a flush — a file offers no ordering
//!   primitive cheaper than that (`caps.native_barrier == false`).
//! * discard: `fallocate(PUNCH_HOLE | KEEP_SIZE)`; where the filesystem
//!   cannot punch holes it does nothing (discard is only a hint).
//! * write_zeroes: `fallocate(ZERO_RANGE)`, else `PUNCH_HOLE` (a hole reads as
//!   zeros), else plain writes of zero buffers in chunks of at most 1 MiB.
//! * One writer at a time: a writable open takes an exclusive open file
//!   description lock on the whole file (`F_OFD_SETLK`, non-blocking); a
//!   second writer, in this process or another, gets [`BlockError::Busy`].
//!   Read-only opens take no lock and never block a writer (see `lock.rs`).
//! * Optional `O_DIRECT`: the kernel then needs buffers aligned in memory, so
//!   an unaligned caller buffer goes through an aligned bounce buffer.
//!
//! The device covers `len / B` whole blocks: a trailing partial block of the
//! file is ignored (never read, never written). A file smaller than one block
//! is refused.
//!
//! * write_batch / read_batch: requests sorted by offset, long ones split and
//!   physically adjacent ones merged into vectored requests of at most
//!   1 MiB, then run with up to 64 in flight on io_uring ([`IoEngine::Uring`],
//!   the default where the kernel allows it), else with `pwritev`/`preadv` on
//!   up to 16 threads ([`IoEngine::Threads`]; `NOTAFS_NO_URING=1` forces it;
//!   `NOTAFS_IO_ENGINE=uring|threads|sequential` picks one for measurements).
//!   Single requests stay plain `pread`/`pwrite` (lowest latency).
//!
//! The positional-I/O core ([`PosIo`]) and [`AlignedBuf`] are shared with the
//! raw block-device backend.
use std::alloc::Layout;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

use nix::fcntl::{fallocate, FallocateFlags};

use crate::device::{check_io, check_range};
use crate::uring::{self, Op, Ring};
use crate::{BlockDevice, BlockError, Capabilities, Geometry, Result, WriteReq};

/// Default block size of image files.
pub const DEFAULT_FILE_BLOCK_SIZE: u32 = 4096;

/// Memory alignment used for O_DIRECT buffers. 4096 satisfies every logical
/// sector size up to 4 KiB and the page-alignment some drivers want.
pub const DIRECT_ALIGN: usize = 4096;

/// Largest bounce buffer / zero buffer used per system call. Bounds the memory
/// a huge request can cost; 1 MiB is already enough to reach full bandwidth.
const CHUNK: usize = 1 << 20;

/// Bounce buffers kept for reuse (one per concurrently active caller, up to this).
const POOL_MAX: usize = 4;

/// Largest single request of a batch: longer requests are split, adjacent
/// ones merged up to this, so a batch becomes requests of a size the device
/// handles at full bandwidth, several in flight.
const MAX_OP_BYTES: usize = 1 << 20;

/// Most memory segments merged into one vectored request.
const MAX_OP_SEGS: usize = 256;

/// Bounce memory (O_DIRECT, unaligned caller buffers) one batch may hold at
/// a time; a larger batch runs in groups. One buffer of this size is kept
/// per device for reuse (a fresh one costs page faults and zeroing on every
/// batch).
const MAX_GROUP_BOUNCE: usize = 8 << 20;

/// Most requests per group (the ring keeps `uring::QUEUE_DEPTH` in flight).
const MAX_GROUP_OPS: usize = 1024;

/// io_uring instances kept for reuse (one per concurrent batch, up to this).
const RINGS_MAX: usize = 4;

/// A single O_DIRECT write from an unaligned caller buffer of at least two
/// pieces goes through the bounce buffer in pieces of this size on
/// io_uring, each copied in just before it is submitted, so that copying
/// overlaps the device instead of sitting between device requests (the
/// copy of 1 MiB from cold memory takes 0.1-0.4 ms on the VMs measured, a
/// 1 MiB request 0.5-2 ms). Reads do not do this (see `PosIo::read_at`).
const PIPE_PIECE: usize = 256 << 10;

// ---------------------------------------------------------------------------
// Aligned buffers

/// A heap buffer whose start is aligned to `align` bytes, as O_DIRECT needs.
/// Callers that allocate their I/O buffers with it avoid the bounce copy.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like a Box<[u8]>).
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zero-filled buffer of `len` bytes aligned to `align` (a power of two).
    pub fn zeroed(len: usize, align: usize) -> io::Result<Self> {
        // A zero-size allocation is not allowed: always allocate at least `align`.
        let layout = Layout::from_size_align(len.max(align).max(1), align)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size (checked above).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "aligned allocation"))?;
        Ok(AlignedBuf { ptr, len, layout })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the allocation can hold (at least `len`).
    fn capacity(&self) -> usize {
        self.layout.size()
    }

    /// Change the visible length within the allocation.
    fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity());
        self.len = len;
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() >= len initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("align", &self.layout.align())
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Positional I/O core shared by the file and raw backends

/// Positional I/O on an open file descriptor, O_DIRECT aware.
pub(crate) struct PosIo {
    pub(crate) file: File,
    direct: bool,
    mem_align: usize,
    pool: Mutex<Vec<AlignedBuf>>,
    /// The batch engine (an `IoEngine` as u8).
    engine: AtomicU8,
    rings: Mutex<Vec<Ring>>,
    /// The bounce buffer of the last batch group, for reuse.
    group_bounce: Mutex<Option<AlignedBuf>>,
}

/// Which engine runs the batches of a file or raw device. Adjacent requests
/// are merged whichever runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEngine {
    /// io_uring: up to 64 requests in flight per batch (the default where
    /// the kernel allows it).
    Uring = 0,
    /// `preadv`/`pwritev` on up to 16 threads per batch: the fallback where
    /// io_uring is unavailable (old kernels, `kernel.io_uring_disabled`,
    /// seccomp filters such as Docker's default) or `NOTAFS_NO_URING=1`.
    Threads = 1,
    /// `preadv`/`pwritev` one request at a time on the calling thread.
    Sequential = 2,
}

/// Threads of the [`IoEngine::Threads`] engine per batch (the caller's
/// thread included).
const BATCH_THREADS: usize = 16;

/// Environment variable choosing the default batch engine: `uring`,
/// `threads` or `sequential` (unset or anything else: io_uring where
/// available, else threads). For measurements; `NOTAFS_NO_URING=1` also
/// rules io_uring out.
pub const IO_ENGINE_ENV: &str = "NOTAFS_IO_ENGINE";

impl IoEngine {
    /// The engine new devices start with (read once per process).
    pub fn default_engine() -> IoEngine {
        static DEFAULT: std::sync::OnceLock<IoEngine> = std::sync::OnceLock::new();
        *DEFAULT.get_or_init(|| {
            let asked = std::env::var(IO_ENGINE_ENV).unwrap_or_default();
            match asked.as_str() {
                "sequential" => IoEngine::Sequential,
                "threads" => IoEngine::Threads,
                _ if uring::available() => IoEngine::Uring,
                _ => IoEngine::Threads,
            }
        })
    }

    fn from_u8(v: u8) -> IoEngine {
        match v {
            0 => IoEngine::Uring,
            1 => IoEngine::Threads,
            _ => IoEngine::Sequential,
        }
    }
}

impl PosIo {
    pub(crate) fn new(file: File, direct: bool, mem_align: usize) -> Self {
        PosIo {
            file,
            direct,
            mem_align,
            pool: Mutex::new(Vec::new()),
            engine: AtomicU8::new(IoEngine::default_engine() as u8),
            rings: Mutex::new(Vec::new()),
            group_bounce: Mutex::new(None),
        }
    }

    pub(crate) fn engine(&self) -> IoEngine {
        IoEngine::from_u8(self.engine.load(Ordering::Relaxed))
    }

    /// Choose the engine; io_uring only where it is available (else threads).
    pub(crate) fn set_engine(&self, e: IoEngine) {
        let e = match e {
            IoEngine::Uring if !uring::available() => IoEngine::Threads,
            e => e,
        };
        self.engine.store(e as u8, Ordering::Relaxed);
    }

    /// A ring from the pool, or a new one.
    fn take_ring(&self) -> io::Result<Ring> {
        self.rings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .map(Ok)
            .unwrap_or_else(Ring::new)
    }

    /// Return a ring (with nothing in flight) to the pool.
    fn give_ring(&self, ring: Ring) {
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        if rings.len() < RINGS_MAX {
            rings.push(ring);
        }
    }

    /// Run `ops`, in flight together on io_uring when enabled.
    fn execute(&self, ops: &mut [Op<'_>]) {
        use std::os::fd::AsFd;
        let fd = self.file.as_fd();
        let engine = self.engine();
        if engine == IoEngine::Uring {
            match self.take_ring() {
                Ok(mut ring) => match ring.run(fd, ops) {
                    Ok(()) => {
                        self.give_ring(ring);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring submission failed; finishing the batch on threads")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set up an io_uring; using threads")
                }
            }
        }
        if engine == IoEngine::Sequential {
            uring::run_sequential(fd, ops);
        } else {
            uring::run_threads(fd, ops, BATCH_THREADS);
        }
    }

    /// A bounce buffer of at least `len` bytes for one batch group: the kept
    /// one if large enough, else a new one.
    fn take_group_bounce(&self, len: usize) -> io::Result<AlignedBuf> {
        let kept = self
            .group_bounce
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match kept {
            Some(mut b) if b.capacity() >= len => {
                b.set_len(len);
                Ok(b)
            }
            _ => AlignedBuf::zeroed(len, self.mem_align),
        }
    }

    fn give_group_bounce(&self, b: AlignedBuf) {
        if b.capacity() <= MAX_GROUP_BOUNCE {
            let mut kept = self.group_bounce.lock().unwrap_or_else(|e| e.into_inner());
            if kept.as_ref().is_none_or(|k| k.capacity() < b.capacity()) {
                *kept = Some(b);
            }
        }
    }

    /// Bounce bytes a run takes in a group buffer: its length rounded up to
    /// the memory alignment, so the next run's slice starts aligned.
    fn bounce_len<T: std::ops::Deref<Target = [u8]>>(&self, run: &[(u64, T)]) -> usize {
        if self.run_needs_bounce(run) {
            run.iter()
                .map(|(_, s)| s.len())
                .sum::<usize>()
                .next_multiple_of(self.mem_align)
        } else {
            0
        }
    }

    /// Whether a run of segments must go through a bounce buffer.
    fn run_needs_bounce<T: std::ops::Deref<Target = [u8]>>(&self, run: &[(u64, T)]) -> bool {
        run.iter().any(|(_, s)| !self.aligned(s.as_ptr()))
    }

    /// Write every `(byte offset, data)`, in no particular order: long
    /// requests split and adjacent ones merged into requests of at most
    /// `MAX_OP_BYTES`, run in flight together. Returns the first error (in
    /// device order); the other writes may or may not have happened then.
    pub(crate) fn write_many(&self, reqs: &[(u64, &[u8])]) -> io::Result<()> {
        let mut pieces: Vec<(u64, &[u8])> = Vec::with_capacity(reqs.len());
        for &(off, data) in reqs {
            for (k, c) in data.chunks(MAX_OP_BYTES).enumerate() {
                pieces.push((off + (k * MAX_OP_BYTES) as u64, c));
            }
        }
        if pieces.len() == 1 {
            return self.write_at(pieces[0].0, pieces[0].1);
        }
        pieces.sort_by_key(|p| p.0);
        let runs = merge_runs(pieces);
        let mut first_err = None;
        for group in groups(&runs, |r| self.bounce_len(r)) {
            let runs = &runs[group];
            let total: usize = runs.iter().map(|r| self.bounce_len(r)).sum();
            let mut gb = if total > 0 {
                Some(self.take_group_bounce(total)?)
            } else {
                None
            };
            let mut rest: &mut [u8] = gb.as_deref_mut().unwrap_or(&mut []);
            let mut ops: Vec<Op<'_>> = Vec::with_capacity(runs.len());
            for run in runs {
                let blen = self.bounce_len(run);
                if blen == 0 {
                    ops.push(Op::write(run[0].0, run.iter().map(|(_, s)| *s).collect()));
                    continue;
                }
                let (mine, r) = std::mem::take(&mut rest).split_at_mut(blen);
                rest = r;
                let mut at = 0;
                for (_, s) in run {
                    mine[at..at + s.len()].copy_from_slice(s);
                    at += s.len();
                }
                ops.push(Op::write(run[0].0, vec![&mine[..at]]));
            }
            self.execute(&mut ops);
            for op in &mut ops {
                if let Err(e) = op.take_result() {
                    first_err.get_or_insert(e);
                }
            }
            drop(ops);
            if let Some(b) = gb {
                self.give_group_bounce(b);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Read every `(byte offset, buffer)`; as [`write_many`](Self::write_many).
    pub(crate) fn read_many(&self, reqs: &mut [(u64, &mut [u8])]) -> io::Result<()> {
        let mut pieces: Vec<(u64, &mut [u8])> = Vec::with_capacity(reqs.len());
        for (off, buf) in reqs.iter_mut() {
            for (k, c) in buf.chunks_mut(MAX_OP_BYTES).enumerate() {
                pieces.push((*off + (k * MAX_OP_BYTES) as u64, c));
            }
        }
        if pieces.len() == 1 {
            let (off, buf) = pieces.pop().expect("one piece");
            return self.read_at(off, buf);
        }
        pieces.sort_by_key(|p| p.0);
        let mut runs = merge_runs(pieces);
        let mut first_err = None;
        for group in groups(&runs, |r| self.bounce_len(r)) {
            let runs = &mut runs[group];
            let total: usize = runs.iter().map(|r| self.bounce_len(r)).sum();
            let mut gb = if total > 0 {
                Some(self.take_group_bounce(total)?)
            } else {
                None
            };
            let mut rest: &mut [u8] = gb.as_deref_mut().unwrap_or(&mut []);
            // Per run: its slice of the group bounce buffer, if it needs one.
            let mut bounces: Vec<Option<&mut [u8]>> = Vec::with_capacity(runs.len());
            for run in runs.iter() {
                let blen = self.bounce_len(run);
                if blen == 0 {
                    bounces.push(None);
                } else {
                    let len = run.iter().map(|(_, s)| s.len()).sum();
                    let (mine, r) = std::mem::take(&mut rest).split_at_mut(blen);
                    rest = r;
                    bounces.push(Some(&mut mine[..len]));
                }
            }
            let mut ops: Vec<Op<'_>> = runs
                .iter_mut()
                .zip(bounces.iter_mut())
                .map(|(run, b)| {
                    let off = run[0].0;
                    match b {
                        Some(b) => Op::read(off, vec![&mut **b]),
                        None => Op::read(off, run.iter_mut().map(|(_, s)| &mut **s).collect()),
                    }
                })
                .collect();
            self.execute(&mut ops);
            let results: Vec<io::Result<()>> = ops.iter_mut().map(|op| op.take_result()).collect();
            drop(ops);
            for ((run, b), r) in runs.iter_mut().zip(&bounces).zip(results) {
                match r {
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                    Ok(()) => {
                        if let Some(b) = b {
                            let mut at = 0;
                            for (_, s) in run.iter_mut() {
                                let n = s.len();
                                s.copy_from_slice(&b[at..at + n]);
                                at += n;
                            }
                        }
                    }
                }
            }
            drop(bounces);
            if let Some(b) = gb {
                self.give_group_bounce(b);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn aligned(&self, p: *const u8) -> bool {
        !self.direct || (p as usize) % self.mem_align == 0
    }

    fn take_bounce(&self, len: usize) -> io::Result<AlignedBuf> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        match pool.pop() {
            Some(mut b) if b.capacity() >= len => {
                b.set_len(len);
                Ok(b)
            }
            _ => AlignedBuf::zeroed(len, self.mem_align),
        }
    }

    fn give_bounce(&self, b: AlignedBuf) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(b);
        }
    }

    /// Whether an unaligned single write of `len` bytes is pipelined
    /// through the bounce buffer (see [`PIPE_PIECE`]).
    fn pipelined(&self, len: usize) -> bool {
        self.direct && len >= 2 * PIPE_PIECE && self.engine() == IoEngine::Uring
    }

    /// Read exactly `buf.len()` bytes at `off`.
    ///
    /// Unaligned O_DIRECT reads stay one `pread` per 1 MiB: reading in
    /// pieces on io_uring and copying each out on arrival (as writes do the
    /// other way) was tried and measured worse on a loaded 2-core VM (loop
    /// device, median notafs/dd read ratio 0.71 against 0.88 over six
    /// interleaved round pairs, and +0.4 ms CPU per MiB in a process's first
    /// read pass): every piece's completion wakes the reader, and on a
    /// machine short of cores each wake-up waits for one.
    pub(crate) fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.aligned(buf.as_ptr()) {
            // read_exact_at loops over short reads and EINTR.
            return self.file.read_exact_at(buf, off);
        }
        let mut bounce = self.take_bounce(buf.len().min(CHUNK))?;
        let mut done = 0;
        let res = (|| {
            while done < buf.len() {
                let n = (buf.len() - done).min(CHUNK);
                bounce.set_len(n);
                self.file.read_exact_at(&mut bounce, off + done as u64)?;
                buf[done..done + n].copy_from_slice(&bounce);
                done += n;
            }
            Ok(())
        })();
        self.give_bounce(bounce);
        res
    }

    /// Write all of `data` at `off`.
    pub(crate) fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        if self.aligned(data.as_ptr()) {
            return self.file.write_all_at(data, off);
        }
        let mut bounce = self.take_bounce(data.len().min(CHUNK))?;
        let mut done = 0;
        let res = (|| {
            while done < data.len() {
                let n = (data.len() - done).min(CHUNK);
                bounce.set_len(n);
                let src = &data[done..done + n];
                let at = off + done as u64;
                if !(self.pipelined(n) && self.write_pieces(at, &mut bounce, src)?) {
                    bounce.copy_from_slice(src);
                    self.file.write_all_at(&bounce, at)?;
                }
                done += n;
            }
            Ok(())
        })();
        self.give_bounce(bounce);
        res
    }

    /// Write `src` at `off` through `bounce` (as long as `src`) in pieces on
    /// io_uring: each piece is copied in just before it is submitted, while
    /// the pieces before it are in flight. `Ok(false)`: no ring could be had or io_uring itself failed; the
    /// caller then writes the whole range the ordinary way (rewriting pieces
    /// already written is harmless).
    fn write_pieces(&self, off: u64, bounce: &mut [u8], src: &[u8]) -> io::Result<bool> {
        use std::os::fd::AsFd;
        let Ok(mut ring) = self.take_ring() else {
            return Ok(false);
        };
        let mut ops: Vec<Op<'_>> = bounce
            .chunks_mut(PIPE_PIECE)
            .enumerate()
            .map(|(k, piece)| Op::write_fill(off + (k * PIPE_PIECE) as u64, piece))
            .collect();
        let mut copy_in = |op: &mut Op<'_>| -> io::Result<()> {
            let at = (op.offset() - off) as usize;
            let len = PIPE_PIECE.min(src.len() - at);
            op.fill(&src[at..at + len])
        };
        match ring.run_hooked(self.file.as_fd(), &mut ops, Some(&mut copy_in)) {
            Ok(()) => self.give_ring(ring),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring submission failed; writing with pwrite");
                return Ok(false);
            }
        }
        for op in &mut ops {
            op.take_result()?;
        }
        Ok(true)
    }

    /// Write `len` zero bytes at `off` with ordinary writes, ≤ 1 MiB at a time.
    pub(crate) fn write_zero_buffers(&self, off: u64, len: u64) -> io::Result<()> {
        let zeros = AlignedBuf::zeroed((len.min(CHUNK as u64)) as usize, self.mem_align)?;
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], off + done)?;
            done += n as u64;
        }
        Ok(())
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Merge offset-sorted `(byte offset, segment)` pieces into runs of
/// physically contiguous segments (at most `MAX_OP_BYTES`, `MAX_OP_SEGS`).
fn merge_runs<T: std::ops::Deref<Target = [u8]>>(pieces: Vec<(u64, T)>) -> Vec<Vec<(u64, T)>> {
    let mut runs: Vec<Vec<(u64, T)>> = Vec::new();
    let mut run_end = 0u64;
    let mut run_len = 0usize;
    for (off, seg) in pieces {
        let len = seg.len();
        match runs.last_mut() {
            Some(run)
                if run_end == off && run_len + len <= MAX_OP_BYTES && run.len() < MAX_OP_SEGS =>
            {
                run.push((off, seg));
                run_len += len;
            }
            _ => {
                runs.push(vec![(off, seg)]);
                run_len = len;
            }
        }
        run_end = off + len as u64;
    }
    runs
}

/// Split `runs` into consecutive groups of at most `MAX_GROUP_OPS` runs and
/// `MAX_GROUP_BOUNCE` bytes of bounce buffers (a single larger run is a group
/// of its own).
fn groups<T: std::ops::Deref<Target = [u8]>>(
    runs: &[Vec<(u64, T)>],
    bounce_len: impl Fn(&[(u64, T)]) -> usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bounce) = (0usize, 0usize);
    for (i, run) in runs.iter().enumerate() {
        let need = bounce_len(run);
        if i > start && (i - start >= MAX_GROUP_OPS || bounce + need > MAX_GROUP_BOUNCE) {
            out.push(start..i);
            start = i;
            bounce = 0;
        }
        bounce += need;
    }
    if start < runs.len() {
        out.push(start..runs.len());
    }
    out
}

/// `write_batch` of the file and raw backends: validate in order, issue the
/// valid prefix (in flight together), then report the first invalid request.
pub(crate) fn batch_write(
    io: &PosIo,
    geo: &Geometry,
    writable: impl Fn() -> Result<()>,
    writes: &[WriteReq<'_>],
) -> Result<()> {
    let bs = geo.block_size as u64;
    let mut reqs = Vec::with_capacity(writes.len());
    let mut bad = None;
    for w in writes {
        if let Err(e) = check_io(geo, w.block, w.data.len()).and_then(|_| writable()) {
            bad = Some(e);
            break;
        }
        reqs.push((w.block * bs, w.data));
    }
    if !reqs.is_empty() {
        io.write_many(&reqs)
            .map_err(|e| BlockError::io("write", e))?;
    }
    bad.map_or(Ok(()), Err)
}

/// `read_batch` of the file and raw backends, as [`batch_write`].
pub(crate) fn batch_read(io: &PosIo, geo: &Geometry, reads: &mut [(u64, &mut [u8])]) -> Result<()> {
    let bs = geo.block_size as u64;
    let mut reqs = Vec::with_capacity(reads.len());
    let mut bad = None;
    for (block, buf) in reads.iter_mut() {
        if let Err(e) = check_io(geo, *block, buf.len()) {
            bad = Some(e);
            break;
        }
        reqs.push((*block * bs, &mut **buf));
    }
    if !reqs.is_empty() {
        io.read_many(&mut reqs)
            .map_err(|e| BlockError::io("read", e))?;
    }
    bad.map_or(Ok(()), Err)
}

fn errno_is_unsupported(e: nix::errno::Errno) -> bool {
    use nix::errno::Errno;
    // EOPNOTSUPP == ENOTSUP on Linux; ENOSYS for very old kernels; EINVAL is
    // what some filesystems answer for an unknown mode.
    matches!(e, Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL)
}

// ---------------------------------------------------------------------------
// FileDevice

/// How to open an image file.
#[derive(Clone, Debug, Default)]
pub struct FileOptions {
    /// Open read-only; every modifying operation then fails.
    pub read_only: bool,
    /// Use `O_DIRECT` (bypass the page cache).
    pub direct: bool,
    /// Logical block size; default [`DEFAULT_FILE_BLOCK_SIZE`].
    pub block_size: Option<u32>,
}

/// A regular file used as a block device.
pub struct FileDevice {
    io: PosIo,
    path: PathBuf,
    geo: Geometry,
    read_only: bool,
    direct: bool,
    /// Cleared after the filesystem refused a punch-hole / zero-range, so we
    /// do not retry a failing system call on every request.
    punch_ok: AtomicBool,
    zero_range_ok: AtomicBool,
}

impl FileDevice {
    /// Create (or truncate) `path` as a sparse image of `size_bytes` and open
    /// it read-write, buffered, with the default block size.
    ///
    /// The writer lock is taken before the file is truncated, so an image in
    /// use by another writer is refused ([`BlockError::Busy`]) untouched.
    pub fn create(path: impl AsRef<Path>, size_bytes: u64) -> Result<Self> {
        let path = path.as_ref();
        if size_bytes < DEFAULT_FILE_BLOCK_SIZE as u64 {
            return Err(BlockError::Invalid(format!(
                "{}: size {size_bytes} is smaller than one {DEFAULT_FILE_BLOCK_SIZE}-byte block",
                path.display()
            )));
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| BlockError::io("create", e))?;
        crate::lock::lock_writer(&f, path)?;
        // Truncate, then extend: set_len on an empty file allocates nothing,
        // so the image is sparse.
        f.set_len(0).map_err(|e| BlockError::io("create", e))?;
        f.set_len(size_bytes)
            .map_err(|e| BlockError::io("create", e))?;
        Self::from_file(f, path, &FileOptions::default())
    }

    /// Open an existing image file.
    pub fn open(path: impl AsRef<Path>, opts: &FileOptions) -> Result<Self> {
        let path = path.as_ref();
        let bs = opts.block_size.unwrap_or(DEFAULT_FILE_BLOCK_SIZE);
        if !Geometry::valid_block_size(bs) {
            return Err(BlockError::Invalid(format!(
                "block size {bs} is not a power of two in 512..=65536"
            )));
        }
        let mut oo = std::fs::OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        if opts.direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(path).map_err(|e| {
            if opts.direct && e.raw_os_error() == Some(libc::EINVAL) {
                // tmpfs and some network filesystems refuse O_DIRECT at open.
                BlockError::Unsupported {
                    op: "O_DIRECT (the filesystem refused it)",
                }
            } else if e.kind() == io::ErrorKind::NotFound {
                BlockError::Invalid(format!("no such file: {}", path.display()))
            } else {
                BlockError::io("open", e)
            }
        })?;
        Self::from_file(file, path, opts)
    }

    /// Finish opening `file` (opened per `opts`): take the writer lock if
    /// writable, then read the geometry.
    fn from_file(file: File, path: &Path, opts: &FileOptions) -> Result<Self> {
        let bs = opts.block_size.unwrap_or(DEFAULT_FILE_BLOCK_SIZE);
        if !opts.read_only {
            // One writer at a time (see crate::lock); before anything else.
            crate::lock::lock_writer(&file, path)?;
        }
        let meta = file.metadata().map_err(|e| BlockError::io("open", e))?;
        if !meta.is_file() {
            return Err(BlockError::Invalid(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let len = meta.len();
        if len < bs as u64 {
            return Err(BlockError::Invalid(format!(
                "{}: file is {len} bytes, smaller than one {bs}-byte block",
                path.display()
            )));
        }
        let mut mem_align = DIRECT_ALIGN;
        if opts.direct {
            if let Some((mem, offset)) = dio_alignment(&file) {
                if offset == 0 {
                    return Err(BlockError::Unsupported {
                        op: "O_DIRECT (the filesystem refused it)",
                    });
                }
                if bs % offset != 0 {
                    return Err(BlockError::Invalid(format!(
                        "{}: O_DIRECT needs {offset}-byte aligned offsets, block size {bs} is smaller",
                        path.display()
                    )));
                }
                mem_align = mem_align.max(mem as usize);
            }
        }
        let block_count = len / bs as u64;
        if len % bs as u64 != 0 {
            tracing::warn!(
                path = %path.display(),
                len,
                block_size = bs,
                "file length is not a multiple of the block size; the trailing partial block is ignored"
            );
        }
        let io = PosIo::new(file, opts.direct, mem_align);
        let punch = !opts.read_only && probe_punch_hole(&io.file, len);
        let geo = Geometry {
            block_size: bs,
            block_count,
            // A file gives no all-or-nothing guarantee for any size: a crash
            // in the middle of writeback can leave any mix of old and new.
            atomic_unit: 0,
            preferred_io: 1 << 20,
            caps: Capabilities {
                discard: punch,
                write_zeroes: punch,
                native_barrier: false,
            },
        };
        tracing::debug!(path = %path.display(), ?geo, direct = opts.direct, "opened image file");
        Ok(FileDevice {
            io,
            path: path.to_path_buf(),
            geo,
            read_only: opts.read_only,
            direct: opts.direct,
            punch_ok: AtomicBool::new(punch),
            zero_range_ok: AtomicBool::new(!opts.read_only),
        })
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The engine running `write_batch`/`read_batch`.
    pub fn io_engine(&self) -> IoEngine {
        self.io.engine()
    }

    /// Choose the batch engine (io_uring only where available, else
    /// threads; the default is io_uring unless `NOTAFS_NO_URING=1`).
    pub fn set_io_engine(&self, engine: IoEngine) {
        self.io.set_engine(engine)
    }

    fn off(&self, block: u64) -> u64 {
        block * self.geo.block_size as u64
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(BlockError::Invalid(format!(
                "{} was opened read-only",
                self.path.display()
            )))
        } else {
            Ok(())
        }
    }

    fn punch(&self, off: u64, len: u64) -> std::result::Result<bool, nix::errno::Errno> {
        if !self.punch_ok.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.io.file, flags, off as i64, len as i64) {
            Ok(()) => Ok(true),
            Err(e) if errno_is_unsupported(e) => {
                tracing::info!(path = %self.path.display(), error = %e, "punch hole unsupported");
                self.punch_ok.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// Probe hole punching without touching data: punch one block past the end
/// of the file with KEEP_SIZE, which is a no-op where it is supported.
fn probe_punch_hole(file: &File, len: u64) -> bool {
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let Ok(off) = i64::try_from(len.next_multiple_of(65536)) else {
        return false;
    };
    fallocate(file, flags, off, 65536).is_ok()
}

/// (memory alignment, offset alignment) for O_DIRECT on this file, from
/// statx(STATX_DIOALIGN) (Linux 6.1+); None if the kernel does not say.
fn dio_alignment(file: &File) -> Option<(u32, u32)> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: fd is open for the duration of the call, the path is a valid
    // NUL-terminated empty string used with AT_EMPTY_PATH, and stx points to
    // writable memory of the right size.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: statx succeeded and filled the struct (it was zeroed before).
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

impl BlockDevice for FileDevice {
    fn geometry(&self) -> Geometry {
        self.geo
    }

    fn read(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        check_io(&self.geo, block, buf.len())?;
        self.io
            .read_at(self.off(block), buf)
            .map_err(|e| BlockError::io("read", e))
    }

    fn write(&self, block: u64, data: &[u8]) -> Result<()> {
        check_io(&self.geo, block, data.len())?;
        self.check_writable()?;
        self.io
            .write_at(self.off(block), data)
            .map_err(|e| BlockError::io("write", e))
    }

    fn write_zeroes(&self, block: u64, count: u64) -> Result<()> {
        check_range(&self.geo, block, count)?;
        self.check_writable()?;
        let (off, len) = (self.off(block), count * self.geo.block_size as u64);
        if self.zero_range_ok.load(Ordering::Relaxed) {
            let flags = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            match fallocate(&self.io.file, flags, off as i64, len as i64) {
                Ok(()) => return Ok(()),
                Err(e) if errno_is_unsupported(e) => {
                    tracing::info!(path = %self.path.display(), error = %e, "zero range unsupported");
                    self.zero_range_ok.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(BlockError::io("write_zeroes", e.into())),
            }
        }
        // A punched hole reads back as zeros: as good as ZERO_RANGE for us.
        match self.punch(off, len) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(BlockError::io("write_zeroes", e.into())),
        }
        self.io
            .write_zero_buffers(off, len)
            .map_err(|e| BlockError::io("write_zeroes", e))
    }

    fn discard(&self, block: u64, count: u64) -> Result<()> {
        check_range(&self.geo, block, count)?;
        self.check_writable()?;
        // Unsupported → nothing done, which the contract allows.
        self.punch(self.off(block), count * self.geo.block_size as u64)
            .map(|_| ())
            .map_err(|e| BlockError::io("discard", e.into()))
    }

    fn flush(&self) -> Result<()> {
        self.io.sync().map_err(|e| BlockError::io("flush", e))
    }

    fn barrier(&self) -> Result<()> {
        // No ordering primitive on a file: a barrier is a full fdatasync.
        self.flush()
    }

    fn host_cached_writes(&self) -> bool {
        // Buffered: writes wait in the page cache. O_DIRECT: they are in
        // the host filesystem's device (or its cache) at completion.
        !self.direct
    }

    fn write_batch(&self, writes: &[WriteReq<'_>]) -> Result<()> {
        batch_write(&self.io, &self.geo, || self.check_writable(), writes)
    }

    fn read_batch(&self, reads: &mut [(u64, &mut [u8])]) -> Result<()> {
        batch_read(&self.io, &self.geo, reads)
    }

    fn describe(&self) -> String {
        format!(
            "file:{}{}",
            self.path.display(),
            if self.direct { " (O_DIRECT)" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large unaligned O_DIRECT write on io_uring takes the piece path
    /// (not the one-request fallback) and writes exactly the caller's bytes,
    /// the last piece shorter than the others included.
    #[test]
    fn large_unaligned_direct_writes_go_in_pieces() {
        if !uring::available() {
            println!("SKIPPED: io_uring unavailable");
            return;
        }
        let dir = tempfile::Builder::new()
            .prefix("notafs-pipe")
            .tempdir_in("/var/tmp")
            .unwrap();
        let path = dir.path().join("img");
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                println!("SKIPPED: O_DIRECT refused: {e}");
                return;
            }
        };
        file.set_len(4 << 20).unwrap();
        let io = PosIo::new(file, true, DIRECT_ALIGN);
        io.set_engine(IoEngine::Uring);
        assert!(io.pipelined(1 << 20));
        assert!(io.pipelined(2 * PIPE_PIECE));
        assert!(!io.pipelined(2 * PIPE_PIECE - 4096));
        let len = 3 * PIPE_PIECE + 12 * 1024;
        let src: Vec<u8> = (0..len as u32 + 8)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let src = &src[8..]; // not 4096-aligned whatever the allocator did
        let mut bounce = AlignedBuf::zeroed(len, DIRECT_ALIGN).unwrap();
        assert!(io.write_pieces(8192, &mut bounce, src).unwrap());
        let mut back = vec![0u8; len + 8];
        io.read_at(8192, &mut back[8..]).unwrap();
        assert!(&back[8..] == src);
        // And through write_at, which routes here.
        let src2: Vec<u8> = src.iter().map(|b| b ^ 0x5A).collect();
        let src2 = &src2[..];
        io.write_at(4096, src2).unwrap();
        io.read_at(4096, &mut back[8..]).unwrap();
        assert!(&back[8..] == src2);
    }
}
