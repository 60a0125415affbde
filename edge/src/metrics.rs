//! The edge's metrics in the Prometheus (OpenMetrics) text format, served at `/metrics` on
//! its WebSocket listener.
//!
//! The shell keeps counting in the atomics of [`Counters`] (tests and the load generator
//! read them too); a [`prometheus_client`] collector reads them, and the core's own counts
//! ([`CoreView`], one short lock of the core), at scrape time. The one metric fed on the
//! data path is the publish-to-delivery latency: each delivery carries the wall-clock time
//! its owner sequenced it (`Deliver.sequenced_at_us`), and the lane reader observes the
//! time from that stamp to when the delivery was queued to its clients.
//!
//! ```text
//!  GET /metrics ─► registry ─┬─► EdgeCollector ─► Counters (atomics)
//!                            │                 └► view() ─► CoreView (core's lock)
//!                            └─► delivery_latency_seconds (histogram)
//!  lane reader ─► Deliver.sequenced_at_us ─► EdgeMetrics::observe_deliveries
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::core::{CoreCounters, PublishCounters};
use crate::counters::Counters;

/// Every metric's name starts with this.
pub const PREFIX: &str = "firetower_edge";

/// The latency buckets, in seconds: 100 µs (two processes on one host) to 10 s (a
/// delivery that waited out a lane pause or a route change).
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// What the core counts, read once per scrape.
#[derive(Debug, Clone, Default)]
pub struct CoreView {
    pub core: CoreCounters,
    pub publishes: PublishCounters,
    /// Topics with local subscribers.
    pub topics: u64,
    /// The routing view's revision (0: none yet).
    pub revision: u64,
    /// `/readyz` answers 200.
    pub ready: bool,
}

/// Reads the core at scrape time (`None` once the edge is gone).
pub type ViewFn = Box<dyn Fn() -> Option<CoreView> + Send + Sync>;

/// The edge's registry and the histogram the lane readers feed.
pub struct EdgeMetrics {
    registry: Registry,
    latency: Histogram,
}

impl std::fmt::Debug for EdgeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeMetrics").finish_non_exhaustive()
    }
}

impl EdgeMetrics {
    /// The metrics of edge `id`: every metric is `firetower_edge_*`, labelled `edge="<id>"`.
    pub fn new(id: u64, counters: Arc<Counters>, view: ViewFn) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            PREFIX,
            [("edge".into(), id.to_string().into())].into_iter(),
        );
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "delivery_latency_seconds",
            "Seconds from the owner sequencing a message (its wall clock) to this edge queueing it to its clients (this edge's wall clock; clock skew between the hosts is in it)",
            latency.clone(),
        );
        registry.register_collector(Box::new(EdgeCollector { counters, view }));
        EdgeMetrics { registry, latency }
    }

    /// Observes the latency of deliveries stamped by their owners at `stamps` (µs since
    /// the Unix epoch; 0: not stamped, skipped), queued to clients at `now_us`.
    pub fn observe_deliveries(&self, stamps: &[u64], now_us: u64) {
        for &stamp in stamps {
            if let Some(seconds) = firetower_net::wall::seconds_since(stamp, now_us) {
                self.latency.observe(seconds);
            }
        }
    }

    /// The text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The collector: the counters' atomics and the core's view, encoded at each scrape.
struct EdgeCollector {
    counters: Arc<Counters>,
    view: ViewFn,
}

impl std::fmt::Debug for EdgeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCollector")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for EdgeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut encoder,
            "connections_open",
            "Open WebSocket connections.",
            load(&c.connections_open),
        )?;
        counter(
            &mut encoder,
            "connections",
            "WebSocket connections accepted.",
            load(&c.connections_total),
        )?;
        counter(
            &mut encoder,
            "connections_refused",
            "Connections refused (connection limits, token or origin check).",
            load(&c.connections_refused),
        )?;
        counter(
            &mut encoder,
            "auth_refused",
            "Upgrades refused by the token or origin check (401, 403).",
            load(&c.auth_refused),
        )?;
        counter(
            &mut encoder,
            "denied_by_token",
            "Subscribes and publishes refused because the token does not grant the topic.",
            load(&c.denied_by_token),
        )?;
        counter(
            &mut encoder,
            "frames_queued",
            "Frames queued to clients (deliveries, acks, errors).",
            load(&c.frames_queued),
        )?;
        counter(
            &mut encoder,
            "frames_written",
            "Frames written to client sockets.",
            load(&c.frames_written),
        )?;
        counter(
            &mut encoder,
            "frames_dropped",
            "Frames not queued because their connection was already closing.",
            load(&c.frames_dropped),
        )?;
        counter(
            &mut encoder,
            "writes",
            "Socket writes to clients (each carries every frame pending then).",
            load(&c.writes),
        )?;
        gauge(
            &mut encoder,
            "queue_bytes",
            "Bytes queued to clients and not yet written, over all connections.",
            load(&c.queued_bytes),
        )?;
        counter(&mut encoder, "lane_pauses", "Times a relay lane stopped reading for a connection over its budget or the edge over its watermark.", load(&c.lane_pauses))?;
        {
            let mut closes = encoder.encode_descriptor(
                "closes",
                "Connections closed by the edge, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (reason, value) in [
                ("slow", &c.closed_slow),
                ("heartbeat", &c.closed_heartbeat),
                ("too_large", &c.closed_too_large),
                ("bad_utf8", &c.closed_bad_utf8),
                ("rate_limited", &c.closed_rate_limited),
                ("kicked", &c.closed_kicked),
                ("shutdown", &c.closed_shutdown),
                ("publish_uncertain", &c.closed_publish_uncertain),
            ] {
                ConstCounter::new(load(value))
                    .encode(closes.encode_family(&[("reason", reason)])?)?;
            }
        }
        counter(
            &mut encoder,
            "client_errors",
            "Client frames answered with an error frame.",
            load(&c.client_errors),
        )?;
        counter(
            &mut encoder,
            "rate_limited",
            "Client frames refused with rate_limited.",
            load(&c.rate_limited),
        )?;
        counter(
            &mut encoder,
            "client_publishes",
            "Publishes received from clients.",
            load(&c.client_publishes),
        )?;
        gauge(
            &mut encoder,
            "relay_links",
            "Relay links to distributors that are up.",
            load(&c.relay_links_up),
        )?;
        counter(
            &mut encoder,
            "relay_links_established",
            "Relay links established (more than the distributors means reconnects).",
            load(&c.relay_links_total),
        )?;
        let Some(view) = (self.view)() else {
            return Ok(());
        };
        let (core, p) = (&view.core, &view.publishes);
        for (name, help, value) in [
            (
                "publishes_sent",
                "Client publishes sent to a distributor.",
                p.sent,
            ),
            (
                "publishes_held",
                "Client publishes that waited for room on a link or an owner change.",
                p.held,
            ),
            (
                "publishes_failed",
                "Client publishes reported to their client as failed.",
                p.failed,
            ),
            (
                "publish_answer_timeouts",
                "Client publishes failed because no answer came in time.",
                p.timed_out,
            ),
            (
                "publish_answers_unmatched",
                "Publish answers that matched no unanswered publish.",
                p.unmatched_answers,
            ),
            (
                "stale_deliveries",
                "Deliveries dropped as not newer than their topic's last.",
                core.stale_deliveries,
            ),
            (
                "unwanted_deliveries",
                "Deliveries for topics without local subscribers.",
                core.unwanted_deliveries,
            ),
            (
                "bad_deliveries",
                "Deliveries whose data was not UTF-8.",
                core.bad_deliveries,
            ),
            (
                "duplicate_deliveries",
                "Second copies of a split topic's message, dropped.",
                core.duplicate_deliveries,
            ),
            (
                "held_dropped",
                "Held deliveries dropped because a waiting route's buffer was full.",
                core.held_dropped,
            ),
            (
                "seam_gaps_passed",
                "Gaps in a stream given up on after the seam wait.",
                core.seam_gaps_passed,
            ),
            (
                "route_switches",
                "Split-topic route changes completed.",
                core.route_switches,
            ),
            (
                "forced_switches",
                "Split-topic route changes forced by the switch timeout.",
                core.forced_switches,
            ),
            (
                "recoveries",
                "Subscribes with a position that were recovered.",
                core.recoveries,
            ),
            (
                "recoveries_refused",
                "Subscribes with a position the owner could not serve.",
                core.recoveries_refused,
            ),
            (
                "recovered_deliveries",
                "Deliveries sent to clients as recovered.",
                core.recovered_deliveries,
            ),
        ] {
            counter(&mut encoder, name, help, value)?;
        }
        gauge(
            &mut encoder,
            "topics",
            "Topics with local subscribers.",
            view.topics,
        )?;
        gauge(
            &mut encoder,
            "routing_revision",
            "The revision of this edge's routing view.",
            view.revision,
        )?;
        gauge(
            &mut encoder,
            "ready",
            "1 when /readyz answers 200.",
            u64::from(view.ready),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_parse::{Scrape, Value};

    fn view() -> ViewFn {
        Box::new(|| {
            Some(CoreView {
                topics: 3,
                revision: 42,
                ready: true,
                ..CoreView::default()
            })
        })
    }

    /// Every TYPE line has a HELP line, and every sample a TYPE (counters' samples end in
    /// `_total`, histograms' in `_bucket`, `_sum`, `_count`).
    fn assert_described(text: &str) {
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

    #[test]
    fn the_text_names_every_family_with_help_and_type() {
        let counters = Arc::new(Counters::default());
        counters.connections_open.store(5, Ordering::Relaxed);
        counters.connections_total.store(9, Ordering::Relaxed);
        counters.closed_slow.store(2, Ordering::Relaxed);
        counters.closed_kicked.store(1, Ordering::Relaxed);
        counters.queued_bytes.store(1234, Ordering::Relaxed);
        let metrics = EdgeMetrics::new(7, counters, view());
        let text = metrics.encode().unwrap();
        assert_described(&text);
        assert!(text.ends_with("# EOF\n"));
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let sample = |name: &str, label: Option<(&str, &str)>| {
            scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == name
                        && s.labels.get("edge") == Some("7")
                        && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v))
                })
                .map(|s| s.value.clone())
        };
        assert_eq!(
            sample("firetower_edge_connections_open", None),
            Some(Value::Gauge(5.0))
        );
        assert_eq!(
            sample("firetower_edge_queue_bytes", None),
            Some(Value::Gauge(1234.0))
        );
        // OpenMetrics counters: TYPE names the family, the sample ends in `_total`.
        assert!(text.contains("# TYPE firetower_edge_connections counter\n"));
        assert_eq!(
            sample("firetower_edge_connections_total", None),
            Some(Value::Untyped(9.0))
        );
        for (reason, n) in [
            ("slow", 2.0),
            ("kicked", 1.0),
            ("shutdown", 0.0),
            ("heartbeat", 0.0),
        ] {
            assert_eq!(
                sample("firetower_edge_closes_total", Some(("reason", reason))),
                Some(Value::Untyped(n)),
                "{reason}"
            );
        }
        assert_eq!(
            sample("firetower_edge_topics", None),
            Some(Value::Gauge(3.0))
        );
        assert_eq!(
            sample("firetower_edge_ready", None),
            Some(Value::Gauge(1.0))
        );
        for family in [
            "frames_queued",
            "frames_written",
            "client_publishes",
            "relay_links",
            "publishes_sent",
            "delivery_latency_seconds",
        ] {
            assert!(
                scrape
                    .docs
                    .contains_key(&format!("firetower_edge_{family}")),
                "{family}"
            );
        }
    }

    #[test]
    fn deliveries_feed_the_latency_histogram() {
        let metrics = EdgeMetrics::new(1, Arc::default(), view());
        let now = 1_700_000_000_000_000;
        // 0.3 ms, 20 ms, 3 s; an unstamped one and one from a clock ahead of ours (0 s).
        metrics.observe_deliveries(&[now - 300, now - 20_000, 0, now - 3_000_000, now + 5], now);
        let text = metrics.encode().unwrap();
        assert_described(&text);
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let histogram = scrape
            .samples
            .iter()
            .find(|s| s.metric == "firetower_edge_delivery_latency_seconds")
            .expect("the histogram");
        let Value::Histogram(buckets) = &histogram.value else {
            panic!("not a histogram: {histogram:?}");
        };
        let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
        assert_eq!(at(0.0001), Some(1.0), "the one from a clock ahead");
        assert_eq!(at(0.0005), Some(2.0));
        assert_eq!(at(0.025), Some(3.0));
        assert_eq!(at(2.5), Some(3.0));
        assert_eq!(at(5.0), Some(4.0));
        assert_eq!(at(f64::INFINITY), Some(4.0));
        let count = scrape
            .samples
            .iter()
            .find(|s| s.metric == "firetower_edge_delivery_latency_seconds_count")
            .map(|s| s.value.clone());
        assert_eq!(count, Some(Value::Untyped(4.0)));
    }
}
