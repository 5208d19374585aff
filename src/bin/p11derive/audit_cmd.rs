//! `p11derive audit verify | export | tail`.

use p11derive::audit::{public_key_mac, verify_chain, ChainFault, Event, Record};
use p11derive::derive;
use p11derive::store::{
    hex, key_digest, parse_resumes_to, parse_transition_detail, AssetState, AuditRow, Store,
    PENDING_MARK,
};
use std::collections::BTreeMap;

use p11derive::audit::Anchor;
use p11derive::store::StoreError;

use super::{load_config, open_store, with_key, Args, Failure};

fn record_json(r: &Record, mac: Option<&[u8]>) -> serde_json::Value {
    serde_json::json!({
        "seq": r.seq,
        "time_ns": r.time_ns,
        "pid": r.pid,
        "session": r.session,
        "event": r.event.name(),
        "asset": r.asset,
        "version": r.version,
        "mechanism": r.mechanism,
        "input_sha256": r.input_sha256.map(|h| hex(&h)),
        "rv": r.rv,
        "detail": r.detail,
        "mac": mac.map(hex),
    })
}

/// The rows from `--since`, of `--asset` if given.
fn selected(args: &Args, store: &Store) -> Result<Vec<AuditRow>, Failure> {
    let since = match args.value("--since") {
        None => i64::MIN,
        Some(v) => v
            .parse::<i64>()
            .map_err(|_| Failure::Usage(format!("--since takes a record number, not {v:?}")))?,
    };
    let asset = args.value("--asset");
    let rows = store.audit_rows(since)?;
    Ok(rows
        .into_iter()
        .filter(|(r, _)| asset.is_none() || r.asset.as_deref() == asset)
        .collect())
}

pub fn export(args: &Args) -> Result<(), Failure> {
    let config = load_config(args)?;
    let store = open_store(&config)?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for (r, mac) in selected(args, &store)? {
        // A closed pipe (`| head`) ends the export quietly.
        if writeln!(out, "{}", record_json(&r, Some(&mac))).is_err() {
            break;
        }
    }
    Ok(())
}

pub fn tail(args: &Args) -> Result<(), Failure> {
    let n: usize = match args.value("-n") {
        None => 20,
        Some(v) => v
            .parse()
            .map_err(|_| Failure::Usage(format!("-n takes a count, not {v:?}")))?,
    };
    let config = load_config(args)?;
    let store = open_store(&config)?;
    let rows = store.audit_rows(i64::MIN)?;
    for (r, _) in rows.iter().skip(rows.len().saturating_sub(n)) {
        println!(
            "{:>8}  {}  pid {:<7} {:<12} {:<24} rv 0x{:x}  {}",
            r.seq,
            p11derive::log::utc_secs(r.time_ns / 1_000_000_000),
            r.pid,
            r.event.name(),
            match (&r.asset, r.version) {
                (Some(a), Some(v)) => format!("{a}@v{v}"),
                (Some(a), None) => a.clone(),
                _ => "-".into(),
            },
            r.rv,
            r.detail
        );
    }
    Ok(())
}

/// Replays creation and transition records: the state each asset must have.
/// Records sealed from the pending table are never trusted for state.
fn replay(rows: &[AuditRow]) -> BTreeMap<String, (u64, AssetState, u32, u32)> {
    let mut expected = BTreeMap::new();
    for (r, _) in rows {
        if matches!(r.event, Event::Create | Event::Transition)
            && !r.detail.starts_with(PENDING_MARK)
        {
            if let (Some(asset), Some(s)) = (&r.asset, parse_transition_detail(&r.detail)) {
                expected.insert(asset.clone(), (r.seq, s.0, s.1, s.2));
            }
        }
    }
    expected
}

/// Every operation record that its place in the chain did not allow: a
/// signature or encryption by a version that could not produce then, a
/// decryption by one that could not open, replayed from the state changes
/// before it (so a row edited and put back between two verifies still shows
/// as the operations it let through).
fn replay_uses(rows: &[AuditRow]) -> Vec<String> {
    let mut state: BTreeMap<&str, p11derive::store::Asset> = BTreeMap::new();
    let mut faults = Vec::new();
    for (r, _) in rows {
        if r.detail.starts_with(PENDING_MARK) {
            continue;
        }
        let Some(name) = r.asset.as_deref() else {
            continue;
        };
        match r.event {
            Event::Create | Event::Transition => {
                if let Some((s, current, min)) = parse_transition_detail(&r.detail) {
                    state.insert(name, p11derive::asset::as_recorded(s, current, min));
                }
            }
            Event::Sign | Event::Encrypt | Event::Decrypt if r.rv == 0 => {
                let Some(v) = r.version else { continue };
                let allowed = state.get(name).is_some_and(|a| {
                    if r.event == Event::Decrypt {
                        a.may_verify(v)
                    } else {
                        a.may_sign(v)
                    }
                });
                if !allowed {
                    let was = state.get(name).map_or_else(
                        || "not created".to_string(),
                        |a| {
                            format!(
                                "{} at version {} (min_usable {})",
                                a.state.name(),
                                a.current,
                                a.min_usable
                            )
                        },
                    );
                    faults.push(format!(
                        "record {}: {} by {name:?} version {v} while the asset was {was}: the \
                         state that let it through was not the recorded one (a row changed \
                         outside p11derive)",
                        r.seq,
                        r.event.name()
                    ));
                }
            }
            _ => {}
        }
    }
    faults
}

pub fn reanchor(args: &Args) -> Result<(), Failure> {
    if !args.flag("--yes") {
        return Err(Failure::Usage(
            "re-anchoring accepts this store as the root's, even if it lacks the newest records \
             the anchor holds; it refuses a store of another lineage or one that lacks a state \
             change the anchor knows. Run `p11derive audit verify` first and confirm with --yes"
                .into(),
        ));
    }
    with_key(args, |store, backend, ak| {
        store.check_root(ak)?;
        let before = backend
            .read_anchor()
            .map_err(|e| Failure::Failed(e.to_string()))?;
        let refuse = |m: String| Failure::Failed(format!("audit reanchor: REFUSED: {m}"));
        if let Some(a) = &before {
            // Only the same store (a repaired copy of it), never another.
            if let Err(e @ StoreError::Lineage(..)) = store.check_anchor(a) {
                return Err(refuse(e.to_string()));
            }
            let (c, mac) = a.change;
            if c > 0 && !store.holds_record(c, &mac)? {
                return Err(refuse(format!(
                    "the anchor's newest state change, audit record {c}, is not in store {}: \
                     re-anchoring would undo the state changes made after this copy was taken \
                     (a retired or suspended key would come back). Nothing was changed. Put back \
                     a copy of the store that holds record {c}",
                    store.path().display()
                )));
            }
        }
        // A verified repair: the chain, every row's seal and the replay, and
        // the lineage and the newest state change the anchor knows.
        let known = before.clone().map(|a| Anchor {
            head: (0, [0; 32]),
            ..a
        });
        check(store, ak, known)?;
        let head = store.audit_head()?.map_or(0, |h| h.0);
        let epoch = before.as_ref().map_or(0, |a| a.epoch) + 1;
        let lost = match &before {
            Some(a) if a.head.0 > head => format!(
                "records {}..={} the anchor knew are not in this store: the operations they \
                 recorded are lost from the log (no state change among them)",
                head + 1,
                a.head.0
            ),
            Some(a) if !store.holds_record(a.head.0, &a.head.1)? => format!(
                "record {} holds another MAC than the anchor's: the records from there on are \
                 not the ones the anchor knew",
                a.head.0
            ),
            Some(_) => "nothing: the store holds every record the anchor knew".into(),
            None => "nothing: there was no anchor".into(),
        };
        let detail = match &before {
            Some(a) => format!(
                "re-anchored by an operator (epoch {epoch}); the anchor held record {}; lost: {lost}",
                a.head.0
            ),
            None => "anchored by an operator; there was no anchor".into(),
        };
        store.record(Some(ak), Record::new(Event::Anchor, 0).detail(detail))?;
        let repaired = before.as_ref().map(|a| Anchor { epoch, ..a.clone() });
        store.authenticate(ak, repaired.as_ref())?;
        let (seq, mac) = store
            .audit_head()?
            .ok_or_else(|| Failure::Failed("the audit log is empty".into()))?;
        let next = Anchor {
            store: store.store_id()?,
            root: p11derive::lifecycle::anchored_root(before.as_ref(), backend)
                .map_err(|e| Failure::Failed(e.to_string()))?,
            head: (seq, mac),
            change: store.latest_change()?.unwrap_or((0, [0; 32])),
            epoch,
            location: store.path().display().to_string(),
        };
        backend
            .write_anchor(&next, true)
            .map_err(|e| Failure::Failed(e.to_string()))?;
        println!(
            "audit reanchor: the rollback anchor now holds record {seq} (epoch {epoch}); lost: \
             {lost}. Running processes that refused the store resume at their next login"
        );
        Ok(())
    })
}

pub fn verify(args: &Args) -> Result<(), Failure> {
    with_key(args, |store, backend, ak| {
        let anchor = backend
            .read_anchor()
            .map_err(|e| Failure::Failed(e.to_string()))?;
        check(store, ak, anchor)
    })
}

/// The first disagreement between the assets and versions tables and the
/// chain's records, as a message naming the asset.
fn reconcile(
    store: &Store,
    ak: &derive::Secret32,
    rows: &[AuditRow],
    expected: &BTreeMap<String, (u64, AssetState, u32, u32)>,
) -> Result<(), Failure> {
    let bad = Failure::Failed;
    // Each asset's own authenticated records, indexed once.
    let mut by_asset: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for (r, _) in rows {
        if let Some(asset) = r
            .asset
            .as_deref()
            .filter(|_| !r.detail.starts_with(PENDING_MARK))
        {
            by_asset.entry(asset).or_default().push(r);
        }
    }
    let assets = store.all_assets()?;
    for (name, (seq, ..)) in expected {
        if !assets.iter().any(|a| a.id.as_str() == name) {
            return Err(bad(format!(
                "asset {name:?}, created by record {seq}, is missing from the store (its rows were \
                 deleted; a retired asset's name would come back)"
            )));
        }
    }
    for a in assets {
        let name = a.id.as_str();
        match expected.get(name) {
            None => {
                return Err(bad(format!(
                    "asset {name:?} is in the store but no record created it (a forged asset?)"
                )))
            }
            Some((seq, state, current, min))
                if (a.state, a.current, a.min_usable) != (*state, *current, *min) =>
            {
                return Err(bad(format!(
                    "asset {name:?} is {} at version {} (min_usable {}) in the store, but its last \
                     recorded transition (record {seq}) left it {} at version {current} \
                     (min_usable {min}): the assets table was changed outside p11derive",
                    a.state.name(),
                    a.current,
                    a.min_usable,
                    state.name()
                )))
            }
            Some(_) => {}
        }
        // A suspended asset resumes to what its suspension recorded.
        if a.state == AssetState::Suspended {
            let recorded = by_asset
                .get(name)
                .and_then(|rs| {
                    rs.iter()
                        .rev()
                        .find(|r| matches!(r.event, Event::Transition))
                })
                .and_then(|r| parse_resumes_to(&r.detail));
            if recorded != Some(a.resumes_to) {
                return Err(bad(format!(
                    "asset {name:?} would resume to {} but its suspension recorded {} (the \
                     assets table was changed)",
                    a.resumes_to.name(),
                    recorded.map_or("nothing", AssetState::name)
                )));
            }
        }
        // What the creation and rotation records say of the asset's identity
        // and keys must be what the store holds.
        let history = store.history(a.rowid)?;
        for h in &history {
            if let Some(pk) = &h.public_key {
                let want = public_key_mac(ak, name, h.version, pk);
                if h.pk_mac.as_deref() != Some(&want[..]) {
                    return Err(bad(format!(
                        "asset {name:?} version {}: its public key carries no valid MAC under the \
                         audit key (the versions table was changed)",
                        h.version
                    )));
                }
            }
        }
        for r in by_asset.get(name).into_iter().flatten() {
            let field = |key: &str| {
                r.detail
                    .split(' ')
                    .find_map(|w| w.strip_prefix(key))
                    .map(str::to_string)
            };
            let recorded_pk = field("pk=");
            let version = match r.event {
                Event::Create => Some(1),
                Event::Transition if r.detail.starts_with("rotate") => r.version,
                _ => None,
            };
            if let (Some(v), Some(pk)) = (version, recorded_pk) {
                let held = history
                    .iter()
                    .find(|h| h.version == v)
                    .and_then(|h| h.public_key.as_deref());
                if key_digest(held) != pk {
                    return Err(bad(format!(
                        "asset {name:?} version {v}: the public key in the store is not the one \
                         record {} registered (the versions table was changed)",
                        r.seq
                    )));
                }
            }
            if r.event == Event::Create {
                let kt = r.detail.split(' ').nth(1).unwrap_or("");
                if field("id=").as_deref() != Some(hex(&a.object_id).as_str())
                    || kt != a.key_type.name()
                {
                    return Err(bad(format!(
                        "asset {name:?}: its CKA_ID or key type in the store differs from its \
                         creation record {} (the assets table was changed)",
                        r.seq
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The first fault, as a message naming the record.
fn check(store: &Store, ak: &derive::Secret32, anchor: Option<Anchor>) -> Result<(), Failure> {
    let bad = |m: String| Failure::Failed(format!("audit verify: FAILED: {m}"));
    if let Some(a) = &anchor {
        if let Err(e @ StoreError::Lineage(..)) = store.check_anchor(a) {
            return Err(bad(e.to_string()));
        }
    }
    // Every row, whatever its seq: a row numbered 0 or below is a gap too.
    let rows = store
        .audit_rows(i64::MIN)
        .map_err(|e| bad(format!("an audit row is malformed: {e}")))?;
    let macs: Vec<[u8; 32]> = rows
        .iter()
        .map(|(_, m)| m.as_slice().try_into().unwrap_or([0u8; 32]))
        .collect();
    let (last_mac, count) = verify_chain(ak, rows.iter().map(|(r, _)| r).zip(macs.iter()))
        .map_err(|f| match f {
            ChainFault::Gap { expected, found } => bad(format!(
                "record {expected} is missing (the next record is {found}): records were deleted \
                 or inserted"
            )),
            ChainFault::BadMac { seq } => bad(format!(
                "record {seq} does not carry a valid MAC: it was changed, forged, reordered, or a \
                 record before it was removed"
            )),
        })?;
    if let Some((seq, mac)) = anchor.as_ref().map(|a| a.head).filter(|h| h.0 > 0) {
        let held = rows.iter().zip(&macs).find(|((r, _), _)| r.seq == seq);
        match held {
            Some((_, m)) if *m == mac => {}
            Some(_) => {
                return Err(bad(format!(
                    "record {seq}, anchored in the backing HSM, has another MAC in the store: the \
                     store is not the one the anchor was taken from"
                )))
            }
            None => {
                return Err(bad(format!(
                    "the store ends at record {count}, but the backing HSM's anchor holds record \
                     {seq}: records were deleted, or an older copy of the store was restored. If a \
                     backup was restored knowingly, re-anchor with `p11derive audit reanchor --yes`"
                )))
            }
        }
    }
    if let Some((seq, mac)) = anchor.as_ref().map(|a| a.change).filter(|c| c.0 > 0) {
        if !rows
            .iter()
            .zip(&macs)
            .any(|((r, _), m)| r.seq == seq && *m == mac)
        {
            return Err(bad(format!(
                "the backing HSM's anchor names state change record {seq}, which the store lacks \
                 (or holds with another MAC): a state change was removed"
            )));
        }
    }
    let expected = replay(&rows);

    // Every fault found: the first disagreement between the tables and the
    // chain, each row whose seal fails, each use its place did not allow.
    let mut all = Vec::new();
    if let Err(Failure::Failed(m) | Failure::Usage(m)) = reconcile(store, ak, &rows, &expected) {
        all.push(m);
    }
    all.extend(store.seal_faults(ak, &expected)?);
    all.extend(replay_uses(&rows));
    match all.len() {
        0 => {}
        1 => return Err(bad(all.remove(0))),
        n => return Err(bad(format!("{n} faults:\n  {}", all.join("\n  ")))),
    }
    let pending = store.pending_rows()?.len();
    println!(
        "audit verify: OK: {count} records chained under the HSM-derived audit key (last MAC {}), \
         {} assets reconciled{}{}",
        &hex(&last_mac)[..16],
        expected.len(),
        match anchor.as_ref().map(|a| (a.head, a.change)) {
            Some(((0, _), (c, _))) =>
                format!(", the anchor's newest state change (record {c}) present"),
            Some(((seq, _), _)) => format!(", anchor at record {seq} present"),
            None => ", no anchor in the backing HSM yet".into(),
        },
        if pending > 0 {
            format!(
                "; {pending} records of processes without a login are pending, sealed at the next \
                 logged-in operation"
            )
        } else {
            String::new()
        }
    );
    Ok(())
}
