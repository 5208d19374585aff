//! UTC calendar arithmetic for policies: weekday and minute of a Unix time, and RFC 3339 dates both ways.

use crate::log::civil_from_days;

const DAY: i64 = 86_400;

/// The weekday (0 = Monday .. 6 = Sunday) and the minute of the day (0..1440)
/// of a Unix time, in UTC. Any `i64` works (times before 1970 too).
pub fn utc_parts(now_secs: i64) -> (u8, u16) {
    let days = now_secs.div_euclid(DAY);
    // 1970-01-01 was a Thursday (3 counted from Monday).
    let weekday = (days + 3).rem_euclid(7) as u8;
    let minute = (now_secs.rem_euclid(DAY) / 60) as u16;
    (weekday, minute)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (days-from-civil).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A UTC time as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339), or a bare `YYYY-MM-DD`
/// (midnight UTC), to Unix seconds; years 1970 to 9999.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "time {s:?} is invalid: write a UTC time as YYYY-MM-DDTHH:MM:SSZ \
             (e.g. 2027-01-01T00:00:00Z) or a date as YYYY-MM-DD, years 1970 to 9999"
        )
    };
    let b = s.as_bytes();
    let (date, clock) = match b.len() {
        10 => (b, None),
        20 if matches!(b[10], b'T' | b't') && matches!(b[19], b'Z' | b'z') => {
            (&b[..10], Some(&b[11..19]))
        }
        _ => return Err(bad()),
    };
    // A field of digits between fixed separators.
    let field = |bytes: &[u8]| -> Option<u32> {
        bytes.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    if date[4] != b'-' || date[7] != b'-' {
        return Err(bad());
    }
    let (year, month, day) = match (field(&date[..4]), field(&date[5..7]), field(&date[8..])) {
        (Some(y), Some(m), Some(d)) => (i64::from(y), m, d),
        _ => return Err(bad()),
    };
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
    {
        return Err(bad());
    }
    let mut secs = days_from_civil(year, month, day) * DAY;
    if let Some(c) = clock {
        if c[2] != b':' || c[5] != b':' {
            return Err(bad());
        }
        match (field(&c[..2]), field(&c[3..5]), field(&c[6..])) {
            (Some(h), Some(m), Some(sec)) if h < 24 && m < 60 && sec < 60 => {
                secs += i64::from(h * 3600 + m * 60 + sec);
            }
            _ => return Err(bad()),
        }
    }
    Ok(secs)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC); the inverse of
/// [`parse_time`] for its years, and still a proleptic Gregorian date outside them.
pub fn format_time(secs: i64) -> String {
    let (year, month, day) = civil_from_days(secs.div_euclid(DAY));
    let rem = secs.rem_euclid(DAY);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
