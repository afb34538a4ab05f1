//! One brick connection as the volume client sees it: up or not, and when
//! it last came back.
//!
//! A brick that is dead when the client starts is tried again in the
//! background until it answers; a connection that dies later is repaired by
//! the transport (`TcpClient` reconnects by itself). Each time the link goes
//! `Up` its `ups` counter moves, so the replica layer knows to reload the
//! pending marks that may now concern it.
//!
//! A brick that stops answering without closing its connection (hung,
//! partitioned) costs one request timeout (the volume's `ping-timeout`):
//! the first call that times out makes the link *suspect*, it counts as
//! down from then on, and a background probe pings it until it answers
//! again (then it is up, and `ups` moves).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use transport::wire::Ping;
use transport::{
    connect_channel, Channel, ClientOptions, ConnState, Payload, Request, Response, Secret,
    TransportError, TransportKind,
};

/// Why a call did not get a reply.
#[derive(Debug)]
pub enum CallFail {
    /// The link is not up: the call was not sent.
    Down,
    /// The transport failed (lost connection, timeout).
    Transport(transport::TransportError),
}

/// A link to one brick.
pub struct BrickLink {
    addr: String,
    chan: Mutex<Option<Arc<dyn Channel>>>,
    ups: Arc<AtomicU64>,
    /// A call timed out: treated as down until a probe gets an answer.
    suspect: Arc<AtomicBool>,
}

impl std::fmt::Debug for BrickLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrickLink")
            .field("addr", &self.addr)
            .field("up", &self.is_up())
            .finish()
    }
}

impl BrickLink {
    /// Connects to `addr`; if the brick does not answer, keeps trying in the
    /// background (every `opts.reconnect_min`, at least 100 ms).
    pub async fn connect(addr: &str, secret: Secret, opts: ClientOptions) -> Arc<BrickLink> {
        Self::connect_via(addr, secret, opts, TransportKind::Tcp).await
    }

    /// [`BrickLink::connect`] over a chosen transport (`auto` falls back to
    /// TCP with a log line; `rdma` without a device keeps failing).
    pub async fn connect_via(
        addr: &str,
        secret: Secret,
        opts: ClientOptions,
        kind: TransportKind,
    ) -> Arc<BrickLink> {
        let link = Arc::new(BrickLink {
            addr: addr.to_owned(),
            chan: Mutex::new(None),
            ups: Arc::new(AtomicU64::new(0)),
            suspect: Arc::new(AtomicBool::new(false)),
        });
        match connect_channel(kind, addr, secret.clone(), opts.clone(), None).await {
            Ok(c) => link.install(c),
            Err(e) => {
                tracing::warn!(brick = addr, error = %e, "brick unreachable; retrying in the background");
                let weak = Arc::downgrade(&link);
                let addr = addr.to_owned();
                tokio::spawn(retry(weak, addr, secret, opts, kind));
            }
        }
        link
    }

    /// A link over an existing channel (tests wrap channels to cut them).
    pub fn with_channel(addr: &str, chan: Arc<dyn Channel>) -> Arc<BrickLink> {
        let link = Arc::new(BrickLink {
            addr: addr.to_owned(),
            chan: Mutex::new(None),
            ups: Arc::new(AtomicU64::new(0)),
            suspect: Arc::new(AtomicBool::new(false)),
        });
        link.install(chan);
        link
    }

    fn install(&self, chan: Arc<dyn Channel>) {
        let mut rx = chan.watch_state();
        let ups = self.ups.clone();
        ups.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if *rx.borrow_and_update() == ConnState::Up {
                    ups.fetch_add(1, Ordering::AcqRel);
                }
            }
        });
        *self.chan.lock().unwrap_or_else(|e| e.into_inner()) = Some(chan);
    }

    /// The brick's address (`HOST:PORT`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn channel(&self) -> Option<Arc<dyn Channel>> {
        self.chan.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Is the connection up now?
    pub fn is_up(&self) -> bool {
        !self.suspect.load(Ordering::Acquire)
            && self.channel().is_some_and(|c| c.state() == ConnState::Up)
    }

    /// How many times the link has come up.
    pub fn ups(&self) -> u64 {
        self.ups.load(Ordering::Acquire)
    }

    /// One call; an error reply is `Ok(Response::Error)`.
    pub async fn call(
        &self,
        req: Request,
        payload: Payload,
    ) -> Result<(Response, Payload), CallFail> {
        let Some(chan) = self.channel() else {
            return Err(CallFail::Down);
        };
        if chan.state() != ConnState::Up || self.suspect.load(Ordering::Acquire) {
            return Err(CallFail::Down);
        }
        let r = chan.clone().call(req, payload).await;
        if let Err(TransportError::Timeout { .. }) = &r {
            if !self.suspect.swap(true, Ordering::AcqRel) {
                tracing::warn!(brick = %self.addr, "brick did not answer within ping-timeout; going on without it");
                tokio::spawn(probe(
                    chan,
                    self.suspect.clone(),
                    self.ups.clone(),
                    self.addr.clone(),
                ));
            }
        }
        r.map_err(CallFail::Transport)
    }

    /// Closes the connection (calls in flight finish).
    pub async fn close(&self) {
        if let Some(c) = self.channel() {
            c.close().await;
        }
    }
}

/// Pings a suspect brick until it answers, then lets it back in.
async fn probe(
    chan: Arc<dyn Channel>,
    suspect: Arc<AtomicBool>,
    ups: Arc<AtomicU64>,
    addr: String,
) {
    let mut token = 1u64;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if Arc::strong_count(&suspect) == 1 {
            return;
        }
        token += 1;
        if chan.state() != ConnState::Up {
            continue;
        }
        if let Ok((Response::Pong(_), _)) = chan
            .call(Request::Ping(Ping { token }), Payload::None)
            .await
        {
            tracing::info!(brick = %addr, "brick answers again");
            suspect.store(false, Ordering::Release);
            ups.fetch_add(1, Ordering::AcqRel);
            return;
        }
    }
}

async fn retry(
    link: Weak<BrickLink>,
    addr: String,
    secret: Secret,
    opts: ClientOptions,
    kind: TransportKind,
) {
    let pause = opts.reconnect_min.max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(pause).await;
        if link.strong_count() == 0 {
            return;
        }
        if let Ok(c) = connect_channel(kind, &addr, secret.clone(), opts.clone(), None).await {
            if let Some(l) = link.upgrade() {
                tracing::info!(brick = %addr, "brick reachable again");
                l.install(c);
            }
            return;
        }
    }
}
