//! Raw block-device backend: a block special file (`/dev/sdX`, `/dev/loopN`,
//! `/dev/nvme0n1p2`, ...).
//!
//! * Always opened with `O_DIRECT`, so I/O bypasses the block device's page
//!   cache and `flush` only has to empty the device's volatile cache. Buffers
//!   must then be aligned in memory: unaligned caller buffers go through an
//!   aligned bounce buffer (see [`crate::file::AlignedBuf`] to avoid it).
//! * Opened with `O_EXCL` unless read-only: the kernel then refuses a device
//!   that is mounted or claimed by another exclusive opener (`EBUSY`), which
//!   we report as [`BlockError::Busy`] naming the device.
//! * Geometry from `BLKGETSIZE64` (bytes), `BLKSSZGET` (logical sector) and
//!   `BLKPBSZGET` (physical sector). Block size = logical sector size unless
//!   the caller asks for a larger power of two.
//! * flush: `fdatasync` (the kernel sends a cache flush, REQ_PREFLUSH).
//!   barrier: a flush — Linux has no ordering-only request since 2.6.37.
//! * `host_cached_writes`: false (O_DIRECT) except for a loop device
//!   without direct I/O (`loop/dio` 0), which writes into the page cache
//!   of its backing file.
//! * discard: `BLKDISCARD`; `EOPNOTSUPP` is success (it is a hint).
//! * write_zeroes: `BLKZEROOUT` (the kernel offloads it or writes zeros).
//! * write_batch / read_batch: many requests in flight on io_uring, adjacent
//!   ones merged (as for image files, see [`crate::file`]).
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::device::{check_io, check_range};
use crate::file::{batch_read, batch_write, IoEngine, PosIo, DIRECT_ALIGN};
use crate::{BlockDevice, BlockError, Capabilities, Geometry, Result, WriteReq};

mod ioctls {
    // The exact request codes are those of <linux/fs.h>; verified on this
    // machine kind (see /work/shared/research/machine-facts.md).
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
    nix::ioctl_read_bad!(blkpbszget, nix::request_code_none!(0x12, 123), libc::c_uint);
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
}

/// How to open a block device.
#[derive(Clone, Debug, Default)]
pub struct RawOptions {
    /// Open read-only (and without O_EXCL, so a mounted device can be inspected).
    pub read_only: bool,
    /// Logical block size: a power of two ≥ the device's logical sector size.
    /// Default: the logical sector size.
    pub block_size: Option<u32>,
}

/// A block special file used with O_DIRECT.
pub struct RawDevice {
    io: PosIo,
    path: PathBuf,
    geo: Geometry,
    read_only: bool,
    physical_sector: u32,
    discard_ok: AtomicBool,
    /// A loop device without direct I/O: what is written to it waits in
    /// the page cache of its backing file (see `host_cached_writes`).
    host_cached: bool,
}

impl RawDevice {
    /// Open the block device at `path`.
    pub fn open(path: impl AsRef<Path>, opts: &RawOptions) -> Result<Self> {
        let path = path.as_ref();
        let mut oo = std::fs::OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        let mut flags = libc::O_DIRECT;
        if !opts.read_only {
            // On a block device O_EXCL means "claim exclusively": fails with
            // EBUSY if mounted or opened O_EXCL by someone else.
            flags |= libc::O_EXCL;
        }
        oo.custom_flags(flags);
        let file = oo.open(path).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => BlockError::Busy {
                device: path.display().to_string(),
                holder: "a mount or another exclusive opener".to_string(),
            },
            Some(libc::ENOENT) => BlockError::Invalid(format!("no such file: {}", path.display())),
            _ => BlockError::io("open", e),
        })?;
        let meta = file.metadata().map_err(|e| BlockError::io("open", e))?;
        if !meta.file_type().is_block_device() {
            return Err(BlockError::Invalid(format!(
                "{} is not a block device",
                path.display()
            )));
        }
        let (size, logical, physical) = query_geometry(&file)?;
        let bs = opts.block_size.unwrap_or(logical);
        if !Geometry::valid_block_size(bs) || bs < logical {
            return Err(BlockError::Invalid(format!(
                "{}: block size {bs} must be a power of two in 512..=65536 and at least the \
                 logical sector size {logical}",
                path.display()
            )));
        }
        let block_count = size / bs as u64;
        if block_count == 0 {
            return Err(BlockError::Invalid(format!(
                "{}: device of {size} bytes is smaller than one {bs}-byte block",
                path.display()
            )));
        }
        let queue = QueueLimits::read(meta.rdev());
        let geo = Geometry {
            block_size: bs,
            block_count,
            // Without RWF_ATOMIC Linux promises no write atomicity at all.
            atomic_unit: 0,
            preferred_io: queue.optimal_io.max(1 << 20),
            caps: Capabilities {
                discard: queue.discard,
                write_zeroes: queue.write_zeroes,
                native_barrier: false,
            },
        };
        tracing::debug!(path = %path.display(), ?geo, logical, physical, "opened block device");
        Ok(RawDevice {
            io: PosIo::new(file, true, DIRECT_ALIGN.max(logical as usize)),
            path: path.to_path_buf(),
            geo,
            read_only: opts.read_only,
            physical_sector: physical,
            discard_ok: AtomicBool::new(true),
            host_cached: queue.buffered_loop,
        })
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The engine running `write_batch`/`read_batch`.
    pub fn io_engine(&self) -> IoEngine {
        self.io.engine()
    }

    /// Choose the batch engine (io_uring only where available).
    pub fn set_io_engine(&self, engine: IoEngine) {
        self.io.set_engine(engine)
    }

    /// Physical sector size reported by BLKPBSZGET.
    pub fn physical_sector_size(&self) -> u32 {
        self.physical_sector
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(BlockError::Invalid(format!(
                "{} was opened read-only",
                self.path.display()
            )))
        } else {
            Ok(())
        }
    }

    fn byte_range(&self, block: u64, count: u64) -> [u64; 2] {
        let bs = self.geo.block_size as u64;
        [block * bs, count * bs]
    }
}

/// (size in bytes, logical sector size, physical sector size)
fn query_geometry(file: &File) -> Result<(u64, u32, u32)> {
    let fd = file.as_raw_fd();
    let mut size: u64 = 0;
    let mut logical: libc::c_int = 0;
    let mut physical: libc::c_uint = 0;
    let err = |e: nix::errno::Errno| BlockError::io("open (geometry ioctl)", e.into());
    // SAFETY: fd is a valid open block device for the duration of the calls
    // and each pointer refers to a live local of the type the ioctl writes.
    unsafe {
        ioctls::blkgetsize64(fd, &mut size).map_err(err)?;
        ioctls::blksszget(fd, &mut logical).map_err(err)?;
        ioctls::blkpbszget(fd, &mut physical).map_err(err)?;
    }
    let logical = u32::try_from(logical)
        .ok()
        .filter(|l| l.is_power_of_two())
        .ok_or_else(|| BlockError::Invalid(format!("odd logical sector size {logical}")))?;
    Ok((size, logical, physical.max(logical)))
}

/// What sysfs says about the request queue (to report capabilities truthfully).
#[derive(Default)]
struct QueueLimits {
    discard: bool,
    write_zeroes: bool,
    optimal_io: u32,
    /// A loop device whose `loop/dio` is not 1: it writes into the page
    /// cache of its backing file.
    buffered_loop: bool,
}

impl QueueLimits {
    fn read(rdev: u64) -> Self {
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        let base = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        // A partition has no queue/ of its own: use its parent disk's.
        let queue = [base.join("queue"), base.join("../queue")]
            .into_iter()
            .find(|q| q.is_dir());
        // Only loop devices have loop/ (a partition of one: its parent's).
        let buffered_loop = [base.join("loop/dio"), base.join("../loop/dio")]
            .into_iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .is_some_and(|d| d.trim() != "1");
        let Some(q) = queue else {
            return QueueLimits {
                buffered_loop,
                ..QueueLimits::default()
            };
        };
        let num = |name: &str| -> u64 {
            std::fs::read_to_string(q.join(name))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        QueueLimits {
            discard: num("discard_max_bytes") > 0,
            write_zeroes: num("write_zeroes_max_bytes") > 0,
            optimal_io: u32::try_from(num("optimal_io_size")).unwrap_or(0),
            buffered_loop,
        }
    }
}

impl BlockDevice for RawDevice {
    fn geometry(&self) -> Geometry {
        self.geo
    }

    fn read(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        check_io(&self.geo, block, buf.len())?;
        self.io
            .read_at(block * self.geo.block_size as u64, buf)
            .map_err(|e| BlockError::io("read", e))
    }

    fn write(&self, block: u64, data: &[u8]) -> Result<()> {
        check_io(&self.geo, block, data.len())?;
        self.check_writable()?;
        self.io
            .write_at(block * self.geo.block_size as u64, data)
            .map_err(|e| BlockError::io("write", e))
    }

    fn write_zeroes(&self, block: u64, count: u64) -> Result<()> {
        check_range(&self.geo, block, count)?;
        self.check_writable()?;
        let range = self.byte_range(block, count);
        // SAFETY: fd is open; range is a live [u64; 2] the ioctl only reads.
        let r = unsafe { ioctls::blkzeroout(self.io.file.as_raw_fd(), &range) };
        match r {
            Ok(_) => Ok(()),
            // BLKZEROOUT falls back to writing zeros in the kernel, so this
            // is rare; if it happens, write the zeros ourselves.
            Err(nix::errno::Errno::EOPNOTSUPP) => self
                .io
                .write_zero_buffers(range[0], range[1])
                .map_err(|e| BlockError::io("write_zeroes", e)),
            Err(e) => Err(BlockError::io("write_zeroes", e.into())),
        }
    }

    fn discard(&self, block: u64, count: u64) -> Result<()> {
        check_range(&self.geo, block, count)?;
        self.check_writable()?;
        if !self.discard_ok.load(Ordering::Relaxed) {
            return Ok(());
        }
        let range = self.byte_range(block, count);
        // SAFETY: fd is open; range is a live [u64; 2] the ioctl only reads.
        let r = unsafe { ioctls::blkdiscard(self.io.file.as_raw_fd(), &range) };
        match r {
            Ok(_) => Ok(()),
            Err(nix::errno::Errno::EOPNOTSUPP) => {
                // A hint the device cannot take: doing nothing is allowed.
                tracing::info!(path = %self.path.display(), "device does not support discard");
                self.discard_ok.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(BlockError::io("discard", io::Error::from(e))),
        }
    }

    fn flush(&self) -> Result<()> {
        self.io.sync().map_err(|e| BlockError::io("flush", e))
    }

    fn barrier(&self) -> Result<()> {
        // Linux offers no ordering-only request: a barrier is a cache flush.
        self.flush()
    }

    fn host_cached_writes(&self) -> bool {
        // O_DIRECT skips the device's page cache; only a loop device
        // without direct I/O puts the writes in a page cache (its backing
        // file's) behind that.
        self.host_cached
    }

    fn write_batch(&self, writes: &[WriteReq<'_>]) -> Result<()> {
        batch_write(&self.io, &self.geo, || self.check_writable(), writes)
    }

    fn read_batch(&self, reads: &mut [(u64, &mut [u8])]) -> Result<()> {
        batch_read(&self.io, &self.geo, reads)
    }

    fn describe(&self) -> String {
        format!("block device {}", self.path.display())
    }
}
