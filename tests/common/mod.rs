//! An in-process cluster on loopback with real sockets: 3 metastore nodes (Raft over
//! gRPC, sled on disk), distributors (gRPC + QUIC with TLS) and edges (WebSocket + QUIC).
//! Each distributor and edge runs in its own runtime, so `kill` drops every task and
//! socket of that node at once, like a crashed process.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use firetower_net::tls::{DevPki, TlsFiles};
use firetower_net::{NodeIdentity, Role};
use firetower_proto::client::{parse_server_frame, ServerFrame};
use firetower_proto::distributor::v1 as dpb;
use firetower_proto::distributor::v1::distributor_client::DistributorClient;
use firetower_proto::metastore::v1 as pb;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct Node {
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
    pub addr: String,
}

impl Node {
    /// Stops the node cleanly (it deregisters).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Drops the node's runtime: every task and socket goes at once, nothing is said.
    pub fn kill(&mut self) {
        self.stop.take();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn node_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub metastore: Vec<String>,
    metas: Vec<Node>,
    pub distributors: BTreeMap<u64, Node>,
    /// Each distributor's QUIC (relay) address.
    pub distributor_quic: BTreeMap<u64, String>,
    pub edges: BTreeMap<u64, Node>,
    pub edge_counters: HashMap<u64, Arc<firetower_edge::Counters>>,
    pki: DevPki,
    hot: firetower_distributor::config::HotPolicy,
    lane_queue_bytes: usize,
    publish_retry_ms: u64,
    request_timeout_ms: u64,
    /// The path `wait_ready`'s probes connect to (with a token when the edges need one).
    pub probe_path: String,
    /// The lease TTL of the distributors started from now on.
    pub distributor_lease_ttl_ms: u64,
    /// The distributors' API keys, and the key the harness's own clients present.
    api: firetower_distributor::ApiAuthConfig,
    pub api_key: firetower_net::ApiKey,
}

pub struct EdgeTuning {
    pub send_queue_bytes: usize,
    pub slow_after_ms: u64,
    pub max_topics_per_conn: usize,
    /// The distributors' automatic hot-topic policy.
    pub hot: firetower_distributor::config::HotPolicy,
    /// The distributors' byte budget per edge link, and their publish deadline.
    pub lane_queue_bytes: usize,
    pub publish_retry_ms: u64,
    /// The distributors' bound on one call to their gRPC API.
    pub request_timeout_ms: u64,
    /// How the edges authenticate clients: anonymous unless a test says otherwise (the
    /// token check has its own tests in tests/security.rs).
    pub auth: firetower_edge::AuthConfig,
    /// The token `wait_ready`'s probes present, when `auth` needs one.
    pub probe_token: Option<String>,
    pub max_connections_per_ip: usize,
    /// The distributors' API keys (open to every caller unless a test says otherwise), and
    /// the key the harness's clients (and the edges, for TopicStatus) present.
    pub api: firetower_distributor::ApiAuthConfig,
    pub api_key: Option<String>,
    /// The edges' per-connection rate limits.
    pub rate: firetower_edge::rate::RateConfig,
}

impl Default for EdgeTuning {
    fn default() -> Self {
        EdgeTuning {
            send_queue_bytes: firetower_edge::Config::default().send_queue_bytes,
            slow_after_ms: firetower_edge::Config::default().slow_after_ms,
            max_topics_per_conn: 256,
            hot: firetower_distributor::config::HotPolicy::default(),
            lane_queue_bytes: firetower_distributor::Config::default().lane_queue_bytes,
            publish_retry_ms: firetower_distributor::Config::default().publish_retry_ms,
            request_timeout_ms: firetower_distributor::Config::default().request_timeout_ms,
            auth: firetower_edge::AuthConfig {
                allow_anonymous: true,
                ..Default::default()
            },
            probe_token: None,
            max_connections_per_ip: firetower_edge::Config::default().max_connections_per_ip,
            api: firetower_distributor::ApiAuthConfig {
                allow_unauthenticated: true,
                ..Default::default()
            },
            api_key: None,
            rate: firetower_edge::rate::RateConfig::default(),
        }
    }
}

impl Cluster {
    /// 3 metastore nodes, then `distributors` distributors and `edges` edges.
    pub async fn start(distributors: u64, edges: u64) -> Result<Cluster> {
        Self::start_with(distributors, edges, EdgeTuning::default()).await
    }

    pub async fn start_with(distributors: u64, edges: u64, tuning: EdgeTuning) -> Result<Cluster> {
        // With RUST_LOG set, the nodes' logs go to the test's output (shown when it fails).
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir()?;
        let mut listeners = Vec::new();
        let mut peers = BTreeMap::new();
        for id in 1..=3u64 {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            peers.insert(id, l.local_addr()?.to_string());
            listeners.push((id, l));
        }
        let mut metas = Vec::new();
        let pki = DevPki::new()?;
        for (id, l) in listeners {
            let config = firetower_metastore::Config {
                id,
                peers: peers.clone(),
                data_dir: dir.path().join(format!("meta-{id}")),
                api: firetower_net::api_auth::ApiAuthConfig {
                    allow_unauthenticated: true,
                    ..Default::default()
                },
                tls: pki.write_node(
                    &dir.path().join("tls"),
                    NodeIdentity::new(Role::Metastore, id),
                )?,
                ..firetower_metastore::Config::default()
            };
            let addr = peers[&id].clone();
            metas.push(spawn_node(addr, move |stop| async move {
                l.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(l)?;
                firetower_metastore::run_tcp(config, listener, async move {
                    let _ = stop.await;
                })
                .await?;
                Ok(())
            })?);
        }
        let metastore: Vec<String> = peers.values().cloned().collect();
        let mut cluster = Cluster {
            dir,
            metastore,
            metas,
            distributors: BTreeMap::new(),
            distributor_quic: BTreeMap::new(),
            edges: BTreeMap::new(),
            edge_counters: HashMap::new(),
            pki,
            hot: tuning.hot.clone(),
            lane_queue_bytes: tuning.lane_queue_bytes,
            publish_retry_ms: tuning.publish_retry_ms,
            request_timeout_ms: tuning.request_timeout_ms,
            api: tuning.api.clone(),
            distributor_lease_ttl_ms: 1500,
            api_key: match &tuning.api_key {
                Some(key) => firetower_net::ApiKey::new("api_key", key)?,
                None => firetower_net::ApiKey::none(),
            },
            probe_path: match &tuning.probe_token {
                Some(token) => format!("/ws?token={token}"),
                None => "/ws".to_string(),
            },
        };
        for id in 1..=distributors {
            cluster.start_distributor(id)?;
        }
        for id in 1..=edges {
            cluster.start_edge(id, &tuning)?;
        }
        Ok(cluster)
    }

    fn tls(&self, identity: NodeIdentity) -> Result<TlsFiles> {
        Ok(self
            .pki
            .write_node(&self.dir.path().join("tls"), identity)?)
    }

    /// The cluster CA, as backends and the CLI take it (`--ca-file`).
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("tls").join("ca.crt")
    }

    /// A connector for the harness's own calls: TLS trusting the cluster CA, no node
    /// certificate (a backend's or an operator's).
    pub fn connector(&self) -> Result<firetower_net::TcpConnector> {
        Ok(firetower_net::TcpConnector::tls(
            firetower_net::ClientTls::trusting(&self.ca_file())?,
        ))
    }

    /// TLS material of this cluster's CA for `identity` (a node that exists or not).
    pub fn node_tls(&self, identity: NodeIdentity) -> Result<firetower_net::TlsMaterial> {
        let files = self
            .pki
            .write_node(&self.dir.path().join("other-tls"), identity)?;
        Ok(firetower_net::TlsMaterial::load(&files)?)
    }

    /// A connector presenting a certificate of this cluster's CA for `identity` (a node
    /// that exists or not: the CA signs what it is asked to).
    pub fn node_connector(&self, identity: NodeIdentity) -> Result<firetower_net::TcpConnector> {
        let material = self.node_tls(identity)?;
        Ok(firetower_net::TcpConnector::tls(
            firetower_net::ClientTls::node(&material)?,
        ))
    }

    /// A gRPC channel to the node of `role` at `addr`, over [`Self::connector`].
    pub fn channel(&self, addr: &str, role: Role) -> Result<tonic::transport::Channel> {
        firetower_net::Connector::channel(&self.connector()?, addr, role)
            .map_err(anyhow::Error::msg)
    }

    pub fn start_distributor(&mut self, id: u64) -> Result<()> {
        let grpc = std::net::TcpListener::bind("127.0.0.1:0")?;
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let config = firetower_distributor::Config {
            id,
            metastore: self.metastore.clone(),
            grpc_advertise: grpc.local_addr()?.to_string(),
            quic_advertise: udp.local_addr()?.to_string(),
            tls: self.tls(NodeIdentity::new(Role::Distributor, id))?,
            lease_ttl_ms: self.distributor_lease_ttl_ms,
            hot: self.hot.clone(),
            lane_queue_bytes: self.lane_queue_bytes,
            lane_hard_bytes: self.lane_queue_bytes * 16,
            publish_retry_ms: self.publish_retry_ms,
            request_timeout_ms: self.request_timeout_ms,
            api: self.api.clone(),
            ..firetower_distributor::Config::default()
        };
        let addr = config.grpc_advertise.clone();
        self.distributor_quic
            .insert(id, config.quic_advertise.clone());
        let node = spawn_node(addr, move |stop| async move {
            grpc.set_nonblocking(true)?;
            let grpc = tokio::net::TcpListener::from_std(grpc)?;
            firetower_distributor::run_udp(config, grpc, udp, async move {
                let _ = stop.await;
            })
            .await?;
            Ok(())
        })?;
        self.distributors.insert(id, node);
        Ok(())
    }

    pub fn start_edge(&mut self, id: u64, tuning: &EdgeTuning) -> Result<()> {
        let ws = std::net::TcpListener::bind("127.0.0.1:0")?;
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let config = firetower_edge::Config {
            id,
            metastore: self.metastore.clone(),
            ws_advertise: ws.local_addr()?.to_string(),
            tls: self.tls(NodeIdentity::new(Role::Edge, id))?,
            lease_ttl_ms: 1500,
            send_queue_bytes: tuning.send_queue_bytes,
            slow_after_ms: tuning.slow_after_ms,
            max_topics_per_conn: tuning.max_topics_per_conn,
            auth: tuning.auth.clone(),
            max_connections_per_ip: tuning.max_connections_per_ip,
            rate: tuning.rate,
            ..firetower_edge::Config::default()
        };
        let counters = Arc::new(firetower_edge::Counters::default());
        self.edge_counters.insert(id, counters.clone());
        let addr = config.ws_advertise.clone();
        let node = spawn_node(addr, move |stop| async move {
            ws.set_nonblocking(true)?;
            let ws = tokio::net::TcpListener::from_std(ws)?;
            firetower_edge::run_tcp(
                config,
                ws,
                udp,
                Arc::new(firetower_edge::AllowAll),
                counters,
                async move {
                    let _ = stop.await;
                },
            )
            .await?;
            Ok(())
        })?;
        self.edges.insert(id, node);
        Ok(())
    }

    pub fn edge_addr(&self, id: u64) -> &str {
        &self.edges[&id].addr
    }

    pub async fn distributor(
        &self,
        id: u64,
    ) -> Result<DistributorClient<firetower_net::KeyedChannel>> {
        let channel = self.channel(&self.distributors[&id].addr, Role::Distributor)?;
        Ok(DistributorClient::with_interceptor(
            channel,
            self.api_key.clone(),
        ))
    }

    /// A client of distributor `id` presenting a distributor's certificate (of a made-up
    /// distributor 1000), for the calls distributors make to each other: TopicStatus and
    /// History in their owner-only form.
    pub async fn distributor_as_peer(
        &self,
        id: u64,
    ) -> Result<DistributorClient<firetower_net::KeyedChannel>> {
        let connector = self.node_connector(NodeIdentity::new(Role::Distributor, 1000))?;
        let channel = firetower_net::Connector::channel(
            &connector,
            &self.distributors[&id].addr,
            Role::Distributor,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(DistributorClient::with_interceptor(
            channel,
            self.api_key.clone(),
        ))
    }

    /// Waits until a publish to a probe topic on `edge` reaches a subscriber there, through
    /// every distributor: the cluster routes end to end.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.wait_members(deadline).await?;
        for &edge in self.edges.keys() {
            for &dist in self.distributors.keys() {
                let topic = format!("probe-{edge}-{dist}");
                let mut client = loop {
                    match Client::connect_path(self.edge_addr(edge), &self.probe_path).await {
                        Ok(c) => break c,
                        Err(_) if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(e) => return Err(e),
                    }
                };
                loop {
                    client
                        .send(&format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#))
                        .await?;
                    match client.next_frame(Duration::from_secs(6)).await? {
                        Some(Frame::Subscribed(_)) => break,
                        _ if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        other => bail!("probe subscribe failed: {other:?}"),
                    }
                }
                let mut d = loop {
                    match self.distributor(dist).await {
                        Ok(d) => break d,
                        Err(_) if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(e) => return Err(e),
                    }
                };
                // While slots are still moving, an owner that has not yet seen the move
                // can accept a publish and send it nowhere; publish again until one lands.
                loop {
                    d.publish(dpb::PublishRequest {
                        topic: topic.clone(),
                        data: "\"ping\"".into(),
                    })
                    .await
                    .context("probe publish")?;
                    match client.next_frame(Duration::from_secs(1)).await? {
                        Some(Frame::Publish { topic: t, .. }) if t == topic => break,
                        None if tokio::time::Instant::now() < deadline => {}
                        other => bail!("probe delivery missing: {other:?}"),
                    }
                }
                client.close().await;
            }
        }
        Ok(())
    }

    /// Polls the metastore's ClusterStatus until `settled` holds for it, or fails with
    /// `what` at `deadline`.
    async fn wait_status(
        &self,
        deadline: tokio::time::Instant,
        what: &str,
        settled: impl Fn(&pb::ClusterStatusReply) -> bool,
    ) -> Result<()> {
        loop {
            if let Ok(channel) = self.channel(&self.metastore[0], Role::Metastore) {
                let mut client = pb::metastore_client::MetastoreClient::new(channel);
                if let Ok(status) = client.cluster_status(pb::ClusterStatusRequest {}).await {
                    if settled(status.get_ref()) {
                        return Ok(());
                    }
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{what} did not happen in time");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every distributor and edge is registered and the slots are spread over
    /// all distributors: after this, slots only move on a failure.
    pub async fn wait_members(&self, deadline: tokio::time::Instant) -> Result<()> {
        let (distributors, edges) = (self.distributors.len(), self.edges.len());
        self.wait_status(deadline, "registration of every member", |status| {
            let count = |kind: pb::MemberKind| {
                status
                    .members
                    .iter()
                    .filter(|m| m.kind == kind as i32)
                    .count()
            };
            count(pb::MemberKind::Distributor) == distributors
                && count(pb::MemberKind::Edge) == edges
                && status.slots_per_distributor.len() == distributors
                && status.unowned_slots == 0
        })
        .await
    }

    /// Waits until distributor `id` owns every slot.
    pub async fn wait_slots_only_on(&self, id: u64, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.wait_status(deadline, "the move of every slot", |status| {
            status.unowned_slots == 0
                && status.slots_per_distributor.len() == 1
                && status.slots_per_distributor[0].distributor_id == id
        })
        .await
    }

    pub async fn shutdown(mut self) {
        for (_, mut e) in std::mem::take(&mut self.edges) {
            e.stop().await;
        }
        for (_, mut d) in std::mem::take(&mut self.distributors) {
            d.stop().await;
        }
        for mut m in std::mem::take(&mut self.metas) {
            m.stop().await;
        }
    }
}

fn spawn_node<F, Fut>(addr: String, f: F) -> Result<Node>
where
    F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let runtime = node_runtime()?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let name = addr.clone();
    runtime.spawn(async move {
        if let Err(e) = f(stop_rx).await {
            eprintln!("node {name} failed: {e:#}");
        }
        let _ = done_tx.send(());
    });
    Ok(Node {
        runtime: Some(runtime),
        stop: Some(stop_tx),
        done: Some(done_rx),
        addr,
    })
}

/// A server frame, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Publish {
        topic: String,
        data: String,
        epoch: u64,
        seq: u64,
    },
    Subscribed(Vec<String>),
    Unsubscribed(Vec<String>),
    Published {
        id: u64,
        topic: String,
        epoch: u64,
        seq: u64,
    },
    Error {
        code: String,
        message: String,
        topic: Option<String>,
    },
    Heartbeat,
    /// The server closed the connection with this code and reason.
    Closed(u16, String),
}

pub fn to_frame(text: &str) -> Result<Frame> {
    Ok(
        match parse_server_frame(text).map_err(anyhow::Error::msg)? {
            ServerFrame::Publish {
                topic,
                data,
                epoch,
                seq,
            } => Frame::Publish {
                topic: topic.into_owned(),
                data: data.to_string(),
                epoch,
                seq,
            },
            ServerFrame::Subscribed(t) => Frame::Subscribed(t),
            ServerFrame::Unsubscribed(t) => Frame::Unsubscribed(t),
            ServerFrame::Error {
                code,
                message,
                topic,
                ..
            } => Frame::Error {
                code,
                message,
                topic,
            },
            ServerFrame::Published {
                id,
                topic,
                epoch,
                seq,
            } => Frame::Published {
                id,
                topic,
                epoch,
                seq,
            },
            ServerFrame::Heartbeat => Frame::Heartbeat,
        },
    )
}

/// A WebSocket client of the Firetower protocol.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(addr: &str) -> Result<Client> {
        Self::connect_path(addr, "/ws").await
    }

    /// Connects to a path of its own (for example `/ws?user=u1`, which the default hooks
    /// take as the user id).
    pub async fn connect_path(addr: &str, path: &str) -> Result<Client> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}")).await?;
        Ok(Client { ws })
    }

    pub async fn send(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    pub async fn send_message(&mut self, m: Message) -> Result<()> {
        self.ws.send(m).await?;
        Ok(())
    }

    /// The next protocol frame (pings and pongs skipped), or None on timeout.
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<Option<Frame>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(n) => n,
                Err(_) => return Ok(None),
            };
            match next {
                Some(Ok(Message::Text(t))) => return to_frame(t.as_str()).map(Some),
                Some(Ok(Message::Close(c))) => {
                    return Ok(Some(match c {
                        Some(c) => Frame::Closed(c.code.into(), c.reason.to_string()),
                        None => Frame::Closed(1005, String::new()),
                    }))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("websocket error: {e}"),
                None => return Ok(Some(Frame::Closed(1006, "eof".into()))),
            }
        }
    }

    /// Subscribes to one topic with the position last seen of it, and returns its ack's
    /// recovery fields: whether it was recovered, and the position given if not.
    pub async fn subscribe_from(
        &mut self,
        topic: &str,
        epoch: u64,
        seq: u64,
    ) -> Result<(bool, Option<(u64, u64)>)> {
        self.send(&format!(
            r#"{{"type":"subscribe","topic":"{topic}","since":{{"{topic}":{{"epoch":{epoch},"seq":{seq}}}}}}}"#
        ))
        .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await;
            match next {
                Ok(Some(Ok(Message::Text(t)))) => {
                    ensure!(
                        to_frame(t.as_str())? == Frame::Subscribed(vec![topic.to_string()]),
                        "expected the ack of {topic}, got {t}"
                    );
                    let (recovered, positions) =
                        firetower_proto::client::parse_recovery(t.as_str())
                            .map_err(anyhow::Error::msg)?;
                    let Some(&recovered) = recovered.get(topic) else {
                        bail!("the ack says nothing of recovery: {t}");
                    };
                    return Ok((recovered, positions.get(topic).map(|p| (p.epoch, p.seq))));
                }
                Ok(Some(Ok(_))) => continue,
                other => bail!("no ack of {topic}: {other:?}"),
            }
        }
    }

    /// Subscribes and waits for the ack of exactly these topics.
    pub async fn subscribe(&mut self, topics: &[String]) -> Result<()> {
        self.send(&format!(
            r#"{{"type":"subscribe","topic":"{}","data":""}}"#,
            topics.join(",")
        ))
        .await?;
        let mut waiting: Vec<String> = topics.to_vec();
        while !waiting.is_empty() {
            match self.next_frame(Duration::from_secs(15)).await? {
                Some(Frame::Subscribed(t)) => waiting.retain(|w| !t.contains(w)),
                other => bail!("expected subscribed, got {other:?}"),
            }
        }
        Ok(())
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Reads frames in the background into a channel (for many concurrent clients).
    pub fn spawn_reader(
        mut self,
    ) -> (
        mpsc::UnboundedReceiver<Frame>,
        tokio::task::JoinHandle<Client>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(async move {
            while let Some(Ok(m)) = self.ws.next().await {
                match m {
                    Message::Text(t) => {
                        if let Ok(f) = to_frame(t.as_str()) {
                            if tx.send(f).is_err() {
                                break;
                            }
                        }
                    }
                    Message::Close(c) => {
                        let (code, reason) = c
                            .map(|c| (c.code.into(), c.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        let _ = tx.send(Frame::Closed(code, reason));
                        break;
                    }
                    _ => {}
                }
            }
            self
        });
        (rx, handle)
    }
}
