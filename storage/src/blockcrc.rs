//! Per-chunk CRC tables: the CRC32C of every 4 KiB block of a chunk, kept
//! in a sidecar file beside the object store so data at rest can be checked
//! on every read and by scrub.
//!
//! This module stores and fetches CRCs; it does not compute them from chunk
//! data or decide when to (the brick does, under its own range locks, so a
//! table update and the data change it describes are ordered). It knows
//! nothing of the network.
//!
//! # On-disk layout (version 1)
//!
//! ```text
//! DIR/crc/XX/YY/vvvvvvvv.nnnnnnnn.uuuuuuuu.iiiiiiiiiiiiiiii   one table per chunk
//! ```
//! (the same fan-out and name as the chunk file under `DIR/objects/`, see
//! `docs/objects.md`). A table file:
//!
//! ```text
//!  0        4         8            12         16
//!  +--------+---------+------------+----------+---------------------------+
//!  | magic  | version | block size | reserved | entry [i], u32 LE each    |
//!  | "SCRC" | u32 = 1 | u32 = 4096 |  u32 = 0 | at 16 + 4 i               |
//!  +--------+---------+------------+----------+---------------------------+
//! ```
//! Entry `i` is `crc32c(block i) XOR ZERO_BLOCK_CRC`, where block `i` is
//! chunk bytes `[4096 i, 4096 i + 4096)` as read (zeros past the file's
//! end). The XOR makes an entry of 0 mean "an all-zero block", so the holes
//! of a sparse table (never written, punched, past its end) describe exactly
//! the blocks that read as zeros.
//!
//! A chunk with no table (written before bricks kept them) is *unverified*:
//! reads and scrub skip the check. Tables are written with plain `pwrite`
//! and made durable by [`CrcTables::flush`] (`fdatasync` of every table
//! changed since), which the brick calls with the object store's flush.
//! Data and table are not updated atomically: after a crash a block written
//! since the last flush may hold new data and an old CRC (or the reverse),
//! and reads as `Corrupt` until redundancy repairs it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::objects::ChunkId;

/// The block a CRC covers.
pub const BLOCK: u64 = 4096;
/// `"SCRC"`.
pub const MAGIC: [u8; 4] = *b"SCRC";
/// The table format's version.
pub const VERSION: u32 = 1;
const H_MAGIC: usize = 0;
const H_VERSION: usize = 4;
const H_BLOCK: usize = 8;
const H_RESERVED: usize = 12;
/// Size of the table header; entry `i` is at `HEADER_LEN + 4 i`.
pub const HEADER_LEN: u64 = 16;
/// Most table files kept in the open cache (the least recently opened
/// leave it first; a changed one stays open until the next flush syncs it).
const MAX_OPEN: usize = 256;

/// CRC32C of a 4 KiB block of zeros.
pub fn zero_block_crc() -> u32 {
    static ZERO: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| crc32c::crc32c(&[0u8; BLOCK as usize]))
}

/// The sidecar CRC tables of one brick's chunks.
#[derive(Debug)]
pub struct CrcTables {
    root: PathBuf,
    open: Mutex<OpenTables>,
    /// Held while a table missing from the cache is opened or created, so
    /// two first writes to a new chunk cannot both create (and truncate) it.
    opening: Mutex<()>,
}

#[derive(Debug, Default)]
struct OpenTables {
    files: HashMap<ChunkId, Arc<File>>,
    order: Vec<ChunkId>,
    /// Tables changed since their last sync, with their file (kept even if
    /// the table is closed from the cache meanwhile).
    dirty: HashMap<ChunkId, Arc<File>>,
}

fn bad_table(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("crc table {}: {what}", path.display()),
    )
}

impl CrcTables {
    /// The tables under `dir/crc` (created if missing).
    pub fn open(dir: &Path) -> io::Result<CrcTables> {
        let root = dir.join("crc");
        std::fs::create_dir_all(&root)?;
        Ok(CrcTables {
            root,
            open: Mutex::new(OpenTables::default()),
            opening: Mutex::new(()),
        })
    }

    /// Where `chunk`'s table lives (it may not exist).
    pub fn path(&self, chunk: ChunkId) -> PathBuf {
        self.root.join(chunk.relative_path())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpenTables> {
        // A panic while holding this lock leaves only caches behind.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open table of `chunk`; with `create`, a missing one is made
    /// (with its header) first. `None`: no table and not asked to create.
    fn table(&self, chunk: ChunkId, create: bool) -> io::Result<Option<Arc<File>>> {
        if let Some(f) = self.lock().files.get(&chunk) {
            return Ok(Some(f.clone()));
        }
        let _opening = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = self.lock().files.get(&chunk) {
            return Ok(Some(f.clone()));
        }
        let path = self.path(chunk);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => {
                let mut h = [0u8; HEADER_LEN as usize];
                f.read_exact_at(&mut h, 0)
                    .map_err(|_| bad_table(&path, "short header"))?;
                if h[H_MAGIC..H_MAGIC + 4] != MAGIC {
                    return Err(bad_table(&path, "bad magic"));
                }
                let word = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
                if word(H_VERSION) != VERSION {
                    return Err(bad_table(&path, "unknown version"));
                }
                if word(H_BLOCK) != BLOCK as u32 || word(H_RESERVED) != 0 {
                    return Err(bad_table(&path, "bad block size or reserved field"));
                }
                f
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)?;
                let mut h = [0u8; HEADER_LEN as usize];
                h[H_MAGIC..H_MAGIC + 4].copy_from_slice(&MAGIC);
                h[H_VERSION..H_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
                h[H_BLOCK..H_BLOCK + 4].copy_from_slice(&(BLOCK as u32).to_le_bytes());
                f.write_all_at(&h, 0)?;
                // The new name must survive a crash with the data.
                f.sync_all()?;
                if let Some(parent) = path.parent() {
                    File::open(parent)?.sync_all()?;
                }
                f
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let file = Arc::new(file);
        let mut open = self.lock();
        if open.files.len() >= MAX_OPEN {
            // A dirty victim stays in `dirty` (with its file) until a flush.
            let victim = open.order.remove(0);
            open.files.remove(&victim);
        }
        let file = open.files.entry(chunk).or_insert(file).clone();
        if !open.order.contains(&chunk) {
            open.order.push(chunk);
        }
        Ok(Some(file))
    }

    /// Makes `chunk`'s table if it has none (all entries: zero blocks).
    pub fn create(&self, chunk: ChunkId) -> io::Result<()> {
        self.table(chunk, true).map(|_| ())
    }

    /// Does `chunk` have a table?
    pub fn exists(&self, chunk: ChunkId) -> io::Result<bool> {
        Ok(self.table(chunk, false)?.is_some())
    }

    /// The stored CRCs of blocks `first..first + n` of `chunk`, or `None`
    /// when the chunk has no table (unverified).
    pub fn get(&self, chunk: ChunkId, first: u64, n: usize) -> io::Result<Option<Vec<u32>>> {
        let Some(f) = self.table(chunk, false)? else {
            return Ok(None);
        };
        let mut raw = vec![0u8; n * 4];
        let mut got = 0;
        let at = HEADER_LEN + first * 4;
        // Past the table's end every entry is 0 (an all-zero block).
        while got < raw.len() {
            match f.read_at(&mut raw[got..], at + got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let zero = zero_block_crc();
        Ok(Some(
            raw.chunks_exact(4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ zero)
                .collect(),
        ))
    }

    /// Stores the CRCs of blocks `first..first + crcs.len()` of `chunk`.
    /// With `create`, a chunk without a table gets one; otherwise an
    /// unverified chunk stays so and this does nothing.
    pub fn put(&self, chunk: ChunkId, first: u64, crcs: &[u32], create: bool) -> io::Result<()> {
        let Some(f) = self.table(chunk, create)? else {
            return Ok(());
        };
        let zero = zero_block_crc();
        let mut raw = Vec::with_capacity(crcs.len() * 4);
        for c in crcs {
            raw.extend_from_slice(&(c ^ zero).to_le_bytes());
        }
        f.write_all_at(&raw, HEADER_LEN + first * 4)?;
        self.lock().dirty.insert(chunk, f);
        Ok(())
    }

    /// Records blocks `first..first + n` as all zeros (after a punch or a
    /// zero of whole blocks). Entries past the table's end already say so,
    /// so this writes at most up to it.
    pub fn put_zeros(&self, chunk: ChunkId, first: u64, n: u64, create: bool) -> io::Result<()> {
        let Some(f) = self.table(chunk, create)? else {
            return Ok(());
        };
        let end_entry = (f.metadata()?.len().saturating_sub(HEADER_LEN)) / 4;
        let last = (first.saturating_add(n)).min(end_entry);
        if last <= first {
            return Ok(());
        }
        let zeros = vec![0u8; 64 * 1024];
        let mut at = HEADER_LEN + first * 4;
        let end = HEADER_LEN + last * 4;
        while at < end {
            let k = ((end - at) as usize).min(zeros.len());
            f.write_all_at(&zeros[..k], at)?;
            at += k as u64;
        }
        self.lock().dirty.insert(chunk, f);
        Ok(())
    }

    /// Deletes `chunk`'s table (with the chunk).
    pub fn remove(&self, chunk: ChunkId) -> io::Result<()> {
        {
            let mut open = self.lock();
            open.files.remove(&chunk);
            open.order.retain(|c| *c != chunk);
            open.dirty.remove(&chunk);
        }
        match std::fs::remove_file(self.path(chunk)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes every table change so far durable. On failure the tables stay
    /// marked for the next flush.
    pub fn flush(&self) -> io::Result<()> {
        let dirty: Vec<(ChunkId, Arc<File>)> = self.lock().dirty.drain().collect();
        let mut first_err = None;
        for (c, f) in dirty {
            if let Err(e) = f.sync_data() {
                self.lock().dirty.entry(c).or_insert(f);
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Fid;
    use proptest::prelude::*;

    fn chunk(i: u64) -> ChunkId {
        ChunkId::new(
            Fid {
                volume: 1,
                vnode: 2,
                unique: 3,
            },
            i,
        )
    }

    #[test]
    fn header_and_zero_entries() {
        let d = tempfile::tempdir().unwrap();
        let t = CrcTables::open(d.path()).unwrap();
        assert_eq!(t.get(chunk(0), 0, 2).unwrap(), None);
        t.put(chunk(0), 0, &[7], false).unwrap();
        assert!(
            !t.exists(chunk(0)).unwrap(),
            "put without create makes nothing"
        );
        t.put(chunk(0), 3, &[0xdead_beef, 5], true).unwrap();
        let z = zero_block_crc();
        assert_eq!(
            t.get(chunk(0), 0, 7).unwrap().unwrap(),
            vec![z, z, z, 0xdead_beef, 5, z, z]
        );
        t.put_zeros(chunk(0), 4, 1 << 40, false).unwrap();
        assert_eq!(
            t.get(chunk(0), 3, 2).unwrap().unwrap(),
            vec![0xdead_beef, z]
        );
        t.flush().unwrap();
        let raw = std::fs::read(t.path(chunk(0))).unwrap();
        assert_eq!(&raw[..16], b"SCRC\x01\0\0\0\x00\x10\0\0\0\0\0\0");
        assert_eq!(raw.len(), 16 + 5 * 4);
        assert_eq!(&raw[28..32], &(0xdead_beef ^ z).to_le_bytes());
        // Reopened from disk by a new instance.
        let t2 = CrcTables::open(d.path()).unwrap();
        assert_eq!(t2.get(chunk(0), 3, 1).unwrap().unwrap(), vec![0xdead_beef]);
        t2.remove(chunk(0)).unwrap();
        assert_eq!(t2.get(chunk(0), 0, 1).unwrap(), None);
    }

    #[test]
    fn a_table_with_a_bad_header_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let t = CrcTables::open(d.path()).unwrap();
        let p = t.path(chunk(1));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"SCRC\x02\0\0\0\x00\x10\0\0\0\0\0\0").unwrap();
        let e = t.get(chunk(1), 0, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    proptest! {
        /// The table behaves like a map from block to CRC where missing
        /// blocks hold the zero-block CRC.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u64..64, proptest::collection::vec(any::<u32>(), 0..8), any::<bool>()), 1..30)) {
            let d = tempfile::tempdir().unwrap();
            let t = CrcTables::open(d.path()).unwrap();
            let z = zero_block_crc();
            let mut model = vec![z; 80];
            for (first, crcs, zero) in ops {
                if zero {
                    t.put_zeros(chunk(9), first, crcs.len() as u64, true).unwrap();
                    for i in 0..crcs.len() { model[first as usize + i] = z; }
                } else {
                    t.put(chunk(9), first, &crcs, true).unwrap();
                    for (i, c) in crcs.iter().enumerate() { model[first as usize + i] = *c; }
                }
            }
            prop_assert_eq!(t.get(chunk(9), 0, 80).unwrap().unwrap(), model);
        }
    }
}
