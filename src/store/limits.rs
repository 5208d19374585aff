//! Policies at the commit (users mode): each use is checked against the policies matching its asset, its rate limits counted from the audit log in the commit's own transaction, so a limit holds exactly across threads, processes and hosts.

use std::collections::HashMap;
use std::sync::Arc;

use crate::access::Policy;
use crate::audit::Record;

use super::db::{Db, Val};
use super::{first, Store, StoreError};

/// The uses that count against a rate limit: results released.
const USES: &str = "event IN ('sign', 'encrypt', 'decrypt') AND rv = 0";

/// One commit's view of the policies and of the uses counted so far.
pub(super) struct Limits {
    policies: Arc<Vec<Policy>>,
    /// (policy pattern, asset) -> uses in the window, this batch included.
    by_asset: HashMap<(String, String), u64>,
    /// (policy pattern, user) -> uses in the window, this batch included.
    by_user: HashMap<(String, String), u64>,
    now_ns: i64,
}

impl Limits {
    pub(super) fn new(policies: Arc<Vec<Policy>>) -> Limits {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        Limits {
            policies,
            by_asset: HashMap::new(),
            by_user: HashMap::new(),
            now_ns,
        }
    }

    /// Whether the use `record` stands for may be released under every
    /// policy matching its asset (`Err`: the rule that refuses it, for the
    /// record and the caller). An allowed use is counted for the rest of
    /// the batch.
    pub(super) fn decide(
        &mut self,
        store: &Store,
        db: &mut dyn Db,
        record: &Record,
    ) -> Result<Result<(), String>, StoreError> {
        let (Some(asset), Some(actor)) = (record.asset.as_deref(), record.actor.as_deref()) else {
            return Ok(Ok(()));
        };
        let policies = self.policies.clone();
        let now = self.now_ns.div_euclid(1_000_000_000);
        let mut counted = Vec::new();
        for p in policies.iter().filter(|p| p.pattern.matches(asset)) {
            let pat = p.pattern.as_str().to_string();
            if let Err(d) = p.check(record.mechanism.unwrap_or(0), now) {
                return Ok(Err(format!("rule={} policy={pat} {}", d.rule, d.why)));
            }
            if let Some(r) = p.asset_rate {
                let since = self.now_ns - i64::from(r.window_secs) * 1_000_000_000;
                let k = (pat.clone(), asset.to_string());
                let n = match self.by_asset.get(&k) {
                    Some(n) => *n,
                    None => store.asset_uses_since(db, asset, since)?,
                };
                self.by_asset.insert(k.clone(), n);
                if n >= u64::from(r.count) {
                    let d = p.asset_rate_denied(asset);
                    return Ok(Err(format!("rule={} policy={pat} {}", d.rule, d.why)));
                }
                counted.push((true, k));
            }
            if let Some(r) = p.user_rate {
                let since = self.now_ns - i64::from(r.window_secs) * 1_000_000_000;
                let k = (pat.clone(), actor.to_string());
                let n = match self.by_user.get(&k) {
                    Some(n) => *n,
                    None => store
                        .user_uses_since(db, actor, since)?
                        .into_iter()
                        .filter(|(a, _)| p.pattern.matches(a))
                        .map(|(_, n)| n)
                        .sum(),
                };
                self.by_user.insert(k.clone(), n);
                if n >= u64::from(r.count) {
                    let d = p.user_rate_denied(actor);
                    return Ok(Err(format!("rule={} policy={pat} {}", d.rule, d.why)));
                }
                counted.push((false, k));
            }
        }
        for (asset_limit, k) in counted {
            let m = if asset_limit {
                &mut self.by_asset
            } else {
                &mut self.by_user
            };
            *m.entry(k).or_insert(0) += 1;
        }
        Ok(Ok(()))
    }
}

impl Store {
    /// Results released with `asset` since `since_ns` (both chains).
    fn asset_uses_since(
        &self,
        db: &mut dyn Db,
        asset: &str,
        since_ns: i64,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for table in ["audit", "audit_lane"] {
            let sql = format!(
                "SELECT COUNT(*) FROM {table} WHERE asset = ?1 AND time_ns > ?2 AND {USES}"
            );
            n += self
                .rows(db, &sql, &[asset.into(), Val::Int(since_ns)], |r| r.int(0))
                .map(first)?
                .unwrap_or(0)
                .max(0) as u64;
        }
        Ok(n)
    }

    /// Results released to `actor` since `since_ns`, by asset (both chains).
    fn user_uses_since(
        &self,
        db: &mut dyn Db,
        actor: &str,
        since_ns: i64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for table in ["audit", "audit_lane"] {
            let sql = format!(
                "SELECT asset, COUNT(*) FROM {table} WHERE actor = ?1 AND time_ns > ?2 AND {USES} \
                 GROUP BY asset"
            );
            out.extend(
                self.rows(db, &sql, &[actor.into(), Val::Int(since_ns)], |r| {
                    Ok((r.opt_text(0)?.unwrap_or_default(), r.int(1)?.max(0) as u64))
                })?,
            );
        }
        Ok(out)
    }

    /// Whether any of these uses' assets is governed by a policy (users
    /// mode): such a batch is decided under the writers' lock.
    pub(super) fn policed<'a>(&self, records: impl IntoIterator<Item = &'a Record>) -> bool {
        let mut records = records.into_iter().filter(|r| r.actor.is_some()).peekable();
        if records.peek().is_none() {
            return false;
        }
        let Ok(policies) = self.active_policies() else {
            // Unreadable policies: the ordinary transaction reads them
            // again and refuses what it must.
            return true;
        };
        records.any(|r| {
            r.asset
                .as_deref()
                .is_some_and(|a| policies.iter().any(|p| p.pattern.matches(a)))
        })
    }
}
