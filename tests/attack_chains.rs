//! An independent attack on the chain-key surfaces of issue 23 (HD children
//! through `C_DeriveKey`, chain codes and xpubs, recoverable ECDSA and
//! BIP-340): each test tries to get a key used that what decides key use
//! should refuse, and asserts the refusal (a passing test = the defence
//! holds). A test whose comment starts `Was a hole:` failed before its fix.

mod common;

use std::ptr;

use common::*;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use cryptoki_sys::*;

const HARD: u64 = 0x8000_0000;
const CKM_P11DERIVE_HD_CHILD: CK_MECHANISM_TYPE = 0x8000_0000 | 0x5044_0001;
const CKM_P11DERIVE_ECDSA_RECOVERABLE: CK_MECHANISM_TYPE = 0x8000_0000 | 0x5044_0002;
const CKM_P11DERIVE_BIP340: CK_MECHANISM_TYPE = 0x8000_0000 | 0x5044_0003;
/// CKA_P11DERIVE_CHAIN_CODE (pkcs11-headers/p11derive.h).
const CKA_P11DERIVE_CHAIN_CODE: CK_ATTRIBUTE_TYPE = 0x8000_0000 | 0x5044_0008;

/// The parameter of CKM_P11DERIVE_HD_CHILD: native CK_ULONGs.
fn ulongs(path: &[u64]) -> Vec<u8> {
    path.iter()
        .flat_map(|&i| (i as CK_ULONG).to_ne_bytes())
        .collect()
}

/// `C_DeriveKey` with CKM_P11DERIVE_HD_CHILD and the raw parameter `param`.
fn derive_raw(
    r: &Raw,
    h: CK_SESSION_HANDLE,
    base: CK_OBJECT_HANDLE,
    param: &[u8],
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let mut param = param.to_vec();
    let mut mech = CK_MECHANISM {
        mechanism: CKM_P11DERIVE_HD_CHILD,
        pParameter: if param.is_empty() {
            ptr::null_mut()
        } else {
            param.as_mut_ptr().cast()
        },
        ulParameterLen: param.len() as CK_ULONG,
    };
    let mut out: CK_OBJECT_HANDLE = 0;
    let rv = call!(
        r,
        C_DeriveKey(h, &mut mech, base, ptr::null_mut(), 0, &mut out)
    );
    if rv == CKR_OK {
        Ok(out)
    } else {
        Err(rv)
    }
}

fn derive(
    r: &Raw,
    h: CK_SESSION_HANDLE,
    base: CK_OBJECT_HANDLE,
    path: &[u64],
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    derive_raw(r, h, base, &ulongs(path))
}

fn sign_init(
    r: &Raw,
    h: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_TYPE,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    let mut m = CK_MECHANISM {
        mechanism: mech,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    call!(r, C_SignInit(h, &mut m, key))
}

/// `C_Sign` of 32 bytes after an init: the signature or the refusal.
fn sign_now(r: &Raw, h: CK_SESSION_HANDLE, data: &[u8]) -> Result<Vec<u8>, CK_RV> {
    let mut data = data.to_vec();
    let mut sig = [0u8; 128];
    let mut len = sig.len() as CK_ULONG;
    let rv = call!(
        r,
        C_Sign(
            h,
            data.as_mut_ptr(),
            data.len() as CK_ULONG,
            sig.as_mut_ptr(),
            &mut len
        )
    );
    if rv == CKR_OK {
        Ok(sig[..len as usize].to_vec())
    } else {
        Err(rv)
    }
}

/// Init and sign at once.
fn sign(
    r: &Raw,
    h: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_TYPE,
    key: CK_OBJECT_HANDLE,
    data: &[u8],
) -> Result<Vec<u8>, CK_RV> {
    match sign_init(r, h, mech, key) {
        CKR_OK => sign_now(r, h, data),
        rv => Err(rv),
    }
}

fn verify(r: &Raw, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE, data: &[u8], sig: &[u8]) -> CK_RV {
    let mut m = CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let rv = call!(r, C_VerifyInit(h, &mut m, key));
    if rv != CKR_OK {
        return rv;
    }
    let mut d = data.to_vec();
    let mut sg = sig.to_vec();
    call!(
        r,
        C_Verify(
            h,
            d.as_mut_ptr(),
            d.len() as CK_ULONG,
            sg.as_mut_ptr(),
            sg.len() as CK_ULONG
        )
    )
}

/// Signature records of `asset` made (rv 0) whose detail names an HD path.
fn child_signatures(s: &Setup, asset: &str) -> usize {
    s.audit_records(&[])
        .iter()
        .filter(|r| {
            r["event"] == "sign"
                && r["rv"] == 0
                && r["asset"] == asset
                && r["detail"].as_str().is_some_and(|d| d.starts_with("path="))
        })
        .count()
}

/// Pass-through mode: a child derived while its asset signs outlives a
/// suspension, a rotation without grace, a trim and a retirement made by
/// another process: a C_Sign whose C_SignInit came before the change
/// releases nothing, a new C_SignInit is refused, and the log says so.
#[test]
fn a_child_does_not_outlive_its_asset_state() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("hd-life", "secp256k1");
    let p = s.load();
    let session = p.user_session();
    let r = raw();
    let h = session.handle();
    let sk = private_key(&session, "hd-life").handle();
    let child = derive(&r, h, sk, &[44 | HARD, HARD]).expect("derive m/44'/0'");
    let digest = [9u8; 32];
    sign(&r, h, CKM_ECDSA, child, &digest).expect("the child signs while its asset may");
    assert_eq!(child_signatures(&s, "hd-life"), 1);

    // Suspend between C_SignInit and C_Sign.
    assert_eq!(sign_init(&r, h, CKM_ECDSA, child), CKR_OK);
    ok(&s, &["asset", "suspend", "hd-life"]);
    let e = sign_now(&r, h, &digest).expect_err("a suspended asset's child signed");
    assert_ne!(e, CKR_OK);
    assert_ne!(
        sign_init(&r, h, CKM_ECDSA, child),
        CKR_OK,
        "init after suspend"
    );
    assert!(
        derive(&r, h, sk, &[44 | HARD, 1 | HARD]).is_err(),
        "a suspended asset derived a private child"
    );
    assert!(
        derive(&r, h, child, &[1]).is_err(),
        "a suspended asset's child derived a private grandchild"
    );
    assert_eq!(child_signatures(&s, "hd-life"), 1, "nothing released");
    let refused = s
        .audit_records(&[])
        .iter()
        .filter(|r| {
            r["event"] == "refused"
                && r["asset"] == "hd-life"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("path=m/44'/0'"))
        })
        .count();
    assert!(refused >= 2, "the refusals name the child's path");
    ok(&s, &["asset", "resume", "hd-life"]);
    sign(&r, h, CKM_ECDSA, child, &digest).expect("resumed: the child signs again");

    // Rotation without grace: version 1's child stops at once, even mid-operation.
    assert_eq!(sign_init(&r, h, CKM_ECDSA, child), CKR_OK);
    ok(&s, &["asset", "rotate", "hd-life"]);
    assert!(
        sign_now(&r, h, &digest).is_err(),
        "v1 child signed after rotation"
    );
    assert_ne!(sign_init(&r, h, CKM_ECDSA, child), CKR_OK);
    // A grandchild of the v1 child is v1 too.
    assert!(
        derive(&r, h, child, &[3]).is_err(),
        "derived from a v1 child after rotation"
    );

    // With grace: a v2 child made, then v2 rotated with grace → v2 child signs until finish.
    let sk2 = private_key(&session, "hd-life").handle();
    let child2 = derive(&r, h, sk2, &[44 | HARD, 2 | HARD]).expect("a v2 child");
    ok(&s, &["asset", "rotate", "hd-life", "--grace"]);
    sign(&r, h, CKM_ECDSA, child2, &digest).expect("grace: the v2 child still signs");
    assert_eq!(sign_init(&r, h, CKM_ECDSA, child2), CKR_OK);
    ok(&s, &["asset", "finish", "hd-life"]);
    assert!(
        sign_now(&r, h, &digest).is_err(),
        "v2 child signed after finish"
    );

    // Trim: a v3 signature checked by v3's public child, whose C_VerifyInit
    // came before v3 was trimmed away, is not accepted.
    let sk3 = private_key(&session, "hd-life").handle();
    let pk3 = find_one(&session, "hd-life", ObjectClass::PUBLIC_KEY)
        .unwrap()
        .handle();
    let child3 = derive(&r, h, sk3, &[7]).expect("a v3 child");
    let pub3 = derive(&r, h, pk3, &[7]).expect("a v3 public child");
    let sig3 = sign(&r, h, CKM_ECDSA, child3, &digest).expect("v3 child signs");
    assert_eq!(
        verify(&r, h, pub3, &digest, &sig3),
        CKR_OK,
        "v3 public child verifies"
    );
    let mut m = CK_MECHANISM {
        mechanism: CKM_ECDSA,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(call!(r, C_VerifyInit(h, &mut m, pub3)), CKR_OK);
    ok(&s, &["asset", "rotate", "hd-life"]);
    ok(&s, &["asset", "trim", "hd-life", "4"]);
    let mut d = digest;
    let mut sg = sig3.clone();
    let rv = call!(
        r,
        C_Verify(h, d.as_mut_ptr(), 32, sg.as_mut_ptr(), sg.len() as CK_ULONG)
    );
    assert_ne!(rv, CKR_OK, "a trimmed version's child verified");
    assert_ne!(verify(&r, h, pub3, &digest, &sig3), CKR_OK, "after trim");
    assert_ne!(sign_init(&r, h, CKM_ECDSA, child3), CKR_OK);
    assert!(
        derive(&r, h, pub3, &[1]).is_err(),
        "derived from a trimmed public child"
    );

    // Retire mid-operation: the v4 child.
    let sk4 = private_key(&session, "hd-life").handle();
    let child4 = derive(&r, h, sk4, &[8]).expect("a v4 child");
    assert_eq!(sign_init(&r, h, CKM_ECDSA, child4), CKR_OK);
    ok(&s, &["asset", "retire", "hd-life", "--yes"]);
    assert!(
        sign_now(&r, h, &digest).is_err(),
        "a retired asset's child signed"
    );
    assert_ne!(sign_init(&r, h, CKM_ECDSA, child4), CKR_OK);
    assert!(derive(&r, h, child4, &[1]).is_err());

    // Every signature the log records was made while its version could sign: 4.
    assert_eq!(
        child_signatures(&s, "hd-life"),
        4,
        "nothing released after a change"
    );
    s.audit_verifies();
}

/// Mechanism confusion and parameter tricks on children: BIP-340 and
/// recoverable ECDSA on a P-256 or Ed25519 child, multi-part recoverable,
/// path parameters of 0 or 256 indices, an index of 2^32 or more (64-bit
/// CK_ULONG), a length that is not a multiple of CK_ULONG, and a hardened
/// (non-Ed25519-conforming) index on an Ed25519 tree.
#[test]
fn mechanism_and_parameter_tricks_are_refused() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("hd-p256", "p256");
    s.create_asset("hd-ed", "ed25519");
    s.create_asset("hd-k1", "secp256k1");
    let p = s.load();
    let session = p.user_session();
    let r = raw();
    let h = session.handle();
    let p256 = private_key(&session, "hd-p256").handle();
    let ed = private_key(&session, "hd-ed").handle();
    let k1 = private_key(&session, "hd-k1").handle();
    let c_p256 = derive(&r, h, p256, &[1 | HARD, 2]).expect("p256 child");
    let c_ed = derive(&r, h, ed, &[1 | HARD]).expect("ed25519 hardened child");
    let c_k1 = derive(&r, h, k1, &[1 | HARD, 2]).expect("secp256k1 child");
    let digest = [5u8; 32];
    for (what, key) in [("p256", c_p256), ("ed25519", c_ed)] {
        for mech in [CKM_P11DERIVE_BIP340, CKM_P11DERIVE_ECDSA_RECOVERABLE] {
            assert!(
                sign(&r, h, mech, key, &digest).is_err(),
                "{what} child signed with {mech:#x}"
            );
        }
    }
    assert!(
        sign(&r, h, CKM_ECDSA, c_ed, &digest).is_err(),
        "ECDSA on an Ed25519 child"
    );
    // Ed25519 (SLIP-10) has hardened children only.
    assert!(
        derive(&r, h, ed, &[1]).is_err(),
        "non-hardened Ed25519 child"
    );
    assert!(
        derive(&r, h, c_ed, &[1]).is_err(),
        "non-hardened Ed25519 grandchild"
    );

    // Recoverable ECDSA is single-part: C_SignUpdate refused, nothing signed.
    assert_eq!(
        sign_init(&r, h, CKM_P11DERIVE_ECDSA_RECOVERABLE, c_k1),
        CKR_OK
    );
    let mut part = [1u8; 16];
    let rv = call!(r, C_SignUpdate(h, part.as_mut_ptr(), 16));
    assert_ne!(rv, CKR_OK, "C_SignUpdate with recoverable ECDSA");
    // Whatever state the operation is left in, no C_SignFinal signature.
    let mut sig = [0u8; 65];
    let mut len: CK_ULONG = 65;
    assert_ne!(call!(r, C_SignFinal(h, sig.as_mut_ptr(), &mut len)), CKR_OK);
    // A digest that is not 32 bytes.
    let _ = call!(r, C_SignFinal(h, ptr::null_mut(), &mut len));
    assert!(sign(&r, h, CKM_P11DERIVE_ECDSA_RECOVERABLE, c_k1, &[5u8; 31]).is_err());
    assert!(sign(&r, h, CKM_P11DERIVE_ECDSA_RECOVERABLE, c_k1, &[5u8; 33]).is_err());
    assert!(sign(&r, h, CKM_P11DERIVE_ECDSA_RECOVERABLE, c_k1, &digest).is_ok());

    // Path parameters.
    assert_eq!(
        derive_raw(&r, h, k1, &[]),
        Err(CKR_MECHANISM_PARAM_INVALID),
        "0 indices"
    );
    assert_eq!(
        derive(&r, h, k1, &[1; 256]),
        Err(CKR_MECHANISM_PARAM_INVALID),
        "256"
    );
    assert_eq!(
        derive_raw(&r, h, k1, &[0u8; 7]),
        Err(CKR_MECHANISM_PARAM_INVALID),
        "7 bytes"
    );
    if size_of::<CK_ULONG>() == 8 {
        // 2^32 + 44' would be 44' if the high half were dropped.
        assert_eq!(
            derive(&r, h, k1, &[(1 << 32) | 44 | HARD]),
            Err(CKR_MECHANISM_PARAM_INVALID),
            "an index of 2^32 or more"
        );
    }
    // 255 levels then 1 more from the child: the joined path is too deep.
    let deep = derive(&r, h, k1, &[3; 255]).expect("255 levels");
    assert!(
        derive(&r, h, deep, &[1]).is_err(),
        "256 levels through a child"
    );
    // A null parameter pointer with a length.
    let mut mech = CK_MECHANISM {
        mechanism: CKM_P11DERIVE_HD_CHILD,
        pParameter: ptr::null_mut(),
        ulParameterLen: 8,
    };
    let mut out: CK_OBJECT_HANDLE = 0;
    assert_ne!(
        call!(
            r,
            C_DeriveKey(h, &mut mech, k1, ptr::null_mut(), 0, &mut out)
        ),
        CKR_OK
    );
}

/// Chain codes stay off private objects and private children, and a
/// search cannot use CKA_P11DERIVE_CHAIN_CODE as an oracle on them; a
/// private child cannot be found or used without login.
#[test]
fn chain_codes_are_not_disclosed_through_private_objects() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("hd-cc", "secp256k1");
    let p = s.load();
    let session = p.user_session();
    let r = raw();
    let h = session.handle();
    let sk = private_key(&session, "hd-cc");
    let pk = find_one(&session, "hd-cc", ObjectClass::PUBLIC_KEY).unwrap();
    let read = |obj: CK_OBJECT_HANDLE| -> (CK_RV, CK_ULONG) {
        let mut buf = [0u8; 64];
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_P11DERIVE_CHAIN_CODE,
            pValue: buf.as_mut_ptr().cast(),
            ulValueLen: 64,
        }];
        let rv = call!(r, C_GetAttributeValue(h, obj, t.as_mut_ptr(), 1));
        (rv, t[0].ulValueLen)
    };
    let (rv, len) = read(pk.handle());
    assert_eq!(
        (rv, len),
        (CKR_OK, 32),
        "the public object shows its chain code"
    );
    let mut cc = [0u8; 32];
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_P11DERIVE_CHAIN_CODE,
        pValue: cc.as_mut_ptr().cast(),
        ulValueLen: 32,
    }];
    assert_eq!(
        call!(r, C_GetAttributeValue(h, pk.handle(), t.as_mut_ptr(), 1)),
        CKR_OK
    );
    let (rv, len) = read(sk.handle());
    assert_ne!(rv, CKR_OK, "the private object's chain code");
    assert_eq!(len, CK_UNAVAILABLE_INFORMATION);
    let child = derive(&r, h, sk.handle(), &[HARD]).unwrap();
    let (rv, len) = read(child);
    assert_ne!(rv, CKR_OK, "a private child's chain code");
    assert_eq!(len, CK_UNAVAILABLE_INFORMATION);
    // A search by chain code finds only public objects.
    let found = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    assert!(!found.is_empty());
    let mut class = CKO_PRIVATE_KEY;
    let mut tmpl = [
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: (&mut class as *mut CK_ULONG).cast(),
            ulValueLen: size_of::<CK_ULONG>() as CK_ULONG,
        },
        CK_ATTRIBUTE {
            type_: CKA_P11DERIVE_CHAIN_CODE,
            pValue: cc.as_mut_ptr().cast(),
            ulValueLen: 32,
        },
    ];
    assert_eq!(call!(r, C_FindObjectsInit(h, tmpl.as_mut_ptr(), 2)), CKR_OK);
    let mut hits = [0 as CK_OBJECT_HANDLE; 8];
    let mut n: CK_ULONG = 0;
    assert_eq!(
        call!(r, C_FindObjects(h, hits.as_mut_ptr(), 8, &mut n)),
        CKR_OK
    );
    assert_eq!(call!(r, C_FindObjectsFinal(h)), CKR_OK);
    assert_eq!(n, 0, "a private key matched a chain code: an oracle");

    // Logged out: the private child is neither usable nor derivable from,
    // and the public object's chain code (derived in the HSM) is unavailable.
    session.logout().unwrap();
    assert_ne!(
        sign_init(&r, h, CKM_ECDSA, child),
        CKR_OK,
        "child used without login"
    );
    assert!(
        derive(&r, h, child, &[1]).is_err(),
        "derived from a private child without login"
    );
    let (rv, _) = read(pk.handle());
    assert_ne!(rv, CKR_OK, "chain code without login");
    // Logged in again (pass-through: same user), fresh session handles work.
    session
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .unwrap();
    drop(session);
    // The child died with its session.
    let other: Session = p.session();
    assert_ne!(
        sign_init(&r, other.handle(), CKM_ECDSA, child),
        CKR_OK,
        "a child outlived its session"
    );
}

/// `audit export` as the auditor dave (users mode).
fn records_as_auditor(s: &Setup) -> Vec<serde_json::Value> {
    let out = as_user(s, "dave", "dave-secret-1", &["audit", "export"]);
    assert!(out.status.success(), "audit export: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn signed_as_auditor(s: &Setup) -> usize {
    records_as_auditor(s)
        .iter()
        .filter(|r| r["event"] == "sign" && r["rv"] == 0)
        .count()
}

fn login(session: &Session, pin: &str) {
    session
        .login(UserType::User, Some(&AuthPin::from(pin)))
        .unwrap_or_else(|e| panic!("login {pin}: {e}"));
}

/// Users mode with `paths=m/44'/60'/0'` on hot-*: the master key, an
/// ancestor derived to reach the allowed prefix, a sibling of the allowed
/// prefix derived from that ancestor, and a deeper child whose joined path
/// escapes, all refused; only keys under the prefix sign. Roles: an
/// auditor or officer cannot derive a private child or sign with one made
/// by a signer's session after re-login, and a signer limited to hot-*
/// cannot reach cold-1's private key.
#[test]
fn paths_and_roles_hold_for_children() {
    let _turn = turn();
    let s = users_setup_on(None);
    add_user(&s, "bob", "signer", "hot-*", "bob-secret-1");
    add_user(&s, "carol", "officer", "*", "carol-secret-1");
    add_user(&s, "dave", "auditor", "*", "dave-secret-1");
    for a in ["hot-1", "cold-1"] {
        ok_as(
            &s,
            "carol",
            "carol-secret-1",
            &["asset", "create", a, "--type", "secp256k1"],
        );
    }
    ok_as(
        &s,
        "admin",
        ADMIN,
        &["policy", "set", "hot-*", "--paths", "m/44'/60'/0'"],
    );
    let p = s.load();
    let session = p.session();
    login(&session, "bob:bob-secret-1");
    let r = raw();
    let h = session.handle();
    let digest = [3u8; 32];
    let sk = private_key(&session, "hot-1").handle();
    assert!(
        sign(&r, h, CKM_ECDSA, sk, &digest).is_err(),
        "master key m signed"
    );
    let a44 = derive(&r, h, sk, &[44 | HARD]).expect("an ancestor of the prefix derives");
    assert!(
        sign(&r, h, CKM_ECDSA, a44, &digest).is_err(),
        "ancestor m/44' signed"
    );
    assert!(derive(&r, h, a44, &[HARD]).is_err(), "m/44'/0' from m/44'");
    assert!(
        derive(&r, h, a44, &[60 | HARD, 1 | HARD]).is_err(),
        "m/44'/60'/1'"
    );
    let a60 = derive(&r, h, a44, &[60 | HARD]).expect("m/44'/60'");
    assert!(
        sign(&r, h, CKM_P11DERIVE_BIP340, a60, &digest).is_err(),
        "m/44'/60' signed"
    );
    assert!(
        derive(&r, h, a60, &[1 | HARD]).is_err(),
        "m/44'/60'/1' from m/44'/60'"
    );
    // 60 without the hardened bit, and 60' with a bit above 2^32 that a
    // truncation to u32 would drop.
    assert!(derive(&r, h, a44, &[60, HARD]).is_err(), "m/44'/60/0'");
    if size_of::<CK_ULONG>() == 8 {
        assert!(derive(&r, h, a44, &[(1 << 33) | 60 | HARD, HARD]).is_err());
    }
    let ok_child = derive(&r, h, a60, &[HARD]).expect("m/44'/60'/0'");
    sign(&r, h, CKM_ECDSA, ok_child, &digest).expect("the allowed prefix signs");
    let deeper = derive(&r, h, ok_child, &[0, 5]).expect("below the prefix");
    sign(&r, h, CKM_P11DERIVE_ECDSA_RECOVERABLE, deeper, &digest).expect("below signs");
    // The public tree is not restricted, but a public child never signs.
    let pk = find_one(&session, "hot-1", ObjectClass::PUBLIC_KEY)
        .unwrap()
        .handle();
    let pub_child = derive(&r, h, pk, &[1, 2]).expect("public children are public");
    assert!(sign(&r, h, CKM_ECDSA, pub_child, &digest).is_err());
    // cold-1 is outside bob's patterns: no private object, no private child.
    assert!(find_one(&session, "cold-1", ObjectClass::PRIVATE_KEY).is_none());
    let cold_pub = find_one(&session, "cold-1", ObjectClass::PUBLIC_KEY)
        .unwrap()
        .handle();
    if let Ok(c) = derive(&r, h, cold_pub, &[1]) {
        assert!(
            sign(&r, h, CKM_ECDSA, c, &digest).is_err(),
            "cold-1 public child signed"
        );
    }
    let signed_before = signed_as_auditor(&s);

    // Another user in the same process, with bob's session objects still there.
    session.logout().unwrap();
    for (who, pin) in [
        ("dave", "dave:dave-secret-1"),
        ("carol", "carol:carol-secret-1"),
    ] {
        login(&session, pin);
        for key in [ok_child, deeper] {
            assert!(
                sign(&r, h, CKM_ECDSA, key, &digest).is_err(),
                "{who} signed with bob's child"
            );
            assert!(
                derive(&r, h, key, &[1]).is_err(),
                "{who} derived from bob's child"
            );
        }
        if let Some(k) = find_one(&session, "hot-1", ObjectClass::PRIVATE_KEY) {
            assert!(
                derive(&r, h, k.handle(), &[44 | HARD, 60 | HARD, HARD]).is_err(),
                "{who} derived a private child"
            );
        }
        session.logout().unwrap();
    }
    assert_eq!(
        signed_as_auditor(&s),
        signed_before,
        "nothing signed by others"
    );
    let refusals = records_as_auditor(&s)
        .iter()
        .filter(|r| {
            r["event"] == "refused"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("rule=path"))
        })
        .count();
    assert!(refusals >= 4, "path refusals are audited ({refusals})");
    ok_as(&s, "dave", "dave-secret-1", &["audit", "verify"]);
}

fn openssl(args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(o.status.success(), "openssl {args:?}: {}", output_text(&o));
}

/// A `sign` quorum rule on vault-*: a digest approved for the asset's own
/// key is not released through an HD child's signature (same digest, same
/// mechanism), and the approval is not consumed by the attempt: the asset's
/// own key then signs it once.
#[test]
fn an_approval_for_the_asset_key_does_not_release_a_child_signature() {
    let _turn = turn();
    let s = users_setup_on(None);
    add_user(&s, "bob", "signer", "*", "bob-secret-1");
    add_user(&s, "carol", "officer", "*", "carol-secret-1");
    add_user(&s, "dave", "auditor", "*", "dave-secret-1");
    ok_as(
        &s,
        "carol",
        "carol-secret-1",
        &["asset", "create", "vault-1", "--type", "secp256k1"],
    );
    let key = s.dir.join("ann.key");
    let public = s.dir.join("ann.pub");
    let (k, pb) = (key.to_str().unwrap(), public.to_str().unwrap());
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", k]);
    openssl(&["pkey", "-in", k, "-pubout", "-out", pb]);
    ok_as(&s, "admin", ADMIN, &["approver", "add", "ann", "--key", pb]);
    ok_as(
        &s,
        "admin",
        ADMIN,
        &[
            "quorum",
            "set",
            "sign",
            "--assets",
            "vault-*",
            "--approvals",
            "1",
        ],
    );
    let digest = [0x42u8; 32];
    let out = as_user(
        &s,
        "bob",
        "bob-secret-1",
        &[
            "--json",
            "request",
            "new",
            "sign",
            "vault-1",
            "--digest",
            &hex(&digest),
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = s.dir.join("req.bytes");
    ok_as(
        &s,
        "carol",
        "carol-secret-1",
        &["request", "export", &id, "--out", bytes.to_str().unwrap()],
    );
    let sig = s.dir.join("req.sig");
    openssl(&[
        "pkeyutl",
        "-sign",
        "-rawin",
        "-inkey",
        k,
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
    let status = |s: &Setup| -> String {
        let o = as_user(
            s,
            "carol",
            "carol-secret-1",
            &["--json", "request", "show", &id],
        );
        assert!(o.status.success(), "{}", output_text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status(&s), "pending");

    let p = s.load();
    let session = p.session();
    login(&session, "bob:bob-secret-1");
    let r = raw();
    let h = session.handle();
    let sk = private_key(&session, "vault-1").handle();
    // Children on several paths, with the approved mechanism and digest.
    let mut tried = 0;
    for path in [&[HARD][..], &[0], &[44 | HARD, 60 | HARD, HARD, 0, 0]] {
        let Ok(child) = derive(&r, h, sk, path) else {
            continue; // refusing the derivation is a defence too
        };
        tried += 1;
        for mech in [
            CKM_ECDSA,
            CKM_P11DERIVE_ECDSA_RECOVERABLE,
            CKM_P11DERIVE_BIP340,
        ] {
            assert!(
                sign(&r, h, mech, child, &digest).is_err(),
                "a child at {path:?} signed the approved digest with {mech:#x}"
            );
        }
    }
    assert_eq!(
        tried, 3,
        "the children were derived (so their signatures were tried)"
    );
    assert_eq!(
        status(&s),
        "pending",
        "a child's attempt consumed the approval"
    );
    // The asset's own key signs it, once.
    sign(&r, h, CKM_ECDSA, sk, &digest).expect("the approved digest signs with the asset key");
    assert_eq!(status(&s), "executed");
    assert!(sign(&r, h, CKM_ECDSA, sk, &digest).is_err(), "used twice");
    let made: Vec<serde_json::Value> = records_as_auditor(&s)
        .into_iter()
        .filter(|r| r["event"] == "sign" && r["rv"] == 0)
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    ok_as(&s, "dave", "dave-secret-1", &["audit", "verify"]);
}

/// Loads the provider afresh for `s`, logs bob in and tries the hot-1
/// master key and a child at m/5 (outside `paths=m/1'`): how many
/// signatures were released (0 also when the provider refuses to start),
/// and whether a child under the allowed path signed.
fn escapes_in_fresh_load(s: &Setup) -> (usize, bool) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let ctx = Pkcs11::new(module_path()).expect("load libp11derive.so");
    if ctx
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .is_err()
    {
        return (0, false);
    }
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let session = ctx.open_rw_session(slot).unwrap();
    let (mut n, mut allowed) = (0, false);
    if session
        .login(UserType::User, Some(&AuthPin::from("bob:bob-secret-1")))
        .is_ok()
    {
        let r = raw();
        let h = session.handle();
        if let Some(sk) = find_one(&session, "hot-1", ObjectClass::PRIVATE_KEY) {
            let sk = sk.handle();
            n += usize::from(sign(&r, h, CKM_ECDSA, sk, &[1; 32]).is_ok());
            if let Ok(c) = derive(&r, h, sk, &[5]) {
                n += usize::from(sign(&r, h, CKM_ECDSA, c, &[1; 32]).is_ok());
            }
            // The allowed path, to show the check is not vacuous.
            if let Ok(c) = derive(&r, h, sk, &[1 | HARD, 2]) {
                allowed = sign(&r, h, CKM_ECDSA, c, &[1; 32]).is_ok();
            }
        }
    }
    drop(session);
    let _ = ctx.finalize();
    (n, allowed)
}

/// Someone with write access to the SQLite store loosens `paths=`: the
/// policy row given another row's settings, deleted, or put back from a
/// copy taken before `--paths` was set. Each is refused when read (no
/// escape released), and `audit verify` names the row.
#[test]
fn a_paths_policy_edited_in_the_store_is_refused() {
    let _turn = turn();
    let s = users_setup_on(None);
    add_user(&s, "bob", "signer", "hot-*", "bob-secret-1");
    add_user(&s, "carol", "officer", "*", "carol-secret-1");
    add_user(&s, "dave", "auditor", "*", "dave-secret-1");
    ok_as(
        &s,
        "carol",
        "carol-secret-1",
        &["asset", "create", "hot-1", "--type", "secp256k1"],
    );
    let admin = |args: &[&str]| ok_as(&s, "admin", ADMIN, args);
    admin(&["policy", "set", "hot-*", "--asset-rate", "1000/1h"]);
    admin(&["policy", "set", "zz-*", "--asset-rate", "1000/1h"]);
    let before_paths = s.dir.join("before-paths.db");
    backup(&s.store, &before_paths);
    admin(&["policy", "set", "hot-*", "--paths", "m/1'"]);
    let good = s.dir.join("good.db");
    backup(&s.store, &good);
    assert_eq!(escapes_in_fresh_load(&s), (0, true), "untampered");
    let restore = || {
        sqlite(
            &s.store,
            &format!(
                "ATTACH '{}' AS o; DELETE FROM policies; INSERT INTO policies SELECT * FROM o.policies",
                good.display()
            ),
        )
    };
    let tampers = [
        (
            "settings swapped",
            "UPDATE policies SET settings = (SELECT settings FROM policies WHERE pattern = 'zz-*') \
             WHERE pattern = 'hot-*'"
                .to_string(),
        ),
        (
            "paths cut from settings",
            "UPDATE policies SET settings = replace(replace(settings, 'paths=', 'x='), 'm/1''', '') \
             WHERE pattern = 'hot-*'"
                .to_string(),
        ),
        (
            "row deleted",
            "DELETE FROM policies WHERE pattern = 'hot-*'".to_string(),
        ),
        (
            "row put back from before --paths",
            format!(
                "ATTACH '{}' AS o; DELETE FROM policies WHERE pattern = 'hot-*'; \
                 INSERT INTO policies SELECT * FROM o.policies WHERE pattern = 'hot-*'",
                before_paths.display()
            ),
        ),
    ];
    for (what, sql) in tampers {
        sqlite(&s.store, &sql);
        assert_eq!(
            escapes_in_fresh_load(&s).0,
            0,
            "{what}: a key outside paths= signed"
        );
        let out = as_user(&s, "dave", "dave-secret-1", &["audit", "verify"]);
        assert!(!out.status.success(), "{what}: audit verify passed");
        restore();
        // Put right again, the store works (so the next tamper is tried on a good store).
        assert_eq!(
            escapes_in_fresh_load(&s),
            (0, true),
            "after {what}, restored"
        );
    }
}

// ------------------------------------------------------------ memory

const MEM_ASSET: &str = "memory-hd";
/// An arena size no other mapping of the process has (tests/memory.rs uses 72).
const MEM_ARENA_KIB: usize = 88;
const MEM_PIN_LEN: usize = 16;

/// Writes a random root and PIN into `dir`, readable by the owner only.
const MEM_SECRETS: &str = r#"
import os, secrets, sys
d = sys.argv[1]
for name, text in (("root.hex", os.urandom(32).hex()), ("pin", secrets.token_hex(8))):
    fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
"#;

/// The Ed25519 master (version 1) of MEM_ASSET and its SLIP-10 child m/7',
/// key and chain code, XOR the mask, computed independently.
const MEM_NEEDLES: &str = r#"
import hashlib, hmac, os, sys
sys.path.insert(0, sys.argv[1])
import gen_vectors as g
d, asset, mask = sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4])
root = bytes.fromhex(open(os.path.join(d, "root.hex")).read())
_, prk, attempts = g.derive(root, asset, 1, "ed25519")
k, cc = attempts[-1], g.chain_code(prk)
i = hmac.new(cc, b"\0" + k + (0x80000007).to_bytes(4, "big"), hashlib.sha512).digest()
for name, secret in (("master-chain", cc), ("child-key", i[:32]), ("child-chain", i[32:])):
    print(name, bytes(a ^ b for a, b in zip(secret, mask)).hex())
"#;

fn run_ok(cmd: &mut std::process::Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}", output_text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// An HD child's key and chain code (and its master's chain code) live only
/// in locked memory while the child signs, and nowhere once its session is
/// closed (design §6.5 / docs/security.md "HD trees and chain keys").
///
/// Was a hole: the child's chain code was kept in ordinary heap memory (the
/// `ExtendedPublic` of the session object) and left there after the session
/// closed; the master's chain code was copied to the ordinary stack.
#[test]
fn child_keys_and_chain_codes_stay_in_locked_memory() {
    use common::memscan::*;
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::types::RawAuthPin;
    use std::io::Read;
    let _turn = turn();
    let dir = softhsm_dir().join("memory-hd");
    std::fs::create_dir_all(&dir).unwrap();
    run_ok(
        std::process::Command::new("python3")
            .args(["-c", MEM_SECRETS])
            .arg(&dir),
        "root and PIN",
    );
    let label = format!("memhd-{}", std::process::id() % 100_000);
    run_ok(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(
                "softhsm2-util --init-token --free --label \"$1\" --pin \"$(cat \"$2\")\" \
                 --so-pin 87654321 >/dev/null",
            )
            .arg("sh")
            .arg(&label)
            .arg(dir.join("pin")),
        "softhsm2-util --init-token",
    );
    let config = dir.join("p11derive.toml");
    let text = config_text(&label, &dir.join("state.db"), &dir.join("p11derive.log"));
    std::fs::write(
        &config,
        format!("{text}\n[memory]\nlocked_kib = {MEM_ARENA_KIB}\n\n[cache]\nttl_seconds = 300\n"),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(cli_path());
        cmd.env("P11DERIVE_CONF", &config)
            .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"))
            .env_remove("P11DERIVE_PIN")
            .args(args)
            .arg("--pin-file")
            .arg(dir.join("pin"));
        cmd
    };
    let root = dir.join("root.hex");
    run_ok(
        &mut cli(&["init", "--import-root", root.to_str().unwrap()]),
        "init",
    );
    run_ok(
        &mut cli(&["asset", "create", MEM_ASSET, "--type", "ed25519"]),
        "asset create",
    );
    let mask = random(32);
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/vectors");
    let out = run_ok(
        std::process::Command::new("python3")
            .args(["-c", MEM_NEEDLES])
            .arg(vectors)
            .arg(&dir)
            .arg(MEM_ASSET)
            .arg(hex(&mask)),
        "masked needles",
    );
    let needles = parse_needles(&out);
    assert_eq!(needles.len(), 3, "{out}");

    std::env::set_var("P11DERIVE_CONF", &config);
    let ctx = Pkcs11::new(module_path()).expect("load libp11derive.so");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let keeper = ctx.open_rw_session(slot).unwrap();
    {
        let mut pin = vec![0u8; MEM_PIN_LEN];
        std::fs::File::open(dir.join("pin"))
            .unwrap()
            .read_exact(&mut pin)
            .unwrap();
        let pin = RawAuthPin::new(Box::new(pin));
        keeper
            .login_with_raw(UserType::User, &pin)
            .expect("C_Login");
    }
    let r = raw();
    let session = ctx.open_rw_session(slot).unwrap();
    let h = session.handle();
    let sk = find_one(&session, MEM_ASSET, ObjectClass::PRIVATE_KEY)
        .unwrap()
        .handle();
    let child = derive(&r, h, sk, &[7 | HARD]).expect("m/7'");
    for _ in 0..5 {
        sign(&r, h, CKM_EDDSA, child, b"scan me").expect("the child signs");
    }
    let arena = locked(MEM_ARENA_KIB);
    let hits = scan(&needles, &mask);
    assert!(
        count(&hits, "child-key") >= 1,
        "the child's key is in the arena"
    );
    for name in ["child-key", "child-chain", "master-chain"] {
        assert!(
            outside(&hits, name, &arena).is_empty(),
            "the {name} found outside locked memory at {:x?}, in\n{}",
            outside(&hits, name, &arena),
            where_(&outside(&hits, name, &arena))
        );
    }
    // The session closed: its child is wiped.
    drop(session);
    let hits = scan(&needles, &mask);
    for name in ["child-key", "child-chain"] {
        assert_eq!(
            count(&hits, name),
            0,
            "the {name} is still in memory after its session closed"
        );
    }
    keeper.logout().unwrap();
    drop(keeper);
    ctx.finalize().unwrap();
}

fn ec_point(r: &Raw, h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_EC_POINT,
        pValue: buf.as_mut_ptr().cast(),
        ulValueLen: 128,
    }];
    assert_eq!(
        call!(r, C_GetAttributeValue(h, obj, t.as_mut_ptr(), 1)),
        CKR_OK
    );
    buf[..t[0].ulValueLen as usize].to_vec()
}

/// The chain code a private child keeps in the arena is the one its
/// children are derived with: a path taken in steps (private child of a
/// private child) is the key of the same path taken at once, and of the
/// public derivation where the path allows one; its signatures verify
/// with the public child.
#[test]
fn a_path_taken_in_steps_is_the_same_key() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("hd-steps", "secp256k1");
    s.create_asset("hd-steps-ed", "ed25519");
    let p = s.load();
    let session = p.user_session();
    let r = raw();
    let h = session.handle();
    let sk = private_key(&session, "hd-steps").handle();
    let pk = find_one(&session, "hd-steps", ObjectClass::PUBLIC_KEY)
        .unwrap()
        .handle();
    let at_once = derive(&r, h, sk, &[44 | HARD, 60 | HARD, HARD, 0, 5]).unwrap();
    let a = derive(&r, h, sk, &[44 | HARD]).unwrap();
    let b = derive(&r, h, a, &[60 | HARD, HARD]).unwrap();
    let c = derive(&r, h, b, &[0]).unwrap();
    let stepped = derive(&r, h, c, &[5]).unwrap();
    assert_eq!(ec_point(&r, h, at_once), ec_point(&r, h, stepped));
    let private = derive(&r, h, sk, &[1, 2]).unwrap();
    let private2 = derive(&r, h, derive(&r, h, sk, &[1]).unwrap(), &[2]).unwrap();
    let public = derive(&r, h, pk, &[1, 2]).unwrap();
    assert_eq!(ec_point(&r, h, private), ec_point(&r, h, public));
    assert_eq!(ec_point(&r, h, private2), ec_point(&r, h, public));
    let digest = [0x11u8; 32];
    let sig = sign(&r, h, CKM_ECDSA, private2, &digest).unwrap();
    assert_eq!(verify(&r, h, public, &digest, &sig), CKR_OK);

    let ed = private_key(&session, "hd-steps-ed").handle();
    let once = derive(&r, h, ed, &[HARD, 3 | HARD]).unwrap();
    let two = derive(&r, h, derive(&r, h, ed, &[HARD]).unwrap(), &[3 | HARD]).unwrap();
    assert_eq!(ec_point(&r, h, once), ec_point(&r, h, two));
}

/// Users mode: children do not multiply a rate limit (the asset's limit
/// counts the signatures of every key of its tree), and a signer limited to
/// hot-* cannot derive from cold-1's private key through a handle an
/// officer's login showed in the same process.
#[test]
fn children_share_their_asset_rate_and_guessed_handles_are_refused() {
    let _turn = turn();
    let s = users_setup_on(None);
    add_user(&s, "bob", "signer", "hot-*", "bob-secret-1");
    add_user(&s, "carol", "officer", "*", "carol-secret-1");
    add_user(&s, "dave", "auditor", "*", "dave-secret-1");
    for a in ["hot-1", "cold-1"] {
        ok_as(
            &s,
            "carol",
            "carol-secret-1",
            &["asset", "create", a, "--type", "secp256k1"],
        );
    }
    ok_as(
        &s,
        "admin",
        ADMIN,
        &["policy", "set", "hot-*", "--asset-rate", "3/1h"],
    );
    let p = s.load();
    let session = p.session();
    let r = raw();
    let h = session.handle();
    login(&session, "carol:carol-secret-1");
    let cold = find_one(&session, "cold-1", ObjectClass::PRIVATE_KEY)
        .expect("the officer sees cold-1's private key")
        .handle();
    session.logout().unwrap();
    login(&session, "bob:bob-secret-1");
    assert!(
        derive(&r, h, cold, &[HARD]).is_err(),
        "bob derived from cold-1"
    );
    assert!(
        sign(&r, h, CKM_ECDSA, cold, &[1; 32]).is_err(),
        "bob signed with cold-1"
    );
    let sk = private_key(&session, "hot-1").handle();
    let mut made = 0;
    for i in 0..6u64 {
        let c = derive(&r, h, sk, &[i | HARD]).expect("a child");
        made += usize::from(sign(&r, h, CKM_ECDSA, c, &[2; 32]).is_ok());
    }
    made += usize::from(sign(&r, h, CKM_ECDSA, sk, &[2; 32]).is_ok());
    assert_eq!(made, 3, "children multiplied the asset's rate");
    assert_eq!(signed_as_auditor(&s), 3);
}

/// CKM_EDDSA on an Ed25519 child with a CK_EDDSA_PARAMS that lies: a
/// context length with no context pointer, Ed25519ph, or a parameter
/// length that is not the struct's; each refused (the context pointer is
/// never followed), while the pure form signs.
#[test]
fn eddsa_params_that_lie_are_refused_on_children() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("hd-edp", "ed25519");
    let p = s.load();
    let session = p.user_session();
    let r = raw();
    let h = session.handle();
    let ed = private_key(&session, "hd-edp").handle();
    let child = derive(&r, h, ed, &[5 | HARD]).unwrap();
    let try_params = |ph: u8, ctx_len: CK_ULONG, len: usize| -> CK_RV {
        let mut params = CK_EDDSA_PARAMS {
            phFlag: ph,
            ulContextDataLen: ctx_len,
            pContextData: ptr::null_mut(),
        };
        let mut m = CK_MECHANISM {
            mechanism: CKM_EDDSA,
            pParameter: (&mut params as *mut CK_EDDSA_PARAMS).cast(),
            ulParameterLen: len as CK_ULONG,
        };
        let rv = call!(r, C_SignInit(h, &mut m, child));
        if rv != CKR_OK {
            return rv;
        }
        match sign_now(&r, h, b"msg") {
            Ok(_) => CKR_OK,
            Err(rv) => rv,
        }
    };
    let size = size_of::<CK_EDDSA_PARAMS>();
    // Pure Ed25519 takes no parameter: a CK_EDDSA_PARAMS with phFlag false
    // is Ed25519ctx, even with an empty context (PKCS#11 3.0), refused.
    assert_eq!(try_params(0, 0, 0), CKR_OK, "pure Ed25519 signs");
    for (ph, ctx, len, what) in [
        (0, 0, size, "Ed25519ctx with an empty context"),
        (0, 1 << 20, size, "context length without a pointer"),
        (0, CK_ULONG::MAX, size, "context length of CK_ULONG::MAX"),
        (1, 0, size, "Ed25519ph"),
        (0, 0, size - 1, "a short parameter"),
    ] {
        assert_ne!(try_params(ph, ctx, len), CKR_OK, "{what}");
    }
}
