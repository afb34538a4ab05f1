//! The transport's shape, shared by every backend (TCP now, RDMA verbs later).
//!
//! A call carries a small control message ([`Request`]) and, beside it, at
//! most one owned buffer ([`Payload`]) whose direction says what the peer does
//! with it. The buffer always comes back with the reply, so one registered
//! pool buffer can go socket (or RDMA) → disk → socket without a copy.
//!
//! This module holds only types and traits; it must not know how bytes move.

use crate::error::TransportError;
use crate::wire::{Opcode, Request, Response};
use iobuf::IoBuf;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;

/// A boxed, sendable future (what the traits below return, so they stay
/// object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The buffer that travels with a call.
#[derive(Debug, Default)]
pub enum Payload {
    /// No data.
    #[default]
    None,
    /// Data the caller sends (a write). TCP: the bytes follow the request.
    /// RDMA: the request names the buffer and the server RDMA-READs it.
    Out(IoBuf),
    /// A buffer the caller lends for the answer (a read). TCP: the reply's
    /// bytes are read into it. RDMA: the server RDMA-WRITEs into it.
    In(IoBuf),
}

impl Payload {
    /// The buffer, whichever way it went.
    pub fn into_buf(self) -> Option<IoBuf> {
        match self {
            Payload::None => None,
            Payload::Out(b) | Payload::In(b) => Some(b),
        }
    }
}

/// Connection state of a client channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Connected and authenticated; calls go through.
    Up,
    /// Not connected; calls fail at once with `NotConnected`.
    Down,
    /// Trying to connect again (with backoff); calls fail at once.
    Reconnecting,
}

/// A client's channel to one brick.
pub trait Channel: Send + Sync {
    /// Sends `req` with `payload` and waits for the reply. The payload's
    /// buffer is handed back with the reply (for `In`, filled with the
    /// reply's data). An error reply from the peer is `Ok(Response::Error)`;
    /// `Err` means the transport failed (timeout, lost connection, bad
    /// frame), and the buffer is dropped back to its pool.
    fn call(
        &self,
        req: Request,
        payload: Payload,
    ) -> BoxFuture<'_, Result<(Response, Payload), TransportError>>;

    /// The current connection state.
    fn state(&self) -> ConnState;

    /// A receiver that sees every state change.
    fn watch_state(&self) -> watch::Receiver<ConnState>;

    /// Closes gracefully: new calls fail, calls in flight finish, then the
    /// connection goes away (state `Down`).
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Serves requests on the server side of a connection.
///
/// Requests on one connection are handled concurrently, so `handle` may be
/// called many times at once. It sees only authenticated requests (never the
/// handshake). It must answer every request, with an error reply if need be.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        req: Request,
        payload: &'a mut ServerPayload,
    ) -> BoxFuture<'a, Response>;
}

/// The request's data, seen from the server: pull the caller's `Out` data,
/// or fill the caller's `In` buffer.
#[derive(Debug)]
pub struct ServerPayload {
    source: Source,
    sink_capacity: u32,
    pushed: Option<IoBuf>,
    peer: Arc<str>,
    connection: u64,
}

/// One-sided access to the caller's memory (RDMA), given to a
/// [`ServerPayload`] by the RDMA server.
pub(crate) trait RemoteAccess: Send + Sync + std::fmt::Debug {
    /// RDMA READ of the caller's data into a registered buffer.
    fn read(&self, remote: crate::rdma::RemoteRef) -> BoxFuture<'_, Result<IoBuf, TransportError>>;
}

#[derive(Debug)]
enum Source {
    None,
    /// RDMA: the caller's data waits in its registered memory.
    Remote {
        access: Arc<dyn RemoteAccess>,
        remote: crate::rdma::RemoteRef,
        taken: bool,
    },
    /// TCP: the caller's bytes, already read off the socket into this buffer.
    Inline {
        buf: Option<IoBuf>,
        len: u32,
    },
}

impl ServerPayload {
    /// A payload for a request with no data in either direction.
    pub fn none(peer: Arc<str>, connection: u64) -> ServerPayload {
        ServerPayload {
            source: Source::None,
            sink_capacity: 0,
            pushed: None,
            peer,
            connection,
        }
    }

    /// TCP: the caller's data, read into `buf` by the connection loop.
    pub(crate) fn inline(buf: IoBuf, peer: Arc<str>, connection: u64) -> ServerPayload {
        let len = buf.len() as u32;
        ServerPayload {
            source: Source::Inline {
                buf: Some(buf),
                len,
            },
            ..ServerPayload::none(peer, connection)
        }
    }

    /// RDMA: the caller's data is at `remote`, fetched on demand.
    pub(crate) fn remote(
        access: Arc<dyn RemoteAccess>,
        remote: crate::rdma::RemoteRef,
        peer: Arc<str>,
        connection: u64,
    ) -> ServerPayload {
        ServerPayload {
            source: Source::Remote {
                access,
                remote,
                taken: false,
            },
            ..ServerPayload::none(peer, connection)
        }
    }

    /// A payload whose reply may carry up to `capacity` bytes of data (the
    /// caller's `In` buffer; on TCP, the read's length).
    pub fn with_sink(mut self, capacity: u32) -> ServerPayload {
        self.sink_capacity = capacity;
        self
    }

    /// Who sent the request (for logs).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// A number naming the connection, unique within a server (for leases
    /// and callbacks that belong to one connection).
    pub fn connection(&self) -> u64 {
        self.connection
    }

    /// Length of the caller's `Out` data (0 if none).
    pub fn data_len(&self) -> u32 {
        match &self.source {
            Source::None => 0,
            Source::Inline { len, .. } => *len,
            Source::Remote { remote, .. } => remote.len,
        }
    }

    /// Takes the caller's `Out` data as a buffer (TCP: the pool buffer the
    /// bytes were read into, no copy; RDMA: an RDMA READ into a pool buffer).
    /// The data can be taken once.
    pub async fn data(&mut self) -> Result<IoBuf, TransportError> {
        match &mut self.source {
            Source::None => Err(TransportError::Payload {
                reason: "the request carries no data".into(),
            }),
            Source::Inline { buf, .. } => buf.take().ok_or_else(|| TransportError::Payload {
                reason: "the request's data was already taken".into(),
            }),
            Source::Remote {
                access,
                remote,
                taken,
            } => {
                if *taken {
                    return Err(TransportError::Payload {
                        reason: "the request's data was already taken".into(),
                    });
                }
                *taken = true;
                access.read(*remote).await
            }
        }
    }

    /// Copies the caller's `Out` data into `dst` (for a handler that wants it
    /// in a buffer of its own choosing; [`ServerPayload::data`] avoids the
    /// copy on TCP).
    pub async fn fetch_into(&mut self, dst: &mut IoBuf) -> Result<(), TransportError> {
        let len = self.data_len() as usize;
        if dst.capacity() < len {
            return Err(TransportError::Payload {
                reason: format!("{len} data bytes do not fit a buffer of {}", dst.capacity()),
            });
        }
        if let Source::Remote { .. } = &self.source {
            let src = self.data().await?;
            dst.set_len(len);
            dst.as_mut_slice().copy_from_slice(&src.as_slice()[..len]);
            return Ok(());
        }
        match &self.source {
            Source::Remote { .. } => Ok(()),
            Source::Inline { buf: Some(src), .. } => {
                dst.set_len(len);
                dst.as_mut_slice().copy_from_slice(src.as_slice());
                Ok(())
            }
            Source::Inline { buf: None, .. } => Err(TransportError::Payload {
                reason: "the request's data was already taken".into(),
            }),
            Source::None => Err(TransportError::Payload {
                reason: "the request carries no data".into(),
            }),
        }
    }

    /// How many bytes the caller can take back (its `In` buffer).
    pub fn sink_capacity(&self) -> u32 {
        self.sink_capacity
    }

    /// Sends `buf`'s bytes to the caller's `In` buffer (TCP: after the reply;
    /// RDMA: RDMA WRITE before it). The reply must be one that carries data
    /// (a `Read` reply); the transport fills its [`crate::wire::DataRef`].
    pub async fn push_from(&mut self, buf: IoBuf) -> Result<(), TransportError> {
        if buf.len() > self.sink_capacity as usize {
            return Err(TransportError::Payload {
                reason: format!(
                    "{} bytes do not fit the caller's buffer of {}",
                    buf.len(),
                    self.sink_capacity
                ),
            });
        }
        if self.pushed.is_some() {
            return Err(TransportError::Payload {
                reason: "data was already pushed for this request".into(),
            });
        }
        self.pushed = Some(buf);
        Ok(())
    }

    pub(crate) fn take_pushed(&mut self) -> Option<IoBuf> {
        self.pushed.take()
    }
}

/// Checks that a payload fits a request before it is sent.
pub(crate) fn check_payload(req: &Request, payload: &Payload) -> Result<(), TransportError> {
    let op = req.opcode();
    let bad = |reason: String| TransportError::BadCall { opcode: op, reason };
    match (payload, op) {
        (Payload::None, Opcode::Read | Opcode::ReadBlocks) => match req {
            Request::Read(r) | Request::ReadBlocks(r) if r.len > 0 => {
                Err(bad("a Read needs an In buffer".into()))
            }
            _ => Ok(()),
        },
        (Payload::None, _) => Ok(()),
        (Payload::Out(b), Opcode::Write | Opcode::WriteBlocks) => {
            if b.len() > crate::wire::MAX_DATA as usize {
                return Err(bad(format!(
                    "{} bytes of data are over the limit of {}",
                    b.len(),
                    crate::wire::MAX_DATA
                )));
            }
            Ok(())
        }
        (Payload::In(b), Opcode::Read | Opcode::ReadBlocks) => {
            let (Request::Read(r) | Request::ReadBlocks(r)) = req else {
                return Ok(());
            };
            if r.len as usize > b.capacity() || r.len > crate::wire::MAX_DATA {
                return Err(bad(format!(
                    "read of {} bytes into a buffer of {} (limit {})",
                    r.len,
                    b.capacity(),
                    crate::wire::MAX_DATA
                )));
            }
            Ok(())
        }
        (Payload::Out(_), _) => Err(bad("only a Write sends data".into())),
        (Payload::In(_), _) => Err(bad("only a Read takes a buffer for its reply".into())),
    }
}
