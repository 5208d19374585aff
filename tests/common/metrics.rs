//! What the metrics tests share: promtool's check of a text, and the
//! families docs/operations.md documents, so every family a test sees is
//! checked against the operator's guide.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// `promtool check metrics` reads `text` (Prometheus text format) without a
/// complaint; skipped with a note where promtool is not installed, except
/// under CI, where it fails.
pub fn promtool_accepts(text: &str) {
    let promtool = Path::new("/usr/bin/promtool");
    if !promtool.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "/usr/bin/promtool is missing: run tools/setup.sh"
        );
        eprintln!("skipped: promtool is not installed at /usr/bin/promtool");
        return;
    }
    let out = piped(promtool, &["check", "metrics"], text);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `program args` prints with `input` on its standard input.
pub fn piped<P: AsRef<std::ffi::OsStr>>(
    program: P,
    args: &[&str],
    input: &str,
) -> std::process::Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The metrics docs/operations.md's table under `heading` (a `###` line
/// starting so) documents: name → type.
pub fn documented(heading: &str) -> BTreeMap<String, String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap();
    let mut inside = false;
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        if line.starts_with("### ") || line.starts_with("## ") {
            inside = line.starts_with(&format!("### {heading}"));
            continue;
        }
        if !inside {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [_, name, kind, ..] = cells.as_slice() {
            if let Some(name) = name.strip_prefix("`p11derive_") {
                out.insert(
                    format!("p11derive_{}", name.trim_end_matches('`')),
                    kind.to_string(),
                );
            }
        }
    }
    assert!(
        !out.is_empty(),
        "docs/operations.md has no table under ### {heading}"
    );
    out
}

/// The families a Prometheus text declares: name → type.
pub fn declared(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// Every family in `text` is documented under `heading` with its type.
pub fn all_documented(text: &str, heading: &str) {
    let doc = documented(heading);
    for (name, kind) in declared(text) {
        assert_eq!(
            doc.get(&name),
            Some(&kind),
            "{name} ({kind}) is written but docs/operations.md's table \"{heading}\" does not \
             document it with that type"
        );
    }
}
