//! Disperse 4+2 with real brick processes: SIGKILL two bricks (one data,
//! one parity) during a stream of writes; everything reads back (decoded
//! around the dead bricks) and the writes go on; restart both on the same
//! ports, heal rebuilds their fragments by decoding; then every brick's
//! fragments, read straight from the bricks, hold the data (bricks 0..4)
//! and re-encode to the parity (bricks 4, 5).

mod common;

use std::time::Duration;

use common::*;
use volume::disperse::FRAGMENT_UNIT;
use volume::ec::Codec;
use volume::heal::{heal_info_with, heal_with};
use volume::{Client, Fid, VolumeKind};

const CHUNK: u64 = 4 << 20;
const TOTAL: usize = 16 << 20;
const WRITE: usize = 1 << 20;
const K: usize = 4;
const M: usize = 2;

#[test]
fn child_brick() {
    child_brick_main();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disperse_4_2_two_bricks_killed_then_healed() {
    let pool = Pool::new();
    let dirs: Vec<_> = (0..K + M).map(|i| pool.init_brick(i)).collect();
    let mut bricks: Vec<ChildBrick> = dirs
        .iter()
        .map(|d| ChildBrick::start("child_brick", d, "127.0.0.1:0"))
        .collect();
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let mut sp = spec(
        31,
        VolumeKind::Disperse {
            data: K as u32,
            redundancy: M as u32,
        },
        addrs.clone(),
        CHUNK,
    );
    // Writes go on with M bricks down: quorum K (the default is K + 1).
    sp.options.insert("quorum-type".into(), "fixed".into());
    sp.options.insert("quorum-count".into(), K.to_string());
    let mut opts = client_opts();
    opts.request_timeout = Duration::from_secs(5);
    let client = Client::connect_spec(sp, pool.secret.clone(), opts)
        .await
        .expect("connect");
    let fid = Fid {
        volume: 31,
        vnode: 1,
        unique: 1,
    };
    let mut data = bytes(4242, TOTAL);
    let obj = client
        .open_writer(fid, Duration::from_secs(5))
        .await
        .expect("lease");
    for i in 0..TOTAL / WRITE {
        if i == 5 {
            bricks[1].kill9();
        }
        if i == 9 {
            bricks[5].kill9();
        }
        obj.write((i * WRITE) as u64, &data[i * WRITE..(i + 1) * WRITE])
            .await
            .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
    }
    // Everything reads back with two bricks dead (brick 1's data decoded).
    let got = obj.read(0, TOTAL as u64).await.expect("degraded read");
    assert!(got == data, "degraded read differs");
    // Unaligned writes (read-modify-write of partial stripes) go on too.
    for (n, (off, len)) in [
        (12_345usize, 70_000usize),
        (5 << 20, 3),
        (TOTAL - 9_000, 9_000),
    ]
    .into_iter()
    .enumerate()
    {
        let b = bytes(777 + n as u64, len);
        obj.write(off as u64, &b).await.expect("degraded rmw write");
        data[off..off + len].copy_from_slice(&b);
    }
    let got = obj.read(0, TOTAL as u64).await.expect("degraded read");
    assert!(got == data, "degraded read after rmw differs");
    obj.flush().await.expect("flush");
    // Leased writes went through the stage objects first.
    let stage0 = fid.chunk(volume::disperse::STAGE_BIT);
    let (s, _) = brick_chunk(&addrs[0], &pool.secret, stage0, CHUNK / K as u64).await;
    assert!(s.iter().any(|b| *b != 0), "nothing staged");
    obj.close().await.expect("release");
    // A clean release gives the staged fragments' space back.
    for chunk in 0..(TOTAL as u64 / CHUNK) {
        let stage = fid.chunk(chunk | volume::disperse::STAGE_BIT);
        let (s, _) = brick_chunk(&addrs[0], &pool.secret, stage, CHUNK / K as u64).await;
        assert!(
            s.iter().all(|b| *b == 0),
            "chunk {chunk}: stage kept after release"
        );
    }

    let info = heal_info_with(&client).await.expect("info");
    println!(
        "pending before restart: brick 1 {} bytes, brick 5 {} bytes",
        info.bricks[1].pending_bytes, info.bricks[5].pending_bytes
    );
    assert!(info.bricks[1].pending_regions > 0 && info.bricks[5].pending_regions > 0);

    for i in [1, 5] {
        bricks[i] = ChildBrick::start("child_brick", &dirs[i], &addrs[i]);
        let link = client.links()[i].clone();
        wait_until("brick to rejoin", || link.is_up()).await;
    }
    let report = heal_with(&client, |_| {}).await.expect("heal");
    println!(
        "heal rebuilt {} regions, {} bytes",
        report.regions_healed, report.bytes_copied
    );
    assert!(report.split_brain.is_empty() && report.regions_skipped == 0);
    assert!(report.regions_healed > 0);
    let after = heal_info_with(&client).await.expect("info");
    assert!(
        after.bricks.iter().all(|b| b.pending_regions == 0),
        "{after:?}"
    );

    // Every fragment, straight from its brick.
    let codec = Codec::new(K, M).expect("codec");
    let u = FRAGMENT_UNIT as usize;
    let flen = CHUNK as usize / K;
    for chunk in 0..(TOTAL as u64 / CHUNK) {
        let mut f = Vec::new();
        for a in &addrs {
            f.push(
                brick_chunk(a, &pool.secret, fid.chunk(chunk), flen as u64)
                    .await
                    .0,
            );
        }
        let want = &data[(chunk * CHUNK) as usize..((chunk + 1) * CHUNK) as usize];
        for s in 0..flen / u {
            for (j, frag) in f.iter().take(K).enumerate() {
                let at = (s * K + j) * u;
                assert!(
                    frag[s * u..(s + 1) * u] == want[at..at + u],
                    "chunk {chunk} stripe {s}: data fragment {j} differs"
                );
            }
        }
        let refs: Vec<&[u8]> = f.iter().take(K).map(|v| v.as_slice()).collect();
        let parity = codec.encode(&refs).expect("encode");
        for (p, got) in parity.iter().zip(&f[K..]) {
            assert!(
                p == got,
                "chunk {chunk}: a parity fragment does not re-encode"
            );
        }
    }
    // Reads through the volume use the healed bricks again.
    client.refresh_marks().await;
    let got = client
        .object(fid)
        .read(0, TOTAL as u64)
        .await
        .expect("read");
    assert!(got == data);
    client.close().await;
}
