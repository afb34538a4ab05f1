//! Per-chunk size and version, kept behind a trait so that the RVM can hold
//! them durably; [`MemoryMeta`] is the in-memory stand-in for tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::error::StoreError;
use super::id::ChunkId;

/// What the store knows about a chunk besides its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChunkMeta {
    /// One past the highest byte ever written, punched or zeroed (the
    /// chunk's logical size; reads past it return zeros).
    pub size: u64,
    /// Bumped by one for every successful write, punch or zero.
    pub version: u64,
}

/// Where chunk metadata lives. The object store calls it from its worker
/// threads, at most one call at a time per chunk (a chunk belongs to one
/// worker), but calls for different chunks may run concurrently.
///
/// While a store is open it is the only writer of its chunks' metadata: a
/// worker keeps a copy of each chunk's metadata it has read or written
/// while it has that chunk open or busy, and bumps the copy instead of
/// reading the store again. Change metadata behind an open store's back
/// (e.g. [`MemoryMeta::lose_unflushed`]) only after dropping the store.
pub trait ChunkMetaStore: Send + Sync {
    /// The chunk's metadata, `None` if the chunk was never written.
    fn get(&self, chunk: &ChunkId) -> Result<Option<ChunkMeta>, StoreError>;
    /// Sets the chunk's metadata; it need only be durable after the next
    /// [`ChunkMetaStore::flush`] returns.
    fn put(&self, chunk: &ChunkId, meta: ChunkMeta) -> Result<(), StoreError>;
    /// Forgets the chunk; durable after the next flush.
    fn remove(&self, chunk: &ChunkId) -> Result<(), StoreError>;
    /// Makes every earlier `put` and `remove` durable. The object store calls
    /// this only after the chunk data of a flush is durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// Chunk metadata in memory. **Not durable**: it lives as long as this value
/// (share it through an `Arc` to "reopen" a store in tests). It remembers
/// what the last [`ChunkMetaStore::flush`] saw, so a test can drop everything
/// since with [`MemoryMeta::lose_unflushed`], as a crash would.
#[derive(Debug, Default)]
pub struct MemoryMeta {
    state: Mutex<MemoryState>,
    flushes: AtomicU64,
}

#[derive(Debug, Default)]
struct MemoryState {
    live: HashMap<ChunkId, ChunkMeta>,
    flushed: HashMap<ChunkId, ChunkMeta>,
}

impl MemoryMeta {
    /// An empty, non-durable metadata store.
    pub fn new() -> MemoryMeta {
        MemoryMeta::default()
    }

    /// How many times `flush` ran.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// Number of chunks with metadata.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// True when no chunk has metadata.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Throws away every change since the last flush, as a crash would.
    pub fn lose_unflushed(&self) {
        let mut s = self.lock();
        s.live = s.flushed.clone();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding this lock cannot leave the maps half-changed
        // (every change is one insert/remove/clone), so poison is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ChunkMetaStore for MemoryMeta {
    fn get(&self, chunk: &ChunkId) -> Result<Option<ChunkMeta>, StoreError> {
        Ok(self.lock().live.get(chunk).copied())
    }

    fn put(&self, chunk: &ChunkId, meta: ChunkMeta) -> Result<(), StoreError> {
        self.lock().live.insert(*chunk, meta);
        Ok(())
    }

    fn remove(&self, chunk: &ChunkId) -> Result<(), StoreError> {
        self.lock().live.remove(chunk);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut s = self.lock();
        s.flushed = s.live.clone();
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
