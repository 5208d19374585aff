//! The per-process throttle of failed logins: a delay that doubles with each failure in a row.
//!
//! Without it a program that loads the provider could try 714 PINs a second.
//! Every `C_Login` that reaches the backing HSM takes this process's one
//! attempt turn (`Attempt`), and a failure keeps the turn while it sleeps,
//! so guesses from other threads queue behind the delay instead of running
//! beside it. Neither the login lock (`login.change`, taken by logout and by
//! closing the last session) nor any lock signing needs is held during the
//! sleep: sessions already logged in keep working.
//!
//! The count is a plain atomic, not per provider: `C_Finalize` and
//! `C_Initialize` do not reset it, and a forked child inherits it. It is per
//! process only: another process starts at zero, and a program holding the
//! backing module can call the backing HSM directly (README, "Failed logins").

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::log;
use crate::process::PerProcess;

/// Failures in a row answered at once: a mistyped PIN, or a conformance
/// suite's wrong-PIN check, costs nothing.
pub const FREE_FAILURES: u32 = 1;
/// The delay after the first failure past the free ones; it doubles at each
/// further failure in a row.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay: at most one guess per 5 s (17,280 a day) once reached.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Failed logins in a row through this process (reset by a successful one).
static FAILURES: AtomicU32 = AtomicU32::new(0);

/// One login attempt at a time in this process (recreated in a forked child,
/// which must not inherit a turn held by a parent thread).
static TURN: PerProcess<Mutex<()>> = PerProcess::new(|| Mutex::new(()));

/// How long the `failures`-th failure in a row waits before it is answered.
pub fn delay_after(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// This process's turn to try a login; dropping it ends the turn.
pub(super) struct Attempt {
    _turn: MutexGuard<'static, ()>,
}

/// Waits for this process's turn to try a login.
pub(super) fn attempt() -> Attempt {
    Attempt {
        _turn: TURN.get().lock().unwrap_or_else(|e| e.into_inner()),
    }
}

impl Attempt {
    /// The backing HSM accepted the PIN: the count starts again.
    pub fn succeeded(self) {
        let before = FAILURES.swap(0, Ordering::SeqCst);
        if before > FREE_FAILURES {
            log::info(&format!(
                "login: succeeded after {before} failed logins in a row; the login throttle is \
                 reset"
            ));
        }
    }

    /// The backing HSM refused the login: counts it and, past the free
    /// failures, sleeps (still holding the turn) before the caller answers.
    /// `who` is "user" or "security officer"; the PIN is never logged.
    pub fn failed(self, who: &str) {
        let previous = FAILURES
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_add(1))
            })
            .unwrap_or(u32::MAX);
        let n = previous.saturating_add(1);
        let delay = delay_after(n);
        if delay.is_zero() {
            return;
        }
        log::warn(&format!(
            "login: {n} failed logins in a row through this process (this one as {who}); \
             answering after {} ms (the delay doubles with each further failure, to at most \
             {} ms; a successful login resets it). Check the PIN the application uses, or look \
             for someone guessing it",
            delay.as_millis(),
            MAX_DELAY.as_millis()
        ));
        std::thread::sleep(delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_is_free_then_doubles_to_the_cap() {
        let ms = |n| delay_after(n).as_millis();
        assert_eq!(
            (1..=9).map(ms).collect::<Vec<_>>(),
            [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000]
        );
        assert_eq!(ms(0), 0);
        assert_eq!(ms(u32::MAX), 5000);
    }
}
