//! Client publishes, sans-IO: each publish is numbered on its relay link and answered by
//! the distributor (`ClientPublishDone`); the number of unanswered publishes per link is
//! bounded; and one topic's publishes never take two paths at once, so a publisher's
//! messages to a topic keep their order across an owner change.
//!
//! ```text
//!  client publish (after the hooks)   handle_client_publish(now, conn, topic, data)
//!  relay control                      handle_publish_done(distributor, id, code, message)
//!  link state                         handle_link_up / handle_link_down
//!  timer                              handle_tick(now): unanswered past the answer timeout
//!        │
//!        ▼
//!  Output::Relay(ClientPublish{id})   sent to the owner in this edge's view
//!  Output::PublishFailed              tell the publishing connection (error frame)
//!  Output::Published                  a numbered publish was sequenced: its position
//!  Output::PauseReads / ResumeReads   stop / resume reading the publisher's socket
//! ```
//!
//! A publish goes out at once unless its topic already has publishes waiting here (it
//! queues behind them), or its topic has unanswered publishes at another distributor than
//! the one it would go to now (its owner changed: it waits until those are answered), or
//! the link it would go on has `max_in_flight` unanswered publishes (it waits for room).
//! While a connection has a publish waiting, its socket is not read ([`Output::PauseReads`]),
//! so each connection has at most one waiting publish and TCP pushes back on the client.
//! Waiting publishes are released in the order they arrived, per topic; topics waiting for
//! room on a link take turns.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use firetower_proto::client::{ClientError, ErrorCode};
use firetower_proto::relay::v1::{relay_frame::Frame, ClientPublish, RelayFrame};
use tokio::time::{Duration, Instant};

use super::{ConnId, EdgeCore, Output};
use crate::sessions::CLOSE_PUBLISH_UNCERTAIN;

/// Default bound on unanswered publishes per link (the config's `max_publishes_in_flight`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;
/// Default time an unanswered publish is kept (the config's `publish_answer_timeout_ms`).
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// A publish sent on a link and not yet answered.
#[derive(Debug)]
struct Sent {
    conn: ConnId,
    topic: String,
    at: Instant,
    /// The client's number for it, if it gave one: its answer carries it.
    client_id: Option<u64>,
}

/// A publish waiting here.
#[derive(Debug)]
struct Held {
    conn: ConnId,
    data: Bytes,
    client_id: Option<u64>,
    /// Its connection's reading was paused for it (not yet for a publish that is only
    /// passing through the queue in the call that received it).
    paused: bool,
}

/// One topic's publishes in progress.
#[derive(Debug, Default)]
struct TopicPublishes {
    /// The distributor its unanswered publishes went to, and how many there are. All go to
    /// one distributor: a publish routed elsewhere waits until these are answered.
    in_flight: Option<(u64, usize)>,
    /// Waiting publishes, oldest first.
    held: VecDeque<Held>,
    /// Listed in the room queue of this distributor's link.
    waits_for_room: Option<u64>,
}

impl TopicPublishes {
    fn idle(&self) -> bool {
        self.in_flight.is_none() && self.held.is_empty() && self.waits_for_room.is_none()
    }
}

/// Counters of the publish path.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PublishCounters {
    /// Publishes sent to a distributor.
    pub sent: u64,
    /// Publishes that had to wait (for room on a link, or for an owner change).
    pub held: u64,
    /// Publishes reported to their client as failed (an error answer, no route, a lost
    /// link, no answer in time).
    pub failed: u64,
    /// Of those, failed because no answer came within the answer timeout.
    pub timed_out: u64,
    /// Connections closed because a publish of theirs had no known outcome.
    pub closed_uncertain: u64,
    /// Answers that matched no unanswered publish (late, after a timeout).
    pub unmatched_answers: u64,
    /// Publishes not sent because their connection was being closed for an unknown
    /// outcome (they would have overtaken it).
    pub dropped_closing: u64,
}

/// The publish state of the edge core.
#[derive(Debug)]
pub(super) struct Publishes {
    max_in_flight: usize,
    answer_timeout: Duration,
    /// The next publish number: increasing over every link, never 0.
    next_id: u64,
    /// Unanswered publishes per link that is up, by number (so by age).
    links: BTreeMap<u64, BTreeMap<u64, Sent>>,
    topics: HashMap<String, TopicPublishes>,
    /// Per link: the topics whose first waiting publish waits for room on it, in turn.
    room: BTreeMap<u64, VecDeque<String>>,
    /// Connections whose reading is paused: the topics of their waiting publishes.
    paused: HashMap<ConnId, Vec<String>>,
    /// Connections being closed because a publish of theirs has no known outcome: nothing
    /// more of theirs is sent (until they are gone; bounded by the connections).
    closing: BTreeSet<ConnId>,
    pub(super) counters: PublishCounters,
}

impl Default for Publishes {
    fn default() -> Self {
        Publishes {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            answer_timeout: DEFAULT_ANSWER_TIMEOUT,
            next_id: 1,
            links: BTreeMap::new(),
            topics: HashMap::new(),
            room: BTreeMap::new(),
            paused: HashMap::new(),
            closing: BTreeSet::new(),
            counters: PublishCounters::default(),
        }
    }
}

/// What becomes of the first waiting publish of a topic.
enum Next {
    Send(u64),
    Fail,
    /// It waits: for room on this link (`Some`), or for its earlier publishes (`None`).
    Wait(Option<u64>),
}

impl EdgeCore {
    /// Sets the bound on unanswered publishes per link and the answer timeout.
    pub fn with_publish_limits(mut self, max_in_flight: usize, answer_timeout: Duration) -> Self {
        self.publishes.max_in_flight = max_in_flight.max(1);
        self.publishes.answer_timeout = answer_timeout;
        self
    }

    pub fn publish_counters(&self) -> &PublishCounters {
        &self.publishes.counters
    }

    /// A client publish (already checked and passed by the hooks): it goes to the owner of
    /// `slot_of(topic)` in this edge's view, now or once it may (see the module doc).
    pub fn handle_client_publish(
        &mut self,
        now: Instant,
        conn: ConnId,
        topic: String,
        data: Bytes,
        client_id: Option<u64>,
    ) {
        if self.publishes.closing.contains(&conn) {
            // Read before its close took effect: sending it could overtake the publish
            // whose outcome is unknown. The client sees the close (4003), not an answer.
            self.publishes.counters.dropped_closing += 1;
            return;
        }
        let entry = self.publishes.topics.entry(topic.clone()).or_default();
        entry.held.push_back(Held {
            conn,
            data,
            client_id,
            paused: false,
        });
        self.advance_publishes(now, &topic);
        // Still waiting: stop reading its connection until it is released.
        let Some(entry) = self.publishes.topics.get_mut(&topic) else {
            return;
        };
        if let Some(held) = entry
            .held
            .back_mut()
            .filter(|h| h.conn == conn && !h.paused)
        {
            held.paused = true;
            self.publishes.counters.held += 1;
            let topics = self.publishes.paused.entry(conn).or_default();
            topics.push(topic);
            if topics.len() == 1 {
                self.outputs.push_back(Output::PauseReads { conn });
            }
        }
    }

    /// The distributor answered publish `id`: sequenced (`error_code` empty) or failed.
    pub fn handle_publish_done(
        &mut self,
        now: Instant,
        distributor: u64,
        id: u64,
        error_code: &str,
        message: &str,
        position: (u64, u64),
    ) {
        let sent = self
            .publishes
            .links
            .get_mut(&distributor)
            .and_then(|link| link.remove(&id));
        let Some(sent) = sent else {
            self.publishes.counters.unmatched_answers += 1;
            return;
        };
        if !error_code.is_empty() {
            // A code this edge does not know (a newer distributor) still fails the publish.
            let code = ErrorCode::from_name(error_code).unwrap_or(ErrorCode::Unavailable);
            self.fail_publish(
                sent.conn,
                ClientError::new(code, message).with_id(sent.client_id),
                &sent.topic,
            );
        } else if let Some(client_id) = sent.client_id {
            self.outputs.push_back(Output::Published {
                conn: sent.conn,
                id: client_id,
                topic: sent.topic.clone(),
                epoch: position.0,
                seq: position.1,
            });
        }
        self.answered(now, distributor, &sent.topic);
        self.release_room(now, distributor);
    }

    /// Fails every publish sent on the link to `distributor` (its link went down) and
    /// re-decides the publishes that waited for room on it.
    pub(super) fn publishes_link_down(&mut self, now: Instant, distributor: u64) {
        let sent = self
            .publishes
            .links
            .remove(&distributor)
            .unwrap_or_default();
        let mut uncertain = BTreeSet::new();
        for sent in sent.values() {
            self.fail_publish(
                sent.conn,
                ClientError::new(
                    ErrorCode::Unavailable,
                    "the relay link was lost; the publish may or may not have been delivered",
                )
                .with_id(sent.client_id),
                &sent.topic,
            );
            uncertain.insert(sent.conn);
        }
        // Before anything waiting is released: a waiting publish of these connections
        // would otherwise go out by another route at once (sim seeds 307474, 307547).
        self.stop_uncertain(&uncertain);
        for sent in sent.values() {
            self.answered(now, distributor, &sent.topic);
        }
        self.close_uncertain(
            uncertain,
            "publish outcome unknown: the relay link was lost; reconnect",
        );
        self.release_room(now, distributor);
    }

    pub(super) fn publishes_link_up(&mut self, distributor: u64) {
        self.publishes.links.entry(distributor).or_default();
    }

    /// Fails the publishes that waited longer than the answer timeout for their answer.
    pub(super) fn publishes_tick(&mut self, now: Instant) {
        let timeout = self.publishes.answer_timeout;
        let distributors: Vec<u64> = self.publishes.links.keys().copied().collect();
        let mut uncertain = BTreeSet::new();
        for distributor in distributors {
            let mut expired = Vec::new();
            while let Some(link) = self.publishes.links.get_mut(&distributor) {
                // Numbered in sending order: the first is the oldest.
                let Some(entry) = link.first_entry() else {
                    break;
                };
                if now.saturating_duration_since(entry.get().at) < timeout {
                    break;
                }
                let sent = entry.remove();
                self.publishes.counters.timed_out += 1;
                self.fail_publish(
                    sent.conn,
                    ClientError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "the distributor did not answer within {} ms; the publish may or \
                             may not have been delivered",
                            timeout.as_millis()
                        ),
                    )
                    .with_id(sent.client_id),
                    &sent.topic,
                );
                uncertain.insert(sent.conn);
                expired.push(sent.topic);
            }
            // As for a lost link: nothing of theirs may be released after this.
            self.stop_uncertain(&uncertain);
            for topic in &expired {
                self.answered(now, distributor, topic);
            }
            let expired = !expired.is_empty();
            self.close_uncertain(
                std::mem::take(&mut uncertain),
                "publish outcome unknown: the distributor did not answer; reconnect",
            );
            if expired {
                self.release_room(now, distributor);
            }
        }
    }

    /// A connection is gone: its waiting publishes go with it.
    pub(super) fn publishes_disconnect(&mut self, now: Instant, conn: ConnId) {
        self.publishes.closing.remove(&conn);
        let Some(topics) = self.publishes.paused.remove(&conn) else {
            return;
        };
        for topic in topics {
            if let Some(entry) = self.publishes.topics.get_mut(&topic) {
                entry.held.retain(|h| h.conn != conn);
            }
            self.advance_publishes(now, &topic);
        }
    }

    /// One of `topic`'s publishes at `distributor` was answered (or given up).
    fn answered(&mut self, now: Instant, distributor: u64, topic: &str) {
        let Some(entry) = self.publishes.topics.get_mut(topic) else {
            return;
        };
        if let Some((at, n)) = entry.in_flight.as_mut() {
            assert_eq!(
                *at, distributor,
                "a topic's publishes in flight go to one place"
            );
            *n -= 1;
            if *n == 0 {
                entry.in_flight = None;
            }
        }
        self.advance_publishes(now, topic);
    }

    /// Lets the topics waiting for room on `distributor`'s link go, in turn, while it has
    /// room (or is down, which fails or re-routes them).
    fn release_room(&mut self, now: Instant, distributor: u64) {
        loop {
            let full = self
                .publishes
                .links
                .get(&distributor)
                .is_some_and(|link| link.len() >= self.publishes.max_in_flight);
            if full {
                return;
            }
            let Some(topic) = self
                .publishes
                .room
                .get_mut(&distributor)
                .and_then(VecDeque::pop_front)
            else {
                self.publishes.room.remove(&distributor);
                return;
            };
            if let Some(entry) = self.publishes.topics.get_mut(&topic) {
                entry.waits_for_room = None;
            }
            self.advance_publishes(now, &topic);
        }
    }

    /// Sends or fails `topic`'s waiting publishes from the first, as long as they may go.
    fn advance_publishes(&mut self, now: Instant, topic: &str) {
        loop {
            let Some(entry) = self.publishes.topics.get(topic) else {
                return;
            };
            if entry.held.is_empty() {
                if entry.idle() {
                    self.publishes.topics.remove(topic);
                }
                return;
            }
            if entry.waits_for_room.is_some() {
                // Its turn comes from the room queue.
                return;
            }
            let next = match self.publish_route(topic) {
                None => Next::Fail,
                Some(to) => match entry.in_flight {
                    Some((at, _)) if at != to => Next::Wait(None),
                    _ if self
                        .publishes
                        .links
                        .get(&to)
                        .is_none_or(|link| link.len() >= self.publishes.max_in_flight) =>
                    {
                        Next::Wait(Some(to))
                    }
                    _ => Next::Send(to),
                },
            };
            let Some(entry) = self.publishes.topics.get_mut(topic) else {
                return;
            };
            match next {
                Next::Wait(None) => return,
                Next::Wait(Some(to)) => {
                    entry.waits_for_room = Some(to);
                    self.publishes
                        .room
                        .entry(to)
                        .or_default()
                        .push_back(topic.to_string());
                    return;
                }
                Next::Fail => {
                    let Some(held) = entry.held.pop_front() else {
                        return;
                    };
                    self.fail_publish(
                        held.conn,
                        ClientError::new(
                            ErrorCode::Unavailable,
                            "the topic's distributor cannot be reached right now; retry",
                        )
                        .with_id(held.client_id),
                        topic,
                    );
                    if held.paused {
                        self.unpause(held.conn, topic);
                    }
                }
                Next::Send(to) => {
                    let Some(held) = entry.held.pop_front() else {
                        return;
                    };
                    let n = entry.in_flight.map_or(0, |(_, n)| n);
                    entry.in_flight = Some((to, n + 1));
                    let id = self.publishes.next_id;
                    self.publishes.next_id += 1;
                    if let Some(link) = self.publishes.links.get_mut(&to) {
                        link.insert(
                            id,
                            Sent {
                                conn: held.conn,
                                topic: topic.to_string(),
                                at: now,
                                client_id: held.client_id,
                            },
                        );
                    }
                    self.publishes.counters.sent += 1;
                    self.outputs.push_back(Output::Relay {
                        distributor: to,
                        frame: RelayFrame {
                            frame: Some(Frame::ClientPublish(ClientPublish {
                                topic: topic.to_string(),
                                data: held.data,
                                id,
                            })),
                        },
                    });
                    if held.paused {
                        self.unpause(held.conn, topic);
                    }
                }
            }
        }
    }

    /// Publishes of these connections have no known outcome: each may still be sequenced
    /// (a forward in flight from a distributor that dropped it), after anything the
    /// connection publishes next. The connections are closed ([`CLOSE_PUBLISH_UNCERTAIN`])
    /// so that a stream's order is never broken silently (sim seed 156).
    fn close_uncertain(&mut self, conns: BTreeSet<ConnId>, reason: &str) {
        for conn in conns {
            self.publishes.counters.closed_uncertain += 1;
            self.outputs.push_back(Output::Close {
                conn,
                code: CLOSE_PUBLISH_UNCERTAIN,
                reason: reason.to_string(),
            });
        }
    }

    /// These connections are to be closed for a publish with no known outcome: their
    /// waiting publishes leave the queues unsent, and what they publish until they are gone
    /// is dropped ([`PublishCounters::dropped_closing`]).
    fn stop_uncertain(&mut self, conns: &BTreeSet<ConnId>) {
        for &conn in conns {
            self.publishes.closing.insert(conn);
            // Each waiting publish pauses its connection, so `paused` lists its topics.
            let Some(topics) = self.publishes.paused.remove(&conn) else {
                continue;
            };
            for topic in topics {
                if let Some(entry) = self.publishes.topics.get_mut(&topic) {
                    let before = entry.held.len();
                    entry.held.retain(|h| h.conn != conn);
                    self.publishes.counters.dropped_closing += (before - entry.held.len()) as u64;
                }
            }
        }
    }

    fn fail_publish(&mut self, conn: ConnId, error: ClientError, topic: &str) {
        self.publishes.counters.failed += 1;
        self.outputs.push_back(Output::PublishFailed {
            conn,
            error: error.with_topic(topic),
        });
    }

    /// A waiting publish of `conn` left the queue: resume reading once it has none.
    fn unpause(&mut self, conn: ConnId, topic: &str) {
        let Some(topics) = self.publishes.paused.get_mut(&conn) else {
            return;
        };
        if let Some(at) = topics.iter().position(|t| t == topic) {
            topics.swap_remove(at);
        }
        if topics.is_empty() {
            self.publishes.paused.remove(&conn);
            self.outputs.push_back(Output::ResumeReads { conn });
        }
    }
}
