//! Runs generated operations on a real directory and on the model side by
//! side, and checks every result against the model.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::MmapOptions;

use crate::model::{Effect, InodeId, Model};
use crate::op::{generate, slot_path, Features, Limits, Op};
use crate::rng::Rng;

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seeds the whole sequence: the same seed runs the same operations.
    pub seed: u64,
    /// How many operations.
    pub ops: u64,
    /// How many names (slots) files may have, half of them in `sub/`.
    pub files: usize,
    /// Sizes of files and I/Os.
    pub limits: Limits,
    /// Which operations the file system supports.
    pub features: Features,
    /// How many of the last operations a failure lists.
    pub history: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 1,
            ops: 10_000,
            files: 8,
            limits: Limits {
                max_size: 256 * 1024,
                max_io: 64 * 1024,
            },
            features: Features::default(),
            history: 20,
        }
    }
}

/// Counts of a run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Operations run.
    pub ops: u64,
    /// Operations by kind.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Operations that failed with the errno the model expected.
    pub expected_errors: u64,
    /// Bytes written and read (and compared).
    pub bytes_written: u64,
    pub bytes_read: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ops (", self.ops)?;
        let mut first = true;
        for k in Op::KINDS {
            if let Some(n) = self.by_kind.get(k) {
                write!(f, "{}{k} {n}", if first { "" } else { ", " })?;
                first = false;
            }
        }
        write!(
            f,
            "), {} expected errors, {} bytes written, {} bytes read and checked",
            self.expected_errors, self.bytes_written, self.bytes_read
        )
    }
}

/// The first difference between the file system and the model.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The run's seed.
    pub seed: u64,
    /// The index of the failing operation (`ops` for the final check).
    pub index: u64,
    /// The failing operation (`None`: the final check).
    pub op: Option<Op>,
    /// What differed.
    pub what: String,
    /// The first differing byte offset in the file, for data mismatches.
    pub first_diff: Option<u64>,
    /// The operations before it, oldest first, with their indices.
    pub history: Vec<(u64, Op)>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fsx: MISMATCH with seed {}", self.seed)?;
        match &self.op {
            Some(op) => writeln!(f, "  at op {}: {op}", self.index)?,
            None => writeln!(f, "  in the final check after {} ops", self.index)?,
        }
        writeln!(f, "  {}", self.what)?;
        if let Some(off) = self.first_diff {
            writeln!(f, "  first differing offset: {off} ({off:#x})")?;
        }
        writeln!(f, "  last {} ops:", self.history.len())?;
        for (i, op) in &self.history {
            writeln!(f, "    {i:>8}  {op}")?;
        }
        write!(
            f,
            "  rerun: stretto-fsx DIR --seed {} --ops {}",
            self.seed,
            self.index + 1
        )
    }
}

impl std::error::Error for Failure {}

/// Map offsets are rounded down to this (a multiple of every page size
/// Linux uses on the machines we run on).
const PAGE: u64 = 64 * 1024;

/// What the real file system returned for an operation.
enum Real {
    Done,
    Opened(File),
    Data(Vec<u8>),
    /// A check made while running the operation failed.
    Wrong(String),
}

/// The tester on one directory.
pub struct Runner {
    root: PathBuf,
    cfg: Config,
    model: Model,
    rng: Rng,
    /// One open descriptor per model inode that has been used.
    fds: HashMap<InodeId, File>,
    history: VecDeque<(u64, Op)>,
    stats: Stats,
}

impl Runner {
    /// A tester on `root`, which must exist and be empty; makes `root/sub`.
    pub fn new(root: &Path, cfg: Config) -> io::Result<Runner> {
        if std::fs::read_dir(root)?.next().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is not empty", root.display()),
            ));
        }
        if cfg.files < 2 || cfg.limits.max_size == 0 || cfg.limits.max_io == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "need at least 2 files and non-zero sizes",
            ));
        }
        std::fs::create_dir(root.join("sub"))?;
        Ok(Runner {
            root: root.to_path_buf(),
            model: Model::new(cfg.files),
            rng: Rng::new(cfg.seed),
            cfg,
            fds: HashMap::new(),
            history: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    /// The reference as it stands.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The directory under test.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The real path of slot `s`.
    pub fn path(&self, s: usize) -> PathBuf {
        self.root.join(slot_path(s))
    }

    /// Closes every descriptor the tester holds (they reopen on next use).
    pub fn close_all(&mut self) {
        self.fds.clear();
    }

    /// Runs `cfg.ops` operations and then checks every file and both
    /// directories whole. `hook(i, runner)` runs before operation `i`
    /// (and with `i == ops` before the final check).
    pub fn run(&mut self, mut hook: impl FnMut(u64, &mut Runner)) -> Result<Stats, Failure> {
        for i in 0..self.cfg.ops {
            hook(i, self);
            let op = generate(
                &mut self.rng,
                &self.model,
                self.cfg.features,
                self.cfg.limits,
            );
            self.step(i, op)?;
        }
        hook(self.cfg.ops, self);
        self.verify_all(self.cfg.ops)?;
        self.close_all();
        Ok(self.stats.clone())
    }

    fn fail(&self, index: u64, op: Option<Op>, what: String, first_diff: Option<u64>) -> Failure {
        let mut history: Vec<(u64, Op)> = self.history.iter().copied().collect();
        if let Some(op) = op {
            // The failing op is listed last.
            if history.last().map(|h| h.0) != Some(index) {
                history.push((index, op));
            }
        }
        Failure {
            seed: self.cfg.seed,
            index,
            op,
            what,
            first_diff,
            history,
        }
    }

    /// The descriptor of the file slot `s` names, opened by that name on first
    /// use. A slot the model thinks empty is opened too: if that works, the
    /// file system has a file the model has not.
    fn fd(&mut self, s: usize) -> io::Result<&File> {
        let path = self.path(s);
        match self.model.name(s) {
            Some(id) => Ok(match self.fds.entry(id) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    e.insert(OpenOptions::new().read(true).write(true).open(&path)?)
                }
            }),
            None => {
                // Opened although the model has no file there: closed at
                // once, reported as a mismatch.
                drop(OpenOptions::new().read(true).write(true).open(&path)?);
                Err(io::Error::other(format!(
                    "{} opened, but the model has no such file",
                    path.display()
                )))
            }
        }
    }

    fn exec(&mut self, op: &Op) -> io::Result<Real> {
        match *op {
            Op::Create { slot } => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(self.path(slot))?;
                Ok(Real::Opened(f))
            }
            Op::Write {
                slot,
                off,
                len,
                fill,
            } => {
                let mut buf = vec![0; len as usize];
                crate::fill_bytes(fill, &mut buf);
                self.fd(slot)?.write_all_at(&buf, off)?;
                self.stats.bytes_written += len;
                Ok(Real::Done)
            }
            Op::Read { slot, off, len } => {
                let f = self.fd(slot)?;
                let mut buf = vec![0; len as usize];
                let n = read_full(f, &mut buf, off)?;
                buf.truncate(n);
                self.stats.bytes_read += n as u64;
                Ok(Real::Data(buf))
            }
            Op::Truncate { slot, size } => {
                self.fd(slot)?.set_len(size)?;
                Ok(Real::Done)
            }
            Op::PunchHole { slot, off, len } => {
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                fallocate(self.fd(slot)?, mode, off, len)?;
                Ok(Real::Done)
            }
            Op::ZeroRange {
                slot,
                off,
                len,
                keep_size,
            } => {
                let mut mode = libc::FALLOC_FL_ZERO_RANGE;
                if keep_size {
                    mode |= libc::FALLOC_FL_KEEP_SIZE;
                }
                fallocate(self.fd(slot)?, mode, off, len)?;
                Ok(Real::Done)
            }
            Op::Allocate { slot, off, len } => {
                fallocate(self.fd(slot)?, 0, off, len)?;
                Ok(Real::Done)
            }
            Op::Rename { from, to } => {
                std::fs::rename(self.path(from), self.path(to))?;
                Ok(Real::Done)
            }
            Op::Link { from, to } => {
                std::fs::hard_link(self.path(from), self.path(to))?;
                Ok(Real::Done)
            }
            Op::Unlink { slot } => {
                std::fs::remove_file(self.path(slot))?;
                Ok(Real::Done)
            }
            Op::Fsync { slot } => {
                self.fd(slot)?.sync_all()?;
                Ok(Real::Done)
            }
            Op::Append { slot, len, fill } => {
                let mut buf = vec![0; len as usize];
                crate::fill_bytes(fill, &mut buf);
                let mut f = OpenOptions::new().append(true).open(self.path(slot))?;
                f.write_all(&buf)?;
                self.stats.bytes_written += len;
                Ok(Real::Done)
            }
            Op::OpenTrunc { slot } => {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .truncate(true)
                    .open(self.path(slot))?;
                Ok(Real::Done)
            }
            Op::MapRead { slot, off, len } => {
                let size = self.model.file(slot).map_or(0, |i| i.data.len() as u64);
                let end = (off + len).min(size);
                let f = self.fd(slot)?;
                if off >= end {
                    return Ok(Real::Data(Vec::new()));
                }
                let base = off / PAGE * PAGE;
                // SAFETY: a shared read-only map of a file only this tester
                // changes, within the size the model (and so far the file)
                // has; it is dropped before the next operation.
                let map = unsafe {
                    MmapOptions::new()
                        .offset(base)
                        .len((end - base) as usize)
                        .map(f)?
                };
                let got = map[(off - base) as usize..].to_vec();
                self.stats.bytes_read += got.len() as u64;
                Ok(Real::Data(got))
            }
            Op::MapWrite {
                slot,
                off,
                len,
                fill,
            } => {
                let size = self.model.file(slot).map_or(0, |i| i.data.len() as u64);
                let f = self.fd(slot)?;
                if len == 0 {
                    return Ok(Real::Done);
                }
                if off + len > size {
                    f.set_len(off + len)?;
                }
                let base = off / PAGE * PAGE;
                // SAFETY: as for MapRead; the file was grown to cover the
                // whole range first.
                let mut map = unsafe {
                    MmapOptions::new()
                        .offset(base)
                        .len((off + len - base) as usize)
                        .map_mut(f)?
                };
                crate::fill_bytes(fill, &mut map[(off - base) as usize..]);
                map.flush()?;
                self.stats.bytes_written += len;
                Ok(Real::Done)
            }
            Op::Seek { slot, off } => {
                let zeros = self.model.file(slot).map(|i| i.data.clone());
                let f = self.fd(slot)?;
                Ok(match check_seek(f, off, &zeros.unwrap_or_default())? {
                    Some(what) => Real::Wrong(what),
                    None => Real::Done,
                })
            }
            Op::Reopen { slot } => {
                if let Some(id) = self.model.name(slot) {
                    self.fds.remove(&id);
                }
                let f = self.fd(slot)?;
                let size = f.metadata()?.len();
                let mut buf = vec![0; size as usize];
                let n = read_full(f, &mut buf, 0)?;
                buf.truncate(n);
                self.stats.bytes_read += n as u64;
                Ok(Real::Data(buf))
            }
        }
    }

    /// Runs operation `index`, `op`, on both sides and compares.
    pub fn step(&mut self, index: u64, op: Op) -> Result<(), Failure> {
        *self.stats.by_kind.entry(op.kind()).or_default() += 1;
        self.stats.ops += 1;
        let real = self.exec(&op);
        let expect = self.model.apply(&op);
        self.history.push_back((index, op));
        while self.history.len() > self.cfg.history.max(1) {
            self.history.pop_front();
        }
        let fail = |me: &Self, what: String, diff| Err(me.fail(index, Some(op), what, diff));
        match (real, expect) {
            (Ok(real), Ok(effect)) => match (real, effect) {
                (Real::Opened(f), Effect::Created(id)) => {
                    self.fds.insert(id, f);
                }
                (_, Effect::Dropped(id)) => {
                    self.fds.remove(&id);
                }
                (Real::Data(got), Effect::Read(want)) => {
                    let off = match op {
                        Op::Read { off, .. } | Op::MapRead { off, .. } => off,
                        _ => 0,
                    };
                    if let Some((what, diff)) = compare(&got, &want, off) {
                        return fail(self, what, Some(diff));
                    }
                }
                (Real::Data(got), Effect::None) => {
                    // A reopen: the whole file.
                    let want = self.model.file(op_slot(&op)).map(|i| i.data.clone());
                    let want = want.unwrap_or_default();
                    if let Some((what, diff)) = compare(&got, &want, 0) {
                        return fail(self, what, Some(diff));
                    }
                    if let Err(what) = self.check_dirs() {
                        return fail(self, what, None);
                    }
                }
                (Real::Done, Effect::None) => {}
                (Real::Wrong(what), _) => return fail(self, what, None),
                (_, effect) => {
                    return fail(self, format!("internal: {effect:?} after {op}"), None);
                }
            },
            (Err(e), Err(errno)) if e.raw_os_error() == Some(errno) => {
                self.stats.expected_errors += 1;
            }
            (Err(e), Ok(_)) => {
                return fail(
                    self,
                    format!("failed: {e}; the model expected success"),
                    None,
                )
            }
            (Ok(_), Err(errno)) => {
                return fail(
                    self,
                    format!(
                        "succeeded; the model expected {}",
                        io::Error::from_raw_os_error(errno)
                    ),
                    None,
                )
            }
            (Err(e), Err(errno)) => {
                return fail(
                    self,
                    format!(
                        "failed: {e}; the model expected {}",
                        io::Error::from_raw_os_error(errno)
                    ),
                    None,
                )
            }
        }
        for s in op_slots(&op) {
            if let Err(what) = self.check_slot(s) {
                return fail(self, what, None);
            }
        }
        Ok(())
    }

    /// Checks slot `s`: `stat` by name and `fstat` of its open descriptor
    /// give the model's size and link count; an empty slot has no file.
    fn check_slot(&self, s: usize) -> Result<(), String> {
        let path = self.path(s);
        let named = std::fs::symlink_metadata(&path);
        let Some(id) = self.model.name(s) else {
            return match named {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                Err(e) => Err(format!("stat {}: {e}; expected ENOENT", slot_path(s))),
                Ok(m) => Err(format!(
                    "{} exists (size {}, nlink {}); the model has no such file",
                    slot_path(s),
                    m.len(),
                    m.nlink()
                )),
            };
        };
        let inode = self.model.inode(id).expect("named inode exists");
        let (size, nlink) = (inode.data.len() as u64, inode.nlink as u64);
        let named = named.map_err(|e| format!("stat {}: {e}", slot_path(s)))?;
        if !named.is_file() || named.len() != size || named.nlink() != nlink {
            return Err(format!(
                "stat {}: size {} nlink {} file {}; the model has size {size} nlink {nlink}",
                slot_path(s),
                named.len(),
                named.nlink(),
                named.is_file()
            ));
        }
        if let Some(f) = self.fds.get(&id) {
            let m = f
                .metadata()
                .map_err(|e| format!("fstat {}: {e}", slot_path(s)))?;
            if m.len() != size || m.nlink() != nlink || m.ino() != named.ino() {
                return Err(format!(
                    "fstat {}: size {} nlink {} ino {} (by name: ino {}); \
                     the model has size {size} nlink {nlink}",
                    slot_path(s),
                    m.len(),
                    m.nlink(),
                    m.ino(),
                    named.ino()
                ));
            }
        }
        Ok(())
    }

    /// Both directories list exactly the model's names.
    fn check_dirs(&self) -> Result<(), String> {
        let want: BTreeSet<String> = self
            .model
            .occupied()
            .into_iter()
            .map(slot_path)
            .chain(std::iter::once("sub".to_string()))
            .collect();
        let mut got = BTreeSet::new();
        for (dir, prefix) in [(self.root.clone(), ""), (self.root.join("sub"), "sub/")] {
            let entries =
                std::fs::read_dir(&dir).map_err(|e| format!("readdir {}: {e}", dir.display()))?;
            for e in entries {
                let e = e.map_err(|e| format!("readdir {}: {e}", dir.display()))?;
                got.insert(format!("{prefix}{}", e.file_name().to_string_lossy()));
            }
        }
        if got != want {
            return Err(format!("directory listing {got:?}; the model has {want:?}"));
        }
        Ok(())
    }

    /// Every file, opened afresh by each of its names, read whole and
    /// compared; every slot stat-checked; both directories listed.
    pub fn verify_all(&mut self, index: u64) -> Result<(), Failure> {
        self.check_dirs()
            .map_err(|what| self.fail(index, None, what, None))?;
        for s in 0..self.model.slots() {
            self.check_slot(s)
                .map_err(|what| self.fail(index, None, what, None))?;
            let Some(inode) = self.model.file(s) else {
                continue;
            };
            let path = self.path(s);
            let got = std::fs::read(&path)
                .map_err(|e| self.fail(index, None, format!("read {}: {e}", slot_path(s)), None))?;
            if let Some((what, diff)) = compare(&got, &inode.data, 0) {
                let what = format!("{}: {what}", slot_path(s));
                return Err(self.fail(index, None, what, Some(diff)));
            }
        }
        Ok(())
    }
}

fn op_slot(op: &Op) -> usize {
    op_slots(op)[0]
}

/// The slots an operation touches.
fn op_slots(op: &Op) -> Vec<usize> {
    match *op {
        Op::Rename { from, to } | Op::Link { from, to } => vec![from, to],
        Op::Create { slot }
        | Op::Write { slot, .. }
        | Op::Read { slot, .. }
        | Op::Truncate { slot, .. }
        | Op::PunchHole { slot, .. }
        | Op::ZeroRange { slot, .. }
        | Op::Allocate { slot, .. }
        | Op::Unlink { slot }
        | Op::Fsync { slot }
        | Op::Reopen { slot }
        | Op::Seek { slot, .. }
        | Op::Append { slot, .. }
        | Op::OpenTrunc { slot }
        | Op::MapRead { slot, .. }
        | Op::MapWrite { slot, .. } => vec![slot],
    }
}

/// `None` if equal; else what differs and the first differing file offset
/// (`base` is the offset of `got[0]`).
fn compare(got: &[u8], want: &[u8], base: u64) -> Option<(String, u64)> {
    let common = got.len().min(want.len());
    let first = (0..common).find(|&i| got[i] != want[i]);
    match first {
        Some(i) => {
            let end = (i + 16).min(common);
            Some((
                format!(
                    "data differ: at offset {} got {:02x?} expected {:02x?} \
                     ({} bytes returned, {} expected)",
                    base + i as u64,
                    &got[i..end],
                    &want[i..end],
                    got.len(),
                    want.len()
                ),
                base + i as u64,
            ))
        }
        None if got.len() != want.len() => Some((
            format!(
                "length differs: {} bytes returned, {} expected (from offset {base})",
                got.len(),
                want.len()
            ),
            base + common as u64,
        )),
        None => None,
    }
}

/// `lseek(fd, off, whence)`: `Ok(None)` for ENXIO.
fn lseek(f: &File, off: u64, whence: i32) -> io::Result<Option<u64>> {
    let off = i64::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek(2) on a descriptor `f` keeps open for the call; it takes
    // no pointers.
    let rc = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if rc >= 0 {
        Ok(Some(rc as u64))
    } else {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        }
    }
}

/// Checks `SEEK_DATA` and `SEEK_HOLE` from `off` against the file's bytes
/// `data`: past the end both give ENXIO; otherwise the next data is at or
/// after `off` with only zeros before it, the next hole lies within the
/// file, and the hole found reads as zeros up to the data after it. (A file
/// system may call every byte data: that passes.) `Some(what)` if wrong.
fn check_seek(f: &File, off: u64, data: &[u8]) -> io::Result<Option<String>> {
    let size = data.len() as u64;
    let next_data = lseek(f, off, libc::SEEK_DATA)?;
    let next_hole = lseek(f, off, libc::SEEK_HOLE)?;
    if off >= size {
        if next_data.is_some() || next_hole.is_some() {
            return Ok(Some(format!(
                "SEEK_DATA {next_data:?} SEEK_HOLE {next_hole:?} from {off} at or past \
                 the end ({size}): expected ENXIO for both"
            )));
        }
        return Ok(None);
    }
    let zero = |a: u64, b: u64| data[a as usize..b as usize].iter().all(|&x| x == 0);
    let d = next_data.unwrap_or(size);
    if d < off || d > size || (next_data.is_some() && d == size) || !zero(off, d) {
        return Ok(Some(format!(
            "SEEK_DATA from {off} gave {next_data:?} (size {size}): the bytes before \
             it are not all zero, or it is out of range"
        )));
    }
    let Some(h) = next_hole else {
        return Ok(Some(format!(
            "SEEK_HOLE from {off} gave ENXIO inside the file (size {size})"
        )));
    };
    if h < off || h > size {
        return Ok(Some(format!(
            "SEEK_HOLE from {off} gave {h}, outside {off}..={size}"
        )));
    }
    if h < size {
        let after = lseek(f, h, libc::SEEK_DATA)?.unwrap_or(size);
        if after <= h || after > size || !zero(h, after) {
            return Ok(Some(format!(
                "the hole SEEK_HOLE found at {h} (from {off}) runs to {after} \
                 but does not read as zeros there (size {size})"
            )));
        }
    }
    Ok(None)
}

/// `pread` until `buf` is full or the end of the file.
fn read_full(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> io::Result<()> {
    let (off, len) = (
        i64::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?,
        i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?,
    );
    // SAFETY: fallocate(2) on a descriptor `f` keeps open for the call; it
    // takes no pointers.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_reports_the_first_differing_offset() {
        assert!(compare(b"abc", b"abc", 0).is_none());
        assert_eq!(compare(b"abXd", b"abcd", 100).unwrap().1, 102);
        assert_eq!(compare(b"ab", b"abcd", 10).unwrap().1, 12);
        assert_eq!(compare(b"abcd", b"ab", 0).unwrap().1, 2);
    }
}
