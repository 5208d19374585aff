//! The files p11derive creates (the SQLite store, its directory, the log): private to their owner, or shared with one group; and the report of such files that other users can read.
//!
//! p11derive is a library inside someone else's process, so it never touches
//! the process's umask. It creates each file itself with `O_CREAT|O_EXCL` and
//! mode 0600 (a umask can only narrow that), gives it to the group
//! `[store] group` names when there is one (`fchown`), and then sets the exact
//! mode (`fchmod`, which no umask narrows): 0600, or 0660 with the group.
//! SQLite gives the store's `-wal` and `-shm` files the store's mode. A
//! directory p11derive creates for the store is 0700, or 02770 with the
//! group: the set-group-id bit makes the `-wal` and `-shm` files that any
//! member creates belong to the group too.
//!
//! The `unsafe` calls here are `getgrnam_r` and `getpwuid_r`, which turn a
//! group name into its id and a user id into its name through the system's
//! databases (files, LDAP…), `geteuid`, and `faccessat`, which asks whether
//! this process may read or write a file (for permission messages).

use std::ffi::CString;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::log;

/// Who may use the files p11derive creates besides root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The user that creates them, alone: files 0600, directories 0700.
    Owner,
    /// Also the members of this group (`[store] group`): files 0660 and
    /// directories 02770, owned by the group.
    Group { name: String, gid: u32 },
}

impl Access {
    /// The access `[store] group` asks for (`None`: the owner alone). A
    /// group the system does not know is an error naming the key and the fix.
    pub fn of(group: Option<&str>) -> Result<Access, String> {
        let Some(name) = group else {
            return Ok(Access::Owner);
        };
        match group_id(name) {
            Ok(Some(gid)) => Ok(Access::Group {
                name: name.to_string(),
                gid,
            }),
            Ok(None) => Err(format!(
                "[store] group = {name:?} is not a group of this host; create it (`groupadd \
                 {name}`, then add the service user and the operators to it), or remove the key \
                 to keep the store and the log private to their owner"
            )),
            Err(e) => Err(format!(
                "[store] group = {name:?} could not be looked up ({e})"
            )),
        }
    }

    /// The mode of a file p11derive creates.
    pub fn file_mode(&self) -> u32 {
        match self {
            Access::Owner => 0o600,
            Access::Group { .. } => 0o660,
        }
    }

    fn dir_mode(&self) -> u32 {
        match self {
            Access::Owner => 0o700,
            Access::Group { .. } => 0o2770,
        }
    }

    fn gid(&self) -> Option<u32> {
        match self {
            Access::Owner => None,
            Access::Group { gid, .. } => Some(*gid),
        }
    }

    /// The commands that give `path` this access, for messages.
    fn fix(&self, path: &Path) -> String {
        let p = path.display();
        match self {
            Access::Owner => format!(
                "run `chmod 600 {p}` (to share it with an operator instead, name a group in \
                 [store] group and see README, \"Sharing the store\")"
            ),
            Access::Group { name, .. } => format!("run `chgrp {name} {p} && chmod 660 {p}`"),
        }
    }
}

/// Runs a `get*_r` lookup of the user or group database with a buffer for
/// the strings it returns, grown while the call says it is too small
/// (`ERANGE`). `call` gives the call's return code, and on success what it
/// found (copied out of the buffer), if anything.
fn lookup<T>(
    mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>),
) -> io::Result<Option<T>> {
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        match call(&mut buf) {
            (libc::ERANGE, _) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            (0, found) => return Ok(found),
            (rc, _) => return Err(io::Error::from_raw_os_error(rc)),
        }
    }
}

/// A group's id by name; `None` when the group database has no such group.
fn group_id(name: &str) -> io::Result<Option<u32>> {
    let c_name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    lookup(|buf| {
        let mut group = MaybeUninit::<libc::group>::uninit();
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the NUL-terminated name,
        // the uninitialized group the call fills, the buffer with its true
        // length for the strings it points into, and the result pointer.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                group.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        // SAFETY: on success with a result, `found` points at `group`, which
        // the call filled in.
        (
            rc,
            (rc == 0 && !found.is_null()).then(|| unsafe { (*found).gr_gid }),
        )
    })
}

/// The user this process acts as (its effective uid), by name (the number
/// itself when the user database has no name for it), and the uid.
pub fn effective_user() -> (String, u32) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let name = lookup(|buf| {
        let mut user = MaybeUninit::<libc::passwd>::uninit();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the uninitialized
        // entry the call fills, the buffer with its true length for the
        // strings it points into, and the result pointer.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                user.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        // SAFETY: on success with a result, `found` points at `user`, whose
        // name points into `buf` as a NUL-terminated string, copied here.
        let name = (rc == 0 && !found.is_null())
            .then(|| unsafe { std::ffi::CStr::from_ptr((*found).pw_name) })
            .map(|n| n.to_string_lossy().into_owned());
        (rc, name)
    });
    match name {
        Ok(Some(n)) => (n, uid),
        _ => (uid.to_string(), uid),
    }
}

/// Whether process `pid` exists (one of another user counts): `kill(pid,
/// 0)`, which sends nothing, fails with `ESRCH` only for no such process.
/// For the metrics files of processes that ended (`metrics::writer`).
pub fn process_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Whether this process, as its effective user and groups, may use `path`
/// as `mode` says (`libc::R_OK`, `W_OK`, `X_OK`, or'ed); else the system's
/// reason (`PermissionDenied`, a read-only file system, no such file).
pub fn may(path: &Path, mode: libc::c_int) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path, valid for the call; nothing is kept.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, c_path.as_ptr(), mode, libc::AT_EACCESS) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes `bytes` as `path`, whole: into `temp` (a new file beside it; one
/// left by a write that failed half-way goes first), synced when `sync`,
/// then renamed over `path`, so a reader sees the old text or the new,
/// never part of one, and never writes through a link planted as `temp`.
/// On failure the temporary file is removed.
pub fn replace_whole(
    path: &Path,
    temp: &Path,
    access: &Access,
    bytes: &[u8],
    sync: bool,
) -> io::Result<()> {
    use std::io::Write;
    match std::fs::remove_file(temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = create_new(temp, access).and_then(|mut f| {
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(temp, path)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    written
}

/// A small file p11derive wrote itself (`[metrics] dir`'s results and
/// counts), read back as text: only a regular file, never through a
/// symbolic link, opened without blocking (a FIFO planted in its place does
/// not hang the reader), and at most `limit` bytes (a larger file is an
/// error, not memory without end).
pub fn read_small(path: &Path, limit: u64) -> io::Result<String> {
    use std::io::Read;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    if meta.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} bytes, more than the {limit} expected", meta.len()),
        ));
    }
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than the {limit} bytes expected"),
        ));
    }
    Ok(text)
}

/// Creates `path`, which must not exist (`AlreadyExists` otherwise), with
/// exactly `access`'s mode and group.
pub fn create_new(path: &Path, access: &Access) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    settle(&file, path, access)?;
    Ok(file)
}

/// Gives a file p11derive just created its group and exact mode; on failure
/// the error names the file, the group and the fix.
fn settle(file: &File, path: &Path, access: &Access) -> io::Result<()> {
    if let Access::Group { name, gid } = access {
        std::os::unix::fs::fchown(file, None, Some(*gid)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot give {} to group {name} ([store] group): {e}; add the user this \
                     process runs as to group {name}",
                    path.display()
                ),
            )
        })?;
    }
    file.set_permissions(Permissions::from_mode(access.file_mode()))
}

/// Opens `path` for appending, creating it with `access`'s mode and group
/// when it does not exist yet (the log file).
pub fn open_append(path: &Path, access: &Access) -> io::Result<File> {
    match create_new(path, access) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().append(true).open(path)
        }
        Err(e) => Err(e),
    }
}

/// Creates the directories of `dir` that do not exist yet, each 0700 (or
/// 02770 and owned by the group).
pub fn create_dirs(dir: &Path, access: &Access) -> io::Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    for d in missing.iter().rev() {
        match DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            // Another process made it meanwhile: leave it as it made it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        if let Some(gid) = access.gid() {
            std::os::unix::fs::chown(d, None, Some(gid))?;
        }
        std::fs::set_permissions(d, Permissions::from_mode(access.dir_mode()))?;
    }
    Ok(())
}

/// What is wrong with the mode or group of an existing `what` at `path` for
/// `access` (other users may read or write it, or it is not the configured
/// group's), with the fix; `None` when nothing is, or the file is absent.
pub fn exposure(path: &Path, what: &str, access: &Access) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o7777;
    let mut wrong = Vec::new();
    match (mode & 0o004 != 0, mode & 0o002 != 0) {
        (true, true) => wrong.push("every user of this host can read and change it".to_string()),
        (true, false) => wrong.push("every user of this host can read it".to_string()),
        (false, true) => wrong.push("every user of this host can change it".to_string()),
        (false, false) => {}
    }
    if let Access::Group { name, gid } = access {
        if meta.gid() != *gid {
            wrong.push(format!(
                "it does not belong to group {name} ([store] group, id {gid})"
            ));
        }
    }
    if wrong.is_empty() {
        return None;
    }
    Some(format!(
        "{what} {} has mode {mode:04o} and group id {}: {}; {}",
        path.display(),
        meta.gid(),
        wrong.join(", and "),
        access.fix(path)
    ))
}

/// Logs, as a warning, each of `files` (what, path) whose mode or group
/// [`exposure`] finds wrong.
pub fn report(files: &[(&str, PathBuf)], access: &Access) {
    for (what, path) in files {
        if let Some(m) = exposure(path, what, access) {
            log::warn(&m);
        }
    }
}

/// The SQLite store at `path` and the `-wal` and `-shm` files beside it.
pub fn store_files(path: &Path) -> [(&'static str, PathBuf); 3] {
    let with = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    [
        ("store file", path.to_path_buf()),
        ("store file", with("-wal")),
        ("store file", with("-shm")),
    ]
}

/// With a group configured: gives the store's `-wal` and `-shm` files (which
/// SQLite creates with the store's mode but the creating process's group,
/// unless the directory is set-group-id) to the group, where this process
/// may; then reports any of the three files others can use or the group
/// cannot.
pub fn settle_store(path: &Path, access: &Access) {
    let files = store_files(path);
    if let Some(gid) = access.gid() {
        for (_, sidecar) in &files[1..] {
            let differs = std::fs::metadata(sidecar).is_ok_and(|m| m.gid() != gid);
            if differs {
                let _ = std::os::unix::fs::chown(sidecar, None, Some(gid));
            }
        }
    }
    report(&files, access);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    /// Under a umask of 077, which would make 0660 into 0600 and 02770 into
    /// 02700 by itself, the modes are still exact.
    #[test]
    fn files_and_directories_get_exact_modes_whatever_the_umask() {
        // SAFETY: umask only swaps the process's file mode mask (restored below).
        let umask = unsafe { libc::umask(0o077) };
        let dir = tempfile::tempdir().unwrap();
        let gid = std::fs::metadata(dir.path()).unwrap().gid();
        let group = Access::Group {
            name: "g".into(),
            gid,
        };
        for (access, file_mode, dir_mode) in [(Access::Owner, 0o600, 0o700), (group, 0o660, 0o2770)]
        {
            let d = dir.path().join(format!("{file_mode:o}/a/b"));
            create_dirs(&d, &access).unwrap();
            assert_eq!(mode(&d), dir_mode);
            assert_eq!(mode(d.parent().unwrap()), dir_mode);
            let f = d.join("state.db");
            create_new(&f, &access).unwrap();
            assert_eq!(mode(&f), file_mode);
            assert_eq!(
                create_new(&f, &access).unwrap_err().kind(),
                io::ErrorKind::AlreadyExists
            );
            assert!(exposure(&f, "store file", &access).is_none());
            let log = d.join("p11derive.log");
            open_append(&log, &access).unwrap();
            open_append(&log, &access).unwrap();
            assert_eq!(mode(&log), file_mode);
        }
        // SAFETY: as above.
        unsafe { libc::umask(umask) };
    }

    #[test]
    fn a_file_others_can_read_is_named_with_its_mode_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("state.db");
        std::fs::write(&f, b"").unwrap();
        std::fs::set_permissions(&f, Permissions::from_mode(0o644)).unwrap();
        let m = exposure(&f, "store file", &Access::Owner).unwrap();
        assert!(
            m.contains(&format!("store file {} has mode 0644", f.display())),
            "{m}"
        );
        assert!(m.contains(&format!("chmod 600 {}", f.display())), "{m}");
        std::fs::set_permissions(&f, Permissions::from_mode(0o606)).unwrap();
        let m = exposure(&f, "store file", &Access::Owner).unwrap();
        assert!(m.contains("read and change it"), "{m}");
        std::fs::set_permissions(&f, Permissions::from_mode(0o600)).unwrap();
        assert_eq!(exposure(&f, "store file", &Access::Owner), None);
        let other = Access::Group {
            name: "ops".into(),
            gid: std::fs::metadata(&f).unwrap().gid() + 1,
        };
        let m = exposure(&f, "store file", &other).unwrap();
        assert!(m.contains("chgrp ops") && m.contains("chmod 660"), "{m}");
        assert_eq!(exposure(&dir.path().join("absent"), "x", &other), None);
    }

    #[test]
    fn groups_are_looked_up_by_name() {
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(group_id("no-such-group-p11derive").unwrap(), None);
        let e = Access::of(Some("no-such-group-p11derive")).unwrap_err();
        assert!(e.contains("[store] group") && e.contains("groupadd"), "{e}");
        assert_eq!(Access::of(None), Ok(Access::Owner));
        assert_eq!(
            Access::of(Some("root")),
            Ok(Access::Group {
                name: "root".into(),
                gid: 0
            })
        );
    }
}
