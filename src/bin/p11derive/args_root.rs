//! The command line of the root's backup: `init --backup` (the ceremony's options) and `root recover | check-shares`.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};

/// `init`'s ceremony: a new root split into SLIP-39 shares.
#[derive(Args, Default)]
#[command(group(ArgGroup::new("shares_to").args(["shares_dir", "shares_terminal"])))]
pub struct BackupArgs {
    /// Make the new root a SLIP-39 master secret split into N shares, any K of which recover
    /// it (one group; 1-of-1, or K of 2 to 16)
    #[arg(long, value_name = "K-of-N", conflicts_with_all = ["import_root", "group"])]
    pub backup: Option<String>,
    /// SLIP-39 groups instead of --backup: one K-of-N per group (repeat for each group, up to
    /// 16); with --groups-needed
    #[arg(long, value_name = "K-of-N", conflicts_with = "import_root")]
    pub group: Vec<String>,
    /// How many of the groups a recovery needs (required with two or more --group)
    #[arg(long, value_name = "G", requires = "group", value_parser = clap::value_parser!(u8).range(1..=16))]
    pub groups_needed: Option<u8>,
    /// Write each share to its own new file (0600) in DIR: share-gG-mM.txt, for group G and
    /// member M; hand each file to its custodian, then delete it
    #[arg(long, value_name = "DIR")]
    pub shares_dir: Option<PathBuf>,
    /// Show each share on the terminal, one screen per share, for its custodian to write
    /// down, with a confirmation between them
    #[arg(long)]
    pub shares_terminal: bool,
    /// Protect the shares with a passphrase, asked twice on the terminal without echo (a
    /// recovery needs the shares and the passphrase)
    #[arg(long, conflicts_with = "passphrase_file")]
    pub passphrase: bool,
    /// Read the passphrase from FILE (its first line; printable ASCII)
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

impl BackupArgs {
    /// Whether a ceremony is asked for.
    pub fn asked(&self) -> bool {
        self.backup.is_some() || !self.group.is_empty()
    }
}

/// Where the shares come from and how they are protected.
#[derive(Args)]
pub struct SharesIn {
    /// A share file (one share; `#` lines are comments); repeat for each share. Without
    /// --share, the shares are typed one at a time without echo
    #[arg(long = "share", value_name = "FILE")]
    pub shares: Vec<PathBuf>,
    /// The shares' passphrase is asked on the terminal without echo (for a share set made
    /// with one)
    #[arg(long, conflicts_with = "passphrase_file")]
    pub passphrase: bool,
    /// Read the passphrase from FILE (its first line)
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum RootCommand {
    /// Rebuild the root from its SLIP-39 shares and import it into the (new) backing HSM
    #[command(after_help = "\
The shares are combined in locked memory; the root they give must have the fingerprint the
store records (or --fingerprint, when there is no store). Only then is it imported, as the
usual sensitive, non-extractable root, and the HSM's rollback anchor set to the store's
newest record. A wrong share set or passphrase imports nothing.

When a quorum rule governs `recover` (users mode), the first run records a request (exit 5)
whose not-before time is [approvals] recover_cooldown after it; approvers sign it, and a run
with --request ID and their signatures (--approval NAME=FILE) imports the root once the
cooldown has passed and the approvals are met.

Examples:
  p11derive root recover --share share-g1-m1.txt --share share-g1-m3.txt
  p11derive root recover --fingerprint 3f9a...c2 --passphrase     (no store; typed shares)
  p11derive --user alice root recover --share a.txt --share b.txt
  p11derive --user alice root recover --request 0f3a... --approval ann=ann.sig \\
      --approval ben=ben.sig --share a.txt --share b.txt")]
    Recover {
        #[command(flatten)]
        shares: SharesIn,
        /// The root fingerprint expected (32 hex digits), when the store is not at hand (or to
        /// check it against the store's)
        #[arg(long, value_name = "HEX")]
        fingerprint: Option<String>,
        /// Users mode with a quorum rule for `recover`: the announced request to carry out
        #[arg(long, value_name = "ID")]
        request: Option<String>,
        /// An approver's signature of the request's bytes (`p11derive request export ID`
        /// prints them; raw, hex or base64): NAME=FILE, repeat for each approver
        #[arg(long, value_name = "NAME=FILE", requires = "request")]
        approval: Vec<String>,
        /// When the run announces a request: also write the exact bytes approvers sign (the
        /// request's canonical bytes and `verdict: approve`) to this new file
        #[arg(long, value_name = "FILE", conflicts_with = "request")]
        bytes_out: Option<PathBuf>,
    },

    /// The drill: rebuild the root from shares and compare its fingerprint with the live
    /// root's, importing nothing (audited)
    #[command(after_help = "\
The live root's fingerprint is computed inside the backing HSM. Exit 0 when the shares
rebuild the live root, 1 when they do not; either way the drill is recorded in the audit log
(fingerprints, share-set id and how many shares: never a share).

Examples:
  p11derive root check-shares --share share-g1-m1.txt --share share-g1-m2.txt
  p11derive root check-shares --passphrase          (shares typed without echo)")]
    CheckShares {
        #[command(flatten)]
        shares: SharesIn,
    },
}
