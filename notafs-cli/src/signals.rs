//! Remove `notafs get`'s temporary file when the program is interrupted
//! (SIGINT, SIGTERM, SIGHUP), so that no partial file is left behind even
//! then; the program then dies of the signal as it would have.
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The temporary to unlink, as a C string leaked for the process's life
/// (the handler may read it at any moment, so it is never freed).
static TEMP: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(sig: libc::c_int) {
    let p = TEMP.swap(std::ptr::null_mut(), Ordering::SeqCst);
    // SAFETY: unlink(2), signal(2) and raise(3) are async-signal-safe; `p`
    // is null or a leaked, NUL-terminated C string.
    unsafe {
        if !p.is_null() {
            libc::unlink(p);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Unlink `path` if a terminating signal arrives before [`forget_temp`].
pub(crate) fn remove_on_signal(path: &Path) {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    TEMP.store(c.into_raw(), Ordering::SeqCst);
    for s in SIGNALS {
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe {
            libc::signal(
                s,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

/// The temporary is gone (renamed or removed): a signal no longer unlinks it.
pub(crate) fn forget_temp() {
    TEMP.store(std::ptr::null_mut(), Ordering::SeqCst);
}

/// The terminating signals held back while it lives: a signal that arrives
/// between creating the temporary and [`remove_on_signal`] is delivered when
/// the guard drops, with the handler in place, so the temporary still goes.
pub(crate) struct Deferred(libc::sigset_t);

impl Deferred {
    pub(crate) fn new() -> Deferred {
        // SAFETY: sigemptyset/sigaddset fill a sigset_t we own;
        // pthread_sigmask only changes this thread's signal mask and writes
        // the previous mask into `old`, which we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in SIGNALS {
                libc::sigaddset(&mut set, s);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            Deferred(old)
        }
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new` for this thread.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}
