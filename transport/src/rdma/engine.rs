//! The RDMA protocol engine, written once against [`Verbs`].
//!
//! It owns one connected queue pair and does everything above raw verbs:
//! credit-based flow control for SEND/RECV, the registered control slots and
//! data buffers, request/reply matching, one-sided READ/WRITE bookkeeping,
//! timeouts and QP error handling. It is synchronous and knows nothing of
//! threads or futures: callers post work, call [`Engine::poll`] and act on
//! the [`Event`]s it returns (the async driver in `rdma::conn` does that, and
//! so do the unit tests on the simulation).
//!
//! Credits: each side posts `window` receives up front and may SEND only
//! into receives the peer has posted. The two sides need not agree on
//! `window`: a side starts with [`INITIAL_CREDITS`] credits (every engine
//! posts at least that many receives before it can send or be sent to) and
//! owes its peer the rest of its own window, which rides on its first
//! message. It spends one credit per SEND and learns of receives the peer
//! posted (again) from the `credits` field of every envelope it gets. The
//! last credit is kept for a credit-only message, which a side sends once
//! it has heard from its peer (so the peer's receives are surely posted)
//! and owes at least half its window: two sides that each hold credits owed
//! to the other can never both be stuck, and a receiver never sees a SEND
//! without a posted receive (no receiver-not-ready retries).
//!
//! Why not start with the peer's window: the engine does not know it, and
//! assuming it equal to its own deadlocks a pair with different windows
//! (a side whose peer owes it fewer than half the peer's window credits,
//! but more than it can spend, waits forever) or overruns the smaller one.

use super::envelope::{Envelope, ENV_LEN};
use super::verbs::{
    Completion, MemoryRegion, RemoteRef, Sge, Verbs, VerbsError, WcStatus, WorkKind,
};
use crate::channel::{check_payload, Payload};
use crate::error::TransportError;
use crate::wire::{
    encode_request, encode_response, DataRef, ErrorCode, FrameDecoder, Limits, Opcode, Request,
    Response, HEADER_LEN, MAX_BODY,
};
use iobuf::{BufPool, IoBuf};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Credits a side may spend before its peer's first envelope: the fewest
/// receives any engine posts (`window` is clamped to at least this).
pub const INITIAL_CREDITS: u32 = 2;

/// Engine tuning. The two ends of a connection may differ (see the module
/// comment on credits).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Receives posted per side (the peer's initial credits).
    pub window: u16,
    /// Bytes per control slot (envelope + header + body).
    pub slot_size: usize,
    /// Size of each registered data buffer (the largest one-sided transfer).
    pub data_buf_size: usize,
    /// Number of registered data buffers.
    pub data_bufs: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            window: 32,
            slot_size: ENV_LEN + HEADER_LEN + MAX_BODY as usize,
            data_buf_size: 2 * 1024 * 1024,
            data_bufs: 8,
        }
    }
}

/// Which end of the connection the engine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// What happened, for the driver to act on.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // short-lived, drained at once
pub enum Event {
    /// Client: a call finished (or failed, or timed out).
    Reply {
        request_id: u64,
        result: Result<(Response, Payload), TransportError>,
    },
    /// Server: a request arrived (its `DataRef` names the caller's buffer).
    Request { request_id: u64, req: Request },
    /// A one-sided operation finished. For a READ, `buf` holds the data.
    OneSided {
        token: u64,
        buf: Option<IoBuf>,
        result: Result<(), TransportError>,
    },
    /// The queue pair failed; everything in flight has been failed too.
    Failed { reason: String },
}

const WR_KIND_SHIFT: u32 = 60;
const WR_RECV: u64 = 1;
const WR_SEND: u64 = 2;
const WR_ONESIDED: u64 = 3;

fn wr_id(kind: u64, n: u64) -> u64 {
    (kind << WR_KIND_SHIFT) | (n & ((1 << WR_KIND_SHIFT) - 1))
}

struct Call {
    opcode: Opcode,
    payload: Payload,
    /// A registered buffer standing in for an unregistered caller buffer.
    bounce: Option<IoBuf>,
    deadline: Instant,
    /// The caller was told of a timeout; the entry stays (with its buffers,
    /// which the peer may still access) until the reply or the teardown.
    expired: bool,
}

struct WaitingCall {
    request_id: u64,
    req: Request,
    payload: Payload,
    deadline: Instant,
}

enum OneSidedKind {
    Read { len: u32 },
    Write { buf: IoBuf },
}

struct WaitingOp {
    token: u64,
    kind: OneSidedKind,
    remote: RemoteRef,
}

struct InFlightOp {
    token: u64,
    buf: IoBuf,
    is_read: bool,
}

/// Counters for tests and stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    pub sends: u64,
    pub credit_updates: u64,
    pub recvs: u64,
    pub reads: u64,
    pub writes: u64,
    pub bounced: u64,
    /// Most frames ever waiting for credits or send slots.
    pub max_backlog: usize,
}

/// One queue pair's protocol state.
pub struct Engine<V: Verbs> {
    verbs: V,
    role: Role,
    cfg: EngineConfig,
    peer: String,
    /// Control slots: `window` receive slots, then `window + 1` send slots.
    /// Owned here; touched only through raw pointers to one slot at a time
    /// (the device writes receive slots whenever a receive is posted).
    _ctrl: IoBuf,
    ctrl_base: *mut u8,
    ctrl_mr: MemoryRegion,
    data: BufPool,
    /// Registered regions: the data pool and any pool the caller added.
    regions: Vec<MemoryRegion>,
    free_send: Vec<u32>,
    /// SENDs the peer has receives posted for (see the module comment).
    credits: u32,
    /// Receives posted that the peer has not been told of yet.
    owed: u32,
    /// A message from the peer arrived: its receives are posted, so a
    /// credit-only message may go.
    heard: bool,
    backlog: VecDeque<Vec<u8>>,
    calls: HashMap<u64, Call>,
    waiting_calls: VecDeque<WaitingCall>,
    ops: HashMap<u64, InFlightOp>,
    waiting_ops: VecDeque<WaitingOp>,
    next_op: u64,
    failed: Option<String>,
    completions: Vec<Completion>,
    stats: EngineStats,
}

// SAFETY: `ctrl_base` points into `_ctrl`, which the engine owns and moves
// with it; nothing else holds the pointer, so sending the engine to another
// thread sends sole access to that memory with it.
unsafe impl<V: Verbs> Send for Engine<V> {}

impl<V: Verbs> Engine<V> {
    /// Registers the control slots and the data pool (once, for the life of
    /// the queue pair) and posts every receive.
    pub fn new(
        mut verbs: V,
        role: Role,
        cfg: EngineConfig,
        peer: String,
    ) -> Result<Self, VerbsError> {
        let window = cfg.window.max(INITIAL_CREDITS as u16) as usize;
        let slots = 2 * window + 1;
        let slot_size = cfg.slot_size.max(ENV_LEN + HEADER_LEN);
        let cfg = EngineConfig {
            window: window as u16,
            slot_size,
            ..cfg
        };
        let mut ctrl = IoBuf::alloc(slots * slot_size);
        let ctrl_base = ctrl.as_mut_ptr();
        // SAFETY: `ctrl` lives as long as the engine (a field), and is never
        // read or written through a reference spanning a slot the device
        // owns: the engine touches one slot at a time, only after its
        // completion, through raw pointers.
        let ctrl_mr = unsafe { verbs.register(ctrl_base, slots * slot_size)? };
        let data = BufPool::new(cfg.data_buf_size, cfg.data_bufs.max(1));
        let (base, _) = data.iovecs()[0];
        let total = data.buf_size() * data.count();
        // SAFETY: the pool's one allocation lives while any clone of the pool
        // lives, and the engine keeps a clone; the device touches a buffer
        // only while the engine holds it for a posted operation.
        let data_mr = unsafe { verbs.register(base, total)? };
        let mut engine = Engine {
            verbs,
            role,
            peer,
            _ctrl: ctrl,
            ctrl_base,
            ctrl_mr,
            data,
            regions: vec![data_mr],
            free_send: (0..(window as u32 + 1)).rev().collect(),
            credits: INITIAL_CREDITS,
            owed: window as u32 - INITIAL_CREDITS,
            heard: false,
            backlog: VecDeque::new(),
            calls: HashMap::new(),
            waiting_calls: VecDeque::new(),
            ops: HashMap::new(),
            waiting_ops: VecDeque::new(),
            next_op: 1,
            failed: None,
            completions: Vec::with_capacity(64),
            stats: EngineStats::default(),
            cfg,
        };
        for slot in 0..window as u32 {
            engine.post_recv_slot(slot)?;
        }
        Ok(engine)
    }

    /// Registers a caller's buffer pool too, so its buffers travel without a
    /// copy (once per pool).
    pub fn register_pool(&mut self, pool: &BufPool) -> Result<(), VerbsError> {
        let (base, _) = pool.iovecs()[0];
        let total = pool.buf_size() * pool.count();
        if self.regions.iter().any(|r| r.addr == base as u64) {
            return Ok(());
        }
        // SAFETY: the caller keeps the pool alive for the engine's life (the
        // driver holds a clone); its buffers are touched by the device only
        // while a posted operation owns them.
        let mr = unsafe { self.verbs.register(base, total)? };
        self.regions.push(mr);
        Ok(())
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }
    pub fn credits(&self) -> u32 {
        self.credits
    }
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }
    /// True when no call, operation or frame is outstanding.
    pub fn is_idle(&self) -> bool {
        self.calls.is_empty()
            && self.waiting_calls.is_empty()
            && self.ops.is_empty()
            && self.waiting_ops.is_empty()
            && self.backlog.is_empty()
    }
    pub fn verbs_mut(&mut self) -> &mut V {
        &mut self.verbs
    }
    pub fn waiter(&self) -> Box<dyn super::verbs::CqWaiter> {
        self.verbs.waiter()
    }
    pub fn arm(&mut self) -> Result<(), VerbsError> {
        self.verbs.arm()
    }

    fn slot_ptr(&self, slot: u32) -> *mut u8 {
        // SAFETY: callers pass `slot < 2 * window + 1`, so the offset stays
        // inside the control allocation of that many slots.
        unsafe { self.ctrl_base.add(slot as usize * self.cfg.slot_size) }
    }

    fn slot_sge(&self, slot: u32, len: usize) -> Sge {
        Sge {
            addr: self.slot_ptr(slot) as u64,
            len: len as u32,
            lkey: self.ctrl_mr.lkey,
        }
    }

    fn post_recv_slot(&mut self, slot: u32) -> Result<(), VerbsError> {
        let sge = self.slot_sge(slot, self.cfg.slot_size);
        self.verbs.post_recv(wr_id(WR_RECV, slot as u64), sge)
    }

    fn region_of(&self, addr: u64, len: u64) -> Option<MemoryRegion> {
        self.regions.iter().copied().find(|r| r.contains(addr, len))
    }

    fn lost(&self, opcode: Opcode, request_id: u64) -> TransportError {
        TransportError::ConnectionLost {
            opcode,
            request_id,
            peer: self.peer.clone(),
        }
    }

    /// The largest frame a slot holds.
    pub fn max_frame(&self) -> usize {
        self.cfg.slot_size - ENV_LEN
    }

    // ---- client ----

    /// Starts a call. `Err` hands the payload back with the reason; a call
    /// that waits for a free data buffer is queued and returns `Ok`.
    pub fn call(
        &mut self,
        request_id: u64,
        req: Request,
        payload: Payload,
        deadline: Instant,
    ) -> Result<(), (TransportError, Payload)> {
        let opcode = req.opcode();
        if self.failed.is_some() {
            return Err((self.lost(opcode, request_id), payload));
        }
        if let Err(e) = check_payload(&req, &payload) {
            return Err((e, payload));
        }
        let call = WaitingCall {
            request_id,
            req,
            payload,
            deadline,
        };
        if !self.waiting_calls.is_empty() {
            // Keep calls in order behind one waiting for a buffer.
            self.waiting_calls.push_back(call);
            return Ok(());
        }
        match self.start_call(call) {
            Ok(None) => Ok(()),
            Ok(Some(waiting)) => {
                self.waiting_calls.push_back(waiting);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Sends a call, or gives it back when it needs a data buffer and none
    /// is free.
    fn start_call(
        &mut self,
        w: WaitingCall,
    ) -> Result<Option<WaitingCall>, (TransportError, Payload)> {
        let WaitingCall {
            request_id,
            mut req,
            payload,
            deadline,
        } = w;
        let opcode = req.opcode();
        let mut bounce = None;
        let remote = match &payload {
            Payload::None => None,
            Payload::Out(b) | Payload::In(b) => {
                let len = match (&req, &payload) {
                    (Request::Read(r) | Request::ReadBlocks(r), _) => r.len,
                    _ => b.len() as u32,
                };
                let addr = b.as_ptr() as u64;
                match self.region_of(addr, b.capacity() as u64) {
                    Some(mr) => Some(DataRef::Remote {
                        addr,
                        len,
                        rkey: mr.rkey,
                    }),
                    None => {
                        if len as usize > self.data.buf_size() {
                            let e = TransportError::BadCall {
                                opcode,
                                reason: format!(
                                    "{len} bytes are over the RDMA transfer limit of {} (a registered data buffer)",
                                    self.data.buf_size()
                                ),
                            };
                            return Err((e, payload));
                        }
                        let Some(mut tmp) = self.data.try_take() else {
                            return Ok(Some(WaitingCall {
                                request_id,
                                req,
                                payload,
                                deadline,
                            }));
                        };
                        if let Payload::Out(src) = &payload {
                            tmp.set_len(src.len());
                            tmp.as_mut_slice().copy_from_slice(src.as_slice());
                        }
                        self.stats.bounced += 1;
                        let addr = tmp.as_ptr() as u64;
                        bounce = Some(tmp);
                        Some(DataRef::Remote {
                            addr,
                            len,
                            rkey: self.regions[0].rkey,
                        })
                    }
                }
            }
        };
        if let (Some(r), Some(slot)) = (remote, req.data_ref_mut()) {
            *slot = r;
        }
        let frame = encode_request(request_id, &req);
        if frame.len() > self.max_frame() {
            let e = TransportError::BadCall {
                opcode,
                reason: format!(
                    "request of {} bytes does not fit an RDMA control slot of {}",
                    frame.len(),
                    self.max_frame()
                ),
            };
            return Err((e, payload));
        }
        self.calls.insert(
            request_id,
            Call {
                opcode,
                payload,
                bounce,
                deadline,
                expired: false,
            },
        );
        self.backlog.push_back(frame);
        Ok(None)
    }

    fn start_waiting_calls(&mut self, events: &mut Vec<Event>) {
        while let Some(w) = self.waiting_calls.pop_front() {
            match self.start_call(w) {
                Ok(None) => {}
                Ok(Some(w)) => {
                    self.waiting_calls.push_front(w);
                    break;
                }
                Err((e, _payload)) => {
                    // Only the size check can fail here, and it was
                    // checked when the call was queued; report anyway.
                    events.push(Event::Reply {
                        request_id: 0,
                        result: Err(e),
                    });
                }
            }
        }
    }

    fn on_reply(&mut self, request_id: u64, resp: Response, events: &mut Vec<Event>) {
        let Some(call) = self.calls.remove(&request_id) else {
            tracing::debug!(peer = %self.peer, request = request_id, "reply to no call: dropped");
            return;
        };
        if call.expired {
            // The caller gave up; the buffers were kept until now because
            // the peer could still write them.
            return;
        }
        let Call {
            opcode,
            payload,
            bounce,
            ..
        } = call;
        if resp.opcode() != opcode && resp.opcode() != Opcode::Error {
            events.push(Event::Reply {
                request_id,
                result: Err(TransportError::WrongReply {
                    opcode,
                    request_id,
                    got: resp.opcode(),
                }),
            });
            return;
        }
        let payload = match payload {
            Payload::In(mut buf) => {
                let len = match resp.data_ref() {
                    Some(DataRef::Remote { len, .. }) => *len,
                    _ => 0,
                };
                if len as usize > buf.capacity() {
                    events.push(Event::Reply {
                        request_id,
                        result: Err(TransportError::ReplyTooLarge {
                            opcode,
                            request_id,
                            len,
                            capacity: buf.capacity(),
                        }),
                    });
                    return;
                }
                if let Some(b) = &bounce {
                    let n = len as usize;
                    buf.set_len(n);
                    // SAFETY: the bounce buffer's capacity is at least the
                    // read's length (checked when the call started), and
                    // the peer wrote it before sending this reply (RC
                    // ordering); nothing writes it now.
                    let src = unsafe { std::slice::from_raw_parts(b.as_ptr(), n) };
                    buf.as_mut_slice().copy_from_slice(src);
                } else {
                    buf.set_len(len as usize);
                }
                Payload::In(buf)
            }
            other => other,
        };
        drop(bounce);
        events.push(Event::Reply {
            request_id,
            result: Ok((resp, payload)),
        });
    }

    /// Fails calls past their deadline (their buffers stay until the reply
    /// or the teardown, since the peer may still read or write them).
    pub fn expire(&mut self, now: Instant, events: &mut Vec<Event>) {
        for (&request_id, call) in self.calls.iter_mut() {
            if !call.expired && call.deadline <= now {
                call.expired = true;
                events.push(Event::Reply {
                    request_id,
                    result: Err(TransportError::Timeout {
                        opcode: call.opcode,
                        request_id,
                        secs: 0.0,
                    }),
                });
            }
        }
        let mut keep = VecDeque::new();
        while let Some(w) = self.waiting_calls.pop_front() {
            if w.deadline <= now {
                events.push(Event::Reply {
                    request_id: w.request_id,
                    result: Err(TransportError::Timeout {
                        opcode: w.req.opcode(),
                        request_id: w.request_id,
                        secs: 0.0,
                    }),
                });
            } else {
                keep.push_back(w);
            }
        }
        self.waiting_calls = keep;
    }

    // ---- server ----

    /// Queues a reply.
    pub fn reply(&mut self, request_id: u64, resp: &Response) {
        if self.failed.is_some() {
            return;
        }
        let mut frame = encode_response(request_id, resp);
        if frame.len() > self.max_frame() || frame.len() - HEADER_LEN > MAX_BODY as usize {
            tracing::warn!(peer = %self.peer, request = request_id, len = frame.len(), "reply over the RDMA slot size");
            frame = encode_response(
                request_id,
                &Response::error(
                    ErrorCode::TooLarge,
                    "reply body over the RDMA control slot size",
                ),
            );
        }
        self.backlog.push_back(frame);
    }

    /// Server: RDMA READ of the caller's data into a registered data buffer.
    pub fn read_remote(&mut self, token: u64, remote: RemoteRef) -> Result<(), TransportError> {
        if remote.len as usize > self.data.buf_size() {
            return Err(TransportError::Payload {
                reason: format!(
                    "{} bytes are over the RDMA transfer limit of {}",
                    remote.len,
                    self.data.buf_size()
                ),
            });
        }
        self.waiting_ops.push_back(WaitingOp {
            token,
            kind: OneSidedKind::Read { len: remote.len },
            remote,
        });
        Ok(())
    }

    /// Server: RDMA WRITE of `buf` into the caller's buffer (copied into a
    /// registered data buffer first if `buf` is not registered).
    pub fn write_remote(
        &mut self,
        token: u64,
        buf: IoBuf,
        remote: RemoteRef,
    ) -> Result<(), TransportError> {
        if buf.len() > remote.len as usize {
            return Err(TransportError::Payload {
                reason: format!(
                    "{} bytes do not fit the caller's {} bytes",
                    buf.len(),
                    remote.len
                ),
            });
        }
        if buf.len() > self.data.buf_size()
            && self
                .region_of(buf.as_ptr() as u64, buf.len() as u64)
                .is_none()
        {
            return Err(TransportError::Payload {
                reason: format!(
                    "{} bytes are over the RDMA transfer limit of {}",
                    buf.len(),
                    self.data.buf_size()
                ),
            });
        }
        self.waiting_ops.push_back(WaitingOp {
            token,
            kind: OneSidedKind::Write { buf },
            remote,
        });
        Ok(())
    }

    fn start_ops(&mut self, events: &mut Vec<Event>) {
        while let Some(op) = self.waiting_ops.pop_front() {
            let WaitingOp {
                token,
                kind,
                remote,
            } = op;
            let (buf, is_read, len) = match kind {
                OneSidedKind::Read { len } => match self.data.try_take() {
                    Some(mut b) => {
                        b.set_len(len as usize);
                        (b, true, len)
                    }
                    None => {
                        self.waiting_ops.push_front(WaitingOp {
                            token,
                            kind: OneSidedKind::Read { len },
                            remote,
                        });
                        return;
                    }
                },
                OneSidedKind::Write { buf } => {
                    let len = buf.len() as u32;
                    if self
                        .region_of(buf.as_ptr() as u64, buf.len() as u64)
                        .is_some()
                    {
                        (buf, false, len)
                    } else {
                        match self.data.try_take() {
                            Some(mut b) => {
                                b.set_len(buf.len());
                                b.as_mut_slice().copy_from_slice(buf.as_slice());
                                self.stats.bounced += 1;
                                (b, false, len)
                            }
                            None => {
                                self.waiting_ops.push_front(WaitingOp {
                                    token,
                                    kind: OneSidedKind::Write { buf },
                                    remote,
                                });
                                return;
                            }
                        }
                    }
                }
            };
            let Some(mr) = self.region_of(buf.as_ptr() as u64, len as u64) else {
                events.push(Event::OneSided {
                    token,
                    buf: None,
                    result: Err(TransportError::Payload {
                        reason: "data buffer is not registered".into(),
                    }),
                });
                continue;
            };
            let local = Sge {
                addr: buf.as_ptr() as u64,
                len,
                lkey: mr.lkey,
            };
            let remote = RemoteRef { len, ..remote };
            let id = wr_id(WR_ONESIDED, self.next_op);
            self.next_op += 1;
            let posted = if is_read {
                self.stats.reads += 1;
                self.verbs.post_read(id, local, remote)
            } else {
                self.stats.writes += 1;
                self.verbs.post_write(id, local, remote)
            };
            match posted {
                Ok(()) => {
                    self.ops.insert(
                        id,
                        InFlightOp {
                            token,
                            buf,
                            is_read,
                        },
                    );
                }
                Err(e) => {
                    events.push(Event::OneSided {
                        token,
                        buf: None,
                        result: Err(TransportError::Payload {
                            reason: format!("posting one-sided operation: {e}"),
                        }),
                    });
                    self.fail(format!("posting a one-sided operation: {e}"), events);
                    return;
                }
            }
        }
    }

    // ---- both ----

    /// Sends what credits and send slots allow.
    fn pump(&mut self, events: &mut Vec<Event>) {
        let threshold = (self.cfg.window as u32 / 2).max(1);
        loop {
            if self.failed.is_some() {
                return;
            }
            let frame_ok = !self.backlog.is_empty() && self.credits >= 2;
            let credit_ok = self.heard && self.owed >= threshold && self.credits >= 1 && !frame_ok;
            if !frame_ok && !credit_ok {
                break;
            }
            let Some(slot) = self.free_send.pop() else {
                break;
            };
            let frame = if frame_ok {
                self.backlog.pop_front()
            } else {
                None
            };
            let env = Envelope {
                credits: self.owed.min(u16::MAX as u32) as u16,
                frame_len: frame.as_ref().map(|f| f.len() as u32),
            };
            let len = ENV_LEN + frame.as_ref().map_or(0, |f| f.len());
            let ptr = self.slot_ptr(self.cfg.window as u32 + slot);
            // SAFETY: the send slot is free (no SEND posted on it), so only
            // the engine touches it; `len` ≤ slot_size since frames were
            // checked against `max_frame`.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
            env.encode(&mut dst[..ENV_LEN]);
            if let Some(f) = &frame {
                dst[ENV_LEN..].copy_from_slice(f);
            }
            let sge = Sge {
                addr: ptr as u64,
                len: len as u32,
                lkey: self.ctrl_mr.lkey,
            };
            if let Err(e) = self.verbs.post_send(wr_id(WR_SEND, slot as u64), sge) {
                self.fail(format!("posting a SEND: {e}"), events);
                return;
            }
            self.owed -= env.credits as u32;
            self.credits -= 1;
            if frame.is_some() {
                self.stats.sends += 1;
            } else {
                self.stats.credit_updates += 1;
            }
        }
        self.stats.max_backlog = self.stats.max_backlog.max(self.backlog.len());
    }

    /// Posts whatever queued work can go now (new calls, replies,
    /// one-sided operations), without polling: callers use it right after
    /// queueing work so it does not wait for the poller.
    pub fn flush(&mut self, events: &mut Vec<Event>) {
        if self.failed.is_none() {
            self.start_waiting_calls(events);
            self.start_ops(events);
            self.pump(events);
        }
    }

    /// Polls the completion queue once and does all the work that follows.
    /// Returns the number of completions seen.
    pub fn poll(&mut self, events: &mut Vec<Event>) -> usize {
        if self.failed.is_none() {
            self.start_waiting_calls(events);
            self.start_ops(events);
            self.pump(events);
        }
        let mut comps = std::mem::take(&mut self.completions);
        comps.clear();
        let n = match self.verbs.poll(&mut comps, 32) {
            Ok(n) => n,
            Err(e) => {
                self.fail(format!("polling the completion queue: {e}"), events);
                self.completions = comps;
                return 0;
            }
        };
        for c in comps.iter() {
            self.on_completion(*c, events);
        }
        self.completions = comps;
        if self.failed.is_none() && n > 0 {
            self.start_waiting_calls(events);
            self.start_ops(events);
            self.pump(events);
        }
        n
    }

    fn on_completion(&mut self, c: Completion, events: &mut Vec<Event>) {
        let kind = c.wr_id >> WR_KIND_SHIFT;
        let n = c.wr_id & ((1 << WR_KIND_SHIFT) - 1);
        if kind == WR_ONESIDED {
            if let Some(op) = self.ops.remove(&c.wr_id) {
                let result = if c.status == WcStatus::Success {
                    Ok(())
                } else {
                    Err(TransportError::Payload {
                        reason: format!(
                            "RDMA {} from {} failed: {:?}",
                            if op.is_read { "READ" } else { "WRITE" },
                            self.peer,
                            c.status
                        ),
                    })
                };
                events.push(Event::OneSided {
                    token: op.token,
                    buf: if op.is_read && result.is_ok() {
                        Some(op.buf)
                    } else {
                        None
                    },
                    result,
                });
            }
        }
        if c.status != WcStatus::Success {
            if self.failed.is_none() {
                self.fail(
                    format!("{:?} completed with {:?}", c.kind, c.status),
                    events,
                );
            }
            return;
        }
        match (kind, c.kind) {
            (WR_SEND, WorkKind::Send) => self.free_send.push(n as u32),
            (WR_RECV, WorkKind::Recv) => self.on_recv(n as u32, c.byte_len, events),
            (WR_ONESIDED, _) => {}
            _ => self.fail(format!("unexpected completion {c:?}"), events),
        }
    }

    fn on_recv(&mut self, slot: u32, byte_len: u32, events: &mut Vec<Event>) {
        self.stats.recvs += 1;
        let len = (byte_len as usize).min(self.cfg.slot_size);
        // SAFETY: the receive on this slot completed and is not posted again
        // until the bytes are copied out below, so the device does not write
        // it meanwhile; `len` ≤ slot_size.
        let msg = unsafe { std::slice::from_raw_parts(self.slot_ptr(slot), len) }.to_vec();
        if let Err(e) = self.post_recv_slot(slot) {
            self.fail(format!("posting a receive: {e}"), events);
            return;
        }
        self.owed += 1;
        let env = match Envelope::decode(&msg) {
            Ok(env) => env,
            Err(e) => {
                self.fail(format!("bad envelope from {}: {e}", self.peer), events);
                return;
            }
        };
        self.credits += env.credits as u32;
        self.heard = true;
        if env.frame_len.is_none() {
            return;
        }
        let mut dec = FrameDecoder::new(Limits::PROTOCOL);
        dec.feed(&msg[ENV_LEN..]);
        let frame = match dec.next_frame() {
            Ok(Some(f)) if f.header.data_len == 0 => f,
            Ok(Some(f)) => {
                self.fail(
                    format!(
                        "frame from {} carries {} inline data bytes over RDMA",
                        self.peer, f.header.data_len
                    ),
                    events,
                );
                return;
            }
            Ok(None) => {
                self.fail(format!("truncated frame from {}", self.peer), events);
                return;
            }
            Err(e) => {
                self.fail(format!("bad frame from {}: {e}", self.peer), events);
                return;
            }
        };
        let request_id = frame.header.request_id;
        match (self.role, frame.header.is_reply()) {
            (Role::Client, true) => match frame.response() {
                Ok(resp) => self.on_reply(request_id, resp, events),
                Err(e) => {
                    if let Some(call) = self.calls.remove(&request_id) {
                        if !call.expired {
                            events.push(Event::Reply {
                                request_id,
                                result: Err(TransportError::Body {
                                    opcode: call.opcode,
                                    request_id,
                                    source: e,
                                }),
                            });
                        }
                    }
                }
            },
            (Role::Server, false) => match frame.request() {
                Ok(req) => events.push(Event::Request { request_id, req }),
                Err(e) => {
                    let code = match e {
                        crate::wire::BodyError::UnknownOpcode { .. } => ErrorCode::Unsupported,
                        _ => ErrorCode::Invalid,
                    };
                    self.reply(request_id, &Response::error(code, e.to_string()));
                }
            },
            _ => self.fail(
                format!("frame from {} in the wrong direction", self.peer),
                events,
            ),
        }
    }

    /// Tears the queue pair down: every call and operation in flight fails.
    pub fn fail(&mut self, reason: String, events: &mut Vec<Event>) {
        if self.failed.is_some() {
            return;
        }
        tracing::info!(peer = %self.peer, %reason, "RDMA connection failed");
        self.failed = Some(reason.clone());
        self.verbs.disconnect();
        let calls: Vec<(u64, Call)> = self.calls.drain().collect();
        for (request_id, call) in calls {
            if !call.expired {
                events.push(Event::Reply {
                    request_id,
                    result: Err(self.lost(call.opcode, request_id)),
                });
            }
        }
        let waiting: Vec<WaitingCall> = self.waiting_calls.drain(..).collect();
        for w in waiting {
            events.push(Event::Reply {
                request_id: w.request_id,
                result: Err(self.lost(w.req.opcode(), w.request_id)),
            });
        }
        let lost = || TransportError::Payload {
            reason: format!("the RDMA connection failed: {reason}"),
        };
        for (_, op) in self.ops.drain() {
            events.push(Event::OneSided {
                token: op.token,
                buf: None,
                result: Err(lost()),
            });
        }
        for op in self.waiting_ops.drain(..) {
            events.push(Event::OneSided {
                token: op.token,
                buf: None,
                result: Err(lost()),
            });
        }
        self.backlog.clear();
        events.push(Event::Failed { reason });
    }

    /// Graceful teardown.
    pub fn close(&mut self, events: &mut Vec<Event>) {
        self.fail("closed".into(), events);
    }
}

impl<V: Verbs> Drop for Engine<V> {
    fn drop(&mut self) {
        // The device must stop touching the slots and buffers before they
        // are freed.
        self.verbs.disconnect();
    }
}
