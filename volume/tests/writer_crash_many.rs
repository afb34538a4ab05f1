//! Writer crash, many times: a child process writing under a lease to a
//! replica-3 volume is SIGKILLed at a random moment, 50 times. After each
//! takeover every replica holds the same bytes in every chunk (read straight
//! from each brick), and every write the child reported as acknowledged
//! before it died is there; only the one write in flight may be old, new, or
//! a mix of the two.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use volume::heal::{heal_info_with, heal_with};
use volume::{Client, Fid, VolumeError, VolumeKind};

const CHUNK: u64 = 1 << 20;
/// The object region the writers use (two chunks: writes cross a chunk
/// boundary now and then).
const SPAN: u64 = 2 << 20;
const ROUNDS: u64 = 50;
/// Short so that a takeover waits little; renewals come every third.
const LEASE: Duration = Duration::from_millis(600);
const CHILD_WRITER: &str = "STRETTO_TEST_CHILD_WRITER_MANY";

fn fid() -> Fid {
    Fid {
        volume: 12,
        vnode: 6,
        unique: 6,
    }
}

/// Write `n` of round `round`: offset and length (a deterministic function,
/// so the parent can recompute the one in flight).
fn plan(round: u64, n: u64) -> (u64, usize) {
    let mut r = rand::rngs::StdRng::seed_from_u64(round << 32 | n);
    let len = r.gen_range(1..=48 << 10) as u64;
    let off = r.gen_range(0..SPAN - len);
    (off, len as usize)
}

fn data(round: u64, n: u64, len: usize) -> Vec<u8> {
    bytes(0x5eed_0000_0000 + (round << 20) + n, len)
}

/// The writer role: takes the lease and writes planned blocks forever,
/// printing "begin N" before and "wrote N" after each write returns.
#[test]
fn child_writer_many() {
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
    let round: u64 = parts.next().expect("round").parse().expect("round");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async move {
        let spec = spec(12, VolumeKind::Replicate { replica: 3 }, addrs, CHUNK);
        let client = Client::connect_spec(spec, secret, client_opts())
            .await
            .expect("connect");
        let obj = loop {
            match client.open_writer(fid(), LEASE).await {
                Ok(o) => break o,
                Err(VolumeError::LeaseBusy { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        println!("leased");
        for n in 0u64.. {
            let (off, len) = plan(round, n);
            println!("begin {n}");
            obj.write(off, &data(round, n, len)).await.expect("write");
            println!("wrote {n}");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_writer_sigkills_lose_no_acknowledged_write() {
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
    let client = Client::connect_spec(spec, pool.secret.clone(), client_opts())
        .await
        .expect("connect");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xdead_0050);
    // What the object must hold: every acknowledged write applied in order.
    let mut model = vec![0u8; SPAN as usize];
    let (mut total_acked, mut total_settled, mut mixed, mut late) = (0u64, 0usize, 0u64, 0u64);
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "child_writer_many",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
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
        // A random number of acknowledged writes, then a random delay: the
        // kill lands anywhere in a write (before, during, between replicas,
        // between data and marks).
        let want = rng.gen_range(1..=12u64);
        let mut acked = 0;
        while acked < want {
            line.clear();
            assert!(
                out.read_line(&mut line).expect("read") > 0,
                "round {round}: writer exited early"
            );
            if line.starts_with("wrote ") {
                acked += 1;
            }
        }
        let delay = rng.gen_range(0..4000u64);
        std::thread::sleep(Duration::from_micros(delay));
        // SAFETY: kill(2) on the PID of our own unreaped child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
        // Everything it said before dying: apply the acknowledged writes;
        // remember the one it began but did not report.
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).expect("drain");
        let mut last_acked: Option<u64> = None;
        let mut last_begun: Option<u64> = None;
        // Lines read before the kill are gone, but writes are numbered
        // from 0 and sequential: 0..=last acknowledged is enough.
        for l in rest.lines() {
            if let Some(n) = l.strip_prefix("wrote ") {
                last_acked = Some(n.trim().parse().expect("n"));
            } else if let Some(n) = l.strip_prefix("begin ") {
                last_begun = Some(n.trim().parse().expect("n"));
            }
        }
        let acked_upto = last_acked.unwrap_or(want - 1).max(want - 1);
        for n in 0..=acked_upto {
            let (off, len) = plan(round, n);
            model[off as usize..off as usize + len].copy_from_slice(&data(round, n, len));
        }
        total_acked += acked_upto + 1;
        // The write in flight (begun, not reported), if any.
        let inflight = match last_begun {
            Some(b) if b > acked_upto => b,
            _ => acked_upto + 1,
        };

        // Take over once the dead writer's lease runs out.
        let mut tries = 0;
        let w = loop {
            match client.open_writer(fid(), LEASE).await {
                Ok(o) => break o,
                Err(VolumeError::LeaseBusy { .. }) => {
                    tries += 1;
                    assert!(tries < 400, "round {round}: lease never expired");
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(e) => panic!("round {round}: takeover: {e}"),
            }
        };
        assert!(
            w.settled_regions() > 0,
            "round {round}: the dead writer left no active region"
        );
        let settled = w.settled_regions();
        total_settled += settled;
        // A brick whose copy of the dead writer's lease had not run out yet
        // when the others granted ours missed the settle: it is marked
        // pending instead. Heal it once that lease is gone there.
        let info = heal_info_with(&client).await.expect("info");
        let w = if info.bricks.iter().any(|b| b.pending_regions > 0) {
            late += 1;
            w.close().await.expect("release");
            let mut tries = 0;
            loop {
                let r = heal_with(&client, |_| {}).await.expect("heal");
                assert!(r.split_brain.is_empty(), "round {round}: {r:?}");
                let info = heal_info_with(&client).await.expect("info");
                if r.regions_skipped == 0 && info.bricks.iter().all(|b| b.pending_regions == 0) {
                    break;
                }
                tries += 1;
                assert!(tries < 400, "round {round}: heal never finished: {info:?}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            client.refresh_marks().await;
            None
        } else {
            Some(w)
        };

        let mut copies = Vec::new();
        for a in &addrs {
            let mut whole = Vec::with_capacity(SPAN as usize);
            for chunk in 0..SPAN / CHUNK {
                whole.extend(
                    brick_chunk(a, &pool.secret, fid().chunk(chunk), CHUNK)
                        .await
                        .0,
                );
            }
            copies.push(whole);
        }
        for (k, c) in copies.iter().enumerate().skip(1) {
            if let Some(at) = c.iter().zip(&copies[0]).position(|(x, y)| x != y) {
                panic!("round {round}: brick {k} differs from brick 0 at byte {at}");
            }
        }
        // Acknowledged data is there; the in-flight write's bytes are each
        // either the old or the new value.
        let got = &copies[0];
        let (ioff, ilen) = plan(round, inflight);
        let (ioff, idata) = (ioff as usize, data(round, inflight, ilen));
        for (at, (&g, &m)) in got.iter().zip(&model).enumerate() {
            if g == m {
                continue;
            }
            let inside = at >= ioff && at < ioff + ilen;
            assert!(
                inside && g == idata[at - ioff],
                "round {round}: byte {at} is {g:#x}, acknowledged data says {m:#x}"
            );
        }
        // The settled state is now the truth for the next round.
        if got[ioff..ioff + ilen] != model[ioff..ioff + ilen] {
            mixed += 1;
        }
        model.copy_from_slice(got);
        if let Some(w) = w {
            w.close().await.expect("release");
        }
        println!(
            "round {round}: killed after {} acknowledged writes (+{delay} us); {} regions settled; replicas agree",
            acked_upto + 1,
            settled
        );
    }
    println!(
        "{ROUNDS} writer SIGKILLs: {total_acked} acknowledged writes all present, {total_settled} active regions settled, {mixed} in-flight writes landed (wholly or in part), {late} takeovers with a brick still holding the old lease (healed after)"
    );
    client.close().await;
    for b in bricks {
        b.stop().await;
    }
}
