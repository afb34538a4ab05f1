//! `stretto volume create NAME disperse K+M` end to end: real `stretto
//! brick serve` processes; a 4+2 volume written through the volume client,
//! two bricks SIGKILLed, reads and writes go on, the bricks restart, and
//! `stretto volume heal` rebuilds their fragments until nothing is pending.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{BrickProcess, Pool};
use transport::{ClientOptions, Secret};
use volume::{Client, Fid};

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "command succeeded; stderr {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains(needle), "{err:?} does not say {needle:?}");
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn disperse_volume_survives_two_dead_bricks_and_heals() {
    let mut pool = Pool::start(6);
    let b: Vec<String> = (0..6).map(|i| pool.addr(i)).collect();
    let br: Vec<&str> = b.iter().map(String::as_str).collect();

    // Bad geometries: one clear line each, nothing created.
    let mut args = vec!["create", "bad", "disperse", "4-2"];
    args.extend(&br);
    fails_with(&pool.volume(0, &args), "expected K+M");
    let mut args = vec!["create", "bad", "disperse", "2+2"];
    args.extend(&br[..4]);
    fails_with(&pool.volume(0, &args), "redundancy must be less than data");
    let mut args = vec!["create", "bad", "disperse", "4+2"];
    args.extend(&br[..5]);
    fails_with(&pool.volume(0, &args), "multiple of 6 bricks");

    let mut args = vec!["create", "ec", "disperse", "4+2"];
    args.extend(&br);
    args.extend(["--chunk-size", "4M"]);
    ok(&pool.volume(0, &args));
    let info = ok(&pool.volume(1, &["info", "ec"]));
    assert!(info.contains("Type: Disperse"), "{info}");
    assert!(info.contains("Number of Bricks: 1 x (4 + 2) = 6"), "{info}");
    fails_with(
        &pool.volume(0, &["set", "ec", "quorum-count", "3"]),
        "from 4 to 6",
    );
    // Writes go on with two bricks down: quorum K.
    ok(&pool.volume(0, &["set", "ec", "quorum-type", "fixed"]));
    ok(&pool.volume(0, &["set", "ec", "quorum-count", "4"]));
    ok(&pool.volume(0, &["start", "ec"]));

    let secret = Secret::load(&pool.secret).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fid = Fid {
        volume: 0,
        vnode: 9,
        unique: 1,
    };
    let total = 12 << 20;
    let mut data = pattern(1, total);
    let (c, e) = (b[2].clone(), b[4].clone());
    rt.block_on(async {
        let spec = volume::manage::fetch(&b, &secret, "ec").await.unwrap();
        let fid = Fid {
            volume: spec.id,
            ..fid
        };
        let opts = ClientOptions {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(200),
            ..ClientOptions::default()
        };
        let client = Client::connect_spec(spec, secret.clone(), opts)
            .await
            .unwrap();
        let obj = client.object(fid);
        obj.write(0, &data[..4 << 20]).await.unwrap();
        pool.bricks[2].take().unwrap().kill9();
        pool.bricks[4].take().unwrap().kill9();
        obj.write(4 << 20, &data[4 << 20..]).await.unwrap();
        let patch = pattern(2, 100_000);
        obj.write(1_000_001, &patch).await.unwrap();
        data[1_000_001..1_100_001].copy_from_slice(&patch);
        let got = obj.read(0, total as u64).await.unwrap();
        assert!(got == data, "degraded read differs");
        client.close().await;
    });

    let info = ok(&pool.volume(0, &["heal", "ec", "info"]));
    assert!(
        info.contains(&format!("Brick {c} (set 0): offline")),
        "{info}"
    );
    pool.bricks[2] = Some(BrickProcess::start(&pool.dirs[2], &c));
    pool.bricks[4] = Some(BrickProcess::start(&pool.dirs[4], &e));
    let healed = ok(&pool.volume(0, &["heal", "ec"]));
    assert!(healed.contains("regions healed"), "{healed}");
    assert!(!healed.contains(" 0 regions healed"), "{healed}");
    let info = ok(&pool.volume(1, &["heal", "ec", "info"]));
    assert!(!info.contains("offline"), "{info}");

    // With the healed bricks and two others down, the data is still there:
    // it now needs the healed fragments.
    pool.bricks[0].take().unwrap().kill9();
    pool.bricks[5].take().unwrap().kill9();
    rt.block_on(async {
        let spec = volume::manage::fetch(&b[1..2], &secret, "ec")
            .await
            .unwrap();
        let fid = Fid {
            volume: spec.id,
            ..fid
        };
        let client = Client::connect_spec(spec, secret.clone(), ClientOptions::default())
            .await
            .unwrap();
        let got = client.object(fid).read(0, total as u64).await.unwrap();
        assert!(got == data, "read from the healed bricks differs");
        client.close().await;
    });
}
