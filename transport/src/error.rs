//! The transport's error type.

use crate::auth::AuthError;
use crate::channel::ConnState;
use crate::wire::{BodyError, FrameError, Opcode};
use std::io;
use thiserror::Error;

/// Why a call (or a connection) failed. An error *reply* from the peer is not
/// a `TransportError`: it arrives as [`crate::wire::Response::Error`], with
/// the caller's buffer handed back.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {addr}: no answer within {secs:.1}s")]
    ConnectTimeout { addr: String, secs: f64 },
    #[error("authenticating with {addr}: {source}")]
    Auth {
        addr: String,
        #[source]
        source: AuthError,
    },
    #[error("{op} on the connection to {peer}: {source}")]
    Io {
        op: &'static str,
        peer: String,
        #[source]
        source: io::Error,
    },
    #[error("bad frame from {peer}: {source}")]
    Frame {
        peer: String,
        #[source]
        source: FrameError,
    },
    #[error("bad {opcode:?} reply (request {request_id}): {source}")]
    Body {
        opcode: Opcode,
        request_id: u64,
        #[source]
        source: BodyError,
    },
    #[error("{opcode:?} (request {request_id}) got no reply within {secs:.3}s")]
    Timeout {
        opcode: Opcode,
        request_id: u64,
        secs: f64,
    },
    #[error(
        "{opcode:?} (request {request_id}): the connection to {peer} was lost before the reply"
    )]
    ConnectionLost {
        opcode: Opcode,
        request_id: u64,
        peer: String,
    },
    #[error("{opcode:?}: not connected to {peer} (connection is {state:?})")]
    NotConnected {
        opcode: Opcode,
        peer: String,
        state: ConnState,
    },
    #[error("{opcode:?}: the channel to {peer} is closed")]
    Closed { opcode: Opcode, peer: String },
    #[error("{opcode:?}: {reason}")]
    BadCall { opcode: Opcode, reason: String },
    #[error("{opcode:?} (request {request_id}): reply has {len} data bytes but the lent buffer holds {capacity}")]
    ReplyTooLarge {
        opcode: Opcode,
        request_id: u64,
        len: u32,
        capacity: usize,
    },
    #[error("{opcode:?} (request {request_id}): reply opcode {got:?} does not match")]
    WrongReply {
        opcode: Opcode,
        request_id: u64,
        got: Opcode,
    },
    #[error("payload: {reason}")]
    Payload { reason: String },
}

impl TransportError {
    /// True for errors after which retrying the same call on a new
    /// connection may succeed (the request may or may not have been applied).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            TransportError::Connect { .. }
                | TransportError::ConnectTimeout { .. }
                | TransportError::Io { .. }
                | TransportError::Frame { .. }
                | TransportError::ConnectionLost { .. }
                | TransportError::NotConnected { .. }
        )
    }
}
