//! Activity log: a writer process is SIGKILLed in the middle of writing
//! (several times); the next lease holder settles the regions it left
//! active, after which every replica holds the same bytes in every region.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use volume::{Client, Fid, VolumeError, VolumeKind};

const CHUNK: u64 = 1 << 20;
const SPAN: u64 = 4 << 20;
const ROUNDS: usize = 3;
const CHILD_WRITER: &str = "STRETTO_TEST_CHILD_WRITER";

fn fid() -> Fid {
    Fid {
        volume: 11,
        vnode: 5,
        unique: 5,
    }
}

/// The writer role: writes random 192 KiB blocks forever under a lease,
/// saying "wrote N" after each.
#[test]
fn child_writer() {
    let Ok(v) = std::env::var(CHILD_WRITER) else {
        return;
    };
    let mut parts = v.split('|');
    let addrs: Vec<String> = parts
        .next()
        .expect("addrs")
        .split(',')
        .map(str::to_owned)
        .collect();
    let secret = transport::Secret::load(std::path::Path::new(parts.next().expect("secret")))
        .expect("secret");
    let seed: u64 = parts.next().expect("seed").parse().expect("seed");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async move {
        let spec = spec(11, VolumeKind::Replicate { replica: 3 }, addrs, CHUNK);
        let client = Client::connect_spec(spec, secret, client_opts())
            .await
            .expect("connect");
        let obj = loop {
            match client.open_writer(fid(), Duration::from_millis(800)).await {
                Ok(o) => break o,
                Err(VolumeError::LeaseBusy { .. }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        let len = 192 << 10;
        for n in 0u64.. {
            let off = (seed * 7919 + n * 104_729) % (SPAN - len);
            obj.write(off, &bytes(seed * 100_000 + n, len as usize))
                .await
                .expect("write");
            println!("wrote {n}");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_writer_active_regions_are_settled_by_the_next_holder() {
    let pool = Pool::new();
    let mut bricks = Vec::new();
    for i in 0..3 {
        let d = pool.init_brick(i);
        bricks.push(InBrick::start(&d, &pool.secret, "127.0.0.1:0").await);
    }
    let addrs: Vec<String> = bricks.iter().map(|b| b.addr.to_string()).collect();
    let spec = spec(
        11,
        VolumeKind::Replicate { replica: 3 },
        addrs.clone(),
        CHUNK,
    );
    let client = Client::connect_spec(spec, pool.secret.clone(), client_opts())
        .await
        .expect("connect");
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args(["child_writer", "--exact", "--nocapture", "--test-threads=1"])
            .env(
                CHILD_WRITER,
                format!("{}|{}|{round}", addrs.join(","), pool.secret_file.display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let mut writes = 0;
        // Kill it a few writes in (a different number each round).
        while writes < 5 + 3 * round {
            line.clear();
            if out.read_line(&mut line).expect("read") == 0 {
                panic!("writer exited early");
            }
            if line.contains("wrote ") {
                writes += 1;
            }
        }
        // SAFETY: kill(2) on the PID of our own unreaped child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();

        // Take over once the dead writer's lease expires.
        let mut tries = 0;
        let w = loop {
            match client.open_writer(fid(), Duration::from_millis(800)).await {
                Ok(o) => break o,
                Err(VolumeError::LeaseBusy { .. }) => {
                    tries += 1;
                    assert!(tries < 300, "lease never expired");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("takeover: {e}"),
            }
        };
        // The dead writer left its regions active: the takeover settled them.
        assert!(w.settled_regions() > 0, "round {round}: nothing settled");
        // Every replica agrees on every region.
        for chunk in 0..SPAN / CHUNK {
            let mut copies = Vec::new();
            for a in &addrs {
                copies.push(
                    brick_chunk(a, &pool.secret, fid().chunk(chunk), CHUNK)
                        .await
                        .0,
                );
            }
            assert!(
                copies[0] == copies[1] && copies[1] == copies[2],
                "round {round}: chunk {chunk} differs between replicas"
            );
        }
        println!(
            "round {round}: writer killed after {writes} acknowledged writes; {} active regions settled; replicas agree",
            w.settled_regions()
        );
        w.close().await.expect("release");
    }
    client.close().await;
    for b in bricks {
        b.stop().await;
    }
}
