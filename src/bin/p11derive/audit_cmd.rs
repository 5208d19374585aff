//! `p11derive audit verify | export | tail`.

use p11derive::audit::{key_data_verifies, ChainCheck, ChainFault, Event, LaneCheck, Record};
use p11derive::checkpoint::{parse_checkpoint_detail, state_digest, LaneHead, Snapshot};
use p11derive::derive;
use p11derive::store::{hex, key_digest, AssetState, LaneOrder, LaneRow, Store, STREAM_BATCH};
use std::collections::{BTreeMap, BTreeSet};

use p11derive::audit::Anchor;
use p11derive::store::StoreError;

use crate::args::Cli;
use crate::common::{failed, load_config, open_store, open_store_read_only, with_key, Failure};
use crate::progress::Progress;
use crate::replay::{Facts, Replay};
use crate::users::{gate, Want};
use p11derive::access::Action;

pub fn record_json(r: &Record, mac: Option<&[u8]>) -> serde_json::Value {
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
pub(crate) enum Listed {
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

    pub(crate) fn json(&self) -> serde_json::Value {
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

/// The newest lane row insertion number and lane rows when a reader
/// starts (`None`: no lane rows, as on SQLite).
fn lanes_at_start(store: &Store) -> Result<Option<(i64, u64)>, Failure> {
    Ok(store.lane_extent()?)
}

/// Whether a record is one `--asset` selects.
fn of_asset(r: &Record, asset: Option<&str>) -> bool {
    asset.is_none() || r.asset.as_deref() == asset
}

/// The records from `--since` (a main-chain record number: lane records
/// from that record's time on), of `--asset` if given: the main chain's
/// and every lane's, merged by time (the lanes of a PostgreSQL store; the
/// main chain's record first at equal times), each given to `emit` as it
/// is read: the main chain in batches by number, the lanes in batches by
/// (time, insertion number), up to the newest of each when it started.
fn each_selected(
    store: &Store,
    since: Option<u64>,
    asset: Option<&str>,
    progress: &Progress,
    mut emit: impl FnMut(Listed),
) -> Result<(), Failure> {
    if let Some(name) = asset {
        known_asset(store, name)?;
    }
    let upto = store.audit_head()?.map_or(0, |h| h.0);
    let lanes_at = lanes_at_start(store)?;
    let since = since.map_or(i64::MIN, |s| i64::try_from(s).unwrap_or(i64::MAX));
    let first = u64::try_from(since).unwrap_or(1).max(1);
    progress.stage(
        "audit export",
        (upto + 1).saturating_sub(first) + lanes_at.map_or(0, |l| l.1),
    );
    let mut main = store
        .chain_stream_from(since.saturating_sub(1), upto)
        .peekable();
    let from_ns = match since {
        i64::MIN => 0,
        _ => match main.peek() {
            Some(Ok((r, _))) => r.time_ns,
            Some(Err(_)) => 0,
            None => u64::MAX,
        },
    };
    let mut lanes = lanes_at
        .map(|(max, _)| {
            let from = i64::try_from(from_ns).unwrap_or(i64::MAX);
            store.lane_stream(LaneOrder::Time, max, from)
        })
        .into_iter()
        .flatten()
        .peekable();
    let mut give = |l: Listed| {
        progress.tick();
        if of_asset(l.record(), asset) {
            emit(l);
        }
    };
    for row in main {
        let (r, mac) = row?;
        while let Some(l) = lanes.next_if(|l| match l {
            Ok(l) => l.record.time_ns < r.time_ns,
            Err(_) => true,
        }) {
            give(Listed::Lane(l?));
        }
        give(Listed::Main(r, mac));
    }
    for l in lanes {
        give(Listed::Lane(l?));
    }
    Ok(())
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
pub(crate) fn rfc3339(time_ns: u64) -> String {
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
    let progress = Progress::new(cli, "audit export", 0);
    // One buffered writer for the whole export (a locked, flushed line per
    // record cost a system call each). A closed pipe (`| head`) ends the
    // export quietly, as `outln!` would; any other write error fails it.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut closed = false;
    let done = each_selected(&store, since, asset, &progress, |l| {
        if closed {
            return;
        }
        let put = match &l {
            Listed::Main(r, mac) => crate::export_line::write(&mut out, r, mac, None),
            Listed::Lane(l) => crate::export_line::write(&mut out, &l.record, &l.mac, Some(&l.at)),
        };
        crate::export_line::settle(put, &mut closed);
    });
    if !closed {
        crate::export_line::settle(std::io::Write::flush(&mut out), &mut closed);
    }
    progress.finish();
    done
}

/// The newest `n` records of `--asset` (all records without it), oldest
/// first, as `each_selected` would list them last: the newest of the main
/// chain and of the lanes, read newest first in batches (never the whole
/// log), then merged by time.
fn newest(store: &Store, n: usize, asset: Option<&str>) -> Result<Vec<Listed>, Failure> {
    if let Some(name) = asset {
        known_asset(store, name)?;
    }
    let batch = if asset.is_some() {
        STREAM_BATCH
    } else {
        n.clamp(1, STREAM_BATCH)
    };
    let mut main: Vec<Listed> = Vec::new();
    let mut before = i64::MAX;
    while main.len() < n {
        let rows = store.chain_newest(before, batch)?;
        let Some((last, _)) = rows.last() else { break };
        before = last.seq as i64;
        let full = rows.len() == batch;
        main.extend(
            rows.into_iter()
                .filter(|(r, _)| of_asset(r, asset))
                .map(|(r, m)| Listed::Main(r, m)),
        );
        if !full {
            break;
        }
    }
    main.truncate(n);
    main.reverse();
    // Newest first by the (time_ns, id) index: an empty lane table (SQLite)
    // ends at the first read.
    let mut lanes: Vec<Listed> = Vec::new();
    let mut before = (i64::MAX, i64::MAX);
    while lanes.len() < n {
        let rows = store.lane_newest(before, batch)?;
        let Some(last) = rows.last() else { break };
        before = (last.record.time_ns as i64, last.id);
        let full = rows.len() == batch;
        lanes.extend(
            rows.into_iter()
                .filter(|l| of_asset(&l.record, asset))
                .map(Listed::Lane),
        );
        if !full {
            break;
        }
    }
    lanes.truncate(n);
    lanes.reverse();
    let mut all = merge_by_time(main, lanes);
    let drop = all.len().saturating_sub(n);
    all.drain(..drop);
    Ok(all)
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

pub fn tail(cli: &Cli, n: usize, asset: Option<&str>) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let store = open_store_read_only(&config)?;
    gate(cli, &store, &config, Want::to(Action::ReadAudit))?;
    let newest = newest(&store, n, asset)?;

    if cli.json {
        for l in &newest {
            outln!("{}", l.json());
        }
        return Ok(());
    }
    for l in &newest {
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
        // From the newest archive's end checkpoint when records were
        // archived (they are not in the store to verify from record 1).
        crate::checkpoint_cmd::verify_in(
            store,
            ak,
            known,
            crate::checkpoint_cmd::Mode::Plain,
            &Progress::hidden(),
            &mut Tally::default(),
        )?;
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

pub fn verify(cli: &Cli, from_checkpoint: bool) -> Result<(), Failure> {
    use crate::checkpoint_cmd::{verify_in, Mode};
    let config = load_config(cli)?;
    let store = open_store_read_only(&config)?;
    let want = Want::to(Action::ReadAudit).unanchored();
    with_key(cli, &store, &config, want, |store, backend, ak, caller| {
        let anchor = backend.read_anchor().map_err(failed)?;
        let started = std::time::Instant::now();
        let mut tally = Tally::default();
        let progress = Progress::new(cli, "audit verify", 0);
        let mode = if from_checkpoint {
            Mode::FromCheckpoint
        } else {
            Mode::Plain
        };
        let checked = verify_in(store, ak, anchor.clone(), mode, &progress, &mut tally);
        progress.finish();
        crate::verify_file::write(&config, store, &tally, checked.is_ok(), started.elapsed());
        let (v, start) = checked?;
        let mut json = v.json();
        let text = v.text();
        let actor = caller.map(|c| c.name.as_str());
        crate::checkpoint_cmd::auto(&config, store, backend, ak, anchor.as_ref(), v, actor);
        if cli.json {
            json["from_checkpoint"] = start.checkpoint.into();
            json["note"] = start.note.into();
            return crate::common::print_json(&json);
        }
        if let Some(note) = start.note {
            outln!("audit verify: {note}");
        }
        outln!("audit verify: OK: {text}");
        Ok(())
    })
}

/// The first disagreement between the assets and versions tables and the
/// chain's records, as a message naming the asset; and how many asset rows
/// were judged (those present and those the chain says are missing) and
/// which disagree (`audit verify`'s drift).
fn reconcile(
    store: &Store,
    ak: &derive::Secret32,
    facts: &Facts,
) -> Result<(Option<String>, u64, BTreeSet<String>), Failure> {
    let expected = &facts.expected;
    let mut faults: Vec<String> = Vec::new();
    let mut drifted = BTreeSet::new();
    let mut judged = 0u64;
    let assets = store.all_assets()?;
    for (name, (seq, ..)) in expected {
        if !assets.iter().any(|a| a.id.as_str() == name) {
            judged += 1;
            drifted.insert(name.clone());
            faults.push(format!(
                "asset {name:?}, created by record {seq}, is missing from the store (its rows were \
                 deleted; a retired asset's name would come back)"
            ));
        }
    }
    for a in assets {
        judged += 1;
        let name = a.id.as_str();
        if let Some(f) = reconcile_one(store, ak, facts, &a)? {
            drifted.insert(name.to_string());
            faults.push(f);
        }
    }
    Ok((faults.into_iter().next(), judged, drifted))
}

/// The first disagreement between one asset's rows and its records.
fn reconcile_one(
    store: &Store,
    ak: &derive::Secret32,
    facts: &Facts,
    a: &p11derive::store::Asset,
) -> Result<Option<String>, Failure> {
    let name = a.id.as_str();
    match facts.expected.get(name) {
        None => {
            return Ok(Some(format!(
                "asset {name:?} is in the store but no record created it (a forged asset?)"
            )))
        }
        Some((seq, state, current, min))
            if (a.state, a.current, a.min_usable) != (*state, *current, *min) =>
        {
            return Ok(Some(format!(
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
        let recorded = facts.resumes.get(name).copied().flatten();
        if recorded != Some(a.resumes_to) {
            return Ok(Some(format!(
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
        return Ok(Some(format!(
            "asset {name:?} version {}: its public key carries no valid MAC under the audit \
             key (the versions table was changed)",
            h.version
        )));
    }
    for f in facts.keys.get(name).into_iter().flatten() {
        if let (Some(v), Some(pk)) = (f.version, &f.pk) {
            let held = history
                .iter()
                .find(|h| h.version == v)
                .and_then(|h| h.public_key.as_deref());
            if key_digest(held) != *pk {
                return Ok(Some(format!(
                    "asset {name:?} version {v}: the public key in the store is not the one \
                     record {} registered (the versions table was changed)",
                    f.seq
                )));
            }
        }
        if let Some((id, kt)) = &f.created {
            if id.as_deref() != Some(hex(&a.object_id).as_str()) || kt != a.key_type.name() {
                return Ok(Some(format!(
                    "asset {name:?}: its CKA_ID or key type in the store differs from its \
                     creation record {} (the assets table was changed)",
                    f.seq
                )));
            }
        }
    }
    Ok(None)
}

/// What a verify run saw, pass or fail (`audit-verify.json`'s figures).
#[derive(Default)]
pub struct Tally {
    /// Main-chain records checked.
    pub records: u64,
    /// Lane records checked.
    pub lane_records: u64,
    /// The main chain's newest record when the run started.
    pub head_seq: u64,
    /// Faults found.
    pub faults: u64,
    /// State rows judged against the chain, and those that disagree.
    pub checked_rows: u64,
    pub drift_rows: u64,
}

/// The MAC as stored, as the chain's 32 bytes (one of another length reads
/// as zeros, which no record carries).
fn mac32(m: &[u8]) -> [u8; 32] {
    m.try_into().unwrap_or([0u8; 32])
}

/// The chain from `start` on (`None`: from record 1; a snapshot: after its
/// head, with its head's MAC), every lane from the snapshot's lane heads
/// on, the replay from its state, then the tables judged against it.
pub fn check_from(
    store: &Store,
    ak: &derive::Secret32,
    anchor: Option<Anchor>,
    start: Option<&Snapshot>,
    progress: &Progress,
    tally: &mut Tally,
) -> Result<Verified, Failure> {
    let bad = |m: String| Failure::Failed(format!("audit verify: FAILED: {m}"));
    if let Some(a) = &anchor {
        if let Err(e @ StoreError::Lineage(..)) = store.check_anchor(a) {
            return Err(bad(e.to_string()));
        }
    }
    let (mut chain, mut replay, after, lane_heads) = match start {
        None => (ChainCheck::default(), Replay::new(), i64::MIN, None),
        Some(s) => {
            let (Some(mac), Some(heads)) = (s.head_mac32(), s.lane_heads()) else {
                return Err(bad(format!(
                    "the checkpoint at record {} holds a malformed MAC",
                    s.head
                )));
            };
            (
                ChainCheck::resume(s.head, mac),
                Replay::from_snapshot(s),
                i64::try_from(s.head).unwrap_or(i64::MAX),
                Some(heads),
            )
        }
    };
    // Up to the newest record and lane row now: writers appending
    // meanwhile are not chased.
    let upto = store.audit_head()?.map_or(0, |h| h.0);
    let lanes_at = lanes_at_start(store)?;
    tally.head_seq = upto;
    let first = start.map_or(0, |s| s.head);
    progress.stage(
        "audit verify",
        upto.saturating_sub(first) + lanes_at.map_or(0, |l| l.1),
    );
    // Read once, in batches: the chain, the replay of the state, what the
    // assets' rows are reconciled with, the lane heads named, and the
    // replay of uses, with each lane record (read in batches by the state
    // change it was decided under) right after that change.
    let mut lane_fault: Option<String> = None;
    // Resumed, the lanes' records are judged as they are read lane by lane
    // (check_lanes), against the state as of each one's change: never the
    // rows before the lanes' heads.
    let mut by_change = lanes_at
        .filter(|_| start.is_none())
        .map(|(max, _)| store.lane_stream(LaneOrder::Change, max, i64::MIN))
        .into_iter()
        .flatten()
        .peekable();
    let mut replay_lanes = |before: u64, replay: &mut Replay, fault: &mut Option<String>| {
        while let Some(l) = by_change.next_if(|l| match l {
            Ok(l) => l.at.change < before,
            Err(_) => true,
        }) {
            match l {
                Ok(l) => replay.see_lane(l.at.lane, l.at.pos, &l.record),
                Err(e) => {
                    fault.get_or_insert(e.to_string());
                }
            }
        }
    };
    // Every row, whatever its seq: a row numbered 0 or below is a gap too.
    for row in store.chain_stream_from(after, upto) {
        let (r, m) = row.map_err(|e| bad(format!("an audit row is malformed: {e}")))?;
        chain.push(ak, &r, &mac32(&m)).map_err(|f| match f {
            ChainFault::Gap { expected, found } => bad(format!(
                "record {expected} is missing (the next record is {found}): records were deleted \
                 or inserted"
            )),
            ChainFault::BadMac { seq } => bad(format!(
                "record {seq} does not carry a valid MAC: it was changed, forged, reordered, or a \
                 record before it was removed"
            )),
        })?;
        tally.records += 1;
        progress.tick();
        replay_lanes(r.seq, &mut replay, &mut lane_fault);
        replay.see_main(&r);
        if r.event == Event::Checkpoint {
            met_checkpoint(store, &r, &mut replay).map_err(bad)?;
        }
    }
    replay_lanes(u64::MAX, &mut replay, &mut lane_fault);
    let (last_mac, count) = chain.head();
    if let Some((seq, mac)) = anchor.as_ref().map(|a| a.head).filter(|h| h.0 > 0) {
        let held = match seq <= count {
            true => store.audit_mac(seq)?,
            false => None,
        };
        match held {
            Some(m) if mac32(&m) == mac => {}
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
        let held = match seq <= count {
            true => store.audit_mac(seq)?,
            false => None,
        };
        if held.is_none_or(|m| mac32(&m) != mac) {
            return Err(bad(format!(
                "the backing HSM's anchor names state change record {seq}, which the store lacks \
                 (or holds with another MAC): a state change was removed"
            )));
        }
    }
    if let Some(e) = lane_fault {
        return Err(bad(format!("an audit lane row is malformed: {e}")));
    }
    let (lane_records, lanes, lane_ends) = check_lanes(
        store,
        ak,
        lanes_at.map(|l| l.0),
        lane_heads.as_deref(),
        &mut replay,
        progress,
        tally,
    )
    .map_err(bad)?;
    if let Some(m) = replay.facts.named_twice.take() {
        return Err(bad(m));
    }
    // Every fault found: the first disagreement between the tables and the
    // chain, each row whose seal fails, each use its place did not allow.
    let mut all = Vec::new();
    let facts = &replay.facts;
    let (first, judged, mut drifted) = reconcile(store, ak, facts)?;
    all.extend(first);
    let seals = store.seal_faults_named(ak, &facts.expected)?;
    drifted.extend(seals.iter().map(|(name, _)| name.clone()));
    all.extend(seals.into_iter().map(|(_, f)| f));
    let (subjects, subject_rows) = store.subject_faults_counted(ak)?;
    tally.checked_rows = judged + subject_rows as u64;
    // A request row may fail its seal and its verdicts both: one row, at
    // most every row checked.
    tally.drift_rows = (drifted.len() as u64 + subjects.len() as u64).min(tally.checked_rows);
    all.extend(subjects);
    let assets = facts.expected.len();
    all.extend(replay.faults().iter().cloned());
    tally.faults = all.len() as u64;
    match all.len() {
        0 => {}
        1 => return Err(bad(all.remove(0))),
        n => return Err(bad(format!("{n} faults:\n  {}", all.join("\n  ")))),
    }
    let snapshot = Snapshot {
        head: count,
        head_mac: hex(&last_mac),
        change: store.newest_change_upto(count)?,
        state: replay.state(),
        lanes: lane_ends,
    };
    Ok(Verified {
        records: count,
        last_mac: hex(&last_mac),
        lane_records,
        lanes,
        assets,
        anchor: anchor.map(|a| (a.head.0, a.change.0)),
        pending: store.pending_rows()?.len(),
        checked: tally.records,
        from: start.map(|s| s.head),
        snapshot,
    })
}

/// A checkpoint record met in the verified chain: the state digest it
/// commits to must be the replay's at that point (no state change comes
/// between its head and it); the lane heads its row holds (when the row is
/// there and matches the record) are named like a `lanes` record's.
fn met_checkpoint(store: &Store, r: &Record, replay: &mut Replay) -> Result<(), String> {
    if r.detail.starts_with(p11derive::store::PENDING_MARK) {
        return Ok(());
    }
    let Some(d) = parse_checkpoint_detail(&r.detail) else {
        return Err(format!(
            "record {} is a checkpoint whose detail is not a checkpoint's",
            r.seq
        ));
    };
    if state_digest(&replay.state()) != d.state {
        return Err(format!(
            "record {} (a checkpoint at record {}) commits to a state digest {} but the replay \
             of the chain up to it gives another: a state change before it was altered, or the \
             checkpoint was written from a state the chain does not hold",
            r.seq,
            d.head,
            &hex(&d.state)[..16]
        ));
    }
    if let Some(s) = crate::checkpoint_cmd::row_snapshot(store, r.seq, &d) {
        replay
            .facts
            .name_lanes(r.seq, s.lane_heads().into_iter().flatten());
    }
    Ok(())
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
    /// Main-chain records this run checked (after `from`, if resumed).
    pub checked: u64,
    /// The checkpoint head the run resumed after (`None`: from record 1).
    pub from: Option<u64>,
    /// The replay state at the end (what a checkpoint of this run holds).
    pub snapshot: Snapshot,
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
            "checked_records": self.checked,
            "from_head": self.from,
        })
    }

    pub fn text(&self) -> String {
        let records = match self.from {
            None => format!("{} records", self.records),
            Some(h) => format!(
                "{} new records (after the checkpoint's head, record {h}: records 1..={h} were \
                 verified when it was written)",
                self.checked
            ),
        };
        format!(
            "{} chained under the HSM-derived audit key (last MAC {}){}, {} assets \
             reconciled{}{}",
            records,
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
/// newest (read lane by lane in batches, up to the newest lane row when the
/// run started, `max_id`), and every lane head a `lanes` record of the
/// (verified) main chain names (`named`) is still there with its MAC.
/// Returns (lane records, lanes).
fn check_lanes(
    store: &Store,
    ak: &derive::Secret32,
    max_id: Option<i64>,
    start: Option<&[(u64, u64, [u8; 32])]>,
    replay: &mut Replay,
    progress: &Progress,
    tally: &mut Tally,
) -> Result<(usize, usize, BTreeMap<u64, LaneHead>), String> {
    let named = replay.facts.named.clone();
    let wanted: BTreeSet<(u64, u64)> = named.iter().map(|(l, n)| (*l, n.1)).collect();
    let mut heads: BTreeMap<(u64, u64), [u8; 32]> = BTreeMap::new();
    let (mut n_records, mut n_lanes) = (0usize, 0usize);
    // Each lane's newest record checked (a resumed lane's head if none).
    let mut ends: BTreeMap<u64, LaneHead> = BTreeMap::new();
    let mut lane: Option<LaneCheck> = None;
    let mut id = 0;
    // Resumed: each lane after its head at the checkpoint, chained from it.
    let resumed: BTreeMap<u64, (u64, [u8; 32])> = start
        .into_iter()
        .flatten()
        .map(|(l, p, m)| (*l, (*p, *m)))
        .collect();
    for (l, (p, m)) in &resumed {
        if wanted.contains(&(*l, *p)) {
            heads.insert((*l, *p), *m);
        }
        ends.insert(
            *l,
            LaneHead {
                pos: *p,
                mac: hex(m),
            },
        );
    }
    let rows: Box<dyn Iterator<Item = _>> = match (max_id, start) {
        (None, _) => Box::new(std::iter::empty()),
        (Some(max), None) => Box::new(store.lane_stream(LaneOrder::Place, max, i64::MIN)),
        (Some(max), Some(_)) => Box::new(
            store.lane_stream_resumed(max, resumed.iter().map(|(l, (p, _))| (*l, *p)).collect()),
        ),
    };
    for row in rows {
        let l = row.map_err(|e| format!("an audit lane row is malformed: {e}"))?;
        if lane.is_none() || id != l.at.lane {
            id = l.at.lane;
            n_lanes += 1;
            lane = Some(match resumed.get(&id) {
                Some((p, m)) => LaneCheck::resume(id, *p, *m),
                None => LaneCheck::new(id),
            });
        }
        let mac = mac32(&l.mac);
        if let Some(check) = lane.as_mut() {
            check
                .push(ak, &l.at, &l.record, &mac)
                .map_err(|f| match f {
                    ChainFault::Gap { expected, found } => format!(
                        "record {expected} of audit lane {id} is missing (the next one there is \
                         {found}): records were deleted from the lane"
                    ),
                    ChainFault::BadMac { seq } => format!(
                        "record {seq} of audit lane {id} does not carry a valid MAC: it was \
                         changed, forged, moved, or a record before it in the lane was removed"
                    ),
                })?;
        }
        if wanted.contains(&(id, l.at.pos)) {
            heads.insert((id, l.at.pos), mac);
        }
        if start.is_some() {
            replay.see_lane_decided(id, l.at.pos, l.at.change, &l.record);
        }
        ends.insert(
            id,
            LaneHead {
                pos: l.at.pos,
                mac: hex(&mac),
            },
        );
        n_records += 1;
        tally.lane_records += 1;
        progress.tick();
    }
    for (lane, (seq, pos, mac)) in &named {
        // Below a resumed lane's head: verified when the checkpoint was.
        if resumed.get(lane).is_some_and(|(p, _)| pos < p) {
            continue;
        }
        if heads.get(&(*lane, *pos)) != Some(mac) {
            return Err(format!(
                "record {seq} names record {pos} of audit lane {lane} as that lane's head, but the \
                 store lacks it (or holds it with another MAC): records were deleted from the \
                 lane, or an older copy of the store was restored"
            ));
        }
    }
    Ok((n_records, n_lanes, ends))
}
