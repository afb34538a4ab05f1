//! Versioned records: the store a file volume's namespace lives in.
//!
//! Directories and inodes are small records kept in the RVM of the volume's
//! first set and replicated over its bricks (DESIGN.md, "File volumes and the
//! client cache"). This module is the contract between the layer that keeps
//! records on bricks and the layer that builds a namespace out of them:
//!
//! - a record is a key (bytes) with a value (bytes) and a version that the
//!   store raises by one on every change of that key;
//! - [`RecordStore::commit`] applies several changes all-or-nothing, each
//!   guarded by the version its author last saw, so a namespace operation
//!   that touches several records (a rename: two directories and an inode)
//!   either happens whole or not at all;
//! - [`RecordStore::changes`] is the change feed clients use to break their
//!   caches (the callback path): every committed change gets a sequence
//!   number, and a client asks for the keys changed after the last one it saw.
//!
//! [`MemRecords`] is an in-memory store with the same semantics, for unit
//! tests of the layers above.

use std::collections::BTreeMap;
use std::sync::Mutex;

use thiserror::Error;
use transport::BoxFuture;

/// A record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Raised by one on every change of the key; the first version is 1.
    pub version: u64,
    pub value: Vec<u8>,
}

/// What a change expects of the record before it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Anything (no check).
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist at exactly this version.
    Version(u64),
}

/// One change inside a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOp {
    pub key: Vec<u8>,
    pub expect: Expect,
    /// The new value, or `None` to delete the key.
    pub value: Option<Vec<u8>>,
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Sequence number of the commit that changed the key (increasing).
    pub seq: u64,
    pub key: Vec<u8>,
}

/// A position in a store's change feed: a commit's sequence number and
/// the tag that names that very commit (random per commit, never 0), so a
/// position kept for a while can be checked to lie on the store's log: a
/// volume made again, or a commit that lost to another sequencer's, has
/// another tag at that sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedPos {
    pub seq: u64,
    pub tag: u64,
}

impl FeedPos {
    /// The error for a position a store does not find on its log.
    pub fn not_found(self) -> RecordError {
        RecordError::FeedGap {
            asked: self.seq,
            oldest: 0,
        }
    }
}

/// Why a record operation failed.
#[derive(Debug, Error)]
pub enum RecordError {
    /// A guard did not hold: the key was changed (or created, or deleted)
    /// by someone else since its author read it. Nothing was applied.
    #[error("record {key:?}: expected {expected:?}, found version {found:?}")]
    Conflict {
        key: Vec<u8>,
        expected: Expect,
        found: Option<u64>,
    },
    /// The change feed no longer holds changes this old (or, asked from a
    /// [`FeedPos`], does not hold that commit): the caller must drop
    /// everything it caches and start again from `oldest`.
    #[error("change feed starts at {oldest}, asked from {asked}")]
    FeedGap { asked: u64, oldest: u64 },
    /// The store below failed (brick down, no quorum, ...).
    #[error(transparent)]
    Volume(#[from] Box<crate::VolumeError>),
    /// Anything else, said in one line.
    #[error("{0}")]
    Other(String),
}

/// Records as a listing returns them: key and record, in key order.
pub type Listing = Vec<(Vec<u8>, Record)>;

/// A store of versioned records.
pub trait RecordStore: Send + Sync {
    /// The record at `key`, if any.
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<Record>, RecordError>>;

    /// Up to `limit` records whose keys start with `prefix` and sort after
    /// `after` (exclusive; empty = from the first), in key order.
    fn list<'a>(
        &'a self,
        prefix: &'a [u8],
        after: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, Result<Listing, RecordError>>;

    /// Applies `ops` all-or-nothing and returns the commit's sequence
    /// number. On a failed guard nothing is applied and the error says
    /// which key.
    fn commit(&self, ops: Vec<RecordOp>) -> BoxFuture<'_, Result<u64, RecordError>>;

    /// The keys changed by commits with sequence numbers above `since`, in
    /// order, at most `limit`, and the newest sequence number. Waits up to
    /// `wait_ms` for a change when there is none yet (0 = answer at once).
    fn changes(
        &self,
        since: u64,
        limit: usize,
        wait_ms: u32,
    ) -> BoxFuture<'_, Result<(Vec<Change>, u64), RecordError>>;

    /// The newest commit as a [`FeedPos`], or `None` when this store
    /// cannot name its commits (then positions cannot be checked and
    /// nothing should be kept across sessions by them).
    fn feed_head(&self) -> BoxFuture<'_, Result<Option<FeedPos>, RecordError>> {
        Box::pin(async { Ok(None) })
    }

    /// As [`RecordStore::changes`] from `from.seq`, after checking that the
    /// store's log holds the very commit `from` names: `FeedGap` when it
    /// does not (older than the feed keeps, past the head, or another
    /// log). A store that cannot tell always answers `FeedGap`.
    fn changes_from(
        &self,
        from: FeedPos,
        limit: usize,
        wait_ms: u32,
    ) -> BoxFuture<'_, Result<(Vec<Change>, u64), RecordError>> {
        let _ = (limit, wait_ms);
        Box::pin(async move { Err(from.not_found()) })
    }
}

/// An in-memory [`RecordStore`] for unit tests. It keeps the whole change
/// feed (unless [`MemRecords::trim_feed`] drops its start) and does not
/// wait in [`RecordStore::changes`]. Commit tags are derived from a random
/// number per store, so two stores name their commits differently.
#[derive(Debug, Default)]
pub struct MemRecords {
    inner: Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    records: BTreeMap<Vec<u8>, Record>,
    feed: Vec<Change>,
    seq: u64,
    /// The feed holds the commits after this one.
    feed_start: u64,
    nonce: u64,
}

impl MemInner {
    /// The tag of commit `seq` (0 for the empty log's position 0).
    fn tag(&self, seq: u64) -> u64 {
        if seq == 0 {
            return 0;
        }
        // splitmix64 of the store's nonce and the sequence number.
        let mut z = self.nonce ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) | 1
    }
}

impl MemRecords {
    pub fn new() -> Self {
        let s = Self::default();
        s.lock().nonce = rand::random();
        s
    }

    /// Drops the feed's commits up to `seq` (as a brick's bounded feed
    /// does): asking from before it is a [`RecordError::FeedGap`].
    pub fn trim_feed(&self, seq: u64) {
        let mut g = self.lock();
        let seq = seq.min(g.seq);
        g.feed.retain(|c| c.seq > seq);
        g.feed_start = g.feed_start.max(seq);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        // A panic while holding the lock leaves consistent data (every
        // commit checks all guards before changing anything).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks one guard against what is stored.
pub fn check_expect(key: &[u8], expect: Expect, found: Option<u64>) -> Result<(), RecordError> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => found.is_none(),
        Expect::Version(v) => found == Some(v),
    };
    if ok {
        Ok(())
    } else {
        Err(RecordError::Conflict {
            key: key.to_vec(),
            expected: expect,
            found,
        })
    }
}

impl RecordStore for MemRecords {
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<Record>, RecordError>> {
        let r = self.lock().records.get(key).cloned();
        Box::pin(async move { Ok(r) })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a [u8],
        after: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, Result<Listing, RecordError>> {
        let g = self.lock();
        let out: Vec<_> = g
            .records
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| after.is_empty() || k.as_slice() > after)
            .take(limit)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn commit(&self, ops: Vec<RecordOp>) -> BoxFuture<'_, Result<u64, RecordError>> {
        let mut g = self.lock();
        let res = (|| {
            for op in &ops {
                let found = g.records.get(&op.key).map(|r| r.version);
                check_expect(&op.key, op.expect, found)?;
            }
            g.seq += 1;
            let seq = g.seq;
            for op in ops {
                let version = g.records.get(&op.key).map_or(0, |r| r.version) + 1;
                match op.value {
                    Some(value) => {
                        g.records.insert(op.key.clone(), Record { version, value });
                    }
                    None => {
                        g.records.remove(&op.key);
                    }
                }
                g.feed.push(Change { seq, key: op.key });
            }
            Ok(seq)
        })();
        Box::pin(async move { res })
    }

    fn changes(
        &self,
        since: u64,
        limit: usize,
        _wait_ms: u32,
    ) -> BoxFuture<'_, Result<(Vec<Change>, u64), RecordError>> {
        let g = self.lock();
        let res = mem_changes(&g, since, limit);
        Box::pin(async move { res })
    }

    fn feed_head(&self) -> BoxFuture<'_, Result<Option<FeedPos>, RecordError>> {
        let g = self.lock();
        let head = FeedPos {
            seq: g.seq,
            tag: g.tag(g.seq),
        };
        Box::pin(async move { Ok(Some(head)) })
    }

    fn changes_from(
        &self,
        from: FeedPos,
        limit: usize,
        _wait_ms: u32,
    ) -> BoxFuture<'_, Result<(Vec<Change>, u64), RecordError>> {
        let g = self.lock();
        let res = if from.seq > g.seq || g.tag(from.seq) != from.tag {
            Err(RecordError::FeedGap {
                asked: from.seq,
                oldest: g.feed_start,
            })
        } else {
            mem_changes(&g, from.seq, limit)
        };
        Box::pin(async move { res })
    }
}

fn mem_changes(g: &MemInner, since: u64, limit: usize) -> Result<(Vec<Change>, u64), RecordError> {
    if since < g.feed_start {
        return Err(RecordError::FeedGap {
            asked: since,
            oldest: g.feed_start,
        });
    }
    let out: Vec<_> = g
        .feed
        .iter()
        .filter(|c| c.seq > since)
        .take(limit)
        .cloned()
        .collect();
    Ok((out, g.seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<T>(f: BoxFuture<'_, T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn put(key: &str, expect: Expect, value: &str) -> RecordOp {
        RecordOp {
            key: key.as_bytes().to_vec(),
            expect,
            value: Some(value.as_bytes().to_vec()),
        }
    }

    #[test]
    fn commit_is_all_or_nothing() {
        let s = MemRecords::new();
        block(s.commit(vec![put("a", Expect::Absent, "1")])).expect("first");
        let err = block(s.commit(vec![
            put("b", Expect::Absent, "2"),
            put("a", Expect::Absent, "3"),
        ]))
        .expect_err("guard on a fails");
        assert!(matches!(err, RecordError::Conflict { found: Some(1), .. }));
        assert_eq!(block(s.get(b"b")).expect("get"), None);
        let a = block(s.get(b"a")).expect("get").expect("a exists");
        assert_eq!((a.version, a.value), (1, b"1".to_vec()));
        block(s.commit(vec![put("a", Expect::Version(1), "4")])).expect("cas");
        assert_eq!(block(s.get(b"a")).expect("get").map(|r| r.version), Some(2));
    }

    #[test]
    fn list_and_feed() {
        let s = MemRecords::new();
        for k in ["d/1", "d/2", "d/3", "e/1"] {
            block(s.commit(vec![put(k, Expect::Any, "x")])).expect("put");
        }
        let l = block(s.list(b"d/", b"d/1", 10)).expect("list");
        let keys: Vec<_> = l.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, vec![b"d/2".to_vec(), b"d/3".to_vec()]);
        let (c, newest) = block(s.changes(2, 10, 0)).expect("feed");
        assert_eq!(newest, 4);
        assert_eq!(c.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn feed_positions_are_checked() {
        let s = MemRecords::new();
        for k in ["a", "b", "c"] {
            block(s.commit(vec![put(k, Expect::Any, "x")])).expect("put");
        }
        let head = block(s.feed_head()).expect("head").expect("named");
        assert_eq!(head.seq, 3);
        assert_ne!(head.tag, 0);
        let (c, newest) = block(s.changes_from(head, 10, 0)).expect("from head");
        assert!(c.is_empty());
        assert_eq!(newest, 3);
        block(s.commit(vec![put("d", Expect::Any, "x")])).expect("put");
        let (c, _) = block(s.changes_from(head, 10, 0)).expect("from head");
        assert_eq!(
            c,
            vec![Change {
                seq: 4,
                key: b"d".to_vec()
            }]
        );
        // Another tag at that seq (another store, another log): refused.
        let other = FeedPos {
            seq: 3,
            tag: head.tag ^ 2,
        };
        assert!(matches!(
            block(s.changes_from(other, 10, 0)),
            Err(RecordError::FeedGap { asked: 3, .. })
        ));
        // Past the head: refused.
        let ahead = FeedPos { seq: 9, tag: 1 };
        assert!(block(s.changes_from(ahead, 10, 0)).is_err());
        // Older than the feed keeps: a gap.
        s.trim_feed(3);
        assert!(block(s.changes_from(head, 10, 0)).is_ok());
        s.trim_feed(4);
        assert!(matches!(
            block(s.changes_from(head, 10, 0)),
            Err(RecordError::FeedGap { oldest: 4, .. })
        ));
        assert!(block(s.changes(2, 10, 0)).is_err());
    }
}
