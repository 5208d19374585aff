//! Assets as stored: reads and their cache, creation, transitions, version history.

use crate::audit::{public_key_mac, Event, Record};
use crate::types::{AssetId, KeyType, Secret32};

use super::audit::{key_digest, transition_detail};
use super::db::{Db, Row, Tx, Val};
use super::state::SealedRow;
use super::{
    first, hex, now, Asset, AssetState, NewAsset, Store, StoreError, Stored, Transition,
    VersionRecord,
};
use crate::asset::{Change, Denied};
use crate::audit::PREV_CHANGE;

/// The columns of an asset row, in the order `Asset::read` takes them.
pub(super) const ASSET_COLUMNS: &str =
    "id, name, key_type, object_id, current, min_usable, state, created_at, resume_state";

/// Every column of an asset row, its seal included (as `store migrate`
/// copies it).
pub(super) const ASSET_ROW_COLUMNS: &str = "id, name, key_type, object_id, current, min_usable, \
     state, created_at, resume_state, change_seq, state_mac";

/// PostgreSQL: how long the cache serves assets before the generation is
/// read again. A change by another host is seen within this (its commit
/// checks the generation anyway, so nothing is signed under a superseded
/// state); a read of one row per this interval per process, not per
/// operation.
pub(super) const POLL: std::time::Duration = std::time::Duration::from_millis(200);

#[derive(Default)]
pub(super) struct AssetCache {
    pub(super) generation: i64,
    pub(super) assets: std::collections::HashMap<i64, Asset>,
    /// PostgreSQL: when the generation was last read (the start of the
    /// read), `None` until it is.
    pub(super) checked: Option<std::time::Instant>,
}

impl Store {
    /// Every asset that is not retired, in creation order.
    pub fn list_assets(&self) -> Result<Vec<Asset>, StoreError> {
        let mut conn = self.lock();
        let rows: Vec<SealedRow> = self.select(
            &mut **conn,
            "WHERE state != 'RETIRED' ORDER BY assets.id",
            &[],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            // A row that does not verify is left out (and logged, naming
            // it); the others are listed.
            match self.check_row(&mut **conn, row) {
                Ok(a) => out.push(self.finish_asset(&mut **conn, a)?),
                Err(StoreError::StateTampered(..)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// One asset by row id (retired ones included: the caller decides).
    /// Served from the cache while no connection changed the store: SQLite
    /// reads the generation (one cheap read) every time; PostgreSQL when the
    /// last read is older than `POLL`, and the commit re-checks the
    /// generation.
    pub fn asset(&self, rowid: i64) -> Result<Option<Asset>, StoreError> {
        let mut conn = self.read_lock();
        let now = std::time::Instant::now();
        let due = !self.shared
            || self
                .asset_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .checked
                .is_none_or(|t| now.duration_since(t) >= POLL);
        let generation = match due {
            true => Some(self.generation(&mut **conn)?),
            false => None,
        };
        self.refused()?;
        let mut cache = self.asset_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = generation {
            if g != cache.generation {
                cache.assets.clear();
                cache.generation = g;
            }
            if self.shared {
                cache.checked = Some(now);
            }
        }
        // PostgreSQL: another host's change is seen within `POLL`; an asset
        // in a refusing state is read again rather than refused from the
        // cache (a resume on another host is honoured at once; a suspension
        // or a rotation there is enforced at the commit whatever the cache
        // says).
        let trusted = |a: &Asset| {
            !self.shared || matches!(a.state, AssetState::Active | AssetState::Rotating)
        };
        if let Some(a) = cache.assets.get(&rowid).filter(|a| trusted(a)) {
            return Ok(Some(a.clone()));
        }
        let asset = match self.asset_row(&mut **conn, rowid)? {
            None => return Ok(None),
            Some(a) => self.finish_asset(&mut **conn, a)?,
        };
        // Only verified rows are kept: a row read before the login gave the
        // state key is read again after it.
        if self.authenticated() {
            cache.assets.insert(rowid, asset.clone());
        }
        Ok(Some(asset))
    }

    /// The store's asset generation (moved by every change to assets or
    /// versions, by any process).
    pub(super) fn generation(&self, db: &mut dyn Db) -> Result<i64, StoreError> {
        self.rows(db, "SELECT assets FROM generation", &[], |r| r.int(0))
            .map(first)?
            .ok_or_else(|| StoreError::Corrupt(self.path.clone(), "no generation row".into()))
    }

    /// Drops the cached assets after this process changed one (the
    /// generation moves too; this only saves a read).
    pub(super) fn forget_assets(&self) {
        self.asset_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .assets
            .clear();
    }

    pub(super) fn finish_asset(&self, db: &mut dyn Db, mut a: Asset) -> Result<Asset, StoreError> {
        a.versions = self.versions_in(db, a.rowid, a.min_usable, a.current)?;
        Ok(a)
    }

    /// Versions `from..=to` of an asset, newest first.
    fn versions_in(
        &self,
        db: &mut dyn Db,
        rowid: i64,
        from: u32,
        to: u32,
    ) -> Result<Vec<VersionRecord>, StoreError> {
        self.select(
            db,
            "WHERE asset = ?1 AND version BETWEEN ?2 AND ?3 ORDER BY version DESC",
            &[rowid.into(), from.into(), to.into()],
        )
    }

    /// Registers a new asset and its version 1, atomically. The name and the
    /// object id must be new: a retired asset's name is never reused.
    pub fn create_asset(
        &self,
        new: &NewAsset<'_>,
        ak: &Secret32,
        base: Record,
    ) -> Result<Asset, StoreError> {
        let mut conn = self.lock();
        let mut tx = Tx::begin(&mut **conn)?;
        let name: Val = new.id.as_str().into();
        let by_name = std::slice::from_ref(&name);
        let sql = "SELECT state FROM assets WHERE name = ?1";
        let taken = self.rows(&mut *tx, sql, by_name, |r| r.text(0))?;
        // A name stays taken by its creation record even if someone deleted
        // its row: a retired asset's keys must never come back.
        let sql = "SELECT COUNT(*) FROM audit WHERE event = 'create' AND asset = ?1";
        let recorded = self.rows(&mut *tx, sql, by_name, |r| r.int(0)).map(first)?;
        let recorded = recorded.unwrap_or(0) > 0;
        if taken.is_empty() && recorded {
            return Err(StoreError::Duplicate(format!(
                "asset {:?} was created before (its creation is in the audit log) and is missing \
                 from the store; asset ids are unique forever: choose another label, and run \
                 `p11derive audit verify`",
                new.id.as_str()
            )));
        }
        if let Some(state) = taken.first() {
            return Err(StoreError::Duplicate(format!(
                "asset {:?} already exists (state {state}); asset ids are unique forever: choose \
                 another label",
                new.id.as_str()
            )));
        }
        // Object ids must stay unambiguous: a new id may equal neither another
        // asset's id nor one of its version ids (id || u32be(N)), and none of
        // the new asset's version ids may equal another asset's id.
        let owners = self.rows(&mut *tx, "SELECT name, object_id FROM assets", &[], |r| {
            Ok((r.text(0)?, r.blob(1)?))
        })?;
        let new_id = new.object_id;
        let clash = |a: &[u8], b: &[u8]| a == b || (a.len() == b.len() + 4 && a.starts_with(b));
        if let Some((owner, _)) = owners
            .iter()
            .find(|(_, id)| clash(new_id, id) || clash(id, new_id))
        {
            return Err(StoreError::Duplicate(format!(
                "CKA_ID {} would clash with the object ids of asset {owner:?} (its id, or its \
                 version ids: id followed by a 4-byte counter); give the new key another \
                 CKA_ID (or none, to use its default id)",
                hex(new_id)
            )));
        }
        let t = now();
        let rowid = self
            .rows(
                &mut *tx,
                "INSERT INTO assets (name, key_type, object_id, current, min_usable, state, created_at)
                 VALUES (?1, ?2, ?3, 1, 1, 'ACTIVE', ?4) RETURNING id",
                &[
                    name.clone(),
                    new.key_type.name().into(),
                    new.object_id.into(),
                    t.into(),
                ],
                |r| r.int(0),
            ).map(first)?
            .ok_or_else(|| StoreError::Io(self.path.clone(), "no id for the new asset".into()))?;
        let pk_mac = new
            .public_key
            .map(|pk| public_key_mac(ak, new.id.as_str(), 1, pk).to_vec());
        tx.execute(
            "INSERT INTO versions (asset, version, public_key, created_at, pk_mac)
             VALUES (?1, 1, ?2, ?3, ?4)",
            &[
                rowid.into(),
                new.public_key.into(),
                t.into(),
                pk_mac.clone().into(),
            ],
        )?;
        let mut rec = base;
        rec.event = Event::Create;
        rec.asset = Some(new.id.to_string());
        rec.version = Some(1);
        rec.detail = format!(
            "create {} id={} pk={} -> ACTIVE current=1 min_usable=1 {PREV_CHANGE}{}",
            new.key_type.name(),
            hex(new.object_id),
            key_digest(new.public_key),
            self.newest_change(&mut *tx)?
        );
        let head = self.append_in(&mut *tx, ak, std::slice::from_mut(&mut rec))?;
        self.seal_row(&mut *tx, ak, rowid, (head.seq, head.mac))?;
        self.commit_at(tx, head)?;
        self.forget_assets();
        Ok(Asset {
            rowid,
            id: new.id.clone(),
            key_type: new.key_type,
            object_id: new.object_id.to_vec(),
            current: 1,
            min_usable: 1,
            state: AssetState::Active,
            created_at: t,
            resumes_to: AssetState::Active,
            versions: vec![VersionRecord {
                version: 1,
                public_key: new.public_key.map(<[u8]>::to_vec),
                pk_mac,
            }],
        })
    }

    /// One asset by name, retired ones included.
    pub fn asset_by_name(&self, name: &AssetId) -> Result<Option<Asset>, StoreError> {
        let mut conn = self.lock();
        self.asset_by_name_in(&mut **conn, name)
    }

    /// One asset by name, its row verified (see `check_row`).
    fn asset_by_name_in(
        &self,
        db: &mut dyn Db,
        name: &AssetId,
    ) -> Result<Option<Asset>, StoreError> {
        let row: Option<SealedRow> = self
            .select(db, "WHERE name = ?1", &[name.as_str().into()])
            .map(first)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let a = self.check_row(db, row)?;
        self.finish_asset(db, a).map(Some)
    }

    /// One asset by name as the row holds it, unverified: a transition's
    /// result, read before it is sealed.
    fn asset_as_written(&self, db: &mut dyn Db, name: &AssetId) -> Result<Asset, StoreError> {
        let row: Option<Asset> = self
            .select(db, "WHERE name = ?1", &[name.as_str().into()])
            .map(first)?;
        let a = row.ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        self.finish_asset(db, a)
    }

    /// Every recorded version of an asset, trimmed ones included, newest first.
    pub fn history(&self, rowid: i64) -> Result<Vec<VersionRecord>, StoreError> {
        let mut conn = self.lock();
        self.versions_in(&mut **conn, rowid, 1, u32::MAX)
    }

    /// Applies a transition atomically (`BEGIN IMMEDIATE`: one writer at a
    /// time across processes). A rotation brings the new version's public key,
    /// computed for `current + 1` as the caller last read it; if another
    /// process rotated meanwhile, the result is `Conflict` and nothing changes.
    pub fn transition(
        &self,
        name: &AssetId,
        t: Transition,
        next: Option<(u32, Option<&[u8]>)>,
        ak: &Secret32,
        base: Record,
    ) -> Result<Asset, StoreError> {
        let mut conn = self.lock();
        let mut tx = Tx::begin(&mut **conn)?;
        // A transition a quorum rule governs runs only as an approved
        // request's execution (`execute_request`), whoever asks.
        let rules = self.rules_in(&mut *tx, t.operation(), Some(name.as_str()))?;
        if !rules.is_empty() {
            let list: Vec<String> = rules.iter().map(|r| r.describe()).collect();
            let why = format!(
                "{} of asset {:?} needs approvals (quorum {}): make a request: in users mode \
                 `p11derive asset {} {}` records one for approvers to sign",
                t.name(),
                name.as_str(),
                list.join("; "),
                t.operation(),
                name.as_str()
            );
            // Nothing changes; the refusal itself is audited.
            drop(tx);
            drop(conn);
            let mut rec = base;
            rec.event = Event::Refused;
            rec.asset = Some(name.to_string());
            rec.rv = crate::ck::CKR_FUNCTION_REJECTED;
            rec.detail = format!("{} refused: rule=approvals {why}", t.name());
            self.record(Some(ak), rec)?;
            return Err(StoreError::NeedsApproval(why));
        }
        match self.transition_in(&mut *tx, name, t, next, ak, base.clone(), None) {
            Ok((after, head)) => {
                self.commit_at(tx, head)?;
                self.forget_assets();
                Ok(after)
            }
            Err(StoreError::Refused(why)) => {
                // The transition rolls back; the refusal itself is audited.
                drop(tx);
                drop(conn);
                let mut rec = base;
                rec.event = Event::Refused;
                rec.asset = Some(name.to_string());
                rec.rv = crate::ck::CKR_ACTION_PROHIBITED;
                rec.detail = why.clone();
                self.record(Some(ak), rec)?;
                Err(StoreError::Refused(why))
            }
            Err(e) => Err(e),
        }
    }

    /// A transition's writes and record inside the caller's transaction;
    /// the asset after it and the new head (`tag`: a word for the record's
    /// detail, e.g. the request it executes). A transition the asset's
    /// state refuses is `Refused` (nothing written).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn transition_in(
        &self,
        tx: &mut dyn Db,
        name: &AssetId,
        t: Transition,
        next: Option<(u32, Option<&[u8]>)>,
        ak: &Secret32,
        base: Record,
        tag: Option<&str>,
    ) -> Result<(Asset, crate::audit::Head), StoreError> {
        let a = self
            .asset_by_name_in(&mut *tx, name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let change = match a.plan(t, next) {
            Ok(change) => change,
            Err(Denied::Refused(why)) => {
                return Err(StoreError::Refused(format!(
                    "asset {:?} is {}: {} refused: {why}",
                    name.as_str(),
                    a.state.name(),
                    t.name()
                )));
            }
            Err(Denied::Stale) => {
                return Err(StoreError::Conflict(format!(
                    "asset {:?} changed while its new version was derived (now at version \
                     {}); try again",
                    name.as_str(),
                    a.current
                )))
            }
        };
        let mut update =
            |sql: &str, p: &[Val]| -> Result<(), StoreError> { tx.execute(sql, p).map(|_| ()) };
        match change {
            Change::Rotate {
                version,
                public_key,
                state,
            } => {
                update(
                    "UPDATE assets SET current = ?1, state = ?2 WHERE id = ?3",
                    &[version.into(), state.name().into(), a.rowid.into()],
                )?;
                update(
                    "INSERT INTO versions (asset, version, public_key, created_at, pk_mac)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    &[
                        a.rowid.into(),
                        version.into(),
                        public_key.into(),
                        now().into(),
                        public_key
                            .map(|pk| public_key_mac(ak, name.as_str(), version, pk).to_vec())
                            .into(),
                    ],
                )?;
            }
            Change::Finish => {
                update(
                    "UPDATE assets SET state = 'ACTIVE' WHERE id = ?1",
                    &[a.rowid.into()],
                )?;
            }
            Change::Trim(n) => {
                update(
                    "UPDATE assets SET min_usable = ?1 WHERE id = ?2",
                    &[n.into(), a.rowid.into()],
                )?;
            }
            Change::Suspend { resumes_to } => {
                update(
                    "UPDATE assets SET state = 'SUSPENDED', resume_state = ?1 WHERE id = ?2",
                    &[resumes_to.name().into(), a.rowid.into()],
                )?;
            }
            Change::Resume { to } => {
                update(
                    "UPDATE assets SET state = ?1, resume_state = NULL WHERE id = ?2",
                    &[to.name().into(), a.rowid.into()],
                )?;
            }
            Change::Retire => {
                update(
                    "UPDATE assets SET state = 'RETIRED', resume_state = NULL WHERE id = ?1",
                    &[a.rowid.into()],
                )?;
            }
        }
        let after = self.asset_as_written(&mut *tx, name)?;
        let prev = self.newest_change(&mut *tx)?;
        let mut rec = base;
        rec.event = Event::Transition;
        rec.asset = Some(name.to_string());
        rec.version = Some(after.current);
        rec.detail = match t {
            // A rotation records its new version's public key (by digest), so
            // `audit verify` can tell a key swapped in the versions table.
            Transition::Rotate { .. } => {
                let pk = after
                    .version(after.current)
                    .and_then(|v| v.public_key.as_deref());
                transition_detail(&format!("{} pk={}", t.name(), key_digest(pk)), &after)
            }
            _ => transition_detail(&t.name(), &after),
        };
        if let Some(tag) = tag {
            rec.detail = format!("{} {tag}", rec.detail);
        }
        rec.detail = format!("{} {PREV_CHANGE}{prev}", rec.detail);
        let head = self.append_in(&mut *tx, ak, std::slice::from_mut(&mut rec))?;
        self.seal_row(&mut *tx, ak, a.rowid, (head.seq, head.mac))?;
        Ok((after, head))
    }

    /// An asset's row read afresh (without its versions): the last check
    /// before an operation's result leaves, so a transition committed by any
    /// process before this read is honoured.
    pub fn fresh_state(&self, rowid: i64) -> Result<Option<Asset>, StoreError> {
        let mut conn = self.read_lock();
        self.asset_row(&mut **conn, rowid)
    }

    /// The asset row `rowid` (its versions not loaded).
    pub(super) fn asset_row(
        &self,
        db: &mut dyn Db,
        rowid: i64,
    ) -> Result<Option<Asset>, StoreError> {
        let row: Option<SealedRow> = self
            .select(db, "WHERE assets.id = ?1", &[rowid.into()])
            .map(first)?;
        row.map(|r| self.check_row(db, r)).transpose()
    }

    /// Every asset, retired ones included (for reconciliation).
    pub fn all_assets(&self) -> Result<Vec<Asset>, StoreError> {
        let mut conn = self.lock();
        self.select(&mut **conn, "ORDER BY id", &[])
    }
}

impl Stored for VersionRecord {
    const TABLE: &'static str = "versions";
    const COLUMNS: &'static str = "version, public_key, pk_mac";

    fn read(r: &Row) -> Result<VersionRecord, String> {
        Ok(VersionRecord {
            version: r.u32(0)?,
            public_key: r.opt_blob(1)?,
            pk_mac: r.opt_blob(2)?,
        })
    }
}

impl Stored for Asset {
    const TABLE: &'static str = "assets";
    const COLUMNS: &'static str = ASSET_COLUMNS;

    /// An asset row (its versions not loaded).
    fn read(r: &Row) -> Result<Asset, String> {
        let name = r.text(1)?;
        let kt = r.text(2)?;
        let state = r.text(6)?;
        let id = AssetId::new(&name).map_err(|_| format!("invalid asset id {name:?}"))?;
        let key_type = KeyType::from_name(&kt)
            .ok_or_else(|| format!("asset {name:?} has unknown key type {kt:?}"))?;
        let state = AssetState::parse(&state)
            .ok_or_else(|| format!("asset {name:?} has unknown state {state:?}"))?;
        let resumes_to = match r.opt_text(8)?.as_deref() {
            Some("ROTATING") => AssetState::Rotating,
            _ => AssetState::Active,
        };
        Ok(Asset {
            resumes_to,
            rowid: r.int(0)?,
            id,
            key_type,
            object_id: r.blob(3)?,
            current: r.u32(4)?,
            min_usable: r.u32(5)?,
            state,
            created_at: r.int(7)?,
            versions: Vec::new(),
        })
    }
}
