//! k-of-n approvals (design §6.5): approvers' public keys and their signatures, the canonical bytes of a request, and quorum rules (pure; no store, no I/O).
//!
//! The store keeps approvers, quorum rules and requests as sealed rows
//! (`store::approvals`); this module only encodes, parses and judges.

#![forbid(unsafe_code)]

pub mod keys;
pub mod quorum;
pub mod request;

pub use quorum::{Approver, Given, Rule};
pub use request::{RequestDoc, Verdict};

/// A request's lifetime as written in the config or on the command line:
/// `90s`, `30m`, `2h`, `1d` (a number and a unit s, m, h or d), from one
/// second to 90 days; in seconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "duration {s:?} is invalid: write a number and a unit s, m, h or d (e.g. 30m, 24h, \
             7d), from 1 second to 90 days"
        )
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = t.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(unit)
        .filter(|v| (1..=90 * 86_400).contains(v))
        .ok_or_else(bad)
}

#[cfg(test)]
mod duration_tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("24h"), Ok(86_400));
        assert_eq!(super::parse_duration("30m"), Ok(1_800));
        assert_eq!(super::parse_duration("7d"), Ok(604_800));
        for bad in ["", "h", "10", "0s", "91d", "1w", "-1h", "1.5h"] {
            assert!(super::parse_duration(bad).is_err(), "{bad}");
        }
    }
}
