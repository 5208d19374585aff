//! Asset creation and transitions as the provider and the CLI run them: the new version derived, its public key recorded.
//!
//! Creation (version 1) and the transitions of design §3. New versions' public
//! keys are derived through the backing HSM and recorded with the transition,
//! so verification and public-key reads never need the root.

#![forbid(unsafe_code)]

use std::fmt;

use crate::audit::{Event, Record};
use crate::ck::*;
use crate::derive::{self, AssetId, KeyType, Prf, Secret32};
use crate::error::Error;
use crate::store::{Asset, NewAsset, Store, StoreError, Transition};

/// Why a lifecycle step failed.
#[derive(Debug)]
pub enum LifecycleError {
    Store(StoreError),
    /// Deriving through the backing HSM failed (or needs a login).
    Derive(Error),
}

impl fmt::Display for LifecycleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LifecycleError::Store(e) => write!(f, "{e}"),
            LifecycleError::Derive(e) => write!(f, "{e}"),
        }
    }
}

impl From<StoreError> for LifecycleError {
    fn from(e: StoreError) -> Self {
        LifecycleError::Store(e)
    }
}

impl From<Error> for LifecycleError {
    fn from(e: Error) -> Self {
        LifecycleError::Derive(e)
    }
}

impl LifecycleError {
    /// The return code a PKCS#11 caller gets for this failure.
    pub fn to_pkcs11(&self) -> Error {
        match self {
            LifecycleError::Store(e @ StoreError::Duplicate(_)) => {
                Error::with(CKR_ATTRIBUTE_VALUE_INVALID, e.to_string())
            }
            LifecycleError::Store(e @ (StoreError::Refused(_) | StoreError::Conflict(_))) => {
                Error::with(CKR_ACTION_PROHIBITED, e.to_string())
            }
            LifecycleError::Store(e @ StoreError::NeedsApproval(_)) => {
                Error::with(CKR_FUNCTION_REJECTED, e.to_string())
            }
            LifecycleError::Store(e) => Error::with(CKR_DEVICE_ERROR, e.to_string()),
            LifecycleError::Derive(e) => e.clone(),
        }
    }
}

/// Who acts, for the audit records of a lifecycle step: the audit key (from
/// the backing HSM) and the PKCS#11 session, if any.
pub struct Audit<'a> {
    pub ak: &'a Secret32,
    pub session: Option<u64>,
    /// The user whose change it is (users mode).
    pub actor: Option<&'a str>,
}

impl Audit<'_> {
    fn base(&self) -> Record {
        let r = Record::new(Event::Transition, CKR_OK).actor(self.actor);
        match self.session {
            Some(h) => r.session(h),
            None => r,
        }
    }
}

/// What the store records of version `n`'s key: the public point of an EC
/// key, the `CKA_CHECK_VALUE` of a secret key. Either lets a process check a
/// key it derives against the store, and lets public reads need no login.
fn public_key(prf: &dyn Prf, id: &AssetId, kt: KeyType, n: u32) -> Result<Option<Vec<u8>>, Error> {
    let key = derive::derive_key(prf, id, n, kt)?;
    crate::mechanisms::fingerprint(kt, &key)
        .map(Some)
        .ok_or_else(|| Error::with(CKR_GENERAL_ERROR, "derived scalar out of range"))
}

/// The version a rotation of `id` would make now and its public key (or
/// check value), derived through the HSM: what an approved rotation's
/// execution brings to the store.
pub fn next_version_key(
    prf: &dyn Prf,
    store: &Store,
    id: &AssetId,
) -> Result<(u32, Option<Vec<u8>>), LifecycleError> {
    let asset = store
        .asset_by_name(id)?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    let n = asset.current.checked_add(1).ok_or_else(|| {
        StoreError::Refused(format!("asset {:?} is at its last version", id.as_str()))
    })?;
    Ok((n, public_key(prf, id, asset.key_type, n)?))
}

/// Registers a new asset at version 1. `object_id` is the creator's `CKA_ID`,
/// or `None` for the default id.
pub fn create(
    prf: &dyn Prf,
    store: &Store,
    audit: &Audit<'_>,
    id: &AssetId,
    kt: KeyType,
    object_id: Option<Vec<u8>>,
) -> Result<Asset, LifecycleError> {
    let object_id = object_id.unwrap_or_else(|| derive::default_object_id(id).to_vec());
    let public_key = public_key(prf, id, kt, 1)?;
    Ok(store.create_asset(
        &NewAsset {
            id,
            key_type: kt,
            object_id: &object_id,
            public_key: public_key.as_deref(),
        },
        audit.ak,
        audit.base(),
    )?)
}

/// Applies a transition. A rotation needs the PRF (to record the new
/// version's public key); the others do not and take `None`.
pub fn transition(
    prf: Option<&dyn Prf>,
    store: &Store,
    audit: &Audit<'_>,
    id: &AssetId,
    t: Transition,
) -> Result<Asset, LifecycleError> {
    let Transition::Rotate { .. } = t else {
        return Ok(store.transition(id, t, None, audit.ak, audit.base())?);
    };
    // Another process may rotate between our read and our commit; the store
    // then refuses with Conflict and we derive for the new counter.
    let mut last = None;
    for _ in 0..5 {
        let asset = store
            .asset_by_name(id)?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let next = asset.current.checked_add(1);
        // Derive whatever state was read: another process may resume or
        // finish the asset before our transaction, and the store refuses an
        // EC rotation without its public key (secret keys record their check
        // value the same way).
        let active = asset.state == crate::store::AssetState::Active;
        let pk = match (next, prf) {
            (Some(n), Some(prf)) => public_key(prf, id, asset.key_type, n)?,
            (Some(_), None) if active => {
                return Err(LifecycleError::Derive(Error::with(
                    CKR_USER_NOT_LOGGED_IN,
                    format!(
                        "rotating {:?} derives its new version's public key (or check value) \
                         through the backing HSM: a user login (PIN) is needed",
                        id.as_str()
                    ),
                )))
            }
            // Let the store refuse with the precise reason.
            _ => None,
        };
        match store.transition(
            id,
            t,
            next.map(|n| (n, pk.as_deref())),
            audit.ak,
            audit.base(),
        ) {
            Err(e @ StoreError::Conflict(_)) => last = Some(e),
            other => return Ok(other?),
        }
    }
    Err(last
        .unwrap_or_else(|| StoreError::Conflict("rotation kept conflicting".into()))
        .into())
}

/// Moves the backing HSM's rollback anchor to the store's newest record and
/// newest verified state change (design §4, §6.5), keeping its lineage,
/// root fingerprint and epoch. Never onto a store that lacks what the
/// anchor holds: such a store is refused from then on in this process
/// (`Store::break_store`) and the error says why. Needs a user login,
/// and `Store::authenticate` done. `periodic` (a running process's move
/// every `anchor_interval_ms`): the lanes of a PostgreSQL store are covered
/// by another host's recent `lanes` record when there is one
/// (`Store::cover_lanes`).
pub fn advance_anchor(
    store: &Store,
    backend: &crate::backend::Backend,
    periodic: bool,
) -> Result<(), Error> {
    let fail = |e: StoreError| Error::with(CKR_DEVICE_ERROR, e.to_string());
    let old = backend.read_anchor()?;
    let epoch = old.as_ref().map_or(0, |a| a.epoch);
    // Never onto a chain that lost what this process saw, or a record
    // appended since the anchor last moved (either refuses the store from
    // now on, and the anchor keeps what this process saw, below).
    let _ = store.check_seen().and_then(|()| match &old {
        Some(a) if a.store.is_some() => store.check_continuity(a.head.0),
        _ => Ok(()),
    });
    if let Some((seen, change)) = store.lost_position(epoch) {
        // The store went back under this process: the anchor keeps what
        // this process saw, so new processes and `audit verify` refuse the
        // store too (forward only; never onto the store as it now is).
        let Some(a) = old else { return Ok(()) };
        // What this process saw is still in the store (it wrote onto a chain
        // that another process found cut): anchoring it would bless that
        // fork, and the anchor as it is already refuses the store.
        if store.holds_record(seen.0, &seen.1).map_err(fail)? {
            return Ok(());
        }
        let change = change.filter(|c| c.0 > a.change.0).unwrap_or(a.change);
        if seen.0 <= a.head.0 && change == a.change {
            return Ok(());
        }
        let head = if seen.0 > a.head.0 { seen } else { a.head };
        return backend.write_anchor(&crate::audit::Anchor { head, change, ..a }, false);
    }
    // PostgreSQL: the heads of the writers' lanes join the main chain
    // first, so the anchor covers them too. A cover that fails on a store
    // not refused (the database refused the `lanes` record, or the
    // connection dropped) does not hold the anchor back from the main
    // chain's newest record and state change: this process then commits
    // into the main chain until a cover succeeds.
    match store.cover_lanes(periodic) {
        Err(e @ StoreError::RolledBack(..)) => return Err(fail(e)),
        Err(e) => crate::log::warn(&format!(
            "anchor: the writers' lanes of store {} were not covered ({e}); the anchor moves \
             onto the main chain, and this process commits there until a cover succeeds",
            store.path().display()
        )),
        Ok(()) => {}
    }
    let Some(head) = store.audit_head().map_err(fail)? else {
        return Ok(());
    };
    if let Some(a) = &old {
        if let Err(e) = store.check_anchor(a) {
            return Err(fail(store.break_store(e.to_string(), a.epoch)));
        }
    }
    let root = anchored_root(old.as_ref(), backend)?;
    let ours = store
        .latest_change()
        .map_err(fail)?
        .unwrap_or((0, crate::audit::GENESIS));
    let change = match &old {
        Some(a) if a.change.0 > ours.0 => a.change,
        _ => ours,
    };
    let next = crate::audit::Anchor {
        store: store.store_id().map_err(fail)?,
        root,
        head,
        change,
        epoch: old.as_ref().map_or(0, |a| a.epoch),
        location: store.path().display().to_string(),
    };
    backend.write_anchor(&next, false)
}

/// The root fingerprint an anchor keeps: the one `old` holds, else (an
/// anchor of the first format, or none yet) derived now (one HSM call).
pub fn anchored_root(old: Option<&crate::audit::Anchor>, prf: &dyn Prf) -> Result<[u8; 16], Error> {
    match old.map(|a| a.root).filter(|r| *r != [0; 16]) {
        Some(r) => Ok(r),
        None => derive::root_fingerprint(prf),
    }
}
