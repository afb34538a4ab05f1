//! A sparse file on the local disk as an export.
//!
//! Data goes through `pread`/`pwrite` (`FileExt`), holes are made with
//! `fallocate(PUNCH_HOLE)`, zeroes with `fallocate(ZERO_RANGE)`, and holes are
//! found with `lseek(SEEK_DATA/SEEK_HOLE)`. Blocking calls run on tokio's
//! blocking pool. The file offset is never used, so concurrent calls from
//! many connections are safe on one descriptor.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iobuf::IoBuf;

use crate::export::{Export, ExportError, ExportFuture, Extent, ReadData, ZeroFlags};

/// A sparse file served as an export.
///
/// One descriptor is shared by every connection and `fdatasync` covers all of
/// the file's dirty pages, so flush and FUA hold across connections.
#[derive(Debug, Clone)]
pub struct FileExport {
    file: Arc<File>,
    size: u64,
    path: PathBuf,
}

async fn blocking<T: Send + 'static>(
    op: &'static str,
    offset: u64,
    length: u64,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, ExportError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| ExportError::io(op, offset, length, e)),
        Err(e) => Err(ExportError::io(op, offset, length, io::Error::other(e))),
    }
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, length: u64) -> io::Result<()> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let len =
        libc::off_t::try_from(length).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: fallocate on a descriptor we own, with plain integer arguments;
    // no memory is passed to the kernel.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `lseek(SEEK_DATA|SEEK_HOLE)`; `Ok(None)` for ENXIO (no more data after offset).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a descriptor we own. It moves the shared file offset,
    // which nothing here relies on (all data I/O is positional).
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Data/hole extents of `offset..offset+length`, as (length, hole) runs.
fn map_extents(file: &File, offset: u64, length: u64) -> io::Result<Vec<(u64, bool)>> {
    let end = offset + length;
    let mut at = offset;
    let mut out: Vec<(u64, bool)> = Vec::new();
    while at < end {
        let data = match seek(file, at, libc::SEEK_DATA) {
            Ok(d) => d.unwrap_or(end).min(end),
            // File systems without SEEK_DATA: everything is data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => at,
            Err(e) => return Err(e),
        };
        if data > at {
            out.push((data - at, true));
            at = data;
            continue;
        }
        let hole = seek(file, at, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        // SEEK_HOLE at a data offset returns a later offset; guard against a
        // file system that answers `at` (no progress) by taking the rest as data.
        let hole = if hole <= at { end } else { hole };
        out.push((hole - at, false));
        at = hole;
    }
    Ok(out)
}

impl FileExport {
    /// Opens an existing file (its current length is the export size).
    pub fn open(path: impl AsRef<Path>) -> io::Result<FileExport> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(FileExport {
            file: Arc::new(file),
            size,
            path,
        })
    }

    /// Creates (or truncates) a sparse file of `size` bytes.
    pub fn create(path: impl AsRef<Path>, size: u64) -> io::Result<FileExport> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.set_len(size)?;
        Ok(FileExport {
            file: Arc::new(file),
            size,
            path,
        })
    }

    /// The backing file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Export for FileExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, mut buf: IoBuf) -> ExportFuture<'_, ReadData> {
        let file = self.file.clone();
        let length = buf.len() as u64;
        Box::pin(blocking("read", offset, length, move || {
            let extents = map_extents(&file, offset, length)?;
            let mut holes: Vec<Range<u32>> = Vec::new();
            let mut pos = 0u64;
            let out = buf.as_mut_slice();
            for (n, hole) in extents {
                let (s, e) = (pos as usize, (pos + n) as usize);
                if hole {
                    out[s..e].fill(0);
                    holes.push(s as u32..e as u32);
                } else {
                    let mut done = s;
                    while done < e {
                        match file.read_at(&mut out[done..e], offset + done as u64) {
                            // Past the end of a file shorter than the export:
                            // reads as zeroes, like a hole.
                            Ok(0) => {
                                out[done..e].fill(0);
                                break;
                            }
                            Ok(k) => done += k,
                            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                            Err(err) => return Err(err),
                        }
                    }
                }
                pos += n;
            }
            Ok(ReadData { data: buf, holes })
        }))
    }

    fn write(&self, offset: u64, data: IoBuf, fua: bool) -> ExportFuture<'_, ()> {
        let file = self.file.clone();
        Box::pin(blocking("write", offset, data.len() as u64, move || {
            file.write_all_at(data.as_slice(), offset)?;
            if fua {
                file.sync_data()?;
            }
            Ok(())
        }))
    }

    fn flush(&self) -> ExportFuture<'_, ()> {
        let file = self.file.clone();
        Box::pin(blocking("flush", 0, 0, move || file.sync_data()))
    }

    fn can_trim(&self) -> bool {
        true
    }

    fn trim(&self, offset: u64, length: u32, fua: bool) -> ExportFuture<'_, ()> {
        let file = self.file.clone();
        let len = u64::from(length);
        Box::pin(blocking("trim", offset, len, move || {
            match fallocate(
                &file,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                // Trim is advisory: a file system that cannot punch just keeps the data.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                r => r?,
            }
            if fua {
                file.sync_data()?;
            }
            Ok(())
        }))
    }

    fn can_fast_zero(&self) -> bool {
        true
    }

    fn write_zeroes(&self, offset: u64, length: u32, flags: ZeroFlags) -> ExportFuture<'_, ()> {
        let file = self.file.clone();
        let len = u64::from(length);
        Box::pin(async move {
            let r = blocking("write_zeroes", offset, len, move || {
                let mode = if flags.may_punch {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                };
                let done = match fallocate(&file, mode, offset, len) {
                    Ok(()) => true,
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => false,
                    Err(e) => return Err(e),
                };
                if done && flags.fua {
                    file.sync_data()?;
                }
                Ok(done)
            })
            .await?;
            if r {
                return Ok(());
            }
            if flags.fast {
                return Err(ExportError::NotFast { offset });
            }
            // No fallocate support: write zero buffers.
            let mut at = 0u64;
            while at < len {
                let n = (len - at).min(1 << 20) as usize;
                let mut buf = IoBuf::alloc(n);
                buf.set_len(n);
                self.write(offset + at, buf, flags.fua).await?;
                at += n as u64;
            }
            Ok(())
        })
    }

    fn block_status(&self, offset: u64, length: u32) -> ExportFuture<'_, Vec<Extent>> {
        let file = self.file.clone();
        let len = u64::from(length);
        Box::pin(blocking("block_status", offset, len, move || {
            Ok(map_extents(&file, offset, len)?
                .into_iter()
                .map(|(length, hole)| Extent {
                    length,
                    hole,
                    zero: hole,
                })
                .collect())
        }))
    }

    fn cache(&self, offset: u64, length: u32) -> ExportFuture<'_, ()> {
        let file = self.file.clone();
        let len = u64::from(length);
        Box::pin(blocking("cache", offset, len, move || {
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: posix_fadvise on a descriptor we own, integer arguments only.
            let r = unsafe {
                libc::posix_fadvise(
                    file.as_raw_fd(),
                    off,
                    len as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                )
            };
            // Advice only: a refusal is not an error for the client.
            let _ = r;
            Ok(())
        }))
    }

    fn can_multi_conn(&self) -> bool {
        true
    }
}
