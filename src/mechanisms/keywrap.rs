//! AES key wrap (RFC 3394, `CKM_AES_KEY_WRAP`) and key wrap with padding (RFC 5649, `CKM_AES_KEY_WRAP_KWP`) over the `aes-kw` crate, the plaintext worked on in the locked arena.

#![forbid(unsafe_code)]

use aes_kw::cipher::{consts::U16, BlockCipherDecrypt, BlockCipherEncrypt};
use aes_kw::{
    AesKw, AesKwp, KeyInit, KwAes128, KwAes192, KwAes256, KwpAes128, KwpAes192, KwpAes256,
};

use crate::ck::*;
use crate::error::{Error, Result};
use crate::secure::SecretBytes;

fn arena(len: usize) -> Result<SecretBytes> {
    let mut b = SecretBytes::with_capacity(len).map_err(|m| Error::with(CKR_HOST_MEMORY, m))?;
    b.grow(len);
    Ok(b)
}

type KwResult<'a> = std::result::Result<&'a [u8], aes_kw::Error>;

/// The two `aes-kw` wrappers (KW and KWP) as one: what `with_kek` hands its
/// caller, whatever the KEK's size. `wrap`: wraps `input`, else unwraps it.
trait Wrapper {
    fn apply<'a>(&self, wrap: bool, input: &[u8], buf: &'a mut [u8]) -> KwResult<'a>;
}

/// One body for both wrapper types (their methods are inherent, not a trait's).
macro_rules! wrapper {
    ($($t:ident),*) => {$(
        impl<C: BlockCipherEncrypt<BlockSize = U16> + BlockCipherDecrypt<BlockSize = U16>> Wrapper
            for $t<C>
        {
            fn apply<'a>(&self, wrap: bool, input: &[u8], buf: &'a mut [u8]) -> KwResult<'a> {
                if wrap {
                    self.wrap_key(input, buf)
                } else {
                    self.unwrap_key(input, buf)
                }
            }
        }
    )*};
}
wrapper!(AesKw, AesKwp);

/// Runs `f` on the `aes-kw` wrapper for the KEK's size (KW or KWP), kept on
/// the caller's (confined) stack.
fn with_kek<R>(kek: &[u8], padded: bool, f: impl FnOnce(&dyn Wrapper) -> Result<R>) -> Result<R> {
    fn keyed<W: Wrapper + KeyInit, R>(
        kek: &[u8],
        f: impl FnOnce(&dyn Wrapper) -> Result<R>,
    ) -> Result<R> {
        let w = W::new_from_slice(kek).map_err(|_| bad_kek())?;
        f(&w)
    }
    match (kek.len(), padded) {
        (16, false) => keyed::<KwAes128, R>(kek, f),
        (24, false) => keyed::<KwAes192, R>(kek, f),
        (32, false) => keyed::<KwAes256, R>(kek, f),
        (16, true) => keyed::<KwpAes128, R>(kek, f),
        (24, true) => keyed::<KwpAes192, R>(kek, f),
        (32, true) => keyed::<KwpAes256, R>(kek, f),
        _ => Err(bad_kek()),
    }
}

fn bad_kek() -> Error {
    Error::rv(CKR_KEY_SIZE_RANGE)
}

/// Wraps key material: `CKM_AES_KEY_WRAP` (RFC 3394: a multiple of 8 bytes,
/// at least 16) or, `padded`, `CKM_AES_KEY_WRAP_KWP` (RFC 5649: 1 byte or
/// more). The plaintext is worked on in the locked arena.
pub fn key_wrap(kek: &[u8], key: &[u8], padded: bool) -> Result<Vec<u8>> {
    crate::secure::confined(|| {
        if !matches!(kek.len(), 16 | 24 | 32) {
            return Err(bad_kek());
        }
        if !padded && (!key.len().is_multiple_of(8) || key.len() < 16) {
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
        // The wrapping runs in place over a copy of the key: in the arena.
        let mut work = arena(key.len().div_ceil(8) * 8 + 8)?;
        let wrapped = with_kek(kek, padded, |w| {
            w.apply(true, key, &mut work)
                .map(|c| c.to_vec())
                .map_err(|_| Error::rv(CKR_KEY_SIZE_RANGE))
        })?;
        Ok(wrapped)
    })
}

/// Unwraps into the locked arena; `CKR_WRAPPED_KEY_INVALID` when the
/// integrity check fails (nothing is released), `CKR_WRAPPED_KEY_LEN_RANGE`
/// for a length no wrapping produces.
pub fn key_unwrap(kek: &[u8], wrapped: &[u8], padded: bool) -> Result<SecretBytes> {
    crate::secure::confined(|| {
        if !matches!(kek.len(), 16 | 24 | 32) {
            return Err(bad_kek());
        }
        let min = if padded { 16 } else { 24 };
        if !wrapped.len().is_multiple_of(8) || wrapped.len() < min {
            return Err(Error::rv(CKR_WRAPPED_KEY_LEN_RANGE));
        }
        let mut r = arena(wrapped.len() - 8)?;
        let len = with_kek(kek, padded, |w| {
            w.apply(false, wrapped, &mut r)
                .map(|k| k.len())
                .map_err(|e| match e {
                    aes_kw::Error::IntegrityCheckFailed => Error::rv(CKR_WRAPPED_KEY_INVALID),
                    _ => Error::rv(CKR_WRAPPED_KEY_LEN_RANGE),
                })
        })?;
        r.truncate(len);
        Ok(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mechanisms::unhex;

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
        assert_eq!(
            key_wrap(&[1; 20], &[2; 16], true).unwrap_err().rv,
            CKR_KEY_SIZE_RANGE
        );
    }

    /// Every key length KWP takes round-trips under every KEK size, and a
    /// wrapped key of one length never unwraps to another.
    #[test]
    fn every_length_round_trips() {
        for kek_len in [16usize, 24, 32] {
            let kek = vec![0x3c; kek_len];
            for len in 1..=40usize {
                let key: Vec<u8> = (0..len as u8).collect();
                let w = key_wrap(&kek, &key, true).unwrap();
                assert_eq!(w.len(), len.div_ceil(8) * 8 + 8);
                assert_eq!(&key_unwrap(&kek, &w, true).unwrap()[..], &key[..]);
                if len % 8 == 0 && len >= 16 {
                    let w = key_wrap(&kek, &key, false).unwrap();
                    assert_eq!(&key_unwrap(&kek, &w, false).unwrap()[..], &key[..]);
                }
            }
        }
    }
}
