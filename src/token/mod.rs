//! The one slot and token p11derive shows: sessions, login state, stable
//! object handles, object search, asset creation and the operations that run
//! in a session. Everything here works on Rust types; [`crate::abi`] does the
//! pointer work.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::audit::{public_key_mac, Event, Record};
use crate::backend::Backend;
use crate::ck::*;
use crate::config::Config;
use crate::derive::{self, AssetId, KeyType, Secret32};
use crate::error::{attr_name, Error, Result};
use crate::lifecycle;
use crate::log;
use crate::mechanisms::{self, Hasher, ECDSA_SIG_LEN};
use crate::objects::{self, Class, ObjectKey, Value, View, Which};
use crate::process::PerProcess;
use crate::store::{Asset, Store, StoreError, Transition, Use};
use crate::symmetric::{self, GcmParams};
use sha2::{Digest, Sha256};

mod crypt;
mod session;
mod stored;
use crypt::check_key_type;
use session::{KeyRef, SessionObject};

/// The only slot.
pub const SLOT_ID: CK_SLOT_ID = 1;

/// A mechanism as the caller gave it.
pub struct Mechanism {
    pub ty: CK_MECHANISM_TYPE,
    pub param: Vec<u8>,
    /// `CKM_AES_GCM`'s parameters, read from the caller's `CK_GCM_PARAMS`.
    pub gcm: Option<GcmParams>,
}

/// An attribute of a caller's template: its type and value bytes.
pub type TemplateAttr = (CK_ATTRIBUTE_TYPE, Vec<u8>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Login {
    None = 0,
    User = 1,
    So = 2,
}

impl Login {
    fn from_u8(v: u8) -> Login {
        match v {
            1 => Login::User,
            2 => Login::So,
            _ => Login::None,
        }
    }
}

struct SignOp {
    /// The login epoch this operation began in.
    epoch: u64,
    /// The asset (row id) and version whose key this is: re-checked against
    /// the store before the signature leaves. `None`: a session key.
    asset: Option<i64>,
    version: u32,
    kt: KeyType,
    /// The key, in the locked arena (a derived one shared with the cache).
    key: KeyRef,
    /// An HMAC mechanism (secret keys) instead of ECDSA.
    hmac: Option<CK_MECHANISM_TYPE>,
    msg: Message,
    /// For the audit record: what signs, how, for which session, and the
    /// SHA-256 of everything given to sign.
    audit: OpAudit,
}

/// What an operation's audit record says besides its result.
struct OpAudit {
    session: CK_SESSION_HANDLE,
    /// The asset id, or for a session key its description (no asset).
    asset: String,
    session_key: bool,
    mech: CK_MECHANISM_TYPE,
    input: Sha256,
}

impl OpAudit {
    fn new(
        session: CK_SESSION_HANDLE,
        asset: String,
        session_key: bool,
        mech: CK_MECHANISM_TYPE,
    ) -> OpAudit {
        OpAudit {
            session,
            asset,
            session_key,
            mech,
            input: Sha256::new(),
        }
    }

    fn record(&self, event: Event, rv: CK_RV, version: Option<u32>) -> Record {
        let r = Record::new(event, rv);
        let mut r = if self.session_key {
            r.detail(self.asset.clone())
        } else {
            r.asset(&self.asset, version)
        }
        .session(self.session);
        r.mechanism = Some(self.mech);
        r.input_sha256 = Some(self.input.clone().finalize().into());
        r
    }
}

/// Derived keys of an asset's versions, newest first.
type VersionKeys = Vec<(u32, KeyRef)>;

struct VerifyOp {
    /// `None`: a session key.
    asset: Option<i64>,
    kt: KeyType,
    /// The versions this verification may use and their public points,
    /// newest first.
    points: Vec<(u32, Vec<u8>)>,
    /// HMAC verification (secret keys): the mechanism, the login epoch and
    /// the derived keys of the versions it may use, newest first.
    hmac: Option<(CK_MECHANISM_TYPE, u64, VersionKeys)>,
    msg: Message,
    audit: OpAudit,
}

/// What a signature or verification is computed over, as the parts arrive:
/// a running hash (ECDSA with a hash), the parts themselves (HMAC, computed
/// with the key at the end; the caller's data, not secret), or nothing
/// (raw `CKM_ECDSA` signs one digest, single-part only).
struct Message {
    hasher: Option<Hasher>,
    parts: Option<Vec<u8>>,
    /// `C_*Update` was called: only `C_*Final` may finish.
    multi: bool,
}

impl Message {
    fn new(hasher: Option<Hasher>, hmac: bool) -> Message {
        Message {
            hasher,
            parts: hmac.then(Vec::new),
            multi: false,
        }
    }

    /// Whether the mechanism takes its input in parts.
    fn multi_part(&self) -> bool {
        self.hasher.is_some() || self.parts.is_some()
    }

    /// A `C_*Update` part; `false` (nothing taken) when single-part only.
    fn update(&mut self, data: &[u8]) -> bool {
        if let Some(h) = self.hasher.as_mut() {
            h.update(data);
        } else if let Some(p) = self.parts.as_mut() {
            p.extend_from_slice(data);
        } else {
            return false;
        }
        self.multi = true;
        true
    }

    /// The digest (for HMAC: the message) of everything given, `last` too.
    fn with_last(&self, last: &[u8]) -> Vec<u8> {
        match (&self.hasher, &self.parts) {
            (Some(h), _) => {
                let mut h = h.clone();
                h.update(last);
                h.finish()
            }
            (None, Some(p)) => [p.as_slice(), last].concat(),
            (None, None) => last.to_vec(),
        }
    }
}

impl SignOp {
    fn out_len(&self) -> usize {
        self.hmac
            .and_then(symmetric::hmac_len)
            .unwrap_or(ECDSA_SIG_LEN)
    }
}

struct DigestOp {
    hasher: Hasher,
    multi: bool,
}

struct FindOp {
    /// Each result with whether it is a private object.
    handles: Vec<(CK_OBJECT_HANDLE, bool)>,
    next: usize,
}

/// One session's state. Its lock is per session: sessions never wait for
/// each other here.
pub struct Session {
    rw: bool,
    find: Option<FindOp>,
    sign: Option<SignOp>,
    verify: Option<VerifyOp>,
    digest: Option<DigestOp>,
    encrypt: Option<crypt::CryptOp>,
    decrypt: Option<crypt::CryptOp>,
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
fn store_index(path: &Path) -> usize {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut t = lock(HANDLES.get());
    if let Some(i) = t.stores.iter().position(|p| *p == path) {
        return i;
    }
    t.stores.push(path);
    t.stores.len() - 1
}

pub struct Provider {
    pub config: Config,
    pub backend: Backend,
    pub store: Store,
    sessions: RwLock<HashMap<CK_SESSION_HANDLE, Arc<Mutex<Session>>>>,
    next_session: AtomicU64,
    login: AtomicU8,
    /// Incremented at every logout; operations remember the epoch they began in.
    login_epoch: AtomicU64,

    /// Serializes login and logout with each other (never held by signing).
    login_change: Mutex<()>,
    /// This provider's store in the process-wide handle table.
    store_index: usize,
    /// The audit MAC key, derived through the backing HSM at the first user
    /// login and kept until C_Finalize so that later records (public
    /// verifications included) can be chained.
    audit_key: Mutex<Option<Arc<Secret32>>>,
    /// When the rollback anchor was last advanced (ms since the epoch).
    anchored_at_ms: AtomicU64,
    /// Derived keys by (asset row id, version), in the locked arena,
    /// with the moment it was derived; see `signing_key`.
    key_cache: Mutex<HashMap<(i64, u32), CachedKey>>,
    /// Keys derived through the backing HSM so far (each one a PRF call).
    derivations: AtomicU64,
    /// Session keys (`CKA_TOKEN=false`) by handle; see `session.rs`.
    session_objects: RwLock<HashMap<CK_OBJECT_HANDLE, Arc<SessionObject>>>,
    next_object: AtomicU64,
    /// The process's backing HSM call count when this provider opened.
    hsm_calls_at_open: u64,
    anchor_calls_at_open: u64,
    /// By (asset row, version): the public key (or check value) and MAC
    /// that last verified under the audit key; see `check_public_keys`.
    verified_keys: Mutex<HashMap<(i64, u32), VerifiedKey>>,
}

/// A recorded public key (or check value) and its MAC, verified.
type VerifiedKey = (Vec<u8>, Option<Vec<u8>>);

/// A cached key and when it was derived.
type CachedKey = (Arc<Secret32>, std::time::Instant);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn store_error(e: StoreError) -> Error {
    Error::with(CKR_DEVICE_ERROR, e.to_string())
}

impl Provider {
    /// Reads the config, opens the store and the backing HSM.
    pub fn open(config: Config) -> Result<Provider> {
        let store = Store::open_config(&config.store).map_err(|e| {
            Error::with(
                CKR_FUNCTION_FAILED,
                format!("{e} (config file {})", config.source.display()),
            )
        })?;
        let backend = Backend::open(&config.backend, &config.source)?;
        let store_index = store_index(store.path());
        mechanisms::warm_up();
        Ok(Provider {
            config,
            backend,
            store,
            sessions: RwLock::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            login: AtomicU8::new(Login::None as u8),
            login_epoch: AtomicU64::new(0),
            login_change: Mutex::new(()),
            store_index,
            audit_key: Mutex::new(None),
            anchored_at_ms: AtomicU64::new(0),
            key_cache: Mutex::new(HashMap::new()),
            derivations: AtomicU64::new(0),
            session_objects: RwLock::new(HashMap::new()),
            next_object: AtomicU64::new(1),
            hsm_calls_at_open: crate::backend::HSM_CALLS.load(Ordering::Relaxed),
            anchor_calls_at_open: crate::backend::ANCHOR_CALLS.load(Ordering::Relaxed),
            verified_keys: Mutex::new(HashMap::new()),
        })
    }

    /// Ends every session and releases the backing HSM.
    pub fn finalize(&self) {
        lock(&self.key_cache).clear();
        self.drop_session_objects(None);
        log::info(&format!(
            "keys derived through the backing HSM: {}; backing HSM calls: {} (rollback anchor: \
             {}); audit fsyncs: {}",
            self.derivations.load(Ordering::Relaxed),
            crate::backend::HSM_CALLS.load(Ordering::Relaxed) - self.hsm_calls_at_open,
            crate::backend::ANCHOR_CALLS.load(Ordering::Relaxed) - self.anchor_calls_at_open,
            self.store.fsyncs()
        ));
        let (commits, records) = self.store.commit_stats();
        if commits > 0 {
            let trips = if self.store.is_shared() {
                format!(
                    "; PostgreSQL round trips: {}",
                    self.store.commit_round_trips()
                )
            } else {
                String::new()
            };
            log::info(&format!(
                "audit: {records} signature records in {commits} commits ({:.2} per fsync{trips})",
                records as f64 / commits as f64
            ));
        }
        if self.login_state() == Login::User {
            self.advance_anchor();
        }
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.backend.finalize();
    }

    pub fn login_state(&self) -> Login {
        Login::from_u8(self.login.load(Ordering::SeqCst))
    }

    /// Whether a signing operation started in login `epoch` may still run.
    fn still_logged_in(&self, epoch: u64) -> bool {
        self.login_state() == Login::User && self.login_epoch.load(Ordering::SeqCst) == epoch
    }

    pub fn check_slot(&self, slot: CK_SLOT_ID) -> Result<()> {
        if slot == SLOT_ID {
            Ok(())
        } else {
            Err(Error::rv(CKR_SLOT_ID_INVALID))
        }
    }

    // ---- sessions ---------------------------------------------------------

    pub fn open_session(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
        self.check_slot(slot)?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(Error::rv(CKR_SESSION_PARALLEL_NOT_SUPPORTED));
        }
        let rw = flags & CKF_RW_SESSION != 0;
        let h = self.next_session.fetch_add(1, Ordering::Relaxed);
        let session = Session {
            rw,
            find: None,
            sign: None,
            verify: None,
            digest: None,
            encrypt: None,
            decrypt: None,
        };
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(h, Arc::new(Mutex::new(session)));
        // Checked after the session is visible: an SO login that raced with
        // us either sees this session and refuses, or we see it and back out.
        if !rw && self.login_state() == Login::So {
            self.sessions
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&h);
            return Err(Error::rv(CKR_SESSION_READ_WRITE_SO_EXISTS));
        }
        Ok(h)
    }

    pub fn session(&self, h: CK_SESSION_HANDLE) -> Result<Arc<Mutex<Session>>> {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&h)
            .cloned()
            .ok_or(Error::rv(CKR_SESSION_HANDLE_INVALID))
    }

    pub fn close_session(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&h)
            .ok_or(Error::rv(CKR_SESSION_HANDLE_INVALID))?;
        self.drop_session_objects(Some(h));
        self.end_login_if_idle();
        Ok(())
    }

    pub fn close_all_sessions(&self, slot: CK_SLOT_ID) -> Result<()> {
        self.check_slot(slot)?;
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.drop_session_objects(None);
        self.end_login_if_idle();
        Ok(())
    }

    pub fn session_count(&self) -> (usize, usize) {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        let rw = sessions.values().filter(|s| lock(s).rw).count();
        (sessions.len(), rw)
    }

    pub fn session_info(&self, h: CK_SESSION_HANDLE) -> Result<CK_SESSION_INFO> {
        let session = self.session(h)?;
        let rw = lock(&session).rw;
        let state = match (self.login_state(), rw) {
            (Login::None, false) => CKS_RO_PUBLIC_SESSION,
            (Login::None, true) => CKS_RW_PUBLIC_SESSION,
            (Login::User, false) => CKS_RO_USER_FUNCTIONS,
            (Login::User, true) => CKS_RW_USER_FUNCTIONS,
            (Login::So, _) => CKS_RW_SO_FUNCTIONS,
        };
        let mut flags = CKF_SERIAL_SESSION;
        if rw {
            flags |= CKF_RW_SESSION;
        }
        Ok(CK_SESSION_INFO {
            slotID: SLOT_ID,
            state,
            flags,
            ulDeviceError: 0,
        })
    }

    // ---- login ------------------------------------------------------------

    pub fn login(&self, h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &[u8]) -> Result<()> {
        self.session(h)?;
        let _serial = lock(&self.login_change);
        let wanted = match user {
            CKU_USER => Login::User,
            CKU_SO => Login::So,
            CKU_CONTEXT_SPECIFIC => return Err(Error::rv(CKR_OPERATION_NOT_INITIALIZED)),
            _ => return Err(Error::rv(CKR_USER_TYPE_INVALID)),
        };
        match self.login_state() {
            Login::None => {}
            s if s == wanted => return Err(Error::rv(CKR_USER_ALREADY_LOGGED_IN)),
            _ => return Err(Error::rv(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)),
        }
        if wanted == Login::So && self.read_only_sessions_exist() {
            return Err(Error::rv(CKR_SESSION_READ_ONLY_EXISTS));
        }
        let who = if wanted == Login::User {
            "user"
        } else {
            "security officer"
        };
        match self.backend.login(user, pin) {
            Ok(()) => {
                self.login.store(wanted as u8, Ordering::SeqCst);
                if wanted == Login::So && self.read_only_sessions_exist() {
                    // A read-only session opened while the HSM checked the PIN.
                    self.end_login_locked();
                    return Err(Error::rv(CKR_SESSION_READ_ONLY_EXISTS));
                }
                // A login is complete only once the store is known not to be
                // older than the HSM's anchor, and the login is audited.
                let audited = self
                    .ensure_audit_key(wanted)
                    .and_then(|()| self.check_root(wanted))
                    .and_then(|()| self.check_anchor(wanted))
                    .and_then(|()| {
                        self.audit(Record::new(Event::Login, CKR_OK).session(h).detail(who))
                    });
                if let Err(e) = audited {
                    self.end_login_locked();
                    return Err(e);
                }
                log::info(&format!(
                    "login: {who} logged in to backing token {:?}",
                    self.backend.token_label()
                ));
                Ok(())
            }
            Err(e) => {
                log::warn(&format!(
                    "login: {who} login to backing token {:?} failed: {e}",
                    self.backend.token_label()
                ));
                let rec = Record::new(Event::LoginFailed, e.rv).session(h).detail(who);
                if let Err(audit) = self.audit(rec) {
                    log::error(&format!(
                        "login: the failed login could not be audited: {audit}"
                    ));
                }
                Err(e)
            }
        }
    }

    pub fn logout(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        self.session(h)?;
        if self.login_state() == Login::None {
            return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
        }
        self.end_login();
        Ok(())
    }

    /// Derives the audit key at a user login if this process has none yet,
    /// straight into a locked, non-dumpable page.
    fn ensure_audit_key(&self, who: Login) -> Result<()> {
        let mut ak = lock(&self.audit_key);
        if ak.is_none() && who == Login::User {
            *ak = Some(Arc::new(derive::audit_key(&self.backend)?));
        }
        Ok(())
    }

    /// Refuses a store whose audit chain another root wrote, before this
    /// process writes anything with its audit key.
    fn check_root(&self, who: Login) -> Result<()> {
        match (who, self.audit_key()) {
            (Login::User, Some(ak)) => self.store.check_root(&ak).map_err(store_error),
            _ => Ok(()),
        }
    }

    /// Refuses a store older than the rollback anchor in the backing HSM.
    fn check_anchor(&self, who: Login) -> Result<()> {
        if who != Login::User {
            return Ok(());
        }
        let Some((seq, mac)) = self.backend.read_anchor()? else {
            return Ok(());
        };
        let held = self.store.holds_record(seq, &mac).map_err(store_error)?;
        if held {
            return Ok(());
        }
        Err(Error::with(
            CKR_DEVICE_ERROR,
            format!(
                "store {} is older than the rollback anchor in backing token {:?} (the anchor \
                 holds audit record {seq}, which this store lacks or has with another MAC): an \
                 older copy of the store was restored, or records were deleted. p11derive \
                 refuses to run on it. If a backup was restored knowingly, check it with \
                 `p11derive audit verify` and re-anchor with `p11derive audit reanchor --yes`",
                self.store.path().display(),
                self.backend.token_label()
            ),
        ))
    }

    /// Moves the HSM anchor to the newest record (needs the user login),
    /// only while the store still holds the anchored record: a store swapped
    /// for an older copy underneath a running process must not be anchored.
    /// A failure is logged, not fatal: the anchor then lags, never leads.
    fn advance_anchor(&self) {
        crate::backend::anchoring(|| self.move_anchor())
    }

    fn move_anchor(&self) {
        self.anchored_at_ms.store(now_ms(), Ordering::Relaxed);
        let head = match self.store.audit_head() {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => return log::warn(&format!("anchor: {e}")),
        };
        match self.backend.read_anchor() {
            Ok(Some((seq, mac))) if !self.store.holds_record(seq, &mac).unwrap_or(false) => {
                return log::error(&format!(
                    "anchor: store {} no longer holds anchored record {seq}; not advancing (run \
                     `p11derive audit verify`)",
                    self.store.path().display()
                ))
            }
            Ok(_) => {}
            Err(e) => return log::warn(&format!("anchor: {e}")),
        }
        if let Err(e) = self.backend.write_anchor(head.0, &head.1, false) {
            log::warn(&format!("anchor: not advanced to record {}: {e}", head.0));
        }
    }

    /// After a commit: advances the anchor if it is older than
    /// `[store] anchor_interval_ms`, so that a long-running signer's newest records
    /// cannot be cut from the log unnoticed for longer than that. One caller
    /// per interval wins the race and pays for the HSM write.
    fn anchor_if_stale(&self) {
        let last = self.anchored_at_ms.load(Ordering::Relaxed);
        let now = now_ms();
        if now.saturating_sub(last) < self.config.store.anchor_interval_ms {
            return;
        }
        if self
            .anchored_at_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.advance_anchor();
        }
    }

    fn audit_key(&self) -> Option<Arc<Secret32>> {
        lock(&self.audit_key).clone()
    }

    /// Writes an audit record durably (sealed into the chain when this
    /// process has the audit key, else pending). Fails closed.
    fn audit(&self, rec: Record) -> Result<()> {
        let ak = self.audit_key();
        self.store
            .record(ak.as_deref(), rec)
            .map_err(|e| Error::with(CKR_DEVICE_ERROR, format!("audit record not written: {e}")))?;
        if ak.is_some() && self.login_state() == Login::User {
            self.anchor_if_stale();
        }
        Ok(())
    }

    /// The audit context for lifecycle steps, which need the key.
    fn with_audit<T>(
        &self,
        session: CK_SESSION_HANDLE,
        f: impl FnOnce(&lifecycle::Audit) -> Result<T>,
    ) -> Result<T> {
        let ak = self.audit_key().ok_or_else(|| {
            Error::with(CKR_USER_NOT_LOGGED_IN, "no audit key: log in as user first")
        })?;
        f(&lifecycle::Audit {
            ak: &ak,
            session: Some(session),
        })
    }

    fn read_only_sessions_exist(&self) -> bool {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        sessions.values().any(|s| !lock(s).rw)
    }

    /// Forgets the login and every key held by an operation of any session.
    fn end_login(&self) {
        let _serial = lock(&self.login_change);
        self.end_login_locked();
    }

    /// PKCS#11 logs out when the application's last session closes; decided
    /// under the login lock so a concurrent open-and-login is not undone.
    fn end_login_if_idle(&self) {
        let _serial = lock(&self.login_change);
        if self
            .sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            self.end_login_locked();
        }
    }

    /// The logout itself; the caller holds `login_change`. The state flips and
    /// the epoch moves *before* keys are wiped, so an operation initialized
    /// concurrently either sees the logout or is wiped here (see `sign_init`).
    fn end_login_locked(&self) {
        if self.login_state() == Login::None {
            return;
        }
        if self.login_state() == Login::User {
            self.advance_anchor();
        }
        self.login.store(Login::None as u8, Ordering::SeqCst);
        self.login_epoch.fetch_add(1, Ordering::SeqCst);
        for s in self
            .sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let mut s = lock(s);
            s.sign = None;
            s.encrypt = None;
            s.decrypt = None;
            if s.verify.as_ref().is_some_and(|v| v.hmac.is_some()) {
                s.verify = None;
            }
        }
        // Every derived key is wiped with the login.
        lock(&self.key_cache).clear();
        if let Err(e) = self.backend.logout() {
            log::warn(&format!("logout: {e}"));
        }
    }

    // ---- objects ----------------------------------------------------------

    fn handle_for(&self, key: ObjectKey) -> CK_OBJECT_HANDLE {
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
    fn object(&self, h: CK_OBJECT_HANDLE, invalid: CK_RV) -> Result<(ObjectKey, Asset)> {
        let key = self.key_of(h).ok_or(Error::rv(invalid))?;
        if key.class.is_private() && self.login_state() != Login::User {
            return Err(Error::rv(invalid));
        }
        let asset = self
            .store
            .asset(key.asset)
            .map_err(store_error)?
            .ok_or(Error::rv(invalid))?;
        let version = View::resolve(&asset, &key)
            .ok_or(Error::rv(invalid))?
            .version;
        self.check_public_keys(&asset, [version])?;
        Ok((key, asset))
    }

    /// The public keys of `versions` must carry their MAC under the audit
    /// key: a key changed in the store is refused, never served or used. Only
    /// the versions an operation touches are checked (one HMAC each). A
    /// process that never logged in has no audit key and must trust the store.
    fn check_public_keys(
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
            let known = lock(&self.verified_keys)
                .get(&slot)
                .is_some_and(|(k, m)| k == pk && *m == v.pk_mac);
            if known {
                continue;
            }
            let want = public_key_mac(&ak, asset.id.as_str(), v.version, pk);
            if v.pk_mac.as_deref() == Some(&want[..]) {
                lock(&self.verified_keys).insert(slot, (pk.clone(), v.pk_mac.clone()));
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
        if Self::is_plain_handle(object) {
            let plain = self
                .plain_object(object)?
                .ok_or(Error::rv(CKR_OBJECT_HANDLE_INVALID))?;
            return Ok(types.iter().map(|&t| plain.attribute(t)).collect());
        }
        let (key, asset) = self.object(object, CKR_OBJECT_HANDLE_INVALID)?;
        let mut view = View::resolve(&asset, &key).ok_or(Error::rv(CKR_OBJECT_HANDLE_INVALID))?;
        view.destroy_retires = self.config.policy.destroy_retires;
        Ok(types.iter().map(|&t| view.attribute(t)).collect())
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
        } else if self.session_object(object).is_none() {
            self.object(object, CKR_OBJECT_HANDLE_INVALID)?;
        }
        Ok(CK_UNAVAILABLE_INFORMATION)
    }

    pub fn find_init(&self, h: CK_SESSION_HANDLE, template: &[TemplateAttr]) -> Result<()> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        if s.find.is_some() {
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        let logged_in = self.login_state() == Login::User;
        let assets = self.store.list_assets().map_err(store_error)?;
        let mut handles = Vec::new();
        for asset in &assets {
            for key in View::keys_of(asset) {
                if key.class.is_private() && !logged_in {
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
        s.find = Some(FindOp { handles, next: 0 });
        Ok(())
    }

    pub fn find_next(&self, h: CK_SESSION_HANDLE, max: usize) -> Result<Vec<CK_OBJECT_HANDLE>> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        let find = s
            .find
            .as_mut()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        // A logout since C_FindObjectsInit hides the private results that remain.
        let logged_in = self.login_state() == Login::User;
        let mut out = Vec::with_capacity(max.min(find.handles.len()));
        while out.len() < max && find.next < find.handles.len() {
            let (h, private) = find.handles[find.next];
            find.next += 1;
            if logged_in || !private {
                out.push(h);
            }
        }
        Ok(out)
    }

    pub fn find_final(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        s.find
            .take()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        Ok(())
    }

    // ---- asset creation ---------------------------------------------------

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
    fn register(
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

    // ---- signing and verification -----------------------------------------

    /// The key of an asset version: from the cache while its entry is fresh
    /// (no backing HSM call), otherwise derived through the HSM, checked
    /// against the recorded public key (a store paired with the wrong root
    /// can never sign with keys nobody registered), and cached for
    /// `[cache] ttl_seconds`.
    fn asset_key(&self, view: &View, epoch: u64) -> Result<Arc<Secret32>> {
        let slot = (view.asset.rowid, view.version);
        let ttl = self.config.cache.ttl();
        {
            let mut cache = lock(&self.key_cache);
            // One pass drops (wipes) expired entries and, for this asset as the
            // store shows it now, versions that may no longer sign.
            let asset = view.asset;
            cache.retain(|(rowid, v), (_, at)| {
                at.elapsed() < ttl && (*rowid != asset.rowid || asset.may_hold_key(*v))
            });
            if let Some((key, _)) = cache.get(&slot) {
                return Ok(key.clone());
            }
        }
        let kt = view.asset.key_type;
        let scalar = derive::derive_key(&self.backend, &view.asset.id, view.version, kt)?;
        self.derivations.fetch_add(1, Ordering::Relaxed);
        let derived = derive::fingerprint(kt, &scalar);
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
        let key = Arc::new(scalar);
        if !ttl.is_zero() {
            // Only while the login the key was derived under is still current:
            // a logout flips the state before it clears the cache, so a key
            // derived across a logout is never cached past it.
            let mut cache = lock(&self.key_cache);
            if self.still_logged_in(epoch) {
                // Cached keys may fill half the locked arena; the other half
                // stays free for keys in flight (PRF outputs, derivations,
                // the audit key). When it is full the oldest entry goes.
                let capacity = (crate::secure::capacity() / 2).max(1);
                while cache.len() >= capacity {
                    let oldest = cache.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k);
                    match oldest {
                        Some(k) => cache.remove(&k),
                        None => break,
                    };
                }
                cache.insert(slot, (key.clone(), std::time::Instant::now()));
            }
        }
        Ok(key)
    }

    /// Drops (wipes) the cached keys of an asset's versions that may no
    /// longer sign: after a rotation, suspension, trim or retirement seen in
    /// the store, whichever process made it.
    fn prune_keys(&self, asset: &Asset) {
        lock(&self.key_cache)
            .retain(|(rowid, v), _| *rowid != asset.rowid || asset.may_hold_key(*v));
    }

    /// What `C_SignInit`/`C_VerifyInit` use: the HMAC mechanism (secret keys)
    /// or the ECDSA hasher, and the key's object, checked to fit the mechanism.
    fn signature_mechanism(
        mech: &Mechanism,
    ) -> Result<(Option<CK_MECHANISM_TYPE>, Option<Hasher>)> {
        let hmac = symmetric::hmac_len(mech.ty).map(|_| mech.ty);
        let hasher = match hmac {
            Some(_) => None,
            None => mechanisms::ecdsa_hasher(mech.ty)?,
        };
        if !mech.param.is_empty() {
            return Err(Error::rv(CKR_MECHANISM_PARAM_INVALID));
        }
        Ok((hmac, hasher))
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
        let session = self.session(h)?;
        if lock(&session).sign.is_some() {
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        let epoch = self.login_epoch.load(Ordering::SeqCst);
        if !self.still_logged_in(epoch) {
            return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
        }
        let (hmac, hasher) = Self::signature_mechanism(mech)?;
        let signer = if hmac.is_some() {
            Class::Secret
        } else {
            Class::Private
        };
        if let Some(obj) = self.session_object(key) {
            self.session_key_use(&obj, mech.ty, signer, obj.sign, "sign")?;
            let op = SignOp {
                epoch,
                asset: None,
                version: 0,
                kt: obj.curve(),
                key: obj.key_ref()?,
                msg: Message::new(hasher, hmac.is_some()),
                hmac,
                audit: OpAudit::new(h, obj.name(), true, mech.ty),
            };
            return self.start_sign(&session, epoch, op);
        }
        let (okey, asset) = self.signature_key(mech, key)?;
        let view = View::resolve(&asset, &okey).ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
        if okey.class != signer || !view.may_sign() {
            self.prune_keys(&asset);
            let why = format!(
                "object {:?} may not sign (asset state {})",
                view.label(),
                asset.state.name()
            );
            if okey.class == signer {
                let mut rec = Record::new(Event::Refused, CKR_KEY_FUNCTION_NOT_PERMITTED)
                    .asset(asset.id.as_str(), Some(view.version))
                    .session(h)
                    .detail(format!("sign refused: {why}"));
                rec.mechanism = Some(mech.ty);
                self.audit(rec)?;
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
            epoch,
            asset: Some(asset.rowid),
            version: view.version,
            kt: asset.key_type,
            key: KeyRef::Derived(key),
            msg: Message::new(hasher, hmac.is_some()),
            hmac,
            audit: OpAudit::new(h, asset.id.to_string(), false, mech.ty),
        };
        self.start_sign(&session, epoch, op)
    }

    fn start_sign(&self, session: &Mutex<Session>, epoch: u64, op: SignOp) -> Result<()> {
        let mut s = lock(session);
        if s.sign.is_some() {
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        // A logout that happened while the key was derived wins: the key is
        // wiped (dropped) here instead of being kept past the logout.
        if !self.still_logged_in(epoch) {
            return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
        }
        s.sign = Some(op);
        Ok(())
    }

    /// `C_Sign`. `out` is `None` for a length query. Returns the signature
    /// length; `CKR_BUFFER_TOO_SMALL` and length queries keep the operation.
    pub fn sign(&self, h: CK_SESSION_HANDLE, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        let op = self.live_sign_op(&mut s)?;
        if op.msg.multi {
            s.sign = None;
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        let len = op.out_len();
        let Some(out) = out else {
            return Ok(len);
        };
        if out.len() < len {
            return Err(Error::rv(CKR_BUFFER_TOO_SMALL));
        }
        let mut op = s
            .sign
            .take()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        op.audit.input.update(data);
        let digest = op.msg.with_last(data);
        self.complete_sign(&op, &digest, out)
    }

    /// Signs, commits the signature's record, and only then copies it out.
    /// For HMAC, `digest` is the whole message.
    fn complete_sign(&self, op: &SignOp, digest: &[u8], out: &mut [u8]) -> Result<usize> {
        let sig = match op.hmac {
            Some(m) => symmetric::hmac(m, op.key.bytes(), digest)?,
            None => mechanisms::ecdsa_sign(op.kt, op.key.bytes(), digest)?.to_vec(),
        };
        let rec = op.audit.record(Event::Sign, CKR_OK, Some(op.version));
        self.confirm(op.asset, op.version, Use::Produce, rec)?;
        out[..sig.len()].copy_from_slice(&sig);
        Ok(sig.len())
    }

    pub fn sign_update(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        self.live_sign_op(&mut s)?;
        let op = s
            .sign
            .as_mut()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        if !op.msg.update(data) {
            // Raw CKM_ECDSA signs a digest in one call (single-part only).
            s.sign = None;
            return Err(Error::rv(CKR_FUNCTION_NOT_SUPPORTED));
        }
        op.audit.input.update(data);
        Ok(())
    }

    pub fn sign_final(&self, h: CK_SESSION_HANDLE, out: Option<&mut [u8]>) -> Result<usize> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        let op = self.live_sign_op(&mut s)?;
        if !op.msg.multi_part() {
            s.sign = None;
            return Err(Error::rv(CKR_FUNCTION_NOT_SUPPORTED));
        }
        let len = op.out_len();
        let Some(out) = out else {
            return Ok(len);
        };
        if out.len() < len {
            return Err(Error::rv(CKR_BUFFER_TOO_SMALL));
        }
        let op = s
            .sign
            .take()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        let digest = op.msg.with_last(&[]);
        self.complete_sign(&op, &digest, out)
    }

    /// The session's signing operation, if its login is still the current one;
    /// otherwise the operation (and its key) is dropped.
    fn live_sign_op<'s>(&self, s: &'s mut Session) -> Result<&'s SignOp> {
        let epoch = s
            .sign
            .as_ref()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?
            .epoch;
        if !self.still_logged_in(epoch) {
            s.sign = None;
            return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
        }
        s.sign
            .as_ref()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))
    }

    pub fn verify_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let session = self.session(h)?;
        if lock(&session).verify.is_some() {
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        let (hmac, hasher) = Self::signature_mechanism(mech)?;
        let verifier = if hmac.is_some() {
            Class::Secret
        } else {
            Class::Public
        };
        if let Some(obj) = self.session_object(key) {
            self.session_key_use(&obj, mech.ty, verifier, obj.verify, "verify")?;
            let epoch = self.login_epoch.load(Ordering::SeqCst);
            let op = VerifyOp {
                asset: None,
                kt: obj.curve(),
                points: obj.point.iter().map(|p| (0, p.clone())).collect(),
                msg: Message::new(hasher, hmac.is_some()),
                hmac: match hmac {
                    Some(m) => Some((m, epoch, vec![(0, obj.key_ref()?)])),
                    None => None,
                },
                audit: OpAudit::new(h, obj.name(), true, mech.ty),
            };
            return Self::start_verify(&session, op);
        }
        let (okey, asset) = self.signature_key(mech, key)?;
        let view = View::resolve(&asset, &okey).ok_or(Error::rv(CKR_KEY_HANDLE_INVALID))?;
        if okey.class != verifier || !view.may_verify() {
            if okey.class == verifier {
                let mut rec = Record::new(Event::Refused, CKR_KEY_FUNCTION_NOT_PERMITTED)
                    .asset(asset.id.as_str(), Some(view.version))
                    .session(h)
                    .detail(format!(
                        "verify refused: asset state {}",
                        asset.state.name()
                    ));
                rec.mechanism = Some(mech.ty);
                self.audit(rec)?;
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
                let epoch = self.login_epoch.load(Ordering::SeqCst);
                Some((m, epoch, self.opening_keys(&view, epoch)?))
            }
            None => None,
        };
        let op = VerifyOp {
            asset: Some(asset.rowid),
            kt: asset.key_type,
            points,
            msg: Message::new(hasher, hmac.is_some()),
            hmac,
            audit: OpAudit::new(h, asset.id.to_string(), false, mech.ty),
        };
        Self::start_verify(&session, op)
    }

    fn start_verify(session: &Mutex<Session>, op: VerifyOp) -> Result<()> {
        let mut s = lock(session);
        if s.verify.is_some() {
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        s.verify = Some(op);
        Ok(())
    }

    pub fn verify(&self, h: CK_SESSION_HANDLE, data: &[u8], sig: &[u8]) -> Result<()> {
        let session = self.session(h)?;
        let mut op = lock(&session)
            .verify
            .take()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        if op.msg.multi {
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        op.audit.input.update(data);
        let digest = op.msg.with_last(data);
        self.verify_audited(&op, &digest, sig)
    }

    /// Verifies and records the outcome before the caller learns it.
    fn verify_audited(&self, op: &VerifyOp, digest: &[u8], sig: &[u8]) -> Result<()> {
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
        let session = self.session(h)?;
        let mut s = lock(&session);
        let op = s
            .verify
            .as_mut()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        if !op.msg.update(data) {
            s.verify = None;
            return Err(Error::rv(CKR_FUNCTION_NOT_SUPPORTED));
        }
        op.audit.input.update(data);
        Ok(())
    }

    pub fn verify_final(&self, h: CK_SESSION_HANDLE, sig: &[u8]) -> Result<()> {
        let session = self.session(h)?;
        let op = lock(&session)
            .verify
            .take()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        if !op.msg.multi_part() {
            return Err(Error::rv(CKR_FUNCTION_NOT_SUPPORTED));
        }
        let digest = op.msg.with_last(&[]);
        self.verify_audited(&op, &digest, sig)
    }

    // ---- digests ----------------------------------------------------------

    pub fn digest_init(&self, h: CK_SESSION_HANDLE, mech: &Mechanism) -> Result<()> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        if s.digest.is_some() {
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        let hasher = Hasher::for_digest(mech.ty).ok_or(Error::rv(CKR_MECHANISM_INVALID))?;
        if !mech.param.is_empty() {
            return Err(Error::rv(CKR_MECHANISM_PARAM_INVALID));
        }
        s.digest = Some(DigestOp {
            hasher,
            multi: false,
        });
        Ok(())
    }

    pub fn digest(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        let op = s
            .digest
            .as_ref()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        if op.multi {
            s.digest = None;
            return Err(Error::rv(CKR_OPERATION_ACTIVE));
        }
        let len = op.hasher.output_len();
        let Some(out) = out else { return Ok(len) };
        if out.len() < len {
            return Err(Error::rv(CKR_BUFFER_TOO_SMALL));
        }
        let mut op = s
            .digest
            .take()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        op.hasher.update(data);
        out[..len].copy_from_slice(&op.hasher.finish());
        Ok(len)
    }

    pub fn digest_update(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        let op = s
            .digest
            .as_mut()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        op.hasher.update(data);
        op.multi = true;
        Ok(())
    }

    pub fn digest_final(&self, h: CK_SESSION_HANDLE, out: Option<&mut [u8]>) -> Result<usize> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        let op = s
            .digest
            .as_ref()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        let len = op.hasher.output_len();
        let Some(out) = out else { return Ok(len) };
        if out.len() < len {
            return Err(Error::rv(CKR_BUFFER_TOO_SMALL));
        }
        let op = s
            .digest
            .take()
            .ok_or(Error::rv(CKR_OPERATION_NOT_INITIALIZED))?;
        out[..len].copy_from_slice(&op.hasher.finish());
        Ok(len)
    }

    pub fn random(&self, h: CK_SESSION_HANDLE, out: &mut [u8]) -> Result<()> {
        self.session(h)?;
        self.backend.random(out)
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
                Some((mech, epoch, keys)) => {
                    if !self.still_logged_in(*epoch) {
                        return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
                    }
                    symmetric::hmac_verify(*mech, keys[0].1.bytes(), digest, sig).map(|_| 0)
                }
                None => mechanisms::ecdsa_verify(op.kt, &op.points[0].1, digest, sig).map(|_| 0),
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
        if let Some((mech, epoch, keys)) = &op.hmac {
            if !self.still_logged_in(*epoch) {
                return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
            }
            return self.open_with(&asset, keys, |key| {
                symmetric::hmac_verify(*mech, key.bytes(), digest, sig)
            });
        }
        self.open_with(&asset, &op.points, |point| {
            mechanisms::ecdsa_verify(op.kt, point, digest, sig)
        })
    }

    /// The commit of a signature (design §4 "Order of an operation"): one
    /// store transaction re-reads the asset and appends the signature's audit
    /// record, or a refusal record when the version may no longer sign (any
    /// process may have rotated, suspended, trimmed or retired the asset).
    /// The signature is released only after this returns Ok: its record is
    /// then committed and fsynced.
    fn confirm(&self, asset: Option<i64>, version: u32, need: Use, rec: Record) -> Result<()> {
        // A session key has no asset state to re-check: its record is
        // written (durably) before the result leaves, like any other.
        let Some(asset) = asset else {
            return self.audit(rec);
        };
        let ak = self
            .audit_key()
            .ok_or_else(|| Error::with(CKR_USER_NOT_LOGGED_IN, "no audit key in this process"))?;
        let what = rec.event.name();
        let committed = self
            .store
            .commit_use(&ak, asset, version, need, rec)
            .map_err(|e| {
                Error::with(
                    CKR_DEVICE_ERROR,
                    format!("{what} result discarded: its audit record was not written: {e}"),
                )
            })?;
        self.anchor_if_stale();
        if let Err(Some(a)) = &committed {
            self.prune_keys(a);
        }
        match committed {
            Ok(()) => Ok(()),
            Err(Some(a)) if !a.is_usable(version) => Err(Error::rv(CKR_KEY_HANDLE_INVALID)),
            Err(Some(a)) => Err(Error::with(
                CKR_KEY_FUNCTION_NOT_PERMITTED,
                format!(
                    "asset {:?} is {} at version {}: version {version} may no longer {what} \
                     (result discarded)",
                    a.id.as_str(),
                    a.state.name(),
                    a.current,
                ),
            )),
            Err(None) => Err(Error::rv(CKR_KEY_HANDLE_INVALID)),
        }
    }
}

/// What a `C_GenerateKeyPair` template pair asks for.
struct KeyPairSpec {
    asset: AssetId,
    key_type: KeyType,
    object_id: Option<Vec<u8>>,
}

fn find(t: &[TemplateAttr], ty: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
    t.iter().find(|(a, _)| *a == ty).map(|(_, v)| v.as_slice())
}

/// The value given for `ty` in either template; both must agree.
fn agreed<'a>(
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

fn ulong(v: &[u8]) -> Option<CK_ULONG> {
    Some(CK_ULONG::from_ne_bytes(v.try_into().ok()?))
}

impl KeyPairSpec {
    fn from_templates(public: &[TemplateAttr], private: &[TemplateAttr]) -> Result<KeyPairSpec> {
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
fn asset_named(what: &str, label: Option<&[u8]>) -> Result<AssetId> {
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
fn object_id(what: &str, label: &str, id: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
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

impl Provider {
    /// `C_SessionCancel`: ends the operations named by `flags`.
    pub fn cancel(&self, h: CK_SESSION_HANDLE, flags: CK_FLAGS) -> Result<()> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        if flags & CKF_SIGN != 0 {
            s.sign = None;
        }
        if flags & CKF_VERIFY != 0 {
            s.verify = None;
        }
        if flags & CKF_DIGEST != 0 {
            s.digest = None;
        }
        if flags & CKF_ENCRYPT != 0 {
            s.encrypt = None;
        }
        if flags & CKF_DECRYPT != 0 {
            s.decrypt = None;
        }
        if flags & CKF_FIND_OBJECTS != 0 {
            s.find = None;
        }
        Ok(())
    }
}
