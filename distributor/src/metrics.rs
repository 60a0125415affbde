//! The distributor's metrics in the Prometheus (OpenMetrics) text format, and what its
//! operations listener serves: `/metrics`, `/healthz`, `/readyz` and `/topics`.
//!
//! Nothing on the publish path changes for them: the counters stay the atomics of
//! [`Counters`] that the shell (and tests and benches) already bump, and a
//! [`prometheus_client`] collector reads them at scrape time, with a [`NodeView`] of what
//! only the node's lock can tell (links, lane bytes, history, topics), taken once per
//! scrape.
//!
//! ```text
//!  GET /metrics ─► registry ─► collect ─► Counters (atomics)
//!                                      └► view() ─► Shared::view (one lock)
//!  GET /readyz  ─► Shared::readiness: routing view, registration, a fresh lease
//!  GET /topics  ─► the core's busiest owned topics of the last load window
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use firetower_net::metrics::{collector, counter, counter_family, gauge, node_endpoints, ready};
use firetower_net::ops_http::{Request, Response};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use tonic::Code;

use crate::core::TopicRate;
use crate::node::Counters;

/// Every metric's name starts with this.
pub const PREFIX: &str = "firetower_distributor";

/// The gRPC codes, in their numeric order (`Code as usize` indexes it).
const CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// A gRPC code as a metric label: `ok`, or the code's name in snake case.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Messages publishers were answered for, by result: one count per gRPC code (`Ok`: the
/// message was sequenced). A backend's Publish, PublishBatch and PublishStream messages and
/// an edge's client publishes each count once, at the distributor that answered them (a
/// forwarded run is not counted again by its owner).
#[derive(Debug, Default)]
pub struct PublishResults([AtomicU64; 17]);

impl PublishResults {
    /// Counts `messages` answered with `code`.
    pub fn record(&self, code: Code, messages: u64) {
        if let Some(count) = self.0.get(code as usize) {
            count.fetch_add(messages, Ordering::Relaxed);
        }
    }

    /// Messages answered with `code` so far.
    pub fn get(&self, code: Code) -> u64 {
        self.0
            .get(code as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// What only the node's lock can tell, read once per scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeView {
    /// Edges with a relay link.
    pub links: u64,
    /// Bytes queued on the relay lanes toward all edges, not yet taken by a lane writer.
    pub lane_queued_bytes: u64,
    /// Bytes of relay frames the lane writers have handed to QUIC.
    pub lane_sent_bytes: u64,
    /// Topics with state here (sequencing, interest, history).
    pub topics: u64,
    /// Slots this node owns in its routing view.
    pub owned_slots: u64,
    pub history_messages: u64,
    pub history_bytes: u64,
    /// The routing view's revision.
    pub revision: u64,
    /// `/readyz`.
    pub ready: bool,
}

/// Reads the node's view at scrape time (`None` once the node is gone).
pub type ViewFn = Box<dyn Fn() -> Option<NodeView> + Send + Sync>;

/// What the collector encodes at each scrape: the counters' atomics and the node's view.
fn collect(c: &Counters, view: &ViewFn, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    counter_family(
        encoder,
        "publishes",
        "Messages publishers were answered for, by result (ok, or the gRPC code of the failure).",
        "result",
        CODES
            .into_iter()
            .map(|code| (code, c.publish_results.get(code)))
            // Every code that happened, and always ok: a family is never empty.
            .filter(|&(code, value)| value > 0 || code == Code::Ok)
            .map(|(code, value)| (code_label(code), value)),
    )?;
    counter(
        encoder,
        "sequenced",
        "Messages sequenced here (this node owns their topic).",
        load(&c.published),
    )?;
    counter(
        encoder,
        "forwarded",
        "Messages forwarded to their owners (one per message per attempt).",
        load(&c.forwarded),
    )?;
    counter(
        encoder,
        "client_publishes",
        "Client publishes received from edges.",
        load(&c.client_publishes),
    )?;
    counter(
        encoder,
        "links_overloaded",
        "Edge links closed because their relay lanes or control queue were full.",
        load(&c.links_overloaded),
    )?;
    counter(
        encoder,
        "bad_frames",
        "Relay frames from edges that were malformed or invalid.",
        load(&c.bad_frames),
    )?;
    counter(
        encoder,
        "stale_routes",
        "Publishes refused because their hot-topic route was older than this owner's.",
        load(&c.stale_routes),
    )?;
    counter(
        encoder,
        "fences",
        "Hot-topic fences sent to edges.",
        load(&c.fences),
    )?;
    counter(
        encoder,
        "hot_proposals",
        "Hot-topic splits and merges this node proposed to the metastore.",
        load(&c.hot_proposals),
    )?;
    counter(
        encoder,
        "replayed",
        "Deliveries replayed to edges that joined a route or announced a position late.",
        load(&c.replayed),
    )?;
    counter(
        encoder,
        "admission_waits",
        "Publishes that waited for room on the relay lanes toward their subscribers.",
        load(&c.admission_waits),
    )?;
    counter(
        encoder,
        "admission_refused",
        "Publishes refused because that room did not come before their deadline.",
        load(&c.admission_refused),
    )?;
    let Some(view) = view() else {
        return Ok(());
    };
    gauge(
        encoder,
        "relay_links",
        "Edges with a relay link to this node.",
        view.links,
    )?;
    gauge(
        encoder,
        "relay_lane_queued_bytes",
        "Bytes queued on the relay lanes toward all edges, not yet handed to QUIC.",
        view.lane_queued_bytes,
    )?;
    counter(
        encoder,
        "relay_lane_sent_bytes",
        "Bytes of relay frames handed to QUIC on the lanes.",
        view.lane_sent_bytes,
    )?;
    gauge(
        encoder,
        "topics",
        "Topics with state here (sequencing, interest, history).",
        view.topics,
    )?;
    gauge(
        encoder,
        "owned_slots",
        "Slots this node owns in its routing view.",
        view.owned_slots,
    )?;
    gauge(
        encoder,
        "history_messages",
        "Messages kept in the topics' histories for recovery.",
        view.history_messages,
    )?;
    gauge(
        encoder,
        "history_bytes",
        "Bytes of the messages kept in the topics' histories.",
        view.history_bytes,
    )?;
    gauge(
        encoder,
        "routing_revision",
        "The revision of this node's routing view.",
        view.revision,
    )?;
    ready(encoder, view.ready)?;
    Ok(())
}

/// The registry of one distributor: every metric is `firetower_distributor_*`, labelled
/// `distributor="<id>"`.
pub fn registry(id: u64, counters: Arc<Counters>, view: ViewFn) -> Registry {
    let mut registry = firetower_net::metrics::registry(PREFIX, "distributor", id);
    registry.register_collector(collector(move |encoder| collect(&counters, &view, encoder)));
    registry
}

/// `/topics`: `{"topics":[{"topic":"name","published":N,"rate":R}]}`, busiest first.
pub fn topics_json(topics: &[TopicRate]) -> String {
    serde_json::json!({ "topics": topics }).to_string()
}

/// What the operations listener serves: every node's endpoints, and `/topics`;
/// `readiness` and `busiest` read the node.
pub(crate) fn handler(
    registry: Registry,
    readiness: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    busiest: impl Fn() -> Vec<TopicRate> + Send + Sync + 'static,
) -> impl Fn(&Request<'_>) -> Option<Response> + Send + Sync + 'static {
    move |request| match request.path {
        "/topics" => Some(Response::json(200, topics_json(&busiest()))),
        _ => node_endpoints(request, &registry, &readiness),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firetower_net::metrics::encode;
    use firetower_net::metrics::testing::{assert_described, parse, sample, value, Value};

    #[test]
    fn the_text_names_every_family_with_help_and_type() {
        let counters = Arc::new(Counters::default());
        counters.published.store(7, Ordering::Relaxed);
        counters.publish_results.record(Code::Ok, 5);
        counters.publish_results.record(Code::ResourceExhausted, 2);
        counters.admission_refused.store(2, Ordering::Relaxed);
        let registry = registry(
            3,
            counters,
            Box::new(|| {
                Some(NodeView {
                    links: 2,
                    lane_queued_bytes: 100,
                    lane_sent_bytes: 4096,
                    topics: 4,
                    owned_slots: 8192,
                    history_messages: 9,
                    history_bytes: 900,
                    revision: 12,
                    ready: true,
                })
            }),
        );
        let text = encode(&registry).unwrap();
        assert_described(&text);
        assert!(text.contains("# TYPE firetower_distributor_publishes counter"));
        let scrape = parse(&text);
        let value = |name: &str, labels: &[(&str, &str)]| value(&scrape, name, labels);
        assert_eq!(
            value("firetower_distributor_publishes_total", &[("result", "ok")]),
            Some(5.0)
        );
        assert_eq!(
            value(
                "firetower_distributor_publishes_total",
                &[("result", "resource_exhausted"), ("distributor", "3")]
            ),
            Some(2.0)
        );
        assert_eq!(
            value("firetower_distributor_sequenced_total", &[]),
            Some(7.0)
        );
        assert_eq!(
            value("firetower_distributor_admission_refused_total", &[]),
            Some(2.0)
        );
        for (gauge, v) in [
            ("firetower_distributor_relay_links", 2.0),
            ("firetower_distributor_relay_lane_queued_bytes", 100.0),
            ("firetower_distributor_topics", 4.0),
            ("firetower_distributor_history_messages", 9.0),
            ("firetower_distributor_history_bytes", 900.0),
            ("firetower_distributor_ready", 1.0),
        ] {
            assert_eq!(
                sample(&scrape, gauge, &[]),
                Some(Value::Gauge(v)),
                "{gauge}"
            );
        }
        assert_eq!(
            value("firetower_distributor_relay_lane_sent_bytes_total", &[]),
            Some(4096.0)
        );
        for family in [
            "forwarded",
            "client_publishes",
            "hot_proposals",
            "admission_waits",
            "fences",
        ] {
            assert!(
                scrape
                    .docs
                    .contains_key(&format!("firetower_distributor_{family}")),
                "{family}"
            );
        }
    }

    #[test]
    fn ready_with_a_routing_view_a_registration_and_a_fresh_lease() {
        use crate::core::DistributorCore;
        use crate::node::readiness_of;
        use firetower_proto::metastore::v1 as pb;
        use tokio::time::{Duration, Instant};
        let t0 = Instant::now();
        let ttl = Duration::from_secs(3);
        let mut core = DistributorCore::new(1, 100).with_lease_fencing(ttl);
        assert_eq!(
            readiness_of(&core, t0),
            Err("no routing view from the metastore yet".into())
        );
        core.handle_watch(
            t0,
            pb::WatchEvent {
                event: Some(pb::watch_event::Event::Snapshot(pb::SlotMap {
                    revision: 5,
                    slot_owner: vec![1; firetower_proto::SLOT_COUNT],
                    slot_epoch: vec![5; firetower_proto::SLOT_COUNT],
                    ..pb::SlotMap::default()
                })),
            },
        );
        assert_eq!(
            readiness_of(&core, t0),
            Err("not registered with the metastore yet".into())
        );
        core.handle_registered(5);
        assert_eq!(
            readiness_of(&core, t0),
            Err("the metastore has not confirmed the lease yet".into())
        );
        core.handle_lease_confirmed(t0, t0, 5);
        assert_eq!(readiness_of(&core, t0 + Duration::from_secs(1)), Ok(()));
        // No confirmation for a whole lease: the node may not sequence, so it is not ready.
        assert_eq!(
            readiness_of(&core, t0 + ttl),
            Err("the lease lapsed: no heartbeat was confirmed within it".into())
        );
    }

    #[test]
    fn the_handler_serves_each_path_and_404s_the_rest() {
        let registry = registry(1, Arc::default(), Box::new(|| None));
        let serve = handler(
            registry,
            || Err("no routing view from the metastore yet".into()),
            || {
                vec![TopicRate {
                    topic: "chat/lobby".into(),
                    published: 12,
                    rate: 2.5,
                }]
            },
        );
        let get = |path: &str| serve(&Request { path, query: "" });
        let metrics = get("/metrics").unwrap();
        assert_eq!(metrics.status, 200);
        assert!(String::from_utf8_lossy(&metrics.body).ends_with("# EOF\n"));
        assert_eq!(get("/healthz").unwrap().status, 200);
        let ready = get("/readyz").unwrap();
        assert_eq!(ready.status, 503);
        assert_eq!(
            String::from_utf8_lossy(&ready.body),
            "not ready: no routing view from the metastore yet"
        );
        let topics = get("/topics").unwrap();
        let json: serde_json::Value = serde_json::from_slice(&topics.body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"topics": [{"topic": "chat/lobby", "published": 12, "rate": 2.5}]})
        );
        assert!(get("/nope").is_none());
    }
}
