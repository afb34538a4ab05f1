//! End-to-end integrity on the brick: every change keeps the chunk's CRC
//! table (`storage::blockcrc`) in step with its data, every read checks the
//! data at rest against it, and `Verify` (scrub) checks a range without
//! sending it anywhere.
//!
//! Writes arrive with one CRC per 4 KiB grid piece (`WriteBlocks`), checked
//! here before anything touches the disk (data damaged on the way is
//! refused with `Checksum`). A full piece's CRC *is* its block's CRC and is
//! stored as it came (one CRC pass on the brick: the check). A partial
//! piece's block is read back after the write and its full-block CRC
//! computed (at most two blocks per request). Plain `Write`s (no table on
//! the wire) get their CRCs computed here.
//!
//! A change and its table update are one step under an exclusive lock on
//! the 1 MiB regions it touches; reads and verifies take the same locks
//! shared, so they never see new data with an old CRC. Lock stripes are
//! taken in increasing order (no deadlock).
//!
//! This module must not decide what to do about corruption beyond saying
//! so (`Corrupt`, a warning, a counter): repair is the client's, which has
//! the redundancy.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use iobuf::IoBuf;
use storage::blockcrc::{CrcTables, BLOCK};
use storage::objects::StoreError;
use storage::objects::{ChunkId, ObjectStore};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use transport::wire::{block_pieces, check_block_crcs, ErrorCode, ErrorReply, VerifyReply};

/// Lock granule: a change locks every 1 MiB region of its chunk it touches.
const REGION: u64 = 1 << 20;
/// Lock stripes (a region hashes to one).
const STRIPES: usize = 256;

enum Guard {
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

/// The chunk index volumes keep an object's size record in
/// (`volume::xlator::SIZE_CHUNK`): changed only by one-byte punches that
/// set its length, never read, so it gets no CRC table (one file fewer per
/// object on the brick).
pub const SIZE_RECORD_CHUNK: u64 = u64::MAX;

/// The brick's CRC tables and the locks that keep them in step.
#[derive(Debug)]
pub struct Integrity {
    tables: CrcTables,
    stripes: Vec<Arc<RwLock<()>>>,
    /// Blocks found at rest not matching their CRC (reads and verifies).
    corrupt: AtomicU64,
}

fn store_err(e: &StoreError) -> ErrorReply {
    let code = match e {
        StoreError::NoSpace { .. } => ErrorCode::NoSpace,
        StoreError::Invalid { .. } => ErrorCode::Invalid,
        _ => ErrorCode::Io,
    };
    ErrorReply::new(code, e.to_string())
}

fn block_floor(x: u64) -> u64 {
    x / BLOCK * BLOCK
}

fn block_ceil(x: u64) -> u64 {
    x.div_ceil(BLOCK) * BLOCK
}

impl Integrity {
    /// The tables under `dir/crc`.
    pub fn open(dir: &Path) -> io::Result<Integrity> {
        Ok(Integrity {
            tables: CrcTables::open(dir)?,
            stripes: (0..STRIPES).map(|_| Arc::new(RwLock::new(()))).collect(),
            corrupt: AtomicU64::new(0),
        })
    }

    /// Blocks found at rest not matching their CRC so far (reads and
    /// verifies count each time they find one).
    pub fn corrupt_blocks(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    /// The tables (tests look at them).
    pub fn tables(&self) -> &CrcTables {
        &self.tables
    }

    async fn lock(&self, chunk: ChunkId, offset: u64, len: u64, exclusive: bool) -> Vec<Guard> {
        let first = offset / REGION;
        let last = offset.saturating_add(len.max(1) - 1) / REGION;
        let mut idx: Vec<usize> = if last - first >= STRIPES as u64 {
            (0..STRIPES).collect()
        } else {
            (first..=last)
                .map(|r| {
                    let mut key = chunk.key().to_vec();
                    key.extend_from_slice(&r.to_le_bytes());
                    crc32c::crc32c(&key) as usize % STRIPES
                })
                .collect()
        };
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            let l = self.stripes[i].clone();
            guards.push(if exclusive {
                Guard::Exclusive(l.write_owned().await)
            } else {
                Guard::Shared(l.read_owned().await)
            });
        }
        guards
    }

    fn io_err(chunk: ChunkId, e: io::Error) -> ErrorReply {
        ErrorReply::new(ErrorCode::Io, format!("crc table of {chunk}: {e}"))
    }

    /// Before a change to `chunk`: makes its table if the chunk does not
    /// exist yet, and says whether it did. Only a new chunk gets one: a
    /// chunk written before tables existed stays unverified (a table made
    /// now would call its older blocks zeros). The table is made *before*
    /// the data, so a concurrent first change to another region of the
    /// chunk, which sees the chunk exist, also finds the table.
    fn creates(&self, store: &ObjectStore, chunk: ChunkId) -> Result<bool, ErrorReply> {
        if chunk.index == SIZE_RECORD_CHUNK {
            // Holds no data, only a size: no table to make or keep.
            return Ok(false);
        }
        let new = store.stat(chunk).map_err(|e| store_err(&e))?.is_none();
        if new {
            self.tables
                .create(chunk)
                .map_err(|e| Self::io_err(chunk, e))?;
        }
        Ok(new)
    }

    /// The full-block CRC of the block at `block_off`, read back from the
    /// store (after a change that covered only part of it).
    async fn reread_block(
        &self,
        store: &ObjectStore,
        chunk: ChunkId,
        block_off: u64,
    ) -> Result<u32, ErrorReply> {
        let mut buf = IoBuf::alloc(BLOCK as usize);
        buf.set_len(BLOCK as usize);
        let (res, buf) = store.read(chunk, block_off, buf).await;
        res.map_err(|e| store_err(&e))?;
        Ok(crc32c::crc32c(buf.as_slice()))
    }

    /// Block CRCs of the change `[offset, offset + len)` after it landed:
    /// `full(i)` gives piece `i`'s CRC when it is a whole block.
    async fn block_crcs_after(
        &self,
        store: &ObjectStore,
        chunk: ChunkId,
        offset: u64,
        len: u64,
        full: impl Fn(usize) -> u32,
    ) -> Result<Vec<u32>, ErrorReply> {
        let mut out = Vec::new();
        for (i, (a, b)) in block_pieces(offset, len).enumerate() {
            let at = offset + a as u64;
            if (b - a) as u64 == BLOCK {
                out.push(full(i));
            } else {
                out.push(self.reread_block(store, chunk, block_floor(at)).await?);
            }
        }
        Ok(out)
    }

    /// Writes `buf` at `offset` of `chunk` and records its block CRCs.
    /// `piece_crcs`: the writer's CRC per grid piece (checked first), or
    /// `None` to compute them here.
    pub async fn write(
        &self,
        store: &ObjectStore,
        chunk: ChunkId,
        offset: u64,
        buf: IoBuf,
        piece_crcs: Option<&[u32]>,
    ) -> Result<(), ErrorReply> {
        let len = buf.len() as u64;
        let computed;
        let crcs = match piece_crcs {
            Some(c) => {
                if let Err(i) = check_block_crcs(offset, buf.as_slice(), c) {
                    return Err(ErrorReply::new(ErrorCode::Checksum,
                        format!("write to {chunk} at {offset}: block piece {i} failed its CRC32C on receipt"),
                    ));
                }
                c
            }
            None => {
                computed = transport::wire::block_crcs(offset, buf.as_slice());
                &computed[..]
            }
        };
        if len == 0 {
            return Ok(());
        }
        let _g = self.lock(chunk, offset, len, true).await;
        let create = self.creates(store, chunk)?;
        let (res, _buf) = store.write(chunk, offset, buf).await;
        res.map_err(|e| store_err(&e))?;
        let blocks = self
            .block_crcs_after(store, chunk, offset, len, |i| crcs[i])
            .await?;
        self.tables
            .put(chunk, offset / BLOCK, &blocks, create)
            .map_err(|e| Self::io_err(chunk, e))
    }

    /// Punches or zeroes `[offset, offset + len)` and records the blocks.
    pub async fn range(
        &self,
        store: &ObjectStore,
        chunk: ChunkId,
        offset: u64,
        len: u64,
        zero: bool,
    ) -> Result<(), ErrorReply> {
        if len == 0 {
            return Ok(());
        }
        let _g = self.lock(chunk, offset, len, true).await;
        let create = self.creates(store, chunk)?;
        let res = if zero {
            store.zero(chunk, offset, len).await
        } else {
            store.punch(chunk, offset, len).await
        };
        res.map_err(|e| store_err(&e))?;
        if chunk.index == SIZE_RECORD_CHUNK {
            return Ok(());
        }
        let end = offset.saturating_add(len);
        let (inner_a, inner_b) = (block_ceil(offset), block_floor(end));
        if inner_b > inner_a {
            self.tables
                .put_zeros(chunk, inner_a / BLOCK, (inner_b - inner_a) / BLOCK, create)
                .map_err(|e| Self::io_err(chunk, e))?;
        }
        // The partly covered blocks at either end hold old bytes and zeros
        // (one block when the range sits inside it).
        let mut edges = Vec::new();
        if offset % BLOCK != 0 {
            edges.push(block_floor(offset));
        }
        if end % BLOCK != 0 {
            edges.push(block_floor(end));
        }
        edges.dedup();
        for b in edges {
            let c = self.reread_block(store, chunk, b).await?;
            self.tables
                .put(chunk, b / BLOCK, &[c], create)
                .map_err(|e| Self::io_err(chunk, e))?;
        }
        Ok(())
    }

    /// Removes the chunk and its table.
    pub async fn remove(&self, store: &ObjectStore, chunk: ChunkId) -> Result<(), ErrorReply> {
        let _g = self.lock(chunk, 0, u64::MAX, true).await;
        store.remove(chunk).await.map_err(|e| store_err(&e))?;
        self.tables
            .remove(chunk)
            .map_err(|e| Self::io_err(chunk, e))
    }

    /// Reads the whole blocks under `[offset, offset + len)` and checks them
    /// against the table. Returns the aligned buffer, its start, and the
    /// per-block CRCs computed from it.
    async fn read_checked(
        &self,
        store: &ObjectStore,
        chunk: ChunkId,
        offset: u64,
        len: u64,
    ) -> Result<(IoBuf, u64, Vec<u32>, Vec<u64>, bool), ErrorReply> {
        let start = block_floor(offset);
        let end = block_ceil(offset + len);
        let want = (end - start) as usize;
        let pool = store.pool();
        let mut buf = if want <= pool.buf_size() {
            pool.try_take().unwrap_or_else(|| IoBuf::alloc(want))
        } else {
            IoBuf::alloc(want)
        };
        buf.set_len(want);
        let (res, buf) = store.read(chunk, start, buf).await;
        res.map_err(|e| store_err(&e))?;
        let crcs: Vec<u32> = buf
            .as_slice()
            .chunks(BLOCK as usize)
            .map(crc32c::crc32c)
            .collect();
        let stored = self
            .tables
            .get(chunk, start / BLOCK, crcs.len())
            .map_err(|e| Self::io_err(chunk, e))?;
        let mut bad = Vec::new();
        let verified = stored.is_some();
        if let Some(stored) = stored {
            for (i, (c, s)) in crcs.iter().zip(&stored).enumerate() {
                if c != s {
                    bad.push(start + i as u64 * BLOCK);
                }
            }
        }
        if !bad.is_empty() {
            self.corrupt.fetch_add(bad.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                chunk = %chunk,
                blocks = bad.len(),
                first_bad_offset = bad[0],
                "data at rest does not match its stored CRC32C"
            );
        }
        Ok((buf, start, crcs, bad, verified))
    }

    /// Reads `len` bytes at `offset`, checked against the table. Returns
    /// the data and the CRC of each grid piece of it; a block that fails
    /// its check makes the whole read `Corrupt`.
    pub async fn read(
        &self,
        store: &ObjectStore,
        chunk: ChunkId,
        offset: u64,
        len: u64,
    ) -> Result<(IoBuf, Vec<u32>), ErrorReply> {
        if len == 0 {
            return Ok((IoBuf::alloc(0), Vec::new()));
        }
        let _g = self.lock(chunk, offset, len, false).await;
        let (buf, start, crcs, bad, _) = self.read_checked(store, chunk, offset, len).await?;
        if let Some(first) = bad.first() {
            return Err(ErrorReply::new(
                ErrorCode::Corrupt,
                format!(
                    "chunk {chunk}: {} block(s) at rest fail their CRC32C, first at offset {first}",
                    bad.len()
                ),
            ));
        }
        if start == offset && buf.len() as u64 == len {
            return Ok((buf, crcs));
        }
        // Unaligned: hand back just the bytes asked for, with the CRCs of
        // the partial pieces at either end computed from them.
        let from = (offset - start) as usize;
        let data = &buf.as_slice()[from..from + len as usize];
        let mut out = IoBuf::alloc(len as usize);
        out.set_len(len as usize);
        out.as_mut_slice().copy_from_slice(data);
        let pieces: Vec<u32> = block_pieces(offset, len)
            .map(|(a, b)| {
                if (b - a) as u64 == BLOCK {
                    crcs[(block_floor(offset + a as u64) - start) as usize / BLOCK as usize]
                } else {
                    crc32c::crc32c(&data[a..b])
                }
            })
            .collect();
        Ok((out, pieces))
    }

    /// Scrub: checks `[offset, offset + len)` at rest.
    pub async fn verify(
        &self,
        store: &ObjectStore,
        chunk: ChunkId,
        offset: u64,
        len: u64,
    ) -> Result<VerifyReply, ErrorReply> {
        if len == 0 {
            return Ok(VerifyReply::default());
        }
        let _g = self.lock(chunk, offset, len, false).await;
        let (_, _, crcs, bad, verified) = self.read_checked(store, chunk, offset, len).await?;
        Ok(VerifyReply {
            checked: if verified { crcs.len() as u32 } else { 0 },
            bad,
        })
    }

    /// Makes table changes durable (after the store's flush).
    pub fn flush(&self) -> io::Result<()> {
        self.tables.flush()
    }
}
