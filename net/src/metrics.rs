//! What every role's metrics share: a registry per node, the encoding of the values a
//! collector reads at scrape time (counters, gauges, one-label families), the registry's
//! text, and the three endpoints every node serves.
//!
//! Each role keeps its own metrics (names, help, what they read) in its `metrics.rs`; a
//! [`prometheus_client`] collector there calls the functions below, once per metric per
//! scrape. Nothing here needs the `relay` feature: the metastore uses it too.
//!
//! ```text
//!  GET /metrics ─► node_endpoints ─► encode(registry) ─► the role's collector
//!                                                          └► counter / gauge / *_family
//!  GET /healthz ─► ok          GET /readyz ─► the role's readiness
//! ```

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::ops_http::{Request, Response};

/// The registry of one node: every metric is `{prefix}_*` and labelled `{label}="{id}"`
/// (`firetower_edge_*{edge="3"}`), so one Prometheus can scrape every node of a cluster.
pub fn registry(prefix: &str, label: &'static str, id: u64) -> Registry {
    Registry::with_prefix_and_labels(prefix, [(label.into(), id.to_string().into())].into_iter())
}

/// The registry's text (OpenMetrics, ending in `# EOF`).
pub fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// A collector that runs `encode` at each scrape: the role reads what its node holds (its
/// counters' atomics, a view taken under its lock) and writes it with the functions below.
pub fn collector<F>(encode: F) -> Box<dyn Collector>
where
    F: Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync + 'static,
{
    Box::new(FnCollector(encode))
}

struct FnCollector<F>(F);

impl<F> fmt::Debug for FnCollector<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCollector").finish_non_exhaustive()
    }
}

impl<F> Collector for FnCollector<F>
where
    F: Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        (self.0)(&mut encoder)
    }
}

/// A counter that holds `value` (its sample is `{name}_total`).
pub fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    one(encoder, name, help, ConstCounter::new(value))
}

/// A gauge that holds `value` (`i64::MAX` past it).
pub fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    signed_gauge(encoder, name, help, saturate(value))
}

/// A gauge that may be negative (an index that is -1 while there is none).
pub fn signed_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> fmt::Result {
    one(encoder, name, help, ConstGauge::new(value))
}

/// The `ready` gauge every role has: 1 when its `/readyz` answers 200.
pub fn ready(encoder: &mut DescriptorEncoder, ready: bool) -> fmt::Result {
    gauge(
        encoder,
        "ready",
        "1 when /readyz answers 200.",
        u64::from(ready),
    )
}

/// A family of counters told apart by one label: a sample `{name}_total{label="v"}` for
/// each `(v, value)` of `samples`, in their order.
pub fn counter_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) -> fmt::Result {
    let descriptor = (name, help, MetricType::Counter);
    family(encoder, descriptor, label, samples, ConstCounter::new)
}

/// [`counter_family`] for gauges.
pub fn gauge_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) -> fmt::Result {
    let descriptor = (name, help, MetricType::Gauge);
    family(encoder, descriptor, label, samples, |value| {
        ConstGauge::new(saturate(value))
    })
}

fn one<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: M,
) -> fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn family<'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, help, metric_type): (&str, &str, MetricType),
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
    metric: impl Fn(u64) -> M,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (of_label, value) in samples {
        metric(value).encode(family.encode_family(&[(label, of_label)])?)?;
    }
    Ok(())
}

fn saturate(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// What every node answers on its operations endpoints: `/metrics` (the registry's text,
/// or 500 if encoding it failed), `/healthz` (`ok`: the process serves) and `/readyz`
/// (`readiness`, asked only then); `None` for any other path, which the role may serve.
pub fn node_endpoints(
    request: &Request<'_>,
    registry: &Registry,
    readiness: impl FnOnce() -> Result<(), String>,
) -> Option<Response> {
    match request.path {
        "/metrics" => Some(match encode(registry) {
            Ok(text) => Response::metrics(text),
            Err(e) => Response::text(500, format!("encoding the metrics failed: {e}")),
        }),
        "/healthz" => Some(Response::text(200, "ok")),
        "/readyz" => Some(Response::readiness(readiness())),
        _ => None,
    }
}

/// What the roles' metrics tests share (feature `testing`): the text parsed as Prometheus
/// parses it, a sample (or its number) looked up by name and labels, and every family
/// described.
#[cfg(feature = "testing")]
pub mod testing {
    pub use prometheus_parse::{Scrape, Value};

    /// `text` parsed as Prometheus parses it; panics when it does not parse.
    pub fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the metrics text parses")
    }

    /// The value of the first sample named `name` that carries every one of `labels`.
    pub fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<Value> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| s.value.clone())
    }

    /// The number of the first sample named `name` that carries every one of `labels`,
    /// whatever its type (NaN for a histogram or a summary).
    pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        sample(scrape, name, labels).map(|value| match value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
    }

    /// Asserts that every TYPE line has a HELP line, and every sample a TYPE (counters'
    /// samples end in `_total`, histograms' in `_bucket`, `_sum`, `_count`).
    pub fn assert_described(text: &str) {
        let described: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .collect();
        for name in &described {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|f| described.contains(f)))
                .unwrap_or(name);
            assert!(described.contains(family), "{name} has no TYPE");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            counter(&mut encoder, "sent", "Things sent.", 7)?;
            gauge(&mut encoder, "open", "Things open.", u64::MAX)?;
            signed_gauge(&mut encoder, "index", "An index (-1: none).", -1)?;
            counter_family(
                &mut encoder,
                "closes",
                "Closes by reason.",
                "reason",
                [("slow", 2), ("kicked", 0)],
            )?;
            gauge_family(
                &mut encoder,
                "members",
                "Members by kind.",
                "kind",
                [("edge", 3)],
            )
        }
    }

    #[test]
    fn the_text_of_each_kind_of_value() {
        let mut registry = registry("firetower_test", "node", 4);
        registry.register_collector(Box::new(Fixed));
        assert_eq!(
            encode(&registry).unwrap(),
            "# HELP firetower_test_sent Things sent.\n\
             # TYPE firetower_test_sent counter\n\
             firetower_test_sent_total{node=\"4\"} 7\n\
             # HELP firetower_test_open Things open.\n\
             # TYPE firetower_test_open gauge\n\
             firetower_test_open{node=\"4\"} 9223372036854775807\n\
             # HELP firetower_test_index An index (-1: none).\n\
             # TYPE firetower_test_index gauge\n\
             firetower_test_index{node=\"4\"} -1\n\
             # HELP firetower_test_closes Closes by reason.\n\
             # TYPE firetower_test_closes counter\n\
             firetower_test_closes_total{node=\"4\",reason=\"slow\"} 2\n\
             firetower_test_closes_total{node=\"4\",reason=\"kicked\"} 0\n\
             # HELP firetower_test_members Members by kind.\n\
             # TYPE firetower_test_members gauge\n\
             firetower_test_members{node=\"4\",kind=\"edge\"} 3\n\
             # EOF\n"
        );
    }

    #[test]
    fn the_node_endpoints() {
        let registry = registry("firetower_test", "node", 1);
        let get = |path: &str, ready: Result<(), String>| {
            node_endpoints(&Request { path, query: "" }, &registry, || ready)
        };
        let metrics = get("/metrics", Ok(())).unwrap();
        assert_eq!(
            (metrics.status, &*metrics.content_type),
            (200, crate::ops_http::OPENMETRICS_CONTENT_TYPE)
        );
        assert_eq!(metrics.body, b"# EOF\n");
        assert_eq!(get("/healthz", Err("no".into())).unwrap().body, b"ok");
        let ready = get("/readyz", Err("no leader".into())).unwrap();
        assert_eq!(
            (ready.status, ready.body.as_slice()),
            (503, &b"not ready: no leader"[..])
        );
        assert_eq!(get("/readyz", Ok(())).unwrap().status, 200);
        assert!(get("/topics", Ok(())).is_none());
    }
}
