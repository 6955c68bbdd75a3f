//! NBD client backend: a block device served over the Network Block Device
//! protocol (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`,
//! and over TLS `nbds://...`, `nbds+unix://...`: see [`CA_CERT`] for the
//! certificate directory, and `docs/BLOCK-SEMANTICS.md`).
//!
//! The core is synchronous, so [`NbdDevice`] is too, for its callers; the
//! protocol runs on a dedicated I/O thread with a tokio current-thread
//! runtime. Requests carry unique cookies; many may be in flight at once
//! (`write_batch`, `read_batch`, and large transfers split into several
//! requests are submitted together, up to a window of [`MAX_INFLIGHT`]
//! requests / [`MAX_INFLIGHT_BYTES`] bytes) and the server may answer in any
//! order. Several threads may use one device concurrently.
//!
//! Multiple connections: when (and only when) the server advertises
//! `CAN_MULTI_CONN`, the device opens [`NbdOptions::connections`] (or the
//! URI's `?connections=N`; default [`DEFAULT_CONNECTIONS`]) connections to
//! the export, each with its own I/O thread, and hands requests to them
//! round robin. A flush goes on one of them: `CAN_MULTI_CONN` promises it
//! covers the writes replied to on every connection, and a write call
//! returns only once all its replies are in. Losing any connection ends the
//! whole device, as losing the only one does.
//!
//! Mapping of the [`BlockDevice`] contract:
//!
//! * read / write → `NBD_CMD_READ` / `NBD_CMD_WRITE`, split at the maximum
//!   request size (the server's `NBD_INFO_BLOCK_SIZE` maximum, else 32 MiB,
//!   and never more than 32 MiB).
//! * flush → `NBD_CMD_FLUSH`, sent only once every outstanding request of
//!   its connection has been replied to (the server's flush covers only
//!   what it replied to before processing it). A server without `SEND_FLUSH` has nothing to
//!   flush (write-through): flush is Ok.
//! * barrier → the same flush: NBD has no ordering-only primitive.
//! * write_fua → `NBD_CMD_WRITE` with `NBD_CMD_FLAG_FUA` when the server
//!   advertises `SEND_FUA` ([`BlockDevice::has_fua`]), else write + flush.
//! * discard → `NBD_CMD_TRIM` when advertised (a hint; `EOPNOTSUPP` is Ok),
//!   else nothing.
//! * write_zeroes → `NBD_CMD_WRITE_ZEROES` when advertised, else writes of
//!   zero buffers of at most 1 MiB.
//! * Geometry: size from `NBD_INFO_EXPORT`; block size 4096 unless the
//!   server prefers larger, needs larger (minimum block size), the export
//!   size is not a multiple, or [`NbdOptions::block_size`] says otherwise.
//!   A trailing partial block is ignored. `atomic_unit` = 0 (NBD promises
//!   nothing about torn writes).
//!
//! Errors: a server error reply becomes [`BlockError::Io`] with the errno it
//! names (EIO, ENOSPC, ...); the connection stays usable. A lost connection,
//! a protocol violation or a request timeout ends the connection for good:
//! that call and **every later call** fail; there is no silent reconnect
//! (writes may have been lost, so the filesystem has to reopen the device).
//! Connect and handshake are bounded by [`NbdOptions::connect_timeout`];
//! each wait for a reply by [`NbdOptions::io_timeout`].
//!
//! Structured replies (`NBD_OPT_STRUCTURED_REPLY`) are asked for and used
//! where the server offers them: reads may arrive as data and hole chunks
//! (holes are zero-filled without crossing the network), errors as chunks
//! with a message and the failing offset.
//!
//! Hostile servers: every length read from the server is checked before
//! anything is allocated (option replies are capped at 16 KiB, simple read
//! replies carry the length *we* asked for, structured chunks must lie
//! inside their request, never overlap and cover it exactly; unknown
//! cookies and any violation end the connection).
//!
//! Read data goes from the socket straight into the caller's buffer (no
//! intermediate buffer, no copy): each read request lends its slice of the
//! buffer to the I/O thread until the call returns. A chunk's range is
//! validated before any of its bytes land; holes are zeroed in place; a
//! read that fails (server error, protocol violation, lost connection)
//! returns its buffer zeroed, so neither partial data nor the buffer's
//! previous contents are left in it.
mod conn;
mod proto;
mod tls;
mod uri;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc as tmpsc;

use crate::device::{check_io, check_range};
use crate::{BlockDevice, BlockError, Capabilities, Geometry, Result, WriteReq};
use conn::{io_thread, os_errno, ConnConfig, Dest, Outcome, Request, ServerError, Shared};
use proto::{
    put_request, NegError, CMD_FLAG_FUA, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE,
    CMD_WRITE_ZEROES, REQUEST_LEN,
};

pub use proto::{flags, ExportInfo};
pub use tls::{CA_CERT, CLIENT_CERT, CLIENT_KEY};
pub use uri::{parse_uri, NbdAddr, NbdTarget, TlsParams, DEFAULT_PORT};

/// Default block size of NBD devices.
pub const DEFAULT_NBD_BLOCK_SIZE: u32 = 4096;
/// Largest single READ/WRITE sent (the protocol's portable maximum, and
/// qemu-nbd's limit).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Requests in flight per call, at most.
pub const MAX_INFLIGHT: usize = 64;
/// Payload bytes in flight per call, at most (bounds the copies held).
pub const MAX_INFLIGHT_BYTES: usize = 64 << 20;
/// Large reads and writes are sent as requests of this size, in flight
/// together (see `NbdDevice::piece`).
pub const PIPELINE_PIECE: usize = 256 << 10;
/// Connections opened by default when the server advertises
/// `CAN_MULTI_CONN`.
pub const DEFAULT_CONNECTIONS: usize = 4;
/// Handshake bound for the connections after the first.
const EXTRA_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most connections one device opens.
pub const MAX_CONNECTIONS: usize = 16;
/// Zero buffer size when write-zeroes is emulated.
const ZERO_CHUNK: usize = 1 << 20;
/// Largest TRIM sent at once.
const TRIM_CHUNK: u64 = 1 << 30;

/// Options of [`NbdDevice::connect`].
#[derive(Clone, Debug)]
pub struct NbdOptions {
    /// Refuse every modifying operation.
    pub read_only: bool,
    /// Logical block size (must be at least the server's minimum block size).
    pub block_size: Option<u32>,
    /// Bound on connect + handshake.
    pub connect_timeout: Duration,
    /// Longest wait for any reply while requests are outstanding; on expiry
    /// the connection is dropped and the device becomes unusable. `None`
    /// waits forever.
    pub io_timeout: Option<Duration>,
    /// Connections to open when the server advertises `CAN_MULTI_CONN`
    /// (flush on one covers writes completed on all); `None`:
    /// [`DEFAULT_CONNECTIONS`]. Without `CAN_MULTI_CONN` one is opened,
    /// whatever this says. Capped at [`MAX_CONNECTIONS`].
    pub connections: Option<usize>,
    /// Ask for structured replies (`NBD_OPT_STRUCTURED_REPLY`): sparse
    /// reads (holes are not sent) and error messages with offsets. Used
    /// only where the server offers them.
    pub structured_replies: bool,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            read_only: false,
            connections: None,
            structured_replies: true,
            block_size: None,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Some(Duration::from_secs(120)),
        }
    }
}

/// A block device on an NBD server. See the module documentation.
pub struct NbdDevice {
    target: NbdTarget,
    info: ExportInfo,
    geo: Geometry,
    read_only: bool,
    max_payload: u32,
    io_timeout: Option<Duration>,
    /// One or more connections (more only with `CAN_MULTI_CONN`).
    conns: Vec<Conn>,
    /// Round-robin position for the next request.
    next_conn: AtomicUsize,
}

impl std::fmt::Debug for NbdDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdDevice")
            .field("target", &self.target.to_string())
            .field("info", &self.info)
            .field("geometry", &self.geo)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

/// One connection: its I/O thread and the channel to it.
struct Conn {
    tx: tmpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Conn {
    fn thread_finished(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|t| t.is_finished())
    }

    fn send_disconnect(&self) {
        let (reply, _rx) = mpsc::channel();
        let _ = self.tx.send(Request {
            msg: Vec::new(),
            cookie: self.shared.next_cookie.fetch_add(1, Ordering::Relaxed),
            offset: 0,
            len: 0,
            read_len: 0,
            dest: None,
            drain_first: true,
            disconnect: true,
            tag: 0,
            reply,
        });
    }
}

/// The read buffers of one `run`, lent to the I/O threads: revoked (all
/// of them) before `run` returns, also on an early return or a panic.
struct Registrations<'d> {
    dev: &'d NbdDevice,
    dests: Vec<Arc<Dest>>,
}

impl Registrations<'_> {
    fn revoke_all(&mut self) {
        for d in self.dests.drain(..) {
            if !d.try_revoke() {
                // An I/O thread is writing into this buffer right now: the
                // request was abandoned mid-reply (only on an error path,
                // where the device is lost anyway). Abort the connections,
                // which drops their readers and so the lock.
                self.dev
                    .kill_all("a read was abandoned while its reply was arriving");
                d.revoke();
            }
        }
    }
}

impl Drop for Registrations<'_> {
    fn drop(&mut self) {
        self.revoke_all();
    }
}

/// Payload of one job.
enum Data<'a> {
    None,
    Out(&'a [u8]),
    In(&'a mut [u8]),
}

/// One NBD request to run.
struct Job<'a> {
    cmd: u16,
    /// Command flags (`NBD_CMD_FLAG_FUA`).
    flags: u16,
    offset: u64,
    len: u32,
    data: Data<'a>,
}

fn io_err(op: &'static str, kind: io::ErrorKind, msg: String) -> BlockError {
    BlockError::io(op, io::Error::new(kind, msg))
}

fn lost(op: &'static str, why: &str) -> BlockError {
    io_err(
        op,
        io::ErrorKind::NotConnected,
        format!("NBD connection lost ({why}); reopen the device"),
    )
}

/// The error of an error reply. A plain one keeps the errno (so
/// `raw_os_error()` names it); one with a message or an offset (structured
/// replies) says where and why, with the errno's kind.
fn server_error(op: &'static str, errno: i32, se: &ServerError) -> BlockError {
    let os = io::Error::from_raw_os_error(errno);
    if se.msg.is_empty() && se.offset.is_none() {
        return BlockError::io(op, os);
    }
    let mut m = format!("{os}");
    if let Some(o) = se.offset {
        m.push_str(&format!(" at byte {o}"));
    }
    if !se.msg.is_empty() {
        let msg: String = se
            .msg
            .chars()
            .filter(|c| !c.is_control())
            .take(512)
            .collect();
        m.push_str(&format!(" (server: {msg})"));
    }
    tracing::debug!(op, errno, offset = ?se.offset, msg = %se.msg, "NBD error reply");
    io_err(op, os.kind(), m)
}

/// Choose the logical block size; see the module documentation.
fn choose_block_size(size: u64, min: u32, pref: u32, want: Option<u32>) -> Result<u32> {
    if min > Geometry::MAX_BLOCK_SIZE || !min.is_power_of_two() {
        return Err(BlockError::Invalid(format!(
            "NBD server's minimum block size {min} is not a power of two up to 65536"
        )));
    }
    if let Some(b) = want {
        if !Geometry::valid_block_size(b) {
            return Err(BlockError::Invalid(format!(
                "block size {b} is not a power of two in 512..=65536"
            )));
        }
        if b < min {
            return Err(BlockError::Invalid(format!(
                "block size {b} is below the NBD server's minimum block size {min}"
            )));
        }
        return Ok(b);
    }
    let floor = min.max(Geometry::MIN_BLOCK_SIZE);
    let mut b = if pref > DEFAULT_NBD_BLOCK_SIZE
        && pref <= Geometry::MAX_BLOCK_SIZE
        && pref.is_power_of_two()
    {
        pref
    } else {
        DEFAULT_NBD_BLOCK_SIZE
    }
    .max(floor);
    while b > floor && !size.is_multiple_of(b as u64) {
        b /= 2;
    }
    Ok(b)
}

impl NbdDevice {
    /// Connect to the server named by an NBD URI.
    pub fn open_uri(uri: &str, opts: &NbdOptions) -> Result<NbdDevice> {
        Self::connect(parse_uri(uri)?, opts)
    }

    /// Connect to `target` and negotiate its export; with `CAN_MULTI_CONN`,
    /// open the further connections [`NbdOptions::connections`] asks for.
    pub fn connect(target: NbdTarget, opts: &NbdOptions) -> Result<NbdDevice> {
        let want = opts
            .connections
            .or(target.connections)
            .unwrap_or(DEFAULT_CONNECTIONS)
            .clamp(1, MAX_CONNECTIONS);
        let tls = match &target.tls {
            Some(p) => Some(tls::setup(&target, p)?),
            None => None,
        };
        let (first, info) = Self::open_conn(&target, opts, &tls)?;
        let mut conns = vec![first];
        if want > 1 && info.flags & flags::CAN_MULTI_CONN != 0 {
            // The others in parallel, each bounded by a short timeout: a
            // server at its client limit (qemu-nbd --shared=N) leaves the
            // extra ones waiting without a greeting; the device then keeps
            // the connections it got instead of stalling the open.
            let extra_opts = NbdOptions {
                connect_timeout: opts.connect_timeout.min(EXTRA_CONNECT_TIMEOUT),
                ..opts.clone()
            };
            let results: Vec<Result<(Conn, ExportInfo)>> = std::thread::scope(|sc| {
                let hs: Vec<_> = (1..want)
                    .map(|_| sc.spawn(|| Self::open_conn(&target, &extra_opts, &tls)))
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(BlockError::Invalid("NBD connect thread panicked".into()))
                        })
                    })
                    .collect()
            });
            let mut failed = 0;
            for r in results {
                match r {
                    Ok((c, i)) if i.size == info.size && i.flags == info.flags => conns.push(c),
                    Ok((c, i)) => {
                        // Not the same export any more: do not mix them.
                        c.send_disconnect();
                        failed += 1;
                        tracing::warn!(target = %target, first = ?info, now = ?i,
                            "NBD export changed between connections; dropping one");
                    }
                    Err(e) => {
                        failed += 1;
                        tracing::debug!(target = %target, error = %e, "extra NBD connection failed");
                    }
                }
            }
            if failed > 0 {
                tracing::warn!(target = %target, connections = conns.len(), wanted = want,
                    "the NBD server took fewer connections than asked for (its client limit?); \
                     set ?connections=N to match");
            }
        }
        let dev = Self::from_info(target, info, opts, conns)?;
        tracing::debug!(target = %dev.target, info = ?dev.info, geo = ?dev.geo,
            connections = dev.conns.len(), "NBD export opened");
        Ok(dev)
    }

    /// Open one connection (its I/O thread) and run the handshake.
    fn open_conn(
        target: &NbdTarget,
        opts: &NbdOptions,
        tls: &Option<tls::TlsSetup>,
    ) -> Result<(Conn, ExportInfo)> {
        let (tx, rx) = tmpsc::unbounded_channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let shared = Arc::new(Shared::new());
        let thread = {
            let cfg = ConnConfig {
                addr: target.addr.clone(),
                export: target.export.clone(),
                timeout: opts.connect_timeout,
                structured: opts.structured_replies,
                tls: tls.clone(),
            };
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("nbd-io".into())
                .spawn(move || io_thread(cfg, rx, shared, ready_tx))
                .map_err(|e| BlockError::io("nbd connect", e))?
        };
        let res = ready_rx
            .recv_timeout(opts.connect_timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| {
                Err(NegError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "NBD connect/handshake timed out",
                )))
            });
        match res {
            Ok(info) => Ok((
                Conn {
                    tx,
                    shared,
                    thread: Mutex::new(Some(thread)),
                },
                info,
            )),
            Err(e) => {
                shared.abort.notify_one();
                drop(tx);
                Err(match e {
                    NegError::Io(e) => io_err("nbd connect", e.kind(), format!("{target}: {e}")),
                    NegError::Proto(m) => BlockError::Invalid(format!("{target}: {m}")),
                })
            }
        }
    }

    fn from_info(
        target: NbdTarget,
        info: ExportInfo,
        opts: &NbdOptions,
        conns: Vec<Conn>,
    ) -> Result<NbdDevice> {
        // The URI's ?timeout= wins over the options (the tools pass the
        // defaults).
        let io_timeout = target.io_timeout.or(opts.io_timeout);
        // Build the device first so that an error below still disconnects
        // cleanly (Drop).
        let mut dev = NbdDevice {
            target,
            info: info.clone(),
            geo: Geometry {
                block_size: DEFAULT_NBD_BLOCK_SIZE,
                block_count: 0,
                atomic_unit: 0,
                preferred_io: 1 << 20,
                caps: Capabilities::default(),
            },
            read_only: opts.read_only || info.flags & flags::READ_ONLY != 0,
            max_payload: MAX_PAYLOAD,
            io_timeout,
            conns,
            next_conn: AtomicUsize::new(0),
        };
        let (min, pref, max) = info.block_size.unwrap_or((1, 4096, u32::MAX));
        let bs = choose_block_size(info.size, min, pref, opts.block_size)?;
        let block_count = info.size / bs as u64;
        if block_count == 0 {
            return Err(BlockError::Invalid(format!(
                "{}: export of {} bytes is smaller than one {bs}-byte block",
                dev.target, info.size
            )));
        }
        let max_payload = max.min(MAX_PAYLOAD) / bs * bs;
        if max_payload == 0 {
            return Err(BlockError::Invalid(format!(
                "{}: server's maximum request size {max} is below the block size {bs}",
                dev.target
            )));
        }
        dev.max_payload = max_payload;
        dev.geo = Geometry {
            block_size: bs,
            block_count,
            atomic_unit: 0,
            preferred_io: (1u32 << 20).min(max_payload).max(bs),
            caps: Capabilities {
                discard: info.flags & flags::SEND_TRIM != 0,
                write_zeroes: info.flags & flags::SEND_WRITE_ZEROES != 0,
                native_barrier: false,
            },
        };
        Ok(dev)
    }

    /// What the handshake reported (size, transmission flags, block sizes).
    pub fn export_info(&self) -> &ExportInfo {
        &self.info
    }

    /// Largest single READ/WRITE this device sends, in bytes.
    pub fn max_request(&self) -> u32 {
        self.max_payload
    }

    /// Where this device is served from.
    pub fn target(&self) -> &NbdTarget {
        &self.target
    }

    /// Whether the connection is gone (every call will fail). With several
    /// connections, losing any one of them ends the device.
    pub fn is_dead(&self) -> bool {
        self.dead().is_some()
    }

    /// Number of connections in use (more than one only when the server
    /// advertises `CAN_MULTI_CONN`).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Why the device is unusable: the first dead connection's reason.
    fn dead(&self) -> Option<String> {
        self.conns.iter().find_map(|c| c.shared.dead())
    }

    /// End every connection (a timeout or a server shutdown): the state of
    /// the server is unknown, so nothing more is sent.
    fn kill_all(&self, why: &str) {
        for c in &self.conns {
            c.shared.set_dead(why.to_string());
            c.shared.abort.notify_one();
        }
    }

    fn has(&self, flag: u16) -> bool {
        self.info.flags & flag != 0
    }

    fn check_alive(&self, op: &'static str) -> Result<()> {
        match self.dead() {
            Some(why) => Err(lost(op, &why)),
            None => Ok(()),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(BlockError::Invalid(format!(
                "{} is read-only{}",
                self.target,
                if self.has(flags::READ_ONLY) {
                    " (export flag)"
                } else {
                    ""
                }
            )))
        } else {
            Ok(())
        }
    }

    fn off(&self, block: u64) -> u64 {
        block * self.geo.block_size as u64
    }

    /// Size of the requests a large transfer is split into: pieces of
    /// [`PIPELINE_PIECE`] in flight together overlap the server's disk I/O
    /// with the socket transfer (one 1 MiB request at a time is ~2.5x
    /// slower on qemu-nbd).
    fn piece(&self) -> usize {
        (self.max_payload as usize).min(PIPELINE_PIECE.max(self.geo.block_size as usize))
    }

    /// Split a data transfer at `block` into jobs of at most `piece()` bytes.
    fn split_out<'a>(&self, cmd: u16, block: u64, data: &'a [u8], jobs: &mut Vec<Job<'a>>) {
        let off = self.off(block);
        let piece = self.piece();
        for (i, c) in data.chunks(piece).enumerate() {
            jobs.push(Job {
                cmd,
                flags: 0,
                offset: off + (i * piece) as u64,
                len: c.len() as u32,
                data: Data::Out(c),
            });
        }
    }

    fn split_in<'a>(&self, block: u64, buf: &'a mut [u8], jobs: &mut Vec<Job<'a>>) {
        let off = self.off(block);
        let mp = self.piece();
        for (i, c) in buf.chunks_mut(mp).enumerate() {
            jobs.push(Job {
                cmd: CMD_READ,
                flags: 0,
                offset: off + (i * mp) as u64,
                len: c.len() as u32,
                data: Data::In(c),
            });
        }
    }

    /// Split a payload-less range command into jobs of at most `chunk` bytes.
    fn split_range(&self, cmd: u16, block: u64, count: u64, chunk: u64, jobs: &mut Vec<Job<'_>>) {
        let mut off = self.off(block);
        let end = self.off(block + count);
        while off < end {
            let n = (end - off).min(chunk);
            jobs.push(Job {
                cmd,
                flags: 0,
                offset: off,
                len: n as u32,
                data: Data::None,
            });
            off += n;
        }
    }

    /// Send one request to the I/O thread of the next connection, round
    /// robin. A flush may go on any one: with `CAN_MULTI_CONN` it covers
    /// writes replied to on every connection (and there is one otherwise).
    fn submit(
        &self,
        job: &Job<'_>,
        dest: Option<Arc<Dest>>,
        tag: usize,
        reply: &mpsc::Sender<conn::Reply>,
    ) -> bool {
        let n = self.conns.len();
        let c = &self.conns[self.next_conn.fetch_add(1, Ordering::Relaxed) % n];
        let cookie = c.shared.next_cookie.fetch_add(1, Ordering::Relaxed);
        let payload = match &job.data {
            Data::Out(d) => *d,
            _ => &[][..],
        };
        let mut msg = Vec::with_capacity(REQUEST_LEN + payload.len());
        put_request(&mut msg, job.flags, job.cmd, cookie, job.offset, job.len);
        msg.extend_from_slice(payload);
        let req = Request {
            msg,
            cookie,
            offset: job.offset,
            len: job.len,
            read_len: if job.cmd == CMD_READ { job.len } else { 0 },
            dest,
            drain_first: job.cmd == CMD_FLUSH,
            disconnect: false,
            tag,
            reply: reply.clone(),
        };
        c.tx.send(req).is_ok()
    }

    /// Run `jobs` with up to [`MAX_INFLIGHT`] in flight; wait for every one
    /// submitted. The first server error stops further submissions and is
    /// returned once the in-flight ones have completed.
    ///
    /// Reads land straight in the caller's buffers (see [`Dest`]). Once
    /// requests are out, an error zeroes those buffers: a failed read never
    /// leaves a mix of new data and the buffers' previous contents behind.
    fn run(&self, op: &'static str, mut jobs: Vec<Job<'_>>) -> Result<()> {
        self.check_alive(op)?;
        let mut regs = Registrations {
            dev: self,
            dests: Vec::new(),
        };
        // `jobs` is final: register each read buffer in place. `regs` revokes
        // the registrations before this function returns or unwinds, and
        // nothing below reads or writes a `Data::In` buffer until then (the
        // loop looks at job lengths and commands only).
        let dests: Vec<Option<Arc<Dest>>> = jobs
            .iter_mut()
            .map(|j| match &mut j.data {
                Data::In(buf) => {
                    // SAFETY: `buf` borrows the caller's buffer for longer
                    // than this call, and is not touched until `regs` has
                    // revoked this registration (`revoke_all` below, or its
                    // drop on an early return or unwind).
                    let d = unsafe { Dest::register(buf) };
                    regs.dests.push(d.clone());
                    Some(d)
                }
                _ => None,
            })
            .collect();
        let res = self.run_registered(op, &jobs, &dests);
        drop(dests);
        regs.revoke_all();
        if res.is_err() {
            for j in &mut jobs {
                if let Data::In(buf) = &mut j.data {
                    buf.fill(0);
                }
            }
        }
        res
    }

    fn run_registered(
        &self,
        op: &'static str,
        jobs: &[Job<'_>],
        dests: &[Option<Arc<Dest>>],
    ) -> Result<()> {
        let (reply_tx, reply_rx) = mpsc::channel();
        let mut next = 0;
        let mut inflight = 0usize;
        let mut inflight_bytes = 0usize;
        let mut first_err: Option<BlockError> = None;
        let payload_of = |j: &Job<'_>| match j.data {
            Data::None => 0,
            _ => j.len as usize,
        };
        loop {
            while first_err.is_none()
                && next < jobs.len()
                && inflight < MAX_INFLIGHT
                && (inflight == 0 || inflight_bytes + payload_of(&jobs[next]) <= MAX_INFLIGHT_BYTES)
            {
                if !self.submit(&jobs[next], dests[next].clone(), next, &reply_tx) {
                    let why = self.dead().unwrap_or_else(|| "I/O thread gone".into());
                    first_err = Some(lost(op, &why));
                    break;
                }
                inflight += 1;
                inflight_bytes += payload_of(&jobs[next]);
                next += 1;
            }
            if inflight == 0 {
                break;
            }
            let reply = match self.wait_reply(op, &reply_rx) {
                Ok(r) => r,
                Err(e) => {
                    // Requests are still out and the device is lost (one
                    // connection ended, or the wait timed out): end every
                    // connection, so that none is left writing into a buffer
                    // this call is about to hand back.
                    self.kill_all(&e.to_string());
                    return Err(e);
                }
            };
            let job = &jobs[reply.tag];
            inflight -= 1;
            inflight_bytes -= payload_of(job);
            match reply.outcome {
                Outcome::Ok => {}
                Outcome::Server(se) => {
                    let errno = os_errno(se.err);
                    if errno == libc::ESHUTDOWN {
                        // The spec: the client must disconnect.
                        for c in &self.conns {
                            c.shared
                                .set_dead("the server is shutting down (ESHUTDOWN)".into());
                            c.send_disconnect();
                        }
                    }
                    if job.cmd == CMD_TRIM && errno == libc::EOPNOTSUPP {
                        continue; // discard is a hint
                    }
                    first_err.get_or_insert_with(|| server_error(op, errno, &se));
                }
                Outcome::Conn(why) => {
                    first_err.get_or_insert(lost(op, &why));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Wait for the next reply, bounded by the I/O timeout; on expiry the
    /// connection is dropped (the state of the server is unknown).
    fn wait_reply(
        &self,
        op: &'static str,
        rx: &mpsc::Receiver<conn::Reply>,
    ) -> Result<conn::Reply> {
        let start = Instant::now();
        loop {
            let tick = Duration::from_millis(500);
            let wait = match self.io_timeout {
                Some(t) => t.saturating_sub(start.elapsed()).min(tick),
                None => tick,
            };
            match rx.recv_timeout(wait) {
                Ok(r) => return Ok(r),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(lost(op, "I/O thread gone"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            // The I/O thread answers every request, even when the connection
            // dies; if it exited without doing so (a bug), do not wait forever.
            // (With several connections, one that ended makes the device
            // dead: replies still due on the others are not waited for.)
            let finished = self.conns.iter().any(Conn::thread_finished);
            if finished {
                if let Ok(r) = rx.try_recv() {
                    return Ok(r);
                }
                let why = self.dead().unwrap_or_else(|| "I/O thread gone".into());
                return Err(lost(op, &why));
            }
            if let Some(t) = self.io_timeout {
                if start.elapsed() >= t {
                    let why = format!("no reply within {t:?}");
                    self.kill_all(&why);
                    return Err(io_err(
                        op,
                        io::ErrorKind::TimedOut,
                        format!("NBD request timed out ({why}); the connection was dropped, reopen the device"),
                    ));
                }
            }
        }
    }
}

impl BlockDevice for NbdDevice {
    fn geometry(&self) -> Geometry {
        self.geo
    }

    fn read(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        check_io(&self.geo, block, buf.len())?;
        let mut jobs = Vec::new();
        self.split_in(block, buf, &mut jobs);
        self.run("read", jobs)
    }

    fn write(&self, block: u64, data: &[u8]) -> Result<()> {
        check_io(&self.geo, block, data.len())?;
        self.check_writable()?;
        let mut jobs = Vec::new();
        self.split_out(CMD_WRITE, block, data, &mut jobs);
        self.run("write", jobs)
    }

    fn write_zeroes(&self, block: u64, count: u64) -> Result<()> {
        check_range(&self.geo, block, count)?;
        self.check_writable()?;
        let mut jobs = Vec::new();
        if self.has(flags::SEND_WRITE_ZEROES) {
            self.split_range(
                CMD_WRITE_ZEROES,
                block,
                count,
                self.max_payload as u64,
                &mut jobs,
            );
            return self.run("write_zeroes", jobs);
        }
        let total = count * self.geo.block_size as u64;
        let zeros = vec![0u8; total.min(ZERO_CHUNK as u64) as usize];
        let mut off = self.off(block);
        let end = off + total;
        while off < end {
            let n = (end - off).min(zeros.len() as u64) as usize;
            jobs.push(Job {
                cmd: CMD_WRITE,
                flags: 0,
                offset: off,
                len: n as u32,
                data: Data::Out(&zeros[..n]),
            });
            off += n as u64;
        }
        self.run("write_zeroes", jobs)
    }

    fn discard(&self, block: u64, count: u64) -> Result<()> {
        check_range(&self.geo, block, count)?;
        self.check_writable()?;
        if !self.has(flags::SEND_TRIM) {
            return Ok(());
        }
        let mut jobs = Vec::new();
        self.split_range(CMD_TRIM, block, count, TRIM_CHUNK, &mut jobs);
        self.run("discard", jobs)
    }

    fn flush(&self) -> Result<()> {
        self.check_alive("flush")?;
        if self.read_only || !self.has(flags::SEND_FLUSH) {
            return Ok(());
        }
        self.run(
            "flush",
            vec![Job {
                cmd: CMD_FLUSH,
                flags: 0,
                offset: 0,
                len: 0,
                data: Data::None,
            }],
        )
    }

    /// With `SEND_FUA`: `NBD_CMD_WRITE` with `NBD_CMD_FLAG_FUA` (each piece of
    /// a split write carries the flag), one round trip instead of a write
    /// and a flush. Without it: write, then flush.
    fn write_fua(&self, block: u64, data: &[u8]) -> Result<()> {
        if !self.has_fua() {
            self.write(block, data)?;
            return self.flush();
        }
        check_io(&self.geo, block, data.len())?;
        self.check_writable()?;
        let mut jobs = Vec::new();
        self.split_out(CMD_WRITE, block, data, &mut jobs);
        for j in &mut jobs {
            j.flags = CMD_FLAG_FUA;
        }
        self.run("write", jobs)
    }

    fn has_fua(&self) -> bool {
        self.has(flags::SEND_FUA) && !self.read_only
    }

    fn write_batch(&self, writes: &[WriteReq<'_>]) -> Result<()> {
        // "Stops at the first error": validate in order; the writes before
        // an invalid one are still issued (all in flight together).
        let mut jobs = Vec::new();
        let mut bad = None;
        for w in writes {
            if let Err(e) =
                check_io(&self.geo, w.block, w.data.len()).and_then(|_| self.check_writable())
            {
                bad = Some(e);
                break;
            }
            self.split_out(CMD_WRITE, w.block, w.data, &mut jobs);
        }
        if !jobs.is_empty() {
            self.run("write", jobs)?;
        }
        bad.map_or(Ok(()), Err)
    }

    fn read_batch(&self, reads: &mut [(u64, &mut [u8])]) -> Result<()> {
        let mut jobs = Vec::new();
        let mut bad = None;
        for (block, buf) in reads.iter_mut() {
            if let Err(e) = check_io(&self.geo, *block, buf.len()) {
                bad = Some(e);
                break;
            }
            self.split_in(*block, buf, &mut jobs);
        }
        if !jobs.is_empty() {
            self.run("read", jobs)?;
        }
        bad.map_or(Ok(()), Err)
    }

    fn describe(&self) -> String {
        format!(
            "{}{}",
            self.target,
            if self.read_only { " (read-only)" } else { "" }
        )
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        for c in &self.conns {
            if c.shared.dead().is_none() {
                c.send_disconnect();
            } else {
                c.shared.abort.notify_one();
            }
        }
        // The I/O threads end within ~2 s of the disconnect; do not block a
        // drop longer than that on a stuck server.
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in &mut self.conns {
            let t = c.thread.get_mut().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(t) = t {
                while !t.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if t.is_finished() {
                    let _ = t.join();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::choose_block_size;

    #[test]
    fn block_size_choice() {
        let m = 1 << 30;
        assert_eq!(choose_block_size(m, 1, 4096, None).unwrap(), 4096);
        assert_eq!(choose_block_size(m, 512, 512, None).unwrap(), 4096);
        assert_eq!(choose_block_size(m, 1, 65536, None).unwrap(), 65536);
        assert_eq!(choose_block_size(m, 1, 1 << 20, None).unwrap(), 4096);
        assert_eq!(choose_block_size(m, 8192, 8192, None).unwrap(), 8192);
        assert_eq!(choose_block_size(m + 512, 1, 4096, None).unwrap(), 512);
        assert_eq!(choose_block_size(m + 1, 1, 4096, None).unwrap(), 512);
        assert_eq!(choose_block_size(m + 2048, 1024, 4096, None).unwrap(), 2048);
        assert_eq!(choose_block_size(m, 1, 4096, Some(512)).unwrap(), 512);
        assert!(choose_block_size(m, 4096, 4096, Some(512)).is_err());
        assert!(choose_block_size(m, 1, 4096, Some(3000)).is_err());
        assert!(choose_block_size(m, 3, 4096, None).is_err());
        assert!(choose_block_size(m, 1 << 17, 1 << 17, None).is_err());
    }
}
