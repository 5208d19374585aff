//! The asset lifecycle state machine: what each version may do, what a transition changes (pure).

use crate::types::{AssetId, KeyType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetState {
    Active,
    Rotating,
    Suspended,
    Retired,
}

impl AssetState {
    pub fn name(self) -> &'static str {
        match self {
            AssetState::Active => "ACTIVE",
            AssetState::Rotating => "ROTATING",
            AssetState::Suspended => "SUSPENDED",
            AssetState::Retired => "RETIRED",
        }
    }

    pub fn parse(s: &str) -> Option<AssetState> {
        [
            AssetState::Active,
            AssetState::Rotating,
            AssetState::Suspended,
            AssetState::Retired,
        ]
        .into_iter()
        .find(|st| st.name() == s)
    }
}

/// One version of an asset as recorded: its counter and (EC) public point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub version: u32,
    pub public_key: Option<Vec<u8>>,
    /// `audit::public_key_mac` of the public key, as recorded.
    pub pk_mac: Option<Vec<u8>>,
}

/// An asset as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// The row id: stable for the life of the store, used for object handles.
    pub rowid: i64,
    pub id: AssetId,
    pub key_type: KeyType,
    /// `CKA_ID` of the alias (the creator's, or the default object id).
    pub object_id: Vec<u8>,
    pub current: u32,
    pub min_usable: u32,
    pub state: AssetState,
    pub created_at: i64,
    /// For a SUSPENDED asset, the state `resume` returns it to.
    pub resumes_to: AssetState,
    /// Usable versions (`min_usable..=current`), newest first.
    pub versions: Vec<VersionRecord>,
}

impl Asset {
    pub fn version(&self, n: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == n)
    }

    /// Whether version `n` exists for callers: not trimmed, not retired.
    pub fn is_usable(&self, n: u32) -> bool {
        self.state != AssetState::Retired && (self.min_usable..=self.current).contains(&n)
    }

    /// Whether version `n` may sign (or encrypt) now: the current version
    /// while ACTIVE; during ROTATING the previous one too (the grace window).
    pub fn may_sign(&self, n: u32) -> bool {
        if !self.is_usable(n) {
            return false;
        }
        match self.state {
            AssetState::Active => n == self.current,
            AssetState::Rotating => n.saturating_add(1) >= self.current,
            AssetState::Suspended | AssetState::Retired => false,
        }
    }

    /// Whether version `n` may verify (or decrypt) now: any usable version,
    /// unless the asset is suspended.
    pub fn may_verify(&self, n: u32) -> bool {
        self.is_usable(n) && matches!(self.state, AssetState::Active | AssetState::Rotating)
    }

    /// Whether a derived key of version `n` may stay cached: EC keys only
    /// while they may sign, secret keys while they may still decrypt or
    /// verify too.
    pub fn may_hold_key(&self, n: u32) -> bool {
        self.may_sign(n) || (!self.key_type.is_ec() && self.may_verify(n))
    }

    /// Whether version `n` will never sign again, whatever happens next:
    /// trimmed, retired, or older than the current version and outside a
    /// grace window (a suspension alone is not: a resume brings it back).
    pub fn signs_never_again(&self, n: u32) -> bool {
        !self.is_usable(n) || (n < self.current && self.grace_version() != Some(n))
    }

    /// The newest version that may still sign during a grace window, i.e.
    /// the previous one while ROTATING (or suspended from ROTATING).
    fn grace_version(&self) -> Option<u32> {
        let rotating = self.state == AssetState::Rotating
            || (self.state == AssetState::Suspended && self.resumes_to == AssetState::Rotating);
        rotating.then(|| self.current.saturating_sub(1))
    }
}

/// A lifecycle transition (design §3). Anything not allowed from the asset's
/// state is refused with an error that names the asset, state and transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// current + 1; with `grace` the asset goes ROTATING and the previous
    /// version may still sign until `Finish`.
    Rotate {
        grace: bool,
    },
    Finish,
    /// Raise `min_usable` to N.
    Trim(u32),
    Suspend,
    Resume,
    Retire,
}

impl Transition {
    /// The operation a quorum rule names for it (`rotate`, `trim`, …).
    pub fn operation(&self) -> &'static str {
        match self {
            Transition::Rotate { .. } => "rotate",
            Transition::Finish => "finish",
            Transition::Trim(_) => "trim",
            Transition::Suspend => "suspend",
            Transition::Resume => "resume",
            Transition::Retire => "retire",
        }
    }

    pub fn name(&self) -> String {
        match self {
            Transition::Rotate { grace: false } => "rotate".into(),
            Transition::Rotate { grace: true } => "rotate --grace".into(),
            Transition::Finish => "finish".into(),
            Transition::Trim(n) => format!("trim {n}"),
            Transition::Suspend => "suspend".into(),
            Transition::Resume => "resume".into(),
            Transition::Retire => "retire".into(),
        }
    }
}

/// A new asset with its first version.
pub struct NewAsset<'a> {
    pub id: &'a AssetId,
    pub key_type: KeyType,
    pub object_id: &'a [u8],
    pub public_key: Option<&'a [u8]>,
}

/// What a transition changes, once the asset's state allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// A new current version, its public key, and the state after.
    Rotate {
        version: u32,
        public_key: Option<&'a [u8]>,
        state: AssetState,
    },
    /// Back to ACTIVE: the grace window ends.
    Finish,
    /// `min_usable` raised to N.
    Trim(u32),
    /// SUSPENDED, remembering the state `resume` returns to.
    Suspend {
        resumes_to: AssetState,
    },
    /// Back to the state before the suspension.
    Resume {
        to: AssetState,
    },
    Retire,
}

/// Why a transition does not apply to the asset as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The state does not allow it; why (the caller names asset, state and
    /// transition).
    Refused(String),
    /// A rotation's new version was derived for another state of the asset
    /// (or, for an EC key, without its public key): derive again.
    Stale,
}

impl Asset {
    /// Decides transition `t` on the asset as read: what it changes, or why
    /// not. A rotation brings `next`, the new version (and its public key)
    /// as derived for `current + 1`.
    pub fn plan<'a>(
        &self,
        t: Transition,
        next: Option<(u32, Option<&'a [u8]>)>,
    ) -> Result<Change<'a>, Denied> {
        use AssetState::*;
        let refuse = |why: String| Err(Denied::Refused(why));
        match (t, self.state) {
            (_, Retired) => refuse("a retired asset is final".into()),
            (Transition::Rotate { grace }, Active) => {
                let Some(new) = self.current.checked_add(1) else {
                    return refuse("the counter is at its maximum (4294967295)".into());
                };
                // An EC version without its public key could never be verified
                // (or signed: the derived key is checked against it); the
                // caller derives again for the state it reads next.
                let ready = |(v, pk): &(u32, Option<&[u8]>)| {
                    *v == new && (pk.is_some() || !self.key_type.is_ec())
                };
                let Some((version, public_key)) = next.filter(ready) else {
                    return Err(Denied::Stale);
                };
                let state = if grace { Rotating } else { Active };
                Ok(Change::Rotate {
                    version,
                    public_key,
                    state,
                })
            }
            (Transition::Rotate { .. }, Rotating) => refuse(format!(
                "version {} is still in its grace window; run `p11derive asset finish {}` first",
                self.current.saturating_sub(1),
                self.id.as_str()
            )),
            (Transition::Rotate { .. }, Suspended) => refuse(format!(
                "resume it first (`p11derive asset resume {}`)",
                self.id.as_str()
            )),
            (Transition::Finish, Rotating) => Ok(Change::Finish),
            (Transition::Finish, _) => refuse("only a ROTATING asset can finish".into()),
            (Transition::Trim(n), _) => {
                if n <= self.min_usable {
                    return refuse(format!(
                        "versions below {} are already trimmed; trim only raises min_usable",
                        self.min_usable
                    ));
                }
                if n > self.current {
                    return refuse(format!(
                        "the current version is {}; trim cannot go above it",
                        self.current
                    ));
                }
                if let Some(grace) = self.grace_version().filter(|g| n > *g) {
                    return refuse(format!(
                        "version {grace} is still in its grace window; finish the rotation first"
                    ));
                }
                Ok(Change::Trim(n))
            }
            (Transition::Suspend, Active | Rotating) => Ok(Change::Suspend {
                resumes_to: self.state,
            }),
            (Transition::Suspend, _) => refuse("it is already suspended".into()),
            (Transition::Resume, Suspended) => Ok(Change::Resume {
                to: self.resumes_to,
            }),
            (Transition::Resume, _) => refuse("only a SUSPENDED asset can resume".into()),
            (Transition::Retire, _) => Ok(Change::Retire),
        }
    }
}

/// An asset named "a" with no versions loaded, for tests.
#[cfg(test)]
pub(super) fn sample(key_type: KeyType, state: AssetState, min_usable: u32, current: u32) -> Asset {
    Asset {
        key_type,
        ..as_recorded(state, current, min_usable)
    }
}

/// An asset with only the state a state-change record leaves (state,
/// current, min_usable): enough for `may_sign` and `may_verify`, as `audit
/// verify` replays the chain.
pub fn as_recorded(state: AssetState, current: u32, min_usable: u32) -> Asset {
    Asset {
        rowid: 1,
        id: AssetId::new("a").expect("a valid id"),
        key_type: KeyType::P256,
        object_id: b"a".to_vec(),
        current,
        min_usable,
        state,
        created_at: 0,
        resumes_to: AssetState::Active,
        versions: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::sample as asset;
    use super::*;

    #[test]
    fn a_version_that_signs_never_again_is_past_every_state() {
        use AssetState::*;
        // min 2, current 4: version 4 may sign again after a suspension; 3
        // only in a grace window (rotating, or suspended from rotating).
        let mut s = asset(KeyType::Secp256k1, Suspended, 2, 4);
        s.resumes_to = Rotating;
        let cases = [
            (
                asset(KeyType::Secp256k1, Active, 2, 4),
                [true, true, true, false, true],
            ),
            (
                asset(KeyType::Secp256k1, Rotating, 2, 4),
                [true, true, false, false, true],
            ),
            (
                asset(KeyType::Secp256k1, Suspended, 2, 4),
                [true, true, true, false, true],
            ),
            (s, [true, true, false, false, true]),
            (asset(KeyType::Secp256k1, Retired, 2, 4), [true; 5]),
        ];
        for (a, never) in cases {
            for n in 1..=5u32 {
                let want = never[n as usize - 1];
                assert_eq!(a.signs_never_again(n), want, "{:?} version {n}", a.state);
            }
        }
    }

    #[test]
    fn each_state_allows_what_it_should() {
        use AssetState::*;
        // For an asset at min 2, current 4: per state, the versions that may
        // sign and those that may verify, of versions 1 to 5.
        let table = [
            (Active, &[4][..], &[2, 3, 4][..]),
            (Rotating, &[3, 4], &[2, 3, 4]),
            (Suspended, &[], &[]),
            (Retired, &[], &[]),
        ];
        let table = table.iter().flat_map(|&(state, signs, verifies)| {
            (1..=5).map(move |n| (state, n, signs.contains(&n), verifies.contains(&n)))
        });
        for (state, n, sign, verify) in table {
            let a = asset(KeyType::P256, state, 2, 4);
            assert_eq!(a.may_sign(n), sign, "{state:?} sign {n}");
            assert_eq!(a.may_verify(n), verify, "{state:?} verify {n}");
            assert_eq!(a.is_usable(n), state != Retired && (2..=4).contains(&n));
            // EC keys are held only while they may sign; secret keys while
            // they may still open too.
            assert_eq!(a.may_hold_key(n), sign, "{state:?} EC hold {n}");
            let s = asset(KeyType::Aes256, state, 2, 4);
            assert_eq!(
                s.may_hold_key(n),
                sign || verify,
                "{state:?} secret hold {n}"
            );
        }
    }

    #[test]
    fn the_grace_window_is_the_previous_version_only() {
        let mut a = asset(KeyType::P256, AssetState::Rotating, 1, 4);
        assert_eq!(a.grace_version(), Some(3));
        assert!(a.may_sign(3) && !a.may_sign(2));
        // Suspended from ROTATING: still a grace version (for trim), but
        // nothing signs.
        a.state = AssetState::Suspended;
        a.resumes_to = AssetState::Rotating;
        assert_eq!(a.grace_version(), Some(3));
        assert!(!a.may_sign(3) && !a.may_sign(4));
        a.resumes_to = AssetState::Active;
        assert_eq!(a.grace_version(), None);
        a.state = AssetState::Active;
        assert_eq!(a.grace_version(), None);
        // A grace window whose previous version was trimmed lets only the
        // current one sign.
        let t = asset(KeyType::P256, AssetState::Rotating, 4, 4);
        assert!(t.may_sign(4) && !t.may_sign(3));
    }

    #[test]
    fn the_counter_at_its_maximum() {
        let max = u32::MAX;
        let a = asset(KeyType::P256, AssetState::Active, max - 1, max);
        assert!(a.may_sign(max) && !a.may_sign(max - 1) && a.may_verify(max - 1));
        let r = asset(KeyType::P256, AssetState::Rotating, 1, max);
        assert!(r.may_sign(max) && r.may_sign(max - 1) && !r.may_sign(max - 2));
        assert_eq!(r.grace_version(), Some(max - 1));
        assert_eq!(
            a.plan(Transition::Rotate { grace: false }, Some((0, Some(b"pk")))),
            Err(Denied::Refused(
                "the counter is at its maximum (4294967295)".into()
            ))
        );
        // Version 0 exists at no counter.
        let first = asset(KeyType::P256, AssetState::Rotating, 1, 1);
        assert_eq!(first.grace_version(), Some(0));
        assert!(!first.may_sign(0) && first.may_sign(1));
    }

    #[test]
    fn a_rotation_needs_the_version_derived_for_it() {
        let ec = asset(KeyType::P256, AssetState::Active, 1, 2);
        let pk: &[u8] = b"pk";
        assert_eq!(
            ec.plan(Transition::Rotate { grace: true }, Some((3, Some(pk)))),
            Ok(Change::Rotate {
                version: 3,
                public_key: Some(pk),
                state: AssetState::Rotating
            })
        );
        let stale = Err(Denied::Stale);
        let rotate = Transition::Rotate { grace: false };
        assert_eq!(ec.plan(rotate, Some((4, Some(pk)))), stale);
        assert_eq!(ec.plan(rotate, Some((3, None))), stale);
        assert_eq!(ec.plan(rotate, None), stale);
        // A secret key has no public key to bring.
        let aes = asset(KeyType::Aes256, AssetState::Active, 1, 2);
        assert_eq!(
            aes.plan(rotate, Some((3, None))),
            Ok(Change::Rotate {
                version: 3,
                public_key: None,
                state: AssetState::Active
            })
        );
    }

    #[test]
    fn each_state_refuses_what_it_should() {
        use AssetState::*;
        let refused = |s: AssetState, t: Transition| {
            let mut a = asset(KeyType::P256, s, 1, 3);
            a.resumes_to = Rotating;
            match a.plan(t, Some((4, Some(b"pk")))) {
                Err(Denied::Refused(why)) => why,
                other => panic!("{s:?} {t:?}: {other:?}"),
            }
        };
        for t in [Transition::Finish, Transition::Resume, Transition::Retire] {
            assert_eq!(refused(Retired, t), "a retired asset is final");
        }
        assert_eq!(
            refused(Rotating, Transition::Rotate { grace: false }),
            "version 2 is still in its grace window; run `p11derive asset finish a` first"
        );
        assert_eq!(
            refused(Suspended, Transition::Rotate { grace: true }),
            "resume it first (`p11derive asset resume a`)"
        );
        assert_eq!(
            refused(Active, Transition::Finish),
            "only a ROTATING asset can finish"
        );
        assert_eq!(
            refused(Suspended, Transition::Suspend),
            "it is already suspended"
        );
        assert_eq!(
            refused(Rotating, Transition::Resume),
            "only a SUSPENDED asset can resume"
        );
        assert_eq!(
            refused(Active, Transition::Trim(1)),
            "versions below 1 are already trimmed; trim only raises min_usable"
        );
        assert_eq!(
            refused(Active, Transition::Trim(4)),
            "the current version is 3; trim cannot go above it"
        );
        for s in [Rotating, Suspended] {
            assert_eq!(
                refused(s, Transition::Trim(3)),
                "version 2 is still in its grace window; finish the rotation first"
            );
        }
    }

    #[test]
    fn allowed_transitions_say_what_they_change() {
        use AssetState::*;
        let mut a = asset(KeyType::P256, Rotating, 1, 3);
        assert_eq!(a.plan(Transition::Finish, None), Ok(Change::Finish));
        assert_eq!(a.plan(Transition::Trim(2), None), Ok(Change::Trim(2)));
        assert_eq!(
            a.plan(Transition::Suspend, None),
            Ok(Change::Suspend {
                resumes_to: Rotating
            })
        );
        a.state = Suspended;
        a.resumes_to = Rotating;
        assert_eq!(
            a.plan(Transition::Resume, None),
            Ok(Change::Resume { to: Rotating })
        );
        assert_eq!(a.plan(Transition::Retire, None), Ok(Change::Retire));
        a.state = Active;
        assert_eq!(a.plan(Transition::Trim(3), None), Ok(Change::Trim(3)));
    }

    #[test]
    fn states_and_transitions_are_named() {
        for s in [
            AssetState::Active,
            AssetState::Rotating,
            AssetState::Suspended,
            AssetState::Retired,
        ] {
            assert_eq!(AssetState::parse(s.name()), Some(s));
        }
        assert_eq!(AssetState::parse("active"), None);
        assert_eq!(Transition::Trim(7).name(), "trim 7");
        assert_eq!(Transition::Rotate { grace: true }.name(), "rotate --grace");
    }
}
