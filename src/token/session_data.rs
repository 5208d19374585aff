//! Session certificates and data objects (`CKA_TOKEN=false`): kept in memory, found, read, changed, copied and dropped with their session.
//!
//! They hold no key material: a certificate is public, a data object holds
//! what its creator gave. A private one (`CKA_PRIVATE=true`) needs a user
//! login to be made, seen or used, like a private session key.

#![forbid(unsafe_code)]

use crate::store::StoredObject;

use super::*;

/// A session certificate or data object: its content (as a stored object
/// would hold it) and the flags a session object has.
pub(super) struct SessionPlain {
    pub owner: CK_SESSION_HANDLE,
    pub content: StoredObject,
    pub private: bool,
    pub modifiable: bool,
    pub copyable: bool,
    pub destroyable: bool,
    /// Users mode: who made it; a private one is that user's only.
    pub maker: Option<String>,
}

impl SessionPlain {
    /// For messages: the class and the label.
    pub fn name(&self) -> String {
        format!(
            "session {} {:?}",
            if self.content.class == CKO_CERTIFICATE {
                "certificate"
            } else {
                "data object"
            },
            String::from_utf8_lossy(&self.content.label)
        )
    }

    /// The value of attribute `ty`; `None` when the object has no such one.
    pub fn attribute(&self, handle: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> Option<Value> {
        let b = |v| Some(Value::Bool(v));
        match ty {
            CKA_TOKEN => b(false),
            CKA_PRIVATE => b(self.private),
            CKA_MODIFIABLE => b(self.modifiable),
            CKA_COPYABLE => b(self.copyable),
            CKA_DESTROYABLE => b(self.destroyable),
            CKA_UNIQUE_ID => Some(Value::Bytes(
                format!("session/{}", handle & !session::SESSION_BIT).into_bytes(),
            )),
            _ => stored::content_attribute(&self.content, ty),
        }
    }

    /// The same object with its own copy of the content, to change.
    pub fn duplicate(&self) -> SessionPlain {
        SessionPlain {
            owner: self.owner,
            content: self.content.clone(),
            private: self.private,
            modifiable: self.modifiable,
            copyable: self.copyable,
            destroyable: self.destroyable,
            maker: self.maker.clone(),
        }
    }
}

fn flag(t: &[TemplateAttr], ty: CK_ATTRIBUTE_TYPE, default: bool) -> bool {
    find(t, ty).map_or(default, |v| v.first().is_some_and(|&b| b != 0))
}

impl Provider {
    /// Keeps a checked certificate or data object (`create_plain`) as a
    /// session object of session `h`; a private one needs a user login.
    pub(super) fn insert_plain(
        &self,
        h: CK_SESSION_HANDLE,
        content: StoredObject,
        template: &[TemplateAttr],
    ) -> Result<CK_OBJECT_HANDLE> {
        let private = flag(template, CKA_PRIVATE, false);
        self.may_make(h, private)?;
        let obj = SessionPlain {
            owner: h,
            content,
            private,
            modifiable: flag(template, CKA_MODIFIABLE, true),
            copyable: flag(template, CKA_COPYABLE, true),
            destroyable: flag(template, CKA_DESTROYABLE, true),
            maker: self.actor(),
        };
        let handle = self.session_objects.next_handle();
        self.plain_table().insert(handle, Arc::new(obj));
        Ok(handle)
    }

    pub(super) fn plain_table(
        &self,
    ) -> RwLockWriteGuard<'_, HashMap<CK_OBJECT_HANDLE, Arc<SessionPlain>>> {
        self.session_objects
            .plain
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The session certificate or data object behind a handle, if visible
    /// now: private ones need a user login.
    pub(super) fn session_plain(&self, h: CK_OBJECT_HANDLE) -> Option<Arc<SessionPlain>> {
        if h & session::SESSION_BIT == 0 {
            return None;
        }
        let obj = self
            .session_objects
            .plain
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&h)
            .cloned()?;
        let visible = !obj.private || self.login_state() == Login::User;
        (visible && self.sees_made(obj.private, &obj.maker)).then_some(obj)
    }

    /// The visible session certificates and data objects matching a template.
    pub(super) fn find_session_plain(
        &self,
        template: &[TemplateAttr],
    ) -> Vec<(CK_OBJECT_HANDLE, bool)> {
        let logged_in = self.login_state() == Login::User;
        self.session_objects
            .plain
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(h, o)| {
                (logged_in || !o.private)
                    && self.sees_made(o.private, &o.maker)
                    && objects::matches(template, |ty| o.attribute(**h, ty))
            })
            .map(|(h, o)| (*h, o.private))
            .collect()
    }
}
