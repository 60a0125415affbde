//! The distributor's configuration.

use firetower_net::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Everything a distributor needs to know. Durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Non-zero, unique among distributors.
    pub id: u64,
    /// Must match the metastore's and the edges' cluster name.
    pub cluster: String,
    /// Metastore node addresses (host:port).
    pub metastore: Vec<String>,
    /// The gRPC address other distributors and the CLI reach this one at.
    pub grpc_advertise: String,
    /// The QUIC address edges reach this one at.
    pub quic_advertise: String,
    pub tls: TlsFiles,
    /// The metastore lease; heartbeats go every third of it.
    pub lease_ttl_ms: u64,
    /// The largest published value, in bytes.
    pub max_data_bytes: usize,
    /// The most messages in one PublishBatch.
    pub max_batch: usize,
    /// The most topics with sequencing state at once (RESOURCE_EXHAUSTED beyond).
    pub max_topics: usize,
    /// QUIC streams per edge that carry deliveries; a topic always uses the same one, so a
    /// large message on one topic only delays the topics that share its lane.
    pub relay_lanes: usize,
    /// Bytes queued toward one edge (over all its lanes) before publishes whose
    /// subscribers sit behind that edge wait for room (up to their deadline, then
    /// RESOURCE_EXHAUSTED / `overloaded`). The edge stops reading a lane while its clients'
    /// queues are full, so this is where a burst toward slow clients slows the publisher.
    pub lane_queue_bytes: usize,
    /// Bytes queued toward one edge beyond which its link is closed as stuck (only reached
    /// when many publishers pass the room check at once).
    pub lane_hard_bytes: usize,
    /// Unanswered messages on one PublishStream before the server stops reading it.
    pub max_stream_in_flight: usize,
    /// How long a publish keeps retrying through ownership changes before UNAVAILABLE.
    pub publish_retry_ms: u64,
    /// Bound on each call to the metastore or another distributor.
    pub rpc_timeout_ms: u64,
    /// When this distributor proposes splitting or merging a hot topic on its own.
    pub hot: HotPolicy,
    /// How much of each owned topic's recent messages is kept for recovery and History.
    pub history: HistoryPolicy,
}

/// The history an owner keeps per topic, in memory: the newest messages within all three
/// bounds. `messages` or `bytes` 0 turns it off (split topics still keep what their route
/// changes need); `age_ms` 0 keeps messages of any age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryPolicy {
    pub messages: usize,
    /// Counted as encoded relay frames (data, topic and a few varints).
    pub bytes: usize,
    pub age_ms: u64,
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        HistoryPolicy {
            messages: 1000,
            bytes: 1 << 20,
            age_ms: 300_000,
        }
    }
}

impl HistoryPolicy {
    /// Whether history is kept at all.
    pub fn enabled(&self) -> bool {
        self.messages > 0 && self.bytes > 0
    }
}

/// Automatic hot-topic splits and merges, decided by the owner of a topic's slot from its
/// relay load: messages per second times the edges a message goes to. A split is proposed
/// when the load stays above `split_load` for `windows` consecutive windows; a merge when a
/// split topic's load (estimated with every registered edge, an upper bound) stays below
/// `merge_load` as long. `merge_load` below `split_load` is the hysteresis that keeps a
/// topic from flapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HotPolicy {
    pub enabled: bool,
    /// Relay deliveries per second.
    pub split_load: u64,
    /// Relay deliveries per second.
    pub merge_load: u64,
    pub window_ms: u64,
    pub windows: u32,
    /// The most shards a split proposes (2 ..= 256). A split aims at `split_load / 2` per
    /// shard, rounded up to a power of two shards.
    pub max_shards: u32,
}

impl Default for HotPolicy {
    fn default() -> Self {
        HotPolicy {
            enabled: true,
            split_load: 500_000,
            merge_load: 50_000,
            window_ms: 1000,
            windows: 10,
            max_shards: 64,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: 0,
            cluster: "firetower".into(),
            metastore: Vec::new(),
            grpc_advertise: String::new(),
            quic_advertise: String::new(),
            tls: TlsFiles::default(),
            lease_ttl_ms: 3000,
            max_data_bytes: 64 << 10,
            max_batch: 1000,
            max_topics: 1_000_000,
            relay_lanes: 4,
            lane_queue_bytes: 4 << 20,
            lane_hard_bytes: 64 << 20,
            max_stream_in_flight: 1000,
            publish_retry_ms: 5000,
            rpc_timeout_ms: 2000,
            hot: HotPolicy::default(),
            history: HistoryPolicy::default(),
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::new("id", "must be non-zero"));
        }
        if self.cluster.is_empty() {
            return Err(ConfigError::new("cluster", "must not be empty"));
        }
        if self.metastore.is_empty() {
            return Err(ConfigError::new(
                "metastore",
                "name at least one metastore address",
            ));
        }
        for (field, addr) in [
            ("grpc_advertise", &self.grpc_advertise),
            ("quic_advertise", &self.quic_advertise),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::new(
                    field,
                    format!("{addr:?} is not host:port"),
                ));
            }
        }
        if self.lease_ttl_ms < 300 {
            return Err(ConfigError::new("lease_ttl_ms", "must be at least 300"));
        }
        // A relay frame carries the data plus the topic and a few varints, and the relay
        // accepts frames up to 1 MiB.
        if self.max_data_bytes == 0 || self.max_data_bytes > (1 << 20) - 1024 {
            return Err(ConfigError::new(
                "max_data_bytes",
                "must be 1 ..= 1047552 (the relay's 1 MiB frame limit less room for the topic)",
            ));
        }
        // A recovery's answer is queued toward the edge at once, up to `history.bytes`
        // (edges allow 32 unanswered at a time), and every topic may keep that much.
        if self.history.bytes > 16 << 20 {
            return Err(ConfigError::new(
                "history.bytes",
                "must be at most 16777216 (16 MiB per topic)",
            ));
        }
        if self.history.messages > 100_000 {
            return Err(ConfigError::new(
                "history.messages",
                "must be at most 100000 per topic",
            ));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::new("max_batch", "must be positive"));
        }
        if self.max_topics == 0 {
            return Err(ConfigError::new("max_topics", "must be positive"));
        }
        if !(1..=32).contains(&self.relay_lanes) {
            return Err(ConfigError::new("relay_lanes", "must be 1 ..= 32"));
        }
        if self.lane_queue_bytes < (64 << 10) {
            return Err(ConfigError::new(
                "lane_queue_bytes",
                "must be at least 65536",
            ));
        }
        if self.lane_hard_bytes < self.lane_queue_bytes.saturating_mul(2) {
            return Err(ConfigError::new(
                "lane_hard_bytes",
                "must be at least twice lane_queue_bytes",
            ));
        }
        if self.max_stream_in_flight == 0 {
            return Err(ConfigError::new("max_stream_in_flight", "must be positive"));
        }
        let hot = &self.hot;
        if hot.merge_load >= hot.split_load {
            return Err(ConfigError::new(
                "hot.merge_load",
                "must be below hot.split_load (the hysteresis)",
            ));
        }
        if hot.window_ms < 100 || hot.windows == 0 {
            return Err(ConfigError::new(
                "hot.window_ms",
                "windows must be at least 100 ms and hot.windows positive",
            ));
        }
        if !(firetower_proto::topic::MIN_SHARDS..=firetower_proto::topic::MAX_SHARDS)
            .contains(&hot.max_shards)
        {
            return Err(ConfigError::new("hot.max_shards", "must be 2 ..= 256"));
        }
        Ok(())
    }

    pub(crate) fn publish_retry(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.publish_retry_ms)
    }

    pub(crate) fn rpc_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.rpc_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_field() {
        let ok = Config {
            id: 1,
            metastore: vec!["127.0.0.1:7101".into()],
            grpc_advertise: "127.0.0.1:6667".into(),
            quic_advertise: "127.0.0.1:6666".into(),
            ..Config::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = Config {
            id: 0,
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "id");
        let bad = Config {
            quic_advertise: "nope".into(),
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "quic_advertise");
        let bad = Config {
            relay_lanes: 0,
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "relay_lanes");
        let bad = Config {
            history: HistoryPolicy {
                bytes: 1 << 30,
                ..HistoryPolicy::default()
            },
            ..ok
        };
        assert_eq!(bad.validate().unwrap_err().field, "history.bytes");
    }
}
