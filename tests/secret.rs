//! Secret-key assets (issue 6): AES-256 and HMAC-SHA256 keys derived from a
//! known root and checked against the project's vectors, Vault's PKCS#11
//! seal replayed call by call with raw PKCS#11, the seal's rotation, and
//! every refusal.

mod common;

use std::ptr;

use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use cryptoki_sys::*;
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/derivation.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn root_a() -> [u8; 32] {
    unhex(vectors()["roots"]["A"].as_str().unwrap())
        .try_into()
        .unwrap()
}

/// The vector of (asset, counter, type) under root A.
fn vector(asset: &str, counter: u64) -> Value {
    vectors()["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["root"] == "A" && v["asset_id"] == asset && v["counter"] == counter)
        .unwrap_or_else(|| panic!("no vector {asset}/{counter}"))
        .clone()
}

// ---- Vault's seal, replayed with raw PKCS#11 calls ------------------------

/// The client side of Vault's (OpenBao's) PKCS#11 seal: exactly the calls
/// go-kms-wrapping makes, through the provider's function table.
struct Vault {
    r: Raw,
    slot: CK_SLOT_ID,
}

fn bool_attr(ty: CK_ATTRIBUTE_TYPE, v: &mut CK_BBOOL) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v as *mut _ as *mut _,
        ulValueLen: 1,
    }
}

fn ulong_attr(ty: CK_ATTRIBUTE_TYPE, v: &mut CK_ULONG) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v as *mut _ as *mut _,
        ulValueLen: size_of::<CK_ULONG>() as _,
    }
}

fn bytes_attr(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr() as *mut _,
        ulValueLen: v.len() as _,
    }
}

impl Vault {
    /// C_Initialize(CKF_OS_LOCKING_OK), then the slot whose token label is
    /// the configured one.
    fn start() -> Vault {
        let r = raw();
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: ptr::null_mut(),
        };
        assert_eq!(
            call!(r, C_Initialize(&mut args as *mut _ as *mut _)),
            CKR_OK
        );
        let mut n: CK_ULONG = 0;
        assert_eq!(
            call!(r, C_GetSlotList(CK_TRUE, ptr::null_mut(), &mut n)),
            CKR_OK
        );
        let mut slots = vec![0; n as usize];
        assert_eq!(
            call!(r, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut n)),
            CKR_OK
        );
        let slot = slots
            .into_iter()
            .find(|&slot| {
                // SAFETY: CK_TOKEN_INFO is plain data; the call fills it.
                let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
                call!(r, C_GetTokenInfo(slot, &mut info)) == CKR_OK
                    && String::from_utf8_lossy(&info.label).trim_end() == "p11derive"
            })
            .expect("a slot with token p11derive");
        Vault { r, slot }
    }

    /// C_OpenSession(SERIAL|RW) + C_Login(CKU_USER).
    fn session(&self) -> CK_SESSION_HANDLE {
        let mut h = 0;
        let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        let rv = call!(
            self.r,
            C_OpenSession(self.slot, flags, ptr::null_mut(), None, &mut h)
        );
        assert_eq!(rv, CKR_OK);
        let rv = call!(
            self.r,
            C_Login(h, CKU_USER, PIN.as_ptr() as *mut _, PIN.len() as _)
        );
        assert!(
            rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN,
            "C_Login {rv:#x}"
        );
        h
    }

    /// C_GenerateKey with the seal's templates (`generate_key = true`).
    fn generate(&self, h: CK_SESSION_HANDLE, label: &str, id: &[u8], hmac: bool) -> CK_RV {
        let (mut t, mut f) = (CK_TRUE, CK_FALSE);
        let (mut class, mut len) = (CKO_SECRET_KEY, 32 as CK_ULONG);
        let mut kt = if hmac { CKK_GENERIC_SECRET } else { CKK_AES };
        let mut template = vec![
            ulong_attr(CKA_CLASS, &mut class),
            ulong_attr(CKA_KEY_TYPE, &mut kt),
            ulong_attr(CKA_VALUE_LEN, &mut len),
            bytes_attr(CKA_LABEL, label.as_bytes()),
            bytes_attr(CKA_ID, id),
            bool_attr(CKA_PRIVATE, &mut t),
            bool_attr(CKA_TOKEN, &mut t),
            bool_attr(CKA_SENSITIVE, &mut t),
        ];
        let mut t2 = CK_TRUE;
        let mut t3 = CK_TRUE;
        let mut t4 = CK_TRUE;
        let mut t5 = CK_TRUE;
        if hmac {
            template.push(bool_attr(CKA_SIGN, &mut t2));
            template.push(bool_attr(CKA_VERIFY, &mut t3));
        } else {
            template.push(bool_attr(CKA_ENCRYPT, &mut t2));
            template.push(bool_attr(CKA_DECRYPT, &mut t3));
            template.push(bool_attr(CKA_WRAP, &mut t4));
            template.push(bool_attr(CKA_UNWRAP, &mut t5));
        }
        template.push(bool_attr(CKA_EXTRACTABLE, &mut f));
        let mut mech = CK_MECHANISM {
            mechanism: if hmac {
                CKM_GENERIC_SECRET_KEY_GEN
            } else {
                CKM_AES_KEY_GEN
            },
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut key = 0;
        call!(
            self.r,
            C_GenerateKey(
                h,
                &mut mech,
                template.as_mut_ptr(),
                template.len() as _,
                &mut key
            )
        )
    }

    /// C_FindObjectsInit({CKA_LABEL[, CKA_ID]}), no class; C_FindObjects(2).
    fn find(&self, h: CK_SESSION_HANDLE, label: &str, id: Option<&[u8]>) -> Vec<CK_OBJECT_HANDLE> {
        let mut template = vec![bytes_attr(CKA_LABEL, label.as_bytes())];
        if let Some(id) = id {
            template.push(bytes_attr(CKA_ID, id));
        }
        let rv = call!(
            self.r,
            C_FindObjectsInit(h, template.as_mut_ptr(), template.len() as _)
        );
        assert_eq!(rv, CKR_OK);
        let mut found = [0; 2];
        let mut n = 0;
        assert_eq!(
            call!(self.r, C_FindObjects(h, found.as_mut_ptr(), 2, &mut n)),
            CKR_OK
        );
        assert_eq!(call!(self.r, C_FindObjectsFinal(h)), CKR_OK);
        found[..n as usize].to_vec()
    }

    /// The one key with this label; checks class and type as the seal does,
    /// then returns (CKA_ENCRYPT, CKA_DECRYPT).
    fn key(
        &self,
        h: CK_SESSION_HANDLE,
        label: &str,
        kt: CK_ULONG,
    ) -> (CK_OBJECT_HANDLE, bool, bool) {
        let found = self.find(h, label, None);
        assert_eq!(found.len(), 1, "{label}: {found:?}");
        let key = found[0];
        let (mut class, mut ty) = (0 as CK_ULONG, 0 as CK_ULONG);
        let mut t = [
            ulong_attr(CKA_CLASS, &mut class),
            ulong_attr(CKA_KEY_TYPE, &mut ty),
        ];
        assert_eq!(
            call!(self.r, C_GetAttributeValue(h, key, t.as_mut_ptr(), 2)),
            CKR_OK
        );
        assert_eq!((class, ty), (CKO_SECRET_KEY, kt), "{label}");
        let (mut e, mut d) = (CK_FALSE, CK_FALSE);
        let mut t = [
            bool_attr(CKA_ENCRYPT, &mut e),
            bool_attr(CKA_DECRYPT, &mut d),
        ];
        assert_eq!(
            call!(self.r, C_GetAttributeValue(h, key, t.as_mut_ptr(), 2)),
            CKR_OK
        );
        (key, e == CK_TRUE, d == CK_TRUE)
    }

    /// C_GenerateRandom(12) on the session for the IV.
    fn iv(&self, h: CK_SESSION_HANDLE) -> Vec<u8> {
        let mut iv = vec![0u8; 12];
        assert_eq!(
            call!(self.r, C_GenerateRandom(h, iv.as_mut_ptr(), 12)),
            CKR_OK
        );
        iv
    }

    /// C_EncryptInit / C_DecryptInit with CK_GCM_PARAMS {iv, ulIvBits, no
    /// AAD, 128-bit tag}, then the single-part call: a length query, then
    /// the call. `Err` with the first code that was not CKR_OK.
    fn gcm(
        &self,
        h: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
        iv: &[u8],
        iv_bits: CK_ULONG,
        input: &[u8],
        encrypt: bool,
    ) -> Result<Vec<u8>, CK_RV> {
        let mut iv = iv.to_vec();
        let mut params = CK_GCM_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: iv.len() as _,
            ulIvBits: iv_bits,
            pAAD: ptr::null_mut(),
            ulAADLen: 0,
            ulTagBits: 128,
        };
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: &mut params as *mut _ as *mut _,
            ulParameterLen: size_of::<CK_GCM_PARAMS>() as _,
        };
        let ok = |rv| if rv == CKR_OK { Ok(()) } else { Err(rv) };
        let f = self.r.f;
        let (init, run) = if encrypt {
            (f.C_EncryptInit.unwrap(), f.C_Encrypt.unwrap())
        } else {
            (f.C_DecryptInit.unwrap(), f.C_Decrypt.unwrap())
        };
        let mut data = input.to_vec();
        let mut len: CK_ULONG = 0;
        let n = data.len() as CK_ULONG;
        // SAFETY: the mechanism, parameters and buffers outlive the calls.
        unsafe {
            ok(init(h, &mut mech, key))?;
            ok(run(h, data.as_mut_ptr(), n, ptr::null_mut(), &mut len))?;
            let mut out = vec![0u8; len as usize];
            ok(run(h, data.as_mut_ptr(), n, out.as_mut_ptr(), &mut len))?;
            out.truncate(len as usize);
            Ok(out)
        }
    }

    /// C_SignInit(CKM_SHA256_HMAC) + C_Sign.
    fn hmac(&self, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE, data: &[u8]) -> Vec<u8> {
        let mut mech = CK_MECHANISM {
            mechanism: CKM_SHA256_HMAC,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        assert_eq!(call!(self.r, C_SignInit(h, &mut mech, key)), CKR_OK);
        let mut out = vec![0u8; 32];
        let mut len = 32;
        let mut data = data.to_vec();
        let rv = call!(
            self.r,
            C_Sign(
                h,
                data.as_mut_ptr(),
                data.len() as _,
                out.as_mut_ptr(),
                &mut len
            )
        );
        assert_eq!(rv, CKR_OK);
        out
    }

    /// C_VerifyInit(CKM_SHA256_HMAC) + C_Verify.
    fn hmac_verify(
        &self,
        h: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
        mac: &[u8],
    ) -> CK_RV {
        let mut mech = CK_MECHANISM {
            mechanism: CKM_SHA256_HMAC,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        assert_eq!(call!(self.r, C_VerifyInit(h, &mut mech, key)), CKR_OK);
        let (mut data, mut mac) = (data.to_vec(), mac.to_vec());
        call!(
            self.r,
            C_Verify(
                h,
                data.as_mut_ptr(),
                data.len() as _,
                mac.as_mut_ptr(),
                mac.len() as _
            )
        )
    }

    /// Release: C_Logout and C_CloseAllSessions(slot).
    fn release(&self, h: CK_SESSION_HANDLE) {
        assert_eq!(call!(self.r, C_Logout(h)), CKR_OK);
        assert_eq!(call!(self.r, C_CloseAllSessions(self.slot)), CKR_OK);
    }

    fn finalize(self) {
        assert_eq!(call!(self.r, C_Finalize(ptr::null_mut())), CKR_OK);
    }
}

#[test]
fn vaults_seal_works_call_for_call_and_across_a_rotation() {
    let _turn = turn();
    let s = setup(Some(&root_a()));
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let vault = Vault::start();

    // generate_key = true: the seal's AES key and (Enterprise) HMAC key.
    let h = vault.session();
    assert_eq!(vault.generate(h, "seal", b"seal-key-id", false), CKR_OK);
    assert_eq!(
        vault.generate(h, "seal-hmac", b"seal-hmac-id", true),
        CKR_OK
    );
    assert_eq!(vault.find(h, "seal", Some(b"seal-key-id")).len(), 1);

    // key_label = "seal@v1": seal a root key; an HMAC over it.
    let (v1, enc, dec) = vault.key(h, "seal@v1", CKK_AES);
    assert!(enc && dec, "seal@v1 encrypts and decrypts while current");
    let root_key = b"vault root key: 32 bytes of it..";
    let iv1 = vault.iv(h);
    let blob1 = vault.gcm(h, v1, &iv1, 96, root_key, true).unwrap();
    assert_eq!(blob1.len(), root_key.len() + 16);
    let (mac_key, _, _) = vault.key(h, "seal-hmac", CKK_GENERIC_SECRET);
    let mac = vault.hmac(h, mac_key, &blob1);
    vault.release(h);

    // Unseal in a new session with the handle found in the old one; the
    // older wrapper's ulIvBits = 0 works the same.
    let h = vault.session();
    assert_eq!(vault.gcm(h, v1, &iv1, 96, &blob1, false).unwrap(), root_key);
    assert_eq!(vault.gcm(h, v1, &iv1, 0, &blob1, false).unwrap(), root_key);
    assert_eq!(vault.hmac_verify(h, mac_key, &blob1, &mac), CKR_OK);
    vault.release(h);

    // The older wrapper: open, log in, operate, log out, close, per call.
    for _ in 0..3 {
        let h = vault.session();
        let iv = vault.iv(h);
        let blob = vault.gcm(h, v1, &iv, 0, root_key, true).unwrap();
        vault.release(h);
        let h = vault.session();
        assert_eq!(vault.gcm(h, v1, &iv, 0, &blob, false).unwrap(), root_key);
        vault.release(h);
    }

    // Rotate; the operator reconfigures the seal to seal@v2.
    let out = cli(&s, &["asset", "rotate", "seal"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = vault.session();
    let (v1_again, enc, dec) = vault.key(h, "seal@v1", CKK_AES);
    assert_eq!(v1_again, v1, "the handle is stable");
    assert!(!enc && dec, "seal@v1 now only decrypts");
    assert_eq!(
        vault.gcm(h, v1, &vault.iv(h), 96, root_key, true),
        Err(CKR_KEY_FUNCTION_NOT_PERMITTED)
    );
    let (v2, enc, dec) = vault.key(h, "seal@v2", CKK_AES);
    assert!(enc && dec);
    let iv2 = vault.iv(h);
    let blob2 = vault.gcm(h, v2, &iv2, 96, root_key, true).unwrap();
    // Old blobs through seal@v1 and through the alias; new ones through
    // seal@v2 and the alias, never through seal@v1.
    let (alias, _, _) = vault.key(h, "seal", CKK_AES);
    assert_eq!(vault.gcm(h, v1, &iv1, 96, &blob1, false).unwrap(), root_key);
    assert_eq!(
        vault.gcm(h, alias, &iv1, 96, &blob1, false).unwrap(),
        root_key
    );
    assert_eq!(vault.gcm(h, v2, &iv2, 96, &blob2, false).unwrap(), root_key);
    assert_eq!(
        vault.gcm(h, alias, &iv2, 96, &blob2, false).unwrap(),
        root_key
    );
    assert_eq!(
        vault.gcm(h, v1, &iv2, 96, &blob2, false),
        Err(CKR_ENCRYPTED_DATA_INVALID)
    );
    assert_eq!(
        vault.gcm(h, v2, &iv1, 96, &blob1, false),
        Err(CKR_ENCRYPTED_DATA_INVALID)
    );
    vault.release(h);
    vault.finalize();

    // Every use is in the audit log.
    let out = cli(&s, &["audit", "export", "--asset", "seal"]);
    let log = String::from_utf8_lossy(&out.stdout);
    let records: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let count = |event: &str, ok: bool| {
        records
            .iter()
            .filter(|r| r["event"] == event && (r["rv"] == 0) == ok)
            .count()
    };
    // 5 encryptions, 9 decryptions that opened, 2 that did not (wrong
    // version), 1 refused encryption through seal@v1 after the rotation.
    assert_eq!(count("encrypt", true), 5, "{log}");
    assert_eq!(count("decrypt", true), 9, "{log}");
    assert_eq!(count("decrypt", false), 2, "{log}");
    assert_eq!(count("refused", false), 1, "{log}");
    assert!(log.contains("encrypt refused"), "{log}");
    let out = cli(&s, &["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// ---- known answers through cryptoki -----------------------------------------

fn gcm<'a>(iv: &'a mut [u8], aad: &'a [u8], tag_bits: u64) -> Mechanism<'a> {
    Mechanism::AesGcm(GcmParams::new(iv, aad, Ulong::from(tag_bits)).unwrap())
}

fn generate(session: &Session, label: &str, hmac: bool) -> ObjectHandle {
    let (mech, kt) = if hmac {
        (Mechanism::GenericSecretKeyGen, KeyType::GENERIC_SECRET)
    } else {
        (Mechanism::AesKeyGen, KeyType::AES)
    };
    session
        .generate_key(
            &mech,
            &[
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::KeyType(kt),
                Attribute::ValueLen(32.into()),
            ],
        )
        .unwrap()
}

fn check_value(session: &Session, key: ObjectHandle) -> Vec<u8> {
    match &session
        .get_attributes(key, &[AttributeType::CheckValue])
        .unwrap()[..]
    {
        [Attribute::CheckValue(v)] => v.clone(),
        other => panic!("{other:?}"),
    }
}

/// AES-256(key, 0^128)[0..3], computed here with the aes crate.
fn aes_kcv(key: &[u8]) -> Vec<u8> {
    use aes::cipher::{BlockCipherEncrypt, KeyInit};
    let mut block = aes::Block::default();
    aes::Aes256::new_from_slice(key)
        .unwrap()
        .encrypt_block(&mut block);
    block[..3].to_vec()
}

#[test]
fn derived_secret_keys_are_the_vectors_keys() {
    let _turn = turn();
    let s = setup(Some(&root_a()));
    let p = s.load();
    let session = p.user_session();
    let seal = generate(&session, "seal", false);
    let hmac = generate(&session, "seal-hmac", true);

    // HMAC-SHA256: the vector's MAC of its message, single- and multi-part.
    let v = vector("seal-hmac", 1);
    let msg = unhex(v["mac"]["message"].as_str().unwrap());
    let want = unhex(v["mac"]["mac"].as_str().unwrap());
    assert_eq!(
        session.sign(&Mechanism::Sha256Hmac, hmac, &msg).unwrap(),
        want
    );
    session.sign_init(&Mechanism::Sha256Hmac, hmac).unwrap();
    session.sign_update(&msg[..5]).unwrap();
    session.sign_update(&msg[5..]).unwrap();
    assert_eq!(session.sign_final().unwrap(), want);
    session
        .verify(&Mechanism::Sha256Hmac, hmac, &msg, &want)
        .unwrap();
    let key = unhex(v["key"].as_str().unwrap());
    let check = {
        use sha1::Digest;
        sha1::Sha1::digest(&key)[..3].to_vec()
    };
    assert_eq!(check_value(&session, hmac), check);
    // SHA-384/512 HMAC with the same key.
    let mac512 = session.sign(&Mechanism::Sha512Hmac, hmac, &msg).unwrap();
    assert_eq!(
        mac512,
        p11derive::mechanisms::hmac::hmac(CKM_SHA512_HMAC, &key, &msg).unwrap()
    );

    // AES-256: the check value, and a ciphertext the vector's key opens.
    let k1 = unhex(vector("seal", 1)["key"].as_str().unwrap());
    assert_eq!(check_value(&session, seal), aes_kcv(&k1));
    let mut iv = [9u8; 12];
    let sealed = session
        .encrypt(&gcm(&mut iv, b"aad", 128), seal, b"plaintext")
        .unwrap();
    let params =
        p11derive::mechanisms::gcm::GcmParams::new(vec![9; 12], None, b"aad".to_vec(), 128)
            .unwrap();
    let opened = p11derive::mechanisms::gcm::gcm_open(&k1, &params, &sealed).unwrap();
    assert_eq!(&opened[..], b"plaintext");
    // The encryption's record carries the SHA-256 of the ciphertext, never
    // of the plaintext.
    let out = cli(&s, &["audit", "export", "--asset", "seal"]);
    let log = String::from_utf8_lossy(&out.stdout);
    let digest = |b: &[u8]| {
        use sha2::Digest;
        hex(&sha2::Sha256::digest(b))
    };
    assert!(log.contains(&digest(&sealed)), "{log}");
    assert!(!log.contains(&digest(b"plaintext")), "{log}");

    // Version 2 after a rotation: the vector's counter-2 key.
    let out = cli(&s, &["asset", "rotate", "seal"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v2 = find_one(&session, "seal@v2", ObjectClass::SECRET_KEY).unwrap();
    let k2 = unhex(vector("seal", 2)["key"].as_str().unwrap());
    assert_eq!(check_value(&session, v2), aes_kcv(&k2));
    let sealed2 = session
        .encrypt(&gcm(&mut iv, b"aad", 128), seal, b"plaintext")
        .unwrap();
    let opened = p11derive::mechanisms::gcm::gcm_open(&k2, &params, &sealed2).unwrap();
    assert_eq!(
        &opened[..],
        b"plaintext",
        "the alias encrypts with version 2"
    );
}

#[test]
fn gcm_in_parts_with_every_tag_length_matches_one_call() {
    let _turn = turn();
    let s = setup(None);
    // 32- and 64-bit tags are for named legacy clients only: this test is one.
    s.allow_short_tags(&[&own_name()]);
    let p = s.load();
    let session = p.user_session();
    let key = generate(&session, "parts", false);
    let data: Vec<u8> = (0..100u8).collect();
    for tag_bits in [32, 64, 96, 104, 112, 120, 128] {
        for iv_len in [1usize, 12, 16, 60] {
            // An IV never repeats under a key: one for the single call, one
            // for the parts; each ciphertext opens both ways.
            let mut iv = vec![tag_bits as u8; iv_len];
            let mut iv2 = vec![!(tag_bits as u8); iv_len];
            let one = session
                .encrypt(&gcm(&mut iv, b"header", tag_bits), key, &data)
                .unwrap();
            assert_eq!(one.len(), data.len() + tag_bits as usize / 8);
            session
                .encrypt_init(&gcm(&mut iv2, b"header", tag_bits), key)
                .unwrap();
            let mut parts = session.encrypt_update(&data[..33]).unwrap();
            parts.extend(session.encrypt_update(&data[33..]).unwrap());
            parts.extend(session.encrypt_final().unwrap());
            assert_eq!(parts.len(), one.len(), "tag {tag_bits}, iv {iv_len}");
            assert_eq!(
                session
                    .decrypt(&gcm(&mut iv2, b"header", tag_bits), key, &parts)
                    .unwrap(),
                data,
                "tag {tag_bits}, iv {iv_len}"
            );
            session
                .decrypt_init(&gcm(&mut iv, b"header", tag_bits), key)
                .unwrap();
            let mut plain = session.decrypt_update(&one[..50]).unwrap();
            plain.extend(session.decrypt_update(&one[50..]).unwrap());
            plain.extend(session.decrypt_final().unwrap());
            assert_eq!(plain, data);
        }
    }
}

#[test]
fn refusals_say_what_is_wrong() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let aes = generate(&session, "aes-1", false);
    let hmac = generate(&session, "hmac-1", true);
    let gen = |mech: &Mechanism, extra: Vec<Attribute>, label: &str| {
        let mut t = vec![Attribute::Label(label.as_bytes().to_vec())];
        if !extra.iter().any(|a| matches!(a, Attribute::Token(_))) {
            t.push(Attribute::Token(true));
        }
        t.extend(extra);
        rv_of(session.generate_key(mech, &t))
    };
    let cases: Vec<(Mechanism, Vec<Attribute>, RvError, &str)> = vec![
        (
            Mechanism::AesKeyGen,
            vec![Attribute::ValueLen(20.into())],
            RvError::AttributeValueInvalid,
            "CKA_VALUE_LEN",
        ),
        (
            Mechanism::AesKeyGen,
            vec![Attribute::Extractable(true)],
            RvError::TemplateInconsistent,
            "CKA_EXTRACTABLE",
        ),
        (
            Mechanism::AesKeyGen,
            vec![Attribute::Sensitive(false)],
            RvError::TemplateInconsistent,
            "CKA_SENSITIVE",
        ),
        (
            Mechanism::AesKeyGen,
            vec![Attribute::Encrypt(false)],
            RvError::TemplateInconsistent,
            "CKA_ENCRYPT",
        ),
        (
            Mechanism::AesKeyGen,
            vec![Attribute::KeyType(KeyType::GENERIC_SECRET)],
            RvError::TemplateInconsistent,
            "CKA_KEY_TYPE",
        ),
        (
            Mechanism::AesKeyGen,
            vec![Attribute::Value(vec![1; 32])],
            RvError::AttributeReadOnly,
            "CKA_VALUE",
        ),
    ];
    for (i, (mech, extra, want, named)) in cases.into_iter().enumerate() {
        let label = format!("bad-{i}");
        let from = s.log().len();
        assert_eq!(gen(&mech, extra, &label), want, "{named}");
        assert!(
            s.log_since(from).contains(named),
            "case {i}: the log names {named}"
        );
        assert!(find_one(&session, &label, ObjectClass::SECRET_KEY).is_none());
    }
    // No label: the asset is named "key-" and 16 hex digits (backing RNG).
    let unnamed = session
        .generate_key(&Mechanism::AesKeyGen, &[Attribute::Token(true)])
        .unwrap();
    match &session
        .get_attributes(unnamed, &[AttributeType::Label])
        .unwrap()[..]
    {
        [Attribute::Label(l)] => {
            assert!(l.starts_with(b"key-") && l.len() == 20, "{l:?}")
        }
        other => panic!("{other:?}"),
    }
    // A use the key type never has (pkcs11-tool asks encrypt of generic
    // secrets) is ignored, logged, and the object tells the truth.
    let t = [
        Attribute::Token(true),
        Attribute::Label(b"asks-encrypt".to_vec()),
        Attribute::Encrypt(true),
    ];
    let h = session
        .generate_key(&Mechanism::GenericSecretKeyGen, &t)
        .unwrap();
    assert_eq!(
        session
            .get_attributes(h, &[AttributeType::Encrypt, AttributeType::Sign])
            .unwrap(),
        vec![Attribute::Encrypt(false), Attribute::Sign(true)]
    );
    assert!(s
        .log()
        .contains("CKA_ENCRYPT ignored; a hmac-sha256 key cannot do that"));
    assert_eq!(
        gen(&Mechanism::AesKeyGen, vec![], "aes-1"),
        RvError::AttributeValueInvalid
    );
    assert!(
        s.log().contains("\"aes-1\" already exists"),
        "a taken label is named"
    );

    // Mechanisms that do not fit the key type.
    let mut iv = [0u8; 12];
    assert_eq!(
        rv_of(session.encrypt(&gcm(&mut iv, &[], 128), hmac, b"x")),
        RvError::KeyTypeInconsistent
    );
    assert_eq!(
        rv_of(session.sign(&Mechanism::EcdsaSha256, aes, b"x")),
        RvError::KeyTypeInconsistent
    );
    assert_eq!(
        rv_of(session.sign(&Mechanism::Sha256Hmac, aes, b"x")),
        RvError::KeyTypeInconsistent
    );

    // GCM parameters (raw, to give values cryptoki would not build).
    let r = raw();
    let h = session.handle();
    for (iv_len, iv_bits, tag_bits) in [(12, 95, 128), (12, 96, 100), (0, 0, 128), (12, 96, 136)] {
        let mut iv = vec![1u8; 12];
        let mut params = CK_GCM_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: iv_len,
            ulIvBits: iv_bits,
            pAAD: ptr::null_mut(),
            ulAADLen: 0,
            ulTagBits: tag_bits,
        };
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: &mut params as *mut _ as *mut _,
            ulParameterLen: size_of::<CK_GCM_PARAMS>() as _,
        };
        assert_eq!(
            call!(r, C_EncryptInit(h, &mut mech, aes.handle())),
            CKR_MECHANISM_PARAM_INVALID,
            "iv {iv_len} bytes/{iv_bits} bits, tag {tag_bits}"
        );
    }
    assert!(s.log().contains("ulIvBits 95 does not match ulIvLen 12"));

    // Tampered, truncated and foreign ciphertexts release nothing.
    let mut iv = [3u8; 12];
    let sealed = session
        .encrypt(&gcm(&mut iv, &[], 128), aes, b"secret")
        .unwrap();
    let mut bad = sealed.clone();
    bad[0] ^= 1;
    assert_eq!(
        rv_of(session.decrypt(&gcm(&mut iv, &[], 128), aes, &bad)),
        RvError::EncryptedDataInvalid
    );
    assert_eq!(
        rv_of(session.decrypt(&gcm(&mut iv, &[], 128), aes, &sealed[..10])),
        RvError::EncryptedDataLenRange
    );
    assert_eq!(
        rv_of(session.decrypt(&gcm(&mut iv, b"other", 128), aes, &sealed)),
        RvError::EncryptedDataInvalid
    );

    // HMAC verification: a wrong MAC, a wrong length.
    let mac = session.sign(&Mechanism::Sha256Hmac, hmac, b"m").unwrap();
    let mut wrong = mac.clone();
    wrong[31] ^= 1;
    assert_eq!(
        rv_of(session.verify(&Mechanism::Sha256Hmac, hmac, b"m", &wrong)),
        RvError::SignatureInvalid
    );
    assert_eq!(
        rv_of(session.verify(&Mechanism::Sha256Hmac, hmac, b"m", &mac[..16])),
        RvError::SignatureLenRange
    );

    // A suspended asset neither encrypts nor decrypts; resumed, it does.
    let out = cli(&s, &["asset", "suspend", "aes-1"]);
    assert!(out.status.success());
    assert_eq!(
        rv_of(session.encrypt(&gcm(&mut iv, &[], 128), aes, b"x")),
        RvError::KeyFunctionNotPermitted
    );
    assert_eq!(
        rv_of(session.decrypt(&gcm(&mut iv, &[], 128), aes, &sealed)),
        RvError::KeyFunctionNotPermitted
    );
    let out = cli(&s, &["asset", "resume", "aes-1"]);
    assert!(out.status.success());
    assert_eq!(
        session
            .decrypt(&gcm(&mut iv, &[], 128), aes, &sealed)
            .unwrap(),
        b"secret"
    );

    // Logged out, the secret keys are gone from view and from use.
    session.logout().unwrap();
    assert!(find_one(&session, "aes-1", ObjectClass::SECRET_KEY).is_none());
    assert_eq!(
        rv_of(session.encrypt(&gcm(&mut iv, &[], 128), aes, b"x")),
        RvError::KeyHandleInvalid
    );
}

// ---- session keys -------------------------------------------------------------

/// A session secret key with the given value, through C_CreateObject.
fn create(session: &Session, kt: KeyType, value: &[u8], label: &str) -> ObjectHandle {
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(kt),
            Attribute::Value(value.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap()
}

/// GCM specification test cases 3 (AES-128), 9 (AES-192) and 15 (AES-256),
/// each through a session key made from the given value.
#[test]
fn session_keys_pass_the_gcm_and_hmac_known_answers() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let plain = unhex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
         1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
    );
    let cases = [
        (
            "feffe9928665731c6d6a8f9467308308",
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
            "4d5c2af327cd64a62cf35abd2ba6fab4",
        ),
        (
            "feffe9928665731c6d6a8f9467308308feffe9928665731c",
            "3980ca0b3c00e841eb06fac4872a2757859e1ceaa6efd984628593b40ca1e19c\
             7d773d00c144c525ac619d18c84a3f4718e2448b2fe324d9ccda2710acade256",
            "9924a7c8587336bfb118024db8674a14",
        ),
        (
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            "b094dac5d93471bdec1a502270e3cc6c",
        ),
    ];
    for (key, c, t) in cases {
        let key = unhex(key);
        let h = create(&session, KeyType::AES, &key, "nist");
        let mut iv = unhex("cafebabefacedbaddecaf888");
        let sealed = session.encrypt(&gcm(&mut iv, &[], 128), h, &plain).unwrap();
        let mut want = unhex(c);
        want.extend(unhex(t));
        assert_eq!(sealed, want, "AES-{}", key.len() * 8);
        assert_eq!(
            session
                .decrypt(&gcm(&mut iv, &[], 128), h, &sealed)
                .unwrap(),
            plain
        );
        assert_eq!(check_value(&session, h)[..], aes_kcv_any(&key)[..]);
    }
    // RFC 4231 test case 2 through a session generic secret.
    let h = create(&session, KeyType::GENERIC_SECRET, b"Jefe", "jefe");
    let mac = session
        .sign(&Mechanism::Sha256Hmac, h, b"what do ya want for nothing?")
        .unwrap();
    assert_eq!(
        hex(&mac),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    session
        .verify(
            &Mechanism::Sha256Hmac,
            h,
            b"what do ya want for nothing?",
            &mac,
        )
        .unwrap();
    // The uses are audited (the key by its label, never its value).
    let out = cli(&s, &["audit", "export"]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("session key \\\"jefe\\\""), "{log}");
}

/// AES(key, 0^128)[0..3] for any AES key length.
fn aes_kcv_any(key: &[u8]) -> Vec<u8> {
    use aes::cipher::{BlockCipherEncrypt, KeyInit};
    let mut b = aes::Block::default();
    match key.len() {
        16 => aes::Aes128::new_from_slice(key)
            .unwrap()
            .encrypt_block(&mut b),
        24 => aes::Aes192::new_from_slice(key)
            .unwrap()
            .encrypt_block(&mut b),
        _ => aes::Aes256::new_from_slice(key)
            .unwrap()
            .encrypt_block(&mut b),
    }
    b[..3].to_vec()
}

#[test]
fn session_keys_are_generated_used_and_gone_with_their_session() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let other = p.session();

    // Generated secret keys: random from the HSM, usable at once.
    let aes = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(16.into()),
                Attribute::Label(b"tmp-aes".to_vec()),
            ],
        )
        .unwrap();
    let mut iv = [5u8; 12];
    let sealed = session
        .encrypt(&gcm(&mut iv, b"a", 96), aes, b"hello")
        .unwrap();
    assert_eq!(sealed.len(), 5 + 12);
    assert_eq!(
        session
            .decrypt(&gcm(&mut iv, b"a", 96), aes, &sealed)
            .unwrap(),
        b"hello"
    );
    let attrs = session
        .get_attributes(
            aes,
            &[
                AttributeType::Token,
                AttributeType::ValueLen,
                AttributeType::Local,
            ],
        )
        .unwrap();
    assert_eq!(
        attrs,
        vec![
            Attribute::Token(false),
            Attribute::ValueLen(16.into()),
            Attribute::Local(true)
        ]
    );
    let r = raw();
    let mut buf = [0u8; 64];
    let mut value = [bytes_attr(CKA_VALUE, &buf)];
    value[0].pValue = buf.as_mut_ptr() as *mut _;
    assert_eq!(
        call!(
            r,
            C_GetAttributeValue(session.handle(), aes.handle(), value.as_mut_ptr(), 1)
        ),
        CKR_ATTRIBUTE_SENSITIVE
    );
    assert_eq!(value[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    let hmac = session
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[Attribute::ValueLen(48.into())],
        )
        .unwrap();
    let mac = session.sign(&Mechanism::Sha384Hmac, hmac, b"m").unwrap();
    assert_eq!(mac.len(), 48);
    session
        .verify(&Mechanism::Sha384Hmac, hmac, b"m", &mac)
        .unwrap();

    // A session EC key pair signs; its public key verifies, here and outside.
    let params = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let (pubk, privk) = session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::EcParams(params), Attribute::Verify(true)],
            &[Attribute::Sign(true), Attribute::Label(b"tmp-ec".to_vec())],
        )
        .unwrap();
    let sig = session
        .sign(&Mechanism::EcdsaSha256, privk, b"msg")
        .unwrap();
    session
        .verify(&Mechanism::EcdsaSha256, pubk, b"msg", &sig)
        .unwrap();
    let point = match &session
        .get_attributes(pubk, &[AttributeType::EcPoint])
        .unwrap()[..]
    {
        [Attribute::EcPoint(p)] => p[2..].to_vec(),
        other => panic!("{other:?}"),
    };
    let digest: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(b"msg").into()
    };
    p11derive::mechanisms::ecdsa_verify(p11derive::derive::KeyType::P256, &point, &digest, &sig)
        .unwrap();

    // Every session sees them; a search finds them; closing the session
    // that made them destroys them.
    assert!(other.get_attributes(aes, &[AttributeType::Label]).is_ok());
    assert_eq!(
        find_one(&other, "tmp-ec", ObjectClass::PRIVATE_KEY),
        Some(privk)
    );
    let maker = session.handle();
    drop(other);
    assert_eq!(call!(r, C_CloseSession(maker)), CKR_OK);
    std::mem::forget(session);
    let again = p.user_session();
    for h in [aes, hmac, pubk, privk] {
        assert_eq!(
            rv_of(again.get_attributes(h, &[AttributeType::Label])),
            RvError::ObjectHandleInvalid
        );
    }
    assert!(find_one(&again, "tmp-ec", ObjectClass::PRIVATE_KEY).is_none());
}

#[test]
fn session_key_refusals_name_the_problem() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();
    let base = |kt: KeyType, value: Vec<u8>| {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(kt),
            Attribute::Value(value),
        ]
    };
    let with = |mut t: Vec<Attribute>, extra: Attribute| {
        t.push(extra);
        t
    };
    let cases: Vec<(&str, Vec<Attribute>, RvError, &str)> = vec![
        (
            "a token object",
            with(base(KeyType::AES, vec![1; 32]), Attribute::Token(true)),
            RvError::TemplateInconsistent,
            "CKA_TOKEN=true",
        ),
        (
            "a 20-byte AES key",
            base(KeyType::AES, vec![1; 20]),
            RvError::AttributeValueInvalid,
            "16, 24 or 32 bytes",
        ),
        (
            "no value",
            vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
            ],
            RvError::TemplateIncomplete,
            "no CKA_VALUE",
        ),
        // A session key may be non-sensitive (tests/session_objects.rs);
        // an EC private key names its curve.
        (
            "a private key object without a curve",
            vec![
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Value(vec![1]),
            ],
            RvError::TemplateIncomplete,
            "no CKA_EC_PARAMS",
        ),
        (
            "a domain parameters object",
            vec![Attribute::Class(ObjectClass::DOMAIN_PARAMETERS)],
            RvError::TemplateInconsistent,
            "only secret keys, EC keys",
        ),
        (
            "a wrong length",
            with(
                base(KeyType::AES, vec![1; 16]),
                Attribute::ValueLen(32.into()),
            ),
            RvError::TemplateInconsistent,
            "CKA_VALUE_LEN differs",
        ),
    ];
    for (what, t, want, named) in cases {
        let from = s.log().len();
        assert_eq!(rv_of(session.create_object(&t)), want, "{what}");
        assert!(
            s.log_since(from).contains(named),
            "{what}: the log says {named:?}"
        );
    }
    assert_eq!(
        rv_of(session.generate_key(&Mechanism::AesKeyGen, &[Attribute::Label(b"x".to_vec())])),
        RvError::TemplateIncomplete,
        "no CKA_VALUE_LEN"
    );
    // A value too long to be a key is refused before it is copied anywhere.
    assert_eq!(
        rv_of(session.create_object(&base(KeyType::GENERIC_SECRET, vec![1; 5000]))),
        RvError::AttributeValueInvalid
    );
    assert!(s.log().contains("secret keys are at most 4096"));
    // A key made for decryption only does not encrypt.
    let t = with(base(KeyType::AES, vec![2; 16]), Attribute::Encrypt(false));
    let dec_only = session.create_object(&t).unwrap();
    let mut iv = [0u8; 12];
    assert_eq!(
        rv_of(session.encrypt(&gcm(&mut iv, &[], 128), dec_only, b"x")),
        RvError::KeyFunctionNotPermitted
    );
    // Secret session keys need a login to be made.
    let public = p.session();
    session.logout().unwrap();
    assert_eq!(
        rv_of(public.create_object(&base(KeyType::AES, vec![1; 16]))),
        RvError::UserNotLoggedIn
    );
}

// ---- key wrapping ---------------------------------------------------------------

/// C_WrapKey with CKM_AES_KEY_WRAP_KWP (cryptoki has no name for it).
fn wrap_kwp(session: &Session, kek: ObjectHandle, key: ObjectHandle) -> Result<Vec<u8>, CK_RV> {
    let r = raw();
    let mut mech = CK_MECHANISM {
        mechanism: CKM_AES_KEY_WRAP_KWP,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let (h, kek, key) = (session.handle(), kek.handle(), key.handle());
    let mut len: CK_ULONG = 0;
    let rv = call!(
        r,
        C_WrapKey(h, &mut mech, kek, key, ptr::null_mut(), &mut len)
    );
    if rv != CKR_OK {
        return Err(rv);
    }
    let mut out = vec![0u8; len as usize];
    let rv = call!(
        r,
        C_WrapKey(h, &mut mech, kek, key, out.as_mut_ptr(), &mut len)
    );
    if rv != CKR_OK {
        return Err(rv);
    }
    out.truncate(len as usize);
    Ok(out)
}

fn extractable(session: &Session, kt: KeyType, value: &[u8]) -> ObjectHandle {
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(kt),
            Attribute::Value(value.to_vec()),
            Attribute::Extractable(true),
        ])
        .unwrap()
}

#[test]
fn key_wrap_matches_the_rfcs_and_follows_rotation() {
    let _turn = turn();
    let s = setup(None);
    let p = s.load();
    let session = p.user_session();

    // RFC 3394 §4.6 and RFC 5649 §6 through session keys.
    let kek = create(
        &session,
        KeyType::AES,
        &(0..32).collect::<Vec<u8>>(),
        "kek-3394",
    );
    let key = extractable(
        &session,
        KeyType::AES,
        &unhex("00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f"),
    );
    assert_eq!(
        hex(&session.wrap_key(&Mechanism::AesKeyWrap, kek, key).unwrap()),
        "28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326cbc7f0e71a99f43bfb988b9b7a02dd21"
    );
    let kek = create(
        &session,
        KeyType::AES,
        &unhex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8"),
        "kek-5649",
    );
    let key = extractable(
        &session,
        KeyType::GENERIC_SECRET,
        &unhex("c37b7e6492584340bed12207808941155068f738"),
    );
    assert_eq!(
        hex(&wrap_kwp(&session, kek, key).unwrap()),
        "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"
    );

    // A derived AES asset wraps a session key and unwraps it back, also
    // after a rotation through the alias and the old version object.
    let asset = generate(&session, "kek", false);
    let data_key = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[Attribute::ValueLen(32.into()), Attribute::Extractable(true)],
        )
        .unwrap();
    let wrapped = session
        .wrap_key(&Mechanism::AesKeyWrap, asset, data_key)
        .unwrap();
    assert_eq!(wrapped.len(), 40);
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(b"unwrapped".to_vec()),
    ];
    let out = cli(&s, &["asset", "rotate", "kek"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v1 = find_one(&session, "kek@v1", ObjectClass::SECRET_KEY).unwrap();
    for (n, through) in [asset, v1].into_iter().enumerate() {
        let back = session
            .unwrap_key(&Mechanism::AesKeyWrap, through, &wrapped, &template)
            .unwrap();
        assert_eq!(check_value(&session, back), check_value(&session, data_key));
        let mut iv = [n as u8; 12];
        let sealed = session
            .encrypt(&gcm(&mut iv, &[], 128), data_key, b"x")
            .unwrap();
        assert_eq!(
            session
                .decrypt(&gcm(&mut iv, &[], 128), back, &sealed)
                .unwrap(),
            b"x"
        );
    }
    // The old version no longer wraps; the new one does, and v1 cannot open it.
    assert_eq!(
        rv_of(session.wrap_key(&Mechanism::AesKeyWrap, v1, data_key)),
        RvError::KeyFunctionNotPermitted
    );
    let wrapped2 = session
        .wrap_key(&Mechanism::AesKeyWrap, asset, data_key)
        .unwrap();
    assert_eq!(
        rv_of(session.unwrap_key(&Mechanism::AesKeyWrap, v1, &wrapped2, &template)),
        RvError::WrappedKeyInvalid
    );

    // Refusals. A key CKM_AES_KEY_WRAP cannot wrap is refused at the length
    // query already (cryptoki asks for the length first).
    let odd = extractable(&session, KeyType::GENERIC_SECRET, &[5; 20]);
    assert_eq!(
        rv_of(session.wrap_key(&Mechanism::AesKeyWrap, asset, odd)),
        RvError::KeySizeRange
    );
    let hmac_asset = generate(&session, "not-a-kek", true);
    assert_eq!(
        rv_of(session.wrap_key(&Mechanism::AesKeyWrap, asset, asset)),
        RvError::KeyUnextractable,
        "derived keys never leave"
    );
    let fixed = create(&session, KeyType::AES, &[7; 16], "fixed");
    assert_eq!(
        rv_of(session.wrap_key(&Mechanism::AesKeyWrap, asset, fixed)),
        RvError::KeyUnextractable
    );
    assert_eq!(
        rv_of(session.wrap_key(&Mechanism::AesKeyWrap, hmac_asset, data_key)),
        RvError::WrappingKeyTypeInconsistent
    );
    let mut bad = wrapped2.clone();
    bad[9] ^= 1;
    assert_eq!(
        rv_of(session.unwrap_key(&Mechanism::AesKeyWrap, asset, &bad, &template)),
        RvError::WrappedKeyInvalid
    );
    assert_eq!(
        rv_of(session.unwrap_key(&Mechanism::AesKeyWrap, asset, &bad[..20], &template)),
        RvError::WrappedKeyLenRange
    );
    let out = cli(&s, &["audit", "export", "--asset", "kek"]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("C_WrapKey of session key"), "{log}");
    assert!(log.contains("C_UnwrapKey into session key"), "{log}");
}
