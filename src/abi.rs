//! The C surface: the three exported symbols, the 2.40 and 3.0 function
//! tables, and the one place where raw pointers, counts and templates become
//! Rust values. Each entry point is a thin wrapper: check the library state,
//! convert the arguments, call [`crate::token`], turn the result into a CK_RV.
//! No panic crosses this boundary.

#![allow(non_snake_case)]

use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::ptr;
use std::sync::{Arc, Mutex, RwLock};

use crate::ck::*;
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::log;
use crate::mechanisms;
use crate::process::{self, PerProcess};
use crate::secure::SecretBytes;
use crate::symmetric::GcmParams;
use crate::token::{Mechanism, Provider, TemplateAttr, SLOT_ID};

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

// ---- argument conversion (the only raw-pointer code) -----------------------

/// A caller's input buffer. Null is allowed only with length 0.
///
/// # Safety
/// `p` must point to `len` readable bytes (the PKCS#11 calling contract).
unsafe fn bytes<'a>(p: *const CK_BYTE, len: CK_ULONG) -> Result<&'a [u8]> {
    if p.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(Error::rv(CKR_ARGUMENTS_BAD))
        };
    }
    // SAFETY: non-null, and the caller promises `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len as usize) })
}

/// A caller's out-parameter. Null is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// `p`, if not null, must be valid for writes of a `T`.
unsafe fn out<'a, T>(p: *mut T) -> Result<&'a mut T> {
    // SAFETY: the caller promises a writable T behind any non-null pointer.
    unsafe { p.as_mut() }.ok_or(Error::rv(CKR_ARGUMENTS_BAD))
}

/// A caller's template, copied.
///
/// # Safety
/// `p` must point to `n` attributes whose values are readable.
unsafe fn template(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> Result<Vec<TemplateAttr>> {
    if p.is_null() {
        return if n == 0 {
            Ok(Vec::new())
        } else {
            Err(Error::rv(CKR_ARGUMENTS_BAD))
        };
    }
    // SAFETY: non-null, and the caller promises `n` attributes.
    let attrs = unsafe { std::slice::from_raw_parts(p, n as usize) };
    let read = |a: &CK_ATTRIBUTE| {
        // SAFETY: each attribute's value is readable for ulValueLen bytes.
        unsafe { bytes(a.pValue as *const u8, a.ulValueLen) }
    };
    // Key material never goes to the heap: the CKA_VALUE of anything but a
    // public object (certificate, data) is kept as a mark of its presence;
    // `secret_value` reads it where it is needed.
    let public = attrs.iter().any(|a| {
        a.type_ == CKA_CLASS
            && read(a).is_ok_and(|v| {
                let class = v.try_into().map(CK_ULONG::from_ne_bytes);
                matches!(class, Ok(CKO_CERTIFICATE | CKO_DATA))
            })
    });
    attrs
        .iter()
        .map(|a| {
            let value = read(a)?;
            let value = if a.type_ == CKA_VALUE && !public {
                &[][..]
            } else {
                value
            };
            Ok((a.type_, value.to_vec()))
        })
        .collect()
}

/// The longest secret-key value `C_CreateObject` copies into locked memory.
const MAX_SECRET_VALUE: usize = 4096;

/// The `CKA_VALUE` of a caller's secret-key template, copied straight into
/// the locked arena.
///
/// # Safety
/// As for [`template`].
unsafe fn secret_value(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> Result<Option<SecretBytes>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, and the caller promises `n` attributes.
    let attrs = unsafe { std::slice::from_raw_parts(p, n as usize) };
    // Only a secret key's value is key material (public objects keep theirs
    // in the template); checked before anything is copied.
    let secret_key = attrs.iter().any(|a| {
        a.type_ == CKA_CLASS
            // SAFETY: the value is readable for ulValueLen bytes.
            && unsafe { bytes(a.pValue as *const u8, a.ulValueLen) }.is_ok_and(|v| {
                v.try_into().map(CK_ULONG::from_ne_bytes).ok() == Some(CKO_SECRET_KEY)
            })
    });
    let Some(a) = attrs
        .iter()
        .find(|a| a.type_ == CKA_VALUE)
        .filter(|_| secret_key)
    else {
        return Ok(None);
    };
    if a.ulValueLen as usize > MAX_SECRET_VALUE {
        return Err(Error::with(
            CKR_ATTRIBUTE_VALUE_INVALID,
            format!(
                "C_CreateObject: a CKA_VALUE of {} bytes; secret keys are at most {MAX_SECRET_VALUE}",
                a.ulValueLen
            ),
        ));
    }
    // SAFETY: the value is readable for ulValueLen bytes.
    let value = unsafe { bytes(a.pValue as *const u8, a.ulValueLen) }?;
    let mut out = SecretBytes::with_capacity(value.len().max(1))
        .map_err(|m| Error::with(CKR_HOST_MEMORY, m))?;
    out.push(value);
    Ok(Some(out))
}

/// A caller's mechanism, copied.
///
/// # Safety
/// `p` must point to a mechanism whose parameter is readable.
unsafe fn mechanism(p: *const CK_MECHANISM) -> Result<Mechanism> {
    // SAFETY: the caller promises a readable mechanism behind a non-null pointer.
    let m = unsafe { p.as_ref() }.ok_or(Error::rv(CKR_ARGUMENTS_BAD))?;
    // SAFETY: the parameter is readable for ulParameterLen bytes.
    let param = unsafe { bytes(m.pParameter as *const u8, m.ulParameterLen) }?.to_vec();
    let gcm = match m.mechanism {
        // SAFETY: the parameter block was just read; its pointers are the caller's.
        CKM_AES_GCM => Some(unsafe { gcm_params(m.pParameter, m.ulParameterLen) }?),
        _ => None,
    };
    Ok(Mechanism {
        ty: m.mechanism,
        param,
        gcm,
    })
}

/// The 2.40 header before its errata had no `ulIvBits`; some clients still
/// pass that shorter structure. Its layout, to tell the two apart by size.
#[repr(C)]
struct GcmParamsNoIvBits {
    p_iv: CK_BYTE_PTR,
    ul_iv_len: CK_ULONG,
    p_aad: CK_BYTE_PTR,
    ul_aad_len: CK_ULONG,
    ul_tag_bits: CK_ULONG,
}

/// Reads a caller's `CK_GCM_PARAMS` (either layout, told apart by length).
///
/// # Safety
/// `p` must be readable for `len` bytes, and the IV and AAD pointers in it
/// readable for their lengths.
unsafe fn gcm_params(p: CK_VOID_PTR, len: CK_ULONG) -> Result<GcmParams> {
    let bad = |why: &str| Error::with(CKR_MECHANISM_PARAM_INVALID, format!("CKM_AES_GCM: {why}"));
    if p.is_null() {
        return Err(bad("no CK_GCM_PARAMS"));
    }
    // SAFETY: the caller's structure, read by the layout its length names;
    // then the IV and AAD it points to, for their lengths.
    unsafe {
        if len as usize == std::mem::size_of::<CK_GCM_PARAMS>() {
            let g = &*(p as *const CK_GCM_PARAMS);
            GcmParams::new(
                bytes(g.pIv, g.ulIvLen)?.to_vec(),
                Some(g.ulIvBits),
                bytes(g.pAAD, g.ulAADLen)?.to_vec(),
                g.ulTagBits,
            )
        } else if len as usize == std::mem::size_of::<GcmParamsNoIvBits>() {
            let g = &*(p as *const GcmParamsNoIvBits);
            GcmParams::new(
                bytes(g.p_iv, g.ul_iv_len)?.to_vec(),
                None,
                bytes(g.p_aad, g.ul_aad_len)?.to_vec(),
                g.ul_tag_bits,
            )
        } else {
            Err(bad(&format!(
                "ulParameterLen {len} is not the size of CK_GCM_PARAMS ({})",
                std::mem::size_of::<CK_GCM_PARAMS>()
            )))
        }
    }
}

/// The PKCS#11 output convention for variable-length results: a null buffer
/// asks for the length; a short one gets `CKR_BUFFER_TOO_SMALL` and the
/// length; otherwise `fill` writes and the written length is returned.
///
/// # Safety
/// `buf`, if not null, must be valid for `*len` bytes of writes.
unsafe fn output(
    buf: *mut CK_BYTE,
    len: *mut CK_ULONG,
    needed: impl FnOnce() -> Result<usize>,
    fill: impl FnOnce(&mut [u8]) -> Result<usize>,
) -> Result<()> {
    // SAFETY: forwarded contract.
    let len = unsafe { out(len) }?;
    let need = needed()?;
    if buf.is_null() {
        *len = need as CK_ULONG;
        return Ok(());
    }
    if (*len as usize) < need {
        *len = need as CK_ULONG;
        return Err(Error::rv(CKR_BUFFER_TOO_SMALL));
    }
    // SAFETY: non-null and writable for *len bytes by the caller's contract.
    let dst = unsafe { std::slice::from_raw_parts_mut(buf, *len as usize) };
    *len = fill(dst)? as CK_ULONG;
    Ok(())
}

/// Writes a list of ulongs (slots, mechanisms, handles) by the same convention.
///
/// # Safety
/// `list`, if not null, must be valid for `*count` writes.
unsafe fn output_list(list: *mut CK_ULONG, count: *mut CK_ULONG, items: &[CK_ULONG]) -> Result<()> {
    // SAFETY: forwarded contract.
    let count = unsafe { out(count) }?;
    if list.is_null() {
        *count = items.len() as CK_ULONG;
        return Ok(());
    }
    if (*count as usize) < items.len() {
        *count = items.len() as CK_ULONG;
        return Err(Error::rv(CKR_BUFFER_TOO_SMALL));
    }
    // SAFETY: `list` holds at least `items.len()` writable elements.
    unsafe { ptr::copy_nonoverlapping(items.as_ptr(), list, items.len()) };
    *count = items.len() as CK_ULONG;
    Ok(())
}

// ---- general purpose -------------------------------------------------------

/// PKCS#11 3.0 §5.4: C_Initialize.
extern "C" fn C_Initialize(p_init_args: CK_VOID_PTR) -> CK_RV {
    entry("C_Initialize", || {
        // SAFETY: a non-null argument points to CK_C_INITIALIZE_ARGS.
        let args = unsafe { (p_init_args as *const CK_C_INITIALIZE_ARGS).as_ref() };
        let mut explicit_config = None;
        if let Some(a) = args {
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
            if !a.pReserved.is_null() {
                // SAFETY: p11derive documents pReserved as a NUL-terminated path.
                let path = unsafe { CStr::from_ptr(a.pReserved as *const std::ffi::c_char) };
                explicit_config = Some(PathBuf::from(OsStr::from_bytes(path.to_bytes())));
            }
        }
        initialize(explicit_config)
    })
}

fn initialize(explicit_config: Option<PathBuf>) -> Result<()> {
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
    let path = config::locate(explicit_config.as_deref());
    let config = Config::load(&path).map_err(|m| Error::with(CKR_FUNCTION_FAILED, m))?;
    let level = config
        .log_level()
        .map_err(|m| Error::with(CKR_FUNCTION_FAILED, m))?;
    log::configure(config.log.file.as_deref(), level).map_err(|e| {
        Error::with(
            CKR_FUNCTION_FAILED,
            format!(
                "cannot open log file {} ({e}); fix [log] file in {}",
                config
                    .log
                    .file
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display(),
                path.display()
            ),
        )
    })?;
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
    *PROVIDER.get().write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(provider));
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
        taken
            .ok_or(Error::rv(CKR_CRYPTOKI_NOT_INITIALIZED))?
            .finalize();
        Ok(())
    })
}

/// PKCS#11 3.0 §5.4: C_GetInfo.
extern "C" fn C_GetInfo(p_info: CK_INFO_PTR) -> CK_RV {
    entry("C_GetInfo", || {
        provider()?;
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
        // SAFETY: out-parameter from the caller.
        let count = unsafe { out(pul_count) }?;
        let all = interfaces();
        if p_list.is_null() {
            *count = all.len() as CK_ULONG;
            return Ok(());
        }
        if (*count as usize) < all.len() {
            *count = all.len() as CK_ULONG;
            return Err(Error::rv(CKR_BUFFER_TOO_SMALL));
        }
        for (i, iface) in all.iter().enumerate() {
            // SAFETY: the caller's array holds at least `all.len()` entries.
            unsafe { p_list.add(i).write(CK_INTERFACE { ..**iface }) };
        }
        *count = all.len() as CK_ULONG;
        Ok(())
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
        if !p_name.is_null() {
            // SAFETY: a non-null name is a NUL-terminated string.
            let name = unsafe { CStr::from_ptr(p_name as *const std::ffi::c_char) };
            if name.to_bytes() != b"PKCS 11" {
                return Err(Error::rv(CKR_ARGUMENTS_BAD));
            }
        }
        // SAFETY: a non-null version points to a CK_VERSION.
        let version = unsafe { p_version.as_ref() };
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

// ---- slots and tokens ------------------------------------------------------

extern "C" fn C_GetSlotList(
    _present: CK_BBOOL,
    p_list: CK_SLOT_ID_PTR,
    pul_count: CK_ULONG_PTR,
) -> CK_RV {
    entry("C_GetSlotList", || {
        provider()?;
        // SAFETY: caller's list and count.
        unsafe { output_list(p_list, pul_count, &[SLOT_ID]) }
    })
}

extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, p_info: CK_SLOT_INFO_PTR) -> CK_RV {
    entry("C_GetSlotInfo", || {
        let p = provider()?;
        p.check_slot(slot)?;
        // SAFETY: out-parameter from the caller.
        let info = unsafe { out(p_info) }?;
        *info = CK_SLOT_INFO {
            slotDescription: pad(&format!("p11derive over {}", p.backend.token_label())),
            manufacturerID: pad("p11derive"),
            flags: CKF_TOKEN_PRESENT,
            hardwareVersion: CK_VERSION { major: 0, minor: 0 },
            firmwareVersion: library_version(),
        };
        Ok(())
    })
}

extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, p_info: CK_TOKEN_INFO_PTR) -> CK_RV {
    entry("C_GetTokenInfo", || {
        let p = provider()?;
        p.check_slot(slot)?;
        // SAFETY: out-parameter from the caller.
        let info = unsafe { out(p_info) }?;
        let backing = p.backend.token_info()?;
        let pin_flags = CKF_USER_PIN_COUNT_LOW
            | CKF_USER_PIN_FINAL_TRY
            | CKF_USER_PIN_LOCKED
            | CKF_USER_PIN_TO_BE_CHANGED
            | CKF_SO_PIN_COUNT_LOW
            | CKF_SO_PIN_FINAL_TRY
            | CKF_SO_PIN_LOCKED
            | CKF_SO_PIN_TO_BE_CHANGED;
        let (sessions, rw) = p.session_count();
        *info = CK_TOKEN_INFO {
            label: pad(&p.config.token.label),
            manufacturerID: pad("p11derive"),
            model: pad("derived keys"),
            // The backing token's serial: the token p11derive stands for.
            serialNumber: pad(&backing.serial),
            flags: CKF_RNG
                | CKF_LOGIN_REQUIRED
                | CKF_USER_PIN_INITIALIZED
                | CKF_TOKEN_INITIALIZED
                | (backing.flags & pin_flags),
            ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
            ulSessionCount: sessions as CK_ULONG,
            ulMaxRwSessionCount: CK_EFFECTIVELY_INFINITE,
            ulRwSessionCount: rw as CK_ULONG,
            ulMaxPinLen: backing.max_pin_len,
            ulMinPinLen: backing.min_pin_len,
            ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
            hardwareVersion: CK_VERSION { major: 0, minor: 0 },
            firmwareVersion: library_version(),
            utcTime: [b' '; 16],
        };
        Ok(())
    })
}

extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    p_list: CK_MECHANISM_TYPE_PTR,
    pul_count: CK_ULONG_PTR,
) -> CK_RV {
    entry("C_GetMechanismList", || {
        provider()?.check_slot(slot)?;
        let list: Vec<CK_ULONG> = mechanisms::mechanism_list()
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        // SAFETY: caller's list and count.
        unsafe { output_list(p_list, pul_count, &list) }
    })
}

extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    ty: CK_MECHANISM_TYPE,
    p_info: CK_MECHANISM_INFO_PTR,
) -> CK_RV {
    entry("C_GetMechanismInfo", || {
        provider()?.check_slot(slot)?;
        // SAFETY: out-parameter from the caller.
        let info = unsafe { out(p_info) }?;
        let found = mechanisms::mechanism_list()
            .into_iter()
            .find(|(m, _)| *m == ty);
        *info = found.ok_or(Error::rv(CKR_MECHANISM_INVALID))?.1;
        Ok(())
    })
}

extern "C" fn C_InitToken(
    slot: CK_SLOT_ID,
    _pin: CK_UTF8CHAR_PTR,
    _len: CK_ULONG,
    _label: CK_UTF8CHAR_PTR,
) -> CK_RV {
    entry("C_InitToken", || {
        provider()?.check_slot(slot)?;
        // Initializing would wipe the backing token and its root: never forwarded.
        Err(Error::with(
            CKR_FUNCTION_NOT_SUPPORTED,
            "refused: p11derive never initializes its backing token (that would destroy the root); \
             set up the backing HSM with its own tools and run `p11derive init`",
        ))
    })
}

// ---- sessions and login ----------------------------------------------------

extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _app: CK_VOID_PTR,
    _notify: CK_NOTIFY,
    ph_session: CK_SESSION_HANDLE_PTR,
) -> CK_RV {
    entry("C_OpenSession", || {
        let p = provider()?;
        // SAFETY: out-parameter from the caller.
        let h = unsafe { out(ph_session) }?;
        *h = p.open_session(slot, flags)?;
        Ok(())
    })
}

extern "C" fn C_CloseSession(h: CK_SESSION_HANDLE) -> CK_RV {
    entry("C_CloseSession", || provider()?.close_session(h))
}

extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    entry("C_CloseAllSessions", || {
        provider()?.close_all_sessions(slot)
    })
}

extern "C" fn C_GetSessionInfo(h: CK_SESSION_HANDLE, p_info: CK_SESSION_INFO_PTR) -> CK_RV {
    entry("C_GetSessionInfo", || {
        let p = provider()?;
        // SAFETY: out-parameter from the caller.
        let info = unsafe { out(p_info) }?;
        *info = p.session_info(h)?;
        Ok(())
    })
}

extern "C" fn C_Login(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    p_pin: CK_UTF8CHAR_PTR,
    len: CK_ULONG,
) -> CK_RV {
    entry("C_Login", || {
        let p = provider()?;
        if p_pin.is_null() {
            return Err(Error::rv(CKR_ARGUMENTS_BAD));
        }
        // SAFETY: the PIN buffer is readable for `len` bytes.
        let pin = unsafe { bytes(p_pin, len) }?;
        p.login(h, user, pin)
    })
}

extern "C" fn C_LoginUser(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    p_pin: CK_UTF8CHAR_PTR,
    len: CK_ULONG,
    p_username: CK_UTF8CHAR_PTR,
    username_len: CK_ULONG,
) -> CK_RV {
    entry("C_LoginUser", || {
        let p = provider()?;
        // SAFETY: the user name buffer is readable for `username_len` bytes.
        if !unsafe { bytes(p_username, username_len) }?.is_empty() {
            return Err(Error::with(
                CKR_FUNCTION_NOT_SUPPORTED,
                "C_LoginUser with a user name: the backing token has no named users; use C_Login",
            ));
        }
        if p_pin.is_null() {
            return Err(Error::rv(CKR_ARGUMENTS_BAD));
        }
        // SAFETY: the PIN buffer is readable for `len` bytes.
        let pin = unsafe { bytes(p_pin, len) }?;
        p.login(h, user, pin)
    })
}

extern "C" fn C_Logout(h: CK_SESSION_HANDLE) -> CK_RV {
    entry("C_Logout", || provider()?.logout(h))
}

extern "C" fn C_SessionCancel(h: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    entry("C_SessionCancel", || provider()?.cancel(h, flags))
}

// ---- objects ---------------------------------------------------------------

extern "C" fn C_GetAttributeValue(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
) -> CK_RV {
    entry("C_GetAttributeValue", || {
        let p = provider()?;
        if p_template.is_null() && count > 0 {
            return Err(Error::rv(CKR_ARGUMENTS_BAD));
        }
        let attrs: &mut [CK_ATTRIBUTE] = if count == 0 {
            &mut []
        } else {
            // SAFETY: non-null, and the caller promises `count` attributes.
            unsafe { std::slice::from_raw_parts_mut(p_template, count as usize) }
        };
        let types: Vec<CK_ATTRIBUTE_TYPE> = attrs.iter().map(|a| a.type_).collect();
        let values = p.attribute_values(h, object, &types)?;
        // Every attribute is answered, whatever happens to the others
        // (PKCS#11 3.0 §5.7, C_GetAttributeValue rules 1-5).
        let (mut sensitive, mut invalid, mut small) = (false, false, false);
        for (a, v) in attrs.iter_mut().zip(values) {
            let value = match v {
                None => {
                    invalid = true;
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    continue;
                }
                Some(v) => v.to_bytes(),
            };
            let Some(value) = value else {
                sensitive = true;
                a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                continue;
            };
            if a.pValue.is_null() {
                a.ulValueLen = value.len() as CK_ULONG;
            } else if (a.ulValueLen as usize) < value.len() {
                small = true;
                a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
            } else {
                // SAFETY: pValue is writable for ulValueLen >= value.len() bytes.
                unsafe {
                    ptr::copy_nonoverlapping(value.as_ptr(), a.pValue as *mut u8, value.len())
                };
                a.ulValueLen = value.len() as CK_ULONG;
            }
        }
        match (sensitive, invalid, small) {
            (true, _, _) => Err(Error::rv(CKR_ATTRIBUTE_SENSITIVE)),
            (_, true, _) => Err(Error::rv(CKR_ATTRIBUTE_TYPE_INVALID)),
            (_, _, true) => Err(Error::rv(CKR_BUFFER_TOO_SMALL)),
            _ => Ok(()),
        }
    })
}

extern "C" fn C_SetAttributeValue(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
) -> CK_RV {
    entry("C_SetAttributeValue", || {
        let p = provider()?;
        // SAFETY: caller's template.
        unsafe { template(p_template, count) }?;
        p.attribute_values(h, object, &[])?;
        Err(Error::rv(CKR_ACTION_PROHIBITED))
    })
}

extern "C" fn C_DestroyObject(h: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) -> CK_RV {
    entry("C_DestroyObject", || provider()?.destroy_object(h, object))
}

extern "C" fn C_GetObjectSize(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    pul_size: CK_ULONG_PTR,
) -> CK_RV {
    entry("C_GetObjectSize", || {
        let p = provider()?;
        // SAFETY: out-parameter from the caller.
        let size = unsafe { out(pul_size) }?;
        *size = p.object_size(h, object)?;
        Ok(())
    })
}

extern "C" fn C_FindObjectsInit(
    h: CK_SESSION_HANDLE,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
) -> CK_RV {
    entry("C_FindObjectsInit", || {
        let p = provider()?;
        // SAFETY: caller's template.
        let t = unsafe { template(p_template, count) }?;
        p.find_init(h, &t)
    })
}

extern "C" fn C_FindObjects(
    h: CK_SESSION_HANDLE,
    ph_object: CK_OBJECT_HANDLE_PTR,
    max: CK_ULONG,
    pul_count: CK_ULONG_PTR,
) -> CK_RV {
    entry("C_FindObjects", || {
        let p = provider()?;
        // SAFETY: out-parameter from the caller.
        let count = unsafe { out(pul_count) }?;
        if ph_object.is_null() && max > 0 {
            return Err(Error::rv(CKR_ARGUMENTS_BAD));
        }
        let found = p.find_next(h, max as usize)?;
        if !found.is_empty() {
            // SAFETY: the caller's array holds `max` >= found.len() handles.
            unsafe { ptr::copy_nonoverlapping(found.as_ptr(), ph_object, found.len()) };
        }
        *count = found.len() as CK_ULONG;
        Ok(())
    })
}

extern "C" fn C_FindObjectsFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    entry("C_FindObjectsFinal", || provider()?.find_final(h))
}

extern "C" fn C_GenerateKeyPair(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    p_public: CK_ATTRIBUTE_PTR,
    public_count: CK_ULONG,
    p_private: CK_ATTRIBUTE_PTR,
    private_count: CK_ULONG,
    ph_public: CK_OBJECT_HANDLE_PTR,
    ph_private: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    entry("C_GenerateKeyPair", || {
        let p = provider()?;
        // SAFETY: caller's mechanism, templates and out-parameters.
        let (mech, public, private, out_pub, out_priv) = unsafe {
            (
                mechanism(p_mechanism)?,
                template(p_public, public_count)?,
                template(p_private, private_count)?,
                out(ph_public)?,
                out(ph_private)?,
            )
        };
        let (pub_h, priv_h) = p.generate_key_pair(h, &mech, &public, &private)?;
        *out_pub = pub_h;
        *out_priv = priv_h;
        Ok(())
    })
}

// ---- signing, verification, digests, random --------------------------------

extern "C" fn C_SignInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    init_call("C_SignInit", h, p_mechanism, key, Provider::sign_init)
}

extern "C" fn C_Sign(
    h: CK_SESSION_HANDLE,
    p_data: CK_BYTE_PTR,
    data_len: CK_ULONG,
    p_sig: CK_BYTE_PTR,
    pul_sig_len: CK_ULONG_PTR,
) -> CK_RV {
    in_out_call(
        "C_Sign",
        h,
        p_data,
        data_len,
        p_sig,
        pul_sig_len,
        Provider::sign,
    )
}

extern "C" fn C_SignUpdate(h: CK_SESSION_HANDLE, p_part: CK_BYTE_PTR, part_len: CK_ULONG) -> CK_RV {
    entry("C_SignUpdate", || {
        let p = provider()?;
        // SAFETY: caller's input buffer.
        let part = unsafe { bytes(p_part, part_len) }?;
        p.sign_update(h, part)
    })
}

extern "C" fn C_SignFinal(
    h: CK_SESSION_HANDLE,
    p_sig: CK_BYTE_PTR,
    pul_sig_len: CK_ULONG_PTR,
) -> CK_RV {
    out_call("C_SignFinal", h, p_sig, pul_sig_len, Provider::sign_final)
}

extern "C" fn C_VerifyInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    init_call("C_VerifyInit", h, p_mechanism, key, Provider::verify_init)
}

extern "C" fn C_Verify(
    h: CK_SESSION_HANDLE,
    p_data: CK_BYTE_PTR,
    data_len: CK_ULONG,
    p_sig: CK_BYTE_PTR,
    sig_len: CK_ULONG,
) -> CK_RV {
    entry("C_Verify", || {
        let p = provider()?;
        // SAFETY: caller's input buffers.
        let (data, sig) = unsafe { (bytes(p_data, data_len)?, bytes(p_sig, sig_len)?) };
        p.verify(h, data, sig)
    })
}

extern "C" fn C_VerifyUpdate(
    h: CK_SESSION_HANDLE,
    p_part: CK_BYTE_PTR,
    part_len: CK_ULONG,
) -> CK_RV {
    entry("C_VerifyUpdate", || {
        let p = provider()?;
        // SAFETY: caller's input buffer.
        let part = unsafe { bytes(p_part, part_len) }?;
        p.verify_update(h, part)
    })
}

extern "C" fn C_VerifyFinal(h: CK_SESSION_HANDLE, p_sig: CK_BYTE_PTR, sig_len: CK_ULONG) -> CK_RV {
    entry("C_VerifyFinal", || {
        let p = provider()?;
        // SAFETY: caller's input buffer.
        let sig = unsafe { bytes(p_sig, sig_len) }?;
        p.verify_final(h, sig)
    })
}

extern "C" fn C_DigestInit(h: CK_SESSION_HANDLE, p_mechanism: CK_MECHANISM_PTR) -> CK_RV {
    entry("C_DigestInit", || {
        let p = provider()?;
        // SAFETY: caller's mechanism.
        let mech = unsafe { mechanism(p_mechanism) }?;
        p.digest_init(h, &mech)
    })
}

extern "C" fn C_Digest(
    h: CK_SESSION_HANDLE,
    p_data: CK_BYTE_PTR,
    data_len: CK_ULONG,
    p_digest: CK_BYTE_PTR,
    pul_len: CK_ULONG_PTR,
) -> CK_RV {
    in_out_call(
        "C_Digest",
        h,
        p_data,
        data_len,
        p_digest,
        pul_len,
        Provider::digest,
    )
}

extern "C" fn C_DigestUpdate(
    h: CK_SESSION_HANDLE,
    p_part: CK_BYTE_PTR,
    part_len: CK_ULONG,
) -> CK_RV {
    entry("C_DigestUpdate", || {
        let p = provider()?;
        // SAFETY: caller's input buffer.
        let part = unsafe { bytes(p_part, part_len) }?;
        p.digest_update(h, part)
    })
}

extern "C" fn C_DigestFinal(
    h: CK_SESSION_HANDLE,
    p_digest: CK_BYTE_PTR,
    pul_len: CK_ULONG_PTR,
) -> CK_RV {
    out_call(
        "C_DigestFinal",
        h,
        p_digest,
        pul_len,
        Provider::digest_final,
    )
}

extern "C" fn C_SeedRandom(h: CK_SESSION_HANDLE, p_seed: CK_BYTE_PTR, seed_len: CK_ULONG) -> CK_RV {
    entry("C_SeedRandom", || {
        let p = provider()?;
        // SAFETY: caller's input buffer.
        unsafe { bytes(p_seed, seed_len) }?;
        p.session(h)?;
        // Randomness comes from the backing HSM, which keeps its own seed.
        Err(Error::rv(CKR_RANDOM_SEED_NOT_SUPPORTED))
    })
}

extern "C" fn C_GenerateRandom(h: CK_SESSION_HANDLE, p_out: CK_BYTE_PTR, len: CK_ULONG) -> CK_RV {
    entry("C_GenerateRandom", || {
        let p = provider()?;
        if p_out.is_null() && len > 0 {
            return Err(Error::rv(CKR_ARGUMENTS_BAD));
        }
        if len == 0 {
            p.session(h)?;
            return Ok(());
        }
        // SAFETY: the caller's buffer is writable for `len` bytes.
        let buf = unsafe { std::slice::from_raw_parts_mut(p_out, len as usize) };
        p.random(h, buf)
    })
}

/// Legacy parallel-function calls: PKCS#11 fixes their answer.
extern "C" fn C_GetFunctionStatus(h: CK_SESSION_HANDLE) -> CK_RV {
    entry("C_GetFunctionStatus", || {
        provider()?.session(h)?;
        Err(Error::rv(CKR_FUNCTION_NOT_PARALLEL))
    })
}

extern "C" fn C_CancelFunction(h: CK_SESSION_HANDLE) -> CK_RV {
    entry("C_CancelFunction", || {
        provider()?.session(h)?;
        Err(Error::rv(CKR_FUNCTION_NOT_PARALLEL))
    })
}

// ---- functions p11derive does not implement --------------------------------

// ---- secret keys: generation, encryption, decryption -----------------------

extern "C" fn C_CreateObject(
    h: CK_SESSION_HANDLE,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    ph_object: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    entry("C_CreateObject", || {
        let p = provider()?;
        // SAFETY: caller's template and out-parameter.
        let (template, value, out_obj) = unsafe {
            (
                template(p_template, count)?,
                secret_value(p_template, count)?,
                out(ph_object)?,
            )
        };
        *out_obj = p.create_object(h, &template, value)?;
        Ok(())
    })
}

extern "C" fn C_GenerateKey(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    ph_key: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    entry("C_GenerateKey", || {
        let p = provider()?;
        // SAFETY: caller's mechanism, template and out-parameter.
        let (mech, template, out_key) = unsafe {
            (
                mechanism(p_mechanism)?,
                template(p_template, count)?,
                out(ph_key)?,
            )
        };
        *out_key = p.generate_key(h, &mech, &template)?;
        Ok(())
    })
}

extern "C" fn C_WrapKey(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    entry("C_WrapKey", || {
        let p = provider()?;
        // SAFETY: caller's mechanism and output buffer.
        unsafe {
            let mech = mechanism(p_mechanism)?;
            output(
                p_out,
                pul_out,
                || p.wrap_key(h, &mech, wrapping, key, None),
                |o| p.wrap_key(h, &mech, wrapping, key, Some(o)),
            )
        }
    })
}

#[allow(clippy::too_many_arguments)]
extern "C" fn C_UnwrapKey(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    unwrapping: CK_OBJECT_HANDLE,
    p_wrapped: CK_BYTE_PTR,
    wrapped_len: CK_ULONG,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    ph_key: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    entry("C_UnwrapKey", || {
        let p = provider()?;
        // SAFETY: caller's mechanism, input, template and out-parameter.
        let (mech, wrapped, template, out_key) = unsafe {
            (
                mechanism(p_mechanism)?,
                bytes(p_wrapped, wrapped_len)?,
                template(p_template, count)?,
                out(ph_key)?,
            )
        };
        *out_key = p.unwrap_key(h, &mech, unwrapping, wrapped, &template)?;
        Ok(())
    })
}

extern "C" fn C_EncryptInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    init_call("C_EncryptInit", h, p_mechanism, key, Provider::encrypt_init)
}

extern "C" fn C_DecryptInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    init_call("C_DecryptInit", h, p_mechanism, key, Provider::decrypt_init)
}

/// `C_SignInit`, `C_VerifyInit`, `C_EncryptInit`, `C_DecryptInit`: a
/// mechanism and a key.
fn init_call(
    name: &'static str,
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
    f: fn(&Provider, CK_SESSION_HANDLE, &Mechanism, CK_OBJECT_HANDLE) -> Result<()>,
) -> CK_RV {
    entry(name, || {
        let p = provider()?;
        // SAFETY: caller's mechanism.
        let mech = unsafe { mechanism(p_mechanism) }?;
        f(&p, h, &mech, key)
    })
}

/// A provider call with input and a variable-length output (`None`: the
/// length only).
type CryptFn = fn(&Provider, CK_SESSION_HANDLE, &[u8], Option<&mut [u8]>) -> Result<usize>;

/// `C_Sign`, `C_Digest`, `C_Encrypt`, `C_Decrypt`: input in,
/// variable-length output out.
fn in_out_call(
    name: &'static str,
    h: CK_SESSION_HANDLE,
    p_in: CK_BYTE_PTR,
    in_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
    f: CryptFn,
) -> CK_RV {
    entry(name, || {
        let p = provider()?;
        // SAFETY: caller's input and output buffers.
        unsafe {
            let input = bytes(p_in, in_len)?;
            // PKCS#11 lets the output overwrite the input in place; a copy
            // keeps the two slices from aliasing.
            let out_start = p_out as usize;
            let overlaps = !p_out.is_null()
                && !pul_out.is_null()
                && out_start < input.as_ptr() as usize + input.len()
                && (input.as_ptr() as usize) < out_start + *pul_out as usize;
            let copy;
            let input = if overlaps {
                copy = zeroize::Zeroizing::new(input.to_vec());
                &copy[..]
            } else {
                input
            };
            output(
                p_out,
                pul_out,
                || f(&p, h, input, None),
                |o| f(&p, h, input, Some(o)),
            )
        }
    })
}

/// `C_SignFinal`, `C_DigestFinal`, `C_EncryptFinal`, `C_DecryptFinal`:
/// variable-length output only.
fn out_call(
    name: &'static str,
    h: CK_SESSION_HANDLE,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
    f: fn(&Provider, CK_SESSION_HANDLE, Option<&mut [u8]>) -> Result<usize>,
) -> CK_RV {
    entry(name, || {
        let p = provider()?;
        // SAFETY: caller's output buffer.
        unsafe { output(p_out, pul_out, || f(&p, h, None), |o| f(&p, h, Some(o))) }
    })
}

/// `C_EncryptUpdate`, `C_DecryptUpdate`: GCM keeps the parts and returns no
/// output until the final call. A null output buffer is a length query
/// (zero), which leaves the input unconsumed, as for every other call.
fn crypt_update(
    name: &'static str,
    h: CK_SESSION_HANDLE,
    p_in: CK_BYTE_PTR,
    in_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
    f: fn(&Provider, CK_SESSION_HANDLE, &[u8], bool) -> Result<usize>,
) -> CK_RV {
    entry(name, || {
        let p = provider()?;
        // SAFETY: caller's input buffer and output length.
        unsafe {
            let input = bytes(p_in, in_len)?;
            let out_len = out(pul_out)?;
            *out_len = f(&p, h, input, !p_out.is_null())? as CK_ULONG;
        }
        Ok(())
    })
}

extern "C" fn C_Encrypt(
    h: CK_SESSION_HANDLE,
    p_data: CK_BYTE_PTR,
    data_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    in_out_call(
        "C_Encrypt",
        h,
        p_data,
        data_len,
        p_out,
        pul_out,
        Provider::encrypt,
    )
}

extern "C" fn C_Decrypt(
    h: CK_SESSION_HANDLE,
    p_data: CK_BYTE_PTR,
    data_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    in_out_call(
        "C_Decrypt",
        h,
        p_data,
        data_len,
        p_out,
        pul_out,
        Provider::decrypt,
    )
}

extern "C" fn C_EncryptUpdate(
    h: CK_SESSION_HANDLE,
    p_part: CK_BYTE_PTR,
    part_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    crypt_update(
        "C_EncryptUpdate",
        h,
        p_part,
        part_len,
        p_out,
        pul_out,
        Provider::encrypt_update,
    )
}

extern "C" fn C_DecryptUpdate(
    h: CK_SESSION_HANDLE,
    p_part: CK_BYTE_PTR,
    part_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    crypt_update(
        "C_DecryptUpdate",
        h,
        p_part,
        part_len,
        p_out,
        pul_out,
        Provider::decrypt_update,
    )
}

extern "C" fn C_EncryptFinal(
    h: CK_SESSION_HANDLE,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    out_call("C_EncryptFinal", h, p_out, pul_out, Provider::encrypt_final)
}

extern "C" fn C_DecryptFinal(
    h: CK_SESSION_HANDLE,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    out_call("C_DecryptFinal", h, p_out, pul_out, Provider::decrypt_final)
}

macro_rules! not_supported {
    ($($name:ident($($ty:ty),*);)*) => {$(
        extern "C" fn $name($(_: $ty),*) -> CK_RV {
            entry(stringify!($name), || {
                provider()?;
                Err(Error::rv(CKR_FUNCTION_NOT_SUPPORTED))
            })
        }
    )*};
}

not_supported! {
    C_InitPIN(CK_SESSION_HANDLE, CK_UTF8CHAR_PTR, CK_ULONG);
    C_SetPIN(CK_SESSION_HANDLE, CK_UTF8CHAR_PTR, CK_ULONG, CK_UTF8CHAR_PTR, CK_ULONG);
    C_GetOperationState(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);
    C_SetOperationState(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE);
    C_CopyObject(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG, CK_OBJECT_HANDLE_PTR);
    C_DigestKey(CK_SESSION_HANDLE, CK_OBJECT_HANDLE);
    C_SignRecoverInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_SignRecover(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_VerifyRecoverInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_VerifyRecover(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_DigestEncryptUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_DecryptDigestUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_SignEncryptUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_DecryptVerifyUpdate(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_DeriveKey(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG, CK_OBJECT_HANDLE_PTR);
    C_WaitForSlotEvent(CK_FLAGS, CK_SLOT_ID_PTR, CK_VOID_PTR);
    C_MessageEncryptInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_EncryptMessage(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_EncryptMessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
    C_EncryptMessageNext(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR, CK_FLAGS);
    C_MessageEncryptFinal(CK_SESSION_HANDLE);
    C_MessageDecryptInit(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
    C_DecryptMessage(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
    C_DecryptMessageBegin(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
    C_DecryptMessageNext(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR, CK_FLAGS);
    C_MessageDecryptFinal(CK_SESSION_HANDLE);
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

tables!(
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

    #[test]
    fn output_follows_the_length_conventions() {
        let mut len: CK_ULONG = 0;
        // SAFETY: valid pointers for the duration of each call.
        unsafe {
            output(ptr::null_mut(), &mut len, || Ok(5), |_| unreachable!()).unwrap();
            assert_eq!(len, 5);
            let mut buf = [0u8; 3];
            len = 3;
            let e = output(buf.as_mut_ptr(), &mut len, || Ok(5), |_| unreachable!()).unwrap_err();
            assert_eq!((e.rv, len), (CKR_BUFFER_TOO_SMALL, 5));
            let mut buf = [0u8; 8];
            len = 8;
            output(
                buf.as_mut_ptr(),
                &mut len,
                || Ok(5),
                |o| {
                    o[..5].copy_from_slice(b"hello");
                    Ok(5)
                },
            )
            .unwrap();
            assert_eq!((len, &buf[..5]), (5, &b"hello"[..]));
            let e = output(buf.as_mut_ptr(), ptr::null_mut(), || Ok(5), |_| Ok(5)).unwrap_err();
            assert_eq!(e.rv, CKR_ARGUMENTS_BAD);
        }
    }
}
