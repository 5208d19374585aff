//! ECDSA over secp256k1, P-256, P-384 and P-521: RFC 6979 signing (low-S on secp256k1), verification, X9.62 digest truncation, public points.

#![forbid(unsafe_code)]

use crate::ck::*;
use crate::error::{Error, Result};
use crate::secure;
use crate::types::KeyType;

use super::digest::Hasher;
use super::warm_up;

/// Length of an ECDSA signature `r || s` on the 256-bit curves.
pub const ECDSA_SIG_LEN: usize = 64;

/// The ECDSA mechanisms: `None` hasher for raw `CKM_ECDSA`.
pub fn ecdsa_hasher(mech: CK_MECHANISM_TYPE) -> Result<Option<Hasher>> {
    let digest = match mech {
        CKM_ECDSA => return Ok(None),
        CKM_ECDSA_SHA1 => CKM_SHA_1,
        CKM_ECDSA_SHA224 => CKM_SHA224,
        CKM_ECDSA_SHA256 => CKM_SHA256,
        CKM_ECDSA_SHA384 => CKM_SHA384,
        CKM_ECDSA_SHA512 => CKM_SHA512,
        _ => return Err(Error::rv(CKR_MECHANISM_INVALID)),
    };
    Ok(Hasher::for_digest(digest))
}

/// The digest as ECDSA uses it on a 256-bit order: the leftmost 256 bits of a
/// longer input, or a shorter input read as a big-endian integer (X9.62).
fn field_digest(input: &[u8]) -> [u8; 32] {
    let mut z = [0u8; 32];
    if input.len() >= 32 {
        z.copy_from_slice(&input[..32]);
    } else {
        z[32 - input.len()..].copy_from_slice(input);
    }
    z
}

/// Signs a digest with an EC scalar: RFC 6979 nonce, raw `r || s`, low-S on
/// secp256k1 (its convention; P-256 signatures are left as computed).
pub fn ecdsa_sign(kt: KeyType, scalar: &[u8], digest: &[u8]) -> Result<[u8; ECDSA_SIG_LEN]> {
    warm_up();
    secure::confined_at(secure::Depth::Deep, || {
        // The RFC 6979 signing of k256's and p256's `SigningKey`, without
        // building a `SigningKey`: that computes the public key, a second
        // scalar multiplication per signature.
        use ecdsa::hazmat::sign_prehashed_rfc6979;
        let z = field_digest(digest);
        let bad_key = || Error::with(CKR_GENERAL_ERROR, "derived scalar out of range");
        if scalar.len() != 32 {
            return Err(bad_key());
        }
        let mut out = [0u8; ECDSA_SIG_LEN];
        match kt {
            KeyType::Secp256k1 => {
                let repr = k256::FieldBytes::try_from(scalar).map_err(|_| bad_key())?;
                let d = Option::<k256::NonZeroScalar>::from(k256::NonZeroScalar::from_repr(repr))
                    .ok_or_else(bad_key)?;
                let (sig, _) = sign_prehashed_rfc6979::<k256::Secp256k1, sha2::Sha256>(&d, &z, &[]);
                out.copy_from_slice(&sig.to_bytes());
            }
            KeyType::P256 => {
                let repr = p256::FieldBytes::try_from(scalar).map_err(|_| bad_key())?;
                let d = Option::<p256::NonZeroScalar>::from(p256::NonZeroScalar::from_repr(repr))
                    .ok_or_else(bad_key)?;
                // Same signature as RustCrypto's, with a faster k·G.
                out = super::p256_base::sign(&d, &z)?;
            }
            _ => return Err(Error::rv(CKR_KEY_TYPE_INCONSISTENT)),
        }
        Ok(out)
    })
}

/// The length of an ECDSA signature `r || s` on the curve of `kt`.
pub fn ecdsa_sig_len(kt: KeyType) -> usize {
    match kt {
        KeyType::P384 => 96,
        KeyType::P521 => 132,
        _ => ECDSA_SIG_LEN,
    }
}

/// Signs a digest with a P-384 or P-521 scalar (48 or 66 bytes): the RFC
/// 6979 nonce (HMAC with SHA-384 and SHA-512, as the curve crates do) and
/// the X9.62 digest conversion of RustCrypto's `ecdsa::hazmat`; raw
/// `r || s`, S as computed (no low-S rule on the NIST curves).
pub fn wide_sign(kt: KeyType, scalar: &[u8], digest: &[u8]) -> Result<Vec<u8>> {
    secure::confined_at(secure::Depth::Deep, || {
        use ecdsa::hazmat::sign_prehashed_rfc6979;
        let bad_key = || Error::with(CKR_GENERAL_ERROR, "derived scalar out of range");
        match kt {
            KeyType::P384 => {
                let repr = p384::FieldBytes::try_from(scalar).map_err(|_| bad_key())?;
                let d = Option::<p384::NonZeroScalar>::from(p384::NonZeroScalar::from_repr(repr))
                    .ok_or_else(bad_key)?;
                let (sig, _) =
                    sign_prehashed_rfc6979::<p384::NistP384, sha2::Sha384>(&d, digest, &[]);
                Ok(sig.to_bytes().to_vec())
            }
            KeyType::P521 => {
                let repr = p521::FieldBytes::try_from(scalar).map_err(|_| bad_key())?;
                let d = Option::<p521::NonZeroScalar>::from(p521::NonZeroScalar::from_repr(repr))
                    .ok_or_else(bad_key)?;
                let (sig, _) =
                    sign_prehashed_rfc6979::<p521::NistP521, sha2::Sha512>(&d, digest, &[]);
                Ok(sig.to_bytes().to_vec())
            }
            _ => Err(Error::rv(CKR_KEY_TYPE_INCONSISTENT)),
        }
    })
}

/// The uncompressed SEC1 public point of an EC scalar of any ECDSA curve
/// (`kt.key_len()` bytes).
pub fn public_point_of(kt: KeyType, scalar: &[u8]) -> Option<Vec<u8>> {
    match kt {
        KeyType::Secp256k1 | KeyType::P256 => public_point(kt, scalar.try_into().ok()?),
        KeyType::P384 | KeyType::P521 => secure::confined_at(secure::Depth::Deep, || {
            use p384::elliptic_curve::sec1::ToSec1Point;
            if kt == KeyType::P384 {
                let pk = p384::SecretKey::from_slice(scalar).ok()?.public_key();
                Some(pk.to_sec1_point(false).as_bytes().to_vec())
            } else {
                let pk = p521::SecretKey::from_slice(scalar).ok()?.public_key();
                Some(pk.to_sec1_point(false).as_bytes().to_vec())
            }
        }),
        _ => None,
    }
}

/// Verifies `r || s` over a digest against an uncompressed public point.
/// Any valid signature verifies, high-S ones on secp256k1 included.
pub fn ecdsa_verify(kt: KeyType, point: &[u8], digest: &[u8], sig: &[u8]) -> Result<()> {
    use k256::ecdsa::signature::hazmat::PrehashVerifier;
    if sig.len() != ecdsa_sig_len(kt) {
        return Err(Error::rv(CKR_SIGNATURE_LEN_RANGE));
    }
    let z = field_digest(digest);
    let invalid = || Error::rv(CKR_SIGNATURE_INVALID);
    let bad_point = || {
        Error::with(
            CKR_GENERAL_ERROR,
            "recorded public point is not on the curve",
        )
    };
    match kt {
        KeyType::Secp256k1 => {
            let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad_point())?;
            let sig = k256::ecdsa::Signature::from_slice(sig).map_err(|_| invalid())?;
            // k256 accepts only low-S; a high-S signature is valid iff its
            // normalized twin is.
            let sig = sig.normalize_s();
            key.verify_prehash(&z, &sig).map_err(|_| invalid())
        }
        KeyType::P256 => {
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad_point())?;
            let sig = p256::ecdsa::Signature::from_slice(sig).map_err(|_| invalid())?;
            key.verify_prehash(&z, &sig).map_err(|_| invalid())
        }
        KeyType::P384 => {
            let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad_point())?;
            let sig = p384::ecdsa::Signature::from_slice(sig).map_err(|_| invalid())?;
            key.verify_prehash(digest, &sig).map_err(|_| invalid())
        }
        KeyType::P521 => {
            let key = p521::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad_point())?;
            let sig = p521::ecdsa::Signature::from_slice(sig).map_err(|_| invalid())?;
            key.verify_prehash(digest, &sig).map_err(|_| invalid())
        }
        _ => Err(Error::rv(CKR_KEY_TYPE_INCONSISTENT)),
    }
}

/// The uncompressed SEC1 public point (65 bytes) of an EC scalar.
pub fn public_point(kt: KeyType, scalar: &[u8; 32]) -> Option<Vec<u8>> {
    warm_up();
    secure::confined_at(secure::Depth::Deep, || {
        use k256::elliptic_curve::sec1::ToSec1Point;
        match kt {
            KeyType::Secp256k1 => {
                let pk = k256::SecretKey::from_slice(scalar).ok()?.public_key();
                Some(pk.to_sec1_point(false).as_bytes().to_vec())
            }
            KeyType::P256 => {
                let pk = p256::SecretKey::from_slice(scalar).ok()?.public_key();
                Some(pk.to_sec1_point(false).as_bytes().to_vec())
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Secret32;

    #[test]
    fn short_and_long_digests_follow_x962() {
        assert_eq!(field_digest(&[1, 2])[30..], [1, 2]);
        assert!(field_digest(&[1, 2])[..30].iter().all(|&b| b == 0));
        let long: Vec<u8> = (0..64).collect();
        assert_eq!(field_digest(&long)[..], long[..32]);
    }

    #[test]
    fn signatures_verify_and_secp256k1_is_low_s() {
        let scalar = Secret32::copy_of(&[7u8; 32]).unwrap();
        for kt in [KeyType::Secp256k1, KeyType::P256] {
            let point = public_point(kt, &scalar).unwrap();
            for len in [1usize, 20, 32, 64] {
                let digest = vec![0xa5; len];
                let sig = ecdsa_sign(kt, &scalar[..], &digest).unwrap();
                ecdsa_verify(kt, &point, &digest, &sig).unwrap();
                let mut other = digest.clone();
                other[0] ^= 1;
                assert_eq!(
                    ecdsa_verify(kt, &point, &other, &sig).unwrap_err().rv,
                    CKR_SIGNATURE_INVALID
                );
            }
        }
        // About half of raw signatures would be high-S; all must come out low.
        for i in 0..64u8 {
            let sig = ecdsa_sign(KeyType::Secp256k1, &scalar[..], &[i; 32]).unwrap();
            let s = k256::ecdsa::Signature::from_slice(&sig).unwrap();
            assert!(s.normalize_s() == s, "secp256k1 signature {i} is high-S");
        }
    }

    #[test]
    fn high_s_secp256k1_signatures_still_verify() {
        let scalar = Secret32::copy_of(&[3u8; 32]).unwrap();
        let point = public_point(KeyType::Secp256k1, &scalar).unwrap();
        let sig = ecdsa_sign(KeyType::Secp256k1, &scalar[..], &[1; 32]).unwrap();
        // s' = n - s is the high-S twin of the same signature.
        let (r, s) = k256::ecdsa::Signature::from_slice(&sig)
            .unwrap()
            .split_scalars();
        let high = k256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
        ecdsa_verify(KeyType::Secp256k1, &point, &[1; 32], &high.to_bytes()).unwrap();
    }

    #[test]
    fn wrong_signature_length_is_len_range() {
        let scalar = Secret32::copy_of(&[7u8; 32]).unwrap();
        let point = public_point(KeyType::P256, &scalar).unwrap();
        let e = ecdsa_verify(KeyType::P256, &point, &[0; 32], &[0; 63]).unwrap_err();
        assert_eq!(e.rv, CKR_SIGNATURE_LEN_RANGE);
    }

    #[test]
    fn p384_and_p521_sign_and_verify() {
        for (kt, len) in [(KeyType::P384, 48), (KeyType::P521, 66)] {
            let mut scalar = vec![0x42u8; len];
            scalar[0] = 1;
            let point = public_point_of(kt, &scalar).unwrap();
            assert_eq!(point.len(), 1 + 2 * len);
            for digest in [[7u8; 20].as_slice(), &[8u8; 32], &[9u8; 48], &[10u8; 64]] {
                let sig = wide_sign(kt, &scalar, digest).unwrap();
                assert_eq!(sig.len(), ecdsa_sig_len(kt));
                assert_eq!(sig, wide_sign(kt, &scalar, digest).unwrap(), "RFC 6979");
                ecdsa_verify(kt, &point, digest, &sig).unwrap();
                let mut other = digest.to_vec();
                other[0] ^= 1;
                assert_eq!(
                    ecdsa_verify(kt, &point, &other, &sig).unwrap_err().rv,
                    CKR_SIGNATURE_INVALID
                );
                assert_eq!(
                    ecdsa_verify(kt, &point, digest, &sig[1..]).unwrap_err().rv,
                    CKR_SIGNATURE_LEN_RANGE
                );
            }
            // A scalar of the wrong length or out of range signs nothing.
            assert!(wide_sign(kt, &scalar[1..], &[1; 32]).is_err());
            assert!(wide_sign(kt, &vec![0xff; len], &[1; 32]).is_err());
        }
    }
}
