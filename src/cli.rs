//! Argument parsing and dispatch.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use firetower_metastore::{parse_peers, Config as MetastoreConfig, NodeError};
use firetower_proto::metastore::v1 as pb;

use crate::{dev, status};

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
    /// Start a whole local cluster on loopback (today: the three metastore nodes).
    Dev {
        /// Keep data here instead of a fresh temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run one metastore node.
    Metastore {
        /// This node's id, one of the ids in --peers.
        #[arg(long)]
        id: u64,
        /// The address to listen on for Raft RPC and the API.
        #[arg(long)]
        listen: String,
        /// Where this node keeps its log and snapshots.
        #[arg(long)]
        data_dir: PathBuf,
        /// Every voter as ID=HOST:PORT, comma-separated.
        #[arg(long)]
        peers: String,
        /// The cluster name shared by every node.
        #[arg(long, default_value = "firetower")]
        cluster: String,
    },
    /// Show the metastore cluster: leader, voters, each node's applied index, members, slots.
    Status {
        /// Metastore addresses, comma-separated.
        #[arg(long)]
        metastore: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Split or merge hot topics.
    Hot {
        #[command(subcommand)]
        action: HotAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum HotAction {
    /// Split TOPIC into SHARDS sub-topics.
    Set {
        #[arg(long)]
        metastore: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        shards: u32,
    },
    /// Merge TOPIC back into one.
    Clear {
        #[arg(long)]
        metastore: String,
        #[arg(long)]
        topic: String,
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
        Command::Dev { data_dir } => dev::run(data_dir).await,
        Command::Metastore {
            id,
            listen,
            data_dir,
            peers,
            cluster,
        } => {
            let listen: SocketAddr = listen
                .parse()
                .map_err(|_| Failure::Usage(format!("--listen {listen:?} is not IP:PORT")))?;
            let peers = parse_peers(&peers).map_err(|e| Failure::Usage(format!("--peers: {e}")))?;
            let config = MetastoreConfig {
                id,
                cluster,
                peers,
                data_dir,
                ..MetastoreConfig::default()
            };
            config
                .validate()
                .map_err(|e| Failure::Usage(e.to_string()))?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!("metastore node {id} listening on {listen}");
            match firetower_metastore::run_tcp(config, listener, shutdown_signal()).await {
                Ok(()) => Ok(()),
                Err(e @ (NodeError::Config(_) | NodeError::ForeignDataDir { .. })) => {
                    Err(Failure::Usage(e.to_string()))
                }
                Err(e) => Err(Failure::Other(e.into())),
            }
        }
        Command::Status { metastore, json } => status::run(&parse_addrs(&metastore)?, json).await,
        Command::Hot { action } => hot(action).await,
    }
}

async fn hot(action: HotAction) -> Result<(), Failure> {
    let (metastore, topic) = match &action {
        HotAction::Set {
            metastore, topic, ..
        }
        | HotAction::Clear { metastore, topic } => (metastore, topic),
    };
    firetower_proto::topic::validate_topic(topic)
        .map_err(|e| Failure::Usage(format!("--topic {topic:?}: {e}")))?;
    let mut last_error = String::from("no address tried");
    for addr in parse_addrs(metastore)? {
        let Ok(mut client) = status::connect(&addr).await else {
            last_error = format!("{addr}: unreachable");
            continue;
        };
        let result = match &action {
            HotAction::Set { shards, .. } => {
                client
                    .set_hot_topic(pb::SetHotTopicRequest {
                        topic: topic.clone(),
                        shards: *shards,
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
