//! Users mode in the provider: the service credential's login at start, `C_Login` as `name:secret`, `C_SetPIN`, and the role and policy checks every operation passes.

#![forbid(unsafe_code)]

use crate::access::{Action, Denied, Policy, UseKind};
use crate::accounts::{self, Caller, LoginContext};

use super::login::Login;
use super::*;

/// How a refusal by role or policy is returned (docs/pkcs11.md "Users
/// mode"): key use outside the caller's roles `CKR_KEY_FUNCTION_NOT_PERMITTED`;
/// creating or destroying token objects outside them `CKR_ACTION_PROHIBITED`;
/// a policy's rule `CKR_FUNCTION_REJECTED`.
pub(super) fn refusal_rv(action: Action, d: &Denied) -> CK_RV {
    match (d.rule.as_str(), action) {
        ("role" | "pattern", Action::Use(_) | Action::SeePrivate) => CKR_KEY_FUNCTION_NOT_PERMITTED,
        ("role" | "pattern", _) => CKR_ACTION_PROHIBITED,
        _ => CKR_FUNCTION_REJECTED,
    }
}

impl Provider {
    /// Whether people log in as themselves (`[users] enabled`).
    pub fn users_mode(&self) -> bool {
        self.config.users.enabled
    }

    /// The user logged in (users mode), if any, as their row is now: an
    /// admin's lock, removal or change of roles or patterns (a state
    /// change, in any process) applies from the next call that sees it (and
    /// the commit of every use checks it again).
    pub(super) fn caller(&self) -> Option<Arc<Caller>> {
        let mut held = lock(&self.login.caller);
        let (c, at) = held.clone()?;
        let now = self.store.ledger_position();
        if now == at {
            return Some(c);
        }
        let fresh = match self.store.user(&c.name) {
            Ok(Some(u)) if u.state == "active" => Caller::of(&u).ok(),
            Ok(_) => None,
            Err(e) => {
                log::warn(&format!("user {:?}: {e}", c.name));
                None
            }
        };
        let fresh = Arc::new(fresh.unwrap_or_else(|| {
            log::warn(&format!(
                "user {:?} was locked or removed since the login: every use is refused",
                c.name
            ));
            Caller {
                name: c.name.clone(),
                roles: Vec::new(),
                patterns: Vec::new(),
            }
        }));
        *held = Some((fresh.clone(), self.store.ledger_position()));
        Some(fresh)
    }

    /// The name records carry: the logged-in user's (users mode).
    pub(super) fn actor(&self) -> Option<String> {
        self.caller().map(|c| c.name.clone())
    }

    /// Users mode, at `C_Initialize`: logs in to the backing HSM with the
    /// service credential and checks the store under the audit key, so
    /// every record is MACed at once, before any user logs in.
    pub(super) fn service_login(&self) -> Result<()> {
        let pin = self
            .config
            .users
            .service_credential(&self.config.source)
            .map_err(|m| Error::with(CKR_GENERAL_ERROR, m))?;
        self.backend.login(CKU_USER, &pin).map_err(|e| {
            Error::with(
                e.rv,
                format!(
                    "users mode: the service credential ([users] in {}) does not log in to the \
                     backing token: {e}",
                    self.config.source.display()
                ),
            )
        })?;
        self.ensure_audit_key(Login::User)?;
        self.check_root(Login::User)?;
        self.check_anchor(Login::User)?;
        if !self.store.has_users().map_err(store_error)? {
            log::warn(&format!(
                "users mode: store {} has no users yet, so no one can log in: create the first \
                 admin with `p11derive init --admin NAME`",
                self.store.path().display()
            ));
        }
        log::info("users mode: logged in to the backing token with the service credential");
        Ok(())
    }

    /// A login in users mode (`C_Login` with `name:secret`, or
    /// `C_LoginUser`); the caller holds the login lock.
    pub(super) fn login_named(
        &self,
        h: CK_SESSION_HANDLE,
        wanted: Login,
        name: &str,
        secret: &[u8],
    ) -> (Result<Caller>, Option<std::time::Duration>) {
        self.check_secret_of(h, name, secret, wanted == Login::So)
    }

    /// A user's secret checked as a login checks it (counted, delayed,
    /// locked out): the caller, or the error and the delay to sleep.
    fn check_secret_of(
        &self,
        h: CK_SESSION_HANDLE,
        name: &str,
        secret: &[u8],
        admin: bool,
    ) -> (Result<Caller>, Option<std::time::Duration>) {
        let Some(ak) = self.audit_key() else {
            return (
                Err(Error::with(CKR_DEVICE_ERROR, "users mode: no audit key")),
                None,
            );
        };
        let cx = LoginContext {
            store: &self.store,
            prf: &self.backend,
            ak: &ak,
            cfg: &self.config.users,
            session: Some(h),
            admin,
        };
        accounts::login_deferred(&cx, name, secret)
    }

    /// `C_SetPIN` in users mode: the logged-in user's own secret. `old`
    /// is the current secret (or `name:secret`).
    pub fn set_pin(&self, h: CK_SESSION_HANDLE, old: &[u8], new: &[u8]) -> Result<()> {
        self.session(h)?;
        if !self.users_mode() {
            return Err(Error::with(
                CKR_FUNCTION_NOT_SUPPORTED,
                "C_SetPIN: in pass-through mode the PIN is the backing token's: change it there",
            ));
        }
        let caller = self.caller().ok_or(Error::rv(CKR_USER_NOT_LOGGED_IN))?;
        if !self.session_is_rw(h)? {
            return Err(Error::rv(CKR_SESSION_READ_ONLY));
        }
        let old = match accounts::split_login(old) {
            Some((n, s)) if n == caller.name => s,
            _ => old,
        };
        // The new PIN in the same form as the old one: `name:` dropped.
        let new = match accounts::split_login(new) {
            Some((n, s)) if n == caller.name => s,
            _ => new,
        };
        accounts::check_secret(&self.config.users, new)?;
        let ak = self
            .audit_key()
            .ok_or_else(|| Error::with(CKR_DEVICE_ERROR, "users mode: no audit key"))?;
        // The current secret is checked as a login is: counted, delayed and
        // locked out alike, so C_SetPIN is no way to guess it.
        let (checked, delay) = self.check_secret_of(h, &caller.name, old, false);
        if let Err(e) = checked {
            self.advance_anchor();
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            return Err(e);
        }
        let row = self
            .store
            .user(&caller.name)
            .map_err(store_error)?
            .ok_or(Error::rv(CKR_USER_NOT_LOGGED_IN))?;
        let random = |out: &mut [u8]| self.backend.random(out);
        let next = accounts::with_secret(&self.backend, &random, &row, new)?;
        let rec = Record::new(Event::User, CKR_OK)
            .session(h)
            .actor(Some(&caller.name));
        self.store
            .put_user(&ak, &next, "user set-pin", rec)
            .map_err(store_error)?;
        self.advance_anchor();
        log::info(&format!("user {:?} changed their secret", caller.name));
        Ok(())
    }

    fn session_is_rw(&self, h: CK_SESSION_HANDLE) -> Result<bool> {
        let s = self.session(h)?;
        let rw = lock(&s).rw;
        Ok(rw)
    }

    /// Whether the caller may do `action` (on `asset`): always in
    /// pass-through mode. A refusal is audited (naming the user and the
    /// rule), logged, and returned with its code.
    pub(super) fn permit(
        &self,
        h: CK_SESSION_HANDLE,
        action: Action,
        asset: Option<&str>,
        mechanism: Option<CK_MECHANISM_TYPE>,
    ) -> Result<()> {
        if !self.users_mode() {
            return Ok(());
        }
        if !matches!(action, Action::Use(_)) {
            // Creation, lifecycle and stored objects have no commit that
            // checks the user again: the user's row as the store says now
            // (a lock or narrowing by an admin in another process).
            self.store.latest_change().map_err(store_error)?;
        }
        let denied = match self.caller() {
            Some(c) => match c.permits(action, asset) {
                Ok(()) => return Ok(()),
                Err(d) => d,
            },
            None => Denied {
                rule: "role".into(),
                why: format!("{} needs a user login", action.name()),
            },
        };
        let rv = refusal_rv(action, &denied);
        let mut rec = Record::new(Event::Refused, rv).session(h).detail(format!(
            "{} refused: rule={} {}",
            action.name(),
            denied.rule,
            denied.why
        ));
        rec.asset = asset.map(str::to_string);
        rec.mechanism = mechanism;
        self.audit(rec)?;
        let who = self.actor().unwrap_or_else(|| "(no user)".into());
        let msg = format!("user {who:?}: {} ({})", denied.why, denied.rule);
        log::warn(&msg);
        Err(Error::with(rv, msg))
    }

    /// Whether the caller may see an asset's private objects (users mode:
    /// a role that may use or manage it, its patterns matching).
    pub(super) fn sees_private(&self, asset: &str) -> bool {
        if !self.users_mode() {
            return true;
        }
        self.caller()
            .is_some_and(|c| c.permits(Action::SeePrivate, Some(asset)).is_ok())
    }

    /// The policies in force (verified; set ones only), parsed.
    pub(super) fn policies(&self) -> Result<Arc<Vec<Policy>>> {
        self.store.active_policies().map_err(store_error)
    }

    /// The fast refusal at operation start: the policies matching `asset`
    /// allow `mechanism` now (the rate limits are counted at the commit).
    pub(super) fn check_policy(
        &self,
        h: CK_SESSION_HANDLE,
        kind: UseKind,
        asset: &str,
        version: Option<u32>,
        mechanism: CK_MECHANISM_TYPE,
    ) -> Result<()> {
        let now = crate::store::unix_now();
        let what = kind.name();
        self.policy_gate(h, what, (asset, version), mechanism, "", |p| {
            p.check(mechanism, now)
        })
    }

    /// Users mode: `check` on every policy matching the asset of `subject`
    /// (with the version, for the record); the first
    /// refusal is audited (its detail led by `lead`, then the rule and the
    /// policy) and returned as `CKR_FUNCTION_REJECTED`, naming the user.
    pub(super) fn policy_gate(
        &self,
        h: CK_SESSION_HANDLE,
        what: &str,
        (asset, version): (&str, Option<u32>),
        mechanism: CK_MECHANISM_TYPE,
        lead: &str,
        check: impl Fn(&Policy) -> std::result::Result<(), Denied>,
    ) -> Result<()> {
        if !self.users_mode() {
            return Ok(());
        }
        for p in self.policies()?.iter() {
            if !p.pattern.matches(asset) {
                continue;
            }
            if let Err(d) = check(p) {
                let mut rec = Record::new(Event::Refused, CKR_FUNCTION_REJECTED)
                    .asset(asset, version)
                    .session(h)
                    .detail(format!(
                        "{lead}{what} refused: rule={} policy={} {}",
                        d.rule,
                        p.pattern.as_str(),
                        d.why
                    ));
                rec.mechanism = Some(mechanism);
                self.audit(rec)?;
                let msg = format!(
                    "user {:?}: {what} refused by policy {:?}: {} ({})",
                    self.actor().unwrap_or_default(),
                    p.pattern.as_str(),
                    d.why,
                    d.rule
                );
                log::warn(&msg);
                return Err(Error::with(CKR_FUNCTION_REJECTED, msg));
            }
        }
        Ok(())
    }
}
