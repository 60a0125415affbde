//! The metastore node's metrics in the Prometheus (OpenMetrics) text format, and what its
//! operations listener serves: `/metrics`, `/healthz` and `/readyz`.
//!
//! Two histograms are fed where the work happens: the time the state machine takes to
//! apply an entry ([`crate::store::StateMachine::with_metrics`]) and the time a storage
//! flush (sled's fsync) takes ([`Timed`], around the node's backend). The commit index is
//! recorded as openraft saves it ([`crate::store::LogStore::with_metrics`]): its own
//! metrics do not carry it. Everything else (term, leader, indexes, members, watch
//! streams) is read at scrape time into a [`RaftView`].
//!
//! ```text
//!  GET /metrics ─► registry ─┬─► collect ─► view() ─► raft.metrics(), state, watchers
//!                            ├─► apply_seconds   ◄── StateMachine::apply, per entry
//!                            └─► fsync_seconds   ◄── Timed::flush
//!  GET /readyz  ─► readiness(view): a leader known, everything committed it knows of applied
//! ```
//!
//! Durations are measured with tokio's clock: real time on a node, the simulator's (which
//! a synchronous flush does not advance) under it; they decide nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use firetower_net::metrics::{collector, gauge, gauge_family, node_endpoints, ready, signed_gauge};
use firetower_net::ops_http::{Request, Response};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::BackendError;
use crate::store::Backend;

/// Every metric's name starts with this.
pub const PREFIX: &str = "firetower_metastore";

/// Buckets of both histograms, in seconds: 10 µs (an in-memory apply) to 2.5 s (a flush
/// on a disk that stalls).
const BUCKETS: [f64; 16] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0, 2.5,
];

/// What the storage layer measures: shared by the log store, the state machine and the
/// backend wrapper of one node.
#[derive(Debug)]
pub struct StoreMetrics {
    /// Seconds to apply one entry to the state machine.
    pub apply: Histogram,
    /// Seconds of one backend flush (sled's fsync).
    pub fsync: Histogram,
    /// The last committed log index openraft saved, plus one (0: none yet).
    committed: AtomicU64,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            apply: Histogram::new(BUCKETS),
            fsync: Histogram::new(BUCKETS),
            committed: AtomicU64::new(0),
        }
    }
}

impl StoreMetrics {
    /// openraft saved `index` as committed.
    pub fn committed(&self, index: Option<u64>) {
        let value = index.map_or(0, |i| i.saturating_add(1));
        self.committed.fetch_max(value, Ordering::Relaxed);
    }

    /// The last committed index saved (None: none yet).
    pub fn commit_index(&self) -> Option<u64> {
        self.committed.load(Ordering::Relaxed).checked_sub(1)
    }
}

/// A backend whose flushes are timed into [`StoreMetrics::fsync`].
#[derive(Clone)]
pub struct Timed<B> {
    backend: B,
    metrics: Arc<StoreMetrics>,
}

impl<B: Backend> Timed<B> {
    pub fn new(backend: B, metrics: Arc<StoreMetrics>) -> Self {
        Timed { backend, metrics }
    }
}

impl<B: Backend> Backend for Timed<B> {
    fn log_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, BackendError> {
        self.backend.log_range(start, end)
    }

    fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>, BackendError> {
        self.backend.log_last()
    }

    fn log_insert(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), BackendError> {
        self.backend.log_insert(entries)
    }

    fn log_remove_from(&self, from: u64) -> Result<(), BackendError> {
        self.backend.log_remove_from(from)
    }

    fn log_remove_upto(&self, upto: u64) -> Result<(), BackendError> {
        self.backend.log_remove_upto(upto)
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.backend.meta_get(key)
    }

    fn meta_put(&self, key: &str, value: Vec<u8>) -> Result<(), BackendError> {
        self.backend.meta_put(key, value)
    }

    fn flush(&self) -> Result<(), BackendError> {
        let started = tokio::time::Instant::now();
        let flushed = self.backend.flush();
        self.metrics.fsync.observe(started.elapsed().as_secs_f64());
        flushed
    }
}

/// What a scrape reads of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftView {
    /// Why Raft stopped, if it stopped on a fatal error.
    pub fatal: Option<String>,
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    pub is_leader: bool,
    /// The last log index appended here.
    pub last_log_index: Option<u64>,
    /// The last log index applied to the state machine here.
    pub applied: Option<u64>,
    /// The last committed index this node knows of.
    pub committed: Option<u64>,
    /// The routing state's revision.
    pub revision: u64,
    pub distributors: u64,
    pub edges: u64,
    /// Hot-topic entries (merged ones included).
    pub hot_topics: u64,
    /// Watch streams open on this node.
    pub watch_streams: u64,
}

/// `/readyz`: ready when the node knows a leader and has applied everything committed it
/// knows of (a node that restarted or fell behind is not, until it has caught up).
pub fn readiness(view: &RaftView) -> Result<(), String> {
    if let Some(fatal) = &view.fatal {
        return Err(format!("raft stopped: {fatal}"));
    }
    let Some(leader) = view.leader else {
        return Err("no leader known".into());
    };
    match (view.applied, view.committed) {
        (_, None) => Ok(()),
        (Some(applied), Some(committed)) if applied >= committed => Ok(()),
        (applied, Some(committed)) => Err(format!(
            "applied up to {} of the {committed} committed entries it knows of (leader {leader})",
            applied.map_or_else(|| "none".to_string(), |a| a.to_string())
        )),
    }
}

/// Reads the node at scrape time.
pub type ViewFn = Box<dyn Fn() -> RaftView + Send + Sync>;

/// An index as a gauge: -1 for none.
fn index(value: Option<u64>) -> i64 {
    value.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// What the collector encodes at each scrape: the node's view.
fn collect(view: RaftView, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    gauge(encoder, "raft_term", "The current Raft term.", view.term)?;
    gauge(
        encoder,
        "raft_leader",
        "The id of the leader this node knows of (0: none).",
        view.leader.unwrap_or(0),
    )?;
    gauge(
        encoder,
        "raft_is_leader",
        "1 when this node is the leader.",
        u64::from(view.is_leader),
    )?;
    for (name, help, value) in [
        (
            "raft_commit_index",
            "The last committed log index this node knows of (-1: none).",
            view.committed,
        ),
        (
            "raft_applied_index",
            "The last log index applied to the state machine here (-1: none).",
            view.applied,
        ),
        (
            "raft_last_log_index",
            "The last log index appended here (-1: none).",
            view.last_log_index,
        ),
    ] {
        signed_gauge(encoder, name, help, index(value))?;
    }
    gauge(
        encoder,
        "raft_running",
        "1 while Raft runs (0: stopped on a fatal error).",
        u64::from(view.fatal.is_none()),
    )?;
    gauge(
        encoder,
        "revision",
        "The routing state's revision.",
        view.revision,
    )?;
    gauge_family(
        encoder,
        "members",
        "Registered members, by kind.",
        "kind",
        [("distributor", view.distributors), ("edge", view.edges)],
    )?;
    gauge(
        encoder,
        "hot_topics",
        "Hot-topic entries (merged ones included).",
        view.hot_topics,
    )?;
    gauge(
        encoder,
        "watch_streams",
        "Watch streams open on this node.",
        view.watch_streams,
    )?;
    ready(encoder, readiness(&view).is_ok())?;
    Ok(())
}

/// The registry of node `id`: every metric is `firetower_metastore_*`, labelled
/// `metastore="<id>"`.
pub fn registry(id: u64, store: &StoreMetrics, view: ViewFn) -> Registry {
    let mut registry = firetower_net::metrics::registry(PREFIX, "metastore", id);
    registry.register(
        "apply_seconds",
        "Seconds to apply one committed entry to the state machine",
        store.apply.clone(),
    );
    registry.register(
        "fsync_seconds",
        "Seconds of one storage flush (sled's fsync) of the Raft log, vote or snapshot",
        store.fsync.clone(),
    );
    registry.register_collector(collector(move |encoder| collect(view(), encoder)));
    registry
}

/// What the operations listener serves: every node's endpoints, ready per [`readiness`].
pub(crate) fn handler(
    registry: Registry,
    view: impl Fn() -> RaftView + Send + Sync + 'static,
) -> impl Fn(&Request<'_>) -> Option<Response> + Send + Sync + 'static {
    move |request| node_endpoints(request, &registry, || readiness(&view()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemBackend;
    use firetower_net::metrics::encode;
    use firetower_net::metrics::testing::{assert_described, parse, sample, value, Value};

    fn caught_up() -> RaftView {
        RaftView {
            fatal: None,
            term: 3,
            leader: Some(2),
            is_leader: false,
            last_log_index: Some(41),
            applied: Some(40),
            committed: Some(40),
            revision: 17,
            distributors: 2,
            edges: 3,
            hot_topics: 1,
            watch_streams: 5,
        }
    }

    #[test]
    fn ready_with_a_leader_and_everything_committed_applied() {
        assert_eq!(readiness(&caught_up()), Ok(()));
        let behind = RaftView {
            applied: Some(12),
            ..caught_up()
        };
        assert_eq!(
            readiness(&behind),
            Err("applied up to 12 of the 40 committed entries it knows of (leader 2)".into())
        );
        let leaderless = RaftView {
            leader: None,
            ..caught_up()
        };
        assert_eq!(readiness(&leaderless), Err("no leader known".into()));
        let stopped = RaftView {
            fatal: Some("storage failed".into()),
            ..caught_up()
        };
        assert_eq!(
            readiness(&stopped),
            Err("raft stopped: storage failed".into())
        );
        // A fresh cluster: a leader, nothing committed yet.
        let fresh = RaftView {
            applied: None,
            committed: None,
            ..caught_up()
        };
        assert_eq!(readiness(&fresh), Ok(()));
    }

    #[test]
    fn the_commit_index_only_moves_forward() {
        let store = StoreMetrics::default();
        assert_eq!(store.commit_index(), None);
        store.committed(Some(0));
        assert_eq!(store.commit_index(), Some(0));
        store.committed(Some(9));
        store.committed(Some(4));
        assert_eq!(store.commit_index(), Some(9));
    }

    #[test]
    fn the_text_names_every_family_and_the_histograms_get_observations() {
        let store = Arc::new(StoreMetrics::default());
        let backend = Timed::new(MemBackend::default(), store.clone());
        backend.meta_put("k", vec![1]).unwrap();
        backend.flush().unwrap();
        backend.flush().unwrap();
        store.apply.observe(0.0002);
        let registry = registry(1, &store, Box::new(caught_up));
        let text = encode(&registry).unwrap();
        assert_described(&text);
        let scrape = parse(&text);
        let value = |name: &str, labels: &[(&str, &str)]| {
            sample(&scrape, name, &[&[("metastore", "1")], labels].concat())
        };
        for (name, v) in [
            ("firetower_metastore_raft_term", 3.0),
            ("firetower_metastore_raft_leader", 2.0),
            ("firetower_metastore_raft_is_leader", 0.0),
            ("firetower_metastore_raft_commit_index", 40.0),
            ("firetower_metastore_raft_applied_index", 40.0),
            ("firetower_metastore_raft_last_log_index", 41.0),
            ("firetower_metastore_watch_streams", 5.0),
            ("firetower_metastore_ready", 1.0),
        ] {
            assert_eq!(value(name, &[]), Some(Value::Gauge(v)), "{name}");
        }
        assert_eq!(
            value("firetower_metastore_members", &[("kind", "edge")]),
            Some(Value::Gauge(3.0))
        );
        let count = |name: &str| match value(name, &[]) {
            Some(Value::Untyped(n)) => n,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(count("firetower_metastore_fsync_seconds_count"), 2.0);
        assert_eq!(count("firetower_metastore_apply_seconds_count"), 1.0);
        assert!(matches!(
            value("firetower_metastore_apply_seconds", &[]),
            Some(Value::Histogram(_))
        ));
    }

    /// A GET over a real socket: (status, body).
    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let timeout = std::time::Duration::from_secs(10);
        let response = firetower_net::ops_http::get(&addr.to_string(), path, timeout, 1 << 20)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&response.body).into_owned();
        (response.status, body)
    }

    /// One node (a cluster of one) with its operations listener: not ready until it leads
    /// and has applied what it committed; then its metrics say so.
    #[tokio::test]
    async fn a_node_serves_its_metrics_and_turns_ready() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops_addr = ops.local_addr().unwrap();
        let config = crate::Config {
            id: 1,
            peers: [(1, addr.clone())].into(),
            api: firetower_net::api_auth::ApiAuthConfig {
                allow_unauthenticated: true,
                ..Default::default()
            },
            allow_plaintext: true,
            ..crate::Config::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let node = tokio::spawn(crate::run_with_ops(
            config,
            firetower_net::accept_nodelay(listener),
            firetower_net::TcpConnector::default(),
            MemBackend::default(),
            Some(ops),
            async move {
                let _ = stopped.await;
            },
        ));
        assert_eq!(get(ops_addr, "/healthz").await, (200, "ok".to_string()));
        // Ready once it has elected itself and applied its first entries.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (status, body) = get(ops_addr, "/readyz").await;
            if status == 200 {
                assert_eq!(body, "ready");
                break;
            }
            assert_eq!(status, 503);
            assert!(body.starts_with("not ready: "), "{body}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "never ready: {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // A write: a member registers.
        let client = firetower_net::MetaClient::new(
            vec![addr],
            firetower_net::TcpConnector::default(),
            std::time::Duration::from_secs(5),
        );
        client
            .register(
                firetower_proto::metastore::v1::MemberKind::Edge,
                4,
                [("ws".to_string(), "127.0.0.1:9".to_string())].into(),
                std::time::Duration::from_secs(30),
                1,
            )
            .await
            .unwrap();
        let (status, text) = get(ops_addr, "/metrics").await;
        assert_eq!(status, 200);
        let scrape = parse(&text);
        let number = |name: &str, labels: &[(&str, &str)]| {
            value(&scrape, name, labels).unwrap_or_else(|| panic!("{name} missing"))
        };
        let value = |name: &str| number(name, &[]);
        assert_eq!(value("firetower_metastore_raft_is_leader"), 1.0);
        assert_eq!(value("firetower_metastore_raft_leader"), 1.0);
        assert!(value("firetower_metastore_raft_term") >= 1.0);
        let committed = value("firetower_metastore_raft_commit_index");
        assert!(committed >= 2.0, "{committed}");
        assert!(value("firetower_metastore_raft_applied_index") >= committed);
        assert!(value("firetower_metastore_raft_last_log_index") >= committed);
        assert_eq!(
            number("firetower_metastore_members", &[("kind", "edge")]),
            1.0
        );
        assert!(value("firetower_metastore_apply_seconds_count") >= 1.0);
        assert!(value("firetower_metastore_fsync_seconds_count") >= 1.0);
        assert_eq!(value("firetower_metastore_ready"), 1.0);
        stop.send(()).unwrap();
        node.await.unwrap().unwrap();
        // Stopped with the node.
        assert!(tokio::net::TcpStream::connect(ops_addr).await.is_err());
    }

    #[test]
    fn the_handler_answers_readyz_from_the_view() {
        let store = StoreMetrics::default();
        let behind = || RaftView {
            leader: None,
            ..caught_up()
        };
        let serve = handler(registry(1, &store, Box::new(behind)), behind);
        let get = |path: &str| serve(&Request { path, query: "" });
        let ready = get("/readyz").unwrap();
        assert_eq!(ready.status, 503);
        assert_eq!(
            String::from_utf8_lossy(&ready.body),
            "not ready: no leader known"
        );
        assert_eq!(get("/healthz").unwrap().status, 200);
        assert_eq!(get("/metrics").unwrap().status, 200);
        assert!(get("/dashboard").is_none());
    }
}
