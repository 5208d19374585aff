//! The audit log's records and chain (design §4 "Audit log").
//!
//! Each record carries `mac = HMAC-SHA256(AK, encode(record) || previous mac)`
//! (the first record chains from 32 zero bytes). `AK` is derived from the root
//! inside the backing HSM (design §2), so whoever holds only the store can
//! neither forge, alter, reorder nor drop a record without `audit verify`
//! noticing. This module is pure: encoding, MACs and the chain check.

#![forbid(unsafe_code)]

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::types::Secret32;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Login,
    LoginFailed,
    Create,
    Transition,
    Sign,
    Verify,
    Encrypt,
    Decrypt,
    /// A public token object (certificate, data) stored or destroyed.
    ObjectCreate,
    ObjectDestroy,
    /// An operation refused by the asset's state or by policy.
    Refused,
    /// The rollback anchor was moved by an operator (`audit reanchor`).
    Anchor,
    /// The store was created (`p11derive init`): the first record of its
    /// lineage, whose MAC names the store in the HSM's anchor.
    Init,
    /// The heads of the writers' lanes (PostgreSQL), written into the
    /// chain when the anchor moves, so that the anchor covers every lane.
    Lanes,
    /// A user added, changed, locked, unlocked, given a new secret or
    /// removed (users mode): a state change.
    User,
    /// A policy set or removed (users mode): a state change.
    Policy,
    /// A name's failed logins counted, locked out, or cleared (users mode):
    /// a state change, MACed at once with the service credential.
    Lockout,
    /// An approver registered, given other groups or removed: a state change.
    Approver,
    /// A quorum rule set or removed: a state change.
    Quorum,
    /// A request made, rejected, cancelled or executed (an approved
    /// signature's approvals consumed): a state change.
    Request,
    /// An approval recorded on a request: a state change.
    Approval,
    /// The root's backup and recovery (design §6.2, §6.3): a ceremony that
    /// made SLIP-39 shares, a drill that checked shares against the live
    /// root, a recovery into a backing HSM. Fingerprints, share-set ids and
    /// thresholds only: nothing a share could be rebuilt from.
    Root,
    /// A verified checkpoint (`audit checkpoint`): the chain head, every
    /// lane's head and a digest of the replayed state at that point. Not a
    /// state change.
    Checkpoint,
    /// An archive segment written and its rows pruned (`audit archive`):
    /// the range, the end checkpoint and the segment's hash. Not a state
    /// change.
    Archive,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Login => "login",
            Event::LoginFailed => "login-failed",
            Event::Create => "create",
            Event::Transition => "transition",
            Event::Sign => "sign",
            Event::Verify => "verify",
            Event::Encrypt => "encrypt",
            Event::Decrypt => "decrypt",
            Event::ObjectCreate => "object-create",
            Event::ObjectDestroy => "object-destroy",
            Event::Refused => "refused",
            Event::Anchor => "anchor",
            Event::Init => "init",
            Event::Lanes => "lanes",
            Event::User => "user",
            Event::Policy => "policy",
            Event::Lockout => "lockout",
            Event::Approver => "approver",
            Event::Quorum => "quorum",
            Event::Request => "request",
            Event::Approval => "approval",
            Event::Root => "root",
            Event::Checkpoint => "checkpoint",
            Event::Archive => "archive",
        }
    }

    pub fn parse(s: &str) -> Option<Event> {
        [
            Event::Login,
            Event::LoginFailed,
            Event::Create,
            Event::Transition,
            Event::Sign,
            Event::Verify,
            Event::Encrypt,
            Event::Decrypt,
            Event::ObjectCreate,
            Event::ObjectDestroy,
            Event::Refused,
            Event::Anchor,
            Event::Init,
            Event::Lanes,
            Event::User,
            Event::Policy,
            Event::Lockout,
            Event::Approver,
            Event::Quorum,
            Event::Request,
            Event::Approval,
            Event::Root,
            Event::Checkpoint,
            Event::Archive,
        ]
        .into_iter()
        .find(|e| e.name() == s)
    }
}

/// One audit record as stored (without its MAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub time_ns: u64,
    pub pid: u32,
    pub session: Option<u64>,
    pub event: Event,
    pub asset: Option<String>,
    pub version: Option<u32>,
    pub mechanism: Option<u64>,
    /// SHA-256 of the operation's input (the data signed or verified).
    pub input_sha256: Option<[u8; 32]>,
    /// The PKCS#11 return code of the operation.
    pub rv: u64,
    /// Free text: a transition's name and resulting state, a refusal's reason.
    pub detail: String,
    /// The user whose call it was (users mode; `None` in pass-through mode
    /// and in records from before users existed).
    pub actor: Option<String>,
}

fn put_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

impl Record {
    /// The canonical bytes the MAC covers: every field, length-prefixed, in
    /// a fixed order, so no two records share an encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"p11derive-v1 audit record\0");
        out.extend_from_slice(&self.seq.to_be_bytes());
        self.encode_fields(&mut out);
        out
    }

    /// The bytes a record in a writer's lane is MACed over: its lane, its
    /// position there and the state change it was decided under, then the
    /// same fields as [`Record::encode`] (`seq` is not covered: a lane
    /// record's place is its lane and position).
    pub fn encode_in_lane(&self, at: &LanePlace) -> Vec<u8> {
        let mut out = Vec::with_capacity(176);
        out.extend_from_slice(b"p11derive-v1 lane record\0");
        out.extend_from_slice(&at.lane.to_be_bytes());
        out.extend_from_slice(&at.pos.to_be_bytes());
        out.extend_from_slice(&at.change.to_be_bytes());
        self.encode_fields(&mut out);
        out
    }

    /// Every field after the record's place, length-prefixed, in a fixed order.
    fn encode_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.time_ns.to_be_bytes());
        out.extend_from_slice(&self.pid.to_be_bytes());
        put_opt_u64(out, self.session);
        put_bytes(out, self.event.name().as_bytes());
        match &self.asset {
            None => out.push(0),
            Some(a) => {
                out.push(1);
                put_bytes(out, a.as_bytes());
            }
        }
        put_opt_u64(out, self.version.map(u64::from));
        put_opt_u64(out, self.mechanism);
        match &self.input_sha256 {
            None => out.push(0),
            Some(h) => {
                out.push(1);
                out.extend_from_slice(h);
            }
        }
        out.extend_from_slice(&self.rv.to_be_bytes());
        put_bytes(out, self.detail.as_bytes());
        // After the last field, only when present: a record without an
        // actor encodes exactly as before users existed.
        if let Some(a) = &self.actor {
            out.push(b'u');
            put_bytes(out, a.as_bytes());
        }
    }

    /// `HMAC(AK, encode(self) || prev_mac)`
    pub fn mac(&self, ak: &Secret32, prev_mac: &[u8; 32]) -> [u8; 32] {
        crate::secure::confined(|| {
            let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&ak[..]).expect("any key length");
            m.update(&self.encode());
            m.update(prev_mac);
            m.finalize().into_bytes().into()
        })
    }

    /// `HMAC(AK, encode_in_lane(self, at) || prev_mac)`: the MAC of a record
    /// at `at`, chained onto the lane's record before it ([`GENESIS`] for
    /// the lane's first).
    pub fn lane_mac(&self, ak: &Secret32, at: &LanePlace, prev_mac: &[u8; 32]) -> [u8; 32] {
        crate::secure::confined(|| {
            let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&ak[..]).expect("any key length");
            m.update(&self.encode_in_lane(at));
            m.update(prev_mac);
            m.finalize().into_bytes().into()
        })
    }
}

/// Where a record of a writer's lane is (PostgreSQL): each writer process
/// chains its own records, so hosts never wait for one another's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LanePlace {
    /// The lane: one per writer process, never reused.
    pub lane: u64,
    /// The record's position in its lane, from 1.
    pub pos: u64,
    /// The newest state change (record number in the main chain) when the
    /// record was committed: the state its operation was decided under.
    pub change: u64,
}

/// Checks one lane's records in position order, from its first; returns
/// its last MAC and position. A fault names the position.
pub fn verify_lane<'a>(
    ak: &Secret32,
    lane: u64,
    records: impl IntoIterator<Item = (&'a LanePlace, &'a Record, &'a [u8; 32])>,
) -> Result<([u8; 32], u64), ChainFault> {
    let mut check = LaneCheck::new(lane);
    for (at, r, mac) in records {
        check.push(ak, at, r, mac)?;
    }
    Ok(check.head())
}

/// [`verify_lane`]'s running state, for records fed one at a time (a lane
/// read in batches).
#[derive(Debug, Clone)]
pub struct LaneCheck {
    lane: u64,
    prev: [u8; 32],
    expected: u64,
}

impl LaneCheck {
    /// Before lane `lane`'s first record.
    pub fn new(lane: u64) -> LaneCheck {
        LaneCheck {
            lane,
            prev: GENESIS,
            expected: 1,
        }
    }

    /// The next record of the lane: it must be at the next position and
    /// chain from the record before.
    pub fn push(
        &mut self,
        ak: &Secret32,
        at: &LanePlace,
        r: &Record,
        mac: &[u8; 32],
    ) -> Result<(), ChainFault> {
        if at.lane != self.lane || at.pos != self.expected {
            return Err(ChainFault::Gap {
                expected: self.expected,
                found: at.pos,
            });
        }
        if r.lane_mac(ak, at, &self.prev) != *mac {
            return Err(ChainFault::BadMac { seq: at.pos });
        }
        self.prev = *mac;
        self.expected += 1;
        Ok(())
    }

    /// After record `pos` of lane `lane`, whose MAC is `mac` (a check
    /// resumed at a checkpoint's lane head).
    pub fn resume(lane: u64, pos: u64, mac: [u8; 32]) -> LaneCheck {
        LaneCheck {
            lane,
            prev: mac,
            expected: pos + 1,
        }
    }

    /// The last MAC and position checked.
    pub fn head(&self) -> ([u8; 32], u64) {
        (self.prev, self.expected - 1)
    }
}

/// The MAC a version's recorded public key carries:
/// `HMAC(AK, "p11derive-v1 public key" || 0x00 || str(asset) || u32be(version) || pk)`.
pub fn public_key_mac(ak: &Secret32, asset: &str, version: u32, pk: &[u8]) -> [u8; 32] {
    crate::secure::confined(|| {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&ak[..]).expect("any key length");
        m.update(b"p11derive-v1 public key\0");
        m.update(&(asset.len() as u16).to_be_bytes());
        m.update(asset.as_bytes());
        m.update(&version.to_be_bytes());
        m.update(pk);
        m.finalize().into_bytes().into()
    })
}

/// Whether a version's key data (public key or check value) as the store
/// holds it carries its MAC under the audit key (a version without key
/// data has nothing to check). A key swapped in the versions table fails.
pub fn key_data_verifies(ak: &Secret32, asset: &str, v: &crate::asset::VersionRecord) -> bool {
    match &v.public_key {
        None => true,
        Some(pk) => v.pk_mac.as_deref() == Some(&public_key_mac(ak, asset, v.version, pk)[..]),
    }
}

/// The MAC the first record chains from.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// The events that change state (the ledger's records), as SQL.
pub const STATE_EVENTS_SQL: &str = "('create', 'transition', 'user', 'policy', 'lockout', \
     'approver', 'quorum', 'request', 'approval')";

/// The word a state-change record (create, transition) ends its detail with:
/// the number of the state change before it (0 for none), so the changes form
/// a chain of their own inside the audit chain and none can be removed
/// without the next one naming it.
pub const PREV_CHANGE: &str = "prev_change=";

/// The `prev_change=N` a state-change record names (`None` in records
/// written before it existed).
pub fn prev_change(detail: &str) -> Option<u64> {
    detail
        .rsplit(' ')
        .next()
        .and_then(|w| w.strip_prefix(PREV_CHANGE))
        .and_then(|n| n.parse().ok())
}

/// The rollback anchor kept in the backing HSM (design §4, §6.5): which
/// store lineage the root belongs to, the newest record and the newest state
/// change an anchoring saw, and how many times an operator re-anchored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The first 16 bytes of the MAC of the store's first record (`None`
    /// in an anchor written before lineages were recorded).
    pub store: Option<[u8; 16]>,
    /// The root fingerprint (design §6.2), zero when not known.
    pub root: [u8; 16],
    /// The newest record at the anchoring: (seq, mac).
    pub head: (u64, [u8; 32]),
    /// The newest state change at the anchoring: (seq, mac), seq 0 for none.
    pub change: (u64, [u8; 32]),
    /// Re-anchorings by an operator so far: a process that found its store
    /// rolled back resumes only after the next one.
    pub epoch: u32,
    /// Where the store was (a path, or a URL without its password).
    pub location: String,
}

const ANCHOR_MAGIC: &[u8; 4] = b"P1A2";

impl Anchor {
    /// The bytes kept as the data object's `CKA_VALUE`:
    /// `"P1A2" || store(16) || root(16) || u64 seq || mac || u64 change_seq ||
    /// change_mac || u32 epoch || u16 len || location`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = ANCHOR_MAGIC.to_vec();
        v.extend_from_slice(&self.store.unwrap_or([0; 16]));
        v.extend_from_slice(&self.root);
        v.extend_from_slice(&self.head.0.to_be_bytes());
        v.extend_from_slice(&self.head.1);
        v.extend_from_slice(&self.change.0.to_be_bytes());
        v.extend_from_slice(&self.change.1);
        v.extend_from_slice(&self.epoch.to_be_bytes());
        let loc = &self.location.as_bytes()[..self.location.len().min(1024)];
        v.extend_from_slice(&(loc.len() as u16).to_be_bytes());
        v.extend_from_slice(loc);
        v
    }

    /// Reads an anchor: this format, or the first one (`u64 seq || mac`,
    /// 40 bytes, which named no store).
    pub fn decode(v: &[u8]) -> Option<Anchor> {
        let u64_at = |i: usize| Some(u64::from_be_bytes(v.get(i..i + 8)?.try_into().ok()?));
        let mac_at = |i: usize| -> Option<[u8; 32]> { v.get(i..i + 32)?.try_into().ok() };
        if v.len() == 40 {
            return Some(Anchor {
                store: None,
                root: [0; 16],
                head: (u64_at(0)?, mac_at(8)?),
                change: (0, GENESIS),
                epoch: 0,
                location: String::new(),
            });
        }
        if v.get(..4)? != ANCHOR_MAGIC {
            return None;
        }
        let store: [u8; 16] = v.get(4..20)?.try_into().ok()?;
        let epoch = u32::from_be_bytes(v.get(116..120)?.try_into().ok()?);
        let len = u16::from_be_bytes(v.get(120..122)?.try_into().ok()?) as usize;
        let location = String::from_utf8(v.get(122..122 + len)?.to_vec()).ok()?;
        if v.len() != 122 + len {
            return None;
        }
        Some(Anchor {
            store: (store != [0; 16]).then_some(store),
            root: v.get(20..36)?.try_into().ok()?,
            head: (u64_at(36)?, mac_at(44)?),
            change: (u64_at(76)?, mac_at(84)?),
            epoch,
            location,
        })
    }
}

/// The store id a chain's first record gives it: its MAC's first 16 bytes.
pub fn store_id(first_mac: &[u8; 32]) -> [u8; 16] {
    let mut id = [0u8; 16];
    id.copy_from_slice(&first_mac[..16]);
    id
}

/// The first place a chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainFault {
    /// seq is not the previous seq + 1 (a record was deleted or inserted).
    Gap { expected: u64, found: u64 },
    /// The MAC does not match (changed, forged, reordered or a record
    /// before it deleted).
    BadMac { seq: u64 },
}

/// Checks records in stored order; returns the last MAC on success.
pub fn verify_chain<'a>(
    ak: &Secret32,
    records: impl IntoIterator<Item = (&'a Record, &'a [u8; 32])>,
) -> Result<([u8; 32], u64), ChainFault> {
    let mut check = ChainCheck::default();
    for (r, mac) in records {
        check.push(ak, r, mac)?;
    }
    Ok(check.head())
}

/// [`verify_chain`]'s running state, for records fed one at a time (a log
/// read in batches): memory for one record, whatever the chain's length.
#[derive(Debug, Clone)]
pub struct ChainCheck {
    prev: [u8; 32],
    expected: u64,
}

impl Default for ChainCheck {
    fn default() -> ChainCheck {
        ChainCheck {
            prev: GENESIS,
            expected: 1,
        }
    }
}

impl ChainCheck {
    /// After record `seq`, whose MAC is `mac` (a check resumed at a
    /// checkpoint's head).
    pub fn resume(seq: u64, mac: [u8; 32]) -> ChainCheck {
        ChainCheck {
            prev: mac,
            expected: seq + 1,
        }
    }

    /// The next record: numbered right after the one before and chained
    /// from its MAC.
    pub fn push(&mut self, ak: &Secret32, r: &Record, mac: &[u8; 32]) -> Result<(), ChainFault> {
        if r.seq != self.expected {
            return Err(ChainFault::Gap {
                expected: self.expected,
                found: r.seq,
            });
        }
        if r.mac(ak, &self.prev) != *mac {
            return Err(ChainFault::BadMac { seq: r.seq });
        }
        self.prev = *mac;
        self.expected += 1;
        Ok(())
    }

    /// The last MAC and the number of records checked.
    pub fn head(&self) -> ([u8; 32], u64) {
        (self.prev, self.expected - 1)
    }
}

/// Where the next record joins a chain: the newest record's number and MAC
/// (`seq` 0 and [`GENESIS`] for an empty chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub mac: [u8; 32],
}

impl Head {
    /// Numbers `r` as the next record and MACs it onto the head, which then
    /// is `r`; returns `r`'s MAC.
    pub fn append(&mut self, ak: &Secret32, r: &mut Record) -> [u8; 32] {
        self.seq += 1;
        r.seq = self.seq;
        self.mac = r.mac(ak, &self.mac);
        self.mac
    }
}

/// When a record is made: now, this process.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Record {
    /// A record of `event` made now by this process (seq is set when it is
    /// appended to the chain).
    pub fn new(event: Event, rv: u64) -> Record {
        Record {
            seq: 0,
            time_ns: now_ns(),
            pid: std::process::id(),
            session: None,
            event,
            asset: None,
            version: None,
            mechanism: None,
            input_sha256: None,
            rv,
            detail: String::new(),
            actor: None,
        }
    }

    /// The user whose call it is (users mode).
    pub fn actor(mut self, actor: Option<&str>) -> Record {
        self.actor = actor.map(str::to_string);
        self
    }

    pub fn asset(mut self, asset: &str, version: Option<u32>) -> Record {
        self.asset = Some(asset.to_string());
        self.version = version;
        self
    }

    pub fn session(mut self, session: u64) -> Record {
        self.session = Some(session);
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Record {
        self.detail = detail.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Secret32;

    fn chain(ak: &Secret32, n: u64) -> Vec<(Record, [u8; 32])> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let mut r = Record::new(Event::Sign, 0)
                    .asset("a", Some(1))
                    .detail(format!("r{seq}"));
                r.seq = seq;
                let mac = r.mac(ak, &prev);
                prev = mac;
                (r, mac)
            })
            .collect()
    }

    /// A record without a user encodes exactly as records did before users
    /// existed (their MACs still verify); a user is under the MAC.
    #[test]
    fn the_actor_is_under_the_mac_and_absent_changes_nothing() {
        let mut r = Record::new(Event::Sign, 0).asset("a", Some(1)).detail("d");
        r.time_ns = 7;
        r.pid = 9;
        let plain = r.encode();
        assert!(plain.ends_with(b"\0\0\0\x01d"), "{plain:?}");
        let named = r.clone().actor(Some("bob"));
        let with = named.encode();
        assert_eq!(&with[..plain.len()], &plain[..]);
        assert_eq!(&with[plain.len()..], b"u\0\0\0\x03bob");
        let ak = crate::secure::secret::<32>().unwrap();
        assert_ne!(r.mac(&ak, &GENESIS), named.mac(&ak, &GENESIS));
        assert_ne!(
            named.mac(&ak, &GENESIS),
            r.clone().actor(Some("eve")).mac(&ak, &GENESIS)
        );
    }

    #[test]
    fn an_anchor_reads_back_and_the_first_format_still_reads() {
        let a = Anchor {
            store: Some([7; 16]),
            root: [8; 16],
            head: (41, [1; 32]),
            change: (40, [2; 32]),
            epoch: 3,
            location: "/var/lib/p11derive/store.db".into(),
        };
        assert_eq!(Anchor::decode(&a.encode()), Some(a.clone()));
        let mut old = 9u64.to_be_bytes().to_vec();
        old.extend_from_slice(&[5; 32]);
        let v1 = Anchor::decode(&old).expect("the first format");
        assert_eq!((v1.store, v1.head, v1.change.0), (None, (9, [5; 32]), 0));
        // A truncated or lengthened value is no anchor.
        let bytes = a.encode();
        assert_eq!(Anchor::decode(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Anchor::decode(&longer), None);
        assert_eq!(
            prev_change("rotate -> ACTIVE current=2 min_usable=1 prev_change=17"),
            Some(17)
        );
        assert_eq!(prev_change("rotate -> ACTIVE current=2 min_usable=1"), None);
    }

    #[test]
    fn a_chain_verifies_and_each_kind_of_tampering_is_named() {
        let ak = Secret32::copy_of(&[9u8; 32]).unwrap();
        let good = chain(&ak, 5);
        let view =
            |c: &[(Record, [u8; 32])]| c.iter().map(|(r, m)| (r.clone(), *m)).collect::<Vec<_>>();
        let check = |c: &Vec<(Record, [u8; 32])>| verify_chain(&ak, c.iter().map(|(r, m)| (r, m)));
        assert_eq!(check(&view(&good)).unwrap().1, 5);
        let mut changed = view(&good);
        changed[2].0.rv = 5;
        assert_eq!(check(&changed), Err(ChainFault::BadMac { seq: 3 }));
        let mut deleted = view(&good);
        deleted.remove(2);
        assert_eq!(
            check(&deleted),
            Err(ChainFault::Gap {
                expected: 3,
                found: 4
            })
        );
        let mut swapped = view(&good);
        swapped.swap(1, 2);
        assert_eq!(
            check(&swapped),
            Err(ChainFault::Gap {
                expected: 2,
                found: 3
            })
        );
        // Renumbering after a deletion is caught by the MAC chain.
        let mut renumbered = view(&good);
        renumbered.remove(2);
        for (i, (r, _)) in renumbered.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
        }
        assert_eq!(check(&renumbered), Err(ChainFault::BadMac { seq: 3 }));
        // A forged record with a MAC under another key.
        let mut forged = view(&good);
        let other = Secret32::copy_of(&[1u8; 32]).unwrap();
        let mut f = Record::new(Event::Sign, 0);
        f.seq = 6;
        let m = f.mac(&other, &good[4].1);
        forged.push((f, m));
        assert_eq!(check(&forged), Err(ChainFault::BadMac { seq: 6 }));
    }
}
