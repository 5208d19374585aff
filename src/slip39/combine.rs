//! Collecting shares of one set, one at a time, and combining them into the master secret.

use std::collections::BTreeMap;

use subtle::ConstantTimeEq;

use super::shamir::{self, Failure};
use super::{cipher, Error, Share};
use crate::secure::SecretBytes;

/// What [`Combiner::add`] did with a share.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// A new share, kept.
    Accepted,
    /// The very same share was given before (nothing changed).
    Duplicate,
}

/// The parameters every share of a set has in common.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SetParams {
    identifier: u16,
    extendable: bool,
    iteration_exponent: u8,
    group_threshold: u8,
    group_count: u8,
    value_len: usize,
}

impl SetParams {
    fn of(share: &Share) -> SetParams {
        SetParams {
            identifier: share.identifier,
            extendable: share.extendable,
            iteration_exponent: share.iteration_exponent,
            group_threshold: share.group_threshold,
            group_count: share.group_count,
            value_len: share.value().len(),
        }
    }
}

struct GroupShares {
    member_threshold: u8,
    /// Member index and share value.
    members: Vec<(u8, SecretBytes)>,
}

impl GroupShares {
    fn complete(&self) -> bool {
        self.members.len() >= self.member_threshold as usize
    }
}

/// Accumulates shares of one share set until enough are there to combine.
#[derive(Default)]
pub struct Combiner {
    set: Option<SetParams>,
    /// By group index.
    groups: BTreeMap<u8, GroupShares>,
}

impl Combiner {
    pub fn new() -> Combiner {
        Combiner::default()
    }

    /// The share set's identifier, once a share was accepted.
    pub fn identifier(&self) -> Option<u16> {
        self.set.map(|s| s.identifier)
    }

    /// Takes one share; refuses one of another set or one that contradicts
    /// the shares already given.
    pub fn add(&mut self, share: Share) -> Result<Added, Error> {
        let params = SetParams::of(&share);
        if let Some(set) = self.set {
            if let Some(difference) = differs(&set, &params) {
                return Err(Error::OtherSet(format!(
                    "this share is not of the share set being combined ({difference}): give \
                     only shares of set {}",
                    set.identifier
                )));
            }
        }
        let group = self
            .groups
            .entry(share.group_index)
            .or_insert_with(|| GroupShares {
                member_threshold: share.member_threshold,
                members: Vec::new(),
            });
        if group.member_threshold != share.member_threshold {
            return Err(Error::Inconsistent(format!(
                "this share of group {} says {} member shares are needed, an earlier one of the \
                 same group says {}: one of them is damaged or of another set",
                share.group_index + 1,
                share.member_threshold,
                group.member_threshold
            )));
        }
        if let Some((_, earlier)) = group
            .members
            .iter()
            .find(|(index, _)| *index == share.member_index)
        {
            if bool::from(earlier[..].ct_eq(share.value())) {
                return Ok(Added::Duplicate);
            }
            return Err(Error::Inconsistent(format!(
                "share {} of group {} was already given with different words: one of the two \
                 is damaged or of another set",
                share.member_index + 1,
                share.group_index + 1
            )));
        }
        group.members.push((share.member_index, share.value));
        self.set = Some(params);
        Ok(Added::Accepted)
    }

    fn complete_groups(&self) -> usize {
        self.groups.values().filter(|g| g.complete()).count()
    }

    /// Whether enough shares are there to combine.
    pub fn ready(&self) -> bool {
        self.set
            .is_some_and(|s| self.complete_groups() >= s.group_threshold as usize)
    }

    /// What was given and what is still needed, for a person.
    pub fn progress(&self) -> String {
        let Some(set) = self.set else {
            return "no shares yet".to_string();
        };
        let mut parts: Vec<String> = self
            .groups
            .iter()
            .map(|(index, g)| {
                let state = if g.complete() { " (complete)" } else { "" };
                format!(
                    "group {}: {} of {} shares needed{state}",
                    index + 1,
                    g.members.len(),
                    g.member_threshold
                )
            })
            .collect();
        let missing = (set.group_threshold as usize).saturating_sub(self.complete_groups());
        parts.push(match missing {
            0 => "ready to combine".to_string(),
            1 => "1 more group needed".to_string(),
            n => format!("{n} more groups needed"),
        });
        parts.join("; ")
    }

    /// The master secret, decrypted with `passphrase`. A wrong passphrase is
    /// not detected (it gives another secret): compare a fingerprint.
    pub fn combine(&self, passphrase: &[u8]) -> Result<SecretBytes, Error> {
        let Some(set) = self.set else {
            return Err(Error::Threshold("no shares were given".to_string()));
        };
        if !self.ready() {
            return Err(Error::Threshold(self.progress()));
        }
        let mut group_secrets: Vec<(u8, SecretBytes)> = Vec::new();
        for (&index, g) in self.groups.iter().filter(|(_, g)| g.complete()) {
            if group_secrets.len() == set.group_threshold as usize {
                break;
            }
            let members: Vec<(u8, &[u8])> = g
                .members
                .iter()
                .take(g.member_threshold as usize)
                .map(|(x, v)| (*x, &v[..]))
                .collect();
            group_secrets.push((index, recovered(g.member_threshold, &members)?));
        }
        let groups: Vec<(u8, &[u8])> = group_secrets.iter().map(|(x, v)| (*x, &v[..])).collect();
        let encrypted = recovered(set.group_threshold, &groups)?;
        let params = cipher::Params {
            identifier: set.identifier,
            extendable: set.extendable,
            iteration_exponent: set.iteration_exponent,
        };
        cipher::decrypt(&encrypted, passphrase, params).map_err(Error::Memory)
    }
}

fn recovered(threshold: u8, shares: &[(u8, &[u8])]) -> Result<SecretBytes, Error> {
    shamir::recover(threshold, shares).map_err(|f| match f {
        Failure::Digest => Error::Digest,
        Failure::Memory(m) => Error::Memory(m),
    })
}

/// The first parameter in which a share differs from the set, in words.
fn differs(set: &SetParams, share: &SetParams) -> Option<String> {
    if set.identifier != share.identifier {
        return Some(format!(
            "its set is {}, not {}",
            share.identifier, set.identifier
        ));
    }
    if set.extendable != share.extendable {
        return Some("its extendable flag differs".to_string());
    }
    if set.iteration_exponent != share.iteration_exponent {
        return Some(format!(
            "its iteration exponent is {}, not {}",
            share.iteration_exponent, set.iteration_exponent
        ));
    }
    if set.group_threshold != share.group_threshold {
        return Some(format!(
            "its group threshold is {}, not {}",
            share.group_threshold, set.group_threshold
        ));
    }
    if set.group_count != share.group_count {
        return Some(format!(
            "its group count is {}, not {}",
            share.group_count, set.group_count
        ));
    }
    if set.value_len != share.value_len {
        return Some(format!(
            "it is {} words long, the others are not",
            4 + (share.value_len * 8).div_ceil(10) + 3
        ));
    }
    None
}
