//! Regression tests for what the fuzz targets (`fuzz/`, `tools/fuzz.sh`)
//! found. Each names the target and the input committed in
//! `fuzz/corpus/<target>/` that found it.

use p11derive::audit::{Event, Record};
use p11derive::derive::{AssetId, KeyType, Secret32};
use p11derive::store::{NewAsset, Store, StoreError, Transition};

/// A store with one asset, and its audit key.
fn store_with_asset(dir: &std::path::Path, kt: KeyType) -> (Store, Secret32, AssetId) {
    let path = dir.join("state.db");
    let store = Store::create(&path).unwrap();
    let ak = Secret32::copy_of(&[7; 32]).unwrap();
    let id = AssetId::new("a1").unwrap();
    store
        .create_asset(
            &NewAsset {
                id: &id,
                key_type: kt,
                object_id: &[1; 16],
                public_key: Some(&[1, 2, 3]),
            },
            &ak,
            Record::new(Event::Create, 0),
        )
        .unwrap();
    (store, ak, id)
}

/// Changes the store's rows the way someone with the file could, CHECK
/// constraints bypassed.
fn tamper(store: &Store, sql: &str) {
    let c = rusqlite::Connection::open(store.path()).unwrap();
    c.execute_batch(&format!("PRAGMA ignore_check_constraints = ON; {sql}"))
        .unwrap();
}

/// store_open, `crash-rotating-counter-zero`: rotating a ROTATING asset whose
/// row says `current = 0` computed `current - 1` for the refusal message (a
/// panic with overflow checks, "version 4294967295" without).
#[test]
fn rotating_an_asset_whose_counter_was_set_to_zero_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ak, id) = store_with_asset(dir.path(), KeyType::Aes256);
    tamper(&store, "UPDATE assets SET current = 0, state = 'ROTATING';");
    let e = store
        .transition(
            &id,
            Transition::Rotate { grace: false },
            None,
            &ak,
            Record::new(Event::Transition, 0),
        )
        .unwrap_err();
    let StoreError::Refused(message) = &e else {
        panic!("expected a refusal, got {e:?}");
    };
    assert!(!message.contains("4294967295"), "{message}");
}

/// store_open, `crash-rotating-counter-max`: in a grace window, "may version
/// n sign" computed `n + 1 >= current`, which overflows for the version
/// 4294967295 (a panic with overflow checks; without them it wrapped to 0
/// and the current version was refused). The CHECK constraints allow such a
/// row, and so does the schema's u32 counter.
#[test]
fn the_last_possible_version_may_sign_in_a_grace_window() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _ak, id) = store_with_asset(dir.path(), KeyType::P256);
    tamper(
        &store,
        "UPDATE assets SET current = 4294967295, state = 'ROTATING';
         UPDATE versions SET version = 4294967295;",
    );
    let asset = store.asset_by_name(&id).unwrap().unwrap();
    assert_eq!(asset.versions.len(), 1);
    assert!(asset.may_sign(u32::MAX), "the current version");
    assert!(
        asset.may_sign(u32::MAX - 1),
        "the previous one, in its grace window"
    );
    assert!(!asset.may_sign(u32::MAX - 2));
}
