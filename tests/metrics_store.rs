//! `p11derive metrics`: the store's metrics (METRICS.md, "Store-level")
//! after real signatures through the provider, a refusal and lifecycle
//! changes: counts exactly those of the audit log (`audit export`), whether
//! counted in full or incrementally; the text passes `promtool check
//! metrics` and the OpenMetrics parser of prometheus_client; `--listen`
//! serves it over HTTP. Without promtool or prometheus_client the checks
//! that need them fail under CI (the variable `CI` is set) and are skipped
//! with a message elsewhere.

mod common;
#[path = "common/reference.rs"]
mod reference;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;

use common::metrics::{all_documented, documented, promtool_accepts};
use common::*;

/// Samples by their name and labels as printed (`name{a="x",b="y"}`).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("a sample: {l}"));
            (k.to_string(), v.parse().unwrap_or_else(|_| panic!("{l}")))
        })
        .collect()
}

/// The samples of one family, by their labels (`a="x",b="y"`, "" for none).
fn family(text: &str, name: &str) -> BTreeMap<String, f64> {
    samples(text)
        .into_iter()
        .filter_map(|(k, v)| {
            let labels = match k.split_once('{') {
                Some((n, rest)) if n == name => rest.trim_end_matches('}').to_string(),
                None if k == name => String::new(),
                _ => return None,
            };
            Some((labels, v))
        })
        .collect()
}

fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    family(text, name).get(labels).copied()
}

/// `p11derive metrics ARGS`, which must succeed: (stdout, stderr).
fn metrics(s: &Setup, args: &[&str]) -> (String, String) {
    let out = s.cli().arg("metrics").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "metrics {args:?}: {}",
        output_text(&out)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The counters only (the gauges move with the clock).
fn counters(text: &str) -> BTreeMap<String, f64> {
    samples(text)
        .into_iter()
        .filter(|(k, _)| k.split('{').next().unwrap().ends_with("_total"))
        .collect()
}

/// What the counters must say, counted from `audit export` (every record).
fn expected(s: &Setup) -> BTreeMap<String, f64> {
    expected_of(s.audit_records(&[]))
}

/// What the counters must say about `records` (`audit export`'s lines).
fn expected_of(records: Vec<serde_json::Value>) -> BTreeMap<String, f64> {
    let mut want = BTreeMap::new();
    for r in records {
        let event = r["event"].as_str().unwrap();
        *want
            .entry(format!(
                "p11derive_audit_records_total{{event=\"{event}\"}}"
            ))
            .or_insert(0.0) += 1.0;
        if ["sign", "verify", "encrypt", "decrypt"].contains(&event) {
            let mut labels = vec![format!("operation=\"{event}\"")];
            for (k, v) in [
                ("asset", &r["asset"]),
                ("mechanism", &r["mechanism_name"]),
                ("result", &r["rv_name"]),
                ("user", &r["actor"]),
            ] {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    labels.push(format!("{k}=\"{v}\""));
                }
            }
            let key = format!("p11derive_operations_total{{{}}}", labels.join(","));
            *want.entry(key).or_insert(0.0) += 1.0;
        }
    }
    want
}

/// The counters of `text` that `expected` covers.
fn counted(text: &str) -> BTreeMap<String, f64> {
    counters(text)
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with("p11derive_audit_records_total")
                || k.starts_with("p11derive_operations_total")
        })
        .collect()
}

/// prometheus_client's OpenMetrics parser (strict) reads `text` whole.
fn openmetrics_parses(text: &str) {
    assert!(text.ends_with("# EOF\n"), "{text}");
    if !reference::python_imports(
        "from prometheus_client.openmetrics.parser import text_string_to_metric_families",
        "prometheus_client's OpenMetrics parser",
        "`apt-get install python3-prometheus-client`",
    ) {
        return;
    }
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        n = sum(len(f.samples) for f in text_string_to_metric_families(sys.stdin.read()))\n\
        print(n)\n";
    let out = metrics::piped("python3", &["-c", script], text);
    assert!(
        out.status.success(),
        "OpenMetrics parser: {}\n{text}",
        output_text(&out)
    );
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(n, samples(text).len(), "every sample parsed");
}

/// No label value holds a digest or MAC (64 hex digits).
fn no_digest_in_labels(text: &str) {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let labels = line.split_once('{').map_or("", |(_, r)| r);
        let mut run = 0;
        for c in labels.chars() {
            run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
            assert!(run < 64, "a digest in a label: {line}");
        }
    }
}

/// Adds `[metrics] dir` to the setup's config.
fn metrics_dir(s: &Setup, dir: &std::path::Path) {
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!("\n[metrics]\ndir = \"{}\"\n", dir.display()));
    std::fs::write(&s.config, text).unwrap();
}

/// `n` signatures of `label` with CKM_ECDSA, and one verification.
fn sign_and_verify(p: &Provider, label: &str, n: usize) {
    let session = p.user_session();
    let key = private_key(&session, label);
    let mut sig = Vec::new();
    for i in 0..n {
        sig = session
            .sign(&Mechanism::Ecdsa, key, &[i as u8 + 1; 32])
            .unwrap();
    }
    let public = find_one(&session, label, ObjectClass::PUBLIC_KEY).unwrap();
    session
        .verify(&Mechanism::Ecdsa, public, &[n as u8; 32], &sig)
        .unwrap();
}

/// The asset's lifecycle through the CLI, with a signature refused while
/// suspended in between: suspend, (refusal), resume, rotate.
fn suspend_refuse_resume_rotate(s: &Setup, p: &Provider, label: &str) {
    ok(s, &["asset", "suspend", label]);
    let session = p.user_session();
    assert!(
        try_sign(&session, label).is_err(),
        "refused while suspended"
    );
    drop(session);
    ok(s, &["asset", "resume", label]);
    ok(s, &["asset", "rotate", label]);
}

/// Checks the counts and gauges every test expects after `n` signatures,
/// one verification, one refusal and a rotation of `label`.
fn check_exact(s: &Setup, text: &str, label: &str, n: f64) {
    let sign =
        format!("operation=\"sign\",asset=\"{label}\",mechanism=\"CKM_ECDSA\",result=\"CKR_OK\"");
    assert_eq!(
        value(text, "p11derive_operations_total", &sign),
        Some(n),
        "{text}"
    );
    let verify = sign.replace("\"sign\"", "\"verify\"");
    assert_eq!(
        value(text, "p11derive_operations_total", &verify),
        Some(1.0),
        "{text}"
    );
    let refusals = family(text, "p11derive_refusals_total");
    let refused = format!("rule=\"state\",operation=\"sign\",asset=\"{label}\"");
    assert_eq!(refusals.get(&refused), Some(&1.0), "{refusals:?}");
    assert_eq!(refusals.values().sum::<f64>(), 1.0, "{refusals:?}");
    let kinds = family(text, "p11derive_lifecycle_transitions_total");
    for kind in ["create", "suspend", "resume", "rotate"] {
        assert_eq!(
            kinds.get(&format!("kind=\"{kind}\"")),
            Some(&1.0),
            "{kind}: {kinds:?}"
        );
    }
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert_eq!(counted(text), expected(s), "the counts of `audit export`");
    assert_eq!(
        value(text, "p11derive_assets", "state=\"active\""),
        Some(1.0)
    );
    assert_eq!(
        value(text, "p11derive_assets", "state=\"suspended\""),
        Some(0.0)
    );
    let records = s.audit_records(&[]);
    let head = records
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap();
    let lanes = records.iter().filter(|r| r["seq"].is_null()).count();
    assert_eq!(
        value(text, "p11derive_audit_chain_records", ""),
        Some(head as f64)
    );
    assert_eq!(
        value(text, "p11derive_audit_lane_records", ""),
        Some(lanes as f64)
    );
    assert_eq!(
        value(text, "p11derive_audit_pending_records", ""),
        Some(0.0)
    );
    let newest = records
        .iter()
        .map(|r| r["time_ns"].as_u64().unwrap())
        .max()
        .unwrap();
    let shown = value(text, "p11derive_audit_newest_record_timestamp_seconds", "").unwrap();
    assert!(
        (shown - newest as f64 / 1e9).abs() < 1e-3,
        "{shown} {newest}"
    );
    assert_eq!(
        value(text, "p11derive_approval_requests_pending", ""),
        Some(0.0)
    );
    no_digest_in_labels(text);
}

#[test]
fn counts_and_gauges_are_those_of_the_log() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("wallet", "secp256k1");
    let p = s.load();
    sign_and_verify(&p, "wallet", 5);
    suspend_refuse_resume_rotate(&s, &p, "wallet");

    // Without [metrics] dir: everything counted, and said so.
    let (text, said) = metrics(&s, &[]);
    assert!(said.contains("[metrics] dir"), "{said}");
    check_exact(&s, &text, "wallet", 5.0);
    promtool_accepts(&text);
    assert_eq!(
        value(
            &text,
            "p11derive_store_info",
            "engine=\"sqlite\",schema=\"11\""
        )
        .or_else(|| family(&text, "p11derive_store_info")
            .values()
            .next()
            .copied()),
        Some(1.0)
    );
    // With the PIN the anchor is read: its lag is the chain's records it
    // does not hold yet (as `status` shows the anchor).
    assert_eq!(value(&text, "p11derive_anchor_up", ""), Some(1.0));
    let status = s.cli().args(["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let anchored = status["anchor"]["record"].as_u64().unwrap();
    let head = value(&text, "p11derive_audit_chain_records", "").unwrap();
    assert_eq!(
        value(&text, "p11derive_anchor_lag_records", ""),
        Some(head - anchored as f64)
    );
    // Without it, no anchor metrics at all.
    let out = s
        .cli()
        .env_remove("P11DERIVE_PIN")
        .arg("metrics")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("p11derive_anchor"));

    let (om, _) = metrics(&s, &["--openmetrics"]);
    openmetrics_parses(&om);
    assert_eq!(counted(&om), counted(&text));
    let (bare, _) = metrics(&s, &["--no-asset-labels"]);
    assert!(!bare.contains("asset="), "{bare}");
    promtool_accepts(&bare);
    let sign = "operation=\"sign\",mechanism=\"CKM_ECDSA\",result=\"CKR_OK\"";
    assert_eq!(value(&bare, "p11derive_operations_total", sign), Some(5.0));

    // Counted incrementally in [metrics] dir: the same numbers as a full
    // count, after more operations, without the file, and for another store.
    let dir = s.dir.join("metrics");
    metrics_dir(&s, &dir);
    let (first, said) = metrics(&s, &[]);
    assert!(!said.contains("counted"), "{said}");
    assert_eq!(counters(&first), counters(&text));
    let kept = dir.join("metrics-counts.json");
    assert!(kept.exists());
    sign_and_verify(&p, "wallet", 3);
    let (more, _) = metrics(&s, &[]);
    assert_eq!(counted(&more), expected(&s));
    let sign = "operation=\"sign\",asset=\"wallet\",mechanism=\"CKM_ECDSA\",result=\"CKR_OK\"";
    let signed = |t: &str| value(t, "p11derive_operations_total", sign);
    assert_eq!(signed(&more), Some(8.0), "5 before, 3 more");
    std::fs::remove_file(&kept).unwrap();
    let (full, _) = metrics(&s, &[]);
    assert_eq!(counters(&full), counters(&more));
    drop(p);

    let other = setup(None);
    other.create_asset("cold", "secp256k1");
    metrics_dir(&other, &dir);
    let (theirs, _) = metrics(&other, &[]);
    assert_eq!(
        counted(&theirs),
        expected(&other),
        "not the first store's counts"
    );
    assert!(!theirs.contains("wallet"), "{theirs}");
    let (ours, _) = metrics(&s, &[]);
    assert_eq!(
        counters(&ours),
        counters(&more),
        "counted again for this store"
    );

    // A rewritten log (its last record changed) is counted again, in full.
    sqlite(
        &s.store,
        "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit);",
    );
    let (cut, _) = metrics(&s, &[]);
    assert_eq!(counted(&cut), expected(&s));
}

/// The real `audit verify` leaves its result where `p11derive metrics`
/// reads it: a pass, then the records written after it counted as
/// unverified, then a failure with its drift; every documented store metric
/// is written (users mode's lockouts aside) and documented with its type.
#[test]
fn a_real_audit_verify_feeds_the_metrics() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("w", "p256");
    let dir = s.dir.join("metrics");
    std::fs::create_dir_all(&dir).unwrap();
    metrics_dir(&s, &dir);
    let p = s.load();
    sign_and_verify(&p, "w", 2);
    drop(p);
    let out = cli(&s, &["audit", "verify"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let (text, _) = metrics(&s, &[]);
    promtool_accepts(&text);
    all_documented(&text, "The store's metrics");
    let written = metrics::declared(&text);
    for name in documented("The store's metrics").keys() {
        assert!(
            written.contains_key(name) || name == "p11derive_users_locked_out",
            "{name} is documented but not written\n{text}"
        );
    }
    let v = |t: &str, n: &str| value(t, n, "");
    assert_eq!(v(&text, "p11derive_audit_verify_success"), Some(1.0));
    assert_eq!(v(&text, "p11derive_audit_verify_faults"), Some(0.0));
    assert_eq!(v(&text, "p11derive_audit_verify_drift_ratio"), Some(0.0));
    assert_eq!(v(&text, "p11derive_audit_unverified_records"), Some(0.0));
    let verified = v(&text, "p11derive_audit_verify_records").unwrap();
    assert_eq!(Some(verified), v(&text, "p11derive_audit_chain_records"));

    // More records: counted as unverified until the next run.
    let p = s.load();
    sign_and_verify(&p, "w", 1);
    drop(p);
    let (text, _) = metrics(&s, &[]);
    let head = v(&text, "p11derive_audit_chain_records").unwrap();
    assert!(head > verified);
    assert_eq!(
        v(&text, "p11derive_audit_unverified_records"),
        Some(head - verified)
    );

    // A state row changed outside p11derive: the run fails, with drift.
    sqlite(
        &s.store,
        "UPDATE assets SET state = 'SUSPENDED' WHERE name = 'w';",
    );
    let out = cli(&s, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let (text, _) = metrics(&s, &[]);
    assert_eq!(v(&text, "p11derive_audit_verify_success"), Some(0.0));
    assert!(
        v(&text, "p11derive_audit_verify_faults").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        v(&text, "p11derive_audit_verify_drift_ratio").unwrap() > 0.0,
        "{text}"
    ); // A failed run verifies nothing: the records after the last pass stay
       // unverified.
    let head = v(&text, "p11derive_audit_chain_records").unwrap();
    assert_eq!(
        v(&text, "p11derive_audit_unverified_records"),
        Some(head - verified),
        "{text}"
    );
}

#[test]
fn audit_verify_result_is_read_from_the_metrics_dir() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("w", "p256");
    let dir = s.dir.join("metrics");
    metrics_dir(&s, &dir);
    let (text, _) = metrics(&s, &[]);
    assert!(!text.contains("p11derive_audit_verify"), "no result yet");
    let head = value(&text, "p11derive_audit_chain_records", "").unwrap();
    // The store's id, as a real run writes it.
    let out = cli(&s, &["audit", "verify"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let file = dir.join("audit-verify.json");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let id = written["store_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "{written}");
    std::fs::write(
        &file,
        format!(
            r#"{{"version":1,"time":1733420000.5,"ok":true,"records":2,"lane_records":0,
            "head_seq":1,"faults":0,"checked_rows":1,"drift_rows":0,"drift_ratio":0.0,
            "duration_seconds":0.12,"store_id":"{id}"}}"#
        ),
    )
    .unwrap();
    let (text, _) = metrics(&s, &[]);
    let v = |n: &str| value(&text, n, "");
    assert_eq!(
        v("p11derive_audit_verify_last_run_timestamp_seconds"),
        Some(1733420000.5)
    );
    assert_eq!(v("p11derive_audit_verify_success"), Some(1.0));
    assert_eq!(v("p11derive_audit_verify_records"), Some(2.0));
    assert_eq!(v("p11derive_audit_verify_faults"), Some(0.0));
    assert_eq!(v("p11derive_audit_verify_drift_ratio"), Some(0.0));
    assert_eq!(v("p11derive_audit_verify_duration_seconds"), Some(0.12));
    assert_eq!(v("p11derive_audit_unverified_records"), Some(head - 1.0));
    promtool_accepts(&text);
    let (om, _) = metrics(&s, &["--openmetrics"]);
    openmetrics_parses(&om);

    std::fs::write(&file, "{\"version\":1,\"ok\":tru").unwrap();
    let (text, said) = metrics(&s, &[]);
    assert!(!text.contains("p11derive_audit_verify"), "{text}");
    assert!(
        said.contains("audit-verify.json") && said.contains("audit verify"),
        "{said}"
    );
}

/// One HTTP/1.0 request to `addr`: (status line, headers, body).
fn http(addr: &str, request: &str) -> (String, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_string(),
        headers.to_ascii_lowercase(),
        body.to_string(),
    )
}

#[test]
fn listen_serves_the_metrics_over_http() {
    let _turn = turn();
    let s = setup(None);
    s.create_asset("hot", "secp256k1");
    let p = s.load();
    sign_and_verify(&p, "hot", 2);

    let mut child = s
        .cli()
        .args(["metrics", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("the address it serves at").unwrap();
        if let Some(at) = line.split("http://").nth(1) {
            break at.trim_end_matches("/metrics").to_string();
        }
    };
    assert!(url.starts_with("127.0.0.1:"), "{url}");
    let get = |path: &str, accept: &str| {
        http(
            &url,
            &format!("GET {path} HTTP/1.0\r\nHost: x\r\nAccept: {accept}\r\n\r\n"),
        )
    };
    let (status, headers, body) = get("/metrics", "text/plain");
    assert!(status.contains(" 200"), "{status}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    promtool_accepts(&body);
    let sign = "operation=\"sign\",asset=\"hot\",mechanism=\"CKM_ECDSA\",result=\"CKR_OK\"";
    assert_eq!(value(&body, "p11derive_operations_total", sign), Some(2.0));

    let om = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (status, headers, body) = get("/metrics", om);
    assert!(status.contains(" 200"), "{status}");
    assert!(
        headers.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    openmetrics_parses(&body);

    // Counts move with the log, counted from where the last scrape stopped.
    sign_and_verify(&p, "hot", 3);
    let (_, _, body) = get("/metrics", "*/*");
    assert_eq!(value(&body, "p11derive_operations_total", sign), Some(5.0));
    assert_eq!(counted(&body), expected(&s));
    // Logged in once at the start, the anchor read at each scrape.
    assert_eq!(value(&body, "p11derive_anchor_up", ""), Some(1.0));

    // HEAD: the header fields of a GET, its length included, and no body.
    let (status, headers, body) = http(
        &url,
        "HEAD /metrics HTTP/1.0\r\nHost: x\r\nAccept: text/plain\r\n\r\n",
    );
    assert!(status.contains(" 200"), "{status}");
    assert!(body.is_empty(), "a body answered HEAD: {body}");
    let length: usize = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length: {headers}"));
    let (_, _, got) = get("/metrics", "text/plain");
    // The next scrape may differ only in its timings, not by half.
    assert!(
        length > got.len() / 2 && length < got.len() * 2,
        "HEAD says {length} bytes, GET sent {}",
        got.len()
    );

    let (status, _, _) = get("/other", "*/*");
    assert!(status.contains(" 404"), "{status}");
    let (status, _, _) = http(
        &url,
        "POST /metrics HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(status.contains(" 405"), "{status}");

    // A busy address is refused, named.
    let out = cli(&s, &["metrics", "--listen", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));
    let _ = child.kill();
    let _ = child.wait();
    let out = cli(&s, &["metrics", "--listen", "localhost"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(stderr(&out).contains("\"localhost\""), "{}", stderr(&out));
}

#[test]
fn metrics_on_postgresql_count_the_lanes() {
    let _turn = turn();
    let url = pg_database(&pg_admin_url(), "p11derive_metrics");
    let s = setup_with(None, false);
    s.use_pg(&url);
    s.init();
    s.create_asset("shared", "secp256k1");
    let p = s.load();
    sign_and_verify(&p, "shared", 4);
    suspend_refuse_resume_rotate(&s, &p, "shared");
    drop(p);
    let (text, _) = metrics(&s, &[]);
    check_exact(&s, &text, "shared", 4.0);
    assert!(value(&text, "p11derive_audit_lane_records", "").unwrap() > 0.0);
    assert_eq!(
        family(&text, "p11derive_store_info")
            .keys()
            .next()
            .map(|k| k.starts_with("engine=\"postgresql\"")),
        Some(true)
    );
    promtool_accepts(&text);
    // Counted incrementally, lane by lane.
    let dir = s.dir.join("metrics");
    metrics_dir(&s, &dir);
    let _ = metrics(&s, &[]);
    let p = s.load();
    sign_and_verify(&p, "shared", 2);
    drop(p);
    let (more, _) = metrics(&s, &[]);
    assert_eq!(counted(&more), expected(&s));
}

#[test]
fn the_command_has_its_help_and_man_page() {
    let help = Command::new(cli_path())
        .args(["metrics", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for word in [
        "--listen",
        "--openmetrics",
        "--no-asset-labels",
        "Examples:",
        "audit verify",
    ] {
        assert!(text.contains(word), "{word}: {text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(cli_path())
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let page = std::fs::read_to_string(dir.path().join("p11derive-metrics.1")).unwrap();
    assert!(page.contains("listen"), "{page}");
}

#[test]
fn users_mode_needs_a_reader_of_the_audit_log_and_counts_lockouts() {
    use common::users::*;
    let _turn = turn();
    let s = users_setup_on(None);
    add_user(&s, "carol", "auditor", "*", "carol-secret-1");
    add_user(&s, "sam", "signer", "*", "sam-secret-1");
    // A signer may not read the audit log: refused (exit 3).
    let out = as_user(&s, "sam", "sam-secret-1", &["metrics"]);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    // Three wrong secrets lock sam out (max_failures = 3).
    for _ in 0..3 {
        let out = as_user(&s, "sam", "wrong-secret", &["asset", "list"]);
        assert!(!out.status.success());
    }
    let out = as_user(&s, "carol", "carol-secret-1", &["metrics"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(value(&text, "p11derive_users_locked_out", ""), Some(1.0));
    let refusals = family(&text, "p11derive_refusals_total");
    assert!(
        refusals
            .keys()
            .any(|k| k.starts_with("rule=\"role\"") && k.ends_with("user=\"sam\"")),
        "{refusals:?}"
    );
    // The records up to the head the metrics saw (the export's own login
    // comes after).
    let head = value(&text, "p11derive_audit_chain_records", "").unwrap() as u64;
    let export = as_user(&s, "carol", "carol-secret-1", &["audit", "export"]);
    assert!(export.status.success(), "{}", output_text(&export));
    let records = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["seq"].as_u64().is_some_and(|q| q <= head))
        .collect();
    let want = expected_of(records);
    assert_eq!(counted(&text), want);
    promtool_accepts(&text);
    no_digest_in_labels(&text);
}
