//! The protocol's cost: brick requests over TCP loopback next to the same
//! object-store calls made in-process.
//!
//! A real brick (`brick::Brick`, the daemon's handler) serves on 127.0.0.1;
//! the client is `transport::TcpClient` with the pool secret. The in-process
//! side calls the brick's object store directly with the same sizes and
//! queue depths.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use iobuf::IoBuf;
use storage::objects::{ChunkId, Fid};
use transport::wire::{DataRef, ObjectId, Ping, ReadReq, WriteReq};
use transport::{ClientOptions, Handler, Payload, Request, Response, Secret, TcpClient};

use crate::stats::{table_header, table_row};

const OBJ: ObjectId = ObjectId {
    volume: 1,
    vnode: 2,
    unique: 3,
    chunk: 0,
};
const SPAN: u64 = 64 << 20;

fn chunk() -> ChunkId {
    ChunkId::new(
        Fid {
            volume: OBJ.volume,
            vnode: OBJ.vnode,
            unique: OBJ.unique,
        },
        OBJ.chunk,
    )
}

#[derive(Clone, Copy)]
enum Kind {
    Ping,
    Read(u32),
    Write(u32),
}

async fn over_tcp(c: Arc<TcpClient>, kind: Kind, qd: usize, secs: f64) -> Result<(f64, f64)> {
    let ops = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..qd as u64 {
        let c = c.clone();
        let ops = ops.clone();
        tasks.spawn(async move {
            let mut i = t;
            let mut buf: Option<IoBuf> = None;
            while Instant::now() < deadline {
                let (req, payload) = match kind {
                    Kind::Ping => (Request::Ping(Ping { token: i }), Payload::None),
                    Kind::Read(len) => {
                        let mut b = buf.take().unwrap_or_else(|| IoBuf::alloc(len as usize));
                        b.set_len(len as usize);
                        let off = (i * len as u64) % SPAN;
                        (
                            Request::Read(ReadReq {
                                object: OBJ,
                                offset: off,
                                len,
                                data: DataRef::Inline { len },
                            }),
                            Payload::In(b),
                        )
                    }
                    Kind::Write(len) => {
                        let mut b = buf.take().unwrap_or_else(|| IoBuf::alloc(len as usize));
                        b.set_len(len as usize);
                        let off = (i * len as u64) % SPAN;
                        (
                            Request::Write(WriteReq {
                                object: OBJ,
                                offset: off,
                                epoch: 0,
                                flags: 0,
                                crc32c: 0,
                                data: DataRef::Inline { len },
                            }),
                            Payload::Out(b),
                        )
                    }
                };
                let (resp, back) = c.call(req, payload).await?;
                if let Response::Error(e) = resp {
                    anyhow::bail!("brick error: {}", e.message);
                }
                buf = back.into_buf();
                ops.fetch_add(1, Ordering::Relaxed);
                i += qd as u64;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    let start = Instant::now();
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let n = ops.load(Ordering::Relaxed) as f64;
    let el = start.elapsed().as_secs_f64();
    Ok((n / el, el))
}

async fn in_process(b: Arc<brick::Brick>, kind: Kind, qd: usize, secs: f64) -> Result<f64> {
    let ops = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..qd as u64 {
        let b = b.clone();
        let ops = ops.clone();
        tasks.spawn(async move {
            let mut i = t;
            while Instant::now() < deadline {
                match kind {
                    Kind::Ping => {
                        // The cheapest call a brick answers without the network:
                        // the handler itself, as the transport would call it.
                        let mut p = transport::ServerPayload::none("bench".into(), 0);
                        let _ = b.handle(Request::Ping(Ping { token: i }), &mut p).await;
                    }
                    Kind::Read(len) => {
                        let mut buf = if len as usize <= b.store().pool().buf_size() {
                            b.store().pool().take()
                        } else {
                            IoBuf::alloc(len as usize)
                        };
                        buf.set_len(len as usize);
                        let off = (i * len as u64) % SPAN;
                        let (r, _) = b.store().read(chunk(), off, buf).await;
                        r?;
                    }
                    Kind::Write(len) => {
                        let mut buf = if len as usize <= b.store().pool().buf_size() {
                            b.store().pool().take()
                        } else {
                            IoBuf::alloc(len as usize)
                        };
                        buf.set_len(len as usize);
                        let off = (i * len as u64) % SPAN;
                        let (r, _) = b.store().write(chunk(), off, buf).await;
                        r?;
                    }
                }
                ops.fetch_add(1, Ordering::Relaxed);
                i += qd as u64;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    let start = Instant::now();
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(ops.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Seconds of each side of a cell (TCP, in-process).
fn secs(quick: bool) -> f64 {
    if quick {
        0.5
    } else {
        1.5
    }
}

/// Seconds the section should take: 8 cells of two sides, ≈ 2 s of setup.
pub fn estimate(quick: bool) -> f64 {
    16.0 * secs(quick) + 2.0
}

/// Runs the brick-over-TCP benchmark in `dir` and prints its table.
pub fn run(dir: &Path, quick: bool) -> Result<()> {
    let secs = secs(quick);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let bdir = dir.join("brick-bench");
    let _ = std::fs::remove_dir_all(&bdir);
    let secret_path = dir.join("bench.secret");
    let _ = std::fs::remove_file(&secret_path);
    brick::init(&bdir, &secret_path).context("brick init")?;
    let secret = Secret::load(&secret_path)?;
    let b = Arc::new(brick::Brick::open(&bdir)?);
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let handler: Arc<dyn Handler> = b.clone();
        let opts = transport::ServerOptions {
            pool: Some(b.store().pool().clone()),
            ..Default::default()
        };
        let server = tokio::spawn(transport::serve_with(
            listener,
            secret.clone(),
            handler,
            stop_rx,
            opts,
        ));
        let client = Arc::new(
            TcpClient::connect(&addr.to_string(), secret, ClientOptions::default()).await?,
        );
        // Lay the object out so reads hit data.
        for off in (0..SPAN).step_by(1 << 20) {
            let mut buf = IoBuf::alloc(1 << 20);
            buf.set_len(1 << 20);
            let (r, _) = b.store().write(chunk(), off, buf).await;
            r?;
        }
        println!("\n## Brick over TCP loopback vs the same calls in-process ({secs} s each)\n");
        table_header(&[
            "request",
            "QD",
            "tcp ops/s",
            "tcp MiB/s",
            "in-process ops/s",
            "in-process MiB/s",
            "tcp/in-process",
        ]);
        for (name, kind, bytes) in [
            ("ping (round trip)", Kind::Ping, 0u32),
            ("read 4 KiB", Kind::Read(4096), 4096),
            ("read 1 MiB", Kind::Read(1 << 20), 1 << 20),
            ("write 1 MiB", Kind::Write(1 << 20), 1 << 20),
        ] {
            for qd in [1usize, 16] {
                let (tcp, _) = over_tcp(client.clone(), kind, qd, secs).await?;
                let local = in_process(b.clone(), kind, qd, secs).await?;
                let mib = |ops: f64| ops * bytes as f64 / (1u64 << 20) as f64;
                table_row(&[
                    name.to_string(),
                    qd.to_string(),
                    format!("{tcp:.0}"),
                    if bytes > 0 {
                        format!("{:.0}", mib(tcp))
                    } else {
                        "-".into()
                    },
                    format!("{local:.0}"),
                    if bytes > 0 {
                        format!("{:.0}", mib(local))
                    } else {
                        "-".into()
                    },
                    format!("{:.2}×", tcp / local),
                ]);
            }
        }
        client.close().await;
        let _ = stop_tx.send(true);
        let _ = server.await;
        Ok::<(), anyhow::Error>(())
    })?;
    b.shutdown()?;
    Ok(())
}
