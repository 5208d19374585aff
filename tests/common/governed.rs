//! A governed root recovery's set-up for the backup tests (issue 22): a users-mode store whose root came from `init --backup`, two approvers with openssl Ed25519 keys, a `recover` quorum rule, and helpers to announce, sign and inspect requests. Included with `#[path]`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::users::*;
use crate::common::*;
use crate::kit::*;

pub const ALICE: &str = "alice-secret-1";
pub const BOB: &str = "bob-secret-1";
pub const CAROL: &str = "carol-secret-1";

pub fn openssl(args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(o.status.success(), "openssl {args:?}: {}", output_text(&o));
}

/// `approver`'s key (`DIR/NAME.key`) signs `bytes`: the signature file.
pub fn sign(dir: &Path, approver: &str, bytes: &Path) -> PathBuf {
    let sig = PathBuf::from(format!("{}.{approver}.sig", bytes.display()));
    let key = dir.join(format!("{approver}.key"));
    openssl(&[
        "pkeyutl",
        "-sign",
        "-rawin",
        "-inkey",
        key.to_str().unwrap(),
        "-in",
        bytes.to_str().unwrap(),
        "-out",
        sig.to_str().unwrap(),
    ]);
    sig
}

/// `root recover` as `user` with the shares and `extra`.
pub fn recover_as(
    s: &Setup,
    user: &str,
    secret: &str,
    files: &[PathBuf],
    extra: &[&str],
) -> Output {
    let args = [&["root", "recover"][..], &sargs(files), extra].concat();
    as_user(s, user, secret, &args)
}

/// The first run of a governed recovery: exit 5, the request id and the bytes to sign.
pub fn announce(s: &Setup, files: &[PathBuf], name: &str) -> (String, PathBuf) {
    let bytes = s.dir.join(name);
    let o = recover_as(
        s,
        "alice",
        ALICE,
        files,
        &["--json", "--bytes-out", bytes.to_str().unwrap()],
    );
    assert_eq!(code(&o), 5, "{}", output_text(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(&o)));
    assert_eq!(v["operation"], "recover", "{v}");
    assert_eq!(v["status"], "pending", "{v}");
    let text = std::fs::read_to_string(&bytes).unwrap();
    assert!(text.ends_with("verdict: approve\n"), "{text}");
    (v["request"].as_str().unwrap().to_string(), bytes)
}

/// A users-mode store on a new token whose root is made by `init --admin alice --backup
/// 2-of-3` (shares in `DIR/ceremony`), with `[approvals] recover_cooldown = COOLDOWN`, the
/// approvers ann and ben (Ed25519 keys made by openssl, `DIR/NAME.key`), a `recover` rule
/// wanting both, bob (signer), carol (officer, auditor) and carol's asset `gov`:
/// (the setup, the shares directory, the root's fingerprint).
pub fn governed(cooldown: &str) -> (Setup, PathBuf, String) {
    let s = setup_with(None, false);
    let pin_file = s.dir.join("service.pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!(
        "\n[users]\nenabled = true\nservice_pin_file = \"{}\"\nmax_failures = 3\n\
         lockout_seconds = 600\n\n[approvals]\nrecover_cooldown = \"{cooldown}\"\n",
        pin_file.display()
    ));
    std::fs::write(&s.config, text).unwrap();
    let d = s.dir.join("ceremony");
    let o = s
        .cli()
        .env("P11DERIVE_PIN", ALICE)
        .args(["--json", "init", "--admin", "alice", "--backup", "2-of-3"])
        .arg("--shares-dir")
        .arg(&d)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    let fp = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["root_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    for name in ["ann", "ben"] {
        let key = s.dir.join(format!("{name}.key"));
        let public = s.dir.join(format!("{name}.pub"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            key.to_str().unwrap(),
        ]);
        let (k, p) = (key.to_str().unwrap(), public.to_str().unwrap());
        openssl(&["pkey", "-in", k, "-pubout", "-out", p]);
        ok_as(&s, "alice", ALICE, &["approver", "add", name, "--key", p]);
    }
    ok_as(
        &s,
        "alice",
        ALICE,
        &["quorum", "set", "recover", "--approvals", "2"],
    );
    for (name, role, secret) in [("bob", "signer", BOB), ("carol", "officer,auditor", CAROL)] {
        let file = s.dir.join(format!("{name}.secret"));
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        let f = file.to_str().unwrap();
        let add = [
            "user",
            "add",
            name,
            "--roles",
            role,
            "--patterns",
            "*",
            "--secret-file",
            f,
        ];
        ok_as(&s, "alice", ALICE, &add);
    }
    ok_as(
        &s,
        "carol",
        CAROL,
        &["asset", "create", "gov", "--type", "secp256k1"],
    );
    (s, d, fp)
}

/// The requests in the store, as (id, operation, state) rows read with sqlite3.
pub fn request_rows(s: &Setup) -> Vec<String> {
    let o = Command::new("sqlite3")
        .arg(&s.store)
        .arg("SELECT operation, state FROM requests ORDER BY rowid")
        .output()
        .expect("sqlite3 runs");
    assert!(o.status.success(), "{}", output_text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `--request ID` with ann's and ben's signatures of `bytes` (`--approval NAME=FILE` each).
pub fn both_approve(s: &Setup, id: &str, bytes: &Path) -> Vec<String> {
    let mut args = vec!["--request".to_string(), id.to_string()];
    for name in ["ann", "ben"] {
        args.push("--approval".into());
        args.push(format!("{name}={}", sign(&s.dir, name, bytes).display()));
    }
    args
}
