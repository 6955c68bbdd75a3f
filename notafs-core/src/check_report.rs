//! What a check finds: problems, figures, damaged files.
use crate::superblock::Superblock;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Expected after a crash or harmless (a torn newest slot, an empty slot).
    Info,
    /// Damage that does not affect the checked generation (a bad superblock
    /// copy, an older generation that does not verify).
    Warning,
    /// The checked generation is inconsistent.
    Error,
}

/// One finding.
#[derive(Clone, Debug)]
pub struct Problem {
    pub severity: Severity,
    /// Stable short code, for scripts and tests (`superblock`, `slot`,
    /// `tree`, `claimed-twice`, `free-overlap`, `leak`, `extent`, `size`,
    /// `name`, `orphan`, `data`, `root`, `count`).
    pub code: &'static str,
    pub message: String,
}

/// Options of [`check`].
#[derive(Default)]
pub struct CheckOptions<'a> {
    /// Check this retained generation instead of the newest.
    pub generation: Option<u64>,
    /// Read every data block and verify its checksum.
    pub verify_data: bool,
    /// Called with (bytes verified, bytes to verify) during `verify_data`.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
    /// Bytes of cache to use.
    pub cache_bytes: Option<usize>,
}

/// Figures gathered by the check.
#[derive(Clone, Debug, Default)]
pub struct CheckStats {
    pub files: u64,
    pub dirs: u64,
    pub file_bytes: u64,
    pub nodes: u64,
    pub data_blocks: u64,
    pub free_blocks: u64,
    pub pending_blocks: u64,
    pub reserved_blocks: u64,
    pub leaked_blocks: u64,
    pub verified_bytes: u64,
}

/// The result of a check.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// Generation checked (None when no root could be opened).
    pub generation: Option<u64>,
    /// Newest generation that opens (what a normal mount would use).
    pub newest: Option<u64>,
    pub superblock: Option<Superblock>,
    pub problems: Vec<Problem>,
    pub stats: CheckStats,
    /// Generations whose roots verified, newest first.
    pub retained: Vec<u64>,
    /// Files with data blocks that failed their checksum (`verify_data`).
    pub damaged: Vec<DamagedFile>,
}

/// A file some of whose data blocks failed their checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedFile {
    pub ino: u64,
    /// Full path from the root (`/dir/file`).
    pub path: String,
    /// Damaged runs of file blocks: (first block, number of blocks).
    pub blocks: Vec<(u64, u64)>,
}

impl CheckReport {
    /// No errors in the checked generation (warnings and infos allowed).
    pub fn is_clean(&self) -> bool {
        self.generation.is_some() && !self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    /// Problems of at least `s`.
    pub fn count(&self, s: Severity) -> usize {
        self.problems.iter().filter(|p| p.severity >= s).count()
    }

    pub(crate) fn push(
        &mut self,
        severity: Severity,
        code: &'static str,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            severity,
            code,
            message: message.into(),
        });
    }
}
