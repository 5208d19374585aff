//! P-256 field elements on fiat-crypto's formally verified Montgomery arithmetic.
//!
//! Every arithmetic operation is one of `fiat_crypto::p256_64`'s functions,
//! generated with a machine-checked proof of correctness by the fiat-crypto
//! project: `mul`, `square`, `add`, `sub`, `opp`, `selectznz`,
//! `to_montgomery`, `from_montgomery`, `to_bytes`, `from_bytes`, `set_one`.
//! The inversion is crypto-bigint's constant-time Bernstein–Yang
//! (`Uint::invert_odd_mod`, what RustCrypto's `p256` itself inverts with):
//! faster than an addition chain of 267 fiat operations, and not ours. Ours
//! is only the wrapper: the byte order (fiat's bytes are little-endian, ours
//! big-endian), `limbs`/`from_limbs` for the table, and `black_box` on
//! selection bits.
//!
//! fiat-crypto's precondition for every function is an input below p in
//! its unique saturated form; every value here comes out of a fiat
//! function, `invert`, `from_be` of a coordinate below p, or a masked
//! selection of such values, so it holds.

use fiat::fiat_p256_montgomery_domain_field_element as Mont;
use fiat::fiat_p256_non_montgomery_domain_field_element as Plain;
use fiat_crypto::p256_64 as fiat;
use p256::elliptic_curve::bigint::{Odd, U256};
use std::hint::black_box;

/// A field element in Montgomery form (R = 2^256), fully reduced.
#[derive(Clone, Copy)]
pub(super) struct Fe(Mont);

impl Fe {
    pub(super) const ZERO: Fe = Fe(Mont([0; 4]));
    pub(super) const ONE: Fe = {
        let mut one = Mont([0; 4]);
        fiat::fiat_p256_set_one(&mut one);
        Fe(one)
    };

    /// `f(self, o)` by one of fiat's two-operand functions.
    #[inline(always)]
    fn with(&self, o: &Fe, f: fn(&mut Mont, &Mont, &Mont)) -> Fe {
        let mut r = Mont([0; 4]);
        f(&mut r, &self.0, &o.0);
        Fe(r)
    }

    #[inline(always)]
    pub(super) fn mul(&self, o: &Fe) -> Fe {
        self.with(o, fiat::fiat_p256_mul)
    }

    /// `f(self)` by one of fiat's one-operand functions.
    #[inline(always)]
    fn by(&self, f: fn(&mut Mont, &Mont)) -> Fe {
        let mut r = Mont([0; 4]);
        f(&mut r, &self.0);
        Fe(r)
    }

    #[inline(always)]
    pub(super) fn square(&self) -> Fe {
        self.by(fiat::fiat_p256_square)
    }

    #[inline(always)]
    pub(super) fn add(&self, o: &Fe) -> Fe {
        self.with(o, fiat::fiat_p256_add)
    }

    #[inline(always)]
    pub(super) fn sub(&self, o: &Fe) -> Fe {
        self.with(o, fiat::fiat_p256_sub)
    }

    #[inline(always)]
    pub(super) fn double(&self) -> Fe {
        self.add(self)
    }

    /// `−self`.
    #[inline(always)]
    pub(super) fn neg(&self) -> Fe {
        self.by(fiat::fiat_p256_opp)
    }

    /// `b` where `bit` is 1, `a` where it is 0, without a branch. The bit
    /// passes through `black_box` so the optimiser cannot learn it is a
    /// condition and branch on it.
    #[inline(always)]
    pub(super) fn select(a: &Fe, b: &Fe, bit: u8) -> Fe {
        let mut r = [0u64; 4];
        fiat::fiat_p256_selectznz(&mut r, black_box(bit), &a.0 .0, &b.0 .0);
        Fe(Mont(r))
    }

    /// The inverse of a non-zero element (zero gives zero): crypto-bigint's
    /// constant-time Bernstein–Yang inversion (`Uint::invert_odd_mod`, what
    /// RustCrypto's `p256` inverts with) on the value out of Montgomery form.
    pub(super) fn invert(&self) -> Fe {
        const P: Odd<U256> = Odd::<U256>::from_be_hex(
            "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
        );
        let mut plain = Plain([0; 4]);
        fiat::fiat_p256_from_montgomery(&mut plain, &self.0);
        let mut le = [0u8; 32];
        fiat::fiat_p256_to_bytes(&mut le, &plain.0);
        let inv = U256::from_le_slice(&le)
            .invert_odd_mod(&P)
            .unwrap_or(U256::ZERO);
        // Below p: an inverse mod p, or zero.
        fiat::fiat_p256_from_bytes(&mut plain.0, &inv.to_le_bytes().into());
        let mut r = Mont([0; 4]);
        fiat::fiat_p256_to_montgomery(&mut r, &plain);
        Fe(r)
    }

    /// The Montgomery limbs, for the table (stored as plain words).
    #[inline(always)]
    pub(super) fn limbs(&self) -> [u64; 4] {
        self.0 .0
    }

    /// Back from `limbs` (of a value below p, or a masked mix of them that
    /// is one of them or zero).
    #[inline(always)]
    pub(super) fn from_limbs(limbs: [u64; 4]) -> Fe {
        Fe(Mont(limbs))
    }

    /// From big-endian bytes of a value below p (fiat's precondition; the
    /// table's coordinates are) into Montgomery form.
    pub(super) fn from_be(bytes: &[u8; 32]) -> Fe {
        let mut le = *bytes;
        le.reverse();
        let mut plain = Plain([0; 4]);
        fiat::fiat_p256_from_bytes(&mut plain.0, &le);
        let mut r = Mont([0; 4]);
        fiat::fiat_p256_to_montgomery(&mut r, &plain);
        Fe(r)
    }

    /// Out of Montgomery form, as big-endian bytes.
    pub(super) fn to_be(self) -> [u8; 32] {
        let mut plain = Plain([0; 4]);
        fiat::fiat_p256_from_montgomery(&mut plain, &self.0);
        let mut out = [0u8; 32];
        fiat::fiat_p256_to_bytes(&mut out, &plain.0);
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    /// `a^e` by plain square-and-multiply over the bits of `e` (big-endian).
    fn pow(a: &Fe, e: &[u8; 32]) -> Fe {
        let mut r = Fe::ONE;
        for byte in e {
            for bit in (0..8).rev() {
                r = r.square();
                if (byte >> bit) & 1 == 1 {
                    r = r.mul(a);
                }
            }
        }
        r
    }

    #[test]
    fn field_arithmetic_round_trips() {
        let a = Fe::from_be(&[0x5a; 32]);
        assert_eq!(a.to_be(), [0x5a; 32]);
        assert_eq!(a.mul(&a.invert()).to_be(), Fe::ONE.to_be());
        assert_eq!(Fe::ONE.to_be()[31], 1);
        assert_eq!(Fe::ONE.to_be()[..31], [0; 31]);
        assert_eq!(a.sub(&a).to_be(), [0; 32]);
        assert_eq!(a.add(&a).to_be(), a.double().to_be());
        assert_eq!(a.add(&a.neg()).to_be(), [0; 32]);
        assert_eq!(a.square().to_be(), a.mul(&a).to_be());
        assert_eq!(Fe::select(&a, &Fe::ONE, 0).to_be(), a.to_be());
        assert_eq!(Fe::select(&a, &Fe::ONE, 1).to_be(), Fe::ONE.to_be());
        assert_eq!(Fe::ZERO.invert().to_be(), [0; 32]);
    }

    #[test]
    fn inversion_is_the_power_p_minus_2() {
        let mut p_minus_2 = [0u8; 32];
        p_minus_2.copy_from_slice(
            &(0..32)
                .map(|i| {
                    let hex = "ffffffff00000001000000000000000000000000fffffffffffffffffffffffd";
                    u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()
                })
                .collect::<Vec<u8>>(),
        );
        let mut seed = [1u8; 32];
        for _ in 0..50 {
            seed = sha2::Sha256::digest(seed).into();
            seed[0] &= 0x7f; // below p
            let a = Fe::from_be(&seed);
            assert_eq!(a.invert().to_be(), pow(&a, &p_minus_2).to_be());
            assert_eq!(a.mul(&a.invert()).to_be(), Fe::ONE.to_be());
        }
    }
}
