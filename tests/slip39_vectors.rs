//! The official SLIP-39 test vectors: valid sets combine to their master
//! secret under the passphrase "TREZOR"; invalid ones are refused.
//!
//! tests/vectors/slip39.json is `vectors.json` of the reference
//! implementation, trezor/python-shamir-mnemonic (commit 0f504b0f), unchanged:
//! a list of [description, mnemonics, master secret in hex or "" when the
//! set must be refused]. (Later revisions append extendable-flag vectors;
//! tests/slip39_reference.rs covers that flag against the reference itself.)

use p11derive::slip39::{Combiner, Error, Share};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes and combines a set, stopping at the first refusal.
fn combine(mnemonics: &[String]) -> Result<String, Error> {
    let mut c = Combiner::new();
    for m in mnemonics {
        c.add(Share::from_mnemonic(m.as_bytes())?)?;
    }
    c.combine(b"TREZOR").map(|s| hex(&s))
}

#[test]
fn official_vectors() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/slip39.json"
    ))
    .expect("tests/vectors/slip39.json");
    let vectors: Vec<(String, Vec<String>, String)> =
        serde_json::from_str(&text).expect("the vectors' layout");
    assert_eq!(vectors.len(), 40);
    let mut refused = 0;
    for (description, mnemonics, secret) in &vectors {
        match combine(mnemonics) {
            Ok(got) => assert_eq!(&got, secret, "{description}"),
            Err(e) => {
                assert!(secret.is_empty(), "{description}: refused: {e}");
                // Refusals name no share material beyond a mistyped word.
                for m in mnemonics {
                    assert!(!e.to_string().contains(m.as_str()), "{description}: {e}");
                }
                println!("{description}: {e}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 30);
}
