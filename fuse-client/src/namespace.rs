//! The namespace: directories and inodes as versioned records in the
//! volume's [`RecordStore`] (formats in [`crate::inode`]).
//!
//! Every mutation is a [`CmlEntry`] applied by [`Namespace::apply`]: it
//! reads the records it needs, checks POSIX rules against them, and sends
//! one guarded, all-or-nothing commit whose guards are the versions it
//! read. When another client changed one of them in between, the commit
//! fails as a whole with a conflict and the entry is planned again from
//! fresh records. This module does no I/O on file data and knows nothing
//! of FUSE.

use std::collections::BTreeMap;
use std::sync::Arc;

use thiserror::Error;
use volume::records::{Expect, Record, RecordError, RecordOp, RecordStore};
use volume::Fid;

use crate::cml::{Cml, CmlEntry, RenameMode, XattrMode};
use crate::inode::{
    dir_prefix, entry_key, inode_key, Dirent, FormatError, Inode, Kind, Timespec, NAME_MAX,
    XATTR_NAME_MAX, XATTR_VALUE_MAX,
};

/// Most bytes of extended attributes (names and values) one inode keeps,
/// so that a commit of several inodes stays within one request.
pub const XATTR_TOTAL_MAX: usize = 8 * 1024;

/// How often a mutation is planned again after conflicts before giving up.
const MAX_ATTEMPTS: u32 = 200;

/// Where the namespace's store comes from: asked on every operation, so
/// the store follows the volume client's reloads.
pub type StoreSource = Arc<dyn Fn() -> Arc<dyn RecordStore> + Send + Sync>;

/// Why a namespace operation failed.
#[derive(Debug, Error)]
pub enum NsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("file name too long")]
    NameTooLong,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("no such attribute")]
    NoData,
    #[error("attribute name too long")]
    Range,
    #[error("attribute value too large")]
    TooBig,
    #[error("no space for more attributes")]
    NoSpace,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("gave up after {0} conflicting attempts")]
    Busy(u32),
    #[error("record {key:?} is unreadable")]
    Corrupt {
        key: Vec<u8>,
        #[source]
        source: FormatError,
    },
    #[error(transparent)]
    Store(#[from] RecordError),
    #[error(transparent)]
    Log(#[from] crate::cml::CmlError),
}

impl NsError {
    /// The errno a system call reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            NsError::NotFound => libc::ENOENT,
            NsError::Exists => libc::EEXIST,
            NsError::NotEmpty => libc::ENOTEMPTY,
            NsError::NotDir => libc::ENOTDIR,
            NsError::IsDir => libc::EISDIR,
            NsError::NameTooLong => libc::ENAMETOOLONG,
            NsError::NotPermitted => libc::EPERM,
            NsError::NoData => libc::ENODATA,
            NsError::Range => libc::ERANGE,
            NsError::TooBig => libc::E2BIG,
            NsError::NoSpace => libc::ENOSPC,
            NsError::Invalid(_) => libc::EINVAL,
            NsError::Busy(_) => libc::EAGAIN,
            NsError::Corrupt { .. } => libc::EIO,
            NsError::Store(_) | NsError::Log(_) => libc::EIO,
        }
    }
}

/// What an applied entry changed.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The store's sequence number of the commit (0: nothing committed).
    pub seq: u64,
    /// The main inode after the change, with its new version (absent when
    /// the change removed it).
    pub inode: Option<(Fid, u64, Inode)>,
    /// Every inode written, with its new version (for the caller's cache).
    pub inodes: Vec<(Fid, u64, Inode)>,
    /// Inodes whose last name went: their data can be freed once no one
    /// has them open.
    pub freed: Vec<Fid>,
}

/// Checks a name for a directory entry.
pub fn check_name(name: &[u8]) -> Result<(), NsError> {
    if name.len() > NAME_MAX {
        return Err(NsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(NsError::Invalid("bad name"));
    }
    Ok(())
}

/// Records a caller believes current (from its cache, or a new name it
/// presumes absent): the first attempt of [`Namespace::apply_hinted`]
/// plans from them instead of asking the store. Each must be exact for its
/// version: inode keys qualify (a fid is never reused, so an inode's
/// version names one value), entry keys only as absent (a removed and
/// re-made name starts again at version 1).
pub type Hints = BTreeMap<Vec<u8>, Option<Record>>;

/// The records one planned mutation read, and what it writes.
struct Txn {
    store: Arc<dyn RecordStore>,
    read: BTreeMap<Vec<u8>, Option<Record>>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    hints: Hints,
    /// Keys whose read came from `hints`, not from the store.
    hinted: Vec<Vec<u8>>,
}

impl Txn {
    fn with_hints(store: Arc<dyn RecordStore>, hints: Hints) -> Txn {
        Txn {
            store,
            read: BTreeMap::new(),
            writes: BTreeMap::new(),
            hints,
            hinted: Vec::new(),
        }
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, NsError> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        if !self.read.contains_key(key) {
            let r = match self.hints.remove(key) {
                Some(h) => {
                    self.hinted.push(key.to_vec());
                    h
                }
                None => self.store.get(key).await?,
            };
            self.read.insert(key.to_vec(), r);
        }
        Ok(self.read[key].as_ref().map(|r| r.value.clone()))
    }

    /// Whether every record taken from hints is also written, so that the
    /// commit's guards check each presumption (one only read would go
    /// unchecked).
    fn hints_guarded(&self) -> bool {
        self.hinted.iter().all(|k| self.writes.contains_key(k))
    }

    async fn inode(&mut self, fid: Fid) -> Result<Option<Inode>, NsError> {
        let key = inode_key(fid);
        match self.get(&key).await? {
            None => Ok(None),
            Some(v) => Inode::decode(&v)
                .map(Some)
                .map_err(|source| NsError::Corrupt { key, source }),
        }
    }

    async fn dir(&mut self, fid: Fid) -> Result<Inode, NsError> {
        let i = self.inode(fid).await?.ok_or(NsError::NotFound)?;
        if i.kind != Kind::Dir {
            return Err(NsError::NotDir);
        }
        Ok(i)
    }

    async fn entry(&mut self, dir: Fid, name: &[u8]) -> Result<Option<Dirent>, NsError> {
        let key = entry_key(dir, name);
        match self.get(&key).await? {
            None => Ok(None),
            Some(v) => Dirent::decode(&v)
                .map(Some)
                .map_err(|source| NsError::Corrupt { key, source }),
        }
    }

    fn put_inode(&mut self, fid: Fid, i: &Inode) {
        self.writes.insert(inode_key(fid), Some(i.encode()));
    }

    fn del_inode(&mut self, fid: Fid) {
        self.writes.insert(inode_key(fid), None);
    }

    fn put_entry(&mut self, dir: Fid, name: &[u8], d: Dirent) {
        self.writes.insert(entry_key(dir, name), Some(d.encode()));
    }

    fn del_entry(&mut self, dir: Fid, name: &[u8]) {
        self.writes.insert(entry_key(dir, name), None);
    }

    /// Whether directory `dir` has no entries (its inode must be among the
    /// records this mutation writes, so that a concurrent create in it,
    /// which rewrites it, makes the commit fail).
    async fn is_empty(&self, dir: Fid) -> Result<bool, NsError> {
        Ok(self.store.list(&dir_prefix(dir), b"", 1).await?.is_empty())
    }

    /// Commits the writes, each guarded by the version read. Returns the
    /// commit's sequence number and the new version of each key written.
    async fn commit(self) -> Result<(u64, BTreeMap<Vec<u8>, u64>), RecordError> {
        if self.writes.is_empty() {
            return Ok((0, BTreeMap::new()));
        }
        let mut ops = Vec::with_capacity(self.writes.len());
        let mut versions = BTreeMap::new();
        for (key, value) in self.writes {
            let (expect, v) = match self.read.get(&key) {
                Some(Some(r)) => (Expect::Version(r.version), r.version + 1),
                Some(None) => (Expect::Absent, 1),
                None => (Expect::Any, 0),
            };
            versions.insert(key.clone(), v);
            ops.push(RecordOp { key, expect, value });
        }
        let seq = self.store.commit(ops).await?;
        Ok((seq, versions))
    }
}

/// What planning an entry decided besides the writes.
#[derive(Default)]
struct Plan {
    main: Option<Fid>,
    freed: Vec<Fid>,
}

/// The namespace of one volume.
pub struct Namespace {
    source: StoreSource,
    volume: u32,
    cml: Cml,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("volume", &self.volume)
            .finish()
    }
}

impl Namespace {
    pub fn new(volume: u32, source: StoreSource) -> Namespace {
        Namespace::with_log(volume, source, Cml::new())
    }

    /// A namespace whose changes go through `cml` (e.g. one kept in RVM).
    pub fn with_log(volume: u32, source: StoreSource, cml: Cml) -> Namespace {
        Namespace {
            source,
            volume,
            cml,
        }
    }

    /// Applies the entries a crash left in the log, oldest first, and drops
    /// them. An entry that was already applied fails its guards (a name
    /// taken or gone) and is dropped too. Returns (applied, refused).
    pub async fn replay(&self) -> Result<(usize, usize), NsError> {
        let (mut ok, mut refused) = (0, 0);
        for (n, e) in self.cml.pending_entries() {
            match self.apply_now(&e, Hints::new()).await {
                Ok(_) => {
                    ok += 1;
                    self.cml.done(n, true);
                }
                Err(NsError::Store(e)) => return Err(NsError::Store(e)),
                Err(err) => {
                    tracing::info!(entry = n, error = %err, "client log entry not applied again");
                    refused += 1;
                    self.cml.done(n, false);
                }
            }
        }
        Ok((ok, refused))
    }

    /// A namespace over one fixed store (tests).
    pub fn over(volume: u32, store: Arc<dyn RecordStore>) -> Namespace {
        Namespace::new(volume, Arc::new(move || store.clone()))
    }

    pub fn store(&self) -> Arc<dyn RecordStore> {
        (self.source)()
    }

    pub fn volume(&self) -> u32 {
        self.volume
    }

    pub fn cml(&self) -> &Cml {
        &self.cml
    }

    /// The root directory's fid.
    pub fn root(&self) -> Fid {
        Fid {
            volume: self.volume,
            vnode: 0,
            unique: 1,
        }
    }

    /// A new fid for an inode: random, never vnode 0 (the root and other
    /// fixed names) and never unique 0 or 1 (image objects use unique 1).
    pub fn new_fid(&self) -> Fid {
        loop {
            let (vnode, unique): (u32, u32) = (rand::random(), rand::random());
            if vnode != 0 && unique > 1 {
                return Fid {
                    volume: self.volume,
                    vnode,
                    unique,
                };
            }
        }
    }

    /// Makes the root directory if the volume has none yet.
    pub async fn ensure_root(&self, perm: u16, uid: u32, gid: u32) -> Result<(), NsError> {
        let key = inode_key(self.root());
        let store = self.store();
        if store.get(&key).await?.is_some() {
            return Ok(());
        }
        let i = Inode::new(Kind::Dir, perm, uid, gid, Timespec::now());
        let op = RecordOp {
            key,
            expect: Expect::Absent,
            value: Some(i.encode()),
        };
        match store.commit(vec![op]).await {
            Ok(_) | Err(RecordError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `fid`'s inode and its version.
    pub async fn inode(&self, fid: Fid) -> Result<Option<(u64, Inode)>, NsError> {
        let key = inode_key(fid);
        match self.store().get(&key).await? {
            None => Ok(None),
            Some(r) => Inode::decode(&r.value)
                .map(|i| Some((r.version, i)))
                .map_err(|source| NsError::Corrupt { key, source }),
        }
    }

    /// The entry `name` of directory `dir`.
    pub async fn lookup(&self, dir: Fid, name: &[u8]) -> Result<Option<Dirent>, NsError> {
        if name.len() > NAME_MAX {
            return Err(NsError::NameTooLong);
        }
        let key = entry_key(dir, name);
        match self.store().get(&key).await? {
            None => Ok(None),
            Some(r) => Dirent::decode(&r.value)
                .map(Some)
                .map_err(|source| NsError::Corrupt { key, source }),
        }
    }

    /// Up to `limit` entries of `dir` whose names sort after `after`
    /// (empty: from the first), in name order.
    pub async fn list(
        &self,
        dir: Fid,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Dirent)>, NsError> {
        let prefix = dir_prefix(dir);
        let after_key = if after.is_empty() {
            Vec::new()
        } else {
            entry_key(dir, after)
        };
        let l = self.store().list(&prefix, &after_key, limit).await?;
        let mut out = Vec::with_capacity(l.len());
        for (k, r) in l {
            let d = Dirent::decode(&r.value).map_err(|source| NsError::Corrupt {
                key: k.clone(),
                source,
            })?;
            out.push((k[prefix.len()..].to_vec(), d));
        }
        Ok(out)
    }

    /// Logs `e` and applies it (write-through): one guarded commit,
    /// planned again from fresh records on conflict.
    pub async fn apply(&self, e: CmlEntry) -> Result<Applied, NsError> {
        self.apply_hinted(e, Hints::new()).await
    }

    /// [`Namespace::apply`], planned first from `hints` (records the
    /// caller has cached) without reading them from the store. The commit
    /// guards every hinted record by its version, so a stale hint only
    /// costs a conflict; then, as after any error or a hint that would go
    /// unguarded, the entry is planned again from the store.
    pub async fn apply_hinted(&self, e: CmlEntry, hints: Hints) -> Result<Applied, NsError> {
        let n = self.cml.append(e.clone())?;
        let r = self.apply_now(&e, hints).await;
        self.cml.done(n, r.is_ok());
        r
    }

    async fn apply_now(&self, e: &CmlEntry, hints: Hints) -> Result<Applied, NsError> {
        let mut hints = Some(hints).filter(|h| !h.is_empty());
        for attempt in 0..MAX_ATTEMPTS {
            let hinted = hints.is_some();
            let mut t = Txn::with_hints(self.store(), hints.take().unwrap_or_default());
            let planned = plan(&mut t, e).await;
            if hinted && !(planned.is_ok() && t.hints_guarded()) {
                // Decided from cached records: decide again from the store.
                continue;
            }
            let plan = planned?;
            let writes: Vec<(Fid, Option<Vec<u8>>)> = t
                .writes
                .iter()
                .filter_map(|(k, v)| match crate::inode::parse_key(k) {
                    Some(crate::inode::KeyRef::Inode(f)) => Some((f, v.clone())),
                    _ => None,
                })
                .collect();
            // Inodes read and not written (the main inode of a no-op).
            let main_read = plan.main.and_then(|f| {
                t.read
                    .get(&inode_key(f))
                    .and_then(|r| r.clone())
                    .map(|r| (r.version, r.value))
            });
            match t.commit().await {
                Ok((seq, versions)) => {
                    let mut out = Applied {
                        seq,
                        freed: plan.freed,
                        ..Applied::default()
                    };
                    for (fid, v) in writes {
                        let Some(v) = v else { continue };
                        let ver = versions.get(&inode_key(fid)).copied().unwrap_or(0);
                        let i = Inode::decode(&v).map_err(|source| NsError::Corrupt {
                            key: inode_key(fid),
                            source,
                        })?;
                        if Some(fid) == plan.main {
                            out.inode = Some((fid, ver, i.clone()));
                        }
                        out.inodes.push((fid, ver, i));
                    }
                    if out.inode.is_none() {
                        if let (Some(fid), Some((ver, v))) = (plan.main, main_read) {
                            if !out.freed.contains(&fid) {
                                if let Ok(i) = Inode::decode(&v) {
                                    out.inode = Some((fid, ver, i));
                                }
                            }
                        }
                    }
                    return Ok(out);
                }
                // A stale hint: plan from the store at once.
                Err(RecordError::Conflict { .. }) if hinted => {}
                Err(RecordError::Conflict { .. }) => {
                    let ms = rand::random::<u64>() % (1 + attempt.min(20) as u64);
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(NsError::Busy(MAX_ATTEMPTS))
    }
}

/// Reads what `e` needs through `t`, checks it and records the writes.
async fn plan(t: &mut Txn, e: &CmlEntry) -> Result<Plan, NsError> {
    let mut p = Plan::default();
    match e {
        CmlEntry::Create {
            parent,
            name,
            fid,
            inode,
        } => {
            check_name(name)?;
            let mut dir = t.dir(*parent).await?;
            if t.entry(*parent, name).await?.is_some() {
                return Err(NsError::Exists);
            }
            if t.inode(*fid).await?.is_some() {
                return Err(NsError::Invalid("fid in use"));
            }
            dir.mtime = inode.ctime;
            dir.ctime = inode.ctime;
            if inode.kind == Kind::Dir {
                dir.nlink += 1;
            }
            t.put_inode(*parent, &dir);
            t.put_entry(
                *parent,
                name,
                Dirent {
                    fid: *fid,
                    kind: inode.kind,
                },
            );
            t.put_inode(*fid, inode);
            p.main = Some(*fid);
        }
        CmlEntry::Link {
            parent,
            name,
            fid,
            now,
        } => {
            check_name(name)?;
            let mut dir = t.dir(*parent).await?;
            let mut i = t.inode(*fid).await?.ok_or(NsError::NotFound)?;
            if i.kind == Kind::Dir {
                return Err(NsError::NotPermitted);
            }
            if t.entry(*parent, name).await?.is_some() {
                return Err(NsError::Exists);
            }
            i.nlink += 1;
            i.ctime = *now;
            dir.mtime = *now;
            dir.ctime = *now;
            t.put_inode(*parent, &dir);
            t.put_inode(*fid, &i);
            t.put_entry(
                *parent,
                name,
                Dirent {
                    fid: *fid,
                    kind: i.kind,
                },
            );
            p.main = Some(*fid);
        }
        CmlEntry::Remove {
            parent,
            name,
            dir: want_dir,
            now,
        } => {
            if name.len() > NAME_MAX {
                return Err(NsError::NameTooLong);
            }
            let mut dir = t.dir(*parent).await?;
            let d = t.entry(*parent, name).await?.ok_or(NsError::NotFound)?;
            if *want_dir && d.kind != Kind::Dir {
                return Err(NsError::NotDir);
            }
            if !*want_dir && d.kind == Kind::Dir {
                return Err(NsError::IsDir);
            }
            drop_name(t, &mut dir, d, *now, &mut p).await?;
            t.del_entry(*parent, name);
            dir.mtime = *now;
            dir.ctime = *now;
            t.put_inode(*parent, &dir);
            p.main = Some(d.fid);
        }
        CmlEntry::Rename {
            parent,
            name,
            new_parent,
            new_name,
            mode,
            now,
        } => {
            check_name(new_name)?;
            if name.len() > NAME_MAX {
                return Err(NsError::NameTooLong);
            }
            t.dir(*parent).await?;
            t.dir(*new_parent).await?;
            let s = t.entry(*parent, name).await?.ok_or(NsError::NotFound)?;
            p.main = Some(s.fid);
            if parent == new_parent && name == new_name {
                return Ok(p);
            }
            let d = t.entry(*new_parent, new_name).await?;
            match (mode, d) {
                (RenameMode::NoReplace, Some(_)) => return Err(NsError::Exists),
                (RenameMode::Exchange, None) => return Err(NsError::NotFound),
                (RenameMode::Exchange, Some(d)) => {
                    t.put_entry(*parent, name, d);
                    t.put_entry(*new_parent, new_name, s);
                    if parent != new_parent {
                        let sd = (s.kind == Kind::Dir) as i64 - (d.kind == Kind::Dir) as i64;
                        adjust_nlink(t, *parent, -sd).await?;
                        adjust_nlink(t, *new_parent, sd).await?;
                    }
                    touch_ctime(t, s.fid, *now).await?;
                    touch_ctime(t, d.fid, *now).await?;
                }
                (_, d) => {
                    if let Some(d) = d {
                        if d.fid == s.fid {
                            return Ok(p);
                        }
                        if s.kind == Kind::Dir && d.kind != Kind::Dir {
                            return Err(NsError::NotDir);
                        }
                        if s.kind != Kind::Dir && d.kind == Kind::Dir {
                            return Err(NsError::IsDir);
                        }
                        let mut np = t.dir(*new_parent).await?;
                        drop_name(t, &mut np, d, *now, &mut p).await?;
                        t.put_inode(*new_parent, &np);
                    }
                    t.del_entry(*parent, name);
                    t.put_entry(*new_parent, new_name, s);
                    if parent != new_parent && s.kind == Kind::Dir {
                        adjust_nlink(t, *parent, -1).await?;
                        adjust_nlink(t, *new_parent, 1).await?;
                    }
                    touch_ctime(t, s.fid, *now).await?;
                }
            }
            for dir in [*parent, *new_parent] {
                let mut i = t.dir(dir).await?;
                i.mtime = *now;
                i.ctime = *now;
                t.put_inode(dir, &i);
            }
        }
        CmlEntry::SetAttr { fid, set, now } => {
            let mut i = t.inode(*fid).await?.ok_or(NsError::NotFound)?;
            if let Some(m) = set.perm {
                i.perm = m & 0o7777;
            }
            if let Some(u) = set.uid {
                i.uid = u;
            }
            if let Some(g) = set.gid {
                i.gid = g;
            }
            if let Some(s) = set.size {
                if i.kind == Kind::Dir {
                    return Err(NsError::IsDir);
                }
                i.size = s;
            }
            if let Some(a) = set.atime {
                i.atime = a;
            }
            if let Some(m) = set.mtime {
                i.mtime = m;
            }
            i.ctime = set.ctime.unwrap_or(*now);
            t.put_inode(*fid, &i);
            p.main = Some(*fid);
        }
        CmlEntry::SetXattr {
            fid,
            name,
            value,
            mode,
            now,
        } => {
            if name.len() > XATTR_NAME_MAX {
                return Err(NsError::Range);
            }
            if name.is_empty() {
                return Err(NsError::Invalid("empty attribute name"));
            }
            if value.len() > XATTR_VALUE_MAX {
                return Err(NsError::TooBig);
            }
            let mut i = t.inode(*fid).await?.ok_or(NsError::NotFound)?;
            let present = i.xattrs.contains_key(name);
            match mode {
                XattrMode::Create if present => return Err(NsError::Exists),
                XattrMode::Replace if !present => return Err(NsError::NoData),
                _ => {}
            }
            i.xattrs.insert(name.clone(), value.clone());
            let total: usize = i.xattrs.iter().map(|(k, v)| k.len() + v.len()).sum();
            if total > XATTR_TOTAL_MAX {
                return Err(NsError::NoSpace);
            }
            i.ctime = *now;
            t.put_inode(*fid, &i);
            p.main = Some(*fid);
        }
        CmlEntry::RemoveXattr { fid, name, now } => {
            let mut i = t.inode(*fid).await?.ok_or(NsError::NotFound)?;
            if i.xattrs.remove(name).is_none() {
                return Err(NsError::NoData);
            }
            i.ctime = *now;
            t.put_inode(*fid, &i);
            p.main = Some(*fid);
        }
        CmlEntry::Store { fid, size, mtime } => {
            let mut i = t.inode(*fid).await?.ok_or(NsError::NotFound)?;
            if i.kind != Kind::File {
                return Err(NsError::Invalid("data store on a non-file"));
            }
            i.size = *size;
            i.mtime = *mtime;
            i.ctime = (*mtime).max(i.ctime);
            t.put_inode(*fid, &i);
            p.main = Some(*fid);
        }
    }
    Ok(p)
}

/// Drops one name of `d` (whose directory's inode is `dir`, written by
/// the caller): a directory must be empty and goes, a file loses a link
/// and goes with its last.
async fn drop_name(
    t: &mut Txn,
    dir: &mut Inode,
    d: Dirent,
    now: Timespec,
    p: &mut Plan,
) -> Result<(), NsError> {
    let Some(mut i) = t.inode(d.fid).await? else {
        // A name without an inode (should not happen): drop the name only.
        return Ok(());
    };
    if i.kind == Kind::Dir {
        if !t.is_empty(d.fid).await? {
            return Err(NsError::NotEmpty);
        }
        dir.nlink = dir.nlink.saturating_sub(1);
        t.del_inode(d.fid);
        p.freed.push(d.fid);
    } else {
        i.nlink = i.nlink.saturating_sub(1);
        if i.nlink == 0 {
            t.del_inode(d.fid);
            p.freed.push(d.fid);
        } else {
            i.ctime = now;
            t.put_inode(d.fid, &i);
        }
    }
    Ok(())
}

async fn adjust_nlink(t: &mut Txn, dir: Fid, by: i64) -> Result<(), NsError> {
    if by == 0 {
        return Ok(());
    }
    let mut i = t.dir(dir).await?;
    i.nlink = (i.nlink as i64 + by).max(0) as u32;
    t.put_inode(dir, &i);
    Ok(())
}

async fn touch_ctime(t: &mut Txn, fid: Fid, now: Timespec) -> Result<(), NsError> {
    if let Some(mut i) = t.inode(fid).await? {
        i.ctime = now;
        t.put_inode(fid, &i);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
