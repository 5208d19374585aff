//! Verified checkpoints in the store: reading the writers' lanes from a checkpoint's lane heads on, without the rows before them.

use std::collections::BTreeMap;

use super::audit::{Batches, STREAM_BATCH};
use super::db::Val;
use super::lanes::{LaneRow, LaneRows};
use super::{Store, StoreError};

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
