//! The content digest: BLAKE2b-256 over what a user sees (names, types,
//! sizes, bytes), in name order, so two images with the same files compare
//! equal whatever their layout, block size or history.
//!
//! Encoding fed to the hash, per entry in depth-first name order:
//! `type u8 (1 file, 2 dir) | path length u32 | path | size u64 | bytes`.
use blake2::Digest;

use crate::checksum::Blake2b256;
use crate::file_table::FileType;
use crate::{path, Error, Result, Snapshot};

pub(crate) fn digest(snap: &Snapshot, root: &str) -> Result<[u8; 32]> {
    let mut h = Blake2b256::new();
    let comps = path::components(root)?;
    let root = comps.join("/");
    let meta = snap.stat(&root)?;
    // Explicit stack: depth is bounded by MAX_DEPTH, never by recursion.
    let mut stack: Vec<(String, FileType, usize)> = vec![(root, meta.kind, 0)];
    let mut buf = vec![0u8; 1 << 20];
    // A directory reached twice (a DAG in a damaged file table) would make
    // the walk exponential in the depth: refuse it.
    let mut dirs = std::collections::HashSet::new();
    while let Some((p, kind, depth)) = stack.pop() {
        if depth > path::MAX_DEPTH {
            return Err(Error::corrupt("directory tree deeper than 64 levels"));
        }
        match kind {
            FileType::Dir => {
                let ino = snap.stat(&p)?.ino;
                if !dirs.insert(ino) {
                    return Err(Error::corrupt(format!(
                        "directory inode {ino} is reachable by two paths ({p})"
                    )));
                }
                h.update([2u8]);
                h.update((p.len() as u32).to_le_bytes());
                h.update(p.as_bytes());
                h.update(0u64.to_le_bytes());
                let mut entries = snap.read_dir(&p)?;
                entries.reverse();
                for e in entries {
                    let child = if p.is_empty() {
                        e.name
                    } else {
                        format!("{p}/{}", e.name)
                    };
                    stack.push((child, e.meta.kind, depth + 1));
                }
            }
            FileType::File => {
                let f = snap.open(&p)?;
                h.update([1u8]);
                h.update((p.len() as u32).to_le_bytes());
                h.update(p.as_bytes());
                h.update(f.len().to_le_bytes());
                let mut off = 0;
                while off < f.len() {
                    let n = f.read_at(off, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    off += n as u64;
                }
            }
        }
    }
    Ok(h.finalize().into())
}

/// Lower-case hex of a digest.
pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}
