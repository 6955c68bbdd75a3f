//! A minimal image-file block device (pread / pwrite / fdatasync) for the
//! real-process crash test: the writer process is killed with SIGKILL, so
//! only what reached the kernel survives, exactly as for any backend.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use notafs_blockdev::{check_io, check_range, BlockDevice, BlockError, Capabilities, Geometry};

pub struct FileDevice {
    file: File,
    geo: Geometry,
}

impl FileDevice {
    /// Open (creating with `create_bytes` if missing) the image at `path`.
    pub fn open(path: &Path, block_size: u32, create_bytes: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() == 0 {
            file.set_len(create_bytes)?;
        }
        let len = file.metadata()?.len();
        Ok(FileDevice {
            file,
            geo: Geometry {
                block_size,
                block_count: len / block_size as u64,
                atomic_unit: block_size,
                preferred_io: 1 << 20,
                caps: Capabilities::default(),
            },
        })
    }

    fn off(&self, block: u64) -> u64 {
        block * self.geo.block_size as u64
    }
}

fn io(op: &'static str) -> impl Fn(std::io::Error) -> BlockError {
    move |e| BlockError::io(op, e)
}

impl BlockDevice for FileDevice {
    fn geometry(&self) -> Geometry {
        self.geo
    }
    fn read(&self, block: u64, buf: &mut [u8]) -> notafs_blockdev::Result<()> {
        check_io(&self.geo, block, buf.len())?;
        self.file
            .read_exact_at(buf, self.off(block))
            .map_err(io("read"))
    }
    fn write(&self, block: u64, data: &[u8]) -> notafs_blockdev::Result<()> {
        check_io(&self.geo, block, data.len())?;
        self.file
            .write_all_at(data, self.off(block))
            .map_err(io("write"))
    }
    fn write_zeroes(&self, block: u64, count: u64) -> notafs_blockdev::Result<()> {
        check_range(&self.geo, block, count)?;
        let z = vec![0u8; self.geo.block_size as usize];
        for b in block..block + count {
            self.file
                .write_all_at(&z, self.off(b))
                .map_err(io("write_zeroes"))?;
        }
        Ok(())
    }
    fn discard(&self, block: u64, count: u64) -> notafs_blockdev::Result<()> {
        check_range(&self.geo, block, count)?;
        Ok(())
    }
    fn flush(&self) -> notafs_blockdev::Result<()> {
        self.file.sync_data().map_err(io("flush"))
    }
    fn describe(&self) -> String {
        "file (test)".into()
    }
}
