//! `p11derive asset …`: create, list, show, pubkey and the lifecycle transitions, in the words each key type uses.

use std::cell::Cell;
use std::io::{IsTerminal, Write};

use p11derive::backend::Backend;
use p11derive::derive::{self, AssetId, KeyType};
use p11derive::lifecycle::{self, Audit};
use p11derive::store::{hex, Asset, AssetState, Store, StoreError, Transition, VersionRecord};

use p11derive::access::Action;

use crate::args::{AssetCommand, Cli};
use crate::common::{
    failed, load_config, open_store, print_json, readable_store, refuse_rolled_back, with_key,
    Failure,
};
use crate::users::Want;

pub fn run(cli: &Cli, c: &AssetCommand) -> Result<(), Failure> {
    match c {
        AssetCommand::Create { name, key_type, id } => {
            let id_name = asset_id(name)?;
            let kt = key_type.key_type();
            let want = Want::on(Action::CreateAsset, name);
            with_hsm(cli, "create", want, |store, backend, audit| {
                let object_id = id.clone().map(|i| i.0);
                Ok((
                    lifecycle::create(backend, store, audit, &id_name, kt, object_id)?,
                    true,
                ))
            })
        }
        AssetCommand::List => list(cli),
        AssetCommand::Show { name } => show(cli, name),
        AssetCommand::Pubkey {
            name,
            version,
            der,
            hex: as_hex,
            ..
        } => pubkey(cli, name, *version, *der, *as_hex),
        AssetCommand::Xpub {
            name,
            version,
            path,
        } => crate::xpub_cmd::xpub(cli, name, *version, path.clone().unwrap_or_default()),
        AssetCommand::Rotate { name, grace } => {
            let grace = *grace;
            let what = if grace { "rotate --grace" } else { "rotate" };
            let id = asset_id(name)?;
            with_hsm(cli, what, lifecycle_want(name), |store, backend, audit| {
                let t = Transition::Rotate { grace };
                gated(cli, store, backend, audit, name, t)?;
                Ok((
                    lifecycle::transition(Some(backend), store, audit, &id, t)?,
                    true,
                ))
            })
        }
        AssetCommand::Finish { name } => change(cli, name, Transition::Finish),
        AssetCommand::Trim { name, below } => trim(cli, name, *below),
        AssetCommand::Suspend { name } => change(cli, name, Transition::Suspend),
        AssetCommand::Resume { name } => change(cli, name, Transition::Resume),
        AssetCommand::Retire { name, yes } => {
            if !yes {
                return Err(Failure::Usage(format!(
                    "retiring {name:?} ends it for good (its keys stop working and its name can \
                     never be used again); confirm with --yes"
                )));
            }
            change(cli, name, Transition::Retire)
        }
    }
}

pub fn asset_id(name: &str) -> Result<AssetId, Failure> {
    AssetId::new(name).map_err(Failure::Usage)
}

/// What a key type's versions do, in its own words.
pub struct Words {
    /// What the current version does: "sign" or "encrypt".
    pub produce: &'static str,
    /// What older usable versions still do: "verify" or "decrypt".
    pub consume: &'static str,
    /// What the store holds of each version: "public key" or "check value".
    pub held: &'static str,
    /// `consume` after "version N": "verifies" or "decrypts".
    pub consumes: &'static str,
}

pub fn words(kt: KeyType) -> Words {
    match kt {
        kt if kt.is_aes() => Words {
            produce: "encrypt",
            consume: "decrypt",
            held: "check value",
            consumes: "decrypts",
        },
        kt if kt.is_mac() => Words {
            produce: "sign",
            consume: "verify",
            held: "check value",
            consumes: "verifies",
        },
        _ => Words {
            produce: "sign",
            consume: "verify",
            held: "public key",
            consumes: "verifies",
        },
    }
}

/// The JSON field name of `word` ("public key" → "public_key").
fn field(word: &str) -> String {
    word.replace(' ', "_")
}

/// What a lifecycle change of `asset` needs in users mode.
fn lifecycle_want(asset: &str) -> Want<'_> {
    Want::on(Action::Lifecycle, asset)
}

/// A transition that derives no key (it is still audited, so it logs in).
fn change(cli: &Cli, name: &str, t: Transition) -> Result<(), Failure> {
    let id = asset_id(name)?;
    with_hsm(
        cli,
        &t.name(),
        lifecycle_want(name),
        |store, backend, audit| {
            gated(cli, store, backend, audit, name, t)?;
            Ok((lifecycle::transition(None, store, audit, &id, t)?, true))
        },
    )
}

/// `trim N` when versions below N are already unusable: nothing to do
/// (exit 0, nothing recorded); otherwise the audited transition.
fn trim(cli: &Cli, name: &str, below: u32) -> Result<(), Failure> {
    let id = asset_id(name)?;
    let already = Cell::new(false);
    let what = Transition::Trim(below).name();
    with_hsm(cli, &what, lifecycle_want(name), |store, backend, audit| {
        if let Some(a) = store.asset_by_name(&id)? {
            if below <= a.min_usable && a.state != AssetState::Retired {
                already.set(true);
                return Ok((a, false));
            }
        }
        let t = Transition::Trim(below);
        gated(cli, store, backend, audit, name, t)?;
        Ok((lifecycle::transition(None, store, audit, &id, t)?, true))
    })
    .map(|()| {
        if already.get() {
            eprintln!(
                "p11derive: nothing changed: {}",
                if below == 1 {
                    "trimming below version 1 removes no version".to_string()
                } else {
                    format!("versions below {below} of {name:?} were already unusable")
                }
            );
        }
    })
}

/// In users mode, a transition a quorum rule governs records a request
/// instead of running (exit 5); in pass-through mode the store refuses it.
fn gated(
    cli: &Cli,
    store: &Store,
    backend: &Backend,
    audit: &Audit<'_>,
    name: &str,
    t: Transition,
) -> Result<(), Failure> {
    let Some(actor) = audit.actor else {
        return Ok(());
    };
    let config = load_config(cli)?;
    let cx = crate::approvals_cmd::Ctx {
        cli,
        config: &config,
        store,
        backend,
        ak: audit.ak,
        actor,
    };
    crate::approvals_cmd::gate(&cx, crate::approvals_cmd::transition_plan(store, name, t)?)
}

/// A change: refused on a rolled-back store, audited, then the HSM anchor is
/// moved to its record (or to the refusal's record).
fn with_hsm(
    cli: &Cli,
    what: &str,
    want: Want<'_>,
    f: impl FnOnce(&Store, &Backend, &Audit) -> Result<(Asset, bool), Failure>,
) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let store = open_store(&config)?;
    with_key(cli, &store, &config, want, |store, backend, ak, caller| {
        store.check_root(ak)?;
        refuse_rolled_back(store, backend, ak)?;
        let audit = Audit {
            ak,
            session: None,
            actor: caller.map(|c| c.name.as_str()),
        };
        let done = f(store, backend, &audit);
        if let Err(e) = lifecycle::advance_anchor(store, backend, false) {
            eprintln!("p11derive: warning: rollback anchor not advanced: {e}");
        }
        let (asset, changed) = done?;
        report(cli, store, &asset, what, changed)
    })
}

/// What the asset looks like after a command: a line for people, JSON for scripts.
fn report(
    cli: &Cli,
    store: &Store,
    asset: &Asset,
    what: &str,
    changed: bool,
) -> Result<(), Failure> {
    if cli.json {
        let history = store.history(asset.rowid)?;
        let mut j = asset_json(asset, Some(&history));
        j["changed"] = changed.into();
        return print_json(&j);
    }
    let id = asset.id.as_str();
    let (cur, min) = (asset.current, asset.min_usable);
    let w = words(asset.key_type);
    let (produce, consume) = (w.produce, w.consume);
    let how = match asset.state {
        AssetState::Active if min == cur => {
            format!("version {cur} {produce}s and {}", w.consumes)
        }
        AssetState::Active => {
            format!("version {cur} {produce}s; versions {min} to {cur} {consume}")
        }
        AssetState::Rotating => format!(
            "versions {} and {cur} {produce} until `p11derive asset finish {id}`; versions \
             {min} to {cur} {consume}",
            cur - 1
        ),
        AssetState::Suspended => {
            format!("every operation refused until `p11derive asset resume {id}`")
        }
        AssetState::Retired => "final: no object, no operation, the name is never reused".into(),
    };
    outln!(
        "{what}: asset {id:?} ({}) is {} at version {cur} ({how})",
        asset.key_type,
        asset.state.name()
    );
    Ok(())
}

/// Why version `n` of `a` does not verify now, in words.
pub fn not_usable(a: &Asset, n: u32) -> String {
    let name = a.id.as_str();
    match version_status(a, n) {
        "suspended" => format!(
            "version {n} of {name:?} is suspended: the token refuses it until `p11derive asset \
             resume {name}`"
        ),
        status => {
            format!("version {n} of {name:?} is {status}: the token no longer verifies with it")
        }
    }
}

/// The status of version `n` in words.
pub fn version_status(a: &Asset, n: u32) -> &'static str {
    if a.state == AssetState::Retired {
        "retired"
    } else if n < a.min_usable {
        "trimmed"
    } else if a.state == AssetState::Suspended {
        "suspended"
    } else if n == a.current {
        "current"
    } else if a.may_sign(n) {
        "grace"
    } else if a.key_type.is_aes() {
        "decrypt-only"
    } else {
        "verify-only"
    }
}

fn asset_json(a: &Asset, history: Option<&[VersionRecord]>) -> serde_json::Value {
    let versions = history.unwrap_or(&a.versions);
    let w = words(a.key_type);
    serde_json::json!({
        "asset_id": a.id.as_str(),
        "key_type": a.key_type.name(),
        "operations": [w.produce, w.consume],
        "state": a.state.name(),
        "current": a.current,
        "min_usable": a.min_usable,
        "object_id": hex(&a.object_id),
        "created_at": a.created_at,
        "created": p11derive::log::utc_secs(a.created_at.max(0) as u64) + "Z",
        "versions": versions.iter().map(|v| {
            let mut j = serde_json::json!({
                "version": v.version,
                "label": format!("{}@v{}", a.id, v.version),
                "object_id": hex(&derive::version_object_id(&a.object_id, v.version)),
                "status": version_status(a, v.version),
            });
            j[format!("may_{}", w.produce)] = a.may_sign(v.version).into();
            j[format!("may_{}", w.consume)] = a.may_verify(v.version).into();
            j[field(w.held)] = v.public_key.as_deref().map(hex).into();
            j
        }).collect::<Vec<_>>(),
    })
}

/// The asset `name` as stored (verified when the PIN is given), or exit 4.
pub fn find(store: &Store, name: &str) -> Result<Asset, Failure> {
    let id = asset_id(name)?;
    store
        .asset_by_name(&id)?
        .ok_or_else(|| Failure::NotFound(StoreError::NotFound(name.into()).to_string()))
}

fn show(cli: &Cli, name: &str) -> Result<(), Failure> {
    let r = readable_store(cli)?;
    let a = find(&r.store, name)?;
    let history = r.history(&a)?;
    if cli.json {
        return print_json(&asset_json(&a, Some(&history)));
    }
    let w = words(a.key_type);
    outln!("asset       {}", a.id);
    outln!("type        {} ({} / {})", a.key_type, w.produce, w.consume);
    let note = match a.state {
        AssetState::Rotating => format!(
            " (version {} may still {} until `p11derive asset finish {}`)",
            a.current.saturating_sub(1),
            w.produce,
            a.id
        ),
        AssetState::Suspended => format!(
            " (every operation refused; resumes to {})",
            a.resumes_to.name()
        ),
        AssetState::Retired => " (final: no object, no operation)".into(),
        AssetState::Active => String::new(),
    };
    outln!("state       {}{note}", a.state.name());
    outln!("current     {}", a.current);
    outln!("min_usable  {}", a.min_usable);
    outln!("CKA_ID      {}", hex(&a.object_id));
    outln!();
    let lw = a.id.as_str().len() + 12;
    let (p, c) = (w.produce.to_uppercase(), w.consume.to_uppercase());
    let (pw, cw) = (p.len().max(3), c.len().max(3));
    outln!(
        "{:>7}  {:lw$}  {:12}  {p:pw$}  {c:cw$}  {}",
        "VERSION",
        "LABEL",
        "STATUS",
        w.held.to_uppercase()
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for v in &history {
        outln!(
            "{:>7}  {:lw$}  {:12}  {:pw$}  {:cw$}  {}",
            v.version,
            format!("{}@v{}", a.id, v.version),
            version_status(&a, v.version),
            yes(a.may_sign(v.version)),
            yes(a.may_verify(v.version)),
            v.public_key
                .as_deref()
                .map(hex)
                .unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

fn list(cli: &Cli) -> Result<(), Failure> {
    let r = readable_store(cli)?;
    let assets = r.store.list_assets()?;
    for a in &assets {
        r.checked(a, &a.versions)?;
    }
    let store = &r.store;
    if cli.json {
        let list: Vec<serde_json::Value> = assets.iter().map(|a| asset_json(a, None)).collect();
        return print_json(&serde_json::Value::Array(list));
    }
    if assets.is_empty() {
        outln!("no assets in {}", store.path().display());
        return Ok(());
    }
    let width = assets
        .iter()
        .map(|a| a.id.as_str().len())
        .max()
        .unwrap_or(5)
        .max(5);
    outln!(
        "{:width$}  {:11}  {:9}  {:>7}  {:>10}  CKA_ID",
        "ASSET",
        "TYPE",
        "STATE",
        "CURRENT",
        "MIN_USABLE"
    );
    for a in &assets {
        outln!(
            "{:width$}  {:11}  {:9}  {:>7}  {:>10}  {}",
            a.id.as_str(),
            a.key_type.name(),
            a.state.name(),
            a.current,
            a.min_usable,
            hex(&a.object_id)
        );
    }
    Ok(())
}

/// The public key of an EC asset's version `n`: the stored point and its
/// SubjectPublicKeyInfo.
pub fn point_of(a: &Asset, history: &[VersionRecord], n: u32) -> Result<Vec<u8>, Failure> {
    if !a.key_type.is_ec() {
        return Err(Failure::Refused(format!(
            "asset {:?} is {}, a secret key: it has no public key (the store holds its \
             CKA_CHECK_VALUE; see `p11derive asset show {}`)",
            a.id.as_str(),
            a.key_type,
            a.id.as_str()
        )));
    }
    let v = history.iter().find(|v| v.version == n).ok_or_else(|| {
        Failure::Usage(format!(
            "asset {:?} has no version {n} (its versions are 1 to {})",
            a.id.as_str(),
            a.current
        ))
    })?;
    v.public_key.clone().ok_or_else(|| {
        failed(format!(
            "asset {:?} version {n}: the store holds no public key for it",
            a.id.as_str()
        ))
    })
}

fn pubkey(
    cli: &Cli,
    name: &str,
    version: Option<u32>,
    der: bool,
    as_hex: bool,
) -> Result<(), Failure> {
    if der && std::io::stdout().is_terminal() {
        return Err(Failure::Usage(
            "--der writes binary DER: redirect it to a file (`> pub.der`), or use --pem or --hex"
                .into(),
        ));
    }
    let r = readable_store(cli)?;
    let a = find(&r.store, name)?;
    let history = r.history(&a)?;
    let n = version.unwrap_or(a.current);
    let point = point_of(&a, &history, n)?;
    let spki = p11derive::objects::spki(a.key_type, &point)
        .ok_or_else(|| failed(format!("asset {name:?} version {n}: malformed public key")))?;
    let status = version_status(&a, n);
    if !a.may_verify(n) {
        eprintln!("p11derive: note: {}", not_usable(&a, n));
    }
    let pem = der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, &spki)
        .map_err(|e| failed(format!("PEM encoding: {e}")))?;
    if cli.json {
        return print_json(&serde_json::json!({
            "asset_id": a.id.as_str(),
            "key_type": a.key_type.name(),
            "version": n,
            "status": status,
            "point": hex(&point),
            "spki_der": hex(&spki),
            "pem": pem,
        }));
    }
    if der {
        let mut out = std::io::stdout().lock();
        return match out.write_all(&spki).and_then(|()| out.flush()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(failed(format!("cannot write the output: {e}")))
            }
            _ => Ok(()),
        };
    }
    if as_hex {
        outln!("{}", hex(&point));
    } else {
        outln!("{}", pem.trim_end());
    }
    Ok(())
}
