//! Recoverable ECDSA over secp256k1 (design §6.1), for Ethereum-style signers: `r || s || v` over a 32-byte digest, `s` low, `v` the recovery id `ecrecover` uses; recovery and verification.

#![forbid(unsafe_code)]

use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};

use crate::ck::*;
use crate::error::{Error, Result};
use crate::secure;

use super::warm_up;

/// Length of a recoverable signature `r (32) || s (32) || v (1)`.
pub const RECOVERABLE_SIG_LEN: usize = 65;

/// The digest a recoverable signature is over: exactly 32 bytes, computed by
/// the caller (unlike `CKM_ECDSA`, no truncation or padding: `ecrecover`
/// takes a 32-byte hash).
fn digest_of(digest: &[u8]) -> Result<&[u8; 32]> {
    digest.try_into().map_err(|_| {
        Error::with(
            CKR_DATA_LEN_RANGE,
            format!(
                "recoverable ECDSA signs a 32-byte digest, not {} bytes: hash the message \
                 first (Keccak-256 for Ethereum) and pass the hash",
                digest.len()
            ),
        )
    })
}

/// Signs a 32-byte digest with a secp256k1 scalar: the RFC 6979 nonce of
/// [`super::ecdsa_sign`] (so `r || s` are the bytes it returns for the same
/// key and digest), `s` low, and `v` ∈ {0, 1} the recovery id of the
/// low-S signature.
pub fn recoverable_sign(scalar: &[u8], digest: &[u8]) -> Result<[u8; RECOVERABLE_SIG_LEN]> {
    let z = digest_of(digest)?;
    warm_up();
    secure::confined_at(secure::Depth::Deep, || {
        use ecdsa::hazmat::sign_prehashed_rfc6979;
        let bad_key = || Error::with(CKR_GENERAL_ERROR, "derived scalar out of range");
        let repr = k256::FieldBytes::try_from(scalar).map_err(|_| bad_key())?;
        let d = Option::<k256::NonZeroScalar>::from(k256::NonZeroScalar::from_repr(repr))
            .ok_or_else(bad_key)?;
        // secp256k1 normalizes to low-S, and the recovery id it returns is
        // that of the normalized signature (negating s flips R's y parity).
        let (sig, id) = sign_prehashed_rfc6979::<k256::Secp256k1, sha2::Sha256>(&d, z, &[]);
        if id.is_x_reduced() {
            // R.x ≥ n: probability about 2^-128, and v ∈ {0, 1} cannot say so.
            return Err(Error::with(
                CKR_FUNCTION_FAILED,
                "recoverable ECDSA: this digest's nonce point has x ≥ n, so its recovery id \
                 is 2 or 3, which v ∈ {0, 1} cannot carry; sign a different digest",
            ));
        }
        let mut out = [0u8; RECOVERABLE_SIG_LEN];
        out[..64].copy_from_slice(&sig.to_bytes());
        out[64] = u8::from(id.is_y_odd());
        Ok(out)
    })
}

/// `r || s` and `v` of a 65-byte recoverable signature, `v` 0 or 1.
fn parse(sig: &[u8]) -> Result<(Signature, RecoveryId)> {
    if sig.len() != RECOVERABLE_SIG_LEN {
        return Err(Error::rv(CKR_SIGNATURE_LEN_RANGE));
    }
    let v = sig[64];
    if v > 1 {
        return Err(Error::with(
            CKR_SIGNATURE_INVALID,
            format!(
                "recoverable ECDSA: v is {v}; it must be the recovery id 0 or 1 (for \
                 Ethereum's legacy 27/28 subtract 27; for EIP-155 v, subtract 35 + 2·chain id)"
            ),
        ));
    }
    let rs = Signature::from_slice(&sig[..64]).map_err(|_| Error::rv(CKR_SIGNATURE_INVALID))?;
    Ok((rs, RecoveryId::new(v == 1, false)))
}

fn recover_key(z: &[u8; 32], rs: &Signature, id: RecoveryId) -> Result<VerifyingKey> {
    VerifyingKey::recover_from_prehash(z, rs, id).map_err(|_| Error::rv(CKR_SIGNATURE_INVALID))
}

/// The public key `ecrecover` finds for a signature over a 32-byte digest,
/// as an uncompressed SEC1 point (65 bytes). Like `ecrecover`, any `s` in
/// [1, n−1] is accepted (a high-S signature recovers with its parity
/// flipped); [`recoverable_verify`] is the strict check.
pub fn recover(digest: &[u8], sig: &[u8]) -> Result<Vec<u8>> {
    let z = digest_of(digest)?;
    let (rs, id) = parse(sig)?;
    let key = recover_key(z, &rs, id)?;
    Ok(key.to_sec1_point(false).as_bytes().to_vec())
}

/// Verifies a recoverable signature against a SEC1 public point: 65 bytes,
/// `v` 0 or 1, `s` low, a valid ECDSA signature of the digest under `point`,
/// and `v` the recovery id that yields `point`.
pub fn recoverable_verify(point: &[u8], digest: &[u8], sig: &[u8]) -> Result<()> {
    use k256::ecdsa::signature::hazmat::PrehashVerifier;
    let (rs, id) = parse(sig)?;
    let z = digest_of(digest)?;
    let key = VerifyingKey::from_sec1_bytes(point).map_err(|_| {
        Error::with(
            CKR_GENERAL_ERROR,
            "recorded public point is not on the curve",
        )
    })?;
    let invalid = || Error::rv(CKR_SIGNATURE_INVALID);
    if rs.normalize_s() != rs {
        return Err(invalid());
    }
    key.verify_prehash(z, &rs).map_err(|_| invalid())?;
    if recover_key(z, &rs, id)? != key {
        return Err(invalid());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mechanisms::{ecdsa_sign, public_point, unhex};
    use crate::types::{KeyType, Secret32};

    const N_MINUS_1: &str = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364140";

    /// Scalars 1, 2, n−1 and 24 pseudo-random ones (SHA-256 of a fixed
    /// seed and a counter).
    fn scalars() -> Vec<[u8; 32]> {
        use sha2::Digest;
        let mut out = vec![[0u8; 32]; 2];
        out[0][31] = 1;
        out[1][31] = 2;
        out.push(unhex(N_MINUS_1).try_into().unwrap());
        for i in 0u32..24 {
            let h = sha2::Sha256::digest(
                [b"p11derive recoverable scalar ", &i.to_be_bytes()[..]].concat(),
            );
            out.push(h.into());
        }
        out
    }

    fn digests() -> Vec<[u8; 32]> {
        use sha2::Digest;
        // All ones is ≥ n: the digest is reduced mod n as ECDSA requires.
        let mut out = vec![[0u8; 32], [0xff; 32]];
        for i in 0u32..4 {
            let h = sha2::Sha256::digest(
                [b"p11derive recoverable digest ", &i.to_be_bytes()[..]].concat(),
            );
            out.push(h.into());
        }
        out
    }

    fn rv(r: Result<impl std::fmt::Debug>) -> CK_RV {
        r.unwrap_err().rv
    }

    #[test]
    fn signatures_are_low_s_and_recover_to_the_signer() {
        let mut seen_v = [0usize; 2];
        for scalar in scalars() {
            let secret = Secret32::copy_of(&scalar).unwrap();
            let point = public_point(KeyType::Secp256k1, &secret).unwrap();
            for digest in digests() {
                let sig = recoverable_sign(&scalar, &digest).unwrap();
                let (rs, id) = parse(&sig).unwrap();
                assert!(rs.normalize_s() == rs, "high-S signature");
                assert!(sig[64] <= 1);
                seen_v[usize::from(sig[64])] += 1;
                assert!(!id.is_x_reduced());
                assert_eq!(recover(&digest, &sig).unwrap(), point);
                let plain = ecdsa_sign(KeyType::Secp256k1, &scalar, &digest).unwrap();
                assert_eq!(sig[..64], plain[..]);
                recoverable_verify(&point, &digest, &sig).unwrap();

                let mut flipped = sig;
                flipped[64] ^= 1;
                assert_eq!(
                    rv(recoverable_verify(&point, &digest, &flipped)),
                    CKR_SIGNATURE_INVALID
                );
                assert_ne!(recover(&digest, &flipped).unwrap(), point);

                // The high-S twin (n − s) with either v is refused, though
                // `ecrecover` recovers it with v flipped.
                let (r, s) = rs.split_scalars();
                let high = Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
                for v in [0u8, 1] {
                    let mut twin = [0u8; RECOVERABLE_SIG_LEN];
                    twin[..64].copy_from_slice(&high.to_bytes());
                    twin[64] = v;
                    assert_eq!(
                        rv(recoverable_verify(&point, &digest, &twin)),
                        CKR_SIGNATURE_INVALID
                    );
                    if v != sig[64] {
                        assert_eq!(recover(&digest, &twin).unwrap(), point);
                    }
                }

                let mut other = digest;
                other[31] ^= 1;
                assert_eq!(
                    rv(recoverable_verify(&point, &other, &sig)),
                    CKR_SIGNATURE_INVALID
                );
                assert_ne!(recover(&other, &sig).unwrap(), point);

                assert_eq!(
                    rv(recoverable_verify(&point, &digest, &sig[..64])),
                    CKR_SIGNATURE_LEN_RANGE
                );
                let long = [&sig[..], &[0]].concat();
                assert_eq!(
                    rv(recoverable_verify(&point, &digest, &long)),
                    CKR_SIGNATURE_LEN_RANGE
                );
                assert_eq!(rv(recover(&digest, &sig[..64])), CKR_SIGNATURE_LEN_RANGE);
            }
        }
        assert!(seen_v[0] > 0 && seen_v[1] > 0, "v values seen: {seen_v:?}");
    }

    #[test]
    fn only_32_byte_digests_are_signed() {
        let scalar = [7u8; 32];
        let point = public_point(KeyType::Secp256k1, &Secret32::copy_of(&scalar).unwrap()).unwrap();
        let sig = recoverable_sign(&scalar, &[1; 32]).unwrap();
        for len in [0usize, 20, 31, 33, 64] {
            let digest = vec![1u8; len];
            let e = recoverable_sign(&scalar, &digest).unwrap_err();
            assert_eq!(e.rv, CKR_DATA_LEN_RANGE);
            let m = e.message.unwrap();
            assert!(
                m.contains("Keccak-256") && m.contains(&format!("not {len} bytes")),
                "{m}"
            );
            assert_eq!(rv(recover(&digest, &sig)), CKR_DATA_LEN_RANGE);
            assert_eq!(
                rv(recoverable_verify(&point, &digest, &sig)),
                CKR_DATA_LEN_RANGE
            );
        }
    }

    #[test]
    fn malformed_signatures_and_keys_are_refused() {
        let scalar = [9u8; 32];
        let point = public_point(KeyType::Secp256k1, &Secret32::copy_of(&scalar).unwrap()).unwrap();
        let digest = [5u8; 32];
        let sig = recoverable_sign(&scalar, &digest).unwrap();
        for v in [2u8, 3, 27, 28] {
            let mut bad = sig;
            bad[64] = v;
            let e = recoverable_verify(&point, &digest, &bad).unwrap_err();
            assert_eq!(e.rv, CKR_SIGNATURE_INVALID);
            assert!(e.message.unwrap().contains("subtract 27"));
            assert_eq!(rv(recover(&digest, &bad)), CKR_SIGNATURE_INVALID);
        }
        // r = 0, s = 0, r = n: not a signature.
        let n = unhex("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
        for (at, value) in [
            (0usize, vec![0u8; 32]),
            (32, vec![0u8; 32]),
            (0, n.clone()),
            (32, n),
        ] {
            let mut bad = sig;
            bad[at..at + 32].copy_from_slice(&value);
            assert_eq!(
                rv(recoverable_verify(&point, &digest, &bad)),
                CKR_SIGNATURE_INVALID
            );
            assert_eq!(rv(recover(&digest, &bad)), CKR_SIGNATURE_INVALID);
        }
        // Another key's point, a compressed point, a point off the curve.
        let other =
            public_point(KeyType::Secp256k1, &Secret32::copy_of(&[8u8; 32]).unwrap()).unwrap();
        assert_eq!(
            rv(recoverable_verify(&other, &digest, &sig)),
            CKR_SIGNATURE_INVALID
        );
        let mut compressed = vec![2 + (point[64] & 1)];
        compressed.extend_from_slice(&point[1..33]);
        recoverable_verify(&compressed, &digest, &sig).unwrap();
        let mut off = point.clone();
        off[64] ^= 1;
        assert_eq!(
            rv(recoverable_verify(&off, &digest, &sig)),
            CKR_GENERAL_ERROR
        );
        // A scalar of 0, n or the wrong length is no key.
        assert!(recoverable_sign(&[0; 32], &digest).is_err());
        assert!(recoverable_sign(&unhex(N_MINUS_1)[..31], &digest).is_err());
    }

    /// Known answers computed independently with Python's `eth_keys` 0.8
    /// (`eth_keys.keys.PrivateKey(key).sign_msg_hash(digest).to_bytes()`,
    /// both its native and its coincurve/libsecp256k1 backends give the same
    /// bytes), digest = Keccak-256(b"p11derive recoverable ECDSA known answer
    /// <i>") via `eth_utils.keccak`. `r` equals python-ecdsa's RFC 6979
    /// `sign_digest_deterministic` with SHA-256, whose raw `s` was high in the
    /// cases marked so (there `v` had to flip with the normalization).
    /// (digest, r || s || v, raw s was high)
    const ETH_KEYS: [(&str, &str, bool); 4] = [
        (
            "94a6445aa7fd3dacab77f39d278fcfb01ad88ad3d7df6e62eb5cbd1e35f23219",
            "76b82e2e9c0a618158eb39c0300b879a0d7d30555209935fd544e37ce9f1b2a5595a9492c0ddba82e79ead744b4c9f322cdc250ea77fe752f799fa9e4778beb401",
            true,
        ),
        (
            "a0232df98879b9fff56d7d9c10c13a38abbaeff674a9d60a116ef844e40bb477",
            "65173116b4c074fe473a08bc79123c28e23bb890ef7bed8a73d8ce1adafcfadf13d0084b3ec51293cf6cba37adf65d6c3242d4cd578fa963a69b733c5c522bca00",
            false,
        ),
        (
            "60f2194becb0398b179eea9235eeca9fe363e718b0d160be6577daf5e23fdc7c",
            "afcb41b17a6ab2638e72e56c945a67f196f42b90931deed879ea1ff19725ca3c4be0f43f95eeec2b4c97057f5700fb1489e55d3245080feb1240b164811b728e00",
            true,
        ),
        (
            "442eae1fa0d835303d20404467d82413951628807415d698fd1ef939815a3b0b",
            "2b6b31878db4ed3d018af1a233bfa482838e3e6236d4efb0b98b9f4d1605471502a1327e2b231abdf61e4ea79b0eb08e37581c2a1347b706b8e3bc11acb08ffd01",
            false,
        ),
    ];

    /// The key of the `ETH_KEYS` vectors and its public key as `eth_keys`
    /// gives it (`PrivateKey(key).public_key.to_bytes()`, x || y).
    const ETH_KEY: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
    const ETH_PUBLIC: &str = "4e3b81af9c2234cad09d679ce6035ed1392347ce64ce405f5dcd36228a25de6e47fd35c4215d1edf53e6f83de344615ce719bdb0fd878f6ed76f06dd277956de";

    #[test]
    fn eth_keys_known_answers() {
        let key = unhex(ETH_KEY);
        let point = [&[4u8][..], &unhex(ETH_PUBLIC)].concat();
        for (digest, expected, _raw_high) in ETH_KEYS {
            let digest = unhex(digest);
            let sig = recoverable_sign(&key, &digest).unwrap();
            assert_eq!(sig.to_vec(), unhex(expected));
            assert_eq!(recover(&digest, &sig).unwrap(), point);
            recoverable_verify(&point, &digest, &sig).unwrap();
        }
        assert!(ETH_KEYS.iter().any(|v| v.2 && v.1.ends_with("00")));
        assert!(ETH_KEYS.iter().any(|v| v.2 && v.1.ends_with("01")));
    }
}
