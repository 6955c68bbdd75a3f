//! The I/O thread: one tokio current-thread runtime driving one connection.
//!
//! Callers hand it fully encoded requests through an unbounded channel; the
//! writer half sends them in arrival order, the reader half matches replies
//! to requests by cookie (the server may reply in any order) and answers
//! each caller on its own std channel. Any transport or protocol error ends
//! the connection: every pending and every later request fails, and the
//! reason is kept in [`Shared`] for the error messages.
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc as tmpsc, Notify};

use super::proto::{
    errno, negotiate, put_request, ExportInfo, NegError, CMD_DISC, REQUEST_LEN, SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
};
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

/// What a caller gets back for one request.
pub(crate) enum Outcome {
    /// Success; the data of a read.
    Ok(Option<Vec<u8>>),
    /// The server answered with this NBD error value.
    Server(u32),
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
    /// Bytes of data the reply carries (reads), 0 otherwise.
    pub(crate) read_len: u32,
    /// Wait until no request is in flight before sending (flush, disconnect).
    pub(crate) drain_first: bool,
    /// `NBD_CMD_DISC`: send it, close, and end the thread.
    pub(crate) disconnect: bool,
    pub(crate) tag: usize,
    pub(crate) reply: mpsc::Sender<Reply>,
}

struct Pending {
    read_len: u32,
    tag: usize,
    reply: mpsc::Sender<Reply>,
}

type PendingMap = Mutex<HashMap<u64, Pending>>;

/// Connect to `addr`, negotiate `export`, and on success keep serving
/// requests from `rx`. `ready` receives the handshake result exactly once.
pub(crate) fn io_thread(
    addr: NbdAddr,
    export: String,
    timeout: Duration,
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
        match addr {
            NbdAddr::Unix(path) => {
                let conn = tokio::time::timeout(timeout, async {
                    let mut s = tokio::net::UnixStream::connect(&path).await?;
                    let info = negotiate(&mut s, &export).await?;
                    Ok::<_, NegError>((s, info))
                })
                .await;
                if let Some(s) = handshake_done(conn, &ready) {
                    serve(s, rx, &shared).await;
                }
            }
            NbdAddr::Tcp { host, port } => {
                let conn = tokio::time::timeout(timeout, async {
                    let mut s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                    s.set_nodelay(true)?;
                    let info = negotiate(&mut s, &export).await?;
                    Ok::<_, NegError>((s, info))
                })
                .await;
                if let Some(s) = handshake_done(conn, &ready) {
                    serve(s, rx, &shared).await;
                }
            }
        }
    });
}

fn handshake_done<S>(
    conn: Result<Result<(S, ExportInfo), NegError>, tokio::time::error::Elapsed>,
    ready: &mpsc::Sender<Result<ExportInfo, NegError>>,
) -> Option<S> {
    match conn {
        Ok(Ok((s, info))) => {
            // If the opener gave up waiting, there is nobody to serve.
            ready.send(Ok(info)).ok().map(|()| s)
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
    mut rx: tmpsc::UnboundedReceiver<Request>,
    shared: &Shared,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let pending: PendingMap = Mutex::new(HashMap::new());
    let drained = Notify::new();
    let end = tokio::select! {
        r = writer(&mut wr, &mut rx, &pending, &drained) => r,
        r = reader(&mut rd, &pending, &drained) => r,
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
                read_len: req.read_len,
                tag: req.tag,
                reply: req.reply,
            },
        );
        wr.write_all(&req.msg)
            .await
            .map_err(|e| format!("sending a request failed: {e}"))?;
    }
    Ok(())
}

async fn reader<R: AsyncRead + Unpin>(
    rd: &mut R,
    pending: &PendingMap,
    drained: &Notify,
) -> Result<(), String> {
    let mut hdr = [0u8; 16];
    loop {
        rd.read_exact(&mut hdr).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "the server closed the connection".to_string()
            } else {
                format!("reading a reply failed: {e}")
            }
        })?;
        let magic = u32::from_be_bytes(hdr[0..4].try_into().unwrap());
        if magic == STRUCTURED_REPLY_MAGIC {
            return Err("protocol error: structured reply, which was not negotiated".into());
        }
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(format!("protocol error: bad reply magic {magic:#x}"));
        }
        let err = u32::from_be_bytes(hdr[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(hdr[8..16].try_into().unwrap());
        let p = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&cookie)
            .ok_or_else(|| format!("protocol error: reply for unknown handle {cookie:#x}"))?;
        // A simple reply to a successful read carries exactly the requested
        // length; a reply with an error carries no payload (the protocol:
        // the data is sent only when the error field is zero), so the next
        // header follows at once and the connection stays usable. The
        // length is ours (bounded by the maximum request size), never the
        // server's.
        let data = if p.read_len > 0 && err == 0 {
            let mut v = vec![0u8; p.read_len as usize];
            rd.read_exact(&mut v)
                .await
                .map_err(|e| format!("reading read data failed: {e}"))?;
            Some(v)
        } else {
            None
        };
        if pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            drained.notify_one();
        }
        let outcome = if err == 0 {
            Outcome::Ok(data)
        } else {
            Outcome::Server(err)
        };
        let _ = p.reply.send(Reply {
            tag: p.tag,
            outcome,
        });
    }
}

/// Linux errno for an NBD error value.
pub(crate) fn os_errno(nbd_err: u32) -> i32 {
    errno(nbd_err)
}
