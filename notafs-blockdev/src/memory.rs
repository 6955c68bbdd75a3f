//! A device held in RAM. Writes are durable at once (there is nothing to
//! lose), so flush and barrier do nothing; it is the reference behaviour the
//! other backends are compared against in tests.
use std::sync::RwLock;

use crate::device::{check_io, check_range};
use crate::{BlockDevice, BlockError, Capabilities, Geometry, Result};

/// An in-memory block device.
pub struct MemoryDevice {
    geo: Geometry,
    data: RwLock<Vec<u8>>,
}

impl MemoryDevice {
    /// A zero-filled device of `block_count` blocks of `block_size` bytes.
    pub fn new(block_size: u32, block_count: u64) -> Result<Self> {
        if !Geometry::valid_block_size(block_size) {
            return Err(BlockError::Invalid(format!(
                "block size {block_size} is not a power of two in 512..=65536"
            )));
        }
        let bytes = block_count
            .checked_mul(block_size as u64)
            .filter(|b| *b <= isize::MAX as u64)
            .ok_or_else(|| BlockError::Invalid("memory device too large".into()))?;
        Ok(Self::from_vec(block_size, vec![0; bytes as usize]))
    }

    /// A device whose content is `data` (its length must be a multiple of
    /// `block_size`; a partial last block is dropped).
    pub fn from_vec(block_size: u32, mut data: Vec<u8>) -> Self {
        let count = (data.len() / block_size as usize) as u64;
        data.truncate(count as usize * block_size as usize);
        MemoryDevice {
            geo: Geometry {
                block_size,
                block_count: count,
                atomic_unit: block_size,
                preferred_io: 1 << 20,
                caps: Capabilities {
                    discard: true,
                    write_zeroes: true,
                    native_barrier: true,
                },
            },
            data: RwLock::new(data),
        }
    }

    /// A copy of the whole content.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn off(&self, block: u64) -> usize {
        (block * self.geo.block_size as u64) as usize
    }
}

impl BlockDevice for MemoryDevice {
    fn geometry(&self) -> Geometry {
        self.geo
    }

    fn read(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        check_io(&self.geo, block, buf.len())?;
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        let o = self.off(block);
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }

    fn write(&self, block: u64, data: &[u8]) -> Result<()> {
        check_io(&self.geo, block, data.len())?;
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        let o = self.off(block);
        d[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn write_zeroes(&self, block: u64, count: u64) -> Result<()> {
        check_range(&self.geo, block, count)?;
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        let o = self.off(block);
        let n = (count * self.geo.block_size as u64) as usize;
        d[o..o + n].fill(0);
        Ok(())
    }

    fn discard(&self, block: u64, count: u64) -> Result<()> {
        // Zeroing is one of the behaviours the contract allows; tests that
        // must not rely on it use the crash device, which also yields old
        // data and garbage.
        self.write_zeroes(block, count)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "memory ({} blocks of {})",
            self.geo.block_count, self.geo.block_size
        )
    }
}
