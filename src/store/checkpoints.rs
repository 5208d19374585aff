//! Verified checkpoints in the store: reading the writers' lanes from a checkpoint's lane heads on, without the rows before them.

use std::collections::BTreeMap;

use crate::audit::{Event, Record};
use crate::checkpoint::{parse_checkpoint_detail, Snapshot};
use crate::types::Secret32;

use super::audit::{Batches, STREAM_BATCH};
use super::db::{Row, Tx, Val};
use super::lanes::{LaneRow, LaneRows};
use super::{hex, Store, StoreError};

/// One `audit_checkpoint` row as stored (any lengths, any bytes).
#[derive(Debug, Clone)]
pub struct CheckpointRow {
    /// The checkpoint record's number.
    pub seq: u64,
    /// The chain head it commits to.
    pub head_seq: u64,
    /// The MAC of record `seq - 1`.
    pub prev_mac: Vec<u8>,
    /// The snapshot's canonical JSON.
    pub snapshot: Vec<u8>,
}

/// How many times a checkpoint is tried again when a state change lands
/// between its verify and its write.
pub const CHECKPOINT_TRIES: usize = 3;

fn checkpoint_row(r: &Row) -> Result<CheckpointRow, String> {
    // Bytes, or text put there by hand (read as its bytes, then judged).
    let bytes = |i: usize| r.blob(i).or_else(|_| r.text(i).map(String::into_bytes));
    Ok(CheckpointRow {
        seq: r.int(0)?.max(0) as u64,
        head_seq: r.int(1)?.max(0) as u64,
        prev_mac: bytes(2)?,
        snapshot: bytes(3)?,
    })
}

impl Store {
    /// The lowest lane numbered above `after` holding a row inserted up to
    /// `max_id` (`None`: no more lanes). One index seek.
    fn next_lane(&self, after: i64, max_id: i64) -> Result<Option<i64>, StoreError> {
        let mut conn = self.lock();
        self.rows(
            &mut **conn,
            "SELECT MIN(lane) FROM audit_lane WHERE lane > ?1 AND id <= ?2",
            &[Val::Int(after), Val::Int(max_id)],
            |r| r.opt_int(0),
        )
        .map(|v| v.into_iter().next().flatten())
    }

    /// Every lane row inserted up to `max_id`, lane by lane in position
    /// order, each lane from after its position in `heads` (a lane not
    /// there: from its first row), in batches: the rows before the heads
    /// are never read, so the cost follows the rows after them (and one
    /// seek per lane).
    pub fn lane_stream_resumed(&self, max_id: i64, heads: BTreeMap<u64, u64>) -> LaneRows<'_> {
        // The lane being read and the position read up to in it.
        let mut at: Option<(i64, i64)> = None;
        let mut last_lane = i64::MIN;
        Batches::new(move || {
            let mut out: Vec<LaneRow> = Vec::new();
            while out.len() < STREAM_BATCH {
                let (lane, after) = match at {
                    Some(a) => a,
                    None => match self.next_lane(last_lane, max_id)? {
                        Some(lane) => {
                            last_lane = lane;
                            let from = heads.get(&(lane.max(0) as u64)).copied().unwrap_or(0);
                            (lane, i64::try_from(from).unwrap_or(i64::MAX))
                        }
                        None => break,
                    },
                };
                let want = STREAM_BATCH - out.len();
                let rows = {
                    let mut conn = self.lock();
                    self.lane_rows_in(
                        &mut **conn,
                        "WHERE lane = ?1 AND pos > ?2 AND id <= ?3 ORDER BY pos LIMIT ?4",
                        &[
                            Val::Int(lane),
                            Val::Int(after),
                            Val::Int(max_id),
                            Val::Int(want as i64),
                        ],
                    )?
                };
                at = match rows.last() {
                    Some(l) if rows.len() == want => Some((lane, l.at.pos as i64)),
                    _ => None,
                };
                out.extend(rows);
            }
            Ok(out)
        })
    }
}

impl Store {
    /// The newest state change numbered at most `upto` (0: none).
    pub fn newest_change_upto(&self, upto: u64) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        self.newest_change_upto_in(&mut **conn, upto)
    }

    /// Writes a checkpoint of `snapshot` (verified by the caller up to its
    /// head), in one write transaction: refused with
    /// [`StoreError::Conflict`] (verify the new records and try again) when
    /// the newest state change is no longer the snapshot's; else its
    /// `checkpoint` record is appended (MACed, through the normal append
    /// path) and its row inserted beside it. Returns the record's number
    /// and MAC.
    pub fn write_checkpoint(
        &self,
        ak: &Secret32,
        snapshot: &Snapshot,
        actor: Option<&str>,
    ) -> Result<(u64, [u8; 32]), StoreError> {
        let mut conn = self.lock();
        let mut tx = Tx::begin(&mut **conn)?;
        let newest = self.newest_change(&mut *tx)?;
        if newest != snapshot.change {
            return Err(StoreError::Conflict(format!(
                "state change record {newest} was written after the checkpoint's verify (which \
                 saw record {} as the newest): verify the new records and checkpoint again",
                snapshot.change
            )));
        }
        let mut rec = [Record::new(Event::Checkpoint, 0)
            .actor(actor)
            .detail(snapshot.detail().to_string())];
        let head = self.append_in(&mut *tx, ak, &mut rec)?;
        let prev = self.mac_at(&mut *tx, head.seq - 1)?.ok_or_else(|| {
            StoreError::Corrupt(
                self.path.clone(),
                format!("record {} is missing under a new checkpoint", head.seq - 1),
            )
        })?;
        tx.execute(
            "INSERT INTO audit_checkpoint (seq, head_seq, prev_mac, snapshot) \
             VALUES (?1, ?2, ?3, ?4)",
            &[
                Val::Int(head.seq as i64),
                Val::Int(snapshot.head as i64),
                Val::Blob(prev),
                Val::Blob(snapshot.to_bytes()),
            ],
        )?;
        self.commit_at(tx, head)?;
        Ok((head.seq, head.mac))
    }

    /// Up to `limit` checkpoint rows numbered below `before`, newest first.
    pub fn checkpoints_newest(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<CheckpointRow>, StoreError> {
        let mut conn = self.lock();
        self.rows(
            &mut **conn,
            "SELECT seq, head_seq, prev_mac, snapshot FROM audit_checkpoint WHERE seq < ?1 \
             ORDER BY seq DESC LIMIT ?2",
            &[Val::Int(before), Val::Int(limit as i64)],
            checkpoint_row,
        )
    }

    /// The checkpoint row beside record `seq`, if any.
    pub fn checkpoint_at(&self, seq: u64) -> Result<Option<CheckpointRow>, StoreError> {
        let mut conn = self.lock();
        self.rows(
            &mut **conn,
            "SELECT seq, head_seq, prev_mac, snapshot FROM audit_checkpoint WHERE seq = ?1",
            &[Val::Int(seq as i64)],
            checkpoint_row,
        )
        .map(|v| v.into_iter().next())
    }

    /// A checkpoint row judged alone: its record is in the chain, is a
    /// checkpoint, carries a valid MAC chained from the row's `prev_mac`,
    /// and its detail's digests are the snapshot's. The snapshot, or why
    /// not (a message naming the record).
    pub fn verify_checkpoint(
        &self,
        ak: &Secret32,
        row: &CheckpointRow,
    ) -> Result<Snapshot, String> {
        let seq = row.seq;
        let name = format!("checkpoint record {seq}");
        let found = self
            .chain_batch(Some(seq as i64 - 1), seq as i64, 1)
            .map_err(|e| format!("{name}: {e}"))?;
        let Some((r, mac)) = found.into_iter().next().filter(|(r, _)| r.seq == seq) else {
            return Err(format!(
                "{name} is not in the chain (its audit_checkpoint row is there): the record was \
                 deleted, or the row forged"
            ));
        };
        let prev: [u8; 32] = row.prev_mac.as_slice().try_into().map_err(|_| {
            format!(
                "{name}: its audit_checkpoint row's prev_mac is not 32 bytes (the row was changed)"
            )
        })?;
        if r.event != Event::Checkpoint || r.mac(ak, &prev)[..] != mac[..] {
            return Err(format!(
                "{name} does not carry a valid MAC as a checkpoint (its record or its \
                 audit_checkpoint row was changed or forged)"
            ));
        }
        // It follows this store's record before it (always kept), not the
        // record before it in another store of the same root it was copied
        // from.
        let before = self
            .audit_mac(seq - 1)
            .map_err(|e| format!("{name}: {e}"))?;
        if seq > 1 && before.as_deref() != Some(&prev[..]) {
            return Err(format!(
                "{name} does not follow record {} of this store (its audit_checkpoint row's \
                 prev_mac is another record's): it was copied from another store, or the record \
                 before it was changed",
                seq - 1
            ));
        }
        let Some(d) = parse_checkpoint_detail(&r.detail) else {
            return Err(format!("{name}: its detail is not a checkpoint's"));
        };
        let snapshot = Snapshot::from_bytes(&row.snapshot).map_err(|e| {
            format!("{name}: {e} (its audit_checkpoint row's snapshot was changed)")
        })?;
        // The head it commits to, where this store still holds it.
        if let Some(held) = self
            .audit_mac(snapshot.head)
            .map_err(|e| format!("{name}: {e}"))?
        {
            if snapshot.head_mac32().map(|m| m.to_vec()) != Some(held) {
                return Err(format!(
                    "{name} commits to record {} with another MAC than this store holds there: \
                     it was copied from another store, or record {} was changed",
                    snapshot.head, snapshot.head
                ));
            }
        }
        if snapshot.detail() != d || row.head_seq != d.head {
            return Err(format!(
                "{name}: the snapshot in its audit_checkpoint row does not match the digests \
                 the record holds (state {}…): the snapshot was changed",
                &hex(&d.state)[..16]
            ));
        }
        Ok(snapshot)
    }
}

impl Store {
    /// The newest `audit_archive` row: (its record's number, the end
    /// checkpoint's record number) (`None`: nothing archived).
    pub fn newest_archive(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let mut conn = self.lock();
        self.rows(
            &mut **conn,
            "SELECT seq, end_checkpoint FROM audit_archive ORDER BY seq DESC LIMIT 1",
            &[],
            |r| Ok((r.int(0)?.max(0) as u64, r.int(1)?.max(0) as u64)),
        )
        .map(|v| v.into_iter().next())
    }
}
