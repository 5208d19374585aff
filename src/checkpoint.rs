//! Verified checkpoints (pure): the replay state `audit verify` builds at a chain head, its canonical bytes and digests, and the `checkpoint` record's detail that commits to them.
//!
//! A checkpoint record (MACed like any record) names the chain head it
//! was taken at, the newest state change at or before it, and SHA-256
//! digests of the replayed state and of every writer lane's head. The
//! snapshot itself (canonical JSON: maps ordered, no floats) is kept in
//! the `audit_checkpoint` table beside the record, so a later verify can
//! resume from it after checking the record's MAC and the digests.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

use crate::store::{hex, unhex32};

/// An asset's last creation or transition as replayed: the record, the
/// state it left and the counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    pub seq: u64,
    /// The state's name (`ACTIVE`, `ROTATING`, `SUSPENDED`, `RETIRED`).
    pub state: String,
    pub current: u32,
    pub min_usable: u32,
}

/// What a creation or rotation record says of an asset's keys: its
/// number, the version, the public key's digest (`pk=`), and for a
/// creation, its `id=` and key type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFact {
    pub seq: u64,
    pub version: Option<u32>,
    pub pk: Option<String>,
    pub created: Option<(Option<String>, String)>,
}

/// What the replay knows of one asset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetFacts {
    pub expected: Option<Expected>,
    /// The state its last transition record says `resume` returns to.
    pub resumes_to: Option<String>,
    pub keys: Vec<KeyFact>,
}

/// What the replay knows of the assets, by name.
pub type StateFacts = BTreeMap<String, AssetFacts>;

/// A writer lane's head: its newest position and that record's MAC (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneHead {
    pub pos: u64,
    pub mac: String,
}

/// The replay state at chain head `head`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub head: u64,
    /// The head record's MAC, hex.
    pub head_mac: String,
    /// The newest state change numbered at most `head` (0: none).
    pub change: u64,
    pub state: StateFacts,
    /// Each writer lane's head at the checkpoint.
    pub lanes: BTreeMap<u64, LaneHead>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn canonical<T: Serialize>(v: &T) -> Vec<u8> {
    // Maps of strings and integers only: serializing cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// SHA-256 of the state's canonical JSON.
pub fn state_digest(state: &StateFacts) -> [u8; 32] {
    sha256(&canonical(state))
}

/// SHA-256 of the lane heads' canonical JSON.
pub fn lanes_digest(lanes: &BTreeMap<u64, LaneHead>) -> [u8; 32] {
    sha256(&canonical(lanes))
}

impl Snapshot {
    /// The canonical bytes kept in `audit_checkpoint.snapshot`.
    pub fn to_bytes(&self) -> Vec<u8> {
        canonical(self)
    }

    /// A snapshot read back; an error names what is wrong with it.
    pub fn from_bytes(b: &[u8]) -> Result<Snapshot, String> {
        serde_json::from_slice(b).map_err(|e| format!("the snapshot is not readable JSON: {e}"))
    }

    /// The head MAC as 32 bytes (`None`: not 64 hex digits).
    pub fn head_mac32(&self) -> Option<[u8; 32]> {
        unhex32(&self.head_mac)
    }

    /// The lane heads as (lane, position, MAC bytes) (`None`: a MAC that is
    /// not 64 hex digits).
    pub fn lane_heads(&self) -> Option<Vec<(u64, u64, [u8; 32])>> {
        self.lanes
            .iter()
            .map(|(l, h)| unhex32(&h.mac).map(|m| (*l, h.pos, m)))
            .collect()
    }

    /// What the checkpoint record's detail says of this snapshot.
    pub fn detail(&self) -> CheckpointDetail {
        CheckpointDetail {
            head: self.head,
            head_mac: self.head_mac32().unwrap_or([0; 32]),
            change: self.change,
            state: state_digest(&self.state),
            lanes: lanes_digest(&self.lanes),
            n_lanes: self.lanes.len() as u64,
        }
    }
}

/// The word a checkpoint record's detail starts with.
const PREFIX: &str = "checkpoint head=";

/// A checkpoint record's detail, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointDetail {
    pub head: u64,
    pub head_mac: [u8; 32],
    pub change: u64,
    pub state: [u8; 32],
    pub lanes: [u8; 32],
    pub n_lanes: u64,
}

impl std::fmt::Display for CheckpointDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{} change={} state={} lanes={} n_lanes={}",
            self.head,
            hex(&self.head_mac),
            self.change,
            hex(&self.state),
            hex(&self.lanes),
            self.n_lanes
        )
    }
}

/// The detail of a checkpoint record: `checkpoint head=H:MAC change=C
/// state=DIGEST lanes=DIGEST n_lanes=K` (`None`: anything else).
pub fn parse_checkpoint_detail(detail: &str) -> Option<CheckpointDetail> {
    let mut words = detail.strip_prefix(PREFIX)?.split(' ');
    let (head, mac) = words.next()?.split_once(':')?;
    let mut field = |key: &str| words.next()?.strip_prefix(key);
    let change = field("change=")?.parse().ok()?;
    let state = unhex32(field("state=")?)?;
    let lanes = unhex32(field("lanes=")?)?;
    let n_lanes = field("n_lanes=")?.parse().ok()?;
    if words.next().is_some() {
        return None;
    }
    Some(CheckpointDetail {
        head: head.parse().ok()?,
        head_mac: unhex32(mac)?,
        change,
        state,
        lanes,
        n_lanes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let mut state = StateFacts::new();
        state.insert(
            "btc".into(),
            AssetFacts {
                expected: Some(Expected {
                    seq: 4,
                    state: "ACTIVE".into(),
                    current: 2,
                    min_usable: 1,
                }),
                resumes_to: None,
                keys: vec![KeyFact {
                    seq: 2,
                    version: Some(1),
                    pk: Some("ab".into()),
                    created: Some((Some("01".into()), "secp256k1".into())),
                }],
            },
        );
        let mut lanes = BTreeMap::new();
        lanes.insert(
            7,
            LaneHead {
                pos: 3,
                mac: hex(&[9u8; 32]),
            },
        );
        Snapshot {
            head: 10,
            head_mac: hex(&[1u8; 32]),
            change: 4,
            state,
            lanes,
        }
    }

    #[test]
    fn a_snapshot_reads_back_byte_for_byte() {
        let s = sample();
        let b = s.to_bytes();
        let back = Snapshot::from_bytes(&b).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.to_bytes(), b);
        assert!(Snapshot::from_bytes(b"{").is_err());
    }

    #[test]
    fn the_digests_follow_the_state_and_the_lanes() {
        let s = sample();
        let mut t = s.clone();
        t.state.get_mut("btc").unwrap().keys[0].pk = Some("ac".into());
        assert_ne!(state_digest(&s.state), state_digest(&t.state));
        assert_eq!(lanes_digest(&s.lanes), lanes_digest(&t.lanes));
        t.lanes.get_mut(&7).unwrap().pos = 4;
        assert_ne!(lanes_digest(&s.lanes), lanes_digest(&t.lanes));
        assert_eq!(s.lane_heads(), Some(vec![(7, 3, [9u8; 32])]));
    }

    #[test]
    fn a_checkpoint_detail_reads_back_and_nothing_else_does() {
        let d = sample().detail();
        let text = d.to_string();
        assert!(text.starts_with("checkpoint head=10:0101"), "{text}");
        assert!(text.ends_with(" n_lanes=1"), "{text}");
        assert_eq!(parse_checkpoint_detail(&text), Some(d));
        for bad in [
            "",
            "checkpoint head=10",
            "checkpoint head=x:00 change=1 state=00 lanes=00 n_lanes=0",
            &text.replace("change=", "chang="),
            &format!("{text} extra"),
            &text.replace(" n_lanes=1", ""),
        ] {
            assert_eq!(parse_checkpoint_detail(bad), None, "{bad:?}");
        }
    }
}
