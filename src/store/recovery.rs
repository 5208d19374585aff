//! The root's recovery in the store: the fingerprint its records name, and a `recover` request checked (approvals, cooldown, what it names) and marked executed in one transaction.

use crate::access::{format_time, parse_time};
use crate::audit::Record;
use crate::types::Secret32;

use super::approvals::RequestRow;
use super::{Store, StoreError};

/// The words a record's detail names a root fingerprint with.
pub const FINGERPRINT_WORD: &str = "fingerprint=";

/// The fingerprint a detail names: `fingerprint=HEX` (and, in `init`
/// records made before backups, `(fingerprint HEX)`).
pub fn fingerprint_in(detail: &str) -> Option<String> {
    // At a fixed place: right after a `root` record's "root …: ", or in the
    // `init` record's closing "(fingerprint HEX)" (the store's path and the
    // root's label, before them, may hold anything).
    let at = if detail.starts_with("root ") {
        let after = detail.find(": ")? + 2;
        detail[after..].strip_prefix(FINGERPRINT_WORD)?;
        after + FINGERPRINT_WORD.len()
    } else {
        let i = detail.rfind("(fingerprint ")? + 13;
        (detail.len() == i + 33 && detail.ends_with(')')).then_some(i)?
    };
    let hex: String = detail[at..].chars().take(32).collect();
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// What the store's `root` records say of the root's backup: the newest
/// ceremony, drill and recovery, each (time in ns, detail).
#[derive(Debug, Default)]
pub struct BackupFacts {
    pub ceremony: Option<(u64, String)>,
    pub drill: Option<(u64, String)>,
    pub recovery: Option<(u64, String)>,
    /// Drills recorded in all.
    pub drills: usize,
}

impl Store {
    /// The root's backup as the store's `root` records tell it (as read:
    /// `audit verify` checks them with the rest of the chain).
    pub fn backup_facts(&self) -> Result<BackupFacts, StoreError> {
        let mut f = BackupFacts::default();
        for (r, _) in self.chain_rows("WHERE event = 'root' ORDER BY seq DESC", 0)? {
            let slot = if r.detail.starts_with("root ceremony:") {
                &mut f.ceremony
            } else if r.detail.starts_with("root drill:") {
                f.drills += 1;
                &mut f.drill
            } else if r.detail.starts_with("root recovered:") {
                &mut f.recovery
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some((r.time_ns, r.detail.clone()));
            }
        }
        Ok(f)
    }

    /// The root fingerprint the store's newest `root` or `init` record
    /// names (unverified until the caller holds the audit key: a recovery
    /// checks the whole store under the rebuilt root before it trusts it).
    pub fn recorded_fingerprint(&self) -> Result<Option<String>, StoreError> {
        let rows = self.chain_rows("WHERE event IN ('root', 'init') ORDER BY seq DESC", 0)?;
        Ok(rows.iter().find_map(|(r, _)| fingerprint_in(&r.detail)))
    }

    /// Marks the approved `recover` request `id` executed, with the
    /// recovery's record `recovered`, in one transaction, refused (changing
    /// nothing) unless it is pending and
    /// unexpired at `now`, names `fingerprint` and `token`, its `not-before`
    /// time (the cooldown after its announcement) has passed, and its
    /// approvals meet the rules in force now.
    pub fn execute_recovery(
        &self,
        ak: &Secret32,
        id: &str,
        (fingerprint, token): (&str, &str),
        now: i64,
        base: Record,
        recovered: Record,
    ) -> Result<RequestRow, StoreError> {
        self.on_request(ak, id, now, |tx, _, mut row| {
            check_recovery(&row, fingerprint, token, now)?;
            let unmet = self.unmet_in(tx, &row)?;
            if !unmet.is_empty() {
                return Err(StoreError::Refused(format!(
                    "request {id} lacks approvals: {}",
                    unmet.join("; ")
                )));
            }
            // The recovery's own record, in this transaction.
            let mut rec = recovered;
            self.append_in(tx, ak, std::slice::from_mut(&mut rec))?;
            row.state = "executed".into();
            row.outcome = format!("root {fingerprint} recovered into backing token {token:?}");
            Ok((row, "request executed: root recovered".into(), base))
        })
    }
}

/// Whether `row` is a `recover` request for `fingerprint` into `token`
/// whose cooldown has passed at `now`.
pub fn check_recovery(
    row: &RequestRow,
    fingerprint: &str,
    token: &str,
    now: i64,
) -> Result<(), StoreError> {
    let id = &row.id;
    let doc = row
        .doc()
        .map_err(|m| StoreError::Refused(format!("request {id}: {m}")))?;
    if doc.operation != "recover" {
        return Err(StoreError::Refused(format!(
            "request {id} is a {} request, not a root recovery",
            doc.operation
        )));
    }
    let named = |k: &str| doc.param(k).unwrap_or_default().to_string();
    if named("fingerprint") != fingerprint {
        return Err(StoreError::Refused(format!(
            "request {id} recovers root {}, but these shares rebuild root {fingerprint}",
            named("fingerprint")
        )));
    }
    if named("token") != token {
        return Err(StoreError::Refused(format!(
            "request {id} recovers into backing token {:?}, but the config names token {token:?}",
            named("token")
        )));
    }
    let not_before = parse_time(&named("not-before"))
        .map_err(|m| StoreError::Refused(format!("request {id}: not-before: {m}")))?;
    if now < not_before {
        return Err(StoreError::Refused(format!(
            "request {id} is in its cooldown: announced at {}, it may run from {} (in {} s); \
             nothing was imported",
            format_time(doc.requested_at),
            format_time(not_before),
            not_before - now
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_named_by_records() {
        let fp = "00112233445566778899aabbccddeeff";
        assert_eq!(
            fingerprint_in(&format!("root ceremony: fingerprint={fp} set=1")).as_deref(),
            Some(fp)
        );
        assert_eq!(
            fingerprint_in(&format!("store created at x for root r (fingerprint {fp})")).as_deref(),
            Some(fp)
        );
        assert_eq!(fingerprint_in("root drill: fingerprint=0011"), None);
        assert_eq!(fingerprint_in("no such word"), None);
        // A path naming another fingerprint does not shadow the record's own.
        let other = "ffeeddccbbaa99887766554433221100";
        assert_eq!(
            fingerprint_in(&format!(
                "store created at /x/fingerprint={other}/(fingerprint {other})/s.db for root r \
                 (fingerprint {fp})"
            ))
            .as_deref(),
            Some(fp)
        );
    }
}
