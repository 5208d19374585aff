//! Session keys (`CKA_TOKEN=false`): made, found, used and dropped with their session.
//!
//! AES and generic secret keys from
//! `C_GenerateKey` (random from the backing HSM's RNG) or `C_CreateObject`
//! (a given value), and EC key pairs from `C_GenerateKeyPair`. Their key
//! material lives only in the locked arena; they are not assets (no counter,
//! no derivation) and die with the session that made them. Every use is
//! audited like an asset's, naming the key by its label.

#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::secure::SecretBytes;

use super::template::pair_fits;
use super::*;

/// Session object handles carry this bit, so they never meet the handles
/// of derived objects (which count up from 1).
pub(super) const SESSION_BIT: CK_OBJECT_HANDLE = 1 << 31;

/// The longest generic secret accepted, in bytes.
const MAX_SECRET: usize = 512;

/// What kind of key a session object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Aes,
    Generic,
    /// An EC key of this curve.
    Ec(KeyType),
}

/// One session object: a secret key, or one half of an EC key pair.
pub(super) struct SessionObject {
    pub owner: CK_SESSION_HANDLE,
    pub class: Class,
    pub kind: Kind,
    /// The secret value, or the EC private scalar; `None` for a public key.
    pub key: Option<Arc<SecretBytes>>,
    /// The uncompressed EC point (both halves of a pair).
    pub point: Option<Vec<u8>>,
    pub label: Vec<u8>,
    pub id: Vec<u8>,
    pub private: bool,
    /// `CKA_SENSITIVE`: whatever it says, the value stays in locked memory;
    /// it is only readable (`CKA_VALUE`) when false and extractable.
    pub sensitive: bool,
    pub extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`, `CKA_NEVER_EXTRACTABLE`: true only for a key
    /// made here (`CKA_LOCAL`) that was so from the start.
    pub always_sensitive: bool,
    pub never_extractable: bool,
    /// `CKA_MODIFIABLE`, `CKA_COPYABLE`, `CKA_DESTROYABLE` (HD children,
    /// derived keys, are neither modifiable nor copyable).
    pub modifiable: bool,
    pub copyable: bool,
    pub destroyable: bool,
    /// `CKA_START_DATE`, `CKA_END_DATE`, `CKA_SUBJECT` as given (empty by
    /// default); informational.
    pub dates: (Vec<u8>, Vec<u8>),
    pub subject: Vec<u8>,
    pub encrypt: bool,
    pub decrypt: bool,
    pub sign: bool,
    pub verify: bool,
    pub wrap: bool,
    pub unwrap: bool,
    /// `CKA_DERIVE`: an EC private key that may do ECDH (HD children say
    /// their own).
    pub derive: bool,
    /// Made by the token (`C_GenerateKey*`), not given (`C_CreateObject`).
    pub local: bool,
    /// `CKA_CHECK_VALUE` of a secret key.
    pub check: Option<[u8; 3]>,
    /// The AES-GCM IVs this key has encrypted under: a repeat is refused
    /// (the store's `gcm_ivs` rule, in memory); dropped with the key.
    pub ivs: UsedIvs,
    /// An HD child (`C_DeriveKey` with `CKM_P11DERIVE_HD_CHILD`): the asset
    /// version whose tree it belongs to and its place there; its uses obey
    /// that asset like the asset's own key.
    pub hd: Option<hd::HdChild>,
    /// Users mode: who made it (set by `insert`); a private one is that
    /// user's only.
    pub maker: Option<String>,
}

/// The GCM IVs a session key has used.
pub(super) type UsedIvs = Arc<Mutex<std::collections::HashSet<Vec<u8>>>>;

/// The session objects by handle: keys here, data objects and
/// certificates in `plain` (see `session_data.rs`); one handle counter.
#[derive(Default)]
pub(super) struct SessionObjects {
    table: RwLock<HashMap<CK_OBJECT_HANDLE, Arc<SessionObject>>>,
    pub plain: RwLock<HashMap<CK_OBJECT_HANDLE, Arc<session_data::SessionPlain>>>,
    next: AtomicU64,
}

impl SessionObjects {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<CK_OBJECT_HANDLE, Arc<SessionObject>>> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write(
        &self,
    ) -> RwLockWriteGuard<'_, HashMap<CK_OBJECT_HANDLE, Arc<SessionObject>>> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A new handle (session object handles count up from 1 too).
    pub(super) fn next_handle(&self) -> CK_OBJECT_HANDLE {
        SESSION_BIT | (1 + self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// A key an operation holds: a derived asset key (shared with the cache)
/// or a session key.
#[derive(Clone)]
pub(super) enum KeyRef {
    Derived(Arc<SecretBytes>),
    Session(Arc<SecretBytes>),
}

impl KeyRef {
    pub fn bytes(&self) -> &[u8] {
        match self {
            KeyRef::Derived(k) => &k[..],
            KeyRef::Session(k) => k,
        }
    }
}

impl SessionObject {
    /// For audit records and messages: the key's label, never its value.
    pub fn name(&self) -> String {
        match &self.hd {
            Some(c) => format!("HD child {:?}", c.label()),
            None => format!("session key {:?}", String::from_utf8_lossy(&self.label)),
        }
    }

    /// The curve of an EC key (HMAC keys answer their scheme's type; it is
    /// not used for them).
    pub fn curve(&self) -> KeyType {
        match self.kind {
            Kind::Ec(kt) => kt,
            Kind::Aes => KeyType::Aes256,
            Kind::Generic => KeyType::HmacSha256,
        }
    }

    /// The key material, for an operation to hold.
    pub fn key_ref(&self) -> Result<KeyRef> {
        self.key
            .clone()
            .map(KeyRef::Session)
            .ok_or(Error::rv(CKR_KEY_TYPE_INCONSISTENT))
    }

    pub fn mechanisms(&self) -> &'static [CK_MECHANISM_TYPE] {
        match self.kind {
            // Only HD children derive (a random session pair has no chain code).
            Kind::Ec(kt) if self.hd.is_some() => objects::mechanisms_of(kt),
            kind => kind_mechanisms(kind),
        }
    }

    /// Whether `CKA_VALUE` may be read: neither sensitive nor unextractable
    /// (an HD child, a derived key, never).
    pub fn readable(&self) -> bool {
        !self.sensitive && self.extractable && self.hd.is_none() && self.key.is_some()
    }

    /// The value of attribute `ty`; `None` when the object has no such one.
    pub fn attribute(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<Value> {
        if ty == CKA_VALUE && self.readable() {
            return self.key.clone().map(Value::Secret);
        }
        // Key material, as the attribute table says: not revealed.
        if objects::is_sensitive(self.class, ty) {
            return Some(Value::Sensitive);
        }
        if let Some(child) = &self.hd {
            if let Some(v) = child.attribute(self.class, ty) {
                return Some(v);
            }
        }
        let b = |v: bool| Some(Value::Bool(v));
        let secret = self.class == Class::Secret;
        let private = self.class == Class::Private;
        let public = self.class == Class::Public;
        let ec = matches!(self.kind, Kind::Ec(_));
        match ty {
            CKA_CLASS => Some(Value::Ulong(match self.class {
                Class::Private => CKO_PRIVATE_KEY,
                Class::Public => CKO_PUBLIC_KEY,
                Class::Secret => CKO_SECRET_KEY,
            })),
            CKA_TOKEN => b(false),
            CKA_DERIVE => b(self.derive),
            CKA_MODIFIABLE => b(self.modifiable),
            CKA_COPYABLE => b(self.copyable),
            CKA_DESTROYABLE => b(self.destroyable),
            CKA_PRIVATE => b(self.private),
            CKA_LABEL => Some(Value::Bytes(self.label.clone())),
            CKA_ID => Some(Value::Bytes(self.id.clone())),
            CKA_START_DATE => Some(Value::Bytes(self.dates.0.clone())),
            CKA_END_DATE => Some(Value::Bytes(self.dates.1.clone())),
            CKA_KEY_TYPE => Some(Value::Ulong(match self.kind {
                Kind::Aes => CKK_AES,
                Kind::Generic => CKK_GENERIC_SECRET,
                Kind::Ec(KeyType::Ed25519) => CKK_EC_EDWARDS,
                Kind::Ec(_) => CKK_EC,
            })),
            CKA_LOCAL => b(self.local),
            CKA_KEY_GEN_MECHANISM => Some(Value::Ulong(match (self.local, self.kind) {
                (false, _) => CK_UNAVAILABLE_INFORMATION,
                (true, Kind::Aes) => CKM_AES_KEY_GEN,
                (true, Kind::Generic) => CKM_GENERIC_SECRET_KEY_GEN,
                (true, Kind::Ec(kt)) => objects::pair_mechanism(kt),
            })),
            CKA_ALLOWED_MECHANISMS => {
                let mut v = Vec::new();
                for m in self.mechanisms() {
                    v.extend_from_slice(&m.to_ne_bytes());
                }
                Some(Value::Bytes(v))
            }
            CKA_SENSITIVE if !public => b(self.sensitive),
            CKA_ALWAYS_SENSITIVE if !public => b(self.always_sensitive),
            CKA_EXTRACTABLE if !public => b(self.extractable),
            CKA_NEVER_EXTRACTABLE if !public => b(self.never_extractable),
            CKA_VALUE_LEN if secret => Some(Value::Ulong(
                self.key.as_ref().map_or(0, |k| k.len()) as CK_ULONG
            )),
            CKA_CHECK_VALUE if secret => Some(Value::Bytes(self.check?.to_vec())),
            CKA_ENCRYPT if !private => b(self.encrypt),
            CKA_DECRYPT if !public => b(self.decrypt),
            CKA_SIGN if !public => b(self.sign),
            CKA_VERIFY if !private => b(self.verify),
            CKA_WRAP if !private => b(self.wrap),
            CKA_UNWRAP if !public => b(self.unwrap),
            CKA_TRUSTED if !private => b(false),
            CKA_WRAP_WITH_TRUSTED if !public => b(false),
            CKA_SIGN_RECOVER | CKA_ALWAYS_AUTHENTICATE if private => b(false),
            CKA_VERIFY_RECOVER if public => b(false),
            CKA_SUBJECT if ec => Some(Value::Bytes(self.subject.clone())),
            CKA_EC_PARAMS => match self.kind {
                Kind::Ec(kt) => objects::ec_params(kt).map(|p| Value::Bytes(p.to_vec())),
                _ => None,
            },
            CKA_EC_POINT if public => {
                Some(Value::Bytes(objects::ec_point_der(self.point.as_deref()?)))
            }
            CKA_PUBLIC_KEY_INFO if ec => match self.kind {
                Kind::Ec(kt) => objects::spki(kt, self.point.as_deref()?).map(Value::Bytes),
                _ => None,
            },
            _ => None,
        }
    }

    /// A public (`CKA_PRIVATE` false) session key that is no HD child: as
    /// PKCS#11 says of public objects, a session may use it without a
    /// login (its uses are audited all the same, as records the next login
    /// seals into the chain).
    pub fn is_public_session_key(&self) -> bool {
        !self.private && self.hd.is_none()
    }

    pub fn matches(&self, template: &[TemplateAttr]) -> bool {
        objects::matches(template, |ty| self.attribute(ty))
    }

    /// The same object, for `C_SetAttributeValue` to change and put in its
    /// place (the key material and the GCM IVs it used are shared); `None`
    /// for an HD child, which is neither modifiable nor copyable.
    pub fn duplicate(&self) -> Option<SessionObject> {
        if self.hd.is_some() {
            return None;
        }
        Some(SessionObject {
            owner: self.owner,
            class: self.class,
            kind: self.kind,
            key: self.key.clone(),
            point: self.point.clone(),
            label: self.label.clone(),
            id: self.id.clone(),
            private: self.private,
            sensitive: self.sensitive,
            extractable: self.extractable,
            always_sensitive: self.always_sensitive,
            never_extractable: self.never_extractable,
            modifiable: self.modifiable,
            copyable: self.copyable,
            destroyable: self.destroyable,
            dates: self.dates.clone(),
            subject: self.subject.clone(),
            encrypt: self.encrypt,
            decrypt: self.decrypt,
            sign: self.sign,
            verify: self.verify,
            wrap: self.wrap,
            unwrap: self.unwrap,
            derive: self.derive,
            local: self.local,
            check: self.check,
            ivs: self.ivs.clone(),
            hd: None,
            maker: self.maker.clone(),
        })
    }
}

/// What a session key's template asks for, beyond its kind.
pub(super) struct Wish {
    label: Vec<u8>,
    id: Vec<u8>,
    pub private: bool,
    sensitive: bool,
    extractable: bool,
    modifiable: bool,
    copyable: bool,
    destroyable: bool,
    dates: (Vec<u8>, Vec<u8>),
    subject: Vec<u8>,
    encrypt: bool,
    decrypt: bool,
    sign: bool,
    verify: bool,
    wrap: bool,
    unwrap: bool,
    derive: bool,
    pub value_len: Option<usize>,
}

fn flag(t: &[TemplateAttr], ty: CK_ATTRIBUTE_TYPE, default: bool) -> bool {
    find(t, ty).map_or(default, |v| v.first().is_some_and(|&b| b != 0))
}

impl Wish {
    /// The session object this wish describes, of `class` and `kind`, with
    /// its key material (locked) and EC point. `local`: made here
    /// (`C_GenerateKey*`), so `CKA_ALWAYS_SENSITIVE` and
    /// `CKA_NEVER_EXTRACTABLE` can be true; a given or unwrapped value has
    /// been outside the token.
    pub(super) fn object(
        self,
        owner: CK_SESSION_HANDLE,
        (class, kind): (Class, Kind),
        key: Option<Arc<SecretBytes>>,
        point: Option<Vec<u8>>,
        local: bool,
    ) -> SessionObject {
        SessionObject {
            owner,
            class,
            kind,
            key,
            point,
            label: self.label,
            id: self.id,
            private: self.private,
            sensitive: self.sensitive,
            extractable: self.extractable,
            always_sensitive: local && self.sensitive,
            never_extractable: local && !self.extractable,
            modifiable: self.modifiable,
            copyable: self.copyable,
            destroyable: self.destroyable,
            dates: self.dates,
            subject: self.subject,
            encrypt: self.encrypt,
            decrypt: self.decrypt,
            sign: self.sign,
            verify: self.verify,
            wrap: self.wrap,
            unwrap: self.unwrap,
            derive: self.derive,
            local,
            check: None,
            ivs: UsedIvs::default(),
            hd: None,
            maker: None,
        }
    }
}

/// The key types a session key of `kind` may name in `CKA_KEY_TYPE`.
pub(super) fn key_type_fits(kind: Kind, given: Option<CK_ULONG>) -> bool {
    match kind {
        Kind::Aes => given == Some(CKK_AES),
        Kind::Generic => matches!(
            given,
            Some(CKK_GENERIC_SECRET | CKK_SHA256_HMAC | CKK_SHA384_HMAC | CKK_SHA512_HMAC)
        ),
        // PKCS#11 3.0 names Ed25519 keys CKK_EC_EDWARDS; CKK_EC is accepted
        // as before.
        Kind::Ec(KeyType::Ed25519) => matches!(given, Some(CKK_EC_EDWARDS | CKK_EC)),
        Kind::Ec(_) => given == Some(CKK_EC),
    }
}

/// Reads a session key's template: `class` and `kind` are what the call
/// makes. Refuses what cannot be honoured: a token object (derived keys are
/// assets: `CKA_TOKEN=true` through `C_GenerateKey*` only), another class
/// or key type, unknown attributes. `CKA_SENSITIVE` (default true) and
/// `CKA_EXTRACTABLE` (default false) are honoured: the key stays in locked
/// memory either way, and its value is readable only when it is neither.
pub(super) fn wish(t: &[TemplateAttr], class: Class, kind: Kind, what: &str) -> Result<Wish> {
    let inconsistent = |why: String| {
        Err(Error::with(
            CKR_TEMPLATE_INCONSISTENT,
            format!("{what}: {why}"),
        ))
    };
    let secret = class == Class::Secret;
    for (ty, value) in t {
        let is_true = value.first().is_some_and(|&b| b != 0);
        match *ty {
            CKA_TOKEN if is_true => {
                return inconsistent("CKA_TOKEN=true makes a derived asset, which takes no supplied value; use C_GenerateKey or C_GenerateKeyPair".into())
            }
            CKA_CLASS => {
                let want = match class {
                    Class::Secret => CKO_SECRET_KEY,
                    Class::Private => CKO_PRIVATE_KEY,
                    Class::Public => CKO_PUBLIC_KEY,
                };
                if ulong(value) != Some(want) {
                    return inconsistent("CKA_CLASS does not match the key made".into());
                }
            }
            CKA_KEY_TYPE => {
                if !key_type_fits(kind, ulong(value)) {
                    return inconsistent("CKA_KEY_TYPE does not match the mechanism".into());
                }
            }
            // Restrictions a session key cannot enforce are refused, not
            // dropped: the caller would rely on them.
            CKA_WRAP_WITH_TRUSTED if is_true => {
                return inconsistent("CKA_WRAP_WITH_TRUSTED=true cannot be enforced (p11derive \
                    has no trusted wrapping keys); leave it out or false, and CKA_EXTRACTABLE=false \
                    keeps the key from being wrapped at all".into())
            }
            CKA_TOKEN | CKA_SENSITIVE | CKA_LABEL | CKA_ID | CKA_PRIVATE | CKA_EXTRACTABLE
            | CKA_ENCRYPT | CKA_DECRYPT | CKA_SIGN | CKA_VERIFY | CKA_WRAP | CKA_UNWRAP
            | CKA_DERIVE | CKA_MODIFIABLE | CKA_COPYABLE | CKA_DESTROYABLE | CKA_START_DATE
            | CKA_END_DATE | CKA_SUBJECT | CKA_SIGN_RECOVER | CKA_VERIFY_RECOVER
            | CKA_ALLOWED_MECHANISMS | CKA_TRUSTED | CKA_WRAP_WITH_TRUSTED | CKA_EC_PARAMS => {}
            CKA_VALUE_LEN if secret => {}
            // Key material (secret value, EC private value), or an imported
            // public point: the caller reads them.
            CKA_VALUE if class != Class::Public => {}
            CKA_EC_POINT if class == Class::Public => {}
            ty => {
                return Err(Error::with(
                    CKR_ATTRIBUTE_TYPE_INVALID,
                    format!("{what}: attribute {} does not apply here", attr_name(ty)),
                ))
            }
        }
    }
    let uses_default = |ty| match (kind, ty) {
        (Kind::Aes, CKA_ENCRYPT | CKA_DECRYPT | CKA_WRAP | CKA_UNWRAP) => true,
        (Kind::Generic, CKA_SIGN | CKA_VERIFY) => true,
        (Kind::Ec(_), CKA_SIGN) => class == Class::Private,
        (Kind::Ec(_), CKA_VERIFY) => class == Class::Public,
        _ => false,
    };
    let w = Wish {
        label: find(t, CKA_LABEL).unwrap_or_default().to_vec(),
        id: find(t, CKA_ID).unwrap_or_default().to_vec(),
        private: flag(t, CKA_PRIVATE, class != Class::Public),
        sensitive: class != Class::Public && flag(t, CKA_SENSITIVE, true),
        extractable: flag(t, CKA_EXTRACTABLE, false),
        modifiable: flag(t, CKA_MODIFIABLE, true),
        copyable: flag(t, CKA_COPYABLE, true),
        destroyable: flag(t, CKA_DESTROYABLE, true),
        dates: (
            find(t, CKA_START_DATE).unwrap_or_default().to_vec(),
            find(t, CKA_END_DATE).unwrap_or_default().to_vec(),
        ),
        subject: find(t, CKA_SUBJECT).unwrap_or_default().to_vec(),
        encrypt: flag(t, CKA_ENCRYPT, uses_default(CKA_ENCRYPT)),
        decrypt: flag(t, CKA_DECRYPT, uses_default(CKA_DECRYPT)),
        sign: flag(t, CKA_SIGN, uses_default(CKA_SIGN)),
        verify: flag(t, CKA_VERIFY, uses_default(CKA_VERIFY)),
        wrap: flag(t, CKA_WRAP, uses_default(CKA_WRAP)),
        unwrap: flag(t, CKA_UNWRAP, uses_default(CKA_UNWRAP)),
        derive: flag(t, CKA_DERIVE, false),
        value_len: find(t, CKA_VALUE_LEN).and_then(ulong).map(|n| n as usize),
    };
    let can = |ty| can_use(class, kind, ty);
    for (ty, on) in [
        (CKA_ENCRYPT, w.encrypt),
        (CKA_DECRYPT, w.decrypt),
        (CKA_SIGN, w.sign),
        (CKA_VERIFY, w.verify),
        (CKA_WRAP, w.wrap),
        (CKA_UNWRAP, w.unwrap),
        (CKA_DERIVE, w.derive),
    ] {
        if on && !can(ty) {
            // A use this kind of key never has (pkcs11-tool asks encrypt of
            // generic secrets): ignored, and the object says false.
            log::info(&format!(
                "{what}: {} ignored; this kind of key cannot do that",
                attr_name(ty)
            ));
        }
    }
    let mut w = w;
    w.encrypt &= can(CKA_ENCRYPT);
    w.decrypt &= can(CKA_DECRYPT);
    w.sign &= can(CKA_SIGN);
    w.verify &= can(CKA_VERIFY);
    w.wrap &= can(CKA_WRAP);
    w.unwrap &= can(CKA_UNWRAP);
    w.derive &= can(CKA_DERIVE);
    // A narrower CKA_ALLOWED_MECHANISMS (every one given is looked at)
    // cannot be enforced either.
    let narrow = t
        .iter()
        .any(|(ty, v)| *ty == CKA_ALLOWED_MECHANISMS && narrower(kind, w.derive, v));
    if narrow {
        return inconsistent(format!(
            "CKA_ALLOWED_MECHANISMS narrower than this kind of key's mechanisms cannot be \
             enforced; leave it out (the key allows {} mechanisms)",
            kind_mechanisms(kind).len() + if w.derive { ECDH.len() } else { 0 }
        ));
    }
    Ok(w)
}

/// The mechanisms a private EC key made with `CKA_DERIVE=true` adds.
const ECDH: [CK_MECHANISM_TYPE; 2] = [CKM_ECDH1_DERIVE, CKM_ECDH1_COFACTOR_DERIVE];

/// The mechanisms a session key of `kind` allows (`CKA_ALLOWED_MECHANISMS`).
fn kind_mechanisms(kind: Kind) -> &'static [CK_MECHANISM_TYPE] {
    match kind {
        Kind::Aes => &objects::AES_MECHANISMS,
        Kind::Generic => &objects::HMAC_MECHANISMS,
        Kind::Ec(kt) => objects::signing_mechanisms_of(kt),
    }
}

/// Whether a `CKA_ALLOWED_MECHANISMS` value leaves out a mechanism a key of
/// `kind` (that `derive`s: ECDH) allows, or is no array of mechanism types.
fn narrower(kind: Kind, derive: bool, value: &[u8]) -> bool {
    let n = size_of::<CK_MECHANISM_TYPE>();
    if !value.len().is_multiple_of(n) {
        return true;
    }
    let given: Vec<CK_MECHANISM_TYPE> = value
        .chunks_exact(n)
        .filter_map(|c| c.try_into().ok().map(CK_MECHANISM_TYPE::from_ne_bytes))
        .collect();
    let ecdh: &[CK_MECHANISM_TYPE] = if derive { &ECDH } else { &[] };
    kind_mechanisms(kind)
        .iter()
        .chain(ecdh)
        .any(|m| !given.contains(m))
}

/// Whether a key of `class` and `kind` can have the use `ty` (`CKA_SIGN`…).
pub(super) fn can_use(class: Class, kind: Kind, ty: CK_ATTRIBUTE_TYPE) -> bool {
    match kind {
        // AES keys sign and verify with AES-CMAC.
        Kind::Aes => matches!(
            ty,
            CKA_ENCRYPT | CKA_DECRYPT | CKA_WRAP | CKA_UNWRAP | CKA_SIGN | CKA_VERIFY
        ),
        Kind::Generic => matches!(ty, CKA_SIGN | CKA_VERIFY),
        // A private EC key also derives (ECDH) on the curves ECDH runs on.
        Kind::Ec(kt) if class == Class::Private => {
            ty == CKA_SIGN || (ty == CKA_DERIVE && mechanisms::ecdh::Curve::of(kt).is_some())
        }
        Kind::Ec(_) => ty == CKA_VERIFY,
    }
}

/// The lengths a session secret key of `kind` may have, in bytes: the one
/// place they are decided (key types added later extend this match).
pub(super) fn len_fits(kind: Kind, len: usize) -> bool {
    match kind {
        Kind::Aes => matches!(len, 16 | 24 | 32),
        _ => (1..=MAX_SECRET).contains(&len),
    }
}

/// A valid AES key length, or a generic secret of 1 to MAX_SECRET bytes.
pub(super) fn check_len(kind: Kind, len: usize, what: &str) -> Result<()> {
    if len_fits(kind, len) {
        return Ok(());
    }
    Err(Error::with(
        CKR_ATTRIBUTE_VALUE_INVALID,
        format!(
            "{what}: a key of {len} bytes; {}",
            if kind == Kind::Aes {
                "AES keys are 16, 24 or 32 bytes".to_string()
            } else {
                format!("generic secrets are 1 to {MAX_SECRET} bytes")
            }
        ),
    ))
}

impl Provider {
    /// Checks a session key for an operation: the mechanism fits its type
    /// (`CKR_KEY_TYPE_INCONSISTENT`), it is of the class the operation
    /// needs and its attribute allows the use (`CKR_KEY_FUNCTION_NOT_PERMITTED`).
    pub(super) fn session_key_use(
        &self,
        obj: &SessionObject,
        mech: CK_MECHANISM_TYPE,
        class: Class,
        allowed: bool,
        what: &str,
    ) -> Result<()> {
        if !obj.mechanisms().contains(&mech) {
            return Err(Error::with(
                CKR_KEY_TYPE_INCONSISTENT,
                format!(
                    "{}: mechanism {} does not apply to it",
                    obj.name(),
                    crate::error::mech_name(mech)
                ),
            ));
        }
        if obj.class != class || !allowed {
            return Err(Error::with(
                CKR_KEY_FUNCTION_NOT_PERMITTED,
                format!("{}: its attributes do not allow it to {what}", obj.name()),
            ));
        }
        Ok(())
    }

    /// The session object behind a handle, if visible now: private ones
    /// need a user login.
    pub(super) fn session_object(&self, h: CK_OBJECT_HANDLE) -> Option<Arc<SessionObject>> {
        if h & SESSION_BIT == 0 {
            return None;
        }
        let obj = self.session_objects.read().get(&h).cloned()?;
        (!obj.private || self.login_state() == Login::User).then_some(())?;
        self.sees_child(&obj).then_some(obj)
    }

    /// Users mode: an HD child's private half exists only for users who may
    /// see its asset's private objects (as the asset's own).
    fn sees_child(&self, o: &SessionObject) -> bool {
        let child = match &o.hd {
            Some(c) if o.private => self.sees_private(&c.asset_id),
            _ => true,
        };
        child && self.sees_made(o.private, &o.maker)
    }

    /// Users mode: a private session object is its maker's only (another
    /// user logged in later in the same process does not see it).
    pub(super) fn sees_made(&self, private: bool, maker: &Option<String>) -> bool {
        !self.users_mode() || !private || maker.is_none() || *maker == self.actor()
    }

    /// The visible session objects matching a template.
    pub(super) fn find_session_objects(
        &self,
        template: &[TemplateAttr],
    ) -> Vec<(CK_OBJECT_HANDLE, bool)> {
        let logged_in = self.login_state() == Login::User;
        let mut out: Vec<(CK_OBJECT_HANDLE, bool)> = self
            .session_objects
            .read()
            .iter()
            .filter(|(_, o)| (logged_in || !o.private) && self.sees_child(o) && o.matches(template))
            .map(|(h, o)| (*h, o.private))
            .collect();
        out.extend(self.find_session_plain(template));
        out.sort_unstable();
        out
    }

    /// Drops (wipes) the private HD children whose asset version `gone`
    /// says may no longer hold a key (a logout: all of them).
    pub(super) fn drop_private_children(&self, gone: impl Fn(&hd::HdChild) -> bool) {
        self.session_objects
            .write()
            .retain(|_, o| !(o.class == Class::Private && o.hd.as_ref().is_some_and(&gone)));
    }

    /// Drops (wipes) the session objects of one session, or of all.
    pub(super) fn drop_session_objects(&self, owner: Option<CK_SESSION_HANDLE>) {
        self.session_objects
            .write()
            .retain(|_, o| owner.is_some_and(|s| s != o.owner));
        self.session_objects
            .plain
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, o| owner.is_some_and(|s| s != o.owner));
    }

    pub(super) fn destroy_session_object(
        &self,
        h: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.session(h)?;
        let destroyable = match self.session_object(object) {
            Some(o) => (o.destroyable, o.name()),
            None => {
                let o = self
                    .session_plain(object)
                    .ok_or(Error::rv(CKR_OBJECT_HANDLE_INVALID))?;
                (o.destroyable, o.name())
            }
        };
        if let (false, name) = destroyable {
            return Err(Error::with(
                CKR_ACTION_PROHIBITED,
                format!(
                    "C_DestroyObject: {name} was made with CKA_DESTROYABLE false; it goes when \
                     its session closes"
                ),
            ));
        }
        self.session_objects.write().remove(&object);
        self.session_objects
            .plain
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&object);
        Ok(())
    }

    pub(super) fn insert(&self, obj: SessionObject) -> CK_OBJECT_HANDLE {
        let mut obj = obj;
        obj.maker = self.actor();
        let h = self.session_objects.next_handle();
        self.session_objects.write().insert(h, Arc::new(obj));
        h
    }

    /// Private and secret session keys need a user login to be made.
    pub(super) fn may_make(&self, h: CK_SESSION_HANDLE, private: bool) -> Result<()> {
        self.session(h)?;
        if private && self.login_state() != Login::User {
            return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
        }
        Ok(())
    }

    pub(super) fn secret_object(
        h: CK_SESSION_HANDLE,
        kind: Kind,
        key: SecretBytes,
        w: Wish,
        local: bool,
    ) -> Result<SessionObject> {
        let check = match kind {
            Kind::Aes => Some(checkvalue::aes_check_value(&key)?),
            _ => Some(checkvalue::generic_check_value(&key)),
        };
        let mut obj = w.object(h, (Class::Secret, kind), Some(Arc::new(key)), None, local);
        obj.check = check;
        Ok(obj)
    }

    /// `C_GenerateKey` of a session key: random bytes from the backing HSM,
    /// written straight into the locked arena.
    pub(super) fn generate_session_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        template: &[TemplateAttr],
    ) -> Result<CK_OBJECT_HANDLE> {
        self.permit(
            h,
            crate::access::Action::SessionObjects,
            None,
            Some(mech.ty),
        )?;
        let kind = match mech.ty {
            CKM_AES_KEY_GEN => Kind::Aes,
            CKM_GENERIC_SECRET_KEY_GEN => Kind::Generic,
            _ => return Err(Error::rv(CKR_MECHANISM_INVALID)),
        };
        let what = "session key generation";
        let w = wish(template, Class::Secret, kind, what)?;
        if find(template, CKA_VALUE).is_some() {
            return Err(Error::with(
                CKR_ATTRIBUTE_READ_ONLY,
                format!("{what}: CKA_VALUE is generated; use C_CreateObject to give a value"),
            ));
        }
        let len = w.value_len.ok_or_else(|| {
            Error::with(
                CKR_TEMPLATE_INCOMPLETE,
                format!("{what}: CKA_VALUE_LEN is required"),
            )
        })?;
        check_len(kind, len, what)?;
        self.may_make(h, w.private)?;
        let mut key =
            SecretBytes::with_capacity(len).map_err(|m| Error::with(CKR_HOST_MEMORY, m))?;
        self.backend.random(&mut key.spare()[..len])?;
        key.grow(len);
        let obj = Self::secret_object(h, kind, key, w, true)?;
        Ok(self.insert(obj))
    }

    /// `C_CreateObject` of a session secret key with the given value (read
    /// by the caller straight into locked memory).
    pub fn create_object(
        &self,
        h: CK_SESSION_HANDLE,
        template: &[TemplateAttr],
        value: Option<SecretBytes>,
    ) -> Result<CK_OBJECT_HANDLE> {
        let what = "C_CreateObject";
        match find(template, CKA_CLASS).and_then(ulong) {
            Some(CKO_SECRET_KEY) => {
                self.permit(h, crate::access::Action::SessionObjects, None, None)?;
            }
            Some(class @ (CKO_CERTIFICATE | CKO_DATA)) => {
                return self.create_plain(h, template, class)
            }
            Some(class @ (CKO_PUBLIC_KEY | CKO_PRIVATE_KEY)) => {
                return self.import_ec(h, template, class, value)
            }
            Some(_) => {
                return Err(Error::with(
                    CKR_TEMPLATE_INCONSISTENT,
                    format!(
                        "{what}: only secret keys, EC keys, certificates and data objects can be \
                         created; keys on the token are derived (C_GenerateKey, C_GenerateKeyPair)"
                    ),
                ))
            }
            None => {
                return Err(Error::with(
                    CKR_TEMPLATE_INCOMPLETE,
                    format!("{what}: no CKA_CLASS"),
                ))
            }
        }
        let kind = match find(template, CKA_KEY_TYPE).and_then(ulong) {
            Some(CKK_AES) => Kind::Aes,
            Some(CKK_GENERIC_SECRET | CKK_SHA256_HMAC | CKK_SHA384_HMAC | CKK_SHA512_HMAC) => {
                Kind::Generic
            }
            Some(_) => {
                return Err(Error::with(
                    CKR_ATTRIBUTE_VALUE_INVALID,
                    format!("{what}: CKA_KEY_TYPE must be CKK_AES or CKK_GENERIC_SECRET"),
                ))
            }
            None => {
                return Err(Error::with(
                    CKR_TEMPLATE_INCOMPLETE,
                    format!("{what}: no CKA_KEY_TYPE"),
                ))
            }
        };
        let w = wish(template, Class::Secret, kind, what)?;
        let key = value
            .ok_or_else(|| Error::with(CKR_TEMPLATE_INCOMPLETE, format!("{what}: no CKA_VALUE")))?;
        check_len(kind, key.len(), what)?;
        if w.value_len.is_some_and(|n| n != key.len()) {
            return Err(Error::with(
                CKR_TEMPLATE_INCONSISTENT,
                format!("{what}: CKA_VALUE_LEN differs from the length of CKA_VALUE"),
            ));
        }
        self.may_make(h, w.private)?;
        let obj = Self::secret_object(h, kind, key, w, false)?;
        Ok(self.insert(obj))
    }

    /// `C_GenerateKeyPair` of a session EC key pair: a scalar (drawn again
    /// while out of range) or an Ed25519 seed from the backing HSM's RNG, in
    /// locked memory.
    pub(super) fn generate_session_pair(
        &self,
        h: CK_SESSION_HANDLE,
        mech: CK_MECHANISM_TYPE,
        public: &[TemplateAttr],
        private: &[TemplateAttr],
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        self.permit(h, crate::access::Action::SessionObjects, None, None)?;
        let what = "session key pair generation";
        let params = find(public, CKA_EC_PARAMS)
            .or_else(|| find(private, CKA_EC_PARAMS))
            .ok_or_else(|| {
                Error::with(CKR_TEMPLATE_INCOMPLETE, format!("{what}: no CKA_EC_PARAMS"))
            })?;
        let kt = objects::curve_from_params(params).ok_or_else(|| {
            Error::with(
                CKR_CURVE_NOT_SUPPORTED,
                format!(
                    "{what}: CKA_EC_PARAMS names no supported curve (secp256k1, P-256, P-384, \
                     P-521, Ed25519)"
                ),
            )
        })?;
        pair_fits(mech, kt, "a session key")?;
        for (t, ty) in [(public, CKA_EC_POINT), (private, CKA_VALUE)] {
            if find(t, ty).is_some() {
                return Err(Error::with(
                    CKR_ATTRIBUTE_READ_ONLY,
                    format!(
                        "{what}: {} is generated; to use a given key, create it with \
                         C_CreateObject",
                        attr_name(ty)
                    ),
                ));
            }
        }
        let wp = wish(public, Class::Public, Kind::Ec(kt), what)?;
        let ws = wish(private, Class::Private, Kind::Ec(kt), what)?;
        self.may_make(h, ws.private)?;
        // P-384 and P-521 scalars are 48 and 66 bytes (P-521's top 7 bits
        // clear, as design §6.1 reads one).
        let len = kt.key_len();
        let mut scalar =
            SecretBytes::with_capacity(len).map_err(|m| Error::with(CKR_HOST_MEMORY, m))?;
        let point = loop {
            scalar.truncate(0);
            self.backend.random(&mut scalar.spare()[..len])?;
            scalar.grow(len);
            if kt == KeyType::P521 {
                scalar[0] &= 0x01;
            }
            if let Some(p) = mechanisms::fingerprint(kt, &scalar) {
                break p;
            }
        };
        let key = Arc::new(scalar);
        let kind = Kind::Ec(kt);
        let public = wp.object(h, (Class::Public, kind), None, Some(point.clone()), true);
        let private = ws.object(h, (Class::Private, kind), Some(key), Some(point), true);
        let pub_h = self.insert(public);
        let priv_h = self.insert(private);
        Ok((pub_h, priv_h))
    }
}
