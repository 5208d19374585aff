//! Reproduces the search that found the P-256 retry vector of
//! tests/vectors/derivation.json: an (asset, counter) under root A
//! (bytes 0x00..0x1f) whose first HKDF attempt is >= the P-256 order n, so
//! the scalar comes from attempt 1. That happens with probability ~2^-32.
//!
//! `cargo run --release --example find_p256_retry` finds `retry-0` at counter
//! 19631603 in about ten seconds. The software PRF here exists only to search
//! a public test root; the provider computes the PRF inside the backing HSM.

use hmac::{Hmac, KeyInit, Mac};
use p11derive::derive::{expand, prk_input, AssetId};
use sha2::Sha256;

const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

fn main() {
    let root: Vec<u8> = (0u8..32).collect();
    let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(&root).expect("any key length");
    let info = b"p11derive-v1 key p256\x00";
    for n in 0u32.. {
        let asset = AssetId::new(&format!("retry-{n}")).expect("valid id");
        for counter in 1u32..=u32::MAX {
            let mut mac = keyed.clone();
            mac.update(&prk_input(&asset, counter));
            let prk: [u8; 32] = mac.finalize().into_bytes().into();
            let k = expand(&prk, info).expect("locked memory for the candidate");
            if k[..4] == [0xff; 4] && k[..] >= P256_N[..] {
                let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
                println!("asset {asset} counter {counter}: attempt 0 = {hex} >= n");
                return;
            }
        }
    }
}
