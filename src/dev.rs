//! `firetower dev`: a whole local cluster in one process, on loopback.
//!
//! Today this starts the three metastore nodes only (ports 7101–7103): distributors, edges
//! and the demo page come with the data path. It prints every endpoint, waits for a leader
//! and prints `ready`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use firetower_metastore::Config as MetastoreConfig;
use firetower_proto::metastore::v1 as pb;
use tokio::sync::watch;

use crate::cli::{shutdown_signal, Failure};
use crate::status::connect;

/// The metastore ports of `dev`.
const METASTORE_PORTS: [u16; 3] = [7101, 7102, 7103];

pub async fn run(data_dir: Option<PathBuf>) -> Result<(), Failure> {
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
    let peers: BTreeMap<u64, String> = METASTORE_PORTS
        .iter()
        .enumerate()
        .map(|(i, port)| (i as u64 + 1, format!("127.0.0.1:{port}")))
        .collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut nodes = Vec::new();
    for (&id, addr) in &peers {
        let config = MetastoreConfig {
            id,
            peers: peers.clone(),
            data_dir: root.join(format!("metastore-{id}")),
            ..MetastoreConfig::default()
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let mut stop = stop_rx.clone();
        nodes.push(tokio::spawn(firetower_metastore::run_tcp(
            config,
            listener,
            async move {
                let _ = stop.wait_for(|&s| s).await;
            },
        )));
        println!("metastore {id}: grpc://{addr}");
    }
    println!("data: {}", root.display());

    let leader = tokio::select! {
        leader = wait_for_leader(&peers) => leader,
        _ = shutdown_signal() => None,
    };
    if let Some(leader) = leader {
        println!("note: this build starts the metastore only; distributors, edges and the demo page are not built yet");
        println!(
            "status: cargo run --release -- status --metastore {}",
            peers.values().cloned().collect::<Vec<_>>().join(",")
        );
        println!("ready (metastore leader: node {leader})");
        shutdown_signal().await;
    }
    println!("stopping");
    let _ = stop_tx.send(true);
    for node in nodes {
        match node.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("metastore node stopped with an error: {e}"),
            Err(e) => eprintln!("metastore node task failed: {e}"),
        }
    }
    Ok(())
}

async fn wait_for_leader(peers: &BTreeMap<u64, String>) -> Option<u64> {
    loop {
        for addr in peers.values() {
            if let Ok(mut client) = connect(addr).await {
                if let Ok(status) = client.cluster_status(pb::ClusterStatusRequest {}).await {
                    if let Some(leader) = status.into_inner().leader {
                        return Some(leader);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
