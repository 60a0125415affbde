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

/// The answer to one message of a PublishStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAnswer {
    /// The caller's id of the message.
    pub id: u64,
    /// Its position, or the refusal (gRPC code and message).
    pub result: Result<StreamPos, (tonic::Code, String)>,
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishMessage {
    pub topic: String,
    /// One JSON value, as UTF-8 text; sent as it is (no copy).
    pub data: Vec<u8>,
}

/// The distributor's answer to one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub position: StreamPos,
    /// For a split (hot) topic, how many sub-topics the message went to (`position` is
    /// that of the first); 0 for a plain topic.
    pub shards: u32,
}

impl From<dpb::PublishReply> for Published {
    fn from(reply: dpb::PublishReply) -> Self {
        Published {
            position: StreamPos {
                epoch: reply.epoch,
                seq: reply.seq,
            },
            shards: reply.shards,
        }
    }
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
        let key = match &config.api_key {
            Some(key) => {
                ApiKey::new("api_key", key).map_err(|e| ClientError::Config(e.to_string()))?
            }
            None => ApiKey::none(),
        };
        Self::with_tls(&config.distributor, tls, key)
    }

    /// A publisher from loaded parts: TLS (`None`: plaintext) and the key to present.
    pub fn with_tls(
        distributor: &str,
        tls: Option<ClientTls>,
        key: ApiKey,
    ) -> Result<Self, ClientError> {
        let connector = TcpConnector {
            tls,
            connect_timeout: std::time::Duration::from_secs(2),
            ..TcpConnector::default()
        };
        Self::with_connector(&connector, distributor, key)
    }

    /// A publisher whose connection `connector` makes: the simulator passes its own, over
    /// simulated TCP.
    pub fn with_connector(
        connector: &impl Connector,
        distributor: &str,
        key: ApiKey,
    ) -> Result<Self, ClientError> {
        let channel = connector
            .channel(distributor, Role::Distributor)
            .map_err(|e| ClientError::Config(format!("distributor: {e}")))?;
        Ok(Publisher {
            client: DistributorClient::with_interceptor(channel, key),
        })
    }

    /// Publishes every message of `messages` (`(id, topic, data)`, the caller's id echoed
    /// in its answer) over one PublishStream, many in flight (the server bounds them and
    /// pushes back): the answers, as they come, in any order.
    pub async fn publish_stream(
        &self,
        messages: impl futures::Stream<Item = (u64, String, Vec<u8>)> + Send + 'static,
    ) -> Result<impl futures::Stream<Item = Result<StreamAnswer, ClientError>>, ClientError> {
        use futures::StreamExt;
        let requests = messages.map(|(id, topic, data)| dpb::PublishStreamRequest {
            id,
            topic,
            data: data.into(),
        });
        let replies = self
            .client
            .clone()
            .publish_stream(requests)
            .await?
            .into_inner();
        Ok(replies.map(|reply| {
            let reply = reply?;
            let result = match reply.result {
                Some(dpb::publish_stream_reply::Result::Position(p)) => Ok(StreamPos {
                    epoch: p.epoch,
                    seq: p.seq,
                }),
                Some(dpb::publish_stream_reply::Result::Error(e)) => {
                    Err((tonic::Code::from_i32(e.code), e.message))
                }
                None => Err((tonic::Code::Unknown, "an answer without a result".into())),
            };
            Ok(StreamAnswer {
                id: reply.id,
                result,
            })
        }))
    }

    /// Publishes `data` (one JSON value, as text) to `topic`: its position, or the refusal.
    pub async fn publish(&self, topic: &str, data: &str) -> Result<StreamPos, ClientError> {
        let message = PublishMessage {
            topic: topic.to_string(),
            data: data.as_bytes().to_vec(),
        };
        Ok(self.publish_message(message).await?.position)
    }

    /// Publishes one message (one Publish call): the distributor's whole answer.
    pub async fn publish_message(&self, message: PublishMessage) -> Result<Published, ClientError> {
        let reply = self
            .client
            .clone()
            .publish(dpb::PublishRequest {
                topic: message.topic,
                data: message.data.into(),
            })
            .await?
            .into_inner();
        Ok(reply.into())
    }

    /// Publishes `messages` in one PublishBatch call: one answer per message, in order. The
    /// call succeeds or fails as a whole; a batch's messages of one topic keep their order.
    pub async fn publish_batch(
        &self,
        messages: Vec<PublishMessage>,
    ) -> Result<Vec<Published>, ClientError> {
        let messages = messages
            .into_iter()
            .map(|m| dpb::PublishRequest {
                topic: m.topic,
                data: m.data.into(),
            })
            .collect();
        let reply = self
            .client
            .clone()
            .publish_batch(dpb::PublishBatchRequest { messages })
            .await?
            .into_inner();
        Ok(reply.results.into_iter().map(Published::from).collect())
    }
}
