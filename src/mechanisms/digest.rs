//! Message digests (SHA-1, SHA-224/256/384/512) as a running hash for `C_Digest*` and hash-then-sign mechanisms.

#![forbid(unsafe_code)]

use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

use crate::ck::*;

/// A running hash for the digest and hash-then-sign mechanisms.
#[derive(Clone)]
pub enum Hasher {
    Sha1(Sha1),
    Sha224(Sha224),
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

impl Hasher {
    /// The hash of a digest mechanism (`CKM_SHA256`…).
    pub fn for_digest(mech: CK_MECHANISM_TYPE) -> Option<Hasher> {
        Some(match mech {
            CKM_SHA_1 => Hasher::Sha1(Sha1::new()),
            CKM_SHA224 => Hasher::Sha224(Sha224::new()),
            CKM_SHA256 => Hasher::Sha256(Sha256::new()),
            CKM_SHA384 => Hasher::Sha384(Sha384::new()),
            CKM_SHA512 => Hasher::Sha512(Sha512::new()),
            _ => return None,
        })
    }

    pub fn output_len(&self) -> usize {
        match self {
            Hasher::Sha1(_) => 20,
            Hasher::Sha224(_) => 28,
            Hasher::Sha256(_) => 32,
            Hasher::Sha384(_) => 48,
            Hasher::Sha512(_) => 64,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha224(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha224(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}
