//! The `Store` facade: counter state and the audit chain, in SQLite or PostgreSQL.
//!
//! SQLite: one file shared by every process on the host that loads the
//! library, and by the command-line tool; PostgreSQL: shared by several hosts
//! (see `pg`).
//!
//! The file is marked with an application id and a schema version. A file that
//! is not a p11derive store, is from a newer p11derive, or is corrupt is
//! refused with a clear error and never modified.
//!
//! Rooms (the state machine they apply is `crate::asset`): `assets` (asset reads,
//! cache, creation, transitions), `state` (rows sealed under the state key, the
//! verified state changes, rollback caught while running), `audit` (the chain as stored), `commit`
//! (group commit of signatures), `objects` (certificates, data objects),
//! `schema` (both engines' schema and identity checks), `migrate` (store to
//! store), `error`; under them `db` (the engine interface), `sqlite`, `pg`.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

mod approvals;
mod archive;
mod assets;
mod audit;
mod checkpoints;
mod commit;
mod db;
mod error;
mod lanes;
mod limits;
mod metrics;
mod migrate;
mod objects;
pub mod pg;
mod pg_tls;
mod readonly;
mod recovery;
mod requests;
mod schema;
mod sqlite;
mod state;
mod users;

pub use crate::asset::{Asset, AssetState, NewAsset, Transition, VersionRecord};
pub use approvals::{
    approved_digest_lookup, sign_lookup, subject_of, ApproverRow, Execute, QuorumRow, RequestRow,
    VerdictLine,
};
pub use archive::{parse_archive_detail, ArchiveDetail, ArchiveRow, Prune, OPERATION_EVENTS_SQL};
pub use audit::{
    key_digest, parse_resumes_to, parse_transition_detail, transition_detail, AuditRow, ChainRows,
    PENDING_MARK, STREAM_BATCH,
};
pub use checkpoints::{CheckpointRow, CHECKPOINT_TRIES};
pub use commit::{users_refusal_rv, Refusal, Use};
pub use error::{Need, StoreError};
pub use lanes::{parse_lanes_detail, unhex32, LaneOrder, LaneRow, LaneRows};
pub use metrics::{lifecycle_kind, refusal_labels, Counts, Gauges};
pub use migrate::Moved;
pub use objects::StoredObject;
pub use recovery::{check_recovery, fingerprint_in, BackupFacts, FINGERPRINT_WORD};
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use state::{row_mac, state_key, STATE_KEY_INFO};
pub use users::{unix_now, LoginRow, PolicyRow, UserRow};

use crate::files::{self, Access};
use assets::AssetCache;
use commit::Group;
use db::{Db, Row, Tx, Val};

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
    /// Opened for reading only (`open_config_read_only`): nothing is ever
    /// written, not even the seals `authenticate` would add.
    read_only: bool,
    /// On PostgreSQL (shared by several hosts): cached assets are checked
    /// against the generation every `assets::POLL` (no LISTEN: PgBouncer's
    /// transaction pooling would not carry it).
    shared: bool,
    /// PostgreSQL: this process's lane (its head) and the asset generation
    /// as the last commit saw them (see `commit_batch_pg`).
    lane: Mutex<lanes::LaneHead>,
    /// PostgreSQL: round trips made by signature commits.
    round_trips: std::sync::atomic::AtomicU64,
    /// Assets read, valid while the store's asset generation (moved by
    /// trigger at every change to assets or versions, by any process) is
    /// unchanged: signing reads an asset at every C_SignInit.
    asset_cache: Mutex<AssetCache>,
    /// The state key, the verified state changes and the newest record
    /// seen (see `state`).
    state: Mutex<state::Guard>,
    /// The policies in force, parsed (see `users`).
    policy_cache: Mutex<Option<users::PolicyCache>>,
    /// Uses counted for rate limits (see `limits`).
    tallies: Mutex<limits::Tallies>,
    /// Users as commits read them (see `users`).
    user_cache: Mutex<users::UserCache>,
    /// The quorum rules in force, parsed (see `approvals`).
    quorum_cache: Mutex<Option<approvals::QuorumCache>>,
    /// How long a request the provider proposes collects approvals.
    request_lifetime: std::sync::atomic::AtomicI64,
    /// Approved signatures' requests used by this process's commits so far.
    approvals_spent: std::sync::atomic::AtomicU64,
}

/// A row type kept in one table: the columns a `SELECT` names, in the order
/// `read` takes them. A row `read` cannot read is corruption.
trait Stored: Sized {
    const TABLE: &'static str;
    const COLUMNS: &'static str;
    fn read(r: &Row) -> Result<Self, String>;
}

/// The first of a query's rows (after `Store::rows`), if any.
fn first<T>(rows: Vec<T>) -> Option<T> {
    rows.into_iter().next()
}

/// Now, in seconds since the epoch (as assets, versions and objects record it).
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Creates a new SQLite store (the file must not exist yet), private to
    /// its owner (0600).
    pub fn create(path: &Path) -> Result<Store, StoreError> {
        Store::create_with(path, &Access::Owner)
    }

    /// Creates a new SQLite store with `access`'s mode and group.
    pub fn create_with(path: &Path, access: &Access) -> Result<Store, StoreError> {
        let conn = sqlite::create_file(path, access)?;
        let store = Store::configure(path, conn, 0)?;
        files::settle_store(path, access);
        Ok(store)
    }

    /// Opens an existing SQLite store, migrating an older schema forward.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let (conn, version) = sqlite::open_file(path)?;
        Store::configure(path, conn, version)
    }

    /// The store a config names: PostgreSQL when `[store] url` is set, else
    /// the SQLite file at `[store] path`.
    /// A SQLite store file, its `-wal` or `-shm` that other users may read
    /// or write (or that is not `[store] group`'s) is logged as a warning
    /// naming the file, its mode and the fix.
    pub fn open_config(c: &crate::config::StoreSection) -> Result<Store, StoreError> {
        match &c.url {
            Some(_) => Store::open_pg(&pg::Target::of(c)?),
            None => {
                let access = Store::access(c)?;
                let store = Store::open(&c.path)?;
                files::settle_store(&c.path, &access);
                Ok(store)
            }
        }
    }

    /// Opens the store a config names for reading only, for the commands
    /// that only read (asset list/show/pubkey, audit export/tail/verify,
    /// status, verify): it writes nothing at all, so a user who may only
    /// read the store (a SQLite file they may read, a PostgreSQL role with
    /// SELECT) can use it. Every write is refused with
    /// [`StoreError::OpenedReadOnly`]. A SQLite store of an older schema is
    /// refused (a read-only open does not migrate).
    pub fn open_config_read_only(c: &crate::config::StoreSection) -> Result<Store, StoreError> {
        match &c.url {
            Some(_) => Store::open_pg_with(&pg::Target::of(c)?, true),
            None => {
                let store = Store::open_read_only(&c.path)?;
                // Files other users can read are reported as at every
                // open (nothing is changed: this open writes nothing).
                if let Ok(access) = Store::access(c) {
                    files::report(&files::store_files(&c.path), &access);
                }
                Ok(store)
            }
        }
    }

    /// Opens an existing SQLite store for reading only (see
    /// `open_config_read_only`).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let (conn, reader) = readonly::open_file(path)?;
        let mut store =
            Store::assemble(path.to_path_buf(), Box::new(conn), Box::new(reader), false);
        store.read_only = true;
        Ok(store)
    }

    /// Whether this user may open the SQLite store at `path` to change it
    /// (the rule a read-write open checks first), asked without opening it.
    pub fn may_write(path: &Path) -> bool {
        readonly::check_write(path).is_ok()
    }

    /// Whether the store was opened for reading only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Creates the store a config names (`p11derive init`): a SQLite file
    /// 0600, or 0660 and owned by `[store] group`.
    pub fn create_config(c: &crate::config::StoreSection) -> Result<Store, StoreError> {
        match &c.url {
            Some(_) => Store::create_pg(&pg::Target::of(c)?),
            None => Store::create_with(&c.path, &Store::access(c)?),
        }
    }

    /// Who may use the SQLite files, as `[store] group` says.
    fn access(c: &crate::config::StoreSection) -> Result<Access, StoreError> {
        Access::of(c.group.as_deref()).map_err(|m| StoreError::Io(c.path.clone(), m))
    }

    /// Creates the p11derive schema in an empty PostgreSQL database.
    pub fn create_pg(target: &pg::Target) -> Result<Store, StoreError> {
        let mut db = pg::Pg::new(target)?;
        schema::create_pg(&mut db)?;
        drop(db);
        Store::open_pg(target)
    }

    /// Opens a PostgreSQL store (two connections: writes, and reads).
    pub fn open_pg(target: &pg::Target) -> Result<Store, StoreError> {
        Store::open_pg_with(target, false)
    }

    /// Opens a PostgreSQL store; `read_only`: every transaction of both
    /// connections read-only (`default_transaction_read_only`, set when
    /// connecting: no statement writes), an older schema refused rather
    /// than upgraded.
    fn open_pg_with(target: &pg::Target, read_only: bool) -> Result<Store, StoreError> {
        let mut db = pg::Pg::new(target)?;
        let mut reader = pg::Pg::new(target)?;
        if read_only {
            db.set_read_only();
            reader.set_read_only();
        }
        let loc = db.location().to_path_buf();
        schema::identify_pg(&mut db)?;
        let mut store = Store::assemble(loc, Box::new(db), Box::new(reader), true);
        store.read_only = read_only;
        Ok(store)
    }

    fn configure(
        path: &Path,
        conn: rusqlite::Connection,
        version: i32,
    ) -> Result<Store, StoreError> {
        let (conn, reader) = sqlite::configure(path, conn, version)?;
        Ok(Store::assemble(
            path.to_path_buf(),
            Box::new(conn),
            Box::new(reader),
            false,
        ))
    }

    fn assemble(path: PathBuf, conn: Box<dyn Db>, reader: Box<dyn Db>, shared: bool) -> Store {
        Store {
            path,
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            read_only: false,
            shared,
            lane: Mutex::new(lanes::LaneHead::default()),
            group: Mutex::new(Group::default()),
            batches: std::sync::atomic::AtomicU64::new(0),
            batched_records: std::sync::atomic::AtomicU64::new(0),
            commits: std::sync::atomic::AtomicU64::new(0),
            round_trips: std::sync::atomic::AtomicU64::new(0),
            asset_cache: Mutex::new(AssetCache::default()),
            state: Mutex::new(state::Guard::default()),
            policy_cache: Mutex::new(None),
            tallies: Mutex::new(limits::Tallies::default()),
            user_cache: Mutex::new((None, std::collections::HashMap::new())),
            quorum_cache: Mutex::new(None),
            request_lifetime: std::sync::atomic::AtomicI64::new(86_400),
            approvals_spent: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Where the store is: the SQLite file, or the PostgreSQL URL without
    /// its password.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the store is on PostgreSQL.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Db>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Db>> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rows of a query, each read by `f` (`.map(first)`: the first row); a row `f` cannot read is
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

    /// The rows of `T`'s table that `tail` (`WHERE` and `ORDER BY`, which
    /// may use `params`) selects.
    fn select<T: Stored>(
        &self,
        db: &mut dyn Db,
        tail: &str,
        params: &[Val],
    ) -> Result<Vec<T>, StoreError> {
        let sql = format!("SELECT {} FROM {} {tail}", T::COLUMNS, T::TABLE);
        self.rows(db, &sql, params, T::read)
    }

    /// Commits a write transaction that appended up to `head`, which this
    /// process has then seen.
    fn commit_at(&self, tx: Tx<'_>, head: crate::audit::Head) -> Result<(), StoreError> {
        self.commit(tx)?;
        self.saw((head.seq, head.mac));
        Ok(())
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
}

/// Bytes as lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A new SQLite store at `dir/s.db`, begun with its `init` record, and
/// the audit key that sealed it (for unit tests).
#[cfg(test)]
pub(crate) fn initialized_for_test(dir: &Path) -> (Store, crate::secure::Secret<32>) {
    let store = Store::create(&dir.join("s.db")).unwrap();
    let ak = crate::secure::secret::<32>().unwrap();
    store
        .record(
            Some(&ak),
            crate::audit::Record::new(crate::audit::Event::Init, crate::ck::CKR_OK),
        )
        .unwrap();
    (store, ak)
}
