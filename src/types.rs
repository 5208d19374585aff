//! The small types every layer shares: a valid asset id, the key types of the scheme, 32 secret bytes in the locked arena.

#![forbid(unsafe_code)]

use std::fmt;

use crate::secure;

/// 32 secret bytes in the locked arena, wiped when dropped.
pub type Secret32 = secure::Secret<32>;

/// The keyed pseudo-random function of the derivation scheme
/// ([`crate::derive`]). Production computes it in the backing HSM
/// ([`crate::backend`] implements it); it must never be computed from a root
/// held in host memory.
pub trait Prf {
    fn prf(&self, input: &[u8]) -> crate::error::Result<Secret32>;

    /// The PRF of an input that holds a secret (a user's secret, for its
    /// verifier): the input stays in locked memory on its way to the HSM.
    fn prf_secret(&self, input: secure::SecretBytes) -> crate::error::Result<Secret32> {
        self.prf(&input)
    }
}

/// A valid asset id: 1-64 characters of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssetId(String);

impl AssetId {
    pub fn new(s: &str) -> Result<AssetId, String> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if s.is_empty() || s.len() > 64 || !s.chars().all(ok_char) {
            return Err(format!(
                "asset id {s:?} is invalid: use 1 to 64 characters of A-Z a-z 0-9 . _ -"
            ));
        }
        Ok(AssetId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AssetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The hash of a `CKK_SHAx_HMAC` key type (PKCS#11 3.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HmacHash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl HmacHash {
    pub const ALL: [HmacHash; 5] = [
        HmacHash::Sha1,
        HmacHash::Sha224,
        HmacHash::Sha256,
        HmacHash::Sha384,
        HmacHash::Sha512,
    ];

    /// The prefix of the asset type name (`sha384` in `sha384-hmac-48`).
    pub fn name(self) -> &'static str {
        match self {
            HmacHash::Sha1 => "sha1",
            HmacHash::Sha224 => "sha224",
            HmacHash::Sha256 => "sha256",
            HmacHash::Sha384 => "sha384",
            HmacHash::Sha512 => "sha512",
        }
    }

    /// The hash's output length: the default key length of its key type.
    pub fn output_len(self) -> u8 {
        match self {
            HmacHash::Sha1 => 20,
            HmacHash::Sha224 => 28,
            HmacHash::Sha256 => 32,
            HmacHash::Sha384 => 48,
            HmacHash::Sha512 => 64,
        }
    }
}

/// The lengths a generic secret or HMAC key asset may have, in bytes
/// (design §6.1 `generic-secret-L`).
pub const SECRET_LENS: std::ops::RangeInclusive<u8> = 16..=64;

/// The key types of assets. Each has an ASCII name (the store's
/// `key_type` column, `asset create --type`); the derivation it follows is
/// [`crate::derive::Scheme::from_key_type`] (design §2 and §6.1).
///
/// - The types of design §2 and Ed25519 keep their normative names.
/// - `aes128`, `aes192`, `p384`, `p521`: their design §6.1 names.
/// - `generic-secret-L` (`CKK_GENERIC_SECRET`, L 16 to 64) and
///   `sha1-hmac-L`, `sha224-hmac-L`, `sha256-hmac-L`, `sha384-hmac-L`,
///   `sha512-hmac-L` (`CKK_SHA_1_HMAC` … `CKK_SHA512_HMAC`, L 16 to 64):
///   all derived as `generic-secret-L` (the PKCS#11 key type is a property
///   of the asset, not of the derivation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Secp256k1,
    P256,
    /// Ed25519 (RFC 8032; design §6.1): the key is the 32-byte seed.
    Ed25519,
    Aes256,
    HmacSha256,
    Aes128,
    Aes192,
    P384,
    P521,
    /// `generic-secret-L`: a `CKK_GENERIC_SECRET` of L bytes.
    Generic(u8),
    /// `<hash>-hmac-L`: a `CKK_SHAx_HMAC` key of L bytes.
    Hmac(HmacHash, u8),
}

/// Every asset key type with its name, built once.
static NAMED: std::sync::LazyLock<Vec<(KeyType, String)>> = std::sync::LazyLock::new(|| {
    let mut all: Vec<(KeyType, String)> = KeyType::FIXED
        .into_iter()
        .map(|kt| (kt, kt.fixed_name().unwrap_or_default().to_string()))
        .collect();
    for len in SECRET_LENS {
        all.push((KeyType::Generic(len), format!("generic-secret-{len}")));
        for h in HmacHash::ALL {
            all.push((KeyType::Hmac(h, len), format!("{}-hmac-{len}", h.name())));
        }
    }
    all
});

impl KeyType {
    /// The types of design §2 and Ed25519: the 32-byte keys, each with a
    /// chain code or (AES) a wrap subkey beside it.
    pub const ALL: [KeyType; 5] = [
        KeyType::Secp256k1,
        KeyType::P256,
        KeyType::Ed25519,
        KeyType::Aes256,
        KeyType::HmacSha256,
    ];

    /// The types without a length parameter.
    const FIXED: [KeyType; 9] = [
        KeyType::Secp256k1,
        KeyType::P256,
        KeyType::Ed25519,
        KeyType::Aes256,
        KeyType::HmacSha256,
        KeyType::Aes128,
        KeyType::Aes192,
        KeyType::P384,
        KeyType::P521,
    ];

    fn fixed_name(self) -> Option<&'static str> {
        Some(match self {
            KeyType::Secp256k1 => "secp256k1",
            KeyType::P256 => "p256",
            KeyType::Ed25519 => "ed25519",
            KeyType::Aes256 => "aes256",
            KeyType::HmacSha256 => "hmac-sha256",
            KeyType::Aes128 => "aes128",
            KeyType::Aes192 => "aes192",
            KeyType::P384 => "p384",
            KeyType::P521 => "p521",
            KeyType::Generic(_) | KeyType::Hmac(..) => return None,
        })
    }

    /// Every asset key type (the lengths of generic and HMAC keys each
    /// count as one).
    pub fn every() -> impl Iterator<Item = KeyType> {
        NAMED.iter().map(|(kt, _)| *kt)
    }

    pub fn name(self) -> &'static str {
        if let Some(n) = self.fixed_name() {
            return n;
        }
        // NAMED lists the fixed types, then per length the generic secret
        // and the five HMAC types: the index is computed, not searched.
        let (len, slot) = match self {
            KeyType::Generic(len) => (len, 0),
            KeyType::Hmac(h, len) => (len, 1 + h as usize),
            _ => return "invalid-key-type",
        };
        let i = Self::FIXED.len() + 6 * usize::from(len.wrapping_sub(*SECRET_LENS.start())) + slot;
        match NAMED.get(i) {
            Some((kt, name)) if *kt == self => name.as_str(),
            _ => "invalid-length-secret",
        }
    }

    pub fn from_name(s: &str) -> Option<KeyType> {
        NAMED.iter().find(|(_, n)| n == s).map(|(kt, _)| *kt)
    }

    /// A key pair (a private and a public key object; a public key
    /// recorded in the store), as opposed to a secret key.
    pub fn is_ec(self) -> bool {
        self.is_ecdsa() || self == KeyType::Ed25519
    }

    /// An ECDSA curve (a Weierstrass curve with `CKK_EC` keys).
    pub fn is_ecdsa(self) -> bool {
        matches!(
            self,
            KeyType::Secp256k1 | KeyType::P256 | KeyType::P384 | KeyType::P521
        )
    }

    /// An HD type (design §6.1): its versions have a chain code.
    pub fn is_hd(self) -> bool {
        matches!(self, KeyType::Secp256k1 | KeyType::P256 | KeyType::Ed25519)
    }

    /// An AES key (`CKK_AES`).
    pub fn is_aes(self) -> bool {
        matches!(self, KeyType::Aes128 | KeyType::Aes192 | KeyType::Aes256)
    }

    /// A key that signs with HMAC: `hmac-sha256`, a generic secret, a
    /// `CKK_SHAx_HMAC` key.
    pub fn is_mac(self) -> bool {
        matches!(
            self,
            KeyType::HmacSha256 | KeyType::Generic(_) | KeyType::Hmac(..)
        )
    }

    /// The length of the key (secret key, scalar or seed) in bytes.
    pub fn key_len(self) -> usize {
        match self {
            KeyType::Aes128 => 16,
            KeyType::Aes192 => 24,
            KeyType::P384 => 48,
            KeyType::P521 => 66,
            KeyType::Generic(len) | KeyType::Hmac(_, len) => len as usize,
            _ => 32,
        }
    }

    /// The hash an HMAC key type is for (`None`: any, or not an HMAC type).
    pub fn hmac_hash(self) -> Option<HmacHash> {
        match self {
            KeyType::Hmac(h, _) => Some(h),
            _ => None,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_one_name_and_reads_back() {
        let all: Vec<KeyType> = KeyType::every().collect();
        assert_eq!(all.len(), 9 + 49 * 6);
        let mut names = std::collections::HashSet::new();
        for kt in &all {
            assert!(names.insert(kt.name()), "{kt:?}");
            assert_eq!(KeyType::from_name(kt.name()), Some(*kt), "{kt:?}");
        }
        // The names of design §2 and the existing store rows are unchanged.
        for (kt, name) in [
            (KeyType::Secp256k1, "secp256k1"),
            (KeyType::P256, "p256"),
            (KeyType::Ed25519, "ed25519"),
            (KeyType::Aes256, "aes256"),
            (KeyType::HmacSha256, "hmac-sha256"),
            (KeyType::Aes128, "aes128"),
            (KeyType::P521, "p521"),
            (KeyType::Generic(16), "generic-secret-16"),
            (KeyType::Generic(64), "generic-secret-64"),
            (KeyType::Hmac(HmacHash::Sha1, 20), "sha1-hmac-20"),
            (KeyType::Hmac(HmacHash::Sha512, 64), "sha512-hmac-64"),
        ] {
            assert_eq!(kt.name(), name);
        }
        for bad in [
            "generic-secret-15",
            "generic-secret-65",
            "generic-secret-016",
            "sha384-hmac-8",
            "md5-hmac-16",
            "aes512",
            "",
        ] {
            assert_eq!(KeyType::from_name(bad), None, "{bad:?}");
        }
        assert_eq!(KeyType::Generic(15).name(), "invalid-length-secret");
        assert_eq!(
            KeyType::Hmac(HmacHash::Sha1, 200).name(),
            "invalid-length-secret"
        );
    }

    #[test]
    fn lengths_and_families() {
        assert_eq!(KeyType::Aes192.key_len(), 24);
        assert_eq!(KeyType::P384.key_len(), 48);
        assert_eq!(KeyType::P521.key_len(), 66);
        assert_eq!(KeyType::Hmac(HmacHash::Sha384, 40).key_len(), 40);
        assert!(KeyType::P521.is_ecdsa() && KeyType::P521.is_ec() && !KeyType::P521.is_hd());
        assert!(KeyType::Generic(33).is_mac() && !KeyType::Generic(33).is_aes());
        assert!(KeyType::Aes128.is_aes() && !KeyType::Aes128.is_ec());
        for kt in KeyType::ALL {
            assert_eq!(kt.key_len(), 32);
        }
    }
}
