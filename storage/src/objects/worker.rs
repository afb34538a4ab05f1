//! One I/O worker: a thread that owns a ring, the open chunk files of the
//! chunks hashed to it, and the state of every operation on them.
//!
//! Nothing here is shared with other workers except the metadata store and
//! the fault plan, so the hot path takes no lock of the store's own. A chunk
//! always goes to the same worker, which is what lets the worker order
//! operations on a chunk (see [`Lock`]) and read-modify-write a chunk's
//! metadata without a race.
//!
//! The worker sleeps in `io_uring_enter` only. New requests arrive on a
//! channel; the sender then bumps an eventfd on which the ring keeps a poll
//! armed, so a request wakes the worker exactly like a disk completion does.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

use io_uring::squeue;
use iobuf::{BufPool, IoBuf};

use super::error::{StoreError, StoreOp};
use super::fault::{FaultOp, FaultPlan};
use super::id::ChunkId;
use super::meta::{ChunkMeta, ChunkMetaStore};
use super::pending::Completer;
use super::ring::{self, Ring, Target};

/// `O_DIRECT` needs file offsets, lengths and memory aligned to the logical
/// block size; 4096 covers every device the brick is meant for.
pub(crate) const DIRECT_ALIGN: u64 = 4096;

/// Largest byte count put in one read or write entry (the entry's length
/// field is 32 bits); longer transfers continue in further entries.
const MAX_IO: usize = 1 << 30;

// user_data layout: the top four bits say what an entry belongs to.
const TAG_MASK: u64 = 0xf << 60;
const TAG_OP: u64 = 1 << 60;
const TAG_FLUSH: u64 = 2 << 60;
const TAG_WAKE: u64 = 3 << 60;
/// Op entries: `TAG_OP | op_index << 2 | part`.
const PART_BITS: u64 = 2;
const PART_MAIN: u64 = 0;
const PART_HEAD: u64 = 1;
const PART_TAIL: u64 = 2;
/// Flush entries: `TAG_FLUSH | job << 28 | item`.
const ITEM_BITS: u64 = 28;

/// Result of a read: the byte count (or error) and the caller's buffer.
pub(crate) type ReadDone = Completer<(Result<usize, StoreError>, IoBuf)>;
/// Result of a write.
pub(crate) type WriteDone = Completer<(Result<(), StoreError>, IoBuf)>;
/// Result of a punch, zero, remove or flush.
pub(crate) type Done = Completer<Result<(), StoreError>>;

/// Which `fallocate` an [`Msg::Alloc`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AllocMode {
    /// `PUNCH_HOLE | KEEP_SIZE`: deallocate; reads return zeros.
    Punch,
    /// `ZERO_RANGE`: zeros, blocks stay allocated.
    Zero,
    /// A zero request on a file system without `ZERO_RANGE`: punched
    /// instead (reads of a hole return zeros too).
    ZeroByPunch,
}

impl AllocMode {
    fn flags(self) -> i32 {
        match self {
            AllocMode::Punch | AllocMode::ZeroByPunch => {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            }
            AllocMode::Zero => libc::FALLOC_FL_ZERO_RANGE,
        }
    }

    fn store_op(self) -> StoreOp {
        match self {
            AllocMode::Punch => StoreOp::Punch,
            AllocMode::Zero | AllocMode::ZeroByPunch => StoreOp::Zero,
        }
    }

    fn fault_op(self) -> FaultOp {
        match self {
            AllocMode::Punch => FaultOp::Punch,
            AllocMode::Zero | AllocMode::ZeroByPunch => FaultOp::Zero,
        }
    }
}

/// A request to a worker.
pub(crate) enum Msg {
    Read {
        chunk: ChunkId,
        offset: u64,
        buf: IoBuf,
        done: ReadDone,
    },
    Write {
        chunk: ChunkId,
        offset: u64,
        buf: IoBuf,
        done: WriteDone,
    },
    Alloc {
        chunk: ChunkId,
        offset: u64,
        len: u64,
        mode: AllocMode,
        done: Done,
    },
    Remove {
        chunk: ChunkId,
        done: Done,
    },
    Flush(Arc<FlushRound>),
    Shutdown,
}

impl Msg {
    /// Answers the request with [`StoreError::Closed`] (the worker is gone).
    pub(crate) fn fail_closed(self) {
        match self {
            Msg::Read { buf, done, .. } => done.complete((Err(StoreError::Closed), buf)),
            Msg::Write { buf, done, .. } => done.complete((Err(StoreError::Closed), buf)),
            Msg::Alloc { done, .. } | Msg::Remove { done, .. } => {
                done.complete(Err(StoreError::Closed))
            }
            Msg::Flush(round) => round.part_done(Some(StoreError::Closed)),
            Msg::Shutdown => {}
        }
    }
}

/// State every worker of a store shares (read-mostly).
pub(crate) struct Shared {
    /// `DIR/objects`.
    pub(crate) root: PathBuf,
    pub(crate) meta: Arc<dyn ChunkMetaStore>,
    pub(crate) faults: Option<Arc<FaultPlan>>,
    /// The caller asked for `O_DIRECT`.
    pub(crate) want_direct: bool,
    /// An `O_DIRECT` open failed with `EINVAL`: the file system cannot do it,
    /// so every later open goes buffered (and the warning is logged once).
    pub(crate) direct_unsupported: AtomicBool,
    pub(crate) stats: Counters,
}

/// Counters behind [`super::StoreStats`] (relaxed: they are for tests and
/// operators, not for synchronisation).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) fixed_buffer_ios: AtomicU64,
    pub(crate) plain_buffer_ios: AtomicU64,
    pub(crate) fixed_file_entries: AtomicU64,
    pub(crate) bounced: AtomicU64,
    pub(crate) files_opened_direct: AtomicU64,
    pub(crate) files_opened_buffered: AtomicU64,
    pub(crate) files_evicted: AtomicU64,
    pub(crate) faults_injected: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Shared {
    fn fault(&self, op: FaultOp) -> Option<i32> {
        self.faults.as_ref().and_then(|f| f.check(op))
    }

    fn direct_now(&self) -> bool {
        self.want_direct && !self.direct_unsupported.load(Ordering::Relaxed)
    }

    fn note_direct_unsupported(&self, err: &io::Error) {
        if !self.direct_unsupported.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                dir = %self.root.display(),
                error = %err,
                "O_DIRECT not supported here; object store falls back to buffered I/O"
            );
        }
    }
}

/// One `flush()` across all workers: each worker syncs its part, the last
/// one to finish flushes the metadata (only if every data sync worked) and
/// answers the caller.
pub(crate) struct FlushRound {
    remaining: AtomicUsize,
    error: Mutex<Option<StoreError>>,
    done: Mutex<Option<Done>>,
    meta: Arc<dyn ChunkMetaStore>,
}

impl FlushRound {
    pub(crate) fn new(parts: usize, meta: Arc<dyn ChunkMetaStore>, done: Done) -> FlushRound {
        FlushRound {
            remaining: AtomicUsize::new(parts),
            error: Mutex::new(None),
            done: Mutex::new(Some(done)),
            meta,
        }
    }

    /// One worker's part is over, with its first error if any.
    pub(crate) fn part_done(&self, err: Option<StoreError>) {
        if let Some(e) = err {
            let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(e);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let err = self.error.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Data first, then metadata: if any chunk's data did not reach the
        // disk, the metadata that describes it must not be made durable by
        // this round either.
        let result = match err {
            Some(e) => Err(e),
            None => self.meta.flush(),
        };
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(done) = done {
            done.complete(result);
        }
    }
}

/// Tiny slab: stable indices for live entries, reused after removal.
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Slab<T> {
    fn new() -> Slab<T> {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
        }
    }

    fn insert(&mut self, v: T) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.items[i] = Some(v);
                i
            }
            None => {
                self.items.push(Some(v));
                self.items.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.items.get_mut(i)?.take();
        if v.is_some() {
            self.free.push(i);
        }
        v
    }

    fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i)?.as_ref()
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i)?.as_mut()
    }

    fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (i, v)))
    }

    fn is_empty(&self) -> bool {
        self.items.len() == self.free.len()
    }
}

/// The byte range an operation holds on its chunk while it runs. Ranges
/// are widened to [`DIRECT_ALIGN`] blocks because a read-modify-write
/// rewrites whole blocks: two writes to different bytes of one block must
/// not interleave. Reads share; everything else is exclusive. An operation
/// waits while it conflicts with a running one or with an earlier waiting
/// one, so conflicting operations on a chunk run in submission order.
#[derive(Clone, Copy, Debug)]
struct Lock {
    start: u64,
    end: u64,
    exclusive: bool,
}

impl Lock {
    fn span(offset: u64, len: u64, exclusive: bool) -> Lock {
        Lock {
            start: align_down(offset),
            end: align_up(offset.saturating_add(len)),
            exclusive,
        }
    }

    fn whole(exclusive: bool) -> Lock {
        Lock {
            start: 0,
            end: u64::MAX,
            exclusive,
        }
    }

    fn conflicts(&self, other: &Lock) -> bool {
        (self.exclusive || other.exclusive) && self.start < other.end && other.start < self.end
    }
}

fn align_down(x: u64) -> u64 {
    x - x % DIRECT_ALIGN
}

fn align_up(x: u64) -> u64 {
    x.checked_next_multiple_of(DIRECT_ALIGN)
        .unwrap_or(u64::MAX - u64::MAX % DIRECT_ALIGN)
}

/// Where a read or write moves bytes: straight to/from the caller's
/// buffer, or through an aligned bounce buffer covering whole blocks when
/// the file is `O_DIRECT` and the request is not block-aligned.
struct Transfer {
    bounce: Option<IoBuf>,
    /// File offset of byte 0 of the buffer being transferred.
    file_start: u64,
    /// Bytes of that buffer done so far.
    pos: usize,
    /// Write only: the block-edge reads of a read-modify-write are running.
    edges: bool,
}

enum Kind {
    Read {
        offset: u64,
        buf: IoBuf,
        xfer: Transfer,
        done: ReadDone,
    },
    Write {
        offset: u64,
        buf: IoBuf,
        xfer: Transfer,
        done: WriteDone,
    },
    Alloc {
        offset: u64,
        len: u64,
        mode: AllocMode,
        done: Done,
    },
    Remove {
        done: Done,
    },
}

struct Op {
    chunk: ChunkId,
    lock: Lock,
    kind: Kind,
    /// The open file, once started.
    file: Option<usize>,
    /// Entries of this op in the ring.
    inflight: u32,
    /// First error; the op finishes with it once nothing is in flight.
    error: Option<StoreError>,
}

impl Op {
    fn store_op(&self) -> StoreOp {
        match &self.kind {
            Kind::Read { .. } => StoreOp::Read,
            Kind::Write { .. } => StoreOp::Write,
            Kind::Alloc { mode, .. } => mode.store_op(),
            Kind::Remove { .. } => StoreOp::Remove,
        }
    }

    fn offset(&self) -> u64 {
        match &self.kind {
            Kind::Read { offset, .. } | Kind::Write { offset, .. } => *offset,
            Kind::Alloc { offset, .. } => *offset,
            Kind::Remove { .. } => 0,
        }
    }

    fn fail(&mut self, source: io::Error) {
        let e = StoreError::from_io(self.store_op(), self.chunk, self.offset(), source);
        self.error.get_or_insert(e);
    }
}

/// An open chunk file. Its id in the file slab is also its fixed-file slot
/// when below the ring's table size.
struct OpenFile {
    file: File,
    chunk: ChunkId,
    slot: Option<u32>,
    direct: bool,
    /// Changed since its last successful sync.
    dirty: bool,
    /// Ring entries that use this file.
    inflight: u32,
    last_used: u64,
    /// The chunk was removed while entries were in flight: close the file
    /// when they are done.
    detached: bool,
}

impl OpenFile {
    fn target(&self) -> Target {
        match self.slot {
            Some(s) => Target::Fixed(s),
            None => Target::Fd(self.file.as_raw_fd()),
        }
    }
}

#[derive(Default)]
struct ChunkState {
    file: Option<usize>,
    active: Vec<usize>,
    waiting: VecDeque<usize>,
    /// The chunk's metadata as last read from or written to the metadata
    /// store (`None`: not known here). This worker is the only writer of
    /// the chunk's metadata, so while this state lives the copy is exact,
    /// and a write need not read the store before bumping it.
    meta: Option<ChunkMeta>,
}

enum FlushItem {
    File { id: usize, chunk: ChunkId },
    Dir { path: PathBuf, dir: File },
}

struct FlushJob {
    round: Arc<FlushRound>,
    items: Vec<FlushItem>,
    outstanding: usize,
    error: Option<StoreError>,
}

/// Limits of one worker.
pub(crate) struct WorkerConfig {
    /// Operations admitted at once (each has at most two entries in flight).
    pub(crate) max_ops: usize,
    /// Chunk files kept open; the least recently used idle one is closed
    /// to make room.
    pub(crate) max_open: usize,
}

pub(crate) struct Worker {
    ring: Ring,
    rx: Receiver<Msg>,
    wake: File,
    /// Set by a sender that bumped `wake`; while set, other senders skip
    /// the eventfd write. Cleared (with a swap, which makes every send that
    /// saw it set visible to us) before each drain of the channel.
    wake_pending: Arc<AtomicBool>,
    shared: Arc<Shared>,
    pool: BufPool,
    cfg: WorkerConfig,

    ops: Slab<Op>,
    chunks: HashMap<ChunkId, ChunkState>,
    files: Slab<OpenFile>,
    open_files: usize,
    clock: u64,
    /// Requests not yet admitted (over `max_ops`), in arrival order.
    backlog: VecDeque<Msg>,
    /// Admitted ops whose lock is granted, to start.
    to_start: VecDeque<usize>,
    admitted: usize,
    /// Directories whose entries changed since the last flush.
    dirty_dirs: BTreeSet<PathBuf>,
    flushes: Slab<FlushJob>,
    /// An error found outside a flush (syncing a file before closing it)
    /// that the next flush must report.
    sticky: Option<StoreError>,
    /// Entries replaced by a no-op by the fault plan, with their errno.
    injected: HashMap<u64, i32>,
    /// Completions reaped while pushing, not yet handled.
    deferred: Vec<(u64, i32)>,
    /// Entries in the ring, not counting the wake-up poll.
    in_ring: usize,
    shutting_down: bool,
}

impl Worker {
    pub(crate) fn new(
        ring: Ring,
        rx: Receiver<Msg>,
        wake: File,
        wake_pending: Arc<AtomicBool>,
        shared: Arc<Shared>,
        pool: BufPool,
        cfg: WorkerConfig,
    ) -> Worker {
        Worker {
            ring,
            rx,
            wake,
            wake_pending,
            shared,
            pool,
            cfg,
            ops: Slab::new(),
            chunks: HashMap::new(),
            files: Slab::new(),
            open_files: 0,
            clock: 0,
            backlog: VecDeque::new(),
            to_start: VecDeque::new(),
            admitted: 0,
            dirty_dirs: BTreeSet::new(),
            flushes: Slab::new(),
            sticky: None,
            injected: HashMap::new(),
            deferred: Vec::new(),
            in_ring: 0,
            shutting_down: false,
        }
    }

    /// The worker thread's body; returns once shut down and idle.
    pub(crate) fn run(mut self) {
        self.arm_wake();
        self.drain_channel();
        let mut batch = Vec::new();
        let mut ring_error_logged = false;
        loop {
            self.start_ready();
            if self.shutting_down && self.is_idle() {
                break;
            }
            // Completions reaped while pushing are already here: do not
            // sleep waiting for new ones before handling them.
            let want = usize::from(self.deferred.is_empty());
            match self.ring.submit_and_wait(want) {
                Ok(_) => ring_error_logged = false,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => {
                    // Nothing a worker can do about a failing ring but keep
                    // reaping what completes; log once per streak.
                    if !ring_error_logged {
                        tracing::error!(error = %e, "io_uring_enter failed in object store worker");
                        ring_error_logged = true;
                    }
                }
            }
            batch.append(&mut self.deferred);
            self.ring.reap(&mut batch);
            for (ud, res) in batch.drain(..) {
                self.on_completion(ud, res);
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.admitted == 0
            && self.backlog.is_empty()
            && self.flushes.is_empty()
            && self.in_ring == 0
    }

    fn arm_wake(&mut self) {
        let e = ring::poll_readable(self.wake.as_raw_fd()).user_data(TAG_WAKE);
        // SAFETY: the poll names no memory, only the eventfd, which this
        // worker owns for its whole life (longer than the ring).
        unsafe { self.push_raw(&e) };
    }

    fn drain_channel(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(msg) => self.accept(msg),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.shutting_down = true;
                    break;
                }
            }
        }
    }

    fn accept(&mut self, msg: Msg) {
        match msg {
            Msg::Shutdown => self.shutting_down = true,
            Msg::Flush(round) => self.start_flush(round),
            op => {
                if self.admitted >= self.cfg.max_ops || !self.backlog.is_empty() {
                    self.backlog.push_back(op);
                } else {
                    self.admit(op);
                }
            }
        }
    }

    fn admit(&mut self, msg: Msg) {
        let (chunk, lock, kind) = match msg {
            Msg::Read {
                chunk,
                offset,
                buf,
                done,
            } => (
                chunk,
                Lock::span(offset, buf.len() as u64, false),
                Kind::Read {
                    offset,
                    buf,
                    xfer: Transfer::direct_to_caller(offset),
                    done,
                },
            ),
            Msg::Write {
                chunk,
                offset,
                buf,
                done,
            } => (
                chunk,
                Lock::span(offset, buf.len() as u64, true),
                Kind::Write {
                    offset,
                    buf,
                    xfer: Transfer::direct_to_caller(offset),
                    done,
                },
            ),
            Msg::Alloc {
                chunk,
                offset,
                len,
                mode,
                done,
            } => (
                chunk,
                Lock::span(offset, len, true),
                Kind::Alloc {
                    offset,
                    len,
                    mode,
                    done,
                },
            ),
            Msg::Remove { chunk, done } => (chunk, Lock::whole(true), Kind::Remove { done }),
            other @ (Msg::Flush(_) | Msg::Shutdown) => {
                self.accept(other);
                return;
            }
        };
        let idx = self.ops.insert(Op {
            chunk,
            lock,
            kind,
            file: None,
            inflight: 0,
            error: None,
        });
        self.admitted += 1;
        let ops = &self.ops;
        let cs = self.chunks.entry(chunk).or_default();
        let blocked = cs
            .active
            .iter()
            .chain(cs.waiting.iter())
            .filter_map(|&i| ops.get(i))
            .any(|o| o.lock.conflicts(&lock));
        if blocked {
            cs.waiting.push_back(idx);
        } else {
            cs.active.push(idx);
            self.to_start.push_back(idx);
        }
    }

    fn start_ready(&mut self) {
        while let Some(idx) = self.to_start.pop_front() {
            self.start(idx);
        }
    }

    fn start(&mut self, idx: usize) {
        let Some(op) = self.ops.get(idx) else { return };
        let chunk = op.chunk;
        let (create, offset) = match &op.kind {
            Kind::Read { offset, .. } => (false, *offset),
            Kind::Write { offset, .. } => (true, *offset),
            Kind::Alloc { offset, .. } => (true, *offset),
            Kind::Remove { .. } => {
                self.do_remove(idx);
                self.finish(idx);
                return;
            }
        };
        let file = match self.open_chunk(chunk, create, offset) {
            Ok(f) => f,
            Err(e) => {
                if let Some(op) = self.ops.get_mut(idx) {
                    op.error = Some(e);
                }
                self.finish(idx);
                return;
            }
        };
        let Some(fid) = file else {
            // Reading a chunk that has no file: all zeros.
            if let Some(Op {
                kind: Kind::Read { buf, .. },
                ..
            }) = self.ops.get_mut(idx)
            {
                buf.as_mut_slice().fill(0);
            }
            self.finish(idx);
            return;
        };
        let direct = self.files.get(fid).is_some_and(|f| f.direct);
        let pool = self.pool.clone();
        let Some(op) = self.ops.get_mut(idx) else {
            return;
        };
        op.file = Some(fid);
        match &mut op.kind {
            Kind::Read {
                offset, buf, xfer, ..
            } => {
                *xfer = Transfer::plan(direct, *offset, buf.len(), &pool, false);
                if xfer.bounce.is_some() {
                    bump(&self.shared.stats.bounced);
                }
                self.submit_transfer(idx);
            }
            Kind::Write {
                offset, buf, xfer, ..
            } => {
                *xfer = Transfer::plan(direct, *offset, buf.len(), &pool, true);
                if xfer.bounce.is_some() {
                    bump(&self.shared.stats.bounced);
                }
                if xfer.edges {
                    self.submit_edges(idx);
                } else {
                    self.submit_transfer(idx);
                }
            }
            Kind::Alloc { .. } => self.submit_alloc(idx),
            Kind::Remove { .. } => {}
        }
    }

    /// Submits the next read or write entry of a transfer.
    fn submit_transfer(&mut self, idx: usize) {
        let Some(op) = self.ops.get_mut(idx) else {
            return;
        };
        let Some(file) = op.file.and_then(|f| self.files.get(f)) else {
            return;
        };
        let target = file.target();
        let (is_write, buf, xfer) = match &mut op.kind {
            Kind::Read { buf, xfer, .. } => (false, buf, xfer),
            Kind::Write { buf, xfer, .. } => (true, buf, xfer),
            _ => return,
        };
        let pos = xfer.pos;
        let file_off = xfer.file_start + pos as u64;
        let io = match xfer.bounce.as_mut() {
            Some(b) => b,
            None => buf,
        };
        let n = (io.len() - pos).min(MAX_IO);
        let fixed = self.ring.fixed_index(io);
        let stats = &self.shared.stats;
        bump(if fixed.is_some() {
            &stats.fixed_buffer_ios
        } else {
            &stats.plain_buffer_ios
        });
        let ptr = io.spare_mut()[pos..].as_mut_ptr();
        // `n <= MAX_IO < u32::MAX`.
        let n = n as u32;
        let (entry, fault) = if is_write {
            (ring::write(target, ptr, n, file_off, fixed), FaultOp::Write)
        } else {
            (ring::read(target, ptr, n, file_off, fixed), FaultOp::Read)
        };
        // SAFETY: `ptr..ptr + n` lies inside the op's caller or bounce
        // buffer (`pos + n <= len <= capacity`), and `target` is its file.
        unsafe { self.push_op(idx, PART_MAIN, entry, fault) };
    }

    /// Read-modify-write, step one: read the partial first and/or last
    /// block into the bounce buffer.
    fn submit_edges(&mut self, idx: usize) {
        let Some(op) = self.ops.get_mut(idx) else {
            return;
        };
        let Some(file) = op.file.and_then(|f| self.files.get(f)) else {
            return;
        };
        let target = file.target();
        let Kind::Write {
            offset, buf, xfer, ..
        } = &mut op.kind
        else {
            return;
        };
        let end = *offset + buf.len() as u64;
        let Some(bounce) = xfer.bounce.as_mut() else {
            return;
        };
        let span = bounce.len();
        let a = DIRECT_ALIGN as usize;
        let head = *offset % DIRECT_ALIGN != 0;
        let tail = end % DIRECT_ALIGN != 0 && !(head && span == a);
        let fixed = self.ring.fixed_index(bounce);
        let mut entries = Vec::with_capacity(2);
        if head {
            let ptr = bounce.spare_mut().as_mut_ptr();
            entries.push((
                PART_HEAD,
                ring::read(target, ptr, a as u32, xfer.file_start, fixed),
            ));
        }
        if tail {
            let ptr = bounce.spare_mut()[span - a..].as_mut_ptr();
            let off = xfer.file_start + (span - a) as u64;
            entries.push((PART_TAIL, ring::read(target, ptr, a as u32, off, fixed)));
        }
        for (part, e) in entries {
            // SAFETY: each read covers one block inside the op's bounce
            // buffer (`span >= a`), and `target` is the op's file.
            unsafe { self.push_op(idx, part, e, FaultOp::Read) };
        }
    }

    fn submit_alloc(&mut self, idx: usize) {
        let Some(op) = self.ops.get(idx) else { return };
        let Some(file) = op.file.and_then(|f| self.files.get(f)) else {
            return;
        };
        let Kind::Alloc {
            offset, len, mode, ..
        } = &op.kind
        else {
            return;
        };
        let e = ring::fallocate(file.target(), mode.flags(), *offset, *len);
        let fault = mode.fault_op();
        // SAFETY: fallocate names no memory; its file is the op's.
        unsafe { self.push_op(idx, PART_MAIN, e, fault) };
    }

    /// Pushes an entry of op `idx`, or a no-op carrying an injected error.
    ///
    /// # Safety
    /// `entry` may point only into the buffers op `idx` owns (its caller or
    /// bounce buffer) and name only the op's open file.
    unsafe fn push_op(&mut self, idx: usize, part: u64, entry: squeue::Entry, fault: FaultOp) {
        let ud = TAG_OP | (idx as u64) << PART_BITS | part;
        let entry = match self.shared.fault(fault) {
            Some(errno) => {
                bump(&self.shared.stats.faults_injected);
                self.injected.insert(ud, errno);
                ring::nop()
            }
            None => entry,
        };
        if let Some(op) = self.ops.get_mut(idx) {
            op.inflight += 1;
            if let Some(f) = op.file.and_then(|f| self.files.get_mut(f)) {
                f.inflight += 1;
                if f.slot.is_some() {
                    bump(&self.shared.stats.fixed_file_entries);
                }
            }
        }
        self.in_ring += 1;
        // SAFETY: by this function's contract the entry points into the
        // op's buffers and names the op's file. The buffers are owned by the
        // op in `self.ops`, which is removed only in `finish`, called only
        // when the op has no entry in flight (moving the op inside the slab
        // does not move the buffers' heap memory); the file is closed only
        // when its `inflight` count, raised above, is back to zero.
        unsafe { self.push_raw(&entry.user_data(ud)) };
    }

    /// Pushes an entry, reaping completions (handled later) if the rings
    /// are full.
    ///
    /// # Safety
    /// As [`Ring::push`]: what the entry points to and names must outlive
    /// its completion.
    unsafe fn push_raw(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: forwarded from this function's own contract.
            if unsafe { self.ring.push(entry) } {
                return;
            }
            self.ring.reap(&mut self.deferred);
            let _ = self.ring.submit();
        }
    }

    fn on_completion(&mut self, ud: u64, res: i32) {
        let res = match self.injected.remove(&ud) {
            Some(errno) => -errno,
            None => res,
        };
        match ud & TAG_MASK {
            TAG_WAKE => {
                let mut counter = [0u8; 8];
                // Resetting the counter; EAGAIN just means it was zero.
                let _ = (&self.wake).read(&mut counter);
                self.arm_wake();
                // Clear before draining: a request sent after this point
                // bumps the eventfd again, one sent before is in the channel
                // for the drain below.
                self.wake_pending.swap(false, Ordering::AcqRel);
                self.drain_channel();
            }
            TAG_OP => {
                self.in_ring -= 1;
                let idx = ((ud & !TAG_MASK) >> PART_BITS) as usize;
                let part = ud & ((1 << PART_BITS) - 1);
                self.on_op_completion(idx, part, res);
            }
            TAG_FLUSH => {
                self.in_ring -= 1;
                let job = ((ud & !TAG_MASK) >> ITEM_BITS) as usize;
                let item = (ud & ((1 << ITEM_BITS) - 1)) as usize;
                self.on_flush_completion(job, item, res);
            }
            _ => tracing::error!(user_data = ud, "unknown io_uring completion"),
        }
    }

    fn file_entry_done(&mut self, fid: usize) {
        let Some(f) = self.files.get_mut(fid) else {
            return;
        };
        f.inflight -= 1;
        if f.detached && f.inflight == 0 {
            self.files.remove(fid);
            self.open_files -= 1;
        }
    }

    fn on_op_completion(&mut self, idx: usize, part: u64, res: i32) {
        let fid = match self.ops.get_mut(idx) {
            Some(op) => {
                op.inflight -= 1;
                op.file
            }
            None => return,
        };
        if let Some(fid) = fid {
            self.file_entry_done(fid);
        }
        let direct = fid
            .and_then(|f| self.files.get(f))
            .is_some_and(|f| f.direct);
        let Some(op) = self.ops.get_mut(idx) else {
            return;
        };
        if res < 0 {
            // A zero request on a file system without ZERO_RANGE: punch.
            if let Kind::Alloc { mode, .. } = &mut op.kind {
                if *mode == AllocMode::Zero && -res == libc::EOPNOTSUPP {
                    *mode = AllocMode::ZeroByPunch;
                    self.submit_alloc(idx);
                    return;
                }
            }
            op.fail(io::Error::from_raw_os_error(-res));
            if op.inflight == 0 {
                self.finish(idx);
            }
            return;
        }
        let n = res as usize;
        let a = DIRECT_ALIGN as usize;
        match &mut op.kind {
            Kind::Read { buf, xfer, .. } => {
                let io = match xfer.bounce.as_mut() {
                    Some(b) => b,
                    None => buf,
                };
                let len = io.len();
                // A short read is the end of the file (`O_DIRECT` reads past
                // an unaligned end come back short and cannot be continued
                // from an unaligned offset): the rest reads as zeros.
                if n == 0 || (direct && n % a != 0) {
                    io.as_mut_slice()[(xfer.pos + n).min(len)..].fill(0);
                    xfer.pos = len;
                } else {
                    xfer.pos += n;
                }
                if xfer.pos < len {
                    self.submit_transfer(idx);
                } else {
                    self.finish(idx);
                }
            }
            Kind::Write {
                offset, buf, xfer, ..
            } if xfer.edges => {
                if let Some(b) = xfer.bounce.as_mut() {
                    // Past the end of the file the block reads short; those
                    // bytes are zeros in the chunk, so zero them here.
                    let start = if part == PART_TAIL { b.len() - a } else { 0 };
                    if n < a {
                        b.as_mut_slice()[start + n..start + a].fill(0);
                    }
                }
                if op.inflight > 0 {
                    return;
                }
                if op.error.is_some() {
                    self.finish(idx);
                    return;
                }
                if let Some(b) = xfer.bounce.as_mut() {
                    let at = (*offset - xfer.file_start) as usize;
                    b.as_mut_slice()[at..at + buf.len()].copy_from_slice(buf.as_slice());
                }
                xfer.edges = false;
                xfer.pos = 0;
                self.submit_transfer(idx);
            }
            Kind::Write { buf, xfer, .. } => {
                let len = xfer.bounce.as_ref().map_or(buf.len(), |b| b.len());
                if n == 0 {
                    op.fail(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "chunk file accepted no bytes",
                    ));
                    self.finish(idx);
                    return;
                }
                xfer.pos += n;
                if xfer.pos < len {
                    self.submit_transfer(idx);
                } else {
                    self.finish(idx);
                }
            }
            Kind::Alloc { .. } => self.finish(idx),
            Kind::Remove { .. } => self.finish(idx),
        }
    }

    /// Ends op `idx` (nothing of it is in flight): updates the chunk's
    /// metadata if it changed the chunk, answers the caller, releases its
    /// lock and lets waiting ops start.
    fn finish(&mut self, idx: usize) {
        let Some(op) = self.ops.remove(idx) else {
            return;
        };
        self.admitted -= 1;
        let Op {
            chunk,
            kind,
            file,
            error,
            ..
        } = op;
        let mut error = error;
        // Any write or fallocate may have changed the file, even a failed
        // one: the next flush must sync it.
        let mutates = matches!(kind, Kind::Write { .. } | Kind::Alloc { .. });
        if let Some(f) = file.and_then(|f| self.files.get_mut(f)) {
            if mutates {
                f.dirty = true;
            }
            self.clock += 1;
            f.last_used = self.clock;
        }
        match kind {
            Kind::Read {
                offset,
                mut buf,
                xfer,
                done,
            } => {
                let result = match error {
                    Some(e) => Err(e),
                    None => {
                        if let Some(b) = &xfer.bounce {
                            let at = (offset - xfer.file_start) as usize;
                            let len = buf.len();
                            buf.as_mut_slice()
                                .copy_from_slice(&b.as_slice()[at..at + len]);
                        }
                        Ok(buf.len())
                    }
                };
                done.complete((result, buf));
            }
            Kind::Write {
                offset, buf, done, ..
            } => {
                if error.is_none() {
                    error = self.bump_meta(chunk, offset, buf.len() as u64).err();
                }
                done.complete((error.map_or(Ok(()), Err), buf));
            }
            Kind::Alloc {
                offset, len, done, ..
            } => {
                if error.is_none() {
                    error = self.bump_meta(chunk, offset, len).err();
                }
                done.complete(error.map_or(Ok(()), Err));
            }
            Kind::Remove { done } => done.complete(error.map_or(Ok(()), Err)),
        }
        self.release(chunk, idx);
        while self.admitted < self.cfg.max_ops {
            let Some(msg) = self.backlog.pop_front() else {
                break;
            };
            self.admit(msg);
        }
    }

    /// A successful write/punch/zero of `[offset, offset + len)`: one more
    /// version, and the size grows to cover it. Reads the store only when
    /// the chunk's metadata is not cached in its state already.
    fn bump_meta(&mut self, chunk: ChunkId, offset: u64, len: u64) -> Result<(), StoreError> {
        let meta = &self.shared.meta;
        let old = match self.chunks.get(&chunk).and_then(|c| c.meta) {
            Some(m) => m,
            None => meta.get(&chunk)?.unwrap_or_default(),
        };
        let new = ChunkMeta {
            size: old.size.max(offset + len),
            version: old.version + 1,
        };
        let r = meta.put(&chunk, new);
        if let Some(cs) = self.chunks.get_mut(&chunk) {
            // After a failed put the store's value is not known: read it
            // again next time.
            cs.meta = r.is_ok().then_some(new);
        }
        r
    }

    fn release(&mut self, chunk: ChunkId, idx: usize) {
        let Some(cs) = self.chunks.get_mut(&chunk) else {
            return;
        };
        cs.active.retain(|&i| i != idx);
        let mut blocked: Vec<Lock> = Vec::new();
        let mut i = 0;
        while i < cs.waiting.len() {
            let w = cs.waiting[i];
            let Some(lock) = self.ops.get(w).map(|o| o.lock) else {
                cs.waiting.remove(i);
                continue;
            };
            let busy = cs
                .active
                .iter()
                .filter_map(|&a| self.ops.get(a))
                .any(|o| o.lock.conflicts(&lock))
                || blocked.iter().any(|b| b.conflicts(&lock));
            if busy {
                blocked.push(lock);
                i += 1;
            } else {
                cs.waiting.remove(i);
                cs.active.push(w);
                self.to_start.push_back(w);
            }
        }
        if cs.file.is_none() && cs.active.is_empty() && cs.waiting.is_empty() {
            self.chunks.remove(&chunk);
        }
    }

    fn do_remove(&mut self, idx: usize) {
        let Some(chunk) = self.ops.get(idx).map(|o| o.chunk) else {
            return;
        };
        if let Some(fid) = self.chunks.get_mut(&chunk).and_then(|c| c.file.take()) {
            self.detach_file(fid);
        }
        let path = self.shared.root.join(chunk.relative_path());
        let mut err = match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Some(parent) = path.parent() {
                    self.dirty_dirs.insert(parent.to_path_buf());
                }
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(StoreError::from_io(StoreOp::Remove, chunk, 0, e)),
        };
        if err.is_none() {
            err = self.shared.meta.remove(&chunk).err();
        }
        if let Some(cs) = self.chunks.get_mut(&chunk) {
            // Gone (or, after an error, unknown): no copy to trust.
            cs.meta = None;
        }
        if let (Some(e), Some(op)) = (err, self.ops.get_mut(idx)) {
            op.error = Some(e);
        }
    }

    /// Forgets an open file: closes it now, or once its entries are done.
    fn detach_file(&mut self, fid: usize) {
        let Some(f) = self.files.get_mut(fid) else {
            return;
        };
        if let Some(slot) = f.slot.take() {
            // The kernel holds its own reference for entries in flight.
            let _ = self.ring.clear_file(slot);
        }
        if f.inflight == 0 {
            self.files.remove(fid);
            self.open_files -= 1;
        } else {
            f.detached = true;
        }
    }

    /// The open file of `chunk`, opening (and with `create`, creating) it
    /// if needed. `None`: the chunk has no file and `create` is false.
    fn open_chunk(
        &mut self,
        chunk: ChunkId,
        create: bool,
        offset: u64,
    ) -> Result<Option<usize>, StoreError> {
        self.clock += 1;
        if let Some(fid) = self.chunks.get(&chunk).and_then(|c| c.file) {
            if let Some(f) = self.files.get_mut(fid) {
                f.last_used = self.clock;
                return Ok(Some(fid));
            }
        }
        while self.open_files >= self.cfg.max_open && self.evict_one() {}
        let path = self.shared.root.join(chunk.relative_path());
        let open_err = |e: io::Error| StoreError::from_io(StoreOp::Open, chunk, offset, e);
        let (file, direct, created) = match self.open_file(&path, false) {
            Ok((f, d)) => (f, d, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                self.make_fan_out(chunk).map_err(open_err)?;
                let (f, d) = self.open_file(&path, true).map_err(open_err)?;
                if let Some(parent) = path.parent() {
                    self.dirty_dirs.insert(parent.to_path_buf());
                }
                (f, d, true)
            }
            Err(e) => return Err(open_err(e)),
        };
        bump(if direct {
            &self.shared.stats.files_opened_direct
        } else {
            &self.shared.stats.files_opened_buffered
        });
        let mut dirty = false;
        if !created {
            // Bytes past the durable size are left-overs of writes whose
            // metadata never became durable (or of block padding); cut them
            // so that the chunk reads as zeros past its size.
            let len = file.metadata().map_err(open_err)?.len();
            let meta = self.shared.meta.get(&chunk)?;
            let size = meta.map_or(0, |m| m.size);
            if len > size {
                file.set_len(size).map_err(open_err)?;
                dirty = true;
            }
            self.chunks.entry(chunk).or_default().meta = Some(meta.unwrap_or_default());
        }
        let fid = self.files.insert(OpenFile {
            file,
            chunk,
            slot: None,
            direct,
            dirty,
            inflight: 0,
            last_used: self.clock,
            detached: false,
        });
        self.open_files += 1;
        if let Ok(slot) = u32::try_from(fid) {
            if slot < self.ring.file_slots() {
                if let Some(f) = self.files.get_mut(fid) {
                    if self.ring.set_file(slot, f.file.as_raw_fd()).is_ok() {
                        f.slot = Some(slot);
                    }
                }
            }
        }
        self.chunks.entry(chunk).or_default().file = Some(fid);
        Ok(Some(fid))
    }

    /// Opens `path` read-write, `O_DIRECT` if wanted and possible. Returns
    /// the file and whether it is `O_DIRECT`.
    fn open_file(&self, path: &Path, create: bool) -> io::Result<(File, bool)> {
        let mut direct = self.shared.direct_now();
        if let Some(errno) = self.shared.fault(FaultOp::Open) {
            let e = io::Error::from_raw_os_error(errno);
            if !(direct && errno == libc::EINVAL) {
                return Err(e);
            }
            self.shared.note_direct_unsupported(&e);
            direct = false;
        }
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true).mode(0o644);
            if create {
                o.create(true);
            }
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        if direct {
            match open(true) {
                Ok(f) => return Ok((f, true)),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.shared.note_direct_unsupported(&e);
                }
                Err(e) => return Err(e),
            }
        }
        open(false).map(|f| (f, false))
    }

    /// Creates the two fan-out directories of `chunk` if missing; a new
    /// directory makes its parent dirty (to be synced at the next flush).
    fn make_fan_out(&mut self, chunk: ChunkId) -> io::Result<()> {
        let (a, b) = chunk.fan_out();
        let first = self.shared.root.join(a);
        let second = first.join(b);
        for (dir, parent) in [(&first, &self.shared.root), (&second, &first)] {
            match std::fs::create_dir(dir) {
                Ok(()) => {
                    self.dirty_dirs.insert(parent.clone());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Closes the least recently used idle file. A dirty one is synced
    /// first (blocking this worker briefly), as a flush would; if that fails
    /// the next flush reports it. False if no file is idle.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .files
            .iter()
            .filter(|(_, f)| !f.detached && f.inflight == 0)
            .filter(|(_, f)| {
                self.chunks
                    .get(&f.chunk)
                    .is_none_or(|c| c.active.is_empty())
            })
            .min_by_key(|(_, f)| f.last_used)
            .map(|(i, _)| i);
        let Some(fid) = victim else { return false };
        bump(&self.shared.stats.files_evicted);
        let Some(f) = self.files.get(fid) else {
            return false;
        };
        let chunk = f.chunk;
        if f.dirty {
            let synced = if let Some(errno) = self.shared.fault(FaultOp::Sync) {
                Err(io::Error::from_raw_os_error(errno))
            } else {
                f.file.sync_data()
            };
            if let Err(e) = synced {
                self.sticky
                    .get_or_insert(StoreError::from_io(StoreOp::Flush, chunk, 0, e));
            }
        }
        if let Some(c) = self.chunks.get_mut(&chunk) {
            c.file = None;
            if c.active.is_empty() && c.waiting.is_empty() {
                self.chunks.remove(&chunk);
            }
        }
        self.detach_file(fid);
        true
    }

    /// This worker's part of a flush: `fdatasync` every chunk file changed
    /// since its last sync and `fsync` every directory whose entries changed,
    /// all at once through the ring.
    fn start_flush(&mut self, round: Arc<FlushRound>) {
        let mut error = self.sticky.take();
        let mut items = Vec::new();
        for (id, f) in self.files.items.iter_mut().enumerate() {
            let Some(f) = f else { continue };
            if f.dirty && !f.detached {
                f.dirty = false;
                items.push(FlushItem::File { id, chunk: f.chunk });
            }
        }
        for path in std::mem::take(&mut self.dirty_dirs) {
            match File::open(&path) {
                Ok(dir) => items.push(FlushItem::Dir { path, dir }),
                Err(source) => {
                    error.get_or_insert(StoreError::DirSync {
                        path: path.clone(),
                        source,
                    });
                    self.dirty_dirs.insert(path);
                }
            }
        }
        if items.is_empty() {
            round.part_done(error);
            return;
        }
        let mut entries = Vec::with_capacity(items.len());
        for item in &items {
            match item {
                FlushItem::File { id, .. } => {
                    if let Some(f) = self.files.get_mut(*id) {
                        f.inflight += 1;
                        entries.push(ring::fsync(f.target(), true));
                    }
                }
                FlushItem::Dir { dir, .. } => {
                    entries.push(ring::fsync(Target::Fd(dir.as_raw_fd()), false));
                }
            }
        }
        let outstanding = entries.len();
        let job = self.flushes.insert(FlushJob {
            round,
            items,
            outstanding,
            error,
        });
        for (i, e) in entries.into_iter().enumerate() {
            let ud = TAG_FLUSH | (job as u64) << ITEM_BITS | i as u64;
            let e = match self.shared.fault(FaultOp::Sync) {
                Some(errno) => {
                    bump(&self.shared.stats.faults_injected);
                    self.injected.insert(ud, errno);
                    ring::nop()
                }
                None => e,
            };
            self.in_ring += 1;
            // SAFETY: a sync entry names no memory; its descriptor is a
            // chunk file whose `inflight` count was raised above (so it stays
            // open) or a directory held in the job's items until the job ends.
            unsafe { self.push_raw(&e.user_data(ud)) };
        }
    }

    fn on_flush_completion(&mut self, job: usize, item: usize, res: i32) {
        let (file_id, failure) = {
            let Some(j) = self.flushes.get_mut(job) else {
                return;
            };
            j.outstanding -= 1;
            match j.items.get(item) {
                Some(FlushItem::File { id, chunk }) => {
                    let e = (res < 0).then(|| {
                        StoreError::from_io(
                            StoreOp::Flush,
                            *chunk,
                            0,
                            io::Error::from_raw_os_error(-res),
                        )
                    });
                    (Some(*id), e.map(|e| (e, None)))
                }
                Some(FlushItem::Dir { path, .. }) => {
                    let e = (res < 0).then(|| StoreError::DirSync {
                        path: path.clone(),
                        source: io::Error::from_raw_os_error(-res),
                    });
                    (None, e.map(|e| (e, Some(path.clone()))))
                }
                None => (None, None),
            }
        };
        if let Some((e, dir)) = failure {
            // Still not durable: the next flush tries again. (Linux may
            // already have dropped the failed pages; the error reported now
            // is what tells the caller.)
            match dir {
                Some(path) => {
                    self.dirty_dirs.insert(path);
                }
                None => {
                    if let Some(f) = file_id.and_then(|f| self.files.get_mut(f)) {
                        f.dirty = true;
                    }
                }
            }
            if let Some(j) = self.flushes.get_mut(job) {
                j.error.get_or_insert(e);
            }
        }
        if let Some(fid) = file_id {
            self.file_entry_done(fid);
        }
        if self.flushes.get(job).is_some_and(|j| j.outstanding == 0) {
            if let Some(j) = self.flushes.remove(job) {
                j.round.part_done(j.error);
            }
        }
    }
}

impl Transfer {
    /// Placeholder until the op starts and knows its file.
    fn direct_to_caller(offset: u64) -> Transfer {
        Transfer {
            bounce: None,
            file_start: offset,
            pos: 0,
            edges: false,
        }
    }

    /// How to move `len` bytes at `offset`: straight through the caller's
    /// buffer unless the file is `O_DIRECT` and the request is not
    /// block-aligned (the caller's buffer memory always is, being an
    /// `IoBuf`); then through a bounce buffer covering the whole blocks,
    /// taken from the pool if one is free and big enough (so it is a fixed
    /// buffer), else allocated.
    fn plan(direct: bool, offset: u64, len: usize, pool: &BufPool, write: bool) -> Transfer {
        let end = offset + len as u64;
        if !direct || (offset % DIRECT_ALIGN == 0 && end % DIRECT_ALIGN == 0) {
            return Transfer::direct_to_caller(offset);
        }
        let start = align_down(offset);
        let span = (align_up(end) - start) as usize;
        let mut bounce = if span <= pool.buf_size() {
            pool.try_take().unwrap_or_else(|| IoBuf::alloc(span))
        } else {
            IoBuf::alloc(span)
        };
        bounce.set_len(span);
        Transfer {
            bounce: Some(bounce),
            file_start: start,
            pos: 0,
            edges: write,
        }
    }
}
