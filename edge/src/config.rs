//! The edge's configuration.

use serde::{Deserialize, Serialize};

use firetower_net::tls::TlsFiles;

use crate::error::ConfigError;

/// What to do when a connection's send queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowPolicy {
    /// Drop the frame (counted); after `slow_close_after_drops` drops, close the
    /// connection with code 4001.
    DropThenClose,
    /// Close the connection at the first drop (code 4001).
    Close,
}

/// Everything an edge needs to know. Durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Non-zero, unique among edges.
    pub id: u64,
    /// Must match the distributors' cluster name.
    pub cluster: String,
    /// Metastore node addresses (host:port).
    pub metastore: Vec<String>,
    /// The HTTP/WebSocket address clients use (registered with the metastore).
    pub ws_advertise: String,
    pub tls: TlsFiles,
    pub lease_ttl_ms: u64,
    /// The largest client frame, in bytes (close 1009 beyond).
    pub max_frame_bytes: usize,
    /// The most topics one connection may hold.
    pub max_topics_per_conn: usize,
    /// Frames queued per connection before the slow-client policy applies.
    pub send_queue_frames: usize,
    pub slow_policy: SlowPolicy,
    pub slow_close_after_drops: u32,
    /// A WebSocket ping goes out this often.
    pub heartbeat_interval_ms: u64,
    /// The connection closes (code 4000) when nothing, not even a pong, arrived for this long.
    pub pong_timeout_ms: u64,
    /// Also send the legacy text frame `heartbeat` with each ping, for old clients.
    pub legacy_heartbeat: bool,
    /// A write that takes longer than this closes the connection (code 4001).
    pub write_timeout_ms: u64,
    /// tungstenite's per-connection read buffer. Small keeps idle connections cheap.
    pub read_buffer_bytes: usize,
    /// How many connections may be writing to their sockets at once; 0 = half the CPU
    /// cores (at least 1). Fewer concurrent writers means each write carries more frames
    /// under load (the others' frames pile up meanwhile), which is what bounds fan-out.
    pub concurrent_writes: usize,
    /// How long a client has to send its HTTP request.
    pub handshake_timeout_ms: u64,
    /// Subscriber-count changes are sent to owners at most this often.
    pub interest_flush_ms: u64,
    /// Slot interest changes are sent to the metastore at most this often.
    pub metastore_debounce_ms: u64,
    /// A subscribe no owner confirmed within this long fails with `unavailable`.
    pub subscribe_timeout_ms: u64,
    /// Bound on each call to the metastore or a distributor.
    pub rpc_timeout_ms: u64,
    /// The most client connections at once (HTTP 503 beyond).
    pub max_connections: usize,
    /// How long a shutdown waits for the edge's tasks (clients' close handshakes, the
    /// metastore deregistration, relay links) before stopping the rest where they are.
    /// Long enough for a close handshake (1 s) and a deregistration (`rpc_timeout_ms`).
    pub shutdown_grace_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: 0,
            cluster: "firetower".into(),
            metastore: Vec::new(),
            ws_advertise: String::new(),
            tls: TlsFiles::default(),
            lease_ttl_ms: 3000,
            max_frame_bytes: 64 << 10,
            max_topics_per_conn: 256,
            send_queue_frames: 1024,
            slow_policy: SlowPolicy::DropThenClose,
            slow_close_after_drops: 256,
            heartbeat_interval_ms: 10_000,
            pong_timeout_ms: 25_000,
            legacy_heartbeat: false,
            write_timeout_ms: 10_000,
            read_buffer_bytes: 1024,
            concurrent_writes: 0,
            handshake_timeout_ms: 10_000,
            interest_flush_ms: 50,
            metastore_debounce_ms: 100,
            subscribe_timeout_ms: 5000,
            rpc_timeout_ms: 2000,
            max_connections: 1_000_000,
            shutdown_grace_ms: 5000,
        }
    }
}

impl Config {
    /// [`Config::concurrent_writes`] with 0 resolved.
    pub fn write_turns(&self) -> usize {
        if self.concurrent_writes > 0 {
            return self.concurrent_writes;
        }
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("id", self.id),
            ("lease_ttl_ms", self.lease_ttl_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("pong_timeout_ms", self.pong_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("interest_flush_ms", self.interest_flush_ms),
            ("metastore_debounce_ms", self.metastore_debounce_ms),
            ("subscribe_timeout_ms", self.subscribe_timeout_ms),
            ("rpc_timeout_ms", self.rpc_timeout_ms),
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_topics_per_conn", self.max_topics_per_conn as u64),
            ("send_queue_frames", self.send_queue_frames as u64),
            ("max_connections", self.max_connections as u64),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(field, "must be positive"));
            }
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
        if self.pong_timeout_ms <= self.heartbeat_interval_ms {
            return Err(ConfigError::new(
                "pong_timeout_ms",
                "must be longer than heartbeat_interval_ms",
            ));
        }
        if self.read_buffer_bytes < 512 {
            return Err(ConfigError::new(
                "read_buffer_bytes",
                "must be at least 512",
            ));
        }
        if self.max_frame_bytes > 16 << 20 {
            return Err(ConfigError::new(
                "max_frame_bytes",
                "must be at most 16 MiB",
            ));
        }
        Ok(())
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
            ..Config::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = Config {
            pong_timeout_ms: 5,
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "pong_timeout_ms");
        let bad = Config { id: 0, ..ok };
        assert_eq!(bad.validate().unwrap_err().field, "id");
    }
}
