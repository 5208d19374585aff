//! How an asset version looks as PKCS#11 objects (design §3), and the attribute table behind them.
//!
//! Nothing here is stored: every attribute is computed from the asset's record.
//!
//! For the alias (label = asset id, the current version) and for each usable
//! version N (label `asset@vN`), EC assets show a private and a public key,
//! secret-key assets (AES-256, HMAC-SHA256) one secret key.
//! Attribute behaviour is declared in [`ATTRIBUTES`]: which classes have an
//! attribute, what a creation template may say about it, whether it is
//! sensitive, and how its value is computed.

#![forbid(unsafe_code)]

use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, OctetStringRef};
use der::Encode;
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};

use crate::asset::{Asset, AssetState};
use crate::ck::*;
use crate::derive::version_object_id;
use crate::error::{values, ECDSA_NAMES, HMAC_NAMES};
use crate::types::{HmacHash, KeyType};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Private,
    Public,
    Secret,
}

impl Class {
    /// The object classes an asset of type `kt` shows.
    pub fn of(kt: KeyType) -> &'static [Class] {
        if kt.is_ec() {
            &[Class::Private, Class::Public]
        } else {
            &[Class::Secret]
        }
    }

    /// Whether objects of this class need a user login to be seen or used.
    pub fn is_private(self) -> bool {
        self != Class::Public
    }

    fn bit(self) -> u8 {
        match self {
            Class::Private => PRIV,
            Class::Public => PUB,
            Class::Secret => SEC,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Class::Private => "private",
            Class::Public => "public",
            Class::Secret => "secret",
        }
    }
}

/// Which object of an asset: its alias or one exact version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Which {
    Alias,
    Version(u32),
}

/// The identity of an object for the life of the process: asset row id,
/// alias or version, class. Handles map one-to-one onto these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub asset: i64,
    pub which: Which,
    pub class: Class,
}

/// An object resolved against the asset's current record.
pub struct View<'a> {
    pub asset: &'a Asset,
    pub which: Which,
    pub class: Class,
    /// The version this object uses to sign (the alias: the current one).
    pub version: u32,
    /// Whether `C_DestroyObject` on the alias retires the asset (config).
    pub destroy_retires: bool,
}

/// A computed attribute value.
#[derive(Debug, Clone)]
pub enum Value {
    Bool(bool),
    Ulong(CK_ULONG),
    Bytes(Vec<u8>),
    /// The attribute exists but is never revealed (`CKR_ATTRIBUTE_SENSITIVE`).
    Sensitive,
    /// Key material a caller may read (a session key that is neither
    /// sensitive nor unextractable): written from the locked arena straight
    /// into the caller's buffer, never copied to the heap; it matches no
    /// search template.
    Secret(std::sync::Arc<crate::secure::SecretBytes>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Ulong(a), Value::Ulong(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::Sensitive, Value::Sensitive) => true,
            (Value::Secret(a), Value::Secret(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Value {
    /// The bytes a caller receives (CK_BBOOL, native CK_ULONG, raw bytes).
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        match self {
            Value::Bool(b) => Some(vec![if *b { CK_TRUE as u8 } else { CK_FALSE as u8 }]),
            Value::Ulong(u) => Some(u.to_ne_bytes().to_vec()),
            Value::Bytes(b) => Some(b.clone()),
            Value::Sensitive | Value::Secret(_) => None,
        }
    }
}

/// The mechanisms an AES key of p11derive may be used with.
pub const AES_MECHANISMS: [CK_MECHANISM_TYPE; 9] = [
    CKM_AES_GCM,
    CKM_AES_KEY_WRAP,
    CKM_AES_KEY_WRAP_KWP,
    CKM_AES_ECB,
    CKM_AES_CBC,
    CKM_AES_CBC_PAD,
    CKM_AES_CTR,
    CKM_AES_CMAC,
    CKM_AES_CMAC_GENERAL,
];

/// The mechanisms an `aes128` or `aes192` asset may be used with (key wrap
/// uses the wrap subkey only `aes256` assets have).
pub const AES_SHORT_MECHANISMS: [CK_MECHANISM_TYPE; 7] = [
    CKM_AES_GCM,
    CKM_AES_ECB,
    CKM_AES_CBC,
    CKM_AES_CBC_PAD,
    CKM_AES_CTR,
    CKM_AES_CMAC,
    CKM_AES_CMAC_GENERAL,
];

/// The mechanisms an HMAC key of p11derive may be used with: every HMAC
/// mechanism (generic secrets, `hmac-sha256`).
pub const HMAC_MECHANISMS: [CK_MECHANISM_TYPE; 5] = values(HMAC_NAMES);

/// The mechanisms a key of type `kt` may be used with.
pub fn mechanisms_of(kt: KeyType) -> &'static [CK_MECHANISM_TYPE] {
    match kt {
        KeyType::Secp256k1 => &SECP256K1_MECHANISMS,
        KeyType::P256 => &P256_MECHANISMS,
        KeyType::P384 | KeyType::P521 => &WIDE_EC_MECHANISMS,
        KeyType::Ed25519 => &EDDSA_MECHANISMS,
        KeyType::Aes256 => &AES_MECHANISMS,
        KeyType::Aes128 | KeyType::Aes192 => &AES_SHORT_MECHANISMS,
        KeyType::HmacSha256 | KeyType::Generic(_) => &HMAC_MECHANISMS,
        // A CKK_SHAx_HMAC key signs with its own hash only.
        KeyType::Hmac(hash, _) => {
            let i = match hash {
                HmacHash::Sha256 => 0,
                HmacHash::Sha384 => 1,
                HmacHash::Sha512 => 2,
                HmacHash::Sha1 => 3,
                HmacHash::Sha224 => 4,
            };
            &HMAC_MECHANISMS[i..i + 1]
        }
    }
}

/// `CKA_KEY_TYPE` of an asset key type.
pub fn ckk_of(kt: KeyType) -> CK_KEY_TYPE {
    match kt {
        KeyType::Secp256k1 | KeyType::P256 | KeyType::P384 | KeyType::P521 => CKK_EC,
        KeyType::Ed25519 => CKK_EC_EDWARDS,
        KeyType::Aes128 | KeyType::Aes192 | KeyType::Aes256 => CKK_AES,
        KeyType::HmacSha256 | KeyType::Generic(_) => CKK_GENERIC_SECRET,
        KeyType::Hmac(HmacHash::Sha1, _) => CKK_SHA_1_HMAC,
        KeyType::Hmac(HmacHash::Sha224, _) => CKK_SHA224_HMAC,
        KeyType::Hmac(HmacHash::Sha256, _) => CKK_SHA256_HMAC,
        KeyType::Hmac(HmacHash::Sha384, _) => CKK_SHA384_HMAC,
        KeyType::Hmac(HmacHash::Sha512, _) => CKK_SHA512_HMAC,
    }
}

/// `CKA_KEY_GEN_MECHANISM` of an asset key type.
pub fn gen_mechanism_of(kt: KeyType) -> CK_MECHANISM_TYPE {
    match kt {
        KeyType::Ed25519 => CKM_EC_EDWARDS_KEY_PAIR_GEN,
        kt if kt.is_ecdsa() => CKM_EC_KEY_PAIR_GEN,
        kt if kt.is_aes() => CKM_AES_KEY_GEN,
        KeyType::Hmac(hash, _) => key_gen_of(hash),
        _ => CKM_GENERIC_SECRET_KEY_GEN,
    }
}

/// The PKCS#11 3.0 key generation mechanism of `CKK_SHAx_HMAC` keys.
pub fn key_gen_of(hash: HmacHash) -> CK_MECHANISM_TYPE {
    match hash {
        HmacHash::Sha1 => CKM_SHA_1_KEY_GEN,
        HmacHash::Sha224 => CKM_SHA224_KEY_GEN,
        HmacHash::Sha256 => CKM_SHA256_KEY_GEN,
        HmacHash::Sha384 => CKM_SHA384_KEY_GEN,
        HmacHash::Sha512 => CKM_SHA512_KEY_GEN,
    }
}

/// The mechanisms of a key of type `kt` but HD derivation (a random session
/// key pair, which has no chain code; it signs and does ECDH).
pub fn signing_mechanisms_of(kt: KeyType) -> &'static [CK_MECHANISM_TYPE] {
    let all = mechanisms_of(kt);
    match all.last() {
        Some(&CKM_P11DERIVE_HD_CHILD) => &all[..all.len() - 1],
        _ => all,
    }
}

/// The ECDSA mechanisms.
pub const EC_MECHANISMS: [CK_MECHANISM_TYPE; 6] = values(ECDSA_NAMES);

/// The mechanisms a secp256k1 key may be used with: ECDSA, recoverable
/// ECDSA, BIP-340 Schnorr, ECDH, and HD child derivation (design §6.1;
/// HD derivation stays last: see `signing_mechanisms_of`).
pub const SECP256K1_MECHANISMS: [CK_MECHANISM_TYPE; 11] = {
    let e = EC_MECHANISMS;
    [
        e[0],
        e[1],
        e[2],
        e[3],
        e[4],
        e[5],
        CKM_P11DERIVE_ECDSA_RECOVERABLE,
        CKM_P11DERIVE_BIP340,
        CKM_ECDH1_DERIVE,
        CKM_ECDH1_COFACTOR_DERIVE,
        CKM_P11DERIVE_HD_CHILD,
    ]
};

/// The mechanisms a P-384 or P-521 key may be used with: ECDSA and ECDH
/// (no HD tree on these curves).
pub const WIDE_EC_MECHANISMS: [CK_MECHANISM_TYPE; 8] = {
    let e = EC_MECHANISMS;
    [
        e[0],
        e[1],
        e[2],
        e[3],
        e[4],
        e[5],
        CKM_ECDH1_DERIVE,
        CKM_ECDH1_COFACTOR_DERIVE,
    ]
};

/// The mechanisms a P-256 key may be used with: ECDSA, ECDH and HD child
/// derivation (SLIP-10).
pub const P256_MECHANISMS: [CK_MECHANISM_TYPE; 9] = {
    let e = EC_MECHANISMS;
    [
        e[0],
        e[1],
        e[2],
        e[3],
        e[4],
        e[5],
        CKM_ECDH1_DERIVE,
        CKM_ECDH1_COFACTOR_DERIVE,
        CKM_P11DERIVE_HD_CHILD,
    ]
};

/// The mechanisms an Ed25519 key may be used with: pure Ed25519 and HD
/// child derivation (SLIP-10, hardened).
pub const EDDSA_MECHANISMS: [CK_MECHANISM_TYPE; 2] = [CKM_EDDSA, CKM_P11DERIVE_HD_CHILD];

/// The named curves' OIDs (SEC 2 secp256k1, X9.62 prime256v1) and
/// id-ecPublicKey (RFC 5480).
const OID_SECP256K1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.10");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// id-Ed25519 (RFC 8410): the key's algorithm and, in PKCS#11 3.0, its
/// `CKA_EC_PARAMS`.
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// `CKA_EC_PARAMS` of each curve, the DER of its named-curve OID: a constant
/// (objects are compared with it byte for byte), checked against the `der`
/// crate's encoding of the OID by a unit test.
const DER_OID_SECP256K1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
const DER_OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const DER_OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const DER_OID_P521: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
const DER_OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// What templates may also name Ed25519 with (design §6.1): the curve name
/// as a PrintableString (PKCS#11 3.0 allows it), and OpenSC's older OID
/// 1.3.6.1.4.1.11591.15.1.
const DER_NAME_ED25519: &[u8] = b"\x13\x0cedwards25519";
const DER_OID_ED25519_OPENSC: &[u8] = &[
    0x06, 0x09, 0x2b, 0x06, 0x01, 0x04, 0x01, 0xda, 0x47, 0x0f, 0x01,
];

fn curve_oid(kt: KeyType) -> Option<ObjectIdentifier> {
    match kt {
        KeyType::Secp256k1 => Some(OID_SECP256K1),
        KeyType::P256 => Some(OID_P256),
        KeyType::P384 => Some(OID_P384),
        KeyType::P521 => Some(OID_P521),
        _ => None,
    }
}

/// `CKA_EC_PARAMS` of a curve: the DER of its named-curve OID.
pub fn ec_params(kt: KeyType) -> Option<&'static [u8]> {
    match kt {
        KeyType::Secp256k1 => Some(DER_OID_SECP256K1),
        KeyType::P256 => Some(DER_OID_P256),
        KeyType::P384 => Some(DER_OID_P384),
        KeyType::P521 => Some(DER_OID_P521),
        KeyType::Ed25519 => Some(DER_OID_ED25519),
        _ => None,
    }
}

/// The curve named by a `CKA_EC_PARAMS` value; `None` for anything else
/// (explicit parameters, other curves).
pub fn curve_from_params(params: &[u8]) -> Option<KeyType> {
    if params == DER_NAME_ED25519 || params == DER_OID_ED25519_OPENSC {
        return Some(KeyType::Ed25519);
    }
    [
        KeyType::Secp256k1,
        KeyType::P256,
        KeyType::P384,
        KeyType::P521,
        KeyType::Ed25519,
    ]
    .into_iter()
    .find(|&kt| ec_params(kt) == Some(params))
}

/// The key-pair generation mechanism of a curve.
pub fn pair_mechanism(kt: KeyType) -> CK_MECHANISM_TYPE {
    match kt {
        KeyType::Ed25519 => CKM_EC_EDWARDS_KEY_PAIR_GEN,
        _ => CKM_EC_KEY_PAIR_GEN,
    }
}

/// `CKA_EC_POINT`: the uncompressed point wrapped in a DER OCTET STRING.
pub fn ec_point_der(point: &[u8]) -> Vec<u8> {
    // A point is at most 133 bytes (P-521): always a valid OCTET STRING.
    OctetStringRef::new(point)
        .and_then(|o| o.to_der())
        .unwrap_or_default()
}

/// `CKA_PUBLIC_KEY_INFO`: the DER SubjectPublicKeyInfo of an EC public point
/// (RFC 5480) or an Ed25519 key (RFC 8410), by the `spki` crate.
pub fn spki(kt: KeyType, point: &[u8]) -> Option<Vec<u8>> {
    if kt == KeyType::Ed25519 {
        let info = SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef {
                oid: OID_ED25519,
                parameters: None,
            },
            subject_public_key: BitStringRef::from_bytes(point).ok()?,
        };
        return info.to_der().ok();
    }
    let curve = curve_oid(kt)?;
    let info = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef {
            oid: OID_EC_PUBLIC_KEY,
            parameters: Some(AnyRef::from(&curve)),
        },
        subject_public_key: BitStringRef::from_bytes(point).ok()?,
    };
    info.to_der().ok()
}

impl<'a> View<'a> {
    /// Resolves `key` against `asset`; `None` when the object no longer exists
    /// (retired asset, trimmed or unknown version).
    pub fn resolve(asset: &'a Asset, key: &ObjectKey) -> Option<View<'a>> {
        if asset.state == AssetState::Retired || !Class::of(asset.key_type).contains(&key.class) {
            return None;
        }
        let version = match key.which {
            Which::Alias => asset.current,
            Which::Version(n) => n,
        };
        asset.version(version)?;
        Some(View {
            asset,
            which: key.which,
            class: key.class,
            version,
            destroy_retires: false,
        })
    }

    /// Every object an asset shows.
    pub fn keys_of(asset: &Asset) -> Vec<ObjectKey> {
        if asset.state == AssetState::Retired {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(2 + 2 * asset.versions.len());
        let whiches = std::iter::once(Which::Alias)
            .chain(asset.versions.iter().map(|v| Which::Version(v.version)));
        for which in whiches {
            for &class in Class::of(asset.key_type) {
                out.push(ObjectKey {
                    asset: asset.rowid,
                    which,
                    class,
                });
            }
        }
        out
    }

    pub fn label(&self) -> String {
        match self.which {
            Which::Alias => self.asset.id.to_string(),
            Which::Version(n) => format!("{}@v{n}", self.asset.id),
        }
    }

    pub fn object_id(&self) -> Vec<u8> {
        match self.which {
            Which::Alias => self.asset.object_id.clone(),
            Which::Version(n) => version_object_id(&self.asset.object_id, n),
        }
    }

    /// Whether this object's version may sign now: the current version while
    /// ACTIVE; during ROTATING also the previous one (the grace window).
    pub fn may_sign(&self) -> bool {
        self.asset.may_sign(self.version)
    }

    /// Whether signatures may be verified with this object now.
    pub fn may_verify(&self) -> bool {
        self.asset.may_verify(self.version)
    }

    /// The recorded public point of this object's version (EC assets).
    pub fn public_point(&self) -> Option<&'a [u8]> {
        if !self.asset.key_type.is_ec() {
            return None;
        }
        self.asset.version(self.version)?.public_key.as_deref()
    }

    /// The recorded `CKA_CHECK_VALUE` of this object's version (secret-key
    /// assets keep it where EC assets keep their public point).
    pub fn check_value(&self) -> Option<&'a [u8]> {
        if self.asset.key_type.is_ec() {
            return None;
        }
        self.asset.version(self.version)?.public_key.as_deref()
    }

    fn is_aes(&self) -> bool {
        self.asset.key_type.is_aes()
    }

    /// An `aes256` asset (the only AES type with a key-wrap subkey).
    fn wraps(&self) -> bool {
        self.asset.key_type == KeyType::Aes256
    }

    fn is_hmac(&self) -> bool {
        self.asset.key_type.is_mac()
    }

    /// The versions (and public points) a verification through this object
    /// may use, newest first: the alias accepts every usable version, a
    /// version object its own.
    pub fn verify_points(&self) -> Vec<(u32, &'a [u8])> {
        self.asset
            .versions
            .iter()
            .filter(|v| self.which == Which::Alias || v.version == self.version)
            .filter_map(|v| Some((v.version, v.public_key.as_deref()?)))
            .collect()
    }

    fn state_code(&self) -> CK_ULONG {
        match self.asset.state {
            AssetState::Active => CKP11D_STATE_ACTIVE,
            AssetState::Rotating => CKP11D_STATE_ROTATING,
            AssetState::Suspended => CKP11D_STATE_SUSPENDED,
            AssetState::Retired => CKP11D_STATE_RETIRED,
        }
    }

    /// The value of attribute `ty`; `None` when this object has no such
    /// attribute (`CKR_ATTRIBUTE_TYPE_INVALID`).
    pub fn attribute(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<Value> {
        let a = entry(self.class, ty)?;
        if a.sensitive {
            return Some(Value::Sensitive);
        }
        (a.get?)(self)
    }

    /// Whether every attribute of `template` is present with exactly that value.
    pub fn matches(&self, template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> bool {
        matches(template, |ty| self.attribute(ty))
    }
}

/// Whether an object whose attributes `attribute` answers has every
/// attribute of `template` with exactly that value (C_FindObjects).
pub fn matches(
    template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)],
    attribute: impl Fn(CK_ATTRIBUTE_TYPE) -> Option<Value>,
) -> bool {
    template.iter().all(|(ty, want)| {
        attribute(*ty)
            .and_then(|v| v.to_bytes())
            .is_some_and(|have| &have == want)
    })
}

const PRIV: u8 = 1;
const PUB: u8 = 2;
const SEC: u8 = 4;
/// EC keys, private and public.
const BOTH: u8 = PRIV | PUB;
const ALL: u8 = PRIV | PUB | SEC;

/// What a creation template (`C_GenerateKeyPair`, or `C_GenerateKey` with
/// `CKA_TOKEN=true`) may say about an attribute of the derived key it makes.
/// A type the table does not list for the class is `CKR_ATTRIBUTE_TYPE_INVALID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCreate {
    /// Names or places the new asset (label, id, token, curve): the creator
    /// reads it.
    Given,
    /// Says what the object is (class, key type, value length): it must
    /// agree with the key made (`CKR_TEMPLATE_INCONSISTENT`).
    Identity,
    /// A property every derived key has: only this value may be asked
    /// (another is `CKR_TEMPLATE_INCONSISTENT`); asked true, it is logged as
    /// ignored, like [`OnCreate::Ignored`].
    Fixed(bool),
    /// A use keys of this type have (settable on create only to true), a use
    /// keys of other types never have (accepted; logged when asked).
    Use(KeyType),
    /// At least the key's own mechanisms (a narrower list is inconsistent).
    Mechanisms,
    /// Computed by p11derive, never settable: `CKR_ATTRIBUTE_READ_ONLY`.
    Computed,
    /// Answered by the object itself: accepted, and logged as ignored when
    /// asked true.
    Ignored,
    /// p11derive's own attributes: computed (as [`OnCreate::Computed`]) in
    /// an EC key pair's template, ignored in a secret key's (as each has
    /// been since it was written).
    Vendor,
}

/// One attribute of one or more classes: what a creation template may say
/// about it, whether its value is sensitive (never revealed:
/// `CKR_ATTRIBUTE_SENSITIVE`), and how it is computed (its value, which no
/// template changes: derived keys are not modifiable). No getter and not
/// sensitive: the class does not show the attribute, but a creation template
/// may name it.
struct Attribute {
    ty: CK_ATTRIBUTE_TYPE,
    classes: u8,
    create: OnCreate,
    sensitive: bool,
    get: Option<fn(&View) -> Option<Value>>,
}

const fn attr(
    ty: CK_ATTRIBUTE_TYPE,
    classes: u8,
    create: OnCreate,
    get: fn(&View) -> Option<Value>,
) -> Attribute {
    Attribute {
        ty,
        classes,
        create,
        sensitive: false,
        get: Some(get),
    }
}

/// An attribute the class does not show that a creation template may name.
const fn named(ty: CK_ATTRIBUTE_TYPE, classes: u8, create: OnCreate) -> Attribute {
    Attribute {
        ty,
        classes,
        create,
        sensitive: false,
        get: None,
    }
}

/// Key material: never revealed, never supplied.
const fn sensitive(ty: CK_ATTRIBUTE_TYPE, classes: u8) -> Attribute {
    Attribute {
        ty,
        classes,
        create: Computed,
        sensitive: true,
        get: None,
    }
}

fn yes(_: &View) -> Option<Value> {
    Some(Value::Bool(true))
}
fn no(_: &View) -> Option<Value> {
    Some(Value::Bool(false))
}
fn empty(_: &View) -> Option<Value> {
    Some(Value::Bytes(Vec::new()))
}
fn mechanisms(v: &View) -> Option<Value> {
    let list = mechanisms_of(v.asset.key_type);
    let mut b = Vec::with_capacity(list.len() * 8);
    for m in list {
        b.extend_from_slice(&m.to_ne_bytes());
    }
    Some(Value::Bytes(b))
}

use OnCreate::{Computed, Fixed, Given, Identity, Ignored, Mechanisms, Use, Vendor};

/// The attribute table. Order does not matter; each (type, class) appears once.
static ATTRIBUTES: &[Attribute] = &[
    // Common object attributes.
    attr(CKA_CLASS, ALL, Identity, |v| {
        Some(Value::Ulong(match v.class {
            Class::Private => CKO_PRIVATE_KEY,
            Class::Public => CKO_PUBLIC_KEY,
            Class::Secret => CKO_SECRET_KEY,
        }))
    }),
    attr(CKA_TOKEN, ALL, Given, yes),
    attr(CKA_PRIVATE, PRIV | SEC, Fixed(true), yes),
    attr(CKA_PRIVATE, PUB, Ignored, no),
    attr(CKA_MODIFIABLE, ALL, Ignored, no),
    attr(CKA_COPYABLE, ALL, Ignored, no),
    attr(CKA_DESTROYABLE, ALL, Ignored, |v| {
        Some(Value::Bool(v.destroy_retires && v.which == Which::Alias))
    }),
    attr(CKA_LABEL, ALL, Given, |v| {
        Some(Value::Bytes(v.label().into_bytes()))
    }),
    attr(CKA_UNIQUE_ID, ALL, Computed, |v| {
        Some(Value::Bytes(
            format!("{}/{}", v.label(), v.class.name()).into_bytes(),
        ))
    }),
    // Common key attributes.
    attr(CKA_KEY_TYPE, ALL, Identity, |v| {
        Some(Value::Ulong(ckk_of(v.asset.key_type)))
    }),
    attr(CKA_ID, ALL, Given, |v| Some(Value::Bytes(v.object_id()))),
    attr(CKA_START_DATE, ALL, Ignored, empty),
    attr(CKA_END_DATE, ALL, Ignored, empty),
    // Key pairs derive HD children (CKM_P11DERIVE_HD_CHILD) and a private
    // secp256k1, P-256, P-384 or P-521 key derives ECDH secrets (CKM_ECDH1_DERIVE): a
    // private key while its version may sign (ECDH is checked and audited
    // as a signature), a public key (not Ed25519: SLIP-10 has no public
    // derivation there) while it may verify.
    attr(CKA_DERIVE, PRIV, Ignored, |v| {
        let kt = v.asset.key_type;
        let derives = kt.is_hd() || crate::mechanisms::ecdh::Curve::of(kt).is_some();
        Some(Value::Bool(derives && v.may_sign()))
    }),
    attr(CKA_DERIVE, PUB, Ignored, |v| {
        Some(Value::Bool(
            v.asset.key_type != KeyType::Ed25519 && v.asset.key_type.is_hd() && v.may_verify(),
        ))
    }),
    attr(CKA_DERIVE, SEC, Ignored, no),
    attr(CKA_LOCAL, ALL, Computed, yes),
    attr(CKA_KEY_GEN_MECHANISM, ALL, Computed, |v| {
        Some(Value::Ulong(gen_mechanism_of(v.asset.key_type)))
    }),
    attr(CKA_ALLOWED_MECHANISMS, ALL, Mechanisms, mechanisms),
    attr(CKA_SUBJECT, BOTH, Ignored, empty),
    named(CKA_SUBJECT, SEC, Ignored),
    attr(CKA_PUBLIC_KEY_INFO, BOTH, Computed, |v| {
        spki(v.asset.key_type, v.public_point()?).map(Value::Bytes)
    }),
    // EC domain parameters on both keys: libp11 reads them from the private key.
    attr(CKA_EC_PARAMS, BOTH, Given, |v| {
        ec_params(v.asset.key_type).map(|p| Value::Bytes(p.to_vec()))
    }),
    // Public key attributes.
    attr(CKA_EC_POINT, PUB, Computed, |v| {
        Some(Value::Bytes(ec_point_der(v.public_point()?)))
    }),
    attr(CKA_ENCRYPT, PUB, Ignored, no),
    attr(CKA_VERIFY, PUB, Fixed(true), |v| {
        Some(Value::Bool(v.may_verify()))
    }),
    attr(CKA_VERIFY_RECOVER, PUB, Ignored, no),
    attr(CKA_WRAP, PUB, Ignored, no),
    attr(CKA_TRUSTED, PUB, Ignored, no),
    // What a public key's template may name though the key does not show it.
    named(CKA_DECRYPT, PUB, Ignored),
    named(CKA_UNWRAP, PUB, Ignored),
    named(CKA_SIGN_RECOVER, PUB | SEC, Ignored),
    named(CKA_WRAP_WITH_TRUSTED, PUB, Ignored),
    named(CKA_ALWAYS_SENSITIVE, PUB, Computed),
    named(CKA_NEVER_EXTRACTABLE, PUB, Computed),
    // Private key attributes.
    sensitive(CKA_VALUE, PRIV),
    attr(CKA_SENSITIVE, PRIV, Fixed(true), yes),
    attr(CKA_ALWAYS_SENSITIVE, PRIV, Computed, yes),
    attr(CKA_EXTRACTABLE, PRIV, Fixed(false), no),
    attr(CKA_NEVER_EXTRACTABLE, PRIV, Computed, yes),
    attr(CKA_DECRYPT, PRIV, Ignored, no),
    attr(CKA_SIGN, PRIV, Fixed(true), |v| {
        Some(Value::Bool(v.may_sign()))
    }),
    attr(CKA_SIGN_RECOVER, PRIV, Ignored, no),
    attr(CKA_UNWRAP, PRIV, Ignored, no),
    attr(CKA_WRAP_WITH_TRUSTED, PRIV, Ignored, no),
    attr(CKA_ALWAYS_AUTHENTICATE, PRIV, Fixed(false), no),
    // What a private key's template may name though the key does not show it.
    named(CKA_ENCRYPT, PRIV, Ignored),
    named(CKA_WRAP, PRIV, Ignored),
    named(CKA_VERIFY_RECOVER, PRIV | SEC, Ignored),
    named(CKA_TRUSTED, PRIV, Ignored),
    // Secret key attributes: AES keys encrypt and decrypt, HMAC keys sign and
    // verify; a version that may no longer encrypt (sign) still decrypts
    // (verifies) while usable.
    sensitive(CKA_VALUE, SEC),
    attr(CKA_VALUE_LEN, SEC, Identity, |v| {
        Some(Value::Ulong(v.asset.key_type.key_len() as CK_ULONG))
    }),
    attr(CKA_CHECK_VALUE, SEC, Computed, |v| {
        Some(Value::Bytes(v.check_value()?.to_vec()))
    }),
    attr(CKA_SENSITIVE, SEC, Fixed(true), yes),
    attr(CKA_ALWAYS_SENSITIVE, SEC, Computed, yes),
    attr(CKA_EXTRACTABLE, SEC, Fixed(false), no),
    attr(CKA_NEVER_EXTRACTABLE, SEC, Computed, yes),
    attr(CKA_ENCRYPT, SEC, Use(KeyType::Aes256), |v| {
        Some(Value::Bool(v.is_aes() && v.may_sign()))
    }),
    attr(CKA_DECRYPT, SEC, Use(KeyType::Aes256), |v| {
        Some(Value::Bool(v.is_aes() && v.may_verify()))
    }),
    // AES keys sign and verify too: AES-CMAC.
    attr(CKA_SIGN, SEC, Use(KeyType::HmacSha256), |v| {
        Some(Value::Bool((v.is_hmac() || v.is_aes()) && v.may_sign()))
    }),
    attr(CKA_VERIFY, SEC, Use(KeyType::HmacSha256), |v| {
        Some(Value::Bool((v.is_hmac() || v.is_aes()) && v.may_verify()))
    }),
    attr(CKA_WRAP, SEC, Ignored, |v| {
        Some(Value::Bool(v.wraps() && v.may_sign()))
    }),
    attr(CKA_UNWRAP, SEC, Ignored, |v| {
        Some(Value::Bool(v.wraps() && v.may_verify()))
    }),
    attr(CKA_TRUSTED, SEC, Ignored, no),
    attr(CKA_WRAP_WITH_TRUSTED, SEC, Ignored, no),
    // p11derive vendor attributes (pkcs11-headers/p11derive.h).
    attr(CKA_P11DERIVE_ASSET_ID, ALL, Vendor, |v| {
        Some(Value::Bytes(v.asset.id.as_str().as_bytes().to_vec()))
    }),
    attr(CKA_P11DERIVE_VERSION, ALL, Vendor, |v| {
        Some(Value::Ulong(v.version as CK_ULONG))
    }),
    attr(CKA_P11DERIVE_STATE, ALL, Vendor, |v| {
        Some(Value::Ulong(v.state_code()))
    }),
    attr(CKA_P11DERIVE_IS_ALIAS, ALL, Vendor, |v| {
        Some(Value::Bool(v.which == Which::Alias))
    }),
    attr(CKA_P11DERIVE_CURRENT, ALL, Vendor, |v| {
        Some(Value::Ulong(v.asset.current as CK_ULONG))
    }),
    attr(CKA_P11DERIVE_MIN_USABLE, ALL, Vendor, |v| {
        Some(Value::Ulong(v.asset.min_usable as CK_ULONG))
    }),
    attr(CKA_P11DERIVE_KEY_TYPE, ALL, Vendor, |v| {
        Some(Value::Bytes(v.asset.key_type.name().as_bytes().to_vec()))
    }),
    // HD trees (design §6.1): an asset's own objects are the master, the
    // empty path. The chain code (and the xpub that carries it) is shown on
    // public objects only (the token computes it: token/hd.rs).
    attr(CKA_P11DERIVE_HD_PATH, BOTH, Vendor, empty),
    attr(CKA_P11DERIVE_XONLY_KEY, BOTH, Vendor, |v| {
        if v.asset.key_type != KeyType::Secp256k1 {
            return None;
        }
        crate::mechanisms::schnorr::xonly(v.public_point()?)
            .ok()
            .map(|x| Value::Bytes(x.to_vec()))
    }),
    attr(CKA_P11DERIVE_CHAIN_CODE, PUB, Vendor, |_| None),
    attr(CKA_P11DERIVE_XPUB, PUB, Vendor, |_| None),
    sensitive(CKA_P11DERIVE_CHAIN_CODE, PRIV),
    sensitive(CKA_P11DERIVE_XPUB, PRIV),
];

/// The table's entry for (class, type), if any.
fn entry(class: Class, ty: CK_ATTRIBUTE_TYPE) -> Option<&'static Attribute> {
    let want = class.bit();
    ATTRIBUTES
        .iter()
        .find(|a| a.ty == ty && a.classes & want != 0)
}

/// What a creation template may say about attribute `ty` of a derived key
/// of `class`; `None`: the type does not apply to it.
pub fn on_create(class: Class, ty: CK_ATTRIBUTE_TYPE) -> Option<OnCreate> {
    entry(class, ty).map(|a| a.create)
}

/// Whether attribute `ty` of an object of `class` is sensitive: it exists
/// but is never revealed (`CKR_ATTRIBUTE_SENSITIVE`). The same for derived
/// keys and session keys.
pub fn is_sensitive(class: Class, ty: CK_ATTRIBUTE_TYPE) -> bool {
    entry(class, ty).is_some_and(|a| a.sensitive)
}

/// One DER element: its tag, its content, the whole encoding, what follows.
type DerElement<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn der_element(input: &[u8]) -> Option<DerElement<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((tag, &rest[..len], &input[..header + len], &rest[len..]))
}

/// What a token shows of an X.509 certificate besides its value: the DER
/// of its serial number, issuer, subject and SubjectPublicKeyInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Fields {
    pub serial: Vec<u8>,
    pub issuer: Vec<u8>,
    pub subject: Vec<u8>,
    pub spki: Vec<u8>,
}

/// The next DER element of `input` when its tag is `tag`: its content, the
/// whole encoding, what follows.
fn der_tagged(tag: u8, input: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (t, content, whole, rest) = der_element(input)?;
    (t == tag).then_some((content, whole, rest))
}

/// Reads the fields of a DER X.509 certificate; `None` when it is not one.
pub fn x509_fields(der: &[u8]) -> Option<X509Fields> {
    const SEQUENCE: u8 = 0x30;
    let (cert, whole, rest) = der_tagged(SEQUENCE, der)?;
    if !rest.is_empty() || whole.len() != der.len() {
        return None;
    }
    let (tbs, _, _) = der_tagged(SEQUENCE, cert)?;
    let mut at = tbs;
    // [0] EXPLICIT version, when present.
    if at.first() == Some(&0xa0) {
        at = der_element(at)?.3;
    }
    let (_, serial, at) = der_tagged(0x02, at)?;
    let (_, _, at) = der_tagged(SEQUENCE, at)?; // signature algorithm
    let (_, issuer, at) = der_tagged(SEQUENCE, at)?;
    let (_, _, at) = der_tagged(SEQUENCE, at)?; // validity
    let (_, subject, at) = der_tagged(SEQUENCE, at)?;
    let (_, spki, _) = der_tagged(SEQUENCE, at)?;
    Some(X509Fields {
        serial: serial.to_vec(),
        issuer: issuer.to_vec(),
        subject: subject.to_vec(),
        spki: spki.to_vec(),
    })
}

/// Every attribute type an asset object has, each once, in the order of the
/// attribute table: for tools that must name them all (the ABI fuzz target).
pub fn attribute_types() -> Vec<CK_ATTRIBUTE_TYPE> {
    let mut types: Vec<CK_ATTRIBUTE_TYPE> = Vec::with_capacity(ATTRIBUTES.len());
    for a in ATTRIBUTES {
        if !types.contains(&a.ty) {
            types.push(a.ty);
        }
    }
    types
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encodings the crates give are the ones p11derive has always
    /// served (the bytes clients such as OpenSSL compare and parse).
    /// The mechanisms each key type allows are policy: they come from the
    /// name lists in `error.rs`, so a name added there must not widen them
    /// unnoticed.
    #[test]
    fn each_key_type_allows_exactly_its_mechanisms() {
        // CKM_ECDSA and CKM_ECDSA_SHA1, _SHA224, _SHA256, _SHA384, _SHA512.
        let ecdsa = [0x1041, 0x1042, 0x1043, 0x1044, 0x1045, 0x1046];
        let hd = CKM_VENDOR_DEFINED | 0x5044_0001;
        let (recoverable, bip340) = (
            CKM_VENDOR_DEFINED | 0x5044_0002,
            CKM_VENDOR_DEFINED | 0x5044_0003,
        );
        assert_eq!(
            mechanisms_of(KeyType::Secp256k1),
            [&ecdsa[..], &[recoverable, bip340, 0x1050, 0x1051, hd]].concat()
        );
        assert_eq!(
            mechanisms_of(KeyType::P256),
            [&ecdsa[..], &[0x1050, 0x1051, hd]].concat()
        );
        assert_eq!(mechanisms_of(KeyType::Ed25519), [0x1057, hd]);
        assert_eq!(
            mechanisms_of(KeyType::Aes256),
            [
                CKM_AES_GCM,
                CKM_AES_KEY_WRAP,
                CKM_AES_KEY_WRAP_KWP,
                CKM_AES_ECB,
                CKM_AES_CBC,
                CKM_AES_CBC_PAD,
                CKM_AES_CTR,
                CKM_AES_CMAC,
                CKM_AES_CMAC_GENERAL
            ]
        );
        let hmacs = [
            CKM_SHA256_HMAC,
            CKM_SHA384_HMAC,
            CKM_SHA512_HMAC,
            CKM_SHA_1_HMAC,
            CKM_SHA224_HMAC,
        ];
        assert_eq!(mechanisms_of(KeyType::HmacSha256), hmacs);
        assert_eq!(mechanisms_of(KeyType::Generic(17)), hmacs);
        let wide: Vec<_> = ecdsa
            .iter()
            .copied()
            .chain([CKM_ECDH1_DERIVE, CKM_ECDH1_COFACTOR_DERIVE])
            .collect();
        assert_eq!(mechanisms_of(KeyType::P384), wide);
        assert_eq!(mechanisms_of(KeyType::P521), wide);
        assert_eq!(mechanisms_of(KeyType::Aes128), AES_SHORT_MECHANISMS);
        assert_eq!(mechanisms_of(KeyType::Aes192), AES_SHORT_MECHANISMS);
        assert!(AES_MECHANISMS
            .iter()
            .all(|m| AES_SHORT_MECHANISMS.contains(m)
                || matches!(*m, CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_KWP)));
        // A CKK_SHAx_HMAC key signs with its own hash only.
        for (hash, mech) in [
            (HmacHash::Sha1, CKM_SHA_1_HMAC),
            (HmacHash::Sha224, CKM_SHA224_HMAC),
            (HmacHash::Sha256, CKM_SHA256_HMAC),
            (HmacHash::Sha384, CKM_SHA384_HMAC),
            (HmacHash::Sha512, CKM_SHA512_HMAC),
        ] {
            assert_eq!(mechanisms_of(KeyType::Hmac(hash, 40)), [mech]);
            assert_eq!(crate::mechanisms::hmac::hmac_mechanism(hash), mech);
        }
    }

    #[test]
    fn der_encodings_match_the_standard_bytes() {
        assert_eq!(OID_SECP256K1.to_der().unwrap(), DER_OID_SECP256K1);
        assert_eq!(OID_P256.to_der().unwrap(), DER_OID_P256);
        assert_eq!(OID_P384.to_der().unwrap(), DER_OID_P384);
        assert_eq!(OID_P521.to_der().unwrap(), DER_OID_P521);
        let point: Vec<u8> = std::iter::once(4).chain(1..=64).collect();
        let mut want = vec![0x04, 65];
        want.extend_from_slice(&point);
        assert_eq!(ec_point_der(&point), want);
        for (kt, oid) in [
            (KeyType::Secp256k1, DER_OID_SECP256K1),
            (KeyType::P256, DER_OID_P256),
        ] {
            // SEQUENCE { SEQUENCE { id-ecPublicKey, curve }, BIT STRING 0 || point }
            let alg: Vec<u8> = [
                &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01][..],
                oid,
            ]
            .concat();
            let mut body = vec![0x30, alg.len() as u8];
            body.extend_from_slice(&alg);
            body.extend_from_slice(&[0x03, 66, 0x00]);
            body.extend_from_slice(&point);
            let mut want = vec![0x30, body.len() as u8];
            want.extend_from_slice(&body);
            assert_eq!(spki(kt, &point).unwrap(), want, "{kt}");
            assert_eq!(curve_from_params(oid), Some(kt));
        }
        assert_eq!(spki(KeyType::Aes256, &point), None);
        for kt in [KeyType::P384, KeyType::P521] {
            assert_eq!(curve_from_params(ec_params(kt).unwrap()), Some(kt));
        }
    }

    #[test]
    fn ed25519_encodings_follow_rfc8410_and_pkcs11_3() {
        assert_eq!(OID_ED25519.to_der().unwrap(), DER_OID_ED25519);
        let key: Vec<u8> = (1..=32).collect();
        // SEQUENCE { SEQUENCE { id-Ed25519 }, BIT STRING 0 || key }
        let mut want = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        want.extend_from_slice(&key);
        assert_eq!(spki(KeyType::Ed25519, &key).unwrap(), want);
        let mut point = vec![0x04, 32];
        point.extend_from_slice(&key);
        assert_eq!(ec_point_der(&key), point);
        // The OID, the curve name, and OpenSC's older OID all name it.
        let name = der::asn1::PrintableStringRef::new("edwards25519")
            .unwrap()
            .to_der()
            .unwrap();
        assert_eq!(name, DER_NAME_ED25519);
        let opensc = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11591.15.1");
        assert_eq!(opensc.to_der().unwrap(), DER_OID_ED25519_OPENSC);
        for params in [DER_OID_ED25519, DER_NAME_ED25519, DER_OID_ED25519_OPENSC] {
            assert_eq!(curve_from_params(params), Some(KeyType::Ed25519));
        }
        assert_eq!(ec_params(KeyType::Ed25519), Some(DER_OID_ED25519));
        assert_eq!(
            pair_mechanism(KeyType::Ed25519),
            CKM_EC_EDWARDS_KEY_PAIR_GEN
        );
    }
}
