//! Ed25519 (RFC 8032, pure): the public key of a seed, `CKM_EDDSA` signing and verification, and its parameter.

#![forbid(unsafe_code)]

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::ck::*;
use crate::error::{Error, Result};
use crate::secure;

/// Length of an Ed25519 signature `R || S`.
pub const EDDSA_SIG_LEN: usize = 64;

/// Length of an Ed25519 public key (and of its seed).
pub const ED25519_KEY_LEN: usize = 32;

fn seed_of(seed: &[u8]) -> Result<&[u8; 32]> {
    seed.try_into()
        .map_err(|_| Error::with(CKR_GENERAL_ERROR, "an Ed25519 seed is 32 bytes"))
}

/// The RFC 8032 §5.1.5 public key of a 32-byte seed. The expanded secret
/// (SHA-512 of the seed) lives on a secret stack, wiped on return.
pub fn ed25519_public(seed: &[u8]) -> Result<[u8; ED25519_KEY_LEN]> {
    let seed = seed_of(seed)?;
    Ok(secure::confined(|| {
        SigningKey::from_bytes(seed).verifying_key().to_bytes()
    }))
}

/// Pure Ed25519 (RFC 8032 §5.1.6) of `msg` under the key whose seed is
/// `seed`. Deterministic: no randomness is involved.
pub fn ed25519_sign(seed: &[u8], msg: &[u8]) -> Result<[u8; EDDSA_SIG_LEN]> {
    let seed = seed_of(seed)?;
    Ok(secure::confined(|| {
        SigningKey::from_bytes(seed).sign(msg).to_bytes()
    }))
}

/// Verifies a pure Ed25519 signature against a 32-byte public key, strictly
/// (RFC 8032 §5.1.7 with canonical `S`, no small-order keys or `R`).
pub fn ed25519_verify(public: &[u8], msg: &[u8], sig: &[u8]) -> Result<()> {
    if sig.len() != EDDSA_SIG_LEN {
        return Err(Error::rv(CKR_SIGNATURE_LEN_RANGE));
    }
    let public: &[u8; 32] = public.try_into().map_err(|_| {
        Error::with(
            CKR_GENERAL_ERROR,
            "a recorded Ed25519 public key is not 32 bytes",
        )
    })?;
    let key = VerifyingKey::from_bytes(public).map_err(|_| {
        Error::with(
            CKR_GENERAL_ERROR,
            "a recorded Ed25519 public key is not a point of the curve",
        )
    })?;
    let sig =
        ed25519_dalek::Signature::from_slice(sig).map_err(|_| Error::rv(CKR_SIGNATURE_INVALID))?;
    key.verify_strict(msg, &sig)
        .map_err(|_| Error::rv(CKR_SIGNATURE_INVALID))
}

/// The `CKM_EDDSA` parameter: none. PKCS#11 3.0 gives a `CK_EDDSA_PARAMS`
/// only for the other schemes: `phFlag` true is Ed25519ph, false is
/// Ed25519ctx (even with an empty context, which RFC 8032 forbids there).
/// Both are refused: signing them as pure Ed25519 would make signatures no
/// verifier of those schemes accepts.
pub fn check_eddsa_param(param: &[u8]) -> Result<()> {
    if param.is_empty() {
        return Ok(());
    }
    let scheme = if param.len() == size_of::<CK_EDDSA_PARAMS>() && param[0] != 0 {
        "Ed25519ph"
    } else {
        "Ed25519ctx"
    };
    Err(Error::with(
        CKR_MECHANISM_PARAM_INVALID,
        format!(
            "CKM_EDDSA: a CK_EDDSA_PARAMS asks for {scheme}, which p11derive does not implement; \
             give no parameter for pure Ed25519 (RFC 8032)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mechanisms::unhex;

    /// RFC 8032 §7.1: (secret key, public key, message, signature).
    const RFC8032: [(&str, &str, &str, &str); 4] = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
        (
            "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
            "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
        ),
    ];

    #[test]
    fn rfc8032_test_vectors() {
        for (sk, pk, msg, sig) in RFC8032 {
            let (sk, pk, msg, sig) = (unhex(sk), unhex(pk), unhex(msg), unhex(sig));
            assert_eq!(ed25519_public(&sk).unwrap().to_vec(), pk);
            assert_eq!(ed25519_sign(&sk, &msg).unwrap().to_vec(), sig);
            ed25519_verify(&pk, &msg, &sig).unwrap();
            let mut bad = sig.clone();
            bad[10] ^= 1;
            let e = ed25519_verify(&pk, &msg, &bad).unwrap_err();
            assert_eq!(e.rv, CKR_SIGNATURE_INVALID);
            let mut other = msg.clone();
            other.push(0);
            assert_eq!(
                ed25519_verify(&pk, &other, &sig).unwrap_err().rv,
                CKR_SIGNATURE_INVALID
            );
        }
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let pk = unhex(RFC8032[0].1);
        assert_eq!(
            ed25519_verify(&pk, b"", &[0; 63]).unwrap_err().rv,
            CKR_SIGNATURE_LEN_RANGE
        );
        assert!(ed25519_sign(&[0; 31], b"").is_err());
    }

    #[test]
    fn only_pure_ed25519_parameters_pass() {
        check_eddsa_param(&[]).unwrap();
        let size = size_of::<CK_EDDSA_PARAMS>();
        // phFlag false with no context is Ed25519ctx, not pure Ed25519.
        let pure = vec![0u8; size];
        assert_eq!(
            check_eddsa_param(&pure).unwrap_err().rv,
            CKR_MECHANISM_PARAM_INVALID
        );
        let mut ph = pure.clone();
        ph[0] = 1;
        assert_eq!(
            check_eddsa_param(&ph).unwrap_err().rv,
            CKR_MECHANISM_PARAM_INVALID
        );
        let mut ctx = pure.clone();
        let at = std::mem::offset_of!(CK_EDDSA_PARAMS, ulContextDataLen);
        ctx[at] = 3;
        assert_eq!(
            check_eddsa_param(&ctx).unwrap_err().rv,
            CKR_MECHANISM_PARAM_INVALID
        );
        assert_eq!(
            check_eddsa_param(&[0; 3]).unwrap_err().rv,
            CKR_MECHANISM_PARAM_INVALID
        );
    }
}
