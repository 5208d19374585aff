//! Users mode for the provider and the CLI alike: who a caller is, a secret's verifier, and login with its growing delay and lockout.
//!
//! A login reads the name's failed-login row and the user's row (both
//! sealed, `store::users`), computes the verifier of the secret given in
//! the backing HSM (`derive::user_verifier`) and compares it in constant
//! time. A name that is not a user takes exactly the same steps against a
//! verifier nothing matches, so a caller cannot tell an unknown name from a
//! wrong secret by the answer, the delay or the records written: both are
//! counted, delayed and locked out alike.

#![forbid(unsafe_code)]

use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::access::{parse_patterns, Action, Denied, Pattern, Role};
use crate::audit::{Event, Record};
use crate::ck::*;
use crate::config::UsersSection;
use crate::error::{Error, Result};
use crate::store::{unix_now, LoginRow, Store, StoreError, UserRow};
use crate::types::{Prf, Secret32};

/// The user a login established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub roles: Vec<Role>,
    pub patterns: Vec<Pattern>,
}

impl Caller {
    /// Whether this user may do `action` (on `asset`).
    pub fn permits(&self, action: Action, asset: Option<&str>) -> std::result::Result<(), Denied> {
        crate::access::permits(&self.roles, &self.patterns, action, asset)
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The caller as a user row describes it.
    pub fn of(row: &UserRow) -> std::result::Result<Caller, String> {
        Ok(Caller {
            name: row.name.clone(),
            roles: parse_roles(&row.roles)?,
            patterns: parse_patterns(&row.patterns)?,
        })
    }
}

/// A user name: 1 to 64 characters of `A-Z a-z 0-9 . _ - @`.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
        return Err(format!(
            "user name {name:?} is invalid: use 1 to 64 characters of A-Z a-z 0-9 . _ - @"
        ));
    }
    Ok(())
}

/// Roles as a comma list (`signer,auditor`), each known, none twice.
pub fn parse_roles(s: &str) -> std::result::Result<Vec<Role>, String> {
    let mut roles = Vec::new();
    for part in s.split(',').map(str::trim) {
        let r = Role::parse(part).ok_or_else(|| {
            format!("role {part:?} is unknown: use admin, officer, signer or auditor")
        })?;
        if !roles.contains(&r) {
            roles.push(r);
        }
    }
    roles.sort();
    Ok(roles)
}

/// The canonical comma list of roles, as rows store it.
pub fn roles_text(roles: &[Role]) -> String {
    let mut r = roles.to_vec();
    r.sort();
    r.dedup();
    r.iter().map(|r| r.name()).collect::<Vec<_>>().join(",")
}

/// `C_Login`'s PIN in users mode: `name:secret` (split at the first `:`).
pub fn split_login(pin: &[u8]) -> Option<(&str, &[u8])> {
    let at = pin.iter().position(|&b| b == b':')?;
    let name = std::str::from_utf8(&pin[..at]).ok()?;
    Some((name, &pin[at + 1..]))
}

/// A secret's length must be within the configured bounds.
pub fn check_secret(cfg: &UsersSection, secret: &[u8]) -> Result<()> {
    let n = secret.len();
    if n < cfg.min_secret_len as usize || n > cfg.max_secret_len as usize {
        return Err(Error::with(
            CKR_PIN_LEN_RANGE,
            format!(
                "a user's secret must be {} to {} bytes long ([users] min_secret_len, \
                 max_secret_len); this one is {n}",
                cfg.min_secret_len, cfg.max_secret_len
            ),
        ));
    }
    Ok(())
}

/// A new user row: a fresh salt from `random` (the backing HSM's RNG) and
/// the verifier of `secret`.
pub fn new_row(
    prf: &dyn Prf,
    random: &dyn Fn(&mut [u8]) -> Result<()>,
    name: &str,
    roles: &[Role],
    patterns: &[Pattern],
    secret: &[u8],
) -> Result<UserRow> {
    check_name(name).map_err(|m| Error::with(CKR_ARGUMENTS_BAD, m))?;
    let mut salt = vec![0u8; 16];
    random(&mut salt)?;
    let v = crate::derive::user_verifier(prf, name, &salt, secret)?;
    Ok(UserRow {
        name: name.to_string(),
        roles: roles_text(roles),
        patterns: crate::access::patterns_text(patterns),
        salt,
        verifier: v[..].to_vec(),
        state: "active".into(),
        created_at: unix_now(),
    })
}

/// The same row with a new secret (a fresh salt).
pub fn with_secret(
    prf: &dyn Prf,
    random: &dyn Fn(&mut [u8]) -> Result<()>,
    row: &UserRow,
    secret: &[u8],
) -> Result<UserRow> {
    let mut salt = vec![0u8; 16];
    random(&mut salt)?;
    let v = crate::derive::user_verifier(prf, &row.name, &salt, secret)?;
    Ok(UserRow {
        salt,
        verifier: v[..].to_vec(),
        ..row.clone()
    })
}

/// The delay before a failed login is answered, after `failures` in a row:
/// 100 ms doubling to 5 s.
pub fn delay_after(failures: u32) -> std::time::Duration {
    let ms = 100u64.saturating_mul(1u64 << failures.saturating_sub(1).min(6));
    std::time::Duration::from_millis(ms.min(5_000))
}

fn store_err(e: StoreError) -> Error {
    Error::with(CKR_DEVICE_ERROR, e.to_string())
}

/// What a login needs besides the name and secret.
pub struct LoginContext<'a> {
    pub store: &'a Store,
    pub prf: &'a dyn Prf,
    pub ak: &'a Secret32,
    pub cfg: &'a UsersSection,
    /// The session (provider) for the records.
    pub session: Option<u64>,
    /// `CKU_SO`: the user must hold `admin`.
    pub admin: bool,
}

/// Logs in `name` with `secret`: the caller on success; else
/// `CKR_PIN_INCORRECT` (a wrong secret and an unknown name alike, after
/// the same work and the same growing delay) or `CKR_PIN_LOCKED` (the name
/// is locked out, or the user locked by an admin and the secret right).
/// Every failure is a sealed `lockout` record, written before the answer.
pub fn login(cx: &LoginContext<'_>, name: &str, secret: &[u8]) -> Result<Caller> {
    let (outcome, delay) = login_deferred(cx, name, secret);
    if let Some(d) = delay {
        std::thread::sleep(d);
    }
    outcome
}

/// `login` without the delay: the caller sleeps it (the provider, after
/// releasing its login lock, so logouts and closing sessions go on).
pub fn login_deferred(
    cx: &LoginContext<'_>,
    name: &str,
    secret: &[u8],
) -> (Result<Caller>, Option<std::time::Duration>) {
    match login_now(cx, name, secret) {
        Err((e, failures)) => (Err(e), (failures > 0).then(|| delay_after(failures))),
        Ok(c) => (Ok(c), None),
    }
}

/// A login's outcome; a failure with the name's failures in a row (0: no
/// delay, e.g. a store error or a lockout already in force).
///
/// The attempt is counted as a failure before the secret is judged, in one
/// write transaction with the read of the count (so guesses racing in many
/// processes each take a turn: no more than `max_failures` are ever
/// judged), and the count cleared again when the secret is right.
fn login_now(
    cx: &LoginContext<'_>,
    name: &str,
    secret: &[u8],
) -> std::result::Result<Caller, (Error, u32)> {
    let plain = |e: Error| (e, 0);
    // The user's row is read first, for every name alike.
    let user = match check_name(name) {
        Ok(()) => cx.store.user(name).map_err(store_err).map_err(plain)?,
        Err(_) => None,
    };
    // Failed logins are counted per user; a name that is no user's is
    // counted in one of 65,536 rows chosen by a keyed hash of it, so
    // made-up names neither grow the store without bound nor appear in it
    // (nor does a secret typed where the name goes): records and the log
    // show such a name only as its digest.
    let digest = name_digest(cx.ak, name);
    let (key, actor, shown) = match &user {
        Some(_) => (name.to_string(), Some(name), format!("{name:?}")),
        None => (
            format!("unknown:{}", &digest[..4]),
            None,
            format!("an unknown name (digest {})", &digest[..8]),
        ),
    };
    let key = key.as_str();
    // What records say of a name that is no user's (a user's is the actor).
    let by = match actor {
        Some(_) => String::new(),
        None => format!(" by {shown}"),
    };
    let now = unix_now();
    let with_session = |r: Record| match cx.session {
        Some(s) => r.session(s),
        None => r,
    };
    let (max, lockout) = (cx.cfg.max_failures, cx.cfg.lockout_seconds as i64);
    let (before, counted) = cx
        .store
        .update_login_failures(
            cx.ak,
            key,
            |row| {
                if row.locked_until > now {
                    return None;
                }
                // A lockout that ran out: a fresh start.
                let failures = if row.locked_until != 0 {
                    1
                } else {
                    row.failures.saturating_add(1)
                };
                let locked = failures >= max;
                let next = LoginRow {
                    failures,
                    locked_until: if locked { now + lockout } else { 0 },
                };
                let what = if locked {
                    format!("login attempt{by} (counted until it succeeds); locked out")
                } else {
                    format!("login attempt{by} (counted until it succeeds)")
                };
                Some((next, CKR_OK, what))
            },
            with_session(Record::new(Event::Lockout, CKR_OK).actor(actor)),
        )
        .map_err(store_err)
        .map_err(plain)?;
    let Some(counted) = counted else {
        let until = crate::access::format_time(before.locked_until);
        let rec = with_session(Record::new(Event::LoginFailed, CKR_PIN_LOCKED).actor(actor))
            .detail(format!("login{by} refused: locked out until {until}"));
        cx.store
            .record(Some(cx.ak), rec)
            .map_err(store_err)
            .map_err(plain)?;
        crate::log::warn(&format!(
            "login: {shown} is locked out until {until} (an admin can lift it: p11derive user \
             unlock)"
        ));
        return Err(plain(Error::rv(CKR_PIN_LOCKED)));
    };
    let known = user.as_ref().filter(|u| u.state != "removed");
    let dummy_salt = [0u8; 16];
    let (salt, verifier): (&[u8], &[u8]) = match known {
        Some(u) => (&u.salt, &u.verifier),
        None => (&dummy_salt, &[]),
    };
    let v = crate::derive::user_verifier(cx.prf, name, salt, secret).map_err(plain)?;
    // An empty verifier (no such user) never equals 32 bytes.
    let right = bool::from(v[..].ct_eq(verifier)) && known.is_some();
    // A right secret still fails, exactly like a wrong one (counted, the
    // same answer and delay), for a user locked by an admin or one asking
    // for the security officer without `admin`: the answer never confirms
    // a guess. The log says which, for the operator.
    let caller = match (right, known) {
        (true, Some(u)) => Some(Caller::of(u).map_err(|m| {
            plain(Error::with(
                CKR_DEVICE_ERROR,
                format!("user {name:?}: its row cannot be read: {m}"),
            ))
        })?),
        _ => None,
    };
    let refused = match (&caller, known) {
        (Some(_), Some(u)) if u.state == "locked" => Some("the user is locked by an admin"),
        (Some(c), _) if cx.admin && !c.has(Role::Admin) => {
            Some("a security officer (CKU_SO) login needs the admin role")
        }
        _ => None,
    };
    if let (Some(c), None) = (&caller, refused) {
        let rec = with_session(Record::new(Event::Lockout, CKR_OK).actor(actor));
        cx.store
            .update_login_failures(
                cx.ak,
                key,
                |_| Some((LoginRow::default(), CKR_OK, "login succeeded".to_string())),
                rec,
            )
            .map_err(store_err)
            .map_err(plain)?;
        return Ok(c.clone());
    }
    let locked = counted.locked_until > 0;
    let rec = with_session(
        Record::new(
            Event::LoginFailed,
            if locked {
                CKR_PIN_LOCKED
            } else {
                CKR_PIN_INCORRECT
            },
        )
        .actor(actor),
    )
    .detail(if locked {
        format!("login{by} failed; locked out")
    } else {
        format!("login{by} failed")
    });
    cx.store
        .record(Some(cx.ak), rec)
        .map_err(store_err)
        .map_err(plain)?;
    crate::log::warn(&format!(
        "login: failed for {shown} ({} in a row{}){}",
        counted.failures,
        if locked {
            format!(
                "; locked out for {} s ([users] max_failures = {max})",
                cx.cfg.lockout_seconds
            )
        } else {
            String::new()
        },
        refused.map_or_else(String::new, |why| format!(": {why}"))
    ));
    Err((Error::rv(CKR_PIN_INCORRECT), counted.failures))
}

/// A name's digest for records and the log (hex of `HMAC(AK, "p11derive-v1
/// login name" || name)`): the same name always gives the same digest, and
/// the digest does not give the name back without the audit key.
fn name_digest(ak: &Secret32, name: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    // On a secret stack: the HMAC's key schedule is the audit key's.
    let d: [u8; 32] = crate::secure::confined(|| {
        let mut m =
            <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&ak[..]).expect("any key length");
        m.update(b"p11derive-v1 login name\0");
        m.update(name.as_bytes());
        m.finalize().into_bytes().into()
    });
    crate::store::hex(&d)
}

/// Shared, so a login's caller can be kept by every session.
pub type SharedCaller = Arc<Caller>;
