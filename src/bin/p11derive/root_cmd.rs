//! The root's SLIP-39 backup in the CLI: the ceremony `init --backup` runs, `root recover` into a (new) backing HSM, and the `root check-shares` drill.

use std::io::Write;
use std::path::Path;

use p11derive::access::{format_time, Action};
use p11derive::approvals::keys::read_signature;
use p11derive::approvals::quorum::Rule;
use p11derive::approvals::request::Verdict;
use p11derive::audit::{Event, Record};
use p11derive::backend::Backend;
use p11derive::backup::{self, HeldRoot};
use p11derive::ck::{CKR_OK, CKU_USER};
use p11derive::config::Config;
use p11derive::derive;
use p11derive::secure::SecretBytes;
use p11derive::slip39::{self, Combiner};
use p11derive::store::{check_recovery, hex, unix_now, Store, StoreError};
use subtle::ConstantTimeEq;

use crate::approvals_cmd::{new_request, p, show_new_request, Ctx};
use crate::args::Cli;
use crate::args_root::{RootCommand, SharesIn};
use crate::common::{
    failed, hsm_pin, load_config, lock_memory, print_json, read_secret_file, Failure,
};
use crate::users::Want;

/// The longest passphrase accepted, in bytes.
const MAX_PASSPHRASE: usize = 1024;

pub fn run(cli: &Cli, c: &RootCommand) -> Result<(), Failure> {
    match c {
        RootCommand::Recover {
            shares,
            fingerprint,
            request,
            approval,
            bytes_out,
        } => recover(
            cli,
            shares,
            fingerprint.as_deref(),
            (request.as_deref(), approval, bytes_out.as_deref()),
        ),
        RootCommand::CheckShares { shares } => check_shares(cli, shares),
    }
}

// ---------------------------------------------------------------- passphrase

/// A share set's passphrase: from `file` (its first line), asked on the
/// terminal (`ask`; twice when `twice`), else empty. SLIP-39 allows
/// printable ASCII only.
pub(crate) fn passphrase(
    file: Option<&Path>,
    ask: bool,
    twice: bool,
) -> Result<SecretBytes, Failure> {
    let mut pass = match (file, ask) {
        (Some(f), _) => {
            let mut raw = read_secret_file(f, MAX_PASSPHRASE)
                .map_err(|e| failed(format!("cannot read passphrase file {}: {e}", f.display())))?
                .ok_or_else(|| {
                    failed(format!(
                        "passphrase file {} is longer than {MAX_PASSPHRASE} bytes",
                        f.display()
                    ))
                })?;
            let end = raw
                .iter()
                .position(|b| *b == b'\n' || *b == b'\r')
                .unwrap_or(raw.len());
            raw.truncate(end);
            raw
        }
        (None, true) => {
            let first = ask_tty("Passphrase of the shares (no echo): ")?;
            if twice {
                let again = ask_tty("The passphrase again: ")?;
                if !bool::from(first.ct_eq(&again)) {
                    return Err(Failure::Usage(
                        "the two passphrases differ: nothing was made; run the command again"
                            .into(),
                    ));
                }
            }
            first
        }
        (None, false) => SecretBytes::with_capacity(1).map_err(failed)?,
    };
    if !pass.iter().all(|b| (32..=126).contains(b)) {
        pass.truncate(0);
        return Err(Failure::Usage(
            "the passphrase holds a character other than printable ASCII (space to ~), which \
             SLIP-39 does not allow"
                .into(),
        ));
    }
    Ok(pass)
}

fn ask_tty(prompt: &str) -> Result<SecretBytes, Failure> {
    p11derive::secure::prompt_secret(prompt, MAX_PASSPHRASE)
        .map_err(|e| failed(format!("cannot ask: {e}")))
}

// ---------------------------------------------------------------- shares in

/// Whether there is a terminal to type shares on (`/dev/tty`, whatever
/// standard input is: `--pin-file -` may be reading it).
fn has_tty() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_ok()
}

/// The root rebuilt from shares, with what its records may say of them.
struct Rebuilt {
    root: HeldRoot,
    fingerprint: String,
    identifier: u16,
    given: usize,
}

/// Reads shares (files, or typed one at a time without echo, each checked
/// as it arrives) until the thresholds are met, then the passphrase, and
/// rebuilds the root in locked memory.
fn rebuild(s: &SharesIn) -> Result<Rebuilt, Failure> {
    let mut c = Combiner::new();
    let mut given = 0;
    if s.shares.is_empty() {
        if !has_tty() {
            return Err(Failure::Usage(
                "no shares: give each share file with --share FILE, or run on a terminal to type \
                 them"
                    .into(),
            ));
        }
        while !c.ready() {
            let typed = p11derive::secure::prompt_secret(
                &format!("Share {} (its words, then Enter; no echo): ", given + 1),
                4096,
            )
            .map_err(|e| failed(format!("cannot ask for a share: {e}")))?;
            let share = match backup::share_from_text(&typed) {
                Ok(sh) => sh,
                Err(e) => {
                    eprintln!("p11derive: that share was not taken: {e}; type it again");
                    continue;
                }
            };
            match c.add(share) {
                Ok(slip39::Added::Accepted) => given += 1,
                Ok(slip39::Added::Duplicate) => {
                    eprintln!("p11derive: that share was given already")
                }
                Err(e) => eprintln!("p11derive: that share was not taken: {e}"),
            }
            eprintln!("p11derive: {}", c.progress());
        }
    } else {
        for f in &s.shares {
            let share = backup::read_share_file(f).map_err(Failure::Refused)?;
            match c.add(share) {
                Ok(slip39::Added::Accepted) => given += 1,
                Ok(slip39::Added::Duplicate) => {
                    eprintln!(
                        "p11derive: share file {} repeats a share given before",
                        f.display()
                    )
                }
                Err(e) => return Err(Failure::Refused(format!("share file {}: {e}", f.display()))),
            }
        }
        if !c.ready() {
            return Err(Failure::Refused(format!(
                "too few shares to rebuild the root: {}. Give more --share files",
                c.progress()
            )));
        }
    }
    let identifier = c.identifier().unwrap_or_default();
    let pass = passphrase(s.passphrase_file.as_deref(), s.passphrase, false)?;
    let secret = c.combine(&pass).map_err(|e| {
        Failure::Refused(format!(
            "the shares do not rebuild a root: {e}. Nothing was imported"
        ))
    })?;
    let root = HeldRoot::from_bytes(&secret).map_err(|e| Failure::Refused(e.to_string()))?;
    drop(secret);
    let fingerprint = hex(&root.fingerprint().map_err(failed)?);
    Ok(Rebuilt {
        root,
        fingerprint,
        identifier,
        given,
    })
}

/// Why the rebuilt root is not the one expected.
fn wrong_root(got: &str, want: &str, whence: &str) -> String {
    format!(
        "the shares rebuild a root with fingerprint {got}, but {whence} expects {want}: these \
         are shares of another root, or the passphrase is wrong (SLIP-39 cannot tell a wrong \
         passphrase: it gives another root; check --passphrase){}",
        if whence.starts_with("store") {
            "; or the store is not this root's (replaced or edited): give the fingerprint from \
             your own records with --fingerprint"
        } else {
            ""
        }
    )
}

// ---------------------------------------------------------------- recover

fn recover(
    cli: &Cli,
    shares: &SharesIn,
    fingerprint: Option<&str>,
    (request, approvals, bytes_out): (Option<&str>, &[String], Option<&Path>),
) -> Result<(), Failure> {
    let config = load_config(cli)?;
    lock_memory(&config)?;
    let given_fp = fingerprint
        .map(|f| backup::parse_fingerprint(f).map(|b| hex(&b)))
        .transpose()
        .map_err(Failure::Usage)?;
    let approvals = approvals
        .iter()
        .map(|a| parse_approval(a))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(out) = bytes_out.filter(|p| p.exists()) {
        return Err(Failure::Usage(format!(
            "--bytes-out {}: the file exists; name a new file (the bytes are never written over \
             another file)",
            out.display()
        )));
    }
    let store = match Store::open_config(&config.store) {
        Ok(s) => Some(s),
        Err(StoreError::Missing(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let recorded = store
        .as_ref()
        .map(|s| s.recorded_fingerprint())
        .transpose()?
        .flatten();
    let (expected, whence) = match (&given_fp, &recorded, &store) {
        (Some(g), Some(r), Some(s)) if g != r => {
            return Err(Failure::Refused(format!(
                "--fingerprint {g} is not the root of store {} (its records name {r})",
                s.path().display()
            )))
        }
        (_, Some(r), Some(s)) => (r.clone(), format!("store {}", s.path().display())),
        (Some(g), _, _) => (g.clone(), "--fingerprint".to_string()),
        (None, None, Some(s)) => {
            return Err(Failure::Usage(format!(
                "store {} names no root fingerprint (it predates them): give the root's \
                 fingerprint with --fingerprint HEX",
                s.path().display()
            )))
        }
        (None, _, None) => {
            return Err(Failure::Usage(format!(
                "no store at {} to check the root against: give the root's fingerprint with \
                 --fingerprint HEX (printed by `p11derive init` and recorded in the ceremony)",
                store_place(&config)
            )))
        }
    };
    let token = config.backend.token_label.clone();
    let pin = hsm_pin(cli, &config)?;
    let backend = crate::common::open_backend(&config)?;
    let result = (|| {
        backend.login_admin(&pin).map_err(failed)?;
        if backend.root_exists().map_err(failed)? {
            return Err(Failure::Refused(format!(
                "backing token {token:?} already holds a root labelled {:?}: nothing to recover \
                 into it (`p11derive root check-shares` drills shares against it; a recovery \
                 needs a token without that root)",
                config.backend.root_label
            )));
        }
        let r = rebuild(shares)?;
        if r.fingerprint != expected {
            return Err(Failure::Refused(format!(
                "{}. Nothing was imported",
                wrong_root(&r.fingerprint, &expected, &whence)
            )));
        }
        let governance = Governance {
            request,
            approvals: &approvals,
            bytes_out,
        };
        recover_into(cli, &config, &backend, &pin, store.as_ref(), r, governance)
    })();
    let _ = backend.logout();
    backend.finalize();
    result
}

/// `NAME=FILE` of `--approval`, the signature read.
fn parse_approval(a: &str) -> Result<(String, Vec<u8>), Failure> {
    let (name, file) = a.split_once('=').ok_or_else(|| {
        Failure::Usage(format!(
            "--approval {a:?}: write NAME=FILE (the approver and their signature file)"
        ))
    })?;
    let bytes = std::fs::read(file)
        .map_err(|e| failed(format!("cannot read approval signature {file}: {e}")))?;
    let sig = read_signature(&bytes).map_err(|m| Failure::Usage(format!("{file}: {m}")))?;
    Ok((name.to_string(), sig))
}

/// What a governed recovery's run brings: the request it carries out (none:
/// it announces one), the approvals, where to write the bytes to sign.
struct Governance<'a> {
    request: Option<&'a str>,
    approvals: &'a [(String, Vec<u8>)],
    bytes_out: Option<&'a Path>,
}

fn recover_into(
    cli: &Cli,
    config: &Config,
    backend: &Backend,
    pin: &[u8],
    store: Option<&Store>,
    r: Rebuilt,
    g: Governance<'_>,
) -> Result<(), Failure> {
    let Governance {
        request,
        approvals,
        bytes_out,
    } = g;
    let token = config.backend.token_label.clone();
    let ak = derive::audit_key(&r.root).map_err(failed)?;
    let mut actor: Option<String> = None;
    // The store's newest record as found: with the old HSM's anchor lost,
    // only an operator comparing it with an off-host copy of the log can
    // tell a stale store copy (docs/backup.md).
    let mut head = String::new();
    let mut governed: Option<String> = None;
    if let Some(store) = store {
        // The store must be this root's, whole, before anything is imported:
        // everything `audit verify` checks (every record's MAC and link from
        // the first, which names the lineage; every sealed row; every asset
        // against its records), under the rebuilt root.
        store.check_root(&ak).map_err(|e| {
            Failure::Refused(format!(
                "{e}: the store does not verify under the rebuilt root; nothing was imported"
            ))
        })?;
        if store.audit_head()?.is_none() {
            return Err(Failure::Refused(format!(
                "store {} holds no record: `p11derive init` starts every store with one, so its \
                 records were deleted (or it is not a p11derive store); nothing was imported. \
                 Restore a good copy of the store, or move it away to recover without one \
                 (--fingerprint)",
                store.path().display()
            )));
        }
        let progress = crate::progress::Progress::new(cli, "root recover: verifying the store", 0);
        let tally = &mut crate::audit_cmd::Tally::default();
        // From the newest archive's end checkpoint when records were
        // archived, as a plain `audit verify`.
        let checked = crate::checkpoint_cmd::verify_in(
            store,
            &ak,
            None,
            crate::checkpoint_cmd::Mode::Plain,
            &progress,
            tally,
        );
        progress.finish();
        checked.map_err(|f| {
            Failure::Refused(format!(
                "{}: store {} does not verify under the rebuilt root; nothing was imported \
                 (restore a good copy of the store, or check the shares)",
                f.message(),
                store.path().display()
            ))
        })?;
        store.authenticate(&ak, None)?;
        head = newest_record(store)?;
        if config.users.enabled {
            let want = Want::to(Action::ManageRoot);
            let caller = crate::users::admit(cli, store, &r.root, &ak, config, &want)?;
            actor = Some(caller.name.clone());
        }
        let rules = store.rules_for("recover", None)?;
        if rules.is_empty() && request.is_some() {
            return Err(Failure::Usage(
                "--request: no quorum rule governs `recover` in this store, so the recovery \
                 needs no request; run it without --request and --approval"
                    .into(),
            ));
        }
        if !rules.is_empty() {
            let cx = Ctx {
                cli,
                config,
                store,
                backend,
                ak: &ak,
                actor: actor.as_deref().unwrap_or("-"),
            };
            let id = match request {
                None => return announce(&cx, &r, &rules, bytes_out),
                Some(id) => id.to_ascii_lowercase(),
            };
            approve_and_check(&cx, &id, &r, approvals)?;
            governed = Some(id);
        }
    }
    // A token that still holds a rollback anchor (the same token, its root
    // deleted) takes only the store that anchor knows.
    if let (Some(store), Some(a)) = (store, backend.read_anchor().map_err(failed)?) {
        store.check_anchor(&a).map_err(|e| {
            Failure::Refused(format!(
                "{e}: backing token {token:?} still holds the rollback anchor of a store this one \
                 is not (or an older copy of it); nothing was imported"
            ))
        })?;
    }
    // The import, then everything that records it; on failure the root is
    // taken out of the HSM again.
    backend.import_root(r.root.bytes()).map_err(failed)?;
    let fingerprint = r.fingerprint.clone();
    let Rebuilt {
        root,
        identifier,
        given,
        ..
    } = r;
    drop(root);
    let done = (|| {
        let _ = backend.logout();
        backend.login(CKU_USER, pin).map_err(failed)?;
        let live = hex(&derive::root_fingerprint(backend).map_err(failed)?);
        if live != fingerprint {
            return Err(failed(format!(
                "the HSM computes fingerprint {live} for the root just imported, not \
                 {fingerprint}: the backing HSM's HMAC differs"
            )));
        }
        let Some(store) = store else { return Ok(None) };
        let hsm_ak = derive::audit_key(backend).map_err(failed)?;
        let detail = format!(
            "root recovered: {}{fingerprint} into backing token {token:?} from {given} shares \
             of SLIP-39 share set id={identifier}; store found at {head}{}",
            p11derive::store::FINGERPRINT_WORD,
            governed
                .as_ref()
                .map(|id| format!("; request={id}"))
                .unwrap_or_default()
        );
        let rec = Record::new(Event::Root, CKR_OK)
            .actor(actor.as_deref())
            .detail(detail);
        // The recovery's record, and a governed recovery's request marked
        // executed, in one transaction: either both or neither.
        match &governed {
            Some(id) => {
                let base = Record::new(Event::Request, CKR_OK).actor(actor.as_deref());
                store
                    .execute_recovery(&hsm_ak, id, (&fingerprint, &token), unix_now(), base, rec)
                    .map_err(refusal)?;
            }
            None => store.record(Some(&hsm_ak), rec)?,
        }
        Ok(Some(store))
    })();
    let store_done = match done {
        Err(e) => return Err(noted(e, &take_back(backend, pin, &token))),
        Ok(s) => s,
    };
    // Recorded: the root stays. The anchor follows the store now, or at the
    // next change when the HSM refuses it this moment.
    if let Some(s) = store_done {
        if let Err(e) = p11derive::lifecycle::advance_anchor(s, backend, false) {
            eprintln!(
                "p11derive: warning: the root is recovered and recorded, but the HSM's rollback \
                 anchor could not be set ({e}); the next command that changes the store sets it"
            );
        }
    }
    if cli.json {
        return print_json(&serde_json::json!({
            "recovered": true,
            "fingerprint": fingerprint,
            "token": token,
            "store": store.map(|s| s.path().display().to_string()),
            "request": governed,
            "share_set": identifier,
            "store_head": head,
        }));
    }
    outln!(
        "root {fingerprint} recovered from {given} shares (set {identifier}) into backing token \
         {token:?} (sensitive, not extractable)"
    );
    match store {
        Some(s) => outln!(
            "store {} verified under it; its newest record before the recovery was {head}: \
             compare it with your off-host copy of the audit log (a stale store copy cannot be \
             told apart once the old HSM's anchor is lost). The HSM's rollback anchor now holds \
             the store's newest record",
            s.path().display()
        ),
        None => outln!(
            "no store at {}: restore the root's store (its newest backup) where [store] points \
             before anything else; `p11derive init` makes a new store only for a root that \
             never had one",
            store_place(config)
        ),
    }
    Ok(())
}

/// Where the config's store is, for messages (a PostgreSQL URL without its password).
fn store_place(config: &Config) -> String {
    match &config.store.url {
        Some(u) => p11derive::config::redact(u),
        None => config.store.path.display().to_string(),
    }
}

/// Takes back the root this process imported; says what became of it.
pub fn take_back(backend: &Backend, pin: &[u8], token: &str) -> String {
    // Logged in again without needing the root (a login that failed on
    // finding two roots left the session logged out, and a private root
    // cannot be found then).
    let _ = backend.logout();
    let _ = backend.login_admin(pin);
    match backend.destroy_root() {
        Ok(()) => format!("the root imported into backing token {token:?} was taken out again"),
        Err(e) => format!(
            "the root imported into backing token {token:?} could NOT be taken out again ({e}): \
             remove it with the HSM's own tools before anything else"
        ),
    }
}

/// `f` with `note` added to its message, of the same kind.
pub fn noted(f: Failure, note: &str) -> Failure {
    match f {
        Failure::Failed(m) => Failure::Failed(format!("{m}; {note}")),
        Failure::Usage(m) => Failure::Usage(format!("{m}; {note}")),
        Failure::Refused(m) => Failure::Refused(format!("{m}; {note}")),
        Failure::NotFound(m) => Failure::NotFound(format!("{m}; {note}")),
        Failure::Waiting(m) => Failure::Waiting(format!("{m}; {note}")),
    }
}

/// `record N (TIME)`: the store's newest record, for the operator's check.
fn newest_record(store: &Store) -> Result<String, Failure> {
    let Some((seq, mac)) = store.audit_head()? else {
        return Ok("no record".into());
    };
    let time = store
        .audit_rows(seq as i64)?
        .first()
        .map(|(r, _)| format_time((r.time_ns / 1_000_000_000) as i64))
        .unwrap_or_default();
    Ok(format!("record {seq} ({time}, MAC {})", &hex(&mac)[..16]))
}

/// Writes `bytes` to a new file (never over one).
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let mut f = p11derive::files::create_new(path, &p11derive::files::Access::Owner)
        .map_err(|e| failed(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))
}

fn refusal(e: StoreError) -> Failure {
    match e {
        StoreError::Refused(m) => Failure::Refused(m),
        e => e.into(),
    }
}

/// The first run of a governed recovery: its request, announced, with the
/// cooldown before the earliest import in its bytes. Ends with exit 5.
fn announce(
    cx: &Ctx<'_>,
    r: &Rebuilt,
    rules: &[Rule],
    bytes_out: Option<&Path>,
) -> Result<(), Failure> {
    let cooldown = p11derive::approvals::parse_duration(&cx.config.approvals.recover_cooldown)
        .map_err(|m| {
            failed(format!(
                "config file {}: [approvals] recover_cooldown: {m}",
                cx.config.source.display()
            ))
        })?;
    let lifetime = crate::approvals_cmd::expiry(cx.config, None)?;
    let not_before = unix_now() + cooldown;
    let params = vec![
        p("fingerprint", &r.fingerprint),
        p("token", &cx.config.backend.token_label),
        p("not-before", format_time(not_before)),
    ];
    let row = new_request(cx, "recover", params, cooldown + lifetime)?;
    let needs: Vec<String> = rules.iter().map(Rule::describe).collect();
    show_new_request(
        cx.cli,
        &row,
        &needs,
        serde_json::json!({"not_before": format_time(not_before)}),
    )?;
    if let Some(out) = bytes_out {
        let doc = row.doc().map_err(failed)?;
        write_new(out, &doc.verdict_bytes(Verdict::Approve)).map_err(|f| {
            noted(
                f,
                &format!(
                    "request {} was recorded: `p11derive root recover --request {}` carries it \
                     out once approved (the bytes to sign are printed above)",
                    row.id, row.id
                ),
            )
        })?;
    }
    Err(Failure::Waiting(format!(
        "the root's recovery needs approvals ({}): request {} announced; nothing was imported. \
         Approvers sign the bytes above ({}or `p11derive request export {}` where the store can \
         be opened); from {} run `p11derive root recover --request {} --approval NAME=SIG ...` \
         with the shares again",
        needs.join("; "),
        row.id,
        bytes_out
            .map(|p| format!("written to {}, ", p.display()))
            .unwrap_or_default(),
        row.id,
        format_time(not_before),
        row.id
    )))
}

/// A governed recovery's second run: the approvals given are recorded on
/// the request (each verified in the store), then the request must be
/// this recovery's, out of its cooldown, and approved.
fn approve_and_check(
    cx: &Ctx<'_>,
    id: &str,
    r: &Rebuilt,
    approvals: &[(String, Vec<u8>)],
) -> Result<(), Failure> {
    let row = cx
        .store
        .request(id)?
        .ok_or_else(|| Failure::NotFound(format!("no request {id} in the store")))?;
    let token = &cx.config.backend.token_label;
    // What the request names first (the cooldown is judged below, after
    // the approvals given are recorded: they count on a later run too).
    check_recovery(&row, &r.fingerprint, token, i64::MAX).map_err(refusal)?;
    for (name, sig) in approvals {
        if row.verdicts().iter().any(|v| &v.given.approver == name) {
            continue;
        }
        let base = Record::new(Event::Approval, CKR_OK).actor(Some(cx.actor));
        cx.store
            .add_verdict(cx.ak, id, name, Verdict::Approve, sig, unix_now(), base)
            .map_err(refusal)?;
    }
    let row = cx
        .store
        .request(id)?
        .ok_or_else(|| Failure::NotFound(format!("no request {id} in the store")))?;
    let status = row.status(unix_now()).to_string();
    if status != "pending" {
        return Err(Failure::Refused(format!(
            "request {id} is {status}{}: nothing was imported{}",
            if row.outcome.is_empty() {
                String::new()
            } else {
                format!(" ({})", row.outcome)
            },
            if status == "expired" {
                "; announce the recovery again (run without --request)"
            } else {
                ""
            }
        )));
    }
    check_recovery(&row, &r.fingerprint, token, unix_now()).map_err(refusal)?;
    let unmet = cx.store.unmet(&row)?;
    if !unmet.is_empty() {
        return Err(Failure::Refused(format!(
            "request {id} lacks approvals: {}; nothing was imported",
            unmet.join("; ")
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------- drill

fn check_shares(cli: &Cli, shares: &SharesIn) -> Result<(), Failure> {
    let config = load_config(cli)?;
    lock_memory(&config)?;
    let store = crate::common::open_store(&config)?;
    let r = rebuild(shares)?;
    let Rebuilt {
        root,
        fingerprint,
        identifier,
        given,
    } = r;
    drop(root);
    let want = Want::to(Action::ManageRoot).or(Action::ReadAudit);
    crate::common::with_key(cli, &store, &config, want, |store, backend, ak, caller| {
        // Users mode checked the store at the login; pass-through does here,
        // before the drill's record is written.
        store.check_root(ak)?;
        crate::common::refuse_rolled_back(store, backend, ak)?;
        let live = hex(&derive::root_fingerprint(backend).map_err(failed)?);
        let matched = live == fingerprint;
        let detail = format!(
            "root drill: {}{live}; {given} shares of SLIP-39 share set id={identifier} rebuild \
             {fingerprint}: {}",
            p11derive::store::FINGERPRINT_WORD,
            if matched { "match" } else { "MISMATCH" }
        );
        store.record(
            Some(ak),
            Record::new(Event::Root, CKR_OK)
                .actor(caller.map(|c| c.name.as_str()))
                .detail(detail),
        )?;
        p11derive::lifecycle::advance_anchor(store, backend, false).map_err(failed)?;
        if cli.json {
            print_json(&serde_json::json!({
                "match": matched,
                "live_fingerprint": live,
                "shares_fingerprint": fingerprint,
                "share_set": identifier,
                "shares": given,
            }))?;
        }
        if !matched {
            return Err(Failure::Failed(format!(
                "drill failed: {}",
                wrong_root(&fingerprint, &live, "the live root")
            )));
        }
        if !cli.json {
            outln!(
                "drill passed: {given} shares of set {identifier} rebuild the live root \
                 (fingerprint {live}); recorded in the audit log"
            );
        }
        Ok(())
    })
}
