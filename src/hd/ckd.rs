//! Child key derivation: BIP-32 (secp256k1), SLIP-10 (P-256, Ed25519), private on secret stacks, public on public values.

use hmac::{Hmac, KeyInit, Mac};
use k256::elliptic_curve::sec1::{FromSec1Point, ModulusSize, ToSec1Point};
use k256::elliptic_curve::subtle::CtOption;
use k256::elliptic_curve::zeroize::Zeroize;
use k256::elliptic_curve::{
    AffinePoint, CurveArithmetic, CurveGroup, Field, FieldBytes, FieldBytesSize, Group,
    NonZeroScalar, PrimeField, ProjectivePoint, Scalar,
};
use sha2::Sha512;

use crate::ck::*;
use crate::error::{Error, Result};
use crate::secure::{self, Depth};
use crate::types::{KeyType, Secret32};

use super::path::{is_hardened, show_index};
use super::serial::{fingerprint_of, hash160};
use super::{ExtendedPrivate, ExtendedPublic, Path, MAX_DEPTH};

/// What a curve's rules do with an invalid child (`I_L ≥ n`, or a zero key
/// or the point at infinity).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Invalid {
    /// BIP-32: the child does not exist; the caller moves to the next index.
    Refuse,
    /// SLIP-10: `I = HMAC-SHA512(c_par, 0x01 || I_R || ser32(i))`, again.
    Rehash,
}

/// Why one derivation step failed.
enum StepError {
    /// BIP-32's invalid child: the index has no key.
    Invalid,
    Other(Error),
}

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        StepError::Other(e)
    }
}

fn param(msg: String) -> Error {
    Error::with(CKR_MECHANISM_PARAM_INVALID, msg)
}

fn not_hd(kt: KeyType) -> Error {
    Error::with(
        CKR_KEY_TYPE_INCONSISTENT,
        format!(
            "a {} key has no HD children: HD derivation is for secp256k1, p256 and ed25519 keys",
            kt.name()
        ),
    )
}

/// The rule of each HD key type, `None` for the secret-key types.
fn rule(kt: KeyType) -> Option<Invalid> {
    match kt {
        KeyType::Secp256k1 => Some(Invalid::Refuse),
        KeyType::P256 | KeyType::Ed25519 => Some(Invalid::Rehash),
        _ => None,
    }
}

/// `HMAC-SHA512(key, parts…)`. Called on a secret stack whenever a part or
/// the output is secret; the caller zeroizes the output.
pub(super) fn hmac512(key: &[u8], parts: &[&[u8]]) -> [u8; 64] {
    let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    for p in parts {
        mac.update(p);
    }
    let mut out = [0u8; 64];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// A 32-byte big-endian integer as a field-bytes array of a 256-bit curve.
fn field_bytes<C: CurveArithmetic>(bytes: &[u8]) -> Result<FieldBytes<C>> {
    FieldBytes::<C>::try_from(bytes)
        .map_err(|_| Error::with(CKR_GENERAL_ERROR, "an HD scalar is not 32 bytes"))
}

// ---- private derivation ----------------------------------------------------

/// The extended private key at `path` below the master `(key, chain)`.
pub fn derive_private(
    kt: KeyType,
    key: &[u8],
    chain: &[u8],
    path: &Path,
) -> Result<ExtendedPrivate> {
    let (Ok(k), Ok(c)) = (<&[u8; 32]>::try_from(key), <&[u8; 32]>::try_from(chain)) else {
        return Err(Error::with(
            CKR_GENERAL_ERROR,
            format!(
                "an HD master key and chain code are 32 bytes each, not {} and {}",
                key.len(),
                chain.len()
            ),
        ));
    };
    let master = ExtendedPrivate {
        key: Secret32::copy_of(k).map_err(|m| Error::with(CKR_HOST_MEMORY, m))?,
        chain: Secret32::copy_of(c).map_err(|m| Error::with(CKR_HOST_MEMORY, m))?,
        depth: 0,
        parent_fingerprint: [0; 4],
        child_number: 0,
    };
    derive_private_from(kt, &master, path)
}

/// The extended private key at `path` below `parent` (any extended key:
/// depth and fingerprints continue from it).
pub fn derive_private_from(
    kt: KeyType,
    parent: &ExtendedPrivate,
    path: &Path,
) -> Result<ExtendedPrivate> {
    let invalid = rule(kt).ok_or_else(|| not_hd(kt))?;
    check_depth(parent.depth, path)?;
    if kt == KeyType::Ed25519 {
        if let Some((level, &i)) = path
            .indices()
            .iter()
            .enumerate()
            .find(|(_, &i)| !is_hardened(i))
        {
            return Err(param(format!(
                "HD path {path}: index {i} at level {} is not hardened, and SLIP-10 defines \
                 hardened children only for Ed25519: write {}'",
                level + 1,
                i
            )));
        }
    }
    let mut current = copy(parent)?;
    for (level, &index) in path.indices().iter().enumerate() {
        let step = match kt {
            KeyType::Secp256k1 => ec_child::<k256::Secp256k1>(&current, index, invalid),
            KeyType::P256 => ec_child::<p256::NistP256>(&current, index, invalid),
            KeyType::Ed25519 => ed25519_child(&current, index),
            _ => return Err(not_hd(kt)),
        };
        current = step.map_err(|e| match e {
            StepError::Invalid => invalid_child(path, level, index),
            StepError::Other(e) => e,
        })?;
    }
    Ok(current)
}

fn check_depth(depth: u8, path: &Path) -> Result<()> {
    if usize::from(depth) + path.len() > MAX_DEPTH {
        return Err(param(format!(
            "HD path {path} below a key at depth {depth} reaches depth {}: a key is at most \
             {MAX_DEPTH} levels below its master",
            usize::from(depth) + path.len()
        )));
    }
    Ok(())
}

/// BIP-32's invalid child, named (probability below 2^-127 per index).
fn invalid_child(path: &Path, level: usize, index: u32) -> Error {
    let next = index
        .checked_add(1)
        .filter(|n| is_hardened(*n) == is_hardened(index));
    let advice = match next {
        Some(n) => format!("BIP-32 says to use the next index, {}", show_index(n)),
        None => "BIP-32 says to use the next index; this is the last one".to_string(),
    };
    param(format!(
        "HD path {path}: the secp256k1 child {} at level {} is invalid (I_L >= n or a zero key; \
         probability below 2^-127): {advice}",
        show_index(index),
        level + 1
    ))
}

fn copy(x: &ExtendedPrivate) -> Result<ExtendedPrivate> {
    let mut key = secure::secret::<32>()?;
    let mut chain = secure::secret::<32>()?;
    key.copy_from_slice(&x.key[..]);
    chain.copy_from_slice(&x.chain[..]);
    Ok(ExtendedPrivate {
        key,
        chain,
        depth: x.depth,
        parent_fingerprint: x.parent_fingerprint,
        child_number: x.child_number,
    })
}

/// The parent's scalar, which must be in `[1, n-1]`.
fn parent_scalar<C: CurveArithmetic>(key: &Secret32) -> Result<NonZeroScalar<C>> {
    Option::from(NonZeroScalar::<C>::from_repr(field_bytes::<C>(&key[..])?)).ok_or_else(|| {
        Error::with(
            CKR_GENERAL_ERROR,
            "an HD key is not a scalar in [1, n-1] of its curve",
        )
    })
}

/// One BIP-32 / SLIP-10 private step on a Weierstrass curve. `I`, `I_L`,
/// the scalars and the child's key bytes exist only on the secret stack and
/// in the arena.
fn ec_child<C>(
    parent: &ExtendedPrivate,
    index: u32,
    invalid: Invalid,
) -> std::result::Result<ExtendedPrivate, StepError>
where
    C: CurveArithmetic,
    AffinePoint<C>: FromSec1Point<C> + ToSec1Point<C>,
    FieldBytesSize<C>: ModulusSize,
{
    let mut key = secure::secret::<32>()?;
    let mut chain = secure::secret::<32>()?;
    // The curves' tables are public: built on an ordinary stack, not here.
    crate::mechanisms::warm_up();
    let fingerprint = secure::confined_at(Depth::Deep, || {
        let k_par = parent_scalar::<C>(&parent.key)?;
        let point = ProjectivePoint::<C>::mul_by_generator(&*k_par).to_affine();
        let ser_p = point.to_sec1_point(true);
        let id = hash160(ser_p.as_bytes());
        let ser32 = index.to_be_bytes();
        let mut i = if is_hardened(index) {
            hmac512(&parent.chain[..], &[&[0u8], &parent.key[..], &ser32])
        } else {
            hmac512(&parent.chain[..], &[ser_p.as_bytes(), &ser32])
        };
        let outcome = loop {
            let mut il = field_bytes::<C>(&i[..32])?;
            let child = Scalar::<C>::from_repr(il)
                .map(|il| il + *k_par)
                .and_then(|c| CtOption::new(c, !c.is_zero()));
            il.zeroize();
            if let Some(mut c) = Option::<Scalar<C>>::from(child) {
                let mut repr = c.to_repr();
                key.copy_from_slice(&repr);
                chain.copy_from_slice(&i[32..]);
                repr.zeroize();
                c.zeroize();
                break Ok([id[0], id[1], id[2], id[3]]);
            }
            match invalid {
                Invalid::Refuse => break Err(StepError::Invalid),
                Invalid::Rehash => {
                    let next = hmac512(&parent.chain[..], &[&[1u8], &i[32..], &ser32]);
                    i.zeroize();
                    i = next;
                }
            }
        };
        i.zeroize();
        outcome
    })?;
    Ok(ExtendedPrivate {
        key,
        chain,
        depth: parent.depth + 1,
        parent_fingerprint: fingerprint,
        child_number: index,
    })
}

/// One SLIP-10 Ed25519 step (hardened only): the child key is `I_L`.
fn ed25519_child(
    parent: &ExtendedPrivate,
    index: u32,
) -> std::result::Result<ExtendedPrivate, StepError> {
    debug_assert!(is_hardened(index), "checked by derive_private_from");
    let mut key = secure::secret::<32>()?;
    let mut chain = secure::secret::<32>()?;
    let public = secure::confined(|| {
        let ser32 = index.to_be_bytes();
        let mut i = hmac512(&parent.chain[..], &[&[0u8], &parent.key[..], &ser32]);
        key.copy_from_slice(&i[..32]);
        chain.copy_from_slice(&i[32..]);
        i.zeroize();
        ed25519_dalek::SigningKey::from_bytes(&parent.key)
            .verifying_key()
            .to_bytes()
    });
    Ok(ExtendedPrivate {
        key,
        chain,
        depth: parent.depth + 1,
        parent_fingerprint: fingerprint_of(KeyType::Ed25519, &public)?,
        child_number: index,
    })
}

// ---- public keys and public derivation --------------------------------------

/// The extended public key of an extended private key (BIP-32's `N`). Its
/// chain code is copied out of the arena: for a key that stays private, use
/// [`public_key_of`] and keep the chain code where it is.
pub fn public_of(kt: KeyType, x: &ExtendedPrivate) -> Result<ExtendedPublic> {
    Ok(ExtendedPublic {
        key: public_key_of(kt, x)?,
        chain: *x.chain,
        depth: x.depth,
        parent_fingerprint: x.parent_fingerprint,
        child_number: x.child_number,
    })
}

/// The public key of an extended private key (uncompressed SEC1 point, or
/// the Ed25519 key), without its chain code.
pub fn public_key_of(kt: KeyType, x: &ExtendedPrivate) -> Result<Vec<u8>> {
    let key = match kt {
        KeyType::Secp256k1 => ec_public::<k256::Secp256k1>(&x.key)?,
        KeyType::P256 => ec_public::<p256::NistP256>(&x.key)?,
        KeyType::Ed25519 => secure::confined(|| {
            ed25519_dalek::SigningKey::from_bytes(&x.key)
                .verifying_key()
                .to_bytes()
                .to_vec()
        }),
        _ => return Err(not_hd(kt)),
    };
    Ok(key)
}

/// The uncompressed SEC1 point of a scalar, computed on a secret stack.
fn ec_public<C>(key: &Secret32) -> Result<Vec<u8>>
where
    C: CurveArithmetic,
    AffinePoint<C>: FromSec1Point<C> + ToSec1Point<C>,
    FieldBytesSize<C>: ModulusSize,
{
    crate::mechanisms::warm_up();
    secure::confined_at(Depth::Deep, || {
        let k = parent_scalar::<C>(key)?;
        let point = ProjectivePoint::<C>::mul_by_generator(&*k).to_affine();
        Ok(point.to_sec1_point(false).as_bytes().to_vec())
    })
}

/// The master extended public key of a tree: depth 0, no parent, child 0.
pub fn master_public(public_key: &[u8], chain: &[u8; 32]) -> ExtendedPublic {
    ExtendedPublic {
        key: public_key.to_vec(),
        chain: *chain,
        depth: 0,
        parent_fingerprint: [0; 4],
        child_number: 0,
    }
}

/// The extended public key at `path` below `parent`: non-hardened indices
/// only, on secp256k1 (BIP-32) and P-256 (SLIP-10).
pub fn derive_public(kt: KeyType, parent: &ExtendedPublic, path: &Path) -> Result<ExtendedPublic> {
    let invalid = match kt {
        KeyType::Ed25519 => {
            return Err(param(format!(
                "HD path {path}: SLIP-10 defines no public derivation for Ed25519 (its children \
                 are hardened only): derive from the private key"
            )))
        }
        _ => rule(kt).ok_or_else(|| not_hd(kt))?,
    };
    check_depth(parent.depth, path)?;
    if let Some((level, &i)) = path
        .indices()
        .iter()
        .enumerate()
        .find(|(_, &i)| is_hardened(i))
    {
        return Err(param(format!(
            "HD path {path}: the hardened index {} at level {} needs the private key; from a \
             public key only non-hardened children can be derived",
            show_index(i),
            level + 1
        )));
    }
    let mut current = parent.clone();
    for (level, &index) in path.indices().iter().enumerate() {
        let step = match kt {
            KeyType::Secp256k1 => ec_public_child::<k256::Secp256k1>(kt, &current, index, invalid),
            KeyType::P256 => ec_public_child::<p256::NistP256>(kt, &current, index, invalid),
            _ => return Err(not_hd(kt)),
        };
        current = step.map_err(|e| match e {
            StepError::Invalid => invalid_child(path, level, index),
            StepError::Other(e) => e,
        })?;
    }
    Ok(current)
}

/// One non-hardened public step: `K_i = point(I_L) + K_par`.
fn ec_public_child<C>(
    kt: KeyType,
    parent: &ExtendedPublic,
    index: u32,
    invalid: Invalid,
) -> std::result::Result<ExtendedPublic, StepError>
where
    C: CurveArithmetic,
    AffinePoint<C>: FromSec1Point<C> + ToSec1Point<C>,
    FieldBytesSize<C>: ModulusSize,
{
    let point = AffinePoint::<C>::from_sec1_bytes(&parent.key).map_err(|_| {
        Error::with(
            CKR_GENERAL_ERROR,
            format!("an HD parent public key is not a point of {}", kt.name()),
        )
    })?;
    let ser_p = point.to_sec1_point(true);
    let id = hash160(ser_p.as_bytes());
    let ser32 = index.to_be_bytes();
    let mut i = hmac512(&parent.chain, &[ser_p.as_bytes(), &ser32]);
    loop {
        let il = Option::<Scalar<C>>::from(Scalar::<C>::from_repr(field_bytes::<C>(&i[..32])?));
        if let Some(il) = il {
            let child =
                ProjectivePoint::<C>::mul_by_generator(&il) + ProjectivePoint::<C>::from(point);
            if !bool::from(child.is_identity()) {
                return Ok(ExtendedPublic {
                    key: child.to_affine().to_sec1_point(false).as_bytes().to_vec(),
                    chain: i[32..].try_into().expect("32 bytes"),
                    depth: parent.depth + 1,
                    parent_fingerprint: [id[0], id[1], id[2], id[3]],
                    child_number: index,
                });
            }
        }
        match invalid {
            Invalid::Refuse => return Err(StepError::Invalid),
            Invalid::Rehash => i = hmac512(&parent.chain, &[&[1u8], &i[32..], &ser32]),
        }
    }
}
