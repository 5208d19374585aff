//! The root's backup and recovery at their edges (issue 22, found by review): an expired recovery request imports nothing; a governed recovery whose record cannot be written keeps its request pending; `init` never makes a new root beside an existing store; a passphrase SLIP-39 does not allow; a pass-through drill against another root's store.

mod common;
#[path = "common/governed.rs"]
mod governed;
#[path = "common/backup.rs"]
mod kit;

use std::path::PathBuf;

use common::*;
use governed::*;
use kit::*;

/// The audit records of the store at `db`, counted.
fn records(db: &std::path::Path) -> usize {
    let o = std::process::Command::new("sqlite3")
        .arg(db)
        .arg("SELECT count(*) FROM audit")
        .output()
        .expect("sqlite3 runs");
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

#[test]
fn an_expired_recovery_request_imports_nothing() {
    let (s, d, _) = governed("1s");
    // A request lives recover_cooldown + expires: 1 s + 2 s here.
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str("expires = \"2s\"\n");
    std::fs::write(&s.config, text).unwrap();
    wipe(&s);
    let files = [share(&d, 1, 1), share(&d, 1, 2)];
    let (id, bytes) = announce(&s, &files, "old.req");
    let approvals = both_approve(&s, &id, &bytes);
    std::thread::sleep(std::time::Duration::from_millis(4_000));
    let approvals: Vec<&str> = approvals.iter().map(String::as_str).collect();
    let o = recover_as(&s, "alice", ALICE, &files, &approvals);
    assert_eq!(code(&o), 3, "{}", output_text(&o));
    assert!(stderr(&o).contains("expired"), "{}", output_text(&o));
    assert!(!token_has_root(&s), "an expired request imported the root");
    // A new announcement goes through.
    let (id, bytes) = announce(&s, &files, "new.req");
    let approvals = both_approve(&s, &id, &bytes);
    std::thread::sleep(std::time::Duration::from_millis(1_200));
    let approvals: Vec<&str> = approvals.iter().map(String::as_str).collect();
    let o = recover_as(&s, "alice", ALICE, &files, &approvals);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert!(token_has_root(&s));
}

#[test]
fn a_governed_recovery_whose_record_fails_keeps_its_request_and_imports_nothing() {
    let (s, d, _) = governed("1s");
    wipe(&s);
    let files = [share(&d, 1, 2), share(&d, 1, 3)];
    let (id, bytes) = announce(&s, &files, "r.req");
    let approvals = both_approve(&s, &id, &bytes);
    std::thread::sleep(std::time::Duration::from_millis(1_200));
    sqlite(
        &s.store,
        "CREATE TRIGGER no_root BEFORE INSERT ON audit WHEN NEW.event = 'root' \
         BEGIN SELECT RAISE(ABORT, 'no root record'); END",
    );
    let approvals: Vec<&str> = approvals.iter().map(String::as_str).collect();
    let o = recover_as(&s, "alice", ALICE, &files, &approvals);
    assert_ne!(code(&o), 0, "{}", output_text(&o));
    assert!(
        stderr(&o).contains("was taken out again"),
        "{}",
        output_text(&o)
    );
    assert!(!token_has_root(&s), "the root stayed in the token");
    assert_eq!(
        request_rows(&s),
        ["recover|pending"],
        "the request must stay pending when the recovery could not be recorded"
    );
    // With the store writable again, the same request (its approvals recorded) goes through.
    sqlite(&s.store, "DROP TRIGGER no_root");
    let o = recover_as(&s, "alice", ALICE, &files, &["--request", &id]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
    assert_eq!(request_rows(&s), ["recover|executed"]);
    let o = std::process::Command::new("sqlite3")
        .arg(&s.store)
        .arg("SELECT detail FROM audit WHERE event = 'root'")
        .output()
        .expect("sqlite3 runs");
    let details = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        details
            .lines()
            .any(|r| r.contains("root recovered") && r.contains(&format!("request={id}"))),
        "{details}"
    );
}

#[test]
fn init_never_makes_a_new_root_beside_an_existing_store() {
    let (s, d, _) = backed_up_2_of_3();
    s.create_asset("kept", "p256");
    let root = root_of(&[share(&d, 1, 1), share(&d, 1, 2)], b"");
    wipe(&s);
    let before = records(&s.store);
    // Neither a generated root, nor the right root given in hex, nor a new ceremony: a lost
    // root of an existing store comes back through `root recover` and its checks.
    let hex_root = s.dir.join("root.hex");
    std::fs::write(&hex_root, hex(&root)).unwrap();
    let tries: [Vec<String>; 3] = [
        vec!["init".into()],
        vec![
            "init".into(),
            "--import-root".into(),
            hex_root.display().to_string(),
        ],
        vec![
            "init".into(),
            "--backup".into(),
            "2-of-3".into(),
            "--shares-dir".into(),
            s.dir.join("again").display().to_string(),
        ],
    ];
    for args in &tries {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = refused(&s, &args, 3, "root recover");
        assert!(
            !token_has_root(&s),
            "{args:?} made a root: {}",
            output_text(&o)
        );
    }
    assert!(!s.dir.join("again").join("share-g1-m1.txt").exists());
    assert_eq!(records(&s.store), before, "a refused init wrote records");
    let o = recover(&s, &[share(&d, 1, 1), share(&d, 1, 3)], &[]);
    assert_eq!(code(&o), 0, "{}", output_text(&o));
}

#[test]
fn a_passphrase_slip39_does_not_allow_is_a_usage_error() {
    let s = setup_with(None, false);
    let pass = s.dir.join("pass");
    std::fs::write(&pass, "p\u{e4}ssword\n").unwrap();
    let dir: PathBuf = s.dir.join("shares");
    let o = expect_exit(
        &s,
        &[
            "init",
            "--backup",
            "2-of-3",
            "--shares-dir",
            dir.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        2,
    );
    assert!(
        stderr(&o).contains("printable ASCII"),
        "{}",
        output_text(&o)
    );
    assert!(!token_has_root(&s));
    assert!(!dir.join("share-g1-m1.txt").exists());
}

#[test]
fn a_pass_through_drill_against_another_roots_store_writes_nothing_there() {
    let (s, d, _) = backed_up_2_of_3();
    let other = setup(None);
    other.create_asset("theirs", "secp256k1");
    let before = records(&other.store);
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        &s.store.display().to_string(),
        &other.store.display().to_string(),
    );
    std::fs::write(&s.config, text).unwrap();
    let files = [share(&d, 1, 1), share(&d, 1, 2)];
    let o = s
        .cli()
        .args(["root", "check-shares"])
        .args(share_args(&files))
        .output()
        .unwrap();
    assert_ne!(code(&o), 0, "{}", output_text(&o));
    assert_eq!(
        records(&other.store),
        before,
        "the drill wrote into another root's store: {}",
        output_text(&o)
    );
}
