//! What can go wrong with a store, and the message each failure tells the operator.

use std::fmt;
use std::path::PathBuf;

use super::schema::SCHEMA_VERSION;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    Missing(PathBuf),
    Exists(PathBuf),
    Foreign(PathBuf),
    Newer(PathBuf, i32),
    Corrupt(PathBuf, String),
    /// The store may be read but not written by this process's user (a
    /// command that changes it, or the provider, needs write access).
    ReadOnly(PathBuf),
    /// This process's user may not open the store as it needs to.
    Denied(PathBuf, Need),
    /// A write tried on a store opened for reading only.
    OpenedReadOnly(PathBuf),
    /// A name or object id that is already taken (`what` says which).
    Duplicate(String),
    /// No asset of that name.
    NotFound(String),
    /// A transition the asset's state does not allow (the message says why).
    Refused(String),
    /// The asset changed between reading it and committing (retry).
    Conflict(String),
    /// The operation is governed by a quorum rule: it runs only as an
    /// approved request (the message says how to make one).
    NeedsApproval(String),
    /// The backing HSM's root is not the one the store's audit chain was
    /// written with.
    OtherRoot(PathBuf),
    /// The chain's newest record (this seq) does not verify under the right key.
    Tampered(PathBuf, u64),
    /// A row that decides whether a key may be used does not verify (the
    /// message names it).
    StateTampered(PathBuf, String),
    /// The chain went back or changed under this process: every operation
    /// is refused until an operator re-anchors.
    RolledBack(PathBuf, String),
    /// The backing HSM's anchor is ahead of the store (the message says how).
    BehindAnchor(PathBuf, String),
    /// The store is not the one the root's anchor names.
    Lineage(PathBuf, String),
    Io(PathBuf, String),
}

/// The access an open of the store needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read commands (`Store::open_config_read_only`).
    Read,
    /// Commands that change the store, and the provider.
    ReadWrite,
}

/// The commands that only read the store, for messages.
const READ_COMMANDS: &str = "asset list/show/pubkey, audit export/tail/verify, status, verify";

/// "user NAME, uid N" for this process's effective user.
fn who() -> String {
    let (name, uid) = crate::files::effective_user();
    format!("user {name}, uid {uid}")
}

/// The directory holding a SQLite store file.
fn dir_of(p: &std::path::Path) -> String {
    match p.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.display().to_string(),
        None => ".".into(),
    }
}

/// Whether a store location is a PostgreSQL URL (not a file).
fn is_url(p: &std::path::Path) -> bool {
    p.to_string_lossy().contains("://")
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Missing(p) => write!(
                f,
                "store {} does not exist: if [store] path (or url) points to the wrong place, fix \
                 it; if this root had a store, put it (or its newest backup) back there (README, \
                 \"Backup, restore, start over\"); `p11derive init` creates a store only for a \
                 root that never had one",
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
            StoreError::ReadOnly(p) if is_url(p) => write!(
                f,
                "store {} is read-only for this connection ({}): commands that change it, and \
                 the provider, need a database role that may write it; read-only commands \
                 ({READ_COMMANDS}) still work",
                p.display(),
                who()
            ),
            StoreError::ReadOnly(p) => write!(
                f,
                "store {} is read-only for {}: commands that change it, and the provider, need \
                 read and write access to the file and write access to its directory {} (for \
                 its -wal and -shm files); read-only commands ({READ_COMMANDS}) still work",
                p.display(),
                who(),
                dir_of(p)
            ),
            StoreError::Denied(p, Need::Read) => write!(
                f,
                "permission denied: {} ({}). Read-only commands ({READ_COMMANDS}) need read \
                 access to the store file (and its -wal and -shm files when present) and search \
                 access to every directory above it; commands that change it, and the provider, \
                 need read and write access to the file and its directory. Ask the store's owner \
                 for access (for example through [store] group), or run as a user who has it",
                p.display(),
                who()
            ),
            StoreError::Denied(p, Need::ReadWrite) => write!(
                f,
                "permission denied: {} ({}). Commands that change the store, and the provider, \
                 need read and write access to the file and write access to its directory {}; \
                 read-only commands ({READ_COMMANDS}) need read access only. Ask the store's \
                 owner for access (for example through [store] group), or run as a user who has \
                 it",
                p.display(),
                who(),
                dir_of(p)
            ),
            StoreError::OpenedReadOnly(p) => write!(
                f,
                "store {} was opened for reading only, and this needs to write it (a p11derive \
                 bug: please report it); nothing was written",
                p.display()
            ),
            StoreError::Duplicate(what) => write!(f, "{what}"),
            StoreError::NotFound(name) => {
                write!(f, "no asset named {name:?} (see `p11derive asset list`)")
            }
            StoreError::Refused(why) => write!(f, "{why}"),
            StoreError::Conflict(why) => write!(f, "{why}"),
            StoreError::NeedsApproval(why) => write!(f, "{why}"),
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
            StoreError::StateTampered(p, why) => write!(
                f,
                "store {}: {why}. p11derive refuses to use it; run `p11derive audit verify` to \
                 list every such row, and restore the store from a backup taken after the \
                 asset's last change (see the README, \"Backup, restore, start over\")",
                p.display()
            ),
            StoreError::RolledBack(p, why) => write!(
                f,
                "store {}: {why}. Every operation is refused until the store is repaired: restore \
                 the newest backup, check it with `p11derive audit verify`, then `p11derive audit \
                 reanchor --yes` (see the README, \"Backup, restore, start over\")",
                p.display()
            ),
            StoreError::BehindAnchor(p, why) => write!(
                f,
                "store {} is older than the rollback anchor in the backing HSM: {why}. An older \
                 copy of the store was restored, or records were deleted; p11derive refuses to \
                 run on it and nothing was written. Put back the newest copy of the store; \
                 `p11derive audit verify` says what a copy lacks (see the README, \"Backup, \
                 restore, start over\")",
                p.display()
            ),
            StoreError::Lineage(p, why) => write!(
                f,
                "store {} is not the store of this root: {why}. A root has one store: a retired \
                 asset id is refused only within it, so a second store would bring its keys \
                 back. Point [store] at the root's store (restore it from its backup), or start \
                 over with a new root (see the README, \"Backup, restore, start over\")",
                p.display()
            ),
            StoreError::Io(p, e) => write!(f, "store {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for StoreError {}
