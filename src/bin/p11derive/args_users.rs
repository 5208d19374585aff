//! The command line of users mode: `p11derive user …` and `p11derive policy …`.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user with roles and asset patterns; the secret is asked twice (or --secret-file)
    #[command(after_help = "\
Roles: admin (users, roles, policies), officer (create assets, lifecycle), signer (key use),
auditor (audit log, status). Admin together with officer or signer is refused: no one does
everything alone. Patterns limit officer and signer to assets: `hot-*` (any run), `?` (one
character), `*` (every asset); they are needed for those roles.

Examples:
  p11derive --user alice user add bob --roles signer --patterns 'hot-*,warm-1'
  p11derive --user alice user add carol --roles officer --patterns '*' --secret-file carol.secret
  p11derive --user alice user add dave --roles auditor")]
    Add {
        /// The new user's name (1 to 64 of A-Z a-z 0-9 . _ - @)
        name: String,
        /// Comma-separated roles: admin, officer, signer, auditor
        #[arg(long, value_name = "ROLES")]
        roles: String,
        /// Comma-separated asset patterns [default: * for admin and auditor; needed for
        /// officer and signer]
        #[arg(long, value_name = "PATTERNS")]
        patterns: Option<String>,
        /// Read the new user's secret from FILE [default: asked twice on the terminal]
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },

    /// Every user: roles, patterns, state and failed logins
    #[command(
        after_help = "Examples:\n  p11derive --user alice user list\n  p11derive --user alice user list --json"
    )]
    List,

    /// One user: roles, patterns, state, failed logins and lockout (never the verifier)
    #[command(after_help = "Example:\n  p11derive --user alice user show bob --json")]
    Show {
        /// The user
        name: String,
    },

    /// Remove a user for good (the row stays, marked removed; the name is not reused)
    #[command(after_help = "Example:\n  p11derive --user alice user remove bob --yes")]
    Remove {
        /// The user
        name: String,
        /// Confirm: the user can never log in again
        #[arg(long)]
        yes: bool,
    },

    /// Refuse every login of a user until `user unlock`
    #[command(after_help = "Example:\n  p11derive --user alice user lock bob")]
    Lock {
        /// The user
        name: String,
    },

    /// Undo `user lock` and lift a lockout after failed logins
    #[command(after_help = "Example:\n  p11derive --user alice user unlock bob")]
    Unlock {
        /// The user
        name: String,
    },

    /// Give a user a new secret (asked twice, or --secret-file)
    #[command(
        after_help = "Examples:\n  p11derive --user alice user reset-secret bob\n  p11derive --user alice user reset-secret bob --secret-file bob.secret"
    )]
    ResetSecret {
        /// The user
        name: String,
        /// Read the new secret from FILE [default: asked twice on the terminal]
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },

    /// Change a user's roles (and asset patterns)
    #[command(after_help = "\
Examples:
  p11derive --user alice user roles bob --roles signer,auditor
  p11derive --user alice user roles bob --roles signer --patterns 'hot-*,cold-2'")]
    Roles {
        /// The user
        name: String,
        /// Comma-separated roles: admin, officer, signer, auditor
        #[arg(long, value_name = "ROLES")]
        roles: String,
        /// Comma-separated asset patterns [default: unchanged]
        #[arg(long, value_name = "PATTERNS")]
        patterns: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Set (or replace) the policy of an asset or asset pattern
    #[command(after_help = "\
Every option left out is not limited. Times are UTC. A newer `policy set` for the same
pattern replaces the whole policy (audited, like every change).

Examples:
  p11derive --user alice policy set 'hot-*' --mechanisms ECDSA,ECDSA-SHA256 \\
      --asset-rate 100/60s --user-rate 10/60s --hours 09:00-17:00 --days mon-fri
  p11derive --user alice policy set cold-1 --expires 2027-01-01 --approvals 2
  p11derive --user alice policy set 'eth-*' --paths \"m/44'/60'/0'\"")]
    Set {
        /// The asset or asset pattern (`hot-*`, `cold-1`, `*`)
        pattern: String,
        /// Comma-separated mechanisms allowed (ECDSA, ECDSA-SHA256, AES-GCM, 0x1041, ...)
        #[arg(long, value_name = "LIST")]
        mechanisms: Option<String>,
        /// At most COUNT uses per asset in any WINDOW (100/60s, 10/h, 5/d)
        #[arg(long, value_name = "COUNT/WINDOW")]
        asset_rate: Option<String>,
        /// At most COUNT uses per user in any WINDOW (100/60s, 10/h, 5/d)
        #[arg(long, value_name = "COUNT/WINDOW")]
        user_rate: Option<String>,
        /// The hours of the day use is allowed, UTC (09:00-17:00)
        #[arg(long, value_name = "HH:MM-HH:MM")]
        hours: Option<String>,
        /// The days of the week use is allowed, UTC (mon-fri, sat,sun)
        #[arg(long, value_name = "DAYS")]
        days: Option<String>,
        /// From this time on use is refused (2027-01-01 or 2027-01-01T12:00:00Z)
        #[arg(long, value_name = "DATE")]
        expires: Option<String>,
        /// The approvals each signature needs: K approvers sign its digest first (docs/approvals.md)
        #[arg(long, value_name = "N")]
        approvals: Option<u32>,
        /// Comma-separated HD path prefixes whose keys may sign (m/44'/60'/0',m/86'/0'); the
        /// asset's own key is `m`
        #[arg(long, value_name = "LIST")]
        paths: Option<String>,
    },

    /// The policies in force (or one pattern's policy)
    #[command(
        after_help = "Examples:\n  p11derive --user alice policy show\n  p11derive --user dave policy show 'hot-*' --json"
    )]
    Show {
        /// Only this pattern's policy
        pattern: Option<String>,
    },

    /// Remove a pattern's policy (its row stays, marked removed)
    #[command(after_help = "Example:\n  p11derive --user alice policy remove 'hot-*' --yes")]
    Remove {
        /// The asset or asset pattern
        pattern: String,
        /// Confirm: the assets it covers are no longer limited by it
        #[arg(long)]
        yes: bool,
    },
}
