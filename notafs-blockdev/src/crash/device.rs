//! [`CrashDevice`]: a memory device that logs every request so that every
//! image a power cut could leave behind can be rebuilt afterwards.
use std::ops::Range;
use std::sync::{Arc, RwLock};

use super::block::Block;
use super::image::{CrashImage, Image};
use super::log::{DiscardFill, Log, LoggedOp, Op};
use super::states::{CrashStates, EnumOptions};
use crate::device::{check_io, check_range};
use crate::{BlockDevice, BlockError, Capabilities, Geometry, Result};

/// A crash-simulating block device.
///
/// Reads and writes behave like a memory device over the current ("live")
/// image; discarded blocks read as the [`DiscardFill`] (garbage by default).
/// Every completed request is logged with its flush/barrier epoch; flushes
/// and barriers keep a copy-on-write snapshot of the image, so any crash
/// state is cheap to build. See the [module docs](super) for the crash model
/// and the enumeration.
#[derive(Debug)]
pub struct CrashDevice {
    inner: RwLock<Inner>,
}

#[derive(Debug)]
struct Inner {
    geo: Geometry,
    fill: DiscardFill,
    live: Image,
    /// Shared with enumerators: appending after an enumeration started
    /// copies the log once (`Arc::make_mut`) instead of blocking.
    log: Arc<Log>,
}

impl CrashDevice {
    /// A zero-filled device of `block_count` blocks of `block_size` bytes.
    pub fn new(block_size: u32, block_count: u64) -> Result<Self> {
        check_block_size(block_size)?;
        Ok(Self::with_image(
            block_size,
            0,
            Image::zeroed(block_size, block_count)?,
        ))
    }

    /// A device whose initial, durable content is `data` (whole blocks; a
    /// partial last block is dropped), e.g. an image made by mkfs.
    pub fn from_vec(block_size: u32, data: Vec<u8>) -> Result<Self> {
        check_block_size(block_size)?;
        Ok(Self::with_image(
            block_size,
            0,
            Image::from_vec(block_size, data)?,
        ))
    }

    /// A device whose initial, durable content is `image` (e.g. a crash
    /// state, to crash again during recovery), with an empty log. The atomic
    /// unit is carried over; garbage differs from the parent device's.
    pub fn from_image(image: &CrashImage) -> Self {
        let geo = image.geometry();
        let dev = Self::with_image(geo.block_size, image.salt.wrapping_add(1), image.image());
        dev.set_atomic_unit(geo.atomic_unit);
        dev
    }

    fn with_image(block_size: u32, salt: u64, img: Image) -> Self {
        let geo = Geometry {
            block_size,
            block_count: img.block_count(),
            atomic_unit: block_size,
            preferred_io: 1 << 20,
            caps: Capabilities {
                discard: true,
                write_zeroes: true,
                native_barrier: true,
            },
        };
        CrashDevice {
            inner: RwLock::new(Inner {
                geo,
                fill: DiscardFill::default(),
                log: Arc::new(Log::new(geo, salt, img.clone())),
                live: img,
            }),
        }
    }

    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes a single write persists all-or-nothing; writes larger than
    /// this (issued from now on) may be torn at block boundaries. 0 means
    /// nothing is guaranteed. The default is the block size.
    pub fn set_atomic_unit(&self, bytes: u32) {
        let mut inner = self.lock_write();
        inner.geo.atomic_unit = bytes;
        // Crash images report the geometry of the log they came from.
        Arc::make_mut(&mut inner.log).geo.atomic_unit = bytes;
    }

    /// What discards issued from now on leave behind (default: garbage).
    pub fn set_discard_fill(&self, fill: DiscardFill) {
        self.lock_write().fill = fill;
    }

    /// Number of logged requests so far: record it around a commit to know
    /// which cuts fall inside it.
    pub fn ops(&self) -> usize {
        self.lock_read().log.ops.len()
    }

    /// The log, for reports and reproducers.
    pub fn log(&self) -> Vec<LoggedOp> {
        self.lock_read().log.public()
    }

    /// The current content (what reads return), as a snapshot.
    pub fn snapshot(&self) -> CrashImage {
        let inner = self.lock_read();
        CrashImage::new(inner.geo, inner.log.salt, inner.live.clone())
    }

    /// The image at the last completed flush (the initial image if none):
    /// what survives if nothing pending does.
    pub fn durable_image(&self) -> CrashImage {
        let inner = self.lock_read();
        let log = &inner.log;
        let img = log
            .ops
            .iter()
            .rev()
            .find_map(|op| match op {
                Op::Flush { snap } => Some(snap),
                _ => None,
            })
            .unwrap_or(&log.initial)
            .clone();
        CrashImage::new(inner.geo, log.salt, img)
    }

    /// The garbage bytes the model uses when op `op` leaves garbage in
    /// device block `block` (for independent checks of the model).
    pub fn garbage_content(&self, op: usize, block: u64) -> Vec<u8> {
        let inner = self.lock_read();
        let mut out = vec![0u8; inner.geo.block_size as usize];
        inner.log.garbage(op, block).read_into(&mut out);
        out
    }

    /// Every crash state of the log, lazily, in cut order. Deterministic for
    /// given options and log.
    pub fn states(&self, opts: &EnumOptions) -> CrashStates {
        self.states_between(opts, 0..usize::MAX)
    }

    /// The crash states whose first cut (`CrashState::cut`) lies in `cuts`:
    /// lets a harness split the work or resume.
    pub fn states_between(&self, opts: &EnumOptions, cuts: Range<usize>) -> CrashStates {
        CrashStates::new(self.lock_read().log.clone(), opts, cuts)
    }

    /// How many states [`states`](Self::states) yields, without building them.
    pub fn count_states(&self, opts: &EnumOptions) -> u64 {
        self.states(opts).count_remaining()
    }

    fn log_op(&self, op: Op, apply: impl FnOnce(&mut Image, &Log, usize)) {
        let mut inner = self.lock_write();
        let inner = &mut *inner;
        let log = Arc::make_mut(&mut inner.log);
        let index = log.ops.len();
        apply(&mut inner.live, log, index);
        log.push(op);
    }

    fn tearable(geo: &Geometry, blocks: u64) -> bool {
        // u128: blocks × block size cannot overflow.
        blocks as u128 * geo.block_size as u128 > geo.atomic_unit as u128
    }
}

fn check_block_size(bs: u32) -> Result<()> {
    if Geometry::valid_block_size(bs) {
        Ok(())
    } else {
        Err(BlockError::Invalid(format!(
            "block size {bs} is not a power of two in 512..=65536"
        )))
    }
}

impl BlockDevice for CrashDevice {
    fn geometry(&self) -> Geometry {
        self.lock_read().geo
    }

    fn read(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        let inner = self.lock_read();
        check_io(&inner.geo, block, buf.len())?;
        inner.live.read(block, buf);
        Ok(())
    }

    fn write(&self, block: u64, data: &[u8]) -> Result<()> {
        let geo = self.geometry();
        let count = check_io(&geo, block, data.len())?;
        let data: Arc<[u8]> = Arc::from(data);
        let op = Op::Write {
            block,
            data: data.clone(),
            tearable: Self::tearable(&geo, count),
        };
        self.log_op(op, |live, _, _| live.write(block, &data));
        Ok(())
    }

    fn write_zeroes(&self, block: u64, count: u64) -> Result<()> {
        let geo = self.geometry();
        check_range(&geo, block, count)?;
        let op = Op::WriteZeroes {
            block,
            count,
            tearable: Self::tearable(&geo, count),
        };
        self.log_op(op, |live, _, _| {
            for b in block..block + count {
                live.set(b, Block::Zero);
            }
        });
        Ok(())
    }

    fn discard(&self, block: u64, count: u64) -> Result<()> {
        let (geo, fill) = {
            let inner = self.lock_read();
            (inner.geo, inner.fill)
        };
        check_range(&geo, block, count)?;
        let op = Op::Discard { block, count, fill };
        self.log_op(op, |live, log, index| {
            for b in block..block + count {
                let v = match fill {
                    DiscardFill::Zeros => Block::Zero,
                    DiscardFill::Garbage => log.garbage(index, b),
                };
                live.set(b, v);
            }
        });
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let mut inner = self.lock_write();
        let snap = inner.live.clone();
        Arc::make_mut(&mut inner.log).push(Op::Flush { snap });
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        let mut inner = self.lock_write();
        let snap = inner.live.clone();
        Arc::make_mut(&mut inner.log).push(Op::Barrier { snap });
        Ok(())
    }

    fn describe(&self) -> String {
        let inner = self.lock_read();
        format!(
            "crash ({} blocks of {}, {} ops logged)",
            inner.geo.block_count,
            inner.geo.block_size,
            inner.log.ops.len()
        )
    }
}
