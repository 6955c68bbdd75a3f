//! Reading file data: extents to device reads, with every block checked
//! against the CRC its extent records.
use std::collections::BTreeMap;

use crate::btree::{NodeIo, Tree};
use crate::btree_node::{child_index, Child, Node};
use crate::btree_rec::get_node;
use crate::extent_tree::{Extent, Extents};
use crate::{Error, Result};

/// Largest single device read issued by the read path (bounds the bounce
/// buffer whatever the caller asks for).
const MAX_READ: u64 = 8 << 20;

/// Reads of at least this many bytes read extent leaves ahead, this many.
const PREFETCH_READ_MIN: u64 = 512 << 10;
const PREFETCH_LEAVES: usize = 16;

/// Reads of at most this many bytes go through the data cache.
pub(crate) const CACHED_READ_MAX: u64 = 128 << 10;

/// A data cache at least this large (`cache_bytes` of 4x that) is filled
/// by every write, not only by small ones (txn.rs `write_runs`).
pub(crate) const WRITE_FILL_MIN: u64 = 64 << 20;

/// The part of one extent that a read covers: file blocks
/// `blk..blk + len` at device blocks `pblock..`, their CRCs at
/// `crc..crc + len` of the read's CRC list.
#[derive(Clone, Copy, Debug)]
struct Piece {
    blk: u64,
    pblock: u64,
    crc: usize,
    len: u64,
}

/// The extents covering file blocks `first..=last`, clipped to that range,
/// in file order; their CRCs (only those of the blocks asked for: an extent
/// holds up to a node's quarter of them) are appended to `crcs`.
///
/// One descent finds the extent holding `first` (the floor); when it
/// reaches `last`, as it does for almost every small read, that is all.
/// Otherwise a scan from the floor key collects the rest.
fn covering(
    io: &NodeIo,
    ext: &Tree<Extents>,
    first: u64,
    last: u64,
    pieces: &mut Vec<Piece>,
    crcs: &mut Vec<u32>,
) -> Result<()> {
    let Some(root) = &ext.root else {
        return Ok(());
    };
    let mut push = |k: u64, e: &Extent| {
        let a = k.max(first);
        let b = k.saturating_add(e.len()).min(last + 1);
        if a < b {
            pieces.push(Piece {
                blk: a,
                pblock: e.pblock + (a - k),
                crc: crcs.len(),
                len: b - a,
            });
            crcs.extend_from_slice(&e.crcs[(a - k) as usize..(b - k) as usize]);
        }
    };
    let mut start = first;
    let mut complete = false;
    floor_visit(
        io,
        root,
        ext.height.saturating_sub(1),
        ext.owner,
        first,
        &mut |k, e| {
            start = k;
            if k.saturating_add(e.len()) > last {
                push(k, e);
                complete = true;
            }
        },
    )?;
    if complete {
        return Ok(());
    }
    ext.scan(io, Some(&start), &mut |k, v| {
        if *k > last {
            return Ok(false);
        }
        push(*k, v);
        Ok(true)
    })
}

/// Call `f` with the entry of greatest key `<= k` under `c` (as
/// `Tree::floor`, but lending the entry instead of cloning its CRC list).
/// Returns whether there was one.
fn floor_visit(
    io: &NodeIo,
    c: &Child<Extents>,
    level: u8,
    owner: u64,
    k: u64,
    f: &mut dyn FnMut(u64, &Extent),
) -> Result<bool> {
    let node = get_node(io, c, level, owner)?;
    match &*node {
        Node::Leaf(e) => {
            let i = e.partition_point(|(x, _)| *x <= k);
            if i == 0 {
                return Ok(false);
            }
            f(e[i - 1].0, &e[i - 1].1);
            Ok(true)
        }
        Node::Branch(e) => {
            if level == 0 {
                return Err(Error::corrupt("extent branch node at level 0"));
            }
            let mut i = child_index(e, &k) + 1;
            // Separators are lower bounds: if child i holds nothing <= k, the
            // answer is the maximum of an earlier child.
            while i > 0 {
                i -= 1;
                if e[i].0 > k && i > 0 {
                    continue;
                }
                if floor_visit(io, &e[i].1, level - 1, owner, k, f)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

/// Read file block `blk` into `out` (exactly one block): the common random
/// read, without the general path's plan, so without a heap allocation (each
/// cost a malloc and a free of cold memory per read; profiled at 1 reader).
/// Returns false, having read nothing, when no extent holds the block (a
/// hole: the general path zeroes it). Same checks as the general path: the
/// block read from the device is CRC-checked (when `verify`) before it is
/// returned or cached.
fn read_block(
    io: &NodeIo,
    ext: &Tree<Extents>,
    buffered: Option<&BTreeMap<u64, Vec<u8>>>,
    blk: u64,
    out: &mut [u8],
    verify: bool,
) -> Result<bool> {
    let Some(root) = &ext.root else {
        return Ok(false);
    };
    let mut at: Option<(u64, u32)> = None;
    floor_visit(
        io,
        root,
        ext.height.saturating_sub(1),
        ext.owner,
        blk,
        &mut |k, e| {
            if k.saturating_add(e.len()) > blk {
                let i = blk - k;
                at = Some((e.pblock + i, e.crcs[i as usize]));
            }
        },
    )?;
    let Some((pb, crc)) = at else {
        return Ok(false);
    };
    // As in `read_at`: verified small reads go through the data cache.
    let hit = verify && io.data_cache.get(pb, crc).is_some_and(|d| {
        out.copy_from_slice(&d);
        true
    });
    if !hit {
        io.dev.read(pb, out)?;
        if verify {
            check_blocks(out, &[crc], pb, out.len())?;
            if io.data_cache.admit() {
                io.data_cache.put_copy(pb, crc, out);
            }
        }
    }
    if let Some(data) = buffered.and_then(|b| b.get(&blk)) {
        out.copy_from_slice(&data[..out.len()]);
    }
    Ok(true)
}

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
    if n as u64 == bs && off % bs == 0 && read_block(io, ext, buffered, first, out, verify)? {
        return Ok(n);
    }
    if n as u64 >= PREFETCH_READ_MIN {
        // A large read is likely one of a sequence: fetch the extent
        // leaves ahead in one batch rather than one synchronous read each
        // (measured on a loop device: 175 leaf reads of ~2.5 ms were 17 %
        // of a 512 MiB sequential read).
        ext.prefetch_leaves(io, &first, PREFETCH_LEAVES)?;
    }
    let mut pieces: Vec<Piece> = Vec::new();
    let mut all_crcs: Vec<u32> = Vec::new();
    covering(io, ext, first, last, &mut pieces, &mut all_crcs)?;
    let all_crcs = &all_crcs[..];
    // Plan: whole blocks inside the caller's buffer are read in place,
    // physically and logically contiguous runs merged into one request; the
    // (at most two) partial blocks at the ends go through small bounce
    // buffers. Everything goes to the device as one batch, so backends with
    // many requests in flight (io_uring, NBD) get them all at once.
    struct InPlace {
        pb: u64,
        lo: usize,
        hi: usize,
        /// Index range of the run's CRCs in `all_crcs`.
        crc: std::ops::Range<usize>,
    }
    struct Bounce {
        pb: u64,
        byte_lo: u64,
        buf: Vec<u8>,
        crc: std::ops::Range<usize>,
    }
    let mut inplace: Vec<InPlace> = Vec::new();
    let mut bounces: Vec<Bounce> = Vec::new();
    // Byte ranges of `out` filled from the data cache.
    let mut hits: Vec<(usize, usize)> = Vec::new();
    // Small verified reads go through the data cache; large ones (scans,
    // copies) neither look nor insert, so a scan cannot flush the blocks
    // that random readers keep coming back to.
    let use_cache = verify && (n as u64) <= CACHED_READ_MAX;
    let mut plan = |blk: u64, b: u64, p: &Piece| {
        let mut blk = blk;
        while blk < b {
            let cnt = (b - blk).min(MAX_READ / bs);
            let byte_lo = blk * bs;
            let byte_hi = (blk + cnt) * bs;
            let pb = p.pblock + (blk - p.blk);
            let c0 = p.crc + (blk - p.blk) as usize;
            let crc = c0..c0 + cnt as usize;
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
                            && r.crc.end == crc.start
                            && (hi - r.lo) as u64 <= MAX_READ =>
                    {
                        r.hi = hi;
                        r.crc.end = crc.end;
                    }
                    _ => inplace.push(InPlace { pb, lo, hi, crc }),
                }
            } else {
                bounces.push(Bounce {
                    pb,
                    byte_lo,
                    buf: vec![0u8; (cnt * bs) as usize],
                    crc,
                });
            }
            blk += cnt;
        }
    };
    for p in &pieces {
        let (a, b) = (p.blk, p.blk + p.len);
        if !use_cache {
            plan(a, b, p);
            continue;
        }
        // Cached blocks are copied now; each run of misses is planned.
        let mut run = a;
        for blk in a..b {
            let i = (blk - p.blk) as usize;
            let Some(d) = io.data_cache.get(p.pblock + i as u64, all_crcs[p.crc + i]) else {
                continue;
            };
            plan(run, blk, p);
            run = blk + 1;
            let byte_lo = blk * bs;
            let lo = byte_lo.max(off);
            let hi = (byte_lo + bs).min(end);
            out[(lo - off) as usize..(hi - off) as usize]
                .copy_from_slice(&d[(lo - byte_lo) as usize..(hi - byte_lo) as usize]);
            hits.push(((lo - off) as usize, (hi - off) as usize));
        }
        plan(run, b, p);
    }
    // Zero only what no extent covers (holes): the rest is about to be
    // overwritten by the reads. Pieces that chain from `first` to `last`
    // leave no hole (the usual case: nothing to sort).
    let gapless = pieces.first().is_some_and(|p| p.blk == first)
        && pieces.windows(2).all(|w| w[0].blk + w[0].len == w[1].blk)
        && pieces.last().is_some_and(|p| p.blk + p.len == last + 1);
    if !gapless {
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
    }
    match (inplace.len(), bounces.len()) {
        (0, 0) => {}
        // One request (a small read): straight to the device, no batch.
        (1, 0) => {
            let r = &inplace[0];
            io.dev.read(r.pb, &mut out[r.lo..r.hi])?;
        }
        (0, 1) => {
            let bo = &mut bounces[0];
            io.dev.read(bo.pb, &mut bo.buf)?;
        }
        _ => {
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
            io.dev.read_batch(&mut reqs)?;
        }
    }
    if verify {
        // Every (bytes, their CRCs, first block) to check.
        let mut work: Vec<(&[u8], &[u32], u64)> = Vec::with_capacity(inplace.len() + bounces.len());
        for r in &inplace {
            work.push((&out[r.lo..r.hi], &all_crcs[r.crc.clone()], r.pb));
        }
        for bo in &bounces {
            work.push((&bo.buf, &all_crcs[bo.crc.clone()], bo.pb));
        }
        check_all(&work, bs as usize)?;
    }
    // Everything read was verified above: remember it (unless the cache,
    // not being hit, samples what it admits).
    if use_cache && io.data_cache.admit() {
        let bsz = bs as usize;
        for r in &inplace {
            let crcs = &all_crcs[r.crc.clone()];
            for (i, (chunk, crc)) in out[r.lo..r.hi].chunks(bsz).zip(crcs).enumerate() {
                io.data_cache.put_copy(r.pb + i as u64, *crc, chunk);
            }
        }
        for bo in &bounces {
            let crcs = &all_crcs[bo.crc.clone()];
            for (i, (chunk, crc)) in bo.buf.chunks(bsz).zip(crcs).enumerate() {
                io.data_cache.put_copy(bo.pb + i as u64, *crc, chunk);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use notafs_blockdev::memory::MemoryDevice;

    use crate::{FormatOptions, Fs};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    /// A committed file of 8 MiB written in one piece: extents as long as
    /// the format allows (~250 blocks), so its extent tree has two levels
    /// (a root and a few leaves of at most four extents).
    fn big_extent_file() -> (Fs, Vec<u8>) {
        let dev = Arc::new(MemoryDevice::new(4096, 8192).unwrap());
        let fs = Fs::format(dev, &FormatOptions::default()).unwrap();
        let data = pattern(8 << 20);
        fs.create("f").unwrap().write_at(0, &data).unwrap();
        fs.commit().unwrap();
        (fs, data)
    }

    fn node_lookups(fs: &Fs) -> u64 {
        let (h, m) = fs.io().decoded.stats();
        h + m
    }

    #[test]
    fn read_inside_one_extent_descends_the_tree_once() {
        // A small read used to descend twice (floor, then a scan from the
        // floor key, which may also visit the next leaf), cloning the
        // extent's whole CRC list each time.
        let (fs, data) = big_extent_file();
        let snap = fs.snapshot();
        let f = snap.open("f").unwrap();
        for off in [0u64, 500 * 4096, (8 << 20) - 4096, 123_456, 100] {
            let mut buf = vec![0u8; 4096];
            // The first read fills the caches (nodes, data block).
            assert_eq!(f.read_at(off, &mut buf).unwrap(), 4096);
            let before = node_lookups(&fs);
            assert_eq!(f.read_at(off, &mut buf).unwrap(), 4096);
            let lookups = node_lookups(&fs) - before;
            assert_eq!(buf, data[off as usize..off as usize + 4096]);
            assert!(lookups <= 2, "4 KiB read at {off}: {lookups} node lookups");
        }
    }

    #[test]
    fn block_reads_match_the_data_and_check_it() {
        // Whole aligned blocks (the one-block path): committed data, a hole,
        // blocks written but not committed, and a damaged block.
        use notafs_blockdev::BlockDevice;
        let dev = Arc::new(MemoryDevice::new(4096, 8192).unwrap());
        let fs = Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
        let mut data = pattern(8 << 20);
        // Unique blocks (the pattern repeats every 256), to find one below.
        for (i, b) in data.chunks_mut(4096).enumerate() {
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        }
        let f = fs.create("f").unwrap();
        f.write_at(0, &data).unwrap();
        // 8 MiB, a hole of 1 MiB, 64 KiB.
        let tail = pattern(64 << 10);
        f.write_at(9 << 20, &tail).unwrap();
        fs.commit().unwrap();
        data.resize(9 << 20, 0);
        data.extend_from_slice(&tail);
        let blocks = data.len() as u64 / 4096;
        let mut buf = vec![0u8; 4096];
        let snap = fs.snapshot();
        let sf = snap.open("f").unwrap();
        for _ in 0..2 {
            for blk in 0..blocks {
                assert_eq!(sf.read_at(blk * 4096, &mut buf).unwrap(), 4096);
                assert!(buf == data[(blk * 4096) as usize..][..4096], "block {blk}");
            }
        }
        // Uncommitted writes over committed blocks and into the hole.
        for (at, len) in [(5 * 4096 + 10, 100usize), (2100 * 4096, 4096), (300 * 4096, 8192)] {
            let v = vec![0xC3u8; len];
            f.write_at(at, &v).unwrap();
            data[at as usize..at as usize + len].copy_from_slice(&v);
        }
        for blk in [5u64, 6, 299, 300, 301, 302, 2100, 2101] {
            assert_eq!(f.read_at(blk * 4096, &mut buf).unwrap(), 4096);
            assert!(buf == data[(blk * 4096) as usize..][..4096], "live block {blk}");
        }
        drop(sf);
        drop(snap);
        drop(f);
        drop(fs);
        // Damage one block on the device: a cold read of it fails with the
        // block's address, every time (nothing unverified is cached).
        let victim = 1234usize;
        let mut raw = vec![0u8; 4096];
        let pb = (0..8192u64)
            .find(|&b| {
                dev.read(b, &mut raw).unwrap();
                raw == data[victim * 4096..][..4096]
            })
            .expect("victim block on the device");
        raw[7] ^= 1;
        dev.write(pb, &raw).unwrap();
        let fs = Fs::open(dev.clone(), &crate::OpenOptions::default()).unwrap();
        let snap = fs.snapshot();
        let sf = snap.open("f").unwrap();
        for _ in 0..2 {
            match sf.read_at(victim as u64 * 4096, &mut buf) {
                Err(crate::Error::Checksum { block, .. }) => assert_eq!(block, pb),
                other => panic!("damaged block read as {other:?}"),
            }
        }
        assert_eq!(sf.read_at(4096 * (victim as u64 + 1), &mut buf).unwrap(), 4096);
    }

    #[test]
    fn reads_across_extents_and_holes_match_the_data() {
        let (fs, mut data) = big_extent_file();
        // A hole past the end, then data again: 8 MiB + 1 MiB hole + 64 KiB.
        let f = fs.open_file("f").unwrap();
        let tail = pattern(64 << 10);
        f.write_at(9 << 20, &tail).unwrap();
        fs.commit().unwrap();
        data.resize(9 << 20, 0);
        data.extend_from_slice(&tail);
        let snap = fs.snapshot();
        let f = snap.open("f").unwrap();
        let mut s = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..300 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let off = s % data.len() as u64;
            let len = [1usize, 4096, 5000, 8192, 200 << 10, 3 << 20][(s >> 40) as usize % 6];
            let mut buf = vec![0xAAu8; len];
            let n = f.read_at(off, &mut buf).unwrap();
            let want = &data[off as usize..(off as usize + len).min(data.len())];
            assert_eq!(n, want.len());
            assert!(buf[..n] == *want, "read of {len} at {off}");
        }
    }
}
