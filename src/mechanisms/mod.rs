//! The mechanisms p11derive implements: one registry of what `C_GetMechanismList`/`C_GetMechanismInfo` report, and the algorithms, which know key bytes and key types, never assets.
//!
//! - [`ecdsa`]: ECDSA over secp256k1 and P-256 (P-256 signing through
//!   [`p256_base`]'s constant-time fixed-base multiplication);
//! - [`eddsa`]: pure Ed25519 (RFC 8032);
//! - [`recoverable`]: recoverable ECDSA over secp256k1 (`r || s || v`, as
//!   Ethereum's `ecrecover` takes it);
//! - [`schnorr`]: BIP-340 Schnorr signatures over secp256k1;
//! - [`ecdh`]: ECDH key agreement with the X9.63 KDF;
//! - [`digest`]: SHA-1 and SHA-2 digests;
//! - [`gcm`]: AES-GCM; [`aes_modes`]: AES-ECB, -CBC, -CBC-PAD, -CTR and
//!   -CMAC; [`hmac`]: HMAC-SHA-2; [`keywrap`]: AES key wrap;
//! - [`checkvalue`]: `CKA_CHECK_VALUE` of secret keys.

pub mod aes_modes;
pub mod checkvalue;
pub mod digest;
pub mod ecdh;
pub mod ecdsa;
pub mod eddsa;
pub mod gcm;
pub mod hmac;
pub mod keywrap;
pub mod p256_base;
pub mod recoverable;
pub mod schnorr;

pub use digest::Hasher;
pub use ecdsa::{
    ecdsa_hasher, ecdsa_sig_len, ecdsa_sign, ecdsa_verify, public_point, public_point_of,
    wide_sign, ECDSA_SIG_LEN,
};

use crate::ck::*;
use crate::types::KeyType;

/// Builds the curves' precomputed tables (public data) on an ordinary stack,
/// so the first signature does not build them on a secret stack: that made
/// the deepest secret-stack use (68 KiB) and would size every wipe.
/// Called before every computation that uses them; only the first call works.
pub fn warm_up() {
    static TABLES: std::sync::Once = std::sync::Once::new();
    TABLES.call_once(|| {
        let one = [[0u8; 31].as_slice(), &[1u8]].concat();
        if let Ok(k) = k256::SecretKey::from_slice(&one) {
            let _ = k.public_key();
        }
        if let Ok(k) = p256::SecretKey::from_slice(&one) {
            let _ = k.public_key();
        }
        p256_base::warm_up();
    });
}

/// What identifies a key without revealing it: the public point of an EC
/// scalar, the `CKA_CHECK_VALUE` (3 bytes, PKCS#11) of a secret key.
pub fn fingerprint(kt: KeyType, key: &[u8]) -> Option<Vec<u8>> {
    if key.len() != kt.key_len() {
        return None;
    }
    match kt {
        KeyType::Ed25519 => eddsa::ed25519_public(key).ok().map(|p| p.to_vec()),
        kt if kt.is_ecdsa() => public_point_of(kt, key),
        kt if kt.is_aes() => checkvalue::aes_check_value(key).ok().map(|c| c.to_vec()),
        _ => Some(checkvalue::generic_check_value(key).to_vec()),
    }
}

/// The SEC1 point of a curve whose field elements are `n` bytes, as clients
/// give it (`CKA_EC_POINT`, ECDH's `pPublicData`): the bare point
/// (uncompressed `04 || X || Y`, or compressed) or its DER OCTET STRING.
/// The bare forms are tried first: a bare uncompressed point whose X starts
/// with byte `2n - 1` also parses as an OCTET STRING header. `None` when it
/// is neither; the point is not checked on the curve here.
pub fn sec1_point(given: &[u8], n: usize) -> Option<&[u8]> {
    use der::Decode;
    let bare = |p: &[u8]| {
        (p.len() == 2 * n + 1 && p[0] == 0x04) || (p.len() == n + 1 && matches!(p[0], 2 | 3))
    };
    if bare(given) {
        return Some(given);
    }
    let body = <&der::asn1::OctetStringRef>::from_der(given)
        .ok()?
        .as_bytes();
    bare(body).then_some(body)
}

/// Whether `mech` signs a digest the caller computed (raw `CKM_ECDSA`,
/// recoverable ECDSA) rather than a message: approvals of such a signature
/// name that digest, not the SHA-256 of the data passed.
pub fn signs_caller_digest(mech: CK_MECHANISM_TYPE) -> bool {
    matches!(mech, CKM_ECDSA | CKM_P11DERIVE_ECDSA_RECOVERABLE)
}

/// What `C_GetMechanismInfo` says of each mechanism p11derive implements.
pub fn mechanism_list() -> Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)> {
    let ec_flags = CKF_EC_F_P | CKF_EC_OID | CKF_EC_UNCOMPRESS;
    // ECDSA on secp256k1, P-256, P-384 and P-521 (bits of the order).
    let ec = |flags| CK_MECHANISM_INFO {
        ulMinKeySize: 256,
        ulMaxKeySize: 521,
        flags: flags | ec_flags,
    };
    // secp256k1 only.
    let k1 = |flags| CK_MECHANISM_INFO {
        ulMinKeySize: 256,
        ulMaxKeySize: 256,
        flags: flags | ec_flags,
    };
    // CKM_SHAx_KEY_GEN: token keys of 16 to 64 bytes (in bits, as generic
    // secrets count them).
    let hmac_gen = CK_MECHANISM_INFO {
        ulMinKeySize: 128,
        ulMaxKeySize: 512,
        flags: CKF_GENERATE,
    };
    let digest = CK_MECHANISM_INFO {
        ulMinKeySize: 0,
        ulMaxKeySize: 0,
        flags: CKF_DIGEST,
    };
    let sv = CKF_SIGN | CKF_VERIFY;
    // Key sizes: bytes for AES, bits for generic secrets (PKCS#11 convention).
    let hmac = CK_MECHANISM_INFO {
        ulMinKeySize: 8,
        ulMaxKeySize: 4096,
        flags: sv,
    };
    // AES keys of 16, 24 or 32 bytes (session keys; derived assets of
    // the lengths their types have).
    let aes = |flags| CK_MECHANISM_INFO {
        ulMinKeySize: 16,
        ulMaxKeySize: 32,
        flags,
    };
    vec![
        (CKM_EC_KEY_PAIR_GEN, ec(CKF_GENERATE_KEY_PAIR)),
        (CKM_ECDSA, ec(sv)),
        (CKM_ECDSA_SHA1, ec(sv)),
        (CKM_ECDSA_SHA224, ec(sv)),
        (CKM_ECDSA_SHA256, ec(sv)),
        (CKM_ECDSA_SHA384, ec(sv)),
        (CKM_ECDSA_SHA512, ec(sv)),
        // secp256k1 only (design §6.1; pkcs11-headers/p11derive.h).
        (CKM_P11DERIVE_ECDSA_RECOVERABLE, k1(sv)),
        (CKM_P11DERIVE_BIP340, k1(sv)),
        (
            CKM_EC_EDWARDS_KEY_PAIR_GEN,
            CK_MECHANISM_INFO {
                ulMinKeySize: 256,
                ulMaxKeySize: 256,
                flags: CKF_GENERATE_KEY_PAIR | CKF_EC_OID,
            },
        ),
        (
            CKM_EDDSA,
            CK_MECHANISM_INFO {
                ulMinKeySize: 256,
                ulMaxKeySize: 256,
                flags: sv,
            },
        ),
        // HD children of secp256k1, P-256 and Ed25519 keys.
        (
            CKM_P11DERIVE_HD_CHILD,
            CK_MECHANISM_INFO {
                ulMinKeySize: 256,
                ulMaxKeySize: 256,
                flags: CKF_DERIVE,
            },
        ),
        // ECDH on secp256k1, P-256, P-384 and P-521 keys (cofactor 1: both
        // mechanisms are the same).
        (
            CKM_ECDH1_DERIVE,
            CK_MECHANISM_INFO {
                ulMinKeySize: 256,
                ulMaxKeySize: 521,
                flags: CKF_DERIVE | ec_flags,
            },
        ),
        (
            CKM_ECDH1_COFACTOR_DERIVE,
            CK_MECHANISM_INFO {
                ulMinKeySize: 256,
                ulMaxKeySize: 521,
                flags: CKF_DERIVE | ec_flags,
            },
        ),
        (CKM_SHA_1, digest),
        (CKM_SHA224, digest),
        (CKM_SHA256, digest),
        (CKM_SHA384, digest),
        (CKM_SHA512, digest),
        (
            CKM_AES_KEY_GEN,
            CK_MECHANISM_INFO {
                ulMinKeySize: 16,
                ulMaxKeySize: 32,
                flags: CKF_GENERATE,
            },
        ),
        (
            CKM_AES_GCM,
            CK_MECHANISM_INFO {
                ulMinKeySize: 16,
                ulMaxKeySize: 32,
                // The message-based API too (token/message.rs).
                flags: CKF_ENCRYPT | CKF_DECRYPT | CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT,
            },
        ),
        (CKM_AES_ECB, aes(CKF_ENCRYPT | CKF_DECRYPT)),
        (CKM_AES_CBC, aes(CKF_ENCRYPT | CKF_DECRYPT)),
        (CKM_AES_CBC_PAD, aes(CKF_ENCRYPT | CKF_DECRYPT)),
        (CKM_AES_CTR, aes(CKF_ENCRYPT | CKF_DECRYPT)),
        (CKM_AES_CMAC, aes(sv)),
        (CKM_AES_CMAC_GENERAL, aes(sv)),
        (
            CKM_GENERIC_SECRET_KEY_GEN,
            CK_MECHANISM_INFO {
                ulMinKeySize: 8,
                ulMaxKeySize: 4096,
                flags: CKF_GENERATE,
            },
        ),
        (
            CKM_AES_KEY_WRAP,
            CK_MECHANISM_INFO {
                ulMinKeySize: 16,
                ulMaxKeySize: 32,
                flags: CKF_WRAP | CKF_UNWRAP,
            },
        ),
        (
            CKM_AES_KEY_WRAP_KWP,
            CK_MECHANISM_INFO {
                ulMinKeySize: 16,
                ulMaxKeySize: 32,
                flags: CKF_WRAP | CKF_UNWRAP,
            },
        ),
        (CKM_SHA_1_HMAC, hmac),
        (CKM_SHA224_HMAC, hmac),
        (CKM_SHA256_HMAC, hmac),
        (CKM_SHA384_HMAC, hmac),
        (CKM_SHA512_HMAC, hmac),
        (CKM_SHA_1_KEY_GEN, hmac_gen),
        (CKM_SHA224_KEY_GEN, hmac_gen),
        (CKM_SHA256_KEY_GEN, hmac_gen),
        (CKM_SHA384_KEY_GEN, hmac_gen),
        (CKM_SHA512_KEY_GEN, hmac_gen),
    ]
}

/// Bytes from hex, for the known-answer tests of the mechanisms.
#[cfg(test)]
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[cfg(test)]
mod sec1_tests {
    use super::*;

    /// A bare uncompressed P-256 point whose X begins with 0x3f reads, as
    /// DER, like an OCTET STRING of 63 bytes: it is still the bare point.
    #[test]
    fn bare_points_come_before_der() {
        use p256::elliptic_curve::sec1::ToSec1Point;
        let point = (1u64..)
            .map(|k| {
                let mut s = [0u8; 32];
                s[24..].copy_from_slice(&k.to_be_bytes());
                let sk = p256::SecretKey::from_slice(&s).unwrap();
                sk.public_key().to_sec1_point(false).as_bytes().to_vec()
            })
            .find(|p| p[1] == 0x3f)
            .unwrap();
        assert_eq!(sec1_point(&point, 32), Some(&point[..]));
        let der = [&[0x04, 65][..], &point].concat();
        assert_eq!(sec1_point(&der, 32), Some(&point[..]));
        let compressed = [&[0x02][..], &point[1..33]].concat();
        assert_eq!(sec1_point(&compressed, 32), Some(&compressed[..]));
        // P-521's 133-byte point takes DER's long length form.
        let wide = [&[0x04][..], &[0x01; 132][..]].concat();
        let der = [&[0x04, 0x81, 133][..], &wide].concat();
        assert_eq!(sec1_point(&der, 66), Some(&wide[..]));
        // Neither: a wrong length, a wrong prefix, trailing bytes.
        assert_eq!(sec1_point(&point[..64], 32), None);
        assert_eq!(sec1_point(&[&[0x05][..], &point[1..]].concat(), 32), None);
        assert_eq!(sec1_point(&[&der[..], &[0][..]].concat(), 66), None);
    }
}
