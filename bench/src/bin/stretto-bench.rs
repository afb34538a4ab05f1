//! `stretto-bench`: Stretto's component benchmarks, each next to a peer
//! measured in the same run, printed as markdown tables with ratios.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, ValueEnum};

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
    /// Also write every Stretto/peer ratio as CSV (section,label,ratio) here.
    #[arg(long)]
    ratios: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    stretto_bench::procs::set_pinned(args.pin);
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
    println!(
        "machine: {} cores, kernel {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let started = Instant::now();
    let mut times: Vec<(&str, f64)> = Vec::new();
    let mut section = |name: &'static str,
                       which: Which,
                       f: &dyn Fn(&std::path::Path, bool) -> Result<()>|
     -> Result<()> {
        if matches!(args.which, Which::All) || args.which == which {
            let t = Instant::now();
            f(&dir, args.quick)?;
            times.push((name, t.elapsed().as_secs_f64()));
        }
        Ok(())
    };
    let result = (|| -> Result<()> {
        section("rvm", Which::Rvm, &stretto_bench::rvm::run)?;
        section("objects", Which::Objects, &stretto_bench::objects::run)?;
        section(
            "transport",
            Which::Transport,
            &stretto_bench::brick_tcp::run,
        )?;
        section("ec", Which::Ec, &stretto_bench::ec::run)?;
        section("volume", Which::Volume, &stretto_bench::volume::run)?;
        section("nbd", Which::Nbd, &stretto_bench::nbd::run)?;
        section("gluster", Which::Gluster, &stretto_bench::gluster::run)?;
        section("fuse", Which::Fuse, &stretto_bench::fuse::run)?;
        Ok(())
    })();
    println!("\n## Run time\n");
    println!(
        "{}; total {:.0} s{}",
        times
            .iter()
            .map(|(n, s)| format!("{n} {s:.0} s"))
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64(),
        if stretto_bench::procs::pinned() {
            " (servers pinned to CPU 1, fio to CPU 0)"
        } else {
            " (no CPU pinning)"
        }
    );
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
