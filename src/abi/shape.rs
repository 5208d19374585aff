//! The shared shapes of entry points: the provider call around every one, the converters of the crypto calls, and `entry_points!`, which defines the entry points that are nothing but such a shape.

use crate::ck::*;
use crate::error::Result;
use crate::token::{Mechanism, OpKind, Provider};

use super::convert::*;
use super::{entry, provider};

/// Defines `extern "C"` entry points that only hand their arguments to one
/// shape below and call one provider method. Each item: the doc comment
/// (naming the PKCS#11 3.0 section), the shape, the function's name and the
/// provider method; the function's name is the name it logs.
macro_rules! entry_points {
    ($($(#[$doc:meta])+ $shape:ident $name:ident => $method:expr;)*) => {$(
        entry_points!(@$shape [$(#[$doc])+] $name $method);
    )*};
    // Each shape: its C parameters and the function below that converts them.
    (@init $($item:tt)+) => {
        entry_points!(@fn init_call(h: CK_SESSION_HANDLE, p_mechanism: CK_MECHANISM_PTR,
            key: CK_OBJECT_HANDLE) $($item)+);
    };
    (@in_out $($item:tt)+) => {
        entry_points!(@fn in_out_call(h: CK_SESSION_HANDLE, p_in: CK_BYTE_PTR, in_len: CK_ULONG,
            p_out: CK_BYTE_PTR, pul_out: CK_ULONG_PTR) $($item)+);
    };
    (@input $($item:tt)+) => {
        entry_points!(@fn in_call(h: CK_SESSION_HANDLE, p_in: CK_BYTE_PTR, in_len: CK_ULONG)
            $($item)+);
    };
    (@output $($item:tt)+) => {
        entry_points!(@fn out_call(h: CK_SESSION_HANDLE, p_out: CK_BYTE_PTR,
            pul_out: CK_ULONG_PTR) $($item)+);
    };
    (@fn $call:ident($($arg:ident: $ty:ident),+) [$($doc:tt)+] $name:ident $method:expr) => {
        $($doc)+
        pub(super) extern "C" fn $name($($arg: $crate::ck::$ty),+) -> $crate::ck::CK_RV {
            $crate::abi::shape::$call(stringify!($name), $($arg,)+ $method)
        }
    };
}

/// Runs an entry point that needs the initialized provider: `entry` around
/// `f`, which gets the provider first (`CKR_CRYPTOKI_NOT_INITIALIZED` without).
pub(super) fn with_provider(name: &str, f: impl FnOnce(&Provider) -> Result<()>) -> CK_RV {
    crate::metrics::process::call_begins();
    entry(name, || f(&*provider()?))
}

/// Runs an entry point that continues or ends an operation (`C_Sign`,
/// `C_DigestUpdate`, `C_EncryptFinal`…): [`with_provider`], and an error
/// other than `CKR_BUFFER_TOO_SMALL` ends the operation, whichever layer
/// found it (a caller's NULL length pointer as much as a failed signature),
/// as PKCS#11 3.0 §5.12-§5.15 say. (A length query returns `CKR_OK`.)
pub(super) fn op_call(
    name: &'static str,
    h: CK_SESSION_HANDLE,
    f: impl FnOnce(&Provider) -> Result<()>,
) -> CK_RV {
    with_provider(name, |p| {
        let r = f(p);
        if r.as_ref().is_err_and(|e| e.rv != CKR_BUFFER_TOO_SMALL) {
            if let Some(kind) = OpKind::of_entry(name) {
                p.end_operation(h, kind);
            }
        }
        r
    })
}

/// Runs an entry point about `slot`: [`with_provider`], the slot checked
/// first (`CKR_SLOT_ID_INVALID`).
pub(super) fn with_slot(
    name: &str,
    slot: CK_SLOT_ID,
    f: impl FnOnce(&Provider) -> Result<()>,
) -> CK_RV {
    with_provider(name, |p| {
        p.check_slot(slot)?;
        f(p)
    })
}

/// `C_OpenSession`, `C_GetSessionInfo`, `C_GetObjectSize`: one value for the
/// caller's out-parameter (checked before `f` runs).
pub(super) fn value_call<T>(
    name: &str,
    p_out: *mut T,
    f: impl FnOnce(&Provider) -> Result<T>,
) -> CK_RV {
    with_provider(name, |p| {
        // SAFETY: out-parameter from the caller.
        let value = unsafe { out(p_out) }?;
        *value = f(p)?;
        Ok(())
    })
}

/// `C_SignInit`, `C_VerifyInit`, `C_EncryptInit`, `C_DecryptInit`: a
/// mechanism and a key.
pub(super) fn init_call(
    name: &'static str,
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
    f: fn(&Provider, CK_SESSION_HANDLE, &Mechanism, CK_OBJECT_HANDLE) -> Result<()>,
) -> CK_RV {
    with_provider(name, |p| {
        // SAFETY: caller's mechanism.
        let mech = unsafe { mechanism(p_mechanism) }?;
        f(p, h, &mech, key)
    })
}

/// A provider call with input and a variable-length output (`None`: the
/// length only).
pub(super) type CryptFn =
    fn(&Provider, CK_SESSION_HANDLE, &[u8], Option<&mut [u8]>) -> Result<usize>;

/// `C_Sign`, `C_Digest`, `C_Encrypt`, `C_Decrypt`: input in,
/// variable-length output out.
pub(super) fn in_out_call(
    name: &'static str,
    h: CK_SESSION_HANDLE,
    p_in: CK_BYTE_PTR,
    in_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
    f: CryptFn,
) -> CK_RV {
    op_call(name, h, |p| {
        // SAFETY: the caller's input buffer and output length.
        let input = unsafe { input_apart(p_in, in_len, p_out, pul_out) }?;
        let input = &*input;
        // SAFETY: the caller's output buffer and length.
        unsafe {
            output(
                p_out,
                pul_out,
                || f(p, h, input, None),
                |o| f(p, h, input, Some(o)),
            )
        }
    })
}

/// `C_SignUpdate`, `C_VerifyUpdate`, `C_VerifyFinal`, `C_DigestUpdate`: one
/// input buffer, no output.
pub(super) fn in_call(
    name: &'static str,
    h: CK_SESSION_HANDLE,
    p_in: CK_BYTE_PTR,
    in_len: CK_ULONG,
    f: fn(&Provider, CK_SESSION_HANDLE, &[u8]) -> Result<()>,
) -> CK_RV {
    op_call(name, h, |p| {
        // SAFETY: the caller's input buffer.
        let input = unsafe { bytes(p_in, in_len) }?;
        f(p, h, input)
    })
}

/// `C_SignFinal`, `C_DigestFinal`, `C_EncryptFinal`, `C_DecryptFinal`:
/// variable-length output only.
pub(super) fn out_call(
    name: &'static str,
    h: CK_SESSION_HANDLE,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
    f: fn(&Provider, CK_SESSION_HANDLE, Option<&mut [u8]>) -> Result<usize>,
) -> CK_RV {
    op_call(name, h, |p| {
        // SAFETY: caller's output buffer.
        unsafe { output(p_out, pul_out, || f(p, h, None), |o| f(p, h, Some(o))) }
    })
}
