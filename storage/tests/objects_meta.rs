//! Size and version bookkeeping, reopening, the on-disk layout, removal,
//! and `Pending` as a future.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use iobuf::IoBuf;
use storage::objects::{
    ChunkId, ChunkMeta, ChunkMetaStore, Fid, MemoryMeta, ObjectStore, StoreError, StoreOptions,
    LAYOUT_FILE, OBJECTS_DIR,
};

fn chunk(i: u64) -> ChunkId {
    ChunkId::new(
        Fid {
            volume: 1,
            vnode: 2,
            unique: 3,
        },
        i,
    )
}

fn open(dir: &Path, meta: Arc<MemoryMeta>, direct: bool) -> ObjectStore {
    ObjectStore::open(
        dir,
        meta as Arc<dyn ChunkMetaStore>,
        StoreOptions {
            direct_io: direct,
            buf_size: 16 * 1024,
            bufs_per_worker: 4,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

fn write(s: &ObjectStore, c: ChunkId, off: u64, data: &[u8]) {
    s.write(c, off, IoBuf::from_slice(data)).wait().0.unwrap();
}

fn read(s: &ObjectStore, c: ChunkId, off: u64, len: usize) -> Vec<u8> {
    let mut buf = IoBuf::alloc(len);
    buf.set_len(len);
    let (r, buf) = s.read(c, off, buf).wait();
    assert_eq!(r.unwrap(), len);
    buf.as_slice().to_vec()
}

fn meta(size: u64, version: u64) -> Option<ChunkMeta> {
    Some(ChunkMeta { size, version })
}

#[test]
fn size_and_version_follow_every_change() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let s = open(dir.path(), Arc::new(MemoryMeta::new()), true);
    let c = chunk(0);
    assert_eq!(s.stat(c).unwrap(), None);
    // Reading a chunk that does not exist gives zeros and creates nothing.
    assert_eq!(read(&s, c, 1000, 10), vec![0; 10]);
    assert_eq!(s.stat(c).unwrap(), None);
    assert!(!s.chunk_path(c).exists());

    write(&s, c, 100, b"hello");
    assert_eq!(s.stat(c).unwrap(), meta(105, 1));
    write(&s, c, 0, b"x");
    assert_eq!(s.stat(c).unwrap(), meta(105, 2), "size does not shrink");
    s.punch(c, 1 << 20, 4096).wait().unwrap();
    assert_eq!(
        s.stat(c).unwrap(),
        meta((1 << 20) + 4096, 3),
        "punch extends size"
    );
    s.zero(c, 50, 10).wait().unwrap();
    assert_eq!(s.stat(c).unwrap(), meta((1 << 20) + 4096, 4));
    s.zero(c, 3 << 20, 1).wait().unwrap();
    assert_eq!(
        s.stat(c).unwrap(),
        meta((3 << 20) + 1, 5),
        "zero extends size"
    );
    // Reads and empty requests change nothing.
    let _ = read(&s, c, 0, 4096);
    write(&s, c, 7, b"");
    s.punch(c, 0, 0).wait().unwrap();
    assert_eq!(s.stat(c).unwrap(), meta((3 << 20) + 1, 5));
    let got = read(&s, c, 0, 200);
    assert_eq!(got[0], b'x');
    assert!(got[50..60].iter().all(|&b| b == 0));
    assert_eq!(&got[100..105], b"hello");

    // Other chunks are separate.
    write(&s, chunk(1), 0, b"other");
    assert_eq!(s.stat(chunk(1)).unwrap(), meta(5, 1));
    assert_eq!(s.stat(c).unwrap(), meta((3 << 20) + 1, 5));
}

#[test]
fn reopen_reads_back_flushed_data() {
    for direct in [true, false] {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let m = Arc::new(MemoryMeta::new());
        let s = open(dir.path(), m.clone(), direct);
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        write(&s, chunk(0), 12_345, &big);
        write(&s, chunk(1), 0, b"small");
        s.punch(chunk(0), 20_000, 9000).wait().unwrap();
        s.flush().wait().unwrap();
        let st0 = s.stat(chunk(0)).unwrap();
        drop(s);

        let s = open(dir.path(), m.clone(), direct);
        assert_eq!(s.stat(chunk(0)).unwrap(), st0);
        let mut want = big.clone();
        want[20_000 - 12_345..29_000 - 12_345].fill(0);
        assert_eq!(read(&s, chunk(0), 12_345, big.len()), want);
        assert_eq!(read(&s, chunk(0), 0, 12_345), vec![0; 12_345]);
        assert_eq!(read(&s, chunk(1), 0, 5), b"small");
    }
}

/// What a crash of the metadata leaves: the chunk is as big as the last
/// flushed size, and bytes written past it since read as zeros.
#[test]
fn unflushed_metadata_loss_cuts_the_chunk_to_its_durable_size() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let m = Arc::new(MemoryMeta::new());
    let s = open(dir.path(), m.clone(), true);
    let c = chunk(0);
    write(&s, c, 0, &[1; 5000]);
    s.flush().wait().unwrap();
    write(&s, c, 5000, &[2; 5000]);
    drop(s);
    m.lose_unflushed();

    let s = open(dir.path(), m.clone(), true);
    assert_eq!(s.stat(c).unwrap(), meta(5000, 1));
    assert_eq!(read(&s, c, 0, 5000), vec![1; 5000]);
    assert_eq!(read(&s, c, 5000, 5000), vec![0; 5000]);
    let on_disk = std::fs::metadata(s.chunk_path(c)).unwrap().len();
    assert_eq!(on_disk, 5000, "trimmed at open");
    // Writing past a trimmed end leaves zeros in the gap.
    write(&s, c, 9000, b"z");
    assert_eq!(read(&s, c, 5000, 4000), vec![0; 4000]);
}

#[test]
fn remove_deletes_file_and_metadata_in_order() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let m = Arc::new(MemoryMeta::new());
    let s = open(dir.path(), m.clone(), true);
    let c = chunk(4);
    // Write, remove and write again, all in flight: they run in order.
    let w1 = s.write(c, 0, IoBuf::from_slice(&[1; 8192]));
    let r = s.remove(c);
    let w2 = s.write(c, 4096, IoBuf::from_slice(&[2; 10]));
    w1.wait().0.unwrap();
    r.wait().unwrap();
    w2.wait().0.unwrap();
    assert_eq!(s.stat(c).unwrap(), meta(4106, 1));
    assert_eq!(read(&s, c, 0, 4096), vec![0; 4096]);
    assert_eq!(read(&s, c, 4096, 10), vec![2; 10]);
    s.remove(c).wait().unwrap();
    assert_eq!(s.stat(c).unwrap(), None);
    assert!(!s.chunk_path(c).exists());
    assert_eq!(read(&s, c, 0, 10), vec![0; 10]);
    // Removing what is not there is fine.
    s.remove(c).wait().unwrap();
    s.flush().wait().unwrap();
    assert!(m.is_empty());
}

#[test]
fn layout_is_fan_out_of_hex_names() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let s = open(dir.path(), Arc::new(MemoryMeta::new()), true);
    let c = ChunkId::new(
        Fid {
            volume: 0xa,
            vnode: 0xb,
            unique: 0xc,
        },
        0x1d,
    );
    write(&s, c, 0, b"data");
    let root = dir.path().join(OBJECTS_DIR);
    assert_eq!(
        std::fs::read_to_string(root.join(LAYOUT_FILE)).unwrap(),
        "stretto-objects 1\n"
    );
    let path = s.chunk_path(c);
    let rel = path.strip_prefix(&root).unwrap();
    let parts: Vec<String> = rel
        .components()
        .map(|p| p.as_os_str().to_string_lossy().into_owned())
        .collect();
    assert_eq!(parts.len(), 3);
    let h = crc32c::crc32c(&c.key());
    assert_eq!(parts[0], format!("{:02x}", h >> 24));
    assert_eq!(parts[1], format!("{:02x}", (h >> 16) & 0xff));
    assert_eq!(parts[2], "0000000a.0000000b.0000000c.000000000000001d");
    // An unaligned O_DIRECT write is padded to a whole block of zeros; the
    // chunk's size (metadata) says where the data ends.
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(&on_disk[..4], b"data");
    assert!(on_disk.len() <= 4096 && on_disk[4..].iter().all(|&b| b == 0));
    assert_eq!(s.stat(c).unwrap().unwrap().size, 4);
    assert_eq!(ChunkId::parse_file_name(&parts[2]), Some(c));
}

#[test]
fn unknown_layout_is_refused() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let root = dir.path().join(OBJECTS_DIR);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join(LAYOUT_FILE), "stretto-objects 99\n").unwrap();
    let e = ObjectStore::open(
        dir.path(),
        Arc::new(MemoryMeta::new()),
        StoreOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, StoreError::Layout { .. }), "{e:?}");
}

struct Flag(std::sync::atomic::AtomicBool, std::thread::Thread);
impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        self.1.unpark();
    }
}

/// A minimal executor: polls until ready, parking in between.
fn block_on<F: Future>(f: F) -> F::Output {
    let flag = Arc::new(Flag(
        std::sync::atomic::AtomicBool::new(false),
        std::thread::current(),
    ));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        while !flag.0.swap(false, std::sync::atomic::Ordering::SeqCst) {
            std::thread::park();
        }
    }
}

#[test]
fn pending_works_as_a_future() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let s = open(dir.path(), Arc::new(MemoryMeta::new()), true);
    let c = chunk(9);
    let out = block_on(async {
        let mut b = s.pool().take();
        b.set_len(4096);
        b.as_mut_slice().fill(0x5a);
        let (r, b) = s.write(c, 8192, b).await;
        r.unwrap();
        s.flush().await.unwrap();
        let (r, b) = s.read(c, 8192, b).await;
        r.unwrap();
        b.as_slice().to_vec()
    });
    assert_eq!(out, vec![0x5a; 4096]);
}

#[test]
fn store_is_send_sync_and_shared() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ObjectStore>();
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let s = Arc::new(open(dir.path(), Arc::new(MemoryMeta::new()), true));
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let c = chunk(u64::from(t));
                    write(&s, c, i * 100, &[t + 1; 100]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..4u8 {
        assert_eq!(read(&s, chunk(u64::from(t)), 0, 5000), vec![t + 1; 5000]);
        assert_eq!(s.stat(chunk(u64::from(t))).unwrap(), meta(5000, 50));
    }
}

/// A flush with far more syncs than the ring has entries (and than its
/// completion queue holds): they are pushed in waves and all complete.
#[test]
fn flush_with_many_dirty_files_on_a_tiny_ring() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let m = Arc::new(MemoryMeta::new());
    let opts = StoreOptions {
        workers: 1,
        ring_entries: 8,
        max_open_files: 200,
        buf_size: 4096,
        bufs_per_worker: 4,
        ..StoreOptions::default()
    };
    let s = ObjectStore::open(dir.path(), m.clone(), opts.clone()).unwrap();
    let chunks: Vec<ChunkId> = (0..150).map(chunk).collect();
    let flying: Vec<_> = chunks
        .iter()
        .map(|&c| s.write(c, c.index * 3, IoBuf::from_slice(&c.index.to_le_bytes())))
        .collect();
    for p in flying {
        p.wait().0.unwrap();
    }
    s.flush().wait().unwrap();
    assert_eq!(m.flush_count(), 1);
    drop(s);
    let s = ObjectStore::open(dir.path(), m, opts).unwrap();
    for &c in &chunks {
        assert_eq!(read(&s, c, c.index * 3, 8), c.index.to_le_bytes());
    }
}

/// Dropping the store finishes what was submitted: every `Pending` is
/// answered, abandoned ones included, and every pool buffer comes home.
#[test]
fn drop_finishes_submitted_operations() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let m = Arc::new(MemoryMeta::new());
    let s = open(dir.path(), m.clone(), true);
    let pool = s.pool().clone();
    let mut kept = Vec::new();
    for i in 0..64u64 {
        let mut b = pool.take();
        b.set_len(4096);
        b.as_mut_slice().fill(i as u8);
        let p = s.write(chunk(i % 5), (i / 5) * 4096, b);
        if i % 2 == 0 {
            kept.push((i, p));
        } // odd ones: the caller walks away
        if pool.available() == 0 {
            // Let some finish so `take` never waits on ourselves.
            if let Some((_, p)) = kept.pop() {
                p.wait().0.unwrap();
            }
        }
    }
    drop(s);
    for (_, p) in kept {
        p.wait().0.unwrap();
    }
    assert_eq!(pool.available(), pool.count());
    let s = open(dir.path(), m, true);
    for i in 0..64u64 {
        assert_eq!(
            read(&s, chunk(i % 5), (i / 5) * 4096, 4096),
            vec![i as u8; 4096]
        );
    }
}
