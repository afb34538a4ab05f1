//! The brick's object store: chunks of objects kept as sparse files under
//! `DIR/objects/`, read and written through io_uring.
//!
//! What it is for: byte-addressed, sparse chunk I/O with owned buffers
//! (STYLE.md rule 6), per-chunk size and version, and a `flush` that makes
//! every acknowledged change durable. What it must not do: know about
//! volumes, replicas, leases or the network; decide where a chunk belongs
//! (the caller names it). See `docs/objects.md` for the on-disk layout, the
//! worker model, the `O_DIRECT` rules and the crash semantics.
//!
//! # Model in one paragraph
//! A store runs `workers` threads, each with its own io_uring. A chunk is
//! hashed to one worker, which owns that chunk's open file and runs all of
//! its operations, so no lock is shared on the data path. The pool's buffers
//! are registered with every ring as fixed buffers; open chunk files go into
//! the worker's fixed file table. Requests return a [`Pending`], which is both
//! a `Future` and blockable with [`Pending::wait`]; a read or write gives its
//! buffer back with the result, also on failure.
//!
//! # Ordering
//! Operations on one chunk whose byte ranges overlap (widened to 4 KiB
//! blocks) run in submission order; reads overlap freely with reads.
//! Operations on different chunks, or on disjoint ranges, run concurrently
//! in any order.

mod error;
mod fault;
mod id;
mod meta;
mod pending;
mod ring;
mod worker;

use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use iobuf::{BufPool, IoBuf};

pub use error::{StoreError, StoreOp};
pub use fault::{FaultOp, FaultPlan};
pub use id::{
    ChunkId, Fid, KEY_INDEX, KEY_LEN, KEY_UNIQUE, KEY_VNODE, KEY_VOLUME, LAYOUT_FILE,
    LAYOUT_VERSION, OBJECTS_DIR,
};
pub use meta::{ChunkMeta, ChunkMetaStore, MemoryMeta};
pub use pending::Pending;

use worker::{AllocMode, FlushRound, Msg, Shared, Worker, WorkerConfig};

/// Alignment `O_DIRECT` chunk files need for offsets and lengths; requests
/// that are not aligned still work (see [`ObjectStore::write`]).
pub const DIRECT_ALIGN: u64 = worker::DIRECT_ALIGN;

/// Largest offset + length a request may reach (file offsets are `off_t`).
pub const MAX_CHUNK_END: u64 = i64::MAX as u64;

/// How to run a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// I/O worker threads, each with its own ring (at least 1).
    pub workers: usize,
    /// Open chunk files with `O_DIRECT` (falls back to buffered, with one
    /// warning, where the file system refuses it).
    pub direct_io: bool,
    /// Size of each buffer of the pool the store makes when `pool` is `None`.
    pub buf_size: usize,
    /// Buffers per worker in that pool.
    pub bufs_per_worker: usize,
    /// A pool to use (and register) instead of making one, e.g. the one the
    /// transport receives into, so network buffers go to disk uncopied.
    pub pool: Option<BufPool>,
    /// Submission queue entries per ring. A worker admits half as many
    /// operations at once; more wait in its queue.
    pub ring_entries: u32,
    /// Chunk files each worker keeps open (and in its fixed file table).
    pub max_open_files: usize,
    /// Use io_uring fixed files (registered descriptors).
    pub fixed_files: bool,
    /// Fault injection for tests: disk operations this plan names fail.
    pub faults: Option<Arc<FaultPlan>>,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            workers: 2,
            direct_io: true,
            buf_size: 128 * 1024,
            bufs_per_worker: 32,
            pool: None,
            ring_entries: 256,
            max_open_files: 512,
            fixed_files: true,
            faults: None,
        }
    }
}

/// How the store has done its I/O (see [`ObjectStore::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Read/write entries that used a registered (fixed) buffer.
    pub fixed_buffer_ios: u64,
    /// Read/write entries on an unregistered buffer.
    pub plain_buffer_ios: u64,
    /// Entries that named a fixed file slot instead of a descriptor.
    pub fixed_file_entries: u64,
    /// Reads/writes that went through an aligned bounce buffer.
    pub bounced: u64,
    /// Chunk files opened with `O_DIRECT`.
    pub files_opened_direct: u64,
    /// Chunk files opened buffered.
    pub files_opened_buffered: u64,
    /// Chunk files closed to make room in the file table.
    pub files_evicted: u64,
    /// Disk operations failed by the fault plan.
    pub faults_injected: u64,
}

struct WorkerHandle {
    tx: mpsc::Sender<Msg>,
    wake: File,
    /// A wake-up is on its way to the worker (shared with it; see
    /// `Worker::wake_pending`).
    wake_pending: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    fn send(&self, msg: Msg) {
        match self.tx.send(msg) {
            Ok(()) => {
                // Only the first request since the worker last looked at its
                // channel bumps the eventfd the worker's ring polls; later
                // ones ride the same wake-up (the worker clears the flag
                // before it drains the channel). The swap orders our send
                // before the worker's clearing swap if we see `true`.
                if !self.wake_pending.swap(true, Ordering::AcqRel) {
                    // It cannot fail short of the counter overflowing
                    // 2^64 - 2.
                    let _ = (&self.wake).write(&1u64.to_ne_bytes());
                }
            }
            Err(mpsc::SendError(msg)) => msg.fail_closed(),
        }
    }
}

/// A brick's chunk store. `Send + Sync`; share it through an `Arc`.
/// Dropping it finishes every operation already submitted, then stops the
/// workers (it does not flush).
pub struct ObjectStore {
    dir: PathBuf,
    workers: Vec<WorkerHandle>,
    shared: Arc<Shared>,
    pool: BufPool,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore")
            .field("dir", &self.dir)
            .field("workers", &self.workers.len())
            .field("direct_io", &self.direct_io())
            .finish()
    }
}

impl ObjectStore {
    /// Opens (creating if needed) the object store of the brick at `dir`,
    /// with chunk metadata in `meta`.
    pub fn open(
        dir: &Path,
        meta: Arc<dyn ChunkMetaStore>,
        opts: StoreOptions,
    ) -> Result<ObjectStore, StoreError> {
        let setup = |what: &'static str| {
            let path = dir.to_path_buf();
            move |source: io::Error| StoreError::Setup { path, what, source }
        };
        if opts.workers == 0 {
            return Err(setup("options")(io::Error::new(
                io::ErrorKind::InvalidInput,
                "workers must be at least 1",
            )));
        }
        let root = dir.join(OBJECTS_DIR);
        prepare_layout(&root).map_err(|e| match e {
            LayoutError::Io(source) => StoreError::Setup {
                path: root.clone(),
                what: "layout",
                source,
            },
            LayoutError::Bad(reason) => StoreError::Layout {
                path: root.join(LAYOUT_FILE),
                reason,
            },
        })?;
        let pool = match &opts.pool {
            Some(p) => p.clone(),
            None => BufPool::new(
                opts.buf_size,
                (opts.bufs_per_worker.max(1)).saturating_mul(opts.workers),
            ),
        };
        let entries = opts.ring_entries.clamp(8, 4096);
        let max_ops = (entries / 2) as usize;
        let cfg_open = opts.max_open_files.max(max_ops + 1);
        let file_slots = if opts.fixed_files {
            u32::try_from(cfg_open).unwrap_or(u32::MAX)
        } else {
            0
        };
        let shared = Arc::new(Shared {
            root,
            meta,
            faults: opts.faults.clone(),
            want_direct: opts.direct_io,
            direct_unsupported: AtomicBool::new(false),
            stats: Default::default(),
        });

        // All rings first: the later ones share the first one's buffer
        // table instead of pinning the pool again.
        let mut rings = Vec::with_capacity(opts.workers);
        for _ in 0..opts.workers {
            let share = rings.first().map(ring::Ring::fd);
            let r = ring::Ring::new(entries, file_slots, &pool, share)
                .map_err(setup("io_uring setup"))?;
            rings.push(r);
        }
        if !rings.iter().all(ring::Ring::has_fixed_buffers) {
            tracing::debug!("object store runs without fixed buffers on some rings");
        }
        let mut workers = Vec::with_capacity(opts.workers);
        for (i, r) in rings.into_iter().enumerate() {
            let wake = ring::eventfd().map_err(setup("eventfd"))?;
            let wake_worker = wake.try_clone().map_err(setup("eventfd"))?;
            let (tx, rx) = mpsc::channel();
            let wake_pending = Arc::new(AtomicBool::new(false));
            let w = Worker::new(
                r,
                rx,
                wake_worker,
                wake_pending.clone(),
                shared.clone(),
                pool.clone(),
                WorkerConfig {
                    max_ops,
                    max_open: cfg_open,
                },
            );
            let thread = std::thread::Builder::new()
                .name(format!("stretto-obj-{i}"))
                .spawn(move || w.run())
                .map_err(setup("worker thread"))?;
            workers.push(WorkerHandle {
                tx,
                wake,
                wake_pending,
                thread: Some(thread),
            });
        }
        Ok(ObjectStore {
            dir: dir.to_path_buf(),
            workers,
            shared,
            pool,
        })
    }

    /// The pool whose buffers are registered with the rings: buffers taken
    /// from it go to disk as fixed buffers (others work too, a little slower).
    pub fn pool(&self) -> &BufPool {
        &self.pool
    }

    /// Whether chunk files are opened `O_DIRECT` (false if not asked for, or
    /// after the file system refused it).
    pub fn direct_io(&self) -> bool {
        self.shared.want_direct && !self.shared.direct_unsupported.load(Ordering::Relaxed)
    }

    /// Where `chunk`'s file lives (it may not exist).
    pub fn chunk_path(&self, chunk: ChunkId) -> PathBuf {
        self.shared.root.join(chunk.relative_path())
    }

    /// Counters of how the store has done its I/O so far.
    pub fn stats(&self) -> StoreStats {
        let c = &self.shared.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            fixed_buffer_ios: get(&c.fixed_buffer_ios),
            plain_buffer_ios: get(&c.plain_buffer_ios),
            fixed_file_entries: get(&c.fixed_file_entries),
            bounced: get(&c.bounced),
            files_opened_direct: get(&c.files_opened_direct),
            files_opened_buffered: get(&c.files_opened_buffered),
            files_evicted: get(&c.files_evicted),
            faults_injected: get(&c.faults_injected),
        }
    }

    /// The brick directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn worker_of(&self, chunk: ChunkId) -> &WorkerHandle {
        // Low bits of the hash: the fan-out directories use the high ones.
        let i = (chunk.placement_hash() & 0xffff) as usize % self.workers.len();
        &self.workers[i]
    }

    /// Reads `buf.len()` bytes of `chunk` at `offset` into `buf` (set the
    /// length first; the capacity is not used). Holes and bytes past the
    /// chunk's end read as zeros, so on success the count is always
    /// `buf.len()`. On failure the buffer's bytes are unspecified.
    pub fn read(
        &self,
        chunk: ChunkId,
        offset: u64,
        buf: IoBuf,
    ) -> Pending<(Result<usize, StoreError>, IoBuf)> {
        if let Err(e) = check_range(StoreOp::Read, chunk, offset, buf.len() as u64) {
            return Pending::ready((Err(e), buf));
        }
        if buf.is_empty() {
            return Pending::ready((Ok(0), buf));
        }
        let (done, p) = pending::pair();
        self.worker_of(chunk).send(Msg::Read {
            chunk,
            offset,
            buf,
            done,
        });
        p
    }

    /// Writes `buf.as_slice()` to `chunk` at `offset`, creating the chunk if
    /// needed. On `O_DIRECT` files a request not aligned to
    /// [`DIRECT_ALIGN`] goes through an aligned bounce buffer with a
    /// read-modify-write of its first and last block. On success the chunk's
    /// version is bumped and its size covers the write. On failure the
    /// range holds old bytes, new bytes or a mix, and the metadata is
    /// unchanged. An empty write does nothing.
    pub fn write(
        &self,
        chunk: ChunkId,
        offset: u64,
        buf: IoBuf,
    ) -> Pending<(Result<(), StoreError>, IoBuf)> {
        if let Err(e) = check_range(StoreOp::Write, chunk, offset, buf.len() as u64) {
            return Pending::ready((Err(e), buf));
        }
        if buf.is_empty() {
            return Pending::ready((Ok(()), buf));
        }
        let (done, p) = pending::pair();
        self.worker_of(chunk).send(Msg::Write {
            chunk,
            offset,
            buf,
            done,
        });
        p
    }

    /// Deallocates `[offset, offset + len)`; it reads as zeros afterwards.
    /// Bumps the version and grows the size to cover the range.
    pub fn punch(&self, chunk: ChunkId, offset: u64, len: u64) -> Pending<Result<(), StoreError>> {
        self.alloc(chunk, offset, len, AllocMode::Punch)
    }

    /// Zeroes `[offset, offset + len)`, keeping (or making) blocks allocated
    /// where the file system can (`FALLOC_FL_ZERO_RANGE`; else it punches).
    /// Bumps the version and grows the size to cover the range.
    pub fn zero(&self, chunk: ChunkId, offset: u64, len: u64) -> Pending<Result<(), StoreError>> {
        self.alloc(chunk, offset, len, AllocMode::Zero)
    }

    fn alloc(
        &self,
        chunk: ChunkId,
        offset: u64,
        len: u64,
        mode: AllocMode,
    ) -> Pending<Result<(), StoreError>> {
        let op = match mode {
            AllocMode::Punch => StoreOp::Punch,
            _ => StoreOp::Zero,
        };
        if let Err(e) = check_range(op, chunk, offset, len) {
            return Pending::ready(Err(e));
        }
        if len == 0 {
            return Pending::ready(Ok(()));
        }
        let (done, p) = pending::pair();
        self.worker_of(chunk).send(Msg::Alloc {
            chunk,
            offset,
            len,
            mode,
            done,
        });
        p
    }

    /// Makes durable every write, punch, zero and remove acknowledged
    /// before this call: `fdatasync` of each chunk file changed since its
    /// last sync and `fsync` of each directory whose entries changed, on
    /// all workers at once; only when all of that succeeded, the metadata
    /// store's flush. On error nothing is promised, and the next flush
    /// retries what was not synced.
    pub fn flush(&self) -> Pending<Result<(), StoreError>> {
        let (done, p) = pending::pair();
        let round = Arc::new(FlushRound::new(
            self.workers.len(),
            self.shared.meta.clone(),
            done,
        ));
        for w in &self.workers {
            w.send(Msg::Flush(round.clone()));
        }
        p
    }

    /// The chunk's size and version (`None`: never written, or removed).
    /// Reflects every acknowledged operation.
    pub fn stat(&self, chunk: ChunkId) -> Result<Option<ChunkMeta>, StoreError> {
        self.shared.meta.get(&chunk)
    }

    /// Deletes the chunk's file and metadata (after operations on it
    /// submitted earlier). Removing a missing chunk succeeds.
    pub fn remove(&self, chunk: ChunkId) -> Pending<Result<(), StoreError>> {
        let (done, p) = pending::pair();
        self.worker_of(chunk).send(Msg::Remove { chunk, done });
        p
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        for w in &self.workers {
            w.send(Msg::Shutdown);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                if t.join().is_err() {
                    tracing::error!("object store worker panicked");
                }
            }
        }
    }
}

fn check_range(op: StoreOp, chunk: ChunkId, offset: u64, len: u64) -> Result<(), StoreError> {
    match offset.checked_add(len) {
        Some(end) if end <= MAX_CHUNK_END => Ok(()),
        _ => Err(StoreError::Invalid {
            op,
            chunk,
            offset,
            reason: "offset + length is past the largest chunk offset",
        }),
    }
}

enum LayoutError {
    Io(io::Error),
    Bad(String),
}

impl From<io::Error> for LayoutError {
    fn from(e: io::Error) -> LayoutError {
        LayoutError::Io(e)
    }
}

/// The layout marker's whole content.
fn layout_line() -> String {
    format!("stretto-objects {LAYOUT_VERSION}\n")
}

/// Creates `DIR/objects/` and its `LAYOUT` marker, or checks the marker of
/// an existing one.
fn prepare_layout(root: &Path) -> Result<(), LayoutError> {
    let marker = root.join(LAYOUT_FILE);
    match std::fs::read_to_string(&marker) {
        Ok(s) if s == layout_line() => return Ok(()),
        Ok(s) => {
            return Err(LayoutError::Bad(format!(
                "expected {:?}, found {:?}",
                layout_line().trim_end(),
                s.trim_end()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::create_dir_all(root)?;
    // Written to a temporary name and renamed, so a crash never leaves a
    // half-written marker that would make the store refuse to open.
    let tmp = root.join(format!("{LAYOUT_FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(layout_line().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &marker)?;
    File::open(root)?.sync_all()?;
    if let Some(parent) = root.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Coalesced wake-ups: many threads submitting at once (most sends
    /// skip the eventfd because one is already pending) must still all be
    /// served, with the right bytes.
    #[test]
    fn concurrent_senders_share_wakeups_and_all_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ObjectStore::open(
            dir.path(),
            Arc::new(MemoryMeta::new()),
            StoreOptions {
                workers: 1,
                ..StoreOptions::default()
            },
        )
        .expect("open");
        let chunk = ChunkId::new(
            Fid {
                volume: 1,
                vnode: 2,
                unique: 3,
            },
            0,
        );
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..50u64 {
                        let off = (t * 50 + i) * 4096;
                        let mut b = IoBuf::alloc(4096);
                        b.set_len(4096);
                        b.as_mut_slice().fill((t * 50 + i) as u8);
                        let (r, _) = store.write(chunk, off, b).wait();
                        r.expect("write");
                    }
                });
            }
        });
        for n in 0..400u64 {
            let mut b = IoBuf::alloc(4096);
            b.set_len(4096);
            let (r, b) = store.read(chunk, n * 4096, b).wait();
            assert_eq!(r.expect("read"), 4096);
            assert!(b.as_slice().iter().all(|&x| x == n as u8), "block {n}");
        }
        assert_eq!(
            store.stat(chunk).expect("stat").map(|m| m.version),
            Some(400)
        );
    }

    /// Counts the metadata store's reads.
    #[derive(Default)]
    struct CountingMeta {
        inner: MemoryMeta,
        gets: std::sync::atomic::AtomicU64,
    }

    impl ChunkMetaStore for CountingMeta {
        fn get(&self, chunk: &ChunkId) -> Result<Option<ChunkMeta>, StoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.inner.get(chunk)
        }
        fn put(&self, chunk: &ChunkId, meta: ChunkMeta) -> Result<(), StoreError> {
            self.inner.put(chunk, meta)
        }
        fn remove(&self, chunk: &ChunkId) -> Result<(), StoreError> {
            self.inner.remove(chunk)
        }
        fn flush(&self) -> Result<(), StoreError> {
            self.inner.flush()
        }
    }

    /// Writes bump the worker's copy of the chunk's metadata instead of
    /// reading the store each time, and the copy stays exact across a
    /// remove (the version starts again) and a reopen.
    #[test]
    fn writes_bump_cached_metadata_without_reading_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Arc::new(CountingMeta::default());
        let chunk = ChunkId::new(
            Fid {
                volume: 4,
                vnode: 5,
                unique: 6,
            },
            1,
        );
        let write = |store: &ObjectStore, off: u64, len: usize| {
            let mut b = IoBuf::alloc(len);
            b.set_len(len);
            let (r, _) = store.write(chunk, off, b).wait();
            r.expect("write");
        };
        {
            let store =
                ObjectStore::open(dir.path(), meta.clone(), StoreOptions::default()).expect("open");
            for i in 0..100u64 {
                write(&store, i * 512, 512);
            }
            assert!(
                meta.gets.load(Ordering::SeqCst) <= 1,
                "{} metadata reads for 100 writes",
                meta.gets.load(Ordering::SeqCst)
            );
            assert_eq!(
                store.stat(chunk).expect("stat"),
                Some(ChunkMeta {
                    size: 100 * 512,
                    version: 100
                })
            );
            store.punch(chunk, 0, 4096).wait().expect("punch");
            store.remove(chunk).wait().expect("remove");
            write(&store, 0, 10);
            assert_eq!(
                store.stat(chunk).expect("stat"),
                Some(ChunkMeta {
                    size: 10,
                    version: 1
                })
            );
        }
        let store =
            ObjectStore::open(dir.path(), meta.clone(), StoreOptions::default()).expect("reopen");
        write(&store, 4096, 4096);
        assert_eq!(
            store.stat(chunk).expect("stat"),
            Some(ChunkMeta {
                size: 8192,
                version: 2
            })
        );
    }
}
