//! Flow control toward the clients, sans-IO: how many bytes a connection may have queued,
//! when a connection that does not drain is *slow*, and when a relay lane must stop
//! reading. Time is always an argument.
//!
//! ```text
//!  a frame is queued        ConnBudget::queue(now, n)  ─▶ Ok(over budget?) | Err(Slow::HardCap)
//!  a write completed        ConnBudget::drain(n)       ─▶ back within the budget?
//!  a lane waits on it       ConnBudget::slow(now)      ─▶ Some(Slow::OverBudget): close it (4001)
//!                           ConnBudget::slow_deadline  ─▶ when to look again
//!  a lane applied a group   LaneHold::watermark(now, total)
//!                                                      ─▶ Some(until): the edge holds too much; wait
//! ```
//!
//! A lane reader that queued frames to connections which are now over their budget stops
//! reading (QUIC flow control then pushes back on the distributor) until each of them is
//! back within its budget, closing, or slow: a connection over its budget for
//! `slow_after` is closed, which ends the wait. So a client that keeps reading is never
//! skipped and never closed, and a lane never waits longer than `slow_after` for one
//! connection.

use std::fmt;

use tokio::time::{Duration, Instant};

use crate::config::Config;

/// The byte bounds, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    /// Per connection: over this, lanes feeding it wait (`send_queue_bytes`).
    pub budget: usize,
    /// Per connection: never queued beyond this (`send_queue_hard_bytes`).
    pub hard_cap: usize,
    /// How long a connection may stay over its budget (`slow_after_ms`).
    pub slow_after: Duration,
    /// Edge-wide high watermark (`queue_high_bytes`); the low one is half of it.
    pub high: usize,
}

impl FlowLimits {
    pub fn from_config(config: &Config) -> Self {
        FlowLimits {
            budget: config.send_queue_bytes,
            hard_cap: config.send_queue_hard_bytes,
            slow_after: Duration::from_millis(config.slow_after_ms),
            high: config.queue_high_bytes,
        }
    }

    /// Lanes paused by the high watermark read again below this.
    pub fn low(&self) -> usize {
        self.high / 2
    }
}

/// Why a connection is closed as a slow consumer (close code 4001). The display is the
/// close reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slow {
    /// Its queue stayed over the budget for `for_ms`.
    OverBudget { budget: usize, for_ms: u128 },
    /// Its queue would have grown past the hard cap.
    HardCap { hard_cap: usize },
}

impl fmt::Display for Slow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slow::OverBudget { budget, for_ms } => write!(
                f,
                "slow consumer: send queue over {budget} bytes for {for_ms} ms"
            ),
            Slow::HardCap { hard_cap } => write!(
                f,
                "slow consumer: send queue over the hard cap of {hard_cap} bytes"
            ),
        }
    }
}

/// One connection's queued bytes: frames queued and not yet written to its socket (the
/// batch being written counts until its write completes).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnBudget {
    queued: usize,
    /// Since when the queue has been over the budget, while it is.
    over_since: Option<Instant>,
}

impl ConnBudget {
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Counts `bytes` more queued. `Ok(over)`: queued, and whether the queue is now over
    /// its budget; `Err`: the frame would take it past the hard cap, so it must not be
    /// queued and the connection must be closed (nothing is counted).
    pub fn queue(&mut self, limits: &FlowLimits, now: Instant, bytes: usize) -> Result<bool, Slow> {
        let queued = self.queued.saturating_add(bytes);
        if queued > limits.hard_cap {
            return Err(Slow::HardCap {
                hard_cap: limits.hard_cap,
            });
        }
        self.queued = queued;
        let over = queued > limits.budget;
        if over && self.over_since.is_none() {
            self.over_since = Some(now);
        }
        Ok(over)
    }

    /// Counts `bytes` written. True when this brought the queue back within its budget.
    pub fn drain(&mut self, limits: &FlowLimits, bytes: usize) -> bool {
        self.queued = self.queued.saturating_sub(bytes);
        if self.queued <= limits.budget && self.over_since.is_some() {
            self.over_since = None;
            return true;
        }
        false
    }

    pub fn over_budget(&self) -> bool {
        self.over_since.is_some()
    }

    /// The connection is slow: over its budget for `slow_after` or longer.
    pub fn slow(&self, limits: &FlowLimits, now: Instant) -> Option<Slow> {
        let since = self.over_since?;
        (now.saturating_duration_since(since) >= limits.slow_after).then_some(Slow::OverBudget {
            budget: limits.budget,
            for_ms: limits.slow_after.as_millis(),
        })
    }

    /// When the connection becomes slow if it stays over its budget.
    pub fn slow_deadline(&self, limits: &FlowLimits) -> Option<Instant> {
        self.over_since.map(|since| since + limits.slow_after)
    }
}

/// A lane reader's pause for the edge-wide watermark: it starts when the edge's queued
/// total is above the high watermark after the lane queued a group of deliveries, and ends
/// when the total is below the low watermark, or after `slow_after`. The time bound keeps
/// a lane moving (one group at a time) when many connections hold bytes within their budgets
/// and drain slowly: none of them is slow, so nothing else would end the pause.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LaneHold {
    /// Since when this lane waits on the watermark, while it does.
    since: Option<Instant>,
}

impl LaneHold {
    /// Whether the lane must keep waiting on the watermark, given the edge's queued
    /// `total` now: `Some(until)` (look again when the total drops, or at `until`), or
    /// `None` (read on).
    pub fn watermark(
        &mut self,
        limits: &FlowLimits,
        now: Instant,
        total: usize,
    ) -> Option<Instant> {
        match self.since {
            None if total > limits.high => {
                self.since = Some(now);
                Some(now + limits.slow_after)
            }
            None => None,
            Some(since) => {
                let until = since + limits.slow_after;
                if total < limits.low() || now >= until {
                    self.since = None;
                    None
                } else {
                    Some(until)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FlowLimits {
        FlowLimits {
            budget: 100,
            hard_cap: 300,
            slow_after: Duration::from_secs(5),
            high: 1000,
        }
    }

    #[test]
    fn a_queue_over_its_budget_is_slow_only_after_slow_after() {
        let l = limits();
        let t0 = Instant::now();
        let mut b = ConnBudget::default();
        assert_eq!(b.queue(&l, t0, 60), Ok(false));
        assert_eq!(b.queue(&l, t0, 40), Ok(false), "at the budget is within it");
        assert_eq!(b.slow_deadline(&l), None);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.queue(&l, t1, 1), Ok(true));
        assert!(b.over_budget());
        assert_eq!(b.slow_deadline(&l), Some(t1 + Duration::from_secs(5)));
        // Still over later: the clock runs from the first time it went over.
        assert_eq!(b.queue(&l, t1 + Duration::from_secs(2), 50), Ok(true));
        assert_eq!(b.slow(&l, t1 + Duration::from_millis(4999)), None);
        assert_eq!(
            b.slow(&l, t1 + Duration::from_secs(5)),
            Some(Slow::OverBudget {
                budget: 100,
                for_ms: 5000
            })
        );
        assert_eq!(
            Slow::OverBudget {
                budget: 1048576,
                for_ms: 5000
            }
            .to_string(),
            "slow consumer: send queue over 1048576 bytes for 5000 ms"
        );
    }

    #[test]
    fn a_queue_that_drains_starts_its_clock_afresh() {
        let l = limits();
        let t0 = Instant::now();
        let mut b = ConnBudget::default();
        assert_eq!(b.queue(&l, t0, 150), Ok(true));
        assert!(!b.drain(&l, 40), "110 bytes left: still over");
        assert!(b.drain(&l, 10), "back at the budget");
        assert!(!b.over_budget());
        assert_eq!(b.slow(&l, t0 + Duration::from_secs(60)), None);
        // Over again much later: a new clock, not the old one.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(b.queue(&l, t1, 1), Ok(true));
        assert_eq!(b.slow(&l, t1 + Duration::from_secs(4)), None);
        assert!(!b.drain(&l, 0), "nothing written changes nothing");
        assert_eq!(b.queued(), 101);
    }

    #[test]
    fn the_hard_cap_refuses_the_frame_and_counts_nothing() {
        let l = limits();
        let t0 = Instant::now();
        let mut b = ConnBudget::default();
        assert_eq!(b.queue(&l, t0, 300), Ok(true), "exactly the cap fits");
        assert_eq!(b.queue(&l, t0, 1), Err(Slow::HardCap { hard_cap: 300 }));
        assert_eq!(b.queued(), 300);
        assert_eq!(
            Slow::HardCap { hard_cap: 300 }.to_string(),
            "slow consumer: send queue over the hard cap of 300 bytes"
        );
    }

    #[test]
    fn the_watermark_pauses_above_high_until_below_low_or_slow_after() {
        let l = limits();
        let t0 = Instant::now();
        let mut hold = LaneHold::default();
        assert_eq!(
            hold.watermark(&l, t0, 1000),
            None,
            "at the high mark: read on"
        );
        let until = t0 + Duration::from_secs(5);
        assert_eq!(hold.watermark(&l, t0, 1001), Some(until));
        // Hysteresis: below high but not below low keeps the lane waiting.
        assert_eq!(
            hold.watermark(&l, t0 + Duration::from_secs(1), 700),
            Some(until)
        );
        assert_eq!(
            hold.watermark(&l, t0 + Duration::from_secs(1), 500),
            Some(until)
        );
        assert_eq!(hold.watermark(&l, t0 + Duration::from_secs(2), 499), None);
        // A new pause; it ends at its time bound even though the total stays high.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            hold.watermark(&l, t1, 2000),
            Some(t1 + Duration::from_secs(5))
        );
        assert_eq!(hold.watermark(&l, t1 + Duration::from_secs(5), 2000), None);
        // The next group finds it still high: it waits again.
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(
            hold.watermark(&l, t2, 2000),
            Some(t2 + Duration::from_secs(5))
        );
    }
}
