//! Counting what subscribers saw, and the report.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::scan::Delivery;

/// What one subscriber saw.
pub struct SubscriberStats {
    /// Per topic index: the last `n` seen (u64::MAX = none yet).
    last: Vec<u64>,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub latency_us: Histogram<u64>,
}

impl SubscriberStats {
    pub fn new(topics: usize) -> Self {
        SubscriberStats {
            last: vec![u64::MAX; topics],
            received: 0,
            duplicates: 0,
            out_of_order: 0,
            // 1 µs .. 60 s at 2 significant digits: a few KiB per subscriber.
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 2)
                .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable_histogram())),
        }
    }

    /// Records a delivery received at `now_ns` (same clock as the payload's `ts`).
    pub fn record(&mut self, d: Delivery, now_ns: u64) {
        let Some(last) = self.last.get_mut(d.topic as usize) else {
            return;
        };
        if *last != u64::MAX && d.n <= *last {
            if d.n == *last {
                self.duplicates += 1;
            } else {
                self.out_of_order += 1;
            }
            return;
        }
        *last = d.n;
        self.received += 1;
        let us = now_ns.saturating_sub(d.ts_ns) / 1000;
        let _ = self.latency_us.record(us.clamp(1, 60_000_000));
    }
}

fn unreachable_histogram() -> Histogram<u64> {
    // Histogram::new(2) cannot fail for 2 significant digits; this keeps clippy's
    // no-panic rule without an unwrap.
    Histogram::new_with_max(1 << 40, 2).unwrap_or_else(|_| std::process::abort())
}

/// The run's results, as printed and written to JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub subscribers: usize,
    pub topics: usize,
    pub payload_bytes: usize,
    pub publish_mode: String,
    /// Sub-topics each topic was split into (0: plain).
    #[serde(default)]
    pub hot_shards: u32,
    pub seconds: f64,
    pub published: u64,
    pub publishes_per_sec: f64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    /// Deliveries per second from the first publish to the last delivery.
    pub deliveries_per_sec: f64,
    /// Seconds from the first publish to the last delivery.
    #[serde(default)]
    pub delivery_seconds: f64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Subscriber connections the server closed during the run (0 for a valid figure).
    #[serde(default)]
    pub closed_connections: u64,
    pub latency_us: Percentiles,
    pub connect_seconds: f64,
    pub connections_per_sec: f64,
    pub server_rss_bytes_before: Option<u64>,
    pub server_rss_bytes_after: Option<u64>,
    pub rss_bytes_per_connection: Option<f64>,
    pub edge_writes: Option<u64>,
    pub edge_frames_queued: Option<u64>,
    pub frames_per_write: Option<f64>,
    /// CPU seconds (user + system) the server and this generator used during the run.
    pub server_cpu_seconds: Option<f64>,
    pub generator_cpu_seconds: Option<f64>,
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Clock ticks are 100 per second on Linux.
    Some((utime + stime) / 100.0)
}

#[derive(Debug, Serialize, Default, Clone)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}
