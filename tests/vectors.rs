//! Known-answer tests of the `p11derive-v1` scheme against the vectors in
//! tests/vectors/derivation.json, which an independent Python implementation
//! (tools/vectors/gen_vectors.py) produced.
//!
//! Three paths are checked: the scheme with the PRF computed in software from
//! the vector's root; the same with the PRF computed by SoftHSM holding that
//! root (imported through `p11derive init --import-root`); and the provider's
//! public keys, object ids and deterministic signatures through the C ABI.

mod common;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass};
use hmac::{Hmac, KeyInit, Mac};
use p11derive::backend::Backend;
use p11derive::config::Config;
use p11derive::derive::{self, AssetId, KeyType, Prf, Secret32};
use serde_json::Value;
use sha2::Sha256;

use common::*;

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/derivation.json"
    ))
    .expect("vector file");
    serde_json::from_str(&text).expect("vector JSON")
}

fn root(v: &Value, name: &str) -> [u8; 32] {
    unhex(v["roots"][name].as_str().unwrap())
        .try_into()
        .unwrap()
}

/// HMAC-SHA256 under a root known to the test: only for checking the scheme.
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

fn check_vector(prf: &dyn Prf, vec: &Value) {
    let asset = AssetId::new(vec["asset_id"].as_str().unwrap()).unwrap();
    let counter = vec["counter"].as_u64().unwrap() as u32;
    let kt = KeyType::from_name(vec["key_type"].as_str().unwrap()).unwrap();
    let what = format!("{asset} counter {counter} {kt}");
    assert_eq!(
        hex(&derive::prk_input(&asset, counter)),
        vec["prf_input"],
        "{what}: PRF input"
    );
    let prk = prf.prf(&derive::prk_input(&asset, counter)).unwrap();
    assert_eq!(hex(&prk[..]), vec["prk"], "{what}: PRK");
    let key = derive::derive_key(prf, &asset, counter, kt).unwrap();
    assert_eq!(hex(&key[..]), vec["key"], "{what}: key");
    let attempts = vec["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.last().unwrap(),
        &vec["key"],
        "{what}: last attempt is the key"
    );
    assert_eq!(
        hex(&derive::default_object_id(&asset)),
        vec["default_id"],
        "{what}: default id"
    );
    let vid = derive::version_object_id(&derive::default_object_id(&asset), counter);
    assert_eq!(hex(&vid), vec["version_id"], "{what}: version id");
    if kt.is_ec() {
        let point = p11derive::mechanisms::public_point(kt, &key).unwrap();
        assert_eq!(hex(&point), vec["public_point"], "{what}: public point");
    }
    if kt == KeyType::HmacSha256 {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key[..]).unwrap();
        mac.update(&unhex(vec["mac"]["message"].as_str().unwrap()));
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            vec["mac"]["mac"],
            "{what}: MAC"
        );
    }
}

#[test]
fn the_design_vector_is_in_the_file() {
    let v = vectors();
    let first = &v["vectors"][0];
    assert_eq!(first["asset_id"], "vector-1");
    assert_eq!(
        first["key"],
        "7243046b0f3264ca3d6423629a088a968d9fec7d3533100c84d95ca91cfa1702"
    );
    assert_eq!(first["default_id"], "c8313cbfad5356344d6ce1d179934860");
}

#[test]
fn scheme_matches_vectors_with_a_software_prf() {
    let v = vectors();
    for vec in v["vectors"].as_array().unwrap() {
        let prf = SoftwarePrf(root(&v, vec["root"].as_str().unwrap()));
        check_vector(&prf, vec);
    }
    for name in ["A", "B"] {
        let ak = derive::audit_key(&SoftwarePrf(root(&v, name))).unwrap();
        assert_eq!(
            hex(&ak[..]),
            v["audit_keys"][name],
            "audit key of root {name}"
        );
    }
}

#[test]
fn the_retry_vector_needs_a_second_attempt() {
    let v = vectors();
    let retry = v["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["asset_id"] == "retry-0")
        .expect("retry vector");
    assert_eq!(retry["key_type"], "p256");
    assert_eq!(retry["attempts"].as_array().unwrap().len(), 2);
    let prf = SoftwarePrf(root(&v, "A"));
    check_vector(&prf, retry);
}

#[test]
fn every_key_type_is_covered() {
    let v = vectors();
    for kt in KeyType::ALL {
        let n = v["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["key_type"] == kt.name())
            .count();
        assert!(n >= 2, "{kt}: {n} vectors");
    }
}

#[test]
fn scheme_matches_vectors_with_the_root_inside_softhsm() {
    let _turn = turn();
    let v = vectors();
    for name in ["A", "B"] {
        let s = setup(Some(&root(&v, name)));
        let config = Config::load(&s.config).unwrap();
        let backend = Backend::open(&config.backend, &config.source).unwrap();
        backend
            .login(cryptoki_sys::CKU_USER, PIN.as_bytes())
            .unwrap();
        for vec in v["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["root"] == name)
        {
            check_vector(&backend, vec);
        }
        let ak = derive::audit_key(&backend).unwrap();
        assert_eq!(
            hex(&ak[..]),
            v["audit_keys"][name],
            "audit key of root {name} in SoftHSM"
        );
        backend.finalize();
    }
}

#[test]
fn provider_shows_the_vector_keys_and_signs_deterministically() {
    let _turn = turn();
    let v = vectors();
    for name in ["A", "B"] {
        let s = setup(Some(&root(&v, name)));
        let p = s.load();
        let session = p.user_session();
        let ec_counter_1 =
            v["vectors"].as_array().unwrap().iter().filter(|x| {
                x["root"] == name && x["counter"] == 1 && x.get("public_point").is_some()
            });
        let mut seen = 0;
        for vec in ec_counter_1 {
            seen += 1;
            let label = vec["asset_id"].as_str().unwrap();
            let params = match vec["key_type"].as_str().unwrap() {
                "secp256k1" => vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
                _ => vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            };
            let (public, private) = session
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
                .unwrap();
            let attrs = session
                .get_attributes(public, &[AttributeType::EcPoint, AttributeType::Id])
                .unwrap();
            let mut want_point = vec![0x04, 0x41];
            want_point.extend(unhex(vec["public_point"].as_str().unwrap()));
            assert!(
                attrs.contains(&Attribute::EcPoint(want_point)),
                "{label}: CKA_EC_POINT"
            );
            assert!(
                attrs.contains(&Attribute::Id(unhex(vec["default_id"].as_str().unwrap()))),
                "{label}: CKA_ID"
            );
            // The version object of counter 1 carries ASSET_ID || u32be(1).
            let version = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::KeyType(CkKeyType::EC),
                    Attribute::Id(unhex(vec["version_id"].as_str().unwrap())),
                ])
                .unwrap();
            assert_eq!(version.len(), 1, "{label}: one private version object");
            let message = unhex(vec["ecdsa_sha256"]["message"].as_str().unwrap());
            let want_sig = vec["ecdsa_sha256"]["signature"].as_str().unwrap();
            for key in [private, version[0]] {
                let sig = session
                    .sign(&Mechanism::EcdsaSha256, key, &message)
                    .unwrap();
                assert_eq!(hex(&sig), want_sig, "{label}: RFC 6979 signature");
            }
            session
                .verify(&Mechanism::EcdsaSha256, public, &message, &unhex(want_sig))
                .unwrap();
        }
        assert!(seen >= 2, "root {name}: {seen} EC vectors at counter 1");
    }
}

/// The key-wrap subkey of an AES version (the project's own derivation,
/// not design §2's): `W = HKDF-Expand(PRK, "p11derive-v1 wrap aes256", 32)`,
/// pinned to values Python's `hmac` computed from the vectors' PRKs, and
/// never the version's key `K`.
#[test]
fn wrap_subkeys_are_pinned() {
    let v = vectors();
    let prf = SoftwarePrf(root(&v, "A"));
    assert_eq!(derive::WRAP_INFO, b"p11derive-v1 wrap aes256");
    for (counter, w) in [
        (
            1,
            "0d34a45b92158aab9e66d5cda34c66463228df69427e87a225c74c5995a20358",
        ),
        (
            2,
            "5cfc9db188dcdb55a94cba3ed255f773cb56876ea361b33bb8f87297a6c6e8ee",
        ),
    ] {
        let asset = AssetId::new("seal").unwrap();
        let (k, wrap) = derive::derive_keys(&prf, &asset, counter, KeyType::Aes256).unwrap();
        let vec = v["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["root"] == "A" && x["asset_id"] == "seal" && x["counter"] == counter)
            .unwrap();
        assert_eq!(hex(&k[..]), vec["key"], "K of seal/{counter}");
        let wrap = wrap.expect("an AES version has a wrap subkey");
        assert_eq!(hex(&wrap[..]), w, "W of seal/{counter}");
        assert_ne!(&wrap[..], &k[..]);
        let prk: [u8; 32] = unhex(vec["prk"].as_str().unwrap()).try_into().unwrap();
        assert_eq!(hex(&derive::wrap_key_from_prk(&prk).unwrap()[..]), w);
    }
    // Other key types have none.
    let asset = AssetId::new("seal-hmac").unwrap();
    let (_, none) = derive::derive_keys(&prf, &asset, 1, KeyType::HmacSha256).unwrap();
    assert!(none.is_none());
}
