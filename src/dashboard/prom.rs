//! A small, tolerant reader of the Prometheus text format, and what the dashboard makes of
//! it: one value per metric family (summed over its label sets) and the few headline
//! figures a node's row shows.
//!
//! Tolerant because the members' metrics change under it: families are renamed, gain
//! `# HELP`/`# TYPE` lines and `_total` suffixes, labels come and go. A line that does not
//! parse is skipped, never an error; the headlines are found by substring (anything
//! containing `publish`, `deliver` or `frames`, `connections_open`), so a rename keeps
//! showing.

use std::collections::BTreeMap;

/// What kind of value a family holds, from its `# TYPE` line or, without one, its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (or back to 0 on a restart): shown as a rate.
    Counter,
    /// Goes up and down: shown as a value.
    Gauge,
    /// Untyped and not recognisable by name: shown as a rate while it does not go down.
    Unknown,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Unknown => "untyped",
        }
    }

    /// Whether a rate of this family means something.
    pub fn has_rate(self) -> bool {
        self != Kind::Gauge
    }
}

/// One family's value at one scrape: the sum of its samples over every label set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Family {
    pub kind: Kind,
    pub value: f64,
}

/// What one scrape held.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    /// By family name (the sample's name: `x_total`, `x_count`, `x_sum` are families of
    /// their own; histogram buckets and summary quantiles are left out).
    pub families: BTreeMap<String, Family>,
    /// Lines that did not parse (shown, so that a format change is seen).
    pub bad_lines: usize,
    /// True when the text held more than the bounds took in.
    pub truncated: bool,
}

/// Reads `text`, taking at most `max_samples` samples into at most `max_families`
/// families.
pub fn parse(text: &str, max_samples: usize, max_families: usize) -> Scrape {
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    let mut scrape = Scrape::default();
    let mut samples = 0usize;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE") {
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    types.insert(name, kind);
                }
            }
            continue;
        }
        let Some((name, labels, value)) = split_sample(line) else {
            scrape.bad_lines += 1;
            continue;
        };
        if samples >= max_samples {
            scrape.truncated = true;
            break;
        }
        samples += 1;
        let declared = declared_type(&types, name);
        // Buckets and quantiles are parts of a distribution: its `_count` and `_sum` carry
        // the rate and the mean. `_created` is a timestamp, not a value.
        let is_part = (matches!(declared, Some("histogram" | "gaugehistogram"))
            && name.ends_with("_bucket"))
            || (matches!(declared, Some("summary")) && labels.contains("quantile="));
        if is_part || name.ends_with("_created") || !value.is_finite() {
            continue;
        }
        let kind = kind_of(declared, name);
        if let Some(family) = scrape.families.get_mut(name) {
            family.value += value;
        } else if scrape.families.len() < max_families {
            scrape
                .families
                .insert(name.to_string(), Family { kind, value });
        } else {
            scrape.truncated = true;
        }
    }
    scrape
}

/// `name{labels} value [timestamp]` → (name, labels, value); `None` for anything else.
fn split_sample(line: &str) -> Option<(&str, &str, f64)> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid_name {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = "";
    if rest.starts_with('{') {
        let close = label_end(rest)?;
        labels = &rest[1..close];
        rest = &rest[close + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().ok()?,
    };
    Some((name, labels, value))
}

/// The index of the `}` that closes the label set `text` opens, skipping quoted values
/// (with their `\"` escapes).
fn label_end(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// The `# TYPE` of the family a sample belongs to: its own name, or the name without the
/// suffix a counter (`_total`) or a distribution (`_count`, `_sum`, `_bucket`) adds.
fn declared_type<'a>(types: &BTreeMap<&str, &'a str>, name: &str) -> Option<&'a str> {
    if let Some(kind) = types.get(name) {
        return Some(kind);
    }
    ["_total", "_count", "_sum", "_bucket", "_created"]
        .iter()
        .find_map(|suffix| types.get(name.strip_suffix(suffix)?).copied())
}

/// Words in a family's name that say it is a level rather than a count (for families
/// without a `# TYPE` line, as the edge's were).
const GAUGE_HINTS: &[&str] = &[
    "_open",
    "_up",
    "bytes",
    "inflight",
    "in_flight",
    "pending",
    "size",
    "leader",
    "term",
    "index",
    "_current",
    "_active",
    "_connected",
];

fn kind_of(declared: Option<&str>, name: &str) -> Kind {
    match declared {
        Some("counter") => return Kind::Counter,
        Some("gauge") => return Kind::Gauge,
        // A distribution's `_count` and `_sum` only go up.
        Some("histogram" | "summary") => return Kind::Counter,
        _ => {}
    }
    if ["_total", "_count", "_sum"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
    {
        Kind::Counter
    } else if GAUGE_HINTS.iter().any(|hint| name.contains(hint)) {
        Kind::Gauge
    } else {
        Kind::Unknown
    }
}

/// Which of a node's families its row headlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Headline {
    /// Messages published (through it, or by its clients), per second.
    Publishes,
    /// Messages delivered or frames sent on, per second.
    Deliveries,
    /// Open client connections, a level.
    Connections,
}

impl Headline {
    pub const ALL: [Headline; 3] = [
        Headline::Publishes,
        Headline::Deliveries,
        Headline::Connections,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Headline::Publishes => "publishes",
            Headline::Deliveries => "deliveries",
            Headline::Connections => "connections",
        }
    }

    /// Whether the family `name` of kind `kind` counts for this headline.
    pub fn matches(self, name: &str, kind: Kind) -> bool {
        let name = name.to_ascii_lowercase();
        // Failures, refusals and sizes of the thing are other figures.
        const NOT_A_COUNT_OF_IT: &[&str] = &[
            "fail",
            "error",
            "refus",
            "reject",
            "denied",
            "timeout",
            "timed_out",
            "uncertain",
            "unmatched",
            "abandon",
            "retr",
            "held",
            "dropped",
            "stale",
            "unwanted",
            "bad_",
            "duplicate",
            "bytes",
            "latency",
            "seconds",
            "_sum",
            "bucket",
        ];
        let excluded = || NOT_A_COUNT_OF_IT.iter().any(|w| name.contains(w));
        match self {
            Headline::Publishes => kind.has_rate() && name.contains("publish") && !excluded(),
            Headline::Deliveries => {
                kind.has_rate()
                    && (name.contains("deliver") || name.contains("frames"))
                    && !excluded()
            }
            Headline::Connections => {
                name.contains("connections_open")
                    || kind == Kind::Gauge && name.contains("connections")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_untyped_typed_and_open_metrics_families() {
        let text = r#"
# the edge's old form: no TYPE, no _total
firetower_edge_connections_open{edge="1"} 3
firetower_edge_frames_queued{edge="1"} 120
# HELP firetower_distributor_publishes Messages published.
# TYPE firetower_distributor_publishes counter
firetower_distributor_publishes_total{result="ok"} 10
firetower_distributor_publishes_total{result="refused"} 2
# TYPE firetower_distributor_publishes_created gauge
firetower_distributor_publishes_created 1.7e9
# TYPE lat histogram
lat_bucket{le="0.1"} 4
lat_bucket{le="+Inf"} 5
lat_sum 0.25
lat_count 5
# TYPE q summary
q{quantile="0.5"} 1
q_count 7
weird{label="a } \" b"} 4 1700000000000
not a sample line
9bad 1
"#;
        let s = parse(text, 1000, 1000);
        let get = |n: &str| s.families.get(n).copied();
        assert_eq!(
            get("firetower_edge_connections_open"),
            Some(Family {
                kind: Kind::Gauge,
                value: 3.0
            })
        );
        assert_eq!(
            get("firetower_edge_frames_queued").map(|f| f.kind),
            Some(Kind::Unknown)
        );
        assert_eq!(
            get("firetower_distributor_publishes_total"),
            Some(Family {
                kind: Kind::Counter,
                value: 12.0
            })
        );
        assert_eq!(get("firetower_distributor_publishes_created"), None);
        assert_eq!(get("lat_bucket"), None);
        assert_eq!(get("lat_count").map(|f| f.kind), Some(Kind::Counter));
        assert_eq!(get("lat_sum").map(|f| f.value), Some(0.25));
        assert_eq!(get("q"), None);
        assert_eq!(get("q_count").map(|f| f.value), Some(7.0));
        assert_eq!(get("weird").map(|f| f.value), Some(4.0));
        assert_eq!(s.bad_lines, 2);
        assert!(!s.truncated);
    }

    #[test]
    fn bounds_hold() {
        let text: String = (0..100).map(|i| format!("m{i} {i}\n")).collect();
        let s = parse(&text, 10, 1000);
        assert_eq!(s.families.len(), 10);
        assert!(s.truncated);
        let s = parse(&text, 1000, 5);
        assert_eq!(s.families.len(), 5);
        assert!(s.truncated);
    }

    #[test]
    fn headlines_match_by_substring() {
        use Headline::*;
        assert!(Publishes.matches("firetower_edge_client_publishes", Kind::Unknown));
        assert!(Publishes.matches("firetower_distributor_publishes_total", Kind::Counter));
        assert!(!Publishes.matches("firetower_edge_publishes_failed", Kind::Unknown));
        assert!(!Publishes.matches("publish_latency_seconds_count", Kind::Counter));
        assert!(Deliveries.matches("firetower_edge_frames_queued", Kind::Unknown));
        assert!(Deliveries.matches("distributor_deliveries_total", Kind::Counter));
        assert!(!Deliveries.matches("firetower_edge_frames_dropped", Kind::Unknown));
        assert!(!Deliveries.matches("firetower_edge_stale_deliveries", Kind::Unknown));
        assert!(Connections.matches("firetower_edge_connections_open", Kind::Gauge));
        assert!(!Connections.matches("firetower_edge_connections_total", Kind::Counter));
    }
}
