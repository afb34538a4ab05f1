//! The real verbs backend (feature `rdma`): libibverbs and librdmacm through
//! the `sideway` crate; `rdma-mummy-sys` (sideway's own bindings, so no
//! extra build) for the three completion-channel calls sideway lacks
//! (`ibv_req_notify_cq`, `ibv_get_cq_event`, `ibv_ack_cq_events`).
//!
//! Connection setup is rdma_cm over IP (RoCE or IPoIB addresses): the
//! client resolves address and route, creates its own RC queue pair on the
//! cm id's device, connects with its QP number, and moves the QP through
//! INIT/RTR/RTS with the attributes rdma_cm computes; the listener does the
//! same on each connect request before accepting. A disconnect event moves
//! the QP to the error state, so everything posted completes as flushed and
//! the engine fails the connection. All protocol logic lives in
//! [`super::engine`]; this module only maps the [`Verbs`] calls.

use super::select::RdmaUnavailable;
use super::verbs::{
    Accepted, Completion, CqWaiter, Fabric, Listener, MemoryRegion, RemoteRef, Sge, Verbs,
    VerbsError, WcStatus, WorkKind,
};
use sideway::ibverbs::completion::{
    BasicCompletionQueue, CompletionChannel, CompletionQueue, GenericCompletionQueue,
    WorkCompletionOperationType, WorkCompletionStatus,
};
use sideway::ibverbs::device::DeviceInfo;
use sideway::ibverbs::device_context::DeviceContext;
use sideway::ibverbs::memory_region::MemoryRegion as Mr;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::queue_pair::{
    BasicQueuePair, PostSendGuard, QueuePair, QueuePairAttribute, QueuePairState,
    SetScatterGatherEntry, WorkRequestFlags,
};
use sideway::ibverbs::AccessFlags;
use sideway::rdmacm::communication_manager::{
    ConnectionParameter, Event, EventChannel, EventType, Identifier, PortSpace,
};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Work requests a queue pair holds per direction (the engine's window
/// plus one-sided operations and credit updates fit well within it).
const QP_DEPTH: u32 = 256;

/// The machine's verbs devices, reached through rdma_cm.
pub struct HwFabric {
    device: String,
}

impl HwFabric {
    /// Opens the device list; an empty list is [`RdmaUnavailable::NoDevice`],
    /// a kernel without the verbs interface
    /// [`RdmaUnavailable::NoKernelSupport`] (libibverbs then fails to list
    /// anything, with an error that names nothing).
    pub fn open() -> Result<HwFabric, RdmaUnavailable> {
        const VERBS_SYSFS: &str = "/sys/class/infiniband_verbs";
        let list = sideway::ibverbs::device::DeviceList::new().map_err(|e| {
            if std::path::Path::new(VERBS_SYSFS).exists() {
                RdmaUnavailable::Library {
                    reason: format!("listing RDMA devices through libibverbs: {e}"),
                }
            } else {
                RdmaUnavailable::NoKernelSupport {
                    path: VERBS_SYSFS,
                    reason: e.to_string(),
                }
            }
        })?;
        let Some(dev) = list.get(0) else {
            return Err(RdmaUnavailable::NoDevice);
        };
        Ok(HwFabric {
            device: dev.name().to_string(),
        })
    }
}

fn failed(op: &'static str, e: impl std::fmt::Display) -> VerbsError {
    VerbsError::Failed {
        op,
        reason: e.to_string(),
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, VerbsError> {
    addr.to_socket_addrs()
        .map_err(|e| failed("resolving the address", format!("{addr}: {e}")))?
        .next()
        .ok_or_else(|| failed("resolving the address", format!("{addr}: no address")))
}

/// Waits for the next rdma_cm event on a non-blocking channel.
fn next_event(ch: &Arc<EventChannel>, deadline: Instant) -> Result<Option<Event>, VerbsError> {
    loop {
        match ch.get_cm_event() {
            Ok(ev) => return Ok(Some(ev)),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => return Ok(None),
        }
    }
}

/// Waits for an event of `want` on `ch`, failing on any error event.
fn expect_event(
    ch: &Arc<EventChannel>,
    want: EventType,
    deadline: Instant,
    op: &'static str,
) -> Result<(), VerbsError> {
    loop {
        let Some(ev) = next_event(ch, deadline)? else {
            return Err(failed(op, "timed out"));
        };
        let ty = ev.event_type();
        let status = ev.status();
        let _ = ev.ack();
        if ty == want {
            return Ok(());
        }
        match ty {
            EventType::AddressError
            | EventType::RouteError
            | EventType::ConnectError
            | EventType::Unreachable
            | EventType::Rejected
            | EventType::DeviceRemoval
            | EventType::Disconnected => {
                return Err(failed(op, format!("{ty:?} (status {status})")));
            }
            _ => {}
        }
    }
}

/// The verbs objects of one connection.
struct Resources {
    _ctx: Arc<DeviceContext>,
    pd: Arc<ProtectionDomain>,
    channel: Arc<CompletionChannel>,
    cq: Arc<BasicCompletionQueue>,
    qp: BasicQueuePair,
}

fn create_resources(id: &Arc<Identifier>) -> Result<Resources, VerbsError> {
    let ctx = id
        .get_device_context()
        .ok_or_else(|| failed("rdma_cm", "the cm id has no device"))?;
    let pd = ctx.alloc_pd().map_err(|e| failed("ibv_alloc_pd", e))?;
    let channel = CompletionChannel::new(&ctx).map_err(|e| failed("ibv_create_comp_channel", e))?;
    let cq = ctx
        .create_cq_builder()
        .setup_cqe(2 * QP_DEPTH)
        .setup_comp_channel(&channel, 0)
        .build()
        .map_err(|e| failed("ibv_create_cq", e))?;
    let generic = GenericCompletionQueue::from(cq.clone());
    let mut builder = pd.create_qp_builder();
    let mut qp = builder
        .setup_max_send_wr(QP_DEPTH)
        .setup_max_recv_wr(QP_DEPTH)
        .setup_max_send_sge(1)
        .setup_max_recv_sge(1)
        .setup_send_cq(generic.clone())
        .setup_recv_cq(generic)
        .build()
        .map_err(|e| failed("ibv_create_qp", e))?;
    for state in [
        QueuePairState::Init,
        QueuePairState::ReadyToReceive,
        QueuePairState::ReadyToSend,
    ] {
        let attr = id
            .get_qp_attr(state)
            .map_err(|e| failed("rdma_init_qp_attr", e))?;
        qp.modify(&attr).map_err(|e| failed("ibv_modify_qp", e))?;
    }
    Ok(Resources {
        _ctx: ctx,
        pd,
        channel,
        cq,
        qp,
    })
}

/// One connected RC queue pair on a real device.
pub struct HwQp {
    // Field order is drop order: the QP goes before the regions it uses,
    // the regions before the PD, the CQ after the QP.
    res: Resources,
    mrs: Vec<Arc<Mr>>,
    id: Arc<Identifier>,
    /// Keeps the client's event channel (the listener keeps the server's).
    events: Option<Arc<EventChannel>>,
    /// Set by whoever sees a disconnect event for this connection.
    disconnected: Arc<AtomicBool>,
    in_error: bool,
}

// SAFETY: the raw verbs objects inside are used by one thread at a time
// (the engine is behind a mutex); libibverbs allows a QP, CQ and MRs to be
// used from any thread, and nothing here is tied to the creating thread.
unsafe impl Send for HwQp {}

impl HwQp {
    fn enter_error_state(&mut self) {
        if self.in_error {
            return;
        }
        self.in_error = true;
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Error);
        if let Err(e) = self.res.qp.modify(&attr) {
            tracing::debug!(error = %e, "moving the QP to the error state");
        }
        let _ = self.id.disconnect();
    }
}

fn wc_status(s: u32) -> WcStatus {
    match WorkCompletionStatus::from(s) {
        WorkCompletionStatus::Success => WcStatus::Success,
        WorkCompletionStatus::WorkRequestFlushedError => WcStatus::Flushed,
        WorkCompletionStatus::RemoteAccessError => WcStatus::RemoteAccess,
        WorkCompletionStatus::LocalProtectionError => WcStatus::LocalProtection,
        WorkCompletionStatus::RetryCounterExceededError => WcStatus::RetryExceeded,
        WorkCompletionStatus::ResponderNotReadyRetryCounterExceededError => {
            WcStatus::ReceiverNotReady
        }
        WorkCompletionStatus::LocalLengthError => WcStatus::LocalLength,
        _ => WcStatus::Other(s),
    }
}

fn wc_kind(op: u32) -> WorkKind {
    match WorkCompletionOperationType::from(op) {
        WorkCompletionOperationType::Receive => WorkKind::Recv,
        WorkCompletionOperationType::Read => WorkKind::RdmaRead,
        WorkCompletionOperationType::Write => WorkKind::RdmaWrite,
        _ => WorkKind::Send,
    }
}

impl Verbs for HwQp {
    unsafe fn register(&mut self, addr: *mut u8, len: usize) -> Result<MemoryRegion, VerbsError> {
        // SAFETY: the caller keeps the memory alive and device-owned as
        // `Verbs::register` requires; `reg_mr` only records and pins it.
        let mr = unsafe {
            self.res.pd.reg_mr(
                addr as usize,
                len,
                AccessFlags::LocalWrite | AccessFlags::RemoteWrite | AccessFlags::RemoteRead,
            )
        }
        .map_err(|e| failed("ibv_reg_mr", e))?;
        let out = MemoryRegion {
            addr: addr as u64,
            len: len as u64,
            lkey: mr.lkey(),
            rkey: mr.rkey(),
        };
        self.mrs.push(mr);
        Ok(out)
    }

    fn post_recv(&mut self, wr_id: u64, sge: Sge) -> Result<(), VerbsError> {
        let mut guard = self.res.qp.start_post_recv();
        let h = guard.construct_wr(wr_id);
        // SAFETY: the engine names registered memory it owns until the
        // completion (the `Verbs` contract).
        unsafe { h.setup_sge(sge.lkey, sge.addr, sge.len) };
        guard.post().map_err(|e| failed("ibv_post_recv", e))
    }

    fn post_send(&mut self, wr_id: u64, sge: Sge) -> Result<(), VerbsError> {
        let mut guard = self.res.qp.start_post_send();
        let h = guard
            .construct_wr(wr_id, WorkRequestFlags::Signaled)
            .setup_send();
        // SAFETY: as in `post_recv`.
        unsafe { h.setup_sge(sge.lkey, sge.addr, sge.len) };
        guard.post().map_err(|e| failed("ibv_post_send", e))
    }

    fn post_read(&mut self, wr_id: u64, local: Sge, remote: RemoteRef) -> Result<(), VerbsError> {
        let mut guard = self.res.qp.start_post_send();
        let h = guard
            .construct_wr(wr_id, WorkRequestFlags::Signaled)
            .setup_read(remote.rkey, remote.addr);
        // SAFETY: as in `post_recv`; the remote range is the peer's to check.
        unsafe { h.setup_sge(local.lkey, local.addr, local.len) };
        guard
            .post()
            .map_err(|e| failed("ibv_post_send(RDMA_READ)", e))
    }

    fn post_write(&mut self, wr_id: u64, local: Sge, remote: RemoteRef) -> Result<(), VerbsError> {
        let mut guard = self.res.qp.start_post_send();
        let h = guard
            .construct_wr(wr_id, WorkRequestFlags::Signaled)
            .setup_write(remote.rkey, remote.addr);
        // SAFETY: as in `post_read`.
        unsafe { h.setup_sge(local.lkey, local.addr, local.len) };
        guard
            .post()
            .map_err(|e| failed("ibv_post_send(RDMA_WRITE)", e))
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        if let Some(ch) = &self.events {
            // The client's own cm events: a disconnect from the peer.
            if let Ok(ev) = ch.get_cm_event() {
                let ty = ev.event_type();
                let _ = ev.ack();
                if matches!(ty, EventType::Disconnected | EventType::DeviceRemoval) {
                    self.disconnected.store(true, Ordering::SeqCst);
                }
            }
        }
        if self.disconnected.load(Ordering::SeqCst) {
            self.enter_error_state();
        }
        let mut n = 0;
        let cq = GenericCompletionQueue::from(self.res.cq.clone());
        if let Ok(mut poller) = cq.start_poll() {
            while n < max {
                let Some(wc) = poller.next() else { break };
                let status = wc_status(wc.status());
                out.push(Completion {
                    wr_id: wc.wr_id(),
                    kind: if status == WcStatus::Success {
                        wc_kind(wc.opcode())
                    } else {
                        WorkKind::Send
                    },
                    status,
                    byte_len: wc.byte_len(),
                });
                n += 1;
            }
        }
        Ok(n)
    }

    fn arm(&mut self) -> Result<(), VerbsError> {
        // SAFETY: the CQ is alive (owned by `res`); ibv_req_notify_cq only
        // arms its notification.
        let rc = unsafe { rdma_mummy_sys::ibv_req_notify_cq(self.res.cq.cq().as_ptr(), 0) };
        if rc != 0 {
            return Err(VerbsError::Io {
                op: "ibv_req_notify_cq",
                source: std::io::Error::from_raw_os_error(rc),
            });
        }
        Ok(())
    }

    fn waiter(&self) -> Box<dyn CqWaiter> {
        Box::new(HwWaiter {
            channel: self.res.channel.clone(),
            _cq: self.res.cq.clone(),
        })
    }

    fn disconnect(&mut self) {
        self.enter_error_state();
    }
}

struct HwWaiter {
    channel: Arc<CompletionChannel>,
    /// Keeps the CQ alive while events may still be acknowledged on it.
    _cq: Arc<BasicCompletionQueue>,
}

// SAFETY: the completion channel is thread-safe (sideway marks it Send and
// Sync) and the CQ handle is only kept alive here, and acknowledged through
// libibverbs, which locks internally.
unsafe impl Send for HwWaiter {}
// SAFETY: as above; `wait` takes `&self` and libibverbs serialises events.
unsafe impl Sync for HwWaiter {}

impl CqWaiter for HwWaiter {
    fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.channel.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc <= 0 {
            return;
        }
        let mut cq: *mut rdma_mummy_sys::ibv_cq = std::ptr::null_mut();
        let mut ctx: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: the channel is alive (held in `self`) and readable; the
        // out pointers are valid locals. Each event got is acknowledged.
        unsafe {
            if rdma_mummy_sys::ibv_get_cq_event(
                self.channel.comp_channel().as_ptr(),
                &mut cq,
                &mut ctx,
            ) == 0
            {
                rdma_mummy_sys::ibv_ack_cq_events(cq, 1);
            }
        }
    }
}

impl Fabric for HwFabric {
    fn connect(&self, addr: &str, timeout: Duration) -> Result<Box<dyn Verbs>, VerbsError> {
        let dst = resolve(addr)?;
        let deadline = Instant::now() + timeout;
        let ch = EventChannel::new().map_err(|e| failed("rdma_create_event_channel", e))?;
        ch.set_nonblocking(true).map_err(|e| VerbsError::Io {
            op: "rdma_cm channel",
            source: e,
        })?;
        let id = ch
            .create_id(PortSpace::Tcp)
            .map_err(|e| failed("rdma_create_id", e))?;
        id.resolve_addr(None, dst, timeout.min(Duration::from_secs(10)))
            .map_err(|e| failed("rdma_resolve_addr", e))?;
        expect_event(
            &ch,
            EventType::AddressResolved,
            deadline,
            "rdma_resolve_addr",
        )?;
        id.resolve_route(timeout.min(Duration::from_secs(10)))
            .map_err(|e| failed("rdma_resolve_route", e))?;
        expect_event(
            &ch,
            EventType::RouteResolved,
            deadline,
            "rdma_resolve_route",
        )?;
        // The QP goes to RTR/RTS only once the peer answered: create it,
        // connect, then move it on the connect response.
        let ctx = id
            .get_device_context()
            .ok_or_else(|| failed("rdma_cm", "the cm id has no device"))?;
        let pd = ctx.alloc_pd().map_err(|e| failed("ibv_alloc_pd", e))?;
        let channel =
            CompletionChannel::new(&ctx).map_err(|e| failed("ibv_create_comp_channel", e))?;
        let cq = ctx
            .create_cq_builder()
            .setup_cqe(2 * QP_DEPTH)
            .setup_comp_channel(&channel, 0)
            .build()
            .map_err(|e| failed("ibv_create_cq", e))?;
        let generic = GenericCompletionQueue::from(cq.clone());
        let mut builder = pd.create_qp_builder();
        let mut qp = builder
            .setup_max_send_wr(QP_DEPTH)
            .setup_max_recv_wr(QP_DEPTH)
            .setup_max_send_sge(1)
            .setup_max_recv_sge(1)
            .setup_send_cq(generic.clone())
            .setup_recv_cq(generic)
            .build()
            .map_err(|e| failed("ibv_create_qp", e))?;
        let mut param = ConnectionParameter::default();
        param.setup_qp_number(qp.qp_number());
        id.connect(param).map_err(|e| failed("rdma_connect", e))?;
        expect_event(&ch, EventType::ConnectResponse, deadline, "rdma_connect")?;
        for state in [
            QueuePairState::Init,
            QueuePairState::ReadyToReceive,
            QueuePairState::ReadyToSend,
        ] {
            let attr = id
                .get_qp_attr(state)
                .map_err(|e| failed("rdma_init_qp_attr", e))?;
            qp.modify(&attr).map_err(|e| failed("ibv_modify_qp", e))?;
        }
        id.establish().map_err(|e| failed("rdma_establish", e))?;
        Ok(Box::new(HwQp {
            res: Resources {
                _ctx: ctx,
                pd,
                channel,
                cq,
                qp,
            },
            mrs: Vec::new(),
            id,
            events: Some(ch),
            disconnected: Arc::new(AtomicBool::new(false)),
            in_error: false,
        }))
    }

    fn listen(&self, addr: &str) -> Result<Box<dyn Listener>, VerbsError> {
        let sa = resolve(addr)?;
        let ch = EventChannel::new().map_err(|e| failed("rdma_create_event_channel", e))?;
        ch.set_nonblocking(true).map_err(|e| VerbsError::Io {
            op: "rdma_cm channel",
            source: e,
        })?;
        let id = ch
            .create_id(PortSpace::Tcp)
            .map_err(|e| failed("rdma_create_id", e))?;
        id.bind_addr(sa).map_err(|e| failed("rdma_bind_addr", e))?;
        id.listen(128).map_err(|e| failed("rdma_listen", e))?;
        Ok(Box::new(HwListener {
            ch,
            _id: id,
            addr: sa.to_string(),
        }))
    }

    fn name(&self) -> String {
        self.device.clone()
    }
}

struct HwListener {
    ch: Arc<EventChannel>,
    _id: Arc<Identifier>,
    addr: String,
}

/// What a connection's cm id carries, so the listener can flag it on a
/// disconnect event.
type DisconnectFlag = Arc<AtomicBool>;

impl Listener for HwListener {
    fn accept(&mut self, timeout: Duration) -> Result<Option<Accepted>, VerbsError> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(ev) = next_event(&self.ch, deadline)? else {
                return Ok(None);
            };
            let ty = ev.event_type();
            let cm_id = ev.cm_id();
            let _ = ev.ack();
            match ty {
                EventType::ConnectRequest => {
                    let Some(id) = cm_id else { continue };
                    match self.accept_one(id) {
                        Ok(a) => return Ok(Some(a)),
                        Err(e) => tracing::warn!(error = %e, "refusing an RDMA connection"),
                    }
                }
                EventType::Disconnected | EventType::DeviceRemoval => {
                    if let Some(flag) = cm_id.and_then(|id| id.get_context::<DisconnectFlag>()) {
                        flag.store(true, Ordering::SeqCst);
                    }
                }
                _ => {}
            }
        }
    }

    fn local_addr(&self) -> String {
        self.addr.clone()
    }
}

impl HwListener {
    fn accept_one(&self, id: Arc<Identifier>) -> Result<Accepted, VerbsError> {
        let res = create_resources(&id)?;
        let flag: DisconnectFlag = Arc::new(AtomicBool::new(false));
        id.setup_context(flag.clone());
        let mut param = ConnectionParameter::default();
        param.setup_qp_number(res.qp.qp_number());
        id.accept(param).map_err(|e| failed("rdma_accept", e))?;
        Ok((
            Box::new(HwQp {
                res,
                mrs: Vec::new(),
                id,
                events: None,
                disconnected: flag,
                in_error: false,
            }),
            "rdma peer".to_string(),
        ))
    }
}
