//! A cluster that starts from config files alone (issue 16): every node on a loopback
//! address of its own (127.0.0.2, 127.0.0.3, …), every address in every file a host name
//! that a hosts-style file (`FIRETOWER_HOSTS_FILE`) maps, each node advertising its own
//! name. Real processes, real TLS, real sockets; a message published through one
//! distributor by name reaches a WebSocket client of the other edge.

// Real processes in real time: this test is a shell, outside the simulated world.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_firetower");

struct Proc(Child, &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The nodes: name, loopback address.
const NODES: [(&str, &str); 7] = [
    ("meta-1", "127.0.0.2"),
    ("meta-2", "127.0.0.3"),
    ("meta-3", "127.0.0.4"),
    ("dist-1", "127.0.0.5"),
    ("dist-2", "127.0.0.6"),
    ("edge-1", "127.0.0.7"),
    ("edge-2", "127.0.0.8"),
];

/// A port free on every node's address (each node binds its own address, so one port
/// number per kind of listener is enough).
fn free_port_everywhere() -> Result<u16> {
    for _ in 0..50 {
        let probe = std::net::TcpListener::bind("127.0.0.2:0")?;
        let port = probe.local_addr()?.port();
        drop(probe);
        let free = NODES.iter().all(|(_, ip)| {
            std::net::TcpListener::bind((*ip, port)).is_ok()
                && std::net::UdpSocket::bind((*ip, port)).is_ok()
        });
        if free {
            return Ok(port);
        }
    }
    bail!("no port free on every loopback address")
}

fn firetower(args: &[&str], hosts: &Path) -> Result<std::process::Output> {
    Ok(Command::new(BIN)
        .args(args)
        .env("FIRETOWER_HOSTS_FILE", hosts)
        .stdin(Stdio::null())
        .output()?)
}

fn wait_until<T>(within: Duration, mut probe: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("condition not met within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_cluster_starts_from_config_files_on_distinct_addresses_by_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    // Credentials, as an operator makes them.
    let secrets = root.join("secrets");
    let out = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(&secrets)
        .output()?;
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(out.status.success(), "certs: {:?}", out);
    let keys: Vec<firetower_distributor::ApiKeyEntry> = printed
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--api-key")
        .map(|w| firetower_distributor::ApiKeyEntry::parse(w[1]))
        .collect::<std::result::Result<_, _>>()?;
    anyhow::ensure!(keys.len() == 2, "{printed}");
    let keys_toml = keys
        .iter()
        .map(|k| {
            let scopes: Vec<String> = k
                .scopes
                .iter()
                .map(|s| format!("{:?}", s.as_str()))
                .collect();
            format!(
                "{{ name = {:?}, sha256 = {:?}, scopes = [{}] }}",
                k.name,
                k.sha256,
                scopes.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let s = |p: &str| secrets.join(p).display().to_string();
    let hosts = root.join("hosts");
    let mut hosts_text = String::from("# the cluster's names, as DNS would give them\n");
    for (name, ip) in NODES {
        hosts_text.push_str(&format!("{ip} {name}\n"));
    }
    std::fs::write(&hosts, hosts_text)?;

    let (raft, grpc, quic, ws) = (
        free_port_everywhere()?,
        free_port_everywhere()?,
        free_port_everywhere()?,
        free_port_everywhere()?,
    );
    let metastores = format!("[\"meta-1:{raft}\", \"meta-2:{raft}\", \"meta-3:{raft}\"]");
    let tls = |role: &str, id: u64| {
        format!(
            "cert = {:?}\nkey = {:?}\nca = {:?}\n",
            s(&format!("tls/{role}-{id}.crt")),
            s(&format!("tls/{role}-{id}.key")),
            s("tls/ca.crt")
        )
    };
    let mut files = Vec::new();
    for id in 1..=3u64 {
        let text = format!(
            "[metastore]\nid = {id}\ndata_dir = {:?}\n\
             [metastore.peers]\n1 = \"meta-1:{raft}\"\n2 = \"meta-2:{raft}\"\n3 = \"meta-3:{raft}\"\n\
             [metastore.api]\nkeys = [{keys_toml}]\nmember_key_file = {:?}\n\
             [metastore.tls]\n{}",
            root.join(format!("data-{id}")).display().to_string(),
            s("auth/member.key"),
            tls("metastore", id),
        );
        files.push(("metastore", format!("metastore-{id}"), text));
    }
    for id in 1..=2u64 {
        let text = format!(
            "[distributor]\nid = {id}\nmetastore = {metastores}\n\
             grpc_listen = \"dist-{id}:{grpc}\"\nquic_listen = \"dist-{id}:{quic}\"\n\
             [distributor.api]\nkeys = [{keys_toml}]\nmember_key_file = {:?}\n\
             [distributor.tls]\n{}",
            s("auth/member.key"),
            tls("distributor", id),
        );
        files.push(("distributor", format!("distributor-{id}"), text));
        let text = format!(
            "[edge]\nid = {id}\nmetastore = {metastores}\nws_listen = \"edge-{id}:{ws}\"\n\
             member_key_file = {:?}\n\
             [edge.auth]\njwt_hs256_key_file = {:?}\n\
             [edge.tls]\n{}",
            s("auth/member.key"),
            s("auth/jwt-hs256.key"),
            tls("edge", id),
        );
        files.push(("edge", format!("edge-{id}"), text));
    }
    let mut procs = Vec::new();
    for (role, name, text) in &files {
        let file = root.join(format!("{name}.toml"));
        std::fs::write(&file, text)?;
        // `config check` accepts what the node will run with.
        let check = firetower(&["config", "check", &file.display().to_string()], &hosts)?;
        anyhow::ensure!(
            check.status.success(),
            "config check {name}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let log = std::fs::File::create(root.join(format!("{name}.log")))?;
        let child = Command::new(BIN)
            .args([role, "--config"])
            .arg(&file)
            .env("FIRETOWER_HOSTS_FILE", &hosts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        procs.push(Proc(child, role));
    }
    let logs = || {
        files
            .iter()
            .map(|(_, name, _)| {
                format!(
                    "--- {name}\n{}",
                    std::fs::read_to_string(root.join(format!("{name}.log"))).unwrap_or_default()
                )
            })
            .collect::<String>()
    };

    // The metastore, asked by name, knows both distributors and both edges, each by the
    // name it advertises, and every slot has an owner.
    let all = format!("meta-1:{raft},meta-2:{raft},meta-3:{raft}");
    let api_key = s("auth/api.key");
    let ca = s("tls/ca.crt");
    let status = wait_until(Duration::from_secs(60), || {
        let out = firetower(
            &[
                "status",
                "--metastore",
                &all,
                "--json",
                "--api-key-file",
                &api_key,
                "--ca-file",
                &ca,
            ],
            &hosts,
        )
        .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let text = status.to_string();
        let everyone = (1..=2).all(|i| {
            text.contains(&format!("dist-{i}:{grpc}"))
                && text.contains(&format!("dist-{i}:{quic}"))
                && text.contains(&format!("edge-{i}:{ws}"))
        });
        let owned = status["unowned_slots"].as_u64() == Some(0);
        (everyone && owned).then_some(status)
    })
    .with_context(logs)?;
    anyhow::ensure!(
        !status.to_string().contains("127.0.0.1"),
        "an address other than the advertised names was registered: {status}"
    );

    // A client of edge 2 (dialled at its own address) gets what is published through
    // distributor 1 by name: the edges reached the distributors' QUIC by name.
    let token = firetower(
        &[
            "token",
            "--key-file",
            &s("auth/jwt-hs256.key"),
            "--user",
            "u",
            "--subscribe",
            "*",
        ],
        &hosts,
    )?;
    let token = String::from_utf8(token.stdout)?.trim().to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(async {
            let url = format!("ws://127.0.0.8:{ws}/ws?token={token}");
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
            ws.send(Message::text(r#"{"type":"subscribe","topic":"named"}"#))
                .await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let mut next_publish = tokio::time::Instant::now();
            let mut seen = Vec::new();
            loop {
                // Publish until one arrives: the subscription takes a moment to reach
                // the owner.
                if tokio::time::Instant::now() >= next_publish {
                    let out = firetower(
                        &[
                            "publish",
                            "--distributor",
                            &format!("dist-1:{grpc}"),
                            "--topic",
                            "named",
                            "--data",
                            "\"by name\"",
                            "--api-key-file",
                            &api_key,
                        ],
                        &hosts,
                    )?;
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
        .with_context(logs)?;
    drop(procs);
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
