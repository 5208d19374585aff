//! Issue 17, points 6 and 10: no AES-GCM IV twice under one key (in one process, across processes, on PostgreSQL, for session keys), short tags only for named clients, and key wrap never sharing key bytes with GCM.

mod common;

use std::path::Path;
use std::ptr;

use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use cryptoki_sys::*;
use serde_json::Value;

use common::*;

fn gcm<'a>(iv: &'a mut [u8], aad: &'a [u8], tag_bits: u64) -> Mechanism<'a> {
    Mechanism::AesGcm(GcmParams::new(iv, aad, Ulong::from(tag_bits)).unwrap())
}

/// A derived AES-256 asset as Vault Enterprise's `generate_key` makes it:
/// ENCRYPT, DECRYPT, WRAP and UNWRAP on one key.
fn aes_asset(session: &Session, label: &str) -> ObjectHandle {
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
            ],
        )
        .unwrap()
}

/// A session secret key of a known value.
fn session_key(session: &Session, kt: KeyType, value: &[u8], extractable: bool) -> ObjectHandle {
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(kt),
            Attribute::Value(value.to_vec()),
            Attribute::Label(b"sk".to_vec()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Extractable(extractable),
        ])
        .unwrap()
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// The records `audit export` holds whose detail mentions `iv`.
fn records_with_iv(s: &Setup, iv: &[u8]) -> Vec<Value> {
    let want = format!("iv={}", hex(iv));
    s.audit_records(&[])
        .into_iter()
        .filter(|r| r["detail"].as_str().is_some_and(|d| d.contains(&want)))
        .collect()
}

/// In a forked child with its own provider (config `config`): encrypts
/// zeros under `iv` with the asset `label`; "ok HEX" or the return code.
fn child_encrypt(config: &Path, out: &Path, label: &str, iv: &[u8]) -> libc::pid_t {
    let (config, label, iv) = (config.to_path_buf(), label.to_string(), iv.to_vec());
    fork_child(out, move || {
        std::env::set_var("P11DERIVE_CONF", &config);
        let (ctx, session) = child_session()?;
        let key = find_one(&session, &label, ObjectClass::SECRET_KEY).ok_or("no key")?;
        let mut iv = iv;
        let r = session.encrypt(&gcm(&mut iv, &[], 128), key, &[0u8; 32]);
        let text = match r {
            Ok(c) => format!("ok {}", hex(&c)),
            Err(e) => format!("{:?}", rv_of::<()>(Err(e))),
        };
        ctx.finalize().map_err(|e| e.to_string())?;
        Ok(text)
    })
}

/// The attack of issue 17 point 6 on the store `s` names (its provider
/// loaded by the caller): a victim encrypts; C_Encrypt of zeros under the
/// victim's IV would give the keystream, and the victim's ciphertext XOR it
/// the plaintext. Refused in this process (single- and multi-part, with
/// another tag length or AAD), and in another process with `other`'s
/// config; audited; the victim still decrypts.
fn repeated_iv_is_refused(s: &Setup, other: &Setup, session: &Session, label: &str) {
    let key = aes_asset(session, label);
    let secret = b"the victim's 32-byte secret text";
    let mut iv = *b"victim-iv-12";
    let victim = session
        .encrypt(&gcm(&mut iv, b"", 128), key, secret)
        .unwrap();
    // What the attack would compute, had the call answered.
    let attack = |c: &[u8]| xor(&victim[..32], &c[..32]);

    assert_eq!(
        rv_of(session.encrypt(&gcm(&mut iv, b"", 128), key, &[0u8; 32])),
        RvError::MechanismParamInvalid,
        "the same IV again, same process"
    );
    assert_eq!(
        rv_of(session.encrypt(&gcm(&mut iv, b"other aad", 120), key, &[0u8; 32])),
        RvError::MechanismParamInvalid,
        "another tag length and AAD do not make the IV new"
    );
    session.encrypt_init(&gcm(&mut iv, b"", 128), key).unwrap();
    session.encrypt_update(&[0u8; 16]).unwrap();
    session.encrypt_update(&[0u8; 16]).unwrap();
    assert_eq!(
        rv_of(session.encrypt_final()),
        RvError::MechanismParamInvalid,
        "multi-part"
    );

    // Another process (another host on PostgreSQL) with the same IV.
    let out = s.dir.join(format!("{label}-child.txt"));
    let pid = child_encrypt(&other.config, &out, label, &iv);
    let text = reap(pid, &out, "the second process");
    assert_eq!(text, "MechanismParamInvalid", "second process: {text}");
    // ...while a fresh IV works there and here, and a different IV's
    // keystream tells nothing about the victim's plaintext.
    let fresh = *b"fresh-iv-123";
    let pid = child_encrypt(&other.config, &out, label, &fresh);
    let text = reap(pid, &out, "the second process");
    let c = unhex(text.strip_prefix("ok ").unwrap_or_else(|| panic!("{text}")));
    assert_ne!(attack(&c), secret.to_vec());
    // The victim's own decryption is untouched (decryption records no IV).
    assert_eq!(
        session
            .decrypt(&gcm(&mut iv, b"", 128), key, &victim)
            .unwrap(),
        secret
    );

    // The audit log: the victim's encrypt carries its IV; the four repeats
    // are `refused` records naming the reason, with CKR_MECHANISM_PARAM_INVALID.
    let recs = records_with_iv(s, &iv);
    let made: Vec<&Value> = recs.iter().filter(|r| r["event"] == "encrypt").collect();
    assert_eq!(made.len(), 1, "{recs:#?}");
    assert_eq!(made[0]["rv"], 0);
    assert_eq!(made[0]["asset"], label);
    let refused: Vec<&Value> = recs.iter().filter(|r| r["event"] == "refused").collect();
    assert_eq!(refused.len(), 4, "{recs:#?}");
    for r in refused {
        assert_eq!(r["rv"], 0x71, "{r}");
        assert_eq!(r["asset"], label);
        let d = r["detail"].as_str().unwrap();
        assert!(d.contains("GCM IV already used"), "{d}");
    }
    s.audit_verifies();
}

#[test]
fn a_repeated_gcm_iv_is_refused_in_every_process_and_audited() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    repeated_iv_is_refused(&s, &s, &session, "victim");

    // The rule is per key: after a rotation the alias encrypts under
    // version 2, a new key, and the old IV is new to it.
    let out = cli(&s, &["asset", "rotate", "victim"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let key = find_one(&session, "victim", ObjectClass::SECRET_KEY).unwrap();
    let mut iv = *b"victim-iv-12";
    session
        .encrypt(&gcm(&mut iv, b"", 128), key, b"v2")
        .unwrap();
    assert_eq!(
        rv_of(session.encrypt(&gcm(&mut iv, b"", 128), key, b"v2")),
        RvError::MechanismParamInvalid
    );
    let log = s.log();
    assert!(
        log.contains("was already used under asset \"victim\" version 2"),
        "{log}"
    );

    // Every IV is recorded, so one encryption's IV is at most 128 bytes;
    // decryption takes any length.
    let mut long = vec![1u8; 128];
    session
        .encrypt(&gcm(&mut long, b"", 128), key, b"long iv")
        .unwrap();
    let mut longer = vec![1u8; 129];
    assert_eq!(
        rv_of(session.encrypt_init(&gcm(&mut longer, b"", 128), key)),
        RvError::MechanismParamInvalid
    );
    session
        .decrypt_init(&gcm(&mut longer, b"", 128), key)
        .unwrap();
    assert!(s.log().contains("IVs of at most 128 bytes"));
}

#[test]
fn a_repeated_gcm_iv_is_refused_across_hosts_on_postgresql() {
    let _turn = turn();
    let url = pg_database(&pg_admin_url(), "p11derive_gcm_ivs");
    let a = setup_with(None, false);
    a.use_pg(&url);
    a.init();
    let b = a.another_host("host-b");
    // A store made before schema 8 (no gcm_ivs, nor the lanes of schema 9)
    // is upgraded when opened.
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    c.batch_execute(
        "DROP TABLE gcm_ivs; DROP TABLE audit_lane; DROP SEQUENCE p11derive_lane_ids; \
         DROP INDEX audit_covers; DROP FUNCTION p11derive_lane_append; \
         UPDATE p11derive_meta SET schema_version = 7",
    )
    .unwrap();
    let p = a.load();
    let session = p.user_session();
    repeated_iv_is_refused(&a, &b, &session, "pg-victim");
    drop(session);
    drop(p);

    let p = a.load();
    let session = p.user_session();
    let key = find_one(&session, "pg-victim", ObjectClass::SECRET_KEY).unwrap();
    let mut iv = *b"after-upgr-1";
    session.encrypt(&gcm(&mut iv, b"", 128), key, b"x").unwrap();
    assert_eq!(
        rv_of(session.encrypt(&gcm(&mut iv, b"", 128), key, b"x")),
        RvError::MechanismParamInvalid
    );
    let v: i64 = c
        .query_one("SELECT schema_version FROM p11derive_meta", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, i64::from(p11derive::store::SCHEMA_VERSION));
}

/// Eight threads, each with its own session, encrypt under one IV at the
/// same moment, three times over (so their commits share batches): exactly
/// one of each eight gets a ciphertext.
#[test]
fn concurrent_encryptions_under_one_iv_give_one_ciphertext() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let first = p.user_session();
    let key = aes_asset(&first, "race");
    for round in 0..3u8 {
        let barrier = std::sync::Barrier::new(8);
        let outcomes: Vec<Result<Vec<u8>, RvError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    let (p, barrier) = (&p, &barrier);
                    scope.spawn(move || {
                        let session = p.session();
                        let mut iv = [round; 12];
                        barrier.wait();
                        session
                            .encrypt(&gcm(&mut iv, b"", 128), key, b"same iv")
                            .map_err(|e| rv_of::<()>(Err(e)))
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let made = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(made, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| o.is_ok() || o == &Err(RvError::MechanismParamInvalid)),
            "{outcomes:?}"
        );
        let recs = records_with_iv(&s, &[round; 12]);
        let events: Vec<&str> = recs.iter().map(|r| r["event"].as_str().unwrap()).collect();
        assert_eq!(events.iter().filter(|e| **e == "encrypt").count(), 1);
        assert_eq!(events.iter().filter(|e| **e == "refused").count(), 7);
    }
    s.audit_verifies();
}

#[test]
fn a_session_key_never_repeats_an_iv() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let value = [0x42u8; 32];
    let key = session_key(&session, KeyType::AES, &value, false);
    let mut iv = *b"session-iv-1";
    let victim = session
        .encrypt(&gcm(&mut iv, b"", 128), key, b"session secret")
        .unwrap();
    assert_eq!(
        rv_of(session.encrypt(&gcm(&mut iv, b"", 128), key, &[0u8; 14])),
        RvError::MechanismParamInvalid
    );
    // A fresh IV works, and the victim still decrypts.
    let mut iv2 = *b"session-iv-2";
    session
        .encrypt(&gcm(&mut iv2, b"", 128), key, b"more")
        .unwrap();
    assert_eq!(
        session
            .decrypt(&gcm(&mut iv, b"", 128), key, &victim)
            .unwrap(),
        b"session secret"
    );
    let recs = records_with_iv(&s, &iv);
    let events: Vec<&str> = recs.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["encrypt", "refused"], "{recs:#?}");
    assert_eq!(recs[1]["rv"], 0x71);
    let d = recs[1]["detail"].as_str().unwrap();
    assert!(
        d.contains("session key \"sk\"") && d.contains("GCM IV already used"),
        "{d}"
    );
}

#[test]
fn short_gcm_tags_only_for_a_named_client() {
    let _turn = turn();
    let me = own_name();
    for (allowed, names) in [
        (false, vec![]),
        (false, vec!["some-legacy-app".to_string()]),
        (true, vec!["some-legacy-app".to_string(), me.clone()]),
    ] {
        let s = setup(None);
        if !names.is_empty() {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            s.allow_short_tags(&names);
        }
        let p = s.load();
        let session = p.user_session();
        let key = aes_asset(&session, "tags");
        let mut iv = [7u8; 12];
        // 96 bits and more: always.
        let sealed = session
            .encrypt(&gcm(&mut iv, b"", 96), key, b"data")
            .unwrap();
        assert_eq!(sealed.len(), 4 + 12);
        for (n, tag_bits) in [32u64, 64].into_iter().enumerate() {
            let mut iv = [n as u8; 12];
            if !allowed {
                let enc = session.encrypt_init(&gcm(&mut iv, b"", tag_bits), key);
                assert_eq!(rv_of(enc), RvError::MechanismParamInvalid, "{tag_bits}");
                let dec = session.decrypt_init(&gcm(&mut iv, b"", tag_bits), key);
                assert_eq!(rv_of(dec), RvError::MechanismParamInvalid, "{tag_bits}");
                continue;
            }
            let sealed = session
                .encrypt(&gcm(&mut iv, b"", tag_bits), key, b"legacy")
                .unwrap();
            assert_eq!(sealed.len(), 6 + tag_bits as usize / 8);
            let plain = session
                .decrypt(&gcm(&mut iv, b"", tag_bits), key, &sealed)
                .unwrap();
            assert_eq!(plain, b"legacy");
        }
        let log = s.log();
        if allowed {
            assert!(!log.contains("is under 96"), "{log}");
        } else {
            assert!(
                log.contains("ulTagBits 32 is under 96")
                    && log.contains("[gcm] short_tag_clients")
                    && log.contains(&s.config.display().to_string()),
                "{log}"
            );
        }
    }
}

/// The vector keys of root A's asset "seal" version 1 (tests/vectors) and
/// its wrap subkey `W = Expand(PRK, "p11derive-v1 wrap aes256")`, computed
/// with Python's hmac from the vector's PRK.
const SEAL_K: &str = "7457131ccd1261947524eaa44769603135a1be0201e5b8d61fa88f90cff7a8b1";
const SEAL_W: &str = "0d34a45b92158aab9e66d5cda34c66463228df69427e87a225c74c5995a20358";

/// CKM_AES_KEY_WRAP_KWP (cryptoki has no name for it), raw.
fn kwp_mech() -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: CKM_AES_KEY_WRAP_KWP,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

fn wrap_kwp(session: &Session, kek: CK_OBJECT_HANDLE, key: CK_OBJECT_HANDLE) -> Vec<u8> {
    let r = raw();
    let h = session.handle();
    let mut out = vec![0u8; 64];
    let mut len = out.len() as CK_ULONG;
    let rv = call!(
        r,
        C_WrapKey(h, &mut kwp_mech(), kek, key, out.as_mut_ptr(), &mut len)
    );
    assert_eq!(rv, CKR_OK, "C_WrapKey(KWP)");
    out.truncate(len as usize);
    out
}

/// C_UnwrapKey(KWP) into an extractable generic secret session key.
fn unwrap_kwp(session: &Session, kek: CK_OBJECT_HANDLE, wrapped: &[u8]) -> CK_OBJECT_HANDLE {
    let r = raw();
    let (mut class, mut kt, mut yes) = (CKO_SECRET_KEY, CKK_GENERIC_SECRET, CK_TRUE);
    let u = size_of::<CK_ULONG>() as CK_ULONG;
    let mut template = [
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: &mut class as *mut _ as *mut _,
            ulValueLen: u,
        },
        CK_ATTRIBUTE {
            type_: CKA_KEY_TYPE,
            pValue: &mut kt as *mut _ as *mut _,
            ulValueLen: u,
        },
        CK_ATTRIBUTE {
            type_: CKA_EXTRACTABLE,
            pValue: &mut yes as *mut _ as *mut _,
            ulValueLen: 1,
        },
    ];
    let mut out = 0;
    let rv = call!(
        r,
        C_UnwrapKey(
            session.handle(),
            &mut kwp_mech(),
            kek,
            wrapped.as_ptr() as *mut _,
            wrapped.len() as _,
            template.as_mut_ptr(),
            template.len() as _,
            &mut out
        )
    );
    assert_eq!(rv, CKR_OK, "C_UnwrapKey(KWP)");
    out
}

fn aes_block(key: &[u8], block: &[u8]) -> Vec<u8> {
    use aes::cipher::{BlockCipherEncrypt, KeyInit};
    let mut b = aes::Block::try_from(block).unwrap();
    aes::Aes256::new_from_slice(key)
        .unwrap()
        .encrypt_block(&mut b);
    b.to_vec()
}

#[test]
fn key_wrap_and_gcm_never_share_key_bytes() {
    let _turn = turn();
    let root: [u8; 32] = (0..32).collect::<Vec<u8>>().try_into().unwrap();
    let s = setup(Some(&root));
    let p = s.load();
    let session = p.user_session();
    let seal = aes_asset(&session, "seal");
    let (k, w) = (unhex(SEAL_K), unhex(SEAL_W));

    // The attack of point 10: KWP of an 8-byte key V is one AES block,
    // E(AIV || V) with AIV = A65959A6 00000008. With V's last word
    // 00000002 that block is GCM's first keystream block for the IV
    // AIV || V[0..4]: under one key, a wrap would hand out keystream.
    let v = [0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 2];
    let eight = session_key(&session, KeyType::GENERIC_SECRET, &v, true);
    let wrapped = wrap_kwp(&session, seal.handle(), eight.handle());
    assert_eq!(wrapped.len(), 16);
    let mut block = vec![0xa6, 0x59, 0x59, 0xa6, 0, 0, 0, 8];
    block.extend_from_slice(&v);
    let mut iv = block[..12].to_vec();
    let ct = session
        .encrypt(&gcm(&mut iv, b"", 128), seal, &[0u8; 16])
        .unwrap();
    assert_eq!(ct[..16], aes_block(&k, &block)[..], "GCM runs under K");
    assert_ne!(wrapped, ct[..16].to_vec(), "the wrap is not GCM keystream");
    assert_ne!(
        wrapped,
        aes_block(&k, &block),
        "the wrap is not AES under K"
    );
    assert_eq!(wrapped, aes_block(&w, &block), "the wrap is AES under W");

    // KW (RFC 3394) of a 32-byte key: under W, not K; both round-trip.
    let data_key = session_key(&session, KeyType::AES, &[0x5a; 32], true);
    let kw = session
        .wrap_key(&Mechanism::AesKeyWrap, seal, data_key)
        .unwrap();
    let under = |kek: &[u8]| p11derive::mechanisms::keywrap::key_wrap(kek, &[0x5a; 32], false);
    assert_eq!(kw, under(&w).unwrap());
    assert_ne!(kw, under(&k).unwrap());
    // Both round-trip, and the unwrapped key is the wrapped one: wrapped
    // again under a session KEK it gives what the original gives.
    let kek = session_key(&session, KeyType::AES, &[9; 32], false).handle();
    let back = unwrap_kwp(&session, seal.handle(), &wrapped);
    assert_eq!(
        wrap_kwp(&session, kek, back),
        wrap_kwp(&session, kek, eight.handle())
    );
    let back = session
        .unwrap_key(
            &Mechanism::AesKeyWrap,
            seal,
            &kw,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Extractable(true),
            ],
        )
        .unwrap();
    assert_eq!(
        wrap_kwp(&session, kek, back.handle()),
        wrap_kwp(&session, kek, data_key.handle())
    );
}
