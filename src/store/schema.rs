//! The store's schema in both engines, and the identity checks made before anything writes.
//!
//! Identity: application id and schema version. SQLite's schema grows by
//! migrations; PostgreSQL's is created at the current version.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::db::{Db, Val};
use super::pg::{self, Pg};
use super::sqlite::classify;
use super::StoreError;

/// `PRAGMA application_id` of a p11derive store ("P1DR").
pub const APPLICATION_ID: i32 = 0x5031_4452;
/// The schema this build writes. Older stores are migrated forward.
pub const SCHEMA_VERSION: i32 = 13;

/// The columns `audit` and `audit_pending` share (migration 2 -> 3), after
/// their keys and up to `detail`: a macro, so each migration stays one
/// literal text (`tests::migrations_are_unchanged` pins it).
macro_rules! audit_record_columns {
    () => {
        "        time_ns      INTEGER NOT NULL,
        pid          INTEGER NOT NULL,
        session      INTEGER,
        event        TEXT NOT NULL,
        asset        TEXT,
        version      INTEGER,
        mechanism    INTEGER,
        input_sha256 BLOB,
        rv           INTEGER NOT NULL,
"
    };
}

/// Schema 11 (k-of-n approvals) in either engine's types: approvers,
/// quorum rules and requests, sealed like users; approvers, quorum rules,
/// requests and approvals are state changes.
macro_rules! approvals_schema {
    ($rowid:literal, $int:literal, $bytes:literal) => {
        concat!(
            "DROP INDEX IF EXISTS audit_changes;
    CREATE INDEX IF NOT EXISTS audit_changes ON audit (seq)
        WHERE event IN ('create', 'transition', 'user', 'policy', 'lockout', 'approver',
                        'quorum', 'request', 'approval');
    CREATE TABLE IF NOT EXISTS approvers (
        id          ",
            $rowid,
            ",
        name        TEXT NOT NULL UNIQUE,
        key_kind    TEXT NOT NULL CHECK (key_kind IN ('ed25519', 'p256')),
        public_key  ",
            $bytes,
            " NOT NULL,
        groups      TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('active', 'removed')),
        created_at  ",
            $int,
            " NOT NULL,
        change_seq  ",
            $int,
            ",
        state_mac   ",
            $bytes,
            "
    );
    CREATE TABLE IF NOT EXISTS quorums (
        id          ",
            $rowid,
            ",
        name        TEXT NOT NULL UNIQUE,
        operation   TEXT NOT NULL,
        pattern     TEXT NOT NULL,
        approvals   ",
            $int,
            " NOT NULL CHECK (approvals >= 1),
        grp         TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('set', 'removed')),
        created_at  ",
            $int,
            " NOT NULL,
        change_seq  ",
            $int,
            ",
        state_mac   ",
            $bytes,
            "
    );
    CREATE TABLE IF NOT EXISTS requests (
        id           ",
            $rowid,
            ",
        name         TEXT NOT NULL UNIQUE,
        operation    TEXT NOT NULL,
        lookup       TEXT NOT NULL,
        body         ",
            $bytes,
            " NOT NULL,
        requested_by TEXT NOT NULL,
        created_at   ",
            $int,
            " NOT NULL,
        expires_at   ",
            $int,
            " NOT NULL,
        state        TEXT NOT NULL
            CHECK (state IN ('pending', 'rejected', 'executed', 'cancelled')),
        approvals    TEXT NOT NULL,
        outcome      TEXT NOT NULL,
        change_seq   ",
            $int,
            ",
        state_mac    ",
            $bytes,
            "
    );
    CREATE INDEX IF NOT EXISTS requests_open ON requests (lookup) WHERE state = 'pending';"
        )
    };
}

/// Schema 10 (users mode) in either engine's types: its row id, integer
/// and bytes types, and the statements that come first.
macro_rules! users_schema {
    ($rowid:literal, $int:literal, $bytes:literal, $first:literal) => {
        concat!(
            $first,
            "
    CREATE INDEX IF NOT EXISTS audit_changes ON audit (seq)
        WHERE event IN ('create', 'transition', 'user', 'policy', 'lockout');
    CREATE INDEX IF NOT EXISTS audit_uses ON audit (asset, time_ns)
        WHERE event IN ('sign', 'encrypt', 'decrypt');
    CREATE INDEX IF NOT EXISTS audit_actor_uses ON audit (actor, time_ns)
        WHERE event IN ('sign', 'encrypt', 'decrypt') AND actor IS NOT NULL;
    CREATE INDEX IF NOT EXISTS audit_lane_uses ON audit_lane (asset, time_ns)
        WHERE event IN ('sign', 'encrypt', 'decrypt');
    CREATE INDEX IF NOT EXISTS audit_lane_actor_uses ON audit_lane (actor, time_ns)
        WHERE event IN ('sign', 'encrypt', 'decrypt') AND actor IS NOT NULL;
    CREATE TABLE IF NOT EXISTS users (
        id          ",
            $rowid,
            ",
        name        TEXT NOT NULL UNIQUE,
        roles       TEXT NOT NULL,
        patterns    TEXT NOT NULL,
        salt        ",
            $bytes,
            " NOT NULL,
        verifier    ",
            $bytes,
            " NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('active', 'locked', 'removed')),
        created_at  ",
            $int,
            " NOT NULL,
        change_seq  ",
            $int,
            ",
        state_mac   ",
            $bytes,
            "
    );
    CREATE TABLE IF NOT EXISTS logins (
        name         TEXT PRIMARY KEY,
        failures     ",
            $int,
            " NOT NULL CHECK (failures >= 0),
        locked_until ",
            $int,
            " NOT NULL,
        change_seq   ",
            $int,
            ",
        state_mac    ",
            $bytes,
            "
    );
    CREATE TABLE IF NOT EXISTS policies (
        id          ",
            $rowid,
            ",
        pattern     TEXT NOT NULL UNIQUE,
        settings    TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('set', 'removed')),
        created_at  ",
            $int,
            " NOT NULL,
        change_seq  ",
            $int,
            ",
        state_mac   ",
            $bytes,
            "
    );"
        )
    };
}

/// Schema 13 (checkpoints and archive segments) in either engine's types.
macro_rules! checkpoint_schema {
    ($int:literal, $bytes:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS audit_checkpoint (
        seq       ",
            $int,
            " PRIMARY KEY,
        head_seq  ",
            $int,
            " NOT NULL,
        prev_mac  ",
            $bytes,
            " NOT NULL,
        snapshot  ",
            $bytes,
            " NOT NULL
    );
    CREATE TABLE IF NOT EXISTS audit_archive (
        seq            ",
            $int,
            " PRIMARY KEY,
        first_seq      ",
            $int,
            " NOT NULL,
        last_seq       ",
            $int,
            " NOT NULL,
        end_checkpoint ",
            $int,
            " NOT NULL,
        sha256         ",
            $bytes,
            " NOT NULL,
        file           TEXT NOT NULL,
        prev_mac       ",
            $bytes,
            " NOT NULL
    );"
        )
    };
}

/// Each entry upgrades the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the initial schema.
    "CREATE TABLE assets (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        key_type    TEXT NOT NULL,
        object_id   BLOB NOT NULL UNIQUE,
        current     INTEGER NOT NULL CHECK (current >= 1),
        min_usable  INTEGER NOT NULL CHECK (min_usable >= 1 AND min_usable <= current),
        state       TEXT NOT NULL CHECK (state IN ('ACTIVE','ROTATING','SUSPENDED','RETIRED')),
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE versions (
        asset       INTEGER NOT NULL REFERENCES assets(id),
        version     INTEGER NOT NULL CHECK (version >= 1),
        public_key  BLOB,
        created_at  INTEGER NOT NULL,
                PRIMARY KEY (asset, version)
    );",
    // 1 -> 2: what `resume` returns a SUSPENDED asset to (its state before suspend).
    "ALTER TABLE assets ADD COLUMN resume_state TEXT
        CHECK (resume_state IS NULL OR resume_state IN ('ACTIVE','ROTATING'));",
    // 2 -> 3: the audit log (design §4): a MAC chain, and records made by
    // processes without the audit key, waiting to be sealed into it.
    concat!(
        "CREATE TABLE audit (
        seq          INTEGER PRIMARY KEY,
",
        audit_record_columns!(),
        "        detail       TEXT NOT NULL,
        mac          BLOB NOT NULL
    );
    CREATE TABLE audit_pending (
        id           INTEGER PRIMARY KEY,
",
        audit_record_columns!(),
        "                detail       TEXT NOT NULL
    );"
    ),
    // 3 -> 4: each version's public key carries a MAC under the audit key, so
    // a process holding the key can tell a key swapped in this table.
    "ALTER TABLE versions ADD COLUMN pk_mac BLOB;",
    // 4 -> 5: public token objects a client stores beside the derived keys:
    // X.509 certificates (tied to an asset by CKA_ID) and data objects.
    "CREATE TABLE objects (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        class       INTEGER NOT NULL,
        label       BLOB NOT NULL,
        object_id   BLOB NOT NULL,
        value       BLOB NOT NULL,
        application BLOB,
        oid         BLOB,
        created_at  INTEGER NOT NULL
    );",
    // 5 -> 6: a counter every change to assets or versions moves (by
    // trigger, whoever writes), so a process can tell in one read whether
    // its cached assets are still current.
    "CREATE TABLE generation (
        id     INTEGER PRIMARY KEY CHECK (id = 1),
        assets INTEGER NOT NULL
    );
    INSERT INTO generation (id, assets) VALUES (1, 0);
    CREATE TRIGGER assets_insert AFTER INSERT ON assets
        BEGIN UPDATE generation SET assets = assets + 1; END;
    CREATE TRIGGER assets_update AFTER UPDATE ON assets
        BEGIN UPDATE generation SET assets = assets + 1; END;
    CREATE TRIGGER assets_delete AFTER DELETE ON assets
        BEGIN UPDATE generation SET assets = assets + 1; END;
    CREATE TRIGGER versions_insert AFTER INSERT ON versions
        BEGIN UPDATE generation SET assets = assets + 1; END;
    CREATE TRIGGER versions_update AFTER UPDATE ON versions
        BEGIN UPDATE generation SET assets = assets + 1; END;
    CREATE TRIGGER versions_delete AFTER DELETE ON versions
        BEGIN UPDATE generation SET assets = assets + 1; END;",
    // 6 -> 7: each asset row is sealed under the state key to the audit
    // record of its latest change (`state.rs`); state changes are found by
    // index (`prev_change` links, the ledger).
    "ALTER TABLE assets ADD COLUMN change_seq INTEGER;
    ALTER TABLE assets ADD COLUMN state_mac BLOB;
    CREATE INDEX audit_changes ON audit (seq) WHERE event IN ('create', 'transition');",
    // 7 -> 8: every AES-GCM IV an asset version has encrypted under, filled
    // in the transaction that commits the encryption's audit record: its
    // primary key refuses a repeat, exactly, whichever process writes.
    "CREATE TABLE gcm_ivs (
        asset   INTEGER NOT NULL REFERENCES assets(id),
        version INTEGER NOT NULL,
        iv      BLOB NOT NULL,
        PRIMARY KEY (asset, version, iv)
    ) WITHOUT ROWID;",
    // 8 -> 9: the writers' lanes of a PostgreSQL store (each writer process
    // chains its own records; `lanes.rs`). A SQLite store keeps its single
    // chain: the table stays empty, so both engines read the same tables.
    concat!(
        "CREATE TABLE audit_lane (
        lane         INTEGER NOT NULL,
        pos          INTEGER NOT NULL CHECK (pos >= 1),
        change       INTEGER NOT NULL,
        id           INTEGER NOT NULL UNIQUE,
",
        audit_record_columns!(),
        "        detail       TEXT NOT NULL,
        mac          BLOB NOT NULL,
        PRIMARY KEY (lane, pos)
    );
    CREATE INDEX audit_covers ON audit (seq) WHERE event = 'lanes';"
    ),
    // 9 -> 10: users, their failed logins and policies (users mode), each
    // row sealed like an asset's; every record names its user (`actor`,
    // under the record's MAC); users, policies and lockouts are state
    // changes; uses are counted by asset and by user for rate limits.
    users_schema!(
        "INTEGER PRIMARY KEY",
        "INTEGER",
        "BLOB",
        "ALTER TABLE audit ADD COLUMN actor TEXT;
    ALTER TABLE audit_pending ADD COLUMN actor TEXT;
    ALTER TABLE audit_lane ADD COLUMN actor TEXT;
    DROP INDEX audit_changes;"
    ),
    // 10 -> 11: k-of-n approvals: approvers (their public keys), quorum
    // rules and requests with their approvals, each row sealed like a
    // user's; their changes are state changes.
    approvals_schema!("INTEGER PRIMARY KEY", "INTEGER", "BLOB"),
    // 11 -> 12: the two orders `audit verify` and `audit export` read the
    // writers' lanes in, batch by batch, served by an index each (without
    // them PostgreSQL sorts the whole lane table for every batch).
    LANE_ORDERS,
    // 12 -> 13: verified checkpoints (each beside its `checkpoint` record:
    // the head it commits to, the MAC of the record before it, so the
    // record verifies alone, and the snapshot whose digests it holds) and
    // archive segments (beside each `archive` record).
    checkpoint_schema!("INTEGER", "BLOB"),
];

/// Migration 11 -> 12 on both engines (SQLite's lanes stay empty).
const LANE_ORDERS: &str = "CREATE INDEX audit_lane_change ON audit_lane (change, lane, pos);
    CREATE INDEX audit_lane_time ON audit_lane (time_ns, id);";

/// Upgrades a SQLite store's schema from `from` to `SCHEMA_VERSION`.
pub(super) fn migrate(path: &Path, conn: &mut Connection, from: i32) -> Result<(), StoreError> {
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| classify(path, e))?;
        // Another process may have migrated while we waited for the lock.
        let seen: i32 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| classify(path, e))?;
        if seen > SCHEMA_VERSION {
            // A newer p11derive migrated it while we waited: hands off.
            return Err(StoreError::Newer(path.to_path_buf(), seen));
        }
        if seen > i as i32 {
            continue;
        }
        tx.execute_batch(sql).map_err(|e| classify(path, e))?;
        tx.execute_batch(&format!("PRAGMA user_version = {};", i + 1))
            .map_err(|e| classify(path, e))?;
        tx.commit().map_err(|e| classify(path, e))?;
    }
    Ok(())
}

/// A store's identity as read from it (application id, schema version):
/// another program's database, or one from a newer p11derive, is refused.
pub(super) fn identify(location: &Path, app: i64, version: i64) -> Result<(), StoreError> {
    if app != i64::from(APPLICATION_ID) {
        return Err(StoreError::Foreign(location.to_path_buf()));
    }
    if version > i64::from(SCHEMA_VERSION) {
        return Err(StoreError::Newer(location.to_path_buf(), version as i32));
    }
    Ok(())
}

/// `audit_record_columns` in PostgreSQL's types, `detail` included.
macro_rules! pg_audit_record_columns {
    () => {
        "    time_ns      BIGINT NOT NULL,
    pid          BIGINT NOT NULL,
    session      BIGINT,
    event        TEXT NOT NULL,
    asset        TEXT,
    version      BIGINT,
    mechanism    BIGINT,
    input_sha256 BYTEA,
    rv           BIGINT NOT NULL,
    detail       TEXT NOT NULL"
    };
}

/// PostgreSQL's `gcm_ivs` (SQLite migration 7 -> 8): one text for new
/// stores and for the upgrade of older ones.
macro_rules! pg_gcm_ivs {
    () => {
        "CREATE TABLE gcm_ivs (
    asset   BIGINT NOT NULL REFERENCES assets(id),
    version BIGINT NOT NULL,
    iv      BYTEA NOT NULL,
    PRIMARY KEY (asset, version, iv)
);
"
    };
}

/// Upgrades of an existing PostgreSQL store (created at its version, never
/// older than 6): each entry (from, sql) brings a store at schema `from` to
/// `from + 1`.
/// The upgrades of an older PostgreSQL store: from each version, the
/// statements that bring it to the next.
const PG_UPGRADES: &[(i64, &[&str])] = &[
    (6, &[PG_UPGRADE_7, PG_APPEND]),
    (7, &[pg_gcm_ivs!()]),
    (8, &[PG_LANES]),
    (9, &[PG_USERS, PG_LANE_APPEND_10]),
    (10, &[PG_APPROVALS, PG_LANE_APPEND_11]),
    (11, &[LANE_ORDERS]),
    (12, &[checkpoint_schema!("BIGINT", "BYTEA")]),
];

/// The schema version `PG_SCHEMA` and `PG_APPEND` create; a new store is
/// then brought to `SCHEMA_VERSION` by the same upgrades older stores take.
const PG_BASE_VERSION: i64 = 8;

/// The lock every lane commit takes shared and every other write
/// transaction exclusive (`pg_advisory_xact_lock`): commits of all hosts'
/// lanes run side by side, and a state change waits until none is in
/// flight (and holds the next ones back), so each commit's state check is
/// exact. Its key is the store's application id.
pub const PG_WRITERS_LOCK: i64 = APPLICATION_ID as i64;

/// PostgreSQL schema 8 -> 9: the writers' lanes (`lanes.rs`), and their
/// commit function, which replaces the single chain's `p11derive_append`.
const PG_LANES: &str = concat!(
    r#"
CREATE SEQUENCE p11derive_lane_ids;
CREATE TABLE audit_lane (
    lane         BIGINT NOT NULL,
    pos          BIGINT NOT NULL CHECK (pos >= 1),
    change       BIGINT NOT NULL,
    id           BIGSERIAL NOT NULL UNIQUE,
"#,
    pg_audit_record_columns!(),
    r#",
    mac          BYTEA NOT NULL,
    PRIMARY KEY (lane, pos)
);
CREATE INDEX audit_covers ON audit (seq) WHERE event = 'lanes';
DROP FUNCTION IF EXISTS p11derive_append(BIGINT, BYTEA, BIGINT, BIGINT[], BIGINT[], BIGINT[],
    TEXT[], TEXT[], BIGINT[], BIGINT[], BYTEA[], BIGINT[], TEXT[], BYTEA[], BIGINT[], BYTEA[],
    BIGINT);
-- The commit of a batch into the writer's own lane, in one statement. The
-- client MACed the records onto its lane's head (p_pos, p_head) and decided
-- each operation on the assets as of generation p_gen, under state change
-- p_change (the newest it has verified). Holding the writers' lock shared
-- (so no state change is in flight), if the lane's head, the generation and
-- the newest state change are as the client believed, the pending table is
-- empty and the main chain still holds every record of p_hold with its MAC,
-- the records are appended (r_ok); otherwise nothing is written and the
-- client learns what differs. No other writer's head is read or waited for.
CREATE FUNCTION p11derive_lane_append(
    p_lock_ms BIGINT, p_lane BIGINT, p_pos BIGINT, p_head BYTEA, p_gen BIGINT, p_change BIGINT,
    p_time_ns BIGINT[], p_pid BIGINT[], p_session BIGINT[], p_event TEXT[], p_asset TEXT[],
    p_version BIGINT[], p_mechanism BIGINT[], p_input BYTEA[], p_rv BIGINT[],
    p_detail TEXT[], p_mac BYTEA[], p_hold BIGINT[], p_hold_mac BYTEA[])
RETURNS TABLE (r_ok BOOLEAN, r_pos BIGINT, r_mac BYTEA, r_gen BIGINT, r_pending BOOLEAN,
               r_lost BOOLEAN, r_change BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    s BIGINT; m BYTEA; g BIGINT; p BOOLEAN; l BOOLEAN; c BIGINT;
BEGIN
    -- The statement runs alone (one round trip, its own transaction): a
    -- lock it waits for longer than the client's deadline ends it here,
    -- with nothing written (SET LOCAL: for this transaction only).
    PERFORM set_config('lock_timeout', p_lock_ms || 'ms', true);
    PERFORM pg_advisory_xact_lock_shared(1345406034);
    SELECT a.pos, a.mac INTO s, m FROM audit_lane a WHERE a.lane = p_lane
        ORDER BY a.pos DESC LIMIT 1;
    SELECT x.assets INTO g FROM generation x;
    SELECT EXISTS (SELECT 1 FROM audit_pending) INTO p;
    SELECT EXISTS (
        SELECT 1 FROM unnest(p_hold, p_hold_mac) AS h(seq, mac)
        WHERE NOT EXISTS (SELECT 1 FROM audit a WHERE a.seq = h.seq AND a.mac = h.mac)
    ) INTO l;
    -- The newest state change, as the client's ledger counts them: a record
    -- sealed from the pending table never is one.
    SELECT a.seq INTO c FROM audit a WHERE a.event IN ('create', 'transition')
        AND a.detail NOT LIKE '[written without the audit key, sealed later] %'
        ORDER BY a.seq DESC LIMIT 1;
    IF coalesce(s, 0) <> p_pos OR m IS DISTINCT FROM p_head OR g <> p_gen OR p OR l
       OR coalesce(c, 0) <> p_change THEN
        RETURN QUERY SELECT false, coalesce(s, 0), m, g, p, l, coalesce(c, 0);
        RETURN;
    END IF;
    INSERT INTO audit_lane (lane, pos, change, time_ns, pid, session, event, asset, version,
                            mechanism, input_sha256, rv, detail, mac)
        SELECT p_lane, p_pos + u.n, p_change, u.t, u.pi, u.se, u.e, u.a, u.v, u.me, u.i, u.r,
               u.d, u.c
        FROM unnest(p_time_ns, p_pid, p_session, p_event, p_asset, p_version, p_mechanism,
                    p_input, p_rv, p_detail, p_mac)
             WITH ORDINALITY AS u(t, pi, se, e, a, v, me, i, r, d, c, n);
    RETURN QUERY SELECT true, p_pos + cardinality(p_time_ns), p_mac[cardinality(p_mac)], g,
        false, false, coalesce(c, 0);
END $$;
"#
);

/// PostgreSQL schema 9 -> 10 (SQLite migration 9 -> 10): users, logins,
/// policies; the `actor` column; the state-change and use indexes. Each
/// statement tolerates what it makes being there already: a store whose
/// recorded version an owner set back (its lanes dropped) is upgraded again
/// and then refused for what it lost, not for the upgrade.
const PG_USERS: &str = users_schema!(
    "BIGSERIAL PRIMARY KEY",
    "BIGINT",
    "BYTEA",
    "ALTER TABLE audit ADD COLUMN IF NOT EXISTS actor TEXT;
    ALTER TABLE audit_pending ADD COLUMN IF NOT EXISTS actor TEXT;
    ALTER TABLE audit_lane ADD COLUMN IF NOT EXISTS actor TEXT;
    DROP INDEX IF EXISTS audit_changes;"
);

/// The lane commit function of schema 10: each record's `actor` too, and
/// users, policies and lockouts count as state changes.
const PG_LANE_APPEND_10: &str = r#"
DROP FUNCTION p11derive_lane_append(BIGINT, BIGINT, BIGINT, BYTEA, BIGINT, BIGINT, BIGINT[],
    BIGINT[], BIGINT[], TEXT[], TEXT[], BIGINT[], BIGINT[], BYTEA[], BIGINT[], TEXT[], BYTEA[],
    BIGINT[], BYTEA[]);
CREATE FUNCTION p11derive_lane_append(
    p_lock_ms BIGINT, p_lane BIGINT, p_pos BIGINT, p_head BYTEA, p_gen BIGINT, p_change BIGINT,
    p_time_ns BIGINT[], p_pid BIGINT[], p_session BIGINT[], p_event TEXT[], p_asset TEXT[],
    p_version BIGINT[], p_mechanism BIGINT[], p_input BYTEA[], p_rv BIGINT[],
    p_detail TEXT[], p_actor TEXT[], p_mac BYTEA[], p_hold BIGINT[], p_hold_mac BYTEA[])
RETURNS TABLE (r_ok BOOLEAN, r_pos BIGINT, r_mac BYTEA, r_gen BIGINT, r_pending BOOLEAN,
               r_lost BOOLEAN, r_change BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    s BIGINT; m BYTEA; g BIGINT; p BOOLEAN; l BOOLEAN; c BIGINT;
BEGIN
    PERFORM set_config('lock_timeout', p_lock_ms || 'ms', true);
    PERFORM pg_advisory_xact_lock_shared(1345406034);
    SELECT a.pos, a.mac INTO s, m FROM audit_lane a WHERE a.lane = p_lane
        ORDER BY a.pos DESC LIMIT 1;
    SELECT x.assets INTO g FROM generation x;
    SELECT EXISTS (SELECT 1 FROM audit_pending) INTO p;
    SELECT EXISTS (
        SELECT 1 FROM unnest(p_hold, p_hold_mac) AS h(seq, mac)
        WHERE NOT EXISTS (SELECT 1 FROM audit a WHERE a.seq = h.seq AND a.mac = h.mac)
    ) INTO l;
    SELECT a.seq INTO c FROM audit a
        WHERE a.event IN ('create', 'transition', 'user', 'policy', 'lockout')
        AND a.detail NOT LIKE '[written without the audit key, sealed later] %'
        ORDER BY a.seq DESC LIMIT 1;
    IF coalesce(s, 0) <> p_pos OR m IS DISTINCT FROM p_head OR g <> p_gen OR p OR l
       OR coalesce(c, 0) <> p_change THEN
        RETURN QUERY SELECT false, coalesce(s, 0), m, g, p, l, coalesce(c, 0);
        RETURN;
    END IF;
    INSERT INTO audit_lane (lane, pos, change, time_ns, pid, session, event, asset, version,
                            mechanism, input_sha256, rv, detail, actor, mac)
        SELECT p_lane, p_pos + u.n, p_change, u.t, u.pi, u.se, u.e, u.a, u.v, u.me, u.i, u.r,
               u.d, u.ac, u.c
        FROM unnest(p_time_ns, p_pid, p_session, p_event, p_asset, p_version, p_mechanism,
                    p_input, p_rv, p_detail, p_actor, p_mac)
             WITH ORDINALITY AS u(t, pi, se, e, a, v, me, i, r, d, ac, c, n);
    RETURN QUERY SELECT true, p_pos + cardinality(p_time_ns), p_mac[cardinality(p_mac)], g,
        false, false, coalesce(c, 0);
END $$;
"#;

/// PostgreSQL schema 10 -> 11 (SQLite migration 10 -> 11): approvers,
/// quorum rules, requests; the state-change index with their events.
const PG_APPROVALS: &str = approvals_schema!("BIGSERIAL PRIMARY KEY", "BIGINT", "BYTEA");

/// The lane commit function of schema 11: approvers, quorum rules,
/// requests and approvals count as state changes too.
const PG_LANE_APPEND_11: &str = r#"
CREATE OR REPLACE FUNCTION p11derive_lane_append(
    p_lock_ms BIGINT, p_lane BIGINT, p_pos BIGINT, p_head BYTEA, p_gen BIGINT, p_change BIGINT,
    p_time_ns BIGINT[], p_pid BIGINT[], p_session BIGINT[], p_event TEXT[], p_asset TEXT[],
    p_version BIGINT[], p_mechanism BIGINT[], p_input BYTEA[], p_rv BIGINT[],
    p_detail TEXT[], p_actor TEXT[], p_mac BYTEA[], p_hold BIGINT[], p_hold_mac BYTEA[])
RETURNS TABLE (r_ok BOOLEAN, r_pos BIGINT, r_mac BYTEA, r_gen BIGINT, r_pending BOOLEAN,
               r_lost BOOLEAN, r_change BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    s BIGINT; m BYTEA; g BIGINT; p BOOLEAN; l BOOLEAN; c BIGINT;
BEGIN
    PERFORM set_config('lock_timeout', p_lock_ms || 'ms', true);
    PERFORM pg_advisory_xact_lock_shared(1345406034);
    SELECT a.pos, a.mac INTO s, m FROM audit_lane a WHERE a.lane = p_lane
        ORDER BY a.pos DESC LIMIT 1;
    SELECT x.assets INTO g FROM generation x;
    SELECT EXISTS (SELECT 1 FROM audit_pending) INTO p;
    SELECT EXISTS (
        SELECT 1 FROM unnest(p_hold, p_hold_mac) AS h(seq, mac)
        WHERE NOT EXISTS (SELECT 1 FROM audit a WHERE a.seq = h.seq AND a.mac = h.mac)
    ) INTO l;
    SELECT a.seq INTO c FROM audit a
        WHERE a.event IN ('create', 'transition', 'user', 'policy', 'lockout', 'approver',
                          'quorum', 'request', 'approval')
        AND a.detail NOT LIKE '[written without the audit key, sealed later] %'
        ORDER BY a.seq DESC LIMIT 1;
    IF coalesce(s, 0) <> p_pos OR m IS DISTINCT FROM p_head OR g <> p_gen OR p OR l
       OR coalesce(c, 0) <> p_change THEN
        RETURN QUERY SELECT false, coalesce(s, 0), m, g, p, l, coalesce(c, 0);
        RETURN;
    END IF;
    INSERT INTO audit_lane (lane, pos, change, time_ns, pid, session, event, asset, version,
                            mechanism, input_sha256, rv, detail, actor, mac)
        SELECT p_lane, p_pos + u.n, p_change, u.t, u.pi, u.se, u.e, u.a, u.v, u.me, u.i, u.r,
               u.d, u.ac, u.c
        FROM unnest(p_time_ns, p_pid, p_session, p_event, p_asset, p_version, p_mechanism,
                    p_input, p_rv, p_detail, p_actor, p_mac)
             WITH ORDINALITY AS u(t, pi, se, e, a, v, me, i, r, d, ac, c, n);
    RETURN QUERY SELECT true, p_pos + cardinality(p_time_ns), p_mac[cardinality(p_mac)], g,
        false, false, coalesce(c, 0);
END $$;
"#;

/// The schema a new PostgreSQL store gets (the SQLite schema at version
/// `SCHEMA_VERSION`, in PostgreSQL's types), and the commit function.
pub(super) const PG_SCHEMA: &str = concat!(
    r#"
CREATE TABLE p11derive_meta (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    application    BIGINT NOT NULL,
    schema_version BIGINT NOT NULL
);
CREATE TABLE assets (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    key_type     TEXT NOT NULL,
    object_id    BYTEA NOT NULL UNIQUE,
    current      BIGINT NOT NULL CHECK (current >= 1),
    min_usable   BIGINT NOT NULL CHECK (min_usable >= 1 AND min_usable <= current),
    state        TEXT NOT NULL CHECK (state IN ('ACTIVE','ROTATING','SUSPENDED','RETIRED')),
    created_at   BIGINT NOT NULL,
    resume_state TEXT CHECK (resume_state IS NULL OR resume_state IN ('ACTIVE','ROTATING')),
    change_seq   BIGINT,
    state_mac    BYTEA
);
CREATE TABLE versions (
    asset       BIGINT NOT NULL REFERENCES assets(id),
    version     BIGINT NOT NULL CHECK (version >= 1),
    public_key  BYTEA,
    created_at  BIGINT NOT NULL,
    pk_mac      BYTEA,
    PRIMARY KEY (asset, version)
);
CREATE TABLE audit (
    seq          BIGINT PRIMARY KEY,
"#,
    pg_audit_record_columns!(),
    r#",
    mac          BYTEA NOT NULL
);
CREATE TABLE audit_pending (
    id           BIGSERIAL PRIMARY KEY,
"#,
    pg_audit_record_columns!(),
    r#"
);
CREATE TABLE objects (
    id          BIGSERIAL PRIMARY KEY,
    class       BIGINT NOT NULL,
    label       BYTEA NOT NULL,
    object_id   BYTEA NOT NULL,
    value       BYTEA NOT NULL,
    application BYTEA,
    oid         BYTEA,
    created_at  BIGINT NOT NULL
);
CREATE TABLE generation (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    assets BIGINT NOT NULL
);
INSERT INTO generation (id, assets) VALUES (1, 0);
"#,
    pg_gcm_ivs!(),
    r#"
-- Every change to assets or versions, by whoever writes, moves the
-- generation and tells listening hosts to drop their cached assets.
CREATE FUNCTION p11derive_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE generation SET assets = assets + 1;
    PERFORM pg_notify('p11derive_assets', '');
    RETURN NULL;
END $$;
CREATE TRIGGER assets_moved AFTER INSERT OR UPDATE OR DELETE ON assets
    FOR EACH STATEMENT EXECUTE FUNCTION p11derive_moved();
CREATE TRIGGER versions_moved AFTER INSERT OR UPDATE OR DELETE ON versions
    FOR EACH STATEMENT EXECUTE FUNCTION p11derive_moved();

CREATE INDEX audit_changes ON audit (seq) WHERE event IN ('create', 'transition');
"#
);

/// The batch commit function of a PostgreSQL store (schema version 7).
pub(super) const PG_APPEND: &str = r#"
-- The commit of a batch, in one statement: the client MACed the records
-- onto the head it believes current and decided each operation on the
-- assets as of generation `gen`. Under the writers' lock, if the head, the
-- generation and the pending table are as the client believed, the
-- records are appended (ok = true); otherwise nothing is written and the
-- client learns the true head and generation, to decide and MAC again.
-- `p_hold` are records the client knows (the newest it has seen, the
-- HSM anchor's newest record and state change): when the chain no longer
-- holds one of them with its MAC (`lost`), nothing is written either.
-- `p_change` is the newest state change the client has verified: a newer
-- one (`r_change`) is verified first, then the batch decided again.
CREATE FUNCTION p11derive_append(
    p_seq BIGINT, p_head BYTEA, p_gen BIGINT,
    p_time_ns BIGINT[], p_pid BIGINT[], p_session BIGINT[], p_event TEXT[], p_asset TEXT[],
    p_version BIGINT[], p_mechanism BIGINT[], p_input BYTEA[], p_rv BIGINT[],
    p_detail TEXT[], p_mac BYTEA[], p_hold BIGINT[], p_hold_mac BYTEA[], p_change BIGINT)
RETURNS TABLE (r_ok BOOLEAN, r_seq BIGINT, r_mac BYTEA, r_gen BIGINT, r_pending BOOLEAN,
               r_lost BOOLEAN, r_change BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    s BIGINT; m BYTEA; g BIGINT; p BOOLEAN; l BOOLEAN; c BIGINT;
BEGIN
    PERFORM 1 FROM p11derive_meta WHERE id = 1 FOR UPDATE;
    SELECT a.seq, a.mac INTO s, m FROM audit a ORDER BY a.seq DESC LIMIT 1;
    SELECT x.assets INTO g FROM generation x;
    SELECT EXISTS (SELECT 1 FROM audit_pending) INTO p;
    SELECT EXISTS (
        SELECT 1 FROM unnest(p_hold, p_hold_mac) AS h(seq, mac)
        WHERE NOT EXISTS (SELECT 1 FROM audit a WHERE a.seq = h.seq AND a.mac = h.mac)
    ) INTO l;
    SELECT max(a.seq) INTO c FROM audit a WHERE a.event IN ('create', 'transition');
    IF coalesce(s, 0) <> p_seq OR m IS DISTINCT FROM p_head OR g <> p_gen OR p OR l
       OR coalesce(c, 0) > p_change THEN
        RETURN QUERY SELECT false, coalesce(s, 0), m, g, p, l, coalesce(c, 0);
        RETURN;
    END IF;
    INSERT INTO audit (seq, time_ns, pid, session, event, asset, version, mechanism,
                       input_sha256, rv, detail, mac)
        SELECT p_seq + u.n, u.t, u.pi, u.se, u.e, u.a, u.v, u.me, u.i, u.r, u.d, u.c
        FROM unnest(p_time_ns, p_pid, p_session, p_event, p_asset, p_version, p_mechanism,
                    p_input, p_rv, p_detail, p_mac)
             WITH ORDINALITY AS u(t, pi, se, e, a, v, me, i, r, d, c, n);
    RETURN QUERY SELECT true, p_seq + cardinality(p_time_ns), p_mac[cardinality(p_mac)], g,
        false, false, coalesce(c, 0);
END $$;
"#;

/// Upgrades a PostgreSQL store of schema version 6 to 7, in one transaction:
/// the seal columns, the state-change index and the commit function that
/// checks the client's newest seen record.
const PG_UPGRADE_7: &str = r#"
ALTER TABLE assets ADD COLUMN change_seq BIGINT, ADD COLUMN state_mac BYTEA;
CREATE INDEX audit_changes ON audit (seq) WHERE event IN ('create', 'transition');
DROP FUNCTION p11derive_append(BIGINT, BYTEA, BIGINT, BIGINT[], BIGINT[], BIGINT[], TEXT[],
    TEXT[], BIGINT[], BIGINT[], BYTEA[], BIGINT[], TEXT[], BYTEA[]);
"#;

/// Creates the schema in an empty PostgreSQL database, in one transaction.
pub(super) fn create_pg(db: &mut Pg) -> Result<(), StoreError> {
    let loc = db.location().to_path_buf();
    db.begin_plain()?;
    if pg::has_schema(db)? {
        db.rollback();
        return Err(StoreError::Exists(loc));
    }
    db.batch(PG_SCHEMA)?;
    db.batch(PG_APPEND)?;
    db.execute(
        "INSERT INTO p11derive_meta (id, application, schema_version) VALUES (1, ?1, ?2)",
        &[Val::Int(APPLICATION_ID.into()), Val::Int(PG_BASE_VERSION)],
    )?;
    match apply_pg_upgrades(db) {
        Ok(()) => db.commit(),
        Err(e) => {
            db.rollback();
            Err(e)
        }
    }
}

/// Checks that a PostgreSQL database holds a p11derive schema this build
/// understands.
/// A read-only open of a store whose schema is older than this p11derive's:
/// refused, since upgrading it would write.
pub(super) fn too_old_to_read(loc: &Path, version: i64) -> StoreError {
    StoreError::Io(
        loc.to_path_buf(),
        format!(
            "schema version {version} is older than this p11derive's ({SCHEMA_VERSION}), and a \
             read-only command does not upgrade it: run a command that changes the store (or \
             load the provider) once as a user or role that may write it"
        ),
    )
}

pub(super) fn identify_pg(db: &mut Pg) -> Result<(), StoreError> {
    let loc = db.location().to_path_buf();
    if !pg::has_schema(db)? {
        return Err(StoreError::Missing(loc));
    }
    let meta = db.query(
        "SELECT application, schema_version FROM p11derive_meta",
        &[],
    )?;
    let (app, version) = meta
        .first()
        .and_then(|r| Some((r.int(0).ok()?, r.int(1).ok()?)))
        .ok_or_else(|| StoreError::Corrupt(loc.clone(), "p11derive_meta is empty".into()))?;
    identify(&loc, app, version)?;
    if version < i64::from(SCHEMA_VERSION) {
        if db.is_read_only() {
            return Err(too_old_to_read(&loc, version));
        }
        upgrade_pg(db)?;
    }
    Ok(())
}

/// Brings an older PostgreSQL store to `SCHEMA_VERSION`, in one transaction
/// under the writers' lock (another host may be upgrading it meanwhile:
/// the version is read again under the lock).
fn upgrade_pg(db: &mut Pg) -> Result<(), StoreError> {
    db.begin_write()?;
    match apply_pg_upgrades(db) {
        Ok(()) => db.commit(),
        Err(e) => {
            db.rollback();
            Err(e)
        }
    }
}

/// Inside the caller's transaction: the upgrades from the version the store
/// records (read again: another host may have upgraded it meanwhile) to
/// `SCHEMA_VERSION`.
fn apply_pg_upgrades(db: &mut Pg) -> Result<(), StoreError> {
    let loc = db.location().to_path_buf();
    let rows = db.query("SELECT schema_version FROM p11derive_meta", &[])?;
    let mut version = rows
        .first()
        .and_then(|r| r.int(0).ok())
        .ok_or_else(|| StoreError::Corrupt(loc.clone(), "p11derive_meta is empty".into()))?;
    for (from, sql) in PG_UPGRADES {
        if *from == version {
            for sql in *sql {
                db.batch(sql)?;
            }
            version += 1;
        }
    }
    if version != i64::from(SCHEMA_VERSION) {
        return Err(StoreError::Corrupt(
            loc.clone(),
            format!("schema version {version}: no upgrade from it to {SCHEMA_VERSION}"),
        ));
    }
    db.execute(
        "UPDATE p11derive_meta SET schema_version = ?1",
        &[Val::Int(version)],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// SQLite keeps each `CREATE` statement's text in the store: the
    /// migrations' SQL (and PostgreSQL's schema, to be sure) must stay byte
    /// for byte what stores were made with.
    /// The lock key the lane commit function takes shared is the one every
    /// other write transaction takes exclusive.
    #[test]
    fn lane_commits_and_write_transactions_share_one_lock() {
        let shared = format!("pg_advisory_xact_lock_shared({})", super::PG_WRITERS_LOCK);
        assert!(super::PG_LANES.contains(&shared));
    }

    #[test]
    fn migrations_are_unchanged() {
        assert_eq!(
            super::super::hex(&Sha256::digest(super::PG_SCHEMA)),
            "49989a139e7cb0411c6d79bdc69b367f699445ad2ad6be30cc346783b842b323"
        );
        assert_eq!(
            super::super::hex(&Sha256::digest(super::PG_APPEND)),
            "2982573c0e9e8f1c47550c55ee96764cc806e0f1d979d985e5eaa1e8d37e7bde"
        );
        let want = [
            "7e826cfc560d894afc776eaa389205ccb4bae393fa48c3475f202d3a2cfa51ac",
            "67de9c80014cae7f9d91785bcf6f15637f8c57df638141b6998994017974ef69",
            "42d21fc81e058ce9fc9f1ad731d2a4f24d640aec5b9f509c1e0236c133a7503c",
            "293b4494e8a5a33da40c318cc92b02258b504e2ca052aab16a8581c3452ac719",
            "9a6f58b98c77deb92925f0c226c194d58f2c7cf92ca977a15d056d866754f484",
            "fceed6485bca40ff153678db5940dc4d033a0650c67b10a4bf5c4f16016a7438",
            "e7c870d281690194b2ceec063a1d783f0b65180fe0a5aed772b783164dde3ea6",
            "aad44d39327ec5f2ff2e621317584be0a33c21622d2934b59f729143e9b15b34",
            "7f80520651bd951951e2d928e98d8c3df6e752e4acb4d7966c7df0a594d9325d",
            "4f9f94413a9c8ba9bfb3c4b650d2fe85e375d7005271e9cef5e50471bb991cbd",
            "ea561232f0cc0129b3be3fba5c957d22c06ff2741c5b3a96b7dbe79163d24856",
            "84ee76315d3466abad022f2b94b2b5fdacc07954da6461bfa831b159a63cd060",
            "5f33158abf52ab59cf1502d9c1366f0ab39edf6ca1c206644e1b18fd5853a2ee",
        ];
        assert_eq!(super::MIGRATIONS.len(), want.len());
        for (i, (sql, want)) in super::MIGRATIONS.iter().zip(want).enumerate() {
            assert_eq!(
                super::super::hex(&Sha256::digest(sql)),
                want,
                "migration {i}"
            );
        }
    }
}
