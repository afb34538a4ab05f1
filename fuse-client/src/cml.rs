//! The client modification log (CML): every change the file system makes
//! to the namespace is one [`CmlEntry`], appended to the log and then
//! applied to the volume's records by [`crate::Namespace::apply`].
//!
//! In this stage the log drains at once (write-through): an entry is
//! applied before the FUSE call that made it returns, and removed once
//! applied. Entries carry everything needed to apply them later (times
//! are taken when the entry is made, fids are picked by the client), so
//! write-back and disconnected operation can keep them and replay them on
//! the same path. The log is kept in memory; persisting it in the client's
//! own RVM comes with disconnected operation.

use std::collections::BTreeMap;
use std::sync::Mutex;

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

/// The log: entries not yet applied, in order.
#[derive(Debug, Default)]
pub struct Cml {
    inner: Mutex<CmlInner>,
}

#[derive(Debug, Default)]
struct CmlInner {
    next: u64,
    pending: BTreeMap<u64, CmlEntry>,
    applied: u64,
}

impl Cml {
    pub fn new() -> Cml {
        Cml::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CmlInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an entry; returns its log sequence number.
    pub fn append(&self, e: CmlEntry) -> u64 {
        let mut g = self.lock();
        g.next += 1;
        let n = g.next;
        g.pending.insert(n, e);
        n
    }

    /// Drops entry `n` from the log: it was applied, or it failed and the
    /// caller got the error (write-through never keeps a failed entry).
    pub fn done(&self, n: u64, applied: bool) {
        let mut g = self.lock();
        g.pending.remove(&n);
        if applied {
            g.applied += 1;
        }
    }

    /// Entries still in the log.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Entries applied since the log was made.
    pub fn applied(&self) -> u64 {
        self.lock().applied
    }
}
