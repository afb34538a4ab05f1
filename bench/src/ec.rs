//! Erasure-coding throughput: Stretto's codec (`volume::ec::Codec`) on its
//! portable backend (`reed-solomon-erasure`) and on ISA-L, next to ISA-L
//! called directly (multiplication tables made once, `ec_encode_data` in a
//! loop: what a C program using ISA-L pays).
//!
//! Figures are GB/s of stripe data (K fragments) coded per second, one
//! thread; "ratio" is Stretto / direct ISA-L. Reconstruct rebuilds M lost
//! data fragments (the worst case: all of them need decoding).
//!
//! Then, when `target/release/stretto` is there, a disperse 4+2 volume next
//! to a replica-3 volume on the same brick processes (the replica on three
//! of the six), through `volume::Client` in-process.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rand::{Rng, RngCore, SeedableRng};
use transport::{ClientOptions, Secret};
use volume::ec::{isal, Backend, Codec};
use volume::{manage, Client, Fid, Object};

use crate::procs::Bricks;
use crate::stats::{record_ratio, table_header, table_row};

/// Runs `f` until `budget` has passed; returns calls per second.
fn rate(budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    // One warm-up call (tables, page faults).
    f()?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        f()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn gbs(calls_per_s: f64, bytes: usize) -> f64 {
    calls_per_s * bytes as f64 / 1e9
}

struct Row {
    op: &'static str,
    geometry: String,
    size: usize,
    portable: f64,
    ours_isal: Option<f64>,
    direct: Option<f64>,
}

fn bench_one(k: usize, m: usize, size: usize, budget: Duration) -> Result<Vec<Row>> {
    let len = size / k;
    let mut rng = rand::rngs::StdRng::seed_from_u64(size as u64 ^ k as u64);
    let data: Vec<Vec<u8>> = (0..k)
        .map(|_| {
            let mut v = vec![0u8; len];
            rng.fill_bytes(&mut v);
            v
        })
        .collect();
    let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    let mut parity = vec![vec![0u8; len]; m];
    let portable = Codec::with_backend(k, m, Backend::Portable)?;
    let ours = Codec::with_backend(k, m, Backend::Isal).ok();
    let lib = isal::library().ok();

    let mut enc = |c: &Codec| -> Result<f64> {
        rate(budget, || {
            let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|p| p.as_mut_slice()).collect();
            c.encode_into(&refs, &mut outs).map_err(|e| anyhow!("{e}"))
        })
    };
    let enc_portable = enc(&portable)?;
    let enc_ours = ours.as_ref().map(&mut enc).transpose()?;
    let enc_direct = match lib {
        Some(l) => {
            let tables = l.init_tables(k, m, portable.parity_matrix())?;
            Some(rate(budget, || {
                let mut outs: Vec<&mut [u8]> =
                    parity.iter_mut().map(|p| p.as_mut_slice()).collect();
                l.encode_data(&tables, &refs, &mut outs)
                    .map_err(|e| anyhow!("{e}"))
            })?)
        }
        None => None,
    };

    // Reconstruct: the first M data fragments are lost.
    let full: Vec<Vec<u8>> = {
        let mut f = data.clone();
        f.extend(portable.encode(&refs)?);
        f
    };
    let rec = |c: &Codec| -> Result<f64> {
        rate(budget, || {
            let mut shards: Vec<Option<Vec<u8>>> = full
                .iter()
                .enumerate()
                .map(|(i, f)| (i >= m).then(|| f.clone()))
                .collect();
            c.reconstruct(&mut shards).map_err(|e| anyhow!("{e}"))
        })
    };
    let rec_portable = rec(&portable)?;
    let rec_ours = ours.as_ref().map(rec).transpose()?;
    // Direct: decode rows computed once (a caller that caches them for a
    // loss pattern), survivors copied like ours does, one ec_encode_data.
    let rec_direct = match (lib, &ours) {
        (Some(l), Some(_)) => {
            let survivors: Vec<usize> = (m..m + k).collect();
            let mut sub = Vec::with_capacity(k * k);
            for &r in &survivors {
                if r < k {
                    sub.extend((0..k).map(|j| u8::from(j == r)));
                } else {
                    sub.extend_from_slice(&portable.parity_matrix()[(r - k) * k..(r - k + 1) * k]);
                }
            }
            let inv = l
                .invert(&sub, k)?
                .ok_or_else(|| anyhow!("singular sub-matrix"))?;
            let rows: Vec<u8> = inv[..m * k].to_vec();
            let tables = l.init_tables(k, m, &rows)?;
            let mut out = vec![vec![0u8; len]; m];
            Some(rate(budget, || {
                let ins: Vec<Vec<u8>> = survivors.iter().map(|&i| full[i].clone()).collect();
                let ins: Vec<&[u8]> = ins.iter().map(|v| v.as_slice()).collect();
                let mut outs: Vec<&mut [u8]> = out.iter_mut().map(|p| p.as_mut_slice()).collect();
                l.encode_data(&tables, &ins, &mut outs)
                    .map_err(|e| anyhow!("{e}"))
            })?)
        }
        _ => None,
    };
    let geometry = format!("{k}+{m}");
    Ok(vec![
        Row {
            op: "encode",
            geometry: geometry.clone(),
            size,
            portable: gbs(enc_portable, size),
            ours_isal: enc_ours.map(|r| gbs(r, size)),
            direct: enc_direct.map(|r| gbs(r, size)),
        },
        Row {
            op: "reconstruct",
            geometry,
            size,
            portable: gbs(rec_portable, size),
            ours_isal: rec_ours.map(|r| gbs(r, size)),
            direct: rec_direct.map(|r| gbs(r, size)),
        },
    ])
}

/// `stretto-bench ec`: the codec table, then the volume table if the
/// `stretto` binary is built.
pub fn run(dir: &Path, quick: bool) -> Result<()> {
    codec(quick)?;
    match crate::procs::stretto_bin() {
        Ok(_) => volumes(dir, quick),
        Err(e) => {
            println!("\n(disperse volume throughput skipped: {e})");
            Ok(())
        }
    }
}

const MIB: u64 = 1 << 20;

/// `qd` tasks doing `bs`-byte writes or reads over `[0, span)` for `secs`;
/// MiB/s.
async fn throughput(
    obj: Arc<Object>,
    write: bool,
    bs: u64,
    qd: u64,
    span: u64,
    secs: f64,
) -> Result<f64> {
    let bytes = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..qd {
        let (obj, bytes) = (obj.clone(), bytes.clone());
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t);
            let data = vec![t as u8 | 1; bs as usize];
            while Instant::now() < deadline {
                let off = rng.gen_range(0..span / bs) * bs;
                if write {
                    obj.write(off, &data).await?;
                } else {
                    obj.read(off, bs).await?;
                }
                bytes.fetch_add(bs, Ordering::Relaxed);
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("benchmark task panicked")??;
    }
    Ok(bytes.load(Ordering::Relaxed) as f64 / MIB as f64 / start.elapsed().as_secs_f64())
}

async fn open(
    bricks: &Bricks,
    pool: &[usize],
    vol: &str,
    span: u64,
) -> Result<(Client, Arc<Object>)> {
    bricks.image_create(pool, vol, "bench", span)?;
    let addrs: Vec<String> = pool.iter().map(|&i| bricks.addrs[i].clone()).collect();
    let secret = Secret::load(&bricks.secret).context("load the pool secret")?;
    let (spec, e) = manage::image_get(&addrs, &secret, vol, "bench").await?;
    let client = Client::connect_spec(spec.clone(), secret, ClientOptions::default()).await?;
    let fid = Fid {
        volume: spec.id,
        vnode: e.vnode,
        unique: e.unique,
    };
    let obj = client
        .open_writer(fid, volume::client::DEFAULT_LEASE)
        .await?;
    Ok((client, Arc::new(obj)))
}

fn volumes(dir: &Path, quick: bool) -> Result<()> {
    let root = dir.join("ec-bench");
    let _ = std::fs::remove_dir_all(&root);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let r = rt.block_on(async {
        let (span, secs) = volume_timing(quick);
        let bricks = Bricks::start(&root.join("pool"), 6)?;
        let a = &bricks.addrs;
        let all: Vec<usize> = (0..6).collect();
        let mut create = vec!["create", "ec42", "disperse", "4+2"];
        create.extend(a.iter().map(String::as_str));
        bricks.volume(&all, &create)?;
        bricks.volume(&all, &["start", "ec42"])?;
        bricks.volume(&all, &["create", "rep3", "replica", "3", &a[0], &a[1], &a[2]])?;
        bricks.volume(&all, &["start", "rep3"])?;
        let (ec_client, ec) = open(&bricks, &all, "ec42", span).await?;
        let (rep_client, rep) = open(&bricks, &all, "rep3", span).await?;
        println!(
            "\n## Disperse 4+2 vs replica 3 (volume::Client in-process, {} MiB object, {secs} s per cell)\n",
            span / MIB
        );
        println!(
            "Six `stretto brick serve` processes on loopback, one disk; the replica uses three of them. \
             Disperse writes under a lease are staged then written in place (two writes per fragment)."
        );
        println!();
        table_header(&["workload", "QD", "replica-3 MiB/s", "disperse 4+2 MiB/s", "disperse/replica"]);
        for (title, write, bs, qd) in [
            ("write 1 MiB", true, MIB, 4u64),
            ("read 1 MiB", false, MIB, 4),
            ("write 64 KiB", true, 64 << 10, 16),
            ("read 64 KiB", false, 64 << 10, 16),
        ] {
            let r = throughput(rep.clone(), write, bs, qd, span, secs).await?;
            let e = throughput(ec.clone(), write, bs, qd, span, secs).await?;
            table_row(&[
                title.to_string(),
                qd.to_string(),
                format!("{r:.1}"),
                format!("{e:.1}"),
                format!("{:.2}", e / r.max(1e-9)),
            ]);
        }
        ec_client.close().await;
        rep_client.close().await;
        drop(bricks);
        Ok::<(), anyhow::Error>(())
    });
    drop(rt);
    let _ = std::fs::remove_dir_all(&root);
    r
}

/// Object size and seconds per side of a cell of the volume table.
fn volume_timing(quick: bool) -> (u64, f64) {
    if quick {
        (64 * MIB, 0.5)
    } else {
        (256 * MIB, 1.5)
    }
}

/// Time per codec measurement (each of the 4 geometries × stripe sizes
/// measures encode and reconstruct on three backends).
fn codec_budget(quick: bool) -> Duration {
    Duration::from_millis(if quick { 150 } else { 400 })
}

/// Seconds the section should take: 24 codec measurements, 8 volume
/// cell sides, ≈ 5 s of six bricks and two volumes.
pub fn estimate(quick: bool) -> f64 {
    24.0 * codec_budget(quick).as_secs_f64() + 8.0 * volume_timing(quick).1 + 5.0
}

fn codec(quick: bool) -> Result<()> {
    let budget = codec_budget(quick);
    println!("\n## Erasure coding (GB/s of stripe data, one thread)\n");
    match isal::library() {
        Ok(_) => println!("ISA-L: loaded {}", isal::LIBRARY),
        Err(e) => println!("ISA-L: not available ({e}); its columns are empty"),
    }
    println!();
    table_header(&[
        "op",
        "K+M",
        "stripe",
        "portable",
        "Stretto on ISA-L",
        "ISA-L direct",
        "portable / direct",
        "Stretto ISA-L / direct",
    ]);
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_string(),
    };
    for (k, m) in [(4, 2), (8, 3)] {
        for size in [64 << 10, 1 << 20] {
            for r in bench_one(k, m, size, budget)? {
                table_row(&[
                    r.op.to_string(),
                    r.geometry.clone(),
                    format!("{} KiB", r.size >> 10),
                    format!("{:.2}", r.portable),
                    cell(r.ours_isal),
                    cell(r.direct),
                    ratio(Some(r.portable), r.direct),
                    ratio(r.ours_isal, r.direct),
                ]);
                if let (Some(a), Some(b)) = (r.ours_isal, r.direct) {
                    if b > 0.0 {
                        record_ratio(
                            "ec codec",
                            &format!(
                                "{} {} {} KiB Stretto ISA-L/direct",
                                r.op,
                                r.geometry,
                                r.size >> 10
                            ),
                            a / b,
                        );
                    }
                }
            }
        }
    }
    println!(
        "\nStretto's reconstruct allocates the rebuilt fragments per call (decode \
         tables are cached per loss pattern); the direct column writes into buffers \
         made once. Both copy the surviving fragments each call."
    );
    Ok(())
}
