//! Device shape and capabilities.

/// What a backend can do beyond read/write/flush.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `discard` may actually release storage (it is always accepted as a hint).
    pub discard: bool,
    /// `write_zeroes` is offloaded (it is always available, emulated by writes otherwise).
    pub write_zeroes: bool,
    /// The backend has an ordering primitive cheaper than a flush; when false,
    /// `barrier` is implemented as `flush`.
    pub native_barrier: bool,
}

/// Geometry of a block device. All I/O is expressed in whole logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Logical block size B in bytes: a power of two in 512..=65536.
    pub block_size: u32,
    /// Number of logical blocks.
    pub block_count: u64,
    /// Bytes that a single aligned write is guaranteed to persist
    /// all-or-nothing; 0 means nothing is guaranteed (a write may be torn at
    /// any block boundary and a block may even hold garbage).
    pub atomic_unit: u32,
    /// The I/O size at which the device reaches its bandwidth, in bytes.
    pub preferred_io: u32,
    pub caps: Capabilities,
}

impl Geometry {
    /// Smallest supported block size.
    pub const MIN_BLOCK_SIZE: u32 = 512;
    /// Largest supported block size.
    pub const MAX_BLOCK_SIZE: u32 = 65536;

    /// Whether `bs` is an acceptable logical block size.
    pub fn valid_block_size(bs: u32) -> bool {
        bs.is_power_of_two() && (Self::MIN_BLOCK_SIZE..=Self::MAX_BLOCK_SIZE).contains(&bs)
    }

    /// Device size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.block_count.saturating_mul(self.block_size as u64)
    }
}
