//! Secret-key assets: `C_GenerateKey` of AES-256 and HMAC assets, and AES-GCM encryption and decryption.
//!
//! Single- and multi-part, with the helpers HMAC signing and verification
//! and key wrapping share with them.
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
use crate::access::{Action, UseKind};
use crate::mechanisms::aes_modes::Mode;
use crate::types::HmacHash;

/// An encryption or decryption in progress.
pub(super) struct CryptOp {
    epoch: u64,
    /// `None`: a session key.
    asset: Option<i64>,
    /// The keys it may use, newest first: one to encrypt; to decrypt, every
    /// version the object may open (a session key: itself, as version 0).
    keys: VersionKeys,
    params: GcmParams,
    /// A session key's used IVs (`None`: a derived key; the store keeps
    /// those).
    ivs: Option<session::UsedIvs>,
    /// Parts given to C_EncryptUpdate/C_DecryptUpdate: GCM releases nothing
    /// before the tag is checked, so everything is processed at the end.
    data: Zeroizing<Vec<u8>>,
    multi: bool,
    audit: OpAudit,
}

impl CryptOp {
    /// One message of the message-based API (`message.rs`): a single-part
    /// GCM operation over `data` (plaintext, or ciphertext ‖ tag).
    pub(super) fn message(
        epoch: u64,
        asset: Option<i64>,
        keys: VersionKeys,
        params: GcmParams,
        ivs: Option<session::UsedIvs>,
        data: &[u8],
        audit: OpAudit,
    ) -> CryptOp {
        CryptOp {
            epoch,
            asset,
            keys,
            params,
            ivs,
            data: Zeroizing::new(data.to_vec()),
            multi: false,
            audit,
        }
    }
}

/// The longest IV an encryption may use: each one is recorded (in its
/// audit record and, under a derived key, in the store's `gcm_ivs`).
pub(super) const MAX_RECORDED_IV: usize = 128;

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

/// What runs in a session's encryption or decryption slot: AES-GCM, or
/// one of the block modes (`modes.rs`).
pub(super) enum Crypt {
    Gcm(CryptOp),
    Block(modes::BlockOp),
}

fn gcm_op(op: &mut Crypt) -> Result<&mut CryptOp> {
    match op {
        Crypt::Gcm(g) => Ok(g),
        Crypt::Block(_) => Err(Error::rv(CKR_OPERATION_NOT_INITIALIZED)),
    }
}

/// The session's encryption or decryption slot.
pub(super) fn crypt_slot(s: &mut Session, encrypting: bool) -> &mut OpSlot<Crypt> {
    if encrypting {
        &mut s.encrypt
    } else {
        &mut s.decrypt
    }
}

/// The AES keys an operation may use, and whose they are.
pub(super) struct AesKeys {
    /// `None`: a session key.
    pub(super) asset: Option<i64>,
    pub(super) keys: VersionKeys,
    /// The asset id, or the session key's description.
    pub(super) name: String,
    /// A session key's used GCM IVs.
    pub(super) ivs: Option<session::UsedIvs>,
    /// A public session key (`CKA_PRIVATE` false, its value the caller's):
    /// usable in a public session, as PKCS#11 has it (block modes).
    pub(super) public: bool,
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

/// The key type a token key of `C_GenerateKey` mechanism `mech` has when
/// the template gives no `CKA_VALUE_LEN` (`None`: not a secret key
/// generation mechanism p11derive has).
pub(super) fn secret_gen_default(mech: CK_MECHANISM_TYPE) -> Option<KeyType> {
    let hmac = |hash: HmacHash| KeyType::Hmac(hash, hash.output_len());
    Some(match mech {
        CKM_AES_KEY_GEN => KeyType::Aes256,
        CKM_GENERIC_SECRET_KEY_GEN => KeyType::HmacSha256,
        CKM_SHA_1_KEY_GEN => hmac(HmacHash::Sha1),
        CKM_SHA224_KEY_GEN => hmac(HmacHash::Sha224),
        CKM_SHA256_KEY_GEN => hmac(HmacHash::Sha256),
        CKM_SHA384_KEY_GEN => hmac(HmacHash::Sha384),
        CKM_SHA512_KEY_GEN => hmac(HmacHash::Sha512),
        _ => return None,
    })
}

/// The asset key type of a token key `C_GenerateKey` makes with `mech`:
/// its default, or the length `CKA_VALUE_LEN` asks (AES 16, 24 or 32
/// bytes; generic and HMAC keys 16 to 64; a generic secret of 32 is
/// `hmac-sha256`, as it has always been).
pub(super) fn secret_key_type(mech: CK_MECHANISM_TYPE, t: &[TemplateAttr]) -> Result<KeyType> {
    let default = secret_gen_default(mech).ok_or(Error::rv(CKR_MECHANISM_INVALID))?;
    let Some(raw) = find(t, CKA_VALUE_LEN) else {
        return Ok(default);
    };
    let mech_name = crate::error::mech_name(mech);
    let len = ulong(raw).ok_or_else(|| {
        Error::with(
            CKR_ATTRIBUTE_VALUE_INVALID,
            format!("{mech_name}: CKA_VALUE_LEN must be a CK_ULONG"),
        )
    })?;
    let secret_len = u8::try_from(len)
        .ok()
        .filter(|l| crate::types::SECRET_LENS.contains(l));
    let kt = match (default, len, secret_len) {
        (KeyType::Aes256, 16, _) => Some(KeyType::Aes128),
        (KeyType::Aes256, 24, _) => Some(KeyType::Aes192),
        (KeyType::Aes256, 32, _) => Some(KeyType::Aes256),
        (KeyType::Aes256, _, _) => None,
        (KeyType::HmacSha256, 32, _) => Some(KeyType::HmacSha256),
        (KeyType::HmacSha256, _, Some(l)) => Some(KeyType::Generic(l)),
        (KeyType::Hmac(hash, _), _, Some(l)) => Some(KeyType::Hmac(hash, l)),
        _ => None,
    };
    kt.ok_or_else(|| {
        let allowed = if default.is_aes() {
            "16, 24 or 32 (AES-128, AES-192, AES-256)"
        } else {
            "16 to 64"
        };
        Error::with(
            CKR_ATTRIBUTE_VALUE_INVALID,
            format!(
                "{mech_name}: CKA_VALUE_LEN {len} is not a length of a derived key; token keys of \
                 this mechanism are {allowed} bytes"
            ),
        )
    })
}

impl Provider {
    /// The derived keys a decryption or verification through `view` may use,
    /// newest first: through the alias every version that may open now,
    /// through a version object its own.
    pub(super) fn opening_keys(
        &self,
        view: &View,
        epoch: u64,
        purpose: Purpose,
    ) -> Result<VersionKeys> {
        self.live(epoch)?;
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
            keys.push((n, KeyRef::Derived(self.purpose_key(&one, epoch, purpose)?)));
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

    /// `C_GenerateKey` with `CKA_TOKEN=true`: registers an AES
    /// (`CKM_AES_KEY_GEN`), generic secret (`CKM_GENERIC_SECRET_KEY_GEN`) or
    /// `CKK_SHAx_HMAC` (`CKM_SHAx_KEY_GEN`) asset of the length
    /// `CKA_VALUE_LEN` asks, named by `CKA_LABEL`, and returns its alias.
    pub fn generate_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        template: &[TemplateAttr],
    ) -> Result<CK_OBJECT_HANDLE> {
        let session = self.session(h)?;
        if secret_gen_default(mech.ty).is_none() {
            return Err(Error::rv(CKR_MECHANISM_INVALID));
        }
        if !mech.param.is_empty() {
            return Err(Error::rv(CKR_MECHANISM_PARAM_INVALID));
        }
        if find(template, CKA_TOKEN) != Some(&[CK_TRUE as u8][..]) {
            return self.generate_session_key(h, mech, template);
        }
        let key_type = secret_key_type(mech.ty, template)?;
        let named = self.with_default_label(&[template])?;
        let spec = SecretKeySpec::from_template(&named[0], key_type)?;
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
    pub(super) fn aes_keys(
        &self,
        h: CK_SESSION_HANDLE,
        mech: CK_MECHANISM_TYPE,
        key: CK_OBJECT_HANDLE,
        producing: bool,
        epoch: u64,
    ) -> Result<AesKeys> {
        let block_mode = Mode::of(mech).is_some();
        let what = match (mech == CKM_AES_GCM || block_mode, producing) {
            (true, true) => "encrypt",
            (true, false) => "decrypt",
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
            self.permit(h, Action::Use(use_kind(what)), None, Some(mech))?;
            return Ok(AesKeys {
                asset: None,
                keys: vec![(0, obj.key_ref()?)],
                name: obj.name(),
                ivs: Some(obj.ivs.clone()),
                public: obj.is_public_session_key(),
            });
        }
        let (okey, asset) = self.object(key, CKR_KEY_HANDLE_INVALID)?;
        let view = View::resolve(&asset, &okey).ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
        check_key_type(&view, mech)?;
        let kind = use_kind(what);
        self.permit(h, Action::Use(kind), Some(asset.id.as_str()), Some(mech))?;
        self.check_policy(h, kind, asset.id.as_str(), Some(view.version), mech)?;
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
            self.audit_refusal(h, mech, &view, format!("{what} refused: {why}"))?;
            return Err(Error::with(CKR_KEY_FUNCTION_NOT_PERMITTED, why));
        }
        // Key wrap uses the version's wrap subkey, never the GCM key K.
        // The block modes use a subkey of K (`modes.rs`).
        let purpose = if mech == CKM_AES_GCM || block_mode {
            Purpose::Key
        } else {
            Purpose::Wrap
        };
        // Block modes have no tag to try keys with: the object's own version.
        let keys = if producing || block_mode {
            self.live(epoch)?;
            let key = self.purpose_key(&view, epoch, purpose)?;
            vec![(view.version, KeyRef::Derived(key))]
        } else {
            self.opening_keys(&view, epoch, purpose)?
        };
        Ok(AesKeys {
            asset: Some(asset.rowid),
            keys,
            name: asset.id.to_string(),
            ivs: None,
            public: false,
        })
    }

    /// Tags under 96 bits only for a client `[gcm] short_tag_clients` names
    /// (SP 800-38D, Appendix C: 32- and 64-bit tags are for special
    /// applications, with limits a generic token cannot check).
    pub(super) fn check_tag_len(&self, params: &GcmParams) -> Result<()> {
        if params.tag_len >= 12 {
            return Ok(());
        }
        if let Some(name) = self.config.gcm.short_tags_allowed_for() {
            log::debug(&format!(
                "CKM_AES_GCM: a {}-bit tag for {name:?}, allowed by [gcm] short_tag_clients",
                params.tag_len * 8
            ));
            return Ok(());
        }
        Err(Error::with(
            CKR_MECHANISM_PARAM_INVALID,
            format!(
                "CKM_AES_GCM: ulTagBits {} is under 96; this process ({}) is not listed in [gcm] \
                 short_tag_clients of config file {}: use a tag of 96 to 128 bits, or list the \
                 legacy client there",
                params.tag_len * 8,
                crate::config::process_names().join(" / "),
                self.config.source.display()
            ),
        ))
    }

    /// `C_EncryptInit` (`encrypting`) or `C_DecryptInit`.
    pub fn crypt_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        key: CK_OBJECT_HANDLE,
        encrypting: bool,
    ) -> Result<()> {
        if Mode::of(mech.ty).is_some() {
            return self.block_init(h, mech, key, encrypting);
        }
        let session = self.idle_session(h, |s| crypt_slot(s, encrypting))?;
        // An RSA mechanism with a secret key: the key cannot serve it,
        // whatever p11derive implements (RSA is not implemented).
        let rsa = matches!(mech.ty, CKM_RSA_PKCS | CKM_RSA_PKCS_OAEP | CKM_RSA_X_509);
        if rsa
            && (self.session_object(key).is_some()
                || self.object(key, CKR_KEY_HANDLE_INVALID).is_ok())
        {
            return Err(Error::with(
                CKR_KEY_TYPE_INCONSISTENT,
                format!(
                    "{} needs an RSA key; object {key} is not one (p11derive has no RSA keys)",
                    crate::error::mech_name(mech.ty)
                ),
            ));
        }
        if mech.ty != CKM_AES_GCM {
            return Err(Error::rv(CKR_MECHANISM_INVALID));
        }
        let params = mech
            .gcm
            .clone()
            .ok_or(Error::rv(CKR_MECHANISM_PARAM_INVALID))?;
        self.check_tag_len(&params)?;
        if encrypting && params.iv.len() > MAX_RECORDED_IV {
            return Err(Error::with(
                CKR_MECHANISM_PARAM_INVALID,
                format!(
                    "CKM_AES_GCM: a {}-byte IV; every encryption's IV is recorded to refuse \
                     repeats, so p11derive encrypts under IVs of at most {MAX_RECORDED_IV} bytes \
                     (12 is what SP 800-38D recommends)",
                    params.iv.len()
                ),
            ));
        }
        let epoch = self.login.epoch();
        let k = self.aes_keys(h, mech.ty, key, encrypting, epoch)?;
        let op = CryptOp {
            epoch,
            asset: k.asset,
            keys: k.keys,
            params,
            ivs: k.ivs,
            data: Zeroizing::new(Vec::new()),
            multi: false,
            audit: OpAudit::new(h, k.name, k.asset.is_none(), mech.ty),
        };
        let mut s = lock(&session);
        let slot = crypt_slot(&mut s, encrypting);
        slot.ensure_idle()?;
        self.live(op.epoch)?;
        slot.start(Crypt::Gcm(op))
    }

    /// Whether the session's running encryption (decryption) is one of the
    /// block modes.
    fn block_running(&self, h: CK_SESSION_HANDLE, encrypting: bool) -> Result<bool> {
        self.in_session(h, |s| {
            crypt_slot(s, encrypting).with(|op| Ok(matches!(op, Crypt::Block(_))))
        })
    }

    /// Ends the running encryption (decryption), if any: a call refused
    /// before it reached the operation (bad arguments) ends it too.
    pub fn crypt_end(&self, h: CK_SESSION_HANDLE, encrypting: bool) {
        let _ = self.in_session(h, |s| {
            crypt_slot(s, encrypting).end();
            Ok(())
        });
    }

    /// The output length of finishing with `more` further bytes of input.
    fn crypt_len(op: &CryptOp, more: usize, encrypting: bool) -> Result<usize> {
        let total = op.data.len().saturating_add(more);
        // The data one GCM operation may process (a length query and the
        // call itself answer alike).
        let data = if encrypting {
            total
        } else {
            total
                .checked_sub(op.params.tag_len)
                .ok_or(Error::rv(CKR_ENCRYPTED_DATA_LEN_RANGE))?
        };
        gcm::check_data_len(data, encrypting)?;
        Ok(if encrypting {
            data + op.params.tag_len
        } else {
            data
        })
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
        let done = self.in_session(h, |s| {
            crypt_slot(s, encrypting).finish(out, |op| {
                let op = gcm_op(op)?;
                self.live(op.epoch)?;
                if single && op.multi {
                    return Err(Error::rv(CKR_OPERATION_ACTIVE));
                }
                Self::crypt_len(op, data.len(), encrypting)
            })
        })?;
        let (op, out) = match done {
            Output::Length(len) => return Ok(len),
            Output::Ready(op, out) => (op, out),
        };
        let Crypt::Gcm(mut op) = op else {
            return Err(Error::rv(CKR_OPERATION_NOT_INITIALIZED));
        };
        append_wiped(&mut op.data, data);
        op.audit.input.update(data);
        if encrypting {
            self.complete_encrypt(&op, out)
        } else {
            self.complete_decrypt(&op, out)
        }
    }

    /// Seals, commits the record (the version must still encrypt, and never
    /// used this IV), copies.
    pub(super) fn complete_encrypt(&self, op: &CryptOp, out: &mut [u8]) -> Result<usize> {
        let _timed = op.audit.clock.finishing(Operation::Encrypt);
        let (version, key) = &op.keys[0];
        let iv = &op.params.iv;
        if let Some(ivs) = &op.ivs {
            // A session key: its used IVs are in memory, with it.
            if !lock(ivs).insert(iv.clone()) {
                let rec = op
                    .audit
                    .record(Event::Refused, CKR_MECHANISM_PARAM_INVALID, None);
                let detail = format!(
                    "{}; encrypt refused: GCM IV already used under this key; iv={}",
                    rec.detail,
                    crate::store::hex(iv)
                );
                self.audit(rec.detail(detail))?;
                return Err(Error::with(
                    CKR_MECHANISM_PARAM_INVALID,
                    format!(
                        "CKM_AES_GCM: IV {} was already used under {}; a GCM IV may never repeat \
                         under one key: give each encryption a fresh IV",
                        crate::store::hex(iv),
                        op.audit.name()
                    ),
                ));
            }
        }
        let sealed = gcm::gcm_seal(key.bytes(), &op.params, &op.data)?;
        let rec = op.audit.record(Event::Encrypt, CKR_OK, Some(*version));
        // The IV goes in the record: the store refuses its repeat, and an
        // auditor sees which IV each ciphertext used.
        let detail = match rec.detail.as_str() {
            "" => format!("iv={}", crate::store::hex(iv)),
            d => format!("{d}; iv={}", crate::store::hex(iv)),
        };
        let mut rec = rec.detail(detail);
        // The record ties the operation to its output: a hash of the
        // plaintext would let whoever reads the store test guesses of it.
        rec.input_sha256 = Some(Sha256::digest(&sealed).into());
        self.confirm_seal(op.asset, *version, iv, rec)?;
        out[..sealed.len()].copy_from_slice(&sealed);
        Ok(sealed.len())
    }

    /// Opens with the first key whose tag matches, commits the record (that
    /// version must still decrypt), and only then copies the plaintext out.
    /// A failure is recorded too.
    pub(super) fn complete_decrypt(&self, op: &CryptOp, out: &mut [u8]) -> Result<usize> {
        let _timed = op.audit.clock.finishing(Operation::Decrypt);
        let Some(rowid) = op.asset else {
            // A session key: no asset state; the outcome is recorded either way.
            let opened = gcm::gcm_open(op.keys[0].1.bytes(), &op.params, &op.data);
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
            plain = Some(gcm::gcm_open(key.bytes(), &op.params, &op.data)?);
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
        self.in_session(h, |s| {
            crypt_slot(s, encrypting).with(|op| {
                let op = gcm_op(op)?;
                self.live(op.epoch)?;
                if consume {
                    // The parts are kept until the final call: refuse, before
                    // keeping them, more than one GCM operation may process
                    // (its 32-bit counter would wrap; the tag follows the
                    // ciphertext when decrypting).
                    let kept = op.data.len().saturating_add(data.len());
                    let tag = if encrypting { 0 } else { op.params.tag_len };
                    gcm::check_data_len(kept.saturating_sub(tag), encrypting)?;
                    append_wiped(&mut op.data, data);
                    op.audit.input.update(data);
                    op.multi = true;
                    op.audit.clock.part();
                }
                Ok(0)
            })
        })
    }

    /// `C_Encrypt` (`encrypting`) or `C_Decrypt`: the whole input in one call.
    pub fn crypt(
        &self,
        h: CK_SESSION_HANDLE,
        encrypting: bool,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        if self.block_running(h, encrypting)? {
            return self.block_finish(h, data, out, encrypting, true);
        }
        self.crypt_finish(h, data, out, encrypting, true)
    }

    /// `C_EncryptUpdate` (`encrypting`) or `C_DecryptUpdate`; `out` `None`
    /// asks for the output length. GCM keeps the parts, all its output comes
    /// at the end (a decryption releases nothing before the tag is
    /// checked); the block modes release the blocks each part completes.
    pub fn crypt_part(
        &self,
        h: CK_SESSION_HANDLE,
        encrypting: bool,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        if self.block_running(h, encrypting)? {
            return self.block_update(h, encrypting, data, out);
        }
        self.crypt_update(h, data, encrypting, out.is_some())
    }

    /// `C_EncryptFinal` (`encrypting`) or `C_DecryptFinal`.
    pub fn crypt_final(
        &self,
        h: CK_SESSION_HANDLE,
        encrypting: bool,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        if self.block_running(h, encrypting)? {
            return self.block_finish(h, &[], out, encrypting, false);
        }
        self.crypt_finish(h, &[], out, encrypting, false)
    }
}

/// The use an AES operation makes of its key, by its name.
fn use_kind(what: &str) -> UseKind {
    match what {
        "encrypt" => UseKind::Encrypt,
        "decrypt" => UseKind::Decrypt,
        "wrap" => UseKind::Wrap,
        _ => UseKind::Unwrap,
    }
}
