//! RVM commit cost next to the raw durable write it is built on.
//!
//! Peer: one 4 KiB `O_DIRECT|O_DSYNC` pwrite into a preallocated file on the
//! same file system (what a commit must at least pay). Stretto: a transaction
//! that changes 256 bytes and commits with `Flush`, at 1, 4 and 16 concurrent
//! committers (group commit shares one log write + sync among them).

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{Context, Result};
use storage::rvm::{CommitMode, Rvm, RvmOptions};

use crate::stats::{table_header, table_row, Samples};

/// Latency and rate of the raw 4 KiB O_DIRECT|O_DSYNC write.
fn raw_dsync(dir: &Path, ops: usize) -> Result<(Samples, f64)> {
    let path = dir.join("raw-dsync");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let span: u64 = 16 << 20;
    file.set_len(span)?;
    // Preallocate and write once so the measured writes overwrite allocated blocks,
    // as the RVM log does.
    let mut block = iobuf::IoBuf::alloc(4096);
    block.set_len(4096);
    block.as_mut_slice().fill(0x5a);
    for off in (0..span).step_by(1 << 20) {
        let mut big = iobuf::IoBuf::alloc(1 << 20);
        big.set_len(1 << 20);
        file.write_all_at(big.as_slice(), off)?;
    }
    let mut samples = Samples::default();
    let start = Instant::now();
    for i in 0..ops as u64 {
        let t = Instant::now();
        file.write_all_at(block.as_slice(), (i * 4096) % span)?;
        samples.push(t.elapsed());
    }
    let rate = ops as f64 / start.elapsed().as_secs_f64();
    Ok((samples, rate))
}

/// Latency, aggregate commit rate and commits per log write (the mean
/// group-commit batch) of `threads` concurrent `Flush` committers.
fn rvm_commits(dir: &Path, threads: usize, ops_per_thread: usize) -> Result<(Samples, f64, f64)> {
    let rdir = dir.join(format!("rvm-{threads}"));
    let _ = std::fs::remove_dir_all(&rdir);
    std::fs::create_dir_all(&rdir)?;
    let opts = RvmOptions::default();
    let rvm = Arc::new(Rvm::create(&rdir, &opts).context("rvm create")?);
    let seg = rvm.segment_size();
    let barrier = Arc::new(Barrier::new(threads));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let rvm = rvm.clone();
            let barrier = barrier.clone();
            let done = done.clone();
            std::thread::spawn(move || -> Result<Samples> {
                let mut samples = Samples::default();
                let data = [t as u8; 256];
                barrier.wait();
                for i in 0..ops_per_thread as u64 {
                    // Spread the 256-byte updates over the segment, away from its header.
                    let off = 65536 + ((t as u64 * 1_000_003 + i * 4096) % (seg / 2));
                    let t0 = Instant::now();
                    let mut tx = rvm.begin();
                    tx.write(off, &data)?;
                    tx.commit(CommitMode::Flush)?;
                    samples.push(t0.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(samples)
            })
        })
        .collect();
    let mut all = Samples::default();
    for h in handles {
        let s = h
            .join()
            .map_err(|_| anyhow::anyhow!("committer thread panicked"))??;
        all.extend(s);
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    let st = rvm.stats();
    let batch = st.commits as f64 / st.log_writes.max(1) as f64;
    Ok((all, rate, batch))
}

/// Seconds the section should take: a few thousand synchronous commits,
/// ≈ 1 s quick and ≈ 3 s full on an idle disk, but 5 s and 23 s measured
/// with other work writing to the same disk.
pub fn estimate(quick: bool) -> f64 {
    if quick {
        3.0
    } else {
        15.0
    }
}

/// Runs the RVM benchmark in `dir` and prints its table.
pub fn run(dir: &Path, quick: bool) -> Result<()> {
    let ops = if quick { 500 } else { 3000 };
    let (mut raw, raw_rate) = raw_dsync(dir, ops)?;
    let raw_p50 = raw.percentile_us(50.0);
    let raw_p99 = raw.percentile_us(99.0);
    println!(
        "\n## RVM commit (Flush, 256 B) vs raw 4 KiB O_DIRECT|O_DSYNC pwrite, same file system\n"
    );
    table_header(&[
        "committers",
        "rvm p50 µs",
        "rvm p99 µs",
        "rvm commits/s",
        "raw p50 µs",
        "raw p99 µs",
        "raw writes/s",
        "p50 rvm/raw",
        "rate vs 1 committer",
        "commits per log write",
    ]);
    let mut serial_rate = None;
    for threads in [1usize, 4, 16] {
        let per = (ops / threads).max(50) * if threads > 1 { 2 } else { 1 };
        let (mut s, rate, batch) = rvm_commits(dir, threads, per)?;
        let p50 = s.percentile_us(50.0);
        let serial = *serial_rate.get_or_insert(rate);
        table_row(&[
            threads.to_string(),
            format!("{p50:.1}"),
            format!("{:.1}", s.percentile_us(99.0)),
            format!("{rate:.0}"),
            format!("{raw_p50:.1}"),
            format!("{raw_p99:.1}"),
            format!("{raw_rate:.0}"),
            format!("{:.2}×", p50 / raw_p50),
            format!("{:.2}×", rate / serial),
            format!("{batch:.1}"),
        ]);
    }
    Ok(())
}
