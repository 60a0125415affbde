//! `firetower dev`: a whole local cluster in one process, on loopback.
//!
//! 3 metastore nodes (7101–7103), 2 distributors (gRPC 6667 and 6677, QUIC 6666 and 6676)
//! and 2 edges (9999 and 9998, WebSocket at `/ws`, chat demo at `/`), with a throwaway CA
//! for the relay's TLS. It prints every endpoint, then `ready` once a publish through each
//! distributor has reached a WebSocket subscriber on each edge.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use firetower_metastore::Config as MetastoreConfig;
use firetower_net::tls::DevPki;
use firetower_net::{NodeIdentity, Role};
use firetower_proto::client::{parse_server_frame, ServerFrame};
use firetower_proto::distributor::v1 as dpb;
use futures::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{shutdown_signal, Failure, HistorySettings};

const METASTORE_PORTS: [u16; 3] = [7101, 7102, 7103];
/// (id, gRPC port, QUIC port) — 6667/6666 are the original Firetower's numbers.
const DISTRIBUTORS: [(u64, u16, u16); 2] = [(1, 6667, 6666), (2, 6677, 6676)];
const EDGES: [(u64, u16); 2] = [(1, 9999), (2, 9998)];
const HOST: &str = "127.0.0.1";
/// Metastore node N serves its metrics on this + N (7201…), distributor N on 6600 + N.
const METASTORE_METRICS_PORT: u16 = 7200;
const DISTRIBUTOR_METRICS_PORT: u16 = 6600;
const DASHBOARD_PORT: u16 = 9990;

type Task = JoinHandle<anyhow::Result<()>>;

/// Runs the whole local cluster until Ctrl-C. `history`: what each distributor keeps per
/// topic for recovery (the default policy and the per-pattern rules). `allow_anonymous`:
/// the edges also take clients without a token.
pub async fn run(
    data_dir: Option<PathBuf>,
    history: HistorySettings,
    allow_anonymous: bool,
) -> Result<(), Failure> {
    let (_temp, root) = match data_dir {
        Some(dir) => (None, dir),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("firetower-dev-")
                .tempdir()
                .context("creating a data directory")?;
            let root = temp.path().to_path_buf();
            (Some(temp), root)
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|&s| s).await;
        }
    };
    let mut tasks: Vec<(String, Task)> = Vec::new();

    let peers: BTreeMap<u64, String> = METASTORE_PORTS
        .iter()
        .enumerate()
        .map(|(i, port)| (i as u64 + 1, format!("{HOST}:{port}")))
        .collect();
    let metastore: Vec<String> = peers.values().cloned().collect();
    let api = write_api_keys(&root, "dev").context("writing the API keys")?;
    let pki = DevPki::new().context("making the dev CA")?;
    let tls_dir = root.join("tls");
    let ca_file = tls_dir.join("ca.crt");
    for (&id, addr) in &peers {
        let config = MetastoreConfig {
            id,
            peers: peers.clone(),
            data_dir: root.join(format!("metastore-{id}")),
            api: api.config.clone(),
            tls: pki
                .write_node(&tls_dir, NodeIdentity::new(Role::Metastore, id))
                .context("writing certificates")?,
            ..MetastoreConfig::default()
        };
        let listener = firetower_net::resolve::bind_tcp(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let metrics = format!("{HOST}:{}", METASTORE_METRICS_PORT + id as u16);
        let ops = firetower_net::resolve::bind_tcp(&metrics)
            .await
            .with_context(|| format!("cannot listen on {metrics}"))?;
        let stop = stopped();
        tasks.push((
            format!("metastore {id}"),
            tokio::spawn(async move {
                firetower_metastore::run_tcp_with_ops(config, listener, Some(ops), stop).await?;
                Ok(())
            }),
        ));
        println!("metastore {id}: grpc://{addr} metrics http://{metrics}/metrics");
    }

    let jwt_key = write_jwt_key(&root).context("writing the JWT key")?;
    let client_token = firetower_edge::auth::mint_hs256(
        &std::fs::read(&jwt_key).context("reading the JWT key")?,
        &firetower_edge::Claims::everything("dev", 24 * 3600),
    )
    .context("signing the dev token")?;
    for (id, grpc_port, quic_port) in DISTRIBUTORS {
        let grpc = format!("{HOST}:{grpc_port}");
        let quic = format!("{HOST}:{quic_port}");
        let metrics = format!("{HOST}:{}", DISTRIBUTOR_METRICS_PORT + id as u16);
        let config = firetower_distributor::Config {
            id,
            metastore: metastore.clone(),
            grpc_advertise: grpc.clone(),
            quic_advertise: quic.clone(),
            tls: pki
                .write_node(&tls_dir, NodeIdentity::new(Role::Distributor, id))
                .context("writing certificates")?,
            history: history.0,
            history_rules: history.1.clone(),
            api: api.config.clone(),
            metrics_listen: metrics.clone(),
            ..firetower_distributor::Config::default()
        };
        let ops = firetower_net::resolve::bind_tcp(&metrics)
            .await
            .with_context(|| format!("cannot listen on {metrics}"))?;
        let listener = firetower_net::resolve::bind_tcp(&grpc)
            .await
            .with_context(|| format!("cannot listen on {grpc}"))?;
        let udp =
            std::net::UdpSocket::bind(&quic).with_context(|| format!("cannot bind UDP {quic}"))?;
        let stop = stopped();
        tasks.push((
            format!("distributor {id}"),
            tokio::spawn(async move {
                firetower_distributor::run_udp_with_ops(
                    config,
                    listener,
                    udp,
                    Some(ops),
                    stop,
                    Arc::default(),
                )
                .await?;
                Ok(())
            }),
        ));
        println!("distributor {id}: grpc://{grpc} quic://{quic} metrics http://{metrics}/metrics");
    }
    for (id, port) in EDGES {
        let listen = format!("{HOST}:{port}");
        let config = firetower_edge::Config {
            id,
            metastore: metastore.clone(),
            ws_advertise: listen.clone(),
            tls: pki
                .write_node(&tls_dir, NodeIdentity::new(Role::Edge, id))
                .context("writing certificates")?,
            // The secure default: a token is needed (unless `--allow-anonymous`); the demo
            // page gets one from /dev/token, which only `dev` serves.
            auth: firetower_edge::AuthConfig {
                allow_anonymous,
                jwt_hs256_key_file: Some(jwt_key.clone()),
                dev_tokens: true,
                ..Default::default()
            },
            member_key_file: Some(api.member_key_file.clone()),
            ..firetower_edge::Config::default()
        };
        let listener = firetower_net::resolve::bind_tcp(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let udp = std::net::UdpSocket::bind(format!("{HOST}:0")).context("cannot bind UDP")?;
        let stop = stopped();
        tasks.push((
            format!("edge {id}"),
            tokio::spawn(async move {
                firetower_edge::run_tcp(
                    config,
                    listener,
                    udp,
                    Arc::new(firetower_edge::AllowAll),
                    Arc::default(),
                    stop,
                )
                .await?;
                Ok(())
            }),
        ));
        println!("edge {id}: http://{listen}/ (chat demo), ws://{listen}/ws metrics http://{listen}/metrics");
    }
    let dashboard = crate::dashboard::DashboardArgs {
        metastore: metastore.join(","),
        listen: format!("{HOST}:{DASHBOARD_PORT}"),
        api_key_file: Some(api.backend_key_file.clone()),
        ca: crate::cli::CaArgs {
            ca_file: Some(ca_file.clone()),
        },
        scrape_interval_ms: 2000,
        scrape_timeout_ms: None,
        max_viewers: 16,
    };
    tasks.push((
        "dashboard".to_string(),
        tokio::spawn(async move {
            crate::dashboard::run(dashboard).await.map_err(|e| match e {
                Failure::Usage(m) | Failure::Unavailable(m) => anyhow::anyhow!(m),
                Failure::Other(e) => e,
            })
        }),
    ));
    println!("dashboard: http://{HOST}:{DASHBOARD_PORT}/");
    println!("data: {}", root.display());
    println!("jwt key file: {}", jwt_key.display());
    println!("client token: {client_token}");
    println!("api key file: {}", api.backend_key_file.display());
    println!("ca file: {}", ca_file.display());
    println!(
        "try: cargo run --release -- publish --distributor {HOST}:6667 --api-key-file {} --ca-file {} --topic chat/lobby --data '{{\"user\":\"cli\",\"text\":\"hello\"}}'",
        api.backend_key_file.display(),
        ca_file.display()
    );
    println!(
        "status: cargo run --release -- status --metastore {} --api-key-file {} --ca-file {}",
        metastore.join(","),
        api.backend_key_file.display(),
        ca_file.display()
    );
    let access = crate::status::Access {
        key: api.backend_key.clone(),
        tls: Some(firetower_net::ClientTls::trusting(&ca_file).context("reading the dev CA")?),
    };

    let ready = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(60), wait_ready(&client_token, &access)) => Some(r),
        _ = shutdown_signal() => None,
    };
    let mut result = Ok(());
    match ready {
        Some(Ok(Ok(()))) => {
            println!("ready");
            shutdown_signal().await;
        }
        Some(Ok(Err(e))) => {
            result = Err(Failure::Other(
                e.context("the cluster did not become ready"),
            ))
        }
        Some(Err(_)) => {
            result = Err(Failure::Other(anyhow::anyhow!(
                "the cluster did not become ready within 60 s"
            )))
        }
        None => {}
    }
    println!("stopping");
    let _ = stop_tx.send(true);
    for (name, task) in tasks.into_iter().rev() {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("{name} stopped with an error: {e:#}"),
            Err(e) => eprintln!("{name} task failed: {e}"),
        }
    }
    result
}

/// Subscribes on each edge and publishes through each distributor until every pair has
/// delivered once.
async fn wait_ready(token: &str, access: &crate::status::Access) -> anyhow::Result<()> {
    // Every node registered and the slots spread: from here slots move only on failures.
    loop {
        if let Ok(mut client) =
            crate::status::connect(&format!("{HOST}:{}", METASTORE_PORTS[0]), access)
        {
            if let Ok(status) = client
                .cluster_status(firetower_proto::metastore::v1::ClusterStatusRequest {})
                .await
            {
                let status = status.into_inner();
                if status.members.len() == DISTRIBUTORS.len() + EDGES.len()
                    && status.slots_per_distributor.len() == DISTRIBUTORS.len()
                    && status.unowned_slots == 0
                {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (edge, port) in EDGES {
        for (dist, grpc_port, _) in DISTRIBUTORS {
            let topic = format!("dev-ready-{edge}-{dist}");
            loop {
                match probe(port, grpc_port, &topic, token, access).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!("not ready yet: {e:#}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }
    Ok(())
}

async fn probe(
    edge_port: u16,
    grpc_port: u16,
    topic: &str,
    token: &str,
    access: &crate::status::Access,
) -> anyhow::Result<()> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{HOST}:{edge_port}/ws?token={token}"))
            .await?;
    ws.send(Message::text(format!(
        r#"{{"type":"subscribe","topic":"{topic}","data":""}}"#
    )))
    .await?;
    let mut subscribed = false;
    let channel = access
        .channel(&format!("{HOST}:{grpc_port}"), Role::Distributor)
        .map_err(anyhow::Error::msg)?;
    let mut client =
        dpb::distributor_client::DistributorClient::with_interceptor(channel, access.key.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        let Ok(Some(Ok(Message::Text(text)))) = next else {
            bail!("no answer on {topic}");
        };
        match parse_server_frame(text.as_str()) {
            Ok(ServerFrame::Subscribed(_)) if !subscribed => {
                subscribed = true;
                client
                    .publish(dpb::PublishRequest {
                        topic: topic.to_string(),
                        data: "\"ready?\"".into(),
                    })
                    .await?;
            }
            Ok(ServerFrame::Publish { .. }) => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            other => bail!("unexpected frame on {topic}: {other:?}"),
        }
    }
}

/// A fresh HS256 secret for the edges' token check, in `<data>/auth/jwt-hs256.key` (readable
/// by this user only). A data dir that has one keeps it, so tokens outlive a restart.
pub(crate) fn write_jwt_key(root: &std::path::Path) -> anyhow::Result<PathBuf> {
    use rand::RngCore;
    let dir = root.join("auth");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("jwt-hs256.key");
    if path.exists() {
        return Ok(path);
    }
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    // Printable, so the file can be passed around and `firetower token` can read it.
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, hex.as_bytes())?;
    Ok(path)
}

/// The dev cluster's API keys: one for backends and the CLI (`publish` and `admin`), one
/// the distributors and edges present to each other (`member`).
pub(crate) struct DevApiKeys {
    pub(crate) config: firetower_distributor::ApiAuthConfig,
    pub(crate) backend_key_file: PathBuf,
    backend_key: firetower_net::ApiKey,
    pub(crate) member_key_file: PathBuf,
}

/// Writes (or, in a data dir that has them, reuses) `<data>/auth/api.key` and
/// `<data>/auth/member.key`.
pub(crate) fn write_api_keys(
    root: &std::path::Path,
    backend_name: &str,
) -> anyhow::Result<DevApiKeys> {
    use firetower_distributor::api::{hash_key, new_key};
    use firetower_distributor::{ApiKeyEntry, Scope};
    let dir = root.join("auth");
    std::fs::create_dir_all(&dir)?;
    let mut keys = Vec::new();
    let mut files = Vec::new();
    for (name, file, scopes) in [
        (backend_name, "api.key", vec![Scope::Publish, Scope::Admin]),
        ("cluster", "member.key", vec![Scope::Member]),
    ] {
        let path = dir.join(file);
        if !path.exists() {
            write_private(&path, new_key()?.as_bytes())?;
        }
        let key = std::fs::read_to_string(&path)?;
        keys.push(ApiKeyEntry {
            name: name.into(),
            sha256: hash_key(&key),
            scopes,
        });
        files.push(path);
    }
    let backend_key = firetower_net::ApiKey::from_file("api key file", &files[0])?;
    Ok(DevApiKeys {
        config: firetower_distributor::ApiAuthConfig {
            allow_unauthenticated: false,
            keys,
            member_key_file: Some(files[1].clone()),
        },
        backend_key_file: files[0].clone(),
        backend_key,
        member_key_file: files[1].clone(),
    })
}

/// Creates `path` readable by this user only, with `bytes`.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path)?, bytes)?;
    Ok(())
}
