//! Chunk sizes and versions kept durably in the brick's RVM.
//!
//! The object store asks a [`ChunkMetaStore`] for each chunk's size and
//! version; on a brick that store is this one: a persistent map anchored at
//! RVM root slot [`CHUNK_META_ROOT`], keyed by [`ChunkId::key`], each record
//! 16 bytes:
//!
//! ```text
//! offset  size  field
//!      0     8  size     u64 LE, one past the highest byte ever changed
//!      8     8  version  u64 LE, bumped by every write, punch or zero
//! ```
//!
//! `put` and `remove` commit with `NoFlush` (durable within the RVM's flush
//! delay, or at the next `flush`); the object store calls `flush` only after
//! the chunk data of a flush is durable, so a durable record never describes
//! data that a crash could take back.

use std::sync::Arc;

use crate::objects::{ChunkId, ChunkMeta, ChunkMetaStore, StoreError};
use crate::rvm::{map::PMap, CommitMode, Rvm, RvmError};

/// RVM root slot of the chunk metadata map.
pub const CHUNK_META_ROOT: u32 = 1;

const REC_SIZE: usize = 0;
const REC_VERSION: usize = 8;
const REC_LEN: usize = 16;

/// Chunk metadata in a persistent RVM map.
pub struct RvmChunkMeta {
    rvm: Arc<Rvm>,
    map: PMap,
}

impl std::fmt::Debug for RvmChunkMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RvmChunkMeta").finish_non_exhaustive()
    }
}

fn meta_err(chunk: Option<&ChunkId>, e: RvmError) -> StoreError {
    match chunk {
        Some(c) => StoreError::meta(format!("chunk metadata of {c}"), e),
        None => StoreError::meta("chunk metadata", e),
    }
}

/// The chunk id a map key names (the inverse of [`ChunkId::key`]).
fn chunk_from_key(key: &[u8]) -> Option<ChunkId> {
    use crate::objects::{Fid, KEY_INDEX, KEY_LEN, KEY_UNIQUE, KEY_VNODE, KEY_VOLUME};
    if key.len() != KEY_LEN {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(key[at..at + 4].try_into().unwrap_or([0; 4]));
    let index = u64::from_le_bytes(key[KEY_INDEX..KEY_LEN].try_into().ok()?);
    Some(ChunkId::new(
        Fid {
            volume: u32_at(KEY_VOLUME),
            vnode: u32_at(KEY_VNODE),
            unique: u32_at(KEY_UNIQUE),
        },
        index,
    ))
}

impl RvmChunkMeta {
    /// Opens the map in `rvm`, creating it on first use.
    pub fn open(rvm: Arc<Rvm>) -> Result<RvmChunkMeta, RvmError> {
        let map = PMap::open_or_create(&rvm, CHUNK_META_ROOT)?;
        Ok(RvmChunkMeta { rvm, map })
    }

    /// Every chunk the brick holds, with its metadata.
    pub fn all(&self) -> Result<Vec<(ChunkId, ChunkMeta)>, RvmError> {
        let mut out = Vec::new();
        for entry in self.map.iter(&*self.rvm) {
            let (key, rec) = entry?;
            if let (Some(id), Some(meta)) = (chunk_from_key(&key), decode(&rec)) {
                out.push((id, meta));
            }
        }
        Ok(out)
    }
}

fn encode(meta: ChunkMeta) -> [u8; REC_LEN] {
    let mut b = [0u8; REC_LEN];
    b[REC_SIZE..REC_SIZE + 8].copy_from_slice(&meta.size.to_le_bytes());
    b[REC_VERSION..REC_VERSION + 8].copy_from_slice(&meta.version.to_le_bytes());
    b
}

fn decode(rec: &[u8]) -> Option<ChunkMeta> {
    if rec.len() != REC_LEN {
        return None;
    }
    let u = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&rec[at..at + 8]);
        u64::from_le_bytes(b)
    };
    Some(ChunkMeta {
        size: u(REC_SIZE),
        version: u(REC_VERSION),
    })
}

impl ChunkMetaStore for RvmChunkMeta {
    fn get(&self, chunk: &ChunkId) -> Result<Option<ChunkMeta>, StoreError> {
        let rec = self
            .map
            .get(&*self.rvm, &chunk.key())
            .map_err(|e| meta_err(Some(chunk), e))?;
        match rec {
            None => Ok(None),
            Some(rec) => decode(&rec).map(Some).ok_or_else(|| {
                StoreError::meta(
                    format!("chunk metadata of {chunk}"),
                    format!("record is {} bytes, not {REC_LEN}", rec.len()),
                )
            }),
        }
    }

    fn put(&self, chunk: &ChunkId, meta: ChunkMeta) -> Result<(), StoreError> {
        let mut tx = self.rvm.begin();
        self.map
            .insert(&mut tx, &chunk.key(), &encode(meta))
            .map_err(|e| meta_err(Some(chunk), e))?;
        tx.commit(CommitMode::NoFlush)
            .map_err(|e| meta_err(Some(chunk), e))
    }

    fn remove(&self, chunk: &ChunkId) -> Result<(), StoreError> {
        let mut tx = self.rvm.begin();
        self.map
            .remove(&mut tx, &chunk.key())
            .map_err(|e| meta_err(Some(chunk), e))?;
        tx.commit(CommitMode::NoFlush)
            .map_err(|e| meta_err(Some(chunk), e))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.rvm.flush().map_err(|e| meta_err(None, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip() {
        let c = ChunkId::new(
            crate::objects::Fid {
                volume: 1,
                vnode: 0xdead_beef,
                unique: 3,
            },
            u64::MAX - 1,
        );
        assert_eq!(chunk_from_key(&c.key()), Some(c));
        assert_eq!(chunk_from_key(&[0u8; 3]), None);
    }

    #[test]
    fn record_round_trip() {
        let m = ChunkMeta {
            size: 0x1122_3344_5566_7788,
            version: 42,
        };
        assert_eq!(decode(&encode(m)), Some(m));
        assert_eq!(decode(&[0u8; 15]), None);
    }
}
