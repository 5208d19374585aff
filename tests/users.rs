//! Users mode through real clients: people log in as `name:secret` (pkcs11-tool, cryptoki), roles decide what they may do and see, policies are enforced at the commit (rate limits exact across processes), failed logins lock out alike for known and unknown names, and users and policies edited with SQL are refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

/// Three users and two assets made by an officer: the usual cast.
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

/// `policy set PATTERN --asset-rate RATE` by the admin.
fn set_rate(s: &Setup, pattern: &str, rate: &str) {
    ok_as(
        s,
        "admin",
        ADMIN,
        &["policy", "set", pattern, "--asset-rate", rate],
    );
}

/// `C_Login(CKU_USER, pin)`, which must succeed.
fn user_login(session: &cryptoki::session::Session, pin: &str) {
    session
        .login(UserType::User, Some(&AuthPin::from(pin)))
        .unwrap();
}

/// pkcs11-tool signs `msg` with the key labelled `label`, logged in with `pin`.
fn tool_sign(s: &Setup, pin: &str, label: &str, msg: &Path, sig: &Path) -> Output {
    tool(
        s,
        &[
            "--login",
            "--pin",
            pin,
            "--sign",
            "-m",
            "ECDSA-SHA256",
            "--label",
            label,
            "-i",
            msg.to_str().unwrap(),
            "-o",
            sig.to_str().unwrap(),
        ],
    )
}

/// pkcs11-tool -O's listing, one text per object.
fn objects(listing: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in listing.lines() {
        if !line.starts_with(' ') && line.contains("Object") {
            out.push(String::new());
        }
        if let Some(o) = out.last_mut() {
            o.push_str(line);
            o.push('\n');
        }
    }
    out
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn pkcs11_tool_signs_as_a_signer_and_roles_decide_the_rest() {
    let _t = turn();
    let s = cast();
    let msg = write(&s.dir, "msg.bin", b"pay 1 BTC to bob");
    let sig = s.dir.join("sig.bin");
    // bob, a signer limited to hot-*, signs with hot-1.
    let out = tool_sign(&s, "bob:bob-secret-1", "hot-1", &msg, &sig);
    assert!(out.status.success(), "bob signs: {}", output_text(&out));
    assert_eq!(std::fs::read(&sig).unwrap().len(), 64);
    // He does not even see cold-1's private key, nor sign with it.
    let out = tool(&s, &["--login", "--pin", "bob:bob-secret-1", "-O"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listed.contains("hot-1"), "{listed}");
    let private: Vec<String> = objects(&listed)
        .into_iter()
        .filter(|o| o.starts_with("Private Key Object"))
        .collect();
    assert!(
        private.iter().any(|o| o.contains("label:      hot-1\n")),
        "{listed}"
    );
    assert!(
        !private.iter().any(|o| o.contains("cold-1")),
        "bob sees cold-1's private key: {listed}"
    );
    let out = tool_sign(&s, "bob:bob-secret-1", "cold-1", &msg, &sig);
    // pkcs11-tool, not finding a private key labelled cold-1, takes the
    // one bob sees (hot-1): whatever it did, cold-1 signed nothing (the
    // log below has no signature by it).
    let _ = out;
    // carol, an officer, creates a key pair but cannot sign.
    let out = tool(
        &s,
        &[
            "--login",
            "--pin",
            "carol:carol-secret-1",
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "hot-2",
        ],
    );
    assert!(
        out.status.success(),
        "carol makes a key pair: {}",
        output_text(&out)
    );
    let out = tool_sign(&s, "carol:carol-secret-1", "hot-2", &msg, &sig);
    assert!(!out.status.success(), "carol, an officer, signed");
    // dave, an auditor, lists public objects and exports the log, never signs.
    let out = tool(&s, &["--login", "--pin", "dave:dave-secret-1", "-O"]);
    let listed = output_text(&out);
    assert!(listed.contains("Public Key Object"), "{listed}");
    assert!(!listed.contains("Private Key Object"), "{listed}");
    let out = tool_sign(&s, "dave:dave-secret-1", "hot-1", &msg, &sig);
    assert!(!out.status.success(), "dave, an auditor, signed");
    let export = ok_as(&s, "dave", "dave-secret-1", &["audit", "export"]);
    // Every record names its user; the refusals name their rule (carol's
    // signature; dave, seeing no private key, never got to ask).
    let lines: Vec<serde_json::Value> = export
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let signed: Vec<_> = lines.iter().filter(|r| r["event"] == "sign").collect();
    assert!(!signed.is_empty(), "{export}");
    for r in &signed {
        assert_eq!(r["actor"], "bob", "{export}");
        assert_eq!(r["asset"], "hot-1", "{export}");
    }
    let refused: Vec<_> = lines
        .iter()
        .filter(|r| r["event"] == "refused" && r["actor"] == "carol")
        .collect();
    assert!(
        refused
            .iter()
            .any(|r| r["detail"].as_str().unwrap_or("").contains("rule=role")),
        "{export}"
    );
    assert!(s.audit_verifies_as("dave", "dave-secret-1").contains("OK"));
}

impl SetupExt for Setup {
    fn audit_verifies_as(&self, user: &str, secret: &str) -> String {
        ok_as(self, user, secret, &["audit", "verify"])
    }
}

trait SetupExt {
    fn audit_verifies_as(&self, user: &str, secret: &str) -> String;
}

fn load(s: &Setup) -> (Pkcs11, cryptoki::slot::Slot) {
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let ctx = Pkcs11::new(module_path()).expect("load libp11derive.so");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = ctx.get_slots_with_token().expect("slots")[0];
    (ctx, slot)
}

/// One login attempt's outcome and how long it took.
fn attempt(ctx: &Pkcs11, slot: cryptoki::slot::Slot, pin: &str) -> (Result<(), RvError>, u128) {
    let session = ctx.open_rw_session(slot).unwrap();
    let t = std::time::Instant::now();
    let r = session
        .login(UserType::User, Some(&AuthPin::from(pin)))
        .map_err(|e| match e {
            cryptoki::error::Error::Pkcs11(rv, _) => rv,
            other => panic!("{other}"),
        });
    let ms = t.elapsed().as_millis();
    if r.is_ok() {
        session.logout().unwrap();
    }
    (r, ms)
}

#[test]
fn failed_logins_lock_out_known_and_unknown_names_alike_until_unlocked() {
    let _t = turn();
    let s = cast();
    let (ctx, slot) = load(&s);
    // A wrong secret and an unknown name: the same code, the same delay.
    let (wrong, _) = attempt(&ctx, slot, "bob:nope-nope-1");
    let (unknown, _) = attempt(&ctx, slot, "mallory:nope-nope-1");
    assert_eq!(wrong, Err(RvError::PinIncorrect));
    assert_eq!(unknown, Err(RvError::PinIncorrect));
    let (wrong2, t_wrong) = attempt(&ctx, slot, "bob:nope-nope-2");
    let (unknown2, t_unknown) = attempt(&ctx, slot, "mallory:nope-nope-2");
    assert_eq!(wrong2, unknown2);
    assert!(
        t_wrong >= 150 && t_unknown >= 150,
        "the second failure in a row waits (bob {t_wrong} ms, mallory {t_unknown} ms)"
    );
    assert!(
        t_wrong.abs_diff(t_unknown) < 150,
        "known and unknown names wait alike: bob {t_wrong} ms, mallory {t_unknown} ms"
    );
    // The third failure locks out (max_failures = 3): then even the right
    // secret is refused, for bob as for the unknown name.
    let _ = attempt(&ctx, slot, "bob:nope-nope-3");
    let _ = attempt(&ctx, slot, "mallory:nope-nope-3");
    assert_eq!(
        attempt(&ctx, slot, "bob:bob-secret-1").0,
        Err(RvError::PinLocked)
    );
    assert_eq!(
        attempt(&ctx, slot, "mallory:whatever-1").0,
        Err(RvError::PinLocked)
    );
    // Someone else still logs in.
    assert_eq!(attempt(&ctx, slot, "dave:dave-secret-1").0, Ok(()));
    // An admin lifts bob's lockout.
    ok_as(&s, "admin", ADMIN, &["user", "unlock", "bob"]);
    assert_eq!(attempt(&ctx, slot, "bob:bob-secret-1").0, Ok(()));
    // Without a colon, nothing is logged in and nothing secret is named.
    assert_eq!(
        attempt(&ctx, slot, "bob-secret-1").0,
        Err(RvError::PinIncorrect)
    );
    ctx.finalize().unwrap();
    let export = ok_as(&s, "dave", "dave-secret-1", &["audit", "export"]);
    assert!(!export.contains("bob-secret-1"), "a secret reached the log");
    assert!(
        !s.log().contains("bob-secret-1"),
        "a secret reached the log"
    );
    let lockouts = export
        .lines()
        .filter(|l| l.contains("\"lockout\"") && l.contains("locked out"))
        .count();
    assert!(lockouts >= 2, "{export}");
}

#[test]
fn c_set_pin_changes_the_users_own_secret_and_login_user_takes_the_name_apart() {
    let _t = turn();
    let s = cast();
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    user_login(&session, "bob:bob-secret-1");
    // Too short for [users] min_secret_len.
    assert_eq!(
        rv_of(session.set_pin(&AuthPin::from("bob-secret-1"), &AuthPin::from("short"))),
        RvError::PinLenRange
    );
    assert_eq!(
        rv_of(session.set_pin(
            &AuthPin::from("wrong-secret"),
            &AuthPin::from("bob-secret-2")
        )),
        RvError::PinIncorrect
    );
    session
        .set_pin(
            &AuthPin::from("bob-secret-1"),
            &AuthPin::from("bob-secret-2"),
        )
        .unwrap();
    session.logout().unwrap();
    assert_eq!(
        attempt(&ctx, slot, "bob:bob-secret-1").0,
        Err(RvError::PinIncorrect)
    );
    assert_eq!(attempt(&ctx, slot, "bob:bob-secret-2").0, Ok(()));
    // The token says logins are needed and how long a PIN may be.
    let info = ctx.get_token_info(slot).unwrap();
    assert!(info.login_required());
    assert!(info.user_pin_initialized());
    assert!(!info.user_pin_locked());
    assert_eq!(
        info.min_pin_length(),
        2 + 8,
        "a name, the colon and the shortest secret"
    );
    ctx.finalize().unwrap();
    // C_LoginUser (3.0) with the name apart, through the raw interface.
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
    let login_user = |pin: &[u8], name: &[u8]| {
        let (mut pin, mut name) = (pin.to_vec(), name.to_vec());
        call!(
            r,
            C_LoginUser(
                h,
                cryptoki_sys::CKU_USER,
                pin.as_mut_ptr(),
                pin.len() as _,
                name.as_mut_ptr(),
                name.len() as _
            )
        )
    };
    assert_eq!(login_user(b"bob-secret-2", b"bob"), 0, "C_LoginUser");
    assert_eq!(call!(r, C_Logout(h)), 0);
    assert_eq!(
        login_user(b"nope-nope-9", b"bob"),
        cryptoki_sys::CKR_PIN_INCORRECT
    );
    assert_eq!(call!(r, C_Finalize(std::ptr::null_mut())), 0);
}

#[test]
fn an_admin_logs_in_as_security_officer_and_uses_no_key() {
    let _t = turn();
    let s = cast();
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    // bob holds no admin role: refused as SO, like a wrong secret.
    assert_eq!(
        rv_of(session.login(UserType::So, Some(&AuthPin::from("bob:bob-secret-1")))),
        RvError::PinIncorrect
    );
    session
        .login(
            UserType::So,
            Some(&AuthPin::from(format!("admin:{ADMIN}").as_str())),
        )
        .unwrap();
    // No private object exists for the admin.
    let found = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    assert!(found.is_empty(), "{found:?}");
    session.logout().unwrap();
    ctx.finalize().unwrap();
}

#[test]
fn a_policy_refuses_out_of_hours_mechanisms_and_limits_exactly() {
    let _t = turn();
    let s = cast();
    // A window that excludes the current hour, computed now (no sleeping):
    // the hour after the next one, for one hour.
    let hour = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600
        % 24) as u32;
    let closed = format!("{:02}:00-{:02}:00", (hour + 2) % 24, (hour + 3) % 24);
    ok_as(
        &s,
        "admin",
        ADMIN,
        &["policy", "set", "cold-*", "--hours", &closed],
    );
    ok_as(
        &s,
        "admin",
        ADMIN,
        &[
            "policy",
            "set",
            "hot-*",
            "--mechanisms",
            "ECDSA",
            "--asset-rate",
            "5/1h",
        ],
    );
    add_user(&s, "erin", "signer", "*", "erin-secret-1");
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    user_login(&session, "erin:erin-secret-1");
    let cold = private_key(&session, "cold-1");
    let hot = private_key(&session, "hot-1");
    let digest = [7u8; 32];
    // Out of hours.
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, cold, &digest)),
        RvError::FunctionRejected
    );
    // A mechanism the policy does not allow.
    assert_eq!(
        rv_of(session.sign(&Mechanism::EcdsaSha256, hot, b"data")),
        RvError::FunctionRejected
    );
    // Exactly five signatures in the hour.
    let mut signed = 0;
    for _ in 0..8 {
        if session.sign(&Mechanism::Ecdsa, hot, &digest).is_ok() {
            signed += 1;
        }
    }
    assert_eq!(signed, 5);
    session.logout().unwrap();
    ctx.finalize().unwrap();
    let export = ok_as(&s, "dave", "dave-secret-1", &["audit", "export"]);
    let rules: Vec<&str> = ["rule=hours", "rule=mechanism", "rule=asset-rate"].to_vec();
    for r in rules {
        assert!(export.contains(r), "no refusal with {r}: {export}");
    }
    assert_eq!(
        export
            .lines()
            .filter(|l| l.contains("\"event\":\"sign\""))
            .count(),
        5
    );
}

/// Signs as fast as it can on `threads` threads in a child process of its
/// own (a separate PKCS#11 application), printing how many signatures it
/// got.
#[test]
#[ignore = "a child of rate_limits_are_exact_across_processes_and_threads"]
fn rate_limit_worker() {
    let config = std::env::var("P11DERIVE_WORKER_CONF").unwrap();
    let threads: usize = std::env::var("P11DERIVE_WORKER_THREADS")
        .unwrap()
        .parse()
        .unwrap();
    std::env::set_var("P11DERIVE_CONF", &config);
    let ctx = Pkcs11::new(module_path()).expect("load");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let login = ctx.open_rw_session(slot).unwrap();
    user_login(&login, "erin:erin-secret-1");
    let total = std::sync::atomic::AtomicUsize::new(0);
    let refused = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                let session = ctx.open_rw_session(slot).unwrap();
                let key = private_key(&session, "hot-1");
                // Until the limit refuses several in a row.
                let mut misses = 0;
                while misses < 20 {
                    match session.sign(&Mechanism::Ecdsa, key, &[1u8; 32]) {
                        Ok(_) => {
                            total.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Err(e) => {
                            assert_eq!(rv_code(&e).unwrap(), RvError::FunctionRejected, "{e}");
                            refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            misses += 1;
                        }
                    }
                }
            });
        }
    });
    println!(
        "SIGNED {} REFUSED {}",
        total.into_inner(),
        refused.into_inner()
    );
    ctx.finalize().unwrap();
}

/// `processes` worker processes of `threads` threads each, one per config
/// (cycled), signing with hot-1 as erin until the limit refuses them: the
/// signatures they got in all.
fn run_workers(configs: &[PathBuf], processes: usize, threads: usize) -> usize {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..processes)
        .map(|i| {
            Command::new(&exe)
                .args(["--ignored", "--exact", "rate_limit_worker", "--nocapture"])
                .env("P11DERIVE_WORKER_CONF", &configs[i % configs.len()])
                .env("P11DERIVE_WORKER_THREADS", threads.to_string())
                .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut signed = 0usize;
    for c in children {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "worker: {text}{}", stderr(&out));
        let n: usize = text
            .split("SIGNED ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("worker said: {text}"));
        signed += n;
    }
    signed
}

/// The limit of 500 in an hour lets exactly 500 signatures out of
/// `configs`' processes and exactly 500 sign records into the log.
fn exactly_500(s: &Setup, configs: &[PathBuf], processes: usize) {
    add_user(s, "erin", "signer", "*", "erin-secret-1");
    set_rate(s, "hot-*", "500/1h");
    let signed = run_workers(configs, processes, 8);
    assert_eq!(signed, 500, "signatures returned");
    let export = ok_as(s, "dave", "dave-secret-1", &["audit", "export"]);
    let records = export
        .lines()
        .filter(|l| l.contains("\"event\":\"sign\"") && l.contains("hot-1"))
        .count();
    assert_eq!(records, 500, "sign records");
    assert!(export.contains("rule=asset-rate"));
    s.audit_verifies_as("dave", "dave-secret-1");
}

#[test]
fn rate_limits_are_exact_across_processes_and_threads() {
    let _t = turn();
    let s = cast();
    exactly_500(&s, std::slice::from_ref(&s.config), 4);
}

#[test]
fn rate_limits_are_exact_across_hosts_on_postgresql() {
    let _t = turn();
    let url = pg_database(&pg_admin_url(), "p11derive_users_rate");
    let s = cast_on(Some(&url));
    let other = s.another_host("host-b");
    exactly_500(&s, &[s.config.clone(), other.config.clone()], 2);
}

#[test]
fn users_and_policies_edited_with_sql_are_refused() {
    let _t = turn();
    let s = cast();
    set_rate(&s, "hot-*", "1/1h");
    // A signer made admin-and-signer with SQL: the row no longer verifies.
    sqlite(
        &s.store,
        "UPDATE users SET roles = 'admin,signer', patterns = '*' WHERE name = 'bob'",
    );
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    assert!(session
        .login(UserType::User, Some(&AuthPin::from("bob:bob-secret-1")))
        .is_err());
    assert!(s.log().contains("user \"bob\""), "{}", s.log());
    drop(session);
    ctx.finalize().unwrap();
    let out = as_user(&s, "dave", "dave-secret-1", &["audit", "verify"]);
    assert!(!out.status.success());
    assert!(output_text(&out).contains("bob"), "{}", output_text(&out));
    // The policy deleted with SQL (to lift its limit): every use is
    // refused, naming it, and verify names it.
    let s = cast();
    set_rate(&s, "hot-*", "1/1h");
    sqlite(&s.store, "DELETE FROM policies");
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    user_login(&session, "bob:bob-secret-1");
    let hot = private_key(&session, "hot-1");
    assert!(session.sign(&Mechanism::Ecdsa, hot, &[3u8; 32]).is_err());
    assert!(s.log().contains("policy \"hot-*\""), "{}", s.log());
    session.logout().unwrap();
    ctx.finalize().unwrap();
    // A failed-login row reset with SQL (to get more guesses) is refused.
    let s = cast();
    let (ctx, slot) = load(&s);
    let _ = attempt(&ctx, slot, "bob:nope-nope-1");
    ctx.finalize().unwrap();
    sqlite(
        &s.store,
        "UPDATE logins SET failures = 0 WHERE name = 'bob'",
    );
    let (ctx, slot) = load(&s);
    assert!(attempt(&ctx, slot, "bob:bob-secret-1").0.is_err());
    ctx.finalize().unwrap();
}

#[test]
fn a_handle_found_by_another_user_does_not_work_for_a_user_outside_its_pattern() {
    let _t = turn();
    let s = cast();
    add_user(&s, "frank", "signer", "cold-*", "frank-secret-1");
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    user_login(&session, "frank:frank-secret-1");
    let cold = private_key(&session, "cold-1");
    assert!(session.sign(&Mechanism::Ecdsa, cold, &[5u8; 32]).is_ok());
    // A search begun by frank hands bob nothing private after the switch.
    let other = ctx.open_rw_session(slot).unwrap();
    session.logout().unwrap();
    user_login(&session, "bob:bob-secret-1");
    // bob (hot-*) holds frank's handle: it names nothing for him.
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, cold, &[5u8; 32])),
        RvError::KeyHandleInvalid
    );
    assert_eq!(
        rv_of(session.get_attributes(cold, &[cryptoki::object::AttributeType::Label])),
        RvError::ObjectHandleInvalid
    );
    assert!(find_one(&other, "cold-1", ObjectClass::PRIVATE_KEY).is_none());
    // An auditor may not use even a key of a pattern it holds.
    session.logout().unwrap();
    user_login(&session, "dave:dave-secret-1");
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, cold, &[5u8; 32])),
        RvError::KeyHandleInvalid
    );
    session.logout().unwrap();
    ctx.finalize().unwrap();
}

#[test]
fn a_pass_through_process_on_the_same_store_obeys_the_policies() {
    let _t = turn();
    let s = cast();
    set_rate(&s, "hot-*", "2/1h");
    // The same store and token, users mode off: the HSM PIN logs in.
    let plain = s.dir.join("plain.toml");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = text.replace("enabled = true", "enabled = false");
    std::fs::write(&plain, text).unwrap();
    std::env::set_var("P11DERIVE_CONF", &plain);
    let ctx = Pkcs11::new(module_path()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .unwrap();
    let hot = private_key(&session, "hot-1");
    let signed = (0..4)
        .filter(|_| session.sign(&Mechanism::Ecdsa, hot, &[9u8; 32]).is_ok())
        .count();
    assert_eq!(
        signed, 2,
        "the asset's rate limit binds pass-through processes too"
    );
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, hot, &[9u8; 32])),
        RvError::FunctionRejected
    );
    // Another asset, under no policy, signs freely.
    let cold = private_key(&session, "cold-1");
    assert!(session.sign(&Mechanism::Ecdsa, cold, &[9u8; 32]).is_ok());
    ctx.finalize().unwrap();
}

#[test]
fn an_officer_locked_by_an_admin_creates_nothing_more_in_an_open_session() {
    let _t = turn();
    let s = cast();
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    user_login(&session, "carol:carol-secret-1");
    let template = |label: &str| {
        (
            vec![
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::EcParams(vec![
                    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
                ]),
            ],
            vec![
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
    };
    let (public, private) = template("hot-7");
    session
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .unwrap();
    ok_as(&s, "admin", ADMIN, &["user", "lock", "carol"]);
    let (public, private) = template("hot-8");
    assert_eq!(
        rv_of(session.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)),
        RvError::ActionProhibited
    );
    ctx.finalize().unwrap();
}

#[test]
fn a_users_mode_store_migrated_to_postgresql_keeps_its_users_and_takes_new_ones() {
    let _t = turn();
    let s = cast();
    set_rate(&s, "hot-*", "100/1h");
    let url = pg_database(&pg_admin_url(), "p11derive_users_migrate");
    let from = format!("sqlite:{}", s.store.display());
    let out = cli(&s, &["store", "migrate", "--from", &from, "--to", &url]);
    assert!(out.status.success(), "{}", output_text(&out));
    s.use_pg(&url);
    // New users and policies get ids after the copied ones.
    add_user(&s, "frank", "signer", "cold-*", "frank-secret-1");
    set_rate(&s, "cold-*", "100/1h");
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    user_login(&session, "bob:bob-secret-1");
    let hot = private_key(&session, "hot-1");
    assert!(session.sign(&Mechanism::Ecdsa, hot, &[4u8; 32]).is_ok());
    session.logout().unwrap();
    user_login(&session, "frank:frank-secret-1");
    let cold = private_key(&session, "cold-1");
    assert!(session.sign(&Mechanism::Ecdsa, cold, &[4u8; 32]).is_ok());
    ctx.finalize().unwrap();
    s.audit_verifies_as("dave", "dave-secret-1");
}

#[test]
fn a_wrong_or_readable_service_credential_fails_c_initialize_and_says_why() {
    let _t = turn();
    let s = cast();
    use std::os::unix::fs::PermissionsExt;
    let pin_file = s.dir.join("service.pin");
    let initialize = || {
        std::env::set_var("P11DERIVE_CONF", &s.config);
        let ctx = Pkcs11::new(module_path()).unwrap();
        let r = rv_of(ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)));
        let _ = ctx.finalize();
        r
    };
    // Others may read it: refused, the log says how to fix it.
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let from = s.log().len();
    assert_eq!(initialize(), RvError::FunctionFailed);
    assert!(
        s.log_since(from).contains("chmod 600"),
        "{}",
        s.log_since(from)
    );
    // A PIN the backing token refuses: refused, named, never logged.
    std::fs::write(&pin_file, "999999\n").unwrap();
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let from = s.log().len();
    assert_eq!(initialize(), RvError::FunctionFailed);
    let said = s.log_since(from);
    assert!(said.contains("service credential"), "{said}");
    assert!(!said.contains("999999"), "{said}");
    // Put right, the provider starts and bob signs.
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    user_login(&session, "bob:bob-secret-1");
    let hot = private_key(&session, "hot-1");
    assert!(session.sign(&Mechanism::Ecdsa, hot, &[1u8; 32]).is_ok());
    ctx.finalize().unwrap();
}
