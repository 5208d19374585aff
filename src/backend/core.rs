//! `Core`: the backing token called directly — opening it, the session pool, login, recovery, RNG, finalize.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use crate::ck as sys;

use super::module::{last_failure, load_module, set_last_failure, Module};
use super::BackingTokenInfo;
use crate::config::BackendSection;
use crate::error::{rv_name, Error, Result};
use crate::secure::SecretBytes;

/// The backing module and token, called directly (on a worker thread of
/// `Backend`, which adds the timeout and the backoff).
pub(super) struct Core {
    pub(super) module: Module,
    pub(super) path: PathBuf,
    slot: sys::CK_SLOT_ID,
    pub(super) token_label: String,
    pub(super) root_label: String,
    /// Whether p11derive initialized the module (and so finalizes it).
    owns_init: bool,
    idle: Mutex<Vec<sys::CK_SESSION_HANDLE>>,
    /// The session that carries the login; PKCS#11 logs out when the last
    /// session of an application closes, so it stays open while logged in.
    pub(super) login_session: Mutex<Option<sys::CK_SESSION_HANDLE>>,
    /// The root's handle; present only while a user is logged in.
    pub(super) root: Mutex<Option<sys::CK_OBJECT_HANDLE>>,
    /// The root this process created (`init`, a ceremony, a recovery):
    /// the one object `destroy_root` may take back.
    pub(super) created_root: Mutex<Option<[u8; 16]>>,
    /// The newest anchor object found or written, and when the anchor was
    /// last looked for: read again with one `C_GetAttributeValue` for a
    /// moment (see `Core::watch_anchor`).
    pub(super) anchor_object: Mutex<Option<(sys::CK_OBJECT_HANDLE, std::time::Instant)>>,
    /// The user PIN while logged in, in the locked arena, to log in again
    /// when the HSM lost the login (a restart, sessions dropped).
    pin: Mutex<Option<SecretBytes>>,
    /// Recoveries done (sessions reopened, logged in again): a caller that
    /// saw a failure before another thread recovered just retries.
    recoveries: AtomicU64,
    recovering: Mutex<()>,
}

// `Core` is shared with the worker threads (`Arc<Core>` in every job): the
// compiler checks that it may be, with no `unsafe impl` overriding it.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Core>()
};

/// A backing call that failed, as p11derive reports it.
pub(super) fn device(op: &str, rv: sys::CK_RV) -> Error {
    Error::with(
        sys::CKR_DEVICE_ERROR,
        format!("backing HSM: {op} returned {}", rv_name(rv)),
    )
}

/// Why the backing module at `path` did not load (`why`: dlerror's words),
/// and the fix that reason calls for.
fn unloadable(path: &Path, why: &str, config_file: &Path) -> String {
    // dlerror's text starts with the path, already named here.
    let prefix = format!("{}: ", path.display());
    let why = why.strip_prefix(&prefix).unwrap_or(why);
    let fix = if why.contains("No such file or directory") {
        "no such file: install the module (SoftHSM: apt-get install softhsm2) and set [backend] \
         module to its path (SoftHSM: module = \"/usr/lib/softhsm/libsofthsm2.so\")"
            .to_string()
    } else if why.contains("wrong ELF class") {
        "the module is built for another word size (32- or 64-bit) than this process: use the \
         module built for this machine's architecture"
            .to_string()
    } else if why.contains("invalid ELF header")
        || why.contains("file too short")
        || why.contains("not a dynamic")
    {
        "this is not a shared library: [backend] module must name the PKCS#11 module's .so file"
            .to_string()
    } else if why.contains("Is a directory") {
        "this is a directory: [backend] module must name the PKCS#11 module's .so file in it"
            .to_string()
    } else if why.contains("C_GetFunctionList") {
        "this library is not a PKCS#11 module (it exports no C_GetFunctionList): name the HSM \
         vendor's PKCS#11 library"
            .to_string()
    } else if why.contains("Permission denied") {
        "this user may not read it: give read access to the file (and search access to its \
         directories)"
            .to_string()
    } else {
        format!(
            "a library it needs may be missing or too old: see `ldd {}`",
            path.display()
        )
    };
    format!(
        "cannot load the backing PKCS#11 module {}: {why}; {fix}; [backend] module is set in {}",
        path.display(),
        config_file.display()
    )
}

/// The message for a PIN the backing token refused (`None` for other
/// codes): which token and module, what repeated attempts cost, and for a
/// locked PIN how to unlock it. The code's name follows in the error.
pub(super) fn pin_refused(
    rv: sys::CK_RV,
    user_type: sys::CK_USER_TYPE,
    token: &str,
    module: &Path,
) -> Option<String> {
    let (whose, so) = if user_type == sys::CKU_SO {
        ("security officer", true)
    } else {
        ("user", false)
    };
    let on = format!("backing token {token:?} (module {})", module.display());
    let counts = format!(
        "repeated wrong PINs may lock the token's {whose} PIN (many HSMs count failures and \
         lock it; SoftHSM does not): check the PIN before trying again"
    );
    Some(match rv {
        sys::CKR_PIN_INCORRECT => format!("{on} refused the {whose} PIN: wrong PIN; {counts}"),
        sys::CKR_PIN_LEN_RANGE => format!(
            "{on} refused the {whose} PIN: its length is outside what the token accepts \
             (see softhsm2-util --show-slots or pkcs11-tool -T for its minimum and maximum); \
             {counts}"
        ),
        sys::CKR_PIN_LOCKED if so => format!(
            "the security officer PIN of {on} is locked after too many wrong PINs; on most \
             tokens (SoftHSM among them) only re-initializing the token resets it, which \
             destroys its objects, the root among them: restore the root from its backup"
        ),
        sys::CKR_PIN_LOCKED => format!(
            "the user PIN of {on} is locked after too many wrong PINs; the security officer \
             unlocks it by setting a new user PIN: pkcs11-tool --module {} --token-label {token:?} \
             --login --login-type so --init-pin (it asks for the SO PIN and the new user PIN)",
            module.display()
        ),
        sys::CKR_PIN_EXPIRED => format!(
            "the {whose} PIN of {on} has expired; set a new one: pkcs11-tool --module {} \
             --token-label {token:?} --login --change-pin",
            module.display()
        ),
        _ => return None,
    })
}

/// The module p11derive initialized in this process and did not finalize
/// (a call still hung at `C_Finalize`): p11derive still owns its
/// initialization. A forked child starts without it (its parent owns it).
static LEFT_INITIALIZED: crate::process::PerProcess<Mutex<Option<PathBuf>>> =
    crate::process::PerProcess::new(|| Mutex::new(None));

/// Whether p11derive left `module` initialized in this process (and now
/// takes that back).
fn left_by_us(module: &Path) -> bool {
    let mut left = LEFT_INITIALIZED
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if left.as_deref() == Some(module) {
        *left = None;
        return true;
    }
    false
}

impl Core {
    /// Loads the module, initializes it and finds the backing token by label.
    /// `config_file` is only used in messages.
    pub(super) fn open(cfg: &BackendSection, config_file: &Path) -> Result<Core> {
        let module = load_module(&cfg.module).map_err(|e| {
            Error::with(
                sys::CKR_FUNCTION_FAILED,
                unloadable(&cfg.module, &e, config_file),
            )
        })?;
        let rv = module.initialize();
        let owns_init = match rv {
            sys::CKR_OK => true,
            // The application (or our parent before a fork) initialized it; use
            // it as it is and leave finalizing to whoever initialized it,
            // unless that was p11derive in this process, kept from
            // finalizing it by a call that hung (`leave_initialized`).
            sys::CKR_CRYPTOKI_ALREADY_INITIALIZED => left_by_us(&cfg.module),
            rv => {
                return Err(Error::with(
                    sys::CKR_FUNCTION_FAILED,
                    format!(
                        "backing module {}: C_Initialize returned {}; check the module's own \
                         configuration (for SoftHSM: SOFTHSM2_CONF and its tokendir)",
                        cfg.module.display(),
                        rv_name(rv)
                    ),
                ))
            }
        };
        let mut backend = Core {
            module,
            path: cfg.module.clone(),
            slot: 0,
            token_label: cfg.token_label.clone(),
            root_label: cfg.root_label.clone(),
            owns_init,
            idle: Mutex::new(Vec::new()),
            login_session: Mutex::new(None),
            root: Mutex::new(None),
            created_root: Mutex::new(None),
            anchor_object: Mutex::new(None),
            pin: Mutex::new(None),
            recoveries: AtomicU64::new(0),
            recovering: Mutex::new(()),
        };
        match backend.find_slot_patiently() {
            Ok(slot) => backend.slot = slot,
            Err(seen) => {
                let e = Error::with(
                    sys::CKR_FUNCTION_FAILED,
                    format!(
                        "backing token {:?} not found in module {} (tokens present: {}); fix \
                         [backend] token_label in {}, check that this user may read the token \
                         (SoftHSM: its token directory and SOFTHSM2_CONF), or create it (SoftHSM: \
                         softhsm2-util --init-token --free --label {:?})",
                        cfg.token_label,
                        cfg.module.display(),
                        if seen.is_empty() {
                            "none".to_string()
                        } else {
                            seen.join(", ")
                        },
                        config_file.display(),
                        cfg.token_label
                    ),
                );
                backend.finalize();
                return Err(e);
            }
        }
        Ok(backend)
    }

    /// Finds the backing token, retrying for about a second: a file-backed
    /// token (SoftHSM) that another process is rewriting at this moment can be
    /// missing from one scan. Where p11derive initialized the module, each
    /// retry re-initializes it so the module scans its tokens afresh.
    fn find_slot_patiently(&self) -> std::result::Result<sys::CK_SLOT_ID, Vec<String>> {
        let mut last = Vec::new();
        for attempt in 0..10 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if self.owns_init {
                    let _ = self.module.finalize();
                    let _ = self.module.initialize();
                }
            }
            match self.find_slot() {
                Ok(slot) => {
                    if attempt > 0 {
                        crate::log::info(&format!(
                            "backing token {:?} found at scan {} (it was being rewritten by \
                             another process)",
                            self.token_label,
                            attempt + 1
                        ));
                    }
                    return Ok(slot);
                }
                Err(seen) => last = seen,
            }
        }
        Err(last)
    }

    /// The slot of the token labelled `token_label`, or the labels seen.
    fn find_slot(&self) -> std::result::Result<sys::CK_SLOT_ID, Vec<String>> {
        let (rv, count) = self.module.get_slot_list(None);
        if rv != sys::CKR_OK {
            return Err(vec![format!("C_GetSlotList: {}", rv_name(rv))]);
        }
        let mut slots = vec![0 as sys::CK_SLOT_ID; count as usize];
        let (rv, count) = self.module.get_slot_list(Some(&mut slots));
        if rv != sys::CKR_OK {
            return Err(vec![format!("C_GetSlotList: {}", rv_name(rv))]);
        }
        slots.truncate(count as usize);
        let mut seen = Vec::new();
        for slot in slots {
            let (rv, info) = self.module.get_token_info(slot);
            if rv != sys::CKR_OK {
                continue;
            }
            let label = sys::unpad(&info.label);
            if label == self.token_label {
                return Ok(slot);
            }
            // An uninitialized token (SoftHSM's free slot) is no token to
            // choose: it is left out of the list.
            if info.flags & sys::CKF_TOKEN_INITIALIZED != 0 {
                seen.push(format!("{label:?}"));
            }
        }
        Err(seen)
    }

    pub(super) fn token_info(&self) -> Result<BackingTokenInfo> {
        let (rv, info) = self.module.get_token_info(self.slot);
        if rv != sys::CKR_OK {
            return Err(device("C_GetTokenInfo", rv));
        }
        Ok(BackingTokenInfo {
            serial: sys::unpad(&info.serialNumber),
            min_pin_len: info.ulMinPinLen,
            max_pin_len: info.ulMaxPinLen,
            flags: info.flags,
        })
    }

    fn open_session(&self) -> Result<sys::CK_SESSION_HANDLE> {
        let flags = sys::CKF_SERIAL_SESSION | sys::CKF_RW_SESSION;
        let (rv, h) = self.module.open_session(self.slot, flags);
        if rv != sys::CKR_OK {
            return Err(device("C_OpenSession", rv));
        }
        Ok(h)
    }

    /// Best effort: a session that will not close is not the failure to
    /// recover from, so `LAST_FAILURE` keeps what the caller's call said.
    fn close_session(&self, h: sys::CK_SESSION_HANDLE) {
        let last = last_failure();
        let _ = self.module.close_session(h);
        set_last_failure(last);
    }

    /// Closes every session this process holds on the backing token (the
    /// login session last, logged out first when `logout`).
    fn close_sessions(&self, logout: bool) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for h in idle {
            self.close_session(h);
        }
        let login = self
            .login_session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = login {
            if logout {
                let _ = self.module.logout(h);
            }
            self.close_session(h);
        }
    }

    /// Runs `f` on a pooled session. A session is returned to the pool only
    /// when `f` succeeded, so a half-finished operation never leaks into the
    /// next caller's session. When the HSM lost the session, the login or
    /// the root's handle (a restart, sessions dropped, a logout by someone
    /// else), it recovers them (`recover`) and runs `f` once more.
    pub(super) fn with_session<T>(
        &self,
        mut f: impl FnMut(sys::CK_SESSION_HANDLE) -> Result<T>,
    ) -> Result<T> {
        let mut retried = false;
        loop {
            let seen = self.recoveries.load(std::sync::atomic::Ordering::SeqCst);
            set_last_failure(sys::CKR_OK);
            let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let out = match pooled {
                Some(h) => Ok(h),
                None => self.open_session(),
            }
            .and_then(|h| {
                let out = f(h);
                if out.is_ok() {
                    self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(h);
                } else {
                    self.close_session(h);
                }
                out
            });
            let failed = last_failure();
            match out {
                Err(e) if !retried && self.recover(failed, seen) => {
                    crate::log::debug(&format!("backing HSM: retrying after recovery from {e}"));
                    retried = true;
                }
                out => return out,
            }
        }
    }

    /// Repairs what a backing return code says was lost, and tells whether
    /// the call is worth running again: stale sessions are closed, the login
    /// redone with the PIN kept from `C_Login`, the root found again, the
    /// module re-initialized. One thread recovers at a time; a thread that
    /// failed before another recovered just retries.
    fn recover(&self, rv: sys::CK_RV, seen: u64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let reinit = rv == sys::CKR_CRYPTOKI_NOT_INITIALIZED;
        let sessions = reinit
            || matches!(
                rv,
                sys::CKR_SESSION_HANDLE_INVALID
                    | sys::CKR_SESSION_CLOSED
                    | sys::CKR_USER_NOT_LOGGED_IN
                    | sys::CKR_DEVICE_REMOVED
                    | sys::CKR_TOKEN_NOT_PRESENT
            );
        let root = matches!(
            rv,
            sys::CKR_KEY_HANDLE_INVALID | sys::CKR_OBJECT_HANDLE_INVALID
        );
        if !sessions && !root {
            return false;
        }
        let _one = self.recovering.lock().unwrap_or_else(|e| e.into_inner());
        if self.recoveries.load(SeqCst) != seen {
            return true;
        }
        let mut kept = self.pin.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pin) = kept.as_ref() else {
            return false;
        };
        crate::log::warn(&format!(
            "backing HSM: {} on token {:?}; reopening sessions and logging in again",
            rv_name(rv),
            self.token_label
        ));
        if reinit && self.owns_init {
            let _ = self.module.initialize();
        }
        // A root handle refused may just be a lost login (private objects
        // vanish when logged out): then log in again as for lost sessions.
        let (again, how) = if sessions {
            (self.reconnect(pin), "sessions reopened, logged in again")
        } else {
            match self.refind_root() {
                Ok(()) => (Ok(()), "root found again"),
                Err(_) => (self.reconnect(pin), "sessions reopened, logged in again"),
            }
        };
        self.recoveries.fetch_add(1, SeqCst);
        match again {
            Ok(()) => {
                crate::log::info(&format!(
                    "backing HSM: token {:?} usable again ({how})",
                    self.token_label
                ));
                true
            }
            Err(e) => {
                crate::log::warn(&format!("backing HSM: recovery failed: {e}"));
                if matches!(
                    e.rv,
                    sys::CKR_PIN_INCORRECT | sys::CKR_PIN_LOCKED | sys::CKR_PIN_EXPIRED
                ) {
                    // Never try a PIN the HSM refused again: it counts.
                    *kept = None;
                }
                false
            }
        }
    }

    /// Closes every session this process holds (stale or not), opens a new
    /// one and logs in with the kept PIN, finding the root again.
    fn reconnect(&self, pin: &[u8]) -> Result<()> {
        self.close_sessions(false);
        self.login_as(sys::CKU_USER, pin, true)
    }

    fn refind_root(&self) -> Result<()> {
        let h = self
            .login_session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or(Error::rv(sys::CKR_USER_NOT_LOGGED_IN))?;
        let root = self.find_root(h)?;
        *self.root.lock().unwrap_or_else(|e| e.into_inner()) = Some(root);
        Ok(())
    }

    pub(super) fn forget_pin(&self) {
        *self.pin.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Keeps the user's PIN (in the locked arena) for logging in again
    /// (`recover`), until `forget_pin`.
    pub(super) fn keep_pin(&self, pin: SecretBytes) {
        *self.pin.lock().unwrap_or_else(|e| e.into_inner()) = Some(pin);
    }

    pub(super) fn login_as(
        &self,
        user_type: sys::CK_USER_TYPE,
        pin: &[u8],
        need_root: bool,
    ) -> Result<()> {
        let mut anchor = self.login_session.lock().unwrap_or_else(|e| e.into_inner());
        let mut h = match *anchor {
            Some(h) => h,
            None => {
                let h = self.open_session()?;
                *anchor = Some(h);
                h
            }
        };
        // A file-backed token being rewritten by another process can fail a
        // login transiently; those codes are retried, PIN errors never are
        // (a retry could count against the PIN).
        let mut rv = sys::CKR_GENERAL_ERROR;
        for attempt in 0..4 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
            }
            rv = self.module.login(h, user_type, pin);
            // The HSM closed the session we kept (a restart, a
            // C_CloseAllSessions): open another; no PIN was checked.
            if matches!(
                rv,
                sys::CKR_SESSION_HANDLE_INVALID | sys::CKR_SESSION_CLOSED
            ) {
                self.close_session(h);
                h = self.open_session()?;
                *anchor = Some(h);
                continue;
            }
            // USER_PIN_NOT_INITIALIZED too: a file token read mid-rewrite
            // can look uninitialized; no PIN was checked, so nothing counts.
            if !matches!(
                rv,
                sys::CKR_GENERAL_ERROR
                    | sys::CKR_DEVICE_ERROR
                    | sys::CKR_FUNCTION_FAILED
                    | sys::CKR_USER_PIN_NOT_INITIALIZED
            ) {
                break;
            }
        }
        match rv {
            sys::CKR_OK | sys::CKR_USER_ALREADY_LOGGED_IN => {}
            sys::CKR_PIN_INCORRECT
            | sys::CKR_PIN_LOCKED
            | sys::CKR_PIN_EXPIRED
            | sys::CKR_PIN_LEN_RANGE => {
                let m = pin_refused(rv, user_type, &self.token_label, &self.path);
                return Err(m.map_or_else(|| Error::rv(rv), |m| Error::with(rv, m)));
            }
            sys::CKR_USER_PIN_NOT_INITIALIZED
            | sys::CKR_USER_ANOTHER_ALREADY_LOGGED_IN
            | sys::CKR_USER_TYPE_INVALID
            | sys::CKR_SESSION_READ_ONLY_EXISTS => return Err(Error::rv(rv)),
            rv => return Err(device("C_Login", rv)),
        }
        if user_type == sys::CKU_USER && need_root {
            match self.find_root(h) {
                Ok(root) => *self.root.lock().unwrap_or_else(|e| e.into_inner()) = Some(root),
                Err(e) => {
                    let _ = self.module.logout(h);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Logs a user in for administration (`p11derive init`): the root may
    /// not exist yet, so it is not looked up.
    pub(super) fn login_admin(&self, pin: &[u8]) -> Result<()> {
        self.login_as(sys::CKU_USER, pin, false)
    }

    /// (`Backend::logout` forgets the PIN first, even if this call hangs.)
    pub(super) fn logout(&self) -> Result<()> {
        *self.root.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let anchor = *self.login_session.lock().unwrap_or_else(|e| e.into_inner());
        let Some(h) = anchor else {
            return Ok(());
        };
        match self.module.logout(h) {
            sys::CKR_OK | sys::CKR_USER_NOT_LOGGED_IN => Ok(()),
            // The HSM already closed it, and with it the login.
            sys::CKR_SESSION_HANDLE_INVALID | sys::CKR_SESSION_CLOSED => {
                *self.login_session.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(())
            }
            rv => Err(device("C_Logout", rv)),
        }
    }

    /// Gives a caller's seed to the backing HSM's `C_SeedRandom`, which
    /// mixes it into its own RNG state; a module that takes no seed answers
    /// `CKR_RANDOM_SEED_NOT_SUPPORTED`.
    pub(super) fn seed_random(&self, seed: &[u8]) -> Result<()> {
        self.with_session(|h| match self.module.seed_random(h, seed) {
            sys::CKR_OK => Ok(()),
            sys::CKR_RANDOM_SEED_NOT_SUPPORTED | sys::CKR_FUNCTION_NOT_SUPPORTED => {
                Err(Error::with(
                    sys::CKR_RANDOM_SEED_NOT_SUPPORTED,
                    "the backing HSM takes no seed for its RNG (its own entropy stays in use)",
                ))
            }
            rv => Err(device("C_SeedRandom", rv)),
        })
    }

    /// `n` bytes from the backing HSM's random number generator, in the
    /// locked arena (they may become key material).
    pub(super) fn random(&self, n: usize) -> Result<SecretBytes> {
        self.with_session(|h| {
            let mut out = SecretBytes::with_capacity(n.max(1))
                .map_err(|m| Error::with(sys::CKR_HOST_MEMORY, m))?;
            let rv = self.module.generate_random(h, &mut out.spare()[..n]);
            match rv {
                sys::CKR_OK => {
                    out.grow(n);
                    Ok(out)
                }
                rv => Err(device("C_GenerateRandom", rv)),
            }
        })
    }

    /// `C_Finalize` could not finalize the module (a call still hangs in
    /// it): if p11derive initialized it, the next `Core::open` in this
    /// process owns it again.
    pub(super) fn leave_initialized(&self) {
        if self.owns_init {
            *LEFT_INITIALIZED
                .get()
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(self.path.clone());
        }
    }

    /// Closes every session and, if p11derive initialized the module,
    /// finalizes it.
    /// (`Backend::finalize` forgets the PIN first, even if this call hangs.)
    pub(super) fn finalize(&self) {
        *self.root.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.close_sessions(true);
        if self.owns_init {
            let _ = self.module.finalize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_pin_message_names_the_token_and_the_unlock() {
        let m = pin_refused(
            sys::CKR_PIN_LOCKED,
            sys::CKU_USER,
            "custody-root",
            Path::new("/m.so"),
        )
        .unwrap();
        assert!(
            m.starts_with(
                "the user PIN of backing token \"custody-root\" (module /m.so) is locked"
            ),
            "{m}"
        );
        assert!(m.contains("--login-type so --init-pin"), "{m}");
        let e = Error::with(sys::CKR_PIN_LOCKED, m);
        assert!(e.to_string().ends_with("(CKR_PIN_LOCKED)"), "{e}");
        let m = pin_refused(sys::CKR_PIN_LEN_RANGE, sys::CKU_SO, "t", Path::new("/m")).unwrap();
        assert!(
            m.contains("refused the security officer PIN: its length")
                && m.contains("may lock the token's security officer PIN"),
            "{m}"
        );
        assert_eq!(
            pin_refused(sys::CKR_DEVICE_ERROR, sys::CKU_USER, "t", Path::new("/m")),
            None
        );
    }
}
