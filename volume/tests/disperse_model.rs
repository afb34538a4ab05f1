//! Model-based test of a disperse 2+1 set: random writes (unaligned to
//! stripes, so read-modify-write), zeroes, punches, reads, flushes, brick
//! cuts and restores, and heals, checked against a plain byte array. After
//! each sequence every brick is back and healed, the volume equals the
//! model, and each brick's fragments re-encode consistently (the parity
//! brick holds exactly the parity of the two data bricks).
//!
//! `STRETTO_DISPERSE_SEEDS` sets the number of seeds (default 40).

mod common;

use rand::{Rng, SeedableRng};

use common::*;
use transport::wire::{DataRef, ReadReq};
use transport::{Payload, Request, Response, TcpClient};
use volume::disperse::FRAGMENT_UNIT;
use volume::ec::Codec;
use volume::{Client, Fid, VolumeError, VolumeKind};

const CHUNK: u64 = 1 << 20;
const SPAN: usize = 3 << 20;
const OPS: usize = 20;
const K: usize = 2;

/// Brick `c`'s fragment object of chunk `chunk`, `len` bytes (zeros past
/// its end).
async fn raw_fragment(c: &TcpClient, fid: Fid, chunk: u64, len: usize) -> Vec<u8> {
    let (r, p) = c
        .call(
            Request::Read(ReadReq {
                object: fid.chunk(chunk),
                offset: 0,
                len: len as u32,
                data: DataRef::None,
            }),
            Payload::In(iobuf::IoBuf::alloc(len)),
        )
        .await
        .expect("read");
    let mut out = vec![0u8; len];
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

fn unavailable(e: &VolumeError) -> bool {
    matches!(
        e,
        VolumeError::NoGoodCopy { .. } | VolumeError::NoQuorum { .. }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disperse_2_1_random_ops_match_the_model() {
    let seeds: u64 = std::env::var("STRETTO_DISPERSE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let pool = Pool::new();
    let mut bricks = Vec::new();
    for i in 0..3 {
        let d = pool.init_brick(i);
        bricks.push(InBrick::start(&d, &pool.secret, "127.0.0.1:0").await);
    }
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let (links, cuts) = cut_links(&addrs, &pool.secret).await;
    let mut sp = spec(
        21,
        VolumeKind::Disperse {
            data: 2,
            redundancy: 1,
        },
        addrs.clone(),
        CHUNK,
    );
    // Writes go on with one brick of three down (quorum K).
    sp.options.insert("quorum-type".into(), "none".into());
    let client = Client::with_links(sp, links).expect("client");
    let mut raw = Vec::new();
    for a in &addrs {
        raw.push(
            TcpClient::connect(a, pool.secret.clone(), client_opts())
                .await
                .expect("raw"),
        );
    }
    let codec = Codec::new(2, 1).expect("codec");
    let mut healed_bytes = 0u64;
    for seed in 0..seeds {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let fid = Fid {
            volume: 21,
            vnode: seed as u32 + 1,
            unique: 5,
        };
        // Half the seeds write under a lease (staged writes), half without.
        let obj = if seed % 2 == 0 {
            client
                .open_writer(fid, std::time::Duration::from_secs(30))
                .await
                .expect("lease")
        } else {
            client.object(fid)
        };
        let mut model = vec![0u8; SPAN];
        let mut size = 0u64;
        let mut down = [false; 3];
        for op in 0..OPS {
            let ctx = format!("seed {seed} op {op}");
            match rng.gen_range(0..100) {
                0..=39 => {
                    let len = rng.gen_range(1..=200 << 10);
                    let off = rng.gen_range(0..=SPAN - len);
                    let data = bytes(seed * 1000 + op as u64, len);
                    match obj.write(off as u64, &data).await {
                        Ok(()) => {
                            model[off..off + len].copy_from_slice(&data);
                            size = size.max((off + len) as u64);
                        }
                        Err(e) if unavailable(&e) && down.iter().any(|d| *d) => {}
                        Err(e) => panic!("{ctx}: write: {e}"),
                    }
                }
                40..=54 => {
                    let zero = rng.gen_bool(0.5);
                    let len = rng.gen_range(1..=300 << 10);
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
                        Err(e) if unavailable(&e) && down.iter().any(|d| *d) => {}
                        Err(e) => panic!("{ctx}: zero/punch: {e}"),
                    }
                }
                55..=58 => obj
                    .flush()
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: flush: {e}")),
                59..=72 => {
                    let k = rng.gen_range(0..3);
                    if down.iter().all(|d| !d) {
                        cuts[k].cut();
                        down[k] = true;
                    }
                }
                73..=82 => {
                    let k = rng.gen_range(0..3);
                    cuts[k].restore();
                    down[k] = false;
                }
                83..=86 => {
                    let r = volume::heal::heal_with(&client, |_| {})
                        .await
                        .unwrap_or_else(|e| panic!("{ctx}: heal: {e}"));
                    assert!(r.split_brain.is_empty(), "{ctx}: {r:?}");
                    healed_bytes += r.bytes_copied;
                }
                _ => {
                    let len = rng.gen_range(1..=400 << 10);
                    let off = rng.gen_range(0..=SPAN - len);
                    match obj.read(off as u64, len as u64).await {
                        Ok(got) => assert!(
                            got == model[off..off + len],
                            "{ctx}: read {off}+{len} differs from the model"
                        ),
                        // Unavailable, never wrong: only while a brick is cut.
                        Err(e) if unavailable(&e) && down.iter().any(|d| *d) => {}
                        Err(e) => panic!("{ctx}: read: {e}"),
                    }
                }
            }
        }
        for c in &cuts {
            c.restore();
        }
        obj.close().await.expect("close");
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
        client.refresh_marks().await;
        let obj = client.object(fid);
        let got = obj.read(0, SPAN as u64).await.expect("read all");
        assert!(got == model, "seed {seed}: volume differs from the model");
        assert_eq!(obj.size().await.expect("size"), size, "seed {seed}: size");
        // Every brick's fragments: data bricks hold the data as is, the
        // parity brick its parity.
        let u = FRAGMENT_UNIT as usize;
        let flen = (CHUNK as usize).div_ceil(K * u) * u;
        for chunk in 0..(SPAN as u64 / CHUNK) {
            let mut f = Vec::new();
            for c in &raw {
                f.push(raw_fragment(c, fid, chunk, flen).await);
            }
            let want = &model[(chunk * CHUNK) as usize..((chunk + 1) * CHUNK) as usize];
            for s in 0..flen / u {
                for (j, frag) in f.iter().take(K).enumerate() {
                    let at = (s * K + j) * u;
                    assert!(
                        frag[s * u..(s + 1) * u] == want[at..at + u],
                        "seed {seed}: chunk {chunk} stripe {s} fragment {j} differs"
                    );
                }
            }
            let parity = codec.encode(&[&f[0][..], &f[1][..]]).expect("encode");
            assert!(
                parity[0] == f[2],
                "seed {seed}: chunk {chunk}: parity brick does not re-encode"
            );
        }
    }
    println!("{seeds} seeds × {OPS} ops; heal rebuilt {healed_bytes} bytes in all");
    for c in &raw {
        c.close().await;
    }
    client.close().await;
    for b in bricks {
        b.stop().await;
    }
}
