//! Requests' executions and approved signatures (k-of-n approvals): a request runs the operation its bytes state, in one transaction with its records, when its approvals meet every rule and the invariants still hold; a signature of a governed asset uses an approved request of exactly it, or proposes one.
use sha2::{Digest, Sha256};

use crate::approvals::quorum::{self, Approver, Given, Rule};
use crate::approvals::request::RequestDoc;
use crate::audit::{Event, Record};
use crate::types::Secret32;

use super::approvals::{
    approved_digest_lookup, approver_detail, approver_write, policy_write, quorum_detail,
    quorum_write, request_detail, request_write, sign_lookup, unhex, user_write, ApproverRow,
    Execute, RequestRow, SignApproval,
};
use super::db::{Db, Val};
use super::users::{Kind, SealedWrite};
use super::{hex, Store, StoreError, UserRow};

impl Store {
    /// Executes a request whose approvals meet every rule in force, in one
    /// transaction: the operation `op` (which must be the one the request
    /// states: the caller built it from the request's bytes), its records,
    /// and the request marked executed. Refused, changing nothing, when the
    /// request is not pending, expired, or short of approvals (the message
    /// says which rule lacks what).
    pub fn execute_request(
        &self,
        ak: &Secret32,
        id: &str,
        op: Execute,
        now: i64,
        base: Record,
    ) -> Result<RequestRow, StoreError> {
        self.on_request(ak, id, now, |tx, sk, row| {
            self.execute_in(tx, ak, sk, row, op, base)
        })
    }

    /// `execute_request`'s work inside its transaction.
    fn execute_in(
        &self,
        tx: &mut dyn Db,
        ak: &Secret32,
        sk: &Secret32,
        mut row: RequestRow,
        op: Execute,
        base: Record,
    ) -> Result<(RequestRow, String, Record), StoreError> {
        let id = row.id.clone();
        if row.operation == "sign" {
            return Err(StoreError::Refused(format!(
                "request {id} approves a signature: it is used by the signature itself \
                 (C_Sign), not executed"
            )));
        }
        let unmet = self.unmet_in(tx, &row)?;
        if !unmet.is_empty() {
            return Err(StoreError::Refused(format!(
                "request {id} lacks approvals: {}",
                unmet.join("; ")
            )));
        }
        let doc = row.doc().map_err(|m| self.bad_request(&id, &m))?;
        // The operation run is the one the approvers signed: same kind,
        // same subject, the subject unchanged since the request was made.
        self.check_states(tx, &doc, &op)?;
        // What must hold after any change still holds after this one.
        self.check_invariants(tx, &op)?;
        let tag = format!("request={id}");
        let mut base_op = base.clone();
        base_op.detail = String::new();
        let outcome = match op {
            Execute::Transition { name, t, next } => {
                let next = next.as_ref().map(|(n, pk)| (*n, pk.as_deref()));
                let (after, _) = self.transition_in(tx, &name, t, next, ak, base_op, Some(&tag))?;
                format!(
                    "{} done: asset {} is {} at version {}",
                    t.name(),
                    name.as_str(),
                    after.state.name(),
                    after.current
                )
            }
            Execute::User {
                row: user,
                what,
                clear_failures,
            } => {
                let detail = format!("{} {tag}", super::users::user_detail(&user, &what));
                self.put_sealed_in(tx, ak, sk, user_write(&user), detail, base_op.clone())?;
                if clear_failures {
                    self.clear_failures_in(tx, ak, sk, &user.name, &tag, base_op)?;
                }
                format!("{what} done")
            }
            Execute::Policy { row: p, what } => {
                let detail = format!("{what} state={} {} {tag}", p.state, p.settings);
                self.put_sealed_in(tx, ak, sk, policy_write(&p), detail, base_op)?;
                format!("{what} done")
            }
            Execute::Approver { row: a, what } => {
                let detail = format!("{} {tag}", approver_detail(&a, &what));
                self.put_sealed_in(tx, ak, sk, approver_write(&a), detail, base_op)?;
                format!("{what} done")
            }
            Execute::Quorum { row: q, what } => {
                let detail = format!("{} {tag}", quorum_detail(&q, &what));
                self.put_sealed_in(tx, ak, sk, quorum_write(&q), detail, base_op)?;
                format!("{what} done")
            }
        };
        row.state = "executed".into();
        row.outcome = outcome;
        let mut rec = base;
        rec.event = Event::Request;
        Ok((row, "request executed".into(), rec))
    }

    /// Refuses an `op` other than the one `doc` states, or whose subject
    /// changed since the request was made (its `basis`: the subject's
    /// latest change then).
    fn check_states(
        &self,
        db: &mut dyn Db,
        doc: &RequestDoc,
        op: &Execute,
    ) -> Result<(), StoreError> {
        let (kind, subject, name) = match op {
            Execute::Transition { name, t, .. } => {
                (t.operation(), "asset", name.as_str().to_string())
            }
            Execute::User { row, .. } => ("user", "user", row.name.clone()),
            Execute::Policy { row, .. } => ("policy", "pattern", row.pattern.clone()),
            Execute::Approver { row, .. } => ("approver", "approver", row.name.clone()),
            Execute::Quorum { row, .. } => ("quorum", "rule", row.name.clone()),
        };
        let stated = if kind == "quorum" {
            match (doc.param("rule-operation"), doc.param("pattern")) {
                (Some(o), Some(p)) => Some(format!("{o}:{p}")),
                _ => None,
            }
        } else {
            doc.param(subject).map(str::to_string)
        };
        if doc.operation != kind || stated.as_deref() != Some(name.as_str()) {
            return Err(StoreError::Refused(format!(
                "request {} states {} of {:?}, not {kind} of {name:?}: nothing was run",
                doc.id,
                doc.operation,
                stated.unwrap_or_default()
            )));
        }
        let basis: u64 = doc
            .param("basis")
            .and_then(|b| b.parse().ok())
            .ok_or_else(|| self.bad_request(&doc.id, "its basis is missing or not a number"))?;
        match op {
            Execute::Transition { name, .. } => self.check_basis(db, None, name.as_str(), basis),
            Execute::User { row, .. } => self.check_basis(db, Some(Kind::User), &row.name, basis),
            Execute::Policy { row, .. } => {
                self.check_basis(db, Some(Kind::Policy), &row.pattern, basis)
            }
            Execute::Approver { row, .. } => {
                self.check_basis(db, Some(Kind::Approver), &row.name, basis)
            }
            Execute::Quorum { row, .. } => {
                self.check_basis(db, Some(Kind::Quorum), &row.name, basis)
            }
        }
    }

    /// Refuses a change after which an invariant the direct commands keep
    /// would no longer hold: a key registered to two active approvers, a
    /// quorum rule (or a policy's approvals) the active approvers cannot
    /// meet, no active admin. Judged on the state as verified now with the
    /// change applied in memory (nothing is read back after a write).
    fn check_invariants(&self, db: &mut dyn Db, op: &Execute) -> Result<(), StoreError> {
        let refused = |why: String| Err(StoreError::Refused(format!("{why}: nothing was run")));
        let mut approvers: Vec<ApproverRow> = self
            .sealed_all_in(db, Kind::Approver)?
            .iter()
            .map(|f| ApproverRow::from_fields(f))
            .collect();
        let mut rules: Vec<Rule> = self.active_rules_in(db)?.as_ref().clone();
        let mut users: Vec<UserRow> = self
            .sealed_all_in(db, Kind::User)?
            .iter()
            .map(|f| UserRow::from_fields_pub(f))
            .collect();
        match op {
            Execute::Approver { row, .. } => {
                approvers.retain(|a| a.name != row.name);
                approvers.push(row.clone());
            }
            Execute::Quorum { row, .. } => {
                rules.retain(|r| r.key() != row.name);
                if row.state == "set" {
                    rules.push(row.rule().map_err(|m| self.bad_request("-", &m))?);
                }
            }
            Execute::User { row, .. } => {
                users.retain(|u| u.name != row.name);
                users.push(row.clone());
            }
            _ => {}
        }
        let active: Vec<&ApproverRow> = approvers.iter().filter(|a| a.state == "active").collect();
        for (i, a) in active.iter().enumerate() {
            if let Some(b) = active[i + 1..]
                .iter()
                .find(|b| b.public_key == a.public_key)
            {
                return refused(format!(
                    "approvers {:?} and {:?} would hold the same key: one key, one approver",
                    a.name, b.name
                ));
            }
        }
        let counted: Vec<Approver> = approvers.iter().map(ApproverRow::counted).collect();
        let mut all = rules;
        let policies = self.policies_in_tx(db)?;
        all.extend(policies.iter().filter(|p| p.approvals > 0).map(|p| Rule {
            operation: "sign".into(),
            pattern: p.pattern.clone(),
            approvals: p.approvals,
            group: String::new(),
        }));
        if let Some(r) = all.iter().find(|r| !quorum::satisfiable(r, &counted)) {
            return refused(format!(
                "afterwards quorum {} could never be met by the active approvers",
                r.describe()
            ));
        }
        let admin = |u: &UserRow| {
            u.state == "active"
                && u.roles
                    .split(',')
                    .any(|r| crate::access::Role::parse(r) == Some(crate::access::Role::Admin))
        };
        if !users.is_empty() && !users.iter().any(admin) {
            return refused("afterwards no active admin would be left".into());
        }
        Ok(())
    }

    /// Refuses an execution whose subject changed since the request was
    /// made (`kind`: a sealed row's kind; `None`: an asset).
    fn check_basis(
        &self,
        db: &mut dyn Db,
        kind: Option<Kind>,
        name: &str,
        basis: u64,
    ) -> Result<(), StoreError> {
        let key = match kind {
            Some(kind) => {
                // Verified (refused when tampered with) before it is compared.
                self.sealed_one_in(db, kind, name)?;
                super::users::key(kind, name)
            }
            None => {
                self.refresh(db)?;
                name.to_string()
            }
        };
        let now = self.guard().latest_of(&key).unwrap_or(0);
        if now != basis {
            let what = if basis == 0 {
                format!("{name:?} was created since the request was made (record {now})")
            } else {
                format!(
                    "{name:?} changed since the request was made (its latest change is record \
                     {now}, the request was made when it was record {basis})"
                )
            };
            return Err(StoreError::Conflict(format!(
                "{what}: cancel the request and make a new one"
            )));
        }
        Ok(())
    }

    /// Consumes the approvals of a signature (`record`, a sign use of
    /// `asset` its batch allows so far) inside the commit's transaction:
    /// finds a pending, unexpired request of exactly that asset, mechanism
    /// and digest whose approvals meet `rules`, other than `taken` (used by
    /// this batch already). `Ok(Err(why))` when there is none.
    pub(super) fn approved_signature(
        &self,
        db: &mut dyn Db,
        record: &Record,
        asset: &str,
        rules: &[Rule],
        taken: &[String],
    ) -> Result<SignApproval, StoreError> {
        let (Some(mech), Some(input)) = (record.mechanism, record.input_sha256) else {
            return Ok(Err((
                "rule=approvals the signature has no digest to approve".into(),
                true,
            )));
        };
        let lookup = sign_lookup(asset, mech, &input);
        let ids = self.rows(
            db,
            "SELECT name FROM requests WHERE lookup = ?1 AND state = 'pending' ORDER BY name",
            &[lookup.as_str().into()],
            |r| r.text(0),
        )?;
        let now = super::unix_now();
        let rule_refs: Vec<&Rule> = rules.iter().collect();
        let mut why = Vec::new();
        // Whether a request for it is pending and unexpired (none is
        // proposed then).
        let mut pending = false;
        let mut why_tampered = Vec::new();
        for id in ids.iter().filter(|id| !taken.contains(id)) {
            let f = match self.sealed_one_in(db, Kind::Request, id) {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                // A request row that does not verify counts for nothing
                // (and fails no other signature of the batch).
                Err(StoreError::StateTampered(_, why)) => {
                    why_tampered.push(why);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let row = RequestRow::from_fields(&f);
            let Ok(doc) = row.doc() else { continue };
            // The bytes approvers signed must state this very signature.
            let states = doc.operation == "sign"
                && doc.param("asset") == Some(asset)
                && doc.param("version").and_then(|v| v.parse().ok()) == record.version
                && doc
                    .param("digest")
                    .and_then(unhex)
                    .is_some_and(|d| approved_digest_lookup(asset, mech, &d) == lookup)
                && doc.param("mechanism").and_then(crate::error::mech_by_name) == Some(mech);
            if !states || row.state != "pending" {
                continue;
            }
            if now >= row.expires_at {
                why.push(format!("request {id} expired"));
                continue;
            }
            pending = true;
            let approvers = self.counted_approvers(db)?;
            let given: Vec<Given> = row.verdicts().into_iter().map(|v| v.given).collect();
            let unmet = quorum::unmet(&rule_refs, &approvers, &given, &row.requested_by);
            if unmet.is_empty() {
                // The approvers whose approvals counted, for the record.
                let by = quorum::counted(&approvers, &given, &row.requested_by)
                    .iter()
                    .map(|a| a.name.clone())
                    .collect();
                return Ok(Ok((row, by)));
            }
            why.push(format!(
                "request {id} lacks approvals: {}",
                unmet.join("; ")
            ));
        }
        let rules_text: Vec<String> = rules.iter().map(Rule::describe).collect();
        why.extend(why_tampered);
        // A tampered row does not get a fresh proposal either.
        pending |= !why.is_empty() && why.iter().any(|w| !w.contains("expired"));
        Ok(Err((
            if why.is_empty() {
                format!(
                    "rule=approvals asset {asset:?} signs only digests approved by quorum ({}); \
                     no request approves this one (sha256 of the input {})",
                    rules_text.join("; "),
                    hex(&input)
                )
            } else {
                format!(
                    "rule=approvals asset {asset:?} signs only digests approved by quorum ({}): \
                     {}",
                    rules_text.join("; "),
                    why.join("; ")
                )
            },
            pending,
        )))
    }

    /// A new pending request proposing a refused signature (recorded by
    /// `propose_in` in the same transaction): its id is a hash of the
    /// signature's lookup, the time, the process and a counter (unique; the
    /// commit has no HSM random bytes at hand), its lifetime `[approvals]
    /// expires` as the provider was given it.
    pub(super) fn proposal(
        &self,
        db: &mut dyn Db,
        record: &Record,
        asset: &str,
        mech: u64,
        digest: &[u8],
        lookup: String,
    ) -> Result<RequestRow, StoreError> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let store = self
            .store_id_in(db)?
            .ok_or_else(|| self.bad_request("-", "the store has no first record"))?;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut h = Sha256::new();
        h.update(b"p11derive-v1 request id");
        h.update(lookup.as_bytes());
        h.update(now_ns.to_be_bytes());
        h.update(std::process::id().to_be_bytes());
        h.update(n.to_be_bytes());
        let id = hex(&h.finalize()[..16]);
        let now = super::unix_now();
        let doc = RequestDoc {
            store: hex(&store),
            id: id.clone(),
            operation: "sign".into(),
            params: vec![
                ("asset".into(), asset.to_string()),
                ("version".into(), record.version.unwrap_or(0).to_string()),
                ("mechanism".into(), crate::error::mech_name(mech)),
                ("digest".into(), hex(digest)),
            ],
            requested_by: record.actor.clone().unwrap_or_else(|| "-".into()),
            requested_at: now,
            expires_at: now + self.request_lifetime(),
        };
        Ok(RequestRow {
            id,
            operation: "sign".into(),
            lookup,
            body: doc.canonical(),
            requested_by: doc.requested_by.clone(),
            created_at: now,
            expires_at: doc.expires_at,
            state: "pending".into(),
            approvals: String::new(),
            outcome: String::new(),
        })
    }

    /// Records a proposed signature's request inside the commit's
    /// transaction.
    pub(super) fn propose_in(
        &self,
        tx: &mut dyn Db,
        ak: &Secret32,
        row: RequestRow,
        base: Record,
    ) -> Result<(), StoreError> {
        let sk = self.sk(ak)?;
        let detail = request_detail(
            &row,
            "request new (a signature refused for want of approvals)",
        );
        self.put_sealed_in(tx, ak, &sk, request_write(&row), detail, base)?;
        Ok(())
    }

    /// Approved signatures' requests this process's commits used so far
    /// (the provider moves the anchor before releasing such a signature).
    pub fn approvals_spent(&self) -> u64 {
        self.approvals_spent
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long a request the provider records collects approvals (seconds).
    pub fn request_lifetime(&self) -> i64 {
        self.request_lifetime
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets [`Store::request_lifetime`] (`[approvals] expires`).
    pub fn set_request_lifetime(&self, secs: i64) {
        self.request_lifetime
            .store(secs, std::sync::atomic::Ordering::Relaxed);
    }

    /// Marks an approved signature's request executed inside the commit's
    /// transaction (`note`: what the signature's record says).
    pub(super) fn consume_in(
        &self,
        tx: &mut dyn Db,
        ak: &Secret32,
        mut row: RequestRow,
        base: Record,
    ) -> Result<(), StoreError> {
        let sk = self.sk(ak)?;
        row.state = "executed".into();
        row.outcome = "its signature was released".into();
        let mut rec = base;
        rec.event = Event::Request;
        let detail = request_detail(&row, "request executed (approvals used by a signature)");
        self.put_sealed_in(tx, ak, &sk, request_write(&row), detail, rec)?;
        Ok(())
    }

    /// A name's failed logins cleared inside `tx` (a user unlocked by a
    /// request's execution).
    fn clear_failures_in(
        &self,
        tx: &mut dyn Db,
        ak: &Secret32,
        sk: &Secret32,
        name: &str,
        tag: &str,
        base: Record,
    ) -> Result<(), StoreError> {
        let w = SealedWrite {
            kind: Kind::Login,
            name,
            fields: vec![
                name.as_bytes().to_vec(),
                0i64.to_be_bytes().to_vec(),
                0i64.to_be_bytes().to_vec(),
            ],
            upsert: "INSERT INTO logins (name, failures, locked_until) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name) DO UPDATE SET failures = excluded.failures, \
                     locked_until = excluded.locked_until",
            params: vec![name.into(), Val::Int(0), Val::Int(0)],
            seal_sql: "UPDATE logins SET change_seq = ?1, state_mac = ?2 WHERE name = ?3",
        };
        let detail = format!("user unlock failures=0 locked_until=0 {tag}");
        self.put_sealed_in(tx, ak, sk, w, detail, base)?;
        Ok(())
    }
}
