//! Errors of block devices.
use std::io;

/// Result alias for block operations.
pub type Result<T> = std::result::Result<T, BlockError>;

/// Why a block operation failed. Request errors (`Misaligned`, `OutOfRange`,
/// `Empty`, `TooLarge`) are detected before any I/O and leave the device
/// untouched; `Io` means the device itself failed and, for writes, leaves the
/// range undefined.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("buffer of {len} bytes is not a multiple of the {block_size}-byte block size")]
    Misaligned { len: usize, block_size: u32 },
    #[error("request for blocks {start}..{end} is past the end of the device ({count} blocks)")]
    OutOfRange { start: u64, end: u64, count: u64 },
    #[error("zero-length request")]
    Empty,
    #[error("request of {len} bytes exceeds the per-call limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("invalid device: {0}")]
    Invalid(String),
    /// Another writer holds the device: an image file's one-writer lock
    /// (see [`crate::file`]) or a block device claimed exclusively (`O_EXCL`)
    /// or mounted. Tools map it to "operational error" (exit 8).
    #[error("{device} is in use by {holder}")]
    Busy {
        /// The path or URI that was being opened.
        device: String,
        /// Who holds it, as far as known ("another writer (pid 1234, notafs-fuse)").
        holder: String,
    },
    #[error("{op} not supported by this device")]
    Unsupported { op: &'static str },
    #[error("I/O error during {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl BlockError {
    /// Wrap an OS error for the operation `op`.
    pub fn io(op: &'static str, source: io::Error) -> Self {
        BlockError::Io { op, source }
    }

    /// True when another writer holds the device ([`BlockError::Busy`]).
    pub fn is_busy(&self) -> bool {
        matches!(self, BlockError::Busy { .. })
    }

    /// True when the error came from the device (as opposed to a bad request).
    pub fn is_io(&self) -> bool {
        matches!(self, BlockError::Io { .. })
    }
}
