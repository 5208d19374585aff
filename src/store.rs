//! Counter state in SQLite: one file shared by every process on the host that
//! loads the library, and by the command-line tool.
//!
//! The file is marked with an application id and a schema version. A file that
//! is not a p11derive store, is from a newer p11derive, or is corrupt is
//! refused with a clear error and never modified.

#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::audit::{public_key_mac, Event, Record, GENESIS};
use crate::derive::{AssetId, KeyType, Secret32};

/// `PRAGMA application_id` of a p11derive store ("P1DR").
pub const APPLICATION_ID: i32 = 0x5031_4452;
/// The schema this build writes. Older stores are migrated forward.
pub const SCHEMA_VERSION: i32 = 6;

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
    "CREATE TABLE audit (
        seq          INTEGER PRIMARY KEY,
        time_ns      INTEGER NOT NULL,
        pid          INTEGER NOT NULL,
        session      INTEGER,
        event        TEXT NOT NULL,
        asset        TEXT,
        version      INTEGER,
        mechanism    INTEGER,
        input_sha256 BLOB,
        rv           INTEGER NOT NULL,
        detail       TEXT NOT NULL,
        mac          BLOB NOT NULL
    );
    CREATE TABLE audit_pending (
        id           INTEGER PRIMARY KEY,
        time_ns      INTEGER NOT NULL,
        pid          INTEGER NOT NULL,
        session      INTEGER,
        event        TEXT NOT NULL,
        asset        TEXT,
        version      INTEGER,
        mechanism    INTEGER,
        input_sha256 BLOB,
        rv           INTEGER NOT NULL,
                detail       TEXT NOT NULL
    );",
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
];

/// A public token object as stored: a certificate or a data object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The row id: never reused (AUTOINCREMENT), so handles stay unique.
    pub rowid: i64,
    /// `CKO_CERTIFICATE` or `CKO_DATA`.
    pub class: crate::ck::CK_OBJECT_CLASS,
    pub label: Vec<u8>,
    /// `CKA_ID` (certificates; empty for data objects).
    pub object_id: Vec<u8>,
    pub value: Vec<u8>,
    /// `CKA_APPLICATION` and `CKA_OBJECT_ID` of a data object.
    pub application: Option<Vec<u8>>,
    pub oid: Option<Vec<u8>>,
}

const OBJECT_COLUMNS: &str = "id, class, label, object_id, value, application, oid";

fn read_object_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredObject> {
    Ok(StoredObject {
        rowid: r.get(0)?,
        class: r.get::<_, i64>(1)? as crate::ck::CK_OBJECT_CLASS,
        label: r.get(2)?,
        object_id: r.get(3)?,
        value: r.get(4)?,
        application: r.get(5)?,
        oid: r.get(6)?,
    })
}

/// The columns of an asset row, in the order [`read_asset_row`] reads them.
const ASSET_COLUMNS: &str =
    "id, name, key_type, object_id, current, min_usable, state, created_at, resume_state";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetState {
    Active,
    Rotating,
    Suspended,
    Retired,
}

impl AssetState {
    pub fn name(self) -> &'static str {
        match self {
            AssetState::Active => "ACTIVE",
            AssetState::Rotating => "ROTATING",
            AssetState::Suspended => "SUSPENDED",
            AssetState::Retired => "RETIRED",
        }
    }

    pub fn parse(s: &str) -> Option<AssetState> {
        [
            AssetState::Active,
            AssetState::Rotating,
            AssetState::Suspended,
            AssetState::Retired,
        ]
        .into_iter()
        .find(|st| st.name() == s)
    }
}

/// One version of an asset as recorded: its counter and (EC) public point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub version: u32,
    pub public_key: Option<Vec<u8>>,
    /// `audit::public_key_mac` of the public key, as recorded.
    pub pk_mac: Option<Vec<u8>>,
}

/// An asset as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// The row id: stable for the life of the store, used for object handles.
    pub rowid: i64,
    pub id: AssetId,
    pub key_type: KeyType,
    /// `CKA_ID` of the alias (the creator's, or the default object id).
    pub object_id: Vec<u8>,
    pub current: u32,
    pub min_usable: u32,
    pub state: AssetState,
    pub created_at: i64,
    /// For a SUSPENDED asset, the state `resume` returns it to.
    pub resumes_to: AssetState,
    /// Usable versions (`min_usable..=current`), newest first.
    pub versions: Vec<VersionRecord>,
}

impl Asset {
    pub fn version(&self, n: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == n)
    }

    /// Whether version `n` exists for callers: not trimmed, not retired.
    pub fn is_usable(&self, n: u32) -> bool {
        self.state != AssetState::Retired && (self.min_usable..=self.current).contains(&n)
    }

    /// Whether version `n` may sign (or encrypt) now: the current version
    /// while ACTIVE; during ROTATING the previous one too (the grace window).
    pub fn may_sign(&self, n: u32) -> bool {
        if !self.is_usable(n) {
            return false;
        }
        match self.state {
            AssetState::Active => n == self.current,
            AssetState::Rotating => n.saturating_add(1) >= self.current,
            AssetState::Suspended | AssetState::Retired => false,
        }
    }

    /// Whether version `n` may verify (or decrypt) now: any usable version,
    /// unless the asset is suspended.
    pub fn may_verify(&self, n: u32) -> bool {
        self.is_usable(n) && matches!(self.state, AssetState::Active | AssetState::Rotating)
    }

    /// Whether a derived key of version `n` may stay cached: EC keys only
    /// while they may sign, secret keys while they may still decrypt or
    /// verify too.
    pub fn may_hold_key(&self, n: u32) -> bool {
        self.may_sign(n) || (!self.key_type.is_ec() && self.may_verify(n))
    }

    /// The newest version that may still sign during a grace window, i.e.
    /// the previous one while ROTATING (or suspended from ROTATING).
    fn grace_version(&self) -> Option<u32> {
        let rotating = self.state == AssetState::Rotating
            || (self.state == AssetState::Suspended && self.resumes_to == AssetState::Rotating);
        rotating.then(|| self.current.saturating_sub(1))
    }
}

/// A lifecycle transition (design §3). Anything not allowed from the asset's
/// state is refused with an error that names the asset, state and transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// current + 1; with `grace` the asset goes ROTATING and the previous
    /// version may still sign until `Finish`.
    Rotate {
        grace: bool,
    },
    Finish,
    /// Raise `min_usable` to N.
    Trim(u32),
    Suspend,
    Resume,
    Retire,
}

impl Transition {
    pub fn name(&self) -> String {
        match self {
            Transition::Rotate { grace: false } => "rotate".into(),
            Transition::Rotate { grace: true } => "rotate --grace".into(),
            Transition::Finish => "finish".into(),
            Transition::Trim(n) => format!("trim {n}"),
            Transition::Suspend => "suspend".into(),
            Transition::Resume => "resume".into(),
            Transition::Retire => "retire".into(),
        }
    }
}

/// A new asset with its first version.
pub struct NewAsset<'a> {
    pub id: &'a AssetId,
    pub key_type: KeyType,
    pub object_id: &'a [u8],
    pub public_key: Option<&'a [u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    Missing(PathBuf),
    Exists(PathBuf),
    Foreign(PathBuf),
    Newer(PathBuf, i32),
    Corrupt(PathBuf, String),
    ReadOnly(PathBuf),
    /// A name or object id that is already taken (`what` says which).
    Duplicate(String),
    /// No asset of that name.
    NotFound(String),
    /// A transition the asset's state does not allow (the message says why).
    Refused(String),
    /// The asset changed between reading it and committing (retry).
    Conflict(String),
    /// The backing HSM's root is not the one the store's audit chain was
    /// written with.
    OtherRoot(PathBuf),
    /// The chain's newest record (this seq) does not verify under the right key.
    Tampered(PathBuf, u64),
    Io(PathBuf, String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Missing(p) => write!(
                f,
                "store {} does not exist; create it with `p11derive init` (or fix [store] path)",
                p.display()
            ),
            StoreError::Exists(p) => write!(f, "store {} already exists", p.display()),
            StoreError::Foreign(p) => write!(
                f,
                "{} is not a p11derive store (another program's file?); it was not modified: \
                 fix [store] path",
                p.display()
            ),
            StoreError::Newer(p, v) => write!(
                f,
                "store {} has schema version {v}, newer than this p11derive understands \
                 ({SCHEMA_VERSION}); it was not modified: upgrade p11derive",
                p.display()
            ),
            StoreError::Corrupt(p, e) => write!(
                f,
                "store {} is unreadable or corrupt ({e}); it was not modified: restore it from \
                 a backup",
                p.display()
            ),
            StoreError::ReadOnly(p) => write!(
                f,
                "store {} is read-only; give this process write access to the file and its \
                 directory",
                p.display()
            ),
            StoreError::Duplicate(what) => write!(f, "{what}"),
            StoreError::NotFound(name) => {
                write!(f, "no asset named {name:?} (see `p11derive asset list`)")
            }
            StoreError::Refused(why) => write!(f, "{why}"),
            StoreError::Conflict(why) => write!(f, "{why}"),
            StoreError::OtherRoot(p) => write!(
                f,
                "the audit key derived from the backing HSM's root does not verify the newest \
                 record of store {}: the store belongs to another root. Nothing was written; check \
                                 [backend] token_label and root_label, and [store] path",
                p.display()
            ),
            StoreError::Tampered(p, seq) => write!(
                f,
                "the newest audit record of store {} (record {seq}) does not verify: the store was \
                 changed outside p11derive. Nothing was written; run `p11derive audit verify`",
                p.display()
            ),
            StoreError::Io(p, e) => write!(f, "store {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for StoreError {}

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Operations waiting for their commit (group commit, see `commit_use`).
    group: Mutex<Group>,
    /// Commits of signatures so far, and the records they carried.
    batches: std::sync::atomic::AtomicU64,
    batched_records: std::sync::atomic::AtomicU64,
    /// Write transactions committed (each one an fsync: synchronous=FULL).
    commits: std::sync::atomic::AtomicU64,
    /// A second connection for the reads every operation makes, so they
    /// never wait behind a commit's fsync on `conn` (WAL: readers and the
    /// writer do not block each other).
    reader: Mutex<Connection>,
    /// Assets read, valid while the store's asset generation (moved by
    /// trigger at every change to assets or versions, by any process) is
    /// unchanged: signing reads an asset at every C_SignInit.
    asset_cache: Mutex<AssetCache>,
}

#[derive(Default)]
struct AssetCache {
    generation: i64,
    assets: std::collections::HashMap<i64, Asset>,
}

/// One signature waiting to commit.
struct Job {
    id: u64,
    rowid: i64,
    version: u32,
    /// What the version must still be allowed to do at commit.
    need: Use,
    record: Record,
    /// The thread waiting for this job's result.
    waiter: std::thread::Thread,
}

/// What an operation does with a version, re-checked at its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Sign or encrypt: the current version (or the previous one in a grace
    /// window).
    Produce,
    /// Verify or decrypt: any usable version of an asset not suspended.
    Open,
}

/// What a job's commit decided: committed, refused (with the asset as it
/// was), or failed.
type JobResult = Result<Result<(), Option<Asset>>, StoreError>;

#[derive(Default)]
struct Group {
    queue: Vec<Job>,
    leader: bool,
    next_id: u64,
    done: std::collections::HashMap<u64, JobResult>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Creates a new store (the file must not exist yet).
    pub fn create(path: &Path) -> Result<Store, StoreError> {
        if path.exists() {
            return Err(StoreError::Exists(path.to_path_buf()));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Io(dir.to_path_buf(), e.to_string()))?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(path, e))?;
        conn.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID};"))
            .map_err(|e| classify(path, e))?;
        let store = Store::configure(path, conn)?;
        store.migrate(0)?;
        Ok(store)
    }

    /// Opens an existing store, migrating an older schema forward.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(path, e))?;
        // Identify the file before anything could write to it.
        let app: i32 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| classify(path, e))?;
        let version: i32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| classify(path, e))?;
        if app != APPLICATION_ID {
            return Err(StoreError::Foreign(path.to_path_buf()));
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::Newer(path.to_path_buf(), version));
        }
        // SQLite falls back to read-only when the file is not writable; the
        // store must be, and nothing is attempted on it otherwise.
        // A file without write permission is read-only even for root, who
        // could write it anyway: its owner meant it not to change.
        let no_write_bits = std::fs::metadata(path)
            .map(|m| m.permissions().readonly())
            .unwrap_or(false);
        if no_write_bits || conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
            return Err(StoreError::ReadOnly(path.to_path_buf()));
        }
        let store = Store::configure(path, conn)?;
        store.migrate(version)?;
        Ok(store)
    }

    fn configure(path: &Path, conn: Connection) -> Result<Store, StoreError> {
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| classify(path, e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA secure_delete = ON;",
        )
        .map_err(|e| classify(path, e))?;
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(path, e))?;
        reader
            .busy_timeout(Duration::from_secs(10))
            .map_err(|e| classify(path, e))?;
        reader
            .execute_batch("PRAGMA query_only = ON;")
            .map_err(|e| classify(path, e))?;
        Ok(Store {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            group: Mutex::new(Group::default()),
            batches: std::sync::atomic::AtomicU64::new(0),
            batched_records: std::sync::atomic::AtomicU64::new(0),
            commits: std::sync::atomic::AtomicU64::new(0),
            asset_cache: Mutex::new(AssetCache::default()),
        })
    }

    fn migrate(&self, from: i32) -> Result<(), StoreError> {
        let mut conn = self.lock();
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| self.err(e))?;
            // Another process may have migrated while we waited for the lock.
            let seen: i32 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            if seen > SCHEMA_VERSION {
                // A newer p11derive migrated it while we waited: hands off.
                return Err(StoreError::Newer(self.path.clone(), seen));
            }
            if seen > i as i32 {
                continue;
            }
            tx.execute_batch(sql).map_err(|e| self.err(e))?;
            tx.execute_batch(&format!("PRAGMA user_version = {};", i + 1))
                .map_err(|e| self.err(e))?;
            self.commit(tx)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A row-level error found before the path was known.
    fn at_path(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Corrupt(_, m) => StoreError::Corrupt(self.path.clone(), m),
            e => e,
        }
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        classify(&self.path, e)
    }

    /// Every asset that is not retired, in creation order.
    pub fn list_assets(&self) -> Result<Vec<Asset>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ASSET_COLUMNS} FROM assets WHERE state != 'RETIRED' ORDER BY id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], read_asset_row)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        drop(stmt);
        let mut assets = Vec::with_capacity(rows.len());
        for row in rows {
            assets.push(self.finish_asset(&conn, row.map_err(|e| self.at_path(e))?)?);
        }
        Ok(assets)
    }

    /// One asset by row id (retired ones included: the caller decides).
    /// Served from the cache while no connection changed the store.
    pub fn asset(&self, rowid: i64) -> Result<Option<Asset>, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        // Read before the asset: a change committed in between is cached
        // under the older generation and read again next time.
        let generation: i64 = conn
            .prepare_cached("SELECT assets FROM generation")
            .and_then(|mut st| st.query_row([], |r| r.get(0)))
            .map_err(|e| self.err(e))?;
        let mut cache = self.asset_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.generation != generation {
            cache.assets.clear();
            cache.generation = generation;
        }
        if let Some(a) = cache.assets.get(&rowid) {
            return Ok(Some(a.clone()));
        }
        let asset = match self.asset_row(&conn, rowid)? {
            None => return Ok(None),
            Some(a) => self.finish_asset(&conn, a)?,
        };
        cache.assets.insert(rowid, asset.clone());
        Ok(Some(asset))
    }

    /// Drops the cached assets after this process changed one (the
    /// generation moves too; this only saves a read).
    fn forget_assets(&self) {
        self.asset_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .assets
            .clear();
    }

    fn finish_asset(&self, conn: &Connection, mut a: Asset) -> Result<Asset, StoreError> {
        a.versions = self.versions_in(conn, a.rowid, a.min_usable, a.current)?;
        Ok(a)
    }

    /// Versions `from..=to` of an asset, newest first.
    fn versions_in(
        &self,
        conn: &Connection,
        rowid: i64,
        from: u32,
        to: u32,
    ) -> Result<Vec<VersionRecord>, StoreError> {
        let mut stmt = conn
            .prepare_cached(
                "SELECT version, public_key, pk_mac FROM versions
                 WHERE asset = ?1 AND version BETWEEN ?2 AND ?3 ORDER BY version DESC",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![rowid, from, to], read_version_row)
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
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
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let taken: Option<String> = tx
            .query_row(
                "SELECT state FROM assets WHERE name = ?1",
                [new.id.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        // A name stays taken by its creation record even if someone deleted
        // its row: a retired asset's keys must never come back.
        let recorded: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM audit WHERE event = 'create' AND asset = ?1)",
                [new.id.as_str()],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if taken.is_none() && recorded {
            return Err(StoreError::Duplicate(format!(
                "asset {:?} was created before (its creation is in the audit log) and is missing \
                 from the store; asset ids are unique forever: choose another label, and run \
                 `p11derive audit verify`",
                new.id.as_str()
            )));
        }
        if let Some(state) = taken {
            return Err(StoreError::Duplicate(format!(
                "asset {:?} already exists (state {state}); asset ids are unique forever: choose \
                 another label",
                new.id.as_str()
            )));
        }
        // Object ids must stay unambiguous: a new id may equal neither another
        // asset's id nor one of its version ids (id || u32be(N)), and none of
        // the new asset's version ids may equal another asset's id.
        let mut stmt = tx
            .prepare("SELECT name, object_id FROM assets")
            .map_err(|e| self.err(e))?;
        let owners = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        drop(stmt);
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
        tx.execute(
            "INSERT INTO assets (name, key_type, object_id, current, min_usable, state, created_at)
             VALUES (?1, ?2, ?3, 1, 1, 'ACTIVE', ?4)",
            params![new.id.as_str(), new.key_type.name(), new.object_id, t],
        )
        .map_err(|e| self.err(e))?;
        let rowid = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO versions (asset, version, public_key, created_at, pk_mac)
             VALUES (?1, 1, ?2, ?3, ?4)",
            params![
                rowid,
                new.public_key,
                t,
                new.public_key
                    .map(|pk| public_key_mac(ak, new.id.as_str(), 1, pk).to_vec())
            ],
        )
        .map_err(|e| self.err(e))?;
        let mut rec = base;
        rec.event = Event::Create;
        rec.asset = Some(new.id.to_string());
        rec.version = Some(1);
        rec.detail = format!(
            "create {} id={} pk={} -> ACTIVE current=1 min_usable=1",
            new.key_type.name(),
            hex(new.object_id),
            key_digest(new.public_key)
        );
        self.append_in(&tx, ak, std::slice::from_mut(&mut rec))?;
        self.commit(tx)?;
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
                pk_mac: new
                    .public_key
                    .map(|pk| public_key_mac(ak, new.id.as_str(), 1, pk).to_vec()),
            }],
        })
    }
}

impl Store {
    /// One asset by name, retired ones included.
    pub fn asset_by_name(&self, name: &AssetId) -> Result<Option<Asset>, StoreError> {
        let conn = self.lock();
        self.asset_by_name_in(&conn, name)
    }

    fn asset_by_name_in(
        &self,
        conn: &Connection,
        name: &AssetId,
    ) -> Result<Option<Asset>, StoreError> {
        let row = conn
            .query_row(
                &format!("SELECT {ASSET_COLUMNS} FROM assets WHERE name = ?1"),
                [name.as_str()],
                read_asset_row,
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some(
                self.finish_asset(conn, row.map_err(|e| self.at_path(e))?)?,
            )),
        }
    }

    /// Every recorded version of an asset, trimmed ones included, newest first.
    pub fn history(&self, rowid: i64) -> Result<Vec<VersionRecord>, StoreError> {
        let conn = self.lock();
        self.versions_in(&conn, rowid, 1, u32::MAX)
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
        let result = self.transition_in(name, t, next, ak, base.clone());
        if let Err(StoreError::Refused(why)) = &result {
            // The refusal itself is audited (the transition rolled back).
            let mut rec = base;
            rec.event = Event::Refused;
            rec.asset = Some(name.to_string());
            rec.rv = crate::ck::CKR_ACTION_PROHIBITED;
            rec.detail = why.clone();
            self.record(Some(ak), rec)?;
        }
        result
    }

    fn transition_in(
        &self,
        name: &AssetId,
        t: Transition,
        next: Option<(u32, Option<&[u8]>)>,
        ak: &Secret32,
        base: Record,
    ) -> Result<Asset, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let a = self
            .asset_by_name_in(&tx, name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let refuse = |why: String| {
            Err(StoreError::Refused(format!(
                "asset {:?} is {}: {} refused: {why}",
                name.as_str(),
                a.state.name(),
                t.name()
            )))
        };
        use AssetState::*;
        let update = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> Result<(), StoreError> {
            tx.execute(sql, p).map(|_| ()).map_err(|e| self.err(e))
        };
        match (t, a.state) {
            (_, Retired) => return refuse("a retired asset is final".into()),
            (Transition::Rotate { grace }, Active) => {
                let Some(new) = a.current.checked_add(1) else {
                    return refuse("the counter is at its maximum (4294967295)".into());
                };
                // An EC version without its public key could never be verified
                // (or signed: the derived key is checked against it); the
                // caller derives again for the state it reads next.
                let ready = |(v, pk): &(u32, Option<&[u8]>)| {
                    *v == new && (pk.is_some() || !a.key_type.is_ec())
                };
                let Some((version, public_key)) = next.filter(ready) else {
                    return Err(StoreError::Conflict(format!(
                        "asset {:?} changed while its new version was derived (now at version \
                         {}); try again",
                        name.as_str(),
                        a.current
                    )));
                };
                let state = if grace { Rotating } else { Active };
                update(
                    "UPDATE assets SET current = ?1, state = ?2 WHERE id = ?3",
                    &[&version, &state.name(), &a.rowid],
                )?;
                update(
                    "INSERT INTO versions (asset, version, public_key, created_at, pk_mac)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    &[
                        &a.rowid,
                        &version,
                        &public_key,
                        &now(),
                        &public_key
                            .map(|pk| public_key_mac(ak, name.as_str(), version, pk).to_vec()),
                    ],
                )?;
            }
            (Transition::Rotate { .. }, Rotating) => {
                return refuse(format!(
                "version {} is still in its grace window; run `p11derive asset finish {}` first",
                a.current.saturating_sub(1),
                name.as_str()
            ))
            }
            (Transition::Rotate { .. }, Suspended) => {
                return refuse(format!(
                    "resume it first (`p11derive asset resume {}`)",
                    name.as_str()
                ))
            }
            (Transition::Finish, Rotating) => {
                update(
                    "UPDATE assets SET state = 'ACTIVE' WHERE id = ?1",
                    &[&a.rowid],
                )?;
            }
            (Transition::Finish, _) => return refuse("only a ROTATING asset can finish".into()),
            (Transition::Trim(n), _) => {
                if n <= a.min_usable {
                    return refuse(format!(
                        "versions below {} are already trimmed; trim only raises min_usable",
                        a.min_usable
                    ));
                }
                if n > a.current {
                    return refuse(format!(
                        "the current version is {}; trim cannot go above it",
                        a.current
                    ));
                }
                if let Some(grace) = a.grace_version().filter(|g| n > *g) {
                    return refuse(format!(
                        "version {grace} is still in its grace window; finish the rotation first"
                    ));
                }
                update(
                    "UPDATE assets SET min_usable = ?1 WHERE id = ?2",
                    &[&n, &a.rowid],
                )?;
            }
            (Transition::Suspend, Active | Rotating) => {
                update(
                    "UPDATE assets SET state = 'SUSPENDED', resume_state = ?1 WHERE id = ?2",
                    &[&a.state.name(), &a.rowid],
                )?;
            }
            (Transition::Suspend, _) => return refuse("it is already suspended".into()),
            (Transition::Resume, Suspended) => {
                update(
                    "UPDATE assets SET state = ?1, resume_state = NULL WHERE id = ?2",
                    &[&a.resumes_to.name(), &a.rowid],
                )?;
            }
            (Transition::Resume, _) => return refuse("only a SUSPENDED asset can resume".into()),
            (Transition::Retire, _) => {
                update(
                    "UPDATE assets SET state = 'RETIRED', resume_state = NULL WHERE id = ?1",
                    &[&a.rowid],
                )?;
            }
        }
        let after = self
            .asset_by_name_in(&tx, name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
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
        self.append_in(&tx, ak, std::slice::from_mut(&mut rec))?;
        self.commit(tx)?;
        self.forget_assets();
        Ok(after)
    }

    /// An asset's row read afresh (without its versions): the last check
    /// before an operation's result leaves, so a transition committed by any
    /// process before this read is honoured.
    pub fn fresh_state(&self, rowid: i64) -> Result<Option<Asset>, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        self.asset_row(&conn, rowid)
    }

    /// The asset row `rowid` (its versions not loaded).
    fn asset_row(&self, conn: &Connection, rowid: i64) -> Result<Option<Asset>, StoreError> {
        let row = conn
            .prepare_cached(&format!("SELECT {ASSET_COLUMNS} FROM assets WHERE id = ?1"))
            .and_then(|mut st| st.query_row([rowid], read_asset_row).optional())
            .map_err(|e| self.err(e))?;
        row.map(|a| a.map_err(|e| self.at_path(e))).transpose()
    }
}

/// The mark a record sealed from the pending table carries in its detail.
pub const PENDING_MARK: &str = "[written without the audit key, sealed later] ";

/// SHA-256 of a recorded public key, as creation and rotation records carry it
/// ("-" for a key type without one).
pub fn key_digest(public_key: Option<&[u8]>) -> String {
    use sha2::{Digest, Sha256};
    public_key.map_or_else(|| "-".into(), |pk| hex(&Sha256::digest(pk)))
}

/// A transition record's detail: what was done and the state it left, in a
/// form `audit verify` parses to reconcile the assets table with the log.
pub fn transition_detail(what: &str, after: &Asset) -> String {
    let resumes = match after.state {
        AssetState::Suspended => format!(" resumes={}", after.resumes_to.name()),
        _ => String::new(),
    };
    format!(
        "{what} -> {} current={} min_usable={}{resumes}",
        after.state.name(),
        after.current,
        after.min_usable
    )
}

/// What a suspension record says `resume` returns to (`None` when not suspended).
pub fn parse_resumes_to(detail: &str) -> Option<AssetState> {
    let (_, after) = detail.rsplit_once(" -> ")?;
    after
        .split(' ')
        .find_map(|w| w.strip_prefix("resumes="))
        .and_then(AssetState::parse)
}

/// The state a create or transition record says it left: (state, current, min_usable).
pub fn parse_transition_detail(detail: &str) -> Option<(AssetState, u32, u32)> {
    let (_, after) = detail.rsplit_once(" -> ")?;
    let mut parts = after.split(' ');
    let state = AssetState::parse(parts.next()?)?;
    let current = parts.next()?.strip_prefix("current=")?.parse().ok()?;
    let min = parts.next()?.strip_prefix("min_usable=")?.parse().ok()?;
    Some((state, current, min))
}

/// A `SELECT version, public_key, pk_mac` row.
fn read_version_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRecord> {
    Ok(VersionRecord {
        version: r.get(0)?,
        public_key: r.get(1)?,
        pk_mac: r.get(2)?,
    })
}

/// The columns of an audit row before its MAC, in [`Record`] order.
const AUDIT_COLUMNS: &str =
    "time_ns, pid, session, event, asset, version, mechanism, input_sha256, rv, detail";

/// Reads an audit row. A value no genuine record can hold (an unknown
/// event, a hash that is not 32 bytes) is an error naming the row, never
/// normalised into something the MAC check might accept.
fn read_record(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Record> {
    let event: String = r.get(first + 3)?;
    let hash: Option<Vec<u8>> = r.get(first + 7)?;
    let malformed = |what: String| {
        rusqlite::Error::FromSqlConversionFailure(first, rusqlite::types::Type::Blob, what.into())
    };
    let event =
        Event::parse(&event).ok_or_else(|| malformed(format!("unknown event {event:?}")))?;
    let input_sha256 = match hash {
        None => None,
        Some(h) => Some(
            <[u8; 32]>::try_from(h.as_slice())
                .map_err(|_| malformed(format!("an input hash of {} bytes", h.len())))?,
        ),
    };
    Ok(Record {
        seq: 0,
        time_ns: r.get::<_, i64>(first)? as u64,
        pid: r.get(first + 1)?,
        session: r.get::<_, Option<i64>>(first + 2)?.map(|v| v as u64),
        event,
        asset: r.get(first + 4)?,
        version: r.get(first + 5)?,
        mechanism: r.get::<_, Option<i64>>(first + 6)?.map(|v| v as u64),
        input_sha256,
        rv: r.get::<_, i64>(first + 8)? as u64,
        detail: r.get(first + 9)?,
    })
}

fn record_params(r: &Record) -> [Box<dyn rusqlite::ToSql + '_>; 10] {
    [
        Box::new(r.time_ns as i64),
        Box::new(r.pid),
        Box::new(r.session.map(|v| v as i64)),
        Box::new(r.event.name()),
        Box::new(r.asset.as_deref()),
        Box::new(r.version),
        Box::new(r.mechanism.map(|v| v as i64)),
        Box::new(r.input_sha256.map(|h| h.to_vec())),
        Box::new(r.rv as i64),
        Box::new(r.detail.as_str()),
    ]
}

/// One audit row as stored: the record and its MAC (as found, any length).
pub type AuditRow = (Record, Vec<u8>);

impl Store {
    /// Appends records to the chain inside the caller's write transaction,
    /// first sealing records that processes without the audit key left pending.
    fn append_in(
        &self,
        tx: &Connection,
        ak: &Secret32,
        records: &mut [Record],
    ) -> Result<(), StoreError> {
        let (mut seq, mut prev) = self.head_in(tx)?.unwrap_or((0, GENESIS));
        let pending: Vec<(i64, Record)> = {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT id, {AUDIT_COLUMNS} FROM audit_pending ORDER BY id"
                ))
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, read_record(r, 1)?)))
                .map_err(|e| self.err(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?;
            rows
        };
        if !pending.is_empty() {
            tx.execute("DELETE FROM audit_pending", [])
                .map_err(|e| self.err(e))?;
        }
        let mut insert = tx
            .prepare_cached(&format!(
                "INSERT INTO audit (seq, {AUDIT_COLUMNS}, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ))
            .map_err(|e| self.err(e))?;
        let mut put = |r: &mut Record| -> Result<(), StoreError> {
            seq += 1;
            r.seq = seq;
            let mac = r.mac(ak, &prev);
            let p = record_params(r);
            let seq_i = seq as i64;
            let mut all: Vec<&dyn rusqlite::ToSql> = vec![&seq_i];
            all.extend(p.iter().map(|b| b.as_ref()));
            let mac_v = mac.to_vec();
            all.push(&mac_v);
            insert.execute(all.as_slice()).map_err(|e| self.err(e))?;
            prev = mac;
            Ok(())
        };
        for (_, mut r) in pending {
            // Written without the audit key: whoever wrote it is unproven.
            // Sealed with a mark, so it can never pass for an authenticated
            // record, and never counts towards an asset's state.
            r.detail = format!("{PENDING_MARK}{}", r.detail);
            put(&mut r)?;
        }
        for r in records.iter_mut() {
            put(r)?;
        }
        Ok(())
    }

    fn pend_in(&self, tx: &Connection, r: &Record) -> Result<(), StoreError> {
        let p = record_params(r);
        let all: Vec<&dyn rusqlite::ToSql> = p.iter().map(|b| b.as_ref()).collect();
        tx.execute(
            &format!("INSERT INTO audit_pending ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            all.as_slice(),
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Writes one record durably: into the chain when the audit key is at
    /// hand, else into the pending table for the next key holder to seal.
    pub fn record(&self, ak: Option<&Secret32>, mut r: Record) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        match ak {
            Some(ak) => self.append_in(&tx, ak, std::slice::from_mut(&mut r))?,
            None => self.pend_in(&tx, &r)?,
        }
        self.commit(tx)
    }

    /// Stores a public token object and appends its record, atomically.
    pub fn create_object(
        &self,
        new: &StoredObject,
        ak: &Secret32,
        mut record: Record,
    ) -> Result<StoredObject, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO objects (class, label, object_id, value, application, oid, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                new.class as i64,
                new.label,
                new.object_id,
                new.value,
                new.application,
                new.oid,
                now()
            ],
        )
        .map_err(|e| self.err(e))?;
        let rowid = tx.last_insert_rowid();
        record.detail = format!("{} (object {rowid})", record.detail);
        self.append_in(&tx, ak, std::slice::from_mut(&mut record))?;
        self.commit(tx)?;
        Ok(StoredObject {
            rowid,
            ..new.clone()
        })
    }

    /// Deletes a stored object and appends its record, atomically; `false`
    /// when it no longer exists.
    pub fn destroy_object(
        &self,
        rowid: i64,
        ak: &Secret32,
        mut record: Record,
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let gone = tx
            .execute("DELETE FROM objects WHERE id = ?1", [rowid])
            .map_err(|e| self.err(e))?;
        if gone == 0 {
            return Ok(false);
        }
        self.append_in(&tx, ak, std::slice::from_mut(&mut record))?;
        self.commit(tx)?;
        Ok(true)
    }

    /// One stored object.
    pub fn stored_object(&self, rowid: i64) -> Result<Option<StoredObject>, StoreError> {
        let conn = self.lock();
        conn.query_row(
            &format!("SELECT {OBJECT_COLUMNS} FROM objects WHERE id = ?1"),
            [rowid],
            read_object_row,
        )
        .optional()
        .map_err(|e| self.err(e))
    }

    /// Every stored object, oldest first.
    pub fn stored_objects(&self) -> Result<Vec<StoredObject>, StoreError> {
        let conn = self.lock();
        let mut st = conn
            .prepare(&format!("SELECT {OBJECT_COLUMNS} FROM objects ORDER BY id"))
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], read_object_row)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e));
        rows
    }

    /// The commit of a signature: re-reads the asset and appends either the
    /// signature's record (`Ok(Ok)`) or, when the version may no longer sign,
    /// a refusal record (`Ok(Err(asset))`), in a write transaction that is
    /// committed (`synchronous = FULL`: fsynced) before this returns. The
    /// caller releases the signature only after `Ok(Ok)`.
    ///
    /// Group commit: concurrent callers queue their jobs; one of them leads,
    /// taking every queued job into one transaction and one fsync, while the
    /// others wait for their result. Durability no longer serializes
    /// throughput: the more threads sign, the more records share a commit.
    pub fn commit_use(
        &self,
        ak: &Secret32,
        rowid: i64,
        version: u32,
        need: Use,
        record: Record,
    ) -> Result<Result<(), Option<Asset>>, StoreError> {
        let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
        let id = g.next_id;
        g.next_id += 1;
        g.queue.push(Job {
            id,
            rowid,
            version,
            need,
            record,
            waiter: std::thread::current(),
        });
        loop {
            if let Some(done) = g.done.remove(&id) {
                return done;
            }
            if !g.leader {
                g.leader = true;
                let batch = std::mem::take(&mut g.queue);
                drop(g);
                let ids: Vec<u64> = batch.iter().map(|j| j.id).collect();
                let waiters: Vec<std::thread::Thread> =
                    batch.iter().map(|j| j.waiter.clone()).collect();
                // A panic must not leave the leader's seat taken (every later
                // signer would wait forever): its batch gets an error instead.
                let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.commit_batch(ak, batch)
                }))
                .unwrap_or_else(|_| {
                    let e =
                        StoreError::Io(self.path.clone(), "internal error while committing".into());
                    ids.into_iter().map(|id| (id, Err(e.clone()))).collect()
                });
                g = self.group.lock().unwrap_or_else(|e| e.into_inner());
                g.done.extend(results);
                g.leader = false;
                // Wake exactly the threads whose records were committed, and
                // the first one queued meanwhile, to lead the next batch (a
                // broadcast would wake every waiter at every commit).
                let next = g.queue.first().map(|j| j.waiter.clone());
                drop(g);
                for w in waiters.iter().chain(next.iter()) {
                    if w.id() != std::thread::current().id() {
                        w.unpark();
                    }
                }
                g = self.group.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            drop(g);
            // Woken by the leader that committed this job, or to lead; a
            // spurious wake-up just checks again.
            std::thread::park();
            g = self.group.lock().unwrap_or_else(|e| e.into_inner());
        }
    }

    /// One transaction for a batch of signatures: each job's asset is read
    /// in it, each record appended, one commit.
    fn commit_batch(&self, ak: &Secret32, mut batch: Vec<Job>) -> Vec<(u64, JobResult)> {
        let outcome = (|| -> Result<Vec<Result<(), Option<Asset>>>, StoreError> {
            let mut conn = self.lock();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| self.err(e))?;
            let mut decisions = Vec::with_capacity(batch.len());
            let mut records = Vec::with_capacity(batch.len());
            for job in batch.iter_mut() {
                let asset = self.asset_row(&tx, job.rowid)?;
                let allowed = asset.as_ref().is_some_and(|a| match job.need {
                    Use::Produce => a.may_sign(job.version),
                    Use::Open => a.may_verify(job.version),
                });
                let mut r = job.record.clone();
                if !allowed {
                    let what = r.event.name();
                    r.event = Event::Refused;
                    r.rv = crate::ck::CKR_KEY_FUNCTION_NOT_PERMITTED;
                    r.detail = match &asset {
                        Some(a) => format!(
                            "{what} refused at commit: asset is {} at version {} (min_usable {})",
                            a.state.name(),
                            a.current,
                            a.min_usable
                        ),
                        None => format!("{what} refused at commit: asset gone"),
                    };
                }
                records.push(r);
                decisions.push(if allowed { Ok(()) } else { Err(asset) });
            }
            self.append_in(&tx, ak, &mut records)?;
            self.commit(tx)?;
            Ok(decisions)
        })();
        use std::sync::atomic::Ordering::Relaxed;
        self.batches.fetch_add(1, Relaxed);
        self.batched_records.fetch_add(batch.len() as u64, Relaxed);
        match outcome {
            Ok(decisions) => batch
                .iter()
                .map(|j| j.id)
                .zip(decisions.into_iter().map(Ok))
                .collect(),
            Err(e) => batch.iter().map(|j| (j.id, Err(e.clone()))).collect(),
        }
    }

    /// (commits, records) of signatures so far: records per fsync.
    /// Commits a write transaction, counting it.
    fn commit(&self, tx: rusqlite::Transaction<'_>) -> Result<(), StoreError> {
        tx.commit().map_err(|e| self.err(e))?;
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Write transactions (fsyncs) committed by this process so far.
    pub fn fsyncs(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn commit_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.batches.load(Relaxed),
            self.batched_records.load(Relaxed),
        )
    }

    /// Every row from `since_seq` on (`i64::MIN`: all rows, whatever their seq).
    pub fn audit_rows(&self, since_seq: i64) -> Result<Vec<AuditRow>, StoreError> {
        self.chain_rows("WHERE seq >= ?1 ORDER BY seq", since_seq)
    }

    /// The newest record of the chain: (seq, mac).
    pub fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let conn = self.lock();
        self.head_in(&conn)
    }

    /// The newest (seq, mac) as seen by `conn`. A MAC of the wrong length
    /// reads as all 0xff: whatever chains from it, or is anchored to it,
    /// fails verification at that record.
    fn head_in(&self, conn: &Connection) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let head: Option<(i64, Vec<u8>)> = conn
            .prepare_cached("SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1")
            .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(|e| self.err(e))?;
        Ok(head.map(|(s, m)| (s as u64, m.try_into().unwrap_or([0xffu8; 32]))))
    }

    /// Before a process writes with a freshly derived audit key: the chain's
    /// newest record must verify under it. When it does not, the first record
    /// tells why: under the same key it still verifies (the store was changed:
    /// `Tampered`), under another root's key it does not (`OtherRoot`).
    /// Appending in either case would chain onto something unproven.
    pub fn check_root(&self, ak: &Secret32) -> Result<(), StoreError> {
        let head = self.chain_rows("ORDER BY seq DESC LIMIT 2", 0)?;
        let Some((last, mac)) = head.first() else {
            return Ok(());
        };
        let prev = match head.get(1) {
            Some((_, m)) => m.as_slice().try_into().unwrap_or([0xffu8; 32]),
            None => GENESIS,
        };
        if last.mac(ak, &prev)[..] == mac[..] {
            return Ok(());
        }
        let first = self.chain_rows("ORDER BY seq LIMIT 1", 0)?;
        match first.first() {
            Some((r, m)) if r.mac(ak, &GENESIS)[..] == m[..] => {
                Err(StoreError::Tampered(self.path.clone(), last.seq))
            }
            _ => Err(StoreError::OtherRoot(self.path.clone())),
        }
    }

    /// Chain rows selected by `tail` (which may use `?1` = `param`). A row
    /// numbered below 1 is an error naming it: no genuine record has one.
    fn chain_rows(&self, tail: &str, param: i64) -> Result<Vec<AuditRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT seq, {AUDIT_COLUMNS}, mac FROM audit {tail}"
            ))
            .map_err(|e| self.err(e))?;
        let mut params: Vec<&dyn rusqlite::ToSql> = Vec::new();
        if tail.contains("?1") {
            params.push(&param);
        }
        let rows = stmt
            .query_map(params.as_slice(), |r| {
                let mut rec = read_record(r, 1)?;
                let seq: i64 = r.get(0)?;
                if seq < 1 {
                    return Err(rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Integer,
                        format!("a record numbered {seq} (records start at 1)").into(),
                    ));
                }
                rec.seq = seq as u64;
                Ok((rec, r.get::<_, Vec<u8>>(11)?))
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Whether the chain holds record `seq` with exactly this MAC.
    pub fn holds_record(&self, seq: u64, mac: &[u8; 32]) -> Result<bool, StoreError> {
        let conn = self.lock();
        let found: Option<Vec<u8>> = conn
            .query_row("SELECT mac FROM audit WHERE seq = ?1", [seq as i64], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(found.as_deref() == Some(&mac[..]))
    }

    /// Records waiting to be sealed into the chain.
    pub fn pending_rows(&self) -> Result<Vec<Record>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_pending ORDER BY id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| read_record(r, 0))
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Every asset, retired ones included (for reconciliation).
    pub fn all_assets(&self) -> Result<Vec<Asset>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!("SELECT {ASSET_COLUMNS} FROM assets ORDER BY id"))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], read_asset_row)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|a| a.map_err(|e| self.at_path(e)))
            .collect()
    }
}

type RowResult = Result<Asset, StoreError>;

fn read_asset_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowResult> {
    let name: String = r.get(1)?;
    let kt: String = r.get(2)?;
    let state: String = r.get(6)?;
    let bad = |what: String| Err(StoreError::Corrupt(PathBuf::new(), what));
    let Ok(id) = AssetId::new(&name) else {
        return Ok(bad(format!("invalid asset id {name:?}")));
    };
    let Some(key_type) = KeyType::from_name(&kt) else {
        return Ok(bad(format!("asset {name:?} has unknown key type {kt:?}")));
    };
    let Some(state) = AssetState::parse(&state) else {
        return Ok(bad(format!("asset {name:?} has unknown state {state:?}")));
    };
    let resumes_to = match r.get::<_, Option<String>>(8)?.as_deref() {
        Some("ROTATING") => AssetState::Rotating,
        _ => AssetState::Active,
    };
    Ok(Ok(Asset {
        resumes_to,
        rowid: r.get(0)?,
        id,
        key_type,
        object_id: r.get(3)?,
        current: r.get(4)?,
        min_usable: r.get(5)?,
        state,
        created_at: r.get(7)?,
        versions: Vec::new(),
    }))
}

fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    let p = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt(p, e.to_string())
        }
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly(p),
        // SQLite's own text ("database or disk is full") says neither which
        // nor what to do. The failed write is rolled back (every writer runs
        // in a transaction), and the connection stays usable.
        Some(ErrorCode::DiskFull) => StoreError::Io(
            p,
            format!(
                "the file system holding it (and its -wal file) is full ({e}); the write was \
                 rolled back: free space there, and p11derive carries on without a restart"
            ),
        ),
        Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => {
            StoreError::Io(p, e.to_string())
        }
        _ => StoreError::Io(p, e.to_string()),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
