//! A writer handle shared by several users (the FUSE client's writer of a
//! file open more than once) must give its lease back when the last user is
//! done, whoever drops the last clone and on whatever thread. A lease left
//! to expire is an unclean end: the next holder settles every region the
//! file has, as after a crash (the FUSE benchmark saw that as a write that
//! stalled for seconds after the previous fio run closed the file).
//!
//! The other writer (a second client, another owner) waits for the lease
//! and then checks how it got it: settled nothing (released) or settled
//! the regions left active (expired). No timing is asserted: a lease that
//! is never released is taken over once it expires, and then the check
//! fails.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use volume::{Client, Fid, Object, VolumeError, VolumeKind};

const CHUNK: u64 = 1 << 20;

fn fid(n: u32) -> Fid {
    Fid {
        volume: 12,
        vnode: n,
        unique: n,
    }
}

/// Opens `fid` for writing from `client`, waiting while another holds it.
async fn take(client: &Client, fid: Fid, lease: Duration) -> Object {
    let mut tries = 0;
    loop {
        match client.open_writer(fid, lease).await {
            Ok(o) => return o,
            Err(VolumeError::LeaseBusy { .. }) => {
                tries += 1;
                assert!(tries < 600, "the lease was never released nor expired");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("open_writer: {e}"),
        }
    }
}

async fn write_some(o: &Object) {
    for i in 0..3u64 {
        o.write(i * CHUNK, &bytes(i, 64 << 10))
            .await
            .expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_writer_releases_its_lease_whoever_drops_it_last() {
    let pool = Pool::new();
    let mut bricks = Vec::new();
    for i in 0..3 {
        let d = pool.init_brick(i);
        bricks.push(InBrick::start(&d, &pool.secret, "127.0.0.1:0").await);
    }
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let spec = spec(
        12,
        VolumeKind::Replicate { replica: 3 },
        addrs.clone(),
        CHUNK,
    );
    let a = Client::connect_spec(spec.clone(), pool.secret.clone(), client_opts())
        .await
        .expect("connect a");
    let b = Client::connect_spec(spec, pool.secret.clone(), client_opts())
        .await
        .expect("connect b");

    // Control: a lease abandoned (not released) after writes leaves its
    // regions active; the next holder settles them.
    let w = take(&a, fid(1), Duration::from_millis(600)).await;
    write_some(&w).await;
    w.abandon();
    let next = take(&b, fid(1), Duration::from_secs(10)).await;
    assert!(next.settled_regions() > 0, "the control settled nothing");
    next.close().await.expect("close");

    // Released through one user of a shared handle while another still
    // holds a clone (a FUSE handler between its reply and its return).
    let w = Arc::new(take(&a, fid(2), Duration::from_secs(10)).await);
    write_some(&w).await;
    let straggler = w.clone();
    w.release().await.expect("release");
    assert!(!straggler.leased());
    let next = take(&b, fid(2), Duration::from_secs(10)).await;
    assert_eq!(next.settled_regions(), 0, "a released lease was settled");
    next.close().await.expect("close");
    drop(straggler);
    drop(w);

    // The last clone dropped on a thread outside any runtime (a FUSE
    // worker): the lease is still released, on the runtime it was taken on.
    let w = take(&a, fid(3), Duration::from_secs(10)).await;
    write_some(&w).await;
    std::thread::spawn(move || drop(w))
        .join()
        .expect("drop thread");
    let next = take(&b, fid(3), Duration::from_secs(10)).await;
    assert_eq!(
        next.settled_regions(),
        0,
        "a handle dropped off the runtime left its lease to expire"
    );
    next.close().await.expect("close");

    for br in bricks {
        br.stop().await;
    }
}
