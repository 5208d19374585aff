//! Key identifiers (Hash160, fingerprints) and the BIP-32 serialization of extended public keys (`xpub…`, Base58Check).

use k256::elliptic_curve::sec1::ToSec1Point;
use ripemd::Ripemd160;
use sha2::{Digest, Sha256};

use crate::ck::*;
use crate::error::{Error, Result};
use crate::types::KeyType;

use super::ExtendedPublic;

/// BIP-32's version bytes of a mainnet extended public key (`xpub…`).
pub const XPUB_VERSION: u32 = 0x0488_B21E;

/// BIP-32's version bytes of a mainnet extended private key (`xprv…`).
pub const XPRV_VERSION: u32 = 0x0488_ADE4;

/// Length of a serialized extended key, before its checksum.
pub const SERIALIZED_LEN: usize = 78;

/// `RIPEMD-160(SHA-256(data))`, BIP-32's key identifier.
pub fn hash160(data: &[u8]) -> [u8; 20] {
    let mut out = [0u8; 20];
    out.copy_from_slice(&Ripemd160::digest(Sha256::digest(data)));
    out
}

/// The serialized public key a key identifier is taken of: SEC1 compressed
/// (33 bytes) on the Weierstrass curves; for Ed25519, SLIP-10's `0x00 || key`.
pub fn identifier_key(kt: KeyType, public_key: &[u8]) -> Result<Vec<u8>> {
    match kt {
        KeyType::Ed25519 => {
            if public_key.len() != 32 {
                return Err(Error::with(
                    CKR_GENERAL_ERROR,
                    format!(
                        "an Ed25519 public key is 32 bytes, not {}",
                        public_key.len()
                    ),
                ));
            }
            Ok([&[0u8][..], public_key].concat())
        }
        _ => compressed(kt, public_key),
    }
}

/// The first 4 bytes of a key's identifier: the fingerprint its children
/// carry as their parent's.
pub fn fingerprint_of(kt: KeyType, public_key: &[u8]) -> Result<[u8; 4]> {
    let id = hash160(&identifier_key(kt, public_key)?);
    Ok([id[0], id[1], id[2], id[3]])
}

fn bad_point(kt: KeyType) -> Error {
    Error::with(
        CKR_GENERAL_ERROR,
        format!("an HD public key is not a point of {}", kt.name()),
    )
}

/// A SEC1 point (compressed or not) in compressed form, checked on the curve.
pub fn compressed(kt: KeyType, point: &[u8]) -> Result<Vec<u8>> {
    reencode(kt, point, true)
}

/// A SEC1 point (compressed or not) in uncompressed form, checked on the curve.
pub fn uncompressed(kt: KeyType, point: &[u8]) -> Result<Vec<u8>> {
    reencode(kt, point, false)
}

fn reencode(kt: KeyType, point: &[u8], compress: bool) -> Result<Vec<u8>> {
    macro_rules! on {
        ($krate:ident) => {{
            let p = $krate::PublicKey::from_sec1_bytes(point).map_err(|_| bad_point(kt))?;
            Ok(p.to_sec1_point(compress).as_bytes().to_vec())
        }};
    }
    match kt {
        KeyType::Secp256k1 => on!(k256),
        KeyType::P256 => on!(p256),
        KeyType::P384 => on!(p384),
        KeyType::P521 => on!(p521),
        _ => Err(Error::with(
            CKR_KEY_TYPE_INCONSISTENT,
            format!("a {} key has no SEC1 point", kt.name()),
        )),
    }
}

/// The first 4 bytes of `SHA-256(SHA-256(data))`, Base58Check's checksum.
fn checksum(data: &[u8]) -> [u8; 4] {
    let h = Sha256::digest(Sha256::digest(data));
    [h[0], h[1], h[2], h[3]]
}

/// Base58 of `data || checksum(data)`.
pub fn base58check(data: &[u8]) -> String {
    let mut all = data.to_vec();
    all.extend_from_slice(&checksum(data));
    bs58::encode(all).into_string()
}

/// The payload of a Base58Check string, its checksum verified.
pub fn base58check_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    let mut all = bs58::decode(s)
        .into_vec()
        .map_err(|e| format!("{s:?} is not Base58 ({e})"))?;
    if all.len() < 4 {
        return Err(format!("{s:?} is too short for Base58Check"));
    }
    let sum = all.split_off(all.len() - 4);
    if sum != checksum(&all) {
        return Err(format!(
            "{s:?} has a wrong checksum: a character is mistyped or missing"
        ));
    }
    Ok(all)
}

/// The 78 bytes BIP-32 serializes an extended key as, given the 33 key bytes.
pub fn serialize(
    version: u32,
    depth: u8,
    parent_fingerprint: [u8; 4],
    child_number: u32,
    chain: &[u8; 32],
    key33: &[u8; 33],
) -> [u8; SERIALIZED_LEN] {
    let mut out = [0u8; SERIALIZED_LEN];
    out[..4].copy_from_slice(&version.to_be_bytes());
    out[4] = depth;
    out[5..9].copy_from_slice(&parent_fingerprint);
    out[9..13].copy_from_slice(&child_number.to_be_bytes());
    out[13..45].copy_from_slice(chain);
    out[45..].copy_from_slice(key33);
    out
}

/// The fields of a serialized extended key, not yet checked.
pub struct Fields {
    pub version: u32,
    pub depth: u8,
    pub parent_fingerprint: [u8; 4],
    pub child_number: u32,
    pub chain: [u8; 32],
    pub key33: [u8; 33],
}

/// Decodes a Base58Check extended key into its fields; checks the length,
/// the checksum, and that a master (depth 0) has no parent or child number.
pub fn decode_fields(s: &str) -> std::result::Result<Fields, String> {
    let raw = base58check_decode(s)?;
    if raw.len() != SERIALIZED_LEN {
        return Err(format!(
            "{s:?} holds {} bytes: an extended key is {SERIALIZED_LEN}",
            raw.len()
        ));
    }
    let word = |at: usize| u32::from_be_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
    let f = Fields {
        version: word(0),
        depth: raw[4],
        parent_fingerprint: raw[5..9].try_into().expect("4 bytes"),
        child_number: word(9),
        chain: raw[13..45].try_into().expect("32 bytes"),
        key33: raw[45..].try_into().expect("33 bytes"),
    };
    if f.depth == 0 && f.parent_fingerprint != [0; 4] {
        return Err(format!(
            "{s:?} is a master key (depth 0) with a parent fingerprint: it is corrupt"
        ));
    }
    if f.depth == 0 && f.child_number != 0 {
        return Err(format!(
            "{s:?} is a master key (depth 0) with a child number: it is corrupt"
        ));
    }
    Ok(f)
}

/// The BIP-32 serialization of a secp256k1 extended public key: version
/// `0x0488B21E`, compressed key, Base58Check (`xpub…`).
pub fn xpub(kt: KeyType, x: &ExtendedPublic) -> Result<String> {
    if kt != KeyType::Secp256k1 {
        return Err(Error::with(
            CKR_KEY_TYPE_INCONSISTENT,
            format!(
                "an xpub is the BIP-32 serialization of a secp256k1 key, not of a {} key",
                kt.name()
            ),
        ));
    }
    let key33: [u8; 33] = compressed(kt, &x.key)?
        .try_into()
        .map_err(|_| bad_point(kt))?;
    Ok(base58check(&serialize(
        XPUB_VERSION,
        x.depth,
        x.parent_fingerprint,
        x.child_number,
        &x.chain,
        &key33,
    )))
}

/// Reads an `xpub…` string: checksum, version `0x0488B21E`, a master's zero
/// parent and child number, and a compressed key on secp256k1. The key comes
/// back uncompressed (65 bytes), as [`ExtendedPublic`] holds it.
pub fn parse_xpub(s: &str) -> std::result::Result<ExtendedPublic, String> {
    let f = decode_fields(s)?;
    match f.version {
        XPUB_VERSION => {}
        XPRV_VERSION => {
            return Err(format!(
                "{s:?} is an extended private key (xprv): give the extended public key (xpub)"
            ))
        }
        v => {
            return Err(format!(
                "{s:?} has version bytes {v:08x}: an xpub (mainnet extended public key) has \
                 {XPUB_VERSION:08x}"
            ))
        }
    }
    if !matches!(f.key33[0], 2 | 3) {
        return Err(format!(
            "{s:?} holds a public key starting {:02x}: an xpub holds a compressed key (02 or 03)",
            f.key33[0]
        ));
    }
    let key = uncompressed(KeyType::Secp256k1, &f.key33)
        .map_err(|_| format!("{s:?} holds a public key that is not a point of secp256k1"))?;
    Ok(ExtendedPublic {
        key,
        chain: f.chain,
        depth: f.depth,
        parent_fingerprint: f.parent_fingerprint,
        child_number: f.child_number,
    })
}
