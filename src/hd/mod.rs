//! HD trees (design §6.1): BIP-32 children of secp256k1 keys, SLIP-10 children of P-256 and Ed25519 keys, and xpubs.
//!
//! An asset version's key `K` with its chain code `CC` is the master extended
//! key of an HD tree. Children follow BIP-32 exactly for `secp256k1` (an
//! invalid child is an error naming its index: BIP-32 says to use the next
//! index), SLIP-10 for `p256` (an invalid child is rehashed) and SLIP-10 for
//! `ed25519` (hardened children only, no public derivation).
//!
//! This module is a pure library: the PKCS#11 plumbing lives elsewhere. All
//! scalar and point arithmetic is the `k256` and `p256` crates'; HMAC-SHA512
//! is `hmac` over `sha2`. Private derivation runs on a secret stack
//! ([`secure::confined_at`](crate::secure::confined_at)), and the child's key
//! and chain code leave it only in the locked arena ([`Secret32`]). Public
//! derivation handles public values only and runs on the ordinary stack.

#![forbid(unsafe_code)]

mod ckd;
mod path;
mod serial;
#[cfg(test)]
mod tests;

pub use ckd::{
    derive_private, derive_private_from, derive_public, master_public, public_key_of, public_of,
};
pub use path::{is_hardened, show_index, Path};
pub use serial::{
    compressed, fingerprint_of, hash160, parse_xpub, uncompressed, xpub, XPRV_VERSION, XPUB_VERSION,
};

use crate::types::Secret32;

/// The bit of a hardened child's index.
pub const HARDENED: u32 = 0x8000_0000;

/// The deepest a key lies below its master (the depth is one byte).
pub const MAX_DEPTH: usize = 255;

/// An extended private key: the key (an EC scalar, or an Ed25519 seed) and
/// chain code in the locked arena, and where it sits in its tree.
#[derive(Debug)]
pub struct ExtendedPrivate {
    pub key: Secret32,
    pub chain: Secret32,
    /// Levels below the master (0 for the master).
    pub depth: u8,
    /// The first 4 bytes of the parent's key identifier (0 for the master).
    pub parent_fingerprint: [u8; 4],
    /// The index this key is its parent's child at (0 for the master).
    pub child_number: u32,
}

/// An extended public key. `key` is the uncompressed SEC1 point (65 bytes)
/// for secp256k1 and P-256, the 32-byte public key for Ed25519.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtendedPublic {
    pub key: Vec<u8>,
    pub chain: [u8; 32],
    pub depth: u8,
    pub parent_fingerprint: [u8; 4],
    pub child_number: u32,
}
