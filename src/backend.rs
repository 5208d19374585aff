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
use std::sync::Mutex;

use cryptoki_sys as sys;

use crate::ck;
use crate::config::BackendSection;
use crate::derive::{Prf, Secret32};
use crate::error::{rv_name, Error, Result};
use crate::process::PerProcess;

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

/// Calls a function of the module's table; a missing entry is
/// `CKR_FUNCTION_NOT_SUPPORTED` rather than a crash.
/// Calls made into the backing module by this process (for the statistics
/// the provider logs at C_Finalize).
pub static HSM_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Of those, the calls made while moving the rollback anchor.
pub static ANCHOR_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// Set while this thread moves the rollback anchor (see `anchoring`).
    static ANCHORING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
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

macro_rules! hsm {
    ($m:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $m.0.$f {
            // SAFETY: the pointer comes from the module's own function table and
            // every argument is valid for the duration of the call (see callers).
            Some(f) => {
                count_call();
                unsafe { f($($arg),*) }
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

pub struct Backend {
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
}

// SAFETY: the function table is immutable static data of a module that was
// initialized with CKF_OS_LOCKING_OK, so it may be called from any thread;
// every other field is Send + Sync.
unsafe impl Send for Backend {}
unsafe impl Sync for Backend {}

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

impl Backend {
    /// Loads the module, initializes it and finds the backing token by label.
    /// `config_file` is only used in messages.
    pub fn open(cfg: &BackendSection, config_file: &Path) -> Result<Backend> {
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
        let mut backend = Backend {
            module,
            path: cfg.module.clone(),
            slot: 0,
            token_label: cfg.token_label.clone(),
            root_label: cfg.root_label.clone(),
            owns_init,
            idle: Mutex::new(Vec::new()),
            login_session: Mutex::new(None),
            root: Mutex::new(None),
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

    pub fn module_path(&self) -> &Path {
        &self.path
    }

    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    pub fn token_info(&self) -> Result<BackingTokenInfo> {
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

    fn close_session(&self, h: sys::CK_SESSION_HANDLE) {
        let _ = hsm!(self.module, C_CloseSession(h));
    }

    /// Runs `f` on a pooled session. A session is returned to the pool only
    /// when `f` succeeded, so a half-finished operation never leaks into the
    /// next caller's session.
    fn with_session<T>(&self, f: impl FnOnce(sys::CK_SESSION_HANDLE) -> Result<T>) -> Result<T> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let h = match pooled {
            Some(h) => h,
            None => self.open_session()?,
        };
        let out = f(h);
        if out.is_ok() {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(h);
        } else {
            self.close_session(h);
        }
        out
    }

    /// Logs in to the backing token (`user_type` is CKU_USER or CKU_SO) and,
    /// for a user, finds the root. The PIN is passed through and not kept.
    pub fn login(&self, user_type: sys::CK_USER_TYPE, pin: &[u8]) -> Result<()> {
        self.login_as(user_type, pin, true)
    }

    fn login_as(&self, user_type: sys::CK_USER_TYPE, pin: &[u8], need_root: bool) -> Result<()> {
        let mut anchor = self.login_session.lock().unwrap_or_else(|e| e.into_inner());
        let h = match *anchor {
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
    pub fn login_admin(&self, pin: &[u8]) -> Result<()> {
        self.login_as(sys::CKU_USER, pin, false)
    }

    pub fn logout(&self) -> Result<()> {
        *self.root.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let anchor = *self.login_session.lock().unwrap_or_else(|e| e.into_inner());
        let Some(h) = anchor else {
            return Ok(());
        };
        match hsm!(self.module, C_Logout(h)) {
            sys::CKR_OK | sys::CKR_USER_NOT_LOGGED_IN => Ok(()),
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

    /// Fills `out` from the backing HSM's random number generator.
    pub fn random(&self, out: &mut [u8]) -> Result<()> {
        self.with_session(|h| {
            let rv = hsm!(
                self.module,
                C_GenerateRandom(h, out.as_mut_ptr(), out.len() as sys::CK_ULONG)
            );
            match rv {
                sys::CKR_OK => Ok(()),
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
    pub fn generate_root(&self) -> Result<()> {
        self.create_root(None)
    }

    /// Imports a given root (test vectors, recovery ceremonies) with the same
    /// attributes as a generated one.
    pub fn import_root(&self, value: &[u8; 32]) -> Result<()> {
        self.create_root(Some(value))
    }

    /// Whether a root with the configured label exists (needs a user login).
    pub fn root_exists(&self) -> Result<bool> {
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
        // The imported value is copied into the locked arena the HSM reads from.
        let mut secret = crate::secure::secret::<32>()?;
        self.with_session(|h| {
            let mut handle: sys::CK_OBJECT_HANDLE = 0;
            let rv = match value {
                Some(v) => {
                    secret.copy_from_slice(v);
                    template.push(attr(sys::CKA_VALUE, secret.as_mut_ptr() as _, 32));
                    hsm!(
                        self.module,
                        C_CreateObject(h, template.as_mut_ptr(), template.len() as _, &mut handle)
                    )
                }
                None => {
                    template.push(attr(sys::CKA_VALUE_LEN, &mut value_len as *mut _ as _, u));
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
    pub fn read_anchor(&self) -> Result<Option<(u64, [u8; 32])>> {
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
    pub fn write_anchor(&self, seq: u64, mac: &[u8; 32], reset: bool) -> Result<()> {
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
    pub fn finalize(&self) {
        *self.root.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for h in idle {
            self.close_session(h);
        }
        if let Some(h) = self
            .login_session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = hsm!(self.module, C_Logout(h));
            self.close_session(h);
        }
        if self.owns_init {
            let _ = hsm!(self.module, C_Finalize(ptr::null_mut()));
        }
    }
}

impl Prf for Backend {
    /// `HMAC-SHA256(root, input)` computed inside the HSM. The HSM writes the
    /// output straight into the locked arena.
    fn prf(&self, input: &[u8]) -> Result<Secret32> {
        let root = self.root_handle()?;
        self.with_session(|h| {
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
