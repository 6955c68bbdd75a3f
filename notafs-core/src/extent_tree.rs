//! A file's extent tree: file block index -> run of device blocks, with the
//! CRC-32C of every data block. Keys are logical block numbers; a missing
//! range is a hole and reads as zeros.
//!
//! ```text
//! key:    logical block u64
//! value:  device block u64 | length u32 (1..=max_extent) | length x CRC-32C u32
//! ```
//!
//! Data checksums live here, in the parent of the data, like node checksums
//! in their parents: a data block that was never written, written to the
//! wrong place or overwritten by a later generation fails its checksum, so
//! a read returns an error, never wrong bytes.
use crate::btree::Kind;
use crate::codec::{Dec, Enc};
use crate::node::{Layout, KIND_EXTENTS};
use crate::{Error, Result};

/// A run of device blocks backing consecutive file blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    pub pblock: u64,
    pub crcs: Vec<u32>,
}

impl Extent {
    pub fn len(&self) -> u64 {
        self.crcs.len() as u64
    }
    pub fn is_empty(&self) -> bool {
        self.crcs.is_empty()
    }
}

/// The extent-tree kind.
pub struct Extents;

impl Kind for Extents {
    const KIND: u8 = KIND_EXTENTS;
    type K = u64;
    type V = Extent;

    fn key_len(_: &u64) -> usize {
        8
    }
    fn enc_key(k: &u64, e: &mut Enc) {
        e.u64(*k);
    }
    fn dec_key(d: &mut Dec<'_>) -> Result<u64> {
        d.u64()
    }
    fn val_len(v: &Extent) -> usize {
        12 + 4 * v.crcs.len()
    }
    fn enc_val(v: &Extent, e: &mut Enc) {
        e.u64(v.pblock);
        e.u32(v.crcs.len() as u32);
        for c in &v.crcs {
            e.u32(*c);
        }
    }
    fn dec_val(d: &mut Dec<'_>, layout: &Layout) -> Result<Extent> {
        let pblock = d.u64()?;
        let len = d.u32()?;
        if len == 0 || len > layout.max_extent {
            return Err(Error::corrupt(format!(
                "extent of {len} blocks (limit {})",
                layout.max_extent
            )));
        }
        if !layout.run_in_range(pblock, len as u64) {
            return Err(Error::corrupt(format!(
                "extent {pblock}+{len} outside the data area"
            )));
        }
        let mut crcs = Vec::with_capacity(len as usize);
        for _ in 0..len {
            crcs.push(d.u32()?);
        }
        Ok(Extent { pblock, crcs })
    }
}
