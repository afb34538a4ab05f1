//! The translator interface: "an object at byte offsets", as every layer of
//! the client stack sees it (GlusterFS's xlators, reduced to what block and
//! file front ends need).
//!
//! Objects are sparse and byte-addressed, named by a [`Fid`], and cut into
//! chunks of the volume's `chunk_size`. A layer that routes chunks
//! ([`crate::Distribute`]) splits a request at chunk boundaries and hands
//! each piece to the layer below; a layer that stores chunks
//! ([`crate::Replicate`]) turns each piece into brick calls.
//!
//! Placement: chunk `i` of object `fid` lives on set
//! `crc32c(volume | vnode | unique | i) % sets`, the four fields
//! little-endian (u32, u32, u32, u64: 20 bytes). It must never change for
//! a volume that holds data.

use std::fmt;

use transport::wire::ObjectId;
use transport::BoxFuture;

use std::sync::Arc;

use crate::error::Result;

/// An object's name: volume, vnode, uniquifier (as Coda's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fid {
    pub volume: u32,
    pub vnode: u32,
    pub unique: u32,
}

impl Fid {
    /// The wire name of chunk `chunk` of this object.
    pub fn chunk(&self, chunk: u64) -> ObjectId {
        ObjectId {
            volume: self.volume,
            vnode: self.vnode,
            unique: self.unique,
            chunk,
        }
    }

    /// The object a chunk belongs to.
    pub fn of(o: &ObjectId) -> Fid {
        Fid {
            volume: o.volume,
            vnode: o.vnode,
            unique: o.unique,
        }
    }
}

impl fmt::Display for Fid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.volume, self.vnode, self.unique)
    }
}

/// The chunk index that holds an object's size record: its stat size is the
/// object's size (grown by a one-byte punch at `size - 1`, which allocates
/// nothing). It is placed like any other chunk.
pub const SIZE_CHUNK: u64 = u64::MAX;

/// Largest piece sent to a brick in one call (under the transport's data
/// limit).
pub const MAX_PIECE: u64 = 8 << 20;

/// The set that holds chunk `chunk` of `fid`, among `sets`.
pub fn place(fid: Fid, chunk: u64, sets: usize) -> usize {
    let mut key = [0u8; 20];
    key[0..4].copy_from_slice(&fid.volume.to_le_bytes());
    key[4..8].copy_from_slice(&fid.vnode.to_le_bytes());
    key[8..12].copy_from_slice(&fid.unique.to_le_bytes());
    key[12..20].copy_from_slice(&chunk.to_le_bytes());
    (crc32c::crc32c(&key) as usize) % sets.max(1)
}

/// One piece of a request, inside one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Chunk index.
    pub chunk: u64,
    /// Offset inside the chunk.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// Offset of the piece inside the request (its buffer).
    pub at: u64,
}

/// Cuts `[offset, offset + len)` at chunk boundaries and at [`MAX_PIECE`].
pub fn split(offset: u64, len: u64, chunk_size: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut done = 0;
    while done < len {
        let pos = offset + done;
        let chunk = pos / chunk_size;
        let coff = pos % chunk_size;
        let n = (chunk_size - coff).min(len - done).min(MAX_PIECE);
        out.push(Piece {
            chunk,
            offset: coff,
            len: n,
            at: done,
        });
        done += n;
    }
    out
}

/// What a lease call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAction {
    /// Take the object's lease for this client (from a quorum of every set).
    Acquire {
        /// Lease life without renewal, in milliseconds.
        duration_ms: u32,
    },
    /// Extend it.
    Renew,
    /// Give it up cleanly.
    Release,
}

/// What a lease call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseOutcome {
    /// The previous lease on some brick ended without a clean release: its
    /// writer may have died mid-write.
    pub unclean: bool,
}

/// One layer of the client stack. Every method names a whole object and
/// byte offsets in it; reads past what was written return zeros.
pub trait Translator: Send + Sync {
    /// Reads `len` bytes at `offset`.
    fn read(&self, fid: Fid, offset: u64, len: u64) -> BoxFuture<'_, Result<Vec<u8>>>;
    /// Writes `data` at `offset`; durable on the bricks' page caches (use
    /// [`Translator::flush`] for the disk).
    fn write<'a>(&'a self, fid: Fid, offset: u64, data: &'a [u8]) -> BoxFuture<'a, Result<()>>;
    /// Deallocates a range (reads as zeros after).
    fn punch(&self, fid: Fid, offset: u64, len: u64) -> BoxFuture<'_, Result<()>>;
    /// Zeroes a range.
    fn zero(&self, fid: Fid, offset: u64, len: u64) -> BoxFuture<'_, Result<()>>;
    /// Makes everything written so far durable.
    fn flush(&self, fid: Fid) -> BoxFuture<'_, Result<()>>;
    /// The object's size (see [`SIZE_CHUNK`]).
    fn size(&self, fid: Fid) -> BoxFuture<'_, Result<u64>>;
    /// Grows the recorded size to at least `size`.
    fn grow(&self, fid: Fid, size: u64) -> BoxFuture<'_, Result<()>>;
    /// Takes, renews or gives up the object's write lease.
    fn lease(&self, fid: Fid, action: LeaseAction) -> BoxFuture<'_, Result<LeaseOutcome>>;
}

/// Takes, renews or gives up an object's lease on every one of `parts`
/// (the sets of a distribute, the columns of a stripe), in order: an
/// acquire that fails on one gives back what the earlier ones granted, so
/// either every part holds the lease or none does.
pub async fn lease_all(
    parts: &[Arc<dyn Translator>],
    fid: Fid,
    action: LeaseAction,
) -> Result<LeaseOutcome> {
    let mut out = LeaseOutcome::default();
    for (k, s) in parts.iter().enumerate() {
        match s.lease(fid, action).await {
            Ok(o) => out.unclean |= o.unclean,
            Err(e) => {
                if matches!(action, LeaseAction::Acquire { .. }) {
                    for s in &parts[..k] {
                        let _ = s.lease(fid, LeaseAction::Release).await;
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cuts_at_chunks_and_pieces() {
        let p = split(3 << 20, 20 << 20, 16 << 20);
        assert_eq!(
            p,
            vec![
                Piece {
                    chunk: 0,
                    offset: 3 << 20,
                    len: 8 << 20,
                    at: 0
                },
                Piece {
                    chunk: 0,
                    offset: 11 << 20,
                    len: 5 << 20,
                    at: 8 << 20
                },
                Piece {
                    chunk: 1,
                    offset: 0,
                    len: 7 << 20,
                    at: 13 << 20
                },
            ]
        );
        assert!(split(5, 0, 1 << 20).is_empty());
    }

    #[test]
    fn placement_is_stable() {
        let fid = Fid {
            volume: 1,
            vnode: 2,
            unique: 3,
        };
        // Pinned: placement is part of the on-disk layout of a volume.
        let key = [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(place(fid, 7, 5), crc32c::crc32c(&key) as usize % 5);
        let spread: std::collections::HashSet<usize> = (0..64).map(|i| place(fid, i, 4)).collect();
        assert_eq!(spread.len(), 4);
    }
}
