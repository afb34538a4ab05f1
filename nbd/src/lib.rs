//! The NBD server: exports block device images over the Network Block Device
//! protocol (fixed newstyle; structured replies; base:allocation).
//!
//! Layers, bottom up (see docs/nbd.md):
//! - [`wire`]: byte layouts and constants, no judgement;
//! - [`handshake`] and [`transmission`]: sans-IO state machines, bytes in,
//!   actions and bytes out, all protocol rules;
//! - [`export`]: the [`Export`] backend trait and [`ExportSet`], with
//!   [`MemoryExport`] (tests) and [`FileExport`] (sparse local file);
//! - [`serve`]: the thin tokio adapter.
//!
//! This crate must not know where an image's bytes live beyond the
//! [`Export`] trait: the volume-backed export implements it elsewhere.

pub mod export;
pub mod file;
pub mod handshake;
pub mod memory;
pub mod server;
pub mod transmission;
pub mod volume_export;
pub mod wire;

pub use export::{
    BlockSize, Export, ExportEntry, ExportError, ExportFuture, ExportSet, ExportSetError, Extent,
    ReadData, ZeroFlags, MAX_REQUEST,
};
pub use file::FileExport;
pub use handshake::{Handshake, HandshakeClose, HandshakeStep, Negotiated};
pub use memory::MemoryExport;
pub use server::serve;
pub use transmission::{Action, Command, Op, Params, ReplyEncoder, Transmission};
