//! Bodies of the record operations (0x50–0x55): the versioned records a
//! file volume's namespace lives in, kept by the bricks of the volume's
//! first set (`brick/src/records.rs`, `docs/brick.md`).
//!
//! Each volume's records on a brick form one log of commits. A commit is
//! named by its sequence number and a random `tag` its author picked (a
//! [`CommitId`]); a brick applies a commit only on top of the commit its
//! author saw last (`prev`), so two bricks at the same `CommitId` hold the
//! same records. A `ballot` orders the clients that sequence commits
//! (`RecordHead` promise, like a Paxos prepare): a brick refuses commits
//! under a ballot below the highest it promised. `docs/volume.md`
//! ("Namespace records") says why.
//!
//! Layouts follow the rest of the wire (little-endian, reserved bytes zero,
//! offsets named by constants, drawn again in `docs/wire.md`). Variable
//! parts (keys, values, entries) follow the fixed part back to back, in the
//! order the fixed part lists their lengths; a body must end exactly after
//! the last one.

use super::msg::{BodyError, Opcode};
use super::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// Longest record key.
pub const MAX_RECORD_KEY: usize = 1024;
/// Longest record value (a commit, a list page and a sync page must all
/// fit one body of `MAX_BODY` = 64 KiB).
pub const MAX_RECORD_VALUE: usize = 56 * 1024;
/// Most ops in one commit.
pub const MAX_RECORD_OPS: usize = 1024;
/// Most entries in one list, changes or sync body.
pub const MAX_RECORD_ENTRIES: usize = 4096;

/// A commit's name: its sequence number and its author's random tag.
/// `(0, 0)` names the empty log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CommitId {
    pub seq: u64,
    pub tag: u64,
}

/// Reads a body front to back; every read is bounds-checked.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    op: Opcode,
}

impl<'a> Reader<'a> {
    fn new(op: Opcode, b: &'a [u8], fixed: usize) -> Result<Reader<'a>, BodyError> {
        if b.len() < fixed {
            return Err(BodyError::Length {
                opcode: op,
                expected: fixed,
                found: b.len(),
            });
        }
        Ok(Reader { b, at: fixed, op })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BodyError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let Some(end) = end else {
            return Err(BodyError::Length {
                opcode: self.op,
                expected: self.at.saturating_add(n),
                found: self.b.len(),
            });
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn finish(&self) -> Result<(), BodyError> {
        if self.at != self.b.len() {
            return Err(BodyError::Length {
                opcode: self.op,
                expected: self.at,
                found: self.b.len(),
            });
        }
        Ok(())
    }
}

fn too_long(op: Opcode, field: &'static str, len: usize, max: usize) -> Result<(), BodyError> {
    if len > max {
        return Err(BodyError::TooLong {
            opcode: op,
            field,
            len,
            max,
        });
    }
    Ok(())
}

fn reserved(op: Opcode, ok: bool, field: &'static str) -> Result<(), BodyError> {
    if !ok {
        return Err(BodyError::Reserved { opcode: op, field });
    }
    Ok(())
}

fn flags(op: Opcode, v: u32, known: u32, field: &'static str) -> Result<u32, BodyError> {
    if v & !known != 0 {
        return Err(BodyError::UnknownFlags {
            opcode: op,
            field,
            bits: v & !known,
        });
    }
    Ok(v)
}

// ---------------------------------------------------------------------------
// RecordGet (0x50)

/// `RecordGet` request: one record of `volume`.
///
/// ```text
///  0        4         6          8
///  +--------+---------+----------+-----------------+
///  | volume | key_len | reserved | key [key_len]   |
///  |  u32   |   u16   |  u16=0   |                 |
///  +--------+---------+----------+-----------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordGetReq {
    pub volume: u32,
    pub key: Vec<u8>,
}
const RG_VOLUME: usize = 0;
const RG_KEY_LEN: usize = 4;
const RG_RESERVED: usize = 6;
const RG_FIXED: usize = 8;

/// A stored record as the wire carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordValue {
    pub version: u64,
    pub value: Vec<u8>,
}

/// `RecordGet` reply. `head_seq` is the brick's log head for the volume,
/// so a reader can tell a brick that is behind.
///
/// ```text
///  0       4          8         16         24          28         32
///  +-------+----------+---------+----------+-----------+----------+---------------+
///  | found | reserved | version | head_seq | value_len | reserved | value [len]   |
///  |  u32  |  u32=0   |   u64   |   u64    |    u32    |  u32=0   |               |
///  +-------+----------+---------+----------+-----------+----------+---------------+
/// ```
/// `found` is 0 or 1; when 0, `version` and `value_len` are 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordGetReply {
    pub head_seq: u64,
    pub record: Option<RecordValue>,
}
const GR_FOUND: usize = 0;
const GR_RESERVED0: usize = 4;
const GR_VERSION: usize = 8;
const GR_HEAD: usize = 16;
const GR_VALUE_LEN: usize = 24;
const GR_RESERVED1: usize = 28;
const GR_FIXED: usize = 32;

impl RecordGetReq {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; RG_FIXED];
        put_u32(&mut b, RG_VOLUME, self.volume);
        put_u16(&mut b, RG_KEY_LEN, self.key.len() as u16);
        put_u16(&mut b, RG_RESERVED, 0);
        out.extend_from_slice(&b);
        out.extend_from_slice(&self.key);
    }

    pub(super) fn decode(b: &[u8]) -> Result<RecordGetReq, BodyError> {
        let op = Opcode::RecordGet;
        let mut r = Reader::new(op, b, RG_FIXED)?;
        reserved(op, get_u16(b, RG_RESERVED) == 0, "reserved")?;
        let klen = get_u16(b, RG_KEY_LEN) as usize;
        too_long(op, "key", klen, MAX_RECORD_KEY)?;
        let key = r.take(klen)?.to_vec();
        r.finish()?;
        Ok(RecordGetReq {
            volume: get_u32(b, RG_VOLUME),
            key,
        })
    }
}

impl RecordGetReply {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; GR_FIXED];
        let (found, version, value): (u32, u64, &[u8]) = match &self.record {
            Some(r) => (1, r.version, &r.value),
            None => (0, 0, &[]),
        };
        put_u32(&mut b, GR_FOUND, found);
        put_u32(&mut b, GR_RESERVED0, 0);
        put_u64(&mut b, GR_VERSION, version);
        put_u64(&mut b, GR_HEAD, self.head_seq);
        put_u32(&mut b, GR_VALUE_LEN, value.len() as u32);
        put_u32(&mut b, GR_RESERVED1, 0);
        out.extend_from_slice(&b);
        out.extend_from_slice(value);
    }

    pub(super) fn decode(b: &[u8]) -> Result<RecordGetReply, BodyError> {
        let op = Opcode::RecordGet;
        let mut r = Reader::new(op, b, GR_FIXED)?;
        reserved(
            op,
            get_u32(b, GR_RESERVED0) == 0 && get_u32(b, GR_RESERVED1) == 0,
            "reserved",
        )?;
        let vlen = get_u32(b, GR_VALUE_LEN) as usize;
        too_long(op, "value", vlen, MAX_RECORD_VALUE)?;
        let version = get_u64(b, GR_VERSION);
        let record = match get_u32(b, GR_FOUND) {
            0 => {
                reserved(op, version == 0 && vlen == 0, "absent record fields")?;
                None
            }
            1 => Some(RecordValue {
                version,
                value: r.take(vlen)?.to_vec(),
            }),
            f => {
                return Err(BodyError::UnknownFlags {
                    opcode: op,
                    field: "found",
                    bits: f,
                })
            }
        };
        r.finish()?;
        Ok(RecordGetReply {
            head_seq: get_u64(b, GR_HEAD),
            record,
        })
    }
}

// ---------------------------------------------------------------------------
// Record entries (list replies and sync requests)

/// One record in a list reply or a sync page: `value: None` (sync only)
/// says the key must not exist.
///
/// ```text
///  0       1          2         4           8         16
///  +-------+----------+---------+-----------+---------+-----------+-------------+
///  | flags | reserved | key_len | value_len | version | key [k]   | value [v]   |
///  |  u8   |   u8=0   |   u16   |    u32    |   u64   |           |             |
///  +-------+----------+---------+-----------+---------+-----------+-------------+
/// ```
/// `flags` bit 0 `ENTRY_PRESENT`; an absent entry has `value_len` and
/// `version` 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordEntry {
    pub key: Vec<u8>,
    pub version: u64,
    pub value: Option<Vec<u8>>,
}
const EN_FLAGS: usize = 0;
const EN_RESERVED: usize = 1;
const EN_KEY_LEN: usize = 2;
const EN_VALUE_LEN: usize = 4;
const EN_VERSION: usize = 8;
/// Fixed part of a [`RecordEntry`].
pub const RECORD_ENTRY_FIXED: usize = 16;
/// [`RecordEntry`] flag: the record exists (`value` is its value).
pub const ENTRY_PRESENT: u8 = 1;

impl RecordEntry {
    /// Encoded size.
    pub fn encoded_len(&self) -> usize {
        RECORD_ENTRY_FIXED + self.key.len() + self.value.as_ref().map_or(0, Vec::len)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; RECORD_ENTRY_FIXED];
        let (fl, version, value): (u8, u64, &[u8]) = match &self.value {
            Some(v) => (ENTRY_PRESENT, self.version, v),
            None => (0, 0, &[]),
        };
        b[EN_FLAGS] = fl;
        b[EN_RESERVED] = 0;
        put_u16(&mut b, EN_KEY_LEN, self.key.len() as u16);
        put_u32(&mut b, EN_VALUE_LEN, value.len() as u32);
        put_u64(&mut b, EN_VERSION, version);
        out.extend_from_slice(&b);
        out.extend_from_slice(&self.key);
        out.extend_from_slice(value);
    }

    fn decode(r: &mut Reader<'_>) -> Result<RecordEntry, BodyError> {
        let op = r.op;
        let f = r.take(RECORD_ENTRY_FIXED)?;
        reserved(op, f[EN_RESERVED] == 0, "entry.reserved")?;
        let fl = flags(op, f[EN_FLAGS] as u32, ENTRY_PRESENT as u32, "entry.flags")?;
        let klen = get_u16(f, EN_KEY_LEN) as usize;
        let vlen = get_u32(f, EN_VALUE_LEN) as usize;
        let version = get_u64(f, EN_VERSION);
        too_long(op, "entry.key", klen, MAX_RECORD_KEY)?;
        too_long(op, "entry.value", vlen, MAX_RECORD_VALUE)?;
        let key = r.take(klen)?.to_vec();
        let value = if fl != 0 {
            Some(r.take(vlen)?.to_vec())
        } else {
            reserved(op, vlen == 0 && version == 0, "absent entry fields")?;
            None
        };
        Ok(RecordEntry {
            key,
            version,
            value,
        })
    }
}

fn decode_entries(
    r: &mut Reader<'_>,
    count: usize,
    present_only: bool,
) -> Result<Vec<RecordEntry>, BodyError> {
    too_long(r.op, "entries", count, MAX_RECORD_ENTRIES)?;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let e = RecordEntry::decode(r)?;
        if present_only && e.value.is_none() {
            return Err(BodyError::Reserved {
                opcode: r.op,
                field: "entry.flags (a list holds present records)",
            });
        }
        out.push(e);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// RecordList (0x51)

/// `RecordList` request: records of `volume` whose key starts with
/// `prefix` and sorts after `after` (exclusive; empty = from the first), in
/// key order, at most `limit`.
///
/// ```text
///  0        4       8            10          12         16
///  +--------+-------+------------+-----------+----------+------------+-----------+
///  | volume | limit | prefix_len | after_len | reserved | prefix [p] | after [a] |
///  |  u32   |  u32  |    u16     |    u16    |  u32=0   |            |           |
///  +--------+-------+------------+-----------+----------+------------+-----------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordListReq {
    pub volume: u32,
    pub limit: u32,
    pub prefix: Vec<u8>,
    pub after: Vec<u8>,
}
const RL_VOLUME: usize = 0;
const RL_LIMIT: usize = 4;
const RL_PREFIX_LEN: usize = 8;
const RL_AFTER_LEN: usize = 10;
const RL_RESERVED: usize = 12;
const RL_FIXED: usize = 16;

/// `RecordList` reply flag: the list was cut (by `limit` or the body
/// size); ask again after the last key.
pub const LIST_MORE: u32 = 1;

/// `RecordList` reply: `count` [`RecordEntry`]s (all present), in key order.
///
/// ```text
///  0       4       8          16
///  +-------+-------+----------+------------------------+
///  | count | flags | head_seq | entries [count]        |
///  |  u32  |  u32  |   u64    |                        |
///  +-------+-------+----------+------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordListReply {
    pub flags: u32,
    pub head_seq: u64,
    pub entries: Vec<RecordEntry>,
}
const LR_COUNT: usize = 0;
const LR_FLAGS: usize = 4;
const LR_HEAD: usize = 8;
/// Fixed part of a `RecordList` reply.
pub const RECORD_LIST_FIXED: usize = 16;

impl RecordListReq {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; RL_FIXED];
        put_u32(&mut b, RL_VOLUME, self.volume);
        put_u32(&mut b, RL_LIMIT, self.limit);
        put_u16(&mut b, RL_PREFIX_LEN, self.prefix.len() as u16);
        put_u16(&mut b, RL_AFTER_LEN, self.after.len() as u16);
        put_u32(&mut b, RL_RESERVED, 0);
        out.extend_from_slice(&b);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(&self.after);
    }

    pub(super) fn decode(b: &[u8]) -> Result<RecordListReq, BodyError> {
        let op = Opcode::RecordList;
        let mut r = Reader::new(op, b, RL_FIXED)?;
        reserved(op, get_u32(b, RL_RESERVED) == 0, "reserved")?;
        let plen = get_u16(b, RL_PREFIX_LEN) as usize;
        let alen = get_u16(b, RL_AFTER_LEN) as usize;
        too_long(op, "prefix", plen, MAX_RECORD_KEY)?;
        too_long(op, "after", alen, MAX_RECORD_KEY)?;
        let prefix = r.take(plen)?.to_vec();
        let after = r.take(alen)?.to_vec();
        r.finish()?;
        Ok(RecordListReq {
            volume: get_u32(b, RL_VOLUME),
            limit: get_u32(b, RL_LIMIT),
            prefix,
            after,
        })
    }
}

impl RecordListReply {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; RECORD_LIST_FIXED];
        put_u32(&mut b, LR_COUNT, self.entries.len() as u32);
        put_u32(&mut b, LR_FLAGS, self.flags);
        put_u64(&mut b, LR_HEAD, self.head_seq);
        out.extend_from_slice(&b);
        for e in &self.entries {
            e.encode(out);
        }
    }

    pub(super) fn decode(b: &[u8]) -> Result<RecordListReply, BodyError> {
        let op = Opcode::RecordList;
        let mut r = Reader::new(op, b, RECORD_LIST_FIXED)?;
        let fl = flags(op, get_u32(b, LR_FLAGS), LIST_MORE, "flags")?;
        let entries = decode_entries(&mut r, get_u32(b, LR_COUNT) as usize, true)?;
        r.finish()?;
        Ok(RecordListReply {
            flags: fl,
            head_seq: get_u64(b, LR_HEAD),
            entries,
        })
    }
}

// ---------------------------------------------------------------------------
// RecordCommit (0x52)

/// What an op expects of its record before the commit applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordExpect {
    /// 0: no check.
    Any,
    /// 1: the key must not exist.
    Absent,
    /// 2: the key must exist at exactly this version.
    Version(u64),
}

/// One change in a commit.
///
/// ```text
///  0        1       2         4           8                16
///  +--------+-------+---------+-----------+----------------+---------+-----------+
///  | expect | flags | key_len | value_len | expect_version | key [k] | value [v] |
///  |   u8   |  u8   |   u16   |    u32    |      u64       |         |           |
///  +--------+-------+---------+-----------+----------------+---------+-----------+
/// ```
/// `expect` 0 any, 1 absent, 2 version (`expect_version` is 0 unless 2);
/// `flags` bit 0 `OP_DELETE` (then `value_len` is 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOpWire {
    pub key: Vec<u8>,
    pub expect: RecordExpect,
    pub value: Option<Vec<u8>>,
}
const OP_EXPECT: usize = 0;
const OP_FLAGS: usize = 1;
const OP_KEY_LEN: usize = 2;
const OP_VALUE_LEN: usize = 4;
const OP_EXPECT_VERSION: usize = 8;
/// Fixed part of a [`RecordOpWire`].
pub const RECORD_OP_FIXED: usize = 16;
/// [`RecordOpWire`] flag: delete the key.
pub const OP_DELETE: u8 = 1;

impl RecordOpWire {
    /// Encoded size.
    pub fn encoded_len(&self) -> usize {
        RECORD_OP_FIXED + self.key.len() + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// `RecordCommit` request: apply `ops` all-or-nothing as commit
/// `(prev.seq + 1, tag)` on top of `prev`, under `ballot`.
///
/// ```text
///  0        4       8        16         24         32    40
///  +--------+-------+--------+----------+----------+-----+------------------+
///  | volume | count | ballot | prev_seq | prev_tag | tag | ops [count]      |
///  |  u32   |  u32  |  u64   |   u64    |   u64    | u64 |                  |
///  +--------+-------+--------+----------+----------+-----+------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordCommitReq {
    pub volume: u32,
    pub ballot: u64,
    pub prev: CommitId,
    pub tag: u64,
    pub ops: Vec<RecordOpWire>,
}
const CQ_VOLUME: usize = 0;
const CQ_COUNT: usize = 4;
const CQ_BALLOT: usize = 8;
const CQ_PREV_SEQ: usize = 16;
const CQ_PREV_TAG: usize = 24;
const CQ_TAG: usize = 32;
/// Fixed part of a `RecordCommit` request.
pub const RECORD_COMMIT_FIXED: usize = 40;

/// A brick's log head for one volume.
///
/// ```text
///  0     8     16       24         32           40      44        48
///  +-----+-----+--------+----------+------------+-------+---------+
///  | seq | tag | ballot | promised | feed_start | flags | records |
///  | u64 | u64 |  u64   |   u64    |    u64     |  u32  |   u32   |
///  +-----+-----+--------+----------+------------+-------+---------+
/// ```
/// `ballot`: the ballot the head commit was made under; `promised`: the
/// highest ballot promised; `feed_start`: the change feed holds the commits
/// after it; `flags` bit 0 `HEAD_SYNCING` (a sync is under way: the
/// records are not those of the head); `records`: how many records the
/// volume has (saturating).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordHead {
    pub id: CommitId,
    pub ballot: u64,
    pub promised: u64,
    pub feed_start: u64,
    pub flags: u32,
    pub records: u32,
}
const HD_SEQ: usize = 0;
const HD_TAG: usize = 8;
const HD_BALLOT: usize = 16;
const HD_PROMISED: usize = 24;
const HD_FEED_START: usize = 32;
const HD_FLAGS: usize = 40;
const HD_RECORDS: usize = 44;
/// Encoded size of a [`RecordHead`].
pub const RECORD_HEAD_LEN: usize = 48;
/// [`RecordHead`] flag: a sync is under way.
pub const HEAD_SYNCING: u32 = 1;

impl RecordHead {
    fn put(&self, b: &mut [u8], at: usize) {
        put_u64(b, at + HD_SEQ, self.id.seq);
        put_u64(b, at + HD_TAG, self.id.tag);
        put_u64(b, at + HD_BALLOT, self.ballot);
        put_u64(b, at + HD_PROMISED, self.promised);
        put_u64(b, at + HD_FEED_START, self.feed_start);
        put_u32(b, at + HD_FLAGS, self.flags);
        put_u32(b, at + HD_RECORDS, self.records);
    }

    fn get(op: Opcode, b: &[u8], at: usize) -> Result<RecordHead, BodyError> {
        Ok(RecordHead {
            id: CommitId {
                seq: get_u64(b, at + HD_SEQ),
                tag: get_u64(b, at + HD_TAG),
            },
            ballot: get_u64(b, at + HD_BALLOT),
            promised: get_u64(b, at + HD_PROMISED),
            feed_start: get_u64(b, at + HD_FEED_START),
            flags: flags(op, get_u32(b, at + HD_FLAGS), HEAD_SYNCING, "head.flags")?,
            records: get_u32(b, at + HD_RECORDS),
        })
    }

    /// Is a sync under way?
    pub fn syncing(&self) -> bool {
        self.flags & HEAD_SYNCING != 0
    }
}

/// What a brick did with a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// 0: applied (durably); the head is the new commit.
    Applied,
    /// 1: op `index`'s guard did not hold (`found`: the version stored, or
    /// none); nothing was applied.
    Conflict { index: u32, found: Option<u64> },
    /// 2: the brick's head is not `prev` (it is behind, diverged, or
    /// syncing); nothing was applied.
    HeadMismatch,
    /// 3: the brick promised a higher ballot; nothing was applied.
    StaleBallot,
}

/// `RecordCommit` reply.
///
/// ```text
///  0        4       8       16
///  +--------+-------+-------+---------------------+
///  | status | index | found | head (RecordHead)   |
///  |  u32   |  u32  |  u64  |        48           |
///  +--------+-------+-------+---------------------+
/// ```
/// `status` 0 applied, 1 conflict, 2 head mismatch, 3 stale ballot;
/// `index` and `found` (0 = absent; versions start at 1) only for a
/// conflict, else 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordCommitReply {
    pub outcome: CommitOutcome,
    pub head: RecordHead,
}
const CR_STATUS: usize = 0;
const CR_INDEX: usize = 4;
const CR_FOUND: usize = 8;
const CR_HEAD: usize = 16;
const CR_LEN: usize = CR_HEAD + RECORD_HEAD_LEN;

impl RecordCommitReq {
    /// Encoded body size (the caller keeps it under `MAX_BODY`).
    pub fn encoded_len(&self) -> usize {
        RECORD_COMMIT_FIXED
            + self
                .ops
                .iter()
                .map(RecordOpWire::encoded_len)
                .sum::<usize>()
    }

    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; RECORD_COMMIT_FIXED];
        put_u32(&mut b, CQ_VOLUME, self.volume);
        put_u32(&mut b, CQ_COUNT, self.ops.len() as u32);
        put_u64(&mut b, CQ_BALLOT, self.ballot);
        put_u64(&mut b, CQ_PREV_SEQ, self.prev.seq);
        put_u64(&mut b, CQ_PREV_TAG, self.prev.tag);
        put_u64(&mut b, CQ_TAG, self.tag);
        out.extend_from_slice(&b);
        for o in &self.ops {
            let mut f = [0u8; RECORD_OP_FIXED];
            let (kind, ev) = match o.expect {
                RecordExpect::Any => (0u8, 0u64),
                RecordExpect::Absent => (1, 0),
                RecordExpect::Version(v) => (2, v),
            };
            let (fl, value): (u8, &[u8]) = match &o.value {
                Some(v) => (0, v),
                None => (OP_DELETE, &[]),
            };
            f[OP_EXPECT] = kind;
            f[OP_FLAGS] = fl;
            put_u16(&mut f, OP_KEY_LEN, o.key.len() as u16);
            put_u32(&mut f, OP_VALUE_LEN, value.len() as u32);
            put_u64(&mut f, OP_EXPECT_VERSION, ev);
            out.extend_from_slice(&f);
            out.extend_from_slice(&o.key);
            out.extend_from_slice(value);
        }
    }

    pub(super) fn decode(b: &[u8]) -> Result<RecordCommitReq, BodyError> {
        let op = Opcode::RecordCommit;
        let mut r = Reader::new(op, b, RECORD_COMMIT_FIXED)?;
        let count = get_u32(b, CQ_COUNT) as usize;
        too_long(op, "ops", count, MAX_RECORD_OPS)?;
        let mut ops = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let f = r.take(RECORD_OP_FIXED)?;
            let fl = flags(op, f[OP_FLAGS] as u32, OP_DELETE as u32, "op.flags")?;
            let klen = get_u16(f, OP_KEY_LEN) as usize;
            let vlen = get_u32(f, OP_VALUE_LEN) as usize;
            let ev = get_u64(f, OP_EXPECT_VERSION);
            too_long(op, "op.key", klen, MAX_RECORD_KEY)?;
            too_long(op, "op.value", vlen, MAX_RECORD_VALUE)?;
            let expect = match f[OP_EXPECT] {
                0 | 1 => {
                    reserved(op, ev == 0, "op.expect_version")?;
                    if f[OP_EXPECT] == 0 {
                        RecordExpect::Any
                    } else {
                        RecordExpect::Absent
                    }
                }
                2 => RecordExpect::Version(ev),
                k => {
                    return Err(BodyError::UnknownFlags {
                        opcode: op,
                        field: "op.expect",
                        bits: k as u32,
                    })
                }
            };
            let key = r.take(klen)?.to_vec();
            let value = if fl & OP_DELETE as u32 != 0 {
                reserved(op, vlen == 0, "op.value_len of a delete")?;
                None
            } else {
                Some(r.take(vlen)?.to_vec())
            };
            ops.push(RecordOpWire { key, expect, value });
        }
        r.finish()?;
        Ok(RecordCommitReq {
            volume: get_u32(b, CQ_VOLUME),
            ballot: get_u64(b, CQ_BALLOT),
            prev: CommitId {
                seq: get_u64(b, CQ_PREV_SEQ),
                tag: get_u64(b, CQ_PREV_TAG),
            },
            tag: get_u64(b, CQ_TAG),
            ops,
        })
    }
}

impl RecordCommitReply {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; CR_LEN];
        let (status, index, found) = match self.outcome {
            CommitOutcome::Applied => (0, 0, 0),
            CommitOutcome::Conflict { index, found } => (1, index, found.unwrap_or(0)),
            CommitOutcome::HeadMismatch => (2, 0, 0),
            CommitOutcome::StaleBallot => (3, 0, 0),
        };
        put_u32(&mut b, CR_STATUS, status);
        put_u32(&mut b, CR_INDEX, index);
        put_u64(&mut b, CR_FOUND, found);
        self.head.put(&mut b, CR_HEAD);
        out.extend_from_slice(&b);
    }

    pub(super) fn decode(b: &[u8]) -> Result<RecordCommitReply, BodyError> {
        let op = Opcode::RecordCommit;
        let r = Reader::new(op, b, CR_LEN)?;
        r.finish()?;
        let index = get_u32(b, CR_INDEX);
        let found = get_u64(b, CR_FOUND);
        let status = get_u32(b, CR_STATUS);
        if status != 1 {
            reserved(op, index == 0 && found == 0, "index/found")?;
        }
        let outcome = match status {
            0 => CommitOutcome::Applied,
            1 => CommitOutcome::Conflict {
                index,
                found: (found != 0).then_some(found),
            },
            2 => CommitOutcome::HeadMismatch,
            3 => CommitOutcome::StaleBallot,
            s => {
                return Err(BodyError::UnknownFlags {
                    opcode: op,
                    field: "status",
                    bits: s,
                })
            }
        };
        Ok(RecordCommitReply {
            outcome,
            head: RecordHead::get(op, b, CR_HEAD)?,
        })
    }
}

// ---------------------------------------------------------------------------
// RecordChanges (0x53)

/// `RecordChanges` request: the keys changed by commits after `since`, at
/// most `limit`; the brick waits up to `wait_ms` for one if there is none.
/// A non-zero `since_tag` asks the brick to check that commit `since` in
/// its log has that tag (a healer asking "am I a prefix of your log?").
///
/// ```text
///  0        4       8       16          24        28         32
///  +--------+-------+-------+-----------+---------+----------+
///  | volume | limit | since | since_tag | wait_ms | reserved |
///  |  u32   |  u32  |  u64  |    u64    |   u32   |  u32=0   |
///  +--------+-------+-------+-----------+---------+----------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordChangesReq {
    pub volume: u32,
    pub limit: u32,
    pub since: u64,
    pub since_tag: u64,
    pub wait_ms: u32,
}
const HQ_VOLUME: usize = 0;
const HQ_LIMIT: usize = 4;
const HQ_SINCE: usize = 8;
const HQ_SINCE_TAG: usize = 16;
const HQ_WAIT: usize = 24;
const HQ_RESERVED: usize = 28;
const HQ_LEN: usize = 32;

/// How a brick answered a `RecordChanges`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedStatus {
    /// 0: the changes after `since` (possibly none).
    Ok,
    /// 1: the feed no longer holds commits that old (`oldest` says from
    /// where it does).
    Gap,
    /// 2: commit `since` in this brick's log does not have `since_tag`.
    Diverged,
}

/// One entry of the change feed: a key changed by commit `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    pub seq: u64,
    pub key: Vec<u8>,
}

/// `RecordChanges` reply.
///
/// ```text
///  0        4       8        16       24
///  +--------+-------+--------+--------+-------------------------------+
///  | status | count | newest | oldest | entries [count]               |
///  |  u32   |  u32  |  u64   |  u64   |                               |
///  +--------+-------+--------+--------+-------------------------------+
/// entry:
///  0     8         10         12
///  +-----+---------+----------+---------+
///  | seq | key_len | reserved | key [k] |
///  | u64 |   u16   |  u16=0   |         |
///  +-----+---------+----------+---------+
/// ```
/// `newest`: the brick's head seq; `oldest`: its feed holds the commits
/// after this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordChangesReply {
    pub status: FeedStatus,
    pub newest: u64,
    pub oldest: u64,
    pub changes: Vec<FeedEntry>,
}
const HR_STATUS: usize = 0;
const HR_COUNT: usize = 4;
const HR_NEWEST: usize = 8;
const HR_OLDEST: usize = 16;
/// Fixed part of a `RecordChanges` reply.
pub const RECORD_CHANGES_FIXED: usize = 24;
const FE_SEQ: usize = 0;
const FE_KEY_LEN: usize = 8;
const FE_RESERVED: usize = 10;
/// Fixed part of a [`FeedEntry`].
pub const FEED_ENTRY_FIXED: usize = 12;

impl RecordChangesReq {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; HQ_LEN];
        put_u32(&mut b, HQ_VOLUME, self.volume);
        put_u32(&mut b, HQ_LIMIT, self.limit);
        put_u64(&mut b, HQ_SINCE, self.since);
        put_u64(&mut b, HQ_SINCE_TAG, self.since_tag);
        put_u32(&mut b, HQ_WAIT, self.wait_ms);
        put_u32(&mut b, HQ_RESERVED, 0);
        out.extend_from_slice(&b);
    }

    pub(super) fn decode(b: &[u8]) -> Result<RecordChangesReq, BodyError> {
        let op = Opcode::RecordChanges;
        Reader::new(op, b, HQ_LEN)?.finish()?;
        reserved(op, get_u32(b, HQ_RESERVED) == 0, "reserved")?;
        Ok(RecordChangesReq {
            volume: get_u32(b, HQ_VOLUME),
            limit: get_u32(b, HQ_LIMIT),
            since: get_u64(b, HQ_SINCE),
            since_tag: get_u64(b, HQ_SINCE_TAG),
            wait_ms: get_u32(b, HQ_WAIT),
        })
    }
}

impl RecordChangesReply {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; RECORD_CHANGES_FIXED];
        let status = match self.status {
            FeedStatus::Ok => 0,
            FeedStatus::Gap => 1,
            FeedStatus::Diverged => 2,
        };
        put_u32(&mut b, HR_STATUS, status);
        put_u32(&mut b, HR_COUNT, self.changes.len() as u32);
        put_u64(&mut b, HR_NEWEST, self.newest);
        put_u64(&mut b, HR_OLDEST, self.oldest);
        out.extend_from_slice(&b);
        for c in &self.changes {
            let mut e = [0u8; FEED_ENTRY_FIXED];
            put_u64(&mut e, FE_SEQ, c.seq);
            put_u16(&mut e, FE_KEY_LEN, c.key.len() as u16);
            put_u16(&mut e, FE_RESERVED, 0);
            out.extend_from_slice(&e);
            out.extend_from_slice(&c.key);
        }
    }

    pub(super) fn decode(b: &[u8]) -> Result<RecordChangesReply, BodyError> {
        let op = Opcode::RecordChanges;
        let mut r = Reader::new(op, b, RECORD_CHANGES_FIXED)?;
        let status = match get_u32(b, HR_STATUS) {
            0 => FeedStatus::Ok,
            1 => FeedStatus::Gap,
            2 => FeedStatus::Diverged,
            s => {
                return Err(BodyError::UnknownFlags {
                    opcode: op,
                    field: "status",
                    bits: s,
                })
            }
        };
        let count = get_u32(b, HR_COUNT) as usize;
        too_long(op, "changes", count, MAX_RECORD_ENTRIES)?;
        let mut changes = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let e = r.take(FEED_ENTRY_FIXED)?;
            reserved(op, get_u16(e, FE_RESERVED) == 0, "entry.reserved")?;
            let klen = get_u16(e, FE_KEY_LEN) as usize;
            too_long(op, "entry.key", klen, MAX_RECORD_KEY)?;
            changes.push(FeedEntry {
                seq: get_u64(e, FE_SEQ),
                key: r.take(klen)?.to_vec(),
            });
        }
        r.finish()?;
        Ok(RecordChangesReply {
            status,
            newest: get_u64(b, HR_NEWEST),
            oldest: get_u64(b, HR_OLDEST),
            changes,
        })
    }
}

// ---------------------------------------------------------------------------
// RecordHead (0x54)

/// What a `RecordHead` request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadOp {
    /// 1: the head, nothing else.
    Query,
    /// 2: promise to refuse commits under ballots below `ballot` (refused
    /// unless `ballot` is above every ballot promised so far); durable
    /// before the reply.
    Promise,
}

/// `RecordHead` request.
///
/// ```text
///  0        4    8        16
///  +--------+----+--------+
///  | volume | op | ballot |
///  |  u32   |u32 |  u64   |
///  +--------+----+--------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeadReq {
    pub volume: u32,
    pub op: HeadOp,
    pub ballot: u64,
}
const HE_VOLUME: usize = 0;
const HE_OP: usize = 4;
const HE_BALLOT: usize = 8;
const HE_LEN: usize = 16;

/// `RecordHead` and `RecordSync` reply: whether the brick did what was
/// asked, and its head after.
///
/// ```text
///  0        4          8
///  +--------+----------+---------------------+
///  | status | reserved | head (RecordHead)   |
///  |  u32   |  u32=0   |        48           |
///  +--------+----------+---------------------+
/// ```
/// `status` 0 done, 1 refused (a promise at or below `promised`; a sync
/// whose base or session does not match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeadReply {
    pub refused: bool,
    pub head: RecordHead,
}
const HP_STATUS: usize = 0;
const HP_RESERVED: usize = 4;
const HP_HEAD: usize = 8;
const HP_LEN: usize = HP_HEAD + RECORD_HEAD_LEN;

impl RecordHeadReq {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; HE_LEN];
        put_u32(&mut b, HE_VOLUME, self.volume);
        let op = match self.op {
            HeadOp::Query => 1,
            HeadOp::Promise => 2,
        };
        put_u32(&mut b, HE_OP, op);
        put_u64(&mut b, HE_BALLOT, self.ballot);
        out.extend_from_slice(&b);
    }

    pub(super) fn decode(b: &[u8]) -> Result<RecordHeadReq, BodyError> {
        let op = Opcode::RecordHead;
        Reader::new(op, b, HE_LEN)?.finish()?;
        let hop = match get_u32(b, HE_OP) {
            1 => HeadOp::Query,
            2 => HeadOp::Promise,
            v => {
                return Err(BodyError::UnknownFlags {
                    opcode: op,
                    field: "op",
                    bits: v,
                })
            }
        };
        Ok(RecordHeadReq {
            volume: get_u32(b, HE_VOLUME),
            op: hop,
            ballot: get_u64(b, HE_BALLOT),
        })
    }
}

impl RecordHeadReply {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; HP_LEN];
        put_u32(&mut b, HP_STATUS, self.refused as u32);
        put_u32(&mut b, HP_RESERVED, 0);
        self.head.put(&mut b, HP_HEAD);
        out.extend_from_slice(&b);
    }

    pub(super) fn decode(op: Opcode, b: &[u8]) -> Result<RecordHeadReply, BodyError> {
        Reader::new(op, b, HP_LEN)?.finish()?;
        reserved(op, get_u32(b, HP_RESERVED) == 0, "reserved")?;
        let refused = match get_u32(b, HP_STATUS) {
            0 => false,
            1 => true,
            s => {
                return Err(BodyError::UnknownFlags {
                    opcode: op,
                    field: "status",
                    bits: s,
                })
            }
        };
        Ok(RecordHeadReply {
            refused,
            head: RecordHead::get(op, b, HP_HEAD)?,
        })
    }
}

// ---------------------------------------------------------------------------
// RecordSync (0x55)

/// `RecordSync` flag: start a sync session `session` (without
/// `SYNC_RESET`, the brick's head must be `base`).
pub const SYNC_BEGIN: u32 = 1;
/// `RecordSync` flag (with `SYNC_BEGIN`): drop every record and the feed
/// of the volume first; the head becomes `(0, 0)`.
pub const SYNC_RESET: u32 = 2;
/// `RecordSync` flag: after the entries, end the session and set the head
/// to `head` (the feed restarts there).
pub const SYNC_FINISH: u32 = 4;
const SYNC_FLAGS: u32 = SYNC_BEGIN | SYNC_RESET | SYNC_FINISH;

/// `RecordSync` request: a healer makes a brick's records equal to a good
/// brick's at commit `head`, page by page in one session; each page is one
/// RVM transaction. Entries are absolute (the record's version and value,
/// or absent), so a page applied twice changes nothing.
///
/// ```text
///  0        4       8         16       24         32         40         48         56            64      68         72
///  +--------+-------+---------+--------+----------+----------+----------+----------+-------------+-------+----------+-----------+
///  | volume | flags | session | ballot | base_seq | base_tag | head_seq | head_tag | head_ballot | count | reserved | entries   |
///  |  u32   |  u32  |   u64   |  u64   |   u64    |   u64    |   u64    |   u64    |     u64     |  u32  |  u32=0   | [count]   |
///  +--------+-------+---------+--------+----------+----------+----------+----------+-------------+-------+----------+-----------+
/// ```
/// Without `SYNC_BEGIN` the brick must be in session `session`. `ballot`
/// is the healer's (promised first, like a sequencer's): a brick that
/// promised a higher one refuses the page, so a healer that lost its
/// ballot can never roll back commits a newer sequencer made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSyncReq {
    pub volume: u32,
    pub flags: u32,
    pub session: u64,
    pub ballot: u64,
    pub base: CommitId,
    pub head: CommitId,
    pub head_ballot: u64,
    pub entries: Vec<RecordEntry>,
}
const SY_VOLUME: usize = 0;
const SY_FLAGS: usize = 4;
const SY_SESSION: usize = 8;
const SY_BALLOT: usize = 16;
const SY_BASE_SEQ: usize = 24;
const SY_BASE_TAG: usize = 32;
const SY_HEAD_SEQ: usize = 40;
const SY_HEAD_TAG: usize = 48;
const SY_HEAD_BALLOT: usize = 56;
const SY_COUNT: usize = 64;
const SY_RESERVED: usize = 68;
/// Fixed part of a `RecordSync` request.
pub const RECORD_SYNC_FIXED: usize = 72;

impl RecordSyncReq {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; RECORD_SYNC_FIXED];
        put_u32(&mut b, SY_VOLUME, self.volume);
        put_u32(&mut b, SY_FLAGS, self.flags);
        put_u64(&mut b, SY_SESSION, self.session);
        put_u64(&mut b, SY_BALLOT, self.ballot);
        put_u64(&mut b, SY_BASE_SEQ, self.base.seq);
        put_u64(&mut b, SY_BASE_TAG, self.base.tag);
        put_u64(&mut b, SY_HEAD_SEQ, self.head.seq);
        put_u64(&mut b, SY_HEAD_TAG, self.head.tag);
        put_u64(&mut b, SY_HEAD_BALLOT, self.head_ballot);
        put_u32(&mut b, SY_COUNT, self.entries.len() as u32);
        put_u32(&mut b, SY_RESERVED, 0);
        out.extend_from_slice(&b);
        for e in &self.entries {
            e.encode(out);
        }
    }

    pub(super) fn decode(b: &[u8]) -> Result<RecordSyncReq, BodyError> {
        let op = Opcode::RecordSync;
        let mut r = Reader::new(op, b, RECORD_SYNC_FIXED)?;
        reserved(op, get_u32(b, SY_RESERVED) == 0, "reserved")?;
        let fl = flags(op, get_u32(b, SY_FLAGS), SYNC_FLAGS, "flags")?;
        let entries = decode_entries(&mut r, get_u32(b, SY_COUNT) as usize, false)?;
        r.finish()?;
        Ok(RecordSyncReq {
            volume: get_u32(b, SY_VOLUME),
            flags: fl,
            session: get_u64(b, SY_SESSION),
            ballot: get_u64(b, SY_BALLOT),
            base: CommitId {
                seq: get_u64(b, SY_BASE_SEQ),
                tag: get_u64(b, SY_BASE_TAG),
            },
            head: CommitId {
                seq: get_u64(b, SY_HEAD_SEQ),
                tag: get_u64(b, SY_HEAD_TAG),
            },
            head_ballot: get_u64(b, SY_HEAD_BALLOT),
            entries,
        })
    }
}
