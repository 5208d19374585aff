//! The thread that rewrites a provider process's metrics file, `[metrics] dir/p11derive-PID.prom`, every `interval_ms`, and removes it at `C_Finalize`.
//!
//! The file is written whole under a temporary name (`…prom.tmp`, which the
//! textfile collector does not read) and renamed over the old one, so a
//! reader sees the old text or the new, never half of one. Files are
//! created by `files::create_new` (0600, or 0660 owned by `[store] group`).
//! At start, the files of processes that no longer exist (crashed, or ended
//! without `C_Finalize`) are removed. A directory that is missing or not
//! writable is logged, naming it and the fix; the provider works on (the
//! thread keeps trying, and logs when it can write again).
//!
//! The thread lives in a [`PerProcess`] cell: a forked child has none,
//! and its own `C_Initialize` starts its own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use super::process::{self, ProviderGauges, Snapshot};
use crate::config::Config;
use crate::files::{self, Access};
use crate::log;
use crate::process::PerProcess;

/// The running writer of this process, if any.
static WRITER: PerProcess<Mutex<Option<Writer>>> = PerProcess::new(|| Mutex::new(None));

struct Writer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
    file: PathBuf,
    temp: PathBuf,
}

/// What the thread needs to write.
struct Job {
    file: PathBuf,
    temp: PathBuf,
    access: Access,
    interval: Duration,
    pid: String,
    program: String,
    started: f64,
    gauges: Box<dyn Fn() -> Option<ProviderGauges> + Send>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The metrics file of process `pid` in `dir`.
pub fn file_of(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("p11derive-{pid}.prom"))
}

/// Starts keeping metrics and the writer thread when `[metrics] dir` is set
/// (after `C_Initialize` made the provider); `gauges` reads the provider's
/// own gauges (`None` once it is gone). Never fails: a problem is logged.
pub fn start(
    config: &Config,
    access: &Access,
    gauges: impl Fn() -> Option<ProviderGauges> + Send + 'static,
) {
    stop();
    let Some(dir) = config.metrics.dir.clone() else {
        return;
    };
    let pid = std::process::id();
    check_dir(&dir, &config.source);
    remove_stale(&dir, pid);
    let file = file_of(&dir, pid);
    let temp = dir.join(format!("p11derive-{pid}.prom.tmp"));
    let program = std::fs::read_to_string("/proc/self/comm")
        .map(|c| c.trim_end_matches('\n').to_string())
        .unwrap_or_default();
    process::reset();
    process::set_enabled(true);
    let job = Job {
        file: file.clone(),
        temp: temp.clone(),
        access: access.clone(),
        interval: Duration::from_millis(config.metrics.interval_ms.max(1)),
        pid: pid.to_string(),
        program,
        started: unix_now(),
        gauges: Box::new(gauges),
    };
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let told = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("p11derive-metrics".into())
        .spawn(move || job.run(&told));
    match spawned {
        Ok(thread) => {
            *WRITER.get().lock().unwrap_or_else(|e| e.into_inner()) = Some(Writer {
                stop,
                thread,
                file,
                temp,
            });
        }
        Err(e) => {
            process::set_enabled(false);
            log::warn(&format!(
                "metrics: cannot start the thread that writes {} ({e}); this process writes no \
                 metrics file",
                file.display()
            ));
        }
    }
}

/// Stops keeping metrics (`C_Finalize`): the writer thread is told, joined,
/// and its file removed.
pub fn stop() {
    process::set_enabled(false);
    let writer = WRITER
        .get()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(w) = writer else {
        return;
    };
    {
        let (stopped, wake) = &*w.stop;
        *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
    }
    let _ = w.thread.join();
    for f in [&w.file, &w.temp] {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn(&format!("metrics: cannot remove {}: {e}", f.display())),
        }
    }
}

/// Logs what keeps the directory from taking the file, with the fix.
fn check_dir(dir: &Path, config_file: &Path) {
    let (user, _) = files::effective_user();
    let problem = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "does not exist: create it (`mkdir -p {}`, writable by user {user}, or by the group \
             [store] group names)",
            dir.display()
        )),
        Err(e) => Some(format!("cannot be read ({e})")),
        Ok(m) if !m.is_dir() => Some("is not a directory".to_string()),
        Ok(_) => files::may(dir, libc::W_OK | libc::X_OK).err().map(|e| {
            format!("is not writable by user {user} ({e}): give it to that user or group")
        }),
    };
    if let Some(why) = problem {
        log::warn(&format!(
            "metrics: [metrics] dir {} {why}, or change [metrics] dir in {}. No metrics file is \
             written until then (tried again every interval); the provider works on",
            dir.display(),
            config_file.display()
        ));
    }
}

/// The pid a metrics file (or its temporary file) of this directory names.
fn pid_of(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("p11derive-")?;
    let digits = rest
        .strip_suffix(".prom")
        .or_else(|| rest.strip_suffix(".prom.tmp"))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Removes the files of processes that no longer exist.
fn remove_stale(dir: &Path, own: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(pid_of) else {
            continue;
        };
        if pid as u32 == own || files::process_exists(pid) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => log::info(&format!(
                "metrics: removed {}: process {pid} no longer exists",
                path.display()
            )),
            Err(e) => log::debug(&format!(
                "metrics: cannot remove the stale {} ({e})",
                path.display()
            )),
        }
    }
}

impl Job {
    fn run(&self, stop: &(Mutex<bool>, Condvar)) {
        let (stopped, wake) = stop;
        let mut failing = false;
        loop {
            match self.write() {
                Ok(()) if failing => {
                    failing = false;
                    log::info(&format!("metrics: writing {} again", self.file.display()));
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    log::warn(&format!(
                        "metrics: cannot write {} ({e}); check [metrics] dir (tried again every \
                         interval)",
                        self.file.display()
                    ));
                }
                Err(_) => {}
            }
            let guard = stopped.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) = wake
                .wait_timeout_while(guard, self.interval, |s| !*s)
                .unwrap_or_else(|e| e.into_inner());
            if *guard {
                return;
            }
        }
    }

    /// Writes the file under its temporary name and renames it over.
    fn write(&self) -> std::io::Result<()> {
        let used = crate::secure::in_use() * crate::secure::CHUNK;
        let limit = crate::secure::capacity() * crate::secure::CHUNK;
        let text = process::render(&Snapshot {
            pid: &self.pid,
            program: &self.program,
            started: self.started,
            now: unix_now(),
            provider: (self.gauges)(),
            arena_used: used as u64,
            arena_limit: limit as u64,
        });
        files::replace_whole(&self.file, &self.temp, &self.access, text.as_bytes(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_metrics_files_name_a_pid() {
        assert_eq!(pid_of("p11derive-123.prom"), Some(123));
        assert_eq!(pid_of("p11derive-123.prom.tmp"), Some(123));
        assert_eq!(pid_of("p11derive-.prom"), None);
        assert_eq!(pid_of("p11derive-12a.prom"), None);
        assert_eq!(pid_of("p11derive-+12.prom"), None);
        assert_eq!(pid_of("audit-verify.json"), None);
        assert_eq!(pid_of("node.prom"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(files::process_exists(std::process::id() as i32));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!files::process_exists(pid));
    }
}
