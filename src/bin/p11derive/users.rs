//! Users mode in the CLI: the service-credential login, the person's login as a user (`--user`), and the role check each command makes.

use p11derive::access::Action;
use p11derive::accounts::{self, Caller, LoginContext};
use p11derive::audit::{Event, Record};
use p11derive::backend::Backend;
use p11derive::ck::{CKR_FUNCTION_REJECTED, CKR_PIN_INCORRECT, CKR_PIN_LOCKED};
use p11derive::config::Config;
use p11derive::derive::Secret32;
use p11derive::store::Store;
use p11derive::types::Prf;

use crate::args::Cli;
use crate::common::{
    failed, hsm_pin, login, open_backend, read_secret, refuse_rolled_back, Failure,
};

/// What a command needs of the user in users mode: one of `actions`
/// (on `asset`, when it concerns one).
pub struct Want<'a> {
    pub actions: Vec<Action>,
    pub asset: Option<&'a str>,
    /// The store is checked against the HSM's rollback anchor before the
    /// login (false: against its own chain only, for `audit verify` and
    /// `audit reanchor`, which judge the anchor themselves).
    pub anchored: bool,
}

impl<'a> Want<'a> {
    pub fn to(action: Action) -> Want<'a> {
        Want {
            actions: vec![action],
            asset: None,
            anchored: true,
        }
    }

    /// `action` on the asset `asset`.
    pub fn on(action: Action, asset: &'a str) -> Want<'a> {
        Want {
            asset: Some(asset),
            ..Want::to(action)
        }
    }

    pub fn read_public() -> Want<'a> {
        Want::to(Action::ReadPublic)
    }

    /// `self`, or else `other`.
    pub fn or(mut self, other: Action) -> Want<'a> {
        self.actions.push(other);
        self
    }

    /// Checked against the store's own chain, not the HSM's anchor.
    pub fn unanchored(mut self) -> Want<'a> {
        self.anchored = false;
        self
    }
}

/// The user the person names: `--user`, else `$P11DERIVE_USER`.
pub fn user_name(cli: &Cli, config: &Config) -> Result<String, Failure> {
    cli.user
        .clone()
        .or_else(|| std::env::var("P11DERIVE_USER").ok())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Failure::Usage(format!(
                "users mode is on ([users] enabled = true in {}): say who you are with --user \
                 NAME (or set P11DERIVE_USER); your secret comes from --pin-file FILE, \
                 $P11DERIVE_PIN or the prompt",
                config.source.display()
            ))
        })
}

/// Users mode's [`crate::common::with_key`]: the service credential's login
/// at the backing HSM, the store verified, the person's login as a user,
/// the role check, then `f`.
pub fn with_user<T>(
    cli: &Cli,
    store: &Store,
    config: &Config,
    want: Want<'_>,
    f: impl FnOnce(&Store, &Backend, &Secret32, Option<&Caller>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let service = hsm_pin(cli, config)?;
    let (name, secret) = who(cli, config)?;
    let backend = open_backend(config)?;
    let result = login(&backend, &service).and_then(|()| {
        let ak = p11derive::derive::audit_key(&backend).map_err(failed)?;
        store.check_root(&ak)?;
        if want.anchored {
            refuse_rolled_back(store, &backend, &ak)?;
        } else {
            store.authenticate(&ak, None)?;
        }
        let admitted = admit_as(cli, store, &backend, &ak, config, &want, &name, &secret);
        match admitted {
            Ok(caller) => f(store, &backend, &ak, Some(&caller)),
            Err(e) => {
                // The failed login or the refusal is a record: the anchor follows.
                let _ = p11derive::lifecycle::advance_anchor(store, &backend, false);
                Err(e)
            }
        }
    });
    let _ = backend.logout();
    backend.finalize();
    result
}

/// In users mode, the person's login and role check for a command that
/// otherwise needs no login (`audit export`, `audit tail`, `status`); in
/// pass-through mode nothing.
pub fn gate(cli: &Cli, store: &Store, config: &Config, want: Want<'_>) -> Result<(), Failure> {
    if !config.users.enabled {
        return Ok(());
    }
    crate::common::with_key(cli, store, config, want, |_, _, _, _| Ok(()))
}

/// The person's login as a user (`--user`, its secret) and the role check
/// for `want`, under `prf` and `ak`: a recovery logs in under the root it
/// rebuilt, before that root is in any HSM.
pub fn admit(
    cli: &Cli,
    store: &Store,
    prf: &dyn Prf,
    ak: &Secret32,
    config: &Config,
    want: &Want<'_>,
) -> Result<Caller, Failure> {
    let (name, secret) = who(cli, config)?;
    admit_as(cli, store, prf, ak, config, want, &name, &secret)
}

/// The user the person names and the secret they give.
fn who(cli: &Cli, config: &Config) -> Result<(String, p11derive::secure::SecretBytes), Failure> {
    let name = user_name(cli, config)?;
    let secret = read_secret(
        cli,
        &format!("Secret of user {name:?}: "),
        &format!("no secret for user {name:?}"),
    )?;
    Ok((name, secret))
}

#[allow(clippy::too_many_arguments)]
fn admit_as(
    cli: &Cli,
    store: &Store,
    prf: &dyn Prf,
    ak: &Secret32,
    config: &Config,
    want: &Want<'_>,
    name: &str,
    secret: &[u8],
) -> Result<Caller, Failure> {
    log_in(store, prf, ak, config, name, secret)
        .and_then(|caller| permit(cli, store, ak, &caller, want).map(|()| caller))
}

/// The user's login (lockout, delay and records are `accounts::login`'s).
fn log_in(
    store: &Store,
    prf: &dyn Prf,
    ak: &Secret32,
    config: &Config,
    name: &str,
    secret: &[u8],
) -> Result<Caller, Failure> {
    let cfg = &config.users;
    let cx = LoginContext {
        store,
        prf,
        ak,
        cfg,
        session: None,
        admin: false,
    };
    accounts::login(&cx, name, secret).map_err(|e| match (e.rv, e.message) {
        (CKR_PIN_INCORRECT, _) => Failure::Refused(format!(
            "login as user {name:?} refused: the name or the secret is wrong \
             (CKR_PIN_INCORRECT); after {} failures in a row the name is locked out for {} s \
             ([users] max_failures, lockout_seconds)",
            cfg.max_failures, cfg.lockout_seconds
        )),
        (CKR_PIN_LOCKED, Some(m)) => Failure::Refused(format!("{m} (CKR_PIN_LOCKED)")),
        (CKR_PIN_LOCKED, None) => Failure::Refused(format!(
            "login as user {name:?} refused: locked out after too many failed logins \
             (CKR_PIN_LOCKED); the lockout ends by itself ([users] lockout_seconds = {}), or an \
             admin lifts it with `p11derive user unlock {name}`",
            cfg.lockout_seconds
        )),
        (rv, m) => failed(p11derive::Error { rv, message: m }),
    })
}

/// Whether `caller` may do what the command wants; a refusal is audited
/// (the user, the rule) and exits 3 naming the user, the rule and the role
/// that would allow it.
fn permit(
    cli: &Cli,
    store: &Store,
    ak: &Secret32,
    caller: &Caller,
    want: &Want<'_>,
) -> Result<(), Failure> {
    let mut denied = Vec::new();
    for action in &want.actions {
        match caller.permits(*action, want.asset) {
            Ok(()) => return Ok(()),
            Err(d) => denied.push(d),
        }
    }
    let command = crate::command_path(&cli.command);
    let rule = denied.first().map_or("role", |d| d.rule.as_str());
    let why: Vec<&str> = denied.iter().map(|d| d.why.as_str()).collect();
    let why = why.join("; or ");
    let mut rec = Record::new(Event::Refused, CKR_FUNCTION_REJECTED)
        .actor(Some(&caller.name))
        .detail(format!("p11derive {command}: refused: rule={rule} {why}"));
    if let Some(asset) = want.asset {
        rec = rec.asset(asset, None);
    }
    store.record(Some(ak), rec)?;
    Err(Failure::Refused(format!(
        "user {:?} may not run `p11derive {command}`: {why} (rule {rule})",
        caller.name
    )))
}

/// What a users-mode command acts with once its user is logged in and allowed.
pub struct Acting<'a> {
    pub config: &'a Config,
    pub store: &'a Store,
    pub backend: &'a Backend,
    pub ak: &'a Secret32,
    pub caller: &'a Caller,
}

impl Acting<'_> {
    /// A record of `event` naming the acting user.
    pub fn record(&self, event: Event) -> Record {
        Record::new(event, p11derive::ck::CKR_OK).actor(Some(&self.caller.name))
    }

    /// The backing HSM's random bytes (salts).
    pub fn random(&self) -> impl Fn(&mut [u8]) -> p11derive::Result<()> + '_ {
        |out| self.backend.random(out)
    }
}

/// Runs a users-mode command (`user …`, `policy …`) as the logged-in user
/// allowed `want`; after a change (`changes`) the HSM's rollback anchor
/// follows the store. In pass-through mode the command is refused with the
/// way to turn users mode on.
pub fn acting<T>(
    cli: &Cli,
    want: Want<'_>,
    changes: bool,
    f: impl FnOnce(&Acting<'_>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let config = crate::common::load_config(cli)?;
    if !config.users.enabled {
        return Err(failed(format!(
            "`p11derive {}` works in users mode only, which is off in {}: set [users] enabled = \
             true with service_pin_file (or service_pin_env), then create the first admin with \
             `p11derive init --admin NAME` (README, \"Users mode\")",
            crate::command_path(&cli.command),
            config.source.display()
        )));
    }
    let store = crate::common::open_store(&config)?;
    crate::common::with_key(cli, &store, &config, want, |store, backend, ak, caller| {
        let caller = caller.ok_or_else(|| failed("users mode: no user logged in"))?;
        let done = f(&Acting {
            config: &config,
            store,
            backend,
            ak,
            caller,
        });
        if changes {
            if let Err(e) = p11derive::lifecycle::advance_anchor(store, backend, false) {
                eprintln!("p11derive: warning: rollback anchor not advanced: {e}");
            }
        }
        done
    })
}
