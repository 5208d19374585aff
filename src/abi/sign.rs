//! Message digesting (PKCS#11 3.0 §5.12), signing and MACing (§5.13), verification (§5.15), random numbers (§5.19), parallel-function stubs (§5.20).

use crate::ck::*;
use crate::error::Error;
use crate::token::Provider;

use super::convert::*;
use super::shape::{op_call, with_provider};

entry_points! {
    /// PKCS#11 3.0 §5.13: C_SignInit.
    init C_SignInit => Provider::sign_init;
    /// PKCS#11 3.0 §5.13: C_Sign.
    in_out C_Sign => Provider::sign;
    /// PKCS#11 3.0 §5.13: C_SignUpdate.
    input C_SignUpdate => Provider::sign_update;
    /// PKCS#11 3.0 §5.13: C_SignFinal.
    output C_SignFinal => Provider::sign_final;
    /// PKCS#11 3.0 §5.15: C_VerifyInit.
    init C_VerifyInit => Provider::verify_init;
}

/// PKCS#11 3.0 §5.15: C_Verify.
pub(super) extern "C" fn C_Verify(
    h: CK_SESSION_HANDLE,
    p_data: CK_BYTE_PTR,
    data_len: CK_ULONG,
    p_sig: CK_BYTE_PTR,
    sig_len: CK_ULONG,
) -> CK_RV {
    op_call("C_Verify", h, |p| {
        // SAFETY: caller's input buffers.
        let (data, sig) = unsafe { (bytes(p_data, data_len)?, bytes(p_sig, sig_len)?) };
        p.verify(h, data, sig)
    })
}

entry_points! {
    /// PKCS#11 3.0 §5.15: C_VerifyUpdate.
    input C_VerifyUpdate => Provider::verify_update;
    /// PKCS#11 3.0 §5.15: C_VerifyFinal.
    input C_VerifyFinal => Provider::verify_final;
}

/// PKCS#11 3.0 §5.12: C_DigestInit.
pub(super) extern "C" fn C_DigestInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
) -> CK_RV {
    with_provider("C_DigestInit", |p| {
        // SAFETY: caller's mechanism.
        let mech = unsafe { mechanism(p_mechanism) }?;
        p.digest_init(h, &mech)
    })
}

entry_points! {
    /// PKCS#11 3.0 §5.12: C_Digest.
    in_out C_Digest => Provider::digest;
    /// PKCS#11 3.0 §5.12: C_DigestUpdate.
    input C_DigestUpdate => Provider::digest_update;
    /// PKCS#11 3.0 §5.12: C_DigestFinal.
    output C_DigestFinal => Provider::digest_final;
}

/// PKCS#11 3.0 §5.12: C_DigestKey.
pub(super) extern "C" fn C_DigestKey(h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
    with_provider("C_DigestKey", |p| p.digest_key(h, key))
}

/// PKCS#11 3.0 §5.19: C_SeedRandom.
pub(super) extern "C" fn C_SeedRandom(
    h: CK_SESSION_HANDLE,
    p_seed: CK_BYTE_PTR,
    seed_len: CK_ULONG,
) -> CK_RV {
    with_provider("C_SeedRandom", |p| {
        // SAFETY: caller's input buffer.
        let seed = unsafe { bytes(p_seed, seed_len) }?;
        p.seed_random(h, seed)
    })
}

/// PKCS#11 3.0 §5.19: C_GenerateRandom.
pub(super) extern "C" fn C_GenerateRandom(
    h: CK_SESSION_HANDLE,
    p_out: CK_BYTE_PTR,
    len: CK_ULONG,
) -> CK_RV {
    with_provider("C_GenerateRandom", |p| {
        if p_out.is_null() && len > 0 {
            return Err(Error::rv(CKR_ARGUMENTS_BAD));
        }
        if len == 0 {
            p.session(h)?;
            return Ok(());
        }
        // SAFETY: the caller's buffer is writable for `len` bytes.
        let buf = unsafe { slice_of_mut(p_out, len) }?;
        p.random(h, buf)
    })
}

/// PKCS#11 3.0 §5.20: C_GetFunctionStatus, a legacy parallel-function
/// call whose answer PKCS#11 fixes.
pub(super) extern "C" fn C_GetFunctionStatus(h: CK_SESSION_HANDLE) -> CK_RV {
    with_provider("C_GetFunctionStatus", |p| {
        p.session(h)?;
        Err(Error::rv(CKR_FUNCTION_NOT_PARALLEL))
    })
}

/// PKCS#11 3.0 §5.20: C_CancelFunction.
pub(super) extern "C" fn C_CancelFunction(h: CK_SESSION_HANDLE) -> CK_RV {
    with_provider("C_CancelFunction", |p| {
        p.session(h)?;
        Err(Error::rv(CKR_FUNCTION_NOT_PARALLEL))
    })
}
