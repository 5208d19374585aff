//! Slot and token management (PKCS#11 3.0 §5.5): slots, token info, mechanisms.

use crate::ck::*;
use crate::error::Error;
use crate::mechanisms;
use crate::token::SLOT_ID;

use super::convert::*;
use super::library_version;
use super::shape::{with_provider, with_slot};

/// PKCS#11 3.0 §5.5: C_GetSlotList.
pub(super) extern "C" fn C_GetSlotList(
    _present: CK_BBOOL,
    p_list: CK_SLOT_ID_PTR,
    pul_count: CK_ULONG_PTR,
) -> CK_RV {
    with_provider("C_GetSlotList", |_| {
        // SAFETY: caller's list and count.
        unsafe { output_list(p_list, pul_count, &[SLOT_ID]) }
    })
}

/// PKCS#11 3.0 §5.5: C_GetSlotInfo.
pub(super) extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, p_info: CK_SLOT_INFO_PTR) -> CK_RV {
    with_slot("C_GetSlotInfo", slot, |p| {
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

/// PKCS#11 3.0 §5.5: C_GetTokenInfo.
pub(super) extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, p_info: CK_TOKEN_INFO_PTR) -> CK_RV {
    with_slot("C_GetTokenInfo", slot, |p| {
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
        // Users mode: PINs are `name:secret`, checked by p11derive; the
        // backing token's PIN flags are the service credential's.
        let (pin_flags, min_pin, max_pin) = if p.users_mode() {
            let u = &p.config.users;
            // A user PIN is initialized once there is a user (the first
            // admin, made by `p11derive init --admin`).
            let initialized = match p.store.has_users() {
                Ok(false) => 0,
                _ => CKF_USER_PIN_INITIALIZED,
            };
            (
                initialized,
                2 + u.min_secret_len as CK_ULONG,
                65 + u.max_secret_len as CK_ULONG,
            )
        } else {
            (
                CKF_USER_PIN_INITIALIZED | (backing.flags & pin_flags),
                backing.min_pin_len,
                backing.max_pin_len,
            )
        };
        *info = CK_TOKEN_INFO {
            label: pad(&p.config.token.label),
            manufacturerID: pad("p11derive"),
            model: pad("derived keys"),
            // The backing token's serial: the token p11derive stands for.
            serialNumber: pad(&backing.serial),
            flags: CKF_RNG | CKF_LOGIN_REQUIRED | CKF_TOKEN_INITIALIZED | pin_flags,
            ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
            ulSessionCount: sessions as CK_ULONG,
            ulMaxRwSessionCount: CK_EFFECTIVELY_INFINITE,
            ulRwSessionCount: rw as CK_ULONG,
            ulMaxPinLen: max_pin,
            ulMinPinLen: min_pin,
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

/// PKCS#11 3.0 §5.5: C_GetMechanismList.
pub(super) extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    p_list: CK_MECHANISM_TYPE_PTR,
    pul_count: CK_ULONG_PTR,
) -> CK_RV {
    with_slot("C_GetMechanismList", slot, |_| {
        let list: Vec<CK_ULONG> = mechanisms::mechanism_list()
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        // SAFETY: caller's list and count.
        unsafe { output_list(p_list, pul_count, &list) }
    })
}

/// PKCS#11 3.0 §5.5: C_GetMechanismInfo.
pub(super) extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    ty: CK_MECHANISM_TYPE,
    p_info: CK_MECHANISM_INFO_PTR,
) -> CK_RV {
    with_slot("C_GetMechanismInfo", slot, |_| {
        // SAFETY: out-parameter from the caller.
        let info = unsafe { out(p_info) }?;
        let found = mechanisms::mechanism_list()
            .into_iter()
            .find(|(m, _)| *m == ty);
        *info = found.ok_or(Error::rv(CKR_MECHANISM_INVALID))?.1;
        Ok(())
    })
}

/// PKCS#11 3.0 §5.5: C_InitToken.
pub(super) extern "C" fn C_InitToken(
    slot: CK_SLOT_ID,
    _pin: CK_UTF8CHAR_PTR,
    _len: CK_ULONG,
    _label: CK_UTF8CHAR_PTR,
) -> CK_RV {
    with_slot("C_InitToken", slot, |_| {
        // Initializing would wipe the backing token and its root: never forwarded.
        Err(Error::with(
            CKR_FUNCTION_NOT_SUPPORTED,
            "refused: p11derive never initializes its backing token (that would destroy the root); \
             set up the backing HSM with its own tools and run `p11derive init`",
        ))
    })
}
