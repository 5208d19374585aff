use super::*;

// Mechanisms, rates, hours, days, times and policies.
mod policy;

fn pat(s: &str) -> Pattern {
    Pattern::parse(s).expect(s)
}

/// Each of `bad` is refused with a message that names it (quoted) and says `hint`.
fn refuses<T: fmt::Debug>(parse: impl Fn(&str) -> Result<T, String>, bad: &[&str], hint: &str) {
    for b in bad {
        let e = parse(b).expect_err(b);
        assert!(
            e.contains(&format!("{b:?}")) && e.contains(hint),
            "{b:?}: {e}"
        );
    }
}

#[test]
fn roles_by_name() {
    for r in Role::ALL {
        assert_eq!(Role::parse(r.name()), Some(r));
        assert_eq!(Role::parse(&r.name().to_uppercase()), Some(r));
        assert_eq!(r.to_string(), r.name());
    }
    assert_eq!(Role::parse("Signer"), Some(Role::Signer));
    let names: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(names, ["admin", "officer", "signer", "auditor"]);
    for bad in ["", "root", "sign", "admins", "audit or"] {
        assert_eq!(Role::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn patterns_parse() {
    for good in ["*", "?", "hot-*", "a.b_c-D9", "*-?", &"x".repeat(64)] {
        assert_eq!(pat(good).as_str(), good);
        assert_eq!(pat(good).to_string(), good);
    }
    assert_eq!(Pattern::any().as_str(), "*");
    refuses(
        Pattern::parse,
        &["", "hot *", "hot/1", "[ab]", "é", &"x".repeat(65)],
        "A-Z a-z 0-9 . _ -",
    );
    let list = parse_patterns("hot-*,warm-1").unwrap();
    assert_eq!(list, [pat("hot-*"), pat("warm-1")]);
    assert_eq!(patterns_text(&list), "hot-*,warm-1");
    assert_eq!(parse_patterns(" a , b ").unwrap(), [pat("a"), pat("b")]);
    refuses(
        parse_patterns,
        &["", ",", "a,", ",a", "a,,b", "a, ,b"],
        "empty item",
    );
    let e = parse_patterns("a,b c").unwrap_err();
    assert!(e.contains("\"b c\""), "{e}");
}

#[test]
fn glob_cases() {
    let cases: &[(&str, &str, bool)] = &[
        ("*", "anything-at.all_9", true),
        ("*", "x", true),
        ("*", "", true),
        ("**", "", true),
        ("hot-1", "hot-1", true),
        ("hot-1", "hot-10", false),
        ("hot-1", "hot-", false),
        ("hot-1", "Hot-1", false),
        ("hot-*", "hot-", true),
        ("hot-*", "hot-1", true),
        ("hot-*", "hot", false),
        ("hot-*", "xhot-1", false),
        ("*-1", "hot-1", true),
        ("*-1", "hot-12", false),
        ("a*b*c", "abc", true),
        ("a*b*c", "aXbYc", true),
        ("a*b*c", "abcbc", true),
        ("a*b*c", "acb", false),
        ("a*b*c", "abcx", false),
        ("a*b*c", "ab", false),
        ("a*a", "a", false),
        ("a*a", "aa", true),
        ("*ab*ab*", "abab", true),
        ("*ab*ab*", "aba", false),
        ("?", "a", true),
        ("?", "", false),
        ("?", "ab", false),
        ("h?t-?", "hot-1", true),
        ("h?t-?", "ht-1", false),
        ("*?", "", false),
        ("*?", "z", true),
        ("?*?", "a", false),
        ("?*?", "ab", true),
        ("*.?", "key.1", true),
        ("*.?", "key.10", false),
        // Not asset ids, but matched by characters all the same.
        ("*", "é", true),
        ("?", "é", true),
        ("h?t-*", "hét-1", true),
        ("h??t", "hét", false),
        ("*t", "héé", false),
    ];
    for (p, a, want) in cases {
        assert_eq!(pat(p).matches(a), *want, "{p:?} ~ {a:?}");
    }
}

/// Every short pattern over `a b * ?` against every short text over `a b`,
/// compared with an obviously correct (exponential) matcher.
#[test]
fn glob_agrees_with_a_reference_matcher() {
    fn reference(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some((&c, rest)) => t
                .split_first()
                .is_some_and(|(&x, tr)| (c == b'?' || c == x) && reference(rest, tr)),
        }
    }
    fn words(alphabet: &[u8], max: usize) -> Vec<Vec<u8>> {
        let mut all = vec![Vec::new()];
        let mut last = vec![Vec::new()];
        for _ in 0..max {
            last = last
                .iter()
                .flat_map(|w| {
                    alphabet.iter().map(move |c| {
                        let mut w = w.clone();
                        w.push(*c);
                        w
                    })
                })
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }
    let texts = words(b"ab", 6);
    let mut checked = 0;
    for p in words(b"ab*?", 5).into_iter().filter(|p| !p.is_empty()) {
        let pattern = pat(std::str::from_utf8(&p).unwrap());
        for t in &texts {
            let text = std::str::from_utf8(t).unwrap();
            assert_eq!(
                pattern.matches(text),
                reference(&p, t),
                "{pattern} ~ {text:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 1364 * 127);
}

#[test]
fn long_inputs_match_fast() {
    let long = "a".repeat(200_000);
    let start = std::time::Instant::now();
    // The shapes that make backtracking matchers quadratic or worse.
    assert!(!pat("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b").matches(&long));
    assert!(!pat("*aaaaaaaaaaaaaaaaaaaaaaaaaaaaab*").matches(&long));
    assert!(!pat(&format!("{}*b", "?".repeat(40))).matches(&long));
    assert!(pat("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a").matches(&long));
    assert!(pat("a*").matches(&long));
    assert!(!pat("a").matches(&long));
    let took = start.elapsed();
    assert!(took.as_millis() < 2_000, "took {took:?}");
}

/// The role matrix, written out: which role may do each action.
const MATRIX: [(Action, [bool; 4]); 15] = {
    use Action::*;
    use UseKind::*;
    //               admin  officer signer auditor
    [
        (Use(Sign), [false, false, true, false]),
        (Use(Verify), [false, false, true, false]),
        (Use(Encrypt), [false, false, true, false]),
        (Use(Decrypt), [false, false, true, false]),
        (Use(Wrap), [false, false, true, false]),
        (Use(Unwrap), [false, false, true, false]),
        (CreateAsset, [false, true, false, false]),
        (Lifecycle, [false, true, false, false]),
        (SessionObjects, [false, false, true, false]),
        (SeePrivate, [false, true, true, false]),
        (ManageUsers, [true, false, false, false]),
        (ManagePolicy, [true, false, false, false]),
        (ManageRoot, [true, false, false, false]),
        (ReadAudit, [false, false, false, true]),
        (ReadPublic, [true, true, true, true]),
    ]
};

#[test]
fn every_role_and_action() {
    assert_eq!(MATRIX.map(|(a, _)| a), Action::ALL);
    let any = [Pattern::any()];
    for (action, allowed) in MATRIX {
        for (i, role) in Role::ALL.into_iter().enumerate() {
            for asset in [Some("hot-1"), None] {
                let got = permits(&[role], &any, action, asset);
                if allowed[i] {
                    assert_eq!(got, Ok(()), "{role} {action:?} {asset:?}");
                    continue;
                }
                let d = got.expect_err(&format!("{role} {action:?}"));
                assert_eq!(d.rule, "role");
                assert!(
                    d.why.contains(&format!("to {} needs", action.name())),
                    "{d}"
                );
                assert!(d.why.contains(&format!("holds only {role}")), "{d}");
                // Names each role that would grant it.
                for (j, other) in Role::ALL.into_iter().enumerate() {
                    assert_eq!(
                        d.why.contains(&format!("role {other}"))
                            || d.why.contains(&format!(" or {other}")),
                        allowed[j],
                        "{d}"
                    );
                }
            }
        }
        // No role at all: public objects only.
        let none = permits(&[], &any, action, Some("hot-1"));
        assert_eq!(none.is_ok(), action == Action::ReadPublic, "{action:?}");
        if let Err(d) = none {
            assert!(d.why.contains("holds no role"), "{d}");
        }
    }
}

#[test]
fn several_roles_grant_the_union() {
    let any = [Pattern::any()];
    let subsets = (0u8..16).map(|bits| -> Vec<Role> {
        Role::ALL
            .into_iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, r)| r)
            .collect()
    });
    for roles in subsets {
        for (action, allowed) in MATRIX {
            let want = action == Action::ReadPublic || roles.iter().any(|r| allowed[*r as usize]);
            assert_eq!(
                permits(&roles, &any, action, Some("a")).is_ok(),
                want,
                "{roles:?} {action:?}"
            );
        }
    }
    let d = permits(
        &[Role::Officer, Role::Auditor],
        &any,
        Action::Use(UseKind::Sign),
        None,
    )
    .unwrap_err();
    assert_eq!(
        d.why,
        "to sign needs the role signer; this user holds only officer, auditor \
         (an admin can grant roles with `p11derive user roles`)"
    );
    let d = permits(&[Role::Auditor], &any, Action::SeePrivate, None).unwrap_err();
    assert!(d.why.contains("needs the role officer or signer"), "{d}");
}

#[test]
fn actions_on_an_asset_need_a_matching_pattern() {
    let hot = parse_patterns("hot-*,warm-1").unwrap();
    let signer = [Role::Signer];
    let sign = Action::Use(UseKind::Sign);
    assert_eq!(permits(&signer, &hot, sign, Some("hot-7")), Ok(()));
    assert_eq!(permits(&signer, &hot, sign, Some("warm-1")), Ok(()));
    let d = permits(&signer, &hot, sign, Some("cold-1")).unwrap_err();
    assert_eq!(d.rule, "pattern");
    assert_eq!(
        d.why,
        "to sign on asset \"cold-1\" needs an asset pattern that matches it; \
         this user's patterns are hot-*,warm-1"
    );
    let d = permits(&signer, &hot, Action::SeePrivate, Some("warm-2")).unwrap_err();
    assert_eq!(d.rule, "pattern");
    // Without an asset there is nothing to match.
    assert_eq!(permits(&signer, &hot, Action::SessionObjects, None), Ok(()));
    assert_eq!(permits(&signer, &[], sign, None), Ok(()));
    let d = permits(&[Role::Officer], &[], Action::CreateAsset, Some("x")).unwrap_err();
    assert!(d.why.contains("has no asset patterns"), "{d}");
    // Public objects of any asset, whatever the patterns.
    assert_eq!(
        permits(&[], &[], Action::ReadPublic, Some("cold-1")),
        Ok(())
    );
    // The role is checked first.
    let d = permits(&[Role::Auditor], &hot, sign, Some("cold-1")).unwrap_err();
    assert_eq!(d.rule, "role");
    assert_eq!(d.to_string(), format!("{} (rule role)", d.why));
}

#[test]
fn action_names() {
    let names: Vec<String> = Action::ALL.iter().map(Action::name).collect();
    assert_eq!(
        names,
        [
            "sign",
            "verify",
            "encrypt",
            "decrypt",
            "wrap",
            "unwrap",
            "create an asset",
            "change an asset's lifecycle",
            "make session objects",
            "see private objects",
            "manage users",
            "manage policies",
            "recover the root or drill its backup shares",
            "read the audit log",
            "read public objects",
        ]
    );
    assert_eq!(UseKind::ALL.map(UseKind::name)[5], "unwrap");
}

#[test]
fn no_role_does_everything_alone() {
    use Role::*;
    for bits in 0u8..16 {
        let roles: Vec<Role> = Role::ALL
            .into_iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, r)| r)
            .collect();
        let want = roles.contains(&Admin) && (roles.contains(&Signer) || roles.contains(&Officer));
        assert_eq!(too_powerful(&roles), want, "{roles:?}");
    }
    assert!(too_powerful(&[Signer, Admin]));
    assert!(too_powerful(&[Admin, Officer, Auditor]));
    assert!(!too_powerful(&[Admin, Auditor]));
    assert!(!too_powerful(&[Officer, Signer, Auditor]));
    assert!(!too_powerful(&[]));
}
