//! Group commit: many threads committing Flush transactions share log
//! writes and syncs, and every acknowledged commit survives a power cut.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use storage::rvm::format::LOG_DATA_START;
use storage::rvm::sim::{SimDisk, SimFileKind};
use storage::rvm::{CommitMode, Rvm, RvmOptions};

const THREADS: u64 = 8;
const PER_THREAD: u64 = 25;

fn slot(t: u64, i: u64) -> u64 {
    8192 + (t * PER_THREAD + i) * 32
}

fn pattern(t: u64, i: u64) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[..8].copy_from_slice(&t.to_le_bytes());
    p[8..16].copy_from_slice(&i.to_le_bytes());
    p[16..].fill(0xa5);
    p
}

fn hammer(rvm: &Arc<Rvm>) {
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let rvm = Arc::clone(rvm);
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    let mut tx = rvm.begin();
                    tx.write(slot(t, i), &pattern(t, i)).expect("write");
                    tx.commit(CommitMode::Flush).expect("commit");
                }
            });
        }
    });
}

fn check_all(rvm: &Rvm) {
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            let mut b = [0u8; 32];
            rvm.read(slot(t, i), &mut b).expect("read");
            assert_eq!(b, pattern(t, i), "commit {t}/{i} lost");
        }
    }
}

#[test]
fn concurrent_flush_commits_share_syncs_and_survive_power_cut() {
    let disk = SimDisk::new();
    let opts = RvmOptions {
        segment_size: 64 << 10,
        log_size: 1 << 20, // no truncation during the run
        flush_delay: Duration::MAX,
    };
    let rvm = Arc::new(Rvm::create_with(disk.files(), &opts).expect("create"));

    // Hold the first log data write until every thread has appended one
    // record: then at least THREADS - 1 records must share the next write,
    // whatever the scheduling. (Waits on a condition, not on time.)
    let handle: Arc<OnceLock<Weak<Rvm>>> = Arc::new(OnceLock::new());
    let released = Arc::new(AtomicBool::new(false));
    {
        let handle = Arc::clone(&handle);
        let released = Arc::clone(&released);
        disk.set_write_hook(Some(Arc::new(move |kind, offset, _len| {
            if kind != SimFileKind::Log
                || offset < LOG_DATA_START
                || released.load(Ordering::SeqCst)
            {
                return;
            }
            while let Some(rvm) = handle.get().and_then(Weak::upgrade) {
                if rvm.stats().commits >= THREADS {
                    break;
                }
                drop(rvm);
                std::thread::sleep(Duration::from_micros(200));
            }
            released.store(true, Ordering::SeqCst);
        })));
    }
    let _ = handle.set(Arc::downgrade(&rvm));

    let syncs_before = disk.syncs(SimFileKind::Log);
    hammer(&rvm);
    let commits = THREADS * PER_THREAD;
    let syncs = disk.syncs(SimFileKind::Log) - syncs_before;
    let stats = rvm.stats();
    assert_eq!(stats.commits, commits);
    assert_eq!(stats.truncations, 0);
    assert_eq!(syncs, stats.log_writes, "one sync per log write");
    assert!(
        syncs < commits,
        "group commit should share syncs: {syncs} syncs for {commits} commits"
    );
    assert!(
        syncs <= commits - (THREADS - 2),
        "the held write should have batched the others: {syncs} syncs"
    );
    check_all(&rvm);

    // Power cut with nothing unsynced kept: every acknowledged commit is in
    // the log.
    disk.set_write_hook(None);
    disk.fail_after(0);
    drop(Arc::try_unwrap(rvm).expect("last reference"));
    disk.crash(&mut || false);
    let rvm = Rvm::open_with(disk.files(), &opts).expect("open");
    check_all(&rvm);
}

#[test]
fn concurrent_flush_commits_on_real_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = RvmOptions {
        segment_size: 64 << 10,
        log_size: 32 << 10, // small: truncations happen under load
        ..RvmOptions::default()
    };
    let rvm = Arc::new(Rvm::create(dir.path(), &opts).expect("create"));
    hammer(&rvm);
    assert_eq!(rvm.stats().commits, THREADS * PER_THREAD);
    let rvm = Arc::try_unwrap(rvm).expect("last reference");
    // No clean close: recover from the log and the truncated segment.
    std::mem::forget(rvm);
    let rvm = Rvm::open(dir.path(), &opts).expect("open");
    check_all(&rvm);
}
