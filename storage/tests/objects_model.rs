//! The object store against an in-memory model: random reads, writes,
//! punches and zero-ranges, aligned and not, over several chunks, on
//! `O_DIRECT` and buffered files, one at a time and many in flight.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use iobuf::IoBuf;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage::objects::{
    ChunkId, ChunkMeta, ChunkMetaStore, Fid, MemoryMeta, ObjectStore, Pending, StoreError,
    StoreOptions,
};

/// What the chunks should hold: bytes and metadata, per chunk.
#[derive(Default)]
struct Model {
    data: HashMap<ChunkId, Vec<u8>>,
    meta: HashMap<ChunkId, ChunkMeta>,
}

impl Model {
    fn touch(&mut self, c: ChunkId, end: u64) -> &mut Vec<u8> {
        let m = self.meta.entry(c).or_default();
        m.version += 1;
        m.size = m.size.max(end);
        let v = self.data.entry(c).or_default();
        if v.len() < end as usize {
            v.resize(end as usize, 0);
        }
        v
    }

    fn write(&mut self, c: ChunkId, off: u64, bytes: &[u8]) {
        let v = self.touch(c, off + bytes.len() as u64);
        v[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    }

    fn clear(&mut self, c: ChunkId, off: u64, len: u64) {
        let v = self.touch(c, off + len);
        v[off as usize..(off + len) as usize].fill(0);
    }

    fn read(&self, c: ChunkId, off: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        if let Some(v) = self.data.get(&c) {
            let off = off as usize;
            if off < v.len() {
                let n = (v.len() - off).min(len);
                out[..n].copy_from_slice(&v[off..off + n]);
            }
        }
        out
    }
}

fn chunk(i: u32) -> ChunkId {
    ChunkId::new(
        Fid {
            volume: 7,
            vnode: 100 + i / 2,
            unique: 1,
        },
        u64::from(i % 2),
    )
}

const AREA: u64 = 256 * 1024;

/// A random (offset, length): block-aligned half the time.
fn range(rng: &mut impl Rng) -> (u64, u64) {
    if rng.gen_bool(0.5) {
        let off = rng.gen_range(0..AREA / 4096) * 4096;
        let len = rng.gen_range(1..=24u64) * 4096;
        (off, len)
    } else {
        let off = rng.gen_range(0..AREA);
        let len = match rng.gen_range(0..4) {
            0 => rng.gen_range(1..64),
            1 => rng.gen_range(1..4096),
            _ => rng.gen_range(1..100_000),
        };
        (off, len)
    }
}

/// A buffer of `len` bytes: a registered pool buffer when one fits and is
/// free, else a stand-alone one (not a fixed buffer).
fn buffer(store: &ObjectStore, rng: &mut impl Rng, len: usize) -> IoBuf {
    let mut b = if len <= store.pool().buf_size() && rng.gen_bool(0.7) {
        store.pool().try_take().unwrap_or_else(|| IoBuf::alloc(len))
    } else {
        IoBuf::alloc(len)
    };
    b.set_len(len);
    b
}

enum InFlight {
    Read {
        c: ChunkId,
        off: u64,
        want: Vec<u8>,
        p: Pending<(Result<usize, StoreError>, IoBuf)>,
    },
    Write(Pending<(Result<(), StoreError>, IoBuf)>),
    Other(Pending<Result<(), StoreError>>),
}

impl InFlight {
    fn check(self) {
        match self {
            InFlight::Read { c, off, want, p } => {
                let (r, buf) = p.wait();
                assert_eq!(r.expect("read"), want.len());
                assert!(
                    buf.as_slice() == want.as_slice(),
                    "read of {c} at {off} len {} differs from the model",
                    want.len()
                );
            }
            InFlight::Write(p) => p.wait().0.expect("write"),
            InFlight::Other(p) => p.wait().expect("punch/zero"),
        }
    }
}

/// Submits one random operation, applying it to the model in submission
/// order (the store orders overlapping operations on a chunk the same way).
fn submit_one(store: &ObjectStore, model: &mut Model, rng: &mut impl Rng, chunks: u32) -> InFlight {
    let c = chunk(rng.gen_range(0..chunks));
    let (off, len) = range(rng);
    match rng.gen_range(0..10) {
        0..=3 => {
            let want = model.read(c, off, len as usize);
            let buf = buffer(store, rng, len as usize);
            InFlight::Read {
                c,
                off,
                want,
                p: store.read(c, off, buf),
            }
        }
        4..=7 => {
            let mut buf = buffer(store, rng, len as usize);
            rng.fill(buf.as_mut_slice());
            model.write(c, off, buf.as_slice());
            InFlight::Write(store.write(c, off, buf))
        }
        8 => {
            model.clear(c, off, len);
            InFlight::Other(store.punch(c, off, len))
        }
        _ => {
            model.clear(c, off, len);
            InFlight::Other(store.zero(c, off, len))
        }
    }
}

/// Every chunk's metadata and whole content match the model.
fn check_all(store: &ObjectStore, model: &Model, chunks: u32) {
    for i in 0..chunks {
        let c = chunk(i);
        assert_eq!(store.stat(c).unwrap(), model.meta.get(&c).copied(), "{c}");
        let len = (AREA + 200_000) as usize;
        let mut buf = IoBuf::alloc(len);
        buf.set_len(len);
        let (r, buf) = store.read(c, 0, buf).wait();
        assert_eq!(r.unwrap(), len);
        assert!(buf.as_slice() == model.read(c, 0, len).as_slice(), "{c}");
    }
}

fn run(dir: &Path, opts: StoreOptions, seed: u64, sequential: usize, batches: usize, chunks: u32) {
    run_on(dir, opts, seed, sequential, batches, chunks, true)
}

fn run_on(
    dir: &Path,
    opts: StoreOptions,
    seed: u64,
    sequential: usize,
    batches: usize,
    chunks: u32,
    fs_does_direct: bool,
) {
    let meta = Arc::new(MemoryMeta::new());
    let store = ObjectStore::open(dir, meta.clone(), opts.clone()).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();

    for _ in 0..sequential {
        submit_one(&store, &mut model, &mut rng, chunks).check();
    }
    check_all(&store, &model, chunks);

    for _ in 0..batches {
        let n = rng.gen_range(1..=48);
        let flying: Vec<InFlight> = (0..n)
            .map(|_| submit_one(&store, &mut model, &mut rng, chunks))
            .collect();
        // Wait in a shuffled order: completion order must not matter.
        let mut flying = flying;
        while !flying.is_empty() {
            let i = rng.gen_range(0..flying.len());
            flying.swap_remove(i).check();
        }
    }
    check_all(&store, &model, chunks);

    // The paths the options ask for were really taken. (/tmp is ext4 here,
    // which supports O_DIRECT.)
    let direct = store.direct_io();
    if fs_does_direct {
        assert_eq!(direct, opts.direct_io);
    }
    let st = store.stats();
    if direct {
        assert!(
            st.files_opened_direct > 0 && st.files_opened_buffered == 0,
            "{st:?}"
        );
        assert!(st.bounced > 0, "{st:?}");
    } else {
        assert!(
            st.files_opened_direct == 0 && st.files_opened_buffered > 0,
            "{st:?}"
        );
        assert_eq!(st.bounced, 0, "{st:?}");
    }
    assert!(st.fixed_buffer_ios > 0 && st.plain_buffer_ios > 0, "{st:?}");
    assert_eq!(st.fixed_file_entries > 0, opts.fixed_files, "{st:?}");
    if opts.max_open_files == 1 {
        assert!(st.files_evicted > 0, "{st:?}");
    }

    store.flush().wait().unwrap();
    drop(store);
    let store = ObjectStore::open(dir, meta.clone() as Arc<dyn ChunkMetaStore>, opts).unwrap();
    check_all(&store, &model, chunks);
}

fn opts(direct: bool) -> StoreOptions {
    StoreOptions {
        direct_io: direct,
        buf_size: 64 * 1024,
        bufs_per_worker: 16,
        ..StoreOptions::default()
    }
}

#[test]
fn random_ops_direct() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    run(dir.path(), opts(true), 1, 800, 80, 6);
}

#[test]
fn random_ops_buffered() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    run(dir.path(), opts(false), 2, 800, 80, 6);
}

/// One worker with a tiny ring and a tiny file table: ops queue behind the
/// in-flight limit and files are closed and reopened (synced when dirty).
#[test]
fn random_ops_small_limits_direct() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let o = StoreOptions {
        workers: 1,
        ring_entries: 8,
        max_open_files: 1,
        bufs_per_worker: 8,
        ..opts(true)
    };
    run(dir.path(), o, 3, 200, 30, 12);
}

/// Plain descriptors and no fixed buffers registered for the caller's pool
/// (a pool the store is given but that the test never takes from).
#[test]
fn random_ops_without_fixed_files() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let o = StoreOptions {
        fixed_files: false,
        workers: 3,
        ..opts(true)
    };
    run(dir.path(), o, 4, 200, 20, 6);
}

/// tmpfs: no `FALLOC_FL_ZERO_RANGE` (zero falls back to punching), and on
/// older kernels no `O_DIRECT` (the store falls back to buffered).
#[test]
fn random_ops_tmpfs() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm; skipped");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    run_on(dir.path(), opts(true), 5, 200, 20, 4, false);
}

/// Many writes to the same block in flight at once land in submission order.
#[test]
fn overlapping_writes_in_flight_apply_in_order() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store = ObjectStore::open(dir.path(), Arc::new(MemoryMeta::new()), opts(true)).unwrap();
    let c = chunk(0);
    let mut flying = Vec::new();
    for i in 0..200u32 {
        let off = u64::from(i % 7) * 3;
        let buf = IoBuf::from_slice(&[i as u8; 10]);
        flying.push((off, i, store.write(c, off, buf)));
    }
    let mut model = [0u8; 30];
    for (off, i, p) in flying {
        p.wait().0.unwrap();
        model[off as usize..off as usize + 10].fill(i as u8);
    }
    let mut buf = IoBuf::alloc(30);
    buf.set_len(30);
    let (r, buf) = store.read(c, 0, buf).wait();
    r.unwrap();
    assert_eq!(buf.as_slice(), &model[..]);
    assert_eq!(store.stat(c).unwrap().unwrap().version, 200);
}
