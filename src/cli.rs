//! Argument parsing and dispatch.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use firetower_proto::metastore::v1 as pb;

use crate::{dashboard, dev, roles, status};

#[derive(Parser, Debug)]
#[command(
    name = "firetower",
    version,
    about = "Firetower: a distributed real-time push tier"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a whole local cluster on loopback: 3 metastore nodes, 2 distributors, 2 edges.
    Dev {
        /// Keep data here instead of a fresh temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        history: HistoryArgs,
        /// Also take WebSocket clients that bring no token (for local experiments and
        /// comparisons; clients that bring one are still checked). Off by default.
        #[arg(long)]
        allow_anonymous: bool,
    },
    /// Run one metastore node.
    Metastore(roles::MetastoreArgs),
    /// Run one distributor (gRPC publish API + QUIC relay to the edges).
    Distributor(roles::DistributorArgs),
    /// Run one edge (WebSocket gateway at /ws, demo page at /).
    Edge(roles::EdgeArgs),
    /// Check config files, print defaults.
    Config {
        #[command(subcommand)]
        action: roles::ConfigAction,
    },
    /// Make a client token (JWT, HS256) for a user, signed with the edges' key file.
    Token {
        /// The HS256 secret file the edges check tokens with (`--jwt-hs256-key-file`).
        #[arg(long)]
        key_file: PathBuf,
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// A topic the user may subscribe to: a name, or a prefix ending in `*`; `{sub}`
        /// stands for the user id. Repeatable.
        #[arg(long = "subscribe", value_name = "PATTERN")]
        subscribe: Vec<String>,
        /// A topic the user may publish on (as `--subscribe`). Repeatable.
        #[arg(long = "publish", value_name = "PATTERN")]
        publish: Vec<String>,
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Publish one message through a distributor, or (`--stream`) every line of standard
    /// input over one PublishStream.
    Publish {
        /// A distributor's gRPC address.
        #[arg(long, default_value = "127.0.0.1:6667")]
        distributor: String,
        #[arg(long, required_unless_present = "stream")]
        topic: Option<String>,
        /// The message: one JSON value.
        #[arg(long, required_unless_present = "stream")]
        data: Option<String>,
        /// Read newline-delimited `topic<TAB>json` from standard input and publish every
        /// line over one PublishStream, many in flight; prints `line=N epoch=E seq=S` or
        /// `line=N error=CODE: message` per line as answers come (in any order).
        #[arg(long, conflicts_with_all = ["topic", "data"])]
        stream: bool,
        /// A file holding the API key to present (`firetower api-key` makes one; `dev`
        /// prints its `api key file:`).
        #[arg(long)]
        api_key_file: Option<PathBuf>,
        #[command(flatten)]
        ca: CaArgs,
    },
    /// Print a topic's recent messages from its owner's history, oldest first
    /// (`epoch=E seq=S data=JSON` per line), then the topic's position now.
    History {
        /// A distributor's gRPC address (any: it asks the topic's owner).
        #[arg(long, default_value = "127.0.0.1:6667")]
        distributor: String,
        #[arg(long)]
        topic: String,
        /// Only what followed this position, `EPOCH:SEQ`; without it, the newest messages.
        #[arg(long)]
        since: Option<String>,
        /// At most this many messages (the server returns at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// A file holding the API key to present.
        #[arg(long)]
        api_key_file: Option<PathBuf>,
        #[command(flatten)]
        ca: CaArgs,
    },
    /// Make what a deployment's nodes need, into a new directory: a CA and a certificate
    /// per metastore node, distributor and edge (`tls/`), the edges' JWT key and two API keys (`auth/`);
    /// prints the flags each role takes. Run it again for a new set (a new CA: every node
    /// at once).
    Certs {
        /// A directory that does not exist yet, or is empty.
        #[arg(long)]
        out: PathBuf,
        /// How many metastore nodes (ids 1..=N).
        #[arg(long, default_value_t = 3)]
        metastores: u64,
        /// How many distributors (ids 1..=N).
        #[arg(long, default_value_t = 2)]
        distributors: u64,
        /// How many edges (ids 1..=N).
        #[arg(long, default_value_t = 2)]
        edges: u64,
    },
    /// Make an API key for the distributors' gRPC API: prints the key (give it to the
    /// caller, e.g. in a file for `--api-key-file`) and the `--api-key` value that the
    /// distributors take (it holds only the key's hash).
    ApiKey {
        /// A name for the key (shown in refusals and logs).
        #[arg(long)]
        name: String,
        /// Its scopes: `publish`, `admin`, `member`, joined by `+`.
        #[arg(long, default_value = "publish")]
        scopes: String,
    },
    /// Show the metastore cluster: leader, voters, each node's applied index, members, slots.
    Status {
        /// Metastore addresses, comma-separated.
        #[arg(long)]
        metastore: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// A file holding an `admin` (or `member`) key of the metastore's (`dev` prints
        /// its `api key file:`).
        #[arg(long)]
        api_key_file: Option<PathBuf>,
        #[command(flatten)]
        ca: CaArgs,
    },
    /// Split or merge hot topics.
    Hot {
        #[command(subcommand)]
        action: HotAction,
    },
    /// Serve a live dashboard of the cluster over HTTP: members, the slot map, hot and
    /// busy topics, per-node rates.
    Dashboard(dashboard::DashboardArgs),
}

/// What each distributor keeps per topic for recovery and History.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct HistoryArgs {
    /// Messages kept per topic for recovery and History (0: off; default 1000).
    #[arg(long)]
    pub history_messages: Option<usize>,
    /// The history of the topics a pattern matches: `PATTERN=MESSAGES[,BYTES[,AGE_MS]]`,
    /// e.g. `chat/*=100,65536,60000` (a name, or a prefix ending in `*`; left-out limits
    /// keep their defaults; the first matching rule decides). Repeatable.
    #[arg(long = "history-rule", value_name = "RULE")]
    pub history_rules: Vec<String>,
}

/// The default policy and the rules, as the distributor's config takes them.
pub type HistorySettings = (
    firetower_distributor::config::HistoryPolicy,
    Vec<firetower_distributor::config::HistoryRule>,
);

impl HistoryArgs {
    /// The `--history-rule`s.
    pub fn rules(&self) -> Result<Vec<firetower_distributor::config::HistoryRule>, Failure> {
        self.history_rules
            .iter()
            .map(|r| firetower_distributor::config::HistoryRule::parse(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::Usage(e.to_string()))
    }

    fn settings(&self) -> Result<HistorySettings, Failure> {
        let mut default = firetower_distributor::config::HistoryPolicy::default();
        if let Some(messages) = self.history_messages {
            default.messages = messages;
        }
        Ok((default, self.rules()?))
    }
}

/// Who may call a node's gRPC API, distributor or metastore (docs/security.md).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ApiArgs {
    /// An accepted API key: `NAME:SCOPE[+SCOPE…]:SHA256` (what `firetower api-key`
    /// prints). Repeatable.
    #[arg(long = "api-key", value_name = "ENTRY")]
    pub api_keys: Vec<String>,
    /// The key (a file) this node presents to the other nodes and the metastore: a
    /// `member` key of theirs.
    #[arg(long)]
    pub member_key_file: Option<PathBuf>,
    /// Take calls without a key, in every scope.
    #[arg(long)]
    pub allow_unauthenticated: bool,
}

/// How an edge authenticates its clients (docs/security.md).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientAuthArgs {
    /// Check client tokens (JWT, HS256) with the secret in this file (at least 32 bytes).
    #[arg(long)]
    pub jwt_hs256_key_file: Option<PathBuf>,
    /// Check client tokens (JWT, RS256 or ES256) with the public key in this PEM file.
    #[arg(long)]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Let clients without a token in, on every topic (user id from `?user=`, unverified).
    #[arg(long)]
    pub allow_anonymous: bool,
    /// A browser origin that may connect (e.g. `https://app.example.com`; `*` for any).
    /// Without one, only the edge's own origin. Repeatable.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
}

/// A node's TLS files (PEM): its certificate and key, and the cluster CA.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

/// How a CLI command reaches the cluster's gRPC ports.
#[derive(clap::Args, Debug, Clone)]
pub struct CaArgs {
    /// The cluster CA (PEM) to check the server's certificate with (`dev` prints its
    /// `ca file:`; `firetower certs` writes `tls/ca.crt`). Without it, the `tls/ca.crt`
    /// beside the API key file's `auth/` directory (the layout `dev` and `certs` write), if
    /// there is one; else plaintext: only for a cluster that serves plaintext.
    #[arg(long, env = "FIRETOWER_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl CaArgs {
    fn tls(
        &self,
        api_key_file: Option<&std::path::Path>,
    ) -> Result<Option<firetower_net::ClientTls>, Failure> {
        let beside_key = || {
            let auth = api_key_file?.parent()?;
            let ca = auth.parent()?.join("tls").join("ca.crt");
            (auth.file_name()? == "auth" && ca.is_file()).then_some(ca)
        };
        self.ca_file
            .clone()
            .or_else(beside_key)
            .as_deref()
            .map(firetower_net::ClientTls::trusting)
            .transpose()
            .map_err(|e| Failure::Usage(format!("--ca-file: {e}")))
    }

    pub(crate) fn access(
        &self,
        api_key_file: Option<&std::path::Path>,
    ) -> Result<status::Access, Failure> {
        Ok(status::Access {
            key: api_key(api_key_file)?,
            tls: self.tls(api_key_file)?,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum HotAction {
    /// Split TOPIC into SHARDS sub-topics (or change its count). The change is prepared
    /// and commits once every edge has joined the new route (see `status`).
    Set {
        #[arg(long)]
        metastore: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        shards: u32,
        /// A file holding an `admin` key of the metastore's.
        #[arg(long)]
        api_key_file: Option<PathBuf>,
        #[command(flatten)]
        ca: CaArgs,
    },
    /// Merge TOPIC back into one, in the same two phases.
    Clear {
        #[arg(long)]
        metastore: String,
        #[arg(long)]
        topic: String,
        /// A file holding an `admin` key of the metastore's.
        #[arg(long)]
        api_key_file: Option<PathBuf>,
        #[command(flatten)]
        ca: CaArgs,
    },
}

/// How a command failed, which decides the exit status.
pub enum Failure {
    /// A bad argument or configuration value (exit 64).
    Usage(String),
    /// Nothing could be reached (exit 69).
    Unavailable(String),
    /// Anything else (exit 1).
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// Splits a comma-separated address list; every entry must be HOST:PORT.
pub fn parse_addrs(list: &str) -> Result<Vec<String>, Failure> {
    let addrs: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    if addrs.is_empty() {
        return Err(Failure::Usage(format!(
            "--metastore {list:?}: no address given"
        )));
    }
    for addr in &addrs {
        let ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !ok {
            return Err(Failure::Usage(format!(
                "--metastore: {addr:?} is not HOST:PORT"
            )));
        }
    }
    Ok(addrs)
}

pub async fn execute(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Dev {
            data_dir,
            history,
            allow_anonymous,
        } => dev::run(data_dir, history.settings()?, allow_anonymous).await,
        Command::Metastore(args) => roles::metastore(args).await,
        Command::Distributor(args) => roles::distributor(args).await,
        Command::Edge(args) => roles::edge(args).await,
        Command::Config { action } => roles::config(action),
        Command::Publish {
            distributor,
            stream: true,
            api_key_file,
            ca,
            ..
        } => publish_stream(&distributor, &ca.access(api_key_file.as_deref())?).await,
        Command::Publish {
            distributor,
            topic,
            data,
            api_key_file,
            ca,
            ..
        } => {
            publish(
                &distributor,
                &ca.access(api_key_file.as_deref())?,
                topic.unwrap_or_default(),
                data.unwrap_or_default(),
            )
            .await
        }
        Command::History {
            distributor,
            topic,
            since,
            limit,
            api_key_file,
            ca,
        } => {
            history(
                &distributor,
                &ca.access(api_key_file.as_deref())?,
                topic,
                since.as_deref(),
                limit,
            )
            .await
        }
        Command::Certs {
            out,
            metastores,
            distributors,
            edges,
        } => certs(&out, metastores, distributors, edges),
        Command::ApiKey { name, scopes } => {
            let key =
                firetower_distributor::api::new_key().map_err(|e| Failure::Other(e.into()))?;
            let entry = format!(
                "{name}:{scopes}:{}",
                firetower_distributor::api::hash_key(&key)
            );
            firetower_distributor::ApiKeyEntry::parse(&entry)
                .map_err(|e| Failure::Usage(e.to_string()))?;
            println!("key: {key}");
            println!("distributor flag: --api-key {entry}");
            Ok(())
        }
        Command::Token {
            key_file,
            user,
            subscribe,
            publish,
            ttl_secs,
        } => {
            let secret = std::fs::read(&key_file)
                .with_context(|| format!("reading {}", key_file.display()))?;
            let secret = secret.trim_ascii_end();
            let mut claims = firetower_edge::Claims::everything(&user, ttl_secs);
            claims.subscribe = subscribe;
            claims.publish = publish;
            let token = firetower_edge::auth::mint_hs256(secret, &claims)
                .map_err(|e| Failure::Usage(format!("cannot sign: {e}")))?;
            println!("{token}");
            Ok(())
        }
        Command::Status {
            metastore,
            json,
            api_key_file,
            ca,
        } => {
            let access = ca.access(api_key_file.as_deref())?;
            status::run(&parse_addrs(&metastore)?, json, &access).await
        }
        Command::Hot { action } => hot(action).await,
        Command::Dashboard(args) => dashboard::run(args).await,
    }
}

/// `firetower certs`: writes the material and prints what each role takes.
fn certs(
    out: &std::path::Path,
    metastores: u64,
    distributors: u64,
    edges: u64,
) -> Result<(), Failure> {
    if std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(Failure::Usage(format!(
            "--out {}: not empty; certs never overwrites keys",
            out.display()
        )));
    }
    if [metastores, distributors, edges]
        .iter()
        .any(|n| !(1..=1000).contains(n))
    {
        return Err(Failure::Usage(
            "--metastores, --distributors and --edges: 1 ..= 1000".to_string(),
        ));
    }
    let pki = firetower_net::tls::DevPki::new().map_err(|e| Failure::Other(e.into()))?;
    let tls = out.join("tls");
    use firetower_net::{NodeIdentity, Role};
    let nodes = (1..=metastores)
        .map(|id| NodeIdentity::new(Role::Metastore, id))
        .chain((1..=distributors).map(|id| NodeIdentity::new(Role::Distributor, id)))
        .chain((1..=edges).map(|id| NodeIdentity::new(Role::Edge, id)));
    for identity in nodes {
        pki.write_node(&tls, identity)
            .map_err(|e| Failure::Other(e.into()))?;
    }
    let jwt = crate::dev::write_jwt_key(out)?;
    let keys = crate::dev::write_api_keys(out, "backend")?;
    let entries: Vec<String> = keys
        .config
        .keys
        .iter()
        .map(|k| {
            let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
            format!("--api-key {}:{}:{}", k.name, scopes.join("+"), k.sha256)
        })
        .collect();
    println!("ca: {}", tls.join("ca.crt").display());
    println!(
        "node certificates: {}/<role>-<id>.crt and .key",
        tls.display()
    );
    println!("jwt key file (edges, firetower token): {}", jwt.display());
    println!(
        "api key file (backends, status, hot; publish+admin): {}",
        keys.backend_key_file.display()
    );
    println!(
        "member key file (every node presents it): {}",
        keys.member_key_file.display()
    );
    println!(
        "metastore and distributor flags: {} --member-key-file {}",
        entries.join(" "),
        keys.member_key_file.display()
    );
    println!(
        "metastore N: --tls-cert {0}/metastore-N.crt --tls-key {0}/metastore-N.key --tls-ca {0}/ca.crt",
        tls.display()
    );
    println!(
        "CLI (publish, history, status, hot): --ca-file {}/ca.crt (or FIRETOWER_CA_FILE)",
        tls.display()
    );
    println!(
        "distributor N: --tls-cert {0}/distributor-N.crt --tls-key {0}/distributor-N.key --tls-ca {0}/ca.crt",
        tls.display()
    );
    println!(
        "edge N: --tls-cert {0}/edge-N.crt --tls-key {0}/edge-N.key --tls-ca {0}/ca.crt --jwt-hs256-key-file {1} --member-key-file {2}",
        tls.display(),
        jwt.display(),
        keys.member_key_file.display()
    );
    Ok(())
}

/// The key in `--api-key-file` (none without one).
fn api_key(file: Option<&std::path::Path>) -> Result<firetower_net::ApiKey, Failure> {
    firetower_net::ApiKey::from_optional_file("--api-key-file", file)
        .map_err(|e| Failure::Usage(e.to_string()))
}

/// A client of the distributor at `distributor` (host:port).
async fn distributor_client(
    distributor: &str,
    access: &status::Access,
) -> Result<
    firetower_proto::distributor::v1::distributor_client::DistributorClient<
        firetower_net::KeyedChannel,
    >,
    Failure,
> {
    let channel = firetower_net::Connector::channel(
        &firetower_net::TcpConnector {
            connect_timeout: std::time::Duration::from_secs(2),
            request_timeout: None,
            tls: access.tls.clone(),
        },
        distributor,
        firetower_net::Role::Distributor,
    )
    .map_err(|e| Failure::Usage(format!("--distributor {distributor:?}: {e}")))?;
    Ok(
        firetower_proto::distributor::v1::distributor_client::DistributorClient::with_interceptor(
            channel,
            access.key.clone(),
        ),
    )
}

/// `publish --stream`: every line of standard input (`topic<TAB>json`) over one
/// PublishStream, the line number as the message id. A line that does not parse is
/// reported and skipped; the command fails if any line was not published.
async fn publish_stream(distributor: &str, access: &status::Access) -> Result<(), Failure> {
    use tokio::io::AsyncBufReadExt;
    use tokio_stream::StreamExt;
    let publisher = publisher(distributor, access)?;
    // Lines go out as they are read (at most 1024 waiting), the line number as the id.
    let (tx, rx) = tokio::sync::mpsc::channel::<(u64, String, Vec<u8>)>(1024);
    let bad_lines = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader_bad = bad_lines.clone();
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut number = 0u64;
        while let Ok(Some(line)) = lines.next_line().await {
            number += 1;
            let Some((topic, data)) = line.split_once('\t') else {
                if !line.trim().is_empty() {
                    println!("line={number} error=bad_line: expected topic<TAB>json");
                    reader_bad.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                continue;
            };
            if tx
                .send((number, topic.to_string(), data.as_bytes().to_vec()))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut answers = publisher
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| Failure::Unavailable(e.to_string()))?;
    let (mut published, mut failed) = (0u64, 0u64);
    while let Some(answer) = answers.next().await {
        let answer = answer.map_err(|e| Failure::Other(anyhow::anyhow!("stream ended: {e}")))?;
        match answer.result {
            Ok(p) => {
                published += 1;
                println!("line={} epoch={} seq={}", answer.id, p.epoch, p.seq);
            }
            Err((code, message)) => {
                failed += 1;
                println!("line={} error={code:?}: {message}", answer.id);
            }
        }
    }
    let _ = reader.await;
    let bad = bad_lines.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("published {published}, failed {failed}, bad lines {bad}");
    if failed + bad > 0 {
        return Err(Failure::Other(anyhow::anyhow!(
            "{} of {} lines were not published",
            failed + bad,
            published + failed + bad
        )));
    }
    Ok(())
}

/// A publisher of the Rust client (`firetower-client`) for the distributor at
/// `distributor` (host:port).
fn publisher(
    distributor: &str,
    access: &status::Access,
) -> Result<firetower_client::Publisher, Failure> {
    firetower_client::Publisher::with_tls(distributor, access.tls.clone(), access.key.clone())
        .map_err(|e| Failure::Usage(format!("--distributor {distributor:?}: {e}")))
}

async fn publish(
    distributor: &str,
    access: &status::Access,
    topic: String,
    data: String,
) -> Result<(), Failure> {
    firetower_proto::topic::validate_topic(&topic)
        .map_err(|e| Failure::Usage(format!("--topic {topic:?}: {e}")))?;
    firetower_proto::client::validate_json_data(data.as_bytes())
        .map_err(|e| Failure::Usage(format!("--data: {e}")))?;
    match publisher(distributor, access)?.publish(&topic, &data).await {
        Ok(p) => {
            println!("epoch={} seq={}", p.epoch, p.seq);
            Ok(())
        }
        Err(firetower_client::ClientError::Refused { code, message }) => {
            Err(call_failure(&tonic::Status::new(code, message), access))
        }
        Err(e) => Err(Failure::Usage(e.to_string())),
    }
}

/// How a failed call ends the command. A plaintext call to a TLS port fails in HTTP/2
/// framing, which says nothing useful: the hint says what to give.
fn call_failure(status: &tonic::Status, access: &status::Access) -> Failure {
    let mut message = status.message().to_string();
    if access.tls.is_none()
        && matches!(
            status.code(),
            tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::Unavailable
        )
    {
        message.push_str(
            " (a plaintext call: if the cluster serves TLS, give --ca-file or FIRETOWER_CA_FILE)",
        );
    }
    match status.code() {
        tonic::Code::InvalidArgument => Failure::Usage(message),
        tonic::Code::Unavailable => Failure::Unavailable(message),
        code => Failure::Other(anyhow::anyhow!("{code:?}: {message}")),
    }
}

/// `history`: prints the messages, then `current epoch=E seq=S`. A position that cannot be
/// served (another epoch, older than the history, ahead of the topic) fails (exit 1),
/// naming the topic's position.
async fn history(
    distributor: &str,
    access: &status::Access,
    topic: String,
    since: Option<&str>,
    limit: u32,
) -> Result<(), Failure> {
    use firetower_proto::distributor::v1 as dpb;
    firetower_proto::topic::validate_topic(&topic)
        .map_err(|e| Failure::Usage(format!("--topic {topic:?}: {e}")))?;
    let since = match since {
        None => None,
        Some(text) => {
            let parsed = text
                .split_once(':')
                .and_then(|(e, s)| Some((e.parse::<u64>().ok()?, s.parse::<u64>().ok()?)));
            let Some((epoch, seq)) = parsed else {
                return Err(Failure::Usage(format!("--since {text:?} is not EPOCH:SEQ")));
            };
            Some(dpb::StreamPosition { epoch, seq })
        }
    };
    let mut client = distributor_client(distributor, access).await?;
    let reply = client
        .history(dpb::HistoryRequest {
            topic: topic.clone(),
            since,
            limit,
            forwarded: false,
        })
        .await
        .map_err(|status| call_failure(&status, access))?
        .into_inner();
    let current = reply.current.unwrap_or_default();
    if !reply.recovered {
        return Err(Failure::Other(anyhow::anyhow!(
            "{topic:?} has no history from that position: it is at {}:{} now",
            current.epoch,
            current.seq
        )));
    }
    for m in &reply.messages {
        println!(
            "epoch={} seq={} data={}",
            m.epoch,
            m.seq,
            String::from_utf8_lossy(&m.data)
        );
    }
    println!("current epoch={} seq={}", current.epoch, current.seq);
    Ok(())
}

async fn hot(action: HotAction) -> Result<(), Failure> {
    let (metastore, topic, api_key_file, ca) = match &action {
        HotAction::Set {
            metastore,
            topic,
            api_key_file,
            ca,
            ..
        }
        | HotAction::Clear {
            metastore,
            topic,
            api_key_file,
            ca,
        } => (metastore, topic, api_key_file, ca),
    };
    let access = ca.access(api_key_file.as_deref())?;
    firetower_proto::topic::validate_topic(topic)
        .map_err(|e| Failure::Usage(format!("--topic {topic:?}: {e}")))?;
    let mut last_error = String::from("no address tried");
    for addr in parse_addrs(metastore)? {
        let Ok(mut client) = status::connect(&addr, &access) else {
            last_error = format!("{addr}: unreachable");
            continue;
        };
        let result = match &action {
            HotAction::Set { shards, .. } => {
                client
                    .set_hot_topic(pb::SetHotTopicRequest {
                        topic: topic.clone(),
                        shards: *shards,
                        on_behalf_of: String::new(),
                    })
                    .await
            }
            HotAction::Clear { .. } => {
                client
                    .clear_hot_topic(pb::ClearHotTopicRequest {
                        topic: topic.clone(),
                    })
                    .await
            }
        };
        match result {
            Ok(reply) => {
                println!("ok: revision {}", reply.into_inner().revision);
                // The reply cannot say whether the change committed at once (no edge to
                // wait for) or is prepared until every edge joins; a read through the
                // leader can. Best effort: the change itself was made.
                if let Ok(map) = client
                    .get_slot_map(pb::GetSlotMapRequest { linearizable: true })
                    .await
                {
                    if let Some(h) = map
                        .into_inner()
                        .hot_topics
                        .iter()
                        .find(|h| &h.topic == topic)
                    {
                        println!("{}", status::describe_hot_topic(h));
                    }
                }
                return Ok(());
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                return Err(Failure::Usage(status.message().to_string()))
            }
            Err(status) => last_error = format!("{addr}: {}", status.message()),
        }
    }
    Err(Failure::Unavailable(last_error))
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
