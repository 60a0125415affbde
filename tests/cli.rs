//! The `firetower` binary as an operator runs it: real processes, real sockets, real sled.

// Real processes in real time: this test is a shell, outside the simulated world.
#![allow(clippy::disallowed_methods)]

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

const BIN: &str = env!("CARGO_BIN_EXE_firetower");

fn firetower(args: &[&str]) -> Result<Output> {
    Ok(Command::new(BIN).args(args).stdin(Stdio::null()).output()?)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[test]
fn bad_arguments_exit_64_naming_the_value() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_string_lossy().to_string();
    let peers = "1=127.0.0.1:7101,2=127.0.0.1:7102";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "metastore",
                "--id",
                "abc",
                "--listen",
                "127.0.0.1:1",
                "--data-dir",
                &data,
                "--peers",
                peers,
                "--allow-plaintext",
            ],
            "abc",
        ),
        (
            vec![
                "metastore",
                "--id",
                "4",
                "--listen",
                "127.0.0.1:1",
                "--data-dir",
                &data,
                "--peers",
                peers,
                "--allow-plaintext",
            ],
            "node id 4",
        ),
        (
            vec![
                "metastore",
                "--id",
                "0",
                "--listen",
                "127.0.0.1:1",
                "--data-dir",
                &data,
                "--peers",
                peers,
                "--allow-plaintext",
            ],
            "at least 1",
        ),
        (
            vec![
                "metastore",
                "--id",
                "1",
                "--listen",
                "nowhere",
                "--data-dir",
                &data,
                "--peers",
                peers,
                "--allow-plaintext",
            ],
            "\"nowhere\"",
        ),
        (
            vec![
                "metastore",
                "--id",
                "1",
                "--listen",
                "127.0.0.1:1",
                "--data-dir",
                &data,
                "--peers",
                "1=x",
                "--allow-plaintext",
            ],
            "\"1=x\"",
        ),
        (vec!["status", "--metastore", "localhost"], "\"localhost\""),
        (
            vec![
                "hot",
                "set",
                "--metastore",
                "127.0.0.1:1",
                "--topic",
                "a,b",
                "--shards",
                "4",
            ],
            "\"a,b\"",
        ),
    ];
    for (args, needle) in cases {
        let out = firetower(&args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?} should name {needle}: {stderr}"
        );
    }
    let out = firetower(&["status", "--metastore", "127.0.0.1:1"])?;
    assert_eq!(
        out.status.code(),
        Some(69),
        "nothing listening: unavailable"
    );
    Ok(())
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The metastore's API keys in a test's directory: an `admin` key the CLI presents, and the
/// `member` key the nodes present to each other (docs/security.md).
struct MetaKeys {
    admin_file: String,
    node_args: Vec<String>,
    /// The CA the CLI checks the nodes' certificates with (`--ca-file`).
    ca_file: String,
    tls_dir: std::path::PathBuf,
}

impl MetaKeys {
    /// Node `id`'s certificate flags.
    fn tls_args(&self, id: u64) -> Vec<String> {
        let file = |ext: &str| {
            self.tls_dir
                .join(format!("metastore-{id}.{ext}"))
                .to_string_lossy()
                .to_string()
        };
        vec![
            "--tls-cert".into(),
            file("crt"),
            "--tls-key".into(),
            file("key"),
            "--tls-ca".into(),
            self.ca_file.clone(),
        ]
    }
}

fn meta_keys(dir: &std::path::Path) -> Result<MetaKeys> {
    use firetower_distributor::api::hash_key;
    let (admin, member) = ("ftk_cli_test_admin", "ftk_cli_test_member");
    let admin_file = dir.join("admin.key");
    let member_file = dir.join("member.key");
    std::fs::write(&admin_file, admin)?;
    std::fs::write(&member_file, member)?;
    let pki = firetower_net::tls::DevPki::new()?;
    let tls_dir = dir.join("tls");
    for id in 1..=3 {
        pki.write_node(
            &tls_dir,
            firetower_net::NodeIdentity::new(firetower_net::Role::Metastore, id),
        )?;
    }
    Ok(MetaKeys {
        ca_file: tls_dir.join("ca.crt").to_string_lossy().to_string(),
        tls_dir,
        admin_file: admin_file.to_string_lossy().to_string(),
        node_args: vec![
            "--api-key".into(),
            format!("ops:admin:{}", hash_key(admin)),
            "--api-key".into(),
            format!("cluster:member:{}", hash_key(member)),
            "--member-key-file".into(),
            member_file.to_string_lossy().to_string(),
        ],
    })
}

fn start(
    id: u64,
    addr: &str,
    data: &str,
    peers: &str,
    cluster: &str,
    keys: &MetaKeys,
) -> Result<Proc> {
    let child = Command::new(BIN)
        .args([
            "metastore",
            "--id",
            &id.to_string(),
            "--listen",
            addr,
            "--data-dir",
            data,
            "--peers",
            peers,
        ])
        .args(["--cluster", cluster])
        .args(&keys.node_args)
        .args(keys.tls_args(id))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Proc(child))
}

/// `firetower hot set` of `topic` into 4 shards, with the key in `key_file` (if any).
fn hot_set(all: &str, topic: &str, keys: &MetaKeys, key_file: Option<&str>) -> Result<Output> {
    let mut args = vec![
        "hot",
        "set",
        "--metastore",
        all,
        "--topic",
        topic,
        "--shards",
        "4",
        "--ca-file",
        &keys.ca_file,
    ];
    if let Some(file) = key_file {
        args.extend(["--api-key-file", file]);
    }
    firetower(&args)
}

fn status_json(addrs: &str, keys: &MetaKeys) -> Option<serde_json::Value> {
    let out = firetower(&[
        "status",
        "--metastore",
        addrs,
        "--json",
        "--api-key-file",
        &keys.admin_file,
        "--ca-file",
        &keys.ca_file,
    ])
    .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
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
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killed_leader_process_is_replaced_and_rejoins_from_its_data_dir() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let addrs: Vec<String> = (0..3)
        .map(|_| Ok(format!("127.0.0.1:{}", free_port()?)))
        .collect::<Result<_>>()?;
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let all = addrs.join(",");
    let keys = meta_keys(dir.path())?;
    let data = |id: usize| {
        dir.path()
            .join(format!("n{id}"))
            .to_string_lossy()
            .to_string()
    };
    let mut procs: Vec<Option<Proc>> = Vec::new();
    for id in 1..=3 {
        procs.push(Some(start(
            id as u64,
            &addrs[id - 1],
            &data(id),
            &peers,
            "cli",
            &keys,
        )?));
    }
    let leader = wait_until(Duration::from_secs(15), || {
        let s = status_json(&all, &keys)?;
        let nodes = s["nodes"].as_array()?;
        (nodes.len() == 3 && nodes.iter().all(|n| n["reachable"] == true)).then_some(())?;
        s["leader"].as_u64()
    })?;
    // Without a key, the metastore answers nobody (it used to take a Register or a hot
    // topic from anyone who reached the port).
    let out = firetower(&["status", "--metastore", &all, "--ca-file", &keys.ca_file])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("missing API key"), "{stderr}");
    let out = hot_set(&all, "nokey", &keys, None)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a split without a key was taken");
    assert!(stderr.contains("missing API key"), "{stderr}");
    let out = hot_set(&all, "before", &keys, Some(&keys.admin_file))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGKILL: no graceful shutdown, only what was fsync'd survives.
    let mut killed = procs[leader as usize - 1]
        .take()
        .ok_or_else(|| anyhow!("leader process missing"))?;
    killed.0.kill()?;
    killed.0.wait()?;
    let killed_at = Instant::now();
    let new_leader = wait_until(Duration::from_secs(5), || {
        let s = status_json(&all, &keys)?;
        s["leader"].as_u64().filter(|&l| l != leader)
    })?;
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(2),
        "failover took {failover:?} (new leader {new_leader})"
    );
    let out = hot_set(&all, "after", &keys, Some(&keys.admin_file))?;
    assert!(
        out.status.success(),
        "writes continue: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Restarted from its data dir, the node catches up: every node applied the same index
    // and the leader's revision covers both writes.
    let id = leader as usize;
    procs[id - 1] = Some(start(
        leader,
        &addrs[id - 1],
        &data(id),
        &peers,
        "cli",
        &keys,
    )?);
    wait_until(Duration::from_secs(15), || {
        let s = status_json(&all, &keys)?;
        let applied: Vec<u64> = s["nodes"]
            .as_array()?
            .iter()
            .filter_map(|n| n["last_applied"].as_u64())
            .collect();
        (applied.len() == 3 && applied.iter().all(|a| *a == applied[0]) && s["revision"] == 2)
            .then_some(())
    })?;
    // No edge is registered, so both splits committed at once.
    let s = status_json(&all, &keys).ok_or_else(|| anyhow!("status failed"))?;
    let hot: Vec<(&str, u64, bool)> = s["hot_topics"]
        .as_array()
        .ok_or_else(|| anyhow!("no hot_topics in {s}"))?
        .iter()
        .filter_map(|h| {
            Some((
                h["topic"].as_str()?,
                h["shards"].as_u64()?,
                h["committed"].as_bool()?,
            ))
        })
        .collect();
    assert_eq!(hot, vec![("after", 4, true), ("before", 4, true)]);

    // The same data dir under another cluster name is refused with a reason.
    let mut stopped = procs[id - 1]
        .take()
        .ok_or_else(|| anyhow!("restarted process missing"))?;
    stopped.0.kill()?;
    stopped.0.wait()?;
    let leader_id = leader.to_string();
    let out = Command::new(BIN)
        .args([
            "metastore",
            "--id",
            &leader_id,
            "--listen",
            &addrs[id - 1],
            "--data-dir",
            &data(id),
            "--peers",
            &peers,
            "--cluster",
            "other",
        ])
        .args(&keys.node_args)
        .args(keys.tls_args(leader))
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("belongs to cluster \"cli\""), "{stderr}");
    Ok(())
}

/// `firetower certs` makes what a deployment needs (issue 15): certificates that load as
/// the nodes load them, API key entries the nodes accept, and it never overwrites keys.
#[test]
fn certs_writes_what_each_role_takes_and_never_overwrites() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out_dir = dir.path().join("deploy");
    let out_arg = out_dir.to_string_lossy().to_string();
    let out = firetower(&[
        "certs",
        "--out",
        &out_arg,
        "--distributors",
        "2",
        "--edges",
        "1",
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "metastore-1",
        "metastore-3",
        "distributor-1",
        "distributor-2",
        "edge-1",
    ] {
        let files = firetower_net::TlsFiles {
            cert: out_dir.join(format!("tls/{name}.crt")),
            key: out_dir.join(format!("tls/{name}.key")),
            ca: out_dir.join("tls/ca.crt"),
        };
        firetower_net::TlsMaterial::load(&files)
            .map_err(|e| anyhow!("{name}: {e}"))?
            .server_config()
            .map_err(|e| anyhow!("{name}: {e}"))?;
    }
    assert!(!out_dir.join("tls/edge-2.crt").exists());
    assert!(!out_dir.join("tls/metastore-4.crt").exists());
    // Each certificate carries its node's identity.
    let edge = firetower_net::TlsMaterial::load(&firetower_net::TlsFiles {
        cert: out_dir.join("tls/edge-1.crt"),
        key: out_dir.join("tls/edge-1.key"),
        ca: out_dir.join("tls/ca.crt"),
    })?;
    assert_eq!(
        edge.identity(),
        Some(firetower_net::NodeIdentity::new(
            firetower_net::Role::Edge,
            1
        ))
    );
    // The printed entries are what the nodes parse, and they match the key files.
    let entries: Vec<firetower_distributor::ApiKeyEntry> = stdout
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--api-key")
        .map(|w| firetower_distributor::ApiKeyEntry::parse(w[1]))
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(entries.len(), 2, "{stdout}");
    for (entry, file) in entries.iter().zip(["auth/api.key", "auth/member.key"]) {
        let key = std::fs::read_to_string(out_dir.join(file))?;
        assert_eq!(entry.sha256, firetower_distributor::api::hash_key(&key));
    }
    assert!(out_dir.join("auth/jwt-hs256.key").exists());
    // A second run into the same directory changes nothing.
    let member = std::fs::read_to_string(out_dir.join("auth/member.key"))?;
    let again = firetower(&["certs", "--out", &out_arg])?;
    assert_eq!(again.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    assert_eq!(
        std::fs::read_to_string(out_dir.join("auth/member.key"))?,
        member
    );
    Ok(())
}
