//! Encryption (PKCS#11 3.0 §5.8) and decryption (§5.10), and the shared shapes of the crypto calls (init, in-out, out-only, update).

use crate::ck::*;
use crate::error::Result;
use crate::token::{Mechanism, Provider};

use super::convert::*;
use super::{entry, provider};

/// PKCS#11 3.0 §5.8: C_EncryptInit.
pub(super) extern "C" fn C_EncryptInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    init_call("C_EncryptInit", h, p_mechanism, key, Provider::encrypt_init)
}

/// PKCS#11 3.0 §5.10: C_DecryptInit.
pub(super) extern "C" fn C_DecryptInit(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    init_call("C_DecryptInit", h, p_mechanism, key, Provider::decrypt_init)
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
    entry(name, || {
        let p = provider()?;
        // SAFETY: caller's mechanism.
        let mech = unsafe { mechanism(p_mechanism) }?;
        f(&p, h, &mech, key)
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
    entry(name, || {
        let p = provider()?;
        // SAFETY: the caller's input buffer and output length.
        let input = unsafe { input_apart(p_in, in_len, p_out, pul_out) }?;
        let input = &*input;
        // SAFETY: the caller's output buffer and length.
        unsafe {
            output(
                p_out,
                pul_out,
                || f(&p, h, input, None),
                |o| f(&p, h, input, Some(o)),
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
    entry(name, || {
        let p = provider()?;
        // SAFETY: the caller's input buffer.
        let input = unsafe { bytes(p_in, in_len) }?;
        f(&p, h, input)
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
    entry(name, || {
        let p = provider()?;
        // SAFETY: caller's output buffer.
        unsafe { output(p_out, pul_out, || f(&p, h, None), |o| f(&p, h, Some(o))) }
    })
}

/// `C_EncryptUpdate`, `C_DecryptUpdate`: GCM keeps the parts and returns no
/// output until the final call. A null output buffer is a length query
/// (zero), which leaves the input unconsumed, as for every other call.
pub(super) fn crypt_update(
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

/// PKCS#11 3.0 §5.8: C_Encrypt.
pub(super) extern "C" fn C_Encrypt(
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

/// PKCS#11 3.0 §5.10: C_Decrypt.
pub(super) extern "C" fn C_Decrypt(
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

/// PKCS#11 3.0 §5.8: C_EncryptUpdate.
pub(super) extern "C" fn C_EncryptUpdate(
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

/// PKCS#11 3.0 §5.10: C_DecryptUpdate.
pub(super) extern "C" fn C_DecryptUpdate(
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

/// PKCS#11 3.0 §5.8: C_EncryptFinal.
pub(super) extern "C" fn C_EncryptFinal(
    h: CK_SESSION_HANDLE,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    out_call("C_EncryptFinal", h, p_out, pul_out, Provider::encrypt_final)
}

/// PKCS#11 3.0 §5.10: C_DecryptFinal.
pub(super) extern "C" fn C_DecryptFinal(
    h: CK_SESSION_HANDLE,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    out_call("C_DecryptFinal", h, p_out, pul_out, Provider::decrypt_final)
}
