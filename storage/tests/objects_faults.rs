//! Injected disk errors surface as `StoreError` values with the right
//! variant, op and errno, change no metadata, and the store keeps working.

use std::sync::Arc;

use iobuf::IoBuf;
use storage::objects::{
    ChunkId, FaultOp, FaultPlan, Fid, MemoryMeta, ObjectStore, StoreError, StoreOp, StoreOptions,
};

fn chunk(i: u64) -> ChunkId {
    ChunkId::new(
        Fid {
            volume: 3,
            vnode: 9,
            unique: 27,
        },
        i,
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    meta: Arc<MemoryMeta>,
    plan: Arc<FaultPlan>,
    store: ObjectStore,
}

fn setup(direct: bool) -> Setup {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let meta = Arc::new(MemoryMeta::new());
    let plan = Arc::new(FaultPlan::new());
    let store = ObjectStore::open(
        dir.path(),
        meta.clone(),
        StoreOptions {
            direct_io: direct,
            buf_size: 16 * 1024,
            bufs_per_worker: 4,
            faults: Some(plan.clone()),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    Setup {
        _dir: dir,
        meta,
        plan,
        store,
    }
}

fn write(s: &ObjectStore, c: ChunkId, off: u64, data: &[u8]) -> Result<(), StoreError> {
    let (r, buf) = s.write(c, off, IoBuf::from_slice(data)).wait();
    assert_eq!(buf.as_slice(), data, "the buffer comes back intact");
    r
}

fn read(s: &ObjectStore, c: ChunkId, off: u64, len: usize) -> Result<Vec<u8>, StoreError> {
    let mut buf = IoBuf::alloc(len);
    buf.set_len(len);
    let (r, buf) = s.read(c, off, buf).wait();
    r.map(|n| {
        assert_eq!(n, len);
        buf.as_slice().to_vec()
    })
}

fn assert_io(e: StoreError, op: StoreOp, errno: i32, c: ChunkId, off: u64) {
    match &e {
        StoreError::Io {
            op: o,
            chunk,
            offset,
            ..
        } => {
            assert_eq!((*o, *chunk, *offset), (op, c, off), "{e}");
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(e.errno(), Some(errno));
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn eio_on_write_is_an_error_and_later_writes_work() {
    for direct in [true, false] {
        let s = setup(direct);
        let c = chunk(0);
        write(&s.store, c, 0, &[1; 8192]).unwrap();
        let before = s.store.stat(c).unwrap();
        s.plan.fail_next(FaultOp::Write, libc::EIO);
        let e = write(&s.store, c, 4096, &[2; 4096]).unwrap_err();
        assert_io(e, StoreOp::Write, libc::EIO, c, 4096);
        assert_eq!(s.plan.fired(), 1);
        // A failed write changes no metadata.
        assert_eq!(s.store.stat(c).unwrap(), before);
        write(&s.store, c, 4096, &[3; 4096]).unwrap();
        let got = read(&s.store, c, 0, 8192).unwrap();
        assert_eq!(&got[..4096], &[1; 4096][..]);
        assert_eq!(&got[4096..], &[3; 4096][..]);
        assert_eq!(s.store.stat(c).unwrap().unwrap().version, 2);
    }
}

#[test]
fn eio_in_read_modify_write_fails_the_write() {
    let s = setup(true);
    let c = chunk(1);
    write(&s.store, c, 0, &[5; 10_000]).unwrap();
    // Unaligned on O_DIRECT: the block-edge read fails.
    s.plan.fail_next(FaultOp::Read, libc::EIO);
    let e = write(&s.store, c, 100, &[6; 50]).unwrap_err();
    assert_io(e, StoreOp::Write, libc::EIO, c, 100);
    assert!(s.store.stats().bounced > 0);
    assert_eq!(read(&s.store, c, 0, 10_000).unwrap(), vec![5; 10_000]);
}

#[test]
fn eio_on_read_is_an_error_and_later_reads_work() {
    for direct in [true, false] {
        let s = setup(direct);
        let c = chunk(2);
        write(&s.store, c, 0, &[9; 4096]).unwrap();
        s.plan.fail_next(FaultOp::Read, libc::EIO);
        let e = read(&s.store, c, 0, 4096).unwrap_err();
        assert_io(e, StoreOp::Read, libc::EIO, c, 0);
        assert_eq!(read(&s.store, c, 0, 4096).unwrap(), vec![9; 4096]);
    }
}

#[test]
fn enospc_on_write_is_no_space() {
    let s = setup(true);
    let c = chunk(3);
    s.plan.fail_next(FaultOp::Write, libc::ENOSPC);
    let e = write(&s.store, c, 0, &[1; 4096]).unwrap_err();
    match &e {
        StoreError::NoSpace {
            op, chunk, offset, ..
        } => assert_eq!((*op, *chunk, *offset), (StoreOp::Write, c, 0)),
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(e.errno(), Some(libc::ENOSPC));
    assert_eq!(s.store.stat(c).unwrap(), None);
    write(&s.store, c, 0, &[1; 4096]).unwrap();
    assert_eq!(s.store.stat(c).unwrap().unwrap().version, 1);
}

#[test]
fn punch_and_zero_failures_surface() {
    let s = setup(true);
    let c = chunk(4);
    write(&s.store, c, 0, &[7; 8192]).unwrap();
    s.plan.fail_next(FaultOp::Punch, libc::EIO);
    let e = s.store.punch(c, 0, 4096).wait().unwrap_err();
    assert_io(e, StoreOp::Punch, libc::EIO, c, 0);
    s.plan.fail_next(FaultOp::Zero, libc::ENOSPC);
    let e = s.store.zero(c, 4096, 4096).wait().unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::NoSpace {
                op: StoreOp::Zero,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(read(&s.store, c, 0, 8192).unwrap(), vec![7; 8192]);
    s.store.punch(c, 0, 4096).wait().unwrap();
    s.store.zero(c, 4096, 100).wait().unwrap();
    let got = read(&s.store, c, 0, 8192).unwrap();
    assert!(got[..4196].iter().all(|&b| b == 0));
    assert!(got[4196..].iter().all(|&b| b == 7));
    assert_eq!(s.store.stat(c).unwrap().unwrap().version, 3);
}

#[test]
fn failed_flush_skips_metadata_and_is_retried() {
    let s = setup(true);
    let c = chunk(5);
    write(&s.store, c, 0, &[4; 4096]).unwrap();
    s.plan.fail_next(FaultOp::Sync, libc::EIO);
    let e = s.store.flush().wait().unwrap_err();
    assert_eq!(e.op(), Some(StoreOp::Flush));
    assert_eq!(e.errno(), Some(libc::EIO));
    // Data did not reach the disk, so the metadata was not flushed either.
    assert_eq!(s.meta.flush_count(), 0);
    // The next flush syncs what the failed one did not.
    let fired = s.plan.fired();
    s.plan.fail_range(FaultOp::Sync, 1, 100, libc::EIO);
    assert!(s.store.flush().wait().is_err());
    assert!(s.plan.fired() > fired, "the retry did sync something");
    s.plan.clear();
    s.store.flush().wait().unwrap();
    assert_eq!(s.meta.flush_count(), 1);
    // And with nothing changed since, flush just flushes metadata.
    s.store.flush().wait().unwrap();
    assert_eq!(s.meta.flush_count(), 2);
    assert_eq!(read(&s.store, c, 0, 4096).unwrap(), vec![4; 4096]);
}

#[test]
fn einval_on_direct_open_falls_back_to_buffered() {
    let s = setup(true);
    assert!(s.store.direct_io());
    s.plan.fail_next(FaultOp::Open, libc::EINVAL);
    let c = chunk(6);
    write(&s.store, c, 10, b"fallback").unwrap();
    assert!(!s.store.direct_io(), "store remembers O_DIRECT is refused");
    assert_eq!(read(&s.store, c, 10, 8).unwrap(), b"fallback");
    let st = s.store.stats();
    assert_eq!(st.bounced, 0, "buffered files need no bounce: {st:?}");
    assert!(st.files_opened_buffered >= 1);
}

#[test]
fn open_failure_is_an_error_and_store_keeps_working() {
    let s = setup(true);
    let c = chunk(7);
    s.plan.fail_next(FaultOp::Open, libc::EMFILE);
    let e = write(&s.store, c, 0, b"x").unwrap_err();
    assert_io(e, StoreOp::Open, libc::EMFILE, c, 0);
    write(&s.store, c, 0, b"x").unwrap();
    assert_eq!(read(&s.store, c, 0, 1).unwrap(), b"x");
}

#[test]
fn bad_ranges_are_rejected_without_touching_anything() {
    let s = setup(true);
    let c = chunk(8);
    let e = write(&s.store, c, u64::MAX - 1, b"abc").unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Invalid {
                op: StoreOp::Write,
                ..
            }
        ),
        "{e:?}"
    );
    let e = s.store.punch(c, i64::MAX as u64, 1).wait().unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Invalid {
                op: StoreOp::Punch,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(s.store.stat(c).unwrap(), None);
    assert!(!s.store.chunk_path(c).exists());
}

/// A burst of in-flight writes where every third fails: each answer is its
/// own, and the survivors are all on disk.
#[test]
fn faults_among_many_in_flight() {
    let s = setup(true);
    let c = chunk(9);
    // Counted per disk write: the store may reorder non-conflicting ops, so
    // which ones fail is not fixed, only how many.
    for k in 0..10 {
        s.plan.fail_nth(FaultOp::Write, 3 * k + 1, libc::EIO);
    }
    let flying: Vec<_> = (0..30u8)
        .map(|i| {
            let off = u64::from(i) * 4096;
            (i, s.store.write(c, off, IoBuf::from_slice(&[i + 1; 4096])))
        })
        .collect();
    let mut failed = 0;
    let mut ok = Vec::new();
    for (i, p) in flying {
        match p.wait().0 {
            Ok(()) => ok.push(i),
            Err(e) => {
                assert_eq!(e.errno(), Some(libc::EIO));
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 10);
    for i in ok {
        assert_eq!(
            read(&s.store, c, u64::from(i) * 4096, 4096).unwrap(),
            vec![i + 1; 4096]
        );
    }
    assert_eq!(s.store.stat(c).unwrap().unwrap().version, 20);
}

/// What a flush syncs: every chunk file changed since the last flush (once)
/// and every directory whose entries changed; nothing when nothing changed.
#[test]
fn flush_syncs_exactly_what_changed() {
    let s = setup(true);
    let syncs = || s.plan.seen(FaultOp::Sync);
    // Three new chunks: three files, plus their new fan-out directories and
    // `objects/` itself (at least one directory).
    for i in 0..3 {
        write(&s.store, chunk(100 + i), 0, b"new").unwrap();
    }
    let before = syncs();
    s.store.flush().wait().unwrap();
    let first = syncs() - before;
    assert!(first >= 4, "3 files + directories, got {first}");
    // Nothing changed: no sync at all, but metadata is still flushed.
    let before = syncs();
    s.store.flush().wait().unwrap();
    assert_eq!(syncs(), before);
    assert_eq!(s.meta.flush_count(), 2);
    // Two writes to one existing chunk: one fdatasync.
    write(&s.store, chunk(100), 0, b"again").unwrap();
    write(&s.store, chunk(100), 9000, b"and again").unwrap();
    let before = syncs();
    s.store.flush().wait().unwrap();
    assert_eq!(syncs() - before, 1);
    // A removal: the directory that held the file.
    s.store.remove(chunk(101)).wait().unwrap();
    let before = syncs();
    s.store.flush().wait().unwrap();
    assert_eq!(syncs() - before, 1);
    // Reads change nothing.
    read(&s.store, chunk(102), 0, 3).unwrap();
    let before = syncs();
    s.store.flush().wait().unwrap();
    assert_eq!(syncs(), before);
}
