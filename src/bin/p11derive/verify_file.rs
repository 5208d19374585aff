//! `audit-verify.json`: what the last `audit verify` found, left in
//! `[metrics] dir` for `p11derive metrics` (docs/metrics: the
//! `p11derive_audit_verify_*` gauges). Written after every run, pass or
//! fail, atomically (a temporary file in the same directory, renamed over
//! the last one), with the store's file permissions (`[store] group`). A
//! file that cannot be written never fails the verify: a note on standard
//! error names the path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use p11derive::config::Config;
use p11derive::files::{self, Access};
use p11derive::store::{hex, Store};

use crate::audit_cmd::Tally;

/// The file's name in `[metrics] dir`.
pub const FILE: &str = "audit-verify.json";

/// The file's content. `verified` is the newest head a run found nothing
/// wrong up to: this run's when it passed, else the last passing run's.
pub fn json(
    store_id: &str,
    tally: &Tally,
    ok: bool,
    verified: Option<u64>,
    took: Duration,
) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let ratio = match tally.checked_rows {
        0 => 0.0,
        n => tally.drift_rows as f64 / n as f64,
    };
    serde_json::json!({
        "version": 1,
        "time": now,
        "ok": ok,
        "records": tally.records,
        "lane_records": tally.lane_records,
        "head_seq": tally.head_seq,
        "verified_head_seq": if ok { Some(tally.head_seq) } else { verified },
        "faults": tally.faults,
        "checked_rows": tally.checked_rows,
        "drift_rows": tally.drift_rows,
        "drift_ratio": ratio,
        "duration_seconds": took.as_secs_f64(),
        "store_id": store_id,
    })
}

/// Writes the file when `[metrics] dir` is set; a failure is a note on
/// standard error, never the verify's.
pub fn write(config: &Config, store: &Store, tally: &Tally, ok: bool, took: Duration) {
    let Some(dir) = config.metrics.dir.as_deref() else {
        return;
    };
    let id = store
        .store_id()
        .ok()
        .flatten()
        .map_or_else(String::new, |id| hex(&id));
    let path = dir.join(FILE);
    // A failed run keeps the last passing run's head (of this store).
    let before = files::read_small(&path, 64 * 1024)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter(|v| v.get("store_id").and_then(|i| i.as_str()) == Some(id.as_str()))
        .and_then(|v| v.get("verified_head_seq").and_then(|h| h.as_u64()));
    if let Err(e) = put(config, dir, &path, &json(&id, tally, ok, before, took)) {
        let note = format!(
            "cannot write {} ({e}): `p11derive metrics` will not show this verify; make [metrics] \
             dir writable by this user (or the [store] group), or remove `dir` from [metrics] in {}",
            path.display(),
            config.source.display()
        );
        eprintln!("p11derive: note: {note}");
    }
}

/// A temporary file beside `path`, written and synced, renamed over it.
fn put(config: &Config, dir: &Path, path: &Path, v: &serde_json::Value) -> Result<(), String> {
    let access = Access::of(config.store.group.as_deref())?;
    files::create_dirs(dir, &access).map_err(|e| e.to_string())?;
    let tmp: PathBuf = dir.join(format!(".{FILE}.{}.tmp", std::process::id()));
    files::replace_whole(path, &tmp, &access, format!("{v}\n").as_bytes(), true)
        .map_err(|e| e.to_string())
}
