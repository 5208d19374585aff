//! `libfaultshim.so`: a PKCS#11 module for the reliability tests. It forwards
//! every call to a real module (`FAULTSHIM_MODULE`, default SoftHSM) and, when
//! a test tells it to, makes the backing HSM misbehave:
//!
//! - `faultshim_fail(rv)`: every forwarded call returns `rv` (a dead HSM);
//! - `faultshim_stall()`: every forwarded call blocks until healed (a hung HSM);
//! - `faultshim_fail_login(rv)`: C_Login alone returns `rv` (0: forwarded),
//!   as when the PIN was changed on the HSM;
//! - `faultshim_heal()`: back to forwarding (C_Login too);
//! - `faultshim_drop_sessions()`: closes every session of this process on the
//!   real module now, which also ends the login (an HSM restart);
//! - `faultshim_logout()`: logs this process out of the real module now;
//! - `faultshim_calls()`: calls that reached the shim (forwarded or failed);
//! - `faultshim_stalled()`: calls blocked right now;
//! - `faultshim_logins()`: C_Login calls that reached the shim.
//! - `faultshim_slow_reads(ms)`: C_GetAttributeValue first sleeps `ms` (a
//!   slow HSM; 0: none);
//! - `faultshim_overlaps()`: C_Finalize calls that arrived while another
//!   call was still inside the module (which PKCS#11 leaves undefined, and
//!   after which SoftHSM frees what that call uses).
//!
//! The test loads the same file (dlopen returns the instance the provider
//! loaded) to reach these controls. C_Initialize, C_Finalize, C_GetInfo and
//! C_GetFunctionList are always forwarded, so the shim can be set up and torn
//! down whatever the fault.

use cryptoki_sys as sys;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::OnceLock;

const PASS: u64 = 0;
const FAIL: u64 = 1;
const STALL: u64 = 2;

static MODE: AtomicU64 = AtomicU64::new(PASS);
static FAIL_RV: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);
static STALLED: AtomicU64 = AtomicU64::new(0);
static LOGIN_RV: AtomicU64 = AtomicU64::new(0);
static LOGINS: AtomicU64 = AtomicU64::new(0);
static DELAY_MS: AtomicU64 = AtomicU64::new(0);
static INSIDE: AtomicU64 = AtomicU64::new(0);
static OVERLAPS: AtomicU64 = AtomicU64::new(0);

struct Table(sys::CK_FUNCTION_LIST);
// SAFETY: the table is written once, then only read.
unsafe impl Sync for Table {}
// SAFETY: as above: nothing writes it after it is built.
unsafe impl Send for Table {}

fn real() -> &'static sys::CK_FUNCTION_LIST {
    static REAL: OnceLock<Table> = OnceLock::new();
    &REAL
        .get_or_init(|| {
            let path = std::env::var("FAULTSHIM_MODULE")
                .unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into());
            // SAFETY: loading the module the test named; never unloaded.
            let lib = unsafe { libloading::Library::new(&path) }
                .unwrap_or_else(|e| panic!("faultshim: cannot load {path}: {e}"));
            let lib: &'static libloading::Library = Box::leak(Box::new(lib));
            // SAFETY: the PKCS#11 signature of C_GetFunctionList.
            let get: libloading::Symbol<
                unsafe extern "C" fn(*mut sys::CK_FUNCTION_LIST_PTR) -> sys::CK_RV,
            > = unsafe { lib.get(b"C_GetFunctionList\0") }.expect("C_GetFunctionList");
            let mut fl: sys::CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
            // SAFETY: valid out-pointer.
            let rv = unsafe { get(&mut fl) };
            assert!(
                rv == sys::CKR_OK && !fl.is_null(),
                "faultshim: C_GetFunctionList"
            );
            // SAFETY: the module's table lives as long as the module.
            Table(unsafe { *fl })
        })
        .0
}

/// What a forwarded call must do first: `Some(rv)` to fail with it.
fn before(name: &str) -> Option<sys::CK_RV> {
    CALLS.fetch_add(1, SeqCst);
    if name == "C_Login" {
        LOGINS.fetch_add(1, SeqCst);
        let rv = LOGIN_RV.load(SeqCst);
        if rv != 0 {
            return Some(rv);
        }
    }
    if MODE.load(SeqCst) == STALL {
        STALLED.fetch_add(1, SeqCst);
        while MODE.load(SeqCst) == STALL {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        STALLED.fetch_sub(1, SeqCst);
    }
    let delay = DELAY_MS.load(SeqCst);
    if delay > 0 && name == "C_GetAttributeValue" {
        std::thread::sleep(std::time::Duration::from_millis(delay));
    }
    (MODE.load(SeqCst) == FAIL).then(|| FAIL_RV.load(SeqCst))
}

/// Counts a forwarded call as inside the module until it returns.
struct Inside;

impl Inside {
    fn enter() -> Self {
        INSIDE.fetch_add(1, SeqCst);
        Inside
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        INSIDE.fetch_sub(1, SeqCst);
    }
}

/// Forwarded, after noting whether a call is still inside the module.
unsafe extern "C" fn finalize(reserved: *mut std::ffi::c_void) -> sys::CK_RV {
    if INSIDE.load(SeqCst) > 0 {
        OVERLAPS.fetch_add(1, SeqCst);
    }
    match real().C_Finalize {
        // SAFETY: the caller's argument, passed on unchanged.
        Some(f) => unsafe { f(reserved) },
        None => sys::CKR_FUNCTION_NOT_SUPPORTED,
    }
}

macro_rules! forward {
    ($($name:ident ( $($a:ident : $t:ty),* );)*) => {
        $(
            #[allow(non_snake_case)]
            unsafe extern "C" fn $name($($a: $t),*) -> sys::CK_RV {
                let _inside = Inside::enter();
                if let Some(rv) = before(stringify!($name)) {
                    return rv;
                }
                match real().$name {
                    // SAFETY: the caller's arguments, passed on unchanged.
                    Some(f) => unsafe { f($($a),*) },
                    None => sys::CKR_FUNCTION_NOT_SUPPORTED,
                }
            }
        )*
        fn table() -> &'static sys::CK_FUNCTION_LIST {
            static TABLE: OnceLock<Table> = OnceLock::new();
            &TABLE
                .get_or_init(|| {
                    let mut t = *real();
                    t.C_GetFunctionList = Some(C_GetFunctionList);
                    t.C_Finalize = Some(finalize);
                    $( t.$name = Some($name); )*
                    Table(t)
                })
                .0
        }
    };
}

forward! {
    C_GetSlotList(a: sys::CK_BBOOL, b: *mut sys::CK_SLOT_ID, c: *mut sys::CK_ULONG);
    C_GetSlotInfo(a: sys::CK_SLOT_ID, b: *mut sys::CK_SLOT_INFO);
    C_GetTokenInfo(a: sys::CK_SLOT_ID, b: *mut sys::CK_TOKEN_INFO);
    C_OpenSession(a: sys::CK_SLOT_ID, b: sys::CK_FLAGS, c: *mut std::ffi::c_void, d: sys::CK_NOTIFY, e: *mut sys::CK_SESSION_HANDLE);
    C_CloseSession(a: sys::CK_SESSION_HANDLE);
    C_CloseAllSessions(a: sys::CK_SLOT_ID);
    C_GetSessionInfo(a: sys::CK_SESSION_HANDLE, b: *mut sys::CK_SESSION_INFO);
    C_Login(a: sys::CK_SESSION_HANDLE, b: sys::CK_USER_TYPE, c: *mut sys::CK_UTF8CHAR, d: sys::CK_ULONG);
    C_Logout(a: sys::CK_SESSION_HANDLE);
    C_CreateObject(a: sys::CK_SESSION_HANDLE, b: *mut sys::CK_ATTRIBUTE, c: sys::CK_ULONG, d: *mut sys::CK_OBJECT_HANDLE);
    C_DestroyObject(a: sys::CK_SESSION_HANDLE, b: sys::CK_OBJECT_HANDLE);
    C_GetAttributeValue(a: sys::CK_SESSION_HANDLE, b: sys::CK_OBJECT_HANDLE, c: *mut sys::CK_ATTRIBUTE, d: sys::CK_ULONG);
    C_SetAttributeValue(a: sys::CK_SESSION_HANDLE, b: sys::CK_OBJECT_HANDLE, c: *mut sys::CK_ATTRIBUTE, d: sys::CK_ULONG);
    C_FindObjectsInit(a: sys::CK_SESSION_HANDLE, b: *mut sys::CK_ATTRIBUTE, c: sys::CK_ULONG);
    C_FindObjects(a: sys::CK_SESSION_HANDLE, b: *mut sys::CK_OBJECT_HANDLE, c: sys::CK_ULONG, d: *mut sys::CK_ULONG);
    C_FindObjectsFinal(a: sys::CK_SESSION_HANDLE);
    C_SignInit(a: sys::CK_SESSION_HANDLE, b: *mut sys::CK_MECHANISM, c: sys::CK_OBJECT_HANDLE);
    C_Sign(a: sys::CK_SESSION_HANDLE, b: *mut sys::CK_BYTE, c: sys::CK_ULONG, d: *mut sys::CK_BYTE, e: *mut sys::CK_ULONG);
    C_GenerateKey(a: sys::CK_SESSION_HANDLE, b: *mut sys::CK_MECHANISM, c: *mut sys::CK_ATTRIBUTE, d: sys::CK_ULONG, e: *mut sys::CK_OBJECT_HANDLE);
    C_GenerateRandom(a: sys::CK_SESSION_HANDLE, b: *mut sys::CK_BYTE, c: sys::CK_ULONG);
}

/// # Safety
/// `list` must be a valid pointer to write the table's address to.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: sys::CK_FUNCTION_LIST_PTR_PTR) -> sys::CK_RV {
    if list.is_null() {
        return sys::CKR_ARGUMENTS_BAD;
    }
    // SAFETY: checked non-null; the caller owns the pointer.
    unsafe { *list = table() as *const _ as sys::CK_FUNCTION_LIST_PTR };
    sys::CKR_OK
}

#[no_mangle]
pub extern "C" fn faultshim_fail(rv: u64) {
    FAIL_RV.store(rv, SeqCst);
    MODE.store(FAIL, SeqCst);
}

#[no_mangle]
pub extern "C" fn faultshim_stall() {
    MODE.store(STALL, SeqCst);
}

#[no_mangle]
pub extern "C" fn faultshim_heal() {
    LOGIN_RV.store(0, SeqCst);
    DELAY_MS.store(0, SeqCst);
    MODE.store(PASS, SeqCst);
}

#[no_mangle]
pub extern "C" fn faultshim_fail_login(rv: u64) {
    LOGIN_RV.store(rv, SeqCst);
}

#[no_mangle]
pub extern "C" fn faultshim_logins() -> u64 {
    LOGINS.load(SeqCst)
}

#[no_mangle]
pub extern "C" fn faultshim_slow_reads(ms: u64) {
    DELAY_MS.store(ms, SeqCst);
}

#[no_mangle]
pub extern "C" fn faultshim_overlaps() -> u64 {
    OVERLAPS.load(SeqCst)
}

#[no_mangle]
pub extern "C" fn faultshim_calls() -> u64 {
    CALLS.load(SeqCst)
}

#[no_mangle]
pub extern "C" fn faultshim_stalled() -> u64 {
    STALLED.load(SeqCst)
}

/// The slots with a token, on the real module.
fn slots() -> Vec<sys::CK_SLOT_ID> {
    let f = real().C_GetSlotList.expect("C_GetSlotList");
    let mut n: sys::CK_ULONG = 0;
    // SAFETY: length query with a valid out-pointer.
    unsafe { f(sys::CK_TRUE, std::ptr::null_mut(), &mut n) };
    let mut slots = vec![0; n as usize];
    // SAFETY: the buffer holds `n` slots.
    unsafe { f(sys::CK_TRUE, slots.as_mut_ptr(), &mut n) };
    slots.truncate(n as usize);
    slots
}

/// Closes every session of this process on every slot of the real module.
#[no_mangle]
pub extern "C" fn faultshim_drop_sessions() -> u64 {
    let f = real().C_CloseAllSessions.expect("C_CloseAllSessions");
    for slot in slots() {
        // SAFETY: a slot id the module gave.
        unsafe { f(slot) };
    }
    sys::CKR_OK
}

/// Logs this process out of every token of the real module (PKCS#11 login
/// state is per application, so one session's logout ends it for all).
#[no_mangle]
pub extern "C" fn faultshim_logout() -> u64 {
    let t = real();
    let mut last = sys::CKR_OK;
    for slot in slots() {
        let mut h: sys::CK_SESSION_HANDLE = 0;
        // SAFETY: valid out-pointer; no callback.
        let rv = unsafe {
            t.C_OpenSession.expect("C_OpenSession")(
                slot,
                sys::CKF_SERIAL_SESSION,
                std::ptr::null_mut(),
                None,
                &mut h,
            )
        };
        if rv != sys::CKR_OK {
            // A token this process cannot open (not ours): nothing to log out.
            continue;
        }
        // SAFETY: the session just opened.
        unsafe {
            let rv = t.C_Logout.expect("C_Logout")(h);
            if rv != sys::CKR_OK && rv != sys::CKR_USER_NOT_LOGGED_IN {
                last = rv;
            }
            t.C_CloseSession.expect("C_CloseSession")(h);
        }
    }
    last
}
