//! Message bodies: the typed control messages carried in a frame's body.
//!
//! Each body has a fixed layout drawn in its doc comment and mirrored by the
//! offset constants next to it; all integers are little-endian, all
//! reserved bytes are zero on the way out and checked on the way in. A
//! request's reply carries the same opcode with the reply flag set, or
//! [`Opcode::Error`] with an [`ErrorReply`] body.
//!
//! Bulk data never sits inside a body: a body that has data names it with a
//! [`DataRef`], and the frame header's `data_len` must equal the inline length
//! it names.

use super::chunks::{ChunkList, ListChunksReq};
use super::ha::{LeaseReply, LeaseReq, MarksReply, MarksReq};
use super::integrity::{
    ReadBlocksReply, ScrubStatusReply, ScrubStatusReq, VerifyReply, VerifyReq, WriteBlocksReq,
};
use super::records::{
    RecordChangesReply, RecordChangesReq, RecordCommitReply, RecordCommitReq, RecordGetReply,
    RecordGetReq, RecordHeadReply, RecordHeadReq, RecordListReply, RecordListReq, RecordSyncReq,
};
use super::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use thiserror::Error;

/// Message kinds. Replies reuse the request's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Handshake step 1: client nonce / server nonce and proof.
    Hello = 0x01,
    /// Handshake step 2: client proof / accepted.
    Auth = 0x02,
    Ping = 0x03,
    Read = 0x10,
    Write = 0x11,
    Punch = 0x12,
    Zero = 0x13,
    Flush = 0x14,
    Stat = 0x15,
    Remove = 0x16,
    GetVolConfig = 0x20,
    PutVolConfig = 0x21,
    BrickStats = 0x30,
    /// Write lease on an object (see `wire::ha`).
    Lease = 0x40,
    /// Pending and active region marks (see `wire::ha`).
    Marks = 0x41,
    /// The chunks of a volume a brick holds (see `wire::chunks`).
    ListChunks = 0x42,
    /// A write carrying one CRC32C per 4 KiB block (see `wire::integrity`).
    WriteBlocks = 0x43,
    /// A read answered with one CRC32C per 4 KiB block.
    ReadBlocks = 0x44,
    /// Check a chunk range at rest against its stored CRCs (scrub).
    Verify = 0x45,
    /// The last scrub run's counts of a volume (get / put).
    ScrubStatus = 0x46,
    /// One versioned record (see `wire::records`).
    RecordGet = 0x50,
    /// Records by key prefix, in key order.
    RecordList = 0x51,
    /// Guarded all-or-nothing changes of records.
    RecordCommit = 0x52,
    /// The change feed (long poll).
    RecordChanges = 0x53,
    /// A brick's record log head; ballot promises.
    RecordHead = 0x54,
    /// Heal: make a brick's records equal to a good brick's.
    RecordSync = 0x55,
    /// Replies only: the request failed; the body is an [`ErrorReply`].
    Error = 0x7f,
}

impl Opcode {
    /// The opcode for a byte, if it is one.
    pub fn from_u8(v: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match v {
            0x01 => Hello,
            0x02 => Auth,
            0x03 => Ping,
            0x10 => Read,
            0x11 => Write,
            0x12 => Punch,
            0x13 => Zero,
            0x14 => Flush,
            0x15 => Stat,
            0x16 => Remove,
            0x20 => GetVolConfig,
            0x21 => PutVolConfig,
            0x30 => BrickStats,
            0x40 => Lease,
            0x41 => Marks,
            0x42 => ListChunks,
            0x43 => WriteBlocks,
            0x44 => ReadBlocks,
            0x45 => Verify,
            0x46 => ScrubStatus,
            0x50 => RecordGet,
            0x51 => RecordList,
            0x52 => RecordCommit,
            0x53 => RecordChanges,
            0x54 => RecordHead,
            0x55 => RecordSync,
            0x7f => Error,
            _ => return None,
        })
    }
}

/// A body that is not well-formed. The frame around it was fine, so the
/// receiver answers with an error reply and keeps the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BodyError {
    #[error("unknown opcode {opcode:#04x}")]
    UnknownOpcode { opcode: u8 },
    #[error("{opcode:?} is a reply-only opcode but came in a request")]
    NotARequest { opcode: Opcode },
    #[error("opcode {opcode:#04x} came as a reply where a request was expected")]
    UnexpectedReply { opcode: u8 },
    #[error("opcode {opcode:#04x} came as a request where a reply was expected")]
    UnexpectedRequest { opcode: u8 },
    #[error("{opcode:?} body is {found} bytes, expected {expected}")]
    Length {
        opcode: Opcode,
        expected: usize,
        found: usize,
    },
    #[error("{opcode:?}: reserved field `{field}` is not zero")]
    Reserved { opcode: Opcode, field: &'static str },
    #[error("{opcode:?}: unknown bits {bits:#x} in `{field}`")]
    UnknownFlags {
        opcode: Opcode,
        field: &'static str,
        bits: u32,
    },
    #[error("{opcode:?}: bad data reference kind {kind}")]
    DataRefKind { opcode: Opcode, kind: u8 },
    #[error("{opcode:?}: frame announces {announced} data bytes but the body names {named}")]
    DataLen {
        opcode: Opcode,
        announced: u32,
        named: u32,
    },
    #[error("{opcode:?}: `{field}` of {len} bytes is over the limit of {max}")]
    TooLong {
        opcode: Opcode,
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{opcode:?}: `{field}` is not UTF-8")]
    NotUtf8 { opcode: Opcode, field: &'static str },
}

/// Names an object chunk on the wire: the object's Fid (volume, vnode,
/// uniquifier, as in Coda) and the chunk index inside it.
///
/// ```text
///  0        4        8        12       16                24
///  +--------+--------+--------+--------+-----------------+
///  | volume | vnode  | unique |reserved|      chunk      |
///  |  u32   |  u32   |  u32   |  u32=0 |       u64       |
///  +--------+--------+--------+--------+-----------------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub volume: u32,
    pub vnode: u32,
    pub unique: u32,
    pub chunk: u64,
}

impl ObjectId {
    /// Encoded size in bytes.
    pub const LEN: usize = 24;
    const VOLUME: usize = 0;
    const VNODE: usize = 4;
    const UNIQUE: usize = 8;
    const RESERVED: usize = 12;
    const CHUNK: usize = 16;

    pub(super) fn put(&self, b: &mut [u8], at: usize) {
        put_u32(b, at + Self::VOLUME, self.volume);
        put_u32(b, at + Self::VNODE, self.vnode);
        put_u32(b, at + Self::UNIQUE, self.unique);
        put_u32(b, at + Self::RESERVED, 0);
        put_u64(b, at + Self::CHUNK, self.chunk);
    }

    pub(super) fn get(b: &[u8], at: usize, opcode: Opcode) -> Result<ObjectId, BodyError> {
        if get_u32(b, at + Self::RESERVED) != 0 {
            return Err(BodyError::Reserved {
                opcode,
                field: "object.reserved",
            });
        }
        Ok(ObjectId {
            volume: get_u32(b, at + Self::VOLUME),
            vnode: get_u32(b, at + Self::VNODE),
            unique: get_u32(b, at + Self::UNIQUE),
            chunk: get_u64(b, at + Self::CHUNK),
        })
    }
}

/// Where a message's bulk data is.
///
/// ```text
///  0    1           4        8                16       20         24
///  +----+-----------+--------+----------------+--------+----------+
///  |kind| reserved  |  len   |      addr      |  rkey  | reserved |
///  | u8 | 3 bytes=0 |  u32   |      u64       |  u32   |  u32=0   |
///  +----+-----------+--------+----------------+--------+----------+
/// ```
///
/// `kind` 0 = none (len, addr, rkey zero), 1 = inline (addr, rkey zero),
/// 2 = remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataRef {
    /// No data with this message.
    #[default]
    None,
    /// `len` bytes follow the body on the stream (TCP).
    Inline { len: u32 },
    /// The data is in the peer's registered memory (RDMA): the receiver
    /// fetches it (a write's source) or fills it (a read's sink) with
    /// one-sided RDMA.
    Remote { addr: u64, len: u32, rkey: u32 },
}

impl DataRef {
    /// Encoded size in bytes.
    pub const LEN: usize = 24;
    const KIND: usize = 0;
    const RESERVED0: usize = 1;
    const DLEN: usize = 4;
    const ADDR: usize = 8;
    const RKEY: usize = 16;
    const RESERVED1: usize = 20;
    const KIND_NONE: u8 = 0;
    const KIND_INLINE: u8 = 1;
    const KIND_REMOTE: u8 = 2;

    /// Bytes that follow the body inline.
    pub fn inline_len(&self) -> u32 {
        match self {
            DataRef::Inline { len } => *len,
            _ => 0,
        }
    }

    pub(super) fn put(&self, b: &mut [u8], at: usize) {
        let (kind, len, addr, rkey) = match *self {
            DataRef::None => (Self::KIND_NONE, 0, 0, 0),
            DataRef::Inline { len } => (Self::KIND_INLINE, len, 0, 0),
            DataRef::Remote { addr, len, rkey } => (Self::KIND_REMOTE, len, addr, rkey),
        };
        b[at + Self::KIND] = kind;
        b[at + Self::RESERVED0..at + Self::DLEN].fill(0);
        put_u32(b, at + Self::DLEN, len);
        put_u64(b, at + Self::ADDR, addr);
        put_u32(b, at + Self::RKEY, rkey);
        put_u32(b, at + Self::RESERVED1, 0);
    }

    pub(super) fn get(b: &[u8], at: usize, opcode: Opcode) -> Result<DataRef, BodyError> {
        let reserved = |field| BodyError::Reserved { opcode, field };
        if b[at + Self::RESERVED0..at + Self::DLEN] != [0, 0, 0]
            || get_u32(b, at + Self::RESERVED1) != 0
        {
            return Err(reserved("data.reserved"));
        }
        let len = get_u32(b, at + Self::DLEN);
        let addr = get_u64(b, at + Self::ADDR);
        let rkey = get_u32(b, at + Self::RKEY);
        match b[at + Self::KIND] {
            Self::KIND_NONE if len == 0 && addr == 0 && rkey == 0 => Ok(DataRef::None),
            Self::KIND_NONE => Err(reserved("data.none_fields")),
            Self::KIND_INLINE if addr == 0 && rkey == 0 => Ok(DataRef::Inline { len }),
            Self::KIND_INLINE => Err(reserved("data.inline_fields")),
            Self::KIND_REMOTE => Ok(DataRef::Remote { addr, len, rkey }),
            kind => Err(BodyError::DataRefKind { opcode, kind }),
        }
    }
}

/// Length of the nonces and proofs of the handshake.
pub const NONCE_LEN: usize = 32;
/// Length of an HMAC-SHA256 proof.
pub const PROOF_LEN: usize = 32;

/// Handshake step 1, client to server (`Hello` request): the client's fresh
/// nonce. Body: `client_nonce [u8; 32]` at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub client_nonce: [u8; NONCE_LEN],
}

/// Handshake step 1, server to client (`Hello` reply): the server's fresh
/// nonce and its proof of the secret.
///
/// ```text
///  0                 32                64
///  +-----------------+-----------------+
///  |  server_nonce   |  server_proof   |
///  +-----------------+-----------------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    pub server_nonce: [u8; NONCE_LEN],
    pub server_proof: [u8; PROOF_LEN],
}
const CH_NONCE: usize = 0;
const CH_PROOF: usize = 32;
const CH_LEN: usize = 64;

/// Handshake step 2, client to server (`Auth` request): the client's proof.
/// Body: `client_proof [u8; 32]` at 0. The reply is an empty `Auth` reply
/// ([`Response::AuthOk`]) or an error `NotAuthenticated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthProof {
    pub client_proof: [u8; PROOF_LEN],
}

/// `Ping` request and reply: the reply echoes the token. Body: `token u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    pub token: u64,
}

/// Write flag: the data must be durable before the reply (force unit access).
pub const FLAG_FUA: u32 = 1 << 0;

/// `Read` request: `len` bytes of an object chunk at `offset`.
///
/// ```text
///  0          24         32     36      40             64
///  +----------+----------+------+-------+--------------+
///  | object   |  offset  | len  | flags |   data ref   |
///  | ObjectId |   u64    | u32  | u32=0 |   DataRef    |
///  +----------+----------+------+-------+--------------+
/// ```
/// `data` is where the answer goes: none on TCP (it follows the reply),
/// the caller's registered buffer on RDMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReq {
    pub object: ObjectId,
    pub offset: u64,
    pub len: u32,
    pub data: DataRef,
}
const RD_OBJECT: usize = 0;
const RD_OFFSET: usize = 24;
const RD_LEN: usize = 32;
const RD_FLAGS: usize = 36;
const RD_DATA: usize = 40;
const RD_SIZE: usize = 64;

/// `Read` reply: the data read and its CRC32C (computed where the data was
/// stored, checked by whoever consumes it).
///
/// ```text
///  0              24       28         32
///  +--------------+--------+----------+
///  |   data ref   | crc32c | reserved |
///  |   DataRef    |  u32   |  u32=0   |
///  +--------------+--------+----------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReply {
    pub data: DataRef,
    pub crc32c: u32,
}
const RR_DATA: usize = 0;
const RR_CRC: usize = 24;
const RR_RESERVED: usize = 28;
const RR_SIZE: usize = 32;

/// `Write` request: the data at `offset` of an object chunk.
///
/// ```text
///  0          24         32         40      44       48             72
///  +----------+----------+----------+-------+--------+--------------+
///  | object   |  offset  |  epoch   | flags | crc32c |   data ref   |
///  | ObjectId |   u64    |   u64    |  u32  |  u32   |   DataRef    |
///  +----------+----------+----------+-------+--------+--------------+
/// ```
/// `epoch` is the writer's lease epoch (0 = none); `flags` may hold
/// [`FLAG_FUA`]; `crc32c` covers the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteReq {
    pub object: ObjectId,
    pub offset: u64,
    pub epoch: u64,
    pub flags: u32,
    pub crc32c: u32,
    pub data: DataRef,
}
const WR_OBJECT: usize = 0;
const WR_OFFSET: usize = 24;
const WR_EPOCH: usize = 32;
const WR_FLAGS: usize = 40;
const WR_CRC: usize = 44;
const WR_DATA: usize = 48;
pub(super) const WR_SIZE: usize = 72;

/// `Write` reply: bytes written. Body: `written u32` at 0, reserved u32 at 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteReply {
    pub written: u32,
}
const WRR_WRITTEN: usize = 0;
const WRR_RESERVED: usize = 4;
const WRR_SIZE: usize = 8;

/// `Punch` (deallocate) and `Zero` requests: a byte range of an object
/// chunk. Replies have an empty body.
///
/// ```text
///  0          24         32         40         48      52         56
///  +----------+----------+----------+----------+-------+----------+
///  | object   |  offset  |   len    |  epoch   | flags | reserved |
///  | ObjectId |   u64    |   u64    |   u64    |  u32  |  u32=0   |
///  +----------+----------+----------+----------+-------+----------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeReq {
    pub object: ObjectId,
    pub offset: u64,
    pub len: u64,
    pub epoch: u64,
    pub flags: u32,
}
const RG_OBJECT: usize = 0;
const RG_OFFSET: usize = 24;
const RG_LEN: usize = 32;
const RG_EPOCH: usize = 40;
const RG_FLAGS: usize = 48;
const RG_RESERVED: usize = 52;
const RG_SIZE: usize = 56;

/// `Flush`, `Stat` requests: one object chunk. Body: `ObjectId` at 0
/// (24 bytes). The `Flush` reply is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectReq {
    pub object: ObjectId,
}

/// `Stat` reply.
///
/// ```text
///  0          8           16         24
///  +----------+-----------+----------+
///  |   size   | allocated | version  |
///  |   u64    |    u64    |   u64    |
///  +----------+-----------+----------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatReply {
    pub size: u64,
    pub allocated: u64,
    pub version: u64,
}
const ST_SIZE: usize = 0;
const ST_ALLOCATED: usize = 8;
const ST_VERSION: usize = 16;
const ST_LEN: usize = 24;

/// `Remove` request: `ObjectId` at 0, `epoch u64` at 24 (32 bytes). The
/// reply is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoveReq {
    pub object: ObjectId,
    pub epoch: u64,
}
const RM_OBJECT: usize = 0;
const RM_EPOCH: usize = 24;
const RM_SIZE: usize = 32;

/// Largest volume configuration carried in a body.
pub const MAX_CONFIG_LEN: usize = 60 * 1024;

/// `GetVolConfig` request: `volume u32` at 0, reserved u32 at 4 (8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetVolConfig {
    pub volume: u32,
}
const GV_VOLUME: usize = 0;
const GV_RESERVED: usize = 4;
const GV_SIZE: usize = 8;

/// `GetVolConfig` reply: the stored configuration (opaque to the transport)
/// and its generation.
///
/// ```text
///  0            8       12         16
///  +------------+-------+----------+----------------+
///  | generation |  len  | reserved | config [len]   |
///  |    u64     |  u32  |  u32=0   |                |
///  +------------+-------+----------+----------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolConfig {
    pub generation: u64,
    pub config: Vec<u8>,
}
const VC_GENERATION: usize = 0;
const VC_LEN: usize = 8;
const VC_RESERVED: usize = 12;
const VC_FIXED: usize = 16;

/// `PutVolConfig` request: store `config` as `generation` for `volume`.
///
/// ```text
///  0        4          8            16      20         24
///  +--------+----------+------------+-------+----------+--------------+
///  | volume | reserved | generation |  len  | reserved | config [len] |
///  |  u32   |  u32=0   |    u64     |  u32  |  u32=0   |              |
///  +--------+----------+------------+-------+----------+--------------+
/// ```
/// The reply ([`Response::VolConfigStored`]) is `generation u64`: the
/// generation now stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutVolConfig {
    pub volume: u32,
    pub generation: u64,
    pub config: Vec<u8>,
}
const PV_VOLUME: usize = 0;
const PV_RESERVED0: usize = 4;
const PV_GENERATION: usize = 8;
const PV_LEN: usize = 16;
const PV_RESERVED1: usize = 20;
const PV_FIXED: usize = 24;

/// `BrickStats` reply: counters since the brick started. The request body
/// is empty.
///
/// ```text
///  0       8        16       24      32       40          48            56          64        72
///  +-------+--------+--------+-------+--------+-----------+-------------+-----------+---------+
///  |uptime |requests| errors | reads | writes |read_bytes |written_bytes|capacity   |free     |
///  | secs  |        |        |       |        |           |             |  _bytes   | _bytes  |
///  +-------+--------+--------+-------+--------+-----------+-------------+-----------+---------+
///  72                                                                              72 + 8 * 24
///  +--------------------------------------------------------------------------------+
///  | latency[0..LATENCY_BUCKETS]: requests whose handling took [2^(i-1), 2^i) µs      |
///  | (bucket 0: under 1 µs; the last bucket: everything longer)                      |
///  +--------------------------------------------------------------------------------+
/// ```
/// All fields u64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BrickStats {
    pub uptime_secs: u64,
    pub requests: u64,
    pub errors: u64,
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// Request latency histogram, power-of-two buckets in microseconds.
    pub latency: [u64; LATENCY_BUCKETS],
    /// 4 KiB blocks found at rest not matching their stored CRC32C (reads
    /// answered `Corrupt`, scrub verifies). At offset [`BS_CORRUPT`]; a
    /// 264-byte reply from an older brick decodes with 0 here.
    pub corrupt_blocks: u64,
}
/// Buckets of the brick's latency histogram (the last one is 2^22 µs ≈ 4 s
/// and longer).
pub const LATENCY_BUCKETS: usize = 24;
const BS_COUNTERS: usize = 9;
const BS_FIELDS: usize = BS_COUNTERS + LATENCY_BUCKETS;
/// Length of the reply before `corrupt_blocks` was added (still accepted).
const BS_LEN_V1: usize = BS_FIELDS * 8;
/// Offset of `corrupt_blocks`, after the histogram.
const BS_CORRUPT: usize = BS_LEN_V1;
const BS_LEN: usize = BS_CORRUPT + 8;

impl BrickStats {
    fn fields(&self) -> [u64; BS_FIELDS] {
        let counters = [
            self.uptime_secs,
            self.requests,
            self.errors,
            self.reads,
            self.writes,
            self.read_bytes,
            self.written_bytes,
            self.capacity_bytes,
            self.free_bytes,
        ];
        std::array::from_fn(|i| {
            if i < BS_COUNTERS {
                counters[i]
            } else {
                self.latency[i - BS_COUNTERS]
            }
        })
    }

    pub(crate) fn from_fields(f: [u64; BS_FIELDS]) -> BrickStats {
        BrickStats {
            uptime_secs: f[0],
            requests: f[1],
            errors: f[2],
            reads: f[3],
            writes: f[4],
            read_bytes: f[5],
            written_bytes: f[6],
            capacity_bytes: f[7],
            free_bytes: f[8],
            latency: std::array::from_fn(|i| f[BS_COUNTERS + i]),
            corrupt_blocks: 0,
        }
    }
}

/// Stable error codes of error replies. The numbers never change meaning;
/// new codes get new numbers, and a code this side does not know decodes as
/// [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: the object (or volume configuration) does not exist.
    NotFound,
    /// 2: the request is malformed or its arguments are out of range.
    Invalid,
    /// 3: the brick's disk failed the operation.
    Io,
    /// 4: no space left on the brick.
    NoSpace,
    /// 5: the request's lease epoch or generation is older than the brick's.
    StaleEpoch,
    /// 6: the connection has not authenticated (or failed to).
    NotAuthenticated,
    /// 7: a size is over a limit.
    TooLarge,
    /// 8: the opcode or a flag is not supported by this brick.
    Unsupported,
    /// 9: the brick is shutting down.
    ShuttingDown,
    /// 10: the brick is overloaded; try again later.
    Busy,
    /// 11: data failed its checksum.
    Checksum,
    /// 12: the object already exists.
    Exists,
    /// 13: a bug on the brick.
    Internal,
    /// 14: data at rest on the brick does not match its stored per-block
    /// CRC32C (bit rot, a torn write, a changed file). The caller should
    /// read the range from redundancy (another replica; for a dispersed
    /// volume: treat the fragment as missing) and repair this brick.
    Corrupt,
    /// A code this side does not know.
    Other(u16),
}

impl ErrorCode {
    /// The code's number on the wire.
    pub fn code(self) -> u16 {
        use ErrorCode::*;
        match self {
            NotFound => 1,
            Invalid => 2,
            Io => 3,
            NoSpace => 4,
            StaleEpoch => 5,
            NotAuthenticated => 6,
            TooLarge => 7,
            Unsupported => 8,
            ShuttingDown => 9,
            Busy => 10,
            Checksum => 11,
            Exists => 12,
            Internal => 13,
            Corrupt => 14,
            Other(c) => c,
        }
    }

    /// The code for a wire number.
    pub fn from_code(c: u16) -> ErrorCode {
        use ErrorCode::*;
        match c {
            1 => NotFound,
            2 => Invalid,
            3 => Io,
            4 => NoSpace,
            5 => StaleEpoch,
            6 => NotAuthenticated,
            7 => TooLarge,
            8 => Unsupported,
            9 => ShuttingDown,
            10 => Busy,
            11 => Checksum,
            12 => Exists,
            13 => Internal,
            14 => Corrupt,
            c => Other(c),
        }
    }
}

/// Longest message in an error reply.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Error reply: a code and a short human-readable message (UTF-8, for logs).
///
/// ```text
///  0      2       4          8
///  +------+-------+----------+---------------+
///  | code |  len  | reserved | message [len] |
///  | u16  |  u16  |  u32=0   |    UTF-8      |
///  +------+-------+----------+---------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}
const ER_CODE: usize = 0;
const ER_LEN: usize = 2;
const ER_RESERVED: usize = 4;
const ER_FIXED: usize = 8;

impl ErrorReply {
    /// An error reply; the message is cut to [`MAX_ERROR_MESSAGE`] bytes (at
    /// a character boundary).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        ErrorReply { code, message }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} ({}): {}",
            self.code,
            self.code.code(),
            self.message
        )
    }
}

/// A request, client to server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Hello(Hello),
    Auth(AuthProof),
    Ping(Ping),
    Read(ReadReq),
    Write(WriteReq),
    Punch(RangeReq),
    Zero(RangeReq),
    Flush(ObjectReq),
    Stat(ObjectReq),
    Remove(RemoveReq),
    GetVolConfig(GetVolConfig),
    PutVolConfig(PutVolConfig),
    BrickStats,
    Lease(LeaseReq),
    Marks(MarksReq),
    ListChunks(ListChunksReq),
    WriteBlocks(WriteBlocksReq),
    ReadBlocks(ReadReq),
    Verify(VerifyReq),
    ScrubStatus(ScrubStatusReq),
    RecordGet(RecordGetReq),
    RecordList(RecordListReq),
    RecordCommit(RecordCommitReq),
    RecordChanges(RecordChangesReq),
    RecordHead(RecordHeadReq),
    RecordSync(RecordSyncReq),
}

/// A reply, server to client. `Error` may answer any request.
// `BrickStats` (272 bytes) is the large one; it is rare and short-lived, so
// boxing it would cost every user a change for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Reply to `Hello`.
    Challenge(Challenge),
    /// Reply to `Auth`: the client is authenticated.
    AuthOk,
    Pong(Ping),
    Read(ReadReply),
    Write(WriteReply),
    Punch,
    Zero,
    Flush,
    Stat(StatReply),
    Remove,
    VolConfig(VolConfig),
    /// Reply to `PutVolConfig`: the generation now stored.
    VolConfigStored {
        generation: u64,
    },
    BrickStats(BrickStats),
    Lease(LeaseReply),
    Marks(MarksReply),
    ListChunks(ChunkList),
    /// Reply to `WriteBlocks`.
    WriteBlocks(WriteReply),
    ReadBlocks(ReadBlocksReply),
    Verify(VerifyReply),
    ScrubStatus(ScrubStatusReply),
    RecordGet(RecordGetReply),
    RecordList(RecordListReply),
    RecordCommit(RecordCommitReply),
    RecordChanges(RecordChangesReply),
    RecordHead(RecordHeadReply),
    RecordSync(RecordHeadReply),
    Error(ErrorReply),
}

pub(super) fn expect_len(opcode: Opcode, body: &[u8], expected: usize) -> Result<(), BodyError> {
    if body.len() != expected {
        return Err(BodyError::Length {
            opcode,
            expected,
            found: body.len(),
        });
    }
    Ok(())
}

pub(super) fn expect_zero32(
    opcode: Opcode,
    b: &[u8],
    at: usize,
    field: &'static str,
) -> Result<(), BodyError> {
    if get_u32(b, at) != 0 {
        return Err(BodyError::Reserved { opcode, field });
    }
    Ok(())
}

fn check_flags(opcode: Opcode, flags: u32, known: u32) -> Result<u32, BodyError> {
    if flags & !known != 0 {
        return Err(BodyError::UnknownFlags {
            opcode,
            field: "flags",
            bits: flags & !known,
        });
    }
    Ok(flags)
}

fn array32(b: &[u8], at: usize) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[at..at + 32]);
    a
}

fn check_data_len(opcode: Opcode, announced: u32, named: u32) -> Result<(), BodyError> {
    if announced != named {
        return Err(BodyError::DataLen {
            opcode,
            announced,
            named,
        });
    }
    Ok(())
}

fn encode_range(r: &RangeReq, out: &mut Vec<u8>) {
    let mut b = [0u8; RG_SIZE];
    r.object.put(&mut b, RG_OBJECT);
    put_u64(&mut b, RG_OFFSET, r.offset);
    put_u64(&mut b, RG_LEN, r.len);
    put_u64(&mut b, RG_EPOCH, r.epoch);
    put_u32(&mut b, RG_FLAGS, r.flags);
    put_u32(&mut b, RG_RESERVED, 0);
    out.extend_from_slice(&b);
}

fn decode_range(op: Opcode, b: &[u8]) -> Result<RangeReq, BodyError> {
    expect_len(op, b, RG_SIZE)?;
    expect_zero32(op, b, RG_RESERVED, "reserved")?;
    Ok(RangeReq {
        object: ObjectId::get(b, RG_OBJECT, op)?,
        offset: get_u64(b, RG_OFFSET),
        len: get_u64(b, RG_LEN),
        epoch: get_u64(b, RG_EPOCH),
        flags: check_flags(op, get_u32(b, RG_FLAGS), FLAG_FUA)?,
    })
}

fn encode_object(o: &ObjectId, out: &mut Vec<u8>) {
    let mut b = [0u8; ObjectId::LEN];
    o.put(&mut b, 0);
    out.extend_from_slice(&b);
}

fn decode_object(op: Opcode, b: &[u8]) -> Result<ObjectReq, BodyError> {
    expect_len(op, b, ObjectId::LEN)?;
    Ok(ObjectReq {
        object: ObjectId::get(b, 0, op)?,
    })
}

fn check_config(op: Opcode, len: usize) -> Result<(), BodyError> {
    if len > MAX_CONFIG_LEN {
        return Err(BodyError::TooLong {
            opcode: op,
            field: "config",
            len,
            max: MAX_CONFIG_LEN,
        });
    }
    Ok(())
}

/// The `Read` body layout, shared by `Read` and `ReadBlocks`.
fn encode_read(r: &ReadReq, out: &mut Vec<u8>) {
    let mut b = [0u8; RD_SIZE];
    r.object.put(&mut b, RD_OBJECT);
    put_u64(&mut b, RD_OFFSET, r.offset);
    put_u32(&mut b, RD_LEN, r.len);
    put_u32(&mut b, RD_FLAGS, 0);
    r.data.put(&mut b, RD_DATA);
    out.extend_from_slice(&b);
}

fn decode_read(op: Opcode, b: &[u8]) -> Result<ReadReq, BodyError> {
    expect_len(op, b, RD_SIZE)?;
    expect_zero32(op, b, RD_FLAGS, "flags")?;
    Ok(ReadReq {
        object: ObjectId::get(b, RD_OBJECT, op)?,
        offset: get_u64(b, RD_OFFSET),
        len: get_u32(b, RD_LEN),
        data: DataRef::get(b, RD_DATA, op)?,
    })
}

/// The `Write` body layout ([`WR_SIZE`] bytes), shared by `Write` and the
/// head of `WriteBlocks`.
pub(super) fn encode_write(w: &WriteReq, out: &mut Vec<u8>) {
    let mut b = [0u8; WR_SIZE];
    w.object.put(&mut b, WR_OBJECT);
    put_u64(&mut b, WR_OFFSET, w.offset);
    put_u64(&mut b, WR_EPOCH, w.epoch);
    put_u32(&mut b, WR_FLAGS, w.flags);
    put_u32(&mut b, WR_CRC, w.crc32c);
    w.data.put(&mut b, WR_DATA);
    out.extend_from_slice(&b);
}

/// Decodes the first [`WR_SIZE`] bytes of `b` as a `Write` body (the caller
/// checked the length).
pub(super) fn decode_write(op: Opcode, b: &[u8]) -> Result<WriteReq, BodyError> {
    Ok(WriteReq {
        object: ObjectId::get(b, WR_OBJECT, op)?,
        offset: get_u64(b, WR_OFFSET),
        epoch: get_u64(b, WR_EPOCH),
        flags: check_flags(op, get_u32(b, WR_FLAGS), FLAG_FUA)?,
        crc32c: get_u32(b, WR_CRC),
        data: DataRef::get(b, WR_DATA, op)?,
    })
}

impl Request {
    /// The request's opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Hello(_) => Opcode::Hello,
            Request::Auth(_) => Opcode::Auth,
            Request::Ping(_) => Opcode::Ping,
            Request::Read(_) => Opcode::Read,
            Request::Write(_) => Opcode::Write,
            Request::Punch(_) => Opcode::Punch,
            Request::Zero(_) => Opcode::Zero,
            Request::Flush(_) => Opcode::Flush,
            Request::Stat(_) => Opcode::Stat,
            Request::Remove(_) => Opcode::Remove,
            Request::GetVolConfig(_) => Opcode::GetVolConfig,
            Request::PutVolConfig(_) => Opcode::PutVolConfig,
            Request::BrickStats => Opcode::BrickStats,
            Request::Lease(_) => Opcode::Lease,
            Request::Marks(_) => Opcode::Marks,
            Request::ListChunks(_) => Opcode::ListChunks,
            Request::WriteBlocks(_) => Opcode::WriteBlocks,
            Request::ReadBlocks(_) => Opcode::ReadBlocks,
            Request::Verify(_) => Opcode::Verify,
            Request::ScrubStatus(_) => Opcode::ScrubStatus,
            Request::RecordGet(_) => Opcode::RecordGet,
            Request::RecordList(_) => Opcode::RecordList,
            Request::RecordCommit(_) => Opcode::RecordCommit,
            Request::RecordChanges(_) => Opcode::RecordChanges,
            Request::RecordHead(_) => Opcode::RecordHead,
            Request::RecordSync(_) => Opcode::RecordSync,
        }
    }

    /// The request's data reference, for requests that can carry one.
    pub fn data_ref(&self) -> Option<&DataRef> {
        match self {
            Request::Read(r) | Request::ReadBlocks(r) => Some(&r.data),
            Request::Write(w) => Some(&w.data),
            Request::WriteBlocks(w) => Some(&w.write.data),
            _ => None,
        }
    }

    /// Mutable data reference: the transport fills it from the call's payload.
    pub fn data_ref_mut(&mut self) -> Option<&mut DataRef> {
        match self {
            Request::Read(r) | Request::ReadBlocks(r) => Some(&mut r.data),
            Request::Write(w) => Some(&mut w.data),
            Request::WriteBlocks(w) => Some(&mut w.write.data),
            _ => None,
        }
    }

    /// Bytes that follow this request's body inline.
    pub fn inline_data_len(&self) -> u32 {
        self.data_ref().map_or(0, DataRef::inline_len)
    }

    /// Appends the body bytes to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Request::Hello(h) => out.extend_from_slice(&h.client_nonce),
            Request::Auth(a) => out.extend_from_slice(&a.client_proof),
            Request::Ping(p) => out.extend_from_slice(&p.token.to_le_bytes()),
            Request::Read(r) | Request::ReadBlocks(r) => encode_read(r, out),
            Request::Write(w) => encode_write(w, out),
            Request::WriteBlocks(w) => w.encode(out),
            Request::Verify(v) => v.encode(out),
            Request::ScrubStatus(q) => q.encode(out),
            Request::Punch(r) | Request::Zero(r) => encode_range(r, out),
            Request::Flush(o) | Request::Stat(o) => encode_object(&o.object, out),
            Request::Remove(r) => {
                let mut b = [0u8; RM_SIZE];
                r.object.put(&mut b, RM_OBJECT);
                put_u64(&mut b, RM_EPOCH, r.epoch);
                out.extend_from_slice(&b);
            }
            Request::GetVolConfig(g) => {
                let mut b = [0u8; GV_SIZE];
                put_u32(&mut b, GV_VOLUME, g.volume);
                put_u32(&mut b, GV_RESERVED, 0);
                out.extend_from_slice(&b);
            }
            Request::PutVolConfig(p) => {
                let mut b = [0u8; PV_FIXED];
                put_u32(&mut b, PV_VOLUME, p.volume);
                put_u32(&mut b, PV_RESERVED0, 0);
                put_u64(&mut b, PV_GENERATION, p.generation);
                // Bounded by MAX_CONFIG_LEN when built through the API; an
                // oversized config is refused by the peer's decoder.
                put_u32(&mut b, PV_LEN, p.config.len() as u32);
                put_u32(&mut b, PV_RESERVED1, 0);
                out.extend_from_slice(&b);
                out.extend_from_slice(&p.config);
            }
            Request::BrickStats => {}
            Request::Lease(l) => l.encode(out),
            Request::Marks(m) => m.encode(out),
            Request::ListChunks(l) => l.encode(out),
            Request::RecordGet(r) => r.encode(out),
            Request::RecordList(r) => r.encode(out),
            Request::RecordCommit(r) => r.encode(out),
            Request::RecordChanges(r) => r.encode(out),
            Request::RecordHead(r) => r.encode(out),
            Request::RecordSync(r) => r.encode(out),
        }
    }

    /// Decodes a request body; `data_len` is the frame's announced data
    /// length, which must match the body's inline data reference.
    pub fn decode(opcode: u8, b: &[u8], data_len: u32) -> Result<Request, BodyError> {
        let op = Opcode::from_u8(opcode).ok_or(BodyError::UnknownOpcode { opcode })?;
        let req = match op {
            Opcode::Hello => {
                expect_len(op, b, NONCE_LEN)?;
                Request::Hello(Hello {
                    client_nonce: array32(b, 0),
                })
            }
            Opcode::Auth => {
                expect_len(op, b, PROOF_LEN)?;
                Request::Auth(AuthProof {
                    client_proof: array32(b, 0),
                })
            }
            Opcode::Ping => {
                expect_len(op, b, 8)?;
                Request::Ping(Ping {
                    token: get_u64(b, 0),
                })
            }
            Opcode::Read => Request::Read(decode_read(op, b)?),
            Opcode::ReadBlocks => Request::ReadBlocks(decode_read(op, b)?),
            Opcode::Write => {
                expect_len(op, b, WR_SIZE)?;
                Request::Write(decode_write(op, b)?)
            }
            Opcode::WriteBlocks => Request::WriteBlocks(WriteBlocksReq::decode(b)?),
            Opcode::Verify => Request::Verify(VerifyReq::decode(b)?),
            Opcode::ScrubStatus => Request::ScrubStatus(ScrubStatusReq::decode(b)?),
            Opcode::Punch => Request::Punch(decode_range(op, b)?),
            Opcode::Zero => Request::Zero(decode_range(op, b)?),
            Opcode::Flush => Request::Flush(decode_object(op, b)?),
            Opcode::Stat => Request::Stat(decode_object(op, b)?),
            Opcode::Remove => {
                expect_len(op, b, RM_SIZE)?;
                Request::Remove(RemoveReq {
                    object: ObjectId::get(b, RM_OBJECT, op)?,
                    epoch: get_u64(b, RM_EPOCH),
                })
            }
            Opcode::GetVolConfig => {
                expect_len(op, b, GV_SIZE)?;
                expect_zero32(op, b, GV_RESERVED, "reserved")?;
                Request::GetVolConfig(GetVolConfig {
                    volume: get_u32(b, GV_VOLUME),
                })
            }
            Opcode::PutVolConfig => {
                if b.len() < PV_FIXED {
                    return Err(BodyError::Length {
                        opcode: op,
                        expected: PV_FIXED,
                        found: b.len(),
                    });
                }
                expect_zero32(op, b, PV_RESERVED0, "reserved0")?;
                expect_zero32(op, b, PV_RESERVED1, "reserved1")?;
                let len = get_u32(b, PV_LEN) as usize;
                check_config(op, len)?;
                expect_len(op, b, PV_FIXED + len)?;
                Request::PutVolConfig(PutVolConfig {
                    volume: get_u32(b, PV_VOLUME),
                    generation: get_u64(b, PV_GENERATION),
                    config: b[PV_FIXED..].to_vec(),
                })
            }
            Opcode::BrickStats => {
                expect_len(op, b, 0)?;
                Request::BrickStats
            }
            Opcode::Lease => Request::Lease(LeaseReq::decode(b)?),
            Opcode::Marks => Request::Marks(MarksReq::decode(b)?),
            Opcode::ListChunks => Request::ListChunks(ListChunksReq::decode(b)?),
            Opcode::RecordGet => Request::RecordGet(RecordGetReq::decode(b)?),
            Opcode::RecordList => Request::RecordList(RecordListReq::decode(b)?),
            Opcode::RecordCommit => Request::RecordCommit(RecordCommitReq::decode(b)?),
            Opcode::RecordChanges => Request::RecordChanges(RecordChangesReq::decode(b)?),
            Opcode::RecordHead => Request::RecordHead(RecordHeadReq::decode(b)?),
            Opcode::RecordSync => Request::RecordSync(RecordSyncReq::decode(b)?),
            Opcode::Error => return Err(BodyError::NotARequest { opcode: op }),
        };
        check_data_len(op, data_len, req.inline_data_len())?;
        Ok(req)
    }
}

impl Response {
    /// The reply's opcode: the request's, or [`Opcode::Error`].
    pub fn opcode(&self) -> Opcode {
        match self {
            Response::Challenge(_) => Opcode::Hello,
            Response::AuthOk => Opcode::Auth,
            Response::Pong(_) => Opcode::Ping,
            Response::Read(_) => Opcode::Read,
            Response::Write(_) => Opcode::Write,
            Response::Punch => Opcode::Punch,
            Response::Zero => Opcode::Zero,
            Response::Flush => Opcode::Flush,
            Response::Stat(_) => Opcode::Stat,
            Response::Remove => Opcode::Remove,
            Response::VolConfig(_) => Opcode::GetVolConfig,
            Response::VolConfigStored { .. } => Opcode::PutVolConfig,
            Response::BrickStats(_) => Opcode::BrickStats,
            Response::Lease(_) => Opcode::Lease,
            Response::Marks(_) => Opcode::Marks,
            Response::ListChunks(_) => Opcode::ListChunks,
            Response::WriteBlocks(_) => Opcode::WriteBlocks,
            Response::ReadBlocks(_) => Opcode::ReadBlocks,
            Response::Verify(_) => Opcode::Verify,
            Response::ScrubStatus(_) => Opcode::ScrubStatus,
            Response::RecordGet(_) => Opcode::RecordGet,
            Response::RecordList(_) => Opcode::RecordList,
            Response::RecordCommit(_) => Opcode::RecordCommit,
            Response::RecordChanges(_) => Opcode::RecordChanges,
            Response::RecordHead(_) => Opcode::RecordHead,
            Response::RecordSync(_) => Opcode::RecordSync,
            Response::Error(_) => Opcode::Error,
        }
    }

    /// The reply's data reference, for replies that can carry one.
    pub fn data_ref(&self) -> Option<&DataRef> {
        match self {
            Response::Read(r) => Some(&r.data),
            Response::ReadBlocks(r) => Some(&r.data),
            _ => None,
        }
    }

    /// Mutable data reference: the transport fills it from the pushed data.
    pub fn data_ref_mut(&mut self) -> Option<&mut DataRef> {
        match self {
            Response::Read(r) => Some(&mut r.data),
            Response::ReadBlocks(r) => Some(&mut r.data),
            _ => None,
        }
    }

    /// Bytes that follow this reply's body inline.
    pub fn inline_data_len(&self) -> u32 {
        self.data_ref().map_or(0, DataRef::inline_len)
    }

    /// A shorthand for an error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error(ErrorReply::new(code, message))
    }

    /// Appends the body bytes to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Response::Challenge(c) => {
                let mut b = [0u8; CH_LEN];
                b[CH_NONCE..CH_PROOF].copy_from_slice(&c.server_nonce);
                b[CH_PROOF..CH_LEN].copy_from_slice(&c.server_proof);
                out.extend_from_slice(&b);
            }
            Response::AuthOk
            | Response::Punch
            | Response::Zero
            | Response::Flush
            | Response::Remove => {}
            Response::Pong(p) => out.extend_from_slice(&p.token.to_le_bytes()),
            Response::Read(r) => {
                let mut b = [0u8; RR_SIZE];
                r.data.put(&mut b, RR_DATA);
                put_u32(&mut b, RR_CRC, r.crc32c);
                put_u32(&mut b, RR_RESERVED, 0);
                out.extend_from_slice(&b);
            }
            Response::Write(w) | Response::WriteBlocks(w) => {
                let mut b = [0u8; WRR_SIZE];
                put_u32(&mut b, WRR_WRITTEN, w.written);
                put_u32(&mut b, WRR_RESERVED, 0);
                out.extend_from_slice(&b);
            }
            Response::Stat(s) => {
                let mut b = [0u8; ST_LEN];
                put_u64(&mut b, ST_SIZE, s.size);
                put_u64(&mut b, ST_ALLOCATED, s.allocated);
                put_u64(&mut b, ST_VERSION, s.version);
                out.extend_from_slice(&b);
            }
            Response::VolConfig(v) => {
                let mut b = [0u8; VC_FIXED];
                put_u64(&mut b, VC_GENERATION, v.generation);
                put_u32(&mut b, VC_LEN, v.config.len() as u32);
                put_u32(&mut b, VC_RESERVED, 0);
                out.extend_from_slice(&b);
                out.extend_from_slice(&v.config);
            }
            Response::VolConfigStored { generation } => {
                out.extend_from_slice(&generation.to_le_bytes())
            }
            Response::BrickStats(s) => {
                for v in s.fields() {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&s.corrupt_blocks.to_le_bytes());
            }
            Response::Lease(l) => l.encode(out),
            Response::Marks(m) => m.encode(out),
            Response::ListChunks(l) => l.encode(out),
            Response::ReadBlocks(r) => r.encode(out),
            Response::Verify(v) => v.encode(out),
            Response::ScrubStatus(r) => r.encode(out),
            Response::RecordGet(r) => r.encode(out),
            Response::RecordList(r) => r.encode(out),
            Response::RecordCommit(r) => r.encode(out),
            Response::RecordChanges(r) => r.encode(out),
            Response::RecordHead(r) | Response::RecordSync(r) => r.encode(out),
            Response::Error(e) => {
                // `ErrorReply::new` bounds the message; a message built by
                // hand past the limit is cut here rather than corrupt the
                // length field.
                let mut cut = e.message.len().min(MAX_ERROR_MESSAGE);
                while !e.message.is_char_boundary(cut) {
                    cut -= 1;
                }
                let msg = &e.message.as_bytes()[..cut];
                let mut b = [0u8; ER_FIXED];
                put_u16(&mut b, ER_CODE, e.code.code());
                put_u16(&mut b, ER_LEN, msg.len() as u16);
                put_u32(&mut b, ER_RESERVED, 0);
                out.extend_from_slice(&b);
                out.extend_from_slice(msg);
            }
        }
    }

    /// Decodes a reply body; `data_len` is the frame's announced data
    /// length, which must match the body's inline data reference.
    pub fn decode(opcode: u8, b: &[u8], data_len: u32) -> Result<Response, BodyError> {
        let op = Opcode::from_u8(opcode).ok_or(BodyError::UnknownOpcode { opcode })?;
        let resp = match op {
            Opcode::Hello => {
                expect_len(op, b, CH_LEN)?;
                Response::Challenge(Challenge {
                    server_nonce: array32(b, CH_NONCE),
                    server_proof: array32(b, CH_PROOF),
                })
            }
            Opcode::Auth => {
                expect_len(op, b, 0)?;
                Response::AuthOk
            }
            Opcode::Ping => {
                expect_len(op, b, 8)?;
                Response::Pong(Ping {
                    token: get_u64(b, 0),
                })
            }
            Opcode::Read => {
                expect_len(op, b, RR_SIZE)?;
                expect_zero32(op, b, RR_RESERVED, "reserved")?;
                Response::Read(ReadReply {
                    data: DataRef::get(b, RR_DATA, op)?,
                    crc32c: get_u32(b, RR_CRC),
                })
            }
            Opcode::Write | Opcode::WriteBlocks => {
                expect_len(op, b, WRR_SIZE)?;
                expect_zero32(op, b, WRR_RESERVED, "reserved")?;
                let w = WriteReply {
                    written: get_u32(b, WRR_WRITTEN),
                };
                if op == Opcode::Write {
                    Response::Write(w)
                } else {
                    Response::WriteBlocks(w)
                }
            }
            Opcode::ReadBlocks => Response::ReadBlocks(ReadBlocksReply::decode(b)?),
            Opcode::Verify => Response::Verify(VerifyReply::decode(b)?),
            Opcode::ScrubStatus => Response::ScrubStatus(ScrubStatusReply::decode(b)?),
            Opcode::Punch | Opcode::Zero | Opcode::Flush | Opcode::Remove => {
                expect_len(op, b, 0)?;
                match op {
                    Opcode::Punch => Response::Punch,
                    Opcode::Zero => Response::Zero,
                    Opcode::Flush => Response::Flush,
                    _ => Response::Remove,
                }
            }
            Opcode::Stat => {
                expect_len(op, b, ST_LEN)?;
                Response::Stat(StatReply {
                    size: get_u64(b, ST_SIZE),
                    allocated: get_u64(b, ST_ALLOCATED),
                    version: get_u64(b, ST_VERSION),
                })
            }
            Opcode::GetVolConfig => {
                if b.len() < VC_FIXED {
                    return Err(BodyError::Length {
                        opcode: op,
                        expected: VC_FIXED,
                        found: b.len(),
                    });
                }
                expect_zero32(op, b, VC_RESERVED, "reserved")?;
                let len = get_u32(b, VC_LEN) as usize;
                check_config(op, len)?;
                expect_len(op, b, VC_FIXED + len)?;
                Response::VolConfig(VolConfig {
                    generation: get_u64(b, VC_GENERATION),
                    config: b[VC_FIXED..].to_vec(),
                })
            }
            Opcode::PutVolConfig => {
                expect_len(op, b, 8)?;
                Response::VolConfigStored {
                    generation: get_u64(b, 0),
                }
            }
            Opcode::BrickStats => {
                if b.len() != BS_LEN_V1 {
                    expect_len(op, b, BS_LEN)?;
                }
                let mut f = [0u64; BS_FIELDS];
                for (i, v) in f.iter_mut().enumerate() {
                    *v = get_u64(b, i * 8);
                }
                let mut stats = BrickStats::from_fields(f);
                if b.len() == BS_LEN {
                    stats.corrupt_blocks = get_u64(b, BS_CORRUPT);
                }
                Response::BrickStats(stats)
            }
            Opcode::Lease => Response::Lease(LeaseReply::decode(b)?),
            Opcode::Marks => Response::Marks(MarksReply::decode(b)?),
            Opcode::ListChunks => Response::ListChunks(ChunkList::decode(b)?),
            Opcode::RecordGet => Response::RecordGet(RecordGetReply::decode(b)?),
            Opcode::RecordList => Response::RecordList(RecordListReply::decode(b)?),
            Opcode::RecordCommit => Response::RecordCommit(RecordCommitReply::decode(b)?),
            Opcode::RecordChanges => Response::RecordChanges(RecordChangesReply::decode(b)?),
            Opcode::RecordHead => Response::RecordHead(RecordHeadReply::decode(op, b)?),
            Opcode::RecordSync => Response::RecordSync(RecordHeadReply::decode(op, b)?),
            Opcode::Error => {
                if b.len() < ER_FIXED {
                    return Err(BodyError::Length {
                        opcode: op,
                        expected: ER_FIXED,
                        found: b.len(),
                    });
                }
                expect_zero32(op, b, ER_RESERVED, "reserved")?;
                let len = get_u16(b, ER_LEN) as usize;
                if len > MAX_ERROR_MESSAGE {
                    return Err(BodyError::TooLong {
                        opcode: op,
                        field: "message",
                        len,
                        max: MAX_ERROR_MESSAGE,
                    });
                }
                expect_len(op, b, ER_FIXED + len)?;
                let message = std::str::from_utf8(&b[ER_FIXED..])
                    .map_err(|_| BodyError::NotUtf8 {
                        opcode: op,
                        field: "message",
                    })?
                    .to_owned();
                Response::Error(ErrorReply {
                    code: ErrorCode::from_code(get_u16(b, ER_CODE)),
                    message,
                })
            }
        };
        check_data_len(op, data_len, resp.inline_data_len())?;
        Ok(resp)
    }
}
