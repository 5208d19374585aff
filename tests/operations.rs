//! The operator's side of the metrics (docs/operations.md) holds together:
//! the alert rules pass `promtool check rules` and their unit tests pass
//! `promtool test rules`; the Grafana dashboard is importable JSON; and every
//! metric the rules, their tests and the dashboard use is one that
//! docs/operations.md documents in its tables. No provider is needed.
//!
//! Without promtool (Debian's `prometheus` package, installed by
//! tools/setup.sh) the promtool tests fail under CI (the variable `CI` is set)
//! and are skipped with a note elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const DOC: &str = "docs/operations.md";
const RULES: &str = "docs/prometheus/p11derive-alerts.yml";
const RULE_TESTS: &str = "docs/prometheus/p11derive-alerts.test.yml";
const DASHBOARD: &str = "docs/grafana/p11derive.json";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// promtool on `PATH`, else None after a note; under CI its absence fails
/// the test.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        let message = "promtool is not on PATH: run tools/setup.sh, or `apt-get install \
                       --no-install-recommends prometheus` (Debian's package carries promtool)";
        if std::env::var_os("CI").is_some() {
            panic!("{message}");
        }
        let _ = writeln!(std::io::stderr(), "skipped: {message}");
    }
    found
}

/// Runs promtool with `args` from the repository root; panics with its
/// output unless it succeeds.
fn run_promtool(promtool: &Path, args: &[&str]) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    assert!(
        out.status.success(),
        "`promtool {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check() {
    if let Some(promtool) = promtool() {
        run_promtool(&promtool, &["check", "rules", RULES]);
    }
}

#[test]
fn alert_rule_unit_tests_pass() {
    if let Some(promtool) = promtool() {
        run_promtool(&promtool, &["test", "rules", RULE_TESTS]);
    }
}

/// The metrics docs/operations.md documents: the first cell of every table
/// row that is one name in backquotes, mapped to the row's second cell (its
/// type).
fn documented(doc: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for line in doc.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let Some(name) = cells
            .first()
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        if !name.starts_with("p11derive_") {
            continue;
        }
        let kind = cells.get(1).copied().unwrap_or("").to_string();
        assert!(
            names.insert(name.to_string(), kind).is_none(),
            "{DOC} documents {name} twice"
        );
    }
    names
}

/// Every `p11derive_…` metric name in `text` (`p11derive_[a-z0-9_]+`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let prefix = b"p11derive_";
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i + prefix.len() <= bytes.len() {
        let starts_word = i == 0 || !is_name_byte(bytes[i - 1]);
        if starts_word && &bytes[i..i + prefix.len()] == prefix {
            let mut end = i + prefix.len();
            while end < bytes.len() && is_name_byte(bytes[end]) {
                end += 1;
            }
            names.insert(text[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
}

/// The names among `used` that `documented` does not cover: a histogram's
/// `_bucket`, `_sum` and `_count` series count as the histogram.
fn undocumented(used: &BTreeSet<String>, documented: &BTreeMap<String, String>) -> Vec<String> {
    used.iter()
        .filter(|name| {
            if documented.contains_key(name.as_str()) {
                return false;
            }
            let histogram = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .and_then(|base| documented.get(base))
                    .is_some_and(|kind| kind == "histogram")
            });
            !histogram
        })
        .cloned()
        .collect()
}

/// Every string in `value` under a key named `key`, at any depth.
fn strings_under<'a>(value: &'a serde_json::Value, key: &str, out: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == key {
                    if let Some(s) = v.as_str() {
                        out.push(s);
                    }
                }
                strings_under(v, key, out);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                strings_under(v, key, out);
            }
        }
        _ => {}
    }
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// The PromQL of the dashboard: its panels' queries and its variables'.
fn dashboard_queries(dashboard: &serde_json::Value) -> String {
    let mut queries = Vec::new();
    strings_under(dashboard, "expr", &mut queries);
    strings_under(dashboard, "query", &mut queries);
    strings_under(dashboard, "definition", &mut queries);
    queries.join("\n")
}

/// `expr` with Grafana's variables replaced by what Prometheus parses:
/// `$__rate_interval` by `5m`, every other `$name` by `.*` (they only stand
/// in label matchers).
fn without_variables(expr: &str) -> String {
    let expr = expr.replace("$__rate_interval", "5m");
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$'
            && chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphabetic() || *n == '_')
        {
            while chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphanumeric() || *n == '_')
            {
                chars.next();
            }
            out.push_str(".*");
        } else {
            out.push(c);
        }
    }
    out
}

/// Every query of the dashboard is PromQL that Prometheus parses: promtool
/// checks them as recording rules of a scratch rule file.
#[test]
fn dashboard_queries_parse() {
    let Some(promtool) = promtool() else { return };
    let d = dashboard();
    let mut exprs = Vec::new();
    strings_under(&d, "expr", &mut exprs);
    assert!(!exprs.is_empty(), "{DASHBOARD} has no queries");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let quoted = serde_json::to_string(&without_variables(expr)).expect("a string");
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("a scratch directory");
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, rules).expect("the scratch rule file");
    run_promtool(
        &promtool,
        &["check", "rules", file.to_str().expect("a UTF-8 path")],
    );
}

#[test]
fn grafana_variables_are_replaced() {
    assert_eq!(
        without_variables(r#"rate(x{pid=~"$pid", a=~"$asset"}[$__rate_interval]) * $1"#),
        r#"rate(x{pid=~".*", a=~".*"}[5m]) * $1"#
    );
}

#[test]
fn the_metric_tables_are_sound() {
    let doc = documented(&read(DOC));
    assert!(
        doc.len() >= 30,
        "{DOC}: only {} metrics found in its tables",
        doc.len()
    );
    for (name, kind) in &doc {
        assert!(
            ["counter", "gauge", "histogram"].contains(&kind.as_str()),
            "{DOC}: {name} has type {kind:?}: use counter, gauge or histogram"
        );
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{DOC}: {name} is a {kind}: counters, and only they, end in _total"
        );
    }
}

#[test]
fn rules_and_dashboard_use_only_documented_metrics() {
    let doc = documented(&read(DOC));
    let dashboard = dashboard();
    let sources = [
        (RULES, read(RULES)),
        (RULE_TESTS, read(RULE_TESTS)),
        (DASHBOARD, dashboard_queries(&dashboard)),
    ];
    let mut problems = Vec::new();
    for (file, text) in &sources {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{file} uses no p11derive_ metric");
        for name in undocumented(&used, &doc) {
            problems.push(format!("{file} uses {name}"));
        }
    }
    assert!(
        problems.is_empty(),
        "metrics missing from the tables of {DOC}:\n  {}",
        problems.join("\n  ")
    );
}

/// The check above is not vacuous: it finds a made-up metric, a histogram
/// suffix on a gauge, and names inside PromQL.
#[test]
fn the_check_catches_an_undocumented_metric() {
    let doc: BTreeMap<String, String> = [
        ("p11derive_operation_duration_seconds", "histogram"),
        ("p11derive_anchor_up", "gauge"),
    ]
    .into_iter()
    .map(|(n, k)| (n.to_string(), k.to_string()))
    .collect();
    let expr = "histogram_quantile(0.99, sum by (le) (rate(p11derive_operation_duration_seconds_bucket[5m]))) \
                > 0 and p11derive_anchor_up == 0 or rate(p11derive_made_up_total[5m]) > 0 \
                or p11derive_anchor_up_count > 1 or my_p11derive_other > 0";
    assert_eq!(
        undocumented(&metric_names(expr), &doc),
        vec!["p11derive_anchor_up_count", "p11derive_made_up_total"]
    );
}

#[test]
fn every_alert_says_how_long_how_bad_and_what_to_do() {
    let rules = read(RULES);
    let mut alerts = 0;
    for block in rules.split("- alert:").skip(1) {
        let name = block.lines().next().unwrap_or("").trim();
        alerts += 1;
        for needed in ["expr:", "for:", "severity:", "summary:", "description:"] {
            assert!(
                block.contains(needed),
                "{RULES}: alert {name} has no {needed}"
            );
        }
        let severity = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("severity:"))
            .map(str::trim)
            .unwrap_or("");
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{RULES}: alert {name} has severity {severity:?}: use critical, warning or info"
        );
        let doc = read(DOC);
        assert!(
            doc.contains(name),
            "{DOC} does not mention the alert {name}"
        );
    }
    assert!(alerts >= 15, "{RULES}: only {alerts} alerts");
}

#[test]
fn the_dashboard_is_importable() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 30),
        "{DASHBOARD}: schemaVersion missing or older than 30"
    );
    assert!(
        d["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{DASHBOARD}: no title"
    );
    assert!(
        d["uid"].as_str().is_some_and(|t| !t.is_empty()),
        "{DASHBOARD}: no uid"
    );
    // The data source is chosen at import (__inputs) or from a variable.
    let inputs = d["__inputs"].as_array().cloned().unwrap_or_default();
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{DASHBOARD}: no __inputs entry DS_PROMETHEUS for a Prometheus data source"
    );
    let vars = d["templating"]["list"]
        .as_array()
        .unwrap_or_else(|| panic!("{DASHBOARD}: no templating.list"));
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").unwrap_or_else(|| panic!("{DASHBOARD}: no variable datasource"));
    assert_eq!(ds["type"], "datasource", "{DASHBOARD}: variable datasource");
    assert_eq!(
        ds["query"], "prometheus",
        "{DASHBOARD}: variable datasource"
    );
    for name in ["program", "pid", "asset"] {
        let v = var(name).unwrap_or_else(|| panic!("{DASHBOARD}: no variable {name}"));
        assert_eq!(
            v["type"], "query",
            "{DASHBOARD}: variable {name} is not a query"
        );
        assert_eq!(
            v["datasource"]["uid"], "${datasource}",
            "{DASHBOARD}: variable {name} does not query the chosen data source"
        );
    }

    // Every panel, rows' nested ones too: a unique id, a place, and queries
    // against the chosen data source.
    let mut panels = Vec::new();
    for p in d["panels"]
        .as_array()
        .unwrap_or_else(|| panic!("{DASHBOARD}: no panels"))
    {
        panels.push(p);
        if let Some(nested) = p["panels"].as_array() {
            panels.extend(nested);
        }
    }
    let mut ids = BTreeSet::new();
    let mut queried = 0;
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?");
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{DASHBOARD}: panel {title} has no id"));
        assert!(ids.insert(id), "{DASHBOARD}: panel id {id} used twice");
        for k in ["x", "y", "w", "h"] {
            assert!(
                p["gridPos"][k].is_u64(),
                "{DASHBOARD}: panel {title} has no gridPos.{k}"
            );
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{DASHBOARD}: panel {title} does not use the chosen data source"
        );
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{DASHBOARD}: panel {title} has no targets"));
        assert!(
            !targets.is_empty(),
            "{DASHBOARD}: panel {title} has no targets"
        );
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| e.contains("p11derive_")),
                "{DASHBOARD}: panel {title} has a target without a p11derive_ expression"
            );
            queried += 1;
        }
    }
    assert!(queried >= 20, "{DASHBOARD}: only {queried} queries");
}
