//! The oracle: what must hold for every crash state.
use std::sync::Arc;

use notafs_blockdev::crash::OpKind;
use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::BlockDevice;
use notafs_core::check::{self, CheckOptions, Severity};
use notafs_core::{Fs, OpenOptions, Snapshot};

use crate::exec::{open_opts, Run, CACHE};
use crate::model::{History, Tree};

/// Name of the file the usability probe creates (never used by workloads).
pub const PROBE: &str = "__probe__";

/// Everything a snapshot shows: every directory, every file's bytes.
pub fn listing(s: &Snapshot) -> notafs_core::Result<Tree> {
    let mut t = Tree::default();
    let mut stack = vec![String::new()];
    while let Some(d) = stack.pop() {
        for e in s.read_dir(&d)? {
            let p = if d.is_empty() {
                e.name.clone()
            } else {
                format!("{d}/{}", e.name)
            };
            if e.meta.is_dir() {
                t.dirs.insert(p.clone());
                stack.push(p);
            } else {
                let bytes = s.read_to_vec(&p)?;
                if bytes.len() as u64 != e.meta.size {
                    return Err(notafs_core::Error::Corrupt(format!(
                        "{p}: read {} bytes, size says {}",
                        bytes.len(),
                        e.meta.size
                    )));
                }
                t.files.insert(p, bytes);
            }
        }
    }
    Ok(t)
}

fn problems(r: &check::CheckReport, min: Severity) -> String {
    r.problems
        .iter()
        .filter(|p| p.severity >= min)
        .take(4)
        .map(|p| format!("[{}] {}", p.code, p.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What `fsck.notafs -n` calls clean (exit 0): a generation was checked, no
/// error, and both superblock copies are good (fsck asks to repair a
/// damaged copy, so it exits 4 for one; see `fsck/src/lib.rs`, `verdict`).
pub fn fsck_clean(r: &check::CheckReport) -> bool {
    r.is_clean()
        && !r
            .problems
            .iter()
            .any(|p| p.code == "superblock" && p.severity >= Severity::Warning)
}

/// Which model generations equal `t` (for messages).
fn matching(h: &History, t: &Tree) -> String {
    let v: Vec<String> = h
        .gens
        .iter()
        .filter(|(_, x)| ***x == *t)
        .map(|(g, _)| g.to_string())
        .collect();
    if v.is_empty() {
        "no model generation".into()
    } else {
        format!("model generation(s) {}", v.join(", "))
    }
}

/// The five checks of the oracle on one crash image that stands for every
/// cut in `cut..=last_cut`.
pub fn check_state(
    img: Arc<dyn BlockDevice>,
    cut: usize,
    last_cut: usize,
    h: &History,
) -> Result<(), String> {
    let (lo, hi) = h.allowed(cut, last_cut);
    // 1. It opens.
    let fs = Fs::open(img.clone(), &open_opts()).map_err(|e| format!("open failed: {e}"))?;
    // 3. Exactly one allowed committed generation, never a mix.
    let g = fs.generation();
    if g < lo || g > hi {
        return Err(format!(
            "opened generation {g}, allowed {lo}..={hi} (last commit returned / started)"
        ));
    }
    let want = h
        .gens
        .get(&g)
        .ok_or_else(|| format!("opened generation {g} that the model never committed"))?;
    let got = listing(&fs.snapshot()).map_err(|e| format!("reading generation {g}: {e}"))?;
    if got != **want {
        return Err(format!(
            "generation {g} content differs from the model: {} (it equals {})",
            want.diff(&got),
            matching(h, &got)
        ));
    }
    // 2. fsck -n is clean.
    let rep = check::check(
        img.clone(),
        &CheckOptions {
            cache_bytes: Some(CACHE),
            ..CheckOptions::default()
        },
    )
    .map_err(|e| format!("check failed to run: {e}"))?;
    if !fsck_clean(&rep) {
        return Err(format!(
            "check not clean (fsck -n would exit 4): {}",
            problems(&rep, Severity::Warning)
        ));
    }
    if rep.generation != Some(g) {
        return Err(format!(
            "check looked at generation {:?}, open at {g}",
            rep.generation
        ));
    }
    // 4. Every retained older generation opens and matches its model, and
    // every committed generation of the ring window is retained. While
    // commit g + 1 is in flight its root slot (g + 1) mod N may hold
    // garbage, losing generation g + 1 - N: so N - 1 generations are
    // guaranteed.
    let retained: Vec<u64> = fs.generations().iter().map(|x| x.generation).collect();
    let n = h.root_slots as u64;
    for old in (g + 2).saturating_sub(n)..g {
        // Out of space, the filesystem gives up older generations on
        // purpose, wiping their slots first (`Fs::reclaim`): a slot that no
        // longer decodes (zeros, or a wipe cut by the crash) is that; a slot
        // that decodes as `old` but does not verify would be a loss.
        let wiped = fs
            .slot_status()
            .iter()
            .any(|st| st.index as u64 == old % n && st.state.is_err());
        if h.gens.contains_key(&old)
            && !h.dropped.contains(&old)
            && !retained.contains(&old)
            && !wiped
        {
            return Err(format!(
                "generation {old} is inside the {n}-slot window of {g} but not retained (retained: {retained:?})"
            ));
        }
    }
    for &old in &retained {
        if old == g {
            continue;
        }
        let want = h
            .gens
            .get(&old)
            .ok_or_else(|| format!("retained generation {old} unknown to the model"))?;
        let ofs = Fs::open(
            img.clone(),
            &OpenOptions {
                read_only: true,
                generation: Some(old),
                cache_bytes: CACHE,
                write_behind: None,
                ..OpenOptions::default()
            },
        )
        .map_err(|e| format!("retained generation {old} does not open: {e}"))?;
        let got = listing(&ofs.snapshot())
            .map_err(|e| format!("reading retained generation {old}: {e}"))?;
        if got != **want {
            return Err(format!(
                "retained generation {old} differs from the model: {} (it equals {})",
                want.diff(&got),
                matching(h, &got)
            ));
        }
    }
    // 5. Usable: a new write and commit succeed and read back after reopen.
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 + g as u32) as u8).collect();
    // A full image may refuse the probe. Usable then means: a removal
    // commits, and after the N commits that the reuse rule holds freed
    // blocks for, the space comes back.
    let ring = fs.superblock().ring_slots as usize;
    let mut removed = false;
    let mut attempts = 0;
    let f = loop {
        let r = fs
            .open_file_with(PROBE, true, true)
            .and_then(|f| f.write_at(0, &data).map(|_| f));
        match r {
            Ok(f) => break f,
            Err(notafs_core::Error::NoSpace) if attempts <= ring + 1 => {
                fs.abort()
                    .map_err(|e| format!("probe: abort failed: {e}"))?;
                if !removed {
                    let big = got
                        .files
                        .iter()
                        .max_by_key(|(_, v)| v.len())
                        .map(|(k, _)| k.clone())
                        .ok_or("probe: NoSpace on an empty filesystem")?;
                    fs.remove(&big)
                        .map_err(|e| format!("probe: remove {big} on a full image failed: {e}"))?;
                    removed = true;
                }
                fs.commit()
                    .map_err(|e| format!("probe: commit while freeing space failed: {e}"))?;
                attempts += 1;
            }
            Err(e) => return Err(format!("probe create/write failed: {e}")),
        }
    };
    let g = fs.generation();
    let g2 = fs
        .commit()
        .map_err(|e| format!("probe commit failed: {e}"))?;
    drop(f);
    // Close seals a one-flush commit with a log-free slot (one more
    // generation, same tree).
    fs.close().map_err(|e| format!("probe close failed: {e}"))?;
    let sealed = fs.generation();
    drop(fs);
    let fs = Fs::open(img, &open_opts()).map_err(|e| format!("reopen after probe: {e}"))?;
    if fs.generation() != sealed || g2 != g + 1 || !(sealed == g2 || sealed == g2 + 1) {
        return Err(format!(
            "probe commit returned {g2}, reopen shows {} (base {g})",
            fs.generation()
        ));
    }
    let back = fs
        .snapshot()
        .read_to_vec(PROBE)
        .map_err(|e| format!("probe read back: {e}"))?;
    if back != data {
        return Err("probe reads back wrong bytes".into());
    }
    Ok(())
}

/// Lost-write states (beyond the crash model: the device lost one block of
/// a commit that it had acknowledged). For each commit, each block it wrote
/// before its root slot is reverted to its content before the commit. The
/// filesystem may refuse to open, fall back, or return errors, but must
/// never silently show bytes that no generation held; and when reads detect
/// damage, `check --verify-data` must detect it too.
pub fn lost_write_states(
    run: &Run,
    cap: u64,
    on_state: &mut dyn FnMut() -> bool,
) -> Option<(String, String)> {
    let h = &run.model.hist;
    let log = run.dev.log();
    let mut img = run.base.to_vec();
    let bs = run.dev.geometry().block_size as usize;
    let apply = |img: &mut Vec<u8>, k: &OpKind| match k {
        OpKind::Write { block, data } => {
            let o = *block as usize * bs;
            img[o..o + data.len()].copy_from_slice(data);
        }
        OpKind::WriteZeroes { block, count } | OpKind::Discard { block, count } => {
            let o = *block as usize * bs;
            img[o..o + *count as usize * bs].fill(0);
        }
        _ => {}
    };
    // Candidate (commit, op, block) triples: every block written since the
    // previous commit returned, up to this commit's root slot.
    let mut cands: Vec<(usize, usize, u64)> = Vec::new();
    let mut prev_end = 0;
    let mut spans = Vec::new();
    for (ci, c) in h.commits.iter().enumerate() {
        let Some(end) = c.end_op else { continue };
        // The root slot is the last write before the final flush.
        let last_write = (c.start_op..end)
            .rev()
            .find(|&i| matches!(log[i].kind, OpKind::Write { .. }));
        for i in prev_end..end {
            if Some(i) == last_write {
                continue;
            }
            if let OpKind::Write { block, data } = &log[i].kind {
                for b in 0..(data.len() / bs) as u64 {
                    cands.push((ci, i, block + b));
                }
            }
        }
        spans.push((ci, prev_end, end));
        prev_end = end;
    }
    let stride = if cap > 0 && cands.len() as u64 > cap {
        (cands.len() as u64).div_ceil(cap) as usize
    } else {
        1
    };
    let picked: Vec<(usize, usize, u64)> = cands.into_iter().step_by(stride).collect();
    let mut applied = 0;
    let mut p = 0;
    for (ci, from, end) in spans {
        let c = &h.commits[ci];
        while applied < from {
            apply(&mut img, &log[applied].kind);
            applied += 1;
        }
        let before = img.clone();
        let mut after = img.clone();
        for op in &log[from..end] {
            apply(&mut after, &op.kind);
        }
        while p < picked.len() && picked[p].0 == ci {
            let (_, op, b) = picked[p];
            p += 1;
            let o = b as usize * bs;
            if before[o..o + bs] == after[o..o + bs] {
                continue;
            }
            let mut bad = after.clone();
            bad[o..o + bs].copy_from_slice(&before[o..o + bs]);
            let desc = format!(
                "after {} of generation {} (ops {}..{}): block {b} written by op {op} lost (reads its old content)",
                c.what, c.generation, c.start_op, end
            );
            let res = check_lost(bad, bs as u32, c.generation, h);
            let go_on = on_state();
            if let Err(m) = res {
                return Some((desc, m));
            }
            if !go_on {
                return None;
            }
        }
    }
    None
}

fn check_lost(img: Vec<u8>, bs: u32, newest: u64, h: &History) -> Result<(), String> {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::from_vec(bs, img));
    let fs = match Fs::open(dev.clone(), &open_opts()) {
        Ok(fs) => fs,
        Err(_) => return Ok(()), // refused: detected
    };
    let g = fs.generation();
    if g > newest {
        return Err(format!("opened generation {g}, newer than {newest}"));
    }
    let Some(want) = h.gens.get(&g) else {
        return Err(format!("opened generation {g} unknown to the model"));
    };
    let read = listing(&fs.snapshot());
    drop(fs);
    match read {
        Ok(got) if got == **want => Ok(()),
        Ok(got) => Err(format!(
            "silent corruption: generation {g} reads without error but differs from the model: {} (it equals {})",
            want.diff(&got),
            matching(h, &got)
        )),
        Err(read_err) => {
            let rep = check::check(
                dev,
                &CheckOptions {
                    verify_data: true,
                    cache_bytes: Some(CACHE),
                    ..CheckOptions::default()
                },
            );
            match rep {
                Ok(r) if r.is_clean() => Err(format!(
                    "reads fail ({read_err}) but check --verify-data reports the image clean"
                )),
                _ => Ok(()),
            }
        }
    }
}

/// The oracle of a crash state of an mkfs workload (the log holds a
/// format, then maybe commits on the new filesystem). Allowed:
/// * "not a notafs filesystem", until the format has returned;
/// * the old filesystem (the base image's UUID), until the format has
///   returned, at a generation it committed, with that content, clean;
/// * the new filesystem (`MKFS_UUID`): everything [`check_state`] demands
///   (generation bounds, content, fsck -n clean, usable).
///
/// Anything else (an open that fails otherwise, a check that is not clean)
/// is a format that a power cut turned into a damaged filesystem.
pub fn check_mkfs_state(
    img: Arc<dyn BlockDevice>,
    cut: usize,
    last_cut: usize,
    h: &History,
) -> Result<(), String> {
    let fmt = h.format.as_ref().ok_or("no format in the history")?;
    let returned = fmt.end_op.is_some_and(|e| e <= last_cut);
    let fs = match Fs::open(img.clone(), &open_opts()) {
        Err(notafs_core::Error::NotNotafs(m)) => {
            if returned {
                return Err(format!("format returned but the device is not notafs: {m}"));
            }
            return Ok(());
        }
        Err(e) => {
            return Err(format!(
                "neither \"not a notafs filesystem\" nor a filesystem that opens: {e}"
            ))
        }
        Ok(fs) => fs,
    };
    if fs.superblock().uuid == crate::exec::MKFS_UUID {
        if cut <= fmt.start_op {
            return Err("the new filesystem shows before the format started".into());
        }
        drop(fs);
        return check_state(img, cut, last_cut, h);
    }
    if returned {
        return Err(format!(
            "the format returned but the old filesystem (generation {}) still opens",
            fs.generation()
        ));
    }
    let g = fs.generation();
    let want = h.old_gens.get(&g).ok_or_else(|| {
        format!("the old filesystem opens at generation {g}, which it never committed")
    })?;
    let got =
        listing(&fs.snapshot()).map_err(|e| format!("old filesystem, generation {g}: {e}"))?;
    if got != **want {
        return Err(format!(
            "old filesystem generation {g} differs from what it held: {}",
            want.diff(&got)
        ));
    }
    drop(fs);
    let rep = check::check(
        img.clone(),
        &CheckOptions {
            cache_bytes: Some(CACHE),
            ..CheckOptions::default()
        },
    )
    .map_err(|e| format!("check of the old filesystem failed to run: {e}"))?;
    // A torn write of the erase mark (a block that is neither the old
    // primary nor the mark) is what the backup copy exists for: the old
    // filesystem opens from it with its contents intact (checked above),
    // and the only findings allowed are about the superblock copies (fsck
    // -y rewrites the primary; mkfs run again replaces it all).
    let torn_primary = {
        let mut b = vec![0u8; img.geometry().block_size as usize];
        img.read(0, &mut b).is_ok()
            && !notafs_core::superblock::is_erase_mark(&b)
            && notafs_core::Superblock::decode(
                &b,
                0,
                img.geometry().block_size,
                img.geometry().block_count,
            )
            .is_err()
    };
    let superblock_only = rep.problems.iter().all(|p| p.code == "superblock");
    if !fsck_clean(&rep) && !(torn_primary && superblock_only) {
        return Err(format!(
            "old filesystem opens but is not clean for fsck -n: {}",
            problems(&rep, Severity::Warning)
        ));
    }
    Ok(())
}
