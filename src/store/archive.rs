//! Archived ranges of the audit chain (`audit archive`): the archive
//! record and its `audit_archive` row, the rows an archive removes (all
//! but the pins), and what a running process accepts as archived.
//!
//! An archive record (MACed under the audit key like any record) names the
//! main-chain range it removed. Its `audit_archive` row keeps the MAC of
//! the record before it (`prev_mac`), so the record verifies alone: only a
//! record that does proves that a range was archived, never the row alone.

use crate::audit::{Event, Record, GENESIS};
use crate::types::Secret32;

use super::db::{Tx, Val};
use super::{hex, Store, StoreError};

/// The events of operations (the records an archive may remove); every
/// other record is kept, with the record before it.
pub const OPERATION_EVENTS_SQL: &str = "('sign', 'verify', 'encrypt', 'decrypt', 'login', \
     'login-failed', 'refused', 'object-create', 'object-destroy')";

/// Main-chain numbers deleted per statement (PostgreSQL keeps each
/// statement's work and WAL small; SQLite does it in the same way).
pub const DELETE_BATCH: u64 = 20_000;

/// What an archive record's detail says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveDetail {
    pub first: u64,
    pub last: u64,
    pub end_checkpoint: u64,
    pub sha256: [u8; 32],
    pub file: String,
}

impl std::fmt::Display for ArchiveDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "archive records={}..={} end_checkpoint={} sha256={} file={}",
            self.first,
            self.last,
            self.end_checkpoint,
            hex(&self.sha256),
            self.file
        )
    }
}

/// An archive record's detail, parsed (`None`: not one).
pub fn parse_archive_detail(detail: &str) -> Option<ArchiveDetail> {
    let rest = detail.strip_prefix("archive records=")?;
    let (range, rest) = rest.split_once(" end_checkpoint=")?;
    let (first, last) = range.split_once("..=")?;
    let (end, rest) = rest.split_once(" sha256=")?;
    let (sha, file) = rest.split_once(" file=")?;
    Some(ArchiveDetail {
        first: first.parse().ok()?,
        last: last.parse().ok()?,
        end_checkpoint: end.parse().ok()?,
        sha256: super::unhex32(sha)?,
        file: file.to_string(),
    })
}

/// One `audit_archive` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRow {
    /// The archive record's number.
    pub seq: u64,
    pub first: u64,
    pub last: u64,
    pub end_checkpoint: u64,
    pub sha256: Vec<u8>,
    pub file: String,
    pub prev_mac: Vec<u8>,
}

/// What one archive removes: main-chain rows `first..=last` but the pins
/// (`keep`: the anchor's head and newest change at the time), and each
/// lane's rows below its head at the end checkpoint (and below the heads
/// the `lanes` records at and before the anchor's head `anchored` name).
pub struct Prune {
    pub first: u64,
    pub last: u64,
    pub keep: Vec<u64>,
    pub anchored: Option<u64>,
    pub lanes: Vec<(u64, u64)>,
}

/// An `audit_archive` row as the engine returns it.
fn read_archive_row(r: &super::db::Row) -> Result<ArchiveRow, String> {
    Ok(ArchiveRow {
        seq: r.int(0)?.max(0) as u64,
        first: r.int(1)?.max(0) as u64,
        last: r.int(2)?.max(0) as u64,
        end_checkpoint: r.int(3)?.max(0) as u64,
        sha256: r.blob(4)?,
        file: r.text(5)?,
        prev_mac: r.blob(6)?,
    })
}

/// Whether `e` says the `audit_archive` table does not exist (a store
/// before schema 13): SQLite's "no such table", PostgreSQL's "relation
/// ... does not exist" (42P01).
fn no_archive_table(e: &StoreError) -> bool {
    let text = e.to_string();
    text.contains("audit_archive")
        && (text.contains("no such table") || text.contains("does not exist"))
}

impl Store {
    /// [`Store::verified_archive`] for a caller outside the store.
    pub fn verified_archive_row(
        &self,
        ak: &Secret32,
        row: &ArchiveRow,
    ) -> Result<Option<ArchiveDetail>, StoreError> {
        let mut conn = self.lock();
        self.verified_archive(&mut **conn, ak, row)
    }

    /// Every `audit_archive` row, oldest first.
    pub fn archive_rows(&self) -> Result<Vec<ArchiveRow>, StoreError> {
        let mut conn = self.lock();
        self.archive_rows_in(&mut **conn)
    }

    fn archive_rows_in(&self, db: &mut dyn super::db::Db) -> Result<Vec<ArchiveRow>, StoreError> {
        self.rows(
            db,
            "SELECT seq, first_seq, last_seq, end_checkpoint, sha256, file, prev_mac \
             FROM audit_archive ORDER BY seq",
            &[],
            read_archive_row,
        )
    }

    /// The archive record a row names, read and checked: its MAC under
    /// `ak` chained from the row's `prev_mac`, and its detail saying what
    /// the row says. `None` for a row without such a record (forged).
    pub(super) fn verified_archive(
        &self,
        db: &mut dyn super::db::Db,
        ak: &Secret32,
        row: &ArchiveRow,
    ) -> Result<Option<ArchiveDetail>, StoreError> {
        let sql = format!(
            "SELECT {}, mac FROM audit WHERE seq = ?1",
            super::audit::AUDIT_COLUMNS
        );
        let found = self.rows(db, &sql, &[Val::Int(row.seq as i64)], |r| {
            Ok((super::audit::read_record(r, 0)?, r.blob(11)?))
        });
        // A row the engine cannot read as a record proves nothing.
        let Some((mut rec, mac)) = found.ok().and_then(|v| v.into_iter().next()) else {
            return Ok(None);
        };
        rec.seq = row.seq;
        let prev: [u8; 32] = match row.seq {
            1 => GENESIS,
            _ => match row.prev_mac.as_slice().try_into() {
                Ok(p) => p,
                Err(_) => return Ok(None),
            },
        };
        // The record before it is this store's (it is always kept: the
        // record before every kept one is): an archive record copied from
        // another store of the same root, at the same number, verifies
        // under its own `prev_mac` but not after this store's record.
        if row.seq > 1 && self.mac_at(db, row.seq - 1)?.as_deref() != Some(&prev[..]) {
            return Ok(None);
        }
        if rec.event != Event::Archive || rec.mac(ak, &prev)[..] != mac[..] {
            return Ok(None);
        }
        let Some(d) = parse_archive_detail(&rec.detail) else {
            return Ok(None);
        };
        let same = (d.first, d.last, d.end_checkpoint) == (row.first, row.last, row.end_checkpoint)
            && d.sha256[..] == row.sha256[..]
            && d.file == row.file;
        Ok(same.then_some(d))
    }

    /// The main-chain ranges verified archive records name (each record
    /// checked under the audit key this process holds; none without it).
    /// Verified ranges are kept in memory: a later call reads only the
    /// rows newer than the newest one verified (a record that verified
    /// once proves its range was archived, whatever happens to its row).
    pub(super) fn archived_ranges(
        &self,
        db: &mut dyn super::db::Db,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let (ak, known) = {
            let g = self.guard();
            (g.ak.clone(), g.archived.clone())
        };
        let Some(ak) = ak else {
            return Ok(Vec::new());
        };
        let (upto, mut out) = known.unwrap_or_default();
        let newer = self.rows(
            db,
            "SELECT seq, first_seq, last_seq, end_checkpoint, sha256, file, prev_mac \
             FROM audit_archive WHERE seq > ?1 ORDER BY seq",
            &[Val::Int(upto as i64)],
            read_archive_row,
        );
        let rows = match newer {
            Ok(rows) => rows,
            // Before schema 13 there is no such table: nothing was archived.
            // Any other failure is the engine's, and is said.
            Err(e) if no_archive_table(&e) => return Ok(out),
            Err(e) => return Err(e),
        };
        if rows.is_empty() {
            return Ok(out);
        }
        let mut seen = upto;
        for row in rows {
            // A row without a verifying record (forged) proves nothing;
            // it is read again next time, but never counts.
            if let Some(d) = self.verified_archive(db, &ak, &row)? {
                out.push((d.first, d.last));
                seen = seen.max(row.seq);
            }
        }
        self.guard().archived = Some((seen, out.clone()));
        Ok(out)
    }

    /// Whether record `seq` lies in a range a verified archive record names.
    pub(super) fn is_archived(
        &self,
        db: &mut dyn super::db::Db,
        seq: u64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .archived_ranges(db)?
            .iter()
            .any(|(f, l)| (*f..=*l).contains(&seq)))
    }

    /// Of the records `from+1..=head`, how many an archive removed may be
    /// missing: those in archived ranges (counted as expected absent) and
    /// how many rows those ranges still hold (the pins).
    pub(super) fn archived_between(
        &self,
        db: &mut dyn super::db::Db,
        from: u64,
        head: u64,
    ) -> Result<(u64, u64), StoreError> {
        let (mut span, mut held) = (0u64, 0u64);
        for (f, l) in self.archived_ranges(db)? {
            let (a, b) = (f.max(from + 1), l.min(head));
            if a > b {
                continue;
            }
            span += b - a + 1;
            let n = self
                .rows(
                    db,
                    "SELECT COUNT(*) FROM audit WHERE seq >= ?1 AND seq <= ?2",
                    &[Val::Int(a as i64), Val::Int(b as i64)],
                    |r| r.int(0),
                )?
                .into_iter()
                .next()
                .unwrap_or(0);
            held += n.max(0) as u64;
        }
        Ok((span, held))
    }

    /// Archives: first finishes the pruning of the newest earlier archive
    /// (a run stopped after its record committed leaves rows its range no
    /// longer needs); then, in ONE short write transaction, appends the
    /// archive record `r` (its detail an [`ArchiveDetail`]) and inserts
    /// its `audit_archive` row (`before_commit` runs last inside it); then
    /// removes what `prune` names in many short transactions, each of at
    /// most [`DELETE_BATCH`] main-chain numbers or lane positions, so
    /// writers wait at most one batch. `tick` is told of each batch of
    /// main-chain numbers done (after it committed). A stop at any point is
    /// safe: rows missing from a range a verified archive record names are
    /// expected, and the next archive finishes the pruning. Returns the
    /// archive record's number.
    pub fn commit_archive(
        &self,
        ak: &Secret32,
        r: Record,
        prune: &Prune,
        tick: &mut dyn FnMut(u64),
        before_commit: &mut dyn FnMut(),
    ) -> Result<u64, StoreError> {
        self.commit_archive_in(ak, r, prune, DELETE_BATCH, tick, before_commit)
    }

    fn commit_archive_in(
        &self,
        ak: &Secret32,
        mut r: Record,
        prune: &Prune,
        batch: u64,
        tick: &mut dyn FnMut(u64),
        before_commit: &mut dyn FnMut(),
    ) -> Result<u64, StoreError> {
        let d = parse_archive_detail(&r.detail).ok_or_else(|| {
            StoreError::Corrupt(self.path.clone(), "an archive record's detail".into())
        })?;
        // Each archive finishes the one before it before committing, so
        // only the newest earlier one can be unfinished.
        let earlier = {
            let mut conn = self.lock();
            let rows = self.archive_rows_in(&mut **conn)?;
            let mut newest = None;
            for row in rows.iter().rev() {
                if let Some(e) = self.verified_archive(&mut **conn, ak, row)? {
                    newest = Some(e);
                    break;
                }
            }
            newest
        };
        if let Some(e) = earlier {
            self.prune_main(e.first, e.last, &prune.keep, batch, &mut |_| {})?;
        }
        let (seq, lanes) = {
            let mut conn = self.lock();
            let mut tx = Tx::begin(&mut **conn)?;
            let head = self.append_in(&mut *tx, ak, std::slice::from_mut(&mut r))?;
            let prev_mac = match head.seq {
                1 => GENESIS.to_vec(),
                s => self.mac_at(&mut *tx, s - 1)?.ok_or_else(|| {
                    StoreError::Corrupt(
                        self.path.clone(),
                        format!("audit record {} is gone", s - 1),
                    )
                })?,
            };
            tx.execute(
                "INSERT INTO audit_archive (seq, first_seq, last_seq, end_checkpoint, sha256, \
                 file, prev_mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                &[
                    Val::Int(head.seq as i64),
                    Val::Int(d.first as i64),
                    Val::Int(d.last as i64),
                    Val::Int(d.end_checkpoint as i64),
                    Val::Blob(d.sha256.to_vec()),
                    Val::Text(d.file.clone()),
                    Val::Blob(prev_mac),
                ],
            )?;
            // How far each lane may be pruned, read under the writers'
            // lock: lane heads only move forward, so a later `lanes`
            // record names each lane at or past what is read here.
            let lanes = match prune.lanes.is_empty() {
                true => Vec::new(),
                false => {
                    let named = self.named_lane_heads(&mut *tx, ak, prune.anchored)?;
                    lane_limits(&prune.lanes, &named)
                }
            };
            before_commit();
            self.commit_at(tx, head)?;
            (head.seq, lanes)
        };
        self.prune_main(prune.first, prune.last, &prune.keep, batch, tick)?;
        for (lane, below) in lanes {
            self.prune_lane(lane, below, batch)?;
        }
        Ok(seq)
    }

    /// Each lane's position the `lanes` records a process checks name: the
    /// newest one (checked before each cover) and the newest at or before
    /// the anchor's head `anchored` (checked when the anchor moves); per
    /// lane the lower of the two. A lane neither names is absent.
    fn named_lane_heads(
        &self,
        db: &mut dyn super::db::Db,
        ak: &Secret32,
        anchored: Option<u64>,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut covers: Vec<u64> = Vec::new();
        covers.extend(self.cover_upto(db, u64::MAX)?);
        if let Some(h) = anchored.filter(|h| *h > 0) {
            covers.extend(self.cover_upto(db, h)?);
        }
        covers.sort_unstable();
        covers.dedup();
        let Some(newest) = covers.last().copied() else {
            return Ok(Vec::new());
        };
        let (_, _, heads) = self.cover_at(db, ak, newest)?;
        let mut named: Vec<(u64, u64)> = heads.into_iter().map(|(l, p, _)| (l, p)).collect();
        for older in covers.iter().filter(|c| **c != newest) {
            let (_, _, heads) = self.cover_at(db, ak, *older)?;
            for (l, p, _) in heads {
                if let Some(n) = named.iter_mut().find(|(nl, _)| *nl == l) {
                    n.1 = n.1.min(p);
                }
            }
        }
        Ok(named)
    }

    /// Removes the main-chain rows `first..=last` but the pins (record 1,
    /// `last`, `keep`, every record not an operation, and the record right
    /// before each of those), `batch` numbers per write transaction.
    fn prune_main(
        &self,
        first: u64,
        last: u64,
        keep: &[u64],
        batch: u64,
        tick: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError> {
        let mut keep: Vec<u64> = [1, last].iter().chain(keep).copied().collect();
        let before: Vec<u64> = keep.iter().map(|k| k.saturating_sub(1)).collect();
        keep.extend(before);
        keep.retain(|k| *k > 0);
        keep.sort_unstable();
        keep.dedup();
        let keep_sql = keep
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let delete = format!(
            "DELETE FROM audit WHERE seq >= ?1 AND seq <= ?2 AND seq NOT IN ({keep_sql}) \
             AND event IN {OPERATION_EVENTS_SQL} AND NOT EXISTS (SELECT 1 FROM audit n \
             WHERE n.seq = audit.seq + 1 AND n.event NOT IN {OPERATION_EVENTS_SQL})"
        );
        let batch = batch.max(1);
        let mut at = first.max(1);
        while at <= last {
            let end = last.min(at.saturating_add(batch - 1));
            {
                let mut conn = self.lock();
                let mut tx = Tx::begin(&mut **conn)?;
                tx.execute(&delete, &[Val::Int(at as i64), Val::Int(end as i64)])?;
                self.commit(tx)?;
            }
            tick(end - at + 1);
            at = end + 1;
        }
        Ok(())
    }

    /// Removes lane `lane`'s rows below position `below`, `batch`
    /// positions per write transaction (from the lowest still there).
    fn prune_lane(&self, lane: u64, below: u64, batch: u64) -> Result<(), StoreError> {
        let lowest = {
            let mut conn = self.lock();
            self.rows(
                &mut **conn,
                "SELECT MIN(pos) FROM audit_lane WHERE lane = ?1",
                &[Val::Int(lane as i64)],
                |r| r.opt_int(0),
            )?
            .into_iter()
            .next()
            .flatten()
        };
        let Some(lowest) = lowest else { return Ok(()) };
        let batch = batch.max(1);
        let mut at = lowest.max(0) as u64;
        while at < below {
            let end = below.min(at.saturating_add(batch));
            let mut conn = self.lock();
            let mut tx = Tx::begin(&mut **conn)?;
            tx.execute(
                "DELETE FROM audit_lane WHERE lane = ?1 AND pos >= ?2 AND pos < ?3",
                &[
                    Val::Int(lane as i64),
                    Val::Int(at as i64),
                    Val::Int(end as i64),
                ],
            )?;
            self.commit(tx)?;
            at = end;
        }
        Ok(())
    }
}

/// How far each lane may be pruned: below the lower of its head at the end
/// checkpoint (`ends`) and the position the `lanes` records a process
/// checks name (`named`); a lane `named` leaves out keeps every row.
fn lane_limits(ends: &[(u64, u64)], named: &[(u64, u64)]) -> Vec<(u64, u64)> {
    ends.iter()
        .filter_map(|(lane, end)| {
            let (_, n) = named.iter().find(|(l, _)| l == lane)?;
            Some((*lane, (*end).min(*n)))
        })
        .filter(|(_, below)| *below > 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_detail_reads_back() {
        let d = ArchiveDetail {
            first: 1,
            last: 41,
            end_checkpoint: 43,
            sha256: [0xab; 32],
            file: "audit-2026-09.jsonl".into(),
        };
        assert_eq!(parse_archive_detail(&d.to_string()), Some(d));
        assert_eq!(parse_archive_detail("archive records=1..=2"), None);
    }

    /// Rows of the main chain.
    fn count(store: &Store) -> u64 {
        let mut conn = store.lock();
        store
            .rows(&mut **conn, "SELECT COUNT(*) FROM audit", &[], |r| r.int(0))
            .unwrap()[0] as u64
    }

    fn sign(store: &Store, ak: &Secret32, i: usize) {
        store
            .record(
                Some(ak),
                Record::new(Event::Sign, crate::ck::CKR_OK).detail(format!("sign {i}")),
            )
            .unwrap();
    }

    fn archive_record(first: u64, last: u64) -> Record {
        let d = ArchiveDetail {
            first,
            last,
            end_checkpoint: last + 1,
            sha256: [7; 32],
            file: format!("seg-{last}.jsonl"),
        };
        Record::new(Event::Archive, crate::ck::CKR_OK).detail(d.to_string())
    }

    /// The archive record commits alone; the rows go in many short write
    /// transactions, between which a writer appends (it is never held
    /// for the whole prune); a prune stopped half way leaves a store whose
    /// continuity holds, and the next archive finishes it first.
    #[test]
    fn an_archive_prunes_in_short_transactions_and_the_next_finishes_a_stopped_one() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ak) = crate::store::initialized_for_test(dir.path());
        store.authenticate(&ak, None).unwrap();
        for i in 0..40 {
            sign(&store, &ak, i);
        }
        let before = count(&store);
        let fsyncs = store.fsyncs();
        let prune = Prune {
            first: 1,
            last: 30,
            keep: Vec::new(),
            anchored: None,
            lanes: Vec::new(),
        };
        // A stop after the first batch (a kill between transactions).
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store
                .commit_archive_in(
                    &ak,
                    archive_record(1, 30),
                    &prune,
                    4,
                    &mut |_| panic!("stopped"),
                    &mut || {},
                )
                .unwrap()
        }));
        assert!(stopped.is_err());
        let half = count(&store);
        assert!(half < before + 1, "the first batch removed rows");
        assert!(half > before + 1 - 26, "the prune stopped half way");
        store.check_continuity(0).unwrap();
        // The next archive finishes the first, and a writer goes on between
        // its batches.
        for i in 40..60 {
            sign(&store, &ak, i);
        }
        let fsyncs_before = store.fsyncs();
        let mut batches = 0;
        let mut n = 100;
        let prune = Prune {
            first: 31,
            last: 50,
            keep: Vec::new(),
            anchored: None,
            lanes: Vec::new(),
        };
        store
            .commit_archive_in(
                &ak,
                archive_record(31, 50),
                &prune,
                4,
                &mut |_| {
                    batches += 1;
                    n += 1;
                    sign(&store, &ak, n);
                },
                &mut || {},
            )
            .unwrap();
        assert_eq!(batches, 5, "20 numbers in batches of 4");
        // The earlier range's 8 batches, the record, this range's 5, and
        // the 5 writes between them: each its own transaction.
        assert!(store.fsyncs() - fsyncs_before >= 8 + 1 + 5 + 5);
        assert!(fsyncs < fsyncs_before);
        store.check_continuity(0).unwrap();
        let mut conn = store.lock();
        let left = store
            .rows(
                &mut **conn,
                "SELECT seq FROM audit WHERE seq <= 50 ORDER BY seq",
                &[],
                |r| r.int(0),
            )
            .unwrap();
        drop(conn);
        // Kept: record 1, each range's last and the record before it, and
        // the records around the first archive record (not an operation).
        assert!(left.contains(&1) && left.contains(&30) && left.contains(&50));
        assert!(left.len() < 12, "pruned: {left:?}");
    }

    /// Lane rows are pruned only below what both the end checkpoint and
    /// the `lanes` records name; a lane no `lanes` record names (or no
    /// `lanes` record at all) keeps every row.
    #[test]
    fn lane_rows_are_pruned_only_below_the_named_heads() {
        assert_eq!(lane_limits(&[(1, 50), (2, 9)], &[]), vec![]);
        assert_eq!(
            lane_limits(&[(1, 50), (2, 9), (3, 4)], &[(1, 20), (2, 30)]),
            vec![(1, 20), (2, 9)]
        );
    }
}
