//! The io_uring boundary: many positional reads/writes in flight on one file
//! descriptor, through the `io-uring` crate.
//!
//! Everything `unsafe` about io_uring is in this module. The one invariant it
//! rests on: **the kernel may access an operation's memory from submission
//! until its completion is reaped**, so [`Ring::run`] never returns (not even
//! by unwinding) while an operation it submitted is still in flight. The
//! memory comes from [`Op`]s, which borrow the caller's buffers for their
//! lifetime `'a`, and `run` borrows the ops for its whole duration: the
//! buffers outlive every access the kernel makes.
//!
//! Whether io_uring is usable is probed once per process ([`available`]):
//! kernels without it, `kernel.io_uring_disabled`, seccomp filters (Docker's
//! default) all make `io_uring_setup` fail, and the callers then run batches
//! with `preadv`/`pwritev` on threads ([`run_threads`]). `NOTAFS_NO_URING=1`
//! forces that fallback (so both paths are testable on one machine).
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::OnceLock;

use io_uring::{opcode, types, IoUring};

/// Submission queue entries per ring, and the most operations one ring keeps
/// in flight (64: what nbdcopy and fio's usual deep-queue runs use).
pub(crate) const QUEUE_DEPTH: u32 = 64;

/// Environment variable that turns io_uring off (any value but "0" or "").
pub const NO_URING_ENV: &str = "NOTAFS_NO_URING";

/// Whether io_uring can be used in this process (probed once).
pub(crate) fn available() -> bool {
    static PROBE: OnceLock<bool> = OnceLock::new();
    *PROBE.get_or_init(|| {
        if std::env::var(NO_URING_ENV).is_ok_and(|v| !v.is_empty() && v != "0") {
            tracing::debug!("io_uring disabled by {NO_URING_ENV}");
            return false;
        }
        match IoUring::new(2) {
            Ok(_) => true,
            Err(e) => {
                tracing::info!(error = %e, "io_uring unavailable; batches run on threads");
                false
            }
        }
    })
}

/// One positional read or write of a run of device bytes, from/into one or
/// more memory segments (a vectored request: `preadv`/`pwritev` semantics).
pub(crate) struct Op<'a> {
    off: u64,
    write: bool,
    iov: Vec<libc::iovec>,
    len: usize,
    /// Bytes already transferred (short transfers are resubmitted).
    done: usize,
    /// The iovecs of the remaining part when `done > 0` (kept alive while
    /// the resubmitted request is in flight).
    rest: Vec<libc::iovec>,
    result: Option<io::Result<()>>,
    /// Set once the op has been handed to the kernel: its memory may then be
    /// accessed by the kernel until `result` is set.
    submitted: bool,
    /// Created by [`Op::write_fill`]: the memory is borrowed exclusively, so
    /// [`Op::fill`] may write it before submission.
    fillable: bool,
    _mem: PhantomData<&'a mut [u8]>,
}

// SAFETY: the raw pointers in `iov`/`rest` point into buffers borrowed for
// 'a (shared for writes, exclusive for reads), which are themselves Send.
unsafe impl Send for Op<'_> {}

impl<'a> Op<'a> {
    /// Read into `segs`, back to back, from byte `off`.
    pub(crate) fn read(off: u64, segs: Vec<&'a mut [u8]>) -> Self {
        let iov = segs
            .into_iter()
            .map(|s| libc::iovec {
                iov_base: s.as_mut_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        Self::new(off, false, iov)
    }

    /// Write `segs`, back to back, at byte `off`.
    pub(crate) fn write(off: u64, segs: Vec<&'a [u8]>) -> Self {
        let iov = segs
            .into_iter()
            .map(|s| libc::iovec {
                // The kernel only reads through this pointer (a write).
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            })
            .collect();
        Self::new(off, true, iov)
    }

    /// Write `buf` at byte `off`, its content to be provided by [`Op::fill`]
    /// just before submission (see [`Ring::run_hooked`]), so that copying
    /// it overlaps the ops already in flight.
    pub(crate) fn write_fill(off: u64, buf: &'a mut [u8]) -> Self {
        let iov = vec![libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        let mut op = Self::new(off, true, iov);
        op.fillable = true;
        op
    }

    /// The byte offset of the op.
    pub(crate) fn offset(&self) -> u64 {
        self.off
    }

    /// Copy `src` (exactly the op's length) into the memory of an op made by
    /// [`Op::write_fill`] that has not been submitted yet.
    pub(crate) fn fill(&mut self, src: &[u8]) -> io::Result<()> {
        if !self.fillable || self.submitted || self.iov.len() != 1 || src.len() != self.len {
            return Err(io::Error::other("fill: op not fillable"));
        }
        // SAFETY: the op borrows this memory exclusively for 'a (write_fill
        // took a `&'a mut [u8]`), and it has not been submitted, so the
        // kernel does not access it; iov[0] describes exactly `len` bytes.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(self.iov[0].iov_base.cast::<u8>(), self.len) };
        dst.copy_from_slice(src);
        Ok(())
    }

    fn new(off: u64, write: bool, iov: Vec<libc::iovec>) -> Self {
        let len = iov.iter().map(|v| v.iov_len).sum();
        Op {
            off,
            write,
            iov,
            len,
            done: 0,
            rest: Vec::new(),
            result: None,
            submitted: false,
            fillable: false,
            _mem: PhantomData,
        }
    }

    /// The outcome once [`Ring::run`] or [`run_sequential`] has seen it.
    pub(crate) fn take_result(&mut self) -> io::Result<()> {
        self.result
            .take()
            .unwrap_or_else(|| Err(io::Error::other("operation not run")))
    }

    /// The iovecs covering bytes `done..len` (into `rest`).
    fn remaining_iov(&mut self) -> (*const libc::iovec, u32) {
        if self.done == 0 {
            return (self.iov.as_ptr(), self.iov.len() as u32);
        }
        self.rest.clear();
        let mut skip = self.done;
        for v in &self.iov {
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            self.rest.push(libc::iovec {
                // SAFETY: skip < iov_len, so the pointer stays inside the
                // segment the iovec describes.
                iov_base: unsafe { v.iov_base.cast::<u8>().add(skip) }.cast(),
                iov_len: v.iov_len - skip,
            });
            skip = 0;
        }
        (self.rest.as_ptr(), self.rest.len() as u32)
    }

    /// Account for a completion of `res` bytes (or -errno); true when the op
    /// is finished (successfully or not), false when the rest must be
    /// resubmitted.
    fn complete(&mut self, res: i32) -> bool {
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            if matches!(-res, libc::EINTR | libc::EAGAIN) {
                return false;
            }
            self.result = Some(Err(e));
            return true;
        }
        if res == 0 {
            self.result = Some(Err(if self.write {
                io::Error::new(io::ErrorKind::WriteZero, "write returned 0 bytes")
            } else {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                )
            }));
            return true;
        }
        self.done += res as usize;
        if self.done >= self.len {
            self.result = Some(Ok(()));
            true
        } else {
            false
        }
    }
}

/// Run `ops` one after the other with `preadv`/`pwritev`. Ops that already
/// have an outcome are skipped.
pub(crate) fn run_sequential(fd: BorrowedFd<'_>, ops: &mut [Op<'_>]) {
    for op in ops.iter_mut() {
        run_one(fd, op);
    }
}

/// Run `ops` with `preadv`/`pwritev` on up to `threads` threads (the calling
/// one included), each taking the next op until none is left. Returns when
/// every op has its outcome (scoped threads: no op outlives the call).
pub(crate) fn run_threads(fd: BorrowedFd<'_>, ops: &mut [Op<'_>], threads: usize) {
    let workers = threads.min(ops.len());
    if workers < 2 {
        return run_sequential(fd, ops);
    }
    let queue = std::sync::Mutex::new(ops.iter_mut());
    let work = || loop {
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
        match next {
            Some(op) => run_one(fd, op),
            None => break,
        }
    };
    std::thread::scope(|s| {
        for _ in 1..workers {
            // If the system refuses a thread, the others do its share.
            if std::thread::Builder::new().spawn_scoped(s, work).is_err() {
                break;
            }
        }
        work();
    });
}

/// Run one op to completion with `preadv`/`pwritev` (nothing if it already
/// has an outcome).
fn run_one(fd: BorrowedFd<'_>, op: &mut Op<'_>) {
    if op.result.is_some() {
        return;
    }
    loop {
        let (iov, n) = op.remaining_iov();
        let off = (op.off + op.done as u64) as libc::off_t;
        // SAFETY: `iov` points at `n` iovecs owned by `op`, each
        // describing memory borrowed by `op` for its lifetime (exclusively
        // for reads); the call completes before we touch `op` again.
        let r = unsafe {
            if op.write {
                libc::pwritev(fd.as_raw_fd(), iov, n as libc::c_int, off)
            } else {
                libc::preadv(fd.as_raw_fd(), iov, n as libc::c_int, off)
            }
        };
        let res = if r < 0 {
            -io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        } else {
            r.min(i32::MAX as isize) as i32
        };
        if op.complete(res) {
            break;
        }
    }
}

/// One io_uring instance. Not shared: a caller takes one from a pool, runs a
/// batch on it, and gives it back with nothing in flight.
pub(crate) struct Ring {
    ring: IoUring,
}

impl Ring {
    pub(crate) fn new() -> io::Result<Ring> {
        Ok(Ring {
            ring: IoUring::new(QUEUE_DEPTH)?,
        })
    }

    /// Run every op, up to [`QUEUE_DEPTH`] in flight at once; each op's
    /// outcome is then in its result. Returns only when no op is in flight.
    ///
    /// An error of `io_uring_enter` itself (not of an op) with nothing in
    /// flight is returned: the ops not yet finished have no result then and
    /// the caller can run them another way.
    pub(crate) fn run(&mut self, fd: BorrowedFd<'_>, ops: &mut [Op<'_>]) -> io::Result<()> {
        self.run_hooked(fd, ops, None)
    }

    /// As [`run`](Self::run), with a hook: `prepare(op)` runs just before an
    /// op is submitted for the first time, and each op is then submitted on
    /// its own (so `prepare` of the next overlaps the I/O of this one). A
    /// `prepare` error becomes that op's outcome (it is not submitted).
    pub(crate) fn run_hooked(
        &mut self,
        fd: BorrowedFd<'_>,
        ops: &mut [Op<'_>],
        mut prepare: Option<&mut dyn FnMut(&mut Op<'_>) -> io::Result<()>>,
    ) -> io::Result<()> {
        let mut in_flight = InFlight {
            ring: &mut self.ring,
            count: 0,
        };
        let mut next = 0usize;
        let mut retry: Vec<usize> = Vec::new();
        loop {
            // Fill the window: resubmissions first, then new ops.
            while in_flight.count < QUEUE_DEPTH as usize {
                let i = match retry.pop() {
                    Some(i) => i,
                    None if next < ops.len() => {
                        next += 1;
                        next - 1
                    }
                    None => break,
                };
                let op = &mut ops[i];
                if !op.submitted {
                    if let Some(p) = prepare.as_mut() {
                        if let Err(e) = p(op) {
                            op.result = Some(Err(e));
                            continue;
                        }
                    }
                }
                let (iov, n) = op.remaining_iov();
                let off = op.off + op.done as u64;
                let fd = types::Fd(fd.as_raw_fd());
                let sqe = if op.write {
                    opcode::Writev::new(fd, iov, n).offset(off).build()
                } else {
                    opcode::Readv::new(fd, iov, n).offset(off).build()
                }
                .user_data(i as u64);
                // SAFETY: the entry points at iovecs owned by `ops[i]` and at
                // memory `ops[i]` borrows; `ops` is borrowed for the whole of
                // this call, and this call does not return (nor unwind: see
                // InFlight's Drop) before the completion of this entry is
                // reaped. The iovec array is not modified while the entry is
                // in flight (remaining_iov is only called again after its
                // completion).
                let pushed = unsafe { in_flight.ring.submission().push(&sqe) };
                if pushed.is_err() {
                    // The queue is full (cannot happen with count < depth,
                    // but never lose the op).
                    retry.push(i);
                    break;
                }
                in_flight.count += 1;
                op.submitted = true;
                if prepare.is_some() {
                    // Hand it to the kernel now, before preparing the next.
                    in_flight.submit();
                }
            }
            if in_flight.count == 0 {
                return Ok(());
            }
            // Nothing is in flight when submit_and_wait fails (see it).
            in_flight.submit_and_wait()?;
            let done: Vec<(u64, i32)> = in_flight
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (i, res) in done {
                in_flight.count -= 1;
                let i = i as usize;
                if !ops[i].complete(res) {
                    retry.push(i);
                }
            }
        }
    }
}

/// Submitted and not yet reaped operations of one `run`. On drop (an unwind
/// out of `run`) it waits for them, so no buffer is released while the
/// kernel may still use it.
struct InFlight<'r> {
    ring: &'r mut IoUring,
    count: usize,
}

impl InFlight<'_> {
    /// Submit what is queued without waiting. On an error the entries stay
    /// in the submission queue and go with the next `submit_and_wait`, which
    /// deals with errors (nothing is lost, `count` stays true).
    fn submit(&mut self) {
        while let Err(e) = self.ring.submit() {
            if e.raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
    }

    /// Submit what is queued and wait for at least one completion. Retries
    /// interruptions. On a persistent error with operations in flight it
    /// cannot return (their memory could be reused while the kernel uses
    /// it), so it reaps them by waiting; if even that fails, it aborts.
    fn submit_and_wait(&mut self) -> io::Result<()> {
        let mut failures = 0u32;
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    // EBUSY/EAGAIN: completions must be reaped first, or the
                    // kernel is short of memory: they are transient.
                    if !self.ring.completion().is_empty() {
                        return Ok(());
                    }
                    failures += 1;
                    if self.count == 0 || failures > 1000 {
                        if self.count == 0 {
                            return Err(e);
                        }
                        tracing::error!(error = %e, in_flight = self.count,
                            "io_uring_enter keeps failing with requests in flight; aborting \
                             rather than freeing memory the kernel may still write");
                        std::process::abort();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        while self.count > 0 {
            if self.submit_and_wait().is_err() {
                // count > 0: submit_and_wait aborts rather than return Err.
                return;
            }
            let n = self.ring.completion().count();
            self.count = self.count.saturating_sub(n);
        }
    }
}
