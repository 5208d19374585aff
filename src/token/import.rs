//! `C_CreateObject` of EC keys: a given public point or private value becomes a session key (`CKA_TOKEN=false`) that signs or verifies like a generated one.
//!
//! The private value is read by the caller straight into the locked arena,
//! checked on its curve there, and never stored: the store holds no key
//! material, so a token key (`CKA_TOKEN=true`) is never imported.

#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::secure::SecretBytes;

use super::session::{self, Kind};
use super::*;

/// A public point of curve `kt` as p11derive keeps it (uncompressed SEC1,
/// or the 32 bytes of an Ed25519 key), from `CKA_EC_POINT`: the point in a
/// DER OCTET STRING (PKCS#11) or bare; `None` when it is not on the curve.
fn public_point(kt: KeyType, given: &[u8]) -> Option<Vec<u8>> {
    if kt == KeyType::Ed25519 {
        // The 32 bytes, bare or in their DER OCTET STRING.
        let bytes = match given {
            [0x04, 32, rest @ ..] => rest,
            _ => given,
        };
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
        return Some(bytes.to_vec());
    }
    let point = mechanisms::sec1_point(given, kt.key_len())?;
    crate::hd::uncompressed(kt, point).ok()
}

impl Provider {
    /// `C_CreateObject` of `CKO_PUBLIC_KEY` (`CKA_EC_PARAMS`, `CKA_EC_POINT`)
    /// or `CKO_PRIVATE_KEY` (`CKA_EC_PARAMS`, `CKA_VALUE`, given in `value`,
    /// already in locked memory) of secp256k1, P-256 or Ed25519.
    pub(super) fn import_ec(
        &self,
        h: CK_SESSION_HANDLE,
        template: &[TemplateAttr],
        class: CK_OBJECT_CLASS,
        value: Option<SecretBytes>,
    ) -> Result<CK_OBJECT_HANDLE> {
        let private = class == CKO_PRIVATE_KEY;
        let what = if private {
            "C_CreateObject (EC private key)"
        } else {
            "C_CreateObject (EC public key)"
        };
        if find(template, CKA_TOKEN).is_some_and(|v| v.first().is_some_and(|&b| b != 0)) {
            return Err(Error::with(
                CKR_TEMPLATE_INCONSISTENT,
                format!(
                    "{what}: CKA_TOKEN=true: p11derive's store holds no imported keys (token \
                     keys are derived assets); import it as a session object (CKA_TOKEN=false), \
                     or make an asset with C_GenerateKeyPair"
                ),
            ));
        }
        self.permit(h, crate::access::Action::SessionObjects, None, None)?;
        let params = find(template, CKA_EC_PARAMS).ok_or_else(|| {
            Error::with(
                CKR_TEMPLATE_INCOMPLETE,
                format!("{what}: no CKA_EC_PARAMS; name the curve (secp256k1, P-256 or Ed25519)"),
            )
        })?;
        let kt = objects::curve_from_params(params).ok_or_else(|| {
            Error::with(
                CKR_CURVE_NOT_SUPPORTED,
                format!(
                    "{what}: CKA_EC_PARAMS {} names no supported curve (secp256k1, P-256, \
                     Ed25519)",
                    crate::store::hex(params)
                ),
            )
        })?;
        let kind = Kind::Ec(kt);
        let key_type = find(template, CKA_KEY_TYPE).and_then(ulong);
        if key_type.is_none() {
            return Err(Error::with(
                CKR_TEMPLATE_INCOMPLETE,
                format!("{what}: no CKA_KEY_TYPE (CKK_EC, or CKK_EC_EDWARDS for Ed25519)"),
            ));
        }
        if !session::key_type_fits(kind, key_type) {
            return Err(Error::with(
                CKR_TEMPLATE_INCONSISTENT,
                format!(
                    "{what}: CKA_KEY_TYPE does not fit the curve {kt} (CKK_EC for secp256k1 and \
                     P-256, CKK_EC_EDWARDS for Ed25519)"
                ),
            ));
        }
        let obj_class = if private {
            Class::Private
        } else {
            Class::Public
        };
        let w = session::wish(template, obj_class, kind, what)?;
        let invalid =
            |why: &str| Error::with(CKR_ATTRIBUTE_VALUE_INVALID, format!("{what}: {why}"));
        if !private {
            let given = find(template, CKA_EC_POINT).ok_or_else(|| {
                Error::with(CKR_TEMPLATE_INCOMPLETE, format!("{what}: no CKA_EC_POINT"))
            })?;
            let point = public_point(kt, given).ok_or_else(|| {
                invalid(&format!(
                    "CKA_EC_POINT is not a point of {kt} (give the DER OCTET STRING of an \
                     uncompressed or compressed point, or the 32 bytes of an Ed25519 key)"
                ))
            })?;
            self.may_make(h, w.private)?;
            let obj = w.object(h, (obj_class, kind), None, Some(point), false);
            return Ok(self.insert(obj));
        }
        let given = value.ok_or_else(|| {
            Error::with(
                CKR_TEMPLATE_INCOMPLETE,
                format!("{what}: no CKA_VALUE (the private value)"),
            )
        })?;
        // The scalar (big-endian, left-padded to the curve's length) or the
        // Ed25519 seed (exactly 32 bytes), in locked memory.
        let n = kt.key_len();
        let fits = match kt {
            KeyType::Ed25519 => given.len() == n,
            _ => (1..=n).contains(&given.len()),
        };
        if !fits {
            return Err(invalid(&format!(
                "CKA_VALUE has {} bytes; a {kt} private value is {}",
                given.len(),
                if kt == KeyType::Ed25519 {
                    "a 32-byte seed".to_string()
                } else {
                    format!("a scalar of at most {n} bytes")
                }
            )));
        }
        let mut key = SecretBytes::with_capacity(n).map_err(|m| Error::with(CKR_HOST_MEMORY, m))?;
        key.push(&[0u8; 66][..n - given.len()]);
        key.push(&given);
        drop(given);
        let point = mechanisms::fingerprint(kt, &key).ok_or_else(|| {
            invalid(&format!(
                "CKA_VALUE is not a valid {kt} private key (zero, or not below the curve's order)"
            ))
        })?;
        self.may_make(h, w.private)?;
        let obj = w.object(
            h,
            (obj_class, kind),
            Some(Arc::new(key)),
            Some(point),
            false,
        );
        Ok(self.insert(obj))
    }
}
