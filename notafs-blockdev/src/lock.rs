//! One writer at a time: the exclusive lock every writable open of an image
//! file takes.
//!
//! The lock is an open file description lock (`F_OFD_SETLK`, as QEMU uses on
//! its images) of type `F_WRLCK` over the whole file, taken without waiting.
//! It belongs to the open file description, so:
//!
//! * it works across processes, and also between two handles of one process
//!   (two `FileDevice`s on the same image conflict, as two processes would);
//! * it is released when the last descriptor of that description is closed,
//!   including when the process dies (SIGKILL, crash): no stale lock files;
//! * descriptors are opened `O_CLOEXEC`, so a child process does not inherit
//!   it.
//!
//! Read-only opens take **no** lock: readers never block a writer (they read
//! a committed generation, which the copy-on-write protocol never overwrites
//! while it is retained).
//!
//! A conflict is reported as [`BlockError::Busy`], naming the holder when it
//! can be found: `F_OFD_GETLK` reports pid -1 for OFD locks, so the holder is
//! looked up in `/proc/*/fdinfo/*` (the `lock:` lines, as `lslocks` does).
//! QEMU (`qemu-nbd`, `qemu-img`, a VM) locks its images the same way, so a
//! notafs writer and a QEMU user of the same image file exclude each other.
//! A lock that no live process holds (a writer killed while its io_uring
//! requests were in flight keeps the file referenced until they complete) is
//! waited for, up to 3 s, instead of being reported at once.
//! Where the filesystem cannot lock (`EINVAL`, `ENOLCK`, `EOPNOTSUPP`: some
//! network filesystems), the open goes ahead unlocked with a warning.
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

use crate::{BlockError, Result};

/// A whole-file write lock description.
fn whole_file_write_lock() -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        // 0 = to the end of the file, however large it grows.
        l_len: 0,
        // Must be 0 for OFD locks.
        l_pid: 0,
    }
}

/// Take the exclusive writer lock on `file` (the image at `path`), without
/// waiting. Taking it again on the same open file description is a no-op.
pub(crate) fn lock_writer(file: &File, path: &Path) -> Result<()> {
    let fl = whole_file_write_lock();
    let start = Instant::now();
    loop {
        match fcntl(file, FcntlArg::F_OFD_SETLK(&fl)) {
            Ok(_) => {
                tracing::debug!(path = %path.display(), "writer lock taken");
                return Ok(());
            }
            Err(Errno::EAGAIN | Errno::EACCES) => {
                let pids = holders(file);
                // A lock no process holds belongs to a writer that just died:
                // the kernel releases it once that writer's last requests
                // (io_uring ones complete after the process is gone) let go of
                // the file. Wait for that, briefly; a live holder is reported
                // at once.
                if pids.is_empty() && start.elapsed() < DEAD_HOLDER_WAIT {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                return Err(BlockError::Busy {
                    device: path.display().to_string(),
                    holder: describe_holder(&pids),
                });
            }
            Err(e) => return lock_error(e, path),
        }
    }
}

/// How long a lock held by no visible process is waited for (see
/// [`lock_writer`]); then it is reported as held by "another process".
const DEAD_HOLDER_WAIT: Duration = Duration::from_secs(3);

fn lock_error(e: Errno, path: &Path) -> Result<()> {
    match e {
        Errno::EINVAL | Errno::ENOLCK | Errno::EOPNOTSUPP | Errno::ENOSYS => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "the filesystem cannot lock this image; opening it writable without the \
                 one-writer lock"
            );
            Ok(())
        }
        e => Err(BlockError::io("lock", io::Error::from(e))),
    }
}

/// The processes holding a lock on `file`, as far as they can be seen.
fn holders(file: &File) -> Vec<u32> {
    let mut fl = whole_file_write_lock();
    // POSIX (F_SETLK) holders are reported with their pid; OFD holders as -1.
    if fcntl(file, FcntlArg::F_OFD_GETLK(&mut fl)).is_ok()
        && fl.l_type != libc::F_UNLCK as libc::c_short
        && fl.l_pid > 0
    {
        return vec![fl.l_pid as u32];
    }
    match file.metadata() {
        Ok(meta) => lock_holders(meta.dev(), meta.ino()),
        Err(_) => Vec::new(),
    }
}

/// "another writer (pid 1234, notafs-fuse)", or "another writer (another
/// process)" when the holder cannot be seen.
fn describe_holder(pids: &[u32]) -> String {
    let me = std::process::id();
    let who: Vec<String> = pids
        .iter()
        .take(4)
        .map(|&pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            match (pid == me, comm.is_empty()) {
                (true, _) => format!("pid {pid}, this process"),
                (false, true) => format!("pid {pid}"),
                (false, false) => format!("pid {pid}, {comm}"),
            }
        })
        .collect();
    if who.is_empty() {
        "another writer (another process)".to_string()
    } else {
        format!("another writer ({})", who.join("; "))
    }
}

/// Bounds the /proc scan on the error path (processes × descriptors).
const MAX_FDINFO_FILES: usize = 200_000;

/// Pids whose open files hold a lock on the inode (`dev`, `ino`),
/// found in the `lock:` lines of `/proc/PID/fdinfo/FD`. Only processes we may
/// inspect are seen (all of them as root); empty if /proc is unavailable.
fn lock_holders(dev: u64, ino: u64) -> Vec<u32> {
    // The kernel prints the inode as "%02x:%02x:%lu" (major, minor, number).
    let key = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    let mut found = Vec::new();
    let mut budget = MAX_FDINFO_FILES;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            if budget == 0 {
                return found;
            }
            budget -= 1;
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            // Any lock on the inode conflicts with our whole-file write
            // lock (QEMU, for one, holds read locks on single bytes).
            let holds = info
                .lines()
                .any(|l| l.starts_with("lock:") && l.split_whitespace().any(|w| w == key));
            if holds {
                found.push(pid);
                break;
            }
        }
    }
    found
}
