//! The provider's log: one line per event, to the file the config names or to stderr.
//!
//! Nothing secret is ever passed here: callers log names, labels,
//! paths and return codes, never key bytes, PRF outputs or PINs.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use crate::files::Access;
use crate::process::PerProcess;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

struct Sink {
    file: Option<File>,
    level: Level,
}

static SINK: PerProcess<Mutex<Sink>> = PerProcess::new(|| {
    Mutex::new(Sink {
        file: None,
        level: Level::Warn,
    })
});

/// Sends further lines to `file` (stderr when `None`) at `level` and above;
/// a file created here gets `access`'s mode and group (0600, or 0660 and
/// `[store] group`).
pub fn configure(file: Option<&Path>, level: Level, access: &Access) -> std::io::Result<()> {
    let file = match file {
        Some(p) => Some(crate::files::open_append(p, access)?),
        None => None,
    };
    let mut sink = SINK.get().lock().unwrap_or_else(|e| e.into_inner());
    sink.file = file;
    sink.level = level;
    Ok(())
}

/// Writes one line. A poisoned lock or a failed write never stops the caller.
pub fn write(level: Level, message: &str) {
    let mut sink = SINK.get().lock().unwrap_or_else(|e| e.into_inner());
    if level > sink.level {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let line = format!(
        "{}.{:03}Z p11derive[{}] {}: {}\n",
        utc(now.as_secs()),
        now.subsec_millis(),
        std::process::id(),
        level.name(),
        message.replace('\n', " ")
    );
    let _ = match sink.file.as_mut() {
        Some(f) => f.write_all(line.as_bytes()),
        None => std::io::stderr().write_all(line.as_bytes()),
    };
}

pub fn error(message: &str) {
    write(Level::Error, message)
}
pub fn warn(message: &str) {
    write(Level::Warn, message)
}
pub fn info(message: &str) {
    write(Level::Info, message)
}
pub fn debug(message: &str) {
    write(Level::Debug, message)
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC, for people reading records.
pub fn utc_secs(secs: u64) -> String {
    utc(secs)
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC (civil-from-days, proleptic Gregorian).
fn utc(secs: u64) -> String {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The proleptic Gregorian date (year, month 1-12, day 1-31) of a day
/// counted from 1970-01-01 (negative before it).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(super::utc(1_795_290_212), "2026-11-21T19:43:32");
    }
}
