//! The key types of design §6.1 as assets through the real provider (issue
//! 24): AES-128/192, generic secrets of 16 to 64 bytes, `CKK_SHA*_HMAC`
//! keys, P-384 and P-521 key pairs, each made by `C_GenerateKey` or
//! `C_GenerateKeyPair`, used, checked with RustCrypto crates (and OpenSSL)
//! given the key the vectors' root A derives, rotated, and refused where a
//! template asks for what no derived key is.

mod common;

use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use hmac::{Hmac, KeyInit, Mac};
use p11derive::derive::{self, AssetId, KeyType, Prf, Secret32};
use sha2::{Digest, Sha256};

use common::*;

/// Root A of tests/vectors/derivation.json.
fn root_a() -> [u8; 32] {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/derivation.json"
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    unhex(v["roots"]["A"].as_str().unwrap()).try_into().unwrap()
}

/// HMAC-SHA256 under the known root, only to know what the provider must
/// derive (the scheme itself is checked against the Python vectors in
/// tests/vectors.rs).
struct SoftwarePrf([u8; 32]);

impl Prf for SoftwarePrf {
    fn prf(&self, input: &[u8]) -> p11derive::Result<Secret32> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).unwrap();
        mac.update(input);
        let mut out = p11derive::secure::secret::<32>()?;
        out.copy_from_slice(&mac.finalize().into_bytes());
        Ok(out)
    }
}

/// The key asset `label` of type `kt` has at version `n` under root A.
fn expected(label: &str, kt: &str, n: u32) -> Vec<u8> {
    let kt = KeyType::from_name(kt).unwrap();
    let id = AssetId::new(label).unwrap();
    derive::derive_key(&SoftwarePrf(root_a()), &id, n, kt)
        .unwrap()
        .to_vec()
}

fn generate(
    session: &Session,
    mech: &Mechanism,
    label: &str,
    len: Option<u64>,
) -> Result<ObjectHandle, RvError> {
    let mut t = vec![
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    if let Some(len) = len {
        t.push(Attribute::ValueLen(len.into()));
    }
    session
        .generate_key(mech, &t)
        .map_err(|e| rv_of(Err::<(), _>(e)))
}

fn ulong_attr(session: &Session, key: ObjectHandle, ty: AttributeType) -> u64 {
    match session.get_attributes(key, &[ty]).unwrap().pop() {
        Some(Attribute::ValueLen(v)) => v.into(),
        other => panic!("{ty:?}: {other:?}"),
    }
}

fn key_type_of(session: &Session, key: ObjectHandle) -> CkKeyType {
    match session
        .get_attributes(key, &[AttributeType::KeyType])
        .unwrap()
        .pop()
    {
        Some(Attribute::KeyType(k)) => k,
        other => panic!("CKA_KEY_TYPE: {other:?}"),
    }
}

fn value_len(session: &Session, key: ObjectHandle) -> u64 {
    ulong_attr(session, key, AttributeType::ValueLen)
}

fn hmac_of(mech: &Mechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut m = <M as KeyInit>::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }
    match mech {
        Mechanism::Sha1Hmac => run::<Hmac<sha1::Sha1>>(key, data),
        Mechanism::Sha224Hmac => run::<Hmac<sha2::Sha224>>(key, data),
        Mechanism::Sha256Hmac => run::<Hmac<Sha256>>(key, data),
        Mechanism::Sha384Hmac => run::<Hmac<sha2::Sha384>>(key, data),
        Mechanism::Sha512Hmac => run::<Hmac<sha2::Sha512>>(key, data),
        _ => unreachable!(),
    }
}

const HMACS: [Mechanism<'static>; 5] = [
    Mechanism::Sha1Hmac,
    Mechanism::Sha224Hmac,
    Mechanism::Sha256Hmac,
    Mechanism::Sha384Hmac,
    Mechanism::Sha512Hmac,
];

/// HMAC through the provider equals HMAC by the crates with `key`, and
/// verifies (a changed tag does not).
fn hmac_agrees(session: &Session, handle: ObjectHandle, mech: &Mechanism, key: &[u8], what: &str) {
    let data = b"p11derive key types";
    let tag = session.sign(mech, handle, data).unwrap();
    assert_eq!(hex(&tag), hex(&hmac_of(mech, key, data)), "{what} {mech:?}");
    session.verify(mech, handle, data, &tag).unwrap();
    let mut bad = tag.clone();
    bad[0] ^= 1;
    assert_eq!(
        rv_of(session.verify(mech, handle, data, &bad)),
        RvError::SignatureInvalid,
        "{what}"
    );
}

#[test]
fn secret_keys_of_every_length_are_assets() {
    let _turn = turn();
    let s = setup(Some(&root_a()));
    let p = s.load();
    let session = p.user_session();

    // AES-128 and AES-192 (CKM_AES_KEY_GEN, CKA_VALUE_LEN 16 / 24).
    for (len, name) in [(16, "aes128"), (24, "aes192"), (32, "aes256")] {
        let label = format!("kt-{name}");
        let key = generate(&session, &Mechanism::AesKeyGen, &label, Some(len)).unwrap();
        assert_eq!(key_type_of(&session, key), CkKeyType::AES);
        assert_eq!(value_len(&session, key), len);
        let shown = s.asset_show(&label);
        assert_eq!(shown["key_type"], name);
        // The check value recorded is AES-ECB(K, 0)[..3] of the derived key.
        let k = expected(&label, name, 1);
        let mut block = aes::Block::default();
        {
            use aes::cipher::BlockCipherEncrypt;
            match len {
                16 => aes::Aes128::new_from_slice(&k)
                    .unwrap()
                    .encrypt_block(&mut block),
                24 => aes::Aes192::new_from_slice(&k)
                    .unwrap()
                    .encrypt_block(&mut block),
                _ => aes::Aes256::new_from_slice(&k)
                    .unwrap()
                    .encrypt_block(&mut block),
            }
        }
        assert_eq!(
            shown["versions"][0]["check_value"],
            hex(&block[..3]),
            "{name}"
        );
        // AES-GCM round trip through the provider.
        let mut iv = [3u8; 12];
        let sealed = session
            .encrypt(
                &Mechanism::AesGcm(GcmParams::new(&mut iv, b"", Ulong::from(128)).unwrap()),
                key,
                b"secret",
            )
            .unwrap();
        let opened = session
            .decrypt(
                &Mechanism::AesGcm(GcmParams::new(&mut iv, b"", Ulong::from(128)).unwrap()),
                key,
                &sealed,
            )
            .unwrap();
        assert_eq!(opened, b"secret");
    }
    for bad in [0, 8, 20, 33, 64] {
        assert_eq!(
            generate(&session, &Mechanism::AesKeyGen, "kt-bad-aes", Some(bad)),
            Err(RvError::AttributeValueInvalid),
            "AES of {bad} bytes"
        );
    }

    // Generic secrets: 32 without a length stays hmac-sha256, other lengths
    // are generic-secret-L, and sign with every HMAC.
    let key = generate(
        &session,
        &Mechanism::GenericSecretKeyGen,
        "kt-default",
        None,
    )
    .unwrap();
    assert_eq!(s.asset_show("kt-default")["key_type"], "hmac-sha256");
    assert_eq!(value_len(&session, key), 32);
    let k = expected("kt-default", "hmac-sha256", 1);
    for mech in &HMACS {
        hmac_agrees(&session, key, mech, &k, "hmac-sha256");
    }
    for len in [16u64, 17, 48, 64] {
        let label = format!("kt-generic-{len}");
        let name = format!("generic-secret-{len}");
        let key = generate(&session, &Mechanism::GenericSecretKeyGen, &label, Some(len)).unwrap();
        assert_eq!(key_type_of(&session, key), CkKeyType::GENERIC_SECRET);
        assert_eq!(value_len(&session, key), len);
        assert_eq!(s.asset_show(&label)["key_type"], name.as_str());
        let k = expected(&label, &name, 1);
        assert_eq!(k.len() as u64, len);
        for mech in &HMACS {
            hmac_agrees(&session, key, mech, &k, &name);
        }
    }
    for bad in [1, 15, 65, 512] {
        assert_eq!(
            generate(
                &session,
                &Mechanism::GenericSecretKeyGen,
                "kt-bad-gen",
                Some(bad)
            ),
            Err(RvError::AttributeValueInvalid),
            "generic secret of {bad} bytes"
        );
    }

    // CKK_SHA*_HMAC keys (PKCS#11 3.0 CKM_SHA*_KEY_GEN): the hash's length
    // by default, sign with their own hash only.
    let cases = [
        (
            Mechanism::Sha1KeyGen,
            Mechanism::Sha1Hmac,
            CkKeyType::SHA_1_HMAC,
            "sha1",
            20u64,
        ),
        (
            Mechanism::Sha224KeyGen,
            Mechanism::Sha224Hmac,
            CkKeyType::SHA224_HMAC,
            "sha224",
            28,
        ),
        (
            Mechanism::Sha256KeyGen,
            Mechanism::Sha256Hmac,
            CkKeyType::SHA256_HMAC,
            "sha256",
            32,
        ),
        (
            Mechanism::Sha384KeyGen,
            Mechanism::Sha384Hmac,
            CkKeyType::SHA384_HMAC,
            "sha384",
            48,
        ),
        (
            Mechanism::Sha512KeyGen,
            Mechanism::Sha512Hmac,
            CkKeyType::SHA512_HMAC,
            "sha512",
            64,
        ),
    ];
    for (gen, mac, ck, hash, default) in &cases {
        for len in [None, Some(40u64)] {
            let label = format!("kt-{hash}-{}", len.unwrap_or(0));
            let key = generate(&session, gen, &label, len).unwrap();
            let len = len.unwrap_or(*default);
            let name = format!("{hash}-hmac-{len}");
            assert_eq!(key_type_of(&session, key), *ck, "{name}");
            assert_eq!(value_len(&session, key), len, "{name}");
            assert_eq!(s.asset_show(&label)["key_type"], name.as_str());
            let k = expected(&label, &name, 1);
            hmac_agrees(&session, key, mac, &k, &name);
            for other in HMACS
                .iter()
                .filter(|m| m.mechanism_type() != mac.mechanism_type())
            {
                assert_eq!(
                    rv_of(session.sign_init(other, key)),
                    RvError::KeyTypeInconsistent,
                    "{name} with {other:?}"
                );
            }
        }
        assert_eq!(
            generate(&session, gen, "kt-bad-hmac", Some(65)),
            Err(RvError::AttributeValueInvalid)
        );
        assert_eq!(
            generate(&session, gen, "kt-bad-hmac", Some(15)),
            Err(RvError::AttributeValueInvalid)
        );
    }

    // Rotation gives another key; the new one is what the scheme derives at
    // counter 2, the old version still verifies.
    let data = b"rotated";
    let alias = find_one(
        &session,
        "kt-sha384-0",
        cryptoki::object::ObjectClass::SECRET_KEY,
    )
    .unwrap();
    let before = session.sign(&Mechanism::Sha384Hmac, alias, data).unwrap();
    ok(&s, &["asset", "rotate", "kt-sha384-0"]);
    let after = session.sign(&Mechanism::Sha384Hmac, alias, data).unwrap();
    assert_ne!(before, after, "rotation changes the key");
    let k2 = expected("kt-sha384-0", "sha384-hmac-48", 2);
    assert_eq!(
        hex(&after),
        hex(&hmac_of(&Mechanism::Sha384Hmac, &k2, data))
    );
    session
        .verify(&Mechanism::Sha384Hmac, alias, data, &before)
        .unwrap();
    ok(&s, &["asset", "rotate", "kt-generic-48"]);
    let alias = find_one(
        &session,
        "kt-generic-48",
        cryptoki::object::ObjectClass::SECRET_KEY,
    )
    .unwrap();
    let k2 = expected("kt-generic-48", "generic-secret-48", 2);
    hmac_agrees(
        &session,
        alias,
        &Mechanism::Sha1Hmac,
        &k2,
        "rotated generic",
    );

    drop(session);
    drop(p);
    s.audit_verifies();
}

fn openssl_verifies(dir: &std::path::Path, hash: &str, spki: &[u8], der_sig: &[u8], msg: &[u8]) {
    let (key, sig, data) = (dir.join("pub.der"), dir.join("sig.der"), dir.join("msg"));
    std::fs::write(&key, spki).unwrap();
    std::fs::write(&sig, der_sig).unwrap();
    std::fs::write(&data, msg).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", &format!("-{hash}"), "-keyform", "DER", "-verify"])
        .arg(&key)
        .arg("-signature")
        .arg(&sig)
        .arg(&data)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl dgst -{hash} -verify: {}",
        output_text(&out)
    );
}

fn pair(
    session: &Session,
    label: &str,
    params: Vec<u8>,
) -> Result<(ObjectHandle, ObjectHandle), RvError> {
    session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::Verify(true),
                Attribute::EcParams(params),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Sign(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
        .map_err(|e| rv_of(Err::<(), _>(e)))
}

fn point_and_spki(session: &Session, public: ObjectHandle) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let attrs = session
        .get_attributes(
            public,
            &[
                AttributeType::EcPoint,
                AttributeType::PublicKeyInfo,
                AttributeType::EcParams,
            ],
        )
        .unwrap();
    let mut point = None;
    let mut spki = None;
    let mut params = None;
    for a in attrs {
        match a {
            Attribute::EcPoint(p) => point = Some(p),
            Attribute::PublicKeyInfo(p) => spki = Some(p),
            Attribute::EcParams(p) => params = Some(p),
            _ => {}
        }
    }
    (point.unwrap(), spki.unwrap(), params.unwrap())
}

/// The point inside a CKA_EC_POINT OCTET STRING.
fn unwrap_octets(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x04);
    if der[1] == 0x81 {
        der[3..].to_vec()
    } else {
        der[2..].to_vec()
    }
}

#[test]
fn p384_and_p521_key_pairs_sign_for_openssl() {
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    use p384::elliptic_curve::sec1::ToSec1Point;
    let _turn = turn();
    let s = setup(Some(&root_a()));
    let p = s.load();
    let session = p.user_session();
    let dir = tempfile::tempdir().unwrap();
    let msg = b"p11derive on the NIST curves";
    let p384_oid = vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    let p521_oid = vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
    for (name, oid) in [("p384", p384_oid), ("p521", p521_oid)] {
        let label = format!("kt-{name}");
        let (public, private) = pair(&session, &label, oid.clone()).unwrap();
        assert_eq!(s.asset_show(&label)["key_type"], name);
        assert_eq!(key_type_of(&session, private), CkKeyType::EC);
        let (point_der, spki, params) = point_and_spki(&session, public);
        assert_eq!(params, oid);
        let point = unwrap_octets(&point_der);
        let scalar = expected(&label, name, 1);
        let want = if name == "p384" {
            p384::SecretKey::from_slice(&scalar)
                .unwrap()
                .public_key()
                .to_sec1_point(false)
                .as_bytes()
                .to_vec()
        } else {
            p521::SecretKey::from_slice(&scalar)
                .unwrap()
                .public_key()
                .to_sec1_point(false)
                .as_bytes()
                .to_vec()
        };
        assert_eq!(hex(&point), hex(&want), "{name}: the derived public point");
        let mechs: Vec<(Mechanism, &str, Vec<u8>)> = vec![
            (
                Mechanism::EcdsaSha256,
                "sha256",
                Sha256::digest(msg).to_vec(),
            ),
            (
                Mechanism::EcdsaSha384,
                "sha384",
                sha2::Sha384::digest(msg).to_vec(),
            ),
            (
                Mechanism::EcdsaSha512,
                "sha512",
                sha2::Sha512::digest(msg).to_vec(),
            ),
        ];
        for (mech, hash, digest) in mechs {
            let sig = session.sign(&mech, private, msg).unwrap();
            let again = session.sign(&mech, private, msg).unwrap();
            assert_eq!(sig, again, "{name}: RFC 6979 is deterministic");
            session.verify(&mech, public, msg, &sig).unwrap();
            let der = if name == "p384" {
                assert_eq!(sig.len(), 96);
                let sig = p384::ecdsa::Signature::from_slice(&sig).unwrap();
                p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                    .unwrap()
                    .verify_prehash(&digest, &sig)
                    .unwrap();
                sig.to_der().as_bytes().to_vec()
            } else {
                assert_eq!(sig.len(), 132);
                let sig = p521::ecdsa::Signature::from_slice(&sig).unwrap();
                p521::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                    .unwrap()
                    .verify_prehash(&digest, &sig)
                    .unwrap();
                sig.to_der().as_bytes().to_vec()
            };
            openssl_verifies(dir.path(), hash, &spki, &der, msg);
            // `p11derive verify` names the version that made it.
            let (sig_file, msg_file) = (dir.path().join("cli.sig"), dir.path().join("cli.msg"));
            std::fs::write(&sig_file, &der).unwrap();
            std::fs::write(&msg_file, msg).unwrap();
            let out = cli(
                &s,
                &[
                    "verify",
                    "--asset",
                    &label,
                    "--signature",
                    sig_file.to_str().unwrap(),
                    "--message",
                    msg_file.to_str().unwrap(),
                    "--hash",
                    hash,
                ],
            );
            assert!(
                out.status.success(),
                "p11derive verify {name}: {}",
                output_text(&out)
            );
        }
        // Raw CKM_ECDSA over a digest the caller made.
        let digest = sha2::Sha384::digest(msg);
        let sig = session.sign(&Mechanism::Ecdsa, private, &digest).unwrap();
        session
            .verify(&Mechanism::Ecdsa, public, &digest, &sig)
            .unwrap();
        // Rotation: another key, what the scheme derives at counter 2.
        ok(&s, &["asset", "rotate", &label]);
        let v2 = find_one(
            &session,
            &format!("{label}@v2"),
            cryptoki::object::ObjectClass::PUBLIC_KEY,
        )
        .unwrap();
        let (point2_der, _, _) = point_and_spki(&session, v2);
        assert_ne!(point2_der, point_der, "{name}: rotation changes the key");
        let scalar2 = expected(&label, name, 2);
        let want2 =
            p11derive::mechanisms::public_point_of(KeyType::from_name(name).unwrap(), &scalar2)
                .unwrap();
        assert_eq!(hex(&unwrap_octets(&point2_der)), hex(&want2));
        // The alias signs with version 2 now.
        let sig = session.sign(&Mechanism::EcdsaSha384, private, msg).unwrap();
        session
            .verify(&Mechanism::EcdsaSha384, v2, msg, &sig)
            .unwrap();
    }
    // A session key pair on each curve signs too.
    for oid in [
        vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
    ] {
        let (public, private) = session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[Attribute::Token(false), Attribute::EcParams(oid)],
                &[Attribute::Token(false), Attribute::Sign(true)],
            )
            .unwrap();
        let sig = session.sign(&Mechanism::EcdsaSha384, private, msg).unwrap();
        session
            .verify(&Mechanism::EcdsaSha384, public, msg, &sig)
            .unwrap();
    }
    // secp224r1 (1.3.132.0.33) and explicit nonsense are no curve of ours.
    for params in [
        vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x21],
        vec![0x05, 0x00],
    ] {
        assert_eq!(
            pair(&session, "kt-unknown", params),
            Err(RvError::CurveNotSupported)
        );
    }
    drop(session);
    drop(p);
    s.audit_verifies();
}
