//! A cluster that starts from config files alone (issue 16): every node on a loopback
//! address of its own (127.0.0.2, 127.0.0.3, …), every address in every file a host name
//! that a hosts-style file (`FIRETOWER_HOSTS_FILE`) maps, each node advertising its own
//! name. Real processes, real TLS, real sockets; a message published through one
//! distributor by name reaches a WebSocket client of the other edge.

// Real processes in real time: this test is a shell, outside the simulated world.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

mod procs;
use procs::{ProcCluster, BIN};

#[test]
fn a_cluster_starts_from_config_files_on_distinct_addresses_by_name() -> Result<()> {
    let cluster = ProcCluster::start(2, 2, 2)?;
    let mut checked = 0;
    for node in cluster.nodes.values() {
        // `config check` accepts what the node runs with.
        let check = cluster.firetower(&["config", "check", &node.file.display().to_string()])?;
        anyhow::ensure!(
            check.status.success(),
            "config check {}: {}",
            node.file.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        checked += 1;
    }
    anyhow::ensure!(checked == 7);
    // The metastore, asked by name, knows both distributors and both edges, each by the
    // name it advertises, and every slot has an owner.
    let status = cluster.wait_ready(Duration::from_secs(60))?;
    anyhow::ensure!(
        !status["members"].to_string().contains("127.0.0."),
        "an address other than the advertised names was registered: {status}"
    );

    // A client of edge 2 (dialled at its own address) gets what is published through
    // distributor 1 by name: the edges reached the distributors' QUIC by name.
    let token = cluster.token("u")?;
    let grpc = cluster.ports.grpc;
    let api_key = cluster.secret("auth/api.key");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(async {
            let (mut ws, _) = tokio_tungstenite::connect_async(cluster.ws_url(2, &token)).await?;
            ws.send(Message::text(r#"{"type":"subscribe","topic":"named"}"#))
                .await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let mut next_publish = tokio::time::Instant::now();
            let mut seen = Vec::new();
            loop {
                // Publish until one arrives: the subscription takes a moment to reach
                // the owner.
                if tokio::time::Instant::now() >= next_publish {
                    let out = cluster.firetower(&[
                        "publish",
                        "--distributor",
                        &format!("dist-1:{grpc}"),
                        "--topic",
                        "named",
                        "--data",
                        "\"by name\"",
                        "--api-key-file",
                        &api_key,
                    ])?;
                    anyhow::ensure!(
                        out.status.success(),
                        "publish by name: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    next_publish = tokio::time::Instant::now() + Duration::from_millis(500);
                }
                let frame = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
                match frame {
                    Ok(Some(Ok(Message::Text(t)))) if t.contains("by name") => return Ok(()),
                    Ok(Some(Ok(Message::Text(t)))) => seen.push(t.to_string()),
                    Ok(Some(Ok(_))) | Err(_) => {}
                    Ok(other) => bail!("the client's connection ended: {other:?}"),
                }
                if tokio::time::Instant::now() > deadline {
                    bail!("no delivery within 30 s; the client saw {seen:?}");
                }
            }
        })
        .with_context(|| cluster.logs())?;
    Ok(())
}

/// docs/configuration.md shows every role's defaults exactly as the binary prints them,
/// and has a line for every key: a field added, renamed or given another default without
/// the docs fails here.
#[test]
fn the_configuration_docs_match_the_config_structs() -> Result<()> {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))?;
    for role in ["metastore", "distributor", "edge"] {
        let out = Command::new(BIN)
            .args(["config", "defaults", role])
            .output()?;
        anyhow::ensure!(out.status.success(), "config defaults {role}");
        let text = String::from_utf8(out.stdout)?;
        anyhow::ensure!(
            docs.contains(&format!("```toml\n{text}```")),
            "docs/configuration.md does not show `firetower config defaults {role}` as it is now:\n{text}"
        );
        let table: toml::Table = toml::from_str(&text)?;
        let mut keys = Vec::new();
        leaf_keys("", &table[role], &mut keys);
        for key in keys {
            anyhow::ensure!(
                docs.contains(&format!("| `{key}` |")),
                "docs/configuration.md has no line for [{role}] `{key}`"
            );
        }
    }
    Ok(())
}

fn leaf_keys(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(table) if prefix != "peers" => {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_keys(&path, value, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// `config check`: the environment goes over the file, and a bad key or value is an
/// error (exit 64) that names it.
#[test]
fn config_check_applies_the_environment_and_names_bad_keys() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("edge.toml");
    std::fs::write(
        &file,
        "[edge]\nid = 1\nmetastore = [\"meta-1:7101\"]\nws_listen = \"0.0.0.0:9999\"\n\
         ws_advertise = \"edge-1.example:9999\"\n\
         [edge.tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n[edge.auth]\nallow_anonymous = true\n",
    )?;
    let check = |env: &[(&str, &str)]| -> Result<std::process::Output> {
        Ok(Command::new(BIN)
            .args(["config", "check"])
            .arg(&file)
            .envs(env.iter().copied())
            .output()?)
    };
    let out = check(&[
        ("FIRETOWER_EDGE__ID", "7"),
        ("FIRETOWER_EDGE__RATE__CLOSE_AFTER", "5"),
    ])?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    let effective: toml::Table = toml::from_str(&String::from_utf8(out.stdout)?)?;
    let edge = &effective["edge"];
    anyhow::ensure!(edge["id"].as_integer() == Some(7), "{effective}");
    anyhow::ensure!(
        edge["rate"]["close_after"].as_integer() == Some(5),
        "{effective}"
    );
    anyhow::ensure!(
        edge["ws_advertise"].as_str() == Some("edge-1.example:9999"),
        "{effective}"
    );
    for (env, needle) in [
        (
            ("FIRETOWER_EDGE__AUTH__ALLOW_ANONYMUS", "true"),
            "edge.auth.allow_anonymus",
        ),
        (("FIRETOWER_EDGE__ID", "one"), "edge.id"),
        (
            ("FIRETOWER_EDGE__WS_ADVERTISE", "0.0.0.0:9999"),
            "ws_advertise",
        ),
        (("FIRETOWER_EDGE__METASTORE", "[\"no port\"]"), "metastore"),
    ] {
        let out = check(&[env])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(out.status.code() == Some(64), "{env:?}: {stderr}");
        anyhow::ensure!(
            stderr.contains(needle),
            "{env:?} should name {needle}: {stderr}"
        );
    }
    std::fs::write(&file, "[edge]\nid = 1\n[metastore]\nid = 1\n")?;
    let out = check(&[])?;
    anyhow::ensure!(out.status.code() == Some(64), "two tables");
    Ok(())
}

/// IPv6: a metastore node on `[::1]` from a config file, asked for its status at that
/// address.
#[test]
fn a_node_listens_and_is_reached_on_ipv6() -> Result<()> {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        // A host without IPv6 loopback cannot run this; say so rather than pass silently.
        bail!("this host has no IPv6 loopback ([::1]); the IPv6 test cannot run");
    };
    let port = probe.local_addr()?.port();
    drop(probe);
    let dir = tempfile::tempdir()?;
    let admin = "ftk_ipv6_test_admin_key_0123456789";
    let file = dir.path().join("metastore.toml");
    std::fs::write(
        &file,
        format!(
            "[metastore]\nid = 1\ndata_dir = {:?}\nallow_plaintext = true\n\
             [metastore.peers]\n1 = \"[::1]:{port}\"\n\
             [metastore.api]\nkeys = [{{ name = \"ops\", sha256 = {:?}, scopes = [\"admin\", \"member\"] }}]\n",
            dir.path().join("data").display().to_string(),
            firetower_distributor::api::hash_key(admin),
        ),
    )?;
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, admin)?;
    let mut node = Command::new(BIN)
        .args(["metastore", "--config"])
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let addr = format!("[::1]:{port}");
    let answered = procs::wait_until(Duration::from_secs(30), || {
        let out = Command::new(BIN)
            .args(["status", "--metastore", &addr, "--json", "--api-key-file"])
            .arg(&key_file)
            .output()
            .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (status["leader"].as_u64() == Some(1)).then_some(status)
    });
    let _ = node.kill();
    let _ = node.wait();
    let status = answered?;
    anyhow::ensure!(
        status["nodes"][0]["addr"].as_str() == Some(addr.as_str()),
        "{status}"
    );
    Ok(())
}
