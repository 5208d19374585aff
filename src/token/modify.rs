//! `C_SetAttributeValue` and `C_CopyObject`: session objects change and copy as PKCS#11 says; derived keys, stored objects and profiles do not change.
//!
//! What may change (PKCS#11 3.0 §4): the label; a key's `CKA_ID`, dates,
//! subject and uses (only uses its kind has); `CKA_SENSITIVE` only from
//! false to true and `CKA_EXTRACTABLE` only from true to false (they
//! latch); `CKA_COPYABLE` only to false; a data object's `CKA_APPLICATION`,
//! `CKA_OBJECT_ID` and `CKA_VALUE`; a certificate's `CKA_ID`. Everything
//! else is `CKR_ATTRIBUTE_READ_ONLY`: class, key type, key value, length,
//! curve, point, `CKA_TOKEN`, `CKA_PRIVATE`, the computed attributes. An
//! object with `CKA_MODIFIABLE` false (derived keys and their HD children,
//! stored objects, profiles) is `CKR_ACTION_PROHIBITED`, as is a copy of
//! one with `CKA_COPYABLE` false. A copy may also change `CKA_TOKEN`,
//! `CKA_PRIVATE` and `CKA_MODIFIABLE`; a key never becomes a token object
//! (token keys are derived assets: the store holds no key material).

#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::secure::SecretBytes;

use super::session::{can_use, SessionObject};
use super::session_data::SessionPlain;
use super::stored::Plain;
use super::*;

/// Whether `C_SetAttributeValue` or `C_CopyObject` asks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Set,
    Copy,
}

impl Change {
    fn what(self) -> &'static str {
        match self {
            Change::Set => "C_SetAttributeValue",
            Change::Copy => "C_CopyObject",
        }
    }
}

fn is_true(v: &[u8]) -> bool {
    v.first().is_some_and(|&b| b != 0)
}

fn read_only(change: Change, name: &str, ty: CK_ATTRIBUTE_TYPE, why: &str) -> Error {
    Error::with(
        CKR_ATTRIBUTE_READ_ONLY,
        format!(
            "{}: {name}: {} cannot be changed ({why})",
            change.what(),
            attr_name(ty)
        ),
    )
}

/// Applies `t` to a session key (`new`, a duplicate of the object), as
/// `change` allows.
fn change_key(new: &mut SessionObject, t: &[TemplateAttr], change: Change) -> Result<()> {
    let name = new.name();
    let public = new.class == Class::Public;
    for (ty, v) in t {
        let ty = *ty;
        let on = is_true(v);
        match ty {
            CKA_LABEL => new.label = v.clone(),
            CKA_ID => new.id = v.clone(),
            CKA_START_DATE => new.dates.0 = v.clone(),
            CKA_END_DATE => new.dates.1 = v.clone(),
            CKA_SUBJECT if new.class != Class::Secret => new.subject = v.clone(),
            CKA_ENCRYPT | CKA_DECRYPT | CKA_SIGN | CKA_VERIFY | CKA_WRAP | CKA_UNWRAP
                if new.attribute(ty).is_some() =>
            {
                if on && !can_use(new.class, new.kind, ty) {
                    return Err(Error::with(
                        CKR_ATTRIBUTE_VALUE_INVALID,
                        format!(
                            "{}: {name}: {} cannot be true; this kind of key cannot do that",
                            change.what(),
                            attr_name(ty)
                        ),
                    ));
                }
                let slot = match ty {
                    CKA_ENCRYPT => &mut new.encrypt,
                    CKA_DECRYPT => &mut new.decrypt,
                    CKA_SIGN => &mut new.sign,
                    CKA_VERIFY => &mut new.verify,
                    CKA_WRAP => &mut new.wrap,
                    _ => &mut new.unwrap,
                };
                *slot = on;
            }
            // Latching: once sensitive, always; once unextractable, always.
            CKA_SENSITIVE if !public => {
                if !on && new.sensitive {
                    return Err(read_only(
                        change,
                        &name,
                        ty,
                        "CKA_SENSITIVE goes from false to true only",
                    ));
                }
                new.sensitive = on;
            }
            CKA_EXTRACTABLE if !public => {
                if on && !new.extractable {
                    return Err(read_only(
                        change,
                        &name,
                        ty,
                        "CKA_EXTRACTABLE goes from true to false only",
                    ));
                }
                new.extractable = on;
            }
            CKA_COPYABLE => {
                if on && !new.copyable {
                    return Err(read_only(
                        change,
                        &name,
                        ty,
                        "CKA_COPYABLE goes from true to false only",
                    ));
                }
                new.copyable = on;
            }
            // A key's derive use: as its kind allows (true only where ECDH
            // runs), like the other uses.
            CKA_DERIVE if new.hd.is_none() => {
                if on && !can_use(new.class, new.kind, CKA_DERIVE) {
                    return Err(Error::with(
                        CKR_ATTRIBUTE_VALUE_INVALID,
                        format!("{name}: CKA_DERIVE=true: this kind of key derives nothing"),
                    ));
                }
                new.derive = on;
            }
            CKA_WRAP_WITH_TRUSTED if new.attribute(ty).is_some() && !on => {}
            CKA_PRIVATE if change == Change::Copy => new.private = on,
            CKA_MODIFIABLE if change == Change::Copy => new.modifiable = on,
            CKA_TOKEN if change == Change::Copy && !on => {}
            CKA_TOKEN if change == Change::Copy => {
                return Err(Error::with(
                    CKR_TEMPLATE_INCONSISTENT,
                    format!(
                        "C_CopyObject: {name}: a copy of a session key cannot be a token object \
                         (CKA_TOKEN=true): token keys are derived assets and the store holds no \
                         key material; copy it as a session object, or make an asset with \
                         C_GenerateKey/C_GenerateKeyPair"
                    ),
                ));
            }
            _ if new.attribute(ty).is_none() => {
                return Err(Error::with(
                    CKR_ATTRIBUTE_TYPE_INVALID,
                    format!(
                        "{}: {name} has no attribute {}",
                        change.what(),
                        attr_name(ty)
                    ),
                ))
            }
            _ => {
                return Err(read_only(
                    change,
                    &name,
                    ty,
                    "it is fixed when the key is made",
                ))
            }
        }
    }
    Ok(())
}

/// Applies `t` to a certificate's or data object's content and flags
/// (`private`, `modifiable`, `copyable`), as `change` allows; `attribute`
/// answers for the object as it was. A copy's `CKA_TOKEN` is returned.
fn change_plain(
    o: &mut SessionPlain,
    name: &str,
    t: &[TemplateAttr],
    change: Change,
    attribute: impl Fn(CK_ATTRIBUTE_TYPE) -> Option<Value>,
) -> Result<()> {
    let data = o.content.class == CKO_DATA;
    for (ty, v) in t {
        let ty = *ty;
        let on = is_true(v);
        match ty {
            CKA_LABEL => o.content.label = v.clone(),
            CKA_APPLICATION if data => o.content.application = Some(v.clone()),
            CKA_OBJECT_ID if data => o.content.oid = Some(v.clone()),
            CKA_VALUE if data => o.content.value = v.clone(),
            CKA_ID if !data => o.content.object_id = v.clone(),
            CKA_COPYABLE => {
                if on && !o.copyable {
                    return Err(read_only(
                        change,
                        name,
                        ty,
                        "CKA_COPYABLE goes from true to false only",
                    ));
                }
                o.copyable = on;
            }
            CKA_PRIVATE if change == Change::Copy => o.private = on,
            CKA_MODIFIABLE if change == Change::Copy => o.modifiable = on,
            // Read by the caller.
            CKA_TOKEN if change == Change::Copy => {}
            _ if attribute(ty).is_none() => {
                return Err(Error::with(
                    CKR_ATTRIBUTE_TYPE_INVALID,
                    format!(
                        "{}: {name} has no attribute {}",
                        change.what(),
                        attr_name(ty)
                    ),
                ))
            }
            _ => {
                return Err(read_only(
                    change,
                    name,
                    ty,
                    "only the label, a data object's application, object id and value, and a \
                     certificate's CKA_ID change",
                ))
            }
        }
    }
    Ok(())
}

/// The creation template of a certificate or data object like `o` (for a
/// copy: `create_plain` checks it as any new object).
fn plain_template(o: &SessionPlain, token: bool) -> Vec<TemplateAttr> {
    let flag = |ty, v: bool| (ty, vec![u8::from(v)]);
    let c = &o.content;
    let mut t = vec![
        (CKA_CLASS, c.class.to_ne_bytes().to_vec()),
        flag(CKA_TOKEN, token),
        flag(CKA_PRIVATE, o.private),
        flag(CKA_MODIFIABLE, o.modifiable),
        flag(CKA_COPYABLE, o.copyable),
        flag(CKA_DESTROYABLE, o.destroyable),
        (CKA_LABEL, c.label.clone()),
        (CKA_VALUE, c.value.clone()),
    ];
    if c.class == CKO_CERTIFICATE {
        t.push((CKA_CERTIFICATE_TYPE, CKC_X_509.to_ne_bytes().to_vec()));
        t.push((CKA_ID, c.object_id.clone()));
    }
    if let Some(a) = &c.application {
        t.push((CKA_APPLICATION, a.clone()));
    }
    if let Some(a) = &c.oid {
        t.push((CKA_OBJECT_ID, a.clone()));
    }
    t
}

impl Provider {
    /// Whether `object` is a certificate or data object (session or stored):
    /// its `CKA_VALUE` is public, so templates about it keep theirs.
    pub fn has_public_value(&self, object: CK_OBJECT_HANDLE) -> bool {
        Self::is_plain_handle(object)
            || self
                .session_objects
                .plain
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&object)
    }

    /// Why a token object (derived key, stored object, profile) neither
    /// changes nor copies, once its handle is known to be valid.
    fn token_object_refusal(&self, object: CK_OBJECT_HANDLE, change: Change) -> Result<Error> {
        let what = change.what();
        if Self::is_plain_handle(object) {
            let plain = self
                .plain_object(object)?
                .ok_or(Error::rv(CKR_OBJECT_HANDLE_INVALID))?;
            return Ok(Error::with(
                CKR_ACTION_PROHIBITED,
                match (&plain, change) {
                    (Plain::Stored(_), Change::Set) => format!(
                        "{what}: {} is a stored object and not modifiable (CKA_MODIFIABLE \
                         false); make a changed copy with C_CopyObject and destroy this one",
                        plain.name()
                    ),
                    _ => format!(
                        "{what}: {} describes the token; it neither changes nor copies",
                        plain.name()
                    ),
                },
            ));
        }
        let (_, asset) = self.object(object, CKR_OBJECT_HANDLE_INVALID)?;
        Ok(Error::with(
            CKR_ACTION_PROHIBITED,
            format!(
                "{what}: object of asset {:?} is a derived key: neither modifiable nor copyable \
                 (CKA_MODIFIABLE and CKA_COPYABLE are false); manage it with `p11derive asset`",
                asset.id.as_str()
            ),
        ))
    }

    /// `C_SetAttributeValue`.
    pub fn set_attribute_value(
        &self,
        h: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        t: &[TemplateAttr],
    ) -> Result<()> {
        self.session(h)?;
        let change = Change::Set;
        if let Some(obj) = self.session_object(object) {
            if !obj.modifiable {
                return Err(Error::with(
                    CKR_ACTION_PROHIBITED,
                    format!(
                        "C_SetAttributeValue: {} is not modifiable (CKA_MODIFIABLE false{})",
                        obj.name(),
                        if obj.hd.is_some() {
                            ": a derived key"
                        } else {
                            ", as made"
                        }
                    ),
                ));
            }
            let mut new = obj.duplicate().ok_or(Error::rv(CKR_ACTION_PROHIBITED))?;
            change_key(&mut new, t, change)?;
            // Replaced only if it is still there (not destroyed meanwhile).
            let mut table = self.session_objects.write();
            let slot = table
                .get_mut(&object)
                .ok_or(Error::rv(CKR_OBJECT_HANDLE_INVALID))?;
            *slot = Arc::new(new);
            return Ok(());
        }
        if let Some(o) = self.session_plain(object) {
            let name = o.name();
            if !o.modifiable {
                return Err(Error::with(
                    CKR_ACTION_PROHIBITED,
                    format!("C_SetAttributeValue: {name} is not modifiable (CKA_MODIFIABLE false, as made)"),
                ));
            }
            let mut new = o.duplicate();
            change_plain(&mut new, &name, t, change, |ty| o.attribute(object, ty))?;
            let mut table = self.plain_table();
            let slot = table
                .get_mut(&object)
                .ok_or(Error::rv(CKR_OBJECT_HANDLE_INVALID))?;
            *slot = Arc::new(new);
            return Ok(());
        }
        Err(self.token_object_refusal(object, change)?)
    }

    /// `C_CopyObject`.
    pub fn copy_object(
        &self,
        h: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        t: &[TemplateAttr],
    ) -> Result<CK_OBJECT_HANDLE> {
        self.session(h)?;
        let change = Change::Copy;
        let not_copyable = |name: String| {
            Error::with(
                CKR_ACTION_PROHIBITED,
                format!("C_CopyObject: {name} is not copyable (CKA_COPYABLE false)"),
            )
        };
        if let Some(obj) = self.session_object(object) {
            if !obj.copyable {
                return Err(not_copyable(obj.name()));
            }
            let mut new = obj.duplicate().ok_or_else(|| not_copyable(obj.name()))?;
            new.owner = h;
            // The copy's key material: a new locked allocation. It shares
            // the GCM IVs used (the same key must never repeat one).
            if let Some(k) = &obj.key {
                let mut copy = SecretBytes::with_capacity(k.len().max(1))
                    .map_err(|m| Error::with(CKR_HOST_MEMORY, m))?;
                copy.push(k);
                new.key = Some(Arc::new(copy));
            }
            change_key(&mut new, t, change)?;
            self.permit(h, crate::access::Action::SessionObjects, None, None)?;
            self.may_make(h, new.private)?;
            return Ok(self.insert(new));
        }
        let source = match self.session_plain(object) {
            Some(o) => o,
            None => match self.plain_object(object)? {
                Some(Plain::Stored(s)) => Arc::new(SessionPlain {
                    owner: h,
                    content: s,
                    private: false,
                    modifiable: false,
                    copyable: true,
                    destroyable: true,
                    maker: None,
                }),
                _ => return Err(self.token_object_refusal(object, change)?),
            },
        };
        let stored = Self::is_plain_handle(object);
        let name = if stored {
            source.name().replacen("session ", "", 1)
        } else {
            source.name()
        };
        if !source.copyable {
            return Err(not_copyable(name));
        }
        let mut new = source.duplicate();
        let attribute = |ty| match self.session_plain(object) {
            Some(o) => o.attribute(object, ty),
            None => self
                .plain_object(object)
                .ok()
                .flatten()
                .and_then(|p| p.attribute(ty)),
        };
        change_plain(&mut new, &name, t, change, attribute)?;
        // A copy stays where its source is unless the template says.
        let token = find(t, CKA_TOKEN).map_or(stored, is_true);
        if stored && find(t, CKA_MODIFIABLE).is_none() {
            // A stored object is not modifiable; a session copy of it is.
            new.modifiable = true;
        }
        self.create_plain(h, &plain_template(&new, token), new.content.class)
    }
}
