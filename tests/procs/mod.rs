//! A cluster of real `firetower` processes started from config files: 3 metastore nodes,
//! distributors and edges, each on a loopback address of its own (127.0.0.2, …) and every
//! address in every file a host name that a hosts-style file (`FIRETOWER_HOSTS_FILE`)
//! maps, each node advertising its own name. Nodes can be stopped with SIGTERM and started
//! again on the same file and data.

// Real processes in real time: outside the simulated world.
#![allow(clippy::disallowed_methods, dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const BIN: &str = env!("CARGO_BIN_EXE_firetower");

/// One node's process and files.
pub struct NodeProc {
    pub role: &'static str,
    pub id: u64,
    pub ip: String,
    pub file: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

/// The listeners' ports, the same number on every node's address.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub raft: u16,
    pub grpc: u16,
    pub quic: u16,
    pub ws: u16,
    pub metrics: u16,
}

pub struct ProcCluster {
    pub root: tempfile::TempDir,
    pub hosts: PathBuf,
    pub secrets: PathBuf,
    pub ports: Ports,
    /// By name: meta-1, dist-1, edge-1, …
    pub nodes: BTreeMap<String, NodeProc>,
}

/// A port free on every address of `ips`, for TCP and UDP.
fn free_port_everywhere(ips: &[String]) -> Result<u16> {
    for _ in 0..50 {
        let probe = std::net::TcpListener::bind("127.0.0.2:0")?;
        let port = probe.local_addr()?.port();
        drop(probe);
        let free = ips.iter().all(|ip| {
            std::net::TcpListener::bind((ip.as_str(), port)).is_ok()
                && std::net::UdpSocket::bind((ip.as_str(), port)).is_ok()
        });
        if free {
            return Ok(port);
        }
    }
    bail!("no port free on every loopback address")
}

pub fn wait_until<T>(within: Duration, mut probe: impl FnMut() -> Option<T>) -> Result<T> {
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

impl ProcCluster {
    /// Writes credentials and config files, and starts every node.
    pub fn start(distributors: u64, edges: u64, first_ip: u8) -> Result<ProcCluster> {
        let root = tempfile::tempdir()?;
        let secrets = root.path().join("secrets");
        let out = Command::new(BIN)
            .args(["certs", "--out"])
            .arg(&secrets)
            .args(["--distributors", &distributors.to_string()])
            .args(["--edges", &edges.to_string()])
            .output()?;
        let printed = String::from_utf8_lossy(&out.stdout).to_string();
        anyhow::ensure!(out.status.success(), "certs: {out:?}");
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

        let mut names: Vec<(&'static str, &'static str, u64)> = Vec::new();
        names.extend((1..=3).map(|id| ("metastore", "meta", id)));
        names.extend((1..=distributors).map(|id| ("distributor", "dist", id)));
        names.extend((1..=edges).map(|id| ("edge", "edge", id)));
        let ips: Vec<String> = (0..names.len())
            .map(|i| format!("127.0.0.{}", usize::from(first_ip) + i))
            .collect();
        let hosts = root.path().join("hosts");
        let mut hosts_text = String::from("# the cluster's names, as DNS would give them\n");
        for ((_, short, id), ip) in names.iter().zip(&ips) {
            hosts_text.push_str(&format!("{ip} {short}-{id}\n"));
        }
        std::fs::write(&hosts, hosts_text)?;
        let ports = Ports {
            raft: free_port_everywhere(&ips)?,
            grpc: free_port_everywhere(&ips)?,
            quic: free_port_everywhere(&ips)?,
            ws: free_port_everywhere(&ips)?,
            metrics: free_port_everywhere(&ips)?,
        };
        let s = |p: &str| secrets.join(p).display().to_string();
        let raft = ports.raft;
        let metastores = format!("[\"meta-1:{raft}\", \"meta-2:{raft}\", \"meta-3:{raft}\"]");
        let tls = |role: &str, id: u64| {
            format!(
                "cert = {:?}\nkey = {:?}\nca = {:?}\n",
                s(&format!("tls/{role}-{id}.crt")),
                s(&format!("tls/{role}-{id}.key")),
                s("tls/ca.crt")
            )
        };
        let mut nodes = BTreeMap::new();
        for ((role, short, id), ip) in names.into_iter().zip(ips) {
            let name = format!("{short}-{id}");
            let text = match role {
                "metastore" => format!(
                    "[metastore]\nid = {id}\ndata_dir = {:?}\nmetrics_listen = \"{name}:{}\"\n\
                     [metastore.peers]\n1 = \"meta-1:{raft}\"\n2 = \"meta-2:{raft}\"\n3 = \"meta-3:{raft}\"\n\
                     [metastore.api]\nkeys = [{keys_toml}]\nmember_key_file = {:?}\n\
                     [metastore.tls]\n{}",
                    root.path().join(format!("data-{id}")).display().to_string(),
                    ports.metrics,
                    s("auth/member.key"),
                    tls("metastore", id),
                ),
                "distributor" => format!(
                    "[distributor]\nid = {id}\nmetastore = {metastores}\n\
                     grpc_listen = \"{name}:{}\"\nquic_listen = \"{name}:{}\"\n\
                     metrics_listen = \"{name}:{}\"\n\
                     [distributor.api]\nkeys = [{keys_toml}]\nmember_key_file = {:?}\n\
                     [distributor.tls]\n{}",
                    ports.grpc,
                    ports.quic,
                    ports.metrics,
                    s("auth/member.key"),
                    tls("distributor", id),
                ),
                _ => format!(
                    "[edge]\nid = {id}\nmetastore = {metastores}\nws_listen = \"{name}:{}\"\n\
                     member_key_file = {:?}\n\
                     [edge.auth]\njwt_hs256_key_file = {:?}\n\
                     [edge.tls]\n{}",
                    ports.ws,
                    s("auth/member.key"),
                    s("auth/jwt-hs256.key"),
                    tls("edge", id),
                ),
            };
            let file = root.path().join(format!("{name}.toml"));
            std::fs::write(&file, text)?;
            nodes.insert(
                name.clone(),
                NodeProc {
                    role,
                    id,
                    ip,
                    file,
                    log: root.path().join(format!("{name}.log")),
                    child: None,
                    starts: 0,
                },
            );
        }
        let mut cluster = ProcCluster {
            root,
            hosts,
            secrets,
            ports,
            nodes,
        };
        let names: Vec<String> = cluster.nodes.keys().cloned().collect();
        for name in names {
            cluster.start_node(&name)?;
        }
        Ok(cluster)
    }

    pub fn secret(&self, path: &str) -> String {
        self.secrets.join(path).display().to_string()
    }

    /// Runs `firetower ARGS` with the hosts file, to its end.
    pub fn firetower(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(BIN)
            .args(args)
            .env("FIRETOWER_HOSTS_FILE", &self.hosts)
            .stdin(Stdio::null())
            .output()?)
    }

    /// Starts (again) the node `name` on its file; its log is appended to.
    pub fn start_node(&mut self, name: &str) -> Result<()> {
        let hosts = self.hosts.clone();
        let node = self.nodes.get_mut(name).context("no such node")?;
        anyhow::ensure!(node.child.is_none(), "{name} is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        node.starts += 1;
        let child = Command::new(BIN)
            .args([node.role, "--config"])
            .arg(&node.file)
            .env("FIRETOWER_HOSTS_FILE", hosts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        Ok(())
    }

    /// Sends SIGTERM to `name` and waits (up to `within`) for it to exit.
    pub fn terminate(&mut self, name: &str, within: Duration) -> Result<ExitStatus> {
        let node = self.nodes.get_mut(name).context("no such node")?;
        let mut child = node.child.take().context("not running")?;
        let kill = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        anyhow::ensure!(kill.success(), "kill -TERM {name}");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{name} did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node's log.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|(name, node)| {
                format!(
                    "--- {name}\n{}",
                    std::fs::read_to_string(&node.log).unwrap_or_default()
                )
            })
            .collect()
    }

    /// The metastore addresses, by name.
    pub fn metastores(&self) -> String {
        let raft = self.ports.raft;
        format!("meta-1:{raft},meta-2:{raft},meta-3:{raft}")
    }

    /// `firetower status --json`, when a metastore answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self
            .firetower(&[
                "status",
                "--metastore",
                &self.metastores(),
                "--json",
                "--api-key-file",
                &self.secret("auth/api.key"),
                "--ca-file",
                &self.secret("tls/ca.crt"),
            ])
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until every metastore node answers with one leader, every distributor and
    /// edge is registered under its name, and every slot has an owner.
    pub fn wait_ready(&self, within: Duration) -> Result<serde_json::Value> {
        let (grpc, quic, ws) = (self.ports.grpc, self.ports.quic, self.ports.ws);
        wait_until(within, || {
            let status = self.status()?;
            let nodes_up = status["nodes"]
                .as_array()?
                .iter()
                .all(|n| n["reachable"].as_bool() == Some(true));
            let text = status["members"].to_string();
            let everyone = self.nodes.iter().all(|(name, node)| match node.role {
                "distributor" => {
                    text.contains(&format!("{name}:{grpc}"))
                        && text.contains(&format!("{name}:{quic}"))
                }
                "edge" => text.contains(&format!("{name}:{ws}")),
                _ => true,
            });
            let owned = status["unowned_slots"].as_u64() == Some(0);
            let leader = status["leader"].as_u64().is_some();
            (nodes_up && everyone && owned && leader).then_some(status)
        })
        .with_context(|| self.logs())
    }

    /// A client token for `user`, good for every topic.
    pub fn token(&self, user: &str) -> Result<String> {
        let out = self.firetower(&[
            "token",
            "--key-file",
            &self.secret("auth/jwt-hs256.key"),
            "--user",
            user,
            "--subscribe",
            "*",
            "--publish",
            "*",
        ])?;
        anyhow::ensure!(out.status.success(), "token: {out:?}");
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Edge `id`'s WebSocket URL (at its address: the test process has no hosts file).
    pub fn ws_url(&self, id: u64, token: &str) -> String {
        let ip = &self.nodes[&format!("edge-{id}")].ip;
        format!("ws://{ip}:{}/ws?token={token}", self.ports.ws)
    }

    /// Distributor `id`'s gRPC address (at its address).
    pub fn grpc_addr(&self, id: u64) -> String {
        let ip = &self.nodes[&format!("dist-{id}")].ip;
        format!("{ip}:{}", self.ports.grpc)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
