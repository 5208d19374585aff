//! The SQLite engine: one file per host, WAL, `BEGIN IMMEDIATE` for writers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::db::{Db, Row, Val};
use super::error::Need;
use super::readonly::check_write;
use super::schema::{identify, migrate, APPLICATION_ID};
use super::StoreError;
use crate::files::{self, Access};

/// Creates a new store file (it must not exist yet), marked as p11derive's,
/// with `access`'s mode and group (SQLite gives its `-wal` and `-shm` files
/// the same mode), in directories created with them too.
pub(super) fn create_file(path: &Path, access: &Access) -> Result<Connection, StoreError> {
    if path.exists() {
        return Err(StoreError::Exists(path.to_path_buf()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        files::create_dirs(dir, access).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                StoreError::Denied(path.to_path_buf(), Need::ReadWrite)
            }
            _ => StoreError::Io(dir.to_path_buf(), e.to_string()),
        })?;
    }
    // The file exists, empty, with its mode before SQLite opens it.
    files::create_new(path, access).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => StoreError::Exists(path.to_path_buf()),
        std::io::ErrorKind::PermissionDenied => {
            StoreError::Denied(path.to_path_buf(), Need::ReadWrite)
        }
        _ => StoreError::Io(path.to_path_buf(), e.to_string()),
    })?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| classify(path, e))?;
    conn.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID};"))
        .map_err(|e| classify(path, e))?;
    Ok(conn)
}

/// Opens an existing store file for reading and writing (the file and its
/// directory writable: else `ReadOnly`, or `Denied`), identified before anything could write to
/// it; its schema version.
pub(super) fn open_file(path: &Path) -> Result<(Connection, i32), StoreError> {
    check_write(path)?;
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
    identify(path, app.into(), version.into())?;
    // SQLite falls back to read-only when the file is not writable; the
    // store must be, and nothing is attempted on it otherwise.
    if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
        return Err(StoreError::ReadOnly(path.to_path_buf()));
    }
    Ok((conn, version))
}

/// Sets the store's pragmas, migrates its schema from `version`, and opens
/// the second (read-only) connection: (writer, reader).
pub(super) fn configure(
    path: &Path,
    mut conn: Connection,
    version: i32,
) -> Result<(Sqlite, Sqlite), StoreError> {
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
    Ok((Sqlite::new(path, conn), Sqlite::new(path, reader)))
}

/// SQLite: one file, WAL, `BEGIN IMMEDIATE` for writers.
pub struct Sqlite {
    conn: Connection,
    path: PathBuf,
    /// Opened for reading only: a write transaction is refused before
    /// SQLite is asked.
    read_only: bool,
}

impl Sqlite {
    pub fn new(path: &Path, conn: Connection) -> Sqlite {
        // Every statement a commit runs stays prepared (rusqlite keeps 16
        // by default; a commit under policies runs more than that, and a
        // statement evicted is parsed again at every batch).
        conn.set_prepared_statement_cache_capacity(128);
        Sqlite {
            conn,
            path: path.to_path_buf(),
            read_only: false,
        }
    }

    /// This connection, refusing every write transaction.
    pub(super) fn read_only(mut self) -> Sqlite {
        self.read_only = true;
        self
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        classify(&self.path, e)
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Val::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Val::Blob(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
        })
    }
}

fn sqlite_row(r: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Row> {
    (0..n)
        .map(|i| {
            Ok(match r.get_ref(i)? {
                ValueRef::Null => Val::Null,
                ValueRef::Integer(v) => Val::Int(v),
                // No column of a store holds a float: keep it as text, so
                // reading it fails with the value named.
                ValueRef::Real(v) => Val::Text(v.to_string()),
                ValueRef::Text(v) => Val::Text(String::from_utf8_lossy(v).into_owned()),
                ValueRef::Blob(v) => Val::Blob(v.to_vec()),
            })
        })
        .collect::<rusqlite::Result<Vec<_>>>()
        .map(Row)
}

impl Db for Sqlite {
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let run = || -> rusqlite::Result<Vec<Row>> {
            let mut st = self.conn.prepare_cached(sql)?;
            let n = st.column_count();
            let rows = st.query_map(rusqlite::params_from_iter(params), |r| sqlite_row(r, n))?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let run = || -> rusqlite::Result<usize> {
            self.conn
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params))
        };
        run().map(|n| n as u64).map_err(|e| self.err(e))
    }

    fn begin_write(&mut self) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::OpenedReadOnly(self.path.clone()));
        }
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(e))
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let done = self.conn.execute_batch("COMMIT").map_err(|e| self.err(e));
        if done.is_err() {
            // A failed COMMIT (disk full, say) leaves the transaction open.
            self.rollback();
        }
        done
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// A SQLite error as the store's error, naming the file.
pub(super) fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
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
        // SQLite's "unable to open database file" when this user may not
        // open the file or create its -wal and -shm files beside it.
        Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied)
            if files::may(path, libc::R_OK).is_err() =>
        {
            StoreError::Denied(p, Need::Read)
        }
        Some(ErrorCode::CannotOpen) | Some(ErrorCode::PermissionDenied) => {
            StoreError::Io(p, e.to_string())
        }
        _ => StoreError::Io(p, e.to_string()),
    }
}
