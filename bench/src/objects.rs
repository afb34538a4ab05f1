//! Object-store 4 KiB random I/O next to fio's io_uring engine on a file in
//! the same file system.
//!
//! Both sides use `O_DIRECT` and io_uring on a preallocated 256 MiB region;
//! Stretto's side goes through the object store (chunk lookup, worker ring,
//! fixed buffers, metadata update per write), the peer is fio on a plain file.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use iobuf::IoBuf;
use rand::{Rng, SeedableRng};
use storage::objects::{ChunkId, Fid, MemoryMeta, ObjectStore, StoreOptions};

use crate::fio;
use crate::stats::{record_ratio, table_header, table_row};

const SPAN: u64 = 256 << 20;

fn chunk() -> ChunkId {
    ChunkId::new(
        Fid {
            volume: 1,
            vnode: 1,
            unique: 1,
        },
        0,
    )
}

async fn run_store(store: Arc<ObjectStore>, write: bool, qd: usize, secs: f64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..qd {
        let store = store.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
            let mut buf = store.pool().take();
            buf.set_len(4096);
            while Instant::now() < deadline {
                let off = rng.gen_range(0..SPAN / 4096) * 4096;
                buf = if write {
                    let (r, b) = store.write(chunk(), off, buf).await;
                    r.expect("object write");
                    b
                } else {
                    let (r, b) = store.read(chunk(), off, buf).await;
                    r.expect("object read");
                    b
                };
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let start = Instant::now();
    while tasks.join_next().await.is_some() {}
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Fio's ramp and the measured seconds of each side of a cell.
fn timing(quick: bool) -> (u32, u32) {
    if quick {
        (0, 1)
    } else {
        (1, 2)
    }
}

/// Seconds the section should take: four cells, each the store's run and
/// fio's (ramp + run + its start), and filling the chunk.
pub fn estimate(quick: bool) -> f64 {
    let (ramp, secs) = timing(quick);
    4.0 * f64::from(ramp + 2 * secs) + 4.0 * crate::matrix::FIO_OVERHEAD_S + 2.0
}

/// Runs the object-store benchmark in `dir` and prints its table.
pub fn run(dir: &Path, quick: bool) -> Result<()> {
    let (ramp, secs) = timing(quick);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let sdir = dir.join("objects-bench");
    let _ = std::fs::remove_dir_all(&sdir);
    std::fs::create_dir_all(&sdir)?;
    let store = Arc::new(
        ObjectStore::open(&sdir, Arc::new(MemoryMeta::new()), StoreOptions::default())
            .context("open object store")?,
    );
    // Fill the chunk so reads hit allocated blocks, as fio's laid-out file does.
    let mut big = IoBuf::alloc(1 << 20);
    big.set_len(1 << 20);
    for off in (0..SPAN).step_by(1 << 20) {
        let (r, b) = store.write(chunk(), off, big).wait();
        r.context("fill chunk")?;
        big = b;
    }
    store.flush().wait().context("flush")?;
    let peer_file = dir.join("fio-peer.dat");

    println!(
        "\n## Object store 4 KiB random I/O vs fio io_uring --direct=1 (same file system, {secs} s each)\n"
    );
    table_header(&["pattern", "QD", "stretto IOPS", "fio IOPS", "stretto/fio"]);
    for (name, write) in [("randread", false), ("randwrite", true)] {
        for qd in [1usize, 32] {
            let ours = rt.block_on(run_store(store.clone(), write, qd, secs as f64));
            let peer = fio::io_uring(&peer_file, SPAN, name, 4096, qd as u32, ramp, secs)?;
            table_row(&[
                name.to_string(),
                qd.to_string(),
                format!("{ours:.0}"),
                format!("{:.0}", peer.iops),
                format!("{:.2}×", ours / peer.iops),
            ]);
            record_ratio(
                "objects",
                &format!("{name} 4k QD{qd} stretto/fio"),
                ours / peer.iops,
            );
        }
    }
    let _ = std::fs::remove_file(&peer_file);
    Ok(())
}
