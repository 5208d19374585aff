//! Creation templates of token keys (`C_GenerateKeyPair`, `C_GenerateKey` with `CKA_TOKEN=true`), checked against the attribute table, and the asset they register.

#![forbid(unsafe_code)]

use super::*;

impl Provider {
    /// `C_GenerateKeyPair(CKM_EC_KEY_PAIR_GEN)` with `CKA_TOKEN=true`: registers
    /// a new asset named by `CKA_LABEL` and returns its alias (public, private).
    pub fn generate_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        public: &[TemplateAttr],
        private: &[TemplateAttr],
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let session = self.session(h)?;
        if mech.ty != CKM_EC_KEY_PAIR_GEN {
            return Err(Error::rv(CKR_MECHANISM_INVALID));
        }
        if !mech.param.is_empty() {
            return Err(Error::rv(CKR_MECHANISM_PARAM_INVALID));
        }
        if agreed(public, private, CKA_TOKEN, "CKA_TOKEN")? != Some(&[CK_TRUE as u8][..]) {
            return self.generate_session_pair(h, public, private);
        }
        let spec = KeyPairSpec::from_templates(public, private)?;
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
                format!("key pair generation for {label:?}: no CKA_EC_PARAMS; name the curve (secp256k1 or P-256)"),
            )
        })?;
        let key_type = objects::curve_from_params(params).ok_or_else(|| {
            Error::with(
                CKR_CURVE_NOT_SUPPORTED,
                format!(
                    "key pair generation for {label:?}: CKA_EC_PARAMS {} is not a supported curve; \
                     use the named curve secp256k1 or P-256 (prime256v1)",
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

/// Checks the other attributes of a template against what a derived key is.
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
    enum Verdict {
        Fine,
        Ignored,
        Computed,
        Cannot,
    }
    let which = if class == Class::Private {
        "private"
    } else {
        "public"
    };
    for (ty, value) in template {
        let ty = *ty;
        let is_true = value.first().is_some_and(|&b| b != 0);
        let verdict = match (class, ty) {
            (_, CKA_LABEL | CKA_ID | CKA_EC_PARAMS | CKA_TOKEN) => Verdict::Fine,
            (Class::Private, CKA_CLASS) if ulong(value) == Some(CKO_PRIVATE_KEY) => Verdict::Fine,
            (Class::Public, CKA_CLASS) if ulong(value) == Some(CKO_PUBLIC_KEY) => Verdict::Fine,
            (_, CKA_KEY_TYPE) if ulong(value) == Some(CKK_EC) => Verdict::Fine,
            (_, CKA_CLASS | CKA_KEY_TYPE) => Verdict::Cannot,
            (Class::Private, CKA_SENSITIVE | CKA_PRIVATE | CKA_SIGN) if !is_true => Verdict::Cannot,
            (Class::Private, CKA_EXTRACTABLE | CKA_ALWAYS_AUTHENTICATE) if is_true => {
                Verdict::Cannot
            }
            (Class::Public, CKA_VERIFY) if !is_true => Verdict::Cannot,
            (_, CKA_ALLOWED_MECHANISMS) => {
                let given: Vec<CK_ULONG> = value
                    .chunks(std::mem::size_of::<CK_ULONG>())
                    .filter_map(ulong)
                    .collect();
                if objects::EC_MECHANISMS.iter().all(|m| given.contains(m)) {
                    Verdict::Fine
                } else {
                    Verdict::Cannot
                }
            }
            (Class::Private, CKA_VALUE) | (Class::Public, CKA_EC_POINT) => Verdict::Computed,
            (
                _,
                CKA_LOCAL
                | CKA_KEY_GEN_MECHANISM
                | CKA_ALWAYS_SENSITIVE
                | CKA_NEVER_EXTRACTABLE
                | CKA_PUBLIC_KEY_INFO
                | CKA_UNIQUE_ID,
            ) => Verdict::Computed,
            (_, ty) if ty & CKA_VENDOR_DEFINED != 0 && objects::has_attribute(class, ty) => {
                Verdict::Computed
            }
            (_, ty) if objects::has_attribute(class, ty) || IGNORABLE.contains(&ty) => {
                if is_true || ty == CKA_SUBJECT {
                    Verdict::Ignored
                } else {
                    Verdict::Fine
                }
            }
            _ => {
                return Err(Error::with(
                    CKR_ATTRIBUTE_TYPE_INVALID,
                    format!(
                        "key pair generation for {label:?} ({kt}): attribute {} does not \
                         apply to a {which} EC key",
                        attr_name(ty)
                    ),
                ))
            }
        };
        match verdict {
            Verdict::Fine => {}
            Verdict::Ignored => log::info(&format!(
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
            Verdict::Cannot => {
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
        }
    }
    Ok(())
}

/// Attributes a creator may give that the objects answer for themselves.
const IGNORABLE: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_DERIVE,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_SIGN_RECOVER,
    CKA_VERIFY_RECOVER,
    CKA_MODIFIABLE,
    CKA_COPYABLE,
    CKA_DESTROYABLE,
    CKA_TRUSTED,
    CKA_WRAP_WITH_TRUSTED,
    CKA_SUBJECT,
    CKA_START_DATE,
    CKA_END_DATE,
    CKA_PRIVATE,
];

/// What a `C_GenerateKey` template asks for.
pub(super) struct SecretKeySpec {
    pub(super) asset: AssetId,
    pub(super) object_id: Option<Vec<u8>>,
}

impl SecretKeySpec {
    pub(super) fn from_template(t: &[TemplateAttr], kt: KeyType) -> Result<SecretKeySpec> {
        let what = format!("{kt} key generation");
        let asset = asset_named(&what, find(t, CKA_LABEL))?;
        let label = asset.as_str();
        let object_id = object_id(&what, label, find(t, CKA_ID))?;
        let (uses, other): (&[CK_ATTRIBUTE_TYPE], &[CK_ATTRIBUTE_TYPE]) = match kt {
            KeyType::Aes256 => (&[CKA_ENCRYPT, CKA_DECRYPT], &[CKA_SIGN, CKA_VERIFY]),
            _ => (&[CKA_SIGN, CKA_VERIFY], &[CKA_ENCRYPT, CKA_DECRYPT]),
        };
        for (ty, value) in t {
            let ty = *ty;
            let is_true = value.first().is_some_and(|&b| b != 0);
            let cannot = |why: &str| {
                Err(Error::with(
                    CKR_TEMPLATE_INCONSISTENT,
                    format!(
                        "{what} for {label:?}: the template sets {} {why} (derived secret keys \
                         are private, sensitive, never extractable, 32 bytes, and {})",
                        attr_name(ty),
                        if kt == KeyType::Aes256 {
                            "encrypt/decrypt with AES-GCM"
                        } else {
                            "sign/verify with HMAC"
                        }
                    ),
                ))
            };
            match ty {
                CKA_LABEL | CKA_ID | CKA_TOKEN => {}
                CKA_CLASS if ulong(value) == Some(CKO_SECRET_KEY) => {}
                CKA_KEY_TYPE => {
                    let ok = match kt {
                        KeyType::Aes256 => ulong(value) == Some(CKK_AES),
                        _ => matches!(ulong(value), Some(CKK_GENERIC_SECRET | CKK_SHA256_HMAC)),
                    };
                    if !ok {
                        return cannot("to another key type");
                    }
                }
                CKA_CLASS => return cannot("to another class"),
                CKA_VALUE_LEN if ulong(value) != Some(32) => {
                    return cannot("to a length other than 32")
                }
                CKA_VALUE_LEN => {}
                CKA_SENSITIVE | CKA_PRIVATE if !is_true => {
                    return cannot("to false (pkcs11-tool: add --sensitive --private)")
                }
                CKA_EXTRACTABLE if is_true => return cannot("to true"),
                _ if uses.contains(&ty) && !is_true => return cannot("to false"),
                _ if other.contains(&ty) => {
                    // A use this kind of key never has (pkcs11-tool asks
                    // encrypt of generic secrets): the object says false.
                    if is_true {
                        log::info(&format!(
                            "{what} for {label:?}: {} ignored; a {kt} key cannot do that",
                            attr_name(ty)
                        ));
                    }
                }
                CKA_ALLOWED_MECHANISMS => {
                    let given: Vec<CK_ULONG> = value
                        .chunks(std::mem::size_of::<CK_ULONG>())
                        .filter_map(ulong)
                        .collect();
                    if !objects::mechanisms_of(kt).iter().all(|m| given.contains(m)) {
                        return cannot("to a list narrower than the key's mechanisms");
                    }
                }
                CKA_VALUE
                | CKA_CHECK_VALUE
                | CKA_LOCAL
                | CKA_KEY_GEN_MECHANISM
                | CKA_ALWAYS_SENSITIVE
                | CKA_NEVER_EXTRACTABLE
                | CKA_UNIQUE_ID => {
                    return Err(Error::with(
                        CKR_ATTRIBUTE_READ_ONLY,
                        format!(
                            "{what} for {label:?}: the template sets {}, which p11derive computes \
                             (key material is derived, never supplied); remove it",
                            attr_name(ty)
                        ),
                    ))
                }
                _ if objects::has_attribute(Class::Secret, ty) || IGNORABLE.contains(&ty) => {
                    if is_true {
                        log::info(&format!(
                            "{what} for {label:?}: attribute {} ignored; derived keys are not \
                             modifiable, wrappable or derivable",
                            attr_name(ty)
                        ));
                    }
                }
                _ => {
                    return Err(Error::with(
                        CKR_ATTRIBUTE_TYPE_INVALID,
                        format!(
                            "{what} for {label:?}: attribute {} does not apply to a secret key",
                            attr_name(ty)
                        ),
                    ))
                }
            }
        }
        Ok(SecretKeySpec {
            asset: asset.clone(),
            object_id,
        })
    }
}
