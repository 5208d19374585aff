//! `p11derive status` (alias `doctor`): what p11derive finds, and each problem with its fix.

use std::collections::BTreeMap;

use p11derive::config::{self, Config};
use p11derive::store::{hex, AssetState, Store, StoreError};
use serde_json::{json, Value};

use crate::args::Cli;
use crate::common::{
    can_ask, failed, hsm_pin, key_data_fault, lock_memory, login, open_backend, pin_given,
    print_json, read_only, Failure,
};

/// What was found: sections in order (name → facts), and the problems.
#[derive(Default)]
struct Report {
    sections: Vec<(&'static str, Value)>,
    lines: Vec<(&'static str, String)>,
    problems: Vec<(String, String)>,
}

impl Report {
    fn fact(&mut self, section: &'static str, text: String, value: Value) {
        self.lines.push((section, text));
        self.sections.push((section, value));
    }

    fn problem(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.problems.push((what.into(), fix.into()));
    }
}

pub fn status(cli: &Cli) -> Result<(), Failure> {
    // Users mode: only a user allowed to read the audit log sees it all.
    if let Ok(config) = Config::load(&config::locate(cli.config.as_deref())) {
        if config.users.enabled {
            let store = crate::common::open_store(&config)?;
            let want = crate::users::Want::to(p11derive::access::Action::ReadAudit);
            crate::users::gate(cli, &store, &config, want)?;
        }
    }
    let mut r = Report::default();
    examine(cli, &mut r);
    if cli.json {
        let mut out = serde_json::Map::new();
        for (name, v) in &r.sections {
            out.insert(name.replace(' ', "_"), v.clone());
        }
        out.insert("ok".into(), r.problems.is_empty().into());
        out.insert(
            "problems".into(),
            r.problems
                .iter()
                .map(|(p, f)| json!({"problem": p, "fix": f}))
                .collect(),
        );
        print_json(&Value::Object(out))?;
    } else {
        for (name, text) in &r.lines {
            let mut rows = text.lines();
            outln!("{name:<14}{}", rows.next().unwrap_or(""));
            for more in rows {
                outln!("{:<14}{more}", "");
            }
        }
        if r.problems.is_empty() {
            outln!("{:<14}none", "problems");
        } else {
            outln!();
            for (i, (p, f)) in r.problems.iter().enumerate() {
                outln!("problem {}: {p}", i + 1);
                outln!("  fix: {f}");
            }
        }
    }
    match r.problems.len() {
        0 => Ok(()),
        n => Err(failed(format!(
            "status: {n} problem{} found (above)",
            if n == 1 { "" } else { "s" }
        ))),
    }
}

fn examine(cli: &Cli, r: &mut Report) {
    let given = config::locate(cli.config.as_deref());
    let path = std::fs::canonicalize(&given).unwrap_or(given);
    let from = if cli.config.is_some() {
        "--config"
    } else if std::env::var_os("P11DERIVE_CONF").is_some_and(|v| !v.is_empty()) {
        "$P11DERIVE_CONF"
    } else {
        "the default location"
    };
    let config = match Config::load(&path) {
        Ok(c) => {
            r.fact(
                "config",
                format!("{} (from {from})", path.display()),
                json!({"path": path.display().to_string(), "from": from, "loaded": true}),
            );
            c
        }
        Err(m) => {
            r.fact(
                "config",
                format!("{} (from {from}): cannot be used", path.display()),
                json!({"path": path.display().to_string(), "from": from, "loaded": false}),
            );
            r.problem(
                m,
                "fix the config file (README, \"Configuration\"); nothing else was checked",
            );
            return;
        }
    };
    let memory = match lock_memory(&config) {
        Ok(()) if p11derive::secure::degraded() => {
            r.problem(
                "memory for secrets is not locked ([memory] allow_unlocked = true): PINs and keys \
                 may be swapped to disk",
                "raise the memory-lock limit (ulimit -l, or LimitMEMLOCK= in the service unit) \
                 and set [memory] allow_unlocked = false",
            );
            "not locked (degraded)"
        }
        Ok(()) => "locked",
        Err(f) => {
            r.problem(
                f.message(),
                "raise the memory-lock limit (ulimit -l, or LimitMEMLOCK=)",
            );
            "cannot be locked"
        }
    };
    r.fact(
        "memory",
        format!("{memory} ({} KiB arena)", config.memory.locked_kib),
        json!({"locked": memory == "locked", "locked_kib": config.memory.locked_kib}),
    );
    let store = examine_store(&config, r);
    examine_token(cli, &config, store.as_ref(), r);
}

fn examine_store(config: &Config, r: &mut Report) -> Option<Store> {
    let store = match read_only(config) {
        Ok(s) => s,
        Err(e) => {
            let location = config::redact(
                &config
                    .store
                    .url
                    .clone()
                    .unwrap_or_else(|| config.store.path.display().to_string()),
            );
            r.fact(
                "store",
                format!("{location}: cannot be opened"),
                json!({"location": location, "opened": false}),
            );
            r.problem(e.to_string(), store_fix(&e));
            return None;
        }
    };
    let location = store.path().display().to_string();
    let kind = if config.store.url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let writable = config.store.url.is_some() || Store::may_write(&config.store.path);
    let facts = (|| -> Result<_, Failure> {
        let assets = store.all_assets()?;
        let head = store.audit_head()?.map_or(0, |h| h.0);
        let lanes = store.lane_rows()?;
        let pending = store.pending_rows()?.len();
        Ok((assets, head, lanes, pending))
    })();
    match facts {
        Ok((assets, head, lanes, pending)) => {
            let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
            for a in &assets {
                *by_state.entry(a.state.name()).or_default() += 1;
            }
            let states: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
            let live = assets
                .iter()
                .filter(|a| a.state != AssetState::Retired)
                .count();
            r.fact(
                "store",
                format!(
                    "{location} ({kind}, {})\n{} assets{}; {head} audit records{}{}",
                    if writable {
                        "read-write"
                    } else {
                        "read-only for this user: the read commands work; changes and the \
                         provider need write access"
                    },
                    assets.len(),
                    if states.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", states.join(", "))
                    },
                    if lanes.is_empty() {
                        String::new()
                    } else {
                        format!(" and {} in writers' lanes", lanes.len())
                    },
                    if pending > 0 {
                        format!("; {pending} pending (sealed at the next logged-in operation)")
                    } else {
                        String::new()
                    }
                ),
                json!({
                    "location": location, "kind": kind, "opened": true, "writable": writable,
                    "assets": assets.len(), "assets_in_use": live, "by_state": by_state,
                    "audit_records": head, "lane_records": lanes.len(), "pending": pending,
                }),
            );
        }
        Err(f) => {
            r.fact(
                "store",
                format!("{location} ({kind}): unreadable"),
                json!({"location": location, "kind": kind, "opened": true}),
            );
            r.problem(f.message(), "see the message; README, \"Troubleshooting\"");
        }
    }
    if let Ok(b) = store.backup_facts() {
        backup_fact(&b, r);
    }
    Some(store)
}

/// The root's backup as the store records it: the ceremony's shares, the
/// newest drill and recovery (docs/backup.md).
fn backup_fact(b: &p11derive::store::BackupFacts, r: &mut Report) {
    let when = |t: u64| p11derive::access::format_time((t / 1_000_000_000) as i64);
    let after = |d: &str, prefix: &str| d.strip_prefix(prefix).unwrap_or(d).trim().to_string();
    let mut lines = vec![match &b.ceremony {
        Some((t, d)) => format!(
            "SLIP-39 shares made at {}: {}",
            when(*t),
            after(d, "root ceremony:")
        ),
        None => {
            "no SLIP-39 shares recorded: the root's backup is the HSM vendor's (docs/backup.md)"
                .to_string()
        }
    }];
    match &b.drill {
        Some((t, d)) => lines.push(format!(
            "last drill at {} ({} in all): {}",
            when(*t),
            b.drills,
            after(d, "root drill:")
        )),
        None if b.ceremony.is_some() => {
            lines.push("no drill yet: `p11derive root check-shares`".to_string())
        }
        None => {}
    }
    if let Some((t, d)) = &b.recovery {
        lines.push(format!(
            "recovered at {}: {}",
            when(*t),
            after(d, "root recovered:")
        ));
    }
    let fact = |x: &Option<(u64, String)>| match x {
        Some((t, d)) => json!({"time": when(*t), "detail": d}),
        None => Value::Null,
    };
    r.fact(
        "backup",
        lines.join("\n"),
        json!({
            "shares": b.ceremony.is_some(), "ceremony": fact(&b.ceremony),
            "last_drill": fact(&b.drill), "drills": b.drills, "recovery": fact(&b.recovery),
        }),
    );
}

fn examine_token(cli: &Cli, config: &Config, store: Option<&Store>, r: &mut Report) {
    let module = config.backend.module.display().to_string();
    let token = &config.backend.token_label;
    let backend = match open_backend(config) {
        Ok(b) => b,
        Err(f) => {
            r.fact(
                "backing token",
                format!("{token:?} via {module}: not reached"),
                json!({"module": module, "label": token, "found": false}),
            );
            let fix = if f.message().contains("token") {
                "set [backend] token_label to the token's label as `pkcs11-tool --module MODULE \
                 -L` lists it, and check that this user may read the token (for SoftHSM, its \
                 token directory)"
            } else {
                "set [backend] module to the path of the HSM vendor's PKCS#11 library (for \
                 SoftHSM, /usr/lib/softhsm/libsofthsm2.so)"
            };
            r.problem(f.message(), fix);
            return;
        }
    };
    let serial = backend.token_info().map(|i| i.serial).unwrap_or_default();
    r.fact(
        "backing token",
        format!("{token:?} (serial {serial}) via {module}"),
        json!({"module": module, "label": token, "found": true, "serial": serial}),
    );
    if !(config.users.enabled || pin_given(cli) || can_ask()) {
        r.fact(
            "root",
            "not checked (no PIN: give --pin-file FILE, --pin-file -, or $P11DERIVE_PIN)".into(),
            json!({"checked": false}),
        );
        backend.finalize();
        return;
    }
    let checked = hsm_pin(cli, config).and_then(|pin| login(&backend, &pin));
    if let Err(f) = checked {
        r.fact(
            "root",
            "not checked (login failed)".into(),
            json!({"checked": false}),
        );
        r.problem(
            f.message(),
            "give the backing token's user PIN; after repeated wrong PINs the token may lock it",
        );
        backend.finalize();
        return;
    }
    examine_root(config, &backend, store, r);
    let _ = backend.logout();
    backend.finalize();
}

fn examine_root(
    config: &Config,
    backend: &p11derive::backend::Backend,
    store: Option<&Store>,
    r: &mut Report,
) {
    let label = &config.backend.root_label;
    match backend.root_exists() {
        Ok(true) => {}
        Ok(false) => {
            r.fact(
                "root",
                format!("{label:?}: not on the token"),
                json!({"checked": true, "label": label, "present": false}),
            );
            r.problem(
                format!(
                    "backing token {:?} holds no root labelled {label:?}",
                    config.backend.token_label
                ),
                "run `p11derive init` (or fix [backend] root_label if the root has another label)",
            );
            return;
        }
        Err(e) => {
            r.problem(format!("cannot look for the root: {e}"), "see the message");
            return;
        }
    }
    let fp = p11derive::derive::root_fingerprint(backend).map(|f| hex(&f));
    let anchor = backend.read_anchor();
    let (fp, anchor) = match (fp, anchor) {
        (Ok(fp), Ok(a)) => (fp, a),
        (Err(e), _) | (_, Err(e)) => {
            r.problem(format!("the root does not answer: {e}"), "see the message");
            return;
        }
    };
    r.fact(
        "root",
        format!("{label:?} present, fingerprint {fp}"),
        json!({"checked": true, "label": label, "present": true, "fingerprint": fp}),
    );
    r.fact(
        "anchor",
        match &anchor {
            Some(a) => format!(
                "record {} (epoch {}), newest state change record {}",
                a.head.0, a.epoch, a.change.0
            ),
            None => "none yet".into(),
        },
        match &anchor {
            Some(a) => json!({"record": a.head.0, "epoch": a.epoch, "change": a.change.0,
                              "location": a.location}),
            None => Value::Null,
        },
    );
    let Some(store) = store else { return };
    let ak = match p11derive::derive::audit_key(backend) {
        Ok(k) => k,
        Err(e) => {
            r.problem(
                format!("cannot derive the audit key: {e}"),
                "see the message",
            );
            return;
        }
    };
    let verdict = store
        .check_root(&ak)
        .and_then(|()| match &anchor {
            Some(a) => store.check_anchor(a),
            None => Ok(()),
        })
        .and_then(|()| store.authenticate(&ak, anchor.as_ref()))
        .map_err(|e| e.to_string())
        .and_then(|()| key_data_faults(store, &ak));
    match verdict {
        Ok(()) => r.fact(
            "state",
            "the store is this root's, holds what the anchor holds, and its state changes \
             verify (`p11derive audit verify` checks every record)"
                .into(),
            json!({"verified": true}),
        ),
        Err(e) => {
            r.fact(
                "state",
                "does not verify".into(),
                json!({"verified": false}),
            );
            r.problem(
                e,
                "run `p11derive audit verify` for every fault; README, \"Backup, restore, start \
                 over\"",
            );
        }
    }
}

/// Every version's public key or check value must carry its MAC under the
/// audit key (a key swapped in the versions table is found here).
fn key_data_faults(store: &Store, ak: &p11derive::derive::Secret32) -> Result<(), String> {
    let e = |e: StoreError| e.to_string();
    for a in store.all_assets().map_err(e)? {
        let history = store.history(a.rowid).map_err(e)?;
        if let Some(v) = history
            .iter()
            .find(|v| !p11derive::audit::key_data_verifies(ak, a.id.as_str(), v))
        {
            return Err(key_data_fault(a.id.as_str(), v.version));
        }
    }
    Ok(())
}

/// What to do about a store that does not open.
fn store_fix(e: &StoreError) -> &'static str {
    match e {
        StoreError::Missing(_) => {
            "if [store] path (or url) is wrong, fix it; if this root had a store, put it (or its \
             newest backup) back; `p11derive init` creates a store only for a root that never had \
             one (README, \"Backup, restore, start over\")"
        }
        StoreError::Newer(..) => "use the p11derive release that wrote this store, or a newer one",
        StoreError::ReadOnly(_) | StoreError::Io(..) | StoreError::Denied(..) => {
            "give this user read access to the store file and its directory (write access for \
             changes and the provider; README, \"Sharing the store\")"
        }
        StoreError::Foreign(_) | StoreError::Corrupt(..) => {
            "point [store] path at the p11derive store, or restore it from a backup"
        }
        StoreError::OtherRoot(_) | StoreError::Lineage(..) => {
            "point [store] at this root's store, or [backend] root_label at the root this store \
             belongs to"
        }
        _ => {
            "run `p11derive audit verify` for every fault; restore the newest backup and run \
             `p11derive audit reanchor --yes` (README, \"Backup, restore, start over\")"
        }
    }
}
