//! An independent attack on users mode (store writer, module user without a secret, a user of one role reaching for another's actions, rate limits): each test asserts the attack is refused; a test whose comment starts `Was a hole:` failed before its fix.

mod common;
#[path = "attack_users/more.rs"]
mod more;
#[path = "attack_users/roles.rs"]
mod roles;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

fn admin(s: &Setup, args: &[&str]) -> String {
    ok_as(s, "admin", ADMIN, args)
}

/// bob (signer, hot-*), carol (officer, *), dave (auditor), hot-1 and cold-1.
fn cast() -> Setup {
    cast_on(None)
}

fn cast_on(pg: Option<&str>) -> Setup {
    let s = users_setup_on(pg);
    add_user(&s, "bob", "signer", "hot-*", "bob-secret-1");
    add_user(&s, "carol", "officer", "*", "carol-secret-1");
    add_user(&s, "dave", "auditor", "*", "dave-secret-1");
    for a in ["hot-1", "cold-1"] {
        ok_as(
            &s,
            "carol",
            "carol-secret-1",
            &["asset", "create", a, "--type", "p256"],
        );
    }
    s
}

/// The provider loaded for `s`, or the refusal of `C_Initialize`.
fn try_load(s: &Setup) -> Result<(Pkcs11, Slot), String> {
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let ctx = Pkcs11::new(module_path()).expect("load libp11derive.so");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| e.to_string())?;
    let slot = ctx.get_slots_with_token().expect("slots")[0];
    Ok((ctx, slot))
}

fn load(s: &Setup) -> (Pkcs11, Slot) {
    try_load(s).unwrap_or_else(|e| {
        let log = s.log();
        panic!(
            "C_Initialize: {e}; log: {}",
            &log[log.len().saturating_sub(1500)..]
        )
    })
}

fn login_rv(session: &Session, who: UserType, pin: &str) -> Result<(), RvError> {
    session
        .login(who, Some(&AuthPin::from(pin)))
        .map_err(|e| rv_code(&e).unwrap_or_else(|m| panic!("{m}")))
}

/// One login attempt in a fresh session (logged out again on success).
fn attempt(ctx: &Pkcs11, slot: Slot, pin: &str) -> Result<(), RvError> {
    let session = ctx.open_rw_session(slot).unwrap();
    let r = login_rv(&session, UserType::User, pin);
    if r.is_ok() {
        session.logout().unwrap();
    }
    r
}

/// A fresh process (this test binary's `probe_worker`) loads the provider
/// for `s`, logs in with `pin` (as SO when `so`) and signs `tries` times with
/// `label`: what it printed (`INIT`, `LOGIN`, `SIGNED`).
fn probe(s: &Setup, pin: &str, so: bool, label: &str, tries: usize) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "probe_worker", "--nocapture"])
        .env("ATTACK_CONF", &s.config)
        .env("ATTACK_PIN", pin)
        .env("ATTACK_SO", if so { "1" } else { "0" })
        .env("ATTACK_LABEL", label)
        .env("ATTACK_TRIES", tries.to_string())
        .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "probe: {text}{}", stderr(&out));
    text
}

/// How many of `tries` ECDSA signatures with `label` as `pin` a fresh
/// process's provider released (0 when it refuses to start or log in).
fn signatures_in_new_process(s: &Setup, pin: &str, label: &str, tries: usize) -> usize {
    let text = probe(s, pin, false, label, tries);
    text.split("SIGNED ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("probe said: {text}"))
}

/// Whether `pin` logs in in a fresh process (false when it refuses to start).
fn logs_in_new_process(s: &Setup, pin: &str) -> bool {
    probe(s, pin, false, "-", 0).contains("LOGIN OK")
}

#[test]
#[ignore = "a child of the tests that need a fresh process"]
fn probe_worker() {
    let Ok(config) = std::env::var("ATTACK_CONF") else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap();
    std::env::set_var("P11DERIVE_CONF", &config);
    let ctx = Pkcs11::new(module_path()).expect("load");
    if let Err(e) = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        println!("INIT {e}\nLOGIN no\nSIGNED 0");
        return;
    }
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let session = ctx.open_rw_session(slot).unwrap();
    let who = if var("ATTACK_SO") == "1" {
        UserType::So
    } else {
        UserType::User
    };
    let mut n = 0;
    match login_rv(&session, who, &var("ATTACK_PIN")) {
        Ok(()) => {
            println!("LOGIN OK");
            let tries: usize = var("ATTACK_TRIES").parse().unwrap();
            if tries > 0 {
                if let Some(key) =
                    find_one(&session, &var("ATTACK_LABEL"), ObjectClass::PRIVATE_KEY)
                {
                    for _ in 0..tries {
                        if session.sign(&Mechanism::Ecdsa, key, &[9u8; 32]).is_ok() {
                            n += 1;
                        }
                    }
                }
            }
            let _ = session.logout();
        }
        Err(rv) => println!("LOGIN {rv:?}"),
    }
    println!("SIGNED {n}");
    drop(session);
    ctx.finalize().unwrap();
}

fn audit_verify_fails(s: &Setup) -> String {
    let out = as_user(s, "dave", "dave-secret-1", &["audit", "verify"]);
    assert!(
        !out.status.success(),
        "audit verify passed a tampered store: {}",
        output_text(&out)
    );
    output_text(&out)
}

// ---------------------------------------------------------------- (a) store writer

/// A whole stale copy of the store (before a lockout and before a rate limit
/// was used up) restored while no process runs.
#[test]
fn a_stale_store_copy_brings_back_neither_guesses_nor_rate() {
    let _t = turn();
    let s = cast();
    admin(&s, &["policy", "set", "hot-*", "--asset-rate", "2/1h"]);
    let old = s.dir.join("old.db");
    backup(&s.store, &old);
    assert_eq!(
        signatures_in_new_process(&s, "bob:bob-secret-1", "hot-1", 4),
        2
    );
    let (ctx, slot) = load(&s);
    for i in 0..3 {
        assert!(attempt(&ctx, slot, &format!("dave:wrong-{i}-xx")).is_err());
    }
    assert_eq!(
        attempt(&ctx, slot, "dave:dave-secret-1"),
        Err(RvError::PinLocked)
    );
    ctx.finalize().unwrap();
    sqlite(&s.store, &format!(".restore '{}'", old.display()));
    assert!(
        !logs_in_new_process(&s, "dave:dave-secret-1"),
        "a restored copy lifted dave's lockout"
    );
    assert_eq!(
        signatures_in_new_process(&s, "bob:bob-secret-1", "hot-1", 4),
        0,
        "a restored copy gave hot-1's rate back"
    );
}

/// Rows swapped between users, a removed user's row revived from an older
/// copy, a failed-login row put back, a policy put back looser.
#[test]
fn user_login_and_policy_rows_swapped_or_put_back_are_refused() {
    let _t = turn();
    let s = cast();
    // bob's row given carol's roles and carol's seal.
    sqlite(
        &s.store,
        "UPDATE users SET roles = (SELECT roles FROM users WHERE name = 'carol'), \
         patterns = (SELECT patterns FROM users WHERE name = 'carol'), \
         change_seq = (SELECT change_seq FROM users WHERE name = 'carol'), \
         state_mac = (SELECT state_mac FROM users WHERE name = 'carol') WHERE name = 'bob'",
    );
    assert!(
        !logs_in_new_process(&s, "bob:bob-secret-1"),
        "bob with carol's seal"
    );
    assert!(audit_verify_fails(&s).contains("bob"));

    // A removed user's row revived from a copy taken before the removal.
    let s = cast();
    add_user(&s, "erin", "signer", "*", "erin-secret-1");
    let old = s.dir.join("before-remove.db");
    backup(&s.store, &old);
    admin(&s, &["user", "remove", "erin", "--yes"]);
    assert!(!logs_in_new_process(&s, "erin:erin-secret-1"));
    sqlite(
        &s.store,
        &format!(
            "ATTACH '{}' AS o; UPDATE users SET state = (SELECT state FROM o.users WHERE name = 'erin'), \
             change_seq = (SELECT change_seq FROM o.users WHERE name = 'erin'), \
             state_mac = (SELECT state_mac FROM o.users WHERE name = 'erin') WHERE name = 'erin'",
            old.display()
        ),
    );
    assert_eq!(
        signatures_in_new_process(&s, "erin:erin-secret-1", "cold-1", 1),
        0,
        "a removed user revived from a backup signs"
    );
    // Or the removal's row and record both deleted (the row re-inserted).
    sqlite(
        &s.store,
        &format!(
            "ATTACH '{}' AS o; DELETE FROM users WHERE name = 'erin'; \
             INSERT INTO users SELECT * FROM o.users WHERE name = 'erin'; \
             DELETE FROM audit WHERE asset = 'user:erin' AND detail LIKE 'user remove%'",
            old.display()
        ),
    );
    assert_eq!(
        signatures_in_new_process(&s, "erin:erin-secret-1", "cold-1", 1),
        0
    );

    // A failed-login row put back from before the lockout.
    let s = cast();
    let (ctx, slot) = load(&s);
    assert!(attempt(&ctx, slot, "bob:wrong-one-1").is_err());
    ctx.finalize().unwrap();
    let old = s.dir.join("one-failure.db");
    backup(&s.store, &old);
    let (ctx, slot) = load(&s);
    assert!(attempt(&ctx, slot, "bob:wrong-two-2").is_err());
    assert!(attempt(&ctx, slot, "bob:wrong-three-3").is_err());
    assert_eq!(
        attempt(&ctx, slot, "bob:bob-secret-1"),
        Err(RvError::PinLocked)
    );
    ctx.finalize().unwrap();
    sqlite(
        &s.store,
        &format!(
            "ATTACH '{}' AS o; DELETE FROM logins WHERE name = 'bob'; \
             INSERT INTO logins SELECT * FROM o.logins WHERE name = 'bob'",
            old.display()
        ),
    );
    assert!(
        !logs_in_new_process(&s, "bob:bob-secret-1"),
        "lockout lifted by an old row"
    );
    // Or the row deleted outright.
    sqlite(&s.store, "DELETE FROM logins WHERE name = 'bob'");
    assert!(
        !logs_in_new_process(&s, "bob:bob-secret-1"),
        "lockout lifted by a deleted row"
    );

    // A looser policy put back after an admin tightened it.
    let s = cast();
    admin(&s, &["policy", "set", "hot-*", "--asset-rate", "100/1h"]);
    let old = s.dir.join("loose.db");
    backup(&s.store, &old);
    admin(&s, &["policy", "set", "hot-*", "--asset-rate", "1/1h"]);
    assert_eq!(
        signatures_in_new_process(&s, "bob:bob-secret-1", "hot-1", 3),
        1
    );
    sqlite(
        &s.store,
        &format!(
            "ATTACH '{}' AS o; DELETE FROM policies; INSERT INTO policies SELECT * FROM o.policies",
            old.display()
        ),
    );
    assert_eq!(
        signatures_in_new_process(&s, "bob:bob-secret-1", "hot-1", 3),
        0,
        "an older, looser policy row put back"
    );
    assert!(audit_verify_fails(&s).contains("hot-*"));
}

/// The users table emptied with SQL, then `init --admin` (which the
/// provider's own warning suggests when it finds no users) makes a new admin
/// beside the deleted ones.
#[test]
fn the_users_table_emptied_makes_no_new_first_admin() {
    let _t = turn();
    let s = cast();
    sqlite(&s.store, "DELETE FROM users");
    assert!(!logs_in_new_process(&s, "bob:bob-secret-1"));
    let out = s
        .cli()
        .env("P11DERIVE_PIN", "mallory-secret-1")
        .args(["init", "--admin", "mallory"])
        .output()
        .unwrap();
    // Was a hole: `init --admin` decided "no users yet" from `SELECT
    // COUNT(*) FROM users`, so after a store writer's DELETE it added a fresh
    // admin. Now the verified chain decides (`Store::has_users`).
    let made = out.status.success();
    let so = probe(&s, "mallory:mallory-secret-1", true, "-", 0);
    assert!(
        !made,
        "init --admin mallory on an emptied users table succeeded ({}); mallory's SO login: {so}",
        output_text(&out)
    );
}

/// Audit records of returned signatures edited (actor, rv) or deleted to
/// lower the count a rate limit sees: documented as lowering the count for a
/// new process, so `audit verify` must name the tampering.
#[test]
fn audit_records_edited_to_lower_a_rate_count_fail_verify() {
    let _t = turn();
    let s = cast();
    admin(&s, &["policy", "set", "hot-*", "--user-rate", "2/1h"]);
    assert_eq!(
        signatures_in_new_process(&s, "bob:bob-secret-1", "hot-1", 3),
        2
    );
    sqlite(
        &s.store,
        "UPDATE audit SET actor = 'nobody' WHERE event = 'sign'",
    );
    let more = signatures_in_new_process(&s, "bob:bob-secret-1", "hot-1", 3);
    let why = audit_verify_fails(&s);
    eprintln!("after the actor edit a new process signed {more} more; verify: {why}");
    // The rv column flipped instead.
    let s = cast();
    admin(&s, &["policy", "set", "hot-*", "--asset-rate", "2/1h"]);
    assert_eq!(
        signatures_in_new_process(&s, "bob:bob-secret-1", "hot-1", 3),
        2
    );
    sqlite(&s.store, "UPDATE audit SET rv = 5 WHERE event = 'sign'");
    let more = signatures_in_new_process(&s, "bob:bob-secret-1", "hot-1", 3);
    audit_verify_fails(&s);
    eprintln!("after the rv edit a new process signed {more} more");
}

// ---------------------------------------------------------------- (b) module user

/// Guesses from many processes at once: at most `max_failures` (3) of them
/// may be judged before the name locks.
#[test]
fn concurrent_guesses_from_many_processes_get_no_more_than_max_failures() {
    let _t = turn();
    let s = cast();
    let exe = std::env::current_exe().unwrap();
    let go = s.dir.join("go");
    let n = 10;
    let children: Vec<_> = (0..n)
        .map(|i| {
            Command::new(&exe)
                .args(["--ignored", "--exact", "guess_worker", "--nocapture"])
                .env("ATTACK_CONF", &s.config)
                .env("ATTACK_GO", &go)
                .env("ATTACK_READY", s.dir.join(format!("ready-{i}")))
                .env("ATTACK_PIN", format!("bob:guess-{i}-xxxx"))
                .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let t = std::time::Instant::now();
    while (0..n).any(|i| !s.dir.join(format!("ready-{i}")).exists()) {
        assert!(t.elapsed().as_secs() < 120, "workers did not start");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::fs::write(&go, b"").unwrap();
    let mut judged = 0;
    let mut answers = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "worker: {text}{}", stderr(&out));
        let rv = text
            .split("RESULT ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .unwrap_or_else(|| panic!("worker said: {text}"))
            .to_string();
        if rv == "PinIncorrect" {
            judged += 1;
        }
        answers.push(rv);
    }
    // Every one of the n guesses was wrong: bob must be locked out now.
    let locked = !logs_in_new_process(&s, "bob:bob-secret-1");
    // Was a hole: the failed-login count was read outside the transaction
    // that wrote count+1, so racing guesses overwrote one another's
    // increment. Now each attempt is counted (read and written in one write
    // transaction) before its secret is judged.
    assert!(
        judged <= 3 && locked,
        "{judged} of {n} concurrent guesses were judged (max_failures = 3); bob locked \
         afterwards: {locked}; answers {answers:?}"
    );
}

#[test]
#[ignore = "a child of concurrent_guesses_from_many_processes_get_no_more_than_max_failures"]
fn guess_worker() {
    let Ok(config) = std::env::var("ATTACK_CONF") else {
        return;
    };
    let go = PathBuf::from(std::env::var("ATTACK_GO").unwrap());
    let ready = PathBuf::from(std::env::var("ATTACK_READY").unwrap());
    let pin = std::env::var("ATTACK_PIN").unwrap();
    std::env::set_var("P11DERIVE_CONF", &config);
    let ctx = Pkcs11::new(module_path()).expect("load");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let session = ctx.open_rw_session(slot).unwrap();
    std::fs::write(&ready, b"").unwrap();
    while !go.exists() {
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    let r = match login_rv(&session, UserType::User, &pin) {
        Ok(()) => "OK".to_string(),
        Err(rv) => format!("{rv:?}"),
    };
    println!("RESULT {r}");
    drop(session);
    ctx.finalize().unwrap();
}

/// The provider's raw table, initialized for `s`, and a read-write session.
fn raw_session(s: &Setup) -> (Raw, cryptoki_sys::CK_SESSION_HANDLE) {
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let r = raw();
    let mut args = cryptoki_sys::CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: cryptoki_sys::CKF_OS_LOCKING_OK,
        pReserved: std::ptr::null_mut(),
    };
    assert_eq!(call!(r, C_Initialize(&mut args as *mut _ as *mut _)), 0);
    let mut h = 0;
    let flags = cryptoki_sys::CKF_SERIAL_SESSION | cryptoki_sys::CKF_RW_SESSION;
    assert_eq!(
        call!(
            r,
            C_OpenSession(1, flags, std::ptr::null_mut(), None, &mut h)
        ),
        0
    );
    (r, h)
}

/// Odd PINs through the raw C_Login: no colon and 1 MiB long, NUL and
/// non-UTF-8 bytes in the name, a second colon, a NUL after the secret,
/// another case, a leading space: none logs in, the process stays up,
/// and nothing of them reaches the log.
#[test]
fn odd_pins_log_no_one_in() {
    let _t = turn();
    let s = cast();
    let (r, h) = raw_session(&s);
    let login = |pin: &[u8]| {
        let mut pin = pin.to_vec();
        let rv = call!(
            r,
            C_Login(h, cryptoki_sys::CKU_USER, pin.as_mut_ptr(), pin.len() as _)
        );
        if rv == 0 {
            call!(r, C_Logout(h));
        }
        rv
    };
    let mut huge = vec![b'x'; 1 << 20];
    huge[..7].copy_from_slice(b"bobxyzz");
    let mut huge_named = b"bob:".to_vec();
    huge_named.extend(std::iter::repeat_n(b'y', 1 << 20));
    let odd: Vec<Vec<u8>> = vec![
        huge,
        huge_named,
        b"bob-secret-1".to_vec(),
        b"bo\0b:bob-secret-1".to_vec(),
        b"b\xffob:bob-secret-1".to_vec(),
        b"bob\0:bob-secret-1".to_vec(),
        b"bob:bob:bob-secret-1".to_vec(),
        b"BOB:bob-secret-1".to_vec(),
        b" bob:bob-secret-1".to_vec(),
        b":bob-secret-1".to_vec(),
        b"".to_vec(),
    ];
    for pin in &odd {
        let rv = login(pin);
        assert_ne!(
            rv,
            0,
            "{:?} logged in",
            String::from_utf8_lossy(&pin[..pin.len().min(40)])
        );
    }
    assert_ne!(login(b"bob:bob-secret-1\0"), 0);
    // bob's right secret still works (at most two wrong guesses of his name
    // above: the double colon and the NUL; a huge one is refused early).
    let right = login(b"bob:bob-secret-1");
    // The process still serves another user.
    assert_eq!(login(b"dave:dave-secret-1"), 0);
    assert_eq!(call!(r, C_Finalize(std::ptr::null_mut())), 0);
    assert!(
        matches!(right, 0 | cryptoki_sys::CKR_PIN_LOCKED),
        "{right:#x}"
    );
    assert!(
        !s.log().contains("bob-secret-1"),
        "a secret reached the log"
    );
}

// ---------------------------------------------------------------- (d) rate limits

/// Refused uses (wrong mechanism, outside the pattern) do not eat the quota,
/// and the quota is exact within one process across sessions and a
/// logout/login, whatever the user.
#[test]
fn refused_uses_do_not_count_and_the_quota_holds_across_logins() {
    let _t = turn();
    let s = cast();
    add_user(&s, "erin", "signer", "hot-*", "erin-secret-1");
    admin(
        &s,
        &[
            "policy",
            "set",
            "hot-*",
            "--mechanisms",
            "ECDSA",
            "--asset-rate",
            "3/1h",
        ],
    );
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    login_rv(&session, UserType::User, "bob:bob-secret-1").unwrap();
    let hot = private_key(&session, "hot-1");
    for _ in 0..4 {
        assert_eq!(
            rv_of(session.sign(&Mechanism::EcdsaSha256, hot, b"data")),
            RvError::FunctionRejected
        );
    }
    assert!(session.sign(&Mechanism::Ecdsa, hot, &[1u8; 32]).is_ok());
    assert!(session.sign(&Mechanism::Ecdsa, hot, &[1u8; 32]).is_ok());
    session.logout().unwrap();
    login_rv(&session, UserType::User, "erin:erin-secret-1").unwrap();
    let other = ctx.open_rw_session(slot).unwrap();
    let mut signed = 0;
    for s in [&session, &other, &session, &other] {
        if s.sign(&Mechanism::Ecdsa, hot, &[2u8; 32]).is_ok() {
            signed += 1;
        }
    }
    session.logout().unwrap();
    drop(other);
    drop(session);
    ctx.finalize().unwrap();
    assert_eq!(signed, 1, "the third use of 3/1h, then nothing");
    assert_eq!(
        signatures_in_new_process(&s, "bob:bob-secret-1", "hot-1", 2),
        0
    );
}
