//! The provider's log: one line per event, to the file the config names or to
//! stderr. Nothing secret is ever passed here: callers log names, labels,
//! paths and return codes, never key bytes, PRF outputs or PINs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
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

static SINK: Mutex<Sink> = Mutex::new(Sink {
    file: None,
    level: Level::Info,
});

/// Sends further lines to `file` (stderr when `None`) at `level` and above.
pub fn configure(file: Option<&Path>, level: Level) -> std::io::Result<()> {
    let file = match file {
        Some(p) => Some(OpenOptions::new().create(true).append(true).open(p)?),
        None => None,
    };
    let mut sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
    sink.file = file;
    sink.level = level;
    Ok(())
}

/// Writes one line. A poisoned lock or a failed write never stops the caller.
pub fn write(level: Level, message: &str) {
    let mut sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
    if level > sink.level {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let line = format!(
        "{}.{:03} p11derive[{}] {}: {}\n",
        now.as_secs(),
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
