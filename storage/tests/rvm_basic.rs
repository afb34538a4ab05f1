//! RVM on real files and on the simulated disk: create/open, reopen,
//! abort, bad headers, stale records in a reused log, oversized and
//! log-filling transactions.

use std::time::Duration;

use storage::rvm::format::{
    self, LogHeader, BLOCK, LOG_DATA_START, LOG_OFF_VERSION, SECTOR, SEG_OFF_CRC, SEG_OFF_MAGIC,
    SEG_OFF_SIZE, SEG_OFF_VERSION,
};
use storage::rvm::heap;
use storage::rvm::map::PMap;
use storage::rvm::sim::{SimDisk, SimFileKind};
use storage::rvm::{CommitMode, Rvm, RvmError, RvmOptions};

fn small() -> RvmOptions {
    RvmOptions {
        segment_size: 64 << 10,
        log_size: 32 << 10,
        flush_delay: Duration::MAX,
    }
}

fn read(rvm: &Rvm, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    rvm.read(off, &mut b).expect("read");
    b
}

/// Makes everything after this point vanish as a power cut would, without
/// the clean-close truncation.
fn power_cut(disk: &SimDisk, rvm: Rvm) {
    disk.fail_after(0);
    drop(rvm);
    disk.crash(&mut || false);
}

#[test]
fn real_files_create_commit_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = RvmOptions {
        segment_size: 1 << 20,
        log_size: 256 << 10,
        ..RvmOptions::default()
    };
    let rvm = Rvm::create(dir.path(), &opts).expect("create");
    assert_eq!(rvm.segment_size(), 1 << 20);
    let mut tx = rvm.begin();
    tx.write(5000, b"durable").expect("write");
    tx.commit(CommitMode::Flush).expect("commit");
    let mut tx = rvm.begin();
    tx.write(9000, b"later").expect("write");
    tx.commit(CommitMode::NoFlush).expect("commit");
    let mut tx = rvm.begin();
    tx.write(5000, b"ABORTED").expect("write");
    tx.abort();
    rvm.flush().expect("flush");
    assert_eq!(read(&rvm, 5000, 7), b"durable");
    drop(rvm);

    // Creating over existing files is refused.
    match Rvm::create(dir.path(), &opts) {
        Err(RvmError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists)
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }

    let rvm = Rvm::open(dir.path(), &opts).expect("open");
    assert_eq!(read(&rvm, 5000, 7), b"durable");
    assert_eq!(read(&rvm, 9000, 5), b"later");
    // A crash-free reopen without close: the log alone carries the commit.
    let mut tx = rvm.begin();
    tx.write(7000, b"from-log").expect("write");
    tx.commit(CommitMode::Flush).expect("commit");
    std::mem::forget(rvm); // no clean close: nothing truncated
    let rvm = Rvm::open(dir.path(), &opts).expect("reopen");
    assert_eq!(read(&rvm, 7000, 8), b"from-log");
    rvm.close().expect("close");
}

#[test]
fn real_files_background_flusher_makes_noflush_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = RvmOptions {
        segment_size: 256 << 10,
        log_size: 64 << 10,
        flush_delay: Duration::from_millis(1),
    };
    let rvm = Rvm::create(dir.path(), &opts).expect("create");
    // Many small NoFlush commits: the flusher flushes, and truncates when
    // the log passes half full.
    for i in 0..400u64 {
        let mut tx = rvm.begin();
        tx.write(8192 + (i % 64) * 16, &i.to_le_bytes())
            .expect("write");
        tx.commit(CommitMode::NoFlush).expect("commit");
    }
    rvm.flush().expect("flush");
    std::mem::forget(rvm);
    let rvm = Rvm::open(dir.path(), &opts).expect("reopen");
    for j in 0..64u64 {
        let last = (336..400).find(|i| i % 64 == j).expect("exists");
        assert_eq!(read(&rvm, 8192 + j * 16, 8), last.to_le_bytes());
    }
}

#[test]
fn reserved_and_out_of_range_writes_are_refused() {
    let disk = SimDisk::new();
    let rvm = Rvm::create_with(disk.files(), &small()).expect("create");
    let mut tx = rvm.begin();
    assert!(matches!(tx.write(0, b"x"), Err(RvmError::Reserved { .. })));
    assert!(matches!(
        tx.set_range(60, 8),
        Err(RvmError::Reserved { .. })
    ));
    assert!(matches!(
        tx.write((64 << 10) - 2, b"xyz"),
        Err(RvmError::OutOfRange { .. })
    ));
    assert!(matches!(
        tx.set_range(u64::MAX - 1, 4),
        Err(RvmError::OutOfRange { .. })
    ));
    assert!(matches!(tx.set_root(16, 1), Err(RvmError::BadRoot { .. })));
    tx.set_root(3, 77).expect("root");
    tx.commit(CommitMode::Flush).expect("commit");
    assert_eq!(rvm.root(3).expect("root"), 77);
    let mut b = [0u8; 4];
    assert!(matches!(
        rvm.read(64 << 10, &mut b),
        Err(RvmError::OutOfRange { .. })
    ));
}

#[test]
fn abort_and_drop_restore_overlapping_ranges() {
    let disk = SimDisk::new();
    let rvm = Rvm::create_with(disk.files(), &small()).expect("create");
    let mut tx = rvm.begin();
    tx.write(1000, &[1u8; 100]).expect("w");
    tx.commit(CommitMode::Flush).expect("c");
    {
        let mut tx = rvm.begin();
        tx.write(1050, &[2u8; 100]).expect("w");
        tx.set_range(900, 120).expect("range");
        tx.write(990, &[3u8; 30]).expect("w");
        let mut b = [0u8; 10];
        tx.read(1015, &mut b).expect("r");
        assert_eq!(
            b,
            [3u8; 5]
                .iter()
                .chain([1u8; 5].iter())
                .copied()
                .collect::<Vec<_>>()[..]
        );
        // dropped without commit
    }
    let mut expect = vec![0u8; 300];
    expect[100..200].fill(1);
    assert_eq!(read(&rvm, 900, 300), expect);
}

#[test]
fn transaction_larger_than_log_is_refused_and_undone() {
    let disk = SimDisk::new();
    let rvm = Rvm::create_with(disk.files(), &small()).expect("create");
    let mut tx = rvm.begin();
    tx.write(4096, &[7u8; 40 << 10]).expect("w");
    match tx.commit(CommitMode::Flush) {
        Err(RvmError::TooLarge { .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(read(&rvm, 4096, 16), [0u8; 16]);
    // The instance still works.
    let mut tx = rvm.begin();
    tx.write(4096, &[8u8; 16]).expect("w");
    tx.commit(CommitMode::Flush).expect("commit");
    assert_eq!(read(&rvm, 4096, 16), [8u8; 16]);
}

#[test]
fn log_full_commit_truncates_first_and_loses_nothing() {
    let disk = SimDisk::new();
    let rvm = Rvm::create_with(disk.files(), &small()).expect("create");
    // Each record is ~10 KiB in a 28 KiB record area: the third NoFlush
    // commit finds the log full (half-full truncation is inline after the
    // second).
    for i in 0..10u8 {
        let mut tx = rvm.begin();
        tx.write(4096 + (i as u64 % 4) * 10_000, &[i + 1; 10_000])
            .expect("w");
        tx.commit(CommitMode::NoFlush).expect("commit");
    }
    assert!(rvm.stats().truncations >= 3, "{:?}", rvm.stats());
    rvm.flush().expect("flush");
    power_cut(&disk, rvm);
    let rvm = Rvm::open_with(disk.files(), &small()).expect("open");
    for slot in 0..4u64 {
        let last = (0..10u8)
            .filter(|i| *i as u64 % 4 == slot)
            .max()
            .expect("some");
        assert_eq!(
            read(&rvm, 4096 + slot * 10_000, 10_000),
            vec![last + 1; 10_000]
        );
    }
}

#[test]
fn log_full_with_background_flusher() {
    let disk = SimDisk::new();
    let opts = RvmOptions {
        flush_delay: Duration::from_secs(3600),
        ..small()
    };
    let rvm = Rvm::create_with(disk.files(), &opts).expect("create");
    for i in 0..20u8 {
        let mut tx = rvm.begin();
        tx.write(4096 + (i as u64 % 3) * 12_000, &[i + 1; 12_000])
            .expect("w");
        tx.commit(CommitMode::Flush).expect("commit");
    }
    power_cut(&disk, rvm);
    let rvm = Rvm::open_with(disk.files(), &opts).expect("open");
    for slot in 0..3u64 {
        let last = (0..20u8)
            .filter(|i| *i as u64 % 3 == slot)
            .max()
            .expect("some");
        assert_eq!(
            read(&rvm, 4096 + slot * 12_000, 12_000),
            vec![last + 1; 12_000]
        );
    }
}

#[test]
fn stale_records_of_an_older_epoch_are_not_replayed() {
    let disk = SimDisk::new();
    let rvm = Rvm::create_with(disk.files(), &small()).expect("create");
    // Epoch A: five records, each setting offset 8192 to a new value and
    // leaving a mark of its own.
    for v in 1..=5u8 {
        let mut tx = rvm.begin();
        tx.write(8192, &[v; 512]).expect("w");
        tx.write(20_000 + v as u64 * 8, &[v; 8]).expect("w");
        tx.commit(CommitMode::Flush).expect("c");
    }
    rvm.truncate().expect("truncate");
    // Epoch B: one record in the same place; the old records 2..5 still sit
    // in the file after it.
    let mut tx = rvm.begin();
    tx.write(8192, &[42u8; 512]).expect("w");
    tx.write(20_000 + 8, &[42u8; 8]).expect("w");
    tx.commit(CommitMode::Flush).expect("c");
    power_cut(&disk, rvm);

    let rvm = Rvm::open_with(disk.files(), &small()).expect("open");
    assert_eq!(read(&rvm, 8192, 512), vec![42u8; 512]);
    assert_eq!(read(&rvm, 20_008, 8), [42u8; 8]);
    drop(rvm);

    // Stronger: forge a header for a new epoch whose start sequence is that
    // of epoch A's first record, over epoch A's records. Only the epoch in
    // the checksum stops them now.
    let disk = SimDisk::new();
    let rvm = Rvm::create_with(disk.files(), &small()).expect("create");
    for v in 1..=5u8 {
        let mut tx = rvm.begin();
        tx.write(8192, &[v; 512]).expect("w");
        tx.commit(CommitMode::Flush).expect("c");
    }
    let log = disk.durable(SimFileKind::Log);
    let h = LogHeader::decode_block(&log[..BLOCK as usize], "log".as_ref()).expect("header");
    power_cut(&disk, rvm);
    let mut block = log[..BLOCK as usize].to_vec();
    LogHeader {
        epoch: h.epoch + 1,
        ..h
    }
    .encode_into_block(&mut block);
    disk.poke(SimFileKind::Log, 0, &block);
    let rvm = Rvm::open_with(disk.files(), &small()).expect("open");
    assert_eq!(read(&rvm, 8192, 512), vec![0u8; 512]);
    // Control: with the original header back, the same records do replay
    // (so the forgery above was faithful but for the epoch).
    drop(rvm);
    disk.poke(SimFileKind::Log, 0, &log[..BLOCK as usize]);
    let rvm = Rvm::open_with(disk.files(), &small()).expect("open");
    assert_eq!(read(&rvm, 8192, 512), vec![5u8; 512]);
}

#[test]
fn bad_versions_and_corrupt_headers_are_clear_errors() {
    let make = || {
        let disk = SimDisk::new();
        let rvm = Rvm::create_with(disk.files(), &small()).expect("create");
        rvm.close().expect("close");
        disk
    };
    let open = |disk: &SimDisk| Rvm::open_with(disk.files(), &small());

    // Segment version.
    let disk = make();
    disk.poke(
        SimFileKind::Segment,
        SEG_OFF_VERSION as u64,
        &2u32.to_le_bytes(),
    );
    match open(&disk) {
        Err(RvmError::BadVersion {
            what: "segment",
            found: 2,
            supported: 1,
            ..
        }) => {}
        other => panic!("expected segment BadVersion, got {other:?}"),
    }
    // Segment magic.
    let disk = make();
    disk.poke(SimFileKind::Segment, SEG_OFF_MAGIC as u64, b"NOTRVM!!");
    assert!(matches!(open(&disk), Err(RvmError::Corrupt { .. })));
    // Segment header bit flip: checksum.
    let disk = make();
    disk.poke(SimFileKind::Segment, SEG_OFF_SIZE as u64 + 3, &[0x55]);
    let e = open(&disk).expect_err("corrupt");
    assert!(matches!(e, RvmError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("checksum"), "{e}");
    let disk = make();
    disk.poke(SimFileKind::Segment, SEG_OFF_CRC as u64, &[0, 0, 0, 0]);
    assert!(matches!(open(&disk), Err(RvmError::Corrupt { .. })));
    // Log version in either slot.
    let disk = make();
    disk.poke(
        SimFileKind::Log,
        LOG_OFF_VERSION as u64,
        &9u32.to_le_bytes(),
    );
    match open(&disk) {
        Err(RvmError::BadVersion {
            what: "log",
            found: 9,
            ..
        }) => {}
        other => panic!("expected log BadVersion, got {other:?}"),
    }
    // Both log slots torn.
    let disk = make();
    disk.poke(SimFileKind::Log, 20, &[0xaa]);
    disk.poke(SimFileKind::Log, SECTOR + 20, &[0xaa]);
    assert!(matches!(open(&disk), Err(RvmError::Corrupt { .. })));
    // Log zeroed: not an RVM log.
    let disk = make();
    disk.poke(SimFileKind::Log, 0, &[0u8; 4096]);
    let e = open(&disk).expect_err("corrupt");
    assert!(e.to_string().contains("magic"), "{e}");
    // A log of another segment.
    let a = make();
    let b = make();
    let files = storage::rvm::RvmFiles {
        segment: a.files().segment,
        log: b.files().log,
    };
    let e = Rvm::open_with(files, &small()).expect_err("mismatch");
    assert!(e.to_string().contains("another segment"), "{e}");
    // Empty or short files.
    let empty = SimDisk::new();
    assert!(matches!(open(&empty), Err(RvmError::Corrupt { .. })));
    // Garbage record area is just the end of the log.
    let disk = make();
    disk.poke(SimFileKind::Log, LOG_DATA_START, &[0xffu8; 4096]);
    open(&disk).expect("garbage after the header is an empty log");

    // Heap and map versions.
    let disk = make();
    {
        let rvm = open(&disk).expect("open");
        let m = PMap::open_or_create(&rvm, 0).expect("map");
        let mut tx = rvm.begin();
        m.insert(&mut tx, b"k", b"v").expect("insert");
        tx.commit(CommitMode::Flush).expect("commit");
        let hdr = rvm.root(0).expect("root");
        let mut tx = rvm.begin();
        tx.write_u32(hdr + 4, 7).expect("w");
        tx.commit(CommitMode::Flush).expect("commit");
        match PMap::open_or_create(&rvm, 0) {
            Err(RvmError::BadVersion { what: "map", .. }) => {}
            other => panic!("expected map BadVersion, got {other:?}"),
        }
        let mut tx = rvm.begin();
        tx.write_u32(heap::HEAP_OFF_VERSION, 3).expect("w");
        match heap::alloc(&mut tx, 10) {
            Err(RvmError::BadVersion { what: "heap", .. }) => {}
            other => panic!("expected heap BadVersion, got {other:?}"),
        }
        tx.abort();
    }
    let _ = format::SEG_HEADER_SIZE;
}

#[test]
fn recovery_starts_a_new_epoch_so_records_after_a_torn_one_stay_dead() {
    let disk = SimDisk::new();
    let rvm = Rvm::create_with(disk.files(), &small()).expect("create");
    // Record 1 is exactly one block (24 header + 16 range header + 4056),
    // so record 2 starts the next block, beyond what a rewrite of record 1's
    // block (zero-padded) touches.
    let mut tx = rvm.begin();
    tx.write(8192, &[1u8; 4056]).expect("w");
    tx.commit(CommitMode::NoFlush).expect("c");
    let mut tx = rvm.begin();
    tx.write(16_384, &[2u8; 8]).expect("w");
    tx.commit(CommitMode::NoFlush).expect("c");
    // The log write lands, its sync does not; the power cut then loses the
    // first sector of the write only: record 1 torn, record 2 intact.
    disk.fail_after(1);
    assert!(rvm.flush().is_err());
    drop(rvm);
    let mut first = true;
    disk.crash(&mut || !std::mem::replace(&mut first, false));
    let rvm = Rvm::open_with(disk.files(), &small()).expect("open");
    assert_eq!(
        read(&rvm, 8192, 8),
        [0u8; 8],
        "torn record 1 is not replayed"
    );
    assert_eq!(read(&rvm, 16_384, 8), [0u8; 8], "nor record 2 after it");
    // A new record of the same length and sequence number takes record 1's
    // place. Were the epoch not new, the old record 2 right after it would
    // verify and come back from the dead.
    let mut tx = rvm.begin();
    tx.write(8192, &[3u8; 4056]).expect("w");
    tx.commit(CommitMode::Flush).expect("c");
    power_cut(&disk, rvm);
    let rvm = Rvm::open_with(disk.files(), &small()).expect("open");
    assert_eq!(read(&rvm, 8192, 4056), vec![3u8; 4056]);
    assert_eq!(read(&rvm, 16_384, 8), [0u8; 8]);
}

#[test]
fn rvm_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Rvm>();
    assert_send_sync::<std::sync::Arc<Rvm>>();
}

#[test]
fn log_on_tmpfs_works_with_or_without_o_direct() {
    // Older tmpfs refuses O_DIRECT (EINVAL) and the log falls back to
    // O_DSYNC; newer kernels accept it. Either way RVM must work there.
    let shm = std::path::Path::new("/dev/shm");
    let Ok(dir) = tempfile::tempdir_in(shm) else {
        eprintln!("no /dev/shm; skipped");
        return;
    };
    let log =
        storage::rvm::DiskFile::open_log(&dir.path().join("probe.log"), true).expect("open log");
    let direct = log.is_direct();
    drop(log);
    let opts = RvmOptions {
        segment_size: 64 << 10,
        log_size: 32 << 10,
        ..RvmOptions::default()
    };
    let sub = dir.path().join("rvm");
    std::fs::create_dir(&sub).expect("mkdir");
    let rvm = Rvm::create(&sub, &opts).expect("create without O_DIRECT");
    let mut tx = rvm.begin();
    tx.write(5000, b"shm").expect("w");
    tx.commit(CommitMode::Flush).expect("commit");
    drop(rvm);
    let rvm = Rvm::open(&sub, &opts).expect("open");
    assert_eq!(read(&rvm, 5000, 3), b"shm");
    eprintln!("/dev/shm O_DIRECT: {direct}");
}
