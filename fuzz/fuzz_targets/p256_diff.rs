//! P-256 signing against RustCrypto: `p256_base`'s `k·G` and signatures must
//! equal `p256`'s on any scalar and digest.
//!
//! Input: 32 bytes of scalar (big-endian, reduced mod n; zero is skipped),
//! 32 bytes of digest, then one optional flags byte (bit 0: use n − scalar,
//! so the fuzzer reaches the top of the range as easily as the bottom).
//! Missing bytes are zeros. The scalar is used twice: as a nonce, `x(k·G)`
//! against `ProjectivePoint::mul_by_generator`; as a key, `sign` against
//! `p256::ecdsa::SigningKey::sign_prehash` on the digest (RFC 6979).

#![no_main]

use libfuzzer_sys::fuzz_target;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::elliptic_curve::group::Group;
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::sec1::ToSec1Point;

fuzz_target!(|data: &[u8]| {
    let mut input = [0u8; 65];
    let n = data.len().min(input.len());
    input[..n].copy_from_slice(&data[..n]);
    let mut bytes = p256::FieldBytes::default();
    bytes.copy_from_slice(&input[..32]);
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&input[32..64]);
    let mut s = <p256::Scalar as Reduce<p256::FieldBytes>>::reduce(&bytes);
    if input[64] & 1 == 1 {
        s = -s;
    }
    let Some(k) = Option::<p256::NonZeroScalar>::from(p256::NonZeroScalar::new(s)) else {
        return;
    };

    let want = p256::ProjectivePoint::mul_by_generator(&k)
        .to_affine()
        .to_sec1_point(false);
    let want_x = want.x().expect("k·G of a non-zero k is finite");
    assert_eq!(
        p11derive::mechanisms::p256_base::base_mul_x(&k).as_slice(),
        want_x.as_slice(),
        "x(k·G) differs for k = {:x?}",
        bytes
    );

    let key = p256::ecdsa::SigningKey::from(k);
    let want: p256::ecdsa::Signature = key.sign_prehash(&digest).expect("RFC 6979 signs");
    let got = p11derive::mechanisms::p256_base::sign(&k, &digest).expect("p256_base signs");
    assert_eq!(
        got.as_slice(),
        want.to_bytes().as_slice(),
        "signature differs for d = {:x?}, digest = {:x?}",
        bytes,
        digest
    );
});
