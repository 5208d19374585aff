//! The token as a client uses it through the `cryptoki` crate, with SoftHSM as
//! the backing HSM: login and sessions, object visibility and handles, signing
//! and verification, and every kind of bad input — each with its return code,
//! its log line where a person must act, and an unchanged store.

mod common;

use std::process::Command;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};

use common::*;

const SECP256K1: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp224r1 (1.3.132.0.33): no curve of p11derive.
const SECP224R1: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x21];

fn generate(
    session: &Session,
    public: &[Attribute],
    private: &[Attribute],
) -> cryptoki::error::Result<(ObjectHandle, ObjectHandle)> {
    session.generate_key_pair(&Mechanism::EccKeyPairGen, public, private)
}

fn templates(label: &str, params: &[u8]) -> (Vec<Attribute>, Vec<Attribute>) {
    (
        vec![
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::EcParams(params.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ],
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ],
    )
}

fn asset_count(s: &Setup) -> usize {
    let out = s.cli().args(["asset", "list", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().len()
}

#[test]
fn bad_key_pair_templates_are_refused_and_change_nothing() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let (public, private) = templates("kept", &SECP256K1);
    generate(&session, &public, &private).unwrap();
    assert_eq!(asset_count(&s), 1);

    let no_label = |t: &[Attribute]| -> Vec<Attribute> {
        t.iter()
            .filter(|a| a.attribute_type() != AttributeType::Label)
            .cloned()
            .collect()
    };
    let cases: Vec<(&str, Vec<Attribute>, Vec<Attribute>, RvError)> = vec![
        (
            "existing label",
            public.clone(),
            private.clone(),
            RvError::AttributeValueInvalid,
        ),
        {
            let (mut a, b) = templates("bad label!", &SECP256K1);
            a.retain(|x| x.attribute_type() != AttributeType::Label);
            ("invalid label", a, b, RvError::AttributeValueInvalid)
        },
        {
            let (a, b) = templates("p224", &SECP224R1);
            ("unsupported curve", a, b, RvError::CurveNotSupported)
        },
        {
            let (mut a, b) = templates("no-curve", &SECP256K1);
            a.retain(|x| x.attribute_type() != AttributeType::EcParams);
            ("no curve", a, b, RvError::TemplateIncomplete)
        },
        {
            let (a, mut b) = templates("extractable", &SECP256K1);
            b.push(Attribute::Extractable(true));
            (
                "extractable private key",
                a,
                b,
                RvError::TemplateInconsistent,
            )
        },
        {
            let (a, mut b) = templates("supplied-key", &SECP256K1);
            b.push(Attribute::Value(vec![1; 32]));
            ("key material supplied", a, b, RvError::AttributeReadOnly)
        },
        {
            let (a, mut b) = templates("per-use-login", &SECP256K1);
            b.push(Attribute::AlwaysAuthenticate(true));
            (
                "CKA_ALWAYS_AUTHENTICATE=true",
                a,
                b,
                RvError::TemplateInconsistent,
            )
        },
        {
            let (a, mut b) = templates("narrow-mechs", &SECP256K1);
            b.push(Attribute::AllowedMechanisms(vec![
                cryptoki::mechanism::MechanismType::ECDSA,
            ]));
            (
                "narrower CKA_ALLOWED_MECHANISMS",
                a,
                b,
                RvError::TemplateInconsistent,
            )
        },
        {
            let (a, mut b) = templates("label-mismatch", &SECP256K1);
            b.retain(|x| x.attribute_type() != AttributeType::Label);
            b.push(Attribute::Label(b"other".to_vec()));
            ("labels differ", a, b, RvError::TemplateInconsistent)
        },
        {
            let (a, mut b) = templates("dup-id", &P256);
            b.push(Attribute::Id(
                session
                    .get_attributes(
                        session
                            .find_objects(&[Attribute::Label(b"kept".to_vec())])
                            .unwrap()[0],
                        &[AttributeType::Id],
                    )
                    .unwrap()
                    .iter()
                    .find_map(|x| {
                        if let Attribute::Id(v) = x {
                            Some(v.clone())
                        } else {
                            None
                        }
                    })
                    .unwrap(),
            ));
            (
                "CKA_ID of another asset",
                a,
                b,
                RvError::AttributeValueInvalid,
            )
        },
    ];
    for (what, a, b, want) in cases {
        assert_eq!(rv_of(generate(&session, &a, &b)), want, "{what}");
    }
    let rv = rv_of(session.generate_key_pair(&Mechanism::Sha256, &public, &private));
    assert_eq!(rv, RvError::MechanismInvalid, "unknown mechanism");
    assert_eq!(asset_count(&s), 1, "refused requests changed the store");
    let log = s.log();
    assert!(log.contains("\"kept\" already exists"), "{log}");
    assert!(log.contains("not a supported curve"), "{log}");

    // Without a label, the new asset is named "key-" and 16 hex digits
    // from the backing HSM's RNG, which CKA_LABEL reads back.
    let (pu, pr) = generate(&session, &no_label(&public), &no_label(&private)).unwrap();
    let label = |h| match &session.get_attributes(h, &[AttributeType::Label]).unwrap()[..] {
        [Attribute::Label(l)] => String::from_utf8(l.clone()).unwrap(),
        other => panic!("{other:?}"),
    };
    let name = label(pu);
    assert_eq!(label(pr), name);
    assert!(
        name.len() == 20
            && name.starts_with("key-")
            && name[4..].bytes().all(|c| c.is_ascii_hexdigit()),
        "{name}"
    );
    assert!(s.log().contains("no CKA_LABEL given"));
    assert_eq!(asset_count(&s), 2);
    s.asset_show(&name);

    // Read-only sessions and public sessions cannot create token objects.
    let ro = p.ctx.open_ro_session(p.slot).unwrap();
    let (a, b) = templates("from-ro", &P256);
    assert_eq!(rv_of(generate(&ro, &a, &b)), RvError::SessionReadOnly);
    session.logout().unwrap();
    assert_eq!(rv_of(generate(&session, &a, &b)), RvError::UserNotLoggedIn);
    assert_eq!(asset_count(&s), 2);
}

#[test]
fn login_passes_through_and_controls_visibility() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.session();
    let wrong = session.login(UserType::User, Some(&AuthPin::from("000000")));
    assert_eq!(rv_of(wrong), RvError::PinIncorrect);
    let log = s.log();
    assert!(
        log.contains("login to backing token") && log.contains("CKR_PIN_INCORRECT"),
        "{log}"
    );
    assert!(!log.contains("000000"), "a PIN reached the log");
    assert_eq!(rv_of(session.logout()), RvError::UserNotLoggedIn);
    session
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .unwrap();
    assert_eq!(
        rv_of(session.login(UserType::User, Some(&AuthPin::from(PIN)))),
        RvError::UserAlreadyLoggedIn
    );
    let (public, private) = templates("visible", &P256);
    let (pub_h, priv_h) = generate(&session, &public, &private).unwrap();

    // Handles stay the same across sessions; private objects need the login.
    let other = p.session();
    let found = other
        .find_objects(&[Attribute::Label(b"visible".to_vec())])
        .unwrap();
    assert_eq!(found.len(), 2);
    assert!(found.contains(&pub_h) && found.contains(&priv_h));
    let sig = other
        .sign(&Mechanism::EcdsaSha256, priv_h, b"across sessions")
        .unwrap();
    session.logout().unwrap();
    let public_only = other
        .find_objects(&[Attribute::Label(b"visible".to_vec())])
        .unwrap();
    assert_eq!(
        public_only,
        vec![pub_h],
        "only the public key is visible without login"
    );
    let classes = other
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    assert!(classes.is_empty());
    // Verification needs no login; signing does.
    other
        .verify(&Mechanism::EcdsaSha256, pub_h, b"across sessions", &sig)
        .unwrap();
    assert_eq!(
        rv_of(other.sign(&Mechanism::EcdsaSha256, priv_h, b"x")),
        RvError::UserNotLoggedIn
    );

    // Closing the last session logs out.
    other
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .unwrap();
    drop(other);
    drop(session);
    let fresh = p.session();
    assert_eq!(
        rv_of(fresh.sign(&Mechanism::EcdsaSha256, priv_h, b"x")),
        RvError::UserNotLoggedIn
    );

    // The security officer logs in to the backing token too, but not over a
    // read-only session.
    let ro = p.ctx.open_ro_session(p.slot).unwrap();
    assert_eq!(
        rv_of(fresh.login(UserType::So, Some(&AuthPin::from(SO_PIN)))),
        RvError::SessionReadOnlyExists
    );
    drop(ro);
    fresh
        .login(UserType::So, Some(&AuthPin::from(SO_PIN)))
        .unwrap();
    assert_eq!(
        rv_of(fresh.login(UserType::User, Some(&AuthPin::from(PIN)))),
        RvError::UserAnotherAlreadyLoggedIn
    );
    fresh.logout().unwrap();
}

#[test]
fn signing_and_verification_mechanisms() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    for (label, params) in [("k1", &SECP256K1[..]), ("r1", &P256[..])] {
        let (public, private) = templates(label, params);
        let (pub_h, priv_h) = generate(&session, &public, &private).unwrap();
        let message = b"multi-part message, split in three parts".as_slice();
        for mech in [
            Mechanism::EcdsaSha1,
            Mechanism::EcdsaSha224,
            Mechanism::EcdsaSha256,
            Mechanism::EcdsaSha384,
            Mechanism::EcdsaSha512,
        ] {
            let whole = session.sign(&mech, priv_h, message).unwrap();
            session.sign_init(&mech, priv_h).unwrap();
            for part in message.chunks(15) {
                session.sign_update(part).unwrap();
            }
            let parts = session.sign_final().unwrap();
            assert_eq!(
                whole, parts,
                "{label} {mech:?}: deterministic, single = multi-part"
            );
            session.verify(&mech, pub_h, message, &whole).unwrap();
            session.verify_init(&mech, pub_h).unwrap();
            for part in message.chunks(7) {
                session.verify_update(part).unwrap();
            }
            session.verify_final(&whole).unwrap();
            let mut bad = whole.clone();
            bad[10] ^= 1;
            assert_eq!(
                rv_of(session.verify(&mech, pub_h, message, &bad)),
                RvError::SignatureInvalid
            );
            assert_eq!(
                rv_of(session.verify(&mech, pub_h, message, &whole[..63])),
                RvError::SignatureLenRange
            );
        }
        // Raw ECDSA takes a digest of any length (X9.62 truncation / padding).
        for len in [1usize, 20, 32, 48, 64] {
            let digest = vec![0x5a; len];
            let sig = session.sign(&Mechanism::Ecdsa, priv_h, &digest).unwrap();
            session
                .verify(&Mechanism::Ecdsa, pub_h, &digest, &sig)
                .unwrap();
        }
        // A longer digest is truncated to the order's 256 bits.
        let long: Vec<u8> = (0..64).collect();
        let sig = session.sign(&Mechanism::Ecdsa, priv_h, &long).unwrap();
        session
            .verify(&Mechanism::Ecdsa, pub_h, &long[..32], &sig)
            .unwrap();
        // Keys do what their class allows.
        assert_eq!(
            rv_of(session.sign(&Mechanism::Ecdsa, pub_h, &[1; 32])),
            RvError::KeyFunctionNotPermitted
        );
        assert_eq!(
            rv_of(session.verify(&Mechanism::Ecdsa, priv_h, &[1; 32], &[0; 64])),
            RvError::KeyFunctionNotPermitted
        );
    }
    let digest = session.digest(&Mechanism::Sha256, b"abc").unwrap();
    assert_eq!(digest, Sha256::digest(b"abc").to_vec());
}

/// Loads the provider in a client process whose stderr we can read.
fn pkcs11_tool_list(env: &[(&str, &std::path::Path)]) -> (bool, String) {
    let mut cmd = Command::new("pkcs11-tool");
    cmd.arg("--module").arg(module_path()).arg("-L");
    cmd.env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("pkcs11-tool (opensc) runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn configuration_problems_name_the_file_key_and_fix() {
    let _turn = turn();
    let s = setup(None);
    let bad = |name: &str, text: String| {
        let path = s.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let good = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("[log]\n", "[unused]\n");
    let good = good
        .lines()
        .filter(|l| !l.starts_with("file =") && !l.starts_with("level =") && *l != "[unused]")
        .collect::<Vec<_>>()
        .join("\n");
    let cases = [
        (
            "missing config file",
            s.dir.join("absent.toml"),
            vec!["absent.toml", "P11DERIVE_CONF"],
        ),
        (
            "unknown key",
            bad("typo.toml", good.replace("root_label", "root_lable")),
            vec!["typo.toml", "root_lable"],
        ),
        (
            "not TOML",
            bad("garbage.toml", "[backend\nmodule = ".into()),
            vec!["garbage.toml", "invalid"],
        ),
        (
            "module that does not load",
            bad(
                "module.toml",
                good.replace("/usr/lib/softhsm/libsofthsm2.so", "/nonexistent/libhsm.so"),
            ),
            vec!["/nonexistent/libhsm.so", "[backend] module"],
        ),
        (
            "backing token not found",
            bad("token.toml", good.replace(&s.token_label, "no-such-token")),
            vec!["\"no-such-token\" not found", "token_label"],
        ),
        (
            "missing store",
            bad("store.toml", good.replace("state.db", "missing.db")),
            vec!["missing.db", "p11derive init"],
        ),
    ];
    for (what, path, needles) in cases {
        let (ok, stderr) = pkcs11_tool_list(&[("P11DERIVE_CONF", &path)]);
        assert!(!ok, "{what}: pkcs11-tool -L succeeded");
        assert!(stderr.contains("CKR_FUNCTION_FAILED"), "{what}: {stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{what}: stderr lacks {n:?}: {stderr}");
        }
    }
    let (ok, stderr) = pkcs11_tool_list(&[("P11DERIVE_CONF", &s.config)]);
    assert!(ok, "the good config works: {stderr}");
}

#[test]
fn a_missing_root_is_reported_at_login() {
    let _turn = turn();
    let s = setup_with(None, false);
    // A store, but no root on the backing token.
    p11derive::store::Store::create(&s.store).unwrap();
    let p = s.load();
    let session = p.session();
    let rv = rv_of(session.login(UserType::User, Some(&AuthPin::from(PIN))));
    assert_eq!(rv, RvError::DeviceError);
    let log = s.log();
    assert!(
        log.contains("no root secret labelled \"p11derive-root\""),
        "{log}"
    );
    assert!(log.contains("p11derive init"), "{log}");
}

#[test]
fn foreign_newer_and_corrupt_stores_are_refused_untouched() {
    let _turn = turn();
    let s = setup(None);
    let original = std::fs::read(&s.store).unwrap();
    type Spoil = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Spoil, &str)> = vec![
        (
            "foreign",
            Box::new(|p| {
                let c = rusqlite::Connection::open(p).unwrap();
                c.execute_batch("CREATE TABLE notes (x TEXT);").unwrap();
            }),
            "is not a p11derive store",
        ),
        (
            "newer",
            Box::new(|p| {
                let c = rusqlite::Connection::open(p).unwrap();
                c.execute_batch("PRAGMA user_version = 99;").unwrap();
            }),
            "newer than this p11derive",
        ),
        (
            "corrupt",
            Box::new(|p| std::fs::write(p, vec![0x42u8; 8192]).unwrap()),
            "corrupt",
        ),
    ];
    for (what, make, needle) in cases {
        let _ = std::fs::remove_file(&s.store);
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(s.store.with_extension(format!("db{ext}")));
        }
        if what == "newer" {
            std::fs::write(&s.store, &original).unwrap();
        }
        make(&s.store);
        let before = std::fs::read(&s.store).unwrap();
        let (ok, stderr) = pkcs11_tool_list(&[("P11DERIVE_CONF", &s.config)]);
        assert!(!ok, "{what}: accepted");
        assert!(stderr.contains("CKR_FUNCTION_FAILED"), "{what}: {stderr}");
        let log = s.log();
        assert!(log.contains(needle), "{what}: log lacks {needle:?}: {log}");
        assert_eq!(
            std::fs::read(&s.store).unwrap(),
            before,
            "{what}: the file was modified"
        );
        let out = s.cli().args(["asset", "list"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{what}: CLI exit code");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{what}: CLI message"
        );
    }
}

#[test]
fn cli_lists_assets_and_init_keeps_an_existing_root() {
    let _turn = turn();
    let s = setup(None);
    {
        let p = s.load();
        let session = p.user_session();
        let (a, b) = templates("listed-1", &SECP256K1);
        generate(&session, &a, &b).unwrap();
        let (a, mut b) = templates("listed-2", &P256);
        b.push(Attribute::Id(vec![0xab, 0xcd]));
        let (_, priv_h) = generate(
            &session,
            &[a, vec![Attribute::Id(vec![0xab, 0xcd])]].concat(),
            &b,
        )
        .unwrap();
        let id = session
            .get_attributes(priv_h, &[AttributeType::Id])
            .unwrap();
        assert_eq!(
            id,
            vec![Attribute::Id(vec![0xab, 0xcd])],
            "the creator's CKA_ID is honoured"
        );
    }
    let out = s.cli().args(["asset", "list"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        table.contains("listed-1") && table.contains("secp256k1") && table.contains("ACTIVE"),
        "{table}"
    );
    assert!(
        table.contains("listed-2") && table.contains("abcd"),
        "{table}"
    );
    let out = s.cli().args(["asset", "list", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[1]["asset_id"], "listed-2");
    assert_eq!(v[1]["versions"][0]["version"], 1);
    assert_eq!(
        v[1]["versions"][0]["public_key"].as_str().unwrap().len(),
        130
    );

    let again = s.cli().arg("init").output().unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("already exists"));
    let root = s.dir.join("other-root.hex");
    std::fs::write(&root, "11".repeat(32)).unwrap();
    let import = s
        .cli()
        .args(["init", "--import-root"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(
        import.status.code(),
        Some(3),
        "a second root is refused (exit 3)"
    );
    assert_eq!(
        s.cli()
            .args(["asset", "frobnicate"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
    let no_pin = s
        .cli()
        .env_remove("P11DERIVE_PIN")
        .arg("init")
        .output()
        .unwrap();
    assert_eq!(no_pin.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_pin.stderr).contains("P11DERIVE_PIN"));
}

#[test]
fn sessions_sign_concurrently_and_every_signature_verifies() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let admin = p.user_session();
    let (public, private) = templates("parallel", &SECP256K1);
    let (pub_h, priv_h) = generate(&admin, &public, &private).unwrap();
    std::thread::scope(|scope| {
        for t in 0..8u8 {
            let p = &p;
            scope.spawn(move || {
                let session = p.session();
                for i in 0..40u8 {
                    let msg = [t, i];
                    let sig = session.sign(&Mechanism::EcdsaSha256, priv_h, &msg).unwrap();
                    session
                        .verify(&Mechanism::EcdsaSha256, pub_h, &msg, &sig)
                        .unwrap();
                    if i % 10 == 0 {
                        // Sessions open and close beside the signers.
                        drop(p.session());
                    }
                }
            });
        }
    });
    // C_Finalize; then every signature has its own record: 320, each message
    // once.
    drop((admin, p));
    let made: std::collections::HashSet<String> = (0..8u8)
        .flat_map(|t| (0..40u8).map(move |i| sha256_hex(&[t, i])))
        .collect();
    assert_eq!(s.signed_count(&["--asset", "parallel"]), 8 * 40);
    assert_eq!(s.signed_inputs(&["--asset", "parallel"]), made);
    s.audit_verifies();
}

#[test]
fn no_signature_is_made_across_a_logout() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let admin = p.user_session();
    let (public, private) = templates("logout-race", &SECP256K1);
    let (_, priv_h) = generate(&admin, &public, &private).unwrap();

    // Plainly: an operation initialized before a logout cannot finish after it.
    let signer = p.session();
    signer.sign_init(&Mechanism::EcdsaSha256, priv_h).unwrap();
    admin.logout().unwrap();
    // C_Logout ended every session's operation (and wiped its key).
    assert_eq!(
        rv_of(signer.sign_final()),
        RvError::OperationNotInitialized,
        "signed after C_Logout"
    );
    admin
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .unwrap();

    // Racing: `phase` is odd while logged out (set after C_Logout returned,
    // cleared before C_Login starts). A signature whose whole call happened
    // inside one logged-out phase must not exist.
    let phase = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let (mut made, mut violations) = (0u32, 0u32);
    let (phase, done) = (&phase, &done);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for _ in 0..200 {
                admin.logout().unwrap();
                phase.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(2));
                phase.fetch_add(1, Ordering::SeqCst);
                admin
                    .login(UserType::User, Some(&AuthPin::from(PIN)))
                    .unwrap();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            done.store(true, Ordering::SeqCst);
        });
        while !done.load(Ordering::SeqCst) {
            // C_SignInit may race the logout; then C_SignFinal must not
            // succeed while wholly inside a logged-out window.
            if signer.sign_init(&Mechanism::EcdsaSha256, priv_h).is_err() {
                continue;
            }
            let _ = signer.sign_update(b"race");
            let before = phase.load(Ordering::SeqCst);
            let result = signer.sign_final();
            let after = phase.load(Ordering::SeqCst);
            if result.is_ok() {
                made += 1;
                if before == after && before % 2 == 1 {
                    violations += 1;
                }
            }
        }
    });
    assert_eq!(
        violations, 0,
        "{violations} of {made} signatures were made while logged out"
    );
    assert!(made > 0, "the signer never got a signature in");
}
