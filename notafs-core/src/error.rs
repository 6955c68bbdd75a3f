//! Errors of the filesystem.
use notafs_blockdev::BlockError;

/// Result alias of notafs-core.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in notafs-core. Variants name the condition a
/// caller can act on; `Corrupt` carries a human-readable description of what
/// was found on disk and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device error: {0}")]
    Device(#[from] BlockError),
    /// A device error while reading a known structure: never taken for
    /// corruption (an I/O error says nothing about what is on disk).
    #[error("I/O error reading {what} at block {block}: {source}")]
    Io {
        what: &'static str,
        block: u64,
        #[source]
        source: BlockError,
    },
    /// The filesystem opened, but something a writer must not build on was
    /// found (a newer root that is checksum-valid but does not verify, a
    /// free-space list that does not add up): writes are refused until
    /// `fsck.notafs` has looked at it.
    #[error("filesystem needs checking, writes refused: {0}; run fsck.notafs")]
    NeedsCheck(String),
    /// A program bug detected by an internal consistency check (not damage
    /// on disk).
    #[error("internal error (a bug in notafs, please report it): {0}")]
    Internal(String),
    #[error("not a notafs filesystem: {0}")]
    NotNotafs(String),
    #[error("unsupported filesystem: {0}")]
    Unsupported(String),
    #[error("corrupt filesystem: {0}")]
    Corrupt(String),
    #[error("no valid root: {0}")]
    NoValidRoot(String),
    #[error("generation {0} is not retained on this device")]
    NoSuchGeneration(u64),
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error("is a directory: {0}")]
    IsADirectory(String),
    #[error("directory not empty: {0}")]
    DirectoryNotEmpty(String),
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("no space left on device")]
    NoSpace,
    #[error("filesystem is read-only")]
    ReadOnly,
    #[error("filesystem stopped accepting writes after a device failure; reopen it")]
    Failed,
    #[error("checksum mismatch in {what} at block {block}")]
    Checksum { what: &'static str, block: u64 },
    #[error("file handle is stale: the file was removed")]
    Stale,
}

impl Error {
    pub(crate) fn corrupt(msg: impl Into<String>) -> Self {
        Error::Corrupt(msg.into())
    }

    /// True for errors the device reported (EIO, timeouts, a lost NBD
    /// connection): they say nothing about what is on disk, so they must
    /// never make open skip a root, nor a check report damage, nor a repair
    /// act.
    pub fn is_io(&self) -> bool {
        match self {
            Error::Io { .. } => true,
            Error::Device(e) => !matches!(
                e,
                BlockError::Misaligned { .. }
                    | BlockError::OutOfRange { .. }
                    | BlockError::Empty
                    | BlockError::TooLarge { .. }
            ),
            _ => false,
        }
    }

    /// Map to the closest `errno`, for FUSE and the CLIs.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound(_) => 2,                                     // ENOENT
            Error::Exists(_) => 17,                                      // EEXIST
            Error::NotADirectory(_) => 20,                               // ENOTDIR
            Error::IsADirectory(_) => 21,                                // EISDIR
            Error::DirectoryNotEmpty(_) => 39,                           // ENOTEMPTY
            Error::InvalidPath { .. } | Error::InvalidArgument(_) => 22, // EINVAL
            Error::NoSpace => 28,                                        // ENOSPC
            Error::ReadOnly | Error::NeedsCheck(_) => 30,                // EROFS
            Error::Stale => 116,                                         // ESTALE
            _ => 5,                                                      // EIO
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::new(io_kind(&e), e)
    }
}

fn io_kind(e: &Error) -> std::io::ErrorKind {
    use std::io::ErrorKind as K;
    match e {
        Error::NotFound(_) => K::NotFound,
        Error::Exists(_) => K::AlreadyExists,
        Error::InvalidPath { .. } | Error::InvalidArgument(_) => K::InvalidInput,
        Error::ReadOnly | Error::NeedsCheck(_) => K::PermissionDenied,
        _ => K::Other,
    }
}
