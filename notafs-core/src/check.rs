//! Consistency check and repair: the library behind `fsck.notafs`, and the
//! oracle of the crash harness.
//!
//! The check walks one generation completely: both superblock copies, every
//! root slot, every node of the file table and of every extent tree, every
//! extent, the free-space list; it accounts for every block of the device
//! (`used + free + pending + reserved = total`). It never writes.
//!
//! Repairs live in `repair.rs`, which builds on this module.
use std::sync::Arc;

use notafs_blockdev::BlockDevice;

use crate::check_tree::check_generation;
use crate::fs::{Fs, OpenOptions};
use crate::superblock::Superblock;
use crate::{Error, Result};

pub use crate::check_report::*;

/// Check the filesystem on `dev`. Returns Err only when the device is not a
/// notafs filesystem at all or cannot be read; damage is reported in the
/// report.
pub fn check(dev: Arc<dyn BlockDevice>, opts: &CheckOptions<'_>) -> Result<CheckReport> {
    let (sb, source) = Fs::read_superblock(dev.as_ref())?;
    let mut r = CheckReport {
        generation: None,
        newest: None,
        superblock: Some(sb.clone()),
        problems: Vec::new(),
        stats: CheckStats::default(),
        retained: Vec::new(),
        damaged: Vec::new(),
    };
    check_superblocks(dev.as_ref(), &sb, source, &mut r);

    let open = |g: Option<u64>| {
        Fs::open(
            dev.clone(),
            &OpenOptions {
                read_only: true,
                generation: g,
                cache_bytes: opts.cache_bytes.unwrap_or(crate::DEFAULT_CACHE_BYTES),
                discard: false,
                write_behind: None,
            },
        )
    };
    let fs = match open(None) {
        Ok(fs) => fs,
        // An I/O error is not damage: the caller reports it (exit 8) and
        // nothing is repaired on its strength.
        Err(e) if e.is_io() => return Err(e),
        Err(e) => {
            r.push(
                Severity::Error,
                "root",
                format!("no generation can be opened: {e}"),
            );
            return Ok(r);
        }
    };
    let newest = fs.generation();
    r.newest = Some(newest);
    for s in fs.slot_status() {
        match (&s.state, &s.roots_ok) {
            (Err(e), _) if e == "empty" => {}
            (Err(e), _) => r.push(
                Severity::Info,
                "slot",
                format!("root slot {}: {e}", s.index),
            ),
            // A checksum-valid root newer than the one opened: a power cut
            // cannot leave one (the slot is written after a barrier behind
            // its trees), so it is damage, and a commit would overwrite it.
            (Ok(slot), Some(Err(e))) if slot.generation > newest => r.push(
                Severity::Error,
                "skipped-root",
                format!(
                    "root slot {} (generation {}, newer than the newest readable {newest}) is \
                     checksum-valid but its file table does not verify: {e}",
                    s.index, slot.generation
                ),
            ),
            (Ok(slot), Some(Err(e))) => r.push(
                Severity::Warning,
                "slot",
                format!(
                    "root slot {} (generation {}): roots do not verify: {e}",
                    s.index, slot.generation
                ),
            ),
            (Ok(slot), _) if slot.generation > newest => r.push(
                Severity::Info,
                "slot",
                format!(
                    "root slot {} holds generation {} newer than the newest valid",
                    s.index, slot.generation
                ),
            ),
            _ => {}
        }
    }
    r.retained = fs.generations().iter().map(|g| g.generation).collect();
    let fs = match opts.generation {
        None => fs,
        Some(g) => match open(Some(g)) {
            Ok(fs) => fs,
            Err(e) if e.is_io() => return Err(e),
            Err(e) => {
                r.push(Severity::Error, "root", format!("generation {g}: {e}"));
                return Ok(r);
            }
        },
    };
    r.generation = Some(fs.generation());
    let slot = fs.committed_slot();
    match check_generation(&fs, &slot, opts, &mut r) {
        Err(e) if e.is_io() => return Err(e),
        Err(e) => r.push(Severity::Error, "tree", e.to_string()),
        Ok(()) => {}
    }
    Ok(r)
}

fn check_superblocks(dev: &dyn BlockDevice, sb: &Superblock, source: u64, r: &mut CheckReport) {
    let bs = sb.block_size as usize;
    let mut buf = vec![0u8; bs];
    for addr in [0, sb.backup_address()] {
        let res = dev.read(addr, &mut buf).map_err(Error::from).and_then(|_| {
            Superblock::decode(&buf, addr, sb.block_size, dev.geometry().block_count)
        });
        match res {
            Ok(copy) if copy == *sb => {}
            Ok(_) => r.push(
                Severity::Warning,
                "superblock",
                format!("superblock copy at block {addr} differs from the one in use"),
            ),
            Err(e) => r.push(
                Severity::Warning,
                "superblock",
                format!("superblock copy at block {addr}: {e}"),
            ),
        }
    }
    if source != 0 {
        r.push(
            Severity::Warning,
            "superblock",
            "primary superblock unusable: the backup was used",
        );
    }
}
