//! Quorum and leases against in-process bricks on loopback.

mod common;

use std::time::Duration;

use common::*;
use transport::wire::{DataRef, LeaseOp, LeaseReq, WriteReq};
use transport::{ErrorCode, Payload, Request, Response, TcpClient};
use volume::{Client, Fid, VolumeError, VolumeKind};

const CHUNK: u64 = 1 << 20;

async fn three(pool: &Pool) -> Vec<InBrick> {
    let mut v = Vec::new();
    for i in 0..3 {
        let d = pool.init_brick(i);
        v.push(InBrick::start(&d, &pool.secret, "127.0.0.1:0").await);
    }
    v
}

/// Three in-process bricks, links to them that a test can cut, and a
/// replica-3 client over those links.
async fn replica3(pool: &Pool) -> (Vec<InBrick>, Vec<std::sync::Arc<Cut>>, Client) {
    let bricks = three(pool).await;
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let (links, cuts) = cut_links(&addrs, &pool.secret).await;
    let client = Client::with_links(
        spec(3, VolumeKind::Replicate { replica: 3 }, addrs, CHUNK),
        links,
    )
    .expect("client");
    (bricks, cuts, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_down_writes_fail_clearly_reads_go_on() {
    let pool = Pool::new();
    let (bricks, cuts, client) = replica3(&pool).await;
    let fid = Fid {
        volume: 3,
        vnode: 9,
        unique: 1,
    };
    let obj = client.object(fid);
    let old = bytes(1, 3 << 20);
    obj.write(0, &old).await.expect("write with all up");

    // One down: still a majority.
    cuts[1].cut();
    obj.write(0, &bytes(2, 4096))
        .await
        .expect("write with 2 of 3");
    let mut model = old.clone();
    model[..4096].copy_from_slice(&bytes(2, 4096));

    cuts[2].cut();
    let e = obj
        .write(8192, &bytes(3, 4096))
        .await
        .expect_err("write below quorum");
    assert!(
        matches!(e, VolumeError::NoQuorum { need: 2, up: 1, .. }),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "volume vol3: write needs 2 of 3 bricks, 1 up"
    );
    let e = obj.punch(0, 4096).await.expect_err("punch below quorum");
    assert!(matches!(e, VolumeError::NoQuorum { .. }), "{e}");
    let e = client
        .open_writer(fid, Duration::from_secs(2))
        .await
        .expect_err("lease below quorum");
    assert!(matches!(e, VolumeError::NoQuorum { .. }), "{e}");
    // Reads go on, and nothing of the refused changes shows.
    assert!(obj.read(0, 3 << 20).await.expect("read") == model);

    // Back up: the refused write never reached any brick.
    cuts[1].restore();
    cuts[2].restore();
    let direct = brick_chunk(
        &bricks[0].addr.to_string(),
        &pool.secret,
        fid.chunk(0),
        CHUNK,
    )
    .await
    .0;
    assert!(direct == model[..CHUNK as usize]);
    // Brick 1 missed the 2-of-3 write: reads avoid it until healed.
    for _ in 0..6 {
        assert!(obj.read(0, 8192).await.expect("read") == model[..8192]);
    }
    let r = volume::heal::heal_with(&client, |_| {})
        .await
        .expect("heal");
    assert_eq!(r.regions_healed, 1);
    for a in client.links() {
        let c = brick_chunk(a.addr(), &pool.secret, fid.chunk(0), CHUNK)
            .await
            .0;
        assert!(c == model[..CHUNK as usize]);
    }
    for b in bricks {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_2_auto_quorum_needs_the_first_brick() {
    let pool = Pool::new();
    let mut bricks = Vec::new();
    for i in 0..2 {
        let d = pool.init_brick(i);
        bricks.push(InBrick::start(&d, &pool.secret, "127.0.0.1:0").await);
    }
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let (links, cuts) = cut_links(&addrs, &pool.secret).await;
    let client = Client::with_links(
        spec(4, VolumeKind::Replicate { replica: 2 }, addrs, CHUNK),
        links,
    )
    .expect("client");
    let obj = client.object(Fid {
        volume: 4,
        vnode: 1,
        unique: 1,
    });
    cuts[1].cut();
    obj.write(0, b"first is up")
        .await
        .expect("first brick up is quorum");
    cuts[1].restore();
    cuts[0].cut();
    let e = obj.write(0, b"first is down").await.expect_err("no quorum");
    assert_eq!(
        e.to_string(),
        "volume vol4: write needs 1 of 2 bricks, 1 up"
    );
    // The second brick missed the write and the marks saying so are on the
    // first: the read refuses rather than return stale data.
    let e = obj.read(0, 11).await.expect_err("only a stale copy is up");
    assert!(matches!(e, VolumeError::NoGoodCopy { .. }), "{e}");
    cuts[0].restore();
    assert_eq!(obj.read(0, 11).await.expect("read"), b"first is up");
    for b in bricks {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_fencing_two_clients() {
    let pool = Pool::new();
    let bricks = three(&pool).await;
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let spec = spec(
        5,
        VolumeKind::Replicate { replica: 3 },
        addrs.clone(),
        CHUNK,
    );
    let a = Client::connect_spec(spec.clone(), pool.secret.clone(), client_opts())
        .await
        .expect("a");
    let b = Client::connect_spec(spec.clone(), pool.secret.clone(), client_opts())
        .await
        .expect("b");
    let fid = Fid {
        volume: 5,
        vnode: 1,
        unique: 2,
    };

    let wa = a
        .open_writer(fid, Duration::from_millis(900))
        .await
        .expect("a takes the lease");
    wa.write(0, b"from a").await.expect("a writes");
    // B cannot take it, nor write without it, while A holds it (A renews
    // in the background, well past the lease time).
    let e = b
        .open_writer(fid, Duration::from_millis(900))
        .await
        .expect_err("busy");
    assert!(matches!(e, VolumeError::LeaseBusy { .. }), "{e}");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let e = b
        .open_writer(fid, Duration::from_millis(900))
        .await
        .expect_err("still busy");
    assert!(matches!(e, VolumeError::LeaseBusy { .. }), "{e}");
    let e = b
        .object(fid)
        .write(0, b"sneaky")
        .await
        .expect_err("unleased write");
    assert!(matches!(e, VolumeError::Fenced { .. }), "{e}");

    // A releases: B takes it at once, cleanly.
    wa.close().await.expect("release");
    let wb = b
        .open_writer(fid, Duration::from_millis(900))
        .await
        .expect("b after release");
    wb.write(0, b"from b").await.expect("b writes");

    // B dies without releasing: A waits for the expiry, then takes over.
    wb.abandon();
    let mut tries = 0;
    let wa2 = loop {
        match a.open_writer(fid, Duration::from_millis(900)).await {
            Ok(o) => break o,
            Err(VolumeError::LeaseBusy { .. }) => {
                tries += 1;
                assert!(tries < 200, "lease never expired");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(wa2.read(0, 6).await.expect("read"), b"from b");
    wa2.write(0, b"from A").await.expect("a writes again");
    wa2.close().await.expect("release");
    a.close().await;
    b.close().await;
    for b in bricks {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brick_refuses_a_stale_epoch() {
    let pool = Pool::new();
    let d = pool.init_brick(0);
    let brick = InBrick::start(&d, &pool.secret, "127.0.0.1:0").await;
    let c = TcpClient::connect(&brick.addr.to_string(), pool.secret.clone(), client_opts())
        .await
        .expect("connect");
    let fid = Fid {
        volume: 1,
        vnode: 1,
        unique: 1,
    };
    let lease = |op, owner, epoch| {
        Request::Lease(LeaseReq {
            object: fid.chunk(0),
            op,
            duration_ms: 60_000,
            owner,
            epoch,
        })
    };
    let epoch_of = |r: Response| match r {
        Response::Lease(l) => l,
        other => panic!("{other:?}"),
    };
    let l1 = epoch_of(
        c.call(lease(LeaseOp::Acquire, 11, 0), Payload::None)
            .await
            .expect("call")
            .0,
    );
    assert_eq!(l1.flags, 0);
    // A second owner is refused while the first holds it.
    let (r, _) = c
        .call(lease(LeaseOp::Acquire, 22, 0), Payload::None)
        .await
        .expect("call");
    assert!(
        matches!(r, Response::Error(ref e) if e.code == ErrorCode::Busy),
        "{r:?}"
    );
    c.call(lease(LeaseOp::Release, 11, l1.epoch), Payload::None)
        .await
        .expect("release");
    let l2 = epoch_of(
        c.call(lease(LeaseOp::Acquire, 22, 0), Payload::None)
            .await
            .expect("call")
            .0,
    );
    assert!(l2.epoch > l1.epoch);
    let write = |epoch| {
        Request::Write(WriteReq {
            object: fid.chunk(0),
            offset: 0,
            epoch,
            flags: 0,
            crc32c: 0,
            data: DataRef::None,
        })
    };
    let out = || Payload::Out(iobuf::IoBuf::from_slice(b"data"));
    let (r, _) = c.call(write(l1.epoch), out()).await.expect("call");
    assert!(
        matches!(r, Response::Error(ref e) if e.code == ErrorCode::StaleEpoch),
        "{r:?}"
    );
    let (r, _) = c.call(write(0), out()).await.expect("call");
    assert!(
        matches!(r, Response::Error(ref e) if e.code == ErrorCode::StaleEpoch),
        "{r:?}"
    );
    let (r, _) = c.call(write(l2.epoch), out()).await.expect("call");
    assert!(matches!(r, Response::Write(_)), "{r:?}");
    // The epoch survives a restart, and the unreleased lease is reported
    // unclean to the next holder.
    c.close().await;
    let addr = brick.addr.to_string();
    brick.stop().await;
    let brick = InBrick::start(&d, &pool.secret, &addr).await;
    let c = TcpClient::connect(&addr, pool.secret.clone(), client_opts())
        .await
        .expect("connect");
    let l3 = epoch_of(
        c.call(lease(LeaseOp::Acquire, 33, 0), Payload::None)
            .await
            .expect("call")
            .0,
    );
    assert_eq!(l3.epoch, l2.epoch + 1);
    assert_eq!(l3.flags, transport::wire::LEASE_UNCLEAN);
    let (r, _) = c.call(write(l2.epoch), out()).await.expect("call");
    assert!(
        matches!(r, Response::Error(ref e) if e.code == ErrorCode::StaleEpoch),
        "{r:?}"
    );
    c.close().await;
    brick.stop().await;
}

/// A brick that was down when the lease was taken comes back: many changes
/// at once find it outside the lease. It must be asked to join once: each
/// grant raises its epoch, so a change sent with an earlier grant's epoch
/// would be fenced by a later one (seen as EIO on a FUSE mount right after
/// a brick restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_brick_joins_the_lease_once_under_concurrent_writes() {
    let pool = Pool::new();
    let (bricks, cuts, client) = replica3(&pool).await;
    let fid = Fid {
        volume: 3,
        vnode: 12,
        unique: 1,
    };
    cuts[2].cut();
    let w = client
        .open_writer(fid, Duration::from_secs(30))
        .await
        .expect("lease with 2 of 3");
    cuts[2].restore();
    // Sixteen writes, each in a region of its own, all at once.
    let w = std::sync::Arc::new(w);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16u64 {
        let w = w.clone();
        set.spawn(async move { (i, w.write(i * CHUNK, &bytes(i, 4096)).await) });
    }
    while let Some(r) = set.join_next().await {
        let (i, r) = r.expect("task");
        r.unwrap_or_else(|e| panic!("write {i} after the brick came back: {e}"));
    }
    // The returning brick took every one of them under the lease.
    for i in [0u64, 15] {
        let (got, _) = brick_chunk(
            &bricks[2].addr.to_string(),
            &pool.secret,
            fid.chunk(i),
            4096,
        )
        .await;
        assert_eq!(got, bytes(i, 4096), "chunk {i} on the returning brick");
    }
    w.release().await.expect("release");
}
