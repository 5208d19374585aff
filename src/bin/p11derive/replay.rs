//! The replay `audit verify` runs over the log: what the main chain says of the assets' state ([`Facts`]) and every use that state did not allow ([`Uses`]), from the start of the chain or resumed at a checkpoint's snapshot.

use p11derive::audit::{Event, Record};
use p11derive::checkpoint::{Expected, KeyFact, Snapshot, StateFacts};
use p11derive::store::{
    parse_lanes_detail, parse_resumes_to, parse_transition_detail, AssetState, PENDING_MARK,
};
use std::collections::BTreeMap;

/// Where a record is, for a fault's message: `record N` of the main chain,
/// `lane L record P`.
#[derive(Clone, Copy)]
pub enum Place {
    Main(u64),
    Lane(u64, u64),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Main(seq) => write!(f, "record {seq}"),
            Place::Lane(lane, pos) => write!(f, "lane {lane} record {pos}"),
        }
    }
}

/// What the main chain says of the state, gathered while it is read once:
/// small per asset (never its records), so memory follows the assets, their
/// versions and the lanes, not the log's length.
#[derive(Default)]
pub struct Facts {
    /// Each asset's last creation or transition (replayed): (record, state,
    /// current, min_usable). Records sealed from the pending table are
    /// never trusted for state.
    pub expected: BTreeMap<String, (u64, AssetState, u32, u32)>,
    /// What each asset's last transition record says `resume` returns to.
    pub resumes: BTreeMap<String, Option<AssetState>>,
    /// Each asset's creation and rotation records, as [`KeyFact`]s.
    pub keys: BTreeMap<String, Vec<KeyFact>>,
    /// The newest head of each lane that `lanes` records (and checkpoints)
    /// name: lane → (record, position, MAC). The lane's own MAC chain
    /// covers the older heads: a lane that holds its newest named head with
    /// that MAC holds every earlier one as named (kept whole, this grew
    /// with the log).
    pub named: BTreeMap<u64, (u64, u64, [u8; 32])>,
    /// Two records that name one lane position with two MACs.
    pub named_twice: Option<String>,
}

impl Facts {
    /// Lane heads record `seq` names (a `lanes` record's, a checkpoint's).
    pub fn name_lanes(&mut self, seq: u64, heads: impl IntoIterator<Item = (u64, u64, [u8; 32])>) {
        for (lane, pos, mac) in heads {
            match self.named.get(&lane) {
                Some((first, p, m)) if *p == pos && *m != mac => {
                    self.named_twice.get_or_insert_with(|| {
                        format!(
                            "records {first} and {seq} name record {pos} of audit lane {lane} \
                             with two different MACs: the lane was rewritten"
                        )
                    });
                }
                Some((_, p, _)) if *p >= pos => {}
                _ => {
                    self.named.insert(lane, (seq, pos, mac));
                }
            }
        }
    }

    /// One record of the verified main chain, in order.
    fn see(&mut self, r: &Record) {
        if r.event == Event::Lanes {
            if let Some((_, heads)) = parse_lanes_detail(&r.detail) {
                self.name_lanes(r.seq, heads);
            }
        }
        if r.detail.starts_with(PENDING_MARK) {
            return;
        }
        let Some(asset) = r.asset.as_deref() else {
            return;
        };
        if !matches!(r.event, Event::Create | Event::Transition) {
            return;
        }
        if let Some(s) = parse_transition_detail(&r.detail) {
            self.expected
                .insert(asset.to_string(), (r.seq, s.0, s.1, s.2));
        }
        if r.event == Event::Transition {
            self.resumes
                .insert(asset.to_string(), parse_resumes_to(&r.detail));
        }
        let field = |key: &str| {
            r.detail
                .split(' ')
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
        };
        let fact = match r.event {
            Event::Create => Some(KeyFact {
                seq: r.seq,
                version: Some(1),
                pk: field("pk="),
                created: Some((
                    field("id="),
                    r.detail.split(' ').nth(1).unwrap_or("").to_string(),
                )),
            }),
            Event::Transition if r.detail.starts_with("rotate") => {
                let pk = field("pk=");
                (r.version.is_some() && pk.is_some()).then_some(KeyFact {
                    seq: r.seq,
                    version: r.version,
                    pk,
                    created: None,
                })
            }
            _ => None,
        };
        if let Some(f) = fact {
            self.keys.entry(asset.to_string()).or_default().push(f);
        }
    }
}

/// The replay of operation records against the state replayed before
/// them: each asset's state as recorded so far, and every use its place
/// did not allow (a signature or encryption by a version that could not
/// produce then, a decryption by one that could not open), so a row edited
/// and put back between two verifies still shows as the operations it let
/// through.
#[derive(Default)]
pub struct Uses {
    state: BTreeMap<String, p11derive::store::Asset>,
    pub faults: Vec<String>,
}

impl Uses {
    /// The next record in replay order: the main chain's in order, each
    /// lane record right after the state change it was decided under (the
    /// newest when it committed: no state change was in flight).
    fn see(&mut self, place: Place, r: &Record) {
        if r.detail.starts_with(PENDING_MARK) {
            return;
        }
        let Some(name) = r.asset.as_deref() else {
            return;
        };
        match r.event {
            Event::Create | Event::Transition => {
                if let Some((s, current, min)) = parse_transition_detail(&r.detail) {
                    self.state.insert(
                        name.to_string(),
                        p11derive::asset::as_recorded(s, current, min),
                    );
                }
            }
            Event::Sign | Event::Encrypt | Event::Decrypt if r.rv == 0 => {
                if let Some(f) = judge(place, r, self.state.get(name)) {
                    self.faults.push(f);
                }
            }
            _ => {}
        }
    }
}

/// A use (a successful signature, encryption or decryption) against the
/// state its asset had when it was decided: the fault, if it did not allow it.
fn judge(place: Place, r: &Record, state: Option<&p11derive::store::Asset>) -> Option<String> {
    let (Some(name), Some(v)) = (r.asset.as_deref(), r.version) else {
        return None;
    };
    let allowed = state.is_some_and(|a| {
        if r.event == Event::Decrypt {
            a.may_verify(v)
        } else {
            a.may_sign(v)
        }
    });
    if allowed {
        return None;
    }
    let was = state.map_or_else(
        || "not created".to_string(),
        |a| {
            format!(
                "{} at version {} (min_usable {})",
                a.state.name(),
                a.current,
                a.min_usable
            )
        },
    );
    Some(format!(
        "{place}: {} by {name:?} version {v} while the asset was {was}: the state that let it \
         through was not the recorded one (a row changed outside p11derive)",
        r.event.name()
    ))
}

/// [`Facts`] and [`Uses`]: the whole replay, fed record by record.
#[derive(Default)]
pub struct Replay {
    pub facts: Facts,
    uses: Uses,
    /// Resumed at a checkpoint: each asset's state there, and its state
    /// changes since (record, state), so that the lanes' records, read
    /// lane by lane after the main chain, are judged against the state
    /// they were decided under. Small: the state changes since the
    /// checkpoint, not its records.
    resumed: bool,
    base: BTreeMap<String, p11derive::store::Asset>,
    since: BTreeMap<String, Vec<(u64, p11derive::store::Asset)>>,
}

impl Replay {
    /// From the start of the chain.
    pub fn new() -> Replay {
        Replay::default()
    }

    /// From the start of the chain, keeping the state changes as a
    /// resumed run does, for lanes read after the main chain (a segment's).
    pub fn new_lanes_after() -> Replay {
        Replay {
            resumed: true,
            ..Replay::default()
        }
    }

    /// Resumed at a checkpoint: the state its snapshot holds (an asset
    /// whose recorded state name is not one reads as not created).
    pub fn from_snapshot(s: &Snapshot) -> Replay {
        let mut r = Replay::new();
        for (name, a) in &s.state {
            if let Some(e) = &a.expected {
                if let Some(st) = AssetState::parse(&e.state) {
                    r.facts
                        .expected
                        .insert(name.clone(), (e.seq, st, e.current, e.min_usable));
                    r.uses.state.insert(
                        name.clone(),
                        p11derive::asset::as_recorded(st, e.current, e.min_usable),
                    );
                }
            }
            if let Some(to) = a.resumes_to.as_deref().and_then(AssetState::parse) {
                r.facts.resumes.insert(name.clone(), Some(to));
            }
            if !a.keys.is_empty() {
                r.facts.keys.insert(name.clone(), a.keys.clone());
            }
        }
        r.base = r.uses.state.clone();
        r.resumed = true;
        r
    }

    /// A main-chain record, in order.
    pub fn see_main(&mut self, r: &Record) {
        self.facts.see(r);
        self.uses.see(Place::Main(r.seq), r);
        if !self.resumed || !matches!(r.event, Event::Create | Event::Transition) {
            return;
        }
        let Some(name) = r.asset.as_deref() else {
            return;
        };
        let Some(a) = self.uses.state.get(name) else {
            return;
        };
        let at = self.since.entry(name.to_string()).or_default();
        if at.last().map(|x| &x.1).or_else(|| self.base.get(name)) != Some(a) {
            at.push((r.seq, a.clone()));
        }
    }

    /// A lane record read after the main chain (a resumed run): judged
    /// against the state as of `change`, the state change it was decided
    /// under.
    pub fn see_lane_decided(&mut self, lane: u64, pos: u64, change: u64, r: &Record) {
        if r.detail.starts_with(PENDING_MARK)
            || !matches!(r.event, Event::Sign | Event::Encrypt | Event::Decrypt)
            || r.rv != 0
        {
            return;
        }
        let Some(name) = r.asset.as_deref() else {
            return;
        };
        let state = self
            .since
            .get(name)
            .and_then(|h| h.iter().rev().find(|(seq, _)| *seq <= change))
            .map(|(_, a)| a)
            .or_else(|| self.base.get(name));
        if let Some(f) = judge(Place::Lane(lane, pos), r, state) {
            self.uses.faults.push(f);
        }
    }

    /// A lane record, in replay order (right after the state change it was
    /// decided under).
    pub fn see_lane(&mut self, lane: u64, pos: u64, r: &Record) {
        self.uses.see(Place::Lane(lane, pos), r);
    }

    /// The state replayed so far, for digests and snapshots.
    pub fn state(&self) -> StateFacts {
        let mut out = StateFacts::new();
        for (name, (seq, st, current, min)) in &self.facts.expected {
            out.entry(name.clone()).or_default().expected = Some(Expected {
                seq: *seq,
                state: st.name().to_string(),
                current: *current,
                min_usable: *min,
            });
        }
        for (name, to) in &self.facts.resumes {
            if let Some(to) = to {
                out.entry(name.clone()).or_default().resumes_to = Some(to.name().to_string());
            }
        }
        for (name, keys) in &self.facts.keys {
            out.entry(name.clone()).or_default().keys = keys.clone();
        }
        out
    }

    /// Every use the replayed state did not allow.
    pub fn faults(&self) -> &[String] {
        &self.uses.faults
    }
}
