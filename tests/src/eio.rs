//! Device errors that are not corruption: the read-error workload, and
//! device wrappers that record, fail or count requests (also used by the
//! mutation campaign).
//!
//! An EIO, a timeout or a lost connection says nothing about what the
//! device holds. So for every read a writable `Fs::open` issues (and every
//! read `check::repair` issues), the read-error states make that one read
//! fail (once: [`notafs_blockdev::fault::FaultDevice`] with
//! `fail_read_at`), or every read touching its blocks fail (always:
//! [`EioDevice`]), and demand:
//!
//! * open fails with `Error::Device`, or opens the newest generation (the
//!   one a clean open shows);
//! * after the write and commit that follow (which may fail), the device
//!   read without faults shows the newest generation intact, and the new
//!   commit, if it returned Ok, as the next generation on top of it;
//! * a repair under the same fault leaves the newest generation's content
//!   as the newest content (it may fail; it must not roll back).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use notafs_blockdev::fault::{FaultConfig, FaultDevice};
use notafs_blockdev::memory::MemoryDevice;
use notafs_blockdev::{BlockDevice, BlockError, Geometry, WriteReq};
use notafs_core::check::CheckOptions;
use notafs_core::{Fs, OpenOptions};

use crate::exec::{open_opts, Run, CACHE};
use crate::model::Tree;
use crate::oracle::{listing, PROBE};

/// A wrapper that records every read (block, blocks), counts writes, and
/// fails with EIO every read overlapping `fail` (if set) and, when
/// `refuse_writes`, every write.
pub struct EioDevice {
    inner: Arc<dyn BlockDevice>,
    fail: Option<(u64, u64)>,
    refuse_writes: bool,
    reads: Mutex<Vec<(u64, u64)>>,
    writes: AtomicU64,
}

impl EioDevice {
    pub fn new(inner: Arc<dyn BlockDevice>, fail: Option<(u64, u64)>) -> EioDevice {
        EioDevice {
            inner,
            fail,
            refuse_writes: false,
            reads: Mutex::new(Vec::new()),
            writes: AtomicU64::new(0),
        }
    }

    /// A device on which every write (and write-zeroes, discard) is
    /// counted and fails: what `fsck -n` must never attempt.
    pub fn read_only(inner: Arc<dyn BlockDevice>) -> EioDevice {
        EioDevice {
            refuse_writes: true,
            ..EioDevice::new(inner, None)
        }
    }

    /// Reads issued so far: (first block, block count).
    pub fn reads(&self) -> Vec<(u64, u64)> {
        self.reads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Writes, write-zeroes and discards attempted so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    fn wrote(&self, op: &'static str) -> notafs_blockdev::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.refuse_writes {
            return Err(eio(op));
        }
        Ok(())
    }
}

fn eio(op: &'static str) -> BlockError {
    BlockError::io(op, std::io::Error::from_raw_os_error(libc_eio()))
}

const fn libc_eio() -> i32 {
    5 // EIO on every platform notafs supports
}

impl BlockDevice for EioDevice {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn read(&self, block: u64, buf: &mut [u8]) -> notafs_blockdev::Result<()> {
        let n = (buf.len() / self.inner.geometry().block_size as usize) as u64;
        self.reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((block, n));
        if let Some((b, l)) = self.fail {
            if block < b + l && b < block + n {
                return Err(eio("read"));
            }
        }
        self.inner.read(block, buf)
    }
    fn write(&self, block: u64, data: &[u8]) -> notafs_blockdev::Result<()> {
        self.wrote("write")?;
        self.inner.write(block, data)
    }
    fn write_zeroes(&self, block: u64, count: u64) -> notafs_blockdev::Result<()> {
        self.wrote("write_zeroes")?;
        self.inner.write_zeroes(block, count)
    }
    fn discard(&self, block: u64, count: u64) -> notafs_blockdev::Result<()> {
        self.wrote("discard")?;
        self.inner.discard(block, count)
    }
    fn flush(&self) -> notafs_blockdev::Result<()> {
        self.inner.flush()
    }
    fn barrier(&self) -> notafs_blockdev::Result<()> {
        self.inner.barrier()
    }
    fn write_batch(&self, writes: &[WriteReq<'_>]) -> notafs_blockdev::Result<()> {
        for w in writes {
            self.write(w.block, w.data)?;
        }
        Ok(())
    }
    fn describe(&self) -> String {
        format!("eio({})", self.inner.describe())
    }
}

/// Where the read error is injected.
#[derive(Clone, Copy, Debug)]
pub enum Phase {
    /// During the writable open that precedes a write and a commit.
    Open,
    /// During `check::repair` (fsck -y).
    Repair,
}

/// How: the `n`th read (1-based) fails once, or every read of these blocks.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Once(u64),
    Always(u64, u64),
}

fn faulty(mem: &Arc<MemoryDevice>, mode: Mode) -> Arc<dyn BlockDevice> {
    match mode {
        Mode::Once(n) => Arc::new(FaultDevice::new(
            mem.clone(),
            0,
            FaultConfig {
                fail_read_at: Some(n),
                ..FaultConfig::default()
            },
        )),
        Mode::Always(b, l) => Arc::new(EioDevice::new(mem.clone(), Some((b, l)))),
    }
}

/// Bytes the probe commit writes.
fn probe_data(g: u64) -> Vec<u8> {
    (0..5000u32).map(|i| (i * 13 + g as u32) as u8).collect()
}

/// The device, read without faults, must show generation `g0` with `want`
/// as its newest content, or (when `next` is given) the newer generation
/// `next.0` with content `next.1` on top of an intact `g0`.
fn verify_after(
    mem: Arc<MemoryDevice>,
    g0: u64,
    want: &Tree,
    next: Option<(u64, Tree)>,
) -> Result<(), String> {
    let dev: Arc<dyn BlockDevice> = mem;
    let ro = |g: Option<u64>| {
        Fs::open(
            dev.clone(),
            &OpenOptions {
                read_only: true,
                generation: g,
                cache_bytes: CACHE,
                write_behind: None,
                ..OpenOptions::default()
            },
        )
    };
    let fs = ro(None).map_err(|e| format!("afterwards, without faults, open fails: {e}"))?;
    let g = fs.generation();
    let got = listing(&fs.snapshot()).map_err(|e| format!("afterwards, reading {g}: {e}"))?;
    match next {
        Some((g1, t1)) => {
            if g != g1 {
                return Err(format!(
                    "a commit returned generation {g1}, but the device opens at {g}"
                ));
            }
            if got != t1 {
                return Err(format!("generation {g1} reads wrong: {}", t1.diff(&got)));
            }
            let old = ro(Some(g0)).map_err(|e| {
                format!("generation {g0} (the newest before the commit) is gone: {e}")
            })?;
            let got0 = listing(&old.snapshot())
                .map_err(|e| format!("generation {g0} no longer reads: {e}"))?;
            if got0 != *want {
                return Err(format!(
                    "generation {g0} was overwritten: {}",
                    want.diff(&got0)
                ));
            }
        }
        None => {
            if g < g0 {
                return Err(format!(
                    "the newest generation {g0} was lost: the device now opens at {g}"
                ));
            }
            if got != *want {
                return Err(format!(
                    "the newest content (generation {g0}) was lost: generation {g} differs: {}",
                    want.diff(&got)
                ));
            }
        }
    }
    Ok(())
}

/// One read-error state: inject `mode` in `phase` on a copy of `base`.
pub fn check_read_error(
    base: &[u8],
    bs: u32,
    g0: u64,
    want: &Tree,
    phase: Phase,
    mode: Mode,
) -> Result<(), String> {
    let mem = Arc::new(MemoryDevice::from_vec(bs, base.to_vec()));
    let dev = faulty(&mem, mode);
    match phase {
        Phase::Open => {
            let fs = match Fs::open(dev, &open_opts()) {
                Err(e) if e.is_io() => return verify_after(mem, g0, want, None),
                Err(e) => {
                    return Err(format!(
                        "open failed with an error that is not the device's: {e}"
                    ))
                }
                Ok(fs) => fs,
            };
            if fs.generation() != g0 {
                return Err(format!(
                    "opened generation {} for writing instead of the newest, {g0}",
                    fs.generation()
                ));
            }
            let data = probe_data(g0);
            let r = fs
                .open_file_with(PROBE, true, true)
                .and_then(|f| f.write_at(0, &data).map(|_| f))
                .and_then(|f| {
                    let g = fs.commit();
                    drop(f);
                    g
                });
            drop(fs);
            match r {
                Ok(g1) => {
                    if g1 != g0 + 1 {
                        return Err(format!(
                            "commit on top of generation {g0} returned generation {g1}"
                        ));
                    }
                    let mut t1 = want.clone();
                    t1.files.insert(PROBE.into(), data);
                    verify_after(mem, g0, want, Some((g1, t1)))
                }
                Err(_) => verify_after(mem, g0, want, None),
            }
        }
        Phase::Repair => {
            let _ = notafs_core::repair::repair(
                dev,
                &CheckOptions {
                    cache_bytes: Some(CACHE),
                    ..CheckOptions::default()
                },
            );
            verify_after(mem, g0, want, None)
        }
    }
}

/// The read-error states of a run (a committed history, no logged ops).
pub fn read_error_states(
    run: &Run,
    cap: u64,
    on_state: &mut dyn FnMut() -> bool,
) -> Option<(String, String)> {
    let g0 = run.model.generation;
    let want = run.model.hist.gens[&g0].clone();
    let base = run.base.to_vec();
    let bs = run.dev.geometry().block_size;
    // The reads of a clean writable open and of a clean repair.
    let record = |phase: Phase| -> Result<Vec<(u64, u64)>, String> {
        let mem: Arc<dyn BlockDevice> = Arc::new(MemoryDevice::from_vec(bs, base.clone()));
        let rec = Arc::new(EioDevice::new(mem, None));
        match phase {
            Phase::Open => {
                let fs = Fs::open(rec.clone(), &open_opts())
                    .map_err(|e| format!("the base image does not open: {e}"))?;
                if fs.generation() != g0 {
                    return Err(format!("the base opens at {}, not {g0}", fs.generation()));
                }
            }
            Phase::Repair => {
                let rep = notafs_core::repair::repair(
                    rec.clone(),
                    &CheckOptions {
                        cache_bytes: Some(CACHE),
                        ..CheckOptions::default()
                    },
                )
                .map_err(|e| format!("repair of the clean base failed: {e}"))?;
                if rec.writes() != 0 || rep.new_generation.is_some() {
                    return Err(format!(
                        "repair of a clean image wrote {} times: {:?}",
                        rec.writes(),
                        rep.actions
                    ));
                }
            }
        }
        Ok(rec.reads())
    };
    let mut cases: Vec<(Phase, Mode)> = Vec::new();
    for phase in [Phase::Open, Phase::Repair] {
        let reads = match record(phase) {
            Ok(r) => r,
            Err(m) => return Some((format!("{phase:?} without faults"), m)),
        };
        for (i, &(b, l)) in reads.iter().enumerate() {
            cases.push((phase, Mode::Once(i as u64 + 1)));
            cases.push((phase, Mode::Always(b, l)));
        }
    }
    let stride = if cap > 0 && cases.len() as u64 > cap {
        (cases.len() as u64).div_ceil(cap) as usize
    } else {
        1
    };
    for (phase, mode) in cases.into_iter().step_by(stride) {
        let res = check_read_error(&base, bs, g0, &want, phase, mode);
        let go_on = on_state();
        if let Err(m) = res {
            let what = match mode {
                Mode::Once(n) => format!("EIO once on read #{n}"),
                Mode::Always(b, l) => format!("EIO on every read of blocks {b}+{l}"),
            };
            return Some((
                format!("{what} during {phase:?} (newest generation {g0})"),
                m,
            ));
        }
        if !go_on {
            break;
        }
    }
    None
}
