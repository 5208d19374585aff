//! P-256 ECDSA signing with a fast, constant-time fixed-base multiplication.
//!
//! RustCrypto's `p256` computes `k·G` through generic arithmetic and complete
//! projective formulas: about 50 µs of the 59 µs a signature took here, and
//! the first cost in the benchmark's profile. This module computes only that
//! product, and only its x coordinate; the nonce (RFC 6979, `rfc6979`
//! crate), the scalar arithmetic (`p256::Scalar`) and the signature's shape
//! are the same as `ecdsa::hazmat::sign_prehashed_rfc6979`, so the
//! signatures are byte for byte those of RustCrypto's
//! `p256::ecdsa::SigningKey` (the tests and the `p256_diff` fuzz target
//! compare them).
//!
//! What is verified code and what is ours:
//! - `field`: the field arithmetic (multiplication, squaring, addition,
//!   subtraction, negation, selection, Montgomery conversions, byte
//!   encoding) is `fiat_crypto::p256_64`, generated with a machine-checked
//!   proof of functional correctness by the fiat-crypto project; the
//!   inversion is crypto-bigint's constant-time one. Ours: a thin wrapper.
//! - `table`: ours. The signed radix-2^6 digits, the 86 KiB affine table of
//!   multiples of G (built with RustCrypto's `p256`), the masked reads of
//!   every entry of a window and the mixed additions (madd-2007-bl). No
//!   branch and no memory index depends on the nonce; everything runs on
//!   the caller's stack, which for signing is a locked secret stack.
//! - This file: the RFC 6979 loop (the `rfc6979` crate) and `r`, `s` on
//!   `p256::Scalar`, as RustCrypto computes them.
//!
//! Evidence beyond review (`tests.rs`): differential tests against
//! RustCrypto on edge and random nonces, keys and digests (a million random
//! nonces in an ignored test); the `p256_diff` fuzz target; a statistical
//! constant-time test (Welch's t-test on the timings of a fixed against
//! random nonces, dudect's method) in `cargo test --release`.
//!
//! Speed (`tests::speed`): `k·G` in 23.4–23.6 µs where the hand-written field
//! arithmetic with 4-bit windows it replaced took 22.9–23.0 µs (measured side
//! by side in one process); a signature in
//! 0.46 of the time of RustCrypto's.
//!
//! Cargo feature `p256-hazmat`: `sign` uses RustCrypto's generic
//! `ecdsa::hazmat::sign_prehashed_rfc6979` (about twice as slow, the same
//! bytes) instead of this module's `k·G`, should the fast path ever be in
//! doubt; `warm_up` then builds nothing.

mod field;
mod table;
#[cfg(test)]
mod tests;

use crate::ck::CKR_GENERAL_ERROR;
use crate::error::{Error, Result};
use p256::elliptic_curve::bigint::U256;
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::{Curve, Field, PrimeField};

/// Whether `sign` uses RustCrypto's generic signing (feature `p256-hazmat`).
const HAZMAT: bool = cfg!(feature = "p256-hazmat");

/// Builds the table (public data): call before computing on a secret stack.
pub fn warm_up() {
    if !HAZMAT {
        table::warm_up();
    }
}

/// The x coordinate (big-endian) of `k·G`, constant-time in `k`, as this
/// module computes it for a signature (public for the `p256_diff` fuzz
/// target), on a secret stack like every computation on a secret.
pub fn base_mul_x(k: &p256::NonZeroScalar) -> [u8; 32] {
    warm_up();
    crate::secure::confined_at(crate::secure::Depth::Deep, || table::base_mul_x(k.as_ref()))
}

/// ECDSA over P-256 of a 32-byte digest with RFC 6979 nonces: the same
/// signature `ecdsa::hazmat::sign_prehashed_rfc6979::<NistP256, Sha256>`
/// gives, as `r || s`. It runs on a secret stack (at once where the caller,
/// `mechanisms::ecdsa_sign`, is on one already), so the key, the nonce and
/// their temporaries never reach an ordinary stack, whoever calls it.
pub fn sign(d: &p256::NonZeroScalar, z: &[u8; 32]) -> Result<[u8; 64]> {
    warm_up();
    crate::secure::confined_at(crate::secure::Depth::Deep, || {
        if HAZMAT {
            Ok(sign_hazmat(d, z))
        } else {
            sign_fast(d, z)
        }
    })
}

/// RustCrypto's signature, through its generic `k·G`.
fn sign_hazmat(d: &p256::NonZeroScalar, z: &[u8; 32]) -> [u8; 64] {
    let (sig, _) = ecdsa::hazmat::sign_prehashed_rfc6979::<p256::NistP256, sha2::Sha256>(d, z, &[]);
    let mut out = [0u8; 64];
    out.copy_from_slice(&sig.to_bytes());
    out
}

/// The same signature with this module's `k·G`.
fn sign_fast(d: &p256::NonZeroScalar, z: &[u8; 32]) -> Result<[u8; 64]> {
    let order = p256::NistP256::ORDER;
    let mut kgen = rfc6979::KGenerator::<sha2::Sha256, U256>::new(&d.to_repr(), z, &[], &order);
    for _ in 0..8 {
        let mut k_bytes = p256::FieldBytes::default();
        kgen.fill_next_k(&mut k_bytes);
        let Some(k) = Option::<p256::NonZeroScalar>::from(p256::NonZeroScalar::from_repr(k_bytes))
        else {
            continue;
        };
        if let Some(sig) = sign_with_nonce(d, &k, z) {
            return Ok(sig);
        }
    }
    Err(Error::with(CKR_GENERAL_ERROR, "no usable ECDSA nonce"))
}

/// `r || s` for the nonce `k`, or `None` where `r` or `s` is zero: what
/// `ecdsa::hazmat::sign_prehashed` computes.
fn sign_with_nonce(
    d: &p256::NonZeroScalar,
    k: &p256::NonZeroScalar,
    z: &[u8; 32],
) -> Option<[u8; 64]> {
    let zs = <p256::Scalar as Reduce<p256::FieldBytes>>::reduce(&p256::FieldBytes::from(*z));
    let x = table::base_mul_x(k.as_ref());
    let r = <p256::Scalar as Reduce<p256::FieldBytes>>::reduce(&p256::FieldBytes::from(x));
    let s = k.invert().unwrap_or(p256::Scalar::ZERO) * (zs + r * d.as_ref());
    if bool::from(r.is_zero() | s.is_zero()) {
        return None;
    }
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&r.to_repr());
    out[32..].copy_from_slice(&s.to_repr());
    Some(out)
}
