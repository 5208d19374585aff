//! Authenticated state (design §6.5, issue 17): attacks by someone who can
//! write the SQLite store but holds neither a PIN nor the HSM. Every row
//! that decides whether a key may be used is sealed under an HSM-derived key
//! and bound to the audit chain; a store restored under a running process
//! stops it before its next result leaves; a root has one store.

mod common;

use std::path::Path;

use cryptoki::error::RvError;

use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

use common::*;

/// Restores `from` into the live store file, under whoever has it open.
fn restore_live(from: &Path, store: &Path) {
    sqlite(store, &format!(".restore '{}'", from.display()));
}

/// Assets in every state, each state reached through the CLI:
/// `act` ACTIVE, `sus` SUSPENDED, `ret` RETIRED, `rot` rotated twice and
/// trimmed to 3. Returns a backup taken while `ret` was still ACTIVE.
fn assets(s: &Setup) -> std::path::PathBuf {
    for a in ["act", "sus", "ret", "rot"] {
        s.create_asset(a, "p256");
    }
    ok(s, &["asset", "suspend", "sus"]);
    ok(s, &["asset", "rotate", "rot"]);
    ok(s, &["asset", "rotate", "rot"]);
    ok(s, &["asset", "trim", "rot", "3"]);
    let older = s.dir.join("before-retire.db");
    backup(&s.store, &older);
    ok(s, &["asset", "retire", "ret", "--yes"]);
    s.audit_verifies();
    older
}

#[test]
fn every_decisive_column_edited_with_sql_is_refused_and_named() {
    let _turn = turn();
    let s = setup(None);
    let older = assets(&s);
    let good = s.dir.join("good.db");
    backup(&s.store, &good);
    // The retired asset's row as an older backup holds it, seal and all.
    let column = |c: &str| format!("{c} = (SELECT {c} FROM o.assets WHERE name = 'ret')");
    let put_back = format!(
        "ATTACH '{}' AS o; UPDATE assets SET {} WHERE name = 'ret';",
        older.display(),
        ["state", "resume_state", "change_seq", "state_mac"]
            .map(column)
            .join(", ")
    );
    // (what, SQL, the asset it frees, the key to sign with)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "resume a suspended asset",
            "UPDATE assets SET state = 'ACTIVE', resume_state = NULL WHERE name = 'sus'".into(),
            "sus",
            "sus",
        ),
        (
            "bring a retired asset back",
            "UPDATE assets SET state = 'ACTIVE', resume_state = NULL WHERE name = 'ret'".into(),
            "ret",
            "ret",
        ),
        (
            "take a rotated, trimmed asset back to version 1",
            "UPDATE assets SET min_usable = 1, current = 1 WHERE name = 'rot'".into(),
            "rot",
            "rot@v1",
        ),
        (
            "reopen the trimmed versions only",
            "UPDATE assets SET min_usable = 1 WHERE name = 'rot'".into(),
            "rot",
            "rot@v1",
        ),
        (
            "give a suspended asset a grace window to resume to",
            "UPDATE assets SET state = 'ROTATING', resume_state = NULL, current = current \
             WHERE name = 'sus'"
                .into(),
            "sus",
            "sus",
        ),
        (
            "change an asset's key type",
            "UPDATE assets SET key_type = 'secp256k1' WHERE name = 'act'".into(),
            "act",
            "act",
        ),
        (
            "move an asset's CKA_ID",
            "UPDATE assets SET object_id = x'00112233' WHERE name = 'act'".into(),
            "act",
            "act",
        ),
        (
            "copy a good row's seal onto a retired one",
            "UPDATE assets SET state = 'ACTIVE', resume_state = NULL, \
             change_seq = (SELECT change_seq FROM assets WHERE name = 'act'), \
             state_mac = (SELECT state_mac FROM assets WHERE name = 'act') WHERE name = 'ret'"
                .into(),
            "ret",
            "ret",
        ),
        (
            "remove a row's seal",
            "UPDATE assets SET state = 'ACTIVE', resume_state = NULL, state_mac = NULL \
             WHERE name = 'ret'"
                .into(),
            "ret",
            "ret",
        ),
        (
            "put back the retired asset's row from an older backup",
            put_back.clone(),
            "ret",
            "ret",
        ),
        (
            "put back the older row and delete the retirement's record",
            format!("{put_back} DELETE FROM audit WHERE event = 'transition' AND asset = 'ret';"),
            "ret",
            "ret",
        ),
    ];
    // Before any edit: act signs, the others do not.
    {
        let p = s.load();
        let session = p.user_session();
        try_sign(&session, "act").expect("an active asset signs");
        try_sign(&session, "rot").expect("a rotated asset signs with its current version");
        for k in ["sus", "ret", "rot@v1", "rot@v2"] {
            assert!(try_sign(&session, k).is_err(), "{k} signed before any edit");
        }
    }
    for (what, sql, asset, key) in cases {
        // The good store back, re-anchored (the last case's logins moved
        // the anchor past it), so that each edit is what is refused.
        restore_live(&good, &s.store);
        ok(&s, &["audit", "reanchor", "--yes"]);
        sqlite(&s.store, &sql);
        let from = s.log().len();
        {
            // A brand-new process logs in and tries the freed key.
            let p = s.load();
            let session = p.session();
            let login = session.login(UserType::User, Some(&AuthPin::from(PIN)));
            if login.is_ok() {
                let rv = try_sign(&session, key).map(|_| ());
                assert!(rv.is_err(), "{what}: {key} signed after the edit");
            }
        }
        let log = s.log_since(from);
        assert!(
            log.contains(&format!("asset \"{asset}\""))
                || log.contains("(the anchor's newest state change)")
                || log.contains("audit record of store"),
            "{what}: the log does not name {asset}: {log}"
        );
        // The CLI refuses to show it as valid (with the PIN, rows are
        // verified), refuses to change it, and audit verify names it.
        let show = cli(&s, &["asset", "show", asset]);
        assert!(!show.status.success(), "{what}: asset show {asset} passed");
        let resume = cli(&s, &["asset", "resume", asset]);
        assert!(!resume.status.success(), "{what}: resume {asset} passed");
        let out = cli(&s, &["audit", "verify"]);
        assert_eq!(out.status.code(), Some(1), "{what}: audit verify passed");
        assert!(
            stderr(&out).contains(&format!("\"{asset}\"")) || stderr(&out).contains("record"),
            "{what}: {}",
            stderr(&out)
        );
    }
    // The untouched store works as before; without a PIN the CLI shows rows
    // as stored and says they are not verified.
    restore_live(&good, &s.store);
    ok(&s, &["audit", "reanchor", "--yes"]);
    s.audit_verifies();
    let shown = s
        .cli()
        .env_remove("P11DERIVE_PIN")
        .args(["asset", "show", "act"])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", output_text(&shown));
    assert!(
        stderr(&shown).contains("not verified"),
        "{}",
        stderr(&shown)
    );
    let p = s.load();
    let session = p.user_session();
    try_sign(&session, "act").expect("the good store still signs");
}

#[test]
fn a_store_restored_under_a_signing_process_stops_it_before_the_next_signature() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("a", "p256");
    s.create_asset("b", "p256");
    let p = s.load();
    let session = p.user_session();
    try_sign(&session, "a").expect("a signs");
    try_sign(&session, "b").expect("b signs");
    let older = s.dir.join("older.db");
    backup(&s.store, &older);
    ok(&s, &["asset", "retire", "a", "--yes"]);
    assert!(try_sign(&session, "a").is_err(), "a retired key signed");
    let newest = s.dir.join("newest.db");
    backup(&s.store, &newest);
    // The older copy goes back into the live file under the running process.
    restore_live(&older, &s.store);
    let from = s.log().len();
    for _ in 0..3 {
        assert!(try_sign(&session, "a").is_err(), "the retired key signed");
        // Fail closed: nothing leaves any more, whatever the key.
        assert!(
            try_sign(&session, "b").is_err(),
            "a result left a rolled-back store"
        );
    }
    let log = s.log_since(from);
    assert!(
        log.contains("older than the rollback anchor") && log.contains("refuses every operation"),
        "{log}"
    );
    // A new process is refused at login; the CLI refuses changes.
    let out = s.dir.join("new-process.txt");
    let pid = fork_child(&out, || match child_session() {
        Ok(_) => Err("a new process logged in to the rolled-back store".into()),
        Err(e) => Ok(e),
    });
    let said = reap(pid, &out, "a new process");
    assert!(said.contains("Login") && said.contains("token"), "{said}");
    let create = cli(&s, &["asset", "create", "c", "--type", "p256"]);
    assert_eq!(create.status.code(), Some(1), "{}", output_text(&create));
    // Re-anchoring the older copy would bring `a` back: refused.
    let re = cli(&s, &["audit", "reanchor", "--yes"]);
    assert_eq!(re.status.code(), Some(1), "{}", output_text(&re));
    assert!(stderr(&re).contains("would undo the state changes"));
    // The repair: the newest copy back, verified, re-anchored. The running
    // process stays refused until it logs in again.
    restore_live(&newest, &s.store);
    s.audit_verifies();
    ok(&s, &["audit", "reanchor", "--yes"]);
    assert!(
        try_sign(&session, "b").is_err(),
        "refused until a new login"
    );
    session.logout().unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .expect("login after the repair");
    try_sign(&session, "b").expect("b signs again");
    assert!(try_sign(&session, "a").is_err(), "a retired key signed");
    s.audit_verifies();
}

#[test]
fn records_deleted_from_the_end_under_a_running_process_stop_it() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("a", "p256");
    let p = s.load();
    let session = p.user_session();
    try_sign(&session, "a").expect("a signs");
    let before = s.dir.join("before.db");
    backup(&s.store, &before);
    for _ in 0..3 {
        try_sign(&session, "a").expect("a signs");
    }
    // The records of the three signatures returned are deleted.
    sqlite(
        &s.store,
        &format!(
            "ATTACH '{}' AS o; DELETE FROM audit WHERE seq > (SELECT max(seq) FROM o.audit);",
            before.display()
        ),
    );
    assert!(
        try_sign(&session, "a").is_err(),
        "signed on a truncated chain"
    );
    assert!(
        s.log().contains("this process already saw record"),
        "{}",
        s.log()
    );
}

#[test]
fn a_root_has_one_store() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("cold-1", "p256");
    ok(&s, &["asset", "retire", "cold-1", "--yes"]);
    // A second config naming a new store file, on the same token and root.
    let second = s.dir.join("second.toml");
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        &format!("path = \"{}\"", s.store.display()),
        &format!("path = \"{}\"", s.dir.join("new.db").display()),
    );
    std::fs::write(&second, text).unwrap();
    let init = s
        .cli()
        .env("P11DERIVE_CONF", &second)
        .arg("init")
        .output()
        .unwrap();
    assert_eq!(init.status.code(), Some(1), "{}", output_text(&init));
    let said = stderr(&init);
    assert!(said.contains("already has a store"), "{said}");
    assert!(
        said.contains(&s.store.display().to_string()),
        "names the store: {said}"
    );
    assert!(
        !said.contains("reanchor"),
        "advises a command that loses data: {said}"
    );
    assert!(!s.dir.join("new.db").exists(), "a second store was created");
    // The original store is untouched and still refuses the retired name.
    s.audit_verifies();
    let again = cli(&s, &["asset", "create", "cold-1", "--type", "p256"]);
    assert!(!again.status.success());

    // A store of the same root but another lineage (made on another token
    // holding the same imported root) put in its place: refused at login,
    // by the CLI, and by reanchor.
    let root = [0x42u8; 32];
    let a = setup(Some(&root));
    let b = setup(Some(&root));
    b.create_asset("cold-1", "p256");
    std::fs::copy(&b.store, &a.store).unwrap();
    {
        let p = a.load();
        let session = p.session();
        let rv = session.login(UserType::User, Some(&AuthPin::from(PIN)));
        assert_eq!(
            rv.map_err(|e| rv_code(&e).unwrap()),
            Err(RvError::DeviceError)
        );
    }
    assert!(
        a.log().contains("is not the store of this root"),
        "{}",
        a.log()
    );
    let re = cli(&a, &["audit", "reanchor", "--yes"]);
    assert_eq!(re.status.code(), Some(1), "{}", output_text(&re));
    assert!(stderr(&re).contains("is not the store of this root"));
    let create = cli(&a, &["asset", "create", "x", "--type", "p256"]);
    assert_eq!(create.status.code(), Some(1), "{}", output_text(&create));
}

#[test]
fn a_failed_login_is_sealed_at_once_where_the_process_holds_the_audit_key() {
    let _turn = turn();
    let s = setup(None);
    {
        let p = s.load();
        let session = p.user_session();
        session.logout().unwrap();
        // The process keeps the audit key until C_Finalize: the failure's
        // record is MACed into the chain now, not left pending.
        let bad = session.login(UserType::User, Some(&AuthPin::from("not-the-pin")));
        assert_eq!(
            bad.map_err(|e| rv_code(&e).unwrap()),
            Err(RvError::PinIncorrect)
        );
    }
    let said = s.audit_verifies();
    assert!(!said.contains("pending"), "{said}");
    let failed: Vec<serde_json::Value> = s
        .audit_records(&[])
        .into_iter()
        .filter(|r| r["event"] == "login-failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let detail = failed[0]["detail"].as_str().unwrap();
    assert!(
        !detail.starts_with(p11derive::store::PENDING_MARK),
        "{detail}"
    );
    assert!(!detail.contains("not-the-pin"), "the PIN reached the log");
}
