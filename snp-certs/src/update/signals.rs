//! Deferring termination signals while a file is half-written.
//!
//! [`Deferred::block`] blocks `SIGINT`, `SIGTERM`, `SIGHUP` and `SIGQUIT`
//! on the calling thread; dropping the guard restores the previous mask,
//! and a signal that arrived meanwhile is delivered then. In a
//! single-threaded tool this keeps Ctrl-C or a `kill` from interrupting a
//! rewrite between truncating and restoring. In a multi-threaded program a
//! process-directed signal may still be delivered to another thread; such
//! programs should block these signals in every thread or handle them.

/// The signals deferred during a rewrite.
const DEFERRED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Termination signals blocked on this thread until dropped.
pub(super) struct Deferred {
    old: Option<libc::sigset_t>,
}

impl Deferred {
    /// Blocks the signals. If that fails (it cannot, with valid
    /// arguments), the rewrite goes ahead without deferring them.
    pub(super) fn block() -> Deferred {
        // SAFETY: both sets are initialised (sigemptyset) before use and
        // outlive the calls; pthread_sigmask only changes this thread's
        // mask and writes the previous mask into `old`.
        let old = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in DEFERRED {
                libc::sigaddset(&mut set, signal);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut old);
            (libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) == 0).then_some(old)
        };
        Deferred { old }
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            // SAFETY: `old` is the mask pthread_sigmask returned on this
            // thread; restoring it is always valid.
            unsafe {
                libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
            }
        }
    }
}
