//! Approvers, quorum rules and requests (k-of-n approvals, design §6.5): rows sealed like users (`users.rs`), a request's approvals recorded and counted in the transaction that executes it, and an approved signature's approvals consumed in the transaction that commits the signature.
//!
//! A request row carries its canonical bytes (`crate::approvals::request`)
//! and its verdicts, one line each: `VERDICT APPROVER FINGERPRINT TIME
//! SIGNATURE` (the signature in hex, over the verdict bytes). Each verdict
//! is verified against the approver's registered key in the transaction
//! that records it; at execution the approvals are counted again against
//! the approvers and rules in force then (an approver removed, or whose key
//! was replaced, no longer counts).

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::access::Pattern;
use crate::approvals::keys::ApproverKey;
use crate::approvals::quorum::{self, parse_groups, Approver, Given, Rule};
use crate::approvals::request::{RequestDoc, Verdict};
use crate::asset::Transition;
use crate::audit::{Event, Record};
use crate::types::AssetId;
use crate::types::Secret32;

use super::db::{Db, Tx, Val};
use super::state::state_key;
use super::users::{int, text, Kind, SealedWrite};
use super::{hex, Store, StoreError, UserRow};

/// An approver as stored: a name, a public key (SPKI DER) and groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApproverRow {
    pub name: String,
    /// `ed25519` or `p256`.
    pub key_kind: String,
    /// SubjectPublicKeyInfo, DER.
    pub public_key: Vec<u8>,
    /// Comma list, sorted.
    pub groups: String,
    /// `active` or `removed`.
    pub state: String,
    pub created_at: i64,
}

impl ApproverRow {
    fn fields(&self) -> Vec<Vec<u8>> {
        vec![
            self.name.as_bytes().to_vec(),
            self.key_kind.as_bytes().to_vec(),
            self.public_key.clone(),
            self.groups.as_bytes().to_vec(),
            self.state.as_bytes().to_vec(),
            self.created_at.to_be_bytes().to_vec(),
        ]
    }

    pub(super) fn from_fields(f: &[Vec<u8>]) -> ApproverRow {
        ApproverRow {
            name: text(&f[0]),
            key_kind: text(&f[1]),
            public_key: f[2].clone(),
            groups: text(&f[3]),
            state: text(&f[4]),
            created_at: int(&f[5]),
        }
    }

    /// SHA-256 of the key's DER, hex: names the key in verdicts.
    pub fn fingerprint(&self) -> String {
        hex(&Sha256::digest(&self.public_key))
    }

    /// The approver as a count needs it.
    pub fn counted(&self) -> Approver {
        Approver {
            name: self.name.clone(),
            groups: parse_groups(&self.groups).unwrap_or_default(),
            active: self.state == "active",
            fingerprint: self.fingerprint(),
        }
    }
}

/// A quorum rule as stored (`name` is `OPERATION:PATTERN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumRow {
    pub name: String,
    pub operation: String,
    pub pattern: String,
    pub approvals: u32,
    /// The approver group whose members count (empty: any approver).
    pub group: String,
    /// `set` or `removed`.
    pub state: String,
    pub created_at: i64,
}

impl QuorumRow {
    fn fields(&self) -> Vec<Vec<u8>> {
        vec![
            self.name.as_bytes().to_vec(),
            self.operation.as_bytes().to_vec(),
            self.pattern.as_bytes().to_vec(),
            i64::from(self.approvals).to_be_bytes().to_vec(),
            self.group.as_bytes().to_vec(),
            self.state.as_bytes().to_vec(),
            self.created_at.to_be_bytes().to_vec(),
        ]
    }

    pub(super) fn from_fields(f: &[Vec<u8>]) -> QuorumRow {
        QuorumRow {
            name: text(&f[0]),
            operation: text(&f[1]),
            pattern: text(&f[2]),
            approvals: int(&f[3]).clamp(0, u32::MAX.into()) as u32,
            group: text(&f[4]),
            state: text(&f[5]),
            created_at: int(&f[6]),
        }
    }

    /// The rule, parsed.
    pub fn rule(&self) -> Result<Rule, String> {
        Rule::new(
            &self.operation,
            Pattern::parse(&self.pattern)?,
            self.approvals,
            &self.group,
        )
    }
}

/// A request as stored: its canonical bytes and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    /// The request's id (32 hex digits).
    pub id: String,
    pub operation: String,
    /// What finds it: for a signature, [`sign_lookup`]; else the asset or
    /// subject, or empty.
    pub lookup: String,
    /// The canonical bytes.
    pub body: Vec<u8>,
    pub requested_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// `pending`, `rejected`, `executed` or `cancelled` (an expired request
    /// stays `pending`: see [`RequestRow::status`]).
    pub state: String,
    /// The verdicts, one line each (see the module's documentation).
    pub approvals: String,
    /// What its execution did, or why it was rejected or cancelled.
    pub outcome: String,
}

/// One verdict as recorded on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictLine {
    pub given: Given,
    pub time: i64,
    pub signature: Vec<u8>,
}

impl RequestRow {
    fn fields(&self) -> Vec<Vec<u8>> {
        vec![
            self.id.as_bytes().to_vec(),
            self.operation.as_bytes().to_vec(),
            self.lookup.as_bytes().to_vec(),
            self.body.clone(),
            self.requested_by.as_bytes().to_vec(),
            self.created_at.to_be_bytes().to_vec(),
            self.expires_at.to_be_bytes().to_vec(),
            self.state.as_bytes().to_vec(),
            self.approvals.as_bytes().to_vec(),
            self.outcome.as_bytes().to_vec(),
        ]
    }

    pub(super) fn from_fields(f: &[Vec<u8>]) -> RequestRow {
        RequestRow {
            id: text(&f[0]),
            operation: text(&f[1]),
            lookup: text(&f[2]),
            body: f[3].clone(),
            requested_by: text(&f[4]),
            created_at: int(&f[5]),
            expires_at: int(&f[6]),
            state: text(&f[7]),
            approvals: text(&f[8]),
            outcome: text(&f[9]),
        }
    }

    /// The canonical bytes, parsed.
    pub fn doc(&self) -> Result<RequestDoc, String> {
        RequestDoc::parse(&self.body)
    }

    /// The verdicts recorded, in order.
    pub fn verdicts(&self) -> Vec<VerdictLine> {
        self.approvals
            .lines()
            .filter_map(|l| {
                let mut w = l.split(' ');
                let verdict = Verdict::parse(w.next()?)?;
                let approver = w.next()?.to_string();
                let fingerprint = w.next()?.to_string();
                let time = w.next()?.parse().ok()?;
                let signature = unhex(w.next()?)?;
                Some(VerdictLine {
                    given: Given {
                        approver,
                        fingerprint,
                        verdict,
                    },
                    time,
                    signature,
                })
            })
            .collect()
    }

    /// `pending`, `expired` (pending past its expiry), `rejected`,
    /// `executed` or `cancelled`, at `now`.
    pub fn status(&self, now: i64) -> &str {
        if self.state == "pending" && now >= self.expires_at {
            "expired"
        } else {
            &self.state
        }
    }
}

pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The lookup of a signature's approvals: the asset, the mechanism and the
/// SHA-256 of the data the signature is computed over (what its audit
/// record holds): for `CKM_ECDSA` and recoverable ECDSA
/// ([`crate::mechanisms::signs_caller_digest`]) the SHA-256 of the digest approved, for
/// every other mechanism the digest approved itself (the SHA-256 of the
/// message).
pub fn sign_lookup(asset: &str, mechanism: u64, input_sha256: &[u8]) -> String {
    format!("sign:{asset}:{mechanism:#x}:{}", hex(input_sha256))
}

/// The lookup of an approved signature of `digest` (see [`sign_lookup`]).
pub fn approved_digest_lookup(asset: &str, mechanism: u64, digest: &[u8]) -> String {
    if crate::mechanisms::signs_caller_digest(mechanism) {
        sign_lookup(asset, mechanism, &Sha256::digest(digest))
    } else {
        sign_lookup(asset, mechanism, digest)
    }
}

/// An operation a request stands for, ready to run in the transaction that
/// executes the request (the caller derived what needs the HSM first).
pub enum Execute {
    /// A lifecycle transition (`next`: a rotation's new version and its
    /// public key or check value).
    Transition {
        name: AssetId,
        t: Transition,
        next: Option<(u32, Option<Vec<u8>>)>,
    },
    /// A user's row written as the request states it (refused when the
    /// user changed since the request was made: its `basis`).
    User {
        row: UserRow,
        what: String,
        clear_failures: bool,
    },
    Policy {
        row: super::PolicyRow,
        what: String,
    },
    Approver {
        row: ApproverRow,
        what: String,
    },
    Quorum {
        row: QuorumRow,
        what: String,
    },
}

impl Store {
    /// Every approver, verified (removed ones included: see `state`).
    pub fn approvers(&self) -> Result<Vec<ApproverRow>, StoreError> {
        Ok(self
            .sealed_all(Kind::Approver)?
            .iter()
            .map(|f| ApproverRow::from_fields(f))
            .collect())
    }

    /// An approver by name, verified.
    pub fn approver(&self, name: &str) -> Result<Option<ApproverRow>, StoreError> {
        Ok(self
            .sealed_one(Kind::Approver, name)?
            .map(|f| ApproverRow::from_fields(&f)))
    }

    /// Every quorum rule, verified (removed ones included).
    pub fn quorums(&self) -> Result<Vec<QuorumRow>, StoreError> {
        Ok(self
            .sealed_all(Kind::Quorum)?
            .iter()
            .map(|f| QuorumRow::from_fields(f))
            .collect())
    }

    /// Every request, verified, newest first.
    pub fn requests(&self) -> Result<Vec<RequestRow>, StoreError> {
        let mut all: Vec<RequestRow> = self
            .sealed_all(Kind::Request)?
            .iter()
            .map(|f| RequestRow::from_fields(f))
            .collect();
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    /// A request by id, verified.
    pub fn request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        Ok(self
            .sealed_one(Kind::Request, id)?
            .map(|f| RequestRow::from_fields(&f)))
    }

    /// The latest change of a sealed row (0: none), for a request's basis.
    pub fn change_of(&self, kind_prefix: &str, name: &str) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        self.refresh(&mut **conn)?;
        drop(conn);
        Ok(self
            .guard()
            .latest_of(&format!("{kind_prefix}{name}"))
            .unwrap_or(0))
    }

    /// The rules that govern `operation` on `subject` now (for `sign`, the
    /// policies' `approvals` too), verified.
    pub fn rules_for(
        &self,
        operation: &str,
        subject: Option<&str>,
    ) -> Result<Vec<Rule>, StoreError> {
        let mut conn = self.lock();
        self.rules_in(&mut **conn, operation, subject)
    }

    pub(super) fn rules_in(
        &self,
        db: &mut dyn Db,
        operation: &str,
        subject: Option<&str>,
    ) -> Result<Vec<Rule>, StoreError> {
        let mut out: Vec<Rule> = self
            .active_rules_in(db)?
            .iter()
            .filter(|r| r.applies(operation, subject))
            .cloned()
            .collect();
        if operation == "sign" {
            if let Some(asset) = subject {
                for p in self.policies_refreshed(db)?.iter() {
                    if p.approvals > 0 && p.pattern.matches(asset) {
                        out.push(Rule {
                            operation: "sign".into(),
                            pattern: p.pattern.clone(),
                            approvals: p.approvals,
                            group: String::new(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// The quorum rules in force (state `set`), verified and parsed, as
    /// `db` sees them; read again only when the verified ledger moved.
    pub(super) fn active_rules_in(&self, db: &mut dyn Db) -> Result<Arc<Vec<Rule>>, StoreError> {
        self.refresh(db)?;
        self.active_rules_refreshed(db)
    }

    /// `active_rules_in` when the caller has just refreshed the ledger in
    /// `db` (a commit's transaction): no second refresh on the warm path.
    pub(super) fn active_rules_refreshed(
        &self,
        db: &mut dyn Db,
    ) -> Result<Arc<Vec<Rule>>, StoreError> {
        let at = self.verified_change();
        if let Some((when, list)) = &*self.quorum_cache() {
            if *when == at {
                return Ok(list.clone());
            }
        }
        let mut list = Vec::new();
        for f in self.sealed_all_in(db, Kind::Quorum)? {
            let row = QuorumRow::from_fields(&f);
            if row.state != "set" {
                continue;
            }
            list.push(row.rule().map_err(|m| {
                StoreError::Corrupt(
                    self.path.clone(),
                    format!("quorum rule {:?}: {m}", row.name),
                )
            })?);
        }
        let list = Arc::new(list);
        *self.quorum_cache() = Some((at, list.clone()));
        Ok(list)
    }

    /// The quorum rules in force (see `active_rules_in`).
    /// Like `active_policies`, the cached list is taken without a refresh
    /// while the ledger has not moved in this process (what a lane commit
    /// is checked against), else read afresh.
    pub(super) fn active_rules(&self) -> Result<Arc<Vec<Rule>>, StoreError> {
        let at = self.verified_change();
        if let Some((when, list)) = &*self.quorum_cache() {
            if *when == at {
                return Ok(list.clone());
            }
        }
        let mut conn = self.lock();
        self.active_rules_in(&mut **conn)
    }

    fn quorum_cache(&self) -> std::sync::MutexGuard<'_, Option<QuorumCache>> {
        self.quorum_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The approvers as a count needs them, read in `db`.
    pub(super) fn counted_approvers(&self, db: &mut dyn Db) -> Result<Vec<Approver>, StoreError> {
        Ok(self
            .sealed_all_in(db, Kind::Approver)?
            .iter()
            .map(|f| ApproverRow::from_fields(f).counted())
            .collect())
    }

    /// What `row` still lacks under the rules and approvers in force now
    /// (empty: it may run).
    pub fn unmet(&self, row: &RequestRow) -> Result<Vec<String>, StoreError> {
        let mut conn = self.lock();
        self.unmet_in(&mut **conn, row)
    }

    pub(super) fn unmet_in(
        &self,
        db: &mut dyn Db,
        row: &RequestRow,
    ) -> Result<Vec<String>, StoreError> {
        let doc = row.doc().map_err(|m| self.bad_request(&row.id, &m))?;
        let subject = subject_of(&doc);
        let rules = self.rules_in(db, &doc.operation, subject.as_deref())?;
        let approvers = self.counted_approvers(db)?;
        let given: Vec<Given> = row.verdicts().into_iter().map(|v| v.given).collect();
        let rules: Vec<&Rule> = rules.iter().collect();
        Ok(quorum::unmet(&rules, &approvers, &given, &row.requested_by))
    }

    pub(super) fn bad_request(&self, id: &str, why: &str) -> StoreError {
        StoreError::Corrupt(self.path.clone(), format!("request {id}: {why}"))
    }

    /// Registers, changes or removes an approver, appending its `approver`
    /// record, sealed, in one transaction.
    pub fn put_approver(
        &self,
        ak: &Secret32,
        row: &ApproverRow,
        what: &str,
        base: Record,
    ) -> Result<u64, StoreError> {
        let detail = approver_detail(row, what);
        self.put_gated(
            ak,
            approver_write(row),
            detail,
            base,
            Some(("approver", None)),
        )
    }

    /// Sets or removes a quorum rule, appending its `quorum` record, sealed.
    pub fn put_quorum(
        &self,
        ak: &Secret32,
        row: &QuorumRow,
        what: &str,
        base: Record,
    ) -> Result<u64, StoreError> {
        let detail = quorum_detail(row, what);
        self.put_gated(ak, quorum_write(row), detail, base, Some(("quorum", None)))
    }

    /// Records a new request (state `pending`), appending its `request`
    /// record, sealed.
    pub fn create_request(
        &self,
        ak: &Secret32,
        row: &RequestRow,
        base: Record,
    ) -> Result<u64, StoreError> {
        let detail = request_detail(row, "request new");
        self.put_sealed(ak, request_write(row), detail, base)
    }

    /// Records an approver's verdict on a pending, unexpired request, in
    /// one transaction: the approver must be registered and active, its
    /// signature must verify over the request's verdict bytes under its
    /// registered key, and it may give one verdict per request. A
    /// rejection ends the request. Returns the request as written.
    #[allow(clippy::too_many_arguments)]
    pub fn add_verdict(
        &self,
        ak: &Secret32,
        id: &str,
        approver: &str,
        verdict: Verdict,
        signature: &[u8],
        now: i64,
        base: Record,
    ) -> Result<RequestRow, StoreError> {
        self.on_request(ak, id, now, |tx, _, mut row| {
            let who = self
                .sealed_one_in(tx, Kind::Approver, approver)?
                .map(|f| ApproverRow::from_fields(&f))
                .filter(|a| a.state == "active")
                .ok_or_else(|| {
                    StoreError::Refused(format!(
                        "{approver:?} is not a registered approver (see `p11derive approver list`)"
                    ))
                })?;
            if row.verdicts().iter().any(|v| v.given.approver == approver) {
                return Err(StoreError::Refused(format!(
                    "approver {approver:?} already gave a verdict on request {id}: each approver \
                 counts once"
                )));
            }
            let doc = row.doc().map_err(|m| self.bad_request(id, &m))?;
            let key = ApproverKey::from_der(&who.public_key).map_err(|m| {
                StoreError::Corrupt(self.path.clone(), format!("approver {approver:?}: {m}"))
            })?;
            key.verify(&doc.verdict_bytes(verdict), signature)
                .map_err(|why| {
                    StoreError::Refused(format!(
                    "the signature does not verify as approver {approver:?}'s {} of request {id} \
                 ({why}): sign the bytes `p11derive request export {id}{}` writes, with the \
                 key registered for {approver:?} (fingerprint {})",
                    verdict.name(),
                    if verdict == Verdict::Reject {
                        " --reject"
                    } else {
                        ""
                    },
                    who.fingerprint()
                ))
                })?;
            row.approvals.push_str(&format!(
                "{} {approver} {} {now} {}\n",
                verdict.name(),
                who.fingerprint(),
                hex(signature)
            ));
            let mut rec = base;
            let what = match verdict {
                Verdict::Approve => {
                    rec.event = Event::Approval;
                    format!("approval by {approver} key={}", &who.fingerprint()[..16])
                }
                Verdict::Reject => {
                    rec.event = Event::Request;
                    row.state = "rejected".into();
                    row.outcome = format!("rejected by approver {approver}");
                    format!(
                        "request rejected by {approver} key={}",
                        &who.fingerprint()[..16]
                    )
                }
            };
            Ok((row, what, rec))
        })
    }

    /// Runs `f` on the request `id` (verified; pending and, at `now`,
    /// unexpired) in one write transaction: `f` makes its changes through
    /// the transaction (with the state key) and returns the request as it
    /// is to be written, the words and the record of its change; the
    /// request is sealed to that record and the transaction committed.
    pub(super) fn on_request(
        &self,
        ak: &Secret32,
        id: &str,
        now: i64,
        f: impl FnOnce(
            &mut dyn Db,
            &Secret32,
            RequestRow,
        ) -> Result<(RequestRow, String, Record), StoreError>,
    ) -> Result<RequestRow, StoreError> {
        let sk = self.sk(ak)?;
        self.refused()?;
        let mut conn = self.lock();
        let mut tx = Tx::begin(&mut **conn)?;
        self.refresh(&mut *tx)?;
        let row = self.open_request(&mut *tx, id, now)?;
        let (row, what, rec) = f(&mut *tx, &sk, row)?;
        let detail = request_detail(&row, &what);
        let head = self.put_sealed_in(&mut *tx, ak, &sk, request_write(&row), detail, rec)?;
        self.commit_at(tx, head)?;
        // An executed transition changed an asset.
        self.forget_assets();
        self.refresh(&mut **conn)?;
        Ok(row)
    }

    /// Cancels a pending request (its requester, or an admin, changing
    /// their mind), sealed and audited.
    pub fn cancel_request(
        &self,
        ak: &Secret32,
        id: &str,
        why: &str,
        now: i64,
        base: Record,
    ) -> Result<RequestRow, StoreError> {
        // An expired request may still be cancelled (its state then says so).
        let _ = now;
        self.on_request(ak, id, i64::MIN, |_, _, mut row| {
            row.state = "cancelled".into();
            row.outcome = why.to_string();
            Ok((row, "request cancelled".into(), base))
        })
    }

    /// The request `id` read (verified) in `tx`, refused unless it is
    /// pending and, at `now`, unexpired.
    pub(super) fn open_request(
        &self,
        tx: &mut dyn Db,
        id: &str,
        now: i64,
    ) -> Result<RequestRow, StoreError> {
        let row = self
            .sealed_one_in(tx, Kind::Request, id)?
            .map(|f| RequestRow::from_fields(&f))
            .ok_or_else(|| StoreError::NotFound(format!("request {id:?}")))?;
        match row.status(now) {
            "pending" => Ok(row),
            "expired" => Err(StoreError::Refused(format!(
                "request {id} expired at {}: make a new request",
                crate::access::format_time(row.expires_at)
            ))),
            s => Err(StoreError::Refused(format!(
                "request {id} is {s} ({}): nothing more can be done with it",
                row.outcome
            ))),
        }
    }

    pub(super) fn sk(&self, ak: &Secret32) -> Result<Arc<Secret32>, StoreError> {
        Ok(match self.guard().state_key() {
            Some(sk) => sk,
            None => Arc::new(state_key(ak)?),
        })
    }
}

/// A signature's approvals as its commit finds them: the request whose
/// approvals it uses and the approvers who counted, or why none (and
/// whether a request for it is pending).
pub(super) type SignApproval = Result<(RequestRow, Vec<String>), (String, bool)>;

/// The verdicts on `requests` (rows' fields as read) that do not verify:
/// an approver it names missing, holding another key, or a signature that
/// is not that key's over the request's verdict bytes (for `audit verify`).
pub(super) fn verdict_faults(approvers: &[Vec<Vec<u8>>], requests: &[Vec<Vec<u8>>]) -> Vec<String> {
    let approvers: Vec<ApproverRow> = approvers
        .iter()
        .map(|f| ApproverRow::from_fields(f))
        .collect();
    let mut faults = Vec::new();
    for r in requests.iter().map(|f| RequestRow::from_fields(f)) {
        let Ok(doc) = r.doc() else {
            faults.push(format!("request {:?}: its bytes are not a request", r.id));
            continue;
        };
        for v in r.verdicts() {
            let who = &v.given.approver;
            let fault = match approvers.iter().find(|a| a.name == *who) {
                None => Some("no such approver".to_string()),
                Some(a) if a.fingerprint() != v.given.fingerprint => {
                    Some("the approver holds another key".into())
                }
                Some(a) => ApproverKey::from_der(&a.public_key)
                    .and_then(|k| k.verify(&doc.verdict_bytes(v.given.verdict), &v.signature))
                    .err(),
            };
            if let Some(why) = fault {
                faults.push(format!(
                    "request {:?}: the {} by {who:?} does not verify ({why})",
                    r.id,
                    v.given.verdict.name()
                ));
            }
        }
    }
    faults
}

/// Quorum rules as of a verified state change.
pub(super) type QuorumCache = (Option<(u64, [u8; 32])>, Arc<Vec<Rule>>);

/// What a request's operation is matched against: the asset, or a
/// policy's pattern; `None` for operations on the whole store.
pub fn subject_of(doc: &RequestDoc) -> Option<String> {
    if crate::approvals::request::on_assets(&doc.operation) {
        doc.param("asset").map(str::to_string)
    } else if doc.operation == "policy" {
        doc.param("pattern").map(str::to_string)
    } else {
        None
    }
}

pub(super) fn approver_detail(row: &ApproverRow, what: &str) -> String {
    format!(
        "{what} kind={} key={} groups={} state={}",
        row.key_kind,
        &row.fingerprint()[..16],
        if row.groups.is_empty() {
            "-"
        } else {
            &row.groups
        },
        row.state
    )
}

pub(super) fn quorum_detail(row: &QuorumRow, what: &str) -> String {
    format!(
        "{what} operation={} pattern={} approvals={} group={} state={}",
        row.operation,
        row.pattern,
        row.approvals,
        if row.group.is_empty() {
            "-"
        } else {
            &row.group
        },
        row.state
    )
}

pub(super) fn request_detail(row: &RequestRow, what: &str) -> String {
    format!(
        "{what} id={} operation={} state={} approvals={}",
        row.id,
        row.operation,
        row.state,
        row.verdicts()
            .iter()
            .filter(|v| v.given.verdict == Verdict::Approve)
            .count()
    )
}

pub(super) fn approver_write(row: &ApproverRow) -> SealedWrite<'_> {
    SealedWrite {
        kind: Kind::Approver,
        name: &row.name,
        fields: row.fields(),
        upsert: "INSERT INTO approvers (name, key_kind, public_key, groups, state, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET \
                 key_kind = excluded.key_kind, public_key = excluded.public_key, \
                 groups = excluded.groups, state = excluded.state",
        params: vec![
            row.name.as_str().into(),
            row.key_kind.as_str().into(),
            row.public_key.as_slice().into(),
            row.groups.as_str().into(),
            row.state.as_str().into(),
            row.created_at.into(),
        ],
        seal_sql: "UPDATE approvers SET change_seq = ?1, state_mac = ?2 WHERE name = ?3",
    }
}

pub(super) fn quorum_write(row: &QuorumRow) -> SealedWrite<'_> {
    SealedWrite {
        kind: Kind::Quorum,
        name: &row.name,
        fields: row.fields(),
        upsert:
            "INSERT INTO quorums (name, operation, pattern, approvals, grp, state, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (name) DO UPDATE SET \
                 approvals = excluded.approvals, grp = excluded.grp, state = excluded.state",
        params: vec![
            row.name.as_str().into(),
            row.operation.as_str().into(),
            row.pattern.as_str().into(),
            Val::Int(row.approvals.into()),
            row.group.as_str().into(),
            row.state.as_str().into(),
            row.created_at.into(),
        ],
        seal_sql: "UPDATE quorums SET change_seq = ?1, state_mac = ?2 WHERE name = ?3",
    }
}

pub(super) fn request_write(row: &RequestRow) -> SealedWrite<'_> {
    SealedWrite {
        kind: Kind::Request,
        name: &row.id,
        fields: row.fields(),
        upsert: "INSERT INTO requests (name, operation, lookup, body, requested_by, created_at, \
                 expires_at, state, approvals, outcome) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (name) DO UPDATE \
                 SET state = excluded.state, approvals = excluded.approvals, \
                 outcome = excluded.outcome",
        params: vec![
            row.id.as_str().into(),
            row.operation.as_str().into(),
            row.lookup.as_str().into(),
            row.body.as_slice().into(),
            row.requested_by.as_str().into(),
            row.created_at.into(),
            row.expires_at.into(),
            row.state.as_str().into(),
            row.approvals.as_str().into(),
            row.outcome.as_str().into(),
        ],
        seal_sql: "UPDATE requests SET change_seq = ?1, state_mac = ?2 WHERE name = ?3",
    }
}

pub(super) fn user_write(row: &UserRow) -> SealedWrite<'_> {
    super::users::user_write(row)
}

pub(super) fn policy_write(row: &super::PolicyRow) -> SealedWrite<'_> {
    super::users::policy_write(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A verdict sealed into a request row by someone holding the audit
    /// key, but not signed by the approver it names, is a fault `audit
    /// verify` reports (the seal alone does not make it an approval).
    #[test]
    fn a_sealed_verdict_that_is_no_signature_is_a_fault() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ak) = crate::store::initialized_for_test(dir.path());
        // RFC 8032 §7.1 test 1's public key, as SubjectPublicKeyInfo.
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend(
            (0..32)
                .map(|i| {
                    let h = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
                    u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap()
                })
                .collect::<Vec<u8>>(),
        );
        let ann = ApproverRow {
            name: "ann".into(),
            key_kind: "ed25519".into(),
            public_key: ApproverKey::from_der(&der).unwrap().der().to_vec(),
            groups: String::new(),
            state: "active".into(),
            created_at: 0,
        };
        let base = || Record::new(Event::Approver, crate::ck::CKR_OK);
        store
            .put_approver(&ak, &ann, "approver add", base())
            .unwrap();
        let doc = RequestDoc {
            store: "00".repeat(16),
            id: "11".repeat(16),
            operation: "retire".into(),
            params: vec![("asset".into(), "a1".into()), ("basis".into(), "1".into())],
            requested_by: "carol".into(),
            requested_at: 0,
            expires_at: 100,
        };
        let mut row = RequestRow {
            id: doc.id.clone(),
            operation: "retire".into(),
            lookup: "a1".into(),
            body: doc.canonical(),
            requested_by: "carol".into(),
            created_at: 0,
            expires_at: 100,
            state: "pending".into(),
            approvals: String::new(),
            outcome: String::new(),
        };
        store.create_request(&ak, &row, base()).unwrap();
        assert!(store.subject_faults(&ak).unwrap().is_empty());
        row.id = "22".repeat(16);
        let mut doc2 = doc.clone();
        doc2.id = row.id.clone();
        row.body = doc2.canonical();
        row.approvals = format!("approve ann {} 5 {}\n", ann.fingerprint(), "ab".repeat(64));
        store.create_request(&ak, &row, base()).unwrap();
        let faults = store.subject_faults(&ak).unwrap();
        assert_eq!(faults.len(), 1, "{faults:?}");
        assert!(
            faults[0].contains(&row.id) && faults[0].contains("\"ann\" does not verify"),
            "{faults:?}"
        );
    }
}
