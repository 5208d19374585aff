//! Counter state and the audit chain: in SQLite (one file shared by every
//! process on the host that loads the library, and by the command-line tool)
//! or in PostgreSQL (shared by several hosts; see `pg`).
//!
//! The file is marked with an application id and a schema version. A file that
//! is not a p11derive store, is from a newer p11derive, or is corrupt is
//! refused with a clear error and never modified.

#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

mod db;
pub mod pg;

use db::{Db, Row, Sqlite, Tx, Val};

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

fn read_object_row(r: &Row) -> Result<StoredObject, String> {
    Ok(StoredObject {
        rowid: r.int(0)?,
        class: r.int(1)? as crate::ck::CK_OBJECT_CLASS,
        label: r.blob(2)?,
        object_id: r.blob(3)?,
        value: r.blob(4)?,
        application: r.opt_blob(5)?,
        oid: r.opt_blob(6)?,
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
                "store {} does not exist; create it with `p11derive init` (or fix [store] path, or url)",
                p.display()
            ),
            StoreError::Exists(p) => write!(f, "store {} already exists", p.display()),
            StoreError::Foreign(p) => write!(
                f,
                "{} is not a p11derive store (another program's file?); it was not modified: \
                 fix [store] path (or url)",
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
                                 [backend] token_label and root_label, and [store] path (or url)",
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
    conn: Mutex<Box<dyn Db>>,
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
    reader: Mutex<Box<dyn Db>>,
    /// PostgreSQL: the connection that LISTENs for asset changes by any host.
    listener: Option<Mutex<pg::Pg>>,
    /// PostgreSQL: the chain's head (seq, mac) and the asset generation as
    /// the last commit saw them (see `commit_batch_pg`).
    believed: Mutex<Option<(u64, [u8; 32], i64)>>,
    /// PostgreSQL: round trips made by signature commits.
    round_trips: std::sync::atomic::AtomicU64,
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
    /// Creates a new SQLite store (the file must not exist yet).
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
        Store::configure(path, conn, 0)
    }

    /// Opens an existing SQLite store, migrating an older schema forward.
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
        Store::configure(path, conn, version)
    }

    /// The store a config names: PostgreSQL when `[store] url` is set, else
    /// the SQLite file at `[store] path`.
    pub fn open_config(c: &crate::config::StoreSection) -> Result<Store, StoreError> {
        match &c.url {
            Some(url) => Store::open_pg(url, Duration::from_millis(c.connect_timeout_ms)),
            None => Store::open(&c.path),
        }
    }

    /// Creates the store a config names (`p11derive init`).
    pub fn create_config(c: &crate::config::StoreSection) -> Result<Store, StoreError> {
        match &c.url {
            Some(url) => Store::create_pg(url, Duration::from_millis(c.connect_timeout_ms)),
            None => Store::create(&c.path),
        }
    }

    /// Creates the p11derive schema in an empty PostgreSQL database.
    pub fn create_pg(url: &str, timeout: Duration) -> Result<Store, StoreError> {
        let mut db = pg::Pg::new(url, timeout)?;
        let loc = db.location().to_path_buf();
        db.begin_plain()?;
        if pg::has_schema(&mut db)? {
            db.rollback();
            return Err(StoreError::Exists(loc));
        }
        db.batch(pg::SCHEMA)?;
        db.execute(
            "INSERT INTO p11derive_meta (id, application, schema_version) VALUES (1, ?1, ?2)",
            &[
                Val::Int(APPLICATION_ID.into()),
                Val::Int(SCHEMA_VERSION.into()),
            ],
        )?;
        db.commit()?;
        drop(db);
        Store::open_pg(url, timeout)
    }

    /// Opens a PostgreSQL store (three connections: writes, reads, and one
    /// that listens for asset changes made by any host).
    pub fn open_pg(url: &str, timeout: Duration) -> Result<Store, StoreError> {
        let mut db = pg::Pg::new(url, timeout)?;
        let loc = db.location().to_path_buf();
        if !pg::has_schema(&mut db)? {
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
        if app != i64::from(APPLICATION_ID) {
            return Err(StoreError::Foreign(loc));
        }
        if version > i64::from(SCHEMA_VERSION) {
            return Err(StoreError::Newer(loc, version as i32));
        }
        let reader = pg::Pg::new(url, timeout)?;
        let mut listener = pg::Pg::new(url, timeout)?;
        listener.listen("p11derive_assets")?;
        Ok(Store::assemble(
            loc,
            Box::new(db),
            Box::new(reader),
            Some(listener),
        ))
    }

    fn assemble(
        path: PathBuf,
        conn: Box<dyn Db>,
        reader: Box<dyn Db>,
        listener: Option<pg::Pg>,
    ) -> Store {
        Store {
            path,
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            listener: listener.map(Mutex::new),
            believed: Mutex::new(None),
            group: Mutex::new(Group::default()),
            batches: std::sync::atomic::AtomicU64::new(0),
            batched_records: std::sync::atomic::AtomicU64::new(0),
            commits: std::sync::atomic::AtomicU64::new(0),
            round_trips: std::sync::atomic::AtomicU64::new(0),
            asset_cache: Mutex::new(AssetCache::default()),
        }
    }

    fn configure(path: &Path, mut conn: Connection, version: i32) -> Result<Store, StoreError> {
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| classify(path, e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA secure_delete = ON;",
        )
        .map_err(|e| classify(path, e))?;
        migrate(path, &mut conn, version)?;
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
        Ok(Store::assemble(
            path.to_path_buf(),
            Box::new(Sqlite::new(path, conn)),
            Box::new(Sqlite::new(path, reader)),
            None,
        ))
    }

    /// Where the store is: the SQLite file, or the PostgreSQL URL without
    /// its password.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the store is on PostgreSQL.
    pub fn is_shared(&self) -> bool {
        self.listener.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Db>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Db>> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rows of a query, each read by `f`; a row `f` cannot read is
    /// corruption, named with the store.
    fn rows<T>(
        &self,
        db: &mut dyn Db,
        sql: &str,
        params: &[Val],
        f: impl Fn(&Row) -> Result<T, String>,
    ) -> Result<Vec<T>, StoreError> {
        db.query(sql, params)?
            .iter()
            .map(|r| f(r).map_err(|m| StoreError::Corrupt(self.path.clone(), m)))
            .collect()
    }

    /// The first row of a query, read by `f`.
    fn row<T>(
        &self,
        db: &mut dyn Db,
        sql: &str,
        params: &[Val],
        f: impl Fn(&Row) -> Result<T, String>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.rows(db, sql, params, f)?.into_iter().next())
    }

    /// Every asset that is not retired, in creation order.
    pub fn list_assets(&self) -> Result<Vec<Asset>, StoreError> {
        let mut conn = self.lock();
        let rows = self.rows(
            &mut **conn,
            &format!("SELECT {ASSET_COLUMNS} FROM assets WHERE state != 'RETIRED' ORDER BY id"),
            &[],
            read_asset_row,
        )?;
        rows.into_iter()
            .map(|a| self.finish_asset(&mut **conn, a))
            .collect()
    }

    /// One asset by row id (retired ones included: the caller decides).
    /// Served from the cache while no connection changed the store: SQLite
    /// reads the generation (one cheap read); PostgreSQL is told of every
    /// change by a notification, and the commit re-checks the generation.
    pub fn asset(&self, rowid: i64) -> Result<Option<Asset>, StoreError> {
        let mut conn = self.read_lock();
        let generation = match &self.listener {
            None => Some(self.generation(&mut **conn)?),
            Some(l) => {
                let mut l = l.lock().unwrap_or_else(|e| e.into_inner());
                // Without the listener, nothing cached can be trusted.
                if l.notified().unwrap_or(true) {
                    self.forget_assets();
                }
                None
            }
        };
        let mut cache = self.asset_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = generation.filter(|g| *g != cache.generation) {
            cache.assets.clear();
            cache.generation = g;
        }
        // PostgreSQL: a notification takes a moment to arrive; an asset in a
        // refusing state is read again rather than refused from the cache
        // (a resume on another host is honoured at once; a suspension or a
        // rotation there is enforced at the commit whatever the cache says).
        let trusted = |a: &Asset| {
            generation.is_some() || matches!(a.state, AssetState::Active | AssetState::Rotating)
        };
        if let Some(a) = cache.assets.get(&rowid).filter(|a| trusted(a)) {
            return Ok(Some(a.clone()));
        }
        let asset = match self.asset_row(&mut **conn, rowid)? {
            None => return Ok(None),
            Some(a) => self.finish_asset(&mut **conn, a)?,
        };
        cache.assets.insert(rowid, asset.clone());
        Ok(Some(asset))
    }

    /// The store's asset generation (moved by every change to assets or
    /// versions, by any process).
    fn generation(&self, db: &mut dyn Db) -> Result<i64, StoreError> {
        self.row(db, "SELECT assets FROM generation", &[], |r| r.int(0))?
            .ok_or_else(|| StoreError::Corrupt(self.path.clone(), "no generation row".into()))
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

    fn finish_asset(&self, db: &mut dyn Db, mut a: Asset) -> Result<Asset, StoreError> {
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
        self.rows(
            db,
            "SELECT version, public_key, pk_mac FROM versions
             WHERE asset = ?1 AND version BETWEEN ?2 AND ?3 ORDER BY version DESC",
            &[rowid.into(), from.into(), to.into()],
            read_version_row,
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
        let taken = self.row(
            &mut *tx,
            "SELECT state FROM assets WHERE name = ?1",
            std::slice::from_ref(&name),
            |r| r.text(0),
        )?;
        // A name stays taken by its creation record even if someone deleted
        // its row: a retired asset's keys must never come back.
        let recorded = self
            .row(
                &mut *tx,
                "SELECT COUNT(*) FROM audit WHERE event = 'create' AND asset = ?1",
                std::slice::from_ref(&name),
                |r| r.int(0),
            )?
            .unwrap_or(0)
            > 0;
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
            .row(
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
            )?
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
            "create {} id={} pk={} -> ACTIVE current=1 min_usable=1",
            new.key_type.name(),
            hex(new.object_id),
            key_digest(new.public_key)
        );
        self.append_in(&mut *tx, ak, std::slice::from_mut(&mut rec))?;
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
                pk_mac,
            }],
        })
    }
}

/// Upgrades a SQLite store's schema from `from` to `SCHEMA_VERSION`.
fn migrate(path: &Path, conn: &mut Connection, from: i32) -> Result<(), StoreError> {
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

impl Store {
    /// One asset by name, retired ones included.
    pub fn asset_by_name(&self, name: &AssetId) -> Result<Option<Asset>, StoreError> {
        let mut conn = self.lock();
        self.asset_by_name_in(&mut **conn, name)
    }

    fn asset_by_name_in(
        &self,
        db: &mut dyn Db,
        name: &AssetId,
    ) -> Result<Option<Asset>, StoreError> {
        let row = self.row(
            db,
            &format!("SELECT {ASSET_COLUMNS} FROM assets WHERE name = ?1"),
            &[name.as_str().into()],
            read_asset_row,
        )?;
        row.map(|a| self.finish_asset(db, a)).transpose()
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
        let mut tx = Tx::begin(&mut **conn)?;
        let a = self
            .asset_by_name_in(&mut *tx, name)?
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
        let mut update =
            |sql: &str, p: &[Val]| -> Result<(), StoreError> { tx.execute(sql, p).map(|_| ()) };
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
                    &[a.rowid.into()],
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
                    &[n.into(), a.rowid.into()],
                )?;
            }
            (Transition::Suspend, Active | Rotating) => {
                update(
                    "UPDATE assets SET state = 'SUSPENDED', resume_state = ?1 WHERE id = ?2",
                    &[a.state.name().into(), a.rowid.into()],
                )?;
            }
            (Transition::Suspend, _) => return refuse("it is already suspended".into()),
            (Transition::Resume, Suspended) => {
                update(
                    "UPDATE assets SET state = ?1, resume_state = NULL WHERE id = ?2",
                    &[a.resumes_to.name().into(), a.rowid.into()],
                )?;
            }
            (Transition::Resume, _) => return refuse("only a SUSPENDED asset can resume".into()),
            (Transition::Retire, _) => {
                update(
                    "UPDATE assets SET state = 'RETIRED', resume_state = NULL WHERE id = ?1",
                    &[a.rowid.into()],
                )?;
            }
        }
        let after = self
            .asset_by_name_in(&mut *tx, name)?
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
        self.append_in(&mut *tx, ak, std::slice::from_mut(&mut rec))?;
        self.commit(tx)?;
        self.forget_assets();
        Ok(after)
    }

    /// An asset's row read afresh (without its versions): the last check
    /// before an operation's result leaves, so a transition committed by any
    /// process before this read is honoured.
    pub fn fresh_state(&self, rowid: i64) -> Result<Option<Asset>, StoreError> {
        let mut conn = self.read_lock();
        self.asset_row(&mut **conn, rowid)
    }

    /// The asset row `rowid` (its versions not loaded).
    fn asset_row(&self, db: &mut dyn Db, rowid: i64) -> Result<Option<Asset>, StoreError> {
        self.row(
            db,
            &format!("SELECT {ASSET_COLUMNS} FROM assets WHERE id = ?1"),
            &[rowid.into()],
            read_asset_row,
        )
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
fn read_version_row(r: &Row) -> Result<VersionRecord, String> {
    Ok(VersionRecord {
        version: r.u32(0)?,
        public_key: r.opt_blob(1)?,
        pk_mac: r.opt_blob(2)?,
    })
}

/// The columns of an audit row before its MAC, in [`Record`] order.
const AUDIT_COLUMNS: &str =
    "time_ns, pid, session, event, asset, version, mechanism, input_sha256, rv, detail";

/// Reads an audit row. A value no genuine record can hold (an unknown
/// event, a hash that is not 32 bytes) is an error naming the row, never
/// normalised into something the MAC check might accept.
fn read_record(r: &Row, first: usize) -> Result<Record, String> {
    let event = r.text(first + 3)?;
    let event = Event::parse(&event).ok_or_else(|| format!("unknown event {event:?}"))?;
    let input_sha256 = match r.opt_blob(first + 7)? {
        None => None,
        Some(h) => Some(
            <[u8; 32]>::try_from(h.as_slice())
                .map_err(|_| format!("an input hash of {} bytes", h.len()))?,
        ),
    };
    Ok(Record {
        seq: 0,
        time_ns: r.int(first)? as u64,
        pid: r.u32(first + 1)?,
        session: r.opt_int(first + 2)?.map(|v| v as u64),
        event,
        asset: r.opt_text(first + 4)?,
        version: r.opt_u32(first + 5)?,
        mechanism: r.opt_int(first + 6)?.map(|v| v as u64),
        input_sha256,
        rv: r.int(first + 8)? as u64,
        detail: r.text(first + 9)?,
    })
}

fn record_params(r: &Record) -> Vec<Val> {
    vec![
        Val::Int(r.time_ns as i64),
        r.pid.into(),
        r.session.map(|v| v as i64).into(),
        r.event.name().into(),
        r.asset.as_deref().into(),
        r.version.into(),
        r.mechanism.map(|v| v as i64).into(),
        r.input_sha256.map(|h| h.to_vec()).into(),
        Val::Int(r.rv as i64),
        r.detail.as_str().into(),
    ]
}

/// One audit row as stored: the record and its MAC (as found, any length).
pub type AuditRow = (Record, Vec<u8>);

impl Store {
    /// Appends records to the chain inside the caller's write transaction,
    /// first sealing records that processes without the audit key left pending.
    fn append_in(
        &self,
        tx: &mut dyn Db,
        ak: &Secret32,
        records: &mut [Record],
    ) -> Result<(), StoreError> {
        let (mut seq, mut prev) = self.head_in(tx)?.unwrap_or((0, GENESIS));
        let pending = self.rows(
            tx,
            &format!("SELECT id, {AUDIT_COLUMNS} FROM audit_pending ORDER BY id"),
            &[],
            |r| read_record(r, 1),
        )?;
        if !pending.is_empty() {
            tx.execute("DELETE FROM audit_pending", &[])?;
        }
        let insert = format!(
            "INSERT INTO audit (seq, {AUDIT_COLUMNS}, mac) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        );
        let mut put = |r: &mut Record| -> Result<(), StoreError> {
            seq += 1;
            r.seq = seq;
            let mac = r.mac(ak, &prev);
            let mut all = vec![Val::Int(seq as i64)];
            all.extend(record_params(r));
            all.push(mac.to_vec().into());
            tx.execute(&insert, &all)?;
            prev = mac;
            Ok(())
        };
        for mut r in pending {
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

    /// Writes one record durably: into the chain when the audit key is at
    /// hand, else into the pending table for the next key holder to seal.
    pub fn record(&self, ak: Option<&Secret32>, mut r: Record) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let mut tx = Tx::begin(&mut **conn)?;
        match ak {
            Some(ak) => self.append_in(&mut *tx, ak, std::slice::from_mut(&mut r))?,
            None => {
                tx.execute(
                    &format!(
                        "INSERT INTO audit_pending ({AUDIT_COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                    ),
                    &record_params(&r),
                )?;
            }
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
        let mut tx = Tx::begin(&mut **conn)?;
        let rowid = self
            .row(
                &mut *tx,
                "INSERT INTO objects (class, label, object_id, value, application, oid, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                &[
                    Val::Int(new.class as i64),
                    new.label.as_slice().into(),
                    new.object_id.as_slice().into(),
                    new.value.as_slice().into(),
                    new.application.clone().into(),
                    new.oid.clone().into(),
                    now().into(),
                ],
                |r| r.int(0),
            )?
            .ok_or_else(|| StoreError::Io(self.path.clone(), "no id for the new object".into()))?;
        record.detail = format!("{} (object {rowid})", record.detail);
        self.append_in(&mut *tx, ak, std::slice::from_mut(&mut record))?;
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
        let mut tx = Tx::begin(&mut **conn)?;
        let gone = tx.execute("DELETE FROM objects WHERE id = ?1", &[rowid.into()])?;
        if gone == 0 {
            return Ok(false);
        }
        self.append_in(&mut *tx, ak, std::slice::from_mut(&mut record))?;
        self.commit(tx)?;
        Ok(true)
    }

    /// One stored object.
    pub fn stored_object(&self, rowid: i64) -> Result<Option<StoredObject>, StoreError> {
        let mut conn = self.lock();
        self.row(
            &mut **conn,
            &format!("SELECT {OBJECT_COLUMNS} FROM objects WHERE id = ?1"),
            &[rowid.into()],
            read_object_row,
        )
    }

    /// Every stored object, oldest first.
    pub fn stored_objects(&self) -> Result<Vec<StoredObject>, StoreError> {
        let mut conn = self.lock();
        self.rows(
            &mut **conn,
            &format!("SELECT {OBJECT_COLUMNS} FROM objects ORDER BY id"),
            &[],
            read_object_row,
        )
    }

    /// The commit of a signature: re-reads the asset and appends either the
    /// signature's record (`Ok(Ok)`) or, when the version may no longer sign,
    /// a refusal record (`Ok(Err(asset))`), in a write transaction that is
    /// committed (durably) before this returns. The caller releases the
    /// signature only after `Ok(Ok)`.
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

    /// Each job's decision on its asset as `asset` reads it (`None`: gone),
    /// and the record to append: the job's own, or a refusal.
    fn decide(job: &Job, asset: Option<Asset>) -> (Result<(), Option<Asset>>, Record) {
        let allowed = asset.as_ref().is_some_and(|a| match job.need {
            Use::Produce => a.may_sign(job.version),
            Use::Open => a.may_verify(job.version),
        });
        let mut r = job.record.clone();
        if allowed {
            return (Ok(()), r);
        }
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
        (Err(asset), r)
    }

    /// One transaction for a batch of signatures: each job's asset is read
    /// in it, each record appended, one commit.
    fn commit_batch(&self, ak: &Secret32, batch: Vec<Job>) -> Vec<(u64, JobResult)> {
        let outcome = if self.is_shared() {
            self.commit_batch_pg(ak, &batch)
        } else {
            self.commit_batch_tx(ak, &batch)
        };
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

    /// A batch's commit on PostgreSQL: one statement (`p11derive_append`),
    /// one round trip, while the head and generation this process believes
    /// current are: the records are MACed onto that head and each job decided
    /// on assets read at that generation. When another host wrote meanwhile,
    /// the statement writes nothing and returns the true head and generation:
    /// decide and MAC again (a second round trip). Records waiting in the
    /// pending table are sealed by the ordinary transaction instead, as is a
    /// batch that keeps losing the race to other hosts.
    fn commit_batch_pg(
        &self,
        ak: &Secret32,
        batch: &[Job],
    ) -> Result<Vec<Result<(), Option<Asset>>>, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut believed = self.believed.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..8 {
            let (seq, head, generation) = match *believed {
                Some(b) => b,
                None => self.learn_head()?,
            };
            let mut decisions = Vec::with_capacity(batch.len());
            let mut cols = PgColumns::default();
            let mut prev = head;
            let assets = self.assets_at(generation, batch)?;
            for (i, (job, asset)) in batch.iter().zip(assets).enumerate() {
                let (decision, mut r) = Store::decide(job, asset);
                r.seq = seq + 1 + i as u64;
                let m = r.mac(ak, &prev);
                cols.push(&r, &m);
                prev = m;
                decisions.push(decision);
            }
            // Whatever the outcome, the next batch starts from what it says.
            *believed = None;
            match self.append_pg(seq, &head, generation, &cols, &prev)? {
                Appended::Done => {
                    *believed = Some((seq + batch.len() as u64, prev, generation));
                    self.commits.fetch_add(1, Relaxed);
                    return Ok(decisions);
                }
                Appended::Stale(now) => *believed = Some(now),
                Appended::Unknown => {}
                Appended::Pending => break,
            }
        }
        // Records to seal, or other hosts kept winning the race: take the
        // writers' lock.
        *believed = None;
        drop(believed);
        self.commit_batch_tx(ak, batch)
    }

    /// The chain's head and the asset generation, read afresh.
    fn learn_head(&self) -> Result<(u64, [u8; 32], i64), StoreError> {
        let mut conn = self.lock();
        let head = self.head_in(&mut **conn)?;
        let generation = self.generation(&mut **conn)?;
        self.round_trips
            .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let (seq, mac) = head.unwrap_or((0, GENESIS));
        Ok((seq, mac, generation))
    }

    /// The batch's assets as of `generation`: from the cache, else read
    /// (entries read after the generation was learnt are at least as new;
    /// the commit statement confirms nothing moved). Lock order as in
    /// `asset`: the reader before the cache, never the other way round.
    fn assets_at(&self, generation: i64, batch: &[Job]) -> Result<Vec<Option<Asset>>, StoreError> {
        let cached: Vec<Option<Asset>> = {
            let mut cache = self.asset_cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.generation != generation {
                cache.assets.clear();
                cache.generation = generation;
            }
            batch
                .iter()
                .map(|j| cache.assets.get(&j.rowid).cloned())
                .collect()
        };
        let mut assets = Vec::with_capacity(batch.len());
        for (job, hit) in batch.iter().zip(cached) {
            if hit.is_some() {
                assets.push(hit);
                continue;
            }
            let mut conn = self.read_lock();
            self.round_trips
                .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
            let a = match self.asset_row(&mut **conn, job.rowid)? {
                Some(a) => Some(self.finish_asset(&mut **conn, a)?),
                None => None,
            };
            let mut cache = self.asset_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let (Some(a), true) = (&a, cache.generation == generation) {
                cache.assets.insert(job.rowid, a.clone());
            }
            assets.push(a);
        }
        Ok(assets)
    }

    /// Sends a batch's records (MACed onto `head`, at `seq`; the last MAC
    /// `last`) to `p11derive_append`.
    fn append_pg(
        &self,
        seq: u64,
        head: &[u8; 32],
        generation: i64,
        cols: &PgColumns,
        last: &[u8; 32],
    ) -> Result<Appended, StoreError> {
        let mut conn = self.lock();
        let pg = conn.as_pg().expect("a PostgreSQL store");
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let head_mac: Option<Vec<u8>> = (seq > 0).then(|| head.to_vec());
        let rows = pg.query_with(
            "SELECT r_ok, r_seq, r_mac, r_gen, r_pending FROM p11derive_append(\
             ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            &[
                &(seq as i64),
                &head_mac,
                &generation,
                &cols.time_ns,
                &cols.pid,
                &cols.session,
                &cols.event,
                &cols.asset,
                &cols.version,
                &cols.mechanism,
                &cols.input,
                &cols.rv,
                &cols.detail,
                &cols.mac,
            ],
        );
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) if !pg.take_dropped() => return Err(e),
            Err(e) => {
                // The connection closed under the statement: whether it
                // committed is learnt, not guessed. The batch's last MAC is
                // in the chain at its number exactly when it did.
                let n = seq + cols.mac.len() as u64;
                let found = self.row(
                    &mut **conn,
                    "SELECT mac FROM audit WHERE seq = ?1",
                    &[Val::Int(n as i64)],
                    |r| r.blob(0),
                );
                return match found {
                    Ok(Some(m)) if m[..] == last[..] => Ok(Appended::Done),
                    Ok(_) => Ok(Appended::Unknown),
                    Err(_) => Err(e),
                };
            }
        };
        let read = || -> Result<_, String> {
            let r = rows.first().ok_or("no row")?;
            let col = |e: postgres::Error| e.to_string();
            let ok: bool = r.try_get(0).map_err(col)?;
            let s: i64 = r.try_get(1).map_err(col)?;
            let m: Option<Vec<u8>> = r.try_get(2).map_err(col)?;
            let g: i64 = r.try_get(3).map_err(col)?;
            let pending: bool = r.try_get(4).map_err(col)?;
            Ok((ok, s, m, g, pending))
        };
        let (ok, s, m, g, pending) = read()
            .map_err(|e| StoreError::Io(self.path.clone(), format!("p11derive_append: {e}")))?;
        let m: [u8; 32] = match m {
            None => GENESIS,
            Some(m) => m.try_into().unwrap_or([0xffu8; 32]),
        };
        Ok(match (ok, pending) {
            (true, _) => Appended::Done,
            (false, true) => Appended::Pending,
            (false, false) => Appended::Stale((s as u64, m, g)),
        })
    }

    /// A batch in an ordinary write transaction (holding the writers' lock).
    fn commit_batch_tx(
        &self,
        ak: &Secret32,
        batch: &[Job],
    ) -> Result<Vec<Result<(), Option<Asset>>>, StoreError> {
        let mut conn = self.lock();
        let mut tx = Tx::begin(&mut **conn)?;
        let mut decisions = Vec::with_capacity(batch.len());
        let mut records = Vec::with_capacity(batch.len());
        for job in batch {
            let asset = self.asset_row(&mut *tx, job.rowid)?;
            let (decision, record) = Store::decide(job, asset);
            records.push(record);
            decisions.push(decision);
        }
        self.append_in(&mut *tx, ak, &mut records)?;
        self.commit(tx)?;
        Ok(decisions)
    }

    /// Commits a write transaction, counting it.
    fn commit(&self, tx: Tx<'_>) -> Result<(), StoreError> {
        tx.commit()?;
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Write transactions (fsyncs) committed by this process so far.
    pub fn fsyncs(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// (commits, records) of signatures so far: records per fsync.
    pub fn commit_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.batches.load(Relaxed),
            self.batched_records.load(Relaxed),
        )
    }

    /// Round trips to PostgreSQL made by signature commits so far.
    pub fn commit_round_trips(&self) -> u64 {
        self.round_trips.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every row from `since_seq` on (`i64::MIN`: all rows, whatever their seq).
    pub fn audit_rows(&self, since_seq: i64) -> Result<Vec<AuditRow>, StoreError> {
        self.chain_rows("WHERE seq >= ?1 ORDER BY seq", since_seq)
    }

    /// The newest record of the chain: (seq, mac).
    pub fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let mut conn = self.lock();
        self.head_in(&mut **conn)
    }

    /// The newest (seq, mac) as seen by `db`. A MAC of the wrong length
    /// reads as all 0xff: whatever chains from it, or is anchored to it,
    /// fails verification at that record.
    fn head_in(&self, db: &mut dyn Db) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.row(
            db,
            "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1",
            &[],
            |r| {
                let mac = r.blob(1)?;
                Ok((r.int(0)? as u64, mac.try_into().unwrap_or([0xffu8; 32])))
            },
        )
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
        let mut conn = self.lock();
        let params: &[Val] = if tail.contains("?1") {
            &[Val::Int(param)]
        } else {
            &[]
        };
        self.rows(
            &mut **conn,
            &format!("SELECT seq, {AUDIT_COLUMNS}, mac FROM audit {tail}"),
            params,
            |r| {
                let mut rec = read_record(r, 1)?;
                let seq = r.int(0)?;
                if seq < 1 {
                    return Err(format!("a record numbered {seq} (records start at 1)"));
                }
                rec.seq = seq as u64;
                Ok((rec, r.blob(11)?))
            },
        )
    }

    /// Whether the chain holds record `seq` with exactly this MAC.
    pub fn holds_record(&self, seq: u64, mac: &[u8; 32]) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let found = self.row(
            &mut **conn,
            "SELECT mac FROM audit WHERE seq = ?1",
            &[Val::Int(seq as i64)],
            |r| r.blob(0),
        )?;
        Ok(found.as_deref() == Some(&mac[..]))
    }

    /// Records waiting to be sealed into the chain.
    pub fn pending_rows(&self) -> Result<Vec<Record>, StoreError> {
        let mut conn = self.lock();
        self.rows(
            &mut **conn,
            &format!("SELECT {AUDIT_COLUMNS} FROM audit_pending ORDER BY id"),
            &[],
            |r| read_record(r, 0),
        )
    }

    /// Every asset, retired ones included (for reconciliation).
    pub fn all_assets(&self) -> Result<Vec<Asset>, StoreError> {
        let mut conn = self.lock();
        self.rows(
            &mut **conn,
            &format!("SELECT {ASSET_COLUMNS} FROM assets ORDER BY id"),
            &[],
            read_asset_row,
        )
    }
}

/// What `p11derive_append` did with a batch.
enum Appended {
    /// Committed.
    Done,
    /// Nothing written: the chain's head and the generation are these.
    Stale((u64, [u8; 32], i64)),
    /// The connection was lost under the statement, and the batch is not
    /// in the chain: nothing written.
    Unknown,
    /// Nothing written: records without the audit key wait to be sealed.
    Pending,
}

/// A batch's records as the commit function's arrays.
#[derive(Default)]
struct PgColumns {
    time_ns: Vec<i64>,
    pid: Vec<i64>,
    session: Vec<Option<i64>>,
    event: Vec<String>,
    asset: Vec<Option<String>>,
    version: Vec<Option<i64>>,
    mechanism: Vec<Option<i64>>,
    input: Vec<Option<Vec<u8>>>,
    rv: Vec<i64>,
    detail: Vec<String>,
    mac: Vec<Vec<u8>>,
}

impl PgColumns {
    fn push(&mut self, r: &Record, mac: &[u8; 32]) {
        self.time_ns.push(r.time_ns as i64);
        self.pid.push(r.pid.into());
        self.session.push(r.session.map(|v| v as i64));
        self.event.push(r.event.name().to_string());
        self.asset.push(r.asset.clone());
        self.version.push(r.version.map(i64::from));
        self.mechanism.push(r.mechanism.map(|v| v as i64));
        self.input.push(r.input_sha256.map(|h| h.to_vec()));
        self.rv.push(r.rv as i64);
        self.detail.push(r.detail.clone());
        self.mac.push(mac.to_vec());
    }
}

fn read_asset_row(r: &Row) -> Result<Asset, String> {
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

/// The tables a migration copies, in an order that satisfies their
/// references, with their columns.
const TABLES: &[(&str, &str)] = &[
    ("assets", ASSET_COLUMNS),
    (
        "versions",
        "asset, version, public_key, created_at, pk_mac",
    ),
    ("objects", "id, class, label, object_id, value, application, oid, created_at"),
    (
        "audit",
        "seq, time_ns, pid, session, event, asset, version, mechanism, input_sha256, rv, detail, mac",
    ),
    (
        "audit_pending",
        "id, time_ns, pid, session, event, asset, version, mechanism, input_sha256, rv, detail",
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
        let mut src_conn = self.lock();
        let mut src = Tx::begin(&mut **src_conn)?;
        let mut out_conn = dest.lock();
        let mut out = Tx::begin(&mut **out_conn)?;
        for (table, _) in TABLES {
            let n = dest
                .row(
                    &mut *out,
                    &format!("SELECT COUNT(*) FROM {table}"),
                    &[],
                    |r| r.int(0),
                )?
                .unwrap_or(0);
            if n > 0 {
                return Err(StoreError::Exists(dest.path.join(format!(
                    "(its {table} table holds {n} rows: migrate only into a new, empty store)"
                ))));
            }
        }
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
            }
            moved.push((*table, rows.len() as u64));
        }
        if dest.is_shared() {
            // Serial ids carry on after the copied ones.
            for table in ["assets", "objects", "audit_pending"] {
                out.query(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                         (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
                    ),
                    &[],
                )?;
            }
        }
        dest.commit(out)?;
        drop(src);
        drop((src_conn, out_conn));
        dest.forget_assets();
        for (table, n) in &moved {
            let mut conn = dest.lock();
            let found = dest
                .row(
                    &mut **conn,
                    &format!("SELECT COUNT(*) FROM {table}"),
                    &[],
                    |r| r.int(0),
                )?
                .unwrap_or(0);
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
}
