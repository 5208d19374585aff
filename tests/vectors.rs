//! Known-answer tests of the `p11derive-v1` scheme against the vectors in
//! tests/vectors/derivation.json, which an independent Python implementation
//! (tools/vectors/gen_vectors.py) produced.
//!
//! Three paths are checked: the scheme with the PRF computed in software from
//! the vector's root; the same with the PRF computed by SoftHSM holding that
//! root (imported through `p11derive init --import-root`); and the provider's
//! public keys, object ids and deterministic signatures through the C ABI.

mod common;

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass};
use hmac::{Hmac, KeyInit, Mac};
use p11derive::backend::Backend;
use p11derive::config::Config;
use p11derive::derive::{self, AssetId, KeyType, Prf, Secret32};
use serde_json::Value;
use sha2::{Digest, Sha256};

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
    if kt.is_ecdsa() {
        let point = p11derive::mechanisms::public_point_of(kt, &key).unwrap();
        assert_eq!(hex(&point), vec["public_point"], "{what}: public point");
    }
    // Design §6.1: the chain code of an EC version, from the same PRK.
    let version = derive::derive_version(prf, &asset, counter, kt).unwrap();
    assert_eq!(
        hex(&version.key[..]),
        vec["key"],
        "{what}: derive_version key"
    );
    if kt.is_ec() {
        let cc = derive::chain_code_from_prk(&prk).unwrap();
        assert_eq!(hex(&cc[..]), vec["chain_code"], "{what}: chain code");
        let chain = version
            .chain
            .as_ref()
            .expect("an EC version has a chain code");
        assert_eq!(
            hex(&chain[..]),
            vec["chain_code"],
            "{what}: derive_version chain"
        );
    } else {
        assert!(vec.get("chain_code").is_none(), "{what}: no chain code");
        assert!(version.chain.is_none(), "{what}: no chain code");
    }
    if kt == KeyType::Secp256k1 {
        let point = p11derive::mechanisms::public_point_of(kt, &key).unwrap();
        let cc = derive::chain_code_from_prk(&prk).unwrap();
        assert_eq!(
            xpub_depth0(&cc[..].try_into().unwrap(), &point),
            vec["xpub"],
            "{what}: xpub"
        );
    }
    if kt == KeyType::Ed25519 {
        let public = p11derive::mechanisms::eddsa::ed25519_public(&key[..]).unwrap();
        assert_eq!(
            hex(&public),
            vec["public_key"],
            "{what}: Ed25519 public key"
        );
        if let Some(sign) = vec.get("ed25519_sign") {
            let message = unhex(sign["message"].as_str().unwrap());
            let sig = p11derive::mechanisms::eddsa::ed25519_sign(&key[..], &message).unwrap();
            assert_eq!(hex(&sig), sign["signature"], "{what}: Ed25519 signature");
            p11derive::mechanisms::eddsa::ed25519_verify(&public, &message, &sig).unwrap();
        }
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

/// Base58 (the Bitcoin alphabet) of `data`, written here for the test.
fn base58(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    // Little-endian base-58 digits of the big-endian number `data`.
    let mut digits: Vec<u8> = Vec::new();
    for &byte in data {
        let mut carry = byte as u32;
        for d in digits.iter_mut() {
            carry += (*d as u32) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = data.iter().take_while(|&&b| b == 0).count();
    let mut out = "1".repeat(zeros);
    out.extend(digits.iter().rev().map(|&d| ALPHABET[d as usize] as char));
    out
}

/// The BIP-32 serialization of a master extended public key (design §6.1):
/// version 0x0488B21E, depth 0, parent fingerprint 0, child number 0, the
/// chain code, the compressed point; Base58Check.
fn xpub_depth0(chain_code: &[u8; 32], uncompressed: &[u8]) -> String {
    assert_eq!(uncompressed.len(), 65);
    let mut data = vec![0x04, 0x88, 0xb2, 0x1e, 0];
    data.extend_from_slice(&[0; 8]);
    data.extend_from_slice(chain_code);
    data.push(0x02 | (uncompressed[64] & 1));
    data.extend_from_slice(&uncompressed[1..33]);
    assert_eq!(data.len(), 78);
    let check = Sha256::digest(Sha256::digest(&data));
    data.extend_from_slice(&check[..4]);
    base58(&data)
}

#[test]
fn base58_and_xpub_serialization_follow_bip32() {
    assert_eq!(base58(&[0, 0, 1]), "112");
    assert_eq!(base58(b"hello world"), "StV1DL6CwTryKyV");
    // BIP-32 test vector 1, master key: chain code and public key of seed
    // 000102…0f.
    let cc: [u8; 32] = unhex("873dff81c02f525623fd1fe5167eac3a55a049de3d314bb42ee227ffed37d508")
        .try_into()
        .unwrap();
    let key: [u8; 32] = unhex("e8f32e723decf4051aefac8e2c93c9c5b214313817cdb01a1494b917c8436b35")
        .try_into()
        .unwrap();
    let point = p11derive::mechanisms::public_point(KeyType::Secp256k1, &key).unwrap();
    assert_eq!(
        xpub_depth0(&cc, &point),
        "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjqJoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8"
    );
}

/// Design §6.1 "more lengths and curves": every type by its name through
/// `derive::scheme_key_from_prk`, from the PRK a software PRF gives.
#[test]
fn more_types_match_vectors() {
    let v = vectors();
    let more = v["more_types"].as_array().unwrap();
    let mut names: Vec<&str> = more
        .iter()
        .map(|m| m["key_type"].as_str().unwrap())
        .collect();
    names.sort();
    names.dedup();
    for want in [
        "aes128",
        "aes192",
        "aes256",
        "hmac-sha256",
        "generic-secret-16",
        "generic-secret-48",
        "generic-secret-64",
        "p384",
        "p521",
        "ed25519",
        "p256",
        "secp256k1",
    ] {
        assert!(names.contains(&want), "more_types covers {want}");
    }
    let mut cleared = 0;
    for m in more {
        let name = m["key_type"].as_str().unwrap();
        let asset = AssetId::new(m["asset_id"].as_str().unwrap()).unwrap();
        let counter = m["counter"].as_u64().unwrap() as u32;
        let what = format!("{asset} counter {counter} {name}");
        let prf = SoftwarePrf(root(&v, m["root"].as_str().unwrap()));
        let prk = prf.prf(&derive::prk_input(&asset, counter)).unwrap();
        assert_eq!(hex(&prk[..]), m["prk"], "{what}: PRK");
        let scheme = derive::Scheme::from_name(name).expect(name);
        assert_eq!(scheme.name(), name);
        assert_eq!(scheme.key_len() as u64, m["length"].as_u64().unwrap());
        let key = derive::scheme_key_from_prk(&prk, scheme).unwrap();
        assert_eq!(hex(&key), m["key"], "{what}: key");
        // The 32-byte types of §2 give the same key either way.
        if let Some(kt) = KeyType::from_name(name).filter(|kt| KeyType::ALL.contains(kt)) {
            let k = derive::key_from_prk(&prk, kt).unwrap();
            assert_eq!(hex(&k[..]), m["key"], "{what}: key_from_prk");
        }
        let raw = unhex(
            m["attempts"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .as_str()
                .unwrap(),
        );
        if name == "p521" {
            assert_eq!(key[0], raw[0] & 0x01, "{what}: top 7 bits cleared");
            assert_eq!(&key[1..], &raw[1..], "{what}");
            cleared += usize::from(key[0] != raw[0]);
        } else {
            assert_eq!(&key[..], &raw[..], "{what}: the last attempt is the key");
        }
        let point = match name {
            "p256" | "secp256k1" => {
                let kt = KeyType::from_name(name).unwrap();
                p11derive::mechanisms::public_point(kt, &key[..].try_into().unwrap())
            }
            "p384" => {
                use p384::elliptic_curve::sec1::ToSec1Point;
                let sk = p384::SecretKey::from_slice(&key).unwrap();
                Some(sk.public_key().to_sec1_point(false).as_bytes().to_vec())
            }
            "p521" => {
                use p521::elliptic_curve::sec1::ToSec1Point;
                let sk = p521::SecretKey::from_slice(&key).unwrap();
                Some(sk.public_key().to_sec1_point(false).as_bytes().to_vec())
            }
            _ => None,
        };
        match (point, m.get("public_point")) {
            (Some(point), Some(want)) => assert_eq!(&hex(&point), want, "{what}: public point"),
            (None, None) => {}
            (got, want) => panic!("{what}: public point {got:?}, vector {want:?}"),
        }
    }
    assert!(cleared >= 1, "a p521 vector shows the top bits cleared");
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
    assert!(KeyType::ALL.contains(&KeyType::Ed25519));
    let signed = v["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["key_type"] == "ed25519" && x.get("ed25519_sign").is_some())
        .count();
    assert_eq!(signed, 1, "one Ed25519 signature vector");
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
        let ec_counter_1 = v["vectors"].as_array().unwrap().iter().filter(|x| {
            x["root"] == name
                && x["counter"] == 1
                && (x.get("public_point").is_some() || x.get("public_key").is_some())
        });
        let mut seen = 0;
        for vec in ec_counter_1 {
            seen += 1;
            let label = vec["asset_id"].as_str().unwrap();
            let ed25519 = vec["key_type"] == "ed25519";
            let params = match vec["key_type"].as_str().unwrap() {
                "secp256k1" => vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
                // id-Ed25519, 1.3.101.112 (design §6.1).
                "ed25519" => vec![0x06, 0x03, 0x2b, 0x65, 0x70],
                _ => vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            };
            let generate = if ed25519 {
                Mechanism::EccEdwardsKeyPairGen
            } else {
                Mechanism::EccKeyPairGen
            };
            let (public, private) = session
                .generate_key_pair(
                    &generate,
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
            let (want_point, ck_type) = if ed25519 {
                let mut p = vec![0x04, 0x20];
                p.extend(unhex(vec["public_key"].as_str().unwrap()));
                (p, CkKeyType::EC_EDWARDS)
            } else {
                let mut p = vec![0x04, 0x41];
                p.extend(unhex(vec["public_point"].as_str().unwrap()));
                (p, CkKeyType::EC)
            };
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
                    Attribute::KeyType(ck_type),
                    Attribute::Id(unhex(vec["version_id"].as_str().unwrap())),
                ])
                .unwrap();
            assert_eq!(version.len(), 1, "{label}: one private version object");
            if ed25519 {
                let eddsa = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
                let message = b"p11derive ed25519 vector";
                let want_sig = match vec.get("ed25519_sign") {
                    Some(sign) => {
                        assert_eq!(sign["message"], hex(message));
                        Some(sign["signature"].as_str().unwrap())
                    }
                    None => None,
                };
                for key in [private, version[0]] {
                    let sig = session.sign(&eddsa, key, message).unwrap();
                    if let Some(want) = want_sig {
                        assert_eq!(hex(&sig), want, "{label}: RFC 8032 signature");
                    }
                    session.verify(&eddsa, public, message, &sig).unwrap();
                }
                continue;
            }
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
        let keys = derive::derive_version(&prf, &asset, counter, KeyType::Aes256).unwrap();
        let (k, wrap) = (keys.key, keys.wrap);
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
    let keys = derive::derive_version(&prf, &asset, 1, KeyType::HmacSha256).unwrap();
    assert!(keys.wrap.is_none());
}

/// The chain codes and xpubs of design §6.1 as the independent generator
/// computed them, served by the CLI (`p11derive asset xpub`) and by the
/// provider (`CKA_P11DERIVE_CHAIN_CODE`, `CKA_P11DERIVE_XPUB` of the public
/// objects), with the known root inside SoftHSM.
#[test]
fn cli_and_provider_serve_the_vector_chain_codes_and_xpubs() {
    let _turn = turn();
    let v = vectors();
    let s = setup(Some(&root(&v, "A")));
    let ec: Vec<&Value> = v["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["root"] == "A" && x["counter"] == 1 && x.get("chain_code").is_some())
        .collect();
    assert!(ec.len() >= 3, "EC vectors with chain codes on root A");
    let mut kinds = std::collections::HashSet::new();
    for vec in &ec {
        let label = vec["asset_id"].as_str().unwrap();
        let kt = vec["key_type"].as_str().unwrap();
        kinds.insert(kt.to_string());
        s.create_asset(label, kt);
        let out = s
            .cli()
            .args(["--json", "asset", "xpub", label])
            .output()
            .unwrap();
        assert!(out.status.success(), "{label}: {}", output_text(&out));
        let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(shown["chain_code"], vec["chain_code"], "{label}");
        assert_eq!(shown["depth"], 0);
        assert_eq!(shown["path"], "m");
        let public = vec
            .get("public_point")
            .or_else(|| vec.get("public_key"))
            .unwrap();
        assert_eq!(shown["public_key"], *public, "{label}");
        if kt == "secp256k1" {
            assert_eq!(shown["xpub"], vec["xpub"], "{label}");
            let plain = s.cli().args(["asset", "xpub", label]).output().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&plain.stdout).trim(),
                vec["xpub"].as_str().unwrap()
            );
        } else {
            assert!(shown["xpub"].is_null(), "{label}: no xpub for {kt}");
            // Without --json there is no format to print: the key type
            // has no such operation (exit 3).
            let plain = s.cli().args(["asset", "xpub", label]).output().unwrap();
            assert_eq!(plain.status.code(), Some(3), "{}", output_text(&plain));
            assert!(stderr(&plain).contains("--json"), "{}", stderr(&plain));
        }
    }
    assert_eq!(kinds.len(), 3, "secp256k1, p256 and ed25519: {kinds:?}");
    let p = s.load();
    let session = p.user_session();
    let chain_code = AttributeType::VendorDefined(0x8000_0000 | 0x5044_0008);
    let xpub = AttributeType::VendorDefined(0x8000_0000 | 0x5044_0009);
    for vec in &ec {
        let label = vec["asset_id"].as_str().unwrap();
        let public = find_one(&session, label, ObjectClass::PUBLIC_KEY).unwrap();
        let attrs = session.get_attributes(public, &[chain_code]).unwrap();
        assert_eq!(
            attrs,
            vec![Attribute::VendorDefined((
                chain_code,
                unhex(vec["chain_code"].as_str().unwrap())
            ))],
            "{label}"
        );
        if vec["key_type"] == "secp256k1" {
            let attrs = session.get_attributes(public, &[xpub]).unwrap();
            assert_eq!(
                attrs,
                vec![Attribute::VendorDefined((
                    xpub,
                    vec["xpub"].as_str().unwrap().as_bytes().to_vec()
                ))],
                "{label}"
            );
        }
        // A non-hardened child's xpub: the CLI's, and the provider's on the
        // child that C_DeriveKey makes of the public object.
        if vec["key_type"] == "secp256k1" {
            let out = s
                .cli()
                .args(["asset", "xpub", label, "--path", "m/0/1"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", output_text(&out));
            let cli_xpub = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_ne!(cli_xpub, vec["xpub"].as_str().unwrap());
            // The parameter: an array of CK_ULONG indices.
            let path: [std::os::raw::c_ulong; 2] = [0, 1];
            let child = session
                .derive_key(
                    &Mechanism::VendorDefined(
                        cryptoki::mechanism::vendor_defined::VendorDefinedMechanism::new(
                            cryptoki::mechanism::MechanismType::new_vendor_defined(
                                0x8000_0000 | 0x5044_0001,
                            )
                            .unwrap(),
                            Some(&path),
                        ),
                    ),
                    public,
                    &[],
                )
                .unwrap();
            let attrs = session.get_attributes(child, &[xpub]).unwrap();
            assert_eq!(
                attrs,
                vec![Attribute::VendorDefined((xpub, cli_xpub.into_bytes()))]
            );
        }
        // The private object never shows the chain code.
        let private = find_one(&session, label, ObjectClass::PRIVATE_KEY).unwrap();
        let e = session.get_attributes(private, &[chain_code]);
        assert!(
            e.is_err() || e.as_ref().unwrap().is_empty(),
            "{label}: {e:?}"
        );
    }
}

/// The `more_types` vector of (root, type name, counter).
fn more_vector<'a>(v: &'a Value, root: &str, name: &str, counter: u64) -> Option<&'a Value> {
    v["more_types"].as_array().unwrap().iter().find(|m| {
        m["root"] == root
            && m["asset_id"] == "more-1"
            && m["key_type"] == name
            && m["counter"] == counter
    })
}

/// The uncompressed point of a P-384 or P-521 scalar, by the curve crates.
fn nist_point(name: &str, scalar: &[u8]) -> Vec<u8> {
    use p384::elliptic_curve::sec1::ToSec1Point;
    match name {
        "p384" => p384::SecretKey::from_slice(scalar)
            .unwrap()
            .public_key()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec(),
        _ => p521::SecretKey::from_slice(scalar)
            .unwrap()
            .public_key()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec(),
    }
}

/// Checks asset `more-1` version `counter` of type `asset_type` (derived as
/// `derivation`) in the provider against the vector key: what the store
/// records (public point or check value), and a use of the key checked with
/// RustCrypto crates given the vector's key bytes.
fn provider_uses_the_more_key(
    s: &Setup,
    asset_type: &str,
    derivation: &str,
    counter: u64,
    key: &[u8],
) {
    use cryptoki::mechanism::aead::GcmParams;
    let what = format!("more-1 v{counter} {asset_type} ({derivation})");
    let shown = s.asset_show("more-1");
    assert_eq!(shown["key_type"], asset_type, "{what}: asset show");
    let version = shown["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["version"] == counter)
        .unwrap();
    let held = version
        .get("public_key")
        .or_else(|| version.get("check_value"))
        .unwrap_or_else(|| panic!("{what}: no public key or check value in {version}"));
    let recorded = &unhex(held.as_str().unwrap());
    let p = s.load();
    let session = p.user_session();
    let label = format!("more-1@v{counter}");
    let message = b"p11derive more_types vector";
    match derivation {
        "p384" | "p521" => {
            let point = nist_point(derivation, key);
            assert_eq!(hex(recorded), hex(&point), "{what}: recorded point");
            let public = find_one(&session, &label, ObjectClass::PUBLIC_KEY).unwrap();
            let attrs = session
                .get_attributes(public, &[AttributeType::EcPoint])
                .unwrap();
            let mut der = vec![0x04, point.len() as u8];
            if point.len() > 127 {
                der = vec![0x04, 0x81, point.len() as u8];
            }
            der.extend_from_slice(&point);
            assert!(
                attrs.contains(&Attribute::EcPoint(der)),
                "{what}: CKA_EC_POINT"
            );
            let private = private_key(&session, &label);
            let (mech, digest) = if derivation == "p384" {
                (
                    Mechanism::EcdsaSha384,
                    sha2::Sha384::digest(message).to_vec(),
                )
            } else {
                (
                    Mechanism::EcdsaSha512,
                    sha2::Sha512::digest(message).to_vec(),
                )
            };
            let sig = session.sign(&mech, private, message).unwrap();
            use p384::ecdsa::signature::hazmat::PrehashVerifier;
            if derivation == "p384" {
                let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
                let sig = p384::ecdsa::Signature::from_slice(&sig).unwrap();
                vk.verify_prehash(&digest, &sig).expect("P-384 signature");
            } else {
                let vk = p521::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
                let sig = p521::ecdsa::Signature::from_slice(&sig).unwrap();
                vk.verify_prehash(&digest, &sig).expect("P-521 signature");
            }
        }
        d if d.starts_with("aes") => {
            use aes::cipher::{BlockCipherEncrypt, KeyInit as _};
            let mut block = aes::Block::default();
            match key.len() {
                16 => aes::Aes128::new_from_slice(key)
                    .unwrap()
                    .encrypt_block(&mut block),
                24 => aes::Aes192::new_from_slice(key)
                    .unwrap()
                    .encrypt_block(&mut block),
                _ => aes::Aes256::new_from_slice(key)
                    .unwrap()
                    .encrypt_block(&mut block),
            }
            assert_eq!(hex(recorded), hex(&block[..3]), "{what}: check value");
            let secret = find_one(&session, &label, ObjectClass::SECRET_KEY).unwrap();
            let attrs = session
                .get_attributes(secret, &[AttributeType::ValueLen])
                .unwrap();
            assert!(
                attrs.contains(&Attribute::ValueLen((key.len() as u64).into())),
                "{what}"
            );
            // AES-GCM through the provider, opened by the aes-gcm crate with
            // the vector's key.
            let mut iv = [7u8; 12];
            let gcm = GcmParams::new(&mut iv, b"aad", 128.into()).unwrap();
            let sealed = session
                .encrypt(&Mechanism::AesGcm(gcm), secret, message)
                .unwrap();
            use aes_gcm::aead::AeadInOut;
            let nonce = aes_gcm::Nonce::<aes_gcm::aead::consts::U12>::from([7u8; 12]);
            let (body, tag) = sealed.split_at(sealed.len() - 16);
            let tag = aes_gcm::aead::Tag::<aes_gcm::Aes128Gcm>::try_from(tag).unwrap();
            let mut buf = body.to_vec();
            let opened = match key.len() {
                16 => aes_gcm::Aes128Gcm::new_from_slice(key)
                    .unwrap()
                    .decrypt_inout_detached(&nonce, b"aad", buf.as_mut_slice().into(), &tag),
                32 => aes_gcm::Aes256Gcm::new_from_slice(key)
                    .unwrap()
                    .decrypt_inout_detached(&nonce, b"aad", buf.as_mut_slice().into(), &tag),
                _ => {
                    type Aes192Gcm = aes_gcm::AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>;
                    Aes192Gcm::new_from_slice(key)
                        .unwrap()
                        .decrypt_inout_detached(&nonce, b"aad", buf.as_mut_slice().into(), &tag)
                }
            }
            .map(|()| buf);
            assert_eq!(opened.expect("GCM opens with the vector key"), message);
        }
        _ => {
            let check = sha1::Sha1::digest(key);
            assert_eq!(hex(recorded), hex(&check[..3]), "{what}: check value");
            let secret = find_one(&session, &label, ObjectClass::SECRET_KEY).unwrap();
            let attrs = session
                .get_attributes(secret, &[AttributeType::ValueLen])
                .unwrap();
            assert!(
                attrs.contains(&Attribute::ValueLen((key.len() as u64).into())),
                "{what}"
            );
            let (mech, want) = match asset_type {
                t if t.starts_with("sha384-hmac") => {
                    let mut m = <Hmac<sha2::Sha384> as KeyInit>::new_from_slice(key).unwrap();
                    m.update(message);
                    (Mechanism::Sha384Hmac, m.finalize().into_bytes().to_vec())
                }
                t if t.starts_with("sha1-hmac") => {
                    let mut m = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key).unwrap();
                    m.update(message);
                    (Mechanism::Sha1Hmac, m.finalize().into_bytes().to_vec())
                }
                _ => {
                    let mut m = <Hmac<sha2::Sha512> as KeyInit>::new_from_slice(key).unwrap();
                    m.update(message);
                    (Mechanism::Sha512Hmac, m.finalize().into_bytes().to_vec())
                }
            };
            let tag = session.sign(&mech, secret, message).unwrap();
            assert_eq!(hex(&tag), hex(&want), "{what}: HMAC with the vector key");
            session.verify(&mech, secret, message, &want).unwrap();
        }
    }
}

/// Design §6.1 through the real provider: every `more_types` vector of a
/// new length or curve (and two `CKK_SHA*_HMAC` asset types derived as
/// `generic-secret-L`), with the vector's root imported into SoftHSM, the
/// asset made by `p11derive asset create --type` and rotated to counter 2
/// where the file has a vector there.
#[test]
fn provider_derives_the_more_types_vectors() {
    let _turn = turn();
    let v = vectors();
    let cases = [
        ("A", "aes128", "aes128"),
        ("A", "aes192", "aes192"),
        ("B", "aes128", "aes128"),
        ("A", "generic-secret-16", "generic-secret-16"),
        ("A", "generic-secret-48", "generic-secret-48"),
        ("A", "generic-secret-64", "generic-secret-64"),
        ("A", "generic-secret-32", "generic-secret-32"),
        ("A", "sha384-hmac-48", "generic-secret-48"),
        ("A", "sha1-hmac-16", "generic-secret-16"),
        ("A", "p384", "p384"),
        ("A", "p521", "p521"),
        ("B", "p384", "p384"),
        ("B", "p521", "p521"),
    ];
    let mut checked = 0;
    for (root_name, asset_type, derivation) in cases {
        let s = setup(Some(&root(&v, root_name)));
        s.create_asset("more-1", asset_type);
        for counter in [1, 2] {
            if counter == 2 {
                ok(&s, &["asset", "rotate", "more-1"]);
            }
            let Some(m) = more_vector(&v, root_name, derivation, counter) else {
                continue;
            };
            let key = unhex(m["key"].as_str().unwrap());
            provider_uses_the_more_key(&s, asset_type, derivation, counter, &key);
            checked += 1;
        }
    }
    // Every more_types vector of a new type is among them.
    let new = v["more_types"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            let kt = KeyType::from_name(m["key_type"].as_str().unwrap()).unwrap();
            !KeyType::ALL.contains(&kt)
        })
        .count();
    assert_eq!(checked, new + 2, "every new-type vector, two of them twice");
}
