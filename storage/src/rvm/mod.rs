//! Recoverable virtual memory (RVM), in the image of Coda's: a segment file
//! mapped `MAP_PRIVATE` plus a redo log.
//!
//! A brick keeps its metadata (volumes, pending marks, versions, inodes) in
//! one segment. A [`Transaction`] takes exclusive access to the segment's
//! memory, declares the ranges it changes ([`Transaction::set_range`], or
//! implicitly through [`Transaction::write`]), changes them, and commits by
//! appending the new bytes of those ranges to the redo log. The segment file
//! on disk is changed **only** by applying the log (truncation), never through
//! the mapping, so a crash leaves every byte either old or new, and recovery
//! replays the log's committed records in order.
//!
//! What this module must not do: interpret the bytes of the segment (that is
//! [`heap`] and [`map`] and the layers above), or write the segment file
//! anywhere but in truncation and recovery.
//!
//! # Writing outside declared ranges
//!
//! There is no `&mut [u8]` into the segment in the API. The only way to change
//! bytes is [`Transaction::write`], which declares the range itself (as
//! [`Transaction::set_range`] would) before copying; so every changed byte is
//! covered by a declared range, and abort restores it. `set_range` stays for
//! callers that want to declare first (it saves the old bytes once).
//! The first [`format::SEG_FIXED_END`] bytes (the immutable segment header)
//! refuse writes with [`RvmError::Reserved`].
//!
//! # Segment file
//!
//! ```text
//! offset  size  field
//!      0     8  magic "STRVMSEG"                         SEG_OFF_MAGIC
//!      8     4  version (1)                              SEG_OFF_VERSION
//!     12     4  header size (4096)                       SEG_OFF_HEADER_SIZE
//!     16     8  segment size in bytes                    SEG_OFF_SIZE
//!     24     8  segment id (random; also in the log)     SEG_OFF_ID
//!     32     4  CRC32C of bytes 0..32                    SEG_OFF_CRC
//!     36    28  zero                                     .. SEG_FIXED_END = 64
//!     64   128  root table: 16 x u64 (0 = empty)         SEG_OFF_ROOTS
//!    192    64  zero (reserved)
//!    256   ...  heap state (see `heap`)                  SEG_OFF_HEAP
//!   4096   ...  heap arena                               SEG_HEADER_SIZE
//! ```
//! Bytes `0..64` are written once at creation; everything from 64 on changes
//! only through transactions.
//!
//! # Log file
//!
//! ```text
//! block 0 (4096 bytes): two header slots of 512 bytes; epoch e lives in slot e % 2
//!   slot offset  size  field
//!        0     8  magic "STRVMLOG"                        LOG_OFF_MAGIC
//!        8     4  version (1; also the record format)     LOG_OFF_VERSION
//!       12     4  zero                                    LOG_OFF_RESERVED
//!       16     8  epoch                                   LOG_OFF_EPOCH
//!       24     8  sequence number of the epoch's first record  LOG_OFF_START_SEQ
//!       32     8  log file size                           LOG_OFF_LOG_SIZE
//!       40     8  segment id                              LOG_OFF_SEGMENT_ID
//!       48     4  CRC32C of slot bytes 0..48              LOG_OFF_CRC
//!       52   460  zero
//!   1024..4096    zero
//! 4096 .. log size: records of the current epoch, back to back    LOG_DATA_START
//!
//! record (all sizes multiples of 8):
//!        0     4  magic "RVMr"                            REC_OFF_MAGIC
//!        4     4  total length (header + ranges)          REC_OFF_LEN
//!        8     8  sequence number                         REC_OFF_SEQ
//!       16     4  number of ranges                        REC_OFF_NRANGES
//!       20     4  CRC32C(epoch u64 ++ log position u64 ++ record with this field zero)  REC_OFF_CRC
//!       24        ranges, each:
//!                   0   8  segment offset                 RANGE_OFF_OFFSET
//!                   8   4  data length n                  RANGE_OFF_LEN
//!                  12   4  zero                           RANGE_OFF_RESERVED
//!                  16   n  new bytes, then zero padding to a multiple of 8
//! ```
//!
//! # Algorithms
//!
//! * **Commit**: under the memory lock, the committing transaction encodes a
//!   record of its ranges' new bytes into the in-memory log tail (so log order
//!   is the order in which transactions changed memory), releases the memory
//!   lock, and (with [`CommitMode::Flush`]) waits until its sequence number is
//!   durable. [`CommitMode::NoFlush`] returns at once; a background flusher
//!   makes it durable within [`RvmOptions::flush_delay`].
//! * **Group commit**: whoever waits and finds no write in progress becomes
//!   the leader: it copies the tail (from the 4 KiB block holding the durable
//!   end up to everything appended so far, zero-padded to 4 KiB) into an
//!   aligned buffer, writes it with one `pwrite` (`O_DIRECT|O_DSYNC`) and
//!   syncs, then wakes everyone whose record it covered (and one later waiter, to lead the next write). Commits appended
//!   while a write is in flight ride the next one. The last partial block is
//!   rewritten by the next write with the same bytes in its durable part, so a
//!   torn rewrite cannot lose durable records (sectors are written whole).
//! * **Truncation** (log over half full, log full at commit, clean close, or
//!   [`Rvm::truncate`]): under the memory lock (no transaction in flight),
//!   make the whole tail durable, write every segment page changed since the
//!   last truncation from memory to the segment file, `fdatasync` it, then
//!   write the log header for epoch + 1 (start sequence = next sequence) and
//!   sync it. Old records stay in the file but their checksums bind the old
//!   epoch, so they never verify again. If a commit finds the log full, it
//!   takes its own changes out of memory (restoring the old bytes), truncates,
//!   puts them back and appends.
//! * **Recovery** (every open): read the header slot with the highest valid
//!   epoch, then parse records from 4096 on, expecting sequence numbers
//!   `start_seq, start_seq + 1, ...`; apply each to the segment file; stop at
//!   the first record that fails (bad magic, length, checksum, sequence or
//!   range). Sync the segment, then start a new epoch, so records after the
//!   stopping point can never be mistaken for later ones. Then map.
//!
//! See `docs/rvm.md` for the longer story.

pub mod format;
pub mod heap;
pub mod map;
pub mod sim;

mod file;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iobuf::IoBuf;
use memmap2::MmapMut;

pub use file::{DiskFile, RvmFile, RvmFiles};
pub use format::{ROOT_SLOTS, SEG_HEADER_SIZE};

use format::{LogHeader, SegmentHeader, BLOCK, LOG_DATA_START, SEG_FIXED_END, SEG_OFF_ROOTS};

/// Smallest output buffer a log write allocates (it is then reused).
const LOG_OUT_MIN: usize = 64 * 1024;

/// Name of the segment file inside an RVM directory.
pub const SEGMENT_FILE: &str = "rvm.seg";
/// Name of the log file inside an RVM directory.
pub const LOG_FILE: &str = "rvm.log";

/// Sizes and timing of an RVM instance.
///
/// At [`Rvm::open`] the sizes come from the files' headers and these are
/// ignored; only `flush_delay` matters there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RvmOptions {
    /// Segment size in bytes (rounded up to 4096; at least 8192).
    pub segment_size: u64,
    /// Log file size in bytes (rounded up to 4096; at least 12288).
    pub log_size: u64,
    /// Longest time a [`CommitMode::NoFlush`] commit stays volatile while
    /// the instance runs. `Duration::MAX` turns the background flusher off:
    /// NoFlush commits then become durable at the next flush, Flush commit,
    /// truncation or close, and automatic truncation runs in the committing
    /// thread (deterministic I/O order, which crash tests need).
    pub flush_delay: Duration,
}

impl Default for RvmOptions {
    fn default() -> RvmOptions {
        RvmOptions {
            segment_size: 64 << 20,
            log_size: 16 << 20,
            flush_delay: Duration::from_millis(50),
        }
    }
}

/// How durable a commit is when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMode {
    /// Durable when `commit` returns.
    Flush,
    /// Durable at the next flush (within `flush_delay`); after a crash it is
    /// present or absent as a whole, and never present without every commit
    /// before it.
    NoFlush,
}

/// Errors of RVM and of the heap and map built on it.
#[derive(Debug, thiserror::Error)]
pub enum RvmError {
    #[error("rvm i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("rvm {path} corrupt at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("rvm {path}: unsupported {what} format version {found} (this code reads {supported})")]
    BadVersion {
        path: PathBuf,
        what: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("rvm range {offset}+{len} outside the segment of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("rvm range {offset}+{len} touches the immutable segment header")]
    Reserved { offset: u64, len: u64 },
    #[error("rvm root slot {slot} does not exist (there are {ROOT_SLOTS})")]
    BadRoot { slot: u32 },
    #[error("rvm heap has no room for {requested} bytes")]
    NoSpace { requested: u64 },
    #[error("rvm heap: offset {offset} is not an allocated block")]
    BadPointer { offset: u64 },
    #[error("rvm transaction needs {len} log bytes but the log holds only {capacity}")]
    TooLarge { len: u64, capacity: u64 },
    #[error("rvm map key of {len} bytes is longer than {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("rvm options invalid: {reason}")]
    InvalidOptions { reason: String },
    #[error("rvm stopped after an earlier i/o error; reopen to recover")]
    Poisoned,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RvmError + '_ {
    move |source| RvmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Counters, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RvmStats {
    /// Commits that appended a record.
    pub commits: u64,
    /// Log writes (each followed by a sync): fewer than `commits` when
    /// group commit shared them.
    pub log_writes: u64,
    /// Truncations (log applied to the segment, new epoch).
    pub truncations: u64,
    /// Record bytes appended.
    pub log_bytes: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    log_writes: AtomicU64,
    truncations: AtomicU64,
    log_bytes: AtomicU64,
}

/// The segment's bytes in memory: a private mapping of the file, or (for
/// backends without one) an owned copy.
enum Image {
    Mapped(MmapMut),
    Owned(Vec<u8>),
}

impl Image {
    fn bytes(&self) -> &[u8] {
        match self {
            Image::Mapped(m) => m,
            Image::Owned(v) => v,
        }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Image::Mapped(m) => m,
            Image::Owned(v) => v,
        }
    }
}

/// First piece of the log's record area recovery reads; it doubles as
/// records turn up.
const RECOVERY_READ_MIN: usize = 256 * 1024;

/// The log's record area (log bytes from [`LOG_DATA_START`]) as far as
/// recovery has read it. Recovery used to read the whole area up front (16
/// MiB by default) whatever the log held; now it reads what the records
/// span, doubling the piece it reads each time.
struct LogArea {
    buf: IoBuf,
    /// Bytes read so far (a multiple of 4096, or `total`).
    loaded: usize,
    /// Size of the whole record area.
    total: usize,
}

impl LogArea {
    fn new(total: usize) -> LogArea {
        LogArea {
            buf: IoBuf::alloc(0),
            loaded: 0,
            total,
        }
    }

    /// Reads enough that the record at `at` parses exactly as it would with
    /// the whole area in memory: its header, then as many bytes as its
    /// length field claims (all of the area if that runs past the end).
    /// `format::parse_record` looks at the length of what it is given only
    /// to refuse a record longer than that, so with this much it gives the
    /// same answer.
    fn load_record(&mut self, log: &dyn RvmFile, at: usize) -> io::Result<()> {
        self.load_to(log, at.saturating_add(format::REC_HEADER))?;
        let len_at = at + format::REC_OFF_LEN;
        if let Some(b) = self.buf.as_slice().get(len_at..len_at + 4) {
            let claimed = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            self.load_to(log, at.saturating_add(claimed))?;
        }
        Ok(())
    }

    fn load_to(&mut self, log: &dyn RvmFile, want: usize) -> io::Result<()> {
        if want <= self.loaded || self.loaded >= self.total {
            return Ok(());
        }
        let block = BLOCK as usize;
        let new_loaded = want
            .next_multiple_of(block)
            .max(self.loaded * 2)
            .max(RECOVERY_READ_MIN)
            .min(self.total);
        if self.buf.capacity() < new_loaded {
            let mut bigger = IoBuf::alloc(new_loaded);
            bigger.set_len(self.loaded);
            bigger.as_mut_slice().copy_from_slice(self.buf.as_slice());
            self.buf = bigger;
        }
        self.buf.set_len(new_loaded);
        // `loaded` is a multiple of 4096 here (only the last piece, which
        // ends the area, can be shorter), so the read stays aligned.
        let from = self.loaded;
        log.read_at(
            LOG_DATA_START + from as u64,
            &mut self.buf.as_mut_slice()[from..new_loaded],
        )?;
        self.loaded = new_loaded;
        Ok(())
    }

    /// The bytes read from `at` on.
    fn from(&self, at: usize) -> &[u8] {
        self.buf.as_slice().get(at..).unwrap_or(&[])
    }
}

/// Memory state, guarded by the memory lock a transaction holds.
struct Mem {
    image: Image,
    /// One bit per 4 KiB page changed by a commit since the last truncation.
    dirty: Vec<u64>,
}

impl Mem {
    fn mark_dirty(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        for p in offset / BLOCK..=(offset + len - 1) / BLOCK {
            self.dirty[(p / 64) as usize] |= 1 << (p % 64);
        }
    }
    fn is_dirty(&self, page: u64) -> bool {
        self.dirty[(page / 64) as usize] & (1 << (page % 64)) != 0
    }
    fn restore(&mut self, saved: &BTreeMap<u64, Vec<u8>>) {
        let img = self.image.bytes_mut();
        for (&s, old) in saved {
            img[s as usize..s as usize + old.len()].copy_from_slice(old);
        }
    }
}

/// Log state, guarded by the log lock (never held across a wait for the
/// memory lock; the memory lock may be held while taking it).
struct LogState {
    epoch: u64,
    segment_id: u64,
    /// The header block as on disk, so a new epoch rewrites one slot and
    /// keeps the other.
    header_block: IoBuf,
    next_seq: u64,
    /// Log position of `buf[0]`: the start of the block holding the durable
    /// end.
    buf_base: u64,
    /// Log bytes from `buf_base` to `append_end`.
    buf: Vec<u8>,
    append_end: u64,
    appended_seq: u64,
    durable_seq: u64,
    /// A leader is writing the tail.
    writing: bool,
    /// Log writes started so far; the one in flight (if `writing`) is
    /// number `write_gen`, and its waiters sleep on `durable_cv[write_gen % 2]`.
    write_gen: u64,
    /// The last sequence number the write in flight covers.
    writing_seq: u64,
    /// Threads asleep on `durable_cv[i]` (see `Inner::sleep_on`).
    sleepers: [usize; 2],
    /// The leaders' aligned output buffer, kept between writes.
    out: Option<IoBuf>,
    /// An I/O failed: no more commits until reopened.
    failed: bool,
    /// When the oldest not-yet-durable NoFlush commit was appended.
    noflush_since: Option<Instant>,
    truncate_wanted: bool,
    shutdown: bool,
}

struct Inner {
    seg: Box<dyn RvmFile>,
    log: Box<dyn RvmFile>,
    size: u64,
    log_size: u64,
    mem: Mutex<Mem>,
    log_state: Mutex<LogState>,
    /// Signalled when a log write ends or the log fails: write number `g`
    /// signals `durable_cv[g % 2]` (see `Inner::wait_durable`).
    durable_cv: [Condvar; 2],
    /// Wakes the background flusher.
    flusher_cv: Condvar,
    background: bool,
    counters: Counters,
}

/// A recoverable segment and its log. `Send + Sync`; share it through an
/// `Arc` between threads.
pub struct Rvm {
    inner: Arc<Inner>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    closed: bool,
}

impl std::fmt::Debug for Rvm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rvm")
            .field("segment", &self.inner.seg.path())
            .field("size", &self.inner.size)
            .finish()
    }
}

fn new_segment_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave these structures torn in a
    // way that matters more than the panic itself; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Rvm {
    /// Creates `dir/rvm.seg` and `dir/rvm.log` (error if either exists) and
    /// opens them.
    pub fn create(dir: &Path, opts: &RvmOptions) -> Result<Rvm, RvmError> {
        let seg_path = dir.join(SEGMENT_FILE);
        let log_path = dir.join(LOG_FILE);
        let seg = DiskFile::open_segment(&seg_path, true).map_err(io_err(&seg_path))?;
        let log = DiskFile::open_log(&log_path, true).map_err(io_err(&log_path))?;
        file::sync_dir(dir).map_err(io_err(dir))?;
        Rvm::create_with(
            RvmFiles {
                segment: Box::new(seg),
                log: Box::new(log),
            },
            opts,
        )
    }

    /// Opens `dir/rvm.seg` and `dir/rvm.log`, recovering from the log.
    pub fn open(dir: &Path, opts: &RvmOptions) -> Result<Rvm, RvmError> {
        let seg_path = dir.join(SEGMENT_FILE);
        let log_path = dir.join(LOG_FILE);
        let seg = DiskFile::open_segment(&seg_path, false).map_err(io_err(&seg_path))?;
        let log = DiskFile::open_log(&log_path, false).map_err(io_err(&log_path))?;
        Rvm::open_with(
            RvmFiles {
                segment: Box::new(seg),
                log: Box::new(log),
            },
            opts,
        )
    }

    /// Formats two empty files (of any backend) and opens them.
    pub fn create_with(files: RvmFiles, opts: &RvmOptions) -> Result<Rvm, RvmError> {
        let size = opts.segment_size.next_multiple_of(BLOCK);
        let log_size = opts.log_size.next_multiple_of(BLOCK);
        if size < 2 * SEG_HEADER_SIZE {
            return Err(RvmError::InvalidOptions {
                reason: format!("segment size {size} below {}", 2 * SEG_HEADER_SIZE),
            });
        }
        if log_size < LOG_DATA_START + 2 * BLOCK {
            return Err(RvmError::InvalidOptions {
                reason: format!("log size {log_size} below {}", LOG_DATA_START + 2 * BLOCK),
            });
        }
        let RvmFiles { segment, log } = &files;
        for f in [segment, log] {
            if !f.is_empty().map_err(io_err(f.path()))? {
                return Err(RvmError::InvalidOptions {
                    reason: format!("{} is not empty", f.path().display()),
                });
            }
        }
        let id = new_segment_id();
        segment.allocate(size).map_err(io_err(segment.path()))?;
        let mut page = IoBuf::alloc(SEG_HEADER_SIZE as usize);
        page.set_len(SEG_HEADER_SIZE as usize);
        SegmentHeader { size, id }.encode(page.as_mut_slice());
        segment
            .write_at(0, page.as_slice())
            .and_then(|_| segment.sync())
            .map_err(io_err(segment.path()))?;
        log.allocate(log_size).map_err(io_err(log.path()))?;
        let mut block = IoBuf::alloc(BLOCK as usize);
        block.set_len(BLOCK as usize);
        LogHeader {
            epoch: 1,
            start_seq: 1,
            log_size,
            segment_id: id,
        }
        .encode_into_block(block.as_mut_slice());
        log.write_at(0, block.as_slice())
            .and_then(|_| log.sync())
            .map_err(io_err(log.path()))?;
        Rvm::open_with(files, opts)
    }

    /// Opens two formatted files (of any backend): replays the log into the
    /// segment, starts a new log epoch, then maps the segment.
    pub fn open_with(files: RvmFiles, opts: &RvmOptions) -> Result<Rvm, RvmError> {
        let RvmFiles { segment: seg, log } = files;
        let seg_path = seg.path().to_path_buf();
        let log_path = log.path().to_path_buf();
        let mut page = vec![0u8; SEG_HEADER_SIZE as usize];
        let seg_len = seg.len().map_err(io_err(&seg_path))?;
        if seg_len < SEG_HEADER_SIZE {
            return Err(RvmError::Corrupt {
                path: seg_path,
                offset: 0,
                reason: format!("segment file of {seg_len} bytes has no header"),
            });
        }
        seg.read_at(0, &mut page).map_err(io_err(&seg_path))?;
        let sh = SegmentHeader::decode(&page, &seg_path)?;
        if seg_len < sh.size {
            return Err(RvmError::Corrupt {
                path: seg_path,
                offset: 0,
                reason: format!("segment file of {seg_len} bytes, header says {}", sh.size),
            });
        }
        let log_len = log.len().map_err(io_err(&log_path))?;
        if log_len < LOG_DATA_START {
            return Err(RvmError::Corrupt {
                path: log_path,
                offset: 0,
                reason: format!("log file of {log_len} bytes has no header"),
            });
        }
        let mut block = IoBuf::alloc(BLOCK as usize);
        block.set_len(BLOCK as usize);
        log.read_at(0, block.as_mut_slice())
            .map_err(io_err(&log_path))?;
        let lh = LogHeader::decode_block(block.as_slice(), &log_path)?;
        if lh.start_seq == 0 {
            return Err(RvmError::Corrupt {
                path: log_path,
                offset: 0,
                reason: "log header start sequence is 0".to_string(),
            });
        }
        if lh.segment_id != sh.id {
            return Err(RvmError::Corrupt {
                path: log_path,
                offset: 0,
                reason: "log belongs to another segment".to_string(),
            });
        }
        if lh.log_size > log_len || lh.log_size < LOG_DATA_START + BLOCK || lh.log_size % BLOCK != 0
        {
            return Err(RvmError::Corrupt {
                path: log_path,
                offset: 0,
                reason: format!(
                    "log size in header {} does not fit file of {log_len} bytes",
                    lh.log_size
                ),
            });
        }

        // Replay, reading the record area only as far as the records go.
        let mut area = LogArea::new((lh.log_size - LOG_DATA_START) as usize);
        let mut pos = LOG_DATA_START;
        let mut seq = lh.start_seq;
        let mut replayed = 0u64;
        loop {
            let at = (pos - LOG_DATA_START) as usize;
            area.load_record(&*log, at).map_err(io_err(&log_path))?;
            let rest = area.from(at);
            match format::parse_record(rest, lh.epoch, pos, seq, SEG_FIXED_END, sh.size) {
                Ok(rec) => {
                    for (off, data) in &rec.ranges {
                        seg.write_at(*off, data).map_err(io_err(&seg_path))?;
                    }
                    pos += rec.len;
                    seq += 1;
                    replayed += 1;
                }
                Err(end) => {
                    tracing::debug!(
                        log = %log_path.display(),
                        epoch = lh.epoch,
                        position = pos,
                        replayed,
                        ?end,
                        "rvm recovery reached the end of the log"
                    );
                    break;
                }
            }
        }
        if replayed > 0 {
            seg.sync().map_err(io_err(&seg_path))?;
        }
        let new_header = LogHeader {
            epoch: lh.epoch + 1,
            start_seq: seq,
            log_size: lh.log_size,
            segment_id: sh.id,
        };
        new_header.encode_into_block(block.as_mut_slice());
        log.write_at(0, block.as_slice())
            .and_then(|_| log.sync())
            .map_err(io_err(&log_path))?;

        // Map (or load) the recovered segment.
        let image = match seg.map_private(sh.size) {
            Some(m) => Image::Mapped(m.map_err(io_err(&seg_path))?),
            None => {
                let mut v = vec![0u8; sh.size as usize];
                seg.read_at(0, &mut v).map_err(io_err(&seg_path))?;
                Image::Owned(v)
            }
        };
        let pages = sh.size / BLOCK;
        let background = opts.flush_delay != Duration::MAX;
        let inner = Arc::new(Inner {
            seg,
            log,
            size: sh.size,
            log_size: lh.log_size,
            mem: Mutex::new(Mem {
                image,
                dirty: vec![0; pages.div_ceil(64) as usize],
            }),
            log_state: Mutex::new(LogState {
                epoch: new_header.epoch,
                segment_id: sh.id,
                header_block: block,
                next_seq: seq,
                buf_base: LOG_DATA_START,
                buf: Vec::new(),
                append_end: LOG_DATA_START,
                appended_seq: seq - 1,
                durable_seq: seq - 1,
                writing: false,
                write_gen: 0,
                writing_seq: 0,
                sleepers: [0; 2],
                out: None,
                failed: false,
                noflush_since: None,
                truncate_wanted: false,
                shutdown: false,
            }),
            durable_cv: [Condvar::new(), Condvar::new()],
            flusher_cv: Condvar::new(),
            background,
            counters: Counters::default(),
        });
        let flusher = if background {
            let inner2 = Arc::clone(&inner);
            let delay = opts.flush_delay;
            Some(
                std::thread::Builder::new()
                    .name("rvm-flusher".to_string())
                    .spawn(move || inner2.flusher_loop(delay))
                    .map_err(io_err(&log_path))?,
            )
        } else {
            None
        };
        Ok(Rvm {
            inner,
            flusher: Mutex::new(flusher),
            closed: false,
        })
    }

    /// Starts a transaction: waits for exclusive access to the segment's
    /// memory, which it keeps until commit or abort. Do not begin a second
    /// transaction (or call [`Rvm::read`]) on the same thread while one is
    /// open: it would wait for itself.
    pub fn begin(&self) -> Transaction<'_> {
        Transaction {
            inner: &self.inner,
            mem: Some(lock(&self.inner.mem)),
            saved: BTreeMap::new(),
        }
    }

    /// Copies committed bytes (and those of NoFlush commits not yet
    /// durable) at `offset` into `buf`. Waits while a transaction is open.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), RvmError> {
        self.inner.check(offset, buf.len() as u64)?;
        let mem = lock(&self.inner.mem);
        buf.copy_from_slice(&mem.image.bytes()[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    /// The value of root slot `slot` (0 when never set).
    pub fn root(&self, slot: u32) -> Result<u64, RvmError> {
        self.read_u64(root_offset(slot)?)
    }

    /// Makes every commit so far durable.
    pub fn flush(&self) -> Result<(), RvmError> {
        self.inner.flush()
    }

    /// Applies the log to the segment file and starts a new log epoch.
    pub fn truncate(&self) -> Result<(), RvmError> {
        self.inner.truncate()
    }

    /// Segment size in bytes.
    pub fn segment_size(&self) -> u64 {
        self.inner.size
    }

    /// Usable log bytes (file size minus the header block).
    pub fn log_capacity(&self) -> u64 {
        self.inner.log_size - LOG_DATA_START
    }

    /// Counters since open.
    pub fn stats(&self) -> RvmStats {
        let c = &self.inner.counters;
        RvmStats {
            commits: c.commits.load(Ordering::Relaxed),
            log_writes: c.log_writes.load(Ordering::Relaxed),
            truncations: c.truncations.load(Ordering::Relaxed),
            log_bytes: c.log_bytes.load(Ordering::Relaxed),
        }
    }

    /// Clean close: stops the flusher, makes everything durable and
    /// truncates the log. Dropping does the same but can only log errors.
    pub fn close(mut self) -> Result<(), RvmError> {
        self.closed = true;
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), RvmError> {
        {
            let mut st = lock(&self.inner.log_state);
            st.shutdown = true;
            self.inner.flusher_cv.notify_all();
        }
        if let Some(h) = lock(&self.flusher).take() {
            if h.join().is_err() {
                tracing::warn!("rvm flusher thread panicked");
            }
        }
        if lock(&self.inner.log_state).failed {
            return Err(RvmError::Poisoned);
        }
        self.inner.truncate()
    }
}

impl Drop for Rvm {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "rvm close on drop failed; the log will be replayed at next open");
        }
    }
}

fn root_offset(slot: u32) -> Result<u64, RvmError> {
    if slot >= ROOT_SLOTS {
        return Err(RvmError::BadRoot { slot });
    }
    Ok(SEG_OFF_ROOTS + 8 * slot as u64)
}

enum FlusherAction {
    Flush,
    Truncate,
}

impl Inner {
    fn check(&self, offset: u64, len: u64) -> Result<(), RvmError> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(RvmError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        Ok(())
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<(), RvmError> {
        self.check(offset, len)?;
        if offset < SEG_FIXED_END && len > 0 {
            return Err(RvmError::Reserved { offset, len });
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), RvmError> {
        let seq = lock(&self.log_state).appended_seq;
        self.wait_durable(seq)
    }

    fn truncate(&self) -> Result<(), RvmError> {
        let mut mem = lock(&self.mem);
        self.truncate_locked(&mut mem)
    }

    /// Waits until record `seq` is durable, leading a log write when no one
    /// else is.
    ///
    /// Wake-ups are targeted: a waiter whose record the write in flight
    /// covers sleeps on that write's condvar, which the leader broadcasts
    /// when it is done (all of them are finished then); a waiter whose
    /// record came too late sleeps on the next write's condvar, where the
    /// leader wakes just one, to lead that write. The rest of them are
    /// covered by it and sleep on until it completes. Nobody wakes only to
    /// go back to sleep.
    fn wait_durable(&self, seq: u64) -> Result<(), RvmError> {
        let mut st = lock(&self.log_state);
        loop {
            if st.durable_seq >= seq {
                return Ok(());
            }
            if st.failed {
                return Err(RvmError::Poisoned);
            }
            if st.writing {
                let gen = if seq <= st.writing_seq {
                    st.write_gen
                } else {
                    st.write_gen + 1
                };
                st = self.sleep_on(gen, st);
                continue;
            }
            st.writing = true;
            st.write_gen += 1;
            let gen = st.write_gen;
            let base = st.buf_base;
            let target_end = st.append_end;
            let target_seq = st.appended_seq;
            st.writing_seq = target_seq;
            let n = (target_end - base).next_multiple_of(BLOCK) as usize;
            // One aligned buffer, reused by every leader (only the leader,
            // `writing`, holds it), so a log write allocates nothing.
            let mut out = match st.out.take() {
                Some(b) if b.capacity() >= n => b,
                _ => IoBuf::alloc(n.max(LOG_OUT_MIN)),
            };
            out.set_len(n);
            let filled = st.buf.len();
            out.as_mut_slice()[..filled].copy_from_slice(&st.buf);
            // The padding must not carry bytes of an earlier write.
            out.as_mut_slice()[filled..].fill(0);
            drop(st);
            let r = self
                .log
                .write_at(base, out.as_slice())
                .and_then(|_| self.log.sync());
            st = lock(&self.log_state);
            st.writing = false;
            st.out = Some(out);
            if let Err(source) = r {
                st.failed = true;
                self.notify_everyone();
                return Err(RvmError::Io {
                    path: self.log.path().to_path_buf(),
                    source,
                });
            }
            self.counters.log_writes.fetch_add(1, Ordering::Relaxed);
            st.durable_seq = target_seq;
            let new_base = target_end - target_end % BLOCK;
            let drop_n = (new_base - st.buf_base) as usize;
            st.buf.drain(..drop_n);
            st.buf_base = new_base;
            if st.durable_seq >= st.appended_seq {
                st.noflush_since = None;
            }
            // Everyone this write covered (and a truncation waiting for
            // `writing` to clear) may go.
            if st.sleepers[(gen % 2) as usize] > 0 {
                self.cv_of(gen).notify_all();
            }
            if st.appended_seq > st.durable_seq {
                // Records appended meanwhile: one of their waiters leads
                // the next write (if none is waiting, they are NoFlush
                // records and the flusher takes care of them).
                if st.sleepers[((gen + 1) % 2) as usize] > 0 {
                    self.cv_of(gen + 1).notify_one();
                }
            }
        }
    }

    /// Sleeps on the condvar of write `gen`, counted in `sleepers` so that
    /// a leader with no one to wake skips the notify (a system call even
    /// when nobody sleeps). Counting and sleeping happen under the log lock,
    /// which the notifier holds too, so it cannot miss a sleeper.
    fn sleep_on<'a>(&self, gen: u64, mut st: MutexGuard<'a, LogState>) -> MutexGuard<'a, LogState> {
        let p = (gen % 2) as usize;
        st.sleepers[p] += 1;
        let mut st = self.cv_of(gen).wait(st).unwrap_or_else(|e| e.into_inner());
        st.sleepers[p] -= 1;
        st
    }

    /// The condvar of log write number `gen` (writes alternate between two).
    fn cv_of(&self, gen: u64) -> &Condvar {
        &self.durable_cv[(gen % 2) as usize]
    }

    /// Wakes every waiter (the log failed).
    fn notify_everyone(&self) {
        for cv in &self.durable_cv {
            cv.notify_all();
        }
    }

    fn fail(&self) {
        let mut st = lock(&self.log_state);
        st.failed = true;
        self.notify_everyone();
    }

    /// Truncation; the caller holds the memory lock, so no transaction is
    /// in flight and no record can be appended meanwhile.
    fn truncate_locked(&self, mem: &mut Mem) -> Result<(), RvmError> {
        self.flush()?;
        let seg_err = |source| {
            self.fail();
            RvmError::Io {
                path: self.seg.path().to_path_buf(),
                source,
            }
        };
        let pages = self.size / BLOCK;
        let mut wrote = false;
        let mut p = 0;
        while p < pages {
            if !mem.is_dirty(p) {
                p += 1;
                continue;
            }
            let start = p;
            while p < pages && mem.is_dirty(p) {
                p += 1;
            }
            let (a, b) = ((start * BLOCK) as usize, (p * BLOCK) as usize);
            self.seg
                .write_at(start * BLOCK, &mem.image.bytes()[a..b])
                .map_err(seg_err)?;
            wrote = true;
        }
        if wrote {
            self.seg.sync().map_err(seg_err)?;
        }
        let mut st = lock(&self.log_state);
        while st.writing {
            let gen = st.write_gen;
            st = self.sleep_on(gen, st);
        }
        if st.failed {
            return Err(RvmError::Poisoned);
        }
        let header = LogHeader {
            epoch: st.epoch + 1,
            start_seq: st.next_seq,
            log_size: self.log_size,
            segment_id: st.segment_id,
        };
        header.encode_into_block(st.header_block.as_mut_slice());
        if let Err(source) = self
            .log
            .write_at(0, st.header_block.as_slice())
            .and_then(|_| self.log.sync())
        {
            st.failed = true;
            self.notify_everyone();
            return Err(RvmError::Io {
                path: self.log.path().to_path_buf(),
                source,
            });
        }
        st.epoch = header.epoch;
        st.buf_base = LOG_DATA_START;
        st.buf.clear();
        st.append_end = LOG_DATA_START;
        st.truncate_wanted = false;
        drop(st);
        mem.dirty.fill(0);
        self.counters.truncations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The commit path, under the memory lock. On error the transaction's
    /// changes are gone from memory unless the record was already appended
    /// (then the error is about durability, and the instance is poisoned).
    fn commit_locked(
        &self,
        mut mem: MutexGuard<'_, Mem>,
        saved: BTreeMap<u64, Vec<u8>>,
        mode: CommitMode,
    ) -> Result<(), RvmError> {
        // A record's length field is a u32.
        let capacity = (self.log_size - LOG_DATA_START).min(u32::MAX as u64 & !7);
        let rec_len = format::record_len(saved.values().map(|v| v.len() as u64));
        if rec_len > capacity {
            mem.restore(&saved);
            return Err(RvmError::TooLarge {
                len: rec_len,
                capacity,
            });
        }
        let (failed, full) = {
            let st = lock(&self.log_state);
            (st.failed, st.append_end + rec_len > self.log_size)
        };
        if failed {
            mem.restore(&saved);
            return Err(RvmError::Poisoned);
        }
        if full {
            // Truncation writes memory to the segment file, and this
            // transaction is not committed yet: take its bytes out while the
            // log is applied, then put them back.
            let new: Vec<(u64, Vec<u8>)> = saved
                .iter()
                .map(|(&s, old)| {
                    let a = s as usize;
                    (s, mem.image.bytes()[a..a + old.len()].to_vec())
                })
                .collect();
            mem.restore(&saved);
            self.truncate_locked(&mut mem)?;
            let img = mem.image.bytes_mut();
            for (s, bytes) in &new {
                img[*s as usize..*s as usize + bytes.len()].copy_from_slice(bytes);
            }
        }
        let mut st = lock(&self.log_state);
        if st.failed {
            drop(st);
            mem.restore(&saved);
            return Err(RvmError::Poisoned);
        }
        let seq = st.next_seq;
        let pos = st.append_end;
        let epoch = st.epoch;
        let at = st.buf.len();
        format::start_record(&mut st.buf, seq, saved.len() as u32);
        for (&s, old) in &saved {
            let a = s as usize;
            format::push_range(&mut st.buf, s, &mem.image.bytes()[a..a + old.len()]);
        }
        format::seal_record(&mut st.buf, at, epoch, pos);
        debug_assert_eq!((st.buf.len() - at) as u64, rec_len);
        st.append_end += rec_len;
        st.next_seq += 1;
        st.appended_seq = seq;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters
            .log_bytes
            .fetch_add(rec_len, Ordering::Relaxed);
        let over_half = st.append_end - LOG_DATA_START > capacity / 2;
        if mode == CommitMode::NoFlush && st.noflush_since.is_none() {
            st.noflush_since = Some(Instant::now());
            self.flusher_cv.notify_all();
        }
        if over_half && self.background {
            st.truncate_wanted = true;
            self.flusher_cv.notify_all();
        }
        drop(st);
        for (&s, old) in &saved {
            mem.mark_dirty(s, old.len() as u64);
        }
        if over_half && !self.background {
            // Everything appended, this record included, is durable after
            // truncation.
            return self.truncate_locked(&mut mem);
        }
        drop(mem);
        match mode {
            CommitMode::Flush => self.wait_durable(seq),
            CommitMode::NoFlush => Ok(()),
        }
    }

    fn flusher_loop(&self, delay: Duration) {
        loop {
            let action = {
                let mut st = lock(&self.log_state);
                loop {
                    if st.shutdown || st.failed {
                        return;
                    }
                    if st.truncate_wanted {
                        break FlusherAction::Truncate;
                    }
                    match st.noflush_since.map(|t| t.checked_add(delay)) {
                        Some(Some(due)) => {
                            let now = Instant::now();
                            if now >= due {
                                break FlusherAction::Flush;
                            }
                            st = self
                                .flusher_cv
                                .wait_timeout(st, due - now)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                        }
                        _ => {
                            st = self.flusher_cv.wait(st).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                }
            };
            let r = match action {
                FlusherAction::Flush => self.flush(),
                FlusherAction::Truncate => self.truncate(),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "rvm background flush failed");
            }
        }
    }
}

/// Reading the segment: implemented by [`Rvm`] (committed bytes) and by
/// [`Transaction`] (including its own uncommitted changes), so the heap and
/// map can read through either.
pub trait SegmentRead {
    /// Copies `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), RvmError>;

    /// The segment file's path, for error messages.
    fn segment_path(&self) -> &Path;

    /// The segment size in bytes (bounds walks over persistent structures).
    fn segment_len(&self) -> u64;

    /// A [`RvmError::Corrupt`] about bytes at `offset` of this segment.
    fn corrupt(&self, offset: u64, reason: &str) -> RvmError {
        RvmError::Corrupt {
            path: self.segment_path().to_path_buf(),
            offset,
            reason: reason.to_string(),
        }
    }

    /// Reads a little-endian u64.
    fn read_u64(&self, offset: u64) -> Result<u64, RvmError> {
        let mut b = [0u8; 8];
        self.read_at(offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a little-endian u32.
    fn read_u32(&self, offset: u64) -> Result<u32, RvmError> {
        let mut b = [0u8; 4];
        self.read_at(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}

impl SegmentRead for Rvm {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), RvmError> {
        self.read(offset, buf)
    }
    fn segment_path(&self) -> &Path {
        self.inner.seg.path()
    }
    fn segment_len(&self) -> u64 {
        self.inner.size
    }
}

impl SegmentRead for Transaction<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), RvmError> {
        self.read(offset, buf)
    }
    fn segment_path(&self) -> &Path {
        self.inner.seg.path()
    }
    fn segment_len(&self) -> u64 {
        self.inner.size
    }
}

impl<T: SegmentRead + ?Sized> SegmentRead for &T {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), RvmError> {
        (**self).read_at(offset, buf)
    }
    fn segment_path(&self) -> &Path {
        (**self).segment_path()
    }
    fn segment_len(&self) -> u64 {
        (**self).segment_len()
    }
}

impl<T: SegmentRead + ?Sized> SegmentRead for &mut T {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), RvmError> {
        (**self).read_at(offset, buf)
    }
    fn segment_path(&self) -> &Path {
        (**self).segment_path()
    }
    fn segment_len(&self) -> u64 {
        (**self).segment_len()
    }
}

/// A transaction: exclusive access to the segment's memory from
/// [`Rvm::begin`] until [`Transaction::commit`] or [`Transaction::abort`]
/// (dropping without commit aborts).
pub struct Transaction<'a> {
    inner: &'a Inner,
    mem: Option<MutexGuard<'a, Mem>>,
    /// Declared ranges, disjoint, keyed by start, with their bytes as they
    /// were before the transaction.
    saved: BTreeMap<u64, Vec<u8>>,
}

impl Transaction<'_> {
    fn mem(&self) -> &Mem {
        // `mem` is `None` only inside commit/abort/drop, which consume the
        // transaction; no method can observe that state.
        match &self.mem {
            Some(m) => m,
            None => unreachable!("transaction used after commit or abort"),
        }
    }

    fn mem_mut(&mut self) -> &mut Mem {
        match &mut self.mem {
            Some(m) => m,
            None => unreachable!("transaction used after commit or abort"),
        }
    }

    /// Declares that this transaction may change `len` bytes at `offset`:
    /// saves their current bytes for abort and logs their new bytes at commit.
    pub fn set_range(&mut self, offset: u64, len: u64) -> Result<(), RvmError> {
        self.inner.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        // Declared ranges that overlap or touch [offset, end): merge them.
        let mut touching = Vec::new();
        for (&s, old) in self.saved.range(..=end).rev() {
            if s + old.len() as u64 >= offset {
                if s <= offset && s + old.len() as u64 >= end {
                    return Ok(());
                }
                touching.push(s);
            } else {
                break;
            }
        }
        let mut ms = offset;
        let mut me = end;
        for s in &touching {
            let l = self.saved[s].len() as u64;
            ms = ms.min(*s);
            me = me.max(s + l);
        }
        let mut old = self.mem().image.bytes()[ms as usize..me as usize].to_vec();
        for s in touching {
            if let Some(v) = self.saved.remove(&s) {
                let a = (s - ms) as usize;
                old[a..a + v.len()].copy_from_slice(&v);
            }
        }
        self.saved.insert(ms, old);
        Ok(())
    }

    /// Declares `offset..offset + data.len()` (see [`Transaction::set_range`])
    /// and writes `data` there.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), RvmError> {
        self.set_range(offset, data.len() as u64)?;
        let a = offset as usize;
        self.mem_mut().image.bytes_mut()[a..a + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Writes a little-endian u64.
    pub fn write_u64(&mut self, offset: u64, v: u64) -> Result<(), RvmError> {
        self.write(offset, &v.to_le_bytes())
    }

    /// Writes a little-endian u32.
    pub fn write_u32(&mut self, offset: u64, v: u32) -> Result<(), RvmError> {
        self.write(offset, &v.to_le_bytes())
    }

    /// Copies bytes at `offset` as this transaction sees them.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), RvmError> {
        self.inner.check(offset, buf.len() as u64)?;
        let a = offset as usize;
        buf.copy_from_slice(&self.mem().image.bytes()[a..a + buf.len()]);
        Ok(())
    }

    /// The value of root slot `slot`.
    pub fn root(&self, slot: u32) -> Result<u64, RvmError> {
        self.read_u64(root_offset(slot)?)
    }

    /// Sets root slot `slot` (part of this transaction).
    pub fn set_root(&mut self, slot: u32, value: u64) -> Result<(), RvmError> {
        let off = root_offset(slot)?;
        self.write_u64(off, value)
    }

    /// Segment size in bytes.
    pub fn segment_size(&self) -> u64 {
        self.inner.size
    }

    /// Commits: logs the new bytes of every declared range. With
    /// [`CommitMode::Flush`] they, and every commit before them, are durable
    /// when this returns `Ok` (even when the transaction changed nothing).
    ///
    /// On `Err` before the record is logged (log failed earlier, or the
    /// transaction is bigger than the log) the changes are undone; an `Err`
    /// while waiting for durability leaves the instance poisoned and the
    /// transaction's fate to recovery (present or absent as a whole).
    pub fn commit(mut self, mode: CommitMode) -> Result<(), RvmError> {
        let Some(mem) = self.mem.take() else {
            return Ok(());
        };
        let saved = std::mem::take(&mut self.saved);
        if saved.is_empty() {
            // Nothing to log; but a Flush commit still promises that every
            // commit before it is durable, as a non-empty one would.
            drop(mem);
            return match mode {
                CommitMode::Flush => self.inner.flush(),
                CommitMode::NoFlush => Ok(()),
            };
        }
        self.inner.commit_locked(mem, saved, mode)
    }

    /// Restores every declared range's old bytes and releases the memory.
    pub fn abort(self) {
        drop(self)
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if let Some(mut mem) = self.mem.take() {
            mem.restore(&self.saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sim::{SimDisk, SimFileKind};
    use super::*;

    const THREADS: u64 = 12;
    const PER_THREAD: u64 = 40;

    fn slot(t: u64, i: u64) -> u64 {
        SEG_HEADER_SIZE + (t * PER_THREAD + i) * 16
    }

    /// Targeted group-commit wake-ups under load: many committers (mostly
    /// Flush, some NoFlush), inline truncations (a small log) and a thread
    /// truncating on its own, which waits for the write in flight. Every
    /// thread must finish (a lost wake-up would hang it), log writes must be
    /// shared, and after a power cut keeping no unsynced byte every commit
    /// must be there (each thread's last commit is a Flush).
    #[test]
    fn targeted_wakeups_lose_no_committer_and_no_commit() {
        let disk = SimDisk::new();
        let opts = RvmOptions {
            segment_size: 64 << 10,
            log_size: 32 << 10,
            flush_delay: Duration::MAX,
        };
        let rvm = Arc::new(Rvm::create_with(disk.files(), &opts).expect("create"));
        // Slow log writes down a little so that committers pile up behind
        // them (scheduling only; nothing is asserted about time).
        disk.set_write_hook(Some(Arc::new(|kind, _off, _len| {
            if kind == SimFileKind::Log {
                std::thread::yield_now();
            }
        })));
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let truncator = s.spawn(|| {
                let mut n = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    rvm.truncate().expect("truncate");
                    n += 1;
                    std::thread::yield_now();
                }
                n
            });
            let committers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let rvm = &rvm;
                    s.spawn(move || {
                        for i in 0..PER_THREAD {
                            let mut tx = rvm.begin();
                            tx.write(slot(t, i), &(t << 32 | i).to_le_bytes())
                                .expect("write");
                            let mode = if i % 5 == 3 && i + 1 < PER_THREAD {
                                CommitMode::NoFlush
                            } else {
                                CommitMode::Flush
                            };
                            tx.commit(mode).expect("commit");
                        }
                    })
                })
                .collect();
            for c in committers {
                c.join().expect("committer");
            }
            stop.store(true, Ordering::SeqCst);
            assert!(truncator.join().expect("truncator") > 0);
        });
        let stats = rvm.stats();
        assert_eq!(stats.commits, THREADS * PER_THREAD);
        assert!(stats.truncations > 0);
        // Every sleeper was counted out again (else later notifies would be
        // issued for nobody, or, worse, skipped for someone).
        assert_eq!(lock(&rvm.inner.log_state).sleepers, [0, 0]);
        disk.set_write_hook(None);
        disk.fail_after(0);
        drop(rvm);
        disk.crash(&mut || false);
        let rvm = Rvm::open_with(disk.files(), &opts).expect("reopen");
        for t in 0..THREADS {
            for i in 0..PER_THREAD {
                let v = rvm.read_u64(slot(t, i)).expect("read");
                assert_eq!(v, t << 32 | i, "commit {t}/{i} lost");
            }
        }
    }

    /// Recovery reads the record area piece by piece: records past the
    /// first piece, records straddling a piece boundary and one record
    /// bigger than a whole piece are all replayed, as with one big read.
    #[test]
    fn recovery_reads_the_log_in_growing_pieces() {
        let disk = SimDisk::new();
        let opts = RvmOptions {
            segment_size: 4 << 20,
            log_size: 4 << 20,
            flush_delay: Duration::MAX,
        };
        let rvm = Rvm::create_with(disk.files(), &opts).expect("create");
        let value = |i: u64, len: usize| -> Vec<u8> {
            (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
        };
        // About 1.3 MiB of records (under half the log: no truncation),
        // of odd sizes, then one of 300 KiB.
        let mut written = Vec::new();
        let mut off = SEG_HEADER_SIZE;
        for i in 0..260u64 {
            let len = 4000 + (i as usize * 37) % 2000;
            let mut tx = rvm.begin();
            tx.write(off, &value(i, len)).expect("write");
            tx.commit(CommitMode::NoFlush).expect("commit");
            written.push((off, value(i, len)));
            off += len as u64;
        }
        let big = value(999, 300 << 10);
        let mut tx = rvm.begin();
        tx.write(off, &big).expect("write big");
        tx.commit(CommitMode::Flush).expect("commit big");
        written.push((off, big));
        assert_eq!(rvm.stats().truncations, 0);
        assert!(rvm.stats().log_bytes > 1_500_000);
        disk.fail_after(0);
        drop(rvm);
        disk.crash(&mut || false);
        let rvm = Rvm::open_with(disk.files(), &opts).expect("reopen");
        for (i, (off, want)) in written.iter().enumerate() {
            let mut got = vec![0u8; want.len()];
            rvm.read(*off, &mut got).expect("read");
            assert!(got == *want, "record {i} at {off} not replayed");
        }
    }
}
