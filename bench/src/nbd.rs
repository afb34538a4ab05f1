//! NBD export throughput: Stretto's `stretto nbd serve` over a single-brick
//! volume and over a replica-3 volume, next to nbdkit's file plugin and
//! qemu-nbd on a file in the same file system (like with like: O_DIRECT /
//! no page cache), then nbd-server and the peers' buffered defaults (page
//! cache; Stretto has no buffered brick mode), and nbdkit's null plugin as
//! the protocol ceiling, all driven by fio's nbd engine in the same run.
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
use crate::matrix::{self, Bench, Plan, RatioCol, Timing};
use crate::procs::{self, Bricks};

const MIB: u64 = 1 << 20;

/// The cells nbd-server and the null ceiling run: QD32 only.
const EXTRA_CELLS: &[(&str, u32)] = &[
    ("write", 32),
    ("read", 32),
    ("randwrite", 32),
    ("randread", 32),
];
/// The cells the buffered nbdkit and qemu-nbd run: QD32 reads (what the
/// page cache changes most; nbd-server shows buffered writes).
const BUFFERED_CELLS: &[(&str, u32)] = &[("read", 32), ("randread", 32)];

/// Run lengths: full, 1 GiB exports, 1 s ramp + 5 s per cell, 3
/// repetitions; quick, 128 MiB, no ramp + 1 s, 1 repetition.
///
/// Full: the first four targets × 8 cells × 3 repetitions, nbd-server and
/// null × 4 QD32 cells × 1, the buffered nbdkit and qemu-nbd × 2 = 108
/// cells of ≈ 6.7 s (1 s ramp + 5 s + fio's start) ≈ 12 min, plus six 1 GiB
/// layouts. The 1 s + 10 s cells would take ≈ 21 min for this
/// section alone (≈ 18 min for the four like-with-like columns), leaving
/// too little of the 30 minutes for the other sections.
fn timing(quick: bool) -> Timing {
    if quick {
        Timing {
            size: 128 * MIB,
            reps: 1,
            ramp: 0,
            secs: 1,
        }
    } else {
        Timing {
            size: 1024 * MIB,
            reps: 3,
            ramp: 1,
            secs: 5,
        }
    }
}

/// The like-with-like columns get every cell and every repetition;
/// nbd-server and the ceiling one repetition of the QD32 cells, the
/// buffered nbdkit and qemu-nbd one of the QD32 reads.
const CORE: Plan = Plan::ALL;
const EXTRA: Plan = Plan {
    only: Some(EXTRA_CELLS),
    reps: Some(1),
    laid_out: false,
    extra_s: 0.0,
};
const BUFFERED: Plan = Plan {
    only: Some(BUFFERED_CELLS),
    ..EXTRA
};
/// Nothing to lay out behind the null plugin.
const CEILING: Plan = Plan {
    laid_out: true,
    ..EXTRA
};
/// Stretto single, Stretto replica-3, nbdkit cache=none, qemu-nbd
/// cache=none, nbd-server, nbdkit buffered, qemu-nbd buffered, nbdkit null.
const PLANS: [Plan; 8] = [CORE, CORE, CORE, CORE, EXTRA, BUFFERED, BUFFERED, CEILING];

/// Seconds the section should take: the matrix plus starting four bricks,
/// two volumes, two `nbd serve` and six peers.
pub fn estimate(quick: bool) -> f64 {
    matrix::estimate(&PLANS, timing(quick)) + 8.0
}

/// Runs the NBD benchmark in `dir` and prints a table per workload.
pub fn run(dir: &Path, quick: bool) -> Result<()> {
    procs::need("fio", "fio")?;
    procs::need("nbdkit", "nbdkit")?;
    procs::need("qemu-nbd", "qemu-utils")?;
    procs::need("nbd-server", "nbd-server")?;
    let root = dir.join("nbd-bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let r = run_in(&root, timing(quick));
    let _ = std::fs::remove_dir_all(&root);
    r
}

fn run_in(root: &Path, t: Timing) -> Result<()> {
    let Timing {
        size,
        reps,
        ramp,
        secs,
    } = t;
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

    // One file per peer server, all in `root` (the same file system as the
    // bricks), so no peer reads pages another one left in the cache.
    let file = |name: &str| -> Result<std::path::PathBuf> {
        let f = root.join(name);
        std::fs::File::create(&f)
            .and_then(|h| h.set_len(size))
            .with_context(|| format!("create {}", f.display()))?;
        Ok(f)
    };
    let log = |name: &str| root.join(name);
    let kit_port = procs::free_port()?;
    let mut nbdkit = procs::nbdkit_file(
        &file("peer-nbdkit.raw")?,
        true,
        kit_port,
        &log("nbdkit.log"),
    )?;
    let qemu_port = procs::free_port()?;
    let mut qemu = procs::qemu_nbd(
        &file("peer-qemu.raw")?,
        true,
        qemu_port,
        "disk",
        &log("qemu-nbd.log"),
    )?;
    let nbds_port = procs::free_port()?;
    let mut nbds = procs::nbd_server(&file("peer-nbd-server.raw")?, nbds_port, "disk", root)?;
    let kitb_port = procs::free_port()?;
    let mut nbdkit_buf = procs::nbdkit_file(
        &file("peer-nbdkit-buffered.raw")?,
        false,
        kitb_port,
        &log("nbdkit-buffered.log"),
    )?;
    let qemub_port = procs::free_port()?;
    let mut qemu_buf = procs::qemu_nbd(
        &file("peer-qemu-buffered.raw")?,
        false,
        qemub_port,
        "disk",
        &log("qemu-nbd-buffered.log"),
    )?;
    let null_port = procs::free_port()?;
    let mut null = procs::nbdkit_null(size, null_port, &log("nbdkit-null.log"))?;

    let (br, bs) = (bricks.pids(&rep), bricks.pids(&single));
    let bench = |name: &str, url: String, pids: Vec<u32>| Bench {
        name: name.into(),
        target: Target::Nbd(url),
        pids,
        plan: CORE,
    };
    let mut targets = [
        bench(
            "stretto single",
            format!("nbd://{single_addr}/disk"),
            [bs, vec![nbd_single.pid()]].concat(),
        ),
        bench(
            "stretto replica-3",
            format!("nbd://{rep_addr}/disk"),
            [br, vec![nbd_rep.pid()]].concat(),
        ),
        bench(
            "nbdkit file cache=none",
            format!("nbd://127.0.0.1:{kit_port}/"),
            vec![nbdkit.pid()],
        ),
        bench(
            "qemu-nbd cache=none",
            format!("nbd://127.0.0.1:{qemu_port}/disk"),
            vec![qemu.pid()],
        ),
        bench(
            "nbd-server (buffered, page cache)",
            format!("nbd://127.0.0.1:{nbds_port}/disk"),
            vec![nbds.pid()],
        ),
        bench(
            "nbdkit file (buffered, page cache)",
            format!("nbd://127.0.0.1:{kitb_port}/"),
            vec![nbdkit_buf.pid()],
        ),
        bench(
            "qemu-nbd (buffered, page cache)",
            format!("nbd://127.0.0.1:{qemub_port}/disk"),
            vec![qemu_buf.pid()],
        ),
        bench(
            "nbdkit null (ceiling: reads zeros, writes discarded)",
            format!("nbd://127.0.0.1:{null_port}/"),
            vec![null.pid()],
        ),
    ];
    for (b, plan) in targets.iter_mut().zip(PLANS) {
        b.plan = plan;
    }

    println!(
        "\n## NBD export vs nbdkit, qemu-nbd and nbd-server (fio --ioengine=nbd, loopback, {} MiB export, {ramp} s ramp + {secs} s per cell, median of {reps} for the first four columns; 1 run of the QD32 cells for nbd-server and the ceiling, of the QD32 reads for the buffered nbdkit and qemu-nbd)\n",
        size / MIB
    );
    println!(
        "Modes: **O_DIRECT / no page cache**: Stretto bricks (always O_DIRECT; Stretto has no \
         buffered brick mode; replica-3 = three brick processes, single = a `distribute` volume \
         of one brick), nbdkit `file cache=none` (page cache kept out by posix_fadvise, not \
         O_DIRECT), qemu-nbd `--cache=none --aio=io_uring -e 8` (O_DIRECT). **Buffered (page \
         cache)**: nbd-server 3.24 (no O_DIRECT option exists; `sync`, an fsync after every \
         write, off as by default; own config file, daemonized, stopped by the PID in its pid \
         file), nbdkit `file` (default cache), qemu-nbd defaults (`--cache=writeback \
         --aio=threads`); the {} MiB data sets fit in the page cache, which favours these rows. \
         **Ceiling**: nbdkit `null` (no storage: reads return zeros, writes are discarded). \
         All files on the same file system; every target but null laid out by one sequential \
         pass first. One fio job, one NBD connection per cell. Server CPU: bricks + `nbd serve` \
         for Stretto, the server process (and its per-connection children) for the peers.{}",
        size / MIB,
        if procs::pinned() {
            " Servers pinned to CPU 1, fio to CPU 0."
        } else {
            ""
        }
    );

    let figures = matrix::run(&targets, t)?;
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
            col(0, 4, "single/nbd-server (buffered)"),
            col(0, 7, "single/null ceiling"),
        ],
    );

    // Stop the NBD servers first (they flush and release their leases
    // through the bricks), then the peers, then the bricks.
    nbd_single.stop();
    nbd_rep.stop();
    nbdkit.stop();
    qemu.stop();
    nbds.stop();
    nbdkit_buf.stop();
    qemu_buf.stop();
    null.stop();
    bricks.stop();
    Ok(())
}
