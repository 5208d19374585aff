//! Object management (PKCS#11 3.0 §5.7) and key management (§5.18): attributes, find, create, generate, wrap, unwrap.

use crate::ck::*;
use crate::error::Error;
use crate::objects::Value;

use super::convert::*;
use super::shape::{value_call, with_provider};

/// PKCS#11 3.0 §5.7: C_GetAttributeValue.
pub(super) extern "C" fn C_GetAttributeValue(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
) -> CK_RV {
    with_provider("C_GetAttributeValue", |p| {
        // SAFETY: the caller promises `count` attributes.
        let attrs = unsafe { slice_of_mut(p_template, count) }?;
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
                // Readable key material: from the locked arena to the caller.
                Some(Value::Secret(key)) => {
                    // SAFETY: each pValue is writable for its ulValueLen bytes.
                    if !unsafe { answer_attribute(a, &key) }? {
                        small = true;
                    }
                    continue;
                }
                Some(v) => v.to_bytes(),
            };
            let Some(value) = value else {
                sensitive = true;
                a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                continue;
            };
            // SAFETY: each pValue is writable for its ulValueLen bytes.
            if !unsafe { answer_attribute(a, &value) }? {
                small = true;
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

/// PKCS#11 3.0 §5.7: C_SetAttributeValue.
pub(super) extern "C" fn C_SetAttributeValue(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
) -> CK_RV {
    with_provider("C_SetAttributeValue", |p| {
        // A data object's or certificate's CKA_VALUE is public; a key's is
        // kept off the heap (and refused: key values are read-only).
        let keep = p.has_public_value(object);
        // SAFETY: caller's template.
        let t = unsafe { template_values(p_template, count, keep) }?;
        p.set_attribute_value(h, object, &t)
    })
}

/// PKCS#11 3.0 §5.7: C_CopyObject.
pub(super) extern "C" fn C_CopyObject(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    ph_new: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    with_provider("C_CopyObject", |p| {
        let keep = p.has_public_value(object);
        // SAFETY: caller's template and out-parameter.
        let (t, out_obj) = unsafe { (template_values(p_template, count, keep)?, out(ph_new)?) };
        *out_obj = p.copy_object(h, object, &t)?;
        Ok(())
    })
}

/// PKCS#11 3.0 §5.7: C_DestroyObject.
pub(super) extern "C" fn C_DestroyObject(h: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) -> CK_RV {
    with_provider("C_DestroyObject", |p| p.destroy_object(h, object))
}

/// PKCS#11 3.0 §5.7: C_GetObjectSize.
pub(super) extern "C" fn C_GetObjectSize(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    pul_size: CK_ULONG_PTR,
) -> CK_RV {
    value_call("C_GetObjectSize", pul_size, |p| p.object_size(h, object))
}

/// PKCS#11 3.0 §5.7: C_FindObjectsInit.
pub(super) extern "C" fn C_FindObjectsInit(
    h: CK_SESSION_HANDLE,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
) -> CK_RV {
    with_provider("C_FindObjectsInit", |p| {
        // SAFETY: caller's template.
        let t = unsafe { template(p_template, count) }?;
        p.find_init(h, &t)
    })
}

/// PKCS#11 3.0 §5.7: C_FindObjects.
pub(super) extern "C" fn C_FindObjects(
    h: CK_SESSION_HANDLE,
    ph_object: CK_OBJECT_HANDLE_PTR,
    max: CK_ULONG,
    pul_count: CK_ULONG_PTR,
) -> CK_RV {
    with_provider("C_FindObjects", |p| {
        // SAFETY: out-parameter from the caller.
        let count = unsafe { out(pul_count) }?;
        if ph_object.is_null() && max > 0 {
            return Err(Error::rv(CKR_ARGUMENTS_BAD));
        }
        let found = p.find_next(h, max as usize)?;
        // SAFETY: the caller's array holds `max` >= found.len() handles.
        unsafe { write_items(ph_object, max, &found) }?;
        *count = found.len() as CK_ULONG;
        Ok(())
    })
}

/// PKCS#11 3.0 §5.7: C_FindObjectsFinal.
pub(super) extern "C" fn C_FindObjectsFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    with_provider("C_FindObjectsFinal", |p| p.find_final(h))
}

/// PKCS#11 3.0 §5.18: C_GenerateKeyPair.
pub(super) extern "C" fn C_GenerateKeyPair(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    p_public: CK_ATTRIBUTE_PTR,
    public_count: CK_ULONG,
    p_private: CK_ATTRIBUTE_PTR,
    private_count: CK_ULONG,
    ph_public: CK_OBJECT_HANDLE_PTR,
    ph_private: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    with_provider("C_GenerateKeyPair", |p| {
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

/// Reads a caller's `CK_ECDH1_DERIVE_PARAMS` (the mechanism's parameter).
///
/// # Safety
/// `m` must be the caller's mechanism; its parameter, if its length is that
/// of the structure, must be readable, and the structure's data pointers
/// readable for their lengths.
unsafe fn ecdh_params(m: &CK_MECHANISM) -> crate::error::Result<crate::token::EcdhParams> {
    let bad = |why: &str| {
        Error::with(
            CKR_MECHANISM_PARAM_INVALID,
            format!("ECDH: {why}; pass a CK_ECDH1_DERIVE_PARAMS as the mechanism's parameter"),
        )
    };
    if m.pParameter.is_null() || m.ulParameterLen as usize != size_of::<CK_ECDH1_DERIVE_PARAMS>() {
        return Err(bad(&format!(
            "the parameter has {} bytes, not {}",
            m.ulParameterLen,
            size_of::<CK_ECDH1_DERIVE_PARAMS>()
        )));
    }
    // SAFETY: readable for its length (checked above); unaligned read, as a
    // caller's parameter block need not be aligned.
    let p = unsafe { std::ptr::read_unaligned(m.pParameter as *const CK_ECDH1_DERIVE_PARAMS) };
    let data = |ptr: CK_BYTE_PTR, len: CK_ULONG, name: &str| {
        if ptr.is_null() && len > 0 {
            return Err(bad(&format!("{name} is NULL with a length of {len}")));
        }
        // SAFETY: the caller's buffer, readable for `len` bytes.
        unsafe { bytes(ptr, len) }.map(<[u8]>::to_vec)
    };
    Ok(crate::token::EcdhParams {
        kdf: p.kdf,
        shared_data: data(p.pSharedData, p.ulSharedDataLen, "pSharedData")?,
        public_data: data(p.pPublicData, p.ulPublicDataLen, "pPublicData")?,
    })
}

/// PKCS#11 3.0 §5.14: C_DeriveKey (`CKM_P11DERIVE_HD_CHILD`: an HD child;
/// `CKM_ECDH1_DERIVE`, `CKM_ECDH1_COFACTOR_DERIVE`: an ECDH secret).
pub(super) extern "C" fn C_DeriveKey(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    base: CK_OBJECT_HANDLE,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    ph_key: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    with_provider("C_DeriveKey", |p| {
        // SAFETY: caller's mechanism, template and out-parameter.
        let (mech, template, out_key) = unsafe {
            (
                mechanism(p_mechanism)?,
                template(p_template, count)?,
                out(ph_key)?,
            )
        };
        *out_key = match mech.ty {
            CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => {
                // SAFETY: the caller's mechanism (read above) and its parameter.
                let params = unsafe { ecdh_params(&*p_mechanism) }?;
                p.ecdh_derive(h, &mech, &params, base, &template)?
            }
            _ => p.derive_key(h, &mech, base, &template)?,
        };
        Ok(())
    })
}

/// PKCS#11 3.0 §5.7: C_CreateObject.
pub(super) extern "C" fn C_CreateObject(
    h: CK_SESSION_HANDLE,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    ph_object: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    with_provider("C_CreateObject", |p| {
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

/// PKCS#11 3.0 §5.18: C_GenerateKey.
pub(super) extern "C" fn C_GenerateKey(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    ph_key: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    with_provider("C_GenerateKey", |p| {
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

/// PKCS#11 3.0 §5.18: C_WrapKey.
pub(super) extern "C" fn C_WrapKey(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    p_out: CK_BYTE_PTR,
    pul_out: CK_ULONG_PTR,
) -> CK_RV {
    with_provider("C_WrapKey", |p| {
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

/// PKCS#11 3.0 §5.18: C_UnwrapKey.
#[allow(clippy::too_many_arguments)]
pub(super) extern "C" fn C_UnwrapKey(
    h: CK_SESSION_HANDLE,
    p_mechanism: CK_MECHANISM_PTR,
    unwrapping: CK_OBJECT_HANDLE,
    p_wrapped: CK_BYTE_PTR,
    wrapped_len: CK_ULONG,
    p_template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    ph_key: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    with_provider("C_UnwrapKey", |p| {
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
