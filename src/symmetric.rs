//! Secret-key mechanisms: AES-GCM (NIST SP 800-38D, any IV length, tags of
//! 4 to 16 bytes), HMAC-SHA-256/384/512 (RFC 2104), AES key wrap (RFC 3394)
//! and key wrap with padding (RFC 5649). Keys are borrowed from the locked
//! arena; the AES key schedules and MAC states built here live on the stack
//! and are wiped on drop (the `zeroize` features of aes, ghash, hmac, sha2).

#![forbid(unsafe_code)]

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit as _};
use aes::{Aes128, Aes192, Aes256, Block};
use ghash::universal_hash::UniversalHash;
use ghash::GHash;
use hmac::{Hmac, KeyInit, Mac};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::ck::*;
use crate::error::{Error, Result};
use crate::secure::SecretBytes;

/// AES with a key of 16, 24 or 32 bytes.
enum Aes {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

impl Aes {
    fn new(key: &[u8]) -> Result<Aes> {
        let bad = |_| Error::rv(CKR_KEY_SIZE_RANGE);
        Ok(match key.len() {
            16 => Aes::A128(Aes128::new_from_slice(key).map_err(bad)?),
            24 => Aes::A192(Aes192::new_from_slice(key).map_err(bad)?),
            32 => Aes::A256(Aes256::new_from_slice(key).map_err(bad)?),
            _ => return Err(Error::rv(CKR_KEY_SIZE_RANGE)),
        })
    }

    fn encrypt(&self, block: &mut Block) {
        match self {
            Aes::A128(c) => c.encrypt_block(block),
            Aes::A192(c) => c.encrypt_block(block),
            Aes::A256(c) => c.encrypt_block(block),
        }
    }

    fn decrypt(&self, block: &mut Block) {
        match self {
            Aes::A128(c) => c.decrypt_block(block),
            Aes::A192(c) => c.decrypt_block(block),
            Aes::A256(c) => c.decrypt_block(block),
        }
    }
}

/// The RFC 3394 initial value.
const KW_IV: [u8; 8] = [0xa6; 8];
/// The RFC 5649 alternative initial value's constant half.
const KWP_AIV: [u8; 4] = [0xa6, 0x59, 0x59, 0xa6];

fn arena(len: usize) -> Result<SecretBytes> {
    let mut b = SecretBytes::with_capacity(len).map_err(|m| Error::with(CKR_HOST_MEMORY, m))?;
    b.grow(len);
    Ok(b)
}

/// The RFC 3394 wrapping process W over `r` (n ≥ 2 blocks of 8 bytes) with
/// initial value `a`; `a` ends as the first output block.
fn kw_forward(aes: &Aes, a: &mut [u8; 8], r: &mut [u8]) {
    let n = r.len() / 8;
    let mut b = Block::default();
    for j in 0..6u64 {
        for i in 0..n {
            b[..8].copy_from_slice(a);
            b[8..].copy_from_slice(&r[8 * i..8 * i + 8]);
            aes.encrypt(&mut b);
            let t = (n as u64) * j + i as u64 + 1;
            for (k, x) in t.to_be_bytes().iter().enumerate() {
                a[k] = b[k] ^ x;
            }
            r[8 * i..8 * i + 8].copy_from_slice(&b[8..]);
        }
    }
    b.zeroize();
}

/// The inverse W⁻¹: from `a` (the first wrapped block) and `r`, recovers the
/// initial value into `a` and the plaintext into `r`.
fn kw_backward(aes: &Aes, a: &mut [u8; 8], r: &mut [u8]) {
    let n = r.len() / 8;
    let mut b = Block::default();
    for j in (0..6u64).rev() {
        for i in (0..n).rev() {
            let t = (n as u64) * j + i as u64 + 1;
            for (k, x) in t.to_be_bytes().iter().enumerate() {
                b[k] = a[k] ^ x;
            }
            b[8..].copy_from_slice(&r[8 * i..8 * i + 8]);
            aes.decrypt(&mut b);
            a.copy_from_slice(&b[..8]);
            r[8 * i..8 * i + 8].copy_from_slice(&b[8..]);
        }
    }
    b.zeroize();
}

/// Wraps key material: `CKM_AES_KEY_WRAP` (RFC 3394: a multiple of 8 bytes,
/// at least 16) or, `padded`, `CKM_AES_KEY_WRAP_KWP` (RFC 5649: 1 byte or
/// more). The plaintext is worked on in the locked arena.
pub fn key_wrap(kek: &[u8], key: &[u8], padded: bool) -> Result<Vec<u8>> {
    crate::secure::confined(|| {
        let aes = Aes::new(kek)?;
        if !padded && (key.len() % 8 != 0 || key.len() < 16) {
            return Err(Error::with(
                CKR_KEY_SIZE_RANGE,
                format!(
                    "CKM_AES_KEY_WRAP wraps keys of a multiple of 8 bytes, at least 16 (this one has \
                     {}); use CKM_AES_KEY_WRAP_KWP",
                    key.len()
                ),
            ));
        }
        if key.is_empty() || key.len() > u32::MAX as usize {
            return Err(Error::rv(CKR_KEY_SIZE_RANGE));
        }
        let mut a = KW_IV;
        if padded {
            a[..4].copy_from_slice(&KWP_AIV);
            a[4..].copy_from_slice(&(key.len() as u32).to_be_bytes());
        }
        let mut r = arena(key.len().div_ceil(8) * 8)?;
        r[..key.len()].copy_from_slice(key);
        let mut out = Vec::with_capacity(8 + r.len());
        if r.len() == 8 {
            // RFC 5649 §4.1: a single block is encrypted directly.
            let mut b = Block::default();
            b[..8].copy_from_slice(&a);
            b[8..].copy_from_slice(&r);
            aes.encrypt(&mut b);
            out.extend_from_slice(&b);
            return Ok(out);
        }
        kw_forward(&aes, &mut a, &mut r);
        out.extend_from_slice(&a);
        out.extend_from_slice(&r);
        Ok(out)
    })
}

/// Unwraps into the locked arena; `CKR_WRAPPED_KEY_INVALID` when the
/// integrity check fails (nothing is released), `CKR_WRAPPED_KEY_LEN_RANGE`
/// for a length no wrapping produces.
pub fn key_unwrap(kek: &[u8], wrapped: &[u8], padded: bool) -> Result<SecretBytes> {
    crate::secure::confined(|| {
        let aes = Aes::new(kek)?;
        let min = if padded { 16 } else { 24 };
        if wrapped.len() % 8 != 0 || wrapped.len() < min {
            return Err(Error::rv(CKR_WRAPPED_KEY_LEN_RANGE));
        }
        let mut a = [0u8; 8];
        let mut r = arena(wrapped.len() - 8)?;
        if wrapped.len() == 16 {
            let mut b = Block::default();
            b.copy_from_slice(wrapped);
            aes.decrypt(&mut b);
            a.copy_from_slice(&b[..8]);
            r.copy_from_slice(&b[8..]);
            b.zeroize();
        } else {
            a.copy_from_slice(&wrapped[..8]);
            r.copy_from_slice(&wrapped[8..]);
            kw_backward(&aes, &mut a, &mut r);
        }
        let len = if padded {
            let mli = u32::from_be_bytes([a[4], a[5], a[6], a[7]]) as usize;
            let ok = a[..4] == KWP_AIV
                && mli <= r.len()
                && mli + 8 > r.len()
                && r[mli..].iter().all(|&b| b == 0);
            if !ok {
                return Err(Error::rv(CKR_WRAPPED_KEY_INVALID));
            }
            mli
        } else {
            if !bool::from(a.ct_eq(&KW_IV)) {
                return Err(Error::rv(CKR_WRAPPED_KEY_INVALID));
            }
            r.len()
        };
        r.truncate(len);
        Ok(r)
    })
}

/// The parameters of one `CKM_AES_GCM` operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcmParams {
    pub iv: Vec<u8>,
    pub aad: Vec<u8>,
    /// Tag length in bytes.
    pub tag_len: usize,
}

impl GcmParams {
    /// Checks a caller's `CK_GCM_PARAMS`: an IV of at least one byte,
    /// `ulIvBits` 0 or 8 × `ulIvLen`, a tag of 32, 64 or 96..=128 bits (SP
    /// 800-38D §5.2.1.2) in whole bytes.
    pub fn new(
        iv: Vec<u8>,
        iv_bits: Option<CK_ULONG>,
        aad: Vec<u8>,
        tag_bits: CK_ULONG,
    ) -> Result<Self> {
        let bad = |why: String| Error::with(CKR_MECHANISM_PARAM_INVALID, why);
        if iv.is_empty() {
            return Err(bad("CKM_AES_GCM: the IV is empty (ulIvLen 0)".into()));
        }
        if let Some(bits) = iv_bits {
            if bits != 0 && bits as usize != 8 * iv.len() {
                return Err(bad(format!(
                    "CKM_AES_GCM: ulIvBits {bits} does not match ulIvLen {} (give 0 or {})",
                    iv.len(),
                    8 * iv.len()
                )));
            }
        }
        if !matches!(tag_bits, 32 | 64 | 96 | 104 | 112 | 120 | 128) {
            return Err(bad(format!(
                "CKM_AES_GCM: ulTagBits {tag_bits} is not a GCM tag length (32, 64, 96, 104, 112, \
                 120 or 128)"
            )));
        }
        Ok(GcmParams {
            iv,
            aad,
            tag_len: tag_bits as usize / 8,
        })
    }
}

fn block_of(bytes: &[u8]) -> Block {
    let mut b = Block::default();
    b[..bytes.len()].copy_from_slice(bytes);
    b
}

fn lengths_block(a_bytes: usize, c_bytes: usize) -> ghash::Block {
    let mut b = ghash::Block::default();
    b[..8].copy_from_slice(&(a_bytes as u64 * 8).to_be_bytes());
    b[8..].copy_from_slice(&(c_bytes as u64 * 8).to_be_bytes());
    b
}

/// The GCM core: counter-mode `data` in place from inc32(J0), and the full
/// 16-byte tag over `aad` and the ciphertext (after encryption when
/// `encrypting`, before decryption otherwise).
fn gcm(key: &[u8], p: &GcmParams, data: &mut [u8], encrypting: bool) -> Result<[u8; 16]> {
    crate::secure::confined(|| {
        let aes = Aes::new(key)?;
        let mut h = Block::default();
        aes.encrypt(&mut h);
        let hash_key = ghash::Key::from_slice(&h);
        let mut j0 = if p.iv.len() == 12 {
            let mut j = block_of(&p.iv);
            j[15] = 1;
            j
        } else {
            let mut g = GHash::new(hash_key);
            g.update_padded(&p.iv);
            g.update(&[lengths_block(0, p.iv.len())]);
            let out = g.finalize();
            block_of(&out)
        };
        let mut auth = GHash::new(hash_key);
        h.zeroize();
        auth.update_padded(&p.aad);
        if !encrypting {
            auth.update_padded(data);
        }
        let mut counter = u32::from_be_bytes([j0[12], j0[13], j0[14], j0[15]]);
        for chunk in data.chunks_mut(16) {
            counter = counter.wrapping_add(1);
            let mut ks = j0;
            ks[12..].copy_from_slice(&counter.to_be_bytes());
            aes.encrypt(&mut ks);
            for (d, k) in chunk.iter_mut().zip(ks.iter()) {
                *d ^= k;
            }
            ks.zeroize();
        }
        if encrypting {
            auth.update_padded(data);
        }
        auth.update(&[lengths_block(p.aad.len(), data.len())]);
        let s = auth.finalize();
        aes.encrypt(&mut j0);
        let mut tag = [0u8; 16];
        for (t, (a, b)) in tag.iter_mut().zip(j0.iter().zip(s.iter())) {
            *t = a ^ b;
        }
        Ok(tag)
    })
}

/// AES-GCM encryption: ciphertext ‖ tag.
pub fn gcm_seal(key: &[u8], p: &GcmParams, plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(plaintext.len() + p.tag_len);
    out.extend_from_slice(plaintext);
    let tag = gcm(key, p, &mut out, true)?;
    out.extend_from_slice(&tag[..p.tag_len]);
    Ok(out)
}

/// AES-GCM decryption of ciphertext ‖ tag; `CKR_ENCRYPTED_DATA_INVALID` when
/// the tag does not match (nothing is released), `CKR_ENCRYPTED_DATA_LEN_RANGE`
/// when the input is shorter than a tag.
pub fn gcm_open(key: &[u8], p: &GcmParams, input: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if input.len() < p.tag_len {
        return Err(Error::rv(CKR_ENCRYPTED_DATA_LEN_RANGE));
    }
    let (ct, tag) = input.split_at(input.len() - p.tag_len);
    let mut out = Zeroizing::new(ct.to_vec());
    let want = gcm(key, p, &mut out, false)?;
    if !bool::from(want[..p.tag_len].ct_eq(tag)) {
        return Err(Error::rv(CKR_ENCRYPTED_DATA_INVALID));
    }
    Ok(out)
}

/// The output length of an HMAC mechanism, `None` for other mechanisms.
pub fn hmac_len(mech: CK_MECHANISM_TYPE) -> Option<usize> {
    match mech {
        CKM_SHA256_HMAC => Some(32),
        CKM_SHA384_HMAC => Some(48),
        CKM_SHA512_HMAC => Some(64),
        _ => None,
    }
}

/// HMAC of `data` under `key` with the mechanism's hash.
pub fn hmac(mech: CK_MECHANISM_TYPE, key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    crate::secure::confined(|| {
        fn run<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Ok(match mech {
            CKM_SHA256_HMAC => run::<Hmac<sha2::Sha256>>(key, data),
            CKM_SHA384_HMAC => run::<Hmac<sha2::Sha384>>(key, data),
            CKM_SHA512_HMAC => run::<Hmac<sha2::Sha512>>(key, data),
            _ => return Err(Error::rv(CKR_MECHANISM_INVALID)),
        })
    })
}

/// Whether `mac` is the HMAC of `data` (constant-time comparison).
pub fn hmac_verify(mech: CK_MECHANISM_TYPE, key: &[u8], data: &[u8], mac: &[u8]) -> Result<()> {
    let want = hmac(mech, key, data)?;
    if mac.len() != want.len() {
        return Err(Error::rv(CKR_SIGNATURE_LEN_RANGE));
    }
    if bool::from(want.ct_eq(mac)) {
        Ok(())
    } else {
        Err(Error::rv(CKR_SIGNATURE_INVALID))
    }
}

/// `CKA_CHECK_VALUE` of an AES key: the first 3 bytes of AES-ECB(key, 0^128).
pub fn aes_check_value(key: &[u8]) -> Result<[u8; 3]> {
    crate::secure::confined(|| {
        let mut b = Block::default();
        Aes::new(key)?.encrypt(&mut b);
        Ok([b[0], b[1], b[2]])
    })
}

/// `CKA_CHECK_VALUE` of a generic secret: the first 3 bytes of SHA-1(key).
pub fn generic_check_value(key: &[u8]) -> [u8; 3] {
    crate::secure::confined(|| {
        use sha1::Digest;
        let d = sha1::Sha1::digest(key);
        [d[0], d[1], d[2]]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The AES-256 cases of the GCM specification (McGrew and Viega, test
    /// cases 13 to 18): empty and one-block inputs, 96-bit, 64-bit and
    /// 480-bit IVs, with and without AAD.
    #[test]
    fn gcm_matches_the_specifications_aes256_test_cases() {
        let k = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
        let p64 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                   1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
        let p60 = &p64[..120];
        let aad = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
        let iv480 = "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728\
                     c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b";
        let cases: [(&str, &str, &str, &str, &str, &str); 6] = [
            (
                &"00".repeat(32),
                &"00".repeat(12),
                "",
                "",
                "",
                "530f8afbc74536b9a963b4f1c4cb738b",
            ),
            (
                &"00".repeat(32),
                &"00".repeat(12),
                "",
                &"00".repeat(16),
                "cea7403d4d606b6e074ec5d3baf39d18",
                "d0d1c8a799996bf0265b98b5d48ab919",
            ),
            (
                k,
                "cafebabefacedbaddecaf888",
                "",
                p64,
                "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                 8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
                "b094dac5d93471bdec1a502270e3cc6c",
            ),
            (
                k,
                "cafebabefacedbaddecaf888",
                aad,
                p60,
                "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                 8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
                "76fc6ece0f4e1768cddf8853bb2d551b",
            ),
            (
                k,
                "cafebabefacedbad",
                aad,
                p60,
                "c3762df1ca787d32ae47c13bf19844cbaf1ae14d0b976afac52ff7d79bba9de0\
                 feb582d33934a4f0954cc2363bc73f7862ac430e64abe499f47c9b1f",
                "3a337dbf46a792c45e454913fe2ea8f2",
            ),
            (
                k,
                iv480,
                aad,
                p60,
                "5a8def2f0c9e53f1f75d7853659e2a20eeb2b22aafde6419a058ab4f6f746bf4\
                 0fc0c3b780f244452da3ebf1c5d82cdea2418997200ef82e44ae7e3f",
                "a44a8266ee1c8eb0c8b5d4cf5ae9f19a",
            ),
        ];
        for (i, (key, iv, a, p, c, t)) in cases.iter().enumerate() {
            let params = GcmParams::new(unhex(iv), None, unhex(a), 128).unwrap();
            let sealed = gcm_seal(&unhex(key), &params, &unhex(p)).unwrap();
            let mut want = unhex(c);
            want.extend_from_slice(&unhex(t));
            assert_eq!(sealed, want, "case {}", 13 + i);
            let opened = gcm_open(&unhex(key), &params, &sealed).unwrap();
            assert_eq!(&opened[..], &unhex(p)[..], "case {}", 13 + i);
            // A shorter tag is the full tag's prefix.
            let short = GcmParams::new(unhex(iv), None, unhex(a), 96).unwrap();
            let sealed96 = gcm_seal(&unhex(key), &short, &unhex(p)).unwrap();
            assert_eq!(sealed96[..], want[..want.len() - 4]);
        }
    }

    #[test]
    fn a_changed_byte_or_tag_is_refused_and_bad_parameters_named() {
        let key = [7u8; 32];
        let p = GcmParams::new(vec![1; 12], Some(96), b"aad".to_vec(), 128).unwrap();
        let sealed = gcm_seal(&key, &p, b"seal me").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(
                gcm_open(&key, &p, &bad).unwrap_err().rv,
                CKR_ENCRYPTED_DATA_INVALID
            );
        }
        let other_aad = GcmParams::new(vec![1; 12], Some(0), b"aae".to_vec(), 128).unwrap();
        assert!(gcm_open(&key, &other_aad, &sealed).is_err());
        assert_eq!(
            gcm_open(&key, &p, &sealed[..15]).unwrap_err().rv,
            CKR_ENCRYPTED_DATA_LEN_RANGE
        );
        for (iv, bits, tag) in [
            (vec![], None, 128),
            (vec![1; 12], Some(95), 128),
            (vec![1; 12], None, 100),
            (vec![1; 12], None, 136),
        ] {
            let e = GcmParams::new(iv, bits, vec![], tag).unwrap_err();
            assert_eq!(e.rv, CKR_MECHANISM_PARAM_INVALID);
            assert!(e.message.unwrap().starts_with("CKM_AES_GCM"));
        }
        assert_eq!(Aes::new(&[0; 20]).err().unwrap().rv, CKR_KEY_SIZE_RANGE);
    }

    /// RFC 4231 test case 2 ("Jefe"), all three hashes.
    #[test]
    fn hmac_matches_rfc_4231() {
        let data = b"what do ya want for nothing?";
        let cases = [
            (
                CKM_SHA256_HMAC,
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                CKM_SHA384_HMAC,
                "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e\
                 8e2240ca5e69e2c78b3239ecfab21649",
            ),
            (
                CKM_SHA512_HMAC,
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554\
                 9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
            ),
        ];
        for (mech, want) in cases {
            let mac = hmac(mech, b"Jefe", data).unwrap();
            assert_eq!(mac, unhex(want));
            assert_eq!(hmac_len(mech), Some(mac.len()));
            hmac_verify(mech, b"Jefe", data, &mac).unwrap();
            let mut bad = mac.clone();
            bad[0] ^= 1;
            assert_eq!(
                hmac_verify(mech, b"Jefe", data, &bad).unwrap_err().rv,
                CKR_SIGNATURE_INVALID
            );
            assert_eq!(
                hmac_verify(mech, b"Jefe", data, &mac[1..]).unwrap_err().rv,
                CKR_SIGNATURE_LEN_RANGE
            );
        }
    }

    /// RFC 3394 §4.6 (256-bit key data, 256-bit KEK) and the two RFC 5649
    /// §6 examples (20 and 7 bytes under a 192-bit KEK).
    #[test]
    fn key_wrap_matches_rfc_3394_and_5649() {
        let kek: Vec<u8> = (0..32).collect();
        let data = unhex("00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f");
        let want = unhex(
            "28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326cbc7f0e71a99f43bfb988b9b7a02dd21",
        );
        assert_eq!(key_wrap(&kek, &data, false).unwrap(), want);
        assert_eq!(&key_unwrap(&kek, &want, false).unwrap()[..], &data[..]);
        let kek = unhex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
        for (data, want) in [
            (
                "c37b7e6492584340bed12207808941155068f738",
                "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
            ),
            ("466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"),
        ] {
            let (data, want) = (unhex(data), unhex(want));
            assert_eq!(key_wrap(&kek, &data, true).unwrap(), want);
            assert_eq!(&key_unwrap(&kek, &want, true).unwrap()[..], &data[..]);
            let mut bad = want.clone();
            bad[3] ^= 1;
            assert_eq!(
                key_unwrap(&kek, &bad, true).unwrap_err().rv,
                CKR_WRAPPED_KEY_INVALID
            );
        }
        let mut bad = key_wrap(&[1; 16], &[2; 24], false).unwrap();
        bad[10] ^= 1;
        assert_eq!(
            key_unwrap(&[1; 16], &bad, false).unwrap_err().rv,
            CKR_WRAPPED_KEY_INVALID
        );
        assert_eq!(
            key_wrap(&[1; 16], &[2; 20], false).unwrap_err().rv,
            CKR_KEY_SIZE_RANGE
        );
        assert_eq!(
            key_unwrap(&[1; 16], &[0; 20], false).unwrap_err().rv,
            CKR_WRAPPED_KEY_LEN_RANGE
        );
    }

    #[test]
    fn check_values_follow_the_standard() {
        // AES: E(K, 0^128) of the all-zero 256-bit key begins dc95c0.
        assert_eq!(aes_check_value(&[0; 32]).unwrap(), [0xdc, 0x95, 0xc0]);
        // Generic secret: SHA-1("abc") begins a9993e.
        assert_eq!(generic_check_value(b"abc"), [0xa9, 0x99, 0x3e]);
    }
}
