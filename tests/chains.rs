//! The blockchain key types and signatures end to end, through the built
//! provider with SoftHSM behind it (design §6.1): Ed25519 assets and session
//! pairs with CKM_EDDSA, recoverable ECDSA and BIP-340 Schnorr on secp256k1,
//! and the mechanisms the token lists. Every signature is checked by an
//! implementation that is not the provider's: ed25519-dalek and `openssl
//! pkeyutl` for Ed25519, Python's eth-keys (Ethereum public-key recovery and
//! addresses) and coincurve (libsecp256k1's BIP-340) for secp256k1.
//!
//! The Python libraries are installed by tools/setup.sh; without them the
//! tests that need them fail under CI (the variable `CI` is set) and are
//! skipped with a message elsewhere. The provider's Ed25519 public key for a
//! known root against tests/vectors/derivation.json is checked by
//! tests/vectors.rs, not here.

mod common;
#[path = "common/reference.rs"]
mod reference;

use std::process::Command;

use cryptoki::error::RvError;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;
use cryptoki_sys::CK_MECHANISM_TYPE;
use ed25519_dalek::Verifier;

use common::*;

/// id-Ed25519, 1.3.101.112 (RFC 8410), the form the provider shows.
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
/// The curve name as a DER PrintableString, which templates may carry.
const ED25519_NAME: &[u8] = b"\x13\x0cedwards25519";
/// OpenSC's older OID for Ed25519, 1.3.6.1.4.1.11591.15.1.
const ED25519_OPENSC_OID: [u8; 11] = [
    0x06, 0x09, 0x2b, 0x06, 0x01, 0x04, 0x01, 0xda, 0x47, 0x0f, 0x01,
];
const SECP256K1: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

const CKM_VENDOR_DEFINED: CK_MECHANISM_TYPE = 0x8000_0000;
const CKM_P11DERIVE_HD_CHILD: CK_MECHANISM_TYPE = CKM_VENDOR_DEFINED | 0x5044_0001;
const CKM_P11DERIVE_ECDSA_RECOVERABLE: CK_MECHANISM_TYPE = CKM_VENDOR_DEFINED | 0x5044_0002;
const CKM_P11DERIVE_BIP340: CK_MECHANISM_TYPE = CKM_VENDOR_DEFINED | 0x5044_0003;
/// CKA_P11DERIVE_KEY_TYPE (pkcs11-headers/p11derive.h).
const CKA_P11DERIVE_KEY_TYPE: cryptoki_sys::CK_ATTRIBUTE_TYPE = 0x8000_0000 | 0x5044_0007;
/// CKM_EDDSA, as the audit records name the mechanism.
const CKM_EDDSA: CK_MECHANISM_TYPE = 0x1057;

/// half the order of secp256k1's group, big-endian: a low s is at most this.
const HALF_N: &str = "7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0";

fn vendor(t: CK_MECHANISM_TYPE) -> MechanismType {
    MechanismType::new_vendor_defined(t).expect("a vendor-defined mechanism type")
}

fn vendor_mech(t: CK_MECHANISM_TYPE) -> Mechanism<'static> {
    Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(vendor(t), None))
}

fn eddsa() -> Mechanism<'static> {
    Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure))
}

/// Whether python3 imports the independent implementations these tests
/// check signatures with. Without them the calling test fails under CI and
/// is skipped with a message elsewhere.
fn python_libraries_available() -> bool {
    reference::python_imports(
        "import eth_keys, coincurve; from eth_hash.auto import keccak; keccak(b'')",
        "eth_keys, eth_hash and coincurve (the independent secp256k1 checks)",
        "`python3 -m pip install eth-keys==0.8.0 'eth-hash[pycryptodome]==0.8.0' \
         coincurve==21.0.0`",
    )
}

/// Runs a python3 snippet with `args`; its stdout, trimmed.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn attr(session: &Session, h: ObjectHandle, t: AttributeType) -> Attribute {
    session
        .get_attributes(h, &[t])
        .unwrap()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{t:?} missing"))
}

fn bytes_attr(session: &Session, h: ObjectHandle, t: AttributeType) -> Vec<u8> {
    match attr(session, h, t) {
        Attribute::EcParams(v) | Attribute::EcPoint(v) | Attribute::PublicKeyInfo(v) => v,
        Attribute::Id(v) => v,
        other => panic!("{t:?}: {other:?}"),
    }
}

/// The key inside a CKA_EC_POINT (a DER OCTET STRING of at most 127 bytes).
fn point_of(session: &Session, public: ObjectHandle) -> Vec<u8> {
    let der = bytes_attr(session, public, AttributeType::EcPoint);
    assert_eq!(
        der[0],
        0x04,
        "CKA_EC_POINT is an OCTET STRING: {}",
        hex(&der)
    );
    assert_eq!(der[1] as usize, der.len() - 2, "{}", hex(&der));
    der[2..].to_vec()
}

/// CKA_ALLOWED_MECHANISMS of `h`, read through the raw function table
/// (cryptoki refuses a list with vendor-defined mechanisms in it).
fn allowed_mechanisms(p: &Provider, h: ObjectHandle) -> Vec<CK_MECHANISM_TYPE> {
    use cryptoki_sys::*;
    let r = raw();
    let mut session: CK_SESSION_HANDLE = 0;
    let rv = call!(
        r,
        C_OpenSession(
            p.slot.id() as CK_SLOT_ID,
            CKF_SERIAL_SESSION,
            std::ptr::null_mut(),
            None,
            &mut session
        )
    );
    assert_eq!(rv, CKR_OK, "C_OpenSession");
    let mut list = [0; 32];
    let mut template = [CK_ATTRIBUTE {
        type_: CKA_ALLOWED_MECHANISMS,
        pValue: list.as_mut_ptr() as *mut _,
        ulValueLen: size_of_val(&list) as CK_ULONG,
    }];
    let rv = call!(
        r,
        C_GetAttributeValue(session, h.handle(), template.as_mut_ptr(), 1)
    );
    assert_eq!(rv, CKR_OK, "CKA_ALLOWED_MECHANISMS");
    let n = template[0].ulValueLen as usize / size_of::<CK_MECHANISM_TYPE>();
    assert_eq!(call!(r, C_CloseSession(session)), CKR_OK);
    list[..n].to_vec()
}

fn ed25519_templates(label: &str, params: &[u8], token: bool) -> (Vec<Attribute>, Vec<Attribute>) {
    (
        vec![
            Attribute::Token(token),
            Attribute::Verify(true),
            Attribute::EcParams(params.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ],
        vec![
            Attribute::Token(token),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ],
    )
}

fn ec_pair(session: &Session, label: &str, params: &[u8]) -> (ObjectHandle, ObjectHandle) {
    let (public, private) = ed25519_templates(label, params, true);
    let (pu, pr) = session
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .unwrap_or_else(|e| panic!("EC key pair {label}: {e}"));
    (pr, pu)
}

/// Whether `sig` is an Ed25519 signature of `msg` by `public` for
/// ed25519-dalek.
fn dalek_verifies(public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let key = ed25519_dalek::VerifyingKey::from_bytes(public.try_into().unwrap()).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(sig).unwrap();
    key.verify(msg, &sig).is_ok()
}

/// Whether `openssl pkeyutl -verify -rawin` accepts `sig` over `msg` under
/// the SubjectPublicKeyInfo `spki` (DER), written out as PEM.
fn openssl_verifies(dir: &std::path::Path, spki: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let der = dir.join("ed25519.spki.der");
    let pem = dir.join("ed25519.spki.pem");
    let m = dir.join("ed25519.msg");
    let s = dir.join("ed25519.sig");
    std::fs::write(&der, spki).unwrap();
    std::fs::write(&m, msg).unwrap();
    std::fs::write(&s, sig).unwrap();
    let conv = Command::new("openssl")
        .args(["pkey", "-pubin", "-inform", "DER", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem)
        .output()
        .expect("openssl runs");
    assert!(
        conv.status.success(),
        "openssl pkey does not read CKA_PUBLIC_KEY_INFO {}: {}",
        hex(spki),
        output_text(&conv)
    );
    Command::new("openssl")
        .args(["pkeyutl", "-verify", "-rawin", "-pubin", "-inkey"])
        .arg(&pem)
        .arg("-in")
        .arg(&m)
        .arg("-sigfile")
        .arg(&s)
        .output()
        .expect("openssl runs")
        .status
        .success()
}

#[test]
fn ed25519_assets_from_every_params_form_sign_and_verify_independently() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let forms: [(&str, &[u8]); 3] = [
        ("ed-oid", &ED25519_OID),
        ("ed-name", ED25519_NAME),
        ("ed-opensc", &ED25519_OPENSC_OID),
    ];
    let mut points = Vec::new();
    for (label, params) in forms {
        let (public, private) = ed25519_templates(label, params, true);
        session
            .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
            .unwrap_or_else(|e| panic!("{label}: C_GenerateKeyPair: {e}"));
        assert_eq!(s.asset_show(label)["key_type"], "ed25519", "{label}");

        // Found by label, both halves.
        let sk = private_key(&session, label);
        let pk = find_one(&session, label, ObjectClass::PUBLIC_KEY)
            .unwrap_or_else(|| panic!("no public key {label}"));
        for h in [sk, pk] {
            assert_eq!(
                attr(&session, h, AttributeType::KeyType),
                Attribute::KeyType(KeyType::EC_EDWARDS),
                "{label}"
            );
            assert_eq!(
                bytes_attr(&session, h, AttributeType::EcParams),
                ED25519_OID,
                "{label}: CKA_EC_PARAMS is the RFC 8410 OID whatever form the template had"
            );
            assert_eq!(
                attr(&session, h, AttributeType::KeyGenMechanism),
                Attribute::KeyGenMechanism(MechanismType::ECC_EDWARDS_KEY_PAIR_GEN),
                "{label}"
            );
            let kt = AttributeType::VendorDefined(CKA_P11DERIVE_KEY_TYPE);
            assert_eq!(
                attr(&session, h, kt),
                Attribute::VendorDefined((kt, b"ed25519".to_vec())),
                "{label}: CKA_P11DERIVE_KEY_TYPE"
            );
            let allowed = allowed_mechanisms(&p, h);
            assert!(
                allowed.contains(&MechanismType::EDDSA.into()),
                "{label}: {allowed:x?}"
            );
            assert!(
                !allowed.contains(&MechanismType::ECDSA.into()),
                "{label}: {allowed:x?}"
            );
        }
        assert_eq!(
            attr(&session, sk, AttributeType::Sensitive),
            Attribute::Sensitive(true)
        );
        assert_eq!(
            attr(&session, sk, AttributeType::Extractable),
            Attribute::Extractable(false)
        );
        let value = session
            .get_attribute_info(sk, &[AttributeType::Value])
            .unwrap();
        assert!(
            matches!(value[..], [AttributeInfo::Sensitive]),
            "{label}: CKA_VALUE must be refused with CKR_ATTRIBUTE_SENSITIVE: {value:?}"
        );

        // CKA_EC_POINT: the 32-byte key; CKA_PUBLIC_KEY_INFO: its RFC 8410 SPKI.
        let point = point_of(&session, pk);
        assert_eq!(point.len(), 32, "{label}");
        let spki = bytes_attr(&session, pk, AttributeType::PublicKeyInfo);
        let mut want_spki = unhex("302a300506032b6570032100");
        want_spki.extend_from_slice(&point);
        assert_eq!(hex(&spki), hex(&want_spki), "{label}: CKA_PUBLIC_KEY_INFO");
        assert_eq!(
            bytes_attr(&session, sk, AttributeType::PublicKeyInfo),
            spki,
            "{label}: the private key shows the same SPKI"
        );

        // Pure Ed25519, deterministic, checked outside the provider.
        let msg = format!("p11derive chains test: {label}").into_bytes();
        let sig = session.sign(&eddsa(), sk, &msg).unwrap();
        assert_eq!(sig.len(), 64);
        assert_eq!(
            session.sign(&eddsa(), sk, &msg).unwrap(),
            sig,
            "{label}: Ed25519 is deterministic"
        );
        assert!(dalek_verifies(&point, &msg, &sig), "{label}: ed25519-dalek");
        assert!(
            openssl_verifies(&s.dir, &spki, &msg, &sig),
            "{label}: openssl pkeyutl -verify -rawin"
        );
        let mut changed = msg.clone();
        changed[0] ^= 1;
        assert!(!dalek_verifies(&point, &changed, &sig));
        assert!(!openssl_verifies(&s.dir, &spki, &changed, &sig));

        // C_Verify: good, then tampered message and signature.
        session.verify(&eddsa(), pk, &msg, &sig).unwrap();
        assert_eq!(
            rv_of(session.verify(&eddsa(), pk, &changed, &sig)),
            RvError::SignatureInvalid,
            "{label}"
        );
        let mut bad = sig.clone();
        bad[10] ^= 0x40;
        assert_eq!(
            rv_of(session.verify(&eddsa(), pk, &msg, &bad)),
            RvError::SignatureInvalid,
            "{label}"
        );

        // Each signature is in the audit log, naming the asset and CKM_EDDSA.
        let signs: Vec<_> = s
            .audit_records(&["--asset", label])
            .into_iter()
            .filter(|r| r["event"] == "sign" && r["rv"] == 0)
            .collect();
        assert_eq!(signs.len(), 2, "{label}: {signs:?}");
        for r in &signs {
            assert_eq!(r["asset"], label, "{r}");
            assert_eq!(r["mechanism"], CKM_EDDSA, "{r}");
            assert_eq!(r["version"], 1, "{r}");
            assert_eq!(r["input_sha256"], sha256_hex(&msg), "{r}");
        }
        points.push(point);
    }
    points.sort();
    points.dedup();
    assert_eq!(points.len(), 3, "three assets, three different keys");
    s.audit_verifies();
}

#[test]
fn ed25519_rotation_keeps_old_versions_verifying_and_suspension_stops_all() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    // Through C_GenerateKeyPair: `p11derive asset create --type` has no ed25519.
    let (public, private) = ed25519_templates("ed-rot", &ED25519_OID, true);
    session
        .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
        .unwrap();
    let alias_sk = private_key(&session, "ed-rot");
    let alias_pk = find_one(&session, "ed-rot", ObjectClass::PUBLIC_KEY).unwrap();
    let v1_pk = find_one(&session, "ed-rot@v1", ObjectClass::PUBLIC_KEY).unwrap();
    let v1_sk = private_key(&session, "ed-rot@v1");
    let msg = b"before and after the rotation";
    let point1 = point_of(&session, alias_pk);
    let sig1 = session.sign(&eddsa(), alias_sk, msg).unwrap();
    assert!(dalek_verifies(&point1, msg, &sig1));

    ok(&s, &["asset", "rotate", "ed-rot"]);
    let point2 = point_of(&session, alias_pk);
    assert_ne!(point1, point2, "the alias shows version 2's key");
    assert_eq!(point_of(&session, v1_pk), point1, "@v1 keeps its key");
    let sig2 = session.sign(&eddsa(), alias_sk, msg).unwrap();
    assert!(dalek_verifies(&point2, msg, &sig2), "version 2 signs");
    assert!(!dalek_verifies(&point1, msg, &sig2));
    // The old version object still verifies; the alias accepts both versions.
    session.verify(&eddsa(), v1_pk, msg, &sig1).unwrap();
    session.verify(&eddsa(), alias_pk, msg, &sig1).unwrap();
    session.verify(&eddsa(), alias_pk, msg, &sig2).unwrap();
    assert_eq!(
        rv_of(session.verify(&eddsa(), v1_pk, msg, &sig2)),
        RvError::SignatureInvalid
    );
    assert_eq!(
        rv_of(session.sign(&eddsa(), v1_sk, msg)),
        RvError::KeyFunctionNotPermitted,
        "a superseded version no longer signs"
    );
    let v2_pk = find_one(&session, "ed-rot@v2", ObjectClass::PUBLIC_KEY).unwrap();
    assert_eq!(point_of(&session, v2_pk), point2);

    ok(&s, &["asset", "suspend", "ed-rot"]);
    assert_eq!(
        rv_of(session.sign(&eddsa(), alias_sk, msg)),
        RvError::KeyFunctionNotPermitted,
        "a suspended asset signs nothing"
    );
    assert_eq!(
        rv_of(session.verify(&eddsa(), alias_pk, msg, &sig2)),
        RvError::KeyFunctionNotPermitted
    );
    ok(&s, &["asset", "resume", "ed-rot"]);
    assert_eq!(session.sign(&eddsa(), alias_sk, msg).unwrap(), sig2);

    let signs: Vec<_> = s
        .audit_records(&["--asset", "ed-rot"])
        .into_iter()
        .filter(|r| r["event"] == "sign" && r["rv"] == 0)
        .map(|r| {
            (
                r["version"].as_u64().unwrap(),
                r["mechanism"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(signs, [(1, CKM_EDDSA), (2, CKM_EDDSA), (2, CKM_EDDSA)]);
}

#[test]
fn ed25519_assets_from_the_cli_sign_and_the_cli_verifies() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("ed-cli", "ed25519");
    let shown = s.asset_show("ed-cli");
    assert_eq!(shown["key_type"], "ed25519", "{shown}");
    let p = s.load();
    let session = p.user_session();
    let sk = private_key(&session, "ed-cli");
    let pk = find_one(&session, "ed-cli", ObjectClass::PUBLIC_KEY).unwrap();
    let point = point_of(&session, pk);
    assert_eq!(version_keys(&shown), [(1, point.clone())], "{shown}");
    let msg = b"signed through PKCS#11, checked by the CLI";
    let sig = session.sign(&eddsa(), sk, msg).unwrap();
    assert!(dalek_verifies(&point, msg, &sig));

    let (m, f) = (s.dir.join("cli.msg"), s.dir.join("cli.sig"));
    std::fs::write(&m, msg).unwrap();
    std::fs::write(&f, &sig).unwrap();
    let sig_arg = f.to_str().unwrap();
    ok(
        &s,
        &[
            "verify",
            "--asset",
            "ed-cli",
            "--signature",
            sig_arg,
            "--message",
            m.to_str().unwrap(),
        ],
    );
    std::fs::write(&m, b"another message").unwrap();
    let out = cli(
        &s,
        &[
            "verify",
            "--asset",
            "ed-cli",
            "--signature",
            sig_arg,
            "--message",
            m.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "{}", output_text(&out));
    let out = cli(
        &s,
        &[
            "verify",
            "--asset",
            "ed-cli",
            "--signature",
            sig_arg,
            "--digest",
            &hex(&[1; 32]),
        ],
    );
    assert!(!out.status.success(), "{}", output_text(&out));
    let said = stderr(&out);
    assert!(said.contains("not a digest; give --message FILE"), "{said}");
}

#[test]
fn ed25519_session_pairs_are_random_and_sign() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let mut points = Vec::new();
    for _ in 0..2 {
        let (public, private) = ed25519_templates("ed-session", &ED25519_OID, false);
        let (pk, sk) = session
            .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
            .unwrap();
        assert_eq!(
            attr(&session, pk, AttributeType::KeyType),
            Attribute::KeyType(KeyType::EC_EDWARDS)
        );
        assert_eq!(
            attr(&session, sk, AttributeType::Token),
            Attribute::Token(false)
        );
        let point = point_of(&session, pk);
        let msg = b"a session key";
        let sig = session.sign(&eddsa(), sk, msg).unwrap();
        assert!(dalek_verifies(&point, msg, &sig));
        session.verify(&eddsa(), pk, msg, &sig).unwrap();
        assert_eq!(
            rv_of(session.verify(&eddsa(), pk, b"another message", &sig)),
            RvError::SignatureInvalid
        );
        points.push(point);
    }
    assert_ne!(points[0], points[1], "session pairs are random");
    let out = s.cli().args(["asset", "list", "--json"]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0, "no asset was registered");
}

#[test]
fn ed25519_refusals() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let (public, private) = ed25519_templates("ed-refuse", &ED25519_OID, true);
    let (pk, sk) = session
        .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
        .unwrap();
    let msg = [9u8; 32];
    let prehash = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Ed25519ph(&[])));
    assert_eq!(
        rv_of(session.sign(&prehash, sk, &msg)),
        RvError::MechanismParamInvalid,
        "Ed25519ph (phFlag=1)"
    );
    let ctx = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Ed25519ctx(b"ctx")));
    assert_eq!(
        rv_of(session.sign(&ctx, sk, &msg)),
        RvError::MechanismParamInvalid,
        "Ed25519ctx (a context)"
    );
    let sig = session.sign(&eddsa(), sk, &msg).unwrap();
    assert_eq!(
        rv_of(session.verify(&prehash, pk, &msg, &sig)),
        RvError::MechanismParamInvalid
    );
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, sk, &msg)),
        RvError::KeyTypeInconsistent,
        "CKM_ECDSA on an Ed25519 key"
    );
    assert_eq!(
        rv_of(session.verify(&Mechanism::Ecdsa, pk, &msg, &sig)),
        RvError::KeyTypeInconsistent
    );
    assert_eq!(
        rv_of(session.sign(&vendor_mech(CKM_P11DERIVE_BIP340), sk, &msg)),
        RvError::KeyTypeInconsistent,
        "BIP-340 on an Ed25519 key"
    );
    let (public, private) = ed25519_templates("ed-wrong-gen", &ED25519_OID, true);
    assert_eq!(
        rv_of(session.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)),
        RvError::TemplateInconsistent,
        "CKM_EC_KEY_PAIR_GEN with Ed25519 params"
    );
    let (public, private) = ed25519_templates("ed-wrong-curve", &SECP256K1, true);
    assert_eq!(
        rv_of(session.generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)),
        RvError::TemplateInconsistent,
        "CKM_EC_EDWARDS_KEY_PAIR_GEN with secp256k1 params"
    );
    assert!(s
        .cli()
        .args(["asset", "show", "ed-wrong-gen"])
        .output()
        .is_ok_and(|o| !o.status.success()));
    // A secp256k1 key does not sign with CKM_EDDSA.
    let (k1, _) = ec_pair(&session, "k1-not-ed", &SECP256K1);
    assert_eq!(
        rv_of(session.sign(&eddsa(), k1, &msg)),
        RvError::KeyTypeInconsistent
    );
}

#[test]
fn recoverable_ecdsa_recovers_the_signer_in_eth_keys() {
    if !python_libraries_available() {
        return;
    }
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let (sk, pk) = ec_pair(&session, "eth-1", &SECP256K1);
    let point = point_of(&session, pk);
    assert_eq!(point.len(), 65, "uncompressed SEC1 point");
    let recoverable = vendor_mech(CKM_P11DERIVE_ECDSA_RECOVERABLE);

    // EIP-191 personal message hashes, computed by eth-hash.
    let eip191 = "import sys
from eth_hash.auto import keccak
m = sys.argv[1].encode()
print(keccak(b'\\x19Ethereum Signed Message:\\n' + str(len(m)).encode() + m).hex())";
    let recover = "import sys
from eth_keys import keys
from eth_hash.auto import keccak
h, sig, point = (bytes.fromhex(a) for a in sys.argv[1:4])
r, s, v = int.from_bytes(sig[:32], 'big'), int.from_bytes(sig[32:64], 'big'), sig[64]
pub = keys.Signature(vrs=(v, r, s)).recover_public_key_from_msg_hash(h)
assert point[0] == 4 and len(point) == 65
mine = keys.PublicKey(point[1:])
addr = '0x' + keccak(point[1:])[-20:].hex()
n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
print(pub.to_bytes().hex(), pub.to_checksum_address(), mine.to_checksum_address(), addr, int(2 * s < n))";
    for i in 0..6 {
        let msg = format!("p11derive pays 0.{i} ETH");
        let h = unhex(&python(eip191, &[&msg]));
        assert_eq!(h.len(), 32);
        let sig = session.sign(&recoverable, sk, &h).unwrap();
        assert_eq!(sig.len(), 65, "r || s || v");
        let v = sig[64];
        assert!(v <= 1, "v = {v}, must be 0 or 1");
        assert!(
            hex(&sig[32..64]).as_str() <= HALF_N,
            "s is low: {}",
            hex(&sig)
        );
        // The same r || s is a plain ECDSA signature of the digest.
        assert!(ecdsa_verifies(
            "secp256k1",
            &point,
            &h.clone().try_into().unwrap(),
            &sig[..64]
        ));

        let said = python(recover, &[&hex(&h), &hex(&sig), &hex(&point)]);
        let f: Vec<&str> = said.split_whitespace().collect();
        assert_eq!(f.len(), 5, "{said}");
        assert_eq!(
            f[0],
            hex(&point[1..]),
            "eth-keys recovers the key's CKA_EC_POINT"
        );
        assert_eq!(f[1], f[2], "recovered address = the key's address");
        assert_eq!(
            f[1].to_lowercase(),
            f[3],
            "Keccak-256 address of CKA_EC_POINT"
        );
        assert_eq!(f[4], "1", "s <= n/2 (eth-keys)");

        session.verify(&recoverable, pk, &h, &sig).unwrap();
        let mut flipped = sig.clone();
        flipped[64] ^= 1;
        assert_eq!(
            rv_of(session.verify(&recoverable, pk, &h, &flipped)),
            RvError::SignatureInvalid,
            "a flipped v names another key"
        );
        let mut bad = sig.clone();
        bad[5] ^= 1;
        assert_eq!(
            rv_of(session.verify(&recoverable, pk, &h, &bad)),
            RvError::SignatureInvalid
        );
        // v as Ethereum writes it (27/28) is not this mechanism's form.
        let mut eth_v = sig.clone();
        eth_v[64] += 27;
        assert_eq!(
            rv_of(session.verify(&recoverable, pk, &h, &eth_v)),
            RvError::SignatureInvalid,
            "v must be 0 or 1"
        );
        assert_eq!(
            rv_of(session.verify(&recoverable, pk, &h, &sig[..64])),
            RvError::SignatureLenRange,
            "r || s without v"
        );
    }

    assert_eq!(
        rv_of(session.sign(&recoverable, sk, &[1u8; 31])),
        RvError::DataLenRange,
        "a 31-byte digest"
    );
    assert_eq!(
        rv_of(session.sign(&recoverable, sk, &[1u8; 33])),
        RvError::DataLenRange,
        "a 33-byte digest"
    );
    let (p256, _) = ec_pair(&session, "p256-not-eth", &P256);
    assert_eq!(
        rv_of(session.sign(&recoverable, p256, &[1u8; 32])),
        RvError::KeyTypeInconsistent,
        "recoverable ECDSA on a P-256 key"
    );
    let (public, private) = ed25519_templates("ed-not-eth", &ED25519_OID, true);
    let (_, ed) = session
        .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
        .unwrap();
    assert_eq!(
        rv_of(session.sign(&recoverable, ed, &[1u8; 32])),
        RvError::KeyTypeInconsistent,
        "recoverable ECDSA on an Ed25519 key"
    );
    let signs = s
        .audit_records(&["--asset", "eth-1"])
        .into_iter()
        .filter(|r| r["event"] == "sign" && r["rv"] == 0)
        .filter(|r| r["mechanism"] == CKM_P11DERIVE_ECDSA_RECOVERABLE)
        .count();
    assert_eq!(signs, 6, "every recoverable signature is audited");
}

#[test]
fn bip340_signatures_verify_in_libsecp256k1() {
    if !python_libraries_available() {
        return;
    }
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let (sk, pk) = ec_pair(&session, "taproot-1", &SECP256K1);
    let point = point_of(&session, pk);
    let xonly = &point[1..33];
    let bip340 = vendor_mech(CKM_P11DERIVE_BIP340);
    let msg = [0x5au8; 32];
    let sig = session.sign(&bip340, sk, &msg).unwrap();
    assert_eq!(sig.len(), 64);
    let again = session.sign(&bip340, sk, &msg).unwrap();
    assert_ne!(
        sig, again,
        "fresh auxiliary randomness from the HSM each time"
    );

    let check = "import sys, coincurve
x, sig, msg = (bytes.fromhex(a) for a in sys.argv[1:4])
print(coincurve.PublicKeyXOnly(x).verify(sig, msg))";
    for s_ in [&sig, &again] {
        assert_eq!(
            python(check, &[&hex(xonly), &hex(s_), &hex(&msg)]),
            "True",
            "coincurve (libsecp256k1) verifies {}",
            hex(s_)
        );
        session.verify(&bip340, pk, &msg, s_).unwrap();
    }
    let mut changed = msg;
    changed[31] ^= 1;
    assert_eq!(
        python(check, &[&hex(xonly), &hex(&sig), &hex(&changed)]),
        "False"
    );
    assert_eq!(
        rv_of(session.verify(&bip340, pk, &changed, &sig)),
        RvError::SignatureInvalid
    );
    let mut bad = sig.clone();
    bad[40] ^= 1;
    assert_eq!(
        rv_of(session.verify(&bip340, pk, &msg, &bad)),
        RvError::SignatureInvalid
    );
    assert_eq!(
        rv_of(session.verify(&bip340, pk, &msg, &sig[..63])),
        RvError::SignatureLenRange,
        "a 63-byte BIP-340 signature"
    );
    let (p256, _) = ec_pair(&session, "p256-not-schnorr", &P256);
    assert_eq!(
        rv_of(session.sign(&bip340, p256, &msg)),
        RvError::KeyTypeInconsistent
    );
}

#[test]
fn the_chain_mechanisms_are_listed_with_their_flags() {
    use cryptoki_sys::*;
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    // cryptoki's C_GetMechanismList drops the types it does not know (the
    // vendor ones), so the list is read through the raw function table.
    let r = raw();
    let slot = p.slot.id() as CK_SLOT_ID;
    let mut n: CK_ULONG = 0;
    let rv = call!(r, C_GetMechanismList(slot, std::ptr::null_mut(), &mut n));
    assert_eq!(rv, CKR_OK);
    let mut list = vec![0; n as usize];
    let rv = call!(r, C_GetMechanismList(slot, list.as_mut_ptr(), &mut n));
    assert_eq!(rv, CKR_OK);
    let flags = |t: CK_MECHANISM_TYPE| {
        assert!(
            list.contains(&t),
            "C_GetMechanismList lacks {t:#x}: {list:x?}"
        );
        let mut info = CK_MECHANISM_INFO {
            ulMinKeySize: 0,
            ulMaxKeySize: 0,
            flags: 0,
        };
        let rv = call!(r, C_GetMechanismInfo(slot, t, &mut info));
        assert_eq!(rv, CKR_OK, "C_GetMechanismInfo({t:#x})");
        info.flags
    };
    let gen = flags(CKM_EC_EDWARDS_KEY_PAIR_GEN);
    assert!(
        gen & CKF_GENERATE_KEY_PAIR != 0 && gen & CKF_SIGN == 0,
        "{gen:#x}"
    );
    for t in [
        CKM_EDDSA,
        CKM_P11DERIVE_ECDSA_RECOVERABLE,
        CKM_P11DERIVE_BIP340,
    ] {
        let f = flags(t);
        assert_eq!(
            f & (CKF_SIGN | CKF_VERIFY),
            CKF_SIGN | CKF_VERIFY,
            "{t:#x}: {f:#x}"
        );
        assert_eq!(f & CKF_DERIVE, 0, "{t:#x}: {f:#x}");
    }
    let hd = flags(CKM_P11DERIVE_HD_CHILD);
    assert!(hd & CKF_DERIVE != 0 && hd & CKF_SIGN == 0, "{hd:#x}");
}
