//! NBD export throughput: Stretto's `stretto nbd serve` over a single-brick
//! volume and over a replica-3 volume, next to nbdkit's file plugin and
//! qemu-nbd on a file in the same file system, all driven by fio's nbd
//! engine in the same run.
//!
//! Everything runs as real processes on loopback: `stretto brick serve` ×4
//! (bricks always use O_DIRECT), `stretto volume create/start`, `stretto
//! image create`, `stretto nbd serve` ×2, `nbdkit file FILE cache=none`,
//! `qemu-nbd --cache=none --aio=io_uring -e 8 -f raw FILE`. Each target is
//! laid out by one sequential pass first, so reads hit written data on all
//! of them. The matrix and its tables are `matrix`'s.

use std::path::Path;

use anyhow::{Context, Result};

use crate::fio::Target;
use crate::matrix::{self, Bench, RatioCol, Timing};
use crate::procs::{self, Bricks};

const MIB: u64 = 1 << 20;

/// Runs the NBD benchmark in `dir` and prints a table per workload.
pub fn run(dir: &Path, quick: bool) -> Result<()> {
    procs::need("fio", "fio")?;
    procs::need("nbdkit", "nbdkit")?;
    procs::need("qemu-nbd", "qemu-utils")?;
    let (size, reps, ramp, secs) = if quick {
        (256 * MIB, 1, 0, 1)
    } else {
        (2048 * MIB, 3, 2, 10)
    };
    let root = dir.join("nbd-bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let r = run_in(&root, size, reps, ramp, secs);
    let _ = std::fs::remove_dir_all(&root);
    r
}

fn run_in(root: &Path, size: u64, reps: usize, ramp: u32, secs: u32) -> Result<()> {
    // Bricks 0..3: the replica-3 volume; brick 3: the single-brick volume.
    let mut bricks = Bricks::start(&root.join("pool"), 4)?;
    let rep: [usize; 3] = [0, 1, 2];
    let single: [usize; 1] = [3];
    let (a, b, c, d) = (
        bricks.addrs[0].clone(),
        bricks.addrs[1].clone(),
        bricks.addrs[2].clone(),
        bricks.addrs[3].clone(),
    );
    bricks.volume(&rep, &["create", "rep3", "replica", "3", &a, &b, &c])?;
    bricks.volume(&rep, &["start", "rep3"])?;
    bricks.volume(&single, &["create", "single", &d])?;
    bricks.volume(&single, &["start", "single"])?;
    bricks.image_create(&rep, "rep3", "disk", size)?;
    bricks.image_create(&single, "single", "disk", size)?;
    let (mut nbd_rep, rep_addr) = bricks.nbd_serve(&rep, "rep3")?;
    let (mut nbd_single, single_addr) = bricks.nbd_serve(&single, "single")?;

    let peer_file = root.join("peer-nbdkit.raw");
    let qemu_file = root.join("peer-qemu.raw");
    for f in [&peer_file, &qemu_file] {
        std::fs::File::create(f)
            .and_then(|h| h.set_len(size))
            .with_context(|| format!("create {}", f.display()))?;
    }
    let kit_port = procs::free_port()?;
    let mut nbdkit = procs::nbdkit_file(&peer_file, kit_port, &root.join("nbdkit.log"))?;
    let qemu_port = procs::free_port()?;
    let mut qemu = procs::qemu_nbd(&qemu_file, qemu_port, "disk", &root.join("qemu-nbd.log"))?;

    let (br, bs) = (bricks.pids(&rep), bricks.pids(&single));
    let targets = [
        Bench {
            name: "stretto single".into(),
            target: Target::Nbd(format!("nbd://{single_addr}/disk")),
            pids: [bs, vec![nbd_single.pid()]].concat(),
            only: None,
            laid_out: false,
        },
        Bench {
            name: "stretto replica-3".into(),
            target: Target::Nbd(format!("nbd://{rep_addr}/disk")),
            pids: [br, vec![nbd_rep.pid()]].concat(),
            only: None,
            laid_out: false,
        },
        Bench {
            name: "nbdkit file".into(),
            target: Target::Nbd(format!("nbd://127.0.0.1:{kit_port}/")),
            pids: vec![nbdkit.pid()],
            only: None,
            laid_out: false,
        },
        Bench {
            name: "qemu-nbd".into(),
            target: Target::Nbd(format!("nbd://127.0.0.1:{qemu_port}/disk")),
            pids: vec![qemu.pid()],
            only: None,
            laid_out: false,
        },
    ];

    println!(
        "\n## NBD export vs nbdkit and qemu-nbd (fio --ioengine=nbd, loopback, {} MiB export, {ramp} s ramp + {secs} s per cell, median of {reps})\n",
        size / MIB
    );
    println!(
        "Modes: Stretto bricks use O_DIRECT (replica-3 = three brick processes, single = a \
         `distribute` volume of one brick); nbdkit `file cache=none` (page cache kept out by \
         posix_fadvise, not O_DIRECT); qemu-nbd `--cache=none --aio=io_uring -e 8` (O_DIRECT). \
         All files on the same file system; every target laid out by one sequential pass first. \
         One fio job, one NBD connection per cell. Server CPU: bricks + `nbd serve` for Stretto, \
         the server process for the peers.{}",
        if procs::pinned() {
            " Servers pinned to CPU 1, fio to CPU 0."
        } else {
            ""
        }
    );

    let figures = matrix::run(
        &targets,
        Timing {
            size,
            reps,
            ramp,
            secs,
        },
    )?;
    let col = |num, den, title| RatioCol { num, den, title };
    matrix::print(
        "nbd",
        &targets,
        &figures,
        &[
            col(0, 2, "single/nbdkit"),
            col(0, 3, "single/qemu-nbd"),
            col(1, 2, "replica-3/nbdkit"),
            col(1, 3, "replica-3/qemu-nbd"),
        ],
    );

    // Stop the NBD servers first (they flush and release their leases
    // through the bricks), then the peers, then the bricks.
    nbd_single.stop();
    nbd_rep.stop();
    nbdkit.stop();
    qemu.stop();
    bricks.stop();
    Ok(())
}
