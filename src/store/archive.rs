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
/// lane's rows below its head at the end checkpoint.
pub struct Prune {
    pub first: u64,
    pub last: u64,
    pub keep: Vec<u64>,
    pub lanes: Vec<(u64, u64)>,
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
            |r| {
                Ok(ArchiveRow {
                    seq: r.int(0)?.max(0) as u64,
                    first: r.int(1)?.max(0) as u64,
                    last: r.int(2)?.max(0) as u64,
                    end_checkpoint: r.int(3)?.max(0) as u64,
                    sha256: r.blob(4)?,
                    file: r.text(5)?,
                    prev_mac: r.blob(6)?,
                })
            },
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
    pub(super) fn archived_ranges(
        &self,
        db: &mut dyn super::db::Db,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let Some(ak) = self.guard().ak.clone() else {
            return Ok(Vec::new());
        };
        // Before schema 13 there is no such table: nothing was archived.
        let Ok(rows) = self.archive_rows_in(db) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in rows {
            if let Some(d) = self.verified_archive(db, &ak, &row)? {
                out.push((d.first, d.last));
            }
        }
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

    /// In ONE write transaction: appends the archive record `r` (its detail
    /// an [`ArchiveDetail`]), inserts its `audit_archive` row, and removes
    /// what `prune` names; `tick` is told of each batch of main-chain
    /// numbers done, `before_commit` runs last inside the transaction.
    /// Returns the archive record's number.
    pub fn commit_archive(
        &self,
        ak: &Secret32,
        mut r: Record,
        prune: &Prune,
        tick: &mut dyn FnMut(u64),
        before_commit: &mut dyn FnMut(),
    ) -> Result<u64, StoreError> {
        let d = parse_archive_detail(&r.detail).ok_or_else(|| {
            StoreError::Corrupt(self.path.clone(), "an archive record's detail".into())
        })?;
        let mut conn = self.lock();
        let mut tx = Tx::begin(&mut **conn)?;
        let head = self.append_in(&mut *tx, ak, std::slice::from_mut(&mut r))?;
        let prev_mac = match head.seq {
            1 => GENESIS.to_vec(),
            s => self.mac_at(&mut *tx, s - 1)?.ok_or_else(|| {
                StoreError::Corrupt(self.path.clone(), format!("audit record {} is gone", s - 1))
            })?,
        };
        tx.execute(
            "INSERT INTO audit_archive (seq, first_seq, last_seq, end_checkpoint, sha256, file, \
             prev_mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
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
        // Pins: record 1 and the range's last; every record not an
        // operation; the kept ones named (the anchor's); and the record
        // right before each of those, so each kept record verifies alone.
        let mut keep: Vec<u64> = vec![1, prune.last];
        keep.extend(prune.keep.iter().copied());
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
        let mut at = prune.first;
        while at <= prune.last {
            let end = prune.last.min(at.saturating_add(DELETE_BATCH - 1));
            tx.execute(&delete, &[Val::Int(at as i64), Val::Int(end as i64)])?;
            tick(end - at + 1);
            at = end + 1;
        }
        // The lane heads the anchor's cover names (the newest `lanes`
        // record at or before the anchor's head) stay too: a process
        // checks them whenever the anchor moves.
        let covered: Vec<(u64, u64)> = match prune.keep.first() {
            Some(h) if *h > 0 => self
                .rows(
                    &mut *tx,
                    "SELECT detail FROM audit WHERE event = 'lanes' AND seq <= ?1 \
                     ORDER BY seq DESC LIMIT 1",
                    &[Val::Int(*h as i64)],
                    |r| r.text(0),
                )?
                .first()
                .and_then(|d| super::parse_lanes_detail(d))
                .map(|(_, heads)| heads.into_iter().map(|(l, p, _)| (l, p)).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        for (lane, end_pos) in &prune.lanes {
            let named = covered.iter().find(|(l, _)| l == lane).map(|(_, p)| *p);
            let head_pos = named.map_or(*end_pos, |p| p.min(*end_pos));
            tx.execute(
                "DELETE FROM audit_lane WHERE lane = ?1 AND pos < ?2",
                &[Val::Int(*lane as i64), Val::Int(head_pos as i64)],
            )?;
        }
        before_commit();
        self.commit_at(tx, head)?;
        Ok(head.seq)
    }
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
}
