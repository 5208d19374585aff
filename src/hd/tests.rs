//! The published BIP-32 and SLIP-10 test vectors (tests/vectors/{bip32,slip10}.json), path parsing, and the refusals.

use serde_json::Value;

use super::ckd::hmac512;
use super::serial::decode_fields;
use super::*;
use crate::ck::*;
use crate::mechanisms::unhex;
use crate::secure;
use crate::store::hex;
use crate::types::KeyType;

fn vectors(name: &str) -> Value {
    let file = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
}

/// The master extended key of a seed (test code only: the provider's
/// masters are asset versions' keys): HMAC-SHA512 keyed by the curve's
/// name, and SLIP-10's retry with `S := I` while `I_L` is not a scalar.
fn master(kt: KeyType, seed: &[u8]) -> ExtendedPrivate {
    let salt: &[u8] = match kt {
        KeyType::Secp256k1 => b"Bitcoin seed",
        KeyType::P256 => b"Nist256p1 seed",
        KeyType::Ed25519 => b"ed25519 seed",
        _ => unreachable!(),
    };
    let mut data = seed.to_vec();
    loop {
        let i = hmac512(salt, &[&data]);
        let il: [u8; 32] = i[..32].try_into().unwrap();
        let valid = match kt {
            KeyType::Secp256k1 => k256::NonZeroScalar::from_repr(il.into()).is_some().into(),
            KeyType::P256 => p256::NonZeroScalar::from_repr(il.into()).is_some().into(),
            _ => true,
        };
        if valid {
            return ExtendedPrivate {
                key: Secret32::copy_of(&il).unwrap(),
                chain: Secret32::copy_of(&i[32..].try_into().unwrap()).unwrap(),
                depth: 0,
                parent_fingerprint: [0; 4],
                child_number: 0,
            };
        }
        assert_ne!(kt, KeyType::Secp256k1, "BIP-32 has no master retry");
        data = i.to_vec();
    }
}

/// For each depth of a chain of keys, each the previous one's child: the
/// public key the last non-hardened run below a hardened ancestor (or the
/// master) derives, which must equal the private derivation's.
fn check_public_derivation(kt: KeyType, path: &Path, pubs: &[ExtendedPublic], x: &ExtendedPublic) {
    let from = path
        .indices()
        .iter()
        .rposition(|&i| is_hardened(i))
        .map_or(0, |p| p + 1);
    if from == path.len() {
        return; // a hardened child: private derivation only
    }
    let rest = Path::from_indices(
        &path.indices()[from..]
            .iter()
            .map(|&i| u64::from(i))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let by_public = derive_public(kt, &pubs[from], &rest).unwrap();
    assert_eq!(
        &by_public, x,
        "public derivation of {path} from depth {from}"
    );
}

#[test]
fn bip32_vectors_1_to_4() {
    let kt = KeyType::Secp256k1;
    let all = vectors("bip32.json");
    let mut entries = 0;
    for v in all["vectors"].as_array().unwrap() {
        let name = s(v, "name");
        let m = master(kt, &unhex(s(v, "seed")));
        let mut privs: Vec<ExtendedPrivate> = Vec::new();
        let mut pubs: Vec<ExtendedPublic> = Vec::new();
        for e in v["chain"].as_array().unwrap() {
            let path = Path::parse(s(e, "path")).unwrap();
            let what = format!("BIP-32 vector {name}, {path}");
            let x = derive_private(kt, &m.key[..], &m.chain[..], &path).unwrap();
            // The xprv holds the private key, chain code and position.
            let f = decode_fields(s(e, "xprv")).unwrap();
            assert_eq!(f.version, XPRV_VERSION, "{what}");
            assert_eq!(f.key33[0], 0, "{what}");
            assert_eq!(hex(&x.key[..]), hex(&f.key33[1..]), "{what}: private key");
            assert_eq!(hex(&x.chain[..]), hex(&f.chain), "{what}: chain code");
            assert_eq!(usize::from(x.depth), path.len(), "{what}");
            assert_eq!(x.depth, f.depth, "{what}: depth");
            assert_eq!(
                x.parent_fingerprint, f.parent_fingerprint,
                "{what}: fingerprint"
            );
            assert_eq!(x.child_number, f.child_number, "{what}: child number");
            // The xpub: our serialization, and our reading of it.
            let p = public_of(kt, &x).unwrap();
            assert_eq!(p.key.len(), 65, "{what}");
            assert_eq!(xpub(kt, &p).unwrap(), s(e, "xpub"), "{what}: xpub");
            assert_eq!(parse_xpub(s(e, "xpub")).unwrap(), p, "{what}: parse_xpub");
            if let (Some(parent), Some(&last)) = (privs.last(), path.indices().last()) {
                // A child of the parent continues its depth and fingerprint.
                let one = Path::from_indices(&[u64::from(last)]).unwrap();
                let step = derive_private_from(kt, parent, &one).unwrap();
                assert_eq!(hex(&step.key[..]), hex(&x.key[..]), "{what}: one step");
                assert_eq!(public_of(kt, &step).unwrap(), p, "{what}: one step");
                let parent_pub = pubs.last().unwrap();
                assert_eq!(
                    fingerprint_of(kt, &parent_pub.key).unwrap(),
                    x.parent_fingerprint,
                    "{what}"
                );
                check_public_derivation(kt, &path, &pubs, &p);
            }
            privs.push(x);
            pubs.push(p);
            entries += 1;
        }
    }
    assert_eq!(entries, 6 + 6 + 2 + 3);
}

#[test]
fn bip32_vector_5_invalid_keys_are_refused() {
    let all = vectors("bip32.json");
    let invalid = all["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 16);
    for e in invalid {
        let (key, reason) = (s(e, "key"), s(e, "reason"));
        let err = parse_xpub(key).expect_err(reason);
        assert!(
            err.contains(key),
            "{reason}: the message names the key: {err}"
        );
        let expect = match reason {
            "invalid checksum" => "checksum",
            r if r.starts_with("zero depth") => "master key (depth 0)",
            r if r.starts_with("unknown") => "version bytes",
            "invalid pubkey prefix 04" | "invalid pubkey prefix 01" => "compressed key",
            r if r.starts_with("invalid pubkey 02") => "not a point",
            // Private keys and the rest: not an xpub at all.
            _ if key.starts_with("xprv") => "extended private key",
            _ => "",
        };
        assert!(err.contains(expect), "{reason}: {err}");
    }
}

#[test]
fn slip10_vectors_nist256p1_and_ed25519() {
    let all = vectors("slip10.json");
    let mut entries = 0;
    for v in all["vectors"].as_array().unwrap() {
        let name = s(v, "name");
        let kt = match s(v, "curve") {
            "nist256p1" => KeyType::P256,
            "ed25519" => KeyType::Ed25519,
            c => panic!("curve {c}"),
        };
        let m = master(kt, &unhex(s(v, "seed")));
        let mut pubs: Vec<ExtendedPublic> = Vec::new();
        for e in v["chain"].as_array().unwrap() {
            let path = Path::parse(s(e, "path")).unwrap();
            let what = format!("SLIP-10 vector {name}, {path}");
            let x = derive_private_from(kt, &m, &path).unwrap();
            assert_eq!(hex(&x.key[..]), s(e, "private"), "{what}: private key");
            assert_eq!(hex(&x.chain[..]), s(e, "chain_code"), "{what}: chain code");
            assert_eq!(hex(&x.parent_fingerprint), s(e, "fingerprint"), "{what}");
            assert_eq!(usize::from(x.depth), path.len(), "{what}");
            assert_eq!(x.child_number, path.indices().last().copied().unwrap_or(0));
            let p = public_of(kt, &x).unwrap();
            let shown = match kt {
                KeyType::Ed25519 => format!("00{}", hex(&p.key)),
                _ => {
                    assert_eq!(p.key.len(), 65, "{what}");
                    hex(&compressed(kt, &p.key).unwrap())
                }
            };
            assert_eq!(shown, s(e, "public"), "{what}: public key");
            if kt == KeyType::P256 && !path.is_empty() {
                check_public_derivation(kt, &path, &pubs, &p);
            }
            pubs.push(p);
            entries += 1;
        }
    }
    assert_eq!(entries, 6 + 6 + 3 + 1 + 6 + 6);
}

#[test]
fn secp256k1_and_p256_public_derivation_agree_over_a_long_path() {
    for kt in [KeyType::Secp256k1, KeyType::P256] {
        let m = master(kt, &[7; 32]);
        let path = Path::parse("m/1/2/3/4/5/6/7/8/9/10").unwrap();
        let by_private = public_of(kt, &derive_private_from(kt, &m, &path).unwrap()).unwrap();
        let mp = public_of(kt, &m).unwrap();
        assert_eq!(mp, master_public(&mp.key, &mp.chain));
        assert_eq!(derive_public(kt, &mp, &path).unwrap(), by_private);
        assert_eq!(by_private.depth, 10);
        assert_eq!(by_private.child_number, 10);
    }
}

#[test]
fn derived_keys_live_in_the_arena() {
    let m = master(KeyType::Secp256k1, &[1; 16]);
    let x = derive_private_from(KeyType::Secp256k1, &m, &Path::parse("m/0'/1").unwrap()).unwrap();
    let (start, len) = secure::region().unwrap();
    for a in [x.key.address(), x.chain.address()] {
        assert!((start..start + len).contains(&a));
    }
}

#[test]
fn paths_parse_and_show() {
    for (text, shown, indices) in [
        ("m", "m", vec![]),
        ("m/0", "m/0", vec![0]),
        (
            "m/44'/60'/0'/0/5",
            "m/44'/60'/0'/0/5",
            vec![44 | HARDENED, 60 | HARDENED, HARDENED, 0, 5],
        ),
        ("m/0h/1H/2", "m/0'/1'/2", vec![HARDENED, 1 | HARDENED, 2]),
        (
            "m/2147483647'/2147483647",
            "m/2147483647'/2147483647",
            vec![u32::MAX, 0x7fff_ffff],
        ),
    ] {
        let p = Path::parse(text).unwrap();
        assert_eq!(p.indices(), indices.as_slice(), "{text}");
        assert_eq!(p.to_string(), shown);
        assert_eq!(Path::parse(shown).unwrap(), p);
        assert_eq!(p.len(), indices.len());
        assert_eq!(p.is_empty(), indices.is_empty());
        let wide: Vec<u64> = indices.iter().map(|&i| u64::from(i)).collect();
        assert_eq!(Path::from_indices(&wide).unwrap(), p);
    }
    let deep = format!("m{}", "/1'".repeat(MAX_DEPTH));
    assert_eq!(Path::parse(&deep).unwrap().len(), MAX_DEPTH);
}

#[test]
fn bad_paths_are_refused_with_the_form() {
    for (text, says) in [
        ("", "does not start with m"),
        ("M/1", "does not start with m"),
        ("44'/0", "does not start with m"),
        ("m/", "level 1 is empty"),
        ("m//1", "level 1 is empty"),
        ("m/1/", "level 2 is empty"),
        ("m/2147483648", "too large"),
        ("m/2147483648'", "too large"),
        ("m/99999999999999999999999", "too large"),
        ("m/1x", "\"1x\" is not an index"),
        ("m/-1", "is not an index"),
        ("m/+1", "is not an index"),
        ("m/ 1", "is not an index"),
        ("m/1''", "is not an index"),
        ("m/'", "is not an index"),
        ("m/0x10", "is not an index"),
    ] {
        let err = Path::parse(text).expect_err(text);
        assert!(err.contains(says), "{text:?}: {err}");
        assert!(err.contains(&format!("{text:?}")), "{text:?}: {err}");
        if !err.contains("too large") {
            assert!(err.contains("m/44'/60'/0'/0/5"), "{text:?}: {err}");
        }
    }
    let too_deep = format!("m{}", "/1".repeat(MAX_DEPTH + 1));
    assert!(Path::parse(&too_deep)
        .unwrap_err()
        .contains("more than 255 levels"));
    assert!(Path::from_indices(&[1 << 32])
        .unwrap_err()
        .contains("below 2^32"));
    assert!(Path::from_indices(&[0; MAX_DEPTH + 1]).is_err());
    assert!(Path::from_indices(&[0; MAX_DEPTH]).is_ok());
}

#[test]
fn join_prefix_and_hardened() {
    let a = Path::parse("m/44'/60'").unwrap();
    let b = Path::parse("m/0/5").unwrap();
    let ab = a.join(&b).unwrap();
    assert_eq!(ab.to_string(), "m/44'/60'/0/5");
    assert!(ab.starts_with(&a));
    assert!(ab.starts_with(&Path::parse("m").unwrap()));
    assert!(!ab.starts_with(&b));
    assert!(ab.any_hardened() && a.any_hardened() && !b.any_hardened());
    let long = Path::from_indices(&[0; 200]).unwrap();
    assert!(long.join(&Path::from_indices(&[0; 55]).unwrap()).is_ok());
    let err = long
        .join(&Path::from_indices(&[0; 56]).unwrap())
        .unwrap_err();
    assert!(err.contains("256 levels deep"), "{err}");
}

#[test]
fn refusals_name_the_reason() {
    let path = |s: &str| Path::parse(s).unwrap();
    // Ed25519: hardened children only, no public derivation.
    let ed = master(KeyType::Ed25519, &[3; 32]);
    let e = derive_private_from(KeyType::Ed25519, &ed, &path("m/0'/5")).unwrap_err();
    assert_eq!(e.rv, CKR_MECHANISM_PARAM_INVALID);
    let msg = e.message.unwrap();
    assert!(
        msg.contains("SLIP-10") && msg.contains("hardened children only"),
        "{msg}"
    );
    assert!(msg.contains("write 5'") && msg.contains("level 2"), "{msg}");
    let ed_pub = public_of(KeyType::Ed25519, &ed).unwrap();
    let e = derive_public(KeyType::Ed25519, &ed_pub, &path("m/1")).unwrap_err();
    assert_eq!(e.rv, CKR_MECHANISM_PARAM_INVALID);
    assert!(e
        .message
        .unwrap()
        .contains("no public derivation for Ed25519"));
    // Public derivation cannot reach a hardened child.
    let k = master(KeyType::Secp256k1, &[4; 32]);
    let k_pub = public_of(KeyType::Secp256k1, &k).unwrap();
    let e = derive_public(KeyType::Secp256k1, &k_pub, &path("m/1/2'")).unwrap_err();
    assert_eq!(e.rv, CKR_MECHANISM_PARAM_INVALID);
    let msg = e.message.unwrap();
    assert!(msg.contains("2'") && msg.contains("level 2") && msg.contains("private key"));
    // Secret-key types have no HD tree; xpubs are secp256k1 only.
    for kt in [KeyType::Aes256, KeyType::HmacSha256] {
        let e = derive_private(kt, &[1; 32], &[2; 32], &path("m/0'")).unwrap_err();
        assert_eq!(e.rv, CKR_KEY_TYPE_INCONSISTENT);
        assert_eq!(public_of(kt, &k).unwrap_err().rv, CKR_KEY_TYPE_INCONSISTENT);
        let e = derive_public(kt, &k_pub, &path("m/0")).unwrap_err();
        assert_eq!(e.rv, CKR_KEY_TYPE_INCONSISTENT);
    }
    let p = master(KeyType::P256, &[5; 32]);
    let p_pub = public_of(KeyType::P256, &p).unwrap();
    assert_eq!(
        xpub(KeyType::P256, &p_pub).unwrap_err().rv,
        CKR_KEY_TYPE_INCONSISTENT
    );
    assert_eq!(
        xpub(KeyType::Ed25519, &ed_pub).unwrap_err().rv,
        CKR_KEY_TYPE_INCONSISTENT
    );
    // Depth: at most 255 below the master, counted from the parent's depth.
    let deep = derive_private_from(KeyType::Secp256k1, &k, &path("m/1/2")).unwrap();
    let e = derive_private_from(
        KeyType::Secp256k1,
        &deep,
        &Path::from_indices(&[0; MAX_DEPTH - 1]).unwrap(),
    )
    .unwrap_err();
    assert_eq!(e.rv, CKR_MECHANISM_PARAM_INVALID);
    assert!(e.message.unwrap().contains("reaches depth 256"));
    // A master that is not a scalar of its curve, or of the wrong length.
    let e = derive_private(KeyType::Secp256k1, &[0; 32], &[0; 32], &path("m/0")).unwrap_err();
    assert_eq!(e.rv, CKR_GENERAL_ERROR);
    let e = derive_private(KeyType::Secp256k1, &[1; 31], &[0; 32], &path("m")).unwrap_err();
    assert!(e.message.unwrap().contains("32 bytes each"));
}

#[test]
fn an_empty_path_gives_the_key_itself() {
    let k = master(KeyType::Secp256k1, &[9; 32]);
    let same = derive_private_from(KeyType::Secp256k1, &k, &Path::default()).unwrap();
    assert_eq!(hex(&same.key[..]), hex(&k.key[..]));
    assert_eq!(same.depth, 0);
    let p = public_of(KeyType::Secp256k1, &k).unwrap();
    assert_eq!(
        derive_public(KeyType::Secp256k1, &p, &Path::default()).unwrap(),
        p
    );
}
