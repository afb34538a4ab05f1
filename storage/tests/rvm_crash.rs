//! Crash simulation: run a seeded workload on the simulated disk, cut the
//! power at the k-th I/O (every write and sync counts), tear every unsynced
//! write at 512-byte granularity, recover, and compare with the reference
//! model.
//!
//! The model is the list of states after each commit, in commit order.
//! After recovery the segment must equal one of them, at or after the last
//! commit known durable (a Flush commit that returned, or a flush or
//! truncation that returned) and at most the last commit attempted. Each
//! transaction writes its own id into all of its ranges, so the states are
//! all different and a partial transaction matches none of them.
//!
//! Counts: 200 seeds x 50 crash points on raw transactions (a quarter of
//! them also crash again during recovery), and 40 seeds x 25 points on map
//! inserts and removes.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage::rvm::map::PMap;
use storage::rvm::sim::SimDisk;
use storage::rvm::{CommitMode, Rvm, RvmError, RvmOptions};

const SEG: u64 = 32 << 10;
const USER: u64 = 64;

#[derive(Debug, Clone)]
enum WOp {
    Tx {
        id: u8,
        ranges: Vec<(u64, usize)>,
        mode: Option<CommitMode>, // None: abort
    },
    Flush,
    Truncate,
}

fn opts(seed: u64) -> RvmOptions {
    RvmOptions {
        segment_size: SEG,
        // Half the seeds with a log so small that truncations (inline at
        // half full, and log-full at commit) happen every few transactions.
        log_size: if seed % 2 == 0 { 16 << 10 } else { 64 << 10 },
        flush_delay: Duration::MAX,
    }
}

fn workload(seed: u64) -> Vec<WOp> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ops = Vec::new();
    let mut id = 0u8;
    for _ in 0..40 {
        let r = rng.gen_range(0..100);
        if r < 6 {
            ops.push(WOp::Flush);
        } else if r < 12 {
            ops.push(WOp::Truncate);
        } else {
            id += 1;
            let n = rng.gen_range(1..=4);
            let ranges = (0..n)
                .map(|_| {
                    let len = rng.gen_range(1..=700usize);
                    (rng.gen_range(USER..SEG - len as u64), len)
                })
                .collect();
            let m = rng.gen_range(0..10);
            let mode = if m < 1 {
                None
            } else if m < 6 {
                Some(CommitMode::Flush)
            } else {
                Some(CommitMode::NoFlush)
            };
            ops.push(WOp::Tx { id, ranges, mode });
        }
    }
    ops
}

/// States after each commit (`states[0]` = fresh segment) and the range of
/// indices recovery may legally produce.
struct Outcome<S> {
    states: Vec<S>,
    lo: usize,
    hi: usize,
}

fn execute(rvm: Rvm, ops: &[WOp]) -> Outcome<Vec<u8>> {
    let mut states = vec![vec![0u8; (SEG - USER) as usize]];
    let mut lo = 0;
    let mut stopped = false;
    for op in ops {
        let r: Result<(), RvmError> = match op {
            WOp::Tx { id, ranges, mode } => {
                let mut tx = rvm.begin();
                let mut next = states[states.len() - 1].clone();
                for &(o, l) in ranges {
                    tx.write(o, &vec![*id; l]).expect("write in range");
                    let a = (o - USER) as usize;
                    next[a..a + l].fill(*id);
                }
                match mode {
                    None => {
                        tx.abort();
                        Ok(())
                    }
                    Some(m) => {
                        // Pushed even if the commit fails: a failed commit
                        // may or may not be in the log.
                        states.push(next);
                        let r = tx.commit(*m);
                        if r.is_ok() && *m == CommitMode::Flush {
                            lo = states.len() - 1;
                        }
                        r
                    }
                }
            }
            WOp::Flush => rvm.flush().map(|_| lo = states.len() - 1),
            WOp::Truncate => rvm.truncate().map(|_| lo = states.len() - 1),
        };
        if r.is_err() {
            stopped = true;
            break;
        }
    }
    if !stopped && rvm.close().is_ok() {
        lo = states.len() - 1;
    }
    let hi = states.len() - 1;
    Outcome { states, lo, hi }
}

fn image(rvm: &Rvm) -> Vec<u8> {
    let mut img = vec![0u8; (SEG - USER) as usize];
    rvm.read(USER, &mut img).expect("read");
    img
}

fn assert_prefix<S: PartialEq + std::fmt::Debug>(got: &S, out: &Outcome<S>, what: &str) {
    let found = (out.lo..=out.hi).rev().find(|&j| out.states[j] == *got);
    assert!(
        found.is_some(),
        "{what}: recovered state is none of states {}..={} (of {}); \
         a durable commit was lost or a partial one is visible",
        out.lo,
        out.hi,
        out.states.len() - 1
    );
}

#[test]
fn crash_at_every_kind_of_io_point_recovers_a_committed_prefix() {
    const SEEDS: u64 = 200;
    const POINTS: u64 = 50;
    let mut total_points = 0;
    let mut recovery_crashes = 0;
    for seed in 0..SEEDS {
        let ops = workload(seed);
        let o = opts(seed);
        // Dry run: how many I/Os the workload (and its clean close) issues.
        let disk = SimDisk::new();
        let rvm = Rvm::create_with(disk.files(), &o).expect("create");
        let start = disk.io_count();
        let dry = execute(rvm, &ops);
        assert_eq!(dry.lo, dry.hi, "seed {seed}: dry run must close cleanly");
        let total = disk.io_count() - start;
        let check = Rvm::open_with(disk.files(), &o).expect("open");
        assert_eq!(image(&check), dry.states[dry.hi], "seed {seed}: clean run");
        drop(check);

        for p in 0..POINTS {
            let k = p * (total + 1) / POINTS;
            let mut rng = StdRng::seed_from_u64(seed << 32 | p);
            let disk = SimDisk::new();
            let rvm = Rvm::create_with(disk.files(), &o).expect("create");
            disk.fail_after(k);
            let out = execute(rvm, &ops);
            disk.crash(&mut || rng.gen_bool(0.5));
            if p % 4 == 1 {
                // Crash again, during recovery itself.
                disk.fail_after(rng.gen_range(0..8));
                if let Ok(rvm) = Rvm::open_with(disk.files(), &o) {
                    drop(rvm);
                }
                disk.crash(&mut || rng.gen_bool(0.5));
                recovery_crashes += 1;
            }
            let rvm = Rvm::open_with(disk.files(), &o)
                .unwrap_or_else(|e| panic!("seed {seed} point {k}: open failed: {e}"));
            assert_prefix(&image(&rvm), &out, &format!("seed {seed} crash at io {k}"));
            // The recovered instance keeps working.
            let mut tx = rvm.begin();
            tx.write(USER, &[0xee; 8]).expect("write");
            tx.commit(CommitMode::Flush).expect("commit after recovery");
            total_points += 1;
        }
    }
    assert_eq!(total_points, SEEDS * POINTS);
    assert!(recovery_crashes >= 2000);
}

// ---- map under crashes ----

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone)]
enum MapOp {
    Insert(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

fn map_opts() -> RvmOptions {
    RvmOptions {
        segment_size: 256 << 10,
        log_size: 24 << 10,
        flush_delay: Duration::MAX,
    }
}

fn map_workload(seed: u64) -> Vec<(Vec<MapOp>, Option<CommitMode>)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x006d_6170);
    (0..30u8)
        .map(|t| {
            let n = rng.gen_range(1..=4);
            let ops = (0..n)
                .map(|_| {
                    let key = format!("key-{}", rng.gen_range(0..60)).into_bytes();
                    if rng.gen_range(0..4) == 0 {
                        MapOp::Remove(key)
                    } else {
                        let len = rng.gen_range(0..100);
                        MapOp::Insert(key, vec![t + 1; len])
                    }
                })
                .collect();
            let mode = match rng.gen_range(0..10) {
                0 => None,
                1..=5 => Some(CommitMode::Flush),
                _ => Some(CommitMode::NoFlush),
            };
            (ops, mode)
        })
        .collect()
}

fn map_execute(rvm: Rvm, map: PMap, txs: &[(Vec<MapOp>, Option<CommitMode>)]) -> Outcome<Model> {
    let mut states = vec![Model::new()];
    let mut lo = 0;
    let mut stopped = false;
    for (ops, mode) in txs {
        let mut tx = rvm.begin();
        let mut next = states[states.len() - 1].clone();
        for op in ops {
            match op {
                MapOp::Insert(k, v) => {
                    let replaced = map.insert(&mut tx, k, v).expect("insert");
                    assert_eq!(replaced, next.insert(k.clone(), v.clone()).is_some());
                }
                MapOp::Remove(k) => {
                    let had = map.remove(&mut tx, k).expect("remove");
                    assert_eq!(had, next.remove(k).is_some());
                }
            }
        }
        let Some(m) = mode else {
            tx.abort();
            continue;
        };
        states.push(next);
        match tx.commit(*m) {
            Ok(()) if *m == CommitMode::Flush => lo = states.len() - 1,
            Ok(()) => {}
            Err(_) => {
                stopped = true;
                break;
            }
        }
    }
    if !stopped && rvm.close().is_ok() {
        lo = states.len() - 1;
    }
    let hi = states.len() - 1;
    Outcome { states, lo, hi }
}

fn map_contents(rvm: &Rvm) -> Model {
    let map = PMap::open(rvm, 1).expect("open map").expect("map exists");
    let m: Model = map.iter(rvm).collect::<Result<_, _>>().expect("iterate");
    assert_eq!(map.len(rvm).expect("len"), m.len() as u64);
    for (k, v) in &m {
        assert_eq!(map.get(rvm, k).expect("get").as_ref(), Some(v));
    }
    m
}

#[test]
fn crash_during_map_updates_recovers_a_committed_prefix() {
    const SEEDS: u64 = 40;
    const POINTS: u64 = 25;
    for seed in 0..SEEDS {
        let txs = map_workload(seed);
        let disk = SimDisk::new();
        let rvm = Rvm::create_with(disk.files(), &map_opts()).expect("create");
        let map = PMap::open_or_create(&rvm, 1).expect("map");
        let start = disk.io_count();
        let dry = map_execute(rvm, map, &txs);
        let total = disk.io_count() - start;
        let rvm = Rvm::open_with(disk.files(), &map_opts()).expect("open");
        assert_eq!(map_contents(&rvm), dry.states[dry.hi]);
        drop(rvm);

        for p in 0..POINTS {
            let k = p * (total + 1) / POINTS;
            let mut rng = StdRng::seed_from_u64(seed << 32 | p | 1 << 31);
            let disk = SimDisk::new();
            let rvm = Rvm::create_with(disk.files(), &map_opts()).expect("create");
            let map = PMap::open_or_create(&rvm, 1).expect("map");
            disk.fail_after(k);
            let out = map_execute(rvm, map, &txs);
            disk.crash(&mut || rng.gen_bool(0.5));
            let rvm = Rvm::open_with(disk.files(), &map_opts())
                .unwrap_or_else(|e| panic!("seed {seed} point {k}: open failed: {e}"));
            assert_prefix(
                &map_contents(&rvm),
                &out,
                &format!("map seed {seed} crash at io {k}"),
            );
        }
    }
}
