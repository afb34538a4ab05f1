//! RDMA integration tests on a real verbs device (soft-RoCE in the
//! hardware lane, `hw-tests/lane.sh`). Built only with the `rdma` feature;
//! each test skips (passes with a note) unless `STRETTO_RDMA_ADDR` names an
//! IP address of the RDMA device's interface and a device is present.
#![cfg(feature = "rdma")]

use iobuf::IoBuf;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use transport::rdma::{rdma_fabric, serve_rdma, Fabric, RdmaClient, RdmaListener};
use transport::wire::{DataRef, ObjectId, Ping, ReadReply, ReadReq, WriteReply, WriteReq};
use transport::{
    BoxFuture, Channel, ClientOptions, ConnState, ErrorCode, Handler, Payload, Request, Response,
    Secret, ServerOptions, ServerPayload,
};

#[derive(Default)]
struct MemHandler {
    data: Mutex<HashMap<u64, Vec<u8>>>,
}

impl Handler for MemHandler {
    fn handle<'a>(
        &'a self,
        req: Request,
        payload: &'a mut ServerPayload,
    ) -> BoxFuture<'a, Response> {
        Box::pin(async move {
            match req {
                Request::Ping(p) => Response::Pong(p),
                Request::Write(w) => match payload.data().await {
                    Ok(buf) => {
                        let n = buf.len() as u32;
                        self.data
                            .lock()
                            .unwrap()
                            .insert(w.offset, buf.as_slice().to_vec());
                        Response::Write(WriteReply { written: n })
                    }
                    Err(e) => Response::error(ErrorCode::Io, e.to_string()),
                },
                Request::Read(r) => {
                    let d = self.data.lock().unwrap().get(&r.offset).cloned();
                    let Some(d) = d else {
                        return Response::error(ErrorCode::NotFound, "no such data");
                    };
                    if let Err(e) = payload.push_from(IoBuf::from_slice(&d)).await {
                        return Response::error(ErrorCode::Io, e.to_string());
                    }
                    Response::Read(ReadReply {
                        data: DataRef::None,
                        crc32c: 0,
                    })
                }
                _ => Response::error(ErrorCode::Unsupported, "test handler"),
            }
        })
    }
}

fn setup() -> Option<(Arc<dyn Fabric>, String)> {
    let Ok(ip) = std::env::var("STRETTO_RDMA_ADDR") else {
        eprintln!("skipped: STRETTO_RDMA_ADDR is not set");
        return None;
    };
    match rdma_fabric() {
        Ok(f) => Some((f, ip)),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn obj() -> ObjectId {
    ObjectId {
        volume: 1,
        vnode: 1,
        unique: 1,
        chunk: 0,
    }
}

fn secret() -> Secret {
    Secret::from_bytes(&[3u8; 32]).unwrap()
}

fn opts() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(20),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        ..ClientOptions::default()
    }
}

async fn server(fabric: Arc<dyn Fabric>, ip: &str, port: u16) -> tokio::sync::watch::Sender<bool> {
    let l = RdmaListener::bind(fabric, &format!("{ip}:{port}")).unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve_rdma(
        l,
        secret(),
        Arc::new(MemHandler::default()),
        rx,
        ServerOptions::default(),
    ));
    tx
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize * 131 + i * 7 + i / 251) as u8)
        .collect()
}

async fn write(c: &RdmaClient, off: u64, data: &[u8]) {
    let req = Request::Write(WriteReq {
        object: obj(),
        offset: off,
        epoch: 0,
        flags: 0,
        crc32c: 0,
        data: DataRef::None,
    });
    let (resp, _) = c
        .call(req, Payload::Out(IoBuf::from_slice(data)))
        .await
        .unwrap();
    assert!(
        matches!(resp, Response::Write(WriteReply { written }) if written as usize == data.len()),
        "{resp:?}"
    );
}

async fn read(c: &RdmaClient, off: u64, len: usize) -> Vec<u8> {
    let req = Request::Read(ReadReq {
        object: obj(),
        offset: off,
        len: len as u32,
        data: DataRef::None,
    });
    let (resp, back) = c.call(req, Payload::In(IoBuf::alloc(len))).await.unwrap();
    assert!(matches!(resp, Response::Read(_)), "{resp:?}");
    back.into_buf().unwrap().as_slice().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdma_round_trips_on_the_device() {
    let Some((fabric, ip)) = setup() else { return };
    let _stop = server(fabric.clone(), &ip, 20881).await;
    let c = RdmaClient::connect(fabric, &format!("{ip}:20881"), secret(), opts())
        .await
        .unwrap();
    assert_eq!(c.state(), ConnState::Up);
    let (resp, _) = c
        .call(Request::Ping(Ping { token: 9 }), Payload::None)
        .await
        .unwrap();
    assert!(matches!(resp, Response::Pong(Ping { token: 9 })));
    for (i, len) in [1usize, 4096, 65536, 1 << 20].into_iter().enumerate() {
        let data = pattern(i as u64, len);
        write(&c, i as u64, &data).await;
        assert_eq!(read(&c, i as u64, len).await, data, "{len} bytes");
    }
    // Many calls in flight at once.
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(100 + i, 4096 + i as usize);
            write(&c, 100 + i, &data).await;
            assert_eq!(read(&c, 100 + i, 8192).await, data);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdma_server_loss_fails_calls_and_reconnects() {
    let Some((fabric, ip)) = setup() else { return };
    let stop = server(fabric.clone(), &ip, 20882).await;
    let c = RdmaClient::connect(fabric.clone(), &format!("{ip}:20882"), secret(), opts())
        .await
        .unwrap();
    let mut st = c.watch_state();
    stop.send(true).unwrap();
    // The server closes its connections; the client sees it go down.
    while *st.borrow_and_update() == ConnState::Up {
        st.changed().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _stop2 = server(fabric, &ip, 20882).await;
    while *st.borrow_and_update() != ConnState::Up {
        st.changed().await.unwrap();
    }
    let (resp, _) = c
        .call(Request::Ping(Ping { token: 1 }), Payload::None)
        .await
        .unwrap();
    assert!(matches!(resp, Response::Pong(_)));
}

/// Figures for the lane's benchmark lines (run with `--ignored`): one call
/// at a time, memory handler, so it measures the transport only. Each
/// figure is one `STRETTO_BENCH` line of `key=value` fields, so the lane
/// parses it by name, not by column: `op` (write | read), `size` (bytes),
/// `iters`, `avg_us` (mean wall time per call) and `mib_s` (size / avg_us in
/// MiB/s, 2^20 bytes per second: the unit perftest calls "MB/sec").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn rdma_bench() {
    let Some((fabric, ip)) = setup() else { return };
    let _stop = server(fabric.clone(), &ip, 20883).await;
    let c = RdmaClient::connect(fabric, &format!("{ip}:20883"), secret(), opts())
        .await
        .unwrap();
    let iters_4k: u32 = env_iters("STRETTO_BENCH_ITERS_4K", 100);
    let iters_1m: u32 = env_iters("STRETTO_BENCH_ITERS_1M", 10);
    for (len, iters) in [(4096usize, iters_4k), (1 << 20, iters_1m)] {
        let data = pattern(7, len);
        // One untimed round of each first: connection set-up and the first
        // touch of the buffers are not what is measured.
        write(&c, 0, &data).await;
        assert_eq!(read(&c, 0, len).await, data, "{len} bytes");
        let t = Instant::now();
        for _ in 0..iters {
            write(&c, 0, &data).await;
        }
        report("write", len, iters, t.elapsed());
        let t = Instant::now();
        for _ in 0..iters {
            read(&c, 0, len).await;
        }
        report("read", len, iters, t.elapsed());
        // The data read back is still the data written (not timed).
        assert_eq!(read(&c, 0, len).await, data, "{len} bytes");
    }
    c.close().await;
}

fn env_iters(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn report(op: &str, len: usize, iters: u32, total: Duration) {
    let avg = total.as_secs_f64() / f64::from(iters);
    println!(
        "STRETTO_BENCH op={op} size={len} iters={iters} avg_us={:.1} mib_s={:.2}",
        avg * 1e6,
        len as f64 / avg / (1u64 << 20) as f64
    );
}
