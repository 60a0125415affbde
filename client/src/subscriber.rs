//! A subscriber: one WebSocket to an edge at a time, that reconnects (to the next edge of
//! its list, with backoff) and recovers what it missed with the positions it holds
//! (docs/protocol.md §5.11).
//!
//! [`SubscriberCore`] decides, without I/O: the frames to send when a connection opens
//! (every subscription, with `since` where it has a position), what a server frame means
//! ([`Event`]s), and it drops a delivery not past its topic's position (the edge promises
//! none; this guards the application anyway). [`Subscriber`] is the task around it.

use std::collections::BTreeMap;
use std::time::Duration;

use firetower_proto::client::{parse_recovery, parse_server_frame, ServerFrame, StreamPos};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::error::ClientError;

/// The most topics one subscribe frame names (the edge's default `max_topics_per_frame`).
pub const TOPICS_PER_FRAME: usize = 256;
/// Close codes after which the subscriber does not come back on its own: a kick (4002).
pub const CLOSE_KICKED: u16 = 4002;

/// What the subscriber tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection is open (to `url`).
    Connected { url: String },
    /// A subscribe was acked. `recovered`: `None` for a first subscribe, else whether the
    /// messages after the position held are the ones that follow (`false`: reload the
    /// topic's state; `position` is where it is now, if known).
    Subscribed {
        topic: String,
        recovered: Option<bool>,
        position: Option<StreamPos>,
    },
    /// A message, in its topic's order.
    Message {
        topic: String,
        /// The JSON value, as its text.
        data: String,
        position: StreamPos,
    },
    /// An error frame from the edge.
    Error {
        code: String,
        message: String,
        topic: Option<String>,
    },
    /// The connection ended (close code, if any); the subscriber reconnects unless kicked.
    Disconnected { code: Option<u16>, reason: String },
}

/// The decisions of a subscriber.
#[derive(Debug, Default)]
pub struct SubscriberCore {
    /// topic → the position of the last message handed to the application.
    topics: BTreeMap<String, Option<StreamPos>>,
}

impl SubscriberCore {
    /// Adds `topic`; the subscribe frame to send now if connected (`None` if already held).
    pub fn subscribe(&mut self, topic: &str) -> Option<String> {
        if self.topics.contains_key(topic) {
            return None;
        }
        self.topics.insert(topic.to_string(), None);
        Some(subscribe_frame(&[(topic, None)]))
    }

    /// The frames that open a connection: every topic, with its position where it has one.
    pub fn on_connected(&self) -> Vec<String> {
        let all: Vec<(&str, Option<StreamPos>)> =
            self.topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
        all.chunks(TOPICS_PER_FRAME).map(subscribe_frame).collect()
    }

    /// The position held for `topic`.
    pub fn position(&self, topic: &str) -> Option<StreamPos> {
        self.topics.get(topic).copied().flatten()
    }

    /// What a server text frame means.
    pub fn on_frame(&mut self, text: &str) -> Vec<Event> {
        match parse_server_frame(text) {
            Ok(ServerFrame::Publish {
                topic,
                data,
                epoch,
                seq,
            }) => {
                let position = StreamPos { epoch, seq };
                let Some(held) = self.topics.get_mut(topic.as_ref()) else {
                    return Vec::new(); // unsubscribed: a delivery already on its way
                };
                if held.is_some_and(|p| position <= p) {
                    return Vec::new();
                }
                *held = Some(position);
                vec![Event::Message {
                    topic: topic.into_owned(),
                    data: data.to_string(),
                    position,
                }]
            }
            Ok(ServerFrame::Subscribed(topics)) => {
                let (recovered, positions) = parse_recovery(text).unwrap_or_default();
                topics
                    .into_iter()
                    .map(|topic| {
                        let position = positions.get(&topic).copied();
                        if let (Some(p), Some(held)) = (position, self.topics.get_mut(&topic)) {
                            // Not recovered: go on from where the topic is now.
                            *held = Some(p);
                        }
                        Event::Subscribed {
                            recovered: recovered.get(&topic).copied(),
                            position,
                            topic,
                        }
                    })
                    .collect()
            }
            Ok(ServerFrame::Error {
                code,
                message,
                topic,
            }) => vec![Event::Error {
                code,
                message,
                topic,
            }],
            Ok(_) => Vec::new(),
            Err(e) => vec![Event::Error {
                code: "bad_frame".into(),
                message: format!("{e}: {text}"),
                topic: None,
            }],
        }
    }
}

/// `{"type":"subscribe","topic":"a,b","data":"","since":{"a":{"epoch":E,"seq":S}}}`.
fn subscribe_frame(topics: &[(&str, Option<StreamPos>)]) -> String {
    let names: Vec<&str> = topics.iter().map(|(t, _)| *t).collect();
    let mut frame = serde_json::json!({
        "type": "subscribe",
        "topic": names.join(","),
        "data": "",
    });
    let since: serde_json::Map<String, serde_json::Value> = topics
        .iter()
        .filter_map(|(t, p)| {
            p.map(|p| {
                (
                    t.to_string(),
                    serde_json::json!({"epoch": p.epoch, "seq": p.seq}),
                )
            })
        })
        .collect();
    if !since.is_empty() {
        frame["since"] = serde_json::Value::Object(since);
    }
    frame.to_string()
}

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Edges' WebSocket URLs (`ws://host:port/ws?token=…`), tried in turn.
    pub urls: Vec<String>,
    /// Backoff between attempts: doubles from `min_backoff` to `max_backoff`, each delay
    /// drawn from its upper half so that clients cut off together come back spread out.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Events not yet taken by the application; when full, the subscriber stops reading its
    /// socket (the edge then pushes back on its side).
    pub event_buffer: usize,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        SubscriberConfig {
            urls: Vec::new(),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            event_buffer: 1024,
        }
    }
}

/// The subscriber's task and its two channels.
pub struct Subscriber {
    commands: mpsc::Sender<String>,
    events: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Starts the task; it connects to the first URL at once.
    pub fn start(config: SubscriberConfig) -> Result<Self, ClientError> {
        if config.urls.is_empty() {
            return Err(ClientError::Config("urls: give at least one edge".into()));
        }
        let (commands, commands_rx) = mpsc::channel(64);
        let (events_tx, events) = mpsc::channel(config.event_buffer.max(1));
        let task = tokio::spawn(run(config, commands_rx, events_tx));
        Ok(Subscriber {
            commands,
            events,
            task,
        })
    }

    /// Subscribes to `topic` (now if connected, else on the next connection).
    pub async fn subscribe(&self, topic: &str) -> Result<(), ClientError> {
        self.commands
            .send(topic.to_string())
            .await
            .map_err(|_| ClientError::Stopped)
    }

    /// The next event; `None` once the subscriber has stopped (kicked).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    config: SubscriberConfig,
    mut commands: mpsc::Receiver<String>,
    events: mpsc::Sender<Event>,
) {
    let mut core = SubscriberCore::default();
    let mut attempt = 0u32;
    let mut next_url = 0usize;
    loop {
        let url = config.urls[next_url % config.urls.len()].clone();
        next_url += 1;
        let connected = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await;
        let (code, reason) = match connected {
            Ok(Ok((ws, _))) => {
                attempt = 0;
                if events
                    .send(Event::Connected { url: url.clone() })
                    .await
                    .is_err()
                {
                    return;
                }
                match serve(ws, &mut core, &mut commands, &events).await {
                    Ended::Closed(code, reason) => (code, reason),
                    Ended::AppGone => return,
                }
            }
            Ok(Err(e)) => (None, e.to_string()),
            Err(_) => (None, "no connection within 10 s".to_string()),
        };
        let kicked = code == Some(CLOSE_KICKED);
        if events
            .send(Event::Disconnected { code, reason })
            .await
            .is_err()
            || kicked
        {
            return;
        }
        // Back off, taking subscriptions meanwhile (they go out on the next connection).
        let base = config
            .min_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(config.max_backoff);
        attempt += 1;
        let delay = base.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                topic = commands.recv() => match topic {
                    Some(topic) => {
                        core.subscribe(&topic);
                    }
                    None => return,
                },
            }
        }
    }
}

enum Ended {
    Closed(Option<u16>, String),
    AppGone,
}

async fn serve<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    core: &mut SubscriberCore,
    commands: &mut mpsc::Receiver<String>,
    events: &mpsc::Sender<Event>,
) -> Ended
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    for frame in core.on_connected() {
        if let Err(e) = sink.send(Message::text(frame)).await {
            return Ended::Closed(None, e.to_string());
        }
    }
    loop {
        tokio::select! {
            topic = commands.recv() => {
                let Some(topic) = topic else { return Ended::AppGone };
                if let Some(frame) = core.subscribe(&topic) {
                    if let Err(e) = sink.send(Message::text(frame)).await {
                        return Ended::Closed(None, e.to_string());
                    }
                }
            }
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    for event in core.on_frame(text.as_str()) {
                        if events.send(event).await.is_err() {
                            return Ended::AppGone;
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame.map_or((None, String::new()), |f| {
                        (Some(u16::from(f.code)), f.reason.to_string())
                    });
                    return Ended::Closed(code, reason);
                }
                Some(Ok(_)) => {} // pings are answered by the library; binary is not sent
                Some(Err(e)) => return Ended::Closed(None, e.to_string()),
                None => return Ended::Closed(Some(u16::from(CloseCode::Abnormal)), "connection lost".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_resubscribes_with_the_positions_held_and_drops_what_is_not_newer() {
        let mut core = SubscriberCore::default();
        let first: serde_json::Value = serde_json::from_str(&core.subscribe("a").unwrap()).unwrap();
        assert_eq!(
            first,
            serde_json::json!({"type": "subscribe", "topic": "a", "data": ""})
        );
        assert_eq!(core.subscribe("a"), None, "held already");
        core.subscribe("b");
        let events =
            core.on_frame(r#"{"type":"publish","topic":"a","data":{"x":1},"epoch":3,"seq":7}"#);
        assert_eq!(
            events,
            vec![Event::Message {
                topic: "a".into(),
                data: r#"{"x":1}"#.into(),
                position: StreamPos { epoch: 3, seq: 7 },
            }]
        );
        // Not past the position: dropped.
        assert!(core
            .on_frame(r#"{"type":"publish","topic":"a","data":1,"epoch":3,"seq":7}"#)
            .is_empty());
        let frames = core.on_connected();
        assert_eq!(frames.len(), 1);
        let frame: serde_json::Value = serde_json::from_str(&frames[0]).unwrap();
        assert_eq!(frame["topic"], "a,b");
        assert_eq!(frame["since"]["a"]["seq"], 7);
        assert!(frame["since"].get("b").is_none());
        // Not recovered: the topic goes on from its position now.
        let events = core.on_frame(
            r#"{"type":"subscribed","topic":["a"],"recovered":{"a":false},"position":{"a":{"epoch":9,"seq":2}}}"#,
        );
        assert_eq!(
            events,
            vec![Event::Subscribed {
                topic: "a".into(),
                recovered: Some(false),
                position: Some(StreamPos { epoch: 9, seq: 2 }),
            }]
        );
        assert_eq!(core.position("a"), Some(StreamPos { epoch: 9, seq: 2 }));
    }
}
