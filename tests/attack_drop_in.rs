//! Attacks on what decides whether a key may be used or revealed, through
//! the paths issue 24 opened to third-party suites: modifiable and copyable
//! session objects, ECDH through `C_DeriveKey`, the block modes on derived
//! AES assets, `C_DigestKey`, public session keys usable without a login,
//! and new key types in the store. Every refusal asserts its exact code.

mod common;

use std::ptr;

use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::{AuthPin, Ulong};
use cryptoki_sys::*;

fn ulong(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// `C_DeriveKey(CKM_ECDH1_DERIVE, CKD_NULL)` with `template`: the handle or
/// the code.
fn ecdh_raw(
    s: &Session,
    base: ObjectHandle,
    public: &[u8],
    template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)],
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let r = raw();
    let mut params = CK_ECDH1_DERIVE_PARAMS {
        kdf: CKD_NULL,
        ulSharedDataLen: 0,
        pSharedData: ptr::null_mut(),
        ulPublicDataLen: public.len() as CK_ULONG,
        pPublicData: public.as_ptr() as *mut _,
    };
    let mut m = CK_MECHANISM {
        mechanism: CKM_ECDH1_DERIVE,
        pParameter: &mut params as *mut _ as *mut _,
        ulParameterLen: size_of::<CK_ECDH1_DERIVE_PARAMS>() as CK_ULONG,
    };
    let mut t: Vec<CK_ATTRIBUTE> = template
        .iter()
        .map(|(ty, v)| CK_ATTRIBUTE {
            type_: *ty,
            pValue: v.as_ptr() as *mut _,
            ulValueLen: v.len() as CK_ULONG,
        })
        .collect();
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

fn generic(extra: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> {
    let mut t = vec![
        (CKA_CLASS, ulong(CKO_SECRET_KEY)),
        (CKA_KEY_TYPE, ulong(CKK_GENERIC_SECRET)),
        (CKA_TOKEN, vec![0]),
    ];
    t.extend_from_slice(extra);
    t
}

/// A peer's P-256 point (uncompressed, raw).
fn peer_point() -> Vec<u8> {
    use p256::elliptic_curve::sec1::ToSec1Point;
    let sk = p256::SecretKey::from_slice(&[0x5a; 32]).unwrap();
    sk.public_key().to_sec1_point(false).as_bytes().to_vec()
}

/// `C_GetAttributeValue` of one attribute through the raw table: its code.
fn get_rv(s: &Session, h: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> CK_RV {
    let r = raw();
    let mut buf = [0u8; 256];
    let mut a = [CK_ATTRIBUTE {
        type_: ty,
        pValue: buf.as_mut_ptr() as *mut _,
        ulValueLen: buf.len() as _,
    }];
    call!(r, C_GetAttributeValue(s.handle(), h, a.as_mut_ptr(), 1))
}

/// `C_DigestInit(SHA-256)` then `C_DigestKey(key)`: the second's code.
fn digest_key(s: &Session, key: CK_OBJECT_HANDLE) -> CK_RV {
    let r = raw();
    let mut m = CK_MECHANISM {
        mechanism: CKM_SHA256,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(call!(r, C_DigestInit(s.handle(), &mut m)), CKR_OK);
    let rv = call!(r, C_DigestKey(s.handle(), key));
    // End whatever is left of the digest.
    let mut out = [0u8; 64];
    let mut len = out.len() as CK_ULONG;
    call!(r, C_DigestFinal(s.handle(), out.as_mut_ptr(), &mut len));
    rv
}

fn gcm(iv: &mut [u8; 12]) -> Mechanism<'_> {
    Mechanism::AesGcm(GcmParams::new(iv, b"", Ulong::from(128u64)).unwrap())
}

fn hd_child(session: &Session, base: ObjectHandle, index: u64) -> ObjectHandle {
    use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
    use cryptoki::mechanism::MechanismType;
    let hd = CKM_VENDOR_DEFINED | 0x5044_0001;
    let param = [index];
    let mech = Mechanism::VendorDefined(VendorDefinedMechanism::new(
        MechanismType::new_vendor_defined(hd).unwrap(),
        Some(&param),
    ));
    session.derive_key(&mech, base, &[]).unwrap()
}

/// The one object labelled `label` the session sees.
fn by_label(s: &Session, label: &str) -> ObjectHandle {
    let found = s
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(found.len(), 1, "{label}");
    found[0]
}

/// The ECDH result is a function of the derived private key: x(d·P) for a
/// point P the caller picks. Decision (main's, argued here): it may be made
/// readable when the template asks (`CKA_SENSITIVE=false`,
/// `CKA_EXTRACTABLE=true`), as pkcs11-provider needs for `EVP_PKEY_derive`.
/// That is what ECDH is for, like a signature's output: the agreement is
/// authorised and audited like a signature before the key exists, and
/// x(d·P) for chosen P gives d away no more than the public key does
/// (computational Diffie-Hellman), provided P is on the curve (no
/// invalid-curve points; the curves have cofactor 1). What must hold: a
/// result made sensitive never becomes readable, digestible or wrappable
/// later, and no off-curve point is used.
#[test]
fn an_ecdh_result_is_readable_only_as_asked_and_only_the_agreement() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("dh", "p256");
    let p = s.load();
    let session = p.user_session();
    let base = private_key(&session, "dh");
    let peer = peer_point();
    // Made sensitive (the default): it stays so through
    // C_SetAttributeValue and copies, duplicates in templates included.
    let k = ecdh_raw(
        &session,
        base,
        &peer,
        &generic(&[(CKA_LABEL, b"agreed".to_vec())]),
    )
    .unwrap();
    let key = by_label(&session, "agreed");
    assert_eq!(key.handle(), k);
    assert_eq!(get_rv(&session, k, CKA_VALUE), CKR_ATTRIBUTE_SENSITIVE);
    assert_eq!(digest_key(&session, k), CKR_KEY_INDIGESTIBLE);
    for t in [
        vec![Attribute::Sensitive(false)],
        vec![Attribute::Sensitive(true), Attribute::Sensitive(false)],
        vec![Attribute::Extractable(true)],
        vec![Attribute::Value(vec![0; 32])],
        vec![Attribute::Class(ObjectClass::DATA)],
    ] {
        assert_eq!(
            rv_of(session.update_attributes(key, &t)),
            RvError::AttributeReadOnly,
            "set {t:?}"
        );
        assert_eq!(
            rv_of(session.copy_object(key, &t)),
            RvError::AttributeReadOnly,
            "copy {t:?}"
        );
    }
    // CKA_SENSITIVE spelled as a zero-length or odd value is false: a
    // sensitive key refuses it.
    for spelled in [vec![], vec![0u8, 1], vec![0u8; 8]] {
        assert_eq!(
            set_raw(&session, k, CKA_SENSITIVE, &spelled),
            CKR_ATTRIBUTE_READ_ONLY,
            "{spelled:?}"
        );
    }
    assert_eq!(get_rv(&session, k, CKA_VALUE), CKR_ATTRIBUTE_SENSITIVE);
    // Not extractable unless asked: no wrapping with a key the caller knows.
    let kek = session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Value(vec![7; 32]),
            Attribute::Wrap(true),
        ])
        .unwrap();
    assert_eq!(
        rv_of(session.wrap_key(&Mechanism::AesKeyWrap, kek, key)),
        RvError::KeyUnextractable
    );
    // Not sensitive but not extractable: still no value.
    let half = ecdh_raw(&session, base, &peer, &generic(&[(CKA_SENSITIVE, vec![0])])).unwrap();
    assert_eq!(get_rv(&session, half, CKA_VALUE), CKR_ATTRIBUTE_SENSITIVE);

    // Readable as asked: with the generator as the peer's point, what is
    // read is x(d·G), the public key's x: the agreement, nothing more.
    let generator = {
        use p256::elliptic_curve::sec1::ToSec1Point;
        let mut one = [0u8; 32];
        one[31] = 1;
        let sk = p256::SecretKey::from_slice(&one).unwrap();
        sk.public_key().to_sec1_point(false).as_bytes().to_vec()
    };
    let open = ecdh_raw(
        &session,
        base,
        &generator,
        &generic(&[(CKA_SENSITIVE, vec![0]), (CKA_EXTRACTABLE, vec![1])]),
    )
    .unwrap();
    let point = get_bytes(
        &session,
        find_one(&session, "dh", ObjectClass::PUBLIC_KEY)
            .unwrap()
            .handle(),
        CKA_EC_POINT,
    );
    assert_eq!(get_bytes(&session, open, CKA_VALUE), point[3..35]);
    // Each agreement was recorded (with the peer's point) before its key.
    let records = s.audit_records(&[]);
    for (peer, want) in [(&peer, 2), (&generator, 1)] {
        let n = records
            .iter()
            .filter(|r| r["event"] == "sign" && r["mechanism"] == CKM_ECDH1_DERIVE)
            .filter(|r| r["input_sha256"] == sha256_hex(peer))
            .count();
        assert_eq!(n, want, "records of the agreements");
    }
    // No invalid-curve point: off the curve, or the point at infinity.
    let mut off = peer.clone();
    off[64] ^= 1;
    for bad in [off, vec![0u8]] {
        assert_eq!(
            ecdh_raw(
                &session,
                base,
                &bad,
                &generic(&[(CKA_SENSITIVE, vec![0]), (CKA_EXTRACTABLE, vec![1])])
            ),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
    }
}

/// `C_SetAttributeValue` of one attribute through the raw table: its code.
fn set_raw(s: &Session, h: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_RV {
    let r = raw();
    let mut a = [CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr() as *mut _,
        ulValueLen: v.len() as CK_ULONG,
    }];
    call!(r, C_SetAttributeValue(s.handle(), h, a.as_mut_ptr(), 1))
}

/// Derived assets and HD children: never digested, wrapped, read, made
/// public or copied, whatever the template.
#[test]
fn derived_keys_and_hd_children_reveal_nothing() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("vault", "aes256");
    s.create_asset("hot", "secp256k1");
    let p = s.load();
    let session = p.user_session();
    let vault = find_one(&session, "vault", ObjectClass::SECRET_KEY).unwrap();
    let hot = private_key(&session, "hot");
    let child = hd_child(&session, hot, 7);
    for h in [vault, hot, child] {
        assert_eq!(digest_key(&session, h.handle()), CKR_KEY_INDIGESTIBLE);
        assert_eq!(
            get_rv(&session, h.handle(), CKA_VALUE),
            CKR_ATTRIBUTE_SENSITIVE
        );
    }
    let kek = session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Value(vec![8; 32]),
            Attribute::Wrap(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ])
        .unwrap();
    assert_eq!(
        rv_of(session.wrap_key(&Mechanism::AesKeyWrap, kek, vault)),
        RvError::KeyUnextractable
    );
    assert_eq!(
        rv_of(session.wrap_key(&Mechanism::AesKeyWrap, kek, child)),
        RvError::KeyNotWrappable
    );
    let templates: Vec<Vec<Attribute>> = vec![
        vec![Attribute::Private(false)],
        vec![Attribute::Token(false), Attribute::Private(false)],
        vec![Attribute::Token(true)],
        vec![Attribute::Modifiable(true)],
        vec![Attribute::Copyable(true)],
        vec![Attribute::Class(ObjectClass::SECRET_KEY)],
        vec![Attribute::KeyType(KeyType::GENERIC_SECRET)],
        vec![Attribute::Value(vec![0; 32])],
        vec![Attribute::Sensitive(true), Attribute::Sensitive(false)],
        vec![],
    ];
    for h in [vault, hot, child] {
        for t in &templates {
            assert_eq!(
                rv_of(session.copy_object(h, t)),
                RvError::ActionProhibited,
                "copy {h:?} {t:?}"
            );
            if !t.is_empty() {
                assert_eq!(
                    rv_of(session.update_attributes(h, t)),
                    RvError::ActionProhibited,
                    "set {h:?} {t:?}"
                );
            }
        }
    }
    // The child is still private: after a logout, nothing uses it.
    let digest = [3u8; 32];
    session.sign(&Mechanism::Ecdsa, child, &digest).unwrap();
    session.logout().unwrap();
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, child, &digest)),
        RvError::UserNotLoggedIn,
        "an HD child after the logout"
    );
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, hot, &digest)),
        RvError::UserNotLoggedIn,
        "an asset after the logout"
    );
    assert_eq!(
        rv_of(session.encrypt(&Mechanism::AesEcb, vault, &[0u8; 16])),
        RvError::KeyHandleInvalid,
        "a derived AES key after the logout (not visible)"
    );
}

/// ECDH never goes through a version that may not sign, nor without a
/// login.
#[test]
fn ecdh_from_suspended_rotated_out_or_logged_out_keys_is_refused() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("dh", "p256");
    s.create_asset("off", "p256");
    ok(&s, &["asset", "rotate", "dh"]);
    ok(&s, &["asset", "suspend", "off"]);
    let p = s.load();
    let session = p.user_session();
    let peer = peer_point();
    let current = private_key(&session, "dh");
    assert!(ecdh_raw(&session, current, &peer, &generic(&[])).is_ok());
    let old = find_one(&session, "dh@v1", ObjectClass::PRIVATE_KEY).unwrap();
    assert_eq!(
        ecdh_raw(&session, old, &peer, &generic(&[])),
        Err(CKR_KEY_FUNCTION_NOT_PERMITTED),
        "a rotated-out version"
    );
    let off = private_key(&session, "off");
    assert_eq!(
        ecdh_raw(&session, off, &peer, &generic(&[])),
        Err(CKR_KEY_FUNCTION_NOT_PERMITTED),
        "a suspended asset"
    );
    // The result made public (CKA_PRIVATE=false) is a session key the
    // caller chose to share; the asset itself stays behind the login.
    session.logout().unwrap();
    assert_eq!(
        ecdh_raw(
            &session,
            current,
            &peer,
            &generic(&[(CKA_PRIVATE, vec![0])])
        ),
        Err(CKR_USER_NOT_LOGGED_IN),
        "no login"
    );
}

/// The block modes use a subkey: an ECB output of the derived AES key is
/// never its GCM key's block. For a 96-bit IV, GCM's tag of an empty
/// message with no AAD is E_K(IV || 1) exactly (GHASH of the zero length
/// block is zero), so with ECB under K a caller would forge it; the first
/// ciphertext block of zeros is E_K(IV || 2).
#[test]
fn ecb_with_a_derived_key_forges_no_gcm_tag() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("vault", "aes256");
    let p = s.load();
    let session = p.user_session();
    let vault = find_one(&session, "vault", ObjectClass::SECRET_KEY).unwrap();
    let iv = [0x42u8; 12];
    let block = |n: u8| {
        let mut b = [0u8; 16];
        b[..12].copy_from_slice(&iv);
        b[15] = n;
        b
    };
    let other = [0x43u8; 12];
    let block_of = |iv: &[u8; 12], n: u8| {
        let mut b = [0u8; 16];
        b[..12].copy_from_slice(iv);
        b[15] = n;
        b
    };
    let ecb = session
        .encrypt(
            &Mechanism::AesEcb,
            vault,
            &[block(1), block_of(&other, 2)].concat(),
        )
        .unwrap();
    // A forged empty message: the tag E_K(J0) the ECB oracle would give.
    let mut iv1 = iv;
    assert_eq!(
        rv_of(session.decrypt(&gcm(&mut iv1), vault, &ecb[..16])),
        RvError::EncryptedDataInvalid
    );
    // The real tag of the empty message under that IV is not the ECB block.
    let mut iv2 = iv;
    let tag = session.encrypt(&gcm(&mut iv2), vault, b"").unwrap();
    assert_eq!(tag.len(), 16);
    assert_ne!(&tag[..], &ecb[..16], "E_K(J0) = ECB block");
    let mut iv3 = iv;
    assert_eq!(
        session.decrypt(&gcm(&mut iv3), vault, &tag).unwrap(),
        b"",
        "the real tag opens"
    );
    // GCM's keystream is not ECB's either: zeros encrypt to E_K(IV || 2).
    let mut iv4 = other;
    let sealed = session.encrypt(&gcm(&mut iv4), vault, &[0u8; 16]).unwrap();
    assert_ne!(&sealed[..16], &ecb[16..32], "CTR keystream = ECB block");
}

/// A signature recorded, the last session closed, the tail of the audit log
/// cut with write access to the store: the next process (or `audit
/// verify`) sees the loss. Then the key type edited in the sealed store:
/// the asset is refused.
#[test]
fn closing_the_last_session_and_edited_key_types_are_noticed() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("a", "p256");
    let p = s.load();
    let session = p.user_session();
    try_sign(&session, "a").expect("a signs");
    let before = s.dir.join("before.db");
    backup(&s.store, &before);
    try_sign(&session, "a").expect("a signs");
    drop(session);
    sqlite(
        &s.store,
        &format!(
            "ATTACH '{}' AS o; DELETE FROM audit WHERE seq > (SELECT max(seq) FROM o.audit);",
            before.display()
        ),
    );
    drop(p);
    let verify = cli(&s, &["audit", "verify"]);
    let from = s.log().len();
    let fresh = new_process_signs(&s, "a");
    eprintln!("verify {:?}; new process {fresh:?}", verify.status.code());
    assert_eq!(verify.status.code(), Some(1), "audit verify sees the cut");
    assert_eq!(
        fresh,
        Err("login refused: DeviceError".to_string()),
        "the next process refuses the cut store"
    );
    assert!(s
        .log_since(from)
        .contains("is older than the rollback anchor in the backing HSM"));

    for (kind, edited, class) in [
        ("p256", "p384", ObjectClass::PRIVATE_KEY),
        ("aes256", "aes128", ObjectClass::SECRET_KEY),
        ("secp256k1", "p256", ObjectClass::PRIVATE_KEY),
    ] {
        let s = setup(None);
        s.create_asset("k", kind);
        sqlite(
            &s.store,
            &format!("UPDATE assets SET key_type = '{edited}' WHERE name = 'k';"),
        );
        let from = s.log().len();
        let got = new_process_uses(&s, "k", class);
        eprintln!("{kind} -> {edited}: {got:?}");
        // The row no longer verifies: the asset has no object at all.
        assert_eq!(got, Err("no object".to_string()), "{kind} -> {edited}");
        assert!(
            s.log_since(from)
                .contains("asset \"k\": its row does not verify under the state key"),
            "{kind} -> {edited}: the log names the row"
        );
    }
}

fn new_process_session(s: &Setup) -> Result<(Provider, Session), String> {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let ctx = Pkcs11::new(module_path()).map_err(|e| e.to_string())?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("C_Initialize refused: {e}"))?;
    let slot = ctx.get_slots_with_token().map_err(|e| e.to_string())?[0];
    let p = Provider { ctx, slot };
    let session = p.session();
    session
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .map_err(|e| format!("login refused: {:?}", rv_of::<()>(Err(e))))?;
    Ok((p, session))
}

fn new_process_signs(s: &Setup, key: &str) -> Result<(), String> {
    let (_p, session) = new_process_session(s)?;
    try_sign(&session, key)
        .map(|_| ())
        .map_err(|e| format!("sign refused: {e:?}"))
}

fn new_process_uses(s: &Setup, key: &str, class: ObjectClass) -> Result<(), String> {
    let (_p, session) = new_process_session(s)?;
    let h = find_one(&session, key, class).ok_or("no object")?;
    let r = if class == ObjectClass::SECRET_KEY {
        session
            .encrypt(&Mechanism::AesEcb, h, &[0u8; 16])
            .map(|_| ())
    } else {
        session.sign(&Mechanism::Ecdsa, h, &[1u8; 32]).map(|_| ())
    };
    r.map_err(|e| format!("refused: {:?}", rv_of::<()>(Err(e))))
}

/// Users mode: a private session key another user made is not usable, not
/// copyable, not readable; the public session-key path does not reach a
/// derived key.
#[test]
fn another_users_private_session_key_is_out_of_reach() {
    let _turn = turn();
    let s = users_setup_on(None);
    add_user(&s, "sam", "signer", "*", "sam-secret-1");
    add_user(&s, "tom", "signer", "*", "tom-secret-1");
    add_user(&s, "carol", "officer", "*", "carol-secret-1");
    ok_as(
        &s,
        "carol",
        "carol-secret-1",
        &["asset", "create", "shared", "--type", "p256"],
    );
    let p = s.load();
    let session = p.session();
    let login = |who: &str| {
        session
            .login(UserType::User, Some(&AuthPin::from(who)))
            .unwrap()
    };
    login("sam:sam-secret-1");
    let key = session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Value(vec![9; 32]),
        ])
        .unwrap();
    let base = private_key(&session, "shared");
    ecdh_raw(
        &session,
        base,
        &peer_point(),
        &generic(&[(CKA_LABEL, b"agreed".to_vec())]),
    )
    .unwrap();
    let agreed = by_label(&session, "agreed");
    session.logout().unwrap();
    login("tom:tom-secret-1");
    for h in [key, agreed] {
        assert_eq!(
            rv_of(session.encrypt(&Mechanism::AesEcb, h, &[0u8; 16])),
            RvError::KeyHandleInvalid,
            "use {h:?}"
        );
        assert_eq!(
            rv_of(session.copy_object(h, &[Attribute::Private(false)])),
            RvError::ObjectHandleInvalid,
            "copy {h:?}"
        );
        assert_eq!(
            rv_of(session.update_attributes(h, &[Attribute::Label(b"mine".to_vec())])),
            RvError::ObjectHandleInvalid,
            "set {h:?}"
        );
        assert_eq!(
            get_rv(&session, h.handle(), CKA_LABEL),
            CKR_OBJECT_HANDLE_INVALID
        );
    }
}

/// Restrictions a caller puts on a session key (`CKA_WRAP_WITH_TRUSTED`, a
/// narrower `CKA_ALLOWED_MECHANISMS`) are refused, as for token keys, when
/// the token cannot enforce them; otherwise the key would do what its maker
/// forbade (be wrapped by any key; encrypt with ECB).
#[test]
fn restrictions_a_session_key_cannot_keep_are_refused() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let kek = session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Value(vec![1; 32]),
            Attribute::Wrap(true),
        ])
        .unwrap();
    let base = |extra: Vec<Attribute>| {
        let mut t = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Value(vec![2; 32]),
            Attribute::Extractable(true),
        ];
        t.extend(extra);
        t
    };
    let gcm_only = Attribute::AllowedMechanisms(vec![cryptoki::mechanism::MechanismType::AES_GCM]);
    for (what, extra) in [
        ("wrap with trusted", vec![Attribute::WrapWithTrusted(true)]),
        ("GCM only", vec![gcm_only.clone()]),
    ] {
        let from = s.log().len();
        assert_eq!(
            rv_of(session.create_object(&base(extra.clone()))),
            RvError::TemplateInconsistent,
            "{what}"
        );
        assert!(
            s.log_since(from).contains("cannot be enforced"),
            "{what}: the log says why"
        );
        let mut gen = extra;
        gen.push(Attribute::ValueLen(32.into()));
        assert_eq!(
            rv_of(session.generate_key(&Mechanism::AesKeyGen, &gen)),
            RvError::TemplateInconsistent,
            "{what} (generated)"
        );
    }
    // A session pair's private key that derives (ECDH) but is asked to
    // allow ECDSA alone: refused, the list would not hold.
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    assert_eq!(
        rv_of(session.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::EcParams(p256), Attribute::Token(false)],
            &[
                Attribute::Token(false),
                Attribute::Derive(true),
                Attribute::AllowedMechanisms(vec![cryptoki::mechanism::MechanismType::ECDSA]),
            ],
        )),
        RvError::TemplateInconsistent
    );
    // False, or the full list, is what the key does: accepted.
    let k = session
        .create_object(&base(vec![Attribute::WrapWithTrusted(false)]))
        .unwrap();
    session.wrap_key(&Mechanism::AesKeyWrap, kek, k).unwrap();
    let all = get_bytes(&session, k.handle(), CKA_ALLOWED_MECHANISMS);
    assert!(!all.is_empty());
    let value = vec![2u8; 32];
    let t = [
        (CKA_CLASS, ulong(CKO_SECRET_KEY)),
        (CKA_KEY_TYPE, ulong(CKK_AES)),
        (CKA_VALUE, value),
        (CKA_ALLOWED_MECHANISMS, all.clone()),
    ];
    assert_eq!(create_raw(&session, &t), CKR_OK, "the full list");
    // The full list cut short by one byte: no array of mechanisms.
    let mut t = t;
    t[3].1 = all[..all.len() - 1].to_vec();
    assert_eq!(create_raw(&session, &t), CKR_TEMPLATE_INCONSISTENT);
}

/// `C_GetAttributeValue` of one attribute's bytes through the raw table.
fn get_bytes(s: &Session, h: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> Vec<u8> {
    let r = raw();
    let mut a = CK_ATTRIBUTE {
        type_: ty,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    };
    assert_eq!(
        call!(r, C_GetAttributeValue(s.handle(), h, &mut a, 1)),
        CKR_OK
    );
    let mut v = vec![0u8; a.ulValueLen as usize];
    a.pValue = v.as_mut_ptr() as *mut _;
    assert_eq!(
        call!(r, C_GetAttributeValue(s.handle(), h, &mut a, 1)),
        CKR_OK
    );
    v
}

/// `C_CreateObject` through the raw table: its code.
fn create_raw(s: &Session, t: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> CK_RV {
    let r = raw();
    let mut t: Vec<CK_ATTRIBUTE> = t
        .iter()
        .map(|(ty, v)| CK_ATTRIBUTE {
            type_: *ty,
            pValue: v.as_ptr() as *mut _,
            ulValueLen: v.len() as CK_ULONG,
        })
        .collect();
    let mut out = 0;
    call!(
        r,
        C_CreateObject(s.handle(), t.as_mut_ptr(), t.len() as CK_ULONG, &mut out)
    )
}

/// An ECB encryption or a CMAC begun with a derived AES key does not go on
/// after the logout (here from another session of the process), and a
/// session key made public is no door to the asset.
#[test]
fn operations_on_derived_keys_end_with_the_login() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("vault", "aes256");
    let p = s.load();
    let session = p.user_session();
    let other = p.session();
    let vault = find_one(&session, "vault", ObjectClass::SECRET_KEY).unwrap();
    session.encrypt_init(&Mechanism::AesEcb, vault).unwrap();
    session.encrypt_update(&[0u8; 16]).unwrap();
    other.sign_init(&Mechanism::AesCMac, vault).unwrap();
    other.sign_update(b"part").unwrap();
    // A public session key, made while logged in, outlives the login.
    let public = session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Value(vec![4; 16]),
            Attribute::Private(false),
        ])
        .unwrap();
    other.logout().unwrap();
    assert_eq!(
        rv_of(session.encrypt_update(&[0u8; 16])),
        RvError::OperationNotInitialized,
        "ECB update after the logout"
    );
    assert_eq!(
        rv_of(other.sign_final()),
        RvError::OperationNotInitialized,
        "CMAC final after the logout"
    );
    session
        .encrypt(&Mechanism::AesEcb, public, &[0u8; 16])
        .expect("a public session key needs no login");
    // Copies of it stay session keys; no template makes the asset public.
    assert_eq!(
        rv_of(session.copy_object(public, &[Attribute::Token(true)])),
        RvError::TemplateInconsistent
    );
    assert_eq!(
        rv_of(session.get_attributes(vault, &[AttributeType::Label])),
        RvError::ObjectHandleInvalid
    );
}
