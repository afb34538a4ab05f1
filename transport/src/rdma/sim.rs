//! A SIMULATION of RDMA verbs, in process, for tests on machines without an
//! RDMA device. It is not a transport: both ends live in one process and
//! "the wire" is a mutex.
//!
//! It models what the protocol engine depends on: reliable-connected queue
//! pairs (SEND consumes the peer's next posted receive, in order), a
//! completion queue per queue pair, memory regions with local and remote key
//! and bounds checks, one-sided READ/WRITE that copy between registered
//! regions, the error state (a failed work request breaks both ends and
//! flushes what was posted), and a completion channel to block on. Faults
//! can be injected: the next work request of a kind fails with a given
//! status, a link breaks, connections are refused, and completions from the
//! send and receive queues are handed out in a seeded random order.
//!
//! A SEND with no receive posted on the peer is counted
//! ([`SimFabric::rnr_events`]) and fails the queue pair: with correct
//! credit-based flow control it never happens.

use super::verbs::{
    Completion, CqWaiter, Fabric, Listener, MemoryRegion, RemoteRef, Sge, Verbs, VerbsError,
    WcStatus, WorkKind,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Simulation settings.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// Seed for reordering.
    pub seed: u64,
    /// Hand out completions in a random order (receives stay in order, as
    /// on a real RC queue pair).
    pub reorder: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            reorder: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QpState {
    Ready,
    Error,
}

struct Ep {
    peer: usize,
    state: QpState,
    recvs: VecDeque<(u64, Sge)>,
    cq: Vec<Completion>,
}

struct Region {
    owner: usize,
    mr: MemoryRegion,
    valid: bool,
}

struct Inner {
    cfg: SimConfig,
    rng: StdRng,
    eps: Vec<Ep>,
    regions: Vec<Region>,
    listeners: HashMap<String, VecDeque<(usize, String)>>,
    next_port: u16,
    fail_next: Vec<(WorkKind, WcStatus)>,
    refuse: bool,
    rnr: u64,
    one_sided_bytes: u64,
}

/// The simulated fabric: every simulated device, queue pair and region.
/// Clones share it.
#[derive(Clone)]
pub struct SimFabric {
    shared: Arc<(Mutex<Inner>, Condvar)>,
}

impl SimFabric {
    pub fn new(cfg: SimConfig) -> SimFabric {
        SimFabric {
            shared: Arc::new((
                Mutex::new(Inner {
                    cfg,
                    rng: StdRng::seed_from_u64(cfg.seed),
                    eps: Vec::new(),
                    regions: Vec::new(),
                    listeners: HashMap::new(),
                    next_port: 40000,
                    fail_next: Vec::new(),
                    refuse: false,
                    rnr: 0,
                    one_sided_bytes: 0,
                }),
                Condvar::new(),
            )),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.shared.1.notify_all();
    }

    /// The next work request of `kind` (on any queue pair) completes with
    /// `status`, which breaks its queue pair as on real hardware.
    pub fn fail_next(&self, kind: WorkKind, status: WcStatus) {
        self.lock().fail_next.push((kind, status));
    }

    /// Breaks every live queue pair (a link or switch failure).
    pub fn break_all(&self) {
        let mut g = self.lock();
        for ep in 0..g.eps.len() {
            g.break_pair(ep, WcStatus::RetryExceeded);
        }
        drop(g);
        self.notify();
    }

    /// Refuse (or accept again) new connections.
    pub fn refuse_connections(&self, refuse: bool) {
        self.lock().refuse = refuse;
    }

    /// Turns completion reordering on or off.
    pub fn set_reorder(&self, reorder: bool) {
        self.lock().cfg.reorder = reorder;
    }

    /// SENDs that found no receive posted (a flow-control bug).
    pub fn rnr_events(&self) -> u64 {
        self.lock().rnr
    }

    /// Bytes moved by one-sided READ and WRITE.
    pub fn one_sided_bytes(&self) -> u64 {
        self.lock().one_sided_bytes
    }

    /// A connected pair of queue pairs, without listeners (for engine tests).
    pub fn pair(&self) -> (SimQp, SimQp) {
        let mut g = self.lock();
        let a = g.eps.len();
        let b = a + 1;
        g.eps.push(Ep::new(b));
        g.eps.push(Ep::new(a));
        drop(g);
        (
            SimQp {
                fabric: self.clone(),
                ep: a,
            },
            SimQp {
                fabric: self.clone(),
                ep: b,
            },
        )
    }
}

impl Ep {
    fn new(peer: usize) -> Ep {
        Ep {
            peer,
            state: QpState::Ready,
            recvs: VecDeque::new(),
            cq: Vec::new(),
        }
    }
}

impl Inner {
    /// Both ends of a queue pair to the error state; posted receives flush.
    fn break_pair(&mut self, ep: usize, _why: WcStatus) {
        let peer = self.eps[ep].peer;
        for e in [ep, peer] {
            if self.eps[e].state == QpState::Error {
                continue;
            }
            self.eps[e].state = QpState::Error;
            let flushed: Vec<(u64, Sge)> = self.eps[e].recvs.drain(..).collect();
            for (wr_id, _) in flushed {
                self.eps[e].cq.push(Completion {
                    wr_id,
                    kind: WorkKind::Recv,
                    status: WcStatus::Flushed,
                    byte_len: 0,
                });
            }
        }
    }

    fn take_fault(&mut self, kind: WorkKind) -> Option<WcStatus> {
        let i = self.fail_next.iter().position(|(k, _)| *k == kind)?;
        Some(self.fail_next.remove(i).1)
    }

    fn local_ok(&self, ep: usize, sge: &Sge) -> bool {
        self.regions.iter().any(|r| {
            r.valid
                && r.owner == ep
                && r.mr.lkey == sge.lkey
                && r.mr.contains(sge.addr, sge.len as u64)
        })
    }

    fn remote_ok(&self, ep: usize, remote: &RemoteRef) -> bool {
        self.regions.iter().any(|r| {
            r.valid
                && r.owner == ep
                && r.mr.rkey == remote.rkey
                && r.mr.contains(remote.addr, remote.len as u64)
        })
    }

    fn complete(&mut self, ep: usize, wr_id: u64, kind: WorkKind, status: WcStatus, byte_len: u32) {
        self.eps[ep].cq.push(Completion {
            wr_id,
            kind,
            status,
            byte_len,
        });
        if status != WcStatus::Success {
            self.break_pair(ep, status);
        }
    }
}

/// One simulated queue pair.
pub struct SimQp {
    fabric: SimFabric,
    ep: usize,
}

impl SimQp {
    /// Breaks this queue pair and its peer (as a lost link would).
    pub fn break_link(&self) {
        self.fabric
            .lock()
            .break_pair(self.ep, WcStatus::RetryExceeded);
        self.fabric.notify();
    }
}

/// Copies `len` bytes between two registered ranges.
///
/// # Safety
/// Both ranges must lie in live registered regions (checked by the caller
/// against the region table), and the memory must not be borrowed as a
/// Rust reference elsewhere right now, which `Verbs::register`'s contract
/// guarantees for memory the engine has posted work on.
unsafe fn copy(src: u64, dst: u64, len: usize) {
    // SAFETY: per this function's contract; `ptr::copy` tolerates overlap.
    unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, len) }
}

impl Verbs for SimQp {
    unsafe fn register(&mut self, addr: *mut u8, len: usize) -> Result<MemoryRegion, VerbsError> {
        let mut g = self.fabric.lock();
        let n = g.regions.len() as u32 + 1;
        // Keys look random but are unique: a stale or guessed key fails.
        let salt: u32 = g.rng.gen::<u32>() & 0xff;
        let mr = MemoryRegion {
            addr: addr as u64,
            len: len as u64,
            lkey: (n << 8) | salt,
            rkey: (n << 8) | (salt ^ 0x5a),
        };
        g.regions.push(Region {
            owner: self.ep,
            mr,
            valid: true,
        });
        Ok(mr)
    }

    fn post_recv(&mut self, wr_id: u64, sge: Sge) -> Result<(), VerbsError> {
        let mut g = self.fabric.lock();
        let ep = self.ep;
        if g.eps[ep].state == QpState::Error {
            g.complete(ep, wr_id, WorkKind::Recv, WcStatus::Flushed, 0);
        } else if !g.local_ok(ep, &sge) {
            g.complete(ep, wr_id, WorkKind::Recv, WcStatus::LocalProtection, 0);
        } else {
            g.eps[ep].recvs.push_back((wr_id, sge));
        }
        drop(g);
        self.fabric.notify();
        Ok(())
    }

    fn post_send(&mut self, wr_id: u64, sge: Sge) -> Result<(), VerbsError> {
        let mut g = self.fabric.lock();
        let ep = self.ep;
        let peer = g.eps[ep].peer;
        if g.eps[ep].state == QpState::Error {
            g.complete(ep, wr_id, WorkKind::Send, WcStatus::Flushed, 0);
        } else if let Some(status) = g.take_fault(WorkKind::Send) {
            g.complete(ep, wr_id, WorkKind::Send, status, 0);
        } else if !g.local_ok(ep, &sge) {
            g.complete(ep, wr_id, WorkKind::Send, WcStatus::LocalProtection, 0);
        } else {
            match g.eps[peer].recvs.pop_front() {
                None => {
                    g.rnr += 1;
                    g.complete(ep, wr_id, WorkKind::Send, WcStatus::ReceiverNotReady, 0);
                }
                Some((rwr, rsge)) if rsge.len < sge.len => {
                    g.complete(peer, rwr, WorkKind::Recv, WcStatus::LocalLength, 0);
                    g.complete(ep, wr_id, WorkKind::Send, WcStatus::Other(9), 0);
                }
                Some((rwr, rsge)) => {
                    // SAFETY: both ranges were checked against live regions
                    // (the receive when posted, the send just now) and are
                    // owned by posted work requests.
                    unsafe { copy(sge.addr, rsge.addr, sge.len as usize) };
                    g.complete(peer, rwr, WorkKind::Recv, WcStatus::Success, sge.len);
                    g.complete(ep, wr_id, WorkKind::Send, WcStatus::Success, 0);
                }
            }
        }
        drop(g);
        self.fabric.notify();
        Ok(())
    }

    fn post_read(&mut self, wr_id: u64, local: Sge, remote: RemoteRef) -> Result<(), VerbsError> {
        self.one_sided(wr_id, local, remote, WorkKind::RdmaRead)
    }

    fn post_write(&mut self, wr_id: u64, local: Sge, remote: RemoteRef) -> Result<(), VerbsError> {
        self.one_sided(wr_id, local, remote, WorkKind::RdmaWrite)
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        let mut g = self.fabric.lock();
        let ep = self.ep;
        let n = g.eps[ep].cq.len().min(max);
        let mut batch: Vec<Completion> = g.eps[ep].cq.drain(..n).collect();
        if g.cfg.reorder && batch.len() > 1 {
            // Shuffle, then put the receives back in their own order: a real
            // RC queue pair never reorders its receives, but completions of
            // different queues interleave arbitrarily.
            let recvs: Vec<Completion> = batch
                .iter()
                .copied()
                .filter(|c| c.kind == WorkKind::Recv)
                .collect();
            for i in (1..batch.len()).rev() {
                let j = g.rng.gen_range(0..=i);
                batch.swap(i, j);
            }
            let mut r = recvs.into_iter();
            for c in batch.iter_mut() {
                if c.kind == WorkKind::Recv {
                    if let Some(next) = r.next() {
                        *c = next;
                    }
                }
            }
        }
        out.extend_from_slice(&batch);
        Ok(n)
    }

    fn arm(&mut self) -> Result<(), VerbsError> {
        Ok(())
    }

    fn waiter(&self) -> Box<dyn CqWaiter> {
        Box::new(SimWaiter {
            fabric: self.fabric.clone(),
            ep: self.ep,
        })
    }

    fn disconnect(&mut self) {
        self.fabric.lock().break_pair(self.ep, WcStatus::Flushed);
        self.fabric.notify();
    }
}

impl SimQp {
    fn one_sided(
        &mut self,
        wr_id: u64,
        local: Sge,
        remote: RemoteRef,
        kind: WorkKind,
    ) -> Result<(), VerbsError> {
        let mut g = self.fabric.lock();
        let ep = self.ep;
        let peer = g.eps[ep].peer;
        if g.eps[ep].state == QpState::Error {
            g.complete(ep, wr_id, kind, WcStatus::Flushed, 0);
        } else if let Some(status) = g.take_fault(kind) {
            g.complete(ep, wr_id, kind, status, 0);
        } else if !g.local_ok(ep, &local) || local.len != remote.len {
            g.complete(ep, wr_id, kind, WcStatus::LocalProtection, 0);
        } else if !g.remote_ok(peer, &remote) {
            g.complete(ep, wr_id, kind, WcStatus::RemoteAccess, 0);
        } else {
            let (src, dst) = match kind {
                WorkKind::RdmaRead => (remote.addr, local.addr),
                _ => (local.addr, remote.addr),
            };
            // SAFETY: both ranges were checked against live registered
            // regions of the right owners just now.
            unsafe { copy(src, dst, local.len as usize) };
            g.one_sided_bytes += local.len as u64;
            g.complete(ep, wr_id, kind, WcStatus::Success, local.len);
        }
        drop(g);
        self.fabric.notify();
        Ok(())
    }
}

impl Drop for SimQp {
    fn drop(&mut self) {
        let mut g = self.fabric.lock();
        g.break_pair(self.ep, WcStatus::Flushed);
        let ep = self.ep;
        for r in g.regions.iter_mut().filter(|r| r.owner == ep) {
            r.valid = false;
        }
        drop(g);
        self.fabric.notify();
    }
}

struct SimWaiter {
    fabric: SimFabric,
    ep: usize,
}

impl CqWaiter for SimWaiter {
    fn wait(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut g = self.fabric.lock();
        while g.eps[self.ep].cq.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            g = self
                .fabric
                .shared
                .1
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Fabric for SimFabric {
    fn connect(&self, addr: &str, _timeout: Duration) -> Result<Box<dyn Verbs>, VerbsError> {
        let mut g = self.lock();
        if g.refuse || !g.listeners.contains_key(addr) {
            return Err(VerbsError::Failed {
                op: "rdma_connect (simulated)",
                reason: format!("no simulated listener at {addr} (connection refused)"),
            });
        }
        let a = g.eps.len();
        let b = a + 1;
        g.eps.push(Ep::new(b));
        g.eps.push(Ep::new(a));
        let peer = format!("sim-client-{a}");
        if let Some(q) = g.listeners.get_mut(addr) {
            q.push_back((b, peer));
        }
        drop(g);
        self.notify();
        Ok(Box::new(SimQp {
            fabric: self.clone(),
            ep: a,
        }))
    }

    fn listen(&self, addr: &str) -> Result<Box<dyn Listener>, VerbsError> {
        let mut g = self.lock();
        let addr = match addr.rsplit_once(':') {
            Some((host, "0")) => {
                g.next_port += 1;
                format!("{host}:{}", g.next_port)
            }
            _ => addr.to_string(),
        };
        if g.listeners.contains_key(&addr) {
            return Err(VerbsError::Failed {
                op: "rdma_bind_addr (simulated)",
                reason: format!("{addr} is in use"),
            });
        }
        g.listeners.insert(addr.clone(), VecDeque::new());
        Ok(Box::new(SimListener {
            fabric: self.clone(),
            addr,
        }))
    }

    fn name(&self) -> String {
        "simulated verbs".into()
    }
}

struct SimListener {
    fabric: SimFabric,
    addr: String,
}

impl Listener for SimListener {
    fn accept(&mut self, timeout: Duration) -> Result<Option<super::verbs::Accepted>, VerbsError> {
        let deadline = Instant::now() + timeout;
        let mut g = self.fabric.lock();
        loop {
            if let Some((ep, peer)) = g.listeners.get_mut(&self.addr).and_then(|q| q.pop_front()) {
                return Ok(Some((
                    Box::new(SimQp {
                        fabric: self.fabric.clone(),
                        ep,
                    }),
                    peer,
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            g = self
                .fabric
                .shared
                .1
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn local_addr(&self) -> String {
        self.addr.clone()
    }
}

impl Drop for SimListener {
    fn drop(&mut self) {
        self.fabric.lock().listeners.remove(&self.addr);
    }
}
