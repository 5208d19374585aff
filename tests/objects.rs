//! Public token objects (issue 7): X.509 certificates and data objects stored
//! beside the derived keys, and the profile objects. Certificates made by
//! OpenSSL, written and read through cryptoki.

mod common;

use std::process::Command;

use common::*;
use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeType, CertificateType, ObjectClass};
use cryptoki::session::Session;

/// A self-signed P-256 certificate in DER, made by the openssl command.
fn certificate(dir: &std::path::Path) -> Vec<u8> {
    let out = dir.join("cert.der");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-subj",
            "/CN=objects test",
            "-days",
            "1",
            "-outform",
            "DER",
        ])
        .arg("-keyout")
        .arg(dir.join("cert.key"))
        .arg("-out")
        .arg(&out)
        .output()
        .expect("openssl runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    std::fs::read(out).unwrap()
}

fn cert_template(value: &[u8], label: &str, id: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(CertificateType::X_509),
        Attribute::Token(true),
        Attribute::Value(value.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

fn bytes_of(session: &Session, h: cryptoki::object::ObjectHandle, ty: AttributeType) -> Vec<u8> {
    match &session.get_attributes(h, &[ty]).unwrap()[..] {
        [Attribute::Value(v)]
        | [Attribute::Subject(v)]
        | [Attribute::Issuer(v)]
        | [Attribute::SerialNumber(v)]
        | [Attribute::CheckValue(v)]
        | [Attribute::Id(v)] => v.clone(),
        other => panic!("{ty:?}: {other:?}"),
    }
}

#[test]
fn certificates_are_stored_public_audited_and_destroyable() {
    let _turn = turn();
    let s = setup(None);
    let der = certificate(&s.dir);
    let p = s.load();
    let session = p.user_session();
    let h = session
        .create_object(&cert_template(&der, "web", &[7, 7]))
        .unwrap();

    // Readable without a login, found by class and CKA_ID (how libp11 and
    // Java pair a key with its certificate).
    let public = p.session();
    let found = public
        .find_objects(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Id(vec![7, 7]),
        ])
        .unwrap();
    assert_eq!(found, vec![h]);
    assert_eq!(bytes_of(&public, h, AttributeType::Value), der);
    let subject = bytes_of(&public, h, AttributeType::Subject);
    let issuer = bytes_of(&public, h, AttributeType::Issuer);
    assert_eq!(subject, issuer, "self-signed");
    assert_eq!(subject[0], 0x30, "a DER Name");
    assert!(der.windows(subject.len()).any(|w| w == subject));
    let serial = bytes_of(&public, h, AttributeType::SerialNumber);
    assert_eq!(serial[0], 0x02, "a DER INTEGER");
    let check = {
        use sha1::Digest;
        sha1::Sha1::digest(&der)[..3].to_vec()
    };
    assert_eq!(bytes_of(&public, h, AttributeType::CheckValue), check);
    let flags = public
        .get_attributes(
            h,
            &[
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Modifiable,
            ],
        )
        .unwrap();
    assert_eq!(
        flags,
        vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Modifiable(false)
        ]
    );

    // A fresh initialization (same process) reads it back from the store,
    // under the same handle (handles are stable for the process's life).
    drop((session, public));
    drop(p);
    let p = s.load();
    let session = p.user_session();
    let again = session
        .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
        .unwrap();
    assert_eq!(
        again,
        vec![h],
        "the handle is the same after re-initialization"
    );
    assert_eq!(
        bytes_of(&session, h, AttributeType::Value),
        der,
        "read back from the store"
    );

    // Destroyed (logged in, read-write); the audit log has both records.
    session.destroy_object(h).unwrap();
    assert!(session
        .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
        .unwrap()
        .is_empty());
    assert_eq!(
        rv_of(session.get_attributes(h, &[AttributeType::Label])),
        RvError::ObjectHandleInvalid
    );
    let out = s.cli().args(["audit", "export"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("\"object-create\"") && log.contains("certificate \\\"web\\\""),
        "{log}"
    );
    assert!(log.contains("\"object-destroy\""), "{log}");
    let out = s.cli().args(["audit", "verify"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn data_objects_and_profiles() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let h = session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Label(b"note".to_vec()),
            Attribute::Application(b"app".to_vec()),
            Attribute::Value(b"public words".to_vec()),
        ])
        .unwrap();
    assert_eq!(bytes_of(&session, h, AttributeType::Value), b"public words");
    let profiles = session
        .find_objects(&[Attribute::Class(ObjectClass::PROFILE)])
        .unwrap();
    assert_eq!(profiles.len(), 2);
    let mut ids: Vec<u64> = profiles
        .iter()
        .map(|&o| {
            match &session
                .get_attributes(o, &[AttributeType::ProfileId])
                .unwrap()[..]
            {
                [Attribute::ProfileId(id)] => (*id).into(),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![1, 4],
        "baseline provider, public certificates token"
    );
    assert_eq!(
        rv_of(session.destroy_object(profiles[0])),
        RvError::ActionProhibited
    );
    session.destroy_object(h).unwrap();
}

#[test]
fn bad_certificates_and_data_objects_are_refused_and_change_nothing() {
    let _turn = turn();
    let s = setup(None);
    let der = certificate(&s.dir);
    let p = s.load();
    let session = p.user_session();
    let with = |mut t: Vec<Attribute>, a: Attribute| {
        t.retain(|x| x.attribute_type() != a.attribute_type());
        t.push(a);
        t
    };
    let base = cert_template(&der, "bad", &[1]);
    let cases: Vec<(&str, Vec<Attribute>, RvError, &str)> = vec![
        (
            "not a certificate",
            with(base.clone(), Attribute::Value(b"nope".to_vec())),
            RvError::AttributeValueInvalid,
            "not a DER X.509 certificate",
        ),
        (
            "a private certificate",
            with(base.clone(), Attribute::Private(true)),
            RvError::TemplateInconsistent,
            "keeps no secrets",
        ),
        (
            "another subject",
            with(base.clone(), Attribute::Subject(vec![0x30, 0])),
            RvError::TemplateInconsistent,
            "CKA_SUBJECT differs",
        ),
        (
            "a trusted certificate",
            with(base.clone(), Attribute::Trusted(true)),
            RvError::TemplateInconsistent,
            "security officer",
        ),
        (
            "a private data object",
            vec![
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
            ],
            RvError::TemplateInconsistent,
            "keeps no secrets",
        ),
    ];
    for (what, t, want, named) in cases {
        let from = s.log().len();
        assert_eq!(rv_of(session.create_object(&t)), want, "{what}");
        assert!(
            s.log_since(from).contains(named),
            "{what}: the log says {named:?}"
        );
    }
    let ro = p.ctx.open_ro_session(p.slot).unwrap();
    assert_eq!(rv_of(ro.create_object(&base)), RvError::SessionReadOnly);
    // A session certificate (CKA_TOKEN=false) is no refusal: it lives in
    // memory, even made in a read-only session (tests/session_objects.rs).
    let session_cert = ro
        .create_object(&with(base.clone(), Attribute::Token(false)))
        .unwrap();
    assert_eq!(
        ro.get_attributes(session_cert, &[AttributeType::Token])
            .unwrap(),
        vec![Attribute::Token(false)]
    );
    ro.destroy_object(session_cert).unwrap();
    session.logout().unwrap();
    assert_eq!(
        rv_of(session.create_object(&base)),
        RvError::UserNotLoggedIn
    );
    assert!(session
        .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
        .unwrap()
        .is_empty());
}
