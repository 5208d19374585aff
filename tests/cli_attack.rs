//! The CLI's read commands under attack and at their edges: key data swapped in the store, a PIN typed into `--pin-file -` on a terminal, a PIN file others can read, failures behind a closed pipe.

mod common;

use std::process::{Output, Stdio};

use cryptoki::mechanism::Mechanism;
use serde_json::Value;

use common::*;

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Someone with write access to the store swaps version 1's public key of
/// `victim` for the one of `attacker`'s: with the PIN, nothing shows or
/// uses the swapped key (pubkey, show, list, verify, status all refuse);
/// without it, the output says it is unverified.
#[test]
fn a_public_key_swapped_in_the_store_is_refused_with_the_pin() {
    let s = setup(None);
    s.create_asset("victim", "p256");
    s.create_asset("attacker", "p256");
    let message = s.dir.join("msg.txt");
    std::fs::write(&message, b"move funds").unwrap();
    let sig = s.dir.join("attacker.sig");
    {
        let p = s.load();
        let session = p.user_session();
        let key = private_key(&session, "attacker");
        let made = session
            .sign(&Mechanism::EcdsaSha256, key, b"move funds")
            .unwrap();
        std::fs::write(&sig, made).unwrap();
    }
    let attacker_pk = hex(&version_keys(&s.asset_show("attacker"))[0].1);
    sqlite(
        &s.store,
        &format!(
            "UPDATE versions SET public_key = X'{attacker_pk}' WHERE version = 1 AND asset = \
             (SELECT id FROM assets WHERE name = 'victim')"
        ),
    );
    let verify = [
        "verify",
        "--asset",
        "victim",
        "--signature",
        sig.to_str().unwrap(),
        "--message",
        message.to_str().unwrap(),
    ];
    for args in [
        &["asset", "pubkey", "victim"][..],
        &["asset", "show", "victim"],
        &["asset", "list"],
        &verify,
        &["status"],
    ] {
        let o = cli(&s, args);
        assert_eq!(code(&o), 1, "{args:?}: {}", output_text(&o));
        let said = output_text(&o);
        assert!(said.contains("no valid MAC"), "{args:?}: {said}");
        assert!(
            !stdout(&o).contains(&attacker_pk[2..40]),
            "{args:?} showed the swapped key: {said}"
        );
    }
    // Without the PIN the rows are shown as stored, and it says so.
    let o = s
        .cli()
        .env_remove("P11DERIVE_PIN")
        .args(["asset", "pubkey", "victim", "--hex"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(stderr(&o).contains("not verified"), "{}", output_text(&o));
}

#[test]
fn a_closed_pipe_does_not_hide_a_failure() {
    let s = setup(None);
    std::fs::rename(&s.store, s.dir.join("moved.db")).unwrap();
    let mut child = s
        .cli()
        .arg("status")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", output_text(&o));
}

#[test]
fn a_shared_pin_file_is_reported_and_an_id_is_taken_as_given() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup(None);
    let pin = s.dir.join("pin.txt");
    std::fs::write(&pin, format!("{PIN}\n")).unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = cli(
        &s,
        &[
            "--pin-file",
            pin.to_str().unwrap(),
            "asset",
            "create",
            "ided",
            "--type",
            "p256",
            "--id",
            "0a0b0c",
            "--json",
        ],
    );
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    let err = stderr(&o);
    assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["object_id"], "0a0b0c", "{v}");
    assert_eq!(v["changed"], true, "{v}");
    // A second root cannot be imported: a refusal (exit 3).
    let root = s.dir.join("root.hex");
    std::fs::write(&root, "11".repeat(32)).unwrap();
    let o = cli(&s, &["init", "--import-root", root.to_str().unwrap()]);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
}

#[test]
fn verify_in_json_says_when_nothing_verifies() {
    let s = setup(None);
    s.create_asset("j", "secp256k1");
    let sig = s.dir.join("zero.sig");
    std::fs::write(&sig, [1u8; 64]).unwrap();
    let o = cli(
        &s,
        &[
            "verify",
            "--asset",
            "j",
            "--signature",
            sig.to_str().unwrap(),
            "--digest",
            &"ab".repeat(32),
            "--json",
        ],
    );
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verified"], false, "{v}");
    assert_eq!(v["version"], Value::Null, "{v}");
}

#[test]
fn a_pin_typed_into_pin_file_dash_on_a_terminal_is_not_echoed() {
    let s = setup(None);
    let (rc, shown) = on_terminal(
        &s,
        &[
            "--pin-file",
            "-",
            "asset",
            "create",
            "dash",
            "--type",
            "p256",
        ],
        &format!("{PIN}\r"),
    );
    assert_eq!(rc, 0, "{shown}");
    assert!(shown.contains("User PIN"), "{shown}");
    assert!(!shown.contains(PIN), "the PIN was echoed: {shown}");
}
