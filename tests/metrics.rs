//! Every role's metrics endpoint, fetched over HTTP as Prometheus (or `curl`) would, is
//! Prometheus text that a Prometheus text parser accepts, with HELP and TYPE for every
//! family (issue 16). Real processes from config files (tests/procs).

// Real processes in real time: this test is a shell, outside the simulated world.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result};

mod procs;
use procs::ProcCluster;

/// `GET path` over plain HTTP/1.1: the status code and the body.
fn get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: curl/8\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of the response head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, body.to_string()))
}

/// Parses `text` as the Prometheus text format and checks that every sample's family has
/// HELP and TYPE lines; returns the family names.
fn parse(role: &str, text: &str) -> Result<Vec<String>> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape =
        prometheus_parse::Scrape::parse(lines).with_context(|| format!("{role}: {text}"))?;
    anyhow::ensure!(!scrape.samples.is_empty(), "{role}: no samples");
    let mut families: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            families.push(name.to_string());
            anyhow::ensure!(
                text.contains(&format!("# HELP {name} ")),
                "{role}: {name} has TYPE but no HELP"
            );
        }
    }
    for sample in &scrape.samples {
        let family = families.iter().any(|f| {
            sample.metric == *f
                || sample.metric.strip_prefix(f.as_str()).is_some_and(|rest| {
                    ["_bucket", "_sum", "_count", "_total", "_created"].contains(&rest)
                })
        });
        anyhow::ensure!(family, "{role}: sample {} has no TYPE line", sample.metric);
    }
    Ok(families)
}

#[test]
fn every_roles_metrics_endpoint_serves_prometheus_text() -> Result<()> {
    let cluster = ProcCluster::start(2, 2, 40)?;
    cluster.wait_ready(Duration::from_secs(60))?;
    let metrics = cluster.ports.metrics;
    let endpoints = [
        (
            "metastore",
            format!("{}:{metrics}", cluster.nodes["meta-1"].ip),
        ),
        (
            "distributor",
            format!("{}:{metrics}", cluster.nodes["dist-1"].ip),
        ),
        (
            "edge",
            format!("{}:{}", cluster.nodes["edge-1"].ip, cluster.ports.ws),
        ),
    ];
    for (role, addr) in &endpoints {
        let (status, body) =
            get(addr, "/metrics").with_context(|| format!("{role} {addr}\n{}", cluster.logs()))?;
        anyhow::ensure!(status == 200, "{role}: /metrics answered {status}: {body}");
        let families = parse(role, &body)?;
        let expected: &[&str] = match *role {
            "metastore" => &["raft_term", "raft_leader", "apply", "fsync", "watch"],
            "distributor" => &["publish", "relay", "history", "topics"],
            _ => &["connections", "frames", "queue", "close", "latency"],
        };
        for needle in expected {
            anyhow::ensure!(
                families.iter().any(|f| f.contains(needle)),
                "{role}: no family about {needle:?} in {families:?}"
            );
        }
        // The health endpoints the probes use.
        for path in ["/healthz", "/readyz"] {
            let (status, body) = get(addr, path)?;
            anyhow::ensure!(status == 200, "{role} {path}: {status} {body}");
        }
    }
    // A distributor lists its busiest topics for the dashboard.
    let (status, body) = get(&endpoints[1].1, "/topics")?;
    anyhow::ensure!(status == 200, "/topics: {status}");
    let topics: serde_json::Value = serde_json::from_str(&body)?;
    anyhow::ensure!(topics["topics"].is_array(), "/topics: {body}");
    Ok(())
}

/// An edge's `/readyz` follows its lease: with every metastore node stopped, the edge says
/// 503 once its lease's TTL (3 s) has passed unconfirmed, while `/healthz` stays 200 (the
/// process is alive; restarting it would not help); with the metastore back, 200 again.
#[test]
fn an_edge_is_not_ready_while_the_metastore_cannot_confirm_its_lease() -> Result<()> {
    let mut cluster = ProcCluster::start(1, 1, 60)?;
    cluster.wait_ready(Duration::from_secs(60))?;
    let edge = format!("{}:{}", cluster.nodes["edge-1"].ip, cluster.ports.ws);
    let (status, body) = get(&edge, "/readyz")?;
    anyhow::ensure!(status == 200, "ready before: {status} {body}");

    for name in ["meta-1", "meta-2", "meta-3"] {
        cluster.terminate(name, Duration::from_secs(20))?;
    }
    let refused = procs::wait_until(Duration::from_secs(20), || match get(&edge, "/readyz") {
        Ok((503, body)) => Some(body),
        _ => None,
    })
    .with_context(|| cluster.logs())?;
    anyhow::ensure!(refused.contains("lease"), "why not ready: {refused}");
    let (status, body) = get(&edge, "/healthz")?;
    anyhow::ensure!(status == 200, "alive meanwhile: {status} {body}");

    for name in ["meta-1", "meta-2", "meta-3"] {
        cluster.start_node(name)?;
    }
    procs::wait_until(Duration::from_secs(60), || {
        matches!(get(&edge, "/readyz"), Ok((200, _))).then_some(())
    })
    .with_context(|| cluster.logs())?;
    Ok(())
}
