//! ECDH key agreement (`CKM_ECDH1_DERIVE`, `CKM_ECDH1_COFACTOR_DERIVE`): the shared x-coordinate of an EC scalar and a peer's point, raw (`CKD_NULL`) or through the ANSI X9.63 KDF (`CKD_SHAx_KDF`).
//!
//! The curve arithmetic is RustCrypto's (`elliptic_curve::ecdh`); the KDF
//! is the X9.63 counter construction over the `sha1`/`sha2` hashes. Every
//! secret (the scalar's copy, the shared point, the KDF's blocks) lives on
//! the wiped secret stack or in the locked arena, where the result is
//! written.
//!
//! The curves here all have cofactor 1, so the cofactor variant computes the
//! same secret. A curve is added with one arm in [`Curve::of`] (and one in
//! the `match` of [`shared_x`] naming its crate).

#![forbid(unsafe_code)]

use sha2::Digest;
use zeroize::Zeroize;

use crate::ck::*;
use crate::error::{Error, Result};
use crate::secure::{self, SecretBytes};
use crate::types::{HmacHash as Hash, KeyType};

/// The curves ECDH runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    K256,
    P256,
    P384,
    P521,
}

impl Curve {
    /// The curve of a key type; `None` for keys that do no ECDH.
    pub fn of(kt: KeyType) -> Option<Curve> {
        match kt {
            KeyType::Secp256k1 => Some(Curve::K256),
            KeyType::P256 => Some(Curve::P256),
            KeyType::P384 => Some(Curve::P384),
            KeyType::P521 => Some(Curve::P521),
            _ => None,
        }
    }

    /// The length of a field element: of the raw shared secret, and of each
    /// coordinate of a point.
    pub fn field_len(self) -> usize {
        match self {
            Curve::K256 | Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Curve::K256 => "secp256k1",
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }
}

/// The key derivation function applied to the shared secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    /// `CKD_NULL`: the x-coordinate itself.
    Null,
    /// `CKD_SHAx_KDF`: ANSI X9.63 with this hash.
    X963(Hash),
}

impl Kdf {
    /// The KDF a `CK_ECDH1_DERIVE_PARAMS.kdf` names; `None` for one not
    /// implemented (the ASN.1 and concatenation variants of SHA-1, SP 800-56
    /// and SHA-3 KDFs).
    pub fn from_ck(kdf: CK_ULONG) -> Option<Kdf> {
        Some(match kdf {
            CKD_NULL => Kdf::Null,
            CKD_SHA1_KDF => Kdf::X963(Hash::Sha1),
            CKD_SHA224_KDF => Kdf::X963(Hash::Sha224),
            CKD_SHA256_KDF => Kdf::X963(Hash::Sha256),
            CKD_SHA384_KDF => Kdf::X963(Hash::Sha384),
            CKD_SHA512_KDF => Kdf::X963(Hash::Sha512),
            _ => return None,
        })
    }
}

fn param_invalid(why: String) -> Error {
    Error::with(CKR_MECHANISM_PARAM_INVALID, format!("ECDH: {why}"))
}

/// The peer's public point as SEC1 bytes: `pPublicData` may hold the point
/// itself (uncompressed `04 || X || Y`, or compressed) or, as some clients
/// send it (the value of `CKA_EC_POINT`), a DER OCTET STRING wrapping it.
pub fn peer_point(curve: Curve, public: &[u8]) -> Result<&[u8]> {
    let n = curve.field_len();
    match super::sec1_point(public, n) {
        Some(p) => Ok(p),
        _ => Err(param_invalid(format!(
            "pPublicData has {} bytes, which is no {} point: give the peer's public point \
             uncompressed ({} bytes: 04 || X || Y), compressed ({} bytes), or as the DER OCTET \
             STRING of its CKA_EC_POINT",
            public.len(),
            curve.name(),
            2 * n + 1,
            n + 1
        ))),
    }
}

/// Writes the x-coordinate of `scalar · peer` (`field_len` bytes) into
/// `out`. A peer point that is not on the curve, or the identity, is
/// `CKR_MECHANISM_PARAM_INVALID`: it is part of the mechanism's parameter.
/// Runs on the secret stack (the caller's `confined_at`).
fn shared_x(curve: Curve, scalar: &[u8], peer: &[u8], out: &mut SecretBytes) -> Result<()> {
    let bad_key = || Error::with(CKR_GENERAL_ERROR, "ECDH: the EC scalar is out of range");
    let bad_point = || {
        param_invalid(format!(
            "the peer's public point is not on {} (or is the point at infinity): check that \
             pPublicData is the other party's {} public key",
            curve.name(),
            curve.name()
        ))
    };
    macro_rules! agree {
        ($krate:ident) => {{
            use $krate::elliptic_curve::ecdh::diffie_hellman;
            let peer = $krate::PublicKey::from_sec1_bytes(peer).map_err(|_| bad_point())?;
            let mut repr = $krate::FieldBytes::try_from(scalar).map_err(|_| bad_key())?;
            let d = Option::<$krate::NonZeroScalar>::from($krate::NonZeroScalar::from_repr(
                repr.clone(),
            ));
            repr.as_mut_slice().zeroize();
            let d = d.ok_or_else(bad_key)?;
            let shared = diffie_hellman(d, peer.as_affine());
            if !out.push(shared.raw_secret_bytes()) {
                return Err(Error::with(CKR_HOST_MEMORY, "ECDH: no room for the secret"));
            }
            Ok(())
        }};
    }
    match curve {
        Curve::K256 => agree!(k256),
        Curve::P256 => agree!(p256),
        Curve::P384 => agree!(p384),
        Curve::P521 => agree!(p521),
    }
}

/// ANSI X9.63 KDF (SEC 1 v2 §3.6.1): `out` is the first bytes of
/// `H(Z || 00000001 || SharedInfo) || H(Z || 00000002 || SharedInfo) || …`.
fn x963<D: Digest>(z: &[u8], shared_info: &[u8], out: &mut [u8]) {
    let block_len = <D as Digest>::output_size();
    for (i, chunk) in out.chunks_mut(block_len).enumerate() {
        let mut h = D::new();
        h.update(z);
        h.update(((i + 1) as u32).to_be_bytes());
        h.update(shared_info);
        let mut block = h.finalize();
        chunk.copy_from_slice(&block[..chunk.len()]);
        block.as_mut_slice().zeroize();
    }
}

/// Applies an X9.63 KDF with `hash`.
pub fn x963_kdf(hash: Hash, z: &[u8], shared_info: &[u8], out: &mut [u8]) {
    match hash {
        Hash::Sha1 => x963::<sha1::Sha1>(z, shared_info, out),
        Hash::Sha224 => x963::<sha2::Sha224>(z, shared_info, out),
        Hash::Sha256 => x963::<sha2::Sha256>(z, shared_info, out),
        Hash::Sha384 => x963::<sha2::Sha384>(z, shared_info, out),
        Hash::Sha512 => x963::<sha2::Sha512>(z, shared_info, out),
    }
}

/// The longest key ECDH makes, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// ECDH of `scalar` (big-endian, `field_len` bytes) with the peer's point
/// (already through [`peer_point`]), then `kdf`: a key of `len` bytes in the
/// locked arena. With `CKD_NULL`, `len` may not exceed the shared secret and
/// a shorter key keeps its last bytes (as SoftHSM and NSS do); a KDF makes
/// exactly `len` bytes.
pub fn derive(
    curve: Curve,
    scalar: &[u8],
    peer: &[u8],
    kdf: Kdf,
    shared_info: &[u8],
    len: usize,
) -> Result<SecretBytes> {
    let n = curve.field_len();
    if len == 0 || len > MAX_KEY_LEN || (kdf == Kdf::Null && len > n) {
        return Err(Error::with(
            CKR_TEMPLATE_INCONSISTENT,
            format!(
                "ECDH: a key of {len} bytes cannot be made: {}",
                if kdf == Kdf::Null {
                    format!(
                        "with CKD_NULL the key is at most the {n}-byte shared secret (ask a KDF, \
                         e.g. CKD_SHA256_KDF, for longer keys)"
                    )
                } else {
                    format!("CKA_VALUE_LEN must be 1 to {MAX_KEY_LEN}")
                }
            ),
        ));
    }
    if kdf == Kdf::Null && !shared_info.is_empty() {
        return Err(param_invalid(
            "CKD_NULL takes no shared data: pass ulSharedDataLen 0 (or choose a KDF)".into(),
        ));
    }
    let host = |m: String| Error::with(CKR_HOST_MEMORY, m);
    let mut z = SecretBytes::with_capacity(n).map_err(host)?;
    let mut key = SecretBytes::with_capacity(len).map_err(host)?;
    super::warm_up();
    secure::confined_at(secure::Depth::Deep, || {
        shared_x(curve, scalar, peer, &mut z)?;
        match kdf {
            Kdf::Null => {
                key.push(&z[n - len..]);
            }
            Kdf::X963(hash) => {
                x963_kdf(hash, &z, shared_info, &mut key.spare()[..len]);
                key.grow(len);
            }
        }
        Ok::<(), Error>(())
    })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::super::unhex;
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// RFC 5903 §8.1 (256-bit random ECP group): both parties' scalars and
    /// points, and the shared x-coordinate.
    #[test]
    fn p256_agrees_with_rfc5903() {
        let i = unhex("c88f01f510d9ac3f70a292daa2316de544e9aab8afe84049c62a9c57862d1433");
        let gix = "dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180";
        let giy = "5271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3";
        let r = unhex("c6ef9c5d78ae012a011164acb397ce2088685d8f06bf9be0b283ab46476bee53");
        let grx = "d12dfb5289c8d4f81208b70270398c342296970a0bccb74c736fc7554494bf63";
        let gry = "56fbf3ca366cc23e8157854c13c58d6aac23f046ada30f8353e74f33039872ab";
        let gir = "d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de";
        let gr = unhex(&format!("04{grx}{gry}"));
        let gi = unhex(&format!("04{gix}{giy}"));
        let a = derive(Curve::P256, &i, &gr, Kdf::Null, &[], 32).unwrap();
        let b = derive(Curve::P256, &r, &gi, Kdf::Null, &[], 32).unwrap();
        assert_eq!(hex(&a), gir);
        assert_eq!(hex(&b), gir);
        // CKA_VALUE_LEN shorter than the secret keeps its last bytes.
        let short = derive(Curve::P256, &i, &gr, Kdf::Null, &[], 16).unwrap();
        assert_eq!(hex(&short), gir[32..]);
    }

    /// NIST CAVP ECC CDH primitive test vectors (SP 800-56A, KAS_ECC_CDH_PrimitiveTest.txt),
    /// [P-256] COUNT = 0.
    #[test]
    fn p256_agrees_with_cavp_cdh_count_0() {
        let qcavs = unhex(concat!(
            "04",
            "700c48f77f56584c5cc632ca65640db91b6bacce3a4df6b42ce7cc838833d287",
            "db71e509e3fd9b060ddb20ba5c51dcc5948d46fbf640dfe0441782cab85fa4ac"
        ));
        let d = unhex("7d7dc5f71eb29ddaf80d6214632eeae03d9058af1fb6d22ed80badb62bc1a534");
        let z = derive(Curve::P256, &d, &qcavs, Kdf::Null, &[], 32).unwrap();
        assert_eq!(
            hex(&z),
            "46fc62106420ff012e54a434fbdd2d25ccc5852060561e68040dd7778997bd7b"
        );
    }

    /// secp256k1: both sides of a pair of keys agree (no published vector
    /// set; the points come from k256's own public-key computation).
    #[test]
    fn secp256k1_both_sides_agree() {
        use k256::elliptic_curve::sec1::ToSec1Point;
        let a = [0x11u8; 32];
        let b = [0x22u8; 32];
        let pa = k256::SecretKey::from_slice(&a).unwrap().public_key();
        let pb = k256::SecretKey::from_slice(&b).unwrap().public_key();
        let pa = pa.to_sec1_point(false).as_bytes().to_vec();
        let pb = pb.to_sec1_point(true).as_bytes().to_vec();
        let x = derive(Curve::K256, &a, &pb, Kdf::Null, &[], 32).unwrap();
        let y = derive(Curve::K256, &b, &pa, Kdf::Null, &[], 32).unwrap();
        assert_eq!(&x[..], &y[..]);
    }

    /// P-384 and P-521 (the arms a helper's new asset types will use): both
    /// sides of a pair of keys agree, and the secret is a field element long.
    #[test]
    fn p384_and_p521_both_sides_agree() {
        macro_rules! both {
            ($krate:ident, $curve:expr, $n:expr) => {{
                use $krate::elliptic_curve::sec1::ToSec1Point;
                let (mut a, mut b) = ([0u8; $n], [0u8; $n]);
                a[$n - 1] = 0x11;
                b[$n - 1] = 0x22;
                let point = |k: &[u8]| {
                    let pk = $krate::SecretKey::from_slice(k).unwrap().public_key();
                    pk.to_sec1_point(false).as_bytes().to_vec()
                };
                let (pa, pb) = (point(&a), point(&b));
                let x = derive($curve, &a, &pb, Kdf::Null, &[], $n).unwrap();
                let y = derive($curve, &b, &pa, Kdf::Null, &[], $n).unwrap();
                assert_eq!(&x[..], &y[..]);
                assert_eq!(x.len(), $curve.field_len());
            }};
        }
        both!(p384, Curve::P384, 48);
        both!(p521, Curve::P521, 66);
    }

    /// ANSI X9.63 KDF vectors from NIST CAVS 12.0 "ansx963_2001.rsp"
    /// (the SP 800-135 component test), first COUNT of two parameter sets.
    #[test]
    fn x963_kdf_matches_cavs() {
        // [SHA-1] [shared secret length = 192] [SharedInfo length = 0]
        // [key data length = 128] COUNT = 0
        let z = unhex("1c7d7b5f0597b03d06a018466ed1a93e30ed4b04dc64ccdd");
        let mut out = [0u8; 16];
        x963_kdf(Hash::Sha1, &z, &[], &mut out);
        assert_eq!(hex(&out), "bf71dffd8f4d99223936beb46fee8ccc");
        // [SHA-256] [shared secret length = 192] [SharedInfo length = 0]
        // [key data length = 128] COUNT = 0
        let z = unhex("96c05619d56c328ab95fe84b18264b08725b85e33fd34f08");
        let mut out = [0u8; 16];
        x963_kdf(Hash::Sha256, &z, &[], &mut out);
        assert_eq!(hex(&out), "443024c3dae66b95e6f5670601558f71");
        // [SHA-256] [shared secret length = 192] [SharedInfo length = 128]
        // [key data length = 1024] COUNT = 0
        let z = unhex("22518b10e70f2a3f243810ae3254139efbee04aa57c7af7d");
        let info = unhex("75eef81aa3041e33b80971203d2c0c52");
        let mut out = [0u8; 128];
        x963_kdf(Hash::Sha256, &z, &info, &mut out);
        assert_eq!(
            hex(&out),
            concat!(
                "c498af77161cc59f2962b9a713e2b215152d139766ce34a776df11866a69bf2e",
                "52a13d9c7c6fc878c50c5ea0bc7b00e0da2447cfd874f6cf92f30d0097111485",
                "500c90c3af8b487872d04685d14c8d1dc8d7fa08beb0ce0ababc11f0bd496269",
                "142d43525a78e5bc79a17f59676a5706dc54d54d4d1f0bd7e386128ec26afc21"
            )
        );
    }

    #[test]
    fn the_peer_point_comes_raw_or_in_der() {
        let raw = [[4u8].as_slice(), &[7u8; 64]].concat();
        assert_eq!(peer_point(Curve::P256, &raw).unwrap(), &raw[..]);
        let der = [[4u8, 65].as_slice(), &raw].concat();
        assert_eq!(peer_point(Curve::P256, &der).unwrap(), &raw[..]);
        let compressed = [[2u8].as_slice(), &[7u8; 32]].concat();
        assert_eq!(
            peer_point(Curve::P256, &compressed).unwrap(),
            &compressed[..]
        );
        let p521 = [[4u8].as_slice(), &[7u8; 132]].concat();
        let der_long = [[4u8, 0x81, 133].as_slice(), &p521].concat();
        assert_eq!(peer_point(Curve::P521, &der_long).unwrap(), &p521[..]);
        for bad in [vec![], vec![4u8; 64], vec![4u8, 64, 4], raw[..33].to_vec()] {
            let e = peer_point(Curve::P256, &bad).unwrap_err();
            assert_eq!(e.rv, CKR_MECHANISM_PARAM_INVALID, "{bad:?}");
        }
    }

    #[test]
    fn off_curve_and_identity_points_are_refused() {
        let d = [0x11u8; 32];
        let off = [[4u8].as_slice(), &[7u8; 64]].concat();
        for kt in [Curve::P256, Curve::K256] {
            let e = derive(kt, &d, &off, Kdf::Null, &[], 32).unwrap_err();
            assert_eq!(e.rv, CKR_MECHANISM_PARAM_INVALID);
            let zero = [[4u8].as_slice(), &[0u8; 64]].concat();
            let e = derive(kt, &d, &zero, Kdf::Null, &[], 32).unwrap_err();
            assert_eq!(e.rv, CKR_MECHANISM_PARAM_INVALID);
        }
    }

    #[test]
    fn lengths_and_kdf_parameters_are_checked() {
        let i = unhex("c88f01f510d9ac3f70a292daa2316de544e9aab8afe84049c62a9c57862d1433");
        let gr = unhex(concat!(
            "04d12dfb5289c8d4f81208b70270398c342296970a0bccb74c736fc7554494bf63",
            "56fbf3ca366cc23e8157854c13c58d6aac23f046ada30f8353e74f33039872ab"
        ));
        let e = derive(Curve::P256, &i, &gr, Kdf::Null, &[], 33).unwrap_err();
        assert_eq!(e.rv, CKR_TEMPLATE_INCONSISTENT);
        let e = derive(Curve::P256, &i, &gr, Kdf::Null, b"x", 32).unwrap_err();
        assert_eq!(e.rv, CKR_MECHANISM_PARAM_INVALID);
        // A KDF output is the X9.63 KDF of the raw secret.
        let kdf = Kdf::X963(Hash::Sha256);
        let k = derive(Curve::P256, &i, &gr, kdf, b"info", 40).unwrap();
        let z = derive(Curve::P256, &i, &gr, Kdf::Null, &[], 32).unwrap();
        let mut want = [0u8; 40];
        x963_kdf(Hash::Sha256, &z, b"info", &mut want);
        assert_eq!(&k[..], &want[..]);
        assert_eq!(Kdf::from_ck(CKD_SHA1_KDF_ASN1), None);
    }
}
