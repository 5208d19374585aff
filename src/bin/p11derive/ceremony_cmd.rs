//! The root's backup ceremony (`init --backup`): a new root from the HSM's random generator in locked memory, split into SLIP-39 shares, checked, and given out once (files or one terminal screen each).

use std::io::{Read, Write};
use std::path::PathBuf;

use p11derive::audit::{Event, Record};
use p11derive::backend::Backend;
use p11derive::backup::{self, HeldRoot};
use p11derive::ck::CKR_OK;
use p11derive::secure::SecretBytes;
use p11derive::slip39::{self, Combiner, Plan, Share};
use p11derive::store::hex;
use subtle::ConstantTimeEq;

use crate::args_root::BackupArgs;
use crate::common::{failed, Failure};
use crate::root_cmd::passphrase;

/// Where a ceremony's shares go.
pub enum SharesTo {
    Dir(PathBuf),
    Terminal,
}

/// What `init --backup` asked for, checked before anything is made.
pub struct CeremonyPlan {
    pub plan: Plan,
    pub to: SharesTo,
    pub passphrase: SecretBytes,
}

/// Reads and checks `init`'s backup options (`None`: no ceremony asked).
pub fn ceremony_plan(b: &BackupArgs) -> Result<Option<CeremonyPlan>, Failure> {
    if !b.asked() {
        if b.shares_dir.is_some()
            || b.shares_terminal
            || b.passphrase
            || b.passphrase_file.is_some()
        {
            return Err(Failure::Usage(
                "--shares-dir, --shares-terminal and --passphrase belong to a backup ceremony: \
                 add --backup K-of-N (or --group K-of-N ... --groups-needed G)"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let plan =
        backup::plan(b.backup.as_deref(), &b.group, b.groups_needed).map_err(Failure::Usage)?;
    let to = match (&b.shares_dir, b.shares_terminal) {
        (Some(d), false) => {
            if std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()) {
                return Err(Failure::Usage(format!(
                    "--shares-dir {}: the directory is not empty; give a new or empty directory \
                     (shares are never written over, nor mixed with other files)",
                    d.display()
                )));
            }
            SharesTo::Dir(d.clone())
        }
        (None, true) => {
            if std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/tty")
                .is_err()
            {
                return Err(Failure::Usage(
                    "--shares-terminal needs a terminal (/dev/tty); use --shares-dir DIR".into(),
                ));
            }
            SharesTo::Terminal
        }
        _ => {
            return Err(Failure::Usage(
                "say where the shares go: --shares-dir DIR (one new file per share) or \
                 --shares-terminal (one screen per share)"
                    .into(),
            ))
        }
    };
    let passphrase = passphrase(b.passphrase_file.as_deref(), b.passphrase, true)?;
    Ok(Some(CeremonyPlan {
        plan,
        to,
        passphrase,
    }))
}

/// A ceremony done up to the import: the root (in locked memory) and what
/// its record says.
pub struct Ceremony {
    pub root: HeldRoot,
    pub fingerprint: String,
    pub identifier: u16,
    pub written: Vec<PathBuf>,
    pub shares: usize,
    pub described: String,
}

impl Ceremony {
    /// The ceremony's audit record: fingerprint, share-set id, thresholds.
    pub fn record(&self, cp: &CeremonyPlan) -> Record {
        Record::new(Event::Root, CKR_OK).detail(format!(
            "root ceremony: {}{}; SLIP-39 share set id={} ({} shares; {}; extendable, iteration \
             exponent {}; passphrase {}); shares given out {}",
            p11derive::store::FINGERPRINT_WORD,
            self.fingerprint,
            self.identifier,
            self.shares,
            self.described,
            cp.plan.iteration_exponent,
            if cp.passphrase.is_empty() {
                "none"
            } else {
                "set"
            },
            match &cp.to {
                SharesTo::Dir(d) => format!("as files in {}", d.display()),
                SharesTo::Terminal => "on the terminal".into(),
            }
        ))
    }
}

/// The ceremony before the import: a new root from the HSM's generator,
/// split into shares (checked to combine back to it), given out. Nothing
/// is in the HSM yet; on failure no share file is left.
pub fn ceremony(backend: &Backend, cp: &CeremonyPlan) -> Result<Ceremony, Failure> {
    let random = |b: &mut [u8]| backend.random(b);
    let root = HeldRoot::generate(&random).map_err(failed)?;
    let fingerprint = hex(&root.fingerprint().map_err(failed)?);
    let rng = |b: &mut [u8]| backend.random(b).map_err(|e| e.to_string());
    let sets = slip39::split(root.bytes(), &cp.passphrase, &cp.plan, &rng).map_err(failed)?;
    check_split(&root, &sets, &cp.plan, &cp.passphrase)?;
    let identifier = sets[0][0].identifier;
    let total: usize = sets.iter().map(Vec::len).sum();
    let written = match &cp.to {
        SharesTo::Dir(dir) => {
            let header = |g: usize, m: usize, s: &Share| {
                format!(
                    "# p11derive root share: group {} of {} ({} of {} members needed), member \
                     {} of {}\n# root fingerprint {fingerprint}, share set {}; a recovery needs \
                     {} of the {} groups\n# keep it apart from every other share; never store \
                     it beside the HSM\n",
                    g + 1,
                    s.group_count,
                    s.member_threshold,
                    sets[g].len(),
                    m + 1,
                    sets[g].len(),
                    s.identifier,
                    s.group_threshold,
                    s.group_count,
                )
            };
            backup::write_share_files(dir, &sets, &header).map_err(failed)?
        }
        SharesTo::Terminal => {
            show_on_terminal(&sets, &fingerprint)?;
            Vec::new()
        }
    };
    Ok(Ceremony {
        root,
        fingerprint,
        identifier,
        written,
        shares: total,
        described: cp.plan.describe(),
    })
}

/// The split must combine back to the root (from each group's first
/// members, as few as the thresholds allow) before any share goes out.
fn check_split(
    root: &HeldRoot,
    sets: &[Vec<Share>],
    plan: &Plan,
    passphrase: &[u8],
) -> Result<(), Failure> {
    let mut c = Combiner::new();
    for (g, group) in sets.iter().enumerate().take(plan.groups_needed as usize) {
        for share in group.iter().take(plan.groups[g].threshold as usize) {
            let again = Share::from_mnemonic(&share.mnemonic().map_err(failed)?)
                .map_err(|e| failed(format!("a share made does not read back: {e}")))?;
            c.add(again)
                .map_err(|e| failed(format!("a share made does not combine: {e}")))?;
        }
    }
    let back = c
        .combine(passphrase)
        .map_err(|e| failed(format!("the shares made do not combine: {e}")))?;
    if back.len() != 32 || !bool::from(back[..].ct_eq(&root.bytes()[..])) {
        return Err(failed(
            "the shares made do not combine back to the root: nothing was given out or imported",
        ));
    }
    Ok(())
}

/// Shows each share on the terminal, one screen per share, cleared after
/// the custodian confirms; never on standard output (which may be a log).
fn show_on_terminal(sets: &[Vec<Share>], fingerprint: &str) -> Result<(), Failure> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| failed(format!("no terminal to show the shares on (/dev/tty: {e})")))?;
    let total: usize = sets.iter().map(Vec::len).sum();
    let io = |e: std::io::Error| failed(format!("terminal: {e}"));
    let clear = "\x1b[2J\x1b[3J\x1b[H";
    write!(
        tty,
        "{clear}{total} shares follow, one screen each. Only the custodian of each share should \
         see its screen.\nPress Enter to show share 1."
    )
    .map_err(io)?;
    wait_enter(&mut tty)?;
    let mut n = 0;
    for (g, group) in sets.iter().enumerate() {
        for (m, share) in group.iter().enumerate() {
            n += 1;
            write!(
                tty,
                "{clear}p11derive root share {n} of {total}: group {} of {} ({} of {} members \
                 needed), member {}\nroot fingerprint {fingerprint}, share set {}\n\nWrite these \
                 words down in order and keep them apart from every other share:\n\n",
                g + 1,
                share.group_count,
                share.member_threshold,
                group.len(),
                m + 1,
                share.identifier
            )
            .map_err(io)?;
            let words = share.mnemonic().map_err(failed)?;
            for (i, w) in words.split(|b| *b == b' ').enumerate() {
                write!(tty, "{:>4}. ", i + 1).map_err(io)?;
                tty.write_all(w).map_err(io)?;
                let pad = 12usize.saturating_sub(w.len());
                write!(
                    tty,
                    "{:pad$}{}",
                    "",
                    if i % 4 == 3 { "\n" } else { "" },
                    pad = pad
                )
                .map_err(io)?;
            }
            drop(words);
            write!(
                tty,
                "\n\nPress Enter once the words are written down: the screen is then cleared."
            )
            .map_err(io)?;
            wait_enter(&mut tty)?;
            write!(tty, "{clear}").map_err(io)?;
            if n < total {
                write!(
                    tty,
                    "Share {n} of {total} done. Hand over to the next custodian, who presses \
                     Enter to see share {}.",
                    n + 1
                )
                .map_err(io)?;
                wait_enter(&mut tty)?;
            }
        }
    }
    writeln!(tty, "{clear}All {total} shares shown.").map_err(io)?;
    Ok(())
}

fn wait_enter(tty: &mut std::fs::File) -> Result<(), Failure> {
    let mut b = [0u8; 1];
    loop {
        match tty.read(&mut b) {
            Ok(0) => {
                return Err(failed(
                    "the terminal closed before every share was confirmed: nothing was imported",
                ))
            }
            Ok(_) if b[0] == b'\n' || b[0] == b'\r' => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(format!("terminal: {e}"))),
        }
    }
}
