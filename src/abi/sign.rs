//! Message digesting (PKCS#11 3.0 §5.12), signing and MACing (§5.13), verification (§5.15), random numbers (§5.19), parallel-function stubs (§5.20).

use crate::ck::*;
use crate::error::Error;
use crate::token::Provider;

use super::convert::*;
use super::crypt::{in_call, in_out_call, init_call, out_call};
use super::{entry, provider};

/// PKCS#11 3.0 §5.13: C_SignInit.
pub(super) extern "C" fn C_SignInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    init_call("C_SignInit", h, p_mechanism, key, Provider::sign_init)
}

/// PKCS#11 3.0 §5.13: C_Sign.
pub(super) extern "C" fn C_Sign(
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

/// PKCS#11 3.0 §5.13: C_SignUpdate.
pub(super) extern "C" fn C_SignUpdate(
    h: CK_SESSION_HANDLE,
    p_part: CK_BYTE_PTR,
    part_len: CK_ULONG,
) -> CK_RV {
    in_call("C_SignUpdate", h, p_part, part_len, Provider::sign_update)
}

/// PKCS#11 3.0 §5.13: C_SignFinal.
pub(super) extern "C" fn C_SignFinal(
    h: CK_SESSION_HANDLE,
    p_sig: CK_BYTE_PTR,
    pul_sig_len: CK_ULONG_PTR,
) -> CK_RV {
    out_call("C_SignFinal", h, p_sig, pul_sig_len, Provider::sign_final)
}

/// PKCS#11 3.0 §5.15: C_VerifyInit.
pub(super) extern "C" fn C_VerifyInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    init_call("C_VerifyInit", h, p_mechanism, key, Provider::verify_init)
}

/// PKCS#11 3.0 §5.15: C_Verify.
pub(super) extern "C" fn C_Verify(
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

/// PKCS#11 3.0 §5.15: C_VerifyUpdate.
pub(super) extern "C" fn C_VerifyUpdate(
    h: CK_SESSION_HANDLE,
    p_part: CK_BYTE_PTR,
    part_len: CK_ULONG,
) -> CK_RV {
    in_call(
        "C_VerifyUpdate",
        h,
        p_part,
        part_len,
        Provider::verify_update,
    )
}

/// PKCS#11 3.0 §5.15: C_VerifyFinal.
pub(super) extern "C" fn C_VerifyFinal(
    h: CK_SESSION_HANDLE,
    p_sig: CK_BYTE_PTR,
    sig_len: CK_ULONG,
) -> CK_RV {
    in_call("C_VerifyFinal", h, p_sig, sig_len, Provider::verify_final)
}

/// PKCS#11 3.0 §5.12: C_DigestInit.
pub(super) extern "C" fn C_DigestInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
) -> CK_RV {
    entry("C_DigestInit", || {
        let p = provider()?;
        // SAFETY: caller's mechanism.
        let mech = unsafe { mechanism(p_mechanism) }?;
        p.digest_init(h, &mech)
    })
}

/// PKCS#11 3.0 §5.12: C_Digest.
pub(super) extern "C" fn C_Digest(
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

/// PKCS#11 3.0 §5.12: C_DigestUpdate.
pub(super) extern "C" fn C_DigestUpdate(
    h: CK_SESSION_HANDLE,
    p_part: CK_BYTE_PTR,
    part_len: CK_ULONG,
) -> CK_RV {
    in_call(
        "C_DigestUpdate",
        h,
        p_part,
        part_len,
        Provider::digest_update,
    )
}

/// PKCS#11 3.0 §5.12: C_DigestFinal.
pub(super) extern "C" fn C_DigestFinal(
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

/// PKCS#11 3.0 §5.19: C_SeedRandom.
pub(super) extern "C" fn C_SeedRandom(
    h: CK_SESSION_HANDLE,
    p_seed: CK_BYTE_PTR,
    seed_len: CK_ULONG,
) -> CK_RV {
    entry("C_SeedRandom", || {
        let p = provider()?;
        // SAFETY: caller's input buffer.
        unsafe { bytes(p_seed, seed_len) }?;
        p.session(h)?;
        // Randomness comes from the backing HSM, which keeps its own seed.
        Err(Error::rv(CKR_RANDOM_SEED_NOT_SUPPORTED))
    })
}

/// PKCS#11 3.0 §5.19: C_GenerateRandom.
pub(super) extern "C" fn C_GenerateRandom(
    h: CK_SESSION_HANDLE,
    p_out: CK_BYTE_PTR,
    len: CK_ULONG,
) -> CK_RV {
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
        let buf = unsafe { slice_of_mut(p_out, len) }?;
        p.random(h, buf)
    })
}

/// PKCS#11 3.0 §5.20: C_GetFunctionStatus, a legacy parallel-function
/// call whose answer PKCS#11 fixes.
pub(super) extern "C" fn C_GetFunctionStatus(h: CK_SESSION_HANDLE) -> CK_RV {
    entry("C_GetFunctionStatus", || {
        provider()?.session(h)?;
        Err(Error::rv(CKR_FUNCTION_NOT_PARALLEL))
    })
}

/// PKCS#11 3.0 §5.20: C_CancelFunction.
pub(super) extern "C" fn C_CancelFunction(h: CK_SESSION_HANDLE) -> CK_RV {
    entry("C_CancelFunction", || {
        provider()?.session(h)?;
        Err(Error::rv(CKR_FUNCTION_NOT_PARALLEL))
    })
}
