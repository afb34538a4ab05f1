//! `stretto-bench`: Stretto's component benchmarks, each next to a peer
//! measured in the same run, printed as markdown tables with ratios.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use stretto_bench::stats::{table_header, table_row};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Which {
    /// Everything below.
    All,
    /// RVM commit latency and rate vs a raw O_DIRECT|O_DSYNC 4 KiB write.
    Rvm,
    /// Object-store 4 KiB random IOPS vs fio --ioengine=io_uring --direct=1.
    Objects,
    /// Brick requests over TCP loopback vs the same calls in-process.
    Transport,
    /// NBD exports (single-brick and replica-3 volumes) vs nbdkit (file, null), qemu-nbd and
    /// nbd-server, via fio's nbd engine.
    /// Needs target/release/stretto next to this binary (`cargo build --release`).
    Nbd,
    /// Erasure coding: encode/reconstruct GB/s, portable and ISA-L backends vs ISA-L called directly;
    /// then disperse 4+2 vs replica 3 volume throughput (needs target/release/stretto).
    Ec,
    /// volume::Client in-process: replica-3 vs single brick, and heal time vs data missed.
    /// Needs target/release/stretto next to this binary (`cargo build --release`).
    Volume,
    /// Replica-3 and disperse 2+1 volumes (NBD) vs GlusterFS (FUSE mount and gfapi).
    /// Needs glusterfs-server and glusterfs-client.
    Gluster,
    /// Stretto FUSE mount vs GlusterFS replica 3 FUSE mount (data and metadata);
    /// "n/a" while `stretto mount` is not built.
    Fuse,
}

/// Stretto component benchmarks (measure, never assert).
#[derive(Parser, Debug)]
#[command(name = "stretto-bench")]
struct Args {
    /// Which benchmark to run.
    #[arg(value_enum, default_value = "all")]
    which: Which,
    /// Shorter runs (seconds instead of tens of seconds).
    #[arg(long)]
    quick: bool,
    /// Where to put the files (a directory on the file system to measure;
    /// default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Pin servers to CPU 1 (taskset) and fio to CPU 0.
    #[arg(long)]
    pin: bool,
    /// Print each section's time estimate (from its cell counts) and exit.
    #[arg(long)]
    estimate: bool,
    /// Also write every Stretto/peer ratio as CSV (section,label,ratio) here.
    #[arg(long)]
    ratios: Option<PathBuf>,
}

/// One section of the report: its name, its subcommand, its time estimate
/// in seconds (quick or not) and the function that runs it.
struct Section(
    &'static str,
    Which,
    fn(bool) -> f64,
    fn(&std::path::Path, bool) -> Result<()>,
);

fn main() -> Result<()> {
    let args = Args::parse();
    stretto_bench::procs::set_pinned(args.pin);
    let sections: [Section; 8] = [
        Section(
            "rvm",
            Which::Rvm,
            stretto_bench::rvm::estimate,
            stretto_bench::rvm::run,
        ),
        Section(
            "objects",
            Which::Objects,
            stretto_bench::objects::estimate,
            stretto_bench::objects::run,
        ),
        Section(
            "transport",
            Which::Transport,
            stretto_bench::brick_tcp::estimate,
            stretto_bench::brick_tcp::run,
        ),
        Section(
            "ec",
            Which::Ec,
            stretto_bench::ec::estimate,
            stretto_bench::ec::run,
        ),
        Section(
            "volume",
            Which::Volume,
            stretto_bench::volume::estimate,
            stretto_bench::volume::run,
        ),
        Section(
            "nbd",
            Which::Nbd,
            stretto_bench::nbd::estimate,
            stretto_bench::nbd::run,
        ),
        Section(
            "gluster",
            Which::Gluster,
            stretto_bench::gluster::estimate,
            stretto_bench::gluster::run,
        ),
        Section(
            "fuse",
            Which::Fuse,
            stretto_bench::fuse::estimate,
            stretto_bench::fuse::run,
        ),
    ];
    let chosen: Vec<_> = sections
        .iter()
        .filter(|s| matches!(args.which, Which::All) || args.which == s.1)
        .collect();
    let total_estimate: f64 = chosen.iter().map(|s| (s.2)(args.quick)).sum();
    eprintln!(
        "estimate: {} ({})",
        mmss(total_estimate),
        chosen
            .iter()
            .map(|s| format!("{} {:.0} s", s.0, (s.2)(args.quick)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if args.estimate {
        return Ok(());
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = std::env::temp_dir().join(format!("stretto-bench-{}", std::process::id()));
            std::fs::create_dir_all(&tmp)?;
            tmp.clone()
        }
    };
    println!(
        "# Stretto benchmarks ({} mode), files in {}",
        if args.quick { "quick" } else { "full" },
        dir.display()
    );
    println!("{}", machine(&dir));
    let started = Instant::now();
    // (name, estimate, actual) per section run.
    let mut times: Vec<(&str, f64, f64)> = Vec::new();
    let mut result = Ok(());
    for &Section(name, _, estimate, run) in chosen {
        let est = estimate(args.quick);
        eprintln!(
            "== {name}: estimate {est:.0} s (at {:.0} s of {:.0})",
            started.elapsed().as_secs_f64(),
            total_estimate
        );
        let t = Instant::now();
        let r = run(&dir, args.quick);
        let took = t.elapsed().as_secs_f64();
        eprintln!("== {name}: took {took:.0} s (estimate {est:.0} s)");
        times.push((name, est, took));
        if r.is_err() {
            result = r;
            break;
        }
    }
    println!("\n## Run time\n");
    println!(
        "Seconds per section, measured and as estimated before the run from its cell counts \
         ({}); the build is not included (bench/run.sh prints it).\n",
        if stretto_bench::procs::pinned() {
            "servers pinned to CPU 1, fio to CPU 0"
        } else {
            "no CPU pinning"
        }
    );
    table_header(&["section", "estimate s", "actual s"]);
    for (n, est, took) in &times {
        table_row(&[n.to_string(), format!("{est:.0}"), format!("{took:.0}")]);
    }
    let total = started.elapsed().as_secs_f64();
    table_row(&[
        "**total**".into(),
        format!("{total_estimate:.0} ({})", mmss(total_estimate)),
        format!("{total:.0} ({})", mmss(total)),
    ]);
    println!("\nload average at the end: {}", loadavg());
    if let Some(f) = &args.ratios {
        let mut csv = String::from("section,label,ratio\n");
        for r in stretto_bench::stats::ratios() {
            csv.push_str(&format!("{},{},{}\n", r.section, r.label, r.value));
        }
        std::fs::write(f, csv)?;
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// `m min s s`.
fn mmss(secs: f64) -> String {
    let s = secs.round() as u64;
    format!("{} min {:02} s", s / 60, s % 60)
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// One line describing the machine: cores, CPU model, memory, kernel, the
/// file system the benchmark's files are on, and the load when it starts
/// (other work on the machine moves every figure).
fn machine(dir: &std::path::Path) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / f64::from(1u32 << 20))
        .unwrap_or(0.0);
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into());
    format!(
        "machine: {} cores ({model}), {mem_gib:.1} GiB RAM, kernel {}, files on {fs}; \
         load average at the start: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        loadavg()
    )
}
