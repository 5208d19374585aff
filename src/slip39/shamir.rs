//! One level of SLIP-39's Shamir sharing: a secret split into `count` points of a random polynomial, with a digest to check recovery.
//!
//! For a threshold `t >= 2` the polynomial is fixed by `t - 2` random shares
//! at x = 0..t-3, the digest share at x = 254 (4 bytes of
//! HMAC-SHA256(key = R, secret) followed by the random R) and the secret at
//! x = 255; the shares handed out are its values at x = t-2..count-1. With
//! `t = 1` every share is the secret itself.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::{copy, gf256};
use crate::secure::{self, SecretBytes};

/// Where the secret sits on the polynomial.
const SECRET_X: u8 = 255;
/// Where the digest share sits.
const DIGEST_X: u8 = 254;
/// The digest's length in bytes.
const DIGEST_LEN: usize = 4;

/// The caller's source of random bytes (the backing HSM in production).
pub type Random<'a> = &'a dyn Fn(&mut [u8]) -> Result<(), String>;

/// Why a set of points does not give back its secret.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The digest did not match: the shares are of different secrets or corrupted.
    Digest,
    /// Locked memory could not be had (the message says what to raise).
    Memory(String),
}

/// Splits `secret` into `count` shares, any `threshold` of which recover it.
/// Share `i` is at x = `i`. `threshold` and `count` are checked by the caller
/// (1..=16, threshold <= count).
pub fn split(
    threshold: u8,
    count: u8,
    secret: &[u8],
    random: Random,
) -> Result<Vec<(u8, SecretBytes)>, String> {
    if threshold == 1 {
        return (0..count).map(|x| Ok((x, copy(secret)?))).collect();
    }
    if secret.len() < DIGEST_LEN {
        return Err(format!(
            "a secret of {} bytes is too short to share",
            secret.len()
        ));
    }
    // The base points: t-2 random values, the digest, the secret.
    let mut base: Vec<(u8, SecretBytes)> = Vec::with_capacity(threshold as usize);
    for x in 0..threshold - 2 {
        let mut value = SecretBytes::with_capacity(secret.len())?;
        value.grow(secret.len());
        random(&mut value).map_err(|e| format!("random bytes for a share: {e}"))?;
        base.push((x, value));
    }
    let mut digest_share = SecretBytes::with_capacity(secret.len())?;
    digest_share.grow(secret.len());
    random(&mut digest_share[DIGEST_LEN..])
        .map_err(|e| format!("random bytes for a digest: {e}"))?;
    let mut tag = digest(&digest_share[DIGEST_LEN..], secret);
    digest_share[..DIGEST_LEN].copy_from_slice(&tag);
    tag.zeroize();
    base.push((DIGEST_X, digest_share));
    base.push((SECRET_X, copy(secret)?));

    let xs: Vec<u8> = base.iter().map(|(x, _)| *x).collect();
    let ys: Vec<&[u8]> = base.iter().map(|(_, y)| &y[..]).collect();
    let mut shares = Vec::with_capacity(count as usize);
    for x in 0..count {
        if x < threshold - 2 {
            shares.push((x, copy(&base[x as usize].1)?));
        } else {
            let mut value = SecretBytes::with_capacity(secret.len())?;
            value.grow(secret.len());
            secure::confined(|| gf256::interpolate(&xs, &ys, x, &mut value));
            shares.push((x, value));
        }
    }
    Ok(shares)
}

/// Recovers the secret from exactly `threshold` shares with distinct x
/// (checked by the caller) and values of one length, checking the digest.
pub fn recover(threshold: u8, shares: &[(u8, &[u8])]) -> Result<SecretBytes, Failure> {
    let len = shares.first().map_or(0, |(_, v)| v.len());
    if threshold == 1 {
        return copy(shares[0].1).map_err(Failure::Memory);
    }
    let xs: Vec<u8> = shares.iter().map(|(x, _)| *x).collect();
    let ys: Vec<&[u8]> = shares.iter().map(|(_, y)| *y).collect();
    let mut secret = SecretBytes::with_capacity(len).map_err(Failure::Memory)?;
    secret.grow(len);
    secure::confined(|| gf256::interpolate(&xs, &ys, SECRET_X, &mut secret));
    let mut digest_share = SecretBytes::with_capacity(len).map_err(Failure::Memory)?;
    digest_share.grow(len);
    secure::confined(|| gf256::interpolate(&xs, &ys, DIGEST_X, &mut digest_share));
    let mut tag = digest(&digest_share[DIGEST_LEN..], &secret);
    let ok = bool::from(tag.ct_eq(&digest_share[..DIGEST_LEN]));
    tag.zeroize();
    if ok {
        Ok(secret)
    } else {
        Err(Failure::Digest)
    }
}

/// The first 4 bytes of HMAC-SHA256(key = random part, message = secret).
fn digest(key: &[u8], secret: &[u8]) -> [u8; DIGEST_LEN] {
    secure::confined(|| {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
        mac.update(secret);
        let mut full = mac.finalize().into_bytes();
        let mut out = [0u8; DIGEST_LEN];
        out.copy_from_slice(&full[..DIGEST_LEN]);
        full.zeroize();
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slip39::tests::random_from;

    #[test]
    fn every_threshold_subset_recovers_and_fewer_fail_the_digest() {
        let secret: Vec<u8> = (100..132).collect();
        let random = random_from(7);
        let shares = split(3, 5, &secret, &random).unwrap();
        for a in 0..5 {
            for b in a + 1..5 {
                for c in b + 1..5 {
                    let pick: Vec<(u8, &[u8])> = [a, b, c]
                        .iter()
                        .map(|&i| (shares[i].0, &shares[i].1[..]))
                        .collect();
                    assert_eq!(&recover(3, &pick).unwrap()[..], &secret[..]);
                }
                // Two shares of a 3-of-5 interpolated as if they were enough.
                let pick: Vec<(u8, &[u8])> = [a, b]
                    .iter()
                    .map(|&i| (shares[i].0, &shares[i].1[..]))
                    .collect();
                assert_eq!(recover(2, &pick).unwrap_err(), Failure::Digest);
            }
        }
    }

    #[test]
    fn threshold_one_copies_the_secret() {
        let secret = [9u8; 16];
        let random = random_from(1);
        let shares = split(1, 1, &secret, &random).unwrap();
        assert_eq!(&shares[0].1[..], &secret[..]);
        assert_eq!(
            &recover(1, &[(0, &shares[0].1[..])]).unwrap()[..],
            &secret[..]
        );
    }
}
