//! The backing HSM: a second PKCS#11 module, loaded from the config, that holds
//! the root secret. p11derive asks it for exactly two things on the hot path:
//! the PRF (`CKM_SHA256_HMAC` under the root) and random bytes. Logins pass
//! through to it, so authentication is the HSM's own.
//!
//! No lock is held while the HSM works: sessions come from a small pool taken
//! and returned under a short lock, and the HSM module itself is initialized
//! with `CKF_OS_LOCKING_OK`, so it serializes what it must.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Arc, Mutex};

use cryptoki_sys as sys;

use crate::ck;
use crate::config::BackendSection;
use crate::derive::{Prf, Secret32};
use crate::error::{rv_name, Error, Result};
use crate::process::PerProcess;
use crate::secure::SecretBytes;

/// A loaded module's function table. Modules are never unloaded: many PKCS#11
/// modules (SoftHSM among them) do not survive `dlclose` and a later reload,
/// and applications may initialize and finalize p11derive many times.
#[derive(Clone, Copy)]
struct Module(&'static sys::CK_FUNCTION_LIST);

static MODULES: PerProcess<Mutex<HashMap<PathBuf, Module>>> =
    PerProcess::new(|| Mutex::new(HashMap::new()));

fn load_module(path: &Path) -> std::result::Result<Module, String> {
    let mut map = MODULES.get().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = map.get(path) {
        return Ok(*m);
    }
    // SAFETY: loading a PKCS#11 module runs its initializers; the config names
    // a module the operator trusts with the root, so its code is trusted.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    // SAFETY: C_GetFunctionList has this signature in every PKCS#11 version.
    let get: libloading::Symbol<
        unsafe extern "C" fn(*mut sys::CK_FUNCTION_LIST_PTR) -> sys::CK_RV,
    > = unsafe { lib.get(b"C_GetFunctionList\0") }.map_err(|e| e.to_string())?;
    let mut fl: sys::CK_FUNCTION_LIST_PTR = ptr::null_mut();
    // SAFETY: `fl` is a valid out-pointer for the duration of the call.
    let rv = unsafe { get(&mut fl) };
    if rv != sys::CKR_OK || fl.is_null() {
        return Err(format!("C_GetFunctionList returned {}", rv_name(rv)));
    }
    // SAFETY: the table lives as long as the library, which is never unloaded.
    let module = Module(unsafe { &*fl });
    map.insert(path.to_path_buf(), module);
    Ok(module)
}

/// Calls made into the backing module by this process (for the statistics
/// the provider logs at C_Finalize).
pub static HSM_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Of those, the calls made while moving the rollback anchor.
pub static ANCHOR_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// Set while this thread moves the rollback anchor (see `anchoring`).
    static ANCHORING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The last failing return code of a backing call on this thread, for
    /// `Core::recover` to see what was lost.
    static LAST_FAILURE: std::cell::Cell<sys::CK_RV> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with its backing HSM calls counted as the anchor's as well.
pub fn anchoring<T>(f: impl FnOnce() -> T) -> T {
    ANCHORING.with(|a| a.set(true));
    let out = f();
    ANCHORING.with(|a| a.set(false));
    out
}

fn count_call() {
    use std::sync::atomic::Ordering::Relaxed;
    HSM_CALLS.fetch_add(1, Relaxed);
    if ANCHORING.with(|a| a.get()) {
        ANCHOR_CALLS.fetch_add(1, Relaxed);
    }
}

/// Calls a function of the module's table; a missing entry is
/// `CKR_FUNCTION_NOT_SUPPORTED` rather than a crash. A failure is noted in
/// `LAST_FAILURE`.
macro_rules! hsm {
    ($m:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $m.0.$f {
            // SAFETY: the pointer comes from the module's own function table and
            // every argument is valid for the duration of the call (see callers).
            Some(f) => {
                count_call();
                let rv = unsafe { f($($arg),*) };
                if rv != sys::CKR_OK {
                    LAST_FAILURE.with(|l| l.set(rv));
                }
                rv
            }
            None => sys::CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
}

/// What the backing token says of itself, for the provider's token info.
#[derive(Debug, Clone)]
pub struct BackingTokenInfo {
    pub serial: String,
    pub min_pin_len: u64,
    pub max_pin_len: u64,
    pub flags: u64,
}

/// The backing module and token, called directly (on a worker thread of
/// `Backend`, which adds the timeout and the backoff).
struct Core {
    module: Module,
    path: PathBuf,
    slot: sys::CK_SLOT_ID,
    token_label: String,
    root_label: String,
    /// Whether p11derive initialized the module (and so finalizes it).
    owns_init: bool,
    idle: Mutex<Vec<sys::CK_SESSION_HANDLE>>,
    /// The session that carries the login; PKCS#11 logs out when the last
    /// session of an application closes, so it stays open while logged in.
    login_session: Mutex<Option<sys::CK_SESSION_HANDLE>>,
    /// The root's handle; present only while a user is logged in.
    root: Mutex<Option<sys::CK_OBJECT_HANDLE>>,
    /// The user PIN while logged in, in the locked arena, to log in again
    /// when the HSM lost the login (a restart, sessions dropped).
    pin: Mutex<Option<SecretBytes>>,
    /// Recoveries done (sessions reopened, logged in again): a caller that
    /// saw a failure before another thread recovered just retries.
    recoveries: std::sync::atomic::AtomicU64,
    recovering: Mutex<()>,
}

// SAFETY: the function table is immutable static data of a module that was
// initialized with CKF_OS_LOCKING_OK, so it may be called from any thread;
// every other field is Send + Sync.
unsafe impl Send for Core {}
unsafe impl Sync for Core {}

/// `C_Initialize` of the backing module, letting it use OS locking.
fn initialize_module(module: Module) -> sys::CK_RV {
    let mut args = sys::CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: sys::CKF_OS_LOCKING_OK,
        pReserved: ptr::null_mut(),
    };
    hsm!(
        module,
        C_Initialize(&mut args as *mut _ as sys::CK_VOID_PTR)
    )
}

fn device(op: &str, rv: sys::CK_RV) -> Error {
    Error::with(
        ck::CKR_DEVICE_ERROR,
        format!("backing HSM: {op} returned {}", rv_name(rv)),
    )
}

impl Core {
    /// Loads the module, initializes it and finds the backing token by label.
    /// `config_file` is only used in messages.
    fn open(cfg: &BackendSection, config_file: &Path) -> Result<Core> {
        let module = load_module(&cfg.module).map_err(|e| {
            Error::with(
                ck::CKR_FUNCTION_FAILED,
                format!(
                    "cannot load the backing PKCS#11 module {} ({e}); fix [backend] module in {} \
                     (for SoftHSM: apt-get install softhsm2, module = \
                     \"/usr/lib/softhsm/libsofthsm2.so\")",
                    cfg.module.display(),
                    config_file.display()
                ),
            )
        })?;
        let rv = initialize_module(module);
        let owns_init = match rv {
            sys::CKR_OK => true,
            // The application (or our parent before a fork) initialized it; use
            // it as it is and leave finalizing to whoever initialized it.
            sys::CKR_CRYPTOKI_ALREADY_INITIALIZED => false,
            rv => {
                return Err(Error::with(
                    ck::CKR_FUNCTION_FAILED,
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
            pin: Mutex::new(None),
            recoveries: std::sync::atomic::AtomicU64::new(0),
            recovering: Mutex::new(()),
        };
        match backend.find_slot_patiently() {
            Ok(slot) => backend.slot = slot,
            Err(seen) => {
                let e =
                    Error::with(
                        ck::CKR_FUNCTION_FAILED,
                        format!(
                        "backing token {:?} not found in module {} (tokens present: {}); create \
                         it (SoftHSM: softhsm2-util --init-token --free --label {:?}) or fix \
                         [backend] token_label in {}",
                        cfg.token_label,
                        cfg.module.display(),
                        if seen.is_empty() { "none".to_string() } else { seen.join(", ") },
                        cfg.token_label,
                        config_file.display()
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
                    let _ = hsm!(self.module, C_Finalize(ptr::null_mut()));
                    let _ = initialize_module(self.module);
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
        let mut count: sys::CK_ULONG = 0;
        let rv = hsm!(
            self.module,
            C_GetSlotList(sys::CK_TRUE, ptr::null_mut(), &mut count)
        );
        if rv != sys::CKR_OK {
            return Err(vec![format!("C_GetSlotList: {}", rv_name(rv))]);
        }
        let mut slots = vec![0 as sys::CK_SLOT_ID; count as usize];
        let rv = hsm!(
            self.module,
            C_GetSlotList(sys::CK_TRUE, slots.as_mut_ptr(), &mut count)
        );
        if rv != sys::CKR_OK {
            return Err(vec![format!("C_GetSlotList: {}", rv_name(rv))]);
        }
        slots.truncate(count as usize);
        let mut seen = Vec::new();
        for slot in slots {
            let mut info = sys::CK_TOKEN_INFO::default();
            if hsm!(self.module, C_GetTokenInfo(slot, &mut info)) != sys::CKR_OK {
                continue;
            }
            let label = ck::unpad(&info.label);
            if label == self.token_label {
                return Ok(slot);
            }
            seen.push(format!("{label:?}"));
        }
        Err(seen)
    }

    fn token_info(&self) -> Result<BackingTokenInfo> {
        let mut info = sys::CK_TOKEN_INFO::default();
        let rv = hsm!(self.module, C_GetTokenInfo(self.slot, &mut info));
        if rv != sys::CKR_OK {
            return Err(device("C_GetTokenInfo", rv));
        }
        Ok(BackingTokenInfo {
            serial: ck::unpad(&info.serialNumber),
            min_pin_len: info.ulMinPinLen,
            max_pin_len: info.ulMaxPinLen,
            flags: info.flags,
        })
    }

    fn open_session(&self) -> Result<sys::CK_SESSION_HANDLE> {
        let mut h: sys::CK_SESSION_HANDLE = 0;
        let flags = sys::CKF_SERIAL_SESSION | sys::CKF_RW_SESSION;
        let rv = hsm!(
            self.module,
            C_OpenSession(self.slot, flags, ptr::null_mut(), None, &mut h)
        );
        if rv != sys::CKR_OK {
            return Err(device("C_OpenSession", rv));
        }
        Ok(h)
    }

    /// Best effort: a session that will not close is not the failure to
    /// recover from, so `LAST_FAILURE` keeps what the caller's call said.
    fn close_session(&self, h: sys::CK_SESSION_HANDLE) {
        let last = LAST_FAILURE.with(|l| l.get());
        let _ = hsm!(self.module, C_CloseSession(h));
        LAST_FAILURE.with(|l| l.set(last));
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
                let _ = hsm!(self.module, C_Logout(h));
            }
            self.close_session(h);
        }
    }

    /// Runs `f` on a pooled session. A session is returned to the pool only
    /// when `f` succeeded, so a half-finished operation never leaks into the
    /// next caller's session. When the HSM lost the session, the login or
    /// the root's handle (a restart, sessions dropped, a logout by someone
    /// else), it recovers them (`recover`) and runs `f` once more.
    fn with_session<T>(&self, mut f: impl FnMut(sys::CK_SESSION_HANDLE) -> Result<T>) -> Result<T> {
        let mut retried = false;
        loop {
            let seen = self.recoveries.load(std::sync::atomic::Ordering::SeqCst);
            LAST_FAILURE.with(|l| l.set(sys::CKR_OK));
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
            let failed = LAST_FAILURE.with(|l| l.get());
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
            let _ = initialize_module(self.module);
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
            .ok_or(Error::rv(ck::CKR_USER_NOT_LOGGED_IN))?;
        let root = self.find_root(h)?;
        *self.root.lock().unwrap_or_else(|e| e.into_inner()) = Some(root);
        Ok(())
    }

    fn forget_pin(&self) {
        *self.pin.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Keeps the user's PIN (in the locked arena) for logging in again
    /// (`recover`), until `forget_pin`.
    fn keep_pin(&self, pin: SecretBytes) {
        *self.pin.lock().unwrap_or_else(|e| e.into_inner()) = Some(pin);
    }

    fn login_as(&self, user_type: sys::CK_USER_TYPE, pin: &[u8], need_root: bool) -> Result<()> {
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
            rv = hsm!(
                self.module,
                C_Login(
                    h,
                    user_type,
                    pin.as_ptr() as *mut _,
                    pin.len() as sys::CK_ULONG
                )
            );
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
            | sys::CKR_PIN_LEN_RANGE
            | sys::CKR_USER_PIN_NOT_INITIALIZED
            | sys::CKR_USER_ANOTHER_ALREADY_LOGGED_IN
            | sys::CKR_USER_TYPE_INVALID
            | sys::CKR_SESSION_READ_ONLY_EXISTS => return Err(Error::rv(rv)),
            rv => return Err(device("C_Login", rv)),
        }
        if user_type == sys::CKU_USER && need_root {
            match self.find_root(h) {
                Ok(root) => *self.root.lock().unwrap_or_else(|e| e.into_inner()) = Some(root),
                Err(e) => {
                    let _ = hsm!(self.module, C_Logout(h));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Logs a user in for administration (`p11derive init`): the root may
    /// not exist yet, so it is not looked up.
    fn login_admin(&self, pin: &[u8]) -> Result<()> {
        self.login_as(sys::CKU_USER, pin, false)
    }

    /// (`Backend::logout` forgets the PIN first, even if this call hangs.)
    fn logout(&self) -> Result<()> {
        *self.root.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let anchor = *self.login_session.lock().unwrap_or_else(|e| e.into_inner());
        let Some(h) = anchor else {
            return Ok(());
        };
        match hsm!(self.module, C_Logout(h)) {
            sys::CKR_OK | sys::CKR_USER_NOT_LOGGED_IN => Ok(()),
            // The HSM already closed it, and with it the login.
            sys::CKR_SESSION_HANDLE_INVALID | sys::CKR_SESSION_CLOSED => {
                *self.login_session.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(())
            }
            rv => Err(device("C_Logout", rv)),
        }
    }

    /// Finds the one secret key labelled `root_label`.
    fn find_root(&self, h: sys::CK_SESSION_HANDLE) -> Result<sys::CK_OBJECT_HANDLE> {
        let found = self.find_secret_keys(h, &self.root_label)?;
        match found.as_slice() {
            [root] => Ok(*root),
            [] => Err(Error::with(
                ck::CKR_DEVICE_ERROR,
                format!(
                    "backing token {:?} has no root secret labelled {:?}; create it with \
                     `p11derive init` (or fix [backend] root_label)",
                    self.token_label, self.root_label
                ),
            )),
            many => Err(Error::with(
                ck::CKR_DEVICE_ERROR,
                format!(
                    "backing token {:?} holds {} secret keys labelled {:?}; the root must be \
                     unique: remove the extra ones with the HSM's own tools",
                    self.token_label,
                    many.len(),
                    self.root_label
                ),
            )),
        }
    }

    fn find_secret_keys(
        &self,
        h: sys::CK_SESSION_HANDLE,
        label: &str,
    ) -> Result<Vec<sys::CK_OBJECT_HANDLE>> {
        self.find_by_label(h, sys::CKO_SECRET_KEY, label)
    }

    /// Every object of `class` labelled `label` on the backing token.
    fn find_by_label(
        &self,
        h: sys::CK_SESSION_HANDLE,
        class: sys::CK_OBJECT_CLASS,
        label: &str,
    ) -> Result<Vec<sys::CK_OBJECT_HANDLE>> {
        let mut class = class;
        let mut template = [
            sys::CK_ATTRIBUTE {
                type_: sys::CKA_CLASS,
                pValue: &mut class as *mut _ as sys::CK_VOID_PTR,
                ulValueLen: std::mem::size_of::<sys::CK_OBJECT_CLASS>() as sys::CK_ULONG,
            },
            sys::CK_ATTRIBUTE {
                type_: sys::CKA_LABEL,
                pValue: label.as_ptr() as sys::CK_VOID_PTR,
                ulValueLen: label.len() as sys::CK_ULONG,
            },
        ];
        let rv = hsm!(
            self.module,
            C_FindObjectsInit(h, template.as_mut_ptr(), template.len() as sys::CK_ULONG)
        );
        if rv != sys::CKR_OK {
            return Err(device("C_FindObjectsInit", rv));
        }
        let mut found = Vec::new();
        loop {
            let mut batch = [0 as sys::CK_OBJECT_HANDLE; 16];
            let mut n: sys::CK_ULONG = 0;
            let rv = hsm!(
                self.module,
                C_FindObjects(h, batch.as_mut_ptr(), batch.len() as sys::CK_ULONG, &mut n)
            );
            if rv != sys::CKR_OK {
                let _ = hsm!(self.module, C_FindObjectsFinal(h));
                return Err(device("C_FindObjects", rv));
            }
            found.extend_from_slice(&batch[..n as usize]);
            if (n as usize) < batch.len() {
                break;
            }
        }
        let _ = hsm!(self.module, C_FindObjectsFinal(h));
        Ok(found)
    }

    /// `n` bytes from the backing HSM's random number generator, in the
    /// locked arena (they may become key material).
    fn random(&self, n: usize) -> Result<SecretBytes> {
        self.with_session(|h| {
            let mut out = SecretBytes::with_capacity(n.max(1))
                .map_err(|m| Error::with(ck::CKR_HOST_MEMORY, m))?;
            let rv = hsm!(
                self.module,
                C_GenerateRandom(h, out.spare().as_mut_ptr(), n as sys::CK_ULONG)
            );
            match rv {
                sys::CKR_OK => {
                    out.grow(n);
                    Ok(out)
                }
                rv => Err(device("C_GenerateRandom", rv)),
            }
        })
    }

    fn root_handle(&self) -> Result<sys::CK_OBJECT_HANDLE> {
        self.root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or(Error::rv(ck::CKR_USER_NOT_LOGGED_IN))
    }

    /// Creates the root inside the HSM: a 256-bit generic secret that never
    /// leaves it (sensitive, not extractable), usable only for HMAC signing.
    /// Requires a user login. Refuses when a root with that label exists.
    fn generate_root(&self) -> Result<()> {
        self.create_root(None)
    }

    /// Imports a given root (test vectors, recovery ceremonies) with the same
    /// attributes as a generated one.
    fn import_root(&self, value: &[u8; 32]) -> Result<()> {
        self.create_root(Some(value))
    }

    /// Whether a root with the configured label exists (needs a user login).
    fn root_exists(&self) -> Result<bool> {
        self.with_session(|h| Ok(!self.find_secret_keys(h, &self.root_label)?.is_empty()))
    }

    fn create_root(&self, value: Option<&[u8; 32]>) -> Result<()> {
        if self.root_exists()? {
            return Err(Error::with(
                ck::CKR_ATTRIBUTE_VALUE_INVALID,
                format!(
                    "backing token {:?} already holds a root labelled {:?}; refusing to create \
                     another",
                    self.token_label, self.root_label
                ),
            ));
        }
        let mut class = sys::CKO_SECRET_KEY;
        let mut key_type = sys::CKK_GENERIC_SECRET;
        let mut value_len: sys::CK_ULONG = 32;
        let mut yes = sys::CK_TRUE;
        let mut no = sys::CK_FALSE;
        let label = self.root_label.clone();
        let attr = |t: sys::CK_ATTRIBUTE_TYPE, p: sys::CK_VOID_PTR, l: usize| sys::CK_ATTRIBUTE {
            type_: t,
            pValue: p,
            ulValueLen: l as sys::CK_ULONG,
        };
        let b = std::mem::size_of::<sys::CK_BBOOL>();
        let u = std::mem::size_of::<sys::CK_ULONG>();
        let yes_p = &mut yes as *mut _ as sys::CK_VOID_PTR;
        let no_p = &mut no as *mut _ as sys::CK_VOID_PTR;
        let mut template = vec![
            attr(sys::CKA_CLASS, &mut class as *mut _ as _, u),
            attr(sys::CKA_KEY_TYPE, &mut key_type as *mut _ as _, u),
            attr(sys::CKA_LABEL, label.as_ptr() as _, label.len()),
            attr(sys::CKA_TOKEN, yes_p, b),
            attr(sys::CKA_PRIVATE, yes_p, b),
            attr(sys::CKA_SENSITIVE, yes_p, b),
            attr(sys::CKA_EXTRACTABLE, no_p, b),
            attr(sys::CKA_SIGN, yes_p, b),
            attr(sys::CKA_VERIFY, no_p, b),
            attr(sys::CKA_ENCRYPT, no_p, b),
            attr(sys::CKA_DECRYPT, no_p, b),
            attr(sys::CKA_WRAP, no_p, b),
            attr(sys::CKA_UNWRAP, no_p, b),
            attr(sys::CKA_DERIVE, no_p, b),
            attr(sys::CKA_MODIFIABLE, no_p, b),
        ];
        // The imported value is copied into the locked arena the HSM reads
        // from. The template is complete before the first attempt: after a
        // recovery `with_session` runs the closure again, with the same one.
        let mut secret = crate::secure::secret::<32>()?;
        match value {
            Some(v) => {
                secret.copy_from_slice(v);
                template.push(attr(sys::CKA_VALUE, secret.as_mut_ptr() as _, 32));
            }
            None => template.push(attr(sys::CKA_VALUE_LEN, &mut value_len as *mut _ as _, u)),
        }
        self.with_session(|h| {
            let mut handle: sys::CK_OBJECT_HANDLE = 0;
            let rv = match value {
                Some(_) => {
                    hsm!(
                        self.module,
                        C_CreateObject(h, template.as_mut_ptr(), template.len() as _, &mut handle)
                    )
                }
                None => {
                    let mut mech = sys::CK_MECHANISM {
                        mechanism: sys::CKM_GENERIC_SECRET_KEY_GEN,
                        pParameter: ptr::null_mut(),
                        ulParameterLen: 0,
                    };
                    hsm!(
                        self.module,
                        C_GenerateKey(
                            h,
                            &mut mech,
                            template.as_mut_ptr(),
                            template.len() as _,
                            &mut handle
                        )
                    )
                }
            };
            match rv {
                sys::CKR_OK => Ok(()),
                rv => Err(device(
                    if value.is_some() {
                        "C_CreateObject (root)"
                    } else {
                        "C_GenerateKey (root)"
                    },
                    rv,
                )),
            }
        })
    }

    /// The label of the rollback anchor (design §4): a private data object
    /// beside the root holding the sequence number and MAC of the newest
    /// audit record at the last anchoring.
    fn anchor_label(&self) -> String {
        format!("{}/anchor", self.root_label)
    }

    fn find_data(
        &self,
        h: sys::CK_SESSION_HANDLE,
        label: &str,
    ) -> Result<Vec<sys::CK_OBJECT_HANDLE>> {
        self.find_by_label(h, sys::CKO_DATA, label)
    }

    /// Each anchor object found with its (seq, mac).
    fn anchors(
        &self,
        h: sys::CK_SESSION_HANDLE,
    ) -> Result<Vec<(sys::CK_OBJECT_HANDLE, u64, [u8; 32])>> {
        let mut out = Vec::new();
        for obj in self.find_data(h, &self.anchor_label())? {
            let mut value = [0u8; 40];
            let mut attr = sys::CK_ATTRIBUTE {
                type_: sys::CKA_VALUE,
                pValue: value.as_mut_ptr() as sys::CK_VOID_PTR,
                ulValueLen: 40,
            };
            let rv = hsm!(self.module, C_GetAttributeValue(h, obj, &mut attr, 1));
            // Another process replaced the anchor between our find and read.
            if rv == sys::CKR_OBJECT_HANDLE_INVALID {
                continue;
            }
            if rv != sys::CKR_OK || attr.ulValueLen != 40 {
                return Err(Error::with(
                    ck::CKR_DEVICE_ERROR,
                    format!(
                        "the rollback anchor {:?} on backing token {:?} is unreadable ({})",
                        self.anchor_label(),
                        self.token_label,
                        rv_name(rv)
                    ),
                ));
            }
            let seq = u64::from_be_bytes(value[..8].try_into().unwrap_or([0; 8]));
            let mut mac = [0u8; 32];
            mac.copy_from_slice(&value[8..]);
            out.push((obj, seq, mac));
        }
        Ok(out)
    }

    /// The anchor's (sequence number, MAC), if one was written. Needs a user
    /// login: the anchor is a private object. Should two exist (a crash
    /// between writing the new one and removing the old), the newest counts.
    /// Another process may replace the anchor while we read it: an anchor
    /// that vanished between find and read is looked for again.
    fn read_anchor(&self) -> Result<Option<(u64, [u8; 32])>> {
        self.with_session(|h| {
            for _ in 0..5 {
                let found = self.find_data(h, &self.anchor_label())?.len();
                let anchors = self.anchors(h)?;
                if found > 0 && anchors.is_empty() {
                    continue;
                }
                return Ok(anchors
                    .into_iter()
                    .max_by_key(|(_, seq, _)| *seq)
                    .map(|(_, seq, mac)| (seq, mac)));
            }
            Err(Error::with(
                ck::CKR_DEVICE_ERROR,
                format!(
                    "the rollback anchor {:?} on backing token {:?} kept changing while read",
                    self.anchor_label(),
                    self.token_label
                ),
            ))
        })
    }

    /// Moves the anchor to (seq, mac): a new object is written first, then
    /// the older ones are removed (tokens may not allow changing a data
    /// object's value). Only forward, unless `reset` (an operator knowingly
    /// re-anchoring a restored store).
    fn write_anchor(&self, seq: u64, mac: &[u8; 32], reset: bool) -> Result<()> {
        let label = self.anchor_label();
        self.with_session(|h| {
            let old = self.anchors(h)?;
            if !reset && old.iter().any(|(_, held, _)| *held >= seq) {
                return Ok(());
            }
            let mut value = [0u8; 40];
            value[..8].copy_from_slice(&seq.to_be_bytes());
            value[8..].copy_from_slice(mac);
            let mut class = sys::CKO_DATA;
            let mut yes = sys::CK_TRUE;
            let app = b"p11derive";
            let b = std::mem::size_of::<sys::CK_BBOOL>() as sys::CK_ULONG;
            let attr = |t: sys::CK_ATTRIBUTE_TYPE, p: sys::CK_VOID_PTR, l: sys::CK_ULONG| {
                sys::CK_ATTRIBUTE {
                    type_: t,
                    pValue: p,
                    ulValueLen: l,
                }
            };
            let mut template = [
                attr(sys::CKA_CLASS, &mut class as *mut _ as _, 8),
                attr(sys::CKA_TOKEN, &mut yes as *mut _ as _, b),
                attr(sys::CKA_PRIVATE, &mut yes as *mut _ as _, b),
                attr(sys::CKA_LABEL, label.as_ptr() as _, label.len() as _),
                attr(sys::CKA_APPLICATION, app.as_ptr() as _, app.len() as _),
                attr(sys::CKA_VALUE, value.as_mut_ptr() as _, 40),
            ];
            let mut obj: sys::CK_OBJECT_HANDLE = 0;
            let rv = hsm!(
                self.module,
                C_CreateObject(h, template.as_mut_ptr(), template.len() as _, &mut obj)
            );
            if rv != sys::CKR_OK {
                return Err(device("C_CreateObject (anchor)", rv));
            }
            for (stale, _, _) in old {
                let _ = hsm!(self.module, C_DestroyObject(h, stale));
            }
            Ok(())
        })
    }

    /// Closes every session and, if p11derive initialized the module,
    /// finalizes it.
    /// (`Backend::finalize` forgets the PIN first, even if this call hangs.)
    fn finalize(&self) {
        *self.root.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.close_sessions(true);
        if self.owns_init {
            let _ = hsm!(self.module, C_Finalize(ptr::null_mut()));
        }
    }
}

impl Core {
    /// `HMAC-SHA256(root, input)` computed inside the HSM. The HSM writes the
    /// output straight into the locked arena.
    fn prf(&self, input: &[u8]) -> Result<Secret32> {
        self.with_session(|h| {
            let root = self.root_handle()?;
            let mut mech = sys::CK_MECHANISM {
                mechanism: sys::CKM_SHA256_HMAC,
                pParameter: ptr::null_mut(),
                ulParameterLen: 0,
            };
            let rv = hsm!(self.module, C_SignInit(h, &mut mech, root));
            if rv != sys::CKR_OK {
                return Err(device("C_SignInit(CKM_SHA256_HMAC, root)", rv));
            }
            let mut out = crate::secure::secret::<32>()?;
            let mut len: sys::CK_ULONG = 32;
            let rv = hsm!(
                self.module,
                C_Sign(
                    h,
                    input.as_ptr() as *mut _,
                    input.len() as _,
                    out.as_mut_ptr(),
                    &mut len
                )
            );
            if rv != sys::CKR_OK || len != 32 {
                return Err(device("C_Sign(CKM_SHA256_HMAC)", rv));
            }
            Ok(out)
        })
    }
}

/// A backing call to run on a worker.
type Job = Box<dyn FnOnce() + Send>;

/// Worker threads that make the backing calls, so a caller can stop waiting
/// for one that hangs (`[backend] call_timeout_ms`). A worker stuck in the
/// HSM stays with its call; the next callers get other workers.
#[derive(Default)]
struct Workers {
    state: Mutex<Queue>,
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: std::collections::VecDeque<Job>,
    idle: usize,
    closed: bool,
    /// Every worker started, to join at `close`.
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
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
                drop(q);
                job();
                q = self.state.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Ends the workers and waits for them: the application may unload the
    /// library right after `C_Finalize`, and no thread may still be running
    /// its code then. A worker stuck in a hung HSM for longer than `grace`
    /// is left behind (it cannot be stopped).
    fn close(&self, grace: std::time::Duration) {
        let threads = {
            let mut q = self.state.lock().unwrap_or_else(|e| e.into_inner());
            q.closed = true;
            std::mem::take(&mut q.threads)
        };
        self.wake.notify_all();
        let deadline = std::time::Instant::now() + grace;
        for t in threads {
            if t.thread().id() == std::thread::current().id() {
                continue;
            }
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                crate::log::warn("backing HSM: a call still has not returned; its thread is left");
            }
        }
    }
}

/// Whether the backing HSM is answering: after a failure that says it is
/// not (a timeout, `CKR_DEVICE_ERROR` and the like), calls fail at once
/// until a backoff delay has passed; then one call tries it, and the delay
/// doubles (up to `[backend] backoff_max_ms`) while it keeps failing.
#[derive(Default)]
struct Health {
    failures: u32,
    retry_at: Option<std::time::Instant>,
    probing: bool,
    last_error: String,
}

const BACKOFF_FIRST_MS: u64 = 100;

/// The backing HSM, reached through a second PKCS#11 module: every call
/// after `open` runs on a worker thread and is waited for at most
/// `call_timeout_ms` (`open` itself — loading the module, `C_Initialize`,
/// finding the token — runs on the caller's thread, without that limit);
/// while the HSM fails, calls fail at once with `CKR_DEVICE_ERROR` (backoff);
/// lost sessions and logins are recovered (see `Core::recover`).
pub struct Backend {
    core: Arc<Core>,
    workers: Arc<Workers>,
    health: Mutex<Health>,
    timeout: std::time::Duration,
    backoff_max: std::time::Duration,
}

impl Backend {
    /// Loads the module, initializes it and finds the backing token by label.
    /// `config_file` is only used in messages.
    pub fn open(cfg: &BackendSection, config_file: &Path) -> Result<Backend> {
        Ok(Backend {
            core: Arc::new(Core::open(cfg, config_file)?),
            workers: Arc::new(Workers::default()),
            health: Mutex::new(Health::default()),
            timeout: std::time::Duration::from_millis(cfg.call_timeout_ms),
            backoff_max: std::time::Duration::from_millis(cfg.backoff_max_ms),
        })
    }

    pub fn module_path(&self) -> &Path {
        &self.core.path
    }

    pub fn token_label(&self) -> &str {
        &self.core.token_label
    }

    /// Runs `f` on a worker, waiting at most the call timeout, unless the
    /// HSM is in its backoff delay.
    fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Core) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        {
            let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = h.retry_at {
                let now = std::time::Instant::now();
                if now < at || h.probing {
                    return Err(Error::with(
                        ck::CKR_DEVICE_ERROR,
                        format!(
                            "backing HSM (token {:?}) unavailable: {}; {what} not attempted, \
                             next attempt in {} ms",
                            self.core.token_label,
                            h.last_error,
                            at.saturating_duration_since(now).as_millis()
                        ),
                    ));
                }
                h.probing = true;
            }
        }
        let (out, down) = self.call_now(what, f);
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.probing = false;
        match &out {
            Err(e) if down => {
                h.failures = h.failures.saturating_add(1);
                let delay = std::time::Duration::from_millis(
                    BACKOFF_FIRST_MS.saturating_mul(1 << (h.failures - 1).min(16)),
                )
                .min(self.backoff_max);
                h.retry_at = Some(std::time::Instant::now() + delay);
                h.last_error = e.message.clone().unwrap_or_else(|| rv_name(e.rv).into());
                crate::log::warn(&format!(
                    "backing HSM: {what} failed ({}); failure {} in a row, next attempt in {} ms",
                    h.last_error,
                    h.failures,
                    delay.as_millis()
                ));
            }
            _ => {
                if h.failures > 0 {
                    crate::log::info(&format!(
                        "backing HSM: answering again after {} failed attempts",
                        h.failures
                    ));
                }
                *h = Health::default();
            }
        }
        out
    }

    /// Runs `f` on a worker and waits for it at most the call timeout.
    /// Also says whether the outcome shows the HSM down: a timeout, or a
    /// backing return code of a device that does not answer (a refused
    /// operation, such as a token-object write SoftHSM fails while another
    /// process writes its files, is an answer).
    fn call_now<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Core) -> Result<T> + Send + 'static,
    ) -> (Result<T>, bool) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let core = self.core.clone();
        let anchoring = ANCHORING.with(|a| a.get());
        let started = self.workers.run(Box::new(move || {
            ANCHORING.with(|a| a.set(anchoring));
            LAST_FAILURE.with(|l| l.set(sys::CKR_OK));
            let out = f(&core);
            let last = LAST_FAILURE.with(|l| l.get());
            ANCHORING.with(|a| a.set(false));
            // A caller that gave up is gone: the result (secrets included)
            // is dropped, and wiped, here.
            let _ = tx.send((out, last));
        }));
        if let Err(e) = started {
            return (
                Err(Error::with(
                    ck::CKR_HOST_MEMORY,
                    format!("cannot start a thread for backing HSM calls: {e}"),
                )),
                false,
            );
        }
        match rx.recv_timeout(self.timeout) {
            Ok((out, last)) => {
                let down = out.is_err()
                    && matches!(
                        last,
                        sys::CKR_DEVICE_ERROR
                            | sys::CKR_DEVICE_REMOVED
                            | sys::CKR_DEVICE_MEMORY
                            | sys::CKR_TOKEN_NOT_PRESENT
                            | sys::CKR_TOKEN_NOT_RECOGNIZED
                            | sys::CKR_CRYPTOKI_NOT_INITIALIZED
                    );
                (out, down)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => (
                Err(Error::with(
                    ck::CKR_DEVICE_ERROR,
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
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => (
                Err(Error::with(
                    ck::CKR_GENERAL_ERROR,
                    format!("backing HSM call {what} ended without a result"),
                )),
                false,
            ),
        }
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
            self.core.keep_pin(pin);
        }
        Ok(())
    }

    /// Logs a user in for administration (`p11derive init`): the root may
    /// not exist yet, so it is not looked up.
    pub fn login_admin(&self, pin: &[u8]) -> Result<()> {
        let pin = arena_copy(pin)?;
        self.call("C_Login", move |c| c.login_admin(&pin))
    }

    /// Logs out (tried even during the backoff delay: the login must end).
    pub fn logout(&self) -> Result<()> {
        self.core.forget_pin();
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

    pub fn generate_root(&self) -> Result<()> {
        self.call("C_GenerateKey (root)", |c| c.generate_root())
    }

    pub fn import_root(&self, value: &[u8; 32]) -> Result<()> {
        let mut v = crate::secure::secret::<32>()?;
        v.copy_from_slice(value);
        self.call("C_CreateObject (root)", move |c| c.import_root(&v))
    }

    pub fn root_exists(&self) -> Result<bool> {
        self.call("C_FindObjects (root)", |c| c.root_exists())
    }

    pub fn read_anchor(&self) -> Result<Option<(u64, [u8; 32])>> {
        self.call("reading the rollback anchor", |c| c.read_anchor())
    }

    pub fn write_anchor(&self, seq: u64, mac: &[u8; 32], reset: bool) -> Result<()> {
        let mac = *mac;
        self.call("writing the rollback anchor", move |c| {
            c.write_anchor(seq, &mac, reset)
        })
    }

    /// Closes every session and, if p11derive initialized the module,
    /// finalizes it; a hung HSM is left to its worker after the timeout.
    pub fn finalize(&self) {
        self.core.forget_pin();
        if let Err(e) = self
            .call_now("C_Finalize", |c| {
                c.finalize();
                Ok(())
            })
            .0
        {
            crate::log::warn(&format!("backing HSM: {e}"));
        }
        self.workers.close(self.timeout);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.workers.close(std::time::Duration::from_millis(200));
    }
}

/// A copy of a PIN in the locked arena, to hand to a worker.
fn arena_copy(pin: &[u8]) -> Result<SecretBytes> {
    let mut b = SecretBytes::with_capacity(pin.len().max(1))
        .map_err(|m| Error::with(ck::CKR_HOST_MEMORY, m))?;
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
}
