//! TCP client: one connection to one brick, many calls in flight, replies
//! matched by request id, background reconnect.

use super::{read_data, read_frame, skip_data, write_loop, Outgoing, ReadFail};
use crate::auth::{ClientHandshake, ClientStep, Nonce, Secret};
use crate::channel::{check_payload, BoxFuture, Channel, ConnState, Payload};
use crate::error::TransportError;
use crate::wire::{
    encode_request, DataRef, FrameDecoder, Limits, Opcode, Request, Response, HEADER_LEN, MAX_BODY,
};
use iobuf::IoBuf;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::AbortHandle;

/// Client tuning.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long a call waits for its reply.
    pub request_timeout: Duration,
    /// How long connecting plus the handshake may take.
    pub connect_timeout: Duration,
    /// First wait before reconnecting; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Frames queued for the writer before callers wait.
    pub send_queue: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(5),
            send_queue: 256,
        }
    }
}

type Reply = Result<(Response, Payload), TransportError>;

struct Pending {
    opcode: Opcode,
    reply: oneshot::Sender<Reply>,
    /// The caller's `In` buffer, filled by the reader.
    sink: Option<IoBuf>,
}

#[derive(Default)]
struct PendingMap {
    /// Set when the connection died: no new entries.
    closed: bool,
    map: HashMap<u64, Pending>,
}

/// One live connection.
struct Conn {
    /// Taken away on graceful close, so the writer sees the end of its queue.
    tx: Mutex<Option<mpsc::Sender<Outgoing>>>,
    pending: Mutex<PendingMap>,
    /// Signalled when `pending` becomes empty (graceful close waits on it).
    idle: Notify,
    /// Signalled (once) when the reader or writer ends.
    dead: Notify,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Conn {
    fn pending(&self) -> MutexGuard<'_, PendingMap> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, id: u64) -> Option<Pending> {
        let mut p = self.pending();
        let entry = p.map.remove(&id);
        if p.map.is_empty() {
            self.idle.notify_waiters();
        }
        entry
    }

    /// Fails every call in flight (their reply senders drop: the callers see
    /// `ConnectionLost`) and refuses new ones.
    fn fail_all(&self) {
        let drained: Vec<Pending> = {
            let mut p = self.pending();
            p.closed = true;
            p.map.drain().map(|(_, v)| v).collect()
        };
        drop(drained);
        self.idle.notify_waiters();
    }

    fn sender(&self) -> Option<mpsc::Sender<Outgoing>> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn abort_tasks(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

struct Shared {
    peer: String,
    secret: Secret,
    opts: ClientOptions,
    state: watch::Sender<ConnState>,
    conn: Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU64,
    closing: AtomicBool,
}

impl Shared {
    fn current(&self) -> Option<Arc<Conn>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_conn(&self, conn: Option<Arc<Conn>>) -> Option<Arc<Conn>> {
        std::mem::replace(
            &mut *self.conn.lock().unwrap_or_else(|e| e.into_inner()),
            conn,
        )
    }
}

/// A client channel to one brick over TCP.
///
/// Calls may be issued from many tasks at once (`&self`); they share one
/// connection. If the connection dies, calls in flight fail with
/// `ConnectionLost`, new calls fail with `NotConnected` until a background
/// task has reconnected (state `Down` → `Reconnecting` → `Up`).
pub struct TcpClient {
    shared: Arc<Shared>,
    supervisor: AbortHandle,
}

impl std::fmt::Debug for TcpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpClient")
            .field("peer", &self.shared.peer)
            .field("state", &*self.shared.state.borrow())
            .finish()
    }
}

impl TcpClient {
    /// Connects to `addr` (`HOST:PORT`) and authenticates with `secret`.
    /// Fails if the first connection fails; later losses are repaired in
    /// the background.
    pub async fn connect(
        addr: &str,
        secret: Secret,
        opts: ClientOptions,
    ) -> Result<TcpClient, TransportError> {
        let (state, _) = watch::channel(ConnState::Down);
        let shared = Arc::new(Shared {
            peer: addr.to_owned(),
            secret,
            opts,
            state,
            conn: Mutex::new(None),
            next_id: AtomicU64::new(1),
            closing: AtomicBool::new(false),
        });
        let conn = connect_once(&shared).await?;
        shared.set_conn(Some(conn.clone()));
        shared.state.send_replace(ConnState::Up);
        let supervisor = tokio::spawn(supervise(shared.clone(), conn)).abort_handle();
        Ok(TcpClient { shared, supervisor })
    }

    /// The address this client connects to.
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// The current connection state.
    pub fn state(&self) -> ConnState {
        *self.shared.state.borrow()
    }

    /// A receiver that sees every state change.
    pub fn watch_state(&self) -> watch::Receiver<ConnState> {
        self.shared.state.subscribe()
    }

    /// Sends a request and waits for its reply; see [`Channel::call`].
    pub async fn call(
        &self,
        mut req: Request,
        payload: Payload,
    ) -> Result<(Response, Payload), TransportError> {
        let opcode = req.opcode();
        let sh = &self.shared;
        if matches!(opcode, Opcode::Hello | Opcode::Auth) {
            return Err(TransportError::BadCall {
                opcode,
                reason: "the handshake is the transport's business".into(),
            });
        }
        check_payload(&req, &payload)?;
        if sh.closing.load(Ordering::Acquire) {
            return Err(TransportError::Closed {
                opcode,
                peer: sh.peer.clone(),
            });
        }
        // The transport, not the caller, says where the data is.
        let (data, sink) = match payload {
            Payload::Out(buf) => {
                if let Some(d) = req.data_ref_mut() {
                    *d = DataRef::Inline {
                        len: buf.len() as u32,
                    };
                }
                (Some(buf), None)
            }
            Payload::In(buf) => {
                if let Some(d) = req.data_ref_mut() {
                    *d = DataRef::None;
                }
                (None, Some(buf))
            }
            Payload::None => {
                if let Some(d) = req.data_ref_mut() {
                    *d = DataRef::None;
                }
                (None, None)
            }
        };
        let not_connected = || TransportError::NotConnected {
            opcode,
            peer: sh.peer.clone(),
            state: *sh.state.borrow(),
        };
        let conn = sh.current().ok_or_else(not_connected)?;
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut p = conn.pending();
            if p.closed {
                return Err(not_connected());
            }
            p.map.insert(
                id,
                Pending {
                    opcode,
                    reply: reply_tx,
                    sink,
                },
            );
        }
        // Whatever happens to this future (reply, error, timeout, being
        // dropped), the pending entry goes.
        let _guard = PendingGuard { conn: &conn, id };
        let lost = || TransportError::ConnectionLost {
            opcode,
            request_id: id,
            peer: sh.peer.clone(),
        };
        let (back_tx, back_rx) = match data {
            Some(_) => {
                let (t, r) = oneshot::channel();
                (Some(t), Some(r))
            }
            None => (None, None),
        };
        let head = encode_request(id, &req);
        if head.len() - HEADER_LEN > MAX_BODY as usize {
            return Err(TransportError::BadCall {
                opcode,
                reason: format!(
                    "message of {} bytes is over the limit of {MAX_BODY}",
                    head.len() - HEADER_LEN
                ),
            });
        }
        let out = Outgoing {
            head,
            data,
            back: back_tx,
        };
        let exchange = async {
            let tx = conn.sender().ok_or_else(lost)?;
            tx.send(out).await.map_err(|_| lost())?;
            let (resp, payload) = reply_rx.await.map_err(|_| lost())??;
            match back_rx {
                // The writer hands the buffer back once written; the reply
                // cannot come before the server read it all.
                Some(back) => Ok((resp, Payload::Out(back.await.map_err(|_| lost())?))),
                None => Ok((resp, payload)),
            }
        };
        match tokio::time::timeout(sh.opts.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout {
                opcode,
                request_id: id,
                secs: sh.opts.request_timeout.as_secs_f64(),
            }),
        }
    }

    /// Closes gracefully: new calls fail with `Closed`, calls in flight get
    /// their replies (or time out), then the connection is shut down and
    /// the state goes `Down`.
    pub async fn close(&self) {
        let sh = &self.shared;
        sh.closing.store(true, Ordering::Release);
        if let Some(conn) = sh.current() {
            loop {
                let idle = conn.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if conn.pending().map.is_empty() {
                    break;
                }
                idle.await;
            }
        }
        self.supervisor.abort();
        if let Some(conn) = sh.set_conn(None) {
            conn.fail_all();
            // Dropping the sender makes the writer flush and shut the write
            // side down; the server then closes its side too.
            drop(conn.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
            let _ = tokio::time::timeout(sh.opts.connect_timeout, conn.dead.notified()).await;
            conn.abort_tasks();
        }
        sh.state.send_replace(ConnState::Down);
    }
}

impl Drop for TcpClient {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.supervisor.abort();
        if let Some(conn) = self.shared.set_conn(None) {
            conn.fail_all();
            conn.abort_tasks();
        }
    }
}

impl Channel for TcpClient {
    fn call(
        &self,
        req: Request,
        payload: Payload,
    ) -> BoxFuture<'_, Result<(Response, Payload), TransportError>> {
        Box::pin(TcpClient::call(self, req, payload))
    }

    fn state(&self) -> ConnState {
        TcpClient::state(self)
    }

    fn watch_state(&self) -> watch::Receiver<ConnState> {
        TcpClient::watch_state(self)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(TcpClient::close(self))
    }
}

struct PendingGuard<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.conn.take(self.id);
    }
}

/// Watches the connection; when it dies, fails its calls and reconnects
/// with exponential backoff until it succeeds or the client is closed.
async fn supervise(shared: Arc<Shared>, mut conn: Arc<Conn>) {
    loop {
        conn.dead.notified().await;
        conn.fail_all();
        conn.abort_tasks();
        shared.set_conn(None);
        drop(conn);
        if shared.closing.load(Ordering::Acquire) {
            shared.state.send_replace(ConnState::Down);
            return;
        }
        tracing::warn!(peer = %shared.peer, "connection lost; reconnecting");
        shared.state.send_replace(ConnState::Down);
        let mut backoff = shared.opts.reconnect_min;
        conn = loop {
            shared.state.send_replace(ConnState::Reconnecting);
            tokio::time::sleep(backoff).await;
            if shared.closing.load(Ordering::Acquire) {
                shared.state.send_replace(ConnState::Down);
                return;
            }
            match connect_once(&shared).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::debug!(peer = %shared.peer, error = %e, "reconnect failed");
                    backoff = (backoff * 2).min(shared.opts.reconnect_max);
                }
            }
        };
        shared.set_conn(Some(conn.clone()));
        shared.state.send_replace(ConnState::Up);
        tracing::info!(peer = %shared.peer, "reconnected");
    }
}

/// Connects, authenticates and starts the reader and writer tasks.
async fn connect_once(shared: &Shared) -> Result<Arc<Conn>, TransportError> {
    let peer = shared.peer.clone();
    let setup = async {
        let stream = TcpStream::connect(&peer)
            .await
            .map_err(|source| TransportError::Connect {
                addr: peer.clone(),
                source,
            })?;
        stream
            .set_nodelay(true)
            .map_err(|source| TransportError::Connect {
                addr: peer.clone(),
                source,
            })?;
        handshake(stream, &shared.secret, &peer).await
    };
    let (stream, dec) = tokio::time::timeout(shared.opts.connect_timeout, setup)
        .await
        .map_err(|_| TransportError::ConnectTimeout {
            addr: peer.clone(),
            secs: shared.opts.connect_timeout.as_secs_f64(),
        })??;
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(shared.opts.send_queue.max(1));
    let conn = Arc::new(Conn {
        tx: Mutex::new(Some(tx)),
        pending: Mutex::new(PendingMap::default()),
        idle: Notify::new(),
        dead: Notify::new(),
        tasks: Mutex::new(Vec::new()),
    });
    let c = conn.clone();
    let p = peer.clone();
    let writer = tokio::spawn(async move {
        if let Err(e) = write_loop(wr, rx).await {
            tracing::info!(peer = %p, error = %e, "writing to the connection failed");
        }
        c.dead.notify_one();
    });
    let c = conn.clone();
    let reader = tokio::spawn(async move {
        if let Err(e) = read_replies(rd, dec, &c).await {
            tracing::warn!(peer = %peer, error = %e, "connection failed");
        }
        c.fail_all();
        c.dead.notify_one();
    });
    conn.tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend([writer.abort_handle(), reader.abort_handle()]);
    Ok(conn)
}

/// Runs the client side of the handshake on a fresh stream.
async fn handshake(
    mut stream: TcpStream,
    secret: &Secret,
    peer: &str,
) -> Result<(TcpStream, FrameDecoder), TransportError> {
    use tokio::io::AsyncWriteExt;
    let io_err = |op, source| TransportError::Io {
        op,
        peer: peer.to_owned(),
        source,
    };
    let (mut hs, mut req) = ClientHandshake::new(secret.clone(), Nonce::random());
    let mut dec = FrameDecoder::new(Limits::HANDSHAKE);
    let mut scratch = Vec::new();
    // Handshake requests use ids 0 and up; calls start after them and the
    // server does not care either way.
    for id in 0u64.. {
        stream
            .write_all(&encode_request(id, &req))
            .await
            .map_err(|e| io_err("sending the handshake", e))?;
        let frame = match read_frame(&mut stream, &mut dec, &mut scratch).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(io_err(
                    "reading the handshake",
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ),
                ))
            }
            Err(ReadFail::Io(e)) => return Err(io_err("reading the handshake", e)),
            Err(ReadFail::Frame(source)) => {
                return Err(TransportError::Frame {
                    peer: peer.to_owned(),
                    source,
                })
            }
        };
        let resp = frame.response().map_err(|source| TransportError::Body {
            opcode: req.opcode(),
            request_id: id,
            source,
        })?;
        match hs.on_response(&resp) {
            Ok(ClientStep::Send(next)) => req = next,
            Ok(ClientStep::Done) => break,
            Err(source) => {
                return Err(TransportError::Auth {
                    addr: peer.to_owned(),
                    source,
                })
            }
        }
    }
    dec.set_limits(Limits::PROTOCOL);
    Ok((stream, dec))
}

/// Reads replies and completes their calls until the stream ends.
async fn read_replies(
    mut rd: OwnedReadHalf,
    mut dec: FrameDecoder,
    conn: &Conn,
) -> Result<(), ReadFail> {
    let mut scratch = Vec::new();
    while let Some(frame) = read_frame(&mut rd, &mut dec, &mut scratch).await? {
        let id = frame.header.request_id;
        let data_len = frame.header.data_len;
        let Some(mut pending) = conn.take(id) else {
            // The caller gave up (timeout) or never existed.
            tracing::debug!(request = id, "reply to no waiting call");
            skip_data(&mut rd, &mut dec, &mut scratch).await?;
            continue;
        };
        let opcode = pending.opcode;
        let result = match frame.response() {
            Err(source) => Err(TransportError::Body {
                opcode,
                request_id: id,
                source,
            }),
            Ok(resp) if resp.opcode() != opcode && resp.opcode() != Opcode::Error => {
                Err(TransportError::WrongReply {
                    opcode,
                    request_id: id,
                    got: resp.opcode(),
                })
            }
            Ok(resp) if data_len == 0 => {
                // No data came back: the lent buffer returns empty.
                let payload = match pending.sink.take() {
                    Some(mut buf) => {
                        buf.set_len(0);
                        Payload::In(buf)
                    }
                    None => Payload::None,
                };
                Ok((resp, payload))
            }
            Ok(resp) => match pending.sink.take() {
                Some(mut buf) if buf.capacity() >= data_len as usize => {
                    read_data(&mut rd, &mut dec, &mut buf, data_len as usize).await?;
                    Ok((resp, Payload::In(buf)))
                }
                other => Err(TransportError::ReplyTooLarge {
                    opcode,
                    request_id: id,
                    len: data_len,
                    capacity: other.map_or(0, |b| b.capacity()),
                }),
            },
        };
        // Whatever was not read into the caller's buffer is dropped.
        skip_data(&mut rd, &mut dec, &mut scratch).await?;
        let _ = pending.reply.send(result);
    }
    Ok(())
}

impl std::fmt::Display for ReadFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadFail::Io(e) => write!(f, "{e}"),
            ReadFail::Frame(e) => write!(f, "bad frame: {e}"),
        }
    }
}
