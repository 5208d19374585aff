//! Encryption (PKCS#11 3.0 §5.8) and decryption (§5.10).
//!
//! PKCS#11 ends an encryption or decryption at any error of `C_Encrypt`,
//! `C_EncryptUpdate` or `C_EncryptFinal` (and their decryption twins) but
//! `CKR_BUFFER_TOO_SMALL`: arguments refused here, before the operation is
//! reached (a null length pointer, a null input with a length), end it too.

use crate::ck::*;
use crate::error::Result;
use crate::token::Provider;

use super::convert::*;
use super::shape::with_provider;

entry_points! {
    /// PKCS#11 3.0 §5.8: C_EncryptInit.
    init C_EncryptInit => |p, h, mech, key| p.crypt_init(h, mech, key, true);
    /// PKCS#11 3.0 §5.10: C_DecryptInit.
    init C_DecryptInit => |p, h, mech, key| p.crypt_init(h, mech, key, false);
}

/// Runs `f`; a refusal of the caller's arguments ends the operation.
fn ending(
    p: &Provider,
    h: CK_SESSION_HANDLE,
    encrypting: bool,
    f: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let r = f();
    if let Err(e) = &r {
        if e.rv == CKR_ARGUMENTS_BAD {
            p.crypt_end(h, encrypting);
        }
    }
    r
}

/// `C_Encrypt`, `C_Decrypt`: input in, variable-length output out.
fn one_part(
    name: &str,
    encrypting: bool,
    h: CK_SESSION_HANDLE,
    p_in: CK_BYTE_PTR,
    in_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    with_provider(name, |p| {
        ending(p, h, encrypting, || {
            // SAFETY: the caller's input buffer and output length.
            let input = unsafe { input_apart(p_in, in_len, p_out, pul_out) }?;
            let input = &*input;
            // SAFETY: the caller's output buffer and length.
            unsafe {
                output(
                    p_out,
                    pul_out,
                    || p.crypt(h, encrypting, input, None),
                    |o| p.crypt(h, encrypting, input, Some(o)),
                )
            }
        })
    })
}

/// `C_EncryptUpdate`, `C_DecryptUpdate`: a part in, the output it
/// completes out (a null output buffer asks for its length, leaving the
/// part unconsumed).
fn update(
    name: &str,
    encrypting: bool,
    h: CK_SESSION_HANDLE,
    p_in: CK_BYTE_PTR,
    in_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    with_provider(name, |p| {
        ending(p, h, encrypting, || {
            // SAFETY: the caller's input buffer and output length.
            let input = unsafe { input_apart(p_in, in_len, p_out, pul_out) }?;
            let input = &*input;
            // SAFETY: the caller's output buffer and length.
            unsafe {
                output(
                    p_out,
                    pul_out,
                    || p.crypt_part(h, encrypting, input, None),
                    |o| p.crypt_part(h, encrypting, input, Some(o)),
                )
            }
        })
    })
}

/// `C_EncryptFinal`, `C_DecryptFinal`: the last output.
fn last(
    name: &str,
    encrypting: bool,
    h: CK_SESSION_HANDLE,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    with_provider(name, |p| {
        ending(p, h, encrypting, || {
            // SAFETY: the caller's output buffer and length.
            unsafe {
                output(
                    p_out,
                    pul_out,
                    || p.crypt_final(h, encrypting, None),
                    |o| p.crypt_final(h, encrypting, Some(o)),
                )
            }
        })
    })
}

/// PKCS#11 3.0 §5.8: C_Encrypt.
pub(super) extern "C" fn C_Encrypt(
    h: CK_SESSION_HANDLE,
    p_in: CK_BYTE_PTR,
    in_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    one_part("C_Encrypt", true, h, p_in, in_len, p_out, pul_out)
}

/// PKCS#11 3.0 §5.8: C_EncryptUpdate.
pub(super) extern "C" fn C_EncryptUpdate(
    h: CK_SESSION_HANDLE,
    p_in: CK_BYTE_PTR,
    in_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    update("C_EncryptUpdate", true, h, p_in, in_len, p_out, pul_out)
}

/// PKCS#11 3.0 §5.8: C_EncryptFinal.
pub(super) extern "C" fn C_EncryptFinal(
    h: CK_SESSION_HANDLE,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    last("C_EncryptFinal", true, h, p_out, pul_out)
}

/// PKCS#11 3.0 §5.10: C_Decrypt.
pub(super) extern "C" fn C_Decrypt(
    h: CK_SESSION_HANDLE,
    p_in: CK_BYTE_PTR,
    in_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    one_part("C_Decrypt", false, h, p_in, in_len, p_out, pul_out)
}

/// PKCS#11 3.0 §5.10: C_DecryptUpdate.
pub(super) extern "C" fn C_DecryptUpdate(
    h: CK_SESSION_HANDLE,
    p_in: CK_BYTE_PTR,
    in_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    update("C_DecryptUpdate", false, h, p_in, in_len, p_out, pul_out)
}

/// PKCS#11 3.0 §5.10: C_DecryptFinal.
pub(super) extern "C" fn C_DecryptFinal(
    h: CK_SESSION_HANDLE,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    last("C_DecryptFinal", false, h, p_out, pul_out)
}
