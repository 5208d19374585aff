//! Object handles for the life of the process, the lookup of the asset behind one, attribute values, object search and `C_DestroyObject`.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use crate::process::PerProcess;

use super::*;

pub(super) struct FindOp {
    /// Each result with whether it is a private object.
    handles: Vec<(CK_OBJECT_HANDLE, bool)>,
    next: usize,
    /// The login the search began in: its private results are for that
    /// login (that user) only.
    epoch: u64,
}

/// Object handles for the life of the process: assigned on first sight,
/// never reused, and kept across C_Finalize/C_Initialize, so a handle found in
/// one session (or one initialization) names the same object in every other.
/// Objects are told apart by their store as well, in case a later
/// initialization names another store.
#[derive(Default)]
struct Handles {
    stores: Vec<PathBuf>,
    by_key: HashMap<(usize, ObjectKey), CK_OBJECT_HANDLE>,
    by_handle: HashMap<CK_OBJECT_HANDLE, (usize, ObjectKey)>,
}

static HANDLES: PerProcess<Mutex<Handles>> = PerProcess::new(|| Mutex::new(Handles::default()));

/// The index of a store in the handle table (by its canonical path).
pub(super) fn store_index(path: &Path) -> usize {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut t = lock(HANDLES.get());
    if let Some(i) = t.stores.iter().position(|p| *p == path) {
        return i;
    }
    t.stores.push(path);
    t.stores.len() - 1
}

impl Provider {
    pub(super) fn handle_for(&self, key: ObjectKey) -> CK_OBJECT_HANDLE {
        let mut t = lock(HANDLES.get());
        let full = (self.store_index, key);
        if let Some(h) = t.by_key.get(&full) {
            return *h;
        }
        let h = t.by_key.len() as CK_OBJECT_HANDLE + 1;
        t.by_key.insert(full, h);
        t.by_handle.insert(h, full);
        h
    }

    /// The object behind a handle, if it belongs to this provider's store.
    fn key_of(&self, h: CK_OBJECT_HANDLE) -> Option<ObjectKey> {
        match lock(HANDLES.get()).by_handle.get(&h) {
            Some((store, key)) if *store == self.store_index => Some(*key),
            _ => None,
        }
    }

    /// The current record of the asset behind a handle, checked for
    /// visibility (private objects need a user login) and, in a process that
    /// holds the audit key, for public keys swapped in the store.
    pub(super) fn object(&self, h: CK_OBJECT_HANDLE, invalid: CK_RV) -> Result<(ObjectKey, Asset)> {
        let key = self.key_of(h).ok_or_else(|| Error::rv(invalid))?;
        if key.class.is_private() && self.login_state() != Login::User {
            return Err(Error::rv(invalid));
        }
        let asset = self
            .store
            .asset(key.asset)
            .map_err(store_error)?
            .ok_or_else(|| Error::rv(invalid))?;
        // Users mode: private objects of assets the user may not use or
        // manage do not exist for them.
        if key.class.is_private() && !self.sees_private(asset.id.as_str()) {
            return Err(Error::rv(invalid));
        }
        let version = View::resolve(&asset, &key)
            .ok_or_else(|| Error::rv(invalid))?
            .version;
        self.check_public_keys(&asset, [version])?;
        Ok((key, asset))
    }

    /// The public keys of `versions` must carry their MAC under the audit
    /// key: a key changed in the store is refused, never served or used. Only
    /// the versions an operation touches are checked (one HMAC each). A
    /// process that never logged in has no audit key and must trust the store.
    pub(super) fn check_public_keys(
        &self,
        asset: &Asset,
        versions: impl IntoIterator<Item = u32>,
    ) -> Result<()> {
        let Some(ak) = self.audit_key() else {
            return Ok(());
        };
        for n in versions {
            let Some(v) = asset.version(n) else { continue };
            let Some(pk) = &v.public_key else { continue };
            // A (key, MAC) pair verified once needs no second HMAC (the
            // store's row is what is compared, without copying it).
            let slot = (asset.rowid, v.version);
            let known = self.keys.verified(slot, pk, &v.pk_mac);
            if known {
                continue;
            }
            let want = public_key_mac(&ak, asset.id.as_str(), v.version, pk);
            if v.pk_mac.as_deref() == Some(&want[..]) {
                self.keys.mark_verified(slot, pk.clone(), v.pk_mac.clone());
            } else {
                return Err(Error::with(
                    CKR_DEVICE_ERROR,
                    format!(
                        "asset {:?} version {}: its public key in store {} carries no valid MAC \
                         under the audit key (the versions table was changed outside p11derive); \
                         refusing to use it: run `p11derive audit verify`",
                        asset.id.as_str(),
                        v.version,
                        self.store.path().display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Attribute values of an object, in the order asked; `None` where the
    /// object has no such attribute.
    pub fn attribute_values(
        &self,
        h: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<Option<Value>>> {
        self.session(h)?;
        if let Some(obj) = self.session_object(object) {
            return Ok(types.iter().map(|&t| obj.attribute(t)).collect());
        }
        if let Some(obj) = self.session_plain(object) {
            return Ok(types.iter().map(|&t| obj.attribute(object, t)).collect());
        }
        if Self::is_plain_handle(object) {
            let plain = self
                .plain_object(object)?
                .ok_or(Error::rv(CKR_OBJECT_HANDLE_INVALID))?;
            return Ok(types.iter().map(|&t| plain.attribute(t)).collect());
        }
        let (key, asset) = self.object(object, CKR_OBJECT_HANDLE_INVALID)?;
        let mut view = View::resolve(&asset, &key).ok_or(Error::rv(CKR_OBJECT_HANDLE_INVALID))?;
        view.destroy_retires = self.config.policy.destroy_retires;
        Ok(types
            .iter()
            .map(|&t| match t {
                // Derived inside the backing HSM with the version's key.
                CKA_P11DERIVE_CHAIN_CODE | CKA_P11DERIVE_XPUB if key.class == Class::Public => {
                    self.hd_attribute(&view, t)
                }
                _ => view.attribute(t),
            })
            .collect())
    }

    /// `C_DestroyObject`: on an asset's alias, retires the asset where the
    /// config allows it; everything else is refused.
    pub fn destroy_object(&self, h: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) -> Result<()> {
        if object & session::SESSION_BIT != 0 {
            return self.destroy_session_object(h, object);
        }
        if Self::is_plain_handle(object) {
            return self.destroy_plain(h, object);
        }
        let session = self.session(h)?;
        let (key, asset) = self.object(object, CKR_OBJECT_HANDLE_INVALID)?;
        let label = asset.id.as_str();
        if key.which != Which::Alias || !self.config.policy.destroy_retires {
            self.audit(
                Record::new(Event::Refused, CKR_ACTION_PROHIBITED)
                    .asset(
                        label,
                        Some(View::resolve(&asset, &key).map_or(0, |v| v.version)),
                    )
                    .session(h)
                    .detail("C_DestroyObject refused by policy"),
            )?;
            return Err(Error::with(
                CKR_ACTION_PROHIBITED,
                format!(
                    "object {label:?}{} is a derived key and is not destroyable (CKA_DESTROYABLE \
                     is false); retire the asset with `p11derive asset retire {label} --yes`{}",
                    if key.which == Which::Alias {
                        ""
                    } else {
                        " (a version object)"
                    },
                    if key.which == Which::Alias {
                        ", or set [policy] destroy_retires = true"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if !lock(&session).rw {
            return Err(Error::rv(CKR_SESSION_READ_ONLY));
        }
        if self.login_state() != Login::User {
            return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
        }
        self.permit(h, crate::access::Action::Lifecycle, Some(label), None)?;
        self.with_audit(h, |audit| {
            lifecycle::transition(None, &self.store, audit, &asset.id, Transition::Retire)
                .map_err(|e| e.to_pkcs11())
        })?;
        self.advance_anchor();
        log::info(&format!("asset {label:?} retired through C_DestroyObject"));
        Ok(())
    }

    pub fn object_size(&self, h: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) -> Result<CK_ULONG> {
        self.session(h)?;
        if Self::is_plain_handle(object) {
            self.plain_object(object)?
                .ok_or(Error::rv(CKR_OBJECT_HANDLE_INVALID))?;
        } else if self.session_object(object).is_none() && self.session_plain(object).is_none() {
            self.object(object, CKR_OBJECT_HANDLE_INVALID)?;
        }
        Ok(CK_UNAVAILABLE_INFORMATION)
    }

    pub fn find_init(&self, h: CK_SESSION_HANDLE, template: &[TemplateAttr]) -> Result<()> {
        self.in_session(h, |s| {
            s.find.ensure_idle()?;
            let logged_in = self.login_state() == Login::User;
            let assets = self.store.list_assets().map_err(store_error)?;
            let mut handles = Vec::new();
            for asset in &assets {
                let sees_private = logged_in && self.sees_private(asset.id.as_str());
                for key in View::keys_of(asset) {
                    if key.class.is_private() && !sees_private {
                        continue;
                    }
                    let Some(mut view) = View::resolve(asset, &key) else {
                        continue;
                    };
                    view.destroy_retires = self.config.policy.destroy_retires;
                    if view.matches(template) {
                        handles.push((self.handle_for(key), key.class.is_private()));
                    }
                }
            }
            handles.extend(self.find_plain(template)?);
            handles.extend(self.find_session_objects(template));
            s.find.start(FindOp {
                handles,
                next: 0,
                epoch: self.login.epoch(),
            })
        })
    }

    pub fn find_next(&self, h: CK_SESSION_HANDLE, max: usize) -> Result<Vec<CK_OBJECT_HANDLE>> {
        self.in_session(h, |s| {
            s.find.with(|find| {
                // A logout since C_FindObjectsInit hides the private results
                // that remain, also from a login after it (another user's).
                let logged_in =
                    self.login_state() == Login::User && self.login.epoch() == find.epoch;
                let mut out = Vec::with_capacity(max.min(find.handles.len()));
                while out.len() < max && find.next < find.handles.len() {
                    let (h, private) = find.handles[find.next];
                    find.next += 1;
                    if logged_in || !private {
                        out.push(h);
                    }
                }
                Ok(out)
            })
        })
    }

    pub fn find_final(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        self.in_session(h, |s| s.find.take().map(drop))
    }
}
