//! Session objects as PKCS#11 describes them (issue 24): readable session
//! secret keys, imported EC keys, session certificates and data objects,
//! C_SetAttributeValue and C_CopyObject, the attacks on them, and token keys
//! named by the token when the template gives no label. The built provider,
//! loaded through cryptoki and the raw function table.

mod common;

use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::Ulong;

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const SECP256K1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const P521: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];

fn gcm<'a>(iv: &'a mut [u8], aad: &'a [u8]) -> Mechanism<'a> {
    Mechanism::AesGcm(GcmParams::new(iv, aad, Ulong::from(128u64)).unwrap())
}

fn eddsa() -> Mechanism<'static> {
    use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
    Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure))
}

fn one(session: &Session, h: ObjectHandle, ty: AttributeType) -> Attribute {
    let mut v = session.get_attributes(h, &[ty]).unwrap();
    assert_eq!(v.len(), 1, "{ty:?}");
    v.remove(0)
}

fn bytes(session: &Session, h: ObjectHandle, ty: AttributeType) -> Vec<u8> {
    match one(session, h, ty) {
        Attribute::Value(v)
        | Attribute::Label(v)
        | Attribute::Id(v)
        | Attribute::Application(v)
        | Attribute::EcPoint(v) => v,
        other => panic!("{other:?}"),
    }
}

fn flag(session: &Session, h: ObjectHandle, ty: AttributeType) -> bool {
    match one(session, h, ty) {
        Attribute::Sensitive(b)
        | Attribute::Extractable(b)
        | Attribute::AlwaysSensitive(b)
        | Attribute::NeverExtractable(b)
        | Attribute::Local(b)
        | Attribute::Modifiable(b)
        | Attribute::Copyable(b)
        | Attribute::Destroyable(b)
        | Attribute::Token(b)
        | Attribute::Private(b)
        | Attribute::Sign(b) => b,
        other => panic!("{other:?}"),
    }
}

fn secret(value: &[u8], extra: &[Attribute]) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Value(value.to_vec()),
    ];
    t.extend_from_slice(extra);
    t
}

/// `C_GetAttributeValue` of one attribute through the raw table: its code.
fn raw_rv(
    session: &Session,
    h: ObjectHandle,
    ty: cryptoki_sys::CK_ATTRIBUTE_TYPE,
) -> cryptoki_sys::CK_RV {
    let r = raw();
    let mut buf = [0u8; 256];
    let mut a = [cryptoki_sys::CK_ATTRIBUTE {
        type_: ty,
        pValue: buf.as_mut_ptr() as *mut _,
        ulValueLen: buf.len() as _,
    }];
    call!(
        r,
        C_GetAttributeValue(session.handle(), h.handle(), a.as_mut_ptr(), 1)
    )
}

#[test]
fn session_secret_keys_are_readable_only_when_not_sensitive_and_extractable() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    // Generated, not sensitive, extractable: the value reads; the key was
    // never always sensitive nor never extractable; it is local.
    let g = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ],
        )
        .unwrap();
    let value = bytes(&session, g, AttributeType::Value);
    assert_eq!(value.len(), 32);
    assert!(!flag(&session, g, AttributeType::AlwaysSensitive));
    assert!(!flag(&session, g, AttributeType::NeverExtractable));
    assert!(flag(&session, g, AttributeType::Local));
    // The value read is the key: what it seals, a key made from it opens.
    let mut iv = [1u8; 12];
    let sealed = session.encrypt(&gcm(&mut iv, b""), g, b"hello").unwrap();
    let again = session
        .create_object(&secret(&value, &[Attribute::Label(b"again".to_vec())]))
        .unwrap();
    assert_eq!(
        session.decrypt(&gcm(&mut iv, b""), again, &sealed).unwrap(),
        b"hello"
    );

    // Created from a value: not local, never always sensitive.
    let given = [7u8; 16];
    let c = session
        .create_object(&secret(
            &given,
            &[Attribute::Sensitive(false), Attribute::Extractable(true)],
        ))
        .unwrap();
    assert_eq!(bytes(&session, c, AttributeType::Value), given);
    assert!(!flag(&session, c, AttributeType::Local));
    assert!(!flag(&session, c, AttributeType::AlwaysSensitive));

    // The defaults: sensitive, not extractable; generated, it has always been.
    let d = session
        .generate_key(&Mechanism::AesKeyGen, &[Attribute::ValueLen(16.into())])
        .unwrap();
    assert!(flag(&session, d, AttributeType::Sensitive));
    assert!(flag(&session, d, AttributeType::AlwaysSensitive));
    assert!(flag(&session, d, AttributeType::NeverExtractable));
    assert_eq!(
        raw_rv(&session, d, cryptoki_sys::CKA_VALUE),
        cryptoki_sys::CKR_ATTRIBUTE_SENSITIVE
    );
    // Sensitive but extractable: no value, but it wraps; not extractable:
    // it does not.
    let kek = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[Attribute::ValueLen(32.into()), Attribute::Wrap(true)],
        )
        .unwrap();
    let se = session
        .create_object(&secret(&[9; 32], &[Attribute::Extractable(true)]))
        .unwrap();
    assert_eq!(
        raw_rv(&session, se, cryptoki_sys::CKA_VALUE),
        cryptoki_sys::CKR_ATTRIBUTE_SENSITIVE
    );
    session.wrap_key(&Mechanism::AesKeyWrap, kek, se).unwrap();
    assert_eq!(
        rv_of(session.wrap_key(&Mechanism::AesKeyWrap, kek, d)),
        RvError::KeyUnextractable
    );
    // Lengths stay as they were: a 20-byte AES key is refused.
    assert_eq!(
        rv_of(session.create_object(&secret(&[1; 20], &[Attribute::Sensitive(false)]))),
        RvError::AttributeValueInvalid
    );
}

#[test]
fn attributes_change_as_the_specification_allows() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let k = session
        .create_object(&secret(
            &[3; 32],
            &[
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::Label(b"old".to_vec()),
            ],
        ))
        .unwrap();
    for ty in [
        AttributeType::Modifiable,
        AttributeType::Copyable,
        AttributeType::Destroyable,
    ] {
        assert!(flag(&session, k, ty), "{ty:?} defaults to true");
    }
    session
        .update_attributes(
            k,
            &[
                Attribute::Label(b"new".to_vec()),
                Attribute::Id(vec![1, 2]),
                Attribute::Encrypt(false),
            ],
        )
        .unwrap();
    assert_eq!(bytes(&session, k, AttributeType::Label), b"new");
    assert_eq!(
        session
            .find_objects(&[Attribute::Label(b"new".to_vec()), Attribute::Id(vec![1, 2])])
            .unwrap(),
        vec![k]
    );
    let mut iv = [2u8; 12];
    assert_eq!(
        rv_of(session.encrypt(&gcm(&mut iv, b""), k, b"x")),
        RvError::KeyFunctionNotPermitted
    );
    // Latching: sensitive once, always; unextractable once, always.
    session
        .update_attributes(k, &[Attribute::Sensitive(true)])
        .unwrap();
    assert_eq!(
        raw_rv(&session, k, cryptoki_sys::CKA_VALUE),
        cryptoki_sys::CKR_ATTRIBUTE_SENSITIVE
    );
    assert!(!flag(&session, k, AttributeType::AlwaysSensitive));
    session
        .update_attributes(k, &[Attribute::Extractable(false)])
        .unwrap();
    let from = s.log().len();
    for (attr, named) in [
        (Attribute::Sensitive(false), "CKA_SENSITIVE"),
        (Attribute::Extractable(true), "CKA_EXTRACTABLE"),
        // What the key is never changes.
        (Attribute::Class(ObjectClass::PUBLIC_KEY), "CKA_CLASS"),
        (Attribute::KeyType(KeyType::GENERIC_SECRET), "CKA_KEY_TYPE"),
        (Attribute::Value(vec![0; 32]), "CKA_VALUE"),
        (Attribute::ValueLen(16.into()), "CKA_VALUE_LEN"),
        // A session key never becomes a token key, nor public.
        (Attribute::Token(true), "CKA_TOKEN"),
        (Attribute::Private(false), "CKA_PRIVATE"),
    ] {
        assert_eq!(
            rv_of(session.update_attributes(k, std::slice::from_ref(&attr))),
            RvError::AttributeReadOnly,
            "{attr:?}"
        );
        assert!(s.log_since(from).contains(named), "the log names {named}");
    }
    assert!(!flag(&session, k, AttributeType::Token));
    // A use this kind of key never has (an AES key encrypts, wraps and
    // signs with AES-CMAC; it derives nothing).
    assert_eq!(
        rv_of(session.update_attributes(k, &[Attribute::Derive(true)])),
        RvError::AttributeValueInvalid
    );
    session
        .update_attributes(k, &[Attribute::Sign(true)])
        .unwrap();
    assert!(flag(&session, k, AttributeType::Sign));
    // All or nothing: a refused template changes nothing.
    assert_eq!(
        rv_of(session.update_attributes(
            k,
            &[Attribute::Label(b"half".to_vec()), Attribute::Token(true)]
        )),
        RvError::AttributeReadOnly
    );
    assert_eq!(bytes(&session, k, AttributeType::Label), b"new");

    // Not modifiable, not destroyable: as made.
    let fixed = session
        .create_object(&secret(
            &[4; 16],
            &[Attribute::Modifiable(false), Attribute::Destroyable(false)],
        ))
        .unwrap();
    assert_eq!(
        rv_of(session.update_attributes(fixed, &[Attribute::Label(b"x".to_vec())])),
        RvError::ActionProhibited
    );
    assert_eq!(
        rv_of(session.destroy_object(fixed)),
        RvError::ActionProhibited
    );
    assert!(s.log().contains("CKA_DESTROYABLE false"));
}

#[test]
fn copies_are_new_objects_that_cannot_weaken_keys() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let k = session
        .create_object(&secret(
            &[5; 32],
            &[Attribute::Sensitive(false), Attribute::Extractable(true)],
        ))
        .unwrap();
    let copy = session.copy_object(k, &[]).unwrap();
    assert_ne!(copy, k);
    assert_eq!(bytes(&session, copy, AttributeType::Value), [5; 32]);
    // The copy is the same key: a GCM IV used by one is refused to the other.
    let mut iv = [9u8; 12];
    let sealed = session.encrypt(&gcm(&mut iv, b""), k, b"m").unwrap();
    assert_eq!(
        session.decrypt(&gcm(&mut iv, b""), copy, &sealed).unwrap(),
        b"m"
    );
    assert!(session.encrypt(&gcm(&mut iv, b""), copy, b"m").is_err());
    // Stronger on the way: sensitive, not extractable, not copyable.
    let strong = session
        .copy_object(
            k,
            &[
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Copyable(false),
            ],
        )
        .unwrap();
    assert_eq!(
        raw_rv(&session, strong, cryptoki_sys::CKA_VALUE),
        cryptoki_sys::CKR_ATTRIBUTE_SENSITIVE
    );
    assert!(!flag(&session, strong, AttributeType::NeverExtractable));
    assert_eq!(
        bytes(&session, k, AttributeType::Value),
        [5; 32],
        "original"
    );
    assert_eq!(
        rv_of(session.copy_object(strong, &[])),
        RvError::ActionProhibited
    );
    // Never weaker, never a token key.
    assert_eq!(
        rv_of(session.copy_object(strong, &[Attribute::Sensitive(false)])),
        RvError::ActionProhibited,
        "not copyable at all"
    );
    let sensitive = session
        .copy_object(k, &[Attribute::Sensitive(true)])
        .unwrap();
    for attr in [
        Attribute::Sensitive(false),
        Attribute::Class(ObjectClass::DATA),
    ] {
        assert_eq!(
            rv_of(session.copy_object(sensitive, std::slice::from_ref(&attr))),
            RvError::AttributeReadOnly,
            "{attr:?}"
        );
    }
    let from = s.log().len();
    assert_eq!(
        rv_of(session.copy_object(k, &[Attribute::Token(true)])),
        RvError::TemplateInconsistent
    );
    assert!(s.log_since(from).contains("cannot be a token object"));

    // Derived keys neither change nor copy: they stay sensitive and
    // unextractable whatever the template says.
    let asset = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[Attribute::Token(true), Attribute::Label(b"vault".to_vec())],
        )
        .unwrap();
    for attrs in [
        vec![Attribute::Sensitive(false)],
        vec![Attribute::Extractable(true)],
        vec![Attribute::Label(b"other".to_vec())],
    ] {
        assert_eq!(
            rv_of(session.update_attributes(asset, &attrs)),
            RvError::ActionProhibited,
            "{attrs:?}"
        );
        assert_eq!(
            rv_of(session.copy_object(asset, &attrs)),
            RvError::ActionProhibited,
            "{attrs:?}"
        );
    }
    assert_eq!(
        rv_of(session.copy_object(asset, &[Attribute::Token(false)])),
        RvError::ActionProhibited
    );
    assert!(!flag(&session, asset, AttributeType::Extractable));
    assert!(flag(&session, asset, AttributeType::Sensitive));
    assert!(!flag(&session, asset, AttributeType::Modifiable));
    assert!(s.log().contains("is a derived key"));
}

#[test]
fn ec_keys_import_as_session_keys_that_sign_and_verify() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let digest: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(b"imported").into()
    };
    let import = |params: &[u8], kt: KeyType, point: Vec<u8>, scalar: Vec<u8>| {
        let public = session
            .create_object(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(kt),
                Attribute::EcParams(params.to_vec()),
                Attribute::EcPoint(point),
                Attribute::Verify(true),
            ])
            .unwrap();
        let private = session
            .create_object(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(kt),
                Attribute::EcParams(params.to_vec()),
                Attribute::Value(scalar),
                Attribute::Sign(true),
            ])
            .unwrap();
        (public, private)
    };
    let der = |p: &[u8]| [&[0x04, p.len() as u8][..], p].concat();

    // secp256k1: a key the k256 crate made; uncompressed point.
    let sk = k256::SecretKey::from_slice(&[0x11; 32]).unwrap();
    let point = {
        use k256::elliptic_curve::sec1::ToSec1Point;
        sk.public_key().to_sec1_point(false).as_bytes().to_vec()
    };
    let (public, private) = import(SECP256K1, KeyType::EC, der(&point), vec![0x11; 32]);
    let sig = session.sign(&Mechanism::Ecdsa, private, &digest).unwrap();
    assert!(ecdsa_verifies("secp256k1", &point, &digest, &sig));
    session
        .verify(&Mechanism::Ecdsa, public, &digest, &sig)
        .unwrap();
    assert!(!flag(&session, private, AttributeType::Local));
    assert!(flag(&session, private, AttributeType::Sensitive));
    assert_eq!(bytes(&session, private, AttributeType::Label), b"");

    // P-256 given a compressed point: shown uncompressed.
    let sk = p256::SecretKey::from_slice(&[0x22; 32]).unwrap();
    let (full, short) = {
        use p256::elliptic_curve::sec1::ToSec1Point;
        let pk = sk.public_key();
        (
            pk.to_sec1_point(false).as_bytes().to_vec(),
            pk.to_sec1_point(true).as_bytes().to_vec(),
        )
    };
    let (public, private) = import(P256, KeyType::EC, der(&short), vec![0x22; 32]);
    assert_eq!(bytes(&session, public, AttributeType::EcPoint), der(&full));
    let sig = session.sign(&Mechanism::Ecdsa, private, &digest).unwrap();
    assert!(ecdsa_verifies("p256", &full, &digest, &sig));

    // P-384 (a one-byte DER length) and P-521 (133 bytes: the long form
    // 0x81 0x85), keys the p384/p521 crates made from known scalars.
    let long_der = |p: &[u8]| [&[0x04, 0x81, p.len() as u8][..], p].concat();
    let p384_sk = p384::SecretKey::from_slice(&[0x44; 48]).unwrap();
    let p384_point = {
        use p384::elliptic_curve::sec1::ToSec1Point;
        p384_sk
            .public_key()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec()
    };
    let (public, private) = import(P384, KeyType::EC, der(&p384_point), vec![0x44; 48]);
    let sig = session.sign(&Mechanism::Ecdsa, private, &digest).unwrap();
    assert_eq!(sig.len(), 96);
    assert!(ecdsa_verifies("p384", &p384_point, &digest, &sig));
    session
        .verify(&Mechanism::Ecdsa, public, &digest, &sig)
        .unwrap();
    let mut scalar = vec![0x01];
    scalar.extend_from_slice(&[0x55; 65]);
    let p521_sk = p521::SecretKey::from_slice(&scalar).unwrap();
    let p521_point = {
        use p521::elliptic_curve::sec1::ToSec1Point;
        p521_sk
            .public_key()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec()
    };
    let (public, private) = import(P521, KeyType::EC, long_der(&p521_point), scalar.clone());
    assert_eq!(
        bytes(&session, public, AttributeType::EcPoint),
        long_der(&p521_point)
    );
    let sig = session.sign(&Mechanism::Ecdsa, private, &digest).unwrap();
    assert_eq!(sig.len(), 132);
    assert!(ecdsa_verifies("p521", &p521_point, &digest, &sig));
    session
        .verify(&Mechanism::Ecdsa, public, &digest, &sig)
        .unwrap();
    // A P-384 scalar longer than 48 bytes: refused.
    assert_eq!(
        rv_of(session.create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(P384.to_vec()),
            Attribute::Value(vec![0x44; 49]),
            Attribute::Sign(true),
        ])),
        RvError::AttributeValueInvalid
    );

    // Ed25519 (CKK_EC_EDWARDS): a seed and its public key.
    let seed = [0x33u8; 32];
    let vk = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    let (public, private) = import(
        ED25519,
        KeyType::EC_EDWARDS,
        der(vk.as_bytes()),
        seed.to_vec(),
    );
    let sig = session.sign(&eddsa(), private, b"msg").unwrap();
    vk.verify_strict(b"msg", &ed25519_dalek::Signature::from_slice(&sig).unwrap())
        .unwrap();
    session.verify(&eddsa(), public, b"msg", &sig).unwrap();

    // Not on the curve, out of range, a token key: refused, named.
    let mut bad_point = point.clone();
    bad_point[64] ^= 1;
    let order = {
        let mut n = vec![0xff; 16];
        n.extend_from_slice(&[
            0xff, 0xff, 0xff, 0xfe, 0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2,
            0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
        ]);
        n[..32].to_vec()
    };
    let cases: Vec<(&str, Vec<Attribute>, RvError, &str)> = vec![
        (
            "a point off the curve",
            vec![
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(SECP256K1.to_vec()),
                Attribute::EcPoint(der(&bad_point)),
            ],
            RvError::AttributeValueInvalid,
            "CKA_EC_POINT is not a point",
        ),
        (
            "a scalar of zero",
            vec![
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(P256.to_vec()),
                Attribute::Value(vec![0; 32]),
            ],
            RvError::AttributeValueInvalid,
            "not a valid",
        ),
        (
            "the curve's order",
            vec![
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(SECP256K1.to_vec()),
                Attribute::Value(order),
            ],
            RvError::AttributeValueInvalid,
            "not below the curve's order",
        ),
        (
            "a token private key",
            vec![
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Token(true),
                Attribute::EcParams(P256.to_vec()),
                Attribute::Value(vec![0x22; 32]),
            ],
            RvError::TemplateInconsistent,
            "holds no imported keys",
        ),
        (
            "a key type that is not the curve's",
            vec![
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::EcParams(P256.to_vec()),
                Attribute::EcPoint(der(&full)),
            ],
            RvError::TemplateInconsistent,
            "CKA_KEY_TYPE does not fit",
        ),
    ];
    for (what, t, want, named) in cases {
        let from = s.log().len();
        assert_eq!(rv_of(session.create_object(&t)), want, "{what}");
        assert!(
            s.log_since(from).contains(named),
            "{what}: log names {named:?}"
        );
    }
    // An imported private key is never readable unless asked so; then it is.
    let open = session
        .create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(P256.to_vec()),
            Attribute::Value(vec![0x22; 32]),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ])
        .unwrap();
    assert_eq!(bytes(&session, open, AttributeType::Value), [0x22; 32]);
    assert_eq!(
        rv_of(session.update_attributes(open, &[Attribute::EcParams(SECP256K1.to_vec())])),
        RvError::AttributeReadOnly
    );
}

#[test]
fn session_data_objects_and_certificates_live_with_their_session() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    // A public session object needs no login, even in a read-only session.
    let ro = p.ctx.open_ro_session(p.slot).unwrap();
    let data = ro
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(b"app".to_vec()),
            Attribute::ObjectId(vec![0x06, 0x01, 0x01]),
            Attribute::Value(b"words".to_vec()),
            Attribute::Label(b"note".to_vec()),
        ])
        .unwrap();
    assert!(!flag(&ro, data, AttributeType::Token));
    assert!(!flag(&ro, data, AttributeType::Private));
    assert!(flag(&ro, data, AttributeType::Modifiable));
    assert_eq!(
        ro.find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(b"app".to_vec())
        ])
        .unwrap(),
        vec![data]
    );
    ro.update_attributes(
        data,
        &[
            Attribute::Value(b"other words".to_vec()),
            Attribute::Application(b"app2".to_vec()),
        ],
    )
    .unwrap();
    assert_eq!(bytes(&ro, data, AttributeType::Value), b"other words");
    assert_eq!(
        rv_of(ro.update_attributes(data, &[Attribute::Class(ObjectClass::CERTIFICATE)])),
        RvError::AttributeReadOnly
    );
    let copy = ro
        .copy_object(data, &[Attribute::Value(b"copied".to_vec())])
        .unwrap();
    assert_eq!(bytes(&ro, copy, AttributeType::Value), b"copied");
    assert_eq!(bytes(&ro, data, AttributeType::Value), b"other words");
    // A private one needs a login, to be made and to be seen.
    let private_data = [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Private(true),
        Attribute::Label(b"secret note".to_vec()),
        Attribute::Value(b"hush".to_vec()),
    ];
    assert_eq!(
        rv_of(ro.create_object(&private_data)),
        RvError::UserNotLoggedIn
    );
    let user = p.user_session();
    let hidden = user.create_object(&private_data).unwrap();
    assert_eq!(bytes(&ro, hidden, AttributeType::Value), b"hush");
    user.logout().unwrap();
    assert!(ro
        .find_objects(&[Attribute::Label(b"secret note".to_vec())])
        .unwrap()
        .is_empty());
    assert_eq!(
        rv_of(ro.get_attributes(hidden, &[AttributeType::Value])),
        RvError::ObjectHandleInvalid
    );
    user.login(
        cryptoki::session::UserType::User,
        Some(&cryptoki::types::AuthPin::from(PIN)),
    )
    .unwrap();
    // A session object copied to the token is stored (public only).
    let stored = user.copy_object(data, &[Attribute::Token(true)]).unwrap();
    assert!(flag(&user, stored, AttributeType::Token));
    assert_eq!(
        rv_of(user.update_attributes(stored, &[Attribute::Label(b"x".to_vec())])),
        RvError::ActionProhibited
    );
    let back = user
        .copy_object(stored, &[Attribute::Token(false)])
        .unwrap();
    assert!(!flag(&user, back, AttributeType::Token));
    assert_eq!(
        rv_of(user.copy_object(hidden, &[Attribute::Token(true)])),
        RvError::TemplateInconsistent,
        "private objects are not stored"
    );

    // Another process (its own provider) does not see this one's session
    // objects (the token copy, stored, it does): the handle means nothing
    // there.
    let out = s.dir.join("child.out");
    let h = data.handle();
    let pid = fork_child(&out, || {
        let (_ctx, session) = child_session()?;
        let found = session
            .find_objects(&[
                Attribute::Application(b"app2".to_vec()),
                Attribute::Token(false),
            ])
            .map_err(|e| e.to_string())?;
        let r = raw();
        let mut buf = [0u8; 64];
        let mut a = [cryptoki_sys::CK_ATTRIBUTE {
            type_: cryptoki_sys::CKA_LABEL,
            pValue: buf.as_mut_ptr() as *mut _,
            ulValueLen: buf.len() as _,
        }];
        let rv = call!(
            r,
            C_GetAttributeValue(session.handle(), h, a.as_mut_ptr(), 1)
        );
        Ok(format!("{} {rv:#x}", found.len()))
    });
    let said = reap(pid, &out, "the other process");
    assert_eq!(
        said,
        format!("0 {:#x}", cryptoki_sys::CKR_OBJECT_HANDLE_INVALID),
        "CKR_OBJECT_HANDLE_INVALID"
    );

    // Closing the session that made them drops them; others stay.
    drop(ro);
    for h in [data, copy] {
        assert_eq!(
            rv_of(user.get_attributes(h, &[AttributeType::Label])),
            RvError::ObjectHandleInvalid
        );
    }
    assert!(
        flag(&user, hidden, AttributeType::Private),
        "made by `user`"
    );
    assert!(!flag(&user, back, AttributeType::Token), "made by `user`");
    user.destroy_object(stored).unwrap();
}

/// The DER OCTET STRING of a P-256 public point.
fn p256_point() -> Vec<u8> {
    use p256::elliptic_curve::sec1::ToSec1Point;
    let sk = p256::SecretKey::from_slice(&[0x44; 32]).unwrap();
    let point = sk.public_key().to_sec1_point(false).as_bytes().to_vec();
    [&[0x04, 65][..], &point].concat()
}

/// `C_DeriveKey(CKM_P11DERIVE_HD_CHILD, [index])` on `base`.
fn hd_child(session: &Session, base: ObjectHandle, index: u64) -> ObjectHandle {
    use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
    use cryptoki::mechanism::MechanismType;
    let hd = cryptoki_sys::CKM_VENDOR_DEFINED | 0x5044_0001;
    let param = [index];
    let mech = Mechanism::VendorDefined(VendorDefinedMechanism::new(
        MechanismType::new_vendor_defined(hd).unwrap(),
        Some(&param),
    ));
    session.derive_key(&mech, base, &[]).unwrap()
}

#[test]
fn derived_keys_stay_fixed_and_the_log_tells_the_truth() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let from = s.log().len();
    let (_, private) = session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::Label(b"hot-1".to_vec()),
                Attribute::EcParams(SECP256K1.to_vec()),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(true),
                Attribute::Label(b"hot-1".to_vec()),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Derive(true),
                Attribute::Decrypt(true),
            ],
        )
        .unwrap();
    let log = s.log_since(from);
    // What is honoured is not said to be ignored; what is ignored is.
    for honoured in [
        "CKA_SENSITIVE ignored",
        "CKA_PRIVATE ignored",
        "CKA_SIGN ignored",
        "CKA_VERIFY ignored",
        "CKA_EXTRACTABLE ignored",
        "CKA_DERIVE ignored",
    ] {
        assert!(!log.contains(honoured), "{honoured}: {log}");
    }
    assert!(log.contains("CKA_DECRYPT ignored"), "{log}");

    // An HD child is a derived key: fixed, whatever a template or copy asks.
    let child = hd_child(&session, private, 0);
    assert!(!flag(&session, child, AttributeType::Modifiable));
    assert!(!flag(&session, child, AttributeType::Copyable));
    for attrs in [
        vec![Attribute::Label(b"mine".to_vec())],
        vec![Attribute::Sensitive(false)],
        vec![Attribute::Extractable(true)],
    ] {
        assert_eq!(
            rv_of(session.update_attributes(child, &attrs)),
            RvError::ActionProhibited,
            "{attrs:?}"
        );
        assert_eq!(
            rv_of(session.copy_object(child, &attrs)),
            RvError::ActionProhibited,
            "{attrs:?}"
        );
    }
    assert_eq!(
        raw_rv(&session, child, cryptoki_sys::CKA_VALUE),
        cryptoki_sys::CKR_ATTRIBUTE_SENSITIVE
    );
    assert_eq!(
        raw_rv(&session, private, cryptoki_sys::CKA_VALUE),
        cryptoki_sys::CKR_ATTRIBUTE_SENSITIVE
    );
}

#[test]
fn users_mode_session_objects_follow_its_roles_and_logins() {
    let _turn = turn();
    let s = users_setup_on(None);
    add_user(&s, "sam", "signer", "*", "sam-secret-1");
    add_user(&s, "ada", "auditor", "*", "ada-secret-1");
    let p = s.load();
    let session = p.session();
    let login = |who: &str| {
        session
            .login(
                cryptoki::session::UserType::User,
                Some(&cryptoki::types::AuthPin::from(who)),
            )
            .unwrap()
    };
    login("sam:sam-secret-1");
    let public_key = session
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(P256.to_vec()),
            Attribute::EcPoint(p256_point()),
        ])
        .unwrap();
    let key = session
        .create_object(&secret(
            &[6; 32],
            &[Attribute::Sensitive(false), Attribute::Extractable(true)],
        ))
        .unwrap();
    let note = session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Private(true),
            Attribute::Value(b"sam's".to_vec()),
        ])
        .unwrap();
    let copy = session.copy_object(key, &[]).unwrap();
    assert_eq!(bytes(&session, copy, AttributeType::Value), [6; 32]);
    session.logout().unwrap();
    // Private session objects need a login; an auditor makes none.
    for h in [key, note, copy] {
        assert_eq!(
            rv_of(session.get_attributes(h, &[AttributeType::Label])),
            RvError::ObjectHandleInvalid
        );
    }
    login("ada:ada-secret-1");
    let public_note = [
        Attribute::Class(ObjectClass::DATA),
        Attribute::Value(b"ada's".to_vec()),
    ];
    assert_eq!(
        rv_of(session.create_object(&public_note)),
        RvError::ActionProhibited
    );
    // Another user, logged in later in the same process, does not see
    // sam's private session objects.
    for h in [key, note, copy] {
        assert_eq!(
            rv_of(session.get_attributes(h, &[AttributeType::Value])),
            RvError::ObjectHandleInvalid
        );
    }
    assert!(session
        .find_objects(&[Attribute::Class(ObjectClass::DATA)])
        .unwrap()
        .is_empty());
    assert_eq!(
        rv_of(session.copy_object(key, &[])),
        RvError::ObjectHandleInvalid,
        "an auditor copies no key"
    );
    // A public one it sees, but makes no copy of (no signer role).
    assert_eq!(
        rv_of(session.copy_object(public_key, &[])),
        RvError::ActionProhibited
    );
    session.logout().unwrap();
    assert_eq!(
        rv_of(session.create_object(&public_note)),
        RvError::ActionProhibited,
        "no login, no session objects in users mode"
    );
}
