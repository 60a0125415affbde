//! Recovery, sans-IO: a client that subscribes with the position it last saw of a topic
//! gets what the topic's owner sequenced after it, then the live deliveries, with no gap
//! and no duplicate at the seam.
//!
//! ```text
//!  client subscribe with "since"   handle_subscribe_from(now, conn, topics, since)
//!  relay lane                      handle_recovered(now, Recovered)
//!  timer                           handle_tick(now): unanswered past the subscribe timeout
//!        │
//!        ▼
//!  Output::Relay(Recover{id})      to the topic's owner, once the topic's interest is acked
//!  Output::SubscribedFrom          the ack, saying whether it was recovered (or the position)
//!  Output::Deliver (one recipient) the missed deliveries, in order
//! ```
//!
//! The owner answers on the topic's lane, behind every delivery of the topic it queued
//! before: the deliveries before the answer are in it (if after the position), and those
//! after it on the lane follow it. So the connection joins the topic's recipients when the
//! answer's last frame arrives, and not before.
//!
//! A split topic (any topic with a hot entry, or whose route here is not its own name) is
//! numbered by its owner too, but its deliveries come on its sub-topics' lanes, not on
//! the lane of the answer. The edge passes them on in the stream's order
//! ([`super::LocalTopic::pass_in_order`]), so the seam is a position instead: the answer
//! covers the stream up to the owner's position `P`; the connection gets what this edge
//! passed after `P` while it waited (kept for it, [`super::RECOVERY_RECORD`]) and joins,
//! or, when this edge has not passed `P` yet, joins just before the first delivery past it.
//!
//! An answer can be as large as the owner's history of the topic (1 MiB by default), and it
//! is queued on the relay lane toward this edge at once; so at most
//! [`MAX_RECOVERIES_IN_FLIGHT`] requests are unanswered at a time, rather than let a crowd
//! of reconnecting clients overflow the edge's lane, which would close its link for
//! everyone. A recovery beyond that waits its turn in a queue (the connection is not a
//! recipient yet, exactly as while its request is out); one that waits past the subscribe
//! timeout fails like a subscribe that was never confirmed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use firetower_proto::client::{Recovery, StreamPos};
use firetower_proto::relay::v1::{relay_frame::Frame, Recover, Recovered, RelayFrame};
use tokio::time::Instant;

use super::{ConnId, CoreCounters, EdgeCore, Fanout, Output};
use crate::frame::delivery_frame;

/// Recover requests one edge has unanswered at a time (see the module doc): with the
/// default 1 MiB of history per topic, at most 32 MiB of answers queued toward it, below
/// the distributor's `lane_hard_bytes` (64 MiB).
pub const MAX_RECOVERIES_IN_FLIGHT: usize = 32;

/// A connection waiting for its recovery of one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Recovering {
    pub(super) since: StreamPos,
    /// The request sent to the owner (0: not sent yet, the owner's link is down).
    request: u64,
    /// When the connection asked (for the subscribe timeout).
    pub(super) asked: Instant,
    /// The ack went out (with the answer's first frame).
    acked: bool,
    /// A split topic's: the seam is the answer's position (see the module doc).
    split: bool,
}

impl Recovering {
    /// Whether its request went to the owner (and counts as in flight).
    pub(super) fn sent(&self) -> bool {
        self.request != 0
    }

    /// Whether what the edge passes on must be kept for it: a split topic's recovery,
    /// unanswered, from the moment it waits, also while its request waits to be sent (the
    /// answer can stop short of a message this edge passed before the request went out:
    /// sim seed 76).
    pub(super) fn records(&self) -> bool {
        self.split
    }
}

impl EdgeCore {
    /// A connection subscribes to `topics`, with the position it last saw for those in
    /// `since` (see [`EdgeCore::handle_subscribe`]; `since` names only topics of `topics`).
    /// One it is already recovering keeps its recovery under way.
    pub fn handle_subscribe_from(
        &mut self,
        now: Instant,
        conn: ConnId,
        topics: Vec<String>,
        since: Vec<(String, StreamPos)>,
    ) {
        let since: BTreeMap<String, StreamPos> = since.into_iter().collect();
        for (topic, pos) in &since {
            // Already held by this connection: recover from the position it gives now.
            if let Some(entry) = self.topics.get_mut(topic) {
                if entry.subscribers.contains(&conn) {
                    entry.drop_conn(conn);
                    entry.positions.insert(conn, *pos);
                    self.start_recovery(now, topic, conn);
                }
            }
        }
        self.subscribe(now, conn, topics, &since);
    }

    /// The topic's interest is acknowledged and the connection asked with a position:
    /// ask the owner, or answer at once where no position can be served.
    pub(super) fn start_recovery(&mut self, now: Instant, topic: &str, conn: ConnId) {
        let link = self.owner_link(topic);
        let hot = self.routing.hot_route(topic).is_some();
        let Some(entry) = self.topics.get_mut(topic) else {
            return;
        };
        let Some(since) = entry.positions.remove(&conn) else {
            return;
        };
        let split = hot || entry.routes.iter().any(|r| r.name != topic);
        let waiting = Recovering {
            since,
            request: 0,
            asked: now,
            acked: false,
            split,
        };
        if self.recoveries_in_flight >= MAX_RECOVERIES_IN_FLIGHT {
            entry.recovering.insert(conn, waiting);
            self.recovery_queue.push_back((topic.to_string(), conn));
            return;
        }
        if let Some((owner, _)) = link {
            entry.recovering.insert(conn, waiting);
            self.send_recover(owner, topic.to_string(), conn);
        } else {
            entry.recovering.insert(conn, waiting);
        }
    }

    /// Sends the queued recoveries that fit among those in flight, oldest first. One whose
    /// owner has no link now is left to its subscribe timeout, as when it was asked.
    pub(super) fn send_queued_recoveries(&mut self) {
        while self.recoveries_in_flight < MAX_RECOVERIES_IN_FLIGHT {
            let Some((topic, conn)) = self.recovery_queue.pop_front() else {
                return;
            };
            let link = self.owner_link(&topic);
            let Some(entry) = self.topics.get_mut(&topic) else {
                continue;
            };
            let Some(waiting) = entry.recovering.get_mut(&conn) else {
                continue;
            };
            let Some((owner, _)) = link else {
                continue;
            };
            if !waiting.sent() {
                self.send_recover(owner, topic, conn);
            }
        }
    }

    /// Sends the Recover request of `conn`'s waiting recovery of `topic` to its owner.
    fn send_recover(&mut self, owner: u64, topic: String, conn: ConnId) {
        let Some(waiting) = self
            .topics
            .get_mut(&topic)
            .and_then(|entry| entry.recovering.get_mut(&conn))
        else {
            return;
        };
        self.next_recovery += 1;
        self.recoveries_in_flight += 1;
        waiting.request = self.next_recovery;
        let (epoch, seq, request_id) = (waiting.since.epoch, waiting.since.seq, waiting.request);
        self.outputs.push_back(Output::Relay {
            distributor: owner,
            frame: RelayFrame {
                frame: Some(Frame::Recover(Recover {
                    topic,
                    epoch,
                    seq,
                    request_id,
                })),
            },
        });
    }

    /// One frame of an owner's answer to a Recover, in lane order (see the module doc).
    pub fn handle_recovered(&mut self, answer: Recovered) {
        self.recovered_frame(answer);
        self.send_queued_recoveries();
    }

    fn recovered_frame(&mut self, answer: Recovered) {
        let topic = answer.topic.clone();
        // Deliveries of the topic held behind a gap ([`super::seam`]) would reach the
        // connection after the answer, which may hold them already.
        let seam = self
            .topics
            .get(&topic)
            .is_some_and(|e| self.seam_holds(e.routes.iter().map(|r| r.name.clone())));
        let Some(entry) = self.topics.get_mut(&topic) else {
            return; // Nobody here holds the topic any more.
        };
        // The connection waiting for this request (it left, or gave up waiting, if none).
        let Some((conn, waiting)) = entry
            .recovering
            .iter_mut()
            .find(|(_, w)| w.request == answer.request_id && w.sent())
        else {
            return;
        };
        let conn = *conn;
        if waiting.split {
            self.split_recovered(&topic, conn, answer);
            return;
        }
        // The topic changes route (here, or at the owner: its messages carry a hot-topic
        // tag): the edge passes such messages through its route holds, in its own
        // numbering, so one served here would come again through them (sim seed 850779:
        // a message recovered at the owner's position, then passed again by the route
        // switch). Not recoverable: the connection joins the live deliveries as is.
        let changing = seam
            || entry.routes.len() > 1
            || !entry.ahead.is_empty()
            || answer.messages.iter().any(|m| m.route_tag > 0);
        if changing {
            let acked = waiting.acked;
            entry.recovering.remove(&conn);
            entry.add_subscriber(conn);
            self.recoveries_in_flight -= 1;
            self.counters.recoveries_refused += 1;
            if !acked {
                self.outputs.push_back(Output::SubscribedFrom {
                    conn,
                    topic,
                    recovery: Recovery {
                        recovered: false,
                        position: None,
                    },
                });
            }
            // Already acked as recovered (a long answer in several frames, the change in
            // a later one): the rest is not sent; documented in docs/protocol.md §5.11.
            return;
        }
        ack_once(&mut self.outputs, conn, &topic, waiting, &answer);
        send_answered(
            &mut self.outputs,
            &mut self.counters,
            conn,
            &topic,
            waiting.since,
            &answer,
        );
        if answer.last {
            entry.recovering.remove(&conn);
            let answered = (answer.epoch, answer.seq);
            if answer.ok && entry.client_last < answered {
                // This edge has passed less of the stream than the answer gave (the topic
                // is new here): the connection joins just before the first delivery past
                // the answer, so none it was given comes again (a route change this edge
                // learns of later replays older messages: sim seed 41476).
                entry.joining.insert(conn, answered);
            } else {
                entry.add_subscriber(conn);
            }
            self.recoveries_in_flight -= 1;
            if answer.ok {
                self.counters.recoveries += 1;
            } else {
                self.counters.recoveries_refused += 1;
            }
        }
    }

    /// One frame of the answer to a split topic's recovery (see the module doc).
    fn split_recovered(&mut self, topic: &str, conn: ConnId, answer: Recovered) {
        let Some(entry) = self.topics.get_mut(topic) else {
            return;
        };
        let Some(waiting) = entry.recovering.get_mut(&conn) else {
            return;
        };
        ack_once(&mut self.outputs, conn, topic, waiting, &answer);
        send_answered(
            &mut self.outputs,
            &mut self.counters,
            conn,
            topic,
            waiting.since,
            &answer,
        );
        if !answer.last {
            return;
        }
        entry.recovering.remove(&conn);
        self.recoveries_in_flight -= 1;
        if !answer.ok {
            self.counters.recoveries_refused += 1;
            entry.add_subscriber(conn);
            return;
        }
        self.counters.recoveries += 1;
        let answered = (answer.epoch, answer.seq);
        let passed = entry.client_last;
        tracing::trace!(
            topic,
            conn,
            ?answered,
            ?passed,
            recorded = ?entry.record.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
            "split recovery answered"
        );
        if passed <= answered {
            // This edge has not passed the answer's position yet: the connection joins
            // just before the first delivery past it.
            entry.joining.insert(conn, answered);
            return;
        }
        // This edge passed messages after the answer's position while the answer was on
        // its way: the connection gets them from what was kept for it.
        if entry.record_dropped > answered {
            self.counters.recovery_record_short += 1;
        }
        let to: Arc<[ConnId]> = Arc::from([conn]);
        for (at, frame) in &entry.record {
            if *at > answered {
                self.counters.recovered_deliveries += 1;
                self.outputs.push_back(Output::Deliver(Fanout {
                    frame: frame.clone(),
                    conns: to.clone(),
                }));
            }
        }
        entry.add_subscriber(conn);
    }

    /// Recoveries unanswered past the subscribe timeout, by connection (the tick fails them
    /// like subscribes that waited too long).
    pub(super) fn recoveries_timed_out(&self, now: Instant) -> Vec<(ConnId, String)> {
        let timeout = self.subscribe_timeout;
        let mut out = Vec::new();
        for (topic, entry) in &self.topics {
            for (conn, waiting) in &entry.recovering {
                if now.saturating_duration_since(waiting.asked) >= timeout {
                    out.push((*conn, topic.clone()));
                }
            }
        }
        out
    }
}

/// The ack of a recovering subscribe, with the answer's first frame: recovered, or not
/// with the topic's current position.
fn ack_once(
    outputs: &mut VecDeque<Output>,
    conn: ConnId,
    topic: &str,
    waiting: &mut Recovering,
    answer: &Recovered,
) {
    if waiting.acked {
        return;
    }
    waiting.acked = true;
    let position = (answer.epoch > 0 && !answer.ok).then_some(StreamPos {
        epoch: answer.epoch,
        seq: answer.seq,
    });
    outputs.push_back(Output::SubscribedFrom {
        conn,
        topic: topic.to_string(),
        recovery: Recovery {
            recovered: answer.ok,
            position,
        },
    });
}

/// The answer's messages after the connection's position, to it alone.
fn send_answered(
    outputs: &mut VecDeque<Output>,
    counters: &mut CoreCounters,
    conn: ConnId,
    topic: &str,
    since: StreamPos,
    answer: &Recovered,
) {
    if !answer.ok {
        return;
    }
    let to: Arc<[ConnId]> = Arc::from([conn]);
    for m in &answer.messages {
        if (m.epoch, m.seq) <= (since.epoch, since.seq) {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&m.data) else {
            counters.bad_deliveries += 1;
            continue;
        };
        counters.recovered_deliveries += 1;
        outputs.push_back(Output::Deliver(Fanout {
            frame: delivery_frame(topic, text, m.epoch, m.seq),
            conns: to.clone(),
        }));
    }
}
