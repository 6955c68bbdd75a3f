//! Switches that break the commit protocol on purpose, so the crash
//! harness can prove it notices (only with the `fault-injection` feature;
//! without it every switch is off and compiles away).
#[cfg(feature = "fault-injection")]
use std::sync::Mutex;

#[cfg(feature = "fault-injection")]
static FAULTS: Mutex<Faults> = Mutex::new(Faults {
    skip_barrier: false,
    root_before_data: false,
    reuse_freed_immediately: false,
    skip_verify: false,
    forget_last_extent: false,
    log_omits_data: false,
    skip_log_verify: false,
    delta_drops_range: false,
    patch_drops_inode: false,
    log_run_first_block_only: false,
});

/// Switches that break the commit protocol on purpose, for the crash
/// harness to prove it notices.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Do not issue the barrier between the data and the root slot.
    pub skip_barrier: bool,
    /// Write the root slot before the data and nodes.
    pub root_before_data: bool,
    /// Reuse blocks freed by this commit at once (as the OCaml notafs does).
    pub reuse_freed_immediately: bool,
    /// Do not verify checksums on read.
    pub skip_verify: bool,
    /// Drop the last buffered run of each file at commit.
    pub forget_last_extent: bool,
    /// Leave data blocks out of the commit log.
    pub log_omits_data: bool,
    /// Do not verify the newest slot's commit log at open.
    pub skip_log_verify: bool,
    /// Leave the last range out of a root slot's free-space delta.
    pub delta_drops_range: bool,
    /// Leave the last inode written by a data-only commit out of the root
    /// slot's inode patches.
    pub patch_drops_inode: bool,
    /// Check each commit-log run by its first block only (when writing the
    /// log and when verifying it at open).
    pub log_run_first_block_only: bool,
}

/// The faults in force (crash-harness use only).
#[cfg(feature = "fault-injection")]
pub fn current_faults() -> Faults {
    *FAULTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The faults in force: none without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
pub fn current_faults() -> Faults {
    Faults::default()
}

/// Turn faults on or off for the whole process.
#[cfg(feature = "fault-injection")]
pub fn set_faults(f: Faults) {
    *FAULTS.lock().unwrap_or_else(|e| e.into_inner()) = f;
}
