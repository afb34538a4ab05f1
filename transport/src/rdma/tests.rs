//! Tests of the RDMA engine and driver on the verbs SIMULATION (`sim`):
//! no RDMA device needed, so they run in every `cargo test`.

use super::engine::{Engine, EngineConfig, Event, Role};
use super::sim::{SimConfig, SimFabric, SimQp};
use super::verbs::{Fabric, RemoteRef, WcStatus, WorkKind};
use super::{serve_rdma_with, RdmaClient, RdmaListener};
use crate::auth::Secret;
use crate::channel::{BoxFuture, Channel, ConnState, Handler, Payload, ServerPayload};
use crate::error::TransportError;
use crate::tcp::{ClientOptions, ServerOptions};
use crate::wire::{
    block_crcs, DataRef, ErrorCode, ObjectId, Ping, ReadBlocksReply, ReadReply, ReadReq, Request,
    Response, WriteBlocksReq, WriteReply, WriteReq,
};
use iobuf::{BufPool, IoBuf};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Reply = Result<(Response, Payload), TransportError>;

fn small_cfg(window: u16, data_bufs: usize) -> EngineConfig {
    EngineConfig {
        window,
        slot_size: 4096,
        data_buf_size: 64 * 1024,
        data_bufs,
    }
}

fn obj() -> ObjectId {
    ObjectId {
        volume: 1,
        vnode: 2,
        unique: 3,
        chunk: 0,
    }
}

fn write_req(offset: u64) -> Request {
    Request::Write(WriteReq {
        object: obj(),
        offset,
        epoch: 0,
        flags: 0,
        crc32c: 0,
        data: DataRef::None,
    })
}

fn read_req(offset: u64, len: u32) -> Request {
    Request::Read(ReadReq {
        object: obj(),
        offset,
        len,
        data: DataRef::None,
    })
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

fn remote_of(req: &Request) -> Option<RemoteRef> {
    match req.data_ref() {
        Some(DataRef::Remote { addr, len, rkey }) => Some(RemoteRef {
            addr: *addr,
            len: *len,
            rkey: *rkey,
        }),
        _ => None,
    }
}

/// A server engine that stores writes by offset and answers reads, driven
/// by hand: each step polls both engines once.
struct Pair {
    client: Engine<SimQp>,
    server: Engine<SimQp>,
    store: HashMap<u64, Vec<u8>>,
    /// Server one-sided ops in flight: token -> (request id, request).
    ops: HashMap<u64, (u64, Request)>,
    next_token: u64,
    replies: Vec<(u64, Reply)>,
    /// When false the server holds requests instead of answering.
    answer: bool,
    held: Vec<(u64, Request)>,
    failed: (bool, bool),
}

impl Pair {
    fn new(fabric: &SimFabric, cfg: EngineConfig) -> Pair {
        Pair::with(fabric, cfg.clone(), cfg)
    }

    /// A pair whose two ends are configured differently.
    fn with(fabric: &SimFabric, client: EngineConfig, server: EngineConfig) -> Pair {
        let (a, b) = fabric.pair();
        Pair {
            client: Engine::new(a, Role::Client, client, "server".into()).unwrap(),
            server: Engine::new(b, Role::Server, server, "client".into()).unwrap(),
            store: HashMap::new(),
            ops: HashMap::new(),
            next_token: 1,
            replies: Vec::new(),
            answer: true,
            held: Vec::new(),
            failed: (false, false),
        }
    }

    fn serve(&mut self, request_id: u64, req: Request) {
        match &req {
            Request::Write(_) => {
                let remote = remote_of(&req).unwrap();
                let token = self.next_token;
                self.next_token += 1;
                self.server.read_remote(token, remote).unwrap();
                self.ops.insert(token, (request_id, req));
            }
            Request::Read(r) => {
                let remote = remote_of(&req).unwrap();
                let data = self.store.get(&r.offset).cloned().unwrap_or_default();
                let token = self.next_token;
                self.next_token += 1;
                self.server
                    .write_remote(token, IoBuf::from_slice(&data), remote)
                    .unwrap();
                self.ops.insert(token, (request_id, req));
            }
            Request::Ping(p) => self.server.reply(request_id, &Response::Pong(*p)),
            _ => self
                .server
                .reply(request_id, &Response::error(ErrorCode::Unsupported, "test")),
        }
    }

    fn step(&mut self) -> usize {
        let mut ev = Vec::new();
        let mut n = self.client.poll(&mut ev);
        for e in ev.drain(..) {
            match e {
                Event::Reply { request_id, result } => self.replies.push((request_id, result)),
                Event::Failed { .. } => self.failed.0 = true,
                other => panic!("client event {other:?}"),
            }
        }
        n += self.server.poll(&mut ev);
        for e in ev.drain(..) {
            match e {
                Event::Request { request_id, req } => {
                    if self.answer {
                        self.serve(request_id, req)
                    } else {
                        self.held.push((request_id, req))
                    }
                }
                Event::OneSided { token, buf, result } => {
                    let Some((request_id, req)) = self.ops.remove(&token) else {
                        continue;
                    };
                    if result.is_err() {
                        continue;
                    }
                    match req {
                        Request::Write(w) => {
                            let buf = buf.unwrap();
                            self.store.insert(w.offset, buf.as_slice().to_vec());
                            self.server.reply(
                                request_id,
                                &Response::Write(WriteReply {
                                    written: buf.len() as u32,
                                }),
                            );
                        }
                        Request::Read(r) => {
                            let mut remote = remote_of(&Request::Read(r)).unwrap();
                            remote.len = self.store.get(&r.offset).map_or(0, |d| d.len() as u32);
                            self.server.reply(
                                request_id,
                                &Response::Read(ReadReply {
                                    data: DataRef::Remote {
                                        addr: remote.addr,
                                        len: remote.len,
                                        rkey: remote.rkey,
                                    },
                                    crc32c: 0,
                                }),
                            );
                        }
                        _ => {}
                    }
                }
                Event::Failed { .. } => self.failed.1 = true,
                other => panic!("server event {other:?}"),
            }
        }
        n
    }

    fn run_until(&mut self, replies: usize) {
        for _ in 0..100_000 {
            if self.replies.len() >= replies {
                return;
            }
            self.step();
        }
        panic!("only {} of {replies} replies", self.replies.len());
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize * 31 + i * 7) as u8)
        .collect()
}

#[test]
fn credits_keep_sends_within_posted_receives() {
    let fabric = SimFabric::new(SimConfig::default());
    let mut p = Pair::new(&fabric, small_cfg(4, 4));
    for i in 0..50u64 {
        p.client
            .call(i, Request::Ping(Ping { token: i }), Payload::None, far())
            .map_err(|e| e.0)
            .unwrap();
    }
    p.run_until(50);
    assert_eq!(fabric.rnr_events(), 0, "a SEND found no receive posted");
    assert!(
        p.client.stats().max_backlog > 0,
        "calls never waited for credits"
    );
    let mut ids: Vec<u64> = p
        .replies
        .iter()
        .map(|(id, r)| match r {
            Ok((Response::Pong(Ping { token }), _)) => {
                assert_eq!(token, id);
                *id
            }
            other => panic!("{other:?}"),
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..50).collect::<Vec<_>>());
}

#[test]
fn a_silent_receiver_hands_credits_back_alone() {
    let fabric = SimFabric::new(SimConfig::default());
    let mut p = Pair::new(&fabric, small_cfg(4, 4));
    p.answer = false;
    for i in 0..12u64 {
        p.client
            .call(i, Request::Ping(Ping { token: i }), Payload::None, far())
            .map_err(|e| e.0)
            .unwrap();
    }
    for _ in 0..1000 {
        p.step();
    }
    // The server answered nothing yet still received more than its window:
    // only credit-only messages can have let the client go on.
    assert_eq!(p.held.len(), 12);
    assert!(p.server.stats().credit_updates > 0);
    assert_eq!(fabric.rnr_events(), 0);
    p.answer = true;
    for (id, req) in std::mem::take(&mut p.held) {
        p.serve(id, req);
    }
    p.run_until(12);
}

/// The ends need not agree on the window: each starts from the fewest
/// receives any engine posts and learns the rest from the peer's first
/// envelope. Assuming the peer's window equal to its own, a client with a
/// larger window overran the server's receives, and a pair whose larger
/// side owed fewer than half its window stalled for good.
#[test]
fn ends_with_different_windows_neither_overrun_nor_stall() {
    for (cw, sw) in [(32u16, 4u16), (4, 32), (8, 2), (2, 8)] {
        let fabric = SimFabric::new(SimConfig {
            seed: u64::from(cw) * 100 + u64::from(sw),
            reorder: true,
        });
        let mut p = Pair::with(&fabric, small_cfg(cw, 4), small_cfg(sw, 4));
        for i in 0..40u64 {
            p.client
                .call(i, Request::Ping(Ping { token: i }), Payload::None, far())
                .map_err(|e| e.0)
                .unwrap();
        }
        p.run_until(40);
        // Then a trickle, one call at a time: the end of a burst is where
        // credits owed but below the update threshold used to strand a side.
        for i in 40..60u64 {
            p.client
                .call(i, Request::Ping(Ping { token: i }), Payload::None, far())
                .map_err(|e| e.0)
                .unwrap();
            p.run_until(i as usize + 1);
        }
        assert_eq!(
            fabric.rnr_events(),
            0,
            "windows {cw}/{sw}: a SEND found no receive"
        );
        assert_eq!(p.failed, (false, false), "windows {cw}/{sw}");
        let mut ids: Vec<u64> = p
            .replies
            .iter()
            .map(|(id, r)| {
                assert!(
                    matches!(r, Ok((Response::Pong(Ping { token }), _)) if token == id),
                    "{r:?}"
                );
                *id
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..60).collect::<Vec<_>>(), "windows {cw}/{sw}");
    }
}

#[test]
fn write_then_read_moves_data_one_sided_through_bounce_buffers() {
    let fabric = SimFabric::new(SimConfig::default());
    let mut p = Pair::new(&fabric, small_cfg(8, 4));
    let data = pattern(1, 10_000);
    p.client
        .call(
            1,
            write_req(0),
            Payload::Out(IoBuf::from_slice(&data)),
            far(),
        )
        .map_err(|e| e.0)
        .unwrap();
    p.run_until(1);
    p.client
        .call(
            2,
            read_req(0, 16384),
            Payload::In(IoBuf::alloc(16384)),
            far(),
        )
        .map_err(|e| e.0)
        .unwrap();
    p.run_until(2);
    let (_, r) = p.replies.pop().unwrap();
    let (resp, payload) = r.unwrap();
    assert!(matches!(resp, Response::Read(_)));
    let buf = payload.into_buf().unwrap();
    assert_eq!(buf.as_slice(), &data[..]);
    assert_eq!(fabric.one_sided_bytes(), 20_000);
    assert_eq!(p.client.stats().bounced, 2);
}

#[test]
fn registered_pool_buffers_travel_without_a_copy() {
    let fabric = SimFabric::new(SimConfig::default());
    let mut p = Pair::new(&fabric, small_cfg(8, 4));
    let pool = BufPool::new(8192, 4);
    p.client.register_pool(&pool).unwrap();
    let mut buf = pool.take();
    let data = pattern(2, 8192);
    buf.set_len(8192);
    buf.as_mut_slice().copy_from_slice(&data);
    p.client
        .call(1, write_req(8), Payload::Out(buf), far())
        .map_err(|e| e.0)
        .unwrap();
    p.run_until(1);
    assert_eq!(p.client.stats().bounced, 0);
    assert_eq!(p.store[&8], data);
}

#[test]
fn buffer_exhaustion_queues_calls_until_buffers_return() {
    let fabric = SimFabric::new(SimConfig::default());
    // Two data buffers a side, twelve writes in flight.
    let mut p = Pair::new(&fabric, small_cfg(8, 2));
    for i in 0..12u64 {
        let data = pattern(i, 3000 + i as usize);
        p.client
            .call(
                i,
                write_req(i),
                Payload::Out(IoBuf::from_slice(&data)),
                far(),
            )
            .map_err(|e| e.0)
            .unwrap();
    }
    p.run_until(12);
    for (id, r) in &p.replies {
        match r {
            Ok((Response::Write(w), _)) => assert_eq!(w.written as usize, 3000 + *id as usize),
            other => panic!("{other:?}"),
        }
    }
    for i in 0..12u64 {
        assert_eq!(p.store[&i], pattern(i, 3000 + i as usize));
    }
}

#[test]
fn out_of_order_completions_keep_every_reply_matched() {
    let fabric = SimFabric::new(SimConfig {
        seed: 7,
        reorder: true,
    });
    let mut p = Pair::new(&fabric, small_cfg(4, 3));
    for i in 0..40u64 {
        let data = pattern(i, 100 + i as usize * 13);
        p.client
            .call(
                2 * i,
                write_req(i),
                Payload::Out(IoBuf::from_slice(&data)),
                far(),
            )
            .map_err(|e| e.0)
            .unwrap();
    }
    p.run_until(40);
    for i in 0..40u64 {
        p.client
            .call(
                2 * i + 1,
                read_req(i, 4096),
                Payload::In(IoBuf::alloc(4096)),
                far(),
            )
            .map_err(|e| e.0)
            .unwrap();
    }
    p.run_until(80);
    for (id, r) in &p.replies {
        let (resp, payload) = r.as_ref().map_err(|e| e.to_string()).unwrap();
        if id % 2 == 1 {
            let i = id / 2;
            assert!(matches!(resp, Response::Read(_)));
            let Payload::In(buf) = payload else {
                panic!("no buffer")
            };
            assert_eq!(buf.as_slice(), &pattern(i, 100 + i as usize * 13)[..]);
        }
    }
    assert_eq!(fabric.rnr_events(), 0);
}

#[test]
fn a_remote_key_error_fails_the_queue_pair_and_every_call() {
    let fabric = SimFabric::new(SimConfig::default());
    let mut p = Pair::new(&fabric, small_cfg(4, 4));
    p.answer = false;
    p.client
        .call(
            1,
            write_req(0),
            Payload::Out(IoBuf::from_slice(b"hello")),
            far(),
        )
        .map_err(|e| e.0)
        .unwrap();
    p.client
        .call(2, Request::Ping(Ping { token: 2 }), Payload::None, far())
        .map_err(|e| e.0)
        .unwrap();
    while p.held.len() < 2 {
        p.step();
    }
    let (_, req) = p.held.remove(0);
    let mut remote = remote_of(&req).unwrap();
    remote.rkey ^= 0x100;
    p.server.read_remote(99, remote).unwrap();
    for _ in 0..100 {
        p.step();
    }
    assert!(p.failed.0 && p.failed.1, "both ends must see the QP error");
    assert_eq!(p.replies.len(), 2);
    for (_, r) in &p.replies {
        assert!(
            matches!(r, Err(TransportError::ConnectionLost { .. })),
            "{r:?}"
        );
    }
    // New calls fail at once.
    let r = p
        .client
        .call(3, Request::Ping(Ping { token: 3 }), Payload::None, far());
    assert!(matches!(r, Err((TransportError::ConnectionLost { .. }, _))));
}

#[test]
fn a_timed_out_call_keeps_its_buffer_until_the_reply() {
    let fabric = SimFabric::new(SimConfig::default());
    let mut p = Pair::new(&fabric, small_cfg(4, 1));
    p.answer = false;
    let now = Instant::now();
    p.client
        .call(1, read_req(0, 100), Payload::In(IoBuf::alloc(100)), now)
        .map_err(|e| e.0)
        .unwrap();
    while p.held.is_empty() {
        p.step();
    }
    let mut ev = Vec::new();
    p.client.expire(now, &mut ev);
    assert!(matches!(
        ev.as_slice(),
        [Event::Reply {
            request_id: 1,
            result: Err(TransportError::Timeout { .. })
        }]
    ));
    assert!(
        !p.client.is_idle(),
        "the lent buffer must stay until the reply"
    );
    // The one data buffer is still lent out: a second read waits for it.
    p.client
        .call(2, read_req(0, 100), Payload::In(IoBuf::alloc(100)), far())
        .map_err(|e| e.0)
        .unwrap();
    for _ in 0..50 {
        p.step();
    }
    assert_eq!(p.held.len(), 1);
    p.answer = true;
    let (id, req) = p.held.remove(0);
    p.serve(id, req);
    p.run_until(1);
    assert_eq!(p.replies[0].0, 2, "the late reply to call 1 is dropped");
}

#[test]
fn an_injected_send_failure_breaks_the_connection() {
    let fabric = SimFabric::new(SimConfig::default());
    let mut p = Pair::new(&fabric, small_cfg(4, 2));
    fabric.fail_next(WorkKind::Send, WcStatus::RetryExceeded);
    p.client
        .call(1, Request::Ping(Ping { token: 1 }), Payload::None, far())
        .map_err(|e| e.0)
        .unwrap();
    p.run_until(1);
    assert!(matches!(
        p.replies[0].1,
        Err(TransportError::ConnectionLost { .. })
    ));
    assert!(p.client.is_failed());
}

// ---- the async driver: RdmaClient and serve_rdma on the simulation ----

/// Keeps written data in memory by (object, offset).
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
                // The integrity opcodes move their data like Write and Read.
                Request::WriteBlocks(w) => match payload.data().await {
                    Ok(buf) => {
                        if w.crcs != block_crcs(w.write.offset, buf.as_slice()) {
                            return Response::error(ErrorCode::Invalid, "block CRC mismatch");
                        }
                        let n = buf.len() as u32;
                        self.data
                            .lock()
                            .unwrap()
                            .insert(w.write.offset, buf.as_slice().to_vec());
                        Response::WriteBlocks(WriteReply { written: n })
                    }
                    Err(e) => Response::error(ErrorCode::Io, e.to_string()),
                },
                Request::ReadBlocks(r) => {
                    let d = self.data.lock().unwrap().get(&r.offset).cloned();
                    let Some(d) = d else {
                        return Response::error(ErrorCode::NotFound, "no such data");
                    };
                    let crcs = block_crcs(r.offset, &d);
                    if let Err(e) = payload.push_from(IoBuf::from_slice(&d)).await {
                        return Response::error(ErrorCode::Io, e.to_string());
                    }
                    Response::ReadBlocks(ReadBlocksReply {
                        data: DataRef::None,
                        crcs,
                    })
                }
                _ => Response::error(ErrorCode::Unsupported, "test handler"),
            }
        })
    }
}

fn secret() -> Secret {
    Secret::from_bytes(&[7u8; 32]).unwrap()
}

fn fast_opts() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(50),
        ..ClientOptions::default()
    }
}

async fn start_server(fabric: &SimFabric) -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = RdmaListener::bind(Arc::new(fabric.clone()), "127.0.0.1:0").unwrap();
    let addr = listener.local_addr();
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        serve_rdma_with(
            listener,
            secret(),
            Arc::new(MemHandler::default()),
            &mut rx,
            ServerOptions::default(),
            small_cfg(8, 4),
        )
        .await
    });
    (addr, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_server_round_trip_over_simulated_verbs() {
    let fabric = SimFabric::new(SimConfig {
        seed: 3,
        reorder: true,
    });
    let (addr, _stop) = start_server(&fabric).await;
    let client = RdmaClient::connect(Arc::new(fabric.clone()), &addr, secret(), fast_opts())
        .await
        .unwrap();
    assert_eq!(client.state(), ConnState::Up);
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(i, 1000 + i as usize * 100);
            let (resp, _) = c
                .call(write_req(i), Payload::Out(IoBuf::from_slice(&data)))
                .await
                .unwrap();
            assert!(matches!(resp, Response::Write(WriteReply { written }) if written as usize == data.len()));
            let (resp, back) = c
                .call(read_req(i, 8192), Payload::In(IoBuf::alloc(8192)))
                .await
                .unwrap();
            assert!(matches!(resp, Response::Read(_)), "{resp:?}");
            assert_eq!(back.into_buf().unwrap().as_slice(), &data[..]);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // An error reply comes back as a reply, with the buffer.
    let (resp, back) = client
        .call(read_req(999, 10), Payload::In(IoBuf::alloc(10)))
        .await
        .unwrap();
    assert!(matches!(resp, Response::Error(_)));
    assert_eq!(back.into_buf().unwrap().len(), 0);
    assert!(fabric.one_sided_bytes() > 0);
    assert_eq!(fabric.rnr_events(), 0);
    client.close().await;
    assert_eq!(client.state(), ConnState::Down);
}

/// WriteBlocks and ReadBlocks (data with per-block CRCs) carry their data
/// one-sided, like Write and Read: the brick RDMA-READs the write data and
/// RDMA-WRITEs the read data, the CRC tables travel in the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_crc_opcodes_move_data_one_sided() {
    let fabric = SimFabric::new(SimConfig::default());
    let (addr, _stop) = start_server(&fabric).await;
    let client = RdmaClient::connect(Arc::new(fabric.clone()), &addr, secret(), fast_opts())
        .await
        .unwrap();
    for (i, len) in [(0u64, 4096usize), (1 << 20, 3 * 4096 + 100)] {
        let data = pattern(i, len);
        let Request::Write(w) = write_req(i) else {
            unreachable!()
        };
        let before = fabric.one_sided_bytes();
        let (resp, _) = client
            .call(
                Request::WriteBlocks(WriteBlocksReq::new(w, &data)),
                Payload::Out(IoBuf::from_slice(&data)),
            )
            .await
            .unwrap();
        assert!(
            matches!(resp, Response::WriteBlocks(WriteReply { written }) if written as usize == len),
            "{resp:?}"
        );
        let Request::Read(r) = read_req(i, len as u32) else {
            unreachable!()
        };
        let (resp, back) = client
            .call(Request::ReadBlocks(r), Payload::In(IoBuf::alloc(len)))
            .await
            .unwrap();
        let Response::ReadBlocks(reply) = resp else {
            panic!("{resp:?}")
        };
        let back = back.into_buf().unwrap();
        assert_eq!(back.as_slice(), &data[..]);
        assert_eq!(reply.crcs, block_crcs(i, &data));
        assert!(fabric.one_sided_bytes() >= before + 2 * len as u64);
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qp_error_reconnects_and_calls_go_on() {
    let fabric = SimFabric::new(SimConfig::default());
    let (addr, _stop) = start_server(&fabric).await;
    let client = RdmaClient::connect(Arc::new(fabric.clone()), &addr, secret(), fast_opts())
        .await
        .unwrap();
    let mut states = client.watch_state();
    fabric.break_all();
    // Wait for the state to leave Up and come back.
    let mut seen_down = false;
    loop {
        states.changed().await.unwrap();
        let s = *states.borrow();
        if s != ConnState::Up {
            seen_down = true;
        } else if seen_down {
            break;
        }
    }
    let (resp, _) = client
        .call(Request::Ping(Ping { token: 5 }), Payload::None)
        .await
        .unwrap();
    assert!(matches!(resp, Response::Pong(Ping { token: 5 })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused() {
    let fabric = SimFabric::new(SimConfig::default());
    let (addr, _stop) = start_server(&fabric).await;
    let other = Secret::from_bytes(&[9u8; 32]).unwrap();
    let r = RdmaClient::connect(Arc::new(fabric.clone()), &addr, other, fast_opts()).await;
    assert!(matches!(r, Err(TransportError::Auth { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_rdma_fails_clearly_and_auto_falls_back() {
    use super::select::{connect_channel, TransportKind};
    assert_eq!(
        "rdma,tcp".parse::<TransportKind>().unwrap(),
        TransportKind::Auto
    );
    assert_eq!("tcp".parse::<TransportKind>().unwrap(), TransportKind::Tcp);
    assert!("udp".parse::<TransportKind>().is_err());
    // A simulated fabric with no listener: auto must fall back to TCP (and
    // fail there too, as nothing listens), rdma must fail on RDMA.
    let fabric: Arc<dyn Fabric> = Arc::new(SimFabric::new(SimConfig::default()));
    let r = connect_channel(
        TransportKind::Rdma,
        "127.0.0.1:1",
        secret(),
        fast_opts(),
        Some(fabric.clone()),
    )
    .await;
    let e = r.err().unwrap().to_string();
    assert!(e.contains("simulated listener"), "{e}");
    if cfg!(not(feature = "rdma")) {
        let r = connect_channel(
            TransportKind::Rdma,
            "127.0.0.1:1",
            secret(),
            fast_opts(),
            None,
        )
        .await;
        let e = r.err().unwrap().to_string();
        assert!(e.contains("built without RDMA support"), "{e}");
    }
}
