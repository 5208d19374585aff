//! The backing HSM as p11derive uses it: `Backend`, whose calls run on workers under a timeout and a backoff.
//!
//! The backing HSM is a second PKCS#11 module, loaded from the config, that
//! holds the root secret. p11derive asks it for exactly two things on the hot
//! path: the PRF (`CKM_SHA256_HMAC` under the root) and random bytes. Logins
//! pass through to it, so authentication is the HSM's own.
//!
//! No lock is held while the HSM works: sessions come from a small pool taken
//! and returned under a short lock, and the HSM module itself is initialized
//! with `CKF_OS_LOCKING_OK`, so it serializes what it must.
//!
//! `module` loads the module and wraps each backing call (all of the
//! backend's `unsafe` is there); `core` holds the token's sessions, login and
//! recovery; `root` the root, the rollback anchor and the PRF; `workers` the
//! timeout threads and the backoff, which know nothing of PKCS#11.

mod core;
// The one file of the backend that calls into the backing module.
#[allow(unsafe_code)]
mod module;
mod root;
mod workers;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::ck as sys;

use self::core::Core;
use self::module::{last_failure, set_last_failure};
use self::workers::{Backoff, Pending, Waited, Workers};
use crate::audit::Anchor;
use crate::config::BackendSection;
use crate::error::{rv_name, Error, Result};
use crate::secure::SecretBytes;
use crate::types::{Prf, Secret32};

/// Calls made into the backing module by this process (for the statistics
/// the provider logs at C_Finalize).
pub static HSM_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Of those, the calls made while moving the rollback anchor.
pub static ANCHOR_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// Set while this thread moves the rollback anchor (see `anchoring`).
    static ANCHORING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the process is running its exit handlers: backing calls are
/// no longer made (the module may already be torn down).
pub fn exiting() -> bool {
    module::exiting()
}

/// Runs `f` with its backing HSM calls counted as the anchor's as well.
pub fn anchoring<T>(f: impl FnOnce() -> T) -> T {
    ANCHORING.with(|a| a.set(true));
    let out = f();
    ANCHORING.with(|a| a.set(false));
    out
}

/// What the backing token says of itself, for the provider's token info.
#[derive(Debug, Clone)]
pub struct BackingTokenInfo {
    pub serial: String,
    pub min_pin_len: u64,
    pub max_pin_len: u64,
    pub flags: u64,
}

/// Whether a backing call's failure shows the HSM not answering (a refused
/// operation, such as a token-object write SoftHSM fails while another
/// process writes its files, is an answer).
fn not_answering(rv: sys::CK_RV) -> bool {
    matches!(
        rv,
        sys::CKR_DEVICE_ERROR
            | sys::CKR_DEVICE_REMOVED
            | sys::CKR_DEVICE_MEMORY
            | sys::CKR_TOKEN_NOT_PRESENT
            | sys::CKR_TOKEN_NOT_RECOGNIZED
            | sys::CKR_CRYPTOKI_NOT_INITIALIZED
    )
}

/// The backing HSM, reached through a second PKCS#11 module: every call
/// after `open` runs on a worker thread and is waited for at most
/// `call_timeout_ms` (`open` itself — loading the module, `C_Initialize`,
/// finding the token — runs on the caller's thread, without that limit);
/// while the HSM fails, calls fail at once with `CKR_DEVICE_ERROR` (backoff);
/// lost sessions and logins are recovered (see `Core::recover`).
pub struct Backend {
    calls: Calls,
}

/// How calls reach the backing HSM: its module, the workers, the backoff
/// and the call timeout (shared by the backend and its `AnchorWatch`).
#[derive(Clone)]
struct Calls {
    core: Arc<Core>,
    workers: Arc<Workers>,
    backoff: Arc<Backoff>,
    timeout: std::time::Duration,
}

impl Backend {
    /// Loads the module, initializes it and finds the backing token by label.
    /// `config_file` is only used in messages.
    pub fn open(cfg: &BackendSection, config_file: &Path) -> Result<Backend> {
        let calls = Calls {
            core: Arc::new(Core::open(cfg, config_file)?),
            workers: Arc::new(Workers::default()),
            backoff: Arc::new(Backoff::new(std::time::Duration::from_millis(
                cfg.backoff_max_ms,
            ))),
            timeout: std::time::Duration::from_millis(cfg.call_timeout_ms),
        };
        Ok(Backend { calls })
    }

    /// A handle that reads the rollback anchor, for the store to check at
    /// every commit (`Store::watch_anchor`).
    pub fn anchor_watch(&self) -> AnchorWatch {
        AnchorWatch {
            calls: self.calls.clone(),
        }
    }

    pub fn module_path(&self) -> &Path {
        &self.calls.core.path
    }

    pub fn token_label(&self) -> &str {
        &self.calls.core.token_label
    }

    fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Core) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.calls.call(what, f)
    }

    fn call_now<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Core) -> Result<T> + Send + 'static,
    ) -> (Result<T>, bool) {
        self.calls.call_now(what, f)
    }

    pub fn token_info(&self) -> Result<BackingTokenInfo> {
        self.call("C_GetTokenInfo", |c| c.token_info())
    }

    /// Logs in to the backing token (`user_type` is CKU_USER or CKU_SO) and,
    /// for a user, finds the root. The PIN is kept in the locked arena while
    /// logged in, to log in again should the HSM lose the login. The PIN
    /// comes back from the worker only with its success, and is
    /// kept then: a login that timed out here and succeeded late leaves no
    /// PIN behind (it is wiped with the worker's unread result).
    pub fn login(&self, user_type: sys::CK_USER_TYPE, pin: &[u8]) -> Result<()> {
        let pin = arena_copy(pin)?;
        let pin = self.call("C_Login", move |c| {
            c.login_as(user_type, &pin, true).map(|()| pin)
        })?;
        if user_type == sys::CKU_USER {
            self.calls.core.keep_pin(pin);
        }
        Ok(())
    }

    /// Logs a user in for administration (`p11derive init`): the root may
    /// not exist yet, so it is not looked up.
    pub fn login_admin(&self, pin: &[u8]) -> Result<()> {
        let pin = arena_copy(pin)?;
        self.call("C_Login", move |c| c.login_admin(&pin))
    }

    /// Forgets the PIN kept for logging in again, without calling the
    /// backing HSM (the login itself ends at `logout`).
    pub fn forget_pin(&self) {
        self.calls.core.forget_pin();
    }

    /// Logs out (tried even during the backoff delay: the login must end).
    pub fn logout(&self) -> Result<()> {
        self.calls.core.forget_pin();
        self.call_now("C_Logout", |c| c.logout()).0
    }

    /// Fills `out` from the backing HSM's random number generator.
    pub fn random(&self, out: &mut [u8]) -> Result<()> {
        for chunk in out.chunks_mut(4096) {
            let n = chunk.len();
            let bytes = self.call("C_GenerateRandom", move |c| c.random(n))?;
            chunk.copy_from_slice(&bytes[..n]);
        }
        Ok(())
    }

    /// Passes a caller's seed to the backing HSM's `C_SeedRandom` (it adds
    /// to the HSM's entropy, never replaces it).
    pub fn seed_random(&self, seed: &[u8]) -> Result<()> {
        let seed = zeroize::Zeroizing::new(seed.to_vec());
        self.call("C_SeedRandom", move |c| c.seed_random(&seed))
    }

    pub fn generate_root(&self) -> Result<()> {
        self.call("C_GenerateKey (root)", |c| c.generate_root())
    }

    pub fn import_root(&self, value: &[u8; 32]) -> Result<()> {
        let mut v = crate::secure::secret::<32>()?;
        v.copy_from_slice(value);
        self.call("C_CreateObject (root)", move |c| c.import_root(&v))
    }

    /// Withdraws the root just imported (a recovery that could not finish).
    pub fn destroy_root(&self) -> Result<()> {
        self.call("C_DestroyObject (root)", |c| c.destroy_root())
    }

    pub fn root_exists(&self) -> Result<bool> {
        self.call("C_FindObjects (root)", |c| c.root_exists())
    }

    pub fn read_anchor(&self) -> Result<Option<Anchor>> {
        self.call("reading the rollback anchor", |c| c.read_anchor())
    }

    pub fn write_anchor(&self, anchor: &Anchor, reset: bool) -> Result<()> {
        let anchor = anchor.clone();
        self.call("writing the rollback anchor", move |c| {
            c.write_anchor(&anchor, reset)
        })
    }

    /// Closes every session and, if p11derive initialized the module,
    /// finalizes it; a hung HSM is left to its worker after the timeout.
    ///
    /// Calls still running first end: one whose caller stopped waiting (an
    /// anchor read a refused commit no longer needs, a call past its
    /// timeout) may still be inside the module, and a module finalized
    /// under a call frees what the call uses (SoftHSM corrupted the heap).
    /// If they do not end within the call timeout, the module is left as
    /// it is, its sessions open and not finalized: the next `C_Initialize`
    /// in this process uses it as initialized, and finalizes it in turn.
    pub fn finalize(&self) {
        self.calls.core.forget_pin();
        let deadline = Instant::now() + self.calls.timeout;
        if !self.calls.workers.settle(deadline) {
            crate::log::warn(&format!(
                "backing HSM (token {:?}, module {}): {} call(s) still running after {} ms \
                 ([backend] call_timeout_ms); the module is not finalized under them and its \
                 sessions stay open",
                self.calls.core.token_label,
                self.calls.core.path.display(),
                self.calls.workers.busy(),
                self.calls.timeout.as_millis()
            ));
            self.calls.core.leave_initialized();
            self.calls.workers.close(self.calls.timeout);
            return;
        }
        if let Err(e) = self
            .call_now("C_Finalize", |c| {
                c.finalize();
                Ok(())
            })
            .0
        {
            crate::log::warn(&format!("backing HSM: {e}"));
        }
        self.calls.workers.close(self.calls.timeout);
    }
}

/// Reads the rollback anchor on the backend's workers, within its call
/// timeout and not during its backoff delay; owns no worker (the backend
/// closes them).
pub struct AnchorWatch {
    calls: Calls,
}

impl AnchorWatch {
    /// The anchor as the backing HSM holds it now.
    pub fn read(&self) -> Result<Option<Anchor>> {
        self.start().wait()
    }

    /// Starts reading the anchor on a worker and returns at once: a commit
    /// reads it while its transaction is written and fsynced.
    pub fn start(&self) -> AnchorRead {
        // Counted with the other backing calls: the anchor's own count is
        // of its moves (`anchoring`).
        let pending = self
            .calls
            .admit(READING_ANCHOR)
            .map(|()| self.calls.start_now(|c| c.watch_anchor()));
        AnchorRead {
            calls: self.calls.clone(),
            pending: Some(pending),
        }
    }
}

const READING_ANCHOR: &str = "reading the rollback anchor";

/// A read of the anchor under way (`AnchorWatch::start`). Dropped without
/// `wait` (a commit refused before it needed the anchor), it still waits
/// for the read to end and counts its outcome: the backoff then knows how
/// the call it let through ended, and no call is left running unseen.
pub struct AnchorRead {
    calls: Calls,
    pending: Option<Result<AnchorPending>>,
}

/// The worker's read of the anchor, with the backing code it ended on.
type AnchorPending = Pending<(Result<Option<Anchor>>, sys::CK_RV)>;

impl AnchorRead {
    /// The anchor read, waited for at most the call timeout after it began.
    pub fn wait(mut self) -> Result<Option<Anchor>> {
        // Never an absent anchor by default: that would pass any store.
        self.finish().unwrap_or_else(|| {
            Err(Error::with(
                sys::CKR_GENERAL_ERROR,
                "the rollback anchor's read was already waited for".to_string(),
            ))
        })
    }

    /// The read's outcome, once (`None` after the first time).
    fn finish(&mut self) -> Option<Result<Option<Anchor>>> {
        let pending = match self.pending.take()? {
            Ok(pending) => pending,
            Err(refused) => return Some(Err(refused)),
        };
        let done = self.calls.finish_now(READING_ANCHOR, pending);
        Some(self.calls.account(READING_ANCHOR, done))
    }
}

impl Drop for AnchorRead {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

impl Calls {
    /// Runs `f` on a worker, waiting at most the call timeout, unless the
    /// HSM is in its backoff delay.
    fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Core) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.admit(what)?;
        let done = self.call_now(what, f);
        self.account(what, done)
    }

    /// Refuses a call during the backoff delay.
    fn admit(&self, what: &'static str) -> Result<()> {
        if let Err(refused) = self.backoff.admit() {
            return Err(Error::with(
                sys::CKR_DEVICE_ERROR,
                format!(
                    "backing HSM (token {:?}) unavailable: {}; {what} not attempted, next \
                     attempt in {} ms",
                    self.core.token_label,
                    refused.last_error,
                    refused.wait.as_millis()
                ),
            ));
        }
        Ok(())
    }

    /// A call's outcome, counted by the backoff (a failure showing the HSM
    /// down starts or lengthens it; an answer ends it).
    fn account<T>(&self, what: &'static str, (out, down): (Result<T>, bool)) -> Result<T> {
        match &out {
            Err(e) if down => {
                let last_error = e.message.clone().unwrap_or_else(|| rv_name(e.rv).into());
                let failure = self.backoff.failed(last_error.clone());
                crate::log::warn(&format!(
                    "backing HSM: {what} failed ({last_error}); failure {} in a row, next \
                     attempt in {} ms",
                    failure.in_a_row,
                    failure.delay.as_millis()
                ));
            }
            _ => {
                let failures = self.backoff.answered();
                if failures > 0 {
                    crate::log::info(&format!(
                        "backing HSM: answering again after {failures} failed attempts"
                    ));
                }
            }
        }
        out
    }

    /// Runs `f` on a worker and waits for it at most the call timeout.
    /// Also says whether the outcome shows the HSM down: a timeout, or a
    /// backing return code of a device that does not answer
    /// (`not_answering`).
    fn call_now<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Core) -> Result<T> + Send + 'static,
    ) -> (Result<T>, bool) {
        let pending = self.start_now(f);
        self.finish_now(what, pending)
    }

    /// Hands `f` to a worker (its calls counted as the caller's: anchoring
    /// or not) and returns at once.
    fn start_now<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Core) -> Result<T> + Send + 'static,
    ) -> Pending<(Result<T>, sys::CK_RV)> {
        let core = self.core.clone();
        let anchoring = ANCHORING.with(|a| a.get());
        self.workers.start(move || {
            ANCHORING.with(|a| a.set(anchoring));
            set_last_failure(sys::CKR_OK);
            let out = f(&core);
            let last = last_failure();
            ANCHORING.with(|a| a.set(false));
            (out, last)
        })
    }

    /// Waits for a call `start_now` began, at most the call timeout after
    /// it began; says whether the outcome shows the HSM down.
    fn finish_now<T: Send + 'static>(
        &self,
        what: &'static str,
        pending: Pending<(Result<T>, sys::CK_RV)>,
    ) -> (Result<T>, bool) {
        let since = pending.since();
        let waited = pending.wait(self.timeout);
        let timeout = matches!(waited, Waited::TimedOut);
        let done = match waited {
            Waited::Done((out, last)) => {
                let down = out.is_err() && not_answering(last);
                (out, down)
            }
            Waited::NotStarted(e) => (
                Err(Error::with(
                    sys::CKR_HOST_MEMORY,
                    format!("cannot start a thread for backing HSM calls: {e}"),
                )),
                false,
            ),
            Waited::TimedOut => (
                Err(Error::with(
                    sys::CKR_DEVICE_ERROR,
                    format!(
                        "backing HSM (token {:?}, module {}) did not answer {what} within {} ms \
                     ([backend] call_timeout_ms)",
                        self.core.token_label,
                        self.core.path.display(),
                        self.timeout.as_millis()
                    ),
                )),
                true,
            ),
            Waited::Lost => (
                Err(Error::with(
                    sys::CKR_GENERAL_ERROR,
                    format!("backing HSM call {what} ended without a result"),
                )),
                false,
            ),
        };
        let failed = done.0.as_ref().err().map(|e| match timeout {
            true => "timeout",
            false => rv_name(e.rv),
        });
        // Labelled by `what` (metrics::process::CALLS names each call).
        crate::metrics::process::backend_call(what, since, failed);
        done
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.calls
            .workers
            .close(std::time::Duration::from_millis(200));
    }
}

/// A copy of a PIN in the locked arena, to hand to a worker.
fn arena_copy(pin: &[u8]) -> Result<SecretBytes> {
    let mut b = SecretBytes::with_capacity(pin.len().max(1))
        .map_err(|m| Error::with(sys::CKR_HOST_MEMORY, m))?;
    b.push(pin);
    Ok(b)
}

impl Prf for Backend {
    /// `HMAC-SHA256(root, input)` computed inside the HSM, written straight
    /// into the locked arena.
    fn prf(&self, input: &[u8]) -> Result<Secret32> {
        let input = input.to_vec();
        self.call("the PRF (C_Sign under the root)", move |c| c.prf(&input))
    }

    /// As `prf`, the input moved to the worker in the locked arena.
    fn prf_secret(&self, input: SecretBytes) -> Result<Secret32> {
        self.call("the PRF (C_Sign under the root)", move |c| c.prf(&input))
    }
}
