//! Per-brick counters: operations, bytes and a request latency histogram.
//!
//! Counters are plain atomics bumped once per request (no lock on the data
//! path). The histogram has [`LATENCY_BUCKETS`] power-of-two buckets in
//! microseconds: bucket `i` counts requests that took `[2^(i-1), 2^i)` µs
//! (bucket 0: under 1 µs; the last bucket: everything longer).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use transport::wire::LATENCY_BUCKETS;

/// Live counters of one brick.
#[derive(Debug)]
pub struct Counters {
    started: Instant,
    pub(crate) requests: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) read_bytes: AtomicU64,
    pub(crate) written_bytes: AtomicU64,
    pub(crate) flushes: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The histogram bucket of a latency.
pub fn bucket_of(d: Duration) -> usize {
    let us = d.as_micros() as u64;
    if us == 0 {
        0
    } else {
        ((64 - us.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1)
    }
}

impl Counters {
    /// Records one finished request.
    pub fn record(&self, took: Duration, failed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[bucket_of(took)].fetch_add(1, Ordering::Relaxed);
    }

    /// Seconds since the brick started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The latency histogram now.
    pub fn latency(&self) -> [u64; LATENCY_BUCKETS] {
        std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed))
    }
}

/// A brick's counters as `stretto brick stats` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsReport {
    /// The brick's address as the user named it.
    pub addr: String,
    /// What the brick sent.
    pub stats: transport::wire::BrickStats,
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn bucket_label(i: usize) -> String {
    let fmt_us = |us: u64| {
        if us >= 1_000_000 {
            format!("{}s", us / 1_000_000)
        } else if us >= 1000 {
            format!("{}ms", us / 1000)
        } else {
            format!("{us}µs")
        }
    };
    match i {
        0 => "<1µs".to_string(),
        i if i == LATENCY_BUCKETS - 1 => format!(">={}", fmt_us(1 << (i - 1))),
        i => format!("{}-{}", fmt_us(1 << (i - 1)), fmt_us(1 << i)),
    }
}

impl fmt::Display for StatsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(f, "brick {}", self.addr)?;
        writeln!(f, "  uptime         {} s", s.uptime_secs)?;
        writeln!(f, "  requests       {} ({} errors)", s.requests, s.errors)?;
        writeln!(
            f,
            "  reads          {} ({})",
            s.reads,
            human_bytes(s.read_bytes)
        )?;
        writeln!(
            f,
            "  writes         {} ({})",
            s.writes,
            human_bytes(s.written_bytes)
        )?;
        writeln!(
            f,
            "  disk           {} free of {}",
            human_bytes(s.free_bytes),
            human_bytes(s.capacity_bytes)
        )?;
        writeln!(
            f,
            "  corrupt        {} blocks found at rest failing their CRC32C",
            s.corrupt_blocks
        )?;
        let total: u64 = s.latency.iter().sum();
        writeln!(f, "  latency        {total} requests")?;
        for (i, n) in s.latency.iter().enumerate() {
            if *n > 0 {
                let pct = *n as f64 * 100.0 / total.max(1) as f64;
                writeln!(f, "    {:>14}  {:>10}  {:5.1}%", bucket_label(i), n, pct)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_in_microseconds() {
        assert_eq!(bucket_of(Duration::from_nanos(500)), 0);
        assert_eq!(bucket_of(Duration::from_micros(1)), 1);
        assert_eq!(bucket_of(Duration::from_micros(3)), 2);
        assert_eq!(bucket_of(Duration::from_micros(4)), 3);
        assert_eq!(bucket_of(Duration::from_secs(3600)), LATENCY_BUCKETS - 1);
        assert_eq!(bucket_label(3), "4µs-8µs");
    }

    #[test]
    fn record_counts_requests_errors_and_latency() {
        let c = Counters::default();
        c.record(Duration::from_micros(5), false);
        c.record(Duration::from_micros(6), true);
        assert_eq!(c.requests.load(Ordering::Relaxed), 2);
        assert_eq!(c.errors.load(Ordering::Relaxed), 1);
        assert_eq!(c.latency()[3], 2);
    }
}
