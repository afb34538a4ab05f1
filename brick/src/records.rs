//! Versioned records per volume: the brick half of a file volume's
//! namespace (wire: `transport::wire` `Record*`, 0x50–0x55; the client half
//! and the reasoning: `docs/volume.md`, "Namespace records").
//!
//! Each volume's records form one log of commits. A commit `(seq, tag)`
//! applies only on top of the commit its author names as `prev` and only
//! under a ballot at least the highest promised, and every op's guard is
//! checked before anything changes; the whole commit (records, feed entry,
//! head) is one RVM transaction, durable before the reply. Two bricks at
//! the same head therefore hold the same records.
//!
//! The tables live in the RVM and are mirrored in memory at open (all of a
//! brick's records are held in memory: listings need key order, which the
//! RVM hash map does not give).
//!
//! Records table (root slot [`RECORDS_ROOT`]), key `volume u32 | kind u8 |
//! rest`:
//!
//! ```text
//! kind 'M', rest empty: the volume's head (value, 56 bytes)
//!  0     8     16       24         32           40               48      52        56
//!  +-----+-----+--------+----------+------------+----------------+-------+---------+
//!  | seq | tag | ballot | promised | feed_start | feed_start_tag | flags | version |
//!  | u64 | u64 |  u64   |   u64    |    u64     |      u64       |  u32  | u32 = 1 |
//!  +-----+-----+--------+----------+------------+----------------+-------+---------+
//!  flags bit 0: syncing
//! kind 'r', rest = the key (keys up to 250 bytes), or
//! kind 'h', rest = SHA-256 of the key (longer keys): a record (value)
//!  0         8         12         16
//!  +---------+---------+----------+---------+-----------+
//!  | version | key_len | reserved | key [k] | value ... |
//!  |   u64   |   u32   |  u32=0   |         |           |
//!  +---------+---------+----------+---------+-----------+
//! ```
//!
//! Feed table (root slot [`FEED_ROOT`]), key `volume u32 | seq u64`, one
//! entry per commit, the last [`FEED_KEEP`] commits of each volume:
//!
//! ```text
//!  0     8       12         16
//!  +-----+-------+----------+------------------------------------+
//!  | tag | count | reserved | count × (key_len u16 | key)        |
//!  | u64 |  u32  |  u32=0   |                                    |
//!  +-----+-------+----------+------------------------------------+
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use storage::rvm::{map::PMap, CommitMode, Rvm, RvmError, Transaction};
use transport::wire::{
    CommitId, CommitOutcome, ErrorCode, FeedEntry, FeedStatus, HeadOp, RecordChangesReply,
    RecordChangesReq, RecordCommitReply, RecordCommitReq, RecordEntry, RecordExpect,
    RecordGetReply, RecordGetReq, RecordHead, RecordHeadReply, RecordHeadReq, RecordListReply,
    RecordListReq, RecordSyncReq, RecordValue, HEAD_SYNCING, LIST_MORE, MAX_BODY,
    MAX_RECORD_ENTRIES, RECORD_CHANGES_FIXED, RECORD_LIST_FIXED, SYNC_BEGIN, SYNC_FINISH,
    SYNC_RESET,
};

/// RVM root slot of the records table (records and each volume's head).
pub const RECORDS_ROOT: u32 = 10;
/// RVM root slot of the change feed.
pub const FEED_ROOT: u32 = 11;
/// Commits kept in each volume's feed; older ones are answered with a gap.
pub const FEED_KEEP: usize = 1024;
/// Longest a `RecordChanges` waits for a change.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

const KIND_META: u8 = b'M';
const KIND_RAW: u8 = b'r';
const KIND_HASHED: u8 = b'h';
/// Longest key stored as itself in the table key (the RVM map takes keys
/// up to 255 bytes; 5 go to volume and kind).
const RAW_KEY_MAX: usize = 250;

const M_SEQ: usize = 0;
const M_TAG: usize = 8;
const M_BALLOT: usize = 16;
const M_PROMISED: usize = 24;
const M_FEED_START: usize = 32;
const M_FEED_START_TAG: usize = 40;
const M_FLAGS: usize = 48;
const M_VERSION: usize = 52;
const M_LEN: usize = 56;
const META_VERSION: u32 = 1;
const META_SYNCING: u32 = 1;

const R_VERSION: usize = 0;
const R_KEY_LEN: usize = 8;
const R_RESERVED: usize = 12;
const R_FIXED: usize = 16;

const F_TAG: usize = 0;
const F_COUNT: usize = 8;
const F_RESERVED: usize = 12;
const F_FIXED: usize = 16;

/// An error for the reply: a code and a message.
pub type Refusal = (ErrorCode, String);

fn io(e: RvmError) -> Refusal {
    (ErrorCode::Io, e.to_string())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Meta {
    head: CommitId,
    ballot: u64,
    promised: u64,
    feed_start: u64,
    feed_start_tag: u64,
    syncing: bool,
}

impl Meta {
    fn encode(&self) -> [u8; M_LEN] {
        let mut b = [0u8; M_LEN];
        b[M_SEQ..M_SEQ + 8].copy_from_slice(&self.head.seq.to_le_bytes());
        b[M_TAG..M_TAG + 8].copy_from_slice(&self.head.tag.to_le_bytes());
        b[M_BALLOT..M_BALLOT + 8].copy_from_slice(&self.ballot.to_le_bytes());
        b[M_PROMISED..M_PROMISED + 8].copy_from_slice(&self.promised.to_le_bytes());
        b[M_FEED_START..M_FEED_START + 8].copy_from_slice(&self.feed_start.to_le_bytes());
        b[M_FEED_START_TAG..M_FEED_START_TAG + 8]
            .copy_from_slice(&self.feed_start_tag.to_le_bytes());
        let flags = if self.syncing { META_SYNCING } else { 0 };
        b[M_FLAGS..M_FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
        b[M_VERSION..M_VERSION + 4].copy_from_slice(&META_VERSION.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Meta> {
        if b.len() != M_LEN || u32_at(b, M_VERSION) != META_VERSION {
            return None;
        }
        Some(Meta {
            head: CommitId {
                seq: u64_at(b, M_SEQ),
                tag: u64_at(b, M_TAG),
            },
            ballot: u64_at(b, M_BALLOT),
            promised: u64_at(b, M_PROMISED),
            feed_start: u64_at(b, M_FEED_START),
            feed_start_tag: u64_at(b, M_FEED_START_TAG),
            syncing: u32_at(b, M_FLAGS) & META_SYNCING != 0,
        })
    }
}

struct Commit {
    seq: u64,
    tag: u64,
    keys: Vec<Vec<u8>>,
}

struct Vol {
    meta: Meta,
    records: BTreeMap<Vec<u8>, (u64, Vec<u8>)>,
    /// The commits after `meta.feed_start`, oldest first.
    feed: VecDeque<Commit>,
    /// The sync session under way (memory only: after a restart a sync
    /// starts again).
    session: u64,
    /// Moves on every new head; long polls wait on it.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Vol {
    fn new() -> Vol {
        Vol {
            meta: Meta::default(),
            records: BTreeMap::new(),
            feed: VecDeque::new(),
            session: 0,
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    fn head(&self) -> RecordHead {
        RecordHead {
            id: self.meta.head,
            ballot: self.meta.ballot,
            promised: self.meta.promised,
            feed_start: self.meta.feed_start,
            flags: if self.meta.syncing { HEAD_SYNCING } else { 0 },
            records: u32::try_from(self.records.len()).unwrap_or(u32::MAX),
        }
    }

    /// The tag of commit `seq` if this log still knows it.
    fn tag_of(&self, seq: u64) -> Option<u64> {
        if seq == self.meta.head.seq {
            return Some(self.meta.head.tag);
        }
        if seq == self.meta.feed_start {
            return Some(self.meta.feed_start_tag);
        }
        self.feed.iter().find(|c| c.seq == seq).map(|c| c.tag)
    }
}

fn meta_key(volume: u32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&volume.to_le_bytes());
    k[4] = KIND_META;
    k
}

fn record_key(volume: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len().min(RAW_KEY_MAX));
    k.extend_from_slice(&volume.to_le_bytes());
    if key.len() <= RAW_KEY_MAX {
        k.push(KIND_RAW);
        k.extend_from_slice(key);
    } else {
        k.push(KIND_HASHED);
        k.extend_from_slice(&Sha256::digest(key));
    }
    k
}

fn record_value(version: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(R_FIXED + key.len() + value.len());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&(key.len() as u32).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(value);
    v
}

fn feed_key(volume: u32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&volume.to_le_bytes());
    k[4..].copy_from_slice(&seq.to_le_bytes());
    k
}

fn feed_value(tag: u64, keys: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::with_capacity(F_FIXED + keys.iter().map(|k| 2 + k.len()).sum::<usize>());
    v.extend_from_slice(&tag.to_le_bytes());
    v.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    for k in keys {
        v.extend_from_slice(&(k.len() as u16).to_le_bytes());
        v.extend_from_slice(k);
    }
    v
}

fn parse_feed(v: &[u8]) -> Option<(u64, Vec<Vec<u8>>)> {
    if v.len() < F_FIXED || u32_at(v, F_RESERVED) != 0 {
        return None;
    }
    let tag = u64_at(v, F_TAG);
    let count = u32_at(v, F_COUNT) as usize;
    let mut at = F_FIXED;
    let mut keys = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let len = v.get(at..at + 2)?;
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        keys.push(v.get(at + 2..at + 2 + len)?.to_vec());
        at += 2 + len;
    }
    (at == v.len()).then_some((tag, keys))
}

/// The record tables of one brick.
pub struct Records {
    rvm: Arc<Rvm>,
    table: PMap,
    feed: PMap,
    vols: Mutex<HashMap<u32, Vol>>,
    /// Set when the brick stops: long polls answer at once.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").finish_non_exhaustive()
    }
}

/// What a list reply may hold besides its fixed part (room is left for
/// the frame header and slack).
const LIST_BUDGET: usize = MAX_BODY as usize - RECORD_LIST_FIXED - 1024;
const CHANGES_BUDGET: usize = MAX_BODY as usize - RECORD_CHANGES_FIXED - 1024;

impl Records {
    /// Opens (or creates) the tables and loads them into memory.
    pub fn open(rvm: Arc<Rvm>) -> Result<Records, RvmError> {
        let table = PMap::open_or_create(&rvm, RECORDS_ROOT)?;
        let feed = PMap::open_or_create(&rvm, FEED_ROOT)?;
        let mut vols: HashMap<u32, Vol> = HashMap::new();
        let corrupt = |what: &str| RvmError::Corrupt {
            path: std::path::PathBuf::from("records"),
            offset: 0,
            reason: format!("records table: {what}"),
        };
        for kv in table.iter(&*rvm) {
            let (k, v) = kv?;
            if k.len() < 5 {
                return Err(corrupt("short key"));
            }
            let volume = u32_at(&k, 0);
            let vol = vols.entry(volume).or_insert_with(Vol::new);
            match k[4] {
                KIND_META => vol.meta = Meta::decode(&v).ok_or_else(|| corrupt("head"))?,
                KIND_RAW | KIND_HASHED => {
                    if v.len() < R_FIXED || u32_at(&v, R_RESERVED) != 0 {
                        return Err(corrupt("short record"));
                    }
                    let klen = u32_at(&v, R_KEY_LEN) as usize;
                    let key = v
                        .get(R_FIXED..R_FIXED + klen)
                        .ok_or_else(|| corrupt("record key"))?
                        .to_vec();
                    let value = v[R_FIXED + klen..].to_vec();
                    vol.records.insert(key, (u64_at(&v, R_VERSION), value));
                }
                _ => return Err(corrupt("unknown kind")),
            }
        }
        let mut commits: Vec<(u32, Commit)> = Vec::new();
        for kv in feed.iter(&*rvm) {
            let (k, v) = kv?;
            if k.len() != 12 {
                return Err(corrupt("feed key"));
            }
            let (tag, keys) = parse_feed(&v).ok_or_else(|| corrupt("feed entry"))?;
            commits.push((
                u32_at(&k, 0),
                Commit {
                    seq: u64_at(&k, 4),
                    tag,
                    keys,
                },
            ));
        }
        commits.sort_by_key(|(v, c)| (*v, c.seq));
        for (volume, c) in commits {
            vols.entry(volume)
                .or_insert_with(Vol::new)
                .feed
                .push_back(c);
        }
        for v in vols.values_mut() {
            v.changed.send_replace(v.meta.head.seq);
        }
        Ok(Records {
            rvm,
            table,
            feed,
            vols: Mutex::new(vols),
            stopping: tokio::sync::watch::channel(false).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Vol>> {
        // Memory changes only after the RVM commit succeeded, so a panic
        // while holding the lock leaves memory equal to the tables.
        self.vols.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every long poll (the brick is stopping).
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// `RecordGet`.
    pub fn get(&self, r: &RecordGetReq) -> RecordGetReply {
        let vols = self.lock();
        let Some(v) = vols.get(&r.volume) else {
            return RecordGetReply {
                head_seq: 0,
                record: None,
            };
        };
        RecordGetReply {
            head_seq: v.meta.head.seq,
            record: v.records.get(&r.key).map(|(version, value)| RecordValue {
                version: *version,
                value: value.clone(),
            }),
        }
    }

    /// `RecordList`: in key order, cut at `limit`, at
    /// [`MAX_RECORD_ENTRIES`] or when the body would grow too big.
    pub fn list(&self, r: &RecordListReq) -> RecordListReply {
        let vols = self.lock();
        let Some(v) = vols.get(&r.volume) else {
            return RecordListReply::default();
        };
        let start = if !r.after.is_empty() && r.after >= r.prefix {
            Bound::Excluded(r.after.clone())
        } else {
            Bound::Included(r.prefix.clone())
        };
        let limit = (r.limit as usize).min(MAX_RECORD_ENTRIES);
        let mut out = RecordListReply {
            flags: 0,
            head_seq: v.meta.head.seq,
            entries: Vec::new(),
        };
        let mut size = 0;
        for (k, (version, value)) in v.records.range((start, Bound::Unbounded)) {
            if !k.starts_with(&r.prefix) {
                break;
            }
            let e = RecordEntry {
                key: k.clone(),
                version: *version,
                value: Some(value.clone()),
            };
            if out.entries.len() == limit || size + e.encoded_len() > LIST_BUDGET {
                out.flags |= LIST_MORE;
                break;
            }
            size += e.encoded_len();
            out.entries.push(e);
        }
        out
    }

    /// `RecordHead`: the head, or a promise.
    pub fn head(&self, r: &RecordHeadReq) -> Result<RecordHeadReply, Refusal> {
        let mut vols = self.lock();
        let v = vols.entry(r.volume).or_insert_with(Vol::new);
        match r.op {
            HeadOp::Query => Ok(RecordHeadReply {
                refused: false,
                head: v.head(),
            }),
            HeadOp::Promise => {
                if r.ballot <= v.meta.promised {
                    return Ok(RecordHeadReply {
                        refused: true,
                        head: v.head(),
                    });
                }
                let meta = Meta {
                    promised: r.ballot,
                    ..v.meta
                };
                let mut tx = self.rvm.begin();
                self.table
                    .insert(&mut tx, &meta_key(r.volume), &meta.encode())
                    .map_err(io)?;
                tx.commit(CommitMode::Flush).map_err(io)?;
                v.meta = meta;
                Ok(RecordHeadReply {
                    refused: false,
                    head: v.head(),
                })
            }
        }
    }

    fn put_record(
        &self,
        tx: &mut Transaction<'_>,
        volume: u32,
        key: &[u8],
        rec: Option<(u64, &[u8])>,
    ) -> Result<(), Refusal> {
        let pk = record_key(volume, key);
        match rec {
            Some((version, value)) => self
                .table
                .insert(tx, &pk, &record_value(version, key, value))
                .map(|_| ())
                .map_err(io),
            None => self.table.remove(tx, &pk).map(|_| ()).map_err(io),
        }
    }

    /// `RecordCommit`: checks ballot, head and every guard, then applies
    /// all ops, the feed entry and the new head in one durable transaction.
    pub fn commit(&self, r: &RecordCommitReq) -> Result<RecordCommitReply, Refusal> {
        let mut vols = self.lock();
        let v = vols.entry(r.volume).or_insert_with(Vol::new);
        let reply = |outcome, v: &Vol| {
            Ok(RecordCommitReply {
                outcome,
                head: v.head(),
            })
        };
        if r.ballot < v.meta.promised {
            return reply(CommitOutcome::StaleBallot, v);
        }
        if v.meta.syncing || v.meta.head != r.prev {
            return reply(CommitOutcome::HeadMismatch, v);
        }
        for (i, op) in r.ops.iter().enumerate() {
            let found = v.records.get(&op.key).map(|(ver, _)| *ver);
            let ok = match op.expect {
                RecordExpect::Any => true,
                RecordExpect::Absent => found.is_none(),
                RecordExpect::Version(x) => found == Some(x),
            };
            if !ok {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                return reply(CommitOutcome::Conflict { index, found }, v);
            }
        }
        // Ops apply in order (a key named twice sees the first change), on
        // a copy of the touched records, so memory changes only after the
        // RVM commit.
        let mut touched: BTreeMap<Vec<u8>, Option<(u64, Vec<u8>)>> = BTreeMap::new();
        for op in &r.ops {
            let cur = match touched.get(&op.key) {
                Some(c) => c.as_ref().map(|(ver, _)| *ver),
                None => v.records.get(&op.key).map(|(ver, _)| *ver),
            };
            let next = op
                .value
                .as_ref()
                .map(|val| (cur.unwrap_or(0) + 1, val.clone()));
            touched.insert(op.key.clone(), next);
        }
        let seq = r.prev.seq + 1;
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for op in &r.ops {
            if !keys.contains(&op.key) {
                keys.push(op.key.clone());
            }
        }
        let mut meta = Meta {
            head: CommitId { seq, tag: r.tag },
            ballot: r.ballot,
            promised: v.meta.promised.max(r.ballot),
            ..v.meta
        };
        let trim = (v.feed.len() + 1).saturating_sub(FEED_KEEP);
        let mut tx = self.rvm.begin();
        for (k, rec) in &touched {
            self.put_record(
                &mut tx,
                r.volume,
                k,
                rec.as_ref().map(|(ver, val)| (*ver, val.as_slice())),
            )?;
        }
        self.feed
            .insert(&mut tx, &feed_key(r.volume, seq), &feed_value(r.tag, &keys))
            .map_err(io)?;
        for c in v.feed.iter().take(trim) {
            self.feed
                .remove(&mut tx, &feed_key(r.volume, c.seq))
                .map_err(io)?;
            meta.feed_start = c.seq;
            meta.feed_start_tag = c.tag;
        }
        self.table
            .insert(&mut tx, &meta_key(r.volume), &meta.encode())
            .map_err(io)?;
        tx.commit(CommitMode::Flush).map_err(io)?;
        for (k, rec) in touched {
            match rec {
                Some(x) => v.records.insert(k, x),
                None => v.records.remove(&k),
            };
        }
        v.feed.drain(..trim);
        v.feed.push_back(Commit {
            seq,
            tag: r.tag,
            keys,
        });
        v.meta = meta;
        v.changed.send_replace(seq);
        reply(CommitOutcome::Applied, v)
    }

    /// The answer to a `RecordChanges` as of now; `None` when there is
    /// nothing new and the caller may wait.
    fn changes_now(&self, v: &Vol, r: &RecordChangesReq) -> Option<RecordChangesReply> {
        let reply = |status, changes| RecordChangesReply {
            status,
            newest: v.meta.head.seq,
            oldest: v.meta.feed_start,
            changes,
        };
        if r.since_tag != 0 && v.tag_of(r.since) != Some(r.since_tag) {
            let status = if r.since < v.meta.feed_start {
                FeedStatus::Gap
            } else {
                FeedStatus::Diverged
            };
            return Some(reply(status, Vec::new()));
        }
        if r.since < v.meta.feed_start {
            return Some(reply(FeedStatus::Gap, Vec::new()));
        }
        let limit = (r.limit as usize).clamp(1, MAX_RECORD_ENTRIES);
        let mut out = Vec::new();
        let mut size = 0;
        'commits: for c in v.feed.iter().filter(|c| c.seq > r.since) {
            // A commit's keys are never split between replies: the caller
            // continues from the last seq it got.
            let bytes: usize = c.keys.iter().map(|k| 12 + k.len()).sum();
            if !out.is_empty()
                && (out.len() + c.keys.len() > limit || size + bytes > CHANGES_BUDGET)
            {
                break 'commits;
            }
            size += bytes;
            for k in &c.keys {
                out.push(FeedEntry {
                    seq: c.seq,
                    key: k.clone(),
                });
            }
        }
        // Commits without keys (a sequencer's empty commit) are no change
        // to wait out: a poll keeps waiting through them.
        if out.is_empty() {
            return None;
        }
        Some(reply(FeedStatus::Ok, out))
    }

    /// `RecordChanges`: answers at once when there are changes after
    /// `since` (or a gap), else waits up to `wait_ms` (capped at
    /// [`MAX_WAIT`]) for a commit. The wait holds no lock and no thread.
    pub async fn changes(&self, r: &RecordChangesReq) -> RecordChangesReply {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(r.wait_ms as u64).min(MAX_WAIT);
        let mut stop = self.stopping.subscribe();
        loop {
            let mut rx = {
                let mut vols = self.lock();
                let v = vols.entry(r.volume).or_insert_with(Vol::new);
                if let Some(reply) = self.changes_now(v, r) {
                    return reply;
                }
                if tokio::time::Instant::now() >= deadline || *stop.borrow() {
                    return RecordChangesReply {
                        status: FeedStatus::Ok,
                        newest: v.meta.head.seq,
                        oldest: v.meta.feed_start,
                        changes: Vec::new(),
                    };
                }
                // Subscribed under the lock: a commit after this wakes us.
                v.changed.subscribe()
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = rx.changed() => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// `RecordSync`: one page of a heal session (see the wire doc).
    pub fn sync(&self, r: &RecordSyncReq) -> Result<RecordHeadReply, Refusal> {
        let mut vols = self.lock();
        let v = vols.entry(r.volume).or_insert_with(Vol::new);
        let refused = |v: &Vol| {
            Ok(RecordHeadReply {
                refused: true,
                head: v.head(),
            })
        };
        if r.session == 0 {
            return Err((ErrorCode::Invalid, "sync session 0 is reserved".into()));
        }
        if r.ballot < v.meta.promised {
            return refused(v);
        }
        let reset = r.flags & SYNC_BEGIN != 0 && r.flags & SYNC_RESET != 0;
        if r.flags & SYNC_BEGIN != 0 {
            if !reset && v.meta.head != r.base {
                return refused(v);
            }
        } else if v.session != r.session || !v.meta.syncing {
            return refused(v);
        }
        let finish = r.flags & SYNC_FINISH != 0;
        let mut meta = Meta {
            syncing: true,
            promised: v.meta.promised.max(r.ballot),
            ..v.meta
        };
        if reset {
            meta.head = CommitId::default();
            meta.ballot = 0;
        }
        let mut tx = self.rvm.begin();
        if reset {
            for k in v.records.keys() {
                self.put_record(&mut tx, r.volume, k, None)?;
            }
        }
        if reset || finish {
            for c in &v.feed {
                self.feed
                    .remove(&mut tx, &feed_key(r.volume, c.seq))
                    .map_err(io)?;
            }
        }
        for e in &r.entries {
            self.put_record(
                &mut tx,
                r.volume,
                &e.key,
                e.value.as_ref().map(|val| (e.version, val.as_slice())),
            )?;
        }
        if finish {
            meta.head = r.head;
            meta.ballot = r.head_ballot;
            meta.feed_start = r.head.seq;
            meta.feed_start_tag = r.head.tag;
            meta.syncing = false;
        } else if reset {
            meta.feed_start = 0;
            meta.feed_start_tag = 0;
        }
        self.table
            .insert(&mut tx, &meta_key(r.volume), &meta.encode())
            .map_err(io)?;
        tx.commit(CommitMode::Flush).map_err(io)?;
        if reset {
            v.records.clear();
        }
        if reset || finish {
            v.feed.clear();
        }
        for e in &r.entries {
            match &e.value {
                Some(val) => v.records.insert(e.key.clone(), (e.version, val.clone())),
                None => v.records.remove(&e.key),
            };
        }
        v.meta = meta;
        v.session = if finish { 0 } else { r.session };
        if finish {
            v.changed.send_replace(meta.head.seq);
        }
        Ok(RecordHeadReply {
            refused: false,
            head: v.head(),
        })
    }
}

#[cfg(test)]
mod tests;
