//! Writers' lanes on PostgreSQL: each host chains its own records, the main chain covers every lane's head, and a lane cut, changed or reordered by a DBA is caught.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;

/// The lane records of the export: lane -> [(pos, pid)], in position order.
fn lanes_of(s: &Setup) -> BTreeMap<u64, Vec<(u64, i64)>> {
    let mut lanes: BTreeMap<u64, Vec<(u64, i64)>> = BTreeMap::new();
    for r in s.audit_records(&[]) {
        if let Some(lane) = r["lane"].as_u64() {
            assert!(r["seq"].is_null(), "a lane record has no main-chain number");
            lanes
                .entry(lane)
                .or_default()
                .push((r["pos"].as_u64().unwrap(), r["pid"].as_i64().unwrap()));
        }
    }
    for v in lanes.values_mut() {
        v.sort();
    }
    lanes
}

/// `audit verify` fails (exit 1) and says `what`.
fn verify_fails(s: &Setup, what: &str) {
    let out = cli(s, &["audit", "verify"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(what), "verify should say {what:?}: {text}");
}

/// Both hosts sign for a while, then stop; each host's lines.
fn sign_a_while(a: &Setup, b: &Setup, ms: u64) -> Vec<Vec<(u128, u128, bool)>> {
    let stop = a.dir.join("stop");
    let children = start_hosts(a, b, &stop);
    std::thread::sleep(Duration::from_millis(ms));
    stop_hosts(&stop, children)
}

#[test]
fn each_host_signs_in_its_own_lane_and_the_chain_covers_every_lane() {
    let _turn = turn();
    let (_url, a, b) = two_hosts("p11derive_lanes_own");
    let lines = sign_a_while(&a, &b, 1500);
    let made: usize = lines.iter().map(|h| h.iter().filter(|l| l.2).count()).sum();
    assert!(
        lines.iter().all(|h| h.iter().any(|l| l.2)),
        "each host signed"
    );

    let lanes = lanes_of(&a);
    assert_eq!(lanes.len(), 2, "one lane per host: {:?}", lanes.keys());
    let mut pids = HashSet::new();
    for (lane, recs) in &lanes {
        let own: HashSet<i64> = recs.iter().map(|r| r.1).collect();
        assert_eq!(own.len(), 1, "lane {lane} holds one writer's records");
        pids.extend(own);
        let positions: Vec<u64> = recs.iter().map(|r| r.0).collect();
        assert_eq!(positions, (1..=recs.len() as u64).collect::<Vec<_>>());
    }
    assert_eq!(pids.len(), 2, "the two hosts' lanes");
    // Every signature is recorded once; nearly all of them in the lanes
    // (the ordinary transaction takes a batch only to seal or verify).
    assert_eq!(a.signed_count(&["--asset", "shared"]), made);
    let in_lanes: usize = lanes.values().map(Vec::len).sum();
    assert!(in_lanes * 10 >= made * 9, "{in_lanes} of {made} in lanes");
    let records = a.audit_records(&[]);
    let covers: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["event"] == "lanes").collect();
    assert!(!covers.is_empty(), "the main chain covers the lanes");
    // The newest cover names each lane's final head (C_Finalize covers).
    for (lane, recs) in &lanes {
        let head = recs.last().unwrap().0;
        assert!(
            covers.iter().any(|c| c["detail"]
                .as_str()
                .unwrap()
                .contains(&format!(" {lane}:{head}:"))),
            "lane {lane}'s head {head} is covered"
        );
    }
    let said = a.audit_verifies();
    assert!(said.contains("2 writers' lanes"), "{said}");
}

#[test]
fn lane_records_cut_changed_or_moved_are_caught() {
    let _turn = turn();
    let (url, a, b) = two_hosts("p11derive_lanes_cut");
    sign_a_while(&a, &b, 1200);
    a.audit_verifies();
    let mut db = dba(&url);
    // A lane the newest cover (the anchored record) names, and its head.
    let detail: String = db
        .query_one(
            "SELECT detail FROM audit WHERE event = 'lanes' ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    let named = detail.split(' ').nth(2).expect("a lane named");
    let mut it = named.split(':');
    let lane: i64 = it.next().unwrap().parse().unwrap();
    let head: i64 = it.next().unwrap().parse().unwrap();
    assert!(head >= 6, "lane {lane} has {head} records");
    db.batch_execute(&format!(
        "CREATE TABLE saved AS SELECT * FROM audit_lane WHERE lane = {lane}"
    ))
    .unwrap();
    let restore = |db: &mut postgres::Client| {
        db.batch_execute(&format!(
            "DELETE FROM audit_lane WHERE lane IN ({lane}, {lane} + 100); \
             INSERT INTO audit_lane SELECT * FROM saved"
        ))
        .unwrap();
    };
    let mid = head / 2;
    for (edit, says) in [
        (
            format!("DELETE FROM audit_lane WHERE lane = {lane} AND pos = {mid}"),
            format!("record {mid} of audit lane {lane} is missing"),
        ),
        (
            format!(
                "UPDATE audit_lane SET pos = 999999 WHERE lane = {lane} AND pos = 2; \
                 UPDATE audit_lane SET pos = 2 WHERE lane = {lane} AND pos = 3; \
                 UPDATE audit_lane SET pos = 3 WHERE lane = {lane} AND pos = 999999"
            ),
            format!("record 2 of audit lane {lane} does not carry a valid MAC"),
        ),
        (
            format!(
                "UPDATE audit_lane SET input_sha256 = sha256('other'::bytea) \
                 WHERE lane = {lane} AND pos = {mid}"
            ),
            format!("record {mid} of audit lane {lane} does not carry a valid MAC"),
        ),
        (
            format!("UPDATE audit_lane SET change = change + 1 WHERE lane = {lane} AND pos = 1"),
            format!("record 1 of audit lane {lane} does not carry a valid MAC"),
        ),
        // Its records moved into another lane.
        (
            format!("UPDATE audit_lane SET lane = lane + 100 WHERE lane = {lane}"),
            format!(
                "record 1 of audit lane {} does not carry a valid MAC",
                lane + 100
            ),
        ),
    ] {
        db.batch_execute(&edit).unwrap();
        verify_fails(&a, &says);
        restore(&mut db);
        a.audit_verifies();
    }
    // The covered head cut (the lane truncated): verify names it, and a new
    // process refuses the store at its login.
    db.batch_execute(&format!(
        "DELETE FROM audit_lane WHERE lane = {lane} AND pos >= {}",
        head - 1
    ))
    .unwrap();
    verify_fails(&a, &format!("of audit lane {lane} as that lane's head"));
    let p = a.load();
    let s = p.session();
    let login = s.login(
        cryptoki::session::UserType::User,
        Some(&cryptoki::types::AuthPin::from(PIN)),
    );
    assert!(login.is_err(), "a login onto a cut lane is refused");
    drop(s);
    drop(p);
    assert!(
        a.log().contains(&format!("audit lane {lane}")),
        "the log names the lane"
    );
    restore(&mut db);
    a.audit_verifies();
}

#[test]
fn a_killed_writer_leaves_a_lane_that_verifies_and_another_host_covers_it() {
    let _turn = turn();
    let (_url, a, b) = two_hosts("p11derive_lanes_kill");
    let stop = a.dir.join("stop");
    let children = start_hosts(&a, &b, &stop);
    std::thread::sleep(Duration::from_millis(900));
    let (victim, out, _) = &children[0];
    // SAFETY: killing our own forked child.
    assert_eq!(unsafe { libc::kill(*victim, libc::SIGKILL) }, 0);
    let mut status = 0;
    // SAFETY: reaping it.
    unsafe { libc::waitpid(*victim, &mut status, 0) };
    // The other host goes on, and its anchor moves cover the dead lane.
    std::thread::sleep(Duration::from_millis(1500));
    let (pid, out_b, tag) = &children[1];
    std::fs::write(&stop, b"").unwrap();
    reap(*pid, out_b, &format!("host {tag}"));

    let returned: HashSet<String> = std::fs::read_to_string(out.with_extension("live"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(3) == Some(&"ok")).then(|| sha256_hex(&unhex(f[2])))
        })
        .collect();
    assert!(returned.len() > 5, "the victim signed {}", returned.len());
    let recorded = a.signed_inputs(&["--asset", "shared"]);
    assert!(
        returned.is_subset(&recorded),
        "every signature the killed host returned is recorded"
    );
    let lanes = lanes_of(&a);
    let dead = lanes
        .iter()
        .find(|(_, r)| r[0].1 == i64::from(*victim))
        .expect("the killed host's lane");
    let head = dead.1.last().unwrap().0;
    let covered = a.audit_records(&[]).iter().any(|r| {
        r["event"] == "lanes"
            && r["detail"]
                .as_str()
                .unwrap()
                .contains(&format!(" {}:{head}:", dead.0))
    });
    assert!(covered, "another host's cover names the dead lane's head");
    a.audit_verifies();
}

#[test]
fn a_lane_cut_under_running_hosts_stops_them() {
    let _turn = turn();
    let (url, a, b) = two_hosts("p11derive_lanes_live_cut");
    let stop = a.dir.join("stop");
    let children = start_hosts(&a, &b, &stop);
    std::thread::sleep(Duration::from_millis(1200));
    let mut db = dba(&url);
    // Under the writers' lock (no cover meanwhile): two records from the
    // middle of what a lane appended since the newest cover.
    let mut tx = db.transaction().unwrap();
    tx.batch_execute("SELECT pg_advisory_xact_lock(1345406034)")
        .unwrap();
    let upto: i64 = tx
        .query_one(
            "SELECT coalesce((SELECT substring(detail FROM 'lanes upto=([0-9]+)')::bigint \
             FROM audit WHERE event = 'lanes' ORDER BY seq DESC LIMIT 1), 0)",
            &[],
        )
        .unwrap()
        .get(0);
    let row = tx
        .query_one(
            "SELECT lane, min(pos), max(pos) FROM audit_lane WHERE id > $1 \
             GROUP BY lane ORDER BY count(*) DESC LIMIT 1",
            &[&upto],
        )
        .unwrap();
    let (lane, lo, hi): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert!(hi - lo >= 4, "lane {lane}: {lo}..={hi} since the cover");
    let cut = tx
        .execute(
            "DELETE FROM audit_lane WHERE lane = $1 AND pos IN ($2, $3)",
            &[&lane, &(lo + 1), &(lo + 2)],
        )
        .unwrap();
    assert_eq!(cut, 2);
    tx.commit().unwrap();
    let at = now_ns();
    for (_, out, _) in &children {
        wait_for(&out.with_extension("refused"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let lines = stop_hosts(&stop, children);
    for (i, host) in lines.iter().enumerate() {
        let first = host
            .iter()
            .find(|l| !l.2 && l.0 >= at)
            .map(|l| l.1)
            .unwrap_or_else(|| panic!("host {} was never refused after the cut", i + 1));
        assert!(
            host.iter().all(|l| !l.2 || l.0 < first),
            "host {} signed again after it was refused",
            i + 1
        );
        // Within a few anchor intervals of the cut.
        assert!(
            first < at + Duration::from_secs(4).as_nanos(),
            "host {} refused only {} ms after the cut",
            i + 1,
            (first - at) / 1_000_000
        );
    }
    verify_fails(&a, &format!("audit lane {lane}"));
    assert!(
        a.log().contains(&format!("audit lane {lane}"))
            || b.log().contains(&format!("audit lane {lane}"))
    );
}

#[test]
fn a_store_of_schema_8_gets_lanes_when_a_host_of_this_build_opens_it() {
    let _turn = turn();
    let (url, a, _b) = two_hosts("p11derive_lanes_upgrade");
    // Schema 8: one chain, no lanes (what a store of the build before has).
    let mut db = dba(&url);
    db.batch_execute(
        "DROP TABLE audit_lane; DROP SEQUENCE p11derive_lane_ids; DROP INDEX audit_covers; \
         DROP FUNCTION p11derive_lane_append; UPDATE p11derive_meta SET schema_version = 8",
    )
    .unwrap();
    let p = a.load();
    let s = p.user_session();
    for _ in 0..3 {
        try_sign(&s, "shared").expect("signs after the upgrade");
    }
    drop(s);
    drop(p);
    let v: i64 = db
        .query_one("SELECT schema_version FROM p11derive_meta", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, i64::from(p11derive::store::SCHEMA_VERSION));
    assert_eq!(lanes_of(&a).values().map(Vec::len).sum::<usize>(), 3);
    a.audit_verifies();
}

/// The database's owner freezes the asset generation (its triggers
/// disabled), so no host learns of a change from it; a rotation still binds
/// every lane at its next commit, because a lane commits only under the
/// newest state change, and re-reads its assets when that moves.
#[test]
fn a_rotation_binds_every_lane_even_with_the_generation_frozen() {
    let _turn = turn();
    let (url, a, b) = two_hosts("p11derive_lanes_frozen_generation");
    let v1 = version_keys(&a.asset_show("shared"));
    let mut db = dba(&url);
    db.batch_execute(
        "ALTER TABLE assets DISABLE TRIGGER USER; ALTER TABLE versions DISABLE TRIGGER USER",
    )
    .unwrap();
    let stop = a.dir.join("stop");
    let children = start_hosts(&a, &b, &stop);
    let outs: Vec<std::path::PathBuf> = children.iter().map(|c| c.1.clone()).collect();
    std::thread::sleep(Duration::from_millis(700));
    let out = cli(&a, &["asset", "rotate", "shared"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let rotated_at = now_ns();
    std::thread::sleep(Duration::from_millis(1200));
    stop_hosts(&stop, children);
    let v2 = version_keys(&a.asset_show("shared"));
    let key = |keys: &[(u64, Vec<u8>)], v: u64| keys.iter().find(|k| k.0 == v).unwrap().1.clone();
    let (k1, k2) = (key(&v1, 1), key(&v2, 2));
    for (i, out) in outs.iter().enumerate() {
        let mut after = 0;
        for line in std::fs::read_to_string(out).unwrap().lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let t0: u128 = f[0].parse().unwrap();
            if f[3] != "ok" || t0 <= rotated_at {
                continue;
            }
            let digest: [u8; 32] = unhex(f[2]).try_into().unwrap();
            let sig = unhex(f[4]);
            assert!(
                !ecdsa_verifies("secp256k1", &k1, &digest, &sig),
                "host {} signed under version 1 after the rotation",
                i + 1
            );
            assert!(ecdsa_verifies("secp256k1", &k2, &digest, &sig));
            after += 1;
        }
        assert!(after > 0, "host {} signed again under version 2", i + 1);
    }
    a.audit_verifies();
}

/// A store writer plants a state change in the pending table (sealed,
/// marked, by the next logged-in write): it is never a state change, so
/// lane commits carry on in their lanes and the next real state change
/// links to the last real one.
#[test]
fn a_planted_pending_state_change_stops_neither_lanes_nor_state_changes() {
    let _turn = turn();
    let (url, a, _b) = two_hosts("p11derive_lanes_planted");
    dba(&url)
        .batch_execute(
            "INSERT INTO audit_pending (time_ns, pid, event, asset, version, rv, detail) \
             VALUES (1, 1, 'create', 'shared', 1, 0, \
             'create secp256k1 id=00 pk=- -> ACTIVE current=1 min_usable=1 prev_change=0')",
        )
        .unwrap();
    let p = a.load();
    let s = p.user_session();
    for _ in 0..20 {
        try_sign(&s, "shared").expect("signs");
    }
    let out = cli(&a, &["asset", "rotate", "shared"]);
    assert!(out.status.success(), "{}", output_text(&out));
    // The first signature may still start under version 1 (the provider
    // hears of the rotation within moments) and is refused at its commit,
    // which drops the cached asset (docs/postgres.md).
    std::thread::sleep(Duration::from_millis(300));
    let refused = usize::from(try_sign(&s, "shared").is_err());
    for _ in 0..20 {
        if let Err(e) = try_sign(&s, "shared") {
            panic!("signs after the rotation: {e:?}\n{}", a.log());
        }
    }
    drop(s);
    drop(p);
    let in_lanes: usize = lanes_of(&a).values().map(Vec::len).sum();
    assert_eq!(
        in_lanes, 41,
        "every use committed in the lane ({refused} refused)"
    );
    let planted = a
        .audit_records(&[])
        .into_iter()
        .filter(|r| r["event"] == "create" && r["detail"].as_str().unwrap().starts_with('['))
        .count();
    assert_eq!(planted, 1, "sealed, marked");
    a.audit_verifies();
}
