//! Worker threads that run calls under a timeout, and the backoff that stops calling a service that does not answer.
//!
//! Nothing here calls PKCS#11: a job is any closure, a failure any message.
//! Which outcomes mean "not answering" is the caller's to say (only the log
//! lines name the backing HSM, the one service these workers serve).

use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A call to run on a worker.
type Job = Box<dyn FnOnce() + Send>;

/// Worker threads that make the calls, so a caller can stop waiting for one
/// that hangs (`[backend] call_timeout_ms`). A worker stuck in a call stays
/// with it; the next callers get other workers.
#[derive(Default)]
pub(super) struct Workers {
    state: Mutex<Queue>,
    wake: Condvar,
    /// Told when the last running job ends with none queued (`settle`).
    settled: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: std::collections::VecDeque<Job>,
    idle: usize,
    /// Jobs a worker is running now, their callers waiting or not.
    running: usize,
    closed: bool,
    /// Every worker started, to join at `close`.
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// How a call handed to the workers ended for the caller.
pub(super) enum Waited<T> {
    Done(T),
    /// No worker could be started for it: it never ran.
    NotStarted(std::io::Error),
    /// Not done within the timeout: its worker keeps it, and drops its result.
    TimedOut,
    /// It ended without a result (it panicked).
    Lost,
}

/// A job handed to a worker, its result not yet waited for.
pub(super) struct Pending<T> {
    rx: std::sync::mpsc::Receiver<T>,
    started: std::io::Result<()>,
    since: Instant,
}

impl<T> Pending<T> {
    /// When the job was handed over.
    pub(super) fn since(&self) -> Instant {
        self.since
    }

    /// Waits for the result until `timeout` after the job was handed over.
    pub(super) fn wait(self, timeout: Duration) -> Waited<T> {
        if let Err(e) = self.started {
            return Waited::NotStarted(e);
        }
        let left = timeout.saturating_sub(self.since.elapsed());
        match self.rx.recv_timeout(left) {
            Ok(out) => Waited::Done(out),
            Err(RecvTimeoutError::Timeout) => Waited::TimedOut,
            Err(RecvTimeoutError::Disconnected) => Waited::Lost,
        }
    }
}

impl Workers {
    /// Hands `job` to a worker and returns at once: its result is waited
    /// for with [`Pending::wait`] (the caller does other work meanwhile).
    pub(super) fn start<T: Send + 'static>(
        self: &Arc<Self>,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = sync_channel(1);
        let started = self.run(Box::new(move || {
            // A caller that gave up is gone: the result (secrets included)
            // is dropped, and wiped, here.
            let _ = tx.send(job());
        }));
        Pending {
            rx,
            started,
            since: Instant::now(),
        }
    }

    fn run(self: &Arc<Self>, job: Job) -> std::io::Result<()> {
        let mut q = self.state.lock().unwrap_or_else(|e| e.into_inner());
        q.jobs.push_back(job);
        if q.idle >= q.jobs.len() {
            self.wake.notify_one();
            return Ok(());
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("p11derive-hsm".into())
            .spawn(move || me.serve());
        match spawned {
            Ok(t) => {
                q.threads.push(t);
                Ok(())
            }
            Err(e) => {
                // Take the job back: nobody will run it.
                q.jobs.pop_back();
                Err(e)
            }
        }
    }

    fn serve(&self) {
        let mut q = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = q.jobs.pop_front() {
                q.running += 1;
                drop(q);
                // A job that panics still ends here (its result is lost).
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                q = self.state.lock().unwrap_or_else(|e| e.into_inner());
                q.running -= 1;
                if q.running == 0 && q.jobs.is_empty() {
                    self.settled.notify_all();
                }
                continue;
            }
            if q.closed {
                return;
            }
            q.idle += 1;
            q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            q.idle -= 1;
        }
    }

    /// Waits until no job is queued or running, at most until `deadline`;
    /// says whether they all ended. A job whose caller stopped waiting (it
    /// timed out, or dropped its `Pending`) is still running until it ends:
    /// the module must not be finalized under it (PKCS#11 leaves a call
    /// that overlaps `C_Finalize` undefined, and a module may free what
    /// the call still uses).
    pub(super) fn settle(&self, deadline: Instant) -> bool {
        let mut q = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if q.running == 0 && q.jobs.is_empty() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = self
                .settled
                .wait_timeout(q, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// How many jobs are queued or running now.
    pub(super) fn busy(&self) -> usize {
        let q = self.state.lock().unwrap_or_else(|e| e.into_inner());
        q.running + q.jobs.len()
    }

    /// Ends the workers and waits for them: the application may unload the
    /// library right after `C_Finalize`, and no thread may still be running
    /// its code then. A worker stuck in a hung call for longer than `grace`
    /// is left behind (it cannot be stopped).
    pub(super) fn close(&self, grace: Duration) {
        let threads = {
            let mut q = self.state.lock().unwrap_or_else(|e| e.into_inner());
            q.closed = true;
            std::mem::take(&mut q.threads)
        };
        self.wake.notify_all();
        let deadline = Instant::now() + grace;
        for t in threads {
            if t.thread().id() == std::thread::current().id() {
                continue;
            }
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                crate::log::warn("backing HSM: a call still has not returned; its thread is left");
            }
        }
    }
}

/// Whether the service is answering: after a failure that says it is not
/// (a timeout, a device error and the like), calls fail at once until a
/// backoff delay has passed; then one call tries it, and the delay doubles
/// (up to a maximum) while it keeps failing.
#[derive(Default)]
struct Health {
    failures: u32,
    retry_at: Option<Instant>,
    probing: bool,
    last_error: String,
}

const BACKOFF_FIRST_MS: u64 = 100;

/// The backoff state of one service, shared by its callers.
pub(super) struct Backoff {
    health: Mutex<Health>,
    max: Duration,
}

/// A call not let through during the backoff delay.
pub(super) struct Refused {
    /// The failure that started or continued the backoff.
    pub(super) last_error: String,
    /// Until the next call may try.
    pub(super) wait: Duration,
}

/// A failure counted by `Backoff::failed`.
pub(super) struct Failure {
    /// Failures in a row, this one included.
    pub(super) in_a_row: u32,
    /// Until the next call may try.
    pub(super) delay: Duration,
}

impl Backoff {
    /// Delays start at 100 ms and double up to `max`.
    pub(super) fn new(max: Duration) -> Self {
        Backoff {
            health: Mutex::new(Health::default()),
            max,
        }
    }

    /// Lets a call through, unless the delay has not passed or another call
    /// is already trying the service; once the delay has passed, the call let
    /// through is that one try. Each call let through ends with `failed` or
    /// `answered`.
    pub(super) fn admit(&self) -> Result<(), Refused> {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = h.retry_at {
            let now = Instant::now();
            if now < at || h.probing {
                return Err(Refused {
                    last_error: h.last_error.clone(),
                    wait: at.saturating_duration_since(now),
                });
            }
            h.probing = true;
        }
        Ok(())
    }

    /// The call let through found the service not answering (`error` says
    /// how): the next calls wait for a delay doubled with each failure.
    pub(super) fn failed(&self, error: String) -> Failure {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.probing = false;
        h.failures = h.failures.saturating_add(1);
        let delay =
            Duration::from_millis(BACKOFF_FIRST_MS.saturating_mul(1 << (h.failures - 1).min(16)))
                .min(self.max);
        h.retry_at = Some(Instant::now() + delay);
        h.last_error = error;
        Failure {
            in_a_row: h.failures,
            delay,
        }
    }

    /// The call let through got an answer (success or refusal): the backoff
    /// ends. Returns how many failures in a row it ends (0: none).
    pub(super) fn answered(&self) -> u32 {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let failures = h.failures;
        *h = Health::default();
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_waits_for_a_job_whose_caller_stopped_waiting() {
        let w = Arc::new(Workers::default());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        drop(w.start(move || {
            std::thread::sleep(Duration::from_millis(150));
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }));
        assert_eq!(w.busy(), 1);
        assert!(
            !w.settle(Instant::now() + Duration::from_millis(20)),
            "settled while the job ran"
        );
        assert!(w.settle(Instant::now() + Duration::from_secs(5)));
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(w.busy(), 0);
        w.close(Duration::from_secs(1));
    }

    #[test]
    fn a_job_that_panics_ends_and_its_worker_serves_on() {
        let w = Arc::new(Workers::default());
        let lost = w.start(|| -> u32 { panic!("a job that panics") });
        assert!(matches!(lost.wait(Duration::from_secs(5)), Waited::Lost));
        assert!(w.settle(Instant::now() + Duration::from_secs(5)));
        match w.start(|| 7u32).wait(Duration::from_secs(5)) {
            Waited::Done(v) => assert_eq!(v, 7),
            _ => panic!("the next job did not run"),
        }
        w.close(Duration::from_secs(1));
    }
}
