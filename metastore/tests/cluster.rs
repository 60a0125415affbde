//! A real three-node metastore cluster on loopback sockets and sled directories.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use firetower_metastore::{Config, NodeError, SledBackend};
use firetower_proto::metastore::v1 as pb;
use firetower_proto::metastore::v1::metastore_client::MetastoreClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tonic::transport::Channel;
use tonic::Code;

struct Node {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), NodeError>>,
}

struct Cluster {
    _dir: tempfile::TempDir,
    root: PathBuf,
    peers: BTreeMap<u64, String>,
    nodes: BTreeMap<u64, Node>,
    /// Adjusts each node's configuration before it starts.
    tune: fn(&mut Config),
}

impl Cluster {
    async fn start(cluster: &str) -> Result<Cluster> {
        Self::start_tuned(cluster, |_| {}).await
    }

    async fn start_tuned(cluster: &str, tune: fn(&mut Config)) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().to_path_buf();
        let mut listeners = BTreeMap::new();
        for id in 1..=3u64 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            listeners.insert(id, listener);
        }
        let peers: BTreeMap<u64, String> = listeners
            .iter()
            .map(|(&id, l)| Ok((id, l.local_addr()?.to_string())))
            .collect::<Result<_>>()?;
        let mut c = Cluster {
            _dir: dir,
            root,
            peers,
            nodes: BTreeMap::new(),
            tune,
        };
        for (id, listener) in listeners {
            c.spawn(id, listener, cluster);
        }
        Ok(c)
    }

    fn config(&self, id: u64, cluster: &str) -> Config {
        let mut config = Config {
            id,
            cluster: cluster.into(),
            peers: self.peers.clone(),
            data_dir: self.root.join(format!("node-{id}")),
            api: open_api(),
            // These tests probe Raft and the API over plaintext; the root crate's tests run
            // the metastore over TLS (tests/security.rs checks the certificates' identities).
            allow_plaintext: true,
            ..Config::default()
        };
        (self.tune)(&mut config);
        config
    }

    fn spawn(&mut self, id: u64, listener: tokio::net::TcpListener, cluster: &str) {
        let (stop, stopped) = oneshot::channel();
        let config = self.config(id, cluster);
        let task = tokio::spawn(firetower_metastore::run_tcp(config, listener, async {
            let _ = stopped.await;
        }));
        self.nodes.insert(id, Node { stop, task });
    }

    async fn restart(&mut self, id: u64) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(&self.peers[&id]).await?;
        self.spawn(id, listener, "test");
        Ok(())
    }

    async fn stop(&mut self, id: u64) -> Result<()> {
        let node = self
            .nodes
            .remove(&id)
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        let _ = node.stop.send(());
        timeout(Duration::from_secs(10), node.task)
            .await
            .context("node did not stop")???;
        Ok(())
    }

    async fn client(&self, id: u64) -> Result<MetastoreClient<Channel>> {
        Ok(MetastoreClient::connect(format!("http://{}", self.peers[&id])).await?)
    }

    async fn status(&self, id: u64) -> Result<pb::ClusterStatusReply> {
        Ok(self
            .client(id)
            .await?
            .cluster_status(pb::ClusterStatusRequest {})
            .await?
            .into_inner())
    }

    /// Waits until every running node agrees on one leader; returns it.
    async fn agreed_leader(&self, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for &id in self.nodes.keys() {
                leaders.push(self.status(id).await.ok().and_then(|s| s.leader));
            }
            if let Some(Some(leader)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*leader)) && self.nodes.contains_key(leader) {
                    return Ok(*leader);
                }
            }
            if Instant::now() > deadline {
                bail!("no agreed leader within {within:?}: {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shutdown(mut self) -> Result<()> {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await?;
        }
        Ok(())
    }
}

fn register(kind: pb::MemberKind, id: u64, lease_ttl_ms: u64) -> pb::RegisterRequest {
    pb::RegisterRequest {
        kind: kind as i32,
        id,
        addrs: BTreeMap::from([("grpc".to_string(), format!("127.0.0.1:{}", 6000 + id))]),
        lease_ttl_ms,
        instance: 0,
    }
}

/// Retries a write through `node` until it succeeds or `within` passes (a leader change
/// makes writes UNAVAILABLE for a moment; the caller is expected to retry).
async fn write_with_retry<T, F, Fut>(within: Duration, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(status) => bail!("write failed: {status}"),
        }
    }
}

fn follower_of(leader: u64) -> u64 {
    if leader == 1 {
        2
    } else {
        1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_restart_catch_up() -> Result<()> {
    let mut cluster = Cluster::start("test").await?;
    let leader = cluster.agreed_leader(Duration::from_secs(10)).await?;
    let voters = cluster
        .status(leader)
        .await?
        .voters
        .iter()
        .map(|v| v.id)
        .collect::<Vec<_>>();
    assert_eq!(voters, vec![1, 2, 3]);

    // A write sent to a follower is forwarded to the leader.
    let mut follower = cluster.client(follower_of(leader)).await?;
    let reply = follower
        .register(register(pb::MemberKind::Distributor, 1, 60_000))
        .await?
        .into_inner();
    assert_eq!(reply.revision, 1);
    let map = follower
        .get_slot_map(pb::GetSlotMapRequest { linearizable: true })
        .await?
        .into_inner();
    assert!(
        map.slot_owner.iter().all(|&o| o == 1),
        "linearizable read through a follower sees the write"
    );

    // Kill the leader: a new one is agreed within 2 s and writes continue.
    cluster.stop(leader).await?;
    let stopped_at = Instant::now();
    let new_leader = cluster.agreed_leader(Duration::from_secs(2)).await?;
    let failover = stopped_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(
        failover < Duration::from_secs(2),
        "failover took {failover:?}"
    );
    let survivor = *cluster
        .nodes
        .keys()
        .find(|&&id| id != new_leader)
        .ok_or_else(|| anyhow!("no survivor"))?;
    let mut client = cluster.client(survivor).await?;
    let reply = write_with_retry(Duration::from_secs(2), || {
        let mut c = client.clone();
        async move {
            c.register(register(pb::MemberKind::Distributor, 2, 60_000))
                .await
        }
    })
    .await?
    .into_inner();
    assert_eq!(reply.revision, 2);
    for i in 0..20 {
        let req = pb::SetHotTopicRequest {
            topic: format!("hot-{i}"),
            shards: 4,
            on_behalf_of: String::new(),
        };
        client.set_hot_topic(req).await?;
    }

    // Restart the killed node from its data dir: it catches up and all three agree.
    cluster.restart(leader).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut maps = Vec::new();
        let mut applied = Vec::new();
        for id in 1..=3 {
            if let Ok(mut c) = cluster.client(id).await {
                if let Ok(map) = c
                    .get_slot_map(pb::GetSlotMapRequest {
                        linearizable: false,
                    })
                    .await
                {
                    maps.push(map.into_inner());
                }
            }
            applied.push(
                cluster
                    .status(id)
                    .await
                    .map(|s| s.last_applied)
                    .unwrap_or(0),
            );
        }
        let same = maps.len() == 3
            && maps.iter().all(|m| *m == maps[0])
            && applied.iter().all(|a| *a == applied[0]);
        if same {
            assert_eq!(maps[0].revision, 22);
            assert_eq!(maps[0].hot_topics.len(), 20);
            let owners: std::collections::BTreeSet<u64> =
                maps[0].slot_owner.iter().copied().collect();
            assert_eq!(owners, [1, 2].into());
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "replicas did not converge: applied {applied:?}, revisions {:?}",
                maps.iter().map(|m| m.revision).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.shutdown().await
}

async fn next_event(
    stream: &mut tonic::Streaming<pb::WatchEvent>,
) -> Result<pb::watch_event::Event> {
    let event = timeout(Duration::from_secs(5), stream.message())
        .await
        .context("watch stalled")??;
    event
        .and_then(|e| e.event)
        .ok_or_else(|| anyhow!("watch stream ended"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_change_in_order_and_resumes() -> Result<()> {
    let cluster = Cluster::start("test").await?;
    let leader = cluster.agreed_leader(Duration::from_secs(10)).await?;
    let mut writer = cluster.client(leader).await?;
    let mut watcher = cluster.client(follower_of(leader)).await?;

    let mut stream = watcher
        .watch(pb::WatchRequest { from_revision: 0 })
        .await?
        .into_inner();
    let pb::watch_event::Event::Snapshot(snapshot) = next_event(&mut stream).await? else {
        bail!("a watch from revision 0 starts with a snapshot");
    };
    assert_eq!(snapshot.revision, 0);
    assert_eq!(snapshot.slot_owner.len(), firetower_proto::SLOT_COUNT);

    writer
        .register(register(pb::MemberKind::Edge, 7, 60_000))
        .await?;
    for i in 0..10u32 {
        let req = pb::UpdateInterestRequest {
            edge_id: 7,
            add_slots: vec![i, i + 100],
            remove_slots: vec![],
        };
        writer.update_interest(req).await?;
    }
    writer
        .set_hot_topic(pb::SetHotTopicRequest {
            topic: "live".into(),
            shards: 8,
            on_behalf_of: String::new(),
        })
        .await?;

    let mut seen = Vec::new();
    while seen.len() < 12 {
        match next_event(&mut stream).await? {
            pb::watch_event::Event::Delta(delta) => seen.push(delta),
            pb::watch_event::Event::Snapshot(_) => bail!("unexpected snapshot mid-stream"),
        }
    }
    let revisions: Vec<u64> = seen.iter().map(|d| d.revision).collect();
    assert_eq!(revisions, (1..=12).collect::<Vec<_>>());
    let pb::change::Change::SlotEdge(first) = seen[1].changes[0]
        .change
        .clone()
        .ok_or_else(|| anyhow!("empty change"))?
    else {
        bail!("revision 2 adds interest");
    };
    assert_eq!((first.slot, first.edge_id, first.present), (0, 7, true));
    let prepared = |shards, prev_shards, since, committed, revision| {
        Some(pb::change::Change::HotTopicSet(pb::HotTopic {
            topic: "live".into(),
            shards,
            prev_shards,
            since,
            committed,
            revision,
        }))
    };
    // Edge 7 is registered, so the split is only prepared.
    assert_eq!(seen[11].changes[0].change, prepared(8, 0, 12, false, 12));
    drop(stream);

    // Changes made while disconnected arrive after a reconnect from the last seen revision,
    // here through another node. The ack goes through a follower, which forwards it.
    let acked = watcher
        .ack_hot_topic(pb::AckHotTopicRequest {
            edge_id: 7,
            topic: "live".into(),
            since: 12,
        })
        .await?
        .into_inner();
    assert_eq!(acked.revision, 13, "the only edge acked: committed");
    writer
        .clear_hot_topic(pb::ClearHotTopicRequest {
            topic: "live".into(),
        })
        .await?;
    writer
        .deregister(pb::DeregisterRequest {
            kind: pb::MemberKind::Edge as i32,
            id: 7,
            drain: false,
        })
        .await?;
    let mut again = cluster
        .client(leader)
        .await?
        .watch(pb::WatchRequest { from_revision: 12 })
        .await?
        .into_inner();
    let mut deltas = Vec::new();
    for expected in 13..=15 {
        let pb::watch_event::Event::Delta(d) = next_event(&mut again).await? else {
            bail!("expected delta {expected}")
        };
        assert_eq!(d.revision, expected);
        deltas.push(d);
    }
    assert_eq!(deltas[0].changes.len(), 1);
    assert_eq!(
        deltas[0].changes[0].change,
        prepared(8, 0, 12, true, deltas[0].revision)
    );
    // A clear (a merge) is a change to 1 shard, the topic's one sub-topic `T#0`, prepared
    // while edge 7 has not joined it.
    assert_eq!(deltas[1].changes.len(), 1);
    assert_eq!(deltas[1].changes[0].change, prepared(1, 8, 14, false, 14));
    // Deregistering the edge: member down, its 20 slots of interest go, and the clear it
    // held back commits.
    assert_eq!(deltas[2].changes.len(), 22);
    assert_eq!(
        deltas[2].changes[21].change,
        prepared(1, 8, 14, true, deltas[2].revision)
    );
    let map = writer
        .get_slot_map(pb::GetSlotMapRequest { linearizable: true })
        .await?
        .into_inner();
    assert_eq!(
        map.hot_topics,
        vec![pb::HotTopic {
            topic: "live".into(),
            shards: 1,
            prev_shards: 8,
            since: 14,
            committed: true,
            revision: map.revision,
        }]
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_members_expire_and_their_slots_move() -> Result<()> {
    let cluster = Cluster::start("test").await?;
    let leader = cluster.agreed_leader(Duration::from_secs(10)).await?;
    let mut client = cluster.client(follower_of(leader)).await?;
    let one = client
        .register(register(pb::MemberKind::Distributor, 1, 60_000))
        .await?
        .into_inner();
    client
        .register(register(pb::MemberKind::Distributor, 2, 600))
        .await?;
    let status = cluster.status(leader).await?;
    assert_eq!(
        status
            .slots_per_distributor
            .iter()
            .map(|d| d.slots)
            .collect::<Vec<_>>(),
        vec![8192, 8192]
    );

    // Distributor 2 never heartbeats: its lease runs out and distributor 1 takes every slot.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        client
            .heartbeat(pb::HeartbeatRequest {
                kind: 1,
                id: 1,
                incarnation: one.incarnation,
            })
            .await?;
        let status = cluster.status(leader).await?;
        if status.members.len() == 1 {
            assert_eq!(
                status.slots_per_distributor,
                vec![pb::DistributorSlots {
                    distributor_id: 1,
                    slots: 16384
                }]
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("distributor 2 did not expire: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A heartbeat for the expired registration is told to register again.
    let err = client
        .heartbeat(pb::HeartbeatRequest {
            kind: 1,
            id: 2,
            incarnation: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_name_the_field_and_the_node_keeps_serving() -> Result<()> {
    let cluster = Cluster::start("test").await?;
    let leader = cluster.agreed_leader(Duration::from_secs(10)).await?;
    let mut c = cluster.client(follower_of(leader)).await?;
    let cases: Vec<(&str, tonic::Status)> = vec![
        (
            "kind",
            c.register(pb::RegisterRequest {
                kind: 0,
                ..register(pb::MemberKind::Edge, 1, 1000)
            })
            .await
            .unwrap_err(),
        ),
        (
            "id",
            c.register(register(pb::MemberKind::Edge, 0, 1000))
                .await
                .unwrap_err(),
        ),
        (
            "lease_ttl_ms",
            c.register(register(pb::MemberKind::Edge, 1, 0))
                .await
                .unwrap_err(),
        ),
        (
            "add_slots",
            c.update_interest(pb::UpdateInterestRequest {
                edge_id: 1,
                add_slots: vec![16384],
                remove_slots: vec![],
            })
            .await
            .unwrap_err(),
        ),
        (
            "topic",
            c.set_hot_topic(pb::SetHotTopicRequest {
                topic: "a,b".into(),
                shards: 4,
                on_behalf_of: String::new(),
            })
            .await
            .unwrap_err(),
        ),
        (
            "topic",
            c.clear_hot_topic(pb::ClearHotTopicRequest {
                topic: String::new(),
            })
            .await
            .unwrap_err(),
        ),
        (
            "edge_id",
            c.ack_hot_topic(pb::AckHotTopicRequest {
                edge_id: 0,
                topic: "ok".into(),
                since: 1,
            })
            .await
            .unwrap_err(),
        ),
        (
            "topic",
            c.ack_hot_topic(pb::AckHotTopicRequest {
                edge_id: 1,
                topic: "a#1".into(),
                since: 1,
            })
            .await
            .unwrap_err(),
        ),
        (
            "shards",
            c.set_hot_topic(pb::SetHotTopicRequest {
                topic: "ok".into(),
                shards: 1,
                on_behalf_of: String::new(),
            })
            .await
            .unwrap_err(),
        ),
        (
            "kind",
            c.heartbeat(pb::HeartbeatRequest {
                kind: 9,
                id: 1,
                incarnation: 1,
            })
            .await
            .unwrap_err(),
        ),
    ];
    for (field, status) in cases {
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status}");
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{field}: {status}"
        );
    }
    // Interest of an edge that is not registered is NOT_FOUND, not a crash.
    let err = c
        .update_interest(pb::UpdateInterestRequest {
            edge_id: 9,
            add_slots: vec![1],
            remove_slots: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    // So is an ack of an edge that is not registered.
    let err = c
        .ack_hot_topic(pb::AckHotTopicRequest {
            edge_id: 9,
            topic: "t".into(),
            since: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    // Still serving.
    let reply = c
        .register(register(pb::MemberKind::Edge, 1, 1000))
        .await?
        .into_inner();
    assert_eq!(reply.revision, 1);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_cluster_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let config = Config {
        id: 1,
        cluster: "alpha".into(),
        peers: BTreeMap::from([(1, addr.clone())]),
        data_dir: dir.path().join("node"),
        api: open_api(),
        allow_plaintext: true,
        ..Config::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let node = tokio::spawn(firetower_metastore::run_tcp(
        config.clone(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    // A one-node cluster initializes itself and can take writes.
    let client = MetastoreClient::connect(format!("http://{addr}")).await?;
    write_with_retry(Duration::from_secs(10), || {
        let mut c = client.clone();
        async move {
            c.set_hot_topic(pb::SetHotTopicRequest {
                topic: "t".into(),
                shards: 2,
                on_behalf_of: String::new(),
            })
            .await
        }
    })
    .await?;
    let _ = stop.send(());
    node.await??;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let other = Config {
        cluster: "beta".into(),
        ..config
    };
    let err = firetower_metastore::run_tcp(other, listener, std::future::pending())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, NodeError::ForeignDataDir { .. }), "{message}");
    assert!(
        message.contains("\"alpha\"") && message.contains("\"beta\""),
        "{message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_bounds_answer_resource_exhausted() -> Result<()> {
    let cluster = Cluster::start_tuned("test", |c| {
        c.max_members = 1;
        c.max_hot_topics = 1;
        c.max_watchers = 1;
    })
    .await?;
    let leader = cluster.agreed_leader(Duration::from_secs(10)).await?;
    let mut c = cluster.client(follower_of(leader)).await?;
    c.register(register(pb::MemberKind::Edge, 1, 60_000))
        .await?;
    // Re-registering a known member is fine; a second member is not.
    c.register(register(pb::MemberKind::Edge, 1, 60_000))
        .await?;
    let err = c
        .register(register(pb::MemberKind::Edge, 2, 60_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    c.set_hot_topic(pb::SetHotTopicRequest {
        topic: "a".into(),
        shards: 2,
        on_behalf_of: String::new(),
    })
    .await?;
    let err = c
        .set_hot_topic(pb::SetHotTopicRequest {
            topic: "b".into(),
            shards: 2,
            on_behalf_of: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    let _first = c
        .watch(pb::WatchRequest { from_revision: 0 })
        .await?
        .into_inner();
    let err = c
        .watch(pb::WatchRequest { from_revision: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    cluster.shutdown().await
}

/// Regression: `run` returned while tasks it had started still held the sled database
/// (openraft's state-machine worker and replication streams end only after `Raft::shutdown`
/// has returned), and sled itself lets go of its lock a moment after its last handle drops,
/// so reopening the data dir right after a stop failed with `could not acquire lock …
/// WouldBlock`. Here every node is stopped in turn, under writes, snapshots and an open
/// watch stream, and its data dir is reopened at once: twenty times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_has_released_its_data_dir() -> Result<()> {
    let mut cluster = Cluster::start_tuned("test", |c| {
        // Snapshots (built in a task of their own, holding the state machine) every few
        // writes, so that some are under way when a node stops.
        c.snapshot_every = 8;
    })
    .await?;
    let leader = cluster.agreed_leader(Duration::from_secs(10)).await?;
    cluster
        .client(leader)
        .await?
        .register(register(pb::MemberKind::Edge, 1, 60_000))
        .await?;

    // Writes through every node for the whole test, failing while their node is down.
    let (done, mut finished) = oneshot::channel::<()>();
    let clients = cluster
        .peers
        .values()
        .map(|addr| {
            Ok(MetastoreClient::new(
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .timeout(Duration::from_secs(2))
                    .connect_lazy(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let writer = tokio::spawn(async move {
        let mut written = 0u32;
        for n in 0u32.. {
            let mut client = clients[n as usize % clients.len()].clone();
            let slot = n % 64;
            let (add_slots, remove_slots) = if (n / 64) % 2 == 0 {
                (vec![slot], vec![])
            } else {
                (vec![], vec![slot])
            };
            let request = pb::UpdateInterestRequest {
                edge_id: 1,
                add_slots,
                remove_slots,
            };
            tokio::select! {
                _ = &mut finished => break,
                reply = client.update_interest(request) => match reply {
                    Ok(_) => written += 1,
                    // Its node is down, or there is no leader for a moment.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
            }
        }
        written
    });

    for round in 0..20u64 {
        let id = round % 3 + 1;
        // A watch stream a client keeps open on the node that stops.
        let mut watch = cluster
            .client(id)
            .await?
            .watch(pb::WatchRequest { from_revision: 0 })
            .await?
            .into_inner();
        next_event(&mut watch).await?;

        cluster.stop(id).await?;
        let dir = cluster.root.join(format!("node-{id}"));
        match SledBackend::open(&dir) {
            Ok(store) => drop(store),
            Err(e) => bail!("round {round}: node {id} stopped but its data dir is still held: {e}"),
        }
        // The stream ended with its node: it does not outlive `run`.
        let ended = timeout(Duration::from_secs(5), async {
            while let Ok(Some(_)) = watch.message().await {}
        })
        .await;
        if ended.is_err() {
            bail!("round {round}: the watch stream outlived node {id}");
        }
        cluster.restart(id).await?;
        cluster.agreed_leader(Duration::from_secs(10)).await?;
    }

    let _ = done.send(());
    let written = writer.await?;
    assert!(written > 0, "no write went through");
    cluster.shutdown().await
}

/// A client that stops reading its watch stream cannot hold a stopping node: once the
/// stream's HTTP/2 window is full, the server cannot finish it, so after `rpc_timeout` the
/// node cuts the connection, and `run` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_a_stopping_node() -> Result<()> {
    let mut cluster = Cluster::start_tuned("test", |c| {
        c.rpc_timeout = Duration::from_millis(500);
    })
    .await?;
    let leader = cluster.agreed_leader(Duration::from_secs(10)).await?;
    let mut writer = cluster.client(leader).await?;
    writer
        .register(register(pb::MemberKind::Edge, 1, 60_000))
        .await?;
    // Three deltas of 16384 changes each: several hundred kB, far over the window below.
    let every_slot: Vec<u32> = (0..firetower_proto::SLOT_COUNT as u32).collect();
    for add in [true, false, true] {
        let (add_slots, remove_slots) = if add {
            (every_slot.clone(), vec![])
        } else {
            (vec![], every_slot.clone())
        };
        writer
            .update_interest(pb::UpdateInterestRequest {
                edge_id: 1,
                add_slots,
                remove_slots,
            })
            .await?;
    }
    let id = follower_of(leader);
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.peers[&id]))?
            .initial_stream_window_size(Some(65_535))
            .initial_connection_window_size(Some(65_535))
            .connect()
            .await?;
    let _unread = MetastoreClient::new(channel)
        .watch(pb::WatchRequest { from_revision: 1 })
        .await?
        .into_inner();
    // Let the server fill the window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    cluster.stop(id).await?;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the stop took {took:?}");
    SledBackend::open(&cluster.root.join(format!("node-{id}")))?;
    cluster.shutdown().await
}

/// A write waiting for a quorum that is gone cannot hold a stopping node: after
/// `rpc_timeout` Raft shuts down under it, the write fails, and `run` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_a_quorum_does_not_hold_a_stopping_node() -> Result<()> {
    let mut cluster = Cluster::start_tuned("test", |c| {
        c.rpc_timeout = Duration::from_millis(500);
    })
    .await?;
    let leader = cluster.agreed_leader(Duration::from_secs(10)).await?;
    let mut client = cluster.client(leader).await?;
    let followers: Vec<u64> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|&id| id != leader)
        .collect();
    for id in followers {
        cluster.stop(id).await?;
    }
    let write = tokio::spawn(async move {
        client
            .register(register(pb::MemberKind::Distributor, 1, 60_000))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !write.is_finished(),
        "a write without a quorum went through"
    );
    let started = Instant::now();
    cluster.stop(leader).await?;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the stop took {took:?}");
    let status = timeout(Duration::from_secs(5), write)
        .await
        .context("the write outlived its node")??
        .unwrap_err();
    // Raft's shutdown fails the write (UNAVAILABLE), unless the stopping node cut the
    // connection first (the client then sees the transport error, UNKNOWN): either way the
    // write failed and did not hold the node.
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown),
        "{status}"
    );
    Ok(())
}

/// A Raft RPC as an outsider would send it: any `from`, any payload.
async fn forged_raft_call(
    addr: &str,
    method: &str,
    from: u64,
    payload: serde_json::Value,
) -> Result<std::result::Result<(), tonic::Status>> {
    use firetower_proto::raft::v1 as raft_pb;
    use firetower_proto::raft::v1::raft_transport_client::RaftTransportClient;
    let mut client = RaftTransportClient::connect(format!("http://{addr}")).await?;
    let request = raft_pb::RaftRequest {
        cluster: "test".into(),
        from,
        payload: serde_json::to_vec(&payload)?.into(),
    };
    Ok(match method {
        "append_entries" => client.append_entries(request).await.map(|_| ()),
        "vote" => client.vote(request).await.map(|_| ()),
        _ => client.install_snapshot(request).await.map(|_| ()),
    })
}

/// The issue-15 probes: a forged AppendEntries from a made-up node unseated the leader, and
/// one with term u64::MAX panicked every node's Raft core for good. Each is now refused
/// with the field named, and the cluster keeps its leader and its writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_rpcs_are_refused_and_the_leader_stays() -> Result<()> {
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use openraft::{CommittedLeaderId, LogId, Vote};
    let cluster = Cluster::start("test").await?;
    let leader = cluster.agreed_leader(Duration::from_secs(10)).await?;
    let follower = follower_of(leader);
    let addr = cluster.peers[&follower].clone();
    let append = |term: u64, node: u64, index: u64| {
        serde_json::to_value(
            AppendEntriesRequest::<firetower_metastore::types::TypeConfig> {
                vote: Vote::new_committed(term, node),
                prev_log_id: Some(LogId::new(CommittedLeaderId::new(1, node), index)),
                entries: vec![],
                leader_commit: None,
            },
        )
    };
    let cases: Vec<(&str, &str, u64, serde_json::Value, Code, &str)> = vec![
        // A made-up node 9.
        (
            "append_entries",
            "9 term 1",
            9,
            append(1, 9, 0)?,
            Code::PermissionDenied,
            "from",
        ),
        // The node itself.
        (
            "append_entries",
            "self",
            follower,
            append(1, follower, 0)?,
            Code::PermissionDenied,
            "from",
        ),
        // A real voter's id, voting for someone else.
        (
            "append_entries",
            "vote for 9",
            leader,
            append(1, 9, 0)?,
            Code::InvalidArgument,
            "vote",
        ),
        // The term that overflowed openraft.
        (
            "append_entries",
            "term max",
            leader,
            append(u64::MAX, leader, 0)?,
            Code::InvalidArgument,
            "vote",
        ),
        (
            "append_entries",
            "index max",
            leader,
            append(1, leader, u64::MAX)?,
            Code::InvalidArgument,
            "prev_log_id",
        ),
        (
            "vote",
            "vote term max",
            leader,
            serde_json::to_value(VoteRequest::<u64> {
                vote: Vote::new(u64::MAX, leader),
                last_log_id: None,
            })?,
            Code::InvalidArgument,
            "vote",
        ),
        (
            "vote",
            "vote from 9",
            9,
            serde_json::to_value(VoteRequest::<u64> {
                vote: Vote::new(2, 9),
                last_log_id: None,
            })?,
            Code::PermissionDenied,
            "from",
        ),
    ];
    for (method, what, from, payload, code, field) in cases {
        let status = match forged_raft_call(&addr, method, from, payload).await? {
            Ok(()) => bail!("{what}: the forged {method} was accepted"),
            Err(status) => status,
        };
        assert_eq!(status.code(), code, "{what}: {status}");
        assert!(
            status.message().starts_with(field),
            "{what}: the message should name {field}: {}",
            status.message()
        );
    }
    // Nothing moved: the same leader, and a write goes through.
    assert_eq!(cluster.agreed_leader(Duration::from_secs(5)).await?, leader);
    let c = cluster.client(follower).await?;
    write_with_retry(Duration::from_secs(5), || {
        let mut c = c.clone();
        async move { c.register(register(pb::MemberKind::Edge, 1, 5000)).await }
    })
    .await?;
    assert_eq!(cluster.agreed_leader(Duration::from_secs(5)).await?, leader);
    cluster.shutdown().await
}

/// Every test cluster above takes calls without keys; this one is configured as a real
/// deployment is.
fn open_api() -> firetower_net::api_auth::ApiAuthConfig {
    firetower_net::api_auth::ApiAuthConfig {
        allow_unauthenticated: true,
        ..Default::default()
    }
}

const MEMBER_KEY: &str = "ftk_cluster_test_member";
const ADMIN_KEY: &str = "ftk_cluster_test_admin";

fn member_key_file() -> PathBuf {
    std::env::temp_dir().join(format!("firetower-cluster-test-{}.key", std::process::id()))
}

fn keyed(key: &str) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    Ok(format!("Bearer {key}").parse()?)
}

/// The issue-15 probe of the metastore API: anyone who reached the port could Register as
/// a distributor (and take a third of the slots), or split topics. With keys configured,
/// a call without one is refused, an `admin` key may read and split but not register, and
/// the nodes reach each other (Raft, forwarded writes) with their `member` key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_keys_answers_only_callers_that_have_one() -> Result<()> {
    use firetower_net::api_auth::{hash_key, ApiKeyEntry, Scope};
    std::fs::write(member_key_file(), MEMBER_KEY)?;
    let cluster = Cluster::start_tuned("test", |c| {
        c.api = firetower_net::api_auth::ApiAuthConfig {
            allow_unauthenticated: false,
            keys: vec![
                ApiKeyEntry {
                    name: "cluster".into(),
                    sha256: hash_key(MEMBER_KEY),
                    scopes: vec![Scope::Member],
                },
                ApiKeyEntry {
                    name: "ops".into(),
                    sha256: hash_key(ADMIN_KEY),
                    scopes: vec![Scope::Admin],
                },
            ],
            member_key_file: Some(member_key_file()),
        };
        c.max_watchers_per_caller = 1;
        c.max_hot_topics_per_caller = 1;
    })
    .await?;
    let with = |key: &'static str, node: u64| {
        let addr = format!("http://{}", cluster.peers[&node]);
        async move {
            let channel = tonic::transport::Endpoint::from_shared(addr)?
                .connect()
                .await?;
            let value = keyed(key)?;
            Ok::<_, anyhow::Error>(MetastoreClient::with_interceptor(
                channel,
                move |mut r: tonic::Request<()>| {
                    r.metadata_mut().insert("authorization", value.clone());
                    Ok(r)
                },
            ))
        }
    };
    // The nodes elect a leader among themselves: Raft calls carry the member key.
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let mut admin = with(ADMIN_KEY, 1).await?;
        if let Ok(s) = admin.cluster_status(pb::ClusterStatusRequest {}).await {
            if let Some(leader) = s.into_inner().leader {
                break leader;
            }
        }
        if Instant::now() > deadline {
            bail!("no leader within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let follower = follower_of(leader);
    // No key: refused, whatever the call.
    let mut anonymous = cluster.client(follower).await?;
    let err = anonymous
        .register(register(pb::MemberKind::Distributor, 9, 60_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.message().contains("missing API key"), "{err}");
    let err = anonymous
        .set_hot_topic(pb::SetHotTopicRequest {
            topic: "t".into(),
            shards: 2,
            on_behalf_of: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let forged = forged_raft_call(
        &cluster.peers[&follower],
        "vote",
        leader,
        serde_json::json!({}),
    )
    .await?
    .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated, "{forged}");
    // An admin key reads and splits, but is no member.
    let mut admin = with(ADMIN_KEY, follower).await?;
    let err = admin
        .register(register(pb::MemberKind::Distributor, 9, 60_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("lacks the member scope"), "{err}");
    write_with_retry(Duration::from_secs(10), || {
        let mut a = admin.clone();
        async move {
            a.set_hot_topic(pb::SetHotTopicRequest {
                topic: "t".into(),
                shards: 2,
                on_behalf_of: String::new(),
            })
            .await
        }
    })
    .await?;
    // A member registers through a follower: the write is forwarded with its key.
    let member = with(MEMBER_KEY, follower).await?;
    write_with_retry(Duration::from_secs(10), || {
        let mut m = member.clone();
        async move {
            m.register(register(pb::MemberKind::Distributor, 9, 60_000))
                .await
        }
    })
    .await?;
    // Hot topics are bounded per caller (here 1): the admin key made "t" (through a
    // follower, which forwarded it on the key's behalf); its next is refused, changing "t"
    // again is not a new one, and another caller still makes one.
    let err = admin
        .set_hot_topic(pb::SetHotTopicRequest {
            topic: "t2".into(),
            shards: 2,
            on_behalf_of: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("key ops made 1 hot topics"), "{err}");
    write_with_retry(Duration::from_secs(10), || {
        let mut m = member.clone();
        async move {
            m.set_hot_topic(pb::SetHotTopicRequest {
                topic: "t3".into(),
                shards: 2,
                on_behalf_of: String::new(),
            })
            .await
        }
    })
    .await?;
    // Watch streams are bounded per caller (here 1): the admin key's second is refused,
    // the member key (another caller) still gets one.
    let _first = admin
        .watch(pb::WatchRequest { from_revision: 0 })
        .await?
        .into_inner();
    let err = admin
        .watch(pb::WatchRequest { from_revision: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("key ops holds 1"), "{err}");
    let _other = member
        .clone()
        .watch(pb::WatchRequest { from_revision: 0 })
        .await?
        .into_inner();
    let _ = std::fs::remove_file(member_key_file());
    cluster.shutdown().await
}
