//! The message-based encryption (PKCS#11 3.0 §5.9) and decryption (§5.11) of AES-GCM: one call per message, its IV and tag in the caller's `CK_GCM_MESSAGE_PARAMS` (see `token/message.rs`).

use std::ptr;

use crate::ck::*;
use crate::error::{Error, Result};
use crate::token::MessageParams;

use super::convert::*;
use super::shape::with_provider;

/// The caller's `CK_GCM_MESSAGE_PARAMS`, its IV and tag lent for writing.
///
/// # Safety
/// `p` readable for `len` bytes; the IV and tag pointers in it writable
/// for their lengths.
unsafe fn message_params<'a>(p: CK_VOID_PTR, len: CK_ULONG) -> Result<MessageParams<'a>> {
    let bad = |why: String| {
        Error::with(
            CKR_MECHANISM_PARAM_INVALID,
            format!("CKM_AES_GCM message: {why}"),
        )
    };
    if p.is_null() || len as usize != size_of::<CK_GCM_MESSAGE_PARAMS>() {
        return Err(bad(format!(
            "ulParameterLen {len} is not the size of CK_GCM_MESSAGE_PARAMS ({})",
            size_of::<CK_GCM_MESSAGE_PARAMS>()
        )));
    }
    // SAFETY: readable for its size (checked above); unaligned read.
    let g = unsafe { ptr::read_unaligned(p as *const CK_GCM_MESSAGE_PARAMS) };
    if !g.ulTagBits.is_multiple_of(8) || g.ulTagBits > 128 {
        return Err(bad(format!(
            "ulTagBits {} is not a GCM tag length",
            g.ulTagBits
        )));
    }
    if g.ulIvLen == 0 || g.pIv.is_null() || g.pTag.is_null() {
        return Err(bad(
            "pIv and pTag must point to the IV and tag buffers".into()
        ));
    }
    // SAFETY: the caller lends the IV and tag buffers for their lengths.
    let (iv, tag) = unsafe {
        (
            slice_of_mut(g.pIv, g.ulIvLen)?,
            slice_of_mut(g.pTag, g.ulTagBits / 8)?,
        )
    };
    Ok(MessageParams {
        iv,
        fixed_bits: g.ulIvFixedBits,
        generator: g.ivGenerator,
        tag,
    })
}

fn init(
    name: &str,
    h: CK_SESSION_HANDLE,
    p_mech: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
    enc: bool,
) -> CK_RV {
    with_provider(name, |p| {
        // SAFETY: the caller's mechanism (its parameter is not used here).
        let m = unsafe { optional(p_mech) }.ok_or(Error::rv(CKR_ARGUMENTS_BAD))?;
        p.message_init(h, m.mechanism, key, enc)
    })
}

#[allow(clippy::too_many_arguments)]
fn one(
    name: &str,
    enc: bool,
    h: CK_SESSION_HANDLE,
    p_param: CK_VOID_PTR,
    param_len: CK_ULONG,
    p_aad: CK_BYTE_PTR,
    aad_len: CK_ULONG,
    p_in: CK_BYTE_PTR,
    in_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    with_provider(name, |p| {
        // SAFETY: the caller's parameter block, AAD, input and output.
        unsafe {
            let mut params = message_params(p_param, param_len)?;
            let aad = bytes(p_aad, aad_len)?;
            let input = input_apart(p_in, in_len, p_out, pul_out)?;
            let input = &*input;
            let run = |params: &mut MessageParams, o: Option<&mut [u8]>| {
                if enc {
                    p.encrypt_message(h, params, aad, input, o)
                } else {
                    p.decrypt_message(h, params, aad, input, o)
                }
            };
            let need = run(&mut params, None)?;
            let len = out(pul_out)?;
            if p_out.is_null() {
                *len = need as CK_ULONG;
                return Ok(());
            }
            if (*len as usize) < need {
                *len = need as CK_ULONG;
                return Err(Error::rv(CKR_BUFFER_TOO_SMALL));
            }
            let dst = slice_of_mut(p_out, need as CK_ULONG)?;
            *len = run(&mut params, Some(dst))? as CK_ULONG;
            Ok(())
        }
    })
}

/// PKCS#11 3.0 §5.9: C_MessageEncryptInit.
pub(super) extern "C" fn C_MessageEncryptInit(
    h: CK_SESSION_HANDLE,
    m: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    init("C_MessageEncryptInit", h, m, key, true)
}

/// PKCS#11 3.0 §5.11: C_MessageDecryptInit.
pub(super) extern "C" fn C_MessageDecryptInit(
    h: CK_SESSION_HANDLE,
    m: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    init("C_MessageDecryptInit", h, m, key, false)
}

/// PKCS#11 3.0 §5.9: C_EncryptMessage.
#[allow(clippy::too_many_arguments)]
pub(super) extern "C" fn C_EncryptMessage(
    h: CK_SESSION_HANDLE,
    p_param: CK_VOID_PTR,
    param_len: CK_ULONG,
    p_aad: CK_BYTE_PTR,
    aad_len: CK_ULONG,
    p_in: CK_BYTE_PTR,
    in_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    one(
        "C_EncryptMessage",
        true,
        h,
        p_param,
        param_len,
        p_aad,
        aad_len,
        p_in,
        in_len,
        p_out,
        pul_out,
    )
}

/// PKCS#11 3.0 §5.11: C_DecryptMessage.
#[allow(clippy::too_many_arguments)]
pub(super) extern "C" fn C_DecryptMessage(
    h: CK_SESSION_HANDLE,
    p_param: CK_VOID_PTR,
    param_len: CK_ULONG,
    p_aad: CK_BYTE_PTR,
    aad_len: CK_ULONG,
    p_in: CK_BYTE_PTR,
    in_len: CK_ULONG,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    one(
        "C_DecryptMessage",
        false,
        h,
        p_param,
        param_len,
        p_aad,
        aad_len,
        p_in,
        in_len,
        p_out,
        pul_out,
    )
}

/// PKCS#11 3.0 §5.9: C_MessageEncryptFinal.
pub(super) extern "C" fn C_MessageEncryptFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    with_provider("C_MessageEncryptFinal", |p| p.message_final(h, true))
}

/// PKCS#11 3.0 §5.11: C_MessageDecryptFinal.
pub(super) extern "C" fn C_MessageDecryptFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    with_provider("C_MessageDecryptFinal", |p| p.message_final(h, false))
}
