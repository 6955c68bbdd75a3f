//! Running a workload on a crash device, in lockstep with the model.
use std::sync::Arc;

use notafs_blockdev::crash::{CrashDevice, CrashImage, EnumOptions};
use notafs_blockdev::BlockDevice;
use notafs_core::check::CheckOptions;
use notafs_core::{Error, FormatOptions, Fs, OpenOptions};

use crate::model::{pattern, Model, Tree};
use crate::oracle::{self, listing};
use crate::workload::{Base, Op, Workload};

/// Cache for every filesystem the harness opens: small, so that opening
/// costs little (the images are a few MiB).
pub const CACHE: usize = 256 << 10;

pub fn open_opts() -> OpenOptions {
    OpenOptions {
        read_only: false,
        generation: None,
        cache_bytes: CACHE,
        // Background flushes would make the device log depend on timing.
        write_behind: None,
        ..OpenOptions::default()
    }
}

fn open_opts_for(w: &Workload) -> OpenOptions {
    OpenOptions {
        discard: w.discard,
        ..open_opts()
    }
}

/// UUID and time of every image the harness formats (deterministic runs).
pub fn format_opts(root_slots: u32) -> FormatOptions {
    FormatOptions {
        label: "crashtest".into(),
        uuid: Some(*b"notafs-crashtest"),
        root_slots,
        node_size: None,
        time: Some(1_700_000_000),
    }
}

/// UUID of the filesystems the mkfs workloads create (the base images use
/// `notafs-crashtest`, so old and new are told apart).
pub const MKFS_UUID: [u8; 16] = *b"notafs-mkfs-new!";

/// Enumeration options of a workload: the issue-2 defaults, seeded.
pub fn enum_opts(seed: u64) -> EnumOptions {
    EnumOptions {
        seed,
        ..EnumOptions::default()
    }
}

/// The result of running a workload.
pub struct Run {
    pub dev: Arc<CrashDevice>,
    /// The image the log starts from.
    pub base: CrashImage,
    pub model: Model,
    /// Ops the model rejected (skipped; shrinking produces such sequences).
    pub skipped: usize,
    /// Ops or commits refused with NoSpace (the transaction was dropped).
    pub nospace: usize,
}

/// Why a run could not produce crash states: a behaviour of the live
/// filesystem that disagrees with the model (a violation too).
#[derive(Debug, Clone)]
pub struct RunError {
    pub op_index: Option<usize>,
    pub message: String,
}

fn rerr(op_index: Option<usize>, message: String) -> RunError {
    RunError { op_index, message }
}

/// Build the base image and the model of its history.
pub fn base(w: &Workload) -> Result<(CrashImage, Model), RunError> {
    match &w.base {
        Base::Fresh {
            block_size,
            blocks,
            root_slots,
            setup,
        } => {
            let dev = Arc::new(
                CrashDevice::new(*block_size, *blocks)
                    .map_err(|e| rerr(None, format!("device: {e}")))?,
            );
            let fs = Fs::format(dev.clone(), &format_opts(*root_slots))
                .map_err(|e| rerr(None, format!("format: {e}")))?;
            let mut model = Model::new(fs.generation(), Tree::default(), *root_slots);
            let mut st = Exec {
                discard: false,
                dev: dev.clone(),
                fs: Some(fs),
                model: &mut model,
                skipped: 0,
                nospace: 0,
            };
            for op in setup {
                st.step(op)
                    .map_err(|m| rerr(None, format!("setup {op}: {m}")))?;
            }
            st.finish()
                .map_err(|m| rerr(None, format!("setup close: {m}")))?;
            drop(st);
            model.hist.commits.clear();
            model.hist.base_generation = model.generation;
            Ok((dev.snapshot(), model))
        }
        Base::Blank {
            block_size,
            blocks,
            garbage,
        } => {
            let dev = match garbage {
                None => CrashDevice::new(*block_size, *blocks),
                Some(g) => {
                    let mut r = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(*g);
                    let mut v = vec![0u8; (*block_size as u64 * *blocks) as usize];
                    rand::RngCore::fill_bytes(&mut r, &mut v);
                    CrashDevice::from_vec(*block_size, v)
                }
            }
            .map_err(|e| rerr(None, format!("device: {e}")))?;
            Ok((dev.snapshot(), Model::new(0, Tree::default(), 2)))
        }
        Base::Crash { parent, state } => {
            let run = execute(parent)?;
            let opts = enum_opts(seed_of(parent));
            let count = run.dev.count_states(&opts);
            if count == 0 {
                return Err(rerr(None, "parent has no crash states".into()));
            }
            let idx = state % count;
            let st = run
                .dev
                .states(&opts)
                .nth(idx as usize)
                .ok_or_else(|| rerr(None, "state vanished".into()))?;
            let img = st.image();
            let fs = Fs::open(Arc::new(img.snapshot()), &open_opts()).map_err(|e| {
                rerr(
                    None,
                    format!("parent crash state #{idx} ({}) does not open: {e}", st.desc),
                )
            })?;
            let g = fs.generation();
            drop(fs);
            let mut model = run.model.clone();
            model.hist.gens.retain(|k, _| *k <= g);
            if !model.hist.gens.contains_key(&g) {
                return Err(rerr(
                    None,
                    format!(
                        "parent crash state #{idx} opens at generation {g} unknown to the model"
                    ),
                ));
            }
            model.generation = g;
            model.revert();
            model.hist.commits.clear();
            model.hist.base_generation = g;
            Ok((img, model))
        }
    }
}

/// A deterministic seed for a workload's enumeration (from its name).
pub fn seed_of(w: &Workload) -> u64 {
    crate::model::fnv(w.name.as_bytes()) as u64
}

/// Run `w` from its base image on a fresh crash device.
pub fn execute(w: &Workload) -> Result<Run, RunError> {
    execute_ops(w, &w.ops)
}

/// Run `ops` (instead of `w.ops`) from `w`'s base.
pub fn execute_ops(w: &Workload, ops: &[Op]) -> Result<Run, RunError> {
    let (img, mut model) = base(w)?;
    let dev = Arc::new(img.to_device());
    if let Some(a) = w.atomic_unit {
        dev.set_atomic_unit(a);
    }
    let fs = if matches!(w.base, Base::Blank { .. }) {
        None
    } else {
        Some(
            Fs::open(dev.clone(), &open_opts_for(w))
                .map_err(|e| rerr(None, format!("base image does not open: {e}")))?,
        )
    };
    let (skipped, nospace) = {
        let mut st = Exec {
            discard: w.discard,
            dev: dev.clone(),
            fs,
            model: &mut model,
            skipped: 0,
            nospace: 0,
        };
        for (i, op) in ops.iter().enumerate() {
            st.step(op)
                .map_err(|m| rerr(Some(i), format!("{op}: {m}")))?;
        }
        st.finish()
            .map_err(|m| rerr(Some(ops.len()), format!("close: {m}")))?;
        (st.skipped, st.nospace)
    };
    model.hist.total_ops = dev.ops();
    Ok(Run {
        dev,
        base: img,
        model,
        skipped,
        nospace,
    })
}

struct Exec<'a> {
    discard: bool,
    dev: Arc<CrashDevice>,
    fs: Option<Fs>,
    model: &'a mut Model,
    skipped: usize,
    nospace: usize,
}

impl Exec<'_> {
    fn fs(&self) -> &Fs {
        self.fs.as_ref().expect("open")
    }

    /// Close the filesystem as a user would: a one-flush commit is sealed
    /// with a log-free slot (a new generation with the same tree), which the
    /// model records like a commit.
    fn finish(&mut self) -> Result<(), String> {
        if let Some(fs) = self.fs.take() {
            let before = fs.generation();
            let start = self.dev.ops();
            fs.close().map_err(|e| format!("close: {e}"))?;
            if fs.generation() != before {
                self.model.seal(fs.generation(), start, self.dev.ops());
            }
        }
        Ok(())
    }

    fn reopen(&mut self) -> Result<(), String> {
        self.finish()?;
        let opts = OpenOptions {
            discard: self.discard,
            ..open_opts()
        };
        let fs = Fs::open(self.dev.clone(), &opts).map_err(|e| format!("reopen: {e}"))?;
        if fs.generation() != self.model.generation {
            return Err(format!(
                "reopen shows generation {} instead of {}",
                fs.generation(),
                self.model.generation
            ));
        }
        self.fs = Some(fs);
        Ok(())
    }

    /// The transaction was refused for lack of space: drop it on both sides.
    fn no_space(&mut self) -> Result<(), String> {
        self.nospace += 1;
        self.model.revert();
        // Reopen rather than abort: it also proves the last commit is intact.
        self.reopen()
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        if !self.model.valid(op) || (self.fs.is_none() && !matches!(op, Op::Format { .. })) {
            self.skipped += 1;
            return Ok(());
        }
        let res: notafs_core::Result<()> = match op {
            Op::Create(p) => self.fs().create(p).map(|_| ()),
            Op::Mkdir(p) => self.fs().create_dir(p),
            Op::Write {
                path,
                off,
                len,
                seed,
            } => self
                .fs()
                .open_file(path)
                .and_then(|f| f.write_at(*off, &pattern(*seed, *off, *len as usize))),
            Op::Append { path, len, seed } => {
                let want = self.model.txn.files[path].len() as u64;
                self.fs().open_file(path).and_then(|f| {
                    let at = f.len()?;
                    if at != want {
                        return Err(Error::InvalidArgument(format!(
                            "{path} is {at} bytes, the model says {want}"
                        )));
                    }
                    f.append(&pattern(*seed, at, *len as usize)).map(|_| ())
                })
            }
            Op::SetLen { path, size } => self.fs().open_file(path).and_then(|f| f.set_len(*size)),
            Op::Rename { from, to } => self.fs().rename(from, to),
            Op::Remove(p) => self.fs().remove(p),
            Op::Abort => self.fs().abort(),
            Op::Trim => self.fs().trim().map(|_| ()),
            Op::Reopen => {
                self.model.apply(op);
                return self.reopen();
            }
            Op::Commit => return self.commit(),
            Op::Repair { back } => return self.repair(*back),
            Op::Format {
                root_slots,
                discard,
                wipe,
            } => return self.format(*root_slots, *discard, *wipe),
        };
        match res {
            Ok(()) => {
                self.model.apply(op);
                Ok(())
            }
            Err(Error::NoSpace) => self.no_space(),
            Err(e) => Err(format!("failed: {e}")),
        }
    }

    fn commit(&mut self) -> Result<(), String> {
        let start = self.dev.ops();
        match self.fs().commit() {
            Ok(g) => {
                let end = self.dev.ops();
                if g != self.model.generation + 1 {
                    return Err(format!(
                        "commit returned generation {g}, expected {}",
                        self.model.generation + 1
                    ));
                }
                self.model.commit(g, start, end, "commit");
                self.verify_live()
            }
            Err(Error::NoSpace) => {
                self.model.failed_commit(start);
                self.no_space()
            }
            Err(e) => Err(format!("commit failed: {e}")),
        }
    }

    /// What `mkfs.notafs -F` does to the device (see `mkfs/src/lib.rs`):
    /// discard everything, zero the blocks of detected signatures, format.
    fn format(&mut self, root_slots: u32, discard: bool, wipe: bool) -> Result<(), String> {
        self.fs = None;
        let start = self.dev.ops();
        let geo = self.dev.geometry();
        // As mkfs.notafs does: the erase mark over block 0 (flushed), then
        // discard and wipe anything but block 0, then format.
        if discard || wipe {
            Fs::erase(self.dev.as_ref()).map_err(|e| format!("erase: {e}"))?;
        }
        if discard {
            self.dev
                .discard(1, geo.block_count - 1)
                .map_err(|e| format!("discard: {e}"))?;
        }
        if wipe {
            // The old backup superblock (mkfs wipes the signatures it found).
            self.dev
                .write(geo.block_count - 1, &vec![0u8; geo.block_size as usize])
                .map_err(|e| format!("wipe: {e}"))?;
        }
        let fs = Fs::format(
            self.dev.clone(),
            &FormatOptions {
                label: "mkfs".into(),
                uuid: Some(MKFS_UUID),
                root_slots,
                node_size: None,
                time: Some(1_700_000_001),
            },
        )
        .map_err(|e| format!("format failed: {e}"))?;
        let end = self.dev.ops();
        self.model.formatted(root_slots, start, Some(end));
        if fs.generation() != 1 {
            return Err(format!("format made generation {}", fs.generation()));
        }
        self.fs = Some(fs);
        self.verify_live()
    }

    fn repair(&mut self, back: u32) -> Result<(), String> {
        let target = self.model.generation - back as u64;
        // A commit cut short by a crash still took its ring slot: the
        // oldest generation the model retains may be gone from the ring.
        // Rolling back to it is then not a valid operation.
        self.finish()?;
        let on_ring = Fs::open(
            self.dev.clone(),
            &OpenOptions {
                read_only: true,
                ..open_opts()
            },
        )
        .map(|fs| fs.generations().iter().any(|g| g.generation == target))
        .map_err(|e| format!("open before repair: {e}"))?;
        if !on_ring {
            self.skipped += 1;
            self.model.revert();
            return self.reopen();
        }
        self.model.revert();
        let start = self.dev.ops();
        let dev: Arc<dyn BlockDevice> = self.dev.clone();
        let rep = notafs_core::repair::repair(
            dev,
            &CheckOptions {
                generation: Some(target),
                cache_bytes: Some(CACHE),
                ..CheckOptions::default()
            },
        )
        .map_err(|e| format!("repair to generation {target} failed: {e}"))?;
        let end = self.dev.ops();
        let g = rep
            .new_generation
            .ok_or_else(|| format!("repair to {target} committed nothing: {:?}", rep.actions))?;
        if g <= self.model.generation {
            return Err(format!(
                "repair made generation {g}, not newer than {}",
                self.model.generation
            ));
        }
        self.model.txn = (*self.model.hist.gens[&target]).clone();
        for d in target + 1..=self.model.generation {
            self.model.hist.dropped.insert(d);
        }
        self.model.commit(g, start, end, "repair");
        self.reopen()?;
        self.verify_live()
    }

    /// After a commit: the committed snapshot equals the model.
    fn verify_live(&mut self) -> Result<(), String> {
        let want = self.model.committed();
        let bytes: usize = want.files.values().map(|v| v.len()).sum();
        if bytes > (2 << 20) {
            return Ok(());
        }
        let got = listing(&self.fs().snapshot()).map_err(|e| format!("reading back: {e}"))?;
        if got != *want {
            return Err(format!(
                "generation {} reads back wrong: {}",
                self.model.generation,
                want.diff(&got)
            ));
        }
        Ok(())
    }
}

/// Check every crash state of `run` (at most `cap`, evenly spread), calling
/// `on_state` after each; returns the first violation.
pub fn first_violation(
    w: &Workload,
    run: &Run,
    cap: u64,
    mut on_state: impl FnMut() -> bool,
) -> Option<(String, String)> {
    if w.kind == crate::workload::Kind::LostWrite {
        return oracle::lost_write_states(run, cap, &mut on_state);
    }
    if w.kind == crate::workload::Kind::ReadError {
        return crate::eio::read_error_states(run, cap, &mut on_state);
    }
    let opts = enum_opts(seed_of(w));
    let total = run.dev.count_states(&opts);
    let stride = if cap > 0 && total > cap {
        total.div_ceil(cap)
    } else {
        1
    };
    for st in run.dev.states(&opts).step_by(stride as usize) {
        let img: Arc<dyn BlockDevice> = Arc::new(st.image());
        let res = if run.model.hist.format.is_some() {
            oracle::check_mkfs_state(img, st.cut, st.last_cut, &run.model.hist)
        } else {
            oracle::check_state(img, st.cut, st.last_cut, &run.model.hist)
        };
        let go_on = on_state();
        if let Err(m) = res {
            return Some((format!("cut {}..={}: {}", st.cut, st.last_cut, st.desc), m));
        }
        if !go_on {
            break;
        }
    }
    None
}
