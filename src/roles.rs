//! `firetower metastore|distributor|edge`: one node of a role, from its config file,
//! the environment and flags (crate::config_file), and `firetower config check`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use toml::Table;

use crate::cli::{
    parse_addrs, shutdown_signal, ApiArgs, ClientAuthArgs, Failure, HistoryArgs, TlsArgs,
};
use crate::config_file::{self, flag, Role};

/// Run one metastore node.
#[derive(clap::Args, Debug, Default)]
pub struct MetastoreArgs {
    /// A TOML file with a `[metastore]` table (docs/configuration.md); the environment
    /// (`FIRETOWER_METASTORE__KEY`) and these flags go over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id, one of the ids in --peers.
    #[arg(long)]
    pub id: Option<u64>,
    /// The address to bind for Raft RPC and the API (default: this node's --peers entry).
    #[arg(long)]
    pub listen: Option<String>,
    /// The address the other nodes dial for this one: replaces this node's --peers entry.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Where this node keeps its log and snapshots.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Every voter as ID=HOST:PORT, comma-separated.
    #[arg(long)]
    pub peers: Option<String>,
    /// The cluster name shared by every node.
    #[arg(long)]
    pub cluster: Option<String>,
    /// The HTTP address for `/metrics`, `/healthz` and `/readyz`.
    #[arg(long = "metrics")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Serve and dial plaintext gRPC (API keys still hold).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "tls_ca"])]
    pub allow_plaintext: bool,
}

/// Run one distributor (gRPC publish API + QUIC relay to the edges).
#[derive(clap::Args, Debug, Default)]
pub struct DistributorArgs {
    /// A TOML file with a `[distributor]` table (docs/configuration.md); the environment
    /// (`FIRETOWER_DISTRIBUTOR__KEY`) and these flags go over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Non-zero, unique among distributors.
    #[arg(long)]
    pub id: Option<u64>,
    #[command(flatten)]
    pub history: HistoryArgs,
    /// Metastore addresses, comma-separated.
    #[arg(long)]
    pub metastore: Option<String>,
    /// gRPC address to bind (default 127.0.0.1:6667).
    #[arg(long = "grpc")]
    pub grpc_listen: Option<String>,
    /// The gRPC address others dial (default: --grpc).
    #[arg(long)]
    pub grpc_advertise: Option<String>,
    /// QUIC (UDP) address to bind (default 127.0.0.1:6666).
    #[arg(long = "quic")]
    pub quic_listen: Option<String>,
    /// The QUIC address the edges dial (default: --quic).
    #[arg(long)]
    pub quic_advertise: Option<String>,
    /// The HTTP address for `/metrics`, `/healthz`, `/readyz` and `/topics`.
    #[arg(long = "metrics")]
    pub metrics_listen: Option<String>,
    /// The metrics address registered for the dashboard (default: --metrics).
    #[arg(long)]
    pub metrics_advertise: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[arg(long)]
    pub cluster: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Run one edge (WebSocket gateway at /ws, demo page at /).
#[derive(clap::Args, Debug, Default)]
pub struct EdgeArgs {
    /// A TOML file with an `[edge]` table (docs/configuration.md); the environment
    /// (`FIRETOWER_EDGE__KEY`) and these flags go over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Non-zero, unique among edges.
    #[arg(long)]
    pub id: Option<u64>,
    /// Metastore addresses, comma-separated.
    #[arg(long)]
    pub metastore: Option<String>,
    /// HTTP/WebSocket address to bind (default 127.0.0.1:9999); it serves `/metrics`,
    /// `/healthz` and `/readyz` too.
    #[arg(long)]
    pub listen: Option<String>,
    /// The address registered for clients and operators (default: --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[arg(long)]
    pub cluster: Option<String>,
    /// Also send the legacy `heartbeat` text frame with each ping.
    #[arg(long)]
    pub legacy_heartbeat: bool,
    #[command(flatten)]
    pub auth: ClientAuthArgs,
    /// A file holding the API key the edge presents to the metastore and the
    /// distributors: a `member` key of theirs.
    #[arg(long)]
    pub member_key_file: Option<PathBuf>,
}

/// `firetower config …`.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigAction {
    /// Validate a config file (with the `FIRETOWER_<ROLE>__…` environment over it) and
    /// print the effective config; exit 64 naming the first bad key or value.
    Check {
        /// A TOML file holding one `[metastore]`, `[distributor]` or `[edge]` table.
        file: PathBuf,
    },
    /// Print a role's defaults as a config file.
    Defaults {
        /// metastore, distributor or edge.
        role: String,
    },
}

fn usage(e: impl std::fmt::Display) -> Failure {
    Failure::Usage(e.to_string())
}

fn path_value(p: &Path) -> String {
    p.display().to_string()
}

/// The file's table, when there is a file; an error when it is another role's.
fn file_table(role: Role, file: Option<&Path>) -> Result<Option<Table>, Failure> {
    let Some(path) = file else { return Ok(None) };
    let (found, table) = config_file::read_file(path).map_err(usage)?;
    if found != role {
        return Err(Failure::Usage(format!(
            "{}: a [{}] file, not [{}]",
            path.display(),
            found.name(),
            role.name()
        )));
    }
    Ok(Some(table))
}

fn api_flags(flags: &mut Table, api: &ApiArgs) -> Result<(), Failure> {
    if !api.api_keys.is_empty() {
        let keys = api
            .api_keys
            .iter()
            .map(|k| {
                let entry = firetower_distributor::ApiKeyEntry::parse(k).map_err(usage)?;
                toml::Value::try_from(entry).map_err(usage)
            })
            .collect::<Result<Vec<_>, _>>()?;
        flag(flags, "api.keys", Some(keys));
    }
    flag(
        flags,
        "api.member_key_file",
        api.member_key_file.as_deref().map(path_value),
    );
    flag(
        flags,
        "api.allow_unauthenticated",
        api.allow_unauthenticated.then_some(true),
    );
    Ok(())
}

fn tls_flags(flags: &mut Table, tls: &TlsArgs) {
    flag(flags, "tls.cert", tls.tls_cert.as_deref().map(path_value));
    flag(flags, "tls.key", tls.tls_key.as_deref().map(path_value));
    flag(flags, "tls.ca", tls.tls_ca.as_deref().map(path_value));
}

fn addrs_flag(flags: &mut Table, key: &str, list: Option<&str>) -> Result<(), Failure> {
    if let Some(list) = list {
        flag(flags, key, Some(parse_addrs(list)?));
    }
    Ok(())
}

/// Refuses an address others cannot dial (`0.0.0.0`, `::`) where one is advertised.
fn dialable(field: &str, addr: &str) -> Result<(), Failure> {
    let unspecified = addr
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_unspecified());
    if unspecified {
        return Err(Failure::Usage(format!(
            "{field} = {addr:?}: other nodes cannot dial an unspecified address; \
             set {field} to this host's address or name"
        )));
    }
    Ok(())
}

/// A distributor or edge always speaks TLS: its three files must be named.
fn require_tls(tls: &firetower_net::TlsFiles) -> Result<(), Failure> {
    for (key, path) in [
        ("tls.cert", &tls.cert),
        ("tls.key", &tls.key),
        ("tls.ca", &tls.ca),
    ] {
        if path.as_os_str().is_empty() {
            return Err(Failure::Usage(format!(
                "{key}: required (--{} or the config file; `firetower certs` makes them)",
                key.replace('.', "-")
            )));
        }
    }
    Ok(())
}

fn env_vars() -> Vec<(String, String)> {
    std::env::vars().collect()
}

/// A metastore's effective config.
pub fn metastore_config(
    args: &MetastoreArgs,
    env: Vec<(String, String)>,
) -> Result<firetower_metastore::Config, Failure> {
    let role = Role::Metastore;
    let mut flags = Table::new();
    flag(&mut flags, "id", args.id.map(|id| id as i64));
    flag(&mut flags, "listen", args.listen.clone());
    flag(
        &mut flags,
        "data_dir",
        args.data_dir.as_deref().map(path_value),
    );
    flag(&mut flags, "cluster", args.cluster.clone());
    flag(&mut flags, "metrics_listen", args.metrics_listen.clone());
    flag(
        &mut flags,
        "allow_plaintext",
        args.allow_plaintext.then_some(true),
    );
    api_flags(&mut flags, &args.api)?;
    tls_flags(&mut flags, &args.tls);
    let file = file_table(role, args.config.as_deref())?;
    // No default voters: a file's peers are the whole list, not added to a default one.
    let defaults = firetower_metastore::Config {
        peers: Default::default(),
        ..Default::default()
    };
    let mut config: firetower_metastore::Config =
        config_file::load(role, &defaults, file, env, flags).map_err(usage)?;
    // A map replaces the one below as a whole (the peers are one list).
    if let Some(peers) = &args.peers {
        config.peers = firetower_metastore::parse_peers(peers)
            .map_err(|e| Failure::Usage(format!("--peers: {e}")))?;
    }
    if let Some(advertise) = &args.advertise {
        config.peers.insert(config.id, advertise.clone());
    }
    if config.listen.is_empty() {
        config.listen = config.peers.get(&config.id).cloned().unwrap_or_default();
    }
    config.validate().map_err(usage)?;
    if let Some(me) = config.peers.get(&config.id) {
        dialable(&format!("peers.{}", config.id), me)?;
    }
    Ok(config)
}

/// A distributor's effective config.
pub fn distributor_config(
    args: &DistributorArgs,
    env: Vec<(String, String)>,
) -> Result<firetower_distributor::Config, Failure> {
    let role = Role::Distributor;
    let mut flags = Table::new();
    flag(&mut flags, "id", args.id.map(|id| id as i64));
    addrs_flag(&mut flags, "metastore", args.metastore.as_deref())?;
    flag(&mut flags, "grpc_listen", args.grpc_listen.clone());
    flag(&mut flags, "grpc_advertise", args.grpc_advertise.clone());
    flag(&mut flags, "quic_listen", args.quic_listen.clone());
    flag(&mut flags, "quic_advertise", args.quic_advertise.clone());
    flag(&mut flags, "metrics_listen", args.metrics_listen.clone());
    flag(
        &mut flags,
        "metrics_advertise",
        args.metrics_advertise.clone(),
    );
    flag(&mut flags, "cluster", args.cluster.clone());
    flag(
        &mut flags,
        "history.messages",
        args.history.history_messages.map(|n| n as i64),
    );
    if !args.history.history_rules.is_empty() {
        let rules = args
            .history
            .rules()?
            .into_iter()
            .map(|r| toml::Value::try_from(r).map_err(usage))
            .collect::<Result<Vec<_>, _>>()?;
        flag(&mut flags, "history_rules", Some(rules));
    }
    api_flags(&mut flags, &args.api)?;
    tls_flags(&mut flags, &args.tls);
    let file = file_table(role, args.config.as_deref())?;
    let mut config: firetower_distributor::Config = config_file::load(
        role,
        &firetower_distributor::Config::default(),
        file,
        env,
        flags,
    )
    .map_err(usage)?;
    settle(
        &mut config.grpc_listen,
        &mut config.grpc_advertise,
        "127.0.0.1:6667",
    );
    settle(
        &mut config.quic_listen,
        &mut config.quic_advertise,
        "127.0.0.1:6666",
    );
    if config.metrics_advertise.is_empty() {
        config.metrics_advertise = config.metrics_listen.clone();
    }
    config.validate().map_err(usage)?;
    require_tls(&config.tls)?;
    dialable("grpc_advertise", &config.grpc_advertise)?;
    dialable("quic_advertise", &config.quic_advertise)?;
    if !config.metrics_advertise.is_empty() {
        dialable("metrics_advertise", &config.metrics_advertise)?;
    }
    Ok(config)
}

/// An edge's effective config.
pub fn edge_config(
    args: &EdgeArgs,
    env: Vec<(String, String)>,
) -> Result<firetower_edge::Config, Failure> {
    let role = Role::Edge;
    let mut flags = Table::new();
    flag(&mut flags, "id", args.id.map(|id| id as i64));
    addrs_flag(&mut flags, "metastore", args.metastore.as_deref())?;
    flag(&mut flags, "ws_listen", args.listen.clone());
    flag(&mut flags, "ws_advertise", args.advertise.clone());
    flag(&mut flags, "cluster", args.cluster.clone());
    flag(
        &mut flags,
        "legacy_heartbeat",
        args.legacy_heartbeat.then_some(true),
    );
    flag(
        &mut flags,
        "member_key_file",
        args.member_key_file.as_deref().map(path_value),
    );
    let auth = &args.auth;
    flag(
        &mut flags,
        "auth.allow_anonymous",
        auth.allow_anonymous.then_some(true),
    );
    flag(
        &mut flags,
        "auth.jwt_hs256_key_file",
        auth.jwt_hs256_key_file.as_deref().map(path_value),
    );
    flag(
        &mut flags,
        "auth.jwt_public_key_file",
        auth.jwt_public_key_file.as_deref().map(path_value),
    );
    if !auth.allowed_origins.is_empty() {
        flag(
            &mut flags,
            "auth.allowed_origins",
            Some(auth.allowed_origins.clone()),
        );
    }
    tls_flags(&mut flags, &args.tls);
    let file = file_table(role, args.config.as_deref())?;
    let mut config: firetower_edge::Config =
        config_file::load(role, &firetower_edge::Config::default(), file, env, flags)
            .map_err(usage)?;
    settle(
        &mut config.ws_listen,
        &mut config.ws_advertise,
        "127.0.0.1:9999",
    );
    config.validate().map_err(usage)?;
    require_tls(&config.tls)?;
    dialable("ws_advertise", &config.ws_advertise)?;
    Ok(config)
}

/// A listener's bind and advertised addresses: each defaults to the other, both to
/// `default`.
fn settle(listen: &mut String, advertise: &mut String, default: &str) {
    if listen.is_empty() {
        *listen = if advertise.is_empty() {
            default.to_string()
        } else {
            advertise.clone()
        };
    }
    if advertise.is_empty() {
        *advertise = listen.clone();
    }
}

async fn bind(field: &str, addr: &str) -> Result<tokio::net::TcpListener, Failure> {
    firetower_net::resolve::bind_tcp(addr)
        .await
        .with_context(|| format!("{field}: cannot listen on {addr}"))
        .map_err(Failure::Other)
}

async fn bind_udp(field: &str, addr: &str) -> Result<std::net::UdpSocket, Failure> {
    let socket = firetower_net::resolve::first(addr)
        .await
        .with_context(|| format!("{field}: {addr}"))?;
    std::net::UdpSocket::bind(socket)
        .with_context(|| format!("{field}: cannot bind UDP {addr}"))
        .map_err(Failure::Other)
}

pub async fn metastore(args: MetastoreArgs) -> Result<(), Failure> {
    let config = metastore_config(&args, env_vars())?;
    let listener = bind("listen", &config.listen).await?;
    let metrics = match config.metrics_listen.as_str() {
        "" => None,
        addr => Some(bind("metrics_listen", addr).await?),
    };
    let metrics_line = metrics_line(metrics.as_ref());
    eprintln!(
        "metastore node {}: listening on {}{metrics_line}",
        config.id, config.listen
    );
    use firetower_metastore::NodeError;
    match firetower_metastore::run_tcp_with_ops(config, listener, metrics, shutdown_signal()).await
    {
        Ok(()) => Ok(()),
        Err(e @ (NodeError::Config(_) | NodeError::ForeignDataDir { .. } | NodeError::Tls(_))) => {
            Err(Failure::Usage(e.to_string()))
        }
        Err(e) => Err(Failure::Other(e.into())),
    }
}

fn metrics_line(listener: Option<&tokio::net::TcpListener>) -> String {
    listener
        .and_then(|l| l.local_addr().ok())
        .map(|a| format!(", metrics http://{a}/metrics"))
        .unwrap_or_default()
}

pub async fn distributor(args: DistributorArgs) -> Result<(), Failure> {
    let config = distributor_config(&args, env_vars())?;
    let grpc = bind("grpc_listen", &config.grpc_listen).await?;
    let udp = bind_udp("quic_listen", &config.quic_listen).await?;
    let metrics = match config.metrics_listen.as_str() {
        "" => None,
        addr => Some(bind("metrics_listen", addr).await?),
    };
    eprintln!(
        "distributor {}: grpc {}, quic {}{}",
        config.id,
        config.grpc_advertise,
        config.quic_advertise,
        metrics_line(metrics.as_ref())
    );
    firetower_distributor::run_udp_with_ops(
        config,
        grpc,
        udp,
        metrics,
        shutdown_signal(),
        std::sync::Arc::default(),
    )
    .await
    .map_err(|e| match e {
        firetower_distributor::NodeError::Config(_) | firetower_distributor::NodeError::Tls(_) => {
            Failure::Usage(e.to_string())
        }
        e => Failure::Other(e.into()),
    })
}

pub async fn edge(args: EdgeArgs) -> Result<(), Failure> {
    let config = edge_config(&args, env_vars())?;
    let listener = bind("ws_listen", &config.ws_listen).await?;
    // Dual-stack where the host has IPv6, so distributors may advertise either family.
    let udp = std::net::UdpSocket::bind("[::]:0")
        .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))
        .context("cannot bind UDP")?;
    eprintln!(
        "edge {}: http://{}/ (WebSocket at /ws), metrics http://{}/metrics",
        config.id, config.ws_advertise, config.ws_advertise
    );
    firetower_edge::run_tcp(
        config,
        listener,
        udp,
        std::sync::Arc::new(firetower_edge::AllowAll),
        std::sync::Arc::default(),
        shutdown_signal(),
    )
    .await
    .map_err(|e| match e {
        firetower_edge::NodeError::Config(_) | firetower_edge::NodeError::Tls(_) => {
            Failure::Usage(e.to_string())
        }
        e => Failure::Other(e.into()),
    })
}

/// `firetower config check|defaults`.
pub fn config(action: ConfigAction) -> Result<(), Failure> {
    match action {
        ConfigAction::Check { file } => {
            let (role, _) = config_file::read_file(&file).map_err(usage)?;
            let rendered = match role {
                Role::Metastore => {
                    let args = MetastoreArgs {
                        config: Some(file),
                        ..Default::default()
                    };
                    config_file::render(role, &metastore_config(&args, env_vars())?)
                }
                Role::Distributor => {
                    let args = DistributorArgs {
                        config: Some(file),
                        ..Default::default()
                    };
                    config_file::render(role, &distributor_config(&args, env_vars())?)
                }
                Role::Edge => {
                    let args = EdgeArgs {
                        config: Some(file),
                        ..Default::default()
                    };
                    config_file::render(role, &edge_config(&args, env_vars())?)
                }
            }
            .map_err(usage)?;
            print!("{rendered}");
            Ok(())
        }
        ConfigAction::Defaults { role } => {
            let rendered = match role.as_str() {
                "metastore" => {
                    config_file::render(Role::Metastore, &firetower_metastore::Config::default())
                }
                "distributor" => config_file::render(
                    Role::Distributor,
                    &firetower_distributor::Config::default(),
                ),
                "edge" => config_file::render(Role::Edge, &firetower_edge::Config::default()),
                other => {
                    return Err(Failure::Usage(format!(
                        "{other:?}: metastore, distributor or edge"
                    )))
                }
            }
            .map_err(usage)?;
            print!("{rendered}");
            Ok(())
        }
    }
}
