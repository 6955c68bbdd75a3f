//! Copy-on-write images: the persistent block array behind the crash device
//! and [`CrashImage`], the snapshot handed to the harness.
//!
//! An image is a vector of reference-counted chunks of [`CHUNK`] blocks.
//! Cloning an image copies `block_count / CHUNK` pointers; changing a block
//! copies only its chunk, and only when the chunk is shared. So the durable
//! image at every flush and barrier can be kept, and a crash image is that
//! snapshot plus the few chunks the state's pending writes touch.
use std::sync::{Arc, RwLock};

use super::block::Block;
use super::device::CrashDevice;
use crate::device::{check_io, check_range};
use crate::{BlockDevice, BlockError, Geometry, Result};

/// Blocks per chunk: small enough that copying a chunk on first write is
/// cheap (64 × 24 bytes), large enough that a snapshot of a 16 MiB image of
/// 4 KiB blocks is 64 pointers.
const CHUNK: usize = 64;

/// A persistent array of blocks.
#[derive(Clone, Debug)]
pub(crate) struct Image {
    block_size: u32,
    block_count: u64,
    chunks: Vec<Arc<Vec<Block>>>,
}

impl Image {
    /// An all-zero image; every chunk is the same shared zero chunk.
    pub(crate) fn zeroed(block_size: u32, block_count: u64) -> Result<Self> {
        let n = chunk_count(block_count)?;
        let zero = Arc::new(vec![Block::Zero; CHUNK]);
        Ok(Image {
            block_size,
            block_count,
            chunks: vec![zero; n],
        })
    }

    /// An image holding `data` (whole blocks; a partial last block is
    /// dropped). The buffer is shared by all its blocks, not copied again.
    pub(crate) fn from_vec(block_size: u32, mut data: Vec<u8>) -> Result<Self> {
        let bs = block_size as usize;
        let count = data.len() / bs;
        if u32::try_from(count).is_err() {
            return Err(BlockError::Invalid("crash device image too large".into()));
        }
        data.truncate(count * bs);
        let buf: Arc<[u8]> = Arc::from(data);
        let mut img = Image::zeroed(block_size, count as u64)?;
        for b in 0..count {
            img.set(
                b as u64,
                Block::Data {
                    buf: buf.clone(),
                    index: b as u32,
                },
            );
        }
        Ok(img)
    }

    pub(crate) fn block_count(&self) -> u64 {
        self.block_count
    }

    /// The block at `b`; callers have validated `b < block_count`.
    pub(crate) fn get(&self, b: u64) -> &Block {
        let b = b as usize;
        &self.chunks[b / CHUNK][b % CHUNK]
    }

    /// Replace the block at `b`, copying its chunk first if it is shared.
    pub(crate) fn set(&mut self, b: u64, v: Block) {
        let b = b as usize;
        Arc::make_mut(&mut self.chunks[b / CHUNK])[b % CHUNK] = v;
    }

    /// Read whole blocks from `block` into `buf` (validated by the caller).
    pub(crate) fn read(&self, block: u64, buf: &mut [u8]) {
        let bs = self.block_size as usize;
        for (i, out) in buf.chunks_exact_mut(bs).enumerate() {
            self.get(block + i as u64).read_into(out);
        }
    }

    /// Store a write: the buffer is copied once and shared by its blocks.
    pub(crate) fn write(&mut self, block: u64, data: &Arc<[u8]>) {
        let n = data.len() / self.block_size as usize;
        for i in 0..n {
            self.set(
                block + i as u64,
                Block::Data {
                    buf: data.clone(),
                    index: i as u32,
                },
            );
        }
    }

    /// The whole content as bytes.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let bs = self.block_size as usize;
        let mut out = vec![0u8; self.block_count as usize * bs];
        self.read(0, &mut out);
        out
    }
}

fn chunk_count(block_count: u64) -> Result<usize> {
    usize::try_from(block_count.div_ceil(CHUNK as u64))
        .ok()
        .filter(|_| block_count <= u32::MAX as u64)
        .ok_or_else(|| BlockError::Invalid("crash device too large".into()))
}

/// A crash state's image (or any snapshot of a simulated device): the shared
/// durable snapshot plus the blocks the state changed, copy-on-write.
///
/// It is itself a [`BlockDevice`] so the harness can open the filesystem on
/// it, recover, write and commit. Those writes land in this image's private
/// chunks: other states, other snapshots and the device never see them.
/// Writes are durable at once (like [`crate::memory::MemoryDevice`]); to crash
/// again while working on it, turn it into a [`CrashDevice`] with
/// [`CrashImage::to_device`].
#[derive(Debug)]
pub struct CrashImage {
    geo: Geometry,
    /// The salt of the device the image came from, so a device started from
    /// it produces different garbage.
    pub(crate) salt: u64,
    img: RwLock<Image>,
}

impl CrashImage {
    pub(crate) fn new(geo: Geometry, salt: u64, img: Image) -> Self {
        CrashImage {
            geo,
            salt,
            img: RwLock::new(img),
        }
    }

    /// A snapshot of the current content (pointer copies only).
    pub(crate) fn image(&self) -> Image {
        self.img.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The whole content as bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.img.read().unwrap_or_else(|e| e.into_inner()).to_vec()
    }

    /// An independent copy of the current content (pointer copies only).
    pub fn snapshot(&self) -> CrashImage {
        CrashImage::new(self.geo, self.salt, self.image())
    }

    /// A fresh crash device whose initial (durable) content is this image,
    /// with an empty log: for a second crash during recovery or repair.
    pub fn to_device(&self) -> CrashDevice {
        CrashDevice::from_image(self)
    }
}

impl Clone for CrashImage {
    fn clone(&self) -> Self {
        self.snapshot()
    }
}

impl BlockDevice for CrashImage {
    fn geometry(&self) -> Geometry {
        self.geo
    }

    fn read(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        check_io(&self.geo, block, buf.len())?;
        self.img
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .read(block, buf);
        Ok(())
    }

    fn write(&self, block: u64, data: &[u8]) -> Result<()> {
        check_io(&self.geo, block, data.len())?;
        let data: Arc<[u8]> = Arc::from(data);
        self.img
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .write(block, &data);
        Ok(())
    }

    fn write_zeroes(&self, block: u64, count: u64) -> Result<()> {
        check_range(&self.geo, block, count)?;
        let mut img = self.img.write().unwrap_or_else(|e| e.into_inner());
        for b in block..block + count {
            img.set(b, Block::Zero);
        }
        Ok(())
    }

    /// Reads back zeros: one of the allowed behaviours. Crash images are for
    /// checking recovery, where discard content is already explored by the
    /// crash states; use a [`CrashDevice`] to explore it again.
    fn discard(&self, block: u64, count: u64) -> Result<()> {
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
            "crash image ({} blocks of {})",
            self.geo.block_count, self.geo.block_size
        )
    }
}
