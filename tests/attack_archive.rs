//! Attacks on checkpoints and archives (issue 26) by someone who can write
//! the store (SQL on the SQLite file) or holds stale copies of it or of
//! segment files, but has neither PIN nor HSM. Each test asserts the
//! refusal; a test marked `HOLE` passes once the hole is fixed.

mod common;

use std::path::Path;
use std::process::Output;

use common::archive::*;
use common::*;

fn failed(o: &Output, what: &str) {
    let text = output_text(o);
    assert!(!o.status.success(), "{what}: should fail: {text}");
    assert!(text.contains("FAILED"), "{what}: {text}");
}

fn passed(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {}", output_text(o));
}

/// The newest checkpoint record's number.
fn newest_checkpoint(store: &Path) -> u64 {
    sql_u64(store, "SELECT max(seq) FROM audit_checkpoint")
}

/// A sign record below `below` whose next record is also an operation (its
/// removal leaves the ledger's state changes each after their record).
fn lone_sign(store: &Path, above: u64, below: u64) -> u64 {
    sql_u64(
        store,
        &format!(
            "SELECT min(a.seq) FROM audit a JOIN audit n ON n.seq = a.seq + 1 \
             WHERE a.event = 'sign' AND n.event = 'sign' AND a.seq > {above} AND a.seq < {below}"
        ),
    )
}

/// With no archive at all: a forged `audit_archive` row naming a later,
/// genuine checkpoint as its end, beside an old operation record rewritten
/// into an "archive" record (never MAC-checked: it lies before the
/// checkpoint's head, where the plain verify resumes), makes a plain
/// `audit verify` skip every record up to that checkpoint, so a sign record
/// deleted there goes unseen.
#[test]
fn plain_verify_refuses_a_forged_archive_row_that_skips_to_a_checkpoint() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "k", 8);
    ok(&s, &["audit", "checkpoint"]);
    let c = newest_checkpoint(&s.store);
    activity(&s, "k2", 2);
    s.audit_verifies();
    let x = lone_sign(&s.store, 0, c - 3);
    let y = x + 2;
    sqlite(
        &s.store,
        &format!(
            "DELETE FROM audit WHERE seq = {x}; \
             UPDATE audit SET event = 'archive', detail = 'archive records=1..=1 \
             end_checkpoint={c} sha256={z} file=x.jsonl' WHERE seq = {y}; \
             INSERT INTO audit_archive (seq, first_seq, last_seq, end_checkpoint, sha256, \
             file, prev_mac) VALUES ({y}, 1, 1, {c}, zeroblob(32), 'x.jsonl', zeroblob(32));",
            z = "00".repeat(32)
        ),
    );
    failed(
        &cli(&s, &["audit", "verify"]),
        "plain verify over a deleted sign record",
    );
}

/// After a genuine archive, its `audit_archive` row re-pointed at a later
/// checkpoint (skipping the records between): the archive record still
/// names its own end checkpoint, so plain verify refuses.
#[test]
fn plain_verify_refuses_an_archive_row_repointed_at_a_later_checkpoint() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "k", 6);
    ok(&s, &["audit", "checkpoint"]);
    let seg = s.dir.join("seg.jsonl");
    passed(&archive(&s, &seg), "archive");
    activity(&s, "k2", 6);
    ok(&s, &["audit", "checkpoint"]);
    let c2 = newest_checkpoint(&s.store);
    activity(&s, "k3", 1);
    s.audit_verifies();
    let a = sql_u64(&s.store, "SELECT max(seq) FROM audit_archive");
    let x = lone_sign(&s.store, a, c2 - 3);
    assert!(x > a, "the deleted record lies after the archive");
    sqlite(
        &s.store,
        &format!(
            "DELETE FROM audit WHERE seq = {x}; \
             UPDATE audit_archive SET end_checkpoint = {c2} WHERE seq = {a};"
        ),
    );
    failed(&cli(&s, &["audit", "verify"]), "re-pointed archive row");
}

/// The same, and the archive record's detail edited to name the later
/// checkpoint too: plain verify reads that record's text without checking
/// its MAC (it lies before the resumed head), so it passes.
#[test]
fn plain_verify_refuses_an_archive_record_edited_to_a_later_checkpoint() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "k", 6);
    ok(&s, &["audit", "checkpoint"]);
    let seg = s.dir.join("seg.jsonl");
    passed(&archive(&s, &seg), "archive");
    activity(&s, "k2", 6);
    ok(&s, &["audit", "checkpoint"]);
    let c2 = newest_checkpoint(&s.store);
    activity(&s, "k3", 1);
    s.audit_verifies();
    let a = sql_u64(&s.store, "SELECT max(seq) FROM audit_archive");
    let x = lone_sign(&s.store, a, c2 - 3);
    assert!(x > a, "the deleted record lies after the archive");
    let end = sql_u64(
        &s.store,
        &format!("SELECT end_checkpoint FROM audit_archive WHERE seq = {a}"),
    );
    sqlite(
        &s.store,
        &format!(
            "DELETE FROM audit WHERE seq = {x}; \
             UPDATE audit_archive SET end_checkpoint = {c2} WHERE seq = {a}; \
             UPDATE audit SET detail = replace(detail, 'end_checkpoint={end} ', \
             'end_checkpoint={c2} ') WHERE seq = {a};"
        ),
    );
    failed(&cli(&s, &["audit", "verify"]), "edited archive record");
}

/// The newest archive row deleted (plain verify would start from record 1
/// over the archived gap) and a checkpoint row's snapshot edited: refused.
#[test]
fn deleting_the_archive_row_or_editing_the_end_snapshot_is_refused() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "k", 6);
    ok(&s, &["audit", "checkpoint"]);
    let seg = s.dir.join("seg.jsonl");
    passed(&archive(&s, &seg), "archive");
    activity(&s, "k2", 2);
    s.audit_verifies();
    let copy = s.dir.join("copy.sqlite");
    backup(&s.store, &copy);
    sqlite(&s.store, "DELETE FROM audit_archive;");
    failed(&cli(&s, &["audit", "verify"]), "archive row deleted");
    failed(
        &with_archives(&s, &[&seg]),
        "archive row deleted, with archives",
    );
    std::fs::copy(&copy, &s.store).unwrap();
    s.audit_verifies();
    // The end checkpoint's snapshot: one digit of a key's version.
    sqlite(
        &s.store,
        "UPDATE audit_checkpoint SET snapshot = CAST(replace(CAST(snapshot AS TEXT), \
         '\"version\":1', '\"version\":2') AS BLOB);",
    );
    failed(&cli(&s, &["audit", "verify"]), "snapshot edited");
    failed(
        &cli(&s, &["audit", "verify", "--from-checkpoint"]),
        "snapshot edited, from checkpoint",
    );
}

/// The same edit of the end checkpoint's row: `--with-archives` takes the
/// end snapshot from the segment and never judges the store's row, so it
/// passes over a store whose checkpoint row a plain verify refuses.
#[test]
fn with_archives_refuses_an_edited_end_checkpoint_row() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "k", 6);
    ok(&s, &["audit", "checkpoint"]);
    let seg = s.dir.join("seg.jsonl");
    passed(&archive(&s, &seg), "archive");
    activity(&s, "k2", 2);
    sqlite(
        &s.store,
        "UPDATE audit_checkpoint SET snapshot = CAST(replace(CAST(snapshot AS TEXT), \
         '\"version\":1', '\"version\":2') AS BLOB);",
    );
    failed(&cli(&s, &["audit", "verify"]), "snapshot edited");
    failed(
        &with_archives(&s, &[&seg]),
        "snapshot edited, with archives",
    );
}

/// Segment files: a line appended, the trailer dropped, a record line
/// dropped with the trailer recomputed (no MAC key needed for SHA-256):
/// each refused.
#[test]
fn a_truncated_extended_or_rehashed_segment_is_refused() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "k", 6);
    ok(&s, &["audit", "checkpoint"]);
    let seg = s.dir.join("seg.jsonl");
    passed(&archive(&s, &seg), "archive");
    passed(&with_archives(&s, &[&seg]), "genuine");
    let text = std::fs::read_to_string(&seg).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    let write = |name: &str, body: String| {
        let p = s.dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let appended = write("appended.jsonl", format!("{text}{}\n", lines[1]));
    failed(&with_archives(&s, &[&appended]), "line appended");
    let cut = write("cut.jsonl", lines[..n - 1].join("\n") + "\n");
    failed(&with_archives(&s, &[&cut]), "trailer dropped");
    // A record line dropped, the trailer rebuilt over what remains.
    use sha2::{Digest, Sha256};
    let mut body = String::new();
    for (i, l) in lines[..n - 1].iter().enumerate() {
        if i != 3 {
            body.push_str(l);
            body.push('\n');
        }
    }
    let sha = Sha256::digest(body.as_bytes());
    let trailer = format!(
        "{{\"sha256\":\"{}\",\"records\":{},\"lane_records\":0}}\n",
        sha.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        n - 3
    );
    let rehashed = write("rehashed.jsonl", body + &trailer);
    failed(&with_archives(&s, &[&rehashed]), "record dropped, rehashed");
}

/// Two stores under the same root (the same audit key): one's segment
/// given for the other's archive is refused (its hash and store differ),
/// and the other's archive record and row copied into the first store do
/// not make a running-process-only gap acceptable to verify.
#[test]
fn a_segment_from_another_store_under_the_same_root_is_refused() {
    let _turn = turn();
    const ROOT: [u8; 32] = [0x3c; 32];
    let a = setup(Some(&ROOT));
    let b = setup(Some(&ROOT));
    for s in [&a, &b] {
        activity(s, "k", 6);
        ok(s, &["audit", "checkpoint"]);
    }
    let seg_a = a.dir.join("a.jsonl");
    let seg_b = b.dir.join("a.jsonl");
    passed(&archive(&a, &seg_a), "archive a");
    passed(&archive(&b, &seg_b), "archive b");
    passed(&with_archives(&a, &[&seg_a]), "a with its own");
    failed(&with_archives(&a, &[&seg_b]), "a with b's segment");
    failed(&with_archives(&b, &[&seg_a]), "b with a's segment");
}

/// Two stores under the same root (the same audit key): store B's genuine
/// archive record (and its `audit_archive` row, whose `prev_mac` is B's)
/// copied over the record at the same number in store A "verifies" in A
/// (only its MAC against the row's own `prev_mac` is checked), so a
/// running provider on A takes the record it saw, deleted, as archived.
#[test]
fn a_running_provider_refuses_an_archive_record_from_another_store() {
    let _turn = turn();
    const ROOT: [u8; 32] = [0x4d; 32];
    let a = setup(Some(&ROOT));
    let b = setup(Some(&ROOT));
    activity(&b, "k", 12);
    ok(&b, &["audit", "checkpoint"]);
    let seg = b.dir.join("b.jsonl");
    passed(&archive(&b, &seg), "archive b");
    let ab = sql_u64(&b.store, "SELECT max(seq) FROM audit_archive");
    let lb = sql_u64(&b.store, "SELECT last_seq FROM audit_archive");
    activity(&a, "victim", 2);
    let said = running_across(&a, "fork", "victim", || {
        let seen = newest(&a.store);
        assert!(
            seen <= lb,
            "record {seen} lies beyond B's archived 1..={lb}"
        );
        for _ in 0..ab + 2 - seen {
            let p = a.load();
            let session = p.user_session();
            try_sign(&session, "victim").unwrap();
        }
        assert!(newest(&a.store) > ab);
        sqlite(
            &a.store,
            &format!(
                "ATTACH '{}' AS b; \
                 DELETE FROM audit WHERE seq = {ab}; \
                 INSERT INTO audit SELECT * FROM b.audit WHERE seq = {ab}; \
                 INSERT INTO audit_archive SELECT * FROM b.audit_archive; \
                 DELETE FROM audit WHERE seq = {seen};",
                b.store.display()
            ),
        );
    });
    assert_eq!(
        said,
        format!("{:?}", Err::<(), _>(cryptoki::error::RvError::DeviceError)),
        "the running provider signed on a store that lost the record it saw"
    );
    failed(&cli(&a, &["audit", "verify"]), "verify of the forked store");
}

/// Logins (one record each) until the newest record of `s` is `target`.
fn pad_to(s: &Setup, target: u64) {
    let p = s.load();
    let session = p.session();
    while newest(&s.store) < target {
        session
            .login(
                cryptoki::session::UserType::User,
                Some(&cryptoki::types::AuthPin::from(PIN)),
            )
            .unwrap();
        session.logout().unwrap();
    }
    assert_eq!(newest(&s.store), target, "padding overshot");
}

/// Two stores under the same root (a store and a fork of it: a stale copy
/// restored and re-anchored, or a second store made from the same root):
/// B's genuine checkpoint record and its row appended to A, whose head is
/// at B's checkpoint head, "verify" (the MAC is checked against the row's
/// own `prev_mac`, never against A's record before it), so `audit verify
/// --from-checkpoint` on A resumes after it and a failed login deleted from
/// A goes unseen.
#[test]
fn from_checkpoint_refuses_a_checkpoint_grafted_from_another_store() {
    let _turn = turn();
    const ROOT: [u8; 32] = [0x61; 32];
    let a = setup(Some(&ROOT));
    let b = setup(Some(&ROOT));
    // In A: a failed login (the record the attacker hides), then logins.
    {
        let p = a.load();
        let session = p.session();
        let wrong = cryptoki::types::AuthPin::from("000000".to_string());
        assert!(session
            .login(cryptoki::session::UserType::User, Some(&wrong))
            .is_err());
    }
    // Written without the audit key, it joins the chain at the next login.
    pad_to(&a, newest(&a.store) + 2);
    let failed_at = sql_u64(
        &a.store,
        "SELECT max(seq) FROM audit WHERE event = 'login-failed'",
    );
    let target = newest(&a.store).max(newest(&b.store)) + 2;
    pad_to(&a, target);
    pad_to(&b, target);
    a.audit_verifies();
    ok(&b, &["audit", "checkpoint"]);
    let cb = newest_checkpoint(&b.store);
    assert_eq!(
        cb,
        target + 1,
        "B's checkpoint is the record after its head"
    );
    assert_eq!(newest(&a.store), target, "A did not move");
    sqlite(
        &a.store,
        &format!(
            "ATTACH '{}' AS b; \
             DELETE FROM audit WHERE seq = {failed_at}; \
             INSERT INTO audit SELECT * FROM b.audit WHERE seq = {cb}; \
             INSERT INTO audit_checkpoint SELECT * FROM b.audit_checkpoint WHERE seq = {cb};",
            b.store.display()
        ),
    );
    failed(&cli(&a, &["audit", "verify"]), "plain verify of A");
    failed(
        &cli(&a, &["audit", "verify", "--from-checkpoint"]),
        "--from-checkpoint verify of A",
    );
}

/// Two archives: the newest `audit_archive` row deleted (so the older one
/// looks newest, and plain verify starts at its end), or the newest end
/// checkpoint's row deleted: refused.
#[test]
fn an_older_archive_row_replayed_as_the_newest_or_a_missing_end_row_is_refused() {
    let _turn = turn();
    let s = setup(None);
    activity(&s, "k", 6);
    ok(&s, &["audit", "checkpoint"]);
    let seg1 = s.dir.join("seg1.jsonl");
    passed(&archive(&s, &seg1), "archive 1");
    activity(&s, "k2", 6);
    ok(&s, &["audit", "checkpoint"]);
    let seg2 = s.dir.join("seg2.jsonl");
    passed(&archive(&s, &seg2), "archive 2");
    activity(&s, "k3", 1);
    s.audit_verifies();
    let copy = s.dir.join("copy.sqlite");
    backup(&s.store, &copy);
    let a2 = sql_u64(&s.store, "SELECT max(seq) FROM audit_archive");
    let c2 = sql_u64(
        &s.store,
        &format!("SELECT end_checkpoint FROM audit_archive WHERE seq = {a2}"),
    );
    sqlite(
        &s.store,
        &format!("DELETE FROM audit_archive WHERE seq = {a2};"),
    );
    failed(&cli(&s, &["audit", "verify"]), "newest archive row deleted");
    std::fs::copy(&copy, &s.store).unwrap();
    sqlite(
        &s.store,
        &format!("DELETE FROM audit_checkpoint WHERE seq = {c2};"),
    );
    failed(&cli(&s, &["audit", "verify"]), "end checkpoint row deleted");
    std::fs::copy(&copy, &s.store).unwrap();
    passed(&with_archives(&s, &[&seg1, &seg2]), "restored copy");
}

/// After an archive, a state change the archive pinned (the creation of an
/// archived key) deleted from the store: a new provider process and `audit
/// verify` refuse the store (the ledger's links and the anchor).
#[test]
fn a_pinned_state_change_deleted_from_an_archived_range_is_refused() {
    let _turn = turn();
    for later_change in [false, true] {
        let s = setup(None);
        activity(&s, "k", 6);
        ok(&s, &["audit", "checkpoint"]);
        let seg = s.dir.join("seg.jsonl");
        passed(&archive(&s, &seg), "archive");
        if later_change {
            activity(&s, "k2", 1);
        }
        let last = sql_u64(&s.store, "SELECT last_seq FROM audit_archive");
        let create = sql_u64(
            &s.store,
            &format!("SELECT max(seq) FROM audit WHERE event = 'create' AND seq <= {last}"),
        );
        assert!(create > 0, "the create record was pinned");
        sqlite(
            &s.store,
            &format!("DELETE FROM audit WHERE seq = {create};"),
        );
        let out = cli(&s, &["audit", "verify"]);
        assert!(
            !out.status.success(),
            "pinned create deleted: {}",
            output_text(&out)
        );
        let p = s.load();
        let session = p.session();
        let refused = session
            .login(
                cryptoki::session::UserType::User,
                Some(&cryptoki::types::AuthPin::from(PIN)),
            )
            .is_err()
            || try_sign(&session, "k").is_err();
        assert!(refused, "later change {later_change}: the provider signed");
    }
}
