//! The derived-key cache: the backing HSM is asked once per key and TTL, not
//! once per signature; entries go with expiry, logout, a rotation and a
//! suspension of their asset. Counts come from the provider's own finalize
//! line.

mod common;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use common::*;

/// Keys derived through the HSM by the provider that just finalized.
fn derivations(s: &Setup) -> u64 {
    s.last_logged_count("keys derived through the backing HSM: ")
}

/// Adds `[cache]` with `setting` (`ttl_seconds = N` or `ttl_ms = N`).
fn with_ttl(s: &Setup, setting: &str) {
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, format!("{text}\n[cache]\n{setting}\n")).unwrap();
}

fn key(session: &Session) -> ObjectHandle {
    find_one(session, "c", ObjectClass::PRIVATE_KEY).unwrap()
}

fn sign(session: &Session, key: ObjectHandle, n: usize) {
    for i in 0..n {
        session
            .sign(&Mechanism::Ecdsa, key, &[i as u8; 32])
            .unwrap();
    }
}

fn created(ttl: Option<&str>) -> Setup {
    let s = setup(None);
    if let Some(setting) = ttl {
        with_ttl(&s, setting);
    }
    s.create_asset("c", "secp256k1");
    s
}

#[test]
fn fifty_signatures_derive_the_key_once() {
    let _turn = turn();
    let s = created(None);
    {
        let p = s.load();
        let session = p.user_session();
        sign(&session, key(&session), 50);
    }
    assert_eq!(derivations(&s), 1);
}

#[test]
fn an_expired_entry_is_derived_again() {
    use std::time::{Duration, Instant};
    let _turn = turn();
    // Two bursts of three signatures, one TTL apart: one derivation a burst.
    // A burst takes a few milliseconds; on a loaded machine one slow fsync
    // can stretch it past a short TTL (the entry expiring inside it), so a
    // run whose bursts took more than half the TTL proves nothing and is
    // made again, the last time with a TTL no burst comes near.
    let ttls = [250, 250, 2000].map(Duration::from_millis);
    for (attempt, ttl) in ttls.iter().copied().enumerate() {
        let s = created(Some(&format!("ttl_ms = {}", ttl.as_millis())));
        let mut bursts = Vec::new();
        {
            let p = s.load();
            let session = p.user_session();
            let k = key(&session);
            for burst in 0..2 {
                if burst > 0 {
                    // The entry dates from within the last burst: one TTL
                    // after it, the entry has expired.
                    std::thread::sleep(ttl);
                }
                let start = Instant::now();
                sign(&session, k, 3);
                bursts.push(start.elapsed());
            }
        }
        let conclusive = bursts.iter().all(|b| *b < ttl / 2);
        if !conclusive && attempt + 1 < ttls.len() {
            eprintln!("bursts took {bursts:?} against a TTL of {ttl:?}: measuring again");
            continue;
        }
        assert_eq!(
            derivations(&s),
            2,
            "one derivation a burst (bursts took {bursts:?}, TTL {ttl:?})"
        );
        return;
    }
}

#[test]
fn a_logout_wipes_the_cache() {
    let _turn = turn();
    let s = created(None);
    {
        let p = s.load();
        let session = p.user_session();
        let k = key(&session);
        sign(&session, k, 3);
        session.logout().unwrap();
        session
            .login(UserType::User, Some(&AuthPin::from(PIN)))
            .unwrap();
        sign(&session, k, 3);
    }
    assert_eq!(derivations(&s), 2);
}

#[test]
fn a_rotation_moves_the_alias_to_a_freshly_derived_key() {
    let _turn = turn();
    let s = created(None);
    {
        let p = s.load();
        let session = p.user_session();
        let k = key(&session);
        sign(&session, k, 3);
        let out = s.cli().args(["asset", "rotate", "c"]).output().unwrap();
        assert!(out.status.success());
        // The alias is version 2 now: its key is derived afresh.
        sign(&session, k, 3);
        let v1 = find_one(&session, "c@v1", ObjectClass::PRIVATE_KEY).unwrap();
        assert_eq!(
            rv_of(session.sign(&Mechanism::Ecdsa, v1, &[0; 32])),
            RvError::KeyFunctionNotPermitted,
            "v1 may not sign"
        );
    }
    assert_eq!(derivations(&s), 2);
}

#[test]
fn a_zero_ttl_derives_for_every_signature() {
    let _turn = turn();
    let s = created(Some("ttl_seconds = 0"));
    {
        let p = s.load();
        let session = p.user_session();
        sign(&session, key(&session), 5);
    }
    assert_eq!(derivations(&s), 5);
}

/// pkcs11-tool -L with RLIMIT_MEMLOCK 0: whether it succeeded, its output.
fn list_without_memlock(s: &Setup) -> (bool, String) {
    let out = list_with_memlock(s, 0);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn too_little_locked_memory_fails_closed_unless_degraded_mode_is_chosen() {
    let _turn = turn();
    let s = setup(None);
    let (ok, _) = list_without_memlock(&s);
    assert!(!ok, "C_Initialize succeeded without lockable memory");
    let log = s.log();
    assert!(
        log.contains("cannot lock 1024 KiB of memory for secrets"),
        "{log}"
    );
    assert!(
        log.contains("raise RLIMIT_MEMLOCK to at least 1280 KiB"),
        "{log}"
    );
    assert!(log.contains("CKR_HOST_MEMORY"), "{log}");
    // Degraded mode is an explicit choice, and it says so.
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("{text}\n[memory]\nallow_unlocked = true\n"),
    )
    .unwrap();
    let (ok, listed) = list_without_memlock(&s);
    assert!(ok && listed.contains("p11derive"), "{listed}");
    assert!(
        s.log()
            .contains("DEGRADED: memory for secrets cannot be locked"),
        "{}",
        s.log()
    );
}

#[test]
fn a_suspension_drops_the_cached_key() {
    let _turn = turn();
    let s = created(None);
    {
        let p = s.load();
        let session = p.user_session();
        let k = key(&session);
        sign(&session, k, 3);
        assert!(s
            .cli()
            .args(["asset", "suspend", "c"])
            .output()
            .unwrap()
            .status
            .success());
        assert_eq!(
            rv_of(session.sign(&Mechanism::Ecdsa, k, &[0; 32])),
            RvError::KeyFunctionNotPermitted,
            "suspended"
        );
        assert!(s
            .cli()
            .args(["asset", "resume", "c"])
            .output()
            .unwrap()
            .status
            .success());
        // The refusal dropped the cached key: after the resume it is derived again.
        sign(&session, k, 3);
    }
    assert_eq!(derivations(&s), 2);
}
