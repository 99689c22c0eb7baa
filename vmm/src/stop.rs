//! A stop flag that vCPU threads check and can sleep on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Set once to stop a VM's vCPUs; pauses wait on it so a stop cuts them
/// short.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopped: Arc<AtomicBool>,
    lock: Mutex<()>,
    wake: Condvar,
}

impl StopSignal {
    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The flag itself, for code that checks it on its own (a lock wait
    /// interrupted by the stop kick).
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stopped)
    }

    /// Requests the stop and wakes every pause.
    pub fn stop(&self) {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_all();
    }

    /// Waits until a stop is requested.
    pub fn wait(&self) {
        let guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let _guard = self
            .wake
            .wait_while(guard, |()| !self.is_stopped())
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Sleeps for `duration` unless a stop comes first. Returns whether
    /// the VM is stopping.
    pub fn pause(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.is_stopped() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self
                .wake
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn pause_runs_its_course_without_a_stop() {
        let s = StopSignal::default();
        let start = Instant::now();
        assert!(!s.pause(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn stop_cuts_a_pause_short() {
        let s = Arc::new(StopSignal::default());
        let s2 = Arc::clone(&s);
        let t = std::thread::spawn(move || s2.pause(Duration::from_secs(60)));
        s.stop();
        assert!(t.join().unwrap());
        assert!(s.pause(Duration::from_secs(60)), "stays stopped");
    }
}
