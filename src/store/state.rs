//! Authenticated state: asset rows sealed under the state key and bound to the audit chain; the changes and chain position a process has verified.
//!
//! Threat: whoever can write the store (every process that loads the
//! provider can) but holds neither a PIN nor the HSM. Three defences, all
//! keyed by the state key `SK = HKDF-Expand(AK, "p11derive-v1 state mac", 32)`
//! or by the audit key itself:
//!
//! - **Seal.** Each asset row carries `state_mac = HMAC(SK, encode(row) ||
//!   u64 change_seq || mac of record change_seq)`: the row as its latest
//!   change left it, bound to that change's audit record. An edited row
//!   does not verify.
//! - **Ledger.** State-change records (create, transition) name the state
//!   change before them (`prev_change=N`), a chain inside the chain. A
//!   process verifies every state change once (MAC and link) and remembers
//!   each asset's latest: a row sealed to an older change (an older copy of
//!   the row) is stale and refused, and a change removed from the middle
//!   breaks the next one's link.
//! - **Position.** A process remembers the newest record it has seen; a
//!   commit or read that finds the chain shorter, or another record there,
//!   breaks the store for this process (fail closed) until an operator
//!   re-anchors (`p11derive audit reanchor`, which moves the anchor's epoch).

use std::collections::HashMap;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::audit::{prev_change, Anchor, Record, GENESIS};
use crate::types::Secret32;

use super::audit::{parse_resumes_to, parse_transition_detail, stored_mac, PENDING_MARK};
use super::db::{Db, Row, Val};
use super::{first, hex, Asset, AssetState, Store, StoreError, Stored};

/// The HKDF info of the state key under the audit key.
pub const STATE_KEY_INFO: &[u8] = b"p11derive-v1 state mac";

/// `SK = HKDF-Expand(AK, "p11derive-v1 state mac", 32)`.
pub fn state_key(ak: &Secret32) -> Result<Secret32, StoreError> {
    crate::derive::expand(ak, STATE_KEY_INFO)
        .map_err(|e| StoreError::Io(Default::default(), format!("state key: {e}")))
}

/// The MAC an asset row carries: `HMAC(SK, "p11derive-v1 asset state" || 0x00
/// || i64 rowid || str(name) || str(key_type) || str(object_id) || u32 current
/// || u32 min_usable || str(state) || str(resumes_to) || i64 created_at ||
/// u64 change_seq || change_mac)`, strings as `u16be(len) || bytes`.
pub fn row_mac(sk: &Secret32, a: &Asset, change_seq: u64, change_mac: &[u8; 32]) -> [u8; 32] {
    crate::secure::confined(|| {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&sk[..]).expect("any key length");
        let mut put = |b: &[u8]| {
            m.update(&(b.len() as u16).to_be_bytes());
            m.update(b);
        };
        put(b"p11derive-v1 asset state");
        put(&a.rowid.to_be_bytes());
        put(a.id.as_str().as_bytes());
        put(a.key_type.name().as_bytes());
        put(&a.object_id);
        put(&a.current.to_be_bytes());
        put(&a.min_usable.to_be_bytes());
        put(a.state.name().as_bytes());
        put(a.resumes_to.name().as_bytes());
        put(&a.created_at.to_be_bytes());
        put(&change_seq.to_be_bytes());
        put(change_mac);
        m.finalize().into_bytes().into()
    })
}

/// An asset row with its seal and the MAC of the record it is sealed to.
pub(super) struct SealedRow {
    pub(super) asset: Asset,
    pub(super) change_seq: Option<u64>,
    pub(super) state_mac: Option<Vec<u8>>,
    pub(super) change_mac: Option<Vec<u8>>,
}

impl Stored for SealedRow {
    const TABLE: &'static str = "assets LEFT JOIN audit ON audit.seq = assets.change_seq";
    const COLUMNS: &'static str = "assets.id, assets.name, assets.key_type, assets.object_id, \
         assets.current, assets.min_usable, assets.state, assets.created_at, \
         assets.resume_state, assets.change_seq, assets.state_mac, audit.mac";

    fn read(r: &Row) -> Result<SealedRow, String> {
        Ok(SealedRow {
            asset: <Asset as Stored>::read(r)?,
            change_seq: r.opt_int(9)?.map(|v| v as u64),
            state_mac: r.opt_blob(10)?,
            change_mac: r.opt_blob(11)?,
        })
    }
}

/// What this process has verified of the store.
#[derive(Default)]
pub(super) struct Guard {
    /// The state key, once a login gave the audit key.
    key: Option<Arc<Secret32>>,
    /// The audit key, to verify state changes as they come.
    pub(super) ak: Option<Arc<Secret32>>,
    /// The newest state change verified: (seq, mac).
    upto: Option<(u64, [u8; 32])>,
    /// Each asset's latest state change, by name.
    latest: HashMap<String, u64>,
    /// The newest record seen: (seq, mac).
    seen: Option<(u64, [u8; 32])>,
    /// Why the store is refused, and the anchor epoch when that was found.
    broken: Option<(String, u32)>,
    /// Reads the backing HSM's anchor (the provider sets it at login).
    watch: Option<AnchorReader>,
    /// Whether the last anchor read failed (logged once per outage).
    watch_failing: bool,
    /// The store's id, once read.
    store_id: Option<[u8; 16]>,
    /// The anchor's epoch at the login: a store found rolled back is
    /// refused until a newer one.
    epoch: u32,
    /// The last row of each asset whose seal verified, by row id: a row
    /// read again exactly as it was needs no new MAC.
    verified: HashMap<i64, (Asset, u64, Vec<u8>, Vec<u8>)>,
    /// The anchored record whose lane heads were last found in place
    /// (`lanes::check_anchored_cover`).
    pub(super) cover_checked: Option<Position>,
    /// The archived ranges verified so far, and the newest archive
    /// record among them (`archive::archived_ranges`).
    pub(super) archived: Option<(u64, Vec<(u64, u64)>)>,
}

impl Guard {
    /// The state key, once a login gave the audit key.
    pub(super) fn state_key(&self) -> Option<Arc<Secret32>> {
        self.key.clone()
    }

    /// The latest verified state change of a ledger name.
    pub(super) fn latest_of(&self, name: &str) -> Option<u64> {
        self.latest.get(name).copied()
    }

    /// The ledger names starting with `prefix`, without it.
    pub(super) fn latest_keys(&self, prefix: &str) -> Vec<String> {
        self.latest
            .keys()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
            .collect()
    }

    /// Every ledger name with its latest change.
    pub(super) fn latest_map(&self) -> HashMap<String, u64> {
        self.latest.clone()
    }
}

/// A place in the chain: a record's number and MAC.
pub type Position = (u64, [u8; 32]);

/// Starts reading the backing HSM's rollback anchor; the closure it returns
/// waits for the read.
pub type AnchorReader = Arc<dyn Fn() -> AnchorJoin + Send + Sync>;

/// Waits for an anchor read begun by an [`AnchorReader`].
pub type AnchorJoin = Box<dyn FnOnce() -> Result<Option<Anchor>, String> + Send>;

/// The rows a ledger reads: a state change with the MAC of the record before it.
type ChangeRow = (Record, Vec<u8>, Option<Vec<u8>>);

impl Store {
    pub(super) fn guard(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether reads are verified (a login gave this process the audit key).
    pub fn authenticated(&self) -> bool {
        self.guard().key.is_some()
    }

    /// Called with the audit key at a login (and by the command-line tool),
    /// with the backing HSM's anchor: verifies every state change of the
    /// chain into the ledger (each MAC, each link) and that the anchor's
    /// newest state change is among them, then seals rows a store from
    /// before seals left unsealed (only where the verified chain agrees with
    /// them). A store this process found rolled back stays refused until an
    /// operator re-anchored (a newer epoch).
    pub fn authenticate(&self, ak: &Secret32, anchor: Option<&Anchor>) -> Result<(), StoreError> {
        let epoch = anchor.map_or(0, |a| a.epoch);
        {
            let mut g = self.guard();
            if let Some((why, at)) = &g.broken {
                if epoch <= *at {
                    return Err(StoreError::RolledBack(self.path.clone(), why.clone()));
                }
                *g = Guard::default();
            }
        }
        let sk = Arc::new(state_key(ak)?);
        // The process's own copy, arena to arena.
        let own = Secret32::copy_of(ak)
            .map_err(|e| StoreError::Io(self.path.clone(), format!("audit key: {e}")))?;
        // The ledger is built aside and taken only once it holds.
        let mut fresh = Guard::default();
        let head = {
            let mut conn = self.lock();
            self.refresh_ledger(&mut **conn, ak, &mut fresh)?;
            if let Some(a) = anchor {
                self.require_change(&fresh, a)?;
            }
            self.head_in(&mut **conn)?
        };
        // A store opened for reading only is left as it is (`seal_faults`
        // names the rows left unsealed).
        if !self.read_only {
            self.seal_unsealed(ak, &sk, &fresh.latest)?;
        }
        let mut g = self.guard();
        g.key = Some(sk);
        g.ak = Some(Arc::new(own));
        g.verified.clear();
        g.upto = fresh.upto;
        g.latest = fresh.latest;
        g.epoch = epoch;
        if g.seen.is_none() {
            g.seen = head;
        }
        g.cover_checked = None;
        drop(g);
        self.forget_assets();
        if let Some(a) = anchor {
            let mut conn = self.lock();
            self.check_anchored_cover(&mut **conn, a)?;
        }
        Ok(())
    }

    /// The anchor's newest state change must be one the ledger verified: a
    /// newest change hidden from it (its event or detail edited, which its
    /// MAC no longer covers) leaves the ledger behind the anchor.
    fn require_change(&self, g: &Guard, a: &Anchor) -> Result<(), StoreError> {
        let verified = g.upto.map_or(0, |u| u.0);
        if a.change.0 > verified {
            return Err(StoreError::StateTampered(
                self.path.clone(),
                format!(
                    "the backing HSM's anchor names state change record {}, but the newest state \
                     change that verifies is record {verified}: a state change was hidden or \
                     removed",
                    a.change.0
                ),
            ));
        }
        Ok(())
    }

    /// Before the anchor moves: the chain must still hold the newest record
    /// this process saw (else the store is refused from now on).
    pub fn check_seen(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let head = self.head_in(&mut **conn)?;
        self.check_position(&mut **conn, head)
    }

    /// Every record from `from` (exclusive) to the newest is there: one
    /// indexed count, made when the anchor moves, over what was appended
    /// since it last moved; a record deleted from that stretch refuses the
    /// store from now on.
    pub fn check_continuity(&self, from: u64) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let Some((head, _)) = self.head_in(&mut **conn)? else {
            return Ok(());
        };
        if head <= from {
            return Ok(());
        }
        let n = self
            .rows(
                &mut **conn,
                "SELECT COUNT(*) FROM audit WHERE seq > ?1 AND seq <= ?2",
                &[Val::Int(from as i64), Val::Int(head as i64)],
                |r| r.int(0),
            )
            .map(first)?
            .unwrap_or(0);
        // Records an archive removed (a verified archive record names
        // their range) are not missing; the pins it kept are counted there.
        let (span, held) = match n as u64 != head - from {
            true => self.archived_between(&mut **conn, from, head)?,
            false => (0, 0),
        };
        if (n as u64).saturating_sub(held) != head - from - span {
            drop(conn);
            return Err(self.break_store(
                format!(
                    "{} of the audit records {}..={head} are missing: records were deleted from \
                     the log",
                    (head - from).saturating_sub(n as u64),
                    from + 1
                ),
                0,
            ));
        }
        Ok(())
    }

    /// The store's id: the first 16 bytes of its first record's MAC (fixed
    /// at `init`; `None` while the chain is empty).
    pub fn store_id(&self) -> Result<Option<[u8; 16]>, StoreError> {
        let mut conn = self.lock();
        self.store_id_in(&mut **conn)
    }

    pub(super) fn store_id_in(&self, db: &mut dyn Db) -> Result<Option<[u8; 16]>, StoreError> {
        if let Some(id) = self.guard().store_id {
            return Ok(Some(id));
        }
        let first = self.mac_at(db, 1)?;
        Ok(first.map(|m| crate::audit::store_id(&stored_mac(&m))))
    }

    /// From now on, every commit first reads the backing HSM's anchor with
    /// `reader` and refuses (fail closed, for good) a store that lacks what
    /// it holds: a store restored under this process is caught before the
    /// next result leaves, even when the copy hides every other trace.
    /// While the HSM does not answer, commits rely on what this process saw.
    pub fn watch_anchor(&self, reader: AnchorReader) {
        self.guard().watch = Some(reader);
    }

    /// The anchor as the watch reads it now (`None` without a watch, or
    /// while the HSM does not answer).
    pub(super) fn watched_anchor(&self) -> Result<Option<Anchor>, StoreError> {
        match self.start_anchor_read() {
            Some(join) => self.joined_anchor(join),
            None => Ok(None),
        }
    }

    /// Starts reading the anchor (`None` without a watch).
    pub(super) fn start_anchor_read(&self) -> Option<AnchorJoin> {
        let watch = self.guard().watch.clone()?;
        Some(watch())
    }

    /// The anchor a read begun by `start_anchor_read` found (`None` while
    /// the HSM does not answer, logged once).
    pub(super) fn joined_anchor(&self, join: AnchorJoin) -> Result<Option<Anchor>, StoreError> {
        let read = join();
        let mut g = self.guard();
        match read {
            Ok(a) => {
                if g.watch_failing {
                    crate::log::info("rollback anchor: read again at commit");
                }
                g.watch_failing = false;
                Ok(a)
            }
            Err(e) => {
                if !g.watch_failing {
                    crate::log::warn(&format!(
                        "rollback anchor: not readable at commit ({e}); until it is, commits \
                         rely on the records this process saw"
                    ));
                }
                g.watch_failing = true;
                Ok(None)
            }
        }
    }

    /// Inside a write transaction: the store must hold what the HSM's
    /// anchor holds (else it is refused for good), and the ledger must know
    /// every state change in it.
    pub(super) fn check_before_append(&self, db: &mut dyn Db) -> Result<(), StoreError> {
        let anchor = self.watched_anchor()?;
        self.check_against(db, anchor.as_ref())
    }

    /// The store as `db` sees it against `anchor`: it holds the anchor's
    /// newest record and state change, and the ledger, brought up to date,
    /// reaches that change. A store that does not is refused from now on.
    pub(super) fn check_against(
        &self,
        db: &mut dyn Db,
        anchor: Option<&Anchor>,
    ) -> Result<(), StoreError> {
        if let Some(a) = anchor {
            if let Err(e) = self.check_anchor_in(db, a) {
                return Err(match e {
                    StoreError::BehindAnchor(..) | StoreError::Lineage(..) => {
                        self.break_store(e.to_string(), a.epoch)
                    }
                    e => e,
                });
            }
        }
        self.refresh(db)?;
        if let Some(a) = anchor {
            let behind = self.require_change(&self.guard(), a);
            if let Err(e) = behind {
                return Err(self.break_store(e.to_string(), a.epoch));
            }
            self.check_anchored_cover(db, a)?;
        }
        Ok(())
    }

    /// Verifies the state changes after the ledger's newest (one indexed
    /// read when there are none).
    pub(super) fn refresh(&self, db: &mut dyn Db) -> Result<(), StoreError> {
        let mut g = self.guard();
        match g.ak.clone() {
            Some(ak) => self.refresh_ledger(db, &ak, &mut g),
            None => Ok(()),
        }
    }

    /// Checks the store against the backing HSM's anchor: the same lineage
    /// (store id), and it still holds the anchored newest record and newest
    /// state change with their MACs.
    pub fn check_anchor(&self, anchor: &Anchor) -> Result<(), StoreError> {
        let mut conn = self.lock();
        self.check_anchor_in(&mut **conn, anchor)
    }

    fn check_anchor_in(&self, db: &mut dyn Db, anchor: &Anchor) -> Result<(), StoreError> {
        if let Some(id) = anchor.store {
            let ours = self.store_id_in(db)?;
            if ours != Some(id) {
                let at = if anchor.location.is_empty() {
                    String::new()
                } else {
                    format!(", last seen at {}", anchor.location)
                };
                return Err(StoreError::Lineage(
                    self.path.clone(),
                    format!(
                        "the backing HSM's anchor names store {}{at} (record {}), and this store \
                         is {}",
                        hex(&id),
                        anchor.head.0,
                        ours.map_or_else(|| "empty".to_string(), |o| format!("store {}", hex(&o)))
                    ),
                ));
            }
        }
        if anchor.store.is_some() {
            self.guard().store_id = anchor.store;
        }
        for (what, (seq, mac)) in [
            ("newest record", anchor.head),
            ("newest state change", anchor.change),
        ] {
            let held = match seq {
                0 => continue,
                _ => self.mac_at(db, seq)?,
            };
            // A record an archive removed (a verified archive record names
            // its range) is not lacking: its segment holds it.
            if held.is_none() && self.is_archived(db, seq)? {
                continue;
            }
            if held.as_deref() != Some(&mac[..]) {
                return Err(StoreError::BehindAnchor(
                    self.path.clone(),
                    format!("it lacks audit record {seq} (the anchor's {what}), or holds it with another MAC"),
                ));
            }
        }
        Ok(())
    }

    /// Every asset row whose seal does not hold, named with why (for `audit
    /// verify`): no seal, a seal that does not verify under the state key,
    /// or one bound to a change other than the asset's latest in the chain
    /// (`latest`: each asset's latest state change by name, from a verified
    /// chain).
    pub fn seal_faults(
        &self,
        ak: &Secret32,
        latest: &std::collections::BTreeMap<String, (u64, AssetState, u32, u32)>,
    ) -> Result<Vec<String>, StoreError> {
        let named = self.seal_faults_named(ak, latest)?;
        Ok(named.into_iter().map(|(_, f)| f).collect())
    }

    /// [`Store::seal_faults`], each with the asset it names.
    pub fn seal_faults_named(
        &self,
        ak: &Secret32,
        latest: &std::collections::BTreeMap<String, (u64, AssetState, u32, u32)>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let sk = state_key(ak)?;
        let mut conn = self.lock();
        let rows: Vec<SealedRow> = self.select(&mut **conn, "ORDER BY assets.id", &[])?;
        let mut faults = Vec::new();
        for row in rows {
            let name = row.asset.id.as_str();
            let fault = match (
                row.change_seq,
                row.state_mac.as_deref(),
                row.change_mac.as_deref(),
            ) {
                (None, _, _) | (_, None, _) => Some("carries no seal".to_string()),
                (Some(seq), _, None) => Some(format!(
                    "is sealed to record {seq}, which is missing from the log"
                )),
                (Some(seq), Some(m), Some(c)) => {
                    if row_mac(&sk, &row.asset, seq, &stored_mac(c))[..] != *m {
                        Some(
                            "does not verify under the state key (changed outside p11derive)"
                                .into(),
                        )
                    } else {
                        match latest.get(name) {
                            Some((l, ..)) if *l == seq => None,
                            Some((l, ..)) => Some(format!(
                                "is sealed to record {seq}, but the asset's latest change is \
                                 record {l} (an older copy of the row)"
                            )),
                            None => Some(format!(
                                "is sealed to record {seq}, but no state change of it is in the log"
                            )),
                        }
                    }
                }
            };
            if let Some(f) = fault {
                faults.push((name.to_string(), format!("asset {name:?}: its row {f}")));
            }
        }
        Ok(faults)
    }

    /// The newest state change in the store, verified: (seq, mac).
    pub fn latest_change(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let mut conn = self.lock();
        self.refresh(&mut **conn)?;
        Ok(self.verified_change())
    }

    /// The newest state change this process has verified so far (what a
    /// cache of verified rows is valid for).
    pub fn ledger_position(&self) -> Option<(u64, [u8; 32])> {
        self.verified_change()
    }

    /// The newest state change this process has verified so far.
    pub(super) fn verified_change(&self) -> Option<(u64, [u8; 32])> {
        self.guard().upto
    }

    /// Refuses everything from now on (fail closed): the chain went back or
    /// changed under this process. Logged once.
    pub fn break_store(&self, why: String, epoch: u32) -> StoreError {
        let mut g = self.guard();
        if g.broken.is_none() {
            crate::log::error(&format!(
                "store {}: {why}. p11derive refuses every operation on it from now on",
                self.path.display()
            ));
            let at = epoch.max(g.epoch);
            g.broken = Some((why.clone(), at));
        }
        StoreError::RolledBack(
            self.path.clone(),
            g.broken.as_ref().map_or(why, |b| b.0.clone()),
        )
    }

    /// When the store was found rolled back: the newest record and the
    /// newest state change this process had seen (for the anchor to keep).
    /// `None` once an operator re-anchored after that (a newer `epoch`).
    pub fn lost_position(&self, epoch: u32) -> Option<(Position, Option<Position>)> {
        let g = self.guard();
        let (_, at) = g.broken.as_ref()?;
        if epoch > *at {
            return None;
        }
        Some((g.seen?, g.upto))
    }

    /// The refusal, if the store was found rolled back.
    pub(super) fn refused(&self) -> Result<(), StoreError> {
        match &self.guard().broken {
            Some((why, _)) => Err(StoreError::RolledBack(self.path.clone(), why.clone())),
            None => Ok(()),
        }
    }

    /// Before appending at `head`: the chain must still hold the newest
    /// record this process saw (not shorter, the same MAC there).
    pub(super) fn check_position(
        &self,
        db: &mut dyn Db,
        head: Option<(u64, [u8; 32])>,
    ) -> Result<(), StoreError> {
        self.refused()?;
        let Some((seq, mac)) = self.guard().seen else {
            return Ok(());
        };
        let at = head.map_or(0, |h| h.0);
        if at < seq {
            return Err(self.break_store(
                format!(
                    "the audit chain ends at record {at}, but this process already saw record \
                     {seq}: records were deleted, or an older copy of the store was restored \
                     under it"
                ),
                0,
            ));
        }
        let found = self.mac_at(db, seq)?;
        // A record an archive removed (a verified archive record names its
        // range) was not taken from under this process: what it holds to
        // from now on is the head it appends at (so a PostgreSQL lane
        // commit, which sends it, takes the fast path again).
        if found.is_none() && self.is_archived(db, seq)? {
            if let Some(h) = head {
                self.saw(h);
            }
            return Ok(());
        }
        if found.as_deref() != Some(&mac[..]) {
            return Err(self.break_store(
                format!(
                    "audit record {seq}, which this process saw, is gone or holds another MAC: the \
                     store was replaced or rewritten under it"
                ),
                0,
            ));
        }
        Ok(())
    }

    /// The newest record this process has seen.
    pub(super) fn seen(&self) -> Option<(u64, [u8; 32])> {
        self.guard().seen
    }

    /// After a commit: the newest record is now `head`.
    pub(super) fn saw(&self, head: (u64, [u8; 32])) {
        let mut g = self.guard();
        if g.seen.is_none_or(|s| s.0 <= head.0) {
            g.seen = Some(head);
        }
    }

    /// `refresh_ledger` into a ledger of the caller's (built afresh).
    pub(super) fn refresh_ledger_into(
        &self,
        db: &mut dyn Db,
        ak: &Secret32,
        g: &mut Guard,
    ) -> Result<(), StoreError> {
        self.refresh_ledger(db, ak, g)
    }

    /// Verifies the state changes after the ledger's newest into it: each
    /// change's MAC (against the record before it) and its link to the
    /// change before. A change whose link names another, or a verified
    /// change that is gone, breaks the store.
    fn refresh_ledger(
        &self,
        db: &mut dyn Db,
        ak: &Secret32,
        g: &mut Guard,
    ) -> Result<(), StoreError> {
        let from = g.upto.map_or(0, |u| u.0);
        if let Some((seq, mac)) = g.upto {
            if self.mac_at(db, seq)?.as_deref() != Some(&mac[..]) {
                drop(std::mem::take(&mut g.latest));
                let why = format!(
                    "state change record {seq}, which this process verified, is gone or holds \
                     another MAC: the store was rolled back or rewritten under it"
                );
                g.broken = Some((why.clone(), g.epoch));
                crate::log::error(&format!("store {}: {why}", self.path.display()));
                return Err(StoreError::RolledBack(self.path.clone(), why));
            }
        }
        // In batches (a store's whole history of state changes is never
        // held at once: `audit verify` builds a ledger afresh).
        let batch = super::audit::STREAM_BATCH;
        let mut after = from;
        loop {
            let rows = self.change_rows(
                db,
                &format!(
                    "WHERE a.event IN {} AND a.seq > ?1 ORDER BY a.seq LIMIT {batch}",
                    crate::audit::STATE_EVENTS_SQL
                ),
                after,
            )?;
            let full = rows.len() == batch;
            for (rec, mac, prev) in rows {
                after = rec.seq;
                let tampered = |why: &str| {
                    StoreError::StateTampered(
                        self.path.clone(),
                        format!(
                            "state change record {} ({} of asset {:?}) {why}",
                            rec.seq,
                            rec.event.name(),
                            rec.asset.as_deref().unwrap_or("?")
                        ),
                    )
                };
                let prev = match (rec.seq, prev) {
                    (1, _) => GENESIS,
                    (_, Some(p)) => stored_mac(&p),
                    (_, None) => {
                        return Err(tampered(
                            "follows a deleted record: records were removed from the audit log",
                        ))
                    }
                };
                if rec.mac(ak, &prev)[..] != mac[..] {
                    return Err(tampered(
                        "does not verify under the audit key: it was changed, forged, or a record \
                         before it removed",
                    ));
                }
                // Written without the audit key and sealed later (planted in the
                // pending table): never a state change.
                if rec.detail.starts_with(PENDING_MARK) {
                    continue;
                }
                let linked = g.upto.map_or(0, |u| u.0);
                match prev_change(&rec.detail) {
                    Some(n) if n != linked => {
                        return Err(tampered(&format!(
                            "names state change {n} before it, but the one before it in the log is \
                             {linked}: a state change was removed from the audit log"
                        )))
                    }
                    // Records from before links existed.
                    _ => {}
                }
                if let Some(name) = &rec.asset {
                    g.latest.insert(name.clone(), rec.seq);
                }
                g.upto = Some((rec.seq, stored_mac(&mac)));
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// An asset row as read, verified when this process holds the state
    /// key: its seal, and that it is sealed to the asset's latest state
    /// change. A row that fails is refused, naming the asset and what to
    /// run. Without the key (before a login) rows are returned as read: the
    /// operations they decide need a login, and are checked then.
    pub(super) fn check_row(&self, db: &mut dyn Db, row: SealedRow) -> Result<Asset, StoreError> {
        self.refused()?;
        let Some(sk) = self.guard().key.clone() else {
            return Ok(row.asset);
        };
        let name = row.asset.id.as_str().to_string();
        let refuse = |why: &str| {
            let e = StoreError::StateTampered(self.path.clone(), format!("asset {name:?}: {why}"));
            crate::log::error(&e.to_string());
            e
        };
        let (Some(seq), Some(state_mac)) = (row.change_seq, row.state_mac.as_deref()) else {
            return Err(refuse(
                "its row carries no seal (it was written outside p11derive, or its seal was \
                 removed)",
            ));
        };
        let Some(change_mac) = row.change_mac.as_deref() else {
            return Err(refuse(&format!(
                "the audit record of its latest change (record {seq}) is missing from the log"
            )));
        };
        let mut g = self.guard();
        let seen_before = g
            .verified
            .get(&row.asset.rowid)
            .is_some_and(|(a, s, m, c)| {
                *a == row.asset && *s == seq && m[..] == *state_mac && c[..] == *change_mac
            });
        if !seen_before {
            drop(g);
            let want = row_mac(&sk, &row.asset, seq, &stored_mac(change_mac));
            if want[..] != *state_mac {
                return Err(refuse(
                    "its row does not verify under the state key (it was changed outside \
                     p11derive, or copied from another store)",
                ));
            }
            g = self.guard();
            g.verified.insert(
                row.asset.rowid,
                (
                    row.asset.clone(),
                    seq,
                    state_mac.to_vec(),
                    change_mac.to_vec(),
                ),
            );
        }
        if g.latest.get(&name).is_none_or(|l| *l < seq) {
            // A change this process has not verified yet.
            match g.ak.clone() {
                Some(ak) => self.refresh_ledger(db, &ak, &mut g)?,
                None => return Err(refuse("its latest change is not verified")),
            }
        }
        match g.latest.get(&name) {
            Some(l) if *l == seq => Ok(row.asset),
            Some(l) => Err(refuse(&format!(
                "its row is sealed to state change record {seq}, but its latest change is record \
                 {l}: an older copy of the row was put back"
            ))),
            None => Err(refuse(&format!(
                "its row is sealed to record {seq}, which is not a verified state change of it"
            ))),
        }
    }

    /// Seals the row `rowid` to the state change just appended in `tx`.
    pub(super) fn seal_row(
        &self,
        db: &mut dyn Db,
        ak: &Secret32,
        rowid: i64,
        change: (u64, [u8; 32]),
    ) -> Result<(), StoreError> {
        let sk = match self.guard().key.clone() {
            Some(sk) => sk,
            None => Arc::new(state_key(ak)?),
        };
        let a: Asset = self
            .select::<Asset>(db, "WHERE id = ?1", &[rowid.into()])
            .map(first)?
            .ok_or_else(|| StoreError::Io(self.path.clone(), format!("asset row {rowid} gone")))?;
        let mac = row_mac(&sk, &a, change.0, &change.1);
        db.execute(
            "UPDATE assets SET change_seq = ?1, state_mac = ?2 WHERE id = ?3",
            &[Val::Int(change.0 as i64), mac.to_vec().into(), rowid.into()],
        )?;
        Ok(())
    }

    /// The number of the newest state change in the chain (0 for none), for
    /// the next one's `prev_change`. A record sealed from the pending table
    /// is never a state change (the ledger skips it), so it is not one here
    /// either: else one planted there would break the next change's link.
    pub(super) fn newest_change(&self, db: &mut dyn Db) -> Result<u64, StoreError> {
        self.newest_change_upto_in(db, u64::MAX)
    }

    /// [`Store::newest_change`] among the records numbered at most `upto`
    /// (a checkpoint's: the state at its head).
    pub(super) fn newest_change_upto_in(
        &self,
        db: &mut dyn Db,
        upto: u64,
    ) -> Result<u64, StoreError> {
        let n = self
            .rows(
                db,
                &format!(
                    "SELECT MAX(seq) FROM audit WHERE event IN {} \
                     AND detail NOT LIKE '{PENDING_MARK}%' AND seq <= ?1",
                    crate::audit::STATE_EVENTS_SQL
                ),
                &[Val::Int(i64::try_from(upto).unwrap_or(i64::MAX))],
                |r| r.opt_int(0),
            )
            .map(first)?
            .flatten();
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    /// Chain records selected by `tail` (on `a`, with `?1` = `param`), each
    /// with the MAC of the record before it (`None` when that one is gone).
    fn change_rows(
        &self,
        db: &mut dyn Db,
        tail: &str,
        param: u64,
    ) -> Result<Vec<ChangeRow>, StoreError> {
        let sql = format!(
            "SELECT a.seq, a.time_ns, a.pid, a.session, a.event, a.asset, a.version, \
             a.mechanism, a.input_sha256, a.rv, a.detail, a.actor, a.mac, p.mac \
             FROM audit a LEFT JOIN audit p ON p.seq = a.seq - 1 {tail}"
        );
        self.rows(db, &sql, &[Val::Int(param as i64)], |r| {
            let mut rec = super::audit::read_record(r, 1)?;
            rec.seq = r.int(0)?.max(0) as u64;
            Ok((rec, r.blob(12)?, r.opt_blob(13)?))
        })
    }

    /// A chain record read and verified against the record before it
    /// (`None` when it is missing or does not verify).
    pub(super) fn verified_record(
        &self,
        db: &mut dyn Db,
        ak: &Secret32,
        seq: u64,
    ) -> Result<Option<(Record, [u8; 32])>, StoreError> {
        let row = self.change_rows(db, "WHERE a.seq = ?1", seq).map(first)?;
        let Some((rec, mac, prev)) = row else {
            return Ok(None);
        };
        let prev = match (rec.seq, prev) {
            (1, _) => GENESIS,
            (_, Some(p)) => stored_mac(&p),
            (_, None) => return Ok(None),
        };
        let mac = stored_mac(&mac);
        Ok((rec.mac(ak, &prev) == mac).then_some((rec, mac)))
    }

    /// Rows a store from before seals left unsealed are sealed to their
    /// asset's latest state change as the verified ledger (`latest`) names
    /// it, where that record says what the row holds (state, counters, the
    /// state a suspension resumes to) and the asset's creation record says
    /// its key type and `CKA_ID`; any other row stays unsealed (and is
    /// refused, naming it). In a store where any row is sealed, nothing is.
    fn seal_unsealed(
        &self,
        ak: &Secret32,
        sk: &Secret32,
        latest: &HashMap<String, u64>,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let unsealed: Vec<Asset> =
            self.select(&mut **conn, "WHERE state_mac IS NULL ORDER BY id", &[])?;
        if unsealed.is_empty() {
            return Ok(());
        }
        let sealed = self
            .rows(
                &mut **conn,
                "SELECT COUNT(*) FROM assets WHERE state_mac IS NOT NULL",
                &[],
                |r| r.int(0),
            )
            .map(first)?
            .unwrap_or(0);
        if sealed > 0 {
            return Ok(());
        }
        let mut tx = super::db::Tx::begin(&mut **conn)?;
        for a in unsealed {
            let name = a.id.as_str();
            let refuse = |why: &str| {
                crate::log::error(&format!(
                    "asset {name:?}: {why}; its row is left unsealed and refused (run `p11derive \
                     audit verify`)"
                ))
            };
            let Some(seq) = latest.get(name).copied() else {
                refuse("no verified state change of it is in the audit log");
                continue;
            };
            let Some((rec, mac)) = self.verified_record(&mut *tx, ak, seq)? else {
                refuse(&format!("its latest change, record {seq}, does not verify"));
                continue;
            };
            let creation = self.rows(
                &mut *tx,
                "SELECT seq FROM audit WHERE event = 'create' AND asset = ?1 ORDER BY seq LIMIT 1",
                &[name.into()],
                |r| r.int(0),
            )?;
            let created = match creation.first() {
                Some(c) => self.verified_record(&mut *tx, ak, *c as u64)?,
                None => None,
            };
            let field = |r: &Record, key: &str| {
                r.detail
                    .split(' ')
                    .find_map(|w| w.strip_prefix(key))
                    .map(str::to_string)
            };
            let identity = created.as_ref().is_some_and(|(c, _)| {
                c.detail.split(' ').nth(1) == Some(a.key_type.name())
                    && field(c, "id=").as_deref() == Some(hex(&a.object_id).as_str())
            });
            let agrees = identity
                && parse_transition_detail(&rec.detail) == Some((a.state, a.current, a.min_usable))
                && (a.state != AssetState::Suspended
                    || parse_resumes_to(&rec.detail) == Some(a.resumes_to));
            if !agrees {
                refuse(&format!(
                    "its row disagrees with its creation record or its latest change (record {seq})"
                ));
                continue;
            }
            let m = row_mac(sk, &a, seq, &mac);
            tx.execute(
                "UPDATE assets SET change_seq = ?1, state_mac = ?2 WHERE id = ?3",
                &[Val::Int(seq as i64), m.to_vec().into(), a.rowid.into()],
            )?;
            crate::log::info(&format!(
                "asset {name:?}: row sealed to its latest change, record {seq}"
            ));
        }
        self.commit(tx)
    }
}
