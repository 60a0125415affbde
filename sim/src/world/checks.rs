//! Checks and observations: what the driver asks the cluster through its own APIs. The
//! ownership watch (checked after every routing event), the checks at the end of each
//! quiet phase (metastore convergence, ownership, completeness of the window, TopicStatus),
//! and which node leads the metastore (for the fault schedule's leader kills). Kept apart
//! from the workload: these only read the cluster and judge it, they drive nothing.

use std::rc::Rc;
use std::time::Duration;

use firetower_net::Connector;
use firetower_proto::distributor::v1 as dpb;
use firetower_proto::metastore::v1 as pb;
use tokio::sync::mpsc;

use super::{now, Ctx};
use crate::invariants;
use crate::net::SimConnector;

/// Follows the metastore's watch stream (as distributors and edges do) and checks the
/// ownership invariant after every event, not only at the end of quiet phases.
pub(super) async fn watch_ownership(ctx: Rc<Ctx>) {
    let client =
        firetower_net::MetaClient::new(ctx.metas.clone(), SimConnector, Duration::from_millis(500));
    let (tx, mut rx) = mpsc::channel(64);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let _task = firetower_net::spawn_watch(client, tx, stop_rx);
    let mut table = firetower_proto::routing::RoutingTable::default();
    while let Some(event) = rx.recv().await {
        let before = table.hot_routes().clone();
        table.apply(event);
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        invariants::ownership::check_table(&mut o, at, &table);
        // Trace every hot-topic route change (the distributors propose merges of idle
        // split topics on their own, which no driver call shows).
        for (topic, route) in table.hot_routes() {
            if before.get(topic) != Some(route) {
                let state = if route.committed {
                    "committed"
                } else {
                    "prepared"
                };
                o.trace(
                    at,
                    &format!(
                        "watch: hot {topic} {} -> {} shards {state} (since {}, revision {})",
                        route.prev_shards, route.shards, route.since, route.revision
                    ),
                );
                ctx.hot.borrow_mut().insert(topic.clone(), route.shards);
                o.hot_changed(at, topic);
            }
        }
    }
}

/// Asks the metastore nodes, in order, who leads; the first that names a leader sets
/// `ctx.leader`.
pub(super) async fn track_leader(ctx: &Ctx) {
    for addr in &ctx.metas {
        let Ok(channel) = SimConnector.channel(addr, firetower_net::Role::Metastore) else {
            continue;
        };
        let mut client = pb::metastore_client::MetastoreClient::new(channel);
        if let Ok(Ok(status)) = tokio::time::timeout(
            Duration::from_millis(300),
            client.cluster_status(pb::ClusterStatusRequest {}),
        )
        .await
        {
            if let Some(leader) = status.into_inner().leader {
                ctx.leader.set(Some(leader));
                return;
            }
        }
    }
}

/// The checks at the end of a quiet phase: the phase started at `window.0` (its settle
/// part) and its window is `window.1`.
pub(super) async fn check_quiet(ctx: &Ctx, window: Option<(Duration, (Duration, Duration))>) {
    // Metastore replicas agree (give them a moment), and ownership holds.
    let mut maps = Vec::new();
    for _ in 0..10 {
        maps = Vec::new();
        for addr in &ctx.metas {
            maps.push(slot_map(addr).await);
        }
        if invariants::convergence::agreed(&maps) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    {
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        invariants::convergence::check(&mut o, at, &maps);
        for (i, map) in maps.iter().enumerate() {
            if let Some(map) = map {
                invariants::ownership::check(&mut o, at, i + 1, map);
            }
        }
        if let Some((phase_start, (a, b))) = window {
            let covered = invariants::completeness::check(&mut o, a, b, at);
            o.trace(
                at,
                &format!(
                    "window {a:?}..{b:?}: {} gRPC and {} client publishes had to arrive, {} deliveries checked",
                    covered.grpc, covered.client, covered.pairs
                ),
            );
            invariants::progress::check(&mut o, phase_start, (a, b), covered, at);
        }
        o.trace(
            at,
            &format!(
                "checked quiet phase (revision {:?})",
                maps.first().and_then(|m| m.as_ref().map(|m| m.revision))
            ),
        );
    }
    // TopicStatus converges to what the clients were told.
    let truth = invariants::topic_status::truth(&ctx.oracle.borrow(), &ctx.topics);
    for (topic, expected) in truth {
        let mut reported = None;
        for _ in 0..10 {
            reported = topic_status(ctx, &topic).await;
            if reported == Some(expected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut o = ctx.oracle.borrow_mut();
        let at = now();
        invariants::topic_status::check(&mut o, at, &topic, expected, reported);
    }
}

async fn slot_map(addr: &str) -> Option<pb::SlotMap> {
    let channel = SimConnector
        .channel(addr, firetower_net::Role::Metastore)
        .ok()?;
    let mut client =
        pb::metastore_client::MetastoreClient::new(channel).max_decoding_message_size(64 << 20);
    tokio::time::timeout(
        Duration::from_millis(500),
        client.get_slot_map(pb::GetSlotMapRequest {
            linearizable: false,
        }),
    )
    .await
    .ok()?
    .ok()
    .map(|r| r.into_inner())
}

async fn topic_status(ctx: &Ctx, topic: &str) -> Option<u64> {
    for addr in &ctx.dists {
        let Ok(channel) = SimConnector.channel(addr, firetower_net::Role::Distributor) else {
            continue;
        };
        let mut client = dpb::distributor_client::DistributorClient::new(channel);
        let request = dpb::TopicStatusRequest {
            topic: topic.to_string(),
            owner_only: false,
        };
        if let Ok(Ok(reply)) =
            tokio::time::timeout(Duration::from_millis(300), client.topic_status(request)).await
        {
            return Some(reply.into_inner().subscribers);
        }
    }
    None
}
