//! Writers' lanes (PostgreSQL): each writer process chains its own records; the main chain covers every lane's head.
//!
//! A lane record is MACed over its lane, its position and the state change
//! it was decided under (`audit::LanePlace`), chained onto the lane's record
//! before it; only its writer appends to a lane, in one statement under the
//! writers' lock held shared (`schema::PG_LANES`), so hosts never wait for
//! one another's head. State changes, the records of processes without the
//! audit key and everything else written under the writers' lock held
//! exclusive stay in the main chain (`audit`), as on SQLite, where every
//! record is in the main chain and `audit_lane` stays empty.
//!
//! Coverage: when the anchor moves, the mover writes a `lanes` record into
//! the main chain naming every lane that moved since the last one (its
//! head: position and MAC) and the newest lane row it covers (`upto`), and
//! the anchor then holds that record. So the HSM's anchor covers every
//! lane's head: a lane cut below a head the newest `lanes` record names,
//! or such a record changed, is caught by the next mover and by a login
//! against the anchor; below a head any `lanes` record names, by `audit
//! verify`; a gap in what moved since the last coverage, by the next
//! mover. Each mover names its own lane from its head in memory, so a lane
//! is covered whatever its rows' unauthenticated `id`.

use crate::audit::{Event, LanePlace, Record, GENESIS};
use crate::types::Secret32;

use super::audit::{read_record, stored_mac};
use super::db::{Db, Tx, Val};
use super::{first, hex, Store, StoreError};

/// This process's lane: its id (once it has one) and head, the asset
/// generation its last commit saw, the assets its commits read (valid at
/// `cached_at`: a generation and a state change), and its coverage.
#[derive(Default)]
pub(super) struct LaneHead {
    pub(super) id: Option<u64>,
    pub(super) pos: u64,
    pub(super) mac: [u8; 32],
    pub(super) generation: Option<i64>,
    pub(super) assets: std::collections::HashMap<i64, crate::asset::Asset>,
    pub(super) cached_at: Option<(i64, u64)>,
    /// The newest position of this lane a `lanes` record this process
    /// wrote names (or a fresh one it found naming it).
    pub(super) covered: u64,
    /// The last cover failed: commit into the main chain until one
    /// succeeds (`Store::cover_lanes`).
    pub(super) uncovered: bool,
}

/// One lane record as stored: its place, its insertion number (`id`: the
/// order the database committed lane rows in, not covered by a MAC), the
/// record and its MAC (as found, any length).
#[derive(Debug, Clone)]
pub struct LaneRow {
    pub at: LanePlace,
    pub id: i64,
    pub record: Record,
    pub mac: Vec<u8>,
}

/// A lane head a `lanes` record names: (lane, position, MAC).
pub type LaneMark = (u64, u64, [u8; 32]);

/// A `lanes` record younger than this (by its time) makes another one
/// unneeded: the anchor takes it.
const COVER_FRESH_NS: i64 = 500_000_000;

/// The word a `lanes` record's detail starts with.
const LANES_PREFIX: &str = "lanes upto=";

/// A `lanes` record's detail: `lanes upto=ID LANE:POS:MAC …` (MAC in hex).
fn lanes_detail(upto: i64, heads: &[LaneMark]) -> String {
    let mut d = format!("{LANES_PREFIX}{upto}");
    for (lane, pos, mac) in heads {
        d.push_str(&format!(" {lane}:{pos}:{}", hex(mac)));
    }
    d
}

/// What a `lanes` record's detail names: the newest lane row it covers and
/// the heads of the lanes that moved since the one before (`None`: not a
/// `lanes` detail, e.g. a record sealed from the pending table).
pub fn parse_lanes_detail(detail: &str) -> Option<(i64, Vec<LaneMark>)> {
    let rest = detail.strip_prefix(LANES_PREFIX)?;
    let mut words = rest.split(' ');
    let upto = words.next()?.parse().ok()?;
    let mut heads = Vec::new();
    for w in words {
        let mut parts = w.split(':');
        let lane = parts.next()?.parse().ok()?;
        let pos = parts.next()?.parse().ok()?;
        let mac = unhex32(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        heads.push((lane, pos, mac));
    }
    Some((upto, heads))
}

/// 64 hex digits as 32 bytes (`None`: anything else).
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The lane columns before the record's, in `LaneRow` order.
const LANE_COLUMNS: &str = "lane, pos, change, id, time_ns, pid, session, event, asset, version, \
     mechanism, input_sha256, rv, detail, actor, mac";

impl Store {
    /// Every lane record, lane by lane in position order.
    pub fn lane_rows(&self) -> Result<Vec<LaneRow>, StoreError> {
        let mut conn = self.lock();
        self.lane_rows_in(&mut **conn, "ORDER BY lane, pos", &[])
    }

    /// When this process's lane is found longer than it knew (a commit
    /// whose answer it never got — the call's deadline passed, the
    /// connection dropped — landed after all): the lane must still hold its
    /// known head, and the records after it must chain from there under the
    /// audit key, in this lane, made by this process; then they are its
    /// own, and their head (position, MAC) is returned. `None`: the lane was
    /// cut or rewritten, or it is not this process's.
    pub(super) fn catch_up_lane(
        &self,
        ak: &Secret32,
        lane: &LaneHead,
    ) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let id = lane.id.unwrap_or(0);
        // A lane this process has not written yet holds nothing of its own
        // (its id was handed out before: the sequence was turned back).
        if lane.pos == 0 {
            return Ok(None);
        }
        let mut conn = self.lock();
        if self.lane_mac_at(&mut **conn, id, lane.pos)?.as_deref() != Some(&lane.mac[..]) {
            return Ok(None);
        }
        let after = self.lane_rows_in(
            &mut **conn,
            "WHERE lane = ?1 AND pos > ?2 ORDER BY pos",
            &[Val::Int(id as i64), Val::Int(lane.pos as i64)],
        )?;
        let (mut pos, mut mac) = (lane.pos, lane.mac);
        for row in &after {
            let at = LanePlace {
                lane: id,
                pos: pos + 1,
                change: row.at.change,
            };
            let ours = row.record.pid == std::process::id();
            if row.at != at || !ours || row.record.lane_mac(ak, &at, &mac)[..] != row.mac[..] {
                return Ok(None);
            }
            (pos, mac) = (at.pos, stored_mac(&row.mac));
        }
        Ok((pos > lane.pos).then_some((pos, mac)))
    }

    /// Lane records selected by `tail`.
    pub(super) fn lane_rows_in(
        &self,
        db: &mut dyn Db,
        tail: &str,
        params: &[Val],
    ) -> Result<Vec<LaneRow>, StoreError> {
        self.rows(
            db,
            &format!("SELECT {LANE_COLUMNS} FROM audit_lane {tail}"),
            params,
            |r| {
                let at = LanePlace {
                    lane: r.int(0)?.max(0) as u64,
                    pos: r.int(1)?.max(0) as u64,
                    change: r.int(2)?.max(0) as u64,
                };
                Ok(LaneRow {
                    at,
                    id: r.int(3)?,
                    record: read_record(r, 4)?,
                    mac: r.blob(15)?,
                })
            },
        )
    }

    /// The MAC of lane `lane`'s record at `pos` as `db` sees it.
    pub(super) fn lane_mac_at(
        &self,
        db: &mut dyn Db,
        lane: u64,
        pos: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.rows(
            db,
            "SELECT mac FROM audit_lane WHERE lane = ?1 AND pos = ?2",
            &[Val::Int(lane as i64), Val::Int(pos as i64)],
            |r| r.blob(0),
        )
        .map(first)
    }

    /// The newest `lanes` record of the main chain, verified under the
    /// audit key: its number and what it names (`None`: there is none).
    fn newest_cover(
        &self,
        db: &mut dyn Db,
        ak: &Secret32,
    ) -> Result<Option<(u64, i64, Vec<LaneMark>)>, StoreError> {
        let Some(seq) = self.cover_upto(db, u64::MAX)? else {
            return Ok(None);
        };
        self.cover_at(db, ak, seq).map(Some)
    }

    /// The number of the newest `lanes` record at or before record `seq`
    /// (unverified: [`Store::cover_at`] verifies it).
    pub(super) fn cover_upto(&self, db: &mut dyn Db, seq: u64) -> Result<Option<u64>, StoreError> {
        self.rows(
            db,
            "SELECT seq FROM audit WHERE event = 'lanes' AND detail LIKE 'lanes upto=%' \
             AND seq <= ?1 ORDER BY seq DESC LIMIT 1",
            &[Val::Int(i64::try_from(seq).unwrap_or(i64::MAX))],
            |r| r.int(0),
        )
        .map(first)
        .map(|s| s.map(|s| s.max(0) as u64))
    }

    /// The `lanes` record `seq` of the main chain, verified: what it names.
    pub(super) fn cover_at(
        &self,
        db: &mut dyn Db,
        ak: &Secret32,
        seq: u64,
    ) -> Result<(u64, i64, Vec<LaneMark>), StoreError> {
        let bad = |why: &str| {
            StoreError::StateTampered(
                self.path.clone(),
                format!("lanes record {seq} {why}; run `p11derive audit verify`"),
            )
        };
        let (rec, _) = self.verified_record(db, ak, seq)?.ok_or_else(|| {
            bad("does not verify under the audit key (changed, or a record before it removed)")
        })?;
        if rec.event != Event::Lanes {
            return Err(bad("is not a lanes record"));
        }
        let (upto, heads) =
            parse_lanes_detail(&rec.detail).ok_or_else(|| bad("names no lane heads"))?;
        Ok((seq, upto, heads))
    }

    /// Every lane head `cover` (a verified `lanes` record) names is still
    /// in its lane with its MAC; else the store is refused from now on.
    fn check_marks(
        &self,
        db: &mut dyn Db,
        cover: u64,
        heads: &[LaneMark],
        epoch: u32,
    ) -> Result<(), StoreError> {
        for (lane, pos, mac) in heads {
            if self.lane_mac_at(db, *lane, *pos)?.as_deref() != Some(&mac[..]) {
                return Err(self.break_store(
                    format!(
                        "record {pos} of audit lane {lane}, covered by lanes record {cover}, is \
                         gone or holds another MAC: records were deleted from the log, or an \
                         older copy of the store was restored"
                    ),
                    epoch,
                ));
            }
        }
        Ok(())
    }

    /// The newest `lanes` record at or before the anchored one (the
    /// anchored record itself, or one a later record followed): that record
    /// verifies and every lane head it names is still there (checked once
    /// per anchored record). Needs the audit key (a login); without it,
    /// nothing to check.
    pub(super) fn check_anchored_cover(
        &self,
        db: &mut dyn Db,
        anchor: &crate::audit::Anchor,
    ) -> Result<(), StoreError> {
        let (ak, checked) = {
            let g = self.guard();
            (g.ak.clone(), g.cover_checked)
        };
        let Some(ak) = ak else { return Ok(()) };
        let (seq, _) = anchor.head;
        if seq == 0 || checked == Some(anchor.head) {
            return Ok(());
        }
        if let Some(cover) = self.cover_upto(db, seq)? {
            let (_, _, heads) = self.cover_at(db, &ak, cover)?;
            self.check_marks(db, cover, &heads, anchor.epoch)?;
        }
        self.guard().cover_checked = Some(anchor.head);
        Ok(())
    }

    /// Before the anchor moves (PostgreSQL): writes a `lanes` record into
    /// the main chain naming the head of every lane that moved since the
    /// last one, after checking under the writers' lock that the lanes
    /// still hold what the last one named and that what was appended since
    /// has no gap. This process's own lane is named from its head in memory
    /// (not found by the rows' unauthenticated `id`), after checking the
    /// lane holds it: a lane whose rows were renumbered, or a commit
    /// function that answered "committed" and wrote nothing, is caught here.
    /// Nothing is written when no lane moved. A store that fails is refused
    /// from now on. Needs the audit key (a login). `periodic`: nothing is
    /// written either when another `lanes` record is under half a second
    /// old and names this process's lane past where it was last named (the
    /// anchor then takes that one). Until a cover succeeds after
    /// one failed, this process commits into the main chain, not its lane
    /// (`LaneHead::uncovered`): a store that refuses `lanes` records gets no
    /// lane records the anchor cannot cover.
    pub fn cover_lanes(&self, periodic: bool) -> Result<(), StoreError> {
        if !self.is_shared() {
            return Ok(());
        }
        let Some(ak) = self.guard().ak.clone() else {
            return Ok(());
        };
        // This process's lane head not yet named by a cover it wrote.
        let (own, was) = {
            let l = self.lane.lock().unwrap_or_else(|e| e.into_inner());
            let own =
                l.id.filter(|_| l.pos > l.covered)
                    .map(|id| (id, l.pos, l.mac));
            (own, l.covered)
        };
        let covered = self.cover_once(&ak, periodic, own, was);
        let mut l = self.lane.lock().unwrap_or_else(|e| e.into_inner());
        match &covered {
            Ok(Some(pos)) => {
                l.uncovered = false;
                l.covered = l.covered.max(*pos);
            }
            Ok(None) => {}
            Err(_) => l.uncovered = true,
        }
        covered.map(|_| ())
    }

    /// `cover_lanes` once: the position of this process's lane now named
    /// (`Some(0)`: nothing of it to name), `None` when skipped. `own`: this
    /// process's head when a cover has yet to name it; `was`: the position
    /// of its lane last named.
    fn cover_once(
        &self,
        ak: &Secret32,
        periodic: bool,
        own: Option<LaneMark>,
        was: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut conn = self.lock();
        // Periodic: another host covered the lanes a moment ago, this
        // process's lane included past where it was last named: the anchor
        // takes its record (one read, no lock), and each host does not hold
        // every other's commits back once a second. (A lane no other host
        // names, its rows renumbered, is named by its own writer.)
        let newest = self
            .rows(
                &mut **conn,
                "SELECT time_ns, detail FROM audit WHERE event = 'lanes' \
                 AND detail LIKE 'lanes upto=%' ORDER BY seq DESC LIMIT 1",
                &[],
                |r| Ok((r.int(0)?, r.text(1)?)),
            )
            .map(first)?;
        if let (true, Some((time_ns, detail))) = (periodic, &newest) {
            let age_ns = (crate::audit::now_ns() as i64).saturating_sub(*time_ns);
            // What it names of this process's lane is checked when a cover
            // reads it verified; a forged one only defers this cover.
            let names_own = |(id, _, _): LaneMark| {
                parse_lanes_detail(detail).and_then(|(_, heads)| {
                    heads.iter().find(|h| h.0 == id && h.1 > was).map(|h| h.1)
                })
            };
            if (0..COVER_FRESH_NS).contains(&age_ns) {
                match own {
                    None => return Ok(None),
                    Some(o) => {
                        if let Some(p) = names_own(o) {
                            return Ok(Some(p));
                        }
                    }
                }
            }
        }
        let mut tx = Tx::begin(&mut **conn)?;
        let (cover, upto, before) = match self.newest_cover(&mut *tx, ak) {
            Ok(c) => c.unwrap_or((0, 0, vec![])),
            // The newest `lanes` record changed: never anchored past.
            Err(StoreError::StateTampered(_, why)) => {
                drop(tx);
                drop(conn);
                return Err(self.break_store(why, 0));
            }
            Err(e) => return Err(e),
        };
        self.check_marks(&mut *tx, cover, &before, 0)?;
        let moved = self.rows(
            &mut *tx,
            "SELECT lane, MIN(pos), MAX(pos), COUNT(*), MAX(id) FROM audit_lane WHERE id > ?1 \
             GROUP BY lane ORDER BY lane",
            &[Val::Int(upto)],
            |r| {
                Ok((
                    r.int(0)?.max(0) as u64,
                    r.int(1)?.max(0) as u64,
                    r.int(2)?.max(0) as u64,
                    r.int(3)?.max(0) as u64,
                    r.int(4)?,
                ))
            },
        )?;
        let mut heads = Vec::with_capacity(moved.len() + 1);
        let mut newest = upto;
        for (lane, min, max, n, id) in moved {
            // Where this stretch must start: right after the head the last
            // `lanes` record named, else after a record still there.
            let named = before.iter().find(|h| h.0 == lane).map(|h| h.1);
            let joins = match named {
                Some(p) => min == p + 1,
                None => min == 1 || self.lane_mac_at(&mut *tx, lane, min - 1)?.is_some(),
            };
            if n != max - min + 1 || !joins {
                drop(tx);
                drop(conn);
                return Err(self.break_store(
                    format!(
                        "audit lane {lane} has {n} records at positions {min}..={max} since lanes \
                         record {cover}{}: records were deleted from the log",
                        named
                            .map_or_else(String::new, |p| format!(" (which named its record {p})"))
                    ),
                    0,
                ));
            }
            let mac = self
                .lane_mac_at(&mut *tx, lane, max)?
                .map_or(GENESIS, |m| stored_mac(&m));
            heads.push((lane, max, mac));
            newest = newest.max(id);
        }
        let mut own_named = 0;
        if let Some((id, pos, mac)) = own {
            // This process's own head, as it committed it.
            if self.lane_mac_at(&mut *tx, id, pos)?.as_deref() != Some(&mac[..]) {
                drop(tx);
                drop(conn);
                return Err(self.break_store(
                    format!(
                        "this process's audit lane {id} lacks its record {pos} (or holds it with \
                         another MAC), which this process committed: records were deleted from \
                         the log, or the store did not write what it reported written"
                    ),
                    0,
                ));
            }
            heads.retain(|h| h.0 != id || h.1 > pos);
            if !heads.iter().any(|h| h.0 == id) {
                heads.push((id, pos, mac));
            }
            own_named = pos;
        }
        if heads.is_empty() {
            return Ok(Some(own_named));
        }
        let mut rec = [Record::new(Event::Lanes, 0).detail(lanes_detail(newest, &heads))];
        let head = self.append_in(&mut *tx, ak, &mut rec)?;
        self.commit_at(tx, head)?;
        Ok(Some(own_named))
    }
}

/// The orders lanes are streamed in ([`Store::lane_stream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneOrder {
    /// Lane by lane, in position order (each lane's chain).
    Place,
    /// By the state change each record was decided under, then lane and
    /// position (the order `audit verify` replays them in).
    Change,
    /// By time, then insertion number (`audit export`'s merge by time).
    Time,
}

impl LaneOrder {
    /// The keyset condition after the key (`?3`.., its length) and the order.
    fn sql(self) -> (&'static str, usize) {
        match self {
            LaneOrder::Place => ("(lane, pos) > (?3, ?4) ORDER BY lane, pos", 2),
            LaneOrder::Change => (
                "(change, lane, pos) > (?3, ?4, ?5) ORDER BY change, lane, pos",
                3,
            ),
            LaneOrder::Time => ("(time_ns, id) > (?3, ?4) ORDER BY time_ns, id", 2),
        }
    }

    /// A row's key in this order.
    fn key(self, l: &LaneRow) -> [i64; 3] {
        let (lane, pos, change) = (l.at.lane as i64, l.at.pos as i64, l.at.change as i64);
        match self {
            LaneOrder::Place => [lane, pos, 0],
            LaneOrder::Change => [change, lane, pos],
            LaneOrder::Time => [l.record.time_ns as i64, l.id, 0],
        }
    }
}

/// Lane rows in one [`LaneOrder`], in batches read by keyset: only rows
/// inserted up to the newest when the reader started and, by time, from a
/// time on.
pub type LaneRows<'a> = super::audit::Batches<'a, LaneRow>;

impl Store {
    /// Every lane row inserted up to `max_id`, from time `from_ns` on, in
    /// `order`, in batches.
    pub fn lane_stream(&self, order: LaneOrder, max_id: i64, from_ns: i64) -> LaneRows<'_> {
        let batch = super::audit::STREAM_BATCH;
        let (keyset, n) = order.sql();
        let tail = format!("WHERE id <= ?1 AND time_ns >= ?2 AND {keyset} LIMIT {batch}");
        let mut key = [i64::MIN; 3];
        super::audit::Batches::new(move || {
            let mut params = vec![Val::Int(max_id), Val::Int(from_ns)];
            params.extend(key[..n].iter().map(|k| Val::Int(*k)));
            let mut conn = self.lock();
            let rows = self.lane_rows_in(&mut **conn, &tail, &params)?;
            if let Some(l) = rows.last() {
                key = order.key(l);
            }
            Ok(rows)
        })
    }

    /// The newest lane row's insertion number and the number of lane rows
    /// (`None`: the lanes are empty, as on SQLite).
    pub fn lane_extent(&self) -> Result<Option<(i64, u64)>, StoreError> {
        let mut conn = self.lock();
        self.rows(
            &mut **conn,
            "SELECT MAX(id), COUNT(*) FROM audit_lane",
            &[],
            |r| {
                Ok(r.opt_int(0)?
                    .map(|m| (m, r.int(1).unwrap_or(0).max(0) as u64)))
            },
        )
        .map(|v| v.into_iter().next().flatten())
    }

    /// Up to `limit` lane rows before (time, id) `before`, newest first
    /// (`audit tail`).
    pub fn lane_newest(
        &self,
        before: (i64, i64),
        limit: usize,
    ) -> Result<Vec<LaneRow>, StoreError> {
        let mut conn = self.lock();
        self.lane_rows_in(
            &mut **conn,
            "WHERE (time_ns, id) < (?1, ?2) ORDER BY time_ns DESC, id DESC LIMIT ?3",
            &[
                Val::Int(before.0),
                Val::Int(before.1),
                Val::Int(limit as i64),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lanes_detail_reads_back_and_nothing_else_does() {
        let heads = vec![(3, 17, [0xabu8; 32]), (9, 1, [0u8; 32])];
        let d = lanes_detail(412, &heads);
        assert!(d.starts_with("lanes upto=412 3:17:abab"));
        assert_eq!(parse_lanes_detail(&d), Some((412, heads)));
        assert_eq!(parse_lanes_detail("lanes upto=5"), Some((5, vec![])));
        for bad in [
            "",
            "lanes upto=x",
            "lanes upto=1 3:4",
            "lanes upto=1 3:4:00",
            "lanes upto=1 3:4:zz:1",
            "[written without the audit key, sealed later] lanes upto=1",
        ] {
            assert_eq!(parse_lanes_detail(bad), None, "{bad:?}");
        }
    }
}
