//! `p11derive`: the command-line tool beside the provider.
//!
//! The command line is declared once, in `args.rs` (clap): the parser, each
//! command's help, the man pages (`p11derive man DIR`) and the shell
//! completions (`p11derive completions SHELL`) all come from it. Exit codes:
//! `args::EXIT_CODES`.

#![forbid(unsafe_code)]

#[macro_use]
mod common;
mod approvals_cmd;
mod archive_cmd;
mod args;
mod args_approvals;
mod args_root;
mod args_users;
mod asset_cmd;
mod audit_cmd;
mod ceremony_cmd;
mod checkpoint_cmd;
mod export_line;
mod http;
mod init_cmd;
mod metrics_cmd;
mod policy_cmd;
mod progress;
mod replay;
mod request_cmd;
mod root_cmd;
mod segment;
mod status_cmd;
mod user_cmd;
mod users;
mod verify_cmd;
mod verify_file;
mod xpub_cmd;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use args::{AssetCommand, AuditCommand, Cli, Command, StoreCommand};
use args_approvals::{ApproverCommand, QuorumCommand, RequestCommand};
use args_root::RootCommand;
use args_users::{PolicyCommand, UserCommand};
use common::Failure;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and --version go to stdout (exit 0), a usage error to
            // stderr with a one-line hint (exit 2). A closed pipe is quiet.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("p11derive: {}", failure.message());
            if let Failure::Usage(_) = failure {
                eprintln!(
                    "For more information, try 'p11derive {} --help'.",
                    command_path(&cli.command)
                );
            }
            ExitCode::from(failure.code())
        }
    }
}

/// The words naming the command given, for hints.
fn command_path(c: &Command) -> &'static str {
    match c {
        Command::Init { .. } => "init",
        Command::Status => "status",
        Command::Asset(a) => match a {
            AssetCommand::Create { .. } => "asset create",
            AssetCommand::List => "asset list",
            AssetCommand::Show { .. } => "asset show",
            AssetCommand::Pubkey { .. } => "asset pubkey",
            AssetCommand::Xpub { .. } => "asset xpub",
            AssetCommand::Rotate { .. } => "asset rotate",
            AssetCommand::Finish { .. } => "asset finish",
            AssetCommand::Trim { .. } => "asset trim",
            AssetCommand::Suspend { .. } => "asset suspend",
            AssetCommand::Resume { .. } => "asset resume",
            AssetCommand::Retire { .. } => "asset retire",
        },
        Command::Verify(_) => "verify",
        Command::Audit(a) => match a {
            AuditCommand::Verify { .. } => "audit verify",
            AuditCommand::Archive { .. } => "audit archive",
            AuditCommand::Checkpoint { .. } => "audit checkpoint",
            AuditCommand::Export { .. } => "audit export",
            AuditCommand::Tail { .. } => "audit tail",
            AuditCommand::Reanchor { .. } => "audit reanchor",
        },
        Command::Store(StoreCommand::Migrate { .. }) => "store migrate",
        Command::User(u) => match u {
            UserCommand::Add { .. } => "user add",
            UserCommand::List => "user list",
            UserCommand::Show { .. } => "user show",
            UserCommand::Remove { .. } => "user remove",
            UserCommand::Lock { .. } => "user lock",
            UserCommand::Unlock { .. } => "user unlock",
            UserCommand::ResetSecret { .. } => "user reset-secret",
            UserCommand::Roles { .. } => "user roles",
        },
        Command::Policy(p) => match p {
            PolicyCommand::Set { .. } => "policy set",
            PolicyCommand::Show { .. } => "policy show",
            PolicyCommand::Remove { .. } => "policy remove",
        },
        Command::Approver(a) => match a {
            ApproverCommand::Add { .. } => "approver add",
            ApproverCommand::List => "approver list",
            ApproverCommand::Remove { .. } => "approver remove",
        },
        Command::Quorum(q) => match q {
            QuorumCommand::Set { .. } => "quorum set",
            QuorumCommand::List => "quorum list",
            QuorumCommand::Remove { .. } => "quorum remove",
        },
        Command::Request(r) => match r {
            RequestCommand::New { .. } => "request new",
            RequestCommand::List { .. } => "request list",
            RequestCommand::Show { .. } => "request show",
            RequestCommand::Export { .. } => "request export",
            RequestCommand::Approve { .. } => "request approve",
            RequestCommand::Reject { .. } => "request reject",
            RequestCommand::Sign { .. } => "request sign",
            RequestCommand::Execute { .. } => "request execute",
            RequestCommand::Cancel { .. } => "request cancel",
        },
        Command::Root(r) => match r {
            RootCommand::Recover { .. } => "root recover",
            RootCommand::CheckShares { .. } => "root check-shares",
        },
        Command::Metrics(_) => "metrics",
        Command::Completions { .. } => "completions",
        Command::Man { .. } => "man",
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Init {
            import_root,
            admin,
            backup,
        } => init_cmd::init(cli, import_root.as_deref(), admin.as_deref(), backup),
        Command::Status => status_cmd::status(cli),
        Command::Asset(a) => asset_cmd::run(cli, a),
        Command::Verify(v) => verify_cmd::verify(cli, v),
        Command::Audit(a) => match a {
            AuditCommand::Verify { with_archives, .. } if !with_archives.is_empty() => {
                archive_cmd::verify_with_archives(cli, with_archives)
            }
            AuditCommand::Verify {
                from_checkpoint, ..
            } => audit_cmd::verify(cli, *from_checkpoint),
            AuditCommand::Checkpoint { full } => checkpoint_cmd::checkpoint(cli, *full),
            AuditCommand::Archive { before, to } => archive_cmd::archive(cli, before, to),
            AuditCommand::Export { since, asset } => {
                audit_cmd::export(cli, *since, asset.as_deref())
            }
            AuditCommand::Tail { count, asset } => audit_cmd::tail(cli, *count, asset.as_deref()),
            AuditCommand::Reanchor { yes } => audit_cmd::reanchor(cli, *yes),
        },
        Command::Store(StoreCommand::Migrate { from, to }) => {
            init_cmd::store_migrate(cli, from, to.as_deref())
        }
        Command::User(u) => user_cmd::run(cli, u),
        Command::Policy(p) => policy_cmd::run(cli, p),
        Command::Approver(a) => approvals_cmd::approver(cli, a),
        Command::Quorum(q) => approvals_cmd::quorum_cmd(cli, q),
        Command::Request(r) => request_cmd::request(cli, r),
        Command::Root(r) => root_cmd::run(cli, r),
        Command::Metrics(m) => metrics_cmd::metrics(cli, m),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "p11derive", &mut out);
            outln!("{}", String::from_utf8_lossy(&out).trim_end());
            Ok(())
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(dir)
                .map_err(|e| common::failed(format!("cannot create {}: {e}", dir.display())))?;
            // Built first, so each command's page has the global options too.
            let mut all = Cli::command();
            all.build();
            let written = man_pages(all, "p11derive", dir).map_err(|e| {
                common::failed(format!(
                    "cannot write man pages into {}: {e}",
                    dir.display()
                ))
            })?;
            outln!("{written} man pages written into {}", dir.display());
            Ok(())
        }
    }
}

/// Writes `NAME.1` for `cmd` and `NAME-SUB.1` for each of its commands (as
/// `git-commit.1`), each titled and invoked by its whole name.
fn man_pages(cmd: clap::Command, name: &str, dir: &std::path::Path) -> std::io::Result<usize> {
    let mut written = 0;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let sub_name = format!("{name}-{}", sub.get_name());
        written += man_pages(sub.clone(), &sub_name, dir)?;
    }
    let cmd = cmd
        .name(name.to_string())
        .bin_name(name.replace('-', " "))
        .display_name(name.to_string());
    let page = clap_mangen::Man::new(cmd)
        .title(name.to_uppercase())
        .source(format!("p11derive {}", env!("CARGO_PKG_VERSION")))
        .manual("p11derive manual");
    let mut out = Vec::new();
    page.render(&mut out)?;
    std::fs::write(dir.join(format!("{name}.1")), out)?;
    Ok(written + 1)
}
