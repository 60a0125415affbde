//! The metastore node's configuration: one struct, serde + `Default`, checked once by
//! [`Config::validate`] whose errors name the bad value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Configuration of one metastore node. Durations are written in milliseconds, under
/// their name with `_ms` (`heartbeat_interval_ms = 100`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id (≥ 1), one of `peers`.
    pub id: u64,
    /// The name every node of the cluster shares; RPCs and data dirs of another name are
    /// refused.
    pub cluster: String,
    /// Every voter: id → address (host:port) that serves both Raft RPC and the API.
    pub peers: BTreeMap<u64, String>,
    /// Where sled keeps this node's log and snapshots.
    pub data_dir: PathBuf,
    /// Raft leader heartbeat. Small enough that followers see a leader well within the
    /// election timeout.
    #[serde(rename = "heartbeat_interval_ms", with = "millis")]
    pub heartbeat_interval: Duration,
    /// Election timeout range. A dead leader is replaced within about `election_timeout_max`
    /// plus one election round — under 2 s with the defaults.
    #[serde(rename = "election_timeout_min_ms", with = "millis")]
    pub election_timeout_min: Duration,
    /// See `election_timeout_min`.
    #[serde(rename = "election_timeout_max_ms", with = "millis")]
    pub election_timeout_max: Duration,
    /// Build a snapshot (and compact the log) after this many applied entries. Bounds the
    /// log on disk and the replay on restart.
    pub snapshot_every: u64,
    /// How often the leader checks member leases.
    #[serde(rename = "lease_check_interval_ms", with = "millis")]
    pub lease_check_interval: Duration,
    /// The most changes kept in the watch history; a watcher further behind gets a snapshot.
    /// 200k changes is a dozen full rebalances, a few MB.
    pub watch_history_changes: usize,
    /// Events buffered per watch stream before the sender waits for the client.
    pub watch_buffer: usize,
    /// Deadline of one Raft RPC or forwarded request.
    #[serde(rename = "rpc_timeout_ms", with = "millis")]
    pub rpc_timeout: Duration,
    /// Bound on each call to this node, Raft's included, from its first byte to its
    /// answer's headers (a request whose body trickles in is cut off: CANCELLED `Timeout
    /// expired`). A watch stream goes on after its headers. More than `rpc_timeout`.
    #[serde(rename = "request_timeout_ms", with = "millis")]
    pub request_timeout: Duration,
    /// The largest accepted lease, so a member cannot pin slots forever by asking for one.
    #[serde(rename = "max_lease_ttl_ms", with = "millis")]
    pub max_lease_ttl: Duration,
    /// The most slots one interest update may name (all of them, twice).
    pub max_interest_batch: usize,
    /// The most registered members (distributors + edges). Far above any deployment we plan
    /// for; it stops a misbehaving client from growing the replicated state without end.
    pub max_members: usize,
    /// The most hot topics, for the same reason. Merged topics keep their entry (a
    /// tombstone, so their route tags only grow) and count too.
    pub max_hot_topics: usize,
    /// The most hot topics one caller (a node certificate, else an API key) makes, so one
    /// identity cannot take the whole table.
    pub max_hot_topics_per_caller: usize,
    /// The most concurrent watch streams per node; each holds a task and a buffer.
    pub max_watchers: usize,
    /// The most concurrent watch streams one caller (a node certificate, else an API key)
    /// holds on a node: a member needs one, an operator's tools a few.
    pub max_watchers_per_caller: usize,
    /// Who may call this node (API keys with scopes, docs/security.md): members (`member`
    /// scope) for every RPC, Raft's included; operators (`admin`) for reads and hot-topic
    /// changes. `api.member_key_file` is the key this node presents to the other nodes.
    pub api: firetower_net::api_auth::ApiAuthConfig,
    /// This node's certificate (`metastore-ID`: the identity `firetower://metastore/ID` and
    /// the name `metastore.firetower`), key and the cluster CA: every connection to and
    /// from it is TLS, and members must present their own certificates (docs/security.md).
    pub tls: firetower_net::TlsFiles,
    /// Serve and dial plaintext gRPC instead (API keys still hold): only for a cluster on
    /// a network nobody else reaches.
    pub allow_plaintext: bool,
    /// The address the binary binds the Raft/API listener to; empty: this node's entry in
    /// `peers` (what the others dial: its advertised address).
    pub listen: String,
    /// The HTTP address serving `/metrics`, `/healthz` and `/readyz`; empty: none.
    pub metrics_listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: 1,
            cluster: "firetower".into(),
            peers: BTreeMap::from([(1, "127.0.0.1:7101".into())]),
            data_dir: PathBuf::from("data/metastore-1"),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(400),
            election_timeout_max: Duration::from_millis(800),
            snapshot_every: 5000,
            lease_check_interval: Duration::from_millis(100),
            watch_history_changes: 200_000,
            watch_buffer: 256,
            rpc_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            max_lease_ttl: Duration::from_secs(300),
            max_interest_batch: 2 * firetower_proto::SLOT_COUNT,
            max_members: 10_000,
            max_hot_topics: 10_000,
            max_hot_topics_per_caller: 1000,
            max_watchers: 1024,
            max_watchers_per_caller: 64,
            api: firetower_net::api_auth::ApiAuthConfig::default(),
            tls: firetower_net::TlsFiles::default(),
            allow_plaintext: false,
            listen: String::new(),
            metrics_listen: String::new(),
        }
    }
}

/// A [`Duration`] as a whole number of milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Parses `1=127.0.0.1:7101,2=127.0.0.1:7102,…`.
pub fn parse_peers(list: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |reason: &str| ConfigError::BadPeer {
            entry: entry.to_string(),
            reason: reason.to_string(),
        };
        let (id, addr) = entry
            .split_once('=')
            .ok_or_else(|| bad("expected ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| bad("the id is not a number"))?;
        if id == 0 {
            return Err(bad("ids start at 1"));
        }
        let addr = addr.trim();
        check_addr(addr).map_err(|reason| bad(&reason))?;
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(ConfigError::DuplicatePeer { id });
        }
    }
    if peers.is_empty() {
        return Err(ConfigError::BadPeer {
            entry: list.to_string(),
            reason: "no peers given".into(),
        });
    }
    Ok(peers)
}

/// Checks that `addr` is `host:port` with a non-zero port.
fn check_addr(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(());
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(())
        }
        _ => Err(format!("{addr:?} is not HOST:PORT")),
    }
}

impl Config {
    /// Checks every value; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId(self.id));
        }
        let name_ok = !self.cluster.is_empty()
            && self.cluster.len() <= 64
            && self
                .cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !name_ok {
            return Err(ConfigError::BadClusterName(self.cluster.clone()));
        }
        for (&id, addr) in &self.peers {
            if id == 0 {
                return Err(ConfigError::BadPeer {
                    entry: format!("{id}={addr}"),
                    reason: "ids start at 1".into(),
                });
            }
            check_addr(addr).map_err(|reason| ConfigError::BadPeer {
                entry: format!("{id}={addr}"),
                reason,
            })?;
        }
        if !self.peers.contains_key(&self.id) {
            let peers = self
                .peers
                .iter()
                .map(|(id, a)| format!("{id}={a}"))
                .collect::<Vec<_>>()
                .join(",");
            return Err(ConfigError::NotAPeer { id: self.id, peers });
        }
        let invalid = |name, reason: String| Err(ConfigError::Invalid { name, reason });
        for (name, addr) in [
            ("listen", &self.listen),
            ("metrics_listen", &self.metrics_listen),
        ] {
            if !addr.is_empty() {
                if let Err(reason) = firetower_net::resolve::check(addr) {
                    return invalid(name, reason);
                }
            }
        }
        if self.election_timeout_min >= self.election_timeout_max {
            return invalid(
                "election timeout",
                format!(
                    "min ({:?}) must be < max ({:?})",
                    self.election_timeout_min, self.election_timeout_max
                ),
            );
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.election_timeout_min
        {
            return invalid(
                "heartbeat interval",
                format!(
                    "{:?} must be > 0 and < election timeout min ({:?})",
                    self.heartbeat_interval, self.election_timeout_min
                ),
            );
        }
        if self.snapshot_every == 0 {
            return invalid("snapshot every", "must be at least 1".into());
        }
        if self.lease_check_interval.is_zero() {
            return invalid("lease check interval", "must be > 0".into());
        }
        if self.watch_buffer == 0 || self.watch_history_changes == 0 {
            return invalid(
                "watch",
                format!(
                    "buffer ({}) and history ({}) must be > 0",
                    self.watch_buffer, self.watch_history_changes
                ),
            );
        }
        if self.rpc_timeout.is_zero()
            || self.max_lease_ttl.is_zero()
            || self.max_interest_batch == 0
        {
            return invalid(
                "limits",
                "rpc timeout, max lease ttl and max interest batch must be > 0".into(),
            );
        }
        if self.request_timeout <= self.rpc_timeout {
            return invalid(
                "request timeout",
                format!(
                    "{:?} must be more than the rpc timeout ({:?})",
                    self.request_timeout, self.rpc_timeout
                ),
            );
        }
        if self.max_hot_topics_per_caller == 0 {
            return invalid("max hot topics per caller", "must be at least 1".into());
        }
        if self.max_watchers_per_caller == 0 {
            return invalid("max watchers per caller", "must be at least 1".into());
        }
        self.api.validate()?;
        if !self.allow_plaintext
            && (self.tls.cert.as_os_str().is_empty()
                || self.tls.key.as_os_str().is_empty()
                || self.tls.ca.as_os_str().is_empty())
        {
            return invalid(
                "tls",
                "a metastore serves only over TLS: give its cert, key and the CA \
                 (`firetower certs` makes them), or allow_plaintext"
                    .into(),
            );
        }
        Ok(())
    }

    /// The openraft configuration these values imply.
    pub fn raft_config(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: self.cluster.clone(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout_min.as_millis() as u64,
            election_timeout_max: self.election_timeout_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: 1000,
            ..openraft::Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_lists_parse_and_bad_entries_are_named() {
        let peers = parse_peers("1=127.0.0.1:7101, 2=localhost:7102").unwrap();
        assert_eq!(peers[&2], "localhost:7102");
        let err = parse_peers("1=127.0.0.1:7101,x=1.2.3.4:5")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"x=1.2.3.4:5\"") && err.contains("not a number"),
            "{err}"
        );
        let err = parse_peers("1=127.0.0.1").unwrap_err().to_string();
        assert!(err.contains("HOST:PORT"), "{err}");
        let err = parse_peers("1=a:1,1=b:2").unwrap_err().to_string();
        assert!(err.contains("peer 1 is listed twice"), "{err}");
        assert!(parse_peers("0=a:1")
            .unwrap_err()
            .to_string()
            .contains("ids start at 1"));
    }

    #[test]
    fn validate_names_the_bad_value() {
        let mut config = Config {
            id: 4,
            ..Config::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("node id 4 is not in the peer list"));
        config.id = 1;
        config.election_timeout_min = Duration::from_secs(2);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("min (2s) must be < max (800ms)"), "{err}");
        let config = Config {
            cluster: "bad name".into(),
            ..Config::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("\"bad name\""));
        let short = Config {
            request_timeout: Duration::from_secs(1),
            ..Config::default()
        };
        let err = short.validate().unwrap_err().to_string();
        assert!(err.contains("request timeout"), "{err}");
        // No API keys: nobody could call it, unless that is what is asked for.
        let err = Config::default().validate().unwrap_err().to_string();
        assert!(err.contains("nobody could call this node"), "{err}");
        let open = Config {
            api: firetower_net::api_auth::ApiAuthConfig {
                allow_unauthenticated: true,
                ..Default::default()
            },
            ..Config::default()
        };
        // No TLS files: plaintext only when that is what is asked for.
        let err = open.validate().unwrap_err().to_string();
        assert!(err.contains("serves only over TLS"), "{err}");
        let plain = Config {
            allow_plaintext: true,
            ..open
        };
        assert!(plain.validate().is_ok());
    }
}
