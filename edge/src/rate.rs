//! Per-connection rate limits, sans-IO: two token buckets per connection, one for
//! publishes and one for every other frame (subscribes, unsubscribes, heartbeats, frames
//! that do not parse, binary frames). A frame over its bucket is refused with the
//! `rate_limited` error and not acted on; a connection that keeps sending while refused
//! ([`RateConfig::close_after`] refusals in a row) is closed with 1008 (policy violation).
//!
//! Publishes already push back (a connection's socket is not read while its publishes
//! wait, `core/publish.rs`); the publish bucket bounds what one connection may ask of the
//! cluster per second even when the cluster keeps up. The frame bucket bounds the control
//! work one connection causes: each subscribe or unsubscribe changes interest at owners
//! and the metastore, and each bad frame costs an error frame.

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// One bucket: `per_sec` tokens a second, at most `burst` saved up. `per_sec` 0: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

/// The per-connection limits of an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    /// Frames other than publishes. A client subscribes to many topics in one frame (up to
    /// `max_topics_per_conn`), so a few a second is normal; hundreds are not.
    pub frames: RateLimit,
    /// Publishes. High enough that a fast publisher is held back by backpressure, not by
    /// errors; a burst of 100,000 fits at once.
    pub publishes: RateLimit,
    /// Refused frames in a row after which the connection is closed with 1008 (0: never).
    pub close_after: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            frames: RateLimit {
                per_sec: 100,
                burst: 200,
            },
            publishes: RateLimit {
                per_sec: 50_000,
                burst: 100_000,
            },
            close_after: 100,
        }
    }
}

impl RateConfig {
    /// A limit with a rate needs a burst of at least one frame.
    pub fn validate(&self) -> Result<(), &'static str> {
        for limit in [self.frames, self.publishes] {
            if limit.per_sec > 0 && limit.burst == 0 {
                return Err("a rate limit with per_sec > 0 needs burst >= 1");
            }
        }
        Ok(())
    }
}

/// A token bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    limit: RateLimit,
    /// Tokens saved up (fractions of a frame included), at most `burst`.
    tokens: f64,
    /// When `tokens` was last topped up.
    at: Option<Instant>,
}

impl Bucket {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> Self {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            at: None,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.limit.per_sec == 0 {
            return true;
        }
        if let Some(at) = self.at {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * f64::from(self.limit.per_sec))
                .min(f64::from(self.limit.burst));
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What to do with a client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limits: act on it.
    Pass,
    /// Over a limit: answer `rate_limited`, do nothing else.
    Refuse,
    /// Over a limit, `close_after` times in a row: close the connection (1008).
    Close,
}

/// One connection's buckets.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    frames: Bucket,
    publishes: Bucket,
    close_after: u32,
    /// Frames refused since the last one that passed.
    refused_in_a_row: u32,
}

impl ConnLimits {
    pub fn new(config: &RateConfig) -> Self {
        ConnLimits {
            frames: Bucket::new(config.frames),
            publishes: Bucket::new(config.publishes),
            close_after: config.close_after,
            refused_in_a_row: 0,
        }
    }

    /// Judges one frame (`publish`: a publish frame; otherwise any other).
    pub fn check(&mut self, now: Instant, publish: bool) -> Verdict {
        let bucket = if publish {
            &mut self.publishes
        } else {
            &mut self.frames
        };
        if bucket.take(now) {
            self.refused_in_a_row = 0;
            return Verdict::Pass;
        }
        self.refused_in_a_row = self.refused_in_a_row.saturating_add(1);
        if self.close_after > 0 && self.refused_in_a_row >= self.close_after {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }

    /// The limit a refused frame went over, for the error message.
    pub fn limit(&self, publish: bool) -> RateLimit {
        if publish {
            self.publishes.limit
        } else {
            self.frames.limit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(per_sec: u32, burst: u32, close_after: u32) -> ConnLimits {
        ConnLimits::new(&RateConfig {
            frames: RateLimit { per_sec, burst },
            publishes: RateLimit {
                per_sec: 0,
                burst: 0,
            },
            close_after,
        })
    }

    #[test]
    fn a_burst_passes_then_the_rate_refills_the_bucket() {
        let t0 = Instant::now();
        let mut l = limits(10, 3, 0);
        let verdicts: Vec<Verdict> = (0..4).map(|_| l.check(t0, false)).collect();
        assert_eq!(
            verdicts,
            vec![Verdict::Pass, Verdict::Pass, Verdict::Pass, Verdict::Refuse]
        );
        // 10 a second: one token per 100 ms, never more than the burst.
        assert_eq!(
            l.check(t0 + Duration::from_millis(99), false),
            Verdict::Refuse
        );
        assert_eq!(
            l.check(t0 + Duration::from_millis(200), false),
            Verdict::Pass
        );
        let later = t0 + Duration::from_secs(60);
        let verdicts: Vec<Verdict> = (0..4).map(|_| l.check(later, false)).collect();
        assert_eq!(
            verdicts,
            vec![Verdict::Pass, Verdict::Pass, Verdict::Pass, Verdict::Refuse]
        );
    }

    #[test]
    fn refusals_in_a_row_close_and_a_frame_that_passes_resets_them() {
        let t0 = Instant::now();
        let mut l = limits(1, 1, 3);
        assert_eq!(l.check(t0, false), Verdict::Pass);
        assert_eq!(l.check(t0, false), Verdict::Refuse);
        assert_eq!(l.check(t0, false), Verdict::Refuse);
        // It slowed down: the count starts over.
        assert_eq!(l.check(t0 + Duration::from_secs(1), false), Verdict::Pass);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.check(t1, false), Verdict::Refuse);
        assert_eq!(l.check(t1, false), Verdict::Refuse);
        assert_eq!(l.check(t1, false), Verdict::Close);
    }

    #[test]
    fn publishes_have_their_own_bucket_and_zero_means_no_limit() {
        let t0 = Instant::now();
        let mut l = ConnLimits::new(&RateConfig {
            frames: RateLimit {
                per_sec: 1,
                burst: 1,
            },
            publishes: RateLimit {
                per_sec: 0,
                burst: 0,
            },
            close_after: 0,
        });
        assert_eq!(l.check(t0, false), Verdict::Pass);
        assert_eq!(l.check(t0, false), Verdict::Refuse);
        for _ in 0..10_000 {
            assert_eq!(l.check(t0, true), Verdict::Pass);
        }
        assert!(RateConfig {
            frames: RateLimit {
                per_sec: 5,
                burst: 0
            },
            ..RateConfig::default()
        }
        .validate()
        .is_err());
    }
}
