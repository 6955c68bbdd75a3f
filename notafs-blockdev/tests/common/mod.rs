//! Helpers shared by the block-layer integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// A directory on a real disk filesystem (O_DIRECT fails on some tmpfs).
pub fn disk_tempdir() -> tempfile::TempDir {
    for base in ["/var/tmp", "/work/tgt"] {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("notafs-blockdev-test")
            .tempdir_in(base)
        {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// Create a zero-filled sparse file of `len` bytes.
pub fn make_image(dir: &Path, name: &str, len: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).expect("create image");
    f.set_len(len).expect("set_len");
    p
}

/// Serialises tests that use loop devices: `losetup -f` picks "the first
/// free" device, which races between concurrent callers.
static LOOP_LOCK: Mutex<()> = Mutex::new(());

pub fn loop_lock() -> MutexGuard<'static, ()> {
    LOOP_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A loop device attached to an image; detached on drop (also on panic).
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    /// `losetup -f --show [--sector-size S --direct-io=on] IMG`, or the reason
    /// it cannot be done here.
    pub fn attach(img: &Path, sector_size: Option<u32>) -> Result<LoopDev, String> {
        let mut cmd = Command::new("losetup");
        cmd.arg("-f").arg("--show");
        if let Some(s) = sector_size {
            cmd.arg("--sector-size")
                .arg(s.to_string())
                .arg("--direct-io=on");
        }
        cmd.arg(img);
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if dev.is_empty() {
            return Err("losetup printed no device".into());
        }
        Ok(LoopDev {
            dev: PathBuf::from(dev),
        })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let st = Command::new("losetup").arg("-d").arg(&self.dev).status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!("warning: could not detach {}", self.dev.display());
        }
    }
}

/// Attach or print SKIPPED and return None.
pub fn attach_or_skip(img: &Path, sector_size: Option<u32>) -> Option<LoopDev> {
    match LoopDev::attach(img, sector_size) {
        Ok(l) => Some(l),
        Err(reason) => {
            println!("SKIPPED: {reason}");
            eprintln!("SKIPPED: {reason}");
            None
        }
    }
}

/// Deterministic test pattern for block `block` of a write tagged `seed`.
pub fn pattern(seed: u64, block: u64, bs: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(block.wrapping_mul(0xD1B5_4A32_D192_ED03))
        | 1;
    (0..bs)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
