//! `firetower status`: what the metastore cluster looks like from outside.

use std::collections::BTreeMap;
use std::time::Duration;

use firetower_net::{ApiKey, KeyedChannel};
use firetower_proto::metastore::v1 as pb;
use firetower_proto::metastore::v1::metastore_client::MetastoreClient;
use serde_json::json;

use crate::cli::Failure;

/// How long one status call may take before the node counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What a CLI caller presents: an API key, and TLS (trusting the cluster's CA) unless the
/// cluster serves plaintext.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub key: ApiKey,
    pub tls: Option<firetower_net::ClientTls>,
}

impl Access {
    /// A channel to the node of `role` at `addr` (connects on first use).
    pub fn channel(
        &self,
        addr: &str,
        role: firetower_net::Role,
    ) -> Result<tonic::transport::Channel, String> {
        let connector = firetower_net::TcpConnector {
            connect_timeout: CALL_TIMEOUT,
            request_timeout: Some(CALL_TIMEOUT),
            tls: self.tls.clone(),
        };
        firetower_net::Connector::channel(&connector, addr, role)
    }
}

/// A client of the metastore node at `addr`, presenting `access.key` (an `admin` or
/// `member` key of the metastore's).
pub fn connect(addr: &str, access: &Access) -> Result<MetastoreClient<KeyedChannel>, String> {
    let channel = access.channel(addr, firetower_net::Role::Metastore)?;
    // A full SlotMap with many edges can exceed tonic's 4 MiB default.
    Ok(
        MetastoreClient::with_interceptor(channel, access.key.clone())
            .max_decoding_message_size(64 << 20),
    )
}

/// The hot-topic table as `addr` has applied it (`None`: the node did not answer). Not a
/// linearizable read: status shows one node's view, the same node as the rest.
async fn hot_topics(addr: &str, access: &Access) -> Option<Vec<pb::HotTopic>> {
    let mut client = connect(addr, access).ok()?;
    client
        .get_slot_map(pb::GetSlotMapRequest {
            linearizable: false,
        })
        .await
        .ok()
        .map(|r| r.into_inner().hot_topics)
}

/// One line for a hot topic: its route and where its last change stands.
pub fn describe_hot_topic(h: &pb::HotTopic) -> String {
    let state = match (h.committed, h.shards) {
        (false, _) => "prepared (publishers use both routes until every edge acks)",
        (true, 0) => "committed (plain topic)",
        (true, 1) => "committed (merged: carried by #0)",
        (true, _) => "committed",
    };
    format!(
        "{}  shards {}  prev {}  since {}  {state}",
        h.topic, h.shards, h.prev_shards, h.since
    )
}

/// A node's status, or why it gave none.
async fn query(addr: &str, access: &Access) -> Result<pb::ClusterStatusReply, String> {
    let mut client = connect(addr, access).map_err(|e| format!("{addr}: unreachable: {e}"))?;
    client
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|status| format!("{addr}: {:?}: {}", status.code(), status.message()))
}

fn kind_name(kind: i32) -> &'static str {
    match pb::MemberKind::try_from(kind) {
        Ok(pb::MemberKind::Distributor) => "distributor",
        Ok(pb::MemberKind::Edge) => "edge",
        _ => "unknown",
    }
}

pub async fn run(addrs: &[String], as_json: bool, access: &Access) -> Result<(), Failure> {
    let mut replies: BTreeMap<String, Option<pb::ClusterStatusReply>> = BTreeMap::new();
    let mut refusals = Vec::new();
    for addr in addrs {
        let reply = query(addr, access).await;
        if let Err(why) = &reply {
            refusals.push(why.clone());
        }
        replies.insert(addr.clone(), reply.ok());
    }
    // Prefer the leader's own view; otherwise any node's.
    let answered = || {
        replies
            .iter()
            .filter_map(|(addr, reply)| reply.as_ref().map(|r| (addr, r)))
    };
    let (view_addr, view) = answered()
        .find(|(_, r)| r.leader == Some(r.node_id))
        .or_else(|| answered().next())
        .map(|(addr, r)| (addr.clone(), r.clone()))
        .ok_or_else(|| {
            Failure::Unavailable(format!(
                "no metastore node answered at {}: {}",
                addrs.join(","),
                refusals.join("; ")
            ))
        })?;
    // Empty when the node stopped answering in between: the rest is still worth showing.
    let hot = hot_topics(&view_addr, access).await.unwrap_or_default();
    let mut nodes = Vec::new();
    for voter in &view.voters {
        let reply = match replies.get(&voter.addr) {
            Some(reply) => reply.clone(),
            None => query(&voter.addr, access).await.ok(),
        };
        nodes.push((voter.id, voter.addr.clone(), reply));
    }

    if as_json {
        let out = json!({
            "leader": view.leader,
            "term": view.term,
            "voters": view.voters.iter().map(|v| v.id).collect::<Vec<_>>(),
            "nodes": nodes.iter().map(|(id, addr, reply)| json!({
                "id": id,
                "addr": addr,
                "reachable": reply.is_some(),
                "last_applied": reply.as_ref().map(|r| r.last_applied),
            })).collect::<Vec<_>>(),
            "revision": view.revision,
            "members": view.members.iter().map(|m| json!({
                "kind": kind_name(m.kind),
                "id": m.id,
                "addrs": m.addrs,
                "lease_ttl_ms": m.lease_ttl_ms,
                "incarnation": m.incarnation,
            })).collect::<Vec<_>>(),
            "slots_per_distributor": view.slots_per_distributor.iter()
                .map(|d| (d.distributor_id.to_string(), d.slots)).collect::<BTreeMap<_, _>>(),
            "unowned_slots": view.unowned_slots,
            "hot_topics": hot.iter().map(|h| json!({
                "topic": h.topic,
                "shards": h.shards,
                "prev_shards": h.prev_shards,
                "since": h.since,
                "committed": h.committed,
            })).collect::<Vec<_>>(),
        });
        println!("{out:#}");
        return Ok(());
    }
    let leader = view.leader.map_or("none".to_string(), |l| l.to_string());
    println!(
        "cluster {:?}  leader {leader}  term {}  revision {}",
        view.cluster, view.term, view.revision
    );
    println!("nodes:");
    for (id, addr, reply) in &nodes {
        match reply {
            Some(r) => println!(
                "  {id}  {addr}  {:<9}  last_applied {}",
                r.state, r.last_applied
            ),
            None => println!("  {id}  {addr}  unreachable"),
        }
    }
    println!("members:");
    for m in &view.members {
        let addrs: Vec<String> = m.addrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "  {} {}  {}  lease {} ms",
            kind_name(m.kind),
            m.id,
            addrs.join(" "),
            m.lease_ttl_ms
        );
    }
    println!("slots per distributor:");
    for d in &view.slots_per_distributor {
        println!("  {}  {}", d.distributor_id, d.slots);
    }
    println!("  unowned  {}", view.unowned_slots);
    println!("hot topics:");
    for h in &hot {
        println!("  {}", describe_hot_topic(h));
    }
    Ok(())
}
