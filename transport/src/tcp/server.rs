//! TCP server: accepts connections, authenticates each, and runs the
//! handler on its requests, many at once per connection.

use super::{read_data, read_frame, skip_data, write_loop, Outgoing, ReadFail};
use crate::auth::{Nonce, Secret, ServerHandshake, ServerStep};
use crate::channel::{Handler, ServerPayload};
use crate::wire::{
    encode_response, BodyError, DataRef, ErrorCode, Frame, FrameDecoder, Limits, Request, Response,
};
use crate::wire::{HEADER_LEN, MAX_BODY};
use iobuf::{BufPool, IoBuf};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

/// Server tuning.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Buffers for incoming write data. Data larger than a pool buffer, or
    /// arriving when the pool is empty, gets a stand-alone aligned buffer.
    pub pool: Option<BufPool>,
    /// Requests handled at once per connection; more wait (backpressure:
    /// the connection stops reading).
    pub max_in_flight: usize,
    /// Time a new connection has to complete the handshake.
    pub handshake_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            pool: None,
            max_in_flight: 128,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `listener` with default options until `shutdown` turns true (or
/// its sender is dropped); see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    secret: Secret,
    handler: Arc<dyn Handler>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    serve_with(
        listener,
        secret,
        handler,
        shutdown,
        ServerOptions::default(),
    )
    .await
}

/// Serves `listener` until `shutdown` turns true (or its sender is
/// dropped): one task per connection; then stops accepting, lets every
/// connection finish the requests it has already read (their replies are
/// sent), and returns.
pub async fn serve_with(
    listener: TcpListener,
    secret: Secret,
    handler: Arc<dyn Handler>,
    mut shutdown: watch::Receiver<bool>,
    opts: ServerOptions,
) -> io::Result<()> {
    let opts = Arc::new(opts);
    let next_conn = AtomicU64::new(1);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown_requested(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let conn = Connection {
                        peer: Arc::from(addr.to_string()),
                        id: next_conn.fetch_add(1, Ordering::Relaxed),
                        secret: secret.clone(),
                        handler: handler.clone(),
                        opts: opts.clone(),
                    };
                    conns.spawn(conn.run(stream, shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: the listener
                    // itself is fine, so wait a little and go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    tracing::info!(
        connections = conns.len(),
        "shutting down: finishing in-flight requests"
    );
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Resolves when the shutdown flag is (or becomes) true, or its sender is
/// gone.
pub(crate) async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

struct Connection {
    peer: Arc<str>,
    id: u64,
    secret: Secret,
    handler: Arc<dyn Handler>,
    opts: Arc<ServerOptions>,
}

/// What the read loop does after a frame.
enum Next {
    Continue,
    Close,
}

impl Connection {
    async fn run(self, stream: TcpStream, mut shutdown: watch::Receiver<bool>) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %self.peer, error = %e, "TCP_NODELAY");
        }
        let (mut rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel(self.opts.max_in_flight.max(1) * 2);
        let writer = tokio::spawn(write_loop(wr, rx));
        let mut dec = FrameDecoder::new(Limits::HANDSHAKE);
        let mut hs = ServerHandshake::new(self.secret.clone(), Nonce::random());
        let permits = Arc::new(Semaphore::new(self.opts.max_in_flight.max(1)));
        let mut scratch = Vec::new();
        let handshake_deadline = tokio::time::Instant::now() + self.opts.handshake_timeout;
        loop {
            let authenticated = hs.is_authenticated();
            let read = async {
                if authenticated {
                    read_frame(&mut rd, &mut dec, &mut scratch).await
                } else {
                    match tokio::time::timeout_at(
                        handshake_deadline,
                        read_frame(&mut rd, &mut dec, &mut scratch),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(ReadFail::Io(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no handshake in time",
                        ))),
                    }
                }
            };
            let frame = tokio::select! {
                _ = shutdown_requested(&mut shutdown) => break,
                r = read => r,
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(ReadFail::Frame(e)) => {
                    tracing::warn!(peer = %self.peer, error = %e, "closing connection: bad frame");
                    break;
                }
                Err(ReadFail::Io(e)) => {
                    tracing::info!(peer = %self.peer, error = %e, "closing connection: read failed");
                    break;
                }
            };
            let next = if hs.is_authenticated() {
                self.on_frame(frame, &mut rd, &mut dec, &mut scratch, &tx, &permits)
                    .await
            } else {
                self.on_handshake_frame(&frame, &mut hs, &mut dec, &tx)
                    .await
            };
            if let Next::Close = next {
                break;
            }
        }
        // Requests already read finish: each holds a sender, and the writer
        // ends (flushing their replies) when the last one is gone.
        drop(tx);
        match writer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(peer = %self.peer, error = %e, "writing replies failed"),
            Err(e) => tracing::warn!(peer = %self.peer, error = %e, "reply writer task failed"),
        }
    }

    async fn on_handshake_frame(
        &self,
        frame: &Frame,
        hs: &mut ServerHandshake,
        dec: &mut FrameDecoder,
        tx: &mpsc::Sender<Outgoing>,
    ) -> Next {
        let id = frame.header.request_id;
        let req = match frame.request() {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "closing connection: bad request before authentication");
                let reply = Response::error(
                    ErrorCode::NotAuthenticated,
                    format!("bad request before authentication: {e}"),
                );
                send(tx, id, &reply, None).await;
                return Next::Close;
            }
        };
        match hs.on_request(&req) {
            ServerStep::Reply(reply) => {
                send(tx, id, &reply, None).await;
                Next::Continue
            }
            ServerStep::Authenticated(reply) => {
                tracing::debug!(peer = %self.peer, "authenticated");
                dec.set_limits(Limits::PROTOCOL);
                send(tx, id, &reply, None).await;
                Next::Continue
            }
            ServerStep::Refuse(reply, err) => {
                tracing::warn!(peer = %self.peer, error = %err, "closing connection: authentication refused");
                send(tx, id, &reply, None).await;
                Next::Close
            }
        }
    }

    async fn on_frame(
        &self,
        frame: Frame,
        rd: &mut tokio::net::tcp::OwnedReadHalf,
        dec: &mut FrameDecoder,
        scratch: &mut Vec<u8>,
        tx: &mpsc::Sender<Outgoing>,
        permits: &Arc<Semaphore>,
    ) -> Next {
        let id = frame.header.request_id;
        let data_len = frame.header.data_len as usize;
        let req = match frame.request() {
            Ok(req) => req,
            Err(e) => {
                // The framing is intact: drop this request's data, answer,
                // and keep the connection.
                if let Err(io) = skip_data(rd, dec, scratch).await {
                    tracing::info!(peer = %self.peer, error = %io, "closing connection: read failed");
                    return Next::Close;
                }
                tracing::info!(peer = %self.peer, request = id, error = %e, "malformed request");
                let code = match e {
                    BodyError::UnknownOpcode { .. } => ErrorCode::Unsupported,
                    _ => ErrorCode::Invalid,
                };
                send(tx, id, &Response::error(code, e.to_string()), None).await;
                return Next::Continue;
            }
        };
        if let Some(DataRef::Remote { .. }) = req.data_ref() {
            let reply = Response::error(
                ErrorCode::Unsupported,
                "remote (RDMA) data references cannot be served over TCP",
            );
            send(tx, id, &reply, None).await;
            return Next::Continue;
        }
        let mut payload = ServerPayload::none(self.peer.clone(), self.id);
        if let (Request::Write(_) | Request::WriteBlocks(_), 0) = (&req, data_len) {
            // An empty write still has (empty) data to take.
            payload = ServerPayload::inline(IoBuf::alloc(0), self.peer.clone(), self.id);
        } else if data_len > 0 {
            let mut buf = self.data_buffer(data_len);
            if let Err(e) = read_data(rd, dec, &mut buf, data_len).await {
                tracing::info!(peer = %self.peer, error = %e, "closing connection: reading request data failed");
                return Next::Close;
            }
            payload = ServerPayload::inline(buf, self.peer.clone(), self.id);
        }
        match &req {
            Request::Read(r) | Request::ReadBlocks(r) => {
                payload = payload.with_sink(r.len.min(crate::wire::MAX_DATA))
            }
            Request::Hello(_) | Request::Auth(_) => {
                let reply = Response::error(ErrorCode::Invalid, "already authenticated");
                send(tx, id, &reply, None).await;
                return Next::Continue;
            }
            _ => {}
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return Next::Close;
        };
        let handler = self.handler.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut resp = handler.handle(req, &mut payload).await;
            let pushed = payload.take_pushed();
            let data = match (resp.data_ref_mut(), pushed) {
                (Some(d), Some(buf)) => {
                    *d = DataRef::Inline {
                        len: buf.len() as u32,
                    };
                    Some(buf)
                }
                (Some(d), None) => {
                    *d = DataRef::None;
                    None
                }
                (None, _) => None,
            };
            send(&tx, id, &resp, data).await;
            drop(permit);
        });
        Next::Continue
    }

    fn data_buffer(&self, len: usize) -> IoBuf {
        if let Some(pool) = &self.opts.pool {
            if len <= pool.buf_size() {
                if let Some(buf) = pool.try_take() {
                    return buf;
                }
            }
        }
        IoBuf::alloc(len)
    }
}

async fn send(tx: &mpsc::Sender<Outgoing>, id: u64, resp: &Response, data: Option<IoBuf>) {
    let mut head = encode_response(id, resp);
    let mut data = data;
    if head.len() - HEADER_LEN > MAX_BODY as usize {
        // The client would close the connection on an oversized frame;
        // tell it what went wrong instead.
        tracing::warn!(request = id, opcode = ?resp.opcode(), len = head.len(), "reply body over the limit");
        let err = Response::error(ErrorCode::TooLarge, "reply body over the frame limit");
        head = encode_response(id, &err);
        data = None;
    }
    let out = Outgoing {
        head,
        data,
        back: None,
    };
    // Fails only when the writer is gone (the peer went away): nothing to
    // answer then.
    let _ = tx.send(out).await;
}
