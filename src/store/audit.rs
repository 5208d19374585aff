//! The audit chain as stored: append (sealing pending records), head, readers, row encoding.
//!
//! The record format and the MAC chain are `crate::audit`'s; this module only
//! stores and reads them.

use crate::audit::{Event, Head, Record, GENESIS};
use crate::types::Secret32;

use super::db::{Db, Row, Tx, Val};
use super::{first, hex, Asset, AssetState, Store, StoreError};

/// The mark a record sealed from the pending table carries in its detail.
pub const PENDING_MARK: &str = "[written without the audit key, sealed later] ";

/// SHA-256 of a recorded public key, as creation and rotation records carry it
/// ("-" for a key type without one).
pub fn key_digest(public_key: Option<&[u8]>) -> String {
    use sha2::{Digest, Sha256};
    public_key.map_or_else(|| "-".into(), |pk| hex(&Sha256::digest(pk)))
}

/// A transition record's detail: what was done and the state it left, in a
/// form `audit verify` parses to reconcile the assets table with the log.
pub fn transition_detail(what: &str, after: &Asset) -> String {
    let resumes = match after.state {
        AssetState::Suspended => format!(" resumes={}", after.resumes_to.name()),
        _ => String::new(),
    };
    format!(
        "{what} -> {} current={} min_usable={}{resumes}",
        after.state.name(),
        after.current,
        after.min_usable
    )
}

/// What a suspension record says `resume` returns to (`None` when not suspended).
pub fn parse_resumes_to(detail: &str) -> Option<AssetState> {
    let (_, after) = detail.rsplit_once(" -> ")?;
    after
        .split(' ')
        .find_map(|w| w.strip_prefix("resumes="))
        .and_then(AssetState::parse)
}

/// The state a create or transition record says it left: (state, current, min_usable).
pub fn parse_transition_detail(detail: &str) -> Option<(AssetState, u32, u32)> {
    let (_, after) = detail.rsplit_once(" -> ")?;
    let mut parts = after.split(' ');
    let state = AssetState::parse(parts.next()?)?;
    let current = parts.next()?.strip_prefix("current=")?.parse().ok()?;
    let min = parts.next()?.strip_prefix("min_usable=")?.parse().ok()?;
    Some((state, current, min))
}

/// The columns of an audit row before its MAC, in [`Record`] order.
pub(super) const AUDIT_COLUMNS: &str =
    "time_ns, pid, session, event, asset, version, mechanism, input_sha256, rv, detail, actor";

/// Reads an audit row. A value no genuine record can hold (an unknown
/// event, a hash that is not 32 bytes) is an error naming the row, never
/// normalised into something the MAC check might accept.
pub(super) fn read_record(r: &Row, first: usize) -> Result<Record, String> {
    let event = r.text(first + 3)?;
    let event = Event::parse(&event).ok_or_else(|| format!("unknown event {event:?}"))?;
    let input_sha256 = match r.opt_blob(first + 7)? {
        None => None,
        Some(h) => Some(
            <[u8; 32]>::try_from(h.as_slice())
                .map_err(|_| format!("an input hash of {} bytes", h.len()))?,
        ),
    };
    Ok(Record {
        seq: 0,
        time_ns: r.int(first)? as u64,
        pid: r.u32(first + 1)?,
        session: r.opt_int(first + 2)?.map(|v| v as u64),
        event,
        asset: r.opt_text(first + 4)?,
        version: r.opt_u32(first + 5)?,
        mechanism: r.opt_int(first + 6)?.map(|v| v as u64),
        input_sha256,
        rv: r.int(first + 8)? as u64,
        detail: r.text(first + 9)?,
        actor: r.opt_text(first + 10)?,
    })
}

fn record_params(r: &Record) -> Vec<Val> {
    vec![
        Val::Int(r.time_ns as i64),
        r.pid.into(),
        r.session.map(|v| v as i64).into(),
        r.event.name().into(),
        r.asset.as_deref().into(),
        r.version.into(),
        r.mechanism.map(|v| v as i64).into(),
        r.input_sha256.map(|h| h.to_vec()).into(),
        Val::Int(r.rv as i64),
        r.detail.as_str().into(),
        r.actor.as_deref().into(),
    ]
}

/// A stored MAC as the chain's 32 bytes; one of the wrong length reads as
/// all 0xff, which no record chains from or verifies under.
pub(super) fn stored_mac(m: &[u8]) -> [u8; 32] {
    m.try_into().unwrap_or([0xffu8; 32])
}

/// One audit row as stored: the record and its MAC (as found, any length).
pub type AuditRow = (Record, Vec<u8>);

impl Store {
    /// Appends records to the chain inside the caller's write transaction,
    /// first sealing records that processes without the audit key left
    /// pending. Refused when the chain no longer holds the newest record
    /// this process saw (`check_position`). Returns the new head, for the
    /// caller to pass to [`Store::commit_at`].
    pub(super) fn append_in(
        &self,
        tx: &mut dyn Db,
        ak: &Secret32,
        records: &mut [Record],
    ) -> Result<Head, StoreError> {
        self.check_before_append(tx)?;
        self.append_unwatched(tx, ak, records)
    }

    /// `append_in` without reading the HSM's anchor: for a commit that
    /// checks the anchor itself (`commit_batch_tx`, while its fsync runs).
    pub(super) fn append_unwatched(
        &self,
        tx: &mut dyn Db,
        ak: &Secret32,
        records: &mut [Record],
    ) -> Result<Head, StoreError> {
        let found = self.head_in(tx)?;
        self.check_position(tx, found)?;
        let (seq, mac) = found.unwrap_or((0, GENESIS));
        let mut head = Head { seq, mac };
        let pending = self.pending_in(tx)?;
        if !pending.is_empty() {
            tx.execute("DELETE FROM audit_pending", &[])?;
        }
        let insert = format!(
            "INSERT INTO audit (seq, {AUDIT_COLUMNS}, mac) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        );
        let mut put = |r: &mut Record| -> Result<(), StoreError> {
            let mac = head.append(ak, r);
            let mut all = vec![Val::Int(r.seq as i64)];
            all.extend(record_params(r));
            all.push(mac.to_vec().into());
            tx.execute(&insert, &all)?;
            Ok(())
        };
        for mut r in pending {
            // Written without the audit key: whoever wrote it is unproven.
            // Sealed with a mark, so it can never pass for an authenticated
            // record, and never counts towards an asset's state.
            r.detail = format!("{PENDING_MARK}{}", r.detail);
            put(&mut r)?;
        }
        for r in records.iter_mut() {
            put(r)?;
        }
        Ok(head)
    }

    /// Writes one record durably: into the chain when the audit key is at
    /// hand, else into the pending table for the next key holder to seal.
    pub fn record(&self, ak: Option<&Secret32>, mut r: Record) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let mut tx = Tx::begin(&mut **conn)?;
        match ak {
            Some(ak) => {
                let head = self.append_in(&mut *tx, ak, std::slice::from_mut(&mut r))?;
                return self.commit_at(tx, head);
            }
            None => {
                self.refused()?;
                tx.execute(
                    &format!(
                        "INSERT INTO audit_pending ({AUDIT_COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                    ),
                    &record_params(&r),
                )?;
            }
        }
        self.commit(tx)
    }

    /// Every row from `since_seq` on (`i64::MIN`: all rows, whatever their seq).
    pub fn audit_rows(&self, since_seq: i64) -> Result<Vec<AuditRow>, StoreError> {
        self.chain_rows("WHERE seq >= ?1 ORDER BY seq", since_seq)
    }

    /// The newest record of the chain: (seq, mac).
    pub fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let mut conn = self.lock();
        self.head_in(&mut **conn)
    }

    /// The newest (seq, mac) as seen by `db`. A MAC of the wrong length
    /// reads as all 0xff: whatever chains from it, or is anchored to it,
    /// fails verification at that record.
    pub(super) fn head_in(&self, db: &mut dyn Db) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.rows(
            db,
            "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1",
            &[],
            |r| {
                let mac = r.blob(1)?;
                Ok((r.int(0)? as u64, stored_mac(&mac)))
            },
        )
        .map(first)
    }

    /// Before a process writes with a freshly derived audit key: the chain's
    /// newest record must verify under it. When it does not, the first record
    /// tells why: under the same key it still verifies (the store was changed:
    /// `Tampered`), under another root's key it does not (`OtherRoot`).
    /// Appending in either case would chain onto something unproven.
    pub fn check_root(&self, ak: &Secret32) -> Result<(), StoreError> {
        let head = self.chain_rows("ORDER BY seq DESC LIMIT 2", 0)?;
        let Some((last, mac)) = head.first() else {
            return Ok(());
        };
        let prev = match head.get(1) {
            Some((_, m)) => stored_mac(m),
            None => GENESIS,
        };
        if last.mac(ak, &prev)[..] == mac[..] {
            return Ok(());
        }
        let first = self.chain_rows("ORDER BY seq LIMIT 1", 0)?;
        match first.first() {
            Some((r, m)) if r.mac(ak, &GENESIS)[..] == m[..] => {
                Err(StoreError::Tampered(self.path.clone(), last.seq))
            }
            _ => Err(StoreError::OtherRoot(self.path.clone())),
        }
    }

    /// Chain rows selected by `tail` (which may use `?1` = `param`). A row
    /// numbered below 1 is an error naming it: no genuine record has one.
    pub(super) fn chain_rows(&self, tail: &str, param: i64) -> Result<Vec<AuditRow>, StoreError> {
        let params: &[Val] = if tail.contains("?1") {
            &[Val::Int(param)]
        } else {
            &[]
        };
        self.chain_rows_with(tail, params)
    }

    /// Whether the chain holds record `seq` with exactly this MAC.
    pub fn holds_record(&self, seq: u64, mac: &[u8; 32]) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let found = self.mac_at(&mut **conn, seq)?;
        Ok(found.as_deref() == Some(&mac[..]))
    }

    /// The MAC of record `seq` as `db` sees it (as found, any length).
    pub(super) fn mac_at(&self, db: &mut dyn Db, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.rows(
            db,
            "SELECT mac FROM audit WHERE seq = ?1",
            &[Val::Int(seq as i64)],
            |r| r.blob(0),
        )
        .map(first)
    }

    /// Records waiting to be sealed into the chain.
    pub fn pending_rows(&self) -> Result<Vec<Record>, StoreError> {
        let mut conn = self.lock();
        self.pending_in(&mut **conn)
    }

    /// Records waiting to be sealed, as `db` sees them, oldest first.
    fn pending_in(&self, db: &mut dyn Db) -> Result<Vec<Record>, StoreError> {
        self.rows(
            db,
            &format!("SELECT {AUDIT_COLUMNS} FROM audit_pending ORDER BY id"),
            &[],
            |r| read_record(r, 0),
        )
    }
}

/// Rows a streaming reader fetches per query.
pub const STREAM_BATCH: usize = 5000;

/// Rows read batch by batch by keyset: `fetch` reads the next batch (it
/// keeps its own place); a batch shorter than [`STREAM_BATCH`] is the last.
/// Memory for one batch, whatever the log's length. A read error ends it.
pub struct Batches<'a, T> {
    fetch: Box<dyn FnMut() -> Result<Vec<T>, StoreError> + 'a>,
    buf: std::vec::IntoIter<T>,
    done: bool,
}

impl<'a, T> Batches<'a, T> {
    pub(super) fn new(fetch: impl FnMut() -> Result<Vec<T>, StoreError> + 'a) -> Self {
        Batches {
            fetch: Box::new(fetch),
            buf: Vec::new().into_iter(),
            done: false,
        }
    }
}

impl<T> Iterator for Batches<'_, T> {
    type Item = Result<T, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.buf.next() {
                return Some(Ok(row));
            }
            if self.done {
                return None;
            }
            match (self.fetch)() {
                Ok(rows) => {
                    self.done = rows.len() < STREAM_BATCH;
                    self.buf = rows.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The main chain's rows numbered after a place up to the head a reader
/// started at (`WHERE seq > ? ORDER BY seq LIMIT`).
pub type ChainRows<'a> = Batches<'a, AuditRow>;

impl Store {
    /// Every row of the main chain numbered up to `upto` (the head read
    /// when a reader started: writers appending meanwhile are not chased),
    /// oldest first, in batches. A row numbered below 1 is an error naming
    /// it, as in [`Store::audit_rows`].
    pub fn chain_stream(&self, upto: u64) -> ChainRows<'_> {
        self.chain_stream_from(i64::MIN, upto)
    }

    /// [`Store::chain_stream`] from the row after `after` (`i64::MIN`: from
    /// the very first row).
    pub fn chain_stream_from(&self, after: i64, upto: u64) -> ChainRows<'_> {
        // None: from the very first row, whatever its number (a row numbered
        // `i64::MIN` is read, and refused, like any other below 1).
        let mut after = (after != i64::MIN).then_some(after);
        let upto = i64::try_from(upto).unwrap_or(i64::MAX);
        Batches::new(move || {
            let rows = self.chain_batch(after, upto, STREAM_BATCH)?;
            if let Some((r, _)) = rows.last() {
                after = Some(r.seq as i64);
            }
            Ok(rows)
        })
    }

    /// Up to `limit` rows numbered after `after` (None: from the first)
    /// and up to `upto`, oldest first.
    pub fn chain_batch(
        &self,
        after: Option<i64>,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        match after {
            Some(after) => self.chain_rows_with(
                "WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
                &[Val::Int(after), Val::Int(upto), Val::Int(limit as i64)],
            ),
            None => self.chain_rows_with(
                "WHERE seq <= ?1 ORDER BY seq LIMIT ?2",
                &[Val::Int(upto), Val::Int(limit as i64)],
            ),
        }
    }

    /// Up to `limit` rows numbered below `before`, newest first (`audit
    /// tail`: the newest rows without reading the log).
    pub fn chain_newest(&self, before: i64, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        self.chain_rows_with(
            "WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
            &[Val::Int(before), Val::Int(limit as i64)],
        )
    }

    /// The MAC of record `seq` as stored (any length; `None`: no such row).
    pub fn audit_mac(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.lock();
        self.mac_at(&mut **conn, seq)
    }

    /// Chain rows selected by `tail` with `params`, as [`Store::chain_rows`].
    fn chain_rows_with(&self, tail: &str, params: &[Val]) -> Result<Vec<AuditRow>, StoreError> {
        let mut conn = self.lock();
        self.rows(
            &mut **conn,
            &format!("SELECT seq, {AUDIT_COLUMNS}, mac FROM audit {tail}"),
            params,
            |r| {
                let mut rec = read_record(r, 1)?;
                let seq = r.int(0)?;
                if seq < 1 {
                    return Err(format!("a record numbered {seq} (records start at 1)"));
                }
                rec.seq = seq as u64;
                Ok((rec, r.blob(12)?))
            },
        )
    }
}
