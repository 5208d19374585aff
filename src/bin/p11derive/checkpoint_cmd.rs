//! `p11derive audit checkpoint`, and where `audit verify` starts: the newest valid checkpoint (`--from-checkpoint`), the newest archive's end checkpoint, or record 1; the checkpoint a passing verify writes when the newest is older than `[audit] checkpoint_interval_s`.

use p11derive::audit::{Anchor, Event};
use p11derive::backend::Backend;
use p11derive::checkpoint::{lanes_digest, state_digest, CheckpointDetail, Snapshot};
use p11derive::config::Config;
use p11derive::derive;
use p11derive::store::{hex, Store, StoreError, CHECKPOINT_TRIES};

use crate::args::Cli;
use crate::audit_cmd::{check_from, Tally, Verified};
use crate::common::{failed, load_config, open_store, with_key, Failure};
use crate::progress::Progress;
use crate::users::Want;
use p11derive::access::Action;

/// Where a verify starts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From record 1.
    Full,
    /// After the newest checkpoint row that verifies (none: from record 1).
    FromCheckpoint,
    /// From the newest archive's end checkpoint when records were
    /// archived, else from record 1.
    Plain,
}

/// The start a verify resumes at: the checkpoint record and its snapshot,
/// and what to say of it.
#[derive(Default)]
pub struct Start {
    pub snapshot: Option<Snapshot>,
    pub checkpoint: Option<u64>,
    /// The archive record that must be met after it (plain verify).
    pub archive: Option<u64>,
    pub note: Option<String>,
}

fn fail(m: String) -> Failure {
    Failure::Failed(format!("audit verify: FAILED: {m}"))
}

/// The checkpoint row beside record `seq`, judged alone.
fn verified_row(store: &Store, ak: &derive::Secret32, seq: u64) -> Result<Snapshot, Failure> {
    let row = store.checkpoint_at(seq)?.ok_or_else(|| {
        fail(format!(
            "checkpoint record {seq} has no audit_checkpoint row (it was deleted)"
        ))
    })?;
    store.verify_checkpoint(ak, &row).map_err(fail)
}

/// Where a verify in `mode` starts.
pub fn start_point(store: &Store, ak: &derive::Secret32, mode: Mode) -> Result<Start, Failure> {
    match mode {
        Mode::Full => Ok(Start::default()),
        Mode::FromCheckpoint => {
            let Some(row) = store.checkpoints_newest(i64::MAX, 1)?.into_iter().next() else {
                return Ok(Start {
                    note: Some("no checkpoint yet: the whole log was verified".into()),
                    ..Start::default()
                });
            };
            let snapshot = store.verify_checkpoint(ak, &row).map_err(fail)?;
            Ok(Start {
                snapshot: Some(snapshot),
                checkpoint: Some(row.seq),
                ..Start::default()
            })
        }
        Mode::Plain => {
            let Some((archive, end)) = store.newest_archive()? else {
                return Ok(Start::default());
            };
            // The archive record itself must verify here (MAC, after this
            // store's record before it) and lie after the head the run
            // resumes from, so that the run checks it in the chain too: a
            // row and a record edited to name a later checkpoint would
            // otherwise skip the records between.
            let row = store
                .archive_rows()?
                .into_iter()
                .find(|r| r.seq == archive)
                .filter(|r| r.end_checkpoint == end);
            let verified = match &row {
                Some(r) => store.verified_archive_row(ak, r)?,
                None => None,
            };
            if verified.is_none() {
                return Err(fail(format!(
                    "the newest audit_archive row names archive record {archive} ending at \
                     checkpoint record {end}, but that record does not verify as this store's \
                     archive record: the row or the record was forged or changed"
                )));
            }
            let snapshot = verified_row(store, ak, end)?;
            let h = snapshot.head;
            if archive <= end {
                return Err(fail(format!(
                    "archive record {archive} does not come after its end checkpoint, record \
                     {end}: an archive record is written after the checkpoint that ends its \
                     segment, so the row or the record was changed"
                )));
            }
            Ok(Start {
                snapshot: Some(snapshot),
                checkpoint: Some(end),
                archive: Some(archive),
                note: Some(format!(
                    "records 1..={h} are archived (verify them with --with-archives)"
                )),
            })
        }
    }
}

/// A verify in `mode`: the start point, then [`check_from`] it; a plain
/// verify that started at an archive's end checkpoint must meet the
/// archive record naming it.
pub fn verify_in(
    store: &Store,
    ak: &derive::Secret32,
    anchor: Option<Anchor>,
    mode: Mode,
    progress: &Progress,
    tally: &mut Tally,
) -> Result<(Verified, Start), Failure> {
    let run = || -> Result<(Verified, Start), Failure> {
        let start = start_point(store, ak, mode)?;
        let v = check_from(store, ak, anchor, start.snapshot.as_ref(), progress, tally)?;
        if let (Some(seq), Some(end)) = (start.archive, start.checkpoint) {
            met_archive(store, seq, end, v.records)?;
        }
        Ok((v, start))
    };
    let checked = run().map_err(|f| archived_hint(store, f));
    if checked.is_err() {
        tally.faults = tally.faults.max(1);
    }
    checked
}

/// A failure of a run from record 1 on a store whose older records were
/// archived (a missing record 2.. is then expected): says so, naming the
/// archived range and the archive record, and what to run instead.
fn archived_hint(store: &Store, f: Failure) -> Failure {
    let Failure::Failed(m) = f else { return f };
    let newest = store.archive_rows().ok().and_then(|r| r.into_iter().last());
    match newest {
        Some(a) if m.contains("is missing") => Failure::Failed(format!(
            "{m}; records 1..={} are archived (archive record {}): use --with-archives",
            a.last, a.seq
        )),
        _ => Failure::Failed(m),
    }
}

/// The archive record `seq` (in the verified chain, up to `upto`) names
/// checkpoint `end`.
fn met_archive(store: &Store, seq: u64, end: u64, upto: u64) -> Result<(), Failure> {
    let row = match seq <= upto {
        true => store.chain_batch(Some(seq as i64 - 1), seq as i64, 1)?,
        false => Vec::new(),
    };
    let named = row.first().is_some_and(|(r, _)| {
        r.seq == seq
            && r.event == Event::Archive
            && r.detail
                .split(' ')
                .any(|w| w == format!("end_checkpoint={end}"))
    });
    if !named {
        return Err(fail(format!(
            "the newest audit_archive row names archive record {seq} ending at checkpoint \
             record {end}, but the verified chain holds no such archive record: the row was \
             forged or the record removed"
        )));
    }
    Ok(())
}

/// The snapshot of checkpoint record `seq` when its row is there, reads,
/// and matches the record's detail `d` (for the lane heads it names).
pub fn row_snapshot(store: &Store, seq: u64, d: &CheckpointDetail) -> Option<Snapshot> {
    let row = store.checkpoint_at(seq).ok()??;
    let s = Snapshot::from_bytes(&row.snapshot).ok()?;
    (s.detail() == *d).then_some(s)
}

/// Writes a checkpoint of what `v` verified on `store` (opened for
/// writing); when a state change landed meanwhile, verifies the new
/// records from `v`'s snapshot and tries again, a few times.
/// The rollback anchor then moves onto the checkpoint record.
fn write(
    store: &Store,
    backend: &Backend,
    ak: &derive::Secret32,
    anchor: Option<&Anchor>,
    v: Verified,
    actor: Option<&str>,
    progress: &Progress,
) -> Result<(u64, Snapshot), Failure> {
    let mut snapshot = v.snapshot;
    store.authenticate(ak, anchor)?;
    for _ in 0..CHECKPOINT_TRIES {
        match store.write_checkpoint(ak, &snapshot, actor) {
            Ok((seq, _)) => {
                p11derive::lifecycle::advance_anchor(store, backend, false).map_err(failed)?;
                return Ok((seq, snapshot));
            }
            Err(StoreError::Conflict(_)) => {
                let mut tally = Tally::default();
                let again = check_from(
                    store,
                    ak,
                    anchor.cloned(),
                    Some(&snapshot),
                    progress,
                    &mut tally,
                )?;
                snapshot = again.snapshot;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(failed(format!(
        "audit checkpoint: state changes kept landing while the checkpoint was verified ({} \
         tries): run it again in a quieter moment",
        CHECKPOINT_TRIES
    )))
}

/// The line (or JSON) `audit checkpoint` prints.
fn report(cli: &Cli, seq: u64, s: &Snapshot, checked: u64) -> Result<(), Failure> {
    let state = hex(&state_digest(&s.state));
    let lanes = hex(&lanes_digest(&s.lanes));
    if cli.json {
        return crate::common::print_json(&serde_json::json!({
            "checkpoint": seq,
            "head": s.head,
            "head_mac": s.head_mac,
            "change": s.change,
            "state_sha256": state,
            "lanes_sha256": lanes,
            "lanes": s.lanes.len(),
            "checked_records": checked,
        }));
    }
    outln!(
        "audit checkpoint: record {seq} commits to head {} (MAC {}), state change {}, state \
         {state}, {} lanes {lanes} ({checked} records verified for it)",
        s.head,
        &s.head_mac[..16.min(s.head_mac.len())],
        s.change,
        s.lanes.len()
    );
    Ok(())
}

/// `p11derive audit checkpoint [--full]`.
pub fn checkpoint(cli: &Cli, full: bool) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let store = open_store(&config)?;
    let want = Want::to(Action::ReadAudit).unanchored();
    with_key(cli, &store, &config, want, |store, backend, ak, caller| {
        let anchor = backend.read_anchor().map_err(failed)?;
        let mut tally = Tally::default();
        let progress = Progress::new(cli, "audit checkpoint", 0);
        let mode = if full {
            Mode::Full
        } else {
            Mode::FromCheckpoint
        };
        let checked = verify_in(store, ak, anchor.clone(), mode, &progress, &mut tally);
        let written = checked.and_then(|(v, _)| {
            let actor = caller.map(|c| c.name.as_str());
            write(store, backend, ak, anchor.as_ref(), v, actor, &progress)
        });
        progress.finish();
        let (seq, s) = written?;
        report(cli, seq, &s, tally.records)
    })
}

/// After a passing verify: a checkpoint when the newest one's record is
/// older than `[audit] checkpoint_interval_s` (or there is none), the store
/// opened for writing only then. One warning line when it cannot be.
pub fn auto(
    config: &Config,
    read: &Store,
    backend: &Backend,
    ak: &derive::Secret32,
    anchor: Option<&Anchor>,
    v: Verified,
    actor: Option<&str>,
) {
    let interval = config.audit.checkpoint_interval_s;
    if interval == 0 {
        return;
    }
    let due = || -> Result<bool, StoreError> {
        let Some(row) = read.checkpoints_newest(i64::MAX, 1)?.into_iter().next() else {
            return Ok(true);
        };
        let rec = read.chain_batch(Some(row.seq as i64 - 1), row.seq as i64, 1)?;
        let now = p11derive::audit::now_ns();
        Ok(rec.first().is_none_or(|(r, _)| {
            now.saturating_sub(r.time_ns) >= interval.saturating_mul(1_000_000_000)
        }))
    };
    match due() {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            eprintln!("p11derive: warning: no checkpoint written: {e}");
            return;
        }
    }
    let written = open_store(config)
        .and_then(|store| write(&store, backend, ak, anchor, v, actor, &Progress::hidden()));
    // Quiet when written: the record is in the log (`audit tail`).
    match written {
        Ok(_) => {}
        Err(e) => eprintln!(
            "p11derive: warning: no checkpoint written ([audit] checkpoint_interval_s = \
             {interval}): {}",
            e.message()
        ),
    }
}
