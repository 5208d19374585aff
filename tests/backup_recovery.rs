//! The root's SLIP-39 backup (issue 22), further: interoperability with the SLIP-39 reference
//! implementation at the command line (in both directions, down to an asset's public key), the
//! ceremony and a recovery on a terminal, and a governed recovery in users mode with approvals
//! signed by openssl and a cooldown.

mod common;
#[path = "common/governed.rs"]
mod governed;
#[path = "common/backup.rs"]
mod kit;
#[path = "common/reference.rs"]
mod reference;

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use governed::*;
use kit::*;
use reference::reference_available;

#[test]
fn shares_written_by_init_combine_in_the_reference_to_the_same_root_and_keys() {
    if !reference_available() {
        return;
    }
    let (s, d, fp) = backed_up_2_of_3();
    s.create_asset("btc-ref", "secp256k1");
    let point = pubkey(&s, "btc-ref");

    let combined = python(
        "import sys, shamir_mnemonic as s\n\
         print(s.combine_mnemonics(sys.argv[1:], b'').hex())",
        &[&words(&share(&d, 1, 1)), &words(&share(&d, 1, 3))],
    );
    let root = unhex(&combined);
    assert_eq!(root.len(), 32);
    assert_eq!(reference_fingerprint(&root), fp);
    assert_eq!(reference_point(&root, "btc-ref", 1, "secp256k1"), point);
    // The test's own combination agrees.
    assert_eq!(root_of(&[share(&d, 1, 2), share(&d, 1, 3)], b""), root);
}

#[test]
fn shares_made_by_the_reference_recover_into_a_fresh_token_without_a_store() {
    if !reference_available() {
        return;
    }
    let s = setup_with(None, false);
    let mut root = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut root)
        .unwrap();
    let fp = reference_fingerprint(&root);
    let made = python(
        "import sys, shamir_mnemonic as s\n\
         sets = s.generate_mnemonics(2, [(2, 3), (3, 5)], bytes.fromhex(sys.argv[1]), \
         b'ref pass', extendable=True, iteration_exponent=1)\n\
         for g, group in enumerate(sets):\n\
         \x20   for m, words in enumerate(group):\n\
         \x20       print(g + 1, m + 1, words)",
        &[&hex(&root)],
    );
    let d = s.dir.join("reference");
    std::fs::create_dir(&d).unwrap();
    for line in made.lines() {
        let mut parts = line.splitn(3, ' ');
        let (g, m) = (parts.next().unwrap(), parts.next().unwrap());
        let file = d.join(format!("share-g{g}-m{m}.txt"));
        std::fs::write(file, format!("{}\n", parts.next().unwrap())).unwrap();
    }
    let pass = s.dir.join("pass.txt");
    std::fs::write(&pass, "ref pass\n").unwrap();
    let quorum = [
        share(&d, 1, 3),
        share(&d, 1, 1),
        share(&d, 2, 5),
        share(&d, 2, 1),
        share(&d, 2, 2),
    ];
    let with_pass = ["--passphrase-file", pass.to_str().unwrap()];
    let o = recover(
        &s,
        &quorum,
        &[&with_pass[..], &["--fingerprint", &fp]].concat(),
    );
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no store at"));
    assert!(token_has_root(&s));

    let o = expect_exit(&s, &["--json", "init"], 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["root"], "kept", "{v}");
    assert_eq!(v["root_fingerprint"], fp.as_str(), "{v}");
    s.create_asset("from-ref", "secp256k1");
    assert_eq!(
        pubkey(&s, "from-ref"),
        reference_point(&root, "from-ref", 1, "secp256k1")
    );
}

/// The share words a terminal ceremony showed, one phrase per screen.
fn shown_shares(screen: &str) -> Vec<String> {
    screen
        .split("Write these words down")
        .skip(1)
        .map(|part| {
            let part = part.split("Press Enter").next().unwrap();
            let tokens: Vec<&str> = part.split_whitespace().collect();
            let words: Vec<&str> = tokens
                .windows(2)
                .filter(|p| p[0].ends_with('.') && p[0][..p[0].len() - 1].parse::<u32>().is_ok())
                .map(|p| p[1])
                .collect();
            words.join(" ")
        })
        .collect()
}

#[test]
fn a_terminal_ceremony_and_shares_typed_on_a_terminal() {
    let s = setup_with(None, false);
    let steps = [
        ("Press Enter to show share 1", "\n"),
        ("Press Enter once the words are written down", "\n"),
        ("presses Enter to see share 2", "\n"),
        ("Press Enter once the words are written down", "\n"),
    ];
    let (rc, screen) = drive_pty(
        &s,
        &["init", "--backup", "2-of-2", "--shares-terminal"],
        &steps,
    );
    assert_eq!(rc, 0, "{screen}");
    assert!(screen.contains("All 2 shares shown"), "{screen}");
    let shares = shown_shares(&screen);
    assert_eq!(shares.len(), 2, "{screen}");
    for sh in &shares {
        assert_eq!(sh.split(' ').count(), 33, "{sh}");
    }
    assert!(token_has_root(&s));
    s.create_asset("t", "p256");
    let point = pubkey(&s, "t");

    // The words shown, as files, recover the root.
    wipe(&s);
    let files: Vec<PathBuf> = shares
        .iter()
        .enumerate()
        .map(|(i, sh)| {
            let f = s.dir.join(format!("shown-{i}.txt"));
            std::fs::write(&f, format!("{sh}\n")).unwrap();
            f
        })
        .collect();
    let o = recover(&s, &files, &[]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert_eq!(pubkey(&s, "t"), point);

    // Typed on the terminal: a mistyped word is named and the share asked again.
    wipe(&s);
    let mut w: Vec<&str> = shares[0].split(' ').collect();
    let typo = format!("{}q", w[3]);
    w[3] = &typo;
    let mistyped = format!("{}\n", w.join(" "));
    let first = format!("{}\n", shares[0]);
    let second = format!("{}\n", shares[1]);
    let steps = [
        ("Share 1 (", mistyped.as_str()),
        ("Share 1 (", first.as_str()),
        ("Share 2 (", first.as_str()),
        ("given already", ""),
        ("Share 2 (", second.as_str()),
    ];
    let (rc, screen) = drive_pty(&s, &["root", "recover"], &steps);
    assert_eq!(rc, 0, "{screen}");
    assert!(
        screen.contains(&format!("word 4 \"{typo}\" is not a SLIP-39 word")),
        "{screen}"
    );
    assert!(screen.contains("type it again"), "{screen}");
    assert!(screen.contains("recovered from 2 shares"), "{screen}");
    // Typed without echo: no run of the words on the screen.
    for run in shares.iter().flat_map(|sh| word_runs(sh, 3)) {
        assert!(!screen.contains(&run), "echoed: {run}");
    }
    assert_eq!(pubkey(&s, "t"), point);
    s.audit_verifies();
}

#[test]
fn a_governed_recovery_waits_for_its_cooldown_and_its_approvals() {
    let (s, d, fp) = governed("3s");
    let point = pubkey_as_alice(&s, "gov");
    let files = [share(&d, 1, 1), share(&d, 1, 3)];
    // The drill is for an admin or an auditor, not a signer.
    let drill = [&["root", "check-shares"][..], &sargs(&files)].concat();
    for (user, secret, want) in [("alice", ALICE, 0), ("carol", CAROL, 0), ("bob", BOB, 3)] {
        let o = as_user(&s, user, secret, &drill);
        assert_eq!(code(&o), want, "{user}: {}", output_text(&o));
    }

    wipe(&s);
    // A signer may not recover the root.
    let o = recover_as(&s, "bob", BOB, &files, &[]);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(!token_has_root(&s));

    // The first request: approved at once, but in its cooldown. The approvals are kept.
    let (first, bytes) = announce(&s, &files, "first.req");
    assert!(std::fs::read_to_string(&bytes).unwrap().contains(&fp));
    let ann = format!("ann={}", sign(&s.dir, "ann", &bytes).display());
    let ben = format!("ben={}", sign(&s.dir, "ben", &bytes).display());
    let o = recover_as(
        &s,
        "alice",
        ALICE,
        &files,
        &["--request", &first, "--approval", &ann, "--approval", &ben],
    );
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(stderr(&o).contains("cooldown"), "{}", output_text(&o));
    assert!(!token_has_root(&s));
    // The request names its token: carried out into another one, it is refused.
    let elsewhere = setup_with(None, false);
    let text = std::fs::read_to_string(&s.config).unwrap();
    let moved = text.replace(
        &format!("token_label = \"{}\"", s.token_label),
        &format!("token_label = \"{}\"", elsewhere.token_label),
    );
    assert_ne!(moved, text);
    std::fs::write(&s.config, &moved).unwrap();
    let o = recover_as(&s, "alice", ALICE, &files, &["--request", &first]);
    std::fs::write(&s.config, &text).unwrap();
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(
        stderr(&o).contains(&format!(
            "recovers into backing token {:?}, but the config names token {:?}",
            s.token_label, elsewhere.token_label
        )),
        "{}",
        output_text(&o)
    );
    assert!(!token_has_root(&elsewhere));

    // A second request, after its cooldown: one approval is not enough, two are.
    let first_ann = sign(&s.dir, "ann", &bytes);
    let (second, bytes) = announce(&s, &files, "second.req");
    assert_ne!(second, first);
    // Approvals over the other request's bytes, or by no registered approver: refused.
    let stray = [
        format!("ann={}", first_ann.display()),
        format!("zed={}", first_ann.display()),
    ];
    for a in &stray {
        let o = recover_as(
            &s,
            "alice",
            ALICE,
            &files,
            &["--request", &second, "--approval", a],
        );
        assert_eq!(code(&o), 3, "{a}: {}", output_text(&o));
        assert!(!token_has_root(&s));
    }
    let ann = format!("ann={}", sign(&s.dir, "ann", &bytes).display());
    let ben = format!("ben={}", sign(&s.dir, "ben", &bytes).display());
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let o = recover_as(
        &s,
        "alice",
        ALICE,
        &files,
        &["--request", &second, "--approval", &ann],
    );
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(
        stderr(&o).contains("lacks approvals"),
        "{}",
        output_text(&o)
    );
    assert!(!token_has_root(&s));
    let o = recover_as(
        &s,
        "alice",
        ALICE,
        &files,
        &[
            "--json",
            "--request",
            &second,
            "--approval",
            &ann,
            "--approval",
            &ben,
        ],
    );
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["request"], second.as_str(), "{v}");
    assert_eq!(pubkey_as_alice(&s, "gov"), point);

    // The records: the recovery names its request; each approval was recorded.
    let records = audit_as_carol(&s);
    let recovered: Vec<&str> = records
        .iter()
        .filter(|r| r["event"] == "root")
        .filter_map(|r| r["detail"].as_str())
        .filter(|d| d.starts_with("root recovered:"))
        .collect();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(
        recovered[0].ends_with(&format!("request={second}")),
        "{recovered:?}"
    );
    let executed = records.iter().filter(|r| r["event"] == "request").any(|r| {
        r["detail"]
            .as_str()
            .is_some_and(|d| d.contains("request executed: root recovered"))
    });
    assert!(executed, "no `request executed: root recovered` record");
    for approver in ["ann", "ben"] {
        let n = records
            .iter()
            .filter(|r| r["event"] == "approval")
            .filter(|r| {
                r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(&format!("approval by {approver}")))
            })
            .count();
        assert_eq!(n, 2, "{approver}'s approvals of both requests");
    }

    // `request execute` does not run a recovery: it names `root recover`.
    for id in [&first, &second] {
        let o = as_user(&s, "alice", ALICE, &["request", "execute", id]);
        assert_eq!(code(&o), 3, "{}", output_text(&o));
        assert!(stderr(&o).contains("root recover"), "{}", output_text(&o));
    }
    // The executed request does not run again, even into an empty token.
    wipe(&s);
    let o = recover_as(&s, "alice", ALICE, &files, &["--request", &second]);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(stderr(&o).contains("executed"), "{}", output_text(&o));
    assert!(!token_has_root(&s));
    // The first request, out of its cooldown, holds the approvals given in it.
    let o = recover_as(&s, "alice", ALICE, &files, &["--request", &first]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert_eq!(pubkey_as_alice(&s, "gov"), point);
}

fn pubkey_as_alice(s: &Setup, name: &str) -> String {
    let o = as_user(s, "alice", ALICE, &["asset", "pubkey", name, "--hex"]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn audit_as_carol(s: &Setup) -> Vec<serde_json::Value> {
    let o = as_user(s, "carol", CAROL, &["audit", "export"]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_store_edited_to_name_another_roots_fingerprint_does_not_verify_under_that_root() {
    let (s, _, fp) = backed_up_2_of_3();
    s.create_asset("kept", "secp256k1");
    let (_other, od, ofp) = backed_up_2_of_3();
    wipe(&s);
    // Whoever holds the other root's shares edits the store to name that root.
    sqlite(
        &s.store,
        &format!("UPDATE audit SET detail = replace(detail, '{fp}', '{ofp}')"),
    );
    let theirs = [share(&od, 1, 1), share(&od, 1, 2)];
    let o = recover(&s, &theirs, &[]);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(
        stderr(&o).contains("does not verify under the rebuilt root"),
        "{}",
        output_text(&o)
    );
    let o = recover(&s, &theirs, &["--fingerprint", &ofp]);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(!token_has_root(&s));
}

#[test]
fn a_terminal_closed_before_every_share_was_confirmed_imports_nothing() {
    let s = setup_with(None, false);
    // The first share is shown; the terminal ends (end of file) instead of a confirmation.
    let steps = [
        ("Press Enter to show share 1", "\n"),
        ("Press Enter once the words are written down", "\x04"),
    ];
    let args = ["init", "--backup", "2-of-3", "--shares-terminal"];
    let (rc, screen) = drive_pty(&s, &args, &steps);
    assert_eq!(rc, 1, "{screen}");
    assert!(
        screen.contains("before every share was confirmed: nothing was imported"),
        "{screen}"
    );
    assert!(!token_has_root(&s));
    assert!(
        !s.store.exists(),
        "a store was made for a root never imported"
    );
    // The token is still free for a ceremony that ends.
    let d = s.dir.join("ceremony");
    ceremony(&s, &d, &["--backup", "2-of-3"], &[]);
    assert!(token_has_root(&s));
}

#[test]
fn a_passphrase_typed_on_the_terminal_twice_at_the_ceremony_and_once_at_recovery() {
    let s = setup_with(None, false);
    let d = s.dir.join("ceremony");
    let args = [
        "init",
        "--backup",
        "2-of-3",
        "--shares-dir",
        d.to_str().unwrap(),
        "--passphrase",
    ];
    // Two passphrases that differ: a usage error, nothing made.
    let steps = [
        ("Passphrase of the shares (no echo): ", "blue whale 7\n"),
        ("The passphrase again: ", "blue whale 8\n"),
    ];
    let (rc, screen) = drive_pty(&s, &args, &steps);
    assert_eq!(rc, 2, "{screen}");
    assert!(screen.contains("the two passphrases differ"), "{screen}");
    assert!(!screen.contains("blue whale"), "echoed: {screen}");
    assert!(!token_has_root(&s) && !s.store.exists() && !d.exists());

    let steps = [
        ("Passphrase of the shares (no echo): ", "blue whale 7\n"),
        ("The passphrase again: ", "blue whale 7\n"),
    ];
    let (rc, screen) = drive_pty(&s, &args, &steps);
    assert_eq!(rc, 0, "{screen}");
    s.create_asset("pp", "p256");
    let point = pubkey(&s, "pp");
    let files = [share(&d, 1, 2), share(&d, 1, 3)];
    // The shares with that passphrase give the live root (the HSM's fingerprint, `status`).
    let live = fingerprint_of(&s);
    assert_eq!(live.len(), 32);
    assert_eq!(
        reference_fingerprint(&root_of(&files, b"blue whale 7")),
        live
    );
    assert_ne!(reference_fingerprint(&root_of(&files, b"")), live);
    wipe(&s);
    let shares = sargs(&files);
    let recover_args = [&["root", "recover"][..], &shares, &["--passphrase"]].concat();
    let (rc, screen) = drive_pty(&s, &recover_args, &[("Passphrase", "blue whale 8\n")]);
    assert_eq!(rc, 3, "{screen}");
    assert!(screen.contains("passphrase is wrong"), "{screen}");
    assert!(!token_has_root(&s));
    let (rc, screen) = drive_pty(&s, &recover_args, &[("Passphrase", "blue whale 7\n")]);
    assert_eq!(rc, 0, "{screen}");
    assert!(!screen.contains("blue whale"), "echoed: {screen}");
    assert_eq!(pubkey(&s, "pp"), point);
}

/// The live root's fingerprint as `status --json` shows it.
fn fingerprint_of(s: &Setup) -> String {
    let o = expect_exit(s, &["--json", "status"], 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["root"]["fingerprint"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn an_announcement_whose_bytes_file_exists_records_no_request_or_names_it() {
    let (s, d, _) = governed("1h");
    wipe(&s);
    let files = [share(&d, 1, 1), share(&d, 1, 2)];
    let taken = s.dir.join("taken.req");
    std::fs::write(&taken, "someone else's file\n").unwrap();
    let bytes_out = ["--bytes-out", taken.to_str().unwrap()];
    let o = recover_as(&s, "alice", ALICE, &files, &bytes_out);
    let rows = request_rows(&s);
    assert_eq!(
        std::fs::read_to_string(&taken).unwrap(),
        "someone else's file\n"
    );
    // Either refused before anything is recorded (a usage error or a failure, no request),
    // or announced (exit 5) with the request's id shown.
    match code(&o) {
        5 => assert!(rows.iter().any(|r| r == "recover|pending"), "{rows:?}"),
        _ => assert!(
            rows.is_empty(),
            "exit {:?} ({}), yet the store holds a request no one was told of: {rows:?}",
            code(&o),
            stderr(&o).trim()
        ),
    }
}

#[test]
fn two_recoveries_at_once_into_one_token_never_leave_two_roots() {
    let (s, d, _) = backed_up_2_of_3();
    let pair = |a, b| [share(&d, 1, a), share(&d, 1, b)];
    for attempt in 0..5 {
        wipe(&s);
        let start = |files: [PathBuf; 2]| {
            s.cli()
                .args(["root", "recover"])
                .args(share_args(&files))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("p11derive starts")
        };
        let (one, two) = (start(pair(1, 2)), start(pair(2, 3)));
        let outs = [
            one.wait_with_output().unwrap(),
            two.wait_with_output().unwrap(),
        ];
        let text = format!("{}\n{}", output_text(&outs[0]), output_text(&outs[1]));
        let recovered = outs.iter().filter(|o| o.status.success()).count();
        // Never two roots: a run that finds another root beside its own takes its own back
        // (both may, and then both are refused: run it again, alone).
        assert!(
            root_count(&s) <= 1,
            "attempt {attempt}: roots in the token: {text}"
        );
        assert_eq!(
            recovered,
            root_count(&s),
            "attempt {attempt}: a run said it recovered, yet the token holds {} roots: {text}",
            root_count(&s)
        );
        if recovered == 0 {
            assert!(
                text.contains("at the same time"),
                "attempt {attempt}: {text}"
            );
            let o = recover(&s, &pair(1, 3), &[]);
            assert_eq!(code(&o), 0, "attempt {attempt}, alone: {}", output_text(&o));
        }
        s.audit_verifies();
    }
}

#[test]
fn a_recovery_failing_after_the_import_takes_the_root_out_again() {
    let (s, d, fp) = backed_up_2_of_3();
    wipe(&s);
    // Another writer holds the store's write lock for the whole run: the recovery's records
    // cannot be written after the import.
    let locked = s.dir.join("locked");
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             open(sys.argv[2], 'w').write('1')\n\
             time.sleep(60)",
        )
        .arg(&s.store)
        .arg(&locked)
        .spawn()
        .expect("python3 starts");
    while !locked.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pair = [share(&d, 1, 1), share(&d, 1, 3)];
    let o = recover(&s, &pair, &[]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(code(&o), 1, "{}", output_text(&o));
    assert!(
        stderr(&o).contains("was taken out again"),
        "{}",
        output_text(&o)
    );
    assert_eq!(root_count(&s), 0, "the root stayed in the token");
    // Nothing half-written: the same recovery then goes through.
    let o = recover(&s, &pair, &["--json"]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["fingerprint"], fp.as_str());
    assert_eq!(root_count(&s), 1);
    s.audit_verifies();
}
