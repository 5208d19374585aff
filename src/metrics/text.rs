//! The two text formats Prometheus reads: its own exposition format 0.0.4
//! (what `promtool check metrics` and node_exporter's textfile collector
//! read) and OpenMetrics 1.0 (what Prometheus asks for first when it
//! scrapes). One writer, one family at a time; the caller keeps a family's
//! samples together.

use std::fmt::Write as _;

/// Which text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: a counter's family is named with its `_total`.
    Prometheus,
    /// OpenMetrics 1.0: a counter's family is named without `_total`, units
    /// are declared, and the text ends with `# EOF`.
    OpenMetrics,
}

impl Format {
    /// The HTTP `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format a scraper's `Accept` header asks for: OpenMetrics when it
    /// names it, else Prometheus text.
    pub fn from_accept(accept: &str) -> Format {
        if accept.contains("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Base units a family name may end with (OpenMetrics declares them).
const UNITS: [&str; 3] = ["seconds", "bytes", "ratio"];

/// The text being written.
pub struct Exposition {
    format: Format,
    out: String,
    /// The family being written: its name as samples use it, and its kind.
    family: Option<(String, Kind)>,
}

impl Exposition {
    pub fn new(format: Format) -> Exposition {
        Exposition {
            format,
            out: String::new(),
            family: None,
        }
    }

    /// Starts a family. `name` is the name its samples carry without a
    /// histogram's suffixes: a counter's ends with `_total`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(valid_name(name), "metric name {name:?}");
        debug_assert!(kind != Kind::Counter || name.ends_with("_total"));
        let declared = match (self.format, kind) {
            (Format::OpenMetrics, Kind::Counter) => name.trim_end_matches("_total"),
            _ => name,
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {declared} {help}");
        let _ = writeln!(self.out, "# TYPE {declared} {}", kind.name());
        if self.format == Format::OpenMetrics {
            if let Some(unit) = UNITS.iter().find(|u| declared.ends_with(&format!("_{u}"))) {
                let _ = writeln!(self.out, "# UNIT {declared} {unit}");
            }
        }
        self.family = Some((name.to_string(), kind));
    }

    /// One sample of the current counter or gauge.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let Some((name, kind)) = self.family.clone() else {
            debug_assert!(false, "a sample before its family");
            return;
        };
        debug_assert!(kind != Kind::Histogram);
        self.line(&name, labels, None, value);
    }

    /// One histogram series of the current histogram family: the
    /// cumulative count at or below each upper bound (ascending, without
    /// +Inf), the sum and the count of all observations.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        let Some((name, kind)) = self.family.clone() else {
            debug_assert!(false, "a sample before its family");
            return;
        };
        debug_assert!(kind == Kind::Histogram);
        let bucket = format!("{name}_bucket");
        for (le, n) in buckets {
            self.line(&bucket, labels, Some(&number(*le)), *n as f64);
        }
        self.line(&bucket, labels, Some("+Inf"), count as f64);
        self.line(&format!("{name}_sum"), labels, None, sum);
        self.line(&format!("{name}_count"), labels, None, count as f64);
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>, value: f64) {
        self.out.push_str(name);
        let mut all = labels
            .iter()
            .copied()
            .filter(|(_, v)| !v.is_empty())
            .peekable();
        if all.peek().is_some() || le.is_some() {
            self.out.push('{');
            let mut first = true;
            for (k, v) in all.chain(le.map(|le| ("le", le))) {
                debug_assert!(valid_label(k), "label name {k:?}");
                if !first {
                    self.out.push(',');
                }
                first = false;
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// The text, ended as its format requires.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// A label value as the formats quote it: backslash, double quote and line
/// feed escaped.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A value: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn valid_label(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_text(format: Format) -> String {
        let mut e = Exposition::new(format);
        e.family(
            "p11derive_operations_total",
            Kind::Counter,
            "Operations.\nAll.",
        );
        e.sample(&[("asset", "a\"b\\c\nd"), ("user", "")], 3.0);
        e.family("p11derive_op_duration_seconds", Kind::Histogram, "Latency.");
        e.histogram(&[("op", "sign")], &[(0.0005, 1), (0.001, 2)], 0.0012, 3);
        e.family("p11derive_assets", Kind::Gauge, "Assets.");
        e.sample(&[], 0.25);
        e.finish()
    }

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let t = sample_text(Format::Prometheus);
        assert!(t.contains("# TYPE p11derive_operations_total counter\n"));
        assert!(t.contains("p11derive_operations_total{asset=\"a\\\"b\\\\c\\nd\"} 3\n"));
        assert!(t.contains("# HELP p11derive_operations_total Operations.\\nAll.\n"));
        assert!(t.contains("p11derive_op_duration_seconds_bucket{op=\"sign\",le=\"0.0005\"} 1\n"));
        assert!(t.contains("p11derive_op_duration_seconds_bucket{op=\"sign\",le=\"+Inf\"} 3\n"));
        assert!(t.contains("p11derive_op_duration_seconds_count{op=\"sign\"} 3\n"));
        assert!(t.contains("p11derive_assets 0.25\n"));
        assert!(!t.contains("# EOF") && !t.contains("# UNIT"));
    }

    #[test]
    fn openmetrics_declares_families_units_and_ends() {
        let t = sample_text(Format::OpenMetrics);
        assert!(t.contains("# TYPE p11derive_operations counter\n"));
        assert!(t.contains("p11derive_operations_total{"));
        assert!(t.contains("# UNIT p11derive_op_duration_seconds seconds\n"));
        assert!(t.ends_with("# EOF\n"));
    }

    #[test]
    fn accept_header_picks_the_format() {
        let prom = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        assert_eq!(Format::from_accept(prom), Format::OpenMetrics);
        assert_eq!(Format::from_accept("text/plain"), Format::Prometheus);
        assert_eq!(Format::from_accept(""), Format::Prometheus);
    }
}
