//! End-to-end tests of `stretto brick`: the real binary on loopback, driven by
//! the real TCP client, checked against a model.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::{init_brick, run, BrickProcess};
use iobuf::IoBuf;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use transport::wire::{
    encode_request, DataRef, ErrorCode, ObjectId, ObjectReq, RangeReq, ReadReq, WriteReq,
};
use transport::{ClientOptions, Payload, Request, Response, Secret, TcpClient};

const OBJ_SPAN: u64 = 256 * 1024;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn object(n: u32) -> ObjectId {
    ObjectId {
        volume: 7,
        vnode: n,
        unique: 1,
        chunk: 0,
    }
}

async fn connect(addr: std::net::SocketAddr, secret: &std::path::Path) -> TcpClient {
    let secret = Secret::load(secret).unwrap();
    TcpClient::connect(&addr.to_string(), secret, ClientOptions::default())
        .await
        .expect("connect")
}

async fn write(c: &TcpClient, obj: ObjectId, offset: u64, data: &[u8]) -> Response {
    c.call(
        Request::Write(WriteReq {
            object: obj,
            offset,
            epoch: 0,
            flags: 0,
            crc32c: 0,
            data: DataRef::Inline {
                len: data.len() as u32,
            },
        }),
        Payload::Out(IoBuf::from_slice(data)),
    )
    .await
    .expect("write call")
    .0
}

async fn read(c: &TcpClient, obj: ObjectId, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = IoBuf::alloc(len);
    buf.set_len(len);
    let (resp, back) = c
        .call(
            Request::Read(ReadReq {
                object: obj,
                offset,
                len: len as u32,
                data: DataRef::Inline { len: len as u32 },
            }),
            Payload::In(buf),
        )
        .await
        .expect("read call");
    assert!(matches!(resp, Response::Read(_)), "read failed: {resp:?}");
    back.into_buf().unwrap().as_slice().to_vec()
}

async fn flush(c: &TcpClient) {
    let (resp, _) = c
        .call(
            Request::Flush(ObjectReq { object: object(0) }),
            Payload::None,
        )
        .await
        .expect("flush call");
    assert_eq!(resp, Response::Flush);
}

/// One object's expected bytes and size.
#[derive(Default, Clone)]
struct ModelObject {
    bytes: Vec<u8>,
    size: u64,
}

impl ModelObject {
    fn apply(&mut self, offset: u64, data: Option<&[u8]>, len: u64) {
        let end = (offset + len) as usize;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        match data {
            Some(d) => self.bytes[offset as usize..end].copy_from_slice(d),
            None => self.bytes[offset as usize..end].fill(0),
        }
        self.size = self.size.max(offset + len);
    }

    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        (offset as usize..offset as usize + len)
            .map(|i| self.bytes.get(i).copied().unwrap_or(0))
            .collect()
    }
}

enum Op {
    Write(u64, Vec<u8>),
    Read(u64, usize),
    Punch(u64, u64),
    Zero(u64, u64),
    Stat,
    Flush,
}

fn random_op(rng: &mut StdRng) -> Op {
    let off = |rng: &mut StdRng, max: u64| {
        if rng.gen_bool(0.5) {
            rng.gen_range(0..OBJ_SPAN - max) & !4095
        } else {
            rng.gen_range(0..OBJ_SPAN - max)
        }
    };
    match rng.gen_range(0..100) {
        0..=39 => {
            let len = rng.gen_range(1..=65536usize);
            let o = off(rng, len as u64);
            let mut d = vec![0u8; len];
            rng.fill(&mut d[..]);
            Op::Write(o, d)
        }
        40..=69 => {
            let len = rng.gen_range(1..=65536usize);
            Op::Read(off(rng, len as u64), len)
        }
        70..=79 => {
            let len = rng.gen_range(1..=32768u64);
            Op::Punch(off(rng, len), len)
        }
        80..=87 => {
            let len = rng.gen_range(1..=32768u64);
            Op::Zero(off(rng, len), len)
        }
        88..=95 => Op::Stat,
        _ => Op::Flush,
    }
}

/// 1000 random object operations, up to 16 in flight at once (on distinct
/// objects, so the model's order is the brick's), against an in-memory model.
#[test]
fn random_ops_against_model_many_in_flight() {
    let b = init_brick();
    let brick = BrickProcess::start(&b.dir, "127.0.0.1:0");
    let rt = rt();
    rt.block_on(async {
        let client = Arc::new(connect(brick.addr, &b.secret).await);
        let mut model: HashMap<u32, ModelObject> = HashMap::new();
        let mut rng = StdRng::seed_from_u64(0x5733_7770);
        let mut done = 0;
        while done < 1000 {
            let batch = rng.gen_range(1..=16u32).min(1000 - done);
            let mut tasks = tokio::task::JoinSet::new();
            for slot in 0..batch {
                let n = slot + 1;
                let op = random_op(&mut rng);
                let expected = model.entry(n).or_default().clone();
                let c = client.clone();
                tasks.spawn(async move {
                    let obj = object(n);
                    match &op {
                        Op::Write(o, d) => {
                            let r = write(&c, obj, *o, d).await;
                            assert!(matches!(r, Response::Write(_)), "write: {r:?}");
                        }
                        Op::Read(o, len) => {
                            let got = read(&c, obj, *o, *len).await;
                            assert!(
                                got == expected.read(*o, *len),
                                "object {n} read {o}+{len} differs"
                            );
                        }
                        Op::Punch(o, len) | Op::Zero(o, len) => {
                            let req = RangeReq {
                                object: obj,
                                offset: *o,
                                len: *len,
                                epoch: 0,
                                flags: 0,
                            };
                            let req = if matches!(op, Op::Punch(..)) {
                                Request::Punch(req)
                            } else {
                                Request::Zero(req)
                            };
                            let (r, _) = c.call(req, Payload::None).await.unwrap();
                            assert!(
                                matches!(r, Response::Punch | Response::Zero),
                                "range op: {r:?}"
                            );
                        }
                        Op::Stat => {
                            let (r, _) = c
                                .call(Request::Stat(ObjectReq { object: obj }), Payload::None)
                                .await
                                .unwrap();
                            match r {
                                Response::Stat(s) => {
                                    assert_eq!(s.size, expected.size, "object {n} size")
                                }
                                Response::Error(e) => {
                                    assert_eq!(e.code, ErrorCode::NotFound);
                                    assert_eq!(expected.size, 0, "object {n} exists in the model");
                                }
                                other => panic!("stat: {other:?}"),
                            }
                        }
                        Op::Flush => flush(&c).await,
                    }
                    (n, op)
                });
            }
            while let Some(res) = tasks.join_next().await {
                let (n, op) = res.expect("op task panicked");
                let m = model.get_mut(&n).unwrap();
                match op {
                    Op::Write(o, d) => m.apply(o, Some(&d), d.len() as u64),
                    Op::Punch(o, l) | Op::Zero(o, l) => m.apply(o, None, l),
                    _ => {}
                }
            }
            done += batch;
        }
        // Everything reads back whole at the end.
        for (n, m) in &model {
            let got = read(&client, object(*n), 0, OBJ_SPAN as usize).await;
            assert!(
                got == m.read(0, OBJ_SPAN as usize),
                "object {n} final contents differ"
            );
        }
    });
    assert!(brick.terminate().success(), "brick did not stop cleanly");
}

#[test]
fn wrong_secret_is_refused_right_secret_served() {
    let b = init_brick();
    let brick = BrickProcess::start(&b.dir, "127.0.0.1:0");
    rt().block_on(async {
        let wrong = Secret::generate();
        let r = TcpClient::connect(&brick.addr.to_string(), wrong, ClientOptions::default()).await;
        assert!(
            matches!(r, Err(transport::TransportError::Auth { .. })),
            "wrong secret was not refused: {r:?}"
        );
        let c = connect(brick.addr, &b.secret).await;
        assert!(matches!(
            write(&c, object(1), 0, b"ok").await,
            Response::Write(_)
        ));
    });
}

/// Reads frames until EOF; returns the responses seen.
fn read_replies(stream: &mut TcpStream) -> Vec<Response> {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut dec = transport::wire::FrameDecoder::new(Default::default());
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                dec.feed(&buf[..n]);
                while let Ok(Some(f)) = dec.next_frame() {
                    if let Ok(r) = f.response() {
                        out.push(r);
                    }
                }
            }
        }
    }
}

#[test]
fn request_before_authentication_is_refused_and_closed() {
    let b = init_brick();
    let brick = BrickProcess::start(&b.dir, "127.0.0.1:0");
    let mut s = TcpStream::connect(brick.addr).unwrap();
    let req = Request::Stat(ObjectReq { object: object(1) });
    s.write_all(&encode_request(1, &req)).unwrap();
    let replies = read_replies(&mut s);
    assert!(
        replies
            .iter()
            .any(|r| matches!(r, Response::Error(e) if e.code == ErrorCode::NotAuthenticated)),
        "no NotAuthenticated reply: {replies:?}"
    );
}

#[test]
fn garbage_closes_only_that_connection() {
    let b = init_brick();
    let brick = BrickProcess::start(&b.dir, "127.0.0.1:0");
    let rt = rt();
    let client = rt.block_on(connect(brick.addr, &b.secret));
    rt.block_on(async {
        assert!(matches!(
            write(&client, object(1), 0, &[1u8; 8192]).await,
            Response::Write(_)
        ));
    });

    // Random bytes.
    let mut rng = StdRng::seed_from_u64(99);
    let mut junk = vec![0u8; 4096];
    rng.fill(&mut junk[..]);
    let mut s1 = TcpStream::connect(brick.addr).unwrap();
    let _ = s1.write_all(&junk);
    let _ = read_replies(&mut s1); // returns at EOF: the brick closed it

    // A valid-looking header announcing a 4 GiB body.
    let mut hdr = encode_request(5, &Request::Stat(ObjectReq { object: object(1) }));
    hdr.truncate(transport::wire::HEADER_LEN);
    let mut s2 = TcpStream::connect(brick.addr).unwrap();
    // Body length is the u32 at offset 16 (see docs/wire.md); CRC now fails too,
    // and either check must close the connection.
    hdr[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let _ = s2.write_all(&hdr);
    let _ = read_replies(&mut s2);

    // The well-behaved client saw nothing.
    rt.block_on(async {
        assert_eq!(client.state(), transport::ConnState::Up);
        let got = read(&client, object(1), 0, 8192).await;
        assert_eq!(got, vec![1u8; 8192]);
    });
}

/// SIGKILL the brick while writes are in flight; restart it; every write that
/// a completed flush covered reads back byte for byte.
#[test]
fn sigkill_during_writes_keeps_flushed_writes() {
    let b = init_brick();
    let rt = rt();
    for round in 0..3u32 {
        let brick = BrickProcess::start(&b.dir, "127.0.0.1:0");
        let flushed: Vec<(u64, u8)> = rt.block_on(async {
            let c = Arc::new(connect(brick.addr, &b.secret).await);
            let mut acked = Vec::new();
            let mut flushed = Vec::new();
            let mut i = 0u64;
            // Write distinct 16 KiB regions; flush every 8 writes; after the
            // 5th flush, keep 8 writes in flight and kill the brick under them.
            loop {
                let off = (round as u64 * 4096 + i) * 16384;
                let fill = (i as u8).wrapping_mul(31).wrapping_add(round as u8 + 1);
                if flushed.len() >= 40 {
                    let c2 = c.clone();
                    let inflight: Vec<_> = (0..8u64)
                        .map(|k| {
                            let c2 = c2.clone();
                            tokio::spawn(async move {
                                write(&c2, object(3), off + (k + 1) * 16384 * 4096, &[0xee; 16384])
                                    .await
                            })
                        })
                        .collect();
                    brick.signal(libc::SIGKILL);
                    for t in inflight {
                        let _ = t.await;
                    }
                    break flushed;
                }
                let r = write(&c, object(2), off, &[fill; 16384]).await;
                assert!(matches!(r, Response::Write(_)));
                acked.push((off, fill));
                i += 1;
                if i % 8 == 0 {
                    flush(&c).await;
                    flushed.append(&mut acked);
                }
            }
        });
        brick.kill9();
        let again = BrickProcess::start(&b.dir, "127.0.0.1:0");
        rt.block_on(async {
            let c = connect(again.addr, &b.secret).await;
            for (off, fill) in &flushed {
                let got = read(&c, object(2), *off, 16384).await;
                assert!(
                    got.iter().all(|x| x == fill),
                    "round {round}: flushed write at {off} lost after SIGKILL"
                );
            }
        });
        again.kill9();
    }
}

#[test]
fn stats_and_clean_sigterm() {
    let b = init_brick();
    let brick = BrickProcess::start(&b.dir, "127.0.0.1:0");
    rt().block_on(async {
        let c = connect(brick.addr, &b.secret).await;
        assert!(matches!(
            write(&c, object(1), 0, &[7u8; 4096]).await,
            Response::Write(_)
        ));
        let _ = read(&c, object(1), 0, 4096).await;
    });
    let out = run(&[
        "brick",
        "stats",
        &brick.addr.to_string(),
        "--secret-file",
        b.secret.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("writes         1 (4.0 KiB)"),
        "stats output: {text}"
    );
    assert!(
        text.contains("reads          1 (4.0 KiB)"),
        "stats output: {text}"
    );
    assert!(text.contains("latency"), "stats output: {text}");
    assert!(brick.terminate().success(), "SIGTERM did not exit cleanly");
}

#[test]
fn cli_errors_are_one_clear_line() {
    let b = init_brick();
    // init over a brick that exists.
    let out = run(&[
        "brick",
        "init",
        b.dir.to_str().unwrap(),
        "--secret-file",
        b.secret.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(err.contains("not empty"), "{err}");

    // serve a directory that is not a brick.
    let empty = tempfile::tempdir().unwrap();
    let out = run(&[
        "brick",
        "serve",
        empty.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("brick.info"), "{err}");

    // a bad address.
    let out = run(&[
        "brick",
        "serve",
        b.dir.to_str().unwrap(),
        "--listen",
        "nowhere",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST:PORT"));

    // stats against a port where nothing listens.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let out = run(&[
        "brick",
        "stats",
        &dead.to_string(),
        "--secret-file",
        b.secret.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
}
