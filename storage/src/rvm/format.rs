//! The persisted formats of RVM: the segment header, the log header and the
//! log records. Encode and decode only; no I/O and no policy (what a record
//! means is decided by recovery in `mod.rs`).
//!
//! The byte-by-byte pictures are in the parent module's documentation and in
//! `docs/rvm.md`; the constants below mirror them. Every integer is little
//! endian.

use std::path::Path;

use super::RvmError;

/// Size of one log block: the unit of every `O_DIRECT` log write.
pub const BLOCK: u64 = 4096;
/// Size of one disk sector: the unit the crash model tears writes at, and the
/// size of one log-header slot (so a torn header write spoils at most the slot
/// being written).
pub const SECTOR: u64 = 512;

// ---- segment header (first page of the segment file) ----

/// Magic at segment offset 0.
pub const SEG_MAGIC: [u8; 8] = *b"STRVMSEG";
/// The only segment format version this code reads and writes.
pub const SEG_VERSION: u32 = 1;
/// Offset of the 8-byte magic.
pub const SEG_OFF_MAGIC: usize = 0;
/// Offset of the u32 format version.
pub const SEG_OFF_VERSION: usize = 8;
/// Offset of the u32 header size (bytes reserved before the heap arena).
pub const SEG_OFF_HEADER_SIZE: usize = 12;
/// Offset of the u64 segment size.
pub const SEG_OFF_SIZE: usize = 16;
/// Offset of the u64 segment id (shared with the log header, so a log is never
/// replayed into another segment).
pub const SEG_OFF_ID: usize = 24;
/// Offset of the u32 CRC32C of bytes `0..SEG_OFF_CRC`.
pub const SEG_OFF_CRC: usize = 32;
/// End of the immutable part of the segment header: written once at creation,
/// never by a transaction.
pub const SEG_FIXED_END: u64 = 64;
/// Offset of the root table: [`ROOT_SLOTS`] u64 values, changed by transactions.
pub const SEG_OFF_ROOTS: u64 = 64;
/// Number of root slots.
pub const ROOT_SLOTS: u32 = 16;
/// Offset of the heap state (owned by `rvm::heap`), changed by transactions.
pub const SEG_OFF_HEAP: u64 = 256;
/// Size of the segment header page; the heap arena starts here.
pub const SEG_HEADER_SIZE: u64 = 4096;

// ---- log header (first block of the log file, two slots) ----

/// Magic at the start of each log-header slot.
pub const LOG_MAGIC: [u8; 8] = *b"STRVMLOG";
/// The only log format version (header and records) this code reads and writes.
pub const LOG_VERSION: u32 = 1;
/// Offset of the 8-byte magic within a slot.
pub const LOG_OFF_MAGIC: usize = 0;
/// Offset of the u32 format version within a slot.
pub const LOG_OFF_VERSION: usize = 8;
/// Offset of the u32 reserved word (zero) within a slot.
pub const LOG_OFF_RESERVED: usize = 12;
/// Offset of the u64 epoch within a slot.
pub const LOG_OFF_EPOCH: usize = 16;
/// Offset of the u64 sequence number of the epoch's first record.
pub const LOG_OFF_START_SEQ: usize = 24;
/// Offset of the u64 log file size.
pub const LOG_OFF_LOG_SIZE: usize = 32;
/// Offset of the u64 segment id this log belongs to.
pub const LOG_OFF_SEGMENT_ID: usize = 40;
/// Offset of the u32 CRC32C of slot bytes `0..LOG_OFF_CRC`.
pub const LOG_OFF_CRC: usize = 48;
/// Bytes of a slot that carry data (the rest of the 512-byte slot is zero).
pub const LOG_SLOT_USED: usize = 52;
/// Number of header slots; epoch `e` lives in slot `e % LOG_SLOTS`.
pub const LOG_SLOTS: u64 = 2;
/// First byte of the record area.
pub const LOG_DATA_START: u64 = BLOCK;

// ---- log record ----

/// Magic at the start of each record.
pub const REC_MAGIC: [u8; 4] = *b"RVMr";
/// Offset of the 4-byte record magic.
pub const REC_OFF_MAGIC: usize = 0;
/// Offset of the u32 total record length (header, ranges, padding).
pub const REC_OFF_LEN: usize = 4;
/// Offset of the u64 sequence number.
pub const REC_OFF_SEQ: usize = 8;
/// Offset of the u32 number of ranges.
pub const REC_OFF_NRANGES: usize = 16;
/// Offset of the u32 CRC32C (see [`record_crc`]).
pub const REC_OFF_CRC: usize = 20;
/// Size of the record header.
pub const REC_HEADER: usize = 24;
/// Offset, within a range header, of the u64 segment offset.
pub const RANGE_OFF_OFFSET: usize = 0;
/// Offset, within a range header, of the u32 data length.
pub const RANGE_OFF_LEN: usize = 8;
/// Offset, within a range header, of the u32 reserved word (zero).
pub const RANGE_OFF_RESERVED: usize = 12;
/// Size of a range header; the data follows, padded to [`REC_ALIGN`].
pub const RANGE_HEADER: usize = 16;
/// Records and range data are padded to this alignment.
pub const REC_ALIGN: usize = 8;

pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn pad8(n: usize) -> usize {
    n.next_multiple_of(REC_ALIGN)
}

/// The immutable part of the segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub size: u64,
    pub id: u64,
}

impl SegmentHeader {
    /// Writes the header into the first [`SEG_FIXED_END`] bytes of `page`.
    pub fn encode(&self, page: &mut [u8]) {
        page[..SEG_FIXED_END as usize].fill(0);
        page[SEG_OFF_MAGIC..SEG_OFF_MAGIC + 8].copy_from_slice(&SEG_MAGIC);
        put_u32(page, SEG_OFF_VERSION, SEG_VERSION);
        put_u32(page, SEG_OFF_HEADER_SIZE, SEG_HEADER_SIZE as u32);
        put_u64(page, SEG_OFF_SIZE, self.size);
        put_u64(page, SEG_OFF_ID, self.id);
        let crc = crc32c::crc32c(&page[..SEG_OFF_CRC]);
        put_u32(page, SEG_OFF_CRC, crc);
    }

    /// Checks magic, version, CRC and sizes.
    pub fn decode(page: &[u8], path: &Path) -> Result<SegmentHeader, RvmError> {
        let corrupt = |reason: &str| RvmError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: reason.to_string(),
        };
        if page.len() < SEG_FIXED_END as usize {
            return Err(corrupt("segment file shorter than its header"));
        }
        if page[SEG_OFF_MAGIC..SEG_OFF_MAGIC + 8] != SEG_MAGIC {
            return Err(corrupt("bad segment magic (not an RVM segment)"));
        }
        let version = get_u32(page, SEG_OFF_VERSION);
        if version != SEG_VERSION {
            return Err(RvmError::BadVersion {
                path: path.to_path_buf(),
                what: "segment",
                found: version,
                supported: SEG_VERSION,
            });
        }
        if crc32c::crc32c(&page[..SEG_OFF_CRC]) != get_u32(page, SEG_OFF_CRC) {
            return Err(corrupt("segment header checksum mismatch"));
        }
        if get_u32(page, SEG_OFF_HEADER_SIZE) as u64 != SEG_HEADER_SIZE {
            return Err(corrupt("unexpected segment header size"));
        }
        let size = get_u64(page, SEG_OFF_SIZE);
        if size < 2 * SEG_HEADER_SIZE || size % BLOCK != 0 {
            return Err(corrupt("segment size in header is invalid"));
        }
        Ok(SegmentHeader {
            size,
            id: get_u64(page, SEG_OFF_ID),
        })
    }
}

/// One slot of the log header: which epoch the record area belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHeader {
    pub epoch: u64,
    pub start_seq: u64,
    pub log_size: u64,
    pub segment_id: u64,
}

impl LogHeader {
    /// Byte offset of this header's slot inside the header block.
    pub fn slot_offset(&self) -> usize {
        ((self.epoch % LOG_SLOTS) * SECTOR) as usize
    }

    /// Writes this header into its slot of the header `block`, leaving the
    /// other slot as it is.
    pub fn encode_into_block(&self, block: &mut [u8]) {
        let at = self.slot_offset();
        let slot = &mut block[at..at + SECTOR as usize];
        slot.fill(0);
        slot[LOG_OFF_MAGIC..LOG_OFF_MAGIC + 8].copy_from_slice(&LOG_MAGIC);
        put_u32(slot, LOG_OFF_VERSION, LOG_VERSION);
        put_u32(slot, LOG_OFF_RESERVED, 0);
        put_u64(slot, LOG_OFF_EPOCH, self.epoch);
        put_u64(slot, LOG_OFF_START_SEQ, self.start_seq);
        put_u64(slot, LOG_OFF_LOG_SIZE, self.log_size);
        put_u64(slot, LOG_OFF_SEGMENT_ID, self.segment_id);
        let crc = crc32c::crc32c(&slot[..LOG_OFF_CRC]);
        put_u32(slot, LOG_OFF_CRC, crc);
    }

    /// Picks the valid slot with the highest epoch from the header `block`.
    ///
    /// A slot whose magic is right but whose version is unknown is an error
    /// (the log was written by other code); a slot whose checksum fails is
    /// ignored (a torn header write), unless no slot is valid.
    pub fn decode_block(block: &[u8], path: &Path) -> Result<LogHeader, RvmError> {
        let mut best: Option<LogHeader> = None;
        let mut seen_magic = false;
        for s in 0..LOG_SLOTS as usize {
            let slot = &block[s * SECTOR as usize..(s + 1) * SECTOR as usize];
            if slot[LOG_OFF_MAGIC..LOG_OFF_MAGIC + 8] != LOG_MAGIC {
                continue;
            }
            seen_magic = true;
            let version = get_u32(slot, LOG_OFF_VERSION);
            if version != LOG_VERSION {
                return Err(RvmError::BadVersion {
                    path: path.to_path_buf(),
                    what: "log",
                    found: version,
                    supported: LOG_VERSION,
                });
            }
            if crc32c::crc32c(&slot[..LOG_OFF_CRC]) != get_u32(slot, LOG_OFF_CRC) {
                continue;
            }
            let h = LogHeader {
                epoch: get_u64(slot, LOG_OFF_EPOCH),
                start_seq: get_u64(slot, LOG_OFF_START_SEQ),
                log_size: get_u64(slot, LOG_OFF_LOG_SIZE),
                segment_id: get_u64(slot, LOG_OFF_SEGMENT_ID),
            };
            if h.slot_offset() != s * SECTOR as usize {
                continue;
            }
            if best.is_none_or(|b| h.epoch > b.epoch) {
                best = Some(h);
            }
        }
        best.ok_or_else(|| RvmError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: if seen_magic {
                "no log header slot has a valid checksum".to_string()
            } else {
                "bad log magic (not an RVM log)".to_string()
            },
        })
    }
}

/// Total encoded size of a record holding ranges of these lengths.
pub fn record_len(range_lens: impl Iterator<Item = u64>) -> u64 {
    REC_HEADER as u64
        + range_lens
            .map(|l| RANGE_HEADER as u64 + (l.next_multiple_of(REC_ALIGN as u64)))
            .sum::<u64>()
}

/// The checksum of a record: CRC32C over the log epoch (u64), the record's
/// byte position in the log file (u64), then the record bytes with the CRC
/// field taken as zero. Binding epoch and position means a record left over
/// from an earlier epoch, or copied elsewhere, never verifies.
pub fn record_crc(epoch: u64, pos: u64, rec: &[u8]) -> u32 {
    let mut c = crc32c::crc32c(&epoch.to_le_bytes());
    c = crc32c::crc32c_append(c, &pos.to_le_bytes());
    c = crc32c::crc32c_append(c, &rec[..REC_OFF_CRC]);
    c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &rec[REC_OFF_CRC + 4..])
}

/// Appends the header of a record to `out`; the caller appends the ranges
/// with [`push_range`] and then calls [`seal_record`].
pub fn start_record(out: &mut Vec<u8>, seq: u64, nranges: u32) -> usize {
    let at = out.len();
    out.resize(at + REC_HEADER, 0);
    out[at + REC_OFF_MAGIC..at + REC_OFF_MAGIC + 4].copy_from_slice(&REC_MAGIC);
    put_u64(out, at + REC_OFF_SEQ, seq);
    put_u32(out, at + REC_OFF_NRANGES, nranges);
    at
}

/// Appends one range (header, data, padding) to the record being built.
pub fn push_range(out: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let at = out.len();
    out.resize(at + RANGE_HEADER, 0);
    put_u64(out, at + RANGE_OFF_OFFSET, offset);
    put_u32(out, at + RANGE_OFF_LEN, data.len() as u32);
    out.extend_from_slice(data);
    out.resize(at + RANGE_HEADER + pad8(data.len()), 0);
}

/// Fills in the length and checksum of the record starting at `at`.
pub fn seal_record(out: &mut [u8], at: usize, epoch: u64, pos: u64) {
    let len = (out.len() - at) as u32;
    put_u32(out, at + REC_OFF_LEN, len);
    let crc = record_crc(epoch, pos, &out[at..]);
    put_u32(out, at + REC_OFF_CRC, crc);
}

/// A record read back from the log during recovery.
#[derive(Debug)]
pub struct Record<'a> {
    pub seq: u64,
    pub len: u64,
    /// `(segment offset, new bytes)` in record order.
    pub ranges: Vec<(u64, &'a [u8])>,
}

/// Why [`parse_record`] refused a record. Recovery stops at the first refusal:
/// this is where the committed log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordEnd {
    TooShort,
    BadMagic,
    BadLength,
    BadChecksum,
    BadSequence,
    BadRange,
}

/// Parses and verifies the record at the start of `area`, which sits at log
/// position `pos` in epoch `epoch` and must carry sequence number `seq`.
/// Ranges must lie inside `[min_offset, segment_size)`.
pub fn parse_record(
    area: &[u8],
    epoch: u64,
    pos: u64,
    seq: u64,
    min_offset: u64,
    segment_size: u64,
) -> Result<Record<'_>, RecordEnd> {
    if area.len() < REC_HEADER {
        return Err(RecordEnd::TooShort);
    }
    if area[REC_OFF_MAGIC..REC_OFF_MAGIC + 4] != REC_MAGIC {
        return Err(RecordEnd::BadMagic);
    }
    let len = get_u32(area, REC_OFF_LEN) as usize;
    if len < REC_HEADER || len > area.len() || len % REC_ALIGN != 0 {
        return Err(RecordEnd::BadLength);
    }
    let rec = &area[..len];
    if record_crc(epoch, pos, rec) != get_u32(rec, REC_OFF_CRC) {
        return Err(RecordEnd::BadChecksum);
    }
    if get_u64(rec, REC_OFF_SEQ) != seq {
        return Err(RecordEnd::BadSequence);
    }
    let n = get_u32(rec, REC_OFF_NRANGES) as usize;
    let mut ranges = Vec::with_capacity(n.min(len / RANGE_HEADER));
    let mut at = REC_HEADER;
    for _ in 0..n {
        if at + RANGE_HEADER > len {
            return Err(RecordEnd::BadRange);
        }
        let off = get_u64(rec, at + RANGE_OFF_OFFSET);
        let rlen = get_u32(rec, at + RANGE_OFF_LEN) as usize;
        let data_at = at + RANGE_HEADER;
        let end = data_at.checked_add(pad8(rlen)).ok_or(RecordEnd::BadRange)?;
        if end > len
            || off < min_offset
            || off
                .checked_add(rlen as u64)
                .is_none_or(|e| e > segment_size)
        {
            return Err(RecordEnd::BadRange);
        }
        ranges.push((off, &rec[data_at..data_at + rlen]));
        at = end;
    }
    if at != len {
        return Err(RecordEnd::BadLength);
    }
    Ok(Record {
        seq,
        len: len as u64,
        ranges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_binding() {
        let mut buf = Vec::new();
        let at = start_record(&mut buf, 7, 2);
        push_range(&mut buf, 100, b"hello");
        push_range(&mut buf, 5000, &[9u8; 16]);
        seal_record(&mut buf, at, 3, 4096);
        assert_eq!(buf.len() as u64, record_len([5u64, 16].into_iter()));
        let r = parse_record(&buf, 3, 4096, 7, 64, 1 << 20).expect("valid");
        assert_eq!(r.ranges, vec![(100, &b"hello"[..]), (5000, &[9u8; 16][..])]);
        // Another epoch, position or sequence does not verify.
        assert!(parse_record(&buf, 4, 4096, 7, 64, 1 << 20).is_err());
        assert!(parse_record(&buf, 3, 8192, 7, 64, 1 << 20).is_err());
        assert_eq!(
            parse_record(&buf, 3, 4096, 8, 64, 1 << 20).err(),
            Some(RecordEnd::BadSequence)
        );
    }

    #[test]
    fn log_header_picks_newest_valid_slot() {
        let p = Path::new("x");
        let mut block = vec![0u8; BLOCK as usize];
        let h1 = LogHeader {
            epoch: 1,
            start_seq: 1,
            log_size: 1 << 20,
            segment_id: 9,
        };
        h1.encode_into_block(&mut block);
        let h2 = LogHeader { epoch: 2, ..h1 };
        h2.encode_into_block(&mut block);
        assert_eq!(LogHeader::decode_block(&block, p).expect("ok"), h2);
        // Tear slot 0 (epoch 2): epoch 1 wins.
        block[LOG_OFF_EPOCH] ^= 1;
        assert_eq!(LogHeader::decode_block(&block, p).expect("ok"), h1);
    }
}
