//! `audit verify` and `audit export` on a log longer than one read batch
//! (5000 rows): both stream it, and every fault is still found and named
//! past the first batch (a record deleted, one changed, a use its place did
//! not allow, a lane's record changed or deleted on PostgreSQL); export keeps
//! its order; `audit-verify.json` is left after each run, pass or fail; the
//! progress bar is drawn on a terminal only, never in a pipe or with --json.

mod common;

use std::path::Path;
use std::process::Command;

use p11derive::audit::{Event, Record};
use p11derive::backend::Backend;
use p11derive::backup::HeldRoot;
use p11derive::config::Config;
use p11derive::store::{Store, Use};
use p11derive::types::Secret32;

use common::*;

/// Records committed by the group commit, over two batches' worth and more.
const SIGNS: usize = 12_400;

/// The root the tests' stores are made under (imported at `init`), so the
/// test holds the audit key without opening the backing token in-process
/// (SoftHSM, once loaded, would not see the next test's token).
const ROOT: [u8; 32] = [0x5a; 32];

/// The audit key of [`ROOT`].
fn root_ak() -> Secret32 {
    let held = HeldRoot::from_bytes(&ROOT).unwrap();
    p11derive::derive::audit_key(&held).unwrap()
}

/// `n` signature records of asset `name` at `version`, committed by 8
/// threads through the provider's own commit path (`commit_use`, the group
/// commit; the signing itself left out: it adds nothing to the log).
fn commit_signs(store: &Store, ak: &Secret32, name: &str, version: u32, n: usize) {
    let rowid = asset_rowid(store, name);
    std::thread::scope(|t| {
        for w in 0..8 {
            t.spawn(move || {
                for i in (w..n).step_by(8) {
                    let r = Record::new(Event::Sign, 0)
                        .asset(name, Some(version))
                        .session(w as u64 + 1)
                        .detail(format!("bulk {i}"));
                    store
                        .commit_use(ak, rowid, version, Use::Produce, r)
                        .expect("committed")
                        .expect("allowed");
                }
            });
        }
    });
}

/// A store whose log holds a creation, SIGNS/2 signatures, a rotation and
/// as many again (under the new version): three batches and more.
fn big_log(s: &Setup) -> Secret32 {
    s.create_asset("big", "p256");
    let ak = root_ak();
    let store = Store::open_config(&Config::load(&s.config).unwrap().store).unwrap();
    store.authenticate(&ak, None).unwrap();
    commit_signs(&store, &ak, "big", 1, SIGNS / 2);
    drop(store);
    ok(s, &["asset", "rotate", "big"]);
    let store = Store::open_config(&Config::load(&s.config).unwrap().store).unwrap();
    store.authenticate(&ak, None).unwrap();
    commit_signs(&store, &ak, "big", 2, SIGNS - SIGNS / 2);
    ak
}

/// `[metrics] dir` in the setup's config; the file `audit verify` leaves.
fn metrics_dir(s: &Setup) -> std::path::PathBuf {
    let dir = s.dir.join("metrics");
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!("\n[metrics]\ndir = \"{}\"\n", dir.display()));
    std::fs::write(&s.config, text).unwrap();
    dir.join("audit-verify.json")
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// `audit verify` fails (exit 1) naming `what`.
fn verify_fails(s: &Setup, what: &str) -> String {
    let out = cli(s, &["audit", "verify"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "audit verify passes: {text}");
    assert!(text.contains(what), "verify should say {what:?}: {text}");
    text
}

fn newest_seq(store: &Path) -> u64 {
    let out = Command::new("sqlite3")
        .arg(store)
        .arg("SELECT max(seq) FROM audit")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The command as `script` runs it on a pseudo-terminal: what it drew.
fn on_pty(s: &Setup, args: &str) -> String {
    let cmd = format!("{} {args}", cli_path().display());
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("P11DERIVE_CONF", &s.config)
        .env("P11DERIVE_PIN", PIN)
        .env("SOFTHSM2_CONF", softhsm_dir().join("softhsm2.conf"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_log_of_several_batches_streams_and_every_fault_is_named() {
    let _turn = turn();
    let s = setup(Some(&ROOT));
    let verified = metrics_dir(&s);
    let ak = big_log(&s);
    let head = newest_seq(&s.store);
    assert!(head > SIGNS as u64, "{head} records");

    // Verify passes, counting every record, and leaves its result.
    let out = cli(&s, &["audit", "verify", "--json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["records"], head, "{v}");
    assert_eq!(v["assets_reconciled"], 1, "{v}");
    assert!(
        stderr(&out).is_empty(),
        "no progress in a pipe: {}",
        stderr(&out)
    );
    let j = read_json(&verified);
    assert_eq!(j["version"], 1);
    assert_eq!(j["ok"], true);
    assert_eq!(j["records"], head);
    assert_eq!(j["head_seq"], head);
    assert_eq!(j["lane_records"], 0);
    assert_eq!(j["faults"], 0);
    assert_eq!(j["drift_rows"], 0);
    assert_eq!(j["drift_ratio"], 0.0);
    assert!(j["checked_rows"].as_u64().unwrap() >= 1, "{j}");
    assert!(j["duration_seconds"].as_f64().unwrap() >= 0.0, "{j}");
    assert_eq!(j["store_id"].as_str().unwrap().len(), 32, "{j}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - j["time"].as_f64().unwrap()).abs() < 600.0, "{j}");

    // Export: every record, in the chain's order, as stored.
    let out = cli(&s, &["audit", "export"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stored = Command::new("sqlite3")
        .arg(&s.store)
        .arg("SELECT seq || ' ' || lower(hex(mac)) FROM audit ORDER BY seq")
        .output()
        .unwrap();
    let stored: Vec<String> = String::from_utf8_lossy(&stored.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let exported: Vec<String> = lines
        .iter()
        .map(|l| format!("{} {}", l["seq"], l["mac"].as_str().unwrap()))
        .collect();
    assert_eq!(exported.len(), head as usize);
    assert!(exported == stored, "export's order is not the chain's");
    // --since and --asset past the first batch; tail reads the newest.
    let since = s.audit_records(&["--since", "9000"]);
    assert_eq!(since.len() as u64, head - 8999);
    assert_eq!(since[0]["seq"], 9000);
    let big = s.audit_records(&["--asset", "big"]);
    assert!(big.iter().all(|l| l["asset"] == "big"));
    assert_eq!(
        big.len(),
        lines.iter().filter(|l| l["asset"] == "big").count()
    );
    let tail = cli(&s, &["audit", "tail", "-n", "3", "--json"]);
    let tail: Vec<serde_json::Value> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tail, lines[lines.len() - 3..]);
    let tail = cli(
        &s,
        &["audit", "tail", "-n", "2", "--asset", "big", "--json"],
    );
    let tail: Vec<serde_json::Value> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tail, big[big.len() - 2..]);

    // Progress: on a terminal only, and never with --json.
    let drawn = on_pty(&s, "audit verify");
    assert!(drawn.contains("audit verify: OK"), "{drawn}");
    assert!(
        drawn.contains(" records, "),
        "no progress on a terminal: {drawn}"
    );
    let drawn = on_pty(&s, "audit verify --json");
    assert!(
        !drawn.contains(" records, "),
        "progress with --json: {drawn}"
    );
    let drawn = on_pty(&s, "audit export --since 100");
    assert!(drawn.contains(" records, "), "no export progress: {drawn}");

    // Faults past the first batch, each on a copy of the good store.
    let good = s.dir.join("good.db");
    sqlite(&s.store, "PRAGMA wal_checkpoint(TRUNCATE);");
    std::fs::copy(&s.store, &good).unwrap();
    let restore = || {
        for ext in ["db-wal", "db-shm"] {
            let _ = std::fs::remove_file(s.store.with_extension(ext));
        }
        std::fs::copy(&good, &s.store).unwrap();
    };
    sqlite(&s.store, "DELETE FROM audit WHERE seq = 7777;");
    verify_fails(&s, "record 7777 is missing (the next record is 7778)");
    let j = read_json(&verified);
    assert_eq!(
        (j["ok"].clone(), j["faults"].clone()),
        (false.into(), 1.into()),
        "{j}"
    );
    assert_eq!(j["head_seq"], head);
    assert_eq!(j["records"], 7776, "{j}");

    restore();
    sqlite(&s.store, "UPDATE audit SET rv = 5 WHERE seq = 11111;");
    verify_fails(&s, "record 11111 does not carry a valid MAC");

    // A use its place did not allow (a signature by a version the asset
    // never had), chained under the audit key: only the replay finds it.
    restore();
    let store = Store::open(&s.store).unwrap();
    store
        .record(
            Some(&ak),
            Record::new(Event::Sign, 0).asset("big", Some(9)).session(1),
        )
        .unwrap();
    drop(store);
    let seq = newest_seq(&s.store);
    verify_fails(
        &s,
        &format!("record {seq}: sign by \"big\" version 9 while the asset was"),
    );
    let j = read_json(&verified);
    assert_eq!(
        (j["ok"].clone(), j["faults"].clone()),
        (false.into(), 1.into()),
        "{j}"
    );
    assert_eq!(j["drift_rows"], 0, "{j}");

    // A state row changed: reconciled and sealed against the chain, drift.
    restore();
    sqlite(
        &s.store,
        "UPDATE assets SET min_usable = 2 WHERE name = 'big';",
    );
    verify_fails(
        &s,
        "asset \"big\" is ACTIVE at version 2 (min_usable 2) in the store",
    );
    let j = read_json(&verified);
    assert_eq!(j["ok"], false);
    assert_eq!(j["drift_rows"], 1, "{j}");
    assert!(j["drift_ratio"].as_f64().unwrap() > 0.0, "{j}");
    restore();
    assert!(cli(&s, &["audit", "verify"]).status.success());
}

/// PostgreSQL: the records go into this process's lane (over a batch of
/// them); the lane is streamed, and a record changed or deleted past its
/// first batch is named with its lane.
#[test]
fn a_lane_tampered_past_the_first_batch_is_named_on_postgresql() {
    let _turn = turn();
    let name = "p11derive_audit_stream";
    let s = pg_setup_with_root(name, &ROOT);
    let verified = metrics_dir(&s);
    s.create_asset("big", "p256");
    let ak = root_ak();
    let store = Store::open_config(&Config::load(&s.config).unwrap().store).unwrap();
    store.authenticate(&ak, None).unwrap();
    commit_signs(&store, &ak, "big", 1, 7_000);
    store.cover_lanes(false).unwrap();
    drop(store);
    let admin = {
        let admin = pg_admin_url();
        let (base, _) = admin.rsplit_once('/').unwrap();
        format!("{base}/{name}")
    };
    let mut db = postgres::Client::connect(&admin, postgres::NoTls).expect("DBA connects");
    let row = db
        .query_one(
            "SELECT lane, count(*) FROM audit_lane GROUP BY lane ORDER BY count(*) DESC LIMIT 1",
            &[],
        )
        .unwrap();
    let (lane, n): (i64, i64) = (row.get(0), row.get(1));
    assert!(n > 5_000, "lane {lane} holds {n} records");

    let out = cli(&s, &["audit", "verify", "--json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["lane_records"].as_u64().unwrap() >= n as u64, "{v}");
    assert_eq!(read_json(&verified)["lane_records"], v["lane_records"]);
    // Export: the main chain and the lanes merged by time.
    let lines = s.audit_records(&[]);
    let main: u64 = db
        .query_one("SELECT count(*) FROM audit", &[])
        .map(|r| r.get::<_, i64>(0) as u64)
        .unwrap();
    assert_eq!(
        lines.len() as u64,
        main + v["lane_records"].as_u64().unwrap()
    );
    let times: Vec<u64> = lines
        .iter()
        .map(|l| l["time_ns"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "export is not by time"
    );

    db.execute(
        "UPDATE audit_lane SET rv = 5 WHERE lane = $1 AND pos = 5500",
        &[&lane],
    )
    .unwrap();
    verify_fails(
        &s,
        &format!("record 5500 of audit lane {lane} does not carry a valid MAC"),
    );
    db.execute(
        "UPDATE audit_lane SET rv = 0 WHERE lane = $1 AND pos = 5500",
        &[&lane],
    )
    .unwrap();
    assert!(cli(&s, &["audit", "verify"]).status.success());
    db.execute(
        "DELETE FROM audit_lane WHERE lane = $1 AND pos = 6000",
        &[&lane],
    )
    .unwrap();
    verify_fails(
        &s,
        &format!("record 6000 of audit lane {lane} is missing (the next one there is 6001)"),
    );
    assert_eq!(read_json(&verified)["ok"], false);
}

/// Not a test: fills the store of `$P11DERIVE_CONF` (its backing token's
/// PIN in `$P11DERIVE_PIN`) up to `$P11DERIVE_FILL_TO` audit records with
/// signature records of asset `$P11DERIVE_FILL_ASSET` at its current
/// version, through the provider's group commit (docs/benchmarks.md,
/// "Audit verify and export at 1,000,000 records"):
/// `cargo test --release --test audit_stream fill -- --ignored`.
#[test]
#[ignore]
fn fill_a_store_for_the_benchmark() {
    let conf = std::env::var("P11DERIVE_CONF").expect("P11DERIVE_CONF");
    let to: u64 = std::env::var("P11DERIVE_FILL_TO")
        .expect("P11DERIVE_FILL_TO")
        .parse()
        .unwrap();
    let asset = std::env::var("P11DERIVE_FILL_ASSET").expect("P11DERIVE_FILL_ASSET");
    let pin = std::env::var("P11DERIVE_PIN").expect("P11DERIVE_PIN");
    let config = Config::load(Path::new(&conf)).unwrap();
    let backend = Backend::open(&config.backend, &config.source).unwrap();
    backend
        .login(cryptoki_sys::CKU_USER, pin.as_bytes())
        .unwrap();
    let ak = p11derive::derive::audit_key(&backend).unwrap();
    let store = Store::open_config(&config.store).unwrap();
    store.authenticate(&ak, None).unwrap();
    let a = store
        .all_assets()
        .unwrap()
        .into_iter()
        .find(|a| a.id.as_str() == asset)
        .expect("the asset");
    let head = store.audit_head().unwrap().map_or(0, |h| h.0);
    commit_signs(
        &store,
        &ak,
        &asset,
        a.current,
        to.saturating_sub(head) as usize,
    );
    eprintln!("{:?}", store.audit_head().unwrap().map(|h| h.0));
}
