//! Bodies of the high-availability operations a volume client asks of a
//! brick: write leases with fencing epochs (`Lease`, 0x40) and the
//! persistent per-region marks of replication (`Marks`, 0x41: pending marks
//! against a brick that missed a write, and the activity log of regions
//! with writes in flight).
//!
//! Layouts follow the rest of the wire: little-endian, reserved bytes zero,
//! offsets named by constants; `docs/wire.md` draws them too.

use super::msg::{BodyError, ObjectId, Opcode};
use super::{get_u32, get_u64, put_u32, put_u64};

/// What a [`LeaseReq`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOp {
    /// 1: grant a new lease to `owner` if the object has none live (or
    /// `owner` already holds it); the brick bumps its epoch.
    Acquire,
    /// 2: extend `owner`'s live lease at `epoch`.
    Renew,
    /// 3: give up `owner`'s lease at `epoch` (a clean release).
    Release,
}

impl LeaseOp {
    fn code(self) -> u32 {
        match self {
            LeaseOp::Acquire => 1,
            LeaseOp::Renew => 2,
            LeaseOp::Release => 3,
        }
    }

    fn from_code(c: u32) -> Option<LeaseOp> {
        Some(match c {
            1 => LeaseOp::Acquire,
            2 => LeaseOp::Renew,
            3 => LeaseOp::Release,
            _ => return None,
        })
    }
}

/// `Lease` request: a single-writer lease on a whole object (the
/// `object.chunk` field must be 0: a lease covers every chunk).
///
/// ```text
///  0          24     28          32        40        48
///  +----------+------+-----------+---------+---------+
///  | object   |  op  | duration  |  owner  |  epoch  |
///  | ObjectId | u32  |  ms u32   |   u64   |   u64   |
///  +----------+------+-----------+---------+---------+
/// ```
/// `owner` is a random id the client picks once; `epoch` is the lease's
/// epoch for renew and release (0 for acquire); `duration` is how long the
/// lease lives without renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseReq {
    pub object: ObjectId,
    pub op: LeaseOp,
    pub duration_ms: u32,
    pub owner: u64,
    pub epoch: u64,
}
const LQ_OBJECT: usize = 0;
const LQ_OP: usize = 24;
const LQ_DURATION: usize = 28;
const LQ_OWNER: usize = 32;
const LQ_EPOCH: usize = 40;
pub(super) const LQ_SIZE: usize = 48;

/// Lease reply flag: the lease just granted follows one that was neither
/// released nor renewed (its holder died or was cut off), so the new holder
/// must first settle the regions the old one left active.
pub const LEASE_UNCLEAN: u32 = 1 << 0;

/// `Lease` reply: the lease's epoch now, and flags.
///
/// ```text
///  0         8       12         16
///  +---------+-------+----------+
///  |  epoch  | flags | reserved |
///  |   u64   |  u32  |  u32=0   |
///  +---------+-------+----------+
/// ```
/// A lease held by someone else is refused with the error `Busy`; a renew
/// or release at an old epoch with `StaleEpoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseReply {
    pub epoch: u64,
    pub flags: u32,
}
const LR_EPOCH: usize = 0;
const LR_FLAGS: usize = 8;
const LR_RESERVED: usize = 12;
pub(super) const LR_SIZE: usize = 16;

/// What a [`MarksReq`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarksOp {
    /// 1: add `amount` to the pending count of every region in the range
    /// against brick `target` (that brick missed a write there). Durable
    /// before the reply.
    AddPending,
    /// 2: subtract `amount` (saturating) from those counts; a count that
    /// reaches 0 is removed. Durable before the reply.
    ClearPending,
    /// 3: list pending marks of volume `object.volume` (the other fields
    /// are ignored).
    ListPending,
    /// 4: mark the regions active (writes in flight) with `amount` = the
    /// lease epoch. Durable before the reply.
    SetActive,
    /// 5: clear the regions' active marks.
    ClearActive,
    /// 6: list active regions of the object `object` (all chunks).
    ListActive,
}

impl MarksOp {
    fn code(self) -> u32 {
        match self {
            MarksOp::AddPending => 1,
            MarksOp::ClearPending => 2,
            MarksOp::ListPending => 3,
            MarksOp::SetActive => 4,
            MarksOp::ClearActive => 5,
            MarksOp::ListActive => 6,
        }
    }

    fn from_code(c: u32) -> Option<MarksOp> {
        Some(match c {
            1 => MarksOp::AddPending,
            2 => MarksOp::ClearPending,
            3 => MarksOp::ListPending,
            4 => MarksOp::SetActive,
            5 => MarksOp::ClearActive,
            6 => MarksOp::ListActive,
            _ => return None,
        })
    }
}

/// `Marks` request.
///
/// ```text
///  0     4        8          32      36      40       48
///  +-----+--------+----------+-------+-------+--------+
///  | op  | target | object   | first | count | amount |
///  | u32 |  u32   | ObjectId |  u32  |  u32  |  u64   |
///  +-----+--------+----------+-------+-------+--------+
/// ```
/// The regions are `[first, first + count)` of the chunk `object`
/// (regions are `REGION_SIZE` bytes of a chunk); `target` is the index,
/// inside its replica set, of the brick a pending mark is against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarksReq {
    pub op: MarksOp,
    pub target: u32,
    pub object: ObjectId,
    pub first: u32,
    pub count: u32,
    pub amount: u64,
}
const MQ_OP: usize = 0;
const MQ_TARGET: usize = 4;
const MQ_OBJECT: usize = 8;
const MQ_FIRST: usize = 32;
const MQ_COUNT: usize = 36;
const MQ_AMOUNT: usize = 40;
pub(super) const MQ_SIZE: usize = 48;

/// Bytes of a chunk one mark covers.
pub const REGION_SIZE: u64 = 1 << 20;

/// One mark in a [`MarksReply`].
///
/// ```text
///  0          24       28       32
///  +----------+--------+--------+---------+
///  | object   | region | target |  value  |
///  | ObjectId |  u32   |  u32   |   u64   |
///  +----------+--------+--------+---------+
/// ```
/// `value` is the pending count, or for an active mark the epoch that set
/// it (`target` 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mark {
    pub object: ObjectId,
    pub region: u32,
    pub target: u32,
    pub value: u64,
}
const MK_OBJECT: usize = 0;
const MK_REGION: usize = 24;
const MK_TARGET: usize = 28;
const MK_VALUE: usize = 32;
/// Encoded size of one [`Mark`].
pub const MARK_LEN: usize = 40;

/// Most marks in one reply (the reply body stays under `MAX_BODY`); a list
/// with more says so with [`MARKS_MORE`].
pub const MAX_MARKS: usize = 1600;

/// `MarksReply` flag: the list was cut at [`MAX_MARKS`].
pub const MARKS_MORE: u32 = 1 << 0;

/// `Marks` reply: the marks listed (none for the changing ops).
///
/// ```text
///  0       4       8
///  +-------+-------+---------------------+
///  | count | flags | marks [count] × 40  |
///  |  u32  |  u32  |                     |
///  +-------+-------+---------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MarksReply {
    pub flags: u32,
    pub marks: Vec<Mark>,
}
const MR_COUNT: usize = 0;
const MR_FLAGS: usize = 4;
pub(super) const MR_FIXED: usize = 8;

fn expect_len(opcode: Opcode, b: &[u8], expected: usize) -> Result<(), BodyError> {
    if b.len() != expected {
        return Err(BodyError::Length {
            opcode,
            expected,
            found: b.len(),
        });
    }
    Ok(())
}

fn unknown(opcode: Opcode, field: &'static str, bits: u32) -> BodyError {
    BodyError::UnknownFlags {
        opcode,
        field,
        bits,
    }
}

impl LeaseReq {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; LQ_SIZE];
        self.object.put(&mut b, LQ_OBJECT);
        put_u32(&mut b, LQ_OP, self.op.code());
        put_u32(&mut b, LQ_DURATION, self.duration_ms);
        put_u64(&mut b, LQ_OWNER, self.owner);
        put_u64(&mut b, LQ_EPOCH, self.epoch);
        out.extend_from_slice(&b);
    }

    pub(super) fn decode(b: &[u8]) -> Result<LeaseReq, BodyError> {
        let op = Opcode::Lease;
        expect_len(op, b, LQ_SIZE)?;
        let code = get_u32(b, LQ_OP);
        Ok(LeaseReq {
            object: ObjectId::get(b, LQ_OBJECT, op)?,
            op: LeaseOp::from_code(code).ok_or_else(|| unknown(op, "op", code))?,
            duration_ms: get_u32(b, LQ_DURATION),
            owner: get_u64(b, LQ_OWNER),
            epoch: get_u64(b, LQ_EPOCH),
        })
    }
}

impl LeaseReply {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; LR_SIZE];
        put_u64(&mut b, LR_EPOCH, self.epoch);
        put_u32(&mut b, LR_FLAGS, self.flags);
        put_u32(&mut b, LR_RESERVED, 0);
        out.extend_from_slice(&b);
    }

    pub(super) fn decode(b: &[u8]) -> Result<LeaseReply, BodyError> {
        let op = Opcode::Lease;
        expect_len(op, b, LR_SIZE)?;
        if get_u32(b, LR_RESERVED) != 0 {
            return Err(BodyError::Reserved {
                opcode: op,
                field: "reserved",
            });
        }
        let flags = get_u32(b, LR_FLAGS);
        if flags & !LEASE_UNCLEAN != 0 {
            return Err(unknown(op, "flags", flags & !LEASE_UNCLEAN));
        }
        Ok(LeaseReply {
            epoch: get_u64(b, LR_EPOCH),
            flags,
        })
    }
}

impl MarksReq {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; MQ_SIZE];
        put_u32(&mut b, MQ_OP, self.op.code());
        put_u32(&mut b, MQ_TARGET, self.target);
        self.object.put(&mut b, MQ_OBJECT);
        put_u32(&mut b, MQ_FIRST, self.first);
        put_u32(&mut b, MQ_COUNT, self.count);
        put_u64(&mut b, MQ_AMOUNT, self.amount);
        out.extend_from_slice(&b);
    }

    pub(super) fn decode(b: &[u8]) -> Result<MarksReq, BodyError> {
        let op = Opcode::Marks;
        expect_len(op, b, MQ_SIZE)?;
        let code = get_u32(b, MQ_OP);
        Ok(MarksReq {
            op: MarksOp::from_code(code).ok_or_else(|| unknown(op, "op", code))?,
            target: get_u32(b, MQ_TARGET),
            object: ObjectId::get(b, MQ_OBJECT, op)?,
            first: get_u32(b, MQ_FIRST),
            count: get_u32(b, MQ_COUNT),
            amount: get_u64(b, MQ_AMOUNT),
        })
    }
}

impl MarksReply {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        // The handler bounds the list by MAX_MARKS; cut here rather than
        // overflow the body limit if it did not.
        let marks = &self.marks[..self.marks.len().min(MAX_MARKS)];
        let mut b = [0u8; MR_FIXED];
        put_u32(&mut b, MR_COUNT, marks.len() as u32);
        put_u32(&mut b, MR_FLAGS, self.flags);
        out.extend_from_slice(&b);
        for m in marks {
            let mut e = [0u8; MARK_LEN];
            m.object.put(&mut e, MK_OBJECT);
            put_u32(&mut e, MK_REGION, m.region);
            put_u32(&mut e, MK_TARGET, m.target);
            put_u64(&mut e, MK_VALUE, m.value);
            out.extend_from_slice(&e);
        }
    }

    pub(super) fn decode(b: &[u8]) -> Result<MarksReply, BodyError> {
        let op = Opcode::Marks;
        if b.len() < MR_FIXED {
            return Err(BodyError::Length {
                opcode: op,
                expected: MR_FIXED,
                found: b.len(),
            });
        }
        let count = get_u32(b, MR_COUNT) as usize;
        if count > MAX_MARKS {
            return Err(BodyError::TooLong {
                opcode: op,
                field: "marks",
                len: count,
                max: MAX_MARKS,
            });
        }
        expect_len(op, b, MR_FIXED + count * MARK_LEN)?;
        let flags = get_u32(b, MR_FLAGS);
        if flags & !MARKS_MORE != 0 {
            return Err(unknown(op, "flags", flags & !MARKS_MORE));
        }
        let mut marks = Vec::with_capacity(count);
        for i in 0..count {
            let at = MR_FIXED + i * MARK_LEN;
            marks.push(Mark {
                object: ObjectId::get(b, at + MK_OBJECT, op)?,
                region: get_u32(b, at + MK_REGION),
                target: get_u32(b, at + MK_TARGET),
                value: get_u64(b, at + MK_VALUE),
            });
        }
        Ok(MarksReply { flags, marks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Request, Response};
    use proptest::prelude::*;

    fn obj() -> ObjectId {
        ObjectId {
            volume: 1,
            vnode: 2,
            unique: 3,
            chunk: 0,
        }
    }

    /// Acquire for owner 0x55 for 5000 ms.
    #[rustfmt::skip]
    const LEASE_ACQUIRE: [u8; 48] = [
        0x01, 0, 0, 0, 0x02, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0, // object 1.2.3
        0, 0, 0, 0, 0, 0, 0, 0,                                   // chunk 0
        0x01, 0, 0, 0,                                            // op acquire
        0x88, 0x13, 0, 0,                                         // 5000 ms
        0x55, 0, 0, 0, 0, 0, 0, 0,                                // owner
        0, 0, 0, 0, 0, 0, 0, 0,                                   // epoch
    ];

    /// AddPending against brick 2, regions 4..6 of chunk 9, amount 1.
    #[rustfmt::skip]
    const MARKS_ADD: [u8; 48] = [
        0x01, 0, 0, 0,                                            // op add pending
        0x02, 0, 0, 0,                                            // target 2
        0x01, 0, 0, 0, 0x02, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0, // object 1.2.3
        0x09, 0, 0, 0, 0, 0, 0, 0,                                // chunk 9
        0x04, 0, 0, 0,                                            // first 4
        0x02, 0, 0, 0,                                            // count 2
        0x01, 0, 0, 0, 0, 0, 0, 0,                                // amount 1
    ];

    #[test]
    fn fixtures() {
        let acq = Request::Lease(LeaseReq {
            object: obj(),
            op: LeaseOp::Acquire,
            duration_ms: 5000,
            owner: 0x55,
            epoch: 0,
        });
        let mut out = Vec::new();
        acq.encode_body(&mut out);
        assert_eq!(out, LEASE_ACQUIRE);
        assert_eq!(Request::decode(0x40, &LEASE_ACQUIRE, 0), Ok(acq));
        let add = Request::Marks(MarksReq {
            op: MarksOp::AddPending,
            target: 2,
            object: ObjectId { chunk: 9, ..obj() },
            first: 4,
            count: 2,
            amount: 1,
        });
        let mut out = Vec::new();
        add.encode_body(&mut out);
        assert_eq!(out, MARKS_ADD);
        assert_eq!(Request::decode(0x41, &MARKS_ADD, 0), Ok(add));
        // Unknown op codes are body errors.
        let mut bad = MARKS_ADD;
        bad[0] = 9;
        assert!(Request::decode(0x41, &bad, 0).is_err());
        let mut bad = LEASE_ACQUIRE;
        bad[24] = 0;
        assert!(Request::decode(0x40, &bad, 0).is_err());
    }

    fn object() -> impl Strategy<Value = ObjectId> {
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
            |(volume, vnode, unique, chunk)| ObjectId {
                volume,
                vnode,
                unique,
                chunk,
            },
        )
    }

    fn mark() -> impl Strategy<Value = Mark> {
        (object(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
            |(object, region, target, value)| Mark {
                object,
                region,
                target,
                value,
            },
        )
    }

    proptest! {
        #[test]
        fn lease_and_marks_round_trip(
            o in object(), op in 1u32..=3, mop in 1u32..=6, d in any::<u32>(), w in any::<u64>(),
            e in any::<u64>(), t in any::<u32>(), f in any::<u32>(), c in any::<u32>(),
            flags in 0u32..=1, marks in proptest::collection::vec(mark(), 0..20),
        ) {
            let reqs = [
                Request::Lease(LeaseReq { object: o, op: LeaseOp::from_code(op).unwrap(), duration_ms: d, owner: w, epoch: e }),
                Request::Marks(MarksReq { op: MarksOp::from_code(mop).unwrap(), target: t, object: o, first: f, count: c, amount: e }),
            ];
            for r in reqs {
                let mut b = Vec::new();
                r.encode_body(&mut b);
                prop_assert_eq!(Request::decode(r.opcode() as u8, &b, 0), Ok(r));
            }
            let resps = [
                Response::Lease(LeaseReply { epoch: e, flags }),
                Response::Marks(MarksReply { flags, marks }),
            ];
            for r in resps {
                let mut b = Vec::new();
                r.encode_body(&mut b);
                prop_assert_eq!(Response::decode(r.opcode() as u8, &b, 0), Ok(r));
            }
        }
    }
}
