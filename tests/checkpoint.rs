//! Verified checkpoints through the real CLI and SoftHSM: `audit checkpoint` writes one, `audit
//! verify --from-checkpoint` verifies only what came after it, and every attack on the records
//! after it, on the checkpoint itself or on the rows it vouches for is named; the automatic
//! interval writes one on a passing verify.

mod common;

use std::path::Path;
use std::process::Command;

use p11derive::audit::{Event, Record};
use p11derive::backup::HeldRoot;
use p11derive::config::Config;
use p11derive::store::{Store, Use};
use p11derive::types::Secret32;

use common::*;

/// The root the store is made under (imported at `init`): the test holds
/// the audit key without opening the backing token in-process.
const ROOT: [u8; 32] = [0x6b; 32];

fn root_ak() -> Secret32 {
    let held = HeldRoot::from_bytes(&ROOT).unwrap();
    p11derive::derive::audit_key(&held).unwrap()
}

/// `n` signature records of asset `name` through the provider's commit path.
fn signs(s: &Setup, name: &str, n: usize) {
    let ak = root_ak();
    let store = Store::open_config(&Config::load(&s.config).unwrap().store).unwrap();
    store.authenticate(&ak, None).unwrap();
    signs_in(&store, &ak, name, n);
}

fn query(store: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(store)
        .arg(sql)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn json(s: &Setup, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = cli(s, &all);
    assert!(out.status.success(), "{args:?}: {}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `audit verify ARGS` fails (exit 1) naming `what`.
fn fails(s: &Setup, args: &[&str], what: &str) {
    let mut all = vec!["audit", "verify"];
    all.extend_from_slice(args);
    let out = cli(s, &all);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?} passes: {text}");
    assert!(text.contains(what), "{args:?} should say {what:?}: {text}");
}

fn set_interval(s: &Setup, secs: u64) {
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = text.replace(
        "checkpoint_interval_s = 0",
        &format!("checkpoint_interval_s = {secs}"),
    );
    std::fs::write(&s.config, text).unwrap();
}

fn copy_store(from: &Path, to: &Path) {
    query(from, "PRAGMA wal_checkpoint(TRUNCATE);");
    for ext in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(to.with_extension(ext));
    }
    std::fs::copy(from, to).unwrap();
}

#[test]
fn from_a_checkpoint_only_the_new_records_are_verified_and_every_attack_is_named() {
    let _turn = turn();
    let s = setup(Some(&ROOT));
    s.create_asset("a", "p256");
    signs(&s, "a", 20);

    // With no checkpoint yet, --from-checkpoint verifies the whole log.
    let v = json(&s, &["audit", "verify", "--from-checkpoint"]);
    assert_eq!(v["from_checkpoint"], serde_json::Value::Null, "{v}");
    assert!(
        v["note"].as_str().unwrap().contains("no checkpoint yet"),
        "{v}"
    );
    assert_eq!(v["checked_records"], v["records"], "{v}");

    let c = json(&s, &["audit", "checkpoint"]);
    let seq = c["checkpoint"].as_u64().unwrap();
    let head = c["head"].as_u64().unwrap();
    assert_eq!(head + 1, seq, "{c}");
    assert_eq!(c["state_sha256"].as_str().unwrap().len(), 64, "{c}");
    assert_eq!(
        query(&s.store, "SELECT count(*) FROM audit_checkpoint"),
        "1"
    );

    signs(&s, "a", 7);
    let v = json(&s, &["audit", "verify", "--from-checkpoint"]);
    assert_eq!(v["from_checkpoint"], seq, "{v}");
    assert_eq!(v["from_head"], head, "{v}");
    // The checkpoint record itself and the 7 signatures after it.
    assert_eq!(v["checked_records"], 8, "{v}");
    assert_eq!(v["records"], seq + 7, "{v}");
    let out = cli(&s, &["audit", "verify", "--from-checkpoint"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("8 new records (after the checkpoint's head"),
        "{}",
        output_text(&out)
    );
    // A plain verify (nothing archived) reads the whole log.
    let v = json(&s, &["audit", "verify"]);
    assert_eq!(v["checked_records"], seq + 7, "{v}");

    // A checkpoint from the newest one verifies only the new records.
    let c2 = json(&s, &["audit", "checkpoint"]);
    assert_eq!(c2["checked_records"], 8, "{c2}");
    let seq2 = c2["checkpoint"].as_u64().unwrap();
    signs(&s, "a", 3);

    let good = s.dir.join("good.db");
    copy_store(&s.store, &good);
    let restore = || copy_store(&good, &s.store);
    let from = ["--from-checkpoint"];

    // A record after the checkpoint changed, or deleted.
    sqlite(
        &s.store,
        &format!("UPDATE audit SET rv = 5 WHERE seq = {};", seq2 + 2),
    );
    fails(
        &s,
        &from,
        &format!("record {} does not carry a valid MAC", seq2 + 2),
    );
    restore();
    sqlite(
        &s.store,
        &format!("DELETE FROM audit WHERE seq = {};", seq2 + 1),
    );
    fails(&s, &from, &format!("record {} is missing", seq2 + 1));

    // The snapshot altered (the asset retired in it), or the record's digest.
    restore();
    sqlite(
        &s.store,
        &format!(
            "UPDATE audit_checkpoint SET snapshot = CAST(replace(CAST(snapshot AS TEXT), \
             '\"ACTIVE\"', '\"RETIRED\"') AS BLOB) WHERE seq = {seq2};"
        ),
    );
    fails(
        &s,
        &from,
        &format!("checkpoint record {seq2}: the snapshot"),
    );
    restore();
    sqlite(
        &s.store,
        &format!(
            "UPDATE audit SET detail = replace(detail, 'state=', 'state=00') WHERE seq = {seq2};"
        ),
    );
    fails(
        &s,
        &from,
        &format!("checkpoint record {seq2} does not carry a valid MAC"),
    );

    // A forged row claiming a later head (no valid MAC for it).
    restore();
    sqlite(
        &s.store,
        &format!(
            "INSERT INTO audit_checkpoint SELECT {}, {}, randomblob(32), snapshot \
             FROM audit_checkpoint WHERE seq = {seq2};",
            seq2 + 3,
            seq2 + 2
        ),
    );
    fails(&s, &from, &format!("checkpoint record {}", seq2 + 3));

    // The newest row deleted: the older checkpoint is used, and all passes.
    restore();
    sqlite(
        &s.store,
        &format!("DELETE FROM audit_checkpoint WHERE seq = {seq2};"),
    );
    let v = json(&s, &["audit", "verify", "--from-checkpoint"]);
    assert_eq!(v["from_checkpoint"], seq, "{v}");
    assert_eq!(v["checked_records"], seq2 + 3 - head, "{v}");
    // Every row deleted: the whole log, and it still verifies.
    sqlite(&s.store, "DELETE FROM audit_checkpoint;");
    let v = json(&s, &["audit", "verify", "--from-checkpoint"]);
    assert_eq!(v["checked_records"], v["records"], "{v}");

    // An asset row changed after the checkpoint: judged against its state.
    restore();
    sqlite(
        &s.store,
        "UPDATE assets SET state = 'SUSPENDED' WHERE name = 'a';",
    );
    fails(&s, &from, "the assets table was changed");

    // A state change before the checkpoint tampered: a full verify names
    // it; from the checkpoint, the store's own check of every state change
    // (at each open) refuses it.
    restore();
    sqlite(
        &s.store,
        "UPDATE audit SET detail = detail || ' ' WHERE event = 'create' AND asset = 'a';",
    );
    fails(&s, &[], "does not carry a valid MAC");
    fails(&s, &from, "does not verify under the audit key");

    // --full verifies from record 1 before writing.
    restore();
    let c3 = json(&s, &["audit", "checkpoint", "--full"]);
    assert_eq!(c3["checked_records"], c3["head"], "{c3}");
}

#[test]
fn a_passing_verify_writes_a_checkpoint_when_the_interval_has_passed() {
    let _turn = turn();
    let s = setup(Some(&ROOT));
    s.create_asset("a", "p256");
    signs(&s, "a", 5);
    let rows = || query(&s.store, "SELECT count(*) FROM audit_checkpoint");

    // 0: never.
    s.audit_verifies();
    assert_eq!(rows(), "0");

    set_interval(&s, 1);
    s.audit_verifies();
    assert_eq!(rows(), "1", "none written with checkpoint_interval_s = 1");
    // The newest is younger than the interval: none more.
    s.audit_verifies();
    assert_eq!(rows(), "1");
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let out = cli(&s, &["audit", "verify", "--from-checkpoint"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert_eq!(rows(), "2");
    // Both verify.
    let v = json(&s, &["audit", "verify", "--from-checkpoint"]);
    assert_eq!(v["checked_records"], 1, "{v}");
}

/// `n` signatures through an open store (its own writer lane on PostgreSQL).
fn signs_in(store: &Store, ak: &Secret32, name: &str, n: usize) {
    let rowid = asset_rowid(store, name);
    for i in 0..n {
        let r = Record::new(Event::Sign, 0)
            .asset(name, Some(1))
            .detail(format!("lane sign {i}"));
        store
            .commit_use(ak, rowid, 1, Use::Produce, r)
            .unwrap()
            .unwrap();
    }
}

#[test]
fn from_a_checkpoint_the_lanes_resume_at_their_heads_on_postgresql() {
    let _turn = turn();
    let name = "p11derive_checkpoint_lanes";
    let s = pg_setup_with_root(name, &ROOT);
    s.create_asset("a", "p256");
    let ak = root_ak();
    let store = Store::open_config(&Config::load(&s.config).unwrap().store).unwrap();
    store.authenticate(&ak, None).unwrap();
    signs_in(&store, &ak, "a", 300);
    store.cover_lanes(false).unwrap();

    let c = json(&s, &["audit", "checkpoint"]);
    assert!(c["lanes"].as_u64().unwrap() >= 1, "{c}");
    // The same writer's lane goes on after its head at the checkpoint.
    signs_in(&store, &ak, "a", 40);
    store.cover_lanes(false).unwrap();
    drop(store);

    let v = json(&s, &["audit", "verify", "--from-checkpoint"]);
    assert_eq!(v["lane_records"], 40, "only the lanes' new records: {v}");
    let full = json(&s, &["audit", "verify"]);
    assert_eq!(full["lane_records"], 340, "{full}");

    let admin = {
        let admin = pg_admin_url();
        let (base, _) = admin.rsplit_once('/').unwrap();
        format!("{base}/{name}")
    };
    let mut db = postgres::Client::connect(&admin, postgres::NoTls).expect("DBA connects");
    let lane: i64 = db
        .query_one("SELECT lane FROM audit_lane WHERE pos = 320", &[])
        .unwrap()
        .get(0);
    // A lane record after the checkpoint changed: named from the checkpoint.
    db.execute(
        "UPDATE audit_lane SET rv = 5 WHERE lane = $1 AND pos = 320",
        &[&lane],
    )
    .unwrap();
    fails(
        &s,
        &["--from-checkpoint"],
        &format!("record 320 of audit lane {lane} does not carry a valid MAC"),
    );
    db.execute(
        "UPDATE audit_lane SET rv = 0 WHERE lane = $1 AND pos = 320",
        &[&lane],
    )
    .unwrap();
    // One before it: vouched for by the checkpoint; a full verify names it.
    db.execute(
        "UPDATE audit_lane SET rv = 5 WHERE lane = $1 AND pos = 100",
        &[&lane],
    )
    .unwrap();
    let out = cli(&s, &["audit", "verify", "--from-checkpoint"]);
    assert!(out.status.success(), "{}", output_text(&out));
    fails(
        &s,
        &[],
        &format!("record 100 of audit lane {lane} does not carry a valid MAC"),
    );
}

#[test]
fn a_full_verify_checks_each_checkpoints_state_and_a_plain_one_starts_at_the_archive() {
    let _turn = turn();
    let s = setup(Some(&ROOT));
    s.create_asset("a", "p256");
    signs(&s, "a", 4);
    let c = json(&s, &["audit", "checkpoint"]);
    let (seq, head) = (
        c["checkpoint"].as_u64().unwrap(),
        c["head"].as_u64().unwrap(),
    );
    signs(&s, "a", 2);

    // An archive of records 1..=head ending at that checkpoint (its record
    // MACed under the key, its row beside it): a plain verify starts there.
    let ak = root_ak();
    let store = Store::open(&s.store).unwrap();
    store
        .record(
            Some(&ak),
            Record::new(Event::Archive, 0).detail(format!(
                "archive records=1..={head} end_checkpoint={seq} sha256={} file=seg-1.jsonl",
                "00".repeat(32)
            )),
        )
        .unwrap();
    let archive = store.audit_head().unwrap().unwrap().0;
    drop(store);
    sqlite(
        &s.store,
        &format!(
            "INSERT INTO audit_archive VALUES ({archive}, 1, {head}, {seq}, zeroblob(32), \
             'seg-1.jsonl', (SELECT mac FROM audit WHERE seq = {}));",
            archive - 1
        ),
    );
    let out = cli(&s, &["audit", "verify"]);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("records 1..={head} are archived")),
        "{text}"
    );
    assert!(text.contains("4 new records"), "{text}");
    // The archive row must name an archive record the chain holds.
    sqlite(
        &s.store,
        &format!(
            "UPDATE audit_archive SET seq = {} WHERE seq = {archive};",
            archive - 1
        ),
    );
    fails(&s, &[], "does not verify as this store's archive record");
    sqlite(&s.store, "DELETE FROM audit_archive;");

    // A checkpoint written (with the key) from a state the chain does not
    // hold: its own digest verifies, a full verify's replay does not agree.
    let store = Store::open(&s.store).unwrap();
    let rows = store.checkpoints_newest(i64::MAX, 1).unwrap();
    let mut snap = store.verify_checkpoint(&ak, &rows[0]).unwrap();
    let (h, mac) = store.audit_head().unwrap().unwrap();
    snap.head = h;
    snap.head_mac = hex(&mac);
    snap.state
        .get_mut("a")
        .unwrap()
        .expected
        .as_mut()
        .unwrap()
        .state = "RETIRED".into();
    let (forged, _) = store.write_checkpoint(&ak, &snap, None).unwrap();
    drop(store);
    fails(
        &s,
        &[],
        &format!("record {forged} (a checkpoint at record {h}) commits to a state digest"),
    );
}
