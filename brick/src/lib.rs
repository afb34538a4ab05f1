//! The brick daemon: serves one brick's `storage` over `transport`.
//!
//! - [`layout`]: the brick directory and `stretto brick init`.
//! - [`server`]: the request handler (object I/O, volume configuration,
//!   counters) and `stretto brick serve`.
//! - [`stats`]: per-brick counters and the latency histogram, and
//!   `stretto brick stats`.
//!
//! This crate must not know about volumes' layouts (that is `volume/`, on the
//! client side): a brick stores chunks, records and configurations it is given.

pub mod integrity;
pub mod layout;
pub mod lease;
pub mod marks;
pub mod records;
pub mod server;
pub mod stats;

use std::path::PathBuf;

pub use layout::{init, BrickDir, BrickId, BrickInfo};
pub use server::{fetch_stats, serve_until_signal, serve_until_signal_via, Brick};
pub use stats::StatsReport;

/// What can go wrong running or talking to a brick.
#[derive(Debug, thiserror::Error)]
pub enum BrickError {
    /// A file-system operation on the brick directory failed.
    #[error("cannot {what} at {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `brick init` was given a directory that already holds something.
    #[error("{path} is not empty: a brick is made in a new or empty directory")]
    NotEmpty { path: PathBuf },
    /// The directory is not a brick this build can read.
    #[error("{path}: {why}")]
    BadLayout { path: PathBuf, why: String },
    /// The pool secret could not be read or written.
    #[error("pool secret {path}")]
    Secret {
        path: PathBuf,
        #[source]
        source: transport::SecretError,
    },
    /// The RVM metadata segment failed to open, recover or commit.
    #[error("brick metadata (rvm) in {path}")]
    Rvm {
        path: PathBuf,
        #[source]
        source: storage::rvm::RvmError,
    },
    /// The object store failed to open.
    #[error("object store in {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: storage::objects::StoreError,
    },
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `--transport rdma` was asked for and RDMA cannot be served.
    #[error("cannot serve --transport rdma on {addr}: {reason}")]
    Rdma {
        addr: std::net::SocketAddr,
        reason: String,
    },
    /// Talking to a remote brick failed.
    #[error("brick {addr}")]
    Transport {
        addr: String,
        #[source]
        source: transport::TransportError,
    },
    /// A remote brick answered with an error.
    #[error("brick {addr} refused: {message}")]
    Refused { addr: String, message: String },
}
