//! The on-disk data cache: file data kept under the cache directory in
//! chunks of [`CHUNK`] bytes, each named by its fid, the version of the
//! inode record it was fetched at and its index, within a size limit,
//! least recently used chunk evicted first. Files of any size are cached:
//! a large file holds only the chunks read lately.
//!
//! A cached chunk is valid for exactly one inode version: `open` re-reads
//! the inode (close-to-open) and the handle uses chunks of that version
//! only. Any change to the file (ours or another client's) raises the
//! version, so a stale chunk is never served; a file's chunks of an older
//! version are deleted when a chunk of a newer one is asked for or stored.
//!
//! Layout: `DIR/data/VNODE.UNIQUE.VERSION.CHUNK` (hex), written as
//! `DIR/data/tmp.*` and renamed when complete, so a crash leaves no partial
//! chunk under a valid name. Chunks found at start are kept (other names,
//! such as whole-file copies of older releases, are deleted).
//!
//! This module does no network I/O; the caller fetches.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use volume::Fid;

/// Bytes per cached chunk (the last chunk of a file may be shorter).
pub const CHUNK: u64 = 1 << 20;

/// The chunk index under which a directory's entries are kept (encoded by
/// the caller), valid for the directory's inode version: every change of
/// its entries commits the directory's inode too.
pub const DIR_ENTRIES: u64 = u64::MAX;

#[derive(Default)]
struct FileEntry {
    version: u64,
    /// Chunk index → (bytes, last use).
    chunks: HashMap<u64, (u64, u64)>,
}

/// See the module doc.
pub struct DiskCache {
    dir: PathBuf,
    limit: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    files: HashMap<Fid, FileEntry>,
    total: u64,
    /// Bytes of the limit held for the attribute snapshot.
    reserved: u64,
    count: usize,
    tick: u64,
    hits: u64,
    misses: u64,
}

fn name(fid: Fid, version: u64, idx: u64) -> String {
    format!("{:x}.{:x}.{:x}.{:x}", fid.vnode, fid.unique, version, idx)
}

fn parse(volume: u32, n: &str) -> Option<(Fid, u64, u64)> {
    let mut it = n.split('.');
    let vnode = u32::from_str_radix(it.next()?, 16).ok()?;
    let unique = u32::from_str_radix(it.next()?, 16).ok()?;
    let version = u64::from_str_radix(it.next()?, 16).ok()?;
    let idx = u64::from_str_radix(it.next()?, 16).ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((
        Fid {
            volume,
            vnode,
            unique,
        },
        version,
        idx,
    ))
}

impl DiskCache {
    /// Opens (or makes) the cache under `dir` for `volume`'s files, keeping
    /// at most `limit` bytes. Chunks left by an earlier mount are kept.
    pub fn open(dir: &Path, volume: u32, limit: u64) -> std::io::Result<DiskCache> {
        let dir = dir.join("data");
        std::fs::create_dir_all(&dir)?;
        let c = DiskCache {
            dir,
            limit,
            inner: Mutex::new(Inner::default()),
        };
        {
            let mut g = c.lock();
            for e in std::fs::read_dir(&c.dir)? {
                let e = e?;
                let n = e.file_name().to_string_lossy().into_owned();
                let keep = match parse(volume, &n) {
                    Some((fid, version, idx)) => {
                        let size = e.metadata()?.len();
                        let cached = g.files.get(&fid).map(|f| f.version);
                        if cached.is_some_and(|v| v < version) {
                            c.remove_locked(&mut g, fid);
                        }
                        let keep = cached.is_none_or(|v| v <= version);
                        if keep {
                            let f = g.files.entry(fid).or_default();
                            f.version = version;
                            f.chunks.insert(idx, (size, 0));
                            g.total += size;
                            g.count += 1;
                        }
                        keep
                    }
                    None => false,
                };
                if !keep {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            c.evict(&mut g, 0);
        }
        Ok(c)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether chunks are cached at all (the limit holds one chunk).
    pub fn enabled(&self) -> bool {
        self.limit >= CHUNK
    }

    /// Bytes `[off, off + len)` of chunk `idx` of `fid` at `version`, if
    /// that chunk is cached (and holds them). Chunks of another version
    /// are dropped.
    pub fn read(&self, fid: Fid, version: u64, idx: u64, off: u64, len: u64) -> Option<Vec<u8>> {
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        let hit = match g.files.get_mut(&fid) {
            Some(f) if f.version == version => match f.chunks.get_mut(&idx) {
                Some((size, used)) if off + len <= *size => {
                    *used = tick;
                    true
                }
                _ => false,
            },
            Some(f) if f.version < version => {
                self.remove_locked(&mut g, fid);
                false
            }
            _ => false,
        };
        if !hit {
            g.misses += 1;
            return None;
        }
        // Read under the lock: eviction cannot delete the file meanwhile.
        let mut buf = vec![0u8; len as usize];
        let ok = File::open(self.dir.join(name(fid, version, idx)))
            .and_then(|f| f.read_exact_at(&mut buf, off))
            .is_ok();
        if !ok {
            self.remove_locked(&mut g, fid);
            g.misses += 1;
            return None;
        }
        g.hits += 1;
        Some(buf)
    }

    /// All of chunk `idx` of `fid` at `version`, if cached.
    pub fn read_whole(&self, fid: Fid, version: u64, idx: u64) -> Option<Vec<u8>> {
        let size = {
            let g = self.lock();
            let f = g.files.get(&fid).filter(|f| f.version == version)?;
            f.chunks.get(&idx)?.0
        };
        self.read(fid, version, idx, 0, size)
    }

    /// Stores `data` as chunk `idx` of `fid` at `version`, after evicting
    /// least recently used chunks to stay within the limit. Chunks of an
    /// older version are dropped; a chunk of an older version than the
    /// cached one is not stored.
    pub fn put(&self, fid: Fid, version: u64, idx: u64, data: &[u8]) -> std::io::Result<()> {
        let size = data.len() as u64;
        if size > self.limit {
            return Ok(());
        }
        let tmp = self.dir.join(format!(
            "tmp.{}.{:x}",
            name(fid, version, idx),
            rand::random::<u32>()
        ));
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        drop(f);
        let mut g = self.lock();
        if size + g.reserved > self.limit {
            drop(g);
            let _ = std::fs::remove_file(&tmp);
            return Ok(());
        }
        match g.files.get(&fid).map(|f| f.version) {
            Some(v) if v > version => {
                drop(g);
                let _ = std::fs::remove_file(&tmp);
                return Ok(());
            }
            Some(v) if v < version => self.remove_locked(&mut g, fid),
            _ => self.remove_chunk(&mut g, fid, idx),
        }
        self.evict(&mut g, size);
        if let Err(e) = std::fs::rename(&tmp, self.dir.join(name(fid, version, idx))) {
            drop(g);
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        g.tick += 1;
        let tick = g.tick;
        g.total += size;
        g.count += 1;
        let f = g.files.entry(fid).or_default();
        f.version = version;
        f.chunks.insert(idx, (size, tick));
        Ok(())
    }

    /// Drops `fid`'s chunks (its file changed).
    pub fn remove(&self, fid: Fid) {
        let mut g = self.lock();
        self.remove_locked(&mut g, fid);
    }

    fn remove_locked(&self, g: &mut Inner, fid: Fid) {
        if let Some(f) = g.files.remove(&fid) {
            for (idx, (size, _)) in f.chunks {
                g.total -= size;
                g.count -= 1;
                let _ = std::fs::remove_file(self.dir.join(name(fid, f.version, idx)));
            }
        }
    }

    fn remove_chunk(&self, g: &mut Inner, fid: Fid, idx: u64) {
        let Some(f) = g.files.get_mut(&fid) else {
            return;
        };
        let version = f.version;
        if let Some((size, _)) = f.chunks.remove(&idx) {
            if f.chunks.is_empty() {
                g.files.remove(&fid);
            }
            g.total -= size;
            g.count -= 1;
            let _ = std::fs::remove_file(self.dir.join(name(fid, version, idx)));
        }
    }

    /// Holds `bytes` of the limit for the attribute snapshot kept beside
    /// the chunks (`crate::snapshot`), evicting chunks to make room.
    pub fn reserve(&self, bytes: u64) {
        let mut g = self.lock();
        g.reserved = bytes;
        self.evict(&mut g, 0);
    }

    /// Evicts least recently used chunks until `extra` more bytes fit.
    fn evict(&self, g: &mut Inner, extra: u64) {
        while g.total + g.reserved + extra > self.limit {
            let Some((fid, idx)) = g
                .files
                .iter()
                .flat_map(|(fid, f)| f.chunks.iter().map(move |(i, (_, u))| (*u, *fid, *i)))
                .min()
                .map(|(_, f, i)| (f, i))
            else {
                return;
            };
            self.remove_chunk(g, fid, idx);
        }
    }

    /// Bytes held, chunks held, hits, misses.
    pub fn stats(&self) -> (u64, usize, u64, u64) {
        let g = self.lock();
        (g.total, g.count, g.hits, g.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fid(n: u32) -> Fid {
        Fid {
            volume: 3,
            vnode: n,
            unique: 2,
        }
    }

    fn tmpdir() -> PathBuf {
        std::env::temp_dir().join(format!("stretto-cache-{}", rand::random::<u64>()))
    }

    #[test]
    fn versions_lru_and_restart() {
        let dir = tmpdir();
        let c = DiskCache::open(&dir, 3, 250).unwrap();
        c.put(fid(1), 1, 0, &[1; 100]).unwrap();
        c.put(fid(2), 1, 0, &[2; 100]).unwrap();
        assert!(c.read(fid(1), 1, 0, 0, 100).is_some()); // 1 is now newer than 2
        c.put(fid(3), 1, 0, &[3; 100]).unwrap(); // evicts 2
        assert!(c.read(fid(2), 1, 0, 0, 1).is_none());
        assert_eq!(c.read(fid(1), 1, 0, 10, 5).unwrap(), vec![1; 5]);
        // Past the chunk's end: a miss.
        assert!(c.read(fid(1), 1, 0, 90, 20).is_none());
        // An older version is a miss; a newer one drops the chunks.
        assert!(c.read(fid(3), 0, 0, 0, 1).is_none());
        assert!(c.read(fid(3), 1, 0, 0, 1).is_some());
        assert!(c.read(fid(3), 2, 0, 0, 1).is_none());
        assert!(c.read(fid(3), 1, 0, 0, 1).is_none());
        assert_eq!(c.stats().0, 100);
        // An older version than the cached one is not stored.
        c.put(fid(1), 2, 1, &[4; 10]).unwrap();
        assert!(c.read(fid(1), 1, 0, 0, 1).is_none());
        c.put(fid(1), 1, 0, &[1; 10]).unwrap();
        assert!(c.read(fid(1), 1, 0, 0, 1).is_none());
        assert_eq!(c.read(fid(1), 2, 1, 0, 10).unwrap(), vec![4; 10]);
        drop(c);
        // Chunks survive a restart; a smaller limit evicts at once.
        let c = DiskCache::open(&dir, 3, 1000).unwrap();
        assert!(c.read(fid(1), 2, 1, 0, 10).is_some());
        assert_eq!(c.stats().1, 1);
        drop(c);
        let c = DiskCache::open(&dir, 3, 5).unwrap();
        assert_eq!(c.stats().1, 0);
        assert_eq!(std::fs::read_dir(dir.join("data")).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn large_file_chunks_evicted_one_by_one() {
        let dir = tmpdir();
        // Room for three chunks of 100 bytes.
        let c = DiskCache::open(&dir, 3, 300).unwrap();
        for i in 0..10u64 {
            c.put(fid(1), 7, i, &[i as u8; 100]).unwrap();
            assert!(c.stats().0 <= 300);
        }
        // The three last chunks remain, the others were evicted singly.
        assert_eq!(c.stats().1, 3);
        for i in 0..7 {
            assert!(c.read(fid(1), 7, i, 0, 1).is_none(), "{i}");
        }
        for i in 7..10u64 {
            assert_eq!(c.read(fid(1), 7, i, 0, 100).unwrap(), vec![i as u8; 100]);
        }
        assert_eq!(std::fs::read_dir(dir.join("data")).unwrap().count(), 3);
        // Old whole-file names are dropped at start.
        std::fs::write(dir.join("data/1.2.7"), b"x").unwrap();
        drop(c);
        let c = DiskCache::open(&dir, 3, 300).unwrap();
        assert_eq!(c.stats().1, 3);
        assert_eq!(std::fs::read_dir(dir.join("data")).unwrap().count(), 3);
        // Room held for the snapshot evicts chunks and bounds new ones.
        c.reserve(150);
        assert_eq!(c.stats().1, 1);
        c.put(fid(2), 1, 0, &[1; 100]).unwrap();
        assert_eq!((c.stats().0, c.stats().1), (100, 1));
        assert!(c.read(fid(2), 1, 0, 0, 100).is_some());
        c.put(fid(3), 1, 0, &[1; 200]).unwrap();
        assert!(c.read(fid(3), 1, 0, 0, 1).is_none());
        c.reserve(0);
        c.put(fid(3), 1, 0, &[1; 200]).unwrap();
        assert_eq!(c.stats().0, 300);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
