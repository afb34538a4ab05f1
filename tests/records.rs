//! Namespace records end to end on real brick processes: two clients race
//! guarded commits on a replica-3 volume (one wins each round, the replicas
//! stay identical), through a brick's SIGKILL, restart and heal; and
//! committed records survive every brick being SIGKILLed.

mod common;

use std::time::Duration;

use common::{BrickProcess, Pool};
use transport::wire::{HeadOp, RecordHead, RecordHeadReq, RecordListReq, LIST_MORE};
use transport::{ClientOptions, Payload, Request, Response, Secret, TcpClient};
use volume::records::{Expect, RecordError, RecordOp, RecordStore};
use volume::Client;

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn opts() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(3),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        ..ClientOptions::default()
    }
}

fn put(key: &str, expect: Expect, value: &str) -> RecordOp {
    RecordOp {
        key: key.as_bytes().to_vec(),
        expect,
        value: Some(value.as_bytes().to_vec()),
    }
}

fn volume_on(pool: &Pool, name: &str) {
    let (a, b, c) = (pool.addr(0), pool.addr(1), pool.addr(2));
    ok(pool.volume(0, &["create", name, "replica", "3", &a, &b, &c]));
    ok(pool.volume(0, &["start", name]));
    ok(pool.volume(0, &["set", name, "ping-timeout", "3"]));
}

async fn connect(pool: &Pool, name: &str) -> Client {
    let secret = Secret::load(&pool.secret).expect("secret");
    let spec = volume::manage::fetch(&[pool.addr(0)], &secret, name)
        .await
        .expect("fetch");
    Client::connect_spec(spec, secret, opts())
        .await
        .expect("connect")
}

/// Everything brick `addr` holds for `volume`, read straight from it, and
/// its head.
async fn brick_records(
    pool: &Pool,
    addr: &str,
    volume: u32,
) -> (Vec<(Vec<u8>, u64, Vec<u8>)>, RecordHead) {
    let secret = Secret::load(&pool.secret).expect("secret");
    let c = TcpClient::connect(addr, secret, opts())
        .await
        .expect("brick connect");
    let mut out = Vec::new();
    let mut after = Vec::new();
    loop {
        let (r, _) = c
            .call(
                Request::RecordList(RecordListReq {
                    volume,
                    limit: 1000,
                    prefix: Vec::new(),
                    after: after.clone(),
                }),
                Payload::None,
            )
            .await
            .expect("list");
        let Response::RecordList(l) = r else {
            panic!("list: {r:?}")
        };
        for e in &l.entries {
            out.push((
                e.key.clone(),
                e.version,
                e.value.clone().unwrap_or_default(),
            ));
        }
        match l.entries.last() {
            Some(e) if l.flags & LIST_MORE != 0 => after = e.key.clone(),
            _ => break,
        }
    }
    let (r, _) = c
        .call(
            Request::RecordHead(RecordHeadReq {
                volume,
                op: HeadOp::Query,
                ballot: 0,
            }),
            Payload::None,
        )
        .await
        .expect("head");
    let Response::RecordHead(h) = r else {
        panic!("head: {r:?}")
    };
    c.close().await;
    (out, h.head)
}

async fn assert_identical(pool: &Pool, volume: u32) -> Vec<(Vec<u8>, u64, Vec<u8>)> {
    let (first, h0) = brick_records(pool, &pool.addr(0), volume).await;
    for i in 1..3 {
        let (other, h) = brick_records(pool, &pool.addr(i), volume).await;
        assert_eq!(h.id, h0.id, "brick {i} is at another head");
        assert!(!h.syncing());
        assert_eq!(other, first, "brick {i} holds other records");
    }
    first
}

/// Waits until every client's link to brick `i` is up again (the
/// transport reconnects in the background).
async fn wait_up(clients: &[&Client], i: usize) {
    for _ in 0..1500 {
        if clients.iter().all(|c| c.links()[i].is_up()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("brick {i} did not come back for the clients in 30 s");
}

/// One round: both clients try to move `k` from `version` with a guard;
/// returns which one won.
async fn race(r: [&dyn RecordStore; 2], round: usize, version: u64) -> usize {
    let expect = if version == 0 {
        Expect::Absent
    } else {
        Expect::Version(version)
    };
    let ops = |who: usize| {
        vec![
            put("k", expect, &format!("round {round} by {who}")),
            put(
                &format!("log/{round:03}"),
                Expect::Absent,
                &format!("{who}"),
            ),
        ]
    };
    let (a, b) = tokio::join!(r[0].commit(ops(0)), r[1].commit(ops(1)));
    let won: Vec<usize> = [&a, &b]
        .iter()
        .enumerate()
        .filter(|(_, x)| x.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(won.len(), 1, "round {round}: {a:?} / {b:?}");
    let loser = if won[0] == 0 { &b } else { &a };
    match loser {
        Err(RecordError::Conflict { key, found, .. }) => {
            assert!(key == b"k" || key.starts_with(b"log/"), "{key:?}");
            assert!(found.is_some());
        }
        other => panic!("round {round}: the loser got {other:?}"),
    }
    won[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_guarded_commits_one_winner_identical_replicas_through_a_brick_kill() {
    let mut pool = Pool::start(3);
    volume_on(&pool, "ns");
    let c1 = connect(&pool, "ns").await;
    let c2 = connect(&pool, "ns").await;
    let volume = c1.spec().id;
    let (r1, r2) = (c1.records(), c2.records());
    let stores: [&dyn RecordStore; 2] = [&*r1, &*r2];
    let rounds = 60;
    let mut winners = Vec::new();
    for round in 0..rounds {
        let w = match round {
            // SIGKILL a brick while both commits are in flight.
            12 | 44 => {
                let i = if round == 12 { 2 } else { 0 };
                let brick = pool.bricks[i].take().expect("brick");
                let kill = tokio::task::spawn_blocking(move || brick.kill9());
                let (w, k) = tokio::join!(race(stores, round, round as u64), kill);
                k.expect("kill");
                w
            }
            // Back on its address. Once the clients see it, the next
            // sequencer brings it in step before committing to it.
            24 | 52 => {
                let i = if round == 24 { 2 } else { 0 };
                let addr = c1.spec().bricks[i].clone();
                pool.bricks[i] = Some(BrickProcess::start(&pool.dirs[i], &addr));
                wait_up(&[&c1, &c2], i).await;
                race(stores, round, round as u64).await
            }
            36 => {
                let healed = ok(pool.volume(1, &["heal", "ns"]));
                assert!(healed.contains("records at commit"), "{healed}");
                race(stores, round, round as u64).await
            }
            _ => race(stores, round, round as u64).await,
        };
        winners.push(w);
        // The winner's value is what both clients read.
        for r in stores {
            let rec = r.get(b"k").await.expect("get").expect("k exists");
            assert_eq!(rec.version, round as u64 + 1);
            assert_eq!(rec.value, format!("round {round} by {w}").into_bytes());
        }
    }
    // Every round left exactly its winner's log entry.
    let logs = r2.list(b"log/", b"", 1000).await.expect("list");
    assert_eq!(logs.len(), rounds);
    for (i, (k, rec)) in logs.iter().enumerate() {
        assert_eq!(k, format!("log/{i:03}").as_bytes());
        assert_eq!(rec.value, format!("{}", winners[i]).into_bytes());
    }
    let info = ok(pool.volume(1, &["heal", "ns", "info"]));
    assert_eq!(
        info.matches("backlog 0 commits").count(),
        3,
        "every brick is in step:\n{info}"
    );
    let all = assert_identical(&pool, volume).await;
    assert_eq!(all.len(), rounds + 1);
    c1.close().await;
    c2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_records_survive_sigkill_of_every_brick() {
    let mut pool = Pool::start(3);
    volume_on(&pool, "keep");
    let c = connect(&pool, "keep").await;
    let volume = c.spec().id;
    let addrs = c.spec().bricks.clone();
    let r = c.records();
    let mut seqs = Vec::new();
    for i in 0..20 {
        let key = format!("dir/{i:02}");
        seqs.push(
            r.commit(vec![put(&key, Expect::Absent, &format!("v{i}"))])
                .await
                .expect("commit"),
        );
    }
    let s = r
        .commit(vec![
            put("dir/00", Expect::Version(1), "changed"),
            RecordOp {
                key: b"dir/01".to_vec(),
                expect: Expect::Version(1),
                value: None,
            },
        ])
        .await
        .expect("rename-like commit");
    assert!(seqs.iter().all(|q| *q < s));
    c.close().await;
    drop(c);
    let before = assert_identical(&pool, volume).await;
    for i in 0..3 {
        pool.bricks[i].take().expect("brick").kill9();
    }
    for (i, addr) in addrs.iter().enumerate() {
        pool.bricks[i] = Some(BrickProcess::start(&pool.dirs[i], addr));
    }
    let after = assert_identical(&pool, volume).await;
    assert_eq!(after, before);
    let c = connect(&pool, "keep").await;
    let r = c.records();
    let got = r.get(b"dir/00").await.expect("get").expect("dir/00");
    assert_eq!((got.version, got.value), (2, b"changed".to_vec()));
    assert_eq!(r.get(b"dir/01").await.expect("get"), None);
    assert_eq!(r.list(b"dir/", b"", 100).await.expect("list").len(), 19);
    // A long poll from one client returns with another client's commit.
    let c2 = connect(&pool, "keep").await;
    let r2 = c2.records();
    let poll = async {
        let mut since = s;
        for _ in 0..3 {
            let (changes, newest) = r.changes(since, 10, 1500).await.expect("poll");
            if !changes.is_empty() {
                return (changes, newest);
            }
            since = newest.max(since);
        }
        panic!("no change came in three polls");
    };
    let (polled, committed) =
        tokio::join!(poll, r2.commit(vec![put("dir/poll", Expect::Absent, "p")]));
    let committed = committed.expect("commit from the second client");
    assert_eq!(polled.0.len(), 1);
    assert_eq!(polled.0[0].key, b"dir/poll".to_vec());
    assert!(polled.0[0].seq <= committed && polled.1 >= polled.0[0].seq);
    c2.close().await;
    // The change feed after the restart still answers from the last seq.
    let (changes, _) = r.changes(s - 1, 10, 0).await.expect("changes");
    let keys: Vec<&[u8]> = changes.iter().map(|c| c.key.as_slice()).collect();
    assert_eq!(&keys[..2], &[b"dir/00".as_slice(), b"dir/01".as_slice()]);
    assert!(changes[..2].iter().all(|c| c.seq == s));
    // And commits go on on top of it.
    r.commit(vec![put("dir/20", Expect::Absent, "new")])
        .await
        .expect("commit after restart");
    c.close().await;
}
