//! NBD wire constants and the handshake (fixed newstyle, `NBD_OPT_GO`, with a
//! fallback to `NBD_OPT_EXPORT_NAME` for servers without `NBD_OPT_GO`).
//!
//! Every length read from the server is bounded before anything is
//! allocated: option replies longer than [`MAX_OPTION_REPLY`] end the
//! negotiation, and so do more than [`MAX_OPTION_REPLIES`] replies to one
//! option.
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// `NBDMAGIC`, the first 8 bytes a server sends.
pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation follows (also prefixes every option).
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Oldstyle negotiation (not supported).
pub(crate) const CLISERV_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of every option reply.
pub(crate) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub(crate) const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options.
const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_STARTTLS: u32 = 5;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;

// Option reply types.
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR: u32 = 1 << 31;
const REP_ERR_UNSUP: u32 = REP_ERR + 1;
const REP_ERR_POLICY: u32 = REP_ERR + 2;
const REP_ERR_INVALID: u32 = REP_ERR + 3;
const REP_ERR_PLATFORM: u32 = REP_ERR + 4;
const REP_ERR_TLS_REQD: u32 = REP_ERR + 5;
const REP_ERR_UNKNOWN: u32 = REP_ERR + 6;
const REP_ERR_SHUTDOWN: u32 = REP_ERR + 7;
const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_ERR + 8;
const REP_ERR_TOO_BIG: u32 = REP_ERR + 9;

// Info types.
const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

/// Commands.
pub(crate) const CMD_READ: u16 = 0;
pub(crate) const CMD_WRITE: u16 = 1;
pub(crate) const CMD_DISC: u16 = 2;
pub(crate) const CMD_FLUSH: u16 = 3;
pub(crate) const CMD_TRIM: u16 = 4;
pub(crate) const CMD_WRITE_ZEROES: u16 = 6;

// Structured reply chunk types and flags.
pub(crate) const REPLY_FLAG_DONE: u16 = 1 << 0;
pub(crate) const REPLY_TYPE_NONE: u16 = 0;
pub(crate) const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub(crate) const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub(crate) const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
pub(crate) const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) + 2;
/// Longest error message in an error chunk (the spec's limit).
pub(crate) const MAX_ERROR_MESSAGE: u32 = 4096;

/// Command flag: Force Unit Access (the write is durable when replied to).
pub(crate) const CMD_FLAG_FUA: u16 = 1 << 0;

/// Transmission flags (the export's flags, as sent by the server).
pub mod flags {
    /// Always set by a conforming server.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// The export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// Rotational medium.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_CMD_TRIM` is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// Flush/FUA effects are visible across connections.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_CMD_FLAG_FAST_ZERO` is supported.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Largest option reply payload accepted (error strings are at most 4096
/// bytes by the spec; info payloads are a few bytes).
pub(crate) const MAX_OPTION_REPLY: u32 = 16 * 1024;
/// Most replies accepted for one option before giving up.
pub(crate) const MAX_OPTION_REPLIES: usize = 64;
/// Longest export name the spec allows.
pub(crate) const MAX_EXPORT_NAME: usize = 4096;

/// What the handshake learned about the export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags ([`flags`]); 0 if the server did not set `HAS_FLAGS`.
    pub flags: u16,
    /// `NBD_INFO_BLOCK_SIZE` (minimum, preferred, maximum), if sent.
    pub block_size: Option<(u32, u32, u32)>,
    /// Whether `NBD_OPT_GO` was used (false: the `NBD_OPT_EXPORT_NAME` fallback).
    pub used_go: bool,
    /// Whether structured replies (`NBD_OPT_STRUCTURED_REPLY`) were
    /// negotiated: reads may then come back in chunks, holes as
    /// `OFFSET_HOLE` (no data sent), errors with a message and offset.
    pub structured_replies: bool,
}

/// Why the handshake failed.
#[derive(Debug)]
pub(crate) enum NegError {
    /// The transport failed (includes EOF).
    Io(io::Error),
    /// The server broke the protocol or refused the export.
    Proto(String),
}

impl From<io::Error> for NegError {
    fn from(e: io::Error) -> Self {
        NegError::Io(e)
    }
}

fn proto<T>(msg: impl Into<String>) -> Result<T, NegError> {
    Err(NegError::Proto(msg.into()))
}

fn rep_name(t: u32) -> &'static str {
    match t {
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP",
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY",
        REP_ERR_INVALID => "NBD_REP_ERR_INVALID",
        REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
        REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN (no such export)",
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
        REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
        _ => "unknown error reply",
    }
}

async fn send_option<S: AsyncWrite + Unpin>(s: &mut S, opt: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).await?;
    s.flush().await
}

/// Read one option reply to `opt`: (reply type, payload).
async fn read_option_reply<S: AsyncRead + Unpin>(
    s: &mut S,
    opt: u32,
) -> Result<(u32, Vec<u8>), NegError> {
    let magic = s.read_u64().await?;
    if magic != OPT_REPLY_MAGIC {
        return proto(format!("bad option reply magic {magic:#x}"));
    }
    let got_opt = s.read_u32().await?;
    if got_opt != opt {
        return proto(format!("option reply for option {got_opt}, expected {opt}"));
    }
    let typ = s.read_u32().await?;
    let len = s.read_u32().await?;
    if len > MAX_OPTION_REPLY {
        return proto(format!(
            "option reply of {len} bytes (more than {MAX_OPTION_REPLY})"
        ));
    }
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data).await?;
    Ok((typ, data))
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The error for a server that requires TLS from a plain `nbd://` client.
pub(crate) const TLS_REQUIRED: &str = "the server requires TLS: use nbds://HOST[:PORT]/EXPORT \
     or nbds+unix:///EXPORT?socket=PATH (with tls-certificates=DIR if its CA is not a system one)";

/// What the server's greeting said.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Greeting {
    fixed: bool,
    no_zeroes: bool,
}

/// `NBD_OPT_STARTTLS`: after its acknowledgment the caller runs the TLS
/// handshake on the same stream and then [`options`] over TLS.
pub(crate) async fn starttls<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    g: Greeting,
) -> Result<(), NegError> {
    if !g.fixed {
        return proto("the server does not support fixed newstyle negotiation, so no TLS");
    }
    send_option(s, OPT_STARTTLS, &[]).await?;
    let (typ, data) = read_option_reply(s, OPT_STARTTLS).await?;
    match typ {
        REP_ACK => Ok(()),
        t if t & REP_ERR != 0 => {
            let msg = String::from_utf8_lossy(&data[..data.len().min(512)]).into_owned();
            proto(format!(
                "the server does not offer TLS (NBD_OPT_STARTTLS: {}{}{}); use nbd:// if it is meant to run without",
                rep_name(t),
                if msg.is_empty() { "" } else { ": " },
                msg
            ))
        }
        t => proto(format!("unexpected reply type {t:#x} to NBD_OPT_STARTTLS")),
    }
}

/// Read the server's greeting and send the client flags.
pub(crate) async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<Greeting, NegError> {
    let magic = s.read_u64().await?;
    if magic != NBDMAGIC {
        return proto(format!("not an NBD server (magic {magic:#x})"));
    }
    let magic2 = s.read_u64().await?;
    if magic2 == CLISERV_MAGIC {
        return proto("server uses oldstyle negotiation, which is not supported");
    }
    if magic2 != IHAVEOPT {
        return proto(format!("bad newstyle magic {magic2:#x}"));
    }
    let hs = s.read_u16().await?;
    let fixed = hs & FLAG_FIXED_NEWSTYLE != 0;
    let no_zeroes = hs & FLAG_NO_ZEROES != 0;
    let mut cflags = 0u32;
    if fixed {
        cflags |= FLAG_C_FIXED_NEWSTYLE;
    }
    if no_zeroes {
        cflags |= FLAG_C_NO_ZEROES;
    }
    s.write_all(&cflags.to_be_bytes()).await?;
    Ok(Greeting { fixed, no_zeroes })
}

/// The options phase: structured replies (if wanted), then the export
/// (`NBD_OPT_GO`, or `NBD_OPT_EXPORT_NAME` on old servers). `tls`: the
/// stream is already TLS.
pub(crate) async fn options<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    g: Greeting,
    name: &str,
    want_structured: bool,
    tls: bool,
) -> Result<ExportInfo, NegError> {
    if name.len() > MAX_EXPORT_NAME {
        return proto(format!("export name longer than {MAX_EXPORT_NAME} bytes"));
    }
    let Greeting { fixed, no_zeroes } = g;
    let mut structured = false;
    if fixed && want_structured {
        send_option(s, OPT_STRUCTURED_REPLY, &[]).await?;
        let (typ, _) = read_option_reply(s, OPT_STRUCTURED_REPLY).await?;
        match typ {
            REP_ACK => structured = true,
            REP_ERR_TLS_REQD if !tls => {
                let _ = send_option(s, OPT_ABORT, &[]).await;
                return proto(TLS_REQUIRED);
            }
            // Not offered (or refused): simple replies only.
            t if t & REP_ERR != 0 => {}
            t => {
                return proto(format!(
                    "unexpected reply type {t:#x} to NBD_OPT_STRUCTURED_REPLY"
                ))
            }
        }
    }

    if fixed {
        // NBD_OPT_GO: name length, name, 1 info request (BLOCK_SIZE).
        let mut d = Vec::with_capacity(8 + name.len());
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        send_option(s, OPT_GO, &d).await?;
        let mut export: Option<(u64, u16)> = None;
        let mut bsize = None;
        let mut replies = 0;
        loop {
            replies += 1;
            if replies > MAX_OPTION_REPLIES {
                return proto(format!(
                    "more than {MAX_OPTION_REPLIES} replies to NBD_OPT_GO"
                ));
            }
            let (typ, data) = read_option_reply(s, OPT_GO).await?;
            match typ {
                REP_INFO => {
                    if data.len() < 2 {
                        return proto("NBD_REP_INFO shorter than 2 bytes");
                    }
                    match be16(&data) {
                        INFO_EXPORT => {
                            if data.len() != 12 {
                                return proto(format!(
                                    "NBD_INFO_EXPORT of {} bytes (expected 12)",
                                    data.len()
                                ));
                            }
                            export = Some((be64(&data[2..]), be16(&data[10..])));
                        }
                        INFO_BLOCK_SIZE => {
                            if data.len() != 14 {
                                return proto(format!(
                                    "NBD_INFO_BLOCK_SIZE of {} bytes (expected 14)",
                                    data.len()
                                ));
                            }
                            bsize = Some((be32(&data[2..]), be32(&data[6..]), be32(&data[10..])));
                        }
                        _ => {} // NAME, DESCRIPTION, ...: not needed.
                    }
                }
                REP_ACK => {
                    let Some((size, fl)) = export else {
                        return proto("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT");
                    };
                    return Ok(ExportInfo {
                        size,
                        flags: clean_flags(fl),
                        block_size: bsize,
                        used_go: true,
                        structured_replies: structured,
                    });
                }
                REP_ERR_UNSUP => break, // old server: fall back to EXPORT_NAME
                REP_ERR_TLS_REQD if !tls => {
                    let _ = send_option(s, OPT_ABORT, &[]).await;
                    return proto(TLS_REQUIRED);
                }
                t if t & REP_ERR != 0 => {
                    let msg = String::from_utf8_lossy(&data[..data.len().min(512)]).into_owned();
                    // Be polite; the connection is dropped anyway.
                    let _ = send_option(s, OPT_ABORT, &[]).await;
                    return proto(format!(
                        "server refused export {name:?}: {}{}{}",
                        rep_name(t),
                        if msg.is_empty() { "" } else { ": " },
                        msg
                    ));
                }
                t => return proto(format!("unexpected reply type {t:#x} to NBD_OPT_GO")),
            }
        }
    }

    // NBD_OPT_EXPORT_NAME: no reply header; size, flags, maybe 124 zeroes.
    send_option(s, OPT_EXPORT_NAME, name.as_bytes()).await?;
    let size = s.read_u64().await?;
    let fl = s.read_u16().await?;
    if !no_zeroes {
        let mut z = [0u8; 124];
        s.read_exact(&mut z).await?;
    }
    Ok(ExportInfo {
        size,
        flags: clean_flags(fl),
        block_size: None,
        used_go: false,
        structured_replies: structured,
    })
}

/// Transmission flags are meaningless unless `HAS_FLAGS` is set.
fn clean_flags(fl: u16) -> u16 {
    if fl & flags::HAS_FLAGS == 0 {
        0
    } else {
        fl
    }
}

/// Encode a request header (28 bytes) into `m`.
pub(crate) fn put_request(m: &mut Vec<u8>, cflags: u16, cmd: u16, cookie: u64, off: u64, len: u32) {
    m.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    m.extend_from_slice(&cflags.to_be_bytes());
    m.extend_from_slice(&cmd.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(&off.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
}

/// Request header size.
pub(crate) const REQUEST_LEN: usize = 28;

/// Errno carried by an NBD error reply → the Linux errno it names. The NBD
/// values are the Linux ones; unknown values become EIO (the spec: treat
/// unexpected errors as EINVAL-or-worse; EIO is the conservative reading for
/// a block device).
pub(crate) fn errno(nbd_err: u32) -> i32 {
    match nbd_err {
        1 => libc::EPERM,
        5 => libc::EIO,
        12 => libc::ENOMEM,
        22 => libc::EINVAL,
        28 => libc::ENOSPC,
        75 => libc::EOVERFLOW,
        95 => libc::EOPNOTSUPP,
        108 => libc::ESHUTDOWN,
        _ => libc::EIO,
    }
}
