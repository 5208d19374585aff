//! The `p11derive` command line as a new user meets it: help, usage errors, PINs, words per key type, audit output, status, pubkey, verify, man pages and completions — the built binary against SoftHSM.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};

use cryptoki::mechanism::Mechanism;
use serde_json::Value;

use common::*;

fn bare() -> Command {
    Command::new(cli_path())
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", output_text(o)))
}

#[test]
fn every_command_has_its_own_help_and_there_is_a_version() {
    let help = |args: &[&str]| {
        let o = bare().args(args).output().unwrap();
        assert_eq!(code(&o), 0, "{args:?}: {}", output_text(&o));
        stdout(&o)
    };
    let rotate = help(&["asset", "rotate", "--help"]);
    assert!(
        rotate.contains("--grace") && rotate.contains("Examples:"),
        "{rotate}"
    );
    let init = help(&["init", "--help"]);
    assert!(
        init.contains("--import-root") && !init.contains("--grace"),
        "{init}"
    );
    let migrate = help(&["store", "migrate", "--help"]);
    assert!(
        migrate.contains("--from") && migrate.contains("--to"),
        "{migrate}"
    );
    assert_eq!(help(&["help", "asset", "rotate"]), rotate);
    let asset = help(&["help", "asset"]);
    for sub in [
        "create", "list", "show", "pubkey", "rotate", "resume", "retire",
    ] {
        assert!(asset.contains(sub), "{sub}: {asset}");
    }
    // Every command says what it does (none is left without a description).
    let commands = asset
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty());
    for line in commands {
        assert!(
            line.split_whitespace().count() > 1,
            "no description: {line:?}"
        );
    }
    let top = help(&["--help"]);
    assert!(
        top.contains("--pin-file") && top.contains("Exit codes:"),
        "{top}"
    );
    let v = help(&["--version"]);
    assert_eq!(v.trim(), format!("p11derive {}", env!("CARGO_PKG_VERSION")));
    // A group without its command shows that group's commands, not "unknown command".
    let o = bare().arg("audit").output().unwrap();
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("export") && stderr(&o).contains("tail"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn a_usage_error_is_short_and_names_the_argument() {
    let s = setup(None);
    for (args, names) in [
        (&["asset", "rotate", "x", "--grce"][..], "--grce"),
        (&["asset", "create", "x", "--type", "rsa"], "rsa"),
        (&["asset", "trim", "x", "two"], "two"),
        (&["asset", "retire", "x"], "--yes"),
        (&["audit", "export", "--since", "-1"], "-1"),
        (
            &["asset", "create", "x", "--type", "p256", "--id", "zz"],
            "zz",
        ),
    ] {
        let o = cli(&s, args);
        assert_eq!(code(&o), 2, "{args:?}: {}", output_text(&o));
        let err = stderr(&o);
        assert!(err.contains(names), "{args:?}: {err}");
        let lines = err.lines().filter(|l| !l.trim().is_empty()).count();
        assert!(lines <= 5, "{args:?} printed the whole usage:\n{err}");
        assert!(err.contains("--help"), "{args:?}: no hint: {err}");
    }
    // --opt=value works like --opt value.
    ok(&s, &["asset", "create", "eq", "--type=secp256k1"]);
}

#[test]
fn the_names_other_tools_use_for_key_types() {
    let s = setup(None);
    for (name, given) in [
        ("a", "P-256"),
        ("b", "prime256v1"),
        ("c", "secp256r1"),
        ("d", "K256"),
    ] {
        ok(&s, &["asset", "create", name, "--type", given]);
    }
    assert_eq!(s.asset_show("a")["key_type"], "p256");
    assert_eq!(s.asset_show("b")["key_type"], "p256");
    assert_eq!(s.asset_show("d")["key_type"], "secp256k1");
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let s = setup(None);
    for i in 0..20 {
        s.create_asset(&format!("pipe-{i}"), "p256");
    }
    for args in [&["--help"][..], &["audit", "export"], &["asset", "list"]] {
        for _ in 0..5 {
            let mut child = s
                .cli()
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // The reader goes away at once, before the command writes.
            drop(child.stdout.take());
            let o = child.wait_with_output().unwrap();
            let err = stderr(&o);
            assert!(
                !err.contains("panicked") && !err.contains("Broken pipe"),
                "{args:?}: {err}"
            );
            assert_eq!(code(&o), 0, "{args:?}: {err}");
        }
    }
}

#[test]
fn the_pin_from_standard_input_and_none_without_a_terminal() {
    let s = setup(None);
    let mut child = s
        .cli()
        .env_remove("P11DERIVE_PIN")
        .args([
            "--pin-file",
            "-",
            "asset",
            "create",
            "piped",
            "--type",
            "p256",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"123456\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert_eq!(s.asset_show("piped")["current"], 1);

    // No PIN anywhere and no terminal: a message that names the token and
    // every way to give it, and nothing changed.
    let o = s
        .cli()
        .env_remove("P11DERIVE_PIN")
        .args(["asset", "create", "nopin", "--type", "p256"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&s.token_label) && err.contains("--pin-file -"),
        "{err}"
    );
    assert!(err.contains("P11DERIVE_PIN"), "{err}");
    assert_eq!(code(&cli(&s, &["asset", "show", "nopin"])), 4);
}

#[test]
fn the_pin_is_asked_on_a_terminal_without_echo() {
    let s = setup(None);
    let (rc, shown) = on_terminal(
        &s,
        &["asset", "create", "asked", "--type", "p256"],
        &format!("{PIN}\r"),
    );
    assert_eq!(rc, 0, "{shown}");
    assert!(
        shown.contains(&format!("User PIN of backing token {:?}", s.token_label)),
        "{shown}"
    );
    assert!(!shown.contains(PIN), "the PIN was echoed: {shown}");
    assert_eq!(s.asset_show("asked")["current"], 1);

    // Ctrl-C at the prompt: cancelled, nothing changed, and the terminal
    // has its echo back.
    let (rc, shown) = on_terminal(
        &s,
        &["asset", "create", "cancelled", "--type", "p256"],
        "12\x03",
    );
    assert_eq!(rc, 1, "{shown}");
    assert!(shown.contains("cancelled"), "{shown}");
    assert!(shown.contains("[echo on]"), "{shown}");
    assert_eq!(code(&cli(&s, &["asset", "show", "cancelled"])), 4);
}

#[test]
fn a_wrong_pin_names_the_token_and_changes_nothing() {
    let s = setup(None);
    let pin = s.dir.join("wrong-pin");
    std::fs::write(&pin, "000000\n").unwrap();
    let o = cli(
        &s,
        &[
            "--pin-file",
            pin.to_str().unwrap(),
            "asset",
            "create",
            "w",
            "--type",
            "p256",
        ],
    );
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("CKR_PIN_INCORRECT") && err.contains(&s.token_label),
        "{err}"
    );
    assert!(!err.contains("000000"), "{err}");
    assert_eq!(code(&cli(&s, &["asset", "show", "w"])), 4);
}

#[test]
fn each_key_type_in_its_own_words() {
    let s = setup(None);
    let create = |name: &str, kt: &str| {
        let o = cli(&s, &["asset", "create", name, "--type", kt]);
        assert_eq!(code(&o), 0, "{}", output_text(&o));
        stdout(&o)
    };
    let aes = create("kek", "aes256");
    assert!(aes.contains("version 1 encrypts and decrypts"), "{aes}");
    assert!(!aes.contains("sign") && !aes.contains("verif"), "{aes}");
    let hmac = create("mac", "hmac-sha256");
    assert!(hmac.contains("version 1 signs and verifies"), "{hmac}");
    let ec = create("ec", "secp256k1");
    assert!(ec.contains("version 1 signs"), "{ec}");

    let shown = stdout(&cli(&s, &["asset", "show", "kek"]));
    assert!(
        shown.contains("ENCRYPT") && shown.contains("CHECK VALUE"),
        "{shown}"
    );
    assert!(
        !shown.contains("SIGN") && !shown.contains("PUBLIC KEY"),
        "{shown}"
    );
    let shown = stdout(&cli(&s, &["asset", "show", "mac"]));
    assert!(
        shown.contains("SIGN") && shown.contains("CHECK VALUE"),
        "{shown}"
    );
    let shown = stdout(&cli(&s, &["asset", "show", "ec"]));
    assert!(
        shown.contains("SIGN") && shown.contains("PUBLIC KEY"),
        "{shown}"
    );

    let v = &s.asset_show("kek")["versions"][0];
    assert_eq!(v["may_encrypt"], true, "{v}");
    assert_eq!(v["check_value"].as_str().map(str::len), Some(6), "{v}");
    assert!(
        v.get("may_sign").is_none() && v.get("public_key").is_none(),
        "{v}"
    );
    let v = &s.asset_show("mac")["versions"][0];
    assert!(v["may_sign"] == true && v["check_value"].is_string() && v.get("public_key").is_none());
    let v = &s.asset_show("ec")["versions"][0];
    assert_eq!(v["public_key"].as_str().map(str::len), Some(130), "{v}");
}

#[test]
fn audit_output_is_readable_and_its_filters_are_checked() {
    let s = setup(None);
    s.create_asset("seen", "p256");
    {
        let p = s.load();
        let session = p.user_session();
        try_sign(&session, "seen").expect("sign");
    }
    let records = s.audit_records(&["--asset", "seen"]);
    let sign = records
        .iter()
        .find(|r| r["event"] == "sign")
        .expect("a sign record");
    let time = sign["time"].as_str().unwrap();
    // 2026-12-04T21:03:19.123456789Z
    assert_eq!(time.len(), 30, "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
    assert_eq!(sign["mechanism_name"], "CKM_ECDSA", "{sign}");
    assert_eq!(sign["rv_name"], "CKR_OK", "{sign}");
    assert_eq!(sign["rv"], 0, "{sign}");

    let tail = stdout(&cli(&s, &["audit", "tail", "-n", "3"]));
    assert!(tail.contains("Z  pid") && tail.contains("CKR_OK"), "{tail}");
    assert!(tail.contains("CKM_ECDSA"), "{tail}");
    assert!(!tail.contains("rv 0x"), "{tail}");

    let o = cli(&s, &["audit", "export", "--asset", "nope"]);
    assert_eq!(code(&o), 4, "{}", output_text(&o));
    assert!(stderr(&o).contains("nope"));
    let o = cli(&s, &["audit", "tail", "--asset", "nope"]);
    assert_eq!(code(&o), 4, "{}", output_text(&o));
}

#[test]
fn trimming_to_where_it_is_is_a_no_op() {
    let s = setup(None);
    s.create_asset("t", "p256");
    ok(&s, &["asset", "rotate", "t"]);
    ok(&s, &["asset", "rotate", "t"]);
    ok(&s, &["asset", "trim", "t", "3"]);
    let before = s.audit_records(&[]).len();
    let o = cli(&s, &["asset", "trim", "t", "3"]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert!(
        stderr(&o).contains("nothing changed"),
        "{}",
        output_text(&o)
    );
    let o = cli(&s, &["asset", "trim", "t", "2"]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert_eq!(s.audit_records(&[]).len(), before, "a no-op was recorded");
    // Past the current version it is still refused.
    assert_eq!(code(&cli(&s, &["asset", "trim", "t", "9"])), 3);
    s.audit_verifies();
}

#[test]
fn status_says_what_it_found_and_what_is_wrong() {
    let s = setup(None);
    s.create_asset("st", "p256");
    let o = cli(&s, &["status"]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    let text = stdout(&o);
    for want in [
        s.config.to_str().unwrap(),
        s.store.to_str().unwrap(),
        &s.token_label,
        "fingerprint",
        "problems      none",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let v = json(&cli(&s, &["doctor", "--json"]));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["store"]["assets"], 1, "{v}");
    assert_eq!(
        v["root"]["fingerprint"].as_str().map(str::len),
        Some(32),
        "{v}"
    );

    // A store that is gone: the problem and its fix, exit 1.
    std::fs::rename(&s.store, s.dir.join("elsewhere.db")).unwrap();
    let o = cli(&s, &["status", "--json"]);
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    let v = json(&o);
    assert_eq!(v["ok"], false);
    let problem = v["problems"][0]["problem"].as_str().unwrap();
    assert!(problem.contains(s.store.to_str().unwrap()), "{problem}");
    assert!(!problem.contains("create it with"), "{problem}");

    // A module that does not exist.
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, cfg.replace(SOFTHSM, "/nonexistent/libhsm.so")).unwrap();
    let o = cli(&s, &["status"]);
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains("/nonexistent/libhsm.so") && stdout(&o).contains("fix:"),
        "{}",
        output_text(&o)
    );
}

#[test]
fn pubkey_gives_each_versions_key_as_openssl_reads_it() {
    let s = setup(None);
    s.create_asset("pk", "secp256k1");
    ok(&s, &["asset", "rotate", "pk"]);
    let keys = version_keys(&s.asset_show("pk"));
    let key = |n: u64| hex(&keys.iter().find(|k| k.0 == n).unwrap().1);
    let pem = s.dir.join("v1.pem");
    let o = cli(&s, &["asset", "pubkey", "pk", "--version", "1"]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    std::fs::write(&pem, &o.stdout).unwrap();
    let text = Command::new("openssl")
        .args([
            "pkey",
            "-pubin",
            "-in",
            pem.to_str().unwrap(),
            "-text",
            "-noout",
        ])
        .output()
        .unwrap();
    assert!(text.status.success(), "{}", output_text(&text));
    let shown: String = stdout(&text)
        .lines()
        .filter(|l| l.starts_with("    "))
        .flat_map(|l| l.trim().split(':').map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert_eq!(shown, key(1), "openssl reads version 1's point");
    assert!(stdout(&text).contains("secp256k1"), "{}", stdout(&text));
    let o = cli(&s, &["asset", "pubkey", "pk", "--hex"]);
    assert_eq!(stdout(&o).trim(), key(2), "the current version by default");
    let o = cli(&s, &["asset", "pubkey", "pk", "--der"]);
    assert_eq!(o.stdout[0], 0x30, "DER");
    s.create_asset("sk", "aes256");
    assert_eq!(code(&cli(&s, &["asset", "pubkey", "sk"])), 3);
    assert_eq!(code(&cli(&s, &["asset", "pubkey", "nope"])), 4);
    assert_eq!(
        code(&cli(&s, &["asset", "pubkey", "pk", "--version", "7"])),
        2
    );
}

/// A DER ECDSA-Sig-Value of raw r || s.
fn der_signature(raw: &[u8]) -> Vec<u8> {
    let int = |b: &[u8]| {
        let mut b = b.to_vec();
        while b.len() > 1 && b[0] == 0 && b[1] < 0x80 {
            b.remove(0);
        }
        if b[0] >= 0x80 {
            b.insert(0, 0);
        }
        let mut out = vec![0x02, b.len() as u8];
        out.extend(b);
        out
    };
    let body = [int(&raw[..32]), int(&raw[32..])].concat();
    [vec![0x30, body.len() as u8], body].concat()
}

#[test]
fn verify_says_which_version_made_a_signature() {
    let s = setup(None);
    s.create_asset("who", "p256");
    let message = s.dir.join("msg.txt");
    std::fs::write(&message, b"pay 5 to bob").unwrap();
    let sign = |label: &str| {
        let p = s.load();
        let session = p.user_session();
        let key = private_key(&session, label);
        session
            .sign(&Mechanism::EcdsaSha256, key, b"pay 5 to bob")
            .expect("sign")
    };
    let v1 = s.dir.join("v1.sig");
    std::fs::write(&v1, sign("who")).unwrap();
    ok(&s, &["asset", "rotate", "who"]);
    let v2 = s.dir.join("v2.sig");
    std::fs::write(&v2, der_signature(&sign("who"))).unwrap();
    let check = |sig: &std::path::Path| {
        cli(
            &s,
            &[
                "verify",
                "--asset",
                "who",
                "--signature",
                sig.to_str().unwrap(),
                "--message",
                message.to_str().unwrap(),
                "--json",
            ],
        )
    };
    let o = check(&v1);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert_eq!(json(&o)["version"], 1);
    let o = check(&v2);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert_eq!(json(&o)["version"], 2, "a DER signature by version 2");
    let text = stdout(&cli(
        &s,
        &[
            "verify",
            "--asset",
            "who",
            "--signature",
            v2.to_str().unwrap(),
            "--message",
            message.to_str().unwrap(),
        ],
    ));
    assert!(text.contains("who@v2"), "{text}");
    // Over the digest, as CKM_ECDSA signs.
    let digest = sha256_hex(b"pay 5 to bob");
    let o = cli(
        &s,
        &[
            "verify",
            "--asset",
            "who",
            "--signature",
            v1.to_str().unwrap(),
            "--digest",
            &digest,
        ],
    );
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    // Another message: no version verifies it.
    std::fs::write(&message, b"pay 500 to bob").unwrap();
    let o = check(&v1);
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    assert!(stderr(&o).contains("no version"), "{}", output_text(&o));
    // Version 1 trimmed: made by it, but it verifies no more.
    std::fs::write(&message, b"pay 5 to bob").unwrap();
    ok(&s, &["asset", "trim", "who", "2"]);
    let o = check(&v1);
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    assert!(stderr(&o).contains("trimmed"), "{}", output_text(&o));
}

#[test]
fn man_pages_and_completions_come_from_the_same_definition() {
    let dir = tempfile::tempdir().unwrap();
    let o = bare().arg("man").arg(dir.path()).output().unwrap();
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    for page in [
        "p11derive.1",
        "p11derive-asset-create.1",
        "p11derive-audit-export.1",
        "p11derive-status.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
    let create = std::fs::read_to_string(dir.path().join("p11derive-asset-create.1")).unwrap();
    assert!(
        create.contains("prime256v1"),
        "the examples and key types are in the page"
    );
    let o = bare().args(["completions", "bash"]).output().unwrap();
    assert_eq!(code(&o), 0);
    let bash = stdout(&o);
    assert!(bash.contains("complete -F") && bash.contains("pubkey") && bash.contains("--pin-file"));
    // bash accepts it.
    let mut sh = Command::new("bash")
        .args(["-n"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sh.stdin.take().unwrap().write_all(bash.as_bytes()).unwrap();
    let mut err = String::new();
    sh.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(sh.wait().unwrap().success(), "{err}");
}

#[test]
fn the_install_script_puts_pages_and_completions_where_tools_look() {
    let prefix = tempfile::tempdir().unwrap();
    // This run's CLI and provider (cargo leaves the provider in deps/).
    let build = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(cli_path(), build.path().join("p11derive")).unwrap();
    std::os::unix::fs::symlink(module_path(), build.path().join("libp11derive.so")).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("bash")
        .arg(root.join("tools/install.sh"))
        .env("PREFIX", prefix.path())
        .env("P11DERIVE_BUILD", build.path())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    for file in [
        "bin/p11derive",
        "lib/libp11derive.so",
        "share/man/man1/p11derive.1",
        "share/man/man1/p11derive-verify.1",
        "share/bash-completion/completions/p11derive",
        "share/zsh/site-functions/_p11derive",
        "share/fish/vendor_completions.d/p11derive.fish",
    ] {
        let meta = std::fs::metadata(prefix.path().join(file));
        assert!(meta.is_ok_and(|m| m.len() > 0), "{file} missing or empty");
    }
    let o = Command::new(prefix.path().join("bin/p11derive"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0);
}
