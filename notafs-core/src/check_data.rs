//! Data verification for the check: read every data block of a file in
//! large merged runs on a reader thread and compare each block's CRC-32C.
use std::collections::HashMap;

use crate::btree::NodeIo;
use crate::check_report::CheckOptions;
use crate::file_table::ROOT_INO;
use crate::{Error, Result};

/// Full path of inode `ino` from the root, through the parent links of the
/// checked table (bounded: a cycle or a missing parent gives `?/...`).
pub(crate) fn full_path(names: &HashMap<u64, (u64, &str)>, ino: u64) -> String {
    let mut parts = Vec::new();
    let mut cur = ino;
    for _ in 0..=crate::path::MAX_DEPTH + 1 {
        if cur == ROOT_INO {
            parts.reverse();
            return format!("/{}", parts.join("/"));
        }
        match names.get(&cur) {
            Some((parent, name)) => {
                parts.push(*name);
                cur = *parent;
            }
            None => break,
        }
    }
    parts.reverse();
    format!("?/{}", parts.join("/"))
}

/// Read and verify data extents, merging physically contiguous ones into
/// reads of up to 16 MiB, on a reader thread, so the device streams at its
/// sequential speed while this thread checks the previous run's CRCs.
/// `runs` holds (physical block, CRCs, file block). Returns the damaged
/// file blocks as sorted (first, count) runs; a read error is an error (an
/// I/O error is not damage).
pub(crate) fn verify_runs(
    io: &NodeIo,
    runs: &mut Vec<(u64, Vec<u32>, u64)>,
    bs: u64,
    verified: &mut u64,
    total: u64,
    opts: &CheckOptions<'_>,
) -> Result<Vec<(u64, u64)>> {
    const MAX_RUN: u64 = 16 << 20;
    runs.sort_by_key(|x| x.0);
    // (physical start, length, file block) of each extent, to map a bad
    // physical block back to its file block.
    let map: Vec<(u64, u64, u64)> = runs
        .iter()
        .map(|(p, c, l)| (*p, c.len() as u64, *l))
        .collect();
    // Merge contiguous runs.
    let mut merged: Vec<(u64, Vec<u32>)> = Vec::new();
    for (start, crcs, _) in runs.drain(..) {
        match merged.last_mut() {
            Some((s, c))
                if *s + c.len() as u64 == start
                    && (c.len() + crcs.len()) as u64 * bs <= MAX_RUN =>
            {
                c.extend_from_slice(&crcs)
            }
            _ => merged.push((start, crcs)),
        }
    }
    type Msg = (
        u64,
        usize,
        std::result::Result<(Vec<u8>, usize), notafs_blockdev::BlockError>,
    );
    let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(2);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let plan: Vec<(u64, usize)> = merged.iter().map(|(s, c)| (*s, c.len())).collect();
    let mut bad_physical: Vec<u64> = Vec::new();
    let res = std::thread::scope(|sc| -> Result<()> {
        let dev = &io.dev;
        sc.spawn(move || {
            for (start, n) in plan {
                let len = n * bs as usize;
                let mut buf = back_rx.try_recv().unwrap_or_default();
                // A 4096-aligned window: O_DIRECT backends read straight
                // into it instead of bouncing through a copy.
                buf.resize(len + 4096, 0);
                let a = buf.as_ptr().align_offset(4096).min(4096);
                let res = dev.read(start, &mut buf[a..a + len]).map(|_| (buf, a));
                if tx.send((start, len, res)).is_err() {
                    return;
                }
            }
        });
        for (start, crcs) in &merged {
            let Ok((_, len, res)) = rx.recv() else {
                return Err(Error::Internal("data reader thread stopped".into()));
            };
            match res {
                Err(source) => {
                    return Err(Error::Io {
                        what: "data",
                        block: *start,
                        source,
                    })
                }
                Ok((buf, a)) => {
                    for (i, (chunk, want)) in
                        buf[a..a + len].chunks(bs as usize).zip(crcs).enumerate()
                    {
                        if crate::checksum::crc(chunk) != *want {
                            bad_physical.push(*start + i as u64);
                        }
                    }
                    let _ = back_tx.send(buf);
                }
            }
            *verified += len as u64;
            if let Some(p) = opts.progress {
                p((*verified).min(total), total);
            }
        }
        Ok(())
    });
    res?;
    let mut bad: Vec<u64> = bad_physical
        .iter()
        .filter_map(|&pb| {
            let i = map.partition_point(|m| m.0 <= pb).checked_sub(1)?;
            let (p, n, l) = map[i];
            (pb < p + n).then(|| l + (pb - p))
        })
        .collect();
    bad.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for b in bad {
        match out.last_mut() {
            Some((s, n)) if *s + *n == b => *n += 1,
            _ => out.push((b, 1)),
        }
    }
    Ok(out)
}
