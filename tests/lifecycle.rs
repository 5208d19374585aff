//! The asset lifecycle (design §3): every transition from every state, objects
//! that follow the state at once, several processes signing while the CLI
//! changes the asset, and the state seen again after a restart.

mod common;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use p11derive::audit::{Event, Record};
use p11derive::backend::Backend;
use p11derive::config::Config;
use p11derive::derive::{AssetId, KeyType, Secret32};
use p11derive::lifecycle::{self, LifecycleError};
use p11derive::store::{AssetState, Store, StoreError, Transition};

use common::*;

fn audit(ak: &Secret32) -> lifecycle::Audit<'_> {
    lifecycle::Audit {
        ak,
        session: None,
        actor: None,
    }
}

fn base() -> Record {
    Record::new(Event::Transition, 0)
}

/// Applies `t` with the backing HSM as PRF (rotations derive public keys).
fn apply(
    backend: &Backend,
    store: &Store,
    ak: &Secret32,
    id: &AssetId,
    t: Transition,
) -> Result<(AssetState, u32, u32), LifecycleError> {
    let a = lifecycle::transition(Some(backend), store, &audit(ak), id, t)?;
    Ok((a.state, a.current, a.min_usable))
}

#[test]
fn every_transition_from_every_state() {
    use AssetState::*;
    use Transition::*;
    let _turn = turn();
    let s = setup(None);
    let config = Config::load(&s.config).unwrap();
    let store = Store::open(&s.store).unwrap();
    let backend = Backend::open(&config.backend, &config.source).unwrap();
    backend
        .login(cryptoki_sys::CKU_USER, PIN.as_bytes())
        .unwrap();
    let ak = p11derive::derive::audit_key(&backend).unwrap();

    // Each start state is reached from a fresh asset at version 1 by these steps.
    let starts: [(&str, &[Transition]); 5] = [
        ("active", &[Rotate { grace: false }]), // ACTIVE, current 2, min 1
        ("rotating", &[Rotate { grace: true }]), // ROTATING, current 2, min 1
        ("suspended", &[Rotate { grace: false }, Suspend]), // SUSPENDED (from ACTIVE)
        ("suspended-rot", &[Rotate { grace: true }, Suspend]), // SUSPENDED (from ROTATING)
        ("retired", &[Rotate { grace: false }, Retire]),
    ];
    // Expected result of each transition from each start: Some(state, current, min) or refused.
    type Want = Option<(AssetState, u32, u32)>;
    let transitions: [(Transition, [Want; 5]); 11] = [
        (
            Rotate { grace: false },
            [Some((Active, 3, 1)), None, None, None, None],
        ),
        (
            Rotate { grace: true },
            [Some((Rotating, 3, 1)), None, None, None, None],
        ),
        (Finish, [None, Some((Active, 2, 1)), None, None, None]),
        (Trim(1), [None, None, None, None, None]),
        (
            Trim(2),
            [
                Some((Active, 2, 2)),
                None,
                Some((Suspended, 2, 2)),
                None,
                None,
            ],
        ),
        (Trim(3), [None, None, None, None, None]),
        (
            Suspend,
            [
                Some((Suspended, 2, 1)),
                Some((Suspended, 2, 1)),
                None,
                None,
                None,
            ],
        ),
        (
            Resume,
            [
                None,
                None,
                Some((Active, 2, 1)),
                Some((Rotating, 2, 1)),
                None,
            ],
        ),
        (
            Retire,
            [
                Some((Retired, 2, 1)),
                Some((Retired, 2, 1)),
                Some((Retired, 2, 1)),
                Some((Retired, 2, 1)),
                None,
            ],
        ),
        // A second suspend, and finish outside a rotation.
        (
            Suspend,
            [
                Some((Suspended, 2, 1)),
                Some((Suspended, 2, 1)),
                None,
                None,
                None,
            ],
        ),
        (Finish, [None, Some((Active, 2, 1)), None, None, None]),
    ];
    let mut n = 0;
    for (t, wants) in transitions {
        for ((start, steps), want) in starts.iter().zip(wants) {
            n += 1;
            let id = AssetId::new(&format!("m{n}-{start}")).unwrap();
            lifecycle::create(&backend, &store, &audit(&ak), &id, KeyType::Secp256k1, None)
                .unwrap();
            for step in *steps {
                apply(&backend, &store, &ak, &id, *step).unwrap();
            }
            let before = store.asset_by_name(&id).unwrap().unwrap();
            let got = apply(&backend, &store, &ak, &id, t);
            match (want, got) {
                (Some(w), Ok(g)) => assert_eq!(g, w, "{start} --{}-->", t.name()),
                (None, Err(LifecycleError::Store(StoreError::Refused(m)))) => {
                    assert!(m.contains(id.as_str()), "{m}");
                    assert!(m.contains(before.state.name()), "{m}");
                    assert!(m.contains(&t.name()), "{m}");
                    let after = store.asset_by_name(&id).unwrap().unwrap();
                    assert_eq!(after, before, "a refused {} changed {start}", t.name());
                }
                (w, g) => panic!("{start} --{}--> wanted {w:?}, got {g:?}", t.name()),
            }
        }
    }
    // The counter never decreases, and a retired id can never be registered again.
    let id = AssetId::new("m1-active").unwrap();
    let again = lifecycle::create(&backend, &store, &audit(&ak), &id, KeyType::P256, None);
    assert!(matches!(
        again,
        Err(LifecycleError::Store(StoreError::Duplicate(_)))
    ));
    let retired = AssetId::new("m5-retired").unwrap();
    let again = lifecycle::create(
        &backend,
        &store,
        &audit(&ak),
        &retired,
        KeyType::Secp256k1,
        None,
    );
    assert!(
        matches!(again, Err(LifecycleError::Store(StoreError::Duplicate(_)))),
        "{again:?}"
    );
    // Each rotation recorded its version's public key, and old ones stay.
    let a = store
        .asset_by_name(&AssetId::new("m1-active").unwrap())
        .unwrap()
        .unwrap();
    let history = store.history(a.rowid).unwrap();
    assert_eq!(
        history.iter().map(|v| v.version).collect::<Vec<_>>(),
        [3, 2, 1]
    );
    assert!(history
        .iter()
        .all(|v| v.public_key.as_ref().is_some_and(|p| p.len() == 65)));
    backend.finalize();
}

#[test]
fn a_rotation_racing_a_resume_never_records_a_version_without_its_key() {
    let _turn = turn();
    let s = setup(None);
    let config = Config::load(&s.config).unwrap();
    let store = Store::open(&s.store).unwrap();
    let backend = Backend::open(&config.backend, &config.source).unwrap();
    backend
        .login(cryptoki_sys::CKU_USER, PIN.as_bytes())
        .unwrap();
    let ak = p11derive::derive::audit_key(&backend).unwrap();
    let id = AssetId::new("race").unwrap();
    lifecycle::create(&backend, &store, &audit(&ak), &id, KeyType::P256, None).unwrap();
    store
        .transition(&id, Transition::Suspend, None, &ak, base())
        .unwrap();
    // A rotation that read SUSPENDED (so derived nothing) commits after
    // another process resumed: the store must not take a key-less version.
    store
        .transition(&id, Transition::Resume, None, &ak, base())
        .unwrap();
    let raced = store.transition(
        &id,
        Transition::Rotate { grace: false },
        Some((2, None)),
        &ak,
        base(),
    );
    assert!(matches!(raced, Err(StoreError::Conflict(_))), "{raced:?}");
    assert_eq!(
        store.asset_by_name(&id).unwrap().unwrap().current,
        1,
        "nothing changed"
    );
    // The lifecycle layer derives and succeeds; every version has its key.
    lifecycle::transition(
        Some(&backend),
        &store,
        &audit(&ak),
        &id,
        Transition::Rotate { grace: false },
    )
    .unwrap();
    let a = store.asset_by_name(&id).unwrap().unwrap();
    assert_eq!(a.current, 2);
    assert!(store
        .history(a.rowid)
        .unwrap()
        .iter()
        .all(|v| v.public_key.is_some()));
    // A stale read (counter moved on) is a conflict too, not a wrong version.
    let stale = store.transition(
        &id,
        Transition::Rotate { grace: false },
        Some((2, Some(&[4u8; 65][..]))),
        &ak,
        base(),
    );
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    backend.finalize();
}

fn bool_attr(session: &Session, h: ObjectHandle, ty: AttributeType) -> bool {
    match session.get_attributes(h, &[ty]).unwrap().first() {
        Some(Attribute::Sign(b) | Attribute::Verify(b) | Attribute::Destroyable(b)) => *b,
        other => panic!("{other:?}"),
    }
}

fn ec_point(session: &Session, h: ObjectHandle) -> Vec<u8> {
    match session
        .get_attributes(h, &[AttributeType::EcPoint])
        .unwrap()
        .first()
    {
        Some(Attribute::EcPoint(p)) => p.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn objects_follow_the_state_at_once() {
    let _turn = turn();
    let s = setup(None);
    assert!(cli(&s, &["asset", "create", "obj", "--type", "secp256k1"])
        .status
        .success());
    let p = s.load();
    let session = p.user_session();
    let priv_v = |n: u32| find_one(&session, &format!("obj@v{n}"), ObjectClass::PRIVATE_KEY);
    let pub_v = |n: u32| find_one(&session, &format!("obj@v{n}"), ObjectClass::PUBLIC_KEY);
    let alias_priv = find_one(&session, "obj", ObjectClass::PRIVATE_KEY).unwrap();
    let alias_pub = find_one(&session, "obj", ObjectClass::PUBLIC_KEY).unwrap();
    let digest = [0x42u8; 32];
    let sig1 = session
        .sign(&Mechanism::Ecdsa, alias_priv, &digest)
        .unwrap();
    let point1 = ec_point(&session, alias_pub);
    let v1_priv = priv_v(1).unwrap();
    let v1_pub = pub_v(1).unwrap();

    // Rotation by another process: the alias is version 2 at the next call.
    assert!(cli(&s, &["asset", "rotate", "obj"]).status.success());
    assert_ne!(
        ec_point(&session, alias_pub),
        point1,
        "the alias now shows version 2"
    );
    let v2_pub = pub_v(2).unwrap();
    assert_eq!(ec_point(&session, alias_pub), ec_point(&session, v2_pub));
    let sig2 = session
        .sign(&Mechanism::Ecdsa, alias_priv, &digest)
        .unwrap();
    session
        .verify(&Mechanism::Ecdsa, v2_pub, &digest, &sig2)
        .unwrap();
    assert_eq!(
        rv_of(session.verify(&Mechanism::Ecdsa, v1_pub, &digest, &sig2)),
        RvError::SignatureInvalid
    );
    // Version 1 verifies but may not sign; the alias verifies both, newest first.
    assert!(!bool_attr(&session, v1_priv, AttributeType::Sign));
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, v1_priv, &digest)),
        RvError::KeyFunctionNotPermitted
    );
    session
        .verify(&Mechanism::Ecdsa, v1_pub, &digest, &sig1)
        .unwrap();
    session
        .verify(&Mechanism::Ecdsa, alias_pub, &digest, &sig1)
        .unwrap();
    session
        .verify(&Mechanism::Ecdsa, alias_pub, &digest, &sig2)
        .unwrap();

    // A grace window: the previous version signs until finish.
    assert!(cli(&s, &["asset", "rotate", "obj", "--grace"])
        .status
        .success());
    let v2_priv = priv_v(2).unwrap();
    assert!(bool_attr(&session, v2_priv, AttributeType::Sign));
    session.sign(&Mechanism::Ecdsa, v2_priv, &digest).unwrap();
    assert!(cli(&s, &["asset", "finish", "obj"]).status.success());
    assert!(!bool_attr(&session, v2_priv, AttributeType::Sign));
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, v2_priv, &digest)),
        RvError::KeyFunctionNotPermitted
    );

    // An operation begun before a rotation cannot complete with the old version.
    session
        .sign_init(&Mechanism::EcdsaSha256, alias_priv)
        .unwrap();
    session.sign_update(b"begun at version 3").unwrap();
    assert!(cli(&s, &["asset", "rotate", "obj"]).status.success());
    assert_eq!(
        rv_of(session.sign_final()),
        RvError::KeyFunctionNotPermitted
    );
    assert_eq!(
        rv_of(session.sign_final()),
        RvError::OperationNotInitialized,
        "the operation ended"
    );

    // Suspended: every operation is refused, the objects remain.
    assert!(cli(&s, &["asset", "suspend", "obj"]).status.success());
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, alias_priv, &digest)),
        RvError::KeyFunctionNotPermitted
    );
    assert_eq!(
        rv_of(session.verify(&Mechanism::Ecdsa, alias_pub, &digest, &sig2)),
        RvError::KeyFunctionNotPermitted
    );
    assert!(!bool_attr(&session, alias_priv, AttributeType::Sign));
    assert!(cli(&s, &["asset", "resume", "obj"]).status.success());
    session
        .sign(&Mechanism::Ecdsa, alias_priv, &digest)
        .unwrap();

    // Trimmed versions vanish; their handles are gone.
    assert!(cli(&s, &["asset", "trim", "obj", "3"]).status.success());
    assert!(priv_v(1).is_none() && pub_v(2).is_none() && priv_v(3).is_some());
    let attr = session.get_attributes(v1_pub, &[AttributeType::Label]);
    assert_eq!(rv_of(attr), RvError::ObjectHandleInvalid);
    assert_eq!(
        rv_of(session.verify(&Mechanism::Ecdsa, v1_pub, &digest, &sig1)),
        RvError::KeyHandleInvalid
    );
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, v2_priv, &digest)),
        RvError::KeyHandleInvalid
    );
    assert_eq!(
        rv_of(session.verify(&Mechanism::Ecdsa, alias_pub, &digest, &sig1)),
        RvError::SignatureInvalid
    );

    // C_DestroyObject is refused by default, and CKA_DESTROYABLE says so.
    assert!(!bool_attr(&session, alias_priv, AttributeType::Destroyable));
    assert_eq!(
        rv_of(session.destroy_object(alias_priv)),
        RvError::ActionProhibited
    );

    // Retired: the objects vanish.
    assert!(cli(&s, &["asset", "retire", "obj", "--yes"])
        .status
        .success());
    assert!(find_one(&session, "obj", ObjectClass::PRIVATE_KEY).is_none());
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, alias_priv, &digest)),
        RvError::KeyHandleInvalid
    );
    assert!(s.log().contains("may no longer sign"), "{}", s.log());
}

#[test]
fn destroying_an_alias_retires_only_where_the_config_allows() {
    let _turn = turn();
    let s = setup(None);
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("{text}\n[policy]\ndestroy_retires = true\n"),
    )
    .unwrap();
    assert!(cli(&s, &["asset", "create", "gone", "--type", "p256"])
        .status
        .success());
    let p = s.load();
    let session = p.user_session();
    let alias = find_one(&session, "gone", ObjectClass::PRIVATE_KEY).unwrap();
    let version = find_one(&session, "gone@v1", ObjectClass::PRIVATE_KEY).unwrap();
    assert!(bool_attr(&session, alias, AttributeType::Destroyable));
    assert!(!bool_attr(&session, version, AttributeType::Destroyable));
    assert_eq!(
        rv_of(session.destroy_object(version)),
        RvError::ActionProhibited
    );
    let ro = p.ctx.open_ro_session(p.slot).unwrap();
    assert_eq!(rv_of(ro.destroy_object(alias)), RvError::SessionReadOnly);
    session.destroy_object(alias).unwrap();
    assert!(find_one(&session, "gone", ObjectClass::PRIVATE_KEY).is_none());
    assert_eq!(s.asset_show("gone")["state"], "RETIRED");
    let again = cli(&s, &["asset", "create", "gone", "--type", "p256"]);
    assert_eq!(again.status.code(), Some(3), "{}", stderr(&again));
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A forked signer: its own C_Initialize, then signatures until the file
/// `stop` exists (or, should the parent die, until `deadline`), one line
/// each: `t0 t1 version digest ok sig` or `t0 t1 version digest rv`
/// (`version` 0: through the alias). Worker 0 signs with the alias in one
/// call; worker 1 with the alias, multi-part, pausing between the parts so
/// operations span the CLI's changes; worker 2 with every version object it
/// finds (`mp@v1`..), allowed to sign or not. An alias signature refused
/// creates the file `refused` (the parent removes it once the asset is
/// suspended, and waits for it again before resuming).
fn signer(
    worker: u8,
    stop: &std::path::Path,
    refused: &std::path::Path,
    deadline: u128,
) -> Result<String, String> {
    {
        let (ctx, session) = child_session()?;
        let alias = find_one(&session, "mp", ObjectClass::PRIVATE_KEY).ok_or("no alias")?;
        let mut lines = String::new();
        let mut i: u32 = 0;
        // Until the parent has run every CLI step (however slow the
        // machine), with a hard limit in case the parent died.
        while !stop.exists() && now_ns() < deadline {
            i += 1;
            let mut data = [worker; 32];
            data[..4].copy_from_slice(&i.to_be_bytes());
            let mut targets = vec![(0u32, alias)];
            if worker == 2 {
                targets = (1..=8u32)
                    .filter_map(|n| {
                        find_one(&session, &format!("mp@v{n}"), ObjectClass::PRIVATE_KEY)
                            .map(|h| (n, h))
                    })
                    .collect();
            }
            for (version, key) in targets {
                let t0 = now_ns();
                let (digest, r) = if worker == 1 {
                    use sha2::Digest;
                    let r = session
                        .sign_init(&Mechanism::EcdsaSha256, key)
                        .and_then(|()| session.sign_update(&data[..16]))
                        .and_then(|()| {
                            std::thread::sleep(std::time::Duration::from_millis(15));
                            session.sign_update(&data[16..])
                        })
                        .and_then(|()| session.sign_final());
                    (sha2::Sha256::digest(data).to_vec(), r)
                } else {
                    (data.to_vec(), session.sign(&Mechanism::Ecdsa, key, &data))
                };
                let t1 = now_ns();
                let outcome = match r {
                    Ok(sig) => format!("ok {}", hex(&sig)),
                    Err(e) => {
                        let rv = rv_of::<()>(Err(e));
                        if version == 0 && rv == RvError::KeyFunctionNotPermitted {
                            let _ = std::fs::write(refused, b"");
                        }
                        format!("{rv:?}")
                    }
                };
                lines.push_str(&format!("{t0} {t1} {version} {} {outcome}\n", hex(&digest)));
            }
        }
        ctx.finalize().map_err(|e| e.to_string())?;
        Ok(lines)
    }
}

/// Whether version `v` may sign in a state snapshot (the CLI's JSON).
fn allowed(state: &serde_json::Value, v: u64) -> bool {
    let (cur, min) = (
        state["current"].as_u64().unwrap(),
        state["min_usable"].as_u64().unwrap(),
    );
    match state["state"].as_str().unwrap() {
        "ACTIVE" => v == cur,
        "ROTATING" => v >= min && v + 1 >= cur && v <= cur,
        _ => false,
    }
}

#[test]
fn processes_sign_while_the_cli_changes_the_asset() {
    let _turn = turn();
    let s = setup(None);
    let created = cli(
        &s,
        &["asset", "create", "mp", "--type", "secp256k1", "--json"],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let initial: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let steps: [&[&str]; 8] = [
        &["rotate", "mp"],
        &["rotate", "mp", "--grace"],
        &["finish", "mp"],
        &["suspend", "mp"],
        &["resume", "mp"],
        &["trim", "mp", "3"],
        &["rotate", "mp", "--grace"],
        &["rotate", "mp"], // refused: still ROTATING (exit 3), the state stays
    ];
    let gap = std::time::Duration::from_millis(250);
    let stop = s.dir.join("signers-stop");
    let refused = s.dir.join("alias-refused");
    let deadline = now_ns() + std::time::Duration::from_secs(120).as_nanos();
    let mut children = Vec::new();
    for worker in 0..3u8 {
        let out = s.dir.join(format!("signer-{worker}.txt"));
        let pid = fork_child(&out, || signer(worker, &stop, &refused, deadline));
        children.push((pid, out));
    }
    // (earliest start, latest end) of each state: it may have been in effect
    // from just before its command ran until the next command finished.
    let mut timeline: Vec<(u128, u128, serde_json::Value)> = vec![(0, 0, initial)];
    for step in steps {
        std::thread::sleep(gap);
        if step[0] == "resume" {
            // The suspension lasts until a signer has seen an alias
            // signature refused: on a loaded machine one signature can
            // stall for longer than any fixed wait (one took 1.5 s).
            let limit = now_ns() + std::time::Duration::from_secs(60).as_nanos();
            while !refused.exists() && now_ns() < limit {
                std::thread::sleep(gap / 10);
            }
        }
        let mut args = vec!["asset"];
        args.extend_from_slice(step);
        args.push("--json");
        let before = now_ns();
        let out = cli(&s, &args);
        let after = now_ns();
        if out.status.success() {
            let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if step[0] == "suspend" {
                // Alias refusals before now were rotations caught mid-way
                // (a multi-part signature spanning one): wait for one
                // made by the suspension.
                let _ = std::fs::remove_file(&refused);
            }
            timeline.last_mut().unwrap().1 = after;
            timeline.push((before, 0, state));
        } else {
            assert_eq!(out.status.code(), Some(3), "{step:?}: {}", stderr(&out));
        }
    }
    timeline.last_mut().unwrap().1 = u128::MAX;
    // One more gap of signing in the final state, then stop the signers.
    std::thread::sleep(gap);
    std::fs::write(&stop, b"").unwrap();
    for (pid, out) in &children {
        reap(*pid, out, "signer");
    }

    let shown = s.asset_show("mp");
    let keys = version_keys(&shown);
    let (mut made, mut refused_while_suspended) = (0, 0);
    for (_, out) in &children {
        for line in std::fs::read_to_string(out).unwrap().lines() {
            let f: Vec<&str> = line.split(' ').collect();
            assert!(f[0] != "error", "{line}");
            let (t0, t1): (u128, u128) = (f[0].parse().unwrap(), f[1].parse().unwrap());
            let claimed: u64 = f[2].parse().unwrap();
            if f[4] != "ok" {
                // Refused by state, or a version object trimmed since it was found.
                assert!(
                    ["KeyFunctionNotPermitted", "KeyHandleInvalid"].contains(&f[4]),
                    "{line}"
                );
                // The alias (version 0 here) may sign in every state but
                // SUSPENDED: its refusals show the suspension was honoured.
                let suspended = timeline.iter().any(|(start, end, state)| {
                    *start <= t1 && *end >= t0 && state["state"] == "SUSPENDED"
                });
                if claimed == 0 && suspended {
                    refused_while_suspended += 1;
                }
                continue;
            }
            made += 1;
            let digest = unhex(f[3]);
            let sig = unhex(f[5]);
            let version = keys
                .iter()
                .find(|(_, point)| {
                    p11derive::mechanisms::ecdsa_verify(KeyType::Secp256k1, point, &digest, &sig)
                        .is_ok()
                })
                .map(|(v, _)| *v)
                .unwrap_or_else(|| panic!("a signature verifies under no version: {line}"));
            assert!(
                claimed == 0 || claimed == version,
                "object @v{claimed} signed with v{version}: {line}"
            );
            let ok = timeline
                .iter()
                .any(|(start, end, state)| *start <= t1 && *end >= t0 && allowed(state, version));
            assert!(
                ok,
                "version {version} signed in [{t0}, {t1}] when it was not allowed: {timeline:?}"
            );
        }
    }
    assert!(made > 100, "only {made} signatures");
    if refused_while_suspended == 0 {
        // Say what the signers did around the suspension, to tell a stall
        // from a suspension that was not honoured.
        let window: Vec<_> = timeline
            .iter()
            .filter(|(_, _, st)| st["state"] == "SUSPENDED")
            .map(|(a, b, _)| (*a, *b))
            .collect();
        let mut seen = String::new();
        for (_, out) in &children {
            for line in std::fs::read_to_string(out).unwrap().lines() {
                let f: Vec<&str> = line.split(' ').collect();
                let (t0, t1): (u128, u128) = (f[0].parse().unwrap(), f[1].parse().unwrap());
                if f[2] == "0" && window.iter().any(|(a, b)| t0 <= *b && t1 >= *a) {
                    seen.push_str(&format!("{t0} {t1} {}\n", f[4]));
                }
            }
        }
        panic!(
            "no alias signature was refused while the asset was suspended {window:?}; alias \
             operations overlapping it:\n{seen}"
        );
    }

    // A process started now sees the same state: version 4 current, 3 in its
    // grace window, 1 and 2 trimmed.
    let p = s.load();
    let session = p.user_session();
    let alias_pub = find_one(&session, "mp", ObjectClass::PUBLIC_KEY).unwrap();
    let v4 = keys.iter().find(|(v, _)| *v == 4).unwrap();
    let mut want = vec![0x04, 0x41];
    want.extend_from_slice(&v4.1);
    assert_eq!(ec_point(&session, alias_pub), want);
    assert_eq!(shown["current"], 4);
    for n in 1..=4u32 {
        let present = find_one(&session, &format!("mp@v{n}"), ObjectClass::PRIVATE_KEY);
        assert_eq!(present.is_some(), n >= 3, "mp@v{n}");
    }
    let v3 = find_one(&session, "mp@v3", ObjectClass::PRIVATE_KEY).unwrap();
    assert!(
        bool_attr(&session, v3, AttributeType::Sign),
        "v3 is in its grace window"
    );
    assert_eq!(shown["state"], "ROTATING");
}

#[test]
fn a_version_1_store_is_migrated_with_its_data() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        // The schema p11derive 0.1 wrote (store schema version 1).
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(&format!(
            "PRAGMA application_id = {};
             CREATE TABLE assets (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                 key_type TEXT NOT NULL, object_id BLOB NOT NULL UNIQUE,
                 current INTEGER NOT NULL CHECK (current >= 1),
                 min_usable INTEGER NOT NULL CHECK (min_usable >= 1 AND min_usable <= current),
                 state TEXT NOT NULL CHECK (state IN ('ACTIVE','ROTATING','SUSPENDED','RETIRED')),
                 created_at INTEGER NOT NULL);
             CREATE TABLE versions (asset INTEGER NOT NULL REFERENCES assets(id),
                 version INTEGER NOT NULL CHECK (version >= 1), public_key BLOB,
                 created_at INTEGER NOT NULL, PRIMARY KEY (asset, version));
             INSERT INTO assets VALUES (1, 'old-1', 'p256', x'0a0b', 2, 1, 'ROTATING', 1700000000);
             INSERT INTO versions VALUES (1, 1, x'04aa', 1700000000), (1, 2, x'04bb', 1700000001);
             PRAGMA user_version = 1;",
            p11derive::store::APPLICATION_ID
        ))
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    // Any audit key serves this store-level check.
    let ak = Secret32::copy_of(&[7u8; 32]).unwrap();
    let id = AssetId::new("old-1").unwrap();
    let a = store.asset_by_name(&id).unwrap().unwrap();
    assert_eq!(
        (a.state, a.current, a.min_usable),
        (AssetState::Rotating, 2, 1)
    );
    assert_eq!(a.versions.len(), 2);
    assert_eq!(a.object_id, vec![0x0a, 0x0b]);
    // The new column works: suspend remembers ROTATING and resume returns to it.
    store
        .transition(&id, Transition::Suspend, None, &ak, base())
        .unwrap();
    let back = store
        .transition(&id, Transition::Resume, None, &ak, base())
        .unwrap();
    assert_eq!(back.state, AssetState::Rotating);
    drop(store);
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i32 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, p11derive::store::SCHEMA_VERSION);
}

#[test]
fn a_read_only_store_is_refused_untouched() {
    use std::os::unix::fs::PermissionsExt;
    let _turn = turn();
    let s = setup(None);
    assert!(cli(&s, &["asset", "create", "ro", "--type", "p256"])
        .status
        .success());
    // Root may write anywhere, so the CLI runs as nobody against root's files.
    for d in [softhsm_dir(), s.dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The store is created 0600; readable but not writable for nobody here.
    std::fs::set_permissions(&s.store, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = std::fs::read(&s.store).unwrap();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(cli_path())
            .arg("--config")
            .arg(&s.config)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("setpriv (util-linux) runs")
    };
    // Reading works for a user who may only read; a change is refused.
    let out = as_nobody(&["asset", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ro"));
    let out = as_nobody(&["asset", "suspend", "ro"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let msg = stderr(&out);
    assert!(
        msg.contains("is read-only") && msg.contains("state.db"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(&s.store).unwrap(),
        before,
        "the read-only store was modified"
    );
    // Root could write a file without write bits anyway; it is refused all the same.
    std::fs::set_permissions(&s.store, std::fs::Permissions::from_mode(0o444)).unwrap();
    let out = cli(&s, &["asset", "suspend", "ro"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is read-only"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&s.store).unwrap(),
        before,
        "root modified a 0444 store"
    );
    std::fs::set_permissions(&s.store, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(s.asset_show("ro")["state"], "ACTIVE");
}
