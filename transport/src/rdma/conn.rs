//! The RDMA driver: threads and futures around the [`Engine`].
//!
//! Each connection has one poller thread that owns the completion loop:
//! busy-poll the completion queue while work completes, and after
//! `SPIN_POLLS` empty polls arm the completion channel, poll once more and
//! block on it (the adaptive fall-back), waking at least every
//! `WAIT_SLICE` to expire timed-out calls. Callers post work themselves
//! under the engine's lock (so a call never waits for the poller to wake),
//! and the poller hands results to them through oneshot channels.

use super::engine::{Engine, EngineConfig, Event, Role};
use super::verbs::{CqWaiter, Fabric, RemoteRef, Verbs};
use crate::auth::{ClientHandshake, ClientStep, Nonce, Secret, ServerHandshake, ServerStep};
use crate::channel::{
    BoxFuture, Channel, ConnState, Handler, Payload, RemoteAccess, ServerPayload,
};
use crate::error::TransportError;
use crate::tcp::{ClientOptions, ServerOptions};
use crate::wire::{DataRef, ErrorCode, Request, Response};
use iobuf::IoBuf;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

/// Empty polls before falling back to the completion channel.
const SPIN_POLLS: u32 = 200;
/// Longest block on the completion channel (bounds timeout detection).
const WAIT_SLICE: Duration = Duration::from_millis(20);

type Reply = Result<(Response, Payload), TransportError>;
type OneSided = (Option<IoBuf>, Result<(), TransportError>);

struct Core {
    engine: Engine<Box<dyn Verbs>>,
    calls: HashMap<u64, oneshot::Sender<Reply>>,
    ops: HashMap<u64, oneshot::Sender<OneSided>>,
    next_token: u64,
    requests: Option<mpsc::UnboundedSender<(u64, Request)>>,
    events: Vec<Event>,
}

impl Core {
    fn dispatch(&mut self) -> bool {
        let mut failed = false;
        for ev in self.events.drain(..) {
            match ev {
                Event::Reply { request_id, result } => {
                    if let Some(tx) = self.calls.remove(&request_id) {
                        let _ = tx.send(result);
                    }
                }
                Event::Request { request_id, req } => {
                    if let Some(tx) = &self.requests {
                        let _ = tx.send((request_id, req));
                    }
                }
                Event::OneSided { token, buf, result } => {
                    if let Some(tx) = self.ops.remove(&token) {
                        let _ = tx.send((buf, result));
                    }
                }
                Event::Failed { .. } => failed = true,
            }
        }
        if failed {
            // Anything still waiting learns of the loss by its sender
            // dropping.
            self.calls.clear();
            self.ops.clear();
            self.requests = None;
        }
        failed
    }
}

/// One live RDMA connection (either role).
pub(crate) struct Conn {
    core: Mutex<Core>,
    peer: Arc<str>,
    dead: AtomicBool,
    dead_notify: Notify,
    stop: AtomicBool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("rdma::Conn")
            .field("peer", &self.peer)
            .finish()
    }
}

impl Conn {
    fn start(
        verbs: Box<dyn Verbs>,
        role: Role,
        cfg: EngineConfig,
        peer: &str,
        requests: Option<mpsc::UnboundedSender<(u64, Request)>>,
        pool: Option<&iobuf::BufPool>,
    ) -> Result<Arc<Conn>, TransportError> {
        let mut engine = Engine::new(verbs, role, cfg, peer.to_string()).map_err(|e| {
            TransportError::Connect {
                addr: peer.to_string(),
                source: io::Error::other(format!("setting up the queue pair: {e}")),
            }
        })?;
        if let Some(pool) = pool {
            engine
                .register_pool(pool)
                .map_err(|e| TransportError::Connect {
                    addr: peer.to_string(),
                    source: io::Error::other(format!("registering the buffer pool: {e}")),
                })?;
        }
        let waiter = engine.waiter();
        let conn = Arc::new(Conn {
            core: Mutex::new(Core {
                engine,
                calls: HashMap::new(),
                ops: HashMap::new(),
                next_token: 1,
                requests,
                events: Vec::new(),
            }),
            peer: Arc::from(peer),
            dead: AtomicBool::new(false),
            dead_notify: Notify::new(),
            stop: AtomicBool::new(false),
        });
        let c = conn.clone();
        std::thread::Builder::new()
            .name("rdma-poll".into())
            .spawn(move || c.poll_loop(waiter))
            .map_err(|e| TransportError::Connect {
                addr: peer.to_string(),
                source: e,
            })?;
        Ok(conn)
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_dead(&self) {
        if !self.dead.swap(true, Ordering::SeqCst) {
            self.dead_notify.notify_waiters();
            self.dead_notify.notify_one();
        }
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    fn poll_loop(self: Arc<Self>, waiter: Box<dyn CqWaiter>) {
        let mut empty = 0u32;
        loop {
            let (n, failed, idle) = {
                let mut core = self.core();
                let mut events = std::mem::take(&mut core.events);
                let mut n = core.engine.poll(&mut events);
                core.engine.expire(Instant::now(), &mut events);
                if n == 0 && empty >= SPIN_POLLS {
                    // Arm, then poll once more: a completion that arrived
                    // before the arm would otherwise never signal.
                    if core.engine.arm().is_ok() {
                        n = core.engine.poll(&mut events);
                    }
                }
                core.events = events;
                let failed = core.dispatch();
                (n, failed || core.engine.is_failed(), core.engine.is_idle())
            };
            if failed {
                self.mark_dead();
                return;
            }
            if self.stop.load(Ordering::SeqCst) && idle {
                let mut core = self.core();
                let mut events = std::mem::take(&mut core.events);
                core.engine.close(&mut events);
                core.events = events;
                core.dispatch();
                drop(core);
                self.mark_dead();
                return;
            }
            if n > 0 {
                empty = 0;
            } else if empty < SPIN_POLLS {
                empty += 1;
                std::thread::yield_now();
            } else {
                waiter.wait(WAIT_SLICE);
            }
        }
    }

    /// Client: one call.
    async fn call(
        &self,
        request_id: u64,
        req: Request,
        payload: Payload,
        timeout: Duration,
    ) -> Reply {
        let opcode = req.opcode();
        let rx = {
            let mut core = self.core();
            let (tx, rx) = oneshot::channel();
            if let Err((e, _payload)) =
                core.engine
                    .call(request_id, req, payload, Instant::now() + timeout)
            {
                return Err(e);
            }
            core.calls.insert(request_id, tx);
            let mut events = std::mem::take(&mut core.events);
            core.engine.flush(&mut events);
            core.events = events;
            if core.dispatch() {
                drop(core);
                self.mark_dead();
            }
            rx
        };
        match rx.await {
            Ok(Err(TransportError::Timeout { .. })) => Err(TransportError::Timeout {
                opcode,
                request_id,
                secs: timeout.as_secs_f64(),
            }),
            Ok(r) => r,
            Err(_) => Err(TransportError::ConnectionLost {
                opcode,
                request_id,
                peer: self.peer.to_string(),
            }),
        }
    }

    fn lost_payload(&self) -> TransportError {
        TransportError::Payload {
            reason: format!("the RDMA connection to {} is gone", self.peer),
        }
    }

    async fn one_sided(
        &self,
        start: impl FnOnce(&mut Engine<Box<dyn Verbs>>, u64) -> Result<(), TransportError>,
    ) -> OneSided {
        let rx = {
            let mut core = self.core();
            let token = core.next_token;
            core.next_token += 1;
            if let Err(e) = start(&mut core.engine, token) {
                return (None, Err(e));
            }
            let (tx, rx) = oneshot::channel();
            core.ops.insert(token, tx);
            let mut events = std::mem::take(&mut core.events);
            core.engine.flush(&mut events);
            core.events = events;
            if core.dispatch() {
                drop(core);
                self.mark_dead();
            }
            rx
        };
        rx.await
            .unwrap_or_else(|_| (None, Err(self.lost_payload())))
    }

    /// Server: RDMA WRITE of `buf` into the caller's memory.
    async fn write_remote(&self, buf: IoBuf, remote: RemoteRef) -> Result<(), TransportError> {
        self.one_sided(move |e, token| e.write_remote(token, buf, remote))
            .await
            .1
    }

    /// Server: queue a reply and send it.
    fn reply(&self, request_id: u64, resp: &Response) {
        let mut core = self.core();
        core.engine.reply(request_id, resp);
        let mut events = std::mem::take(&mut core.events);
        core.engine.flush(&mut events);
        core.events = events;
        if core.dispatch() {
            drop(core);
            self.mark_dead();
        }
    }

    /// Graceful close: the poller tears down once nothing is in flight.
    fn close(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Abortive close.
    fn abort(&self) {
        let mut core = self.core();
        let mut events = std::mem::take(&mut core.events);
        core.engine.close(&mut events);
        core.events = events;
        core.dispatch();
        drop(core);
        self.mark_dead();
    }

    async fn dead(&self) {
        loop {
            let n = self.dead_notify.notified();
            if self.is_dead() {
                return;
            }
            n.await;
        }
    }
}

impl RemoteAccess for Conn {
    fn read(&self, remote: RemoteRef) -> BoxFuture<'_, Result<IoBuf, TransportError>> {
        Box::pin(async move {
            if remote.len == 0 {
                return Ok(IoBuf::alloc(0));
            }
            let (buf, r) = self
                .one_sided(move |e, token| e.read_remote(token, remote))
                .await;
            r?;
            buf.ok_or_else(|| self.lost_payload())
        })
    }
}

// ---------------------------------------------------------------- client

struct ClientShared {
    peer: String,
    fabric: Arc<dyn Fabric>,
    secret: Secret,
    opts: ClientOptions,
    cfg: EngineConfig,
    state: watch::Sender<ConnState>,
    conn: Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU64,
    closing: AtomicBool,
}

impl ClientShared {
    fn current(&self) -> Option<Arc<Conn>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set_conn(&self, c: Option<Arc<Conn>>) -> Option<Arc<Conn>> {
        std::mem::replace(&mut *self.conn.lock().unwrap_or_else(|e| e.into_inner()), c)
    }
}

/// A client channel to one brick over RDMA verbs (real or simulated).
#[derive(Clone)]
pub struct RdmaClient {
    shared: Arc<ClientShared>,
}

impl std::fmt::Debug for RdmaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaClient")
            .field("peer", &self.shared.peer)
            .finish()
    }
}

async fn establish(shared: &Arc<ClientShared>) -> Result<Arc<Conn>, TransportError> {
    let fabric = shared.fabric.clone();
    let addr = shared.peer.clone();
    let timeout = shared.opts.connect_timeout;
    let verbs = tokio::task::spawn_blocking(move || fabric.connect(&addr, timeout))
        .await
        .map_err(|e| TransportError::Connect {
            addr: shared.peer.clone(),
            source: io::Error::other(e.to_string()),
        })?
        .map_err(|e| TransportError::Connect {
            addr: shared.peer.clone(),
            source: io::Error::other(e.to_string()),
        })?;
    let conn = Conn::start(
        verbs,
        Role::Client,
        shared.cfg.clone(),
        &shared.peer,
        None,
        None,
    )?;
    let (mut hs, first) = ClientHandshake::new(shared.secret.clone(), Nonce::random());
    let mut req = first;
    let handshake = async {
        loop {
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let (resp, _) = conn
                .call(id, req, Payload::None, shared.opts.connect_timeout)
                .await?;
            match hs.on_response(&resp) {
                Ok(ClientStep::Send(next)) => req = next,
                Ok(ClientStep::Done) => return Ok(()),
                Err(source) => {
                    return Err(TransportError::Auth {
                        addr: shared.peer.clone(),
                        source,
                    })
                }
            }
        }
    };
    match handshake.await {
        Ok(()) => Ok(conn),
        Err(e) => {
            conn.abort();
            Err(e)
        }
    }
}

fn watch_conn(shared: Arc<ClientShared>, conn: Arc<Conn>) {
    tokio::spawn(async move {
        conn.dead().await;
        if shared.closing.load(Ordering::SeqCst) {
            shared.state.send_replace(ConnState::Down);
            return;
        }
        shared.set_conn(None);
        shared.state.send_replace(ConnState::Down);
        tracing::info!(peer = %shared.peer, "RDMA connection lost; reconnecting");
        let mut wait = shared.opts.reconnect_min;
        loop {
            tokio::time::sleep(wait).await;
            if shared.closing.load(Ordering::SeqCst) {
                return;
            }
            shared.state.send_replace(ConnState::Reconnecting);
            match establish(&shared).await {
                Ok(c) => {
                    shared.set_conn(Some(c.clone()));
                    shared.state.send_replace(ConnState::Up);
                    tracing::info!(peer = %shared.peer, "RDMA connection back up");
                    watch_conn(shared, c);
                    return;
                }
                Err(e) => {
                    tracing::debug!(peer = %shared.peer, error = %e, "RDMA reconnect failed");
                    wait = (wait * 2).min(shared.opts.reconnect_max);
                }
            }
        }
    });
}

impl RdmaClient {
    /// Connects to a brick at `addr` over `fabric` and authenticates.
    pub async fn connect(
        fabric: Arc<dyn Fabric>,
        addr: &str,
        secret: Secret,
        opts: ClientOptions,
    ) -> Result<RdmaClient, TransportError> {
        Self::connect_with(fabric, addr, secret, opts, EngineConfig::default()).await
    }

    /// [`RdmaClient::connect`] with engine tuning.
    pub async fn connect_with(
        fabric: Arc<dyn Fabric>,
        addr: &str,
        secret: Secret,
        opts: ClientOptions,
        cfg: EngineConfig,
    ) -> Result<RdmaClient, TransportError> {
        let (state, _) = watch::channel(ConnState::Down);
        let shared = Arc::new(ClientShared {
            peer: addr.to_string(),
            fabric,
            secret,
            opts,
            cfg,
            state,
            conn: Mutex::new(None),
            next_id: AtomicU64::new(1),
            closing: AtomicBool::new(false),
        });
        let conn = establish(&shared).await?;
        shared.set_conn(Some(conn.clone()));
        shared.state.send_replace(ConnState::Up);
        watch_conn(shared.clone(), conn);
        Ok(RdmaClient { shared })
    }

    pub async fn call(&self, req: Request, payload: Payload) -> Reply {
        let opcode = req.opcode();
        if self.shared.closing.load(Ordering::SeqCst) {
            return Err(TransportError::Closed {
                opcode,
                peer: self.shared.peer.clone(),
            });
        }
        let Some(conn) = self.shared.current().filter(|c| !c.is_dead()) else {
            return Err(TransportError::NotConnected {
                opcode,
                peer: self.shared.peer.clone(),
                state: *self.shared.state.borrow(),
            });
        };
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        conn.call(id, req, payload, self.shared.opts.request_timeout)
            .await
    }

    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// Breaks the current connection as a link failure would (tests).
    pub fn abort_connection(&self) {
        if let Some(c) = self.shared.current() {
            c.abort();
        }
    }
}

impl Channel for RdmaClient {
    fn call(&self, req: Request, payload: Payload) -> BoxFuture<'_, Reply> {
        Box::pin(RdmaClient::call(self, req, payload))
    }
    fn state(&self) -> ConnState {
        *self.shared.state.borrow()
    }
    fn watch_state(&self) -> watch::Receiver<ConnState> {
        self.shared.state.subscribe()
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shared.closing.store(true, Ordering::SeqCst);
            if let Some(c) = self.shared.set_conn(None) {
                c.close();
                c.dead().await;
            }
            self.shared.state.send_replace(ConnState::Down);
        })
    }
}

impl Drop for ClientShared {
    fn drop(&mut self) {
        if let Some(c) = self
            .conn
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            c.abort();
        }
    }
}

// ---------------------------------------------------------------- server

/// A bound RDMA listener (so the caller can print the address first).
pub struct RdmaListener {
    fabric: Arc<dyn Fabric>,
    inner: Box<dyn super::verbs::Listener>,
}

impl RdmaListener {
    pub fn bind(fabric: Arc<dyn Fabric>, addr: &str) -> Result<RdmaListener, TransportError> {
        let inner = fabric.listen(addr).map_err(|e| TransportError::Connect {
            addr: addr.to_string(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(RdmaListener { fabric, inner })
    }
    pub fn local_addr(&self) -> String {
        self.inner.local_addr()
    }
    pub fn fabric_name(&self) -> String {
        self.fabric.name()
    }
}

/// Serves RDMA connections with the same [`Handler`] as TCP until
/// `shutdown` turns true.
pub async fn serve_rdma(
    listener: RdmaListener,
    secret: Secret,
    handler: Arc<dyn Handler>,
    mut shutdown: watch::Receiver<bool>,
    opts: ServerOptions,
) -> io::Result<()> {
    serve_rdma_with(
        listener,
        secret,
        handler,
        &mut shutdown,
        opts,
        EngineConfig::default(),
    )
    .await
}

/// [`serve_rdma`] with engine tuning.
pub async fn serve_rdma_with(
    listener: RdmaListener,
    secret: Secret,
    handler: Arc<dyn Handler>,
    shutdown: &mut watch::Receiver<bool>,
    opts: ServerOptions,
    cfg: EngineConfig,
) -> io::Result<()> {
    let listener = Arc::new(Mutex::new(listener.inner));
    let opts = Arc::new(opts);
    let mut next_conn = 1u64;
    let mut conns = tokio::task::JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let l = listener.clone();
        let accepted = tokio::task::spawn_blocking(move || {
            l.lock()
                .unwrap_or_else(|e| e.into_inner())
                .accept(Duration::from_millis(100))
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok(Some((verbs, peer))) => {
                let id = next_conn;
                next_conn += 1;
                let (tx, rx) = mpsc::unbounded_channel();
                match Conn::start(
                    verbs,
                    Role::Server,
                    cfg.clone(),
                    &peer,
                    Some(tx),
                    opts.pool.as_ref(),
                ) {
                    Ok(conn) => {
                        conns.spawn(serve_conn(
                            conn,
                            rx,
                            secret.clone(),
                            handler.clone(),
                            opts.clone(),
                            id,
                            shutdown.clone(),
                        ));
                    }
                    Err(e) => tracing::warn!(%peer, error = %e, "RDMA connection setup failed"),
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "accepting an RDMA connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

async fn serve_conn(
    conn: Arc<Conn>,
    mut rx: mpsc::UnboundedReceiver<(u64, Request)>,
    secret: Secret,
    handler: Arc<dyn Handler>,
    opts: Arc<ServerOptions>,
    id: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut hs = ServerHandshake::new(secret, Nonce::random());
    let permits = Arc::new(Semaphore::new(opts.max_in_flight.max(1)));
    let deadline = tokio::time::Instant::now() + opts.handshake_timeout;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let authenticated = hs.is_authenticated();
        let next = tokio::select! {
            r = rx.recv() => r,
            _ = tokio::time::sleep_until(deadline), if !authenticated => {
                tracing::info!(peer = %conn.peer, "closing RDMA connection: no handshake in time");
                None
            }
            _ = crate::tcp::shutdown_requested(&mut shutdown) => None,
        };
        let Some((request_id, req)) = next else { break };
        if !hs.is_authenticated() {
            match hs.on_request(&req) {
                ServerStep::Reply(r) | ServerStep::Authenticated(r) => conn.reply(request_id, &r),
                ServerStep::Refuse(r, err) => {
                    tracing::warn!(peer = %conn.peer, error = %err, "closing RDMA connection: authentication refused");
                    conn.reply(request_id, &r);
                    break;
                }
            }
            continue;
        }
        if matches!(req, Request::Hello(_) | Request::Auth(_)) {
            conn.reply(
                request_id,
                &Response::error(ErrorCode::Invalid, "already authenticated"),
            );
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let conn2 = conn.clone();
        let handler = handler.clone();
        tasks.spawn(async move {
            let resp = handle_one(&conn2, &*handler, request_id, req, id).await;
            conn2.reply(request_id, &resp);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    // Requests already received finish and their replies go out.
    while tasks.join_next().await.is_some() {}
    conn.close();
    conn.dead().await;
}

async fn handle_one(
    conn: &Arc<Conn>,
    handler: &dyn Handler,
    _request_id: u64,
    req: Request,
    id: u64,
) -> Response {
    let peer = conn.peer.clone();
    let remote = match req.data_ref() {
        Some(DataRef::Remote { addr, len, rkey }) => Some(RemoteRef {
            addr: *addr,
            len: *len,
            rkey: *rkey,
        }),
        Some(DataRef::Inline { len }) if *len > 0 => {
            return Response::error(ErrorCode::Invalid, "inline data cannot travel over RDMA");
        }
        _ => None,
    };
    let (mut payload, sink) = match (&req, remote) {
        (Request::Write(_) | Request::WriteBlocks(_), Some(r)) => (
            ServerPayload::remote(conn.clone() as Arc<dyn RemoteAccess>, r, peer, id),
            None,
        ),
        (Request::Write(_) | Request::WriteBlocks(_), None) => (
            ServerPayload::remote(
                conn.clone() as Arc<dyn RemoteAccess>,
                RemoteRef {
                    addr: 0,
                    len: 0,
                    rkey: 0,
                },
                peer,
                id,
            ),
            None,
        ),
        (Request::Read(r) | Request::ReadBlocks(r), Some(sink)) => (
            ServerPayload::none(peer, id).with_sink(r.len.min(sink.len)),
            Some(sink),
        ),
        (Request::Read(r) | Request::ReadBlocks(r), None) if r.len > 0 => {
            return Response::error(
                ErrorCode::Invalid,
                "an RDMA read must name the caller's buffer",
            );
        }
        _ => (ServerPayload::none(peer, id), None),
    };
    let mut resp = handler.handle(req, &mut payload).await;
    let pushed = payload.take_pushed();
    if let Some(d) = resp.data_ref_mut() {
        *d = DataRef::None;
        if let (Some(buf), Some(sink)) = (pushed, sink) {
            let len = buf.len() as u32;
            if len > 0 {
                if let Err(e) = conn.write_remote(buf, RemoteRef { len, ..sink }).await {
                    return Response::error(
                        ErrorCode::Io,
                        format!("RDMA WRITE of the reply data: {e}"),
                    );
                }
            }
            *d = DataRef::Remote {
                addr: sink.addr,
                len,
                rkey: sink.rkey,
            };
        }
    }
    resp
}
