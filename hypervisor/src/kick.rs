//! Kicking a vCPU thread out of [`crate::Vcpu::run`].
//!
//! # Contract
//!
//! * [`VcpuKicker::kick`] marks a kick as pending on the vCPU and, if a thread
//!   is bound to the vCPU, sends it the real-time signal [`kick_signal`]
//!   (`SIGRTMIN`) with `pthread_kill`.
//! * The thread that calls [`crate::Vcpu::run`] becomes the vCPU's bound
//!   thread (each call re-binds, so a vCPU may move between threads). The
//!   binding ends when the vCPU is dropped or when that thread exits,
//!   whichever comes first, so a kick never signals a dead thread. A kick
//!   made before any thread is bound is remembered and taken by the next
//!   run.
//! * The signal handler (installed once per process, `SA_SIGINFO` without
//!   `SA_RESTART`) sets `immediate_exit = 1` in the `kvm_run` of the vCPU
//!   that the interrupted thread is running at that moment. A kick that
//!   lands just before `KVM_RUN` is therefore not lost; one that lands while
//!   the thread is outside `run()` is caught by the pending flag.
//! * Effect: after `kick()` has returned, the vCPU's current or next
//!   [`crate::Vcpu::run`] made with the immediate-exit flag **off** returns
//!   [`crate::VmExit::Interrupted`], and that clears the pending kick. Runs
//!   made with the flag on (for instance the SNP lease-release run) return
//!   `Interrupted` anyway and leave the kick pending for the next ordinary
//!   run. Several kicks before that run are merged into one. The usual
//!   pattern is: set your own "pause"/"stop" flag, then `kick()`; the vCPU
//!   loop checks that flag whenever `run()` returns `Interrupted`.
//! * Side effect: the signal also interrupts a blocking system call the
//!   bound thread happens to be in (no `SA_RESTART`), which then fails with
//!   `EINTR`. Code running on vCPU threads must retry or give up on `EINTR`.
//! * Never block [`kick_signal`] on vCPU threads. `SIGRTMIN + 1` and
//!   `SIGRTMIN + 2` are not used here (another crate owns them).

use std::cell::RefCell;
use std::fmt;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use libc::{c_int, c_void, pthread_t, siginfo_t};
use vmm_sys_util::errno::Error as Errno;

use crate::HypervisorError;

/// The signal [`VcpuKicker::kick`] sends: `SIGRTMIN`.
pub fn kick_signal() -> c_int {
    libc::SIGRTMIN()
}

/// State shared between a vCPU and its kickers.
#[derive(Debug, Default)]
struct KickState {
    pending: AtomicBool,
    thread: Mutex<Option<pthread_t>>,
}

impl KickState {
    fn thread(&self) -> MutexGuard<'_, Option<pthread_t>> {
        // A poisoned lock only means a panic elsewhere; the Option is intact.
        self.thread.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A cloneable, thread-safe handle that stops a vCPU promptly; see the
/// [module documentation](self) for the contract.
#[derive(Clone)]
pub struct VcpuKicker {
    state: Arc<KickState>,
}

impl fmt::Debug for VcpuKicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VcpuKicker")
            .field("pending", &self.is_pending())
            .field("thread_bound", &self.state.thread().is_some())
            .finish()
    }
}

impl VcpuKicker {
    /// Makes the vCPU's current or next ordinary run return
    /// [`crate::VmExit::Interrupted`].
    ///
    /// Fails only if `pthread_kill` reports an error (its positive return
    /// value is checked); the kick stays pending in that case.
    pub fn kick(&self) -> Result<(), HypervisorError> {
        self.state.pending.store(true, Ordering::SeqCst);
        let thread = self.state.thread();
        let handler_installed = HANDLER.get().is_some_and(|r| r.is_ok());
        if let (Some(tid), true) = (*thread, handler_installed) {
            // SAFETY: `tid` is a live thread: a binding is removed, under the
            // lock held here, when the vCPU is dropped and by a thread-local
            // destructor that runs on the bound thread before it exits. The
            // handler for the signal is installed (checked above), so the
            // signal cannot kill the process.
            let ret = unsafe { libc::pthread_kill(tid, kick_signal()) };
            if ret != 0 {
                return Err(HypervisorError::Kick(Errno::new(ret)));
            }
        }
        Ok(())
    }

    /// Whether a kick is waiting to be reported by a run.
    pub fn is_pending(&self) -> bool {
        self.state.pending.load(Ordering::SeqCst)
    }
}

/// The vCPU's side of the kick state, owned by a backend vCPU.
#[derive(Debug)]
pub(crate) struct KickTarget {
    state: Arc<KickState>,
    bound: Option<pthread_t>,
}

impl KickTarget {
    /// Installs the signal handler (once per process) and creates the state.
    pub(crate) fn new() -> Result<Self, HypervisorError> {
        install_handler()?;
        Ok(Self {
            state: Arc::default(),
            bound: None,
        })
    }

    /// A new kicker for this vCPU.
    pub(crate) fn kicker(&self) -> VcpuKicker {
        VcpuKicker {
            state: Arc::clone(&self.state),
        }
    }

    /// Makes the calling thread the target of kicks.
    pub(crate) fn bind_current_thread(&mut self) {
        // SAFETY: pthread_self has no preconditions and cannot fail.
        let me = unsafe { libc::pthread_self() };
        if self.bound == Some(me) {
            return;
        }
        *self.state.thread() = Some(me);
        self.bound = Some(me);
        let weak = Arc::downgrade(&self.state);
        // If the thread is already tearing down its locals there is nothing
        // to register; the binding is then removed when the vCPU is dropped.
        let _ = BINDINGS.try_with(|b| {
            let mut list = b.0.borrow_mut();
            list.retain(|w| w.strong_count() > 0);
            if !list.iter().any(|w| Weak::ptr_eq(w, &weak)) {
                list.push(weak);
            }
        });
    }

    /// The immediate-exit value the next run must use.
    pub(crate) fn immediate_exit_for_run(&self, user_flag: bool) -> bool {
        user_flag || self.state.pending.load(Ordering::SeqCst)
    }

    /// Records that a run returned `Interrupted`; an ordinary run (flag off)
    /// reports, and so clears, a pending kick.
    pub(crate) fn interrupted(&self, user_flag: bool) {
        if !user_flag {
            self.state.pending.store(false, Ordering::SeqCst);
        }
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        *self.state.thread() = None;
    }
}

/// Kick states bound to the current thread, unbound when the thread exits.
struct ThreadBindings(RefCell<Vec<Weak<KickState>>>);

impl Drop for ThreadBindings {
    fn drop(&mut self) {
        // SAFETY: pthread_self has no preconditions and cannot fail.
        let me = unsafe { libc::pthread_self() };
        for state in self.0.borrow().iter().filter_map(Weak::upgrade) {
            let mut thread = state.thread();
            if *thread == Some(me) {
                *thread = None;
            }
        }
    }
}

thread_local! {
    static BINDINGS: ThreadBindings = const { ThreadBindings(RefCell::new(Vec::new())) };
    /// The `immediate_exit` byte of the `kvm_run` this thread is running, or
    /// null. Read by the signal handler: a const-initialised atomic without a
    /// destructor, so accessing it is async-signal-safe.
    static IMMEDIATE_EXIT: AtomicPtr<u8> = const { AtomicPtr::new(ptr::null_mut()) };
}

static HANDLER: OnceLock<Result<(), Errno>> = OnceLock::new();

fn install_handler() -> Result<(), HypervisorError> {
    HANDLER
        .get_or_init(|| {
            // register_signal_handler uses SA_SIGINFO only (no SA_RESTART),
            // so KVM_RUN and blocking calls return EINTR.
            vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        })
        .map_err(HypervisorError::KickHandler)
}

extern "C" fn on_kick(_num: c_int, _info: *mut siginfo_t, _ctx: *mut c_void) {
    let _ = IMMEDIATE_EXIT.try_with(|slot| {
        let p = slot.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: `p` was registered by a `RunSection` on this very
            // thread and points at the `immediate_exit` byte of a `kvm_run`
            // mapping; the section (and so the registration) ends before the
            // run borrowing that mapping returns. A byte store is
            // async-signal-safe.
            unsafe { ptr::write_volatile(p, 1) };
        }
    });
}

/// Registers the current thread's `immediate_exit` byte for the kick
/// handler for as long as the value lives.
pub(crate) struct RunSection(());

impl RunSection {
    /// Starts a section.
    ///
    /// # Safety
    ///
    /// `immediate_exit` must stay valid for writes until the section is
    /// dropped, and the section must be dropped on the thread that made it.
    pub(crate) unsafe fn enter(immediate_exit: *mut u8) -> Self {
        IMMEDIATE_EXIT.with(|slot| slot.store(immediate_exit, Ordering::SeqCst));
        Self(())
    }
}

impl Drop for RunSection {
    fn drop(&mut self) {
        let _ = IMMEDIATE_EXIT.try_with(|slot| slot.store(ptr::null_mut(), Ordering::SeqCst));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kick_before_binding_stays_pending() {
        let target = KickTarget::new().unwrap();
        let kicker = target.kicker();
        kicker.kick().unwrap();
        assert!(kicker.is_pending());
        assert!(target.immediate_exit_for_run(false));
        // A run with the flag on leaves the kick pending ...
        target.interrupted(true);
        assert!(kicker.is_pending());
        // ... an ordinary run reports it.
        target.interrupted(false);
        assert!(!kicker.is_pending());
        assert!(!target.immediate_exit_for_run(false));
    }

    #[test]
    fn kick_signals_the_bound_thread_and_handler_sets_the_flag() {
        let mut target = KickTarget::new().unwrap();
        target.bind_current_thread();
        let mut flag: u8 = 0;
        {
            // SAFETY: `flag` outlives the section, which ends on this thread.
            let _section = unsafe { RunSection::enter(&mut flag) };
            // Signal to self: the handler runs before pthread_kill returns.
            target.kicker().kick().unwrap();
        }
        // SAFETY: reading a local the handler may have written.
        assert_eq!(unsafe { ptr::read_volatile(&flag) }, 1);
    }

    #[test]
    fn thread_exit_unbinds() {
        let target = std::thread::spawn(|| {
            let mut t = KickTarget::new().unwrap();
            t.bind_current_thread();
            t
        })
        .join()
        .unwrap();
        assert!(target.state.thread().is_none());
        // Kicking after the thread is gone must not signal anything.
        target.kicker().kick().unwrap();
        assert!(target.kicker().is_pending());
    }

    #[test]
    fn drop_unbinds() {
        let mut target = KickTarget::new().unwrap();
        target.bind_current_thread();
        let kicker = target.kicker();
        drop(target);
        assert!(kicker.state.thread().is_none());
        kicker.kick().unwrap();
    }

    #[test]
    fn signal_is_sigrtmin() {
        assert_eq!(kick_signal(), libc::SIGRTMIN());
    }
}
