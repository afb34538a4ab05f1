//! TCP backend over loopback: a client against an in-memory object store
//! (a test double, not the brick), authentication, garbage, reconnect,
//! timeouts and shutdown.

use iobuf::{BufPool, IoBuf};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use transport::auth::{ClientHandshake, ClientStep, Nonce};
use transport::wire::*;
use transport::*;

/// Test double: objects in a HashMap, with the semantics the model below
/// mirrors (reads past the end return zeros, punch and zero clear bytes).
#[derive(Default)]
struct MemStore {
    objects: Mutex<HashMap<ObjectId, Vec<u8>>>,
    configs: Mutex<HashMap<u32, VolConfig>>,
    /// Ping tokens the store never answers (to test timeouts).
    black_hole: u64,
    /// Signalled when a `Ping` with token `slow` starts; it then sleeps.
    slow_started: Notify,
    slow: u64,
    /// A `Ping` with token `GATE_WAIT` waits until one with `GATE_OPEN` has
    /// been handled: proof that one connection's requests run concurrently.
    gate: Notify,
    /// Signalled when the `GATE_WAIT` ping starts waiting.
    gate_waiting: Notify,
}

const GATE_WAIT: u64 = 0x6a7e_0001;
const GATE_OPEN: u64 = 0x6a7e_0002;

impl Handler for MemStore {
    fn handle<'a>(
        &'a self,
        req: Request,
        payload: &'a mut ServerPayload,
    ) -> BoxFuture<'a, Response> {
        Box::pin(async move {
            // A little reordering: replies leave in a different order than
            // requests came.
            let jitter = match &req {
                Request::Read(r) => r.offset % 7,
                Request::Write(w) => w.offset % 5,
                _ => 0,
            };
            tokio::time::sleep(Duration::from_micros(jitter * 100)).await;
            match req {
                Request::Ping(p) if p.token == self.black_hole && p.token != 0 => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                Request::Ping(p) if p.token == self.slow && p.token != 0 => {
                    self.slow_started.notify_one();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Response::Pong(p)
                }
                Request::Ping(p) if p.token == GATE_WAIT => {
                    self.gate_waiting.notify_one();
                    self.gate.notified().await;
                    Response::Pong(p)
                }
                Request::Ping(p) if p.token == GATE_OPEN => {
                    self.gate.notify_one();
                    Response::Pong(p)
                }
                Request::Ping(p) => Response::Pong(p),
                Request::Write(w) => {
                    let data = match payload.data().await {
                        Ok(d) => d,
                        Err(e) => return Response::error(ErrorCode::Invalid, e.to_string()),
                    };
                    let mut objs = self.objects.lock().unwrap();
                    let obj = objs.entry(w.object).or_default();
                    let end = w.offset as usize + data.len();
                    if obj.len() < end {
                        obj.resize(end, 0);
                    }
                    obj[w.offset as usize..end].copy_from_slice(data.as_slice());
                    Response::Write(WriteReply {
                        written: data.len() as u32,
                    })
                }
                Request::Read(r) => {
                    let mut buf = IoBuf::alloc(r.len as usize);
                    buf.set_len(r.len as usize);
                    {
                        let objs = self.objects.lock().unwrap();
                        let Some(obj) = objs.get(&r.object) else {
                            return Response::error(ErrorCode::NotFound, "no such object");
                        };
                        let out = buf.as_mut_slice();
                        for (i, b) in out.iter_mut().enumerate() {
                            *b = obj.get(r.offset as usize + i).copied().unwrap_or(0);
                        }
                    }
                    let crc32c = crc(buf.as_slice());
                    if let Err(e) = payload.push_from(buf).await {
                        return Response::error(ErrorCode::TooLarge, e.to_string());
                    }
                    Response::Read(ReadReply {
                        data: DataRef::None,
                        crc32c,
                    })
                }
                Request::Punch(r) | Request::Zero(r) => {
                    let punch = matches!(req, Request::Punch(_));
                    let mut objs = self.objects.lock().unwrap();
                    if let Some(obj) = objs.get_mut(&r.object) {
                        let start = (r.offset as usize).min(obj.len());
                        let end = (r.offset.saturating_add(r.len) as usize).min(obj.len());
                        obj[start..end].fill(0);
                    }
                    if punch {
                        Response::Punch
                    } else {
                        Response::Zero
                    }
                }
                Request::Flush(_) => Response::Flush,
                Request::Stat(o) => match self.objects.lock().unwrap().get(&o.object) {
                    Some(obj) => Response::Stat(StatReply {
                        size: obj.len() as u64,
                        allocated: obj.len() as u64,
                        version: 0,
                    }),
                    None => Response::error(ErrorCode::NotFound, "no such object"),
                },
                Request::Remove(r) => match self.objects.lock().unwrap().remove(&r.object) {
                    Some(_) => Response::Remove,
                    None => Response::error(ErrorCode::NotFound, "no such object"),
                },
                Request::GetVolConfig(g) => match self.configs.lock().unwrap().get(&g.volume) {
                    Some(c) => Response::VolConfig(c.clone()),
                    None => Response::error(ErrorCode::NotFound, "no such volume"),
                },
                Request::PutVolConfig(p) => {
                    let mut c = self.configs.lock().unwrap();
                    let old = c.get(&p.volume).map_or(0, |c| c.generation);
                    if p.generation <= old {
                        return Response::error(ErrorCode::StaleEpoch, "older generation");
                    }
                    c.insert(
                        p.volume,
                        VolConfig {
                            generation: p.generation,
                            config: p.config,
                        },
                    );
                    Response::VolConfigStored {
                        generation: p.generation,
                    }
                }
                Request::BrickStats => Response::BrickStats(BrickStats {
                    requests: 1,
                    ..BrickStats::default()
                }),
                Request::Hello(_) | Request::Auth(_) => {
                    Response::error(ErrorCode::Invalid, "handshake reached the handler")
                }
                Request::Lease(_)
                | Request::Marks(_)
                | Request::ListChunks(_)
                | Request::WriteBlocks(_)
                | Request::ReadBlocks(_)
                | Request::Verify(_)
                | Request::ScrubStatus(_)
                | Request::RecordGet(_)
                | Request::RecordList(_)
                | Request::RecordCommit(_)
                | Request::RecordChanges(_)
                | Request::RecordHead(_)
                | Request::RecordSync(_) => {
                    Response::error(ErrorCode::Unsupported, "not served by the test store")
                }
            }
        })
    }
}

fn crc(b: &[u8]) -> u32 {
    // Any stable checksum will do for the double; the transport does not
    // look at it.
    b.iter().fold(0u32, |a, &x| a.rotate_left(5) ^ x as u32)
}

struct TestServer {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    async fn start(addr: &str, secret: &Secret, handler: Arc<dyn Handler>) -> TestServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let opts = ServerOptions {
            pool: Some(BufPool::new(64 * 1024, 16)),
            ..ServerOptions::default()
        };
        let task = tokio::spawn(serve_with(listener, secret.clone(), handler, rx, opts));
        TestServer {
            addr,
            shutdown: tx,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.send_replace(true);
        self.task.await.unwrap().unwrap();
    }
}

fn secret(b: u8) -> Secret {
    Secret::from_bytes(&[b; 32]).unwrap()
}

fn opts() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(20),
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(100),
        ..ClientOptions::default()
    }
}

fn oid(n: u32) -> ObjectId {
    ObjectId {
        volume: 1,
        vnode: n,
        unique: 100 + n,
        chunk: 0,
    }
}

/// The model: what the store must hold.
#[derive(Clone, Debug)]
enum Op {
    Write {
        obj: u32,
        offset: u64,
        data: Vec<u8>,
    },
    Read {
        obj: u32,
        offset: u64,
        len: u32,
    },
    Punch {
        obj: u32,
        offset: u64,
        len: u64,
    },
    Stat {
        obj: u32,
    },
    Remove {
        obj: u32,
    },
    Ping {
        token: u64,
    },
}

async fn run_op(client: &TcpClient, op: &Op) -> (Response, Option<Vec<u8>>) {
    match op {
        Op::Write { obj, offset, data } => {
            let req = Request::Write(WriteReq {
                object: oid(*obj),
                offset: *offset,
                epoch: 0,
                flags: 0,
                crc32c: 0,
                data: DataRef::None,
            });
            let (resp, back) = client
                .call(req, Payload::Out(IoBuf::from_slice(data)))
                .await
                .unwrap();
            let Payload::Out(buf) = back else {
                panic!("write buffer not returned")
            };
            assert_eq!(buf.as_slice(), &data[..], "write buffer came back changed");
            (resp, None)
        }
        Op::Read { obj, offset, len } => {
            let req = Request::Read(ReadReq {
                object: oid(*obj),
                offset: *offset,
                len: *len,
                data: DataRef::None,
            });
            let (resp, back) = client
                .call(req, Payload::In(IoBuf::alloc(*len as usize)))
                .await
                .unwrap();
            let Payload::In(buf) = back else {
                panic!("read buffer not returned")
            };
            (resp, Some(buf.as_slice().to_vec()))
        }
        Op::Punch { obj, offset, len } => {
            let req = Request::Punch(RangeReq {
                object: oid(*obj),
                offset: *offset,
                len: *len,
                epoch: 0,
                flags: 0,
            });
            (client.call(req, Payload::None).await.unwrap().0, None)
        }
        Op::Stat { obj } => {
            let req = Request::Stat(ObjectReq { object: oid(*obj) });
            (client.call(req, Payload::None).await.unwrap().0, None)
        }
        Op::Remove { obj } => {
            let req = Request::Remove(RemoveReq {
                object: oid(*obj),
                epoch: 0,
            });
            (client.call(req, Payload::None).await.unwrap().0, None)
        }
        Op::Ping { token } => {
            let (resp, _) = client
                .call(Request::Ping(Ping { token: *token }), Payload::None)
                .await
                .unwrap();
            (resp, None)
        }
    }
}

/// Applies `op` to the model and checks the store's answer against it.
fn check_op(model: &mut HashMap<u32, Vec<u8>>, op: &Op, resp: &Response, data: Option<&[u8]>) {
    match op {
        Op::Write {
            obj,
            offset,
            data: d,
        } => {
            assert_eq!(
                resp,
                &Response::Write(WriteReply {
                    written: d.len() as u32
                })
            );
            let o = model.entry(*obj).or_default();
            let end = *offset as usize + d.len();
            if o.len() < end {
                o.resize(end, 0);
            }
            o[*offset as usize..end].copy_from_slice(d);
        }
        Op::Read { obj, offset, len } => match model.get(obj) {
            None => {
                assert!(
                    matches!(resp, Response::Error(e) if e.code == ErrorCode::NotFound),
                    "{resp:?}"
                );
                assert_eq!(data, Some(&[][..]), "no data for a failed read");
            }
            Some(o) => {
                let want: Vec<u8> = (0..*len as usize)
                    .map(|i| o.get(*offset as usize + i).copied().unwrap_or(0))
                    .collect();
                let Response::Read(r) = resp else {
                    panic!("{resp:?}")
                };
                assert_eq!(r.data, DataRef::Inline { len: *len });
                assert_eq!(r.crc32c, crc(&want));
                assert_eq!(data, Some(&want[..]), "read {obj} at {offset} len {len}");
            }
        },
        Op::Punch { obj, offset, len } => {
            assert_eq!(resp, &Response::Punch);
            if let Some(o) = model.get_mut(obj) {
                let start = (*offset as usize).min(o.len());
                let end = ((*offset + *len) as usize).min(o.len());
                o[start..end].fill(0);
            }
        }
        Op::Stat { obj } => match model.get(obj) {
            None => assert!(matches!(resp, Response::Error(e) if e.code == ErrorCode::NotFound)),
            Some(o) => assert!(
                matches!(resp, Response::Stat(s) if s.size == o.len() as u64),
                "{resp:?}"
            ),
        },
        Op::Remove { obj } => {
            let had = model.remove(obj).is_some();
            if had {
                assert_eq!(resp, &Response::Remove);
            } else {
                assert!(matches!(resp, Response::Error(e) if e.code == ErrorCode::NotFound));
            }
        }
        Op::Ping { token } => assert_eq!(resp, &Response::Pong(Ping { token: *token })),
    }
}

fn random_op(rng: &mut StdRng, obj: u32) -> Op {
    match rng.gen_range(0..100) {
        0..=34 => {
            let len = if rng.gen_bool(0.1) {
                rng.gen_range(64 * 1024..200 * 1024)
            } else {
                rng.gen_range(1..9000)
            };
            let mut data = vec![0u8; len];
            rng.fill(&mut data[..]);
            Op::Write {
                obj,
                offset: rng.gen_range(0..100_000),
                data,
            }
        }
        35..=69 => Op::Read {
            obj,
            offset: rng.gen_range(0..120_000),
            len: rng.gen_range(0..20_000),
        },
        70..=79 => Op::Punch {
            obj,
            offset: rng.gen_range(0..100_000),
            len: rng.gen_range(0..50_000),
        },
        80..=89 => Op::Stat { obj },
        90..=94 => Op::Remove { obj },
        _ => Op::Ping { token: rng.gen() },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_matches_model_over_1000_random_ops() {
    let k = secret(1);
    let server = TestServer::start("127.0.0.1:0", &k, Arc::new(MemStore::default())).await;
    let client = Arc::new(
        TcpClient::connect(&server.addr.to_string(), k, opts())
            .await
            .unwrap(),
    );
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    let mut model: HashMap<u32, Vec<u8>> = HashMap::new();
    const OBJECTS: u32 = 24;
    let mut done = 0;
    while done < 1000 {
        // A batch touches each object at most once, so its ops commute and
        // may complete in any order; all of it is in flight at once.
        let mut objs: Vec<u32> = (0..OBJECTS).collect();
        let batch = rng.gen_range(1..=OBJECTS as usize).min(1000 - done);
        let ops: Vec<Op> = (0..batch)
            .map(|_| {
                let obj = objs.swap_remove(rng.gen_range(0..objs.len()));
                random_op(&mut rng, obj)
            })
            .collect();
        let mut tasks = Vec::new();
        for op in ops.clone() {
            let c = client.clone();
            tasks.push(tokio::spawn(async move { run_op(&c, &op).await }));
        }
        for (op, t) in ops.iter().zip(tasks) {
            let (resp, data) = t.await.unwrap();
            check_op(&mut model, op, &resp, data.as_deref());
        }
        done += batch;
    }
    // And the volume configuration calls.
    let put = |generation| {
        Request::PutVolConfig(PutVolConfig {
            volume: 3,
            generation,
            config: b"replica 3".to_vec(),
        })
    };
    let (r, _) = client.call(put(2), Payload::None).await.unwrap();
    assert_eq!(r, Response::VolConfigStored { generation: 2 });
    let (r, _) = client.call(put(1), Payload::None).await.unwrap();
    assert!(matches!(r, Response::Error(e) if e.code == ErrorCode::StaleEpoch));
    let (r, _) = client
        .call(
            Request::GetVolConfig(GetVolConfig { volume: 3 }),
            Payload::None,
        )
        .await
        .unwrap();
    assert_eq!(
        r,
        Response::VolConfig(VolConfig {
            generation: 2,
            config: b"replica 3".to_vec()
        })
    );
    client.close().await;
    assert_eq!(client.state(), ConnState::Down);
    server.stop().await;
}

/// A raw connection that speaks frames by hand.
struct Raw {
    stream: TcpStream,
    dec: FrameDecoder,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            dec: FrameDecoder::default(),
        }
    }

    async fn send(&mut self, id: u64, req: &Request) {
        self.stream
            .write_all(&encode_request(id, req))
            .await
            .unwrap();
    }

    /// The next reply, or `None` when the server closed the connection.
    async fn recv(&mut self) -> Option<(u64, Response)> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.dec.next_frame().unwrap() {
                return Some((f.header.request_id, f.response().unwrap()));
            }
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.dec.feed(&buf[..n]),
            }
        }
    }

    /// Runs the handshake with `k`; returns what the client sent.
    async fn authenticate(&mut self, k: &Secret) -> Vec<Request> {
        let (mut hs, mut req) = ClientHandshake::new(k.clone(), Nonce::random());
        let mut sent = Vec::new();
        for id in 0.. {
            self.send(id, &req).await;
            sent.push(req.clone());
            let (_, resp) = self.recv().await.expect("server closed during handshake");
            match hs.on_response(&resp).unwrap() {
                ClientStep::Send(next) => req = next,
                ClientStep::Done => break,
            }
        }
        sent
    }

    /// True when the server closed the connection (after any replies).
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    }
}

fn expect_not_authenticated(r: Option<(u64, Response)>) {
    match r {
        Some((_, Response::Error(e))) => assert_eq!(e.code, ErrorCode::NotAuthenticated, "{e}"),
        other => panic!("expected NotAuthenticated, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_over_tcp() {
    let k = secret(2);
    let server = TestServer::start("127.0.0.1:0", &k, Arc::new(MemStore::default())).await;
    let addr = server.addr.to_string();

    // Right secret: served.
    let c = TcpClient::connect(&addr, k.clone(), opts()).await.unwrap();
    let (r, _) = c
        .call(Request::Ping(Ping { token: 5 }), Payload::None)
        .await
        .unwrap();
    assert_eq!(r, Response::Pong(Ping { token: 5 }));

    // Wrong secret: the client refuses the server's proof.
    let err = TcpClient::connect(&addr, secret(3), opts())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Auth {
                source: transport::auth::AuthError::ServerProofInvalid,
                ..
            }
        ),
        "{err}"
    );

    // No secret at all: a request before the handshake is refused and the
    // connection closed.
    let mut raw = Raw::connect(server.addr).await;
    raw.send(1, &Request::Ping(Ping { token: 1 })).await;
    expect_not_authenticated(raw.recv().await);
    assert!(raw.closed().await);

    // A wrong proof is refused and the connection closed.
    let mut raw = Raw::connect(server.addr).await;
    raw.send(
        0,
        &Request::Hello(Hello {
            client_nonce: [9; 32],
        }),
    )
    .await;
    assert!(matches!(
        raw.recv().await,
        Some((0, Response::Challenge(_)))
    ));
    raw.send(
        1,
        &Request::Auth(AuthProof {
            client_proof: [0; 32],
        }),
    )
    .await;
    expect_not_authenticated(raw.recv().await);
    assert!(raw.closed().await);

    // A replayed transcript fails: the new connection has a fresh nonce.
    let mut honest = Raw::connect(server.addr).await;
    let transcript = honest.authenticate(&k).await;
    honest.send(7, &Request::Ping(Ping { token: 7 })).await;
    assert_eq!(
        honest.recv().await,
        Some((7, Response::Pong(Ping { token: 7 })))
    );
    let mut replay = Raw::connect(server.addr).await;
    replay.send(0, &transcript[0]).await;
    assert!(matches!(
        replay.recv().await,
        Some((0, Response::Challenge(_)))
    ));
    replay.send(1, &transcript[1]).await;
    expect_not_authenticated(replay.recv().await);
    assert!(replay.closed().await);

    // After all that, the good client still works.
    let (r, _) = c
        .call(Request::Ping(Ping { token: 6 }), Payload::None)
        .await
        .unwrap();
    assert_eq!(r, Response::Pong(Ping { token: 6 }));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_that_connection() {
    let k = secret(4);
    let server = TestServer::start("127.0.0.1:0", &k, Arc::new(MemStore::default())).await;
    let client = Arc::new(
        TcpClient::connect(&server.addr.to_string(), k.clone(), opts())
            .await
            .unwrap(),
    );

    // A well-behaved client keeps calling the whole time.
    let (stop_tx, stop_rx) = watch::channel(false);
    let good = {
        let c = client.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !*stop_rx.borrow() || n < 50 {
                n += 1;
                let (r, _) = c
                    .call(Request::Ping(Ping { token: n }), Payload::None)
                    .await
                    .expect("good client failed");
                assert_eq!(r, Response::Pong(Ping { token: n }));
            }
            n
        })
    };

    let mut rng = StdRng::seed_from_u64(0x6a7b);
    for round in 0..20 {
        // Random bytes before authentication.
        let mut raw = Raw::connect(server.addr).await;
        let mut junk = vec![0u8; rng.gen_range(1..4000)];
        rng.fill(&mut junk[..]);
        if round % 2 == 0 {
            junk[..4].copy_from_slice(b"STRB"); // get past the magic
        }
        // The server may close while we still write.
        let _ = raw.stream.write_all(&junk).await;
        if junk.len() < HEADER_LEN {
            // Too short to judge: the server waits for the rest (or its
            // handshake timeout); ending the stream mid-frame closes it.
            raw.stream.shutdown().await.unwrap();
        }
        assert!(raw.closed().await, "round {round}");
    }

    // After authentication: a header announcing 4 GiB of data.
    let mut raw = Raw::connect(server.addr).await;
    raw.authenticate(&k).await;
    let mut head = FrameHeader {
        opcode: Opcode::Write as u8,
        flags: 0,
        request_id: 99,
        body_len: 72,
        data_len: u32::MAX,
        body_crc: 0,
    }
    .encode()
    .to_vec();
    head.extend_from_slice(&[0u8; 72]);
    raw.stream.write_all(&head).await.unwrap();
    assert!(raw.closed().await);

    // Random bytes after authentication.
    let mut raw = Raw::connect(server.addr).await;
    raw.authenticate(&k).await;
    let mut junk = vec![0u8; 3000];
    rng.fill(&mut junk[..]);
    let _ = raw.stream.write_all(&junk).await;
    assert!(raw.closed().await);

    // A malformed body is answered, and that connection keeps working.
    let mut raw = Raw::connect(server.addr).await;
    raw.authenticate(&k).await;
    raw.stream
        .write_all(&encode_frame(0x66, 0, 5, &[1, 2, 3], 0))
        .await
        .unwrap();
    match raw.recv().await {
        Some((5, Response::Error(e))) => assert_eq!(e.code, ErrorCode::Unsupported),
        other => panic!("{other:?}"),
    }
    raw.send(6, &Request::Ping(Ping { token: 6 })).await;
    assert_eq!(
        raw.recv().await,
        Some((6, Response::Pong(Ping { token: 6 })))
    );
    // An RDMA data reference cannot be served over TCP: answered, not fatal.
    let remote = Request::Write(WriteReq {
        object: oid(1),
        offset: 0,
        epoch: 0,
        flags: 0,
        crc32c: 0,
        data: DataRef::Remote {
            addr: 0x1000,
            len: 4096,
            rkey: 7,
        },
    });
    raw.send(8, &remote).await;
    match raw.recv().await {
        Some((8, Response::Error(e))) => assert_eq!(e.code, ErrorCode::Unsupported),
        other => panic!("{other:?}"),
    }
    raw.send(9, &Request::Ping(Ping { token: 9 })).await;
    assert_eq!(
        raw.recv().await,
        Some((9, Response::Pong(Ping { token: 9 })))
    );

    stop_tx.send_replace(true);
    assert!(good.await.unwrap() >= 50);
    assert_eq!(client.state(), ConnState::Up);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_after_server_restart() {
    let k = secret(5);
    let server = TestServer::start("127.0.0.1:0", &k, Arc::new(MemStore::default())).await;
    let addr = server.addr;
    let client = TcpClient::connect(&addr.to_string(), k.clone(), opts())
        .await
        .unwrap();
    let mut states = client.watch_state();
    assert_eq!(*states.borrow_and_update(), ConnState::Up);
    client
        .call(Request::Ping(Ping { token: 1 }), Payload::None)
        .await
        .unwrap();

    server.stop().await;
    states.wait_for(|s| *s != ConnState::Up).await.unwrap();
    // While it is down, calls fail at once with a clear error.
    let err = client
        .call(Request::Ping(Ping { token: 2 }), Payload::None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::NotConnected { .. } | TransportError::ConnectionLost { .. }
        ),
        "{err}"
    );
    assert!(err.is_connection_error());

    let server = TestServer::start(&addr.to_string(), &k, Arc::new(MemStore::default())).await;
    states.wait_for(|s| *s == ConnState::Up).await.unwrap();
    let (r, _) = client
        .call(Request::Ping(Ping { token: 3 }), Payload::None)
        .await
        .unwrap();
    assert_eq!(r, Response::Pong(Ping { token: 3 }));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_request_times_out() {
    let k = secret(6);
    let store = MemStore {
        black_hole: 666,
        ..MemStore::default()
    };
    let server = TestServer::start("127.0.0.1:0", &k, Arc::new(store)).await;
    let client = TcpClient::connect(
        &server.addr.to_string(),
        k,
        ClientOptions {
            request_timeout: Duration::from_millis(200),
            ..opts()
        },
    )
    .await
    .unwrap();
    let err = client
        .call(Request::Ping(Ping { token: 666 }), Payload::None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Timeout {
                opcode: Opcode::Ping,
                ..
            }
        ),
        "{err}"
    );
    // The connection is still good for other calls.
    let (r, _) = client
        .call(Request::Ping(Ping { token: 1 }), Payload::None)
        .await
        .unwrap();
    assert_eq!(r, Response::Pong(Ping { token: 1 }));
    // The black-holed request never finishes, so this server cannot shut
    // down gracefully; abort it.
    server.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let k = secret(7);
    let store = Arc::new(MemStore {
        slow: 42,
        ..MemStore::default()
    });
    let server = TestServer::start("127.0.0.1:0", &k, store.clone()).await;
    let client = Arc::new(
        TcpClient::connect(&server.addr.to_string(), k, opts())
            .await
            .unwrap(),
    );
    let c = client.clone();
    let call = tokio::spawn(async move {
        c.call(Request::Ping(Ping { token: 42 }), Payload::None)
            .await
    });
    store.slow_started.notified().await;
    server.stop().await;
    let (r, _) = call.await.unwrap().unwrap();
    assert_eq!(r, Response::Pong(Ping { token: 42 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misused_payloads_are_refused_locally() {
    let k = secret(8);
    let server = TestServer::start("127.0.0.1:0", &k, Arc::new(MemStore::default())).await;
    let client = TcpClient::connect(&server.addr.to_string(), k, opts())
        .await
        .unwrap();
    let err = client
        .call(
            Request::Ping(Ping { token: 1 }),
            Payload::Out(IoBuf::from_slice(b"x")),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::BadCall { .. }), "{err}");
    let read = Request::Read(ReadReq {
        object: oid(1),
        offset: 0,
        len: 10_000,
        data: DataRef::None,
    });
    let err = client
        .call(read, Payload::In(IoBuf::alloc(4096)))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::BadCall { .. }), "{err}");
    let err = client
        .call(
            Request::Hello(Hello {
                client_nonce: [0; 32],
            }),
            Payload::None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::BadCall { .. }), "{err}");
    // A read with nowhere to put the answer, and a message over the frame
    // limit, are refused before anything is sent.
    let read = Request::Read(ReadReq {
        object: oid(1),
        offset: 0,
        len: 10,
        data: DataRef::None,
    });
    let err = client.call(read, Payload::None).await.unwrap_err();
    assert!(matches!(err, TransportError::BadCall { .. }), "{err}");
    let huge = Request::PutVolConfig(PutVolConfig {
        volume: 1,
        generation: 1,
        config: vec![0; MAX_BODY as usize],
    });
    let err = client.call(huge, Payload::None).await.unwrap_err();
    assert!(matches!(err, TransportError::BadCall { .. }), "{err}");
    // The same client behind the backend-neutral trait.
    let ch: &dyn Channel = &client;
    let (r, _) = ch
        .call(Request::Ping(Ping { token: 77 }), Payload::None)
        .await
        .unwrap();
    assert_eq!(r, Response::Pong(Ping { token: 77 }));
    assert_eq!(ch.state(), ConnState::Up);
    // An empty write is a write of nothing, not an error.
    let write = Request::Write(WriteReq {
        object: oid(1),
        offset: 0,
        epoch: 0,
        flags: 0,
        crc32c: 0,
        data: DataRef::None,
    });
    let (r, back) = client
        .call(write, Payload::Out(IoBuf::alloc(0)))
        .await
        .unwrap();
    assert_eq!(r, Response::Write(WriteReply { written: 0 }));
    assert!(matches!(back, Payload::Out(b) if b.is_empty()));
    ch.close().await;
    assert_eq!(ch.state(), ConnState::Down);
    let err = ch
        .call(Request::Ping(Ping { token: 78 }), Payload::None)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Closed { .. }), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_serves_requests_concurrently_and_out_of_order() {
    let k = secret(9);
    let store = Arc::new(MemStore::default());
    let server = TestServer::start("127.0.0.1:0", &k, store.clone()).await;
    let client = Arc::new(
        TcpClient::connect(&server.addr.to_string(), k, opts())
            .await
            .unwrap(),
    );
    // The first call is held in its handler until the second is handled,
    // so a server that served one connection's requests one at a time
    // would never answer the second (it would time out), and the replies
    // necessarily leave in the opposite order of the requests.
    let c = client.clone();
    let first = tokio::spawn(async move {
        c.call(Request::Ping(Ping { token: GATE_WAIT }), Payload::None)
            .await
    });
    store.gate_waiting.notified().await;
    let (r, _) = client
        .call(Request::Ping(Ping { token: GATE_OPEN }), Payload::None)
        .await
        .unwrap();
    assert_eq!(r, Response::Pong(Ping { token: GATE_OPEN }));
    let (r, _) = first.await.unwrap().unwrap();
    assert_eq!(r, Response::Pong(Ping { token: GATE_WAIT }));
    server.stop().await;
}
