//! `CKA_CHECK_VALUE` of secret keys (PKCS#11 3.0 §4.10): what identifies a key without revealing it.

#![forbid(unsafe_code)]

use aes::cipher::consts::U16;
use aes::cipher::{BlockCipherEncrypt, BlockSizeUser, KeyInit};

use crate::ck::*;
use crate::error::{Error, Result};

/// `CKA_CHECK_VALUE` of an AES key: the first 3 bytes of AES-ECB(key, 0^128).
pub fn aes_check_value(key: &[u8]) -> Result<[u8; 3]> {
    crate::secure::confined(|| {
        fn first3<A: KeyInit + BlockCipherEncrypt + BlockSizeUser<BlockSize = U16>>(
            key: &[u8],
        ) -> Result<[u8; 3]> {
            let mut b = aes::Block::default();
            A::new_from_slice(key)
                .map_err(|_| Error::rv(CKR_KEY_SIZE_RANGE))?
                .encrypt_block(&mut b);
            Ok([b[0], b[1], b[2]])
        }
        match key.len() {
            16 => first3::<aes::Aes128>(key),
            24 => first3::<aes::Aes192>(key),
            32 => first3::<aes::Aes256>(key),
            _ => Err(Error::rv(CKR_KEY_SIZE_RANGE)),
        }
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

    #[test]
    fn check_values_follow_the_standard() {
        // AES: E(K, 0^128) of the all-zero 256-bit key begins dc95c0.
        assert_eq!(aes_check_value(&[0; 32]).unwrap(), [0xdc, 0x95, 0xc0]);
        // AES-128 of the zero key: 66e94b (FIPS-197 style known answer).
        assert_eq!(aes_check_value(&[0; 16]).unwrap(), [0x66, 0xe9, 0x4b]);
        assert_eq!(
            aes_check_value(&[0; 20]).unwrap_err().rv,
            CKR_KEY_SIZE_RANGE
        );
        // Generic secret: SHA-1("abc") begins a9993e.
        assert_eq!(generic_check_value(b"abc"), [0xa9, 0x99, 0x3e]);
    }
}
