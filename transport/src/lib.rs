//! The brick wire protocol and its connections.
//!
//! - [`wire`]: frames and typed messages, encode/decode only (sans-IO).
//! - [`auth`]: the pool secret and the mutual HMAC handshake (sans-IO).
//! - [`channel`]: the shape every backend offers: a client [`Channel`] whose
//!   calls carry an owned buffer ([`Payload`]) beside the message, and a
//!   server [`Handler`] that pulls or fills that buffer ([`ServerPayload`]).
//! - [`tcp`]: the TCP backend (tokio). An RDMA verbs backend will sit beside
//!   it behind the same traits (see `docs/transport.md`).
//!
//! This crate knows nothing of disks, volumes or what a brick does with a
//! request.

pub mod auth;
pub mod channel;
pub mod error;
pub mod rdma;
pub mod tcp;
pub mod wire;

pub use auth::{Secret, SecretError};
pub use channel::{BoxFuture, Channel, ConnState, Handler, Payload, ServerPayload};
pub use error::TransportError;
pub use rdma::{connect_channel, RdmaClient, TransportKind};
pub use tcp::{serve, serve_with, ClientOptions, ServerOptions, TcpClient};
pub use wire::{ErrorCode, ErrorReply, ObjectId, Request, Response};
