//! The block device contract of notafs and its backends.
//!
//! Everything above this crate (allocator, commit protocol, fsck, crash
//! harness) relies on the exact semantics written on [`BlockDevice`]; the same
//! text, with the mapping to Linux, NBD and virtio-blk, is in
//! `docs/BLOCK-SEMANTICS.md`.
#![deny(unsafe_op_in_unsafe_fn)]

mod device;
mod error;
mod geometry;

pub mod crash;
pub mod fault;
pub mod file;
mod lock;
pub mod memory;
pub mod nbd;
pub mod open;
pub mod raw;
mod uring;

pub use device::{check_io, check_range, BlockDevice, WriteReq, MAX_REQUEST_BYTES};
pub use error::{BlockError, Result};
pub use geometry::{Capabilities, Geometry};
pub use open::{open, OpenOptions};
pub use uring::NO_URING_ENV;
