//! Runs `fio` as the peer and reads its JSON output.

use std::path::{Path, PathBuf};
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

/// `fio --ioengine=io_uring --direct=1` on `file` (created at `size` bytes),
/// `ramp` seconds not measured then `secs` measured.
/// `rw` is a fio pattern such as `randread` or `randwrite`.
pub fn io_uring(
    file: &Path,
    size: u64,
    rw: &str,
    bs: u32,
    qd: u32,
    ramp: u32,
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
            &format!("--ramp_time={ramp}"),
            "--randrepeat=0",
            "--output-format=json",
        ])
        .args(pin_args())
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

/// How fio reaches the data of one job.
#[derive(Debug, Clone)]
pub enum Target {
    /// `--ioengine=nbd --uri=URI`.
    Nbd(String),
    /// A file in a mounted file system: `--ioengine=libaio --direct=1`.
    File(PathBuf),
    /// GlusterFS through libgfapi: `--ioengine=gfapi_async --direct=1
    /// --volume=VOL --brick=127.0.0.1`, on file `NAME` of the volume.
    Gfapi { volume: String, file: String },
}

impl Target {
    /// A short description for error messages.
    pub fn describe(&self) -> String {
        match self {
            Target::Nbd(uri) => uri.to_string(),
            Target::File(p) => p.display().to_string(),
            Target::Gfapi { volume, file } => format!("gfapi {volume}/{file}"),
        }
    }

    fn args(&self) -> Vec<String> {
        match self {
            Target::Nbd(uri) => vec!["--ioengine=nbd".into(), format!("--uri={uri}")],
            Target::File(p) => vec![
                "--ioengine=libaio".into(),
                "--direct=1".into(),
                format!("--filename={}", p.display()),
            ],
            Target::Gfapi { volume, file } => vec![
                "--ioengine=gfapi_async".into(),
                "--direct=1".into(),
                format!("--volume={volume}"),
                "--brick=127.0.0.1".into(),
                format!("--filename={file}"),
            ],
        }
    }
}

/// Pins fio to CPU 0 (`--cpus_allowed=0`) when the servers are pinned
/// apart from it (see `procs::set_pinned`).
fn pin_args() -> Vec<String> {
    if crate::procs::pinned() {
        vec!["--cpus_allowed=0".into()]
    } else {
        Vec::new()
    }
}

/// `fio --ioengine=nbd` for `job`.
pub fn nbd(job: &NbdJob<'_>) -> Result<NbdResult> {
    run(&Job {
        target: &Target::Nbd(job.uri.to_string()),
        size: job.size,
        rw: job.rw,
        bs: job.bs,
        qd: job.qd,
        ramp: job.ramp,
        secs: job.secs,
    })
}

/// One fio run against any target.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub target: &'a Target,
    /// Bytes of the export or file to address.
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

/// Runs fio for `job`: ops/s, MiB/s and mean completion latency.
pub fn run(job: &Job<'_>) -> Result<NbdResult> {
    let mut args = vec!["--name=bench".to_string()];
    args.extend(job.target.args());
    args.extend([
        format!("--size={}", job.size),
        format!("--rw={}", job.rw),
        format!("--bs={}", job.bs),
        format!("--iodepth={}", job.qd),
        "--randrepeat=0".to_string(),
        "--norandommap".to_string(),
        "--output-format=json".to_string(),
    ]);
    args.extend(pin_args());
    if job.secs > 0 {
        args.push(format!("--runtime={}", job.secs));
        args.push("--time_based".to_string());
        if job.ramp > 0 {
            args.push(format!("--ramp_time={}", job.ramp));
        }
    }
    let what = job.target.describe();
    let out = Command::new("fio")
        .args(&args)
        .output()
        .context("cannot run fio (install it: apt-get install fio)")?;
    if !out.status.success() {
        bail!(
            "fio {} failed ({}): {} {}",
            what,
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
        bail!("fio {} reported error {}", what, job_v["error"]);
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
