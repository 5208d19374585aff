//! Archival with proof of continuity (`audit archive`, `audit verify
//! --with-archives`), through the real CLI and SoftHSM: segments verify
//! alone and chained, a missing, altered, renamed or reordered segment is
//! named, a running provider keeps working after its records are archived,
//! a row removed without an archive record (or with a forged one) is still
//! refused, and an archive killed at any step loses nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use cryptoki::error::RvError;

use common::archive::*;
use common::*;

/// `n` more signatures with the existing key `label`.
fn sign_more(s: &Setup, label: &str, n: usize) {
    let p = s.load();
    let session = p.user_session();
    for _ in 0..n {
        try_sign(&session, label).unwrap();
    }
}

fn rows(store: &Path) -> u64 {
    sql_u64(store, "SELECT count(*) FROM audit")
}

fn failed_with(o: &Output, words: &[&str]) {
    let text = output_text(o);
    assert!(!o.status.success(), "should fail: {text}");
    for w in words {
        assert!(text.contains(w), "{w:?} not in: {text}");
    }
}

#[test]
fn an_archive_verifies_with_its_segments_and_a_missing_altered_or_reordered_one_is_named() {
    let _turn = turn();
    let s = setup(None);
    // Nothing to archive before a checkpoint: the error says what to run.
    let seg1 = s.dir.join("seg1.jsonl");
    let out = archive(&s, &seg1);
    failed_with(&out, &["2100-01-01", "p11derive audit checkpoint"]);
    assert!(!seg1.exists());

    activity(&s, "arch", 30);
    // A provider process that saw a record the archive removes keeps
    // working once it is archived.
    let said = running_across(&s, "arch", "arch", || {
        // Operations after the one it saw: that one is not a pin.
        let seen = newest(&s.store);
        sign_more(&s, "arch", 5);
        ok(&s, &["audit", "checkpoint"]);
        let before = rows(&s.store);
        let out = archive(&s, &seg1);
        assert!(out.status.success(), "{}", output_text(&out));
        assert!(rows(&s.store) < before, "no row was removed");
        let held = sql_u64(
            &s.store,
            &format!("SELECT count(*) FROM audit WHERE seq = {seen}"),
        );
        assert_eq!(held, 0, "the record the running provider saw was archived");
    });
    assert_eq!(
        said, "Ok(())",
        "the provider keeps working after an archive"
    );
    // FILE is never overwritten; one an archive committed is named as the
    // only copy of its records.
    failed_with(
        &archive(&s, &seg1),
        &[
            "exists",
            "already archived as record",
            "only copy of records 1..=",
        ],
    );
    assert!(seg1.exists());
    s.audit_verifies();
    // A full verify names the archived range and what to run instead.
    failed_with(
        &cli(&s, &["audit", "checkpoint", "--full"]),
        &[
            "records 1..=",
            "are archived (archive record",
            "--with-archives",
        ],
    );
    // A re-anchor verifies from the archive's end checkpoint, as a plain
    // verify does (records 1.. are not in the store).
    ok(&s, &["audit", "reanchor", "--yes"]);
    s.audit_verifies();
    let out = with_archives(&s, &[&seg1]);
    assert!(out.status.success(), "{}", output_text(&out));
    // Without its segment: missing, named with its range, hash and file.
    failed_with(
        &cli(&s, &["audit", "verify", "--with-archives", "/dev/null"]),
        &["FAILED"],
    );

    // A second archive: two chained segments.
    activity(&s, "arch2", 10);
    ok(&s, &["audit", "checkpoint"]);
    let seg2 = s.dir.join("seg2.jsonl");
    let out = archive(&s, &seg2);
    assert!(out.status.success(), "{}", output_text(&out));
    s.audit_verifies();
    let out = with_archives(&s, &[&seg1, &seg2]);
    assert!(out.status.success(), "{}", output_text(&out));
    // Swapped: out of order, named.
    failed_with(
        &with_archives(&s, &[&seg2, &seg1]),
        &["seg2.jsonl", "out of order"],
    );
    // One missing: the archive record naming it says range, hash and file.
    failed_with(&with_archives(&s, &[&seg2]), &["seg2.jsonl"]);
    failed_with(&with_archives(&s, &[&seg1]), &["seg2.jsonl", "not given"]);
    // Renamed: named.
    let moved = s.dir.join("renamed.jsonl");
    std::fs::copy(&seg2, &moved).unwrap();
    failed_with(
        &with_archives(&s, &[&seg1, &moved]),
        &["renamed.jsonl", "seg2.jsonl"],
    );
    // A half-written copy is never taken as a segment.
    let bytes = std::fs::read(&seg1).unwrap();
    let half = s.dir.join("seg1-half.jsonl");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    failed_with(
        &with_archives(&s, &[&half, &seg2]),
        &["seg1-half.jsonl", "half-written"],
    );
    // One altered byte: named.
    let mut bytes = std::fs::read(&seg1).unwrap();
    let at = bytes.windows(6).rposition(|w| w == b"\"pid\":").unwrap();
    bytes[at + 6] = if bytes[at + 6] == b'1' { b'2' } else { b'1' };
    let altered = s.dir.join("seg1-altered.jsonl");
    std::fs::write(&altered, &bytes).unwrap();
    failed_with(
        &with_archives(&s, &[&altered, &seg2]),
        &["seg1-altered.jsonl"],
    );
    // A pin (a row the store keeps in an archived range) altered after the
    // archive: named, though the store's own part starts after it.
    let header: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&seg1)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let last = header["last"].as_u64().unwrap();
    let pin = sql_u64(
        &s.store,
        &format!("SELECT min(seq) FROM audit WHERE seq > 1 AND seq <= {last}"),
    );
    let out = std::process::Command::new("sqlite3")
        .arg(&s.store)
        .arg(format!(
            "UPDATE audit SET detail = detail || ' ' WHERE seq = {pin}"
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    failed_with(
        &with_archives(&s, &[&seg1, &seg2]),
        &[&format!("record {pin} the store holds"), "seg1.jsonl"],
    );
}

#[test]
fn a_row_removed_without_a_valid_archive_record_is_still_refused() {
    let _turn = turn();
    for forged in [false, true] {
        let s = setup(None);
        activity(&s, "victim", 3);
        let said = running_across(&s, "attack", "victim", || {
            // The record the running process saw, then others after it.
            let seen = newest(&s.store);
            sign_more(&s, "victim", 3);
            let mut sql = format!("DELETE FROM audit WHERE seq = {seen};");
            if forged {
                // An audit_archive row naming the range, whose record is
                // no valid archive record.
                let head = newest(&s.store);
                sql.push_str(&format!(
                    "INSERT INTO audit_archive (seq, first_seq, last_seq, end_checkpoint, \
                     sha256, file, prev_mac) VALUES ({head}, 1, {seen}, {head}, zeroblob(32), \
                     'forged.jsonl', zeroblob(32));"
                ));
            }
            sqlite(&s.store, &sql);
        });
        assert_eq!(
            said,
            format!("{:?}", Err::<(), _>(RvError::DeviceError)),
            "forged {forged}"
        );
        failed_with(&cli(&s, &["audit", "verify"]), &["FAILED"]);
    }
}

/// `P11DERIVE_TEST_CRASH_AT` stops `audit archive` at each step; after each,
/// nothing is lost: `audit verify` passes, and either no row was removed
/// (and a re-run archives) or the archive is whole and verifies with its
/// segment. A half-done FILE is never taken as a segment.
#[test]
fn an_archive_killed_at_every_step_loses_nothing() {
    let _turn = turn();
    for step in [
        "written",
        "synced",
        "renamed",
        "verified",
        "transaction",
        "pruning",
        "committed",
    ] {
        let s = setup(None);
        activity(&s, "kill", 8);
        ok(&s, &["audit", "checkpoint"]);
        let before = rows(&s.store);
        let seg = s.dir.join(format!("{step}.jsonl"));
        let out = s
            .cli()
            .env("P11DERIVE_TEST_CRASH_AT", step)
            .args(["audit", "archive", "--before", LATER, "--to"])
            .arg(&seg)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{step}: {}", output_text(&out));
        s.audit_verifies();
        let partials: Vec<PathBuf> = std::fs::read_dir(&s.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains(".partial-"))
            .collect();
        if step == "committed" || step == "pruning" {
            assert!(rows(&s.store) < before, "{step}");
            // The file is the only copy of the archived records: said so.
            failed_with(
                &archive(&s, &seg),
                &["already archived as record", "only copy"],
            );
            let out = with_archives(&s, &[&seg]);
            assert!(out.status.success(), "{step}: {}", output_text(&out));
            continue;
        }
        assert_eq!(rows(&s.store), before, "{step}: a row was removed");
        // What was left on disk is never taken as a segment.
        for f in partials.iter().chain(seg.exists().then_some(&seg)) {
            failed_with(&with_archives(&s, &[f]), &["FAILED"]);
        }
        // A file left by an archive that did not commit: never archived.
        if seg.exists() {
            failed_with(&archive(&s, &seg), &["never archived", "may be removed"]);
        }
        // A re-run archives (under a new name when the file was left).
        let again = match seg.exists() {
            true => s.dir.join(format!("{step}-again.jsonl")),
            false => seg.clone(),
        };
        let out = archive(&s, &again);
        assert!(out.status.success(), "{step}: {}", output_text(&out));
        let out = with_archives(&s, &[&again]);
        assert!(out.status.success(), "{step}: {}", output_text(&out));
    }
}

/// Users mode: archiving removes records, an admin's act (an auditor may
/// not), and it waits while a rate limit's window reaches back into the
/// range (the limit counts those records).
#[test]
fn an_archive_is_an_admins_act_and_waits_for_rate_limit_windows() {
    let _turn = turn();
    let s = users_setup_on(None);
    add_user(&s, "aud", "auditor", "*", "aud-secret-1");
    ok_as(
        &s,
        "admin",
        ADMIN,
        &["policy", "set", "hot-*", "--asset-rate", "3/1h"],
    );
    ok_as(&s, "aud", "aud-secret-1", &["audit", "checkpoint"]);
    let seg = s.dir.join("seg.jsonl");
    let args = [
        "audit",
        "archive",
        "--before",
        LATER,
        "--to",
        seg.to_str().unwrap(),
    ];
    failed_with(&as_user(&s, "aud", "aud-secret-1", &args), &["aud"]);
    failed_with(&as_user(&s, "admin", ADMIN, &args), &["hot-*", "3/3600s"]);
    assert!(!seg.exists());
}

/// The root the PostgreSQL store is made under (imported at `init`): the
/// test holds the audit key to write lane records through the commit path.
const ROOT: [u8; 32] = [0x5a; 32];

/// `n` signatures through an open store (its own writer lane on PostgreSQL).
fn lane_signs(store: &p11derive::store::Store, ak: &p11derive::types::Secret32, n: usize) {
    use p11derive::audit::{Event, Record};
    let rowid = asset_rowid(store, "a");
    for i in 0..n {
        let r = Record::new(Event::Sign, 0)
            .asset("a", Some(1))
            .detail(format!("archive lane sign {i}"));
        store
            .commit_use(ak, rowid, 1, p11derive::store::Use::Produce, r)
            .unwrap()
            .unwrap();
    }
    store.cover_lanes(false).unwrap();
}

#[test]
fn on_postgresql_an_archive_takes_the_lanes_and_a_running_writer_goes_on() {
    let _turn = turn();
    let s = pg_setup_with_root("p11derive_archive_lanes", &ROOT);
    s.create_asset("a", "p256");
    let held = p11derive::backup::HeldRoot::from_bytes(&ROOT).unwrap();
    let ak = p11derive::derive::audit_key(&held).unwrap();
    let config = p11derive::config::Config::load(&s.config).unwrap();
    let store = p11derive::store::Store::open_config(&config.store).unwrap();
    store.authenticate(&ak, None).unwrap();
    lane_signs(&store, &ak, 200);
    ok(&s, &["audit", "checkpoint"]);
    lane_signs(&store, &ak, 30);
    let url = {
        let admin = pg_admin_url();
        let (base, _) = admin.rsplit_once('/').unwrap();
        format!("{base}/p11derive_archive_lanes")
    };
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let lane_rows = |db: &mut postgres::Client| -> i64 {
        db.query_one("SELECT count(*) FROM audit_lane", &[])
            .unwrap()
            .get(0)
    };
    let before = lane_rows(&mut db);
    let seg = s.dir.join("pg1.jsonl");
    let out = archive(&s, &seg);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(lane_rows(&mut db) < before, "no lane row was removed");
    let text = std::fs::read_to_string(&seg).unwrap();
    assert!(
        text.contains("\"lane\":"),
        "the segment holds no lane record"
    );
    // The writer whose lane's older rows are gone goes on.
    lane_signs(&store, &ak, 10);
    drop(store);
    s.audit_verifies();
    let out = with_archives(&s, &[&seg]);
    assert!(out.status.success(), "{}", output_text(&out));
}
