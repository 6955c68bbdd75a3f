//! Scheduling workloads over threads, budgets, and shrinking.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::exec::{self, execute_ops, first_violation};
use crate::workload::{self, Kind, Op, Workload};

/// Per-workload state caps (evenly spread samples beyond them).
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub exhaustive: u64,
    pub random: u64,
    pub pack: u64,
    pub recovery: u64,
    pub repair: u64,
    pub lost_write: u64,
    pub mkfs: u64,
    pub read_error: u64,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            exhaustive: 0, // every state
            random: 4000,
            pack: 4000,
            recovery: 1500,
            repair: 1500,
            lost_write: 150,
            mkfs: 0, // every state
            read_error: 300,
        }
    }
}

/// The kinds in schedule order: workload `i` has kind `SCHEDULE[i % len]`.
pub const SCHEDULE: [Kind; 14] = [
    Kind::Exhaustive,
    Kind::Exhaustive,
    Kind::LostWrite,
    Kind::Random,
    Kind::Exhaustive,
    Kind::Mkfs,
    Kind::Exhaustive,
    Kind::NearFull,
    Kind::Pack,
    Kind::Exhaustive,
    Kind::Exhaustive,
    Kind::Recovery,
    Kind::ReadError,
    Kind::Repair,
];

fn exhaustive_list() -> &'static Vec<Vec<Op>> {
    workload::exhaustive_cached()
}

/// Number of distinct exhaustive workloads (per device variant).
pub fn exhaustive_count() -> usize {
    exhaustive_list().len()
}

/// Workload number `i` of the run with `seed`, optionally restricted to
/// some kinds.
pub fn workload(seed: u64, i: u64, caps: &Caps, kinds: &[Kind]) -> Workload {
    let sched: Vec<Kind> = SCHEDULE
        .iter()
        .copied()
        .filter(|k| kinds.is_empty() || kinds.contains(k))
        .collect();
    let sched = if sched.is_empty() {
        kinds.to_vec()
    } else {
        sched
    };
    let kind = sched[(i % sched.len() as u64) as usize];
    // Index among workloads of the same kind.
    let per_cycle = sched.iter().filter(|k| **k == kind).count() as u64;
    let before = sched[..(i % sched.len() as u64) as usize]
        .iter()
        .filter(|k| **k == kind)
        .count() as u64;
    let k = (i / sched.len() as u64) * per_cycle + before;
    let s = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(k.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    match kind {
        Kind::Exhaustive => {
            // The seed rotates the starting point so different seeds cover
            // different parts of the list first.
            let list = exhaustive_list();
            let off = seed % list.len() as u64;
            workload::exhaustive(list, k + off, caps.exhaustive)
        }
        Kind::Random => workload::random(s, false, caps.random),
        Kind::NearFull => workload::near_full(s, caps.random),
        Kind::Pack => workload::pack(s, caps.pack),
        Kind::Recovery => workload::recovery(s, caps.recovery),
        Kind::Repair => workload::repair(s, caps.repair),
        Kind::LostWrite => workload::lost_write(s, caps.lost_write),
        Kind::Mkfs => workload::mkfs(s, caps.mkfs),
        Kind::ReadError => workload::read_error(s, caps.read_error),
    }
}

/// Options of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    pub states: u64,
    pub seconds: Option<f64>,
    pub threads: usize,
    pub caps: Caps,
    pub kinds: Vec<Kind>,
    /// Run only this workload index.
    pub only: Option<u64>,
    /// Stop after this many violations.
    pub max_violations: u64,
    pub progress: bool,
}

/// A violation found by a run.
#[derive(Clone, Debug)]
pub struct Violation {
    pub index: u64,
    pub workload: Workload,
    pub state: String,
    pub message: String,
}

/// Figures per kind.
#[derive(Clone, Debug, Default)]
pub struct KindStats {
    pub workloads: u64,
    pub states: u64,
    pub violations: u64,
    pub skipped_ops: u64,
    pub nospace: u64,
    pub ops: u64,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Outcome {
    pub states: u64,
    pub violations: Vec<Violation>,
    pub per_kind: BTreeMap<Kind, KindStats>,
    pub workloads: u64,
    pub elapsed: Duration,
}

/// Run workloads until the budget is spent. Thread `t` takes workloads
/// `t, t + T, t + 2T, ...` and spends `states / T` states, so the result
/// does not depend on timing (only `--seconds` does).
pub fn run(o: &RunOptions) -> Outcome {
    let start = Instant::now();
    let deadline = o.seconds.map(|s| start + Duration::from_secs_f64(s));
    let total = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let nviol = AtomicU64::new(0);
    let out = Mutex::new(Outcome::default());
    let threads = if o.only.is_some() {
        1
    } else {
        o.threads.max(1)
    };
    let per_thread = o.states.div_ceil(threads as u64);
    std::thread::scope(|sc| {
        for t in 0..threads {
            let (total, stop, nviol, out) = (&total, &stop, &nviol, &out);
            sc.spawn(move || {
                let mut mine = 0u64;
                let mut i = o.only.unwrap_or(t as u64);
                loop {
                    if stop.load(Ordering::Relaxed)
                        || mine >= per_thread
                        || deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        break;
                    }
                    let w = workload(o.seed, i, &o.caps, &o.kinds);
                    let mut st = KindStats {
                        workloads: 1,
                        ..KindStats::default()
                    };
                    let found;
                    match exec::execute(&w) {
                        Err(e) => {
                            found = Some((
                                format!("no crash: the live run failed at op {:?}", e.op_index),
                                e.message,
                            ))
                        }
                        Ok(run) => {
                            st.skipped_ops = run.skipped as u64;
                            st.nospace = run.nospace as u64;
                            st.ops = run.model.hist.total_ops as u64;
                            let mut n = 0u64;
                            let left = per_thread - mine;
                            found = first_violation(&w, &run, w.state_cap, || {
                                n += 1;
                                let all = total.fetch_add(1, Ordering::Relaxed) + 1;
                                if o.progress && all % 100_000 == 0 {
                                    let el = start.elapsed().as_secs_f64();
                                    eprintln!(
                                        "  {all} states, {:.0} states/s, {:.0} s",
                                        all as f64 / el,
                                        el
                                    );
                                }
                                n < left
                                    && !stop.load(Ordering::Relaxed)
                                    && !(n % 256 == 0
                                        && deadline.is_some_and(|d| Instant::now() >= d))
                            });
                            st.states = n;
                            mine += n;
                        }
                    }
                    let mut g = out.lock().unwrap_or_else(|e| e.into_inner());
                    g.workloads += 1;
                    if let Some((state, message)) = found {
                        st.violations = 1;
                        g.violations.push(Violation {
                            index: i,
                            workload: w.clone(),
                            state,
                            message,
                        });
                        if nviol.fetch_add(1, Ordering::Relaxed) + 1 >= o.max_violations {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    let k = g.per_kind.entry(w.kind).or_default();
                    k.workloads += st.workloads;
                    k.states += st.states;
                    k.violations += st.violations;
                    k.skipped_ops += st.skipped_ops;
                    k.nospace += st.nospace;
                    k.ops += st.ops;
                    g.states += st.states;
                    drop(g);
                    if o.only.is_some() {
                        break;
                    }
                    i += threads as u64;
                }
            });
        }
    });
    let mut out = out.into_inner().unwrap_or_else(|e| e.into_inner());
    out.violations.sort_by_key(|v| v.index);
    out.elapsed = start.elapsed();
    out
}

/// The first violation of `ops` run from `w`'s base (all states, up to
/// `cap`), or None.
pub fn violates(w: &Workload, ops: &[Op], cap: u64) -> Option<(String, String)> {
    match execute_ops(w, ops) {
        Err(e) => Some((format!("live run, op {:?}", e.op_index), e.message)),
        Ok(run) => {
            let mut w2 = w.clone();
            w2.ops = ops.to_vec();
            first_violation(&w2, &run, cap, || true)
        }
    }
}

/// Shrink the ops of a failing workload while some violation persists:
/// remove chunks of halving size (delta debugging), within `budget`.
pub fn shrink(w: &Workload, budget: Duration) -> (Workload, Option<(String, String)>) {
    let start = Instant::now();
    let cap = w.state_cap.clamp(1, 20_000);
    let mut ops = w.ops.clone();
    let mut last = violates(w, &ops, cap);
    if last.is_none() {
        return (w.clone(), None);
    }
    let mut size = ops.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        let mut progressed = false;
        while i < ops.len() {
            if start.elapsed() > budget {
                let mut out = w.clone();
                out.ops = ops;
                return (out, last);
            }
            let mut cand = ops.clone();
            cand.drain(i..(i + size).min(ops.len()));
            if let Some(v) = violates(w, &cand, cap) {
                ops = cand;
                last = Some(v);
                progressed = true;
            } else {
                i += size;
            }
        }
        if size == 1 && !progressed {
            break;
        }
        if !progressed {
            size = (size / 2).max(1);
        }
    }
    let mut out = w.clone();
    out.ops = ops;
    (out, last)
}
