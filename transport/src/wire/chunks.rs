//! `ListChunks` (0x42): which chunks of a volume a brick holds, with their
//! sizes and versions. Used by a full heal (`stretto volume replace-brick`,
//! `volume heal VOL full`) to find everything a new brick must be given,
//! since a new brick has no pending marks to heal from.

use super::msg::{BodyError, ObjectId, Opcode};
use super::{get_u32, get_u64, put_u32, put_u64};

/// `ListChunks` request: the chunks of `volume` whose id is at or after
/// `start` (ids ordered by volume, vnode, unique, chunk), at most
/// [`MAX_CHUNK_ENTRIES`] of them.
///
/// ```text
///  0        4          8          32
///  +--------+----------+----------+
///  | volume | reserved |  start   |
///  |  u32   |  u32=0   | ObjectId |
///  +--------+----------+----------+
/// ```
/// `start.volume` is ignored by the brick (the listing stays inside
/// `volume`); a caller continuing a cut list passes the last id it got with
/// `chunk + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListChunksReq {
    pub volume: u32,
    pub start: ObjectId,
}
const LC_VOLUME: usize = 0;
const LC_RESERVED: usize = 4;
const LC_START: usize = 8;
pub(super) const LC_SIZE: usize = 32;

/// One chunk in a [`ChunkList`].
///
/// ```text
///  0          24      32
///  +----------+------+---------+
///  | object   | size | version |
///  | ObjectId | u64  |   u64   |
///  +----------+------+---------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkEntry {
    pub object: ObjectId,
    pub size: u64,
    pub version: u64,
}
const CE_OBJECT: usize = 0;
const CE_SIZE: usize = 24;
const CE_VERSION: usize = 32;
/// Encoded size of one [`ChunkEntry`].
pub const CHUNK_ENTRY_LEN: usize = 40;

/// Most entries in one reply (the body stays under `MAX_BODY`); a list with
/// more says so with [`CHUNKS_MORE`].
pub const MAX_CHUNK_ENTRIES: usize = 1600;

/// `ChunkList` flag: the list was cut at [`MAX_CHUNK_ENTRIES`]; ask again
/// from after the last entry.
pub const CHUNKS_MORE: u32 = 1 << 0;

/// `ListChunks` reply, in increasing id order.
///
/// ```text
///  0       4       8
///  +-------+-------+-----------------------+
///  | count | flags | entries [count] × 40  |
///  |  u32  |  u32  |                       |
///  +-------+-------+-----------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkList {
    pub flags: u32,
    pub chunks: Vec<ChunkEntry>,
}
const CL_COUNT: usize = 0;
const CL_FLAGS: usize = 4;
pub(super) const CL_FIXED: usize = 8;

fn length(b: &[u8], expected: usize) -> BodyError {
    BodyError::Length {
        opcode: Opcode::ListChunks,
        expected,
        found: b.len(),
    }
}

impl ListChunksReq {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; LC_SIZE];
        put_u32(&mut b, LC_VOLUME, self.volume);
        put_u32(&mut b, LC_RESERVED, 0);
        self.start.put(&mut b, LC_START);
        out.extend_from_slice(&b);
    }

    pub(super) fn decode(b: &[u8]) -> Result<ListChunksReq, BodyError> {
        let op = Opcode::ListChunks;
        if b.len() != LC_SIZE {
            return Err(length(b, LC_SIZE));
        }
        if get_u32(b, LC_RESERVED) != 0 {
            return Err(BodyError::Reserved {
                opcode: op,
                field: "reserved",
            });
        }
        Ok(ListChunksReq {
            volume: get_u32(b, LC_VOLUME),
            start: ObjectId::get(b, LC_START, op)?,
        })
    }
}

impl ChunkList {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        // The handler bounds the list; cut here rather than overflow the
        // body limit if it did not.
        let chunks = &self.chunks[..self.chunks.len().min(MAX_CHUNK_ENTRIES)];
        let mut b = [0u8; CL_FIXED];
        put_u32(&mut b, CL_COUNT, chunks.len() as u32);
        put_u32(&mut b, CL_FLAGS, self.flags);
        out.extend_from_slice(&b);
        for c in chunks {
            let mut e = [0u8; CHUNK_ENTRY_LEN];
            c.object.put(&mut e, CE_OBJECT);
            put_u64(&mut e, CE_SIZE, c.size);
            put_u64(&mut e, CE_VERSION, c.version);
            out.extend_from_slice(&e);
        }
    }

    pub(super) fn decode(b: &[u8]) -> Result<ChunkList, BodyError> {
        let op = Opcode::ListChunks;
        if b.len() < CL_FIXED {
            return Err(length(b, CL_FIXED));
        }
        let count = get_u32(b, CL_COUNT) as usize;
        if count > MAX_CHUNK_ENTRIES {
            return Err(BodyError::TooLong {
                opcode: op,
                field: "chunks",
                len: count,
                max: MAX_CHUNK_ENTRIES,
            });
        }
        let expected = CL_FIXED + count * CHUNK_ENTRY_LEN;
        if b.len() != expected {
            return Err(length(b, expected));
        }
        let flags = get_u32(b, CL_FLAGS);
        if flags & !CHUNKS_MORE != 0 {
            return Err(BodyError::UnknownFlags {
                opcode: op,
                field: "flags",
                bits: flags & !CHUNKS_MORE,
            });
        }
        let mut chunks = Vec::with_capacity(count);
        for i in 0..count {
            let at = CL_FIXED + i * CHUNK_ENTRY_LEN;
            chunks.push(ChunkEntry {
                object: ObjectId::get(b, at + CE_OBJECT, op)?,
                size: get_u64(b, at + CE_SIZE),
                version: get_u64(b, at + CE_VERSION),
            });
        }
        Ok(ChunkList { flags, chunks })
    }
}
