//! The command line of k-of-n approvals: `approver`, `quorum` and `request`.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum ApproverCommand {
    /// Register an approver: a name and a public key (Ed25519 or P-256, PEM)
    #[command(after_help = "\
The key is the approver's own, kept on their device (a YubiKey, an offline laptop); only its
public half is registered. Make one with openssl:
  openssl genpkey -algorithm ed25519 -out ann.key
  openssl pkey -in ann.key -pubout -out ann.pub

Examples:
  p11derive --user alice approver add ann --key ann.pub
  p11derive --user alice approver add ben --key ben.pub --groups treasury,risk")]
    Add {
        /// The approver's name (the name of a user who is the same person)
        name: String,
        /// The public key, PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`)
        #[arg(long, value_name = "PUB.pem")]
        key: PathBuf,
        /// Comma-separated groups the approver belongs to (quorum rules may count one group)
        #[arg(long, value_name = "GROUPS")]
        groups: Option<String>,
    },

    /// The approvers, their keys' fingerprints and groups
    #[command(after_help = "Example:\n  p11derive --user alice approver list --json")]
    List,

    /// Remove an approver (their approvals of pending requests stop counting)
    #[command(after_help = "Example:\n  p11derive --user alice approver remove ann --yes")]
    Remove {
        name: String,
        /// Confirm
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum QuorumCommand {
    /// Require K approvals for an operation (on assets a pattern matches)
    #[command(after_help = "\
Operations: rotate finish trim suspend resume retire (on assets), sign (signatures of assets),
policy (on policies a pattern matches), user approver quorum recover (the whole store).
Every rule that matches an operation must be met. A rule no group of active approvers can
meet is refused.

Examples:
  p11derive --user alice quorum set retire --approvals 2
  p11derive --user alice quorum set sign --assets 'cold-*' --approvals 2 --group treasury
  p11derive --user alice quorum set quorum --approvals 2")]
    Set {
        /// The operation the rule governs
        operation: String,
        /// The assets (or policy patterns) it governs [default: *]
        #[arg(long, value_name = "PATTERN")]
        assets: Option<String>,
        /// How many distinct approvers must approve
        #[arg(long, value_name = "K")]
        approvals: u32,
        /// Count only approvers of this group
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },

    /// The quorum rules in force
    #[command(after_help = "Example:\n  p11derive --user dave quorum list --json")]
    List,

    /// Remove a quorum rule
    #[command(after_help = "Example:\n  p11derive --user alice quorum remove retire --yes")]
    Remove {
        operation: String,
        #[arg(long, value_name = "PATTERN")]
        assets: Option<String>,
        /// Confirm
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum RequestCommand {
    /// Propose a signature for approvers to approve (the transaction proposal)
    #[command(after_help = "\
The digest approvers sign is, for ECDSA, the 32-byte hash the client passes to C_Sign; for
ECDSA-SHA256 (and every other mechanism) the SHA-256 of the message.

Examples:
  p11derive --user bob request new sign cold-1 --digest 9f86d081884c7d65...
  p11derive --user bob request new sign cold-1 --message tx.bin --mechanism ECDSA-SHA256")]
    New {
        /// Only `sign` (other operations make their request when their command runs)
        operation: String,
        /// The asset
        asset: String,
        /// The digest, hex
        #[arg(long, value_name = "HEX", conflicts_with = "message")]
        digest: Option<String>,
        /// The message, whose SHA-256 is the digest
        #[arg(long, value_name = "FILE")]
        message: Option<PathBuf>,
        /// The signing mechanism [default: ECDSA with --digest, ECDSA-SHA256 with --message]
        #[arg(long, value_name = "MECHANISM")]
        mechanism: Option<String>,
        /// How long approvals may be collected (30m, 2h, 1d) [default: [approvals] expires]
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },

    /// The pending requests (--all: every one)
    #[command(after_help = "Example:\n  p11derive --user ann request list --json")]
    List {
        #[arg(long)]
        all: bool,
    },

    /// One request: its operation, verdicts and what it still needs
    Show { id: String },

    /// Write the bytes an approver signs (approve, or --reject)
    #[command(after_help = "\
Examples:
  p11derive --user ann request export 0f3a... --out req.bin
  openssl pkeyutl -sign -rawin -inkey ann.key -in req.bin -out req.sig")]
    Export {
        id: String,
        /// The bytes of a rejection
        #[arg(long)]
        reject: bool,
        /// Write them to FILE [default: standard output]
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },

    /// Record an approver's approval (any user may submit it: the signature counts)
    Approve {
        id: String,
        #[arg(long, value_name = "NAME")]
        approver: String,
        /// The signature of the approve bytes (raw, hex or base64)
        #[arg(long, value_name = "FILE")]
        signature: PathBuf,
    },

    /// Record an approver's rejection (ends the request)
    Reject {
        id: String,
        #[arg(long, value_name = "NAME")]
        approver: String,
        /// The signature of the reject bytes (`request export --reject`)
        #[arg(long, value_name = "FILE")]
        signature: PathBuf,
    },

    /// Sign a request with a PEM private key (offline with --bytes; else recorded at once)
    #[command(after_help = "\
Offline (no store, no login): sign exported bytes and write the signature:
  p11derive request sign 0f3a... --key ann.key --bytes req.bin --out req.sig
Online: read the request from the store, sign and record the verdict:
  p11derive --user ann request sign 0f3a... --key ann.key --approver ann")]
    Sign {
        id: String,
        /// The private key, PEM (PKCS#8, or SEC1 for P-256), unencrypted
        #[arg(long, value_name = "KEY.pem")]
        key: PathBuf,
        /// A rejection instead of an approval
        #[arg(long)]
        reject: bool,
        /// Offline: the exported bytes to sign
        #[arg(
            long,
            value_name = "FILE",
            requires = "out",
            conflicts_with = "approver"
        )]
        bytes: Option<PathBuf>,
        /// Offline: where the signature goes
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Online: the approver whose key it is
        #[arg(long, value_name = "NAME")]
        approver: Option<String>,
    },

    /// Run an approved request's operation
    Execute { id: String },

    /// Withdraw a pending request (its requester, or an admin)
    Cancel {
        id: String,
        #[arg(long)]
        yes: bool,
    },
}
