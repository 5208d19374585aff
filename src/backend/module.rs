//! The backing PKCS#11 module: loaded once per process, called only through one typed wrapper per function.
//!
//! Every `unsafe` of the backend is here. Each wrapper looks its function up
//! in the module's table (a missing entry is `CKR_FUNCTION_NOT_SUPPORTED`
//! rather than a crash), counts the call (`HSM_CALLS`, `ANCHOR_CALLS`), notes
//! a failing return code in `LAST_FAILURE` (for `Core::recover`), and says in
//! its own `SAFETY:` note which pointers it passes and why they are valid.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Mutex;

use crate::ck as sys;

use crate::error::rv_name;
use crate::process::PerProcess;

/// A loaded module's function table. Modules are never unloaded: many PKCS#11
/// modules (SoftHSM among them) do not survive `dlclose` and a later reload,
/// and applications may initialize and finalize p11derive many times.
///
/// `Module` is `Send` and `Sync` because the table is (a version and function
/// pointers): the compiler proves it, no `unsafe impl` says so. Calling the
/// functions from several threads is allowed by the module's initialization
/// with `CKF_OS_LOCKING_OK` (`initialize`; where the application or a parent
/// process initialized it first, p11derive uses it as that left it); that
/// thread-safety is part of what each wrapper's `SAFETY:` note relies on.
#[derive(Clone, Copy)]
pub(super) struct Module(&'static sys::CK_FUNCTION_LIST);

static MODULES: PerProcess<Mutex<HashMap<PathBuf, Module>>> =
    PerProcess::new(|| Mutex::new(HashMap::new()));

/// Loads the module at `path`, or returns the one this process loaded before.
pub(super) fn load_module(path: &Path) -> Result<Module, String> {
    let mut map = MODULES.get().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = map.get(path) {
        return Ok(*m);
    }
    let lib = open_library(path)?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    // SAFETY: C_GetFunctionList has this signature in every PKCS#11 version.
    let get: libloading::Symbol<
        unsafe extern "C" fn(*mut sys::CK_FUNCTION_LIST_PTR) -> sys::CK_RV,
    > = unsafe { lib.get(b"C_GetFunctionList\0") }
        .map_err(|_| "it exports no C_GetFunctionList".to_string())?;
    let mut fl: sys::CK_FUNCTION_LIST_PTR = ptr::null_mut();
    // SAFETY: `fl` is a valid out-pointer for the duration of the call.
    let rv = unsafe { get(&mut fl) };
    if rv != sys::CKR_OK || fl.is_null() {
        return Err(format!("C_GetFunctionList returned {}", rv_name(rv)));
    }
    // SAFETY: the table lives as long as the library, which is never unloaded.
    let module = Module(unsafe { &*fl });
    map.insert(path.to_path_buf(), module);
    watch_exit();
    Ok(module)
}

/// Set once the process runs its exit handlers: backing calls are then
/// not made (see [`watch_exit`]).
static EXITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(super) fn exiting() -> bool {
    EXITING.load(std::sync::atomic::Ordering::SeqCst)
}

extern "C" fn mark_exiting() {
    EXITING.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Registers, after a module was loaded, an exit handler that stops every
/// backing call. Exit handlers run newest first, so it runs before the
/// module's own teardown (SoftHSM destroys its state in C++ static
/// destructors registered while it loaded). An application that closes its
/// sessions from an exit handler registered earlier (OpenSSL's cleanup,
/// through libp11) then gets its sessions closed without calls into a
/// module that no longer exists, instead of a crash; the anchor's move at
/// that close is skipped (the next logged-in process moves it).
fn watch_exit() {
    // SAFETY: `mark_exiting` takes nothing and only stores to an atomic; it
    // stays mapped as long as this library is (glibc runs a library's exit
    // handlers when it is unloaded).
    unsafe {
        libc::atexit(mark_exiting);
    }
}

/// Opens the shared library at `path` (`RTLD_NOW | RTLD_LOCAL`, as
/// libloading would), or says why not in `dlerror()`'s words (the file
/// missing, a wrong ELF class, a library it needs…), read on this thread
/// right after the failed call.
fn open_library(path: &Path) -> Result<libloading::Library, String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| "the path holds a NUL byte".to_string())?;
    // SAFETY: loading a PKCS#11 module runs its initializers; the config names
    // a module the operator trusts with the root, so its code is trusted. The
    // path is NUL-terminated and outlives the call.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns this thread's last dynamic-linking error as
        // a NUL-terminated string (or null), valid until the thread's next
        // dl call; it is copied at once.
        let why = unsafe {
            let p = libc::dlerror();
            (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
        };
        return Err(why.unwrap_or_else(|| "dlopen failed and gave no reason".into()));
    }
    // SAFETY: `handle` is the live handle dlopen just returned; the Library
    // owns it from here (and is never dropped: modules stay loaded).
    Ok(unsafe { libloading::os::unix::Library::from_raw(handle) }.into())
}

thread_local! {
    /// The last failing return code of a backing call on this thread, for
    /// `Core::recover` to see what was lost.
    static LAST_FAILURE: std::cell::Cell<sys::CK_RV> = const { std::cell::Cell::new(0) };
}

/// The last failing return code of a backing call on this thread (or
/// `CKR_OK` since `set_last_failure(CKR_OK)`).
pub(super) fn last_failure() -> sys::CK_RV {
    LAST_FAILURE.with(|l| l.get())
}

pub(super) fn set_last_failure(rv: sys::CK_RV) {
    LAST_FAILURE.with(|l| l.set(rv));
}

fn count_call() {
    use std::sync::atomic::Ordering::Relaxed;
    super::HSM_CALLS.fetch_add(1, Relaxed);
    if super::ANCHORING.with(|a| a.get()) {
        super::ANCHOR_CALLS.fetch_add(1, Relaxed);
    }
}

/// Makes one backing call through `f`, an entry of the module's table: a
/// missing entry is `CKR_FUNCTION_NOT_SUPPORTED` (neither counted nor noted);
/// otherwise the call is counted and a failure noted in `LAST_FAILURE`. Once
/// the process is exiting, no call is made (`CKR_FUNCTION_FAILED`).
fn invoke<F>(f: Option<F>, call: impl FnOnce(F) -> sys::CK_RV) -> sys::CK_RV {
    if exiting() {
        // An answer, not a silent HSM: no backoff, no recovery at exit.
        set_last_failure(sys::CKR_FUNCTION_FAILED);
        return sys::CKR_FUNCTION_FAILED;
    }
    match f {
        Some(f) => {
            count_call();
            let rv = call(f);
            if rv != sys::CKR_OK {
                set_last_failure(rv);
            }
            rv
        }
        None => sys::CKR_FUNCTION_NOT_SUPPORTED,
    }
}

/// A backing function whose one argument is a session handle.
type SessionFn = unsafe extern "C" fn(sys::CK_SESSION_HANDLE) -> sys::CK_RV;

/// Calls a function whose one argument is a session handle
/// (`C_CloseSession`, `C_Logout`, `C_FindObjectsFinal`), through `invoke`.
fn invoke_on(f: Option<SessionFn>, h: sys::CK_SESSION_HANDLE) -> sys::CK_RV {
    invoke(f, |f| {
        // SAFETY: a handle passed by value; no pointers.
        unsafe { f(h) }
    })
}

/// An input template (`C_FindObjectsInit`, `C_CreateObject`,
/// `C_GenerateKey`) whose values are borrowed for `'a`: every `pValue` in it
/// points into a live value of the length it states while the template
/// exists. The module only reads an input template (PKCS#11 passes it as
/// `CK_ATTRIBUTE_PTR` without `const`, but never writes through it).
pub(super) struct Template<'a> {
    attrs: Vec<sys::CK_ATTRIBUTE>,
    values: PhantomData<&'a [u8]>,
}

impl<'a> Template<'a> {
    pub(super) fn new() -> Self {
        Template {
            attrs: Vec::new(),
            values: PhantomData,
        }
    }

    fn push(&mut self, t: sys::CK_ATTRIBUTE_TYPE, p: *const u8, len: usize) -> &mut Self {
        self.attrs.push(sys::CK_ATTRIBUTE {
            type_: t,
            pValue: p as sys::CK_VOID_PTR,
            ulValueLen: len as sys::CK_ULONG,
        });
        self
    }

    /// A `CK_ULONG` attribute (a class, a key type, a length).
    pub(super) fn ulong(&mut self, t: sys::CK_ATTRIBUTE_TYPE, v: &'a sys::CK_ULONG) -> &mut Self {
        let p = v as *const sys::CK_ULONG as *const u8;
        self.push(t, p, size_of::<sys::CK_ULONG>())
    }

    /// A `CK_BBOOL` attribute.
    pub(super) fn bool(&mut self, t: sys::CK_ATTRIBUTE_TYPE, v: &'a sys::CK_BBOOL) -> &mut Self {
        self.push(t, v as *const sys::CK_BBOOL, size_of::<sys::CK_BBOOL>())
    }

    /// A byte-string attribute (a label, a value).
    pub(super) fn bytes(&mut self, t: sys::CK_ATTRIBUTE_TYPE, v: &'a [u8]) -> &mut Self {
        self.push(t, v.as_ptr(), v.len())
    }
}

/// A mechanism without parameters.
fn mechanism(m: sys::CK_MECHANISM_TYPE) -> sys::CK_MECHANISM {
    sys::CK_MECHANISM {
        mechanism: m,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

impl Module {
    /// `C_Initialize`, letting the module use OS locking.
    pub(super) fn initialize(self) -> sys::CK_RV {
        let mut args = sys::CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: sys::CKF_OS_LOCKING_OK,
            pReserved: ptr::null_mut(),
        };
        invoke(self.0.C_Initialize, |f| {
            // SAFETY: `args` is a CK_C_INITIALIZE_ARGS on this frame, alive
            // for the call; its pointers are null (no callbacks, no reserved).
            unsafe { f(&mut args as *mut _ as sys::CK_VOID_PTR) }
        })
    }

    /// `C_Finalize(NULL)`.
    pub(super) fn finalize(self) -> sys::CK_RV {
        invoke(self.0.C_Finalize, |f| {
            // SAFETY: the one argument is the null pReserved PKCS#11 requires.
            unsafe { f(ptr::null_mut()) }
        })
    }

    /// `C_GetSlotList(CK_TRUE, …)`: with `None`, how many slots hold a
    /// token; with `Some(slots)`, fills `slots` (offering `slots.len()`) and
    /// says how many it wrote. Returns the code and the count.
    pub(super) fn get_slot_list(
        &self,
        slots: Option<&mut [sys::CK_SLOT_ID]>,
    ) -> (sys::CK_RV, sys::CK_ULONG) {
        let (list, mut count) = match slots {
            Some(s) => (s.as_mut_ptr(), s.len() as sys::CK_ULONG),
            None => (ptr::null_mut(), 0),
        };
        let rv = invoke(self.0.C_GetSlotList, |f| {
            // SAFETY: `list` is null (a count query) or points to a live,
            // exclusively borrowed buffer of `count` slot ids; `count` is a
            // local out-value.
            unsafe { f(sys::CK_TRUE as sys::CK_BBOOL, list, &mut count) }
        });
        (rv, count)
    }

    /// `C_GetTokenInfo(slot)`.
    pub(super) fn get_token_info(&self, slot: sys::CK_SLOT_ID) -> (sys::CK_RV, sys::CK_TOKEN_INFO) {
        let mut info = sys::CK_TOKEN_INFO::default();
        let rv = invoke(self.0.C_GetTokenInfo, |f| {
            // SAFETY: `info` is a local CK_TOKEN_INFO the module fills.
            unsafe { f(slot, &mut info) }
        });
        (rv, info)
    }

    /// `C_OpenSession(slot, flags)` without application data or callback.
    pub(super) fn open_session(
        &self,
        slot: sys::CK_SLOT_ID,
        flags: sys::CK_FLAGS,
    ) -> (sys::CK_RV, sys::CK_SESSION_HANDLE) {
        let mut h: sys::CK_SESSION_HANDLE = 0;
        let rv = invoke(self.0.C_OpenSession, |f| {
            // SAFETY: pApplication is null and Notify absent (never called);
            // `h` is a local out-value.
            unsafe { f(slot, flags, ptr::null_mut(), None, &mut h) }
        });
        (rv, h)
    }

    /// `C_CloseSession(h)`.
    pub(super) fn close_session(&self, h: sys::CK_SESSION_HANDLE) -> sys::CK_RV {
        invoke_on(self.0.C_CloseSession, h)
    }

    /// `C_Login(h, user_type, pin)`.
    pub(super) fn login(
        &self,
        h: sys::CK_SESSION_HANDLE,
        user_type: sys::CK_USER_TYPE,
        pin: &[u8],
    ) -> sys::CK_RV {
        invoke(self.0.C_Login, |f| {
            // SAFETY: `pin` is a live slice of `pin.len()` bytes; the module
            // only reads pPin (an input, non-const in the C declaration).
            unsafe {
                f(
                    h,
                    user_type,
                    pin.as_ptr() as *mut _,
                    pin.len() as sys::CK_ULONG,
                )
            }
        })
    }

    /// `C_Logout(h)`.
    pub(super) fn logout(&self, h: sys::CK_SESSION_HANDLE) -> sys::CK_RV {
        invoke_on(self.0.C_Logout, h)
    }

    /// `C_FindObjectsInit(h, template)`.
    pub(super) fn find_objects_init(
        &self,
        h: sys::CK_SESSION_HANDLE,
        template: &mut Template<'_>,
    ) -> sys::CK_RV {
        let attrs = &mut template.attrs;
        invoke(self.0.C_FindObjectsInit, |f| {
            // SAFETY: `attrs` holds `attrs.len()` attributes whose values are
            // borrowed for the template's life (`Template`); read only.
            unsafe { f(h, attrs.as_mut_ptr(), attrs.len() as sys::CK_ULONG) }
        })
    }

    /// `C_FindObjects(h, found)`, offering `found.len()` places; returns the
    /// code and how many handles were written.
    pub(super) fn find_objects(
        &self,
        h: sys::CK_SESSION_HANDLE,
        found: &mut [sys::CK_OBJECT_HANDLE],
    ) -> (sys::CK_RV, sys::CK_ULONG) {
        let mut n: sys::CK_ULONG = 0;
        let rv = invoke(self.0.C_FindObjects, |f| {
            // SAFETY: `found` is a live, exclusively borrowed buffer of
            // `found.len()` handles; `n` is a local out-value.
            unsafe { f(h, found.as_mut_ptr(), found.len() as sys::CK_ULONG, &mut n) }
        });
        (rv, n)
    }

    /// `C_FindObjectsFinal(h)`.
    pub(super) fn find_objects_final(&self, h: sys::CK_SESSION_HANDLE) -> sys::CK_RV {
        invoke_on(self.0.C_FindObjectsFinal, h)
    }

    /// `C_SignInit(h, mechanism without parameters, key)`.
    pub(super) fn sign_init(
        &self,
        h: sys::CK_SESSION_HANDLE,
        m: sys::CK_MECHANISM_TYPE,
        key: sys::CK_OBJECT_HANDLE,
    ) -> sys::CK_RV {
        let mut mech = mechanism(m);
        invoke(self.0.C_SignInit, |f| {
            // SAFETY: `mech` is a local CK_MECHANISM with no parameter
            // (null, length 0), alive for the call.
            unsafe { f(h, &mut mech, key) }
        })
    }

    /// `C_Sign(h, data)` into `signature` (offering `signature.len()` bytes);
    /// returns the code and the length the module reports.
    pub(super) fn sign(
        &self,
        h: sys::CK_SESSION_HANDLE,
        data: &[u8],
        signature: &mut [u8],
    ) -> (sys::CK_RV, sys::CK_ULONG) {
        let mut len = signature.len() as sys::CK_ULONG;
        let rv = invoke(self.0.C_Sign, |f| {
            // SAFETY: `data` is a live slice of `data.len()` bytes the module
            // only reads (non-const in the C declaration); `signature` is a
            // live, exclusively borrowed buffer of `len` bytes; `len` is a
            // local in/out value.
            unsafe {
                f(
                    h,
                    data.as_ptr() as *mut _,
                    data.len() as _,
                    signature.as_mut_ptr(),
                    &mut len,
                )
            }
        });
        (rv, len)
    }

    /// `C_GenerateRandom(h)`, filling all of `out`.
    pub(super) fn generate_random(&self, h: sys::CK_SESSION_HANDLE, out: &mut [u8]) -> sys::CK_RV {
        invoke(self.0.C_GenerateRandom, |f| {
            // SAFETY: `out` is a live, exclusively borrowed buffer of
            // `out.len()` bytes.
            unsafe { f(h, out.as_mut_ptr(), out.len() as sys::CK_ULONG) }
        })
    }

    /// `C_SeedRandom(h, seed)`: mixes the caller's seed into the module's RNG.
    pub(super) fn seed_random(&self, h: sys::CK_SESSION_HANDLE, seed: &[u8]) -> sys::CK_RV {
        invoke(self.0.C_SeedRandom, |f| {
            // SAFETY: `seed` is a live buffer of `seed.len()` bytes, only
            // read (PKCS#11 passes it without `const`).
            unsafe { f(h, seed.as_ptr() as *mut u8, seed.len() as sys::CK_ULONG) }
        })
    }

    /// `C_CreateObject(h, template)`; returns the code and the new handle.
    pub(super) fn create_object(
        &self,
        h: sys::CK_SESSION_HANDLE,
        template: &mut Template<'_>,
    ) -> (sys::CK_RV, sys::CK_OBJECT_HANDLE) {
        let attrs = &mut template.attrs;
        let mut obj: sys::CK_OBJECT_HANDLE = 0;
        let rv = invoke(self.0.C_CreateObject, |f| {
            // SAFETY: `attrs` holds `attrs.len()` attributes whose values are
            // borrowed for the template's life (`Template`); read only. `obj`
            // is a local out-value.
            unsafe { f(h, attrs.as_mut_ptr(), attrs.len() as _, &mut obj) }
        });
        (rv, obj)
    }

    /// `C_DestroyObject(h, obj)`.
    pub(super) fn destroy_object(
        &self,
        h: sys::CK_SESSION_HANDLE,
        obj: sys::CK_OBJECT_HANDLE,
    ) -> sys::CK_RV {
        invoke(self.0.C_DestroyObject, |f| {
            // SAFETY: handles passed by value; no pointers.
            unsafe { f(h, obj) }
        })
    }

    /// `C_GetAttributeValue(h, obj)` of one attribute `t` into `value`
    /// (offering `value.len()` bytes); returns the code and the attribute's
    /// length as the module reports it.
    pub(super) fn get_attribute_value(
        &self,
        h: sys::CK_SESSION_HANDLE,
        obj: sys::CK_OBJECT_HANDLE,
        t: sys::CK_ATTRIBUTE_TYPE,
        value: &mut [u8],
    ) -> (sys::CK_RV, sys::CK_ULONG) {
        let mut attr = sys::CK_ATTRIBUTE {
            type_: t,
            pValue: value.as_mut_ptr() as sys::CK_VOID_PTR,
            ulValueLen: value.len() as sys::CK_ULONG,
        };
        let rv = invoke(self.0.C_GetAttributeValue, |f| {
            // SAFETY: one local attribute (count 1) whose pValue points to
            // the live, exclusively borrowed `value` of ulValueLen bytes.
            unsafe { f(h, obj, &mut attr, 1) }
        });
        (rv, attr.ulValueLen)
    }

    /// `C_GenerateKey(h, mechanism without parameters, template)`; returns
    /// the code and the new key's handle.
    pub(super) fn generate_key(
        &self,
        h: sys::CK_SESSION_HANDLE,
        m: sys::CK_MECHANISM_TYPE,
        template: &mut Template<'_>,
    ) -> (sys::CK_RV, sys::CK_OBJECT_HANDLE) {
        let mut mech = mechanism(m);
        let attrs = &mut template.attrs;
        let mut key: sys::CK_OBJECT_HANDLE = 0;
        let rv = invoke(self.0.C_GenerateKey, |f| {
            // SAFETY: `mech` is a local CK_MECHANISM with no parameter;
            // `attrs` holds `attrs.len()` attributes whose values are borrowed
            // for the template's life (`Template`), read only; `key` is a
            // local out-value.
            unsafe { f(h, &mut mech, attrs.as_mut_ptr(), attrs.len() as _, &mut key) }
        });
        (rv, key)
    }
}
