//! The crash-consistency harness of notafs (`notafs-crashtest`) and helpers
//! for the integration tests. See `docs/CRASH-TESTING.md`.
//!
//! * [`workload`]: operation sequences and their generators;
//! * [`model`]: the in-memory model of every committed generation;
//! * [`exec`]: running a workload on a crash device in lockstep with the model;
//! * [`oracle`]: what must hold for every crash state;
//! * [`runner`]: threads, budgets, shrinking;
//! * [`eio`]: device errors at open and repair (the read-error workload),
//!   and request-recording device wrappers;
pub mod eio;
pub mod exec;
pub mod model;
pub mod oracle;
pub mod runner;
pub mod workload;

use notafs_core::Faults;

/// The fault switches `--inject` accepts.
pub const INJECTIONS: [&str; 10] = [
    "skip-barrier",
    "root-before-data",
    "reuse-freed",
    "skip-verify",
    "forget-last-extent",
    "log-omits-data",
    "skip-log-verify",
    "delta-drops-range",
    "patch-drops-inode",
    "log-run-first-block",
];

/// The core's fault switches for an `--inject` name.
pub fn faults_for(name: &str) -> Option<Faults> {
    let mut f = Faults::default();
    match name {
        "skip-barrier" => f.skip_barrier = true,
        "root-before-data" => f.root_before_data = true,
        "reuse-freed" => f.reuse_freed_immediately = true,
        "skip-verify" => f.skip_verify = true,
        "forget-last-extent" => f.forget_last_extent = true,
        "log-omits-data" => f.log_omits_data = true,
        "skip-log-verify" => f.skip_log_verify = true,
        "delta-drops-range" => f.delta_drops_range = true,
        "patch-drops-inode" => f.patch_drops_inode = true,
        "log-run-first-block" => f.log_run_first_block_only = true,
        _ => return None,
    }
    Some(f)
}
