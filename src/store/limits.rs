//! Policies at the commit (users mode): each use is checked against the policies matching its asset, its rate limits counted from the audit log in the commit's own transaction, so a limit holds exactly across threads, processes and hosts.
//!
//! Counting a window's records at every commit would cost in proportion to
//! the window (a limit of a million a minute reads a million index entries
//! per batch). So each process keeps, per limited subject, the uses of its
//! window in 64 time buckets, brought up to date at each commit from the
//! records appended since (one read of the newest few records, whoever
//! wrote them). The buckets overlapping the window give an upper bound on
//! its count: a use well under the limit is allowed on it; only when the
//! bound reaches the limit are the window's records counted exactly (then
//! few, or the use would be refused anyway). Records a store writer deletes
//! stay counted by a running process until its next state change (never
//! more results, only fewer).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::access::{Pattern, Policy};
use crate::audit::Record;

use super::db::{Db, Val};
use super::{Store, StoreError};

/// The uses that count against a rate limit: results released.
const USES: &str = "event IN ('sign', 'encrypt', 'decrypt') AND rv = 0";

/// Time buckets per window.
const BUCKETS: i64 = 64;

/// What a rate limit counts: one asset's uses, or one user's uses of the
/// assets a pattern matches.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(super) enum Subject {
    Asset(String),
    User(String, Pattern),
}

impl Subject {
    fn covers(&self, asset: &str, actor: Option<&str>) -> bool {
        match self {
            Subject::Asset(a) => a == asset,
            Subject::User(u, p) => actor == Some(u.as_str()) && p.matches(asset),
        }
    }
}

/// A subject's uses by time bucket (`width` ns each), from the records up
/// to the tallies' `head`.
struct Buckets {
    width: i64,
    counts: BTreeMap<i64, u64>,
    total: u64,
}

impl Buckets {
    fn add(&mut self, time_ns: i64, n: u64) {
        *self
            .counts
            .entry(time_ns.div_euclid(self.width))
            .or_insert(0) += n;
        self.total += n;
    }

    /// Forgets the buckets whose every time is at or before `since`.
    fn prune(&mut self, since: i64) {
        // Bucket b holds times in [b·w, (b+1)·w): every one is at or
        // before `since` exactly when b is below the bucket of since + 1.
        let keep_from = (since + 1).div_euclid(self.width);
        let kept = self.counts.split_off(&keep_from);
        let gone: u64 = self.counts.values().sum();
        self.counts = kept;
        self.total -= gone;
    }
}

/// Each limited subject's buckets, valid while the policies in force are
/// those of the verified state change `at`, up to main-chain record `head`.
#[derive(Default)]
pub(super) struct Tallies {
    at: Option<(u64, [u8; 32])>,
    head: u64,
    /// The latest window start each subject was pruned to: a clock that
    /// went back starts the tallies afresh.
    by: HashMap<(Subject, u32), (Buckets, i64)>,
}

/// One commit's view of the policies and of the uses counted so far.
pub(super) struct Limits {
    policies: Arc<Vec<Policy>>,
    /// The quorum rules in force (those for `sign` gate signatures).
    rules: Arc<Vec<crate::approvals::Rule>>,
    /// Approved signatures' requests this batch uses (each once), to mark
    /// executed in the batch's transaction.
    pub(super) consumed: Vec<(super::RequestRow, Option<String>)>,
    /// Requests this batch records for signatures refused for want of
    /// approvals (one per asset, mechanism and digest).
    pub(super) proposed: Vec<(super::RequestRow, Option<String>)>,
    /// Uses allowed in this batch so far, per subject and window.
    batch: HashMap<(Subject, u32), u64>,
    now_ns: i64,
    /// Whether the tallies were brought up to this transaction's records.
    caught_up: bool,
}

impl Limits {
    pub(super) fn new(
        policies: Arc<Vec<Policy>>,
        rules: Arc<Vec<crate::approvals::Rule>>,
    ) -> Limits {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let mut l = Limits::at(policies, now_ns);
        l.rules = rules;
        l
    }

    /// As `new`, at the time `now_ns` (tests).
    pub(super) fn at(policies: Arc<Vec<Policy>>, now_ns: i64) -> Limits {
        Limits {
            policies,
            rules: Arc::new(Vec::new()),
            consumed: Vec::new(),
            proposed: Vec::new(),
            batch: HashMap::new(),
            now_ns,
            caught_up: false,
        }
    }

    /// Whether `record`'s use has anything to check at its commit: a user's
    /// use, or a use of an asset a policy governs.
    pub(super) fn governs(&self, record: &Record) -> bool {
        record.actor.is_some()
            || record.asset.as_deref().is_some_and(|a| {
                self.policies.iter().any(|p| p.pattern.matches(a))
                    || self.rules.iter().any(|r| r.applies("sign", Some(a)))
            })
    }

    /// Whether the use `record` stands for may be released under every
    /// policy matching its asset (`Err`: the rule that refuses it, for the
    /// record and the caller). An allowed use is counted for the rest of
    /// the batch; a signature that needed approvals names the request whose
    /// approvals it uses (`Ok(Some(words))`, for its record). A signature
    /// refused for want of approvals is proposed: a request stating it is
    /// recorded (unless one is pending), with `digest` (raw `CKM_ECDSA`'s
    /// data) or the SHA-256 of the message as the digest to approve.
    pub(super) fn decide(
        &mut self,
        store: &Store,
        db: &mut dyn Db,
        record: &Record,
        digest: Option<&[u8]>,
    ) -> Result<Result<Option<String>, String>, StoreError> {
        let Some(asset) = record.asset.as_deref() else {
            return Ok(Ok(None));
        };
        let actor = record.actor.as_deref();
        // The user as the store says now: locked, removed or given other
        // roles or patterns by an admin since the login, in any process.
        if let Some(actor) = actor {
            if let Err(why) = user_may(store, db, actor, record, asset)? {
                return Ok(Err(why));
            }
        }
        // A policy governs every use of a matching asset, a user's or not
        // (a pass-through process on the same store obeys it too); only its
        // per-user limit needs a user.
        let policies = self.policies.clone();
        let now = self.now_ns.div_euclid(1_000_000_000);
        let mut counted = Vec::new();
        // The key that signs: an HD child (its record names the path) or the
        // asset version's own key (the path `m`).
        // (HMAC keys have no HD tree: `paths=` does not concern them.)
        let signing = record.event == crate::audit::Event::Sign
            && record
                .mechanism
                .is_none_or(|m| crate::mechanisms::hmac::hmac_len(m).is_none());
        let path = crate::hd::Path::of_record_detail(&record.detail);
        for p in policies.iter().filter(|p| p.pattern.matches(asset)) {
            let pat = p.pattern.as_str();
            if let Err(d) = p.check(record.mechanism.unwrap_or(0), now) {
                return Ok(Err(format!("rule={} policy={pat} {}", d.rule, d.why)));
            }
            if let Some(d) = p.check_path(&path).err().filter(|_| signing) {
                return Ok(Err(format!("rule={} policy={pat} {}", d.rule, d.why)));
            }
            let limits = [
                (p.asset_rate, Some(Subject::Asset(asset.to_string()))),
                (
                    p.user_rate,
                    actor.map(|a| Subject::User(a.to_string(), p.pattern.clone())),
                ),
            ];
            for (rate, subject) in limits {
                let (Some(r), Some(subject)) = (rate, subject) else {
                    continue;
                };
                let key = (subject, r.window_secs);
                if !self.under(store, db, &key, u64::from(r.count))? {
                    let d = match &key.0 {
                        Subject::Asset(_) => p.asset_rate_denied(asset),
                        Subject::User(a, _) => p.user_rate_denied(a),
                    };
                    return Ok(Err(format!("rule={} policy={pat} {}", d.rule, d.why)));
                }
                counted.push(key);
            }
        }
        // A signature of an asset whose quorum rules (or policies) want
        // approvals: released only on a request approving exactly it, used
        // once (marked executed in this transaction).
        let mut note = None;
        if record.event == crate::audit::Event::Sign {
            let mut rules: Vec<crate::approvals::Rule> = self
                .rules
                .iter()
                .filter(|r| r.applies("sign", Some(asset)))
                .cloned()
                .collect();
            for p in policies
                .iter()
                .filter(|p| p.approvals > 0 && p.pattern.matches(asset))
            {
                rules.push(crate::approvals::Rule {
                    operation: "sign".into(),
                    pattern: p.pattern.clone(),
                    approvals: p.approvals,
                    group: String::new(),
                });
            }
            if !rules.is_empty() && !path.is_empty() {
                // A request approves a digest for the asset version's own
                // key: an approval must never release a child's signature.
                return Ok(Err(format!(
                    "rule=approvals signatures of asset {asset:?} need approvals, which name \
                     the asset version's own key: HD child keys ({path}) cannot sign under an \
                     approvals rule; sign with the asset's key once the request is approved"
                )));
            }
            if !rules.is_empty() {
                let taken: Vec<String> = self.consumed.iter().map(|(r, _)| r.id.clone()).collect();
                match store.approved_signature(db, record, asset, &rules, &taken)? {
                    Ok((row, by)) => {
                        note = Some(format!("approved by request={} ({})", row.id, by.join(",")));
                        self.consumed.push((row, record.actor.clone()));
                    }
                    Err((why, pending)) => {
                        let proposed = if pending {
                            None
                        } else {
                            self.propose(store, db, record, asset, digest)?
                        };
                        return Ok(Err(match proposed {
                            Some(id) => format!(
                                "{why}; request {id} was recorded for approvers (`p11derive \
                                 request show {id}`): sign again once it is approved"
                            ),
                            None => why,
                        }));
                    }
                }
            }
        }
        for key in counted {
            *self.batch.entry(key).or_insert(0) += 1;
        }
        Ok(Ok(note))
    }

    /// The request proposing a refused signature (its id), unless this
    /// batch proposed the same one already or its digest is unknown.
    fn propose(
        &mut self,
        store: &Store,
        db: &mut dyn Db,
        record: &Record,
        asset: &str,
        digest: Option<&[u8]>,
    ) -> Result<Option<String>, StoreError> {
        let (Some(mech), Some(input)) = (record.mechanism, record.input_sha256) else {
            return Ok(None);
        };
        let digest = if crate::mechanisms::signs_caller_digest(mech) {
            match digest {
                Some(d) => d.to_vec(),
                None => return Ok(None),
            }
        } else {
            input.to_vec()
        };
        let lookup = super::approved_digest_lookup(asset, mech, &digest);
        if let Some((r, _)) = self.proposed.iter().find(|(r, _)| r.lookup == lookup) {
            return Ok(Some(r.id.clone()));
        }
        let row = store.proposal(db, record, asset, mech, &digest, lookup)?;
        let id = row.id.clone();
        self.proposed.push((row, record.actor.clone()));
        Ok(Some(id))
    }

    /// Whether one more use of `key`'s subject stays under `limit` in its
    /// window ending now.
    fn under(
        &mut self,
        store: &Store,
        db: &mut dyn Db,
        key: &(Subject, u32),
        limit: u64,
    ) -> Result<bool, StoreError> {
        if !self.caught_up {
            store.catch_up(db)?;
            self.caught_up = true;
        }
        let since = self.now_ns - i64::from(key.1) * 1_000_000_000;
        let here = self.batch.get(key).copied().unwrap_or(0);
        let bound = store.upper_bound(db, key, since)?;
        if bound + here < limit {
            return Ok(true);
        }
        let exact = store.count_uses(db, &key.0, since)?;
        Ok(exact + here < limit)
    }
}

/// Whether `actor` may still make the use `record` stands for with
/// `asset` (`Err`: `rule=user`, `rule=role` or `rule=pattern` and why).
fn user_may(
    store: &Store,
    db: &mut dyn Db,
    actor: &str,
    record: &Record,
    asset: &str,
) -> Result<Result<(), String>, StoreError> {
    use crate::access::{Action, UseKind};
    use crate::audit::Event;
    let kind = match record.event {
        Event::Sign => UseKind::Sign,
        Event::Verify => UseKind::Verify,
        Event::Encrypt => UseKind::Encrypt,
        Event::Decrypt => UseKind::Decrypt,
        _ => return Ok(Ok(())),
    };
    let user = store.user_in_tx(db, actor)?;
    let Some(u) = user.filter(|u| u.active) else {
        return Ok(Err(format!(
            "rule=user user {actor:?} is no longer active (locked or removed by an admin)"
        )));
    };
    Ok(
        crate::access::permits(&u.roles, &u.patterns, Action::Use(kind), Some(asset))
            .map_err(|d| format!("rule={} {}", d.rule, d.why)),
    )
}

impl Store {
    /// `user_may` outside a commit's transaction (a lane commit, bound to
    /// the state change the user was read at).
    pub(super) fn user_refusal(&self, record: &Record) -> Result<Result<(), String>, StoreError> {
        let (Some(asset), Some(actor)) = (record.asset.as_deref(), record.actor.as_deref()) else {
            return Ok(Ok(()));
        };
        let mut conn = self.lock();
        user_may(self, &mut **conn, actor, record, asset)
    }

    fn tallies(&self) -> std::sync::MutexGuard<'_, Tallies> {
        self.tallies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings every tally up to the records `db` (a commit's transaction)
    /// holds: the main-chain uses appended since (one read by record
    /// number). Tallies of other policies are dropped.
    fn catch_up(&self, db: &mut dyn Db) -> Result<(), StoreError> {
        let at = self.verified_change();
        let from = {
            let t = self.tallies();
            (t.at == at && !t.by.is_empty()).then_some(t.head)
        };
        let Some(from) = from else {
            // Tallies of other policies (or none yet): start afresh at the
            // newest record; each subject is counted at its first use.
            let head = self.head_in(db)?.map_or(0, |h| h.0);
            let mut t = self.tallies();
            t.at = at;
            t.head = head;
            t.by.clear();
            return Ok(());
        };
        // The records appended since (by number: the newest few), every
        // event, so the newest number is learnt in the same read.
        let rows = self.rows(
            db,
            "SELECT seq, asset, actor, time_ns, event, rv FROM audit WHERE seq > ?1",
            &[Val::Int(from as i64)],
            |r| {
                Ok((
                    r.int(0)?.max(0) as u64,
                    r.opt_text(1)?,
                    r.opt_text(2)?,
                    r.int(3)?,
                    r.text(4)?,
                    r.int(5)?,
                ))
            },
        )?;
        let mut t = self.tallies();
        let mut head = t.head;
        for (seq, asset, actor, time, event, rv) in rows {
            head = head.max(seq);
            let used = rv == 0 && matches!(event.as_str(), "sign" | "encrypt" | "decrypt");
            let Some(asset) = asset.filter(|_| used) else {
                continue;
            };
            for ((subject, _), (b, _)) in t.by.iter_mut() {
                if subject.covers(&asset, actor.as_deref()) {
                    b.add(time, 1);
                }
            }
        }
        t.head = head;
        Ok(())
    }

    /// An upper bound on `key`'s uses after `since`, from its buckets (made
    /// from the store at the first use).
    fn upper_bound(
        &self,
        db: &mut dyn Db,
        key: &(Subject, u32),
        since: i64,
    ) -> Result<u64, StoreError> {
        {
            let mut t = self.tallies();
            if let Some((b, last)) = t.by.get_mut(key) {
                if since >= *last {
                    b.prune(since);
                    *last = since;
                    return Ok(b.total);
                }
                // The clock went back: count afresh.
                t.by.remove(key);
            }
        }
        let width = (i64::from(key.1) * 1_000_000_000 / BUCKETS).max(1);
        let mut b = Buckets {
            width,
            counts: BTreeMap::new(),
            total: 0,
        };
        for (time, n) in self.uses_by_bucket(db, &key.0, since, width)? {
            b.add(time, n);
        }
        let total = b.total;
        self.tallies().by.insert(key.clone(), (b, since));
        Ok(total)
    }

    /// `subject`'s uses after `since` in both chains, per bucket of
    /// `width`: (a time in the bucket, count).
    fn uses_by_bucket(
        &self,
        db: &mut dyn Db,
        subject: &Subject,
        since: i64,
        width: i64,
    ) -> Result<Vec<(i64, u64)>, StoreError> {
        let (who, param, pattern) = match subject {
            Subject::Asset(a) => ("asset", a.as_str(), None),
            Subject::User(u, p) => ("actor", u.as_str(), Some(p)),
        };
        let mut out = Vec::new();
        for table in ["audit", "audit_lane"] {
            let sql = format!(
                "SELECT asset, (time_ns - ?3) / ?4, MIN(time_ns), COUNT(*) FROM {table} \
                 WHERE {who} = ?1 AND time_ns > ?2 AND {USES} GROUP BY 1, 2"
            );
            // Buckets counted from `since`'s bucket start, so each group
            // falls in one bucket of `width`.
            let start = since.div_euclid(width) * width;
            let rows = self.rows(
                db,
                &sql,
                &[
                    param.into(),
                    Val::Int(since),
                    Val::Int(start),
                    Val::Int(width),
                ],
                |r| {
                    Ok((
                        r.opt_text(0)?.unwrap_or_default(),
                        r.int(2)?,
                        r.int(3)?.max(0) as u64,
                    ))
                },
            )?;
            out.extend(
                rows.into_iter()
                    .filter(|(a, ..)| pattern.is_none_or(|p| p.matches(a)))
                    .map(|(_, t, n)| (t, n)),
            );
        }
        Ok(out)
    }

    /// `subject`'s uses after `since` in both chains, counted exactly.
    fn count_uses(
        &self,
        db: &mut dyn Db,
        subject: &Subject,
        since: i64,
    ) -> Result<u64, StoreError> {
        let (who, param, pattern) = match subject {
            Subject::Asset(a) => ("asset", a.as_str(), None),
            Subject::User(u, p) => ("actor", u.as_str(), Some(p)),
        };
        let mut out = 0;
        for table in ["audit", "audit_lane"] {
            let sql = format!(
                "SELECT asset, COUNT(*) FROM {table} WHERE {who} = ?1 AND time_ns > ?2 AND \
                 {USES} GROUP BY asset"
            );
            let rows = self.rows(db, &sql, &[param.into(), Val::Int(since)], |r| {
                Ok((r.opt_text(0)?.unwrap_or_default(), r.int(1)?.max(0) as u64))
            })?;
            out += rows
                .into_iter()
                .filter(|(a, _)| pattern.is_none_or(|p| p.matches(a)))
                .map(|(_, n)| n)
                .sum::<u64>();
        }
        Ok(out)
    }

    /// Whether these uses may take a lane commit on PostgreSQL: `None` when
    /// any of their assets is governed by a policy or a `sign` quorum rule
    /// (or they cannot be read): such a batch is decided under the writers'
    /// lock. Else the state change the policies and rules were read at: the
    /// lane commit must be bound to exactly it (a newer state change, with
    /// perhaps a new rule, then makes the lane statement write nothing).
    pub(super) fn policed<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Option<Option<(u64, [u8; 32])>> {
        let assets: Vec<&str> = records
            .into_iter()
            .filter_map(|r| r.asset.as_deref())
            .collect();
        // Policies and rules as of one ledger position (reading either may
        // move it).
        for _ in 0..3 {
            let at = self.verified_change();
            let (Ok(policies), Ok(rules)) = (self.active_policies(), self.active_rules()) else {
                return None;
            };
            if self.verified_change() != at {
                continue;
            }
            let governed = assets.iter().any(|a| {
                policies.iter().any(|p| p.pattern.matches(a))
                    || rules.iter().any(|q| q.applies("sign", Some(a)))
            });
            return (!governed).then_some(at);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Rate;
    use crate::audit::Event;

    /// With limits close to what the records reach, a batch's decisions
    /// through the kept buckets are exactly those a fresh count gives, as
    /// the window slides and records of other assets and users arrive.
    #[test]
    fn decisions_through_kept_buckets_equal_fresh_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.db")).unwrap();
        let ak = crate::secure::secret::<32>().unwrap();
        let mut policy = Policy::new(Pattern::parse("hot-*").unwrap());
        policy.asset_rate = Some(Rate {
            count: 9,
            window_secs: 10,
        });
        policy.user_rate = Some(Rate {
            count: 12,
            window_secs: 7,
        });
        let policies = Arc::new(vec![policy]);
        for name in ["bob", "eve"] {
            let row = crate::store::UserRow {
                name: name.into(),
                roles: "signer".into(),
                patterns: "*".into(),
                salt: vec![0; 16],
                verifier: vec![0; 32],
                state: "active".into(),
                created_at: 0,
            };
            store
                .put_user(&ak, &row, "user add", Record::new(Event::User, 0))
                .unwrap();
        }
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as i64
        };
        let sec = 1_000_000_000i64;
        let mut t = 1_000 * sec;
        let (mut allowed, mut refused) = (0, 0);
        for step in 0..600 {
            t += (next() % 400) * 1_000_000;
            let asset = ["hot-1", "hot-2", "cold-1"][(next() % 3) as usize];
            let actor = ["bob", "eve"][(next() % 2) as usize];
            let mut r = Record::new(Event::Sign, 0)
                .asset(asset, Some(1))
                .actor(Some(actor));
            r.time_ns = t as u64;
            // The decision as the commit makes it, and by a fresh count.
            let kept = {
                let mut conn = store.lock();
                let mut l = Limits::at(policies.clone(), t);
                l.decide(&store, &mut **conn, &r, None).unwrap()
            };
            let fresh = {
                let mut conn = store.lock();
                let since_a = t - 10 * sec;
                let since_u = t - 7 * sec;
                let a = store
                    .count_uses(&mut **conn, &Subject::Asset(asset.into()), since_a)
                    .unwrap();
                let u = store
                    .count_uses(
                        &mut **conn,
                        &Subject::User(actor.into(), Pattern::parse("hot-*").unwrap()),
                        since_u,
                    )
                    .unwrap();
                !asset.starts_with("hot-") || (a < 9 && u < 12)
            };
            assert_eq!(kept.is_ok(), fresh, "step {step}: {kept:?}");
            if kept.is_err() {
                r.event = Event::Refused;
                refused += 1;
            } else {
                allowed += 1;
            }
            store.record(Some(&ak), r).unwrap();
        }
        assert!(
            allowed > 100 && refused > 50,
            "{allowed} allowed, {refused} refused"
        );
    }
}
