//! More of the users-mode attack: a lockout cut mid-chain, C_SetPIN guessing, stored objects, name timing, policies under running processes, wrap and unwrap.

use super::*;

// ---------------------------------------------------------------- more (a), (b), (c)

/// bob locked out, then another state change (a user added), then bob's
/// failed-login row and every one of its `lockout` records deleted: the
/// chain of state changes no longer links, so the lockout is not lifted.
#[test]
fn a_lockout_cut_from_the_middle_of_the_chain_is_not_lifted() {
    let _t = turn();
    let s = cast();
    let (ctx, slot) = load(&s);
    for i in 0..3 {
        assert!(attempt(&ctx, slot, &format!("bob:wrong-{i}-yy")).is_err());
    }
    ctx.finalize().unwrap();
    add_user(&s, "erin", "signer", "*", "erin-secret-1");
    sqlite(
        &s.store,
        "DELETE FROM logins WHERE name = 'bob'; DELETE FROM audit WHERE asset = 'login:bob'",
    );
    assert!(
        !logs_in_new_process(&s, "bob:bob-secret-1"),
        "bob's lockout lifted by deleting its records"
    );
    audit_verify_fails(&s);
}

/// C_SetPIN's old secret, guessed through a session someone else logged in
/// (an application's shared session): each wrong guess must count like a
/// failed login, so `max_failures` of them lock the name.
#[test]
fn guessing_the_current_secret_through_c_setpin_locks_out() {
    let _t = turn();
    let s = cast();
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    login_rv(&session, UserType::User, "bob:bob-secret-1").unwrap();
    let t = std::time::Instant::now();
    for i in 0..10 {
        assert!(session
            .set_pin(
                &AuthPin::from(format!("guess-{i}-zzzz").as_str()),
                &AuthPin::from("taken-over-1")
            )
            .is_err());
    }
    let took = t.elapsed().as_millis();
    // The tenth guess would have been the right one.
    let taken = session
        .set_pin(
            &AuthPin::from("bob-secret-1"),
            &AuthPin::from("taken-over-1"),
        )
        .is_ok();
    let _ = session.logout();
    drop(session);
    ctx.finalize().unwrap();
    // Was a hole: `C_SetPIN` compared the old secret with no count, delay
    // or lockout. Now it is checked as a login is.
    assert!(
        !taken,
        "10 wrong C_SetPIN guesses in {took} ms, then the right one changed bob's secret"
    );
}

/// Stored certificates and data objects are an officer's to create and
/// destroy: an auditor or a signer may not destroy one (nor create one).
#[test]
fn only_an_officer_destroys_stored_objects() {
    let _t = turn();
    let s = cast();
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    login_rv(&session, UserType::User, "carol:carol-secret-1").unwrap();
    let data = |label: &str| {
        vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Application(b"attack".to_vec()),
            Attribute::Value(b"trusted setting".to_vec()),
        ]
    };
    session.create_object(&data("note-1")).unwrap();
    session.logout().unwrap();
    let mut outcomes = Vec::new();
    for (who, pin) in [("dave", "dave:dave-secret-1"), ("bob", "bob:bob-secret-1")] {
        login_rv(&session, UserType::User, pin).unwrap();
        let created = session.create_object(&data(&format!("note-{who}"))).is_ok();
        let found = find_one(&session, "note-1", ObjectClass::DATA);
        let destroyed = found.is_some_and(|o| session.destroy_object(o).is_ok());
        outcomes.push((who, created, destroyed));
        session.logout().unwrap();
    }
    drop(session);
    ctx.finalize().unwrap();
    // Was a hole: destroying a stored object checked no role. Now it needs
    // what storing one needs (officer).
    assert!(
        outcomes.iter().all(|(_, c, d)| !c && !d),
        "(user, created, destroyed note-1): {outcomes:?}"
    );
}

/// A wrong secret of a known name and a made-up name take the same time
/// (first failures of fresh names, medians of five).
#[test]
fn known_and_unknown_names_fail_in_the_same_time() {
    let _t = turn();
    let s = cast();
    add_user(&s, "erin", "signer", "*", "erin-secret-1");
    add_user(&s, "fay", "signer", "*", "fay-secret-1");
    let (ctx, slot) = load(&s);
    let time = |pin: &str| {
        let t = std::time::Instant::now();
        assert_eq!(attempt(&ctx, slot, pin), Err(RvError::PinIncorrect));
        t.elapsed().as_micros()
    };
    let median = |mut v: Vec<u128>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for (k, u) in ["bob", "carol", "dave", "erin", "fay"]
        .iter()
        .zip(["zed", "yan", "xia", "wu", "vic"])
    {
        known.push(time(&format!("{k}:not-it-0000")));
        unknown.push(time(&format!("{u}:not-it-0000")));
    }
    ctx.finalize().unwrap();
    let (k, u) = (median(known.clone()), median(unknown.clone()));
    assert!(
        k.abs_diff(u) < 30_000,
        "known {k} µs vs unknown {u} µs ({known:?} / {unknown:?})"
    );
}

// ---------------------------------------------------------------- (d) policies under a running process

/// A running process that has signed (and cached "no policy") signs again
/// after an admin's `policy set` from another process, and after a DBA
/// deleted that policy's row: the new rule governs the very next use, on
/// SQLite and on PostgreSQL (where ungoverned uses take the lane path).
fn a_policy_set_under_a_running_process_governs_its_next_use(pg: Option<&str>) {
    let s = cast_on(pg);
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    login_rv(&session, UserType::User, "bob:bob-secret-1").unwrap();
    let hot = private_key(&session, "hot-1");
    for _ in 0..3 {
        session.sign(&Mechanism::Ecdsa, hot, &[1u8; 32]).unwrap();
    }
    admin(
        &s,
        &["policy", "set", "hot-*", "--mechanisms", "ECDSA-SHA256"],
    );
    let after_set = session.sign(&Mechanism::Ecdsa, hot, &[2u8; 32]).is_ok();
    let dba = "DELETE FROM policies";
    match pg {
        Some(url) => {
            let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
            c.batch_execute(dba).unwrap();
        }
        None => sqlite(&s.store, dba),
    }
    let after_delete = session.sign(&Mechanism::Ecdsa, hot, &[3u8; 32]).is_ok();
    let _ = session.logout();
    drop(session);
    ctx.finalize().unwrap();
    assert!(
        !after_set && !after_delete,
        "ECDSA after the policy allowed only ECDSA-SHA256: {after_set}; after its row was \
         deleted: {after_delete}"
    );
}

#[test]
fn a_policy_set_under_a_running_process_governs_its_next_use_on_sqlite() {
    let _t = turn();
    a_policy_set_under_a_running_process_governs_its_next_use(None);
}

#[test]
fn a_policy_set_under_a_running_host_governs_its_next_use_on_postgresql() {
    let _t = turn();
    let url = pg_database(&pg_admin_url(), "p11derive_attack_users_policy");
    a_policy_set_under_a_running_process_governs_its_next_use(Some(&url));
}

/// bob (hot-*) holding handles of cold-aes that carol found: wrapping with
/// it, wrapping it under hot-aes, unwrapping with it: all refused, and no
/// record shows cold-aes used.
#[test]
fn wrap_and_unwrap_do_not_reach_outside_the_pattern() {
    let _t = turn();
    let s = cast();
    for a in ["hot-aes", "cold-aes"] {
        ok_as(
            &s,
            "carol",
            "carol-secret-1",
            &["asset", "create", a, "--type", "aes256"],
        );
    }
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    login_rv(&session, UserType::User, "carol:carol-secret-1").unwrap();
    let cold = find_one(&session, "cold-aes", ObjectClass::SECRET_KEY).unwrap();
    session.logout().unwrap();
    login_rv(&session, UserType::User, "bob:bob-secret-1").unwrap();
    let hot = find_one(&session, "hot-aes", ObjectClass::SECRET_KEY).unwrap();
    let mine = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Extractable(true),
                Attribute::Encrypt(true),
            ],
        )
        .unwrap();
    let w1 = session.wrap_key(&Mechanism::AesKeyWrap, cold, mine).is_ok();
    let w2 = session.wrap_key(&Mechanism::AesKeyWrap, hot, cold).is_ok();
    let wrapped = session.wrap_key(&Mechanism::AesKeyWrap, hot, mine).unwrap();
    let u1 = session
        .unwrap_key(
            &Mechanism::AesKeyWrap,
            cold,
            &wrapped,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(cryptoki::object::KeyType::AES),
                Attribute::Token(false),
            ],
        )
        .is_ok();
    session.logout().unwrap();
    drop(session);
    ctx.finalize().unwrap();
    assert!(
        !w1 && !w2 && !u1,
        "wrap with cold {w1}, wrap cold {w2}, unwrap with cold {u1}"
    );
    let export = ok_as(&s, "dave", "dave-secret-1", &["audit", "export"]);
    for line in export.lines().filter(|l| l.contains("cold-aes")) {
        assert!(
            !(line.contains("\"rv\":0")
                && (line.contains("\"encrypt\"") || line.contains("\"decrypt\""))),
            "{line}"
        );
    }
}

/// Guesses from many threads of one process at once: the process's login
/// turn lets at most `max_failures` (3) be judged before the name locks.
#[test]
fn concurrent_guesses_from_many_threads_get_no_more_than_max_failures() {
    let _t = turn();
    let s = cast();
    let (ctx, slot) = load(&s);
    let judged = std::sync::atomic::AtomicUsize::new(0);
    let barrier = std::sync::Barrier::new(8);
    std::thread::scope(|sc| {
        for i in 0..8 {
            let (ctx, judged, barrier) = (&ctx, &judged, &barrier);
            sc.spawn(move || {
                let session = ctx.open_rw_session(slot).unwrap();
                barrier.wait();
                let pin = format!("bob:thread-{i}-xxxx");
                if login_rv(&session, UserType::User, &pin) == Err(RvError::PinIncorrect) {
                    judged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    let right = attempt(&ctx, slot, "bob:bob-secret-1");
    ctx.finalize().unwrap();
    let judged = judged.into_inner();
    assert!(
        judged <= 3 && right == Err(RvError::PinLocked),
        "{judged} of 8 concurrent guesses judged; then the right secret: {right:?}"
    );
}
