//! Keys of more lengths and curves (design §6.1, normative).
//!
//! With an asset version's `PRK` and
//! `info = "p11derive-v1 key " || key_type || u8(attempt)`, a key of `L`
//! bytes is the first `L` bytes of `HKDF-Expand-SHA256(PRK, info, L)`, so the
//! 32-byte keys of §2 come out unchanged ([`super::key_from_prk`]).
//!
//! - Secret keys use attempt 0: `aes128` (L 16), `aes192` (24), `aes256`
//!   (32), `hmac-sha256` (32) and `generic-secret-L` (L in decimal, 16 to 64).
//! - EC keys on a curve whose order `n` has `b` bits: `L = ceil(b / 8)`, the
//!   top `8·L − b` bits of the first byte cleared, then 0 or ≥ n moves on to
//!   the next attempt: `secp256k1`, `p256` (L 32), `p384` (L 48), `p521`
//!   (L 66, top 7 bits cleared).
//! - `ed25519`: the RFC 8032 seed is the 32 bytes of attempt 0 (any 32
//!   bytes are a seed).
//!
//! Every asset type ([`crate::types::KeyType`]) follows one of these
//! ([`Scheme::from_key_type`]).

#![forbid(unsafe_code)]

use std::ops::RangeInclusive;

use hkdf::Hkdf;
use sha2::Sha256;

use super::named_key_info;
use crate::ck::{CKR_GENERAL_ERROR, CKR_HOST_MEMORY};
use crate::error::{Error, Result};
use crate::secure::{self, SecretBytes};
use crate::types::KeyType;

/// The lengths `generic-secret-L` may have, in bytes (the asset types'
/// [`crate::types::SECRET_LENS`]).
pub const GENERIC_LENS: RangeInclusive<usize> =
    (*crate::types::SECRET_LENS.start() as usize)..=(*crate::types::SECRET_LENS.end() as usize);

/// HKDF-Expand-SHA256 allows at most 255 blocks of output.
const MAX_EXPAND: usize = 255 * 32;

/// A key type of design §2 and §6.1, by the derivation it follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `aes128`, `aes192`, `aes256`: the key length in bytes (16, 24, 32).
    Aes(usize),
    /// `hmac-sha256` (32 bytes).
    HmacSha256,
    /// `generic-secret-L`: the length `L` in bytes (16 to 64).
    Generic(usize),
    Secp256k1,
    P256,
    P384,
    P521,
    /// The RFC 8032 seed (32 bytes, attempt 0).
    Ed25519,
}

impl Scheme {
    /// The normative ASCII name, as it goes into the HKDF info.
    pub fn name(self) -> String {
        match self {
            Scheme::Aes(len) => format!("aes{}", len * 8),
            Scheme::HmacSha256 => "hmac-sha256".to_string(),
            Scheme::Generic(len) => format!("generic-secret-{len}"),
            Scheme::Secp256k1 => "secp256k1".to_string(),
            Scheme::P256 => "p256".to_string(),
            Scheme::P384 => "p384".to_string(),
            Scheme::P521 => "p521".to_string(),
            Scheme::Ed25519 => "ed25519".to_string(),
        }
    }

    /// The type of a normative name; `None` for anything else (including a
    /// length written other than in plain decimal, like `generic-secret-016`).
    pub fn from_name(name: &str) -> Option<Scheme> {
        let scheme = match name {
            "aes128" => Scheme::Aes(16),
            "aes192" => Scheme::Aes(24),
            "aes256" => Scheme::Aes(32),
            "hmac-sha256" => Scheme::HmacSha256,
            "secp256k1" => Scheme::Secp256k1,
            "p256" => Scheme::P256,
            "p384" => Scheme::P384,
            "p521" => Scheme::P521,
            "ed25519" => Scheme::Ed25519,
            _ => {
                let digits = name.strip_prefix("generic-secret-")?;
                if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Scheme::Generic(digits.parse().ok()?)
            }
        };
        scheme.is_valid().then_some(scheme)
    }

    /// The derivation of an asset key type (the same key bytes as
    /// [`super::key_from_prk`]).
    pub fn from_key_type(kt: KeyType) -> Scheme {
        match kt {
            KeyType::Secp256k1 => Scheme::Secp256k1,
            KeyType::P256 => Scheme::P256,
            KeyType::P384 => Scheme::P384,
            KeyType::P521 => Scheme::P521,
            KeyType::Ed25519 => Scheme::Ed25519,
            KeyType::Aes128 => Scheme::Aes(16),
            KeyType::Aes192 => Scheme::Aes(24),
            KeyType::Aes256 => Scheme::Aes(32),
            KeyType::HmacSha256 => Scheme::HmacSha256,
            // The PKCS#11 key type is the asset's; the derivation is the
            // generic secret's of that length (design §6.1).
            KeyType::Generic(len) | KeyType::Hmac(_, len) => Scheme::Generic(len as usize),
        }
    }

    /// Whether the type has a normative name (an AES key of 16, 24 or 32
    /// bytes; a generic secret of 16 to 64).
    pub fn is_valid(self) -> bool {
        match self {
            Scheme::Aes(len) => matches!(len, 16 | 24 | 32),
            Scheme::Generic(len) => GENERIC_LENS.contains(&len),
            _ => true,
        }
    }

    /// The key length `L` in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Scheme::Aes(len) | Scheme::Generic(len) => len,
            Scheme::HmacSha256 | Scheme::Secp256k1 | Scheme::P256 | Scheme::Ed25519 => 32,
            Scheme::P384 => 48,
            Scheme::P521 => 66,
        }
    }

    /// The bit length `b` of the curve order of an EC type whose key is a
    /// scalar in `[1, n-1]`; `None` for secret keys and Ed25519 seeds.
    pub fn order_bits(self) -> Option<usize> {
        match self {
            Scheme::Secp256k1 | Scheme::P256 => Some(256),
            Scheme::P384 => Some(384),
            Scheme::P521 => Some(521),
            Scheme::Aes(_) | Scheme::HmacSha256 | Scheme::Generic(_) | Scheme::Ed25519 => None,
        }
    }

    /// Whether `key_len()` bytes, read big-endian, are a scalar in
    /// `[1, n-1]`, by the curve crates' constant-time
    /// `NonZeroScalar::from_repr`, never `<` or `==` on the secret bytes.
    /// Runs on the caller's secret stack.
    fn scalar_in_range(self, k: &[u8]) -> bool {
        match self {
            Scheme::Secp256k1 => {
                let mut repr = k256::FieldBytes::default();
                repr.copy_from_slice(k);
                k256::NonZeroScalar::from_repr(repr).is_some().into()
            }
            Scheme::P256 => {
                let mut repr = p256::FieldBytes::default();
                repr.copy_from_slice(k);
                p256::NonZeroScalar::from_repr(repr).is_some().into()
            }
            Scheme::P384 => {
                let mut repr = p384::FieldBytes::default();
                repr.copy_from_slice(k);
                p384::NonZeroScalar::from_repr(repr).is_some().into()
            }
            Scheme::P521 => {
                let mut repr = p521::FieldBytes::default();
                repr.copy_from_slice(k);
                p521::NonZeroScalar::from_repr(repr).is_some().into()
            }
            Scheme::Aes(_) | Scheme::HmacSha256 | Scheme::Generic(_) | Scheme::Ed25519 => true,
        }
    }
}

/// HKDF-Expand-SHA256 (RFC 5869) with output length `len` (1 to 8160), by
/// the `hkdf` crate, into the locked arena; the computation runs on a secret
/// stack ([`secure::confined`]).
pub fn expand_len(prk: &[u8; 32], info: &[u8], len: usize) -> Result<SecretBytes> {
    if len == 0 || len > MAX_EXPAND {
        return Err(Error::with(
            CKR_GENERAL_ERROR,
            format!("HKDF-Expand: output length {len} is outside 1..={MAX_EXPAND}"),
        ));
    }
    secure::confined(|| {
        let failed = |what: &str| Error::with(CKR_GENERAL_ERROR, format!("HKDF-Expand: {what}"));
        let hk = Hkdf::<Sha256>::from_prk(prk).map_err(|_| failed("PRK length"))?;
        let mut out = SecretBytes::with_capacity(len).map_err(|m| {
            Error::with(
                CKR_HOST_MEMORY,
                format!("{len} bytes of HKDF output in the locked arena: {m}"),
            )
        })?;
        hk.expand(info, &mut out.spare()[..len])
            .map_err(|_| failed("output length"))?;
        out.grow(len);
        Ok(out)
    })
}

/// The key bytes of type `scheme` from an asset version's PRK (design §6.1):
/// `L` bytes of attempt 0 for a secret key or an Ed25519 seed; for an EC
/// type, the first attempt whose scalar (top `8·L − b` bits cleared) is in
/// `[1, n-1]`.
pub fn scheme_key_from_prk(prk: &[u8; 32], scheme: Scheme) -> Result<SecretBytes> {
    if !scheme.is_valid() {
        return Err(Error::with(
            CKR_GENERAL_ERROR,
            format!(
                "key type {scheme:?} has no name in design §6.1: AES keys are 16, 24 or 32 \
                 bytes, generic secrets 16 to 64"
            ),
        ));
    }
    let name = scheme.name();
    let len = scheme.key_len();
    secure::confined(|| {
        for attempt in 0..=u8::MAX {
            let mut k = expand_len(prk, &named_key_info(&name, attempt), len)?;
            let Some(bits) = scheme.order_bits() else {
                return Ok(k);
            };
            k[0] &= 0xff >> (8 * len - bits);
            if scheme.scalar_in_range(&k) {
                return Ok(k);
            }
            // Each attempt fails with probability below 2^-32 (P-256), far
            // less on the other curves: 256 failures cannot happen with HMAC.
        }
        Err(Error::with(
            CKR_GENERAL_ERROR,
            format!("HKDF produced 256 out-of-range {name} scalars in a row"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derive::{expand, key_from_prk};

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A PRK whose `p256` attempt 0 is ≥ n (the retry vector `retry-0`,
    /// counter 19631603, root A of tests/vectors/derivation.json).
    const RETRY_PRK: &str = "8d7d0ba81bcdea0ca3a25f18dd7ddaa3c18652b9b681f1232b835a5281c060ce";

    fn prks() -> Vec<[u8; 32]> {
        let mut all: Vec<[u8; 32]> = (0u8..24).map(|i| [i.wrapping_mul(37) ^ 0x5a; 32]).collect();
        all.push(unhex(RETRY_PRK).try_into().unwrap());
        all.push([0xff; 32]);
        all
    }

    fn all_schemes() -> Vec<Scheme> {
        let mut all = vec![
            Scheme::Aes(16),
            Scheme::Aes(24),
            Scheme::Aes(32),
            Scheme::HmacSha256,
            Scheme::Secp256k1,
            Scheme::P256,
            Scheme::P384,
            Scheme::P521,
            Scheme::Ed25519,
        ];
        all.extend(GENERIC_LENS.map(Scheme::Generic));
        all
    }

    #[test]
    fn names_round_trip() {
        for s in all_schemes() {
            assert_eq!(Scheme::from_name(&s.name()), Some(s), "{s:?}");
        }
        assert_eq!(Scheme::Generic(48).name(), "generic-secret-48");
        assert_eq!(Scheme::Aes(24).name(), "aes192");
        for kt in KeyType::ALL {
            assert_eq!(Scheme::from_key_type(kt).name(), kt.name());
        }
        for bad in [
            "generic-secret-15",
            "generic-secret-65",
            "generic-secret-016",
            "generic-secret-",
            "generic-secret-+20",
            "generic-secret-2 0",
            "aes512",
            "AES128",
            "p256 ",
            "",
        ] {
            assert_eq!(Scheme::from_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lengths_follow_the_design() {
        let want = |s: Scheme| match s.name().as_str() {
            "aes128" => 16,
            "aes192" => 24,
            "p384" => 48,
            "p521" => 66,
            _ => match s {
                Scheme::Generic(l) => l,
                _ => 32,
            },
        };
        let prk = [7u8; 32];
        for s in all_schemes() {
            assert_eq!(s.key_len(), want(s), "{s:?}");
            assert_eq!(scheme_key_from_prk(&prk, s).unwrap().len(), want(s));
        }
    }

    #[test]
    fn the_32_byte_types_give_what_key_from_prk_gives() {
        for prk in prks() {
            for kt in KeyType::ALL {
                let k = scheme_key_from_prk(&prk, Scheme::from_key_type(kt)).unwrap();
                assert_eq!(&k[..], &key_from_prk(&prk, kt).unwrap()[..], "{kt}");
            }
        }
    }

    #[test]
    fn the_p256_retry_moves_to_attempt_1() {
        let prk: [u8; 32] = unhex(RETRY_PRK).try_into().unwrap();
        let k = scheme_key_from_prk(&prk, Scheme::P256).unwrap();
        let k1 = expand(&prk, &named_key_info("p256", 1)).unwrap();
        assert_eq!(&k[..], &k1[..]);
        let k0 = expand(&prk, &named_key_info("p256", 0)).unwrap();
        assert_ne!(&k[..], &k0[..]);
    }

    #[test]
    fn longer_keys_are_prefixes_of_one_expand() {
        for prk in prks() {
            for s in all_schemes() {
                let name = s.name();
                let k = scheme_key_from_prk(&prk, s).unwrap();
                let long = expand_len(&prk, &named_key_info(&name, 0), 80).unwrap();
                let short = expand(&prk, &named_key_info(&name, 0)).unwrap();
                assert_eq!(&long[..32], &short[..], "{name}");
                match s {
                    // The curves' scalars of these PRKs all stand at attempt 0
                    // except the retry PRK on p256.
                    Scheme::P256 if prk[..] == unhex(RETRY_PRK)[..] => {}
                    Scheme::P521 => {
                        assert_eq!(k[0], long[0] & 0x01, "p521: top 7 bits cleared");
                        assert_eq!(&k[1..], &long[1..66]);
                    }
                    _ => assert_eq!(&k[..], &long[..k.len()], "{name}"),
                }
            }
        }
    }

    #[test]
    fn p521_scalars_have_the_top_bits_cleared_and_p384_fills_48_bytes() {
        let mut set_p384_top = false;
        for prk in prks() {
            let k = scheme_key_from_prk(&prk, Scheme::P521).unwrap();
            assert!(k[0] <= 1, "p521 first byte {:#x}", k[0]);
            let k = scheme_key_from_prk(&prk, Scheme::P384).unwrap();
            set_p384_top |= k[0] & 0x80 != 0;
        }
        assert!(set_p384_top, "p384 keeps every bit of its 48 bytes");
    }

    #[test]
    fn types_differ_in_their_info() {
        let prk = [9u8; 32];
        let a = scheme_key_from_prk(&prk, Scheme::Generic(32)).unwrap();
        let b = scheme_key_from_prk(&prk, Scheme::HmacSha256).unwrap();
        let c = scheme_key_from_prk(&prk, Scheme::Aes(32)).unwrap();
        assert_ne!(&a[..], &b[..]);
        assert_ne!(&b[..], &c[..]);
    }

    #[test]
    fn invalid_lengths_are_refused() {
        for s in [
            Scheme::Aes(20),
            Scheme::Generic(15),
            Scheme::Generic(65),
            Scheme::Generic(0),
        ] {
            let e = scheme_key_from_prk(&[1; 32], s).unwrap_err();
            assert!(format!("{e:?}").contains("16 to 64"), "{e:?}");
        }
        assert!(expand_len(&[1; 32], b"x", 0).is_err());
        assert!(expand_len(&[1; 32], b"x", MAX_EXPAND + 1).is_err());
    }

    /// RFC 5869 test case 1, the expand step (L = 42).
    #[test]
    fn expand_len_matches_rfc5869() {
        let prk: [u8; 32] =
            unhex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
                .try_into()
                .unwrap();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let okm = expand_len(&prk, &info, 42).unwrap();
        assert_eq!(
            &okm[..],
            &unhex(
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf\
                 34007208d5b887185865"
            )[..]
        );
    }
}
