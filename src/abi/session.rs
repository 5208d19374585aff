//! Session management (PKCS#11 3.0 §5.6): sessions, login, logout.

use crate::ck::*;
use crate::error::Error;

use super::convert::*;
use super::shape::{value_call, with_provider};

/// PKCS#11 3.0 §5.6: C_OpenSession.
pub(super) extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _app: CK_VOID_PTR,
    _notify: CK_NOTIFY,
    ph_session: CK_SESSION_HANDLE_PTR,
) -> CK_RV {
    value_call("C_OpenSession", ph_session, |p| p.open_session(slot, flags))
}

/// PKCS#11 3.0 §5.6: C_CloseSession.
pub(super) extern "C" fn C_CloseSession(h: CK_SESSION_HANDLE) -> CK_RV {
    with_provider("C_CloseSession", |p| p.close_session(h))
}

/// PKCS#11 3.0 §5.6: C_CloseAllSessions.
pub(super) extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    with_provider("C_CloseAllSessions", |p| p.close_all_sessions(slot))
}

/// PKCS#11 3.0 §5.6: C_GetSessionInfo.
pub(super) extern "C" fn C_GetSessionInfo(
    h: CK_SESSION_HANDLE,
    p_info: CK_SESSION_INFO_PTR,
) -> CK_RV {
    value_call("C_GetSessionInfo", p_info, |p| p.session_info(h))
}

/// PKCS#11 3.0 §5.6: C_Login.
pub(super) extern "C" fn C_Login(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    p_pin: CK_UTF8CHAR_PTR,
    len: CK_ULONG,
) -> CK_RV {
    with_provider("C_Login", |p| {
        if p_pin.is_null() {
            return Err(Error::rv(CKR_ARGUMENTS_BAD));
        }
        // SAFETY: the PIN buffer is readable for `len` bytes.
        let pin = unsafe { bytes(p_pin, len) }?;
        p.login(h, user, pin)
    })
}

/// PKCS#11 3.0 §5.6: C_LoginUser.
pub(super) extern "C" fn C_LoginUser(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    p_pin: CK_UTF8CHAR_PTR,
    len: CK_ULONG,
    p_username: CK_UTF8CHAR_PTR,
    username_len: CK_ULONG,
) -> CK_RV {
    with_provider("C_LoginUser", |p| {
        if p_pin.is_null() {
            return Err(Error::rv(CKR_ARGUMENTS_BAD));
        }
        // SAFETY: the user name buffer is readable for `username_len` bytes.
        let name = unsafe { bytes(p_username, username_len) }?;
        // SAFETY: the PIN buffer is readable for `len` bytes.
        let pin = unsafe { bytes(p_pin, len) }?;
        p.login_user(h, user, pin, name)
    })
}

/// PKCS#11 3.0 §5.6: C_SetPIN (users mode: the logged-in user's own secret).
pub(super) extern "C" fn C_SetPIN(
    h: CK_SESSION_HANDLE,
    p_old: CK_UTF8CHAR_PTR,
    old_len: CK_ULONG,
    p_new: CK_UTF8CHAR_PTR,
    new_len: CK_ULONG,
) -> CK_RV {
    with_provider("C_SetPIN", |p| {
        if p_old.is_null() || p_new.is_null() {
            return Err(Error::rv(CKR_ARGUMENTS_BAD));
        }
        // SAFETY: the old PIN buffer is readable for `old_len` bytes.
        let old = unsafe { bytes(p_old, old_len) }?;
        // SAFETY: the new PIN buffer is readable for `new_len` bytes.
        let new = unsafe { bytes(p_new, new_len) }?;
        p.set_pin(h, old, new)
    })
}

/// PKCS#11 3.0 §5.6: C_Logout.
pub(super) extern "C" fn C_Logout(h: CK_SESSION_HANDLE) -> CK_RV {
    with_provider("C_Logout", |p| p.logout(h))
}

/// PKCS#11 3.0 §5.6: C_SessionCancel.
pub(super) extern "C" fn C_SessionCancel(h: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    with_provider("C_SessionCancel", |p| p.cancel(h, flags))
}
