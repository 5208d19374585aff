//! Unit tests of approvers' keys: round trips with the `openssl` CLI, RFC 8032 vectors, refusals.

use super::*;
use std::path::Path;
use std::process::Command;

/// Whether the `openssl` CLI can be run; tests that need it skip (with a note) when not.
fn have_openssl(test: &str) -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("{test}: skipped, `openssl` is not on PATH");
    }
    ok
}

/// Runs `openssl ARGS` in `dir`, asserts it succeeded, returns its stdout.
fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Whether `openssl ARGS` in `dir` exits with status 0.
fn openssl_ok(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl")
        .status
        .success()
}

/// The text of `dir/name`.
fn read_text(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).expect("read file")
}

/// The bytes of `dir/name`.
fn read_bytes(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).expect("read file")
}

/// `bytes` with bit 0 of byte `i` flipped.
fn flipped(bytes: &[u8], i: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[i] ^= 1;
    v
}

/// Hex test helper (either case accepted by `from_hex`).
fn hex(s: &str) -> Vec<u8> {
    from_hex(s).expect("hex literal")
}

/// The message the round-trip tests sign.
const MESSAGE: &[u8] = b"approve request 42: export key 'payments' to HSM B\n";

/// Generates a key of `kind` in `dir/name` with openssl, returns the approver key from its `-pubout`.
fn gen_key(dir: &Path, name: &str, kind: KeyKind) -> ApproverKey {
    match kind {
        KeyKind::Ed25519 => openssl(dir, &["genpkey", "-algorithm", "ed25519", "-out", name]),
        KeyKind::P256 => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ],
        ),
    };
    let pubname = format!("{name}.pub");
    openssl(dir, &["pkey", "-in", name, "-pubout", "-out", &pubname]);
    let key = ApproverKey::from_pem(&read_text(dir, &pubname)).expect("openssl public key");
    assert_eq!(key.kind(), kind);
    key
}

/// The checks common to both kinds: openssl's keys and signatures round-trip.
fn openssl_round_trip(kind: KeyKind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let key = gen_key(d, "k.pem", kind);
    let other = gen_key(d, "other.pem", kind);

    // The stored DER is openssl's own DER of the key; PEM and DER round-trip.
    openssl(
        d,
        &[
            "pkey", "-in", "k.pem", "-pubout", "-outform", "DER", "-out", "k.der",
        ],
    );
    assert_eq!(key.der(), read_bytes(d, "k.der").as_slice());
    assert_eq!(ApproverKey::from_pem(&key.to_pem()).unwrap(), key);
    assert_eq!(ApproverKey::from_der(key.der()).unwrap(), key);
    assert_eq!(key.to_pem(), read_text(d, "k.pem.pub"));
    // PEM with surrounding text and CRLF line ends.
    let crlf = format!(
        "approver: alice\r\n{}\r\ntrailing note\r\n",
        key.to_pem().replace('\n', "\r\n")
    );
    assert_eq!(ApproverKey::from_pem(&crlf).unwrap(), key);

    // The fingerprint is SHA-256 of the DER, as `openssl dgst -sha256` computes it.
    let fp = key.fingerprint();
    assert_eq!(fp.len(), 64);
    assert!(fp
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let dgst = String::from_utf8(openssl(d, &["dgst", "-sha256", "-r", "k.der"])).unwrap();
    assert_eq!(dgst.split_whitespace().next().unwrap(), fp);
    assert_ne!(other.fingerprint(), fp);

    // openssl pkeyutl -sign -rawin (no -digest: OpenSSL 3.0 hashes P-256 input with SHA-256).
    std::fs::write(d.join("msg"), MESSAGE).unwrap();
    openssl(
        d,
        &[
            "pkeyutl", "-sign", "-rawin", "-inkey", "k.pem", "-in", "msg", "-out", "sig",
        ],
    );
    let sig = read_signature(&read_bytes(d, "sig")).unwrap();
    if kind == KeyKind::Ed25519 {
        assert_eq!(sig.len(), 64);
    }
    key.verify(MESSAGE, &sig)
        .expect("openssl signature verifies");

    // Hex and base64 forms of the same signature file.
    let b64 = openssl(d, &["base64", "-in", "sig"]);
    assert_eq!(read_signature(&b64).unwrap(), sig);
    let hexed = to_hex(&sig).to_uppercase() + "\n";
    assert_eq!(read_signature(hexed.as_bytes()).unwrap(), sig);

    // A flipped bit in the message or the signature, or another key: refused.
    let err = key.verify(&flipped(MESSAGE, 3), &sig).unwrap_err();
    assert!(err.contains("does not verify"), "{err}");
    for i in [0, sig.len() / 2, sig.len() - 1] {
        assert!(
            key.verify(MESSAGE, &flipped(&sig, i)).is_err(),
            "bit flip at {i}"
        );
    }
    assert!(other.verify(MESSAGE, &sig).is_err());
    openssl(
        d,
        &[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            "other.pem",
            "-in",
            "msg",
            "-out",
            "osig",
        ],
    );
    let osig = read_bytes(d, "osig");
    other.verify(MESSAGE, &osig).unwrap();
    assert!(key.verify(MESSAGE, &osig).is_err());

    // sign_with_pem: the same public key, and openssl verifies its signature.
    let (mine, public) = sign_with_pem(&read_text(d, "k.pem"), MESSAGE).unwrap();
    assert_eq!(public, key);
    key.verify(MESSAGE, &mine).unwrap();
    std::fs::write(d.join("mine"), &mine).unwrap();
    assert!(openssl_ok(
        d,
        &[
            "pkeyutl",
            "-verify",
            "-rawin",
            "-pubin",
            "-inkey",
            "k.pem.pub",
            "-in",
            "msg",
            "-sigfile",
            "mine"
        ]
    ));
    std::fs::write(d.join("msg2"), flipped(MESSAGE, 0)).unwrap();
    assert!(!openssl_ok(
        d,
        &[
            "pkeyutl",
            "-verify",
            "-rawin",
            "-pubin",
            "-inkey",
            "k.pem.pub",
            "-in",
            "msg2",
            "-sigfile",
            "mine"
        ]
    ));
    // Deterministic (Ed25519 by construction, P-256 by RFC 6979).
    assert_eq!(
        sign_with_pem(&read_text(d, "k.pem"), MESSAGE).unwrap().0,
        mine
    );

    // An encrypted PKCS#8 key is refused, saying how to decrypt it.
    openssl(
        d,
        &[
            "pkey",
            "-in",
            "k.pem",
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            "enc.pem",
        ],
    );
    let err = sign_with_pem(&read_text(d, "enc.pem"), MESSAGE).unwrap_err();
    assert!(
        err.contains("encrypted") && err.contains("openssl pkey"),
        "{err}"
    );
}

#[test]
fn key_kind_names() {
    for kind in [KeyKind::Ed25519, KeyKind::P256] {
        assert_eq!(KeyKind::parse(kind.name()), Some(kind));
    }
    assert_eq!(KeyKind::Ed25519.name(), "ed25519");
    assert_eq!(KeyKind::P256.name(), "p256");
    assert_eq!(KeyKind::parse("P-256"), None);
    assert_eq!(KeyKind::parse("rsa"), None);
}

#[test]
fn ed25519_openssl_round_trip() {
    if have_openssl("ed25519_openssl_round_trip") {
        openssl_round_trip(KeyKind::Ed25519);
    }
}

#[test]
fn p256_openssl_round_trip() {
    if have_openssl("p256_openssl_round_trip") {
        openssl_round_trip(KeyKind::P256);
    }
}

#[test]
fn p256_dgst_raw_and_compressed() {
    if !have_openssl("p256_dgst_raw_and_compressed") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = gen_key(d, "k.pem", KeyKind::P256);
    std::fs::write(d.join("msg"), MESSAGE).unwrap();

    // openssl dgst -sha256 -sign writes a DER signature of SHA-256(message).
    openssl(
        d,
        &["dgst", "-sha256", "-sign", "k.pem", "-out", "sig", "msg"],
    );
    let der_sig = read_bytes(d, "sig");
    key.verify(MESSAGE, &der_sig).unwrap();

    // The same signature as raw r||s (what a PKCS#11 token returns).
    let parsed = p256::ecdsa::Signature::from_der(&der_sig).unwrap();
    let raw = parsed.to_bytes().to_vec();
    assert_eq!(raw.len(), 64);
    key.verify(MESSAGE, &raw).unwrap();
    assert!(key.verify(&flipped(MESSAGE, 0), &raw).is_err());

    // High-s (the other valid s, n - s) is accepted: openssl makes either.
    let other_s = if parsed.normalize_s() == parsed {
        // Low s: build the high one from n - s via the scalar's negation.
        use p256::elliptic_curve::ff::PrimeField;
        let (r, s) = parsed.split_scalars();
        p256::ecdsa::Signature::from_scalars(r.to_repr(), (-*s).to_repr()).unwrap()
    } else {
        parsed.normalize_s()
    };
    assert_ne!(other_s, parsed);
    key.verify(MESSAGE, other_s.to_der().as_bytes()).unwrap();
    key.verify(MESSAGE, &other_s.to_bytes()[..]).unwrap();

    // Wrong shapes are named.
    let err = key.verify(MESSAGE, &[0x30, 0x03, 0x02, 0x01]).unwrap_err();
    assert!(err.contains("neither DER"), "{err}");
    let err = key.verify(MESSAGE, &[7u8; 63]).unwrap_err();
    assert!(err.contains("63 bytes"), "{err}");

    // A compressed point is accepted and stored uncompressed.
    openssl(
        d,
        &[
            "ec",
            "-pubin",
            "-in",
            "k.pem.pub",
            "-pubout",
            "-conv_form",
            "compressed",
            "-out",
            "c.pub",
        ],
    );
    let compressed_pem = read_text(d, "c.pub");
    assert_ne!(compressed_pem, key.to_pem());
    let c = ApproverKey::from_pem(&compressed_pem).unwrap();
    assert_eq!(c, key);
    assert_eq!(c.der().len(), 91);
}

#[test]
fn sec1_private_keys_sign() {
    if !have_openssl("sec1_private_keys_sign") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("msg"), MESSAGE).unwrap();
    // Without -noout ecparam writes an "EC PARAMETERS" block first; both forms sign.
    for (name, extra) in [("a.pem", true), ("b.pem", false)] {
        let mut args = vec!["ecparam", "-genkey", "-name", "prime256v1", "-out", name];
        if extra {
            args.push("-noout");
        }
        openssl(d, &args);
        let text = read_text(d, name);
        assert!(text.contains("BEGIN EC PRIVATE KEY"));
        assert_eq!(text.contains("EC PARAMETERS"), !extra);
        let pubname = format!("{name}.pub");
        openssl(d, &["pkey", "-in", name, "-pubout", "-out", &pubname]);
        let expected = ApproverKey::from_pem(&read_text(d, &pubname)).unwrap();

        let (sig, public) = sign_with_pem(&text, MESSAGE).unwrap();
        assert_eq!(public, expected);
        assert_eq!(public.kind(), KeyKind::P256);
        std::fs::write(d.join("sig"), &sig).unwrap();
        assert!(openssl_ok(
            d,
            &[
                "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", &pubname, "-in", "msg",
                "-sigfile", "sig"
            ]
        ));
        assert!(openssl_ok(
            d,
            &[
                "dgst",
                "-sha256",
                "-verify",
                &pubname,
                "-signature",
                "sig",
                "msg"
            ]
        ));
        // A private key is never taken as a public one.
        let err = ApproverKey::from_pem(&text).unwrap_err();
        assert!(
            err.contains("private key") && err.contains("-pubout"),
            "{err}"
        );
    }
    // A legacy encrypted SEC1 key (Proc-Type header) is refused.
    openssl(
        d,
        &[
            "ec",
            "-in",
            "a.pem",
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            "enc.pem",
        ],
    );
    let enc = read_text(d, "enc.pem");
    assert!(enc.contains("ENCRYPTED"));
    let err = sign_with_pem(&enc, MESSAGE).unwrap_err();
    assert!(
        err.contains("encrypted") && err.contains("openssl pkey"),
        "{err}"
    );
}

/// RFC 8032 §7.1 TEST 1 and TEST 2: secret key, public key, message, signature.
const RFC8032: [(&str, &str, &str, &str); 2] = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
         5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
         085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
];

#[test]
fn rfc8032_vectors() {
    for (secret, public, message, signature) in RFC8032 {
        let message = hex(message);
        let signature = hex(signature);
        // SPKI by hand: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused) key }.
        let mut spki = hex("302a300506032b6570032100");
        spki.extend(hex(public));
        let key = ApproverKey::from_der(&spki).unwrap();
        assert_eq!(key.kind(), KeyKind::Ed25519);
        assert_eq!(key.der(), spki.as_slice());
        key.verify(&message, &signature).unwrap();
        assert!(key.verify(b"x", &signature).is_err());
        let err = key.verify(&message, &signature[..63]).unwrap_err();
        assert!(err.contains("64 bytes") && err.contains("63"), "{err}");

        // PKCS#8 by hand: the RFC's secret signs to the RFC's signature.
        let mut pkcs8 = hex("302e020100300506032b657004220420");
        pkcs8.extend(hex(secret));
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            Base64::encode_string(&pkcs8)
        );
        let (sig, from_secret) = sign_with_pem(&pem, &message).unwrap();
        assert_eq!(sig, signature);
        assert_eq!(from_secret, key);
    }
}

#[test]
fn pkcs8_v2_public_key_must_match() {
    let pem_of = |seed: &str, public: &str| {
        // OneAsymmetricKey v2 (RFC 8410 §10.3): version 1, the seed, [1] the public key.
        let mut der = hex("3051020101300506032b657004220420");
        der.extend(hex(seed));
        der.extend(hex("812100"));
        der.extend(hex(public));
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            Base64::encode_string(&der)
        )
    };
    let (seed, public, _, signature) = RFC8032[0];
    let (sig, _) = sign_with_pem(&pem_of(seed, public), b"").unwrap();
    assert_eq!(sig, hex(signature));
    let err = sign_with_pem(&pem_of(seed, RFC8032[1].1), b"").unwrap_err();
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn strict_der() {
    let (_, public, _, _) = RFC8032[0];
    let mut good = hex("302a300506032b6570032100");
    good.extend(hex(public));
    // Trailing data.
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(ApproverKey::from_der(&trailing).is_err());
    // Ed25519 with NULL parameters.
    let mut with_null = hex("302c300706032b65700500032100");
    with_null.extend(hex(public));
    let err = ApproverKey::from_der(&with_null).unwrap_err();
    assert!(err.contains("parameters"), "{err}");
    // Unused bits in the BIT STRING.
    let mut unused = good.clone();
    unused[11] = 1;
    assert!(ApproverKey::from_der(&unused).is_err());
    // Wrong key length.
    let mut short = hex("3029300506032b6570032000");
    short.extend(&hex(public)[..31]);
    let err = ApproverKey::from_der(&short).unwrap_err();
    assert!(err.contains("31 bytes"), "{err}");
    // The small-order identity point as an Ed25519 key.
    let mut weak = hex("302a300506032b6570032100");
    weak.push(1);
    weak.extend([0u8; 31]);
    let err = ApproverKey::from_der(&weak).unwrap_err();
    assert!(err.contains("small-order"), "{err}");

    // P-256: the generator point G is a valid key; off the curve is refused.
    let g = "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296\
             4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
    let mut p = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
    p.extend(hex(g));
    let key = ApproverKey::from_der(&p).unwrap();
    assert_eq!(key.kind(), KeyKind::P256);
    assert_eq!(key.der(), p.as_slice());
    let mut off = p.clone();
    *off.last_mut().unwrap() ^= 1;
    let err = ApproverKey::from_der(&off).unwrap_err();
    assert!(err.contains("not on the curve"), "{err}");
    // P-384 curve OID with a P-256-sized point: named as P-384.
    let mut p384 = hex("3056301006072a8648ce3d020106052b81040022034200");
    p384.extend(hex(g));
    let err = ApproverKey::from_der(&p384).unwrap_err();
    assert!(err.contains("P-384"), "{err}");
    // Garbage.
    let err = ApproverKey::from_der(b"not der").unwrap_err();
    assert!(err.contains("SubjectPublicKeyInfo"), "{err}");
}

#[test]
fn refusals_name_what_was_found() {
    let err = ApproverKey::from_pem("just some words\n").unwrap_err();
    assert!(
        err.contains("no PEM block") && err.contains("openssl pkey"),
        "{err}"
    );
    let err = ApproverKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n").unwrap_err();
    assert!(err.contains("END PUBLIC KEY"), "{err}");
    let err = ApproverKey::from_pem("-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n")
        .unwrap_err();
    assert!(err.contains("base64"), "{err}");
    let err =
        ApproverKey::from_pem("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA alice@host\n").unwrap_err();
    assert!(
        err.contains("OpenSSH") && err.contains("ssh-keygen"),
        "{err}"
    );
    let err = sign_with_pem(
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        b"",
    )
    .unwrap_err();
    assert!(err.contains("\"PUBLIC KEY\""), "{err}");

    if !have_openssl("refusals_name_what_was_found") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:1024",
                "-out",
                "k.pem",
            ],
            "RSA",
        ),
        (
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                "k.pem",
            ],
            "P-384",
        ),
        (
            &["genpkey", "-algorithm", "ed448", "-out", "k.pem"],
            "Ed448",
        ),
        (
            &["genpkey", "-algorithm", "x25519", "-out", "k.pem"],
            "X25519",
        ),
    ];
    for (args, name) in cases {
        openssl(d, args);
        openssl(d, &["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub"]);
        let err = ApproverKey::from_pem(&read_text(d, "k.pub")).unwrap_err();
        assert!(
            err.contains(name) && err.contains("openssl"),
            "{name}: {err}"
        );
        let err = sign_with_pem(&read_text(d, "k.pem"), MESSAGE).unwrap_err();
        assert!(err.contains(name), "{name}: {err}");
        // The private key as a public one.
        let err = ApproverKey::from_pem(&read_text(d, "k.pem")).unwrap_err();
        assert!(err.contains("private key"), "{name}: {err}");
    }

    // A certificate (of an Ed25519 key) is named, with how to extract its key.
    gen_key(d, "e.pem", KeyKind::Ed25519);
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "e.pem",
            "-subj",
            "/CN=approver",
            "-days",
            "1",
            "-out",
            "cert.pem",
        ],
    );
    let err = ApproverKey::from_pem(&read_text(d, "cert.pem")).unwrap_err();
    assert!(err.contains("certificate") && err.contains("x509"), "{err}");
    // The PKCS#1 "RSA PUBLIC KEY" form.
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
            "r.pem",
        ],
    );
    openssl(
        d,
        &["rsa", "-in", "r.pem", "-RSAPublicKey_out", "-out", "r.pub"],
    );
    let err = ApproverKey::from_pem(&read_text(d, "r.pub")).unwrap_err();
    assert!(err.contains("RSA public key"), "{err}");
}

#[test]
fn read_signature_forms() {
    let raw: Vec<u8> = (0u8..64)
        .map(|i| i.wrapping_mul(37).wrapping_add(200))
        .collect();
    assert_eq!(read_signature(&raw).unwrap(), raw);
    let hexed = format!("{}\n{}\n", &to_hex(&raw)[..64], &to_hex(&raw)[64..]);
    assert_eq!(read_signature(hexed.as_bytes()).unwrap(), raw);
    assert_eq!(
        read_signature(to_hex(&raw).to_uppercase().as_bytes()).unwrap(),
        raw
    );
    let b64 = Base64::encode_string(&raw);
    let wrapped = format!("{}\r\n{}\r\n", &b64[..40], &b64[40..]);
    assert_eq!(read_signature(wrapped.as_bytes()).unwrap(), raw);
    assert_eq!(
        read_signature(b64.trim_end_matches('=').as_bytes()).unwrap(),
        raw
    );

    assert!(read_signature(b"").unwrap_err().contains("empty"));
    assert!(read_signature(b" \n\t").unwrap_err().contains("whitespace"));
    let err = read_signature(b"this is not a signature!").unwrap_err();
    assert!(err.contains("neither hex nor standard base64"), "{err}");
}
