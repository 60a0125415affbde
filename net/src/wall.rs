//! The wall clock, for timestamps that are observed and never decide anything.
//!
//! Every decision takes its time as an argument (the cores) or from tokio's clock, which the
//! simulator drives. One thing needs a clock that two hosts share: the publish-to-delivery
//! latency, stamped by the owning distributor on each delivery and read by the edge that
//! receives it. That stamp only feeds a histogram, so the simulator stays deterministic
//! whatever its value; its width on the wire is fixed (a `fixed64`), so not even a
//! packet's size depends on it.

/// Microseconds since the Unix epoch by the wall clock; 0 if the clock is before 1970.
#[allow(clippy::disallowed_methods)] // the one read of the wall clock: see the module doc
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Seconds from a stamp (`unix_micros` of another host) to `now_us`; `None` for no stamp
/// (0). A stamp ahead of `now_us` (the hosts' clocks disagree) counts as 0.
pub fn seconds_since(stamp_us: u64, now_us: u64) -> Option<f64> {
    (stamp_us != 0).then(|| now_us.saturating_sub(stamp_us) as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_seconds_from_a_stamp() {
        assert_eq!(seconds_since(0, 5_000_000), None);
        assert_eq!(seconds_since(1_000_000, 3_500_000), Some(2.5));
        // A clock behind the stamp's.
        assert_eq!(seconds_since(4_000_000, 3_000_000), Some(0.0));
        assert!(unix_micros() > 1_600_000_000_000_000);
    }
}
