//! `p11derive`: the command-line tool beside the provider.
//!
//! Exit codes: 0 success; 1 the operation failed (the message says why);
//! 2 the command line is wrong; 3 refused (the asset's state does not allow
//! it, or the name or id is taken); 4 no such asset.

#![forbid(unsafe_code)]

mod audit_cmd;

use std::path::Path;
use std::process::ExitCode;

use p11derive::audit::{Event, Record};
use p11derive::backend::Backend;
use p11derive::config::{self, Config};
use p11derive::derive::{self, AssetId, KeyType, Secret32};
use p11derive::files::Access;
use p11derive::lifecycle::{self, Audit, LifecycleError};
use p11derive::secure::SecretBytes;
use p11derive::store::{hex, Asset, AssetState, Store, StoreError, Transition, VersionRecord};

const USAGE: &str = "\
usage: p11derive [--config FILE] COMMAND

commands:
  init [--import-root FILE]
        create the root secret inside the backing HSM (non-extractable) and the
        store; --import-root imports a given 32-byte root instead (hex text or
        raw bytes), for test vectors and recovery ceremonies; refuses to create
        a second store for a root that already has one
  asset create NAME --type secp256k1|p256|aes256|hmac-sha256 [--id HEX]
        register a new asset at version 1 (HEX: its CKA_ID; default derived)
  asset list [--json]               the assets that are not retired
  asset show NAME [--json]          versions, state, what each version may do,
                                    public keys (with the PIN, each row is verified
                                    under the HSM-derived state key first)
  asset rotate NAME [--grace]       current + 1; with --grace the previous version
                                    may still sign until `asset finish`
  asset finish NAME                 end a rotation's grace window
  asset trim NAME N                 make versions below N unusable, for good
  asset suspend NAME                refuse every operation until `asset resume`
  asset resume NAME
    asset retire NAME --yes           end the asset for good; its name is never reused
  audit verify                      check the audit chain (MACs under the HSM-derived
                                    audit key), the HSM anchor, and that every asset's
                                    state matches its recorded transitions
  audit export [--since SEQ] [--asset NAME]
                                    the records as JSON lines
    audit tail [-n N]                 the newest records, one line each
  audit reanchor --yes              after restoring a copy of this root's store: verify
                                    it and move the HSM's rollback anchor to its newest
                                    record (audited); refused for another store or a copy
                                    lacking a state change the anchor knows
  store migrate --from sqlite:PATH --to postgres://USER:PASSWORD@HOST:PORT/DB
                                    copy a SQLite store, every record, into a new
                                    PostgreSQL store (then set [store] url to it)



The config file is --config, else $P11DERIVE_CONF, else /etc/p11derive/p11derive.toml.
Commands that change anything (init, create, every transition, audit reanchor) and
audit verify log in to the backing token, to derive keys and the audit key, with
the user PIN from --pin-file FILE, else $P11DERIVE_PIN.
Exit codes: 0 success; 1 failure (config, store, HSM); 2 usage error;
3 refused (the asset's state does not allow it, or the name/id is taken);
4 no such asset.";

enum Failure {
    Usage(String),
    Failed(String),
    Refused(String),
    NotFound(String),
}

impl From<LifecycleError> for Failure {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Store(e @ (StoreError::Refused(_) | StoreError::Duplicate(_))) => {
                Failure::Refused(e.to_string())
            }
            LifecycleError::Store(e @ StoreError::NotFound(_)) => Failure::NotFound(e.to_string()),
            e => Failure::Failed(e.to_string()),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        LifecycleError::Store(e).into()
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (code, m) = match failure {
                Failure::Usage(m) => (2, format!("{m}\n\n{USAGE}")),
                Failure::Failed(m) => (1, m),
                Failure::Refused(m) => (3, m),
                Failure::NotFound(m) => (4, m),
            };
            eprintln!("p11derive: {m}");
            ExitCode::from(code)
        }
    }
}

/// A parsed command line: positional words and `--flag [value]` options.
struct Args {
    words: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

const VALUED: &[&str] = &[
    "--config",
    "--import-root",
    "--pin-file",
    "--type",
    "--id",
    "--since",
    "--asset",
    "--from",
    "--to",
    "-n",
];
const SWITCHES: &[&str] = &["--json", "--help", "--grace", "--yes"];

fn parse(args: &[String]) -> Result<Args, Failure> {
    let mut out = Args {
        words: Vec::new(),
        options: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if VALUED.contains(&a.as_str()) {
            let v = it
                .next()
                .ok_or_else(|| Failure::Usage(format!("{a} needs a value")))?;
            out.options.push((a.clone(), Some(v.clone())));
        } else if SWITCHES.contains(&a.as_str()) || a == "-h" {
            out.options.push((a.clone(), None));
        } else if a.starts_with('-') {
            return Err(Failure::Usage(format!("unknown option {a}")));
        } else {
            out.words.push(a.clone());
        }
    }
    Ok(out)
}

impl Args {
    fn value(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn flag(&self, name: &str) -> bool {
        self.options.iter().any(|(n, _)| n == name)
    }
}

fn run(raw: &[String]) -> Result<(), Failure> {
    let args = parse(raw)?;
    if args.flag("--help") || args.flag("-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let words: Vec<&str> = args.words.iter().map(String::as_str).collect();
    // Options each command takes (besides --config and --help).
    let allowed: &[&str] = match words.as_slice() {
        ["init"] => &["--import-root", "--pin-file"],
        ["asset", "list"] | ["asset", "show", _] => &["--json", "--pin-file"],
        ["asset", "create", _] => &["--type", "--id", "--pin-file", "--json"],
        ["asset", "rotate", _] => &["--grace", "--pin-file", "--json"],
        ["asset", "retire", _] => &["--yes", "--pin-file", "--json"],
        ["audit", "verify"] => &["--pin-file"],
        ["audit", "export"] => &["--since", "--asset"],
        ["audit", "tail"] => &["-n"],
        ["audit", "reanchor"] => &["--yes", "--pin-file"],
        ["store", "migrate"] => &["--from", "--to"],
        _ => &["--pin-file", "--json"],
    };
    if let Some((bad, _)) = args
        .options
        .iter()
        .find(|(o, _)| o != "--config" && !allowed.contains(&o.as_str()))
    {
        return Err(Failure::Usage(format!(
            "{bad} does not apply to `{}`",
            words.join(" ")
        )));
    }
    match words.as_slice() {
        ["init"] => init(&args),
        ["asset", "list"] => asset_list(&args),
        ["asset", "show", name] => asset_show(&args, name),
        ["asset", "create", name] => asset_create(&args, name),
        ["asset", "rotate", name] => {
            let grace = args.flag("--grace");
            let what = if grace { "rotate --grace" } else { "rotate" };
            with_hsm(&args, what, |store, backend, audit| {
                let id = asset_id(name)?;
                Ok(lifecycle::transition(
                    Some(backend),
                    store,
                    audit,
                    &id,
                    Transition::Rotate { grace },
                )?)
            })
        }
        ["asset", "finish", name] => change(&args, name, Transition::Finish),
        ["asset", "trim", name, n] => {
            let n = n.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                Failure::Usage(format!("trim needs a version number >= 1, not {n:?}"))
            })?;
            change(&args, name, Transition::Trim(n))
        }
        ["audit", "verify"] => audit_cmd::verify(&args),
        ["audit", "export"] => audit_cmd::export(&args),
        ["audit", "tail"] => audit_cmd::tail(&args),
        ["audit", "reanchor"] => audit_cmd::reanchor(&args),
        ["store", "migrate"] => store_migrate(&args),
        ["asset", "suspend", name] => change(&args, name, Transition::Suspend),
        ["asset", "resume", name] => change(&args, name, Transition::Resume),
        ["asset", "retire", name] => {
            if !args.flag("--yes") {
                return Err(Failure::Usage(format!(
                    "retiring {name:?} ends it for good (its keys stop working and its name can \
                     never be used again); confirm with --yes"
                )));
            }
            change(&args, name, Transition::Retire)
        }
        [] => Err(Failure::Usage("no command given".into())),
        other => Err(Failure::Usage(format!(
            "unknown command {:?}",
            other.join(" ")
        ))),
    }
}

/// The config; a log file it names that other users can read is reported
/// (the store's files are, when the store opens).
fn load_config(args: &Args) -> Result<Config, Failure> {
    let path = config::locate(args.value("--config").map(Path::new));
    let config = Config::load(&path).map_err(Failure::Failed)?;
    if let (Some(file), Ok(access)) = (&config.log.file, Access::of(config.store.group.as_deref()))
    {
        p11derive::files::report(&[("log file", file.clone())], &access);
    }
    Ok(config)
}

/// Maps the locked arena for the secrets a command handles (PIN, root,
/// audit key) under the same `[memory]` rules as the provider.
fn lock_memory(config: &Config) -> Result<(), Failure> {
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
fn read_secret_file(path: &str, capacity: usize) -> std::io::Result<Option<SecretBytes>> {
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

/// The backing token's user PIN, in locked memory wiped on drop.
fn read_pin(args: &Args) -> Result<SecretBytes, Failure> {
    if let Some(file) = args.value("--pin-file") {
        let mut pin = read_secret_file(file, MAX_PIN)
            .map_err(|e| Failure::Failed(format!("cannot read PIN file {file}: {e}")))?
            .ok_or_else(|| {
                Failure::Failed(format!(
                    "PIN file {file} is longer than {MAX_PIN} bytes: it must hold the PIN only"
                ))
            })?;
        let len = pin.len()
            - pin
                .iter()
                .rev()
                .take_while(|&&b| b == b'\n' || b == b'\r')
                .count();
        pin.truncate(len);
        return Ok(pin);
    }
    let missing = || {
        Failure::Failed(
            "no PIN for the backing token: set P11DERIVE_PIN or pass --pin-file FILE".into(),
        )
    };
    match p11derive::secure::from_env("P11DERIVE_PIN") {
        Ok(Some(pin)) if !pin.is_empty() => Ok(pin),
        Ok(_) => Err(missing()),
        Err(m) => Err(Failure::Failed(m)),
    }
}

/// Reads a root to import: 64 hex digits (whitespace ignored) or 32 raw bytes,
/// into locked memory.
fn read_root(path: &str) -> Result<Secret32, Failure> {
    let too_long = || {
        Failure::Failed(format!(
            "root file {path} must hold exactly 32 bytes, raw or as 64 hex digits"
        ))
    };
    let raw = read_secret_file(path, 4096)
        .map_err(|e| Failure::Failed(format!("cannot read root file {path}: {e}")))?
        .ok_or_else(too_long)?;
    let mut root = Secret32::new().map_err(Failure::Failed)?;
    let digits = raw.iter().filter(|b| !b.is_ascii_whitespace());
    if digits.clone().count() == 64 && digits.clone().all(u8::is_ascii_hexdigit) {
        let nib = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
        let mut it = digits.copied();
        for byte in root.iter_mut() {
            let (hi, lo) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
            *byte = (nib(hi) << 4) | nib(lo);
        }
    } else if raw.len() == 32 {
        root.copy_from_slice(&raw);
    } else {
        return Err(too_long());
    }
    Ok(root)
}

fn init(args: &Args) -> Result<(), Failure> {
    let config = load_config(args)?;
    lock_memory(&config)?;
    let import = args.value("--import-root").map(read_root).transpose()?;
    let pin = read_pin(args)?;
    let backend = Backend::open(&config.backend, &config.source)
        .map_err(|e| Failure::Failed(e.to_string()))?;
    let result = init_with(&config, &backend, import.as_deref(), &pin);
    backend.finalize();
    result
}

fn init_with(
    config: &Config,
    backend: &Backend,
    import: Option<&[u8; 32]>,
    pin: &[u8],
) -> Result<(), Failure> {
    let fail = |e: p11derive::Error| Failure::Failed(e.to_string());
    // Log in without requiring the root: it may not exist yet.
    backend.login_admin(pin).map_err(fail)?;
    let label = &config.backend.root_label;
    let token = &config.backend.token_label;
    match (backend.root_exists().map_err(fail)?, import) {
        (true, Some(_)) => {
            return Err(Failure::Failed(format!(
                "backing token {token:?} already holds a root labelled {label:?}; refusing to \
                 import another (a second root would derive different keys)"
            )))
        }
        (true, None) => println!("root {label:?} already exists on backing token {token:?}; kept"),
        (false, Some(root)) => {
            backend.import_root(root).map_err(fail)?;
            println!(
                "root {label:?} imported into backing token {token:?} (sensitive, not extractable)"
            );
        }
        (false, None) => {
            backend.generate_root().map_err(fail)?;
            println!("root {label:?} generated inside backing token {token:?} (sensitive, not extractable)");
        }
    }
    // Log in again, now finding the root, to derive through it.
    let _ = backend.logout();
    let result = backend
        .login(p11derive::ck::CKU_USER, pin)
        .map_err(fail)
        .and_then(|()| init_store(config, backend));
    let _ = backend.logout();
    result
}

/// The store of `init`: kept when it exists and is this root's; created
/// (with its first record, which names its lineage, and the HSM's anchor)
/// only when the root has no store yet.
fn init_store(config: &Config, backend: &Backend) -> Result<(), Failure> {
    let fail = |e: p11derive::Error| Failure::Failed(e.to_string());
    let ak = derive::audit_key(backend).map_err(fail)?;
    let anchor = backend.read_anchor().map_err(fail)?;
    let store = match Store::open_config(&config.store) {
        Ok(s) => {
            s.check_root(&ak)?;
            if let Some(a) = &anchor {
                s.check_anchor(a)?;
            }
            println!("store {} already exists; kept", s.path().display());
            s
        }
        Err(StoreError::Missing(_)) => {
            if let Some(a) = &anchor {
                return Err(Failure::Failed(second_store(config, a)));
            }
            let s = Store::create_config(&config.store)?;
            let fp = derive::root_fingerprint(backend).map_err(fail)?;
            let rec = Record::new(Event::Init, 0).detail(format!(
                "store created at {} for root {} (fingerprint {})",
                s.path().display(),
                config.backend.root_label,
                hex(&fp)
            ));
            s.record(Some(&ak), rec)?;
            println!(
                "store {} created for root {:?} (fingerprint {})",
                s.path().display(),
                config.backend.root_label,
                hex(&fp)
            );
            s
        }
        Err(e) => return Err(e.into()),
    };
    store.authenticate(&ak, anchor.as_ref())?;
    lifecycle::advance_anchor(&store, backend, false).map_err(fail)
}

/// Why `init` refuses a new store for a root that already has one.
fn second_store(config: &Config, a: &p11derive::audit::Anchor) -> String {
    let label = &config.backend.root_label;
    let token = &config.backend.token_label;
    let location = if a.location.is_empty() {
        "at a location the anchor does not record".to_string()
    } else {
        format!("last at {}", a.location)
    };
    let id = a.store.map_or_else(|| "(unnamed)".into(), |id| hex(&id));
    format!(
        "root {label:?} on backing token {token:?} already has a store (store {id}, {location}, \
         anchored at audit record {}); refusing to create a second one: asset ids are unique \
         within a root's store, so in a new store a retired asset's id would be free again and \
         its keys would come back. To recover, put the root's store (or its newest backup) where \
         [store] points and run `p11derive audit verify`. To start over without it, create a \
         new root: set [backend] root_label to a new label and run `p11derive init` (every key \
         of the old root is then out of use). See the README, \"Backup, restore, start over\"",
        a.head.0
    )
}

/// `store migrate`: a SQLite store into a new PostgreSQL one, every row.
fn store_migrate(args: &Args) -> Result<(), Failure> {
    let from = args.value("--from").ok_or_else(|| {
        Failure::Usage("store migrate needs --from sqlite:PATH (the store to copy)".into())
    })?;
    let to = args.value("--to").ok_or_else(|| {
        Failure::Usage("store migrate needs --to postgres://USER:PASSWORD@HOST:PORT/DB".into())
    })?;
    let Some(path) = from.strip_prefix("sqlite:") else {
        return Err(Failure::Usage(format!(
            "--from {from:?}: write sqlite:PATH (the SQLite file to copy)"
        )));
    };
    if !config::is_url(to) {
        return Err(Failure::Usage(format!(
            "--to {:?}: write postgres://USER:PASSWORD@HOST:PORT/DB",
            config::redact(to)
        )));
    }
    let source = Store::open(Path::new(path))?;
    // TLS as the config's [store] says, when there is a config.
    let mut keys = Config::load(&config::locate(args.value("--config").map(Path::new)))
        .map(|c| c.store)
        .unwrap_or_default();
    keys.connect_timeout_ms = 10_000;
    let target = p11derive::store::pg::Target::with_url(&keys, to)?;
    let dest = match Store::create_pg(&target) {
        Ok(s) => s,
        // An existing but empty p11derive schema is fine (migrate_into checks).
        Err(StoreError::Exists(_)) => Store::open_pg(&target)?,
        Err(e) => return Err(e.into()),
    };
    let moved = source.migrate_into(&dest)?;
    let counts: Vec<String> = moved.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!(
        "store {} copied into {}: {}; the audit chain's newest record is the same in both. \
         Set [store] url = \"{}\" in the config (password included) to use it",
        source.path().display(),
        dest.path().display(),
        counts.join(", "),
        dest.path().display()
    );
    Ok(())
}

fn asset_id(name: &str) -> Result<AssetId, Failure> {
    AssetId::new(name).map_err(Failure::Usage)
}

fn open_store(config: &Config) -> Result<Store, Failure> {
    Ok(Store::open_config(&config.store)?)
}

/// A transition that derives no key (it is still audited, so it logs in).
fn change(args: &Args, name: &str, t: Transition) -> Result<(), Failure> {
    let id = asset_id(name)?;
    with_hsm(args, &t.name(), |store, _, audit| {
        Ok(lifecycle::transition(None, store, audit, &id, t)?)
    })
}

/// Before a change: the store must be this root's (lineage) and hold what
/// the HSM's rollback anchor holds; then its state changes are verified
/// under the audit key and every asset row read after is checked (and never
/// is the anchor moved onto a restored, forked chain).
fn refuse_rolled_back(store: &Store, backend: &Backend, ak: &Secret32) -> Result<(), Failure> {
    let anchor = backend
        .read_anchor()
        .map_err(|e| Failure::Failed(e.to_string()))?;
    if let Some(a) = &anchor {
        store.check_anchor(a)?;
    }
    store.authenticate(ak, anchor.as_ref())?;
    Ok(())
}

/// Logs in to the backing HSM (user PIN) and runs `f` with the store, the
/// HSM and the audit key, derived through it into the locked arena.
pub(crate) fn with_key<T>(
    args: &Args,
    f: impl FnOnce(&Store, &Backend, &Secret32) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let config = load_config(args)?;
    let store = open_store(&config)?;
    lock_memory(&config)?;
    let pin = read_pin(args)?;
    let backend = Backend::open(&config.backend, &config.source)
        .map_err(|e| Failure::Failed(e.to_string()))?;
    let result = backend
        .login(p11derive::ck::CKU_USER, &pin)
        .map_err(|e| Failure::Failed(format!("backing token login: {e}")))
        .and_then(|()| {
            let ak = derive::audit_key(&backend).map_err(|e| Failure::Failed(e.to_string()))?;
            f(&store, &backend, &ak)
        });
    let _ = backend.logout();
    backend.finalize();
    result
}

/// A change: refused on a rolled-back store, audited, then the HSM anchor is
/// moved to its record (or to the refusal's record).
fn with_hsm(
    args: &Args,
    what: &str,
    f: impl FnOnce(&Store, &Backend, &Audit) -> Result<Asset, Failure>,
) -> Result<(), Failure> {
    with_key(args, |store, backend, ak| {
        store.check_root(ak)?;
        refuse_rolled_back(store, backend, ak)?;
        let done = f(store, backend, &Audit { ak, session: None });
        if let Err(e) = lifecycle::advance_anchor(store, backend, false) {
            eprintln!("p11derive: warning: rollback anchor not advanced: {e}");
        }
        report(args, store, &done?, what)
    })
}

fn asset_create(args: &Args, name: &str) -> Result<(), Failure> {
    let types = "secp256k1, p256, aes256 or hmac-sha256";
    let kt = match args.value("--type") {
        Some(t) => KeyType::from_name(t).ok_or_else(|| {
            Failure::Usage(format!("--type {t:?} is not a key type; use {types}"))
        })?,
        None => {
            return Err(Failure::Usage(format!(
                "asset create needs --type ({types})"
            )))
        }
    };
    let object_id = match args.value("--id") {
        None => None,
        Some(h) => Some(
            unhex(h)
                .filter(|b| !b.is_empty() && b.len() <= 64)
                .ok_or_else(|| {
                    Failure::Usage(format!("--id {h:?} must be 1 to 64 bytes of hex"))
                })?,
        ),
    };
    let id = asset_id(name)?;
    with_hsm(args, "create", |store, backend, audit| {
        Ok(lifecycle::create(
            backend, store, audit, &id, kt, object_id,
        )?)
    })
}

fn unhex(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
        .collect()
}

/// What the asset looks like after a command: a line for people, JSON for scripts.
fn report(args: &Args, store: &Store, asset: &Asset, what: &str) -> Result<(), Failure> {
    if args.flag("--json") {
        let history = store.history(asset.rowid)?;
        println!("{}", pretty(&asset_json(asset, Some(&history)))?);
    } else {
        let id = asset.id.as_str();
        let (cur, min) = (asset.current, asset.min_usable);
        let how = match asset.state {
            AssetState::Active => format!("version {cur} signs; versions {min}..={cur} verify"),
            AssetState::Rotating => format!(
                "versions {}..={cur} sign until `p11derive asset finish {id}`; versions {min}..={cur} verify",
                cur - 1
            ),
            AssetState::Suspended => format!("every operation refused until `p11derive asset resume {id}`"),
            AssetState::Retired => "final: no object, no operation, the name is never reused".into(),
        };
        println!(
            "{what}: asset {id:?} is {} at version {cur} ({how})",
            asset.state.name()
        );
    }
    Ok(())
}

fn pretty(v: &serde_json::Value) -> Result<String, Failure> {
    serde_json::to_string_pretty(v).map_err(|e| Failure::Failed(e.to_string()))
}

/// The status of version `n` in words.
fn version_status(a: &Asset, n: u32) -> &'static str {
    if a.state == AssetState::Retired {
        "retired"
    } else if n < a.min_usable {
        "trimmed"
    } else if a.state == AssetState::Suspended {
        "suspended"
    } else if n == a.current {
        "current"
    } else if a.may_sign(n) {
        "grace"
    } else {
        "verify-only"
    }
}

fn asset_json(a: &Asset, history: Option<&[VersionRecord]>) -> serde_json::Value {
    let versions = history.unwrap_or(&a.versions);
    serde_json::json!({
        "asset_id": a.id.as_str(),
        "key_type": a.key_type.name(),
        "state": a.state.name(),
        "current": a.current,
        "min_usable": a.min_usable,
        "object_id": hex(&a.object_id),
        "created_at": a.created_at,
        "versions": versions.iter().map(|v| serde_json::json!({
            "version": v.version,
            "label": format!("{}@v{}", a.id, v.version),
            "object_id": hex(&derive::version_object_id(&a.object_id, v.version)),
            "status": version_status(a, v.version),
            "may_sign": a.may_sign(v.version),
            "may_verify": a.may_verify(v.version),
            "public_key": v.public_key.as_deref().map(hex),
        })).collect::<Vec<_>>(),
    })
}

/// The store for a command that only reads: with a PIN at hand
/// (`--pin-file`, `$P11DERIVE_PIN`) its rows are verified under the state
/// key as they are read (the HSM's anchor and the store's state changes
/// checked first); without one they are shown as stored, and stderr says so.
fn readable_store(args: &Args) -> Result<Store, Failure> {
    let pin_given = args.value("--pin-file").is_some()
        || std::env::var_os("P11DERIVE_PIN").is_some_and(|p| !p.is_empty());
    if !pin_given {
        let config = load_config(args)?;
        eprintln!(
            "p11derive: note: asset rows are shown as stored, not verified under the HSM-derived \
             state key; give the PIN (--pin-file FILE or $P11DERIVE_PIN) to verify them"
        );
        return open_store(&config);
    }
    let config = load_config(args)?;
    let store = open_store(&config)?;
    with_key(args, |_, backend, ak| {
        store.check_root(ak)?;
        refuse_rolled_back(&store, backend, ak)
    })?;
    Ok(store)
}

fn asset_show(args: &Args, name: &str) -> Result<(), Failure> {
    let store = readable_store(args)?;
    let id = asset_id(name)?;
    let a = store
        .asset_by_name(&id)?
        .ok_or_else(|| Failure::NotFound(StoreError::NotFound(name.into()).to_string()))?;
    let history = store.history(a.rowid)?;
    if args.flag("--json") {
        println!("{}", pretty(&asset_json(&a, Some(&history)))?);
        return Ok(());
    }
    println!("asset       {}", a.id);
    println!("type        {}", a.key_type);
    let note = match a.state {
        AssetState::Rotating => format!(
            " (version {} may still sign until `p11derive asset finish {}`)",
            a.current.saturating_sub(1),
            a.id
        ),
        AssetState::Suspended => format!(
            " (every operation refused; resumes to {})",
            a.resumes_to.name()
        ),
        AssetState::Retired => " (final: no object, no operation)".into(),
        AssetState::Active => String::new(),
    };
    println!("state       {}{note}", a.state.name());
    println!("current     {}", a.current);
    println!("min_usable  {}", a.min_usable);
    println!("CKA_ID      {}", hex(&a.object_id));
    println!();
    let lw = a.id.as_str().len() + 12;
    println!(
        "{:>7}  {:lw$}  {:11}  {:4}  {:6}  PUBLIC KEY",
        "VERSION", "LABEL", "STATUS", "SIGN", "VERIFY"
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for v in &history {
        println!(
            "{:>7}  {:lw$}  {:11}  {:4}  {:6}  {}",
            v.version,
            format!("{}@v{}", a.id, v.version),
            version_status(&a, v.version),
            yes(a.may_sign(v.version)),
            yes(a.may_verify(v.version)),
            v.public_key
                .as_deref()
                .map(hex)
                .unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

fn asset_list(args: &Args) -> Result<(), Failure> {
    let store = readable_store(args)?;
    let assets = store.list_assets()?;
    if args.flag("--json") {
        let list: Vec<serde_json::Value> = assets.iter().map(|a| asset_json(a, None)).collect();
        println!("{}", pretty(&serde_json::Value::Array(list))?);
        return Ok(());
    }
    if assets.is_empty() {
        println!("no assets in {}", store.path().display());
        return Ok(());
    }
    let width = assets
        .iter()
        .map(|a| a.id.as_str().len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:width$}  {:11}  {:9}  {:>7}  {:>10}  CKA_ID",
        "ASSET", "TYPE", "STATE", "CURRENT", "MIN_USABLE"
    );
    for a in &assets {
        println!(
            "{:width$}  {:11}  {:9}  {:>7}  {:>10}  {}",
            a.id.as_str(),
            a.key_type.name(),
            a.state.name(),
            a.current,
            a.min_usable,
            hex(&a.object_id)
        );
    }
    Ok(())
}
