//! `stretto-bench`: Stretto's component benchmarks, each next to a peer
//! measured in the same run, printed as markdown tables with ratios.

use std::path::PathBuf;

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
    /// NBD exports (single-brick and replica-3 volumes) vs nbdkit and qemu-nbd, via fio's nbd engine.
    /// Needs target/release/stretto next to this binary (`cargo build --release`).
    Nbd,
    /// Erasure coding: encode/reconstruct GB/s, portable and ISA-L backends vs ISA-L called directly;
    /// then disperse 4+2 vs replica 3 volume throughput (needs target/release/stretto).
    Ec,
    /// volume::Client in-process: replica-3 vs single brick, and heal time vs data missed.
    /// Needs target/release/stretto next to this binary (`cargo build --release`).
    Volume,
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
}

fn main() -> Result<()> {
    let args = Args::parse();
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
    let result = (|| -> Result<()> {
        if matches!(args.which, Which::All | Which::Rvm) {
            stretto_bench::rvm::run(&dir, args.quick)?;
        }
        if matches!(args.which, Which::All | Which::Objects) {
            stretto_bench::objects::run(&dir, args.quick)?;
        }
        if matches!(args.which, Which::All | Which::Transport) {
            stretto_bench::brick_tcp::run(&dir, args.quick)?;
        }
        if matches!(args.which, Which::All | Which::Ec) {
            stretto_bench::ec::run(&dir, args.quick)?;
        }
        if matches!(args.which, Which::All | Which::Volume) {
            stretto_bench::volume::run(&dir, args.quick)?;
        }
        if matches!(args.which, Which::All | Which::Nbd) {
            stretto_bench::nbd::run(&dir, args.quick)?;
        }
        Ok(())
    })();
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}
