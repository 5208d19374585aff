//! The C surface: the three exported symbols, the 2.40 and 3.0 function tables and the library state.
//!
//! Each entry point is a thin wrapper: check the library state, convert the
//! arguments ([`convert`], the one place where raw pointers, counts and
//! templates become Rust values), call [`crate::token`], turn the result into
//! a CK_RV. No panic crosses this boundary. The entry points are grouped by
//! the chapter of PKCS#11 3.0 they implement: general purpose (§5.4, here),
//! [`slot`] (§5.5), [`session`] (§5.6), [`object`] (§5.7, §5.18),
//! [`crypt`] (§5.8, §5.10), [`sign`] (§5.12, §5.13, §5.15, §5.19, §5.20).
//! The entry points that are nothing but one shape of argument conversion
//! and one provider call are defined by `entry_points!` ([`shape`]).
//! Functions p11derive does not implement answer `CKR_FUNCTION_NOT_SUPPORTED`.

#![allow(non_snake_case)]

mod convert;
#[macro_use]
mod shape;
mod crypt;
mod message;
mod object;
mod session;
mod sign;
mod slot;

use convert::out;
use crypt::*;
use message::*;
use object::*;
use session::*;
use shape::with_provider;
use sign::*;
use slot::*;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, RwLock};

use crate::ck::*;
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::log;
use crate::process::{self, PerProcess};
use crate::token::Provider;

// ---- library state --------------------------------------------------------

/// The initialized provider of this process. A forked child starts with none
/// (see [`crate::process`]) and must call C_Initialize again.
static PROVIDER: PerProcess<RwLock<Option<Arc<Provider>>>> = PerProcess::new(|| RwLock::new(None));
/// Serializes C_Initialize and C_Finalize.
static INIT: PerProcess<Mutex<()>> = PerProcess::new(|| Mutex::new(()));

/// The provider, if this process initialized it. The lock is held only to
/// clone the handle, never while a function works.
fn provider() -> Result<Arc<Provider>> {
    PROVIDER
        .get()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or(Error::rv(CKR_CRYPTOKI_NOT_INITIALIZED))
}

/// Runs an entry point: catches panics, logs messages meant for a person.
fn entry(name: &str, f: impl FnOnce() -> Result<()>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(e)) => {
            if let Some(m) = &e.message {
                log::warn(&format!("{name}: {m} -> {}", crate::error::rv_name(e.rv)));
            }
            e.rv
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            log::error(&format!(
                "{name}: internal error ({what}); returned CKR_GENERAL_ERROR. Please report this."
            ));
            CKR_GENERAL_ERROR
        }
    }
}

// ---- general purpose -------------------------------------------------------

/// PKCS#11 3.0 §5.4: C_Initialize.
extern "C" fn C_Initialize(p_init_args: CK_VOID_PTR) -> CK_RV {
    entry("C_Initialize", || {
        // SAFETY: a non-null argument points to CK_C_INITIALIZE_ARGS.
        let args = unsafe { convert::optional(p_init_args as *const CK_C_INITIALIZE_ARGS) };
        if let Some(a) = args {
            // PKCS#11 3.0 §5.4: pReserved must be NULL; it is never read. The
            // config comes from P11DERIVE_CONF or the default path.
            if !a.pReserved.is_null() {
                return Err(Error::with(
                    CKR_ARGUMENTS_BAD,
                    "CK_C_INITIALIZE_ARGS.pReserved must be NULL (PKCS#11); p11derive reads its \
                     config file from $P11DERIVE_CONF, else /etc/p11derive/p11derive.toml",
                ));
            }
            let given = [
                a.CreateMutex.is_some(),
                a.DestroyMutex.is_some(),
                a.LockMutex.is_some(),
                a.UnlockMutex.is_some(),
            ];
            if given.iter().any(|&g| g) && !given.iter().all(|&g| g) {
                return Err(Error::rv(CKR_ARGUMENTS_BAD));
            }
            // p11derive locks with the OS's primitives; callbacks alone it cannot use.
            if given[0] && a.flags & CKF_OS_LOCKING_OK == 0 {
                return Err(Error::with(
                    CKR_CANT_LOCK,
                    "the application offers only its own mutex callbacks; p11derive needs \
                     CKF_OS_LOCKING_OK",
                ));
            }
        }
        initialize()
    })
}

fn initialize() -> Result<()> {
    process::watch_forks();
    let _serial = INIT.get().lock().unwrap_or_else(|e| e.into_inner());
    if PROVIDER
        .get()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .is_some()
    {
        return Err(Error::rv(CKR_CRYPTOKI_ALREADY_INITIALIZED));
    }
    let path = config::locate(None);
    let config = Config::load(&path).map_err(|m| Error::with(CKR_FUNCTION_FAILED, m))?;
    let level = config
        .log_level()
        .map_err(|m| Error::with(CKR_FUNCTION_FAILED, m))?;
    let access = crate::files::Access::of(config.store.group.as_deref()).map_err(|m| {
        Error::with(
            CKR_FUNCTION_FAILED,
            format!("{m} (config file {})", path.display()),
        )
    })?;
    log::configure(config.log.file.as_deref(), level, &access).map_err(|e| {
        Error::with(
            CKR_FUNCTION_FAILED,
            format!(
                "cannot open log file {} ({e}); fix [log] file in {}",
                config
                    .log
                    .file
                    .as_deref()
                    .unwrap_or_else(|| std::path::Path::new(""))
                    .display(),
                path.display()
            ),
        )
    })?;
    if let Some(file) = &config.log.file {
        crate::files::report(&[("log file", file.clone())], &access);
    }
    // Secrets need locked memory: check the budget before anything else.
    let memory = &config.memory;
    match crate::secure::configure(memory.locked_kib, memory.allow_unlocked) {
        Ok(true) => {}
        Ok(false) => log::error(&format!(
            "DEGRADED: memory for secrets cannot be locked ({} KiB requested) and [memory] \
             allow_unlocked = true in {}: derived keys and the audit key may be swapped to disk. \
             Raise RLIMIT_MEMLOCK and remove allow_unlocked to fix this",
            memory.locked_kib,
            path.display()
        )),
        Err(m) => {
            return Err(Error::with(
                CKR_HOST_MEMORY,
                format!("{m} (config file {})", path.display()),
            ))
        }
    }
    let provider = Provider::open(config)?;
    log::info(&format!(
        "initialized: config {}, backing token {:?} in {}, store {}",
        path.display(),
        provider.backend.token_label(),
        provider.backend.module_path().display(),
        provider.store.path().display()
    ));
    let provider = Arc::new(provider);
    let weak = Arc::downgrade(&provider);
    crate::metrics::writer::start(&provider.config, &access, move || {
        weak.upgrade().map(|p| p.gauges())
    });
    *PROVIDER.get().write().unwrap_or_else(|e| e.into_inner()) = Some(provider);
    Ok(())
}

/// PKCS#11 3.0 §5.4: C_Finalize.
extern "C" fn C_Finalize(p_reserved: CK_VOID_PTR) -> CK_RV {
    entry("C_Finalize", || {
        if !p_reserved.is_null() {
            return Err(Error::rv(CKR_ARGUMENTS_BAD));
        }
        let _serial = INIT.get().lock().unwrap_or_else(|e| e.into_inner());
        let taken = PROVIDER
            .get()
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        crate::metrics::writer::stop();
        taken
            .ok_or(Error::rv(CKR_CRYPTOKI_NOT_INITIALIZED))?
            .finalize();
        Ok(())
    })
}

/// PKCS#11 3.0 §5.4: C_GetInfo.
extern "C" fn C_GetInfo(p_info: CK_INFO_PTR) -> CK_RV {
    with_provider("C_GetInfo", |_| {
        // SAFETY: out-parameter from the caller.
        let info = unsafe { out(p_info) }?;
        *info = CK_INFO {
            cryptokiVersion: CK_VERSION { major: 3, minor: 0 },
            manufacturerID: pad("p11derive"),
            flags: 0,
            libraryDescription: pad("p11derive derived-key provider"),
            libraryVersion: library_version(),
        };
        Ok(())
    })
}

fn library_version() -> CK_VERSION {
    CK_VERSION {
        major: env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0),
        minor: env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0),
    }
}

/// PKCS#11 3.0 §5.4: C_GetFunctionList (the 2.40 table).
///
/// # Safety
/// `pp_function_list` must be null or valid for one pointer-sized write.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(pp_function_list: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    entry("C_GetFunctionList", || {
        // SAFETY: out-parameter from the caller.
        let slot = unsafe { out(pp_function_list) }?;
        *slot = &FUNCTIONS_240 as *const CK_FUNCTION_LIST as CK_FUNCTION_LIST_PTR;
        Ok(())
    })
}

/// An interface description that lives forever (C_GetInterface returns it).
struct StaticInterface(CK_INTERFACE);
// SAFETY: the pointers inside point to immutable statics.
unsafe impl Sync for StaticInterface {}

static INTERFACE_NAME: &[u8] = b"PKCS 11\0";
static INTERFACE_30: StaticInterface = StaticInterface(CK_INTERFACE {
    pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_CHAR,
    pFunctionList: &FUNCTIONS_30 as *const CK_FUNCTION_LIST_3_0 as CK_VOID_PTR,
    flags: 0,
});
static INTERFACE_240: StaticInterface = StaticInterface(CK_INTERFACE {
    pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_CHAR,
    pFunctionList: &FUNCTIONS_240 as *const CK_FUNCTION_LIST as CK_VOID_PTR,
    flags: 0,
});

fn interfaces() -> [&'static CK_INTERFACE; 2] {
    [&INTERFACE_30.0, &INTERFACE_240.0]
}

/// PKCS#11 3.0 §5.4: C_GetInterfaceList.
///
/// # Safety
/// `pul_count` must be null or writable; `p_list`, if not null, must hold
/// `*pul_count` writable entries.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterfaceList(
    p_list: CK_INTERFACE_PTR,
    pul_count: CK_ULONG_PTR,
) -> CK_RV {
    entry("C_GetInterfaceList", || {
        let all = interfaces().map(|i| CK_INTERFACE { ..*i });
        // SAFETY: the caller's list (null: a count query) and count.
        unsafe { convert::output_list(p_list, pul_count, &all) }
    })
}

/// PKCS#11 3.0 §5.4: C_GetInterface.
///
/// # Safety
/// `p_name`, if not null, must be NUL-terminated; `p_version`, if not null,
/// readable; `pp_interface` null or writable.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    p_name: CK_UTF8CHAR_PTR,
    p_version: CK_VERSION_PTR,
    pp_interface: CK_INTERFACE_PTR_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    entry("C_GetInterface", || {
        // SAFETY: out-parameter from the caller.
        let slot = unsafe { out(pp_interface) }?;
        // SAFETY: a non-null name is a NUL-terminated string.
        if let Some(name) = unsafe { convert::c_str(p_name) } {
            if name.to_bytes() != b"PKCS 11" {
                return Err(Error::rv(CKR_ARGUMENTS_BAD));
            }
        }
        // SAFETY: a non-null version points to a CK_VERSION.
        let version = unsafe { convert::optional(p_version) };
        let found = interfaces().into_iter().find(|i| {
            // SAFETY: every table starts with its CK_VERSION.
            let v = unsafe { *(i.pFunctionList as *const CK_VERSION) };
            let version_ok = version.is_none_or(|w| w.major == v.major && w.minor == v.minor);
            version_ok && (i.flags & flags) == flags
        });
        let iface = found.ok_or(Error::rv(CKR_ARGUMENTS_BAD))?;
        // Each caller gets its own writable copy: some clients (OpenSC's
        // pkcs11-spy) write into the returned interface to put their own
        // function table in it, which faults on read-only static memory.
        let copy: &'static mut CK_INTERFACE = Box::leak(Box::new(CK_INTERFACE { ..*iface }));
        *slot = copy;
        Ok(())
    })
}
macro_rules! not_supported {
    ($($name:ident($($ty:ty),*);)*) => {$(
        extern "C" fn $name($(_: $ty),*) -> CK_RV {
            with_provider(stringify!($name), |_| Err(Error::rv(CKR_FUNCTION_NOT_SUPPORTED)))
        }
    )*};
}

not_supported! {
    C_InitPIN(CK_SESSION_HANDLE, CK_UTF8CHAR_PTR, CK_ULONG);
    C_GetOperationState(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);
    C_SetOperationState(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE);
    C_SignRecoverInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_SignRecover(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_VerifyRecoverInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_VerifyRecover(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_DigestEncryptUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_DecryptDigestUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_SignEncryptUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_DecryptVerifyUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_WaitForSlotEvent(CK_FLAGS, CK_SLOT_ID_PTR, CK_VOID_PTR);
    C_EncryptMessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
    C_EncryptMessageNext(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR, CK_FLAGS);
    C_DecryptMessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
    C_DecryptMessageNext(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR, CK_FLAGS);
    C_MessageSignInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_SignMessage(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_SignMessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG);
    C_SignMessageNext(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_MessageSignFinal(CK_SESSION_HANDLE);
    C_MessageVerifyInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_VerifyMessage(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
    C_VerifyMessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG);
    C_VerifyMessageNext(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
    C_MessageVerifyFinal(CK_SESSION_HANDLE);
}

// ---- the function tables ---------------------------------------------------

/// Builds both tables from one list, so the compiler checks that every member
/// of each table is filled.
macro_rules! tables {
    ([$($f:ident),* $(,)?], [$($g:ident),* $(,)?]) => {
        static FUNCTIONS_240: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
            version: CK_VERSION { major: 2, minor: 40 },
            $($f: Some($f),)*
        };
        static FUNCTIONS_30: CK_FUNCTION_LIST_3_0 = CK_FUNCTION_LIST_3_0 {
            version: CK_VERSION { major: 3, minor: 0 },
            $($f: Some($f),)*
            $($g: Some($g),)*
        };
    };
}

/// Every member of PKCS#11's 2.40 function table, then those 3.0 adds, in
/// table order: handed to `$then` as two lists. The tables below and
/// `tests/header.rs` (which checks their layout) read this one list.
#[doc(hidden)]
#[macro_export]
macro_rules! pkcs11_function_names {
    ($then:ident) => {
        $then!(
            [
                C_Initialize,
                C_Finalize,
                C_GetInfo,
                C_GetFunctionList,
                C_GetSlotList,
                C_GetSlotInfo,
                C_GetTokenInfo,
                C_GetMechanismList,
                C_GetMechanismInfo,
                C_InitToken,
                C_InitPIN,
                C_SetPIN,
                C_OpenSession,
                C_CloseSession,
                C_CloseAllSessions,
                C_GetSessionInfo,
                C_GetOperationState,
                C_SetOperationState,
                C_Login,
                C_Logout,
                C_CreateObject,
                C_CopyObject,
                C_DestroyObject,
                C_GetObjectSize,
                C_GetAttributeValue,
                C_SetAttributeValue,
                C_FindObjectsInit,
                C_FindObjects,
                C_FindObjectsFinal,
                C_EncryptInit,
                C_Encrypt,
                C_EncryptUpdate,
                C_EncryptFinal,
                C_DecryptInit,
                C_Decrypt,
                C_DecryptUpdate,
                C_DecryptFinal,
                C_DigestInit,
                C_Digest,
                C_DigestUpdate,
                C_DigestKey,
                C_DigestFinal,
                C_SignInit,
                C_Sign,
                C_SignUpdate,
                C_SignFinal,
                C_SignRecoverInit,
                C_SignRecover,
                C_VerifyInit,
                C_Verify,
                C_VerifyUpdate,
                C_VerifyFinal,
                C_VerifyRecoverInit,
                C_VerifyRecover,
                C_DigestEncryptUpdate,
                C_DecryptDigestUpdate,
                C_SignEncryptUpdate,
                C_DecryptVerifyUpdate,
                C_GenerateKey,
                C_GenerateKeyPair,
                C_WrapKey,
                C_UnwrapKey,
                C_DeriveKey,
                C_SeedRandom,
                C_GenerateRandom,
                C_GetFunctionStatus,
                C_CancelFunction,
                C_WaitForSlotEvent,
            ],
            [
                C_GetInterfaceList,
                C_GetInterface,
                C_LoginUser,
                C_SessionCancel,
                C_MessageEncryptInit,
                C_EncryptMessage,
                C_EncryptMessageBegin,
                C_EncryptMessageNext,
                C_MessageEncryptFinal,
                C_MessageDecryptInit,
                C_DecryptMessage,
                C_DecryptMessageBegin,
                C_DecryptMessageNext,
                C_MessageDecryptFinal,
                C_MessageSignInit,
                C_SignMessage,
                C_SignMessageBegin,
                C_SignMessageNext,
                C_MessageSignFinal,
                C_MessageVerifyInit,
                C_VerifyMessage,
                C_VerifyMessageBegin,
                C_VerifyMessageNext,
                C_MessageVerifyFinal,
            ]
        );
    };
}

pkcs11_function_names!(tables);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_general_error() {
        let rv = entry("C_Test", || panic!("boom"));
        assert_eq!(rv, CKR_GENERAL_ERROR);
        let rv = entry("C_Test", || Err(Error::rv(CKR_BUFFER_TOO_SMALL)));
        assert_eq!(rv, CKR_BUFFER_TOO_SMALL);
        assert_eq!(entry("C_Test", || Ok(())), CKR_OK);
    }
}
