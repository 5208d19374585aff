//! `p11derive metrics`: the store's metrics for Prometheus (METRICS.md,
//! "Store-level"), printed once or served over HTTP (`--listen`).
//!
//! Read from the store without the audit key: informative; `audit verify`
//! is the authority. Record counts are incremental (`store::metrics`): kept
//! in memory while serving, in `[metrics] dir/metrics-counts.json` between
//! runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::http::Response;
use p11derive::backend::Backend;
use p11derive::config::Config;
use p11derive::error::{mech_name, rv_name};
use p11derive::metrics::text::{Exposition, Format, Kind};
use p11derive::store::{Counts, Store};

use crate::args::{Cli, MetricsArgs};
use crate::common::{
    failed, hsm_pin, load_config, lock_memory, login, open_backend, open_store_read_only,
    pin_given, Failure,
};

/// The file the counts are kept in between runs, in `[metrics] dir`.
const COUNTS_FILE: &str = "metrics-counts.json";
/// What `audit verify` leaves in `[metrics] dir`.
const VERIFY_FILE: &str = "audit-verify.json";
/// The counts file's format.
const COUNTS_VERSION: u64 = 2;

/// What a scrape needs: the store, the logged-in backing HSM (with the
/// PIN), the config's choices, the counts so far.
struct Scraper {
    store: Store,
    config: Config,
    backend: Option<Backend>,
    /// The login failed: the anchor is reported as not read.
    anchor_down: bool,
    asset_labels: bool,
    counts: Counts,
    /// A malformed audit-verify.json was reported once.
    told_verify: bool,
}

pub fn metrics(cli: &Cli, args: &MetricsArgs) -> Result<(), Failure> {
    let config = load_config(cli)?;
    let store = open_store_read_only(&config)?;
    if config.users.enabled {
        let want = crate::users::Want::to(p11derive::access::Action::ReadAudit);
        crate::users::gate(cli, &store, &config, want)?;
    }
    let (backend, anchor_down) = if pin_given(cli) || config.users.enabled {
        match hsm_login(cli, &config) {
            Ok(b) => (Some(b), false),
            Err(f) => {
                eprintln!(
                    "p11derive: note: the rollback anchor is not read ({}): \
                     p11derive_anchor_up is 0",
                    f.message()
                );
                (None, true)
            }
        }
    } else {
        (None, false)
    };
    let asset_labels = config.metrics.asset_labels && !args.no_asset_labels;
    let mut s = Scraper {
        store,
        config,
        backend,
        anchor_down,
        asset_labels,
        counts: Counts::default(),
        told_verify: false,
    };
    let result = match args.listen {
        Some(addr) => serve(&mut s, addr),
        None => once(&mut s, args.openmetrics),
    };
    if let Some(b) = s.backend.take() {
        let _ = b.logout();
        b.finalize();
    }
    result
}

/// Opens the backing HSM and logs in (the PIN, or users mode's service
/// credential), to read the anchor.
fn hsm_login(cli: &Cli, config: &Config) -> Result<Backend, Failure> {
    lock_memory(config)?;
    let pin = hsm_pin(cli, config)?;
    let backend = open_backend(config)?;
    if let Err(f) = login(&backend, &pin) {
        backend.finalize();
        return Err(f);
    }
    Ok(backend)
}

/// One run: the counts from the file (when they still hold), brought up
/// to date, kept again, and the text printed.
fn once(s: &mut Scraper, openmetrics: bool) -> Result<(), Failure> {
    let dir = s.config.metrics.dir.clone();
    match &dir {
        Some(dir) => {
            if let Some(c) = read_counts(&dir.join(COUNTS_FILE)) {
                if s.store.counted_place_holds(&c)? {
                    s.counts = c;
                }
            }
        }
        None => eprintln!(
            "p11derive: note: every audit record was counted: [metrics] dir is not set in {}, \
             so the counts are not kept between runs; set it (or use --listen) to count only \
             the newer records next time",
            s.config.source.display()
        ),
    }
    let format = if openmetrics {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    };
    let before = s.counts.clone();
    let text = scrape(s, format)?;
    if let Some(dir) = &dir {
        if s.counts != before {
            if let Err(m) = write_counts(&s.config, dir, &s.counts) {
                eprintln!("p11derive: note: {m}");
            }
        }
    }
    crate::common::emit(format_args!("{}", text.trim_end_matches('\n')));
    Ok(())
}

/// Serves `GET /metrics` at `addr` until the process is stopped.
fn serve(s: &mut Scraper, addr: std::net::SocketAddr) -> Result<(), Failure> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        failed(format!(
            "cannot listen on {addr} (--listen): {e}; give a free port on an address of this \
             host (e.g. 127.0.0.1:9464)"
        ))
    })?;
    if let Some(dir) = &s.config.metrics.dir {
        if let Some(c) = read_counts(&dir.join(COUNTS_FILE)) {
            if s.store.counted_place_holds(&c)? {
                s.counts = c;
            }
        }
    }
    let bound = listener
        .local_addr()
        .map_or_else(|_| addr.to_string(), |a| a.to_string());
    eprintln!("p11derive: serving the store's metrics at http://{bound}/metrics");
    let scraper = std::sync::Mutex::new(s);
    crate::http::serve(listener, |request| {
        if request.path != "/metrics" {
            return Response::text(404, "not found: the metrics are at /metrics\n");
        }
        if request.method != "GET" && request.method != "HEAD" {
            let mut r = Response::text(405, "method not allowed: use GET\n");
            r.allow = Some("GET, HEAD");
            return r;
        }
        let format = Format::from_accept(&request.accept);
        let mut s = scraper.lock().unwrap_or_else(|e| e.into_inner());
        // A fresh read-only connection per scrape: one opened before any
        // writer ran may read the file alone (SQLite `immutable`) and would
        // never see a later change. (Users mode keeps its one writable
        // connection, which sees every change.)
        if !s.config.users.enabled {
            match crate::common::read_only(&s.config) {
                Ok(store) => s.store = store,
                Err(e) => eprintln!("p11derive: metrics: cannot open the store again: {e}"),
            }
        }
        match scrape(&mut s, format) {
            Ok(text) => Response {
                code: 200,
                content_type: format.content_type().into(),
                body: text,
                allow: None,
            },
            Err(f) => {
                // The detail (paths, the store's words) goes to the log,
                // not to whoever scrapes.
                eprintln!("p11derive: metrics: {}", f.message());
                Response::text(500, "the metrics could not be read: see the server's log\n")
            }
        }
    });
    Ok(())
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The metrics text: counts brought up to date, gauges read now.
fn scrape(s: &mut Scraper, format: Format) -> Result<String, Failure> {
    let started = Instant::now();
    let now = now_seconds();
    if !s.store.counted_place_holds(&s.counts)? {
        s.counts = Counts::default();
    }
    s.counts = s.store.count_records(&s.counts)?;
    let g = s.store.metric_gauges(now as i64)?;
    let mut e = Exposition::new(format);
    counters(&mut e, &s.counts, s.asset_labels);

    e.family("p11derive_assets", Kind::Gauge, "Assets by state.");
    let mut states: BTreeMap<String, u64> = ["active", "rotating", "suspended", "retired"]
        .iter()
        .map(|st| (st.to_string(), 0))
        .collect();
    states.extend(g.assets.clone());
    for (state, n) in &states {
        e.sample(&[("state", state)], *n as f64);
    }
    gauge(
        &mut e,
        "p11derive_audit_chain_records",
        "Records in the main audit chain (its head's seq).",
        g.head_seq as f64,
    );
    gauge(
        &mut e,
        "p11derive_audit_lane_records",
        "Records in the writers' lanes (PostgreSQL).",
        g.lane_records as f64,
    );
    gauge(
        &mut e,
        "p11derive_audit_pending_records",
        "Records of processes without a login, waiting to be sealed into the chain.",
        g.pending as f64,
    );
    if let Some(t) = g.head_time_ns.max(g.lane_time_ns) {
        let t = t as f64 / 1e9;
        gauge(
            &mut e,
            "p11derive_audit_newest_record_timestamp_seconds",
            "Time of the newest audit record.",
            t,
        );
        gauge(
            &mut e,
            "p11derive_audit_newest_record_age_seconds",
            "Now minus the time of the newest audit record.",
            (now - t).max(0.0),
        );
    }
    verify_metrics(s, &mut e, g.head_seq);
    anchor_metrics(s, &mut e, g.head_seq, g.head_time_ns)?;
    gauge(
        &mut e,
        "p11derive_approval_requests_pending",
        "Requests waiting for approvals (not expired).",
        g.requests_pending as f64,
    );
    if s.config.users.enabled {
        gauge(
            &mut e,
            "p11derive_users_locked_out",
            "Users locked out by failed logins now.",
            g.locked_out as f64,
        );
    }
    e.family(
        "p11derive_store_info",
        Kind::Gauge,
        "The store: its engine and schema version (always 1).",
    );
    let engine = if s.store.is_shared() {
        "postgresql"
    } else {
        "sqlite"
    };
    let schema = p11derive::store::SCHEMA_VERSION.to_string();
    e.sample(&[("engine", engine), ("schema", &schema)], 1.0);
    gauge(
        &mut e,
        "p11derive_metrics_scrape_duration_seconds",
        "How long computing these metrics took.",
        started.elapsed().as_secs_f64(),
    );
    Ok(e.finish())
}

fn gauge(e: &mut Exposition, name: &str, help: &str, v: f64) {
    e.family(name, Kind::Gauge, help);
    e.sample(&[], v);
}

/// Writes a counter family from `series` (label values in `names` order);
/// a family without series still declares itself, so a dashboard or an
/// alert sees the metric exists before its first sample.
fn counter<const N: usize>(
    e: &mut Exposition,
    name: &str,
    help: &str,
    names: [&str; N],
    series: &BTreeMap<[String; N], u64>,
) {
    e.family(name, Kind::Counter, help);
    for (values, n) in series {
        let labels: Vec<(&str, &str)> = names
            .iter()
            .zip(values.iter())
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        e.sample(&labels, *n as f64);
    }
}

/// The counters: operations, refusals, lifecycle records, records by event.
fn counters(e: &mut Exposition, c: &Counts, asset_labels: bool) {
    let asset = |a: &Option<String>| {
        if asset_labels {
            a.clone().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut ops: BTreeMap<[String; 5], u64> = BTreeMap::new();
    let mut events: BTreeMap<[String; 1], u64> = BTreeMap::new();
    for ((event, a, mech, rv, actor), n) in &c.records {
        *events.entry([event.clone()]).or_default() += n;
        if matches!(event.as_str(), "sign" | "verify" | "encrypt" | "decrypt") {
            let key = [
                event.clone(),
                asset(a),
                mech.map(mech_name).unwrap_or_default(),
                rv_name(*rv).to_string(),
                actor.clone().unwrap_or_default(),
            ];
            *ops.entry(key).or_default() += n;
        }
    }
    let mut refusals: BTreeMap<[String; 4], u64> = BTreeMap::new();
    for ((rule, op, a, actor), n) in &c.refusals {
        let key = [
            rule.clone(),
            op.clone(),
            asset(a),
            actor.clone().unwrap_or_default(),
        ];
        *refusals.entry(key).or_default() += n;
    }
    let kinds: BTreeMap<[String; 1], u64> =
        c.kinds.iter().map(|(k, n)| ([k.clone()], *n)).collect();
    counter(
        e,
        "p11derive_operations_total",
        "Audit records of sign, verify, encrypt and decrypt operations (main chain and lanes).",
        ["operation", "asset", "mechanism", "result", "user"],
        &ops,
    );
    counter(
        e,
        "p11derive_refusals_total",
        "Refused operations by the rule that refused them (state: the asset's lifecycle state).",
        ["rule", "operation", "asset", "user"],
        &refusals,
    );
    counter(
        e,
        "p11derive_lifecycle_transitions_total",
        "Asset creations and lifecycle transitions by kind.",
        ["kind"],
        &kinds,
    );
    counter(
        e,
        "p11derive_audit_records_total",
        "Audit records by event.",
        ["event"],
        &events,
    );
}

/// The last `audit verify` run, from `audit-verify.json` in `[metrics]
/// dir`: left out when there is none; a malformed one is reported once.
fn verify_metrics(s: &mut Scraper, e: &mut Exposition, head_seq: u64) {
    let Some(dir) = &s.config.metrics.dir else {
        return;
    };
    let path = dir.join(VERIFY_FILE);
    let text = match p11derive::files::read_small(&path, 64 * 1024) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => Err(e.to_string()),
    };
    let v = match text.and_then(|t| parse_verify(&t)) {
        Ok(v) => v,
        Err(m) => {
            if !s.told_verify {
                eprintln!(
                    "p11derive: note: {} is not audit verify's result ({m}): the \
                     p11derive_audit_verify_* metrics are left out until `p11derive audit \
                     verify` writes it again",
                    path.display()
                );
                s.told_verify = true;
            }
            return;
        }
    };
    // Only this store's result counts: a file without the store's id (or
    // with another's) is not shown as a verify of this store.
    let ours = s.store.store_id_hex().unwrap_or_default();
    if v.store_id.as_deref() != Some(ours.as_str()) {
        if !s.told_verify {
            eprintln!(
                "p11derive: note: {} is not a result of this store's (its store_id is {}, this \
                 store's is {ours}): the p11derive_audit_verify_* metrics are left out until \
                 `p11derive audit verify` writes it again",
                path.display(),
                v.store_id.as_deref().unwrap_or("missing"),
            );
            s.told_verify = true;
        }
        return;
    }
    let g = |e: &mut Exposition, name: &str, help: &str, x: f64| gauge(e, name, help, x);
    g(
        e,
        "p11derive_audit_verify_last_run_timestamp_seconds",
        "When `p11derive audit verify` last ran.",
        v.time,
    );
    g(
        e,
        "p11derive_audit_verify_success",
        "1 if the last `audit verify` found nothing wrong, else 0.",
        if v.ok { 1.0 } else { 0.0 },
    );
    g(
        e,
        "p11derive_audit_verify_records",
        "Records the last `audit verify` checked.",
        v.records,
    );
    g(
        e,
        "p11derive_audit_verify_faults",
        "Faults the last `audit verify` found.",
        v.faults,
    );
    g(
        e,
        "p11derive_audit_verify_drift_ratio",
        "State rows that disagree with the chain / state rows checked, at the last verify.",
        v.drift_ratio,
    );
    g(
        e,
        "p11derive_audit_verify_duration_seconds",
        "How long the last `audit verify` took.",
        v.duration_seconds,
    );
    g(
        e,
        "p11derive_audit_unverified_records",
        "Main-chain records written after the head the last passing `audit verify` checked.",
        head_seq.saturating_sub(v.verified_head_seq.unwrap_or(0)) as f64,
    );
}

/// What `audit-verify.json` says (METRICS.md).
struct VerifyResult {
    time: f64,
    ok: bool,
    records: f64,
    faults: f64,
    drift_ratio: f64,
    duration_seconds: f64,
    /// The head the last passing run checked (None: no run passed).
    verified_head_seq: Option<u64>,
    store_id: Option<String>,
}

fn parse_verify(text: &str) -> Result<VerifyResult, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let num = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| format!("no number {k:?}"))
    };
    if v.get("version").and_then(serde_json::Value::as_u64) != Some(1) {
        return Err("not version 1".into());
    }
    Ok(VerifyResult {
        time: num("time")?,
        ok: v
            .get("ok")
            .and_then(serde_json::Value::as_bool)
            .ok_or("no boolean \"ok\"")?,
        records: num("records")?,
        faults: num("faults")?,
        drift_ratio: num("drift_ratio")?,
        duration_seconds: num("duration_seconds")?,
        verified_head_seq: match v.get("verified_head_seq") {
            // Written before the field existed: a passing run's head.
            None => v
                .get("head_seq")
                .and_then(serde_json::Value::as_u64)
                .filter(|_| v.get("ok") == Some(&serde_json::Value::Bool(true))),
            Some(h) if h.is_null() => None,
            Some(h) => Some(
                h.as_u64()
                    .ok_or("\"verified_head_seq\" is not a record number")?,
            ),
        },
        store_id: v
            .get("store_id")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string),
    })
}

/// The rollback anchor as the backing HSM holds it (only with the PIN).
fn anchor_metrics(
    s: &Scraper,
    e: &mut Exposition,
    head_seq: u64,
    head_time_ns: Option<u64>,
) -> Result<(), Failure> {
    let anchor = match &s.backend {
        Some(b) => b.read_anchor().map_err(|e| e.to_string()),
        None if s.anchor_down => Err("not logged in".to_string()),
        None => return Ok(()),
    };
    // Read, even if no anchor exists yet (a store no process has anchored):
    // then it covers nothing.
    let up = anchor.is_ok();
    if let Err(m) = &anchor {
        eprintln!("p11derive: metrics: cannot read the rollback anchor: {m}");
    }
    gauge(
        e,
        "p11derive_anchor_up",
        "1 if the rollback anchor was read from the backing HSM, 0 if reading it failed.",
        if up { 1.0 } else { 0.0 },
    );
    let Ok(anchor) = anchor else { return Ok(()) };
    let anchored = anchor.as_ref().map_or(0, |a| a.head.0);
    gauge(
        e,
        "p11derive_anchor_lag_records",
        "Main-chain records the rollback anchor does not cover yet.",
        head_seq.saturating_sub(anchored) as f64,
    );
    gauge(
        e,
        "p11derive_anchor_ahead_records",
        "Main-chain records the rollback anchor holds that the store lacks (a store rolled back).",
        anchored.saturating_sub(head_seq) as f64,
    );
    let lag = match head_time_ns {
        Some(newest) if anchored < head_seq => {
            // No anchor yet: nothing is covered since the first record.
            let at = s.store.record_time_ns(anchored.max(1))?.unwrap_or(newest);
            newest.saturating_sub(at) as f64 / 1e9
        }
        _ => 0.0,
    };
    gauge(
        e,
        "p11derive_anchor_lag_seconds",
        "Time of the newest main-chain record minus that of the anchor's head record.",
        lag,
    );
    Ok(())
}

/// The counts kept by an earlier run, if the file is there and readable.
fn read_counts(path: &Path) -> Option<Counts> {
    let text = p11derive::files::read_small(path, 64 * 1024 * 1024).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    if v.get("version").and_then(serde_json::Value::as_u64) != Some(COUNTS_VERSION) {
        return None;
    }
    serde_json::from_value(v.get("counts")?.clone()).ok()
}

/// Keeps the counts in `dir` (temporary file, then rename: a reader never
/// sees half a file).
fn write_counts(config: &Config, dir: &Path, c: &Counts) -> Result<(), String> {
    let access = p11derive::files::Access::of(config.store.group.as_deref())?;
    let target = dir.join(COUNTS_FILE);
    let cannot = |e: std::io::Error| {
        format!(
            "cannot keep the counts in {} ({e}): the next run counts every record again; \
             let this user write [metrics] dir",
            target.display()
        )
    };
    p11derive::files::create_dirs(dir, &access).map_err(cannot)?;
    let body = serde_json::json!({"version": COUNTS_VERSION, "counts": c}).to_string();
    let tmp: PathBuf = dir.join(format!(".{COUNTS_FILE}.{}.tmp", std::process::id()));
    p11derive::files::replace_whole(&target, &tmp, &access, body.as_bytes(), true).map_err(cannot)
}
