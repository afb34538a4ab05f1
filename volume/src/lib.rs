//! The client side of a Stretto volume: layout translators (distribute,
//! replicate; later disperse and stripe) stacked over brick connections, with
//! failure detection, quorum, leases and heal marks; and the management of
//! volume descriptions (volfiles) across a pool's bricks.
//!
//! - [`spec`]: the volume description as a value.
//! - [`volfile`]: its byte encoding and how it is stored on bricks.
//! - [`manage`]: `stretto volume create | start | stop | delete | info | status | set | get`.
//!
//! It must never import `nbd` or `fuse-client` (they sit above it), nor
//! `brick` or `storage` (a client reaches bricks only through `transport`).

pub mod manage;
pub mod spec;
pub mod volfile;

pub use spec::{VolumeKind, VolumeSpec, VolumeState, DEFAULT_CHUNK_SIZE};
