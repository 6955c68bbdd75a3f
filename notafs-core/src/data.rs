//! Reading file data: extents to device reads, with every block checked
//! against the CRC its extent records.
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::btree::{NodeIo, Tree};
use crate::extent_tree::{Extent, Extents};
use crate::{Error, Result};

/// Largest single device read issued by the read path (bounds the bounce
/// buffer whatever the caller asks for).
const MAX_READ: u64 = 8 << 20;

/// Reads of at most this many bytes go through the data cache.
pub(crate) const CACHED_READ_MAX: u64 = 128 << 10;

/// Read up to `out.len()` bytes at `off` of a file of `size` bytes whose
/// extents are `ext` and whose not-yet-written blocks are `buffered`.
/// Returns the number of bytes read (short only at end of file).
pub(crate) fn read_at(
    io: &NodeIo,
    ext: &Tree<Extents>,
    buffered: Option<&BTreeMap<u64, Vec<u8>>>,
    size: u64,
    off: u64,
    out: &mut [u8],
    verify: bool,
) -> Result<usize> {
    if off >= size || out.is_empty() {
        return Ok(0);
    }
    let n = (out.len() as u64).min(size - off) as usize;
    let out = &mut out[..n];
    let bs = io.layout.block_size as u64;
    let end = off + n as u64;
    let first = off / bs;
    let last = (end - 1) / bs; // inclusive
    let start_key = match ext.floor(io, &first)? {
        Some((k, _)) => k,
        None => first,
    };
    let mut pieces: Vec<(u64, Extent)> = Vec::new();
    ext.scan(io, Some(&start_key), &mut |k, v| {
        if *k > last {
            return Ok(false);
        }
        if k + v.len() > first {
            pieces.push((*k, v.clone()));
        }
        Ok(true)
    })?;
    // Plan: whole blocks inside the caller's buffer are read in place,
    // physically and logically contiguous runs merged into one request; the
    // (at most two) partial blocks at the ends go through small bounce
    // buffers. Everything goes to the device as one batch, so backends with
    // many requests in flight (io_uring, NBD) get them all at once.
    struct InPlace<'c> {
        pb: u64,
        lo: usize,
        hi: usize,
        crcs: Vec<&'c [u32]>,
    }
    struct Bounce<'c> {
        pb: u64,
        byte_lo: u64,
        buf: Vec<u8>,
        crcs: &'c [u32],
    }
    let mut inplace: Vec<InPlace<'_>> = Vec::new();
    let mut bounces: Vec<Bounce<'_>> = Vec::new();
    // Byte ranges of `out` filled from the data cache.
    let mut hits: Vec<(usize, usize)> = Vec::new();
    // Small verified reads go through the data cache; large ones (scans,
    // copies) neither look nor insert, so a scan cannot flush the blocks
    // that random readers keep coming back to.
    let use_cache = verify && (n as u64) <= CACHED_READ_MAX;
    let pieces = &pieces;
    let mut plan = |blk: u64, b: u64, piece: usize| {
        let (k, e) = (&pieces[piece].0, &pieces[piece].1);
        let k = *k;
        let mut blk = blk;
        while blk < b {
            let cnt = (b - blk).min(MAX_READ / bs);
            let byte_lo = blk * bs;
            let byte_hi = (blk + cnt) * bs;
            let pb = e.pblock + (blk - k);
            let crcs = &e.crcs[(blk - k) as usize..(blk - k + cnt) as usize];
            let (lo, hi) = (
                byte_lo.saturating_sub(off) as usize,
                byte_hi.saturating_sub(off) as usize,
            );
            // Extents of a damaged tree may overlap: an overlapping run
            // goes through a bounce buffer, so in-place reads stay disjoint
            // and in order.
            let overlaps = inplace.last().is_some_and(|r| lo < r.hi);
            if byte_lo >= off && byte_hi <= end && !overlaps {
                match inplace.last_mut() {
                    Some(r)
                        if r.hi == lo
                            && r.pb + ((r.hi - r.lo) as u64) / bs == pb
                            && (hi - r.lo) as u64 <= MAX_READ =>
                    {
                        r.hi = hi;
                        r.crcs.push(crcs);
                    }
                    _ => inplace.push(InPlace {
                        pb,
                        lo,
                        hi,
                        crcs: vec![crcs],
                    }),
                }
            } else {
                bounces.push(Bounce {
                    pb,
                    byte_lo,
                    buf: vec![0u8; (cnt * bs) as usize],
                    crcs,
                });
            }
            blk += cnt;
        }
    };
    for (piece, (k, e)) in pieces.iter().enumerate() {
        let a = (*k).max(first);
        let b = (k + e.len()).min(last + 1);
        if !use_cache {
            plan(a, b, piece);
            continue;
        }
        // Cached blocks are copied now; each run of misses is planned.
        let mut run = a;
        for blk in a..b {
            let i = (blk - k) as usize;
            let Some(d) = io.data_cache.get(e.pblock + i as u64, e.crcs[i]) else {
                continue;
            };
            plan(run, blk, piece);
            run = blk + 1;
            let byte_lo = blk * bs;
            let lo = byte_lo.max(off);
            let hi = (byte_lo + bs).min(end);
            out[(lo - off) as usize..(hi - off) as usize]
                .copy_from_slice(&d[(lo - byte_lo) as usize..(hi - byte_lo) as usize]);
            hits.push(((lo - off) as usize, (hi - off) as usize));
        }
        plan(run, b, piece);
    }
    drop(plan);
    // Zero only what no extent covers (holes): the rest is about to be
    // overwritten by the reads.
    let mut covered: Vec<(usize, usize)> = inplace.iter().map(|r| (r.lo, r.hi)).collect();
    covered.extend_from_slice(&hits);
    for bo in &bounces {
        let lo = bo.byte_lo.max(off);
        let hi = (bo.byte_lo + bo.buf.len() as u64).min(end);
        covered.push(((lo - off) as usize, (hi - off) as usize));
    }
    covered.sort_unstable();
    let mut cursor = 0usize;
    for (lo, hi) in &covered {
        if *lo > cursor {
            out[cursor..*lo].fill(0);
        }
        cursor = cursor.max(*hi);
    }
    if cursor < n {
        out[cursor..].fill(0);
    }
    {
        let mut reqs: Vec<(u64, &mut [u8])> = Vec::with_capacity(inplace.len() + bounces.len());
        let mut rest: &mut [u8] = out;
        let mut base = 0usize;
        for r in &inplace {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.lo - base);
            let (dst, tail) = tail.split_at_mut(r.hi - r.lo);
            reqs.push((r.pb, dst));
            rest = tail;
            base = r.hi;
        }
        for bo in bounces.iter_mut() {
            reqs.push((bo.pb, &mut bo.buf[..]));
        }
        match reqs.len() {
            0 => {}
            1 => {
                let (pb, dst) = reqs.pop().expect("one request");
                io.dev.read(pb, dst)?;
            }
            _ => io.dev.read_batch(&mut reqs)?,
        }
    }
    if verify {
        // Every (bytes, their CRCs, first block) to check.
        let mut work: Vec<(&[u8], &[u32], u64)> = Vec::new();
        for r in &inplace {
            let mut at = r.lo;
            let mut pb = r.pb;
            for c in &r.crcs {
                let len = c.len() * bs as usize;
                work.push((&out[at..at + len], c, pb));
                at += len;
                pb += c.len() as u64;
            }
        }
        for bo in &bounces {
            work.push((&bo.buf, bo.crcs, bo.pb));
        }
        check_all(&work, bs as usize)?;
    }
    if use_cache {
        // Everything read was verified above: remember it.
        let bsz = bs as usize;
        for r in &inplace {
            let crcs = r.crcs.iter().flat_map(|c| c.iter());
            for (i, (chunk, crc)) in out[r.lo..r.hi].chunks(bsz).zip(crcs).enumerate() {
                io.data_cache.put(r.pb + i as u64, *crc, Arc::from(chunk));
            }
        }
        for bo in &bounces {
            for (i, (chunk, crc)) in bo.buf.chunks(bsz).zip(bo.crcs).enumerate() {
                io.data_cache.put(bo.pb + i as u64, *crc, Arc::from(chunk));
            }
        }
    }
    for bo in &bounces {
        let byte_hi = bo.byte_lo + bo.buf.len() as u64;
        let lo = bo.byte_lo.max(off);
        let hi = byte_hi.min(end);
        out[(lo - off) as usize..(hi - off) as usize]
            .copy_from_slice(&bo.buf[(lo - bo.byte_lo) as usize..(hi - bo.byte_lo) as usize]);
    }
    if let Some(buf) = buffered {
        for (&lb, data) in buf.range(first..=last) {
            let byte_lo = lb * bs;
            let lo = byte_lo.max(off);
            let hi = (byte_lo + bs).min(end);
            out[(lo - off) as usize..(hi - off) as usize]
                .copy_from_slice(&data[(lo - byte_lo) as usize..(hi - byte_lo) as usize]);
        }
    }
    Ok(n)
}

/// Reads at least this large have their CRCs checked on two threads: the
/// caller's and one more (a 2-core machine checks ~2x faster, and the
/// reader is back on the device sooner).
const PARALLEL_CHECK_MIN: usize = 4 << 20;

/// Check every piece of `work`, splitting large reads over two threads.
fn check_all(work: &[(&[u8], &[u32], u64)], bs: usize) -> Result<()> {
    let total: usize = work.iter().map(|w| w.0.len()).sum();
    let parallel = total >= PARALLEL_CHECK_MIN
        && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    if !parallel {
        return work
            .iter()
            .try_for_each(|(d, c, pb)| check_blocks(d, c, *pb, bs));
    }
    // Split at a block boundary near the middle of the bytes.
    let half_blocks = total / bs / 2;
    let mut first: Vec<(&[u8], &[u32], u64)> = Vec::new();
    let mut second: Vec<(&[u8], &[u32], u64)> = Vec::new();
    let mut seen = 0usize;
    for &(d, c, pb) in work {
        let n = c.len().min(d.len() / bs);
        if seen >= half_blocks {
            second.push((d, c, pb));
        } else if seen + n <= half_blocks {
            first.push((d, c, pb));
        } else {
            let k = half_blocks - seen;
            first.push((&d[..k * bs], &c[..k], pb));
            second.push((&d[k * bs..], &c[k..], pb + k as u64));
        }
        seen += n;
    }
    let check = |w: &[(&[u8], &[u32], u64)]| -> Result<()> {
        w.iter()
            .try_for_each(|(d, c, pb)| check_blocks(d, c, *pb, bs))
    };
    std::thread::scope(|sc| {
        let other = std::thread::Builder::new().spawn_scoped(sc, || check(&second));
        let mine = check(&first);
        let theirs = match other {
            Ok(t) => t
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("CRC check thread panicked".into()))),
            // No thread to be had: check the rest here.
            Err(_) => check(&second),
        };
        // The first damaged block in file order wins.
        mine.and(theirs)
    })
}

/// Check each block of `data` against its recorded CRC.
pub(crate) fn check_blocks(data: &[u8], crcs: &[u32], pblock: u64, bs: usize) -> Result<()> {
    for (i, (chunk, want)) in data.chunks(bs).zip(crcs).enumerate() {
        if crate::checksum::crc(chunk) != *want {
            return Err(Error::Checksum {
                what: "data block",
                block: pblock + i as u64,
            });
        }
    }
    Ok(())
}
