//! The FUSE adapter: fuser's `Filesystem` over the [`Namespace`] (names,
//! attributes) and volume objects (file data).
//!
//! Threads: fuser runs several session threads that call in here; each
//! call blocks on the client's tokio runtime for its network work.
//!
//! Inode numbers are fids: `vnode << 32 | unique` (the root is vnode 0,
//! unique 1, so inode 1). `/images` (inode 2) lists the volume's images
//! (vnode N, unique 1) read-only.
//!
//! Caches (in memory): inode records by fid and directory entries, each
//! dropped when the change feed says another client changed the key
//! ([`crate::mount`]), kept across an unmount by [`crate::snapshot`]; `open` always re-reads the inode (close-to-open)
//! and does not keep the kernel's page cache. The kernel is given no
//! attribute lifetime, so `stat` always asks here (and is answered from
//! the cache), and a short entry lifetime, broken by callbacks.
//!
//! Writes: a file open for writing holds its object's write lease (one
//! writer client per file); data goes to the bricks at once and the new
//! size and mtime are committed on flush (close), fsync and release.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use volume::volfile::ImageEntry;
use volume::{Fid, VolumeError};

use crate::cml::{CmlEntry, RenameMode, SetAttr, XattrMode};
use crate::inode::{entry_key, inode_key};
use crate::inode::{Dirent, Inode, Kind, Timespec, TARGET_MAX};
use crate::namespace::{Applied, Hints, Namespace, NsError};
use volume::records::Record;

/// Inode number of `/images`.
pub const IMAGES_INO: u64 = 2;
/// Name of the images directory in the root.
pub const IMAGES_NAME: &[u8] = b"images";
/// How long the kernel keeps a name without asking (callbacks break it
/// earlier).
const ENTRY_TTL: Duration = Duration::from_secs(1);
/// Attributes are never kept by the kernel: `stat` and reads ask here.
const ATTR_TTL: Duration = Duration::ZERO;
/// How long the image table is kept before it is read again.
const IMAGES_TTL: Duration = Duration::from_secs(2);
/// How long an open for writing waits for another client's lease.
const LEASE_WAIT: Duration = Duration::from_secs(25);
/// Block (and fragment) size `statfs` counts in.
const STATFS_BLOCK: u32 = 4096;
/// How long `statfs` reuses the volume's capacity before asking the bricks
/// again.
const STATFS_CACHE: Duration = Duration::from_secs(1);
/// A read that misses the disk cache fetches (and keeps) the whole 1 MiB
/// chunk when it asks for at least this much, starts the chunk, or the
/// chunk is no longer than this (a small file); smaller reads inside a
/// chunk take only their bytes from the bricks.
const WHOLE_CHUNK_READ: u64 = 128 * 1024;
/// Block size reported to `stat`.
const BLKSIZE: u32 = 128 * 1024;

/// Where `/images` comes from.
#[derive(Clone)]
pub struct ImageSource {
    pub pool: Vec<String>,
    pub secret: transport::Secret,
    pub volume: String,
}

/// Mount-wide options of the file system.
#[derive(Clone, Default)]
pub struct FsOptions {
    pub read_only: bool,
    pub images: Option<ImageSource>,
}

/// The write side of a file open for writing in this mount.
struct Writer {
    obj: volume::Object,
    size: Mutex<u64>,
    mtime: Mutex<Timespec>,
    dirty: AtomicBool,
    refs: AtomicU64,
}

/// One open file or directory.
enum Handle {
    File {
        fid: Fid,
        writer: Option<Arc<Writer>>,
        /// The file's size and inode version at open, when opened for
        /// reading with a disk cache: reads go through the cache's chunks
        /// of that version.
        cached: Option<(u64, u64)>,
    },
    Image {
        fid: Fid,
        size: u64,
    },
    Dir {
        entries: Vec<(Vec<u8>, u64, FileType)>,
    },
}

/// What the file system shares between its session threads and the
/// callback task.
pub struct Shared {
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) client: Arc<volume::Client>,
    pub(crate) ns: Namespace,
    opts: FsOptions,
    attrs: Mutex<HashMap<Fid, (u64, Inode)>>,
    entries: Mutex<HashMap<(Fid, Vec<u8>), Dirent>>,
    /// Directories whose every name is in `entries`, at the inode version
    /// given (listed, or made here, and changed since only by this mount's
    /// creates and removals): a name missing there does not exist, as long
    /// as the directory's cached inode is at that version.
    whole: Mutex<HashMap<Fid, u64>>,
    /// Raised by every invalidation: a value read from the store before
    /// an invalidation is not cached after it.
    gen: AtomicU64,
    writers: Mutex<HashMap<Fid, Arc<Writer>>>,
    /// Per file: serialises taking and releasing its lease, so two opens
    /// of one file share one lease (a second take would fence the first).
    lease_gates: Mutex<HashMap<Fid, Arc<tokio::sync::Mutex<()>>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    open_count: Mutex<HashMap<Fid, usize>>,
    /// Open files whose last name went: their inode as last seen; the data
    /// is freed at the last release.
    orphans: Mutex<HashMap<Fid, Inode>>,
    next_fh: AtomicU64,
    /// Sequence numbers of our own commits (the callback task skips them).
    own: Mutex<HashSet<u64>>,
    /// Tickets of our commits in flight: the feed can show one before its
    /// reply tells us its sequence number, so the callback task waits for
    /// those that started before it looked ([`Shared::own_settled`]).
    inflight: Mutex<BTreeSet<u64>>,
    next_ticket: AtomicU64,
    settled: tokio::sync::Notify,
    images: Mutex<Option<(Instant, BTreeMap<String, ImageEntry>)>>,
    disk: Option<crate::cache::DiskCache>,
    /// The volume's capacity and when it was asked (`statfs`); the lock is
    /// held while asking, so a burst of `df` asks the bricks once.
    capacity: tokio::sync::Mutex<Option<(Instant, volume::capacity::Capacity)>>,
}

/// A directory's entries as kept in the disk cache: per entry the name's
/// length (u16 LE), the name, the encoded entry's length (u16 LE), the entry.
fn encode_entries(l: &[(Vec<u8>, Dirent)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, d) in l {
        let e = d.encode();
        b.extend_from_slice(&(n.len() as u16).to_le_bytes());
        b.extend_from_slice(n);
        b.extend_from_slice(&(e.len() as u16).to_le_bytes());
        b.extend_from_slice(&e);
    }
    b
}

fn decode_entries(mut b: &[u8]) -> Option<Vec<(Vec<u8>, Dirent)>> {
    fn take<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let n = u16::from_le_bytes(b.get(..2)?.try_into().ok()?) as usize;
        let v = b.get(2..2 + n)?;
        *b = &b[2 + n..];
        Some(v)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let n = take(&mut b)?.to_vec();
        let d = Dirent::decode(take(&mut b)?).ok()?;
        out.push((n, d));
    }
    Some(out)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The inode number of a fid.
pub fn ino_of(fid: Fid) -> u64 {
    (fid.vnode as u64) << 32 | fid.unique as u64
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn ns_errno(e: &NsError) -> Errno {
    if matches!(
        e,
        NsError::Store(_) | NsError::Corrupt { .. } | NsError::Busy(_)
    ) {
        tracing::warn!(error = %e, "namespace operation failed");
    }
    errno(e.errno())
}

fn vol_errno(e: &VolumeError) -> Errno {
    tracing::warn!(error = %e, "data operation failed");
    match e {
        VolumeError::LeaseBusy { .. } => Errno::EBUSY,
        _ => Errno::EIO,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::Socket => FileType::Socket,
    }
}

fn attr(ino: u64, i: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: i.size,
        blocks: i.size.div_ceil(512),
        atime: i.atime.to_system(),
        mtime: i.mtime.to_system(),
        ctime: i.ctime.to_system(),
        crtime: i.ctime.to_system(),
        kind: file_type(i.kind),
        perm: i.perm,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn time_of(t: TimeOrNow, now: Timespec) -> Timespec {
    match t {
        TimeOrNow::Now => now,
        TimeOrNow::SpecificTime(s) => Timespec::from_system(s),
    }
}

impl Shared {
    pub fn new(
        rt: tokio::runtime::Handle,
        client: Arc<volume::Client>,
        ns: Namespace,
        opts: FsOptions,
    ) -> Shared {
        Shared {
            rt,
            client,
            ns,
            opts,
            attrs: Mutex::default(),
            entries: Mutex::default(),
            whole: Mutex::default(),
            gen: AtomicU64::new(0),
            writers: Mutex::default(),
            lease_gates: Mutex::default(),
            handles: Mutex::default(),
            open_count: Mutex::default(),
            orphans: Mutex::default(),
            next_fh: AtomicU64::new(1),
            own: Mutex::default(),
            inflight: Mutex::default(),
            next_ticket: AtomicU64::new(0),
            settled: tokio::sync::Notify::new(),
            images: Mutex::new(None),
            disk: None,
            capacity: tokio::sync::Mutex::new(None),
        }
    }

    /// Keeps whole files in `disk` (see [`crate::cache`]).
    pub fn with_disk_cache(mut self, disk: crate::cache::DiskCache) -> Shared {
        self.disk = Some(disk);
        self
    }

    /// The disk cache's bytes, copies, hits and misses.
    pub fn disk_stats(&self) -> Option<(u64, usize, u64, u64)> {
        self.disk.as_ref().map(|d| d.stats())
    }

    /// The inode as the store has it now, with its version.
    async fn fresh_inode(&self, fid: Fid) -> Result<(u64, Inode), Errno> {
        let g = self.gen.load(Ordering::Acquire);
        match self.ns.inode(fid).await {
            Ok(Some((v, i))) => {
                if self.gen.load(Ordering::Acquire) == g {
                    lock(&self.attrs).insert(fid, (v, i.clone()));
                }
                Ok((v, self.overlay(fid, i)))
            }
            Ok(None) => match lock(&self.orphans).get(&fid) {
                Some(i) => Ok((0, self.overlay(fid, i.clone()))),
                None => Err(Errno::ENOENT),
            },
            Err(e) => Err(ns_errno(&e)),
        }
    }

    /// Whether reads of `fid` at `version` (of `size` bytes) may go
    /// through the disk cache.
    fn cacheable(&self, fid: Fid, version: u64, size: u64) -> Option<(u64, u64)> {
        let disk = self.disk.as_ref()?;
        (version != 0 && disk.enabled() && !lock(&self.writers).contains_key(&fid))
            .then_some((size, version))
    }

    /// Whether the inode of `fid` is still at `version` in this mount and
    /// no writer of this mount has it open (then cached chunks of that
    /// version hold the file's data).
    fn current(&self, fid: Fid, version: u64) -> bool {
        !lock(&self.writers).contains_key(&fid)
            && lock(&self.attrs).get(&fid).map(|(cv, _)| *cv) == Some(version)
    }

    /// Bytes `[offset, offset + len)` (within `end`) of `fid` at `version`
    /// from the disk cache, each chunk missing fetched from the bricks and
    /// stored while the inode is still at that version.
    async fn read_cached(
        &self,
        fid: Fid,
        version: u64,
        end: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, Errno> {
        use crate::cache::CHUNK;
        let disk = self.disk.as_ref().ok_or(Errno::EIO)?;
        let stop = (offset + len).min(end);
        let mut out = Vec::with_capacity(stop.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < stop {
            let idx = at / CHUNK;
            let base = idx * CHUNK;
            let n = (stop - at).min(base + CHUNK - at);
            if let Some(d) = disk.read(fid, version, idx, at - base, n) {
                out.extend_from_slice(&d);
                at += n;
                continue;
            }
            let clen = CHUNK.min(end - base);
            if n < WHOLE_CHUNK_READ && clen > WHOLE_CHUNK_READ && at != base {
                // A small read inside a large chunk (random access): only
                // its bytes, not cached. Fetching the whole chunk for each
                // would read up to 256 times what was asked.
                out.extend_from_slice(&self.read_bricks(fid, at, n).await?);
                at += n;
                continue;
            }
            let g = self.gen.load(Ordering::Acquire);
            let chunk = self.read_bricks(fid, base, clen).await?;
            if self.gen.load(Ordering::Acquire) == g && self.current(fid, version) {
                if let Err(e) = disk.put(fid, version, idx, &chunk) {
                    tracing::warn!(%fid, error = %e, "cannot write to the cache directory");
                }
            }
            out.extend_from_slice(&chunk[(at - base) as usize..(at - base + n) as usize]);
            at += n;
        }
        Ok(out)
    }

    /// `len` bytes of `fid`'s object at `offset`, from the bricks; zeros
    /// past the object's end (a file grown by truncate).
    async fn read_bricks(&self, fid: Fid, offset: u64, len: u64) -> Result<Vec<u8>, Errno> {
        let mut d = self
            .client
            .object(fid)
            .read(offset, len)
            .await
            .map_err(|e| vol_errno(&e))?;
        d.resize(len as usize, 0);
        Ok(d)
    }

    fn fid(&self, ino: INodeNo) -> Fid {
        Fid {
            volume: self.ns.volume(),
            vnode: (ino.0 >> 32) as u32,
            unique: ino.0 as u32,
        }
    }

    fn is_image(&self, ino: u64) -> bool {
        self.opts.images.is_some() && ino as u32 == 1 && (ino >> 32) != 0
    }

    fn images_on(&self) -> bool {
        self.opts.images.is_some()
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Drops cached copies of `fid`'s inode (callback path).
    pub(crate) fn forget_inode(&self, fid: Fid) {
        self.gen.fetch_add(1, Ordering::AcqRel);
        lock(&self.attrs).remove(&fid);
        lock(&self.whole).remove(&fid);
        if let Some(d) = &self.disk {
            d.remove(fid);
        }
    }

    /// Drops a cached directory entry (callback path).
    pub(crate) fn forget_entry(&self, dir: Fid, name: &[u8]) {
        self.gen.fetch_add(1, Ordering::AcqRel);
        lock(&self.entries).remove(&(dir, name.to_vec()));
        lock(&self.whole).remove(&dir);
    }

    /// Drops every cached record (the change feed has a gap).
    pub(crate) fn forget_all(&self) {
        self.gen.fetch_add(1, Ordering::AcqRel);
        lock(&self.attrs).clear();
        lock(&self.entries).clear();
        lock(&self.whole).clear();
    }

    /// The disk cache, if any.
    pub(crate) fn disk(&self) -> Option<&crate::cache::DiskCache> {
        self.disk.as_ref()
    }

    /// Adds the cached inode records, then the cached names, to `enc`
    /// until its cap (see [`crate::snapshot`]).
    pub(crate) fn snapshot_into(&self, enc: &mut crate::snapshot::Encoder) {
        for (fid, (v, i)) in lock(&self.attrs).iter() {
            if !enc.push_inode(*fid, *v, i) {
                return;
            }
        }
        for ((dir, name), d) in lock(&self.entries).iter() {
            if !enc.push_entry(*dir, name, d) {
                return;
            }
        }
    }

    /// Takes records checked against the change feed (at mount) into the
    /// caches, as if fetched; what is cached already stays.
    pub(crate) fn trust(&self, snap: crate::snapshot::Snapshot) {
        let mut attrs = lock(&self.attrs);
        for (fid, v, i) in snap.inodes {
            attrs.entry(fid).or_insert((v, i));
        }
        drop(attrs);
        let mut entries = lock(&self.entries);
        for (dir, name, d) in snap.entries {
            entries.entry((dir, name)).or_insert(d);
        }
    }

    /// Whether commit `seq` was ours.
    pub(crate) fn take_own_peek(&self, seq: u64) -> bool {
        lock(&self.own).contains(&seq)
    }

    /// Waits (at most `limit`) until every commit of ours that had started
    /// when this was called has its sequence number recorded, so that
    /// [`Shared::take_own_peek`] can tell ours from another client's.
    pub(crate) async fn own_settled(&self, limit: Duration) {
        let upto = self.next_ticket.load(Ordering::Acquire);
        let wait = async {
            loop {
                let n = self.settled.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if lock(&self.inflight).range(..upto).next().is_none() {
                    return;
                }
                n.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// Forgets our own commits up to `seq` (the feed has passed them).
    pub(crate) fn forget_own_upto(&self, seq: u64) {
        lock(&self.own).retain(|s| *s > seq);
    }

    /// Overlays what this mount's open writer knows (size, mtime).
    fn overlay(&self, fid: Fid, mut i: Inode) -> Inode {
        if let Some(w) = lock(&self.writers).get(&fid) {
            i.size = *lock(&w.size);
            if w.dirty.load(Ordering::Acquire) {
                i.mtime = *lock(&w.mtime);
                i.ctime = i.ctime.max(i.mtime);
            }
        }
        i
    }

    async fn inode(&self, fid: Fid, fresh: bool) -> Result<Inode, Errno> {
        if !fresh {
            if let Some((_, i)) = lock(&self.attrs).get(&fid).cloned() {
                return Ok(self.overlay(fid, i));
            }
        }
        let g = self.gen.load(Ordering::Acquire);
        match self.ns.inode(fid).await {
            Ok(Some((v, i))) => {
                if self.gen.load(Ordering::Acquire) == g {
                    lock(&self.attrs).insert(fid, (v, i.clone()));
                }
                Ok(self.overlay(fid, i))
            }
            Ok(None) => match lock(&self.orphans).get(&fid) {
                Some(i) => Ok(self.overlay(fid, i.clone())),
                None => Err(Errno::ENOENT),
            },
            Err(e) => Err(ns_errno(&e)),
        }
    }

    async fn lookup_entry(&self, dir: Fid, name: &[u8]) -> Result<Dirent, Errno> {
        let key = (dir, name.to_vec());
        if let Some(d) = lock(&self.entries).get(&key).copied() {
            return Ok(d);
        }
        if self.known_absent(dir) {
            return Err(Errno::ENOENT);
        }
        let g = self.gen.load(Ordering::Acquire);
        match self.ns.lookup(dir, name).await {
            Ok(Some(d)) => {
                if self.gen.load(Ordering::Acquire) == g {
                    lock(&self.entries).insert(key, d);
                }
                Ok(d)
            }
            Ok(None) => {
                // A name that does not exist: the directory must.
                let i = self.inode(dir, false).await?;
                if i.kind != Kind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                Err(Errno::ENOENT)
            }
            Err(e) => Err(ns_errno(&e)),
        }
    }

    /// Whether a name not in `entries` is known not to be in `dir` (see
    /// `whole`).
    fn known_absent(&self, dir: Fid) -> bool {
        let v = lock(&self.whole).get(&dir).copied();
        v.is_some() && lock(&self.attrs).get(&dir).map(|(cv, _)| *cv) == v
    }

    /// Records that `entries` holds every name of `dir` at inode `version`
    /// (a listing of that version, or a directory just made).
    fn know_whole(&self, dir: Fid, version: u64, names: &[(Vec<u8>, Dirent)], g: u64) {
        let mut ents = lock(&self.entries);
        let mut whole = lock(&self.whole);
        if version == 0 || self.gen.load(Ordering::Acquire) != g {
            return;
        }
        for (n, d) in names {
            ents.insert((dir, n.clone()), *d);
        }
        whole.insert(dir, version);
    }

    /// Applies one CML entry and updates the caches with its result.
    async fn apply(&self, e: CmlEntry) -> Result<Applied, Errno> {
        if self.opts.read_only {
            return Err(Errno::EROFS);
        }
        let names: Vec<(Fid, Vec<u8>)> = match &e {
            CmlEntry::Create { parent, name, .. }
            | CmlEntry::Link { parent, name, .. }
            | CmlEntry::Remove { parent, name, .. } => vec![(*parent, name.clone())],
            CmlEntry::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => vec![(*parent, name.clone()), (*new_parent, new_name.clone())],
            _ => Vec::new(),
        };
        let g = self.gen.load(Ordering::Acquire);
        let hints = self.hints_for(&e);
        // A name this entry makes, known exactly once it commits.
        // The directory this entry changes while keeping it whole: its
        // names by a create or removal here, or only its attributes. Any
        // other change to a directory (a rename, a link) drops it.
        let names_of = match &e {
            CmlEntry::Create { parent, .. } | CmlEntry::Remove { parent, .. } => Some(*parent),
            CmlEntry::SetAttr { fid, .. }
            | CmlEntry::SetXattr { fid, .. }
            | CmlEntry::RemoveXattr { fid, .. } => Some(*fid),
            _ => None,
        };
        let made_dir = matches!(&e, CmlEntry::Create { inode, .. } if inode.kind == Kind::Dir);
        let made = match &e {
            CmlEntry::Create {
                parent,
                name,
                fid,
                inode,
            } => Some((
                (*parent, name.clone()),
                Dirent {
                    fid: *fid,
                    kind: inode.kind,
                },
            )),
            _ => None,
        };
        let ticket = self.next_ticket.fetch_add(1, Ordering::AcqRel);
        lock(&self.inflight).insert(ticket);
        let r = self.ns.apply_hinted(e, hints).await;
        {
            let mut ents = lock(&self.entries);
            for n in names {
                ents.remove(&n);
            }
        }
        let out = match r {
            Ok(out) => out,
            Err(e) => {
                self.settle_ticket(ticket);
                return Err(ns_errno(&e));
            }
        };
        if let Some((key, d)) = made {
            let mut ents = lock(&self.entries);
            if self.gen.load(Ordering::Acquire) == g {
                ents.insert(key, d);
            }
        }
        {
            let mut whole = lock(&self.whole);
            let same = self.gen.load(Ordering::Acquire) == g;
            for (fid, v, i) in &out.inodes {
                if i.kind != Kind::Dir {
                    continue;
                }
                let kept =
                    same && Some(*fid) == names_of && whole.get(fid).is_some_and(|w| w + 1 == *v);
                if kept {
                    whole.insert(*fid, *v);
                } else if made_dir && same && out.inode.as_ref().is_some_and(|(f, _, _)| f == fid) {
                    // A directory made here: empty.
                    whole.insert(*fid, *v);
                } else {
                    whole.remove(fid);
                }
            }
            for f in &out.freed {
                whole.remove(f);
            }
        }
        {
            let mut attrs = lock(&self.attrs);
            let same = self.gen.load(Ordering::Acquire) == g;
            for (fid, v, i) in &out.inodes {
                if same {
                    attrs.insert(*fid, (*v, i.clone()));
                } else {
                    attrs.remove(fid);
                }
            }
            for f in &out.freed {
                attrs.remove(f);
            }
        }
        // Only now may the callback path skip the commit as ours: the
        // caches hold its result (an attribute snapshot taken past it
        // must not keep the records from before it). The callback task
        // waits for this ticket before it decides whose a change is.
        if out.seq != 0 {
            lock(&self.own).insert(out.seq);
        }
        self.settle_ticket(ticket);
        for f in &out.freed {
            self.free(*f);
        }
        Ok(out)
    }

    /// A commit of ours is no longer in flight (see [`Shared::own_settled`]).
    fn settle_ticket(&self, ticket: u64) {
        lock(&self.inflight).remove(&ticket);
        self.settled.notify_waiters();
    }

    /// What this mount has cached of the records `e` reads, for planning it
    /// without asking the store first: inodes at their cached versions
    /// (exact: a fid is never reused) and, for a new name, its entry
    /// presumed absent. Entries that exist are read from the store (a name
    /// removed and made again starts over at version 1, so a cached
    /// version would not say which value it had). The commit guards all.
    fn hints_for(&self, e: &CmlEntry) -> Hints {
        let mut h = Hints::new();
        let attrs = lock(&self.attrs);
        let entries = lock(&self.entries);
        let inode = |h: &mut Hints, fid: Fid| {
            if let Some((v, i)) = attrs.get(&fid).filter(|(v, _)| *v != 0) {
                let r = Record {
                    version: *v,
                    value: i.encode(),
                };
                h.insert(inode_key(fid), Some(r));
            }
        };
        let child = |dir: &Fid, name: &Vec<u8>| entries.get(&(*dir, name.clone())).map(|d| d.fid);
        match e {
            CmlEntry::Create {
                parent, name, fid, ..
            } => {
                inode(&mut h, *parent);
                h.insert(entry_key(*parent, name), None);
                h.insert(inode_key(*fid), None);
            }
            CmlEntry::Link {
                parent, name, fid, ..
            } => {
                inode(&mut h, *parent);
                inode(&mut h, *fid);
                h.insert(entry_key(*parent, name), None);
            }
            CmlEntry::Remove { parent, name, .. } => {
                inode(&mut h, *parent);
                if let Some(f) = child(parent, name) {
                    inode(&mut h, f);
                }
            }
            CmlEntry::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => {
                inode(&mut h, *parent);
                inode(&mut h, *new_parent);
                for f in [child(parent, name), child(new_parent, new_name)]
                    .into_iter()
                    .flatten()
                {
                    inode(&mut h, f);
                }
            }
            CmlEntry::SetAttr { fid, .. }
            | CmlEntry::SetXattr { fid, .. }
            | CmlEntry::RemoveXattr { fid, .. }
            | CmlEntry::Store { fid, .. } => inode(&mut h, *fid),
        }
        h
    }

    /// An inode lost its last name: free its data now, or at its last
    /// release if it is open here.
    fn free(&self, fid: Fid) {
        let open = lock(&self.open_count).get(&fid).copied().unwrap_or(0) > 0;
        if open {
            let i = lock(&self.attrs).get(&fid).map(|(_, i)| i.clone());
            let mut i = i.unwrap_or_else(|| Inode::new(Kind::File, 0, 0, 0, Timespec::now()));
            i.nlink = 0;
            lock(&self.orphans).insert(fid, i);
            return;
        }
        let client = self.client.clone();
        self.rt.spawn(async move {
            let o = client.object(fid);
            if let Ok(s) = o.size().await {
                if s > 0 {
                    if let Err(e) = o.punch(0, s).await {
                        tracing::warn!(%fid, error = %e, "could not free a removed file's data");
                    }
                }
            }
        });
    }

    fn image_table(&self) -> Result<BTreeMap<String, ImageEntry>, Errno> {
        let Some(src) = &self.opts.images else {
            return Err(Errno::ENOENT);
        };
        if let Some((at, t)) = lock(&self.images).as_ref() {
            if at.elapsed() < IMAGES_TTL {
                return Ok(t.clone());
            }
        }
        let r = self.block(volume::manage::image_list(
            &src.pool,
            &src.secret,
            &src.volume,
        ));
        match r {
            Ok((_, t)) => {
                *lock(&self.images) = Some((Instant::now(), t.images.clone()));
                Ok(t.images)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the image table");
                Err(Errno::EIO)
            }
        }
    }

    fn images_attr(&self) -> FileAttr {
        let root = lock(&self.attrs)
            .get(&self.ns.root())
            .map(|(_, i)| i.ctime)
            .unwrap_or_default();
        let mut i = Inode::new(Kind::Dir, 0o555, 0, 0, root);
        i.nlink = 2;
        attr(IMAGES_INO, &i)
    }

    fn image_attr(&self, e: &ImageEntry) -> FileAttr {
        let mut i = Inode::new(Kind::File, 0o444, 0, 0, Timespec::default());
        i.size = e.size;
        let fid = Fid {
            volume: self.ns.volume(),
            vnode: e.vnode,
            unique: e.unique,
        };
        attr(ino_of(fid), &i)
    }

    fn image_by_ino(&self, ino: u64) -> Result<(String, ImageEntry), Errno> {
        let t = self.image_table()?;
        t.into_iter()
            .find(|(_, e)| e.vnode as u64 == ino >> 32 && e.unique == 1)
            .ok_or(Errno::ENOENT)
    }

    fn gate(&self, fid: Fid) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.lease_gates).entry(fid).or_default().clone()
    }

    fn drop_gate(&self, fid: Fid, gate: Arc<tokio::sync::Mutex<()>>) {
        let mut g = lock(&self.lease_gates);
        // Ours and the map's: no one else waits on it.
        if Arc::strong_count(&gate) == 2 {
            g.remove(&fid);
        }
    }

    async fn writer_for(&self, fid: Fid, size: u64) -> Result<Arc<Writer>, Errno> {
        let gate = self.gate(fid);
        let r = self.take_writer(fid, size, &gate).await;
        self.drop_gate(fid, gate);
        r
    }

    async fn take_writer(
        &self,
        fid: Fid,
        size: u64,
        gate: &tokio::sync::Mutex<()>,
    ) -> Result<Arc<Writer>, Errno> {
        let _held = gate.lock().await;
        if let Some(w) = lock(&self.writers).get(&fid).cloned() {
            w.refs.fetch_add(1, Ordering::AcqRel);
            return Ok(w);
        }
        let deadline = Instant::now() + LEASE_WAIT;
        let obj = loop {
            match self
                .client
                .open_writer(fid, volume::client::DEFAULT_LEASE)
                .await
            {
                Ok(o) => break o,
                Err(VolumeError::LeaseBusy { .. }) if Instant::now() < deadline => {
                    // Another client writes this file, or one that died
                    // holds it until its lease runs out.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(vol_errno(&e)),
            }
        };
        let w = Arc::new(Writer {
            obj,
            size: Mutex::new(size),
            mtime: Mutex::new(Timespec::now()),
            dirty: AtomicBool::new(false),
            refs: AtomicU64::new(1),
        });
        lock(&self.writers).insert(fid, w.clone());
        Ok(w)
    }

    /// Commits a writer's size and mtime if it wrote since the last time.
    async fn store(&self, fid: Fid, w: &Writer) -> Result<(), Errno> {
        if !w.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let size = *lock(&w.size);
        let mtime = *lock(&w.mtime);
        match self.apply(CmlEntry::Store { fid, size, mtime }).await {
            Ok(_) => Ok(()),
            // Removed meanwhile: nothing to record.
            Err(e) if e == Errno::ENOENT => Ok(()),
            Err(e) => {
                w.dirty.store(true, Ordering::Release);
                Err(e)
            }
        }
    }

    fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::AcqRel);
        lock(&self.handles).insert(fh, h);
        fh
    }

    /// The file and its shared writer, for a handle opened for writing.
    fn file_writer(&self, fh: u64) -> Option<(Fid, Arc<Writer>)> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::File {
                fid,
                writer: Some(w),
                ..
            }) => Some((*fid, w.clone())),
            _ => None,
        }
    }

    fn opened(&self, fid: Fid) {
        *lock(&self.open_count).entry(fid).or_insert(0) += 1;
    }

    async fn release_file(&self, fid: Fid, writer: Option<Arc<Writer>>) -> Result<(), Errno> {
        let mut res = Ok(());
        if let Some(w) = writer {
            res = self.store(fid, &w).await;
            self.drop_writer(fid, w).await;
        }
        let last = {
            let mut oc = lock(&self.open_count);
            let n = oc.entry(fid).or_insert(1);
            *n -= 1;
            let last = *n == 0;
            if last {
                oc.remove(&fid);
            }
            last
        };
        if last && lock(&self.orphans).remove(&fid).is_some() {
            self.free(fid);
        }
        res
    }

    /// Drops one handle's reference to a file's writer; the last one gives
    /// the lease back.
    async fn drop_writer(&self, fid: Fid, w: Arc<Writer>) {
        let gate = self.gate(fid);
        let held = gate.lock().await;
        if w.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
            lock(&self.writers).remove(&fid);
            // Ours was the last handle: the lease is released before the
            // next open can take it again (under the gate). Not through the
            // last clone of the writer: a handler that answered the kernel
            // may still hold one, and a lease left behind makes the next
            // open settle every region of the file, as after a crash.
            if let Err(e) = w.obj.release().await {
                tracing::warn!(%fid, error = %e, "lease release failed");
            }
        }
        drop(held);
        self.drop_gate(fid, gate);
    }

    /// Size of a file as this mount sees it.
    fn size_of(&self, fid: Fid, i: &Inode) -> u64 {
        match lock(&self.writers).get(&fid) {
            Some(w) => *lock(&w.size),
            None => i.size,
        }
    }

    /// `list_dir` of directory `fid` at inode `version`: from the disk
    /// cache if it holds the entries of that version, else from the
    /// bricks, then kept on disk while the directory is still at it.
    async fn list_dir_at(&self, fid: Fid, version: u64) -> Result<Vec<(Vec<u8>, Dirent)>, Errno> {
        use crate::cache::DIR_ENTRIES;
        let disk = self.disk.as_ref().filter(|d| d.enabled() && version != 0);
        let g = self.gen.load(Ordering::Acquire);
        if let Some(b) = disk.and_then(|d| d.read_whole(fid, version, DIR_ENTRIES)) {
            if let Some(l) = decode_entries(&b) {
                if self.current(fid, version) {
                    self.know_whole(fid, version, &l, g);
                }
                return Ok(l);
            }
        }
        let l = self.list_dir(fid).await?;
        if self.current(fid, version) {
            self.know_whole(fid, version, &l, g);
        }
        if let Some(d) = disk {
            if self.gen.load(Ordering::Acquire) == g && self.current(fid, version) {
                if let Err(e) = d.put(fid, version, DIR_ENTRIES, &encode_entries(&l)) {
                    tracing::warn!(%fid, error = %e, "cannot write to the cache directory");
                }
            }
        }
        Ok(l)
    }

    async fn list_dir(&self, fid: Fid) -> Result<Vec<(Vec<u8>, Dirent)>, Errno> {
        let mut out = Vec::new();
        let mut after = Vec::new();
        loop {
            let page = self
                .ns
                .list(fid, &after, 1000)
                .await
                .map_err(|e| ns_errno(&e))?;
            let n = page.len();
            if let Some((last, _)) = page.last() {
                after = last.clone();
            }
            out.extend(page);
            if n < 1000 {
                return Ok(out);
            }
        }
    }

    fn entry_reply(&self, fid: Fid, i: &Inode, reply: ReplyEntry) {
        reply.entry(&ENTRY_TTL, &attr(ino_of(fid), i), Generation(0));
    }

    /// Makes a new inode `fid` (the caller draws it: `create` takes its
    /// lease before the name commits) named `name` in `parent` (create,
    /// mknod, mkdir, symlink).
    #[allow(clippy::too_many_arguments)]
    async fn make_as(
        &self,
        fid: Fid,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: Kind,
        perm: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> Result<(Fid, Inode), Errno> {
        if parent.0 == IMAGES_INO || self.is_image(parent.0) {
            return Err(Errno::EROFS);
        }
        let pfid = self.fid(parent);
        if pfid == self.ns.root() && self.images_on() && name.as_bytes() == IMAGES_NAME {
            return Err(Errno::EEXIST);
        }
        let p = self.inode(pfid, false).await?;
        if p.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let mut perm = (perm & 0o7777) as u16;
        let mut gid = req.gid();
        if p.perm & libc::S_ISGID as u16 != 0 {
            gid = p.gid;
            if kind == Kind::Dir {
                perm |= libc::S_ISGID as u16;
            }
        }
        let mut inode = Inode::new(kind, perm, req.uid(), gid, Timespec::now());
        inode.rdev = rdev;
        if let Some(t) = target {
            inode.target = t.to_vec();
            inode.size = t.len() as u64;
        }
        let out = self
            .apply(CmlEntry::Create {
                parent: pfid,
                name: name.as_bytes().to_vec(),
                fid,
                inode: inode.clone(),
            })
            .await?;
        let i = out.inode.map(|(_, _, i)| i).unwrap_or(inode);
        Ok((fid, i))
    }

    fn do_setattr(
        &self,
        ino: INodeNo,
        set: SetAttr,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        if ino.0 == IMAGES_INO || self.is_image(ino.0) {
            return Err(Errno::EROFS);
        }
        let fid = self.fid(ino);
        self.block(async {
            let cur = self.inode(fid, true).await?;
            if let Some(new) = set.size {
                if cur.kind == Kind::Dir {
                    return Err(Errno::EISDIR);
                }
                if cur.kind != Kind::File {
                    return Err(Errno::EINVAL);
                }
                if self.opts.read_only {
                    return Err(Errno::EROFS);
                }
                let writer = fh.and_then(|fh| match lock(&self.handles).get(&fh.0) {
                    Some(Handle::File { writer, .. }) => writer.clone(),
                    _ => None,
                });
                let writer = writer.or_else(|| lock(&self.writers).get(&fid).cloned());
                let old = self.size_of(fid, &cur);
                if new < old {
                    let r = match &writer {
                        Some(w) => w.obj.punch(new, old - new).await,
                        None => self.client.object(fid).punch(new, old - new).await,
                    };
                    r.map_err(|e| vol_errno(&e))?;
                }
                if let Some(w) = &writer {
                    *lock(&w.size) = new;
                    *lock(&w.mtime) = Timespec::now();
                }
            }
            // Data written through this mount first, so that times set
            // here are not overwritten by a later store of the size.
            let open_writer = lock(&self.writers).get(&fid).cloned();
            if let Some(w) = &open_writer {
                if set.size.is_some() {
                    w.dirty.store(false, Ordering::Release);
                } else {
                    self.store(fid, w).await?;
                }
            }
            let mut set = set;
            if set.size.is_some() && set.mtime.is_none() {
                set.mtime = Some(Timespec::now());
            }
            let now = Timespec::now();
            let out = self.apply(CmlEntry::SetAttr { fid, set, now }).await?;
            let i = match out.inode {
                Some((_, _, i)) => self.overlay(fid, i),
                None => self.inode(fid, false).await?,
            };
            Ok(attr(ino.0, &i))
        })
    }
}

/// The file system handed to fuser.
pub struct StrettoFs {
    pub(crate) s: Arc<Shared>,
}

impl StrettoFs {
    pub fn new(s: Arc<Shared>) -> StrettoFs {
        StrettoFs { s }
    }
}

fn check_xattr_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > crate::inode::XATTR_NAME_MAX {
        return Err(Errno::ERANGE);
    }
    for ns in [&b"user."[..], b"trusted.", b"security."] {
        if name.starts_with(ns) && name.len() > ns.len() {
            return Ok(());
        }
    }
    Err(errno(libc::EOPNOTSUPP))
}

impl fuser::Filesystem for StrettoFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // ASYNC_DIO: O_DIRECT requests of one file are sent in parallel
        // (an io_depth of 32 is 32 requests, not one at a time).
        let want = fuser::InitFlags::FUSE_AUTO_INVAL_DATA
            | fuser::InitFlags::FUSE_ASYNC_DIO
            | fuser::InitFlags::FUSE_DO_READDIRPLUS
            | fuser::InitFlags::FUSE_READDIRPLUS_AUTO;
        let _ = config.add_capabilities(want & config.capabilities());
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_time_granularity(Duration::from_nanos(1));
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = &self.s;
        let name = name.as_bytes();
        if name.len() > crate::inode::NAME_MAX {
            return reply.error(Errno::ENAMETOOLONG);
        }
        if parent.0 == IMAGES_INO {
            return match s.image_table() {
                Ok(t) => match std::str::from_utf8(name).ok().and_then(|n| t.get(n)) {
                    Some(e) => reply.entry(&ENTRY_TTL, &s.image_attr(e), Generation(0)),
                    None => reply.error(Errno::ENOENT),
                },
                Err(e) => reply.error(e),
            };
        }
        let pfid = s.fid(parent);
        if pfid == s.ns.root() && s.images_on() && name == IMAGES_NAME {
            return reply.entry(&ENTRY_TTL, &s.images_attr(), Generation(0));
        }
        let r = s.block(async {
            let d = s.lookup_entry(pfid, name).await?;
            let i = s.inode(d.fid, false).await?;
            Ok::<_, Errno>((d.fid, i))
        });
        match r {
            Ok((fid, i)) => s.entry_reply(fid, &i, reply),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = &self.s;
        if ino.0 == IMAGES_INO && s.images_on() {
            return reply.attr(&ATTR_TTL, &s.images_attr());
        }
        if s.is_image(ino.0) {
            return match s.image_by_ino(ino.0) {
                Ok((_, e)) => reply.attr(&ATTR_TTL, &s.image_attr(&e)),
                Err(e) => reply.error(e),
            };
        }
        let fid = s.fid(ino);
        match s.block(s.inode(fid, false)) {
            Ok(i) => reply.attr(&ATTR_TTL, &attr(ino.0, &i)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let now = Timespec::now();
        let set = SetAttr {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: atime.map(|t| time_of(t, now)),
            mtime: mtime.map(|t| time_of(t, now)),
            ctime: ctime.map(Timespec::from_system),
        };
        match self.s.do_setattr(ino, set, fh) {
            Ok(a) => reply.attr(&ATTR_TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let s = &self.s;
        match s.block(s.inode(s.fid(ino), false)) {
            Ok(i) if i.kind == Kind::Symlink => reply.data(&i.target),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let s = &self.s;
        let Some(kind) = Kind::from_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        if kind == Kind::Dir || kind == Kind::Symlink {
            return reply.error(Errno::EINVAL);
        }
        let rdev = if matches!(kind, Kind::CharDev | Kind::BlockDev) {
            rdev
        } else {
            0
        };
        match s.block(s.make_as(
            s.ns.new_fid(),
            req,
            parent,
            name,
            kind,
            mode & !umask,
            rdev,
            None,
        )) {
            Ok((fid, i)) => s.entry_reply(fid, &i, reply),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let s = &self.s;
        match s.block(s.make_as(
            s.ns.new_fid(),
            req,
            parent,
            name,
            Kind::Dir,
            mode & !umask,
            0,
            None,
        )) {
            Ok((fid, i)) => s.entry_reply(fid, &i, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let s = &self.s;
        let t = target.as_os_str().as_bytes();
        if t.len() > TARGET_MAX {
            return reply.error(Errno::ENAMETOOLONG);
        }
        match s.block(s.make_as(
            s.ns.new_fid(),
            req,
            parent,
            link_name,
            Kind::Symlink,
            0o777,
            0,
            Some(t),
        )) {
            Ok((fid, i)) => s.entry_reply(fid, &i, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let s = &self.s;
        for p in [parent.0, newparent.0] {
            if p == IMAGES_INO && s.images_on() {
                return reply.error(Errno::EROFS);
            }
        }
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            return reply.error(Errno::EINVAL);
        };
        let (pf, nf) = (s.fid(parent), s.fid(newparent));
        if s.images_on() {
            let root = s.ns.root();
            if (pf == root && name.as_bytes() == IMAGES_NAME)
                || (nf == root && newname.as_bytes() == IMAGES_NAME)
            {
                return reply.error(Errno::EBUSY);
            }
        }
        let e = CmlEntry::Rename {
            parent: pf,
            name: name.as_bytes().to_vec(),
            new_parent: nf,
            new_name: newname.as_bytes().to_vec(),
            mode,
            now: Timespec::now(),
        };
        match s.block(s.apply(e)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let s = &self.s;
        if s.is_image(ino.0) || newparent.0 == IMAGES_INO {
            return reply.error(Errno::EROFS);
        }
        let fid = s.fid(ino);
        let pf = s.fid(newparent);
        if pf == s.ns.root() && s.images_on() && newname.as_bytes() == IMAGES_NAME {
            return reply.error(Errno::EEXIST);
        }
        let e = CmlEntry::Link {
            parent: pf,
            name: newname.as_bytes().to_vec(),
            fid,
            now: Timespec::now(),
        };
        let r = s.block(async {
            let out = s.apply(e).await?;
            match out.inode {
                Some((_, _, i)) => Ok(s.overlay(fid, i)),
                None => s.inode(fid, true).await,
            }
        });
        match r {
            Ok(i) => s.entry_reply(fid, &i, reply),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let s = &self.s;
        let write = (flags.0 & libc::O_ACCMODE) != libc::O_RDONLY;
        if s.is_image(ino.0) {
            if write {
                return reply.error(Errno::EROFS);
            }
            return match s.image_by_ino(ino.0) {
                Ok((_, e)) => {
                    let fid = Fid {
                        volume: s.ns.volume(),
                        vnode: e.vnode,
                        unique: e.unique,
                    };
                    let fh = s.new_fh(Handle::Image { fid, size: e.size });
                    reply.opened(FileHandle(fh), FopenFlags::empty())
                }
                Err(e) => reply.error(e),
            };
        }
        if write && s.opts.read_only {
            return reply.error(Errno::EROFS);
        }
        let fid = s.fid(ino);
        let r = s.block(async {
            // Close-to-open: the inode as the bricks have it now.
            let (version, i) = s.fresh_inode(fid).await?;
            match i.kind {
                Kind::Dir => return Err(Errno::EISDIR),
                Kind::File => {}
                _ => return Err(Errno::EINVAL),
            }
            // O_DIRECT asks for no caching: such a handle reads the bricks.
            let direct = flags.0 & libc::O_DIRECT != 0;
            let (writer, cached) = if write {
                (Some(s.writer_for(fid, i.size).await?), None)
            } else if direct {
                (None, None)
            } else {
                (None, s.cacheable(fid, version, i.size))
            };
            s.opened(fid);
            Ok(s.new_fh(Handle::File {
                fid,
                writer,
                cached,
            }))
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = &self.s;
        let h = match lock(&s.handles).get(&fh.0) {
            Some(Handle::File { fid, cached, .. }) => Ok((*fid, None, *cached)),
            Some(Handle::Image { fid, size }) => Ok((*fid, Some(*size), None)),
            _ => Err(Errno::EBADF),
        };
        let (fid, image_size, cached) = match h {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        // The cached chunks serve reads while the inode is still at the
        // handle's version: not when this mount writes the file now, has
        // written it since (its store raised the version), or a callback
        // said another client changed it (then the bricks have newer data).
        if let Some((end, v)) = cached.filter(|(_, v)| s.current(fid, *v)) {
            if offset >= end {
                return reply.data(&[]);
            }
            return match s.block(s.read_cached(fid, v, end, offset, size as u64)) {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(e),
            };
        }
        let _ = ino;
        let r = s.block(async {
            let end = match image_size {
                Some(sz) => sz,
                None => {
                    let i = s.inode(fid, false).await?;
                    s.size_of(fid, &i)
                }
            };
            if offset >= end {
                return Ok(Vec::new());
            }
            let len = (size as u64).min(end - offset);
            s.client
                .object(fid)
                .read(offset, len)
                .await
                .map_err(|e| vol_errno(&e))
        });
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let s = &self.s;
        let Some((_, w)) = s.file_writer(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let r = s.block(w.obj.write(offset, data));
        match r {
            Ok(()) => {
                {
                    let mut sz = lock(&w.size);
                    *sz = (*sz).max(offset + data.len() as u64);
                }
                *lock(&w.mtime) = Timespec::now();
                w.dirty.store(true, Ordering::Release);
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(vol_errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let s = &self.s;
        let h = s.file_writer(fh.0);
        match h {
            Some((fid, w)) => match s.block(s.store(fid, &w)) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
            None => reply.ok(),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let s = &self.s;
        let h = s.file_writer(fh.0);
        let Some((fid, w)) = h else {
            return reply.ok();
        };
        let r = s.block(async {
            w.obj.flush().await.map_err(|e| vol_errno(&e))?;
            s.store(fid, &w).await
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let s = &self.s;
        let h = lock(&s.handles).remove(&fh.0);
        match h {
            Some(Handle::File { fid, writer, .. }) => match s.block(s.release_file(fid, writer)) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
            _ => reply.ok(),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let s = &self.s;
        let r = if ino.0 == IMAGES_INO && s.images_on() {
            s.image_table().map(|t| {
                let mut v = vec![
                    (b".".to_vec(), IMAGES_INO, FileType::Directory),
                    (b"..".to_vec(), 1, FileType::Directory),
                ];
                for (n, e) in t {
                    let fid = Fid {
                        volume: s.ns.volume(),
                        vnode: e.vnode,
                        unique: e.unique,
                    };
                    v.push((n.into_bytes(), ino_of(fid), FileType::RegularFile));
                }
                v
            })
        } else {
            let fid = s.fid(ino);
            s.block(async {
                let (version, i) = s.fresh_inode(fid).await?;
                if i.kind != Kind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                let list = s.list_dir_at(fid, version).await?;
                let mut v = vec![
                    (b".".to_vec(), ino.0, FileType::Directory),
                    (b"..".to_vec(), ino.0, FileType::Directory),
                ];
                if fid == s.ns.root() && s.images_on() {
                    v.push((IMAGES_NAME.to_vec(), IMAGES_INO, FileType::Directory));
                }
                for (n, d) in list {
                    v.push((n, ino_of(d.fid), file_type(d.kind)));
                }
                Ok(v)
            })
        };
        match r {
            Ok(entries) => {
                let fh = s.new_fh(Handle::Dir { entries });
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = &self.s;
        let handles = lock(&s.handles);
        let Some(Handle::Dir { entries }) = handles.get(&fh.0) else {
            drop(handles);
            return reply.error(Errno::EBADF);
        };
        for (i, (name, ino, kind)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        drop(handles);
        reply.ok()
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let s = &self.s;
        let entries: Vec<(Vec<u8>, u64, FileType)> = match lock(&s.handles).get(&fh.0) {
            Some(Handle::Dir { entries }) => {
                entries.iter().skip(offset as usize).cloned().collect()
            }
            _ => return reply.error(Errno::EBADF),
        };
        for (k, (name, eino, _)) in entries.into_iter().enumerate() {
            let a = if name == b"." || name == b".." {
                if ino.0 == IMAGES_INO && s.images_on() {
                    Ok(s.images_attr())
                } else {
                    s.block(s.inode(s.fid(INodeNo(eino)), false))
                        .map(|i| attr(eino, &i))
                }
            } else if eino == IMAGES_INO && s.images_on() {
                Ok(s.images_attr())
            } else if s.is_image(eino) {
                s.image_by_ino(eino).map(|(_, e)| s.image_attr(&e))
            } else {
                s.block(s.inode(s.fid(INodeNo(eino)), false))
                    .map(|i| attr(eino, &i))
            };
            // An entry removed meanwhile is skipped.
            let Ok(a) = a else { continue };
            let off = offset + k as u64 + 1;
            if reply.add(
                INodeNo(eino),
                off,
                OsStr::from_bytes(&name),
                &ENTRY_TTL,
                &a,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.s.handles).remove(&fh.0);
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are committed on a quorum before they return.
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = &self.s;
        let cap = s.block(async {
            let mut c = s.capacity.lock().await;
            match *c {
                Some((at, cap)) if at.elapsed() < STATFS_CACHE => Ok(cap),
                _ => {
                    let cap = s.client.capacity().await?;
                    *c = Some((Instant::now(), cap));
                    Ok(cap)
                }
            }
        });
        let cap = match cap {
            Ok(c) => c,
            Err(e) => return reply.error(vol_errno(&e)),
        };
        // Files are namespace records, not brick inodes: no real limit to
        // report, so a nominal 2^32.
        let (bsize, files) = (STATFS_BLOCK as u64, 1u64 << 32);
        let free = cap.free_bytes / bsize;
        reply.statfs(
            cap.total_bytes / bsize,
            free,
            free,
            files,
            files,
            STATFS_BLOCK,
            crate::inode::NAME_MAX as u32,
            STATFS_BLOCK,
        )
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let s = &self.s;
        if ino.0 == IMAGES_INO || s.is_image(ino.0) {
            return reply.error(Errno::EROFS);
        }
        let name = name.as_bytes();
        if let Err(e) = check_xattr_name(name) {
            return reply.error(e);
        }
        let mode = match flags {
            0 => XattrMode::Any,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        let e = CmlEntry::SetXattr {
            fid: s.fid(ino),
            name: name.to_vec(),
            value: value.to_vec(),
            mode,
            now: Timespec::now(),
        };
        match s.block(s.apply(e)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let s = &self.s;
        if ino.0 == IMAGES_INO || s.is_image(ino.0) {
            return reply.error(Errno::ENODATA);
        }
        let name = name.as_bytes();
        if name.len() > crate::inode::XATTR_NAME_MAX {
            return reply.error(Errno::ERANGE);
        }
        match s.block(s.inode(s.fid(ino), false)) {
            Ok(i) => match i.xattrs.get(name) {
                None => reply.error(Errno::ENODATA),
                Some(v) if size == 0 => reply.size(v.len() as u32),
                Some(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
                Some(v) => reply.data(v),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let s = &self.s;
        let list = if ino.0 == IMAGES_INO || s.is_image(ino.0) {
            Vec::new()
        } else {
            match s.block(s.inode(s.fid(ino), false)) {
                Ok(i) => {
                    let mut l = Vec::new();
                    for k in i.xattrs.keys() {
                        l.extend_from_slice(k);
                        l.push(0);
                    }
                    l
                }
                Err(e) => return reply.error(e),
            }
        };
        if size == 0 {
            reply.size(list.len() as u32)
        } else if list.len() > size as usize {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(&list)
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let s = &self.s;
        if ino.0 == IMAGES_INO || s.is_image(ino.0) {
            return reply.error(Errno::EROFS);
        }
        let e = CmlEntry::RemoveXattr {
            fid: s.fid(ino),
            name: name.as_bytes().to_vec(),
            now: Timespec::now(),
        };
        match s.block(s.apply(e)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let s = &self.s;
        let i = if ino.0 == IMAGES_INO && s.images_on() {
            let mut i = Inode::new(Kind::Dir, 0o555, 0, 0, Timespec::default());
            i.nlink = 2;
            Ok(i)
        } else if s.is_image(ino.0) {
            Ok(Inode::new(Kind::File, 0o444, 0, 0, Timespec::default()))
        } else {
            s.block(s.inode(s.fid(ino), false))
        };
        let i = match i {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let mask = mask.bits();
        if mask == libc::F_OK {
            return reply.ok();
        }
        if mask & libc::W_OK != 0 && s.opts.read_only {
            return reply.error(Errno::EROFS);
        }
        let perm = i.perm as i32;
        let granted = if req.uid() == 0 {
            // root: everything but executing a file with no x bit at all.
            let x = if i.kind != Kind::Dir && perm & 0o111 == 0 {
                0
            } else {
                libc::X_OK
            };
            libc::R_OK | libc::W_OK | x
        } else if req.uid() == i.uid {
            (perm >> 6) & 7
        } else if req.gid() == i.gid {
            (perm >> 3) & 7
        } else {
            perm & 7
        };
        if mask & !granted & 7 != 0 {
            reply.error(Errno::EACCES)
        } else {
            reply.ok()
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let s = &self.s;
        let kind = match Kind::from_mode(mode) {
            Some(Kind::File) => Kind::File,
            _ => return reply.error(Errno::EINVAL),
        };
        let write = (flags & libc::O_ACCMODE) != libc::O_RDONLY;
        let r = s.block(async {
            // The new fid is ours alone until the create commits, so its
            // lease is taken at the same time as the commit, not after.
            let fid = s.ns.new_fid();
            let made = s.make_as(fid, req, parent, name, kind, mode & !umask, 0, None);
            let (made, writer) = if write {
                let (m, w) = tokio::join!(made, s.writer_for(fid, 0));
                (m, Some(w))
            } else {
                (made.await, None)
            };
            let (fid, i) = match made {
                Ok(m) => m,
                Err(e) => {
                    if let Some(Ok(w)) = writer {
                        s.drop_writer(fid, w).await;
                    }
                    return Err(e);
                }
            };
            let writer = writer.transpose()?;
            if let Some(w) = &writer {
                // A new object: its size is 0 without asking the bricks.
                w.obj.assume_size(0);
            }
            s.opened(fid);
            let fh = s.new_fh(Handle::File {
                fid,
                writer,
                cached: None,
            });
            Ok::<_, Errno>((fid, i, fh))
        });
        match r {
            Ok((fid, i, fh)) => reply.created(
                &ENTRY_TTL,
                &attr(ino_of(fid), &i),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let s = &self.s;
        let h = s.file_writer(fh.0);
        let Some((fid, w)) = h else {
            return reply.error(Errno::EBADF);
        };
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (punch && (!keep || zero)) {
            return reply.error(errno(libc::EOPNOTSUPP));
        }
        let Some(end) = offset.checked_add(length) else {
            return reply.error(Errno::EFBIG);
        };
        let r = s.block(async {
            let size = *lock(&w.size);
            if punch || zero {
                let stop = if keep { end.min(size) } else { end };
                if stop > offset {
                    let r = if punch {
                        w.obj.punch(offset, stop - offset).await
                    } else {
                        w.obj.zero(offset, stop - offset).await
                    };
                    r.map_err(|e| vol_errno(&e))?;
                }
            }
            if !keep && end > size {
                *lock(&w.size) = end;
            }
            *lock(&w.mtime) = Timespec::now();
            w.dirty.store(true, Ordering::Release);
            s.store(fid, &w).await
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let s = &self.s;
        let h = match lock(&s.handles).get(&fh.0) {
            Some(Handle::File { fid, .. }) => Ok((*fid, None)),
            Some(Handle::Image { fid, size }) => Ok((*fid, Some(*size))),
            _ => Err(Errno::EBADF),
        };
        let (fid, image_size) = match h {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        if offset < 0 {
            return reply.error(Errno::ENXIO);
        }
        let off = offset as u64;
        // Data and holes as the object's bytes say (4 KiB blocks that read
        // as zeros are holes), bounded by the size this mount sees (a
        // writer's size before it is flushed included).
        let r = s.block(async {
            let size = match image_size {
                Some(sz) => sz,
                None => s.size_of(fid, &s.inode(fid, false).await?),
            };
            if off >= size {
                return Err(Errno::ENXIO);
            }
            let obj = s.client.object(fid);
            match whence {
                libc::SEEK_DATA => obj.seek_data(off, size).await,
                libc::SEEK_HOLE => obj.seek_hole(off, size).await.map(Some),
                _ => return Err(Errno::EINVAL),
            }
            .map_err(|e| vol_errno(&e))?
            .ok_or(Errno::ENXIO)
        });
        match r {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(e),
        }
    }
}

impl StrettoFs {
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let s = &self.s;
        if parent.0 == IMAGES_INO && s.images_on() {
            return reply.error(Errno::EROFS);
        }
        let pf = s.fid(parent);
        if pf == s.ns.root() && s.images_on() && name.as_bytes() == IMAGES_NAME {
            return reply.error(Errno::EBUSY);
        }
        let e = CmlEntry::Remove {
            parent: pf,
            name: name.as_bytes().to_vec(),
            dir,
            now: Timespec::now(),
        };
        match s.block(s.apply(e)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_entries_round_trip() {
        let d = |n: u32, kind| Dirent {
            fid: Fid {
                volume: 1,
                vnode: n,
                unique: 9,
            },
            kind,
        };
        let l = vec![
            (b"a".to_vec(), d(2, Kind::File)),
            (vec![0xffu8; 255], d(3, Kind::Dir)),
        ];
        let b = encode_entries(&l);
        assert_eq!(decode_entries(&b).unwrap(), l);
        assert_eq!(decode_entries(&[]).unwrap(), Vec::new());
        assert!(decode_entries(&b[..b.len() - 1]).is_none());
    }
}
