//! The file I/O of RVM behind a small trait, so tests can plug in a
//! crash-simulating backend ([`super::sim`]) in place of real files.
//!
//! This module must not know about records or transactions: it moves bytes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use iobuf::IoBuf;
use memmap2::{MmapMut, MmapOptions};

use super::format::BLOCK;

/// What RVM needs from a file. Offsets and lengths of log writes are always
/// multiples of 4096 and their buffers 4096-aligned (the log may be opened
/// with `O_DIRECT`).
pub trait RvmFile: Send + Sync {
    /// The path, for error messages (a made-up one for simulated files).
    fn path(&self) -> &Path;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`. Not durable until [`RvmFile::sync`].
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every write so far durable.
    fn sync(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True when the file has no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Grows the file to `len` bytes of zeros, durably (used at creation).
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// A private copy-on-write mapping of the first `len` bytes, if this
    /// backend has one; otherwise RVM reads the segment into memory.
    fn map_private(&self, _len: u64) -> Option<io::Result<MmapMut>> {
        None
    }
}

/// The two files of one RVM instance.
pub struct RvmFiles {
    pub segment: Box<dyn RvmFile>,
    pub log: Box<dyn RvmFile>,
}

/// Only one warning per process about a file system refusing `O_DIRECT`.
static WARNED_NO_DIRECT: AtomicBool = AtomicBool::new(false);

/// A real file on a local file system.
pub struct DiskFile {
    file: File,
    path: PathBuf,
    /// Opened with `O_DIRECT`: reads and writes go through aligned buffers.
    direct: bool,
    /// Opened with `O_DSYNC`: every write is durable when it returns, so
    /// [`RvmFile::sync`] has nothing left to do.
    dsync: bool,
    /// [`RvmFile::allocate`] writes real zeros over the whole file (the
    /// log; see there why).
    zero_fill: bool,
}

/// Size of each zero write when [`RvmFile::allocate`] fills the log.
const ZERO_FILL_CHUNK: usize = 1 << 20;

impl DiskFile {
    /// Opens (or with `create`, creates exclusively) the segment file:
    /// buffered I/O, made durable by `fdatasync`.
    pub fn open_segment(path: &Path, create: bool) -> io::Result<DiskFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .open(path)?;
        Ok(DiskFile {
            file,
            path: path.to_path_buf(),
            direct: false,
            dsync: false,
            zero_fill: false,
        })
    }

    /// Opens (or creates exclusively) the log file with
    /// `O_DIRECT|O_DSYNC`, falling back to `O_DSYNC` alone when the file
    /// system refuses `O_DIRECT` (tmpfs answers `EINVAL`).
    pub fn open_log(path: &Path, create: bool) -> io::Result<DiskFile> {
        let open = |flags: libc::c_int| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(create)
                .custom_flags(flags)
                .open(path)
        };
        match open(libc::O_DIRECT | libc::O_DSYNC) {
            Ok(file) => Ok(DiskFile {
                file,
                path: path.to_path_buf(),
                direct: true,
                dsync: true,
                zero_fill: true,
            }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                if !WARNED_NO_DIRECT.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %path.display(),
                        "file system refuses O_DIRECT; rvm log uses buffered O_DSYNC writes"
                    );
                }
                // With `create_new` the failed open may have created the
                // file already (Linux checks O_DIRECT support after
                // creating it); open it as it is then.
                let file = match open(libc::O_DSYNC) {
                    Err(e2) if create && e2.kind() == io::ErrorKind::AlreadyExists => {
                        OpenOptions::new()
                            .read(true)
                            .write(true)
                            .custom_flags(libc::O_DSYNC)
                            .open(path)?
                    }
                    other => other?,
                };
                Ok(DiskFile {
                    file,
                    path: path.to_path_buf(),
                    direct: false,
                    dsync: true,
                    zero_fill: true,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// True when the file was opened with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct
    }
}

fn aligned(offset: u64, len: usize, ptr: *const u8) -> bool {
    offset % BLOCK == 0 && len as u64 % BLOCK == 0 && (ptr as usize) % BLOCK as usize == 0
}

impl RvmFile for DiskFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if !self.direct || aligned(offset, buf.len(), buf.as_ptr()) {
            return self.file.read_exact_at(buf, offset);
        }
        // O_DIRECT needs aligned offset, length and memory: read the
        // covering blocks into an aligned bounce buffer.
        let start = offset - offset % BLOCK;
        let end = (offset + buf.len() as u64).next_multiple_of(BLOCK);
        let mut bounce = IoBuf::alloc((end - start) as usize);
        bounce.set_len((end - start) as usize);
        self.file.read_exact_at(bounce.as_mut_slice(), start)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&bounce.as_slice()[skip..skip + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if !self.direct || aligned(offset, buf.len(), buf.as_ptr()) {
            return self.file.write_all_at(buf, offset);
        }
        if offset % BLOCK != 0 || buf.len() as u64 % BLOCK != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unaligned O_DIRECT write",
            ));
        }
        let bounce = IoBuf::from_slice(buf);
        self.file.write_all_at(bounce.as_slice(), offset)
    }

    fn sync(&self) -> io::Result<()> {
        if self.dsync {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let len_i = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
        // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::posix_fallocate(self.file_fd(), 0, len_i) };
        if rc != 0 {
            // Some file systems cannot preallocate; a sparse file still works,
            // it only may fail later with ENOSPC instead of now.
            self.file.set_len(len)?;
        }
        if self.zero_fill {
            // `posix_fallocate` leaves *unwritten* extents. The first
            // `O_DSYNC` write into such a block must also convert the extent
            // to written, a metadata change that costs a journal commit on
            // top of the data write: with the log's small appends, one commit
            // in a dozen (and most group writes) paid it. Writing the zeros
            // once here makes every later log write a plain overwrite.
            //
            // Through a second descriptor without `O_DSYNC`, so the pieces
            // are not each flushed: the `sync_all` below makes them all
            // durable at once (it syncs the file, whichever descriptor
            // wrote it).
            let mut zeros = IoBuf::alloc(ZERO_FILL_CHUNK);
            zeros.set_len(ZERO_FILL_CHUNK);
            zeros.as_mut_slice().fill(0);
            let mut o = OpenOptions::new();
            o.write(true);
            if self.direct {
                o.custom_flags(libc::O_DIRECT);
            }
            let filler = o.open(&self.path)?;
            let mut off = 0;
            while off < len {
                let n = (len - off).min(ZERO_FILL_CHUNK as u64) as usize;
                // `len` is a multiple of 4096 for the log (RVM rounds it),
                // so every piece stays aligned for `O_DIRECT`.
                filler.write_all_at(&zeros.as_slice()[..n], off)?;
                off += n as u64;
            }
        }
        self.file.sync_all()
    }

    fn map_private(&self, len: u64) -> Option<io::Result<MmapMut>> {
        let len = match usize::try_from(len) {
            Ok(l) => l,
            Err(_) => {
                return Some(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "segment larger than the address space",
                )))
            }
        };
        // SAFETY: the mapping is private (copy-on-write), so our stores never
        // reach the file. The file itself is changed only by RVM truncation,
        // which writes bytes equal to what the mapping already holds for every
        // page it writes, so the mapping never observes a change it did not
        // make. Other processes must not write the segment (the brick owns its
        // directory).
        Some(unsafe { MmapOptions::new().len(len).map_copy(&self.file) })
    }
}

impl DiskFile {
    fn file_fd(&self) -> libc::c_int {
        use std::os::fd::AsRawFd;
        self.file.as_raw_fd()
    }
}

/// Makes the directory entry of newly created files durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log is allocated with written zeros: no hole (and, on ext4/xfs,
    /// no unwritten extent, which `SEEK_HOLE` reports as a hole) is left
    /// behind, so later `O_DSYNC` log writes need no extent conversion.
    #[test]
    fn log_allocation_writes_zeros_everywhere() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = DiskFile::open_log(&path, true).unwrap();
        let len = 3 * ZERO_FILL_CHUNK as u64 + 8192;
        log.allocate(len).unwrap();
        assert_eq!(log.len().unwrap(), len);
        // SAFETY: plain syscall on a descriptor the test owns.
        let hole = unsafe { libc::lseek(log.file.as_raw_fd(), 0, libc::SEEK_HOLE) };
        assert_eq!(hole, len as libc::off_t, "log allocation left a hole");
        let mut back = IoBuf::alloc(len as usize);
        back.set_len(len as usize);
        log.read_at(0, back.as_mut_slice()).unwrap();
        assert!(back.as_slice().iter().all(|&b| b == 0));
    }

    /// The segment keeps the cheap allocation (it is written by buffered
    /// writes and `fdatasync` at truncation, not per commit).
    #[test]
    fn segment_allocation_is_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let seg = DiskFile::open_segment(&dir.path().join("seg"), true).unwrap();
        seg.allocate(16384).unwrap();
        let mut back = vec![1u8; 16384];
        seg.read_at(0, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0));
    }
}
