//! The backing HSM misbehaving, through `libfaultshim.so` (tools/faultshim.rs:
//! a PKCS#11 module that forwards to SoftHSM and, on command, fails every
//! call, stalls, drops the sessions or logs out). The provider must answer
//! at once with `CKR_DEVICE_ERROR` (a call timeout, not a hang), stop
//! hammering a dead HSM (backoff), keep signing with cached keys until their
//! TTL, reopen sessions and log in again when the HSM returns, and leave a
//! store whose audit chain verifies.

mod common;

use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use cryptoki::session::Session;

use common::*;

const TIMEOUT_MS: u64 = 300;
const BACKOFF_MAX_MS: u64 = 400;

/// The shim `cargo test` built beside this test (target/<profile>/examples).
fn shim_path() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let so = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/libfaultshim.so");
    assert!(
        so.exists(),
        "{} not built (cargo test builds examples)",
        so.display()
    );
    so
}

/// The shim's controls, in the instance the provider loaded (dlopen of the
/// same file returns it).
struct Shim {
    lib: libloading::Library,
}

impl Shim {
    fn open() -> Shim {
        // SAFETY: the test's own shim module.
        let lib = unsafe { libloading::Library::new(shim_path()) }.unwrap();
        Shim { lib }
    }

    fn f0(&self, name: &[u8]) {
        // SAFETY: the shim exports these as extern "C" fn().
        unsafe { self.lib.get::<unsafe extern "C" fn()>(name).unwrap()() }
    }

    fn count(&self, name: &[u8]) -> u64 {
        // SAFETY: extern "C" fn() -> u64.
        unsafe { self.lib.get::<unsafe extern "C" fn() -> u64>(name).unwrap()() }
    }

    fn set(&self, name: &[u8], rv: u64) {
        // SAFETY: extern "C" fn(u64).
        unsafe { self.lib.get::<unsafe extern "C" fn(u64)>(name).unwrap()(rv) }
    }

    fn fail(&self, rv: u64) {
        self.set(b"faultshim_fail\0", rv)
    }

    fn stall(&self) {
        self.f0(b"faultshim_stall\0")
    }

    fn heal(&self) {
        self.f0(b"faultshim_heal\0")
    }

    fn calls(&self) -> u64 {
        self.count(b"faultshim_calls\0")
    }

    fn stalled(&self) -> u64 {
        self.count(b"faultshim_stalled\0")
    }

    fn fail_login(&self, rv: u64) {
        self.set(b"faultshim_fail_login\0", rv)
    }

    fn logins(&self) -> u64 {
        self.count(b"faultshim_logins\0")
    }

    /// Heals, and waits (at most 2 s) until no call is stuck in the shim.
    fn heal_and_unstick(&self) {
        self.heal();
        let t = Instant::now();
        while self.stalled() > 0 {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "stuck calls never ended"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn slow_reads(&self, ms: u64) {
        self.set(b"faultshim_slow_reads\0", ms)
    }

    fn overlaps(&self) -> u64 {
        self.count(b"faultshim_overlaps\0")
    }

    fn drop_sessions(&self) {
        assert_eq!(self.count(b"faultshim_drop_sessions\0"), 0);
    }

    fn logout(&self) {
        assert_eq!(self.count(b"faultshim_logout\0"), 0);
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.heal();
    }
}

/// A setup whose provider reaches SoftHSM through the shim, with short
/// timeouts, and the given assets (secp256k1).
fn shimmed(assets: &[&str], ttl_seconds: u64) -> Setup {
    let s = setup(None);
    for a in assets {
        s.create_asset(a, "secp256k1");
    }
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(SOFTHSM, shim_path().to_str().unwrap())
        .replace(
            "root_label = \"p11derive-root\"\n",
            &format!(
                "root_label = \"p11derive-root\"\ncall_timeout_ms = {TIMEOUT_MS}\n\
                 backoff_max_ms = {BACKOFF_MAX_MS}\n"
            ),
        );
    assert!(text.contains("libfaultshim.so") && text.contains("call_timeout_ms"));
    std::fs::write(
        &s.config,
        format!("{text}\n[cache]\nttl_seconds = {ttl_seconds}\n"),
    )
    .unwrap();
    s
}

fn sign(session: &Session, label: &str) -> cryptoki::error::Result<Vec<u8>> {
    session.sign(&Mechanism::Ecdsa, private_key(session, label), &[7u8; 32])
}

/// Signs and checks the signature with the provider's public key object.
fn sign_ok(session: &Session, label: &str) {
    let sig = sign(session, label).unwrap_or_else(|e| panic!("signing with {label}: {e}"));
    let public = find_one(session, label, ObjectClass::PUBLIC_KEY).unwrap();
    session
        .verify(&Mechanism::Ecdsa, public, &[7u8; 32], &sig)
        .unwrap_or_else(|e| panic!("signature by {label} does not verify: {e}"));
}

/// What every test here starts with: takes the turn, loads the provider
/// on a setup with `assets` (`shimmed`), logs in, and signs with the first
/// asset (its key now derived and cached). Bound in this order, they drop
/// in reverse: the session, the provider (C_Finalize), the shim (healed),
/// the turn.
fn start(
    assets: &[&str],
    ttl_seconds: u64,
) -> (MutexGuard<'static, ()>, Setup, Shim, Provider, Session) {
    let turn = turn();
    let s = shimmed(assets, ttl_seconds);
    let shim = Shim::open();
    let p = s.load();
    let session = p.user_session();
    sign_ok(&session, assets[0]);
    (turn, s, shim, p, session)
}

/// Waits until the backoff delay has surely passed.
fn after_backoff() {
    std::thread::sleep(Duration::from_millis(BACKOFF_MAX_MS + 150));
}

#[test]
fn a_dead_hsm_fails_at_once_with_backoff_while_cached_keys_sign_until_their_ttl() {
    // "warm" signs in start(): derived now, cached for 3 s.
    let (_turn, s, shim, p, session) = start(&["warm", "cold"], 3);
    let cached_at = Instant::now();

    shim.fail(0x30); // CKR_DEVICE_ERROR on every backing call
    let from = s.log().len();
    sign_ok(&session, "warm");

    let t = Instant::now();
    assert_eq!(rv_of(sign(&session, "cold")), RvError::DeviceError);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let log = s.log_since(from);
    assert!(log.contains("backing HSM"), "{log}");

    // Backoff: a burst of attempts reaches the HSM a few times at most.
    let calls = shim.calls();
    let t = Instant::now();
    let mut refused = 0;
    while t.elapsed() < Duration::from_millis(300) {
        assert_eq!(rv_of(sign(&session, "cold")), RvError::DeviceError);
        refused += 1;
    }
    let reached = shim.calls() - calls;
    assert!(refused >= 20, "only {refused} attempts in 300 ms");
    assert!(
        reached <= 6,
        "{reached} backing calls for {refused} attempts: no backoff"
    );
    assert!(
        s.log_since(from).contains("unavailable"),
        "{}",
        s.log_since(from)
    );

    // The cached key signs on until its TTL, then needs the HSM too.
    sign_ok(&session, "warm");
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(cached_at.elapsed()) + Duration::from_millis(300),
    );
    assert_eq!(rv_of(sign(&session, "warm")), RvError::DeviceError);

    // The HSM returns: after the backoff delay both keys sign again,
    // with no new login by the application.
    shim.heal();
    after_backoff();
    sign_ok(&session, "cold");
    sign_ok(&session, "warm");
    assert!(
        s.log_since(from).contains("answering again"),
        "{}",
        s.log_since(from)
    );
    drop((session, p)); // C_Finalize
    s.audit_verifies();
}

#[test]
fn a_hung_hsm_times_out_and_the_provider_recovers_when_it_answers() {
    let (_turn, s, shim, p, session) = start(&["warm", "cold", "later"], 300);

    shim.stall();
    let from = s.log().len();
    let t = Instant::now();
    assert_eq!(rv_of(sign(&session, "cold")), RvError::DeviceError);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(TIMEOUT_MS - 20)
            && waited < Duration::from_millis(TIMEOUT_MS + 700),
        "a stalled call returned after {waited:?} (timeout {TIMEOUT_MS} ms)"
    );
    assert!(shim.stalled() >= 1, "no call is stuck in the shim");
    let log = s.log_since(from);
    assert!(
        log.contains("did not answer") && log.contains("call_timeout_ms"),
        "{log}"
    );

    // While it hangs: no new caller waits for the timeout again.
    let t = Instant::now();
    assert_eq!(rv_of(sign(&session, "later")), RvError::DeviceError);
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    // The cached key keeps signing meanwhile.
    for _ in 0..20 {
        sign_ok(&session, "warm");
    }

    shim.heal_and_unstick();
    after_backoff();
    sign_ok(&session, "cold");
    sign_ok(&session, "later");
    drop((session, p)); // C_Finalize
    s.audit_verifies();
}

#[test]
fn lost_sessions_and_a_lost_login_are_recovered_without_the_application() {
    let (_turn, s, shim, p, session) = start(&["first", "second", "third"], 300);

    // The HSM drops every session (as a restart does): the login goes too.
    let from = s.log().len();
    shim.drop_sessions();
    sign_ok(&session, "second");
    let log = s.log_since(from);
    assert!(
        log.contains("logging in again") && log.contains("usable again"),
        "{log}"
    );

    // Someone logs the process out of the HSM.
    let from = s.log().len();
    shim.logout();
    sign_ok(&session, "third");
    let log = s.log_since(from);
    // SoftHSM answers for the root, now invisible, with
    // CKR_OBJECT_HANDLE_INVALID; the provider logs in again.
    assert!(
        log.contains("usable again (sessions reopened, logged in again)"),
        "{log}"
    );
    drop((session, p)); // C_Finalize
    s.audit_verifies();
}

#[test]
fn after_a_logout_the_provider_never_logs_in_by_itself_and_a_new_login_works() {
    let (_turn, s, shim, p, session) = start(&["first", "second"], 300);
    let second = private_key(&session, "second");
    session.logout().unwrap();
    let from = s.log().len();
    shim.drop_sessions();
    // Logged out: refused, and no login to the HSM with a PIN the provider
    // must no longer hold.
    let logins = shim.logins();
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, second, &[7u8; 32])),
        RvError::UserNotLoggedIn
    );
    assert_eq!(shim.logins(), logins, "a login behind the application");
    assert!(
        !s.log_since(from).contains("logging in again"),
        "{}",
        s.log_since(from)
    );
    // The application logs in again (the HSM's kept session is gone: the
    // provider opens another).
    let other = p.user_session();
    sign_ok(&other, "second");
    drop((other, session, p)); // C_Finalize
    s.audit_verifies();
}

/// Closing the last session logs the application out without a backing
/// HSM call when the anchor already holds every record the login made
/// (applications close sessions from exit handlers, when the backing module
/// may be gone; an owed anchor move is the one call that cannot wait, see
/// tests/attack.rs); the backing logout, left for the next login, must not
/// let that login through with a wrong PIN.
#[test]
fn closing_the_last_session_calls_no_backing_hsm_and_the_next_login_checks_the_pin() {
    let (_turn, s, shim, p, session) = start(&["first"], 300);
    let first = private_key(&session, "first");
    // Past the anchor interval, a signature's commit moves the anchor.
    std::thread::sleep(Duration::from_millis(1100));
    sign(&session, "first").expect("first signs");
    let calls = shim.calls();
    drop(session); // C_CloseSession: the last one, so the login ends
    assert_eq!(shim.calls(), calls, "C_CloseSession called the backing HSM");

    let other = p.session();
    assert_eq!(
        rv_of(other.sign(&Mechanism::Ecdsa, first, &[7u8; 32])),
        RvError::UserNotLoggedIn
    );
    let wrong = other.login(
        cryptoki::session::UserType::User,
        Some(&cryptoki::types::AuthPin::from("999999")),
    );
    assert_eq!(
        rv_of(wrong),
        RvError::PinIncorrect,
        "a wrong PIN was accepted"
    );
    other
        .login(
            cryptoki::session::UserType::User,
            Some(&cryptoki::types::AuthPin::from(PIN)),
        )
        .expect("C_Login");
    sign_ok(&other, "first");
    drop((other, p)); // C_Finalize
    s.audit_verifies();
}

#[test]
fn a_pin_the_hsm_refuses_when_logging_in_again_is_tried_once_and_forgotten() {
    let (_turn, s, shim, p, session) = start(&["first", "second", "third"], 300);
    // The HSM restarts with another PIN (the login is refused from now on).
    shim.fail_login(0xa0); // CKR_PIN_INCORRECT
    shim.drop_sessions();
    let from = s.log().len();
    let logins = shim.logins();
    assert_eq!(rv_of(sign(&session, "second")), RvError::DeviceError);
    assert_eq!(
        shim.logins() - logins,
        1,
        "the refused PIN was tried more than once"
    );
    let log = s.log_since(from);
    assert!(
        log.contains("recovery failed") && log.contains("CKR_PIN_INCORRECT"),
        "{log}"
    );
    // Even once the HSM would accept it again, the forgotten PIN is not
    // tried: the application must log in.
    shim.heal();
    after_backoff();
    let logins = shim.logins();
    // The application's login stands; the backing HSM's is gone and cannot
    // be made again without the PIN: a device error.
    assert_eq!(rv_of(sign(&session, "third")), RvError::DeviceError);
    assert_eq!(shim.logins(), logins, "a forgotten PIN was used");
    drop((session, p)); // C_Finalize
    s.audit_verifies();
}

/// Regression (a heap corruption, then SIGSEGV, seen in CI): a commit
/// begins reading the anchor on a worker, then is refused before it needs
/// it (a state change edited under the running process). The read must
/// not be left running into `C_Finalize`: the module must never be
/// finalized while a call is inside it, and the refusal is still given.
#[test]
fn c_finalize_never_overlaps_a_call_a_refused_commit_began() {
    let (_turn, s, shim, p, session) = start(&["a"], 300);
    s.create_asset("b", "secp256k1");
    sqlite(
        &s.store,
        "UPDATE audit SET detail = detail || ' edited' WHERE event = 'create' AND asset = 'b';",
    );
    shim.slow_reads(400);
    let from = s.log().len();
    assert!(
        sign(&session, "a").is_err(),
        "signed over an edited state change"
    );
    let overlaps = shim.overlaps();
    drop((session, p)); // C_Finalize at once
    shim.heal();
    assert_eq!(
        shim.overlaps() - overlaps,
        0,
        "C_Finalize reached the backing module while a call was inside it; log: {}",
        s.log_since(from)
    );
}

/// `C_Finalize` while a backing call hangs: the provider waits the call
/// timeout, then leaves the module as it is (never finalized under the
/// call) and says so; once the HSM answers, the next `C_Initialize` uses
/// the module as it finds it and signs.
#[test]
fn c_finalize_leaves_a_hung_module_unfinalized_and_the_next_initialize_signs() {
    let (_turn, s, shim, p, session) = start(&["warm", "cold"], 300);
    shim.stall();
    assert_eq!(rv_of(sign(&session, "cold")), RvError::DeviceError);
    let from = s.log().len();
    let t = Instant::now();
    drop((session, p)); // C_Finalize under the hung call
    let waited = t.elapsed();
    let log = s.log_since(from);
    assert!(
        log.contains("still running") && log.contains("not finalized"),
        "{log}"
    );
    assert!(
        waited < Duration::from_millis(3 * TIMEOUT_MS + 1000),
        "C_Finalize took {waited:?}"
    );
    shim.heal_and_unstick();
    assert_eq!(
        shim.overlaps(),
        0,
        "C_Finalize reached the module under a call"
    );
    let p = s.load();
    let session = p.user_session();
    sign_ok(&session, "warm");
    sign_ok(&session, "cold");
    drop((session, p));
    s.audit_verifies();
}
