//! Opening a SQLite store for reading only, and the permission checks made before any open.
//!
//! A read-only open writes nothing: the file is opened `SQLITE_OPEN_READ_ONLY`,
//! no pragma that writes runs, no migration. A store in WAL mode needs its
//! `-wal` and `-shm` files to be read: while a writer has it open they exist
//! (with the store's mode, so a reader who may read the store may read them,
//! and SQLite reads a `-shm` it may not write into private memory). When the
//! last writer closed the store, SQLite checkpointed the `-wal` into the file
//! and deleted both; a reader that may not create them in the directory then
//! opens the file `immutable`: every committed change is in the file itself.
//! (A writer that starts during such a read appends to a new `-wal` the read
//! does not see; only its checkpoint, after 1000 pages or at its last close,
//! rewrites the file under the read, which may then fail as unreadable: run
//! the command again.) A `-wal` still holding changes that this user cannot
//! read is refused (a read would miss them), naming the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::error::Need;
use super::schema::{identify, too_old_to_read, SCHEMA_VERSION};
use super::sqlite::{classify, Sqlite};
use super::StoreError;
use crate::files;

/// The store file must exist and be readable: else `Missing`, or `Denied`
/// (for `need`) when this user may not see or read it.
pub(super) fn check_read(path: &Path, need: Need) -> Result<(), StoreError> {
    let denied = || StoreError::Denied(path.to_path_buf(), need);
    match std::fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::Missing(path.to_path_buf()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(denied()),
        Err(e) => return Err(StoreError::Io(path.to_path_buf(), e.to_string())),
    }
    match files::may(path, libc::R_OK) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(denied()),
        Err(e) => Err(StoreError::Io(path.to_path_buf(), e.to_string())),
    }
}

/// Before a read-write open: the file readable and writable, its directory
/// writable (SQLite creates the `-wal` and `-shm` files there). A file
/// without any write bit is read-only even for root, who could write it
/// anyway: its owner meant it not to change.
pub(super) fn check_write(path: &Path) -> Result<(), StoreError> {
    check_read(path, Need::ReadWrite)?;
    let no_write_bits = std::fs::metadata(path)
        .map(|m| m.permissions().readonly())
        .unwrap_or(false);
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    if no_write_bits
        || files::may(path, libc::W_OK).is_err()
        || files::may(&dir, libc::W_OK | libc::X_OK).is_err()
    {
        return Err(StoreError::ReadOnly(path.to_path_buf()));
    }
    Ok(())
}

/// `path` as a SQLite URI (`file:` and the path, percent-encoded).
fn uri_of(path: &Path, query: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut s = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.push('?');
    s.push_str(query);
    s
}

/// How a reader reaches the store.
#[derive(Clone, Copy)]
enum Mode {
    /// Read-only, with the `-wal` and `-shm` files (present or created).
    Shared,
    /// Read-only, the file alone (`immutable=1`): every change is in it.
    Immutable,
}

fn connect(path: &Path, mode: Mode) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match mode {
        Mode::Shared => Connection::open_with_flags(path, flags),
        Mode::Immutable => Connection::open_with_flags(
            uri_of(path, "immutable=1"),
            flags | OpenFlags::SQLITE_OPEN_URI,
        ),
    }
    .map_err(|e| classify(path, e))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| classify(path, e))?;
    conn.execute_batch("PRAGMA query_only = ON;")
        .map_err(|e| classify(path, e))?;
    Ok(conn)
}

/// The store's identity (application id, schema version), read through
/// `conn`: the first read, which opens the `-wal` and `-shm` files.
fn identity(conn: &Connection) -> rusqlite::Result<(i32, i32)> {
    let app = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    Ok((app, version))
}

/// Opens an existing store file for reading only: (the connection for
/// every read, a second one for the reads `Store` makes beside them).
pub(super) fn open_file(path: &Path) -> Result<(Sqlite, Sqlite), StoreError> {
    check_read(path, Need::Read)?;
    let mut mode = Mode::Shared;
    let conn = connect(path, mode)?;
    let (conn, (app, version)) = match identity(&conn) {
        Ok(id) => (conn, id),
        // CANTOPEN, or READONLY_CANTINIT / READONLY_DIRECTORY: no -wal or
        // -shm, and none may be created.
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly)
            ) =>
        {
            drop(conn);
            mode = without_wal(path)?;
            let conn = connect(path, mode)?;
            let id = identity(&conn).map_err(|e| classify(path, e))?;
            (conn, id)
        }
        Err(e) => return Err(classify(path, e)),
    };
    identify(path, app.into(), version.into())?;
    if version < SCHEMA_VERSION {
        return Err(too_old_to_read(path, version.into()));
    }
    let reader = connect(path, mode)?;
    Ok((
        Sqlite::new(path, conn).read_only(),
        Sqlite::new(path, reader).read_only(),
    ))
}

/// SQLite could not open (nor create) the `-wal` or `-shm` file: the store
/// is read from its file alone when its `-wal` holds no changes (no writer
/// has it open, or none wrote since the last checkpoint); else the `-wal` or
/// `-shm` this user may not read is named.
fn without_wal(path: &Path) -> Result<Mode, StoreError> {
    let side = |ext: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    let wal = side("-wal");
    let pending = std::fs::metadata(&wal)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    if !pending {
        return Ok(Mode::Immutable);
    }
    for f in [wal, side("-shm")] {
        if let Err(e) = files::may(&f, libc::R_OK) {
            return Err(match e.kind() {
                std::io::ErrorKind::PermissionDenied => StoreError::Denied(f, Need::Read),
                _ => StoreError::Io(
                    f,
                    format!(
                        "{e}: the store's -wal file holds changes not yet in the store file, and \
                         SQLite needs this file beside it to read them; run any command that \
                         changes the store (or load the provider) once as a user who may write \
                         it, which moves them into the file"
                    ),
                ),
            });
        }
    }
    Err(StoreError::Io(
        path.to_path_buf(),
        "cannot open its -wal and -shm files for reading (SQLite: unable to open them)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_encode_what_sqlite_would_read_as_syntax() {
        assert_eq!(
            uri_of(Path::new("/a b/s?x#%.db"), "immutable=1"),
            "file:/a%20b/s%3Fx%23%25.db?immutable=1"
        );
    }
}
