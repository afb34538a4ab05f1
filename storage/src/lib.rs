//! What one brick keeps on its local disk: the object store (chunk files on a
//! local file system, driven through io_uring) and the RVM-like recoverable
//! metadata segment.
//!
//! This crate knows nothing of the network, of volumes or of other bricks.

pub mod blockcrc;
pub mod chunkmeta;
pub mod objects;
pub mod rvm;
