//! Open a device, mount it, serve until unmounted, commit, return.
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};
use notafs_core::{Fs, OpenOptions};
use tracing::{info, warn};

use crate::{FuseOptions, NotafsFuse};

/// Write-behind of read-write mounts: a background device flush after
/// every this many bytes of file data.
const WRITE_BEHIND_BYTES: u64 = 8 << 20;

/// Everything `notafs-fuse` needs to mount.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Device spec, as accepted by `notafs_blockdev::open`.
    pub device: String,
    pub mountpoint: PathBuf,
    /// Allow changes (default: read-only).
    pub rw: bool,
    /// Serve this retained generation (read-only).
    pub generation: Option<u64>,
    /// Commit pending changes this often (read-write; zero disables).
    pub commit_interval: Duration,
    /// Cache size of the core.
    pub cache_bytes: usize,
    /// O_DIRECT on image files.
    pub direct: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// Let other users see the mount (kernel permission checks apply).
    pub allow_other: bool,
    /// Kernel readahead of the mount, in KiB (needs root; None: leave it).
    pub readahead_kb: Option<u32>,
}

/// Mount and serve until the filesystem is unmounted (by `fusermount3 -u`,
/// `umount`, or SIGINT/SIGTERM/SIGHUP, which unmount it). In read-write
/// mode the pending changes are committed before returning.
pub fn run(cfg: &MountConfig) -> Result<(), Box<dyn std::error::Error>> {
    if cfg.rw && cfg.generation.is_some() {
        return Err(
            "--generation serves an old generation read-only; it cannot be combined with --rw"
                .into(),
        );
    }
    match std::fs::metadata(&cfg.mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!("{}: not a directory", cfg.mountpoint.display()).into());
        }
        Err(e) => return Err(format!("{}: {e}", cfg.mountpoint.display()).into()),
    }
    // Signals are taken by one thread with sigwait: block them before any
    // other thread exists (the core's write-behind thread starts at open)
    // so that every thread inherits the mask.
    let sigs = block_signals()?;

    // The block size comes from the superblock (512-byte and 16 KiB
    // filesystems mount without options), for every device form.
    let dev = notafs_tools_common::open_fs_device_with(
        &cfg.device,
        &notafs_tools_common::DeviceOptions {
            read_only: !cfg.rw,
            direct: cfg.direct,
            block_size: None,
        },
    )
    .map_err(|e| e.msg)?;
    let fs = Fs::open(
        dev,
        &OpenOptions {
            read_only: !cfg.rw,
            generation: cfg.generation,
            cache_bytes: cfg.cache_bytes,
            // Flush written data in the background (as `notafs put`), so
            // that the commit at close or fsync finds little left to flush.
            write_behind: cfg.rw.then_some(WRITE_BEHIND_BYTES),
            ..Default::default()
        },
    )
    .map_err(|e| format!("{}: {e}", cfg.device))?;
    if cfg.rw && fs.is_read_only() {
        let why = fs.info().needs_check.map_or_else(
            || "unknown read-only-compatible features".to_string(),
            |w| format!("it needs checking: {w}; run fsck.notafs"),
        );
        return Err(format!(
            "{}: the filesystem can only be opened read-only ({why})",
            cfg.device
        )
        .into());
    }

    let (uid, gid) = ids();
    let opts = FuseOptions {
        uid,
        gid,
        ttl: if cfg.rw {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(60)
        },
        ..Default::default()
    };
    let fuse = NotafsFuse::new(fs.clone(), opts);
    let generation = fuse.generation();

    let mut mo = vec![
        MountOption::FSName(cfg.device.clone()),
        MountOption::Subtype("notafs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    mo.push(if cfg.rw {
        MountOption::RW
    } else {
        MountOption::RO
    });
    let mut config = Config::default();
    config.mount_options = mo;
    config.n_threads = Some(cfg.threads.max(1));
    if cfg.allow_other {
        config.acl = SessionACL::All;
    }

    let mut session = fuser::Session::new(fuse, &cfg.mountpoint, &config)
        .map_err(|e| format!("mount on {}: {e}", cfg.mountpoint.display()))?;
    info!(
        device = %cfg.device,
        mountpoint = %cfg.mountpoint.display(),
        generation,
        rw = cfg.rw,
        "mounted"
    );

    let mut unmounter = session.unmount_callable();
    let mountpoint = cfg.mountpoint.clone();
    let sig_fs = fs.clone();
    let rw = cfg.rw;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Some(sig) = wait_signal(&sigs) else {
                return;
            };
            info!(signal = sig, "unmounting on signal");
            // Commit first: with a file still open the unmount cannot
            // complete, and what was written must not wait for a close
            // that may never come.
            if rw && sig_fs.has_changes() {
                match sig_fs.commit() {
                    Ok(g) => info!(generation = g, "committed on signal"),
                    Err(e) => warn!("commit on signal failed: {e}"),
                }
            }
            if unmounter.unmount().is_ok() && !is_mounted(&mountpoint) {
                // The session ends; run() commits what is left and returns.
                return;
            }
            // Busy: a program holds a file open. Detach the mount (it
            // leaves the namespace at once), commit again in case a write
            // slipped in, and exit: waiting for the last close could take
            // forever.
            lazy_unmount(&mountpoint);
            let code = if rw {
                match sig_fs.commit_if_changed() {
                    Ok(g) => {
                        warn!(
                            generation = g,
                            "{}: files were still open; everything written to them was \
                             committed, the mount is detached and the daemon exits \
                             (their holders get ENOTCONN from now on)",
                            mountpoint.display()
                        );
                        0
                    }
                    Err(e) => {
                        warn!("final commit failed: {e}; the image is as of the last commit");
                        notafs_tools_common::EXIT_OPERATIONAL
                    }
                }
            } else {
                warn!(
                    "{}: files were still open; the mount is detached and the daemon exits",
                    mountpoint.display()
                );
                0
            };
            std::process::exit(code);
        })?;

    if let Some(kb) = cfg.readahead_kb {
        // The kernel offers FUSE only its default readahead (128 KiB) at
        // INIT; as root, raise it through sysfs once the mount serves
        // requests (stat goes through the daemon: not from this thread).
        let mp = cfg.mountpoint.clone();
        thread::Builder::new()
            .name("readahead".into())
            .spawn(move || set_readahead(&mp, kb))?;
    }

    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let committer = if cfg.rw && !cfg.commit_interval.is_zero() {
        let fs = fs.clone();
        let every = cfg.commit_interval;
        Some(
            thread::Builder::new()
                .name("committer".into())
                .spawn(move || loop {
                    match stop_rx.recv_timeout(every) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if fs.has_changes() {
                                match fs.commit() {
                                    Ok(g) => info!(generation = g, "committed (interval)"),
                                    Err(e) => warn!("periodic commit failed: {e}"),
                                }
                            }
                        }
                        _ => return,
                    }
                })?,
        )
    } else {
        None
    };

    let served = session.run();
    drop(stop_tx);
    if let Some(c) = committer {
        let _ = c.join();
    }
    // The session calls destroy (which commits) when it ends; commit again
    // in case the kernel connection went away without a clean end.
    let committed = if cfg.rw && fs.has_changes() {
        fs.commit().map(Some)
    } else {
        Ok(None)
    };
    served.map_err(|e| format!("FUSE session: {e}"))?;
    match committed {
        Ok(Some(g)) => info!(generation = g, "committed at unmount"),
        Ok(None) => {}
        Err(e) => return Err(format!("final commit failed: {e}").into()),
    }
    info!(generation = fs.generation(), "unmounted");
    Ok(())
}

/// Whether `mp` is a mount point of this namespace (from /proc/self/mounts;
/// no FUSE request).
fn is_mounted(mp: &std::path::Path) -> bool {
    let Ok(abs) = std::fs::canonicalize(mp.parent().unwrap_or(mp)) else {
        return false;
    };
    let want = match mp.file_name() {
        Some(n) => abs.join(n),
        None => abs,
    };
    let want = want.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

trait CommitIfChanged {
    fn commit_if_changed(&self) -> notafs_core::Result<u64>;
}

impl CommitIfChanged for Fs {
    fn commit_if_changed(&self) -> notafs_core::Result<u64> {
        if self.has_changes() {
            self.commit()
        } else {
            Ok(self.generation())
        }
    }
}

#[allow(unsafe_code)]
fn ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid cannot fail and touch no memory of ours.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

#[allow(unsafe_code)]
fn block_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it
    // and pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r));
        }
        Ok(set)
    }
}

#[allow(unsafe_code)]
fn wait_signal(set: &libc::sigset_t) -> Option<i32> {
    let mut sig: libc::c_int = 0;
    // SAFETY: both pointers are valid for the call.
    let r = unsafe { libc::sigwait(set, &mut sig) };
    (r == 0).then_some(sig)
}

#[allow(unsafe_code)]
fn lazy_unmount(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: c is a valid NUL-terminated string.
    let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if r != 0 {
        // Not root: let fusermount3 do it.
        let _ = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(path)
            .status();
    }
}

/// Set the readahead of the FUSE mount at `mp` (its BDI is named after the
/// anonymous device number of the mount).
fn set_readahead(mp: &std::path::Path, kb: u32) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(mp) {
        Ok(m) => m.dev(),
        Err(e) => {
            warn!("readahead: stat {}: {e}", mp.display());
            return;
        }
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&path, kb.to_string()) {
        Ok(()) => tracing::debug!(kb, path, "readahead set"),
        Err(e) => tracing::debug!("readahead: {path}: {e} (left at the kernel default)"),
    }
}
