//! `p11derive audit archive --before TIME --to FILE` and `audit verify
//! --with-archives FILE...`: the older part of the log moved to segment
//! files, with proof of continuity.
//!
//! An archive writes the records between two verified checkpoints to a
//! segment (streamed), syncs it, renames it into place, reads it back and
//! verifies it alone, and only then, in one write transaction, appends the
//! archive record naming it (range, end checkpoint, SHA-256, file name),
//! inserts that record's `audit_archive` row and removes the range's rows
//! but the pins. Killed at any step before the commit, nothing was removed
//! and a re-run archives afresh; after it, the segment is whole and named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use p11derive::audit::{ChainCheck, ChainFault, Event, LaneCheck, LanePlace, Record, GENESIS};
use p11derive::checkpoint::{parse_checkpoint_detail, Snapshot};
use p11derive::store::{
    hex, parse_archive_detail, unhex32, ArchiveDetail, LaneOrder, Prune, Store,
};
use serde_json::{json, Value};

use crate::args::Cli;
use crate::common::{failed, load_config, open_store, with_key, Failure};
use crate::progress::Progress;
use crate::replay::Replay;
use crate::segment::{parse_record, record_line, Item, Reader, Writer};
use crate::users::Want;
use p11derive::access::Action;

/// The steps `P11DERIVE_TEST_CRASH_AT` may name (a test hook: the process
/// aborts there, as a kill would stop it).
pub const CRASH_STEPS: [&str; 7] = [
    "written",
    "synced",
    "renamed",
    "verified",
    "transaction",
    "pruning",
    "committed",
];

/// Aborts the process when the test hook names `step`.
fn crash_at(step: &str) {
    debug_assert!(CRASH_STEPS.contains(&step));
    if std::env::var("P11DERIVE_TEST_CRASH_AT").as_deref() == Ok(step) {
        std::process::abort();
    }
}

/// A verified checkpoint: its record (MAC checked against `prev_mac`), and
/// its snapshot, whose digests are the ones the record names.
#[derive(Clone)]
pub struct Checkpoint {
    pub record: Record,
    pub mac: [u8; 32],
    pub prev_mac: [u8; 32],
    pub snapshot: Snapshot,
}

impl Checkpoint {
    /// Checks a checkpoint's parts; the error says what does not hold.
    fn verify(
        ak: &p11derive::types::Secret32,
        record: Record,
        mac: [u8; 32],
        prev_mac: [u8; 32],
        snapshot: Snapshot,
    ) -> Result<Checkpoint, String> {
        let seq = record.seq;
        if record.event != Event::Checkpoint {
            return Err(format!("record {seq} is not a checkpoint record"));
        }
        if record.mac(ak, &prev_mac) != mac {
            return Err(format!(
                "checkpoint record {seq} does not carry a valid MAC under the audit key"
            ));
        }
        let d = parse_checkpoint_detail(&record.detail)
            .ok_or_else(|| format!("checkpoint record {seq}'s detail is not readable"))?;
        if snapshot.detail() != d {
            return Err(format!(
                "checkpoint record {seq}'s snapshot does not match the digests its record names \
                 (the snapshot was altered)"
            ));
        }
        Ok(Checkpoint {
            record,
            mac,
            prev_mac,
            snapshot,
        })
    }

    fn json(&self) -> Value {
        json!({
            "record": record_line(&self.record, &self.mac),
            "prev_mac": hex(&self.prev_mac),
            "snapshot": serde_json::to_value(&self.snapshot).unwrap_or(Value::Null),
        })
    }

    fn from_json(ak: &p11derive::types::Secret32, v: &Value) -> Result<Checkpoint, String> {
        let (mut record, mac) = parse_record(v.get("record").unwrap_or(&Value::Null))?;
        record.seq = v["record"]["seq"]
            .as_u64()
            .ok_or("a checkpoint without seq")?;
        let prev_mac = v
            .get("prev_mac")
            .and_then(Value::as_str)
            .and_then(unhex32)
            .ok_or("a checkpoint without prev_mac")?;
        let snapshot: Snapshot = serde_json::from_value(v["snapshot"].clone())
            .map_err(|e| format!("a checkpoint's snapshot is not readable: {e}"))?;
        Checkpoint::verify(ak, record, mac, prev_mac, snapshot)
    }

    fn head(&self) -> u64 {
        self.snapshot.head
    }
}

/// The checkpoint row `seq` of the store, verified.
fn stored_checkpoint(
    store: &Store,
    ak: &p11derive::types::Secret32,
    seq: u64,
) -> Result<Checkpoint, String> {
    let row = store
        .checkpoint_at(seq)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("checkpoint {seq} has no audit_checkpoint row"))?;
    let rec = store
        .chain_stream_from(seq as i64 - 1, seq)
        .next()
        .transpose()
        .map_err(|e| e.to_string())?
        .filter(|(r, _)| r.seq == seq)
        .ok_or_else(|| format!("checkpoint record {seq} is not in the store"))?;
    let prev = <[u8; 32]>::try_from(row.prev_mac.as_slice()).unwrap_or([0; 32]);
    let mac = <[u8; 32]>::try_from(rec.1.as_slice()).unwrap_or([0; 32]);
    let snapshot = Snapshot::from_bytes(&row.snapshot)?;
    Checkpoint::verify(ak, rec.0, mac, prev, snapshot)
}

/// The store's archive records, each verified (its MAC against its row's
/// `prev_mac`); a row without a valid record is an error naming it.
fn verified_archives(
    store: &Store,
    ak: &p11derive::types::Secret32,
) -> Result<Vec<(u64, ArchiveDetail)>, String> {
    let mut out = Vec::new();
    for row in store.archive_rows().map_err(|e| e.to_string())? {
        match store
            .verified_archive_row(ak, &row)
            .map_err(|e| e.to_string())?
        {
            Some(d) => out.push((row.seq, d)),
            None => {
                return Err(format!(
                    "audit_archive row {} has no valid archive record (record {} is missing, \
                     altered or forged): the row was not written by `audit archive`",
                    row.seq, row.seq
                ))
            }
        }
    }
    Ok(out)
}

/// What one segment, verified alone, holds.
pub struct Segment {
    pub path: PathBuf,
    pub store: String,
    pub first: u64,
    pub last: u64,
    pub start: Option<Checkpoint>,
    pub end: Checkpoint,
    pub sha256: [u8; 32],
    /// The archive records met in the segment's main records.
    pub archives: Vec<(u64, ArchiveDetail)>,
}

fn chain_fault(path: &Path, f: ChainFault) -> String {
    match f {
        ChainFault::Gap { expected, found } => format!(
            "segment {}: record {expected} is missing (the next one is {found})",
            path.display()
        ),
        ChainFault::BadMac { seq } => format!(
            "segment {}: record {seq} does not carry a valid MAC (it was altered, or a record \
             before it removed)",
            path.display()
        ),
    }
}

/// Verifies a segment alone: its trailer hash, its checkpoints, the chain
/// from the start checkpoint's head to the end's, each lane from the
/// start's head to the end's, and the replay from the start snapshot, whose
/// state digest must be the end checkpoint's `state=`.
/// With `store`: every row the store still holds in the segment's range
/// (the pins) must be the segment's record, MAC and all.
pub fn verify_segment(
    ak: &p11derive::types::Secret32,
    path: &Path,
    store: Option<&Store>,
    progress: &Progress,
) -> Result<Segment, String> {
    let mut rd = Reader::open(path)?;
    let bad = |m: String| format!("segment {}: {m}", path.display());
    let h = rd.header.clone();
    let start = match &h["start"] {
        Value::Null => None,
        v => Some(Checkpoint::from_json(ak, v).map_err(bad)?),
    };
    let end = Checkpoint::from_json(ak, &h["end"]).map_err(bad)?;
    let (first, last) = (
        h["first"].as_u64().unwrap_or(0),
        h["last"].as_u64().unwrap_or(0),
    );
    let from = start.as_ref().map_or(0, Checkpoint::head);
    if first != from + 1 || last != end.head() || last < first {
        return Err(bad(format!(
            "its header says records {first}..={last}, but its checkpoints bound records {}..={}",
            from + 1,
            end.head()
        )));
    }
    let mut chain = match &start {
        None => ChainCheck::default(),
        Some(s) => ChainCheck::resume(
            s.head(),
            s.snapshot
                .head_mac32()
                .ok_or_else(|| bad("bad head MAC".into()))?,
        ),
    };
    // The lanes' records come after the main chain's: each use is judged
    // against the state as of the change it was decided under.
    let mut replay = start.as_ref().map_or_else(Replay::new_lanes_after, |s| {
        Replay::from_snapshot(&s.snapshot)
    });
    let mut pinned = store.map(|st| st.chain_stream_from(from as i64, last).peekable());
    let mut lanes: BTreeMap<u64, LaneCheck> = BTreeMap::new();
    let start_lanes: BTreeMap<u64, (u64, [u8; 32])> = start
        .as_ref()
        .and_then(|s| s.snapshot.lane_heads())
        .unwrap_or_default()
        .into_iter()
        .map(|(l, p, m)| (l, (p, m)))
        .collect();
    let mut archives = Vec::new();
    while let Some(item) = rd.next_item()? {
        progress.tick();
        match item {
            Item::Main(r, mac) => {
                chain.push(ak, &r, &mac).map_err(|f| chain_fault(path, f))?;
                if let Some(rows) = pinned.as_mut() {
                    while let Some(row) =
                        rows.next_if(|x| x.as_ref().map_or(true, |(p, _)| p.seq <= r.seq))
                    {
                        let (p, pmac) = row.map_err(|e| bad(e.to_string()))?;
                        if p.seq == r.seq && (p != r || pmac.as_slice() != mac.as_slice()) {
                            return Err(bad(format!(
                                "record {} the store holds (a pin of the archive) is not the \
                                 one the segment holds: the store's row was altered after the \
                                 archive, or the segment is not this store's",
                                r.seq
                            )));
                        }
                    }
                }
                if r.event == Event::Archive {
                    if let Some(d) = parse_archive_detail(&r.detail) {
                        archives.push((r.seq, d));
                    }
                }
                replay.see_main(&r);
            }
            Item::Lane(at, r, mac) => {
                let check =
                    lanes
                        .entry(at.lane)
                        .or_insert_with(|| match start_lanes.get(&at.lane) {
                            Some((p, m)) => LaneCheck::resume(at.lane, *p, *m),
                            None => LaneCheck::new(at.lane),
                        });
                check
                    .push(ak, &at, &r, &mac)
                    .map_err(|f| bad(format!("lane {}: {}", at.lane, chain_fault(path, f))))?;
                replay.see_lane_decided(at.lane, at.pos, at.change, &r);
            }
        }
    }
    let sha256 = rd.finish()?;
    let (mac, n) = chain.head();
    if n != last || Some(mac) != end.snapshot.head_mac32() {
        return Err(bad(format!(
            "its records end at {n}, not at the end checkpoint's head {last} with its MAC (records \
             were removed from the file)"
        )));
    }
    for (lane, (pos, m)) in end
        .snapshot
        .lane_heads()
        .unwrap_or_default()
        .into_iter()
        .map(|(l, p, m)| (l, (p, m)))
    {
        let reached = match lanes.get(&lane) {
            Some(c) => c.head(),
            None => start_lanes
                .get(&lane)
                .map_or((GENESIS, 0), |(p, m)| (*m, *p)),
        };
        if reached != (m, pos) {
            return Err(bad(format!(
                "lane {lane} does not reach the end checkpoint's head {pos} with its MAC"
            )));
        }
    }
    let digest = p11derive::checkpoint::state_digest(&replay.state());
    let named = parse_checkpoint_detail(&end.record.detail).map(|d| d.state);
    if named != Some(digest) {
        return Err(bad(format!(
            "the state replayed from its start to record {last} is not the one end checkpoint \
             record {} names",
            end.record.seq
        )));
    }
    if let Some(f) = replay.faults().first() {
        return Err(bad(f.clone()));
    }
    Ok(Segment {
        path: path.to_path_buf(),
        store: h["store"].as_str().unwrap_or("").to_string(),
        first,
        last,
        start,
        end,
        sha256,
        archives,
    })
}

/// Of a segment verified in `--with-archives`, what is kept once it passed
/// (not its snapshots).
struct Seen {
    path: PathBuf,
    first: u64,
    last: u64,
    sha256: [u8; 32],
    /// The end checkpoint's record and MAC.
    end: (u64, [u8; 32]),
}

/// The records a segment's header says it holds (main and lanes), for the
/// progress bar; 0 when it does not say.
fn segment_items(h: &Value) -> u64 {
    let (first, last) = (
        h["first"].as_u64().unwrap_or(1),
        h["last"].as_u64().unwrap_or(0),
    );
    let pos = |c: &Value, lane: &str| c["snapshot"]["lanes"][lane]["pos"].as_u64().unwrap_or(0);
    let lanes: u64 = h["end"]["snapshot"]["lanes"]
        .as_object()
        .map(|m| {
            m.keys()
                .map(|l| pos(&h["end"], l).saturating_sub(pos(&h["start"], l)))
                .sum()
        })
        .unwrap_or(0);
    (last + 1).saturating_sub(first) + lanes
}

/// Syncs a directory (the rename of a file in it made durable).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The SHA-256 of the whole file at `path` (what `sha256sum` prints).
fn file_sha256(path: &Path) -> std::io::Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

/// `--to` names a file that is there: after a crash it may be the segment
/// of an archive that committed (then the only copy of its records) or one
/// that never did. Says which, by its hash among the verified archive
/// records `done`.
fn existing_to(to: &Path, done: &[(u64, ArchiveDetail)]) -> Failure {
    let sha = match file_sha256(to) {
        Ok(h) => h,
        Err(e) => {
            return Failure::Usage(format!(
                "{} exists and cannot be read ({e}): an archive never overwrites a file. Name \
                 a new file with --to",
                to.display()
            ))
        }
    };
    match done.iter().find(|(_, d)| d.sha256 == sha) {
        Some((seq, d)) => Failure::Usage(format!(
            "{} exists and is already archived as record {seq}: keep this file, it is the only \
             copy of records {}..={} (sha256 {}). To archive more, name a new file with --to",
            to.display(),
            d.first,
            d.last,
            hex(&sha)
        )),
        None => Failure::Usage(format!(
            "{} exists, but no archive record of this store names it (sha256 {}): it was never \
             archived (a segment left by an archive that did not commit, or another file). It \
             may be removed; or name a new file with --to",
            to.display(),
            hex(&sha)
        )),
    }
}

pub fn archive(cli: &Cli, before: &str, to: &Path) -> Result<(), Failure> {
    let cut_s = p11derive::access::parse_time(before).map_err(Failure::Usage)?;
    let cut_ns = u64::try_from(cut_s)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000);
    let existing = to.exists();
    let config = load_config(cli)?;
    let store = open_store(&config)?;
    let want = Want::to(Action::ManagePolicy);
    with_key(cli, &store, &config, want, |store, backend, ak, caller| {
        let refuse = |m: String| Failure::Failed(format!("audit archive: REFUSED: {m}"));
        let done = verified_archives(store, ak).map_err(refuse)?;
        if existing {
            return Err(existing_to(to, &done));
        }
        let anchor = backend.read_anchor().map_err(failed)?;
        let prev = done.last().map(|(_, d)| d.clone());
        let start = match &prev {
            None => None,
            Some(d) => Some(stored_checkpoint(store, ak, d.end_checkpoint).map_err(refuse)?),
        };
        let past = start.as_ref().map_or(0, Checkpoint::head);
        // The newest checkpoint recorded before the cut that verifies and
        // lies past the previous archive's end.
        let mut end = None;
        let mut below = i64::MAX;
        'rows: loop {
            let rows = store.checkpoints_newest(below, 64)?;
            let Some(oldest) = rows.last() else { break };
            below = oldest.seq as i64;
            for row in rows {
                let Ok(c) = stored_checkpoint(store, ak, row.seq) else {
                    continue;
                };
                if c.head() <= past {
                    break 'rows;
                }
                if c.record.time_ns < cut_ns {
                    end = Some(c);
                    break 'rows;
                }
            }
        }
        let Some(end) = end else {
            return Err(refuse(format!(
                "no verified checkpoint was recorded before {before} past record {past} (the \
                 previous archive's end): run `p11derive audit checkpoint`, then archive with a \
                 --before after it"
            )));
        };
        let (first, last) = (past + 1, end.head());
        let last_time = store
            .chain_stream_from(last as i64 - 1, last)
            .next()
            .transpose()?
            .map_or(0, |(r, _)| r.time_ns);
        // A rate limit counts the records of its window: none of them may go.
        let now_ns = p11derive::audit::now_ns();
        let policies = match config.users.enabled {
            true => store.active_policies()?,
            false => Default::default(),
        };
        for p in policies.iter() {
            for rate in [p.asset_rate, p.user_rate].into_iter().flatten() {
                let reach = now_ns.saturating_sub(u64::from(rate.window_secs) * 1_000_000_000);
                if reach <= last_time {
                    return Err(refuse(format!(
                        "policy {} limits uses to {rate}, a window reaching back before record \
                         {last} (the archive's end): archiving would remove records the limit \
                         counts. Archive with an earlier --before, or after the window has passed",
                        p.pattern
                    )));
                }
            }
        }
        let store_id = store.store_id()?.map(|i| hex(&i)).unwrap_or_default();
        let dir = match to.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(".{}.partial-{}", file_name(to), std::process::id()));
        let lanes_at = store.lane_extent()?;
        let n_lanes: u64 = end
            .snapshot
            .lanes
            .iter()
            .map(|(l, h)| {
                let from = start
                    .as_ref()
                    .and_then(|s| s.snapshot.lanes.get(l))
                    .map_or(0, |s| s.pos);
                h.pos.saturating_sub(from)
            })
            .sum();
        let progress = Progress::new(cli, "audit archive: writing", 0);
        progress.stage("audit archive: writing", last - past + n_lanes);
        let io = |e: std::io::Error| refuse(format!("{}: {e}", tmp.display()));
        let mut w = Writer::create(&tmp).map_err(io)?;
        w.header(&json!({
            "format": crate::segment::FORMAT,
            "version": crate::segment::VERSION,
            "store": store_id,
            "first": first,
            "last": last,
            "start": start.as_ref().map(Checkpoint::json),
            "end": end.json(),
        }))
        .map_err(io)?;
        for row in store.chain_stream_from(past as i64, last) {
            let (r, mac) = row?;
            w.main(&r, &mac).map_err(io)?;
            progress.tick();
        }
        if let Some((max, _)) = lanes_at {
            for row in store.lane_stream(LaneOrder::Place, max, i64::MIN) {
                let l = row?;
                let Some(h) = end.snapshot.lanes.get(&l.at.lane) else {
                    continue;
                };
                let from = start
                    .as_ref()
                    .and_then(|s| s.snapshot.lanes.get(&l.at.lane))
                    .map_or(0, |s| s.pos);
                if l.at.pos > from && l.at.pos <= h.pos {
                    let at = LanePlace { ..l.at };
                    w.lane(&at, &l.record, &l.mac).map_err(io)?;
                    progress.tick();
                }
            }
        }
        let (file, _) = w.finish().map_err(io)?;
        crash_at("written");
        file.sync_all().map_err(io)?;
        drop(file);
        crash_at("synced");
        // A hard link never replaces an existing file (unlike a rename).
        if let Err(e) = std::fs::hard_link(&tmp, to) {
            let _ = std::fs::remove_file(&tmp);
            return Err(refuse(match e.kind() {
                std::io::ErrorKind::AlreadyExists => format!(
                    "{} appeared while the segment was written: nothing was archived. Name a \
                     new file with --to",
                    to.display()
                ),
                _ => format!(
                    "{} cannot be put in place ({e}): nothing was archived",
                    to.display()
                ),
            }));
        }
        std::fs::remove_file(&tmp).map_err(io)?;
        sync_dir(&dir).map_err(io)?;
        crash_at("renamed");
        progress.finish();
        // Read back: only a segment that verifies alone lets rows go.
        let reading = Progress::new(cli, "audit archive: reading back", 0);
        reading.stage("audit archive: reading back", last - past + n_lanes);
        let seg = verify_segment(ak, to, None, &reading);
        reading.finish();
        let seg = seg.map_err(|m| {
            refuse(format!(
                "the segment written does not verify ({m}); nothing was removed from the store"
            ))
        })?;
        if seg.first != first || seg.last != last || seg.store != store_id {
            return Err(refuse(format!(
                "the segment {} read back is not the range written; nothing was removed",
                to.display()
            )));
        }
        crash_at("verified");
        let detail = ArchiveDetail {
            first,
            last,
            end_checkpoint: end.record.seq,
            sha256: seg.sha256,
            file: file_name(to),
        };
        let mut keep = Vec::new();
        if let Some(a) = &anchor {
            keep.extend([a.head.0, a.change.0]);
        }
        let prune = Prune {
            first,
            last,
            keep,
            anchored: anchor.as_ref().map(|a| a.head.0),
            lanes: end
                .snapshot
                .lanes
                .iter()
                .map(|(l, h)| (*l, h.pos))
                .collect(),
        };
        let actor = caller.map(|c| c.name.as_str());
        let record = Record::new(Event::Archive, 0)
            .actor(actor)
            .detail(detail.to_string());
        let deleting = Progress::new(cli, "audit archive: removing", 0);
        deleting.stage("audit archive: removing", last - past);
        let seq = store.commit_archive(
            ak,
            record,
            &prune,
            &mut |n| {
                deleting.add(n);
                // After a batch of the prune committed, before the next.
                crash_at("pruning")
            },
            &mut || crash_at("transaction"),
        )?;
        deleting.finish();
        crash_at("committed");
        if cli.json {
            return crate::common::print_json(&json!({
                "archive_record": seq,
                "first": first,
                "last": last,
                "end_checkpoint": end.record.seq,
                "sha256": hex(&seg.sha256),
                "file": to.display().to_string(),
            }));
        }
        outln!(
            "audit archive: records {first}..={last} written to {} (sha256 {}), verified, and \
             removed from the store but the pins; archive record {seq} names the segment. Keep \
             the file: `p11derive audit verify --with-archives` needs every segment",
            to.display(),
            hex(&seg.sha256)
        );
        Ok(())
    })
}

/// `audit verify --with-archives FILE...`: the whole history across the
/// segments and the store.
pub fn verify_with_archives(cli: &Cli, files: &[PathBuf]) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let store = crate::common::open_store_read_only(&config)?;
    let want = Want::to(Action::ReadAudit).unanchored();
    with_key(cli, &store, &config, want, |store, backend, ak, _| {
        let bad = |m: String| Failure::Failed(format!("audit verify: FAILED: {m}"));
        let ours = store.store_id()?.map(|i| hex(&i)).unwrap_or_default();
        let progress = Progress::new(cli, "audit verify: segments", 0);
        let mut total = 0;
        for f in files {
            total += Reader::open(f)
                .map(|r| segment_items(&r.header))
                .unwrap_or(0);
        }
        progress.stage("audit verify: segments", total);
        // Each segment verified alone and chained to the one before (the
        // first from record 1); of each, only what the checks below need,
        // and the newest end snapshot (where the store's part starts).
        let mut segs: Vec<Seen> = Vec::new();
        let mut start: Option<Snapshot> = None;
        let mut met: BTreeMap<u64, ArchiveDetail> = BTreeMap::new();
        for f in files {
            let s = verify_segment(ak, f, Some(store), &progress).map_err(bad)?;
            if s.store != ours {
                return Err(bad(format!(
                    "segment {} is of store {}, not of this store {ours}",
                    s.path.display(),
                    s.store
                )));
            }
            let after = segs.last();
            let chained = match (after, &s.start) {
                (None, None) => s.first == 1,
                (Some(p), Some(st)) => p.end == (st.record.seq, st.mac),
                _ => false,
            };
            if !chained {
                return Err(bad(format!(
                    "segment {} (records {}..={}) does not follow {}: the segments are out of \
                     order, or one is missing before it. Give them oldest first",
                    s.path.display(),
                    s.first,
                    s.last,
                    match after {
                        None => "the start of the log (record 1)".to_string(),
                        Some(p) => format!("segment {}", p.path.display()),
                    }
                )));
            }
            met.extend(s.archives);
            segs.push(Seen {
                path: s.path,
                first: s.first,
                last: s.last,
                sha256: s.sha256,
                end: (s.end.record.seq, s.end.mac),
            });
            start = Some(s.end.snapshot);
        }
        progress.finish();
        // Every archive record met names a given segment, in order; every
        // given segment is named.
        met.extend(verified_archives(store, ak).map_err(bad)?);
        for (k, (seq, d)) in met.iter().enumerate() {
            let given = segs.iter().position(|s| s.sha256 == d.sha256);
            match given {
                None => {
                    return Err(bad(format!(
                        "archive record {seq} names segment {} (records {}..={}, sha256 {}), \
                         which was not given (missing, or altered): give every segment",
                        d.file,
                        d.first,
                        d.last,
                        hex(&d.sha256)
                    )))
                }
                Some(i) if i != k => {
                    return Err(bad(format!(
                        "segment {} is given in place {} but archive record {seq} names it as \
                         archive {}: give the segments oldest first",
                        segs[i].path.display(),
                        i + 1,
                        k + 1
                    )))
                }
                Some(i) if file_name(&segs[i].path) != d.file => {
                    return Err(bad(format!(
                        "segment {} is the one archive record {seq} names as {} (records \
                         {}..={}): it was renamed. Give it under its name",
                        segs[i].path.display(),
                        d.file,
                        d.first,
                        d.last
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(s) = segs.get(met.len()) {
            return Err(bad(format!(
                "segment {} (records {}..={}, sha256 {}) is named by no archive record: it is \
                 not one this store archived, or it was altered",
                s.path.display(),
                s.first,
                s.last,
                hex(&s.sha256)
            )));
        }
        // The store's own row of the last end checkpoint (what a plain or
        // --from-checkpoint verify starts from) must verify and hold the
        // segment's snapshot.
        if let (Some(last), Some(snap)) = (segs.last(), start.as_ref()) {
            let seq = last.end.0;
            let row = store.checkpoint_at(seq)?.ok_or_else(|| {
                bad(format!(
                    "checkpoint record {seq}, which ends segment {}, has no audit_checkpoint row \
                     in the store (it was deleted)",
                    last.path.display()
                ))
            })?;
            let held = store.verify_checkpoint(ak, &row).map_err(bad)?;
            if held != *snap {
                return Err(bad(format!(
                    "checkpoint record {seq}: the store's audit_checkpoint row holds another \
                     snapshot than segment {} (the row was changed)",
                    last.path.display()
                )));
            }
        }
        let anchor = backend.read_anchor().map_err(failed)?;
        let mut tally = crate::audit_cmd::Tally::default();
        let progress = Progress::new(cli, "audit verify", 0);
        let checked =
            crate::audit_cmd::check_from(store, ak, anchor, start.as_ref(), &progress, &mut tally);
        progress.finish();
        let v = checked?;
        let archived: u64 = segs.iter().map(|s| s.last - s.first + 1).sum();
        if cli.json {
            let mut j = v.json();
            j["segments"] = segs.len().into();
            j["archived_records"] = archived.into();
            return crate::common::print_json(&j);
        }
        outln!(
            "audit verify: OK: {} segment(s) with records 1..={archived} verified and chained; {}",
            segs.len(),
            v.text()
        );
        Ok(())
    })
}
