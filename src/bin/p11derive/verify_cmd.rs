//! `p11derive verify`: which version of an EC or Ed25519 asset made a signature.

use clap::ValueEnum;
use p11derive::derive::KeyType;
use p11derive::mechanisms::eddsa::ed25519_verify;
use p11derive::mechanisms::{ecdsa_sig_len, ecdsa_verify};
use p11derive::store::hex;
use sha2::Digest;

use crate::args::{Cli, HashArg, VerifyArgs};
use crate::asset_cmd::{find, not_usable, point_of, version_status};
use crate::common::{failed, print_json, readable_store, unhex, Failure};

/// A signature as raw `r || s`, from raw bytes or DER (`ECDSA-Sig-Value`).
fn raw_signature(kt: KeyType, bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() == ecdsa_sig_len(kt) {
        return Some(bytes.to_vec());
    }
    match kt {
        KeyType::Secp256k1 => k256::ecdsa::Signature::from_der(bytes)
            .ok()
            .map(|s| s.to_bytes().to_vec()),
        KeyType::P256 => p256::ecdsa::Signature::from_der(bytes)
            .ok()
            .map(|s| s.to_bytes().to_vec()),
        KeyType::P384 => p384::ecdsa::Signature::from_der(bytes)
            .ok()
            .map(|s| s.to_bytes().to_vec()),
        KeyType::P521 => p521::ecdsa::Signature::from_der(bytes)
            .ok()
            .map(|s| s.to_bytes().to_vec()),
        _ => None,
    }
}

fn hash(h: HashArg, data: &[u8]) -> Vec<u8> {
    match h {
        HashArg::Sha1 => sha1::Sha1::digest(data).to_vec(),
        HashArg::Sha224 => sha2::Sha224::digest(data).to_vec(),
        HashArg::Sha256 => sha2::Sha256::digest(data).to_vec(),
        HashArg::Sha384 => sha2::Sha384::digest(data).to_vec(),
        HashArg::Sha512 => sha2::Sha512::digest(data).to_vec(),
    }
}

pub fn verify(cli: &Cli, v: &VerifyArgs) -> Result<(), Failure> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| failed(format!("cannot read {what} {}: {e}", p.display())))
    };
    let sig_bytes = read(&v.signature, "signature file")?;
    let r = readable_store(cli)?;
    let a = find(&r.store, &v.asset)?;
    let eddsa = a.key_type == KeyType::Ed25519;
    let digest = match (&v.message, &v.digest) {
        // Ed25519 signs the message itself (pure Ed25519, RFC 8032).
        (Some(m), _) if eddsa => read(m, "message file")?,
        (None, Some(_)) if eddsa => {
            return Err(Failure::Usage(format!(
                "asset {:?} is an Ed25519 key: pure Ed25519 signs the message itself, not a \
                 digest; give --message FILE",
                a.id.as_str()
            )))
        }
        (Some(m), _) => hash(v.hash, &read(m, "message file")?),
        (None, Some(d)) => unhex(d)
            .filter(|d| (16..=64).contains(&d.len()))
            .ok_or_else(|| {
                Failure::Usage(format!(
                    "--digest {d:?}: give the digest in hex, 16 to 64 bytes (e.g. the 32 bytes of \
                     a SHA-256)"
                ))
            })?,
        (None, None) => return Err(Failure::Usage("give --message FILE or --digest HEX".into())),
    };
    let secret = match a.key_type {
        kt if kt.is_mac() => Some(
            "an HMAC key: its tags are checked by the token itself (C_Verify with its \
             CKM_SHAx_HMAC mechanism), each check audited",
        ),
        kt if kt.is_aes() => {
            Some("an AES key: it makes no signatures (AES-GCM's tag is checked by C_Decrypt)")
        }
        _ => None,
    };
    if let Some(what) = secret {
        return Err(Failure::Refused(format!(
            "asset {:?} is {what}; `p11derive verify` checks ECDSA and Ed25519 signatures",
            a.id.as_str()
        )));
    }
    let sig = if eddsa {
        (sig_bytes.len() == 64).then(|| sig_bytes.clone())
    } else {
        raw_signature(a.key_type, &sig_bytes)
    };
    let sig = sig.ok_or_else(|| {
        if eddsa {
            return failed(format!(
                "{} is not an Ed25519 signature: it has {} bytes, not 64",
                v.signature.display(),
                sig_bytes.len()
            ));
        }
        failed(format!(
            "{} holds neither a DER ECDSA signature nor a raw r||s of {} bytes ({} bytes)",
            v.signature.display(),
            ecdsa_sig_len(a.key_type),
            sig_bytes.len()
        ))
    })?;
    let history = r.history(&a)?;
    // Newest first: the version that made it is usually the current one.
    let made_by = history.iter().rev().find(|h| {
        point_of(&a, &history, h.version).is_ok_and(|p| {
            if eddsa {
                ed25519_verify(&p, &digest, &sig).is_ok()
            } else {
                ecdsa_verify(a.key_type, &p, &digest, &sig).is_ok()
            }
        })
    });
    let Some(h) = made_by else {
        if cli.json {
            print_json(&serde_json::json!({
                "asset_id": a.id.as_str(),
                "verified": false,
                "version": null,
                "versions_tried": history.len(),
                "digest": hex(&digest),
            }))?;
        }
        return Err(failed(format!(
            "the signature in {} verifies under no version of {:?} (versions 1..={} tried, \
             digest {}): another key, another message, or another hash than --hash {}",
            v.signature.display(),
            a.id.as_str(),
            a.current,
            hex(&digest),
            v.hash
                .to_possible_value()
                .map_or_else(String::new, |p| p.get_name().to_string())
        )));
    };
    let n = h.version;
    let status = version_status(&a, n);
    let usable = a.may_verify(n);
    if cli.json {
        print_json(&serde_json::json!({
            "asset_id": a.id.as_str(),
            "version": n,
            "label": format!("{}@v{n}", a.id),
            "status": status,
            "may_verify": usable,
            "verified": usable,
        }))?;
    } else if usable {
        outln!(
            "signature verifies under {}@v{n} (version {n} of {:?}, {status})",
            a.id.as_str(),
            a.id.as_str()
        );
    }
    if !usable {
        return Err(failed(format!(
            "the signature was made by {}",
            not_usable(&a, n)
        )));
    }
    Ok(())
}
