//! The `p11derive-v1` derivation scheme (design §2, normative).
//!
//! `PRK = PRF("p11derive-v1" || 0x00 || str(asset_id) || u32be(counter))`, where
//! the PRF is HMAC-SHA256 under the root *inside the backing HSM*; then
//! `K = HKDF-Expand-SHA256(PRK, "p11derive-v1 key " || key_type || u8(attempt), 32)`.
//! EC scalars outside `[1, n-1]` move on to the next attempt.

#![forbid(unsafe_code)]

use std::fmt;

use hmac::digest::FixedOutput;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::secure;

pub const SCHEME: &str = "p11derive-v1";

/// 32 secret bytes in the locked arena, wiped when dropped.
pub type Secret32 = secure::Secret<32>;

/// The keyed pseudo-random function of the scheme. Production computes it in
/// the backing HSM ([`crate::backend`]); it must never be computed from a root
/// held in host memory.
pub trait Prf {
    fn prf(&self, input: &[u8]) -> Result<Secret32>;
}

/// A valid asset id: 1-64 characters of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssetId(String);

impl AssetId {
    pub fn new(s: &str) -> std::result::Result<AssetId, String> {
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
    Aes256,
    HmacSha256,
}

impl KeyType {
    pub const ALL: [KeyType; 4] = [
        KeyType::Secp256k1,
        KeyType::P256,
        KeyType::Aes256,
        KeyType::HmacSha256,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KeyType::Secp256k1 => "secp256k1",
            KeyType::P256 => "p256",
            KeyType::Aes256 => "aes256",
            KeyType::HmacSha256 => "hmac-sha256",
        }
    }

    pub fn from_name(s: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn is_ec(self) -> bool {
        matches!(self, KeyType::Secp256k1 | KeyType::P256)
    }

    /// The group order n of an EC type, big-endian.
    fn order(self) -> Option<&'static [u8; 32]> {
        const SECP256K1_N: [u8; 32] =
            hex32("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
        const P256_N: [u8; 32] =
            hex32("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        match self {
            KeyType::Secp256k1 => Some(&SECP256K1_N),
            KeyType::P256 => Some(&P256_N),
            _ => None,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const fn hex32(s: &str) -> [u8; 32] {
    const fn nib(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not lowercase hex"),
        }
    }
    let b = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nib(b[2 * i]) << 4) | nib(b[2 * i + 1]);
        i += 1;
    }
    out
}

/// `str(s) = u16be(len(s)) || s`
fn put_str(out: &mut Vec<u8>, s: &str) {
    // AssetId guarantees at most 64 bytes, so the length fits in u16.
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The PRF input that yields an asset version's PRK.
pub fn prk_input(asset: &AssetId, counter: u32) -> Vec<u8> {
    let mut x = Vec::with_capacity(13 + 2 + asset.0.len() + 4);
    x.extend_from_slice(SCHEME.as_bytes());
    x.push(0x00);
    put_str(&mut x, asset.as_str());
    x.extend_from_slice(&counter.to_be_bytes());
    x
}

/// HKDF-Expand-SHA256 (RFC 5869) with L = 32: a single block `T(1)`.
/// The output is written straight into the locked arena; the HMAC state on
/// the stack is wiped on drop (the `zeroize` feature of hmac and sha2).
pub fn expand(prk: &[u8; 32], info: &[u8]) -> Result<Secret32> {
    secure::confined(|| {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(prk).expect("HMAC takes any key length");
        mac.update(info);
        mac.update(&[0x01]);
        let mut out = secure::secret::<32>()?;
        mac.finalize_into((&mut *out).into());
        Ok(out)
    })
}

/// `"p11derive-v1 key " || key_type || u8(attempt)`
fn key_info(kt: KeyType, attempt: u8) -> Vec<u8> {
    let mut info = Vec::with_capacity(32);
    info.extend_from_slice(SCHEME.as_bytes());
    info.extend_from_slice(b" key ");
    info.extend_from_slice(kt.name().as_bytes());
    info.push(attempt);
    info
}

/// Key bytes from an asset version's PRK: the scalar of an EC type (the first
/// attempt in `[1, n-1]`), or the secret key of a symmetric type.
pub fn key_from_prk(prk: &[u8; 32], kt: KeyType) -> Result<Secret32> {
    secure::confined(|| {
        let Some(n) = kt.order() else {
            return expand(prk, &key_info(kt, 0));
        };
        let mut attempt: u8 = 0;
        loop {
            let k = expand(prk, &key_info(kt, attempt))?;
            // Big-endian byte order is numeric order for equal-length arrays.
            if k.iter().any(|&b| b != 0) && &*k < n {
                return Ok(k);
            }
            // Each attempt fails with probability below 2^-32 (P-256) or 2^-127
            // (secp256k1); 256 failures in a row cannot happen with HMAC.
            attempt = attempt
                .checked_add(1)
                .expect("HKDF produced 256 out-of-range scalars in a row");
        }
    })
}

/// Derives the key bytes of (asset, counter, type) with the given PRF.
pub fn derive_key(prf: &dyn Prf, asset: &AssetId, counter: u32, kt: KeyType) -> Result<Secret32> {
    let prk = prf.prf(&prk_input(asset, counter))?;
    key_from_prk(&prk, kt)
}

/// `ASSET_ID = SHA-256("p11derive-v1 id" || 0x00 || str(asset_id))[0..16]`
pub fn default_object_id(asset: &AssetId) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(SCHEME.as_bytes());
    h.update(b" id");
    h.update([0x00]);
    let mut s = Vec::with_capacity(66);
    put_str(&mut s, asset.as_str());
    h.update(&s);
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

/// The id of version object N: `ASSET_ID || u32be(N)`.
pub fn version_object_id(asset_object_id: &[u8], version: u32) -> Vec<u8> {
    let mut id = asset_object_id.to_vec();
    id.extend_from_slice(&version.to_be_bytes());
    id
}

/// The PRF input of the audit MAC key.
pub fn audit_prk_input() -> Vec<u8> {
    let mut x = SCHEME.as_bytes().to_vec();
    x.push(0x01);
    x.extend_from_slice(b"audit");
    x
}

/// `AK = Expand(PRF("p11derive-v1" || 0x01 || "audit"), "p11derive-v1 audit mac")`
pub fn audit_key(prf: &dyn Prf) -> Result<Secret32> {
    let prk = prf.prf(&audit_prk_input())?;
    expand(&prk, b"p11derive-v1 audit mac")
}

/// What identifies a key without revealing it: the public point of an EC
/// scalar, the `CKA_CHECK_VALUE` (3 bytes, PKCS#11) of a secret key.
pub fn fingerprint(kt: KeyType, key: &Secret32) -> Option<Vec<u8>> {
    match kt {
        KeyType::Secp256k1 | KeyType::P256 => public_point(kt, key),
        KeyType::Aes256 => crate::symmetric::aes_check_value(&key[..])
            .ok()
            .map(|c| c.to_vec()),
        KeyType::HmacSha256 => Some(crate::symmetric::generic_check_value(&key[..]).to_vec()),
    }
}

/// The uncompressed SEC1 public point (65 bytes) of an EC scalar.
pub fn public_point(kt: KeyType, scalar: &[u8; 32]) -> Option<Vec<u8>> {
    crate::mechanisms::warm_up();
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
