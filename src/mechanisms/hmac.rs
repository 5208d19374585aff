//! HMAC-SHA-1/224/256/384/512 (RFC 2104) over the `hmac` crate, with constant-time verification.

#![forbid(unsafe_code)]

use hmac::{Hmac, KeyInit, Mac};
use subtle::ConstantTimeEq;

use crate::ck::*;
use crate::error::{Error, Result};
use crate::types::HmacHash;

/// The output length of an HMAC mechanism, `None` for other mechanisms.
pub fn hmac_len(mech: CK_MECHANISM_TYPE) -> Option<usize> {
    match mech {
        CKM_SHA_1_HMAC => Some(20),
        CKM_SHA224_HMAC => Some(28),
        CKM_SHA256_HMAC => Some(32),
        CKM_SHA384_HMAC => Some(48),
        CKM_SHA512_HMAC => Some(64),
        _ => None,
    }
}

/// The hash of an HMAC mechanism: a `CKK_SHAx_HMAC` key signs only with
/// its own (a generic secret with any).
pub fn hmac_hash(mech: CK_MECHANISM_TYPE) -> Option<HmacHash> {
    Some(match mech {
        CKM_SHA_1_HMAC => HmacHash::Sha1,
        CKM_SHA224_HMAC => HmacHash::Sha224,
        CKM_SHA256_HMAC => HmacHash::Sha256,
        CKM_SHA384_HMAC => HmacHash::Sha384,
        CKM_SHA512_HMAC => HmacHash::Sha512,
        _ => return None,
    })
}

/// The HMAC mechanism of a hash.
pub fn hmac_mechanism(hash: HmacHash) -> CK_MECHANISM_TYPE {
    match hash {
        HmacHash::Sha1 => CKM_SHA_1_HMAC,
        HmacHash::Sha224 => CKM_SHA224_HMAC,
        HmacHash::Sha256 => CKM_SHA256_HMAC,
        HmacHash::Sha384 => CKM_SHA384_HMAC,
        HmacHash::Sha512 => CKM_SHA512_HMAC,
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
            CKM_SHA_1_HMAC => run::<Hmac<sha1::Sha1>>(key, data),
            CKM_SHA224_HMAC => run::<Hmac<sha2::Sha224>>(key, data),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mechanisms::unhex;

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
}
