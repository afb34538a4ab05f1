//! Small helpers for latency samples and table output.

use std::time::Duration;

/// Latency samples of one run.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    nanos: Vec<u64>,
}

impl Samples {
    /// Records one sample.
    pub fn push(&mut self, d: Duration) {
        self.nanos.push(d.as_nanos() as u64);
    }

    /// Adds all samples of another run.
    pub fn extend(&mut self, other: Samples) {
        self.nanos.extend(other.nanos);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.nanos.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.nanos.is_empty()
    }

    /// The `p`-th percentile (0..=100) in microseconds.
    pub fn percentile_us(&mut self, p: f64) -> f64 {
        if self.nanos.is_empty() {
            return f64::NAN;
        }
        self.nanos.sort_unstable();
        let rank = ((p / 100.0) * (self.nanos.len() - 1) as f64).round() as usize;
        self.nanos[rank.min(self.nanos.len() - 1)] as f64 / 1000.0
    }
}

/// Median of a few repetitions.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Prints a markdown table header.
pub fn table_header(cols: &[&str]) {
    println!("| {} |", cols.join(" | "));
    println!("|{}", "---|".repeat(cols.len()));
}

/// Prints a markdown table row.
pub fn table_row(cells: &[String]) {
    println!("| {} |", cells.join(" | "));
}

/// One Stretto/peer ratio for the plot (`--ratios FILE`).
#[derive(Debug, Clone)]
pub struct Ratio {
    /// The benchmark section, e.g. `nbd` or `glusterfs`.
    pub section: String,
    /// What is compared, e.g. `seq write 1 MiB QD32 single/qemu-nbd`.
    pub label: String,
    pub value: f64,
}

static RATIOS: std::sync::Mutex<Vec<Ratio>> = std::sync::Mutex::new(Vec::new());

/// Records a ratio printed in a table, for the plot.
pub fn record_ratio(section: &str, label: &str, value: f64) {
    if let Ok(mut v) = RATIOS.lock() {
        v.push(Ratio {
            section: section.to_string(),
            label: label.to_string(),
            value,
        });
    }
}

/// Every ratio recorded so far.
pub fn ratios() -> Vec<Ratio> {
    RATIOS.lock().map(|v| v.clone()).unwrap_or_default()
}
