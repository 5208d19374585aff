//! A per-pattern policy and its parts (mechanisms, rate limits, hours, days, expiry), as text and as checks.

use std::fmt;

use super::time::{format_time, parse_time, utc_parts};
use super::{Denied, Pattern};
use crate::error::{mech_by_name, mech_name, mech_names};

const MINUTE: u32 = 60;
const HOUR: u32 = 3_600;
const DAY: u32 = 86_400;
/// The longest rate window: 31 days.
const WINDOW_MAX: u32 = 31 * DAY;
const COUNT_MAX: u32 = 1_000_000_000;

/// A rate limit: at most `count` results in any window of `window_secs`
/// seconds (a sliding window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub window_secs: u32,
}

impl Rate {
    /// `COUNT/WINDOW`: `100/60s`, `100/60`, `100/min`, `100/1m`, `100/m`,
    /// `10/h`, `10/2h`, `5/d`, `5/1d` (units s, m or min, h, d; none means
    /// seconds); count 1 to 10^9, window 1 s to 31 days.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = |what: &str| {
            format!(
                "rate {s:?} is invalid: {what}; write COUNT/WINDOW with a count of 1 to \
                 1000000000 and a window of 1 s to 31 days in s, m, h or d, e.g. 100/60s or 10/h"
            )
        };
        let (count, window) = s.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let count = digits(count)
            .filter(|c| (1..=u64::from(COUNT_MAX)).contains(c))
            .ok_or_else(|| bad("the count is not a number from 1 to 1000000000"))?;
        let split = window
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(window.len());
        let (number, unit) = window.split_at(split);
        let unit = match unit.to_ascii_lowercase().as_str() {
            "" if number.is_empty() => return Err(bad("there is no window after '/'")),
            "" => 1,
            "s" | "sec" => 1,
            "m" | "min" => MINUTE,
            "h" => HOUR,
            "d" => DAY,
            _ => return Err(bad("the window's unit is not s, m, min, h or d")),
        };
        let number = if number.is_empty() {
            1
        } else {
            digits(number).ok_or_else(|| bad("the window is not a number"))?
        };
        let window_secs = number
            .checked_mul(u64::from(unit))
            .filter(|w| (1..=u64::from(WINDOW_MAX)).contains(w))
            .ok_or_else(|| bad("the window is not from 1 s to 31 days"))?;
        Ok(Rate {
            count: count as u32,
            window_secs: window_secs as u32,
        })
    }
}

/// A run of ASCII digits (no sign, no spaces) as a number; `None` past u64.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.count, self.window_secs)
    }
}

const DAY_MINUTES: u16 = 24 * 60;

/// UTC hours of the day when use is allowed: from `start_min` (included) to
/// `end_min` (excluded), minutes since midnight; `end_min` may be 1440
/// (24:00), and an end before the start wraps past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    pub start_min: u16,
    pub end_min: u16,
}

impl Hours {
    /// `09:00-17:00`, `9-17`, `09-17:30`, `22:00-06:00` (wraps midnight);
    /// the end may be `24:00`; start and end differ.
    pub fn parse(s: &str) -> Result<Hours, String> {
        let bad = |what: &str| {
            format!(
                "hours {s:?} are invalid: {what}; write START-END in UTC as HH:MM or HH, \
                 e.g. 09:00-17:00 or 22-06 (wraps midnight)"
            )
        };
        let (start, end) = s.split_once('-').ok_or_else(|| bad("no '-'"))?;
        let start_min = clock(start)
            .filter(|m| *m < DAY_MINUTES)
            .ok_or_else(|| bad("the start is not a time from 00:00 to 23:59"))?;
        let end_min = clock(end).ok_or_else(|| bad("the end is not a time from 00:00 to 24:00"))?;
        if start_min == end_min {
            return Err(bad("the start and the end are the same time"));
        }
        Ok(Hours { start_min, end_min })
    }

    /// Whether a minute of the day (0..1440) lies in the hours.
    pub fn contains(&self, minute_of_day: u16) -> bool {
        if self.start_min <= self.end_min {
            (self.start_min..self.end_min).contains(&minute_of_day)
        } else {
            minute_of_day >= self.start_min || minute_of_day < self.end_min
        }
    }
}

/// `H`, `HH`, `H:MM` or `HH:MM` as minutes since midnight, up to 24:00.
fn clock(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':').unwrap_or((s, "00"));
    if h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m) = (digits(h)?, digits(m)?);
    let minutes = h * 60 + m;
    (m < 60 && minutes <= u64::from(DAY_MINUTES)).then_some(minutes as u16)
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start_min), hm(self.end_min))
    }
}

const DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// The days of the week when use is allowed (UTC): bit 0 Monday .. bit 6 Sunday.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Days(pub u8);

impl Days {
    /// A comma-separated list of days and ranges: `mon-fri`, `mon,wed,sat`,
    /// `sat-sun`, `fri-mon` (wraps past Sunday); names in any letter case,
    /// three letters or in full. `none` allows no day at all.
    pub fn parse(s: &str) -> Result<Days, String> {
        let bad = |what: String| {
            format!(
                "days {s:?} are invalid: {what}; write days (mon tue wed thu fri sat sun, or in \
                 full) and ranges separated by commas, e.g. mon-fri or mon,wed,sat-sun"
            )
        };
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(Days(0));
        }
        let day = |name: &str| {
            let name = name.trim().to_ascii_lowercase();
            DAY_NAMES
                .iter()
                .position(|full| name == full[..3] || name == *full)
                .ok_or_else(|| bad(format!("{name:?} is not a day")))
        };
        let mut bits = 0u8;
        for item in s.split(',') {
            if item.trim().is_empty() {
                return Err(bad("an item is empty".into()));
            }
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (day(a)?, day(b)?),
                None => (day(item)?, day(item)?),
            };
            let mut d = first;
            loop {
                bits |= 1 << d;
                if d == last {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        Ok(Days(bits))
    }

    /// Whether a weekday (0 = Monday .. 6 = Sunday) is allowed.
    pub fn contains(&self, weekday_from_monday: u8) -> bool {
        weekday_from_monday < 7 && self.0 & (1 << weekday_from_monday) != 0
    }
}

impl fmt::Display for Days {
    /// Runs of two or more days as ranges (one wrapping past Sunday where
    /// that keeps it whole), single days alone: `mon-fri`, `mon,wed,fri`,
    /// `tue,fri-mon`; every day is `mon-sun`, no day `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |d: usize| self.contains((d % 7) as u8);
        if (0..7).all(on) {
            return f.write_str("mon-sun");
        }
        let mut items = Vec::new();
        // Each run starts at a day whose day before is off.
        for start in (0..7).filter(|&d| on(d) && !on(d + 6)) {
            let len = (start..).take_while(|&d| on(d)).count();
            let name = |d: usize| &DAY_NAMES[d % 7][..3];
            items.push(match len {
                1 => name(start).to_string(),
                _ => format!("{}-{}", name(start), name(start + len - 1)),
            });
        }
        if items.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&items.join(","))
    }
}

/// A policy for the assets matching a pattern (set by admins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub pattern: Pattern,
    /// The `CKM_*` values allowed; empty allows any.
    pub mechanisms: Vec<u64>,
    /// Per asset.
    pub asset_rate: Option<Rate>,
    /// Per user: one user's uses of the assets matching the pattern.
    pub user_rate: Option<Rate>,
    pub hours: Option<Hours>,
    pub days: Option<Days>,
    /// Unix seconds (UTC); from this time on, use is refused.
    pub expires: Option<i64>,
    /// Approvals a signature needs (stored and shown only, for now).
    pub approvals: u32,
    /// HD paths (design §6.1) a signature's key must lie under: empty allows
    /// every key; otherwise only HD children whose path starts with one of
    /// these sign (the asset version's own key is the path `m`).
    pub paths: Vec<crate::hd::Path>,
}

/// The keys of [`Policy::settings`], in their order.
const KEYS: [&str; 8] = [
    "mechanisms",
    "asset_rate",
    "user_rate",
    "hours",
    "days",
    "expires",
    "approvals",
    "paths",
];

impl Policy {
    /// A policy for `pattern` that sets nothing (allows everything).
    pub fn new(pattern: Pattern) -> Policy {
        Policy {
            pattern,
            mechanisms: Vec::new(),
            asset_rate: None,
            user_rate: None,
            hours: None,
            days: None,
            expires: None,
            approvals: 0,
            paths: Vec::new(),
        }
    }

    fn paths_text(&self) -> String {
        let paths: Vec<String> = self.paths.iter().map(|p| p.to_string()).collect();
        paths.join(",")
    }

    /// Whether a signature by the key at `path` of a matching asset's HD tree
    /// (`m`: the asset version's own key) is allowed: with `paths` set, only
    /// under one of them.
    pub fn check_path(&self, path: &crate::hd::Path) -> Result<(), Denied> {
        if self.paths.is_empty() || self.paths.iter().any(|p| path.starts_with(p)) {
            return Ok(());
        }
        Err(Denied::new(
            "path",
            format!(
                "the policy for {:?} allows signing only with keys under {}; the key at {path} is \
                 not (derive a child under an allowed path with CKM_P11DERIVE_HD_CHILD)",
                self.pattern.as_str(),
                self.paths_text()
            ),
        ))
    }

    /// Whether deriving the child at `path` is allowed: it lies under one of
    /// `paths`, or on the way to one (an ancestor of an allowed prefix).
    pub fn check_derive(&self, path: &crate::hd::Path) -> Result<(), Denied> {
        if self.paths.iter().any(|p| p.starts_with(path)) {
            return Ok(());
        }
        self.check_path(path)
    }

    /// The checks that need no counting, at `now_secs` (Unix seconds, UTC):
    /// mechanism, then expiry, then days, then hours. Days and hours are
    /// each checked at that moment: hours past midnight (`22:00-06:00`) with
    /// `days=mon-fri` allow Monday 23:00 but not Saturday 01:00.
    pub fn check(&self, mechanism: u64, now_secs: i64) -> Result<(), Denied> {
        let p = self.pattern.as_str();
        if !self.mechanisms.is_empty() && !self.mechanisms.contains(&mechanism) {
            return Err(Denied::new(
                "mechanism",
                format!(
                    "the policy for {p:?} allows only {}; {} was asked for",
                    self.mechanisms_text(", "),
                    mech_name(mechanism)
                ),
            ));
        }
        if let Some(expires) = self.expires.filter(|e| now_secs >= *e) {
            return Err(Denied::new(
                "expired",
                format!(
                    "the policy for {p:?} expired at {}; an admin can set a later expiry with \
                     `p11derive policy set`",
                    format_time(expires)
                ),
            ));
        }
        let (weekday, minute) = utc_parts(now_secs);
        if let Some(days) = self.days.filter(|d| !d.contains(weekday)) {
            return Err(Denied::new(
                "days",
                format!(
                    "the policy for {p:?} allows use on {days} (UTC) only; it is {} (UTC)",
                    &DAY_NAMES[usize::from(weekday)][..3]
                ),
            ));
        }
        if let Some(hours) = self.hours.filter(|h| !h.contains(minute)) {
            return Err(Denied::new(
                "hours",
                format!(
                    "the policy for {p:?} allows use at {hours} UTC only; it is {:02}:{:02} UTC",
                    minute / 60,
                    minute % 60
                ),
            ));
        }
        Ok(())
    }

    /// The refusal when `asset` has used up the policy's `asset_rate`.
    pub fn asset_rate_denied(&self, asset: &str) -> Denied {
        Denied::new(
            "asset-rate",
            format!(
                "asset {asset:?} reached the limit of the policy for {:?} ({}); try again later",
                self.pattern.as_str(),
                rate_text(self.asset_rate)
            ),
        )
    }

    /// The refusal when `user` has used up the policy's `user_rate`.
    pub fn user_rate_denied(&self, user: &str) -> Denied {
        Denied::new(
            "user-rate",
            format!(
                "user {user:?} reached the per-user limit of the policy for {:?} ({}); try again later",
                self.pattern.as_str(),
                rate_text(self.user_rate)
            ),
        )
    }

    fn mechanisms_text(&self, separator: &str) -> String {
        let names: Vec<String> = self.mechanisms.iter().map(|m| mech_name(*m)).collect();
        names.join(separator)
    }

    /// The settings as one line of `key=value` words in a fixed order, unset
    /// ones left out: `mechanisms=CKM_ECDSA,CKM_ECDSA_SHA256 asset_rate=100/60s
    /// user_rate=10/60s hours=09:00-17:00 days=mon-fri
    /// expires=2027-01-01T00:00:00Z approvals=2 paths=m/44'/60'/0'`; empty
    /// when nothing is set.
    /// [`Policy::parse_settings`] reads it back.
    pub fn settings(&self) -> String {
        let mut words = Vec::new();
        if !self.mechanisms.is_empty() {
            words.push(format!("mechanisms={}", self.mechanisms_text(",")));
        }
        let mut push = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                words.push(format!("{key}={v}"));
            }
        };
        push("asset_rate", self.asset_rate.map(|r| r.to_string()));
        push("user_rate", self.user_rate.map(|r| r.to_string()));
        push("hours", self.hours.map(|h| h.to_string()));
        push("days", self.days.map(|d| d.to_string()));
        push("expires", self.expires.map(format_time));
        push(
            "approvals",
            (self.approvals > 0).then(|| self.approvals.to_string()),
        );
        push("paths", (!self.paths.is_empty()).then(|| self.paths_text()));
        words.join(" ")
    }

    /// The policy for `pattern` that `s` sets: `key=value` words (any order,
    /// each key once) as [`Policy::settings`] writes them, or as a person
    /// does (`mechanisms=ecdsa,AES-GCM`, `asset_rate=100/min`, `expires=2027-01-01`).
    pub fn parse_settings(pattern: Pattern, s: &str) -> Result<Policy, String> {
        let mut policy = Policy::new(pattern);
        let mut seen = Vec::new();
        for word in s.split_whitespace() {
            let (key, value) = word.split_once('=').ok_or_else(|| {
                format!(
                    "policy setting {word:?} is not key=value; the keys are {}",
                    KEYS.join(", ")
                )
            })?;
            if seen.contains(&key) {
                return Err(format!(
                    "policy setting {key:?} is given twice; give it once"
                ));
            }
            seen.push(key);
            match key {
                "mechanisms" => {
                    for m in value.split(',') {
                        let m = parse_mechanism(m)?;
                        if policy.mechanisms.contains(&m) {
                            return Err(format!(
                                "policy setting mechanisms={value} names {} twice; name it once",
                                mech_name(m)
                            ));
                        }
                        policy.mechanisms.push(m);
                    }
                }
                "asset_rate" => policy.asset_rate = Some(Rate::parse(value)?),
                "user_rate" => policy.user_rate = Some(Rate::parse(value)?),
                "hours" => policy.hours = Some(Hours::parse(value)?),
                "days" => policy.days = Some(Days::parse(value)?),
                "expires" => policy.expires = Some(parse_time(value)?),
                "approvals" => {
                    policy.approvals = digits(value)
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            format!("approvals {value:?} is not a whole number, e.g. approvals=2")
                        })?
                }
                "paths" => {
                    for part in value.split(',') {
                        let path = crate::hd::Path::parse(part).map_err(|e| {
                            format!(
                                "policy setting paths={value}: {e}; write HD path prefixes \
                                 separated by commas, e.g. paths=m/44'/60'/0',m/86'/0'/0'"
                            )
                        })?;
                        if policy.paths.contains(&path) {
                            return Err(format!(
                                "policy setting paths={value} names {path} twice; name it once"
                            ));
                        }
                        policy.paths.push(path);
                    }
                }
                _ => {
                    return Err(format!(
                        "policy setting {key:?} is unknown; the keys are {}",
                        KEYS.join(", ")
                    ))
                }
            }
        }
        Ok(policy)
    }
}

fn rate_text(rate: Option<Rate>) -> String {
    rate.map_or_else(|| "no limit set".to_string(), |r| r.to_string())
}

/// A mechanism as a person names it: `ECDSA`, `CKM_ECDSA`, `ecdsa-sha256`,
/// `AES-GCM`, `SHA256-HMAC` (or `HMAC-SHA256`), in any letter case with `-`
/// or `_`, or a number (`0x1041`, `4161`).
pub fn parse_mechanism(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Ok(m) = u64::from_str_radix(hex, 16) {
                return Ok(m);
            }
        }
    } else if let Some(m) = digits(t) {
        return Ok(m);
    }
    let name = t.to_ascii_uppercase().replace('-', "_");
    let bare = name.strip_prefix("CKM_").unwrap_or(&name);
    let swapped = bare.strip_prefix("HMAC_").map(|h| format!("CKM_{h}_HMAC"));
    mech_by_name(&format!("CKM_{bare}"))
        .or_else(|| swapped.and_then(|n| mech_by_name(&n)))
        .ok_or_else(|| {
            let known: Vec<&str> = mech_names().collect();
            format!(
                "mechanism {s:?} is unknown: name one of {} (with or without CKM_, - or _, any \
                 letter case), or give its number, e.g. 0x1041",
                known.join(", ")
            )
        })
}
