//! The I/O thread: one tokio current-thread runtime driving one connection.
//!
//! Callers hand it fully encoded requests through an unbounded channel; the
//! writer half sends them in arrival order, the reader half matches replies
//! to requests by cookie (the server may reply in any order) and answers
//! each caller on its own std channel. Any transport or protocol error ends
//! the connection: every pending and every later request fails, and the
//! reason is kept in [`Shared`] for the error messages.
use std::collections::{BTreeMap, HashMap};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc as tmpsc, Notify};

use super::proto::{
    errno, greet, options, put_request, starttls, ExportInfo, NegError, CMD_DISC,
    MAX_ERROR_MESSAGE, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, REPLY_TYPE_ERROR_OFFSET, REPLY_TYPE_NONE,
    REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, REQUEST_LEN, SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
};
use super::tls::TlsSetup;
use super::uri::NbdAddr;

/// State shared by the callers and the I/O thread.
pub(crate) struct Shared {
    /// Why the connection is gone; `None` while it is up.
    dead: Mutex<Option<String>>,
    /// Tells the I/O thread to drop the connection now.
    pub(crate) abort: Notify,
    /// Next request cookie (unique for the life of the connection).
    pub(crate) next_cookie: AtomicU64,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Shared {
            dead: Mutex::new(None),
            abort: Notify::new(),
            next_cookie: AtomicU64::new(1),
        }
    }

    pub(crate) fn dead(&self) -> Option<String> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Record why the connection is unusable (the first reason wins).
    pub(crate) fn set_dead(&self, why: String) {
        self.set_dead_quietly(why.clone(), false);
    }

    /// As `set_dead`; `closed` marks the normal end (the device was closed
    /// by its owner), which is not worth a warning.
    pub(crate) fn set_dead_quietly(&self, why: String, closed: bool) {
        let mut d = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        if d.is_none() {
            if closed {
                tracing::debug!(reason = %why, "NBD connection closed");
            } else {
                tracing::warn!(reason = %why, "NBD connection lost");
            }
            *d = Some(why);
        }
    }
}

/// An error reply: the NBD error value and, from a structured reply, the
/// server's message and the offset it names.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServerError {
    pub(crate) err: u32,
    pub(crate) offset: Option<u64>,
    pub(crate) msg: String,
}

/// Where the data of a read's reply goes: the caller's own buffer,
/// registered for as long as the caller waits for the reply. The I/O
/// thread reads reply data from the socket straight into it (no
/// intermediate buffer, no copy, no zero-fill of bytes about to be
/// overwritten); it touches the buffer only while holding the lock, and
/// once the registration is revoked it never touches it again (later data
/// for the request is discarded).
pub(crate) struct Dest {
    buf: Mutex<Option<RawBuf>>,
}

/// A registered `&mut [u8]`: see [`Dest::register`].
struct RawBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a RawBuf stands for a `&mut [u8]` lent to the I/O thread (see
// `Dest::register`): `&mut [u8]` is Send, and the buffer is only reached
// through the `Dest` mutex, so one thread at a time uses it.
unsafe impl Send for RawBuf {}

impl RawBuf {
    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: `register`'s contract keeps the buffer alive and unused by
        // its owner until the registration is revoked, and revoking needs the
        // lock that the caller of this method holds (the slice borrows the
        // guard through `self`), so this is the only reference to it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Dest {
    /// Register `buf` as the destination of a read.
    ///
    /// # Safety
    ///
    /// Until [`Dest::revoke`] has returned (or [`Dest::try_revoke`] has
    /// returned true), `buf` must stay alive and its owner must neither
    /// read nor write it: the I/O thread may write into it at any time.
    pub(crate) unsafe fn register(buf: &mut [u8]) -> Arc<Dest> {
        Arc::new(Dest {
            buf: Mutex::new(Some(RawBuf {
                ptr: NonNull::new(buf.as_mut_ptr()).unwrap_or(NonNull::dangling()),
                len: buf.len(),
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<RawBuf>> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// End the registration; waits while the I/O thread is writing into
    /// the buffer (it holds the lock only while a chunk arrives).
    pub(crate) fn revoke(&self) {
        *self.lock() = None;
    }

    /// End the registration unless the I/O thread is writing into the
    /// buffer right now (false).
    pub(crate) fn try_revoke(&self) -> bool {
        match self.buf.try_lock() {
            Ok(mut g) => *g = None,
            Err(TryLockError::Poisoned(e)) => *e.into_inner() = None,
            Err(TryLockError::WouldBlock) => return false,
        }
        true
    }
}

/// Read `n` bytes of reply data for `dest` at `at` (relative to the
/// request) straight into the caller's buffer; if the caller no longer
/// waits (registration revoked), read and drop them.
#[allow(clippy::await_holding_lock)] // see below
async fn read_into<R: AsyncRead + Unpin>(
    rd: &mut R,
    dest: Option<&Dest>,
    at: usize,
    n: usize,
    what: &str,
) -> Result<(), String> {
    let Some(dest) = dest else {
        return Err("internal error: read data without a destination".into());
    };
    // The guard is held across the awaits on purpose: the lock is what
    // keeps the caller from revoking (and reusing) its buffer while a
    // chunk lands in it. Nothing on this runtime takes it; the caller
    // takes it only to revoke, and if it finds it held (a request it
    // abandons on an error path) it aborts the connection, which drops
    // this future and the guard.
    let mut g = dest.lock();
    match g.as_mut() {
        Some(b) => {
            let Some(s) = b.slice().get_mut(at..at + n) else {
                return Err("internal error: read data outside its buffer".into());
            };
            rd.read_exact(s).await.map_err(|e| read_failed(e, what))?;
        }
        None => {
            drop(g);
            let got = tokio::io::copy(&mut (&mut *rd).take(n as u64), &mut tokio::io::sink())
                .await
                .map_err(|e| read_failed(e, what))?;
            if got != n as u64 {
                return Err("the server closed the connection".into());
            }
        }
    }
    Ok(())
}

/// Zero `at..at + n` of the caller's buffer (a hole chunk).
fn zero_range(dest: Option<&Dest>, at: usize, n: usize) -> Result<(), String> {
    let Some(dest) = dest else {
        return Err("internal error: hole without a destination".into());
    };
    if let Some(b) = dest.lock().as_mut() {
        let Some(s) = b.slice().get_mut(at..at + n) else {
            return Err("internal error: hole outside its buffer".into());
        };
        s.fill(0);
    }
    Ok(())
}

/// What a caller gets back for one request.
pub(crate) enum Outcome {
    /// Success (a read's data is in its destination buffer).
    Ok,
    /// The server answered with an error.
    Server(ServerError),
    /// The connection is gone (reason).
    Conn(String),
}

pub(crate) struct Reply {
    pub(crate) tag: usize,
    pub(crate) outcome: Outcome,
}

/// One request for the I/O thread.
pub(crate) struct Request {
    /// Header and payload, ready for the wire.
    pub(crate) msg: Vec<u8>,
    pub(crate) cookie: u64,
    /// Request offset and length.
    pub(crate) offset: u64,
    pub(crate) len: u32,
    /// Bytes of data the reply carries (reads), 0 otherwise.
    pub(crate) read_len: u32,
    /// Reads: where the data goes.
    pub(crate) dest: Option<Arc<Dest>>,
    /// Wait until no request is in flight before sending (flush, disconnect).
    pub(crate) drain_first: bool,
    /// `NBD_CMD_DISC`: send it, close, and end the thread.
    pub(crate) disconnect: bool,
    pub(crate) tag: usize,
    pub(crate) reply: mpsc::Sender<Reply>,
}

struct Pending {
    /// Request offset and length (structured chunks name absolute offsets).
    offset: u64,
    len: u32,
    read_len: u32,
    dest: Option<Arc<Dest>>,
    tag: usize,
    reply: mpsc::Sender<Reply>,
    /// Structured reply in progress (after its first chunk).
    chunks: Option<Chunks>,
}

/// The chunks of one structured reply received so far.
#[derive(Default)]
struct Chunks {
    count: usize,
    /// Byte ranges covered by data and hole chunks, relative to the
    /// request, start → end; never overlapping.
    covered: BTreeMap<u64, u64>,
    covered_bytes: u64,
    /// The first error chunk.
    error: Option<ServerError>,
}

impl Chunks {
    /// Record `start..end` as covered; false if it overlaps a range already
    /// covered.
    fn cover(&mut self, start: u64, end: u64) -> bool {
        if let Some((_, &e)) = self.covered.range(..=start).next_back() {
            if e > start {
                return false;
            }
        }
        if let Some((&s, _)) = self.covered.range(start..).next() {
            if s < end {
                return false;
            }
        }
        self.covered.insert(start, end);
        self.covered_bytes += end - start;
        true
    }
}

/// Most chunks accepted in one structured reply: enough for a read split
/// at every 512-byte sector, bounded so a hostile server cannot make the
/// coverage map grow without limit.
fn max_chunks(read_len: u32) -> usize {
    16 + read_len as usize / 512
}

type PendingMap = Mutex<HashMap<u64, Pending>>;

/// What one connection needs to connect and negotiate.
#[derive(Clone, Debug)]
pub(crate) struct ConnConfig {
    pub(crate) addr: NbdAddr,
    pub(crate) export: String,
    /// Bound on connect + handshake.
    pub(crate) timeout: Duration,
    /// Ask for structured replies.
    pub(crate) structured: bool,
    /// `nbds`: run `NBD_OPT_STARTTLS` and TLS with this configuration.
    pub(crate) tls: Option<TlsSetup>,
}

/// A connected stream, plain or TLS, Unix or TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connect, greet, optionally switch to TLS, and negotiate the export.
async fn handshake(cfg: &ConnConfig) -> Result<(Box<dyn Io>, ExportInfo), NegError> {
    let mut s: Box<dyn Io> = match &cfg.addr {
        NbdAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        NbdAddr::Tcp { host, port } => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
    };
    let g = greet(&mut s).await?;
    let Some(tls) = &cfg.tls else {
        let info = options(&mut s, g, &cfg.export, cfg.structured, false).await?;
        return Ok((s, info));
    };
    starttls(&mut s, g).await?;
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let mut t = connector
        .connect(tls.server_name.clone(), s)
        .await
        .map_err(|e| {
            match e
                .get_ref()
                .and_then(|i| i.downcast_ref::<tokio_rustls::rustls::Error>())
            {
                // Certificate and protocol failures are configuration errors
                // worth a clear message; transport failures stay I/O errors.
                Some(te) => NegError::Proto(format!(
                "TLS handshake failed: {te} (the server's certificate must be signed by a CA in \
                 tls-certificates=DIR/ca-cert.pem or the system roots, and name {:?}; \
                 tls-hostname=NAME sets the name)",
                tls.server_name.to_str()
            )),
                None => NegError::Io(e),
            }
        })?;
    let info = options(&mut t, g, &cfg.export, cfg.structured, true).await?;
    tracing::debug!(server_name = ?tls.server_name, "NBD connection over TLS");
    Ok((Box::new(t), info))
}

/// Connect to `cfg.addr`, negotiate `cfg.export`, and on success keep
/// serving requests from `rx`. `ready` receives the handshake result
/// exactly once.
pub(crate) fn io_thread(
    cfg: ConnConfig,
    rx: tmpsc::UnboundedReceiver<Request>,
    shared: std::sync::Arc<Shared>,
    ready: mpsc::Sender<Result<ExportInfo, NegError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(NegError::Io(e)));
            return;
        }
    };
    rt.block_on(async move {
        let conn = tokio::time::timeout(cfg.timeout, handshake(&cfg)).await;
        if let Some((s, st)) = handshake_done(conn, &ready) {
            serve(s, st, rx, &shared).await;
        }
    });
}

fn handshake_done<S>(
    conn: Result<Result<(S, ExportInfo), NegError>, tokio::time::error::Elapsed>,
    ready: &mpsc::Sender<Result<ExportInfo, NegError>>,
) -> Option<(S, bool)> {
    match conn {
        Ok(Ok((s, info))) => {
            let st = info.structured_replies;
            // If the opener gave up waiting, there is nobody to serve.
            ready.send(Ok(info)).ok().map(|()| (s, st))
        }
        Ok(Err(e)) => {
            let _ = ready.send(Err(e));
            None
        }
        Err(_) => {
            let _ = ready.send(Err(NegError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "NBD connect/handshake timed out",
            ))));
            None
        }
    }
}

async fn serve<S: AsyncRead + AsyncWrite>(
    stream: S,
    structured: bool,
    mut rx: tmpsc::UnboundedReceiver<Request>,
    shared: &Shared,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let pending: PendingMap = Mutex::new(HashMap::new());
    let drained = Notify::new();
    let end = tokio::select! {
        r = writer(&mut wr, &mut rx, &pending, &drained) => r,
        r = reader(&mut rd, structured, &pending, &drained) => r,
        _ = shared.abort.notified() => Err("connection aborted by the client (request timed out)".to_string()),
    };
    let (reason, closed) = match end {
        Ok(()) => ("the device was closed".to_string(), true),
        Err(e) => (e, false),
    };
    shared.set_dead_quietly(reason.clone(), closed);
    // Fail everything still waiting, then everything queued.
    let pend: Vec<Pending> = pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .map(|(_, p)| p)
        .collect();
    for p in pend {
        let _ = p.reply.send(Reply {
            tag: p.tag,
            outcome: Outcome::Conn(reason.clone()),
        });
    }
    rx.close();
    while let Ok(r) = rx.try_recv() {
        let _ = r.reply.send(Reply {
            tag: r.tag,
            outcome: Outcome::Conn(reason.clone()),
        });
    }
    // Dropping the halves closes the socket.
}

async fn writer<W: AsyncWrite + Unpin>(
    wr: &mut W,
    rx: &mut tmpsc::UnboundedReceiver<Request>,
    pending: &PendingMap,
    drained: &Notify,
) -> Result<(), String> {
    while let Some(req) = rx.recv().await {
        if req.drain_first {
            // FLUSH covers only what was *replied to* before it: wait for
            // every outstanding reply first.
            while !pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                drained.notified().await;
            }
        }
        if req.disconnect {
            let mut m = Vec::with_capacity(REQUEST_LEN);
            put_request(&mut m, 0, CMD_DISC, req.cookie, 0, 0);
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                wr.write_all(&m).await?;
                wr.flush().await?;
                wr.shutdown().await
            })
            .await;
            return Ok(());
        }
        pending.lock().unwrap_or_else(|e| e.into_inner()).insert(
            req.cookie,
            Pending {
                offset: req.offset,
                len: req.len,
                read_len: req.read_len,
                dest: req.dest,
                tag: req.tag,
                reply: req.reply,
                chunks: None,
            },
        );
        wr.write_all(&req.msg)
            .await
            .map_err(|e| format!("sending a request failed: {e}"))?;
        // TLS buffers records until flushed (a no-op on plain sockets):
        // push them out once nothing more is queued.
        if rx.is_empty() {
            wr.flush()
                .await
                .map_err(|e| format!("sending a request failed: {e}"))?;
        }
    }
    Ok(())
}

fn read_failed(e: std::io::Error, what: &str) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "the server closed the connection".to_string()
    } else {
        format!("reading {what} failed: {e}")
    }
}

fn lock(pending: &PendingMap) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hand a finished request's outcome to its caller.
fn complete(pending: &PendingMap, drained: &Notify, p: Pending, outcome: Outcome) {
    if lock(pending).is_empty() {
        drained.notify_one();
    }
    let _ = p.reply.send(Reply {
        tag: p.tag,
        outcome,
    });
}

async fn reader<R: AsyncRead + Unpin>(
    rd: &mut R,
    structured: bool,
    pending: &PendingMap,
    drained: &Notify,
) -> Result<(), String> {
    let mut hdr = [0u8; 16];
    loop {
        rd.read_exact(&mut hdr)
            .await
            .map_err(|e| read_failed(e, "a reply"))?;
        let magic = u32::from_be_bytes(hdr[0..4].try_into().unwrap());
        if magic == STRUCTURED_REPLY_MAGIC {
            if !structured {
                return Err("protocol error: structured reply, which was not negotiated".into());
            }
            structured_chunk(rd, &hdr, pending, drained).await?;
            continue;
        }
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(format!("protocol error: bad reply magic {magic:#x}"));
        }
        let err = u32::from_be_bytes(hdr[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(hdr[8..16].try_into().unwrap());
        let p = lock(pending)
            .remove(&cookie)
            .ok_or_else(|| format!("protocol error: reply for unknown handle {cookie:#x}"))?;
        if p.chunks.is_some() {
            return Err(format!(
                "protocol error: simple reply for handle {cookie:#x} after structured chunks"
            ));
        }
        // A simple reply to a successful read carries exactly the requested
        // length; a reply with an error carries no payload (the protocol:
        // the data is sent only when the error field is zero), so the next
        // header follows at once and the connection stays usable. The
        // length is ours (bounded by the maximum request size), never the
        // server's.
        if p.read_len > 0 && err == 0 {
            read_into(rd, p.dest.as_deref(), 0, p.read_len as usize, "read data").await?;
        }
        let outcome = if err == 0 {
            Outcome::Ok
        } else {
            Outcome::Server(ServerError {
                err,
                ..Default::default()
            })
        };
        complete(pending, drained, p, outcome);
    }
}

/// One chunk of a structured reply (`hdr`: its first 16 bytes). Every
/// length is checked against the request before anything is allocated:
/// data and holes must lie inside the request and never overlap, and at
/// the final chunk (`DONE`) of a successful read they must cover it
/// exactly. Any violation ends the connection.
async fn structured_chunk<R: AsyncRead + Unpin>(
    rd: &mut R,
    hdr: &[u8; 16],
    pending: &PendingMap,
    drained: &Notify,
) -> Result<(), String> {
    let flags = u16::from_be_bytes([hdr[4], hdr[5]]);
    let typ = u16::from_be_bytes([hdr[6], hdr[7]]);
    let cookie = u64::from_be_bytes(hdr[8..16].try_into().unwrap());
    let mut lb = [0u8; 4];
    rd.read_exact(&mut lb)
        .await
        .map_err(|e| read_failed(e, "a structured reply"))?;
    let len = u32::from_be_bytes(lb);
    let bad = |why: String| {
        Err(format!(
            "protocol error: structured reply for handle {cookie:#x}: {why}"
        ))
    };
    let (offset, req_len, read_len, count, dest) = {
        let mut g = lock(pending);
        let Some(p) = g.get_mut(&cookie) else {
            return Err(format!(
                "protocol error: reply for unknown handle {cookie:#x}"
            ));
        };
        let c = p.chunks.get_or_insert_with(Chunks::default);
        c.count += 1;
        (p.offset, p.len, p.read_len, c.count, p.dest.clone())
    };
    if count > max_chunks(read_len) {
        return bad(format!("more than {} chunks", max_chunks(read_len)));
    }
    let done = flags & REPLY_FLAG_DONE != 0;
    let end = offset + read_len as u64;
    match typ {
        REPLY_TYPE_NONE => {
            if len != 0 {
                return bad(format!("NONE chunk of {len} bytes"));
            }
            if !done {
                return bad("NONE chunk without the DONE flag".into());
            }
        }
        REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE => {
            if read_len == 0 {
                return bad(
                    "data or hole chunk in the reply to a request that is not a read".into(),
                );
            }
            // Validate the chunk's range (inside the request, not
            // overlapping an earlier chunk) before a byte of it reaches the
            // caller's buffer.
            let (o, n, is_data) = if typ == REPLY_TYPE_OFFSET_DATA {
                if len <= 8 || len - 8 > read_len {
                    return bad(format!(
                        "data chunk of {len} bytes for a read of {read_len}"
                    ));
                }
                let mut ob = [0u8; 8];
                rd.read_exact(&mut ob)
                    .await
                    .map_err(|e| read_failed(e, "a data chunk"))?;
                let o = u64::from_be_bytes(ob);
                let n = (len - 8) as u64;
                if o < offset || o.checked_add(n).is_none_or(|e| e > end) {
                    return bad(format!(
                        "data at {o}+{n} outside the request {offset}+{read_len}"
                    ));
                }
                (o, n, true)
            } else {
                if len != 12 {
                    return bad(format!("hole chunk of {len} bytes (expected 12)"));
                }
                let mut b = [0u8; 12];
                rd.read_exact(&mut b)
                    .await
                    .map_err(|e| read_failed(e, "a hole chunk"))?;
                let o = u64::from_be_bytes(b[0..8].try_into().unwrap());
                let n = u32::from_be_bytes(b[8..12].try_into().unwrap()) as u64;
                (o, n, false)
            };
            if n == 0 || o < offset || o.checked_add(n).is_none_or(|e| e > end) {
                return bad(format!(
                    "chunk at {o}+{n} outside the request {offset}+{read_len}"
                ));
            }
            let (rs, re) = (o - offset, o - offset + n);
            {
                let mut g = lock(pending);
                let Some(c) = g.get_mut(&cookie).and_then(|p| p.chunks.as_mut()) else {
                    return bad("request vanished".into());
                };
                if !c.cover(rs, re) {
                    return bad(format!("chunk at {o}+{n} overlaps an earlier one"));
                }
            }
            // Every byte of the buffer is now either read from a validated
            // data chunk or zeroed by a hole chunk, each exactly once; a
            // reply that does not cover it all fails at DONE (and the
            // caller then zeroes its buffer).
            if is_data {
                read_into(rd, dest.as_deref(), rs as usize, n as usize, "a data chunk").await?;
            } else {
                zero_range(dest.as_deref(), rs as usize, n as usize)?;
            }
        }
        t if t & (1 << 15) != 0 => {
            // ERROR, ERROR_OFFSET, or an error type we do not know.
            let extra = if t == REPLY_TYPE_ERROR_OFFSET { 8 } else { 0 };
            if len < 6 + extra || len > 6 + MAX_ERROR_MESSAGE + 8 {
                return bad(format!("error chunk of {len} bytes"));
            }
            let mut b = vec![0u8; len as usize];
            rd.read_exact(&mut b)
                .await
                .map_err(|e| read_failed(e, "an error chunk"))?;
            let err = u32::from_be_bytes(b[0..4].try_into().unwrap());
            if err == 0 {
                return bad("error chunk with error 0".into());
            }
            let mlen = u16::from_be_bytes([b[4], b[5]]) as u32;
            let mut e = ServerError {
                err,
                ..Default::default()
            };
            if t == REPLY_TYPE_ERROR || t == REPLY_TYPE_ERROR_OFFSET {
                if 6 + mlen + extra != len {
                    return bad(format!(
                        "error chunk of {len} bytes with a {mlen}-byte message"
                    ));
                }
                e.msg = String::from_utf8_lossy(&b[6..6 + mlen as usize]).into_owned();
                if t == REPLY_TYPE_ERROR_OFFSET {
                    let at = 6 + mlen as usize;
                    let o = u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
                    if req_len > 0 && (o < offset || o >= offset + req_len as u64) {
                        return bad(format!(
                            "error offset {o} outside the request {offset}+{req_len}"
                        ));
                    }
                    e.offset = Some(o);
                }
            }
            let mut g = lock(pending);
            let Some(c) = g.get_mut(&cookie).and_then(|p| p.chunks.as_mut()) else {
                return bad("request vanished".into());
            };
            c.error.get_or_insert(e);
        }
        t => return bad(format!("unexpected chunk type {t}")),
    }
    if !done {
        return Ok(());
    }
    let Some(mut p) = lock(pending).remove(&cookie) else {
        return bad("request vanished".into());
    };
    let c = p.chunks.take().unwrap_or_default();
    let outcome = if let Some(e) = c.error {
        Outcome::Server(e)
    } else if p.read_len > 0 && c.covered_bytes != p.read_len as u64 {
        // Bytes no chunk wrote would be stale: never a success.
        return bad(format!(
            "chunks cover {} of the {} bytes read",
            c.covered_bytes, p.read_len
        ));
    } else {
        Outcome::Ok
    };
    complete(pending, drained, p, outcome);
    Ok(())
}

/// Linux errno for an NBD error value.
pub(crate) fn os_errno(nbd_err: u32) -> i32 {
    errno(nbd_err)
}
