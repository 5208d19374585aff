//! The root secret in the backing token (find, generate, import), the rollback anchor beside it, and the PRF under it.

use crate::ck as sys;

use super::core::{device, Core};
use super::module::Template;
use crate::audit::Anchor;
use crate::error::{rv_name, Error, Result};
use crate::types::Secret32;

impl Core {
    /// Finds the one secret key labelled `root_label`.
    pub(super) fn find_root(&self, h: sys::CK_SESSION_HANDLE) -> Result<sys::CK_OBJECT_HANDLE> {
        let found = self.find_by_label(h, sys::CKO_SECRET_KEY, &self.root_label)?;
        match found.as_slice() {
            [root] => Ok(*root),
            [] => Err(Error::with(
                sys::CKR_DEVICE_ERROR,
                format!(
                    "backing token {:?} has no root secret labelled {:?}; create it with \
                     `p11derive init` (or fix [backend] root_label)",
                    self.token_label, self.root_label
                ),
            )),
            many => Err(Error::with(
                sys::CKR_DEVICE_ERROR,
                format!(
                    "backing token {:?} holds {} secret keys labelled {:?}; the root must be \
                     unique: remove the extra ones with the HSM's own tools",
                    self.token_label,
                    many.len(),
                    self.root_label
                ),
            )),
        }
    }

    /// Every object of `class` labelled `label` on the backing token.
    fn find_by_label(
        &self,
        h: sys::CK_SESSION_HANDLE,
        class: sys::CK_OBJECT_CLASS,
        label: &str,
    ) -> Result<Vec<sys::CK_OBJECT_HANDLE>> {
        self.find_labelled(h, class, label, None)
    }

    /// [`Core::find_by_label`], and with `CKA_ID` equal to `id` when given.
    fn find_labelled(
        &self,
        h: sys::CK_SESSION_HANDLE,
        class: sys::CK_OBJECT_CLASS,
        label: &str,
        id: Option<&[u8]>,
    ) -> Result<Vec<sys::CK_OBJECT_HANDLE>> {
        let mut template = Template::new();
        template
            .ulong(sys::CKA_CLASS, &class)
            .bytes(sys::CKA_LABEL, label.as_bytes());
        if let Some(id) = id {
            template.bytes(sys::CKA_ID, id);
        }
        let rv = self.module.find_objects_init(h, &mut template);
        if rv != sys::CKR_OK {
            return Err(device("C_FindObjectsInit", rv));
        }
        let mut found = Vec::new();
        loop {
            let mut batch = [0 as sys::CK_OBJECT_HANDLE; 16];
            let (rv, n) = self.module.find_objects(h, &mut batch);
            if rv != sys::CKR_OK {
                let _ = self.module.find_objects_final(h);
                return Err(device("C_FindObjects", rv));
            }
            found.extend_from_slice(&batch[..n as usize]);
            if (n as usize) < batch.len() {
                break;
            }
        }
        let _ = self.module.find_objects_final(h);
        Ok(found)
    }

    fn root_handle(&self) -> Result<sys::CK_OBJECT_HANDLE> {
        self.root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or(Error::rv(sys::CKR_USER_NOT_LOGGED_IN))
    }

    /// Creates the root inside the HSM: a 256-bit generic secret that never
    /// leaves it (sensitive, not extractable), usable only for HMAC signing.
    /// Requires a user login. Refuses when a root with that label exists.
    pub(super) fn generate_root(&self) -> Result<()> {
        self.create_root(None)
    }

    /// Imports a given root (test vectors, recovery ceremonies) with the same
    /// attributes as a generated one.
    pub(super) fn import_root(&self, value: &[u8; 32]) -> Result<()> {
        self.create_root(Some(value))
    }

    /// Destroys the root this process created (and no other object): a
    /// recovery or ceremony that imported it and then could not record it
    /// takes it back, so nothing is left half-done.
    pub(super) fn destroy_root(&self) -> Result<()> {
        let created = *self.created_root.lock().unwrap_or_else(|e| e.into_inner());
        let Some(id) = created else {
            return Err(Error::with(
                sys::CKR_OBJECT_HANDLE_INVALID,
                "this process created no root to take back",
            ));
        };
        self.with_session(|h| {
            let ours = self.find_labelled(h, sys::CKO_SECRET_KEY, &self.root_label, Some(&id))?;
            if ours.is_empty() {
                return Err(Error::with(
                    sys::CKR_OBJECT_HANDLE_INVALID,
                    "the root this process created is no longer on the token",
                ));
            }
            for obj in ours {
                let rv = self.module.destroy_object(h, obj);
                if rv != sys::CKR_OK {
                    return Err(device("C_DestroyObject (root)", rv));
                }
            }
            Ok(())
        })?;
        *self.created_root.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.root.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Whether a root with the configured label exists (needs a user login).
    pub(super) fn root_exists(&self) -> Result<bool> {
        self.with_session(|h| {
            Ok(!self
                .find_by_label(h, sys::CKO_SECRET_KEY, &self.root_label)?
                .is_empty())
        })
    }

    fn create_root(&self, value: Option<&[u8; 32]>) -> Result<()> {
        if self.root_exists()? {
            return Err(Error::with(
                sys::CKR_ATTRIBUTE_VALUE_INVALID,
                format!(
                    "backing token {:?} already holds a root labelled {:?}; refusing to create \
                     another",
                    self.token_label, self.root_label
                ),
            ));
        }
        let class = sys::CKO_SECRET_KEY;
        let key_type = sys::CKK_GENERIC_SECRET;
        let value_len: sys::CK_ULONG = 32;
        let yes = sys::CK_TRUE as sys::CK_BBOOL;
        let no = sys::CK_FALSE as sys::CK_BBOOL;
        // The imported value is copied into the locked arena the HSM reads
        // from. The template is complete before the first attempt: after a
        // recovery `with_session` runs the closure again, with the same one.
        let mut secret = crate::secure::secret::<32>()?;
        if let Some(v) = value {
            secret.copy_from_slice(v);
        }
        // A random CKA_ID names this process's root among any other
        // created at the same moment (object handles do not outlive a
        // logout), so that it alone is ever taken back.
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.random(16)?);
        let mut template = Template::new();
        template
            .ulong(sys::CKA_CLASS, &class)
            .ulong(sys::CKA_KEY_TYPE, &key_type)
            .bytes(sys::CKA_LABEL, self.root_label.as_bytes())
            .bytes(sys::CKA_ID, &id)
            .bool(sys::CKA_TOKEN, &yes)
            .bool(sys::CKA_PRIVATE, &yes)
            .bool(sys::CKA_SENSITIVE, &yes)
            .bool(sys::CKA_EXTRACTABLE, &no)
            .bool(sys::CKA_SIGN, &yes)
            .bool(sys::CKA_VERIFY, &no)
            .bool(sys::CKA_ENCRYPT, &no)
            .bool(sys::CKA_DECRYPT, &no)
            .bool(sys::CKA_WRAP, &no)
            .bool(sys::CKA_UNWRAP, &no)
            .bool(sys::CKA_DERIVE, &no)
            .bool(sys::CKA_MODIFIABLE, &no);
        match value {
            Some(_) => template.bytes(sys::CKA_VALUE, &secret[..]),
            None => template.ulong(sys::CKA_VALUE_LEN, &value_len),
        };
        self.with_session(|h| {
            let (rv, created) = match value {
                Some(_) => self.module.create_object(h, &mut template),
                None => self
                    .module
                    .generate_key(h, sys::CKM_GENERIC_SECRET_KEY_GEN, &mut template),
            };
            if rv != sys::CKR_OK {
                return Err(device(
                    if value.is_some() {
                        "C_CreateObject (root)"
                    } else {
                        "C_GenerateKey (root)"
                    },
                    rv,
                ));
            }
            *self.created_root.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
            // Looking for a root and creating one are two calls: another
            // process (a second recovery, an `init`) may have created one in
            // between. Two roots under one label would stop every process,
            // so the one that finds another takes its own back.
            let roots = self.find_by_label(h, sys::CKO_SECRET_KEY, &self.root_label)?;
            if roots.len() != 1 {
                let rv = self.module.destroy_object(h, created);
                if rv == sys::CKR_OK {
                    *self.created_root.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                return Err(Error::with(
                    sys::CKR_FUNCTION_FAILED,
                    format!(
                        "another root labelled {:?} was created on backing token {:?} at the \
                         same time (a second `init` or `root recover`): this one {}; run the \
                         command once, alone",
                        self.root_label,
                        self.token_label,
                        if rv == sys::CKR_OK {
                            "was taken back".to_string()
                        } else {
                            format!(
                                "could not be taken back ({}): remove the extra key with the \
                                 HSM's own tools",
                                rv_name(rv)
                            )
                        }
                    ),
                ));
            }
            Ok(())
        })
    }

    /// The label of the rollback anchor (design §4): a private data object
    /// beside the root holding a [`Anchor`]: the store lineage, the newest
    /// record and state change at the last anchoring.
    fn anchor_label(&self) -> String {
        format!("{}/anchor", self.root_label)
    }

    /// Each anchor object found, read, and how many were found (one that
    /// another process removed between the find and the read is left out).
    fn anchors(
        &self,
        h: sys::CK_SESSION_HANDLE,
    ) -> Result<(usize, Vec<(sys::CK_OBJECT_HANDLE, Anchor)>)> {
        let found = self.find_by_label(h, sys::CKO_DATA, &self.anchor_label())?;
        let mut out = Vec::new();
        for &obj in &found {
            let mut value = [0u8; 1200];
            let (rv, len) = self
                .module
                .get_attribute_value(h, obj, sys::CKA_VALUE, &mut value);
            // Another process replaced the anchor between our find and read.
            if rv == sys::CKR_OBJECT_HANDLE_INVALID {
                continue;
            }
            let anchor = (rv == sys::CKR_OK)
                .then(|| value.get(..len as usize).and_then(Anchor::decode))
                .flatten();
            let Some(anchor) = anchor else {
                return Err(Error::with(
                    sys::CKR_DEVICE_ERROR,
                    format!(
                        "the rollback anchor {:?} on backing token {:?} is unreadable ({}, {len} \
                         bytes)",
                        self.anchor_label(),
                        self.token_label,
                        rv_name(rv)
                    ),
                ));
            };
            out.push((obj, anchor));
        }
        Ok((found.len(), out))
    }

    /// The anchor, if one was written. Needs a user login: the anchor is a
    /// private object. Should two exist (a crash between writing the new one
    /// and removing the old), the newest counts. Another process may replace
    /// the anchor while we read it: an anchor that vanished between find and
    /// read is looked for again.
    pub(super) fn read_anchor(&self) -> Result<Option<Anchor>> {
        self.with_session(|h| {
            for _ in 0..5 {
                let (found, anchors) = self.anchors(h)?;
                if found > 0 && anchors.is_empty() {
                    continue;
                }
                let newest = anchors.into_iter().max_by_key(|(_, a)| (a.epoch, a.head.0));
                *self.anchor_object.lock().unwrap_or_else(|e| e.into_inner()) = newest
                    .as_ref()
                    .map(|(obj, _)| (*obj, std::time::Instant::now()));
                return Ok(newest.map(|(_, a)| a));
            }
            Err(Error::with(
                sys::CKR_DEVICE_ERROR,
                format!(
                    "the rollback anchor {:?} on backing token {:?} kept changing while read",
                    self.anchor_label(),
                    self.token_label
                ),
            ))
        })
    }

    /// The anchor as the HSM holds it now, at every commit: the object last
    /// found or written is read again (one call) until it is gone — another
    /// process replaced it — and the anchor is looked for afresh at least
    /// every `ANCHOR_LOOK_AGAIN` (should another process have failed to
    /// remove the object it replaced, the newer one is found then).
    pub(super) fn watch_anchor(&self) -> Result<Option<Anchor>> {
        const ANCHOR_LOOK_AGAIN: std::time::Duration = std::time::Duration::from_millis(200);
        let cached = *self.anchor_object.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((obj, _)) = cached.filter(|(_, at)| at.elapsed() < ANCHOR_LOOK_AGAIN) {
            let fresh = self.with_session(|h| {
                let mut value = [0u8; 1200];
                let (rv, len) = self
                    .module
                    .get_attribute_value(h, obj, sys::CKA_VALUE, &mut value);
                Ok((rv == sys::CKR_OK)
                    .then(|| value.get(..len as usize).and_then(Anchor::decode))
                    .flatten())
            })?;
            if fresh.is_some() {
                return Ok(fresh);
            }
        }
        self.read_anchor()
    }

    /// Moves the anchor: a new object is written first, then the older ones
    /// are removed (tokens may not allow changing a data object's value).
    /// Only forward (a newer record, or a newer state change), unless `reset`
    /// (an operator knowingly re-anchoring a repaired store).
    pub(super) fn write_anchor(&self, anchor: &Anchor, reset: bool) -> Result<()> {
        let label = self.anchor_label();
        self.with_session(|h| {
            let (_, old) = self.anchors(h)?;
            let behind = |held: &Anchor| {
                (held.epoch, held.head.0, held.change.0)
                    >= (anchor.epoch, anchor.head.0, anchor.change.0)
                    && held.store.is_some() >= anchor.store.is_some()
            };
            if !reset && old.iter().any(|(_, held)| behind(held)) {
                return Ok(());
            }
            let value = anchor.encode();
            let class = sys::CKO_DATA;
            let yes = sys::CK_TRUE as sys::CK_BBOOL;
            let app = b"p11derive";
            let mut template = Template::new();
            template
                .ulong(sys::CKA_CLASS, &class)
                .bool(sys::CKA_TOKEN, &yes)
                .bool(sys::CKA_PRIVATE, &yes)
                .bytes(sys::CKA_LABEL, label.as_bytes())
                .bytes(sys::CKA_APPLICATION, app)
                .bytes(sys::CKA_VALUE, &value);
            let (rv, created) = self.module.create_object(h, &mut template);
            if rv != sys::CKR_OK {
                return Err(device("C_CreateObject (anchor)", rv));
            }
            *self.anchor_object.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((created, std::time::Instant::now()));
            for (stale, _) in old {
                let _ = self.module.destroy_object(h, stale);
            }
            Ok(())
        })
    }

    /// `HMAC-SHA256(root, input)` computed inside the HSM. The HSM writes the
    /// output straight into the locked arena.
    pub(super) fn prf(&self, input: &[u8]) -> Result<Secret32> {
        self.with_session(|h| {
            let root = self.root_handle()?;
            let rv = self.module.sign_init(h, sys::CKM_SHA256_HMAC, root);
            if rv != sys::CKR_OK {
                return Err(device("C_SignInit(CKM_SHA256_HMAC, root)", rv));
            }
            let mut out = crate::secure::secret::<32>()?;
            let (rv, len) = self.module.sign(h, input, &mut out[..]);
            if rv != sys::CKR_OK || len != 32 {
                return Err(device("C_Sign(CKM_SHA256_HMAC)", rv));
            }
            Ok(out)
        })
    }
}
