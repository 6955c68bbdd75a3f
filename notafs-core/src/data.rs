//! Reading file data: extents to device reads, with every block checked
//! against the CRC its extent records.
use std::collections::BTreeMap;

use crate::btree::{NodeIo, Tree};
use crate::extent_tree::{Extent, Extents};
use crate::{Error, Result};

/// Largest single device read issued by the read path (bounds the bounce
/// buffer whatever the caller asks for).
const MAX_READ: u64 = 8 << 20;

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
    out.fill(0);
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
    let mut bounce: Vec<u8> = Vec::new();
    for (k, e) in pieces {
        let a = k.max(first);
        let b = (k + e.len()).min(last + 1);
        let mut blk = a;
        while blk < b {
            let cnt = (b - blk).min(MAX_READ / bs);
            let byte_lo = blk * bs;
            let byte_hi = (blk + cnt) * bs;
            let pb = e.pblock + (blk - k);
            let crcs = &e.crcs[(blk - k) as usize..(blk - k + cnt) as usize];
            if byte_lo >= off && byte_hi <= end {
                // Whole blocks inside the caller's buffer: read in place.
                let dst = &mut out[(byte_lo - off) as usize..(byte_hi - off) as usize];
                io.dev.read(pb, dst)?;
                if verify {
                    check_blocks(dst, crcs, pb, bs as usize)?;
                }
            } else {
                bounce.resize((cnt * bs) as usize, 0);
                io.dev.read(pb, &mut bounce)?;
                if verify {
                    check_blocks(&bounce, crcs, pb, bs as usize)?;
                }
                let lo = byte_lo.max(off);
                let hi = byte_hi.min(end);
                out[(lo - off) as usize..(hi - off) as usize]
                    .copy_from_slice(&bounce[(lo - byte_lo) as usize..(hi - byte_lo) as usize]);
            }
            blk += cnt;
        }
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
