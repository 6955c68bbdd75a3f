//! NBD URIs (the subset of the NBD URI spec notafs needs):
//! `nbd://HOST[:PORT][/EXPORT]`, `nbd+unix:///[EXPORT]?socket=PATH`, and
//! their TLS forms `nbds://...` and `nbds+unix://...` (libnbd's), which
//! take `tls-certificates=DIR` and `tls-hostname=NAME`. Every form takes
//! `connections=N` and `timeout=SECS`. The export name is the path without its leading `/`,
//! percent-decoded.
use std::fmt;
use std::path::PathBuf;

use crate::{BlockError, Result};

/// IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdAddr {
    /// TCP host (name or address; IPv6 without brackets) and port.
    Tcp { host: String, port: u16 },
    /// Unix domain socket path.
    Unix(PathBuf),
}

/// A parsed NBD URI: server address and export name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdTarget {
    pub addr: NbdAddr,
    pub export: String,
    /// `?connections=N` (1..=16): connections to open when the server
    /// advertises `CAN_MULTI_CONN` (`NbdOptions::connections` overrides).
    pub connections: Option<usize>,
    /// `nbds://` / `nbds+unix://`: TLS is required, with these settings.
    pub tls: Option<TlsParams>,
    /// `?timeout=SECS` (1..=86400): the longest wait for a reply while
    /// requests are outstanding (`NbdOptions::io_timeout`, which this
    /// overrides), after which the connection is dropped.
    pub io_timeout: Option<std::time::Duration>,
}

/// TLS settings of an `nbds` URI (see `nbd::tls`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsParams {
    /// `tls-certificates=DIR`: `ca-cert.pem` (trusted CAs; without it the
    /// system roots), `client-cert.pem` + `client-key.pem` (optional).
    pub certificates: Option<PathBuf>,
    /// `tls-hostname=NAME`: the name the server's certificate must carry
    /// (default: the TCP host; `localhost` for Unix sockets).
    pub hostname: Option<String>,
}

impl fmt::Display for NbdTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.tls.is_some() { "nbds" } else { "nbd" };
        match &self.addr {
            NbdAddr::Tcp { host, port } if host.contains(':') => {
                write!(f, "{s}://[{host}]:{port}/{}", self.export)
            }
            NbdAddr::Tcp { host, port } => write!(f, "{s}://{host}:{port}/{}", self.export),
            NbdAddr::Unix(p) => write!(f, "{s}+unix:///{}?socket={}", self.export, p.display()),
        }
    }
}

fn bad(uri: &str, why: &str) -> BlockError {
    BlockError::Invalid(format!("bad NBD URI {uri:?}: {why}"))
}

fn percent_decode(uri: &str, s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(uri, "bad percent escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(uri, "not UTF-8 after percent-decoding"))
}

/// Parse an NBD URI.
pub fn parse_uri(uri: &str) -> Result<NbdTarget> {
    let (unix, tls, rest) = if let Some(r) = uri.strip_prefix("nbd+unix://") {
        (true, false, r)
    } else if let Some(r) = uri.strip_prefix("nbd://") {
        (false, false, r)
    } else if let Some(r) = uri.strip_prefix("nbds+unix://") {
        (true, true, r)
    } else if let Some(r) = uri.strip_prefix("nbds://") {
        (false, true, r)
    } else {
        return Err(bad(
            uri,
            "expected nbd://, nbd+unix://, nbds:// or nbds+unix://",
        ));
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i + 1..]),
        None => (before_query, ""),
    };
    let export = percent_decode(uri, path)?;
    if export.len() > super::proto::MAX_EXPORT_NAME {
        return Err(bad(uri, "export name longer than 4096 bytes"));
    }
    let mut socket = None;
    let mut connections = None;
    let mut tls_params = TlsParams::default();
    let mut io_timeout = None;
    for kv in query.into_iter().flat_map(|q| q.split('&')) {
        if kv.is_empty() {
            continue;
        }
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "socket" => socket = Some(percent_decode(uri, v)?),
            "connections" => {
                connections = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=super::MAX_CONNECTIONS).contains(n))
                        .ok_or_else(|| bad(uri, "connections= takes a number from 1 to 16"))?,
                )
            }
            "timeout" => {
                io_timeout = Some(std::time::Duration::from_secs(
                    v.parse::<u64>()
                        .ok()
                        .filter(|n| (1..=86400).contains(n))
                        .ok_or_else(|| bad(uri, "timeout= takes seconds, from 1 to 86400"))?,
                ))
            }
            "tls-certificates" | "tls-hostname" if !tls => {
                return Err(bad(
                    uri,
                    &format!("{k}= is only for nbds:// and nbds+unix:// (TLS)"),
                ))
            }
            "tls-certificates" => {
                let d = percent_decode(uri, v)?;
                if d.is_empty() {
                    return Err(bad(uri, "empty tls-certificates="));
                }
                tls_params.certificates = Some(PathBuf::from(d));
            }
            "tls-hostname" => {
                let h = percent_decode(uri, v)?;
                if h.is_empty() {
                    return Err(bad(uri, "empty tls-hostname="));
                }
                tls_params.hostname = Some(h);
            }
            _ => return Err(bad(uri, &format!("unknown query parameter {k:?}"))),
        }
    }
    let addr = if unix {
        if !authority.is_empty() {
            return Err(bad(
                uri,
                "a +unix:// URI takes no host (use nbd+unix:///EXPORT?socket=PATH)",
            ));
        }
        match socket {
            Some(s) if !s.is_empty() => NbdAddr::Unix(PathBuf::from(s)),
            _ => return Err(bad(uri, "a +unix:// URI needs ?socket=PATH")),
        }
    } else {
        if socket.is_some() {
            return Err(bad(
                uri,
                "?socket= is only for nbd+unix:// and nbds+unix://",
            ));
        }
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| bad(uri, "unterminated [IPv6 address]"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad(uri, "junk after ]"))?,
                ),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad(uri, "no host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(uri, "bad port"))?,
        };
        NbdAddr::Tcp {
            host: host.to_string(),
            port,
        }
    };
    Ok(NbdTarget {
        addr,
        export,
        connections,
        tls: tls.then_some(tls_params),
        io_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let t = parse_uri("nbd://example.com/disk").unwrap();
        assert_eq!(
            t.addr,
            NbdAddr::Tcp {
                host: "example.com".into(),
                port: 10809
            }
        );
        assert_eq!(t.export, "disk");
        let t = parse_uri("nbd://127.0.0.1:1234").unwrap();
        assert_eq!(
            t.addr,
            NbdAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 1234
            }
        );
        assert_eq!(t.export, "");
        let t = parse_uri("nbd://[::1]:99/a%20b").unwrap();
        assert_eq!(
            t.addr,
            NbdAddr::Tcp {
                host: "::1".into(),
                port: 99
            }
        );
        assert_eq!(t.export, "a b");
        assert_eq!(t.to_string(), "nbd://[::1]:99/a b");
        let t = parse_uri("nbd+unix:///?socket=/tmp/s%2Bx.sock").unwrap();
        assert_eq!(t.addr, NbdAddr::Unix("/tmp/s+x.sock".into()));
        assert_eq!(t.export, "");
        let t = parse_uri("nbd+unix:///exp?socket=/s").unwrap();
        assert_eq!(t.export, "exp");
        assert_eq!(t.connections, None);
        let t = parse_uri("nbd+unix:///exp?socket=/s&connections=2").unwrap();
        assert_eq!(t.connections, Some(2));
        assert_eq!(
            parse_uri("nbd://h/x?connections=1").unwrap().connections,
            Some(1)
        );
        assert_eq!(
            parse_uri("nbd+unix:///?socket=/s&timeout=10")
                .unwrap()
                .io_timeout,
            Some(std::time::Duration::from_secs(10))
        );
        assert_eq!(parse_uri("nbd://h/x").unwrap().io_timeout, None);
        for b in [
            "nbd://",
            "nbd://:10809/x",
            "nbd://h:0/x",
            "nbd://h:99999/x",
            "nbd://h:x/x",
            "nbd://[::1/x",
            "nbd://h/x?socket=/s",
            "nbd+unix:///x",
            "nbd+unix://host/x?socket=/s",
            "nbd+unix:///x?socket=",
            "nbd+unix:///x?sockt=/s",
            "nbd://h/%zz",
            "nbd://h/x?connections=0",
            "nbd://h/x?connections=17",
            "nbd://h/x?connections=x",
            "nbd://h/x?timeout=0",
            "nbd://h/x?timeout=-1",
            "nbd://h/x?timeout=1.5",
            "nbd://h/x?timeout=86401",
            "nbd://h/%ff",
            "http://h/x",
        ] {
            assert!(parse_uri(b).is_err(), "{b}");
        }
        let t = parse_uri("nbds://h:99/x").unwrap();
        assert_eq!(t.tls, Some(TlsParams::default()));
        assert_eq!(t.to_string(), "nbds://h:99/x");
        let t =
            parse_uri("nbds+unix:///e?socket=/s&tls-certificates=/etc/pki/x%20y&tls-hostname=srv")
                .unwrap();
        assert_eq!(t.addr, NbdAddr::Unix("/s".into()));
        assert_eq!(
            t.tls,
            Some(TlsParams {
                certificates: Some("/etc/pki/x y".into()),
                hostname: Some("srv".into()),
            })
        );
        assert_eq!(t.to_string(), "nbds+unix:///e?socket=/s");
        assert_eq!(parse_uri("nbd://h/x").unwrap().tls, None);
        for b in [
            "nbd://h/x?tls-certificates=/d",
            "nbd+unix:///x?socket=/s&tls-hostname=h",
            "nbds://h/x?tls-certificates=",
            "nbds+unix:///x",
            "nbds+unix://h/x?socket=/s",
        ] {
            assert!(parse_uri(b).is_err(), "{b}");
        }
    }
}
