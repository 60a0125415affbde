//! Member leases: the leader's soft state (sans-IO).
//!
//! ```text
//!  sync_members(now, members) ──┐
//!  handle_heartbeat(now, …)   ──┼──► LeaseTracker ──► poll_expired(now) ──► Command::Expire
//!  clear() (leadership lost)  ──┘
//! ```
//!
//! Heartbeats do not go through Raft (that would be a log write per member per second).
//! Only the leader tracks deadlines; a new leader starts every lease afresh from the moment
//! it syncs, so a leader change can delay an expiry by one lease but never expire a live
//! member early. Time is always an argument.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::state::MemberKind;

/// A member's registration, as a key into the tracker.
pub type MemberKey = (MemberKind, u64);

#[derive(Debug, Clone)]
struct Lease {
    incarnation: u64,
    ttl: Duration,
    deadline: Instant,
    /// When expiry was last proposed; the proposal is repeated after another `ttl` if the
    /// member is somehow still there (the proposal was lost with a leader change).
    proposed_at: Option<Instant>,
}

/// Lease deadlines of every member, kept by the leader.
#[derive(Debug, Default)]
pub struct LeaseTracker {
    leases: BTreeMap<MemberKey, Lease>,
}

/// One registration as the replicated state has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    pub key: MemberKey,
    pub incarnation: u64,
    pub ttl: Duration,
}

impl LeaseTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reconciles with the replicated members: a registration the tracker has not seen (or a
    /// new incarnation) gets a full lease from `now`; members that are gone are forgotten.
    pub fn sync_members(&mut self, now: Instant, members: impl IntoIterator<Item = Registration>) {
        let mut next = BTreeMap::new();
        for reg in members {
            let lease = match self.leases.remove(&reg.key) {
                Some(lease) if lease.incarnation == reg.incarnation => Lease {
                    ttl: reg.ttl,
                    ..lease
                },
                _ => Lease {
                    incarnation: reg.incarnation,
                    ttl: reg.ttl,
                    deadline: now + reg.ttl,
                    proposed_at: None,
                },
            };
            next.insert(reg.key, lease);
        }
        self.leases = next;
    }

    /// Renews a lease. The caller has checked that the registration exists in the state.
    pub fn handle_heartbeat(&mut self, now: Instant, reg: Registration) {
        let lease = self.leases.entry(reg.key).or_insert(Lease {
            incarnation: reg.incarnation,
            ttl: reg.ttl,
            deadline: now,
            proposed_at: None,
        });
        if lease.incarnation != reg.incarnation {
            *lease = Lease {
                incarnation: reg.incarnation,
                ttl: reg.ttl,
                deadline: now,
                proposed_at: None,
            };
        }
        lease.deadline = now + reg.ttl;
        lease.proposed_at = None;
    }

    /// Registrations whose lease ran out and whose expiry should be proposed now.
    pub fn poll_expired(&mut self, now: Instant) -> Vec<(MemberKey, u64)> {
        let mut expired = Vec::new();
        for (key, lease) in &mut self.leases {
            let due =
                now >= lease.deadline && lease.proposed_at.is_none_or(|at| now >= at + lease.ttl);
            if due {
                lease.proposed_at = Some(now);
                expired.push((*key, lease.incarnation));
            }
        }
        expired
    }

    /// Each tracked lease: its age (since the last heartbeat, or since this leader took it
    /// over) and the time left before its expiry is due.
    pub fn ages(&self, now: Instant) -> Vec<(MemberKey, Duration, Duration)> {
        self.leases
            .iter()
            .map(|(key, lease)| {
                let remaining = lease.deadline.saturating_duration_since(now);
                (*key, lease.ttl.saturating_sub(remaining), remaining)
            })
            .collect()
    }

    /// Forgets everything (this node is no longer the leader).
    pub fn clear(&mut self) {
        self.leases.clear();
    }

    /// The number of tracked leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// True when no lease is tracked.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: u64, incarnation: u64) -> Registration {
        Registration {
            key: (MemberKind::Edge, id),
            incarnation,
            ttl: Duration::from_secs(3),
        }
    }

    #[test]
    fn a_leases_age_counts_from_its_last_heartbeat() {
        let t0 = Instant::now();
        let mut tracker = LeaseTracker::new();
        tracker.sync_members(t0, [reg(1, 5), reg(2, 6)]);
        tracker.handle_heartbeat(t0 + Duration::from_millis(1000), reg(2, 6));
        let at = t0 + Duration::from_millis(1500);
        let ages = tracker.ages(at);
        assert_eq!(
            ages,
            vec![
                (
                    (MemberKind::Edge, 1),
                    Duration::from_millis(1500),
                    Duration::from_millis(1500)
                ),
                (
                    (MemberKind::Edge, 2),
                    Duration::from_millis(500),
                    Duration::from_millis(2500)
                ),
            ]
        );
        // Past its deadline: all of the TTL old, nothing left.
        let late = tracker.ages(t0 + Duration::from_secs(10));
        assert_eq!(late[0].1, Duration::from_secs(3));
        assert_eq!(late[0].2, Duration::ZERO);
    }

    #[test]
    fn a_silent_member_expires_once_per_ttl_and_heartbeats_keep_others() {
        let t0 = Instant::now();
        let mut tracker = LeaseTracker::new();
        tracker.sync_members(t0, [reg(1, 10), reg(2, 11)]);
        assert!(tracker.poll_expired(t0 + Duration::from_secs(2)).is_empty());
        tracker.handle_heartbeat(t0 + Duration::from_secs(2), reg(2, 11));
        let at = t0 + Duration::from_secs(3);
        assert_eq!(tracker.poll_expired(at), vec![((MemberKind::Edge, 1), 10)]);
        // Not proposed again right away…
        assert!(tracker.poll_expired(at + Duration::from_secs(1)).is_empty());
        // …but again after another ttl if the member is still registered; 2 is due by then too.
        let later = tracker.poll_expired(at + Duration::from_secs(3));
        assert_eq!(
            later,
            vec![((MemberKind::Edge, 1), 10), ((MemberKind::Edge, 2), 11)]
        );
    }

    #[test]
    fn a_new_leader_starts_leases_afresh_and_new_incarnations_reset() {
        let t0 = Instant::now();
        let mut tracker = LeaseTracker::new();
        tracker.sync_members(t0, [reg(1, 10)]);
        tracker.clear();
        assert!(tracker.is_empty());
        let t1 = t0 + Duration::from_secs(10);
        tracker.sync_members(t1, [reg(1, 10)]);
        assert!(tracker.poll_expired(t1 + Duration::from_secs(2)).is_empty());
        // Re-registration (new incarnation) gets a fresh lease.
        tracker.sync_members(t1 + Duration::from_secs(2), [reg(1, 12)]);
        assert!(tracker.poll_expired(t1 + Duration::from_secs(4)).is_empty());
        assert_eq!(
            tracker.poll_expired(t1 + Duration::from_secs(5)),
            vec![((MemberKind::Edge, 1), 12)]
        );
        // A member that left is forgotten.
        tracker.sync_members(t1 + Duration::from_secs(6), []);
        assert_eq!(tracker.len(), 0);
    }
}
