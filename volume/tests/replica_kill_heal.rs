//! Replica 3 with real brick processes: SIGKILL one brick in the middle of
//! a 32 MiB write, bring it back on the same port, heal, and check that the
//! three copies are byte-identical and heal copied only what was missed.

mod common;

use std::time::Duration;

use common::*;
use volume::heal::heal_with;
use volume::{Client, Fid, VolumeError, VolumeKind};

const CHUNK: u64 = 4 << 20;
const TOTAL: usize = 32 << 20;
const WRITE: usize = 1 << 20;
const KILL_AT: usize = 12;

#[test]
fn child_brick() {
    child_brick_main();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_write_then_heal_copies_only_what_was_missed() {
    let pool = Pool::new();
    let dirs: Vec<_> = (0..3).map(|i| pool.init_brick(i)).collect();
    let mut bricks: Vec<ChildBrick> = dirs
        .iter()
        .map(|d| ChildBrick::start("child_brick", d, "127.0.0.1:0"))
        .collect();
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let spec = spec(
        7,
        VolumeKind::Replicate { replica: 3 },
        addrs.clone(),
        CHUNK,
    );
    let client = Client::connect_spec(spec.clone(), pool.secret.clone(), client_opts())
        .await
        .expect("connect");
    let fid = Fid {
        volume: 7,
        vnode: 1,
        unique: 1,
    };
    let data = bytes(42, TOTAL);
    let obj = client
        .open_writer(fid, Duration::from_secs(5))
        .await
        .expect("lease");
    for i in 0..TOTAL / WRITE {
        if i == KILL_AT {
            bricks[2].kill9();
        }
        obj.write((i * WRITE) as u64, &data[i * WRITE..(i + 1) * WRITE])
            .await
            .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
    }
    obj.flush().await.expect("flush");
    obj.close().await.expect("release");
    assert_eq!(client.object(fid).size().await.expect("size"), TOTAL as u64);

    let info = volume::heal::heal_info_with(&client).await.expect("info");
    let pending = info.bricks[2].pending_bytes;
    println!("heal info before restart: brick 2 has {pending} bytes pending");
    assert!(pending >= ((TOTAL / WRITE - KILL_AT) * WRITE) as u64);
    assert!(info.split_brain.is_empty());

    // Back on the same port, same directory.
    bricks[2] = ChildBrick::start("child_brick", &dirs[2], &addrs[2]);
    let link = client.links()[2].clone();
    wait_until("brick 2 to rejoin", || link.is_up()).await;

    let mut progress = 0u64;
    let report = heal_with(&client, |p| progress += p.bytes)
        .await
        .expect("heal");
    println!(
        "healed {} regions, {} bytes copied (wrote {} bytes, {} of them after the kill)",
        report.regions_healed,
        report.bytes_copied,
        TOTAL,
        TOTAL - KILL_AT * WRITE
    );
    assert_eq!(progress, report.bytes_copied);
    assert!(report.split_brain.is_empty());
    assert_eq!(report.regions_skipped, 0);
    // Only what was missed (plus the region in flight at the kill), not
    // the whole object.
    let missed = (TOTAL - KILL_AT * WRITE) as u64;
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

    // The three copies, read straight from each brick, are identical.
    for chunk in 0..(TOTAL as u64 / CHUNK) {
        let mut copies = Vec::new();
        for a in &addrs {
            copies.push(brick_chunk(a, &pool.secret, fid.chunk(chunk), CHUNK).await);
        }
        let want = &data[(chunk * CHUNK) as usize..((chunk + 1) * CHUNK) as usize];
        for (k, (c, size)) in copies.iter().enumerate() {
            assert_eq!(*size, Some(CHUNK), "brick {k} chunk {chunk} size");
            assert!(c == want, "brick {k} chunk {chunk} differs");
        }
    }
    // And reads through the volume return the data, from any brick.
    client.refresh_marks().await;
    let got = client
        .object(fid)
        .read(0, TOTAL as u64)
        .await
        .expect("read");
    assert!(got == data);
    client.close().await;
}

/// A brick that hangs (SIGSTOP: its connection stays open, nothing
/// answers) costs one `ping-timeout`; the writes go on without it, it comes
/// back by itself after SIGCONT, and heal catches it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_brick_costs_one_ping_timeout_then_rejoins() {
    let pool = Pool::new();
    let dirs: Vec<_> = (0..3).map(|i| pool.init_brick(i)).collect();
    let bricks: Vec<ChildBrick> = dirs
        .iter()
        .map(|d| ChildBrick::start("child_brick", d, "127.0.0.1:0"))
        .collect();
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let mut spec = spec(
        8,
        VolumeKind::Replicate { replica: 3 },
        addrs.clone(),
        CHUNK,
    );
    spec.options.insert("ping-timeout".into(), "1".into());
    let client = Client::connect_spec(spec, pool.secret.clone(), client_opts())
        .await
        .expect("connect");
    let fid = Fid {
        volume: 8,
        vnode: 1,
        unique: 1,
    };
    let total = 8 << 20;
    let data = bytes(8, total);
    let obj = client.object(fid);
    let hung = bricks[1].child.id() as i32;
    for i in 0..total / WRITE {
        if i == 3 {
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(hung, libc::SIGSTOP) };
        }
        obj.write((i * WRITE) as u64, &data[i * WRITE..(i + 1) * WRITE])
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
        if i == 3 {
            assert!(
                !client.links()[1].is_up(),
                "a brick that timed out is not up"
            );
        }
    }
    // SAFETY: as above.
    unsafe { libc::kill(hung, libc::SIGCONT) };
    let link = client.links()[1].clone();
    wait_until("the hung brick to answer again", || link.is_up()).await;
    let report = heal_with(&client, |_| {}).await.expect("heal");
    println!(
        "hung brick: heal copied {} bytes of {total}",
        report.bytes_copied
    );
    assert!(report.bytes_copied >= ((total / WRITE - 4) * WRITE) as u64);
    assert!(report.bytes_copied <= total as u64);
    for chunk in 0..(total as u64 / CHUNK) {
        let want = &data[(chunk * CHUNK) as usize..((chunk + 1) * CHUNK) as usize];
        for a in &addrs {
            let (c, _) = brick_chunk(a, &pool.secret, fid.chunk(chunk), CHUNK).await;
            assert!(c == want, "brick {a} chunk {chunk} differs");
        }
    }
    client.close().await;
}

/// Replica 3, quorum auto, two brick processes SIGKILLed: writes fail with
/// a clear error and reach no brick, reads go on from the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bricks_killed_writes_fail_reads_go_on() {
    let pool = Pool::new();
    let dirs: Vec<_> = (0..3).map(|i| pool.init_brick(i)).collect();
    let mut bricks: Vec<ChildBrick> = dirs
        .iter()
        .map(|d| ChildBrick::start("child_brick", d, "127.0.0.1:0"))
        .collect();
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let spec = spec(
        6,
        VolumeKind::Replicate { replica: 3 },
        addrs.clone(),
        CHUNK,
    );
    let client = Client::connect_spec(spec, pool.secret.clone(), client_opts())
        .await
        .expect("connect");
    let fid = Fid {
        volume: 6,
        vnode: 2,
        unique: 2,
    };
    let obj = client.object(fid);
    let data = bytes(6, 2 << 20);
    obj.write(0, &data).await.expect("write with all up");
    bricks[1].kill9();
    bricks[2].kill9();
    let (l1, l2) = (client.links()[1].clone(), client.links()[2].clone());
    wait_until("the dead bricks to be noticed", || {
        !l1.is_up() && !l2.is_up()
    })
    .await;
    let e = obj.write(4096, b"refused").await.expect_err("below quorum");
    assert_eq!(
        e.to_string(),
        "volume vol6: write needs 2 of 3 bricks, 1 up"
    );
    let e = obj.zero(0, 4096).await.expect_err("below quorum");
    assert!(matches!(e, VolumeError::NoQuorum { .. }), "{e}");
    assert!(obj.read(0, 2 << 20).await.expect("read") == data);
    // Nothing of the refused changes reached the survivor.
    let (c, size) = brick_chunk(&addrs[0], &pool.secret, fid.chunk(0), 2 << 20).await;
    assert_eq!(size, Some(2 << 20));
    assert!(c == data);
    client.close().await;
}
