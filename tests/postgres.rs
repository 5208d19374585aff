//! The PostgreSQL store: a real server on loopback (tools/pg.sh), two
//! provider processes as two hosts sharing counters and one audit chain,
//! `store migrate` from SQLite, and a server that stops and comes back.

mod common;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use std::path::Path;
use std::time::{Duration, Instant};

use common::hosts::*;
use common::*;

#[test]
fn two_hosts_share_the_counters_and_one_audit_chain() {
    let _turn = turn();
    let url = pg_database(&pg_admin_url(), "p11derive_two_hosts");
    let (a, b) = two_hosts_on(&url);
    let v1 = version_keys(&a.asset_show("shared"));

    let stop = a.dir.join("stop");
    let rotated = a.dir.join("rotated");
    let children = start_hosts_after(&a, &b, &stop, &rotated);
    std::thread::sleep(Duration::from_millis(400));

    // A rotation made on host A binds host B at its next operation.
    let (before_rotate, rotated_at) = rotate_under(&a, &children, &rotated);
    // A suspension made on host B stops host A.
    let suspend_start = now_ns();
    let out = cli(&b, &["asset", "suspend", "shared"]);
    assert!(out.status.success(), "{}", output_text(&out));
    for (_, out, _) in &children {
        wait_for(&out.with_extension("refused"));
    }
    let out = cli(&a, &["asset", "resume", "shared"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let resume_end = now_ns();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&stop, b"").unwrap();

    let (k1, k2) = rotation_keys(&a, &v1);
    let mut made = 0;
    let mut inputs = std::collections::HashSet::new();
    for (pid, out, tag) in &children {
        let text = reap(*pid, out, &format!("host {tag}"));
        let (mut new_key, mut refused) = (0, 0);
        for c in calls(&text) {
            let (t0, t1, line) = (c.t0, c.t1, &c.line);
            if c.outcome != "ok" {
                assert_eq!(c.outcome, "KeyFunctionNotPermitted", "host {tag}: {line}");
                // Refused: while suspended, or begun under version 1 before
                // this host saw the rotation (it polls the asset generation
                // every 200 ms) and committed after it: never signed under it.
                let overlaps = |from: u128, to: u128| t1 >= from && t0 <= to;
                let heard = rotated_at + Duration::from_millis(250).as_nanos();
                assert!(
                    overlaps(suspend_start, resume_end) || overlaps(before_rotate, heard),
                    "host {tag} refused outside the suspension: {line} (rotation {before_rotate}..{rotated_at}, suspension {suspend_start}..{resume_end})"
                );
                refused += 1;
                continue;
            }
            made += 1;
            inputs.insert(sha256_hex(&c.digest));
            let rotation = (before_rotate, rotated_at);
            version_signed((&k1, &k2), &c.digest, &c.sig, (t0, t1), rotation, *tag);
            if t0 > rotated_at {
                new_key += 1;
            }
        }
        assert!(
            new_key > 0 && refused > 0,
            "host {tag}: {new_key} {refused}"
        );
    }
    assert!(made > 20, "only {made} signatures");

    // One chain holds both hosts' records, and verifies.
    b.audit_verifies();
    let records = a.audit_records(&["--asset", "shared"]);
    let signed = a.signed_inputs(&["--asset", "shared"]);
    assert_eq!(signed, inputs, "the records of the signatures, exactly");
    assert_eq!(
        a.signed_count(&["--asset", "shared"]),
        made,
        "each signature recorded once"
    );
    let pids: std::collections::HashSet<i64> = records
        .iter()
        .filter(|r| r["event"] == "sign")
        .map(|r| r["pid"].as_i64().unwrap())
        .collect();
    let forked: std::collections::HashSet<i64> =
        children.iter().map(|(p, _, _)| i64::from(*p)).collect();
    assert_eq!(pids, forked, "each host's signatures are in the one chain");
    let refusals = records.iter().filter(|r| r["event"] == "refused").count();
    assert!(refusals >= 2, "{refusals} refusals recorded");
}

#[test]
fn a_sqlite_store_migrates_with_every_record() {
    let _turn = turn();
    let url = pg_database(&pg_admin_url(), "p11derive_migrate");
    let s = setup(None);
    s.create_asset("moved", "p256");
    s.create_asset("kept", "secp256k1");
    assert!(cli(&s, &["asset", "rotate", "moved", "--grace"])
        .status
        .success());
    let digest = [7u8; 32];
    let sig = {
        let p = s.load();
        let session = p.user_session();
        let key = private_key(&session, "moved");
        session.sign(&Mechanism::Ecdsa, key, &digest).unwrap()
    };
    let before = s.audit_records(&[]);
    let shown = s.asset_show("moved");

    let from = format!("sqlite:{}", s.store.display());
    let out = cli(&s, &["store", "migrate", "--from", &from, "--to", &url]);
    assert!(out.status.success(), "{}", output_text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("audit 6") && !said.contains(":p11derive-test@"),
        "{said}"
    );
    // A second run is refused: the destination is no longer empty.
    let again = cli(&s, &["store", "migrate", "--from", &from, "--to", &url]);
    assert_eq!(again.status.code(), Some(1), "{}", output_text(&again));
    assert!(stderr(&again).contains("empty"), "{}", stderr(&again));

    s.use_pg(&url);
    assert_eq!(s.audit_records(&[]), before, "every record, unchanged");
    assert_eq!(s.asset_show("moved"), shown);
    s.audit_verifies();
    // The provider carries on from the PostgreSQL store: same keys, new
    // records chained onto the copied ones.
    let p = s.load();
    let session = p.user_session();
    let key = private_key(&session, "moved");
    let sig2 = session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
    let point = version_keys(&shown)
        .into_iter()
        .find(|(v, _)| *v == 2)
        .unwrap()
        .1;
    assert!(ecdsa_verifies("p256", &point, &digest, &sig2));
    assert!(ecdsa_verifies("p256", &point, &digest, &sig));
    drop(session);
    drop(p);
    s.audit_verifies();
    // The login and the lanes record covering the signature continue the
    // copied numbering; the signature is in the provider's own lane.
    let after = s.audit_records(&[]);
    assert_eq!(after.len(), before.len() + 3, "login, sign and its cover");
    let main: Vec<&serde_json::Value> = after.iter().filter(|r| !r["seq"].is_null()).collect();
    let seqs: Vec<u64> = main.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let first_new = before.last().unwrap()["seq"].as_u64().unwrap() + 1;
    assert_eq!(&seqs[seqs.len() - 2..], &[first_new, first_new + 1]);
    let lane: Vec<&serde_json::Value> = after.iter().filter(|r| r["seq"].is_null()).collect();
    assert_eq!(lane.len(), 1);
    assert_eq!(
        (&lane[0]["event"], &lane[0]["pos"]),
        (&"sign".into(), &1.into())
    );
}

/// tools/pg.sh for a server of this test's own (stopping it must not
/// disturb the others).
fn own_server(cmd: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/pg.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(cmd)
        .env("P11DERIVE_PG_PORT", "55433")
        .output()
        .unwrap();
    assert!(out.status.success(), "pg.sh {cmd}: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_stopped_server_fails_operations_cleanly_and_its_return_is_picked_up() {
    let _turn = turn();
    let admin = own_server("start");
    // Stopped however the test ends.
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            own_server("stop");
        }
    }
    let _stop = Stop;
    let url = pg_database(&admin, "p11derive_outage");
    let s = setup_with(None, false);
    s.use_pg(&url);
    s.init();
    s.create_asset("out", "secp256k1");
    let p = s.load();
    let session = p.user_session();
    let key = private_key(&session, "out");
    let mut digest = [1u8; 32];
    session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();

    own_server("stop");
    let logged = s.log().len();
    digest[0] = 2;
    let started = Instant::now();
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, key, &digest)),
        RvError::DeviceError,
        "no signature without its record"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    let log = s.log_since(logged);
    assert!(
        log.contains("127.0.0.1:55433/p11derive_outage") && !log.contains(":p11derive-test@"),
        "the log names the store, never its password: {log}"
    );
    assert!(log.contains("connects again"), "{log}");
    digest[0] = 3;
    assert_eq!(
        rv_of(session.sign(&Mechanism::Ecdsa, key, &digest)),
        RvError::DeviceError
    );

    own_server("start");
    digest[0] = 4;
    let limit = Instant::now() + Duration::from_secs(30);
    loop {
        match session.sign(&Mechanism::Ecdsa, key, &digest) {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(rv_of::<()>(Err(e)), RvError::DeviceError);
                assert!(Instant::now() < limit, "no reconnection");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    drop(session);
    drop(p);
    s.audit_verifies();
    let signed = s.signed_inputs(&["--asset", "out"]);
    assert!(signed.contains(&sha256_hex(&[1u8; 32])));
    let mut d = [1u8; 32];
    for b in [2u8, 3] {
        d[0] = b;
        assert!(
            !signed.contains(&sha256_hex(&d)),
            "a failed call recorded as signed"
        );
    }
    d[0] = 4;
    assert!(signed.contains(&sha256_hex(&d)));
}

#[test]
fn cut_connections_are_opened_again_without_failing_operations() {
    let _turn = turn();
    let admin = pg_admin_url();
    let url = pg_database(&admin, "p11derive_cut");
    let s = setup_with(None, false);
    s.use_pg(&url);
    s.init();
    s.create_asset("cut", "p256");
    let mut db = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
    let mut cut = move || -> usize {
        db.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = 'p11derive_cut' AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .len()
    };
    let p = s.load();
    let session = p.user_session();
    let key = private_key(&session, "cut");
    // Idle connections cut (a server restart, a failover behind one
    // address): the next operation opens new ones and succeeds.
    let mut inputs = std::collections::HashSet::new();
    for i in 0..4u8 {
        let digest = [i; 32];
        session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
        inputs.insert(sha256_hex(&digest));
        // At least the connection that committed the signature.
        assert!(cut() >= 1, "no connection of the provider to cut");
    }
    // Cut again and again while four threads sign: a commit whose
    // connection closes under it learns whether it landed.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (made, failed) = std::thread::scope(|sc| {
        let workers: Vec<_> = (0..4u8)
            .map(|t| {
                let (p, stop) = (&p, &stop);
                sc.spawn(move || {
                    // Logged in already: the login is the token's.
                    let session = p.session();
                    let key = private_key(&session, "cut");
                    let (mut made, mut failed) = (Vec::new(), 0);
                    let mut i: u32 = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        i += 1;
                        let mut digest = [0x80 | t; 32];
                        digest[..4].copy_from_slice(&i.to_be_bytes());
                        match session.sign(&Mechanism::Ecdsa, key, &digest) {
                            Ok(_) => made.push(sha256_hex(&digest)),
                            Err(e) => {
                                assert_eq!(rv_of::<()>(Err(e)), RvError::DeviceError);
                                failed += 1;
                            }
                        }
                    }
                    (made, failed)
                })
            })
            .collect();
        let mut cuts = 0;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            cuts += usize::from(cut() > 0);
        }
        assert!(
            cuts >= 15,
            "only {cuts} of 20 cuts found a connection to cut"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        workers.into_iter().map(|w| w.join().unwrap()).fold(
            (Vec::new(), 0),
            |(mut m, f), (m2, f2)| {
                m.extend(m2);
                (m, f + f2)
            },
        )
    });
    eprintln!("20 cuts: {} signatures, {failed} failed", made.len());
    assert!(made.len() > 100, "{} signatures", made.len());
    // A cut inside a multi-statement write transaction (a fallback the
    // signing path rarely takes) cannot be retried; every other is absorbed.
    assert!(
        failed <= 2,
        "{failed} failures against {} signatures: cuts should be absorbed",
        made.len()
    );
    inputs.extend(made);
    drop(session);
    drop(p);
    s.audit_verifies();
    assert_eq!(
        s.signed_inputs(&["--asset", "cut"]),
        inputs,
        "every signature returned is recorded, and only those"
    );
    assert_eq!(
        s.signed_count(&["--asset", "cut"]),
        inputs.len(),
        "none recorded twice (a commit cut under its statement is not resent once it landed)"
    );
}

#[test]
fn a_dba_without_the_hsm_brings_no_key_back_on_running_hosts() {
    let _turn = turn();
    let (url, a, b) = two_hosts("p11derive_dba_edit");
    for args in [
        &["asset", "rotate", "shared"][..],
        &["asset", "rotate", "shared"],
        &["asset", "trim", "shared", "3"],
        &["asset", "suspend", "shared"],
    ] {
        let out = cli(&a, args);
        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
    }
    let stop = a.dir.join("stop");
    let children = start_hosts(&a, &b, &stop);
    for (_, out, _) in &children {
        wait_for(&out.with_extension("refused"));
    }
    let mut db = dba(&url);
    let row = db
        .query_one(
            "SELECT state, resume_state, current, min_usable FROM assets WHERE name = 'shared'",
            &[],
        )
        .unwrap();
    let (state, resume, current, min): (String, Option<String>, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    // Each edit stays a while under the signing hosts, then is reverted.
    for edit in [
        "UPDATE assets SET state = 'ACTIVE', resume_state = NULL WHERE name = 'shared'",
        "UPDATE assets SET state = 'ACTIVE', resume_state = NULL, current = 1, min_usable = 1 \
         WHERE name = 'shared'",
        "UPDATE assets SET state = 'ROTATING', resume_state = NULL, min_usable = 2 \
         WHERE name = 'shared'",
    ] {
        db.batch_execute(edit).unwrap();
        std::thread::sleep(Duration::from_millis(700));
        db.execute(
            "UPDATE assets SET state = $1, resume_state = $2, current = $3, min_usable = $4 \
             WHERE name = 'shared'",
            &[&state, &resume, &current, &min],
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = stop_hosts(&stop, children);
    for (i, host) in lines.iter().enumerate() {
        assert!(
            host.len() > 10,
            "host {}: only {} attempts",
            i + 1,
            host.len()
        );
        assert!(
            host.iter().all(|l| !l.2),
            "host {} signed while the DBA's edit was in place",
            i + 1
        );
    }
    // Reverted, the store verifies; it records no use the state forbade.
    a.audit_verifies();
    let log = std::fs::read_to_string(a.dir.join("p11derive.log")).unwrap();
    assert!(log.contains("asset \"shared\""), "the log names the asset");
}

#[test]
fn records_deleted_from_the_end_under_the_writers_lock_stop_the_hosts() {
    let _turn = turn();
    let (url, a, b) = two_hosts("p11derive_dba_tail");
    let stop = a.dir.join("stop");
    let children = start_hosts(&a, &b, &stop);
    std::thread::sleep(Duration::from_millis(800));
    let mut db = dba(&url);
    let mut tx = db.transaction().unwrap();
    tx.batch_execute(
        "SELECT 1 FROM p11derive_meta WHERE id = 1 FOR UPDATE;
         DELETE FROM audit WHERE seq > (SELECT max(seq) FROM audit) - 4;",
    )
    .unwrap();
    tx.commit().unwrap();
    let cut = now_ns();
    for (_, out, _) in &children {
        wait_for(&out.with_extension("refused"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let lines = stop_hosts(&stop, children);
    // The host whose records were cut stops at its next commit, and moves
    // the anchor to what it saw; the other host (which never saw them)
    // stops at its next commit after that. Each stays stopped.
    let first_refusal =
        |host: &[(u128, u128, bool)]| host.iter().find(|l| !l.2 && l.0 >= cut).map(|l| l.1);
    let stopped: Vec<u128> = lines
        .iter()
        .map(|h| first_refusal(h).expect("every host is refused after the cut"))
        .collect();
    let first = *stopped.iter().min().unwrap();
    for (i, host) in lines.iter().enumerate() {
        assert!(host.iter().any(|l| l.2), "host {} never signed", i + 1);
        assert!(
            host.iter().all(|l| !l.2 || l.0 < stopped[i]),
            "host {} signed again after it was refused",
            i + 1
        );
        assert!(
            host.iter()
                .all(|l| !l.2 || l.0 < first + Duration::from_millis(200).as_nanos()),
            "host {} signed long after the other host found the cut",
            i + 1
        );
    }
    // The hosts left the anchor at what they saw: the cut store is refused.
    let out = cli(&a, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let out = cli(&a, &["asset", "create", "x", "--type", "p256"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
}

#[test]
fn a_pg_dump_restored_under_running_hosts_stops_them() {
    let _turn = turn();
    let (url, a, b) = two_hosts("p11derive_dba_dump");
    let stop = a.dir.join("stop");
    let children = start_hosts(&a, &b, &stop);
    std::thread::sleep(Duration::from_millis(500));
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .map(|e| e.unwrap().path().join("bin"))
        .max()
        .unwrap();
    let admin_db = admin_url_of(&url);
    let dump = a.dir.join("before-suspend.dump");
    let out = std::process::Command::new(bin.join("pg_dump"))
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(&admin_db)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_dump: {}", output_text(&out));
    let out = cli(&a, &["asset", "suspend", "shared"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let suspended = now_ns();
    for (_, out, _) in &children {
        wait_for(&out.with_extension("refused"));
    }
    // The dump, taken while `shared` was ACTIVE, goes back under the hosts.
    let out = std::process::Command::new(bin.join("pg_restore"))
        .args(["--clean", "--if-exists", "-d", &admin_db])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_restore: {}", output_text(&out));
    std::thread::sleep(Duration::from_millis(1500));
    let lines = stop_hosts(&stop, children);
    let heard = suspended + Duration::from_millis(250).as_nanos();
    for (i, host) in lines.iter().enumerate() {
        assert!(
            host.iter().all(|l| !l.2 || l.0 < heard),
            "host {} signed with the suspended asset after the restore",
            i + 1
        );
    }
    let out = cli(&a, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
}
