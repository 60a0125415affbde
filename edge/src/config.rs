//! The edge's configuration.

use serde::{Deserialize, Serialize};

use firetower_net::tls::TlsFiles;

use crate::error::ConfigError;

/// The most unanswered client publishes `max_publishes_in_flight` may allow per relay link.
/// Each one can sit in the edge's control queue toward the distributor (65536 frames) and
/// its answer in the distributor's control queue toward the edge (16384 frames, where a
/// frame that does not fit closes the link): half of the smaller, so the other frames
/// (Interest, InterestAck, Kick) always fit beside them.
pub const MAX_PUBLISHES_IN_FLIGHT: usize = 8192;
const _: () = assert!(MAX_PUBLISHES_IN_FLIGHT <= crate::links::CONTROL_QUEUE / 2);

/// The largest frame a relay lane can carry (a delivery's data is smaller still): the hard
/// cap must leave room for one of them above the budget, so a client that keeps reading is
/// never closed for one large message.
const LARGEST_DELIVERY: usize = firetower_proto::relay::DEFAULT_MAX_FRAME_LEN;

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
    /// Bytes queued for one connection (frames not yet written to its socket) beyond which
    /// the relay lanes that feed it stop reading until it drains: a burst waits in QUIC's
    /// flow control instead of in the edge's memory. Frames are never dropped for a
    /// connection that stays open.
    pub send_queue_bytes: usize,
    /// A connection whose queue stays over `send_queue_bytes` this long is not draining:
    /// it is closed with 4001, so the lanes it holds up flow again. Bounds every lane pause.
    pub slow_after_ms: u64,
    /// A connection whose queue would grow past this is closed with 4001 at once. The
    /// budget can be overshot (a lane applies a whole group of deliveries before it pauses,
    /// several lanes can feed one connection); this bounds one connection's memory anyway.
    pub send_queue_hard_bytes: usize,
    /// Bytes queued over all connections beyond which every lane stops reading, until the
    /// total drops below half of this: bounds the edge's memory when many connections are
    /// within their budget but not draining.
    pub queue_high_bytes: usize,
    /// Client publishes sent on one relay link and not yet answered by the distributor.
    /// Beyond it a publishing connection's socket is not read until an answer makes room,
    /// so TCP pushes back on the publisher. At most [`MAX_PUBLISHES_IN_FLIGHT`], so the
    /// link's control queues (both ways) always have room for the other frames.
    pub max_publishes_in_flight: usize,
    /// An unanswered client publish is failed (`unavailable`: it may or may not have been
    /// delivered) after this long, and its room on the link is freed. Longer than the
    /// distributors' publish deadline (`publish_retry_ms`, 5000) plus a forward, so it only
    /// fires when a distributor lost the publish.
    pub publish_answer_timeout_ms: u64,
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
    /// The most client connections at once, counted from the upgrade request (HTTP 503
    /// beyond).
    pub max_connections: usize,
    /// The most client connections from one IP address at once (HTTP 429 beyond; 0: no
    /// limit). High enough for a NAT or a load generator, low enough that one host cannot
    /// take the whole edge.
    pub max_connections_per_ip: usize,
    /// How long a shutdown waits for the edge's tasks (clients' close handshakes, the
    /// metastore deregistration, relay links) before stopping the rest where they are.
    /// Long enough for a close handshake (1 s) and a deregistration (`rpc_timeout_ms`).
    pub shutdown_grace_ms: u64,
    /// How clients authenticate: JWT keys, anonymous access, allowed origins.
    pub auth: crate::auth::AuthConfig,
    /// Per-connection rate limits on client frames and publishes ([`crate::rate`]).
    pub rate: crate::rate::RateConfig,
    /// The API key (a file) this edge presents to the metastore (registration, interest,
    /// the routing watch) and to the distributors' gRPC API (the demo page's
    /// `/api/topic`): a `member` key of theirs.
    pub member_key_file: Option<std::path::PathBuf>,
    /// The address the binary binds the HTTP/WebSocket listener to (it also serves
    /// `/metrics`, `/healthz` and `/readyz`); empty: `ws_advertise`.
    pub ws_listen: String,
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
            send_queue_bytes: 1 << 20,
            slow_after_ms: 5000,
            send_queue_hard_bytes: 8 << 20,
            queue_high_bytes: 64 << 20,
            max_publishes_in_flight: 4096,
            publish_answer_timeout_ms: 15_000,
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
            max_connections_per_ip: 16_384,
            shutdown_grace_ms: 5000,
            auth: crate::auth::AuthConfig::default(),
            rate: crate::rate::RateConfig::default(),
            member_key_file: None,
            ws_listen: String::new(),
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
            ("send_queue_bytes", self.send_queue_bytes as u64),
            ("slow_after_ms", self.slow_after_ms),
            (
                "max_publishes_in_flight",
                self.max_publishes_in_flight as u64,
            ),
            ("publish_answer_timeout_ms", self.publish_answer_timeout_ms),
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
        for addr in &self.metastore {
            firetower_net::resolve::check(addr).map_err(|r| ConfigError::new("metastore", r))?;
        }
        for (field, addr) in [
            ("ws_advertise", &self.ws_advertise),
            ("ws_listen", &self.ws_listen),
        ] {
            if !addr.is_empty() {
                firetower_net::resolve::check(addr).map_err(|r| ConfigError::new(field, r))?;
            }
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
        self.auth.validate()?;
        self.rate
            .validate()
            .map_err(|reason| ConfigError::new("rate", reason))?;
        let (budget, hard) = (self.send_queue_bytes, self.send_queue_hard_bytes);
        let least_hard = budget
            .saturating_mul(2)
            .max(budget.saturating_add(LARGEST_DELIVERY));
        if hard < least_hard {
            return Err(ConfigError::new(
                "send_queue_hard_bytes",
                format!(
                    "({hard}) must be at least twice send_queue_bytes ({budget}) and at least \
                     {LARGEST_DELIVERY} bytes above it: {least_hard}"
                ),
            ));
        }
        if self.queue_high_bytes < hard {
            return Err(ConfigError::new(
                "queue_high_bytes",
                format!(
                    "({}) must be at least send_queue_hard_bytes ({hard}), so one connection \
                     alone never stops every lane",
                    self.queue_high_bytes
                ),
            ));
        }
        if self.max_publishes_in_flight > MAX_PUBLISHES_IN_FLIGHT {
            return Err(ConfigError::new(
                "max_publishes_in_flight",
                format!(
                    "({}) must be at most {MAX_PUBLISHES_IN_FLIGHT} (half the smaller control \
                     queue of a link)",
                    self.max_publishes_in_flight
                ),
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
            auth: crate::auth::AuthConfig {
                allow_anonymous: true,
                ..Default::default()
            },
            ..Config::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = Config {
            pong_timeout_ms: 5,
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "pong_timeout_ms");
        let bad = Config {
            id: 0,
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "id");
    }

    #[test]
    fn validate_checks_the_flow_bounds_against_each_other() {
        let ok = Config {
            id: 1,
            metastore: vec!["127.0.0.1:7101".into()],
            auth: crate::auth::AuthConfig {
                allow_anonymous: true,
                ..Default::default()
            },
            ..Config::default()
        };
        // A small budget is fine as long as the hard cap leaves room for a large delivery.
        let small = Config {
            send_queue_bytes: 16 << 10,
            ..ok.clone()
        };
        assert_eq!(small.validate(), Ok(()));
        let bad = Config {
            send_queue_hard_bytes: ok.send_queue_bytes,
            ..ok.clone()
        };
        let err = bad.validate().unwrap_err();
        assert_eq!(err.field, "send_queue_hard_bytes");
        assert!(err.reason.contains("1048576"), "{err}");
        let bad = Config {
            send_queue_bytes: 0,
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "send_queue_bytes");
        let bad = Config {
            queue_high_bytes: 4 << 20,
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "queue_high_bytes");
        let bad = Config {
            max_publishes_in_flight: MAX_PUBLISHES_IN_FLIGHT + 1,
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "max_publishes_in_flight");
        let bad = Config {
            slow_after_ms: 0,
            ..ok
        };
        assert_eq!(bad.validate().unwrap_err().field, "slow_after_ms");
    }
}
