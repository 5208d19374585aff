//! Login and logout, the audit key a user login derives, audit records, and the root and rollback-anchor checks that guard the store.

#![forbid(unsafe_code)]

use std::sync::atomic::AtomicU8;

use super::*;

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

/// A logged-in user and the verified state change their row was read at.
pub(super) type HeldCaller = (Arc<crate::accounts::Caller>, Option<(u64, [u8; 32])>);

/// Who is logged in.
pub(super) struct LoginState {
    who: AtomicU8,
    /// Incremented at every logout; operations remember the epoch they began in.
    epoch: AtomicU64,
    /// Serializes login and logout with each other (never held by signing).
    change: Mutex<()>,
    /// Users mode: who logged in, as their row was at this verified state
    /// change (read again once the ledger moves).
    pub(super) caller: Mutex<Option<HeldCaller>>,
    /// The login that closing the application's last session ended without
    /// the backing HSM's part (moving the rollback anchor, the backing
    /// logout): done by the next `C_Login` or `C_Finalize` (see
    /// `settle_closed_login`).
    closed: Mutex<Option<Login>>,
}

impl Default for LoginState {
    fn default() -> Self {
        LoginState {
            who: AtomicU8::new(Login::None as u8),
            epoch: AtomicU64::new(0),
            change: Mutex::new(()),
            caller: Mutex::new(None),
            closed: Mutex::new(None),
        }
    }
}

impl LoginState {
    pub fn who(&self) -> Login {
        Login::from_u8(self.who.load(Ordering::SeqCst))
    }

    /// The current login epoch, for an operation to remember.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

/// The audit key and when the rollback anchor last moved.
#[derive(Default)]
pub(super) struct AuditState {
    /// The audit MAC key, derived through the backing HSM at the first user
    /// login and kept until C_Finalize so that later records (public
    /// verifications included) can be chained.
    key: Mutex<Option<Arc<Secret32>>>,
    /// When the rollback anchor was last advanced (ms since the epoch).
    anchored_at_ms: AtomicU64,
    /// Whether this process committed records since the anchor last moved
    /// (set after every commit, cleared when a move starts): what closing
    /// the last session must still anchor.
    unanchored: std::sync::atomic::AtomicBool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Provider {
    pub fn login_state(&self) -> Login {
        self.login.who()
    }

    /// Whether a signing operation started in login `epoch` may still run.
    pub(super) fn still_logged_in(&self, epoch: u64) -> bool {
        self.login_state() == Login::User && self.login.epoch() == epoch
    }

    /// `CKR_USER_NOT_LOGGED_IN` once the login of `epoch` has ended.
    pub(super) fn live(&self, epoch: u64) -> Result<()> {
        if !self.still_logged_in(epoch) {
            return Err(Error::rv(CKR_USER_NOT_LOGGED_IN));
        }
        Ok(())
    }

    /// [`Provider::live`] for an operation that began in a login (`Some`);
    /// one on a public session key (`None`) needs none.
    pub(super) fn live_if(&self, epoch: Option<u64>) -> Result<()> {
        epoch.map_or(Ok(()), |e| self.live(e))
    }

    pub fn login(&self, h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &[u8]) -> Result<()> {
        self.session(h)?;
        // One attempt at a time; a failure sleeps in it (see throttle.rs).
        let attempt = throttle::attempt();
        let serial = lock(&self.login.change);
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
        // Before the PIN reaches the HSM: a backing login still open would
        // accept any PIN (CKR_USER_ALREADY_LOGGED_IN).
        self.settle_closed_login();
        if self.users_mode() {
            let (name, secret) = crate::accounts::split_login(pin).unwrap_or(("", pin));
            let (outcome, delay) = self.finish_named_login(h, wanted, name, secret);
            // The delay after a failure is slept without the login lock
            // (logouts and closing sessions go on), in this process's turn.
            drop(serial);
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            drop(attempt);
            return outcome;
        }
        let who = if wanted == Login::User {
            "user"
        } else {
            "security officer"
        };
        match self.backend.login(user, pin) {
            Ok(()) => {
                attempt.succeeded();
                self.login.who.store(wanted as u8, Ordering::SeqCst);
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
                // The delay is slept without the login lock.
                drop(serial);
                attempt.failed(who);
                Err(e)
            }
        }
    }

    /// `C_LoginUser` (PKCS#11 3.0): the user's name apart from the PIN.
    /// Users mode only (in pass-through mode the backing token has no
    /// named users, and an empty name is `C_Login`).
    pub fn login_user(
        &self,
        h: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: &[u8],
        name: &[u8],
    ) -> Result<()> {
        if name.is_empty() {
            return self.login(h, user, pin);
        }
        if !self.users_mode() {
            return Err(Error::with(
                CKR_FUNCTION_NOT_SUPPORTED,
                "C_LoginUser with a user name: users mode is off ([users] enabled), and the \
                 backing token has no named users; use C_Login",
            ));
        }
        // The name joins the PIN in the form C_Login takes (`name:secret`),
        // in locked memory.
        let mut joined = crate::secure::SecretBytes::with_capacity(name.len() + 1 + pin.len())
            .map_err(|m| Error::with(CKR_HOST_MEMORY, m))?;
        joined.push(name);
        joined.push(b":");
        joined.push(pin);
        self.login(h, user, &joined)
    }

    /// The rest of a users-mode login, under the login lock: the user's
    /// secret checked (with lockout), then the login state and its record.
    fn finish_named_login(
        &self,
        h: CK_SESSION_HANDLE,
        wanted: Login,
        name: &str,
        secret: &[u8],
    ) -> (Result<()>, Option<std::time::Duration>) {
        let caller = match self.login_named(h, wanted, name, secret) {
            (Ok(c), _) => c,
            (Err(e), delay) => {
                // A failure is a state change (the name's failed-login
                // count): the anchor holds it at once, so cutting it from
                // the log to get more guesses is refused.
                self.advance_anchor();
                return (Err(e), delay);
            }
        };
        (self.become_user(h, wanted, caller), None)
    }

    /// A user's login accepted: the login state, and its record.
    fn become_user(
        &self,
        h: CK_SESSION_HANDLE,
        wanted: Login,
        caller: crate::accounts::Caller,
    ) -> Result<()> {
        let who = caller.name.clone();
        *lock(&self.login.caller) = Some((Arc::new(caller), self.store.ledger_position()));
        self.login.who.store(wanted as u8, Ordering::SeqCst);
        if wanted == Login::So && self.read_only_sessions_exist() {
            self.end_login_locked();
            return Err(Error::rv(CKR_SESSION_READ_ONLY_EXISTS));
        }
        let kind = if wanted == Login::User {
            "user"
        } else {
            "security officer"
        };
        let rec = Record::new(Event::Login, CKR_OK)
            .session(h)
            .detail(format!("{kind} {who}"));
        if let Err(e) = self.audit(rec) {
            self.end_login_locked();
            return Err(e);
        }
        log::info(&format!("login: user {who:?} logged in as {kind}"));
        Ok(())
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
    pub(super) fn ensure_audit_key(&self, who: Login) -> Result<()> {
        let mut ak = lock(&self.audit.key);
        if ak.is_none() && who == Login::User {
            *ak = Some(Arc::new(derive::audit_key(&self.backend)?));
        }
        Ok(())
    }

    /// Refuses a store whose audit chain another root wrote, before this
    /// process writes anything with its audit key.
    pub(super) fn check_root(&self, who: Login) -> Result<()> {
        match (who, self.audit_key()) {
            (Login::User, Some(ak)) => self.store.check_root(&ak).map_err(store_error),
            _ => Ok(()),
        }
    }

    /// Refuses a store that is not the root's (another lineage) or is older
    /// than the rollback anchor in the backing HSM, then verifies the
    /// store's state changes under the audit key (`Store::authenticate`):
    /// from here on every asset row this process reads is checked.
    pub(super) fn check_anchor(&self, who: Login) -> Result<()> {
        let Some(ak) = self.audit_key().filter(|_| who == Login::User) else {
            return Ok(());
        };
        let anchor = self.backend.read_anchor()?;
        if let Some(a) = &anchor {
            self.store.check_anchor(a).map_err(store_error)?;
        }
        self.store
            .authenticate(&ak, anchor.as_ref())
            .map_err(store_error)?;
        // Every commit from now on checks the store against the anchor.
        let watch = self.backend.anchor_watch();
        self.store.watch_anchor(Arc::new(move || {
            let read = watch.start();
            Box::new(move || read.wait().map_err(|e| e.to_string()))
        }));
        Ok(())
    }

    /// Moves the HSM anchor to the newest record and state change (needs
    /// the user login), only while the store still holds what the anchor
    /// holds: a store found older than the anchor underneath a running
    /// process is refused from then on (fail closed), never anchored. A
    /// failure to write is logged, not fatal: the anchor then lags, never
    /// leads.
    pub(super) fn advance_anchor(&self) {
        crate::backend::anchoring(|| self.move_anchor(false))
    }

    fn move_anchor(&self, periodic: bool) {
        self.audit.anchored_at_ms.store(now_ms(), Ordering::Relaxed);
        if !self.store.authenticated() {
            return;
        }
        if crate::backend::exiting() {
            log::info("anchor: not moved: the process is exiting (the next login moves it)");
            return;
        }
        self.audit.unanchored.store(false, Ordering::SeqCst);
        if let Err(e) = lifecycle::advance_anchor(&self.store, &self.backend, periodic) {
            self.audit.unanchored.store(true, Ordering::SeqCst);
            log::warn(&format!("anchor: {e}"));
        }
    }

    /// Advances the anchor now, failing when it cannot be written: after a
    /// commit that used approvals (each usable once), before the result
    /// leaves, so that a store copy put back cannot offer them again.
    pub(super) fn anchor_now(&self) -> Result<()> {
        self.audit.anchored_at_ms.store(now_ms(), Ordering::Relaxed);
        self.audit.unanchored.store(false, Ordering::SeqCst);
        crate::backend::anchoring(|| lifecycle::advance_anchor(&self.store, &self.backend, false))
            .map_err(|e| {
                self.audit.unanchored.store(true, Ordering::SeqCst);
                Error::with(
                    CKR_DEVICE_ERROR,
                    format!(
                        "result discarded: its approvals were used, but the backing HSM's \
                         rollback anchor could not record it: {e}"
                    ),
                )
            })
    }

    /// After a commit: advances the anchor if it is older than
    /// `[store] anchor_interval_ms`, so that a long-running signer's newest records
    /// cannot be cut from the log unnoticed for longer than that. One caller
    /// per interval wins the race and pays for the HSM write.
    pub(super) fn anchor_if_stale(&self) {
        self.audit.unanchored.store(true, Ordering::SeqCst);
        let last = self.audit.anchored_at_ms.load(Ordering::Relaxed);
        let now = now_ms();
        if now.saturating_sub(last) < self.config.store.anchor_interval_ms {
            return;
        }
        if self
            .audit
            .anchored_at_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            crate::backend::anchoring(|| self.move_anchor(true));
        }
    }

    pub(super) fn audit_key(&self) -> Option<Arc<Secret32>> {
        lock(&self.audit.key).clone()
    }

    /// Writes an audit record durably (sealed into the chain when this
    /// process has the audit key, else pending). Fails closed.
    pub(super) fn audit(&self, mut rec: Record) -> Result<()> {
        if rec.actor.is_none() {
            rec.actor = self.actor();
        }
        let ak = self.audit_key();
        self.store
            .record(ak.as_deref(), rec)
            .map_err(|e| Error::with(CKR_DEVICE_ERROR, format!("audit record not written: {e}")))?;
        self.audit.unanchored.store(true, Ordering::SeqCst);
        if ak.is_some() && (self.login_state() == Login::User || self.users_mode()) {
            self.anchor_if_stale();
        }
        Ok(())
    }

    /// The audit context for lifecycle steps, which need the key.
    pub(super) fn with_audit<T>(
        &self,
        session: CK_SESSION_HANDLE,
        f: impl FnOnce(&lifecycle::Audit) -> Result<T>,
    ) -> Result<T> {
        let ak = self.audit_key().ok_or_else(|| {
            Error::with(CKR_USER_NOT_LOGGED_IN, "no audit key: log in as user first")
        })?;
        let actor = self.actor();
        f(&lifecycle::Audit {
            ak: &ak,
            session: Some(session),
            actor: actor.as_deref(),
        })
    }

    fn read_only_sessions_exist(&self) -> bool {
        let sessions = self.sessions.read();
        sessions.values().any(|s| !lock(s).rw)
    }

    /// Forgets the login and every key held by an operation of any session.
    fn end_login(&self) {
        let _serial = lock(&self.login.change);
        self.end_login_locked();
    }

    /// PKCS#11 logs out when the application's last session closes; decided
    /// under the login lock so a concurrent open-and-login is not undone.
    ///
    ///
    /// Applications close their sessions from exit handlers and destructors
    /// (OpenSSL's cleanup through pkcs11-provider or libp11), when the
    /// backing module may be torn down, so the backing HSM is called only
    /// for what cannot wait: the anchor's move, when the login committed
    /// records the anchor does not hold yet (a process may `_exit` or be
    /// killed right after, and a move left for later would leave those
    /// records cuttable), and never once the process runs its exit
    /// handlers. The backing logout waits for the next `C_Login` or
    /// `C_Finalize` (`settle_closed_login`); until then nothing is derived
    /// (the provider's login has ended) and the PIN is forgotten now.
    pub(super) fn end_login_if_idle(&self) {
        let _serial = lock(&self.login.change);
        if self.sessions.read().is_empty() {
            let who = self.login_state();
            if who == Login::None {
                return;
            }
            if crate::backend::exiting() {
                log::info("logout: the last session closed while the process is exiting: no backing HSM call");
            } else if who == Login::User && self.audit.unanchored.load(Ordering::SeqCst) {
                self.advance_anchor();
            }
            self.end_login_state();
            self.backend.forget_pin();
            let mut closed = lock(&self.login.closed);
            // A user login left unanchored stays owed through a later SO one.
            if *closed != Some(Login::User) {
                *closed = Some(who);
            }
        }
    }

    /// The backing HSM's part of a login that closing the last session
    /// ended: the anchor's move if the close could not make it (the process
    /// was exiting, or the write failed), then the backing logout. Called
    /// with `login.change` held, by `C_Login` before the PIN is checked and
    /// by `C_Finalize`.
    pub(super) fn settle_closed_login(&self) {
        let Some(who) = lock(&self.login.closed).take() else {
            return;
        };
        if who == Login::User && self.audit.unanchored.load(Ordering::SeqCst) {
            self.advance_anchor();
        }
        self.end_backing_login();
    }

    /// `C_Finalize`: settles a login closed with the last session.
    pub(super) fn settle_at_finalize(&self) {
        let _serial = lock(&self.login.change);
        self.settle_closed_login();
    }

    /// The logout itself; the caller holds `login.change`. The anchor moves
    /// first, while the backing login can still write it.
    fn end_login_locked(&self) {
        let who = self.login_state();
        if who == Login::None {
            return;
        }
        if who == Login::User {
            self.advance_anchor();
        }
        self.end_login_state();
        self.end_backing_login();
    }

    /// The provider's side of a logout: no backing HSM call. The state flips
    /// and the epoch moves *before* keys are wiped, so an operation
    /// initialized concurrently either sees the logout or is wiped here (see
    /// `start_sign` and `crypt_init`).
    fn end_login_state(&self) {
        self.login.who.store(Login::None as u8, Ordering::SeqCst);
        self.login.epoch.fetch_add(1, Ordering::SeqCst);
        for s in self.sessions.read().values() {
            let mut s = lock(s);
            s.sign.end();
            s.encrypt.end();
            s.decrypt.end();
            s.msg_encrypt.end();
            s.msg_decrypt.end();
            s.verify.end_if(|v| v.hmac.is_some());
        }
        // Every derived key is wiped with the login: the key cache, and the
        // private HD children (derived again after the next login: they are
        // the same keys every time).
        self.keys.clear();
        self.drop_private_children(|_| true);
        *lock(&self.login.caller) = None;
    }

    /// Ends the backing login (pass-through mode; users mode keeps the
    /// service credential's).
    fn end_backing_login(&self) {
        if self.users_mode() {
            // The service credential's backing login stays: records are
            // still MACed, and the next user's login needs it.
        } else if crate::backend::exiting() {
            // The backing module's state goes with the process.
        } else if let Err(e) = self.backend.logout() {
            log::warn(&format!("logout: {e}"));
        }
    }
}
