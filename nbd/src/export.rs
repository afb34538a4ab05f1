//! What an export is: the backend trait the server drives, and the set of
//! named exports a listener offers.
//!
//! The trait is deliberately small: size, read, write and flush are required;
//! every optional capability (trim, fast zero, block status, cache, multi-conn)
//! has a default that is always correct, so an implementation over an async
//! object API (read/write/punch/zero/flush/size) only overrides what it can do
//! better. This module must not know about sockets or the wire.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

use iobuf::IoBuf;

use crate::wire::errno;

/// A boxed future returned by [`Export`] operations.
pub type ExportFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ExportError>> + Send + 'a>>;

/// The largest request the server accepts (also the advertised maximum block size).
pub const MAX_REQUEST: u32 = 32 * 1024 * 1024;

/// Why an export operation failed. Each maps to an NBD error number.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The backing store failed.
    #[error("{op} at offset {offset} length {length}: {source}")]
    Io {
        /// Operation name.
        op: &'static str,
        /// Byte offset in the export.
        offset: u64,
        /// Byte length.
        length: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The export cannot do this operation at all.
    #[error("{op} is not supported by this export")]
    Unsupported {
        /// Operation name.
        op: &'static str,
    },
    /// A fast zero was asked for but zeroing here is no faster than writing.
    #[error("zeroing at offset {offset} would not be fast")]
    NotFast {
        /// Byte offset in the export.
        offset: u64,
    },
    /// The backing store is full.
    #[error("{op} at offset {offset}: no space left")]
    NoSpace {
        /// Operation name.
        op: &'static str,
        /// Byte offset in the export.
        offset: u64,
    },
    /// The export is read-only.
    #[error("export is read-only")]
    ReadOnly,
}

impl ExportError {
    /// Wraps an I/O error with its context.
    pub fn io(op: &'static str, offset: u64, length: u64, source: io::Error) -> ExportError {
        ExportError::Io {
            op,
            offset,
            length,
            source,
        }
    }

    /// The NBD error number sent to the client.
    pub fn errno(&self) -> u32 {
        match self {
            ExportError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => errno::ENOSPC,
                Some(libc::EPERM) | Some(libc::EROFS) | Some(libc::EACCES) => errno::EPERM,
                Some(libc::ENOMEM) => errno::ENOMEM,
                Some(libc::EINVAL) => errno::EINVAL,
                Some(libc::EOPNOTSUPP) => errno::ENOTSUP,
                _ => errno::EIO,
            },
            ExportError::Unsupported { .. } => errno::EINVAL,
            ExportError::NotFast { .. } => errno::ENOTSUP,
            ExportError::NoSpace { .. } => errno::ENOSPC,
            ExportError::ReadOnly => errno::EPERM,
        }
    }
}

/// Block size constraints advertised through NBD_INFO_BLOCK_SIZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Smallest unit of I/O (1: any byte alignment works).
    pub minimum: u32,
    /// Alignment and size that avoid read-modify-write.
    pub preferred: u32,
    /// Largest request accepted.
    pub maximum: u32,
}

impl BlockSize {
    /// Any alignment works, 4 KiB is best, 32 MiB at most.
    pub const DEFAULT: BlockSize = BlockSize {
        minimum: 1,
        preferred: 4096,
        maximum: MAX_REQUEST,
    };
}

/// Data returned by [`Export::read`].
#[derive(Debug)]
pub struct ReadData {
    /// Exactly the requested bytes (holes included, as zeroes).
    pub data: IoBuf,
    /// Sub-ranges of the request (relative offsets, sorted, disjoint) known to
    /// read as zeroes; the server may send them as NBD_REPLY_TYPE_OFFSET_HOLE.
    pub holes: Vec<Range<u32>>,
}

/// One extent of base:allocation status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes.
    pub length: u64,
    /// Not allocated in the backing store.
    pub hole: bool,
    /// Reads as zeroes.
    pub zero: bool,
}

/// How WRITE_ZEROES may be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZeroFlags {
    /// The range may be deallocated (client did not set NO_HOLE).
    pub may_punch: bool,
    /// Fail with [`ExportError::NotFast`] unless zeroing is faster than writing.
    pub fast: bool,
    /// Durable before the reply.
    pub fua: bool,
}

/// A block device image served over NBD.
///
/// Offsets and lengths given to every method are already checked against
/// [`Export::size`] and [`BlockSize::maximum`] by the protocol state machine.
pub trait Export: Send + Sync + 'static {
    /// Size in bytes; fixed while the export is served.
    fn size(&self) -> u64;

    /// Reads `buf.len()` bytes at `offset` into `buf` and hands it back.
    fn read(&self, offset: u64, buf: IoBuf) -> ExportFuture<'_, ReadData>;

    /// Writes `data` at `offset`; with `fua`, durable before it completes.
    fn write(&self, offset: u64, data: IoBuf, fua: bool) -> ExportFuture<'_, ()>;

    /// Makes every completed write durable.
    fn flush(&self) -> ExportFuture<'_, ()>;

    /// Constraints advertised to clients.
    fn block_size(&self) -> BlockSize {
        BlockSize::DEFAULT
    }

    /// Writes are refused with EPERM.
    fn is_read_only(&self) -> bool {
        false
    }

    /// NBD_CMD_TRIM does something useful.
    fn can_trim(&self) -> bool {
        false
    }

    /// Discards a range (its contents become unspecified).
    fn trim(&self, _offset: u64, _length: u32, _fua: bool) -> ExportFuture<'_, ()> {
        Box::pin(std::future::ready(Err(ExportError::Unsupported {
            op: "trim",
        })))
    }

    /// `write_zeroes` with `fast` is honoured (never slower than a write).
    fn can_fast_zero(&self) -> bool {
        false
    }

    /// Makes a range read as zeroes. The default writes zero buffers.
    fn write_zeroes(&self, offset: u64, length: u32, flags: ZeroFlags) -> ExportFuture<'_, ()> {
        Box::pin(async move {
            if flags.fast {
                return Err(ExportError::NotFast { offset });
            }
            const STEP: u32 = 1024 * 1024;
            let mut done = 0u32;
            while done < length {
                let n = STEP.min(length - done);
                let mut buf = IoBuf::alloc(n as usize);
                buf.set_len(n as usize);
                self.write(offset + u64::from(done), buf, flags.fua).await?;
                done += n;
            }
            Ok(())
        })
    }

    /// base:allocation status of `offset..offset+length`. The extents start at
    /// `offset`, and may cover less than `length` (never more is needed). The
    /// default says everything is allocated data.
    fn block_status(&self, _offset: u64, length: u32) -> ExportFuture<'_, Vec<Extent>> {
        Box::pin(std::future::ready(Ok(vec![Extent {
            length: u64::from(length),
            hole: false,
            zero: false,
        }])))
    }

    /// Prefetches a range; the default does nothing (a valid implementation).
    fn cache(&self, _offset: u64, _length: u32) -> ExportFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Flush and FUA on one connection cover writes made on every other
    /// connection to this export (NBD_FLAG_CAN_MULTI_CONN).
    fn can_multi_conn(&self) -> bool {
        false
    }
}

/// One named export.
#[derive(Clone)]
pub struct ExportEntry {
    /// Name clients ask for.
    pub name: String,
    /// Human-readable description (NBD_INFO_DESCRIPTION, LIST details).
    pub description: String,
    /// The backend.
    pub export: Arc<dyn Export>,
}

impl std::fmt::Debug for ExportEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportEntry")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("size", &self.export.size())
            .finish()
    }
}

/// Why an export cannot be added to an [`ExportSet`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportSetError {
    /// Names and descriptions are NBD strings: at most 4096 bytes, no NUL.
    #[error("export {name:?}: {what} is not a valid NBD string (<= 4096 bytes, no NUL)")]
    BadString {
        /// Export name.
        name: String,
        /// "name" or "description".
        what: &'static str,
    },
    /// Two exports with the same name.
    #[error("export {0:?} already exists")]
    Duplicate(String),
}

fn valid_nbd_string(s: &str) -> bool {
    s.len() <= 4096 && !s.contains('\0')
}

/// The exports one listener offers, in the order they were added.
///
/// The empty name (the NBD "default export") selects the first export.
#[derive(Debug, Default, Clone)]
pub struct ExportSet {
    entries: Vec<ExportEntry>,
}

impl ExportSet {
    /// No exports.
    pub fn new() -> ExportSet {
        ExportSet::default()
    }

    /// Adds a named export.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        export: Arc<dyn Export>,
    ) -> Result<(), ExportSetError> {
        let name = name.into();
        let description = description.into();
        if name.is_empty() || !valid_nbd_string(&name) {
            return Err(ExportSetError::BadString { name, what: "name" });
        }
        if !valid_nbd_string(&description) {
            return Err(ExportSetError::BadString {
                name,
                what: "description",
            });
        }
        if self.entries.iter().any(|e| e.name == name) {
            return Err(ExportSetError::Duplicate(name));
        }
        self.entries.push(ExportEntry {
            name,
            description,
            export,
        });
        Ok(())
    }

    /// The export a client asking for `name` gets ("" is the first one).
    pub fn get(&self, name: &str) -> Option<&ExportEntry> {
        if name.is_empty() {
            return self.entries.first();
        }
        self.entries.iter().find(|e| e.name == name)
    }

    /// Every export, in order.
    pub fn iter(&self) -> impl Iterator<Item = &ExportEntry> {
        self.entries.iter()
    }

    /// Number of exports.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No exports at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
