//! Signing and verification (ECDSA, HMAC; single- and multi-part), the derived-key cache they draw on, and the commit of every result.

#![forbid(unsafe_code)]

use super::*;
use crate::access::{Action, UseKind};
use crate::mechanisms::aes_modes;
use crate::secure::SecretBytes;

/// How a signature mechanism treats its key and input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alg {
    /// ECDSA over a digest (hashed by the mechanism, or raw `CKM_ECDSA`).
    Ecdsa,
    /// HMAC with a secret key.
    Hmac(CK_MECHANISM_TYPE),
    /// AES-CMAC with an AES key (a derived one's CMAC subkey), the MAC
    /// cut to this many bytes.
    Cmac(usize),
    /// Pure Ed25519 over the whole message.
    EdDsa,
    /// Recoverable ECDSA over a 32-byte digest: `r || s || v`.
    Recoverable,
    /// BIP-340 Schnorr over the whole message.
    Schnorr,
}

impl Alg {
    /// The mechanism's algorithm, the hasher of an ECDSA mechanism that
    /// hashes, and whether the input is kept whole until the end (HMAC,
    /// Ed25519 and BIP-340 take the message, not a digest).
    fn of(mech: &Mechanism) -> Result<(Alg, Option<Hasher>, bool)> {
        let alg = match mech.ty {
            m if hmac::hmac_len(m).is_some() => Alg::Hmac(m),
            CKM_AES_CMAC | CKM_AES_CMAC_GENERAL => {
                Alg::Cmac(aes_modes::cmac_len(mech.ty, &mech.param)?)
            }
            CKM_EDDSA => Alg::EdDsa,
            CKM_P11DERIVE_ECDSA_RECOVERABLE => Alg::Recoverable,
            CKM_P11DERIVE_BIP340 => Alg::Schnorr,
            _ => Alg::Ecdsa,
        };
        let hasher = match alg {
            Alg::Ecdsa => mechanisms::ecdsa_hasher(mech.ty)?,
            _ => None,
        };
        if alg == Alg::EdDsa {
            mechanisms::eddsa::check_eddsa_param(&mech.param)?;
        } else if !matches!(alg, Alg::Cmac(_)) && !mech.param.is_empty() {
            return Err(Error::rv(CKR_MECHANISM_PARAM_INVALID));
        }
        let whole = matches!(alg, Alg::Hmac(_) | Alg::Cmac(_) | Alg::EdDsa | Alg::Schnorr);
        Ok((alg, hasher, whole))
    }

    fn hmac(self) -> Option<CK_MECHANISM_TYPE> {
        match self {
            Alg::Hmac(m) => Some(m),
            Alg::Cmac(_) => Some(CKM_AES_CMAC),
            _ => None,
        }
    }

    /// The length of a signature by a `kt` key.
    fn sig_len(self, kt: KeyType) -> usize {
        match self {
            Alg::Hmac(m) => hmac::hmac_len(m).unwrap_or(0),
            Alg::Cmac(len) => len,
            Alg::Recoverable => mechanisms::recoverable::RECOVERABLE_SIG_LEN,
            Alg::Ecdsa => mechanisms::ecdsa_sig_len(kt),
            Alg::EdDsa => mechanisms::eddsa::EDDSA_SIG_LEN,
            Alg::Schnorr => mechanisms::schnorr::SCHNORR_SIG_LEN,
        }
    }

    /// Verifies a public-key signature (not HMAC) against one public key.
    fn verify(self, kt: KeyType, point: &[u8], input: &[u8], sig: &[u8]) -> Result<()> {
        match self {
            Alg::Ecdsa => mechanisms::ecdsa_verify(kt, point, input, sig),
            Alg::EdDsa => mechanisms::eddsa::ed25519_verify(point, input, sig),
            Alg::Recoverable => mechanisms::recoverable::recoverable_verify(point, input, sig),
            Alg::Schnorr => mechanisms::schnorr::schnorr_verify(point, input, sig),
            Alg::Hmac(_) | Alg::Cmac(_) => Err(Error::rv(CKR_KEY_TYPE_INCONSISTENT)),
        }
    }

    /// Verifies a MAC (HMAC or CMAC) with one secret key.
    fn mac_verify(self, key: &[u8], msg: &[u8], sig: &[u8]) -> Result<()> {
        match self {
            Alg::Hmac(m) => hmac::hmac_verify(m, key, msg, sig),
            Alg::Cmac(len) => aes_modes::cmac_verify(key, msg, len, sig),
            _ => Err(Error::rv(CKR_KEY_TYPE_INCONSISTENT)),
        }
    }

    /// The key a MAC uses: a derived AES key's CMAC subkey (design:
    /// `aes_modes::subkey`), any other key as it is.
    fn mac_key(self, key: KeyRef, derived: bool) -> Result<KeyRef> {
        match self {
            Alg::Cmac(_) if derived => Ok(KeyRef::Session(Arc::new(aes_modes::subkey(
                key.bytes(),
                aes_modes::CMAC_INFO,
            )?))),
            _ => Ok(key),
        }
    }
}

pub(super) struct SignOp {
    /// The login epoch this operation began in; `None` for a public
    /// session key, which PKCS#11 lets a session use without a login.
    epoch: Option<u64>,
    /// The asset (row id) and version whose key this is: re-checked against
    /// the store before the signature leaves. `None`: a session key.
    asset: Option<i64>,
    version: u32,
    kt: KeyType,
    /// The key, in the locked arena (a derived one shared with the cache).
    key: KeyRef,
    alg: Alg,
    msg: Message,
    /// For the audit record: what signs, how, for which session, and the
    /// SHA-256 of everything given to sign.
    audit: OpAudit,
}

impl SignOp {
    fn out_len(&self) -> usize {
        self.alg.sig_len(self.kt)
    }
}

/// Derived keys of an asset's versions, newest first.
pub(super) type VersionKeys = Vec<(u32, KeyRef)>;

pub(super) struct VerifyOp {
    /// `None`: a session key.
    asset: Option<i64>,
    kt: KeyType,
    alg: Alg,
    /// The versions this verification may use and their public points,
    /// newest first.
    points: Vec<(u32, Vec<u8>)>,
    /// HMAC verification (secret keys): the mechanism, the login epoch
    /// (`None`: a public session key, usable without a login) and the
    /// derived keys of the versions it may use, newest first.
    pub hmac: Option<(CK_MECHANISM_TYPE, Option<u64>, VersionKeys)>,
    msg: Message,
    audit: OpAudit,
}

/// A recorded public key (or check value) and its MAC, verified.
type VerifiedKey = (Vec<u8>, Option<Vec<u8>>);

/// A cached key and when it was derived: in the locked arena, of the
/// asset type's length (16 to 66 bytes; a wrap subkey or chain code 32).
type CachedKey = (Arc<SecretBytes>, std::time::Instant);

/// A 32-byte secret moved into a locked buffer of the cache's kind.
fn locked(s: Secret32) -> Result<SecretBytes> {
    let mut b = SecretBytes::with_capacity(32).map_err(|m| Error::with(CKR_HOST_MEMORY, m))?;
    b.push(&s[..]);
    Ok(b)
}

/// Which key of an asset version: its key `K` (design §2), the AES key
/// wrap subkey `W` derived beside it (`derive::WRAP_INFO`), so that key wrap
/// and AES-GCM never share key bytes, or the chain code `CC` of a key pair
/// (design §6.1), the master of its HD tree with `K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Purpose {
    Key,
    Wrap,
    Chain,
}

/// Derived keys kept between operations, and the public keys already
/// checked against their MAC.
#[derive(Default)]
pub(super) struct KeyCache {
    /// Derived keys by (asset row id, version, purpose), in the locked
    /// arena, with the moment it was derived; see `asset_key`.
    cache: Mutex<HashMap<(i64, u32, Purpose), CachedKey>>,
    /// Keys derived through the backing HSM so far (each one a PRF call).
    derivations: AtomicU64,
    /// By (asset row, version): the public key (or check value) and MAC
    /// that last verified under the audit key; see `check_public_keys`.
    verified: Mutex<HashMap<(i64, u32), VerifiedKey>>,
}

impl KeyCache {
    /// Drops (wipes) every cached key.
    pub fn clear(&self) {
        lock(&self.cache).clear();
    }

    /// Keys cached now (expired ones not yet dropped included).
    pub fn cached(&self) -> usize {
        lock(&self.cache).len()
    }

    pub fn derivations(&self) -> u64 {
        self.derivations.load(Ordering::Relaxed)
    }

    /// Whether this (key, MAC) pair of an asset version was verified before.
    pub fn verified(&self, slot: (i64, u32), key: &[u8], mac: &Option<Vec<u8>>) -> bool {
        lock(&self.verified)
            .get(&slot)
            .is_some_and(|(k, m)| k == key && m == mac)
    }

    pub fn mark_verified(&self, slot: (i64, u32), key: Vec<u8>, mac: Option<Vec<u8>>) {
        lock(&self.verified).insert(slot, (key, mac));
    }

    /// Drops (wipes) the cached keys of an asset's versions that may no
    /// longer sign.
    fn prune(&self, asset: &Asset) {
        lock(&self.cache)
            .retain(|(rowid, v, _), _| *rowid != asset.rowid || asset.may_hold_key(*v));
    }
}

impl Provider {
    // ---- signing and verification -----------------------------------------

    /// The key of an asset version: from the cache while its entry is fresh
    /// (no backing HSM call), otherwise derived through the HSM, checked
    /// against the recorded public key (a store paired with the wrong root
    /// can never sign with keys nobody registered), and cached for
    /// `[cache] ttl_seconds` (or `ttl_ms`).
    pub(super) fn asset_key(&self, view: &View, epoch: u64) -> Result<Arc<SecretBytes>> {
        self.purpose_key(view, epoch, Purpose::Key)
    }

    /// The key of an asset version for `purpose`, as `asset_key` does: one
    /// derivation (one PRF call) yields `K` with an AES version's wrap
    /// subkey `W` or a key pair's chain code `CC`, and caches both.
    pub(super) fn purpose_key(
        &self,
        view: &View,
        epoch: u64,
        purpose: Purpose,
    ) -> Result<Arc<SecretBytes>> {
        let slot = (view.asset.rowid, view.version, purpose);
        let ttl = self.config.cache.ttl();
        {
            let mut cache = lock(&self.keys.cache);
            // One pass drops (wipes) expired entries and, for this asset as the
            // store shows it now, versions that may no longer sign.
            let asset = view.asset;
            cache.retain(|(rowid, v, _), (_, at)| {
                at.elapsed() < ttl && (*rowid != asset.rowid || asset.may_hold_key(*v))
            });
            if let Some((key, _)) = cache.get(&slot) {
                proc_metrics::key_lookup(true);
                return Ok(key.clone());
            }
        }
        proc_metrics::key_lookup(false);
        let kt = view.asset.key_type;
        let keys = derive::derive_version(&self.backend, &view.asset.id, view.version, kt)?;
        self.keys.derivations.fetch_add(1, Ordering::Relaxed);
        let derived = mechanisms::fingerprint(kt, &keys.key);
        let recorded = view
            .asset
            .version(view.version)
            .and_then(|v| v.public_key.as_deref());
        if derived.as_deref() != recorded {
            return Err(Error::with(
                CKR_DEVICE_ERROR,
                format!(
                    "asset {:?} version {}: the key derived from the backing HSM's root does not \
                     match the public key (or check value) recorded in store {}; the store \
                     belongs to another root: check [backend] root_label and [store] path",
                    view.asset.id.as_str(),
                    view.version,
                    self.store.path().display()
                ),
            ));
        }
        let key = Arc::new(keys.key);
        // The second key of the version: W of an AES key, CC of a key pair.
        let (second, other) = match (keys.wrap, keys.chain) {
            (Some(w), _) => (Some(Arc::new(locked(w)?)), Purpose::Wrap),
            (None, Some(c)) => (Some(Arc::new(locked(c)?)), Purpose::Chain),
            (None, None) => (None, Purpose::Wrap),
        };
        let wanted = match (purpose, &second) {
            (Purpose::Key, _) => key.clone(),
            (p, Some(s)) if p == other => s.clone(),
            _ => return Err(Error::rv(CKR_KEY_TYPE_INCONSISTENT)),
        };
        if !ttl.is_zero() {
            // Only while the login the key was derived under is still current:
            // a logout flips the state before it clears the cache, so a key
            // derived across a logout is never cached past it.
            let mut cache = lock(&self.keys.cache);
            // Only keys of versions that may sign are kept: a chain code read
            // (or an opening) of an older version derives without caching.
            if self.still_logged_in(epoch) && view.asset.may_hold_key(view.version) {
                // Cached keys may fill half the locked arena; the other half
                // stays free for keys in flight (PRF outputs, derivations,
                // the audit key). When it is full the oldest entry goes.
                let capacity = (crate::secure::capacity() / 2).max(1);
                let adding = 1 + usize::from(second.is_some());
                while !cache.is_empty() && cache.len() + adding > capacity {
                    let oldest = cache.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k);
                    match oldest {
                        Some(k) => cache.remove(&k),
                        None => break,
                    };
                }
                let now = std::time::Instant::now();
                let (rowid, version, _) = slot;
                cache.insert((rowid, version, Purpose::Key), (key, now));
                if let Some(s) = second {
                    cache.insert((rowid, version, other), (s, now));
                }
            }
        }
        Ok(wanted)
    }

    /// Drops (wipes) the cached keys of an asset's versions that may no
    /// longer sign: after a rotation, suspension, trim or retirement seen in
    /// the store, whichever process made it.
    pub(super) fn prune_keys(&self, asset: &Asset) {
        self.keys.prune(asset);
        // Private HD children of versions that will never sign again go too
        // (a suspended one's stay: its resume brings them back).
        self.drop_private_children(|c| {
            c.asset == asset.rowid && asset.signs_never_again(c.version)
        });
    }

    /// What `C_SignInit`/`C_VerifyInit` use: the algorithm, the message it
    /// takes, and the class of key the mechanism needs (`asymmetric` is the
    /// class a key pair's half must have for this job).
    fn signature_mechanism(mech: &Mechanism, asymmetric: Class) -> Result<(Alg, Message, Class)> {
        let (alg, hasher, whole) = Alg::of(mech)?;
        let class = if alg.hmac().is_some() {
            Class::Secret
        } else {
            asymmetric
        };
        Ok((alg, Message::new(hasher, whole), class))
    }

    /// Audits a use the asset's state refuses (before the caller learns it).
    pub(super) fn audit_refusal(
        &self,
        h: CK_SESSION_HANDLE,
        mech: CK_MECHANISM_TYPE,
        view: &View,
        detail: String,
    ) -> Result<()> {
        let mut rec = Record::new(Event::Refused, CKR_KEY_FUNCTION_NOT_PERMITTED)
            .asset(view.asset.id.as_str(), Some(view.version))
            .session(h)
            .detail(detail);
        rec.mechanism = Some(mech);
        self.audit(rec)
    }

    /// The asset object behind `key`, checked to fit the mechanism.
    fn signature_key(&self, mech: &Mechanism, key: CK_OBJECT_HANDLE) -> Result<(ObjectKey, Asset)> {
        let (okey, asset) = self.object(key, CKR_KEY_HANDLE_INVALID)?;
        let view = View::resolve(&asset, &okey).ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
        check_key_type(&view, mech.ty)?;
        Ok((okey, asset))
    }

    pub fn sign_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let session = self.idle_session(h, |s| &mut s.sign)?;
        let epoch = self.login.epoch();
        let (alg, msg, signer) = Self::signature_mechanism(mech, Class::Private)?;
        let public = self
            .session_object(key)
            .is_some_and(|o| o.is_public_session_key());
        if !public {
            self.live(epoch)?;
        }
        if let Some(obj) = self.session_object(key) {
            self.session_key_use(&obj, mech.ty, signer, obj.sign, "sign")?;
            if let Some(child) = &obj.hd {
                self.child_use(h, child, mech.ty, UseKind::Sign)?;
                let op = SignOp {
                    epoch: Some(epoch),
                    asset: Some(child.asset),
                    version: child.version,
                    kt: obj.curve(),
                    key: obj.key_ref()?,
                    alg,
                    msg,
                    audit: OpAudit::child(h, child, mech.ty),
                };
                return self.start_sign(&session, epoch, op);
            }
            self.permit(h, Action::Use(UseKind::Sign), None, Some(mech.ty))?;
            let op = SignOp {
                epoch: (!public).then_some(epoch),
                asset: None,
                version: 0,
                kt: obj.curve(),
                key: obj.key_ref()?,
                alg,
                msg,
                audit: OpAudit::new(h, obj.name(), true, mech.ty),
            };
            return self.start_sign(&session, epoch, op);
        }
        let (okey, asset) = self.signature_key(mech, key)?;
        let view = View::resolve(&asset, &okey).ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
        if okey.class == signer {
            let name = asset.id.as_str();
            self.permit(h, Action::Use(UseKind::Sign), Some(name), Some(mech.ty))?;
            self.check_policy(h, UseKind::Sign, name, Some(view.version), mech.ty)?;
            // The version's own key is the path `m` of its HD tree (secret
            // keys have no tree: `paths=` does not concern them).
            if asset.key_type.is_ec() {
                let master = crate::hd::Path::default();
                self.check_path_policy(h, name, view.version, mech.ty, &master, false)?;
            }
        }
        if okey.class != signer || !view.may_sign() {
            self.prune_keys(&asset);
            let why = format!(
                "object {:?} may not sign (asset state {})",
                view.label(),
                asset.state.name()
            );
            if okey.class == signer {
                self.audit_refusal(h, mech.ty, &view, format!("sign refused: {why}"))?;
            }
            return Err(Error::with(CKR_KEY_FUNCTION_NOT_PERMITTED, why));
        }
        let key = match self.asset_key(&view, epoch) {
            Ok(key) => key,
            // The backing login ended under us: say so, not "device error".
            Err(_) if !self.still_logged_in(epoch) => {
                return Err(Error::rv(CKR_USER_NOT_LOGGED_IN))
            }
            Err(e) => return Err(e),
        };
        let op = SignOp {
            epoch: Some(epoch),
            asset: Some(asset.rowid),
            version: view.version,
            kt: asset.key_type,
            key: alg.mac_key(KeyRef::Derived(key), true)?,
            alg,
            msg,
            audit: OpAudit::new(h, asset.id.to_string(), false, mech.ty),
        };
        self.start_sign(&session, epoch, op)
    }

    /// Whether an HD child may be used now, as its asset version: the user
    /// may use the asset, its policies allow it (and, to sign, the child's
    /// path), and the version may still sign (or verify). A refusal by the
    /// asset's state is audited.
    pub(super) fn child_use(
        &self,
        h: CK_SESSION_HANDLE,
        child: &hd::HdChild,
        mech: CK_MECHANISM_TYPE,
        kind: UseKind,
    ) -> Result<()> {
        // The asset's row as the asset's own key reads it (verified, served
        // from the store's cache while nothing changed); the commit reads
        // it again before the signature leaves.
        let asset = self
            .store
            .asset(child.asset)
            .map_err(store_error)?
            .ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
        if !asset.is_usable(child.version) {
            return Err(Error::rv(CKR_KEY_HANDLE_INVALID));
        }
        let name = asset.id.as_str();
        self.permit(h, Action::Use(kind), Some(name), Some(mech))?;
        // A policy's refusal names the child's path, as its uses do.
        let now = crate::store::unix_now();
        let lead = format!("{} ", child.path.record_detail());
        let at = (name, Some(child.version));
        self.policy_gate(h, kind.name(), at, mech, &lead, |p| p.check(mech, now))?;
        let sign = kind == UseKind::Sign;
        if sign {
            self.check_path_policy(h, name, child.version, mech, &child.path, false)?;
        }
        let allowed = if sign {
            asset.may_sign(child.version)
        } else {
            asset.may_verify(child.version)
        };
        if !allowed {
            let why = format!(
                "HD child {:?} may not {} (asset state {})",
                child.label(),
                kind.name(),
                asset.state.name()
            );
            let mut rec = Record::new(Event::Refused, CKR_KEY_FUNCTION_NOT_PERMITTED)
                .asset(name, Some(child.version))
                .session(h)
                .detail(format!(
                    "{} {} refused: {why}",
                    child.path.record_detail(),
                    kind.name()
                ));
            rec.mechanism = Some(mech);
            self.audit(rec)?;
            return Err(Error::with(CKR_KEY_FUNCTION_NOT_PERMITTED, why));
        }
        Ok(())
    }

    fn start_sign(&self, session: &Mutex<Session>, epoch: u64, op: SignOp) -> Result<()> {
        let epoch = op.epoch.map(|_| epoch);
        let mut s = lock(session);
        s.sign.ensure_idle()?;
        // A logout that happened while the key was derived wins: the key is
        // wiped (dropped) here instead of being kept past the logout.
        self.live_if(epoch)?;
        s.sign.start(op)
    }

    /// `C_Sign`. `out` is `None` for a length query. Returns the signature
    /// length; `CKR_BUFFER_TOO_SMALL` and length queries keep the operation.
    pub fn sign(&self, h: CK_SESSION_HANDLE, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        self.in_session(h, |s| {
            let (mut op, out) = match s.sign.finish(out, |op| {
                self.live_if(op.epoch)?;
                if op.msg.multi {
                    return Err(Error::rv(CKR_OPERATION_ACTIVE));
                }
                Ok(op.out_len())
            })? {
                Output::Length(len) => return Ok(len),
                Output::Ready(op, out) => (op, out),
            };
            op.audit.input.update(data);
            let digest = op.msg.with_last(data);
            self.complete_sign(&op, &digest, out)
        })
    }

    /// Signs, commits the signature's record, and only then copies it out.
    /// For HMAC, `digest` is the whole message.
    fn complete_sign(&self, op: &SignOp, digest: &[u8], out: &mut [u8]) -> Result<usize> {
        let _timed = op.audit.clock.finishing(Operation::Sign);
        let key = op.key.bytes();
        let sig = match op.alg {
            Alg::Hmac(m) => hmac::hmac(m, key, digest)?,
            Alg::Ecdsa if matches!(op.kt, KeyType::P384 | KeyType::P521) => {
                mechanisms::wide_sign(op.kt, key, digest)?
            }
            Alg::Cmac(len) => aes_modes::cmac(key, digest, len)?,
            Alg::Ecdsa => mechanisms::ecdsa_sign(op.kt, key, digest)?.to_vec(),
            Alg::EdDsa => mechanisms::eddsa::ed25519_sign(key, digest)?.to_vec(),
            Alg::Recoverable => mechanisms::recoverable::recoverable_sign(key, digest)?.to_vec(),
            Alg::Schnorr => {
                // BIP-340's auxiliary randomness, from the backing HSM's RNG.
                let mut aux = [0u8; 32];
                self.backend.random(&mut aux)?;
                mechanisms::schnorr::schnorr_sign(key, digest, &aux)?.to_vec()
            }
        };
        let rec = op.audit.record(Event::Sign, CKR_OK, Some(op.version));
        // The digest of a mechanism that signs the caller's digest goes with
        // its commit: refused for want of approvals, it is proposed to
        // approvers as this digest.
        let raw = rec
            .mechanism
            .is_some_and(mechanisms::signs_caller_digest)
            .then_some(digest);
        self.confirm_job(op.asset, op.version, Use::Produce, None, raw, rec)?;
        out[..sig.len()].copy_from_slice(&sig);
        Ok(sig.len())
    }

    pub fn sign_update(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
        self.in_session(h, |s| {
            s.sign.with(|op| {
                self.live_if(op.epoch)?;
                if !op.msg.update(data) {
                    // Raw CKM_ECDSA signs a digest in one call (single-part only).
                    return Err(Error::rv(CKR_FUNCTION_NOT_SUPPORTED));
                }
                op.audit.input.update(data);
                op.audit.clock.part();
                Ok(())
            })
        })
    }

    pub fn sign_final(&self, h: CK_SESSION_HANDLE, out: Option<&mut [u8]>) -> Result<usize> {
        self.in_session(h, |s| {
            let (op, out) = match s.sign.finish(out, |op| {
                self.live_if(op.epoch)?;
                if !op.msg.multi_part() {
                    return Err(Error::rv(CKR_FUNCTION_NOT_SUPPORTED));
                }
                Ok(op.out_len())
            })? {
                Output::Length(len) => return Ok(len),
                Output::Ready(op, out) => (op, out),
            };
            let digest = op.msg.with_last(&[]);
            self.complete_sign(&op, &digest, out)
        })
    }

    pub fn verify_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let session = self.idle_session(h, |s| &mut s.verify)?;
        let (alg, msg, verifier) = Self::signature_mechanism(mech, Class::Public)?;
        let hmac = alg.hmac();
        if let Some(obj) = self.session_object(key) {
            self.session_key_use(&obj, mech.ty, verifier, obj.verify, "verify")?;
            let epoch = self.login.epoch();
            let child = obj.hd.as_ref();
            if let Some(c) = child {
                self.child_use(h, c, mech.ty, UseKind::Verify)?;
            }
            let op = VerifyOp {
                asset: child.map(|c| c.asset),
                kt: obj.curve(),
                alg,
                points: obj
                    .point
                    .iter()
                    .map(|p| (child.map_or(0, |c| c.version), p.clone()))
                    .collect(),
                msg,
                hmac: match hmac {
                    Some(m) => Some((
                        m,
                        (!obj.is_public_session_key()).then_some(epoch),
                        vec![(0, obj.key_ref()?)],
                    )),
                    None => None,
                },
                audit: match child {
                    Some(c) => OpAudit::child(h, c, mech.ty),
                    None => OpAudit::new(h, obj.name(), true, mech.ty),
                },
            };
            let mut s = lock(&session);
            return s.verify.start(op);
        }
        let (okey, asset) = self.signature_key(mech, key)?;
        let view = View::resolve(&asset, &okey).ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
        if okey.class != verifier || !view.may_verify() {
            if okey.class == verifier {
                let why = format!("verify refused: asset state {}", asset.state.name());
                self.audit_refusal(h, mech.ty, &view, why)?;
            }
            return Err(Error::rv(CKR_KEY_FUNCTION_NOT_PERMITTED));
        }
        let points: Vec<(u32, Vec<u8>)> = view
            .verify_points()
            .into_iter()
            .map(|(v, p)| (v, p.to_vec()))
            .collect();
        // The alias verifies with every usable version, not only its own.
        self.check_public_keys(&asset, points.iter().map(|(v, _)| *v))?;
        let hmac = match hmac {
            Some(m) => {
                // An HMAC check derives the secret key: a key use.
                let name = asset.id.as_str();
                self.permit(h, Action::Use(UseKind::Verify), Some(name), Some(mech.ty))?;
                self.check_policy(h, UseKind::Verify, name, Some(view.version), mech.ty)?;
                let epoch = self.login.epoch();
                let keys = self.opening_keys(&view, epoch, Purpose::Key)?;
                let keys = keys
                    .into_iter()
                    .map(|(v, k)| Ok((v, alg.mac_key(k, true)?)))
                    .collect::<Result<_>>()?;
                Some((m, Some(epoch), keys))
            }
            None => None,
        };
        let op = VerifyOp {
            asset: Some(asset.rowid),
            kt: asset.key_type,
            alg,
            points,
            msg,
            hmac,
            audit: OpAudit::new(h, asset.id.to_string(), false, mech.ty),
        };
        let mut s = lock(&session);
        s.verify.start(op)
    }

    pub fn verify(&self, h: CK_SESSION_HANDLE, data: &[u8], sig: &[u8]) -> Result<()> {
        let mut op = self.in_session(h, |s| s.verify.take())?;
        if op.msg.multi {
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        op.audit.input.update(data);
        let digest = op.msg.with_last(data);
        self.verify_audited(&op, &digest, sig)
    }

    /// Verifies and records the outcome before the caller learns it.
    fn verify_audited(&self, op: &VerifyOp, digest: &[u8], sig: &[u8]) -> Result<()> {
        let _timed = op.audit.clock.finishing(Operation::Verify);
        let result = self.verify_any(op, digest, sig);
        let rec = match &result {
            Ok(v) => op.audit.record(Event::Verify, CKR_OK, Some(*v)),
            Err(e) if e.rv == CKR_KEY_FUNCTION_NOT_PERMITTED => op
                .audit
                .record(Event::Refused, e.rv, None)
                .detail("verify refused by state"),
            Err(e) => op.audit.record(Event::Verify, e.rv, None),
        };
        self.audit(rec)?;
        result.map(|_| ())
    }

    pub fn verify_update(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
        self.in_session(h, |s| {
            s.verify.with(|op| {
                if !op.msg.update(data) {
                    return Err(Error::rv(CKR_FUNCTION_NOT_SUPPORTED));
                }
                op.audit.input.update(data);
                op.audit.clock.part();
                Ok(())
            })
        })
    }

    pub fn verify_final(&self, h: CK_SESSION_HANDLE, sig: &[u8]) -> Result<()> {
        let op = self.in_session(h, |s| s.verify.take())?;
        if !op.msg.multi_part() {
            return Err(Error::rv(CKR_FUNCTION_NOT_SUPPORTED));
        }
        let digest = op.msg.with_last(&[]);
        self.verify_audited(&op, &digest, sig)
    }
}

impl Provider {
    /// Tries each version that may still verify, newest first. The asset's
    /// state is read afresh, so a suspension or trim committed by any process
    /// since C_VerifyInit is honoured.
    fn verify_any(&self, op: &VerifyOp, digest: &[u8], sig: &[u8]) -> Result<u32> {
        let Some(rowid) = op.asset else {
            // A session key: no asset state to honour.
            return match &op.hmac {
                Some((_, epoch, keys)) => {
                    self.live_if(*epoch)?;
                    op.alg.mac_verify(keys[0].1.bytes(), digest, sig).map(|_| 0)
                }
                None => op
                    .alg
                    .verify(op.kt, &op.points[0].1, digest, sig)
                    .map(|_| 0),
            };
        };
        let fresh = self.store.fresh_state(rowid).map_err(store_error)?;
        let Some(asset) = fresh else {
            return Err(Error::rv(CKR_KEY_HANDLE_INVALID));
        };
        // Trimmed or retired since C_VerifyInit: the key is gone.
        if !op.points.iter().any(|(v, _)| asset.is_usable(*v)) {
            return Err(Error::rv(CKR_KEY_HANDLE_INVALID));
        }
        if let Some((_, epoch, keys)) = &op.hmac {
            self.live_if(*epoch)?;
            return self.open_with(&asset, keys, |key| {
                op.alg.mac_verify(key.bytes(), digest, sig)
            });
        }
        self.open_with(&asset, &op.points, |point| {
            op.alg.verify(op.kt, point, digest, sig)
        })
    }

    /// The commit of a signature (design §4 "Order of an operation"): one
    /// store transaction re-reads the asset and appends the signature's audit
    /// record, or a refusal record when the version may no longer sign (any
    /// process may have rotated, suspended, trimmed or retired the asset).
    /// The signature is released only after this returns Ok: its record is
    /// then committed and fsynced.
    pub(super) fn confirm(
        &self,
        asset: Option<i64>,
        version: u32,
        need: Use,
        rec: Record,
    ) -> Result<()> {
        self.confirm_job(asset, version, need, None, None, rec)
    }

    /// `confirm` for an AES-GCM encryption under `iv`: the commit also
    /// records the IV for the asset version, and refuses (and audits) one
    /// used before: `CKR_MECHANISM_PARAM_INVALID`, nothing released.
    pub(super) fn confirm_seal(
        &self,
        asset: Option<i64>,
        version: u32,
        iv: &[u8],
        rec: Record,
    ) -> Result<()> {
        self.confirm_job(asset, version, Use::Produce, Some(iv), None, rec)
    }

    fn confirm_job(
        &self,
        asset: Option<i64>,
        version: u32,
        need: Use,
        iv: Option<&[u8]>,
        digest: Option<&[u8]>,
        rec: Record,
    ) -> Result<()> {
        let mut rec = rec;
        if rec.actor.is_none() {
            rec.actor = self.actor();
        }
        // Users mode: a use whose user logged out meanwhile releases nothing
        // (its commit would name no one).
        if self.users_mode() && rec.actor.is_none() {
            return Err(Error::with(
                CKR_USER_NOT_LOGGED_IN,
                "the user logged out during the operation: result discarded",
            ));
        }
        // A session key has no asset state to re-check: its record is
        // written (durably) before the result leaves, like any other.
        let Some(asset) = asset else {
            return self.audit(rec);
        };
        let ak = self
            .audit_key()
            .ok_or_else(|| Error::with(CKR_USER_NOT_LOGGED_IN, "no audit key in this process"))?;
        let what = rec.event.name();
        let name = rec.asset.clone().unwrap_or_default();
        let spent = self.store.approvals_spent();
        let committed = match (iv, digest) {
            (Some(iv), _) => self.store.commit_seal(&ak, asset, version, iv, rec),
            (None, Some(d)) => self.store.commit_sign(&ak, asset, version, Some(d), rec),
            (None, None) => self.store.commit_use(&ak, asset, version, need, rec),
        }
        .map_err(|e| {
            if matches!(e, StoreError::RolledBack(..)) {
                // Keep the anchor at what this process saw.
                self.advance_anchor();
            }
            Error::with(
                CKR_DEVICE_ERROR,
                format!("{what} result discarded: its audit record was not written: {e}"),
            )
        })?;
        if committed.is_ok() && self.store.approvals_spent() != spent {
            // Approvals were used (by this commit, or another thread's):
            // the anchor holds it before the signature leaves.
            self.anchor_now()?;
        } else {
            self.anchor_if_stale();
        }
        if let Err(Refusal::State(Some(a))) = &committed {
            self.prune_keys(a);
        }
        match committed {
            Ok(()) => Ok(()),
            Err(Refusal::IvReused) => Err(Error::with(
                CKR_MECHANISM_PARAM_INVALID,
                format!(
                    "CKM_AES_GCM: IV {} was already used under asset {name:?} version {version}; \
                     a GCM IV may never repeat under one key (the repeat is recorded as \
                     refused, nothing was released): give each encryption a fresh IV",
                    crate::store::hex(iv.unwrap_or_default())
                ),
            )),
            Err(Refusal::State(Some(a))) if !a.is_usable(version) => {
                Err(Error::rv(CKR_KEY_HANDLE_INVALID))
            }
            Err(Refusal::State(Some(a))) => Err(Error::with(
                CKR_KEY_FUNCTION_NOT_PERMITTED,
                format!(
                    "asset {:?} is {} at version {}: version {version} may no longer {what} \
                     (result discarded)",
                    a.id.as_str(),
                    a.state.name(),
                    a.current,
                ),
            )),
            Err(Refusal::State(None)) => Err(Error::rv(CKR_KEY_HANDLE_INVALID)),
            Err(Refusal::Unverified(why)) => Err(Error::with(
                CKR_DEVICE_ERROR,
                format!("{what} result discarded: {why}"),
            )),
            Err(Refusal::Policy(why)) => {
                let msg = format!(
                    "user {:?}: {what} refused at commit (result discarded): {why}",
                    self.actor().unwrap_or_default()
                );
                log::warn(&msg);
                Err(Error::with(crate::store::users_refusal_rv(&why), msg))
            }
        }
    }
}
