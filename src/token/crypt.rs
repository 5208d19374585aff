//! Secret-key assets in a session: `C_GenerateKey` of AES-256 and HMAC
//! assets, AES-GCM encryption and decryption (single- and multi-part), and
//! the helpers HMAC signing and verification share with them.
//!
//! Rotation (design §3): a version that may no longer encrypt still
//! decrypts while usable; the alias encrypts with the current version and
//! decrypts with any usable one (trial, newest first). Every result is
//! committed to the audit log, with the asset's state re-checked, before it
//! is copied out.

#![forbid(unsafe_code)]

use sha2::Digest;
use zeroize::Zeroizing;

use super::*;

/// An encryption or decryption in progress.
pub(super) struct CryptOp {
    epoch: u64,
    /// `None`: a session key.
    asset: Option<i64>,
    /// The keys it may use, newest first: one to encrypt; to decrypt, every
    /// version the object may open (a session key: itself, as version 0).
    keys: VersionKeys,
    params: GcmParams,
    /// Parts given to C_EncryptUpdate/C_DecryptUpdate: GCM releases nothing
    /// before the tag is checked, so everything is processed at the end.
    data: Zeroizing<Vec<u8>>,
    multi: bool,
    audit: OpAudit,
}

/// Appends to a buffer of caller data that may be secret (plaintext): when it
/// must grow, the old allocation is wiped, never left behind in freed heap.
fn append_wiped(buf: &mut Zeroizing<Vec<u8>>, data: &[u8]) {
    if buf.capacity() - buf.len() < data.len() {
        let mut bigger = Vec::with_capacity((buf.len() + data.len()).max(2 * buf.capacity()));
        bigger.extend_from_slice(buf);
        // The old Vec is dropped by the assignment: Zeroizing wipes it.
        *buf = Zeroizing::new(bigger);
    }
    buf.extend_from_slice(data);
}

/// The AES keys an operation may use, and whose they are.
struct AesKeys {
    /// `None`: a session key.
    asset: Option<i64>,
    keys: VersionKeys,
    /// The asset id, or the session key's description.
    name: String,
}

/// The mechanism must be one the object's key type supports.
pub(super) fn check_key_type(view: &View, mech: CK_MECHANISM_TYPE) -> Result<()> {
    if objects::mechanisms_of(view.asset.key_type).contains(&mech) {
        return Ok(());
    }
    Err(Error::with(
        CKR_KEY_TYPE_INCONSISTENT,
        format!(
            "object {:?} is a {} key: mechanism {} does not apply to it",
            view.label(),
            view.asset.key_type,
            crate::error::mech_name(mech)
        ),
    ))
}

impl Provider {
    /// The derived keys a decryption or verification through `view` may use,
    /// newest first: through the alias every version that may open now,
    /// through a version object its own.
    pub(super) fn opening_keys(&self, view: &View, epoch: u64) -> Result<VersionKeys> {
        if !self.still_logged_in(epoch) {
            return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
        }
        let asset = view.asset;
        let versions: Vec<u32> = match view.which {
            Which::Alias => asset
                .versions
                .iter()
                .map(|v| v.version)
                .filter(|&v| asset.may_verify(v))
                .collect(),
            Which::Version(n) => vec![n],
        };
        let mut keys = Vec::with_capacity(versions.len());
        for n in versions {
            let one = View {
                asset,
                which: Which::Version(n),
                class: view.class,
                version: n,
                destroy_retires: false,
            };
            keys.push((n, KeyRef::Derived(self.asset_key(&one, epoch)?)));
        }
        Ok(keys)
    }

    /// Tries `f` with each key (or public point) whose version may open now
    /// (state read by the caller afresh), newest first; the version that
    /// worked. A wrong tag or
    /// MAC moves on to the next key; when none works, the last such error.
    pub(super) fn open_with<K>(
        &self,
        asset: &Asset,
        keys: &[(u32, K)],
        mut f: impl FnMut(&K) -> Result<()>,
    ) -> Result<u32> {
        let mut usable = keys.iter().filter(|(v, _)| asset.may_verify(*v)).peekable();
        if usable.peek().is_none() {
            return Err(Error::with(
                CKR_KEY_FUNCTION_NOT_PERMITTED,
                format!(
                    "asset {:?} is {}: its keys may not decrypt or verify now",
                    asset.id.as_str(),
                    asset.state.name()
                ),
            ));
        }
        let mut last = Error::rv(CKR_GENERAL_ERROR);
        for (version, key) in usable {
            match f(key) {
                Ok(()) => return Ok(*version),
                Err(e) if matches!(e.rv, CKR_SIGNATURE_INVALID | CKR_ENCRYPTED_DATA_INVALID) => {
                    last = e
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    // ---- C_GenerateKey ----------------------------------------------------

    /// `C_GenerateKey` with `CKA_TOKEN=true`: registers an AES-256
    /// (`CKM_AES_KEY_GEN`) or HMAC-SHA256 (`CKM_GENERIC_SECRET_KEY_GEN`) asset
    /// named by `CKA_LABEL` and returns its alias.
    pub fn generate_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        template: &[TemplateAttr],
    ) -> Result<CK_OBJECT_HANDLE> {
        let session = self.session(h)?;
        let key_type = match mech.ty {
            CKM_AES_KEY_GEN => KeyType::Aes256,
            CKM_GENERIC_SECRET_KEY_GEN => KeyType::HmacSha256,
            _ => return Err(Error::rv(CKR_MECHANISM_INVALID)),
        };
        if !mech.param.is_empty() {
            return Err(Error::rv(CKR_MECHANISM_PARAM_INVALID));
        }
        if find(template, CKA_TOKEN) != Some(&[CK_TRUE as u8][..]) {
            return self.generate_session_key(h, mech, template);
        }
        let spec = SecretKeySpec::from_template(template, key_type)?;
        let asset = self.register(h, &session, &spec.asset, key_type, spec.object_id)?;
        Ok(self.handle_for(ObjectKey {
            asset: asset.rowid,
            which: Which::Alias,
            class: Class::Secret,
        }))
    }

    // ---- encryption and decryption ------------------------------------------

    /// The AES key(s) behind `key` for `mech`: a session key (its use
    /// allowed by its attributes), or a derived asset object whose version
    /// may encrypt (`producing`: encrypt, wrap) or decrypt (unwrap): one key
    /// to produce with; every key the object may open with, newest first.
    /// A refusal by the asset's state is audited.
    fn aes_keys(
        &self,
        h: CK_SESSION_HANDLE,
        mech: CK_MECHANISM_TYPE,
        key: CK_OBJECT_HANDLE,
        producing: bool,
        epoch: u64,
    ) -> Result<AesKeys> {
        let what = match (mech, producing) {
            (CKM_AES_GCM, true) => "encrypt",
            (CKM_AES_GCM, false) => "decrypt",
            (_, true) => "wrap",
            (_, false) => "unwrap",
        };
        if let Some(obj) = self.session_object(key) {
            let allowed = match what {
                "encrypt" => obj.encrypt,
                "decrypt" => obj.decrypt,
                "wrap" => obj.wrap,
                _ => obj.unwrap,
            };
            self.session_key_use(&obj, mech, Class::Secret, allowed, what)?;
            return Ok(AesKeys {
                asset: None,
                keys: vec![(0, obj.key_ref()?)],
                name: obj.name(),
            });
        }
        let (okey, asset) = self.object(key, CKR_KEY_HANDLE_INVALID)?;
        let view = View::resolve(&asset, &okey).ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
        check_key_type(&view, mech)?;
        let allowed = if producing {
            view.may_sign()
        } else {
            view.may_verify()
        };
        if !allowed {
            self.prune_keys(&asset);
            let why = format!(
                "object {:?} may not {what} (asset state {}, current version {})",
                view.label(),
                asset.state.name(),
                asset.current
            );
            let mut rec = Record::new(Event::Refused, CKR_KEY_FUNCTION_NOT_PERMITTED)
                .asset(asset.id.as_str(), Some(view.version))
                .session(h)
                .detail(format!("{what} refused: {why}"));
            rec.mechanism = Some(mech);
            self.audit(rec)?;
            return Err(Error::with(CKR_KEY_FUNCTION_NOT_PERMITTED, why));
        }
        let keys = if producing {
            if !self.still_logged_in(epoch) {
                return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
            }
            vec![(view.version, KeyRef::Derived(self.asset_key(&view, epoch)?))]
        } else {
            self.opening_keys(&view, epoch)?
        };
        Ok(AesKeys {
            asset: Some(asset.rowid),
            keys,
            name: asset.id.to_string(),
        })
    }

    fn crypt_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        key: CK_OBJECT_HANDLE,
        encrypting: bool,
    ) -> Result<()> {
        let session = self.session(h)?;
        let busy = |s: &Session| {
            if encrypting {
                s.encrypt.is_some()
            } else {
                s.decrypt.is_some()
            }
        };
        if busy(&lock(&session)) {
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        if mech.ty != CKM_AES_GCM {
            return Err(Error::rv(CKR_MECHANISM_INVALID));
        }
        let params = mech
            .gcm
            .clone()
            .ok_or(Error::rv(CKR_MECHANISM_PARAM_INVALID))?;
        let epoch = self.login_epoch.load(Ordering::SeqCst);
        let k = self.aes_keys(h, mech.ty, key, encrypting, epoch)?;
        let op = CryptOp {
            epoch,
            asset: k.asset,
            keys: k.keys,
            params,
            data: Zeroizing::new(Vec::new()),
            multi: false,
            audit: OpAudit::new(h, k.name, k.asset.is_none(), mech.ty),
        };
        self.start_crypt(&session, op, encrypting)
    }

    fn start_crypt(&self, session: &Mutex<Session>, op: CryptOp, encrypting: bool) -> Result<()> {
        let mut s = lock(session);
        let slot = if encrypting {
            &mut s.encrypt
        } else {
            &mut s.decrypt
        };
        if slot.is_some() {
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        if !self.still_logged_in(op.epoch) {
            return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
        }
        *slot = Some(op);
        Ok(())
    }

    pub fn encrypt_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.crypt_init(h, mech, key, true)
    }

    pub fn decrypt_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.crypt_init(h, mech, key, false)
    }

    /// The session's operation, if its login is still current (otherwise it
    /// is dropped): `C_*Update`/`C_*Final` and `C_Encrypt`/`C_Decrypt` share it.
    fn live_crypt<'s>(&self, s: &'s mut Session, encrypting: bool) -> Result<&'s mut CryptOp> {
        let slot = if encrypting {
            &mut s.encrypt
        } else {
            &mut s.decrypt
        };
        let epoch = slot
            .as_ref()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?
            .epoch;
        if !self.still_logged_in(epoch) {
            *slot = None;
            return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
        }
        slot.as_mut()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))
    }

    /// The output length of finishing with `more` further bytes of input.
    fn crypt_len(op: &CryptOp, more: usize, encrypting: bool) -> Result<usize> {
        let total = op.data.len() + more;
        if encrypting {
            Ok(total + op.params.tag_len)
        } else {
            total
                .checked_sub(op.params.tag_len)
                .ok_or(Error::rv(CKR_ENCRYPTED_DATA_LEN_RANGE))
        }
    }

    /// `C_Encrypt` / `C_Decrypt` (single part: `data`, `single` true) and
    /// `C_EncryptFinal` / `C_DecryptFinal` (`data` empty). `out` `None` asks
    /// for the length; a short buffer keeps the operation.
    fn crypt_finish(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
        encrypting: bool,
        single: bool,
    ) -> Result<usize> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        let op = self.live_crypt(&mut s, encrypting)?;
        if single && op.multi {
            if encrypting {
                s.encrypt = None;
            } else {
                s.decrypt = None;
            }
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        let len = match Self::crypt_len(op, data.len(), encrypting) {
            Ok(len) => len,
            Err(e) => {
                if encrypting {
                    s.encrypt = None;
                } else {
                    s.decrypt = None;
                }
                return Err(e);
            }
        };
        let Some(out) = out else { return Ok(len) };
        if out.len() < len {
            return Err(Error::rv(CKR_BUFFER_TOO_SMALL));
        }
        let mut op = if encrypting {
            s.encrypt.take()
        } else {
            s.decrypt.take()
        }
        .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        drop(s);
        append_wiped(&mut op.data, data);
        op.audit.input.update(data);
        if encrypting {
            self.complete_encrypt(&op, out)
        } else {
            self.complete_decrypt(&op, out)
        }
    }

    /// Seals, commits the record (the version must still encrypt), copies.
    fn complete_encrypt(&self, op: &CryptOp, out: &mut [u8]) -> Result<usize> {
        let (version, key) = &op.keys[0];
        let sealed = symmetric::gcm_seal(key.bytes(), &op.params, &op.data)?;
        let mut rec = op.audit.record(Event::Encrypt, CKR_OK, Some(*version));
        // The record ties the operation to its output: a hash of the
        // plaintext would let whoever reads the store test guesses of it.
        rec.input_sha256 = Some(Sha256::digest(&sealed).into());
        self.confirm(op.asset, *version, Use::Produce, rec)?;
        out[..sealed.len()].copy_from_slice(&sealed);
        Ok(sealed.len())
    }

    /// Opens with the first key whose tag matches, commits the record (that
    /// version must still decrypt), and only then copies the plaintext out.
    /// A failure is recorded too.
    fn complete_decrypt(&self, op: &CryptOp, out: &mut [u8]) -> Result<usize> {
        let Some(rowid) = op.asset else {
            // A session key: no asset state; the outcome is recorded either way.
            let opened = symmetric::gcm_open(op.keys[0].1.bytes(), &op.params, &op.data);
            let rv = opened.as_ref().map_or_else(|e| e.rv, |_| CKR_OK);
            self.audit(op.audit.record(Event::Decrypt, rv, None))?;
            let plain = opened?;
            out[..plain.len()].copy_from_slice(&plain);
            return Ok(plain.len());
        };
        let fresh = self.store.fresh_state(rowid).map_err(store_error)?;
        let gone = match &fresh {
            None => true,
            Some(asset) => !op.keys.iter().any(|(v, _)| asset.is_usable(*v)),
        };
        let Some(asset) = fresh.filter(|_| !gone) else {
            // Retired or trimmed since C_DecryptInit: the key is gone.
            let rv = CKR_KEY_HANDLE_INVALID;
            self.audit(
                op.audit
                    .record(Event::Decrypt, rv, None)
                    .detail("decrypt: key gone"),
            )?;
            return Err(Error::rv(rv));
        };
        let mut plain = None;
        let opened = self.open_with(&asset, &op.keys, |key| {
            plain = Some(symmetric::gcm_open(key.bytes(), &op.params, &op.data)?);
            Ok(())
        });
        match (opened, plain) {
            (Ok(version), Some(plain)) => {
                let rec = op.audit.record(Event::Decrypt, CKR_OK, Some(version));
                self.confirm(op.asset, version, Use::Open, rec)?;
                out[..plain.len()].copy_from_slice(&plain);
                Ok(plain.len())
            }
            (Err(e), _) => {
                let rec = if e.rv == CKR_KEY_FUNCTION_NOT_PERMITTED {
                    op.audit
                        .record(Event::Refused, e.rv, None)
                        .detail("decrypt refused by state")
                } else {
                    op.audit.record(Event::Decrypt, e.rv, None)
                };
                self.audit(rec)?;
                Err(e)
            }
            (Ok(_), None) => Err(Error::rv(CKR_GENERAL_ERROR)),
        }
    }

    /// Keeps a part (`consume`), or only answers a length query: no output
    /// before the final call, either way.
    fn crypt_update(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        encrypting: bool,
        consume: bool,
    ) -> Result<usize> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        let op = self.live_crypt(&mut s, encrypting)?;
        if !consume {
            return Ok(0);
        }
        append_wiped(&mut op.data, data);
        op.audit.input.update(data);
        op.multi = true;
        Ok(0)
    }

    pub fn encrypt(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.crypt_finish(h, data, out, true, true)
    }

    /// `C_EncryptUpdate`: the parts are kept; all output comes at the end.
    pub fn encrypt_update(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        consume: bool,
    ) -> Result<usize> {
        self.crypt_update(h, data, true, consume)
    }

    pub fn encrypt_final(&self, h: CK_SESSION_HANDLE, out: Option<&mut [u8]>) -> Result<usize> {
        self.crypt_finish(h, &[], out, true, false)
    }

    pub fn decrypt(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.crypt_finish(h, data, out, false, true)
    }

    /// `C_DecryptUpdate`: nothing is released before the tag is checked.
    pub fn decrypt_update(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        consume: bool,
    ) -> Result<usize> {
        self.crypt_update(h, data, false, consume)
    }

    pub fn decrypt_final(&self, h: CK_SESSION_HANDLE, out: Option<&mut [u8]>) -> Result<usize> {
        self.crypt_finish(h, &[], out, false, false)
    }
}

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
        let epoch = self.login_epoch.load(Ordering::SeqCst);
        let k = self
            .aes_keys(h, mech.ty, wrapping, true, epoch)
            .map_err(|e| wrapping_error(e, true))?;
        let (version, kek) = &k.keys[0];
        let wrapped = symmetric::key_wrap(kek.bytes(), secret.bytes(), padded)?;
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
        let epoch = self.login_epoch.load(Ordering::SeqCst);
        let k = self
            .aes_keys(h, mech.ty, unwrapping, false, epoch)
            .map_err(|e| wrapping_error(e, false))?;
        let audit = OpAudit::new(h, k.name.clone(), k.asset.is_none(), mech.ty);
        let mut audit = audit;
        audit.input.update(wrapped);
        let mut key = None;
        let opened = match k.asset {
            Some(rowid) => {
                let asset = self
                    .store
                    .fresh_state(rowid)
                    .map_err(store_error)?
                    .ok_or(Error::rv(CKR_UNWRAPPING_KEY_HANDLE_INVALID))?;
                self.open_with(&asset, &k.keys, |kek| {
                    key = Some(symmetric::key_unwrap(kek.bytes(), wrapped, padded).map_err(
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
            None => symmetric::key_unwrap(k.keys[0].1.bytes(), wrapped, padded).map(|s| {
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

/// What a `C_GenerateKey` template asks for.
struct SecretKeySpec {
    asset: AssetId,
    object_id: Option<Vec<u8>>,
}

impl SecretKeySpec {
    fn from_template(t: &[TemplateAttr], kt: KeyType) -> Result<SecretKeySpec> {
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
