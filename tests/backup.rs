//! The root's SLIP-39 backup (issue 22) through the built `p11derive` and provider on real
//! SoftHSM tokens: the ceremony, a drill, the backing token wiped and the root recovered into
//! it (old keys sign and verify as before), groups and a passphrase, every refusal with its own
//! message and nothing imported, and no share word or root byte left in the log, the store or
//! any command's output.

mod common;
#[path = "common/backup.rs"]
mod kit;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::*;
use kit::*;

#[test]
fn ceremony_drill_wipe_recover_and_the_old_keys_sign_as_before() {
    let s = setup_with(None, false);
    let d = s.dir.join("ceremony");
    let init = ceremony(&s, &d, &["--backup", "2-of-3"], &[]);
    let fp = init["root_fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fp.len(), 32, "{init}");
    let set = init["backup"]["share_set"].as_u64().unwrap();
    assert_eq!(init["backup"]["shares"], 3, "{init}");
    let mut names: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let dir_mode = std::fs::metadata(&d).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700, "the shares directory made");
    assert_eq!(
        names,
        ["share-g1-m1.txt", "share-g1-m2.txt", "share-g1-m3.txt"]
    );
    for m in 1..=3 {
        let meta = std::fs::metadata(share(&d, 1, m)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "share {m}");
        assert_eq!(words(&share(&d, 1, m)).split(' ').count(), 33);
    }

    s.create_asset("btc-1", "secp256k1");
    s.create_asset("p-1", "p256");
    let k1 = pubkey(&s, "btc-1");
    let p1 = pubkey(&s, "p-1");
    provider_signs(&s, "btc-1", "secp256k1", &k1);
    provider_signs(&s, "p-1", "p256", &p1);

    // The drill with shares 1 and 2.
    let drill = [share(&d, 1, 1), share(&d, 1, 2)];
    let o = expect_exit(
        &s,
        &[&["--json", "root", "check-shares"][..], &sargs(&drill)].concat(),
        0,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["match"], true, "{v}");
    assert_eq!(v["live_fingerprint"], fp.as_str());
    let roots = root_records(&s);
    assert!(
        roots
            .iter()
            .any(|r| r.starts_with("root drill:") && r.ends_with(": match")),
        "{roots:?}"
    );

    // The HSM is lost: nothing works without the root.
    wipe(&s);
    assert!(!token_has_root(&s));
    let o = cli(&s, &["asset", "pubkey", "btc-1", "--hex"]);
    assert_ne!(code(&o), 0, "{}", output_text(&o));
    assert!(stderr(&o).contains("no root"), "{}", output_text(&o));
    let why = provider_cannot_sign(&s, "btc-1");
    assert!(why.starts_with("C_Login"), "{why}");

    // Another pair of shares recovers it.
    let o = recover(&s, &[share(&d, 1, 2), share(&d, 1, 3)], &["--json"]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["recovered"], true, "{v}");
    assert_eq!(v["fingerprint"], fp.as_str());
    assert_eq!(v["share_set"], set);
    assert!(token_has_root(&s));

    assert_eq!(pubkey(&s, "btc-1"), k1);
    assert_eq!(pubkey(&s, "p-1"), p1);
    provider_signs(&s, "btc-1", "secp256k1", &k1);
    provider_signs(&s, "p-1", "p256", &p1);
    let verified = s.audit_verifies();
    assert!(
        verified.contains("anchor at record") && verified.contains("present"),
        "{verified}"
    );

    // The records: ceremony, drill, recovery, each naming the fingerprint and the set.
    let roots = root_records(&s);
    for kind in ["root ceremony:", "root drill:", "root recovered:"] {
        let r = roots
            .iter()
            .find(|r| r.starts_with(kind))
            .unwrap_or_else(|| panic!("no {kind} record: {roots:?}"));
        assert!(r.contains(&format!("fingerprint={fp}")), "{r}");
        assert!(r.contains(&format!("id={set}")), "{r}");
    }
    let all = s.audit_records(&[]);
    let text = serde_json::to_string(&all).unwrap();
    for m in 1..=3 {
        for run in word_runs(&words(&share(&d, 1, m)), 3) {
            assert!(
                !text.contains(&run),
                "the audit log holds share words {run:?}"
            );
        }
    }
}

#[test]
fn groups_and_a_passphrase() {
    let s = setup_with(None, false);
    let d = s.dir.join("ceremony");
    let pass = s.dir.join("pass.txt");
    std::fs::write(&pass, "correct horse battery\n").unwrap();
    let wrong = s.dir.join("wrong.txt");
    std::fs::write(&wrong, "correct horse battery staple\n").unwrap();
    let plan = [
        "--group",
        "2-of-3",
        "--group",
        "3-of-5",
        "--groups-needed",
        "2",
    ];
    let init = ceremony(
        &s,
        &d,
        &plan,
        &["--passphrase-file", pass.to_str().unwrap()],
    );
    let fp = init["root_fingerprint"].as_str().unwrap().to_string();
    assert_eq!(init["backup"]["shares"], 8, "{init}");
    for (g, n) in [(1, 3), (2, 5)] {
        for m in 1..=n {
            assert!(share(&d, g, m).exists(), "g{g} m{m}");
        }
    }
    s.create_asset("k", "secp256k1");
    let k = pubkey(&s, "k");
    wipe(&s);

    let quorum = vec![
        share(&d, 1, 1),
        share(&d, 1, 3),
        share(&d, 2, 2),
        share(&d, 2, 4),
        share(&d, 2, 5),
    ];
    // Group 1 alone is too few.
    let o = recover(
        &s,
        &quorum[..2],
        &["--passphrase-file", pass.to_str().unwrap()],
    );
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(stderr(&o).contains("too few shares"), "{}", output_text(&o));
    assert!(
        stderr(&o).contains("1 more group needed"),
        "{}",
        output_text(&o)
    );
    // The right shares with a wrong passphrase: another fingerprint.
    let o = recover(&s, &quorum, &["--passphrase-file", wrong.to_str().unwrap()]);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    let e = stderr(&o);
    assert!(e.contains(&fp) && e.contains("passphrase"), "{e}");
    assert!(e.contains("Nothing was imported"), "{e}");
    // No passphrase at all is a wrong one too.
    let o = recover(&s, &quorum, &[]);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(stderr(&o).contains("passphrase"), "{}", output_text(&o));
    assert!(!token_has_root(&s));

    let o = recover(&s, &quorum, &["--passphrase-file", pass.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert_eq!(pubkey(&s, "k"), k);
    s.audit_verifies();
}

/// `init --backup 2-of-3 --shares-dir DIR`.
fn init_2_of_3(dir: &std::path::Path) -> [&str; 5] {
    [
        "init",
        "--backup",
        "2-of-3",
        "--shares-dir",
        dir.to_str().unwrap(),
    ]
}

#[test]
fn each_refusal_has_its_own_message_and_imports_nothing() {
    let (s, d, fp) = backed_up_2_of_3();

    // A ceremony on a token that already holds a root, or where the store exists.
    let d2 = s.dir.join("again");
    let args = init_2_of_3(&d2);
    refused(&s, &args, 3, "already holds a root");
    assert!(!d2.exists() || std::fs::read_dir(&d2).unwrap().count() == 0);
    // A drill after the ceremony, before the token is lost.
    let drill = [
        &["root", "check-shares"][..],
        &sargs(&[share(&d, 1, 1), share(&d, 1, 3)]),
    ];
    expect_exit(&s, &drill.concat(), 0);

    // A second ceremony on a second token: another share set.
    let (other, od, ofp) = backed_up_2_of_3();
    assert_ne!(ofp, fp);
    // A drill of the other set's shares against this root: a mismatch, exit 1, recorded.
    let drill = [
        &["root", "check-shares"][..],
        &sargs(&[share(&od, 1, 1), share(&od, 1, 2)]),
    ];
    let o = cli(&s, &drill.concat());
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    assert!(root_records(&s).iter().any(|r| r.ends_with("MISMATCH")));

    wipe(&s);
    // The store exists: a new ceremony would take it over.
    let d3 = s.dir.join("takeover");
    let args = init_2_of_3(&d3);
    refused(&s, &args, 3, "which a new one cannot replace");
    assert!(!token_has_root(&s));
    assert!(!d3.exists() || std::fs::read_dir(&d3).unwrap().count() == 0);
    // A shares directory that is not empty is a usage error (checked before anything).
    refused(&other, &init_2_of_3(&od), 2, "not empty");
    assert_eq!(std::fs::read_dir(&od).unwrap().count(), 3);

    // Each refused recovery: its exit code, every fragment in its message, no root in the
    // token and no file added to the shares directory. Its message, for more checks.
    let refuse = |files: &[PathBuf], extra: &[&str], want: i32, fragments: &[&str]| {
        let o = recover(&s, files, extra);
        assert_eq!(code(&o), want, "{}", output_text(&o));
        for f in fragments {
            assert!(stderr(&o).contains(f), "want {f:?}: {}", output_text(&o));
        }
        assert!(
            !token_has_root(&s),
            "a refused recovery left a root in the token"
        );
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 3, "{}", d.display());
        stderr(&o)
    };
    refuse(
        &[share(&d, 1, 1)],
        &[],
        3,
        &["too few shares", "1 of 2 shares needed"],
    );
    let mixed = [share(&d, 1, 1), share(&od, 1, 2)];
    refuse(&mixed, &[], 3, &["not of the share set being combined"]);

    // A mistyped word: named with its position; a file with a valid word changed, or two
    // words swapped: the checksum.
    let good = words(&share(&d, 1, 1));
    let edited = |name: &str, edit: &dyn Fn(&mut Vec<String>)| {
        let mut w: Vec<String> = good.split(' ').map(str::to_string).collect();
        edit(&mut w);
        let file = s.dir.join(name);
        std::fs::write(&file, format!("# an edited share\n{}\n", w.join(" "))).unwrap();
        [file, share(&d, 1, 2)]
    };
    let typo = format!("{}x", good.split(' ').nth(5).unwrap());
    let bad = edited("typo.txt", &|w| w[5] = typo.clone());
    let e = refuse(
        &bad,
        &[],
        3,
        &[&format!("word 6 \"{typo}\" is not a SLIP-39 word")],
    );
    assert!(e.contains(bad[0].to_str().unwrap()), "{e}");
    let other_word = |w: &mut Vec<String>| {
        w[9] = if w[9] == "academic" {
            "acid"
        } else {
            "academic"
        }
        .to_string()
    };
    refuse(
        &edited("changed.txt", &other_word),
        &[],
        3,
        &["checksum does not match"],
    );
    let swap = |w: &mut Vec<String>| {
        let j = (13..w.len()).find(|&j| w[j] != w[12]).unwrap();
        w.swap(12, j)
    };
    refuse(
        &edited("swapped.txt", &swap),
        &[],
        3,
        &["checksum does not match"],
    );

    // A wrong passphrase (the set has none); the other set's shares: another root.
    let pass = s.dir.join("pass.txt");
    std::fs::write(&pass, "not the passphrase\n").unwrap();
    let pair = [share(&d, 1, 1), share(&d, 1, 3)];
    let with_pass = ["--passphrase-file", pass.to_str().unwrap()];
    refuse(&pair, &with_pass, 3, &["passphrase is wrong", &fp]);
    refuse(&[share(&od, 1, 1), share(&od, 1, 3)], &[], 3, &[&ofp, &fp]);

    // A wrong --fingerprint with the store: not the store's root; a malformed one: usage.
    let not_store = format!("--fingerprint {ofp} is not the root of store");
    refuse(&pair, &["--fingerprint", &ofp], 3, &[&not_store]);
    refuse(&pair, &["--fingerprint", "12zz"], 2, &[]);

    // Without the store: the fingerprint given is the one checked; none given is a usage error.
    let away = s.dir.join("away");
    std::fs::create_dir(&away).unwrap();
    let files = ["state.db", "state.db-wal", "state.db-shm"];
    let move_all = |from: &std::path::Path, to: &std::path::Path| {
        for f in files {
            if from.join(f).exists() {
                std::fs::rename(from.join(f), to.join(f)).unwrap();
            }
        }
    };
    move_all(&s.dir, &away);
    refuse(
        &pair,
        &["--fingerprint", &ofp],
        3,
        &["--fingerprint expects", &ofp],
    );
    refuse(&pair, &[], 2, &["--fingerprint HEX"]);
    assert!(!s.store.exists(), "a refused recovery made a store");
    move_all(&away, &s.dir);

    // The right shares work after all that; then a token holding a root is refused.
    let o = recover(&s, &pair, &["--fingerprint", &fp]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    let again = [&["root", "recover"][..], &sargs(&pair)].concat();
    refused(&s, &again, 3, "already holds a root");
    s.audit_verifies();
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 3);
}

#[test]
fn no_share_word_or_root_byte_in_the_log_the_store_or_any_output() {
    let s = setup_with(None, false);
    let d = s.dir.join("ceremony");
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut run = |s: &Setup, args: &[&str], want: i32| {
        let o = expect_exit(s, args, want);
        outputs.push((format!("{args:?} stdout"), o.stdout));
        outputs.push((format!("{args:?} stderr"), o.stderr));
    };
    let dir = d.to_str().unwrap();
    run(&s, &["init", "--backup", "2-of-3", "--shares-dir", dir], 0);
    let files: Vec<PathBuf> = (1..=3).map(|m| share(&d, 1, m)).collect();
    let phrases: Vec<String> = files.iter().map(|f| words(f)).collect();
    let root = root_of(&files[..2], b"");
    assert_eq!(root.len(), 32);
    run(&s, &["asset", "create", "a", "--type", "secp256k1"], 0);
    let shares = sargs(&files);
    run(
        &s,
        &[&["root", "check-shares"][..], &shares[..4]].concat(),
        0,
    );
    run(
        &s,
        &[&["--json", "root", "check-shares"][..], &shares[2..]].concat(),
        0,
    );
    wipe(&s);
    run(&s, &[&["root", "recover"][..], &shares[..2]].concat(), 3);
    run(&s, &[&["root", "recover"][..], &shares[2..]].concat(), 0);
    run(&s, &["audit", "verify"], 0);
    run(&s, &["audit", "export"], 0);
    run(&s, &["status"], 0);
    // The provider signs once, so that its log has lines after the recovery too.
    let point = pubkey(&s, "a");
    provider_signs(&s, "a", "secp256k1", &point);

    for (what, bytes) in &outputs {
        holds_no_secret(what, bytes, &phrases, &root);
    }
    let log = std::fs::read(s.dir.join("p11derive.log")).unwrap();
    assert!(!log.is_empty());
    holds_no_secret("the log", &log, &phrases, &root);
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        if let Ok(bytes) = std::fs::read(s.dir.join(f)) {
            holds_no_secret(f, &bytes, &phrases, &root);
        }
    }
    // The check itself sees share words where they are (not a vacuous search).
    let first = std::fs::read(&files[0]).unwrap();
    let caught = std::panic::catch_unwind(|| holds_no_secret("share", &first, &phrases, &root));
    assert!(
        caught.is_err(),
        "the search does not find words in a share file"
    );
}

/// What must not stay in a command's memory: the root `files` rebuild, every other run of 4
/// words of each share; and a control that must be there (the config's path, in the
/// environment), showing that the scan sees the process.
fn secrets_of(s: &Setup, files: &[PathBuf]) -> Vec<(String, Vec<u8>)> {
    let mut n = vec![
        ("the root".to_string(), root_of(&files[..2], b"")),
        (
            "control".to_string(),
            s.config.to_str().unwrap().as_bytes().to_vec(),
        ),
    ];
    for f in files {
        for (i, run) in word_runs(&words(f), 4).into_iter().enumerate().step_by(2) {
            n.push((
                format!("{} words {}..", f.display(), i + 1),
                run.into_bytes(),
            ));
        }
    }
    n
}

#[test]
fn no_share_or_root_byte_in_the_process_at_its_end() {
    let s = setup_with(None, false);
    let d = s.dir.join("ceremony");
    let files: Vec<PathBuf> = (1..=3).map(|m| share(&d, 1, m)).collect();
    let shares = sargs(&files);
    let runs: [(&str, Vec<&str>); 3] = [
        ("the ceremony", init_2_of_3(&d).to_vec()),
        (
            "a drill",
            [&["root", "check-shares"][..], &shares[..4]].concat(),
        ),
        (
            "a recovery",
            [&["root", "recover"][..], &shares[2..]].concat(),
        ),
    ];
    for (what, args) in runs {
        if what == "a recovery" {
            wipe(&s);
        }
        let (rc, out, found) = scan_at_exit(&s, &args, || secrets_of(&s, &files));
        assert_eq!(rc, 0, "{what}: {out}");
        let (control, leaks): (Vec<&String>, Vec<&String>) =
            found.iter().partition(|f| f.starts_with("control"));
        assert!(
            !control.is_empty(),
            "{what}: the scan does not see the process"
        );
        assert!(leaks.is_empty(), "{what} leaves in its memory: {leaks:#?}");
    }
    assert!(token_has_root(&s));
    s.audit_verifies();
}
