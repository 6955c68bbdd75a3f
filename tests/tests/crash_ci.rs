//! The CI-sized crash run: NOTAFS_CRASH_STATES crash states (default
//! 1,000,000 in a release build, as CI runs it: about 3 minutes on 2 cores;
//! 200,000 in a debug build), every workload kind, 0 violations. Prints the
//! figures.
use std::time::Instant;

use tests::runner::{self, Caps, RunOptions};

#[test]
fn crash_states_ci_budget() {
    let states: u64 = std::env::var("NOTAFS_CRASH_STATES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            200_000
        } else {
            1_000_000
        });
    let seed: u64 = std::env::var("NOTAFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let t = Instant::now();
    let out = runner::run(&RunOptions {
        seed,
        states,
        seconds: None,
        threads: 2,
        caps: Caps::default(),
        kinds: Vec::new(),
        only: None,
        max_violations: 1,
        progress: false,
    });
    let secs = t.elapsed().as_secs_f64();
    for (k, s) in &out.per_kind {
        println!(
            "  {:<11} {:>6} workloads {:>9} states {:>3} violations",
            k.name(),
            s.workloads,
            s.states,
            s.violations
        );
    }
    println!(
        "throughput: {:.0} states/s ({} workloads, {secs:.1} s, 2 threads)",
        out.states as f64 / secs,
        out.workloads
    );
    println!(
        "crash states: {} checked, {} violations",
        out.states,
        out.violations.len()
    );
    if let Some(v) = out.violations.first() {
        panic!(
            "violation in workload #{} (seed {seed}): {}\n  state: {}\n  problem: {}\n  rerun: notafs-crashtest --seed {seed} --workload {}",
            v.index,
            v.workload.describe(),
            v.state,
            v.message,
            v.index
        );
    }
    assert!(out.states >= states, "budget not spent: {}", out.states);
}

/// Crash during mkfs and EIO at open/repair (issue 8): every state of the
/// `mkfs` and `read-error` kinds, more of them than the default schedule
/// gives (a power cut while mkfs replaces an old filesystem must leave it
/// intact or gone, never half-destroyed: the erase mark, superblock.rs).
#[test]
fn mkfs_and_read_error_kinds() {
    use tests::workload::Kind;
    let out = runner::run(&RunOptions {
        seed: 1,
        states: 100_000,
        seconds: None,
        threads: 2,
        caps: Caps::default(),
        kinds: vec![Kind::Mkfs, Kind::ReadError],
        only: None,
        max_violations: 1,
        progress: false,
    });
    println!(
        "crash states: {} checked, {} violations",
        out.states,
        out.violations.len()
    );
    if let Some(v) = out.violations.first() {
        panic!(
            "violation in workload #{}: {}\n  state: {}\n  problem: {}",
            v.index,
            v.workload.describe(),
            v.state,
            v.message
        );
    }
}
