//! The [`BlockDevice`] trait: the contract every layer above relies on.
use crate::{BlockError, Geometry, Result};

/// Largest single request accepted by [`check_range`]: 1 GiB. Larger transfers
/// are split by the caller; this bounds the memory a hostile length can cost.
pub const MAX_REQUEST_BYTES: u64 = 1 << 30;

/// One write of a batch handed to [`BlockDevice::write_batch`].
#[derive(Debug, Clone, Copy)]
pub struct WriteReq<'a> {
    /// First logical block.
    pub block: u64,
    /// Data, a whole number of blocks.
    pub data: &'a [u8],
}

/// A block device: an array of `geometry().block_count` logical blocks of
/// `geometry().block_size` bytes.
///
/// # Semantics (the contract; see `docs/BLOCK-SEMANTICS.md`)
///
/// * All requests are whole blocks: a buffer length that is not a multiple of
///   B, a zero-length request or a range past the end is an error, never a
///   panic, and touches nothing.
/// * [`read`](Self::read) returns, for each block, the most recent completed
///   write or write-zeroes of that block. After a discard the content is
///   unspecified until the block is rewritten.
/// * [`write`](Self::write): completion means visible to later reads. It does
///   **not** mean durable, and it is **not ordered** against other writes.
/// * [`flush`](Self::flush): when it returns Ok, every write, write-zeroes and
///   discard completed before it was issued is durable.
/// * [`write_fua`](Self::write_fua): a write that is durable when it
///   returns Ok (Force Unit Access). It makes **only its own blocks**
///   durable: other completed writes stay as un-flushed as they were, and
///   it is not ordered against them. The default (write, then flush) is
///   stronger; callers must not rely on that.
/// * [`barrier`](Self::barrier): if any write issued after the barrier survives
///   a crash, every write completed before the barrier survives too. Backends
///   without a native ordering primitive implement it as `flush`.
/// * [`discard`](Self::discard): a hint. It may do nothing or only part of the
///   range; contents afterwards are unspecified (old data, zeros or anything);
///   not durable until a flush.
/// * [`write_zeroes`](Self::write_zeroes): the range reads back as zeros;
///   durable after a flush.
/// * A failed write leaves its range undefined. A failed flush leaves every
///   un-flushed write undefined: the user must stop writing and reopen.
///
/// **Crash model.** After a power cut the device holds the image at the last
/// completed flush, plus, for each later write or discard, block by block,
/// the new content, the old content or garbage, subject to the barrier rule.
/// A write larger than `atomic_unit` may be torn at any block boundary.
///
/// Methods take `&self`: backends use interior mutability (or positional
/// I/O), so many readers can share one device across threads.
pub trait BlockDevice: Send + Sync {
    /// Shape and capabilities. Constant for the life of the handle.
    fn geometry(&self) -> Geometry;

    /// Read `buf.len() / B` blocks starting at `block` into `buf`.
    fn read(&self, block: u64, buf: &mut [u8]) -> Result<()>;

    /// Write `data.len() / B` blocks starting at `block`. One call for a large
    /// contiguous write, so the backend can issue it as one request.
    fn write(&self, block: u64, data: &[u8]) -> Result<()>;

    /// Make `count` blocks from `block` read back as zeros.
    fn write_zeroes(&self, block: u64, count: u64) -> Result<()>;

    /// Hint that `count` blocks from `block` are unused. Contents afterwards
    /// are unspecified. Devices that cannot discard return Ok and do nothing.
    fn discard(&self, block: u64, count: u64) -> Result<()>;

    /// Make every write completed before this call durable.
    fn flush(&self) -> Result<()>;

    /// Write `data.len() / B` blocks at `block` and make **this write**
    /// durable before returning (Force Unit Access). Nothing is promised
    /// about other writes: they are neither made durable nor ordered by it.
    /// The default, `write` then `flush`, is stronger and always correct;
    /// backends with a native FUA (NBD's `NBD_CMD_FLAG_FUA`) override it and
    /// [`has_fua`](Self::has_fua).
    fn write_fua(&self, block: u64, data: &[u8]) -> Result<()> {
        self.write(block, data)?;
        self.flush()
    }

    /// Whether [`write_fua`](Self::write_fua) is native, i.e. cheaper than a
    /// write plus a flush and durable for its own blocks only.
    fn has_fua(&self) -> bool {
        false
    }

    /// Whether a completed write may wait in a cache on this host (the
    /// page cache of a buffered image file, or of the backing file of a
    /// loop device without direct I/O) that only a flush or the kernel's
    /// own write-back sends on to storage. Starting that write-back early,
    /// in the background, then overlaps it with further writes (notafs's
    /// write-behind). False when a completed write has already been handed
    /// to the storage device (O_DIRECT image files, raw block devices): a
    /// flush then only waits for the device's own volatile cache, which
    /// drains without being asked, and the writes issued meanwhile wait
    /// behind it. It says nothing about durability: [`flush`](Self::flush)
    /// is needed either way. The default, true, is the safe guess for
    /// performance (an early flush is never wrong).
    fn host_cached_writes(&self) -> bool {
        true
    }

    /// Order: writes completed before the barrier persist before any write
    /// issued after it. The default is a full flush.
    fn barrier(&self) -> Result<()> {
        self.flush()
    }

    /// Hand many writes to the backend at once, so that backends able to keep
    /// several requests in flight (O_DIRECT, NBD) can do so. No ordering is
    /// implied between the writes of a batch. Stops at the first error.
    fn write_batch(&self, writes: &[WriteReq<'_>]) -> Result<()> {
        for w in writes {
            self.write(w.block, w.data)?;
        }
        Ok(())
    }

    /// Read many ranges at once; the default reads them one by one.
    fn read_batch(&self, reads: &mut [(u64, &mut [u8])]) -> Result<()> {
        for (block, buf) in reads.iter_mut() {
            self.read(*block, buf)?;
        }
        Ok(())
    }

    /// A short human-readable description ("file:/path", "memory", ...).
    fn describe(&self) -> String {
        String::from("block device")
    }
}

/// Validate a transfer of `len` bytes at `block` against `geo`; returns the
/// number of blocks. Every backend calls this before touching anything.
pub fn check_io(geo: &Geometry, block: u64, len: usize) -> Result<u64> {
    let bs = geo.block_size as usize;
    if len == 0 {
        return Err(BlockError::Empty);
    }
    if len % bs != 0 {
        return Err(BlockError::Misaligned {
            len,
            block_size: geo.block_size,
        });
    }
    if len as u64 > MAX_REQUEST_BYTES {
        return Err(BlockError::TooLarge {
            len: len as u64,
            max: MAX_REQUEST_BYTES,
        });
    }
    let count = (len / bs) as u64;
    check_range(geo, block, count)?;
    Ok(count)
}

/// Validate a range of `count` blocks at `block` (for discard/write-zeroes,
/// which carry no buffer and so have no size limit beyond the device).
pub fn check_range(geo: &Geometry, block: u64, count: u64) -> Result<()> {
    if count == 0 {
        return Err(BlockError::Empty);
    }
    match block.checked_add(count) {
        Some(end) if end <= geo.block_count => Ok(()),
        _ => Err(BlockError::OutOfRange {
            start: block,
            end: block.saturating_add(count),
            count: geo.block_count,
        }),
    }
}

/// Forward every method to the pointee, so `Arc<dyn BlockDevice>` and
/// `Box<dyn BlockDevice>` are devices themselves.
macro_rules! forward_block_device {
    ($($ptr:ident)::+) => {
        impl<T: BlockDevice + ?Sized> BlockDevice for $($ptr)::+<T> {
            fn geometry(&self) -> Geometry {
                (**self).geometry()
            }
            fn read(&self, block: u64, buf: &mut [u8]) -> Result<()> {
                (**self).read(block, buf)
            }
            fn write(&self, block: u64, data: &[u8]) -> Result<()> {
                (**self).write(block, data)
            }
            fn write_zeroes(&self, block: u64, count: u64) -> Result<()> {
                (**self).write_zeroes(block, count)
            }
            fn discard(&self, block: u64, count: u64) -> Result<()> {
                (**self).discard(block, count)
            }
            fn flush(&self) -> Result<()> {
                (**self).flush()
            }
            fn barrier(&self) -> Result<()> {
                (**self).barrier()
            }
            fn write_fua(&self, block: u64, data: &[u8]) -> Result<()> {
                (**self).write_fua(block, data)
            }
            fn has_fua(&self) -> bool {
                (**self).has_fua()
            }
            fn host_cached_writes(&self) -> bool {
                (**self).host_cached_writes()
            }
            fn write_batch(&self, writes: &[WriteReq<'_>]) -> Result<()> {
                (**self).write_batch(writes)
            }
            fn read_batch(&self, reads: &mut [(u64, &mut [u8])]) -> Result<()> {
                (**self).read_batch(reads)
            }
            fn describe(&self) -> String {
                (**self).describe()
            }
        }
    };
}

forward_block_device!(std::sync::Arc);
forward_block_device!(Box);
