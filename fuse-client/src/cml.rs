//! The client modification log (CML): every change the file system makes
//! to the namespace is one [`CmlEntry`], appended to the log and then
//! applied to the volume's records by [`crate::Namespace::apply`].
//!
//! In this stage the log drains at once (write-through): an entry is
//! applied before the FUSE call that made it returns, and removed once
//! applied. Entries carry everything needed to apply them later (times
//! are taken when the entry is made, fids are picked by the client), so
//! write-back and disconnected operation can keep them and replay them on
//! the same path.
//!
//! With a cache directory the log lives in the client's own RVM segment
//! (`DIR/cml/`), a [`PMap`] in root slot [`CML_ROOT`] from the entry's
//! sequence number (8 bytes big-endian) to its encoding below. Entries are
//! committed `NoFlush` (durable within the RVM's flush delay): an entry a
//! crash interrupted is found at the next mount and applied again
//! ([`crate::Namespace::replay`]); the guards make that safe (a create
//! already applied finds its name taken, a rename its source gone).
//!
//! # Entry encoding, version 1 (little-endian)
//!
//! ```text
//! 0  u8  format version (1)
//! 1  u8  tag: 1 Create, 2 Link, 3 Remove, 4 Rename, 5 SetAttr,
//!            6 SetXattr, 7 RemoveXattr, 8 Store
//! 2  ..  fields in declaration order:
//!        fid   = volume u32, vnode u32, unique u32
//!        bytes = u32 length, bytes (names, values, the inode record)
//!        time  = seconds i64, nanoseconds u32
//!        Create: parent fid, name, fid, inode (its record, inode.rs)
//!        Link: parent fid, name, fid, now
//!        Remove: parent fid, name, dir u8, now
//!        Rename: parent fid, name, new parent fid, new name,
//!                mode u8 (0 replace, 1 noreplace, 2 exchange), now
//!        SetAttr: fid, present u8 (bit 0 perm, 1 uid, 2 gid, 3 size,
//!                 4 atime, 5 mtime, 6 ctime), then the present fields
//!                 (perm u16, uid u32, gid u32, size u64, times), now
//!        SetXattr: fid, name, value, mode u8 (0 any, 1 create,
//!                  2 replace), now
//!        RemoveXattr: fid, name, now
//!        Store: fid, size u64, mtime
//! ```
//!
//! [`PMap`]: storage::rvm::map::PMap

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use storage::rvm::map::PMap;
use storage::rvm::{CommitMode, Rvm, RvmOptions};

use volume::Fid;

use crate::inode::{Inode, Timespec};

/// Which attributes a [`CmlEntry::SetAttr`] changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timespec>,
    pub mtime: Option<Timespec>,
    /// ctime to set; when `None` the change sets ctime to `now`.
    pub ctime: Option<Timespec>,
}

/// How a rename treats an existing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace the target if there is one (POSIX rename).
    Replace,
    /// Fail with EEXIST if the target exists (RENAME_NOREPLACE).
    NoReplace,
    /// Swap source and target, which must both exist (RENAME_EXCHANGE).
    Exchange,
}

/// How a setxattr treats an existing attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrMode {
    Any,
    /// XATTR_CREATE: fail with EEXIST if present.
    Create,
    /// XATTR_REPLACE: fail with ENODATA if absent.
    Replace,
}

/// One namespace mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmlEntry {
    /// A new inode (file, directory, symlink, device node...) named `name`
    /// in `parent`.
    Create {
        parent: Fid,
        name: Vec<u8>,
        fid: Fid,
        inode: Inode,
    },
    /// A new name for an existing non-directory.
    Link {
        parent: Fid,
        name: Vec<u8>,
        fid: Fid,
        now: Timespec,
    },
    /// Removes a name; `dir` says rmdir (the target must be an empty
    /// directory) rather than unlink (it must not be a directory).
    Remove {
        parent: Fid,
        name: Vec<u8>,
        dir: bool,
        now: Timespec,
    },
    Rename {
        parent: Fid,
        name: Vec<u8>,
        new_parent: Fid,
        new_name: Vec<u8>,
        mode: RenameMode,
        now: Timespec,
    },
    SetAttr {
        fid: Fid,
        set: SetAttr,
        now: Timespec,
    },
    SetXattr {
        fid: Fid,
        name: Vec<u8>,
        value: Vec<u8>,
        mode: XattrMode,
        now: Timespec,
    },
    RemoveXattr {
        fid: Fid,
        name: Vec<u8>,
        now: Timespec,
    },
    /// What writes to a file's data did: its new size and mtime (on flush,
    /// fsync or close).
    Store {
        fid: Fid,
        size: u64,
        mtime: Timespec,
    },
}

/// Root slot of the log's map in the client's RVM segment.
pub const CML_ROOT: u32 = 1;
/// Format version of encoded entries.
pub const CML_VERSION: u8 = 1;

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CmlError {
    #[error("client log: {0}")]
    Rvm(#[from] storage::rvm::RvmError),
    #[error("client log entry {seq}: {reason}")]
    Format { seq: u64, reason: String },
}

fn put_fid(b: &mut Vec<u8>, f: Fid) {
    b.extend_from_slice(&f.volume.to_le_bytes());
    b.extend_from_slice(&f.vnode.to_le_bytes());
    b.extend_from_slice(&f.unique.to_le_bytes());
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    b.extend_from_slice(&(v.len() as u32).to_le_bytes());
    b.extend_from_slice(v);
}

fn put_time(b: &mut Vec<u8>, t: Timespec) {
    b.extend_from_slice(&t.sec.to_le_bytes());
    b.extend_from_slice(&t.nsec.to_le_bytes());
}

struct Dec<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| format!("short at byte {}", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn fid(&mut self) -> Result<Fid, String> {
        Ok(Fid {
            volume: self.u32()?,
            vnode: self.u32()?,
            unique: self.u32()?,
        })
    }
    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn time(&mut self) -> Result<Timespec, String> {
        Ok(Timespec {
            sec: self.u64()? as i64,
            nsec: self.u32()?,
        })
    }
}

impl CmlEntry {
    /// The entry's bytes (format in the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![CML_VERSION];
        match self {
            CmlEntry::Create {
                parent,
                name,
                fid,
                inode,
            } => {
                b.push(1);
                put_fid(&mut b, *parent);
                put_bytes(&mut b, name);
                put_fid(&mut b, *fid);
                put_bytes(&mut b, &inode.encode());
            }
            CmlEntry::Link {
                parent,
                name,
                fid,
                now,
            } => {
                b.push(2);
                put_fid(&mut b, *parent);
                put_bytes(&mut b, name);
                put_fid(&mut b, *fid);
                put_time(&mut b, *now);
            }
            CmlEntry::Remove {
                parent,
                name,
                dir,
                now,
            } => {
                b.push(3);
                put_fid(&mut b, *parent);
                put_bytes(&mut b, name);
                b.push(*dir as u8);
                put_time(&mut b, *now);
            }
            CmlEntry::Rename {
                parent,
                name,
                new_parent,
                new_name,
                mode,
                now,
            } => {
                b.push(4);
                put_fid(&mut b, *parent);
                put_bytes(&mut b, name);
                put_fid(&mut b, *new_parent);
                put_bytes(&mut b, new_name);
                b.push(match mode {
                    RenameMode::Replace => 0,
                    RenameMode::NoReplace => 1,
                    RenameMode::Exchange => 2,
                });
                put_time(&mut b, *now);
            }
            CmlEntry::SetAttr { fid, set, now } => {
                b.push(5);
                put_fid(&mut b, *fid);
                let present = set.perm.is_some() as u8
                    | (set.uid.is_some() as u8) << 1
                    | (set.gid.is_some() as u8) << 2
                    | (set.size.is_some() as u8) << 3
                    | (set.atime.is_some() as u8) << 4
                    | (set.mtime.is_some() as u8) << 5
                    | (set.ctime.is_some() as u8) << 6;
                b.push(present);
                if let Some(p) = set.perm {
                    b.extend_from_slice(&p.to_le_bytes());
                }
                if let Some(u) = set.uid {
                    b.extend_from_slice(&u.to_le_bytes());
                }
                if let Some(g) = set.gid {
                    b.extend_from_slice(&g.to_le_bytes());
                }
                if let Some(s) = set.size {
                    b.extend_from_slice(&s.to_le_bytes());
                }
                for t in [set.atime, set.mtime, set.ctime].into_iter().flatten() {
                    put_time(&mut b, t);
                }
                put_time(&mut b, *now);
            }
            CmlEntry::SetXattr {
                fid,
                name,
                value,
                mode,
                now,
            } => {
                b.push(6);
                put_fid(&mut b, *fid);
                put_bytes(&mut b, name);
                put_bytes(&mut b, value);
                b.push(match mode {
                    XattrMode::Any => 0,
                    XattrMode::Create => 1,
                    XattrMode::Replace => 2,
                });
                put_time(&mut b, *now);
            }
            CmlEntry::RemoveXattr { fid, name, now } => {
                b.push(7);
                put_fid(&mut b, *fid);
                put_bytes(&mut b, name);
                put_time(&mut b, *now);
            }
            CmlEntry::Store { fid, size, mtime } => {
                b.push(8);
                put_fid(&mut b, *fid);
                b.extend_from_slice(&size.to_le_bytes());
                put_time(&mut b, *mtime);
            }
        }
        b
    }

    /// Decodes an entry (syntax only).
    pub fn decode(b: &[u8]) -> Result<CmlEntry, String> {
        let mut d = Dec { b, at: 0 };
        let v = d.u8()?;
        if v != CML_VERSION {
            return Err(format!("unknown format version {v}"));
        }
        let tag = d.u8()?;
        let e = match tag {
            1 => CmlEntry::Create {
                parent: d.fid()?,
                name: d.bytes()?,
                fid: d.fid()?,
                inode: Inode::decode(&d.bytes()?).map_err(|e| e.to_string())?,
            },
            2 => CmlEntry::Link {
                parent: d.fid()?,
                name: d.bytes()?,
                fid: d.fid()?,
                now: d.time()?,
            },
            3 => CmlEntry::Remove {
                parent: d.fid()?,
                name: d.bytes()?,
                dir: d.u8()? != 0,
                now: d.time()?,
            },
            4 => CmlEntry::Rename {
                parent: d.fid()?,
                name: d.bytes()?,
                new_parent: d.fid()?,
                new_name: d.bytes()?,
                mode: match d.u8()? {
                    0 => RenameMode::Replace,
                    1 => RenameMode::NoReplace,
                    2 => RenameMode::Exchange,
                    m => return Err(format!("unknown rename mode {m}")),
                },
                now: d.time()?,
            },
            5 => {
                let fid = d.fid()?;
                let p = d.u8()?;
                if p & 0x80 != 0 {
                    return Err("reserved setattr bit".into());
                }
                let mut set = SetAttr::default();
                if p & 1 != 0 {
                    set.perm = Some(d.u16()?);
                }
                if p & 2 != 0 {
                    set.uid = Some(d.u32()?);
                }
                if p & 4 != 0 {
                    set.gid = Some(d.u32()?);
                }
                if p & 8 != 0 {
                    set.size = Some(d.u64()?);
                }
                if p & 16 != 0 {
                    set.atime = Some(d.time()?);
                }
                if p & 32 != 0 {
                    set.mtime = Some(d.time()?);
                }
                if p & 64 != 0 {
                    set.ctime = Some(d.time()?);
                }
                CmlEntry::SetAttr {
                    fid,
                    set,
                    now: d.time()?,
                }
            }
            6 => CmlEntry::SetXattr {
                fid: d.fid()?,
                name: d.bytes()?,
                value: d.bytes()?,
                mode: match d.u8()? {
                    0 => XattrMode::Any,
                    1 => XattrMode::Create,
                    2 => XattrMode::Replace,
                    m => return Err(format!("unknown xattr mode {m}")),
                },
                now: d.time()?,
            },
            7 => CmlEntry::RemoveXattr {
                fid: d.fid()?,
                name: d.bytes()?,
                now: d.time()?,
            },
            8 => CmlEntry::Store {
                fid: d.fid()?,
                size: d.u64()?,
                mtime: d.time()?,
            },
            t => return Err(format!("unknown entry tag {t}")),
        };
        if d.at != b.len() {
            return Err(format!("{} trailing bytes", b.len() - d.at));
        }
        Ok(e)
    }
}

/// The log's home in the client's RVM.
struct Persist {
    rvm: Rvm,
    map: PMap,
}

/// The log: entries not yet applied, in order.
#[derive(Default)]
pub struct Cml {
    inner: Mutex<CmlInner>,
}

impl std::fmt::Debug for Cml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("Cml")
            .field("pending", &g.pending.len())
            .field("persistent", &g.persist.is_some())
            .finish()
    }
}

#[derive(Default)]
struct CmlInner {
    next: u64,
    pending: BTreeMap<u64, CmlEntry>,
    applied: u64,
    persist: Option<Persist>,
}

impl Cml {
    /// A log in memory only.
    pub fn new() -> Cml {
        Cml::default()
    }

    /// A log kept in the RVM segment under `dir` (made if missing), with
    /// the entries a crash left in it.
    pub fn open(dir: &Path) -> Result<Cml, CmlError> {
        let opts = RvmOptions {
            segment_size: 16 << 20,
            log_size: 4 << 20,
            ..RvmOptions::default()
        };
        let rvm = if dir.join("rvm.seg").exists() {
            Rvm::open(dir, &opts)?
        } else {
            std::fs::create_dir_all(dir).map_err(|e| CmlError::Format {
                seq: 0,
                reason: format!("cannot make {}: {e}", dir.display()),
            })?;
            Rvm::create(dir, &opts)?
        };
        let map = PMap::open_or_create(&rvm, CML_ROOT)?;
        let mut pending = BTreeMap::new();
        for kv in map.iter(&rvm) {
            let (k, v) = kv?;
            let seq = k
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| CmlError::Format {
                    seq: 0,
                    reason: format!("key of {} bytes", k.len()),
                })?;
            let e = CmlEntry::decode(&v).map_err(|reason| CmlError::Format { seq, reason })?;
            pending.insert(seq, e);
        }
        Ok(Cml {
            inner: Mutex::new(CmlInner {
                next: pending.keys().next_back().copied().unwrap_or(0),
                pending,
                applied: 0,
                persist: Some(Persist { rvm, map }),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CmlInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an entry; returns its log sequence number.
    pub fn append(&self, e: CmlEntry) -> Result<u64, CmlError> {
        let mut g = self.lock();
        let n = g.next + 1;
        if let Some(p) = &g.persist {
            let mut tx = p.rvm.begin();
            p.map.insert(&mut tx, &n.to_be_bytes(), &e.encode())?;
            tx.commit(CommitMode::NoFlush)?;
        }
        g.next = n;
        g.pending.insert(n, e);
        Ok(n)
    }

    /// Drops entry `n` from the log: it was applied, or it failed and the
    /// caller got the error (write-through never keeps a failed entry).
    pub fn done(&self, n: u64, applied: bool) {
        let mut g = self.lock();
        g.pending.remove(&n);
        if applied {
            g.applied += 1;
        }
        if let Some(p) = &g.persist {
            let mut tx = p.rvm.begin();
            let r = p
                .map
                .remove(&mut tx, &n.to_be_bytes())
                .and_then(|_| tx.commit(CommitMode::NoFlush));
            if let Err(e) = r {
                tracing::warn!(entry = n, error = %e, "cannot drop an applied entry from the client log");
            }
        }
    }

    /// Entries still in the log, oldest first.
    pub fn pending_entries(&self) -> Vec<(u64, CmlEntry)> {
        self.lock()
            .pending
            .iter()
            .map(|(n, e)| (*n, e.clone()))
            .collect()
    }

    /// Entries still in the log.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Entries applied since the log was made.
    pub fn applied(&self) -> u64 {
        self.lock().applied
    }

    /// Makes every entry appended so far durable.
    pub fn flush(&self) -> Result<(), CmlError> {
        if let Some(p) = &self.lock().persist {
            p.rvm.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: u32) -> Fid {
        Fid {
            volume: 1,
            vnode: n,
            unique: 9,
        }
    }

    fn all() -> Vec<CmlEntry> {
        let t = Timespec { sec: -3, nsec: 7 };
        let mut inode = Inode::new(crate::inode::Kind::File, 0o644, 1, 2, t);
        inode.xattrs.insert(b"user.a".to_vec(), b"b".to_vec());
        vec![
            CmlEntry::Create {
                parent: f(1),
                name: b"n".to_vec(),
                fid: f(2),
                inode,
            },
            CmlEntry::Link {
                parent: f(1),
                name: b"l".to_vec(),
                fid: f(2),
                now: t,
            },
            CmlEntry::Remove {
                parent: f(1),
                name: b"r".to_vec(),
                dir: true,
                now: t,
            },
            CmlEntry::Rename {
                parent: f(1),
                name: b"a".to_vec(),
                new_parent: f(3),
                new_name: b"b".to_vec(),
                mode: RenameMode::Exchange,
                now: t,
            },
            CmlEntry::SetAttr {
                fid: f(2),
                set: SetAttr {
                    perm: Some(0o4755),
                    size: Some(77),
                    mtime: Some(t),
                    ..SetAttr::default()
                },
                now: t,
            },
            CmlEntry::SetXattr {
                fid: f(2),
                name: b"user.x".to_vec(),
                value: vec![0; 300],
                mode: XattrMode::Replace,
                now: t,
            },
            CmlEntry::RemoveXattr {
                fid: f(2),
                name: b"user.x".to_vec(),
                now: t,
            },
            CmlEntry::Store {
                fid: f(2),
                size: 1 << 33,
                mtime: t,
            },
        ]
    }

    #[test]
    fn entries_round_trip_and_bad_bytes_are_refused() {
        for e in all() {
            let b = e.encode();
            assert_eq!(CmlEntry::decode(&b).unwrap(), e);
            assert!(CmlEntry::decode(&b[..b.len() - 1]).is_err());
            let mut x = b.clone();
            x.push(0);
            assert!(CmlEntry::decode(&x).is_err());
            x = b.clone();
            x[0] = 2;
            assert!(CmlEntry::decode(&x).is_err());
        }
        assert!(CmlEntry::decode(&[1, 99]).is_err());
    }

    #[test]
    fn log_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("stretto-cml-{}", rand::random::<u64>()));
        {
            let c = Cml::open(&dir).unwrap();
            let mut ns = Vec::new();
            for e in all() {
                ns.push(c.append(e).unwrap());
            }
            c.done(ns[0], true);
            c.done(ns[3], false);
            c.flush().unwrap();
        }
        let c = Cml::open(&dir).unwrap();
        let want: Vec<_> = all()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i != 0 && *i != 3)
            .map(|(_, e)| e)
            .collect();
        let got: Vec<_> = c.pending_entries().into_iter().map(|(_, e)| e).collect();
        assert_eq!(got, want);
        let n = c.append(all()[0].clone()).unwrap();
        assert_eq!(n, all().len() as u64 + 1);
        drop(c);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
