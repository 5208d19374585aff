//! The users-mode attack by role: a signer reaching cold-1 and an officer's actions, an officer signing, another's secret, an admin as SO, and admins' changes under a logged-in user.

use super::*;

// ---------------------------------------------------------------- (c) roles

/// A signer limited to hot-* reaching for cold-1 and for an officer's
/// actions; an officer signing; a user changing another's secret; an admin
/// as SO using a key handle a signer found.
#[test]
fn roles_do_not_reach_one_another() {
    let _t = turn();
    let s = cast();
    let (ctx, slot) = load(&s);
    let session = ctx.open_rw_session(slot).unwrap();
    // carol (officer, *) sees hot-1's private key but may not use it.
    login_rv(&session, UserType::User, "carol:carol-secret-1").unwrap();
    let hot = private_key(&session, "hot-1");
    assert!(
        session.sign(&Mechanism::Ecdsa, hot, &[1u8; 32]).is_err(),
        "officer signed"
    );
    let cold_pub = find_one(&session, "cold-1", ObjectClass::PUBLIC_KEY).unwrap();
    let cold_id = match &session
        .get_attributes(cold_pub, &[AttributeType::Id])
        .unwrap()[0]
    {
        Attribute::Id(id) => id.clone(),
        other => panic!("{other:?}"),
    };
    session.logout().unwrap();

    login_rv(&session, UserType::User, "bob:bob-secret-1").unwrap();
    // Every template: no private object of cold-1 for bob.
    let templates: Vec<Vec<Attribute>> = vec![
        vec![],
        vec![Attribute::Class(ObjectClass::PRIVATE_KEY)],
        vec![Attribute::Private(true)],
        vec![Attribute::Id(cold_id.clone())],
        vec![Attribute::Label(b"cold-1".to_vec())],
        vec![Attribute::Sign(true)],
    ];
    for t in &templates {
        for o in session.find_objects(t).unwrap() {
            let attrs = session
                .get_attributes(o, &[AttributeType::Class, AttributeType::Id])
                .unwrap();
            let private = attrs.contains(&Attribute::Class(ObjectClass::PRIVATE_KEY));
            let cold = attrs.contains(&Attribute::Id(cold_id.clone()));
            assert!(
                !(private && cold),
                "bob found cold-1's private key with {t:?}"
            );
            if cold {
                assert!(session.sign(&Mechanism::Ecdsa, o, &[1u8; 32]).is_err());
            }
        }
    }
    // Handles by number: none of the first 200 signs for cold-1 (checked in
    // the log below).
    let hot = private_key(&session, "hot-1");
    // An officer's actions.
    let token_pair = session.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::Label(b"hot-9".to_vec()),
            Attribute::EcParams(vec![
                0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
            ]),
        ],
        &[
            Attribute::Token(true),
            Attribute::Label(b"hot-9".to_vec()),
            Attribute::Sign(true),
        ],
    );
    assert!(token_pair.is_err(), "a signer created a token key pair");
    assert!(
        session.destroy_object(hot).is_err(),
        "a signer retired hot-1"
    );
    assert!(
        session
            .copy_object(
                hot,
                &[Attribute::Label(b"cold-2".to_vec()), Attribute::Token(true)]
            )
            .is_err(),
        "a signer copied hot-1"
    );
    assert!(
        session
            .update_attributes(hot, &[Attribute::Label(b"cold-1".to_vec())])
            .is_err(),
        "a signer relabelled hot-1"
    );
    assert!(session.sign(&Mechanism::Ecdsa, hot, &[2u8; 32]).is_ok());
    // Another user's secret through C_SetPIN.
    assert!(session
        .set_pin(
            &AuthPin::from("dave:dave-secret-1"),
            &AuthPin::from("owned-by-bob-1")
        )
        .is_err());
    session.logout().unwrap();
    assert_eq!(
        attempt(&ctx, slot, "dave:owned-by-bob-1"),
        Err(RvError::PinIncorrect)
    );
    assert_eq!(attempt(&ctx, slot, "dave:dave-secret-1"), Ok(()));
    // An admin as SO with the handle bob found.
    login_rv(&session, UserType::So, &format!("admin:{ADMIN}")).unwrap();
    assert!(
        session.sign(&Mechanism::Ecdsa, hot, &[3u8; 32]).is_err(),
        "SO signed"
    );
    session.logout().unwrap();
    // An auditor with it.
    login_rv(&session, UserType::User, "dave:dave-secret-1").unwrap();
    assert!(
        session.sign(&Mechanism::Ecdsa, hot, &[4u8; 32]).is_err(),
        "auditor signed"
    );
    session.logout().unwrap();
    drop(session);
    ctx.finalize().unwrap();
    // Raw handle numbers as bob.
    let (r, h) = raw_session(&s);
    // carol (who sees every private key) lists them, so handles exist.
    let mut pin = b"carol:carol-secret-1".to_vec();
    assert_eq!(
        call!(
            r,
            C_Login(h, cryptoki_sys::CKU_USER, pin.as_mut_ptr(), pin.len() as _)
        ),
        0
    );
    let mut none: Vec<cryptoki_sys::CK_ATTRIBUTE> = Vec::new();
    assert_eq!(call!(r, C_FindObjectsInit(h, none.as_mut_ptr(), 0)), 0);
    let mut found = [0 as cryptoki_sys::CK_OBJECT_HANDLE; 64];
    let mut count = 0;
    assert_eq!(
        call!(r, C_FindObjects(h, found.as_mut_ptr(), 64, &mut count)),
        0
    );
    assert_eq!(call!(r, C_FindObjectsFinal(h)), 0);
    assert_eq!(call!(r, C_Logout(h)), 0);
    let mut pin = b"bob:bob-secret-1".to_vec();
    assert_eq!(
        call!(
            r,
            C_Login(h, cryptoki_sys::CKU_USER, pin.as_mut_ptr(), pin.len() as _)
        ),
        0
    );
    for obj in 1..200 {
        let mut mech = cryptoki_sys::CK_MECHANISM {
            mechanism: cryptoki_sys::CKM_ECDSA,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        if call!(r, C_SignInit(h, &mut mech, obj)) == 0 {
            let mut data = [5u8; 32];
            let mut sig = [0u8; 128];
            let mut len = sig.len() as cryptoki_sys::CK_ULONG;
            let _ = call!(
                r,
                C_Sign(h, data.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut len)
            );
        }
    }
    assert_eq!(call!(r, C_Finalize(std::ptr::null_mut())), 0);
    let export = ok_as(&s, "dave", "dave-secret-1", &["audit", "export"]);
    for line in export.lines().filter(|l| l.contains("\"event\":\"sign\"")) {
        assert!(line.contains("hot-1") && line.contains("\"bob\""), "{line}");
    }
}

/// Signs once as bob, then lets `change` run as the admin, then tries to
/// sign again in the same (still logged-in) process: whether it signed.
fn signs_after_admin_change(s: &Setup, change: &[&str]) -> bool {
    let (ctx, slot) = load(s);
    let session = ctx.open_rw_session(slot).unwrap();
    login_rv(&session, UserType::User, "bob:bob-secret-1").unwrap();
    let hot = private_key(&session, "hot-1");
    session.sign(&Mechanism::Ecdsa, hot, &[1u8; 32]).unwrap();
    admin(s, change);
    let signed = session.sign(&Mechanism::Ecdsa, hot, &[2u8; 32]).is_ok();
    let _ = session.logout();
    drop(session);
    ctx.finalize().unwrap();
    signed
}

/// An admin's `user lock` must stop a user already logged in.
#[test]
fn a_user_locked_by_an_admin_stops_signing_in_a_running_process() {
    let _t = turn();
    let s = cast();
    // Was a hole: the caller was read once at C_Login. Now the user's row is
    // read again when the ledger moves, and every use's commit checks it.
    assert!(
        !signs_after_admin_change(&s, &["user", "lock", "bob"]),
        "bob, locked by an admin, signed again in his running session"
    );
}

/// An admin's `user roles` narrowing must apply to a user already logged in.
#[test]
fn a_users_narrowed_patterns_apply_in_a_running_process() {
    let _t = turn();
    let s = cast();
    // Was a hole, as above: bob's patterns moved from hot-* to cold-*.
    assert!(
        !signs_after_admin_change(
            &s,
            &[
                "user",
                "roles",
                "bob",
                "--roles",
                "signer",
                "--patterns",
                "cold-*"
            ]
        ),
        "bob, moved to cold-* by an admin, signed hot-1 again in his running session"
    );
}
