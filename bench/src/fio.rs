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

/// One fio run against an NBD server.
#[derive(Debug, Clone, Copy)]
pub struct NbdJob<'a> {
    /// `nbd://127.0.0.1:PORT/EXPORT`.
    pub uri: &'a str,
    /// Bytes of the export to address.
    pub size: u64,
    /// fio pattern: `write`, `read`, `randwrite`, `randread`.
    pub rw: &'a str,
    /// Block size in bytes.
    pub bs: u32,
    /// Queue depth.
    pub qd: u32,
    /// Ramp seconds (not measured).
    pub ramp: u32,
    /// Measured seconds; 0: one pass over `size` (used to lay data out).
    pub secs: u32,
}

/// Result of an NBD job: ops/s, MiB/s and mean completion latency.
#[derive(Debug, Clone, Copy)]
pub struct NbdResult {
    pub iops: f64,
    pub mib_s: f64,
    pub lat_us: f64,
}

/// `fio --ioengine=nbd` for `job`.
pub fn nbd(job: &NbdJob<'_>) -> Result<NbdResult> {
    let mut args = vec![
        "--name=nbd".to_string(),
        "--ioengine=nbd".to_string(),
        format!("--uri={}", job.uri),
        format!("--size={}", job.size),
        format!("--rw={}", job.rw),
        format!("--bs={}", job.bs),
        format!("--iodepth={}", job.qd),
        "--randrepeat=0".to_string(),
        "--norandommap".to_string(),
        "--output-format=json".to_string(),
    ];
    if job.secs > 0 {
        args.push(format!("--runtime={}", job.secs));
        args.push("--time_based".to_string());
        if job.ramp > 0 {
            args.push(format!("--ramp_time={}", job.ramp));
        }
    }
    let out = Command::new("fio")
        .args(&args)
        .output()
        .context("cannot run fio (install it: apt-get install fio)")?;
    if !out.status.success() {
        bail!(
            "fio {} failed ({}): {} {}",
            job.uri,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    // The nbd engine may print notes (e.g. the export's size) before the
    // JSON document: parse from the first line that opens it.
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("\n{")
        .map(|i| i + 1)
        .or_else(|| text.starts_with('{').then_some(0))
        .with_context(|| format!("fio printed no JSON: {}", text.trim()))?;
    let v: serde_json::Value = serde_json::from_str(&text[start..])
        .with_context(|| format!("fio printed bad JSON: {}", text.trim()))?;
    let job_v = &v["jobs"][0];
    if job_v["error"].as_i64().unwrap_or(0) != 0 {
        bail!("fio {} reported error {}", job.uri, job_v["error"]);
    }
    let mut r = NbdResult {
        iops: 0.0,
        mib_s: 0.0,
        lat_us: 0.0,
    };
    for dir in ["read", "write"] {
        let d = &job_v[dir];
        let i = d["iops"].as_f64().unwrap_or(0.0);
        if i > 0.0 {
            r.iops += i;
            r.mib_s += d["bw_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64;
            r.lat_us = d["lat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0;
        }
    }
    Ok(r)
}
