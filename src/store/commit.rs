//! Group commit: signatures' records share one durable transaction (one PostgreSQL round trip).
//!
//! Each record is committed before its signature leaves; whether the version
//! may still be used is decided at the commit, by the pure [`decide`].

#[cfg(test)]
use crate::audit::Head;
use crate::audit::{Event, LanePlace, Record, GENESIS};
use crate::types::Secret32;

use super::audit::stored_mac;
use super::db::Tx;
use super::first;
use super::lanes::LaneHead;
use super::{Asset, Store, StoreError};

/// One signature waiting to commit.
struct Job {
    id: u64,
    rowid: i64,
    version: u32,
    /// What the version must still be allowed to do at commit.
    need: Use,
    /// An AES-GCM encryption's IV: committed only if the version never
    /// used it before (`gcm_ivs`).
    iv: Option<Vec<u8>>,
    /// A raw `CKM_ECDSA` signature's digest (the data signed): what a
    /// request the commit records for approvers states.
    digest: Option<Vec<u8>>,
    record: Record,
    /// The thread waiting for this job's result.
    waiter: std::thread::Thread,
}

/// What an operation does with a version, re-checked at its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Sign or encrypt: the current version (or the previous one in a grace
    /// window).
    Produce,
    /// Verify or decrypt: any usable version of an asset not suspended.
    Open,
}

/// Why a use was refused at its commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The asset's state (as it was; `None`: gone) no longer allows it.
    State(Option<Asset>),
    /// The encryption's GCM IV was used before under that asset version.
    IvReused,
    /// The asset's row does not verify (the message names it).
    Unverified(String),
    /// A policy's rule refused it (users mode; the message names the
    /// policy, the rule and the limit).
    Policy(String),
}

/// What a job's commit decided: committed, refused, or failed.
pub type JobResult = Result<Result<(), Refusal>, StoreError>;

#[derive(Default)]
pub(super) struct Group {
    queue: Vec<Job>,
    leader: bool,
    next_id: u64,
    done: std::collections::HashMap<u64, JobResult>,
}

impl Store {
    /// The commit of a signature: re-reads the asset and appends either the
    /// signature's record (`Ok(Ok)`) or, when the version may no longer sign
    /// (or its row does not verify), a refusal record (`Ok(Err(why))`), in a
    /// write transaction that is
    /// committed (durably) before this returns. The caller releases the
    /// signature only after `Ok(Ok)`.
    ///
    /// Group commit: concurrent callers queue their jobs; one of them leads,
    /// taking every queued job into one transaction and one fsync, while the
    /// others wait for their result. Durability no longer serializes
    /// throughput: the more threads sign, the more records share a commit.
    pub fn commit_use(
        &self,
        ak: &Secret32,
        rowid: i64,
        version: u32,
        need: Use,
        record: Record,
    ) -> JobResult {
        self.commit_job(ak, rowid, version, need, None, None, record)
    }

    /// The commit of a signature, as `commit_use` with `Use::Produce`;
    /// `digest`: for raw `CKM_ECDSA`, the digest signed, so that a
    /// signature refused for want of approvals is proposed to approvers
    /// with the digest they must sign (design §6.5).
    pub fn commit_sign(
        &self,
        ak: &Secret32,
        rowid: i64,
        version: u32,
        digest: Option<&[u8]>,
        record: Record,
    ) -> JobResult {
        let digest = digest.map(<[u8]>::to_vec);
        self.commit_job(ak, rowid, version, Use::Produce, None, digest, record)
    }

    /// The commit of an AES-GCM encryption under IV `iv`, as `commit_use`
    /// with `Use::Produce`; besides, `iv` is recorded for (asset, version)
    /// in the same transaction, and an IV recorded before refuses the
    /// encryption (`Refusal::IvReused`: a refusal record is appended instead).
    pub fn commit_seal(
        &self,
        ak: &Secret32,
        rowid: i64,
        version: u32,
        iv: &[u8],
        record: Record,
    ) -> JobResult {
        let iv = Some(iv.to_vec());
        self.commit_job(ak, rowid, version, Use::Produce, iv, None, record)
    }

    /// Queues one job for the group commit and waits for its outcome.
    #[allow(clippy::too_many_arguments)]
    fn commit_job(
        &self,
        ak: &Secret32,
        rowid: i64,
        version: u32,
        need: Use,
        iv: Option<Vec<u8>>,
        digest: Option<Vec<u8>>,
        record: Record,
    ) -> JobResult {
        let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
        let id = g.next_id;
        g.next_id += 1;
        g.queue.push(Job {
            id,
            rowid,
            version,
            need,
            iv,
            digest,
            record,
            waiter: std::thread::current(),
        });
        loop {
            if let Some(done) = g.done.remove(&id) {
                return done;
            }
            if !g.leader {
                g.leader = true;
                let batch = std::mem::take(&mut g.queue);
                drop(g);
                let ids: Vec<u64> = batch.iter().map(|j| j.id).collect();
                let waiters: Vec<std::thread::Thread> =
                    batch.iter().map(|j| j.waiter.clone()).collect();
                // A panic must not leave the leader's seat taken (every later
                // signer would wait forever): its batch gets an error instead.
                let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.commit_batch(ak, batch)
                }))
                .unwrap_or_else(|_| {
                    let e =
                        StoreError::Io(self.path.clone(), "internal error while committing".into());
                    ids.into_iter().map(|id| (id, Err(e.clone()))).collect()
                });
                g = self.group.lock().unwrap_or_else(|e| e.into_inner());
                g.done.extend(results);
                g.leader = false;
                // Wake exactly the threads whose records were committed, and
                // the first one queued meanwhile, to lead the next batch (a
                // broadcast would wake every waiter at every commit).
                let next = g.queue.first().map(|j| j.waiter.clone());
                drop(g);
                for w in waiters.iter().chain(next.iter()) {
                    if w.id() != std::thread::current().id() {
                        w.unpark();
                    }
                }
                g = self.group.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            drop(g);
            // Woken by the leader that committed this job, or to lead; a
            // spurious wake-up just checks again.
            std::thread::park();
            g = self.group.lock().unwrap_or_else(|e| e.into_inner());
        }
    }

    /// One transaction for a batch of signatures: each job's asset is read
    /// in it, each record appended, one commit.
    fn commit_batch(&self, ak: &Secret32, batch: Vec<Job>) -> Vec<(u64, JobResult)> {
        // A batch with GCM IVs takes the ordinary transaction on PostgreSQL
        // too: the IVs are inserted under the writers' lock, each refused
        // one decided on its own (see docs/security.md, "AES-GCM").
        let ivs = batch.iter().any(|j| j.iv.is_some());
        // Uses a policy governs are decided under the writers' lock on
        // PostgreSQL too: a rate limit is then exact across hosts.
        let free = if self.is_shared() && !ivs {
            self.policed(batch.iter().map(|j| &j.record))
        } else {
            None
        };
        let timer = crate::metrics::process::Timer::start();
        let outcome = match free {
            Some(judged) => self.commit_batch_pg(ak, &batch, judged),
            None => self.commit_batch_tx(ak, &batch),
        };
        crate::metrics::process::commit(timer, batch.len());
        use std::sync::atomic::Ordering::Relaxed;
        self.batches.fetch_add(1, Relaxed);
        self.batched_records.fetch_add(batch.len() as u64, Relaxed);
        if let Ok(decisions) = &outcome {
            // A use refused by the asset's state: what `C_SignInit` reads
            // from the cache is out of date (the state changed), read it
            // again next time.
            if decisions
                .iter()
                .any(|d| matches!(d, Err(Refusal::State(_))))
            {
                self.forget_assets();
            }
        }
        match outcome {
            Ok(decisions) => batch
                .iter()
                .map(|j| j.id)
                .zip(decisions.into_iter().map(Ok))
                .collect(),
            Err(e) => batch.iter().map(|j| (j.id, Err(e.clone()))).collect(),
        }
    }

    /// A batch's commit on PostgreSQL: one statement
    /// (`p11derive_lane_append`), one round trip, into this process's own
    /// lane: the records are MACed onto the lane's head, and each job
    /// decided on assets read at the generation this process believes
    /// current, under the newest state change it has verified. No other
    /// host's head is involved, so hosts never race. When the generation
    /// moved (an asset changed), the statement writes nothing and returns
    /// the new one: read the assets again, decide and MAC again (a second
    /// round trip). A newer state change, records waiting in the pending
    /// table, or a chain that lost a record this process knows take the
    /// ordinary transaction instead, which verifies, seals or refuses.
    fn commit_batch_pg(
        &self,
        ak: &Secret32,
        batch: &[Job],
        judged: Option<(u64, [u8; 32])>,
    ) -> Result<Vec<Result<(), Refusal>>, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.refused()?;
        // What the main chain must still hold: the newest record this
        // process saw, and the HSM anchor's newest record and state change.
        let mut held: Vec<(u64, [u8; 32])> = self.seen().into_iter().collect();
        if let Some(a) = self.watched_anchor()? {
            // A state change the anchor knows and this process has not
            // verified: the ordinary transaction verifies it first (or
            // finds it hidden, and refuses the store).
            if a.change.0 > self.verified_change().map_or(0, |c| c.0) {
                return self.commit_batch_tx(ak, batch);
            }
            held.extend([a.head, a.change].into_iter().filter(|h| h.0 > 0));
        }
        // Bound to the state change the batch was judged free of policies
        // and rules at: if this process learnt a newer one meanwhile (a rule
        // may have come with it), the ordinary transaction decides.
        if self.verified_change() != judged {
            return self.commit_batch_tx(ak, batch);
        }
        let change = judged.map_or(0, |c| c.0);
        // Users mode: each user as of that state change (a newer one makes
        // the lane statement write nothing), read before the lane is held.
        let users: Vec<Result<(), String>> = batch
            .iter()
            .map(|j| self.user_refusal(&j.record))
            .collect::<Result<_, _>>()?;
        let mut lane = self.lane.lock().unwrap_or_else(|e| e.into_inner());
        // The last cover failed: no lane records the anchor cannot cover.
        if lane.uncovered {
            drop(lane);
            return self.commit_batch_tx(ak, batch);
        }
        if lane.id.is_none() {
            *lane = self.open_lane()?;
        }
        let id = lane.id.expect("opened above");
        for _ in 0..8 {
            let generation = match lane.generation {
                Some(g) => g,
                None => self.learn_generation()?,
            };
            let mut decisions = Vec::with_capacity(batch.len());
            let mut cols = PgColumns::default();
            let mut mac = lane.mac;
            let assets = self.assets_at(&mut lane, generation, change, batch)?;
            for (i, (job, asset)) in batch.iter().zip(assets).enumerate() {
                let (decision, mut r) = decide(job.need, job.version, &job.record, asset);
                // Users mode: the user as of the state change this commit is
                // bound to (a newer one makes the statement write nothing).
                let mut decision = decision.map_err(Refusal::State);
                if let (Ok(()), Err(why)) = (&decision, &users[i]) {
                    r = policy_refusal(&job.record, why);
                    decision = Err(Refusal::Policy(why.clone()));
                }
                let at = LanePlace {
                    lane: id,
                    pos: lane.pos + 1 + i as u64,
                    change,
                };
                mac = r.lane_mac(ak, &at, &mac);
                cols.push(&r, &mac);
                decisions.push(decision);
            }
            lane.generation = None;
            match self.append_pg(&lane, generation, change, &cols, &mac, &held)? {
                Appended::Done(g) => {
                    lane.pos += batch.len() as u64;
                    lane.mac = mac;
                    lane.generation = Some(g);
                    self.commits.fetch_add(1, Relaxed);
                    return Ok(decisions);
                }
                Appended::Stale(g) => lane.generation = Some(g),
                Appended::Unknown => {}
                Appended::LaneCut(pos) => {
                    // A batch of this process's that it took for failed
                    // may have landed after all: carry on after it.
                    if pos > lane.pos {
                        if let Some((p, m)) = self.catch_up_lane(ak, &lane)? {
                            crate::log::warn(&format!(
                                "store {}: audit lane {id} holds records {}..={p} of a commit \
                                 this process had reported failed (its answer never came): \
                                 their operations' results were never returned",
                                self.path.display(),
                                lane.pos + 1
                            ));
                            (lane.pos, lane.mac) = (p, m);
                            continue;
                        }
                    }
                    let why = format!(
                        "this process's audit lane {id} ends at record {pos}, not at the record \
                         {} it committed last there (or records after it do not verify): \
                         records were deleted or rewritten, or an older copy of the store was \
                         restored under it",
                        lane.pos
                    );
                    return Err(self.break_store(why, 0));
                }
                // Records to seal; a newer state change to verify; or the
                // chain lost a record this process knows, which the
                // ordinary path names and refuses.
                Appended::Pending | Appended::Lost => break,
            }
        }
        // Records to seal, a state change to verify, or the generation kept
        // moving: take the writers' lock.
        drop(lane);
        self.commit_batch_tx(ak, batch)
    }

    /// A new lane for this process (one round trip, at its first commit):
    /// never used before by any process, so no one else writes there.
    fn open_lane(&self) -> Result<LaneHead, StoreError> {
        let mut conn = self.lock();
        let id = self
            .rows(
                &mut **conn,
                "SELECT nextval('p11derive_lane_ids')",
                &[],
                |r| r.int(0),
            )
            .map(first)?
            .ok_or_else(|| StoreError::Io(self.path.clone(), "no lane id".into()))?;
        Ok(LaneHead {
            id: Some(id as u64),
            mac: GENESIS,
            ..LaneHead::default()
        })
    }

    /// The asset generation, read afresh.
    fn learn_generation(&self) -> Result<i64, StoreError> {
        let mut conn = self.lock();
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.generation(&mut **conn)
    }

    /// The batch's assets as of `generation` and state change `change`:
    /// from this lane's own cache while both are unchanged, else read and
    /// verified (the commit statement confirms nothing moved). The cache is
    /// the lane's, not the one `C_SignInit` reads: what decides a commit is
    /// only ever what a commit read, and a new state change empties it even
    /// if the generation did not move (its triggers disabled by the
    /// database's owner).
    fn assets_at(
        &self,
        lane: &mut LaneHead,
        generation: i64,
        change: u64,
        batch: &[Job],
    ) -> Result<Vec<Option<Asset>>, StoreError> {
        if lane.cached_at != Some((generation, change)) {
            lane.assets.clear();
            lane.cached_at = Some((generation, change));
        }
        let mut assets = Vec::with_capacity(batch.len());
        for job in batch {
            if let Some(a) = lane.assets.get(&job.rowid) {
                assets.push(Some(a.clone()));
                continue;
            }
            let mut conn = self.read_lock();
            self.round_trips
                .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
            let a = match self.asset_row(&mut **conn, job.rowid)? {
                Some(a) => Some(self.finish_asset(&mut **conn, a)?),
                None => None,
            };
            if let Some(a) = &a {
                lane.assets.insert(job.rowid, a.clone());
            }
            assets.push(a);
        }
        Ok(assets)
    }

    /// Sends a batch's records (MACed onto `lane`'s head, under state change
    /// `change`; the last MAC `last`) to `p11derive_lane_append`.
    fn append_pg(
        &self,
        lane: &LaneHead,
        generation: i64,
        change: u64,
        cols: &PgColumns,
        last: &[u8; 32],
        held: &[(u64, [u8; 32])],
    ) -> Result<Appended, StoreError> {
        let id = lane.id.unwrap_or(0) as i64;
        let mut conn = self.lock();
        let pg = conn.as_pg().expect("a PostgreSQL store");
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let head_mac: Option<Vec<u8>> = (lane.pos > 0).then(|| lane.mac.to_vec());
        let (hold, hold_mac): (Vec<i64>, Vec<Vec<u8>>) =
            held.iter().map(|(s, m)| (*s as i64, m.to_vec())).unzip();
        let lock_ms = pg.lock_timeout_ms();
        let rows = pg.query_alone(
            "SELECT r_ok, r_pos, r_mac, r_gen, r_pending, r_lost, r_change FROM \
             p11derive_lane_append(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, \
             ?15, ?16, ?17, ?18, ?19, ?20)",
            &[
                &lock_ms,
                &id,
                &(lane.pos as i64),
                &head_mac,
                &generation,
                &(change as i64),
                &cols.time_ns,
                &cols.pid,
                &cols.session,
                &cols.event,
                &cols.asset,
                &cols.version,
                &cols.mechanism,
                &cols.input,
                &cols.rv,
                &cols.detail,
                &cols.actor,
                &cols.mac,
                &hold,
                &hold_mac,
            ],
        );
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) if !pg.take_dropped() => return Err(e),
            Err(e) => {
                // The connection closed under the statement: whether it
                // committed is learnt, not guessed. The batch's last MAC is
                // in the lane at its position exactly when it did.
                let n = lane.pos + cols.mac.len() as u64;
                let found = self.lane_mac_at(&mut **conn, lane.id.unwrap_or(0), n);
                return match found {
                    Ok(Some(m)) if m[..] == last[..] => Ok(Appended::Done(generation)),
                    Ok(_) => Ok(Appended::Unknown),
                    Err(_) => Err(e),
                };
            }
        };
        type Outcome = (bool, i64, Option<Vec<u8>>, i64, bool, bool, i64);
        let read = || -> Result<Outcome, String> {
            let r = rows.first().ok_or("no row")?;
            let col = |e: postgres::Error| e.to_string();
            let ok: bool = r.try_get(0).map_err(col)?;
            let s: i64 = r.try_get(1).map_err(col)?;
            let m: Option<Vec<u8>> = r.try_get(2).map_err(col)?;
            let g: i64 = r.try_get(3).map_err(col)?;
            let pending: bool = r.try_get(4).map_err(col)?;
            let lost: bool = r.try_get(5).map_err(col)?;
            let change: i64 = r.try_get(6).map_err(col)?;
            Ok((ok, s, m, g, pending, lost, change))
        };
        let (ok, pos, mac, g, pending, lost, now) = read().map_err(|e| {
            StoreError::Io(self.path.clone(), format!("p11derive_lane_append: {e}"))
        })?;
        if ok {
            return Ok(Appended::Done(g));
        }
        // Only this process writes its lane: another head there means
        // records of it were deleted (or the store replaced).
        let head = mac.as_deref().map_or(GENESIS, stored_mac);
        if pos as u64 != lane.pos || head != lane.mac {
            return Ok(Appended::LaneCut(pos.max(0) as u64));
        }
        Ok(match (pending, lost || now as u64 != change) {
            // The ordinary path verifies the new state changes (or names
            // what was lost) under the writers' lock.
            (_, true) => Appended::Lost,
            (true, _) => Appended::Pending,
            (false, false) => Appended::Stale(g),
        })
    }

    /// A batch in an ordinary write transaction (holding the writers' lock).
    fn commit_batch_tx(
        &self,
        ak: &Secret32,
        batch: &[Job],
    ) -> Result<Vec<Result<(), Refusal>>, StoreError> {
        // The HSM's anchor is read while the batch is decided, written and
        // fsynced, and checked before any of its results is released: a store
        // restored or rewritten under this process refuses them (their records
        // stay on the refused store).
        let anchor_read = self.start_anchor_read();
        let mut conn = self.lock();
        let mut tx = Tx::begin(&mut **conn)?;
        // Every state change in the store is known before a row is judged
        // (a row put back to an older sealed copy is then stale).
        self.refresh(&mut *tx)?;
        let mut decisions = Vec::with_capacity(batch.len());
        let mut records = Vec::with_capacity(batch.len());
        // Each asset of the batch is read (and its row verified) once.
        let mut rows: std::collections::HashMap<i64, Result<Option<Asset>, StoreError>> =
            std::collections::HashMap::new();
        // The policies in force as of the ledger just refreshed (cached per
        // state change), and the uses counted so far in this transaction.
        let mut limits = super::limits::Limits::new(
            self.policies_refreshed(&mut *tx)?,
            self.active_rules_refreshed(&mut *tx)?,
        );
        for job in batch {
            let read = match rows.get(&job.rowid) {
                Some(r) => r.clone(),
                None => {
                    let r = self.asset_row(&mut *tx, job.rowid);
                    rows.insert(job.rowid, r.clone());
                    r
                }
            };
            let (decision, mut record) = match read {
                Ok(asset) => {
                    let (d, r) = decide(job.need, job.version, &job.record, asset);
                    (d.map_err(Refusal::State), r)
                }
                // A row that does not verify refuses its own job only.
                Err(StoreError::StateTampered(_, why)) => refuse_unverified(&job.record, &why),
                Err(e) => return Err(e),
            };
            let mut decision = decision;
            if decision.is_ok() && limits.governs(&job.record) {
                match limits.decide(self, &mut *tx, &job.record, job.digest.as_deref())? {
                    Err(why) => {
                        record = policy_refusal(&job.record, &why);
                        decision = Err(Refusal::Policy(why));
                    }
                    Ok(Some(note)) if record.detail.is_empty() => record.detail = note,
                    Ok(Some(note)) => record.detail = format!("{} {note}", record.detail),
                    Ok(None) => {}
                }
            }
            if let (Ok(()), Some(iv)) = (&decision, &job.iv) {
                // The primary key (asset, version, iv) answers in one index
                // probe: nothing inserted means the IV was used before.
                let fresh = tx.execute(
                    "INSERT INTO gcm_ivs (asset, version, iv) VALUES (?1, ?2, ?3) \
                     ON CONFLICT DO NOTHING",
                    &[job.rowid.into(), job.version.into(), iv.as_slice().into()],
                )?;
                if fresh == 0 {
                    record = iv_refusal(&record, iv);
                    decision = Err(Refusal::IvReused);
                }
            }
            records.push(record);
            decisions.push(decision);
        }
        // Signatures refused for want of approvals are proposed to approvers.
        for (row, actor) in std::mem::take(&mut limits.proposed) {
            let base = Record::new(Event::Request, crate::ck::CKR_OK).actor(actor.as_deref());
            self.propose_in(&mut *tx, ak, row, base)?;
        }
        // The approvals the batch's signatures use are spent with them.
        let spent = limits.consumed.len() as u64;
        for (row, actor) in std::mem::take(&mut limits.consumed) {
            let base = Record::new(Event::Request, crate::ck::CKR_OK).actor(actor.as_deref());
            self.consume_in(&mut *tx, ak, row, base)?;
        }
        let head = self.append_unwatched(&mut *tx, ak, &mut records)?;
        self.commit_at(tx, head)?;
        if spent > 0 {
            self.approvals_spent
                .fetch_add(spent, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(join) = anchor_read {
            let anchor = self.joined_anchor(join)?;
            self.check_against(&mut **conn, anchor.as_ref())?;
        }
        Ok(decisions)
    }

    /// (commits, records) of signatures so far: records per fsync.
    pub fn commit_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.batches.load(Relaxed),
            self.batched_records.load(Relaxed),
        )
    }

    /// Round trips to PostgreSQL made by signature commits so far.
    pub fn commit_round_trips(&self) -> u64 {
        self.round_trips.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// An operation's decision at its commit on its asset as read there (`None`:
/// gone): whether `version` may still be used as `need` says, and the record
/// to append: the operation's own, or a refusal naming the asset's state.
pub(super) fn decide(
    need: Use,
    version: u32,
    record: &Record,
    asset: Option<Asset>,
) -> (Result<(), Option<Asset>>, Record) {
    let allowed = asset.as_ref().is_some_and(|a| match need {
        Use::Produce => a.may_sign(version),
        Use::Open => a.may_verify(version),
    });
    let mut r = record.clone();
    if allowed {
        return (Ok(()), r);
    }
    let what = r.event.name();
    r.event = Event::Refused;
    r.rv = crate::ck::CKR_KEY_FUNCTION_NOT_PERMITTED;
    let why = match &asset {
        Some(a) => format!(
            "{what} refused at commit: asset is {} at version {} (min_usable {})",
            a.state.name(),
            a.current,
            a.min_usable
        ),
        None => format!("{what} refused at commit: asset gone"),
    };
    r.detail = with_path(record, why);
    (Err(asset), r)
}

/// A refusal's detail `text`, followed by the HD path (`path=m/…`) the
/// refused operation's record named, so that a refused signature of an HD
/// child still says which key it was.
fn with_path(record: &Record, text: String) -> String {
    let path = crate::hd::Path::of_record_detail(&record.detail);
    if path.is_empty() {
        text
    } else {
        format!("{text} {}", path.record_detail())
    }
}

/// The refusal of an operation whose asset row does not verify.
fn refuse_unverified(record: &Record, why: &str) -> (Result<(), Refusal>, Record) {
    let mut r = record.clone();
    let what = r.event.name();
    r.event = Event::Refused;
    r.rv = crate::ck::CKR_DEVICE_ERROR;
    r.detail = with_path(record, format!("{what} refused at commit: {why}"));
    (Err(Refusal::Unverified(why.to_string())), r)
}

/// The return code of a use refused at its commit in users mode, by the
/// rule `why` names: the user no longer logged in as such, a role or
/// pattern no longer held, or a policy.
pub fn users_refusal_rv(why: &str) -> u64 {
    if why.starts_with("rule=user ") {
        crate::ck::CKR_USER_NOT_LOGGED_IN
    } else if why.starts_with("rule=role ") || why.starts_with("rule=pattern ") {
        crate::ck::CKR_KEY_FUNCTION_NOT_PERMITTED
    } else {
        crate::ck::CKR_FUNCTION_REJECTED
    }
}

/// The record of a use a policy refused at its commit.
fn policy_refusal(record: &Record, why: &str) -> Record {
    let mut r = record.clone();
    let what = r.event.name();
    r.event = Event::Refused;
    r.rv = users_refusal_rv(why);
    r.detail = with_path(record, format!("{what} refused at commit: {why}"));
    r
}

/// The record of an encryption refused because its IV was used before
/// under that key: the rest of the record is the operation's own.
pub(super) fn iv_refusal(record: &Record, iv: &[u8]) -> Record {
    let mut r = record.clone();
    r.event = Event::Refused;
    r.rv = crate::ck::CKR_MECHANISM_PARAM_INVALID;
    r.detail = format!(
        "encrypt refused at commit: GCM IV already used under this key version; iv={}",
        super::hex(iv)
    );
    r
}

/// What `p11derive_lane_append` did with a batch.
enum Appended {
    /// Committed, at this generation.
    Done(i64),
    /// Nothing written: the asset generation moved to this.
    Stale(i64),
    /// Nothing written: this process's lane ends at this position, not
    /// where it committed last.
    LaneCut(u64),
    /// The connection was lost under the statement, and the batch is not
    /// in the chain: nothing written.
    Unknown,
    /// Nothing written: records without the audit key wait to be sealed.
    Pending,
    /// Nothing written: the chain no longer holds a record this process
    /// knows, or a state change this process has not verified is there.
    Lost,
}

/// A batch's records as the commit function's arrays.
#[derive(Default)]
struct PgColumns {
    time_ns: Vec<i64>,
    pid: Vec<i64>,
    session: Vec<Option<i64>>,
    event: Vec<String>,
    asset: Vec<Option<String>>,
    version: Vec<Option<i64>>,
    mechanism: Vec<Option<i64>>,
    input: Vec<Option<Vec<u8>>>,
    rv: Vec<i64>,
    detail: Vec<String>,
    actor: Vec<Option<String>>,
    mac: Vec<Vec<u8>>,
}

impl PgColumns {
    fn push(&mut self, r: &Record, mac: &[u8; 32]) {
        self.time_ns.push(r.time_ns as i64);
        self.pid.push(r.pid.into());
        self.session.push(r.session.map(|v| v as i64));
        self.event.push(r.event.name().to_string());
        self.asset.push(r.asset.clone());
        self.version.push(r.version.map(i64::from));
        self.mechanism.push(r.mechanism.map(|v| v as i64));
        self.input.push(r.input_sha256.map(|h| h.to_vec()));
        self.rv.push(r.rv as i64);
        self.detail.push(r.detail.clone());
        self.actor.push(r.actor.clone());
        self.mac.push(mac.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AssetState;
    use crate::types::KeyType;

    fn asset(state: AssetState, min_usable: u32, current: u32) -> Asset {
        crate::asset::sample(KeyType::P256, state, min_usable, current)
    }

    fn signed(version: u32) -> Record {
        let mut r = Record::new(Event::Sign, 0)
            .asset("a", Some(version))
            .session(3)
            .detail("sig");
        r.input_sha256 = Some([5u8; 32]);
        r
    }

    /// An allowed use commits the operation's own record; a use no longer
    /// allowed commits a refusal instead, the rest of the record unchanged.
    #[test]
    fn a_use_commits_its_record_or_a_refusal() {
        use AssetState::{Active, Retired, Rotating, Suspended};
        let r = signed(2);
        for (need, a, allowed) in [
            (Use::Produce, asset(Active, 1, 2), true),
            (Use::Produce, asset(Rotating, 1, 3), true),
            (Use::Open, asset(Active, 2, 5), true),
            (Use::Open, asset(Rotating, 1, 9), true),
            // Rotated past it without a grace window.
            (Use::Produce, asset(Active, 1, 3), false),
            // Outside the grace window.
            (Use::Produce, asset(Rotating, 1, 4), false),
            (Use::Produce, asset(Suspended, 1, 2), false),
            (Use::Open, asset(Suspended, 1, 2), false),
            (Use::Open, asset(Retired, 1, 2), false),
            // Trimmed.
            (Use::Open, asset(Active, 3, 4), false),
        ] {
            let (decision, rec) = decide(need, 2, &r, Some(a.clone()));
            if allowed {
                assert_eq!(decision, Ok(()), "{need:?} on {a:?}");
                assert_eq!(rec, r);
                continue;
            }
            assert_eq!(decision, Err(Some(a.clone())));
            assert_eq!(rec.event, Event::Refused);
            assert_eq!(rec.rv, crate::ck::CKR_KEY_FUNCTION_NOT_PERMITTED);
            assert_eq!(
                rec.detail,
                format!(
                    "sign refused at commit: asset is {} at version {} (min_usable {})",
                    a.state.name(),
                    a.current,
                    a.min_usable
                )
            );
            // Everything else is the operation's own record.
            let mut same = rec.clone();
            same.event = r.event;
            same.rv = r.rv;
            same.detail = r.detail.clone();
            assert_eq!(same, r);
        }
    }

    #[test]
    fn a_use_of_a_gone_asset_is_refused() {
        let mut r = signed(1);
        r.event = Event::Decrypt;
        let (decision, rec) = decide(Use::Open, 1, &r, None);
        assert_eq!(decision, Err(None));
        assert_eq!(rec.event, Event::Refused);
        assert_eq!(rec.detail, "decrypt refused at commit: asset gone");
    }

    #[test]
    fn a_refused_hd_child_signature_still_names_its_path() {
        let mut r = signed(1);
        r.detail = "path=m/44'/60'/0'/0/5".into();
        let (_, rec) = decide(Use::Produce, 1, &r, None);
        assert_eq!(
            rec.detail,
            "sign refused at commit: asset gone path=m/44'/60'/0'/0/5"
        );
        let rec = policy_refusal(&r, "rule=approvals no approval");
        assert_eq!(
            rec.detail,
            "sign refused at commit: rule=approvals no approval path=m/44'/60'/0'/0/5"
        );
        let (_, rec) = refuse_unverified(&r, "row edited");
        assert!(
            rec.detail.ends_with(" path=m/44'/60'/0'/0/5"),
            "{}",
            rec.detail
        );
    }

    #[test]
    fn the_decision_is_on_the_version_asked_not_the_record() {
        // The record names version 1, but the use is of version 2.
        let r = signed(1);
        let a = asset(AssetState::Active, 1, 2);
        assert_eq!(decide(Use::Produce, 2, &r, Some(a.clone())).0, Ok(()));
        assert!(decide(Use::Produce, 1, &r, Some(a)).0.is_err());
    }

    #[test]
    fn a_counter_at_its_maximum_still_decides() {
        let a = asset(AssetState::Rotating, 1, u32::MAX);
        let r = signed(u32::MAX);
        assert_eq!(
            decide(Use::Produce, u32::MAX, &r, Some(a.clone())).0,
            Ok(())
        );
        assert_eq!(
            decide(Use::Produce, u32::MAX - 1, &r, Some(a.clone())).0,
            Ok(())
        );
        assert!(decide(Use::Produce, u32::MAX - 2, &r, Some(a)).0.is_err());
    }

    #[test]
    fn a_batch_chains_its_records_onto_the_head() {
        // The chaining both commit paths do (`Head::append` over the decided
        // records, as `commit_batch_tx` and `commit_batch_pg` call it): each
        // record numbered after the head and MACed onto the one before,
        // refusals included, verifiable as one chain.
        let ak = Secret32::copy_of(&[4u8; 32]).unwrap();
        let mut chain = Head {
            seq: 0,
            mac: GENESIS,
        };
        let a = asset(AssetState::Active, 1, 2);
        let mut stored = Vec::new();
        for v in [2, 1, 2] {
            let (_, mut r) = decide(Use::Produce, v, &signed(v), Some(a.clone()));
            let mac = chain.append(&ak, &mut r);
            stored.push((r, mac));
        }
        assert_eq!(chain.seq, 3);
        assert_eq!(stored[1].0.event, Event::Refused);
        let (last, n) =
            crate::audit::verify_chain(&ak, stored.iter().map(|(r, m)| (r, m))).expect("a chain");
        assert_eq!((last, n), (chain.mac, 3));
    }
}
