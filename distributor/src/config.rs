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
    /// Bound on each call to this node's gRPC API, from its first byte to its answer's
    /// headers (a request whose body trickles in is cut off: CANCELLED `Timeout expired`).
    /// A streaming answer (PublishStream) goes on after its headers. More than
    /// `publish_retry_ms + rpc_timeout_ms`, the longest a publish may take.
    pub request_timeout_ms: u64,
    /// A topic no edge is interested in, with no publish in progress, leaves the topic
    /// table after this long without a message (its history goes with it; a new message
    /// numbers on after the highest `seq` its slot's evicted topics had). So one-shot topics
    /// never fill the table. 0: never. A topic whose history keeps messages longer (the
    /// default policy's or its rule's `age_ms`) waits that long instead
    /// ([`Config::idle_topic`]).
    pub idle_topic_ms: u64,
    /// When this distributor proposes splitting or merging a hot topic on its own.
    pub hot: HotPolicy,
    /// How much of each owned topic's recent messages is kept for recovery and History.
    pub history: HistoryPolicy,
    /// Per topic pattern, instead of `history`: the first rule whose pattern matches a
    /// topic (a split topic's sub-topics by their base name) decides; at most
    /// [`MAX_HISTORY_RULES`].
    pub history_rules: Vec<HistoryRule>,
    /// Who may call the gRPC API: API keys and their scopes (docs/security.md).
    pub api: crate::api::ApiAuthConfig,
    /// How long a stopping distributor drains (SIGTERM): its slots move to the others,
    /// which take their streams and history over, while it goes on serving; then it
    /// stops whatever is left. 0: no drain (its slots start new streams elsewhere).
    pub drain_timeout_ms: u64,
    /// The address the binary binds the gRPC listener to; empty: `grpc_advertise`.
    pub grpc_listen: String,
    /// The address the binary binds the QUIC (UDP) socket to; empty: `quic_advertise`.
    pub quic_listen: String,
    /// The HTTP address serving `/metrics`, `/healthz`, `/readyz` and `/topics`; empty:
    /// none.
    pub metrics_listen: String,
    /// The metrics address registered for others (the dashboard) to reach; empty:
    /// `metrics_listen`.
    pub metrics_advertise: String,
}

/// The most rules in `history_rules` (each topic is matched against them once, when its
/// state is made).
pub const MAX_HISTORY_RULES: usize = 64;

/// A [`HistoryPolicy`] for the topics a pattern matches: a topic name, or a prefix ending
/// in `*` (`chat/*` matches every topic that starts with `chat/`; `*` matches all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    pub pattern: String,
    #[serde(flatten)]
    pub policy: HistoryPolicy,
}

impl HistoryRule {
    /// Whether the rule's pattern matches `topic` (a base topic name).
    pub fn matches(&self, topic: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => topic == self.pattern,
        }
    }

    /// Parses `PATTERN=MESSAGES[,BYTES[,AGE_MS]]` (the command-line form); what is left out
    /// keeps the default.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::new("history_rules", format!("{text:?}: {why}"));
        let (pattern, limits) = text
            .split_once('=')
            .ok_or_else(|| bad("expected PATTERN=MESSAGES[,BYTES[,AGE_MS]]"))?;
        let mut policy = HistoryPolicy::default();
        let mut parts = limits.split(',');
        let mut next = |name: &str| -> Result<Option<u64>, ConfigError> {
            match parts.next() {
                None | Some("") => Ok(None),
                Some(n) => n
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| bad(&format!("{name} {n:?} is not a number"))),
            }
        };
        if let Some(n) = next("messages")? {
            policy.messages = usize::try_from(n).map_err(|_| bad("messages too large"))?;
        }
        if let Some(n) = next("bytes")? {
            policy.bytes = usize::try_from(n).map_err(|_| bad("bytes too large"))?;
        }
        if let Some(n) = next("age_ms")? {
            policy.age_ms = n;
        }
        if parts.next().is_some() {
            return Err(bad("at most three limits: MESSAGES,BYTES,AGE_MS"));
        }
        Ok(HistoryRule {
            pattern: pattern.trim().to_string(),
            policy,
        })
    }
}

/// The history policy of each topic: the first matching rule, or the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRules {
    pub default: HistoryPolicy,
    pub rules: Vec<HistoryRule>,
}

impl HistoryRules {
    /// The policy for `topic` (a base topic name).
    pub fn for_topic(&self, topic: &str) -> HistoryPolicy {
        self.rules
            .iter()
            .find(|r| r.matches(topic))
            .map_or(self.default, |r| r.policy)
    }
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
            request_timeout_ms: 30_000,
            idle_topic_ms: 600_000,
            hot: HotPolicy::default(),
            history: HistoryPolicy::default(),
            history_rules: Vec::new(),
            api: crate::api::ApiAuthConfig::default(),
            drain_timeout_ms: 10_000,
            grpc_listen: String::new(),
            quic_listen: String::new(),
            metrics_listen: String::new(),
            metrics_advertise: String::new(),
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.api.validate()?;
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
        for addr in &self.metastore {
            firetower_net::resolve::check(addr).map_err(|r| ConfigError::new("metastore", r))?;
        }
        for (field, addr) in [
            ("grpc_advertise", &self.grpc_advertise),
            ("quic_advertise", &self.quic_advertise),
            ("grpc_listen", &self.grpc_listen),
            ("quic_listen", &self.quic_listen),
            ("metrics_listen", &self.metrics_listen),
            ("metrics_advertise", &self.metrics_advertise),
        ] {
            let optional = !field.ends_with("_advertise") || field == "metrics_advertise";
            if optional && addr.is_empty() {
                continue;
            }
            if let Err(reason) = firetower_net::resolve::check(addr) {
                return Err(ConfigError::new(field, reason));
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
        validate_history(("history.bytes", "history.messages"), "", &self.history)?;
        if self.history_rules.len() > MAX_HISTORY_RULES {
            return Err(ConfigError::new(
                "history_rules",
                format!("at most {MAX_HISTORY_RULES} rules"),
            ));
        }
        for rule in &self.history_rules {
            let pattern = &rule.pattern;
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            if pattern.is_empty() || name.contains('*') || name.contains('#') {
                return Err(ConfigError::new(
                    "history_rules",
                    format!(
                        "pattern {pattern:?}: a topic name, or a prefix ending in one `*` \
                         (no `#`: sub-topics follow their base topic's rule)"
                    ),
                ));
            }
            validate_history(
                ("history_rules", "history_rules"),
                &format!("pattern {pattern:?}: "),
                &rule.policy,
            )?;
        }
        if self.request_timeout_ms <= self.publish_retry_ms + self.rpc_timeout_ms {
            return Err(ConfigError::new(
                "request_timeout_ms",
                format!(
                    "must be more than publish_retry_ms + rpc_timeout_ms ({} ms), the longest \
                     a publish may take",
                    self.publish_retry_ms + self.rpc_timeout_ms
                ),
            ));
        }
        if self.idle_topic_ms != 0 && self.idle_topic_ms < 1000 {
            return Err(ConfigError::new(
                "idle_topic_ms",
                "0 (never) or at least 1000",
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

    /// How long a topic may idle before it leaves the table (None: never): `idle_topic_ms`,
    /// but never less than the longest history age of any policy, so no topic's history is
    /// cut short by eviction. (It was a validation error before, and the CLI has no flag
    /// for `idle_topic_ms`: a history rule kept longer than 10 min refused to start.)
    pub(crate) fn idle_topic(&self) -> Option<std::time::Duration> {
        if self.idle_topic_ms == 0 {
            return None;
        }
        let longest_history = self
            .history_rules
            .iter()
            .map(|rule| rule.policy.age_ms)
            .fold(self.history.age_ms, u64::max);
        Some(std::time::Duration::from_millis(
            self.idle_topic_ms.max(longest_history),
        ))
    }

    pub(crate) fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }
}

/// A history policy's bounds: a recovery's answer is queued toward the edge at once, up to
/// `bytes` (edges allow 32 unanswered at a time), and every topic may keep that much.
/// `fields`: the names to report (bytes, messages); `what` prefixes the reason.
fn validate_history(
    fields: (&'static str, &'static str),
    what: &str,
    policy: &HistoryPolicy,
) -> Result<(), ConfigError> {
    if policy.bytes > 16 << 20 {
        return Err(ConfigError::new(
            fields.0,
            format!("{what}bytes must be at most 16777216 (16 MiB per topic)"),
        ));
    }
    if policy.messages > 100_000 {
        return Err(ConfigError::new(
            fields.1,
            format!("{what}messages must be at most 100000 per topic"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config {
            id: 1,
            metastore: vec!["127.0.0.1:7101".into()],
            grpc_advertise: "127.0.0.1:6667".into(),
            quic_advertise: "127.0.0.1:6666".into(),
            api: crate::api::ApiAuthConfig {
                allow_unauthenticated: true,
                ..Default::default()
            },
            ..Config::default()
        }
    }

    #[test]
    fn validate_names_the_field() {
        let ok = Config {
            id: 1,
            metastore: vec!["127.0.0.1:7101".into()],
            grpc_advertise: "127.0.0.1:6667".into(),
            quic_advertise: "127.0.0.1:6666".into(),
            api: crate::api::ApiAuthConfig {
                allow_unauthenticated: true,
                ..Default::default()
            },
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
        // A request bound a publish could outlast.
        let bad = Config {
            request_timeout_ms: 7000,
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "request_timeout_ms");
        let bad = Config {
            idle_topic_ms: 500,
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "idle_topic_ms");
        // A history kept longer than the idle bound holds its topics that long.
        let long_history = Config {
            idle_topic_ms: 1000,
            history_rules: vec![HistoryRule::parse("chat/*=10,4096,7200000").unwrap()],
            ..ok.clone()
        };
        assert_eq!(long_history.validate(), Ok(()));
        assert_eq!(
            long_history.idle_topic(),
            Some(std::time::Duration::from_millis(7_200_000))
        );
        let never = Config {
            idle_topic_ms: 0,
            ..ok.clone()
        };
        assert_eq!(never.idle_topic(), None);
        let bad = Config {
            history: HistoryPolicy {
                bytes: 1 << 30,
                ..HistoryPolicy::default()
            },
            ..ok
        };
        assert_eq!(bad.validate().unwrap_err().field, "history.bytes");
    }

    #[test]
    fn history_rules_parse_match_the_first_pattern_and_are_validated() {
        let chat = HistoryRule::parse("chat/*=10,4096").unwrap();
        assert_eq!(chat.pattern, "chat/*");
        assert_eq!(chat.policy.messages, 10);
        assert_eq!(chat.policy.bytes, 4096);
        assert_eq!(chat.policy.age_ms, HistoryPolicy::default().age_ms);
        let off = HistoryRule::parse("metrics=0").unwrap();
        let rules = HistoryRules {
            default: HistoryPolicy::default(),
            rules: vec![chat.clone(), off, HistoryRule::parse("*=5,,1000").unwrap()],
        };
        assert_eq!(rules.for_topic("chat/lobby").messages, 10);
        assert!(!rules.for_topic("metrics").enabled());
        assert_eq!(rules.for_topic("metrics/cpu").messages, 5);
        assert_eq!(rules.for_topic("metrics/cpu").age_ms, 1000);
        assert_eq!(
            HistoryRules::default().for_topic("chat/lobby"),
            HistoryPolicy::default()
        );
        for bad in ["chat", "chat/*=x", "a=1,2,3,4", "=1"] {
            let parsed = HistoryRule::parse(bad);
            let checked = parsed.and_then(|rule| {
                Config {
                    history_rules: vec![rule],
                    ..valid()
                }
                .validate()
            });
            assert_eq!(checked.unwrap_err().field, "history_rules", "{bad}");
        }
        assert_eq!(
            Config {
                history_rules: vec![chat],
                ..valid()
            }
            .validate(),
            Ok(())
        );
        let config = Config {
            history_rules: vec![HistoryRule::parse("a*b*=1").unwrap()],
            ..valid()
        };
        assert_eq!(config.validate().unwrap_err().field, "history_rules");
        let config = Config {
            history_rules: vec![HistoryRule::parse("big/*=1,99999999").unwrap()],
            ..config
        };
        assert_eq!(config.validate().unwrap_err().field, "history_rules");
    }
}
