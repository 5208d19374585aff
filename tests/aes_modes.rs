//! Issue 24 (aes): AES-ECB, AES-CBC, AES-CBC-PAD, AES-CTR, AES-CMAC and AES-CMAC-GENERAL through the raw C ABI, with session keys of known value (checked against OpenSSL, the library and the `openssl enc` command) and derived assets (round trips, audit records).

mod common;

use std::ffi::c_void;
use std::process::Command;
use std::ptr;

use cryptoki_sys::*;
use openssl::symm::{Cipher, Crypter, Mode};

use common::*;

/// A provider initialized through the raw ABI, with one session.
struct Open {
    r: Raw,
    h: CK_SESSION_HANDLE,
    s: Setup,
}

fn open(login: bool) -> Open {
    let s = setup(None);
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let r = raw();
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: ptr::null_mut(),
    };
    let rv = call!(r, C_Initialize(&mut args as *mut _ as *mut c_void));
    assert_eq!(rv, CKR_OK);
    let mut h = 0;
    let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
    let rv = call!(r, C_OpenSession(1, flags, ptr::null_mut(), None, &mut h));
    assert_eq!(rv, CKR_OK);
    if login {
        let rv = call!(
            r,
            C_Login(h, CKU_USER, PIN.as_ptr() as *mut u8, PIN.len() as CK_ULONG)
        );
        assert_eq!(rv, CKR_OK);
    }
    Open { r, h, s }
}

impl Drop for Open {
    fn drop(&mut self) {
        call!(self.r, C_Finalize(ptr::null_mut()));
    }
}

fn attr<T>(ty: CK_ATTRIBUTE_TYPE, v: &T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v as *const T as *mut c_void,
        ulValueLen: size_of::<T>() as CK_ULONG,
    }
}

fn bytes_attr(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr() as *mut c_void,
        ulValueLen: v.len() as CK_ULONG,
    }
}

const TRUE: CK_BBOOL = CK_TRUE;
const FALSE: CK_BBOOL = CK_FALSE;

impl Open {
    /// A session AES key of this value; `encrypt` its CKA_ENCRYPT,
    /// `private` its CKA_PRIVATE.
    fn session_key(&self, value: &[u8], encrypt: bool, private: bool) -> CK_OBJECT_HANDLE {
        let (class, kt) = (CKO_SECRET_KEY, CKK_AES);
        let enc = if encrypt { TRUE } else { FALSE };
        let private = if private { TRUE } else { FALSE };
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &kt),
            bytes_attr(CKA_VALUE, value),
            bytes_attr(CKA_LABEL, b"known"),
            attr(CKA_ENCRYPT, &enc),
            attr(CKA_DECRYPT, &TRUE),
            attr(CKA_SIGN, &TRUE),
            attr(CKA_VERIFY, &TRUE),
            attr(CKA_PRIVATE, &private),
        ];
        let mut k = 0;
        let rv = call!(
            self.r,
            C_CreateObject(self.h, t.as_mut_ptr(), t.len() as CK_ULONG, &mut k)
        );
        assert_eq!(rv, CKR_OK);
        k
    }

    /// A derived AES-256 asset named `label` (its alias).
    fn asset(&self, label: &str) -> CK_OBJECT_HANDLE {
        let len: CK_ULONG = 32;
        let mut t = [
            attr(CKA_TOKEN, &TRUE),
            bytes_attr(CKA_LABEL, label.as_bytes()),
            attr(CKA_VALUE_LEN, &len),
            attr(CKA_ENCRYPT, &TRUE),
            attr(CKA_DECRYPT, &TRUE),
        ];
        let mut m = mech(CKM_AES_KEY_GEN, &[]);
        let mut k = 0;
        let rv = call!(
            self.r,
            C_GenerateKey(self.h, &mut m, t.as_mut_ptr(), t.len() as CK_ULONG, &mut k)
        );
        assert_eq!(rv, CKR_OK);
        k
    }

    fn init(&self, m: CK_MECHANISM_TYPE, p: &[u8], key: CK_OBJECT_HANDLE, enc: bool) -> CK_RV {
        let mut m = mech(m, p);
        if enc {
            call!(self.r, C_EncryptInit(self.h, &mut m, key))
        } else {
            call!(self.r, C_DecryptInit(self.h, &mut m, key))
        }
    }

    /// C_Encrypt / C_Decrypt: asks the length, then calls with a buffer of
    /// exactly that length.
    fn one(&self, input: &[u8], enc: bool) -> Result<Vec<u8>, CK_RV> {
        let f = if enc {
            self.r.f.C_Encrypt.unwrap()
        } else {
            self.r.f.C_Decrypt.unwrap()
        };
        let mut len: CK_ULONG = 0;
        let p = input.as_ptr() as *mut u8;
        let n = input.len() as CK_ULONG;
        // SAFETY: valid buffers for the calls.
        let rv = unsafe { f(self.h, p, n, ptr::null_mut(), &mut len) };
        if rv != CKR_OK {
            return Err(rv);
        }
        let mut out = vec![0u8; len as usize];
        // SAFETY: as above.
        let rv = unsafe { f(self.h, p, n, out.as_mut_ptr(), &mut len) };
        if rv != CKR_OK {
            return Err(rv);
        }
        out.truncate(len as usize);
        Ok(out)
    }

    fn update(&self, input: &[u8], enc: bool) -> Result<Vec<u8>, CK_RV> {
        let f = if enc {
            self.r.f.C_EncryptUpdate.unwrap()
        } else {
            self.r.f.C_DecryptUpdate.unwrap()
        };
        let mut len: CK_ULONG = 0;
        let p = input.as_ptr() as *mut u8;
        let n = input.len() as CK_ULONG;
        // SAFETY: valid buffers for the calls.
        let rv = unsafe { f(self.h, p, n, ptr::null_mut(), &mut len) };
        if rv != CKR_OK {
            return Err(rv);
        }
        let mut out = vec![0u8; len as usize];
        // A zero-length output is still given a buffer (not a length query).
        let mut dummy = [0u8; 1];
        let dst = if out.is_empty() {
            dummy.as_mut_ptr()
        } else {
            out.as_mut_ptr()
        };
        // SAFETY: as above.
        let rv = unsafe { f(self.h, p, n, dst, &mut len) };
        if rv != CKR_OK {
            return Err(rv);
        }
        out.truncate(len as usize);
        Ok(out)
    }

    fn last(&self, enc: bool) -> Result<Vec<u8>, CK_RV> {
        let f = if enc {
            self.r.f.C_EncryptFinal.unwrap()
        } else {
            self.r.f.C_DecryptFinal.unwrap()
        };
        let mut len: CK_ULONG = 0;
        // SAFETY: valid buffers for the calls.
        let rv = unsafe { f(self.h, ptr::null_mut(), &mut len) };
        if rv != CKR_OK {
            return Err(rv);
        }
        let mut out = vec![0u8; len as usize + 1];
        // SAFETY: as above.
        let rv = unsafe { f(self.h, out.as_mut_ptr(), &mut len) };
        if rv != CKR_OK {
            return Err(rv);
        }
        out.truncate(len as usize);
        Ok(out)
    }

    /// Single part.
    fn crypt(
        &self,
        m: CK_MECHANISM_TYPE,
        p: &[u8],
        key: CK_OBJECT_HANDLE,
        input: &[u8],
        enc: bool,
    ) -> Result<Vec<u8>, CK_RV> {
        assert_eq!(self.init(m, p, key, enc), CKR_OK);
        self.one(input, enc)
    }

    /// Multi-part, in parts of the given sizes (cycled).
    fn parts(
        &self,
        m: CK_MECHANISM_TYPE,
        p: &[u8],
        key: CK_OBJECT_HANDLE,
        input: &[u8],
        enc: bool,
        sizes: &[usize],
    ) -> Result<Vec<u8>, CK_RV> {
        assert_eq!(self.init(m, p, key, enc), CKR_OK);
        let mut out = Vec::new();
        let mut rest = input;
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (part, more) = rest.split_at((*size).min(rest.len()));
            out.extend(self.update(part, enc)?);
            rest = more;
        }
        out.extend(self.last(enc)?);
        Ok(out)
    }

    fn sign(&self, m: CK_MECHANISM_TYPE, p: &[u8], key: CK_OBJECT_HANDLE, data: &[u8]) -> Vec<u8> {
        let mut mm = mech(m, p);
        assert_eq!(call!(self.r, C_SignInit(self.h, &mut mm, key)), CKR_OK);
        let mut sig = [0u8; 64];
        let mut len = sig.len() as CK_ULONG;
        let rv = call!(
            self.r,
            C_Sign(
                self.h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                sig.as_mut_ptr(),
                &mut len
            )
        );
        assert_eq!(rv, CKR_OK);
        sig[..len as usize].to_vec()
    }

    fn verify(
        &self,
        m: CK_MECHANISM_TYPE,
        p: &[u8],
        key: CK_OBJECT_HANDLE,
        data: &[u8],
        sig: &[u8],
    ) -> CK_RV {
        let mut mm = mech(m, p);
        assert_eq!(call!(self.r, C_VerifyInit(self.h, &mut mm, key)), CKR_OK);
        call!(
            self.r,
            C_Verify(
                self.h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                sig.as_ptr() as *mut u8,
                sig.len() as CK_ULONG
            )
        )
    }
}

fn mech(ty: CK_MECHANISM_TYPE, p: &[u8]) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: ty,
        pParameter: if p.is_empty() {
            ptr::null_mut()
        } else {
            p.as_ptr() as *mut c_void
        },
        ulParameterLen: p.len() as CK_ULONG,
    }
}

fn ctr_param(bits: CK_ULONG, cb: &[u8; 16]) -> Vec<u8> {
    [&bits.to_ne_bytes()[..], cb].concat()
}

/// The OpenSSL library's answer, for comparison (no padding; CTR over the
/// full 128-bit counter).
fn reference(m: CK_MECHANISM_TYPE, key: &[u8], iv: &[u8; 16], data: &[u8], enc: bool) -> Vec<u8> {
    let cipher = match (m, key.len()) {
        (CKM_AES_ECB, 16) => Cipher::aes_128_ecb(),
        (CKM_AES_ECB, 32) => Cipher::aes_256_ecb(),
        (CKM_AES_CBC | CKM_AES_CBC_PAD, 16) => Cipher::aes_128_cbc(),
        (CKM_AES_CBC | CKM_AES_CBC_PAD, 24) => Cipher::aes_192_cbc(),
        (CKM_AES_CBC | CKM_AES_CBC_PAD, 32) => Cipher::aes_256_cbc(),
        (CKM_AES_CTR, 16) => Cipher::aes_128_ctr(),
        (CKM_AES_CTR, 32) => Cipher::aes_256_ctr(),
        other => panic!("{other:?}"),
    };
    let mode = if enc { Mode::Encrypt } else { Mode::Decrypt };
    let iv = (m != CKM_AES_ECB).then_some(&iv[..]);
    let mut c = Crypter::new(cipher, mode, key, iv).unwrap();
    c.pad(m == CKM_AES_CBC_PAD);
    let mut out = vec![0u8; data.len() + 32];
    let mut n = c.update(data, &mut out).unwrap();
    n += c.finalize(&mut out[n..]).unwrap();
    out.truncate(n);
    out
}

fn cmac_reference(key: &[u8], data: &[u8]) -> Vec<u8> {
    let cipher = match key.len() {
        16 => Cipher::aes_128_cbc(),
        _ => Cipher::aes_256_cbc(),
    };
    let pkey = openssl::pkey::PKey::cmac(&cipher, key).unwrap();
    let mut signer = openssl::sign::Signer::new_without_digest(&pkey).unwrap();
    signer.update(data).unwrap();
    signer.sign_to_vec().unwrap()
}

const SIZES: &[usize] = &[1, 15, 16, 17, 3, 32, 5];

/// Every mode, single- and multi-part, both ways, with session keys of
/// 16, 24 and 32 bytes: the same bytes as OpenSSL.
#[test]
fn session_keys_agree_with_openssl_in_every_mode() {
    let _turn = turn();
    let t = open(true);
    let data: Vec<u8> = (0..100u8).map(|b| b.wrapping_mul(29)).collect();
    let iv: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
    for key_len in [16usize, 24, 32] {
        let value: Vec<u8> = (0..key_len as u8).map(|b| b ^ 0x5c).collect();
        let key = t.session_key(&value, true, true);
        for m in [CKM_AES_ECB, CKM_AES_CBC, CKM_AES_CBC_PAD, CKM_AES_CTR] {
            if key_len == 24 && m != CKM_AES_CBC && m != CKM_AES_CBC_PAD {
                continue;
            }
            let param = match m {
                CKM_AES_ECB => vec![],
                CKM_AES_CTR => ctr_param(128, &iv),
                _ => iv.to_vec(),
            };
            // Whole blocks for the modes without padding.
            let input = match m {
                CKM_AES_ECB | CKM_AES_CBC => &data[..96],
                _ => &data[..],
            };
            let want = reference(m, &value, &iv, input, true);
            let one = t.crypt(m, &param, key, input, true).unwrap();
            assert_eq!(one, want, "{m:#x} key {key_len}");
            let parts = t.parts(m, &param, key, input, true, SIZES).unwrap();
            assert_eq!(parts, want, "{m:#x} key {key_len} in parts");
            let back = t.crypt(m, &param, key, &want, false).unwrap();
            assert_eq!(back, input);
            let back = t.parts(m, &param, key, &want, false, SIZES).unwrap();
            assert_eq!(back, input, "{m:#x} key {key_len} decrypted in parts");
        }
    }
}

/// `openssl enc -aes-256-cbc` output decrypts under a session key of the
/// same value (CBC-PAD; CBC with -nopad), and the provider's CBC-PAD
/// ciphertext decrypts with `openssl enc -d`.
#[test]
fn openssl_enc_output_decrypts() {
    let _turn = turn();
    let t = open(true);
    let key: Vec<u8> = (0..32u8).collect();
    let iv = [0x42u8; 16];
    let value = t.session_key(&key, true, true);
    let plain = b"a message of forty-five bytes, not a multiple";
    let dir = t.s.dir.clone();
    std::fs::write(dir.join("plain"), plain).unwrap();
    let enc = |extra: &[&str], out: &str| {
        let st = Command::new("openssl")
            .args(["enc", "-aes-256-cbc", "-K", &hex(&key), "-iv", &hex(&iv)])
            .args(extra)
            .arg("-in")
            .arg(dir.join("plain"))
            .arg("-out")
            .arg(dir.join(out))
            .status()
            .expect("openssl runs");
        assert!(st.success());
        std::fs::read(dir.join(out)).unwrap()
    };
    let padded = enc(&[], "padded");
    assert_eq!(padded.len(), 48);
    let back = t
        .crypt(CKM_AES_CBC_PAD, &iv, value, &padded, false)
        .unwrap();
    assert_eq!(back, plain);
    let back = t
        .parts(CKM_AES_CBC_PAD, &iv, value, &padded, false, &[16, 16, 16])
        .unwrap();
    assert_eq!(back, plain);
    // Whole blocks only with -nopad: the first 32 bytes.
    std::fs::write(dir.join("plain"), &plain[..32]).unwrap();
    let raw_ct = enc(&["-nopad"], "nopad");
    let back = t.crypt(CKM_AES_CBC, &iv, value, &raw_ct, false).unwrap();
    assert_eq!(back, &plain[..32]);
    // And back: the provider's CBC-PAD ciphertext, opened by openssl.
    let ours = t.crypt(CKM_AES_CBC_PAD, &iv, value, plain, true).unwrap();
    assert_eq!(ours, padded);
    std::fs::write(dir.join("ours"), &ours).unwrap();
    let out = Command::new("openssl")
        .args([
            "enc",
            "-d",
            "-aes-256-cbc",
            "-K",
            &hex(&key),
            "-iv",
            &hex(&iv),
            "-in",
        ])
        .arg(dir.join("ours"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, plain);
}

/// The PKCS#11 conventions and error codes of the block modes.
#[test]
fn errors_and_length_conventions() {
    let _turn = turn();
    let t = open(true);
    let key = t.session_key(&[7; 32], true, true);
    let iv = [1u8; 16];
    // A bad IV length, a parameter for ECB, a bad counter width.
    for (m, p) in [
        (CKM_AES_CBC, vec![0u8; 15]),
        (CKM_AES_CBC_PAD, vec![0u8; 17]),
        (CKM_AES_ECB, vec![0u8; 16]),
        (CKM_AES_CTR, ctr_param(0, &iv)),
        (CKM_AES_CTR, iv.to_vec()),
    ] {
        assert_eq!(
            t.init(m, &p, key, true),
            CKR_MECHANISM_PARAM_INVALID,
            "{m:#x}"
        );
        assert_eq!(
            t.init(m, &p, key, false),
            CKR_MECHANISM_PARAM_INVALID,
            "{m:#x}"
        );
    }
    // A partial block: refused at the end, which ends the operation.
    assert_eq!(t.init(CKM_AES_ECB, &[], key, true), CKR_OK);
    assert_eq!(t.update(&[0; 20], true).unwrap().len(), 16);
    assert_eq!(t.last(true), Err(CKR_DATA_LEN_RANGE));
    assert_eq!(t.update(&[0; 16], true), Err(CKR_OPERATION_NOT_INITIALIZED));
    assert_eq!(
        t.crypt(CKM_AES_CBC, &iv, key, &[0; 17], true),
        Err(CKR_DATA_LEN_RANGE)
    );
    assert_eq!(
        t.crypt(CKM_AES_CBC, &iv, key, &[0; 17], false),
        Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
    );
    assert_eq!(
        t.crypt(CKM_AES_CBC_PAD, &iv, key, &[0; 31], false),
        Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
    );
    // A bad padding (a last block ending in 0x20).
    let mut block = [0u8; 16];
    block[15] = 0x20;
    let bad = t.crypt(CKM_AES_CBC, &iv, key, &block, true).unwrap();
    assert_eq!(
        t.crypt(CKM_AES_CBC_PAD, &iv, key, &bad, false),
        Err(CKR_ENCRYPTED_DATA_INVALID)
    );
    // A length query and a short buffer keep the operation; the length is
    // the exact one (CBC-PAD decryption: the unpadded length).
    let ct = t
        .crypt(CKM_AES_CBC_PAD, &iv, key, b"seven b", true)
        .unwrap();
    assert_eq!(t.init(CKM_AES_CBC_PAD, &iv, key, false), CKR_OK);
    let mut len: CK_ULONG = 0;
    let (p, n) = (ct.as_ptr() as *mut u8, ct.len() as CK_ULONG);
    assert_eq!(
        call!(t.r, C_Decrypt(t.h, p, n, ptr::null_mut(), &mut len)),
        CKR_OK
    );
    assert_eq!(len, 7);
    let mut out = [0xabu8; 16];
    len = 3;
    assert_eq!(
        call!(t.r, C_Decrypt(t.h, p, n, out.as_mut_ptr(), &mut len)),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!((len, out[0]), (7, 0xab));
    len = 16;
    assert_eq!(
        call!(t.r, C_Decrypt(t.h, p, n, out.as_mut_ptr(), &mut len)),
        CKR_OK
    );
    assert_eq!(&out[..len as usize], b"seven b");
    // After C_EncryptUpdate a single-part call is refused; after a
    // single-part length query, an update.
    assert_eq!(t.init(CKM_AES_ECB, &[], key, true), CKR_OK);
    t.update(&[0; 16], true).unwrap();
    assert_eq!(t.one(&[0; 16], true), Err(CKR_OPERATION_ACTIVE));
    assert_eq!(t.init(CKM_AES_ECB, &[], key, true), CKR_OK);
    assert_eq!(
        call!(t.r, C_Encrypt(t.h, p, 16, ptr::null_mut(), &mut len)),
        CKR_OK
    );
    assert_eq!(t.update(&[0; 16], true), Err(CKR_OPERATION_ACTIVE));
    // Bad arguments end the operation too.
    assert_eq!(t.init(CKM_AES_ECB, &[], key, true), CKR_OK);
    assert_eq!(
        call!(
            t.r,
            C_EncryptUpdate(t.h, p, 16, ptr::null_mut(), ptr::null_mut())
        ),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(t.init(CKM_AES_ECB, &[], key, true), CKR_OK);
    assert_eq!(t.one(&[0; 16], true).unwrap().len(), 16);
    // The counter may not wrap: an 8-bit counter at 0xff allows one block.
    let mut cb = [0u8; 16];
    cb[15] = 0xff;
    let wrap = ctr_param(8, &cb);
    assert_eq!(
        t.crypt(CKM_AES_CTR, &wrap, key, &[0; 16], true)
            .unwrap()
            .len(),
        16
    );
    assert_eq!(
        t.crypt(CKM_AES_CTR, &wrap, key, &[0; 17], true),
        Err(CKR_DATA_LEN_RANGE)
    );
    assert_eq!(
        t.crypt(CKM_AES_CTR, &wrap, key, &[0; 17], false),
        Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
    );
    // An RSA mechanism does not fit an AES key; an unknown one is invalid.
    assert_eq!(
        t.init(CKM_RSA_PKCS, &[], key, true),
        CKR_KEY_TYPE_INCONSISTENT
    );
    assert_eq!(t.init(0x3e7, &[], key, false), CKR_MECHANISM_INVALID);
    // CKA_ENCRYPT false: no encryption, decryption still.
    let no_enc = t.session_key(&[7; 32], false, true);
    assert_eq!(
        t.init(CKM_AES_CBC, &iv, no_enc, true),
        CKR_KEY_FUNCTION_NOT_PERMITTED
    );
    assert_eq!(t.init(CKM_AES_CBC, &iv, no_enc, false), CKR_OK);
    assert_eq!(t.one(&[0; 16], false).unwrap().len(), 16);
}

/// A public session key works in a public session (what pkcs11test's
/// cipher tests do); a private one needs the login.
#[test]
fn public_session_keys_need_no_login() {
    let _turn = turn();
    let t = open(false);
    let key = t.session_key(&[3; 16], true, false);
    let ct = t.crypt(CKM_AES_CBC, &[0; 16], key, &[9; 32], true).unwrap();
    assert_eq!(
        ct,
        reference(CKM_AES_CBC, &[3; 16], &[0; 16], &[9; 32], true)
    );
    let (class, kt, value) = (CKO_SECRET_KEY, CKK_AES, [3u8; 16]);
    let mut tpl = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &kt),
        bytes_attr(CKA_VALUE, &value),
        attr(CKA_PRIVATE, &TRUE),
    ];
    let mut k = 0;
    let rv = call!(
        t.r,
        C_CreateObject(t.h, tpl.as_mut_ptr(), tpl.len() as CK_ULONG, &mut k)
    );
    assert_eq!(rv, CKR_USER_NOT_LOGGED_IN);
}

/// AES-CMAC and AES-CMAC-GENERAL with a session key: OpenSSL's MAC,
/// single- and multi-part; a wrong MAC or length refused.
#[test]
fn cmac_agrees_with_openssl() {
    let _turn = turn();
    let t = open(true);
    for len in [16usize, 32] {
        let value: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(7)).collect();
        let key = t.session_key(&value, true, true);
        for data in [&b""[..], b"x", &[0x61; 16], &[0x62; 100]] {
            let want = cmac_reference(&value, data);
            assert_eq!(t.sign(CKM_AES_CMAC, &[], key, data), want);
            let eight = (8 as CK_ULONG).to_ne_bytes();
            assert_eq!(t.sign(CKM_AES_CMAC_GENERAL, &eight, key, data), want[..8]);
            assert_eq!(t.verify(CKM_AES_CMAC, &[], key, data, &want), CKR_OK);
            assert_eq!(
                t.verify(CKM_AES_CMAC_GENERAL, &eight, key, data, &want[..8]),
                CKR_OK
            );
            let mut bad = want.clone();
            bad[3] ^= 1;
            assert_eq!(
                t.verify(CKM_AES_CMAC, &[], key, data, &bad),
                CKR_SIGNATURE_INVALID
            );
            assert_eq!(
                t.verify(CKM_AES_CMAC, &[], key, data, &want[..8]),
                CKR_SIGNATURE_LEN_RANGE
            );
            // In parts.
            let mut m = mech(CKM_AES_CMAC, &[]);
            assert_eq!(call!(t.r, C_SignInit(t.h, &mut m, key)), CKR_OK);
            for part in data.chunks(7) {
                let rv = call!(
                    t.r,
                    C_SignUpdate(t.h, part.as_ptr() as *mut u8, part.len() as CK_ULONG)
                );
                assert_eq!(rv, CKR_OK);
            }
            let mut sig = [0u8; 16];
            let mut n: CK_ULONG = 16;
            assert_eq!(
                call!(t.r, C_SignFinal(t.h, sig.as_mut_ptr(), &mut n)),
                CKR_OK
            );
            assert_eq!(&sig[..], &want[..]);
        }
        let mut m = mech(CKM_AES_CMAC_GENERAL, &(17 as CK_ULONG).to_ne_bytes());
        assert_eq!(
            call!(t.r, C_SignInit(t.h, &mut m, key)),
            CKR_MECHANISM_PARAM_INVALID
        );
    }
}

/// Derived assets: every mode round-trips, CMAC signs and verifies, each
/// use leaves audit records (per released part, the IV named), and the
/// block modes do not use the GCM key itself (ECB of the zero block is not
/// the key's check value).
#[test]
fn derived_assets_use_the_modes_with_audit() {
    let _turn = turn();
    let t = open(true);
    let key = t.asset("modes");
    let data: Vec<u8> = (0..80u8).collect();
    let iv = [0x3cu8; 16];
    for m in [CKM_AES_ECB, CKM_AES_CBC, CKM_AES_CBC_PAD, CKM_AES_CTR] {
        let param = match m {
            CKM_AES_ECB => vec![],
            CKM_AES_CTR => ctr_param(64, &iv),
            _ => iv.to_vec(),
        };
        let ct = t.crypt(m, &param, key, &data, true).unwrap();
        assert_ne!(&ct[..16], &data[..16]);
        assert_eq!(t.parts(m, &param, key, &data, true, SIZES).unwrap(), ct);
        assert_eq!(t.crypt(m, &param, key, &ct, false).unwrap(), data);
        assert_eq!(t.parts(m, &param, key, &ct, false, SIZES).unwrap(), data);
    }
    let sig = t.sign(CKM_AES_CMAC, &[], key, b"mac me");
    assert_eq!(sig.len(), 16);
    assert_eq!(t.verify(CKM_AES_CMAC, &[], key, b"mac me", &sig), CKR_OK);
    assert_eq!(
        t.verify(CKM_AES_CMAC, &[], key, b"mac me!", &sig),
        CKR_SIGNATURE_INVALID
    );
    // The check value is E(K, 0)[..3]; ECB under the block-mode subkey differs.
    let mut cv = [0u8; 3];
    let mut a = [bytes_attr(CKA_CHECK_VALUE, &cv)];
    a[0].pValue = cv.as_mut_ptr() as *mut c_void;
    assert_eq!(
        call!(t.r, C_GetAttributeValue(t.h, key, a.as_mut_ptr(), 1)),
        CKR_OK
    );
    let zero = t.crypt(CKM_AES_ECB, &[], key, &[0; 16], true).unwrap();
    assert_ne!(&zero[..3], &cv[..]);
    // Audit: each encryption in parts left records naming its IV and parts.
    let recs = t.s.audit_records(&[]);
    let with_iv: Vec<_> = recs
        .iter()
        .filter(|r| {
            r["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("iv={}", hex(&iv))))
        })
        .collect();
    assert!(with_iv.iter().any(|r| r["event"] == "encrypt"));
    assert!(with_iv.iter().any(|r| r["event"] == "decrypt"));
    assert!(with_iv
        .iter()
        .any(|r| r["detail"].as_str().unwrap().contains("(final)")));
    // Every record of a use in parts names the operation's IV, not the
    // chaining block CBC has reached by then (every use here has `iv`).
    let cbc = |r: &&serde_json::Value| {
        r["mechanism"] == CKM_AES_CBC && r["detail"].as_str().is_some_and(|d| d.contains("part 2"))
    };
    assert!(recs.iter().filter(cbc).count() >= 2);
    assert!(recs.iter().filter(cbc).all(|r| r["detail"]
        .as_str()
        .unwrap()
        .contains(&format!("iv={}", hex(&iv)))));
    assert!(recs.iter().any(|r| r["event"] == "sign"));
}

/// C_GetMechanismInfo: the modes encrypt and decrypt, CMAC signs and
/// verifies, with AES key sizes.
#[test]
fn mechanism_info_lists_the_modes() {
    let _turn = turn();
    let t = open(false);
    let mut count: CK_ULONG = 0;
    assert_eq!(
        call!(t.r, C_GetMechanismList(1, ptr::null_mut(), &mut count)),
        CKR_OK
    );
    let mut list = vec![0; count as usize];
    assert_eq!(
        call!(t.r, C_GetMechanismList(1, list.as_mut_ptr(), &mut count)),
        CKR_OK
    );
    for (m, flags) in [
        (CKM_AES_ECB, CKF_ENCRYPT | CKF_DECRYPT),
        (CKM_AES_CBC, CKF_ENCRYPT | CKF_DECRYPT),
        (CKM_AES_CBC_PAD, CKF_ENCRYPT | CKF_DECRYPT),
        (CKM_AES_CTR, CKF_ENCRYPT | CKF_DECRYPT),
        (CKM_AES_CMAC, CKF_SIGN | CKF_VERIFY),
        (CKM_AES_CMAC_GENERAL, CKF_SIGN | CKF_VERIFY),
    ] {
        assert!(list.contains(&m), "{m:#x}");
        let mut info = CK_MECHANISM_INFO::default();
        assert_eq!(call!(t.r, C_GetMechanismInfo(1, m, &mut info)), CKR_OK);
        assert_eq!(
            (info.flags, info.ulMinKeySize, info.ulMaxKeySize),
            (flags, 16, 32),
            "{m:#x}"
        );
    }
}

/// A message's output, IV and tag.
type Sealed = (Vec<u8>, Vec<u8>, Vec<u8>);

/// One message of the message-based API: `Ok((output, iv, tag))`.
#[allow(clippy::too_many_arguments)]
fn message(
    t: &Open,
    enc: bool,
    iv: &[u8],
    fixed_bits: CK_ULONG,
    generator: CK_GENERATOR_FUNCTION,
    tag: &[u8],
    aad: &[u8],
    input: &[u8],
) -> Result<Sealed, CK_RV> {
    let (mut iv, mut tag) = (iv.to_vec(), tag.to_vec());
    let mut params = CK_GCM_MESSAGE_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: iv.len() as CK_ULONG,
        ulIvFixedBits: fixed_bits,
        ivGenerator: generator,
        pTag: tag.as_mut_ptr(),
        ulTagBits: 8 * tag.len() as CK_ULONG,
    };
    let f = if enc {
        t.r.f.C_EncryptMessage.unwrap()
    } else {
        t.r.f.C_DecryptMessage.unwrap()
    };
    let mut out = vec![0u8; input.len() + 1];
    let mut len: CK_ULONG = 0;
    let pp = &mut params as *mut _ as *mut c_void;
    let size = size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;
    let (a, al) = (aad.as_ptr() as *mut u8, aad.len() as CK_ULONG);
    let (i, il) = (input.as_ptr() as *mut u8, input.len() as CK_ULONG);
    // SAFETY: valid buffers for the calls.
    let rv = unsafe { f(t.h, pp, size, a, al, i, il, ptr::null_mut(), &mut len) };
    if rv != CKR_OK {
        return Err(rv);
    }
    assert_eq!(len as usize, input.len());
    len = out.len() as CK_ULONG;
    // SAFETY: as above.
    let rv = unsafe { f(t.h, pp, size, a, al, i, il, out.as_mut_ptr(), &mut len) };
    if rv != CKR_OK {
        return Err(rv);
    }
    out.truncate(len as usize);
    Ok((out, iv, tag))
}

/// The PKCS#11 3.0 message API for AES-GCM: generated IVs (counter and
/// random) written back and distinct per message, round trips, the tag in
/// `pTag`, a tampered tag refused, each message audited.
#[test]
fn gcm_messages_with_generated_ivs() {
    let _turn = turn();
    let t = open(true);
    let asset = t.asset("messages");
    let value: Vec<u8> = (0..32u8).collect();
    let session_key = t.session_key(&value, true, true);
    for key in [asset, session_key] {
        let mut m = mech(CKM_AES_GCM, &[]);
        assert_eq!(call!(t.r, C_MessageEncryptInit(t.h, &mut m, key)), CKR_OK);
        let mut sent = Vec::new();
        let fixed = [0xf1, 0xf2, 0xf3, 0xf4];
        for (n, generator) in [
            CKG_GENERATE_COUNTER,
            CKG_GENERATE,
            CKG_GENERATE_RANDOM,
            CKG_GENERATE_COUNTER,
        ]
        .into_iter()
        .enumerate()
        {
            let mut iv = [0u8; 12];
            iv[..4].copy_from_slice(&fixed);
            let plain = format!("message {n}").into_bytes();
            let (ct, iv, tag) =
                message(&t, true, &iv, 32, generator, &[0; 16], b"aad", &plain).unwrap();
            assert_eq!(&iv[..4], &fixed, "the fixed field is kept");
            assert_ne!(tag, [0; 16]);
            sent.push((iv, tag, ct, plain));
        }
        // Counter IVs of one operation follow each other.
        let counter = |iv: &[u8]| u64::from_be_bytes(iv[4..].try_into().unwrap());
        assert_eq!(counter(&sent[1].0), counter(&sent[0].0).wrapping_add(1));
        let ivs: std::collections::HashSet<_> = sent.iter().map(|s| s.0.clone()).collect();
        assert_eq!(ivs.len(), sent.len(), "distinct IVs");
        // A caller's IV (CKG_NO_GENERATE) is taken as given; twice is refused.
        let own = [0x77u8; 12];
        message(&t, true, &own, 0, CKG_NO_GENERATE, &[0; 16], b"", b"x").unwrap();
        assert_eq!(
            message(&t, true, &own, 0, CKG_NO_GENERATE, &[0; 16], b"", b"x").err(),
            Some(CKR_MECHANISM_PARAM_INVALID)
        );
        assert_eq!(call!(t.r, C_MessageEncryptFinal(t.h)), CKR_OK);
        assert_eq!(
            call!(t.r, C_MessageEncryptFinal(t.h)),
            CKR_OPERATION_NOT_INITIALIZED
        );

        assert_eq!(call!(t.r, C_MessageDecryptInit(t.h, &mut m, key)), CKR_OK);
        for (iv, tag, ct, plain) in &sent {
            let (back, _, _) = message(&t, false, iv, 0, CKG_NO_GENERATE, tag, b"aad", ct).unwrap();
            assert_eq!(&back, plain);
            let mut bad = tag.clone();
            bad[0] ^= 1;
            assert_eq!(
                message(&t, false, iv, 0, CKG_NO_GENERATE, &bad, b"aad", ct).err(),
                Some(CKR_ENCRYPTED_DATA_INVALID)
            );
        }
        // The operation goes on after a refused message.
        let (iv, tag, ct, plain) = &sent[0];
        assert_eq!(
            &message(&t, false, iv, 0, CKG_NO_GENERATE, tag, b"aad", ct)
                .unwrap()
                .0,
            plain
        );
        assert_eq!(call!(t.r, C_MessageDecryptFinal(t.h)), CKR_OK);
        // The messages are C_Encrypt-compatible: C_Decrypt opens ct ‖ tag.
        let gcm = CK_GCM_PARAMS {
            pIv: iv.as_ptr() as *mut u8,
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: b"aad".as_ptr() as *mut u8,
            ulAADLen: 3,
            ulTagBits: 128,
        };
        let p = &gcm as *const CK_GCM_PARAMS as *const u8;
        // SAFETY: the structure's bytes, for the mechanism parameter.
        let pb = unsafe { std::slice::from_raw_parts(p, size_of::<CK_GCM_PARAMS>()) };
        let whole = [&ct[..], &tag[..]].concat();
        assert_eq!(
            &t.crypt(CKM_AES_GCM, pb, key, &whole, false).unwrap(),
            plain
        );
    }
    // Bad parameters: a generated IV of another length, odd fixed bits.
    let mut m = mech(CKM_AES_GCM, &[]);
    assert_eq!(call!(t.r, C_MessageEncryptInit(t.h, &mut m, asset)), CKR_OK);
    for (iv, fixed) in [(vec![0u8; 16], 0), (vec![0u8; 12], 12), (vec![0u8; 12], 72)] {
        assert_eq!(
            message(
                &t,
                true,
                &iv,
                fixed,
                CKG_GENERATE_COUNTER,
                &[0; 16],
                b"",
                b"x"
            )
            .err(),
            Some(CKR_MECHANISM_PARAM_INVALID)
        );
    }
    assert_eq!(call!(t.r, C_MessageEncryptFinal(t.h)), CKR_OK);
    // Every message was audited with its IV: five per key, two keys.
    let recs = t.s.audit_records(&[]);
    let sealed = recs
        .iter()
        .filter(|r| {
            r["event"] == "encrypt" && r["detail"].as_str().is_some_and(|d| d.contains("iv="))
        })
        .count();
    assert!(sealed >= 10, "{sealed}");
    let mut info = CK_MECHANISM_INFO::default();
    assert_eq!(
        call!(t.r, C_GetMechanismInfo(1, CKM_AES_GCM, &mut info)),
        CKR_OK
    );
    assert_eq!(
        info.flags & (CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT),
        CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT
    );
}
