//! Key wrapping (`C_WrapKey`, `C_UnwrapKey` with AES key wrap): session secret keys wrapped under derived or session AES keys.

#![forbid(unsafe_code)]

use super::*;

impl Provider {
    // ---- key wrapping -------------------------------------------------------

    fn wrap_mechanism(mech: &Mechanism) -> Result<bool> {
        let padded = match mech.ty {
            CKM_AES_KEY_WRAP => false,
            CKM_AES_KEY_WRAP_KWP => true,
            _ => return Err(Error::rv(CKR_MECHANISM_INVALID)),
        };
        if !mech.param.is_empty() {
            return Err(Error::with(
                CKR_MECHANISM_PARAM_INVALID,
                format!(
                    "{}: only the default initial value is supported (no parameter)",
                    crate::error::mech_name(mech.ty)
                ),
            ));
        }
        Ok(padded)
    }

    /// `C_WrapKey` (`CKM_AES_KEY_WRAP`, `CKM_AES_KEY_WRAP_KWP`): wraps an
    /// extractable session secret key under an AES key (a derived asset
    /// version that may encrypt, or a session key allowed to wrap). Derived
    /// keys are never extractable. `out` `None` asks for the length.
    pub fn wrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.session(h)?;
        let padded = Self::wrap_mechanism(mech)?;
        let target = match self.session_object(key) {
            Some(obj) => obj,
            None => {
                self.object(key, CKR_KEY_HANDLE_INVALID)?;
                return Err(Error::with(
                    CKR_KEY_UNEXTRACTABLE,
                    "derived keys never leave p11derive (CKA_EXTRACTABLE is false)",
                ));
            }
        };
        if target.class != Class::Secret {
            return Err(Error::rv(CKR_KEY_NOT_WRAPPABLE));
        }
        if !target.extractable {
            return Err(Error::with(
                CKR_KEY_UNEXTRACTABLE,
                format!(
                    "{} is not extractable (CKA_EXTRACTABLE false)",
                    target.name()
                ),
            ));
        }
        let secret = target.key_ref()?;
        let len = secret.bytes().len();
        if !padded && (len % 8 != 0 || len < 16) {
            // Answered before the length query too, so both calls agree.
            return Err(Error::with(
                CKR_KEY_SIZE_RANGE,
                format!(
                    "CKM_AES_KEY_WRAP wraps keys of a multiple of 8 bytes, at least 16 ({} has \
                     {len}); use CKM_AES_KEY_WRAP_KWP",
                    target.name()
                ),
            ));
        }
        let wrapped_len = if padded {
            len.div_ceil(8) * 8 + 8
        } else {
            len + 8
        };
        let Some(out) = out else {
            return Ok(wrapped_len);
        };
        if out.len() < wrapped_len {
            return Err(Error::rv(CKR_BUFFER_TOO_SMALL));
        }
        let epoch = self.login.epoch();
        let k = self
            .aes_keys(h, mech.ty, wrapping, true, epoch)
            .map_err(|e| wrapping_error(e, true))?;
        let (version, kek) = &k.keys[0];
        let wrapped = keywrap::key_wrap(kek.bytes(), secret.bytes(), padded)?;
        let rec = OpAudit::new(h, k.name, k.asset.is_none(), mech.ty).record(
            Event::Encrypt,
            CKR_OK,
            Some(*version),
        );
        let rec = with_detail(rec, format!("C_WrapKey of {}", target.name()));
        self.confirm(k.asset, *version, Use::Produce, rec)?;
        out[..wrapped.len()].copy_from_slice(&wrapped);
        Ok(wrapped.len())
    }

    /// `C_UnwrapKey`: unwraps under an AES key (a derived asset object opens
    /// with every version it may decrypt with, newest first, as decryption
    /// does) into a new session secret key described by `template`.
    pub fn unwrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        template: &[TemplateAttr],
    ) -> Result<CK_OBJECT_HANDLE> {
        self.session(h)?;
        let padded = Self::wrap_mechanism(mech)?;
        let what = "C_UnwrapKey";
        if find(template, CKA_CLASS).and_then(ulong) != Some(CKO_SECRET_KEY) {
            return Err(Error::with(
                CKR_TEMPLATE_INCONSISTENT,
                format!("{what}: the template must make a secret key (CKA_CLASS CKO_SECRET_KEY)"),
            ));
        }
        let kind = match find(template, CKA_KEY_TYPE).and_then(ulong) {
            Some(CKK_AES) => session::Kind::Aes,
            Some(CKK_GENERIC_SECRET | CKK_SHA256_HMAC | CKK_SHA384_HMAC | CKK_SHA512_HMAC) => {
                session::Kind::Generic
            }
            _ => {
                return Err(Error::with(
                    CKR_TEMPLATE_INCOMPLETE,
                    format!("{what}: CKA_KEY_TYPE must be CKK_AES or CKK_GENERIC_SECRET"),
                ))
            }
        };
        let w = session::wish(template, Class::Secret, kind, what)?;
        self.may_make(h, w.private)?;
        let epoch = self.login.epoch();
        let k = self
            .aes_keys(h, mech.ty, unwrapping, false, epoch)
            .map_err(|e| wrapping_error(e, false))?;
        let audit = OpAudit::new(h, k.name.clone(), k.asset.is_none(), mech.ty);
        let mut audit = audit;
        audit.input.update(wrapped);
        let mut key = None;
        let opened =
            match k.asset {
                Some(rowid) => {
                    let asset = self
                        .store
                        .fresh_state(rowid)
                        .map_err(store_error)?
                        .ok_or(Error::rv(CKR_UNWRAPPING_KEY_HANDLE_INVALID))?;
                    self.open_with(&asset, &k.keys, |kek| {
                        key = Some(keywrap::key_unwrap(kek.bytes(), wrapped, padded).map_err(
                            |e| match e.rv {
                                CKR_WRAPPED_KEY_INVALID => Error::rv(CKR_ENCRYPTED_DATA_INVALID),
                                _ => e,
                            },
                        )?);
                        Ok(())
                    })
                    .map_err(|e| match e.rv {
                        CKR_ENCRYPTED_DATA_INVALID => Error::rv(CKR_WRAPPED_KEY_INVALID),
                        _ => e,
                    })
                }
                None => keywrap::key_unwrap(k.keys[0].1.bytes(), wrapped, padded).map(|s| {
                    key = Some(s);
                    0
                }),
            };
        let version = match opened {
            Ok(v) => v,
            Err(e) => {
                let rec = with_detail(
                    audit.record(Event::Decrypt, e.rv, None),
                    "C_UnwrapKey failed",
                );
                self.audit(rec)?;
                return Err(e);
            }
        };
        let key = key.ok_or(Error::rv(CKR_GENERAL_ERROR))?;
        let fits = session::check_len(kind, key.len(), what).and_then(|()| {
            if w.value_len.is_some_and(|n| n != key.len()) {
                return Err(Error::with(
                    CKR_TEMPLATE_INCONSISTENT,
                    format!("{what}: CKA_VALUE_LEN differs from the unwrapped key's length"),
                ));
            }
            Ok(())
        });
        if let Err(e) = fits {
            let rec = audit.record(Event::Decrypt, e.rv, Some(version));
            self.audit(with_detail(
                rec,
                "C_UnwrapKey: the key does not fit the template",
            ))?;
            return Err(e);
        }
        let obj = Self::secret_object(h, kind, key, w, false)?;
        let rec = audit.record(Event::Decrypt, CKR_OK, Some(version));
        let rec = with_detail(rec, format!("C_UnwrapKey into {}", obj.name()));
        self.confirm(k.asset, version, Use::Open, rec)?;
        Ok(self.insert(obj))
    }
}

/// Adds to a record's detail (which, for a session key, already names it).
fn with_detail(rec: Record, more: impl AsRef<str>) -> Record {
    let detail = if rec.detail.is_empty() {
        more.as_ref().to_string()
    } else {
        format!("{}; {}", rec.detail, more.as_ref())
    };
    rec.detail(detail)
}

/// The wrapping key's own problems get the wrapping-key codes.
fn wrapping_error(e: Error, wrapping: bool) -> Error {
    let rv = match (e.rv, wrapping) {
        (CKR_KEY_HANDLE_INVALID, true) => CKR_WRAPPING_KEY_HANDLE_INVALID,
        (CKR_KEY_HANDLE_INVALID, false) => CKR_UNWRAPPING_KEY_HANDLE_INVALID,
        (CKR_KEY_TYPE_INCONSISTENT, true) => CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
        (CKR_KEY_TYPE_INCONSISTENT, false) => CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
        (rv, _) => rv,
    };
    Error { rv, ..e }
}
