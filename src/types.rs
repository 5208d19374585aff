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

/// The key types of the scheme, with their normative ASCII names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Secp256k1,
    P256,
    /// Ed25519 (RFC 8032; design §6.1): the key is the 32-byte seed.
    Ed25519,
    Aes256,
    HmacSha256,
}

impl KeyType {
    pub const ALL: [KeyType; 5] = [
        KeyType::Secp256k1,
        KeyType::P256,
        KeyType::Ed25519,
        KeyType::Aes256,
        KeyType::HmacSha256,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KeyType::Secp256k1 => "secp256k1",
            KeyType::P256 => "p256",
            KeyType::Ed25519 => "ed25519",
            KeyType::Aes256 => "aes256",
            KeyType::HmacSha256 => "hmac-sha256",
        }
    }

    pub fn from_name(s: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|k| k.name() == s)
    }

    /// A key pair (a private and a public key object; a public key
    /// recorded in the store), as opposed to a secret key.
    pub fn is_ec(self) -> bool {
        matches!(self, KeyType::Secp256k1 | KeyType::P256 | KeyType::Ed25519)
    }

    /// An ECDSA curve (a Weierstrass curve with `CKK_EC` keys).
    pub fn is_ecdsa(self) -> bool {
        matches!(self, KeyType::Secp256k1 | KeyType::P256)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
