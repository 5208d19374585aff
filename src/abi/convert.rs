//! Every raw pointer, length, template and output buffer a caller hands in becomes a Rust value here: the one place to review raw memory.

use std::ptr;

use crate::ck::*;
use crate::error::{Error, Result};
use crate::mechanisms::gcm::GcmParams;
use crate::secure::SecretBytes;
use crate::token::{Mechanism, TemplateAttr};

/// A caller's array of `n` elements. Null is allowed only with `n` 0; an
/// array larger than the address space allows (`isize::MAX` bytes) is
/// `CKR_ARGUMENTS_BAD`, since no caller can own one.
///
/// # Safety
/// `p`, if not null, must point to `n` readable elements.
pub(super) unsafe fn slice_of<'a, T>(p: *const T, n: CK_ULONG) -> Result<&'a [T]> {
    let n = checked_len::<T>(n)?;
    if p.is_null() {
        return if n == 0 {
            Ok(&[])
        } else {
            Err(Error::rv(CKR_ARGUMENTS_BAD))
        };
    }
    // SAFETY: non-null, within isize::MAX bytes, and the caller promises `n`
    // readable elements.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// As [`slice_of`], for an array the caller lends for writing.
///
/// # Safety
/// `p`, if not null, must point to `n` writable elements that nothing else
/// accesses during the call.
pub(super) unsafe fn slice_of_mut<'a, T>(p: *mut T, n: CK_ULONG) -> Result<&'a mut [T]> {
    let n = checked_len::<T>(n)?;
    if p.is_null() {
        return if n == 0 {
            Ok(&mut [])
        } else {
            Err(Error::rv(CKR_ARGUMENTS_BAD))
        };
    }
    // SAFETY: non-null, within isize::MAX bytes, and the caller promises `n`
    // writable elements.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, n) })
}

/// `n` elements of `T` as a length Rust can slice: at most `isize::MAX` bytes.
fn checked_len<T>(n: CK_ULONG) -> Result<usize> {
    usize::try_from(n)
        .ok()
        .filter(|&n| {
            n.checked_mul(size_of::<T>().max(1))
                .is_some_and(|b| b <= isize::MAX as usize)
        })
        .ok_or(Error::rv(CKR_ARGUMENTS_BAD))
}

/// A caller's input buffer. Null is allowed only with length 0.
///
/// # Safety
/// `p` must point to `len` readable bytes (the PKCS#11 calling contract).
pub(super) unsafe fn bytes<'a>(p: *const CK_BYTE, len: CK_ULONG) -> Result<&'a [u8]> {
    // SAFETY: forwarded contract.
    unsafe { slice_of(p, len) }
}

/// A caller's optional in-parameter (null: none).
///
/// # Safety
/// `p`, if not null, must point to a readable, initialized `T`.
pub(super) unsafe fn optional<'a, T>(p: *const T) -> Option<&'a T> {
    // SAFETY: the caller promises a readable T behind any non-null pointer.
    unsafe { p.as_ref() }
}

/// A caller's optional NUL-terminated string (null: none).
///
/// # Safety
/// `p`, if not null, must point to a NUL-terminated string.
pub(super) unsafe fn c_str<'a, T>(p: *const T) -> Option<&'a std::ffi::CStr> {
    // SAFETY: non-null strings are NUL-terminated by the caller's contract.
    (!p.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(p as *const std::ffi::c_char) })
}

/// A caller's out-parameter. Null is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// `p`, if not null, must be valid for writes of a `T`.
pub(super) unsafe fn out<'a, T>(p: *mut T) -> Result<&'a mut T> {
    // SAFETY: the caller promises a writable T behind any non-null pointer.
    unsafe { p.as_mut() }.ok_or(Error::rv(CKR_ARGUMENTS_BAD))
}

/// A caller's template, copied.
///
/// # Safety
/// `p` must point to `n` attributes whose values are readable.
pub(super) unsafe fn template(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> Result<Vec<TemplateAttr>> {
    // SAFETY: the caller promises `n` attributes.
    let attrs = unsafe { slice_of(p, n) }?;
    // Key material never goes to the heap: the CKA_VALUE of anything but a
    // public object (certificate, data) is kept as a mark of its presence;
    // `secret_value` reads it where it is needed.
    let public = attrs.iter().any(|a| {
        a.type_ == CKA_CLASS
            // SAFETY: each attribute's value is readable for ulValueLen bytes.
            && unsafe { bytes(a.pValue as *const u8, a.ulValueLen) }.is_ok_and(|v| {
                let class = v.try_into().map(CK_ULONG::from_ne_bytes);
                matches!(class, Ok(CKO_CERTIFICATE | CKO_DATA))
            })
    });
    // SAFETY: as above.
    unsafe { template_values(p, n, public) }
}

/// A caller's template, copied; `CKA_VALUE` only when `keep_value` (the
/// value of a public object: `C_SetAttributeValue` and `C_CopyObject` of a
/// data object or certificate), else kept empty as a mark of its presence.
///
/// # Safety
/// As for [`template`].
pub(super) unsafe fn template_values(
    p: *const CK_ATTRIBUTE,
    n: CK_ULONG,
    keep_value: bool,
) -> Result<Vec<TemplateAttr>> {
    // SAFETY: the caller promises `n` attributes.
    let attrs = unsafe { slice_of(p, n) }?;
    let read = |a: &CK_ATTRIBUTE| {
        // SAFETY: each attribute's value is readable for ulValueLen bytes.
        unsafe { bytes(a.pValue as *const u8, a.ulValueLen) }
    };
    let public = keep_value;
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
pub(super) const MAX_SECRET_VALUE: usize = 4096;

/// The `CKA_VALUE` of a caller's secret-key template, copied straight into
/// the locked arena.
///
/// # Safety
/// As for [`template`].
pub(super) unsafe fn secret_value(
    p: *const CK_ATTRIBUTE,
    n: CK_ULONG,
) -> Result<Option<SecretBytes>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller promises `n` attributes.
    let attrs = unsafe { slice_of(p, n) }?;
    // Only a secret or private key's value is key material (public objects
    // keep theirs in the template); checked before anything is copied.
    let secret_key = attrs.iter().any(|a| {
        a.type_ == CKA_CLASS
            // SAFETY: the value is readable for ulValueLen bytes.
            && unsafe { bytes(a.pValue as *const u8, a.ulValueLen) }.is_ok_and(|v| {
                matches!(
                    v.try_into().map(CK_ULONG::from_ne_bytes),
                    Ok(CKO_SECRET_KEY | CKO_PRIVATE_KEY)
                )
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
pub(super) unsafe fn mechanism(p: *const CK_MECHANISM) -> Result<Mechanism> {
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
pub(super) struct GcmParamsNoIvBits {
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
pub(super) unsafe fn gcm_params(p: CK_VOID_PTR, len: CK_ULONG) -> Result<GcmParams> {
    let bad = |why: &str| Error::with(CKR_MECHANISM_PARAM_INVALID, format!("CKM_AES_GCM: {why}"));
    if p.is_null() {
        return Err(bad("no CK_GCM_PARAMS"));
    }
    // The structure is copied out with an unaligned read: a caller's
    // parameter block need not be aligned for CK_ULONG.
    if len as usize == size_of::<CK_GCM_PARAMS>() {
        // SAFETY: readable for `len` bytes, the size of the structure read.
        let g = unsafe { ptr::read_unaligned(p as *const CK_GCM_PARAMS) };
        // SAFETY: the IV and AAD the caller's structure points to, for their lengths.
        let (iv, aad) = unsafe { (bytes(g.pIv, g.ulIvLen)?, bytes(g.pAAD, g.ulAADLen)?) };
        GcmParams::new(iv.to_vec(), Some(g.ulIvBits), aad.to_vec(), g.ulTagBits)
    } else if len as usize == size_of::<GcmParamsNoIvBits>() {
        // SAFETY: readable for `len` bytes, the size of the structure read.
        let g = unsafe { ptr::read_unaligned(p as *const GcmParamsNoIvBits) };
        // SAFETY: the IV and AAD the caller's structure points to, for their lengths.
        let (iv, aad) = unsafe { (bytes(g.p_iv, g.ul_iv_len)?, bytes(g.p_aad, g.ul_aad_len)?) };
        GcmParams::new(iv.to_vec(), None, aad.to_vec(), g.ul_tag_bits)
    } else {
        Err(bad(&format!(
            "ulParameterLen {len} is not the size of CK_GCM_PARAMS ({})",
            size_of::<CK_GCM_PARAMS>()
        )))
    }
}

/// The PKCS#11 output convention for variable-length results: a null buffer
/// asks for the length; a short one gets `CKR_BUFFER_TOO_SMALL` and the
/// length; otherwise `fill` writes and the written length is returned.
/// `fill` is given exactly the `needed` bytes, never the caller's claimed
/// length, so a wrong claim cannot make a slice larger than what is written.
///
/// # Safety
/// `buf`, if not null, must be valid for `*len` bytes of writes.
pub(super) unsafe fn output(
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
    // SAFETY: writable for *len >= need bytes by the caller's contract.
    let dst = unsafe { slice_of_mut(buf, need as CK_ULONG) }?;
    *len = fill(dst)? as CK_ULONG;
    Ok(())
}

/// Writes a list (slots, mechanisms, handles, interfaces) by the same convention.
///
/// # Safety
/// `list`, if not null, must be valid for `*count` writes.
pub(super) unsafe fn output_list<T: Copy>(
    list: *mut T,
    count: *mut CK_ULONG,
    items: &[T],
) -> Result<()> {
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

/// Writes found items into a caller's array of `capacity` elements (the
/// caller checked that they fit).
///
/// # Safety
/// `list`, if not null, must be valid for `capacity` writes.
pub(super) unsafe fn write_items<T: Copy>(
    list: *mut T,
    capacity: CK_ULONG,
    items: &[T],
) -> Result<()> {
    // SAFETY: forwarded contract.
    let dst = unsafe { slice_of_mut(list, capacity) }?;
    dst.get_mut(..items.len())
        .ok_or(Error::rv(CKR_ARGUMENTS_BAD))?
        .copy_from_slice(items);
    Ok(())
}

/// Answers one attribute of a `C_GetAttributeValue` template with `value`:
/// its length (null `pValue`), `CK_UNAVAILABLE_INFORMATION` and `false` when
/// the buffer is too short, or the value copied in.
///
/// # Safety
/// `a.pValue`, if not null, must be writable for `a.ulValueLen` bytes.
pub(super) unsafe fn answer_attribute(a: &mut CK_ATTRIBUTE, value: &[u8]) -> Result<bool> {
    if a.pValue.is_null() {
        a.ulValueLen = value.len() as CK_ULONG;
        return Ok(true);
    }
    if (a.ulValueLen as usize) < value.len() {
        a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
        return Ok(false);
    }
    // SAFETY: writable for ulValueLen >= value.len() bytes.
    let dst = unsafe { slice_of_mut(a.pValue as *mut u8, value.len() as CK_ULONG) }?;
    dst.copy_from_slice(value);
    a.ulValueLen = value.len() as CK_ULONG;
    Ok(true)
}

/// An input that may share memory with the output buffer of the same call
/// (PKCS#11 lets a caller encrypt in place): copied (and wiped after) when it
/// does, so the input and output slices never alias.
pub(super) enum Input<'a> {
    Lent(&'a [u8]),
    Copied(zeroize::Zeroizing<Vec<u8>>),
}

impl std::ops::Deref for Input<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Input::Lent(b) => b,
            Input::Copied(v) => v,
        }
    }
}

/// The input of an in-out call, apart from its output buffer.
///
/// # Safety
/// As for [`bytes`] (the input) and [`out`] (the output length, if not null).
pub(super) unsafe fn input_apart<'a>(
    p_in: *const CK_BYTE,
    in_len: CK_ULONG,
    p_out: *const CK_BYTE,
    pul_out: *const CK_ULONG,
) -> Result<Input<'a>> {
    // SAFETY: forwarded contract.
    let input = unsafe { bytes(p_in, in_len) }?;
    // SAFETY: forwarded contract.
    let Some(&out_len) = (unsafe { optional(pul_out) }) else {
        return Ok(Input::Lent(input));
    };
    let (out_start, in_start) = (p_out as usize, input.as_ptr() as usize);
    let overlaps = !p_out.is_null()
        && out_start < in_start + input.len()
        && in_start < out_start.saturating_add(out_len as usize);
    Ok(if overlaps {
        Input::Copied(zeroize::Zeroizing::new(input.to_vec()))
    } else {
        Input::Lent(input)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;

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

    #[test]
    fn lengths_beyond_the_address_space_are_refused_not_sliced() {
        let byte = 0u8;
        // SAFETY: each call is refused before the pointer is read.
        unsafe {
            let e = bytes(&byte, CK_ULONG::MAX).unwrap_err();
            assert_eq!(e.rv, CKR_ARGUMENTS_BAD);
            let e = slice_of(ptr::null::<CK_ATTRIBUTE>(), 3).err().unwrap();
            assert_eq!(e.rv, CKR_ARGUMENTS_BAD);
            let huge = (isize::MAX as usize / size_of::<CK_ATTRIBUTE>() + 1) as CK_ULONG;
            let attr = CK_ATTRIBUTE::default();
            assert_eq!(slice_of(&attr, huge).err().unwrap().rv, CKR_ARGUMENTS_BAD);
            assert!(slice_of(ptr::null::<u8>(), 0).unwrap().is_empty());
        }
    }

    #[test]
    fn output_slices_what_it_writes_whatever_length_is_claimed() {
        let mut buf = [0u8; 4];
        // A claimed length far beyond the buffer (and beyond isize::MAX): the
        // fill sees only the 4 bytes needed, so nothing past them is touched.
        let mut len: CK_ULONG = CK_ULONG::MAX;
        // SAFETY: `buf` is writable for the 4 bytes the fill is given.
        unsafe {
            output(
                buf.as_mut_ptr(),
                &mut len,
                || Ok(4),
                |o| {
                    assert_eq!(o.len(), 4);
                    o.copy_from_slice(b"abcd");
                    Ok(4)
                },
            )
            .unwrap();
        }
        assert_eq!((len, &buf), (4, b"abcd"));
    }

    #[test]
    fn gcm_parameters_are_read_from_an_unaligned_block() {
        let iv = [7u8; 12];
        let params = CK_GCM_PARAMS {
            pIv: iv.as_ptr() as *mut u8,
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: ptr::null_mut(),
            ulAADLen: 0,
            ulTagBits: 128,
        };
        let size = size_of::<CK_GCM_PARAMS>();
        let mut block = vec![0u8; size + 1];
        // SAFETY: `block` has room for the structure at offset 1.
        unsafe {
            ptr::copy_nonoverlapping(
                &params as *const CK_GCM_PARAMS as *const u8,
                block.as_mut_ptr().add(1),
                size,
            );
            let g = gcm_params(block.as_mut_ptr().add(1) as CK_VOID_PTR, size as CK_ULONG).unwrap();
            assert_eq!((g.iv, g.tag_len), (iv.to_vec(), 16));
        }
    }
}
