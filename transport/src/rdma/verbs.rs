//! The small verbs trait the RDMA protocol engine is written against.
//!
//! It is the part of libibverbs one reliable-connected (RC) queue pair needs:
//! register memory, post receives, SENDs and one-sided READs/WRITEs, poll the
//! completion queue, and block on the completion channel. Two implementations
//! exist: the software simulation in [`super::sim`] (always built, used by the
//! unit tests) and the `sideway` backend (feature `rdma`). The trait must not
//! grow with protocol features: credits, buffers and request matching live in
//! [`super::engine`], once.

use std::time::Duration;
use thiserror::Error;

/// A registered memory region (one per buffer pool, never per I/O).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte of the region (a virtual address in this process).
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Key local work requests name the region with.
    pub lkey: u32,
    /// Key the peer names the region with in one-sided operations.
    pub rkey: u32,
}

impl MemoryRegion {
    /// True when `[addr, addr + len)` lies inside this region.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.addr + self.len)
    }
}

/// A local scatter/gather element: bytes in a registered region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    pub addr: u64,
    pub len: u32,
    pub lkey: u32,
}

/// The peer's registered memory named by a one-sided operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRef {
    pub addr: u64,
    pub len: u32,
    pub rkey: u32,
}

/// What a work request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    Recv,
    Send,
    RdmaRead,
    RdmaWrite,
}

/// How a work request ended (the subset of `ibv_wc_status` the engine tells
/// apart; everything else is `Other` with the raw status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcStatus {
    Success,
    /// The queue pair went to the error state before this request ran.
    Flushed,
    /// The peer refused a one-sided access (bad rkey, bounds, rights).
    RemoteAccess,
    /// A local key or bounds check failed.
    LocalProtection,
    /// The peer did not answer (retry count exceeded): link or peer gone.
    RetryExceeded,
    /// The peer had no receive posted and RNR retries ran out.
    ReceiverNotReady,
    /// The peer's receive buffer was too small for a SEND.
    LocalLength,
    Other(u32),
}

/// One work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub wr_id: u64,
    pub kind: WorkKind,
    pub status: WcStatus,
    /// Bytes received (for `Recv`).
    pub byte_len: u32,
}

/// A verbs call failed synchronously (posting or polling).
#[derive(Debug, Error)]
pub enum VerbsError {
    #[error("{op}: the queue pair is in the error state")]
    QpError { op: &'static str },
    #[error("{op}: {reason}")]
    Failed { op: &'static str, reason: String },
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// One connected RC queue pair with its completion queue.
pub trait Verbs: Send {
    /// Registers `[addr, addr + len)` for local use and remote read/write.
    ///
    /// # Safety
    /// The memory must stay allocated, and must not be handed out as a
    /// Rust reference that the device's writes would alias unsoundly, for as
    /// long as this queue pair lives (the device reads and writes it at any
    /// time the engine has work posted on it).
    unsafe fn register(&mut self, addr: *mut u8, len: usize) -> Result<MemoryRegion, VerbsError>;

    /// Posts a receive into `sge`.
    fn post_recv(&mut self, wr_id: u64, sge: Sge) -> Result<(), VerbsError>;
    /// Posts a SEND of `sge`'s bytes into the peer's next posted receive.
    fn post_send(&mut self, wr_id: u64, sge: Sge) -> Result<(), VerbsError>;
    /// Posts an RDMA READ of `remote` into `local`.
    fn post_read(&mut self, wr_id: u64, local: Sge, remote: RemoteRef) -> Result<(), VerbsError>;
    /// Posts an RDMA WRITE of `local` into `remote`.
    fn post_write(&mut self, wr_id: u64, local: Sge, remote: RemoteRef) -> Result<(), VerbsError>;

    /// Appends up to `max` completions to `out`; returns how many.
    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError>;

    /// Asks the completion channel to signal the next completion (after an
    /// arm, poll once more before waiting: a completion may have slipped in).
    fn arm(&mut self) -> Result<(), VerbsError>;

    /// A handle that blocks on the completion channel without holding the
    /// queue pair (so other threads can post meanwhile).
    fn waiter(&self) -> Box<dyn CqWaiter>;

    /// Moves the queue pair to the error state and disconnects (teardown):
    /// outstanding work completes as `Flushed`.
    fn disconnect(&mut self);
}

/// Blocks on a completion channel.
pub trait CqWaiter: Send + Sync {
    /// Returns when an armed completion arrived or `timeout` passed.
    fn wait(&self, timeout: Duration);
}

impl<V: Verbs + ?Sized> Verbs for Box<V> {
    unsafe fn register(&mut self, addr: *mut u8, len: usize) -> Result<MemoryRegion, VerbsError> {
        // SAFETY: the caller upholds `register`'s contract; this forwards it.
        unsafe { (**self).register(addr, len) }
    }
    fn post_recv(&mut self, wr_id: u64, sge: Sge) -> Result<(), VerbsError> {
        (**self).post_recv(wr_id, sge)
    }
    fn post_send(&mut self, wr_id: u64, sge: Sge) -> Result<(), VerbsError> {
        (**self).post_send(wr_id, sge)
    }
    fn post_read(&mut self, wr_id: u64, local: Sge, remote: RemoteRef) -> Result<(), VerbsError> {
        (**self).post_read(wr_id, local, remote)
    }
    fn post_write(&mut self, wr_id: u64, local: Sge, remote: RemoteRef) -> Result<(), VerbsError> {
        (**self).post_write(wr_id, local, remote)
    }
    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        (**self).poll(out, max)
    }
    fn arm(&mut self) -> Result<(), VerbsError> {
        (**self).arm()
    }
    fn waiter(&self) -> Box<dyn CqWaiter> {
        (**self).waiter()
    }
    fn disconnect(&mut self) {
        (**self).disconnect()
    }
}

/// Sets up connected queue pairs: the rdma_cm part (or the simulation's).
pub trait Fabric: Send + Sync + 'static {
    /// Connects to a listener at `addr` (`HOST:PORT`).
    fn connect(&self, addr: &str, timeout: Duration) -> Result<Box<dyn Verbs>, VerbsError>;
    /// Listens on `addr`; the address actually bound is `local_addr()`.
    fn listen(&self, addr: &str) -> Result<Box<dyn Listener>, VerbsError>;
    /// A name for logs ("sim", "rxe0", ...).
    fn name(&self) -> String;
}

/// An accepted queue pair and the peer's address.
pub type Accepted = (Box<dyn Verbs>, String);

/// Accepts connections.
pub trait Listener: Send {
    /// Waits up to `timeout` for a connection; `Ok(None)` on timeout.
    fn accept(&mut self, timeout: Duration) -> Result<Option<Accepted>, VerbsError>;
    fn local_addr(&self) -> String;
}
