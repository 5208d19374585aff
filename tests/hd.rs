//! HD children through `C_DeriveKey` with `CKM_P11DERIVE_HD_CHILD` (design
//! §6.1), end to end through the built provider with SoftHSM behind it,
//! checked against an independent implementation: Python's `bip_utils`
//! 2.9.3 (BIP-32 / SLIP-10), with signatures verified by the `ecdsa` and
//! PyNaCl packages (tests/hd/reference.py).
//!
//! The strongest checks import the known root A of tests/vectors/derivation.json
//! into SoftHSM: the vector file holds each version's private key and chain
//! code, so the reference derives every child (hardened or not) from the
//! master's private key, as design §6.1 says any implementation must.
//!
//! Without `bip_utils` the tests fail under CI (the variable `CI` is set) and
//! are skipped with a message elsewhere.

mod common;
#[path = "common/reference.rs"]
mod reference;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde_json::{json, Value};

const VENDOR: u64 = 0x8000_0000;
const CKM_P11DERIVE_HD_CHILD: u64 = VENDOR | 0x5044_0001;
const CKA_P11DERIVE_CHAIN_CODE: u64 = VENDOR | 0x5044_0008;
const CKA_P11DERIVE_XPUB: u64 = VENDOR | 0x5044_0009;
const CKA_P11DERIVE_HD_PATH: u64 = VENDOR | 0x5044_000A;
const CKA_P11DERIVE_XONLY_KEY: u64 = VENDOR | 0x5044_000B;
const HARD: u64 = 0x8000_0000;
const CKM_ECDSA: u64 = 0x1041;
const CKM_P11DERIVE_ECDSA_RECOVERABLE: u64 = VENDOR | 0x5044_0002;
const CKM_P11DERIVE_BIP340: u64 = VENDOR | 0x5044_0003;

/// Whether python3 imports bip_utils (and the verifiers it brings). Under
/// CI a missing reference fails the test.
fn reference_available() -> bool {
    reference::python_imports(
        "import bip_utils, ecdsa, nacl.signing, coincurve",
        "the BIP-32/SLIP-10 reference",
        "`python3 -m pip install bip-utils==2.9.3`",
    )
}

/// The answers of tests/hd/reference.py to `requests`.
fn reference(requests: &[Value]) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hd/reference.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(requests).unwrap().as_bytes())
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "tests/hd/reference.py: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    let answers: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(answers.len(), requests.len());
    answers
}

fn one(request: Value) -> Value {
    reference(&[request]).remove(0)
}

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/derivation.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Root A of the vector file and its vector for `asset` at counter 1.
fn root_a_vector(asset: &str) -> ([u8; 32], Value) {
    let v = vectors();
    let root: [u8; 32] = unhex(v["roots"]["A"].as_str().unwrap()).try_into().unwrap();
    let vec = v["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["root"] == "A" && x["asset_id"] == asset && x["counter"] == 1)
        .unwrap_or_else(|| panic!("no vector for {asset}"))
        .clone();
    (root, vec)
}

/// "m/44'/0'/5" as indices.
fn indices(path: &str) -> Vec<u64> {
    path.strip_prefix("m/")
        .unwrap_or("")
        .split('/')
        .filter(|p| !p.is_empty())
        .map(|p| match p.strip_suffix('\'') {
            Some(h) => h.parse::<u64>().unwrap() | HARD,
            None => p.parse().unwrap(),
        })
        .collect()
}

/// A vendor mechanism whose parameter is `param`'s bytes.
fn hd_mechanism<T>(param: Option<&T>) -> Mechanism<'_> {
    Mechanism::VendorDefined(VendorDefinedMechanism::new(
        MechanismType::new_vendor_defined(CKM_P11DERIVE_HD_CHILD).unwrap(),
        param,
    ))
}

/// `C_DeriveKey(CKM_P11DERIVE_HD_CHILD, indices of path)` on `base`.
fn derive_with(
    s: &Session,
    base: ObjectHandle,
    path: &str,
    template: &[Attribute],
) -> cryptoki::error::Result<ObjectHandle> {
    let idx = indices(path);
    macro_rules! go {
        ($n:literal) => {{
            let a: [u64; $n] = idx.as_slice().try_into().unwrap();
            s.derive_key(&hd_mechanism(Some(&a)), base, template)
        }};
    }
    match idx.len() {
        1 => go!(1),
        2 => go!(2),
        3 => go!(3),
        4 => go!(4),
        5 => go!(5),
        6 => go!(6),
        n => panic!("{n} indices"),
    }
}

fn derive(s: &Session, base: ObjectHandle, path: &str) -> ObjectHandle {
    derive_with(s, base, path, &[]).unwrap_or_else(|e| panic!("derive {path}: {e}"))
}

fn vendor_attr(s: &Session, h: ObjectHandle, ty: u64) -> Vec<u8> {
    let got = s
        .get_attributes(h, &[AttributeType::VendorDefined(ty)])
        .unwrap_or_else(|e| panic!("attribute {ty:#x}: {e}"));
    match got.as_slice() {
        [Attribute::VendorDefined((_, v))] => v.clone(),
        other => panic!("attribute {ty:#x}: {other:?}"),
    }
}

/// The return code of `C_GetAttributeValue` for the one attribute `ty`
/// (through the raw interface: cryptoki hides unavailable attributes).
fn attr_rv(s: &Session, h: ObjectHandle, ty: u64) -> u64 {
    let r = raw();
    let mut buf = [0u8; 256];
    let mut attr = cryptoki_sys::CK_ATTRIBUTE {
        type_: ty,
        pValue: buf.as_mut_ptr().cast(),
        ulValueLen: buf.len() as _,
    };
    call!(r, C_GetAttributeValue(s.handle(), h.handle(), &mut attr, 1))
}

/// The key in CKA_EC_POINT, without its DER OCTET STRING header: the SEC1
/// uncompressed point, or the 32-byte Ed25519 key.
fn point(s: &Session, h: ObjectHandle) -> Vec<u8> {
    match s
        .get_attributes(h, &[AttributeType::EcPoint])
        .unwrap()
        .as_slice()
    {
        [Attribute::EcPoint(p)] => {
            assert_eq!(p[0], 0x04, "an OCTET STRING");
            assert_eq!(usize::from(p[1]), p.len() - 2);
            p[2..].to_vec()
        }
        other => panic!("CKA_EC_POINT: {other:?}"),
    }
}

fn label_of(s: &Session, h: ObjectHandle) -> String {
    match s
        .get_attributes(h, &[AttributeType::Label])
        .unwrap()
        .as_slice()
    {
        [Attribute::Label(l)] => String::from_utf8(l.clone()).unwrap(),
        other => panic!("CKA_LABEL: {other:?}"),
    }
}

fn public_key(s: &Session, label: &str) -> ObjectHandle {
    find_one(s, label, ObjectClass::PUBLIC_KEY).unwrap_or_else(|| panic!("no public {label}"))
}

/// The asset's own objects (the alias: its current version).
fn asset_objects(s: &Session, label: &str) -> (ObjectHandle, ObjectHandle) {
    (private_key(s, label), public_key(s, label))
}

fn vendor_sign(s: &Session, key: ObjectHandle, mechanism: u64, data: &[u8]) -> Vec<u8> {
    let m = Mechanism::VendorDefined(VendorDefinedMechanism::new::<u8>(
        MechanismType::new_vendor_defined(mechanism).unwrap(),
        None,
    ));
    s.sign(&m, key, data)
        .unwrap_or_else(|e| panic!("sign with {mechanism:#x}: {e}"))
}

/// A secp256k1 child's recoverable ECDSA and BIP-340 signatures: recovery
/// (coincurve) yields the reference's child key, and the BIP-340 signature
/// verifies under its x coordinate.
fn ethereum_and_taproot_check(s: &Session, key: ObjectHandle, public: &str) {
    let digest = [0x17u8; 32];
    let rec = vendor_sign(s, key, CKM_P11DERIVE_ECDSA_RECOVERABLE, &digest);
    assert_eq!(rec.len(), 65);
    assert!(rec[64] <= 1, "v is the recovery id");
    let got = one(json!({"op": "recover", "signature": hex(&rec), "digest": hex(&digest)}));
    assert_eq!(got["public"].as_str().unwrap(), public, "ecrecover");
    let schnorr = vendor_sign(s, key, CKM_P11DERIVE_BIP340, &digest);
    assert_eq!(schnorr.len(), 64);
    let xonly = &public[2..66];
    assert_eq!(hex(&vendor_attr(s, key, CKA_P11DERIVE_XONLY_KEY)), xonly);
    let verdict = |m: &[u8]| {
        one(
            json!({"op": "bip340", "xonly": xonly, "signature": hex(&schnorr),
                   "message": hex(m)}),
        )["valid"]
            .as_bool()
            .unwrap()
    };
    assert!(verdict(&digest), "BIP-340 signature of the child");
    assert!(!verdict(&[0x18u8; 32]), "the verifier is not lax");
}

/// Signs a digest with CKM_ECDSA; the reference verifies it under `public`.
fn ecdsa_checks(s: &Session, key: ObjectHandle, curve: &str, public: &str) {
    let digest = [0x5au8; 32];
    let sig = s.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
    assert_eq!(sig.len(), 64);
    let verdict = |d: &[u8]| {
        one(json!({"op": "verify", "curve": curve, "public": public,
                   "digest": hex(d), "signature": hex(&sig)}))["valid"]
            .as_bool()
            .unwrap()
    };
    assert!(verdict(&digest), "{curve}: the child's signature verifies");
    assert!(!verdict(&[0x5bu8; 32]), "{curve}: the verifier is not lax");
    assert!(ecdsa_verifies(curve, &unhex(public), &digest, &sig));
}

/// An Ed25519 asset made with C_GenerateKeyPair (the CLI makes ECDSA and
/// secret assets only).
fn create_ed25519(s: &Session, label: &str) {
    s.generate_key_pair(
        &Mechanism::EccEdwardsKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::EcParams(vec![0x06, 0x03, 0x2b, 0x65, 0x70]),
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
}

fn private_request(curve: &str, vec: &Value, path: &str) -> Value {
    json!({"op": "private", "curve": curve, "key": vec["key"],
           "chain_code": vec["chain_code"], "path": path})
}

#[test]
fn secp256k1_children_are_bip32_children() {
    if !reference_available() {
        return;
    }
    let _t = turn();
    let (root, vec) = root_a_vector("vector-1");
    let s = setup(Some(&root));
    s.create_asset("vector-1", "secp256k1");
    let p = s.load();
    let session = p.user_session();
    let (private, public) = asset_objects(&session, "vector-1");
    assert_eq!(hex(&point(&session, public)), vec["public_point"]);

    // The asset's chain code and xpub are the vector's (design §6.1).
    let xpub = String::from_utf8(vendor_attr(&session, public, CKA_P11DERIVE_XPUB)).unwrap();
    assert_eq!(xpub, vec["xpub"].as_str().unwrap());
    let cc = vendor_attr(&session, public, CKA_P11DERIVE_CHAIN_CODE);
    assert_eq!(hex(&cc), vec["chain_code"].as_str().unwrap());
    assert!(vendor_attr(&session, public, CKA_P11DERIVE_HD_PATH).is_empty());

    // Non-hardened: bip_utils from the xpub alone.
    for path in ["m/0", "m/0/1", "m/7/3/2147483647"] {
        let want = one(json!({"op": "xpub", "xpub": xpub, "path": path}));
        let from_private = derive(&session, private, path);
        let from_public = derive(&session, public, path);
        assert_eq!(
            hex(&point(&session, from_private)),
            want["public"].as_str().unwrap(),
            "{path} from the private object"
        );
        assert_eq!(
            hex(&point(&session, from_public)),
            want["public"].as_str().unwrap(),
            "{path} from the public object"
        );
        let child_xpub = vendor_attr(&session, from_public, CKA_P11DERIVE_XPUB);
        assert_eq!(
            String::from_utf8(child_xpub).unwrap(),
            want["xpub"].as_str().unwrap(),
            "{path}: xpub"
        );
        assert_eq!(
            hex(&vendor_attr(
                &session,
                from_public,
                CKA_P11DERIVE_CHAIN_CODE
            )),
            want["chain_code"].as_str().unwrap()
        );
        let hd_path: Vec<u64> = vendor_attr(&session, from_private, CKA_P11DERIVE_HD_PATH)
            .chunks(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(hd_path, indices(path));
        assert_eq!(
            label_of(&session, from_private),
            format!("vector-1@v1:{path}")
        );
        // The x-only key is the point's x coordinate.
        assert_eq!(
            vendor_attr(&session, from_private, CKA_P11DERIVE_XONLY_KEY),
            point(&session, from_private)[1..33]
        );
        // Signatures verify under the reference's child key.
        ecdsa_checks(
            &session,
            from_private,
            "secp256k1",
            want["public"].as_str().unwrap(),
        );
        ethereum_and_taproot_check(&session, from_private, want["public"].as_str().unwrap());
        // And the same from the master's private key.
        let known = one(private_request("secp256k1", &vec, path));
        assert_eq!(known["public"], want["public"], "{path}");
    }

    // Hardened: the reference from the master's private key and CC.
    let full = "m/44'/0'/0'/0/5";
    let account = "m/44'/0'/0'";
    let answers = reference(&[
        private_request("secp256k1", &vec, full),
        private_request("secp256k1", &vec, account),
    ]);
    let ours_full = derive(&session, private, full);
    assert_eq!(
        hex(&point(&session, ours_full)),
        answers[0]["public"].as_str().unwrap(),
        "{full}"
    );
    let ours_account = derive(&session, private, account);
    assert_eq!(
        hex(&point(&session, ours_account)),
        answers[1]["public"].as_str().unwrap(),
        "{account}"
    );
    // Paths concatenate: 0/5 below the account child is the full path.
    let stepped = derive(&session, ours_account, "m/0/5");
    assert_eq!(point(&session, stepped), point(&session, ours_full));
    assert_eq!(label_of(&session, stepped), format!("vector-1@v1:{full}"));
    // The account's xpub (from the reference) derives, without any private
    // key, the key our private derivation of the full path gives.
    let from_xpub = one(json!({"op": "xpub", "xpub": answers[1]["xpub"], "path": "m/0/5"}));
    assert_eq!(
        hex(&point(&session, ours_full)),
        from_xpub["public"].as_str().unwrap()
    );
    ecdsa_checks(
        &session,
        ours_full,
        "secp256k1",
        answers[0]["public"].as_str().unwrap(),
    );
    ethereum_and_taproot_check(&session, ours_full, answers[0]["public"].as_str().unwrap());
}

#[test]
fn p256_children_are_slip10_children() {
    if !reference_available() {
        return;
    }
    let _t = turn();
    let (root, vec) = root_a_vector("hot-wallet.eth_01");
    let s = setup(Some(&root));
    s.create_asset("hot-wallet.eth_01", "p256");
    let p = s.load();
    let session = p.user_session();
    let (private, public) = asset_objects(&session, "hot-wallet.eth_01");
    let master = hex(&point(&session, public));
    assert_eq!(master, vec["public_point"].as_str().unwrap());
    let cc = hex(&vendor_attr(&session, public, CKA_P11DERIVE_CHAIN_CODE));
    assert_eq!(cc, vec["chain_code"].as_str().unwrap());
    assert_ne!(
        attr_rv(&session, public, CKA_P11DERIVE_XPUB),
        cryptoki_sys::CKR_OK,
        "no xpub for P-256"
    );
    for path in ["m/0", "m/0/1", "m/7/3/2147483647"] {
        let want = reference(&[
            json!({"op": "public", "curve": "p256", "public": master,
                   "chain_code": cc, "path": path}),
            private_request("p256", &vec, path),
        ]);
        assert_eq!(want[0]["public"], want[1]["public"]);
        let from_private = derive(&session, private, path);
        let from_public = derive(&session, public, path);
        for h in [from_private, from_public] {
            assert_eq!(
                hex(&point(&session, h)),
                want[0]["public"].as_str().unwrap(),
                "{path}"
            );
        }
        assert_eq!(
            hex(&vendor_attr(
                &session,
                from_public,
                CKA_P11DERIVE_CHAIN_CODE
            )),
            want[0]["chain_code"].as_str().unwrap()
        );
        ecdsa_checks(
            &session,
            from_private,
            "p256",
            want[0]["public"].as_str().unwrap(),
        );
    }
    for path in ["m/44'/0'/0'/0/5", "m/0'", "m/2147483647'/1"] {
        let want = one(private_request("p256", &vec, path));
        let ours = derive(&session, private, path);
        assert_eq!(
            hex(&point(&session, ours)),
            want["public"].as_str().unwrap(),
            "{path}"
        );
        ecdsa_checks(&session, ours, "p256", want["public"].as_str().unwrap());
    }
}

#[test]
fn ed25519_children_are_slip10_children() {
    if !reference_available() {
        return;
    }
    let _t = turn();
    let (root, vec) = root_a_vector("ed-1");
    let s = setup(Some(&root));
    let p = s.load();
    let session = p.user_session();
    create_ed25519(&session, "ed-1");
    let (private, public) = asset_objects(&session, "ed-1");
    assert_eq!(
        hex(&point(&session, public)),
        vec["public_key"].as_str().unwrap()
    );
    assert_eq!(
        hex(&vendor_attr(&session, public, CKA_P11DERIVE_CHAIN_CODE)),
        vec["chain_code"].as_str().unwrap()
    );
    let eddsa = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    for path in ["m/44'/501'/0'/0'", "m/0'", "m/44'/501'/2147483647'"] {
        let want = one(private_request("ed25519", &vec, path));
        let child = derive(&session, private, path);
        let key = point(&session, child);
        assert_eq!(hex(&key), want["public"].as_str().unwrap(), "{path}");
        let message = b"p11derive hd ed25519 child";
        let sig = session.sign(&eddsa, child, message).unwrap();
        let verdict = |m: &[u8]| {
            one(
                json!({"op": "verify", "curve": "ed25519", "public": hex(&key),
                       "message": hex(m), "signature": hex(&sig)}),
            )["valid"]
                .as_bool()
                .unwrap()
        };
        assert!(verdict(message), "{path}: the child's Ed25519 signature");
        assert!(
            !verdict(b"another message"),
            "{path}: the verifier is not lax"
        );
    }
    // Stepwise equals the full path.
    let a = derive(&session, private, "m/44'/501'");
    let b = derive(&session, a, "m/0'/0'");
    let want = one(private_request("ed25519", &vec, "m/44'/501'/0'/0'"));
    assert_eq!(hex(&point(&session, b)), want["public"].as_str().unwrap());
}

fn rv<T: std::fmt::Debug>(r: cryptoki::error::Result<T>) -> RvError {
    rv_of(r)
}

#[test]
fn refusals_name_the_right_return_codes() {
    let _t = turn();
    let s = setup(None);
    s.create_asset("k1", "secp256k1");
    s.create_asset("seal", "aes256");
    let p = s.load();
    let session = p.user_session();
    create_ed25519(&session, "ed");
    let (private, public) = asset_objects(&session, "k1");
    let (ed_private, ed_public) = asset_objects(&session, "ed");

    // Ed25519 takes hardened children only; public objects non-hardened only.
    assert_eq!(
        rv(derive_with(&session, ed_private, "m/0'/1", &[])),
        RvError::MechanismParamInvalid
    );
    assert_eq!(
        rv(derive_with(&session, ed_public, "m/0", &[])),
        RvError::MechanismParamInvalid
    );
    assert_eq!(
        rv(derive_with(&session, public, "m/0/1'", &[])),
        RvError::MechanismParamInvalid
    );
    // Empty and ragged parameters.
    assert_eq!(
        rv(session.derive_key(&hd_mechanism::<u8>(None), private, &[])),
        RvError::MechanismParamInvalid
    );
    let ragged = [1u8, 0, 0, 0, 0];
    assert_eq!(
        rv(session.derive_key(&hd_mechanism(Some(&ragged)), private, &[])),
        RvError::MechanismParamInvalid
    );
    let too_big = [1u64 << 32];
    assert_eq!(
        rv(session.derive_key(&hd_mechanism(Some(&too_big)), private, &[])),
        RvError::MechanismParamInvalid
    );
    // Children are session objects, sensitive and never extractable.
    for bad in [
        Attribute::Token(true),
        Attribute::Extractable(true),
        Attribute::Sensitive(false),
    ] {
        assert_eq!(
            rv(derive_with(
                &session,
                private,
                "m/0",
                std::slice::from_ref(&bad)
            )),
            RvError::TemplateInconsistent,
            "{bad:?}"
        );
    }
    // An AES asset is no HD tree.
    let seal = find_one(&session, "seal", ObjectClass::SECRET_KEY).unwrap();
    assert_eq!(
        rv(derive_with(&session, seal, "m/0", &[])),
        RvError::KeyTypeInconsistent
    );
    // Chain codes show on public objects only; a child's key never.
    assert_eq!(
        attr_rv(&session, private, CKA_P11DERIVE_CHAIN_CODE),
        cryptoki_sys::CKR_ATTRIBUTE_SENSITIVE
    );
    let child = derive(&session, private, "m/1'/2");
    assert_eq!(
        attr_rv(&session, child, cryptoki_sys::CKA_VALUE),
        cryptoki_sys::CKR_ATTRIBUTE_SENSITIVE
    );
    assert_eq!(
        attr_rv(&session, child, CKA_P11DERIVE_CHAIN_CODE),
        cryptoki_sys::CKR_ATTRIBUTE_SENSITIVE
    );
    // A caller's label is kept.
    let named = derive_with(
        &session,
        private,
        "m/3",
        &[Attribute::Label(b"mine".to_vec())],
    )
    .unwrap();
    assert_eq!(label_of(&session, named), "mine");

    // A suspended asset: no new child, and an existing child signs no more.
    ok(&s, &["asset", "suspend", "k1"]);
    assert_eq!(
        rv(derive_with(&session, private, "m/0", &[])),
        RvError::KeyFunctionNotPermitted
    );
    assert_eq!(
        rv(session.sign(&Mechanism::Ecdsa, child, &[1u8; 32])),
        RvError::KeyFunctionNotPermitted
    );
    ok(&s, &["asset", "resume", "k1"]);
    session.sign(&Mechanism::Ecdsa, child, &[1u8; 32]).unwrap();

    // Rotation with a grace window: the alias derives the new version's
    // children, the old child signs until `asset finish`.
    let old_point = point(&session, child);
    ok(&s, &["asset", "rotate", "k1", "--grace"]);
    let (private2, _) = asset_objects(&session, "k1");
    let new_child = derive(&session, private2, "m/1'/2");
    assert_eq!(label_of(&session, new_child), "k1@v2:m/1'/2");
    assert_ne!(point(&session, new_child), old_point);
    session
        .sign(&Mechanism::Ecdsa, new_child, &[1u8; 32])
        .unwrap();
    session
        .sign(&Mechanism::Ecdsa, child, &[1u8; 32])
        .expect("the v1 child signs in the grace window");
    ok(&s, &["asset", "finish", "k1"]);
    assert_eq!(
        rv(session.sign(&Mechanism::Ecdsa, child, &[1u8; 32])),
        RvError::KeyFunctionNotPermitted
    );
    // Without grace the old version's children stop at once.
    ok(&s, &["asset", "rotate", "k1"]);
    assert_eq!(
        rv(session.sign(&Mechanism::Ecdsa, new_child, &[1u8; 32])),
        RvError::KeyFunctionNotPermitted
    );
    // `k1@v1` still names version 1, which verifies but makes no signing child.
    let v1 = private_key(&session, "k1@v1");
    assert_eq!(
        rv(derive_with(&session, v1, "m/0", &[])),
        RvError::KeyFunctionNotPermitted
    );

    // After logout the private child is gone from sight.
    let (private3, _) = asset_objects(&session, "k1");
    let last = derive(&session, private3, "m/9");
    assert_eq!(
        find_one(&session, "k1@v3:m/9", ObjectClass::PRIVATE_KEY),
        Some(last)
    );
    session.logout().unwrap();
    assert_eq!(
        find_one(&session, "k1@v3:m/9", ObjectClass::PRIVATE_KEY),
        None
    );
    assert!(session
        .get_attributes(last, &[AttributeType::Label])
        .is_err());
    // The chain code is derived inside the backing HSM: none without a login.
    let public3 = public_key(&session, "k1");
    assert_ne!(
        attr_rv(&session, public3, CKA_P11DERIVE_CHAIN_CODE),
        cryptoki_sys::CKR_OK
    );
    assert_eq!(
        rv(derive_with(&session, public3, "m/0", &[])),
        RvError::UserNotLoggedIn
    );
}

#[test]
fn child_signatures_and_derivations_are_audited_with_the_path() {
    let _t = turn();
    let s = setup(None);
    s.create_asset("aud", "secp256k1");
    let p = s.load();
    let session = p.user_session();
    let (private, _) = asset_objects(&session, "aud");
    let child = derive(&session, private, "m/44'/60'/0'/0/5");
    session.sign(&Mechanism::Ecdsa, child, &[3u8; 32]).unwrap();
    drop(session);
    drop(p);
    let records = s.audit_records(&["--asset", "aud"]);
    let detail = |r: &Value| r["detail"].as_str().unwrap_or("").to_string();
    let created = records
        .iter()
        .find(|r| r["event"] == "object-create" && detail(r).contains("path=m/44'/60'/0'/0/5"))
        .unwrap_or_else(|| panic!("no object-create record with the path: {records:?}"));
    assert_eq!(created["version"], 1);
    assert_eq!(created["mechanism"], CKM_P11DERIVE_HD_CHILD);
    let signed = records
        .iter()
        .find(|r| r["event"] == "sign" && r["rv"] == 0)
        .unwrap_or_else(|| panic!("no sign record: {records:?}"));
    assert_eq!(signed["asset"], "aud");
    assert_eq!(signed["version"], 1);
    assert_eq!(signed["mechanism"], CKM_ECDSA);
    assert!(detail(signed).contains("path=m/44'/60'/0'/0/5"), "{signed}");
    assert_eq!(signed["input_sha256"], sha256_hex(&[3u8; 32]));
    s.audit_verifies();
}

fn admin(s: &Setup, args: &[&str]) {
    ok_as(s, "admin", ADMIN, args);
}

/// Users mode: bob signs for `eth-*` under a policy that lets only keys
/// below m/44'/60'/0' sign.
fn stdout_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn path_cast() -> Setup {
    let s = users_setup_on(None);
    add_user(&s, "bob", "signer", "eth-*", "bob-secret-1");
    add_user(&s, "carol", "officer", "*", "carol-secret-1");
    add_user(&s, "dave", "auditor", "*", "dave-secret-1");
    ok_as(
        &s,
        "carol",
        "carol-secret-1",
        &["asset", "create", "eth-1", "--type", "secp256k1"],
    );
    admin(&s, &["policy", "set", "eth-*", "--paths", "m/44'/60'/0'"]);
    s
}

fn bob_session(p: &Provider) -> Session {
    let session = p.session();
    session
        .login(
            cryptoki::session::UserType::User,
            Some(&cryptoki::types::AuthPin::from("bob:bob-secret-1")),
        )
        .unwrap();
    session
}

/// `audit export --asset eth-1` read by the admin (users mode).
fn eth_records(s: &Setup) -> Vec<Value> {
    let out = as_user(
        s,
        "dave",
        "dave-secret-1",
        &["audit", "export", "--asset", "eth-1"],
    );
    assert!(out.status.success(), "audit export: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn eth_signed(s: &Setup) -> usize {
    eth_records(s)
        .iter()
        .filter(|r| r["event"] == "sign" && r["rv"] == 0)
        .count()
}

fn refused_with(s: &Setup, rule: &str, path: &str) -> bool {
    eth_records(s).iter().any(|r| {
        let d = r["detail"].as_str().unwrap_or("");
        r["event"] == "refused" && d.contains(&format!("rule={rule}")) && d.contains(path)
    })
}

#[test]
fn a_path_policy_limits_which_keys_sign() {
    let _t = turn();
    let s = path_cast();
    // The CLI shows the prefixes, and refuses a malformed one by name.
    let o = as_user(
        &s,
        "dave",
        "dave-secret-1",
        &["--json", "policy", "show", "eth-*"],
    );
    let shown: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(&o)));
    assert_eq!(shown["paths"], json!(["m/44'/60'/0'"]), "{shown}");
    assert_eq!(shown["settings"], "paths=m/44'/60'/0'");
    let o = as_user(
        &s,
        "admin",
        ADMIN,
        &["policy", "set", "eth-*", "--paths", "m/1,x/2"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("x/2"), "{}", output_text(&o));
    // An xpub shows a tree's every public key: the signer of eth-* may
    // print it; the auditor and the officer (no key use) may not.
    let o = as_user(&s, "bob", "bob-secret-1", &["asset", "xpub", "eth-1"]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(stdout_text(&o).starts_with("xpub"), "{}", output_text(&o));
    for (who, secret) in [("dave", "dave-secret-1"), ("carol", "carol-secret-1")] {
        let o = as_user(&s, who, secret, &["asset", "xpub", "eth-1"]);
        assert!(!o.status.success(), "{who}: {}", output_text(&o));
        assert!(
            !stdout_text(&o).contains("xpub"),
            "{who}: {}",
            output_text(&o)
        );
    }
    let p = s.load();
    let session = bob_session(&p);
    let (private, _) = asset_objects(&session, "eth-1");
    // The asset's own key is m: not under the allowed prefix.
    assert_eq!(
        rv(session.sign(&Mechanism::Ecdsa, private, &[1u8; 32])),
        RvError::FunctionRejected
    );
    assert!(refused_with(&s, "path", "path=m "), "{:?}", eth_records(&s));
    // Another subtree is refused at derivation.
    assert_eq!(
        rv(derive_with(&session, private, "m/44'/0'/0'", &[])),
        RvError::FunctionRejected
    );
    // An ancestor of the allowed prefix derives, but does not sign.
    let ancestor = derive(&session, private, "m/44'");
    assert_eq!(
        rv(session.sign(&Mechanism::Ecdsa, ancestor, &[1u8; 32])),
        RvError::FunctionRejected
    );
    assert!(refused_with(&s, "path", "path=m/44'"));
    // Below it, derived stepwise from the ancestor: signs.
    let allowed = derive(&session, ancestor, "m/60'/0'/0/3");
    assert_eq!(label_of(&session, allowed), "eth-1@v1:m/44'/60'/0'/0/3");
    let digest = [2u8; 32];
    let sig = session.sign(&Mechanism::Ecdsa, allowed, &digest).unwrap();
    assert!(ecdsa_verifies(
        "secp256k1",
        &point(&session, allowed),
        &digest,
        &sig
    ));

    // The policy changed between C_SignInit and C_Sign: refused at commit.
    let r = raw();
    let mut mech = cryptoki_sys::CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(
        call!(r, C_SignInit(session.handle(), &mut mech, allowed.handle())),
        cryptoki_sys::CKR_OK
    );
    admin(&s, &["policy", "set", "eth-*", "--paths", "m/86'/0'"]);
    let before = eth_signed(&s);
    let mut data = [4u8; 32];
    let mut out = [0u8; 64];
    let mut out_len: cryptoki_sys::CK_ULONG = out.len() as _;
    let rv_sign = call!(
        r,
        C_Sign(
            session.handle(),
            data.as_mut_ptr(),
            data.len() as _,
            out.as_mut_ptr(),
            &mut out_len
        )
    );
    assert_eq!(rv_sign, cryptoki_sys::CKR_FUNCTION_REJECTED);
    assert_eq!(out, [0u8; 64], "nothing released");
    assert!(
        eth_records(&s).iter().any(|r| {
            let d = r["detail"].as_str().unwrap_or("");
            r["event"] == "refused"
                && d.starts_with("sign refused at commit: rule=path")
                && d.ends_with("path=m/44'/60'/0'/0/3")
        }),
        "the refusal at commit names the rule and the child's path: {:#?}",
        eth_records(&s)
    );
    assert_eq!(eth_signed(&s), before);
    // And new signatures with the child stay refused.
    assert_eq!(
        rv(session.sign(&Mechanism::Ecdsa, allowed, &digest)),
        RvError::FunctionRejected
    );
    drop(r);
    drop(session);
    drop(p);
    ok_as(&s, "dave", "dave-secret-1", &["audit", "verify"]);
}

#[test]
fn a_path_policy_edited_out_in_sqlite_is_refused() {
    let _t = turn();
    let s = path_cast();
    // A process already signing with an allowed child when the row is edited.
    let p = s.load();
    let running = bob_session(&p);
    let (private, _) = asset_objects(&running, "eth-1");
    let child = derive(&running, private, "m/44'/60'/0'/0/1");
    running
        .sign(&Mechanism::Ecdsa, child, &[1u8; 32])
        .expect("allowed before the edit");
    let signed_before = eth_signed(&s);
    // Someone with write access to the store removes paths= from the row.
    sqlite(
        &s.store,
        "UPDATE policies SET settings = '' WHERE pattern = 'eth-*'",
    );
    let edited = "policy \"eth-*\": its row does not verify";
    // The running process either keeps the policy it verified (its cache
    // moves only with the store's sealed ledger) or, once the ledger moved,
    // finds the row edited: either way the edit loosens nothing.
    let refused = [RvError::FunctionRejected, RvError::DeviceError];
    let r = rv(running.sign(&Mechanism::Ecdsa, private, &[2u8; 32]));
    assert!(refused.contains(&r), "the asset's own key: {r:?}");
    let r = rv(derive_with(&running, private, "m/44'/0'/0'", &[]));
    assert!(refused.contains(&r), "another subtree: {r:?}");
    let signed_before =
        signed_before + usize::from(running.sign(&Mechanism::Ecdsa, child, &[2u8; 32]).is_ok());
    assert!(s.log().contains(edited), "the edit is logged");
    drop(running);
    drop(p);
    // A new process: logs in, but neither the asset's key nor a child of
    // another subtree signs.
    let p = s.load();
    let session = bob_session(&p);
    let (private, _) = asset_objects(&session, "eth-1");
    let from = s.log().len();
    assert_eq!(
        rv(session.sign(&Mechanism::Ecdsa, private, &[1u8; 32])),
        RvError::DeviceError
    );
    assert_eq!(
        rv(derive_with(&session, private, "m/44'/0'/0'", &[])),
        RvError::DeviceError
    );
    assert!(s.log_since(from).contains(edited), "{}", s.log_since(from));
    drop(session);
    drop(p);
    assert_eq!(eth_signed(&s), signed_before);
    let out = as_user(&s, "dave", "dave-secret-1", &["audit", "verify"]);
    assert!(
        !out.status.success() && output_text(&out).contains("eth-*"),
        "audit verify: {}",
        output_text(&out)
    );
}

fn openssl(args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(o.status.success(), "openssl {args:?}: {}", output_text(&o));
}

fn request_status(s: &Setup, id: &str) -> String {
    let o = as_user(
        s,
        "dave",
        "dave-secret-1",
        &["--json", "request", "show", id],
    );
    let v: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(&o)));
    v["status"].as_str().unwrap().to_string()
}

#[test]
fn a_child_never_signs_under_an_approvals_policy() {
    let _t = turn();
    let s = path_cast();
    // One approver, ann (Ed25519, her key made by openssl).
    let key = s.dir.join("ann.key");
    let public = s.dir.join("ann.pub");
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    admin(
        &s,
        &["approver", "add", "ann", "--key", public.to_str().unwrap()],
    );
    admin(&s, &["policy", "set", "eth-*", "--approvals", "1"]);
    // bob asks for a signature of d; ann approves it.
    let d = [0x42u8; 32];
    let o = as_user(
        &s,
        "bob",
        "bob-secret-1",
        &[
            "--json",
            "request",
            "new",
            "sign",
            "eth-1",
            "--digest",
            &hex(&d),
        ],
    );
    assert!(o.status.success(), "request new: {}", output_text(&o));
    let id = serde_json::from_slice::<Value>(&o.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = s.dir.join("verdict.bytes");
    let sig = s.dir.join("verdict.sig");
    ok_as(
        &s,
        "carol",
        "carol-secret-1",
        &["request", "export", &id, "--out", bytes.to_str().unwrap()],
    );
    openssl(&[
        "pkeyutl",
        "-sign",
        "-rawin",
        "-inkey",
        key.to_str().unwrap(),
        "-in",
        bytes.to_str().unwrap(),
        "-out",
        sig.to_str().unwrap(),
    ]);
    ok_as(
        &s,
        "carol",
        "carol-secret-1",
        &[
            "request",
            "approve",
            &id,
            "--approver",
            "ann",
            "--signature",
            sig.to_str().unwrap(),
        ],
    );
    let approved = request_status(&s, &id);
    assert_ne!(approved, "executed");

    let p = s.load();
    let session = bob_session(&p);
    let (private, _) = asset_objects(&session, "eth-1");
    let child = derive(&session, private, "m/44'/60'/0'/0/3");
    assert_eq!(
        rv(session.sign(&Mechanism::Ecdsa, child, &d)),
        RvError::FunctionRejected,
        "an HD child signed an approved digest"
    );
    assert!(
        refused_with(&s, "approvals", "path=m/44'/60'/0'/0/3"),
        "{:#?}",
        eth_records(&s)
    );
    assert_eq!(
        request_status(&s, &id),
        approved,
        "the approval was consumed"
    );
    assert_eq!(eth_signed(&s), 0);
    // The approval is still there for the asset's own key.
    let sig = session
        .sign(&Mechanism::Ecdsa, private, &d)
        .expect("approved");
    let (_, public_obj) = asset_objects(&session, "eth-1");
    assert!(ecdsa_verifies(
        "secp256k1",
        &point(&session, public_obj),
        &d,
        &sig
    ));
    assert_eq!(request_status(&s, &id), "executed");
}
