//! The volume data path in-process (no NBD): `volume::Client` over a
//! replica-3 volume next to a single-brick `distribute` volume, both on
//! real brick processes on loopback; and heal time against the amount of
//! data a SIGKILLed brick missed.
//!
//! The single-brick volume is the baseline: same client stack, same brick
//! code, one copy. replica-3/single is what the two extra copies cost
//! (three brick processes and three O_DIRECT writes on one disk, here).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use transport::{ClientOptions, Secret};
use volume::{manage, Client, Fid, Object, VolumeSpec};

use crate::procs::Bricks;
use crate::stats::{median, table_header, table_row};

const MIB: u64 = 1 << 20;

/// One cell of the I/O matrix.
#[derive(Clone, Copy)]
struct Cell {
    title: &'static str,
    write: bool,
    /// 1 MiB sequential (true) or 4 KiB random.
    seq: bool,
    qd: usize,
}

const CELLS: [Cell; 8] = [
    Cell {
        title: "seq write 1 MiB",
        write: true,
        seq: true,
        qd: 1,
    },
    Cell {
        title: "seq write 1 MiB",
        write: true,
        seq: true,
        qd: 16,
    },
    Cell {
        title: "seq read 1 MiB",
        write: false,
        seq: true,
        qd: 1,
    },
    Cell {
        title: "seq read 1 MiB",
        write: false,
        seq: true,
        qd: 16,
    },
    Cell {
        title: "rand write 4 KiB",
        write: true,
        seq: false,
        qd: 1,
    },
    Cell {
        title: "rand write 4 KiB",
        write: true,
        seq: false,
        qd: 16,
    },
    Cell {
        title: "rand read 4 KiB",
        write: false,
        seq: false,
        qd: 1,
    },
    Cell {
        title: "rand read 4 KiB",
        write: false,
        seq: false,
        qd: 16,
    },
];

/// Runs `cell` on `obj` (addressing `[0, span)`) for `secs` with `cell.qd`
/// tokio tasks; returns MiB/s (sequential) or IOPS (random).
async fn run_cell(obj: Arc<Object>, cell: Cell, span: u64, secs: f64, seed: u64) -> Result<f64> {
    let bs: u64 = if cell.seq { MIB } else { 4096 };
    let next = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..cell.qd as u64 {
        let (obj, next, ops) = (obj.clone(), next.clone(), ops.clone());
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(1000) + t);
            let data = vec![(seed as u8) ^ (t as u8) | 1; bs as usize];
            while Instant::now() < deadline {
                let off = if cell.seq {
                    next.fetch_add(bs, Ordering::Relaxed) % span
                } else {
                    rng.gen_range(0..span / bs) * bs
                };
                if cell.write {
                    obj.write(off, &data).await?;
                } else {
                    let got = obj.read(off, bs).await?;
                    if got.len() as u64 != bs {
                        bail!("short read at {off}: {} of {bs} bytes", got.len());
                    }
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("benchmark task panicked")??;
    }
    let el = start.elapsed().as_secs_f64();
    let n = ops.load(Ordering::Relaxed) as f64;
    Ok(if cell.seq {
        n * bs as f64 / MIB as f64 / el
    } else {
        n / el
    })
}

/// Writes `[0, len)` in 1 MiB pieces with 16 tasks (lays data out, and
/// the heal drill's load).
async fn fill(obj: Arc<Object>, len: u64, byte: u8) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (obj, next) = (obj.clone(), next.clone());
        tasks.spawn(async move {
            let data = vec![byte; MIB as usize];
            loop {
                let off = next.fetch_add(MIB, Ordering::Relaxed);
                if off >= len {
                    return Ok::<(), anyhow::Error>(());
                }
                obj.write(off, &data).await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("fill task panicked")??;
    }
    obj.flush().await?;
    Ok(())
}

/// Creates image `name` of `size` bytes in `vol` and opens it for writing
/// through a new client.
async fn open_image(
    bricks: &Bricks,
    pool: &[usize],
    vol: &str,
    name: &str,
    size: u64,
    secret: &Secret,
) -> Result<(VolumeSpec, Client, Object)> {
    bricks.image_create(pool, vol, name, size)?;
    let addrs: Vec<String> = pool.iter().map(|&i| bricks.addrs[i].clone()).collect();
    let (spec, e) = manage::image_get(&addrs, secret, vol, name)
        .await
        .with_context(|| format!("image {name} of volume {vol}"))?;
    let client = Client::connect_spec(spec.clone(), secret.clone(), ClientOptions::default())
        .await
        .with_context(|| format!("connect to volume {vol}"))?;
    let fid = Fid {
        volume: spec.id,
        vnode: e.vnode,
        unique: e.unique,
    };
    let obj = client
        .open_writer(fid, volume::client::DEFAULT_LEASE)
        .await
        .with_context(|| format!("lease image {name}"))?;
    Ok((spec, client, obj))
}

/// Runs the volume benchmark in `dir` and prints its tables.
pub fn run(dir: &Path, quick: bool) -> Result<()> {
    let root = dir.join("volume-bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let r = rt.block_on(run_in(&root, quick));
    drop(rt);
    let _ = std::fs::remove_dir_all(&root);
    r
}

/// Run lengths: object size, repetitions, seconds per cell, heal sizes in
/// MiB. In-process cells have no process to start, so short cells with
/// three interleaved repetitions (median, min–max) cost what one long one
/// would.
fn params(quick: bool) -> (u64, usize, f64, &'static [u64]) {
    if quick {
        (256 * MIB, 1, 0.5, &[8, 32])
    } else {
        (1024 * MIB, 3, 1.0, &[8, 32, 128])
    }
}

/// Seconds the section should take: 16 cells per repetition, laying out
/// two objects (≈ 400 MiB/s), the heals (≈ 3 s each) and ≈ 5 s of bricks.
pub fn estimate(quick: bool) -> f64 {
    let (span, reps, secs, heals) = params(quick);
    (CELLS.len() * 2 * reps) as f64 * secs
        + 2.0 * span as f64 / MIB as f64 / 400.0
        + 3.0 * heals.len() as f64
        + 5.0
}

async fn run_in(root: &Path, quick: bool) -> Result<()> {
    let (span, reps, secs, heal_sizes) = params(quick);
    // Bricks 0..3: replica-3; brick 3: single-brick distribute.
    let mut bricks = Bricks::start(&root.join("pool"), 4)?;
    let secret = Secret::load(&bricks.secret).context("load the pool secret")?;
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

    let (_, single_client, single_obj) =
        open_image(&bricks, &single, "single", "bench", span, &secret).await?;
    let (rep_spec, rep_client, rep_obj) =
        open_image(&bricks, &rep, "rep3", "bench", span, &secret).await?;
    let single_obj = Arc::new(single_obj);
    let rep_obj = Arc::new(rep_obj);
    fill(single_obj.clone(), span, 0x5a).await?;
    fill(rep_obj.clone(), span, 0x5a).await?;

    println!(
        "\n## Volume data path in-process (volume::Client, no NBD): replica-3 vs single-brick distribute ({} MiB object, {secs} s per cell, median of {reps})\n",
        span / MIB
    );
    println!(
        "Bricks are `stretto brick serve` processes on loopback (O_DIRECT, all on one disk); \
         QD = concurrent tokio tasks on one client; the object is laid out first."
    );
    println!();
    table_header(&[
        "workload",
        "QD",
        "unit",
        "single",
        "replica-3",
        "replica-3/single",
    ]);
    let mut figs = vec![[Vec::new(), Vec::new()]; CELLS.len()];
    for rep_i in 0..reps {
        for (i, cell) in CELLS.iter().enumerate() {
            let seed = (rep_i * CELLS.len() + i) as u64;
            let s = run_cell(single_obj.clone(), *cell, span, secs, seed)
                .await
                .with_context(|| format!("{} QD{} on single", cell.title, cell.qd))?;
            let r = run_cell(rep_obj.clone(), *cell, span, secs, seed)
                .await
                .with_context(|| format!("{} QD{} on replica-3", cell.title, cell.qd))?;
            figs[i][0].push(s);
            figs[i][1].push(r);
        }
    }
    // The median, with min–max when there are several repetitions.
    let fig = |v: &Vec<f64>| {
        let m = median(v.clone());
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let text = if v.len() > 1 {
            format!("{m:.0} [{lo:.0}–{hi:.0}]")
        } else {
            format!("{m:.0}")
        };
        (m, text)
    };
    for (i, cell) in CELLS.iter().enumerate() {
        let (s, s_text) = fig(&figs[i][0]);
        let (r, r_text) = fig(&figs[i][1]);
        table_row(&[
            cell.title.to_string(),
            cell.qd.to_string(),
            if cell.seq { "MiB/s" } else { "IOPS" }.to_string(),
            s_text,
            r_text,
            format!("{:.2}×", r / s),
        ]);
    }
    for o in [single_obj, rep_obj] {
        match Arc::try_unwrap(o) {
            Ok(o) => o.close().await?,
            Err(_) => bail!("benchmark object still shared"),
        }
    }
    single_client.close().await;
    rep_client.close().await;

    heal(&mut bricks, &rep, &rep_spec, &secret, heal_sizes).await?;
    bricks.stop();
    Ok(())
}

/// For each N: SIGKILL brick 2 of the replica-3 volume, write N MiB to a
/// new image, restart the brick, time `heal_volume`.
async fn heal(
    bricks: &mut Bricks,
    rep: &[usize],
    spec: &VolumeSpec,
    secret: &Secret,
    sizes: &[u64],
) -> Result<()> {
    const VICTIM: usize = 2;
    println!(
        "\n## Heal after a brick was SIGKILLed during N MiB of writes (replica-3, `volume::heal::heal_volume`)\n"
    );
    println!(
        "Per N: a new image; brick {VICTIM} SIGKILLed; N MiB written (1 MiB pieces, 16 tasks, \
         acknowledged by the other two); writer closed; brick restarted on its address; heal timed."
    );
    println!();
    table_header(&[
        "N MiB",
        "write s (2 of 3 up)",
        "heal s",
        "bytes copied",
        "copied/N",
        "regions healed",
        "regions skipped",
        "heal MiB/s",
    ]);
    for &n in sizes {
        let name = format!("heal{n}");
        let (_, client, obj) = open_image(bricks, rep, "rep3", &name, n * MIB, secret).await?;
        bricks.kill9(VICTIM);
        let obj = Arc::new(obj);
        let t = Instant::now();
        fill(obj.clone(), n * MIB, n as u8).await?;
        let write_s = t.elapsed().as_secs_f64();
        match Arc::try_unwrap(obj) {
            Ok(o) => o.close().await?,
            Err(_) => bail!("heal object still shared"),
        }
        client.close().await;
        bricks.restart(VICTIM)?;
        let t = Instant::now();
        let report = volume::heal::heal_volume(spec, secret.clone(), |_| {})
            .await
            .with_context(|| format!("heal after {n} MiB"))?;
        let heal_s = t.elapsed().as_secs_f64();
        let bytes = report.bytes_copied;
        table_row(&[
            n.to_string(),
            format!("{write_s:.2}"),
            format!("{heal_s:.2}"),
            bytes.to_string(),
            format!("{:.2}", bytes as f64 / (n * MIB) as f64),
            report.regions_healed.to_string(),
            report.regions_skipped.to_string(),
            format!("{:.0}", bytes as f64 / MIB as f64 / heal_s),
        ]);
    }
    Ok(())
}
