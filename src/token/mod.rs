//! The one slot and token p11derive shows: the `Provider` facade, its session table, and the state its parts share.
//!
//! Sessions, login state, stable object handles, object search, asset
//! creation and the operations that run in a session. Everything here works
//! on Rust types; [`crate::abi`] does the pointer work. The jobs live in:
//! `login.rs` (login, logout, audit key, rollback anchor), `handles.rs`
//! (handles, lookup, attributes, search), `template.rs` (creation
//! templates), `sign.rs` (signing, verification, the key cache),
//! `digest.rs`, `crypt.rs` (secret keys, AES-GCM), `wrap.rs` (key wrapping),
//! `session.rs` (session keys), `hd.rs` (HD children through
//! `C_DeriveKey`), `ecdh.rs` (ECDH through `C_DeriveKey`), `stored.rs` (certificates, data objects),
//! `ops.rs` (the operation slot every operation runs in), `throttle.rs`
//! (the growing delay after failed logins).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::audit::{public_key_mac, Event, Record};
use crate::backend::Backend;
use crate::ck::*;
use crate::config::Config;
use crate::derive::{self, AssetId, KeyType, Secret32};
use crate::error::{attr_name, Error, Result};
use crate::lifecycle;
use crate::log;
use crate::mechanisms::gcm::{self, GcmParams};
use crate::mechanisms::{self, Hasher};
use crate::mechanisms::{checkvalue, hmac, keywrap};
use crate::metrics::process::{self as proc_metrics, Operation};
use crate::objects::{self, Class, ObjectKey, Value, View, Which};
use crate::store::{Asset, Refusal, Store, StoreError, Transition, Use};
use sha2::{Digest, Sha256};

mod crypt;
mod digest;
mod ecdh;
mod handles;
mod hd;
mod import;
mod login;
mod message;
mod modes;
mod modify;
mod ops;
mod session;
mod session_data;
mod sign;
mod stored;
mod template;
mod throttle;
mod users;
mod wrap;

use crypt::check_key_type;
pub use ecdh::EcdhParams;
use handles::FindOp;
pub use login::Login;
use login::{AuditState, LoginState};
pub use message::MessageParams;
use ops::{Message, OpAudit, OpSlot, Output};
use session::{KeyRef, SessionObjects};
use sign::{KeyCache, Purpose, SignOp, VerifyOp, VersionKeys};
use template::{find, ulong, SecretKeySpec};

/// The only slot.
pub const SLOT_ID: CK_SLOT_ID = 1;

/// A mechanism as the caller gave it.
pub struct Mechanism {
    pub ty: CK_MECHANISM_TYPE,
    pub param: Vec<u8>,
    /// `CKM_AES_GCM`'s parameters, read from the caller's `CK_GCM_PARAMS`.
    pub gcm: Option<GcmParams>,
}

/// The kinds of operation a session runs one of each at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Digest,
    Sign,
    Verify,
    Encrypt,
    Decrypt,
}

impl OpKind {
    /// The operation an entry point (`C_DigestFinal`, `C_SignUpdate`…)
    /// continues or ends, by its name.
    pub fn of_entry(name: &str) -> Option<OpKind> {
        let rest = name.strip_prefix("C_")?;
        [
            ("Digest", OpKind::Digest),
            ("Sign", OpKind::Sign),
            ("Verify", OpKind::Verify),
            ("Encrypt", OpKind::Encrypt),
            ("Decrypt", OpKind::Decrypt),
        ]
        .into_iter()
        .find(|(p, _)| rest.starts_with(p) && !rest.ends_with("Init"))
        .map(|(_, k)| k)
    }
}

#[cfg(test)]
#[test]
fn entry_points_name_their_operation() {
    assert_eq!(OpKind::of_entry("C_DigestFinal"), Some(OpKind::Digest));
    assert_eq!(OpKind::of_entry("C_Digest"), Some(OpKind::Digest));
    assert_eq!(OpKind::of_entry("C_SignUpdate"), Some(OpKind::Sign));
    assert_eq!(OpKind::of_entry("C_Verify"), Some(OpKind::Verify));
    assert_eq!(OpKind::of_entry("C_EncryptFinal"), Some(OpKind::Encrypt));
    assert_eq!(OpKind::of_entry("C_DecryptUpdate"), Some(OpKind::Decrypt));
    assert_eq!(OpKind::of_entry("C_SignInit"), None);
    assert_eq!(OpKind::of_entry("C_GenerateRandom"), None);
}

/// An attribute of a caller's template: its type and value bytes.
pub type TemplateAttr = (CK_ATTRIBUTE_TYPE, Vec<u8>);

/// One session's state. Its lock is per session: sessions never wait for
/// each other here.
pub struct Session {
    rw: bool,
    find: OpSlot<FindOp>,
    sign: OpSlot<SignOp>,
    verify: OpSlot<VerifyOp>,
    digest: OpSlot<digest::DigestOp>,
    encrypt: OpSlot<crypt::Crypt>,
    decrypt: OpSlot<crypt::Crypt>,
    msg_encrypt: OpSlot<message::MsgOp>,
    msg_decrypt: OpSlot<message::MsgOp>,
}

/// The open sessions by handle.
struct Sessions {
    table: RwLock<HashMap<CK_SESSION_HANDLE, Arc<Mutex<Session>>>>,
    next: AtomicU64,
}

impl Sessions {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<CK_SESSION_HANDLE, Arc<Mutex<Session>>>> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<CK_SESSION_HANDLE, Arc<Mutex<Session>>>> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The process's backing HSM call counts when this provider opened.
struct CallsAtOpen {
    hsm: u64,
    anchor: u64,
}

pub struct Provider {
    pub config: Config,
    pub backend: Backend,
    pub store: Store,
    sessions: Sessions,
    /// Who is logged in, since which logout.
    login: LoginState,
    /// The audit key and the rollback anchor's timing.
    audit: AuditState,
    /// This provider's store in the process-wide handle table.
    store_index: usize,
    /// Derived keys and verified public keys.
    keys: KeyCache,
    /// Session keys (`CKA_TOKEN=false`) by handle; see `session.rs`.
    session_objects: SessionObjects,
    calls_at_open: CallsAtOpen,
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
        let lifetime =
            crate::approvals::parse_duration(&config.approvals.expires).map_err(|m| {
                Error::with(
                    CKR_FUNCTION_FAILED,
                    format!(
                        "config file {}: [approvals] expires: {m}",
                        config.source.display()
                    ),
                )
            })?;
        let store = Store::open_config(&config.store).map_err(|e| {
            Error::with(
                CKR_FUNCTION_FAILED,
                format!("{e} (config file {})", config.source.display()),
            )
        })?;
        store.set_request_lifetime(lifetime);
        let backend = Backend::open(&config.backend, &config.source)?;
        let store_index = handles::store_index(store.path());
        mechanisms::warm_up();
        let p = Provider {
            config,
            backend,
            store,
            sessions: Sessions {
                table: RwLock::new(HashMap::new()),
                next: AtomicU64::new(1),
            },
            login: LoginState::default(),
            audit: AuditState::default(),
            store_index,
            keys: KeyCache::default(),
            session_objects: SessionObjects::default(),
            calls_at_open: CallsAtOpen {
                hsm: crate::backend::HSM_CALLS.load(Ordering::Relaxed),
                anchor: crate::backend::ANCHOR_CALLS.load(Ordering::Relaxed),
            },
        };
        if p.users_mode() {
            if let Err(e) = p.service_login() {
                // C_Initialize answers CKR_FUNCTION_FAILED (the log says
                // why), and leaves the backing module as it found it.
                p.backend.finalize();
                return Err(Error::with(CKR_FUNCTION_FAILED, e.to_string()));
            }
        }
        Ok(p)
    }

    /// Ends every session and releases the backing HSM.
    pub fn finalize(&self) {
        self.keys.clear();
        self.drop_session_objects(None);
        log::info(&format!(
            "keys derived through the backing HSM: {}; backing HSM calls: {} (rollback anchor: \
             {}); audit fsyncs: {}",
            self.keys.derivations(),
            crate::backend::HSM_CALLS.load(Ordering::Relaxed) - self.calls_at_open.hsm,
            crate::backend::ANCHOR_CALLS.load(Ordering::Relaxed) - self.calls_at_open.anchor,
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
        self.settle_at_finalize();
        self.sessions.write().clear();
        self.backend.finalize();
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
        let h = self.sessions.next.fetch_add(1, Ordering::Relaxed);
        let session = Session {
            rw,
            find: OpSlot::default(),
            sign: OpSlot::default(),
            verify: OpSlot::default(),
            digest: OpSlot::default(),
            encrypt: OpSlot::default(),
            decrypt: OpSlot::default(),
            msg_encrypt: OpSlot::default(),
            msg_decrypt: OpSlot::default(),
        };
        self.sessions
            .write()
            .insert(h, Arc::new(Mutex::new(session)));
        // Checked after the session is visible: an SO login that raced with
        // us either sees this session and refuses, or we see it and back out.
        if !rw && self.login_state() == Login::So {
            self.sessions.write().remove(&h);
            return Err(Error::rv(CKR_SESSION_READ_WRITE_SO_EXISTS));
        }
        Ok(h)
    }

    pub fn session(&self, h: CK_SESSION_HANDLE) -> Result<Arc<Mutex<Session>>> {
        self.sessions
            .read()
            .get(&h)
            .cloned()
            .ok_or(Error::rv(CKR_SESSION_HANDLE_INVALID))
    }

    /// Runs `f` on a session's state, under its lock.
    fn in_session<R>(
        &self,
        h: CK_SESSION_HANDLE,
        f: impl FnOnce(&mut Session) -> Result<R>,
    ) -> Result<R> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        f(&mut s)
    }

    /// The session `h`, whose operation `slot` (sign, verify, encrypt or
    /// decrypt) is idle: the first checks of every `C_*Init` with a key.
    fn idle_session<T>(
        &self,
        h: CK_SESSION_HANDLE,
        slot: impl FnOnce(&mut Session) -> &mut OpSlot<T>,
    ) -> Result<Arc<Mutex<Session>>> {
        let session = self.session(h)?;
        slot(&mut lock(&session)).ensure_idle()?;
        Ok(session)
    }

    pub fn close_session(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        self.sessions
            .write()
            .remove(&h)
            .ok_or(Error::rv(CKR_SESSION_HANDLE_INVALID))?;
        self.drop_session_objects(Some(h));
        self.end_login_if_idle();
        Ok(())
    }

    pub fn close_all_sessions(&self, slot: CK_SLOT_ID) -> Result<()> {
        self.check_slot(slot)?;
        self.sessions.write().clear();
        self.drop_session_objects(None);
        self.end_login_if_idle();
        Ok(())
    }

    /// The gauges of the process's metrics file (`metrics::writer`).
    pub fn gauges(&self) -> crate::metrics::process::ProviderGauges {
        crate::metrics::process::ProviderGauges {
            keys: self.keys.cached() as u64,
            sessions: self.sessions.read().len() as u64,
        }
    }

    pub fn session_count(&self) -> (usize, usize) {
        let sessions = self.sessions.read();
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

    /// `C_SessionCancel`: ends the operations named by `flags`.
    pub fn cancel(&self, h: CK_SESSION_HANDLE, flags: CK_FLAGS) -> Result<()> {
        let named = |flag: CK_FLAGS| flags & flag != 0;
        self.in_session(h, |s| {
            s.sign.end_if(|_| named(CKF_SIGN));
            s.verify.end_if(|_| named(CKF_VERIFY));
            s.digest.end_if(|_| named(CKF_DIGEST));
            s.encrypt.end_if(|_| named(CKF_ENCRYPT));
            s.decrypt.end_if(|_| named(CKF_DECRYPT));
            s.msg_encrypt.end_if(|_| named(CKF_MESSAGE_ENCRYPT));
            s.msg_decrypt.end_if(|_| named(CKF_MESSAGE_DECRYPT));
            s.find.end_if(|_| named(CKF_FIND_OBJECTS));
            Ok(())
        })
    }

    pub fn random(&self, h: CK_SESSION_HANDLE, out: &mut [u8]) -> Result<()> {
        self.session(h)?;
        self.backend.random(out)
    }

    /// Ends the operation of kind `kind` in session `h`, if one runs: the
    /// entry points call it when they fail before the operation could
    /// (a caller's bad pointer): every error but `CKR_BUFFER_TOO_SMALL`
    /// ends an operation (PKCS#11 3.0 §5.12-§5.15).
    pub fn end_operation(&self, h: CK_SESSION_HANDLE, kind: OpKind) {
        if let Ok(session) = self.session(h) {
            let mut s = lock(&session);
            match kind {
                OpKind::Digest => s.digest.end(),
                OpKind::Sign => s.sign.end(),
                OpKind::Verify => s.verify.end(),
                OpKind::Encrypt => s.encrypt.end(),
                OpKind::Decrypt => s.decrypt.end(),
            }
        }
    }

    /// `C_SeedRandom`: the seed goes to the backing HSM's `C_SeedRandom`,
    /// which mixes it in (it never replaces the HSM's entropy);
    /// `CKR_RANDOM_SEED_NOT_SUPPORTED` when the HSM takes no seed.
    pub fn seed_random(&self, h: CK_SESSION_HANDLE, seed: &[u8]) -> Result<()> {
        self.session(h)?;
        self.backend.seed_random(seed)
    }
}
