//! Runs `fio` as the peer and reads its JSON output.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// One fio job's result.
#[derive(Debug, Clone, Copy)]
pub struct FioResult {
    /// Operations per second (reads + writes).
    pub iops: f64,
    /// Mean completion latency in microseconds.
    pub lat_us: f64,
}

/// `fio --ioengine=io_uring --direct=1` on `file` (created at `size` bytes).
/// `rw` is a fio pattern such as `randread` or `randwrite`.
pub fn io_uring(
    file: &Path,
    size: u64,
    rw: &str,
    bs: u32,
    qd: u32,
    secs: u32,
) -> Result<FioResult> {
    let out = Command::new("fio")
        .args([
            "--name=peer",
            &format!("--filename={}", file.display()),
            &format!("--size={size}"),
            "--ioengine=io_uring",
            "--direct=1",
            &format!("--rw={rw}"),
            &format!("--bs={bs}"),
            &format!("--iodepth={qd}"),
            &format!("--runtime={secs}"),
            "--time_based",
            "--ramp_time=1",
            "--randrepeat=0",
            "--output-format=json",
        ])
        .output()
        .context("cannot run fio (install it: apt-get install fio)")?;
    if !out.status.success() {
        bail!(
            "fio failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("fio printed no JSON")?;
    let job = &v["jobs"][0];
    let mut iops = 0.0;
    let mut lat_ns = 0.0;
    for dir in ["read", "write"] {
        let d = &job[dir];
        let i = d["iops"].as_f64().unwrap_or(0.0);
        if i > 0.0 {
            iops += i;
            lat_ns = d["lat_ns"]["mean"].as_f64().unwrap_or(0.0);
        }
    }
    Ok(FioResult {
        iops,
        lat_us: lat_ns / 1000.0,
    })
}
