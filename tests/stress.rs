//! Concurrency under disturbance, in one process: six threads sign (a
//! secp256k1 and a P-256 asset, raw ECDSA and ECDSA-SHA256, single-part or
//! in parts with a pause, each thread with its own session, finding its key
//! by label every round or keeping the handle) while other threads open and
//! close sessions, log out and in, call C_CloseAllSessions, and the CLI
//! rotates both assets, for about 16 seconds. Nothing may crash or deadlock
//! (a watchdog aborts the process and says where it hung); a signing call
//! may fail only with the codes the disturbances explain; every signature
//! returned must verify under a version of its asset that was current at
//! some moment of the call, and have its audit record; every kind of
//! disturbance must really have happened; the chain must verify.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};

const RUN: Duration = Duration::from_secs(16);
const SIGNERS: u32 = 6;
const ASSETS: [(&str, &str); 2] = [("stress-k1", "secp256k1"), ("stress-p256", "p256")];

/// Why a signing call may fail while the others disturb it, and nothing
/// else: a logout (CKR_USER_NOT_LOGGED_IN; CKR_KEY_HANDLE_INVALID when the
/// private key became invisible between the login check and the lookup;
/// CKR_OPERATION_NOT_INITIALIZED for an operation in parts, which the logout
/// ended), C_CloseAllSessions (CKR_SESSION_HANDLE_INVALID,
/// CKR_SESSION_CLOSED), a rotation committed between C_SignInit and the
/// signature's commit (CKR_KEY_FUNCTION_NOT_PERMITTED).
const EXPLAINED: [RvError; 6] = [
    RvError::UserNotLoggedIn,
    RvError::SessionHandleInvalid,
    RvError::SessionClosed,
    RvError::KeyHandleInvalid,
    RvError::OperationNotInitialized,
    RvError::KeyFunctionNotPermitted,
];

/// How often each thing happened.
#[derive(Default)]
struct Counts {
    signed_in_parts: AtomicU64,
    sessions_churned: AtomicU64,
    logouts: AtomicU64,
    logins: AtomicU64,
    relogins_by_signers: AtomicU64,
    close_alls: AtomicU64,
    sessions_reopened: AtomicU64,
    /// The slowest signing call and CLI rotation, in milliseconds.
    slowest_sign_ms: AtomicU64,
    slowest_rotate_ms: AtomicU64,
}

struct World {
    ctx: Pkcs11,
    slot: Slot,
    stop: AtomicBool,
    counts: Counts,
    /// Signing failures by code, and anything unexplained.
    failures: Mutex<BTreeMap<String, u64>>,
    unexpected: Mutex<Vec<String>>,
    /// Per asset, when each successful rotation's CLI started and ended:
    /// rotation k made version k + 1 (nothing else rotates these assets).
    rotated: [Mutex<Vec<(Instant, Instant)>>; 2],
}

impl World {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    fn unexpected(&self, what: String) {
        lock(&self.unexpected).push(what);
    }

    fn failed(&self, rv: RvError) {
        *lock(&self.failures).entry(format!("{rv:?}")).or_default() += 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A signature a signer received.
struct Signed {
    asset: usize,
    /// What was hashed into the record (`input_sha256`): the data passed to C_Sign.
    data: Vec<u8>,
    /// What was signed: the data itself (CKM_ECDSA) or its SHA-256.
    digest: [u8; 32],
    sig: Vec<u8>,
    /// When C_SignInit was called and when C_Sign returned.
    during: (Instant, Instant),
}

fn pin() -> AuthPin {
    AuthPin::from(PIN)
}

/// A login on `session`: true when the application is logged in afterwards
/// (by us or by another thread); false when the session is gone.
fn log_in(world: &World, w: &Watched, session: &Session) -> bool {
    match w.step("C_Login", || session.login(UserType::User, Some(&pin()))) {
        Ok(()) => {
            world
                .counts
                .relogins_by_signers
                .fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(e) => match rv_code(&e) {
            Ok(RvError::UserAlreadyLoggedIn) => true,
            Ok(RvError::SessionHandleInvalid | RvError::SessionClosed) => false,
            other => {
                world.unexpected(format!("C_Login: {other:?}"));
                false
            }
        },
    }
}

fn signer(world: &World, w: &Watched, t: u32) -> Vec<Signed> {
    let asset = t as usize % 2;
    let (label, _) = ASSETS[asset];
    // Raw ECDSA of a 32-byte digest, or ECDSA-SHA256 of a message.
    let raw = !t.is_multiple_of(3);
    // Half find the key every round, half keep the handle they found.
    let find_each_round = t < SIGNERS / 2;
    let mut signed = Vec::new();
    let mut session: Option<Session> = None;
    let mut key: Option<ObjectHandle> = None;
    let mut i = 0u32;
    while world.running() {
        let Some(s) = &session else {
            match w.step("C_OpenSession", || world.ctx.open_rw_session(world.slot)) {
                Ok(s) => {
                    world
                        .counts
                        .sessions_reopened
                        .fetch_add(1, Ordering::Relaxed);
                    session = Some(s);
                }
                Err(e) => world.unexpected(format!("C_OpenSession: {e}")),
            }
            continue;
        };
        if key.is_none() || find_each_round {
            let template = [
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Class(ObjectClass::PRIVATE_KEY),
            ];
            match w.step("find by label", || s.find_objects(&template)) {
                Ok(found) if found.len() == 1 => key = Some(found[0]),
                // Private keys are invisible while logged out.
                Ok(found) if found.is_empty() => {
                    if !log_in(world, w, s) {
                        session = None;
                    }
                    continue;
                }
                Ok(found) => {
                    world.unexpected(format!("{label}: {} keys", found.len()));
                    continue;
                }
                Err(e) => {
                    match rv_code(&e) {
                        Ok(RvError::SessionHandleInvalid | RvError::SessionClosed) => {
                            session = None
                        }
                        other => world.unexpected(format!("find {label}: {other:?}")),
                    }
                    continue;
                }
            }
        }
        i += 1;
        let mut data = vec![t as u8; if raw { 32 } else { 45 }];
        data[..4].copy_from_slice(&t.to_be_bytes());
        data[4..8].copy_from_slice(&i.to_be_bytes());
        let (mech, digest) = if raw {
            (Mechanism::Ecdsa, data.as_slice().try_into().unwrap())
        } else {
            (Mechanism::EcdsaSha256, Sha256::digest(&data).into())
        };
        let k = key.expect("found above");
        let t0 = Instant::now();
        // Every other ECDSA-SHA256 signature in parts, pausing between
        // them: a logout, C_CloseAllSessions or rotation then lands inside
        // the operation more often.
        let in_parts = !raw && i.is_multiple_of(2);
        let result = if in_parts {
            w.step("C_SignInit/Update/Final", || {
                s.sign_init(&mech, k)?;
                s.sign_update(&data[..20])?;
                std::thread::sleep(Duration::from_millis(2));
                s.sign_update(&data[20..])?;
                s.sign_final()
            })
        } else {
            w.step("C_SignInit/C_Sign", || s.sign(&mech, k, &data))
        };
        world
            .counts
            .slowest_sign_ms
            .fetch_max(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
        match result {
            Ok(sig) => {
                if in_parts {
                    world.counts.signed_in_parts.fetch_add(1, Ordering::Relaxed);
                }
                signed.push(Signed {
                    asset,
                    data,
                    digest,
                    sig,
                    during: (t0, Instant::now()),
                });
            }
            Err(e) => {
                let rv = match rv_code(&e) {
                    Ok(rv) if EXPLAINED.contains(&rv) => rv,
                    other => {
                        world.unexpected(format!("sign with {label}: {other:?} ({e})"));
                        continue;
                    }
                };
                world.failed(rv);
                let session_lost = match rv {
                    RvError::SessionHandleInvalid | RvError::SessionClosed => true,
                    RvError::UserNotLoggedIn => !log_in(world, w, s),
                    RvError::KeyHandleInvalid => {
                        key = None;
                        false
                    }
                    _ => false,
                };
                if session_lost {
                    session = None;
                }
            }
        }
    }
    signed
}

/// Opens and closes sessions, looking around in each.
fn churner(world: &World, w: &Watched) {
    let mut n = 0u64;
    while world.running() {
        n += 1;
        let opened = w.step("C_OpenSession", || {
            if n.is_multiple_of(2) {
                world.ctx.open_rw_session(world.slot)
            } else {
                world.ctx.open_ro_session(world.slot)
            }
        });
        let s = match opened {
            Ok(s) => s,
            Err(e) => {
                world.unexpected(format!("churn C_OpenSession: {e}"));
                continue;
            }
        };
        let looked = w.step("C_GetSessionInfo/find", || {
            s.get_session_info()?;
            s.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)])
        });
        if let Err(e) = looked {
            match rv_code(&e) {
                Ok(RvError::SessionHandleInvalid | RvError::SessionClosed) => {}
                other => world.unexpected(format!("churn: {other:?}")),
            }
        }
        match w.step("C_CloseSession", || s.close()) {
            Ok(()) => {
                world
                    .counts
                    .sessions_churned
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => match rv_code(&e) {
                // Closed under us by C_CloseAllSessions.
                Ok(RvError::SessionHandleInvalid | RvError::SessionClosed) => {}
                other => world.unexpected(format!("churn C_CloseSession: {other:?}")),
            },
        }
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Logs the application out and in again, over and over.
fn login_flipper(world: &World, w: &Watched) {
    let mut session: Option<Session> = None;
    while world.running() {
        let Some(s) = &session else {
            session = w
                .step("C_OpenSession", || world.ctx.open_rw_session(world.slot))
                .map_err(|e| world.unexpected(format!("flipper C_OpenSession: {e}")))
                .ok();
            continue;
        };
        std::thread::sleep(Duration::from_millis(400));
        match w.step("C_Logout", || s.logout()) {
            Ok(()) => {
                world.counts.logouts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => match rv_code(&e) {
                Ok(RvError::UserNotLoggedIn) => {}
                Ok(RvError::SessionHandleInvalid | RvError::SessionClosed) => {
                    session = None;
                    continue;
                }
                other => world.unexpected(format!("C_Logout: {other:?}")),
            },
        }
        std::thread::sleep(Duration::from_millis(150));
        match w.step("C_Login", || s.login(UserType::User, Some(&pin()))) {
            Ok(()) => {
                world.counts.logins.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => match rv_code(&e) {
                // A signer was quicker.
                Ok(RvError::UserAlreadyLoggedIn) => {}
                Ok(RvError::SessionHandleInvalid | RvError::SessionClosed) => session = None,
                other => world.unexpected(format!("C_Login: {other:?}")),
            },
        }
    }
}

/// C_CloseAllSessions every couple of seconds (cryptoki has no wrapper:
/// through the provider's own function table).
fn closer(world: &World, w: &Watched) {
    let raw = raw();
    let slot = world.slot.id() as cryptoki_sys::CK_SLOT_ID;
    let mut next = Instant::now() + Duration::from_millis(1500);
    while world.running() {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        next += Duration::from_millis(2500);
        let rv = w.step("C_CloseAllSessions", || {
            call!(raw, C_CloseAllSessions(slot))
        });
        if rv == cryptoki_sys::CKR_OK {
            world.counts.close_alls.fetch_add(1, Ordering::Relaxed);
        } else {
            world.unexpected(format!("C_CloseAllSessions: 0x{rv:x}"));
        }
    }
}

/// `p11derive asset rotate` on each asset in turn.
fn rotator(world: &World, w: &Watched, s: &Setup) {
    let mut n = 0;
    let mut next = Instant::now() + Duration::from_millis(800);
    while world.running() {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        next = Instant::now() + Duration::from_millis(1200);
        let asset = n % 2;
        n += 1;
        let name = ASSETS[asset].0;
        let t0 = Instant::now();
        let out = w.step(format!("p11derive asset rotate {name}"), || {
            s.cli()
                .args(["asset", "rotate", name])
                .output()
                .expect("p11derive runs")
        });
        world
            .counts
            .slowest_rotate_ms
            .fetch_max(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
        if out.status.success() {
            lock(&world.rotated[asset]).push((t0, Instant::now()));
        } else {
            world.unexpected(format!(
                "asset rotate {name}: exit {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
}

/// The versions the signatures were made with, per asset. Panics on a
/// signature no version of its asset verifies, and on one made with a
/// version that was not current at any moment of its call: version v became
/// current during rotation v - 1 and stopped during rotation v.
fn versions_used(
    signed: &[Signed],
    keys: &[Vec<(u64, Vec<u8>)>],
    rotated: &[Vec<(Instant, Instant)>],
) -> [HashSet<u64>; 2] {
    let mut used: [HashSet<u64>; 2] = Default::default();
    let mut last = [0usize; 2];
    for sig in signed {
        let (name, kt) = ASSETS[sig.asset];
        let versions = &keys[sig.asset];
        let hint = last[sig.asset];
        let found = std::iter::once(hint)
            .chain((0..versions.len()).filter(|i| *i != hint))
            .find(|i| ecdsa_verifies(kt, &versions[*i].1, &sig.digest, &sig.sig))
            .unwrap_or_else(|| {
                panic!(
                    "a {name} signature verifies under none of its versions: data {}",
                    hex(&sig.data)
                )
            });
        last[sig.asset] = found;
        let v = versions[found].0 as usize;
        let rotations = &rotated[sig.asset];
        let (t0, t1) = sig.during;
        let not_yet = v >= 2 && t1 < rotations[v - 2].0;
        let no_longer = rotations.get(v - 1).is_some_and(|r| t0 > r.1);
        assert!(
            !not_yet && !no_longer,
            "{name} signed with version {v} {} (data {})",
            if not_yet {
                "before the rotation that made it began"
            } else {
                "after the rotation that replaced it had ended"
            },
            hex(&sig.data)
        );
        used[sig.asset].insert(v as u64);
    }
    used
}

#[test]
fn signing_survives_sessions_logins_close_all_and_rotations_racing_it() {
    let _turn = turn();
    let started = Instant::now();
    let watchdog = Watchdog::start(Duration::from_secs(30));
    let main = watchdog.watch("main");
    let s = Arc::new(setup(None));
    for (name, kt) in ASSETS {
        s.create_asset(name, kt);
    }
    let p = main.step("C_Initialize", || s.load());
    // The first login; from then on the flipper and the signers log in.
    let first = p.user_session();
    let world = Arc::new(World {
        ctx: p.ctx.clone(),
        slot: p.slot,
        stop: AtomicBool::new(false),
        counts: Counts::default(),
        failures: Mutex::new(BTreeMap::new()),
        unexpected: Mutex::new(Vec::new()),
        rotated: Default::default(),
    });

    let signers: Vec<_> = (0..SIGNERS)
        .map(|t| {
            let (world, w) = (world.clone(), watchdog.watch(format!("signer-{t}")));
            std::thread::spawn(move || signer(&world, &w, t))
        })
        .collect();
    type Disturber = fn(&World, &Watched, &Setup);
    let disturbers: [(&str, Disturber); 4] = [
        ("session churn", |world, w, _| churner(world, w)),
        ("login/logout", |world, w, _| login_flipper(world, w)),
        ("C_CloseAllSessions", |world, w, _| closer(world, w)),
        ("CLI rotate", rotator),
    ];
    let others: Vec<_> = disturbers
        .into_iter()
        .map(|(name, f)| {
            let (world, w, s) = (world.clone(), watchdog.watch(name), s.clone());
            std::thread::spawn(move || f(&world, &w, &s))
        })
        .collect();
    std::thread::sleep(RUN);
    world.stop.store(true, Ordering::SeqCst);
    let mut signed = Vec::new();
    for (t, h) in signers.into_iter().enumerate() {
        signed.extend(
            main.step(format!("joining signer-{t}"), || h.join())
                .unwrap_or_else(|_| panic!("signer {t} panicked")),
        );
    }
    for h in others {
        main.step("joining a disturber", || h.join())
            .expect("a disturbing thread panicked");
    }
    let unexpected = lock(&world.unexpected).clone();
    assert!(
        unexpected.is_empty(),
        "unexplained outcomes: {unexpected:#?}"
    );
    drop(first);
    let world = Arc::try_unwrap(world).ok().expect("every thread joined");
    drop(world.ctx);
    main.step("C_Finalize", || drop(p));

    // Every kind of disturbance happened, and signing went on through them.
    let rotated: Vec<Vec<(Instant, Instant)>> =
        world.rotated.iter().map(|r| lock(r).clone()).collect();
    let c = &world.counts;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let summary = format!(
        "signed {} ({} in parts), failures {:?}; sessions churned {}, signer sessions reopened {}, logouts {}, \
         logins {} (+{} by signers), C_CloseAllSessions {}, rotations {}/{}; slowest signing \
         call {} ms, slowest rotation {} ms",
        signed.len(),
        n(&c.signed_in_parts),
        lock(&world.failures),
        n(&c.sessions_churned),
        n(&c.sessions_reopened),
        n(&c.logouts),
        n(&c.logins),
        n(&c.relogins_by_signers),
        n(&c.close_alls),
        rotated[0].len(),
        rotated[1].len(),
        n(&c.slowest_sign_ms),
        n(&c.slowest_rotate_ms),
    );
    assert!(signed.len() >= 500, "too few signatures: {summary}");
    assert!(
        n(&c.signed_in_parts) >= 50,
        "too few signatures in parts: {summary}"
    );
    assert!(n(&c.sessions_churned) >= 100, "{summary}");
    assert!(
        n(&c.logouts) >= 5 && n(&c.logins) + n(&c.relogins_by_signers) >= 5,
        "{summary}"
    );
    assert!(n(&c.close_alls) >= 3, "{summary}");
    // Each C_CloseAllSessions took every signer's session.
    assert!(
        n(&c.sessions_reopened) > u64::from(SIGNERS) * 3,
        "{summary}"
    );
    assert!(
        rotated.iter().all(|r| r.len() >= 2),
        "each asset rotated at least twice: {summary}"
    );
    let failures = lock(&world.failures).clone();
    for rv in ["UserNotLoggedIn", "SessionHandleInvalid"] {
        assert!(
            failures.get(rv).is_some_and(|n| *n > 0),
            "no signing call met {rv}: the disturbances did not reach the signers: {summary}"
        );
    }

    // Every signature verifies under a version of its asset, and signers
    // followed the rotations.
    let mut keys = Vec::new();
    for (name, _) in ASSETS {
        let versions = version_keys(&s.asset_show(name));
        assert_eq!(
            versions.len(),
            1 + rotated[keys.len()].len(),
            "{name}: versions recorded vs. rotations made"
        );
        keys.push(versions);
    }
    // Each signer's signatures are in the order it made them, so the
    // version that verified the previous one is tried first; two threads.
    let half = signed.len() / 2;
    let used: Vec<[HashSet<u64>; 2]> = std::thread::scope(|scope| {
        let (keys, rotated) = (&keys, &rotated);
        let parts: Vec<_> = [&signed[..half], &signed[half..]]
            .into_iter()
            .map(|part| scope.spawn(move || versions_used(part, keys, rotated)))
            .collect();
        parts.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let used: [HashSet<u64>; 2] =
        [0, 1].map(|a| used.iter().flat_map(|u| u[a].iter().copied()).collect());
    for (a, versions) in used.iter().enumerate() {
        assert!(
            versions.len() >= 2,
            "{} signed only with versions {versions:?}: {summary}",
            ASSETS[a].0
        );
    }

    // The chain verifies, and every signature returned has its record.
    main.step("p11derive audit verify", || s.audit_verifies());
    let errors: Vec<String> = s
        .log()
        .lines()
        .filter(|l| l.contains("] ERROR: "))
        .map(str::to_string)
        .collect();
    assert!(errors.is_empty(), "the provider logged errors: {errors:#?}");
    assert!(!mentions_pin(&s.log()), "the PIN reached the log");
    let recorded = s.signed_inputs(&[]);
    for sig in &signed {
        assert!(
            recorded.contains(&sha256_hex(&sig.data)),
            "a signature was returned without its record: data {}",
            hex(&sig.data)
        );
    }
    drop(main);
    drop(watchdog);
    eprintln!("stress: {summary}; {:?} in all", started.elapsed());
}
