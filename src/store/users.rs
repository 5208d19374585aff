//! Users, their failed logins and policies (users mode): rows sealed under the state key and bound to their latest change in the chain, like assets.
//!
//! Each row carries `state_mac = HMAC(SK, str(kind) || fields… || u64
//! change_seq || mac of record change_seq)` (every field `u16be(len) ||
//! bytes`). Its latest change is a state-change record (`user`, `policy`,
//! `lockout`) whose `asset` column names the row as `user:NAME`,
//! `policy:PATTERN` or `login:NAME` (no asset id holds a `:`), so the
//! ledger (`state.rs`) knows each row's latest change: a row edited, put
//! back from an older copy, or deleted while the ledger knows it, is
//! refused when read, naming it. Rows are never deleted by p11derive (a
//! removed user or policy keeps its row, marked), so a missing row the
//! ledger knows is always tampering.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use std::collections::HashMap;
use std::sync::Arc;

use crate::access::{Pattern, Policy};
use crate::audit::{Event, Record, PREV_CHANGE};
use crate::types::Secret32;

use super::audit::stored_mac;
use super::db::{Db, Row, Tx, Val};
use super::state::state_key;
use super::{first, now, Store, StoreError};

/// A user as stored: roles and patterns as the canonical comma lists the
/// caller made (`crate::access` reads them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub roles: String,
    pub patterns: String,
    pub salt: Vec<u8>,
    pub verifier: Vec<u8>,
    /// `active`, `locked` (by an admin) or `removed`.
    pub state: String,
    pub created_at: i64,
}

/// The failed logins of a name (known or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoginRow {
    /// Failures in a row since the last success or unlock.
    pub failures: u32,
    /// Locked until this time (Unix seconds; 0: not locked).
    pub locked_until: i64,
}

/// A policy as stored: its settings as `crate::access::Policy::settings`
/// wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    pub pattern: String,
    pub settings: String,
    /// `set` or `removed`.
    pub state: String,
    pub created_at: i64,
}

/// The three kinds of sealed rows besides assets.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    User,
    Login,
    Policy,
    /// Approvers, quorum rules and requests (`approvals.rs`).
    Approver,
    Quorum,
    Request,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::User => "user:",
            Kind::Login => "login:",
            Kind::Policy => "policy:",
            Kind::Approver => "approver:",
            Kind::Quorum => "quorum:",
            Kind::Request => "request:",
        }
    }

    fn seal_label(self) -> &'static [u8] {
        match self {
            Kind::User => b"p11derive-v1 user state",
            Kind::Login => b"p11derive-v1 login state",
            Kind::Policy => b"p11derive-v1 policy state",
            Kind::Approver => b"p11derive-v1 approver state",
            Kind::Quorum => b"p11derive-v1 quorum state",
            Kind::Request => b"p11derive-v1 request state",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Login => "failed-login count of",
            Kind::Policy => "policy",
            Kind::Approver => "approver",
            Kind::Quorum => "quorum rule",
            Kind::Request => "request",
        }
    }

    fn event(self) -> Event {
        match self {
            Kind::User => Event::User,
            Kind::Login => Event::Lockout,
            Kind::Policy => Event::Policy,
            Kind::Approver => Event::Approver,
            Kind::Quorum => Event::Quorum,
            Kind::Request => Event::Request,
        }
    }
}

/// The ledger's name of a row: `user:NAME`, `login:NAME`, `policy:PATTERN`.
pub(super) fn key(kind: Kind, name: &str) -> String {
    format!("{}{name}", kind.prefix())
}

/// `HMAC(SK, str(label) || str(field)… || str(u64 change_seq) || str(change_mac))`.
fn seal(sk: &Secret32, kind: Kind, fields: &[&[u8]], seq: u64, change: &[u8; 32]) -> [u8; 32] {
    crate::secure::confined(|| {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&sk[..]).expect("any key length");
        let mut put = |b: &[u8]| {
            m.update(&(b.len() as u16).to_be_bytes());
            m.update(b);
        };
        put(kind.seal_label());
        for f in fields {
            put(f);
        }
        put(&seq.to_be_bytes());
        put(change);
        m.finalize().into_bytes().into()
    })
}

/// A row as read: its fields (as sealed), seal, and the MAC of the record
/// it is sealed to.
struct Sealed {
    name: String,
    fields: Vec<Vec<u8>>,
    change_seq: Option<u64>,
    state_mac: Option<Vec<u8>>,
    change_mac: Option<Vec<u8>>,
}

/// The SQL that reads a kind's rows with what they are sealed to.
fn select_sql(kind: Kind) -> &'static str {
    match kind {
        Kind::User => {
            "SELECT t.name, t.roles, t.patterns, t.salt, t.verifier, t.state, t.created_at, \
             t.change_seq, t.state_mac, a.mac FROM users t LEFT JOIN audit a ON a.seq = t.change_seq"
        }
        Kind::Login => {
            "SELECT t.name, t.failures, t.locked_until, t.change_seq, t.state_mac, a.mac \
             FROM logins t LEFT JOIN audit a ON a.seq = t.change_seq"
        }
        Kind::Policy => {
            "SELECT t.pattern, t.settings, t.state, t.created_at, t.change_seq, t.state_mac, a.mac \
             FROM policies t LEFT JOIN audit a ON a.seq = t.change_seq"
        }
        Kind::Approver => {
            "SELECT t.name, t.key_kind, t.public_key, t.groups, t.state, t.created_at, \
             t.change_seq, t.state_mac, a.mac FROM approvers t \
             LEFT JOIN audit a ON a.seq = t.change_seq"
        }
        Kind::Quorum => {
            "SELECT t.name, t.operation, t.pattern, t.approvals, t.grp, t.state, t.created_at, \
             t.change_seq, t.state_mac, a.mac FROM quorums t \
             LEFT JOIN audit a ON a.seq = t.change_seq"
        }
        Kind::Request => {
            "SELECT t.name, t.operation, t.lookup, t.body, t.requested_by, t.created_at, \
             t.expires_at, t.state, t.approvals, t.outcome, t.change_seq, t.state_mac, a.mac \
             FROM requests t LEFT JOIN audit a ON a.seq = t.change_seq"
        }
    }
}

fn name_column(kind: Kind) -> &'static str {
    match kind {
        Kind::Policy => "t.pattern",
        _ => "t.name",
    }
}

/// Reads one row of `kind` (the columns `select_sql` names).
fn read_sealed(kind: Kind, r: &Row) -> Result<Sealed, String> {
    let n = match kind {
        Kind::User => 7,
        Kind::Login => 3,
        Kind::Policy => 4,
        Kind::Approver => 6,
        Kind::Quorum => 7,
        Kind::Request => 10,
    };
    let mut fields = Vec::with_capacity(n);
    for i in 0..n {
        fields.push(match r.0.get(i) {
            Some(Val::Text(t)) => t.as_bytes().to_vec(),
            Some(Val::Blob(b)) => b.clone(),
            Some(Val::Int(v)) => v.to_be_bytes().to_vec(),
            Some(Val::Null) | None => return Err(format!("column {i} is NULL")),
        });
    }
    Ok(Sealed {
        name: r.text(0)?,
        fields,
        change_seq: r.opt_int(n)?.map(|v| v.max(0) as u64),
        state_mac: r.opt_blob(n + 1)?,
        change_mac: r.opt_blob(n + 2)?,
    })
}

pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(super) fn int(b: &[u8]) -> i64 {
    b.try_into().map(i64::from_be_bytes).unwrap_or(0)
}

impl UserRow {
    fn fields(&self) -> Vec<Vec<u8>> {
        vec![
            self.name.as_bytes().to_vec(),
            self.roles.as_bytes().to_vec(),
            self.patterns.as_bytes().to_vec(),
            self.salt.clone(),
            self.verifier.clone(),
            self.state.as_bytes().to_vec(),
            self.created_at.to_be_bytes().to_vec(),
        ]
    }

    pub(super) fn from_fields_pub(f: &[Vec<u8>]) -> UserRow {
        UserRow::from_fields(f)
    }

    fn from_fields(f: &[Vec<u8>]) -> UserRow {
        UserRow {
            name: text(&f[0]),
            roles: text(&f[1]),
            patterns: text(&f[2]),
            salt: f[3].clone(),
            verifier: f[4].clone(),
            state: text(&f[5]),
            created_at: int(&f[6]),
        }
    }
}

impl PolicyRow {
    fn fields(&self) -> Vec<Vec<u8>> {
        vec![
            self.pattern.as_bytes().to_vec(),
            self.settings.as_bytes().to_vec(),
            self.state.as_bytes().to_vec(),
            self.created_at.to_be_bytes().to_vec(),
        ]
    }

    fn from_fields(f: &[Vec<u8>]) -> PolicyRow {
        PolicyRow {
            pattern: text(&f[0]),
            settings: text(&f[1]),
            state: text(&f[2]),
            created_at: int(&f[3]),
        }
    }
}

fn login_fields(name: &str, l: &LoginRow) -> Vec<Vec<u8>> {
    vec![
        name.as_bytes().to_vec(),
        i64::from(l.failures).to_be_bytes().to_vec(),
        l.locked_until.to_be_bytes().to_vec(),
    ]
}

impl Store {
    /// Whether the store holds any user (users mode has been set up).
    /// (After a login, the verified chain decides: a users table emptied
    /// with SQL still has users, whose rows are then refused as missing.)
    pub fn has_users(&self) -> Result<bool, StoreError> {
        if self.authenticated() {
            let mut conn = self.lock();
            self.refresh(&mut **conn)?;
            drop(conn);
            if !self.guard().latest_keys(Kind::User.prefix()).is_empty() {
                return Ok(true);
            }
        }
        let mut conn = self.read_lock();
        let n = self
            .rows(&mut **conn, "SELECT COUNT(*) FROM users", &[], |r| r.int(0))
            .map(first)?;
        Ok(n.unwrap_or(0) > 0)
    }

    /// A user by name, verified (removed users included: see `state`).
    pub fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(self
            .sealed_one(Kind::User, name)?
            .map(|f| UserRow::from_fields(&f)))
    }

    /// Every user, verified; a row the ledger knows and the table lacks is
    /// refused, naming it.
    pub fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        Ok(self
            .sealed_all(Kind::User)?
            .iter()
            .map(|f| UserRow::from_fields(f))
            .collect())
    }

    /// A name's failed logins, verified (none recorded: zero).
    pub fn login_failures(&self, name: &str) -> Result<LoginRow, StoreError> {
        Ok(self
            .sealed_one(Kind::Login, name)?
            .map(|f| login_row(&f))
            .unwrap_or_default())
    }

    /// Every policy, verified (removed ones included: see `state`).
    pub fn policies(&self) -> Result<Vec<PolicyRow>, StoreError> {
        Ok(self
            .sealed_all(Kind::Policy)?
            .iter()
            .map(|f| PolicyRow::from_fields(f))
            .collect())
    }

    /// The policies in force (state `set`), verified and parsed; read
    /// again only when the verified ledger moved.
    pub fn active_policies(&self) -> Result<Arc<Vec<Policy>>, StoreError> {
        if let Some(list) = self.cached_policies() {
            return Ok(list);
        }
        let mut conn = self.lock();
        self.policies_in_tx(&mut **conn)
    }

    /// The cached policies, if the ledger has not moved since they were read.
    fn cached_policies(&self) -> Option<Arc<Vec<Policy>>> {
        let at = self.verified_change();
        match &*self.policy_cache() {
            Some((when, list)) if *when == at => Some(list.clone()),
            _ => None,
        }
    }

    /// The policies in force as `db` (a commit's transaction, its ledger
    /// refreshed) sees them.
    pub(super) fn policies_in_tx(&self, db: &mut dyn Db) -> Result<Arc<Vec<Policy>>, StoreError> {
        self.refresh(db)?;
        self.policies_refreshed(db)
    }

    /// `policies_in_tx` when the caller has just refreshed the ledger in
    /// `db` (a commit's transaction).
    pub(super) fn policies_refreshed(
        &self,
        db: &mut dyn Db,
    ) -> Result<Arc<Vec<Policy>>, StoreError> {
        if let Some(list) = self.cached_policies() {
            return Ok(list);
        }
        let rows: Vec<PolicyRow> = self
            .sealed_all_in(db, Kind::Policy)?
            .iter()
            .map(|f| PolicyRow::from_fields(f))
            .collect();
        let at = self.verified_change();
        let mut list = Vec::new();
        for r in rows.iter().filter(|r| r.state == "set") {
            let pattern = Pattern::parse(&r.pattern).map_err(|m| {
                StoreError::Corrupt(self.path.clone(), format!("policy {:?}: {m}", r.pattern))
            })?;
            list.push(Policy::parse_settings(pattern, &r.settings).map_err(|m| {
                StoreError::Corrupt(self.path.clone(), format!("policy {:?}: {m}", r.pattern))
            })?);
        }
        let list = Arc::new(list);
        *self.policy_cache() = Some((at, list.clone()));
        Ok(list)
    }

    fn policy_cache(&self) -> std::sync::MutexGuard<'_, Option<PolicyCache>> {
        self.policy_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or changes a user (by name) and appends its `user` record
    /// (`base`: the actor and session; `what`: the change, for the
    /// detail), sealing the row to it, in one transaction. Returns the
    /// record's number.
    pub fn put_user(
        &self,
        ak: &Secret32,
        row: &UserRow,
        what: &str,
        base: Record,
    ) -> Result<u64, StoreError> {
        let detail = user_detail(row, what);
        self.put_sealed(ak, user_write(row), detail, base)
    }

    /// `put_user` for an admin's change: refused while a quorum rule
    /// governs user changes (they run as approved requests).
    pub fn put_user_gated(
        &self,
        ak: &Secret32,
        row: &UserRow,
        what: &str,
        base: Record,
    ) -> Result<u64, StoreError> {
        let detail = user_detail(row, what);
        self.put_gated(ak, user_write(row), detail, base, Some(("user", None)))
    }

    /// Records a name's failed logins (a `lockout` record carrying the
    /// base record's `rv` and `what`), sealed, in one transaction.
    pub fn put_login_failures(
        &self,
        ak: &Secret32,
        name: &str,
        row: &LoginRow,
        what: &str,
        base: Record,
    ) -> Result<(), StoreError> {
        let rv = base.rv;
        self.update_login_failures(ak, name, |_| Some((*row, rv, what.to_string())), base)
            .map(drop)
    }

    /// Sets or removes a policy (by pattern), appending its `policy`
    /// record, sealed, in one transaction.
    pub fn put_policy(
        &self,
        ak: &Secret32,
        row: &PolicyRow,
        what: &str,
        base: Record,
    ) -> Result<u64, StoreError> {
        let detail = format!("{what} state={} {}", row.state, row.settings);
        let gate = Some(("policy", Some(row.pattern.as_str())));
        self.put_gated(ak, policy_write(row), detail, base, gate)
    }

    /// Every user, failed-login and policy row whose seal does not hold,
    /// and every one the chain knows that the store lacks (for `audit
    /// verify`), against a ledger built afresh from the chain.
    pub fn subject_faults(&self, ak: &Secret32) -> Result<Vec<String>, StoreError> {
        self.subject_faults_counted(ak).map(|(faults, _)| faults)
    }

    /// [`Store::subject_faults`], and how many rows were judged (those
    /// present and those the chain knows that are missing: `audit verify`'s
    /// drift figure).
    pub fn subject_faults_counted(
        &self,
        ak: &Secret32,
    ) -> Result<(Vec<String>, usize), StoreError> {
        let sk = state_key(ak)?;
        let mut judged = 0;
        let mut fresh = super::state::Guard::default();
        let mut conn = self.lock();
        self.refresh_ledger_into(&mut **conn, ak, &mut fresh)?;
        let latest = fresh.latest_map();
        let mut faults = Vec::new();
        let (mut approvers, mut requests) = (Vec::new(), Vec::new());
        for kind in [
            Kind::User,
            Kind::Login,
            Kind::Policy,
            Kind::Approver,
            Kind::Quorum,
            Kind::Request,
        ] {
            let rows = self.rows(&mut **conn, select_sql(kind), &[], |r| read_sealed(kind, r))?;
            let mut present = std::collections::HashSet::new();
            match kind {
                Kind::Approver => approvers = rows.iter().map(|r| r.fields.clone()).collect(),
                Kind::Request => requests = rows.iter().map(|r| r.fields.clone()).collect(),
                _ => {}
            }
            for row in rows {
                judged += 1;
                present.insert(row.name.clone());
                if let Err(why) = Self::judge(&sk, kind, &row, latest.get(&key(kind, &row.name))) {
                    faults.push(format!("{} {:?}: {why}", kind.what(), row.name));
                }
            }
            for (k, seq) in latest.iter() {
                if let Some(name) = k.strip_prefix(kind.prefix()) {
                    if !present.contains(name) {
                        judged += 1;
                        faults.push(format!(
                            "{} {name:?}: its row is missing, but its latest change is record \
                             {seq} (the row was deleted outside p11derive)",
                            kind.what()
                        ));
                    }
                }
            }
        }
        // Every verdict a request holds verifies, over that request's bytes,
        // under the key of the approver it names (keys are never replaced).
        faults.extend(super::approvals::verdict_faults(&approvers, &requests));
        Ok((faults, judged))
    }

    /// Whether a row's seal holds and it is sealed to its latest change
    /// (`latest`, from a verified ledger); else why not.
    fn judge(sk: &Secret32, kind: Kind, row: &Sealed, latest: Option<&u64>) -> Result<(), String> {
        let (Some(seq), Some(m)) = (row.change_seq, row.state_mac.as_deref()) else {
            return Err(
                "its row carries no seal (it was written outside p11derive, or its seal was \
                 removed)"
                    .into(),
            );
        };
        let Some(c) = row.change_mac.as_deref() else {
            return Err(format!(
                "the audit record of its latest change (record {seq}) is missing from the log"
            ));
        };
        let fields: Vec<&[u8]> = row.fields.iter().map(Vec::as_slice).collect();
        if seal(sk, kind, &fields, seq, &stored_mac(c))[..] != *m {
            return Err(
                "its row does not verify under the state key (it was changed outside \
                 p11derive, or copied from another store)"
                    .into(),
            );
        }
        match latest {
            Some(l) if *l == seq => Ok(()),
            Some(l) => Err(format!(
                "its row is sealed to record {seq}, but its latest change is record {l}: an \
                 older copy of the row was put back"
            )),
            None => Err(format!(
                "its row is sealed to record {seq}, which is not a verified change of it"
            )),
        }
    }

    /// One row of `kind` by name, verified against the ledger (brought up
    /// to date first). `None` when the ledger knows no change of it either.
    pub(super) fn sealed_one(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        self.refused()?;
        let mut conn = self.lock();
        self.sealed_one_in(&mut **conn, kind, name)
    }

    /// `sealed_one` through `db`. Outside a transaction another process
    /// may change the row between the ledger's refresh and its read: a row
    /// sealed to a change newer than the ledger knows is read again after
    /// another refresh, never taken for tampering at once.
    pub(super) fn sealed_one_in(
        &self,
        db: &mut dyn Db,
        kind: Kind,
        name: &str,
    ) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        let sql = format!("{} WHERE {} = ?1", select_sql(kind), name_column(kind));
        let mut attempt = 0;
        loop {
            self.refresh(db)?;
            let row = self
                .rows(db, &sql, &[name.into()], |r| read_sealed(kind, r))
                .map(first)?;
            let known = self.guard().latest_of(&key(kind, name));
            let newer = row
                .as_ref()
                .and_then(|r| r.change_seq)
                .is_some_and(|seq| known.is_none_or(|k| seq > k));
            if !newer || attempt == 2 {
                return self.verify_sealed(kind, name, row);
            }
            attempt += 1;
        }
    }

    /// Every row of `kind`, each verified; any row the ledger knows and
    /// the table lacks is refused.
    pub(super) fn sealed_all(&self, kind: Kind) -> Result<Vec<Vec<Vec<u8>>>, StoreError> {
        let mut conn = self.lock();
        self.sealed_all_in(&mut **conn, kind)
    }

    /// `sealed_all` inside the caller's transaction (or connection).
    pub(super) fn sealed_all_in(
        &self,
        db: &mut dyn Db,
        kind: Kind,
    ) -> Result<Vec<Vec<Vec<u8>>>, StoreError> {
        self.refused()?;
        self.refresh(db)?;
        let sql = format!("{} ORDER BY {}", select_sql(kind), name_column(kind));
        let rows = self.rows(db, &sql, &[], |r| read_sealed(kind, r))?;
        let mut names: std::collections::HashSet<String> = Default::default();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let name = row.name.clone();
            names.insert(name.clone());
            if let Some(f) = self.verify_sealed(kind, &name, Some(row))? {
                out.push(f);
            }
        }
        let known = self.guard().latest_keys(kind.prefix());
        if let Some(gone) = known.into_iter().find(|n| !names.contains(n)) {
            return Err(self.tampered(
                kind,
                &gone,
                "its row is missing, but the audit log holds its latest change (the row was \
                 deleted outside p11derive)",
            ));
        }
        Ok(out)
    }

    fn tampered(&self, kind: Kind, name: &str, why: &str) -> StoreError {
        let e = StoreError::StateTampered(
            self.path.clone(),
            format!(
                "{} {name:?}: {why}; run `p11derive audit verify`",
                kind.what()
            ),
        );
        crate::log::error(&e.to_string());
        e
    }

    /// A row as read, checked when this process holds the state key:
    /// `None` read while the ledger knows a change of it is a deleted row.
    fn verify_sealed(
        &self,
        kind: Kind,
        name: &str,
        row: Option<Sealed>,
    ) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        let Some(sk) = self.guard().state_key() else {
            // Before a login nothing is verified, and nothing decided on it.
            return Ok(row.map(|r| r.fields));
        };
        let latest = self.guard().latest_of(&key(kind, name));
        match row {
            None => match latest {
                Some(seq) => Err(self.tampered(
                    kind,
                    name,
                    &format!(
                        "its row is missing, but its latest change is record {seq} (the row was \
                         deleted outside p11derive)"
                    ),
                )),
                None => Ok(None),
            },
            Some(r) => match Self::judge(&sk, kind, &r, latest.as_ref()) {
                Ok(()) => Ok(Some(r.fields)),
                Err(why) => Err(self.tampered(kind, name, &why)),
            },
        }
    }

    /// Writes a row (`w`), appends its state-change record and seals the
    /// row to it, in one write transaction.
    pub(super) fn put_sealed(
        &self,
        ak: &Secret32,
        w: SealedWrite<'_>,
        detail: String,
        base: Record,
    ) -> Result<u64, StoreError> {
        self.put_gated(ak, w, detail, base, None)
    }

    /// `put_sealed`, refused (`NeedsApproval`, nothing written) when a
    /// quorum rule governs `gate` (an operation and its subject) as the
    /// write transaction sees the rules: such a change runs only as an
    /// approved request's execution.
    pub(super) fn put_gated(
        &self,
        ak: &Secret32,
        w: SealedWrite<'_>,
        detail: String,
        base: Record,
        gate: Option<(&str, Option<&str>)>,
    ) -> Result<u64, StoreError> {
        let sk = match self.guard().state_key() {
            Some(sk) => sk,
            None => Arc::new(state_key(ak)?),
        };
        let mut conn = self.lock();
        let mut tx = Tx::begin(&mut **conn)?;
        // Every state change in the store is known first (the row's latest
        // change must be the one this process verified).
        self.refresh(&mut *tx)?;
        if let Some((op, subject)) = gate {
            let rules = self.rules_in(&mut *tx, op, subject)?;
            if !rules.is_empty() {
                let list: Vec<String> = rules.iter().map(|r| r.describe()).collect();
                return Err(StoreError::NeedsApproval(format!(
                    "{op} change needs approvals now (quorum {}): run the command again to \
                     record a request for approvers",
                    list.join("; ")
                )));
            }
        }
        let head = self.put_sealed_in(&mut *tx, ak, &sk, w, detail, base)?;
        self.commit_at(tx, head)?;
        // The new change is this process's own: the ledger learns it now
        // (it verifies its MAC like any other).
        self.refresh(&mut **conn)?;
        Ok(head.seq)
    }

    /// `put_sealed`'s writes inside the caller's transaction (its ledger
    /// refreshed); the new head, to commit at.
    pub(super) fn put_sealed_in(
        &self,
        tx: &mut dyn Db,
        ak: &Secret32,
        sk: &Secret32,
        w: SealedWrite<'_>,
        detail: String,
        base: Record,
    ) -> Result<crate::audit::Head, StoreError> {
        let SealedWrite {
            kind,
            name,
            fields,
            upsert,
            params,
            seal_sql,
        } = w;
        tx.execute(upsert, &params)?;
        let mut rec = base;
        // A request's approvals are `approval` records; every other change
        // is its kind's event.
        if !(kind == Kind::Request && rec.event == Event::Approval) {
            rec.event = kind.event();
        }
        rec.asset = Some(key(kind, name));
        rec.version = None;
        rec.detail = format!("{detail} {PREV_CHANGE}{}", self.newest_change(&mut *tx)?);
        let head = self.append_in(&mut *tx, ak, std::slice::from_mut(&mut rec))?;
        let f: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        let m = seal(sk, kind, &f, head.seq, &head.mac);
        tx.execute(
            seal_sql,
            &[Val::Int(head.seq as i64), m.to_vec().into(), name.into()],
        )?;
        Ok(head)
    }

    /// Reads a name's failed logins and writes what `next` makes of them,
    /// in one write transaction (so concurrent logins, in any process,
    /// count every failure: none overwrites another's). `next` gets the
    /// verified row and returns the new one with the record's return code
    /// and text, or `None` to write nothing. Returns (row read, row written).
    pub fn update_login_failures(
        &self,
        ak: &Secret32,
        name: &str,
        next: impl FnOnce(LoginRow) -> Option<(LoginRow, u64, String)>,
        base: Record,
    ) -> Result<(LoginRow, Option<LoginRow>), StoreError> {
        let sk = match self.guard().state_key() {
            Some(sk) => sk,
            None => Arc::new(state_key(ak)?),
        };
        self.refused()?;
        let mut conn = self.lock();
        let mut tx = Tx::begin(&mut **conn)?;
        self.refresh(&mut *tx)?;
        let now = self
            .sealed_one_in(&mut *tx, Kind::Login, name)?
            .map(|f| login_row(&f))
            .unwrap_or_default();
        let Some((after, rv, what)) = next(now) else {
            return Ok((now, None));
        };
        let detail = format!(
            "{what} failures={} locked_until={}",
            after.failures, after.locked_until
        );
        let mut rec = base;
        rec.rv = rv;
        let w = SealedWrite {
            kind: Kind::Login,
            name,
            fields: login_fields(name, &after),
            upsert: "INSERT INTO logins (name, failures, locked_until) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name) DO UPDATE SET failures = excluded.failures, \
                     locked_until = excluded.locked_until",
            params: vec![
                name.into(),
                Val::Int(after.failures.into()),
                after.locked_until.into(),
            ],
            seal_sql: "UPDATE logins SET change_seq = ?1, state_mac = ?2 WHERE name = ?3",
        };
        let head = self.put_sealed_in(&mut *tx, ak, &sk, w, detail, rec)?;
        self.commit_at(tx, head)?;
        self.refresh(&mut **conn)?;
        Ok((now, Some(after)))
    }

    /// What a user is granted as the commit of a use sees it (`db`: its
    /// transaction, the ledger refreshed), verified; read again only when
    /// the ledger moved.
    pub(super) fn user_in_tx(
        &self,
        db: &mut dyn Db,
        name: &str,
    ) -> Result<Option<Arc<Grants>>, StoreError> {
        let at = self.verified_change();
        {
            let mut c = self.user_cache.lock().unwrap_or_else(|e| e.into_inner());
            if c.0 != at {
                *c = (at, HashMap::new());
            }
            if let Some(u) = c.1.get(name) {
                return Ok(u.clone());
            }
        }
        let user = self
            .sealed_one_in(db, Kind::User, name)?
            .map(|f| UserRow::from_fields(&f))
            .map(|u| {
                Arc::new(Grants {
                    active: u.state == "active",
                    roles: u
                        .roles
                        .split(',')
                        .filter_map(crate::access::Role::parse)
                        .collect(),
                    patterns: crate::access::parse_patterns(&u.patterns).unwrap_or_default(),
                })
            });
        let mut c = self.user_cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.0 == at {
            c.1.insert(name.to_string(), user.clone());
        }
        Ok(user)
    }
}

/// Users read by commits, as of a verified state change.
pub(super) type UserCache = (
    Option<(u64, [u8; 32])>,
    HashMap<String, Option<Arc<Grants>>>,
);

/// What a user row grants, parsed: whether the user is active, its roles
/// and patterns.
pub(super) struct Grants {
    pub(super) active: bool,
    pub(super) roles: Vec<crate::access::Role>,
    pub(super) patterns: Vec<Pattern>,
}

fn login_row(f: &[Vec<u8>]) -> LoginRow {
    LoginRow {
        failures: int(&f[1]).clamp(0, u32::MAX.into()) as u32,
        locked_until: int(&f[2]),
    }
}

/// One sealed row's write: its kind and name, its fields as sealed, the
/// statement that writes it (and its parameters) and the one that seals it.
pub(super) struct SealedWrite<'a> {
    pub(super) kind: Kind,
    pub(super) name: &'a str,
    pub(super) fields: Vec<Vec<u8>>,
    pub(super) upsert: &'a str,
    pub(super) params: Vec<Val>,
    pub(super) seal_sql: &'a str,
}

/// Parsed policies as of a verified state change.
pub(super) type PolicyCache = (Option<(u64, [u8; 32])>, Arc<Vec<Policy>>);

/// Now, in Unix seconds (for lockouts and policies).
pub fn unix_now() -> i64 {
    now()
}

/// A user change's record detail: the change and the row's roles,
/// patterns and state.
pub(super) fn user_detail(row: &UserRow, what: &str) -> String {
    format!(
        "{what} roles={} patterns={} state={}",
        row.roles, row.patterns, row.state
    )
}

/// The write of a user row.
pub(super) fn user_write(row: &UserRow) -> SealedWrite<'_> {
    SealedWrite {
        kind: Kind::User,
        name: &row.name,
        fields: row.fields(),
        upsert: "INSERT INTO users (name, roles, patterns, salt, verifier, state, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (name) DO UPDATE SET \
         roles = excluded.roles, patterns = excluded.patterns, salt = excluded.salt, \
         verifier = excluded.verifier, state = excluded.state",
        params: vec![
            row.name.as_str().into(),
            row.roles.as_str().into(),
            row.patterns.as_str().into(),
            row.salt.as_slice().into(),
            row.verifier.as_slice().into(),
            row.state.as_str().into(),
            row.created_at.into(),
        ],
        seal_sql: "UPDATE users SET change_seq = ?1, state_mac = ?2 WHERE name = ?3",
    }
}

/// The write of a policy row.
pub(super) fn policy_write(row: &PolicyRow) -> SealedWrite<'_> {
    SealedWrite {
        kind: Kind::Policy,
        name: &row.pattern,
        fields: row.fields(),
        upsert: "INSERT INTO policies (pattern, settings, state, created_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (pattern) DO UPDATE SET \
                 settings = excluded.settings, state = excluded.state",
        params: vec![
            row.pattern.as_str().into(),
            row.settings.as_str().into(),
            row.state.as_str().into(),
            row.created_at.into(),
        ],
        seal_sql: "UPDATE policies SET change_seq = ?1, state_mac = ?2 WHERE pattern = ?3",
    }
}
