//! `p11derive audit verify | export | tail`.

use p11derive::audit::{key_data_verifies, verify_chain, verify_lane, ChainFault, Event, Record};
use p11derive::derive;
use p11derive::store::{
    hex, key_digest, parse_lanes_detail, parse_resumes_to, parse_transition_detail, AssetState,
    AuditRow, LaneRow, Store, PENDING_MARK,
};
use std::collections::BTreeMap;

use p11derive::audit::Anchor;
use p11derive::store::StoreError;

use crate::args::Cli;
use crate::common::{failed, load_config, open_store, open_store_read_only, with_key, Failure};
use crate::users::{gate, Want};
use p11derive::access::Action;

fn record_json(r: &Record, mac: Option<&[u8]>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "seq": r.seq,
        "time": rfc3339(r.time_ns),
        "time_ns": r.time_ns,
        "pid": r.pid,
        "session": r.session,
        "event": r.event.name(),
        "asset": r.asset,
        "version": r.version,
        "mechanism": r.mechanism,
        "mechanism_name": r.mechanism.map(p11derive::error::mech_name),
        "input_sha256": r.input_sha256.map(|h| hex(&h)),
        "rv": r.rv,
        "rv_name": p11derive::error::rv_name(r.rv),
        "detail": r.detail,
        "mac": mac.map(hex),
    });
    if let Some(actor) = &r.actor {
        v["actor"] = actor.as_str().into();
    }
    v
}

/// A record of the main chain or of a writer's lane, as listed.
enum Listed {
    Main(Record, Vec<u8>),
    Lane(LaneRow),
}

impl Listed {
    fn record(&self) -> &Record {
        match self {
            Listed::Main(r, _) => r,
            Listed::Lane(l) => &l.record,
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Listed::Main(r, mac) => record_json(r, Some(mac)),
            Listed::Lane(l) => {
                let mut v = record_json(&l.record, Some(&l.mac));
                v["seq"] = serde_json::Value::Null;
                v["lane"] = l.at.lane.into();
                v["pos"] = l.at.pos.into();
                v["change"] = l.at.change.into();
                v
            }
        }
    }

    /// Where it is: `N` in the main chain, `L.P` in lane L.
    fn place(&self) -> String {
        match self {
            Listed::Main(r, _) => r.seq.to_string(),
            Listed::Lane(l) => format!("{}.{}", l.at.lane, l.at.pos),
        }
    }
}

/// The records from `--since` (a main-chain record number: lane records
/// from that record's time on), of `--asset` if given: the main chain's
/// and every lane's, merged by time (the lanes of a PostgreSQL store).
fn selected(
    store: &Store,
    since: Option<u64>,
    asset: Option<&str>,
) -> Result<Vec<Listed>, Failure> {
    if let Some(name) = asset {
        known_asset(store, name)?;
    }
    let since = since.map_or(i64::MIN, |s| i64::try_from(s).unwrap_or(i64::MAX));
    let rows = store.audit_rows(since)?;
    let from_ns = match since {
        i64::MIN => 0,
        _ => rows.first().map_or(u64::MAX, |(r, _)| r.time_ns),
    };
    let mut all: Vec<Listed> = rows.into_iter().map(|(r, m)| Listed::Main(r, m)).collect();
    let mut lanes: Vec<Listed> = store
        .lane_rows()?
        .into_iter()
        .filter(|l| l.record.time_ns >= from_ns)
        .map(Listed::Lane)
        .collect();
    if !lanes.is_empty() {
        lanes.sort_by_key(|l| match l {
            Listed::Lane(l) => (l.record.time_ns, l.id),
            Listed::Main(..) => (0, 0),
        });
        all = merge_by_time(all, lanes);
    }
    Ok(all
        .into_iter()
        .filter(|l| asset.is_none() || l.record().asset.as_deref() == asset)
        .collect())
}

/// Two lists each in time order, merged in time order (the first list's
/// record first at equal times).
fn merge_by_time(a: Vec<Listed>, b: Vec<Listed>) -> Vec<Listed> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut b = b.into_iter().peekable();
    for x in a {
        while b
            .peek()
            .is_some_and(|y| y.record().time_ns < x.record().time_ns)
        {
            out.extend(b.next());
        }
        out.push(x);
    }
    out.extend(b);
    out
}

/// `--asset NAME` must name an asset of the store (retired ones included)
/// or one its records name; otherwise exit 4, not an empty listing.
fn known_asset(store: &Store, name: &str) -> Result<(), Failure> {
    if store.all_assets()?.iter().any(|a| a.id.as_str() == name) {
        return Ok(());
    }
    Err(Failure::NotFound(
        StoreError::NotFound(name.into()).to_string(),
    ))
}

/// RFC 3339, UTC, with the record's nanoseconds.
fn rfc3339(time_ns: u64) -> String {
    format!(
        "{}.{:09}Z",
        p11derive::log::utc_secs(time_ns / 1_000_000_000),
        time_ns % 1_000_000_000
    )
}

pub fn export(cli: &Cli, since: Option<u64>, asset: Option<&str>) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let store = open_store_read_only(&config)?;
    gate(cli, &store, &config, Want::to(Action::ReadAudit))?;
    for l in selected(&store, since, asset)? {
        // A closed pipe (`| head`) ends the export quietly.
        outln!("{}", l.json());
    }
    Ok(())
}

pub fn tail(cli: &Cli, n: usize, asset: Option<&str>) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let store = open_store_read_only(&config)?;
    gate(cli, &store, &config, Want::to(Action::ReadAudit))?;
    let rows = selected(&store, None, asset)?;
    let newest = rows.iter().skip(rows.len().saturating_sub(n));
    if cli.json {
        for l in newest {
            outln!("{}", l.json());
        }
        return Ok(());
    }
    for l in newest {
        let r = l.record();
        let line = format!(
            "{:>8}  {}Z  pid {:<7} {:<12} {:<24} {:<30} {}{}{}",
            l.place(),
            p11derive::log::utc_secs(r.time_ns / 1_000_000_000),
            r.pid,
            r.event.name(),
            match (&r.asset, r.version) {
                (Some(a), Some(v)) => format!("{a}@v{v}"),
                (Some(a), None) => a.clone(),
                _ => "-".into(),
            },
            p11derive::error::rv_name(r.rv),
            r.mechanism
                .map(|m| format!("{} ", p11derive::error::mech_name(m)))
                .unwrap_or_default(),
            r.actor
                .as_deref()
                .map(|a| format!("by {a} "))
                .unwrap_or_default(),
            r.detail
        );
        outln!("{}", line.trim_end());
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
fn replay_uses(rows: &[AuditRow], lanes: &[LaneRow]) -> Vec<String> {
    let mut state: BTreeMap<&str, p11derive::store::Asset> = BTreeMap::new();
    let mut faults = Vec::new();
    // A lane record right after the state change it was decided under (the
    // newest when it committed: no state change was in flight).
    let mut order: Vec<(u64, u8, String, &Record)> = rows
        .iter()
        .map(|(r, _)| (r.seq, 0, format!("record {}", r.seq), r))
        .chain(lanes.iter().map(|l| {
            let place = format!("lane {} record {}", l.at.lane, l.at.pos);
            (l.at.change, 1, place, &l.record)
        }))
        .collect();
    if !lanes.is_empty() {
        order.sort_by_key(|o| (o.0, o.1));
    }
    for (_, _, place, r) in order {
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
                        "{place}: {} by {name:?} version {v} while the asset was {was}: the \
                         state that let it through was not the recorded one (a row changed \
                         outside p11derive)",
                        r.event.name()
                    ));
                }
            }
            _ => {}
        }
    }
    faults
}

pub fn reanchor(cli: &Cli, yes: bool) -> Result<(), Failure> {
    if !yes {
        return Err(Failure::Usage(
            "re-anchoring accepts this store as the root's, even if it lacks the newest records \
             the anchor holds; it refuses a store of another lineage or one that lacks a state \
             change the anchor knows. Run `p11derive audit verify` first and confirm with --yes"
                .into(),
        ));
    }
    let config = load_config(cli)?;
    let store = open_store(&config)?;
    // Users mode: an admin's act (the store checked against its own chain
    // for the login; the anchor is judged below).
    let want = Want::to(Action::ManagePolicy).unanchored();
    with_key(cli, &store, &config, want, |store, backend, ak, caller| {
        store.check_root(ak)?;
        let actor = caller.map(|c| c.name.as_str());
        let before = backend.read_anchor().map_err(failed)?;
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
        store.record(
            Some(ak),
            Record::new(Event::Anchor, 0).actor(actor).detail(detail),
        )?;
        let repaired = before.as_ref().map(|a| Anchor { epoch, ..a.clone() });
        store.authenticate(ak, repaired.as_ref())?;
        let (seq, mac) = store
            .audit_head()?
            .ok_or_else(|| Failure::Failed("the audit log is empty".into()))?;
        let next = Anchor {
            store: store.store_id()?,
            root: p11derive::lifecycle::anchored_root(before.as_ref(), backend).map_err(failed)?,
            head: (seq, mac),
            change: store.latest_change()?.unwrap_or((0, [0; 32])),
            epoch,
            location: store.path().display().to_string(),
        };
        backend.write_anchor(&next, true).map_err(failed)?;
        if cli.json {
            return crate::common::print_json(&serde_json::json!({
                "anchor_record": seq,
                "epoch": epoch,
                "lost": lost,
            }));
        }
        outln!(
            "audit reanchor: the rollback anchor now holds record {seq} (epoch {epoch}); lost: \
             {lost}. Running processes that refused the store resume at their next login"
        );
        Ok(())
    })
}

pub fn verify(cli: &Cli) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let store = open_store_read_only(&config)?;
    let want = Want::to(Action::ReadAudit).unanchored();
    with_key(cli, &store, &config, want, |store, backend, ak, _| {
        let anchor = backend.read_anchor().map_err(failed)?;
        let v = check(store, ak, anchor)?;
        if cli.json {
            return crate::common::print_json(&v.json());
        }
        outln!("audit verify: OK: {}", v.text());
        Ok(())
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
        if let Some(h) = history.iter().find(|h| !key_data_verifies(ak, name, h)) {
            return Err(bad(format!(
                "asset {name:?} version {}: its public key carries no valid MAC under the audit \
                 key (the versions table was changed)",
                h.version
            )));
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
pub fn check(
    store: &Store,
    ak: &derive::Secret32,
    anchor: Option<Anchor>,
) -> Result<Verified, Failure> {
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
    let lanes = store
        .lane_rows()
        .map_err(|e| bad(format!("an audit lane row is malformed: {e}")))?;
    let lane_count = check_lanes(ak, &rows, &lanes).map_err(bad)?;
    let expected = replay(&rows);

    // Every fault found: the first disagreement between the tables and the
    // chain, each row whose seal fails, each use its place did not allow.
    let mut all = Vec::new();
    if let Err(Failure::Failed(m) | Failure::Usage(m)) = reconcile(store, ak, &rows, &expected) {
        all.push(m);
    }
    all.extend(store.seal_faults(ak, &expected)?);
    all.extend(store.subject_faults(ak)?);
    all.extend(replay_uses(&rows, &lanes));
    match all.len() {
        0 => {}
        1 => return Err(bad(all.remove(0))),
        n => return Err(bad(format!("{n} faults:\n  {}", all.join("\n  ")))),
    }
    Ok(Verified {
        records: count,
        last_mac: hex(&last_mac),
        lane_records: lane_count.0,
        lanes: lane_count.1,
        assets: expected.len(),
        anchor: anchor.map(|a| (a.head.0, a.change.0)),
        pending: store.pending_rows()?.len(),
    })
}

/// What `audit verify` found, all of it good.
pub struct Verified {
    pub records: u64,
    pub last_mac: String,
    pub lane_records: usize,
    pub lanes: usize,
    pub assets: usize,
    /// The anchor's (head record, newest state change record), if any.
    pub anchor: Option<(u64, u64)>,
    pub pending: usize,
}

impl Verified {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": true,
            "records": self.records,
            "last_mac": self.last_mac,
            "lane_records": self.lane_records,
            "lanes": self.lanes,
            "assets_reconciled": self.assets,
            "anchor_record": self.anchor.map(|a| a.0),
            "anchor_change": self.anchor.map(|a| a.1),
            "pending": self.pending,
        })
    }

    pub fn text(&self) -> String {
        format!(
            "{} records chained under the HSM-derived audit key (last MAC {}){}, {} assets \
             reconciled{}{}",
            self.records,
            &self.last_mac[..16],
            match (self.lane_records, self.lanes) {
                (0, _) => String::new(),
                (n, k) => format!(", and {n} in {k} writers' lanes, each covered by the chain"),
            },
            self.assets,
            match self.anchor {
                Some((0, c)) => format!(", the anchor's newest state change (record {c}) present"),
                Some((seq, _)) => format!(", anchor at record {seq} present"),
                None => ", no anchor in the backing HSM yet".into(),
            },
            match self.pending {
                0 => String::new(),
                1 => "; 1 record of a process without a login is pending, sealed at the next \
                      logged-in operation"
                    .to_string(),
                n => format!(
                    "; {n} records of processes without a login are pending, sealed at the next \
                     logged-in operation"
                ),
            }
        )
    }
}

/// Every writer's lane (PostgreSQL) chains from its first record to its
/// newest, and every lane head a `lanes` record of the (verified) main chain
/// names is still there with its MAC. Returns (lane records, lanes).
fn check_lanes(
    ak: &derive::Secret32,
    rows: &[AuditRow],
    lanes: &[LaneRow],
) -> Result<(usize, usize), String> {
    let mut heads: BTreeMap<(u64, u64), [u8; 32]> = BTreeMap::new();
    let mut n_lanes = 0;
    for lane in lanes.chunk_by(|a, b| a.at.lane == b.at.lane) {
        let id = lane[0].at.lane;
        n_lanes += 1;
        let macs: Vec<[u8; 32]> = lane
            .iter()
            .map(|l| l.mac.as_slice().try_into().unwrap_or([0u8; 32]))
            .collect();
        verify_lane(
            ak,
            id,
            lane.iter().zip(&macs).map(|(l, m)| (&l.at, &l.record, m)),
        )
        .map_err(|f| match f {
            ChainFault::Gap { expected, found } => format!(
                "record {expected} of audit lane {id} is missing (the next one there is {found}): \
                 records were deleted from the lane"
            ),
            ChainFault::BadMac { seq } => format!(
                "record {seq} of audit lane {id} does not carry a valid MAC: it was changed, \
                 forged, moved, or a record before it in the lane was removed"
            ),
        })?;
        for (l, m) in lane.iter().zip(macs) {
            heads.insert((id, l.at.pos), m);
        }
    }
    for (r, _) in rows {
        if r.event != Event::Lanes {
            continue;
        }
        let Some((_, named)) = parse_lanes_detail(&r.detail) else {
            continue;
        };
        for (lane, pos, mac) in named {
            if heads.get(&(lane, pos)) != Some(&mac) {
                return Err(format!(
                    "record {} names record {pos} of audit lane {lane} as that lane's head, but the \
                     store lacks it (or holds it with another MAC): records were deleted from the \
                     lane, or an older copy of the store was restored",
                    r.seq
                ));
            }
        }
    }
    Ok((lanes.len(), n_lanes))
}
