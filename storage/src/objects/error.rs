//! The object store's error type.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::id::ChunkId;

/// Which store operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreOp {
    /// Opening or creating a chunk file.
    Open,
    /// Reading a chunk.
    Read,
    /// Writing a chunk.
    Write,
    /// Punching a hole.
    Punch,
    /// Zeroing a range.
    Zero,
    /// Making acknowledged changes durable.
    Flush,
    /// Removing a chunk.
    Remove,
}

impl fmt::Display for StoreOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreOp::Open => "open",
            StoreOp::Read => "read",
            StoreOp::Write => "write",
            StoreOp::Punch => "punch",
            StoreOp::Zero => "zero",
            StoreOp::Flush => "flush",
            StoreOp::Remove => "remove",
        })
    }
}

/// An object store failure. Disk errors arrive as values, never as panics;
/// after any of them the store keeps serving later operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The disk or file system failed an operation on a chunk.
    #[error("{op} of chunk {chunk} at offset {offset} failed")]
    Io {
        /// The failed operation.
        op: StoreOp,
        /// The chunk it touched.
        chunk: ChunkId,
        /// Byte offset in the chunk the operation started at.
        offset: u64,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The brick's file system is full (`ENOSPC` or `EDQUOT`).
    #[error("no space left on the brick: {op} of chunk {chunk} at offset {offset}")]
    NoSpace {
        /// The failed operation.
        op: StoreOp,
        /// The chunk it touched.
        chunk: ChunkId,
        /// Byte offset in the chunk the operation started at.
        offset: u64,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// `fsync` of a fan-out directory failed during flush, so new or
    /// removed chunk files may not survive a crash.
    #[error("flush of directory {path} failed")]
    DirSync {
        /// The directory.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The request itself is malformed (for example offset + length
    /// overflows); nothing was touched.
    #[error("invalid {op} of chunk {chunk} at offset {offset}: {reason}")]
    Invalid {
        /// The rejected operation.
        op: StoreOp,
        /// The chunk it named.
        chunk: ChunkId,
        /// The offset it named.
        offset: u64,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The chunk metadata store failed.
    #[error("chunk metadata store: {context}")]
    Meta {
        /// What was being done.
        context: String,
        /// The store's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store could not be opened (directory, ring or thread setup).
    #[error("object store at {path} could not be opened: {what}")]
    Setup {
        /// The brick directory.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// `DIR/objects/` holds a layout this code does not know.
    #[error("object store layout at {path}: {reason}")]
    Layout {
        /// The layout file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The store has shut down; the operation was not started.
    #[error("the object store is shut down")]
    Closed,
}

impl StoreError {
    /// Classifies a kernel error on `chunk` by its errno: `ENOSPC` and
    /// `EDQUOT` become [`StoreError::NoSpace`], anything else
    /// [`StoreError::Io`].
    pub fn from_io(op: StoreOp, chunk: ChunkId, offset: u64, source: io::Error) -> StoreError {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace {
                op,
                chunk,
                offset,
                source,
            },
            _ => StoreError::Io {
                op,
                chunk,
                offset,
                source,
            },
        }
    }

    /// The errno behind this error, if it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            StoreError::Io { source, .. }
            | StoreError::NoSpace { source, .. }
            | StoreError::DirSync { source, .. }
            | StoreError::Setup { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The operation that failed, where one chunk operation is to blame.
    pub fn op(&self) -> Option<StoreOp> {
        match self {
            StoreError::Io { op, .. }
            | StoreError::NoSpace { op, .. }
            | StoreError::Invalid { op, .. } => Some(*op),
            StoreError::DirSync { .. } => Some(StoreOp::Flush),
            _ => None,
        }
    }

    /// A metadata-store error with context, for [`super::ChunkMetaStore`]
    /// implementations.
    pub fn meta(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::Meta {
            context: context.into(),
            source: source.into(),
        }
    }
}
