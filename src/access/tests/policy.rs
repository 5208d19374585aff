use super::{pat, refuses};
use crate::access::*;
use crate::ck::*;

#[test]
fn mechanisms_by_name_or_number() {
    let cases: &[(&str, CK_MECHANISM_TYPE)] = &[
        ("ECDSA", CKM_ECDSA),
        ("CKM_ECDSA", CKM_ECDSA),
        ("ckm_ecdsa", CKM_ECDSA),
        ("ecdsa-sha256", CKM_ECDSA_SHA256),
        ("ECDSA_SHA512", CKM_ECDSA_SHA512),
        ("AES-GCM", CKM_AES_GCM),
        ("aes-key-wrap-kwp", CKM_AES_KEY_WRAP_KWP),
        ("SHA256-HMAC", CKM_SHA256_HMAC),
        ("HMAC-SHA384", CKM_SHA384_HMAC),
        ("ckm-sha512-hmac", CKM_SHA512_HMAC),
        ("sha256", CKM_SHA256),
        ("0x1041", 0x1041),
        ("0X1041", 0x1041),
        ("4161", 0x1041),
        ("0x80000001", 0x8000_0001),
        ("0", 0),
        (" ecdsa ", CKM_ECDSA),
    ];
    for (s, want) in cases {
        assert_eq!(parse_mechanism(s), Ok(*want), "{s:?}");
    }
    assert_eq!(CKM_ECDSA, 0x1041);
    refuses(
        parse_mechanism,
        &[
            "",
            "ECDSA-SHA3",
            "RSA",
            "0x",
            "0xg1",
            "-1",
            "0x1_0000_0000_0000_0000",
            "99999999999999999999",
            "HMAC",
        ],
        "CKM_ECDSA_SHA256",
    );
    refuses(parse_mechanism, &["rsa"], "e.g. 0x1041");
}

#[test]
fn rates() {
    refuses(Rate::parse, &["100/"], "there is no window after '/'");
    let cases: &[(&str, u32, u32)] = &[
        ("100/60s", 100, 60),
        ("100/60", 100, 60),
        ("100/min", 100, 60),
        ("100/1m", 100, 60),
        ("100/m", 100, 60),
        ("100/M", 100, 60),
        ("10/h", 10, 3_600),
        ("10/2h", 10, 7_200),
        ("5/d", 5, 86_400),
        ("5/1d", 5, 86_400),
        ("1/1s", 1, 1),
        ("1/s", 1, 1),
        ("1000000000/31d", 1_000_000_000, 2_678_400),
        ("3/2678400", 3, 2_678_400),
        ("7/90min", 7, 5_400),
    ];
    for (s, count, window_secs) in cases {
        let r = Rate::parse(s).expect(s);
        assert_eq!(
            r,
            Rate {
                count: *count,
                window_secs: *window_secs
            },
            "{s}"
        );
        assert_eq!(r.to_string(), format!("{count}/{window_secs}s"));
        assert_eq!(Rate::parse(&r.to_string()), Ok(r));
    }
    refuses(
        Rate::parse,
        &[
            "",
            "100",
            "/60s",
            "100/",
            "0/60s",
            "1000000001/60s",
            "-1/60s",
            "+1/60s",
            "100/0s",
            "100/0",
            "100/32d",
            "100/2678401",
            "100/60x",
            "100/60 s",
            "100 /60s",
            "100/1.5h",
            "100/60s/2",
            "1e3/60s",
            "100/99999999999999999999999d",
        ],
        "e.g. 100/60s",
    );
}

#[test]
fn hours() {
    let cases: &[(&str, u16, u16, &str)] = &[
        ("09:00-17:00", 540, 1020, "09:00-17:00"),
        ("9-17", 540, 1020, "09:00-17:00"),
        ("09-17:30", 540, 1050, "09:00-17:30"),
        ("22:00-06:00", 1320, 360, "22:00-06:00"),
        ("0-24", 0, 1440, "00:00-24:00"),
        ("23:59-0:00", 1439, 0, "23:59-00:00"),
        ("00:01-00:00", 1, 0, "00:01-00:00"),
    ];
    for (s, start_min, end_min, shown) in cases {
        let h = Hours::parse(s).expect(s);
        assert_eq!((h.start_min, h.end_min), (*start_min, *end_min), "{s}");
        assert_eq!(h.to_string(), *shown);
        assert_eq!(Hours::parse(shown), Ok(h));
    }
    refuses(
        Hours::parse,
        &[
            "",
            "9",
            "9-",
            "-17",
            "9-9",
            "09:00-9",
            "24-06",
            "24:00-24:00",
            "25-06",
            "9-24:01",
            "9:60-10",
            "9:5-10",
            "009-17",
            "9h-17h",
            "09.00-17.00",
            "9 - 17",
            "9-17-18",
        ],
        "e.g. 09:00-17:00",
    );
    let day = Hours::parse("09:00-17:00").unwrap();
    let night = Hours::parse("22:00-06:00").unwrap();
    let all = Hours::parse("0-24").unwrap();
    for (m, in_day, in_night) in [
        (0, false, true),
        (359, false, true),
        (360, false, false),
        (539, false, false),
        (540, true, false),
        (1019, true, false),
        (1020, false, false),
        (1319, false, false),
        (1320, false, true),
        (1439, false, true),
    ] {
        assert_eq!(day.contains(m), in_day, "{m}");
        assert_eq!(night.contains(m), in_night, "{m}");
        assert!(all.contains(m));
    }
}

#[test]
fn days() {
    let cases: &[(&str, u8, &str)] = &[
        ("mon-fri", 0b001_1111, "mon-fri"),
        ("Monday-Friday", 0b001_1111, "mon-fri"),
        ("mon,wed,sat", 0b010_0101, "mon,wed,sat"),
        ("sat-sun", 0b110_0000, "sat-sun"),
        ("SAT,SUN", 0b110_0000, "sat-sun"),
        ("fri-mon", 0b111_0001, "fri-mon"),
        ("sun-sat", 0b111_1111, "mon-sun"),
        ("mon-sun", 0b111_1111, "mon-sun"),
        ("tue", 0b000_0010, "tue"),
        ("wed-wed", 0b000_0100, "wed"),
        ("mon,mon-tue,thu, fri", 0b001_1011, "mon-tue,thu-fri"),
        ("wednesday,fri-mon", 0b111_0101, "wed,fri-mon"),
        ("sun,mon,wed", 0b100_0101, "wed,sun-mon"),
        ("none", 0, "none"),
    ];
    for (s, bits, shown) in cases {
        let d = Days::parse(s).expect(s);
        assert_eq!(d, Days(*bits), "{s}");
        assert_eq!(d.to_string(), *shown, "{s}");
    }
    // Every set of days reads back from its text.
    for bits in 0u8..128 {
        let text = Days(bits).to_string();
        assert_eq!(Days::parse(&text), Ok(Days(bits)), "{text}");
        for w in 0..7 {
            assert_eq!(Days(bits).contains(w), bits & (1 << w) != 0);
        }
    }
    assert!(!Days(0xff).contains(7));
    refuses(
        Days::parse,
        &[
            "",
            "mo",
            "mond",
            "monday-",
            "-fri",
            "mon,",
            ",mon",
            "mon,,tue",
            "mon-tue-wed",
            "lundi",
            "mon fri",
            "none,mon",
            "7",
        ],
        "e.g. mon-fri",
    );
}

#[test]
fn utc_parts_of_known_times() {
    // Checked with `date -u -d ... +%s` and `+%u`.
    let cases: &[(i64, u8, u16)] = &[
        (0, 3, 0),                  // 1970-01-01 Thu 00:00
        (-1, 2, 1439),              // 1969-12-31 Wed 23:59
        (-86_400 * 7, 3, 0),        // 1969-12-25 Thu
        (951_782_400, 1, 0),        // 2000-02-29 Tue
        (1_709_210_096, 3, 754),    // 2024-02-29 Thu 12:34:56
        (2_147_483_648, 1, 194),    // 2038-01-19 Tue 03:14:08
        (4_107_456_000, 6, 0),      // 2100-02-28 Sun (2100 is no leap year)
        (4_107_542_400, 0, 0),      // 2100-03-01 Mon
        (253_402_300_799, 4, 1439), // 9999-12-31 Fri 23:59:59
    ];
    for (secs, weekday, minute) in cases {
        assert_eq!(utc_parts(*secs), (*weekday, *minute), "{secs}");
    }
    // Any i64: no overflow, always in range.
    for secs in [i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 86_399] {
        let (w, m) = utc_parts(secs);
        assert!(w < 7 && m < 1440);
    }
}

#[test]
fn times_as_text() {
    let cases: &[(&str, i64)] = &[
        ("1970-01-01T00:00:00Z", 0),
        ("2000-02-29T00:00:00Z", 951_782_400),
        ("2024-02-29T12:34:56Z", 1_709_210_096),
        ("2038-01-19T03:14:08Z", 2_147_483_648),
        ("2100-03-01T00:00:00Z", 4_107_542_400),
        ("9999-12-31T23:59:59Z", 253_402_300_799),
    ];
    for (s, secs) in cases {
        assert_eq!(parse_time(s), Ok(*secs), "{s}");
        assert_eq!(format_time(*secs), *s);
        assert_eq!(parse_time(&s[..10]), Ok(secs - secs % 86_400), "{s}");
    }
    assert_eq!(parse_time("2027-01-01t00:00:00z"), Ok(1_798_761_600));
    assert_eq!(parse_time("2027-01-01"), Ok(1_798_761_600));
    assert_eq!(format_time(-1), "1969-12-31T23:59:59Z");
    refuses(
        parse_time,
        &[
            "",
            "2027",
            "1969-12-31",
            "1969-12-31T23:59:59Z",
            "2001-02-29",
            "2100-02-29",
            "2027-00-01",
            "2027-13-01",
            "2027-01-00",
            "2027-01-32",
            "2027-04-31",
            "2027-1-01",
            "2027/01/01",
            "2027-01-01T24:00:00Z",
            "2027-01-01T00:60:00Z",
            "2027-01-01T00:00:60Z",
            "2027-01-01 00:00:00Z",
            "2027-01-01T00:00:00",
            "2027-01-01T00:00:00+00:00",
            "2027-01-01T00:00:00.5Z",
            "2027-01-01T0:00:00Z",
            "+027-01-01",
            "2027-01-0é",
            "10000-01-01",
        ],
        "e.g. 2027-01-01T00:00:00Z",
    );
}

/// Day by day from 1970 to 2100: the weekday steps by one and the date
/// reads back; every leap day is where the calendar puts it.
#[test]
fn every_day_from_1970_to_2100() {
    let end = parse_time("2101-01-01").unwrap() / 86_400;
    let mut leap_days = 0;
    for day in 0..end {
        let noon = day * 86_400 + 43_200;
        assert_eq!(utc_parts(noon), (((day + 3) % 7) as u8, 720));
        let text = format_time(noon);
        assert_eq!(parse_time(&text), Ok(noon), "{text}");
        assert_eq!(parse_time(&text[..10]), Ok(day * 86_400), "{text}");
        if text[5..10] == *"02-29" {
            let year: i64 = text[..4].parse().unwrap();
            assert!(year % 4 == 0 && year != 2100, "{text}");
            leap_days += 1;
        }
    }
    // 1972..=2096 every fourth year.
    assert_eq!(leap_days, 32);
}

fn at(s: &str) -> i64 {
    parse_time(s).expect(s)
}

#[test]
fn policy_checks_with_an_injected_clock() {
    let mut p = Policy::parse_settings(
        pat("hot-*"),
        "mechanisms=ecdsa,ecdsa-sha256 days=mon-fri hours=09:00-17:00 expires=2027-01-01",
    )
    .unwrap();
    let ecdsa = CKM_ECDSA;
    // 2026-12-04 is a Friday.
    assert_eq!(p.check(ecdsa, at("2026-12-04T09:00:00Z")), Ok(()));
    assert_eq!(
        p.check(CKM_ECDSA_SHA256, at("2026-12-04T16:59:59Z")),
        Ok(())
    );
    let rule = |p: &Policy, m, t| p.check(m, at(t)).map_err(|d| d.rule);
    assert_eq!(rule(&p, ecdsa, "2026-12-04T08:59:59Z"), Err("hours".into()));
    assert_eq!(rule(&p, ecdsa, "2026-12-04T17:00:00Z"), Err("hours".into()));
    assert_eq!(rule(&p, ecdsa, "2026-12-05T12:00:00Z"), Err("days".into()));
    assert_eq!(rule(&p, ecdsa, "2026-12-06T12:00:00Z"), Err("days".into()));
    assert_eq!(rule(&p, ecdsa, "2026-12-07T12:00:00Z"), Ok(()));
    // The mechanism is checked first, then expiry, days, hours.
    let d = p
        .check(CKM_AES_GCM, at("2026-12-05T03:00:00Z"))
        .unwrap_err();
    assert_eq!(d.rule, "mechanism");
    assert_eq!(
        d.why,
        "the policy for \"hot-*\" allows only CKM_ECDSA, CKM_ECDSA_SHA256; CKM_AES_GCM was asked for"
    );
    let d = p.check(ecdsa, at("2026-12-05T03:00:00Z")).unwrap_err();
    assert_eq!(
        d.why,
        "the policy for \"hot-*\" allows use on mon-fri (UTC) only; it is sat (UTC)"
    );
    let d = p.check(ecdsa, at("2026-12-07T17:00:00Z")).unwrap_err();
    assert_eq!(
        d.why,
        "the policy for \"hot-*\" allows use at 09:00-17:00 UTC only; it is 17:00 UTC"
    );
    // Expiry exactly at its second. 2026-12-31 is a Thursday, 2027-01-01 a Friday.
    p.hours = None;
    assert_eq!(rule(&p, ecdsa, "2026-12-31T23:59:59Z"), Ok(()));
    let d = p.check(ecdsa, at("2027-01-01T00:00:00Z")).unwrap_err();
    assert_eq!(d.rule, "expired");
    assert!(
        d.why
            .starts_with("the policy for \"hot-*\" expired at 2027-01-01T00:00:00Z"),
        "{d}"
    );
    assert_eq!(
        rule(&p, ecdsa, "2030-06-03T12:00:00Z"),
        Err("expired".into())
    );
    // Any mechanism when none is named.
    p.mechanisms.clear();
    assert_eq!(p.check(0x8000_0001, at("2026-12-31T00:00:00Z")), Ok(()));
}

#[test]
fn hours_past_midnight_and_days_past_sunday() {
    let p = Policy::parse_settings(pat("*"), "hours=22:00-06:00 days=fri-mon").unwrap();
    let rule = |t| p.check(CKM_ECDSA, at(t)).map_err(|d| d.rule);
    // Friday 2026-12-04 .. Monday 2026-12-07 are allowed days.
    assert_eq!(rule("2026-12-04T21:59:59Z"), Err("hours".into()));
    assert_eq!(rule("2026-12-04T22:00:00Z"), Ok(()));
    assert_eq!(rule("2026-12-05T00:00:00Z"), Ok(()));
    assert_eq!(rule("2026-12-06T23:59:59Z"), Ok(()));
    assert_eq!(rule("2026-12-07T05:59:59Z"), Ok(()));
    assert_eq!(rule("2026-12-07T06:00:00Z"), Err("hours".into()));
    assert_eq!(rule("2026-12-07T23:00:00Z"), Ok(()));
    // Tuesday night is outside the days, even within the hours.
    assert_eq!(rule("2026-12-08T00:00:00Z"), Err("days".into()));
    assert_eq!(rule("2026-12-03T23:59:59Z"), Err("days".into()));
    // As the documentation of `check` says: each part at the moment of use.
    let p = Policy::parse_settings(pat("*"), "hours=22:00-06:00 days=mon-fri").unwrap();
    assert_eq!(p.check(CKM_ECDSA, at("2026-12-07T23:00:00Z")), Ok(()));
    let d = p.check(CKM_ECDSA, at("2026-12-05T01:00:00Z")).unwrap_err();
    assert_eq!(d.rule, "days");
}

#[test]
fn rate_refusals_name_the_rule() {
    let p = Policy::parse_settings(pat("hot-*"), "asset_rate=100/min user_rate=10/h").unwrap();
    let d = p.asset_rate_denied("hot-1");
    assert_eq!(d.rule, "asset-rate");
    assert_eq!(
        d.why,
        "asset \"hot-1\" reached the limit of the policy for \"hot-*\" (100/60s); try again later"
    );
    let d = p.user_rate_denied("alice");
    assert_eq!(d.rule, "user-rate");
    assert!(
        d.why.contains("\"alice\"") && d.why.contains("10/3600s"),
        "{d}"
    );
}

#[test]
fn settings_text() {
    let text = "mechanisms=CKM_ECDSA,CKM_ECDSA_SHA256 asset_rate=100/60s user_rate=10/60s \
                hours=09:00-17:00 days=mon-fri expires=2027-01-01T00:00:00Z approvals=2";
    let p = Policy::parse_settings(pat("hot-*"), text).unwrap();
    assert_eq!(
        p,
        Policy {
            pattern: pat("hot-*"),
            mechanisms: vec![CKM_ECDSA, CKM_ECDSA_SHA256],
            asset_rate: Some(Rate {
                count: 100,
                window_secs: 60
            }),
            user_rate: Some(Rate {
                count: 10,
                window_secs: 60
            }),
            hours: Some(Hours {
                start_min: 540,
                end_min: 1020
            }),
            days: Some(Days(0b1_1111)),
            expires: Some(1_798_761_600),
            approvals: 2,
            paths: Vec::new(),
        }
    );
    assert_eq!(p.settings(), text);
    // As a person writes it, in any order: the same canonical text.
    let loose = "approvals=2 days=Monday-fri expires=2027-01-01 hours=9-17 \
                 user_rate=10/m asset_rate=100/1m mechanisms=ecdsa,ckm_ecdsa_sha256";
    assert_eq!(
        Policy::parse_settings(pat("hot-*"), loose)
            .unwrap()
            .settings(),
        text
    );
    let empty = Policy::parse_settings(pat("*"), "").unwrap();
    assert_eq!(empty, Policy::new(Pattern::any()));
    assert_eq!(empty.settings(), "");
    assert_eq!(Policy::parse_settings(pat("*"), "approvals=0"), Ok(empty));
}

#[test]
fn paths_restrict_signing_to_hd_subtrees() {
    use crate::hd::Path;
    let p = Policy::parse_settings(pat("eth-*"), "paths=m/44h/60'/0',m/86'/0'/0'/0").unwrap();
    assert_eq!(p.settings(), "paths=m/44'/60'/0',m/86'/0'/0'/0");
    let path = |s: &str| Path::parse(s).unwrap();
    p.check_path(&path("m/44'/60'/0'/0/7")).unwrap();
    p.check_path(&path("m/44'/60'/0'")).unwrap();
    p.check_path(&path("m/86'/0'/0'/0/1")).unwrap();
    for outside in ["m", "m/44'/0'/0'/0/7", "m/44'/60'/1'", "m/86'/0'/0'/1/0"] {
        let d = p.check_path(&path(outside)).unwrap_err();
        assert_eq!(d.rule, "path", "{outside}");
        assert!(
            d.why.contains(outside) && d.why.contains("m/44'/60'/0'"),
            "{}",
            d.why
        );
    }
    // Deriving on the way to an allowed subtree is allowed; signing there is not.
    p.check_derive(&path("m/44'")).unwrap();
    p.check_derive(&path("m/44'/60'/0'/0")).unwrap();
    assert!(p.check_path(&path("m/44'")).is_err());
    assert!(p.check_derive(&path("m/45'")).is_err());
    // Without paths, every key signs.
    Policy::new(pat("*")).check_path(&path("m")).unwrap();
    for bad in ["paths=", "paths=x/1", "paths=m/1,m/1", "paths=m/4294967296"] {
        let e = Policy::parse_settings(pat("*"), bad).unwrap_err();
        assert!(e.contains("paths"), "{bad}: {e}");
    }
}

#[test]
fn settings_round_trip() {
    let mechanisms = [
        vec![],
        vec![CKM_AES_GCM],
        vec![CKM_SHA512_HMAC, CKM_ECDSA, 0x8000_1234],
    ];
    let rates = [
        None,
        Some(Rate {
            count: 1,
            window_secs: 1,
        }),
        Some(Rate {
            count: 1_000_000_000,
            window_secs: 31 * 86_400,
        }),
    ];
    let hours = [
        None,
        Some(Hours {
            start_min: 1320,
            end_min: 360,
        }),
        Some(Hours {
            start_min: 0,
            end_min: 1440,
        }),
    ];
    let days = [
        None,
        Some(Days(0)),
        Some(Days(0b111_0001)),
        Some(Days(0b101_0101)),
    ];
    let expires = [None, Some(0), Some(253_402_300_799)];
    let approvals = [0, 1, u32::MAX];
    let mut n = 0;
    for m in &mechanisms {
        for a in rates {
            for u in rates {
                for h in hours {
                    for d in days {
                        for e in expires {
                            for k in approvals {
                                let p = Policy {
                                    pattern: pat("a?-*"),
                                    mechanisms: m.clone(),
                                    asset_rate: a,
                                    user_rate: u,
                                    hours: h,
                                    days: d,
                                    expires: e,
                                    approvals: k,
                                    paths: Vec::new(),
                                };
                                let text = p.settings();
                                let back = Policy::parse_settings(pat("a?-*"), &text);
                                assert_eq!(back.as_ref(), Ok(&p), "{text}");
                                assert_eq!(back.unwrap().settings(), text);
                                n += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(n, 3 * 3 * 3 * 3 * 4 * 3 * 3);
}

#[test]
fn bad_settings_name_the_value() {
    let cases: &[(&str, &str)] = &[
        (
            "mechanisms",
            "policy setting \"mechanisms\" is not key=value",
        ),
        (
            "colour=red",
            "policy setting \"colour\" is unknown; the keys are mechanisms,",
        ),
        (
            "days=mon days=tue",
            "policy setting \"days\" is given twice",
        ),
        ("mechanisms=ecdsa,ECDSA", "names CKM_ECDSA twice"),
        ("mechanisms=", "mechanism \"\" is unknown"),
        ("mechanisms=ecdsa,,aes-gcm", "mechanism \"\" is unknown"),
        ("mechanisms=rsa", "mechanism \"rsa\" is unknown"),
        ("asset_rate=100", "rate \"100\" is invalid"),
        ("user_rate=0/60s", "rate \"0/60s\" is invalid"),
        ("hours=9-9", "hours \"9-9\" are invalid"),
        ("days=someday", "\"someday\" is not a day"),
        ("expires=2027-02-30", "time \"2027-02-30\" is invalid"),
        ("approvals=two", "approvals \"two\" is not a whole number"),
        ("approvals=4294967296", "approvals \"4294967296\""),
        ("approvals=-1", "approvals \"-1\""),
    ];
    for (s, want) in cases {
        let e = Policy::parse_settings(Pattern::any(), s).unwrap_err();
        assert!(e.contains(want), "{s}: {e}");
    }
}
