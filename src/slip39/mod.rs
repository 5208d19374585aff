//! SLIP-39 (Shamir's Secret-Sharing for Mnemonic Codes): splitting a root into mnemonic shares and combining them back.
//!
//! Written here rather than taken from a crate: the one Rust crate
//! (`sssmc39`) is an unmaintained work in progress that predates the
//! "extendable backup" flag, does not wipe secrets and draws its own
//! randomness. This module follows the SLIP-0039 specification and is
//! checked against its official test vectors and, in
//! `tests/slip39_reference.rs`, against the reference implementation.
//!
//! - Every secret (master secret, encrypted master secret, share values,
//!   Feistel halves, a share's words) lives in locked memory
//!   ([`SecretBytes`]); stack scratch is wiped; arithmetic on share values
//!   (GF(256), `gf256.rs`) runs in constant time.
//! - Every random byte comes from the caller ([`split`]'s `random`: the
//!   backing HSM's `C_GenerateRandom` in production).
//! - A wrong passphrase is not detected: SLIP-39 decrypts any passphrase to
//!   *some* secret. Callers compare the result with a known fingerprint.
//!
//! [`split`] makes shares from a [`Plan`]; a [`Combiner`] takes shares one at
//! a time (from [`Share::from_mnemonic`]) and [`Combiner::combine`]s them.

#![forbid(unsafe_code)]

mod cipher;
mod combine;
mod gf256;
mod shamir;
mod share;
mod wordlist;

pub use combine::{Added, Combiner};
pub use share::Share;

pub use crate::secure::SecretBytes;

/// The most groups, and the most members of a group.
pub const MAX_SHARES: u8 = 16;
/// The largest iteration exponent (4 bits).
pub const MAX_ITERATION_EXPONENT: u8 = 15;

/// One group of a plan: `threshold` of its `count` member shares rebuild it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    pub threshold: u8,
    pub count: u8,
}

/// How a master secret is shared: `groups_needed` of the `groups`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub groups_needed: u8,
    pub groups: Vec<Group>,
    /// PBKDF2 runs (10000 << e) iterations in all.
    pub iteration_exponent: u8,
    /// The SLIP-39 "extendable backup" flag (more shares of the same set can
    /// be made later from the master secret).
    pub extendable: bool,
}

impl Plan {
    /// Checks the plan against SLIP-39's rules; the message says what to change.
    pub fn check(&self) -> Result<(), String> {
        let n = self.groups.len();
        if n == 0 || n > MAX_SHARES as usize {
            return Err(format!(
                "a SLIP-39 plan has 1 to {MAX_SHARES} groups, not {n}"
            ));
        }
        if self.groups_needed == 0 || self.groups_needed as usize > n {
            return Err(format!(
                "the groups needed ({}) must be between 1 and the number of groups ({n})",
                self.groups_needed
            ));
        }
        for (i, g) in self.groups.iter().enumerate() {
            if g.count == 0 || g.count > MAX_SHARES {
                return Err(format!(
                    "group {} has {} shares: a group has 1 to {MAX_SHARES}",
                    i + 1,
                    g.count
                ));
            }
            if g.threshold == 0 || g.threshold > g.count {
                return Err(format!(
                    "group {} needs {} of {} shares: the threshold must be between 1 and the \
                     group's share count",
                    i + 1,
                    g.threshold,
                    g.count
                ));
            }
            if g.threshold == 1 && g.count > 1 {
                return Err(format!(
                    "group {} is 1-of-{}: SLIP-39 does not allow several copies of one share; \
                     use 1-of-1, or a threshold of 2 or more",
                    i + 1,
                    g.count
                ));
            }
        }
        if self.iteration_exponent > MAX_ITERATION_EXPONENT {
            return Err(format!(
                "the iteration exponent {} is above SLIP-39's maximum of {MAX_ITERATION_EXPONENT}",
                self.iteration_exponent
            ));
        }
        Ok(())
    }

    /// The plan in words, e.g. "2 of 3 groups: group 1 2-of-3, group 2 3-of-5, group 3 1-of-1".
    pub fn describe(&self) -> String {
        let n = self.groups.len();
        let groups: Vec<String> = self
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| format!("group {} {}-of-{}", i + 1, g.threshold, g.count))
            .collect();
        format!(
            "{} of {n} group{}: {}",
            self.groups_needed,
            if n == 1 { "" } else { "s" },
            groups.join(", ")
        )
    }
}

/// Why shares were refused or did not combine. Messages never hold share
/// values or secret bytes.
#[derive(Debug)]
pub enum Error {
    /// A word that is not on the SLIP-39 list (1-based position; the word as
    /// typed, cut short; the list word with the same first 4 letters).
    Word {
        position: usize,
        word: String,
        suggestion: Option<&'static str>,
    },
    /// The checksum words do not match: a word is wrong or out of place.
    Checksum,
    /// The number of words cannot be a SLIP-39 share.
    Length(usize),
    /// The value's padding bits are not zero.
    Padding,
    /// The share's parameters are impossible (damaged share).
    Invalid(String),
    /// The share belongs to another share set.
    OtherSet(String),
    /// The share contradicts one given before.
    Inconsistent(String),
    /// The shares do not combine: the digest of the shared secret failed.
    Digest,
    /// Not enough shares or groups yet.
    Threshold(String),
    /// Locked memory could not be had.
    Memory(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Word {
                position,
                word,
                suggestion,
            } if word.is_empty() => write!(
                f,
                "word {position} is not a SLIP-39 word (words are separated by spaces only); \
                 check it against the written share"
            ),
            Error::Word {
                position,
                word,
                suggestion,
            } => {
                write!(f, "word {position} \"{word}\" is not a SLIP-39 word")?;
                match suggestion {
                    Some(s) => write!(f, " (did you mean {s}?)"),
                    None => write!(f, "; check it against the written share"),
                }
            }
            Error::Checksum => write!(
                f,
                "the share's checksum does not match: a word is wrong, missing or out of \
                 order; check each word against the written share"
            ),
            Error::Length(n) => write!(
                f,
                "a share of {n} words cannot be a SLIP-39 share (20 words for a 128-bit \
                 secret, 33 for 256 bits): check that no word is missing or extra"
            ),
            Error::Padding => write!(
                f,
                "the share's value is malformed (nonzero padding): check its words"
            ),
            Error::Invalid(m) | Error::OtherSet(m) | Error::Inconsistent(m) => write!(f, "{m}"),
            Error::Digest => write!(
                f,
                "the shares do not combine (the shared secret's digest does not match): they \
                 are from different share sets or one is corrupted; check each share's words"
            ),
            Error::Threshold(m) => write!(f, "not enough shares: {m}"),
            Error::Memory(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

/// The caller's random bytes: fills the buffer or says why it could not.
pub type Random<'a> = shamir::Random<'a>;

/// Splits `master` (an even number of bytes, at least 16) into shares by
/// `plan`, encrypted under `passphrase` (printable ASCII; empty is allowed).
/// The result is indexed `[group][member]`.
pub fn split(
    master: &[u8],
    passphrase: &[u8],
    plan: &Plan,
    random: Random,
) -> Result<Vec<Vec<Share>>, String> {
    plan.check()?;
    if !(16..=128).contains(&master.len()) || !master.len().is_multiple_of(2) {
        return Err(format!(
            "a SLIP-39 master secret has an even number of bytes from 16 to 128, not {}",
            master.len()
        ));
    }
    if let Some(i) = passphrase.iter().position(|b| !(32..=126).contains(b)) {
        return Err(format!(
            "the passphrase has a character that is not printable ASCII at position {}: \
             SLIP-39 passphrases use only printable ASCII",
            i + 1
        ));
    }
    let mut id = [0u8; 2];
    random(&mut id).map_err(|e| format!("random bytes for the share set's identifier: {e}"))?;
    let params = cipher::Params {
        identifier: u16::from_be_bytes(id) & 0x7fff,
        extendable: plan.extendable,
        iteration_exponent: plan.iteration_exponent,
    };
    let encrypted = cipher::encrypt(master, passphrase, params)?;
    let group_count = plan.groups.len() as u8;
    let group_secrets = shamir::split(plan.groups_needed, group_count, &encrypted, random)?;
    let mut out = Vec::with_capacity(plan.groups.len());
    for (group, (group_index, group_secret)) in plan.groups.iter().zip(group_secrets) {
        let members = shamir::split(group.threshold, group.count, &group_secret, random)?;
        out.push(
            members
                .into_iter()
                .map(|(member_index, value)| Share {
                    identifier: params.identifier,
                    extendable: params.extendable,
                    iteration_exponent: params.iteration_exponent,
                    group_index,
                    group_threshold: plan.groups_needed,
                    group_count,
                    member_index,
                    member_threshold: group.threshold,
                    value,
                })
                .collect(),
        );
    }
    Ok(out)
}

/// A copy of `bytes` in locked memory.
fn copy(bytes: &[u8]) -> Result<SecretBytes, String> {
    let mut s = SecretBytes::with_capacity(bytes.len())?;
    s.push(bytes);
    Ok(s)
}

#[cfg(test)]
mod tests;
