//! End-to-end integrity: bodies that carry one CRC32C per 4 KiB block
//! (`WriteBlocks` 0x43, `ReadBlocks` 0x44) and the scrub check of data at
//! rest (`Verify` 0x45).
//!
//! The unit of protection is the 4 KiB block of a chunk's grid (block `i`
//! covers chunk bytes `[4096 i, 4096 (i + 1))`). A request's byte range is
//! cut on that grid into *pieces*: a full block, or the part of a block the
//! range covers at either end. Each piece carries the CRC32C of exactly its
//! bytes, so the writer computes them in one pass over its data and the
//! brick checks them on receipt; the brick itself keeps full-block CRCs
//! (recomputed after merging a partial piece) beside the data.
//!
//! A brick that finds data at rest not matching its stored CRC answers
//! [`super::ErrorCode::Corrupt`]: a replicating client reads the range from
//! another copy and rewrites this one; a dispersing client treats the
//! fragment as missing.

use super::msg::{
    decode_write, encode_write, expect_len, expect_zero32, BodyError, DataRef, ObjectId, Opcode,
    WriteReq, WR_SIZE,
};
use super::{get_u32, get_u64, put_u32, put_u64, MAX_DATA};

/// The integrity block: CRCs cover 4 KiB blocks of a chunk's grid.
pub const CRC_BLOCK: u64 = 4096;

/// Most pieces one request can have: [`MAX_DATA`] bytes not aligned to the
/// grid touch one block more than they fill.
pub const MAX_BLOCK_CRCS: usize = MAX_DATA as usize / CRC_BLOCK as usize + 1;

/// The pieces of `[offset, offset + len)` cut on the 4 KiB grid, as byte
/// ranges relative to `offset`.
pub fn block_pieces(offset: u64, len: u64) -> impl Iterator<Item = (usize, usize)> {
    let end = offset.saturating_add(len);
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let next = ((at / CRC_BLOCK) + 1).saturating_mul(CRC_BLOCK).min(end);
        let piece = ((at - offset) as usize, (next - offset) as usize);
        at = next;
        Some(piece)
    })
}

/// How many grid pieces `[offset, offset + len)` has.
pub fn block_count(offset: u64, len: u64) -> usize {
    if len == 0 {
        return 0;
    }
    let end = offset.saturating_add(len);
    (end.div_ceil(CRC_BLOCK) - offset / CRC_BLOCK) as usize
}

/// The CRC32C of each grid piece of `data`, which sits at `offset`.
pub fn block_crcs(offset: u64, data: &[u8]) -> Vec<u32> {
    block_pieces(offset, data.len() as u64)
        .map(|(a, b)| crc32c::crc32c(&data[a..b]))
        .collect()
}

/// Checks `data` (at `offset`) against its piece CRCs; on a mismatch,
/// returns the index of the first bad piece (a count mismatch is reported
/// as piece `crcs.len()`).
pub fn check_block_crcs(offset: u64, data: &[u8], crcs: &[u32]) -> Result<(), usize> {
    if block_count(offset, data.len() as u64) != crcs.len() {
        return Err(crcs.len());
    }
    for (i, ((a, b), want)) in block_pieces(offset, data.len() as u64)
        .zip(crcs)
        .enumerate()
    {
        if crc32c::crc32c(&data[a..b]) != *want {
            return Err(i);
        }
    }
    Ok(())
}

fn too_many(opcode: Opcode, field: &'static str, len: usize) -> BodyError {
    BodyError::TooLong {
        opcode,
        field,
        len,
        max: MAX_BLOCK_CRCS,
    }
}

fn put_crcs(out: &mut Vec<u8>, crcs: &[u32]) {
    for c in crcs {
        out.extend_from_slice(&c.to_le_bytes());
    }
}

fn get_crcs(b: &[u8], at: usize, count: usize) -> Vec<u32> {
    (0..count).map(|i| get_u32(b, at + 4 * i)).collect()
}

/// `WriteBlocks` request: a `Write` whose whole-data CRC is replaced by one
/// CRC32C per grid piece of the data.
///
/// ```text
///  0          24         32         40      44      48             72
///  +----------+----------+----------+-------+-------+--------------+----------------+
///  | object   |  offset  |  epoch   | flags | count |   data ref   | crcs [count]   |
///  | ObjectId |   u64    |   u64    |  u32  |  u32  |   DataRef    | u32 each       |
///  +----------+----------+----------+-------+-------+--------------+----------------+
/// ```
/// The first 72 bytes are the `Write` body with `count` where `Write` has
/// its `crc32c`. `count` must equal the number of grid pieces of
/// `[offset, offset + data.len)` (at most [`MAX_BLOCK_CRCS`]); `crcs[i]` is
/// the CRC32C of piece `i`. `write.crc32c` is not sent (decodes as 0).
/// The reply is a `Write` reply body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBlocksReq {
    pub write: WriteReq,
    pub crcs: Vec<u32>,
}
const WB_COUNT: usize = 44;
const WB_CRCS: usize = WR_SIZE;

impl WriteBlocksReq {
    /// A write of `data` described by `write` (its `data` ref and `crc32c`
    /// are left to the transport and unused), with the piece CRCs computed
    /// here.
    pub fn new(write: WriteReq, data: &[u8]) -> WriteBlocksReq {
        WriteBlocksReq {
            crcs: block_crcs(write.offset, data),
            write,
        }
    }

    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let at = out.len();
        encode_write(&self.write, out);
        // Bounded by the data limit when built through `new`; a longer
        // table is refused by the peer's decoder.
        put_u32(&mut out[at..], WB_COUNT, self.crcs.len() as u32);
        put_crcs(out, &self.crcs);
    }

    pub(super) fn decode(b: &[u8]) -> Result<WriteBlocksReq, BodyError> {
        let op = Opcode::WriteBlocks;
        if b.len() < WB_CRCS {
            return Err(BodyError::Length {
                opcode: op,
                expected: WB_CRCS,
                found: b.len(),
            });
        }
        let count = get_u32(b, WB_COUNT) as usize;
        if count > MAX_BLOCK_CRCS {
            return Err(too_many(op, "crcs", count));
        }
        expect_len(op, b, WB_CRCS + 4 * count)?;
        let mut write = decode_write(op, b)?;
        write.crc32c = 0;
        let data_len = match write.data {
            DataRef::None => 0,
            DataRef::Inline { len } | DataRef::Remote { len, .. } => len,
        };
        // `None` is what a caller leaves for the transport to fill; once
        // filled the table must match the data.
        if write.data != DataRef::None && block_count(write.offset, data_len as u64) != count {
            return Err(BodyError::Length {
                opcode: op,
                expected: WB_CRCS + 4 * block_count(write.offset, data_len as u64),
                found: b.len(),
            });
        }
        Ok(WriteBlocksReq {
            write,
            crcs: get_crcs(b, WB_CRCS, count),
        })
    }
}

/// `ReadBlocks` reply: the data (as a `Read` reply) and the CRC32C of each
/// grid piece of it. The request body is a `Read` body (`ReadReq`).
///
/// ```text
///  0              24      28         32
///  +--------------+-------+----------+----------------+
///  |   data ref   | count | reserved | crcs [count]   |
///  |   DataRef    |  u32  |  u32=0   | u32 each       |
///  +--------------+-------+----------+----------------+
/// ```
/// `count` ≤ [`MAX_BLOCK_CRCS`]; the reader checks it against the pieces of
/// the range it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlocksReply {
    pub data: DataRef,
    pub crcs: Vec<u32>,
}
const RB_DATA: usize = 0;
const RB_COUNT: usize = 24;
const RB_RESERVED: usize = 28;
const RB_CRCS: usize = 32;

impl ReadBlocksReply {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let crcs = &self.crcs[..self.crcs.len().min(MAX_BLOCK_CRCS)];
        let mut b = [0u8; RB_CRCS];
        self.data.put(&mut b, RB_DATA);
        put_u32(&mut b, RB_COUNT, crcs.len() as u32);
        put_u32(&mut b, RB_RESERVED, 0);
        out.extend_from_slice(&b);
        put_crcs(out, crcs);
    }

    pub(super) fn decode(b: &[u8]) -> Result<ReadBlocksReply, BodyError> {
        let op = Opcode::ReadBlocks;
        if b.len() < RB_CRCS {
            return Err(BodyError::Length {
                opcode: op,
                expected: RB_CRCS,
                found: b.len(),
            });
        }
        expect_zero32(op, b, RB_RESERVED, "reserved")?;
        let count = get_u32(b, RB_COUNT) as usize;
        if count > MAX_BLOCK_CRCS {
            return Err(too_many(op, "crcs", count));
        }
        expect_len(op, b, RB_CRCS + 4 * count)?;
        Ok(ReadBlocksReply {
            data: DataRef::get(b, RB_DATA, op)?,
            crcs: get_crcs(b, RB_CRCS, count),
        })
    }
}

/// `Verify` request: re-read `[offset, offset + len)` of a chunk at rest on
/// the brick and check every 4 KiB block it touches against the stored CRC
/// (no data travels).
///
/// ```text
///  0          24         32     36         40
///  +----------+----------+------+----------+
///  | object   |  offset  | len  | reserved |
///  | ObjectId |   u64    | u32  |  u32=0   |
///  +----------+----------+------+----------+
/// ```
/// `len` ≤ [`MAX_DATA`] (else the brick answers `TooLarge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReq {
    pub object: ObjectId,
    pub offset: u64,
    pub len: u32,
}
const VQ_OBJECT: usize = 0;
const VQ_OFFSET: usize = 24;
const VQ_LEN: usize = 32;
const VQ_RESERVED: usize = 36;
const VQ_SIZE: usize = 40;

impl VerifyReq {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; VQ_SIZE];
        self.object.put(&mut b, VQ_OBJECT);
        put_u64(&mut b, VQ_OFFSET, self.offset);
        put_u32(&mut b, VQ_LEN, self.len);
        put_u32(&mut b, VQ_RESERVED, 0);
        out.extend_from_slice(&b);
    }

    pub(super) fn decode(b: &[u8]) -> Result<VerifyReq, BodyError> {
        let op = Opcode::Verify;
        expect_len(op, b, VQ_SIZE)?;
        expect_zero32(op, b, VQ_RESERVED, "reserved")?;
        Ok(VerifyReq {
            object: ObjectId::get(b, VQ_OBJECT, op)?,
            offset: get_u64(b, VQ_OFFSET),
            len: get_u32(b, VQ_LEN),
        })
    }
}

/// `Verify` reply: how many blocks were checked against a stored CRC, and
/// the chunk byte offsets of the blocks that failed.
///
/// ```text
///  0         4       8
///  +---------+-------+-------------------+
///  | checked | count | bad [count]       |
///  |   u32   |  u32  | u64 each (offset) |
///  +---------+-------+-------------------+
/// ```
/// `checked` is 0 for a chunk that has no stored CRCs (written before the
/// brick kept them); `count` ≤ [`MAX_BLOCK_CRCS`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReply {
    pub checked: u32,
    pub bad: Vec<u64>,
}
const VR_CHECKED: usize = 0;
const VR_COUNT: usize = 4;
const VR_BAD: usize = 8;

impl VerifyReply {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let bad = &self.bad[..self.bad.len().min(MAX_BLOCK_CRCS)];
        let mut b = [0u8; VR_BAD];
        put_u32(&mut b, VR_CHECKED, self.checked);
        put_u32(&mut b, VR_COUNT, bad.len() as u32);
        out.extend_from_slice(&b);
        for o in bad {
            out.extend_from_slice(&o.to_le_bytes());
        }
    }

    pub(super) fn decode(b: &[u8]) -> Result<VerifyReply, BodyError> {
        let op = Opcode::Verify;
        if b.len() < VR_BAD {
            return Err(BodyError::Length {
                opcode: op,
                expected: VR_BAD,
                found: b.len(),
            });
        }
        let count = get_u32(b, VR_COUNT) as usize;
        if count > MAX_BLOCK_CRCS {
            return Err(too_many(op, "bad", count));
        }
        expect_len(op, b, VR_BAD + 8 * count)?;
        Ok(VerifyReply {
            checked: get_u32(b, VR_CHECKED),
            bad: (0..count).map(|i| get_u64(b, VR_BAD + 8 * i)).collect(),
        })
    }
}

/// The counts of one scrub run, as bricks keep them for `scrub status`.
///
/// ```text
///  0         8          16       24      32        40         48             56
///  +---------+----------+--------+-------+---------+----------+--------------+
///  | started | finished | chunks | bytes | corrupt | repaired | unrepairable |
///  |   u64   |   u64    |  u64   |  u64  |   u64   |   u64    |     u64      |
///  +---------+----------+--------+-------+---------+----------+--------------+
/// ```
/// `started`, `finished`: Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScrubCounts {
    pub started: u64,
    pub finished: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub corrupt: u64,
    pub repaired: u64,
    pub unrepairable: u64,
}
/// Encoded size of [`ScrubCounts`].
pub const SCRUB_COUNTS_LEN: usize = 56;

impl ScrubCounts {
    fn fields(&self) -> [u64; 7] {
        [
            self.started,
            self.finished,
            self.chunks,
            self.bytes,
            self.corrupt,
            self.repaired,
            self.unrepairable,
        ]
    }

    /// The counts as stored (also the brick's RVM record).
    pub fn to_bytes(&self) -> [u8; SCRUB_COUNTS_LEN] {
        let mut b = [0u8; SCRUB_COUNTS_LEN];
        for (i, v) in self.fields().iter().enumerate() {
            put_u64(&mut b, 8 * i, *v);
        }
        b
    }

    /// Parses [`ScrubCounts::to_bytes`]; `None` if `b` is not 56 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<ScrubCounts> {
        if b.len() != SCRUB_COUNTS_LEN {
            return None;
        }
        let f = |i: usize| get_u64(b, 8 * i);
        Some(ScrubCounts {
            started: f(0),
            finished: f(1),
            chunks: f(2),
            bytes: f(3),
            corrupt: f(4),
            repaired: f(5),
            unrepairable: f(6),
        })
    }
}

/// `ScrubStatus` op: read the volume's last scrub counts.
pub const SCRUB_GET: u32 = 1;
/// `ScrubStatus` op: store them (a scrub run just finished).
pub const SCRUB_PUT: u32 = 2;

/// `ScrubStatus` request (0x46): get or put the last scrub run's counts of
/// a volume, kept by every brick of it.
///
/// ```text
///  0        4      8                         64
///  +--------+------+-------------------------+
///  | volume |  op  | counts (ScrubCounts)    |
///  |  u32   | u32  | 56 bytes; 0s for a get  |
///  +--------+------+-------------------------+
/// ```
/// `op` is [`SCRUB_GET`] or [`SCRUB_PUT`] (others: body error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubStatusReq {
    pub volume: u32,
    pub op: u32,
    pub counts: ScrubCounts,
}
const SQ_VOLUME: usize = 0;
const SQ_OP: usize = 4;
const SQ_COUNTS: usize = 8;
const SQ_SIZE: usize = SQ_COUNTS + SCRUB_COUNTS_LEN;

/// `ScrubStatus` reply flag: the brick has counts for the volume.
pub const SCRUB_FOUND: u32 = 1 << 0;

/// `ScrubStatus` reply: the counts now stored.
///
/// ```text
///  0       4          8                       64
///  +-------+----------+-----------------------+
///  | flags | reserved | counts (ScrubCounts)  |
///  |  u32  |  u32=0   | 56 bytes              |
///  +-------+----------+-----------------------+
/// ```
/// `flags` bit 0 [`SCRUB_FOUND`]: without it there was never a scrub (counts 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubStatusReply {
    pub flags: u32,
    pub counts: ScrubCounts,
}
const SS_FLAGS: usize = 0;
const SS_RESERVED: usize = 4;
const SS_COUNTS: usize = 8;
const SS_SIZE: usize = SS_COUNTS + SCRUB_COUNTS_LEN;

impl ScrubStatusReq {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; SQ_SIZE];
        put_u32(&mut b, SQ_VOLUME, self.volume);
        put_u32(&mut b, SQ_OP, self.op);
        b[SQ_COUNTS..].copy_from_slice(&self.counts.to_bytes());
        out.extend_from_slice(&b);
    }

    pub(super) fn decode(b: &[u8]) -> Result<ScrubStatusReq, BodyError> {
        let op = Opcode::ScrubStatus;
        expect_len(op, b, SQ_SIZE)?;
        let sop = get_u32(b, SQ_OP);
        if sop != SCRUB_GET && sop != SCRUB_PUT {
            return Err(BodyError::UnknownFlags {
                opcode: op,
                field: "op",
                bits: sop,
            });
        }
        Ok(ScrubStatusReq {
            volume: get_u32(b, SQ_VOLUME),
            op: sop,
            counts: ScrubCounts::from_bytes(&b[SQ_COUNTS..]).unwrap_or_default(),
        })
    }
}

impl ScrubStatusReply {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; SS_SIZE];
        put_u32(&mut b, SS_FLAGS, self.flags);
        put_u32(&mut b, SS_RESERVED, 0);
        b[SS_COUNTS..].copy_from_slice(&self.counts.to_bytes());
        out.extend_from_slice(&b);
    }

    pub(super) fn decode(b: &[u8]) -> Result<ScrubStatusReply, BodyError> {
        let op = Opcode::ScrubStatus;
        expect_len(op, b, SS_SIZE)?;
        expect_zero32(op, b, SS_RESERVED, "reserved")?;
        let flags = get_u32(b, SS_FLAGS);
        if flags & !SCRUB_FOUND != 0 {
            return Err(BodyError::UnknownFlags {
                opcode: op,
                field: "flags",
                bits: flags & !SCRUB_FOUND,
            });
        }
        Ok(ScrubStatusReply {
            flags,
            counts: ScrubCounts::from_bytes(&b[SS_COUNTS..]).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pieces_on_the_grid() {
        let p: Vec<_> = block_pieces(4000, 5000).collect();
        assert_eq!(p, vec![(0, 96), (96, 4192), (4192, 5000)]);
        assert_eq!(block_count(4000, 5000), 3);
        assert_eq!(block_count(0, 4096), 1);
        assert_eq!(block_count(0, 4097), 2);
        assert_eq!(block_count(4095, 2), 2);
        assert_eq!(block_count(7, 0), 0);
        assert_eq!(block_count(0, MAX_DATA as u64) + 1, MAX_BLOCK_CRCS);
        assert_eq!(block_count(1, MAX_DATA as u64), MAX_BLOCK_CRCS);
    }

    proptest! {
        #[test]
        fn crcs_match_pieces(offset in 0u64..1 << 40, data in proptest::collection::vec(any::<u8>(), 0..20000)) {
            let crcs = block_crcs(offset, &data);
            prop_assert_eq!(crcs.len(), block_count(offset, data.len() as u64));
            prop_assert_eq!(block_pieces(offset, data.len() as u64).count(), crcs.len());
            prop_assert!(check_block_crcs(offset, &data, &crcs).is_ok());
            let total: usize = block_pieces(offset, data.len() as u64).map(|(a, b)| b - a).sum();
            prop_assert_eq!(total, data.len());
            if !data.is_empty() {
                let mut bad = data.clone();
                let i = (offset as usize ^ data.len()) % data.len();
                bad[i] ^= 0x40;
                prop_assert!(check_block_crcs(offset, &bad, &crcs).is_err());
            }
        }
    }
}
