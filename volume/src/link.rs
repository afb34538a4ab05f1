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
//! partitioned, or alive but too slow on real work) costs one request
//! timeout (the volume's `ping-timeout`): the first call that times out
//! makes the link *suspect*, it counts as down from then on, and a
//! background probe checks it until it answers again (then it is up, and
//! `ups` moves).
//!
//! The probe lets a brick back in only when a real request answers in
//! time, not a `Ping` alone: a brick can answer `Ping` at once while its
//! records or objects are stuck behind slow disk work, and letting it in
//! then costs the next call another whole timeout. The probe first pings
//! (cheap: is anything there?), then sends a read-only stand-in for the
//! request that timed out, on the same path in the brick: `RecordHead`
//! (query) of the same volume for a record request, `Stat` of the same
//! object for an object request, `Ping` otherwise. Only an answer to that
//! within the transport's timeout re-admits the link.
//!
//! Probes back off: the pause between them doubles after each one that
//! fails (from [`PROBE_MIN`] to [`PROBE_MAX`]), and a link that goes
//! suspect again within [`GOOD_STRETCH`] of being let back in takes a
//! *strike*: its first probe waits [`PROBE_MIN`] × 2^strikes (at most
//! [`STRIKE_MAX`]). A link that stays good for [`GOOD_STRETCH`] has its
//! strikes forgotten. So a brick that flaps costs a number of timeouts that
//! grows with the logarithm of the time, not with the number of calls.
//!
//! It must not judge replies: any answer (an error reply included) is an
//! answer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use transport::wire::{HeadOp, ObjectReq, Ping, RecordHeadReq};
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

/// First pause of a probe (no strikes), and the pause it starts doubling
/// from.
pub const PROBE_MIN: Duration = Duration::from_millis(200);
/// Longest pause between two probes of a link without strikes.
pub const PROBE_MAX: Duration = Duration::from_secs(5);
/// Longest first pause of a link with strikes.
pub const STRIKE_MAX: Duration = Duration::from_secs(60);
/// A link suspect again sooner than this after being let back in takes a
/// strike; one good this long has its strikes forgotten.
pub const GOOD_STRETCH: Duration = Duration::from_secs(60);

/// A link to one brick.
pub struct BrickLink {
    addr: String,
    chan: Mutex<Option<Arc<dyn Channel>>>,
    ups: Arc<AtomicU64>,
    /// A call timed out: treated as down until a probe gets an answer.
    suspect: Arc<AtomicBool>,
    /// When the link was last let back in, and its strikes then.
    history: Arc<Mutex<History>>,
}

/// What the probe remembers of a link's past suspicions.
#[derive(Debug, Default)]
struct History {
    readmitted: Option<Instant>,
    strikes: u32,
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
            history: Arc::default(),
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
            history: Arc::default(),
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
        let stand_in = stand_in(&req);
        let r = chan.clone().call(req, payload).await;
        if let Err(TransportError::Timeout { .. }) = &r {
            if !self.suspect.swap(true, Ordering::AcqRel) {
                let strikes = {
                    let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
                    h.strikes = match h.readmitted {
                        Some(t) if t.elapsed() < GOOD_STRETCH => h.strikes.saturating_add(1),
                        _ => 0,
                    };
                    h.strikes
                };
                tracing::warn!(brick = %self.addr, strikes, "brick did not answer within ping-timeout; going on without it");
                tokio::spawn(probe(Probe {
                    chan,
                    suspect: self.suspect.clone(),
                    ups: self.ups.clone(),
                    history: self.history.clone(),
                    addr: self.addr.clone(),
                    stand_in,
                    strikes,
                }));
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

/// A read-only request that takes the same path in the brick as `req`
/// (see the module doc).
fn stand_in(req: &Request) -> Request {
    let record = |volume| {
        Request::RecordHead(RecordHeadReq {
            volume,
            op: HeadOp::Query,
            ballot: 0,
        })
    };
    let object = |object| Request::Stat(ObjectReq { object });
    match req {
        Request::RecordGet(r) => record(r.volume),
        Request::RecordList(r) => record(r.volume),
        Request::RecordCommit(r) => record(r.volume),
        Request::RecordChanges(r) => record(r.volume),
        Request::RecordHead(r) => record(r.volume),
        Request::RecordSync(r) => record(r.volume),
        Request::Read(r) | Request::ReadBlocks(r) => object(r.object),
        Request::Write(r) => object(r.object),
        Request::Punch(r) | Request::Zero(r) => object(r.object),
        Request::Flush(r) | Request::Stat(r) => object(r.object),
        Request::Remove(r) => object(r.object),
        Request::Lease(r) => object(r.object),
        Request::Marks(r) => object(r.object),
        Request::WriteBlocks(r) => object(r.write.object),
        Request::Verify(r) => object(r.object),
        _ => Request::Ping(Ping { token: 0 }),
    }
}

/// What a probe needs of its link.
struct Probe {
    chan: Arc<dyn Channel>,
    suspect: Arc<AtomicBool>,
    ups: Arc<AtomicU64>,
    history: Arc<Mutex<History>>,
    addr: String,
    stand_in: Request,
    strikes: u32,
}

/// Checks a suspect brick, backing off, until it answers a ping and then
/// the stand-in request in time; then lets it back in.
async fn probe(p: Probe) {
    let mut pause = PROBE_MIN
        .saturating_mul(1u32 << p.strikes.min(16))
        .min(STRIKE_MAX);
    let cap = PROBE_MAX.max(pause);
    let mut token = 1u64;
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(cap);
        if Arc::strong_count(&p.suspect) == 1 {
            return;
        }
        token += 1;
        if p.chan.state() != ConnState::Up {
            continue;
        }
        let Ok((Response::Pong(_), _)) = p
            .chan
            .call(Request::Ping(Ping { token }), Payload::None)
            .await
        else {
            continue;
        };
        // Any answer in time will do (`NotFound` for an object the brick
        // does not hold included); the transport's timeout bounds the wait.
        if p.chan
            .call(p.stand_in.clone(), Payload::None)
            .await
            .is_err()
        {
            tracing::debug!(brick = %p.addr, "brick answers ping but not real requests in time");
            continue;
        }
        tracing::info!(brick = %p.addr, "brick answers again");
        p.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .readmitted = Some(Instant::now());
        p.suspect.store(false, Ordering::Release);
        p.ups.fetch_add(1, Ordering::AcqRel);
        return;
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
