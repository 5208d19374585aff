//! P-256 ECDSA signing with a fast, constant-time fixed-base multiplication.
//!
//! RustCrypto's `p256` computes `k·G` through generic Montgomery arithmetic
//! and complete projective formulas: about 50 µs of the 59 µs a signature
//! took here, and the first cost in the benchmark's profile. This module
//! computes only that product, and only its x coordinate, with arithmetic
//! specialised to the P-256 prime; the nonce (RFC 6979, `rfc6979` crate),
//! the scalar arithmetic (`p256::Scalar`) and the signature's shape are the
//! same as `ecdsa::hazmat::sign_prehashed_rfc6979`, so the signatures are
//! byte for byte those of RustCrypto (a test compares them).
//!
//! - Field: four 64-bit limbs in Montgomery form (R = 2^256). Since
//!   p ≡ −1 (mod 2^64), each reduction step's multiplier is the low limb.
//! - `k·G`: signed radix-16 digits of `k` (or of `n − k`, whichever is below
//!   n/2: both have the same x), 64 windows, a table of `j·16^i·G` for
//!   `j = 1..=8` in affine coordinates (32 KiB, public, built once), every
//!   entry of a window read and selected by mask, one mixed addition per
//!   window. With every partial sum below n/2 in absolute value, a window's
//!   addition can never be a doubling or reach infinity; the accumulator
//!   starts at infinity, which a mask handles.
//! - No branch and no memory index depends on the nonce. Everything runs on
//!   the caller's stack, which for signing is a locked secret stack.

// Limb loops index several arrays in step.
#![allow(clippy::needless_range_loop)]

use crate::ck::CKR_GENERAL_ERROR;
use crate::error::{Error, Result};
use p256::elliptic_curve::bigint::U256;
use p256::elliptic_curve::group::Group;
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::scalar::IsHigh;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::elliptic_curve::subtle::ConditionallySelectable;
use p256::elliptic_curve::{Curve, Field, PrimeField};
use std::hint::black_box;
use std::sync::OnceLock;

/// A field element in Montgomery form, little-endian limbs, fully reduced.
#[derive(Clone, Copy, Default)]
struct Fe([u64; 4]);

const P: [u64; 4] = [u64::MAX, 0x0000_0000_ffff_ffff, 0, 0xffff_ffff_0000_0001];
/// R^2 mod p, to enter Montgomery form.
const R2: Fe = Fe([
    3,
    0xffff_fffb_ffff_ffff,
    0xffff_ffff_ffff_fffe,
    0x0000_0004_ffff_fffd,
]);
/// R mod p: one in Montgomery form.
const ONE: Fe = Fe([1, 0xffff_ffff_0000_0000, u64::MAX, 0x0000_0000_ffff_fffe]);

#[inline(always)]
fn mac(acc: u64, a: u64, b: u64, carry: u64) -> (u64, u64) {
    let t = acc as u128 + (a as u128) * (b as u128) + carry as u128;
    (t as u64, (t >> 64) as u64)
}

#[inline(always)]
fn adc(a: u64, b: u64, carry: u64) -> (u64, u64) {
    let t = a as u128 + b as u128 + carry as u128;
    (t as u64, (t >> 64) as u64)
}

/// `a − b − borrow`, returning the borrow (0 or 1).
#[inline(always)]
fn sbb(a: u64, b: u64, borrow: u64) -> (u64, u64) {
    let t = (a as u128).wrapping_sub(b as u128 + borrow as u128);
    (t as u64, ((t >> 64) as u64) & 1)
}

/// All ones where `bit` is 1, else zero; opaque to the optimiser.
#[inline(always)]
fn mask(bit: u64) -> u64 {
    black_box(0u64.wrapping_sub(bit))
}

/// All ones where `a == b`, else zero, without a branch.
#[inline(always)]
fn eq_mask(a: u64, b: u64) -> u64 {
    let d = a ^ b;
    mask(((d | d.wrapping_neg()) >> 63) ^ 1)
}

#[inline(always)]
fn select(a: &Fe, b: &Fe, m: u64) -> Fe {
    // b where m is all ones, a where it is zero.
    let mut r = [0u64; 4];
    for i in 0..4 {
        r[i] = a.0[i] ^ ((a.0[i] ^ b.0[i]) & m);
    }
    Fe(r)
}

impl Fe {
    /// `t + hi·2^256` (known to be below 2p) reduced below p.
    #[inline(always)]
    fn reduce_once(t: [u64; 4], hi: u64) -> Fe {
        let mut d = [0u64; 4];
        let mut b = 0;
        for i in 0..4 {
            (d[i], b) = sbb(t[i], P[i], b);
        }
        let (_, b) = sbb(hi, 0, b);
        // A final borrow means t < p: keep t.
        select(&Fe(d), &Fe(t), mask(b))
    }

    #[inline(always)]
    fn add(&self, o: &Fe) -> Fe {
        let mut t = [0u64; 4];
        let mut c = 0;
        for i in 0..4 {
            (t[i], c) = adc(self.0[i], o.0[i], c);
        }
        Fe::reduce_once(t, c)
    }

    #[inline(always)]
    fn sub(&self, o: &Fe) -> Fe {
        let mut t = [0u64; 4];
        let mut b = 0;
        for i in 0..4 {
            (t[i], b) = sbb(self.0[i], o.0[i], b);
        }
        let m = mask(b);
        let mut c = 0;
        for i in 0..4 {
            (t[i], c) = adc(t[i], P[i] & m, c);
        }
        Fe(t)
    }

    #[inline(always)]
    fn double(&self) -> Fe {
        self.add(self)
    }

    /// Montgomery multiplication (CIOS): `a·b·R^-1 mod p`.
    #[inline(always)]
    fn mul(&self, o: &Fe) -> Fe {
        let (a, b) = (&self.0, &o.0);
        let mut t = [0u64; 6];
        for i in 0..4 {
            let mut c = 0;
            for j in 0..4 {
                (t[j], c) = mac(t[j], a[j], b[i], c);
            }
            (t[4], t[5]) = adc(t[4], c, 0);
            // −p^-1 mod 2^64 is 1: the multiplier is t[0] itself.
            let m = t[0];
            let (_, mut c) = mac(t[0], m, P[0], 0);
            for j in 1..4 {
                (t[j - 1], c) = mac(t[j], m, P[j], c);
            }
            let (lo, hi) = adc(t[4], c, 0);
            t[3] = lo;
            t[4] = t[5] + hi;
        }
        Fe::reduce_once([t[0], t[1], t[2], t[3]], t[4])
    }

    #[inline(always)]
    fn square(&self) -> Fe {
        self.mul(self)
    }

    fn square_n(&self, n: usize) -> Fe {
        let mut r = *self;
        for _ in 0..n {
            r = r.square();
        }
        r
    }

    /// `self^(p−2)`: the inverse (of a non-zero element), by a fixed chain.
    fn invert(&self) -> Fe {
        let x = self;
        let x2 = x.square().mul(x); // x^(2^2−1)
        let x3 = x2.square().mul(x);
        let x6 = x3.square_n(3).mul(&x3);
        let x12 = x6.square_n(6).mul(&x6);
        let x15 = x12.square_n(3).mul(&x3);
        let x30 = x15.square_n(15).mul(&x15);
        let x32 = x30.square_n(2).mul(&x2);
        // p − 2 = ffffffff 00000001 00000000 00000000 00000000 ffffffff ffffffff fffffffd
        let mut t = x32.square_n(32).mul(x);
        t = t.square_n(96);
        t = t.square_n(32).mul(&x32);
        t = t.square_n(32).mul(&x32);
        t = t.square_n(30).mul(&x30);
        t.square_n(2).mul(x)
    }

    /// From big-endian bytes (a value below p) into Montgomery form.
    fn from_be(bytes: &[u8; 32]) -> Fe {
        let mut l = [0u64; 4];
        for (i, limb) in l.iter_mut().enumerate() {
            let at = 32 - 8 * (i + 1);
            *limb = u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        }
        Fe(l).mul(&R2)
    }

    /// Out of Montgomery form, as big-endian bytes.
    fn to_be(self) -> [u8; 32] {
        let plain = self.mul(&Fe([1, 0, 0, 0]));
        let mut out = [0u8; 32];
        for i in 0..4 {
            out[32 - 8 * (i + 1)..32 - 8 * i].copy_from_slice(&plain.0[i].to_be_bytes());
        }
        out
    }
}

/// An affine point of the table.
#[derive(Clone, Copy, Default)]
struct Affine {
    x: Fe,
    y: Fe,
}

/// `TABLE[i][j − 1] = j·16^i·G`.
type Table = [[Affine; 8]; 64];

fn table() -> &'static Table {
    static TABLE: OnceLock<Box<Table>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([[Affine::default(); 8]; 64]);
        let mut base = p256::ProjectivePoint::GENERATOR;
        for window in t.iter_mut() {
            let mut p = base;
            for entry in window.iter_mut() {
                let enc = p.to_affine().to_sec1_point(false);
                let x: &[u8; 32] = enc
                    .x()
                    .expect("finite point")
                    .as_slice()
                    .try_into()
                    .expect("32");
                let y: &[u8; 32] = enc
                    .y()
                    .expect("finite point")
                    .as_slice()
                    .try_into()
                    .expect("32");
                *entry = Affine {
                    x: Fe::from_be(x),
                    y: Fe::from_be(y),
                };
                p += base;
            }
            for _ in 0..4 {
                base = base.double();
            }
        }
        t
    })
}

/// Builds the table (public data): call before computing on a secret stack.
pub fn warm_up() {
    table();
}

/// The x coordinate (big-endian) of `k·G` for a non-zero scalar `k` given
/// big-endian, constant-time in `k`.
fn base_mul_x(k: &p256::Scalar) -> [u8; 32] {
    let table = table();
    // x(k·G) = x((n − k)·G): use the one below n/2, so the top digit needs no carry.
    let k = p256::Scalar::conditional_select(k, &-*k, k.is_high());
    let bytes = k.to_repr();
    // Jacobian accumulator, starting at infinity.
    let (mut x, mut y, mut z) = (ONE, ONE, Fe::default());
    let mut at_infinity = u64::MAX;
    let mut carry = 0u64;
    for (i, window) in table.iter().enumerate() {
        // Signed digit in −7..=8 from the next nibble (little-endian order).
        let byte = bytes[31 - i / 2] as u64;
        let v = ((byte >> (4 * (i % 2))) & 15) + carry; // 0..=16
        carry = 8u64.wrapping_sub(v) >> 63; // v > 8
        let digit = v.wrapping_sub(carry << 4) as i64; // −7..=8
        let negative = mask((digit as u64) >> 63);
        // 0..=8
        let magnitude = ((digit as u64) ^ negative).wrapping_sub(negative);
        // Read every entry; keep the one whose index matches.
        let mut q = Affine::default();
        for (j, entry) in window.iter().enumerate() {
            let eq = eq_mask(magnitude, j as u64 + 1);
            q.x = select(&q.x, &entry.x, eq);
            q.y = select(&q.y, &entry.y, eq);
        }
        q.y = select(&q.y, &Fe::default().sub(&q.y), negative);
        // Mixed addition (madd-2007-bl); never a doubling here (see above).
        let z1z1 = z.square();
        let u2 = q.x.mul(&z1z1);
        let s2 = q.y.mul(&z).mul(&z1z1);
        let h = u2.sub(&x);
        let hh = h.square();
        let i4 = hh.double().double();
        let j = h.mul(&i4);
        let r = s2.sub(&y).double();
        let v = x.mul(&i4);
        let x3 = r.square().sub(&j).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&y.mul(&j).double());
        let z3 = z.add(&h).square().sub(&z1z1).sub(&hh);
        // digit 0: keep the accumulator; accumulator at infinity: take q.
        let zero = eq_mask(magnitude, 0);
        let nx = select(&x3, &q.x, at_infinity);
        let ny = select(&y3, &q.y, at_infinity);
        let nz = select(&z3, &ONE, at_infinity);
        x = select(&nx, &x, zero);
        y = select(&ny, &y, zero);
        z = select(&nz, &z, zero);
        at_infinity &= zero;
    }
    let zi = z.invert();
    x.mul(&zi.square()).to_be()
}

/// ECDSA over P-256 of a 32-byte digest with RFC 6979 nonces: the same
/// signature `ecdsa::hazmat::sign_prehashed_rfc6979::<NistP256, Sha256>`
/// gives, as `r || s`.
pub fn sign(d: &p256::NonZeroScalar, z: &[u8; 32]) -> Result<[u8; 64]> {
    let order = p256::NistP256::ORDER;
    let mut kgen = rfc6979::KGenerator::<sha2::Sha256, U256>::new(&d.to_repr(), z, &[], &order);
    let zs = <p256::Scalar as Reduce<p256::FieldBytes>>::reduce(&p256::FieldBytes::from(*z));
    for _ in 0..8 {
        let mut k_bytes = p256::FieldBytes::default();
        kgen.fill_next_k(&mut k_bytes);
        let Some(k) = Option::<p256::NonZeroScalar>::from(p256::NonZeroScalar::from_repr(k_bytes))
        else {
            continue;
        };
        let x = base_mul_x(&k);
        let r = <p256::Scalar as Reduce<p256::FieldBytes>>::reduce(&p256::FieldBytes::from(x));
        let s = k.invert().unwrap_or(p256::Scalar::ZERO) * (zs + r * d.as_ref());
        if bool::from(r.is_zero() | s.is_zero()) {
            continue;
        }
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&r.to_repr());
        out[32..].copy_from_slice(&s.to_repr());
        return Ok(out);
    }
    Err(Error::with(CKR_GENERAL_ERROR, "no usable ECDSA nonce"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(bytes: [u8; 32]) -> p256::Scalar {
        <p256::Scalar as Reduce<p256::FieldBytes>>::reduce(&p256::FieldBytes::from(bytes))
    }

    fn reference_x(k: &p256::Scalar) -> [u8; 32] {
        let p = p256::ProjectivePoint::mul_by_generator(k)
            .to_affine()
            .to_sec1_point(false);
        p.x().unwrap().as_slice().try_into().unwrap()
    }

    #[test]
    fn field_arithmetic_round_trips() {
        let a = Fe::from_be(&[0x5a; 32]);
        assert_eq!(a.to_be(), [0x5a; 32]);
        assert_eq!(a.mul(&a.invert()).to_be(), ONE.to_be());
        assert_eq!(ONE.to_be()[31], 1);
        assert_eq!(a.sub(&a).to_be(), [0; 32]);
        assert_eq!(a.add(&a).to_be(), a.double().to_be());
    }

    #[test]
    fn base_multiplication_matches_p256() {
        let n_minus = |v: u64| -p256::Scalar::from(v);
        let mut cases = vec![
            p256::Scalar::ONE,
            p256::Scalar::from(2u64),
            p256::Scalar::from(8u64),
            p256::Scalar::from(9u64),
            p256::Scalar::from(15u64),
            p256::Scalar::from(16u64),
            p256::Scalar::from(0x8888_8888_8888_8888u64),
            n_minus(1),
            n_minus(2),
            n_minus(9),
            scalar([0x88; 32]),
            scalar([0x77; 32]),
            scalar([0xff; 32]),
            // Around n/2: (n−1)/2 is not high, (n+1)/2 is.
            p256::Scalar::from(2u64).invert().unwrap() - p256::Scalar::ONE,
            p256::Scalar::from(2u64).invert().unwrap(),
        ];
        let mut seed = [7u8; 32];
        for _ in 0..300 {
            seed = sha2::Sha256::digest(seed).into();
            cases.push(scalar(seed));
        }
        use sha2::Digest;
        for k in cases {
            assert_eq!(base_mul_x(&k), reference_x(&k), "k = {:x?}", k.to_repr());
        }
    }

    #[test]
    fn signatures_equal_rustcrypto_rfc6979() {
        use sha2::Digest;
        let mut seed = [3u8; 32];
        for _ in 0..100 {
            seed = sha2::Sha256::digest(seed).into();
            let d = p256::NonZeroScalar::new(scalar(seed)).unwrap();
            let z: [u8; 32] = sha2::Sha256::digest(&seed[..7]).into();
            let (want, _) =
                ecdsa::hazmat::sign_prehashed_rfc6979::<p256::NistP256, sha2::Sha256>(&d, &z, &[]);
            assert_eq!(sign(&d, &z).unwrap().as_slice(), want.to_bytes().as_slice());
        }
        // All-ones digest (above n) is reduced the same way.
        let d = p256::NonZeroScalar::new(scalar([9; 32])).unwrap();
        let z = [0xff; 32];
        let (want, _) =
            ecdsa::hazmat::sign_prehashed_rfc6979::<p256::NistP256, sha2::Sha256>(&d, &z, &[]);
        assert_eq!(sign(&d, &z).unwrap().as_slice(), want.to_bytes().as_slice());
    }

    /// Medians over rounds of the time per signature (ours, RustCrypto's
    /// `sign_prehashed_rfc6979`) and per `k·G`, batches interleaved so
    /// the machine's load hits both alike:
    /// `cargo test --release --lib p256_base::tests::speed -- --ignored --nocapture`
    #[test]
    #[ignore = "timing; run with --ignored --nocapture in release"]
    fn speed() {
        use std::time::{Duration, Instant};
        let d = p256::NonZeroScalar::new(scalar([9; 32])).unwrap();
        let z = [0x42; 32];
        let k = scalar([0x5c; 32]);
        warm_up();
        let (n, rounds) = (500u32, 15);
        let (mut ours, mut theirs, mut kg, mut ratio) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            let t = Instant::now();
            for _ in 0..n {
                black_box(sign(black_box(&d), black_box(&z)).unwrap());
            }
            let a = t.elapsed() / n;
            let t = Instant::now();
            for _ in 0..n {
                black_box(ecdsa::hazmat::sign_prehashed_rfc6979::<
                    p256::NistP256,
                    sha2::Sha256,
                >(black_box(&d), black_box(&z), &[]));
            }
            let b = t.elapsed() / n;
            let t = Instant::now();
            for _ in 0..n {
                black_box(base_mul_x(black_box(&k)));
            }
            kg.push(t.elapsed() / n);
            ours.push(a);
            theirs.push(b);
            ratio.push(a.as_secs_f64() / b.as_secs_f64());
        }
        fn median<T: PartialOrd + Copy>(v: &mut [T]) -> T {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        }
        let (a, b, c): (Duration, Duration, Duration) =
            (median(&mut ours), median(&mut theirs), median(&mut kg));
        println!(
            "p256_base::sign {a:?}, RustCrypto {b:?}, ratio {:.3}, base_mul_x {c:?} (medians of {rounds} x {n})",
            median(&mut ratio)
        );
    }
}
