//! Certificates, data objects and profile objects: the token objects that are not derived keys.
//!
//! Public token objects: X.509 certificates and data objects a client
//! stores beside the derived keys (kept in the store, audited, destroyable),
//! and the `CKO_PROFILE` objects announcing the profiles p11derive
//! implements. A certificate shares its key's `CKA_ID`, which is how TLS
//! servers and Java keystores find the certificate of a derived key.

#![forbid(unsafe_code)]

use sha2::Digest;

use crate::store::StoredObject;

use super::*;

/// Profile objects: this bit plus the profile id.
pub(super) const PROFILE_BIT: CK_OBJECT_HANDLE = 1 << 29;
/// Stored objects: this bit plus the row id.
pub(super) const STORED_BIT: CK_OBJECT_HANDLE = 1 << 30;

/// The profiles p11derive implements (PKCS #11 Profiles 3.0): it answers
/// for its mechanisms and objects (baseline provider), and its certificates
/// are public, readable without a login (public certificates token).
pub(super) const PROFILES: [CK_ULONG; 2] = [CKP_BASELINE_PROVIDER, CKP_PUBLIC_CERTIFICATES_TOKEN];

/// A token object that is not a derived key.
pub(super) enum Plain {
    Stored(StoredObject),
    Profile(CK_ULONG),
}

fn b(v: bool) -> Option<Value> {
    Some(Value::Bool(v))
}

fn bytes(v: &[u8]) -> Option<Value> {
    Some(Value::Bytes(v.to_vec()))
}

impl Plain {
    pub fn handle(&self) -> CK_OBJECT_HANDLE {
        match self {
            Plain::Stored(o) => STORED_BIT | o.rowid as CK_OBJECT_HANDLE,
            Plain::Profile(id) => PROFILE_BIT | id,
        }
    }

    /// For messages and audit records.
    pub fn name(&self) -> String {
        match self {
            Plain::Stored(o) => format!(
                "{} {:?}",
                if o.class == CKO_CERTIFICATE {
                    "certificate"
                } else {
                    "data object"
                },
                String::from_utf8_lossy(&o.label)
            ),
            Plain::Profile(id) => format!("profile {id}"),
        }
    }

    /// The value of attribute `ty`; `None` when the object has no such one.
    pub fn attribute(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<Value> {
        // Common to every object here: public, read-only token objects.
        match ty {
            CKA_TOKEN => return b(true),
            CKA_PRIVATE | CKA_MODIFIABLE => return b(false),
            _ => {}
        }
        match self {
            Plain::Profile(id) => match ty {
                CKA_CLASS => Some(Value::Ulong(CKO_PROFILE)),
                CKA_DESTROYABLE | CKA_COPYABLE => b(false),
                CKA_LABEL => bytes(b""),
                CKA_UNIQUE_ID => bytes(format!("profile/{id}").as_bytes()),
                CKA_PROFILE_ID => Some(Value::Ulong(*id)),
                _ => None,
            },
            Plain::Stored(o) => match ty {
                // A copy (C_CopyObject) may be a session or a token object.
                CKA_DESTROYABLE | CKA_COPYABLE => b(true),
                CKA_UNIQUE_ID => bytes(format!("object/{}", o.rowid).as_bytes()),
                _ => content_attribute(o, ty),
            },
        }
    }

    pub fn matches(&self, template: &[TemplateAttr]) -> bool {
        objects::matches(template, |ty| self.attribute(ty))
    }
}

/// What a certificate or data object says of itself, stored or session
/// object alike (the flags that differ are answered by the caller).
pub(super) fn content_attribute(o: &StoredObject, ty: CK_ATTRIBUTE_TYPE) -> Option<Value> {
    let common = match ty {
        CKA_CLASS => Some(Value::Ulong(o.class)),
        CKA_LABEL => bytes(&o.label),
        CKA_VALUE => bytes(&o.value),
        _ => None,
    };
    if common.is_some() {
        return common;
    }
    if o.class == CKO_DATA {
        return match ty {
            CKA_APPLICATION => bytes(o.application.as_deref().unwrap_or_default()),
            CKA_OBJECT_ID => bytes(o.oid.as_deref().unwrap_or_default()),
            _ => None,
        };
    }
    let fields = objects::x509_fields(&o.value);
    let field = |f: fn(&objects::X509Fields) -> &Vec<u8>| {
        fields.as_ref().map(|x| Value::Bytes(f(x).clone()))
    };
    match ty {
        CKA_CERTIFICATE_TYPE => Some(Value::Ulong(CKC_X_509)),
        CKA_TRUSTED => b(false),
        CKA_CERTIFICATE_CATEGORY => Some(Value::Ulong(0)),
        CKA_CHECK_VALUE => {
            use sha1::Digest as _;
            bytes(&sha1::Sha1::digest(&o.value)[..3])
        }
        CKA_START_DATE | CKA_END_DATE | CKA_URL => bytes(b""),
        CKA_HASH_OF_SUBJECT_PUBLIC_KEY | CKA_HASH_OF_ISSUER_PUBLIC_KEY => bytes(b""),
        CKA_JAVA_MIDP_SECURITY_DOMAIN => Some(Value::Ulong(0)),
        CKA_NAME_HASH_ALGORITHM => Some(Value::Ulong(CKM_SHA_1)),
        CKA_ID => bytes(&o.object_id),
        CKA_SUBJECT => field(|x| &x.subject),
        CKA_ISSUER => field(|x| &x.issuer),
        CKA_SERIAL_NUMBER => field(|x| &x.serial),
        CKA_PUBLIC_KEY_INFO => field(|x| &x.spki),
        _ => None,
    }
}

impl Provider {
    /// The stored or profile object behind a handle.
    pub(super) fn plain_object(&self, h: CK_OBJECT_HANDLE) -> Result<Option<Plain>> {
        if h & STORED_BIT != 0 && h & session::SESSION_BIT == 0 {
            let rowid = (h & !STORED_BIT) as i64;
            return Ok(self
                .store
                .stored_object(rowid)
                .map_err(store_error)?
                .map(Plain::Stored));
        }
        if h & PROFILE_BIT != 0 && h & (STORED_BIT | session::SESSION_BIT) == 0 {
            let id = h & !PROFILE_BIT;
            return Ok(PROFILES.contains(&id).then_some(Plain::Profile(id)));
        }
        Ok(None)
    }

    /// Whether a handle belongs to the stored or profile objects' ranges.
    pub(super) fn is_plain_handle(h: CK_OBJECT_HANDLE) -> bool {
        h & session::SESSION_BIT == 0 && h & (STORED_BIT | PROFILE_BIT) != 0
    }

    /// Stored and profile objects matching a template (all public).
    pub(super) fn find_plain(
        &self,
        template: &[TemplateAttr],
    ) -> Result<Vec<(CK_OBJECT_HANDLE, bool)>> {
        let stored = self.store.stored_objects().map_err(store_error)?;
        let all = PROFILES
            .iter()
            .map(|&id| Plain::Profile(id))
            .chain(stored.into_iter().map(Plain::Stored));
        Ok(all
            .filter(|o| o.matches(template))
            .map(|o| (o.handle(), false))
            .collect())
    }

    /// `C_CreateObject` of a certificate or data object (`CKA_TOKEN=true`):
    /// stored, with its audit record, in one transaction.
    pub(super) fn create_plain(
        &self,
        h: CK_SESSION_HANDLE,
        template: &[TemplateAttr],
        class: CK_OBJECT_CLASS,
    ) -> Result<CK_OBJECT_HANDLE> {
        let session = self.session(h)?;
        let is_set = |ty| find(template, ty).is_some_and(|v| v.first().is_some_and(|&b| b != 0));
        // CKA_TOKEN false (the default): a session object, in memory.
        let token = is_set(CKA_TOKEN);
        let action = if token {
            crate::access::Action::CreateAsset
        } else {
            crate::access::Action::SessionObjects
        };
        self.permit(h, action, None, None)?;
        let cert = class == CKO_CERTIFICATE;
        let what = match (cert, token) {
            (true, true) => "C_CreateObject (certificate)",
            (false, true) => "C_CreateObject (data object)",
            (true, false) => "C_CreateObject (session certificate)",
            (false, false) => "C_CreateObject (session data object)",
        };
        let inconsistent = |why: &str| {
            Err(Error::with(
                CKR_TEMPLATE_INCONSISTENT,
                format!("{what}: {why}"),
            ))
        };
        // A public object's value is in the template as given.
        let value: Vec<u8> = find(template, CKA_VALUE).unwrap_or_default().to_vec();
        let fields = if cert {
            if find(template, CKA_CERTIFICATE_TYPE).and_then(ulong) != Some(CKC_X_509) {
                return Err(Error::with(
                    CKR_TEMPLATE_INCOMPLETE,
                    format!("{what}: CKA_CERTIFICATE_TYPE must be CKC_X_509"),
                ));
            }
            let Some(fields) = objects::x509_fields(&value) else {
                return Err(Error::with(
                    CKR_ATTRIBUTE_VALUE_INVALID,
                    format!("{what}: CKA_VALUE is not a DER X.509 certificate"),
                ));
            };
            Some(fields)
        } else {
            None
        };
        for (ty, v) in template {
            let is_true = v.first().is_some_and(|&x| x != 0);
            let given = |f: &Vec<u8>| {
                if f == v {
                    Ok(())
                } else {
                    Err(Error::with(
                        CKR_TEMPLATE_INCONSISTENT,
                        format!("{what}: {} differs from the certificate's", attr_name(*ty)),
                    ))
                }
            };
            match (*ty, &fields) {
                (CKA_CLASS | CKA_TOKEN | CKA_LABEL | CKA_VALUE, _) => {}
                (CKA_PRIVATE, _) if is_true && token => {
                    return inconsistent(
                        "CKA_PRIVATE=true: p11derive keeps no secrets in its store; only public \
                         objects can be stored (a session object, CKA_TOKEN=false, may be private)",
                    )
                }
                (CKA_PRIVATE | CKA_MODIFIABLE | CKA_COPYABLE | CKA_DESTROYABLE, _) => {}
                (CKA_START_DATE | CKA_END_DATE, _) => {}
                (CKA_CERTIFICATE_TYPE | CKA_ID | CKA_CERTIFICATE_CATEGORY | CKA_URL, Some(_)) => {}
                (CKA_TRUSTED, Some(_)) if !is_true => {}
                (CKA_TRUSTED, Some(_)) => {
                    return inconsistent("CKA_TRUSTED can only be set by the security officer")
                }
                (CKA_SUBJECT, Some(f)) => given(&f.subject)?,
                (CKA_ISSUER, Some(f)) => given(&f.issuer)?,
                (CKA_SERIAL_NUMBER, Some(f)) => given(&f.serial)?,
                (CKA_APPLICATION | CKA_OBJECT_ID, None) => {}
                (ty, _) => {
                    return Err(Error::with(
                        CKR_ATTRIBUTE_TYPE_INVALID,
                        format!("{what}: attribute {} does not apply here", attr_name(ty)),
                    ))
                }
            }
        }
        let new = StoredObject {
            rowid: 0,
            class,
            label: find(template, CKA_LABEL).unwrap_or_default().to_vec(),
            object_id: find(template, CKA_ID).unwrap_or_default().to_vec(),
            value,
            application: find(template, CKA_APPLICATION).map(<[u8]>::to_vec),
            oid: find(template, CKA_OBJECT_ID).map(<[u8]>::to_vec),
        };
        if !token {
            return self.insert_plain(h, new, template);
        }
        let ak = self.store_writer(&session)?;
        let mut rec = Record::new(Event::ObjectCreate, CKR_OK)
            .session(h)
            .detail(format!(
                "{}, CKA_ID {}",
                Plain::Stored(new.clone()).name(),
                crate::store::hex(&new.object_id)
            ));
        rec.input_sha256 = Some(Sha256::digest(&new.value).into());
        let stored = self
            .store
            .create_object(&new, &ak, rec)
            .map_err(store_error)?;
        log::info(&format!("{} stored", Plain::Stored(stored.clone()).name()));
        Ok(Plain::Stored(stored).handle())
    }

    /// What writing a stored object takes: a read-write session and a user
    /// login, whose audit key seals the record.
    fn store_writer(&self, session: &Mutex<Session>) -> Result<Arc<Secret32>> {
        if !lock(session).rw {
            return Err(Error::rv(CKR_SESSION_READ_ONLY));
        }
        if self.login_state() != Login::User {
            return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
        }
        self.audit_key()
            .ok_or_else(|| Error::with(CKR_USER_NOT_LOGGED_IN, "no audit key in this process"))
    }

    /// `C_DestroyObject` of a stored object (profiles are not destroyable).
    pub(super) fn destroy_plain(
        &self,
        h: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let session = self.session(h)?;
        let plain = self
            .plain_object(object)?
            .ok_or(Error::rv(CKR_OBJECT_HANDLE_INVALID))?;
        // Users mode: who may store token objects may destroy them.
        self.permit(h, crate::access::Action::CreateAsset, None, None)?;
        let Plain::Stored(o) = &plain else {
            return Err(Error::with(
                CKR_ACTION_PROHIBITED,
                format!(
                    "{} describes the token and is not destroyable",
                    plain.name()
                ),
            ));
        };
        let ak = self.store_writer(&session)?;
        let rec = Record::new(Event::ObjectDestroy, CKR_OK)
            .session(h)
            .detail(format!("{} (object {})", plain.name(), o.rowid));
        if !self
            .store
            .destroy_object(o.rowid, &ak, rec)
            .map_err(store_error)?
        {
            return Err(Error::rv(CKR_OBJECT_HANDLE_INVALID));
        }
        log::info(&format!("{} destroyed", plain.name()));
        Ok(())
    }
}
