//! Publishing through a distributor's gRPC API (docs/protocol.md §6): TLS that checks the
//! distributor's certificate against the cluster CA, and an API key with the `publish`
//! scope.

use std::path::PathBuf;

use dpb::distributor_client::DistributorClient;
use firetower_net::{ApiKey, ClientTls, Connector, KeyedChannel, Role, TcpConnector};
use firetower_proto::client::StreamPos;
use firetower_proto::distributor::v1 as dpb;

use crate::error::ClientError;

/// Where and how to publish.
#[derive(Debug, Clone, Default)]
pub struct PublisherConfig {
    /// A distributor's gRPC address (host:port); any distributor forwards to the owner.
    pub distributor: String,
    /// The cluster CA; `None`: plaintext (only a cluster that serves plaintext).
    pub ca_file: Option<PathBuf>,
    /// The API key (`publish` scope); `None`: no key (an open cluster).
    pub api_key: Option<String>,
}

/// A publisher: one HTTP/2 connection, calls multiplexed on it.
#[derive(Clone)]
pub struct Publisher {
    client: DistributorClient<KeyedChannel>,
}

impl Publisher {
    /// A publisher for `config` (connects on the first call).
    pub fn new(config: &PublisherConfig) -> Result<Self, ClientError> {
        let tls = config
            .ca_file
            .as_deref()
            .map(ClientTls::trusting)
            .transpose()
            .map_err(|e| ClientError::Config(format!("ca_file: {e}")))?;
        let connector = TcpConnector {
            tls,
            ..TcpConnector::default()
        };
        let channel = connector
            .channel(&config.distributor, Role::Distributor)
            .map_err(|e| ClientError::Config(format!("distributor: {e}")))?;
        let key = match &config.api_key {
            Some(key) => {
                ApiKey::new("api_key", key).map_err(|e| ClientError::Config(e.to_string()))?
            }
            None => ApiKey::none(),
        };
        Ok(Publisher {
            client: DistributorClient::with_interceptor(channel, key),
        })
    }

    /// Publishes `data` (one JSON value, as text) to `topic`: its position, or the refusal.
    pub async fn publish(&self, topic: &str, data: &str) -> Result<StreamPos, ClientError> {
        let reply = self
            .client
            .clone()
            .publish(dpb::PublishRequest {
                topic: topic.to_string(),
                data: data.to_string().into(),
            })
            .await?
            .into_inner();
        Ok(StreamPos {
            epoch: reply.epoch,
            seq: reply.seq,
        })
    }
}
