//! Property tests of the recoverable heap and the persistent map against
//! in-memory models, including reopen (clean, and after a power cut that
//! keeps only synced bytes) and aborted transactions.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use storage::rvm::heap;
use storage::rvm::map::{PMap, MAX_KEY};
use storage::rvm::sim::SimDisk;
use storage::rvm::{CommitMode, Rvm, RvmError, RvmOptions};

fn opts(segment_size: u64) -> RvmOptions {
    RvmOptions {
        segment_size,
        log_size: 96 << 10,
        flush_delay: Duration::MAX,
    }
}

fn power_cut_and_open(disk: &SimDisk, rvm: Rvm, o: &RvmOptions) -> Rvm {
    disk.fail_after(0);
    drop(rvm);
    disk.crash(&mut || false);
    Rvm::open_with(disk.files(), o).expect("open")
}

// ---- map ----

#[derive(Debug, Clone)]
enum MapOp {
    Insert(usize, Vec<u8>, Vec<u8>),
    Remove(usize, Vec<u8>),
}

#[derive(Debug, Clone)]
enum Op {
    Tx(Vec<MapOp>, Option<CommitMode>),
    Reopen,
    PowerCut,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // A small key space so updates and removes hit existing keys...
        4 => (0u16..300).prop_map(|n| format!("k{n}").into_bytes()),
        // ...and arbitrary bytes up to the limit.
        1 => prop::collection::vec(any::<u8>(), 0..=MAX_KEY),
    ]
}

fn map_op() -> impl Strategy<Value = MapOp> {
    prop_oneof![
        3 => (0usize..2, key(), prop::collection::vec(any::<u8>(), 0..200))
            .prop_map(|(m, k, v)| MapOp::Insert(m, k, v)),
        1 => (0usize..2, key()).prop_map(|(m, k)| MapOp::Remove(m, k)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let mode = prop_oneof![
        4 => Just(Some(CommitMode::Flush)),
        4 => Just(Some(CommitMode::NoFlush)),
        1 => Just(None),
    ];
    prop_oneof![
        20 => (prop::collection::vec(map_op(), 1..12), mode).prop_map(|(o, m)| Op::Tx(o, m)),
        1 => Just(Op::Reopen),
        1 => Just(Op::PowerCut),
    ]
}

const ROOTS: [u32; 2] = [0, 5];

fn check_map(rvm: &Rvm, map: PMap, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let got: BTreeMap<Vec<u8>, Vec<u8>> = map.iter(rvm).collect::<Result<_, _>>().expect("iterate");
    assert_eq!(&got, model);
    assert_eq!(map.len(rvm).expect("len"), model.len() as u64);
    for (k, v) in model {
        assert_eq!(map.get(rvm, k).expect("get").as_ref(), Some(v));
    }
    assert_eq!(map.get(rvm, b"absent-key-\xff").expect("get"), None);
}

fn run_map(ops: Vec<Op>) {
    let o = opts(1 << 20);
    let disk = SimDisk::new();
    let mut rvm = Rvm::create_with(disk.files(), &o).expect("create");
    let mut maps: Vec<PMap> = ROOTS
        .iter()
        .map(|&r| PMap::open_or_create(&rvm, r).expect("map"))
        .collect();
    let mut models = vec![BTreeMap::new(), BTreeMap::new()];
    for op in ops {
        match op {
            Op::Tx(ops, mode) => {
                let mut next = models.clone();
                let mut tx = rvm.begin();
                for mop in &ops {
                    match mop {
                        MapOp::Insert(m, k, v) => {
                            let replaced = maps[*m].insert(&mut tx, k, v).expect("insert");
                            assert_eq!(replaced, next[*m].insert(k.clone(), v.clone()).is_some());
                            // Reads inside the transaction see its changes.
                            assert_eq!(maps[*m].get(&tx, k).expect("get").as_ref(), Some(v));
                        }
                        MapOp::Remove(m, k) => {
                            let had = maps[*m].remove(&mut tx, k).expect("remove");
                            assert_eq!(had, next[*m].remove(k).is_some());
                            assert_eq!(maps[*m].get(&tx, k).expect("get"), None);
                        }
                    }
                }
                match mode {
                    Some(m) => {
                        tx.commit(m).expect("commit");
                        models = next;
                    }
                    None => tx.abort(),
                }
            }
            Op::Reopen => {
                rvm.close().expect("close");
                rvm = Rvm::open_with(disk.files(), &o).expect("open");
            }
            Op::PowerCut => {
                rvm.flush().expect("flush");
                rvm = power_cut_and_open(&disk, rvm, &o);
            }
        }
        maps = ROOTS
            .iter()
            .map(|&r| PMap::open(&rvm, r).expect("open").expect("exists"))
            .collect();
        for (m, model) in maps.iter().zip(&models) {
            check_map(&rvm, *m, model);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn map_matches_model(ops in prop::collection::vec(op(), 1..50)) {
        run_map(ops);
    }
}

#[test]
fn map_grows_past_many_rehashes_and_survives_reopen() {
    let o = opts(4 << 20);
    let disk = SimDisk::new();
    let rvm = Rvm::create_with(disk.files(), &o).expect("create");
    let map = PMap::open_or_create(&rvm, 2).expect("map");
    let mut model = BTreeMap::new();
    for batch in 0..20u32 {
        let mut tx = rvm.begin();
        for i in 0..100u32 {
            let n = batch * 100 + i;
            let k = format!("inode-{n}").into_bytes();
            let v = n.to_le_bytes().repeat((n % 7) as usize + 1);
            map.insert(&mut tx, &k, &v).expect("insert");
            model.insert(k, v);
        }
        for i in (0..100u32).step_by(3) {
            let k = format!("inode-{}", batch * 100 + i).into_bytes();
            assert!(map.remove(&mut tx, &k).expect("remove"));
            model.remove(&k);
        }
        tx.commit(CommitMode::NoFlush).expect("commit");
    }
    check_map(&rvm, map, &model);
    rvm.flush().expect("flush");
    let rvm = power_cut_and_open(&disk, rvm, &o);
    let map = PMap::open(&rvm, 2).expect("open").expect("exists");
    check_map(&rvm, map, &model);
}

#[test]
fn map_rejects_long_keys_and_bad_roots() {
    let o = opts(256 << 10);
    let disk = SimDisk::new();
    let rvm = Rvm::create_with(disk.files(), &o).expect("create");
    let map = PMap::open_or_create(&rvm, 0).expect("map");
    let mut tx = rvm.begin();
    assert!(matches!(
        map.insert(&mut tx, &[0u8; MAX_KEY + 1], b"v"),
        Err(RvmError::KeyTooLong { .. })
    ));
    map.insert(&mut tx, &[7u8; MAX_KEY], b"v")
        .expect("longest key");
    tx.commit(CommitMode::Flush).expect("commit");
    assert!(matches!(
        PMap::open_or_create(&rvm, 16),
        Err(RvmError::BadRoot { slot: 16 })
    ));
    // A root pointing at garbage is a clear error, not a panic.
    let mut tx = rvm.begin();
    tx.set_root(9, 5000).expect("root");
    tx.commit(CommitMode::Flush).expect("commit");
    assert!(matches!(PMap::open(&rvm, 9), Err(RvmError::Corrupt { .. })));
    let mut tx = rvm.begin();
    tx.set_root(9, u64::MAX - 3).expect("root");
    tx.commit(CommitMode::Flush).expect("commit");
    assert!(PMap::open(&rvm, 9).is_err());
}

// ---- heap ----

#[derive(Debug, Clone)]
enum HeapOp {
    Alloc(u64),
    Free(usize),
    DoubleFree(usize),
    AbortedAlloc(u64),
    Reopen,
}

fn heap_op() -> impl Strategy<Value = HeapOp> {
    prop_oneof![
        6 => prop_oneof![0u64..64, 0u64..3000, 0u64..40_000].prop_map(HeapOp::Alloc),
        4 => any::<usize>().prop_map(HeapOp::Free),
        1 => any::<usize>().prop_map(HeapOp::DoubleFree),
        1 => (0u64..3000).prop_map(HeapOp::AbortedAlloc),
        1 => Just(HeapOp::Reopen),
    ]
}

fn check_heap(rvm: &Rvm, live: &[(u64, u64, u8)], seg: u64) {
    let mut sorted: Vec<_> = live.to_vec();
    sorted.sort();
    for w in sorted.windows(2) {
        assert!(
            w[0].0 + w[0].1 + heap::BLOCK_HEADER <= w[1].0,
            "blocks overlap: {w:?}"
        );
    }
    for &(p, len, fill) in live {
        assert!(p >= storage::rvm::SEG_HEADER_SIZE + heap::BLOCK_HEADER && p + len <= seg);
        assert_eq!(heap::len_of(rvm, p).expect("len_of"), len);
        let mut b = vec![0u8; len as usize];
        rvm.read(p, &mut b).expect("read");
        assert!(b.iter().all(|&x| x == fill), "block {p} lost its bytes");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn heap_matches_model(ops in prop::collection::vec(heap_op(), 1..80)) {
        let seg = 256 << 10;
        let o = opts(seg);
        let disk = SimDisk::new();
        let mut rvm = Rvm::create_with(disk.files(), &o).expect("create");
        let mut live: Vec<(u64, u64, u8)> = Vec::new();
        let mut freed: Vec<u64> = Vec::new();
        let mut fill = 0u8;
        for op in ops {
            match op {
                HeapOp::Alloc(len) => {
                    fill = fill.wrapping_add(1);
                    let mut tx = rvm.begin();
                    match heap::alloc(&mut tx, len) {
                        Ok(p) => {
                            tx.write(p, &vec![fill; len as usize]).expect("fill");
                            tx.commit(CommitMode::NoFlush).expect("commit");
                            live.push((p, len, fill));
                        }
                        Err(RvmError::NoSpace { .. }) => tx.abort(),
                        Err(e) => panic!("alloc: {e}"),
                    }
                }
                HeapOp::Free(i) if !live.is_empty() => {
                    let (p, len, _) = live.swap_remove(i % live.len());
                    let mut tx = rvm.begin();
                    heap::free(&mut tx, p).expect("free");
                    tx.commit(CommitMode::Flush).expect("commit");
                    freed.push(p);
                    // The freed block is reused first by the next allocation
                    // of its size class.
                    let mut tx = rvm.begin();
                    prop_assert_eq!(heap::alloc(&mut tx, len).expect("realloc"), p);
                    tx.abort();
                }
                HeapOp::DoubleFree(i) if !freed.is_empty() => {
                    let p = freed[i % freed.len()];
                    if live.iter().all(|l| l.0 != p) {
                        let mut tx = rvm.begin();
                        let r = heap::free(&mut tx, p);
                        prop_assert!(matches!(r, Err(RvmError::BadPointer { .. })), "double free: {:?}", r);
                        tx.abort();
                    }
                    let mut tx = rvm.begin();
                    prop_assert!(heap::free(&mut tx, 4097).is_err());
                }
                HeapOp::AbortedAlloc(len) => {
                    let mut tx = rvm.begin();
                    if let Ok(p) = heap::alloc(&mut tx, len) {
                        tx.write(p, &vec![0xee; len as usize]).expect("fill");
                    }
                    tx.abort();
                }
                HeapOp::Reopen => {
                    rvm.close().expect("close");
                    rvm = Rvm::open_with(disk.files(), &o).expect("open");
                }
                _ => {}
            }
            check_heap(&rvm, &live, seg);
        }
        rvm.flush().expect("flush");
        let rvm = power_cut_and_open(&disk, rvm, &o);
        check_heap(&rvm, &live, seg);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Scribbling over a map's blocks (as a bug or bad disk might) gives
    /// errors or wrong answers, never a panic or a hang.
    #[test]
    fn corrupt_map_never_panics_or_hangs(
        scribbles in prop::collection::vec((0u64..6000, prop::collection::vec(any::<u8>(), 1..16)), 1..8)
    ) {
        let o = opts(256 << 10);
        let disk = SimDisk::new();
        let rvm = Rvm::create_with(disk.files(), &o).expect("create");
        let map = PMap::open_or_create(&rvm, 0).expect("map");
        let mut tx = rvm.begin();
        for i in 0..60u32 {
            map.insert(&mut tx, format!("k{i}").as_bytes(), &i.to_le_bytes()).expect("insert");
        }
        tx.commit(CommitMode::Flush).expect("commit");
        let mut tx = rvm.begin();
        for (off, bytes) in &scribbles {
            // Heap state and arena start: header, buckets, entries.
            let _ = tx.write(256 + off, bytes);
        }
        tx.commit(CommitMode::Flush).expect("commit");
        if let Ok(Some(map)) = PMap::open(&rvm, 0) {
            let _ = map.len(&rvm);
            let _ = map.iter(&rvm).take(100_000).count();
            for i in 0..60u32 {
                let _ = map.get(&rvm, format!("k{i}").as_bytes());
            }
            let mut tx = rvm.begin();
            let _ = map.insert(&mut tx, b"new", b"value");
            let _ = map.remove(&mut tx, b"k7");
            tx.abort();
        }
    }
}
