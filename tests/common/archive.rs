//! What the archive tests share: a key made through the module and used,
//! `audit archive` and `audit verify --with-archives` through the CLI, one
//! number read from the store, and a provider process kept running across
//! a change to its store.

use std::path::Path;
use std::process::Output;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;

use super::*;

const SECP256K1: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];

/// A `--before` later than any record a test writes.
pub const LATER: &str = "2100-01-01";

/// A key `label` made through the module and `signs` signatures with it.
pub fn activity(s: &Setup, label: &str, signs: usize) {
    let p = s.load();
    let session = p.user_session();
    let (_, private) = session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(SECP256K1.to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
        .unwrap();
    for i in 0..signs {
        session
            .sign(&Mechanism::EcdsaSha256, private, &[i as u8; 10])
            .unwrap();
    }
}

/// `audit archive --before LATER --to TO`.
pub fn archive(s: &Setup, to: &Path) -> Output {
    cli(
        s,
        &[
            "audit",
            "archive",
            "--before",
            LATER,
            "--to",
            to.to_str().unwrap(),
        ],
    )
}

/// `audit verify --with-archives FILES…`.
pub fn with_archives(s: &Setup, files: &[&Path]) -> Output {
    let mut args = vec!["audit", "verify", "--with-archives"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    cli(s, &args)
}

/// The number a one-number query on a SQLite store answers.
pub fn sql_u64(store: &Path, sql: &str) -> u64 {
    let out = Command::new("sqlite3")
        .arg(store)
        .arg(sql)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{sql}: {text:?}"))
}

/// The newest record's number.
pub fn newest(store: &Path) -> u64 {
    sql_u64(store, "SELECT max(seq) FROM audit")
}

/// A provider process signs (it has then seen that record), `between` runs
/// while it waits, and it signs again: what that second signature gave.
pub fn running_across(s: &Setup, tag: &str, label: &str, between: impl FnOnce()) -> String {
    let ready = s.dir.join(format!("{tag}-ready"));
    let go = s.dir.join(format!("{tag}-go"));
    let said = s.dir.join(format!("{tag}-said"));
    let (r, g, label) = (ready.clone(), go.clone(), label.to_string());
    let pid = fork_child(&said, move || {
        let (_ctx, session) = child_session()?;
        try_sign(&session, &label).map_err(|e| format!("first sign: {e:?}"))?;
        std::fs::write(&r, b"").map_err(|e| e.to_string())?;
        for _ in 0..1200 {
            if g.exists() {
                return Ok(format!("{:?}", try_sign(&session, &label).map(|_| ())));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err("never told to go on".into())
    });
    for _ in 0..1200 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    between();
    std::fs::write(&go, b"").unwrap();
    reap(pid, &said, "the running provider")
}
