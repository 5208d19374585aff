//! Round trips, refusals and messages of the SLIP-39 module.

use std::cell::Cell;

use super::*;

/// Deterministic bytes standing in for the HSM's random generator.
pub(super) fn random_from(seed: u8) -> impl Fn(&mut [u8]) -> Result<(), String> {
    let state = Cell::new(u32::from(seed).wrapping_mul(2_654_435_761) | 1);
    move |buf: &mut [u8]| {
        for b in buf.iter_mut() {
            let mut s = state.get();
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            state.set(s);
            *b = (s >> 24) as u8;
        }
        Ok(())
    }
}

const MASTER: [u8; 32] = *b"p11derive SLIP-39 test root 32B!";

fn plan(groups_needed: u8, groups: &[(u8, u8)], extendable: bool) -> Plan {
    Plan {
        groups_needed,
        groups: groups
            .iter()
            .map(|&(threshold, count)| Group { threshold, count })
            .collect(),
        iteration_exponent: 0,
        extendable,
    }
}

/// A share read back from its own words (a copy with the same fields).
fn reread(share: &Share) -> Share {
    let words = share.mnemonic().unwrap();
    Share::from_mnemonic(&words).unwrap()
}

fn combine_picks(
    shares: &[Vec<Share>],
    picks: &[(usize, usize)],
    passphrase: &[u8],
) -> Result<SecretBytes, Error> {
    let mut c = Combiner::new();
    for &(g, m) in picks {
        assert_eq!(c.add(reread(&shares[g][m])).unwrap(), Added::Accepted);
    }
    c.combine(passphrase)
}

#[test]
fn plans_round_trip_with_and_without_passphrase_and_extendable_flag() {
    let cases: [(u8, &[(u8, u8)]); 5] = [
        (1, &[(1, 1)]),
        (1, &[(2, 3)]),
        (1, &[(3, 5)]),
        (2, &[(2, 3), (3, 5), (1, 1)]),
        (1, &[(16, 16)]),
    ];
    for (needed, groups) in cases {
        for extendable in [false, true] {
            for passphrase in [&b""[..], b"custody"] {
                let p = plan(needed, groups, extendable);
                let random = random_from(needed ^ groups.len() as u8);
                let shares = split(&MASTER, passphrase, &p, &random).unwrap();
                assert_eq!(shares.len(), groups.len());
                // The first `threshold` members of the first `needed` groups.
                let picks: Vec<(usize, usize)> = groups
                    .iter()
                    .enumerate()
                    .take(needed as usize)
                    .flat_map(|(g, &(t, _))| (0..t as usize).map(move |m| (g, m)))
                    .collect();
                let got = combine_picks(&shares, &picks, passphrase).unwrap();
                assert_eq!(&got[..], &MASTER[..], "{} {extendable}", p.describe());
                let s = &shares[0][0];
                assert_eq!(s.extendable, extendable);
                assert_eq!(s.mnemonic().unwrap().split(|&b| b == b' ').count(), 33);
            }
        }
    }
}

#[test]
fn every_threshold_subset_combines_and_fewer_are_refused() {
    let p = plan(2, &[(2, 3), (1, 1)], false);
    let shares = split(&MASTER, b"", &p, &random_from(3)).unwrap();
    for a in 0..3 {
        for b in a + 1..3 {
            let got = combine_picks(&shares, &[(0, a), (0, b), (1, 0)], b"").unwrap();
            assert_eq!(&got[..], &MASTER[..]);
        }
        let mut c = Combiner::new();
        c.add(reread(&shares[0][a])).unwrap();
        c.add(reread(&shares[1][0])).unwrap();
        assert!(!c.ready());
        let e = c.combine(b"").unwrap_err();
        assert!(matches!(e, Error::Threshold(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "not enough shares: group 1: 1 of 2 shares needed; group 2: 1 of 1 shares needed \
             (complete); 1 more group needed"
        );
    }
}

#[test]
fn shares_of_another_set_and_contradictions_are_refused() {
    let p = plan(1, &[(2, 3)], false);
    let one = split(&MASTER, b"", &p, &random_from(1)).unwrap();
    let two = split(&MASTER, b"", &p, &random_from(2)).unwrap();
    assert_ne!(one[0][0].identifier, two[0][0].identifier);
    let mut c = Combiner::new();
    c.add(reread(&one[0][0])).unwrap();
    assert_eq!(c.identifier(), Some(one[0][0].identifier));
    let e = c.add(reread(&two[0][1])).unwrap_err();
    assert!(matches!(e, Error::OtherSet(_)), "{e}");
    assert_eq!(c.add(reread(&one[0][0])).unwrap(), Added::Duplicate);
    // The same member index with another value.
    let mut forged = reread(&two[0][0]);
    forged.identifier = one[0][0].identifier;
    let e = c.add(forged).unwrap_err();
    assert!(matches!(e, Error::Inconsistent(_)), "{e}");
    assert!(e
        .to_string()
        .contains("share 1 of group 1 was already given"));
}

#[test]
fn a_changed_word_fails_the_checksum_and_an_unknown_word_is_named() {
    let p = plan(1, &[(1, 1)], true);
    let shares = split(&MASTER, b"", &p, &random_from(9)).unwrap();
    let words = shares[0][0].mnemonic().unwrap();
    let text = std::str::from_utf8(&words).unwrap().to_string();
    let mut list: Vec<&str> = text.split(' ').collect();
    let original = list[10];
    list[10] = if original == "academic" {
        "acid"
    } else {
        "academic"
    };
    let e = Share::from_mnemonic(list.join(" ").as_bytes()).unwrap_err();
    assert!(matches!(e, Error::Checksum), "{e}");
    list[10] = "acadmic";
    let e = Share::from_mnemonic(list.join(" ").as_bytes()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "word 11 \"acadmic\" is not a SLIP-39 word (did you mean academic?)"
    );
    list[10] = original;
    // Words run together by another separator are share material: only the
    // position is said, never the letters.
    let glued = format!("{},{}", list[11], list[12]);
    let mut joined = list.clone();
    joined[11] = &glued;
    let e = Share::from_mnemonic(joined.join(" ").as_bytes()).unwrap_err();
    let said = e.to_string();
    assert!(said.starts_with("word 12 is not a SLIP-39 word"), "{said}");
    assert!(
        !said.contains(list[11]) && !said.contains(list[12]),
        "{said}"
    );
    // Case and spacing do not matter.
    list[10] = original;
    let loud = format!("  {}\n", list.join(" \t ").to_uppercase());
    let again = Share::from_mnemonic(loud.as_bytes()).unwrap();
    assert_eq!(&again.mnemonic().unwrap()[..], &words[..]);
    for n in [19, 21] {
        let e = Share::from_mnemonic(list[..n].join(" ").as_bytes()).unwrap_err();
        assert!(matches!(e, Error::Length(k) if k == n), "{e}");
    }
}

#[test]
fn a_wrong_passphrase_gives_another_secret_undetected() {
    let p = plan(1, &[(1, 1)], false);
    let shares = split(&MASTER, b"right", &p, &random_from(4)).unwrap();
    let got = combine_picks(&shares, &[(0, 0)], b"wrong").unwrap();
    assert_eq!(got.len(), MASTER.len());
    assert_ne!(&got[..], &MASTER[..]);
}

#[test]
fn share_fields_survive_the_words() {
    let p = Plan {
        iteration_exponent: 2,
        ..plan(2, &[(2, 3), (3, 5)], false)
    };
    let shares = split(&MASTER, b"", &p, &random_from(5)).unwrap();
    let s = &shares[1][4];
    let r = reread(s);
    assert_eq!(
        (
            r.identifier,
            r.extendable,
            r.iteration_exponent,
            r.group_index
        ),
        (s.identifier, false, 2, 1)
    );
    assert_eq!(
        (
            r.group_threshold,
            r.group_count,
            r.member_index,
            r.member_threshold
        ),
        (2, 2, 4, 3)
    );
    assert_eq!(r.set_id(), s.identifier.to_string());
    assert!(!format!("{r:?}").contains(&format!("{:?}", &r.value[..4])));
}

#[test]
fn plans_are_checked_and_described() {
    let p = plan(2, &[(2, 3), (3, 5), (1, 1)], false);
    assert_eq!(p.check(), Ok(()));
    assert_eq!(
        p.describe(),
        "2 of 3 groups: group 1 2-of-3, group 2 3-of-5, group 3 1-of-1"
    );
    assert_eq!(
        plan(1, &[(2, 3)], false).describe(),
        "1 of 1 group: group 1 2-of-3"
    );
    for bad in [
        plan(0, &[(2, 3)], false),
        plan(2, &[(2, 3)], false),
        plan(1, &[(1, 2)], false),
        plan(1, &[(4, 3)], false),
        plan(1, &[(2, 17)], false),
        plan(1, &[], false),
        Plan {
            iteration_exponent: 16,
            ..plan(1, &[(1, 1)], false)
        },
    ] {
        assert!(bad.check().is_err(), "{bad:?}");
        assert!(split(&MASTER, b"", &bad, &random_from(1)).is_err());
    }
    let ok = plan(1, &[(1, 1)], false);
    assert!(split(&MASTER[..15], b"", &ok, &random_from(1)).is_err());
    assert!(split(&MASTER, b"caf\xc3\xa9", &ok, &random_from(1)).is_err());
    let failing = |_: &mut [u8]| Err("the HSM is gone".to_string());
    let e = split(&MASTER, b"", &ok, &failing).unwrap_err();
    assert!(e.contains("the HSM is gone"), "{e}");
}
