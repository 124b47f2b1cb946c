//! The one writer of exposition lines: the Prometheus text format 0.0.4 that /metrics serves
//! and the OpenMetrics text that backfill writes for promtool. HELP, TYPE and sample lines,
//! label values escaped by one function, values written as the `prometheus` crate writes them
//! (integers without an exponent) except that infinities and NaN are spelled as Go and
//! Prometheus spell them (`+Inf`, `-Inf`, `NaN`), which the crate does not.
//!
//! A family keeps its HELP and TYPE lines apart from its samples, so that the families of many
//! tenants can be merged under one head (see [`crate::exposition::metrics::assemble`]).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Which text a family is written for: the two differ in HELP escaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text format 0.0.4: HELP escapes backslashes and line feeds.
    Text,
    /// OpenMetrics 1.0: HELP escapes double quotes too. Only gauges are written in it here
    /// (an OpenMetrics counter family would drop its `_total`).
    OpenMetrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample value as the text formats write it.
pub(crate) trait Value {
    fn write(self, out: &mut String);
}

impl Value for f64 {
    fn write(self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "{self}");
        }
    }
}

impl Value for u64 {
    fn write(self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

/// Backfill's seconds: Graph's minutes x 60 can exceed u64.
impl Value for u128 {
    fn write(self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

/// One metric family: its HELP and TYPE lines, and its sample lines.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Family {
    pub name: String,
    pub head: String,
    pub samples: String,
}

impl Family {
    /// A family with no samples yet.
    pub(crate) fn new(format: Format, name: &str, help: &str, kind: Kind) -> Family {
        let help = escape(help, format == Format::OpenMetrics);
        let mut head = String::with_capacity(name.len() * 2 + help.len() + 24);
        for part in ["# HELP ", name, " ", &help, "\n# TYPE ", name, " "] {
            head.push_str(part);
        }
        head.push_str(kind.as_str());
        head.push('\n');
        Family {
            name: name.to_string(),
            head,
            samples: String::new(),
        }
    }

    /// Adds `name{labels} value`. Labels go out in the order given: the text format's client
    /// libraries sort them by name, and callers that match them pass them so.
    pub(crate) fn sample(&mut self, labels: &[(&str, &str)], value: impl Value) {
        self.series(labels);
        self.samples.push(' ');
        value.write(&mut self.samples);
        self.samples.push('\n');
    }

    /// Adds a sample timestamped at `seconds` after the Unix epoch, as OpenMetrics writes it.
    pub(crate) fn sample_at(&mut self, labels: &[(&str, &str)], value: impl Value, seconds: i64) {
        self.series(labels);
        self.samples.push(' ');
        value.write(&mut self.samples);
        let _ = writeln!(self.samples, " {seconds}");
    }

    /// Client libraries leave out a family without samples.
    pub(crate) fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The whole family, head and samples.
    pub(crate) fn write_to(&self, out: &mut String) {
        out.push_str(&self.head);
        out.push_str(&self.samples);
    }

    fn series(&mut self, labels: &[(&str, &str)]) {
        let out = &mut self.samples;
        out.push_str(&self.name);
        for (i, (label, value)) in labels.iter().enumerate() {
            out.push(if i == 0 { '{' } else { ',' });
            out.push_str(label);
            out.push_str("=\"");
            out.push_str(&escape(value, true));
            out.push('"');
        }
        if !labels.is_empty() {
            out.push('}');
        }
    }
}

/// The end of an OpenMetrics text, which promtool requires.
pub(crate) const EOF: &str = "# EOF\n";

/// Backslash, line feed and (with `quotes`) double quote, escaped as both formats escape label
/// values, and HELP text without quotes (text format) or with them (OpenMetrics).
fn escape(text: &str, quotes: bool) -> Cow<'_, str> {
    let special = |c: char| c == '\\' || c == '\n' || (quotes && c == '"');
    let Some(first) = text.find(special) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '\n' => out.push_str(r"\n"),
            '"' if quotes => out.push_str(r#"\""#),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(family: &Family) -> String {
        let mut out = String::new();
        family.write_to(&mut out);
        out
    }

    #[test]
    fn writes_head_and_samples_in_the_text_format() {
        let mut family = Family::new(
            Format::Text,
            "x_total",
            "Things \"done\"\\\nmany",
            Kind::Counter,
        );
        assert!(family.is_empty());
        family.sample(&[], 3u64);
        family.sample(&[("a", "1"), ("b", "q\"b\\s\nn")], 0.25);
        assert_eq!(
            text(&family),
            "# HELP x_total Things \"done\"\\\\\\nmany\n# TYPE x_total counter\nx_total 3\nx_total{a=\"1\",b=\"q\\\"b\\\\s\\nn\"} 0.25\n"
        );
    }

    #[test]
    fn openmetrics_help_escapes_quotes_and_samples_carry_timestamps() {
        let mut family = Family::new(Format::OpenMetrics, "d", "a \"b\"", Kind::Gauge);
        family.sample_at(&[("t", "x")], u128::from(u64::MAX) * 60, -86_400);
        assert_eq!(
            text(&family),
            "# HELP d a \\\"b\\\"\n# TYPE d gauge\nd{t=\"x\"} 1106804644422573096900 -86400\n"
        );
    }

    #[test]
    fn values_as_prometheus_writes_them() {
        let cases: [(f64, &str); 8] = [
            (1.0, "1"),
            (1_709_510_400.0, "1709510400"),
            (0.12, "0.12"),
            (1e21, "1000000000000000000000"),
            (-0.5, "-0.5"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ];
        for (value, written) in cases {
            let mut out = String::new();
            value.write(&mut out);
            assert_eq!(out, written, "{value:?}");
        }
    }

    #[test]
    fn label_values_match_the_prometheus_encoder() {
        use prometheus::{Encoder, GaugeVec, Opts, Registry, TextEncoder};
        let values = ["plain", "q\"", "b\\", "n\n", "\\\"\n\\n", "ünï\u{7}", ""];
        let registry = Registry::new();
        let gauge = GaugeVec::new(Opts::new("g", "h"), &["v"]).unwrap();
        registry.register(Box::new(gauge.clone())).unwrap();
        for v in values {
            gauge.with_label_values(&[v]).set(1.0);
        }
        let mut theirs = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut theirs)
            .unwrap();
        let mut ours = Family::new(Format::Text, "g", "h", Kind::Gauge);
        let mut sorted = values;
        sorted.sort_unstable();
        for v in sorted {
            ours.sample(&[("v", v)], 1.0);
        }
        assert_eq!(text(&ours), String::from_utf8(theirs).unwrap());
    }
}
