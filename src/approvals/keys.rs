//! Approvers' public keys (Ed25519 or P-256, as PEM SubjectPublicKeyInfo) and the signatures they make.
//!
//! Approvers sign with standard tools, so the formats here are the ones those
//! tools read and write: PEM "PUBLIC KEY" files as `openssl pkey -pubout`
//! writes them, Ed25519 signatures of 64 bytes, and P-256 ECDSA-SHA256
//! signatures as DER (`openssl pkeyutl -sign -rawin`, which with OpenSSL 3.0
//! hashes with SHA-256 when no `-digest` is given, and `openssl dgst -sha256
//! -sign`) or as raw r||s (64 bytes, as PKCS#11 tokens such as a YubiKey
//! return them).

use base64ct::{Base64, Base64Unpadded, Encoding};
use der::asn1::ObjectIdentifier;
use der::Decode;
use sha2::{Digest, Sha256};
use spki::{EncodePublicKey, SubjectPublicKeyInfoRef};
use zeroize::Zeroizing;

/// id-Ed25519 (RFC 8410).
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// id-ecPublicKey (RFC 5480).
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// The named curve prime256v1 / secp256r1 (P-256).
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// How to get the right kind of file: the command that writes an approver's public key.
const HOW_TO_PUBLIC: &str = "give the approver's public key as PEM \"PUBLIC KEY\" \
     (write it with `openssl pkey -in KEY -pubout`); only Ed25519 and P-256 keys are accepted";

/// The algorithm of an approver's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Ed25519 (RFC 8032, pure).
    Ed25519,
    /// ECDSA on NIST P-256 with SHA-256.
    P256,
}

impl KeyKind {
    /// The kind's name in records and listings: "ed25519" or "p256".
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Ed25519 => "ed25519",
            KeyKind::P256 => "p256",
        }
    }

    /// The kind named by `s` (as written by [`KeyKind::name`]), if any.
    pub fn parse(s: &str) -> Option<KeyKind> {
        match s {
            "ed25519" => Some(KeyKind::Ed25519),
            "p256" => Some(KeyKind::P256),
            _ => None,
        }
    }
}

/// An approver's public key: its kind and its canonical SubjectPublicKeyInfo DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApproverKey {
    /// The key's algorithm.
    kind: KeyKind,
    /// The canonical SPKI DER (P-256 points uncompressed).
    der: Vec<u8>,
}

impl ApproverKey {
    /// PEM "-----BEGIN PUBLIC KEY-----" (SubjectPublicKeyInfo) of an Ed25519 or P-256 key; leading/trailing text and CRLF tolerated. Errors say what was found (e.g. an RSA key, a private key, a certificate, P-384) and how to get the right thing (`openssl pkey -in KEY -pubout`).
    pub fn from_pem(text: &str) -> Result<ApproverKey, String> {
        let blocks = pem_blocks(text)?;
        let public: Vec<&PemBlock> = blocks.iter().filter(|b| b.label == "PUBLIC KEY").collect();
        match public.len() {
            1 => {
                let block = public[0];
                if !block.headers.is_empty() {
                    return Err(format!(
                        "the PEM \"PUBLIC KEY\" block has headers ({}), which a public key never has; {HOW_TO_PUBLIC}",
                        block.headers.join(", ")
                    ));
                }
                let der = block.decode()?;
                ApproverKey::from_der(&der)
            }
            0 => Err(describe_wrong_pem(text, &blocks)),
            n => Err(format!(
                "the text holds {n} PEM \"PUBLIC KEY\" blocks; give one approver's key per file ({HOW_TO_PUBLIC})"
            )),
        }
    }

    /// DER SubjectPublicKeyInfo (as stored). Strict: algorithm OID id-Ed25519 1.3.101.112 (no parameters) or id-ecPublicKey with namedCurve prime256v1; P-256 point compressed or uncompressed, must be on the curve; stored re-encoded canonically (uncompressed point).
    pub fn from_der(der: &[u8]) -> Result<ApproverKey, String> {
        let spki = SubjectPublicKeyInfoRef::from_der(der).map_err(|e| {
            format!("the public key is not a DER SubjectPublicKeyInfo ({e}); {HOW_TO_PUBLIC}")
        })?;
        let oid = spki.algorithm.oid;
        let key_bytes = spki.subject_public_key.as_bytes().ok_or_else(|| {
            "the public key's BIT STRING has unused bits; it is not a valid Ed25519 or P-256 key"
                .to_string()
        })?;
        if oid == OID_ED25519 {
            if spki.algorithm.parameters.is_some() {
                return Err(
                    "the Ed25519 public key's algorithm identifier has parameters, which RFC 8410 forbids; \
                     re-export it with `openssl pkey -in KEY -pubout`"
                        .to_string(),
                );
            }
            let bytes: &[u8; 32] = key_bytes.try_into().map_err(|_| {
                format!(
                    "the Ed25519 public key is {} bytes long, not 32; re-export it with `openssl pkey -in KEY -pubout`",
                    key_bytes.len()
                )
            })?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| {
                "the Ed25519 public key is not a point on the curve; it is damaged or not a key"
                    .to_string()
            })?;
            if key.is_weak() {
                return Err(
                    "the Ed25519 public key is a small-order point, for which any signature could verify; \
                     it cannot be an approver's key"
                        .to_string(),
                );
            }
            let canonical = key
                .to_public_key_der()
                .map_err(|e| format!("cannot encode the Ed25519 public key: {e}"))?;
            return Ok(ApproverKey {
                kind: KeyKind::Ed25519,
                der: canonical.as_bytes().to_vec(),
            });
        }
        if oid == OID_EC_PUBLIC_KEY {
            let params = spki.algorithm.parameters.ok_or_else(|| {
                "the EC public key names no curve (its algorithm identifier has no parameters); \
                 only P-256 keys with a named curve are accepted: re-export with `openssl pkey -in KEY -pubout`"
                    .to_string()
            })?;
            let curve: ObjectIdentifier = params.decode_as().map_err(|_| {
                "the EC public key gives explicit curve parameters instead of a named curve; \
                 re-export it with `openssl ec -in KEY -pubout -param_enc named_curve`"
                    .to_string()
            })?;
            if curve != OID_P256 {
                return Err(format!(
                    "found {} public key; only Ed25519 and P-256 (prime256v1) keys are accepted: \
                     make a new key with `openssl genpkey -algorithm ed25519` or \
                     `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`",
                    curve_name(&curve)
                ));
            }
            if !matches!(key_bytes.first(), Some(0x02..=0x04)) {
                return Err(
                    "the P-256 public key's point is neither compressed nor uncompressed SEC1 \
                     (hybrid or empty encoding); re-export it with `openssl pkey -in KEY -pubout`"
                        .to_string(),
                );
            }
            let key = p256::PublicKey::from_sec1_bytes(key_bytes).map_err(|_| {
                "the P-256 public key's point is not on the curve (or is the point at infinity); \
                 it is damaged or not a key"
                    .to_string()
            })?;
            let canonical = key
                .to_public_key_der()
                .map_err(|e| format!("cannot encode the P-256 public key: {e}"))?;
            return Ok(ApproverKey {
                kind: KeyKind::P256,
                der: canonical.as_bytes().to_vec(),
            });
        }
        Err(format!(
            "found {} public key; {HOW_TO_PUBLIC}",
            algorithm_name(&oid)
        ))
    }

    /// The key's algorithm.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The canonical SPKI DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The key as PEM "PUBLIC KEY" (64-character lines, LF line ends, a final newline).
    pub fn to_pem(&self) -> String {
        let body = Base64::encode_string(&self.der);
        let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END PUBLIC KEY-----\n");
        out
    }

    /// SHA-256 of the canonical SPKI DER, lower-case hex (64 chars): names the key in records and listings.
    pub fn fingerprint(&self) -> String {
        to_hex(&Sha256::digest(&self.der))
    }

    /// Whether `signature` is this key's signature of `message`: Ed25519 pure (RFC 8032, 64-byte signature, strict verification: `verify_strict`); P-256 ECDSA over SHA-256(message), signature as DER (what `openssl pkeyutl -sign -rawin` and `openssl dgst -sha256 -sign` write) or raw r||s (64 bytes); high-s accepted (openssl makes them). Err says why in words (wrong length, not DER, does not verify).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), String> {
        let fp = self.fingerprint();
        match self.kind {
            KeyKind::Ed25519 => {
                let key = self.ed25519_key()?;
                let bytes: &[u8; 64] = signature.try_into().map_err(|_| {
                    format!(
                        "an Ed25519 signature is 64 bytes, this one is {} (key {fp})",
                        signature.len()
                    )
                })?;
                let sig = ed25519_dalek::Signature::from_bytes(bytes);
                key.verify_strict(message, &sig).map_err(|_| {
                    format!("the Ed25519 signature does not verify with key {fp} for this message")
                })
            }
            KeyKind::P256 => {
                use p256::ecdsa::signature::Verifier;
                let key = self.p256_key()?;
                let der = p256::ecdsa::Signature::from_der(signature).ok();
                let raw = if signature.len() == 64 {
                    p256::ecdsa::Signature::from_slice(signature).ok()
                } else {
                    None
                };
                if der.is_none() && raw.is_none() {
                    return Err(format!(
                        "the P-256 signature ({} bytes) is neither DER ECDSA-Sig-Value nor raw r||s of 64 bytes \
                         with r and s in range (key {fp})",
                        signature.len()
                    ));
                }
                let verifies = [der, raw]
                    .into_iter()
                    .flatten()
                    .any(|sig| key.verify(message, &sig).is_ok());
                if verifies {
                    Ok(())
                } else {
                    Err(format!(
                        "the P-256 ECDSA-SHA256 signature does not verify with key {fp} for this message"
                    ))
                }
            }
        }
    }

    /// The Ed25519 verifying key held in the canonical DER.
    fn ed25519_key(&self) -> Result<ed25519_dalek::VerifyingKey, String> {
        let spki = SubjectPublicKeyInfoRef::from_der(&self.der)
            .map_err(|e| format!("stored public key is not SPKI DER: {e}"))?;
        let bytes: &[u8; 32] = spki
            .subject_public_key
            .as_bytes()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "stored Ed25519 public key is not 32 bytes".to_string())?;
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map_err(|_| "stored Ed25519 public key is not on the curve".to_string())
    }

    /// The P-256 verifying key held in the canonical DER.
    fn p256_key(&self) -> Result<p256::ecdsa::VerifyingKey, String> {
        let spki = SubjectPublicKeyInfoRef::from_der(&self.der)
            .map_err(|e| format!("stored public key is not SPKI DER: {e}"))?;
        let bytes = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| "stored P-256 public key has unused bits".to_string())?;
        p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
            .map_err(|_| "stored P-256 public key is not on the curve".to_string())
    }
}

/// A signature as read from a file: raw binary as is; if the whole file is ASCII text, hex (an even number of hex digits, either case, tried first; whitespace ignored) or base64 (standard alphabet, padding optional, whitespace ignored) decoded.
pub fn read_signature(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.is_empty() {
        return Err("the signature file is empty".to_string());
    }
    let is_text = bytes
        .iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if !is_text {
        return Ok(bytes.to_vec());
    }
    let compact: String = bytes
        .iter()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|&b| b as char)
        .collect();
    if compact.is_empty() {
        return Err("the signature file holds only whitespace".to_string());
    }
    if let Some(decoded) = from_hex(&compact) {
        return Ok(decoded);
    }
    let decoded = if compact.ends_with('=') || compact.len().is_multiple_of(4) {
        Base64::decode_vec(&compact)
    } else {
        Base64Unpadded::decode_vec(&compact)
    };
    match decoded {
        Ok(d) if !d.is_empty() => Ok(d),
        _ => Err(format!(
            "the signature file is text ({} characters without whitespace) but neither hex nor standard base64; \
             give the signature as written by `openssl pkeyutl -sign -out SIG` (binary), or its hex or base64",
            compact.len()
        )),
    }
}

/// Signs `message` with a private key in PEM: PKCS#8 "PRIVATE KEY" (Ed25519 or P-256) or SEC1 "EC PRIVATE KEY" (P-256); returns the signature (Ed25519: 64 bytes; P-256: DER, ECDSA-SHA256, RFC 6979 deterministic) and the key's public key. Encrypted keys are refused with a message saying to decrypt with `openssl pkey`. The private key material (the decoded PEM body and DER, the seed or scalar) is zeroized after use.
pub fn sign_with_pem(private_pem: &str, message: &[u8]) -> Result<(Vec<u8>, ApproverKey), String> {
    const DECRYPT: &str = "the private key is encrypted; decrypt it first with \
         `openssl pkey -in KEY -out PLAIN` (and keep PLAIN private, or sign with `openssl pkeyutl -sign -rawin` instead)";
    let blocks = pem_blocks(private_pem)?;
    if blocks.iter().any(|b| b.label == "ENCRYPTED PRIVATE KEY") {
        return Err(DECRYPT.to_string());
    }
    let block = blocks
        .iter()
        .find(|b| b.label == "PRIVATE KEY" || b.label == "EC PRIVATE KEY")
        .ok_or_else(|| {
            let found = if blocks.is_empty() {
                "no PEM block".to_string()
            } else {
                blocks
                    .iter()
                    .map(|b| format!("\"{}\"", b.label))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "expected a PEM \"PRIVATE KEY\" (PKCS#8, Ed25519 or P-256) or \"EC PRIVATE KEY\" (P-256), found {found}; \
                 convert with `openssl pkey -in KEY -out KEY.pem`"
            )
        })?;
    if block
        .headers
        .iter()
        .any(|h| h.to_ascii_uppercase().contains("ENCRYPTED"))
    {
        return Err(DECRYPT.to_string());
    }
    let der = block.decode()?;
    if block.label == "EC PRIVATE KEY" {
        let secret = p256::SecretKey::from_sec1_der(&der).map_err(|_| {
            "the \"EC PRIVATE KEY\" is not a P-256 SEC1 private key (another curve, or damaged); \
             only P-256 is accepted"
                .to_string()
        })?;
        return sign_p256(secret, message);
    }
    let info = p256::pkcs8::PrivateKeyInfoRef::from_der(&der).map_err(|e| {
        format!("the \"PRIVATE KEY\" is not a DER PKCS#8 PrivateKeyInfo ({e}); the file is damaged")
    })?;
    let oid = info.algorithm.oid;
    if oid == OID_ED25519 {
        // The key is an OCTET STRING (CurvePrivateKey, RFC 8410) inside the PKCS#8
        // privateKey; decoded here, so the seed's only copy is zeroized on drop.
        let seed: Zeroizing<[u8; 32]> =
            <&der::asn1::OctetStringRef>::from_der(info.private_key.as_bytes())
                .ok()
                .and_then(|inner| <[u8; 32]>::try_from(inner.as_bytes()).ok())
                .map(Zeroizing::new)
                .ok_or_else(|| {
                    "the Ed25519 \"PRIVATE KEY\" is damaged (its key is not a 32-byte OCTET STRING)"
                        .to_string()
                })?;
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        if let Some(public) = info.public_key {
            if public.as_bytes() != Some(signing.verifying_key().as_bytes().as_slice()) {
                return Err(
                    "the Ed25519 \"PRIVATE KEY\" holds a public key that does not match its private key; \
                     the file is damaged"
                        .to_string(),
                );
            }
        }
        use ed25519_dalek::Signer;
        let sig = signing.sign(message);
        let public = ApproverKey::from_der(
            signing
                .verifying_key()
                .to_public_key_der()
                .map_err(|e| format!("cannot encode the Ed25519 public key: {e}"))?
                .as_bytes(),
        )?;
        return Ok((sig.to_bytes().to_vec(), public));
    }
    if oid == OID_EC_PUBLIC_KEY {
        let curve: Option<ObjectIdentifier> =
            info.algorithm.parameters.and_then(|p| p.decode_as().ok());
        if curve != Some(OID_P256) {
            let name = curve.map_or_else(
                || "an EC key with no named curve".to_string(),
                |c| curve_name(&c),
            );
            return Err(format!(
                "found {name} private key; only Ed25519 and P-256 keys can sign approvals"
            ));
        }
        let secret = p256::SecretKey::try_from(info).map_err(|_| {
            "the P-256 \"PRIVATE KEY\" is damaged (its inner SEC1 key does not parse)".to_string()
        })?;
        return sign_p256(secret, message);
    }
    Err(format!(
        "found {} private key; only Ed25519 and P-256 keys can sign approvals",
        algorithm_name(&oid)
    ))
}

/// ECDSA-SHA256 (RFC 6979) with a P-256 secret key; the signature as DER, with the public key.
fn sign_p256(secret: p256::SecretKey, message: &[u8]) -> Result<(Vec<u8>, ApproverKey), String> {
    use p256::ecdsa::signature::Signer;
    let public = secret.public_key();
    let signing = p256::ecdsa::SigningKey::from(secret);
    let sig: p256::ecdsa::Signature = signing.sign(message);
    let public = ApproverKey::from_der(
        public
            .to_public_key_der()
            .map_err(|e| format!("cannot encode the P-256 public key: {e}"))?
            .as_bytes(),
    )?;
    Ok((sig.to_der().as_bytes().to_vec(), public))
}

/// One PEM block: its label, its RFC 1421 headers (if any), and its base64 body.
struct PemBlock {
    /// The label between "BEGIN " and the closing dashes.
    label: String,
    /// "Name: value" header lines (legacy encrypted keys have them).
    headers: Vec<String>,
    /// The body with whitespace removed (zeroized: it may encode a private key).
    body: Zeroizing<String>,
}

impl PemBlock {
    /// The body decoded from base64 (zeroized on drop).
    fn decode(&self) -> Result<Zeroizing<Vec<u8>>, String> {
        let mut out = Zeroizing::new(vec![0u8; self.body.len() / 4 * 3 + 3]);
        let len = Base64::decode(self.body.as_str(), &mut out)
            .map_err(|_| {
                format!(
                    "the PEM \"{}\" block's body is not valid base64; the file is damaged",
                    self.label
                )
            })?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// The PEM blocks in `text`, in order; text outside the blocks is ignored.
fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(|l| l.trim());
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut headers = Vec::new();
        let mut body = Zeroizing::new(String::new());
        let mut closed = false;
        for inner in lines.by_ref() {
            if inner == end {
                closed = true;
                break;
            }
            if body.is_empty() && inner.contains(':') {
                headers.push(inner.to_string());
            } else {
                body.extend(inner.chars().filter(|c| !c.is_whitespace()));
            }
        }
        if !closed {
            return Err(format!(
                "the PEM \"{label}\" block has no \"{end}\" line; the file is cut short"
            ));
        }
        blocks.push(PemBlock {
            label: label.to_string(),
            headers,
            body,
        });
    }
    Ok(blocks)
}

/// The error for PEM text that holds no "PUBLIC KEY" block: what it holds, and how to get the public key.
fn describe_wrong_pem(text: &str, blocks: &[PemBlock]) -> String {
    // "EC PARAMETERS" precedes the key in `openssl ecparam -genkey` output: name the key.
    let first = blocks
        .iter()
        .find(|b| b.label != "EC PARAMETERS")
        .or_else(|| blocks.first());
    let Some(first) = first else {
        let t = text.trim_start();
        if t.starts_with("ssh-ed25519 ") || t.starts_with("ecdsa-sha2-nistp256 ") {
            return "found an OpenSSH public key; convert it with \
                    `ssh-keygen -e -m PKCS8 -f KEY.pub` (PEM \"PUBLIC KEY\")"
                .to_string();
        }
        if t.starts_with("ssh-") || t.starts_with("ecdsa-sha2-") {
            return format!("found an OpenSSH public key of another kind; {HOW_TO_PUBLIC}");
        }
        return format!(
            "found no PEM block (no \"-----BEGIN PUBLIC KEY-----\" line); {HOW_TO_PUBLIC}"
        );
    };
    let label = first.label.as_str();
    match label {
        "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY" | "ENCRYPTED PRIVATE KEY"
        | "OPENSSH PRIVATE KEY" | "DSA PRIVATE KEY" => format!(
            "found a private key (PEM \"{label}\"), not a public key; never share it: give its public key, \
             written by `openssl pkey -in KEY -pubout`"
        ),
        "CERTIFICATE" | "X509 CERTIFICATE" | "TRUSTED CERTIFICATE" => format!(
            "found a certificate (PEM \"{label}\"), not a public key; extract its key with \
             `openssl x509 -in CERT -pubkey -noout`"
        ),
        "RSA PUBLIC KEY" => format!(
            "found an RSA public key (PEM \"{label}\", PKCS#1); only Ed25519 and P-256 keys are accepted: \
             make one with `openssl genpkey -algorithm ed25519` and give `openssl pkey -in KEY -pubout`"
        ),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => format!(
            "found a certificate request (PEM \"{label}\"), not a public key; extract its key with \
             `openssl req -in CSR -pubkey -noout`"
        ),
        "EC PARAMETERS" => format!(
            "found EC curve parameters (PEM \"{label}\"), not a public key; {HOW_TO_PUBLIC}"
        ),
        _ => format!("found a PEM \"{label}\" block, not a public key; {HOW_TO_PUBLIC}"),
    }
}

/// A readable name for a public-key algorithm OID ("an RSA", "an Ed448", ...).
fn algorithm_name(oid: &ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.2.840.113549.1.1.1" => "an RSA".to_string(),
        "1.2.840.113549.1.1.10" => "an RSA-PSS".to_string(),
        "1.2.840.10040.4.1" => "a DSA".to_string(),
        "1.3.101.110" => "an X25519 (key agreement, cannot sign)".to_string(),
        "1.3.101.111" => "an X448 (key agreement, cannot sign)".to_string(),
        "1.3.101.113" => "an Ed448".to_string(),
        "1.2.840.10045.2.1" => "an EC".to_string(),
        other => format!("an unsupported (algorithm OID {other})"),
    }
}

/// A readable name for an EC named-curve OID ("a P-384 (secp384r1)", ...).
fn curve_name(oid: &ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.2.840.10045.3.1.7" => "a P-256 (prime256v1)".to_string(),
        "1.3.132.0.34" => "a P-384 (secp384r1)".to_string(),
        "1.3.132.0.35" => "a P-521 (secp521r1)".to_string(),
        "1.3.132.0.10" => "a secp256k1".to_string(),
        "1.3.36.3.3.2.8.1.1.7" => "a brainpoolP256r1".to_string(),
        other => format!("an EC (curve OID {other})"),
    }
}

/// Lower-case hex of `bytes`.
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// `s` decoded from hex (either case), if it is an even number of hex digits.
fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
#[path = "tests_keys.rs"]
mod tests;
