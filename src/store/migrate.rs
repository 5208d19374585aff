//! `p11derive store migrate`: a store copied row for row into a new, empty one, chain untouched.

use super::assets::ASSET_ROW_COLUMNS;
use super::db::{Db, Tx};
use super::{first, Store, StoreError};

/// The tables a migration copies, in an order that satisfies their
/// references, with their columns.
const TABLES: &[(&str, &str)] = &[
    ("assets", ASSET_ROW_COLUMNS),
    ("versions", "asset, version, public_key, created_at, pk_mac"),
    (
        "objects",
        "id, class, label, object_id, value, application, oid, created_at",
    ),
    (
        "audit",
        "seq, time_ns, pid, session, event, asset, version, mechanism, input_sha256, rv, detail, \
         actor, mac",
    ),
    ("gcm_ivs", "asset, version, iv"),
    (
        "users",
        "id, name, roles, patterns, salt, verifier, state, created_at, change_seq, state_mac",
    ),
    (
        "logins",
        "name, failures, locked_until, change_seq, state_mac",
    ),
    (
        "policies",
        "id, pattern, settings, state, created_at, change_seq, state_mac",
    ),
    (
        "audit_lane",
        "lane, pos, change, id, time_ns, pid, session, event, asset, version, mechanism, \
         input_sha256, rv, detail, actor, mac",
    ),
    ("audit_checkpoint", "seq, head_seq, prev_mac, snapshot"),
    (
        "audit_archive",
        "seq, first_seq, last_seq, end_checkpoint, sha256, file, prev_mac",
    ),
    (
        "audit_pending",
        "id, time_ns, pid, session, event, asset, version, mechanism, input_sha256, rv, detail, \
         actor",
    ),
];

/// What a migration moved: rows per table.
pub type Moved = Vec<(&'static str, u64)>;

impl Store {
    /// Copies this store, row for row, into `dest`, which must be empty:
    /// asset ids, object ids and audit records (their MACs untouched, so the
    /// chain and the HSM's rollback anchor still verify) stay as they are.
    /// The source is held under its writers' lock for the whole copy (no
    /// process writes to it meanwhile) and the destination is written in one
    /// transaction: it has every row or none. Both are counted afterwards.
    pub fn migrate_into(&self, dest: &Store) -> Result<Moved, StoreError> {
        self.migrate_into_with(dest, &mut |_, _| {})
    }

    /// [`Store::migrate_into`], telling `progress` (rows copied, rows in
    /// all) as it goes.
    pub fn migrate_into_with(
        &self,
        dest: &Store,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Moved, StoreError> {
        let mut src_conn = self.lock();
        let mut src = Tx::begin(&mut **src_conn)?;
        let mut out_conn = dest.lock();
        let mut out = Tx::begin(&mut **out_conn)?;
        for (table, _) in TABLES {
            let n = dest.count(&mut *out, table)?;
            if n > 0 {
                return Err(StoreError::Exists(dest.path.join(format!(
                    "(its {table} table holds {n} rows: migrate only into a new, empty store)"
                ))));
            }
        }
        let mut total = 0u64;
        for (table, _) in TABLES {
            total += self.count(&mut *src, table)?.max(0) as u64;
        }
        let mut done = 0u64;
        progress(done, total);
        let mut moved = Vec::new();
        for (table, columns) in TABLES {
            let rows = src.query(&format!("SELECT {columns} FROM {table} ORDER BY 1"), &[])?;
            let marks: Vec<String> = (1..=columns.split(',').count())
                .map(|i| format!("?{i}"))
                .collect();
            let insert = format!(
                "INSERT INTO {table} ({columns}) VALUES ({})",
                marks.join(", ")
            );
            for row in &rows {
                out.execute(&insert, &row.0)?;
                done += 1;
                progress(done, total);
            }
            moved.push((*table, rows.len() as u64));
        }
        if dest.is_shared() {
            // Serial ids carry on after the copied ones.
            for table in [
                "assets",
                "objects",
                "audit_pending",
                "audit_lane",
                "users",
                "policies",
            ] {
                out.query(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                         (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
                    ),
                    &[],
                )?;
            }
            // New lanes after every copied one.
            out.query(
                "SELECT setval('p11derive_lane_ids', \
                 (SELECT COALESCE(MAX(lane), 0) + 1 FROM audit_lane), false)",
                &[],
            )?;
        }
        dest.commit(out)?;
        drop(src);
        drop((src_conn, out_conn));
        dest.forget_assets();
        for (table, n) in &moved {
            let mut conn = dest.lock();
            let found = dest.count(&mut **conn, table)?;
            if found as u64 != *n {
                return Err(StoreError::Io(
                    dest.path.clone(),
                    format!("after the migration its {table} table holds {found} rows, not {n}"),
                ));
            }
        }
        if dest.audit_head()? != self.audit_head()? {
            return Err(StoreError::Io(
                dest.path.clone(),
                "after the migration its newest audit record differs from the source's".into(),
            ));
        }
        Ok(moved)
    }

    /// The rows in `table`.
    fn count(&self, db: &mut dyn Db, table: &str) -> Result<i64, StoreError> {
        let n = self
            .rows(db, &format!("SELECT COUNT(*) FROM {table}"), &[], |r| {
                r.int(0)
            })
            .map(first)?;
        Ok(n.unwrap_or(0))
    }
}
