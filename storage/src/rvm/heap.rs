//! A recoverable heap inside the segment: allocate and free blocks, with
//! persistent free lists. Every change is made inside the caller's
//! transaction, so an aborted or uncommitted allocation leaves nothing behind.
//!
//! Blocks come in power-of-two size classes (32 B, 64 B, ... 2^36 B, header
//! included). A free list per class holds freed blocks; allocation takes from
//! the smallest non-empty list at or above the wanted class, splitting a
//! larger block into halves (the upper halves go onto their lists), and
//! otherwise carves from the unallocated top of the arena. Freed blocks are not
//! coalesced: metadata records are small and of few sizes, and never merging
//! keeps every free a few writes.
//!
//! What this module must not do: know what the blocks hold.
//!
//! # Heap state (segment offset 256, [`super::format::SEG_OFF_HEAP`])
//!
//! ```text
//! offset  size  field
//!    256     4  magic "HEAP" (0 until the first allocation)  HEAP_OFF_MAGIC
//!    260     4  version (1)                                  HEAP_OFF_VERSION
//!    264     8  top: first never-allocated arena byte        HEAP_OFF_TOP
//!    272   256  free-list heads: 32 x u64 block offsets      HEAP_OFF_FREE
//!               (class c holds blocks of 2^(c+5) bytes; 0 = empty)
//! ```
//!
//! # Block (arena from 4096 on)
//!
//! ```text
//! offset  size  field
//!      0     4  magic "BLKa" (allocated) or "BLKf" (free)   BLK_OFF_MAGIC
//!      4     4  size class                                  BLK_OFF_CLASS
//!      8     8  allocated: requested length; free: next free block (0 = end)  BLK_OFF_WORD
//!     16   ...  payload (the offset `alloc` returns)        BLOCK_HEADER
//! ```

use super::format::{SEG_HEADER_SIZE, SEG_OFF_HEAP};
use super::{RvmError, SegmentRead, Transaction};

/// Heap state magic ("HEAP").
pub const HEAP_MAGIC: u32 = u32::from_le_bytes(*b"HEAP");
/// The only heap format version this code reads and writes.
pub const HEAP_VERSION: u32 = 1;
/// Offset of the heap magic.
pub const HEAP_OFF_MAGIC: u64 = SEG_OFF_HEAP;
/// Offset of the heap version.
pub const HEAP_OFF_VERSION: u64 = SEG_OFF_HEAP + 4;
/// Offset of the top pointer.
pub const HEAP_OFF_TOP: u64 = SEG_OFF_HEAP + 8;
/// Offset of the free-list heads.
pub const HEAP_OFF_FREE: u64 = SEG_OFF_HEAP + 16;
/// Number of size classes.
pub const CLASSES: u32 = 32;
/// log2 of the smallest block size.
pub const MIN_SHIFT: u32 = 5;
/// Block magic while allocated ("BLKa").
pub const BLK_ALLOC: u32 = u32::from_le_bytes(*b"BLKa");
/// Block magic while free ("BLKf").
pub const BLK_FREE: u32 = u32::from_le_bytes(*b"BLKf");
/// Offset of the block magic.
pub const BLK_OFF_MAGIC: u64 = 0;
/// Offset of the block's size class.
pub const BLK_OFF_CLASS: u64 = 4;
/// Offset of the length (allocated) or next pointer (free).
pub const BLK_OFF_WORD: u64 = 8;
/// Size of the block header; the payload follows.
pub const BLOCK_HEADER: u64 = 16;

fn class_size(c: u32) -> u64 {
    1u64 << (c + MIN_SHIFT)
}

fn head_offset(c: u32) -> u64 {
    HEAP_OFF_FREE + 8 * c as u64
}

/// Checks the heap state; `Ok(false)` when the heap was never used.
fn check_state(r: &(impl SegmentRead + ?Sized)) -> Result<bool, RvmError> {
    let magic = r.read_u32(HEAP_OFF_MAGIC)?;
    if magic == 0 {
        return Ok(false);
    }
    if magic != HEAP_MAGIC {
        return Err(r.corrupt(HEAP_OFF_MAGIC, "bad heap magic"));
    }
    let version = r.read_u32(HEAP_OFF_VERSION)?;
    if version != HEAP_VERSION {
        return Err(RvmError::BadVersion {
            path: r.segment_path().to_path_buf(),
            what: "heap",
            found: version,
            supported: HEAP_VERSION,
        });
    }
    Ok(true)
}

/// Allocates a block with room for `len` bytes and returns the offset of its
/// payload (contents unspecified). Part of `tx`.
pub fn alloc(tx: &mut Transaction<'_>, len: u64) -> Result<u64, RvmError> {
    if !check_state(tx)? {
        tx.write_u32(HEAP_OFF_VERSION, HEAP_VERSION)?;
        tx.write_u64(HEAP_OFF_TOP, SEG_HEADER_SIZE)?;
        tx.write_u32(HEAP_OFF_MAGIC, HEAP_MAGIC)?;
    }
    let no_space = RvmError::NoSpace { requested: len };
    let need = len.checked_add(BLOCK_HEADER).ok_or(no_space)?;
    if need > class_size(CLASSES - 1) {
        return Err(RvmError::NoSpace { requested: len });
    }
    let class = need
        .max(class_size(0))
        .next_power_of_two()
        .trailing_zeros()
        .saturating_sub(MIN_SHIFT);
    if class >= CLASSES {
        return Err(RvmError::NoSpace { requested: len });
    }
    for j in class..CLASSES {
        let head = tx.read_u64(head_offset(j))?;
        if head == 0 {
            continue;
        }
        check_block(tx, head, BLK_FREE, Some(j))?;
        let next = tx.read_u64(head + BLK_OFF_WORD)?;
        tx.write_u64(head_offset(j), next)?;
        let mut k = j;
        while k > class {
            k -= 1;
            push_free(tx, head + class_size(k), k)?;
        }
        write_alloc_header(tx, head, class, len)?;
        return Ok(head + BLOCK_HEADER);
    }
    let top = tx.read_u64(HEAP_OFF_TOP)?;
    let size = class_size(class);
    if top.checked_add(size).is_none_or(|e| e > tx.segment_size()) {
        return Err(RvmError::NoSpace { requested: len });
    }
    tx.write_u64(HEAP_OFF_TOP, top + size)?;
    write_alloc_header(tx, top, class, len)?;
    Ok(top + BLOCK_HEADER)
}

fn write_alloc_header(
    tx: &mut Transaction<'_>,
    blk: u64,
    class: u32,
    len: u64,
) -> Result<(), RvmError> {
    let mut h = [0u8; BLOCK_HEADER as usize];
    h[0..4].copy_from_slice(&BLK_ALLOC.to_le_bytes());
    h[4..8].copy_from_slice(&class.to_le_bytes());
    h[8..16].copy_from_slice(&len.to_le_bytes());
    tx.write(blk, &h)
}

fn push_free(tx: &mut Transaction<'_>, blk: u64, class: u32) -> Result<(), RvmError> {
    let head = tx.read_u64(head_offset(class))?;
    let mut h = [0u8; BLOCK_HEADER as usize];
    h[0..4].copy_from_slice(&BLK_FREE.to_le_bytes());
    h[4..8].copy_from_slice(&class.to_le_bytes());
    h[8..16].copy_from_slice(&head.to_le_bytes());
    tx.write(blk, &h)?;
    tx.write_u64(head_offset(class), blk)
}

/// Checks that a block header at `blk` has `magic` (and `class`), lies in
/// the used arena; returns its class.
fn check_block(
    r: &(impl SegmentRead + ?Sized),
    blk: u64,
    magic: u32,
    class: Option<u32>,
) -> Result<u32, RvmError> {
    let top = r.read_u64(HEAP_OFF_TOP)?;
    if blk < SEG_HEADER_SIZE || blk.saturating_add(BLOCK_HEADER) > top {
        return Err(r.corrupt(blk, "heap block pointer outside the arena"));
    }
    if r.read_u32(blk + BLK_OFF_MAGIC)? != magic {
        return Err(r.corrupt(blk, "heap block has the wrong magic"));
    }
    let c = r.read_u32(blk + BLK_OFF_CLASS)?;
    if c >= CLASSES
        || class.is_some_and(|want| want != c)
        || blk.saturating_add(class_size(c)) > top
    {
        return Err(r.corrupt(blk, "heap block has a bad size class"));
    }
    Ok(c)
}

/// Checks that `ptr` is the payload of an allocated block; returns the
/// block's class.
fn check_ptr(r: &(impl SegmentRead + ?Sized), ptr: u64) -> Result<u32, RvmError> {
    if !check_state(r)? || ptr < SEG_HEADER_SIZE + BLOCK_HEADER {
        return Err(RvmError::BadPointer { offset: ptr });
    }
    let blk = ptr - BLOCK_HEADER;
    let top = r.read_u64(HEAP_OFF_TOP)?;
    if blk.saturating_add(BLOCK_HEADER) > top || r.read_u32(blk + BLK_OFF_MAGIC)? != BLK_ALLOC {
        return Err(RvmError::BadPointer { offset: ptr });
    }
    check_block(r, blk, BLK_ALLOC, None)
}

/// Frees the block whose payload is at `ptr`. Part of `tx`. A pointer that
/// is not an allocated block's payload (double free included) is refused
/// with [`RvmError::BadPointer`].
pub fn free(tx: &mut Transaction<'_>, ptr: u64) -> Result<(), RvmError> {
    let class = check_ptr(tx, ptr)?;
    push_free(tx, ptr - BLOCK_HEADER, class)
}

/// The length that was asked for when the block at `ptr` was allocated.
pub fn len_of(r: &(impl SegmentRead + ?Sized), ptr: u64) -> Result<u64, RvmError> {
    check_ptr(r, ptr)?;
    r.read_u64(ptr - BLOCK_HEADER + BLK_OFF_WORD)
}

/// Bytes of the arena never allocated yet (free lists not counted).
pub fn untouched(r: &(impl SegmentRead + ?Sized), segment_size: u64) -> Result<u64, RvmError> {
    let top = if check_state(r)? {
        r.read_u64(HEAP_OFF_TOP)?
    } else {
        SEG_HEADER_SIZE
    };
    Ok(segment_size.saturating_sub(top))
}
