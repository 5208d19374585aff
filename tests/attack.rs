//! Independent review of issue 17's authenticated state: attacks by someone who can write the store but holds neither a PIN nor the HSM.

mod common;

use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

use common::*;

/// A brand-new process logs in (if it can) and tries `key`: the outcome.
fn new_process_signs(s: &Setup, key: &str) -> Result<(), String> {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let ctx = Pkcs11::new(module_path()).map_err(|e| e.to_string())?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("C_Initialize refused: {e}"))?;
    let slot = ctx.get_slots_with_token().map_err(|e| e.to_string())?[0];
    // Finalized whatever happens (cryptoki does not on drop).
    let p = Provider { ctx, slot };
    let session = p.session();
    session
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .map_err(|e| format!("login refused: {:?}", rv_of::<()>(Err(e))))?;
    try_sign(&session, key)
        .map(|_| ())
        .map_err(|e| format!("sign refused: {e:?}"))
}

/// `act` active, `ret` retired (its retirement the newest state change);
/// returns a backup taken while `ret` was still ACTIVE.
fn retired(s: &Setup) -> std::path::PathBuf {
    s.create_asset("act", "p256");
    s.create_asset("ret", "p256");
    let older = s.dir.join("before-retire.db");
    backup(&s.store, &older);
    ok(s, &["asset", "retire", "ret", "--yes"]);
    s.audit_verifies();
    assert!(new_process_signs(s, "ret").is_err(), "retired key signed");
    older
}

/// The retirement's record is hidden from the ledger without touching its
/// MAC column (so the anchor's "newest state change" MAC still matches):
/// its `event` column turned into `sign`, or its detail given the pending
/// mark. The retired row then goes back to its sealed copy from before the
/// retirement, or every seal is removed so that login "upgrades" the store
/// and seals the row to the create record. Refused because the anchor's
/// newest state change must be one the ledger verified, and a marked
/// record's MAC is checked too.
#[test]
fn hiding_a_state_change_record_from_the_ledger_does_not_free_a_retired_key() {
    let _turn = turn();
    let pending = "[written without the audit key, sealed later] ";
    let hide_event =
        "UPDATE audit SET event = 'sign' WHERE event = 'transition' AND asset = 'ret';";
    let hide_mark = format!(
        "UPDATE audit SET detail = '{pending}' || detail \
         WHERE event = 'transition' AND asset = 'ret';"
    );
    let unseal_all = "UPDATE assets SET state = 'ACTIVE', resume_state = NULL, \
                      change_seq = NULL WHERE name = 'ret'; \
                      UPDATE assets SET state_mac = NULL, change_seq = NULL;";
    let mut freed = Vec::new();
    for (what, hide, row) in [
        ("event column + old row", hide_event.to_string(), "old"),
        ("pending mark + old row", hide_mark.clone(), "old"),
        (
            "event column + every seal removed",
            hide_event.to_string(),
            "unseal",
        ),
        (
            "pending mark + every seal removed",
            hide_mark.clone(),
            "unseal",
        ),
    ] {
        let s = setup(None);
        let from = s.log().len();
        let older = retired(&s);
        let row_sql = match row {
            "old" => {
                let column =
                    |c: &str| format!("{c} = (SELECT {c} FROM o.assets WHERE name = 'ret')");
                format!(
                    "ATTACH '{}' AS o; UPDATE assets SET {} WHERE name = 'ret';",
                    older.display(),
                    ["state", "resume_state", "change_seq", "state_mac"]
                        .map(column)
                        .join(", ")
                )
            }
            _ => unseal_all.to_string(),
        };
        sqlite(&s.store, &format!("{hide} {row_sql}"));
        let got = new_process_signs(&s, "ret");
        let out = cli(&s, &["audit", "verify"]);
        eprintln!(
            "{what}: ret -> {got:?}; audit verify -> {:?}; log: {}",
            out.status.code(),
            s.log_since(from)
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("sealed"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        if got.is_ok() {
            freed.push(what);
        }
        assert_eq!(out.status.code(), Some(1), "{what}: audit verify passed");
        let re = cli(&s, &["audit", "reanchor", "--yes"]);
        assert_eq!(
            re.status.code(),
            Some(1),
            "{what}: reanchor accepted the store"
        );
    }
    assert!(freed.is_empty(), "the retired key signed after: {freed:?}");
}

/// Every seal removed, so that a login "upgrades" the store and seals the
/// rows whose state agrees with their latest change: the key type or the
/// CKA_ID edited meanwhile must not be sealed in (the create record names
/// both).
#[test]
fn removing_every_seal_does_not_get_an_edited_key_type_or_id_sealed() {
    let _turn = turn();
    let mut sealed_in = Vec::new();
    for (what, edit, column, value) in [
        (
            "key type",
            "UPDATE assets SET key_type = 'secp256k1' WHERE name = 'act';",
            "key_type",
            "secp256k1",
        ),
        (
            "CKA_ID",
            "UPDATE assets SET object_id = x'00112233' WHERE name = 'act';",
            "hex(object_id)",
            "00112233",
        ),
    ] {
        let s = setup(None);
        s.create_asset("act", "p256");
        s.create_asset("other", "p256");
        sqlite(
            &s.store,
            &format!("{edit} UPDATE assets SET state_mac = NULL, change_seq = NULL;"),
        );
        let got = new_process_signs(&s, "act");
        let row = std::process::Command::new("sqlite3")
            .arg(&s.store)
            .arg(format!(
                "SELECT {column}, state_mac IS NOT NULL FROM assets WHERE name = 'act'"
            ))
            .output()
            .unwrap();
        let row = String::from_utf8_lossy(&row.stdout).trim().to_string();
        eprintln!("{what}: act signs -> {got:?}; row now {row:?}");
        if row == format!("{value}|1") {
            sealed_in.push(what);
        }
    }
    assert!(sealed_in.is_empty(), "login sealed an edited {sealed_in:?}");
}

/// A process signs three times and dies without `C_Finalize` (a crash, a
/// SIGKILL, a service restart that skips it) within the anchor interval:
/// the records of those returned signatures are deleted. The anchor must
/// still show them missing (to a new login, or to `audit verify`).
#[test]
fn records_of_a_crashed_signer_cannot_be_deleted_unnoticed() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("a", "p256");
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let out = s.dir.join("child.txt");
    let pid = fork_child(&out, || {
        let (_ctx, session) = child_session()?;
        let mut n = 0;
        for _ in 0..3 {
            try_sign(&session, "a").map_err(|e| format!("{e:?}"))?;
            n += 1;
        }
        Ok(format!("{n}"))
    });
    assert_eq!(reap(pid, &out, "the signer"), "3");
    let signed = s.signed_count(&[]);
    assert_eq!(signed, 3, "three sign records");
    sqlite(&s.store, "DELETE FROM audit WHERE event = 'sign';");
    let verify = cli(&s, &["audit", "verify"]);
    let login = new_process_signs(&s, "a");
    eprintln!(
        "after deleting 3 returned signatures' records: audit verify -> {:?} {}; new process -> {login:?}",
        verify.status.code(),
        stderr(&verify).lines().last().unwrap_or("")
    );
    assert!(
        verify.status.code() == Some(1) || login.is_err(),
        "three returned signatures lost their records unnoticed"
    );
}

/// Under a running process that has not yet seen a retirement made by the
/// CLI: the retirement's record is hidden (its `event` column, or the
/// pending mark) and the row put back to its sealed copy from before. The
/// anchor's newest state change still has its MAC, but the ledger does not
/// reach it: the commit refuses.
#[test]
fn a_retirement_hidden_under_a_running_process_does_not_free_the_key() {
    let _turn = turn();
    let pending = "[written without the audit key, sealed later] ";
    let mut freed = Vec::new();
    for (what, hide) in [
        (
            "event column",
            "UPDATE audit SET event = 'sign' WHERE event = 'transition' AND asset = 'ret';"
                .to_string(),
        ),
        (
            "pending mark",
            format!(
                "UPDATE audit SET detail = '{pending}' || detail \
                 WHERE event = 'transition' AND asset = 'ret';"
            ),
        ),
    ] {
        let s = setup(None);
        s.create_asset("ret", "p256");
        let p = s.load();
        let session = p.user_session();
        try_sign(&session, "ret").expect("ret signs");
        let older = s.dir.join("before-retire.db");
        backup(&s.store, &older);
        ok(&s, &["asset", "retire", "ret", "--yes"]);
        let column = |c: &str| format!("{c} = (SELECT {c} FROM o.assets WHERE name = 'ret')");
        sqlite(
            &s.store,
            &format!(
                "{hide} ATTACH '{}' AS o; UPDATE assets SET {} WHERE name = 'ret';",
                older.display(),
                ["state", "resume_state", "change_seq", "state_mac"]
                    .map(column)
                    .join(", ")
            ),
        );
        let mut signed = 0;
        for _ in 0..3 {
            if try_sign(&session, "ret").is_ok() {
                signed += 1;
            }
        }
        eprintln!("{what}: the running process signed {signed} times with the retired key");
        if signed > 0 {
            freed.push(what);
        }
    }
    assert!(
        freed.is_empty(),
        "a running process signed with a retired key: {freed:?}"
    );
}

/// PostgreSQL, a DBA without the HSM: the same hiding under a running host
/// (which has the asset cached) and for a host that starts afterwards.
#[test]
fn a_dba_hiding_a_retirement_frees_no_key_on_postgresql() {
    let _turn = turn();
    let url = pg_database(&pg_admin_url(), "p11derive_attack_hide");
    let s = setup_with(None, false);
    s.use_pg(&url);
    s.init();
    s.create_asset("ret", "p256");
    let p = s.load();
    let session = p.user_session();
    try_sign(&session, "ret").expect("ret signs");
    let admin = {
        let admin = pg_admin_url();
        let (base, _) = admin.rsplit_once('/').unwrap();
        format!("{base}/p11derive_attack_hide")
    };
    let mut db = postgres::Client::connect(&admin, postgres::NoTls).expect("DBA connects");
    let old = db
        .query_one(
            "SELECT change_seq, state_mac FROM assets WHERE name = 'ret'",
            &[],
        )
        .unwrap();
    let (seq, mac): (Option<i64>, Option<Vec<u8>>) = (old.get(0), old.get(1));
    ok(&s, &["asset", "retire", "ret", "--yes"]);
    db.batch_execute(
        "UPDATE audit SET event = 'sign' WHERE event = 'transition' AND asset = 'ret'",
    )
    .unwrap();
    db.execute(
        "UPDATE assets SET state = 'ACTIVE', resume_state = NULL, change_seq = $1, \
         state_mac = $2 WHERE name = 'ret'",
        &[&seq, &mac],
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut running = 0;
    for _ in 0..3 {
        if try_sign(&session, "ret").is_ok() {
            running += 1;
        }
    }
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let out = s.dir.join("new-host.txt");
    let pid = fork_child(&out, || {
        // A login refused is the safe outcome too.
        let (_ctx, session) = match child_session() {
            Ok(x) => x,
            Err(e) => return Ok(format!("Err(login refused: {e})")),
        };
        Ok(format!("{:?}", try_sign(&session, "ret").map(|_| ())))
    });
    let fresh = reap(pid, &out, "a new host");
    eprintln!("PostgreSQL: running host signed {running}/3; a new host: {fresh}");
    assert_eq!(running, 0, "a running host signed with the retired key");
    assert!(
        fresh.starts_with("Err"),
        "a new host signed with the retired key"
    );
}

/// Regression: a store upgraded from before seals (every row unsealed, as
/// migration 7 leaves it) is sealed at the first login, whatever state
/// each asset reached, and then works as before.
#[test]
fn an_upgraded_store_is_sealed_at_first_login_in_every_state() {
    let _turn = turn();
    let s = setup(None);
    for a in ["act", "sus", "rot", "ret"] {
        s.create_asset(a, "p256");
    }
    ok(&s, &["asset", "rotate", "sus", "--grace"]);
    ok(&s, &["asset", "suspend", "sus"]);
    ok(&s, &["asset", "rotate", "rot"]);
    ok(&s, &["asset", "rotate", "rot"]);
    ok(&s, &["asset", "trim", "rot", "3"]);
    ok(&s, &["asset", "retire", "ret", "--yes"]);
    sqlite(
        &s.store,
        "UPDATE assets SET state_mac = NULL, change_seq = NULL;",
    );
    {
        let p = s.load();
        let session = p.user_session();
        try_sign(&session, "act").expect("act signs after the upgrade");
        try_sign(&session, "rot").expect("rot signs after the upgrade");
        for k in ["sus", "ret", "rot@v1", "rot@v2"] {
            assert!(
                try_sign(&session, k).is_err(),
                "{k} signed after the upgrade"
            );
        }
    }
    ok(&s, &["asset", "resume", "sus"]);
    ok(&s, &["asset", "finish", "sus"]);
    s.audit_verifies();
}

/// Regression: CLI changes made while two provider processes run are
/// honoured by both at once, and neither refuses the store for them.
#[test]
fn cli_changes_under_two_running_processes_are_honoured_by_both() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("a", "p256");
    s.create_asset("b", "p256");
    let p = s.load();
    let session = p.user_session();
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let go = s.dir.join("go");
    let out = s.dir.join("other.txt");
    // The other process signs with `a` and `b` at each step the parent
    // announces by writing `go-N`, and reports what it got.
    let steps = 4;
    let pid = {
        let go = go.clone();
        let out2 = s.dir.join("other-steps.txt");
        fork_child(&out, move || {
            let (_ctx, session) = child_session()?;
            let mut said = String::new();
            for n in 0..steps {
                let flag = go.with_extension(n.to_string());
                let t = std::time::Instant::now();
                while !flag.exists() {
                    if t.elapsed().as_secs() > 60 {
                        return Err("no go".into());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let a = try_sign(&session, "a").is_ok();
                let b = try_sign(&session, "b").is_ok();
                said.push_str(&format!("{n}:{a}:{b} "));
                std::fs::write(&out2, &said).map_err(|e| e.to_string())?;
            }
            Ok(said)
        })
    };
    let other = s.dir.join("other-steps.txt");
    let wait_step = |n: usize| {
        let t = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&other).unwrap_or_default();
            if text.contains(&format!("{n}:")) {
                return text;
            }
            assert!(
                t.elapsed().as_secs() < 60,
                "the other process is stuck: {text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    // (CLI change, whether a then b may sign)
    let plan: [(&[&str], bool, bool); 4] = [
        (&["asset", "rotate", "a"], true, true),
        (&["asset", "suspend", "b"], true, false),
        (&["asset", "rotate", "a"], true, false),
        (&["asset", "resume", "b"], true, true),
    ];
    let mut mine = Vec::new();
    for (n, (args, a, b)) in plan.iter().enumerate() {
        ok(&s, args);
        mine.push((
            try_sign(&session, "a").is_ok() == *a,
            try_sign(&session, "b").is_ok() == *b,
        ));
        std::fs::write(go.with_extension(n.to_string()), b"").unwrap();
        wait_step(n);
    }
    let theirs = reap(pid, &out, "the other process");
    let want: String = plan
        .iter()
        .enumerate()
        .map(|(n, (_, a, b))| format!("{n}:{a}:{b} "))
        .collect();
    assert!(mine.iter().all(|(a, b)| *a && *b), "this process: {mine:?}");
    assert_eq!(theirs, want, "the other process");
    drop(session);
    drop(p);
    s.audit_verifies();
}

/// Under a running signer, the record of one signature it returned is
/// deleted from the middle of the chain (not the tail, which the process's
/// position catches): the process notices when it next moves the anchor
/// (it counts the records appended since the last move), and `audit
/// verify` names the gap.
#[test]
fn a_returned_signature_record_deleted_mid_chain_is_noticed() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("a", "p256");
    let p = s.load();
    let session = p.user_session();
    for _ in 0..5 {
        try_sign(&session, "a").expect("a signs");
    }
    sqlite(
        &s.store,
        "DELETE FROM audit WHERE seq = (SELECT seq FROM audit WHERE event = 'sign' \
         ORDER BY seq LIMIT 1 OFFSET 1);",
    );
    let verify = cli(&s, &["audit", "verify"]);
    assert_eq!(
        verify.status.code(),
        Some(1),
        "audit verify passed over the gap"
    );
    // The running process counts the records appended since the anchor
    // last moved whenever it moves it (`[store] anchor_interval_ms`, a
    // second): from then on it refuses every result.
    let _ = try_sign(&session, "a");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let _ = try_sign(&session, "a");
    for _ in 0..3 {
        assert!(
            try_sign(&session, "a").is_err(),
            "the running process signed on over the gap"
        );
    }
    assert!(
        s.log().contains("are missing: records were deleted"),
        "{}",
        s.log()
    );
}

/// Control: the same hiding when a later state change links to the hidden
/// one (`prev_change=N`) is caught by that link (the newest one, which no
/// later change names, by the anchor).
#[test]
fn a_hidden_state_change_with_a_later_one_linking_to_it_is_caught() {
    let _turn = turn();
    let s = setup(None);
    let older = retired(&s);
    s.create_asset("later", "p256");
    let column = |c: &str| format!("{c} = (SELECT {c} FROM o.assets WHERE name = 'ret')");
    sqlite(
        &s.store,
        &format!(
            "UPDATE audit SET event = 'sign' WHERE event = 'transition' AND asset = 'ret'; \
             ATTACH '{}' AS o; UPDATE assets SET {} WHERE name = 'ret';",
            older.display(),
            ["state", "resume_state", "change_seq", "state_mac"]
                .map(column)
                .join(", ")
        ),
    );
    let got = new_process_signs(&s, "ret");
    eprintln!("hidden with a later link: {got:?}");
    assert!(got.is_err(), "the retired key signed");
}

/// The store file deleted (or emptied) by someone without the PIN: neither
/// `init` nor `audit reanchor` accepts a new store for the root, and no
/// message advises a command that would lose the old one's state.
#[test]
fn a_deleted_store_is_not_replaced_by_init_or_reanchor() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("cold-1", "p256");
    ok(&s, &["asset", "retire", "cold-1", "--yes"]);
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", s.store.display()));
    }
    let login = new_process_signs(&s, "cold-1");
    assert!(login.is_err());
    let re = cli(&s, &["audit", "reanchor", "--yes"]);
    let init = cli(&s, &["init"]);
    let create = cli(&s, &["asset", "create", "cold-1", "--type", "p256"]);
    eprintln!(
        "deleted store: login {login:?}\nreanchor {:?}: {}\ninit {:?}: {}\ncreate {:?}: {}\nlog: {}",
        re.status.code(),
        stderr(&re),
        init.status.code(),
        stderr(&init),
        create.status.code(),
        stderr(&create),
        s.log().lines().rev().take(3).collect::<Vec<_>>().join(" | ")
    );
    assert_ne!(re.status.code(), Some(0), "reanchor accepted a new store");
    assert_ne!(init.status.code(), Some(0), "init made a second store");
    assert_ne!(create.status.code(), Some(0), "cold-1 registered again");
    for said in [stderr(&re), stderr(&init), stderr(&create), s.log()] {
        assert!(
            !said.contains("reanchor --yes") || said.contains("REFUSED"),
            "advises reanchor: {said}"
        );
    }
}

/// The race between a CLI state change's commit and its anchor advance: as
/// soon as the retirement's record lands, it is cut from the tail and the
/// row put back to its sealed copy from before. When the cut lands before
/// the CLI reads the head for its anchor advance, the CLI must not anchor
/// the cut store (it checks that the newest record it saw is still there
/// first); a new process must not sign with the key. (Up to 40 tries; the
/// cut landed in time about one in ten on a loaded machine.)
#[test]
fn a_retirement_cut_before_the_cli_anchors_it_does_not_free_the_key() {
    let _turn = turn();
    let mut won = 0;
    let mut freed = Vec::new();
    for n in 0..40 {
        let s = setup(None);
        let name = format!("ret-{n}");
        s.create_asset(&name, "p256");
        let db = rusqlite::Connection::open(&s.store).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        let (seq, mac): (i64, Vec<u8>) = db
            .query_row(
                "SELECT change_seq, state_mac FROM assets WHERE name = ?1",
                [&name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let child = s
            .cli()
            .args(["asset", "retire", &name, "--yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        let cut = loop {
            let r: Option<i64> = db
                .query_row(
                    "SELECT seq FROM audit WHERE event = 'transition' AND asset = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .ok();
            if let Some(r) = r {
                let tx = db.unchecked_transaction().unwrap();
                tx.execute("DELETE FROM audit WHERE seq >= ?1", [r])
                    .unwrap();
                tx.execute(
                    "UPDATE assets SET state = 'ACTIVE', resume_state = NULL, change_seq = ?1, \
                     state_mac = ?2 WHERE name = ?3",
                    rusqlite::params![seq, mac, name],
                )
                .unwrap();
                tx.commit().unwrap();
                break true;
            }
            if t.elapsed().as_secs() > 20 {
                break false;
            }
        };
        let out = child.wait_with_output().unwrap();
        drop(db);
        assert!(cut, "the retirement never landed");
        let said = stderr(&out);
        if said.contains("rollback anchor not advanced") {
            won += 1;
        }
        let got = new_process_signs(&s, &name);
        eprintln!(
            "try {n}: cli {:?} {}; new process {got:?}",
            out.status.code(),
            said.trim()
        );
        if got.is_ok() {
            freed.push(name.clone());
        }
        if !freed.is_empty() {
            break;
        }
    }
    eprintln!("tries where the CLI warned that the anchor was not advanced: {won}");
    assert!(freed.is_empty(), "retired keys signed again: {freed:?}");
}

/// A store re-anchored once (anchor epoch 1), then records of returned
/// signatures cut from the tail under the running signer. The process's
/// own check finds it (the refusal is kept at the login's epoch, 1); it
/// must hold: the anchor must not be moved onto the cut chain, a
/// new process and `audit verify` must see the loss, and a fresh login of
/// the same process must not clear the refusal without a re-anchor.
#[test]
fn a_tail_cut_after_a_reanchor_is_not_forgotten() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("a", "p256");
    ok(&s, &["audit", "reanchor", "--yes"]);
    let p = s.load();
    let session = p.user_session();
    try_sign(&session, "a").expect("a signs");
    let before = s.dir.join("before.db");
    backup(&s.store, &before);
    for _ in 0..3 {
        try_sign(&session, "a").expect("a signs");
    }
    sqlite(
        &s.store,
        &format!(
            "ATTACH '{}' AS o; DELETE FROM audit WHERE seq > (SELECT max(seq) FROM o.audit);",
            before.display()
        ),
    );
    let next = try_sign(&session, "a").map(|_| ());
    session.logout().unwrap();
    let relogin = session
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .map_err(|e| rv_of::<()>(Err(e)));
    let after_relogin = try_sign(&session, "a").map(|_| ());
    drop(session);
    drop(p);
    let verify = cli(&s, &["audit", "verify"]);
    let fresh = new_process_signs(&s, "a");
    eprintln!(
        "tail cut at epoch 1: next sign {next:?}; re-login {relogin:?} then sign \
         {after_relogin:?}; audit verify {:?}; new process {fresh:?}",
        verify.status.code()
    );
    assert!(next.is_err(), "signed on the cut chain");
    assert!(after_relogin.is_err(), "a re-login cleared the refusal");
    assert!(
        verify.status.code() == Some(1) || fresh.is_err(),
        "three returned signatures lost their records unnoticed"
    );
}

/// A signer returns three signatures; their records are cut from the tail
/// before it logs out (or finalizes), which advances the anchor. The
/// process must not anchor the cut chain: it committed those records, so
/// its logout sees them gone, and a new process or `audit verify` must see
/// the loss.
#[test]
fn a_signer_does_not_anchor_a_chain_cut_before_its_logout() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("a", "p256");
    let p = s.load();
    let session = p.user_session();
    let before = s.dir.join("before.db");
    backup(&s.store, &before);
    for _ in 0..3 {
        try_sign(&session, "a").expect("a signs");
    }
    sqlite(
        &s.store,
        &format!(
            "ATTACH '{}' AS o; DELETE FROM audit WHERE seq > (SELECT max(seq) FROM o.audit);",
            before.display()
        ),
    );
    session.logout().unwrap();
    drop(session);
    drop(p);
    let verify = cli(&s, &["audit", "verify"]);
    let fresh = new_process_signs(&s, "a");
    eprintln!(
        "cut before logout: audit verify {:?}; new process {fresh:?}",
        verify.status.code()
    );
    assert!(
        verify.status.code() == Some(1) || fresh.is_err(),
        "three returned signatures lost their records unnoticed"
    );
}

/// A signer returns three signatures within the anchor interval and closes
/// its last session (the implicit logout, which leaves the backing logout
/// for later but not the anchor's move those records are owed). Their
/// records are then cut from the tail, once after `C_Finalize` and once
/// between the close and `C_Finalize`: either way the anchor must still
/// show them missing, to a new process or to `audit verify`.
#[test]
fn records_of_a_signer_that_closed_its_last_session_cannot_be_cut_unnoticed() {
    let _turn = turn();
    for cut_before_finalize in [false, true] {
        let s = setup(None);
        s.create_asset("a", "p256");
        let p = s.load();
        let session = p.user_session();
        // The first signature moves the anchor (it is older than the
        // interval); the copy taken after it holds what the anchor holds,
        // and the next three, within the interval, are anchored only by
        // the close (or, failing that, C_Finalize).
        try_sign(&session, "a").expect("a signs");
        let before = s.dir.join("before.db");
        backup(&s.store, &before);
        for _ in 0..3 {
            try_sign(&session, "a").expect("a signs");
        }
        let cut = format!(
            "ATTACH '{}' AS o; DELETE FROM audit WHERE seq > (SELECT max(seq) FROM o.audit);",
            before.display()
        );
        drop(session); // C_CloseSession of the last session: logged out
        if cut_before_finalize {
            sqlite(&s.store, &cut);
        }
        drop(p); // C_Finalize
        if !cut_before_finalize {
            sqlite(&s.store, &cut);
        }
        let verify = cli(&s, &["audit", "verify"]);
        let fresh = new_process_signs(&s, "a");
        eprintln!(
            "closed, cut {} C_Finalize: audit verify {:?}; new process {fresh:?}",
            if cut_before_finalize {
                "before"
            } else {
                "after"
            },
            verify.status.code()
        );
        assert!(
            verify.status.code() == Some(1) || fresh.is_err(),
            "three returned signatures lost their records unnoticed (cut before C_Finalize: \
             {cut_before_finalize})"
        );
    }
}
