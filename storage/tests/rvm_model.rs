//! Property tests: RVM transactions against a plain byte-vector model.
//! Commit (both modes), abort, overlapping ranges inside one transaction,
//! explicit flush and truncation, and reopen after a clean close or after a
//! power cut that keeps only synced bytes.

use std::time::Duration;

use proptest::prelude::*;
use storage::rvm::sim::SimDisk;
use storage::rvm::{CommitMode, Rvm, RvmOptions};

const SEG: u64 = 48 << 10;
const USER: u64 = 64; // first writable byte

#[derive(Debug, Clone)]
enum Step {
    /// `write(offset, [byte; len])`
    Write(u64, usize, u8),
    /// `set_range(offset, len)` without writing
    Range(u64, u64),
}

#[derive(Debug, Clone)]
enum Op {
    Tx(Vec<Step>, End),
    Flush,
    Truncate,
    /// Clean close and open.
    Reopen,
    /// Flush, then lose power (only synced bytes survive) and open.
    CrashAfterFlush,
}

#[derive(Debug, Clone, Copy)]
enum End {
    Flush,
    NoFlush,
    Abort,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (USER..SEG - 1, 1usize..1500, any::<u8>()).prop_map(|(o, l, b)| {
            let l = l.min((SEG - o) as usize);
            Step::Write(o, l, b)
        }),
        1 => (USER..SEG - 1, 1u64..3000).prop_map(|(o, l)| Step::Range(o, l.min(SEG - o))),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let end = prop_oneof![
        3 => Just(End::Flush),
        3 => Just(End::NoFlush),
        2 => Just(End::Abort)
    ];
    prop_oneof![
        12 => (prop::collection::vec(step(), 1..6), end).prop_map(|(s, e)| Op::Tx(s, e)),
        1 => Just(Op::Flush),
        1 => Just(Op::Truncate),
        1 => Just(Op::Reopen),
        1 => Just(Op::CrashAfterFlush),
    ]
}

fn check(rvm: &Rvm, model: &[u8]) {
    let mut img = vec![0u8; (SEG - USER) as usize];
    rvm.read(USER, &mut img).expect("read");
    assert!(
        img == model[USER as usize..],
        "rvm image differs from model"
    );
}

fn run(ops: Vec<Op>, opts: RvmOptions) {
    let disk = SimDisk::new();
    let mut rvm = Rvm::create_with(disk.files(), &opts).expect("create");
    let mut model = vec![0u8; SEG as usize];
    for op in ops {
        match op {
            Op::Tx(steps, end) => {
                let mut shadow = model.clone();
                let mut tx = rvm.begin();
                for s in &steps {
                    match *s {
                        Step::Write(o, l, b) => {
                            tx.write(o, &vec![b; l]).expect("write");
                            shadow[o as usize..o as usize + l].fill(b);
                        }
                        Step::Range(o, l) => tx.set_range(o, l).expect("range"),
                    }
                }
                // The transaction sees its own writes.
                let mut seen = vec![0u8; (SEG - USER) as usize];
                tx.read(USER, &mut seen).expect("read");
                assert!(seen == shadow[USER as usize..]);
                match end {
                    End::Flush => {
                        tx.commit(CommitMode::Flush).expect("commit");
                        model = shadow;
                    }
                    End::NoFlush => {
                        tx.commit(CommitMode::NoFlush).expect("commit");
                        model = shadow;
                    }
                    End::Abort => tx.abort(),
                }
            }
            Op::Flush => rvm.flush().expect("flush"),
            Op::Truncate => rvm.truncate().expect("truncate"),
            Op::Reopen => {
                rvm.close().expect("close");
                rvm = Rvm::open_with(disk.files(), &opts).expect("open");
            }
            Op::CrashAfterFlush => {
                rvm.flush().expect("flush");
                disk.fail_after(0);
                drop(rvm);
                disk.crash(&mut || false);
                rvm = Rvm::open_with(disk.files(), &opts).expect("open");
            }
        }
        check(&rvm, &model);
    }
    rvm.close().expect("close");
    let rvm = Rvm::open_with(disk.files(), &opts).expect("open");
    check(&rvm, &model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// No background thread: truncation runs inline when the small log is
    /// half full, and in the commit that finds it full.
    #[test]
    fn transactions_match_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops, RvmOptions { segment_size: SEG, log_size: 24 << 10, flush_delay: Duration::MAX });
    }

    /// With the background flusher (its timing does not change results).
    #[test]
    fn transactions_match_model_with_flusher(ops in prop::collection::vec(op(), 1..30)) {
        run(ops, RvmOptions { segment_size: SEG, log_size: 24 << 10, flush_delay: Duration::from_micros(200) });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// The same on real files (O_DIRECT log where the file system allows).
    #[test]
    fn transactions_match_model_on_real_files(ops in prop::collection::vec(op(), 1..20)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = RvmOptions { segment_size: SEG, log_size: 24 << 10, flush_delay: Duration::MAX };
        let mut rvm = Rvm::create(dir.path(), &opts).expect("create");
        let mut model = vec![0u8; SEG as usize];
        for op in ops {
            match op {
                Op::Tx(steps, end) => {
                    let mut shadow = model.clone();
                    let mut tx = rvm.begin();
                    for s in &steps {
                        if let Step::Write(o, l, b) = *s {
                            tx.write(o, &vec![b; l]).expect("write");
                            shadow[o as usize..o as usize + l].fill(b);
                        }
                    }
                    match end {
                        End::Abort => tx.abort(),
                        End::Flush => { tx.commit(CommitMode::Flush).expect("commit"); model = shadow; }
                        End::NoFlush => { tx.commit(CommitMode::NoFlush).expect("commit"); model = shadow; }
                    }
                }
                Op::Flush | Op::CrashAfterFlush => rvm.flush().expect("flush"),
                Op::Truncate => rvm.truncate().expect("truncate"),
                Op::Reopen => {
                    rvm.close().expect("close");
                    rvm = Rvm::open(dir.path(), &opts).expect("open");
                }
            }
            check(&rvm, &model);
        }
        // Reopen without a clean close: the log carries the flushed state.
        rvm.flush().expect("flush");
        std::mem::forget(rvm);
        let rvm = Rvm::open(dir.path(), &opts).expect("open");
        check(&rvm, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Garbage anywhere in the record area (a bad disk, a bug) makes
    /// recovery stop there: the result is the state after some prefix of
    /// the commits, never a panic or a mix.
    #[test]
    fn garbage_in_the_log_recovers_a_prefix(
        n in 1usize..12,
        at in 0u64..8000,
        garbage in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let opts = RvmOptions { segment_size: SEG, log_size: 64 << 10, flush_delay: Duration::MAX };
        let disk = SimDisk::new();
        let rvm = Rvm::create_with(disk.files(), &opts).expect("create");
        let mut states = vec![vec![0u8; (SEG - USER) as usize]];
        for i in 0..n {
            let id = i as u8 + 1;
            let mut tx = rvm.begin();
            let mut next = states[i].clone();
            for r in 0..3u64 {
                let off = USER + (i as u64 * 977 + r * 5003) % (SEG - USER - 300);
                tx.write(off, &[id; 300]).expect("w");
                next[(off - USER) as usize..(off - USER) as usize + 300].fill(id);
            }
            tx.commit(CommitMode::Flush).expect("commit");
            states.push(next);
        }
        disk.fail_after(0);
        drop(rvm);
        disk.crash(&mut || false);
        disk.poke(storage::rvm::sim::SimFileKind::Log, storage::rvm::format::LOG_DATA_START + at, &garbage);
        let rvm = Rvm::open_with(disk.files(), &opts).expect("open");
        let mut img = vec![0u8; (SEG - USER) as usize];
        rvm.read(USER, &mut img).expect("read");
        prop_assert!(states.contains(&img), "recovered state is not a prefix");
    }
}
