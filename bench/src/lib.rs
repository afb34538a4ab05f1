//! Benchmarks that compare Stretto with a peer in the same run and print
//! ratios. They measure; they assert nothing (tests assert behaviour).
//!
//! Each benchmark module prints a small markdown table: Stretto's figure, the
//! peer's figure measured moments before on the same file system, and
//! Stretto/peer.

pub mod brick_tcp;
pub mod ec;
pub mod fio;
pub mod fuse;
pub mod gluster;
pub mod matrix;
pub mod nbd;
pub mod objects;
pub mod procs;
pub mod rvm;
pub mod stats;
pub mod volume;
