//! `p11derive`: the command-line tool beside the provider.
//!
//! Exit codes: 0 success, 1 the operation failed (the message says why),
//! 2 the command line is wrong.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use p11derive::backend::Backend;
use p11derive::config::{self, Config};
use p11derive::store::{hex, Store, StoreError};
use zeroize::Zeroizing;

const USAGE: &str = "\
usage: p11derive [--config FILE] COMMAND

commands:
  init [--import-root FILE] [--pin-file FILE]
        create the root secret inside the backing HSM (non-extractable) and the
        store; --import-root imports a given 32-byte root instead (hex text or
        raw bytes), for test vectors and recovery ceremonies
  asset list [--json]
        list the assets of the store

The config file is --config, else $P11DERIVE_CONF, else /etc/p11derive/p11derive.toml.
The backing token's user PIN is read from --pin-file, else $P11DERIVE_PIN.
Exit codes: 0 success, 1 failure, 2 usage error.";

enum Failure {
    Usage(String),
    Failed(String),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("p11derive: {m}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(m)) => {
            eprintln!("p11derive: {m}");
            ExitCode::from(1)
        }
    }
}

/// A parsed command line: positional words and `--flag [value]` options.
struct Args {
    words: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

const VALUED: &[&str] = &["--config", "--import-root", "--pin-file"];
const SWITCHES: &[&str] = &["--json", "--help"];

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
    match words.as_slice() {
        ["init"] => init(&args),
        ["asset", "list"] => asset_list(&args),
        [] => Err(Failure::Usage("no command given".into())),
        other => Err(Failure::Usage(format!(
            "unknown command {:?}",
            other.join(" ")
        ))),
    }
}

fn load_config(args: &Args) -> Result<Config, Failure> {
    let path = config::locate(args.value("--config").map(Path::new));
    Config::load(&path).map_err(Failure::Failed)
}

/// The backing token's user PIN, kept in a buffer that is wiped on drop.
fn read_pin(args: &Args) -> Result<Zeroizing<String>, Failure> {
    if let Some(file) = args.value("--pin-file") {
        let text = Zeroizing::new(
            std::fs::read_to_string(file)
                .map_err(|e| Failure::Failed(format!("cannot read PIN file {file}: {e}")))?,
        );
        return Ok(Zeroizing::new(
            text.trim_end_matches(['\n', '\r']).to_string(),
        ));
    }
    match std::env::var("P11DERIVE_PIN") {
        Ok(pin) if !pin.is_empty() => Ok(Zeroizing::new(pin)),
        _ => Err(Failure::Failed(
            "no PIN for the backing token: set P11DERIVE_PIN or pass --pin-file FILE".into(),
        )),
    }
}

/// Reads a root to import: 64 hex digits (whitespace ignored) or 32 raw bytes.
fn read_root(path: &str) -> Result<Zeroizing<[u8; 32]>, Failure> {
    let raw = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| Failure::Failed(format!("cannot read root file {path}: {e}")))?,
    );
    let mut root = Zeroizing::new([0u8; 32]);
    let hex_digits: Zeroizing<Vec<u8>> = Zeroizing::new(
        raw.iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect(),
    );
    if hex_digits.len() == 64 && hex_digits.iter().all(u8::is_ascii_hexdigit) {
        for (i, pair) in hex_digits.chunks(2).enumerate() {
            let nib = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            root[i] = (nib(pair[0]) << 4) | nib(pair[1]);
        }
    } else if raw.len() == 32 {
        root.copy_from_slice(&raw);
    } else {
        return Err(Failure::Failed(format!(
            "root file {path} must hold exactly 32 bytes, raw or as 64 hex digits"
        )));
    }
    Ok(root)
}

fn init(args: &Args) -> Result<(), Failure> {
    let config = load_config(args)?;
    let import = args.value("--import-root").map(read_root).transpose()?;
    let pin = read_pin(args)?;
    let backend = Backend::open(&config.backend, &config.source)
        .map_err(|e| Failure::Failed(e.to_string()))?;
    let result = init_with(&config, &backend, import.as_deref(), pin.as_bytes());
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
    let path = &config.store.path;
    match Store::create(path) {
        Ok(_) => println!("store {} created", path.display()),
        Err(StoreError::Exists(_)) => {
            Store::open(path).map_err(|e| Failure::Failed(e.to_string()))?;
            println!("store {} already exists; kept", path.display());
        }
        Err(e) => return Err(Failure::Failed(e.to_string())),
    }
    let _ = backend.logout();
    Ok(())
}

fn asset_list(args: &Args) -> Result<(), Failure> {
    let config = load_config(args)?;
    let store = Store::open(&config.store.path).map_err(|e| Failure::Failed(e.to_string()))?;
    let assets = store
        .list_assets()
        .map_err(|e| Failure::Failed(e.to_string()))?;
    if args.flag("--json") {
        let list: Vec<serde_json::Value> = assets
            .iter()
            .map(|a| {
                serde_json::json!({
                    "asset_id": a.id.as_str(),
                    "key_type": a.key_type.name(),
                    "state": a.state.name(),
                    "current": a.current,
                    "min_usable": a.min_usable,
                    "object_id": hex(&a.object_id),
                    "created_at": a.created_at,
                    "versions": a.versions.iter().map(|v| serde_json::json!({
                        "version": v.version,
                        "public_key": v.public_key.as_deref().map(hex),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let text =
            serde_json::to_string_pretty(&list).map_err(|e| Failure::Failed(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    if assets.is_empty() {
        println!("no assets in {}", display(&config.store.path));
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

fn display(p: &Path) -> String {
    PathBuf::from(p).display().to_string()
}
