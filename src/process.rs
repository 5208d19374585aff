//! Process-wide state that survives `fork()` safely.
//!
//! A child of a multi-threaded parent inherits every lock in whatever state it
//! was at the moment of the fork: a lock some other parent thread held stays
//! held forever in the child. So each process-wide lock of p11derive lives in a
//! [`PerProcess`] cell: the first use in a child (detected by a fork
//! generation bumped in a `pthread_atfork` child handler) installs a fresh
//! value and abandons the parent's copy, which is leaked on purpose — its
//! state is unknown and it may still be "locked".

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Once;

static FORKS: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    FORKS.fetch_add(1, Ordering::SeqCst);
}

/// Registers the fork handler (once per process image).
pub fn watch_forks() {
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only bumps an atomic counter.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

/// How many forks separate this process from the one that loaded p11derive.
pub fn generation() -> u64 {
    FORKS.load(Ordering::SeqCst)
}

struct Slot<T> {
    generation: u64,
    value: T,
}

/// A lazily created value, created again in each forked child.
///
/// Shared between threads only when the value may be: a `static` of a type
/// that is not `Send + Sync` does not compile.
///
/// ```compile_fail
/// static LOST: p11derive::process::PerProcess<std::cell::Cell<u32>> =
///     p11derive::process::PerProcess::new(|| std::cell::Cell::new(0));
/// ```
pub struct PerProcess<T: 'static> {
    slot: AtomicPtr<Slot<T>>,
    init: fn() -> T,
}

// SAFETY: the cell hands out `&'static T` to every thread (so `T: Sync`) and
// its value may be created on one thread and used on another (`T: Send`).
// This impl replaces the automatic one, which `AtomicPtr` would grant for any
// `T`.
unsafe impl<T: Send + Sync> Sync for PerProcess<T> {}

impl<T: 'static> PerProcess<T> {
    pub const fn new(init: fn() -> T) -> Self {
        PerProcess {
            slot: AtomicPtr::new(std::ptr::null_mut()),
            init,
        }
    }

    /// This process's value.
    pub fn get(&self) -> &'static T {
        let generation = generation();
        loop {
            let current = self.slot.load(Ordering::Acquire);
            // SAFETY: slots are never freed once published, so a non-null
            // pointer stays valid for the life of the process.
            if let Some(slot) = unsafe { current.as_ref() } {
                if slot.generation == generation {
                    return &slot.value;
                }
            }
            let fresh = Box::into_raw(Box::new(Slot {
                generation,
                value: (self.init)(),
            }));
            match self
                .slot
                .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                // The replaced slot (if any) belonged to the parent: leaked.
                // SAFETY: `fresh` was just published and is never freed.
                Ok(_) => return unsafe { &(*fresh).value },
                Err(_) => {
                    // Another thread installed one first; use that.
                    // SAFETY: `fresh` was never published.
                    drop(unsafe { Box::from_raw(fresh) });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static CELL: PerProcess<Mutex<u32>> = PerProcess::new(|| Mutex::new(7));

    #[test]
    fn a_child_gets_a_fresh_value_even_if_the_parent_holds_the_lock() {
        watch_forks();
        *CELL.get().lock().unwrap() = 8;
        let held = CELL.get().lock().unwrap();
        // SAFETY: the child only touches the cell and then _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = CELL.get().try_lock().map(|v| *v == 7).unwrap_or(false);
            // SAFETY: leave the child at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        drop(held);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the child saw the parent's locked cell"
        );
        assert_eq!(*CELL.get().lock().unwrap(), 8, "the parent keeps its value");
    }
}
