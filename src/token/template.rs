//! Creation templates of token keys (`C_GenerateKeyPair`, `C_GenerateKey` with `CKA_TOKEN=true`), checked against the attribute table, and the asset they register.

#![forbid(unsafe_code)]

use crate::objects::OnCreate;

use super::*;

impl Provider {
    /// `C_GenerateKeyPair` (`CKM_EC_KEY_PAIR_GEN` for secp256k1, P-256, P-384 and P-521,
    /// `CKM_EC_EDWARDS_KEY_PAIR_GEN` for Ed25519) with `CKA_TOKEN=true`:
    /// registers a new asset named by `CKA_LABEL` and returns its alias
    /// (public, private).
    pub fn generate_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        public: &[TemplateAttr],
        private: &[TemplateAttr],
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let session = self.session(h)?;
        if mech.ty != CKM_EC_KEY_PAIR_GEN && mech.ty != CKM_EC_EDWARDS_KEY_PAIR_GEN {
            return Err(Error::rv(CKR_MECHANISM_INVALID));
        }
        if !mech.param.is_empty() {
            return Err(Error::rv(CKR_MECHANISM_PARAM_INVALID));
        }
        if agreed(public, private, CKA_TOKEN, "CKA_TOKEN")? != Some(&[CK_TRUE as u8][..]) {
            return self.generate_session_pair(h, mech.ty, public, private);
        }
        let named = self.with_default_label(&[public, private])?;
        let spec = KeyPairSpec::from_templates(&named[0], &named[1])?;
        pair_fits(mech.ty, spec.key_type, spec.asset.as_str())?;
        let asset = self.register(h, &session, &spec.asset, spec.key_type, spec.object_id)?;
        let key = |class| ObjectKey {
            asset: asset.rowid,
            which: Which::Alias,
            class,
        };
        Ok((
            self.handle_for(key(Class::Public)),
            self.handle_for(key(Class::Private)),
        ))
    }

    /// Token key templates (a pair's two, or one), each given a
    /// `CKA_LABEL` when none of them has one: the new asset's name is then
    /// `key-` and 16 hex digits drawn from the backing HSM's RNG
    /// (`key-3f9c0a12d4e5b678`), which `CKA_LABEL` reads back.
    pub(super) fn with_default_label(
        &self,
        templates: &[&[TemplateAttr]],
    ) -> Result<Vec<Vec<TemplateAttr>>> {
        let mut out: Vec<Vec<TemplateAttr>> = templates.iter().map(|t| t.to_vec()).collect();
        if templates.iter().any(|t| find(t, CKA_LABEL).is_some()) {
            return Ok(out);
        }
        let mut r = [0u8; 8];
        self.backend.random(&mut r)?;
        let name = format!("key-{}", crate::store::hex(&r));
        log::info(&format!(
            "token key generation: no CKA_LABEL given; the new asset is named {name:?}"
        ));
        for t in &mut out {
            t.push((CKA_LABEL, name.clone().into_bytes()));
        }
        Ok(out)
    }

    /// Registers a new asset for `C_GenerateKeyPair` / `C_GenerateKey` once
    /// its template is checked: needs a read-write session and a user login;
    /// audited, anchored and logged.
    pub(super) fn register(
        &self,
        h: CK_SESSION_HANDLE,
        session: &Mutex<Session>,
        id: &AssetId,
        kt: KeyType,
        object_id: Option<Vec<u8>>,
    ) -> Result<Asset> {
        if !lock(session).rw {
            return Err(Error::rv(CKR_SESSION_READ_ONLY));
        }
        if self.login_state() != Login::User {
            return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
        }
        self.permit(
            h,
            crate::access::Action::CreateAsset,
            Some(id.as_str()),
            None,
        )?;
        let asset = self.with_audit(h, |audit| {
            lifecycle::create(&self.backend, &self.store, audit, id, kt, object_id.clone())
                .map_err(|e| e.to_pkcs11())
        })?;
        self.advance_anchor();
        log::info(&format!(
            "asset {:?} created: type {}, CKA_ID {}, version 1",
            asset.id.as_str(),
            asset.key_type,
            crate::store::hex(&asset.object_id)
        ));
        Ok(asset)
    }
}

/// Whether `mech` makes key pairs of curve `kt`: Ed25519 comes from
/// `CKM_EC_EDWARDS_KEY_PAIR_GEN`, the ECDSA curves from `CKM_EC_KEY_PAIR_GEN`.
pub(super) fn pair_fits(mech: CK_MECHANISM_TYPE, kt: KeyType, label: &str) -> Result<()> {
    let want = objects::pair_mechanism(kt);
    if mech == want {
        return Ok(());
    }
    Err(Error::with(
        CKR_TEMPLATE_INCONSISTENT,
        format!(
            "key pair generation for {label:?}: CKA_EC_PARAMS names {kt}, which {} does not \
             make; use {}",
            crate::error::mech_name(mech),
            crate::error::mech_name(want)
        ),
    ))
}

/// What a `C_GenerateKeyPair` template pair asks for.
pub(super) struct KeyPairSpec {
    pub(super) asset: AssetId,
    pub(super) key_type: KeyType,
    pub(super) object_id: Option<Vec<u8>>,
}

pub(super) fn find(t: &[TemplateAttr], ty: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
    t.iter().find(|(a, _)| *a == ty).map(|(_, v)| v.as_slice())
}

/// The value given for `ty` in either template; both must agree.
pub(super) fn agreed<'a>(
    public: &'a [TemplateAttr],
    private: &'a [TemplateAttr],
    ty: CK_ATTRIBUTE_TYPE,
    name: &str,
) -> Result<Option<&'a [u8]>> {
    match (find(public, ty), find(private, ty)) {
        (Some(a), Some(b)) if a != b => Err(Error::with(
            CKR_TEMPLATE_INCONSISTENT,
            format!("key pair generation: the public and private templates give different {name}"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

pub(super) fn ulong(v: &[u8]) -> Option<CK_ULONG> {
    Some(CK_ULONG::from_ne_bytes(v.try_into().ok()?))
}

impl KeyPairSpec {
    pub(super) fn from_templates(
        public: &[TemplateAttr],
        private: &[TemplateAttr],
    ) -> Result<KeyPairSpec> {
        let what = "key pair generation";
        let asset = asset_named(what, agreed(public, private, CKA_LABEL, "CKA_LABEL")?)?;
        let label = asset.as_str();
        let params = agreed(public, private, CKA_EC_PARAMS, "CKA_EC_PARAMS")?.ok_or_else(|| {
            Error::with(
                CKR_TEMPLATE_INCOMPLETE,
                format!("key pair generation for {label:?}: no CKA_EC_PARAMS; name the curve (secp256k1, P-256 or Ed25519)"),
            )
        })?;
        let key_type = objects::curve_from_params(params).ok_or_else(|| {
            Error::with(
                CKR_CURVE_NOT_SUPPORTED,
                format!(
                    "key pair generation for {label:?}: CKA_EC_PARAMS {} is not a supported curve; \
                     use the named curve secp256k1, P-256 (prime256v1), P-384 (secp384r1), \
                     P-521 (secp521r1) or Ed25519 (OID 1.3.101.112, or the name edwards25519)",
                    crate::store::hex(params)
                ),
            )
        })?;
        let object_id = object_id(what, label, agreed(public, private, CKA_ID, "CKA_ID")?)?;
        for (class, template) in [(Class::Public, public), (Class::Private, private)] {
            check_template(class, template, label, key_type)?;
        }
        let asset = asset.clone();
        Ok(KeyPairSpec {
            asset,
            key_type,
            object_id,
        })
    }
}

/// The asset a creation template names by its `CKA_LABEL`.
pub(super) fn asset_named(what: &str, label: Option<&[u8]>) -> Result<AssetId> {
    let label = label.ok_or_else(|| {
        Error::with(
            CKR_TEMPLATE_INCOMPLETE,
            format!(
                "{what}: no CKA_LABEL; the label names the new asset (1 to 64 characters of \
                 A-Z a-z 0-9 . _ -)"
            ),
        )
    })?;
    let label = std::str::from_utf8(label)
        .map_err(|_| Error::with(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_LABEL is not UTF-8"))?;
    AssetId::new(label)
        .map_err(|m| Error::with(CKR_ATTRIBUTE_VALUE_INVALID, format!("CKA_LABEL: {m}")))
}

/// The creator's `CKA_ID`, if given: 1 to 64 bytes.
pub(super) fn object_id(what: &str, label: &str, id: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
    match id {
        Some(id) if id.is_empty() || id.len() > 64 => Err(Error::with(
            CKR_ATTRIBUTE_VALUE_INVALID,
            format!("{what} for {label:?}: CKA_ID must be 1 to 64 bytes"),
        )),
        id => Ok(id.map(<[u8]>::to_vec)),
    }
}

/// Why a template asks what a derived key cannot be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cannot {
    Class,
    KeyType,
    Length,
    /// The value every derived key has for it is this one.
    Fixed(bool),
    /// A use the key has, asked false.
    Use,
    Mechanisms,
}

/// What the attribute table says of one attribute of a creation template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Fine,
    /// Accepted, logged: the object answers for itself.
    Ignored,
    /// A use only keys of another type have: accepted, logged.
    OtherUse,
    /// Computed by p11derive: `CKR_ATTRIBUTE_READ_ONLY`.
    Computed,
    /// Cannot be honoured: `CKR_TEMPLATE_INCONSISTENT`.
    Cannot(Cannot),
    /// Does not apply to the class: `CKR_ATTRIBUTE_TYPE_INVALID`.
    Invalid,
}

/// Whether an attribute that says what the object is agrees with a `kt`
/// key of `class`.
fn identity(class: Class, kt: KeyType, ty: CK_ATTRIBUTE_TYPE, value: &[u8]) -> Verdict {
    let given = ulong(value);
    let (fits, why) = match ty {
        CKA_CLASS => {
            let want = match class {
                Class::Private => CKO_PRIVATE_KEY,
                Class::Public => CKO_PUBLIC_KEY,
                Class::Secret => CKO_SECRET_KEY,
            };
            (given == Some(want), Cannot::Class)
        }
        CKA_KEY_TYPE => {
            let fits = match kt {
                // As it has been since it was written.
                KeyType::HmacSha256 => matches!(given, Some(CKK_GENERIC_SECRET | CKK_SHA256_HMAC)),
                kt => given == Some(objects::ckk_of(kt)),
            };
            (fits, Cannot::KeyType)
        }
        // Derived secret keys have their type's length.
        _ => (given == Some(kt.key_len() as CK_ULONG), Cannot::Length),
    };
    if fits {
        Verdict::Fine
    } else {
        Verdict::Cannot(why)
    }
}

/// Whether keys of types `a` and `b` have the same uses (AES keys of any
/// length; HMAC keys of any type).
fn same_use(a: KeyType, b: KeyType) -> bool {
    a == b || (a.is_aes() && b.is_aes()) || (a.is_mac() && b.is_mac())
}

/// The attribute table's verdict on `ty` = `value` in the template of a
/// derived `kt` key of `class`.
fn verdict(class: Class, kt: KeyType, ty: CK_ATTRIBUTE_TYPE, value: &[u8]) -> Verdict {
    let is_true = value.first().is_some_and(|&b| b != 0);
    let asked = if is_true {
        Verdict::Ignored
    } else {
        Verdict::Fine
    };
    let Some(rule) = objects::on_create(class, ty) else {
        return Verdict::Invalid;
    };
    // EC key pairs derive HD children (an Ed25519 public key does not):
    // asked true, that is honoured, not ignored.
    let derives = kt.is_ec() && !(class == Class::Public && kt == KeyType::Ed25519);
    if ty == CKA_DERIVE && is_true && derives {
        return Verdict::Fine;
    }
    // AES keys sign and verify (AES-CMAC) as HMAC keys do.
    let rule = match rule {
        OnCreate::Use(KeyType::HmacSha256) if kt.is_aes() => OnCreate::Use(kt),
        rule => rule,
    };
    match rule {
        OnCreate::Given => Verdict::Fine,
        OnCreate::Identity => identity(class, kt, ty, value),
        OnCreate::Fixed(v) if is_true != v => Verdict::Cannot(Cannot::Fixed(v)),
        // The value every derived key has: honoured, not ignored.
        OnCreate::Fixed(_) => Verdict::Fine,
        OnCreate::Ignored => asked,
        OnCreate::Use(k) if same_use(k, kt) && !is_true => Verdict::Cannot(Cannot::Use),
        OnCreate::Use(k) if same_use(k, kt) => Verdict::Fine,
        OnCreate::Use(_) if is_true => Verdict::OtherUse,
        OnCreate::Use(_) => Verdict::Fine,
        OnCreate::Mechanisms => {
            let given: Vec<CK_ULONG> = value
                .chunks(size_of::<CK_ULONG>())
                .filter_map(ulong)
                .collect();
            if objects::mechanisms_of(kt).iter().all(|m| given.contains(m)) {
                Verdict::Fine
            } else {
                Verdict::Cannot(Cannot::Mechanisms)
            }
        }
        OnCreate::Vendor if class == Class::Secret => asked,
        OnCreate::Computed | OnCreate::Vendor => Verdict::Computed,
    }
}

/// Checks the other attributes of a key pair template against what a
/// derived key is, as the attribute table ([`objects::OnCreate`]) says.
///
/// Refused: key material or values the token computes (`CKA_VALUE`,
/// `CKA_EC_POINT`, `CKA_LOCAL`…: `CKR_ATTRIBUTE_READ_ONLY`), and requests a
/// derived key cannot honour — weaker ones (extractable, not sensitive, a
/// private key visible without login, no signing) and stricter ones it cannot
/// enforce (`CKA_ALWAYS_AUTHENTICATE`, a narrower `CKA_ALLOWED_MECHANISMS`):
/// `CKR_TEMPLATE_INCONSISTENT`. Capabilities a derived key never has (derive,
/// encrypt, wrap, modify…) are ignored with a log line: clients such as
/// pkcs11-tool ask for them by default, and the new objects' attributes tell
/// the truth about them.
fn check_template(class: Class, template: &[TemplateAttr], label: &str, kt: KeyType) -> Result<()> {
    let which = if class == Class::Private {
        "private"
    } else {
        "public"
    };
    for (ty, value) in template {
        let ty = *ty;
        match verdict(class, kt, ty, value) {
            // A subject is logged whatever it says.
            Verdict::Fine if ty != CKA_SUBJECT => {}
            Verdict::Fine | Verdict::Ignored | Verdict::OtherUse => log::info(&format!(
                "key pair generation for {label:?}: {which} attribute {} ignored; derived {kt} \
                 keys are sign/verify only and not modifiable",
                attr_name(ty)
            )),
            Verdict::Computed => {
                return Err(Error::with(
                    CKR_ATTRIBUTE_READ_ONLY,
                    format!(
                        "key pair generation for {label:?}: the {which} template sets {}, which \
                         p11derive computes (key material is derived, never supplied); remove it",
                        attr_name(ty)
                    ),
                ))
            }
            Verdict::Cannot(_) => {
                return Err(Error::with(
                    CKR_TEMPLATE_INCONSISTENT,
                    format!(
                        "key pair generation for {label:?}: the {which} template sets {} to a \
                         value a derived key cannot have (private keys are private, sensitive, \
                         never extractable, sign with ECDSA and need no per-use login; public \
                         keys verify)",
                        attr_name(ty)
                    ),
                ))
            }
            Verdict::Invalid => {
                return Err(Error::with(
                    CKR_ATTRIBUTE_TYPE_INVALID,
                    format!(
                        "key pair generation for {label:?} ({kt}): attribute {} does not \
                         apply to a {which} EC key",
                        attr_name(ty)
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// What a `C_GenerateKey` template asks for.
pub(super) struct SecretKeySpec {
    pub(super) asset: AssetId,
    pub(super) object_id: Option<Vec<u8>>,
}

impl SecretKeySpec {
    /// Reads a secret key template, checked against the attribute table
    /// as [`check_template`] checks key pairs.
    pub(super) fn from_template(t: &[TemplateAttr], kt: KeyType) -> Result<SecretKeySpec> {
        let what = format!("{kt} key generation");
        let asset = asset_named(&what, find(t, CKA_LABEL))?;
        let label = asset.as_str();
        let object_id = object_id(&what, label, find(t, CKA_ID))?;
        for (ty, value) in t {
            let ty = *ty;
            let why = match verdict(Class::Secret, kt, ty, value) {
                Verdict::Fine => continue,
                Verdict::Ignored => {
                    log::info(&format!(
                        "{what} for {label:?}: attribute {} ignored; derived keys are not \
                         modifiable, wrappable or derivable",
                        attr_name(ty)
                    ));
                    continue;
                }
                // A use this kind of key never has (pkcs11-tool asks
                // encrypt of generic secrets): the object says false.
                Verdict::OtherUse => {
                    log::info(&format!(
                        "{what} for {label:?}: {} ignored; a {kt} key cannot do that",
                        attr_name(ty)
                    ));
                    continue;
                }
                Verdict::Computed => {
                    return Err(Error::with(
                        CKR_ATTRIBUTE_READ_ONLY,
                        format!(
                            "{what} for {label:?}: the template sets {}, which p11derive computes \
                             (key material is derived, never supplied); remove it",
                            attr_name(ty)
                        ),
                    ))
                }
                Verdict::Invalid => {
                    return Err(Error::with(
                        CKR_ATTRIBUTE_TYPE_INVALID,
                        format!(
                            "{what} for {label:?}: attribute {} does not apply to a secret key",
                            attr_name(ty)
                        ),
                    ))
                }
                Verdict::Cannot(why) => why,
            };
            let why = match why {
                Cannot::Class => "to another class",
                Cannot::KeyType => "to another key type",
                Cannot::Length => "to another length than the mechanism's",
                Cannot::Fixed(true) => "to false (pkcs11-tool: add --sensitive --private)",
                Cannot::Fixed(false) => "to true",
                Cannot::Use => "to false",
                Cannot::Mechanisms => "to a list narrower than the key's mechanisms",
            };
            return Err(Error::with(
                CKR_TEMPLATE_INCONSISTENT,
                format!(
                    "{what} for {label:?}: the template sets {} {why} (derived secret keys \
                     are private, sensitive, never extractable, {} bytes, and {})",
                    attr_name(ty),
                    kt.key_len(),
                    if kt.is_aes() {
                        "encrypt/decrypt with AES-GCM"
                    } else {
                        "sign/verify with HMAC"
                    }
                ),
            ));
        }
        Ok(SecretKeySpec {
            asset: asset.clone(),
            object_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulong_attr(ty: CK_ATTRIBUTE_TYPE, v: CK_ULONG) -> TemplateAttr {
        (ty, v.to_ne_bytes().to_vec())
    }

    fn flag(ty: CK_ATTRIBUTE_TYPE, v: bool) -> TemplateAttr {
        (ty, vec![u8::from(v)])
    }

    /// What pkcs11-tool sends for `--keypairgen --key-type EC:secp256k1`.
    fn pair() -> (Vec<TemplateAttr>, Vec<TemplateAttr>) {
        let curve = objects::ec_params(KeyType::Secp256k1).unwrap().to_vec();
        let public = vec![
            (CKA_LABEL, b"hot-1".to_vec()),
            (CKA_EC_PARAMS, curve),
            flag(CKA_TOKEN, true),
            flag(CKA_VERIFY, true),
        ];
        let private = vec![
            (CKA_LABEL, b"hot-1".to_vec()),
            flag(CKA_TOKEN, true),
            flag(CKA_PRIVATE, true),
            flag(CKA_SENSITIVE, true),
            flag(CKA_SIGN, true),
            flag(CKA_DERIVE, true),
        ];
        (public, private)
    }

    fn pair_with(
        public: Option<TemplateAttr>,
        private: Option<TemplateAttr>,
    ) -> Result<KeyPairSpec> {
        let (mut pu, mut pr) = pair();
        pu.extend(public);
        pr.extend(private);
        KeyPairSpec::from_templates(&pu, &pr)
    }

    fn rv(r: Result<impl Sized>) -> CK_RV {
        r.err().map_or(CKR_OK, |e| e.rv)
    }

    #[test]
    fn key_pair_templates_follow_the_attribute_table() {
        let spec = pair_with(None, None).unwrap();
        assert_eq!(
            (spec.asset.as_str(), spec.key_type),
            ("hot-1", KeyType::Secp256k1)
        );
        assert_eq!(spec.object_id, None);
        // Per expected code, attributes added to the private template and to
        // the public one.
        let cases: [(CK_RV, Vec<TemplateAttr>, Vec<TemplateAttr>); 5] = [
            // Key material and computed values.
            (
                CKR_ATTRIBUTE_READ_ONLY,
                vec![(CKA_VALUE, vec![1; 32]), flag(CKA_LOCAL, true)],
                vec![(CKA_EC_POINT, vec![4; 65])],
            ),
            // Weaker or stricter than a derived key.
            (
                CKR_TEMPLATE_INCONSISTENT,
                vec![
                    flag(CKA_SENSITIVE, false),
                    flag(CKA_EXTRACTABLE, true),
                    flag(CKA_PRIVATE, false),
                    flag(CKA_SIGN, false),
                    flag(CKA_ALWAYS_AUTHENTICATE, true),
                    ulong_attr(CKA_CLASS, CKO_SECRET_KEY),
                    (CKA_ALLOWED_MECHANISMS, CKM_ECDSA.to_ne_bytes().to_vec()),
                ],
                vec![ulong_attr(CKA_KEY_TYPE, CKK_AES), flag(CKA_VERIFY, false)],
            ),
            // Foreign to the class.
            (
                CKR_ATTRIBUTE_TYPE_INVALID,
                vec![ulong_attr(CKA_VALUE_LEN, 32)],
                vec![],
            ),
            // Capabilities a derived key never has are ignored; identity
            // that fits is fine.
            (
                CKR_OK,
                vec![
                    flag(CKA_DECRYPT, true),
                    ulong_attr(CKA_KEY_TYPE, CKK_EC),
                    (CKA_ID, vec![7; 16]),
                ],
                vec![flag(CKA_ENCRYPT, true)],
            ),
            // An id outside the rules.
            (CKR_ATTRIBUTE_VALUE_INVALID, vec![(CKA_ID, vec![])], vec![]),
        ];
        for (want, private, public) in cases {
            for attr in private {
                let what = format!("private {attr:?}");
                assert_eq!(rv(pair_with(None, Some(attr))), want, "{what}");
            }
            for attr in public {
                let what = format!("public {attr:?}");
                assert_eq!(rv(pair_with(Some(attr), None)), want, "{what}");
            }
        }
        let all: Vec<u8> = objects::mechanisms_of(KeyType::Secp256k1)
            .iter()
            .flat_map(|m| m.to_ne_bytes())
            .collect();
        pair_with(None, Some((CKA_ALLOWED_MECHANISMS, all))).unwrap();
    }

    #[test]
    fn key_pair_templates_name_a_curve_and_agree() {
        let (mut public, private) = pair();
        public.retain(|(t, _)| *t != CKA_EC_PARAMS);
        let rv_of =
            |pu: &[TemplateAttr], pr: &[TemplateAttr]| rv(KeyPairSpec::from_templates(pu, pr));
        assert_eq!(rv_of(&public, &private), CKR_TEMPLATE_INCOMPLETE);
        // secp224r1 (1.3.132.0.33): not a curve of p11derive.
        public.push((
            CKA_EC_PARAMS,
            vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x21],
        ));
        assert_eq!(rv_of(&public, &private), CKR_CURVE_NOT_SUPPORTED);
        // id-Ed25519 is one (design §6.1).
        public.last_mut().unwrap().1 = vec![0x06, 0x03, 0x2b, 0x65, 0x70];
        assert_eq!(rv_of(&public, &private), CKR_OK);
        let (public, mut private) = pair();
        private[0].1 = b"hot-2".to_vec();
        assert_eq!(rv_of(&public, &private), CKR_TEMPLATE_INCONSISTENT);
        for label in [&b""[..], b"no spaces", &[0xff]] {
            let (mut public, mut private) = pair();
            public[0].1 = label.to_vec();
            private[0].1 = label.to_vec();
            assert_eq!(rv_of(&public, &private), CKR_ATTRIBUTE_VALUE_INVALID);
        }
        let (mut public, mut private) = pair();
        public.remove(0);
        private.remove(0);
        assert_eq!(rv_of(&public, &private), CKR_TEMPLATE_INCOMPLETE);
    }

    #[test]
    fn secret_key_templates_follow_the_attribute_table() {
        let base = |kt: KeyType| {
            let key_type = if kt == KeyType::Aes256 {
                CKK_AES
            } else {
                CKK_GENERIC_SECRET
            };
            vec![
                (CKA_LABEL, b"seal".to_vec()),
                ulong_attr(CKA_CLASS, CKO_SECRET_KEY),
                ulong_attr(CKA_KEY_TYPE, key_type),
                ulong_attr(CKA_VALUE_LEN, 32),
                flag(CKA_TOKEN, true),
                flag(CKA_SENSITIVE, true),
            ]
        };
        let (aes, hmac) = (KeyType::Aes256, KeyType::HmacSha256);
        let cases: [(CK_RV, Vec<(KeyType, TemplateAttr)>); 4] = [
            (
                CKR_OK,
                vec![
                    // Vault's seal asks for wrap/unwrap: ignored.
                    (aes, flag(CKA_WRAP, true)),
                    (aes, flag(CKA_ENCRYPT, true)),
                    // A use of the other kind: ignored (pkcs11-tool asks it).
                    (hmac, flag(CKA_ENCRYPT, true)),
                ],
            ),
            (
                CKR_TEMPLATE_INCONSISTENT,
                vec![
                    // A use the key has, asked false.
                    (aes, flag(CKA_DECRYPT, false)),
                    (hmac, flag(CKA_SIGN, false)),
                    (aes, ulong_attr(CKA_VALUE_LEN, 16)),
                    (hmac, ulong_attr(CKA_KEY_TYPE, CKK_AES)),
                    (aes, flag(CKA_EXTRACTABLE, true)),
                ],
            ),
            (
                CKR_ATTRIBUTE_READ_ONLY,
                vec![
                    (aes, (CKA_VALUE, vec![0; 32])),
                    (aes, (CKA_CHECK_VALUE, vec![0; 3])),
                ],
            ),
            (
                CKR_ATTRIBUTE_TYPE_INVALID,
                vec![(aes, ulong_attr(CKA_MODULUS_BITS, 2048))],
            ),
        ];
        for kt in [aes, hmac] {
            SecretKeySpec::from_template(&base(kt), kt).unwrap();
        }
        for (want, attrs) in cases {
            for (kt, extra) in attrs {
                let mut t = base(kt);
                t.push(extra.clone());
                let got = rv(SecretKeySpec::from_template(&t, kt));
                assert_eq!(got, want, "{kt}: {extra:?}");
            }
        }
    }
}
