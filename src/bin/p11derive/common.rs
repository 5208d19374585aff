//! What every command shares: failures and exit codes, output, the config, locked memory, the PIN, the store and the HSM login.

use std::io::{IsTerminal, Write};
use std::path::Path;

use p11derive::backend::Backend;
use p11derive::config::{self, Config};
use p11derive::derive::Secret32;
use p11derive::files::Access;
use p11derive::lifecycle::LifecycleError;
use p11derive::secure::SecretBytes;
use p11derive::store::{Asset, Store, StoreError, VersionRecord};

use p11derive::accounts::Caller;

use crate::args::Cli;
use crate::users::Want;

/// Why a command failed, and so its exit code.
pub enum Failure {
    /// 2: the command line is wrong; the message, and the command whose
    /// `--help` explains it.
    Usage(String),
    /// 1: the operation failed.
    Failed(String),
    /// 3: refused by the asset's state, a taken name or id, or the key type.
    Refused(String),
    /// 5: the operation waits for approvals (a request was recorded).
    Waiting(String),
    /// 4: no such asset.
    NotFound(String),
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::Failed(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Refused(_) => 3,
            Failure::NotFound(_) => 4,
            Failure::Waiting(_) => 5,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Usage(m)
            | Failure::Failed(m)
            | Failure::Refused(m)
            | Failure::NotFound(m)
            | Failure::Waiting(m) => m,
        }
    }
}

impl From<LifecycleError> for Failure {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Store(
                e @ (StoreError::Refused(_)
                | StoreError::Duplicate(_)
                | StoreError::NeedsApproval(_)),
            ) => Failure::Refused(e.to_string()),
            LifecycleError::Store(e @ StoreError::NotFound(_)) => Failure::NotFound(e.to_string()),
            LifecycleError::Store(e @ StoreError::Conflict(_)) => Failure::Refused(e.to_string()),
            e => Failure::Failed(e.to_string()),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        LifecycleError::Store(e).into()
    }
}

pub fn failed(e: impl std::fmt::Display) -> Failure {
    Failure::Failed(e.to_string())
}

/// Set once the reader of standard output went away.
static CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes a line to standard output. Once the reader went away (`| head`)
/// nothing more is written and nothing is said: the command ends as it
/// would have (its exit code tells success or failure). Any other write
/// error fails the command.
pub fn emit(line: std::fmt::Arguments<'_>) {
    use std::sync::atomic::Ordering;
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CLOSED.store(true, Ordering::Relaxed);
            return;
        }
        eprintln!("p11derive: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that ends quietly on a closed pipe (see [`emit`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::common::emit(format_args!(""))
    };
    ($($t:tt)*) => {
        $crate::common::emit(format_args!($($t)*))
    };
}

/// Prints JSON, pretty.
pub fn print_json(v: &serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v).map_err(failed)?;
    outln!("{text}");
    Ok(())
}

/// The config; a log file it names that other users can read is reported
/// (the store's files are, when the store opens).
pub fn load_config(cli: &Cli) -> Result<Config, Failure> {
    let path = config::locate(cli.config.as_deref());
    let config = Config::load(&path).map_err(Failure::Failed)?;
    if let (Some(file), Ok(access)) = (&config.log.file, Access::of(config.store.group.as_deref()))
    {
        p11derive::files::report(&[("log file", file.clone())], &access);
    }
    Ok(config)
}

/// Maps the locked arena for the secrets a command handles (PIN, root,
/// audit key) under the same `[memory]` rules as the provider.
pub fn lock_memory(config: &Config) -> Result<(), Failure> {
    p11derive::mechanisms::warm_up();
    let memory = &config.memory;
    match p11derive::secure::configure(memory.locked_kib, memory.allow_unlocked) {
        Ok(true) => Ok(()),
        Ok(false) => {
            eprintln!(
                "p11derive: DEGRADED: memory for secrets cannot be locked and [memory] \
                 allow_unlocked = true in {}: the PIN and keys may be swapped to disk",
                config.source.display()
            );
            Ok(())
        }
        Err(m) => Err(Failure::Failed(format!(
            "{m} (config file {})",
            config.source.display()
        ))),
    }
}

/// The longest PIN (or PIN file) accepted, in bytes.
const MAX_PIN: usize = 1024;

/// Reads a whole small file straight into locked memory (never through a
/// heap buffer); `None` when it holds more than `capacity` bytes.
pub fn read_secret_file(path: &Path, capacity: usize) -> std::io::Result<Option<SecretBytes>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = SecretBytes::with_capacity(capacity + 1).map_err(std::io::Error::other)?;
    loop {
        let n = file.read(buf.spare())?;
        if n == 0 {
            break;
        }
        buf.grow(n);
        if buf.len() > capacity {
            return Ok(None);
        }
    }
    Ok(Some(buf))
}

/// Whether the PIN was given without asking (`--pin-file`, `$P11DERIVE_PIN`).
pub fn pin_given(cli: &Cli) -> bool {
    cli.pin_file.is_some() || p11derive::secure::env_is_set("P11DERIVE_PIN")
}

/// Whether a PIN can be asked for: standard input is a terminal.
pub fn can_ask() -> bool {
    std::io::stdin().is_terminal()
}

/// The backing token's user PIN, in locked memory wiped on drop: from
/// `--pin-file FILE` (`-`: standard input, its first line), else
/// `$P11DERIVE_PIN`, else asked on the terminal without echo.
pub fn read_pin(cli: &Cli, config: &Config) -> Result<SecretBytes, Failure> {
    let token = &config.backend.token_label;
    read_secret(
        cli,
        &format!("User PIN of backing token {token:?}: "),
        &format!("no PIN for backing token {token:?}"),
    )
}

/// The PIN the CLI logs in to the backing HSM with: the service credential
/// in users mode (never asked for), else the user PIN ([`read_pin`]).
pub fn hsm_pin(cli: &Cli, config: &Config) -> Result<SecretBytes, Failure> {
    if config.users.enabled {
        return config
            .users
            .service_credential(&config.source)
            .map_err(Failure::Failed);
    }
    read_pin(cli, config)
}

/// A secret from `--pin-file FILE` (`-`: standard input, its first line),
/// else `$P11DERIVE_PIN`, else asked with `prompt` on the terminal without
/// echo; `missing` says whose secret could not be had.
pub fn read_secret(cli: &Cli, prompt: &str, missing: &str) -> Result<SecretBytes, Failure> {
    match cli.pin_file.as_deref() {
        // Standard input is the terminal: never show what is typed.
        Some("-") if can_ask() => return ask(prompt),
        Some("-") => {
            // Unbuffered: no copy of the PIN in the standard input's buffer.
            let fd = std::os::fd::AsFd::as_fd(&std::io::stdin())
                .try_clone_to_owned()
                .map_err(|e| failed(format!("cannot read the PIN from standard input: {e}")))?;
            let pin = p11derive::secure::read_line_secret(&mut std::fs::File::from(fd), MAX_PIN)
                .map_err(|e| failed(format!("the PIN on standard input (--pin-file -) is {e}")))?;
            return nonempty(pin, "standard input (--pin-file -)");
        }
        Some(file) => return read_pin_file(Path::new(file), "PIN file", "--pin-file"),
        None => {}
    }
    match p11derive::secure::from_env("P11DERIVE_PIN") {
        Ok(Some(pin)) if !pin.is_empty() => return Ok(pin),
        Ok(_) => {}
        Err(m) => return Err(Failure::Failed(m)),
    }
    if !can_ask() {
        return Err(failed(format!(
            "{missing}: pass --pin-file FILE (or `--pin-file -` to read it from standard input), \
             set P11DERIVE_PIN, or run on a terminal to be asked"
        )));
    }
    ask(prompt)
}

/// A secret held in a file (its trailing newline dropped), read straight
/// into locked memory; `what` and `option` name it in messages.
pub fn read_pin_file(path: &Path, what: &str, option: &str) -> Result<SecretBytes, Failure> {
    let shown = path.display();
    warn_if_shared(path);
    let mut pin = read_secret_file(path, MAX_PIN)
        .map_err(|e| failed(format!("cannot read {what} {shown} ({option}): {e}")))?
        .ok_or_else(|| {
            failed(format!(
                "{what} {shown} ({option}) is longer than {MAX_PIN} bytes: it must hold the \
                 secret only"
            ))
        })?;
    let len = pin.len()
        - pin
            .iter()
            .rev()
            .take_while(|&&b| b == b'\n' || b == b'\r')
            .count();
    pin.truncate(len);
    nonempty(pin, &format!("{what} {shown}"))
}

/// A secret typed at the terminal, without echo.
pub fn ask(prompt: &str) -> Result<SecretBytes, Failure> {
    let pin = p11derive::secure::prompt_secret(prompt, MAX_PIN)
        .map_err(|e| failed(format!("cannot ask for the secret: {e}")))?;
    nonempty(pin, "the prompt")
}

/// A PIN file others may read is reported (it is still used).
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "p11derive: warning: PIN file {} has mode {mode:04o}: other users may read the \
                 PIN; make it private with `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
}

fn nonempty(pin: SecretBytes, from: &str) -> Result<SecretBytes, Failure> {
    if pin.is_empty() {
        return Err(failed(format!("the PIN from {from} is empty")));
    }
    Ok(pin)
}

/// Opens the store for a command that changes it.
pub fn open_store(config: &Config) -> Result<Store, Failure> {
    Ok(Store::open_config(&config.store)?)
}

/// Opens the store for a command that only reads it (an auditor may only
/// read the file).
pub fn open_store_read_only(config: &Config) -> Result<Store, Failure> {
    if config.users.enabled {
        // A login writes its failures (and a refusal its record) at once.
        return open_store(config);
    }
    Ok(read_only(config)?)
}

/// [`open_store_read_only`], with the store's own error.
pub fn read_only(config: &Config) -> Result<Store, StoreError> {
    Store::open_config_read_only(&config.store)
}

/// Opens the backing module and finds the token.
pub fn open_backend(config: &Config) -> Result<Backend, Failure> {
    Backend::open(&config.backend, &config.source).map_err(failed)
}

/// Before a change: the store must be this root's (lineage) and hold what
/// the HSM's rollback anchor holds; then its state changes are verified
/// under the audit key and every asset row read after is checked (and never
/// is the anchor moved onto a restored, forked chain).
pub fn refuse_rolled_back(store: &Store, backend: &Backend, ak: &Secret32) -> Result<(), Failure> {
    let anchor = backend.read_anchor().map_err(failed)?;
    if let Some(a) = &anchor {
        store.check_anchor(a)?;
    }
    store.authenticate(ak, anchor.as_ref())?;
    Ok(())
}

/// Logs in to the backing HSM and runs `f` with the store, the HSM and the
/// audit key, derived through it into the locked arena. In pass-through
/// mode the login is the user PIN's and `f` gets no caller; in users mode
/// it is the service credential's, then the store is verified, the person
/// logs in as a user (`--user`) and must be allowed `want`, and `f` gets
/// that user.
pub fn with_key<T>(
    cli: &Cli,
    store: &Store,
    config: &Config,
    want: Want<'_>,
    f: impl FnOnce(&Store, &Backend, &Secret32, Option<&Caller>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    lock_memory(config)?;
    if config.users.enabled {
        return crate::users::with_user(cli, store, config, want, f);
    }
    if cli.user.is_some() {
        eprintln!(
            "p11derive: note: --user is ignored: users mode is off in {} (the backing token's \
             user PIN allows everything)",
            config.source.display()
        );
    }
    let pin = read_pin(cli, config)?;
    let backend = open_backend(config)?;
    let result = login(&backend, &pin).and_then(|()| {
        let ak = p11derive::derive::audit_key(&backend).map_err(failed)?;
        f(store, &backend, &ak, None)
    });
    let _ = backend.logout();
    backend.finalize();
    result
}

/// The user login at the backing token.
pub fn login(backend: &Backend, pin: &[u8]) -> Result<(), Failure> {
    backend
        .login(p11derive::ck::CKU_USER, pin)
        .map_err(|e| failed(format!("backing token login: {e}")))
}

/// A store opened by a command that only reads, with the audit key when
/// the PIN was given.
pub struct Readable {
    pub store: Store,
    ak: Option<Secret32>,
}

impl Readable {
    /// Each version's public key or check value, checked against its MAC
    /// under the HSM-derived audit key when the PIN was given: a key
    /// swapped in the store is refused, never shown or used.
    pub fn checked(&self, a: &Asset, versions: &[VersionRecord]) -> Result<(), Failure> {
        let Some(ak) = &self.ak else { return Ok(()) };
        match versions
            .iter()
            .find(|v| !p11derive::audit::key_data_verifies(ak, a.id.as_str(), v))
        {
            None => Ok(()),
            Some(v) => Err(failed(key_data_fault(a.id.as_str(), v.version))),
        }
    }

    /// The versions of `a`, checked as [`Readable::checked`] says.
    pub fn history(&self, a: &Asset) -> Result<Vec<VersionRecord>, Failure> {
        let h = self.store.history(a.rowid)?;
        self.checked(a, &h)?;
        Ok(h)
    }
}

/// A version whose key data fails its MAC, in words (what it means, what to do).
pub fn key_data_fault(asset: &str, version: u32) -> String {
    format!(
        "asset {asset:?} version {version}: the key data the store holds for it carries no valid \
         MAC under the HSM-derived audit key: the versions table was changed outside p11derive, \
         so nothing of it is shown or used. Run `p11derive audit verify`, and restore the store \
         from a backup (README, \"Backup, restore, start over\")"
    )
}

/// The store for a command that only reads: in users mode, or with a PIN given
/// (`--pin-file`, `$P11DERIVE_PIN`) its rows are verified under the state
/// key as they are read (the HSM's anchor and the store's state changes
/// checked first) and each version's key data under the audit key; without
/// one they are shown as stored, and stderr says so.
pub fn readable_store(cli: &Cli) -> Result<Readable, Failure> {
    let config = load_config(cli)?;
    let store = open_store_read_only(&config)?;
    if !pin_given(cli) && !config.users.enabled {
        eprintln!(
            "p11derive: note: shown as stored, not verified under the HSM-derived keys; give the \
             PIN (--pin-file FILE, --pin-file -, or $P11DERIVE_PIN) to verify it"
        );
        return Ok(Readable { store, ak: None });
    }
    let ak = with_key(
        cli,
        &store,
        &config,
        Want::read_public(),
        |store, backend, ak, _| {
            store.check_root(ak)?;
            refuse_rolled_back(store, backend, ak)?;
            Secret32::copy_of(ak).map_err(Failure::Failed)
        },
    )?;
    Ok(Readable {
        store,
        ak: Some(ak),
    })
}

pub fn unhex(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
        .collect()
}
