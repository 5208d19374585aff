//! The `p11derive-v1` derivation scheme (design §2, normative).
//!
//! `PRK = PRF("p11derive-v1" || 0x00 || str(asset_id) || u32be(counter))`, where
//! the PRF is HMAC-SHA256 under the root *inside the backing HSM*; then
//! `K = HKDF-Expand-SHA256(PRK, "p11derive-v1 key " || key_type || u8(attempt), 32)`.
//! EC scalars outside `[1, n-1]` move on to the next attempt. An `ed25519`
//! key is the RFC 8032 private key (the 32-byte seed) at attempt 0: every
//! 32 bytes are a seed, so there is no range check and no retry (§6.1).
//!
//! Design §6.1 adds the chain code of an asset version,
//! `CC = HKDF-Expand-SHA256(PRK, "p11derive-v1 chain code", 32)`, which with
//! the version's key is the master extended key of its HD tree
//! ([`chain_code_from_prk`], [`derive_version`]), and keys of other lengths
//! and curves ([`lengths`]).

#![forbid(unsafe_code)]

use hkdf::Hkdf;
use sha2::{Digest, Sha256};

use crate::ck::CKR_GENERAL_ERROR;
use crate::error::{Error, Result};
use crate::secure::{self, SecretBytes};

pub mod lengths;

pub use lengths::{expand_len, scheme_key_from_prk, Scheme};

pub const SCHEME: &str = "p11derive-v1";

pub use crate::types::{AssetId, KeyType, Prf, Secret32};

/// `str(s) = u16be(len(s)) || s`
fn put_str(out: &mut Vec<u8>, s: &str) {
    // AssetId guarantees at most 64 bytes, so the length fits in u16.
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The PRF input that yields an asset version's PRK.
pub fn prk_input(asset: &AssetId, counter: u32) -> Vec<u8> {
    let mut x = Vec::with_capacity(13 + 2 + asset.as_str().len() + 4);
    x.extend_from_slice(SCHEME.as_bytes());
    x.push(0x00);
    put_str(&mut x, asset.as_str());
    x.extend_from_slice(&counter.to_be_bytes());
    x
}

/// HKDF-Expand-SHA256 (RFC 5869) with L = 32, by the `hkdf` crate, into the
/// locked arena. The crate's HMAC state and the block it copies the output
/// from live on a secret stack (`secure::confined`), wiped when the
/// computation returns.
pub fn expand(prk: &[u8; 32], info: &[u8]) -> Result<Secret32> {
    secure::confined(|| {
        let failed = |what: &str| Error::with(CKR_GENERAL_ERROR, format!("HKDF-Expand: {what}"));
        let hk = Hkdf::<Sha256>::from_prk(prk).map_err(|_| failed("PRK length"))?;
        let mut out = secure::secret::<32>()?;
        hk.expand(info, &mut out[..])
            .map_err(|_| failed("output length"))?;
        Ok(out)
    })
}

/// `"p11derive-v1 key " || key_type || u8(attempt)`
fn key_info(kt: KeyType, attempt: u8) -> Vec<u8> {
    named_key_info(kt.name(), attempt)
}

/// `"p11derive-v1 key " || name || u8(attempt)` for any §2/§6.1 type name.
fn named_key_info(name: &str, attempt: u8) -> Vec<u8> {
    let mut info = Vec::with_capacity(SCHEME.len() + 5 + name.len() + 1);
    info.extend_from_slice(SCHEME.as_bytes());
    info.extend_from_slice(b" key ");
    info.extend_from_slice(name.as_bytes());
    info.push(attempt);
    info
}

/// Whether 32 key bytes, read big-endian, are an EC scalar in `[1, n-1]`:
/// `None` for symmetric types. The comparison is the curve crates'
/// constant-time `NonZeroScalar::from_repr` (a `CtOption`), never `<` or `==`
/// on the secret bytes.
fn scalar_in_range(kt: KeyType, k: &[u8; 32]) -> Option<bool> {
    match kt {
        KeyType::Secp256k1 => Some(k256::NonZeroScalar::from_repr((*k).into()).is_some().into()),
        KeyType::P256 => Some(p256::NonZeroScalar::from_repr((*k).into()).is_some().into()),
        // The Ed25519 key is the RFC 8032 seed, and any 32 bytes are a seed:
        // attempt 0 always stands (design §6.1).
        _ => None,
    }
}

/// Key bytes from an asset version's PRK: the scalar of an ECDSA type (the
/// first attempt in `[1, n-1]`), the RFC 8032 seed of `ed25519` (attempt 0),
/// or the secret key of a symmetric type (attempt 0).
///
/// Only for the 32-byte types of design §2 and Ed25519 ([`KeyType::ALL`]);
/// every type has its key from [`scheme_key_from_prk`].
pub fn key_from_prk(prk: &[u8; 32], kt: KeyType) -> Result<Secret32> {
    if !KeyType::ALL.contains(&kt) {
        return Err(Error::with(
            CKR_GENERAL_ERROR,
            format!("key_from_prk makes 32-byte keys of design §2; {kt} is derived by scheme_key_from_prk"),
        ));
    }
    secure::confined(|| {
        let mut attempt: u8 = 0;
        loop {
            let k = expand(prk, &key_info(kt, attempt))?;
            match scalar_in_range(kt, &k) {
                None | Some(true) => return Ok(k),
                Some(false) => {}
            }
            // Each attempt fails with probability below 2^-32 (P-256) or 2^-127
            // (secp256k1); 256 failures in a row cannot happen with HMAC.
            attempt = attempt.checked_add(1).ok_or_else(|| {
                Error::with(
                    CKR_GENERAL_ERROR,
                    "HKDF produced 256 out-of-range scalars in a row",
                )
            })?;
        }
    })
}

/// Derives the key bytes of (asset, counter, type) with the given PRF
/// (design §2 and §6.1: `kt.key_len()` bytes in the locked arena).
pub fn derive_key(
    prf: &dyn Prf,
    asset: &AssetId,
    counter: u32,
    kt: KeyType,
) -> Result<SecretBytes> {
    let prk = prf.prf(&prk_input(asset, counter))?;
    scheme_key_from_prk(&prk, Scheme::from_key_type(kt))
}

/// The HKDF info of an AES asset version's key-wrap subkey (the project's
/// own, not part of design §2): the prefix `"p11derive-v1 wrap "` can never
/// equal the normative `"p11derive-v1 key "`, so `W` and `K` are independent
/// outputs of the same PRK.
pub const WRAP_INFO: &[u8] = b"p11derive-v1 wrap aes256";

/// `W = HKDF-Expand-SHA256(PRK, "p11derive-v1 wrap aes256", 32)`: the key
/// `CKM_AES_KEY_WRAP` and `CKM_AES_KEY_WRAP_KWP` use for an AES asset
/// version, so that key wrap and AES-GCM (under `K`) never share key bytes.
pub fn wrap_key_from_prk(prk: &[u8; 32]) -> Result<Secret32> {
    expand(prk, WRAP_INFO)
}

/// The HKDF info of an asset version's chain code (design §6.1, normative).
pub const CHAIN_CODE_INFO: &[u8] = b"p11derive-v1 chain code";

/// `CC = HKDF-Expand-SHA256(PRK, "p11derive-v1 chain code", 32)`: with the
/// version's key, the master extended key of the version's HD tree (BIP-32
/// for `secp256k1`, SLIP-10 for `p256` and `ed25519`; design §6.1).
pub fn chain_code_from_prk(prk: &[u8; 32]) -> Result<Secret32> {
    expand(prk, CHAIN_CODE_INFO)
}

/// Everything an asset version's PRK gives, from one PRF call.
pub struct VersionKeys {
    /// The version's key `K` (scalar, seed or secret key) of
    /// `kt.key_len()` bytes.
    pub key: SecretBytes,
    /// The key-wrap subkey `W` ([`wrap_key_from_prk`]): AES assets only.
    pub wrap: Option<Secret32>,
    /// The chain code `CC` ([`chain_code_from_prk`]): `secp256k1`, `p256`
    /// and `ed25519` only.
    pub chain: Option<Secret32>,
}

/// Derives an asset version's key, its key-wrap subkey (AES) and its chain
/// code (EC types) from one PRF call.
pub fn derive_version(
    prf: &dyn Prf,
    asset: &AssetId,
    counter: u32,
    kt: KeyType,
) -> Result<VersionKeys> {
    let prk = prf.prf(&prk_input(asset, counter))?;
    let key = scheme_key_from_prk(&prk, Scheme::from_key_type(kt))?;
    // Key wrap (the project's own subkey) is an `aes256` asset's only.
    let wrap = match kt {
        KeyType::Aes256 => Some(wrap_key_from_prk(&prk)?),
        _ => None,
    };
    let chain = match kt.is_hd() {
        true => Some(chain_code_from_prk(&prk)?),
        false => None,
    };
    Ok(VersionKeys { key, wrap, chain })
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

/// The root fingerprint (design §6.2):
/// `FP = PRF("p11derive-v1" || 0x02 || "root fingerprint")[0..16]`.
pub fn root_fingerprint(prf: &dyn Prf) -> Result<[u8; 16]> {
    let mut x = SCHEME.as_bytes().to_vec();
    x.push(0x02);
    x.extend_from_slice(b"root fingerprint");
    let out = prf.prf(&x)?;
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&out[..16]);
    Ok(fp)
}

/// A user's verifier (users mode), in the reserved domain 0x03:
/// `V = PRF("p11derive-v1" || 0x03 || "user verifier" || str(name) ||
/// str(salt) || str(secret))`, computed in the HSM, the input built in
/// locked memory. A copy of the store (salt and `V`) allows no offline
/// guessing without the HSM's root.
pub fn user_verifier(prf: &dyn Prf, name: &str, salt: &[u8], secret: &[u8]) -> Result<Secret32> {
    let len = SCHEME.len() + 1 + 13 + 6 + name.len() + salt.len() + secret.len();
    let mut x =
        SecretBytes::with_capacity(len).map_err(|m| Error::with(crate::ck::CKR_HOST_MEMORY, m))?;
    x.push(SCHEME.as_bytes());
    x.push(&[0x03]);
    x.push(b"user verifier");
    for part in [name.as_bytes(), salt, secret] {
        x.push(&(part.len().min(u16::MAX as usize) as u16).to_be_bytes());
        x.push(part);
    }
    prf.prf_secret(x)
}

/// `AK = Expand(PRF("p11derive-v1" || 0x01 || "audit"), "p11derive-v1 audit mac")`
pub fn audit_key(prf: &dyn Prf) -> Result<Secret32> {
    let prk = prf.prf(&audit_prk_input())?;
    expand(&prk, b"p11derive-v1 audit mac")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HMAC-SHA256 under a root held by the test (the vectors' root A).
    struct TestPrf([u8; 32]);

    impl Prf for TestPrf {
        fn prf(&self, input: &[u8]) -> Result<Secret32> {
            use hmac::{Hmac, KeyInit, Mac};
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).unwrap();
            mac.update(input);
            let mut out = secure::secret::<32>()?;
            out.copy_from_slice(&mac.finalize().into_bytes());
            Ok(out)
        }
    }

    fn root_a() -> TestPrf {
        let mut root = [0u8; 32];
        for (i, b) in root.iter_mut().enumerate() {
            *b = i as u8;
        }
        TestPrf(root)
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// `CC` of the design vector (root A, `vector-1`, counter 1), computed
    /// with Python's `hmac` as the first HKDF-Expand block.
    #[test]
    fn the_chain_code_is_pinned() {
        assert_eq!(CHAIN_CODE_INFO, b"p11derive-v1 chain code");
        let asset = AssetId::new("vector-1").unwrap();
        let v = derive_version(&root_a(), &asset, 1, KeyType::Secp256k1).unwrap();
        assert_eq!(
            hex(&v.chain.unwrap()[..]),
            "b194bd2dcef3c76343036020ed553f5e0ffe99145693c903508452f00d60f8c7"
        );
        assert_eq!(
            hex(&v.key[..]),
            "7243046b0f3264ca3d6423629a088a968d9fec7d3533100c84d95ca91cfa1702"
        );
        assert!(v.wrap.is_none());
    }

    #[test]
    fn derive_version_agrees_with_its_parts() {
        let prf = root_a();
        for kt in KeyType::ALL {
            for counter in [1, 2, 7] {
                let asset = AssetId::new("some-asset").unwrap();
                let v = derive_version(&prf, &asset, counter, kt).unwrap();
                let prk = prf.prf(&prk_input(&asset, counter)).unwrap();
                let key = derive_key(&prf, &asset, counter, kt).unwrap();
                let wrap = (kt == KeyType::Aes256).then(|| wrap_key_from_prk(&prk).unwrap());
                assert_eq!(&v.key[..], &key[..], "{kt}");
                assert_eq!(v.wrap.as_deref(), wrap.as_deref(), "{kt}");
                assert_eq!(v.wrap.is_some(), kt == KeyType::Aes256);
                assert_eq!(v.chain.is_some(), kt.is_ec(), "{kt}: chain code");
                if let Some(cc) = &v.chain {
                    assert_eq!(&cc[..], &chain_code_from_prk(&prk).unwrap()[..]);
                    assert_ne!(&cc[..], &v.key[..]);
                }
            }
        }
    }

    /// The Ed25519 key is the seed of attempt 0, whatever its bytes.
    #[test]
    fn ed25519_uses_attempt_0() {
        for prk in [[0u8; 32], [0xff; 32], [0x42; 32]] {
            let k = key_from_prk(&prk, KeyType::Ed25519).unwrap();
            let k0 = expand(&prk, &key_info(KeyType::Ed25519, 0)).unwrap();
            assert_eq!(&k[..], &k0[..]);
        }
    }
}
