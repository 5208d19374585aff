//! The master secret's encryption: SLIP-39's 4-round Feistel network over PBKDF2-HMAC-SHA256.
//!
//! Round `i` computes `F = PBKDF2(password = i || passphrase, salt = prefix
//! || R, iterations = (10000 << e) / 4, length = |R|)`, with the prefix
//! "shamir" || identifier (2 bytes) for a non-extendable set and empty for an
//! extendable one. The halves, the round outputs and the password live in
//! locked memory, and PBKDF2 runs on a secret stack.

use sha2::Sha256;
use zeroize::Zeroize;

use super::copy;
use crate::secure::{self, SecretBytes};

const BASE_ITERATIONS: u32 = 10_000;
const ROUNDS: u8 = 4;
const CUSTOMIZATION: &[u8] = b"shamir";

/// The public parameters that key the cipher besides the passphrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub identifier: u16,
    pub extendable: bool,
    pub iteration_exponent: u8,
}

impl Params {
    fn iterations(&self) -> u32 {
        (BASE_ITERATIONS << self.iteration_exponent) / u32::from(ROUNDS)
    }

    fn salt_prefix(&self) -> Vec<u8> {
        if self.extendable {
            Vec::new()
        } else {
            let mut p = CUSTOMIZATION.to_vec();
            p.extend_from_slice(&self.identifier.to_be_bytes());
            p
        }
    }
}

/// Encrypts the master secret (even length) into a new buffer.
pub fn encrypt(master: &[u8], passphrase: &[u8], params: Params) -> Result<SecretBytes, String> {
    feistel(master, passphrase, params, [0, 1, 2, 3])
}

/// Decrypts an encrypted master secret. Any passphrase gives some result:
/// a wrong one is not detected here.
pub fn decrypt(encrypted: &[u8], passphrase: &[u8], params: Params) -> Result<SecretBytes, String> {
    feistel(encrypted, passphrase, params, [3, 2, 1, 0])
}

fn feistel(
    input: &[u8],
    passphrase: &[u8],
    params: Params,
    order: [u8; ROUNDS as usize],
) -> Result<SecretBytes, String> {
    if input.is_empty() || !input.len().is_multiple_of(2) {
        return Err(format!(
            "a SLIP-39 secret has an even number of bytes, not {}",
            input.len()
        ));
    }
    let half = input.len() / 2;
    let prefix = params.salt_prefix();
    let mut left = copy(&input[..half])?;
    let mut right = copy(&input[half..])?;
    let mut password = SecretBytes::with_capacity(1 + passphrase.len())?;
    password.push(&[0]);
    password.push(passphrase);
    let mut salt = SecretBytes::with_capacity(prefix.len() + half)?;
    let mut round = copy(&input[..half])?;
    for i in order {
        password[0] = i;
        salt.truncate(0);
        salt.push(&prefix);
        salt.push(&right);
        secure::confined(|| {
            pbkdf2::pbkdf2_hmac::<Sha256>(&password, &salt, params.iterations(), &mut round)
        });
        // (L, R) <- (R, L xor F(R)).
        for (l, f) in left.iter_mut().zip(round.iter()) {
            *l ^= f;
        }
        std::mem::swap(&mut left, &mut right);
    }
    round.zeroize();
    // The output is R || L.
    let mut out = SecretBytes::with_capacity(input.len())?;
    out.push(&right);
    out.push(&left);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decrypt_inverts_encrypt_for_both_salts() {
        let master: Vec<u8> = (0..32).collect();
        for extendable in [false, true] {
            let params = Params {
                identifier: 0x1234,
                extendable,
                iteration_exponent: 0,
            };
            let c = encrypt(&master, b"TREZOR", params).unwrap();
            assert_ne!(&c[..], &master[..]);
            let p = decrypt(&c, b"TREZOR", params).unwrap();
            assert_eq!(&p[..], &master[..]);
            let wrong = decrypt(&c, b"trezor", params).unwrap();
            assert_ne!(
                &wrong[..],
                &master[..],
                "a wrong passphrase gives another secret"
            );
        }
        let a = encrypt(
            &master,
            b"",
            Params {
                identifier: 1,
                extendable: false,
                iteration_exponent: 0,
            },
        )
        .unwrap();
        let b = encrypt(
            &master,
            b"",
            Params {
                identifier: 2,
                extendable: false,
                iteration_exponent: 0,
            },
        )
        .unwrap();
        assert_ne!(&a[..], &b[..], "the identifier salts a non-extendable set");
        assert!(encrypt(
            &master[..3],
            b"",
            Params {
                identifier: 0,
                extendable: true,
                iteration_exponent: 0
            }
        )
        .is_err());
    }
}
