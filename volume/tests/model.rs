//! Model-based test: random writes, punches, zeroes, flushes, brick cuts
//! and restores, and heals on a replica-3 volume, checked against a plain
//! byte array. After each sequence every brick is back, heal runs, and the
//! volume and each brick's copy must equal the model.
//!
//! `STRETTO_MODEL_SEEDS` sets the number of seeds (default 100).

mod common;

use rand::{Rng, SeedableRng};

use common::*;
use transport::wire::{DataRef, ReadReq};
use transport::{Payload, Request, Response, TcpClient};
use volume::{Client, Fid, VolumeError, VolumeKind};

const CHUNK: u64 = 1 << 20;
const SPAN: usize = 3 << 20;
const OPS: usize = 24;

async fn raw_chunk(c: &TcpClient, fid: Fid, chunk: u64) -> Vec<u8> {
    let (r, p) = c
        .call(
            Request::Read(ReadReq {
                object: fid.chunk(chunk),
                offset: 0,
                len: CHUNK as u32,
                data: DataRef::None,
            }),
            Payload::In(iobuf::IoBuf::alloc(CHUNK as usize)),
        )
        .await
        .expect("read");
    let mut out = vec![0u8; CHUNK as usize];
    match r {
        Response::Read(_) => {
            let b = p.into_buf().expect("buf");
            out[..b.len()].copy_from_slice(b.as_slice());
        }
        Response::Error(e) if e.code == transport::ErrorCode::NotFound => {}
        other => panic!("{other:?}"),
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_ops_with_cuts_and_heals_match_the_model() {
    let seeds: u64 = std::env::var("STRETTO_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let pool = Pool::new();
    let mut bricks = Vec::new();
    for i in 0..3 {
        let d = pool.init_brick(i);
        bricks.push(InBrick::start(&d, &pool.secret, "127.0.0.1:0").await);
    }
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let (links, cuts) = cut_links(&addrs, &pool.secret).await;
    let client = Client::with_links(
        spec(
            9,
            VolumeKind::Replicate { replica: 3 },
            addrs.clone(),
            CHUNK,
        ),
        links,
    )
    .expect("client");
    let mut raw = Vec::new();
    for a in &addrs {
        raw.push(
            TcpClient::connect(a, pool.secret.clone(), client_opts())
                .await
                .expect("raw"),
        );
    }
    let mut healed_bytes = 0u64;
    for seed in 0..seeds {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let fid = Fid {
            volume: 9,
            vnode: seed as u32 + 1,
            unique: 7,
        };
        let obj = client.object(fid);
        let mut model = vec![0u8; SPAN];
        let mut size = 0u64;
        let mut down = [false; 3];
        for op in 0..OPS {
            let ctx = format!("seed {seed} op {op}");
            match rng.gen_range(0..100) {
                0..=39 => {
                    let len = rng.gen_range(1..=256 << 10);
                    let off = rng.gen_range(0..=SPAN - len);
                    let data = bytes(seed * 1000 + op as u64, len);
                    match obj.write(off as u64, &data).await {
                        Ok(()) => {
                            model[off..off + len].copy_from_slice(&data);
                            size = size.max((off + len) as u64);
                        }
                        // The only complete copy of a region is cut off:
                        // refused before anything was sent.
                        Err(VolumeError::NoGoodCopy { .. }) if down.iter().any(|d| *d) => {}
                        Err(e) => panic!("{ctx}: write: {e}"),
                    }
                }
                40..=57 => {
                    let zero = rng.gen_bool(0.5);
                    let len = rng.gen_range(1..=512 << 10);
                    let off = rng.gen_range(0..=SPAN - len);
                    let r = if zero {
                        obj.zero(off as u64, len as u64).await
                    } else {
                        obj.punch(off as u64, len as u64).await
                    };
                    match r {
                        Ok(()) => {
                            if zero {
                                size = size.max((off + len) as u64);
                            }
                            model[off..off + len].fill(0);
                        }
                        Err(VolumeError::NoGoodCopy { .. }) if down.iter().any(|d| *d) => {}
                        Err(e) => panic!("{ctx}: zero/punch: {e}"),
                    }
                }
                58..=61 => obj
                    .flush()
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: flush: {e}")),
                62..=75 => {
                    let k = rng.gen_range(0..3);
                    if down.iter().filter(|d| **d).count() == 0 {
                        cuts[k].cut();
                        down[k] = true;
                    }
                }
                76..=85 => {
                    let k = rng.gen_range(0..3);
                    cuts[k].restore();
                    down[k] = false;
                }
                86..=89 => {
                    let r = volume::heal::heal_with(&client, |_| {})
                        .await
                        .unwrap_or_else(|e| panic!("{ctx}: heal: {e}"));
                    assert!(r.split_brain.is_empty(), "{ctx}: {r:?}");
                    healed_bytes += r.bytes_copied;
                }
                90..=92 => {
                    // Below quorum: refused, and nothing changes.
                    if down.iter().all(|d| !d) {
                        cuts[0].cut();
                        cuts[1].cut();
                        let e = obj.write(0, b"never").await.expect_err("below quorum");
                        assert!(matches!(e, VolumeError::NoQuorum { .. }), "{ctx}: {e}");
                        cuts[0].restore();
                        cuts[1].restore();
                    }
                }
                _ => {
                    let len = rng.gen_range(1..=512 << 10);
                    let off = rng.gen_range(0..=SPAN - len);
                    match obj.read(off as u64, len as u64).await {
                        Ok(got) => assert!(
                            got == model[off..off + len],
                            "{ctx}: read {off}+{len} differs from the model"
                        ),
                        // Unavailable, never wrong: only while a brick is cut.
                        Err(VolumeError::NoGoodCopy { .. }) if down.iter().any(|d| *d) => {}
                        Err(e) => panic!("{ctx}: read: {e}"),
                    }
                }
            }
        }
        for c in &cuts {
            c.restore();
        }
        let r = volume::heal::heal_with(&client, |_| {})
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: heal: {e}"));
        assert!(
            r.split_brain.is_empty() && r.regions_skipped == 0,
            "seed {seed}: {r:?}"
        );
        healed_bytes += r.bytes_copied;
        let info = volume::heal::heal_info_with(&client).await.expect("info");
        assert!(
            info.bricks.iter().all(|b| b.pending_regions == 0),
            "seed {seed}: {info:?}"
        );
        let got = obj.read(0, SPAN as u64).await.expect("read all");
        assert!(got == model, "seed {seed}: volume differs from the model");
        assert_eq!(obj.size().await.expect("size"), size, "seed {seed}: size");
        for (k, c) in raw.iter().enumerate() {
            for chunk in 0..(SPAN as u64 / CHUNK) {
                let want = &model[(chunk * CHUNK) as usize..((chunk + 1) * CHUNK) as usize];
                assert!(
                    raw_chunk(c, fid, chunk).await == want,
                    "seed {seed}: brick {k} chunk {chunk} differs"
                );
            }
        }
    }
    println!("{seeds} seeds × {OPS} ops; heal copied {healed_bytes} bytes in all");
    for c in &raw {
        c.close().await;
    }
    client.close().await;
    for b in bricks {
        b.stop().await;
    }
}
