//! The command line, declared once: parsing, per-command help, man pages and completions come from it.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use p11derive::derive::KeyType;

/// Exit codes, documented here once (the help, the man page and the README
/// quote this list).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the operation failed (config, store, backing HSM, a signature no version verifies);
     the message says why and what to do
  2  the command line is wrong (the message names the argument)
  3  refused: the asset's state does not allow it, the name or id is taken, the key
     type has no such operation, or (users mode) the login failed or the user's roles
     do not allow it
  4  no such asset (or user, policy, approver, quorum rule or request)
  5  the operation needs approvals: a request was recorded (its id is printed) and waits
     for approvers (`p11derive request --help`)";

const ABOUT: &str = "Derived keys from an HSM-held root: the CLI beside the PKCS#11 provider";

const LONG_ABOUT: &str = "\
p11derive manages the keys that libp11derive.so (the PKCS#11 provider) derives from one
root held in a backing HSM: it creates the root and the store, creates and rotates assets,
and verifies and exports the audit log.

The config file is --config FILE, else $P11DERIVE_CONF, else /etc/p11derive/p11derive.toml.

Commands that change anything, `audit verify` and `status` log in to the backing token with
its user PIN: from --pin-file FILE (`--pin-file -` reads standard input), else $P11DERIVE_PIN,
else a prompt on the terminal (no echo). The other read-only commands use the PIN only when it
is given by file or environment, to verify what they show under the HSM-derived keys.

In users mode ([users] enabled = true) the CLI logs in to the backing token with the config's
service credential, and every command on the store except `init` and `store migrate` acts as a
user: --user NAME (or $P11DERIVE_USER), whose secret comes from --pin-file, $P11DERIVE_PIN or
the prompt. The user's roles decide what it may do (`p11derive user --help`).";

#[derive(Parser)]
#[command(
    name = "p11derive",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = "Run `p11derive help COMMAND` (or `p11derive COMMAND --help`) for a command's options and examples.",
    after_long_help = EXIT_CODES,
    arg_required_else_help = true,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The config file [default: $P11DERIVE_CONF, else /etc/p11derive/p11derive.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Read the backing token's user PIN (users mode: the --user's secret) from FILE (`-`:
    /// standard input) [else $P11DERIVE_PIN, else a prompt on the terminal]
    #[arg(long, global = true, value_name = "FILE|-")]
    pub pin_file: Option<String>,

    /// Users mode: act as this user [default: $P11DERIVE_USER]; the user's secret comes from
    /// --pin-file, $P11DERIVE_PIN or the prompt
    #[arg(long, global = true, value_name = "NAME")]
    pub user: Option<String>,

    /// Print JSON (for scripts) instead of text
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create the root inside the backing HSM (non-extractable) and the store
    #[command(after_help = "\
Examples:
  p11derive init                       generate the root inside the HSM, create the store
  p11derive init --import-root FILE    import a given root (test vectors, recovery ceremonies)
  p11derive init --backup 3-of-5 --shares-dir /media/ceremony
                                       a new root, split into 5 SLIP-39 shares (any 3 recover it)
  p11derive init --group 2-of-3 --group 3-of-5 --groups-needed 2 --shares-terminal --passphrase

With --backup (or --group), the root is made from the HSM's random generator in locked
memory, split into SLIP-39 mnemonic shares, imported as the usual sensitive, non-extractable
root, and wiped. The shares go out once: to new files (--shares-dir) or one screen per share
(--shares-terminal). Without it the root is generated inside the HSM and its backup is the HSM
vendor's (docs/backup.md says which to choose).

An existing root and store are kept. `init` refuses to import a second root, and refuses a
new store for a root that already has one (restore that store instead).

In users mode ([users] enabled = true) init logs in to the HSM with the service credential
and creates the first admin, whose secret comes from --pin-file, $P11DERIVE_PIN or the prompt
(asked twice). Run on an existing root and store, it turns pass-through set-ups into users
mode, keeping every asset and the audit chain:
  p11derive init --admin alice
  p11derive init --admin alice --pin-file alice.secret")]
    Init {
        /// Import this 32-byte root (64 hex digits, whitespace ignored, or 32 raw bytes)
        /// instead of generating one inside the HSM
        #[arg(long, value_name = "FILE")]
        import_root: Option<PathBuf>,
        /// Users mode: the first admin's name (required there)
        #[arg(long, value_name = "NAME")]
        admin: Option<String>,
        #[command(flatten)]
        backup: crate::args_root::BackupArgs,
    },

    /// What p11derive finds (config, store, backing token, root, anchor, assets) and what is
    /// wrong, each problem with its fix
    #[command(
        visible_alias = "doctor",
        after_help = "\
Exit status 0 when nothing is wrong, 1 otherwise. With the PIN (--pin-file, $P11DERIVE_PIN,
or the prompt on a terminal) it also checks the root's fingerprint, the HSM's rollback anchor
and the store's state under the HSM-derived keys.

Examples:
  p11derive status
  p11derive --config /etc/p11derive/p11derive.toml doctor --json"
    )]
    Status,

    /// Create, list, show, rotate and end assets (each a key with versions)
    #[command(subcommand, arg_required_else_help = true)]
    Asset(AssetCommand),

    /// Say which version of an EC asset made a signature
    #[command(after_help = "\
The signature may be DER (OpenSSL, `pkcs11-tool --signature-format openssl`) or raw r||s.
Every version that still verifies is tried; the one that verifies is printed.
Exit status 0 when a version verifies, 1 when none does.

Examples:
  p11derive verify --asset hot-wallet-1 --signature msg.sig --message msg.txt
  p11derive verify --asset hot-wallet-1 --signature msg.sig --digest 9f86d0...0a08 --json")]
    Verify(VerifyArgs),

    /// Verify, export and follow the audit log
    #[command(subcommand, arg_required_else_help = true)]
    Audit(AuditCommand),

    /// Move a store (SQLite to PostgreSQL)
    #[command(subcommand, arg_required_else_help = true)]
    Store(StoreCommand),

    /// Users mode: add, list, show, lock, unlock and remove users, set their roles and secrets
    /// (admins only)
    #[command(subcommand, arg_required_else_help = true)]
    User(crate::args_users::UserCommand),

    /// Users mode: set, show and remove the policies of assets and asset patterns (admins
    /// only; auditors may show)
    #[command(subcommand, arg_required_else_help = true)]
    Policy(crate::args_users::PolicyCommand),

    /// Users mode: register and remove approvers (their public keys) for k-of-n approvals
    /// (admins; auditors may list)
    #[command(subcommand, arg_required_else_help = true)]
    Approver(crate::args_approvals::ApproverCommand),

    /// Users mode: which operations wait for how many approvals (admins; auditors may list)
    #[command(subcommand, arg_required_else_help = true)]
    Quorum(crate::args_approvals::QuorumCommand),

    /// Users mode: requests waiting for approvals: list, show, export, approve, reject, sign,
    /// execute, cancel; propose a signature (`request new sign`)
    #[command(subcommand, arg_required_else_help = true)]
    Request(crate::args_approvals::RequestCommand),

    /// The root's SLIP-39 backup shares: recover the root into a (new) backing HSM, or drill
    /// the shares against the live root
    #[command(subcommand, arg_required_else_help = true)]
    Root(crate::args_root::RootCommand),

    /// The store's metrics for Prometheus: operations, refusals, lifecycle, audit chain, anchor
    #[command(after_help = "\
Prints the store's metrics (docs/operations.md, \"Metrics\") in Prometheus text format 0.0.4
(what `promtool check metrics` and node_exporter's textfile collector read), or OpenMetrics 1.0
with --openmetrics. With --listen it serves them over HTTP instead (GET /metrics; the scraper's
Accept header chooses the format) until stopped.

The metrics are read from the store without the audit key: they are informative, and
`p11derive audit verify` is the authority on what the log holds. Records are counted
incrementally: only the records newer than the last count are read (kept in memory with
--listen, in [metrics] dir/metrics-counts.json otherwise; without [metrics] dir every run counts
the whole log). With the PIN (--pin-file, $P11DERIVE_PIN) the HSM's rollback anchor is read too
(p11derive_anchor_*). In users mode the --user must be allowed to read the audit log.

Examples:
  p11derive metrics > /var/lib/node_exporter/textfile/p11derive.prom.tmp
  p11derive metrics --openmetrics --no-asset-labels
  p11derive --pin-file /etc/p11derive/pin metrics --listen 127.0.0.1:9464")]
    Metrics(MetricsArgs),

    /// Print a shell completion script
    #[command(after_help = "\
Examples:
  p11derive completions bash > /usr/share/bash-completion/completions/p11derive
  p11derive completions zsh > \"${fpath[1]}/_p11derive\"")]
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },

    /// Write the man pages (p11derive.1, p11derive-asset-create.1, ...) into DIR
    #[command(after_help = "Example:\n  p11derive man /usr/local/share/man/man1")]
    Man {
        /// Where to write them
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum AssetCommand {
    /// Register a new asset at version 1
    #[command(after_help = "\
Key types (case does not matter; other names in parentheses):
  secp256k1    ECDSA as Bitcoin and Ethereum use it (k256)
  p256         ECDSA on NIST P-256 (P-256, prime256v1, secp256r1)
  ed25519      EdDSA on Curve25519, pure Ed25519 (edwards25519)
  aes256       AES-256 secret key: GCM, key wrap (AES-256, aes)
  hmac-sha256  HMAC secret key (hmac)

Examples:
  p11derive asset create hot-wallet-1 --type secp256k1
  p11derive asset create tls-edge --type P-256 --id 0a0b0c
  p11derive asset create backup-kek --type aes256")]
    Create {
        /// The asset's name (its CKA_LABEL; never reused once retired)
        name: String,
        /// The key type: secp256k1, p256, p384, p521, ed25519, aes128, aes192, aes256,
        /// hmac-sha256, generic-secret-L, sha1-hmac-L, sha224-hmac-L, sha256-hmac-L,
        /// sha384-hmac-L, sha512-hmac-L (L: the key length in bytes, 16 to 64)
        #[arg(long = "type", value_name = "TYPE", value_parser = parse_type)]
        key_type: TypeArg,
        /// The objects' CKA_ID, in hex (1 to 64 bytes) [default: derived from the name]
        #[arg(long, value_name = "HEX", value_parser = parse_object_id)]
        id: Option<ObjectId>,
    },

    /// The assets that are not retired
    #[command(after_help = "Examples:\n  p11derive asset list\n  p11derive asset list --json")]
    List,

    /// An asset's versions, state, and what each version may do
    #[command(after_help = "\
With the PIN, every row is verified under the HSM-derived state key before it is shown.

Examples:
  p11derive asset show hot-wallet-1
  p11derive --pin-file pin.txt asset show hot-wallet-1 --json")]
    Show {
        /// The asset
        name: String,
    },

    /// Print an EC asset's public key (default: the current version, PEM)
    #[command(
        group(ArgGroup::new("format").args(["pem", "der", "hex"])),
        after_help = "\
Examples:
  p11derive asset pubkey hot-wallet-1 > pub.pem
  p11derive asset pubkey hot-wallet-1 --version 1 --der > v1.der
  p11derive asset pubkey hot-wallet-1 --hex        (the uncompressed point, 04||x||y)"
    )]
    Pubkey {
        /// The asset
        name: String,
        /// Which version [default: the current one]
        #[arg(long, value_name = "N", value_parser = parse_version)]
        version: Option<u32>,
        /// SubjectPublicKeyInfo, PEM (the default)
        #[arg(long)]
        pem: bool,
        /// SubjectPublicKeyInfo, DER (binary: redirect it to a file)
        #[arg(long)]
        der: bool,
        /// The uncompressed point 04||x||y, in hex
        #[arg(long)]
        hex: bool,
    },

    /// Print the BIP-32 extended public key (xpub) of an asset version or of a child
    #[command(after_help = "\
Every secp256k1, P-256 and Ed25519 asset version is the master of an HD tree (its key and
its chain code, derived inside the HSM). The xpub (BIP-32, secp256k1) lets a watch-only
system derive the public keys of non-hardened children; the keys sign here, through
C_DeriveKey with CKM_P11DERIVE_HD_CHILD. P-256 and Ed25519 have no xpub format: --json
prints their public key and chain code. A hardened --path is derived with the private key,
inside this process's locked memory; the key never leaves it. Needs the PIN.

Examples:
  p11derive asset xpub hot-wallet-1
  p11derive asset xpub hot-wallet-1 --path \"m/44'/0'/0'\"     (an account's xpub)
  p11derive asset xpub hot-wallet-1 --version 2 --path m/0/7 --json")]
    Xpub {
        /// The asset
        name: String,
        /// Which version [default: the current one]
        #[arg(long, value_name = "N", value_parser = parse_version)]
        version: Option<u32>,
        /// A path below the version's key, e.g. m/44'/0'/0' (h or ' marks hardened) [default: m]
        #[arg(long, value_name = "PATH", value_parser = parse_path)]
        path: Option<p11derive::hd::Path>,
    },

    /// Make version current+1 the one that signs (or encrypts)
    #[command(after_help = "\
Without --grace the previous version stops signing at once (it still verifies, or decrypts).
With --grace it may still sign until `p11derive asset finish NAME`.

Examples:
  p11derive asset rotate hot-wallet-1
  p11derive asset rotate tls-edge --grace")]
    Rotate {
        /// The asset
        name: String,
        /// Let the previous version keep signing until `asset finish`
        #[arg(long)]
        grace: bool,
    },

    /// End a rotation's grace window (the previous version stops signing)
    #[command(after_help = "Example:\n  p11derive asset finish tls-edge")]
    Finish {
        /// The asset
        name: String,
    },

    /// Make every version below N unusable, for good
    #[command(after_help = "\
Trimming to the version already trimmed to is a no-op (exit 0). N may not exceed the current
version.

Example:
  p11derive asset trim hot-wallet-1 3")]
    Trim {
        /// The asset
        name: String,
        /// The lowest version that stays usable
        #[arg(value_name = "N", value_parser = parse_version)]
        below: u32,
    },

    /// Refuse every operation with the asset until `asset resume`
    #[command(after_help = "Example:\n  p11derive asset suspend hot-wallet-1")]
    Suspend {
        /// The asset
        name: String,
    },

    /// Undo `asset suspend`: the asset is again what it was before
    #[command(after_help = "Example:\n  p11derive asset resume hot-wallet-1")]
    Resume {
        /// The asset
        name: String,
    },

    /// End the asset for good: no object, no operation, its name never used again
    #[command(after_help = "Example:\n  p11derive asset retire old-wallet --yes")]
    Retire {
        /// The asset
        name: String,
        /// Confirm: retiring cannot be undone
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args)]
#[command(group(ArgGroup::new("data").args(["message", "digest"]).required(true)))]
pub struct VerifyArgs {
    /// The asset
    #[arg(long, value_name = "NAME")]
    pub asset: String,
    /// The signature file (DER or raw r||s)
    #[arg(long, value_name = "FILE")]
    pub signature: PathBuf,
    /// The signed message (hashed with --hash)
    #[arg(long, value_name = "FILE")]
    pub message: Option<PathBuf>,
    /// The signed digest, in hex (CKM_ECDSA over a digest made elsewhere)
    #[arg(long, value_name = "HEX")]
    pub digest: Option<String>,
    /// The hash of --message (CKM_ECDSA_SHA256 is sha256)
    #[arg(long, value_enum, default_value = "sha256")]
    pub hash: HashArg,
}

#[derive(Args)]
pub struct MetricsArgs {
    /// OpenMetrics 1.0 text (ends with `# EOF`) instead of Prometheus text 0.0.4
    #[arg(long)]
    pub openmetrics: bool,
    /// Leave the asset label out of every series (one series for all assets; also [metrics]
    /// asset_labels = false)
    #[arg(long)]
    pub no_asset_labels: bool,
    /// Serve the metrics over HTTP at this address (an IP address and port, e.g.
    /// 127.0.0.1:9464; only this address is bound) until stopped
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen, conflicts_with = "openmetrics")]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the whole log: every MAC, the HSM anchor, every asset's state against its records
    #[command(after_help = "\
Needs the PIN (it derives the audit key inside the HSM). Exit status 1 names the first record
that fails, or lists every fault found.

With --from-checkpoint only the records after the newest checkpoint are verified (its record's
MAC and its snapshot's digests checked first: one that fails is a FAIL naming it), so the cost
follows the records since; with no checkpoint yet the whole log is. When records were archived
(`audit archive`), a plain verify starts at the newest archive's end checkpoint. A passing verify
writes a checkpoint when the newest is older than [audit] checkpoint_interval_s (default a day;
0: never).

With --with-archives, the archived history too: every segment alone (its hash, its chain,
its replay), the segments chained oldest first, every archive record naming a given segment,
then the store from the last segment's end. A missing, altered or reordered segment is named.

Examples:
  p11derive audit verify
  p11derive audit verify --from-checkpoint
  p11derive audit verify --with-archives audit-2026-08.jsonl audit-2026-09.jsonl")]
    Verify {
        /// Only the records after the newest valid checkpoint
        #[arg(long, conflicts_with = "with_archives")]
        from_checkpoint: bool,
        /// The archive segments `audit archive` wrote, oldest first
        #[arg(long, value_name = "FILE", num_args = 1..)]
        with_archives: Vec<PathBuf>,
    },

    /// Verify the log (from the newest valid checkpoint), then write a checkpoint at its head
    #[command(after_help = "\
A checkpoint is a record, MACed like the others, committing to the chain head, every writer
lane's head and a digest of the replayed state; its snapshot is kept beside it. Later verifies
with --from-checkpoint start there. Needs the PIN, and in users mode the right to read the log.

Examples:
  p11derive audit checkpoint
  p11derive audit checkpoint --full --json")]
    Checkpoint {
        /// Verify from record 1, not from the newest checkpoint
        #[arg(long)]
        full: bool,
    },

    /// Move the records before a verified checkpoint to a segment file and remove them from the
    /// store (audited; the segment is named by its SHA-256)
    #[command(after_help = "\
Archives up to the newest verified checkpoint recorded before TIME (write one with
`p11derive audit checkpoint` first). The segment is written, synced and verified before any
row is removed; FILE must not exist. Keep every segment: `audit verify --with-archives`
needs them all. Refused while a policy's rate-limit window reaches back into the range.

Example:
  p11derive audit archive --before 2026-09-01 --to /srv/audit/audit-2026-08.jsonl")]
    Archive {
        /// A UTC time (2026-09-01T00:00:00Z) or date (2026-09-01): the checkpoint must be older
        #[arg(long, value_name = "TIME")]
        before: String,
        /// The segment file to write (must not exist)
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },

    /// The records as JSON lines (times RFC 3339 UTC, mechanisms and return codes named)
    #[command(after_help = "\
Examples:
  p11derive audit export > audit.jsonl
  p11derive audit export --asset hot-wallet-1 --since 100 | jq .")]
    Export {
        /// From this record of the main chain on (and the lanes' records from its time on)
        #[arg(long, value_name = "SEQ", allow_negative_numbers = true, value_parser = parse_record)]
        since: Option<u64>,
        /// Only this asset's records
        #[arg(long, value_name = "NAME")]
        asset: Option<String>,
    },

    /// The newest records, one line each
    #[command(after_help = "\
Examples:
  p11derive audit tail
  p11derive audit tail -n 5 --asset hot-wallet-1")]
    Tail {
        /// How many
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 20)]
        count: usize,
        /// Only this asset's records
        #[arg(long, value_name = "NAME")]
        asset: Option<String>,
    },

    /// After restoring a copy of this root's store: verify it and move the HSM's rollback
    /// anchor to its newest record (audited)
    #[command(after_help = "\
Refused for another store, or for a copy that lacks a state change the anchor knows.
Run `p11derive audit verify` first.

Example:
  p11derive audit reanchor --yes")]
    Reanchor {
        /// Confirm: the records the copy lacks are lost from the log
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Copy a SQLite store, every record, into a new PostgreSQL store
    #[command(after_help = "\
Without --to, the store is copied into the one the config's [store] url names (set it first:
the password then stays off the command line and out of the shell's history).

Examples:
  p11derive store migrate --from sqlite:/var/lib/p11derive/store.db
  p11derive store migrate --from sqlite:/var/lib/p11derive/store.db \\
      --to postgres://p11derive:PASSWORD@db.internal:5432/p11derive")]
    Migrate {
        /// The store to copy: sqlite:PATH
        #[arg(long, value_name = "sqlite:PATH")]
        from: String,
        /// The new store: postgres://USER:PASSWORD@HOST:PORT/DB [default: the config's
        /// [store] url, which keeps the password off the command line]
        #[arg(long, value_name = "URL")]
        to: Option<String>,
    },
}

/// `--type`: an asset key type by its name (any case), or a name
/// pkcs11-tool or OpenSSL use for it.
#[derive(Clone, Copy)]
pub struct TypeArg(KeyType);

impl TypeArg {
    pub fn key_type(self) -> KeyType {
        self.0
    }
}

fn parse_type(given: &str) -> Result<TypeArg, String> {
    let lower = given.to_ascii_lowercase();
    let name = match lower.as_str() {
        "k256" => "secp256k1",
        "p-256" | "prime256v1" | "secp256r1" => "p256",
        "p-384" | "secp384r1" => "p384",
        "p-521" | "secp521r1" => "p521",
        "edwards25519" => "ed25519",
        "aes-256" | "aes" => "aes256",
        "aes-128" => "aes128",
        "aes-192" => "aes192",
        "hmac" => "hmac-sha256",
        other => other,
    };
    KeyType::from_name(name).map(TypeArg).ok_or_else(|| {
        format!(
            "{given:?} is not a key type: use secp256k1, p256, p384, p521, ed25519, aes128, \
             aes192, aes256, hmac-sha256, generic-secret-L, sha1-hmac-L, sha224-hmac-L, \
             sha256-hmac-L, sha384-hmac-L or sha512-hmac-L (L: 16 to 64 bytes)"
        )
    })
}

/// `verify --hash`.
#[derive(Clone, Copy, ValueEnum)]
pub enum HashArg {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// `--id`: a CKA_ID (one value, not a list of bytes to clap).
#[derive(Clone)]
pub struct ObjectId(pub Vec<u8>);

fn parse_object_id(h: &str) -> Result<ObjectId, String> {
    crate::common::unhex(h)
        .filter(|b| !b.is_empty() && b.len() <= 64)
        .map(ObjectId)
        .ok_or_else(|| format!("{h:?} is not 1 to 64 bytes of hex (e.g. 0a0b0c)"))
}

/// A version number, 1 or more.
fn parse_path(v: &str) -> Result<p11derive::hd::Path, String> {
    p11derive::hd::Path::parse(v)
}

fn parse_version(v: &str) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("{v:?} is not a version number (1, 2, ...)"))
}

/// `--listen`: an IP address and a port.
fn parse_listen(v: &str) -> Result<std::net::SocketAddr, String> {
    v.parse().map_err(|_| {
        format!("{v:?} is not an IP address and port (e.g. 127.0.0.1:9464 or [::1]:9464)")
    })
}

/// A record number, 0 or more.
fn parse_record(v: &str) -> Result<u64, String> {
    v.parse::<u64>()
        .map_err(|_| format!("{v:?} is not a record number (0, 1, ...)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn key_type_names_of_other_tools() {
        for (given, want) in [
            ("P-256", KeyType::P256),
            ("prime256v1", KeyType::P256),
            ("secp256r1", KeyType::P256),
            ("SECP256K1", KeyType::Secp256k1),
            ("AES-256", KeyType::Aes256),
            ("hmac-sha256", KeyType::HmacSha256),
            ("Ed25519", KeyType::Ed25519),
            ("edwards25519", KeyType::Ed25519),
            ("secp384r1", KeyType::P384),
            ("P521", KeyType::P521),
            ("aes128", KeyType::Aes128),
            ("AES-192", KeyType::Aes192),
            ("generic-secret-48", KeyType::Generic(48)),
            (
                "sha384-hmac-48",
                KeyType::Hmac(p11derive::types::HmacHash::Sha384, 48),
            ),
        ] {
            let cli = Cli::try_parse_from(["p11derive", "asset", "create", "a", "--type", given])
                .unwrap_or_else(|e| panic!("{given}: {e}"));
            match cli.command {
                Command::Asset(AssetCommand::Create { key_type, .. }) => {
                    assert_eq!(key_type.key_type(), want, "{given}")
                }
                _ => panic!("parsed as another command"),
            }
        }
        assert!(
            Cli::try_parse_from(["p11derive", "asset", "create", "a", "--type", "rsa"]).is_err()
        );
    }
}
