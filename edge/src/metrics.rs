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
//!  GET /metrics ─► registry ─┬─► collect ─► Counters (atomics)
//!                            │           └► view() ─► CoreView (core's lock)
//!                            └─► delivery_latency_seconds (histogram)
//!  lane reader ─► Deliver.sequenced_at_us ─► EdgeMetrics::observe_deliveries
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use firetower_net::metrics::{collector, counter, counter_family, gauge, ready};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::histogram::Histogram;
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
        let mut registry = firetower_net::metrics::registry(PREFIX, "edge", id);
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "delivery_latency_seconds",
            "Seconds from the owner sequencing a message (its wall clock) to this edge queueing it to its clients (this edge's wall clock; clock skew between the hosts is in it)",
            latency.clone(),
        );
        registry.register_collector(collector(move |encoder| collect(&counters, &view, encoder)));
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

    /// The registry: what `/metrics` serves ([`firetower_net::metrics::node_endpoints`]).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// What the collector encodes at each scrape: the counters' atomics and the core's view.
fn collect(c: &Counters, view: &ViewFn, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    gauge(
        encoder,
        "connections_open",
        "Open WebSocket connections.",
        load(&c.connections_open),
    )?;
    counter(
        encoder,
        "connections",
        "WebSocket connections accepted.",
        load(&c.connections_total),
    )?;
    counter(
        encoder,
        "connections_refused",
        "Connections refused (connection limits, token or origin check).",
        load(&c.connections_refused),
    )?;
    counter(
        encoder,
        "auth_refused",
        "Upgrades refused by the token or origin check (401, 403).",
        load(&c.auth_refused),
    )?;
    counter(
        encoder,
        "denied_by_token",
        "Subscribes and publishes refused because the token does not grant the topic.",
        load(&c.denied_by_token),
    )?;
    counter(
        encoder,
        "frames_queued",
        "Frames queued to clients (deliveries, acks, errors).",
        load(&c.frames_queued),
    )?;
    counter(
        encoder,
        "frames_written",
        "Frames written to client sockets.",
        load(&c.frames_written),
    )?;
    counter(
        encoder,
        "frames_dropped",
        "Frames not queued because their connection was already closing.",
        load(&c.frames_dropped),
    )?;
    counter(
        encoder,
        "writes",
        "Socket writes to clients (each carries every frame pending then).",
        load(&c.writes),
    )?;
    gauge(
        encoder,
        "queue_bytes",
        "Bytes queued to clients and not yet written, over all connections.",
        load(&c.queued_bytes),
    )?;
    counter(encoder, "lane_pauses", "Times a relay lane stopped reading for a connection over its budget or the edge over its watermark.", load(&c.lane_pauses))?;
    counter_family(
        encoder,
        "closes",
        "Connections closed by the edge, by reason.",
        "reason",
        [
            ("slow", &c.closed_slow),
            ("heartbeat", &c.closed_heartbeat),
            ("too_large", &c.closed_too_large),
            ("bad_utf8", &c.closed_bad_utf8),
            ("rate_limited", &c.closed_rate_limited),
            ("kicked", &c.closed_kicked),
            ("shutdown", &c.closed_shutdown),
            ("publish_uncertain", &c.closed_publish_uncertain),
        ]
        .map(|(reason, value)| (reason, load(value))),
    )?;
    counter(
        encoder,
        "client_errors",
        "Client frames answered with an error frame.",
        load(&c.client_errors),
    )?;
    counter(
        encoder,
        "rate_limited",
        "Client frames refused with rate_limited.",
        load(&c.rate_limited),
    )?;
    counter(
        encoder,
        "client_publishes",
        "Publishes received from clients.",
        load(&c.client_publishes),
    )?;
    gauge(
        encoder,
        "relay_links",
        "Relay links to distributors that are up.",
        load(&c.relay_links_up),
    )?;
    counter(
        encoder,
        "relay_links_established",
        "Relay links established (more than the distributors means reconnects).",
        load(&c.relay_links_total),
    )?;
    let Some(view) = view() else {
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
        counter(encoder, name, help, value)?;
    }
    gauge(
        encoder,
        "topics",
        "Topics with local subscribers.",
        view.topics,
    )?;
    gauge(
        encoder,
        "routing_revision",
        "The revision of this edge's routing view.",
        view.revision,
    )?;
    ready(encoder, view.ready)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use firetower_net::metrics::encode;
    use firetower_net::metrics::testing::{assert_described, parse, sample, Value};

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

    #[test]
    fn the_text_names_every_family_with_help_and_type() {
        let counters = Arc::new(Counters::default());
        counters.connections_open.store(5, Ordering::Relaxed);
        counters.connections_total.store(9, Ordering::Relaxed);
        counters.closed_slow.store(2, Ordering::Relaxed);
        counters.closed_kicked.store(1, Ordering::Relaxed);
        counters.queued_bytes.store(1234, Ordering::Relaxed);
        let metrics = EdgeMetrics::new(7, counters, view());
        let text = encode(metrics.registry()).unwrap();
        assert_described(&text);
        assert!(text.ends_with("# EOF\n"));
        let scrape = parse(&text);
        let sample = |name: &str, labels: &[(&str, &str)]| {
            sample(&scrape, name, &[&[("edge", "7")], labels].concat())
        };
        assert_eq!(
            sample("firetower_edge_connections_open", &[]),
            Some(Value::Gauge(5.0))
        );
        assert_eq!(
            sample("firetower_edge_queue_bytes", &[]),
            Some(Value::Gauge(1234.0))
        );
        // OpenMetrics counters: TYPE names the family, the sample ends in `_total`.
        assert!(text.contains("# TYPE firetower_edge_connections counter\n"));
        assert_eq!(
            sample("firetower_edge_connections_total", &[]),
            Some(Value::Untyped(9.0))
        );
        for (reason, n) in [
            ("slow", 2.0),
            ("kicked", 1.0),
            ("shutdown", 0.0),
            ("heartbeat", 0.0),
        ] {
            assert_eq!(
                sample("firetower_edge_closes_total", &[("reason", reason)]),
                Some(Value::Untyped(n)),
                "{reason}"
            );
        }
        assert_eq!(
            sample("firetower_edge_topics", &[]),
            Some(Value::Gauge(3.0))
        );
        assert_eq!(sample("firetower_edge_ready", &[]), Some(Value::Gauge(1.0)));
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
        let text = encode(metrics.registry()).unwrap();
        assert_described(&text);
        let scrape = parse(&text);
        let histogram = sample(&scrape, "firetower_edge_delivery_latency_seconds", &[]);
        let Some(Value::Histogram(buckets)) = &histogram else {
            panic!("not a histogram: {histogram:?}");
        };
        let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
        assert_eq!(at(0.0001), Some(1.0), "the one from a clock ahead");
        assert_eq!(at(0.0005), Some(2.0));
        assert_eq!(at(0.025), Some(3.0));
        assert_eq!(at(2.5), Some(3.0));
        assert_eq!(at(5.0), Some(4.0));
        assert_eq!(at(f64::INFINITY), Some(4.0));
        assert_eq!(
            sample(
                &scrape,
                "firetower_edge_delivery_latency_seconds_count",
                &[]
            ),
            Some(Value::Untyped(4.0))
        );
    }
}
