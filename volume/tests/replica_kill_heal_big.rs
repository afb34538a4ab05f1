//! Replica 3, 256 MiB written while one brick process is SIGKILLed half
//! way: no write fails; the brick comes back on the same port; heal copies
//! about what was written while it was down (bounded above and below), and
//! afterwards the three copies of every chunk are byte-identical and hold
//! the data.

mod common;

use std::time::Duration;

use common::*;
use volume::heal::heal_with;
use volume::{Client, Fid, VolumeKind};

const CHUNK: u64 = 4 << 20;
const TOTAL: usize = 256 << 20;
const WRITE: usize = 1 << 20;
const KILL_AT: usize = TOTAL / WRITE / 2;

#[test]
fn child_brick() {
    child_brick_main();
}

/// Write `i`'s bytes: cheap to make (256 MiB in a debug build), different
/// in every 8-byte word of the object.
fn block(i: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(WRITE);
    for k in 0..(WRITE / 8) as u64 {
        let w = ((i as u64) << 32 | k).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_256_mib_then_heal_copies_about_what_was_missed() {
    let pool = Pool::new();
    let dirs: Vec<_> = (0..3).map(|i| pool.init_brick(i)).collect();
    let mut bricks: Vec<ChildBrick> = dirs
        .iter()
        .map(|d| ChildBrick::start("child_brick", d, "127.0.0.1:0"))
        .collect();
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let spec = spec(
        17,
        VolumeKind::Replicate { replica: 3 },
        addrs.clone(),
        CHUNK,
    );
    let client = Client::connect_spec(spec, pool.secret.clone(), client_opts())
        .await
        .expect("connect");
    let fid = Fid {
        volume: 17,
        vnode: 1,
        unique: 1,
    };
    let obj = client
        .open_writer(fid, Duration::from_secs(5))
        .await
        .expect("lease");
    for i in 0..TOTAL / WRITE {
        if i == KILL_AT {
            bricks[2].kill9();
        }
        obj.write((i * WRITE) as u64, &block(i))
            .await
            .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
    }
    obj.flush().await.expect("flush");
    obj.close().await.expect("release");

    bricks[2] = ChildBrick::start("child_brick", &dirs[2], &addrs[2]);
    let link = client.links()[2].clone();
    wait_until("brick 2 to rejoin", || link.is_up()).await;
    let report = heal_with(&client, |_| {}).await.expect("heal");
    let missed = (TOTAL - KILL_AT * WRITE) as u64;
    println!(
        "256 MiB: brick 2 killed after {} MiB; heal healed {} regions, copied {} bytes ({} MiB) for {missed} bytes ({} MiB) written while it was down",
        (KILL_AT * WRITE) >> 20,
        report.regions_healed,
        report.bytes_copied,
        report.bytes_copied >> 20,
        missed >> 20
    );
    assert!(report.split_brain.is_empty());
    assert_eq!(report.regions_skipped, 0);
    // What it missed (the write in flight at the kill may have reached it),
    // plus at most two regions (that write's, and the size record's).
    assert!(report.bytes_copied >= missed - WRITE as u64);
    assert!(
        report.bytes_copied <= missed + 2 * WRITE as u64,
        "copied {}",
        report.bytes_copied
    );
    let after = volume::heal::heal_info_with(&client).await.expect("info");
    assert!(
        after.bricks.iter().all(|b| b.pending_regions == 0),
        "{after:?}"
    );

    // Every chunk, read straight from each brick: identical, and the data.
    let per_chunk = CHUNK as usize / WRITE;
    for chunk in 0..(TOTAL as u64 / CHUNK) {
        let mut want = Vec::with_capacity(CHUNK as usize);
        for w in 0..per_chunk {
            want.extend(block(chunk as usize * per_chunk + w));
        }
        for (k, a) in addrs.iter().enumerate() {
            let (c, size) = brick_chunk(a, &pool.secret, fid.chunk(chunk), CHUNK).await;
            assert_eq!(size, Some(CHUNK), "brick {k} chunk {chunk} size");
            assert!(c == want, "brick {k} chunk {chunk} differs");
        }
    }
    client.close().await;
}
