//! Open a device from a user-supplied spec.
//!
//! Accepted forms:
//! * `memory:SIZE` — a zero-filled [`MemoryDevice`] (`memory:64M`);
//! * `file:PATH` or a plain `PATH` — a regular file opens as a
//!   [`FileDevice`], a block special file as a [`RawDevice`];
//! * `nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`, and over
//!   TLS `nbds://...`, `nbds+unix://...` — an [`NbdDevice`] (see
//!   [`crate::nbd`]).
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::file::{FileDevice, FileOptions, DEFAULT_FILE_BLOCK_SIZE};
use crate::memory::MemoryDevice;
use crate::nbd::{NbdDevice, NbdOptions};
use crate::raw::{RawDevice, RawOptions};
use crate::{BlockDevice, BlockError, Geometry, Result};

/// Options for [`open`].
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Refuse every modifying operation (and do not claim block devices
    /// exclusively).
    pub read_only: bool,
    /// Use O_DIRECT for image files. Block devices always use O_DIRECT.
    pub direct: bool,
    /// Logical block size. Default: 4096 for files and memory, the logical
    /// sector size for block devices.
    pub block_size: Option<u32>,
}

/// Whether `spec` is an NBD URI (`nbd://`, `nbd+unix://`, `nbds://`,
/// `nbds+unix://`).
pub fn is_nbd_uri(spec: &str) -> bool {
    ["nbd://", "nbd+unix://", "nbds://", "nbds+unix://"]
        .iter()
        .any(|p| spec.starts_with(p))
}

/// Open the device named by `spec` (see the module documentation).
pub fn open(spec: &str, opts: &OpenOptions) -> Result<Box<dyn BlockDevice>> {
    if let Some(size) = spec.strip_prefix("memory:") {
        return open_memory(size, opts);
    }
    if is_nbd_uri(spec) {
        return open_nbd(spec, opts);
    }
    let path = match spec.strip_prefix("file:") {
        Some(p) => p,
        None if spec.contains("://") => {
            return Err(BlockError::Invalid(format!(
                "unknown device URI {spec:?} (expected a path, file:PATH, memory:SIZE, nbd:// or nbds://)"
            )))
        }
        None => spec,
    };
    open_path(Path::new(path), opts)
}

fn open_memory(size: &str, opts: &OpenOptions) -> Result<Box<dyn BlockDevice>> {
    let bytes = parse_size(size)
        .ok_or_else(|| BlockError::Invalid(format!("bad size {size:?} in memory:SIZE")))?;
    let bs = opts.block_size.unwrap_or(DEFAULT_FILE_BLOCK_SIZE);
    if !Geometry::valid_block_size(bs) {
        return Err(BlockError::Invalid(format!(
            "block size {bs} is not a power of two in 512..=65536"
        )));
    }
    if bytes < bs as u64 {
        return Err(BlockError::Invalid(format!(
            "memory device of {bytes} bytes is smaller than one {bs}-byte block"
        )));
    }
    Ok(Box::new(MemoryDevice::new(bs, bytes / bs as u64)?))
}

fn open_path(path: &Path, opts: &OpenOptions) -> Result<Box<dyn BlockDevice>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BlockError::Invalid(format!(
                "no such file: {}",
                path.display()
            )))
        }
        Err(e) => return Err(BlockError::io("open", e)),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        let fo = FileOptions {
            read_only: opts.read_only,
            direct: opts.direct,
            block_size: opts.block_size,
        };
        Ok(Box::new(FileDevice::open(path, &fo)?))
    } else if ft.is_block_device() {
        let ro = RawOptions {
            read_only: opts.read_only,
            block_size: opts.block_size,
        };
        Ok(Box::new(RawDevice::open(path, &ro)?))
    } else {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        Err(BlockError::Invalid(format!(
            "{} is {what}, not an image file or block device",
            path.display()
        )))
    }
}

/// The NBD backend: parse the URI (`nbd://HOST[:PORT]/EXPORT` or
/// `nbd+unix:///EXPORT?socket=PATH`, as in the NBD URI spec) and connect.
/// `read_only` and `block_size` are passed on; `direct` has no meaning here.
fn open_nbd(uri: &str, opts: &OpenOptions) -> Result<Box<dyn BlockDevice>> {
    let no = NbdOptions {
        read_only: opts.read_only,
        block_size: opts.block_size,
        ..NbdOptions::default()
    };
    Ok(Box::new(NbdDevice::open_uri(uri, &no)?))
}

/// Parse a size: plain bytes (`4096`) or a number with a binary unit
/// `K`, `M`, `G`, `T` (`512K`, `64M`, `1G`, `2T`), case-insensitive, with an
/// optional `B`/`iB` after the unit (`64MiB`). `None` on junk or overflow.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    if num.is_empty() {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("2T"), Some(2 << 40));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("12X"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("99999999999999999999"), None);
        assert_eq!(parse_size("20000000T"), None);
    }
}
