//! Takeover while one brick still holds the dead writer's lease: leases
//! expire brick by brick (each brick times the lease it granted), so a new
//! writer can get the lease from a quorum while a minority brick still
//! refuses it as busy. The new holder must be able to settle the dead
//! writer's active regions and write, treating that brick as one that
//! missed the changes (pending marks, healed later), not as a sign that it
//! was itself fenced.

mod common;

use std::time::Duration;

use common::*;
use transport::wire::{DataRef, LeaseOp, LeaseReq, MarksOp, MarksReq, WriteReq};
use transport::{Payload, Request, Response, TcpClient};
use volume::heal::{heal_info_with, heal_with};
use volume::{Client, Fid, VolumeKind};

const CHUNK: u64 = 1 << 20;
const DEAD_OWNER: u64 = 0xdead_0001;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_while_a_minority_brick_still_holds_the_old_lease() {
    let pool = Pool::new();
    let mut bricks = Vec::new();
    for i in 0..3 {
        let d = pool.init_brick(i);
        bricks.push(InBrick::start(&d, &pool.secret, "127.0.0.1:0").await);
    }
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let fid = Fid {
        volume: 31,
        vnode: 1,
        unique: 1,
    };
    let oid = fid.chunk(0);

    // The dead writer, by hand: its lease runs out soon on bricks 0 and 1
    // but not for a minute on brick 2; it marked region 0 active and left
    // a half-done write (brick 2 has other bytes than 0 and 1).
    let mut raws = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let raw = TcpClient::connect(a, pool.secret.clone(), client_opts())
            .await
            .expect("raw");
        let (r, _) = raw
            .call(
                Request::Lease(LeaseReq {
                    object: fid.chunk(0),
                    op: LeaseOp::Acquire,
                    duration_ms: if i == 2 { 60_000 } else { 200 },
                    owner: DEAD_OWNER,
                    epoch: 0,
                }),
                Payload::None,
            )
            .await
            .expect("lease");
        let Response::Lease(l) = r else {
            panic!("lease: {r:?}")
        };
        let (r, _) = raw
            .call(
                Request::Marks(MarksReq {
                    op: MarksOp::SetActive,
                    target: 0,
                    object: oid,
                    first: 0,
                    count: 1,
                    amount: l.epoch,
                }),
                Payload::None,
            )
            .await
            .expect("active");
        assert!(matches!(r, Response::Marks(_)), "{r:?}");
        let data: &[u8] = if i == 2 { b"OLD!" } else { b"HALF" };
        let (r, _) = raw
            .call(
                Request::Write(WriteReq {
                    object: oid,
                    offset: 0,
                    epoch: l.epoch,
                    flags: 0,
                    crc32c: 0,
                    data: DataRef::None,
                }),
                Payload::Out(iobuf::IoBuf::from_slice(data)),
            )
            .await
            .expect("write");
        assert!(matches!(r, Response::Write(_)), "{r:?}");
        raws.push((raw, l.epoch));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;

    let spec = spec(
        31,
        VolumeKind::Replicate { replica: 3 },
        addrs.clone(),
        CHUNK,
    );
    let client = Client::connect_spec(spec, pool.secret.clone(), client_opts())
        .await
        .expect("connect");
    // Bricks 0 and 1 grant it (unclean: settle), brick 2 says busy.
    let w = client
        .open_writer(fid, Duration::from_secs(30))
        .await
        .expect("takeover with a quorum while brick 2 still holds the old lease");
    assert_eq!(w.settled_regions(), 1);
    // The copies the new holder could reach agree; brick 2 is marked.
    for a in &addrs[..2] {
        assert_eq!(brick_chunk(a, &pool.secret, oid, 4).await.0, b"HALF");
    }
    w.write(0, b"NEW!")
        .await
        .expect("a write with a quorum of granted bricks is not fenced");
    assert_eq!(w.read(0, 4).await.expect("read"), b"NEW!");
    let info = heal_info_with(&client).await.expect("info");
    assert!(info.bricks[2].pending_regions > 0, "{info:?}");
    assert_eq!(info.bricks[0].pending_regions, 0, "{info:?}");
    assert_eq!(info.bricks[1].pending_regions, 0, "{info:?}");

    // Heal while brick 2 still holds the old lease: it cannot write there,
    // so it leaves that region for later instead of failing.
    w.close().await.expect("release");
    let r = heal_with(&client, |_| {})
        .await
        .expect("heal while brick 2 holds the old lease");
    assert!(r.regions_skipped > 0, "{r:?}");
    let info = heal_info_with(&client).await.expect("info");
    assert!(info.bricks[2].pending_regions > 0, "{info:?}");

    // The old lease goes away on brick 2; heal brings it up to date.
    let (raw2, e2) = &raws[2];
    let (r, _) = raw2
        .call(
            Request::Lease(LeaseReq {
                object: fid.chunk(0),
                op: LeaseOp::Release,
                duration_ms: 0,
                owner: DEAD_OWNER,
                epoch: *e2,
            }),
            Payload::None,
        )
        .await
        .expect("release");
    assert!(matches!(r, Response::Lease(_)), "{r:?}");
    let r = heal_with(&client, |_| {}).await.expect("heal");
    assert_eq!(r.regions_skipped, 0, "{r:?}");
    assert!(r.split_brain.is_empty(), "{r:?}");
    for a in &addrs {
        assert_eq!(brick_chunk(a, &pool.secret, oid, 4).await.0, b"NEW!");
    }
    for (raw, _) in raws {
        raw.close().await;
    }
    client.close().await;
    for b in bricks {
        b.stop().await;
    }
}
