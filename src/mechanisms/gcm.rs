//! AES-GCM (NIST SP 800-38D): `aes-gcm` for 96-bit IVs, its own primitives (`ctr`, `ghash`) for other IV lengths, and the standard's length limits.
//!
//! A 12-byte IV (what SP 800-38D recommends and nearly every client sends)
//! goes through the `aes-gcm` crate, with any tag length PKCS#11 allows
//! (4, 8, 12 to 16 bytes). PKCS#11 and real clients (OpenSSL's
//! `EVP_CTRL_GCM_SET_IVLEN`, Java's `GCMParameterSpec`) also allow other IV
//! lengths, which `aes-gcm` supports only as a compile-time size: for those,
//! SP 800-38D §7.1 is composed here from the same primitives `aes-gcm` uses —
//! GHASH (`ghash`) for J0 and the tag, counter mode with a 32-bit counter
//! (`ctr::Ctr32BE`) for the keystream. A unit test checks the two agree.
//!
//! Limits (SP 800-38D §5.2.1.1), checked before anything is computed:
//! plaintext and ciphertext at most 2^36 − 32 bytes, so the 32-bit block
//! counter never wraps onto J0 (whose keystream block masks the tag); AAD
//! and IV at most 2^61 − 1 bytes.

#![forbid(unsafe_code)]

use aes::cipher::{BlockCipherEncrypt, BlockSizeUser, KeyInit, KeyIvInit, StreamCipher};
use aes::{Aes128, Aes192, Aes256};
use aes_gcm::aead::consts::{U12, U13, U14, U15, U16, U4, U8};
use aes_gcm::aead::AeadInOut;
use aes_gcm::AesGcm;
use ghash::universal_hash::UniversalHash;
use ghash::GHash;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::ck::*;
use crate::error::{Error, Result};

/// The longest plaintext (or ciphertext, without its tag) one GCM
/// invocation may process: 2^32 − 2 blocks (SP 800-38D: len(P) ≤ 2^39 − 256
/// bits).
pub const MAX_DATA: u64 = (1 << 36) - 32;
/// The longest AAD or IV: 2^61 − 1 bytes (len(A), len(IV) ≤ 2^64 − 1 bits).
pub const MAX_AAD_OR_IV: u64 = (1 << 61) - 1;

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
    /// 800-38D §5.2.1.2) in whole bytes, IV and AAD within the standard's
    /// limits.
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
        for (what, len) in [("IV", iv.len()), ("AAD", aad.len())] {
            if len as u64 > MAX_AAD_OR_IV {
                return Err(bad(format!(
                    "CKM_AES_GCM: the {what} has {len} bytes; SP 800-38D allows at most \
                     {MAX_AAD_OR_IV}"
                )));
            }
        }
        Ok(GcmParams {
            iv,
            aad,
            tag_len: tag_bits as usize / 8,
        })
    }
}

/// Refuses data one GCM invocation may not process (its counter would wrap):
/// `CKR_DATA_LEN_RANGE` to encrypt, `CKR_ENCRYPTED_DATA_LEN_RANGE` to decrypt.
pub fn check_data_len(len: usize, encrypting: bool) -> Result<()> {
    if len as u64 <= MAX_DATA {
        return Ok(());
    }
    let rv = if encrypting {
        CKR_DATA_LEN_RANGE
    } else {
        CKR_ENCRYPTED_DATA_LEN_RANGE
    };
    Err(Error::with(
        rv,
        format!(
            "CKM_AES_GCM: {len} bytes of data; one operation takes at most {MAX_DATA} (SP 800-38D), \
             split it under several IVs"
        ),
    ))
}

fn key_size() -> Error {
    Error::rv(CKR_KEY_SIZE_RANGE)
}

/// The 96-bit path was taken with another IV length: a bug, not the caller's.
fn iv_not_96() -> Error {
    Error::with(
        CKR_GENERAL_ERROR,
        "CKM_AES_GCM: the 96-bit path got another IV length",
    )
}

/// AES-GCM encryption: ciphertext ‖ tag.
pub fn gcm_seal(key: &[u8], p: &GcmParams, plaintext: &[u8]) -> Result<Vec<u8>> {
    check_data_len(plaintext.len(), true)?;
    crate::secure::confined(|| {
        let mut out = Vec::with_capacity(plaintext.len() + p.tag_len);
        out.extend_from_slice(plaintext);
        let tag = if p.iv.len() == 12 {
            seal_96(key, p, &mut out)?
        } else {
            composed(key, p, &mut out, true)?[..p.tag_len].to_vec()
        };
        out.extend_from_slice(&tag);
        Ok(out)
    })
}

/// AES-GCM decryption of ciphertext ‖ tag; `CKR_ENCRYPTED_DATA_INVALID` when
/// the tag does not match (nothing is released), `CKR_ENCRYPTED_DATA_LEN_RANGE`
/// when the input is shorter than a tag or longer than GCM allows.
pub fn gcm_open(key: &[u8], p: &GcmParams, input: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if input.len() < p.tag_len {
        return Err(Error::rv(CKR_ENCRYPTED_DATA_LEN_RANGE));
    }
    let (ct, tag) = input.split_at(input.len() - p.tag_len);
    check_data_len(ct.len(), false)?;
    crate::secure::confined(|| {
        let mut out = Zeroizing::new(ct.to_vec());
        if p.iv.len() == 12 {
            open_96(key, p, &mut out, tag)?;
        } else {
            let want = composed(key, p, &mut out, false)?;
            if !bool::from(want[..p.tag_len].ct_eq(tag)) {
                // `out` (Zeroizing) is wiped as it is dropped.
                return Err(Error::rv(CKR_ENCRYPTED_DATA_INVALID));
            }
        }
        Ok(out)
    })
}

/// Calls `$f::<AesGcm<Aes, U12, Tag>>` for the key's AES and the tag length.
macro_rules! by_key_and_tag {
    ($f:ident, $key:expr, $tag_len:expr, ($($arg:expr),*)) => {{
        macro_rules! tags {
            ($aes:ty) => {
                match $tag_len {
                    4 => $f::<AesGcm<$aes, U12, U4>>($($arg),*),
                    8 => $f::<AesGcm<$aes, U12, U8>>($($arg),*),
                    12 => $f::<AesGcm<$aes, U12, U12>>($($arg),*),
                    13 => $f::<AesGcm<$aes, U12, U13>>($($arg),*),
                    14 => $f::<AesGcm<$aes, U12, U14>>($($arg),*),
                    15 => $f::<AesGcm<$aes, U12, U15>>($($arg),*),
                    16 => $f::<AesGcm<$aes, U12, U16>>($($arg),*),
                    _ => Err(Error::rv(CKR_MECHANISM_PARAM_INVALID)),
                }
            };
        }
        match $key.len() {
            16 => tags!(Aes128),
            24 => tags!(Aes192),
            32 => tags!(Aes256),
            _ => Err(key_size()),
        }
    }};
}

/// The `aes-gcm` crate for a 96-bit IV: encrypts `data` in place and
/// returns the tag.
fn seal_96(key: &[u8], p: &GcmParams, data: &mut [u8]) -> Result<Vec<u8>> {
    fn run<C: KeyInit + AeadInOut<NonceSize = U12>>(
        key: &[u8],
        p: &GcmParams,
        data: &mut [u8],
    ) -> Result<Vec<u8>> {
        let cipher = C::new_from_slice(key).map_err(|_| key_size())?;
        let nonce = <&aes_gcm::Nonce<U12>>::try_from(&p.iv[..]).map_err(|_| iv_not_96())?;
        let tag = cipher
            .encrypt_inout_detached(nonce, &p.aad, data.into())
            .map_err(|_| Error::rv(CKR_DATA_LEN_RANGE))?;
        Ok(tag.to_vec())
    }
    by_key_and_tag!(run, key, p.tag_len, (key, p, data))
}

/// The `aes-gcm` crate for a 96-bit IV: checks the tag and decrypts `data`
/// in place (left unchanged when the tag does not match).
fn open_96(key: &[u8], p: &GcmParams, data: &mut [u8], tag: &[u8]) -> Result<()> {
    fn run<C: KeyInit + AeadInOut<NonceSize = U12>>(
        key: &[u8],
        p: &GcmParams,
        data: &mut [u8],
        tag: &[u8],
    ) -> Result<()> {
        let cipher = C::new_from_slice(key).map_err(|_| key_size())?;
        let nonce = <&aes_gcm::Nonce<U12>>::try_from(&p.iv[..]).map_err(|_| iv_not_96())?;
        let tag = <&aes_gcm::aead::Tag<C>>::try_from(tag)
            .map_err(|_| Error::rv(CKR_ENCRYPTED_DATA_LEN_RANGE))?;
        cipher
            .decrypt_inout_detached(nonce, &p.aad, data.into(), tag)
            .map_err(|_| Error::rv(CKR_ENCRYPTED_DATA_INVALID))
    }
    by_key_and_tag!(run, key, p.tag_len, (key, p, data, tag))
}

/// SP 800-38D §7.1/§7.2 for any IV length, from `ctr` and `ghash`: applies
/// the keystream from inc32(J0) to `data` in place and returns the full
/// 16-byte tag over the AAD and the ciphertext (after encryption when
/// `encrypting`, before decryption otherwise).
fn composed(key: &[u8], p: &GcmParams, data: &mut [u8], encrypting: bool) -> Result<[u8; 16]> {
    fn run<A: KeyInit + BlockCipherEncrypt + BlockSizeUser<BlockSize = U16>>(
        key: &[u8],
        p: &GcmParams,
        data: &mut [u8],
        encrypting: bool,
    ) -> Result<[u8; 16]>
    where
        ctr::Ctr32BE<A>: KeyIvInit + StreamCipher,
    {
        let mut h = ghash::Key::default();
        A::new_from_slice(key)
            .map_err(|_| key_size())?
            .encrypt_block(&mut h);
        let j0 = if p.iv.len() == 12 {
            let mut j = ghash::Block::default();
            j[..12].copy_from_slice(&p.iv);
            j[15] = 1;
            j
        } else {
            let mut g = GHash::new(&h);
            g.update_padded(&p.iv);
            g.update(&[lengths(0, p.iv.len())]);
            g.finalize()
        };
        let mut auth = GHash::new(&h);
        h.zeroize();
        auth.update_padded(&p.aad);
        if !encrypting {
            auth.update_padded(data);
        }
        let mut stream = ctr::Ctr32BE::<A>::new_from_slices(key, &j0).map_err(|_| key_size())?;
        // The first keystream block, E(K, J0), masks the tag; the data's
        // keystream starts at inc32(J0).
        let mut tag = [0u8; 16];
        stream.apply_keystream(&mut tag);
        stream.apply_keystream(data);
        if encrypting {
            auth.update_padded(data);
        }
        auth.update(&[lengths(p.aad.len(), data.len())]);
        for (t, s) in tag.iter_mut().zip(auth.finalize().iter()) {
            *t ^= s;
        }
        Ok(tag)
    }
    match key.len() {
        16 => run::<Aes128>(key, p, data, encrypting),
        24 => run::<Aes192>(key, p, data, encrypting),
        32 => run::<Aes256>(key, p, data, encrypting),
        _ => Err(key_size()),
    }
}

/// `[len(A)]64 || [len(C)]64`, in bits.
fn lengths(a_bytes: usize, c_bytes: usize) -> ghash::Block {
    let mut b = ghash::Block::default();
    b[..8].copy_from_slice(&(a_bytes as u64 * 8).to_be_bytes());
    b[8..].copy_from_slice(&(c_bytes as u64 * 8).to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mechanisms::unhex;

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

    /// The composed path (any IV length) and the `aes-gcm` crate (96-bit IVs)
    /// give the same ciphertext and tag wherever both apply: every key size,
    /// every tag length, lengths around the block size.
    #[test]
    fn the_composed_path_agrees_with_aes_gcm() {
        for key_len in [16usize, 24, 32] {
            let key: Vec<u8> = (0..key_len as u8).map(|b| b.wrapping_mul(37)).collect();
            for tag_bits in [32, 64, 96, 104, 112, 120, 128] {
                for len in [0usize, 1, 15, 16, 17, 64, 100] {
                    let iv: Vec<u8> = (0..12u8).map(|b| b ^ len as u8).collect();
                    let aad = vec![0x5a; len % 21];
                    let p = GcmParams::new(iv, Some(96), aad, tag_bits).unwrap();
                    let plain: Vec<u8> = (0..len).map(|b| (b * 7) as u8).collect();
                    let by_crate = gcm_seal(&key, &p, &plain).unwrap();
                    let mut data = plain.clone();
                    let tag = composed(&key, &p, &mut data, true).unwrap();
                    data.extend_from_slice(&tag[..p.tag_len]);
                    assert_eq!(by_crate, data, "key {key_len}, tag {tag_bits}, len {len}");
                    let mut back = by_crate[..len].to_vec();
                    let tag = composed(&key, &p, &mut back, false).unwrap();
                    assert_eq!((&back, &tag[..p.tag_len]), (&plain, &by_crate[len..]));
                }
            }
        }
    }

    #[test]
    fn a_changed_byte_or_tag_is_refused_and_bad_parameters_named() {
        let key = [7u8; 32];
        for iv_len in [12usize, 16] {
            let p = GcmParams::new(vec![1; iv_len], None, b"aad".to_vec(), 128).unwrap();
            let sealed = gcm_seal(&key, &p, b"seal me").unwrap();
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 1;
                assert_eq!(
                    gcm_open(&key, &p, &bad).unwrap_err().rv,
                    CKR_ENCRYPTED_DATA_INVALID
                );
            }
            let other_aad = GcmParams::new(vec![1; iv_len], Some(0), b"aae".to_vec(), 128).unwrap();
            assert!(gcm_open(&key, &other_aad, &sealed).is_err());
            assert_eq!(
                gcm_open(&key, &p, &sealed[..15]).unwrap_err().rv,
                CKR_ENCRYPTED_DATA_LEN_RANGE
            );
        }
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
        for iv_len in [12, 13] {
            let p = GcmParams::new(vec![1; iv_len], None, vec![], 128).unwrap();
            assert_eq!(
                gcm_seal(&[0; 20], &p, b"x").unwrap_err().rv,
                CKR_KEY_SIZE_RANGE
            );
        }
    }

    /// The 32-bit counter must never wrap onto J0: one invocation takes at
    /// most 2^32 − 2 blocks, the same bound `aes-gcm` enforces.
    #[test]
    fn data_beyond_the_counter_range_is_refused() {
        assert_eq!(MAX_DATA, aes_gcm::P_MAX);
        assert_eq!(MAX_DATA, ((1u64 << 32) - 2) * 16);
        assert_eq!(MAX_AAD_OR_IV, aes_gcm::A_MAX);
        check_data_len(MAX_DATA as usize, true).unwrap();
        check_data_len(MAX_DATA as usize, false).unwrap();
        let e = check_data_len(MAX_DATA as usize + 1, true).unwrap_err();
        assert_eq!(e.rv, CKR_DATA_LEN_RANGE);
        assert!(e.message.unwrap().contains("SP 800-38D"));
        let e = check_data_len(MAX_DATA as usize + 1, false).unwrap_err();
        assert_eq!(e.rv, CKR_ENCRYPTED_DATA_LEN_RANGE);
    }
}
