//! The namespace against the in-memory record store.

use std::sync::Arc;

use volume::records::{Expect, MemRecords, RecordOp, RecordStore};

use super::*;
use crate::cml::SetAttr;

fn ns() -> (Arc<MemRecords>, Namespace) {
    let m = Arc::new(MemRecords::new());
    let n = Namespace::over(7, m.clone());
    (m, n)
}

fn t(s: i64) -> Timespec {
    Timespec { sec: s, nsec: 5 }
}

async fn create(n: &Namespace, parent: Fid, name: &str, kind: Kind) -> Result<Fid, NsError> {
    let fid = n.new_fid();
    let inode = Inode::new(kind, 0o644, 1, 2, t(10));
    n.apply(CmlEntry::Create {
        parent,
        name: name.as_bytes().to_vec(),
        fid,
        inode,
    })
    .await?;
    Ok(fid)
}

async fn inode(n: &Namespace, f: Fid) -> Inode {
    n.inode(f).await.unwrap().expect("inode").1
}

#[tokio::test]
async fn create_lookup_list_and_errors() {
    let (_, n) = ns();
    n.ensure_root(0o755, 0, 0).await.unwrap();
    n.ensure_root(0o700, 0, 0).await.unwrap();
    let root = n.root();
    assert_eq!(inode(&n, root).await.perm, 0o755);
    let a = create(&n, root, "a", Kind::File).await.unwrap();
    let d = create(&n, root, "d", Kind::Dir).await.unwrap();
    assert!(matches!(
        create(&n, root, "a", Kind::File).await,
        Err(NsError::Exists)
    ));
    assert!(matches!(
        create(&n, a, "x", Kind::File).await,
        Err(NsError::NotDir)
    ));
    assert!(matches!(
        create(&n, root, &"n".repeat(256), Kind::File).await,
        Err(NsError::NameTooLong)
    ));
    let r = inode(&n, root).await;
    assert_eq!((r.nlink, r.mtime), (3, t(10)));
    assert_eq!(n.lookup(root, b"a").await.unwrap().unwrap().fid, a);
    assert_eq!(n.lookup(root, b"zz").await.unwrap(), None);
    let l = n.list(root, b"", 10).await.unwrap();
    let names: Vec<_> = l.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(names, vec![b"a".to_vec(), b"d".to_vec()]);
    assert_eq!(n.list(root, b"a", 10).await.unwrap()[0].1.fid, d);
    assert_eq!(n.cml().pending(), 0);
    assert_eq!(n.cml().applied(), 2);
}

#[tokio::test]
async fn links_unlink_rmdir() {
    let (_, n) = ns();
    n.ensure_root(0o755, 0, 0).await.unwrap();
    let root = n.root();
    let a = create(&n, root, "a", Kind::File).await.unwrap();
    let d = create(&n, root, "d", Kind::Dir).await.unwrap();
    create(&n, d, "inner", Kind::File).await.unwrap();
    n.apply(CmlEntry::Link {
        parent: d,
        name: b"b".to_vec(),
        fid: a,
        now: t(20),
    })
    .await
    .unwrap();
    assert_eq!(inode(&n, a).await.nlink, 2);
    let e = n
        .apply(CmlEntry::Link {
            parent: root,
            name: b"dd".to_vec(),
            fid: d,
            now: t(20),
        })
        .await;
    assert!(matches!(e, Err(NsError::NotPermitted)));
    let rm = |name: &str, dir: bool| CmlEntry::Remove {
        parent: root,
        name: name.as_bytes().to_vec(),
        dir,
        now: t(30),
    };
    assert!(matches!(
        n.apply(rm("d", true)).await,
        Err(NsError::NotEmpty)
    ));
    assert!(matches!(n.apply(rm("d", false)).await, Err(NsError::IsDir)));
    assert!(matches!(n.apply(rm("a", true)).await, Err(NsError::NotDir)));
    assert!(matches!(
        n.apply(rm("zz", false)).await,
        Err(NsError::NotFound)
    ));
    let r = n.apply(rm("a", false)).await.unwrap();
    assert!(r.freed.is_empty());
    let i = inode(&n, a).await;
    assert_eq!((i.nlink, i.ctime), (1, t(30)));
    for name in ["inner", "b"] {
        n.apply(CmlEntry::Remove {
            parent: d,
            name: name.as_bytes().to_vec(),
            dir: false,
            now: t(40),
        })
        .await
        .unwrap();
    }
    assert!(n.inode(a).await.unwrap().is_none());
    let r = n.apply(rm("d", true)).await.unwrap();
    assert_eq!(r.freed, vec![d]);
    assert_eq!(inode(&n, root).await.nlink, 2);
    assert!(n.list(root, b"", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn rename_modes() {
    let (_, n) = ns();
    n.ensure_root(0o755, 0, 0).await.unwrap();
    let root = n.root();
    let a = create(&n, root, "a", Kind::File).await.unwrap();
    let b = create(&n, root, "b", Kind::File).await.unwrap();
    let d = create(&n, root, "d", Kind::Dir).await.unwrap();
    let e = create(&n, root, "e", Kind::Dir).await.unwrap();
    let mv = |p: Fid, s: &str, q: Fid, dst: &str, mode| CmlEntry::Rename {
        parent: p,
        name: s.as_bytes().to_vec(),
        new_parent: q,
        new_name: dst.as_bytes().to_vec(),
        mode,
        now: t(50),
    };
    assert!(matches!(
        n.apply(mv(root, "a", root, "b", RenameMode::NoReplace))
            .await,
        Err(NsError::Exists)
    ));
    assert!(matches!(
        n.apply(mv(root, "a", root, "zz", RenameMode::Exchange))
            .await,
        Err(NsError::NotFound)
    ));
    assert!(matches!(
        n.apply(mv(root, "a", root, "d", RenameMode::Replace)).await,
        Err(NsError::IsDir)
    ));
    assert!(matches!(
        n.apply(mv(root, "d", root, "a", RenameMode::Replace)).await,
        Err(NsError::NotDir)
    ));
    // Replace a file: b's inode goes.
    let r = n
        .apply(mv(root, "a", root, "b", RenameMode::Replace))
        .await
        .unwrap();
    assert_eq!(r.freed, vec![b]);
    assert_eq!(n.lookup(root, b"b").await.unwrap().unwrap().fid, a);
    assert_eq!(n.lookup(root, b"a").await.unwrap(), None);
    // Move a directory into another: link counts follow.
    n.apply(mv(root, "d", e, "d2", RenameMode::Replace))
        .await
        .unwrap();
    assert_eq!(inode(&n, root).await.nlink, 3);
    assert_eq!(inode(&n, e).await.nlink, 3);
    // Exchange a file and a directory across directories.
    n.apply(mv(root, "b", e, "d2", RenameMode::Exchange))
        .await
        .unwrap();
    assert_eq!(n.lookup(root, b"b").await.unwrap().unwrap().fid, d);
    assert_eq!(n.lookup(e, b"d2").await.unwrap().unwrap().fid, a);
    assert_eq!(inode(&n, root).await.nlink, 4);
    assert_eq!(inode(&n, e).await.nlink, 2);
    assert_eq!(inode(&n, a).await.ctime, t(50));
    // Replacing an empty directory with a directory.
    let f = create(&n, root, "f", Kind::Dir).await.unwrap();
    let r = n
        .apply(mv(root, "b", root, "f", RenameMode::Replace))
        .await
        .unwrap();
    assert_eq!(r.freed, vec![f]);
    // root: e and the moved d (the replaced f is gone).
    assert_eq!(inode(&n, root).await.nlink, 4);
}

#[tokio::test]
async fn setattr_xattrs_and_store() {
    let (_, n) = ns();
    n.ensure_root(0o755, 0, 0).await.unwrap();
    let a = create(&n, n.root(), "a", Kind::File).await.unwrap();
    let r = n
        .apply(CmlEntry::SetAttr {
            fid: a,
            set: SetAttr {
                perm: Some(0o4700),
                uid: Some(9),
                size: Some(100),
                mtime: Some(t(3)),
                ..SetAttr::default()
            },
            now: t(60),
        })
        .await
        .unwrap();
    let (_, ver, i) = r.inode.expect("inode");
    assert_eq!(ver, 2);
    assert_eq!(
        (i.perm, i.uid, i.gid, i.size, i.mtime, i.ctime),
        (0o4700, 9, 2, 100, t(3), t(60))
    );
    let set = |mode| CmlEntry::SetXattr {
        fid: a,
        name: b"user.k".to_vec(),
        value: b"v".to_vec(),
        mode,
        now: t(70),
    };
    assert!(matches!(
        n.apply(set(XattrMode::Replace)).await,
        Err(NsError::NoData)
    ));
    n.apply(set(XattrMode::Create)).await.unwrap();
    assert!(matches!(
        n.apply(set(XattrMode::Create)).await,
        Err(NsError::Exists)
    ));
    assert_eq!(
        inode(&n, a).await.xattrs[&b"user.k".to_vec()],
        b"v".to_vec()
    );
    n.apply(CmlEntry::RemoveXattr {
        fid: a,
        name: b"user.k".to_vec(),
        now: t(71),
    })
    .await
    .unwrap();
    assert!(inode(&n, a).await.xattrs.is_empty());
    n.apply(CmlEntry::Store {
        fid: a,
        size: 4096,
        mtime: t(80),
    })
    .await
    .unwrap();
    let i = inode(&n, a).await;
    assert_eq!((i.size, i.mtime, i.ctime), (4096, t(80), t(80)));
}

/// A commit by someone else between planning and committing makes the
/// first commit fail as a whole; the entry is planned again and applies.
#[tokio::test]
async fn conflicting_writers_retry_and_both_land() {
    let (m, n) = ns();
    n.ensure_root(0o755, 0, 0).await.unwrap();
    let n = Arc::new(n);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let n = n.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                create(&n, n.root(), &format!("f{w}-{i}"), Kind::File)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(n.list(n.root(), b"", 1000).await.unwrap().len(), 100);
    // A stale guard written by hand is refused whole.
    let root_key = inode_key(n.root());
    let v = m.get(&root_key).await.unwrap().unwrap().version;
    let e = m
        .commit(vec![RecordOp {
            key: root_key,
            expect: Expect::Version(v - 1),
            value: None,
        }])
        .await;
    assert!(e.is_err());
}

/// A store that counts the `get`s and commits that reach it.
struct Counting {
    inner: Arc<MemRecords>,
    gets: std::sync::atomic::AtomicUsize,
    commits: std::sync::atomic::AtomicUsize,
}

impl RecordStore for Counting {
    fn get<'a>(
        &'a self,
        key: &'a [u8],
    ) -> transport::BoxFuture<'a, Result<Option<Record>, RecordError>> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.get(key)
    }
    fn list<'a>(
        &'a self,
        prefix: &'a [u8],
        after: &'a [u8],
        limit: usize,
    ) -> transport::BoxFuture<'a, Result<volume::records::Listing, RecordError>> {
        self.inner.list(prefix, after, limit)
    }
    fn commit(&self, ops: Vec<RecordOp>) -> transport::BoxFuture<'_, Result<u64, RecordError>> {
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.commit(ops)
    }
    fn changes(
        &self,
        since: u64,
        limit: usize,
        wait_ms: u32,
    ) -> transport::BoxFuture<'_, Result<(Vec<volume::records::Change>, u64), RecordError>> {
        self.inner.changes(since, limit, wait_ms)
    }
}

async fn hint(n: &Namespace, fid: Fid) -> (Vec<u8>, Option<Record>) {
    let key = inode_key(fid);
    let r = n.store().get(&key).await.expect("get");
    (key, r)
}

#[tokio::test]
async fn hinted_applies_skip_reads_and_fall_back_when_stale() {
    let m = Arc::new(MemRecords::new());
    let c = Arc::new(Counting {
        inner: m.clone(),
        gets: Default::default(),
        commits: Default::default(),
    });
    let n = Namespace::over(7, c.clone());
    n.ensure_root(0o755, 0, 0).await.unwrap();
    let root = n.root();
    let gets = || c.gets.load(std::sync::atomic::Ordering::SeqCst);
    let commits = || c.commits.load(std::sync::atomic::Ordering::SeqCst);
    let mk = |name: &str, fid: Fid| CmlEntry::Create {
        parent: root,
        name: name.as_bytes().to_vec(),
        fid,
        inode: Inode::new(Kind::File, 0o644, 1, 2, t(20)),
    };

    // Exact hints: one commit, no read.
    let a = n.new_fid();
    let mut h = Hints::new();
    h.extend([hint(&n, root).await]);
    h.insert(entry_key(root, b"a"), None);
    h.insert(inode_key(a), None);
    let (g0, c0) = (gets(), commits());
    let out = n.apply_hinted(mk("a", a), h.clone()).await.unwrap();
    assert_eq!((gets() - g0, commits() - c0), (0, 1));
    assert_eq!(out.inode.as_ref().map(|(f, _, _)| *f), Some(a));
    assert_eq!(n.lookup(root, b"a").await.unwrap().unwrap().fid, a);

    // The same hints are stale now (the root's version moved): the commit
    // fails its guard, the entry is planned from the store and lands.
    let b = n.new_fid();
    let mut stale = h.clone();
    stale.remove(&inode_key(a));
    stale.remove(&entry_key(root, b"a"));
    stale.insert(entry_key(root, b"b"), None);
    stale.insert(inode_key(b), None);
    let (g0, c0) = (gets(), commits());
    n.apply_hinted(mk("b", b), stale).await.unwrap();
    assert!(gets() > g0, "a stale hint must send the plan to the store");
    assert_eq!(commits() - c0, 2);
    let r = inode(&n, root).await;
    assert_eq!(n.list(root, b"", 10).await.unwrap().len(), 2);
    assert_eq!(r.mtime, t(20));

    // A name presumed absent that exists: still EEXIST, decided from the
    // store, and nothing changed.
    let x = n.new_fid();
    let mut wrong = Hints::new();
    wrong.extend([hint(&n, root).await]);
    wrong.insert(entry_key(root, b"a"), None);
    wrong.insert(inode_key(x), None);
    assert!(matches!(
        n.apply_hinted(mk("a", x), wrong).await,
        Err(NsError::Exists)
    ));
    assert_eq!(n.lookup(root, b"a").await.unwrap().unwrap().fid, a);
    assert!(n.inode(x).await.unwrap().is_none());

    // A hint that would decide an error on its own (a stale inode saying
    // "not a file") is checked against the store before it is believed.
    let mut lie = Inode::new(Kind::Dir, 0o755, 0, 0, t(1));
    lie.nlink = 2;
    let (key, real) = hint(&n, a).await;
    let real = real.expect("a exists");
    let mut h = Hints::new();
    h.insert(
        key,
        Some(Record {
            version: real.version,
            value: lie.encode(),
        }),
    );
    n.apply_hinted(
        CmlEntry::Store {
            fid: a,
            size: 77,
            mtime: t(30),
        },
        h,
    )
    .await
    .unwrap();
    assert_eq!(inode(&n, a).await.size, 77);
}
