//! The trust boundary on real sockets (docs/security.md): what an outsider tries against a
//! cluster whose edges check client tokens, each refused with a clear answer while the
//! clients that hold a valid token keep working.

mod common;

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use common::{Client, Cluster, EdgeTuning, Frame};
use firetower_edge::auth::mint_hs256;
use firetower_edge::{AuthConfig, Claims};
use firetower_proto::distributor::v1 as dpb;

const READY: Duration = Duration::from_secs(30);
const SECRET: &[u8] = b"a test secret of more than thirty-two bytes";

fn token(sub: &str, ttl_secs: i64, subscribe: &[&str], publish: &[&str]) -> String {
    let now = firetower_edge::auth::unix_now() as i64;
    let claims = Claims {
        sub: sub.into(),
        exp: (now + ttl_secs).max(0) as u64,
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
    };
    mint_hs256(SECRET, &claims).expect("signing with a test key")
}

/// The HTTP status and body of an upgrade the edge refused (raw TCP: the edge answers and
/// closes, so everything up to EOF is the response).
async fn refused(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await??;
    let response = String::from_utf8_lossy(&response).to_string();
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("{path}: no response head in {response:?}");
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 101 {
        bail!("{path}: the upgrade was accepted");
    }
    Ok((status, body.to_string()))
}

async fn secured_cluster() -> Result<(Cluster, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("jwt.key");
    std::fs::write(&key, SECRET)?;
    let cluster = Cluster::start_with(
        1,
        1,
        EdgeTuning {
            auth: AuthConfig {
                allow_anonymous: false,
                jwt_hs256_key_file: Some(key),
                ..AuthConfig::default()
            },
            probe_token: Some(token("probe", 600, &["probe-*"], &[])),
            ..EdgeTuning::default()
        },
    )
    .await?;
    cluster.wait_ready(READY).await?;
    Ok((cluster, dir))
}

/// Before: anyone connected, subscribed to and published on any topic, and named their own
/// user with `?user=`. Now: no token, an expired one, a forged one or another site's page
/// is refused at the upgrade; a token's topics bound what it may do; its `sub` is the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_need_a_valid_token_and_stay_within_its_topics() -> Result<()> {
    let (cluster, _key_dir) = secured_cluster().await?;
    let edge = cluster.edge_addr(1).to_string();

    // Refused upgrades, each with its reason.
    let forged = {
        let claims = Claims::everything("mallory", 600);
        mint_hs256(b"not the cluster's secret, not at all!", &claims)?
    };
    let cases = [
        ("/ws".to_string(), vec![], 401, "missing token"),
        ("/ws?user=alice".to_string(), vec![], 401, "missing token"),
        (
            format!("/ws?token={}", token("alice", -30, &["*"], &["*"])),
            vec![],
            401,
            "token expired",
        ),
        (
            format!("/ws?token={forged}"),
            vec![],
            401,
            "token: invalid signature",
        ),
        ("/ws?token=not.a.jwt".to_string(), vec![], 401, "token: "),
        (
            format!("/ws?token={}", token("alice", 600, &["*"], &["*"])),
            vec![("origin", "https://evil.example")],
            403,
            "origin",
        ),
    ];
    for (path, headers, status, reason) in &cases {
        let (got, body) = refused(&edge, path, headers).await?;
        ensure!(got == *status, "{path}: status {got} ({body})");
        ensure!(body.starts_with(reason), "{path}: reason {body:?}");
    }
    let refused_count = cluster.edge_counters[&1]
        .auth_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    ensure!(
        refused_count >= cases.len() as u64,
        "auth_refused {refused_count}"
    );

    // Alice may read chat/* and her own inbox, and publish on chat/room only.
    let alice_token = token("alice", 600, &["chat/*", "user/{sub}/*"], &["chat/room"]);
    let mut alice =
        Client::connect_path(&edge, &format!("/ws?token={alice_token}&user=root")).await?;
    alice
        .subscribe(&["chat/room".to_string(), "user/alice/inbox".to_string()])
        .await?;
    for (frame, topic) in [
        (
            r#"{"type":"subscribe","topic":"user/bob/inbox"}"#,
            "user/bob/inbox",
        ),
        (r#"{"type":"subscribe","topic":"admin"}"#, "admin"),
        (
            r#"{"type":"publish","topic":"chat/other","data":1}"#,
            "chat/other",
        ),
    ] {
        alice.send(frame).await?;
        match alice.next_frame(Duration::from_secs(5)).await? {
            Some(Frame::Error {
                code,
                topic: Some(t),
                ..
            }) if code == "denied" && t == topic => {}
            other => bail!("{frame}: expected denied for {topic}, got {other:?}"),
        }
    }
    // What the token allows works: her publish reaches her subscription.
    alice
        .send(r#"{"type":"publish","topic":"chat/room","data":"hi"}"#)
        .await?;
    match alice.next_frame(Duration::from_secs(5)).await? {
        Some(Frame::Publish { topic, data, .. }) if topic == "chat/room" && data == "\"hi\"" => {}
        other => bail!("expected alice's own message, got {other:?}"),
    }

    // A text frame that is not UTF-8 is closed with 1007 (it used to end the TCP connection
    // with no close frame), and only that connection.
    let mut broken = Client::connect_path(&edge, &format!("/ws?token={alice_token}")).await?;
    {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
        use tokio_tungstenite::tungstenite::Message;
        let bytes: &[u8] = b"{\"type\":\"publish\",\"topic\":\"chat/room\",\"data\":\"\xff\xfe\"}";
        broken
            .send_message(Message::Frame(WsFrame::message(
                bytes.to_vec(),
                OpCode::Data(Data::Text),
                true,
            )))
            .await?;
    }
    match broken.next_frame(Duration::from_secs(5)).await? {
        Some(Frame::Closed(1007, reason)) if reason.contains("UTF-8") => {}
        other => bail!("expected a 1007 close, got {other:?}"),
    }
    alice
        .send(r#"{"type":"publish","topic":"chat/room","data":"still here"}"#)
        .await?;
    match alice.next_frame(Duration::from_secs(5)).await? {
        Some(Frame::Publish { data, .. }) if data == "\"still here\"" => {}
        other => bail!("alice after the bad frame: {other:?}"),
    }

    // The user is the token's `sub`, not `?user=`: kicking "root" closes nothing, kicking
    // "alice" closes her connection.
    let mut d = cluster.distributor(1).await?;
    let kicked = d
        .kick_user(dpb::KickUserRequest {
            user_id: "root".into(),
        })
        .await?
        .into_inner();
    ensure!(kicked.connections_closed == 0, "root: {kicked:?}");
    let kicked = d
        .kick_user(dpb::KickUserRequest {
            user_id: "alice".into(),
        })
        .await?
        .into_inner();
    ensure!(kicked.connections_closed == 1, "alice: {kicked:?}");
    cluster.shutdown().await;
    Ok(())
}

/// Before: the connection limit was checked before the upgrade and counted after it, so a
/// burst of upgrades passed it, and one host could take every connection. Now both the
/// edge-wide and the per-address limit are taken atomically at the upgrade request.
/// One address opens more connections than it may, and one connection sends more frames
/// than it may: each is refused at its limit, and closed when it keeps on, while the
/// others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_upgrades_or_frames_stops_at_its_limit() -> Result<()> {
    const PER_IP: usize = 5;
    let cluster = Cluster::start_with(
        1,
        1,
        EdgeTuning {
            max_connections_per_ip: PER_IP,
            rate: firetower_edge::rate::RateConfig {
                frames: firetower_edge::rate::RateLimit {
                    per_sec: 1,
                    burst: 5,
                },
                close_after: 10,
                ..Default::default()
            },
            ..EdgeTuning::default()
        },
    )
    .await?;
    cluster.wait_ready(READY).await?;
    let edge = cluster.edge_addr(1).to_string();
    // The probes of wait_ready have gone once their seats are free again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let burst = loop {
        let attempts: Vec<_> = (0..4 * PER_IP)
            .map(|_| {
                let edge = edge.clone();
                tokio::spawn(async move { Client::connect(&edge).await })
            })
            .collect();
        let mut clients = Vec::new();
        let mut turned_away = 0;
        for a in attempts {
            match a.await? {
                Ok(c) => clients.push(c),
                Err(_) => turned_away += 1,
            }
        }
        if clients.len() == PER_IP || tokio::time::Instant::now() > deadline {
            break (clients, turned_away);
        }
        drop(clients);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (clients, turned_away) = burst;
    ensure!(
        clients.len() == PER_IP && turned_away == 3 * PER_IP,
        "{} admitted, {turned_away} refused; the limit is {PER_IP}",
        clients.len()
    );
    let (status, body) = refused(&edge, "/ws", &[]).await?;
    ensure!(status == 429, "status {status} ({body})");
    ensure!(body == "too many connections from this address", "{body:?}");
    // Another address is not affected.
    let stream = {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.2:0".parse()?)?;
        socket.connect(edge.parse()?).await?
    };
    let (mut other, _) = tokio_tungstenite::client_async(format!("ws://{edge}/ws"), stream).await?;
    use futures::SinkExt;
    other
        .send(tokio_tungstenite::tungstenite::Message::text(
            r#"{"type":"subscribe","topic":"t"}"#,
        ))
        .await?;

    // One connection floods frames (1 a second, a burst of 5 allowed): refused with
    // `rate_limited`, then closed with 1008 after 10 refusals in a row.
    let mut clients = clients.into_iter();
    let (Some(mut flooder), Some(mut calm)) = (clients.next(), clients.next()) else {
        bail!("two clients were admitted");
    };
    for _ in 0..40 {
        flooder.send("heartbeat").await?;
    }
    let mut limited = 0;
    let closed = loop {
        match flooder.next_frame(Duration::from_secs(5)).await? {
            Some(Frame::Error { code, .. }) if code == "rate_limited" => limited += 1,
            Some(Frame::Closed(code, reason)) => break (code, reason),
            other => bail!("after {limited} rate_limited errors: {other:?}"),
        }
    };
    ensure!(
        closed.0 == 1008 && closed.1.contains("rate limit"),
        "{closed:?}"
    );
    ensure!(
        limited >= 9,
        "{limited} rate_limited errors before the close"
    );
    let counters = &cluster.edge_counters[&1];
    ensure!(
        counters
            .closed_rate_limited
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    );
    // Another connection has its own bucket.
    calm.subscribe(&["calm".to_string()]).await?;
    drop(clients);
    cluster.shutdown().await;
    Ok(())
}

/// Before: the distributor's API took any caller, and the forwarded path between
/// distributors was gated by a header anyone could set (so a caller could forge route tags,
/// message ids and forward keys). Now every call needs an API key with the right scope;
/// distributors reach each other with a `member` key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_distributor_api_needs_a_key_with_the_right_scope() -> Result<()> {
    use firetower_distributor::api::hash_key;
    use firetower_distributor::{ApiAuthConfig, ApiKeyEntry, Scope};
    let dir = tempfile::tempdir()?;
    let member_file = dir.path().join("member.key");
    std::fs::write(&member_file, "member-secret-0123456789")?;
    let entry = |name: &str, key: &str, scopes: Vec<Scope>| ApiKeyEntry {
        name: name.into(),
        sha256: hash_key(key),
        scopes,
    };
    let cluster = Cluster::start_with(
        2,
        1,
        EdgeTuning {
            api: ApiAuthConfig {
                allow_unauthenticated: false,
                keys: vec![
                    entry("backend", "backend-secret", vec![Scope::Publish]),
                    entry("ops", "ops-secret", vec![Scope::Admin]),
                    entry("cluster", "member-secret-0123456789", vec![Scope::Member]),
                ],
                member_key_file: Some(member_file),
            },
            // The harness's clients publish (and the probes go through both
            // distributors, so forwarding with the member key is exercised too).
            api_key: Some("backend-secret".into()),
            ..EdgeTuning::default()
        },
    )
    .await?;
    cluster.wait_ready(READY).await?;
    let addr = cluster.distributors[&1].addr.clone();
    let client = |key: Option<&str>| {
        let channel = cluster.channel(&addr, firetower_net::Role::Distributor);
        let key = key.map(str::to_string);
        async move {
            let channel = channel?;
            let key = match key {
                Some(k) => firetower_net::ApiKey::new("key", &k)?,
                None => firetower_net::ApiKey::none(),
            };
            anyhow::Ok(dpb::distributor_client::DistributorClient::with_interceptor(channel, key))
        }
    };
    let publish = dpb::PublishRequest {
        topic: "t".into(),
        data: "1".into(),
    };
    let forged_forward = dpb::ForwardBatchRequest {
        runs: vec![dpb::ForwardRun {
            topic: "t".into(),
            origin: 2,
            incarnation: 1,
            messages: vec![dpb::ForwardedMessage {
                key: 1,
                route_tag: 0,
                msg_id: 7,
                data: "\"forged\"".into(),
                ..dpb::ForwardedMessage::default()
            }],
        }],
    };
    let cases: Vec<(&str, tonic::Status, tonic::Code, &str)> = vec![
        (
            "publish without a key",
            client(None)
                .await?
                .publish(publish.clone())
                .await
                .unwrap_err(),
            tonic::Code::Unauthenticated,
            "missing API key",
        ),
        (
            "publish with an unknown key",
            client(Some("guess"))
                .await?
                .publish(publish.clone())
                .await
                .unwrap_err(),
            tonic::Code::Unauthenticated,
            "unknown API key",
        ),
        (
            "kick with a publish key",
            client(Some("backend-secret"))
                .await?
                .kick_user(dpb::KickUserRequest {
                    user_id: "u".into(),
                })
                .await
                .unwrap_err(),
            tonic::Code::PermissionDenied,
            "the API key \"backend\" lacks the admin scope",
        ),
        (
            "a forged forward with a publish key",
            client(Some("backend-secret"))
                .await?
                .forward_batch(forged_forward.clone())
                .await
                .unwrap_err(),
            tonic::Code::PermissionDenied,
            "the API key \"backend\" lacks the member scope",
        ),
        (
            "a forged forward without a key",
            client(None)
                .await?
                .forward_batch(forged_forward)
                .await
                .unwrap_err(),
            tonic::Code::Unauthenticated,
            "missing API key",
        ),
        (
            "a handover without a key",
            client(None)
                .await?
                .handover(dpb::HandoverRequest {
                    to: 9,
                    epoch: 1,
                    slots: vec![1],
                    from_epochs: vec![],
                })
                .await
                .unwrap_err(),
            tonic::Code::Unauthenticated,
            "missing API key",
        ),
    ];
    for (what, status, code, message) in cases {
        ensure!(status.code() == code, "{what}: {status}");
        ensure!(
            status.message().starts_with(message),
            "{what}: {}",
            status.message()
        );
    }
    // The right keys work: a publish through distributor 1 reaches a subscriber whatever
    // distributor owns the topic, and the admin key kicks.
    let mut sub = Client::connect(cluster.edge_addr(1)).await?;
    sub.subscribe(&["t".to_string()]).await?;
    let reply = client(Some("backend-secret"))
        .await?
        .publish(publish)
        .await?;
    ensure!(reply.get_ref().seq > 0);
    match sub.next_frame(Duration::from_secs(5)).await? {
        Some(Frame::Publish { topic, data, .. }) if topic == "t" && data == "1" => {}
        other => bail!("expected the publish, got {other:?}"),
    }
    client(Some("ops-secret"))
        .await?
        .kick_user(dpb::KickUserRequest {
            user_id: "nobody".into(),
        })
        .await?;
    cluster.shutdown().await;
    Ok(())
}

/// A gRPC call whose request never finishes arriving (a body that trickles in, or never
/// ends) is cut off at the distributor's request bound, with a clear status; the node
/// keeps serving. Before, such a call held its stream (and the decode buffer it reserved)
/// for as long as the caller liked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_finishes_arriving_is_cut_off() -> Result<()> {
    let tuning = EdgeTuning {
        publish_retry_ms: 500,
        request_timeout_ms: 3000,
        ..EdgeTuning::default()
    };
    let cluster = Cluster::start_with(1, 1, tuning).await?;
    cluster.wait_ready(READY).await?;
    let addr = cluster.distributors[&1].addr.clone();
    let channel = cluster.channel(&addr, firetower_net::Role::Distributor)?;
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await?;
    // The unary Publish, sent as a stream of requests that never yields its first.
    let never = futures::stream::pending::<dpb::PublishRequest>();
    let call = raw.client_streaming::<_, dpb::PublishRequest, dpb::PublishReply, _>(
        tonic::Request::new(never),
        tonic::codegen::http::uri::PathAndQuery::from_static(
            "/firetower.distributor.v1.Distributor/Publish",
        ),
        tonic_prost::ProstCodec::default(),
    );
    let Ok(answer) = tokio::time::timeout(Duration::from_secs(20), call).await else {
        bail!("the call was still open after 20 s");
    };
    let Err(status) = answer else {
        bail!("a publish without a body succeeded");
    };
    ensure!(
        status.code() == tonic::Code::Cancelled && status.message().contains("Timeout expired"),
        "{status:?}"
    );
    // Everyone else is served as before.
    let mut d = cluster.distributor(1).await?;
    d.publish(dpb::PublishRequest {
        topic: "after".into(),
        data: "1".into(),
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}

/// Issue 15, cluster members: every gRPC port is TLS, and what a caller may do follows the
/// identity its certificate proves (role and id in the subjectAltName), not a header or a
/// shared key: an edge's certificate cannot register as a distributor or another edge,
/// vote in Raft or forward publishes; a backend without a certificate cannot make member
/// calls; a plaintext caller gets no answer at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_calls_follow_the_certificates_identity() -> Result<()> {
    use firetower_net::{Connector, NodeIdentity, Role};
    use firetower_proto::metastore::v1 as mpb;
    let cluster = Cluster::start(1, 1).await?;
    cluster.wait_ready(READY).await?;
    let meta_addr = cluster.metastore[0].clone();
    let dist_addr = cluster.distributors[&1].addr.clone();
    let edge1 = cluster.node_connector(NodeIdentity::new(Role::Edge, 1))?;
    let meta_as = |connector: &firetower_net::TcpConnector| -> Result<_> {
        Ok(mpb::metastore_client::MetastoreClient::new(
            connector
                .channel(&meta_addr, Role::Metastore)
                .map_err(anyhow::Error::msg)?,
        ))
    };
    let register = |kind: mpb::MemberKind, id: u64| mpb::RegisterRequest {
        kind: kind as i32,
        id,
        addrs: Default::default(),
        lease_ttl_ms: 1000,
        instance: 1,
    };
    let denied =
        |what: &str, result: Result<tonic::Response<mpb::RegisterReply>, tonic::Status>| {
            match result {
                Err(status) if status.code() == tonic::Code::PermissionDenied => Ok(status),
                other => Err(anyhow::anyhow!("{what}: {other:?}")),
            }
        };
    // An edge's certificate registers as that edge only.
    let status = denied(
        "edge 1 as distributor 7",
        meta_as(&edge1)?
            .register(register(mpb::MemberKind::Distributor, 7))
            .await,
    )?;
    ensure!(status.message().contains("edge 1"), "{status}");
    denied(
        "edge 1 as edge 2",
        meta_as(&edge1)?
            .register(register(mpb::MemberKind::Edge, 2))
            .await,
    )?;
    // A caller without a certificate (a backend, the CLI) makes no member call.
    denied(
        "no certificate",
        meta_as(&cluster.connector()?)?
            .register(register(mpb::MemberKind::Edge, 1))
            .await,
    )?;
    // ... but reads with its key (here: an open cluster).
    meta_as(&cluster.connector()?)?
        .cluster_status(mpb::ClusterStatusRequest {})
        .await?;
    // Raft messages only from the metastore node the certificate names.
    let vote = firetower_proto::raft::v1::RaftRequest {
        cluster: "firetower".into(),
        from: 2,
        payload: Default::default(),
    };
    for (who, connector) in [
        ("edge 1", edge1.clone()),
        (
            "metastore 3 claiming 2",
            cluster.node_connector(NodeIdentity::new(Role::Metastore, 3))?,
        ),
    ] {
        let channel = connector
            .channel(&meta_addr, Role::Metastore)
            .map_err(anyhow::Error::msg)?;
        let mut raft =
            firetower_proto::raft::v1::raft_transport_client::RaftTransportClient::new(channel);
        let status = raft.vote(vote.clone()).await.unwrap_err();
        ensure!(
            status.code() == tonic::Code::PermissionDenied,
            "a Raft vote from {who}: {status}"
        );
    }
    // Forwarded publishes only from a distributor's certificate.
    let forward = dpb::ForwardBatchRequest { runs: vec![] };
    let channel = edge1
        .channel(&dist_addr, Role::Distributor)
        .map_err(anyhow::Error::msg)?;
    let status = dpb::distributor_client::DistributorClient::new(channel)
        .forward_batch(forward)
        .await
        .unwrap_err();
    ensure!(
        status.code() == tonic::Code::PermissionDenied,
        "a forward from an edge: {status}"
    );
    // The server's certificate is checked for the role dialled: the distributor's port,
    // dialled as a metastore, fails the handshake.
    let channel = cluster
        .connector()?
        .channel(&dist_addr, Role::Metastore)
        .map_err(anyhow::Error::msg)?;
    let wrong_role = mpb::metastore_client::MetastoreClient::new(channel)
        .cluster_status(mpb::ClusterStatusRequest {})
        .await;
    ensure!(wrong_role.is_err(), "a distributor passed as a metastore");
    // Plaintext gets no answer: the server wants a TLS handshake and ends the connection.
    let plain = firetower_net::TcpConnector::default()
        .channel(&dist_addr, Role::Distributor)
        .map_err(anyhow::Error::msg)?;
    let plaintext = dpb::distributor_client::DistributorClient::new(plain)
        .publish(dpb::PublishRequest {
            topic: "t".into(),
            data: "1".into(),
        })
        .await;
    ensure!(plaintext.is_err(), "a plaintext publish: {plaintext:?}");
    Ok(())
}

/// Issue 15: "any CA-signed certificate may claim any edge id" on the relay. Now a
/// distributor takes an edge's QUIC Hello only for the id the edge's certificate names:
/// edge 5's certificate saying Hello as edge 6 is closed with BAD_HELLO and the reason;
/// saying its own id, it is linked (the distributor opens its lanes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_hello_must_name_the_certificates_edge() -> Result<()> {
    use firetower_net::relay::close_code;
    use firetower_net::{NodeIdentity, Role};
    use firetower_proto::relay::v1::{relay_frame::Frame, Hello, RelayFrame};
    let cluster = Cluster::start(1, 1).await?;
    cluster.wait_ready(READY).await?;
    let quic: std::net::SocketAddr = cluster.distributor_quic[&1].parse()?;
    let tls = cluster.node_tls(NodeIdentity::new(Role::Edge, 5))?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(tls.client_config()?);
    let hello = |edge_id: u64| {
        firetower_net::relay::encode(&RelayFrame {
            frame: Some(Frame::Hello(Hello {
                edge_id,
                cluster: "firetower".into(),
            })),
        })
    };
    // Another edge's id.
    let conn = endpoint
        .connect(quic, firetower_net::tls::RELAY_SERVER_NAME)?
        .await?;
    let (mut send, _recv) = conn.open_bi().await?;
    send.write_all(&hello(6)).await?;
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await?;
    let quinn::ConnectionError::ApplicationClosed(close) = closed else {
        bail!("expected the distributor to close the link: {closed:?}");
    };
    ensure!(
        close.error_code == quinn::VarInt::from_u32(close_code::BAD_HELLO),
        "{close:?}"
    );
    let reason = String::from_utf8_lossy(&close.reason);
    ensure!(
        reason.contains("edge 6") && reason.contains("edge 5"),
        "{reason}"
    );
    // Its own id: linked. Shown by what only a linked edge sees: a second link of the same
    // edge replaces the first (closed REPLACED), whichever of the two came first.
    let link = || async {
        let conn = endpoint
            .connect(quic, firetower_net::tls::RELAY_SERVER_NAME)?
            .await?;
        let (mut send, recv) = conn.open_bi().await?;
        send.write_all(&hello(5)).await?;
        anyhow::Ok((conn, send, recv))
    };
    let (a, _a_send, _a_recv) = link().await?;
    let (b, _b_send, _b_recv) = link().await?;
    let first_closed = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            e = a.closed() => e,
            e = b.closed() => e,
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("neither link of edge 5 was replaced within 10 s"))?;
    let quinn::ConnectionError::ApplicationClosed(close) = first_closed else {
        bail!("expected a replaced link: {first_closed:?}");
    };
    ensure!(
        close.error_code == quinn::VarInt::from_u32(close_code::REPLACED),
        "{close:?}"
    );
    Ok(())
}
