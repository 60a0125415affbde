//! The seam of a stream that changes owner, sans-IO. When a slot moves by rebalancing, the
//! new owner continues each topic's stream (same stream epoch, next `seq`), and the old
//! owner's last deliveries (on its relay lanes) race the new owner's first (on its own). A
//! delivery that leaves a gap in its stream (`seq > last + 1` in the same epoch) waits here,
//! with the stream's later ones, until the missing ones arrive, or [`SEAM_WAIT`] passes
//! (then the held ones go on in order and the gap is counted): the old owner's late
//! messages are passed in order instead of dropped as stale.
//!
//! Split topics' sub-topics (route tag > 0) are ordered by the route holds and then by
//! their positions in the topic's stream (`LocalTopic::pass_in_order`), not here.

use std::collections::BTreeMap;

use bytes::Bytes;
use tokio::time::{Duration, Instant};

use super::{EdgeCore, MessageTags};

/// How long a gap in a stream is waited for.
pub const SEAM_WAIT: Duration = Duration::from_secs(2);
/// Deliveries held behind one gap, at most: beyond it they go on at once.
pub const SEAM_BUFFER: usize = 1024;

/// One stream's deliveries held behind a gap.
#[derive(Debug, Default)]
pub(super) struct Gap {
    /// The stream epoch of the gap.
    epoch: u64,
    /// seq → (data, tags), above the gap.
    held: BTreeMap<u64, (Bytes, MessageTags)>,
    /// When the gap opened (the core's clock at the last tick; None before any tick).
    opened: Option<Instant>,
}

impl Gap {
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

impl EdgeCore {
    /// A delivery from a relay lane: passed on, with any held deliveries it releases, or
    /// held behind a gap in its stream.
    pub fn handle_deliver(
        &mut self,
        name: &str,
        epoch: u64,
        seq: u64,
        data: Bytes,
        mut tags: MessageTags,
    ) {
        if tags.canon == (0, 0) {
            // No position of its own in the topic's stream: the delivery's is.
            tags.canon = (epoch, seq);
        }
        let Some(route_name) = self.names.get_mut(name) else {
            self.deliver_now(name, epoch, seq, data, tags);
            return;
        };
        let (last_epoch, last_seq) = route_name.last;
        let gap = &mut route_name.gap;
        if (epoch, seq) <= (last_epoch, last_seq) {
            self.deliver_now(name, epoch, seq, data, tags);
            return;
        }
        if !gap.is_empty() && epoch > gap.epoch {
            // A newer stream: what the old one still held goes first.
            self.release_gap(name);
            self.deliver_now(name, epoch, seq, data, tags);
            return;
        }
        let opens_gap =
            tags.route_tag == 0 && epoch == last_epoch && last_seq > 0 && seq > last_seq + 1;
        if opens_gap {
            if gap.is_empty() {
                gap.epoch = epoch;
                gap.opened = self.clock;
                self.gapped.insert(name.to_string());
            }
            gap.held.insert(seq, (data, tags));
            if gap.held.len() >= SEAM_BUFFER {
                self.counters.seam_gaps_passed += 1;
                self.release_gap(name);
            }
            return;
        }
        let held = !gap.is_empty();
        self.deliver_now(name, epoch, seq, data, tags);
        if held {
            // It may have filled the gap: what follows it goes on too, as far as it is
            // whole. (No gap, the usual case: no second lookup.)
            self.release_following(name);
        }
    }

    /// Passes one delivery on (see `deliver`).
    fn deliver_now(&mut self, name: &str, epoch: u64, seq: u64, data: Bytes, tags: MessageTags) {
        self.deliver(name, epoch, seq, data, tags);
    }

    /// Passes the held deliveries that now follow the last passed one without a gap.
    fn release_following(&mut self, name: &str) {
        loop {
            let Some(route_name) = self.names.get_mut(name) else {
                return;
            };
            let (last_epoch, last_seq) = route_name.last;
            let gap = &mut route_name.gap;
            if gap.epoch != last_epoch {
                return;
            }
            let Some((data, tags)) = gap.held.remove(&(last_seq + 1)) else {
                // Anything held at or below the last is stale now.
                let stale: Vec<u64> = gap.held.range(..=last_seq).map(|(s, _)| *s).collect();
                for s in stale {
                    gap.held.remove(&s);
                    self.counters.stale_deliveries += 1;
                }
                if gap.held.is_empty() {
                    gap.opened = None;
                    self.gapped.remove(name);
                }
                return;
            };
            let epoch = gap.epoch;
            self.deliver_now(name, epoch, last_seq + 1, data, tags);
        }
    }

    /// Passes everything held for `name`, in order, gap or not.
    fn release_gap(&mut self, name: &str) {
        let Some(route_name) = self.names.get_mut(name) else {
            return;
        };
        let held = std::mem::take(&mut route_name.gap.held);
        let epoch = route_name.gap.epoch;
        route_name.gap.opened = None;
        self.gapped.remove(name);
        for (seq, (data, tags)) in held {
            self.deliver_now(name, epoch, seq, data, tags);
        }
    }

    /// On a tick: gaps open longer than [`SEAM_WAIT`] are given up on (their messages were
    /// lost on the way); what waited behind them goes on.
    pub(super) fn seam_tick(&mut self, now: Instant) {
        self.clock = Some(now);
        if self.gapped.is_empty() {
            return;
        }
        let due: Vec<String> = self
            .gapped
            .iter()
            .filter(|name| {
                self.names.get(*name).is_none_or(|n| {
                    n.gap
                        .opened
                        .is_none_or(|at| now.saturating_duration_since(at) >= SEAM_WAIT)
                })
            })
            .cloned()
            .collect();
        for name in due {
            self.counters.seam_gaps_passed += 1;
            self.release_gap(&name);
        }
    }

    /// Whether any name of `base` holds deliveries behind a gap.
    pub(super) fn seam_holds(&self, names: impl Iterator<Item = String>) -> bool {
        names
            .into_iter()
            .any(|n| self.names.get(&n).is_some_and(|r| !r.gap.is_empty()))
    }
}
