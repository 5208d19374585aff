//! Runs the README's examples: every shell block marked runnable, in order, as one script, against a private SoftHSM token.
//!
//! A block is marked by the line `<!-- runnable -->` right before its
//! ```` ```sh ```` fence. The script runs under `set -euo pipefail` in a
//! scratch directory, with the built CLI first on `PATH`, the built provider
//! in `$P11DERIVE_MODULE` and `SOFTHSM2_CONF` naming a config whose token
//! directory is in the scratch directory: exactly what a reader has after
//! the README's set-up, so the examples cannot drift from the code.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const MARKER: &str = "<!-- runnable -->";

/// The runnable blocks of `text`, in order. Panics on a marker that is not
/// followed by a shell fence, or on a fence left open.
fn runnable_blocks(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != MARKER {
            i += 1;
            continue;
        }
        let fence = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
        assert!(
            fence == "```sh" || fence == "```bash",
            "README.md line {}: {MARKER} must stand right before a ```sh fence, found {fence:?}",
            i + 1
        );
        let start = i + 2;
        let len = lines[start..]
            .iter()
            .position(|l| l.trim() == "```")
            .unwrap_or_else(|| panic!("README.md line {}: the block is never closed", i + 2));
        blocks.push(lines[start..start + len].join("\n"));
        i = start + len + 1;
    }
    blocks
}

/// The PATH the script gets: the built binaries first, then the system's
/// own tools (Debian's python3, for python3-pykcs11, before any pyenv shim).
fn script_path(bin_dir: &Path) -> String {
    let rest = std::env::var("PATH").unwrap_or_default();
    format!("{}:/usr/bin:/bin:{rest}", bin_dir.display())
}

#[test]
fn the_readme_examples_run_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let blocks = runnable_blocks(&readme);
    assert!(
        blocks.len() >= 8,
        "README.md has only {} runnable blocks",
        blocks.len()
    );
    let script = format!("set -euo pipefail\n{}\n", blocks.join("\n"));

    let scratch = tempfile::tempdir().expect("scratch directory");
    let dir = scratch.path();
    std::fs::create_dir(dir.join("tokens")).expect("token directory");
    let softhsm_conf = dir.join("softhsm2.conf");
    std::fs::write(
        &softhsm_conf,
        format!(
            "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.display()
        ),
    )
    .expect("softhsm2.conf");
    std::fs::write(dir.join("readme.sh"), &script).expect("readme.sh");

    let cli = common::cli_path();
    let bin_dir: PathBuf = cli.parent().expect("the CLI's directory").to_path_buf();
    let out = Command::new("timeout")
        .args(["600", "bash", "readme.sh"])
        .current_dir(dir)
        .env("PATH", script_path(&bin_dir))
        .env("SOFTHSM2_CONF", &softhsm_conf)
        .env("P11DERIVE_MODULE", common::module_path())
        .env_remove("P11DERIVE_CONF")
        .env_remove("P11DERIVE_PIN")
        .env_remove("OPENSSL_CONF")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "the README's examples failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );

    // What the examples must show (each command named must be in the README).
    let expect: &[(&str, &str)] = &[
        ("p11derive --version", "p11derive "),
        (
            "--signature msg.sig --message msg.txt",
            "signature verifies under hot-wallet-1@v1",
        ),
        (
            "--signature msg.v2.sig --message msg.txt",
            "signature verifies under hot-wallet-1@v2",
        ),
        ("--keypairgen --key-type EC:secp256k1", "Key pair generated"),
        ("PRAGMA integrity_check", "\nok\n"),
        ("asset list", "hot-wallet-1"),
        ("python3 gcm.py open", "the backup's data key"),
        ("--id 0a0100000001", "CKR_KEY_FUNCTION_NOT_PERMITTED"),
        ("--id 0a0100000001", "version 1 may no longer sign"),
        (
            "asset pubkey web-1 --version 2 --der",
            "the request names version 2",
        ),
    ];
    for (command, shown) in expect {
        assert!(
            script.contains(command),
            "the README no longer runs `{command}`"
        );
        assert!(
            all.contains(shown),
            "the README's `{command}` did not show {shown:?}:\n{all}"
        );
    }
    // `p11derive status` found nothing wrong.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("problems") && l.trim_end().ends_with("none")),
        "p11derive status reported problems:\n{all}"
    );
    // openssl verified both signatures: pkcs11-tool's and the engine's.
    let verified = all.matches("Verified OK").count();
    assert!(
        verified >= 2,
        "openssl verified {verified} signatures, not 2:\n{all}"
    );

    audit_export_is_as_described(dir);
    cli_files_are_written(dir);
    pubkey_is_the_tokens(dir);
}

/// The audit export of one asset: JSON lines of that asset only, with the
/// fields the README names (RFC 3339 UTC times, mechanism and code names).
fn audit_export_is_as_described(dir: &Path) {
    let export =
        std::fs::read_to_string(dir.join("hot-wallet-1.jsonl")).expect("hot-wallet-1.jsonl");
    let records: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(
        records.iter().all(|r| r["asset"] == "hot-wallet-1"),
        "{export}"
    );
    let signs: Vec<&serde_json::Value> = records.iter().filter(|r| r["event"] == "sign").collect();
    // pkcs11-tool's two signatures and the engine's.
    assert!(signs.len() >= 3, "the example's signatures:\n{export}");
    for r in &signs {
        let time = r["time"].as_str().unwrap_or_default();
        assert!(time.ends_with('Z') && time.contains('T'), "{r}");
        assert_eq!(r["rv_name"], "CKR_OK", "{r}");
    }
    // pkcs11-tool hashed inside the token; OpenSSL's engine hashed itself.
    for mechanism in ["CKM_ECDSA_SHA256", "CKM_ECDSA"] {
        assert!(
            signs.iter().any(|r| r["mechanism_name"] == mechanism),
            "no signature with {mechanism}:\n{export}"
        );
    }
}

/// `p11derive man` and `completions` wrote what the README says.
fn cli_files_are_written(dir: &Path) {
    for page in [
        "p11derive.1",
        "p11derive-asset-rotate.1",
        "p11derive-verify.1",
    ] {
        assert!(dir.join("man").join(page).exists(), "no man page {page}");
    }
    let completion = std::fs::read_to_string(dir.join("p11derive.bash")).expect("completion");
    assert!(completion.contains("p11derive"), "{completion}");
}

/// The CLI's public key (from the store) is the token's (from pkcs11-tool).
fn pubkey_is_the_tokens(dir: &Path) {
    let pem = std::fs::read_to_string(dir.join("hot-wallet-1.pem")).expect("pubkey PEM");
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let spki = std::fs::read(dir.join("pub.der")).expect("pkcs11-tool's public key");
    let der = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(dir.join("hot-wallet-1.pem"))
        .output()
        .expect("openssl");
    assert_eq!(der.stdout, spki, "asset pubkey and the token disagree");
}

#[test]
fn a_marker_must_precede_a_shell_fence() {
    let good =
        format!("text\n{MARKER}\n```sh\necho one\necho two\n```\n\n```sh\nnot marked\n```\n");
    assert_eq!(
        runnable_blocks(&good),
        vec!["echo one\necho two".to_string()]
    );
    let bad = format!("{MARKER}\n\n```sh\necho\n```\n");
    assert!(std::panic::catch_unwind(|| runnable_blocks(&bad)).is_err());
}
