//! The audit log (design §4): every use of a key leaves a MAC-chained record
//! before its result is returned; plain `sqlite3` tampering of every kind is
//! caught and named by `p11derive audit verify` (or, for an older copy of the
//! store, by the module at its next login); processes killed under load leave
//! a record for every signature a client received.

mod common;

use std::path::Path;
use std::process::Command;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

use common::*;

const SECP256K1: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];

/// The sequence number of the store's newest audit record.
fn newest_record(store: &Path) -> u64 {
    let out = Command::new("sqlite3")
        .arg(store)
        .arg("SELECT max(seq) FROM audit")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A consistent copy of the store (its WAL folded in first).
fn snapshot(store: &Path, to: &Path) {
    sqlite(store, "PRAGMA wal_checkpoint(TRUNCATE);");
    std::fs::copy(store, to).unwrap();
}

fn restore(from: &Path, store: &Path) {
    for ext in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(store.with_extension(ext));
    }
    std::fs::copy(from, store).unwrap();
}

/// Activity through the module: a key created, signatures, a verification.
fn activity(s: &Setup, label: &str, signs: usize) {
    let p = s.load();
    let session = p.user_session();
    let (public, private) = session
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
        let sig = session
            .sign(&Mechanism::EcdsaSha256, private, &[i as u8; 10])
            .unwrap();
        session
            .verify(&Mechanism::EcdsaSha256, public, &[i as u8; 10], &sig)
            .unwrap();
    }
}

#[test]
fn every_use_is_recorded_and_the_chain_verifies() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "rec", 2);
    assert!(cli(&s, &["asset", "rotate", "rec"]).status.success());
    let said = s.audit_verifies();
    assert!(said.contains("1 assets reconciled"), "{said}");
    let lines = s.audit_records(&["--asset", "rec"]);
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["create", "sign", "verify", "sign", "verify", "transition"],
        "{lines:?}"
    );
    let sign = &lines[1];
    // CKM_ECDSA_SHA256, the SHA-256 of the input, the result and the session.
    assert_eq!(sign["mechanism"], 0x1044);
    assert_eq!(sign["version"], 1);
    assert_eq!(sign["rv"], 0);
    assert!(sign["session"].as_u64().is_some() && sign["pid"].as_u64().is_some());
    assert_eq!(sign["input_sha256"], sha256_hex(&[0u8; 10]));
    let all = cli(&s, &["audit", "export"]);
    let text = String::from_utf8_lossy(&all.stdout);
    assert!(text.contains("\"event\":\"login\""), "{text}");
    assert!(!text.contains(PIN), "a PIN reached the audit log");
    let tail = cli(&s, &["audit", "tail", "-n", "2"]);
    assert_eq!(String::from_utf8_lossy(&tail.stdout).lines().count(), 2);
}

#[test]
fn tampering_with_sqlite3_is_caught_and_named() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "t", 3);
    let older = s.dir.join("older.db");
    snapshot(&s.store, &older);
    assert!(cli(&s, &["asset", "rotate", "t"]).status.success());
    assert!(cli(&s, &["asset", "create", "gone", "--type", "p256"])
        .status
        .success());
    assert!(cli(&s, &["asset", "retire", "gone", "--yes"])
        .status
        .success());
    assert!(cli(&s, &["asset", "create", "paused", "--type", "p256"])
        .status
        .success());
    assert!(cli(&s, &["asset", "suspend", "paused"]).status.success());
    s.audit_verifies();
    let good = s.dir.join("good.db");
    snapshot(&s.store, &good);
    let head = newest_record(&s.store);
    assert!(head >= 9, "{head} records");
    let cases: Vec<(&str, String, String)> = vec![
        ("change a field", "UPDATE audit SET rv = 5 WHERE seq = 4".into(), "record 4 does not carry a valid MAC".into()),
        ("delete a record in the middle", "DELETE FROM audit WHERE seq = 5".into(), "record 5 is missing".into()),
        (
            "delete the newest records",
            format!("DELETE FROM audit WHERE seq >= {}", head - 1),
            format!("the store ends at record {}, but the backing HSM's anchor holds record {head}", head - 2),
        ),
        (
            "swap two records",
            "UPDATE audit SET seq = -1 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = 5; \
             UPDATE audit SET seq = 5 WHERE seq = -1;"
                .into(),
            "record 4 does not carry a valid MAC".into(),
        ),
        (
            "insert a forged record",
            format!(
                "INSERT INTO audit VALUES ({}, 1, 1, NULL, 'sign', 't', 2, 4164, NULL, 0, '', randomblob(32), NULL)",
                head + 1
            ),
            format!("record {} does not carry a valid MAC", head + 1),
        ),
                (
            "swap a version's public key",
            "UPDATE versions SET public_key = (SELECT public_key FROM versions WHERE version = 1) \
             WHERE version = 2"
                .into(),
            "version 2: its public key carries no valid MAC".into(),
        ),
        (
            "change an asset's CKA_ID",
            "UPDATE assets SET object_id = x'00' WHERE name = 't'".into(),
            "its CKA_ID or key type in the store differs from its creation record".into(),
        ),
                (
            "delete a retired asset's rows",
            "DELETE FROM versions WHERE asset = (SELECT id FROM assets WHERE name = 'gone'); \
             DELETE FROM assets WHERE name = 'gone';"
                .into(),
            "asset \"gone\", created by record".into(),
        ),
        (
            "insert a row numbered below 1",
            "INSERT INTO audit VALUES (-5, 1, 1, NULL, 'sign', 't', 1, 4164, NULL, 0, '', randomblob(32), NULL)".into(),
            "a record numbered -5".into(),
        ),
        (
            "give a record a malformed input hash",
            "UPDATE audit SET input_sha256 = x'deadbeef' WHERE event = 'sign'".into(),
            "an audit row is malformed".into(),
        ),
                (
            "reopen a grace window through resume_state",
            "UPDATE assets SET resume_state = 'ROTATING' WHERE name = 'paused'".into(),
            "\"paused\" would resume to ROTATING but its suspension recorded ACTIVE".into(),
        ),
        (
            "forge the state of an asset",
            "UPDATE assets SET current = 1 WHERE name = 't'".into(),
            "\"t\" is ACTIVE at version 1 (min_usable 1) in the store, but its last recorded transition".into(),
        ),
    ];
    for (what, sql, needle) in cases {
        restore(&good, &s.store);
        sqlite(&s.store, &sql);
        let out = cli(&s, &["audit", "verify"]);
        assert_eq!(out.status.code(), Some(1), "{what}: audit verify passed");
        assert!(stderr(&out).contains(&needle), "{what}: {}", stderr(&out));
    }

    // A retired asset whose rows were deleted cannot be created again.
    restore(&good, &s.store);
    sqlite(
        &s.store,
        "DELETE FROM versions WHERE asset = (SELECT id FROM assets WHERE name = 'gone'); \
         DELETE FROM assets WHERE name = 'gone';",
    );
    let again = cli(&s, &["asset", "create", "gone", "--type", "p256"]);
    assert_eq!(again.status.code(), Some(3), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("was created before"),
        "{}",
        stderr(&again)
    );

    // An older copy of the whole store: audit verify names it, the CLI refuses
    // to change it (so the anchor is never moved onto the older chain), and
    // the module refuses to run on it at its next login.
    restore(&older, &s.store);
    let change = cli(&s, &["asset", "create", "fork", "--type", "p256"]);
    assert_eq!(change.status.code(), Some(1), "{}", stderr(&change));
    assert!(
        stderr(&change).contains("older than the rollback anchor"),
        "{}",
        stderr(&change)
    );
    let out = cli(&s, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("an older copy of the store was restored"),
        "{}",
        stderr(&out)
    );
    {
        let p = s.load();
        let session = p.session();
        let rv = rv_of(session.login(UserType::User, Some(&AuthPin::from(PIN))));
        assert_eq!(rv, RvError::DeviceError);
    }
    assert!(
        s.log().contains("is older than the rollback anchor"),
        "{}",
        s.log()
    );
    assert!(
        s.log().contains("Put back the newest copy of the store"),
        "{}",
        s.log()
    );
    // Re-anchoring the older copy would undo the state changes made since
    // (a rotation, a retirement): refused, nothing changed.
    let re = cli(&s, &["audit", "reanchor", "--yes"]);
    assert_eq!(re.status.code(), Some(1), "{}", stderr(&re));
    assert!(
        stderr(&re).contains("would undo the state changes"),
        "{}",
        stderr(&re)
    );
    // The newest copy, which holds every state change the anchor knows, is
    // accepted; then all holds again.
    restore(&good, &s.store);
    let re = cli(&s, &["audit", "reanchor", "--yes"]);
    assert!(re.status.success(), "{}", stderr(&re));
    assert!(
        String::from_utf8_lossy(&re.stdout).contains("lost:"),
        "reanchor says what it gives up"
    );
    s.audit_verifies();
    let p = s.load();
    p.user_session();
}

#[test]
fn records_of_processes_without_a_login_are_sealed_later() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "pub", 1);
    {
        // A verifier that never logs in: its record waits, durable, unsealed.
        let p = s.load();
        let session = p.session();
        let public = find_one(&session, "pub", ObjectClass::PUBLIC_KEY).unwrap();
        let bad = session.verify(&Mechanism::EcdsaSha256, public, b"x", &[1u8; 64]);
        assert_eq!(rv_of(bad), RvError::SignatureInvalid);
    }
    let said = s.audit_verifies();
    assert!(
        said.contains("1 record of a process without a login is pending"),
        "{said}"
    );
    // The next logged-in process seals it into the chain.
    {
        let p = s.load();
        p.user_session();
    }
    let said = s.audit_verifies();
    assert!(!said.contains("pending"), "{said}");
    let export = cli(&s, &["audit", "export"]);
    let text = String::from_utf8_lossy(&export.stdout);
    assert!(
        text.contains(&format!("\"rv\":{}", 0xc0)),
        "the failed verification is recorded: {text}"
    );
    assert!(
        text.contains(p11derive::store::PENDING_MARK),
        "sealed pending records are marked: {text}"
    );

    // A record planted in the pending table by someone with only the file is
    // sealed with the mark, and never counts for an asset's state.
    sqlite(
        &s.store,
        "INSERT INTO audit_pending (time_ns, pid, session, event, asset, version, mechanism, \
         input_sha256, rv, detail) VALUES (1, 1, NULL, 'transition', 'pub', 9, NULL, NULL, 0, \
         'rotate -> ACTIVE current=9 min_usable=1')",
    );
    {
        let p = s.load();
        p.user_session();
    }
    s.audit_verifies();
    let planted = s
        .audit_records(&["--asset", "pub"])
        .into_iter()
        .find(|r| r["version"] == 9)
        .expect("the planted record was sealed");
    assert!(planted["detail"]
        .as_str()
        .unwrap()
        .starts_with(p11derive::store::PENDING_MARK));
}

/// A forked signer that never stops: every signature it receives is appended
/// to `out` (data, signature) right after C_Sign returns.
fn endless_signer(out: &Path) -> ! {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use std::io::Write;
    let run = || -> Option<()> {
        let ctx = Pkcs11::new(module_path()).ok()?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .ok()?;
        let slot = *ctx.get_slots_with_token().ok()?.first()?;
        let session = ctx.open_rw_session(slot).ok()?;
        session
            .login(UserType::User, Some(&AuthPin::from(PIN)))
            .ok()?;
        let key = *session
            .find_objects(&[
                Attribute::Label(b"kill".to_vec()),
                Attribute::Class(ObjectClass::PRIVATE_KEY),
            ])
            .ok()?
            .first()?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .ok()?;
        let pid = std::process::id();
        for i in 0u32.. {
            let mut data = [0u8; 32];
            data[..4].copy_from_slice(&pid.to_be_bytes());
            data[4..8].copy_from_slice(&i.to_be_bytes());
            let sig = session.sign(&Mechanism::Ecdsa, key, &data).ok()?;
            // The client has the signature now; note it for the check.
            file.write_all(format!("{} {}\n", hex(&data), hex(&sig)).as_bytes())
                .ok()?;
        }
        Some(())
    };
    let _ = run();
    // SAFETY: leave the forked child at once.
    unsafe { libc::_exit(1) }
}

#[test]
fn every_signature_received_before_a_sigkill_has_its_record() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("kill", "secp256k1");
    std::env::set_var("P11DERIVE_CONF", &s.config);
    let mut files = Vec::new();
    for round in 0..4u64 {
        let mut pids = Vec::new();
        for w in 0..2 {
            let out = s.dir.join(format!("received-{round}-{w}.txt"));
            // SAFETY: the child runs only the provider and _exits or is killed.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                endless_signer(&out);
            }
            pids.push(pid);
            files.push(out);
        }
        // Kill at a moment that varies from round to round.
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
            % 300;
        std::thread::sleep(std::time::Duration::from_millis(150 + jitter + 50 * round));
        for pid in &pids {
            // SAFETY: our own children.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        for pid in pids {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(
                libc::WIFSIGNALED(status),
                "a signer stopped before it was killed"
            );
        }
    }
    // After the crashes the store opens, the chain verifies, and every
    // signature a client received has its record.
    s.audit_verifies();
    let recorded = s.signed_inputs(&["--asset", "kill"]);
    let mut received = 0;
    for f in &files {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            let Some((data, sig)) = line.split_once(' ') else {
                continue;
            };
            if sig.len() != 128 {
                continue; // a line cut short by the kill: that client did not finish reading it
            }
            received += 1;
            assert!(
                recorded.contains(&sha256_hex(&unhex(data))),
                "signature over {data} has no audit record"
            );
        }
    }
    assert!(
        received > 20,
        "only {received} signatures were received before the kills"
    );
}

#[test]
fn concurrent_signatures_share_commits_without_losing_a_record() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "group", 0);
    {
        let p = s.load();
        let admin = p.user_session();
        let key = find_one(&admin, "group", ObjectClass::PRIVATE_KEY).unwrap();
        std::thread::scope(|scope| {
            for t in 0..8u8 {
                let p = &p;
                scope.spawn(move || {
                    let session = p.session();
                    for i in 0..30u8 {
                        session.sign(&Mechanism::Ecdsa, key, &[t, i, 0, 0]).unwrap();
                    }
                });
            }
        });
    }
    s.audit_verifies();
    let mut inputs: Vec<String> = s
        .audit_records(&["--asset", "group"])
        .iter()
        .filter(|r| r["event"] == "sign")
        .map(|r| r["input_sha256"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(inputs.len(), 240, "one record per signature");
    inputs.sort();
    inputs.dedup();
    assert_eq!(inputs.len(), 240, "each signature recorded once");
    // Eight threads committing at once share transactions (records per fsync > 1).
    let log = s.log();
    let per_fsync: f64 = log
        .lines()
        .rev()
        .find_map(|l| {
            l.split_once(" commits (")?
                .1
                .split_once(" per fsync)")
                .map(|(r, _)| r.to_string())
        })
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no records-per-fsync line: {log}"));
    assert!(
        per_fsync > 1.0,
        "no commit was shared: {per_fsync} records per fsync"
    );
}

#[test]
fn a_long_running_signer_keeps_the_anchor_close_behind() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "long", 0);
    let p = s.load();
    let session = p.user_session();
    let key = find_one(&session, "long", ObjectClass::PRIVATE_KEY).unwrap();
    for i in 0..3u8 {
        session.sign(&Mechanism::Ecdsa, key, &[i; 32]).unwrap();
    }
    // More than the anchor interval later, still logged in, one more signature.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    session.sign(&Mechanism::Ecdsa, key, &[9; 32]).unwrap();
    // The signer is still running; cutting its newest records is noticed.
    let head = newest_record(&s.store);
    sqlite(
        &s.store,
        &format!("DELETE FROM audit WHERE seq >= {}", head - 1),
    );
    let out = cli(&s, &["audit", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr(&out).contains("but the backing HSM's anchor holds record"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_logged_in_process_refuses_a_public_key_swapped_in_the_store() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "victim", 1);
    activity(&s, "attacker", 0);
    // Someone with the file gives "victim" the attacker's public key.
    sqlite(
        &s.store,
        "UPDATE versions SET public_key = (SELECT v.public_key FROM versions v JOIN assets a \
         ON v.asset = a.id WHERE a.name = 'attacker') WHERE asset = (SELECT id FROM assets \
         WHERE name = 'victim')",
    );
    let p = s.load();
    let session = p.user_session();
    let attacker = find_one(&session, "attacker", ObjectClass::PRIVATE_KEY).unwrap();
    let forged = session
        .sign(&Mechanism::EcdsaSha256, attacker, b"pay the attacker")
        .unwrap();
    let victim = find_one(&session, "victim", ObjectClass::PUBLIC_KEY).unwrap();
    // The forged signature is not declared valid, and the key is not served.
    let rv = rv_of(session.verify(
        &Mechanism::EcdsaSha256,
        victim,
        b"pay the attacker",
        &forged,
    ));
    assert_eq!(rv, RvError::DeviceError);
    let rv = rv_of(session.get_attributes(victim, &[cryptoki::object::AttributeType::EcPoint]));
    assert_eq!(rv, RvError::DeviceError);
    assert!(
        s.log().contains("carries no valid MAC under the audit key"),
        "{}",
        s.log()
    );
    let out = cli(&s, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("\"victim\" version 1: its public key carries no valid MAC"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn another_root_is_refused_before_it_writes_anything() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "mine", 1);
    s.audit_verifies();
    // A second backing token with its own root; point the config at it.
    let other = setup(None);
    let good = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, good.replace(&s.token_label, &other.token_label)).unwrap();
    {
        let p = s.load();
        let session = p.session();
        let rv = rv_of(session.login(UserType::User, Some(&AuthPin::from(PIN))));
        assert_eq!(rv, RvError::DeviceError);
    }
    assert!(
        s.log().contains("the store belongs to another root"),
        "{}",
        s.log()
    );
    let change = cli(&s, &["asset", "suspend", "mine"]);
    assert_eq!(change.status.code(), Some(1));
    assert!(
        stderr(&change).contains("belongs to another root"),
        "{}",
        stderr(&change)
    );
    // Nothing was written under the wrong key: with the right root all holds.
    std::fs::write(&s.config, good).unwrap();
    s.audit_verifies();
}

#[test]
fn refusals_by_state_and_policy_are_recorded() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "ref", 1);
    assert!(cli(&s, &["asset", "suspend", "ref"]).status.success());
    {
        let p = s.load();
        let session = p.user_session();
        let public = find_one(&session, "ref", ObjectClass::PUBLIC_KEY).unwrap();
        let rv = rv_of(session.verify(&Mechanism::EcdsaSha256, public, b"x", &[1u8; 64]));
        assert_eq!(rv, RvError::KeyFunctionNotPermitted);
        assert_eq!(
            rv_of(session.destroy_object(public)),
            RvError::ActionProhibited
        );
    }
    s.audit_verifies();
    let export = cli(&s, &["audit", "export", "--asset", "ref"]);
    let text = String::from_utf8_lossy(&export.stdout);
    assert!(
        text.contains("verify refused: asset state SUSPENDED"),
        "{text}"
    );
    assert!(text.contains("C_DestroyObject refused by policy"), "{text}");
}

/// Backing HSM calls the provider that just finalized made to move the anchor.
fn anchor_calls(s: &Setup) -> u64 {
    s.last_logged_count("(rollback anchor: ")
}

#[test]
fn the_anchor_moves_at_most_once_per_configured_interval() {
    let _turn = turn();
    let mut calls = Vec::new();
    for interval_ms in [60_000u64, 50] {
        let s = setup(None);
        s.create_asset("anchored", "secp256k1");
        let text = std::fs::read_to_string(&s.config).unwrap();
        let text = text.replace(
            "[store]\n",
            &format!("[store]\nanchor_interval_ms = {interval_ms}\n"),
        );
        std::fs::write(&s.config, text).unwrap();
        {
            let p = s.load();
            let session = p.user_session();
            let key = find_one(&session, "anchored", ObjectClass::PRIVATE_KEY).unwrap();
            let until = std::time::Instant::now() + std::time::Duration::from_millis(1200);
            while std::time::Instant::now() < until {
                session.sign(&Mechanism::Ecdsa, key, &[5u8; 32]).unwrap();
            }
        }
        calls.push(anchor_calls(&s));
    }
    // 1.2 s of signing: with a 50 ms interval the anchor moves a dozen
    // times or more (a few calls each); with 60 s only at the login.
    assert!(
        calls[1] >= calls[0] + 20,
        "anchor calls with 60 s / 50 ms: {calls:?}"
    );
}
