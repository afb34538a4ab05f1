//! Stripe and plain distribute volumes on real brick processes:
//! - a model-based random I/O test (writes, reads, punches and zeroes at
//!   random offsets, checked against an in-memory copy) on `stripe 4` and
//!   on a distribute volume and on a distributed stripe (2 × 2) over the
//!   same 4 bricks, several seeds each;
//! - a distribute volume with a dead brick: its chunks fail with an error
//!   naming the brick and the chunk, every other chunk still works.

mod common;

use common::Pool;
use rand::{Rng, SeedableRng};
use transport::{ClientOptions, Secret};
use volume::{Client, Fid, VolumeError};

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The object's span in the model tests: 6 chunks of 1 MiB.
const SPAN: usize = 6 << 20;

async fn model_run(client: &Client, fid: Fid, seed: u64, ops: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model = vec![0u8; SPAN];
    let obj = client.object(fid);
    for step in 0..ops {
        let off = rng.gen_range(0..SPAN - 1);
        let len = rng.gen_range(1..=(SPAN - off).min(400 << 10));
        match rng.gen_range(0..10) {
            0..=4 => {
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                obj.write(off as u64, &data).await.unwrap();
                model[off..off + len].copy_from_slice(&data);
            }
            5..=6 => {
                let got = obj.read(off as u64, len as u64).await.unwrap();
                assert!(
                    got == model[off..off + len],
                    "seed {seed} step {step}: read {off}+{len} differs from the model"
                );
            }
            7 => {
                obj.punch(off as u64, len as u64).await.unwrap();
                model[off..off + len].fill(0);
            }
            _ => {
                obj.zero(off as u64, len as u64).await.unwrap();
                model[off..off + len].fill(0);
            }
        }
    }
    obj.flush().await.unwrap();
    let all = obj.read(0, SPAN as u64).await.unwrap();
    assert!(
        all == model,
        "seed {seed}: final read differs from the model"
    );
}

#[test]
fn stripe_and_distribute_match_a_model() {
    let pool = Pool::start(4);
    let b: Vec<String> = (0..4).map(|i| pool.addr(i)).collect();
    ok(pool.volume(
        0,
        &[
            "create",
            "s4",
            "stripe",
            "4",
            &b[0],
            &b[1],
            &b[2],
            &b[3],
            "--chunk-size",
            "1M",
        ],
    ));
    // A small unit so one request spans many columns and rows.
    ok(pool.volume(0, &["set", "s4", "stripe-unit", "16K"]));
    ok(pool.volume(0, &["start", "s4"]));
    let info = ok(pool.volume(0, &["info", "s4"]));
    assert!(info.contains("Type: Stripe\n"), "{info}");
    assert!(info.contains("Number of Bricks: 1 x 4 = 4"), "{info}");
    // The unit cannot move once data may exist.
    let late = pool.volume(0, &["set", "s4", "stripe-unit", "64K"]);
    assert!(!late.status.success());
    ok(pool.volume(
        0,
        &[
            "create",
            "d4",
            &b[0],
            &b[1],
            &b[2],
            &b[3],
            "--chunk-size",
            "1M",
        ],
    ));
    ok(pool.volume(0, &["start", "d4"]));
    let info = ok(pool.volume(0, &["info", "d4"]));
    assert!(info.contains("Type: Distribute\n"), "{info}");
    // Two stripe sets of two: chunks placed by hash, then striped.
    ok(pool.volume(
        0,
        &[
            "create",
            "ds",
            "stripe",
            "2",
            &b[0],
            &b[1],
            &b[2],
            &b[3],
            "--chunk-size",
            "1M",
        ],
    ));
    ok(pool.volume(0, &["start", "ds"]));
    let info = ok(pool.volume(0, &["info", "ds"]));
    assert!(info.contains("Type: Distributed-Stripe\n"), "{info}");
    assert!(info.contains("Stripe Unit: 128K"), "{info}");

    let secret = Secret::load(&pool.secret).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for name in ["s4", "d4", "ds"] {
            let spec = volume::manage::fetch(&b, &secret, name).await.unwrap();
            let id = spec.id;
            let client = Client::connect_spec(spec, secret.clone(), ClientOptions::default())
                .await
                .unwrap();
            for seed in 1..=3u64 {
                let fid = Fid {
                    volume: id,
                    vnode: 10 + seed as u32,
                    unique: 1,
                };
                model_run(&client, fid, seed, 40).await;
            }
            client.close().await;
        }
    });
    // The stripe really spreads an object: every brick holds some of it.
    for dir in &pool.dirs {
        let objects = std::fs::read_dir(dir.join("objects")).unwrap().count();
        assert!(objects > 1, "{} holds no chunk files", dir.display());
    }
}

#[test]
fn distribute_with_a_dead_brick_fails_only_its_chunks_clearly() {
    let mut pool = Pool::start(3);
    let b: Vec<String> = (0..3).map(|i| pool.addr(i)).collect();
    ok(pool.volume(
        0,
        &["create", "d3", &b[0], &b[1], &b[2], "--chunk-size", "1M"],
    ));
    ok(pool.volume(0, &["start", "d3"]));
    let secret = Secret::load(&pool.secret).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    const CHUNKS: u64 = 12;
    const MIB: u64 = 1 << 20;
    let spec = rt
        .block_on(volume::manage::fetch(&b, &secret, "d3"))
        .unwrap();
    let fid = Fid {
        volume: spec.id,
        vnode: 3,
        unique: 1,
    };
    // The brick to kill: one that holds data chunks but not the object's
    // size record (that one would also make size queries fail).
    let size_set = volume::xlator::place(fid, volume::xlator::SIZE_CHUNK, 3);
    let dead = (0..3)
        .find(|&s| s != size_set && (0..CHUNKS).any(|c| volume::xlator::place(fid, c, 3) == s))
        .unwrap();
    let dead_addr = b[dead].clone();
    rt.block_on(async {
        let client = Client::connect_spec(spec.clone(), secret.clone(), ClientOptions::default())
            .await
            .unwrap();
        let obj = client.object(fid);
        for c in 0..CHUNKS {
            obj.write(c * MIB, &vec![c as u8 + 1; MIB as usize])
                .await
                .unwrap();
        }
        obj.flush().await.unwrap();

        pool.bricks[dead].take().unwrap().kill9();

        for c in 0..CHUNKS {
            let on_dead = volume::xlator::place(fid, c, 3) == dead;
            let read = obj.read(c * MIB + 100, 5000).await;
            let write = obj.write(c * MIB + 7, &[0xee; 10]).await;
            if on_dead {
                for (what, r) in [("read", read.map(|_| ())), ("write", write)] {
                    let e = r.expect_err("a chunk on the dead brick must fail");
                    assert!(
                        matches!(e, VolumeError::Unavailable { chunk, .. } if chunk == c),
                        "{what} of chunk {c}: {e}"
                    );
                    let msg = e.to_string();
                    assert!(msg.contains(&dead_addr), "{msg}");
                    assert!(msg.contains(&format!("chunk {c} ")), "{msg}");
                }
            } else {
                let data = read.unwrap_or_else(|e| panic!("chunk {c} should work: {e}"));
                assert_eq!(data, vec![c as u8 + 1; 5000]);
                write.unwrap_or_else(|e| panic!("chunk {c} should take writes: {e}"));
                let back = obj.read(c * MIB, 20).await.unwrap();
                assert_eq!(&back[7..17], &[0xee; 10]);
            }
        }
        client.close().await;
    });
}
