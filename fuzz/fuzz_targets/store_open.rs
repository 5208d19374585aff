//! The store loader: `Store::open` on hostile files, then what the provider
//! and the CLI read from a store (assets, versions, objects, the audit chain
//! and its checks, the attribute table computed from asset rows) and one
//! lifecycle change. Errors are fine; panics and hangs are not.
//!
//! Input: the first byte picks a mode.
//! - 0: the rest is the whole file.
//! - 1: a valid store (empty or populated) with the rest as up to 16
//!   patches (`u32 offset, u8 length-1 (mod 16), bytes`) at byte offsets:
//!   past SQLite's header checks, into its pages.
//! - 2: the populated store with the rest as up to 8 row changes made
//!   through SQL (values of any SQLite type in any column, rows deleted or
//!   copied, the schema version and application id changed), with SQLite's
//!   CHECK constraints off: rows no p11derive would write, in a file SQLite
//!   accepts.
//!
//! After the changes, the reads take a few parameters from the input's tail.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use p11derive::audit::{public_key_mac, verify_chain, Event, Record};
use p11derive::ck::*;
use p11derive::derive::{self, AssetId, KeyType, Secret32};
use p11derive::lifecycle::{self, Audit};
use p11derive::objects::{self, View};
use p11derive::store::{self, Store, StoredObject, Transition};
use p11derive_fuzz::{certificate, remove_db, scratch_dir, Reader, SoftPrf};
use rusqlite::types::Value as Sql;

struct Fixture {
    dir: PathBuf,
    prf: SoftPrf,
    ak: Secret32,
    empty: Vec<u8>,
    rich: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = scratch_dir("store");
        let prf = SoftPrf([0x42; 32]);
        let ak = derive::audit_key(&prf).expect("audit key");
        let empty = {
            let path = dir.join("empty.db");
            drop(Store::create(&path).expect("create the empty template"));
            read_db(&path)
        };
        let rich = {
            let path = dir.join("rich.db");
            populate(&path, &prf, &ak);
            read_db(&path)
        };
        // The templates, for building seed inputs (see fuzz/README.md).
        if let Some(out) = std::env::var_os("P11DERIVE_FUZZ_DUMP_TEMPLATES") {
            let out = PathBuf::from(out);
            std::fs::write(out.join("empty.db"), &empty).expect("dump the empty template");
            std::fs::write(out.join("rich.db"), &rich).expect("dump the populated template");
        }
        Fixture {
            dir,
            prf,
            ak,
            empty,
            rich,
        }
    })
}

/// The file's bytes once SQLite has folded its WAL into it.
fn read_db(path: &Path) -> Vec<u8> {
    let conn = rusqlite::Connection::open(path).expect("reopen template");
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    drop(conn);
    let bytes = std::fs::read(path).expect("read template");
    remove_db(path);
    bytes
}

/// A store with every kind of row: assets of the four key types in every
/// state, several versions, trimmed and retired ones, chained and pending
/// audit records, a certificate and a data object.
fn populate(path: &Path, prf: &SoftPrf, ak: &Secret32) {
    let store = Store::create(path).expect("create the populated template");
    let audit = Audit {
        ak,
        session: Some(7),
        actor: None,
    };
    let id = |s: &str| AssetId::new(s).expect("asset id");
    for (name, kt) in [
        ("k1", KeyType::Secp256k1),
        ("p1", KeyType::P256),
        ("a1", KeyType::Aes256),
        ("h1", KeyType::HmacSha256),
        ("r1", KeyType::P256),
    ] {
        lifecycle::create(prf, &store, &audit, &id(name), kt, None).expect("create asset");
    }
    for (name, t) in [
        ("k1", Transition::Rotate { grace: true }),
        ("p1", Transition::Rotate { grace: false }),
        ("p1", Transition::Rotate { grace: false }),
        ("p1", Transition::Trim(2)),
        ("a1", Transition::Rotate { grace: true }),
        ("a1", Transition::Suspend),
        ("h1", Transition::Rotate { grace: false }),
        ("r1", Transition::Retire),
    ] {
        lifecycle::transition(Some(prf), &store, &audit, &id(name), t).expect("transition");
    }
    let mut sign = Record::new(Event::Sign, CKR_OK)
        .asset("k1", Some(2))
        .session(7)
        .detail("fuzz template");
    sign.mechanism = Some(CKM_ECDSA_SHA256);
    sign.input_sha256 = Some([7; 32]);
    store.record(Some(ak), sign).expect("record");
    store
        .record(
            None,
            Record::new(Event::Verify, CKR_SIGNATURE_INVALID).asset("p1", Some(3)),
        )
        .expect("pending record");
    for (class, label, value) in [
        (CKO_CERTIFICATE, &b"cert"[..], certificate()),
        (CKO_DATA, &b"data"[..], b"some data".to_vec()),
    ] {
        let data = class == CKO_DATA;
        let object = StoredObject {
            rowid: 0,
            class,
            label: label.to_vec(),
            object_id: if data { Vec::new() } else { vec![1, 2, 3] },
            value,
            application: data.then(|| b"fuzz".to_vec()),
            oid: data.then(|| vec![0x06, 0x01, 0x00]),
        };
        store
            .create_object(
                &object,
                ak,
                Record::new(Event::ObjectCreate, CKR_OK).detail("stored"),
            )
            .expect("stored object");
    }
}

/// The columns `audit` and `audit_pending` share (a pending record is a
/// chained one without its sequence number and MAC), between the key and,
/// for `audit`, the MAC.
macro_rules! record_columns {
    ($key:literal $(, $last:literal)?) => {
        &[
            $key,
            "time_ns",
            "pid",
            "session",
            "event",
            "asset",
            "version",
            "mechanism",
            "input_sha256",
            "rv",
            "detail",
            $($last,)?
        ]
    };
}

/// (table, key column, columns), in the order a change picks them.
const TABLES: &[(&str, &str, &[&str])] = &[
    (
        "assets",
        "id",
        &[
            "id",
            "name",
            "key_type",
            "object_id",
            "current",
            "min_usable",
            "state",
            "created_at",
            "resume_state",
        ],
    ),
    (
        "versions",
        "rowid",
        &["asset", "version", "public_key", "created_at", "pk_mac"],
    ),
    ("audit", "seq", record_columns!("seq", "mac")),
    ("audit_pending", "id", record_columns!("id")),
    (
        "objects",
        "id",
        &[
            "id",
            "class",
            "label",
            "object_id",
            "value",
            "application",
            "oid",
            "created_at",
        ],
    ),
    ("generation", "id", &["id", "assets"]),
];

/// Words a store holds, so text values are often almost right.
const WORDS: &[&str] = &[
    "ACTIVE",
    "ROTATING",
    "SUSPENDED",
    "RETIRED",
    "secp256k1",
    "p256",
    "aes256",
    "hmac-sha256",
    "sign",
    "create",
    "transition",
    "k1",
    "p1@v2",
    "rotate -> ACTIVE current=4294967295 min_usable=1",
    "suspend -> SUSPENDED current=2 min_usable=3 resumes=ROTATING",
];

/// A value of any SQLite type; `true` when it must be stored as TEXT
/// whatever its bytes (text that is not UTF-8: SQLite keeps it, Rust must
/// refuse it).
fn value(r: &mut Reader) -> (Sql, bool) {
    let kind = r.u8() % 8;
    let v = match kind {
        0 => Sql::Null,
        1 => Sql::Integer(r.u64() as i64),
        2 => Sql::Integer(r.pick(&[
            0,
            -1,
            1,
            2,
            3,
            u32::MAX as i64,
            u32::MAX as i64 + 1,
            i64::MAX,
            i64::MIN,
        ])),
        3 => Sql::Real(f64::from_bits(r.u64())),
        4 => Sql::Text(String::from_utf8_lossy(r.blob(80)).into_owned()),
        5 => Sql::Text(r.pick(WORDS).to_string()),
        _ => Sql::Blob(r.blob(80).to_vec()),
    };
    (v, kind == 7)
}

fn param(cast: bool) -> &'static str {
    if cast {
        "CAST(?1 AS TEXT)"
    } else {
        "?1"
    }
}

/// Applies row changes to the populated store through SQL.
fn mutate(path: &Path, r: &mut Reader) -> rusqlite::Result<()> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch("PRAGMA ignore_check_constraints = ON; PRAGMA foreign_keys = OFF;")?;
    for _ in 0..8 {
        if r.done() {
            break;
        }
        let (table, key, columns) = r.pick(TABLES);
        let row = r.u8() as i64 % 24;
        // Errors (a UNIQUE clash, a NOT NULL) only end that change.
        let _ = match r.u8() % 8 {
            0..=3 => {
                let column = r.pick(columns);
                let (v, cast) = value(r);
                conn.execute(
                    &format!(
                        "UPDATE {table} SET {column} = {} WHERE {key} = ?2",
                        param(cast)
                    ),
                    rusqlite::params![v, row],
                )
            }
            4 => conn.execute(&format!("DELETE FROM {table} WHERE {key} = ?1"), [row]),
            5 => {
                // A copy of a row with one column changed.
                let column = r.pick(columns);
                let list = columns.join(", ");
                let (v, cast) = value(r);
                let picks: Vec<String> = columns
                    .iter()
                    .map(|c| {
                        if *c == column {
                            param(cast).into()
                        } else {
                            c.to_string()
                        }
                    })
                    .collect();
                conn.execute(
                    &format!(
                        "INSERT INTO {table} ({list}) SELECT {} FROM {table} WHERE {key} = ?2",
                        picks.join(", ")
                    ),
                    rusqlite::params![v, row],
                )
            }
            6 => conn
                .execute_batch(&format!("PRAGMA user_version = {};", r.u8() % 9))
                .map(|_| 0),
            _ => conn
                .execute_batch(&format!("PRAGMA application_id = {};", r.u32() as i32))
                .map(|_| 0),
        };
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// What the provider, `asset show` and `audit verify` read from a store.
fn exercise(store: &Store, f: &Fixture, r: &mut Reader) {
    let ak = &f.ak;
    let attribute_types = objects::attribute_types();
    let Ok(assets) = store.all_assets() else {
        return;
    };
    let _ = store.list_assets();
    for a in &assets {
        let _ = store.fresh_state(a.rowid);
        let _ = store.asset_by_name(&a.id);
        if let Ok(history) = store.history(a.rowid) {
            for v in &history {
                let _ = (a.is_usable(v.version), a.may_verify(v.version));
                let _ = (a.may_sign(v.version), a.may_hold_key(v.version));
                if let Some(pk) = &v.public_key {
                    let _ = store::key_digest(Some(pk));
                    let _ = public_key_mac(ak, a.id.as_str(), v.version, pk);
                }
            }
        }
        let Ok(Some(full)) = store.asset(a.rowid) else {
            continue;
        };
        let _ = derive::version_object_id(&full.object_id, full.current);
        for key in View::keys_of(&full) {
            let Some(view) = View::resolve(&full, &key) else {
                continue;
            };
            let _ = (view.label(), view.object_id(), view.verify_points());
            let _ = (view.may_sign(), view.may_verify());
            for &ty in &attribute_types {
                if let Some(v) = view.attribute(ty) {
                    let _ = v.to_bytes();
                }
            }
        }
    }
    for rowid in [0, 1, 2, 3, 6, -1, i64::MAX, r.u64() as i64] {
        let _ = store.asset(rowid);
        let _ = store.fresh_state(rowid);
        let _ = store.stored_object(rowid);
    }
    if let Ok(list) = store.stored_objects() {
        for o in list {
            let _ = objects::x509_fields(&o.value);
        }
    }
    let _ = store.pending_rows();
    if let Ok(rows) = store.audit_rows(i64::MIN) {
        // As `audit verify` reads them.
        let macs: Vec<[u8; 32]> = rows
            .iter()
            .map(|(_, m)| m.as_slice().try_into().unwrap_or([0u8; 32]))
            .collect();
        let _ = verify_chain(ak, rows.iter().map(|(r, _)| r).zip(macs.iter()));
        for (rec, _) in &rows {
            let _ = store::parse_transition_detail(&rec.detail);
            let _ = store::parse_resumes_to(&rec.detail);
            let _ = rec.encode();
        }
    }
    let _ = store.audit_rows(r.u64() as i64);
    if let Ok(Some((seq, mac))) = store.audit_head() {
        let _ = store.holds_record(seq, &mac);
    }
    // What C_Login checks before anything is written.
    if store.check_root(ak).is_err() {
        return;
    }
    // A change on a store whose chain holds: a transition of one asset
    // (rows may still be odd), then a record appended.
    if let Some(a) = assets.get(r.u8() as usize % assets.len().max(1)) {
        let t = match r.u8() % 7 {
            0 => Transition::Rotate { grace: false },
            1 => Transition::Rotate { grace: true },
            2 => Transition::Finish,
            3 => Transition::Trim(r.u32()),
            4 => Transition::Suspend,
            5 => Transition::Resume,
            _ => Transition::Retire,
        };
        let audit = Audit {
            ak,
            session: None,
            actor: None,
        };
        let _ = lifecycle::transition(Some(&f.prf), store, &audit, &a.id, t);
    }
    let _ = store.record(Some(ak), Record::new(Event::Login, CKR_OK));
    let _ = store.audit_head();
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut r = Reader::new(data);
    let path = f.dir.join("fuzz.db");
    remove_db(&path);
    let written = match r.u8() % 3 {
        0 => std::fs::write(&path, r.rest()).is_ok(),
        1 => {
            let mut file = if r.bool() {
                f.rich.clone()
            } else {
                f.empty.clone()
            };
            for _ in 0..16 {
                if r.done() {
                    break;
                }
                let at = r.u32() as usize % file.len();
                let n = r.u8() as usize % 16 + 1;
                for (i, b) in r.bytes(n).iter().enumerate() {
                    if let Some(slot) = file.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            std::fs::write(&path, &file).is_ok()
        }
        _ => std::fs::write(&path, &f.rich).is_ok() && mutate(&path, &mut r).is_ok(),
    };
    if !written {
        return;
    }
    if let Ok(store) = Store::open(&path) {
        exercise(&store, f, &mut r);
    }
});
