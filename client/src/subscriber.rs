//! A subscriber: one WebSocket to an edge at a time, that reconnects (to the next edge of
//! its list, with backoff) and recovers what it missed with the positions it holds
//! (docs/protocol.md §5.11).
//!
//! [`SubscriberCore`] decides, without I/O: the frames to send when a connection opens
//! (every subscription, with `since` where it has a position), what a server frame means
//! ([`Event`]s), and it drops a delivery not past its topic's position (the edge promises
//! none; this guards the application anyway, and reports the drop). It also tracks which
//! subscribes are acked, so one the edge gave up on (`unavailable`) is asked for again.
//! [`Subscriber`] is the task around it; the simulator's clients and the load generator's
//! recovery scenario drive the same core over their own sockets.

use std::collections::BTreeMap;
use std::time::Duration;

use firetower_proto::client::{parse_recovery, parse_server_frame, ServerFrame, StreamPos};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::error::ClientError;
use crate::frames;

/// The most topics one subscribe frame names (the edge's default `max_topics_per_frame`).
pub const TOPICS_PER_FRAME: usize = 256;
/// Close codes after which the subscriber does not come back on its own: a kick (4002).
pub const CLOSE_KICKED: u16 = 4002;

/// The close code reported when the subscriber itself drops a connection that stopped
/// answering (the edge uses it for a client that stopped answering its pings).
pub const CLOSE_NO_PONG: u16 = 4000;

/// Publishes sent on one connection and not answered yet, at most.
pub const MAX_UNANSWERED: usize = 4096;

/// The topic of the liveness probe (the JavaScript client's too). Its unsubscribe ack is
/// taken by the subscriber's task, not reported.
pub const PROBE_TOPIC: &str = "$firetower/probe";

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
    /// An unsubscribe was acked: no delivery of `topic` follows on this connection.
    Unsubscribed { topic: String },
    /// A message, in its topic's order.
    Message {
        topic: String,
        /// The JSON value, as its text.
        data: String,
        position: StreamPos,
    },
    /// A delivery that was not handed on as a [`Event::Message`]. The edge promises none
    /// not past the topic's position (§5.7, §5.11), so `NotNewer` means a broken promise;
    /// `NotSubscribed` follows an unsubscribe, by deliveries queued before its ack. Reported
    /// with the frame's content so that a shell which judges the server (the simulator's
    /// oracle, the load generator's counts) sees every delivery the core saw.
    Dropped {
        topic: String,
        data: String,
        position: StreamPos,
        reason: DropReason,
    },
    /// The edge's answer to a numbered publish (protocol §5.8).
    Published {
        id: u64,
        topic: String,
        position: StreamPos,
    },
    /// An error frame from the edge. When it fails a subscribe still waiting for its ack,
    /// the core has taken note (see [`SubscriberCore::retry_failed`]). `id`: the number of
    /// the publish it answers ([`Subscriber::publish`]); the subscriber itself reports two
    /// codes for publishes: `not_connected` (not sent: no connection at the time) and
    /// `disconnected` (sent, but the connection closed before the edge answered: it may or
    /// may not have been published).
    Error {
        code: String,
        message: String,
        topic: Option<String>,
        id: Option<u64>,
    },
    /// A frame that is not a server frame of the protocol (`error` says why).
    BadFrame { error: String, frame: String },
    /// The connection ended (close code, if any); the subscriber reconnects unless kicked.
    Disconnected { code: Option<u16>, reason: String },
}

/// Why a delivery was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// At or before the position already handed on for its topic.
    NotNewer,
    /// Of a topic not held (unsubscribed, or never subscribed).
    NotSubscribed,
}

/// Where a held topic's subscription stands on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The subscribe frame went out (or goes out when a connection opens); no ack yet.
    Waiting,
    /// Acked: the edge delivers the topic.
    Acked,
    /// The edge answered the subscribe with `unavailable` (the owner did not confirm in
    /// time, §5.6): the edge dropped it; the core sends it again when asked.
    Failed,
}

/// One held topic.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// The position of the last message handed to the application (or the one a
    /// `recovered: false` ack gave): what the next subscribe sends as `since`.
    position: Option<StreamPos>,
    state: State,
}

/// The decisions of a subscriber: which topics it holds, their positions, the frames to
/// send, and what each server frame means. No I/O and no clock: a shell feeds it the
/// server's text frames and sends the frames it returns.
///
/// ```text
///  subscribe / unsubscribe / retry_failed ──► frames to send now
///  on_connected ─────────────────────────────► the frames that open a connection
///  on_frame(text) ───────────────────────────► Events (messages, acks, drops, errors)
/// ```
///
/// `Clone`: a shell that replaces a connection by another object (the simulator's
/// reconnecting clients) carries the subscriptions and positions over with it.
#[derive(Debug, Default, Clone)]
pub struct SubscriberCore {
    topics: BTreeMap<String, Held>,
    /// Numbered publishes sent on this connection and not answered yet: id → topic. At most
    /// [`MAX_UNANSWERED`]: an edge that stops answering does not make it grow for ever.
    unanswered: BTreeMap<u64, String>,
}

impl SubscriberCore {
    /// Adds `topic`; the subscribe frame to send now if connected (`None` if already held).
    /// A topic whose subscribe failed (`unavailable`) is asked for again, with its position.
    pub fn subscribe(&mut self, topic: &str) -> Option<String> {
        self.subscribe_all(&[topic]).pop()
    }

    /// Adds `topics` (duplicates and held ones are skipped; failed ones are asked for
    /// again): the frames to send now if connected, several topics per frame.
    pub fn subscribe_all<S: AsRef<str>>(&mut self, topics: &[S]) -> Vec<String> {
        let mut asked: Vec<(String, Option<StreamPos>)> = Vec::new();
        for topic in topics {
            let topic = topic.as_ref();
            match self.topics.get_mut(topic) {
                Some(held) if held.state == State::Failed => {
                    held.state = State::Waiting;
                    asked.push((topic.to_string(), held.position));
                }
                Some(_) => {}
                None => {
                    self.topics.insert(
                        topic.to_string(),
                        Held {
                            position: None,
                            state: State::Waiting,
                        },
                    );
                    asked.push((topic.to_string(), None));
                }
            }
        }
        frames_for(&asked)
    }

    /// Drops `topic` (and its position): the unsubscribe frame to send now if connected
    /// (`None` if not held). Deliveries of it that were already on their way are reported
    /// as [`DropReason::NotSubscribed`].
    pub fn unsubscribe(&mut self, topic: &str) -> Option<String> {
        self.topics
            .remove(topic)
            .map(|_| frames::unsubscribe(&[topic]))
    }

    /// The frames that open a connection: every topic, with its position where it has one.
    /// Every topic waits for its ack on the new connection.
    pub fn on_connected(&mut self) -> Vec<String> {
        let mut all = Vec::with_capacity(self.topics.len());
        for (topic, held) in &mut self.topics {
            held.state = State::Waiting;
            all.push((topic.clone(), held.position));
        }
        frames_for(&all)
    }

    /// Whether a subscribe failed (`unavailable`) and waits to be asked for again: the
    /// shell calls [`SubscriberCore::retry_failed`] after a delay of its choosing.
    pub fn has_failed(&self) -> bool {
        self.topics.values().any(|h| h.state == State::Failed)
    }

    /// The frames that ask again for every topic whose subscribe failed, with positions.
    pub fn retry_failed(&mut self) -> Vec<String> {
        let mut asked = Vec::new();
        for (topic, held) in &mut self.topics {
            if held.state == State::Failed {
                held.state = State::Waiting;
                asked.push((topic.clone(), held.position));
            }
        }
        frames_for(&asked)
    }

    /// A publish numbered `id` (`data`: one JSON value, copied verbatim): the frame to send
    /// now. The edge answers it with `published` (its position) or an error carrying `id`;
    /// if the connection ends first, [`SubscriberCore::on_disconnected`] reports it. With
    /// [`MAX_UNANSWERED`] publishes waiting for their answers, none is sent: `Err` is the
    /// `too_many_unanswered` error to report instead.
    pub fn publish(&mut self, id: u64, topic: &str, data: &str) -> Result<String, Event> {
        if self.unanswered.len() >= MAX_UNANSWERED {
            return Err(Event::Error {
                code: "too_many_unanswered".into(),
                message: format!("{MAX_UNANSWERED} publishes wait for the edge's answer; not sent"),
                topic: Some(topic.to_string()),
                id: Some(id),
            });
        }
        self.unanswered.insert(id, topic.to_string());
        Ok(frames::publish(topic, data, Some(id)))
    }

    /// The connection ended: every publish it had not answered is reported as a
    /// `disconnected` error (its outcome is unknown: the edge may have published it).
    pub fn on_disconnected(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.unanswered)
            .into_iter()
            .map(|(id, topic)| Event::Error {
                code: "disconnected".into(),
                message: "the connection closed before the edge answered this publish; it may or may not have been published".into(),
                topic: Some(topic),
                id: Some(id),
            })
            .collect()
    }

    /// The position held for `topic`.
    pub fn position(&self, topic: &str) -> Option<StreamPos> {
        self.topics.get(topic).and_then(|h| h.position)
    }

    /// Every topic held, with its position, in name order.
    pub fn topics(&self) -> impl Iterator<Item = (&str, Option<StreamPos>)> + '_ {
        self.topics.iter().map(|(t, h)| (t.as_str(), h.position))
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
                let reason = match self.topics.get_mut(topic.as_ref()) {
                    None => Some(DropReason::NotSubscribed),
                    Some(held) if held.position.is_some_and(|p| position <= p) => {
                        Some(DropReason::NotNewer)
                    }
                    Some(held) => {
                        held.position = Some(position);
                        None
                    }
                };
                let (topic, data) = (topic.into_owned(), data.to_string());
                vec![match reason {
                    None => Event::Message {
                        topic,
                        data,
                        position,
                    },
                    Some(reason) => Event::Dropped {
                        topic,
                        data,
                        position,
                        reason,
                    },
                }]
            }
            Ok(ServerFrame::Subscribed(topics)) => {
                let (recovered, positions) = parse_recovery(text).unwrap_or_default();
                topics
                    .into_iter()
                    .map(|topic| {
                        let position = positions.get(&topic).copied();
                        if let Some(held) = self.topics.get_mut(&topic) {
                            held.state = State::Acked;
                            if let Some(p) = position {
                                // Not recovered: go on from where the topic is now.
                                held.position = Some(p);
                            }
                        }
                        Event::Subscribed {
                            recovered: recovered.get(&topic).copied(),
                            position,
                            topic,
                        }
                    })
                    .collect()
            }
            Ok(ServerFrame::Unsubscribed(topics)) => topics
                .into_iter()
                .map(|topic| Event::Unsubscribed { topic })
                .collect(),
            Ok(ServerFrame::Published {
                id,
                topic,
                epoch,
                seq,
            }) => {
                self.unanswered.remove(&id);
                vec![Event::Published {
                    id,
                    topic,
                    position: StreamPos { epoch, seq },
                }]
            }
            Ok(ServerFrame::Error {
                code,
                message,
                topic,
                id,
            }) => {
                match id {
                    // The answer to a publish, not about a subscription.
                    Some(id) => {
                        self.unanswered.remove(&id);
                    }
                    None => self.on_error(&code, topic.as_deref()),
                }
                vec![Event::Error {
                    code,
                    message,
                    topic,
                    id,
                }]
            }
            Ok(ServerFrame::Heartbeat) => Vec::new(),
            Err(error) => vec![Event::BadFrame {
                error,
                frame: text.to_string(),
            }],
        }
    }

    /// An error frame about `topic` (a subscribe timeout names several, joined by `,`):
    /// a subscribe still waiting for its ack has failed. `unavailable`: the edge dropped it
    /// and it may be asked for again (§5.6); `denied`: refused for good, so forgotten. An
    /// error about a topic already acked answers something else (a publish) and changes
    /// nothing here.
    fn on_error(&mut self, code: &str, topic: Option<&str>) {
        let failed = match code {
            "unavailable" => Some(State::Failed),
            "denied" => None,
            _ => return,
        };
        for t in topic.into_iter().flat_map(|t| t.split(',')) {
            let Some(held) = self.topics.get_mut(t) else {
                continue;
            };
            if held.state != State::Waiting {
                continue;
            }
            match failed {
                Some(state) => held.state = state,
                None => {
                    self.topics.remove(t);
                }
            }
        }
    }
}

/// Subscribe frames for `topics`, at most [`TOPICS_PER_FRAME`] each.
fn frames_for(topics: &[(String, Option<StreamPos>)]) -> Vec<String> {
    topics
        .chunks(TOPICS_PER_FRAME)
        .map(|chunk| {
            let refs: Vec<(&str, Option<StreamPos>)> =
                chunk.iter().map(|(t, p)| (t.as_str(), *p)).collect();
            frames::subscribe(&refs)
        })
        .collect()
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
    /// Liveness, as the JavaScript client checks it: after `heartbeat_interval` without any
    /// frame (the edge's pings included) the subscriber sends a probe (an unsubscribe of
    /// [`PROBE_TOPIC`], which every edge acks at once and which touches no subscription);
    /// nothing within `heartbeat_timeout` after that ends the connection (reported with
    /// code 4000) and it reconnects. A frozen edge or a route TCP has not seen die is
    /// noticed this way rather than never.
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        SubscriberConfig {
            urls: Vec::new(),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            event_buffer: 1024,
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(5),
        }
    }
}

/// What the application asks of the subscriber's task.
enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Publish {
        id: u64,
        topic: String,
        data: String,
    },
}

/// The subscriber's task and its two channels.
pub struct Subscriber {
    commands: mpsc::Sender<Command>,
    /// The number the next publish takes.
    next_publish: std::sync::atomic::AtomicU64,
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
            next_publish: std::sync::atomic::AtomicU64::new(1),
            events,
            task,
        })
    }

    /// Subscribes to `topic` (now if connected, else on the next connection).
    pub async fn subscribe(&self, topic: &str) -> Result<(), ClientError> {
        self.command(Command::Subscribe(topic.to_string())).await
    }

    /// Unsubscribes from `topic` and forgets its position.
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), ClientError> {
        self.command(Command::Unsubscribe(topic.to_string())).await
    }

    /// Publishes `data` (one JSON value, as its text) to `topic` over the WebSocket; returns
    /// the number the answer will carry: [`Event::Published`] with the message's position,
    /// or [`Event::Error`] with this `id` (the edge's refusal, or `not_connected` /
    /// `disconnected` from the subscriber). In one connection, one topic's publishes keep
    /// their order. Not retried: a retry after `disconnected` may publish twice.
    pub async fn publish(&self, topic: &str, data: &str) -> Result<u64, ClientError> {
        if let Err(e) = serde_json::from_str::<&serde_json::value::RawValue>(data) {
            return Err(ClientError::Config(format!(
                "data is not one JSON value: {e}"
            )));
        }
        let id = self
            .next_publish
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.command(Command::Publish {
            id,
            topic: topic.to_string(),
            data: data.to_string(),
        })
        .await?;
        Ok(id)
    }

    async fn command(&self, command: Command) -> Result<(), ClientError> {
        self.commands
            .send(command)
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

/// Applies `command` to the core: the frame to send if connected, or the error that
/// answers a publish not sent.
fn apply(core: &mut SubscriberCore, command: Command) -> Result<Option<String>, Event> {
    Ok(match command {
        Command::Subscribe(topic) => core.subscribe(&topic),
        Command::Unsubscribe(topic) => core.unsubscribe(&topic),
        Command::Publish { id, topic, data } => Some(core.publish(id, &topic, &data)?),
    })
}

/// A publish asked for while no connection is open: not sent, and said so.
fn not_connected(id: u64, topic: String) -> Event {
    Event::Error {
        code: "not_connected".into(),
        message: "no connection to an edge at the time; not sent".into(),
        topic: Some(topic),
        id: Some(id),
    }
}

/// `base` less up to half of it, at random: clients cut off together come back spread out.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

async fn run(
    config: SubscriberConfig,
    mut commands: mpsc::Receiver<Command>,
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
                let ended = serve(ws, &config, &mut core, &mut commands, &events).await;
                for event in core.on_disconnected() {
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                match ended {
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
        let deadline = tokio::time::Instant::now() + jittered(base);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                command = commands.recv() => match command {
                    Some(Command::Publish { id, topic, .. }) => {
                        if events.send(not_connected(id, topic)).await.is_err() {
                            return;
                        }
                    }
                    Some(command) => {
                        // Only a publish is refused, and publishes are answered above.
                        let _ = apply(&mut core, command);
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
    config: &SubscriberConfig,
    core: &mut SubscriberCore,
    commands: &mut mpsc::Receiver<Command>,
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
    // When to ask again for subscribes the edge answered with `unavailable` (§5.6: the
    // owner did not confirm in time). Not at once: the owner is likely still unreachable.
    let mut retry_at: Option<tokio::time::Instant> = None;
    // Liveness: when the last frame came, and when the probe went out if one is waiting.
    let mut heard_at = tokio::time::Instant::now();
    let mut probe_sent_at: Option<tokio::time::Instant> = None;
    loop {
        let alive_until = match probe_sent_at {
            None => heard_at + config.heartbeat_interval,
            Some(sent) => sent + config.heartbeat_timeout,
        };
        let to_send = tokio::select! {
            _ = tokio::time::sleep_until(alive_until) => {
                if probe_sent_at.is_some() {
                    return Ended::Closed(
                        Some(CLOSE_NO_PONG),
                        format!(
                            "no frame within {} ms of a probe (client side)",
                            config.heartbeat_timeout.as_millis()
                        ),
                    );
                }
                probe_sent_at = Some(tokio::time::Instant::now());
                vec![frames::unsubscribe(&[PROBE_TOPIC])]
            }
            command = commands.recv() => {
                let Some(command) = command else { return Ended::AppGone };
                match apply(core, command) {
                    Ok(frame) => frame.into_iter().collect(),
                    Err(refused) => {
                        if events.send(refused).await.is_err() {
                            return Ended::AppGone;
                        }
                        Vec::new()
                    }
                }
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                retry_at = None;
                core.retry_failed()
            }
            message = stream.next() => {
                heard_at = tokio::time::Instant::now();
                probe_sent_at = None;
                match message {
                Some(Ok(Message::Text(text))) => {
                    let mut error = false;
                    for event in core.on_frame(text.as_str()) {
                        if matches!(&event, Event::Unsubscribed { topic } if topic == PROBE_TOPIC) {
                            continue;
                        }
                        error |= matches!(event, Event::Error { .. });
                        if events.send(event).await.is_err() {
                            return Ended::AppGone;
                        }
                    }
                    // Only an error frame fails a subscribe; the check walks every topic,
                    // so it is not made per delivery.
                    if error && retry_at.is_none() && core.has_failed() {
                        retry_at = Some(tokio::time::Instant::now() + jittered(config.min_backoff.saturating_mul(2)));
                    }
                    Vec::new()
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame.map_or((None, String::new()), |f| {
                        (Some(u16::from(f.code)), f.reason.to_string())
                    });
                    return Ended::Closed(code, reason);
                }
                Some(Ok(_)) => Vec::new(), // pings are answered by the library; binary is not sent
                Some(Err(e)) => return Ended::Closed(None, e.to_string()),
                None => return Ended::Closed(Some(u16::from(CloseCode::Abnormal)), "connection lost".into()),
                }
            }
        };
        for frame in to_send {
            if let Err(e) = sink.send(Message::text(frame)).await {
                return Ended::Closed(None, e.to_string());
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
        // Not past the position: dropped, and said so.
        assert_eq!(
            core.on_frame(r#"{"type":"publish","topic":"a","data":1,"epoch":3,"seq":7}"#),
            vec![Event::Dropped {
                topic: "a".into(),
                data: "1".into(),
                position: StreamPos { epoch: 3, seq: 7 },
                reason: DropReason::NotNewer,
            }]
        );
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

    /// The acks of `topics` (no recovery fields).
    fn acked(core: &mut SubscriberCore, topics: &str) -> Vec<Event> {
        core.on_frame(&format!(r#"{{"type":"subscribed","topic":{topics}}}"#))
    }

    #[test]
    fn topics_asked_together_share_a_frame_and_held_ones_are_not_asked_again() {
        let mut core = SubscriberCore::default();
        assert_eq!(
            core.subscribe_all(&["a", "b", "a"]),
            vec![r#"{"type":"subscribe","topic":"a,b","data":""}"#.to_string()]
        );
        assert_eq!(
            core.subscribe_all(&["b", "c"]),
            vec![r#"{"type":"subscribe","topic":"c","data":""}"#.to_string()]
        );
        assert!(core.subscribe_all(&["a", "c"]).is_empty());
        let names: Vec<&str> = core.topics().map(|(t, _)| t).collect();
        assert_eq!(names, ["a", "b", "c"]);
        // More than a frame may name: several frames.
        let many: Vec<String> = (0..TOPICS_PER_FRAME + 1).map(|i| format!("m{i}")).collect();
        assert_eq!(core.subscribe_all(&many).len(), 2);
    }

    #[test]
    fn an_unsubscribed_topic_is_forgotten_and_its_late_deliveries_reported_as_dropped() {
        let mut core = SubscriberCore::default();
        core.subscribe("a");
        acked(&mut core, r#"["a"]"#);
        core.on_frame(r#"{"type":"publish","topic":"a","data":1,"epoch":1,"seq":4}"#);
        assert_eq!(core.unsubscribe("b"), None, "not held");
        assert_eq!(
            core.unsubscribe("a").as_deref(),
            Some(r#"{"type":"unSubscribe","topic":"a"}"#)
        );
        // Queued at the edge before the unsubscribe: reported, not handed on.
        assert_eq!(
            core.on_frame(r#"{"type":"publish","topic":"a","data":2,"epoch":1,"seq":5}"#),
            vec![Event::Dropped {
                topic: "a".into(),
                data: "2".into(),
                position: StreamPos { epoch: 1, seq: 5 },
                reason: DropReason::NotSubscribed,
            }]
        );
        assert_eq!(
            core.on_frame(r#"{"type":"unSubscribed","topic":["a"]}"#),
            vec![Event::Unsubscribed { topic: "a".into() }]
        );
        assert!(core.on_connected().is_empty());
        // Subscribed again: from the live stream, without the old position.
        assert_eq!(
            core.subscribe("a").as_deref(),
            Some(r#"{"type":"subscribe","topic":"a","data":""}"#)
        );
        assert_eq!(core.position("a"), None);
    }

    #[test]
    fn a_subscribe_the_owner_did_not_confirm_is_asked_again_with_its_position() {
        let mut core = SubscriberCore::default();
        core.subscribe_all(&["a", "b", "c"]);
        acked(&mut core, r#"["a","b","c"]"#);
        core.on_frame(r#"{"type":"publish","topic":"a","data":1,"epoch":2,"seq":8}"#);
        // A new connection: every topic waits for its ack again.
        assert_eq!(core.on_connected().len(), 1);
        acked(&mut core, r#"["c"]"#);
        // `c` is acked: an error about it answers something else (a publish).
        core.on_frame(r#"{"type":"error","code":"unavailable","message":"m","topic":"c"}"#);
        assert!(!core.has_failed());
        // The subscribe timeout names every topic it dropped.
        let events =
            core.on_frame(r#"{"type":"error","code":"unavailable","message":"m","topic":"a,b,c"}"#);
        assert_eq!(
            events,
            vec![Event::Error {
                code: "unavailable".into(),
                message: "m".into(),
                topic: Some("a,b,c".into()),
                id: None,
            }]
        );
        assert!(core.has_failed());
        assert_eq!(
            core.retry_failed(),
            vec![
                r#"{"type":"subscribe","topic":"a,b","data":"","since":{"a":{"epoch":2,"seq":8}}}"#
                    .to_string()
            ]
        );
        assert!(!core.has_failed());
        assert!(core.retry_failed().is_empty(), "waiting again");
        // Failed again; the application's own subscribe asks again too.
        core.on_frame(r#"{"type":"error","code":"unavailable","message":"m","topic":"b"}"#);
        assert_eq!(
            core.subscribe("b").as_deref(),
            Some(r#"{"type":"subscribe","topic":"b","data":""}"#)
        );
        // Refused for good: forgotten.
        core.on_frame(r#"{"type":"error","code":"denied","message":"m","topic":"b"}"#);
        let names: Vec<&str> = core.topics().map(|(t, _)| t).collect();
        assert_eq!(names, ["a", "c"]);
    }

    #[test]
    fn publishes_unanswered_when_the_connection_ends_are_reported_and_answers_touch_no_subscribe() {
        let mut core = SubscriberCore::default();
        core.subscribe("t");
        assert_eq!(
            core.publish(1, "t", r#"{"n":1}"#).as_deref(),
            Ok(r#"{"type":"publish","topic":"t","data":{"n":1},"id":1}"#)
        );
        assert!(core.publish(2, "t", "2").is_ok());
        assert!(core.publish(3, "u", "3").is_ok());
        core.on_frame(r#"{"type":"published","id":1,"topic":"t","epoch":1,"seq":1}"#);
        // A publish refused while `t`'s subscribe waits: the subscribe has not failed.
        let refused = core
            .on_frame(r#"{"type":"error","code":"unavailable","message":"m","topic":"t","id":2}"#);
        assert_eq!(
            refused[0],
            Event::Error {
                code: "unavailable".into(),
                message: "m".into(),
                topic: Some("t".into()),
                id: Some(2),
            }
        );
        assert!(!core.has_failed());
        // Only 3 was neither published nor refused.
        let lost = core.on_disconnected();
        assert_eq!(lost.len(), 1);
        assert!(
            matches!(&lost[0], Event::Error { code, topic: Some(t), id: Some(3), .. } if code == "disconnected" && t == "u")
        );
        assert!(core.on_disconnected().is_empty());
        // An edge that stops answering: past MAX_UNANSWERED, publishes are refused here.
        for id in 0..MAX_UNANSWERED as u64 {
            assert!(core.publish(id, "t", "0").is_ok());
        }
        assert!(matches!(
            core.publish(9999, "t", "0"),
            Err(Event::Error { code, id: Some(9999), .. }) if code == "too_many_unanswered"
        ));
    }

    #[test]
    fn answers_to_numbered_publishes_and_frames_that_are_not_the_protocol_are_told_apart() {
        let mut core = SubscriberCore::default();
        assert_eq!(
            core.on_frame(r#"{"type":"published","id":4,"topic":"t","epoch":1,"seq":2}"#),
            vec![Event::Published {
                id: 4,
                topic: "t".into(),
                position: StreamPos { epoch: 1, seq: 2 },
            }]
        );
        let events = core.on_frame("{nope");
        assert!(
            matches!(&events[..], [Event::BadFrame { frame, .. }] if frame == "{nope"),
            "{events:?}"
        );
        assert!(core.on_frame("heartbeat").is_empty());
        // A clone carries subscriptions and positions (a shell that moves them to a new
        // connection object).
        core.subscribe("x");
        core.on_frame(r#"{"type":"publish","topic":"x","data":0,"epoch":5,"seq":1}"#);
        let mut moved = core.clone();
        let frames = moved.on_connected();
        assert_eq!(
            frames,
            vec![
                r#"{"type":"subscribe","topic":"x","data":"","since":{"x":{"epoch":5,"seq":1}}}"#
                    .to_string()
            ]
        );
    }
}
