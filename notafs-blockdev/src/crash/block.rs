//! The content of one block in a simulated image.
//!
//! Blocks are stored by reference, not by value: a write's buffer is shared
//! by every image (live, durable snapshots, crash images) that holds one of
//! its blocks, and garbage is a seed expanded only when read. This is what
//! makes a crash image cost pointer copies instead of a copy of the device.
use std::sync::Arc;

/// One block of an image.
#[derive(Clone, Debug)]
pub(crate) enum Block {
    /// All zeros (a fresh device, write-zeroes, a discard reading zeros).
    Zero,
    /// Block `index` of a shared write buffer.
    Data { buf: Arc<[u8]>, index: u32 },
    /// Deterministic pseudo-random bytes expanded from the seed.
    Garbage(u64),
}

impl Block {
    /// Copy the content into `out` (exactly one block long).
    pub(crate) fn read_into(&self, out: &mut [u8]) {
        match self {
            Block::Zero => out.fill(0),
            Block::Data { buf, index } => {
                let bs = out.len();
                let off = *index as usize * bs;
                // A Data block is only ever built from a buffer holding
                // `index + 1` blocks of this image's size, so this slice is
                // in range; a zero fill would hide a logic error, so keep the
                // indexing honest.
                out.copy_from_slice(&buf[off..off + bs]);
            }
            Block::Garbage(seed) => fill_garbage(*seed, out),
        }
    }
}

/// SplitMix64 finaliser: a cheap, well-mixed, platform-independent hash.
/// Enumeration and garbage must be reproducible from a seed on any machine
/// and any `rand` version, so we do not use `rand`'s generators here.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of the garbage that op `op` may leave in device block `block`.
/// `salt` distinguishes devices started from one another's images, so a
/// crash during recovery does not reproduce the first crash's garbage.
pub(crate) fn garbage_seed(salt: u64, op: usize, block: u64) -> u64 {
    mix(mix(mix(salt) ^ op as u64) ^ block)
}

/// Expand `seed` into pseudo-random bytes.
pub(crate) fn fill_garbage(seed: u64, out: &mut [u8]) {
    let mut state = seed;
    for chunk in out.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let v = mix(state).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// A small deterministic generator for the seeded random subsets.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
}
