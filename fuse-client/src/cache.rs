//! The on-disk data cache: whole files (up to [`WHOLE_FILE_MAX`]) kept
//! under the cache directory, each named by its fid and the version of the
//! inode record it was fetched at, within a size limit, least recently
//! used evicted first.
//!
//! A cached copy is valid for exactly one inode version: `open` re-reads
//! the inode (close-to-open) and uses the copy only if the versions match,
//! else fetches the file again. Any change to the file (ours or another
//! client's) raises the version, so a stale copy is never served; it is
//! deleted when the fid is next opened or evicted.
//!
//! Layout: `DIR/data/VNODE.UNIQUE.VERSION` (hex), written as
//! `DIR/data/tmp.*` and renamed when complete, so a crash leaves no partial
//! copy under a valid name. Copies found at start are kept.
//!
//! This module does no network I/O; the caller fetches.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use volume::Fid;

/// Largest file cached whole.
pub const WHOLE_FILE_MAX: u64 = 64 << 20;

struct Entry {
    version: u64,
    size: u64,
    file: Arc<File>,
    last_used: u64,
}

/// See the module doc.
pub struct DiskCache {
    dir: PathBuf,
    limit: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Fid, Entry>,
    total: u64,
    tick: u64,
    hits: u64,
    misses: u64,
}

fn name(fid: Fid, version: u64) -> String {
    format!("{:x}.{:x}.{:x}", fid.vnode, fid.unique, version)
}

fn parse(volume: u32, n: &str) -> Option<(Fid, u64)> {
    let mut it = n.split('.');
    let vnode = u32::from_str_radix(it.next()?, 16).ok()?;
    let unique = u32::from_str_radix(it.next()?, 16).ok()?;
    let version = u64::from_str_radix(it.next()?, 16).ok()?;
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
    ))
}

impl DiskCache {
    /// Opens (or makes) the cache under `dir` for `volume`'s files, keeping
    /// at most `limit` bytes. Copies left by an earlier mount are kept.
    pub fn open(dir: &Path, volume: u32, limit: u64) -> std::io::Result<DiskCache> {
        let dir = dir.join("data");
        std::fs::create_dir_all(&dir)?;
        let mut inner = Inner::default();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let n = e.file_name().to_string_lossy().into_owned();
            match parse(volume, &n) {
                Some((fid, version)) if !inner.entries.contains_key(&fid) => {
                    let file = File::open(e.path())?;
                    let size = file.metadata()?.len();
                    inner.total += size;
                    inner.entries.insert(
                        fid,
                        Entry {
                            version,
                            size,
                            file: Arc::new(file),
                            last_used: 0,
                        },
                    );
                }
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let c = DiskCache {
            dir,
            limit,
            inner: Mutex::new(inner),
        };
        c.evict(&mut c.lock(), 0);
        Ok(c)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a file of `size` bytes is cached whole.
    pub fn wants(&self, size: u64) -> bool {
        size <= WHOLE_FILE_MAX && size <= self.limit
    }

    /// The cached copy of `fid` at `version`, if any. A copy of another
    /// version is dropped.
    pub fn get(&self, fid: Fid, version: u64) -> Option<Arc<File>> {
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        match g.entries.get_mut(&fid) {
            Some(e) if e.version == version => {
                e.last_used = tick;
                let f = e.file.clone();
                g.hits += 1;
                Some(f)
            }
            Some(_) => {
                self.remove_locked(&mut g, fid);
                g.misses += 1;
                None
            }
            None => {
                g.misses += 1;
                None
            }
        }
    }

    /// Stores `data` as `fid`'s copy at `version` and returns it, after
    /// evicting least recently used copies to stay within the limit.
    pub fn put(&self, fid: Fid, version: u64, data: &[u8]) -> std::io::Result<Arc<File>> {
        let tmp = self.dir.join(format!(
            "tmp.{}.{:x}",
            name(fid, version),
            rand::random::<u32>()
        ));
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        let path = self.dir.join(name(fid, version));
        std::fs::rename(&tmp, &path)?;
        let file = Arc::new(File::open(&path)?);
        let mut g = self.lock();
        self.remove_locked(&mut g, fid);
        let size = data.len() as u64;
        self.evict(&mut g, size);
        g.tick += 1;
        let tick = g.tick;
        g.total += size;
        g.entries.insert(
            fid,
            Entry {
                version,
                size,
                file: file.clone(),
                last_used: tick,
            },
        );
        Ok(file)
    }

    /// Drops `fid`'s copy (its file changed).
    pub fn remove(&self, fid: Fid) {
        let mut g = self.lock();
        self.remove_locked(&mut g, fid);
    }

    fn remove_locked(&self, g: &mut Inner, fid: Fid) {
        if let Some(e) = g.entries.remove(&fid) {
            g.total -= e.size;
            // Open handles keep reading the unlinked file.
            let _ = std::fs::remove_file(self.dir.join(name(fid, e.version)));
        }
    }

    /// Evicts least recently used copies until `extra` more bytes fit.
    fn evict(&self, g: &mut Inner, extra: u64) {
        while g.total + extra > self.limit {
            let Some(fid) = g
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(f, _)| *f)
            else {
                return;
            };
            self.remove_locked(g, fid);
        }
    }

    /// Bytes held, copies held, hits, misses.
    pub fn stats(&self) -> (u64, usize, u64, u64) {
        let g = self.lock();
        (g.total, g.entries.len(), g.hits, g.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn fid(n: u32) -> Fid {
        Fid {
            volume: 3,
            vnode: n,
            unique: 2,
        }
    }

    #[test]
    fn versions_lru_and_restart() {
        let dir = std::env::temp_dir().join(format!("stretto-cache-{}", rand::random::<u64>()));
        let c = DiskCache::open(&dir, 3, 250).unwrap();
        c.put(fid(1), 1, &[1; 100]).unwrap();
        c.put(fid(2), 1, &[2; 100]).unwrap();
        assert!(c.get(fid(1), 1).is_some()); // 1 is now newer than 2
        c.put(fid(3), 1, &[3; 100]).unwrap(); // evicts 2
        assert!(c.get(fid(2), 1).is_none());
        let f = c.get(fid(1), 1).unwrap();
        let mut b = [0u8; 100];
        f.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(b, [1; 100]);
        // Another version is a miss and drops the copy.
        assert!(c.get(fid(3), 2).is_none());
        assert!(c.get(fid(3), 1).is_none());
        assert_eq!(c.stats().0, 100);
        drop(c);
        // Copies survive a restart; a smaller limit evicts at once.
        let c = DiskCache::open(&dir, 3, 1000).unwrap();
        assert!(c.get(fid(1), 1).is_some());
        drop(c);
        let c = DiskCache::open(&dir, 3, 50).unwrap();
        assert_eq!(c.stats().1, 0);
        assert_eq!(std::fs::read_dir(dir.join("data")).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
