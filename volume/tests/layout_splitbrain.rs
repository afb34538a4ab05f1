//! Distribute placement over sets, and split-brain reporting/resolution.

mod common;

use common::*;
use transport::wire::{DataRef, MarksOp, MarksReq, WriteReq};
use transport::{Payload, Request, Response, TcpClient};
use volume::heal::{heal_info_with, heal_with, resolve_split_brain_with, SplitBrainPolicy};
use volume::xlator::place;
use volume::{Client, Fid, VolumeError, VolumeKind};

const CHUNK: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_replicate_places_chunks_by_hash() {
    let pool = Pool::new();
    let mut bricks = Vec::new();
    for i in 0..4 {
        let d = pool.init_brick(i);
        bricks.push(InBrick::start(&d, &pool.secret, "127.0.0.1:0").await);
    }
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let spec = spec(
        21,
        VolumeKind::Replicate { replica: 2 },
        addrs.clone(),
        CHUNK,
    );
    let client = Client::connect_spec(spec, pool.secret.clone(), client_opts())
        .await
        .expect("connect");
    let fid = Fid {
        volume: 21,
        vnode: 3,
        unique: 4,
    };
    let obj = client.object(fid);
    let total = 10 << 20;
    let data = bytes(21, total);
    // Unaligned, chunk-spanning writes.
    let mut at = 0;
    for (k, len) in [300_001usize, 2 << 20, 1, 4_000_000]
        .iter()
        .cycle()
        .enumerate()
    {
        if at >= total {
            break;
        }
        let len = (*len).min(total - at);
        obj.write(at as u64, &data[at..at + len])
            .await
            .unwrap_or_else(|e| panic!("write {k}: {e}"));
        at += len;
    }
    assert_eq!(obj.size().await.expect("size"), total as u64);
    assert!(obj.read(0, total as u64).await.expect("read") == data);
    assert!(obj.read(123_456, 3 << 20).await.expect("read") == data[123_456..123_456 + (3 << 20)]);
    let mut per_set = [0; 2];
    for chunk in 0..(total as u64 / CHUNK) {
        let s = place(fid, chunk, 2);
        per_set[s] += 1;
        let want = &data[(chunk * CHUNK) as usize..((chunk + 1) * CHUNK) as usize];
        for (b, a) in addrs.iter().enumerate() {
            let (c, size) = brick_chunk(a, &pool.secret, fid.chunk(chunk), CHUNK).await;
            if b / 2 == s {
                assert!(c == want, "chunk {chunk} on brick {b}");
            } else {
                assert_eq!(size, None, "chunk {chunk} must not be on brick {b}");
            }
        }
    }
    assert!(per_set[0] > 0 && per_set[1] > 0, "{per_set:?}");
    // Punch across a chunk boundary.
    obj.punch(CHUNK - 10, 20).await.expect("punch");
    let got = obj.read(CHUNK - 10, 20).await.expect("read");
    assert_eq!(got, vec![0u8; 20]);
    client.close().await;
    for b in bricks {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_brain_is_reported_and_resolved_only_by_policy() {
    let pool = Pool::new();
    let mut bricks = Vec::new();
    for i in 0..2 {
        let d = pool.init_brick(i);
        bricks.push(InBrick::start(&d, &pool.secret, "127.0.0.1:0").await);
    }
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let mut spec = spec(
        22,
        VolumeKind::Replicate { replica: 2 },
        addrs.clone(),
        CHUNK,
    );
    spec.options.insert("quorum-type".into(), "none".into());
    let (links, cuts) = cut_links(&addrs, &pool.secret).await;
    let client = Client::with_links(spec, links).expect("client");
    let fid = Fid {
        volume: 22,
        vnode: 1,
        unique: 1,
    };
    let obj = client.object(fid);
    obj.write(0, b"common").await.expect("write");
    cuts[1].cut();
    obj.write(0, b"AAAAAA")
        .await
        .expect("write on brick 0 alone");
    cuts[1].restore();
    cuts[0].cut();
    // This client refuses to write where only a stale copy is up...
    let e = obj
        .write(0, b"BBBBBB")
        .await
        .expect_err("only a stale copy is up");
    assert!(matches!(e, VolumeError::NoGoodCopy { .. }), "{e}");
    // ...but another client partitioned with brick 1 alone (or an older
    // one) may have: its write and its mark against brick 0, by hand.
    let raw = TcpClient::connect(&addrs[1], pool.secret.clone(), client_opts())
        .await
        .expect("raw");
    let (r, _) = raw
        .call(
            Request::Write(WriteReq {
                object: fid.chunk(0),
                offset: 0,
                epoch: 0,
                flags: 0,
                crc32c: 0,
                data: DataRef::None,
            }),
            Payload::Out(iobuf::IoBuf::from_slice(b"BBBBBB")),
        )
        .await
        .expect("raw write");
    assert!(matches!(r, Response::Write(_)), "{r:?}");
    let (r, _) = raw
        .call(
            Request::Marks(MarksReq {
                op: MarksOp::AddPending,
                target: 0,
                object: fid.chunk(0),
                first: 0,
                count: 1,
                amount: 1,
            }),
            Payload::None,
        )
        .await
        .expect("raw mark");
    assert!(matches!(r, Response::Marks(_)), "{r:?}");
    raw.close().await;
    // Brick 1 is marked stale and brick 0 is down: no good copy.
    let e = obj.read(0, 6).await.expect_err("no good copy");
    assert!(matches!(e, VolumeError::NoGoodCopy { .. }), "{e}");
    cuts[0].restore();
    client.refresh_marks().await;

    let info = heal_info_with(&client).await.expect("info");
    assert_eq!(info.split_brain.len(), 1, "{info:?}");
    assert_eq!(info.split_brain[0].object, fid.chunk(0));
    // Heal does not choose a side.
    let r = heal_with(&client, |_| {}).await.expect("heal");
    assert_eq!(r.split_brain.len(), 1);
    assert_eq!(
        brick_chunk(&addrs[0], &pool.secret, fid.chunk(0), 6)
            .await
            .0,
        b"AAAAAA"
    );
    assert_eq!(
        brick_chunk(&addrs[1], &pool.secret, fid.chunk(0), 6)
            .await
            .0,
        b"BBBBBB"
    );

    let r = resolve_split_brain_with(&client, SplitBrainPolicy::SourceBrick(addrs[1].clone()))
        .await
        .expect("resolve");
    assert!(r.regions_healed >= 1, "{r:?}");
    for a in &addrs {
        assert_eq!(
            brick_chunk(a, &pool.secret, fid.chunk(0), 6).await.0,
            b"BBBBBB"
        );
    }
    let info = heal_info_with(&client).await.expect("info");
    assert!(info.split_brain.is_empty(), "{info:?}");
    assert!(
        info.bricks.iter().all(|b| b.pending_regions == 0),
        "{info:?}"
    );
    assert_eq!(obj.read(0, 6).await.expect("read"), b"BBBBBB");
    client.close().await;
    for b in bricks {
        b.stop().await;
    }
}
