//! BIP-340 Schnorr signatures over secp256k1 (Taproot): signing with caller-given auxiliary randomness, verification against x-only keys or SEC1 points, the x-only key of a point.

#![forbid(unsafe_code)]

use k256::elliptic_curve::sec1::ToSec1Point;
use k256::schnorr::{Signature, SigningKey, VerifyingKey};

use crate::ck::*;
use crate::error::{Error, Result};
use crate::secure;

use super::warm_up;

/// Length of a BIP-340 signature `R.x || s`.
pub const SCHNORR_SIG_LEN: usize = 64;

/// Length of a BIP-340 (x-only) public key.
pub const XONLY_LEN: usize = 32;

/// Signs `msg` as given (BIP-340 signs messages of any length; Taproot's are
/// 32-byte hashes) with a secp256k1 scalar, `aux` the 32 bytes of auxiliary
/// randomness BIP-340 mixes into the nonce (fresh random bytes for each
/// signature; the same `aux` gives the same signature).
///
/// The scalar is used as BIP-340 says: negated when its point has an odd
/// `y`, so the signature verifies under the x-only key [`xonly`] gives of
/// the scalar's public point.
pub fn schnorr_sign(scalar: &[u8], msg: &[u8], aux: &[u8; 32]) -> Result<[u8; SCHNORR_SIG_LEN]> {
    warm_up();
    secure::confined_at(secure::Depth::Deep, || {
        let bad_key = || Error::with(CKR_GENERAL_ERROR, "derived scalar out of range");
        let repr = k256::FieldBytes::try_from(scalar).map_err(|_| bad_key())?;
        // k256's key holds its scalar inline and zeroizes it when dropped,
        // here on the secret stack (which is wiped with every other copy).
        let key = SigningKey::from_bytes(&repr).map_err(|_| bad_key())?;
        // `sign_raw` is k256's BIP-340 signing of the message itself with
        // the given aux; its `Signer` implementation would sign SHA-256 of
        // the message instead.
        let sig = key.sign_raw(msg, aux).map_err(|_| {
            Error::with(
                CKR_FUNCTION_FAILED,
                "BIP-340 signing: the nonce came out zero (probability about 2^-256); sign \
                 again with fresh auxiliary randomness",
            )
        })?;
        Ok(sig.to_bytes())
    })
}

/// The BIP-340 x-only public key of a SEC1 point (65 bytes uncompressed or
/// 33 compressed): its `x`, whatever the parity of its `y`.
pub fn xonly(point: &[u8]) -> Result<[u8; XONLY_LEN]> {
    let key = k256::PublicKey::from_sec1_bytes(point).map_err(|_| {
        Error::with(
            CKR_GENERAL_ERROR,
            format!(
                "a secp256k1 public point ({} bytes) is not a SEC1 point of the curve",
                point.len()
            ),
        )
    })?;
    let compressed = key.to_sec1_point(true);
    let mut out = [0u8; XONLY_LEN];
    out.copy_from_slice(&compressed.as_bytes()[1..]);
    Ok(out)
}

/// Verifies a BIP-340 signature of `msg` (any length) against a public key:
/// a 32-byte x-only key, or a 65-byte uncompressed / 33-byte compressed SEC1
/// point (which stands for its x-only key).
pub fn schnorr_verify(public: &[u8], msg: &[u8], sig: &[u8]) -> Result<()> {
    if sig.len() != SCHNORR_SIG_LEN {
        return Err(Error::rv(CKR_SIGNATURE_LEN_RANGE));
    }
    let x = match public.len() {
        XONLY_LEN => public.try_into().expect("32 bytes"),
        33 | 65 => xonly(public)?,
        n => {
            return Err(Error::with(
                CKR_GENERAL_ERROR,
                format!(
                    "a BIP-340 public key is 32 bytes (x-only) or a SEC1 point of 33 or 65 \
                     bytes, not {n} bytes"
                ),
            ))
        }
    };
    let key = VerifyingKey::from_bytes(&x.into()).map_err(|_| {
        Error::with(
            CKR_GENERAL_ERROR,
            "a BIP-340 public key is not the x-coordinate of a secp256k1 point (x ≥ p, or \
             x³ + 7 has no square root)",
        )
    })?;
    let invalid = || Error::rv(CKR_SIGNATURE_INVALID);
    // Parsing refuses R.x ≥ p and s ≥ n as BIP-340 does; it also refuses
    // s = 0, which BIP-340 would test, but no signature with s = 0 can be
    // found without breaking the challenge hash.
    let sig = Signature::from_slice(sig).map_err(|_| invalid())?;
    key.verify_raw(msg, &sig).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mechanisms::{public_point, unhex};
    use crate::types::{KeyType, Secret32};

    /// The official BIP-340 test vectors, unchanged from
    /// bitcoin/bips/bip-0340/test-vectors.csv.
    const VECTORS: &str = include_str!("../../tests/vectors/bip340.csv");

    struct Row<'a> {
        index: &'a str,
        secret: Option<Vec<u8>>,
        public: Vec<u8>,
        aux: Option<Vec<u8>>,
        msg: Vec<u8>,
        sig: Vec<u8>,
        valid: bool,
        comment: &'a str,
    }

    fn rows() -> Vec<Row<'static>> {
        let mut lines = VECTORS.lines();
        assert_eq!(
            lines.next(),
            Some(
                "index,secret key,public key,aux_rand,message,signature,verification result,comment"
            )
        );
        let hex = |s: &str| unhex(&s.to_ascii_lowercase());
        let opt = |s: &str| (!s.is_empty()).then(|| hex(s));
        lines
            .filter(|l| !l.is_empty())
            .map(|line| {
                let f: Vec<&str> = line.splitn(8, ',').collect();
                assert_eq!(f.len(), 8, "{line}");
                Row {
                    index: f[0],
                    secret: opt(f[1]),
                    public: hex(f[2]),
                    aux: opt(f[3]),
                    msg: hex(f[4]),
                    sig: hex(f[5]),
                    valid: match f[6] {
                        "TRUE" => true,
                        "FALSE" => false,
                        other => panic!("row {}: result {other}", f[0]),
                    },
                    comment: f[7],
                }
            })
            .collect()
    }

    #[test]
    fn bip340_test_vectors() {
        let rows = rows();
        assert_eq!(rows.len(), 19);
        let mut signed = 0;
        for row in &rows {
            let i = row.index;
            if let Some(secret) = &row.secret {
                let aux: [u8; 32] = row.aux.clone().unwrap().try_into().unwrap();
                let sig = schnorr_sign(secret, &row.msg, &aux).unwrap();
                assert_eq!(sig.to_vec(), row.sig, "row {i}: signature");
                let scalar = Secret32::copy_of(&secret[..].try_into().unwrap()).unwrap();
                let point = public_point(KeyType::Secp256k1, &scalar).unwrap();
                assert_eq!(xonly(&point).unwrap().to_vec(), row.public, "row {i}: key");
                // The point itself, both encodings, stands for its x-only key.
                schnorr_verify(&point, &row.msg, &sig).unwrap();
                let mut compressed = vec![2 + (point[64] & 1)];
                compressed.extend_from_slice(&point[1..33]);
                schnorr_verify(&compressed, &row.msg, &sig).unwrap();
                signed += 1;
            }
            let result = schnorr_verify(&row.public, &row.msg, &row.sig);
            match (row.valid, result) {
                (true, Ok(())) => {}
                (false, Err(e)) if row.comment.starts_with("public key") => {
                    assert_eq!(e.rv, CKR_GENERAL_ERROR, "row {i}");
                    assert!(e.message.unwrap().contains("x-coordinate"), "row {i}");
                }
                (false, Err(e)) => assert_eq!(e.rv, CKR_SIGNATURE_INVALID, "row {i}"),
                (valid, result) => panic!(
                    "row {i} ({}): expected {valid}, got {result:?}",
                    row.comment
                ),
            }
        }
        assert_eq!(signed, 8);
        // Messages of 0, 1, 17, 100 and 32 bytes were all signed.
        let lens: Vec<usize> = rows
            .iter()
            .filter(|r| r.secret.is_some())
            .map(|r| r.msg.len())
            .collect();
        assert_eq!(lens, [32, 32, 32, 32, 0, 1, 17, 100]);
    }

    #[test]
    fn tampering_is_refused() {
        let scalar = [0x11u8; 32];
        let point = public_point(KeyType::Secp256k1, &Secret32::copy_of(&scalar).unwrap()).unwrap();
        let x = xonly(&point).unwrap();
        for len in [0usize, 5, 32, 77] {
            let msg = vec![0x42u8; len];
            let sig = schnorr_sign(&scalar, &msg, &[7; 32]).unwrap();
            schnorr_verify(&x, &msg, &sig).unwrap();
            // Other aux, other signature; both verify.
            let sig2 = schnorr_sign(&scalar, &msg, &[8; 32]).unwrap();
            assert_ne!(sig, sig2);
            schnorr_verify(&x, &msg, &sig2).unwrap();
            for at in [0usize, 31, 32, 63] {
                let mut bad = sig;
                bad[at] ^= 1;
                let e = schnorr_verify(&x, &msg, &bad).unwrap_err();
                assert_eq!(e.rv, CKR_SIGNATURE_INVALID, "byte {at}");
            }
            let mut other = msg.clone();
            other.push(0);
            assert_eq!(
                schnorr_verify(&x, &other, &sig).unwrap_err().rv,
                CKR_SIGNATURE_INVALID
            );
            assert_eq!(
                schnorr_verify(&x, &msg, &sig[..63]).unwrap_err().rv,
                CKR_SIGNATURE_LEN_RANGE
            );
            let long = [&sig[..], &[0]].concat();
            assert_eq!(
                schnorr_verify(&x, &msg, &long).unwrap_err().rv,
                CKR_SIGNATURE_LEN_RANGE
            );
        }
    }

    #[test]
    fn keys_and_scalars_are_checked() {
        let sig = [1u8; 64];
        let e = schnorr_verify(&[2u8; 31], b"", &sig).unwrap_err();
        assert_eq!(e.rv, CKR_GENERAL_ERROR);
        assert!(e.message.unwrap().contains("not 31 bytes"));
        let mut off = vec![4u8];
        off.extend_from_slice(&[1u8; 64]);
        assert_eq!(xonly(&off).unwrap_err().rv, CKR_GENERAL_ERROR);
        assert_eq!(
            schnorr_verify(&off, b"", &sig).unwrap_err().rv,
            CKR_GENERAL_ERROR
        );
        assert!(schnorr_sign(&[0; 32], b"", &[0; 32]).is_err());
        assert!(schnorr_sign(&[1; 31], b"", &[0; 32]).is_err());
        let n = unhex("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
        assert!(schnorr_sign(&n, b"", &[0; 32]).is_err());
    }
}
