//! The configuration file (TOML): its sections, their defaults and their validation.
//!
//! The provider reads the file `P11DERIVE_CONF` names, else the default path
//! (`C_Initialize`'s `pReserved` must be NULL, as PKCS#11 says); the CLI's
//! `--config` comes first for the CLI.
//! The reference for every key is in README.md ("Configuration").

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::log::Level;

mod errors;
pub use errors::Origin;

/// Where the config is looked for when nothing names it.
pub const DEFAULT_PATH: &str = "/etc/p11derive/p11derive.toml";
/// The environment variable that names the config file.
pub const ENV_VAR: &str = "P11DERIVE_CONF";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub token: TokenSection,
    pub backend: BackendSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default)]
    pub cache: CacheSection,
    #[serde(default)]
    pub memory: MemorySection,
    #[serde(default)]
    pub gcm: GcmSection,
    #[serde(default)]
    pub users: UsersSection,
    #[serde(default)]
    pub approvals: ApprovalsSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub audit: AuditSection,
    /// The file this was read from, for messages.
    #[serde(skip)]
    pub source: PathBuf,
}

/// A field left out takes its value from `Default`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSection {
    /// The label of the token p11derive shows (at most 32 bytes).
    pub label: String,
}

impl Default for TokenSection {
    fn default() -> Self {
        TokenSection {
            label: "p11derive".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    /// Path of the backing HSM's PKCS#11 module.
    pub module: PathBuf,
    /// Label of the backing token that holds the root.
    pub token_label: String,
    /// Label of the root secret on the backing token.
    #[serde(default = "default_root_label")]
    pub root_label: String,
    /// How long a call into the backing HSM may take before the operation
    /// fails with CKR_DEVICE_ERROR (milliseconds).
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// The longest wait between attempts while the backing HSM keeps
    /// failing (milliseconds); the first wait is 100 ms, doubling.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

fn default_call_timeout_ms() -> u64 {
    10_000
}

fn default_backoff_max_ms() -> u64 {
    5_000
}

/// A field left out takes its value from `Default`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// The SQLite file holding assets and counters.
    pub path: PathBuf,
    /// At most how often (milliseconds) a process that commits records
    /// moves the rollback anchor in the backing HSM to its newest record:
    /// the longest stretch of the log's tail that could be cut unnoticed,
    /// and one token-object write in the HSM each time.
    pub anchor_interval_ms: u64,
    /// A PostgreSQL store shared by several hosts (`postgres://…`); when
    /// set, `path` is not used.
    pub url: Option<String>,
    /// How long (milliseconds) a connection to PostgreSQL may take to open,
    /// and an unanswered call may wait, before it fails.
    pub connect_timeout_ms: u64,
    /// TLS to PostgreSQL: `disable`, `prefer` (the default: TLS when the
    /// server offers it, the mode negotiated logged at every connection),
    /// `require`, `verify-ca`, `verify-full` (see [`SslMode`]).
    pub sslmode: Option<String>,
    /// The CA certificate(s) (PEM) that the PostgreSQL server's
    /// certificate must chain to (`verify-ca`, `verify-full`; with
    /// `require` too when given, as libpq does).
    pub ca_file: Option<PathBuf>,
    /// A group that shares the SQLite store and the log file with the user
    /// p11derive runs as (an operator's CLI): files are then created 0660
    /// and owned by it; without it, 0600.
    pub group: Option<String>,
}

/// How the connection to PostgreSQL is encrypted (`[store] sslmode`), with
/// libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, else unencrypted (logged as such).
    Prefer,
    /// TLS or no connection; the certificate is checked only when
    /// `ca_file` is given (as `verify-ca`).
    Require,
    /// TLS, the server's certificate chaining to `ca_file`.
    VerifyCa,
    /// As `verify-ca`, and the certificate names the host of the URL.
    VerifyFull,
}

impl SslMode {
    pub const NAMES: &'static str = "disable, prefer, require, verify-ca or verify-full";

    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate is checked against `ca_file`.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl StoreSection {
    /// `[store] sslmode` (default `prefer`), checked with `ca_file`: a
    /// message naming the key and the fix when they do not fit together.
    pub fn ssl_mode(&self) -> Result<SslMode, String> {
        let from_url = self.url.as_deref().and_then(|u| url_param(u, "sslmode"));
        let (key, given) = match (&self.sslmode, from_url) {
            (Some(_), Some(_)) => {
                return Err(
                    "[store] sslmode is set and [store] url names an sslmode too; keep \
                     only the [store] sslmode key"
                        .into(),
                )
            }
            (Some(s), None) => ("[store] sslmode", Some(s.as_str())),
            (None, u) => ("the sslmode of [store] url", u),
        };
        let mode = match given {
            None => SslMode::Prefer,
            Some(s) => SslMode::parse(s)
                .ok_or_else(|| format!("{key} = {s:?} is not a mode; use {}", SslMode::NAMES))?,
        };
        if mode.verifies() && self.ca_file.is_none() {
            return Err(format!(
                "[store] sslmode = \"{}\" checks the server's certificate against a CA, but \
                 [store] ca_file is not set; set it to the CA certificate (PEM) that signed the \
                 server's certificate",
                mode.name()
            ));
        }
        if mode == SslMode::Disable && self.ca_file.is_some() {
            return Err(
                "[store] ca_file is set but [store] sslmode = \"disable\" never uses it; remove \
                 one of them"
                    .into(),
            );
        }
        Ok(mode)
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            path: PathBuf::from("/var/lib/p11derive/state.db"),
            anchor_interval_ms: 1000,
            url: None,
            connect_timeout_ms: 5000,
            sslmode: None,
            ca_file: None,
            group: None,
        }
    }
}

/// A field left out takes its value from `Default`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySection {
    /// Locked memory p11derive may use for secrets, in KiB: 32-byte chunks
    /// (the audit key, each cached key, PINs). Checked at C_Initialize
    /// against RLIMIT_MEMLOCK; it also bounds the key cache.
    pub locked_kib: u64,
    /// Run even when memory cannot be locked (secrets could be swapped to
    /// disk); p11derive then says so loudly, once. Default: fail closed.
    pub allow_unlocked: bool,
}

impl Default for MemorySection {
    fn default() -> Self {
        MemorySection {
            locked_kib: 1024,
            allow_unlocked: false,
        }
    }
}

/// Metrics for Prometheus (docs/operations.md). Off unless `dir` is set for
/// the per-process files; `p11derive metrics` works either way.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// The directory where each process that loads the provider keeps its
    /// own metrics file (`p11derive-PID.prom`, the textfile-collector
    /// convention) and where `audit verify` leaves its last result
    /// (`audit-verify.json`). None: no file is written.
    pub dir: Option<PathBuf>,
    /// How often a process rewrites its file, in milliseconds.
    pub interval_ms: u64,
    /// Whether `p11derive metrics` labels operations with the asset's name
    /// (false: one series for all assets, for stores with many assets).
    pub asset_labels: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            dir: None,
            interval_ms: 5_000,
            asset_labels: true,
        }
    }
}

/// The audit log's upkeep (docs/operations.md, "Checkpoints").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSection {
    /// A passing `audit verify` writes a verified checkpoint when the
    /// newest one's record is older than this many seconds (or there is
    /// none); 0: never automatically (`audit checkpoint` still does).
    pub checkpoint_interval_s: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            checkpoint_interval_s: 86_400,
        }
    }
}

/// Both fields optional: the TTL is `ttl_ms`, else `ttl_seconds`, else 300 s.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    /// How long a derived key stays cached (in locked memory) after its
    /// derivation through the backing HSM; 0 derives for every C_SignInit.
    /// Default 300 (unless `ttl_ms` is set).
    pub ttl_seconds: Option<u64>,
    /// The same in milliseconds, for a TTL under a second; one of the two.
    pub ttl_ms: Option<u64>,
}

impl CacheSection {
    /// The TTL either key sets, by default 300 seconds.
    pub fn ttl(&self) -> std::time::Duration {
        match (self.ttl_ms, self.ttl_seconds) {
            (Some(ms), _) => std::time::Duration::from_millis(ms),
            (None, Some(s)) => std::time::Duration::from_secs(s),
            (None, None) => std::time::Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Whether `C_DestroyObject` on an asset's alias retires the asset
    /// (for good: its id can never be registered again). Default: refused.
    #[serde(default)]
    pub destroy_retires: bool,
}

/// k-of-n approvals (users mode): how long a request collects approvals,
/// and whether the approval that completes a quorum runs its operation.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalsSection {
    /// A request's lifetime unless `--expires` says otherwise (`24h`).
    pub expires: String,
    /// `manual` (`p11derive request execute ID`) or `on-quorum`.
    pub execute: ExecuteWhen,
    /// A governed root recovery's cooldown: the time between its
    /// announcement (the request) and the earliest import (`24h`).
    pub recover_cooldown: String,
}

impl Default for ApprovalsSection {
    fn default() -> Self {
        ApprovalsSection {
            expires: "24h".into(),
            execute: ExecuteWhen::Manual,
            recover_cooldown: "24h".into(),
        }
    }
}

/// When an approved request's operation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecuteWhen {
    /// At `p11derive request execute ID`.
    Manual,
    /// As soon as the approval that completes the quorum is recorded.
    OnQuorum,
}

/// Users mode: people log in as themselves (`C_Login` with
/// `name:secret`), with roles and policies; the provider logs in to the
/// backing HSM with its own service credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsersSection {
    /// Users mode on (default off: login passes through to the HSM).
    pub enabled: bool,
    /// A file (mode 0600 or stricter, owned by the user running the
    /// process) holding the backing HSM's user PIN, the service credential.
    pub service_pin_file: Option<PathBuf>,
    /// Or an environment variable holding it.
    pub service_pin_env: Option<String>,
    /// Failed logins in a row after which a name is locked out.
    pub max_failures: u32,
    /// How long a lockout lasts (an admin's `user unlock` lifts it sooner).
    pub lockout_seconds: u64,
    /// The length a user's secret must have (bytes), as `CK_TOKEN_INFO`
    /// reports it.
    pub min_secret_len: u32,
    pub max_secret_len: u32,
}

impl Default for UsersSection {
    fn default() -> Self {
        UsersSection {
            enabled: false,
            service_pin_file: None,
            service_pin_env: None,
            max_failures: 5,
            lockout_seconds: 900,
            min_secret_len: 8,
            max_secret_len: 128,
        }
    }
}

impl UsersSection {
    /// The service credential, read into locked memory: from
    /// `service_pin_file` (which must be a regular file no one but its
    /// owner, this process's user, may read or write) or `service_pin_env`.
    /// The error names the file or variable and the fix.
    pub fn service_credential(&self, config: &Path) -> Result<crate::secure::SecretBytes, String> {
        let cfg = config.display();
        if let Some(path) = &self.service_pin_file {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(path).map_err(|e| {
                format!(
                    "config file {cfg}: [users] service_pin_file {}: {e}; create it with the \
                     backing token's user PIN (mode 0600)",
                    path.display()
                )
            })?;
            let uid = crate::files::effective_user().1;
            if !meta.is_file() || meta.mode() & 0o077 != 0 || meta.uid() != uid {
                return Err(format!(
                    "config file {cfg}: [users] service_pin_file {} is mode {:o} owned by uid {} \
                     (this process runs as uid {uid}): the service credential must be a regular \
                     file only its owner may read; run `chmod 600 {}` and chown it to the \
                     service's user",
                    path.display(),
                    meta.mode() & 0o7777,
                    meta.uid(),
                    path.display()
                ));
            }
            let mut f = std::fs::File::open(path).map_err(|e| {
                format!(
                    "config file {cfg}: [users] service_pin_file {}: {e}",
                    path.display()
                )
            })?;
            return crate::secure::read_line_secret(&mut f, 256).map_err(|e| {
                format!(
                    "config file {cfg}: [users] service_pin_file {}: {e}",
                    path.display()
                )
            });
        }
        if let Some(var) = &self.service_pin_env {
            return match crate::secure::from_env(var)? {
                Some(pin) if !pin.is_empty() => Ok(pin),
                _ => Err(format!(
                    "config file {cfg}: [users] service_pin_env names {var}, which is not set in \
                     this process's environment; set it to the backing token's user PIN"
                )),
            };
        }
        Err(format!(
            "config file {cfg}: [users] enabled = true needs the service credential: set \
             service_pin_file = \"/etc/p11derive/service.pin\" (a file, mode 0600, holding the \
             backing token's user PIN) or service_pin_env = \"P11DERIVE_SERVICE_PIN\""
        ))
    }
}

/// AES-GCM policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcmSection {
    /// Executable names (a process's `/proc/self/comm`, or the file name of
    /// its `argv[0]`) allowed GCM tags of 64 or 32 bits, which SP 800-38D
    /// (Appendix C) permits only for special applications. Everyone else
    /// is held to 96 bits or more.
    pub short_tag_clients: Vec<String>,
}

impl GcmSection {
    /// The name this process is matched by when one is listed in
    /// `short_tag_clients`; `None` when it is not listed.
    pub fn short_tags_allowed_for(&self) -> Option<String> {
        if self.short_tag_clients.is_empty() {
            return None;
        }
        process_names()
            .into_iter()
            .find(|n| self.short_tag_clients.iter().any(|c| c == n))
    }
}

/// The names this process goes by: its `comm` (at most 15 bytes, as the
/// kernel keeps it) and the file name of its `argv[0]`.
pub fn process_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(comm) = std::fs::read_to_string("/proc/self/comm") {
        names.push(comm.trim_end_matches('\n').to_string());
    }
    if let Some(arg0) = std::env::args_os().next() {
        if let Some(file) = Path::new(&arg0).file_name() {
            names.push(file.to_string_lossy().into_owned());
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// Log file; stderr when absent.
    pub file: Option<PathBuf>,
    /// One of error, warn, info, debug.
    #[serde(default)]
    pub level: Option<String>,
}

fn default_root_label() -> String {
    "p11derive-root".into()
}

/// Picks the config file: an explicit path first, then `P11DERIVE_CONF`,
/// then [`DEFAULT_PATH`].
pub fn locate(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os(ENV_VAR) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

impl Config {
    /// Reads and checks the config. The error names the file, the key and
    /// the fix; its hint follows where `path` came from (`Origin::of`: the
    /// CLI's `--config`, `P11DERIVE_CONF`, or the default).
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| errors::unreadable(path, &e))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| errors::invalid(path, &e))?;
        config.source = path.to_path_buf();
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let file = self.source.display();
        for (key, value) in [
            ("expires", &self.approvals.expires),
            ("recover_cooldown", &self.approvals.recover_cooldown),
        ] {
            crate::approvals::parse_duration(value)
                .map_err(|m| format!("config file {file}: [approvals] {key}: {m}"))?;
        }
        let label = &self.token.label;
        if label.is_empty() || label.len() > 32 {
            return Err(format!(
                "config file {file}: [token] label = {label:?} must be 1 to 32 bytes long"
            ));
        }
        for (key, value) in [
            ("token_label", &self.backend.token_label),
            ("root_label", &self.backend.root_label),
        ] {
            if value.is_empty() {
                return Err(format!(
                    "config file {file}: [backend] {key} is empty; set it to the label used on \
                     the backing HSM"
                ));
            }
        }
        if self.backend.module.as_os_str().is_empty() {
            return Err(format!(
                "config file {file}: [backend] module is empty; set it to the path of the \
                 backing HSM's PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so)"
            ));
        }
        for (key, value, least, default) in [
            (
                "[backend] call_timeout_ms",
                self.backend.call_timeout_ms,
                1,
                10_000,
            ),
            (
                "[backend] backoff_max_ms",
                self.backend.backoff_max_ms,
                0,
                5_000,
            ),
            (
                "[store] anchor_interval_ms",
                self.store.anchor_interval_ms,
                1,
                1_000,
            ),
            (
                "[store] connect_timeout_ms",
                self.store.connect_timeout_ms,
                1,
                5_000,
            ),
            (
                "[metrics] interval_ms",
                self.metrics.interval_ms,
                100,
                5_000,
            ),
        ] {
            if value < least || value > 3_600_000 {
                return Err(format!(
                    "config file {file}: {key} = {value} is out of range; use {least} to \
                     3600000 milliseconds (default {default})"
                ));
            }
        }
        self.store
            .ssl_mode()
            .map_err(|e| format!("config file {file}: {e}"))?;
        let u = &self.users;
        if u.enabled && u.service_pin_file.is_none() && u.service_pin_env.is_none() {
            return Err(format!(
                "config file {file}: [users] enabled = true needs service_pin_file (a file, mode \
                 0600, holding the backing token's user PIN) or service_pin_env (a variable \
                 holding it); a command-line argument is never accepted"
            ));
        }
        if u.max_failures == 0 || u.max_failures > 1000 {
            return Err(format!(
                "config file {file}: [users] max_failures = {} is out of range; use 1 to 1000 \
                 (default 5)",
                u.max_failures
            ));
        }
        if u.lockout_seconds == 0 || u.lockout_seconds > 31 * 86_400 {
            return Err(format!(
                "config file {file}: [users] lockout_seconds = {} is out of range; use 1 to \
                 2678400 (31 days; default 900)",
                u.lockout_seconds
            ));
        }
        if u.min_secret_len < 1 || u.min_secret_len > u.max_secret_len || u.max_secret_len > 1024 {
            return Err(format!(
                "config file {file}: [users] min_secret_len = {} and max_secret_len = {} must \
                 satisfy 1 <= min <= max <= 1024 (defaults 8 and 128)",
                u.min_secret_len, u.max_secret_len
            ));
        }
        match (self.cache.ttl_seconds, self.cache.ttl_ms) {
            (Some(s), Some(ms)) => {
                return Err(format!(
                    "config file {file}: [cache] ttl_seconds = {s} and ttl_ms = {ms} are both \
                     set; keep one of them"
                ));
            }
            (_, Some(ms)) if ms > 3_600_000 => {
                return Err(format!(
                    "config file {file}: [cache] ttl_ms = {ms} is out of range; use 0 to 3600000 \
                     milliseconds, or ttl_seconds for a longer TTL"
                ));
            }
            _ => {}
        }
        if let Some(group) = &self.store.group {
            if group.is_empty() || group.contains(['\0', ':', '\n']) {
                return Err(format!(
                    "config file {file}: [store] group = {group:?} is not a group name; name the \
                     group that shares the store and the log (README, \"Sharing the store\"), or \
                     remove the key"
                ));
            }
        }
        if let Some(url) = &self.store.url {
            if !is_url(url) {
                return Err(format!(
                    "config file {file}: [store] url = {:?} is not a PostgreSQL URL; write \
                     postgres://USER:PASSWORD@HOST:PORT/DATABASE (or remove url to use the SQLite \
                     file at [store] path)",
                    redact(url)
                ));
            }
        }
        for name in &self.gcm.short_tag_clients {
            if name.is_empty() || name.contains('/') {
                return Err(format!(
                    "config file {file}: [gcm] short_tag_clients holds {name:?}; list executable \
                     names (as in /proc/PID/comm or the file name of argv[0]), not paths"
                ));
            }
        }
        self.log_level()?;
        Ok(())
    }

    /// The configured level; by default `info` into a log file and `warn` on
    /// stderr, which is usually the client program's own terminal.
    pub fn log_level(&self) -> Result<Level, String> {
        match self.log.level.as_deref() {
            None if self.log.file.is_some() => Ok(Level::Info),
            None => Ok(Level::Warn),
            Some(s) => Level::parse(s).ok_or_else(|| {
                format!(
                    "config file {}: [log] level = {s:?} is not one of error, warn, info, debug",
                    self.source.display()
                )
            }),
        }
    }
}

/// Whether `[store] url` names a PostgreSQL store.
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// The value of a `?name=value` parameter of a URL.
pub fn url_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = url.split_once('?')?;
    query
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

/// A URL without its `?name=value` parameter.
pub fn without_param(url: &str, name: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| p.split('=').next() != Some(name))
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// The URL without its password, for messages: neither the one in the
/// user part (`USER:PASSWORD@`) nor a `password=` parameter of the query
/// (libpq accepts both).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let mut out = match rest.rsplit_once('@') {
        Some((auth, host)) => {
            let user = auth.split_once(':').map_or(auth, |(u, _)| u);
            format!("{scheme}://{user}@{host}")
        }
        None => format!("{scheme}://{rest}"),
    };
    if let Some(query) = query {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| p.split('=').next() != Some("password"))
            .collect();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[token]
label = "p11derive"
[backend]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "custody-root"
root_label = "p11derive-root"
[store]
path = "/var/lib/p11derive/state.db"
"#;

    #[test]
    fn parses_the_design_example() {
        let c = Config::parse(GOOD, Path::new("/x.toml")).unwrap();
        assert_eq!(c.backend.token_label, "custody-root");
        assert_eq!(c.store.path, PathBuf::from("/var/lib/p11derive/state.db"));
        assert_eq!(c.log_level().unwrap(), Level::Warn);
    }

    /// A section given in part takes the rest from its defaults.
    #[test]
    fn sections_given_in_part_take_the_defaults() {
        let text = format!("{GOOD}anchor_interval_ms = 7\n[memory]\n[cache]\n")
            .replace("label = \"p11derive\"\n", "");
        // The token label comes from the default, not from the text.
        assert!(!text.contains("label = \"p11derive\""), "{text}");
        let c = Config::parse(&text, Path::new("/x.toml")).unwrap();
        assert_eq!(c.token.label, "p11derive");
        assert_eq!(
            (
                c.store.anchor_interval_ms,
                c.store.connect_timeout_ms,
                c.store.url
            ),
            (7, 5000, None)
        );
        assert_eq!(
            (c.memory.locked_kib, c.memory.allow_unlocked),
            (1024, false)
        );
        assert_eq!(c.cache.ttl(), std::time::Duration::from_secs(300));
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let text = GOOD.replace("root_label", "root_lable");
        let e = Config::parse(&text, Path::new("/etc/x.toml")).unwrap_err();
        assert!(e.contains("/etc/x.toml"), "{e}");
        assert!(e.contains("root_lable"), "{e}");
    }

    #[test]
    fn backend_timeouts_have_defaults_and_a_zero_timeout_is_refused() {
        let c = Config::parse(GOOD, Path::new("/x.toml")).unwrap();
        assert_eq!(
            (c.backend.call_timeout_ms, c.backend.backoff_max_ms),
            (10_000, 5_000)
        );
        let text = GOOD.replace(
            "root_label = \"p11derive-root\"",
            "root_label = \"p11derive-root\"\ncall_timeout_ms = 0",
        );
        let e = Config::parse(&text, Path::new("/c.toml")).unwrap_err();
        assert!(
            e.contains("/c.toml") && e.contains("call_timeout_ms = 0"),
            "{e}"
        );
    }

    #[test]
    fn missing_backend_is_named() {
        let e = Config::parse("[token]\nlabel = \"t\"\n", Path::new("/c.toml")).unwrap_err();
        assert!(e.contains("backend"), "{e}");
    }

    #[test]
    fn long_token_label_is_refused() {
        let text = GOOD.replace(
            "label = \"p11derive\"",
            &format!("label = \"{}\"", "x".repeat(33)),
        );
        let e = Config::parse(&text, Path::new("/c.toml")).unwrap_err();
        assert!(e.contains("[token] label"), "{e}");
    }

    #[test]
    fn a_store_url_must_be_postgres_and_its_password_is_never_shown() {
        let c = Config::parse(GOOD, Path::new("/x.toml")).unwrap();
        assert_eq!((c.store.url, c.store.connect_timeout_ms), (None, 5_000));
        let with = |url: &str| GOOD.replace("[store]\n", &format!("[store]\nurl = \"{url}\"\n"));
        let c = Config::parse(&with("postgres://u:pw@db:5432/p"), Path::new("/x.toml")).unwrap();
        assert_eq!(c.store.url.as_deref(), Some("postgres://u:pw@db:5432/p"));
        let e = Config::parse(&with("mysql://u:s3cret@db/p"), Path::new("/c.toml")).unwrap_err();
        assert!(e.contains("[store] url") && e.contains("/c.toml"), "{e}");
        assert!(e.contains("mysql://u@db/p") && !e.contains("s3cret"), "{e}");
    }

    /// libpq takes a password in the user part or as a query parameter:
    /// neither reaches a message (the store's location in every log line
    /// and error is the redacted URL).
    #[test]
    fn sslmode_and_ca_file_are_checked_together_naming_the_keys() {
        let with = |extra: &str| {
            let text = format!("{GOOD}url = \"postgres://u:pw@h/db\"\n{extra}");
            Config::parse(&text, Path::new("/c.toml")).map(|c| c.store.ssl_mode())
        };
        assert_eq!(with("").unwrap(), Ok(SslMode::Prefer));
        assert_eq!(with("sslmode = \"require\"").unwrap(), Ok(SslMode::Require));
        let e = with("sslmode = \"verify-full\"").unwrap_err();
        assert!(
            e.contains("/c.toml") && e.contains("[store] ca_file is not set"),
            "{e}"
        );
        let e = with("sslmode = \"strict\"").unwrap_err();
        assert!(
            e.contains("[store] sslmode = \"strict\"") && e.contains("verify-ca"),
            "{e}"
        );
        let e = with("sslmode = \"disable\"\nca_file = \"/ca.pem\"").unwrap_err();
        assert!(e.contains("never uses it"), "{e}");
        let c = StoreSection {
            url: Some("postgres://h/db?sslmode=verify-ca&x=1".into()),
            ca_file: Some("/ca.pem".into()),
            ..StoreSection::default()
        };
        assert_eq!(c.ssl_mode(), Ok(SslMode::VerifyCa));
        assert_eq!(
            without_param("postgres://h/db?sslmode=verify-ca&x=1", "sslmode"),
            "postgres://h/db?x=1"
        );
        assert_eq!(
            without_param("postgres://h/db?sslmode=a", "sslmode"),
            "postgres://h/db"
        );
        assert_eq!(url_param("postgres://h/db?x=1", "sslmode"), None);
    }

    #[test]
    fn redaction_drops_every_password_of_a_url() {
        for (url, shown) in [
            (
                "postgres://u:secret@127.0.0.1:5432/db",
                "postgres://u@127.0.0.1:5432/db",
            ),
            ("postgresql://h/db", "postgresql://h/db"),
            ("postgres://u@h/db?password=secret", "postgres://u@h/db"),
            (
                "postgres://h/db?sslmode=require&password=secret&connect_timeout=5",
                "postgres://h/db?sslmode=require&connect_timeout=5",
            ),
            (
                "postgres://u:secret@h/db?application_name=x",
                "postgres://u@h/db?application_name=x",
            ),
        ] {
            assert_eq!(redact(url), shown);
        }
        assert!(is_url("postgresql://h/db") && !is_url("/var/lib/x.db"));
    }

    #[test]
    fn the_cache_ttl_is_set_in_seconds_or_milliseconds_not_both() {
        use std::time::Duration;
        let ttl = |cache: &str| {
            Config::parse(&format!("{GOOD}\n[cache]\n{cache}\n"), Path::new("/c.toml"))
                .map(|c| c.cache.ttl())
        };
        let c = Config::parse(GOOD, Path::new("/x.toml")).unwrap();
        assert_eq!(c.cache.ttl(), Duration::from_secs(300));
        assert_eq!(ttl("ttl_seconds = 0"), Ok(Duration::ZERO));
        assert_eq!(ttl("ttl_seconds = 7"), Ok(Duration::from_secs(7)));
        assert_eq!(ttl("ttl_ms = 0"), Ok(Duration::ZERO));
        assert_eq!(ttl("ttl_ms = 250"), Ok(Duration::from_millis(250)));
        assert_eq!(ttl("ttl_ms = 3600000"), Ok(Duration::from_secs(3600)));
        let e = ttl("ttl_seconds = 1\nttl_ms = 250").unwrap_err();
        assert!(
            e.contains("/c.toml") && e.contains("ttl_seconds = 1") && e.contains("ttl_ms = 250"),
            "{e}"
        );
        let e = ttl("ttl_ms = 3600001").unwrap_err();
        assert!(e.contains("/c.toml") && e.contains("[cache] ttl_ms"), "{e}");
        let e = ttl("ttl_ms = -1").unwrap_err();
        assert!(e.contains("ttl_ms"), "{e}");
    }

    #[test]
    fn a_store_group_is_a_name() {
        let c = Config::parse(GOOD, Path::new("/x.toml")).unwrap();
        assert_eq!(c.store.group, None);
        let with = |g: &str| GOOD.replace("[store]\n", &format!("[store]\ngroup = {g:?}\n"));
        let c = Config::parse(&with("p11derive"), Path::new("/x.toml")).unwrap();
        assert_eq!(c.store.group.as_deref(), Some("p11derive"));
        for bad in ["", "a:b"] {
            let e = Config::parse(&with(bad), Path::new("/c.toml")).unwrap_err();
            assert!(e.contains("/c.toml") && e.contains("[store] group"), "{e}");
        }
    }

    #[test]
    fn short_tag_clients_are_names_and_match_this_process() {
        let c = Config::parse(GOOD, Path::new("/x.toml")).unwrap();
        assert_eq!(c.gcm.short_tags_allowed_for(), None);
        let me = process_names();
        assert!(!me.is_empty());
        let with = |list: &str| {
            Config::parse(
                &format!("{GOOD}\n[gcm]\nshort_tag_clients = {list}\n"),
                Path::new("/c.toml"),
            )
        };
        let c = with(&format!("[\"other\", {:?}]", me[0])).unwrap();
        assert_eq!(c.gcm.short_tags_allowed_for(), Some(me[0].clone()));
        let c = with("[\"surely-not-this-test\"]").unwrap();
        assert_eq!(c.gcm.short_tags_allowed_for(), None);
        let e = with("[\"/usr/bin/app\"]").unwrap_err();
        assert!(
            e.contains("/c.toml") && e.contains("[gcm] short_tag_clients"),
            "{e}"
        );
    }

    #[test]
    fn bad_log_level_is_named() {
        let text = format!("{GOOD}\n[log]\nlevel = \"loud\"\n");
        let e = Config::parse(&text, Path::new("/c.toml")).unwrap_err();
        assert!(e.contains("[log] level"), "{e}");
    }
}
