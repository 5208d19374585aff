//! `p11derive init` (the root and the store) and `p11derive store migrate`.

use std::path::Path;

use p11derive::audit::{Event, Record};
use p11derive::backend::Backend;
use p11derive::config::{self, Config};
use p11derive::derive::{self, Secret32};
use p11derive::lifecycle;
use p11derive::store::{hex, Store, StoreError};

use crate::args::Cli;
use crate::args_root::BackupArgs;
use crate::ceremony_cmd::CeremonyPlan;
use p11derive::access::{Pattern, Role};
use p11derive::accounts;
use p11derive::secure::SecretBytes;

use crate::common::{
    can_ask, hsm_pin, load_config, lock_memory, pin_given, print_json, read_secret,
    read_secret_file, Failure,
};

/// Reads a root to import: 64 hex digits (whitespace ignored) or 32 raw bytes,
/// into locked memory.
fn read_root(path: &Path) -> Result<Secret32, Failure> {
    let shown = path.display();
    let too_long = || {
        Failure::Failed(format!(
            "root file {shown} must hold exactly 32 bytes, raw or as 64 hex digits"
        ))
    };
    let raw = read_secret_file(path, 4096)
        .map_err(|e| Failure::Failed(format!("cannot read root file {shown}: {e}")))?
        .ok_or_else(too_long)?;
    let mut root = Secret32::new().map_err(Failure::Failed)?;
    let digits = raw.iter().filter(|b| !b.is_ascii_whitespace());
    if digits.clone().count() == 64 && digits.clone().all(u8::is_ascii_hexdigit) {
        let nib = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
        let mut it = digits.copied();
        for byte in root.iter_mut() {
            let (hi, lo) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
            *byte = (nib(hi) << 4) | nib(lo);
        }
    } else if raw.len() == 32 {
        root.copy_from_slice(&raw);
    } else {
        return Err(too_long());
    }
    Ok(root)
}

/// Users mode: the first admin's name and secret (typed twice on a
/// terminal), checked before anything is created.
fn first_admin_secret(
    cli: &Cli,
    config: &Config,
    admin: Option<&str>,
) -> Result<Option<(String, SecretBytes)>, Failure> {
    if !config.users.enabled {
        return match admin {
            Some(_) => Err(Failure::Usage(format!(
                "--admin creates the first user of users mode, which is off in {}: set [users] \
                 enabled = true (README, \"Users mode\"), or leave --admin out",
                config.source.display()
            ))),
            None => Ok(None),
        };
    }
    let name = admin.ok_or_else(|| {
        Failure::Usage(format!(
            "users mode is on in {}: name the first admin with --admin NAME (its secret comes \
             from --pin-file, $P11DERIVE_PIN or the prompt)",
            config.source.display()
        ))
    })?;
    accounts::check_name(name).map_err(Failure::Usage)?;
    let secret = if pin_given(cli) || !can_ask() {
        read_secret(
            cli,
            &format!("Secret of the first admin {name:?}: "),
            &format!("no secret for the first admin {name:?}"),
        )?
    } else {
        crate::user_cmd::ask_twice(&format!("Secret of the first admin {name:?}: "))?
    };
    crate::user_cmd::check_length(&config.users, &secret)?;
    Ok(Some((name.to_string(), secret)))
}

pub fn init(
    cli: &Cli,
    import_root: Option<&Path>,
    admin: Option<&str>,
    backup: &BackupArgs,
) -> Result<(), Failure> {
    let config = load_config(cli)?;
    lock_memory(&config)?;
    let import = import_root.map(read_root).transpose()?;
    let ceremony = crate::ceremony_cmd::ceremony_plan(backup)?;
    let admin = first_admin_secret(cli, &config, admin)?;
    let admin = admin.as_ref().map(|(n, s)| (n.as_str(), &s[..]));
    let pin = hsm_pin(cli, &config)?;
    let backend = crate::common::open_backend(&config)?;
    let mut done = Done::default();
    let root = match (import.as_deref(), &ceremony) {
        (Some(r), _) => NewRoot::Import(r),
        (None, Some(c)) => NewRoot::Ceremony(c),
        (None, None) => NewRoot::Generate,
    };
    let result = init_with(&config, &backend, root, &pin, admin, &mut done);
    backend.finalize();
    result?;
    if cli.json {
        return print_json(&serde_json::json!({
            "root_label": config.backend.root_label,
            "token_label": config.backend.token_label,
            "root": done.root,
            "store": done.store,
            "store_created": done.created,
            "root_fingerprint": done.fingerprint,
            "admin": done.admin,
            "backup": done.backup,
        }));
    }
    for line in &done.lines {
        outln!("{line}");
    }
    Ok(())
}

/// What `init` did, for its report.
#[derive(Default)]
struct Done {
    /// "generated", "imported" or "kept".
    root: &'static str,
    store: String,
    created: bool,
    fingerprint: Option<String>,
    /// Users mode: the first admin created.
    admin: Option<String>,
    /// A ceremony's shares: set id, count, files.
    backup: Option<serde_json::Value>,
    lines: Vec<String>,
}

/// Where `init`'s new root (when the token has none) comes from.
enum NewRoot<'a> {
    /// Generated inside the HSM (its backup is the HSM vendor's).
    Generate,
    /// A given root (test vectors, a recovery by hand).
    Import(&'a [u8; 32]),
    /// A backup ceremony: made in locked memory, split into SLIP-39 shares.
    Ceremony(&'a CeremonyPlan),
}

fn init_with(
    config: &Config,
    backend: &Backend,
    root: NewRoot<'_>,
    pin: &[u8],
    admin: Option<(&str, &[u8])>,
    done: &mut Done,
) -> Result<(), Failure> {
    let fail = |e: p11derive::Error| Failure::Failed(e.to_string());
    // Log in without requiring the root: it may not exist yet.
    backend.login_admin(pin).map_err(fail)?;
    let label = &config.backend.root_label;
    let token = &config.backend.token_label;
    let mut ceremony_record = None;
    let has_root = backend.root_exists().map_err(fail)?;
    if !has_root {
        // A new root only for a store still to be made: a store that exists
        // has its root, and a lost root comes back with its checks (the
        // store verified under it, a `recover` quorum) through `root recover`.
        match Store::open_config(&config.store) {
            Err(StoreError::Missing(_)) => {}
            Ok(s) => {
                return Err(Failure::Refused(format!(
                    "backing token {token:?} holds no root labelled {label:?}, but store {} \
                     exists: it belongs to a root, which a new one cannot replace. If that root \
                     was lost, bring it back with `p11derive root recover` (its SLIP-39 shares), \
                     or restore the backing HSM from its vendor's backup; to start over, point \
                     [store] to a new place (README, \"Backup, restore, start over\")",
                    s.path().display()
                )))
            }
            Err(e) => {
                return Err(Failure::Failed(format!(
                    "{e}; no root was made: `init` makes a root only once it knows there is no \
                     store yet"
                )))
            }
        }
    }
    match (has_root, root) {
        (true, NewRoot::Import(_)) => {
            return Err(Failure::Refused(format!(
                "backing token {token:?} already holds a root labelled {label:?}; refusing to \
                 import another (a second root would derive different keys)"
            )))
        }
        (true, NewRoot::Ceremony(_)) => {
            return Err(Failure::Refused(format!(
                "backing token {token:?} already holds a root labelled {label:?}: a backup \
                 ceremony makes a new root, and an existing root never leaves its HSM, so its \
                 shares cannot be made now. To back up with shares, make a new root (a new \
                 [backend] root_label and store) with `init --backup`"
            )))
        }
        (false, NewRoot::Ceremony(cp)) => {
            let c = crate::ceremony_cmd::ceremony(backend, cp)?;
            if let Err(e) = backend.import_root(c.root.bytes()) {
                // The shares go only once the token surely holds no root of
                // theirs (an import can fail after the HSM made the object).
                let none = backend.destroy_root().is_ok()
                    || backend.root_exists().is_ok_and(|there| !there);
                if !none {
                    return Err(Failure::Failed(format!(
                        "{e}; the root may have been created on backing token {token:?} \
                         despite the error: check with the HSM's own tools{}",
                        if c.written.is_empty() {
                            String::new()
                        } else {
                            "; the share files are kept until you know".to_string()
                        }
                    )));
                }
                p11derive::backup::remove_share_files(&c.written);
                return Err(Failure::Failed(format!(
                    "{e}; the root was not imported{}",
                    if c.written.is_empty() {
                        ": the shares shown belong to no root; destroy them".to_string()
                    } else {
                        " and its share files were removed".to_string()
                    }
                )));
            }
            done.root = "generated";
            done.lines.push(format!(
                "root {label:?} made from the HSM's random generator, split into {} SLIP-39 \
                 shares ({}; share set {}), imported into backing token {token:?} (sensitive, \
                 not extractable); no copy is left outside the HSM",
                c.shares, c.described, c.identifier
            ));
            let files: Vec<String> = c.written.iter().map(|p| p.display().to_string()).collect();
            if !files.is_empty() {
                done.lines.push(format!(
                    "shares written, one per file (0600): {}. Hand each to its custodian, then \
                     delete it here",
                    files.join(", ")
                ));
            }
            done.backup = Some(serde_json::json!({
                "share_set": c.identifier,
                "shares": c.shares,
                "plan": c.described,
                "files": files,
            }));
            ceremony_record = Some((c.fingerprint.clone(), c.record(cp), c.written.clone()));
        }
        (true, _) => {
            done.root = "kept";
            done.lines.push(format!(
                "root {label:?} already exists on backing token {token:?}; kept"
            ));
        }
        (false, NewRoot::Import(root)) => {
            backend.import_root(root).map_err(fail)?;
            done.root = "imported";
            done.lines.push(format!(
                "root {label:?} imported into backing token {token:?} (sensitive, not extractable)"
            ));
        }
        (false, NewRoot::Generate) => {
            backend.generate_root().map_err(fail)?;
            done.root = "generated";
            done.lines.push(format!(
                "root {label:?} generated inside backing token {token:?} (sensitive, not \
                 extractable)"
            ));
        }
    }
    let made_root = !has_root;
    // Log in again, now finding the root, to derive through it.
    let _ = backend.logout();
    let result = backend
        .login(p11derive::ck::CKU_USER, pin)
        .map_err(fail)
        .and_then(|()| {
            let ceremony = match ceremony_record {
                Some((made, rec, files)) => {
                    let fp = hex(&derive::root_fingerprint(backend).map_err(fail)?);
                    if made != fp {
                        let back = crate::root_cmd::take_back(backend, pin, token);
                        p11derive::backup::remove_share_files(&files);
                        return Err(Failure::Failed(format!(
                            "the HSM computes fingerprint {fp} for the root just imported, but \
                             the ceremony computed {made}: the backing HSM's HMAC-SHA256 \
                             differs from the standard one. {back}; the share files were \
                             removed: the shares shown belong to no root; destroy them"
                        )));
                    }
                    Some((rec, files))
                }
                None => None,
            };
            let files = ceremony.as_ref().map(|(_, f)| f.clone());
            let result = init_store(config, backend, admin, ceremony.map(|(r, _)| r), done);
            match (result, files) {
                // A root made here whose store could not be made: nothing is
                // left (no root without its store, no shares of no root).
                (Err(e), None) if !done.created && made_root => {
                    let back = crate::root_cmd::take_back(backend, pin, token);
                    Err(crate::root_cmd::noted(e, &back))
                }
                (Err(e), Some(files)) if !done.created => {
                    let back = crate::root_cmd::take_back(backend, pin, token);
                    p11derive::backup::remove_share_files(&files);
                    Err(Failure::Failed(format!(
                        "{}; {back}, and its share files were removed (shares shown on the \
                         terminal belong to no root: destroy them); fix the store and run `init \
                         --backup` again",
                        e.message()
                    )))
                }
                (r, _) => r,
            }
        });
    let _ = backend.logout();
    result
}

/// The store of `init`: kept when it exists and is this root's; created
/// (with its first record, which names its lineage, and the HSM's anchor)
/// only when the root has no store yet.
fn init_store(
    config: &Config,
    backend: &Backend,
    admin: Option<(&str, &[u8])>,
    ceremony: Option<Record>,
    done: &mut Done,
) -> Result<(), Failure> {
    let fail = |e: p11derive::Error| Failure::Failed(e.to_string());
    let ak = derive::audit_key(backend).map_err(fail)?;
    let anchor = backend.read_anchor().map_err(fail)?;
    let fp = hex(&derive::root_fingerprint(backend).map_err(fail)?);
    let store = match Store::open_config(&config.store) {
        Ok(s) => {
            s.check_root(&ak)?;
            if let Some(a) = &anchor {
                s.check_anchor(a)?;
            }
            done.lines
                .push(format!("store {} already exists; kept", s.path().display()));
            s
        }
        Err(StoreError::Missing(_)) => {
            if let Some(a) = &anchor {
                return Err(Failure::Failed(second_store(config, a)));
            }
            let s = Store::create_config(&config.store)?;
            let rec = Record::new(Event::Init, 0).detail(format!(
                "store created at {} for root {} (fingerprint {})",
                s.path().display(),
                config.backend.root_label,
                fp
            ));
            s.record(Some(&ak), rec)?;
            done.created = true;
            done.lines.push(format!(
                "store {} created for root {:?} (fingerprint {})",
                s.path().display(),
                config.backend.root_label,
                fp
            ));
            s
        }
        Err(e) => return Err(e.into()),
    };
    done.store = store.path().display().to_string();
    done.fingerprint = Some(fp);
    store.authenticate(&ak, anchor.as_ref())?;
    if let Some(rec) = ceremony {
        store.record(Some(&ak), rec)?;
    }
    if let Some((name, secret)) = admin {
        add_first_admin(backend, &store, &ak, name, secret, done)?;
    }
    lifecycle::advance_anchor(&store, backend, false).map_err(fail)
}

/// Users mode: the first admin (roles admin, patterns `*`), unless the
/// store has users already.
fn add_first_admin(
    backend: &Backend,
    store: &Store,
    ak: &Secret32,
    name: &str,
    secret: &[u8],
    done: &mut Done,
) -> Result<(), Failure> {
    if store.has_users()? {
        return Err(Failure::Refused(format!(
            "store {} has users already; an admin adds more with `p11derive --user ADMIN user \
             add NAME --roles ...`",
            store.path().display()
        )));
    }
    let random = |out: &mut [u8]| backend.random(out);
    let row = accounts::new_row(
        backend,
        &random,
        name,
        &[Role::Admin],
        &[Pattern::any()],
        secret,
    )
    .map_err(|e| Failure::Failed(e.to_string()))?;
    let rec = Record::new(Event::User, 0).actor(Some("init"));
    store.put_user(ak, &row, "user add (init)", rec)?;
    done.lines.push(format!(
        "user {name:?} added as the first admin (roles admin, patterns *); log in with --user \
         {name}"
    ));
    done.admin = Some(name.to_string());
    Ok(())
}

/// Why `init` refuses a new store for a root that already has one.
fn second_store(config: &Config, a: &p11derive::audit::Anchor) -> String {
    let label = &config.backend.root_label;
    let token = &config.backend.token_label;
    let location = if a.location.is_empty() {
        "at a location the anchor does not record".to_string()
    } else {
        format!("last at {}", a.location)
    };
    let id = a.store.map_or_else(|| "(unnamed)".into(), |id| hex(&id));
    format!(
        "root {label:?} on backing token {token:?} already has a store (store {id}, {location}, \
         anchored at audit record {}); refusing to create a second one: asset ids are unique \
         within a root's store, so in a new store a retired asset's id would be free again and \
         its keys would come back. To recover, put the root's store (or its newest backup) where \
         [store] points and run `p11derive audit verify`. To start over without it, create a \
         new root: set [backend] root_label to a new label and run `p11derive init` (every key \
         of the old root is then out of use). See the README, \"Backup, restore, start over\"",
        a.head.0
    )
}

/// `store migrate`: a SQLite store into a new PostgreSQL one, every row.
pub fn store_migrate(cli: &Cli, from: &str, to: Option<&str>) -> Result<(), Failure> {
    // The config gives TLS settings and, without --to, the destination (so
    // the database password need not be on the command line). A config
    // that exists but is broken is an error, not silently ignored.
    let path = config::locate(cli.config.as_deref());
    let config = if path.exists() || cli.config.is_some() {
        Some(Config::load(&path).map_err(Failure::Failed)?)
    } else {
        None
    };
    let from_config = config.as_ref().and_then(|c| c.store.url.clone());
    let to = match (to, &from_config) {
        (Some(to), _) => to.to_string(),
        (None, Some(url)) => url.clone(),
        (None, None) => {
            return Err(Failure::Usage(format!(
                "store migrate needs the PostgreSQL store to copy into: set [store] url in {} (it \
                 then keeps the password off the command line), or pass --to \
                 postgres://USER:PASSWORD@HOST:PORT/DB",
                path.display()
            )))
        }
    };
    let to = to.as_str();
    let Some(path) = from.strip_prefix("sqlite:") else {
        return Err(Failure::Usage(format!(
            "--from {from:?}: write sqlite:PATH (the SQLite file to copy)"
        )));
    };
    if !config::is_url(to) {
        return Err(Failure::Usage(format!(
            "--to {:?}: write postgres://USER:PASSWORD@HOST:PORT/DB",
            config::redact(to)
        )));
    }
    let source = Store::open(Path::new(path))?;
    // TLS as the config's [store] says, when there is a config.
    let mut keys = config.map(|c| c.store).unwrap_or_default();
    keys.connect_timeout_ms = 10_000;
    let target = p11derive::store::pg::Target::with_url(&keys, to)?;
    let dest = match Store::create_pg(&target) {
        Ok(s) => s,
        // An existing but empty p11derive schema is fine (migrate_into checks).
        Err(StoreError::Exists(_)) => Store::open_pg(&target)?,
        Err(e) => return Err(e.into()),
    };
    let progress = crate::progress::Progress::new(cli, "store migrate", 0);
    let mut shown = 0u64;
    let moved = source.migrate_into_with(&dest, &mut |done, total| {
        if done == 0 {
            progress.stage("store migrate", total);
        }
        progress.add(done - shown);
        shown = done;
    });
    progress.finish();
    let moved = moved?;
    if cli.json {
        let copied: serde_json::Map<String, serde_json::Value> = moved
            .iter()
            .map(|(t, n)| (t.to_string(), (*n).into()))
            .collect();
        return print_json(&serde_json::json!({
            "from": source.path().display().to_string(),
            "to": dest.path().display().to_string(),
            "copied": copied,
        }));
    }
    let counts: Vec<String> = moved.iter().map(|(t, n)| format!("{t} {n}")).collect();
    let next = if from_config.as_deref() == Some(to) {
        "The config's [store] url already names it: the provider and the CLI use it from now on"
            .to_string()
    } else {
        format!(
            "Set [store] url = \"{}\" in the config (password included) to use it",
            dest.path().display()
        )
    };
    outln!(
        "store {} copied into {}: {}; the audit chain's newest record is the same in both. {next}",
        source.path().display(),
        dest.path().display(),
        counts.join(", "),
    );
    Ok(())
}
