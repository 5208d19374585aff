//! Arithmetic in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1 (SLIP-39's field), in constant time.
//!
//! Share values are secret, so nothing here branches on an operand or
//! indexes a table with one: multiplication is shift-and-add with masks and
//! the inverse is a fixed chain of multiplications (a^254). Addition is XOR.

/// The reduction of x^8: x^4 + x^3 + x + 1.
const REDUCE: u8 = 0x1b;

/// `0xff` when `bit` (0 or 1) is 1, else `0`.
fn mask(bit: u8) -> u8 {
    0u8.wrapping_sub(bit & 1)
}

/// `a · b`.
pub fn mul(a: u8, b: u8) -> u8 {
    let mut a = a;
    let mut product = 0u8;
    for i in 0..8 {
        product ^= a & mask(b >> i);
        a = (a << 1) ^ (REDUCE & mask(a >> 7));
    }
    product
}

/// `a^-1` for nonzero `a` (and 0 for 0): a^254, since a^255 = 1.
pub fn inv(a: u8) -> u8 {
    // 254 = 0b1111_1110: square-and-multiply over a public, fixed exponent.
    let mut r = 1u8;
    for bit in (0..8).rev() {
        r = mul(r, r);
        if (254u8 >> bit) & 1 == 1 {
            r = mul(r, a);
        }
    }
    r
}

/// The value at `x` of the polynomial through the points `(xs[i], ys[i])`
/// (Lagrange form), byte by byte: `out[k] = f_k(x)` where `f_k` passes
/// through `(xs[i], ys[i][k])`. The x-coordinates are public and distinct
/// (the caller checks); the y-values are secret and only multiplied and added.
pub fn interpolate(xs: &[u8], ys: &[&[u8]], x: u8, out: &mut [u8]) {
    debug_assert_eq!(xs.len(), ys.len());
    out.fill(0);
    for (i, (&xi, yi)) in xs.iter().zip(ys).enumerate() {
        debug_assert_eq!(yi.len(), out.len());
        // The basis polynomial l_i at x: prod_{j != i} (x - x_j) / (x_i - x_j).
        let mut num = 1u8;
        let mut den = 1u8;
        for (j, &xj) in xs.iter().enumerate() {
            if j != i {
                num = mul(num, x ^ xj);
                den = mul(den, xi ^ xj);
            }
        }
        let basis = mul(num, inv(den));
        for (o, &y) in out.iter_mut().zip(yi.iter()) {
            *o ^= mul(basis, y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent reference: log/exp tables over the generator 3 (x+1),
    /// multiplying by 3 as `p ^ (p << 1)` reduced by the full polynomial.
    fn tables() -> ([u8; 255], [u8; 256]) {
        let mut exp = [0u8; 255];
        let mut log = [0u8; 256];
        let mut p: u16 = 1;
        for (i, e) in exp.iter_mut().enumerate() {
            *e = p as u8;
            log[p as usize] = i as u8;
            p ^= p << 1;
            if p & 0x100 != 0 {
                p ^= 0x11b;
            }
        }
        (exp, log)
    }

    fn reference_mul(exp: &[u8; 255], log: &[u8; 256], a: u8, b: u8) -> u8 {
        if a == 0 || b == 0 {
            return 0;
        }
        exp[(log[a as usize] as usize + log[b as usize] as usize) % 255]
    }

    #[test]
    fn generator_three_reaches_every_nonzero_element() {
        let (exp, _) = tables();
        let mut seen = [false; 256];
        for &e in &exp {
            assert!(!seen[e as usize], "3 is not a generator: {e} repeats");
            seen[e as usize] = true;
        }
        assert!(!seen[0]);
    }

    #[test]
    fn mul_agrees_with_the_table_reference_on_all_pairs() {
        let (exp, log) = tables();
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(mul(a, b), reference_mul(&exp, &log, a, b), "{a} * {b}");
            }
        }
    }

    #[test]
    fn inv_agrees_with_the_table_reference_on_all_nonzero_values() {
        let (exp, log) = tables();
        for a in 1..=255u8 {
            let want = exp[(255 - log[a as usize] as usize) % 255];
            assert_eq!(inv(a), want, "1/{a}");
            assert_eq!(mul(a, inv(a)), 1, "{a} * 1/{a}");
        }
        assert_eq!(inv(0), 0);
    }

    #[test]
    fn field_laws() {
        for a in 0..=255u8 {
            assert_eq!(mul(a, 1), a);
            assert_eq!(mul(a, 0), 0);
            for b in (0..=255u8).step_by(7) {
                assert_eq!(mul(a, b), mul(b, a), "commutative");
                for c in (0..=255u8).step_by(13) {
                    assert_eq!(mul(mul(a, b), c), mul(a, mul(b, c)), "associative");
                    assert_eq!(mul(a, b ^ c), mul(a, b) ^ mul(a, c), "distributive");
                }
            }
        }
        // The SLIP-39 field is Rijndael's: {53} * {CA} = {01} (FIPS 197).
        assert_eq!(mul(0x53, 0xca), 0x01);
        assert_eq!(mul(0x57, 0x83), 0xc1);
    }

    #[test]
    fn interpolation_recovers_a_polynomial() {
        // f(x) = 7 + 5x + 3x^2 (one byte), and g(x) = 200 + 1x + 0x^2.
        let eval = |c: [u8; 3], x: u8| c[0] ^ mul(c[1], x) ^ mul(c[2], mul(x, x));
        let f = [7u8, 5, 3];
        let g = [200u8, 1, 0];
        let xs = [1u8, 4, 9];
        let ys: Vec<[u8; 2]> = xs.iter().map(|&x| [eval(f, x), eval(g, x)]).collect();
        let refs: Vec<&[u8]> = ys.iter().map(|y| &y[..]).collect();
        for x in [0u8, 2, 3, 254, 255] {
            let mut out = [0u8; 2];
            interpolate(&xs, &refs, x, &mut out);
            assert_eq!(out, [eval(f, x), eval(g, x)], "at {x}");
        }
    }
}
