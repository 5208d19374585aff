//! What `p11derive metrics` reads from the store: record counts, kept up to
//! date by counting only the records newer than the last count, and gauges
//! from small tables.
//!
//! Counting never scans the whole log: the main chain is read by its
//! primary key from the last counted `seq` on, each writer's lane
//! (PostgreSQL) from its last counted `pos` on, aggregated by `GROUP BY` in
//! the database; only refusals and lifecycle records (rare) are read one by
//! one, for their detail. The lanes themselves are found by a skip scan of
//! `audit_lane`'s primary key (one index probe per lane). Nothing here is
//! verified under the audit key: the numbers are informative, `p11derive
//! audit verify` is the authority.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::db::{Db, Val};
use super::{first, hex, Store, StoreError, PENDING_MARK};

/// Records by (event, asset, mechanism, return code, actor).
pub type RecordKey = (String, Option<String>, Option<u64>, u64, Option<String>);

/// Refusals by (rule, operation, asset, actor).
pub type RefusalKey = (String, String, Option<String>, Option<String>);

/// Counts of records up to a place in the log, and that place.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// The store counted: `Store::store_id` in hex ("" for an empty store).
    pub store_id: String,
    /// The newest main-chain record counted (0: none) and its MAC's SHA-256 in hex.
    pub seq: u64,
    pub mac: String,
    /// Each lane's newest counted record: lane → (position, its MAC's SHA-256 in hex).
    pub lanes: BTreeMap<u64, (u64, String)>,
    #[serde(with = "entries")]
    pub records: BTreeMap<RecordKey, u64>,
    #[serde(with = "entries")]
    pub refusals: BTreeMap<RefusalKey, u64>,
    /// Create and transition records by kind (the detail's first word).
    pub kinds: BTreeMap<String, u64>,
}

/// A map with tuple keys as JSON: a list of `[key, count]`.
mod entries {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, S: Serializer>(
        m: &BTreeMap<K, u64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, K, D>(d: D) -> Result<BTreeMap<K, u64>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, u64)>::deserialize(d)?.into_iter().collect())
    }
}

/// What the store holds now, from cheap indexed reads.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Assets by state (lowercase: active, rotating, suspended, retired).
    pub assets: BTreeMap<String, u64>,
    /// The main chain's head: its seq (its record count) and time.
    pub head_seq: u64,
    pub head_time_ns: Option<u64>,
    /// Records in writers' lanes, and the newest lane record's time.
    pub lane_records: u64,
    pub lane_time_ns: Option<u64>,
    /// Records waiting in `audit_pending`.
    pub pending: u64,
    /// Requests waiting for approvals, not expired.
    pub requests_pending: u64,
    /// Names locked out by failed logins now.
    pub locked_out: u64,
}

/// A lane's newest record: lane, position, time, MAC.
struct LaneTip {
    lane: u64,
    pos: u64,
    time_ns: u64,
    mac: Vec<u8>,
}

/// Every lane and its newest record: a skip scan over the primary key
/// (lane, pos), one probe per lane, in one statement (one snapshot).
const LANE_TIPS: &str = "WITH RECURSIVE l(lane) AS (
        SELECT min(lane) FROM audit_lane
        UNION ALL
        SELECT (SELECT min(lane) FROM audit_lane WHERE lane > l.lane) FROM l
            WHERE l.lane IS NOT NULL)
    SELECT a.lane, a.pos, a.time_ns, a.mac FROM l JOIN audit_lane a
        ON a.lane = l.lane
        AND a.pos = (SELECT max(pos) FROM audit_lane b WHERE b.lane = l.lane)
    ORDER BY a.lane";

/// The records `filter` selects in `table`, counted by their labels.
fn groups_sql(table: &str, filter: &str) -> String {
    format!(
        "SELECT event, asset, mechanism, rv, actor, count(*) FROM {table} \
         WHERE {filter} GROUP BY event, asset, mechanism, rv, actor"
    )
}

/// The refusals and lifecycle records `filter` selects, for their detail.
fn rare_sql(table: &str, filter: &str) -> String {
    format!(
        "SELECT event, asset, actor, detail FROM {table} \
         WHERE {filter} AND event IN ('refused', 'create', 'transition')"
    )
}

/// The main chain's records after the last counted one (`?1`), up to the
/// head (`?2`); a lane's (`?1`) after position `?2` up to `?3`.
const CHAIN_RANGE: &str = "seq > ?1 AND seq <= ?2";
const LANE_RANGE: &str = "lane = ?1 AND pos > ?2 AND pos <= ?3";

impl Store {
    /// Whether the place `c` counted up to is still in this store exactly:
    /// the same store, the same record at `seq`, the same lane records.
    /// When not (another store, a log rolled back or rewritten), the counts
    /// must start over.
    pub fn counted_place_holds(&self, c: &Counts) -> Result<bool, StoreError> {
        if c.store_id != self.store_id_hex()? {
            return Ok(false);
        }
        let mut db = self.read_lock();
        if c.seq > 0 {
            let mac = self.mac_at(&mut **db, c.seq)?;
            if mac.map(|m| mac_digest(&m)).as_deref() != Some(c.mac.as_str()) {
                return Ok(false);
            }
        }
        for (lane, (pos, mac)) in &c.lanes {
            let found = self
                .rows(
                    &mut **db,
                    "SELECT mac FROM audit_lane WHERE lane = ?1 AND pos = ?2",
                    &[Val::Int(*lane as i64), Val::Int(*pos as i64)],
                    |r| r.blob(0),
                )?
                .into_iter()
                .next();
            if found.map(|m| mac_digest(&m)).as_deref() != Some(mac.as_str()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The store's id (the first record's, `Store::store_id`) in hex; ""
    /// for a store without records.
    pub fn store_id_hex(&self) -> Result<String, StoreError> {
        Ok(self.store_id()?.map(|id| hex(&id)).unwrap_or_default())
    }

    /// `c` brought up to date: the records after the place it counted up
    /// to are counted and added. `c` must be this store's
    /// ([`Store::counted_place_holds`]) or empty (`Counts::default()`).
    pub fn count_records(&self, c: &Counts) -> Result<Counts, StoreError> {
        let mut next = c.clone();
        next.store_id = self.store_id_hex()?;
        let mut db = self.read_lock();
        let head = self.rows(
            &mut **db,
            "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1",
            &[],
            |r| Ok((r.int(0)? as u64, r.blob(1)?)),
        )?;
        if let Some((seq, mac)) = first(head) {
            if seq > c.seq {
                let range = [Val::Int(c.seq as i64), Val::Int(seq as i64)];
                self.add_range(&mut **db, &mut next, "audit", CHAIN_RANGE, &range)?;
            }
            next.seq = seq;
            next.mac = mac_digest(&mac);
        }
        for tip in self.lane_tips(&mut **db)? {
            let from = c.lanes.get(&tip.lane).map_or(0, |(p, _)| *p);
            if tip.pos > from {
                let range = [
                    Val::Int(tip.lane as i64),
                    Val::Int(from as i64),
                    Val::Int(tip.pos as i64),
                ];
                self.add_range(&mut **db, &mut next, "audit_lane", LANE_RANGE, &range)?;
            }
            next.lanes.insert(tip.lane, (tip.pos, mac_digest(&tip.mac)));
        }
        Ok(next)
    }

    /// Adds the records of `table` that `filter` selects to `c`.
    fn add_range(
        &self,
        db: &mut dyn Db,
        c: &mut Counts,
        table: &str,
        filter: &str,
        params: &[Val],
    ) -> Result<(), StoreError> {
        let groups = self.rows(db, &groups_sql(table, filter), params, |r| {
            let key: RecordKey = (
                r.text(0)?,
                r.opt_text(1)?,
                r.opt_int(2)?.map(|m| m as u64),
                r.int(3)? as u64,
                r.opt_text(4)?,
            );
            Ok((key, r.int(5)? as u64))
        })?;
        for (key, n) in groups {
            *c.records.entry(key).or_default() += n;
        }
        let rare = self.rows(db, &rare_sql(table, filter), params, |r| {
            Ok((r.text(0)?, r.opt_text(1)?, r.opt_text(2)?, r.text(3)?))
        })?;
        for (event, asset, actor, detail) in rare {
            if event == "refused" {
                let (rule, operation) = refusal_labels(&detail);
                *c.refusals
                    .entry((rule, operation, asset, actor))
                    .or_default() += 1;
            } else if !detail.starts_with(PENDING_MARK) {
                // A create or transition sealed from the pending table is
                // never a state change (`audit verify` does not trust it):
                // not counted as one.
                *c.kinds.entry(lifecycle_kind(&detail)).or_default() += 1;
            }
        }
        Ok(())
    }

    fn lane_tips(&self, db: &mut dyn Db) -> Result<Vec<LaneTip>, StoreError> {
        self.rows(db, LANE_TIPS, &[], |r| {
            Ok(LaneTip {
                lane: r.int(0)? as u64,
                pos: r.int(1)? as u64,
                time_ns: r.int(2)? as u64,
                mac: r.blob(3)?,
            })
        })
    }

    /// The gauges: assets by state, the chain's and lanes' size and newest
    /// record, pending records, open requests, lockouts (at `now`, in
    /// seconds since the epoch).
    pub fn metric_gauges(&self, now: i64) -> Result<Gauges, StoreError> {
        let mut g = Gauges::default();
        let mut db = self.read_lock();
        let db = &mut **db;
        for (state, n) in self.rows(
            db,
            "SELECT state, count(*) FROM assets GROUP BY state",
            &[],
            |r| Ok((r.text(0)?, r.int(1)? as u64)),
        )? {
            g.assets.insert(state.to_ascii_lowercase(), n);
        }
        let head = self.rows(
            db,
            "SELECT seq, time_ns FROM audit ORDER BY seq DESC LIMIT 1",
            &[],
            |r| Ok((r.int(0)? as u64, r.int(1)? as u64)),
        )?;
        if let Some((seq, t)) = first(head) {
            g.head_seq = seq;
            g.head_time_ns = Some(t);
        }
        for tip in self.lane_tips(db)? {
            g.lane_records += tip.pos;
            g.lane_time_ns = g.lane_time_ns.max(Some(tip.time_ns));
        }
        let count = |db: &mut dyn Db, sql: &str, params: &[Val]| -> Result<u64, StoreError> {
            let n = self.rows(db, sql, params, |r| r.int(0))?;
            Ok(first(n).unwrap_or(0).max(0) as u64)
        };
        let at = [Val::Int(now)];
        g.pending = count(db, "SELECT count(*) FROM audit_pending", &[])?;
        g.requests_pending = count(
            db,
            "SELECT count(*) FROM requests WHERE state = 'pending' AND expires_at > ?1",
            &at,
        )?;
        g.locked_out = count(
            db,
            "SELECT count(*) FROM logins WHERE locked_until > ?1",
            &at,
        )?;
        Ok(g)
    }

    /// The time of main-chain record `seq`, if the chain holds it.
    pub fn record_time_ns(&self, seq: u64) -> Result<Option<u64>, StoreError> {
        let mut db = self.read_lock();
        self.rows(
            &mut **db,
            "SELECT time_ns FROM audit WHERE seq = ?1",
            &[Val::Int(seq as i64)],
            |r| Ok(r.int(0)? as u64),
        )
        .map(first)
    }
}

/// A refusal record's rule (the word after `rule=`; `state` for a refusal
/// by the asset's lifecycle state, whose detail names no rule) and the
/// operation refused (the word before `refused`; `other` when none).
pub fn refusal_labels(detail: &str) -> (String, String) {
    let detail = detail.strip_prefix(PENDING_MARK).unwrap_or(detail);
    let words: Vec<&str> = detail.split_whitespace().collect();
    let rule = words
        .iter()
        .find_map(|w| w.strip_prefix("rule="))
        .map_or_else(|| "state".to_string(), label_word);
    let operation = words
        .iter()
        .position(|w| w.trim_end_matches(':') == "refused")
        .filter(|&i| i > 0)
        .map_or_else(|| "other".to_string(), |i| label_word(words[i - 1]));
    (rule, operation)
}

/// What the counts file keeps of a record's MAC to know it again: its
/// SHA-256, so the file (readable by the metrics' users) holds no MAC.
fn mac_digest(mac: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(mac))
}

/// A create or transition record's kind: its detail's first word.
pub fn lifecycle_kind(detail: &str) -> String {
    let detail = detail.strip_prefix(PENDING_MARK).unwrap_or(detail);
    label_word(detail.split_whitespace().next().unwrap_or(""))
}

/// A word of a record's detail as a label value: a short name, never data
/// (anything else, such as a digest, reads as `other`).
fn label_word(w: &str) -> String {
    let w = w.trim_end_matches([':', ',', ';']);
    let name = !w.is_empty()
        && w.len() <= 40
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !(w.len() >= 32 && w.chars().all(|c| c.is_ascii_hexdigit()));
    if name {
        w.to_string()
    } else {
        "other".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_labelled_by_rule_and_operation() {
        let l = |d: &str| refusal_labels(d);
        assert_eq!(
            l("sign refused: rule=rate policy=hot-* too many"),
            ("rate".into(), "sign".into())
        );
        assert_eq!(
            l("sign refused at commit: asset is SUSPENDED at version 1 (min_usable 1)"),
            ("state".into(), "sign".into())
        );
        assert_eq!(
            l("p11derive rotate: refused: rule=role needs admin"),
            ("role".into(), "rotate".into())
        );
        assert_eq!(
            l(&format!("{PENDING_MARK}decrypt refused: rule=approvals x")),
            ("approvals".into(), "decrypt".into())
        );
        assert_eq!(l("C_DestroyObject refused by policy").1, "C_DestroyObject");
        assert_eq!(l("nothing here"), ("state".into(), "other".into()));
        let digest = "ab".repeat(32);
        assert_eq!(l(&format!("{digest} refused")).1, "other");
    }

    #[test]
    fn lifecycle_kinds_are_the_first_word() {
        assert_eq!(lifecycle_kind("create secp256k1 id=0a -> ACTIVE"), "create");
        assert_eq!(lifecycle_kind("rotate --grace pk=ff -> ROTATING"), "rotate");
        assert_eq!(lifecycle_kind("trim 3 -> ACTIVE"), "trim");
        assert_eq!(lifecycle_kind(""), "other");
    }

    /// Counting reads only the new records, by primary key: no statement
    /// scans a table of records (SQLite's plan of each, on a real store).
    #[test]
    fn counting_never_scans_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(Store::create(&path).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        let plan = |sql: &str, n: usize| -> String {
            let sql = sql.replace("?1", "1").replace("?2", "2").replace("?3", "3");
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = st.query_map([], |r| r.get::<_, String>(3)).unwrap();
            let plan: Vec<String> = rows.map(Result::unwrap).collect();
            assert!(plan.len() >= n, "{sql}: {plan:?}");
            plan.join("\n")
        };
        for sql in [
            groups_sql("audit", CHAIN_RANGE),
            rare_sql("audit", CHAIN_RANGE),
            groups_sql("audit_lane", LANE_RANGE),
            rare_sql("audit_lane", LANE_RANGE),
            LANE_TIPS.to_string(),
        ] {
            let p = plan(&sql, 1);
            assert!(!p.contains("SCAN audit"), "{sql}:\n{p}");
            assert!(p.contains("SEARCH"), "{sql}:\n{p}");
        }
    }

    #[test]
    fn counts_survive_json() {
        let mut c = Counts {
            store_id: "ab".into(),
            seq: 3,
            mac: "cd".into(),
            ..Counts::default()
        };
        c.lanes.insert(7, (2, "ef".into()));
        c.records
            .insert(("sign".into(), Some("a".into()), Some(0x1041), 0, None), 2);
        c.refusals
            .insert(("state".into(), "sign".into(), None, Some("bob".into())), 1);
        c.kinds.insert("create".into(), 1);
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Counts>(&text).unwrap(), c);
    }
}
