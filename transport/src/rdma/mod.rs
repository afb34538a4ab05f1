//! RDMA verbs backend: the wire protocol over reliable-connected queue
//! pairs, with control frames by SEND/RECV and bulk data by one-sided RDMA
//! READ/WRITE (see `docs/rdma.md`).
//!
//! - [`verbs`]: the small trait the engine needs from a device ([`Verbs`],
//!   [`Fabric`]).
//! - [`envelope`]: the 16 bytes before every SENT frame (credits).
//! - [`engine`]: credits, registered buffers, request/reply matching, QP
//!   errors: the protocol, written once (sans threads).
//! - `conn`: the poller thread, [`RdmaClient`] (a [`crate::Channel`]) and
//!   [`serve_rdma`] (drives the same [`crate::Handler`] as TCP).
//! - [`sim`]: a SIMULATION of verbs in process, for tests everywhere.
//! - `hw` (feature `rdma`): libibverbs + librdmacm through `sideway`.
//!
//! [`select`] chooses between TCP and RDMA (`--transport tcp|rdma|auto`).

mod conn;
pub mod engine;
pub mod envelope;
#[cfg(feature = "rdma")]
pub mod hw;
pub mod select;
pub mod sim;
#[cfg(test)]
mod tests;
pub mod verbs;

pub use conn::{serve_rdma, serve_rdma_with, RdmaClient, RdmaListener};
pub use engine::{Engine, EngineConfig, EngineStats, Event, Role};
pub use select::{
    client_transport, connect_channel, rdma_fabric, resolve_client_transport, set_client_transport,
    RdmaUnavailable, TransportKind,
};
pub use sim::{SimConfig, SimFabric};
pub use verbs::{
    Completion, Fabric, MemoryRegion, RemoteRef, Sge, Verbs, VerbsError, WcStatus, WorkKind,
};
