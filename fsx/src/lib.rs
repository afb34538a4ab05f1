//! `stretto-fsx`: a model-checked random file-operation tester in the spirit
//! of fsx. It runs a seeded sequence of writes, reads, truncates, fallocate
//! (punch hole, zero range, allocate), creates, renames, hard links, unlinks,
//! fsyncs and close/reopens over a few files in a directory, applies each
//! operation to an in-memory reference ([`Model`]) too, and checks every
//! result: read bytes, file sizes (`fstat` after each operation), link
//! counts, errnos and directory listings. The first difference stops the run
//! with a [`Failure`] that names the seed, the operation, the ones before it
//! and the first differing offset.
//!
//! It knows nothing of Stretto: it tests any directory (tmpfs, ext4, a
//! Stretto FUSE mount). A hook called before each operation lets a test act
//! at an exact operation count (kill a brick, corrupt a file), so runs are
//! deterministic, never timed.

pub mod model;
pub mod op;
pub mod rng;
pub mod run;

pub use model::{Effect, Inode, InodeId, Model};
pub use op::{generate, slot_path, Features, Limits, Op};
pub use rng::Rng;
pub use run::{Config, Failure, Runner, Stats};

/// Fills `buf` with the bytes a write with `fill` puts there (a function of
/// `fill` and the position in the buffer only).
pub fn fill_bytes(fill: u64, buf: &mut [u8]) {
    let mut rng = Rng::new(fill);
    for chunk in buf.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}
