//! ECDH through `C_DeriveKey` (`CKM_ECDH1_DERIVE`), `C_DigestKey`,
//! `C_SeedRandom` and the ending of operations on errors, end to end through
//! the built provider with SoftHSM behind it, through the raw function table.
//!
//! The shared secrets are checked against OpenSSL: a peer key made with
//! `openssl genpkey`, the secret `openssl pkeyutl -derive` computes with our
//! exported public key. The derived keys are sensitive, so the comparison
//! goes through them: an HMAC-SHA256 made with the derived key must be the
//! HMAC the test computes with OpenSSL's secret.

mod common;

use std::path::Path;
use std::process::Command;
use std::ptr;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::*;
use hmac::{KeyInit, Mac};
use sha2::Digest;

use common::*;

/// The DER of the curves' SubjectPublicKeyInfo up to the point.
const SPKI_P256: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";
const SPKI_K256: &str = "3056301006072a8648ce3d020106052b8104000a034200";

fn openssl(args: &[&str]) -> Vec<u8> {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// A peer key made by OpenSSL on `curve` ("P-256", "secp256k1"): its PEM
/// file and its raw uncompressed point.
fn peer_key(dir: &Path, curve: &str) -> (std::path::PathBuf, Vec<u8>) {
    let pem = dir.join(format!("peer-{curve}.pem"));
    let pem_s = pem.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        &format!("ec_paramgen_curve:{curve}"),
        "-out",
        pem_s,
    ]);
    let spki = openssl(&["pkey", "-in", pem_s, "-pubout", "-outform", "DER"]);
    (pem, spki[spki.len() - 65..].to_vec())
}

/// What `openssl pkeyutl -derive` agrees between the peer's key and our
/// public point (given as an SPKI DER with `prefix`).
fn openssl_secret(dir: &Path, peer: &Path, prefix: &str, ours: &[u8]) -> Vec<u8> {
    let der = dir.join("ours.der");
    std::fs::write(&der, [unhex(prefix), ours.to_vec()].concat()).unwrap();
    openssl(&[
        "pkeyutl",
        "-derive",
        "-inkey",
        peer.to_str().unwrap(),
        "-peerkey",
        der.to_str().unwrap(),
        "-peerform",
        "DER",
    ])
}

/// The raw point of a `CKA_EC_POINT` (a DER OCTET STRING of 65 bytes).
fn ec_point(s: &Session, key: ObjectHandle) -> Vec<u8> {
    match &s.get_attributes(key, &[AttributeType::EcPoint]).unwrap()[..] {
        [Attribute::EcPoint(p)] => {
            assert_eq!(&p[..2], &[0x04, 65]);
            p[2..].to_vec()
        }
        other => panic!("{other:?}"),
    }
}

fn public_key(s: &Session, label: &str) -> ObjectHandle {
    find_one(s, label, ObjectClass::PUBLIC_KEY).unwrap()
}

/// An attribute of a raw template, its value kept alive by the caller.
fn attr(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr() as *mut _,
        ulValueLen: v.len() as CK_ULONG,
    }
}

fn ulong(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// A generic secret of `len` bytes that may sign (HMAC): the usual template.
fn secret_template(len: CK_ULONG) -> Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> {
    vec![
        (CKA_CLASS, ulong(CKO_SECRET_KEY)),
        (CKA_KEY_TYPE, ulong(CKK_GENERIC_SECRET)),
        (CKA_VALUE_LEN, ulong(len)),
        (CKA_SIGN, vec![1]),
        (CKA_TOKEN, vec![0]),
    ]
}

/// `C_DeriveKey(mech, base)` with `CK_ECDH1_DERIVE_PARAMS {kdf, shared,
/// public}` (the parameter `param_len` long, normally the structure's size).
#[allow(clippy::too_many_arguments)]
fn derive_raw(
    s: &Session,
    mech: CK_MECHANISM_TYPE,
    base: ObjectHandle,
    kdf: CK_ULONG,
    shared: &[u8],
    public: &[u8],
    template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)],
    param_len: Option<CK_ULONG>,
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let r = raw();
    let mut params = CK_ECDH1_DERIVE_PARAMS {
        kdf,
        ulSharedDataLen: shared.len() as CK_ULONG,
        pSharedData: if shared.is_empty() {
            ptr::null_mut()
        } else {
            shared.as_ptr() as *mut _
        },
        ulPublicDataLen: public.len() as CK_ULONG,
        pPublicData: public.as_ptr() as *mut _,
    };
    let mut m = CK_MECHANISM {
        mechanism: mech,
        pParameter: &mut params as *mut _ as *mut _,
        ulParameterLen: param_len.unwrap_or(size_of::<CK_ECDH1_DERIVE_PARAMS>() as CK_ULONG),
    };
    let mut t: Vec<CK_ATTRIBUTE> = template.iter().map(|(ty, v)| attr(*ty, v)).collect();
    let mut out = 0;
    let rv = call!(
        r,
        C_DeriveKey(
            s.handle(),
            &mut m,
            base.handle(),
            t.as_mut_ptr(),
            t.len() as CK_ULONG,
            &mut out
        )
    );
    if rv == CKR_OK {
        Ok(out)
    } else {
        Err(rv)
    }
}

fn ecdh(s: &Session, base: ObjectHandle, public: &[u8], len: CK_ULONG) -> CK_OBJECT_HANDLE {
    derive_raw(
        s,
        CKM_ECDH1_DERIVE,
        base,
        CKD_NULL,
        &[],
        public,
        &secret_template(len),
        None,
    )
    .unwrap_or_else(|rv| panic!("C_DeriveKey(ECDH): {rv:#x}"))
}

/// An attribute of a raw handle, read through the raw function table.
fn get_raw(s: &Session, key: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> Result<Vec<u8>, CK_RV> {
    let r = raw();
    let mut a = CK_ATTRIBUTE {
        type_: ty,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    };
    let rv = call!(r, C_GetAttributeValue(s.handle(), key, &mut a, 1));
    if rv != CKR_OK {
        return Err(rv);
    }
    let mut v = vec![0u8; a.ulValueLen as usize];
    a.pValue = v.as_mut_ptr() as *mut _;
    let rv = call!(r, C_GetAttributeValue(s.handle(), key, &mut a, 1));
    if rv != CKR_OK {
        return Err(rv);
    }
    Ok(v)
}

fn flag_raw(s: &Session, key: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> bool {
    get_raw(s, key, ty).unwrap() == [1]
}

/// The HMAC-SHA256 of `msg` by the provider with key `key`.
fn hmac_by(s: &Session, key: CK_OBJECT_HANDLE, msg: &[u8]) -> Vec<u8> {
    let r = raw();
    let mut m = CK_MECHANISM {
        mechanism: CKM_SHA256_HMAC,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(call!(r, C_SignInit(s.handle(), &mut m, key)), CKR_OK);
    let mut out = [0u8; 32];
    let mut len = out.len() as CK_ULONG;
    let rv = call!(
        r,
        C_Sign(
            s.handle(),
            msg.as_ptr() as *mut _,
            msg.len() as _,
            out.as_mut_ptr(),
            &mut len
        )
    );
    assert_eq!((rv, len), (CKR_OK, 32));
    out.to_vec()
}

fn hmac_of(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// ANSI X9.63 KDF with SHA-256, written out here for the check.
fn x963_sha256(z: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut counter = 1u32;
    while out.len() < len {
        let mut h = sha2::Sha256::new();
        h.update(z);
        h.update(counter.to_be_bytes());
        h.update(info);
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

fn value_len(s: &Session, key: CK_OBJECT_HANDLE) -> CK_ULONG {
    CK_ULONG::from_ne_bytes(get_raw(s, key, CKA_VALUE_LEN).unwrap().try_into().unwrap())
}

fn derives(s: &Session, key: ObjectHandle) -> bool {
    flag_raw(s, key.handle(), CKA_DERIVE)
}

#[test]
fn ecdh_with_asset_keys_agrees_with_openssl_and_is_audited() {
    let _t = turn();
    let s = setup(None);
    s.create_asset("dh-p256", "p256");
    s.create_asset("dh-k1", "secp256k1");
    s.create_asset("dh-ed", "ed25519");
    let p = s.load();
    let session = p.user_session();
    let msg = b"ecdh check";
    for (label, curve, prefix) in [
        ("dh-p256", "P-256", SPKI_P256),
        ("dh-k1", "secp256k1", SPKI_K256),
    ] {
        let key = private_key(&session, label);
        assert!(derives(&session, key), "{label}");
        let ours = ec_point(&session, public_key(&session, label));
        let (peer_pem, peer) = peer_key(&s.dir, curve);
        let want = openssl_secret(&s.dir, &peer_pem, prefix, &ours);
        assert_eq!(want.len(), 32);
        // The raw point, and the DER OCTET STRING some clients send.
        let der = [vec![0x04, 65], peer.clone()].concat();
        for public in [&peer, &der] {
            let k = ecdh(&session, key, public, 32);
            assert_eq!(hmac_by(&session, k, msg), hmac_of(&want, msg), "{label}");
            assert_eq!(value_len(&session, k), 32);
            assert!(flag_raw(&session, k, CKA_SENSITIVE));
            assert!(!flag_raw(&session, k, CKA_EXTRACTABLE));
            assert!(!flag_raw(&session, k, CKA_TOKEN));
            assert_eq!(
                get_raw(&session, k, CKA_VALUE),
                Err(CKR_ATTRIBUTE_SENSITIVE)
            );
        }
        // The cofactor variant is the same on these curves (cofactor 1); a
        // shorter key keeps the secret's last bytes.
        let k = derive_raw(
            &session,
            CKM_ECDH1_COFACTOR_DERIVE,
            key,
            CKD_NULL,
            &[],
            &peer,
            &secret_template(20),
            None,
        )
        .unwrap();
        assert_eq!(hmac_by(&session, k, msg), hmac_of(&want[12..], msg));
        // The X9.63 KDF with shared data, longer than the secret.
        let info = b"shared info";
        let k = derive_raw(
            &session,
            CKM_ECDH1_DERIVE,
            key,
            CKD_SHA256_KDF,
            info,
            &peer,
            &secret_template(48),
            None,
        )
        .unwrap();
        let kdf = x963_sha256(&want, info, 48);
        assert_eq!(hmac_by(&session, k, msg), hmac_of(&kdf, msg));
        // An AES key of 16 bytes from the same agreement.
        let aes = [
            (CKA_CLASS, ulong(CKO_SECRET_KEY)),
            (CKA_KEY_TYPE, ulong(CKK_AES)),
            (CKA_VALUE_LEN, ulong(16)),
        ];
        let k = derive_raw(
            &session,
            CKM_ECDH1_DERIVE,
            key,
            CKD_SHA256_KDF,
            &[],
            &peer,
            &aes,
            None,
        )
        .unwrap();
        assert_eq!(value_len(&session, k), 16);
        // Every use is committed to the audit log, naming the peer's point.
        let records = s.audit_records(&["--asset", label]);
        let uses: Vec<_> = records
            .iter()
            .filter(|r| r["event"] == "sign" && r["rv"] == 0)
            .filter(|r| r["mechanism"] == CKM_ECDH1_DERIVE || r["mechanism"] == 0x1051)
            .collect();
        assert_eq!(uses.len(), 5, "{label}: {records:?}");
        assert!(uses
            .iter()
            .all(|r| r["input_sha256"] == sha256_hex(&peer) && r["version"] == 1));
    }
    // An Ed25519 key does no ECDH; a public key is not the base.
    let (_, peer) = peer_key(&s.dir, "P-256");
    let ed = private_key(&session, "dh-ed");
    let t = secret_template(32);
    let go = |base, public: &[u8], t: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]| {
        derive_raw(
            &session,
            CKM_ECDH1_DERIVE,
            base,
            CKD_NULL,
            &[],
            public,
            t,
            None,
        )
    };
    assert_eq!(go(ed, &peer, &t), Err(CKR_KEY_TYPE_INCONSISTENT));
    let pubkey = public_key(&session, "dh-p256");
    assert_eq!(go(pubkey, &peer, &t), Err(CKR_KEY_TYPE_INCONSISTENT));
    let key = private_key(&session, "dh-p256");
    // A point not on the curve, the point at infinity, a point of the wrong
    // length: the parameter is invalid.
    let mut off = peer.clone();
    off[64] ^= 1;
    assert_eq!(go(key, &off, &t), Err(CKR_MECHANISM_PARAM_INVALID));
    let zero = [vec![4u8], vec![0u8; 64]].concat();
    assert_eq!(go(key, &zero, &t), Err(CKR_MECHANISM_PARAM_INVALID));
    assert_eq!(go(key, &peer[..64], &t), Err(CKR_MECHANISM_PARAM_INVALID));
    assert_eq!(go(key, &[], &t), Err(CKR_MECHANISM_PARAM_INVALID));
    // A parameter of the wrong size; an unknown KDF; shared data with
    // CKD_NULL.
    let bad_size = derive_raw(
        &session,
        CKM_ECDH1_DERIVE,
        key,
        CKD_NULL,
        &[],
        &peer,
        &t,
        Some(8),
    );
    assert_eq!(bad_size, Err(CKR_MECHANISM_PARAM_INVALID));
    let asn1 = derive_raw(
        &session,
        CKM_ECDH1_DERIVE,
        key,
        CKD_SHA1_KDF_ASN1,
        &[],
        &peer,
        &t,
        None,
    );
    assert_eq!(asn1, Err(CKR_MECHANISM_PARAM_INVALID));
    let shared = derive_raw(
        &session,
        CKM_ECDH1_DERIVE,
        key,
        CKD_NULL,
        b"x",
        &peer,
        &t,
        None,
    );
    assert_eq!(shared, Err(CKR_MECHANISM_PARAM_INVALID));
    // Longer than the raw secret; a token object; a value given.
    assert_eq!(
        go(key, &peer, &secret_template(33)),
        Err(CKR_TEMPLATE_INCONSISTENT)
    );
    let mut token = secret_template(32);
    token.push((CKA_TOKEN, vec![1]));
    assert_eq!(go(key, &peer, &token), Err(CKR_TEMPLATE_INCONSISTENT));
    let mut valued = secret_template(32);
    valued.push((CKA_VALUE, vec![0; 32]));
    assert_eq!(go(key, &peer, &valued), Err(CKR_ATTRIBUTE_READ_ONLY));
    // A suspended asset does not derive: CKA_DERIVE says so, the refusal
    // is audited.
    ok(&s, &["asset", "suspend", "dh-p256"]);
    let key = private_key(&session, "dh-p256");
    assert!(!derives(&session, key));
    assert_eq!(go(key, &peer, &t), Err(CKR_KEY_FUNCTION_NOT_PERMITTED));
    let refused = s
        .audit_records(&["--asset", "dh-p256"])
        .into_iter()
        .filter(|r| r["event"] == "refused" && r["mechanism"] == CKM_ECDH1_DERIVE)
        .count();
    assert_eq!(refused, 1);
    ok(&s, &["asset", "resume", "dh-p256"]);
    let key = private_key(&session, "dh-p256");
    assert!(go(key, &peer, &t).is_ok());
    s.audit_verifies();
}

#[test]
fn ecdh_with_a_session_pair_agrees_with_openssl() {
    let _t = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let oid = unhex("06082a8648ce3d030107");
    let pair = |derive: bool| {
        session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[Attribute::EcParams(oid.clone()), Attribute::Token(false)],
                &[
                    Attribute::Token(false),
                    Attribute::Derive(derive),
                    Attribute::Sign(true),
                ],
            )
            .unwrap()
    };
    // Both ECDH mechanisms are listed, for derivation.
    let r = raw();
    for m in [CKM_ECDH1_DERIVE, CKM_ECDH1_COFACTOR_DERIVE] {
        let mut info = CK_MECHANISM_INFO {
            ulMinKeySize: 0,
            ulMaxKeySize: 0,
            flags: 0,
        };
        let rv = call!(r, C_GetMechanismInfo(p.slot.id() as _, m, &mut info));
        assert_eq!(rv, CKR_OK);
        assert_eq!(info.flags & (CKF_DERIVE | CKF_SIGN), CKF_DERIVE, "{m:#x}");
    }
    let (public, private) = pair(true);
    assert!(derives(&session, private));
    let ours = ec_point(&session, public);
    let (peer_pem, peer) = peer_key(&s.dir, "P-256");
    let want = openssl_secret(&s.dir, &peer_pem, SPKI_P256, &ours);
    let k = ecdh(&session, private, &peer, 32);
    assert_eq!(hmac_by(&session, k, b"m"), hmac_of(&want, b"m"));
    // Audited as a session key's use (no asset).
    let uses = s
        .audit_records(&[])
        .into_iter()
        .filter(|r| r["event"] == "sign" && r["mechanism"] == CKM_ECDH1_DERIVE)
        .filter(|r| r["input_sha256"] == sha256_hex(&peer))
        .count();
    assert_eq!(uses, 1);
    // A pair made without CKA_DERIVE=true does not derive.
    let (_, no_derive) = pair(false);
    assert!(!derives(&session, no_derive));
    let refused = derive_raw(
        &session,
        CKM_ECDH1_DERIVE,
        no_derive,
        CKD_NULL,
        &[],
        &peer,
        &secret_template(32),
        None,
    );
    assert_eq!(refused, Err(CKR_KEY_FUNCTION_NOT_PERMITTED));
}

#[test]
fn a_user_outside_the_assets_pattern_derives_nothing() {
    use common::users::*;
    let _t = turn();
    let s = users_setup_on(None);
    add_user(&s, "bob", "signer", "hot-*", "bob-secret-1");
    add_user(&s, "frank", "signer", "cold-*", "frank-secret-1");
    add_user(&s, "carol", "officer", "*", "carol-secret-1");
    add_user(&s, "dave", "auditor", "*", "dave-secret-1");
    ok_as(
        &s,
        "carol",
        "carol-secret-1",
        &["asset", "create", "cold-1", "--type", "p256"],
    );
    let p = s.load();
    let session = p.session();
    let login = |pin: &str| {
        session
            .login(
                cryptoki::session::UserType::User,
                Some(&cryptoki::types::AuthPin::from(pin)),
            )
            .unwrap()
    };
    login("frank:frank-secret-1");
    let cold = private_key(&session, "cold-1");
    let (_, peer) = peer_key(&s.dir, "P-256");
    let t = secret_template(32);
    let go = |base| {
        derive_raw(
            &session,
            CKM_ECDH1_DERIVE,
            base,
            CKD_NULL,
            &[],
            &peer,
            &t,
            None,
        )
    };
    assert!(go(cold).is_ok());
    let export = ok_as(
        &s,
        "dave",
        "dave-secret-1",
        &["audit", "export", "--asset", "cold-1"],
    );
    let named = export
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["event"] == "sign" && r["mechanism"] == CKM_ECDH1_DERIVE)
        .filter(|r| r["actor"] == "frank")
        .count();
    assert_eq!(named, 1);
    session.logout().unwrap();
    login("bob:bob-secret-1");
    assert_eq!(go(cold), Err(CKR_KEY_HANDLE_INVALID));
    session.logout().unwrap();
}

/// `C_DigestInit(SHA-256)` on the raw session.
fn digest_init(s: &Session) {
    let r = raw();
    let mut m = CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(call!(r, C_DigestInit(s.handle(), &mut m)), CKR_OK);
}

fn digest_update(s: &Session, data: &[u8]) -> CK_RV {
    let r = raw();
    call!(
        r,
        C_DigestUpdate(s.handle(), data.as_ptr() as *mut _, data.len() as _)
    )
}

#[test]
fn digest_key_seed_random_and_operations_ending_on_errors() {
    let _t = turn();
    let s = setup(None);
    s.create_asset("dk", "p256");
    let p = s.load();
    let session = p.user_session();
    let r = raw();
    let h = session.handle();
    // C_DigestKey: no digest running; then sensitive keys are indigestible
    // (the error ends the digest, as C_DigestUpdate's do).
    let key = private_key(&session, "dk");
    let (_, peer) = peer_key(&s.dir, "P-256");
    let secret = ecdh(&session, key, &peer, 32);
    assert_eq!(
        call!(r, C_DigestKey(h, secret)),
        CKR_OPERATION_NOT_INITIALIZED
    );
    for k in [secret, key.handle()] {
        digest_init(&session);
        assert_eq!(call!(r, C_DigestKey(h, k)), CKR_KEY_INDIGESTIBLE);
        assert_eq!(digest_update(&session, b"x"), CKR_OPERATION_NOT_INITIALIZED);
    }
    // An ECDH result the template makes readable (as pkcs11-provider asks
    // for EVP_PKEY_derive): its value is OpenSSL's secret, and C_DigestKey
    // digests exactly that value.
    let (peer_pem, peer2) = peer_key(&s.dir, "P-256");
    let ours = ec_point(&session, public_key(&session, "dk"));
    let want = openssl_secret(&s.dir, &peer_pem, SPKI_P256, &ours);
    let mut readable = secret_template(32);
    readable.push((CKA_SENSITIVE, vec![0]));
    readable.push((CKA_EXTRACTABLE, vec![1]));
    let open = derive_raw(
        &session,
        CKM_ECDH1_DERIVE,
        key,
        CKD_NULL,
        &[],
        &peer2,
        &readable,
        None,
    )
    .expect("a readable ECDH result");
    assert!(!flag_raw(&session, open, CKA_SENSITIVE));
    assert!(!flag_raw(&session, open, CKA_ALWAYS_SENSITIVE));
    assert_eq!(get_raw(&session, open, CKA_VALUE), Ok(want.clone()));
    digest_init(&session);
    assert_eq!(digest_update(&session, b"before "), CKR_OK);
    assert_eq!(call!(r, C_DigestKey(h, open)), CKR_OK);
    assert_eq!(digest_update(&session, b" after"), CKR_OK);
    let mut got = [0u8; 32];
    let mut got_len = got.len() as CK_ULONG;
    assert_eq!(
        call!(r, C_DigestFinal(h, got.as_mut_ptr(), &mut got_len)),
        CKR_OK
    );
    let expected = sha2::Sha256::digest([&b"before "[..], &want, &b" after"[..]].concat());
    assert_eq!(&got[..got_len as usize], &expected[..]);
    digest_init(&session);
    assert_eq!(
        call!(r, C_DigestKey(h, 0x7fff_0000)),
        CKR_KEY_HANDLE_INVALID
    );
    assert_eq!(digest_update(&session, b"x"), CKR_OPERATION_NOT_INITIALIZED);
    // C_SeedRandom reaches SoftHSM, which takes a seed; the token says it
    // has an RNG.
    let seed = [7u8; 32];
    assert_eq!(
        call!(r, C_SeedRandom(h, seed.as_ptr() as *mut _, seed.len() as _)),
        CKR_OK
    );
    assert_eq!(
        call!(r, C_SeedRandom(h, ptr::null_mut(), 4)),
        CKR_ARGUMENTS_BAD
    );
    let info = p.ctx.get_token_info(p.slot).unwrap();
    assert!(info.rng());
    // A digest ends on every error but CKR_BUFFER_TOO_SMALL: a NULL length
    // pointer (CKR_ARGUMENTS_BAD) ends it.
    let data = b"abc";
    let mut out = [0u8; 64];
    let mut len: CK_ULONG = 0;
    digest_init(&session);
    // A length query and a short buffer keep it.
    let rv = call!(
        r,
        C_Digest(h, data.as_ptr() as *mut _, 3, ptr::null_mut(), &mut len)
    );
    assert_eq!((rv, len), (CKR_OK, 32));
    len = 4;
    let rv = call!(
        r,
        C_Digest(h, data.as_ptr() as *mut _, 3, out.as_mut_ptr(), &mut len)
    );
    assert_eq!(rv, CKR_BUFFER_TOO_SMALL);
    // C_Digest made it single-part: C_DigestFinal is refused, and ends it.
    let rv = call!(r, C_DigestFinal(h, out.as_mut_ptr(), &mut len));
    assert_eq!(rv, CKR_OPERATION_ACTIVE);
    assert_eq!(digest_update(&session, b"x"), CKR_OPERATION_NOT_INITIALIZED);
    digest_init(&session);
    let rv = call!(
        r,
        C_Digest(
            h,
            data.as_ptr() as *mut _,
            3,
            out.as_mut_ptr(),
            ptr::null_mut()
        )
    );
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    assert_eq!(digest_update(&session, b"x"), CKR_OPERATION_NOT_INITIALIZED);
    digest_init(&session);
    assert_eq!(digest_update(&session, b"x"), CKR_OK);
    let rv = call!(r, C_DigestFinal(h, out.as_mut_ptr(), ptr::null_mut()));
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    assert_eq!(digest_update(&session, b"x"), CKR_OPERATION_NOT_INITIALIZED);
    digest_init(&session);
    assert_eq!(
        call!(r, C_DigestUpdate(h, ptr::null_mut(), 3)),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(digest_update(&session, b"x"), CKR_OPERATION_NOT_INITIALIZED);
    // The same for signing and verification.
    let mut m = CK_MECHANISM {
        mechanism: CKM_ECDSA_SHA256,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(call!(r, C_SignInit(h, &mut m, key.handle())), CKR_OK);
    let rv = call!(
        r,
        C_Sign(
            h,
            data.as_ptr() as *mut _,
            3,
            out.as_mut_ptr(),
            ptr::null_mut()
        )
    );
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    assert_eq!(
        call!(r, C_SignUpdate(h, data.as_ptr() as *mut _, 3)),
        CKR_OPERATION_NOT_INITIALIZED
    );
    let public = public_key(&session, "dk");
    assert_eq!(call!(r, C_VerifyInit(h, &mut m, public.handle())), CKR_OK);
    let rv = call!(r, C_Verify(h, ptr::null_mut(), 3, out.as_mut_ptr(), 64));
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    assert_eq!(
        call!(r, C_VerifyUpdate(h, data.as_ptr() as *mut _, 3)),
        CKR_OPERATION_NOT_INITIALIZED
    );
}
