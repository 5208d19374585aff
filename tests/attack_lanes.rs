//! An independent attack on the writers' lanes (PostgreSQL) by the database's owner without the HSM or a PIN, kept as regression tests.

mod common;

use common::*;

/// The tables a DBA's stale copy of the store holds (what `pg_dump` of a
/// p11derive database restores).
const TABLES: &[&str] = &[
    "assets",
    "versions",
    "audit",
    "audit_pending",
    "audit_lane",
    "objects",
    "generation",
    "gcm_ivs",
    "p11derive_meta",
];

/// The DBA copies every table (a backup taken now).
fn snapshot(db: &mut postgres::Client) {
    for t in TABLES {
        db.batch_execute(&format!("CREATE TABLE snap_{t} AS SELECT * FROM {t}"))
            .unwrap();
    }
}

/// The DBA puts the copy back in place of every table's rows (triggers and
/// foreign keys off while it does, as `pg_restore --disable-triggers` does).
fn restore(db: &mut postgres::Client) {
    db.batch_execute("SET session_replication_role = replica")
        .unwrap();
    for t in TABLES {
        db.batch_execute(&format!(
            "DELETE FROM {t}; INSERT INTO {t} SELECT * FROM snap_{t}"
        ))
        .unwrap();
    }
    db.batch_execute("SET session_replication_role = DEFAULT")
        .unwrap();
}

/// The database owner's constraint that makes the store refuse every
/// `lanes` record (it changes no row; `NOT VALID`: the rows there stay).
const REFUSE_COVERS: &str =
    "ALTER TABLE audit ADD CONSTRAINT no_covers CHECK (event <> 'lanes') NOT VALID";

/// `n` signatures by `shared`, each of which must be made.
fn sign_n(s: &cryptoki::session::Session, n: usize) {
    for _ in 0..n {
        try_sign(s, "shared").expect("signs");
    }
}

/// The DBA's query's one value.
fn one<T: for<'a> postgres::types::FromSql<'a>>(
    db: &mut postgres::Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> T {
    db.query_one(sql, params).unwrap().get(0)
}

/// A process logs in, makes `n` signatures and exits (its `C_Finalize`
/// moves the anchor).
fn process_signs(a: &Setup, n: usize) {
    let p = a.load();
    let s = p.user_session();
    sign_n(&s, n);
}

/// A store (database `name`) where a process made `n` signatures and
/// exited: its setup, a DBA's connection, and the process's lane.
fn one_lane(name: &str, n: usize) -> (Setup, postgres::Client, i64) {
    let (url, a, _b) = two_hosts(name);
    process_signs(&a, n);
    let mut db = dba(&url);
    let lane = one(&mut db, "SELECT lane FROM audit_lane LIMIT 1", &[]);
    (a, db, lane)
}

/// A brand-new process is refused at `step` ("login" or "sign"), and the
/// log says `names` (`why`: what it would have been let do).
fn refused_naming(a: &Setup, step: &str, why: &str, names: &str) {
    let from = a.log().len();
    let refused = new_login_signs(a).expect_err(why);
    assert!(refused.starts_with(&format!("{step} refused")), "{refused}");
    let said = a.log_since(from);
    assert!(said.contains(names), "{said}");
}

/// `audit verify` fails (exit 1) and says `what`.
fn verify_fails(s: &Setup, what: &str) {
    let out = cli(s, &["audit", "verify"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "audit verify passes: {text}");
    assert!(text.contains(what), "verify should say {what:?}: {text}");
}

/// A login of a brand-new process, and a signature by `shared` if it logs in.
fn new_login_signs(s: &Setup) -> Result<(), String> {
    let p = s.load();
    let session = p.session();
    session
        .login(
            cryptoki::session::UserType::User,
            Some(&cryptoki::types::AuthPin::from(PIN)),
        )
        .map_err(|e| format!("login refused: {e}"))?;
    try_sign(&session, "shared").map_err(|e| format!("sign refused: {e:?}"))?;
    Ok(())
}

/// The database's owner makes the store refuse every `lanes` record (one
/// `CHECK` constraint, which changes no row), so that no anchor move can
/// cover the lanes: the anchor must still take every state change, or a
/// suspension rolled back with a stale copy of the store is accepted by
/// every new process (and by `audit verify`).
#[test]
fn a_store_that_refuses_lanes_records_does_not_hold_the_anchor_back() {
    let _turn = turn();
    let (url, a, _b) = two_hosts("p11derive_attack18_no_covers");
    let mut db = dba(&url);
    {
        let p = a.load();
        let s = p.user_session();
        sign_n(&s, 3);
        db.batch_execute(REFUSE_COVERS).unwrap();
        // A lane record no cover can name from now on.
        try_sign(&s, "shared").expect("signs");
    }
    // The backup, taken before the suspension.
    snapshot(&mut db);
    let out = cli(&a, &["asset", "suspend", "shared"]);
    let said = output_text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("were not covered"), "{said}");
    assert_eq!(a.asset_show("shared")["state"], "SUSPENDED");
    // The suspension rolled back: the copy from before it put back.
    restore(&mut db);
    let signed = new_login_signs(&a);
    let refused =
        signed.expect_err("a new process signed with a suspended asset: the anchor never took it");
    assert!(refused.starts_with("login refused"), "{refused}");
    verify_fails(&a, "anchor holds record");
}

/// The database's owner restarts the sequence that numbers lane rows far
/// below the numbers already used (`audit_lane.id` is covered by no MAC): a
/// cover finds new lane rows by that number, so no later `lanes` record
/// names the lane of a process that then signs and exits, although an
/// asset is created after it (a state change, and the anchor moves onto
/// it). Its whole lane is then deleted: `audit verify` must name it.
#[test]
fn a_lane_hidden_from_the_covers_by_its_row_numbers_is_still_covered() {
    let _turn = turn();
    let (url, a, _b) = two_hosts("p11derive_attack18_ids");
    process_signs(&a, 3);
    let mut db = dba(&url);
    db.batch_execute(
        "ALTER SEQUENCE audit_lane_id_seq MINVALUE -9000000000000000000 \
         RESTART WITH -9000000000000000000",
    )
    .unwrap();
    process_signs(&a, 5);
    // A state change after the lane's records: the anchor moves onto it.
    a.create_asset("later", "p256");
    let lane: i64 = one(
        &mut db,
        "SELECT lane FROM audit_lane WHERE id < 0 LIMIT 1",
        &[],
    );
    let n: i64 = one(
        &mut db,
        "SELECT count(*) FROM audit_lane WHERE lane = $1",
        &[&lane],
    );
    assert_eq!(n, 5, "the second process's lane");
    // The anchor moved after the lane's records (onto the creation).
    let lane_last: i64 = one(
        &mut db,
        "SELECT max(time_ns) FROM audit_lane WHERE lane = $1",
        &[&lane],
    );
    let main_last: i64 = one(&mut db, "SELECT max(time_ns) FROM audit", &[]);
    assert!(
        main_last > lane_last,
        "the main chain went on after the lane"
    );
    a.audit_verifies();
    db.execute("DELETE FROM audit_lane WHERE lane = $1", &[&lane])
        .unwrap();
    // Five signatures deleted with their whole lane.
    verify_fails(&a, &format!("audit lane {lane}"));
}

/// The database's owner replaces the lane commit function by one that
/// answers "committed" and writes nothing: the signatures leave with no
/// record. The process must find its own lane without them at its next
/// anchor move (within an anchor interval), refuse from then on, and name
/// its lane in the log.
#[test]
fn a_commit_function_that_writes_nothing_is_caught_at_the_next_anchor_move() {
    let _turn = turn();
    let (url, a, _b) = two_hosts("p11derive_attack18_lying_function");
    let mut db = dba(&url);
    let p = a.load();
    let s = p.user_session();
    sign_n(&s, 3);
    db.batch_execute(
        "CREATE OR REPLACE FUNCTION p11derive_lane_append(
            p_lock_ms BIGINT, p_lane BIGINT, p_pos BIGINT, p_head BYTEA, p_gen BIGINT, p_change BIGINT,
            p_time_ns BIGINT[], p_pid BIGINT[], p_session BIGINT[], p_event TEXT[],
            p_asset TEXT[], p_version BIGINT[], p_mechanism BIGINT[], p_input BYTEA[],
            p_rv BIGINT[], p_detail TEXT[], p_actor TEXT[], p_mac BYTEA[], p_hold BIGINT[],
            p_hold_mac BYTEA[])
         RETURNS TABLE (r_ok BOOLEAN, r_pos BIGINT, r_mac BYTEA, r_gen BIGINT,
                        r_pending BOOLEAN, r_lost BOOLEAN, r_change BIGINT)
         LANGUAGE plpgsql AS $$
         BEGIN
             RETURN QUERY SELECT true, p_pos + cardinality(p_time_ns),
                 p_mac[cardinality(p_mac)], (SELECT x.assets FROM generation x), false,
                 false, p_change;
         END $$",
    )
    .unwrap();
    let from = a.log().len();
    let start = std::time::Instant::now();
    let (mut made, mut refused_at) = (0u32, None);
    while start.elapsed() < std::time::Duration::from_millis(3000) {
        match try_sign(&s, "shared") {
            Ok(_) => {
                assert!(
                    refused_at.is_none(),
                    "signed again after the store was refused"
                );
                made += 1;
            }
            Err(_) => {
                refused_at.get_or_insert_with(|| start.elapsed());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let refused_at = refused_at.unwrap_or_else(|| {
        panic!("{made} signatures left with no record, and the process never noticed")
    });
    assert!(
        refused_at < std::time::Duration::from_millis(2500),
        "refused only after {refused_at:?}"
    );
    let lane: i64 = one(&mut db, "SELECT lane FROM audit_lane LIMIT 1", &[]);
    let said = a.log_since(from);
    assert!(said.contains(&format!("audit lane {lane}")), "{said}");
    drop(s);
    drop(p);
}

/// The same refusal of every `lanes` record under a process that keeps
/// signing: from its first failed cover on (within an anchor interval), its
/// records go into the main chain, which the anchor takes, not into a lane
/// no cover can name.
#[test]
fn a_host_whose_covers_fail_commits_into_the_main_chain() {
    let _turn = turn();
    let (url, a, _b) = two_hosts("p11derive_attack18_no_covers_running");
    let mut db = dba(&url);
    let p = a.load();
    let s = p.user_session();
    try_sign(&s, "shared").expect("signs");
    db.batch_execute(REFUSE_COVERS).unwrap();
    let refused_from = now_ns() as i64;
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_millis(3000) {
        try_sign(&s, "shared").expect("signs: the main chain takes its records");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let late = refused_from + 1_500_000_000;
    let in_lanes: i64 = one(
        &mut db,
        "SELECT count(*) FROM audit_lane WHERE time_ns > $1",
        &[&late],
    );
    let in_main: i64 = one(
        &mut db,
        "SELECT count(*) FROM audit WHERE event = 'sign' AND time_ns > $1",
        &[&late],
    );
    assert_eq!(in_lanes, 0, "lane records no cover can name");
    assert!(in_main > 10, "{in_main} signatures in the main chain");
    drop(s);
    drop(p);
    a.audit_verifies();
}

/// A process signs and exits (its finalize covers its lane, and the anchor
/// holds that `lanes` record); an asset is created after (the anchor then
/// holds the creation, not a `lanes` record); the DBA cuts the lane's
/// covered tail. A new process must refuse the store at its login, not
/// only `audit verify`.
#[test]
fn a_covered_lane_cut_behind_a_later_anchored_record_is_refused_at_login() {
    let _turn = turn();
    let (url, a, _b) = two_hosts("p11derive_attack18_cut_behind");
    process_signs(&a, 5);
    a.create_asset("later", "p256");
    let mut db = dba(&url);
    let lane: i64 = one(&mut db, "SELECT lane FROM audit_lane LIMIT 1", &[]);
    let last: String = one(
        &mut db,
        "SELECT event FROM audit ORDER BY seq DESC LIMIT 1",
        &[],
    );
    assert_ne!(last, "lanes", "the newest record is the creation");
    a.audit_verifies();
    let cut = db
        .execute(
            "DELETE FROM audit_lane WHERE lane = $1 AND pos >= 4",
            &[&lane],
        )
        .unwrap();
    assert_eq!(cut, 2);
    refused_naming(
        &a,
        "login",
        "a new process logged in and signed onto a cut lane",
        &format!("audit lane {lane}"),
    );
    verify_fails(&a, &format!("audit lane {lane}"));
}

/// The DBA takes a store with lanes back to schema 8 (its lanes dropped
/// with every lane record; the next host of this build makes them again,
/// empty): the `lanes` records of the main chain still name the lost heads.
/// A new login refuses the store, and `audit verify` names the lane.
#[test]
fn lanes_dropped_by_a_downgrade_to_schema_8_are_refused() {
    let _turn = turn();
    let (a, mut db, lane) = one_lane("p11derive_attack18_downgrade", 4);
    db.batch_execute(
        "DROP TABLE audit_lane; DROP SEQUENCE p11derive_lane_ids; DROP INDEX audit_covers; \
         DROP FUNCTION p11derive_lane_append; UPDATE p11derive_meta SET schema_version = 8",
    )
    .unwrap();
    refused_naming(
        &a,
        "login",
        "a login onto a store without its lanes",
        &format!("audit lane {lane}"),
    );
    verify_fails(&a, &format!("of audit lane {lane}"));
}

/// The DBA cuts a covered lane and hides the `lanes` record that named its
/// head by editing that record's event (so the covers and logins read the
/// `lanes` record before it, whose heads are all there). The edit breaks
/// the record's MAC: a new login refuses the store while the anchor holds
/// that record (the newest record is verified at login), and `audit
/// verify` names the record. (With a later record after it, only `audit
/// verify` finds the edit: see docs/security.md.)
#[test]
fn a_lanes_record_hidden_by_editing_its_event_is_refused() {
    let _turn = turn();
    let (url, a, _b) = two_hosts("p11derive_attack18_hidden_cover");
    {
        let p = a.load();
        let s = p.user_session();
        sign_n(&s, 2);
        // C_Logout moves the anchor: a first cover names the lane at 2.
        s.logout().unwrap();
        s.login(
            cryptoki::session::UserType::User,
            Some(&cryptoki::types::AuthPin::from(PIN)),
        )
        .unwrap();
        sign_n(&s, 3);
    }
    let mut db = dba(&url);
    let covers: i64 = one(
        &mut db,
        "SELECT count(*) FROM audit WHERE event = 'lanes'",
        &[],
    );
    assert!(covers >= 2, "{covers} lanes records");
    let (seq, lane): (i64, i64) = {
        let r = db
            .query_one(
                "SELECT a.seq, l.lane FROM audit a, audit_lane l WHERE a.event = 'lanes' \
                 AND l.pos = 5 ORDER BY a.seq DESC LIMIT 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let newest: i64 = one(&mut db, "SELECT max(seq) FROM audit", &[]);
    assert_eq!(newest, seq, "the anchor holds the newest cover");
    db.execute(
        "DELETE FROM audit_lane WHERE lane = $1 AND pos >= 3",
        &[&lane],
    )
    .unwrap();
    db.execute("UPDATE audit SET event = 'anchor' WHERE seq = $1", &[&seq])
        .unwrap();
    refused_naming(
        &a,
        "login",
        "a login onto a hidden cover",
        &format!("(record {seq}) does not verify"),
    );
    verify_fails(&a, &format!("record {seq} does not carry a valid MAC"));
}

/// The DBA restarts the sequence that hands out lane ids, so that a new
/// process gets a lane another process wrote: its first commit finds a
/// head there that is not its own, and it refuses (naming the lane) rather
/// than chain onto or beside another writer's records.
#[test]
fn a_lane_id_handed_out_again_is_refused() {
    let _turn = turn();
    let (a, mut db, lane) = one_lane("p11derive_attack18_lane_reuse", 3);
    db.batch_execute(&format!(
        "ALTER SEQUENCE p11derive_lane_ids RESTART WITH {lane}"
    ))
    .unwrap();
    refused_naming(
        &a,
        "sign",
        "a second writer in one lane",
        &format!("audit lane {lane}"),
    );
    let n: i64 = one(
        &mut db,
        "SELECT count(*) FROM audit_lane WHERE lane = $1",
        &[&lane],
    );
    assert_eq!(n, 3, "nothing written into another's lane");
    a.audit_verifies();
}

/// Two processes sign one after the other and exit; the DBA deletes the
/// whole lane of the first, which only the older `lanes` record names (the
/// newest names the second's). Hosts and logins check the newest cover
/// only; `audit verify` checks every cover's heads and names the lane.
#[test]
fn a_lane_named_only_by_an_older_cover_deleted_is_caught_by_verify() {
    let _turn = turn();
    let (a, mut db, lane) = one_lane("p11derive_attack18_older_cover", 3);
    process_signs(&a, 2);
    let lanes: i64 = one(&mut db, "SELECT count(DISTINCT lane) FROM audit_lane", &[]);
    assert_eq!(lanes, 2);
    a.audit_verifies();
    db.execute("DELETE FROM audit_lane WHERE lane = $1", &[&lane])
        .unwrap();
    verify_fails(
        &a,
        &format!("record 3 of audit lane {lane} as that lane's head"),
    );
}
