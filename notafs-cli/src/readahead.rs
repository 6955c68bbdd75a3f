//! Read-ahead for `notafs get` and `cat`: the next chunks are read while
//! the current one is written out.
//!
//! Why: a network device (NBD) keeps up to 64 requests in flight, but only
//! within one read call; each call drains to zero before it returns, and
//! then the data is checked (CRCs) and written out with nothing
//! outstanding. Reading chunk by chunk on one thread therefore gives a
//! sawtooth (a mean of 23-30 requests in flight against nbdcopy's 43-57,
//! 0.74x nbdcopy's local read speed). Here [`READERS`] threads read
//! alternate chunks, so while one waits for the tail of its chunk and
//! checks it, the other's call is already under way; the calling thread
//! writes the chunks out in order. (The other call's extent lookups still
//! queue behind the first call's requests at the server, so the overlap is
//! partial: docs/BENCHMARKS.md, "Network block storage", run C.)

use std::sync::mpsc;

use crate::common::{CliError, CliResult};

/// Threads reading ahead; each owns one chunk buffer, reused, so at most
/// `READERS` chunks (2 x 16 MiB with `COPY_CHUNK`) are held at once.
pub(crate) const READERS: usize = 2;

/// Copy `len` bytes, read with `read` (offset, buffer; returns the count,
/// short only at the end of the data), to `write`, in order, in chunks of
/// `chunk` bytes, with up to [`READERS`] chunks being read at once.
///
/// The first error, of a read or of a write, is returned as it is and stops
/// both sides: the readers stop once their current read ends. A single
/// chunk is read on the calling thread (no thread for small files).
pub(crate) fn copy_chunks(
    len: u64,
    chunk: usize,
    read: &(dyn Fn(u64, &mut [u8]) -> CliResult<usize> + Sync),
    write: &mut dyn FnMut(&[u8]) -> CliResult<()>,
) -> CliResult<()> {
    let chunk = chunk.max(1);
    // Never allocate more than the file needs (`cat` of small files).
    let buf_len = usize::try_from(len).map_or(chunk, |l| l.min(chunk));
    if len <= chunk as u64 {
        let mut buf = vec![0u8; buf_len];
        let n = read(0, &mut buf)?;
        return write(&buf[..n]);
    }
    let chunks = len.div_ceil(chunk as u64);
    std::thread::scope(|s| {
        // Per reader: filled buffers (with the read's outcome) go to the
        // writer, written ones come back. Reader `i` reads chunks i,
        // i + READERS, ...; the writer takes them round robin, in order.
        let mut full_rx = Vec::with_capacity(READERS);
        let mut empty_tx = Vec::with_capacity(READERS);
        for i in 0..READERS {
            let (ftx, frx) = mpsc::channel::<(Vec<u8>, CliResult<usize>)>();
            let (etx, erx) = mpsc::channel::<Vec<u8>>();
            // Cannot fail: the receiver is alive.
            let _ = etx.send(vec![0u8; buf_len]);
            let spawned = std::thread::Builder::new()
                .name(format!("read-ahead-{i}"))
                .spawn_scoped(s, move || {
                    let mut k = i as u64;
                    // Ends when the writer drops its sender (done or failed).
                    for mut buf in erx {
                        if k >= chunks {
                            break;
                        }
                        let off = k * chunk as u64;
                        let want = (len - off).min(chunk as u64) as usize;
                        let r = read(off, &mut buf[..want]);
                        let failed = r.is_err();
                        if ftx.send((buf, r)).is_err() || failed {
                            break;
                        }
                        k += READERS as u64;
                    }
                });
            if let Err(e) = spawned {
                // The readers already started stop when the channels drop.
                return Err(CliError::op(format!("starting a reader thread: {e}")));
            }
            full_rx.push(frx);
            empty_tx.push(etx);
        }
        for k in 0..chunks {
            let i = (k % READERS as u64) as usize;
            let Ok((buf, r)) = full_rx[i].recv() else {
                // A reader only ends early after sending an error, which
                // the writer stopped at; so this is a reader that died.
                return Err(CliError::op("read-ahead thread ended unexpectedly"));
            };
            let n = r?;
            write(&buf[..n])?;
            let want = (len - k * chunk as u64).min(chunk as u64) as usize;
            if n < want {
                break; // the data ended early (as a read of 0 does)
            }
            // The reader may be gone (it had no chunks left): that is fine.
            let _ = empty_tx[i].send(buf);
        }
        Ok(())
        // Dropping the channels here stops the readers; the scope then
        // joins them.
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    fn pattern(off: u64, buf: &mut [u8]) {
        for (j, b) in buf.iter_mut().enumerate() {
            let x = off + j as u64;
            *b = (x ^ (x >> 8) ^ (x >> 16)) as u8;
        }
    }

    fn copy(len: u64, chunk: usize) -> Vec<u8> {
        let read = |off: u64, buf: &mut [u8]| {
            pattern(off, buf);
            Ok(buf.len())
        };
        let mut got = Vec::new();
        copy_chunks(len, chunk, &read, &mut |d: &[u8]| {
            got.extend_from_slice(d);
            Ok(())
        })
        .unwrap();
        got
    }

    #[test]
    fn bytes_arrive_whole_and_in_order() {
        for (len, chunk) in [(0, 8), (5, 8), (8, 8), (9, 8), (1000, 7), (4096, 64)] {
            let mut want = vec![0u8; len as usize];
            pattern(0, &mut want);
            assert!(copy(len, chunk) == want, "len {len} chunk {chunk}");
        }
    }

    /// The point of the module: chunk 1 is being read before chunk 0's read
    /// has returned. Reading one chunk at a time fails this (chunk 0 waits
    /// for a start of chunk 1 that never comes, and gives up).
    #[test]
    fn the_next_chunk_is_read_while_one_is_outstanding() {
        let started = (Mutex::new(0u64), Condvar::new());
        let read = |off: u64, buf: &mut [u8]| {
            let (m, cv) = &started;
            let mut n = m.lock().unwrap();
            *n |= 1 << (off / 16);
            cv.notify_all();
            if off == 0 {
                let (n, t) = cv
                    .wait_timeout_while(n, Duration::from_secs(10), |n| *n & 2 == 0)
                    .unwrap();
                if t.timed_out() && *n & 2 == 0 {
                    return Err(CliError::op("chunk 1 was not read during chunk 0"));
                }
            }
            pattern(off, buf);
            Ok(buf.len())
        };
        let mut got = Vec::new();
        copy_chunks(64, 16, &read, &mut |d: &[u8]| {
            got.extend_from_slice(d);
            Ok(())
        })
        .unwrap();
        let mut want = vec![0u8; 64];
        pattern(0, &mut want);
        assert!(got == want);
    }

    #[test]
    fn a_read_error_stops_the_copy_after_the_chunks_before_it() {
        for bad in 0..5u64 {
            let read = |off: u64, buf: &mut [u8]| {
                if off / 10 == bad {
                    return Err(CliError::op(format!("reading f: bad block at {off}")));
                }
                pattern(off, buf);
                Ok(buf.len())
            };
            let mut got = Vec::new();
            let e = copy_chunks(50, 10, &read, &mut |d: &[u8]| {
                got.extend_from_slice(d);
                Ok(())
            })
            .unwrap_err();
            assert_eq!(e.msg, format!("reading f: bad block at {}", bad * 10));
            assert_eq!(got.len() as u64, bad * 10, "only the chunks before it");
        }
    }

    #[test]
    fn a_write_error_stops_the_readers() {
        let reads = std::sync::atomic::AtomicU64::new(0);
        let read = |off: u64, buf: &mut [u8]| {
            reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            pattern(off, buf);
            Ok(buf.len())
        };
        let mut writes = 0;
        let e = copy_chunks(1000, 10, &read, &mut |_: &[u8]| {
            writes += 1;
            if writes == 3 {
                Err(CliError::op("writing output: disk full"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(e.msg, "writing output: disk full");
        // Chunks 0-2 written, at most one more per reader read ahead.
        let n = reads.load(std::sync::atomic::Ordering::Relaxed);
        assert!((3..=3 + READERS as u64).contains(&n), "{n} reads");
    }
}
