//! `p11derive user …` (users mode, admins only): add, list, show, remove, lock, unlock, reset-secret, roles.

use std::path::Path;

use p11derive::access::{self, parse_patterns, Action, Pattern, Role};
use p11derive::accounts;
use p11derive::audit::Event;
use p11derive::config::UsersSection;
use p11derive::secure::SecretBytes;
use p11derive::store::{unix_now, LoginRow, Store, UserRow};
use serde_json::json;

use crate::approvals_cmd::{gate, user_plan, Ctx};
use crate::args::Cli;
use crate::args_users::UserCommand;
use crate::common::{ask, can_ask, failed, print_json, read_pin_file, Failure};
use crate::users::{acting, Acting, Want};

pub fn run(cli: &Cli, c: &UserCommand) -> Result<(), Failure> {
    let manage = || Want::to(Action::ManageUsers);
    match c {
        UserCommand::Add {
            name,
            roles,
            patterns,
            secret_file,
        } => {
            accounts::check_name(name).map_err(Failure::Usage)?;
            let roles = roles_arg(roles)?;
            let patterns = patterns_arg(&roles, patterns.as_deref())?;
            acting(cli, manage(), true, |a| {
                match a.store.user(name)? {
                    Some(u) if u.state == "removed" => {
                        return Err(Failure::Refused(format!(
                            "user {name:?} was removed; a name is never given to another person \
                             (the audit log names it): choose another name"
                        )))
                    }
                    Some(_) => {
                        return Err(Failure::Refused(format!(
                            "user {name:?} exists; change it with `p11derive user roles` or \
                             `p11derive user reset-secret`"
                        )))
                    }
                    None => {}
                }
                let secret = new_secret(&a.config.users, name, secret_file.as_deref())?;
                let row =
                    accounts::new_row(a.backend, &a.random(), name, &roles, &patterns, &secret)
                        .map_err(failed)?;
                let guessed = a.store.login_failures(name)? != LoginRow::default();
                gate(
                    &Ctx::of(cli, a),
                    user_plan(a.store, &row, "user add", guessed)?,
                )?;
                a.store
                    .put_user_gated(a.ak, &row, "user add", a.record(Event::User))?;
                // Failed logins of the name from before it was a user (someone
                // guessing) are not the new user's: they start afresh.
                if a.store.login_failures(name)? != LoginRow::default() {
                    a.store.put_login_failures(
                        a.ak,
                        name,
                        &LoginRow::default(),
                        "user add",
                        a.record(Event::Lockout),
                    )?;
                }
                report(a, cli, &row, "added")
            })
        }
        UserCommand::List => acting(cli, manage(), false, |a| list(a, cli)),
        UserCommand::Show { name } => acting(cli, manage(), false, |a| {
            let row = find(a.store, name)?;
            if cli.json {
                return print_json(&user_json(a.store, &row)?);
            }
            let l = a.store.login_failures(name)?;
            outln!("user          {}", row.name);
            outln!("roles         {}", row.roles);
            outln!("patterns      {}", row.patterns);
            outln!("state         {}", row.state);
            outln!("created       {}", access::format_time(row.created_at));
            outln!("failed logins {}", l.failures);
            outln!("locked until  {}", locked_text(&l));
            Ok(())
        }),
        UserCommand::Remove { name, yes } => {
            if !yes {
                return Err(Failure::Usage(format!(
                    "removing {name:?} ends the user for good (no login, the name never reused); \
                     confirm with --yes"
                )));
            }
            change(cli, name, "user remove", "removed", |row| {
                row.state = "removed".into()
            })
        }
        UserCommand::Lock { name } => change(cli, name, "user lock", "locked", |row| {
            row.state = "locked".into()
        }),
        UserCommand::Unlock { name } => acting(cli, manage(), true, |a| {
            let mut row = live(a.store, name)?;
            row.state = "active".into();
            gate(
                &Ctx::of(cli, a),
                user_plan(a.store, &row, "user unlock", true)?,
            )?;
            a.store
                .put_user_gated(a.ak, &row, "user unlock", a.record(Event::User))?;
            a.store.put_login_failures(
                a.ak,
                name,
                &LoginRow::default(),
                "user unlock",
                a.record(Event::Lockout),
            )?;
            report(a, cli, &row, "unlocked")
        }),
        UserCommand::ResetSecret { name, secret_file } => acting(cli, manage(), true, |a| {
            let row = live(a.store, name)?;
            let secret = new_secret(&a.config.users, name, secret_file.as_deref())?;
            let row =
                accounts::with_secret(a.backend, &a.random(), &row, &secret).map_err(failed)?;
            gate(
                &Ctx::of(cli, a),
                user_plan(a.store, &row, "user reset-secret", false)?,
            )?;
            a.store
                .put_user_gated(a.ak, &row, "user reset-secret", a.record(Event::User))?;
            report(a, cli, &row, "given a new secret")
        }),
        UserCommand::Roles {
            name,
            roles,
            patterns,
        } => {
            let roles = roles_arg(roles)?;
            let patterns = patterns
                .as_deref()
                .map(|p| parse_patterns(p).map_err(Failure::Usage))
                .transpose()?;
            acting(cli, manage(), true, |a| {
                let mut row = live(a.store, name)?;
                let patterns = match patterns {
                    Some(p) => p,
                    None => parse_patterns(&row.patterns).map_err(failed)?,
                };
                row.roles = accounts::roles_text(&roles);
                row.patterns = access::patterns_text(&patterns);
                keeps_an_admin(a, &row)?;
                gate(
                    &Ctx::of(cli, a),
                    user_plan(a.store, &row, "user roles", false)?,
                )?;
                a.store
                    .put_user_gated(a.ak, &row, "user roles", a.record(Event::User))?;
                report(a, cli, &row, "given new roles")
            })
        }
    }
}

/// `--roles`: known roles, and never admin with officer or signer.
pub fn roles_arg(s: &str) -> Result<Vec<Role>, Failure> {
    let roles = accounts::parse_roles(s).map_err(Failure::Usage)?;
    if access::too_powerful(&roles) {
        return Err(Failure::Usage(format!(
            "--roles {s:?}: admin together with officer or signer is refused: such a user could \
             grant themself any asset and use it alone. Give these roles to two people"
        )));
    }
    Ok(roles)
}

/// `--patterns`, needed for the roles that act on assets.
fn patterns_arg(roles: &[Role], given: Option<&str>) -> Result<Vec<Pattern>, Failure> {
    match given {
        Some(p) => parse_patterns(p).map_err(Failure::Usage),
        None if roles
            .iter()
            .any(|r| matches!(r, Role::Officer | Role::Signer)) =>
        {
            Err(Failure::Usage(
                "--patterns is needed for officer and signer: name the assets the user may act \
                 on, e.g. --patterns 'hot-*,warm-1' (or '*' for every asset)"
                    .into(),
            ))
        }
        None => Ok(vec![Pattern::any()]),
    }
}

/// A new user's secret: from `file`, else typed twice on the terminal;
/// its length within `[users]` bounds.
pub fn new_secret(
    cfg: &UsersSection,
    name: &str,
    file: Option<&Path>,
) -> Result<SecretBytes, Failure> {
    let secret = match file {
        Some(f) => read_pin_file(f, "secret file", "--secret-file")?,
        None if can_ask() => ask_twice(&format!("New secret of user {name:?}: "))?,
        None => {
            return Err(Failure::Usage(format!(
                "the new secret of user {name:?}: pass --secret-file FILE (a file only you may \
                 read), or run on a terminal to be asked (twice)"
            )))
        }
    };
    check_length(cfg, &secret)?;
    Ok(secret)
}

/// A secret's length, as `[users]` bounds it (exit 2 otherwise).
pub fn check_length(cfg: &UsersSection, secret: &[u8]) -> Result<(), Failure> {
    accounts::check_secret(cfg, secret)
        .map_err(|e| Failure::Usage(e.message.clone().unwrap_or_else(|| e.to_string())))
}

/// A secret typed twice, the same both times.
pub fn ask_twice(prompt: &str) -> Result<SecretBytes, Failure> {
    use subtle::ConstantTimeEq;
    let first = ask(prompt)?;
    let again = ask("The same again: ")?;
    if !bool::from(first[..].ct_eq(&again[..])) {
        return Err(failed("the two secrets typed differ; nothing was changed"));
    }
    Ok(first)
}

/// A user by name, or exit 4.
fn find(store: &Store, name: &str) -> Result<UserRow, Failure> {
    store
        .user(name)?
        .ok_or_else(|| Failure::NotFound(format!("no user {name:?} (see `p11derive user list`)")))
}

/// A user not removed, or exit 4 (no such) or 3 (removed).
fn live(store: &Store, name: &str) -> Result<UserRow, Failure> {
    let row = find(store, name)?;
    if row.state == "removed" {
        return Err(Failure::Refused(format!(
            "user {name:?} was removed; a removed user stays removed"
        )));
    }
    Ok(row)
}

/// A change of one user's row (remove, lock), kept from taking away the
/// last active admin.
fn change(
    cli: &Cli,
    name: &str,
    what: &str,
    done: &str,
    edit: impl FnOnce(&mut UserRow),
) -> Result<(), Failure> {
    acting(cli, Want::to(Action::ManageUsers), true, |a| {
        let mut row = live(a.store, name)?;
        edit(&mut row);
        keeps_an_admin(a, &row)?;
        gate(&Ctx::of(cli, a), user_plan(a.store, &row, what, false)?)?;
        a.store
            .put_user_gated(a.ak, &row, what, a.record(Event::User))?;
        report(a, cli, &row, done)
    })
}

/// Refuses a change (`changed`, the user's row after it) that would leave
/// no active admin: no one could manage users or policies any more.
fn keeps_an_admin(a: &Acting<'_>, changed: &UserRow) -> Result<(), Failure> {
    let admin = |u: &UserRow| {
        u.state == "active"
            && accounts::parse_roles(&u.roles).is_ok_and(|r| r.contains(&Role::Admin))
    };
    let others = a
        .store
        .users()?
        .iter()
        .filter(|u| u.name != changed.name)
        .any(admin);
    if others || admin(changed) {
        return Ok(());
    }
    let who = if changed.name == a.caller.name {
        "you are"
    } else {
        "that user is"
    };
    Err(Failure::Refused(format!(
        "user {:?}: {who} the last active admin; without one no one could manage users or \
         policies. Add another admin first (`p11derive user add NAME --roles admin`)",
        changed.name
    )))
}

fn locked_text(l: &LoginRow) -> String {
    if l.locked_until > unix_now() {
        access::format_time(l.locked_until)
    } else {
        "-".into()
    }
}

fn user_json(store: &Store, row: &UserRow) -> Result<serde_json::Value, Failure> {
    let l = store.login_failures(&row.name)?;
    let split = |s: &str| -> Vec<String> { s.split(',').map(str::to_string).collect() };
    Ok(json!({
        "name": row.name,
        "roles": split(&row.roles),
        "patterns": split(&row.patterns),
        "state": row.state,
        "created": access::format_time(row.created_at),
        "failed_logins": l.failures,
        "locked_until": (l.locked_until > unix_now()).then(|| access::format_time(l.locked_until)),
    }))
}

/// What a change left: the user's row as `user show --json` gives it, or a line.
fn report(a: &Acting<'_>, cli: &Cli, row: &UserRow, done: &str) -> Result<(), Failure> {
    if cli.json {
        return print_json(&user_json(a.store, row)?);
    }
    outln!(
        "user {:?} {done}: roles {}, patterns {}, state {}",
        row.name,
        row.roles,
        row.patterns,
        row.state
    );
    Ok(())
}

fn list(a: &Acting<'_>, cli: &Cli) -> Result<(), Failure> {
    let users = a.store.users()?;
    if cli.json {
        let all = users
            .iter()
            .map(|u| user_json(a.store, u))
            .collect::<Result<Vec<_>, _>>()?;
        return print_json(&serde_json::Value::Array(all));
    }
    let w = users.iter().map(|u| u.name.len()).max().unwrap_or(4).max(4);
    let r = users
        .iter()
        .map(|u| u.roles.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let p = users
        .iter()
        .map(|u| u.patterns.len())
        .max()
        .unwrap_or(8)
        .max(8);
    outln!(
        "{:w$}  {:r$}  {:p$}  {:7}  FAILED  LOCKED_UNTIL",
        "USER",
        "ROLES",
        "PATTERNS",
        "STATE"
    );
    for u in &users {
        let l = a.store.login_failures(&u.name)?;
        outln!(
            "{:w$}  {:r$}  {:p$}  {:7}  {:>6}  {}",
            u.name,
            u.roles,
            u.patterns,
            u.state,
            l.failures,
            locked_text(&l)
        );
    }
    Ok(())
}
