//! The two checksums of notafs and why each is used where it is.
//!
//! * **CRC-32C** (hardware accelerated, ~0.2 µs per 4 KiB) for tree nodes and
//!   data blocks. Its job is to detect torn, lost, misdirected and garbage
//!   writes and media corruption, not adversaries; it is stored in the parent
//!   pointer (or in the extent entry for data), so a block that is
//!   self-consistent but stale still fails: the parent expects other bytes.
//! * **BLAKE2b-256** for superblocks and root slots, the tops of the Merkle
//!   tree, and for the content digest used to compare two images. Root slots
//!   are few and small, so the cost does not matter, and a 256-bit digest
//!   makes a garbage slot passing for a valid one beyond question.
use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};

/// BLAKE2b with a 256-bit output.
pub type Blake2b256 = Blake2b<U32>;

/// CRC-32C of `data`.
pub fn crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// BLAKE2b-256 of `data`.
pub fn blake(data: &[u8]) -> [u8; 32] {
    let mut h = Blake2b256::new();
    h.update(data);
    h.finalize().into()
}
