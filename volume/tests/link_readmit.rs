//! Re-admission of a suspect brick link (`volume::link`), over a channel
//! that answers `Ping` at once but is late on real requests (a brick whose
//! request queue is stuck behind slow disk work). Time is paused: every
//! timeout is counted, none is waited for, and the counts do not depend on
//! the machine's speed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use transport::wire::{ObjectId, ObjectReq, Ping, RecordGetReq};
use transport::{
    BoxFuture, Channel, ConnState, ErrorCode, ErrorReply, Payload, Request, Response,
    TransportError,
};
use volume::link::{BrickLink, CallFail};

/// The transport's request timeout (the volume's `ping-timeout`).
const TIMEOUT: Duration = Duration::from_secs(10);

/// A brick as a channel: requests `late` picks get no reply within
/// [`TIMEOUT`] while `slow` is set; everything else is answered at once
/// (`Pong`, or a `NotFound` error reply: an answer all the same).
struct LateBrick {
    slow: AtomicBool,
    late: fn(&Request) -> bool,
    pings: AtomicU64,
    state: watch::Sender<ConnState>,
}

impl LateBrick {
    fn new(late: fn(&Request) -> bool) -> Arc<LateBrick> {
        Arc::new(LateBrick {
            slow: AtomicBool::new(false),
            late,
            pings: AtomicU64::new(0),
            state: watch::channel(ConnState::Up).0,
        })
    }
}

impl Channel for LateBrick {
    fn call(
        &self,
        req: Request,
        payload: Payload,
    ) -> BoxFuture<'_, Result<(Response, Payload), TransportError>> {
        Box::pin(async move {
            if let Request::Ping(_) = req {
                self.pings.fetch_add(1, Ordering::Relaxed);
            }
            if self.slow.load(Ordering::Acquire) && (self.late)(&req) {
                tokio::time::sleep(TIMEOUT).await;
                return Err(TransportError::Timeout {
                    opcode: req.opcode(),
                    request_id: 0,
                    secs: TIMEOUT.as_secs_f64(),
                });
            }
            let resp = match req {
                Request::Ping(p) => Response::Pong(p),
                _ => Response::Error(ErrorReply::new(ErrorCode::NotFound, "no such object")),
            };
            Ok((resp, payload))
        })
    }

    fn state(&self) -> ConnState {
        *self.state.borrow()
    }

    fn watch_state(&self) -> watch::Receiver<ConnState> {
        self.state.subscribe()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn object() -> ObjectId {
    ObjectId {
        volume: 1,
        vnode: 2,
        unique: 3,
        chunk: 0,
    }
}

/// The real work: alternately a record read and an object flush.
fn work(i: u64) -> Request {
    if i % 2 == 0 {
        Request::RecordGet(RecordGetReq {
            volume: 1,
            key: b"k".to_vec(),
        })
    } else {
        Request::Flush(ObjectReq { object: object() })
    }
}

/// What `n` calls, one a second, cost: (timeouts, calls refused as down,
/// calls answered).
async fn calls(link: &BrickLink, n: u64) -> (u64, u64, u64) {
    let (mut timeouts, mut down, mut answered) = (0, 0, 0);
    for i in 0..n {
        match link.call(work(i), Payload::None).await {
            Ok(_) => answered += 1,
            Err(CallFail::Down) => down += 1,
            Err(CallFail::Transport(TransportError::Timeout { .. })) => timeouts += 1,
            Err(CallFail::Transport(e)) => panic!("unexpected transport error {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    (timeouts, down, answered)
}

/// Waits (in paused time) until the link is up again.
async fn readmitted(link: &BrickLink) -> bool {
    for _ in 0..1200 {
        if link.is_up() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn all_but_ping(req: &Request) -> bool {
    !matches!(req, Request::Ping(_))
}

fn everything(_: &Request) -> bool {
    true
}

/// Late on every real request but quick to pong: the first call times
/// out, and the link stays out (its probes ping, then ask a real request
/// that is late too) instead of being let in to time out again on every
/// call. Once the brick is quick again, a probe lets it back in.
#[tokio::test(start_paused = true)]
async fn a_brick_that_pongs_but_is_late_on_real_work_costs_one_timeout() {
    let brick = LateBrick::new(all_but_ping);
    let link = BrickLink::with_channel("late:1", brick.clone() as Arc<dyn Channel>);
    brick.slow.store(true, Ordering::Release);
    let (timeouts, down, answered) = calls(&link, 300).await;
    assert_eq!((timeouts, down, answered), (1, 299, 0));
    assert!(
        brick.pings.load(Ordering::Relaxed) >= 2,
        "the link was probed"
    );
    brick.slow.store(false, Ordering::Release);
    assert!(readmitted(&link).await, "a quick brick is let back in");
    assert!(matches!(
        link.call(Request::Ping(Ping { token: 7 }), Payload::None)
            .await,
        Ok((Response::Pong(_), _))
    ));
    let (timeouts, _, answered) = calls(&link, 10).await;
    assert_eq!((timeouts, answered), (0, 10));
}

/// A hung brick (nothing answers, as SIGSTOP leaves it): one timeout, then
/// back in once it answers again.
#[tokio::test(start_paused = true)]
async fn a_hung_brick_costs_one_timeout_and_comes_back() {
    let brick = LateBrick::new(everything);
    let link = BrickLink::with_channel("hung:1", brick.clone() as Arc<dyn Channel>);
    brick.slow.store(true, Ordering::Release);
    let (timeouts, down, _) = calls(&link, 100).await;
    assert_eq!((timeouts, down), (1, 99));
    brick.slow.store(false, Ordering::Release);
    assert!(readmitted(&link).await, "the brick is let back in");
    assert_eq!(calls(&link, 5).await, (0, 0, 5));
}

/// A brick quick on the probe's stand-in (`Stat`) but late on flushes: it
/// is let back in and times out again, so it flaps. The probes back off
/// (strikes), so 600 calls cost a bounded handful of timeouts, not one
/// every other call.
#[tokio::test(start_paused = true)]
async fn a_flapping_brick_backs_off() {
    fn flushes(req: &Request) -> bool {
        matches!(req, Request::Flush(_))
    }
    let brick = LateBrick::new(flushes);
    let link = BrickLink::with_channel("flaps:1", brick.clone() as Arc<dyn Channel>);
    brick.slow.store(true, Ordering::Release);
    let (timeouts, _, answered) = calls(&link, 600).await;
    // Each timeout costs 10 s; strikes double the wait before the next
    // probe from 0.2 s up to 60 s: nine strikes (about 200 s) to reach the
    // cap, then one timeout every 70 s or so (17 in these 770 s). Let in
    // at once after each pong, it would time out on every flush: 300.
    assert!(
        (2..=20).contains(&timeouts),
        "{timeouts} timeouts in 600 calls"
    );
    assert!(answered > 0, "let back in between timeouts");
    // Quick again: after a stretch of good behaviour the strikes are
    // forgotten, and a later timeout waits the shortest pause again.
    brick.slow.store(false, Ordering::Release);
    assert!(readmitted(&link).await);
    let (timeouts, _, answered) = calls(&link, 120).await;
    assert_eq!((timeouts, answered), (0, 120));
    brick.slow.store(true, Ordering::Release);
    assert!(matches!(
        link.call(work(1), Payload::None).await,
        Err(CallFail::Transport(TransportError::Timeout { .. }))
    ));
    brick.slow.store(false, Ordering::Release);
    let before = tokio::time::Instant::now();
    assert!(readmitted(&link).await);
    assert!(
        before.elapsed() <= Duration::from_secs(2),
        "no strikes left: the first probe comes after {:?}",
        before.elapsed()
    );
}
