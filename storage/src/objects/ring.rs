//! The io_uring instance of one worker: setup, fixed buffers, the fixed file
//! table, and building/pushing submission entries. All the raw FFI of the
//! object store is here; the worker above it is safe code except for the one
//! `push` whose contract is that the memory an entry names outlives it.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, IoUring};
use iobuf::{BufPool, IoBuf};

/// Most buffers the kernel accepts in one fixed-buffer table.
const MAX_FIXED_BUFFERS: usize = 1 << 14;
/// Largest single fixed buffer the kernel accepts.
const MAX_FIXED_BUFFER_LEN: usize = 1 << 30;

/// Which file an entry works on: a plain descriptor or a slot in the
/// ring's fixed file table.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    Fd(RawFd),
    Fixed(u32),
}

/// One worker's ring.
pub(crate) struct Ring {
    // Field order matters: the ring (and with it the kernel's reference to
    // the registered buffers) is dropped before the pool that backs them.
    uring: IoUring,
    /// Addresses of the registered buffers by index, if registration worked.
    fixed_bufs: Option<Vec<usize>>,
    /// Size of the fixed file table, 0 if there is none.
    file_slots: u32,
    _pool: BufPool,
}

impl Ring {
    /// A ring with `entries` submission slots, a completion queue four times
    /// as large (so bursts of flushes never overflow it), a sparse fixed file
    /// table of `file_slots` entries (0: none), and the buffers of `pool`
    /// registered as fixed buffers, shared from `share_from` (another ring's
    /// descriptor) when the kernel can, so the pages are pinned only once.
    ///
    /// Failing to register files or buffers is not fatal: the ring then uses
    /// plain descriptors or plain buffers, and says so once in the log.
    pub(crate) fn new(
        entries: u32,
        file_slots: u32,
        pool: &BufPool,
        share_from: Option<RawFd>,
    ) -> io::Result<Ring> {
        let uring = IoUring::builder()
            .setup_cqsize(entries.saturating_mul(4))
            .build(entries)?;
        let file_slots = if file_slots == 0 {
            0
        } else {
            match uring.submitter().register_files_sparse(file_slots) {
                Ok(()) => file_slots,
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring fixed files unavailable; using plain file descriptors");
                    0
                }
            }
        };
        let fixed_bufs = register_pool(&uring, pool, share_from);
        Ok(Ring {
            uring,
            fixed_bufs,
            file_slots,
            _pool: pool.clone(),
        })
    }

    /// The ring's own descriptor (to share its buffer table).
    pub(crate) fn fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.uring.as_raw_fd()
    }

    /// Whether the pool buffers are registered with this ring.
    pub(crate) fn has_fixed_buffers(&self) -> bool {
        self.fixed_bufs.is_some()
    }

    /// Size of the fixed file table (0: none).
    pub(crate) fn file_slots(&self) -> u32 {
        self.file_slots
    }

    /// The fixed-buffer index for `buf`, if it is one of the registered pool
    /// buffers (a buffer from another pool or `IoBuf::alloc` is not).
    pub(crate) fn fixed_index(&self, buf: &IoBuf) -> Option<u16> {
        let table = self.fixed_bufs.as_ref()?;
        let i = buf.pool_index()? as usize;
        (table.get(i) == Some(&(buf.as_ptr() as usize)))
            .then(|| u16::try_from(i).ok())
            .flatten()
    }

    /// Installs `fd` in fixed file `slot`.
    pub(crate) fn set_file(&self, slot: u32, fd: RawFd) -> io::Result<()> {
        self.uring
            .submitter()
            .register_files_update(slot, &[fd])
            .map(drop)
    }

    /// Empties fixed file `slot` (the kernel keeps its own reference for
    /// entries still in flight).
    pub(crate) fn clear_file(&self, slot: u32) -> io::Result<()> {
        self.uring
            .submitter()
            .register_files_update(slot, &[-1])
            .map(drop)
    }

    /// Puts `entry` on the submission queue, submitting what is queued
    /// first if it is full. Returns `false` if the queue stays full (the
    /// completion queue needs reaping first).
    ///
    /// # Safety
    /// Every buffer `entry` points to must stay valid, and not be touched by
    /// anyone else, until its completion has been reaped; the descriptor it
    /// names must stay open (or fixed slot installed) until then.
    pub(crate) unsafe fn push(&mut self, entry: &squeue::Entry) -> bool {
        for _ in 0..2 {
            // SAFETY: the caller guarantees the entry's memory and descriptor
            // outlive its completion.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return true;
            }
            if self.uring.submit().is_err() {
                return false;
            }
        }
        false
    }

    /// Submits what is queued and waits for at least `want` completions.
    pub(crate) fn submit_and_wait(&self, want: usize) -> io::Result<usize> {
        self.uring.submit_and_wait(want)
    }

    /// Submits what is queued without waiting.
    pub(crate) fn submit(&self) -> io::Result<usize> {
        self.uring.submit()
    }

    /// Takes every available completion as `(user_data, result)`.
    pub(crate) fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        let mut cq = self.uring.completion();
        cq.sync();
        out.extend(cq.map(|c| (c.user_data(), c.result())));
    }
}

fn register_pool(uring: &IoUring, pool: &BufPool, share_from: Option<RawFd>) -> Option<Vec<usize>> {
    let iovecs: Vec<libc::iovec> = pool
        .iovecs()
        .into_iter()
        .map(|(ptr, len)| libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        })
        .collect();
    if iovecs.len() > MAX_FIXED_BUFFERS || pool.buf_size() > MAX_FIXED_BUFFER_LEN {
        tracing::warn!(
            count = iovecs.len(),
            size = pool.buf_size(),
            "buffer pool too large to register with io_uring; using plain buffers"
        );
        return None;
    }
    let addrs = iovecs.iter().map(|v| v.iov_base as usize).collect();
    if let Some(src) = share_from {
        if uring.submitter().register_buffers_clone(src).is_ok() {
            return Some(addrs);
        }
    }
    // SAFETY: the iovecs describe the pool's buffers, which stay allocated as
    // long as a clone of the pool lives; `Ring` keeps one and drops it only
    // after the ring (and so the registration) is gone. Who may write the
    // bytes is governed by `IoBuf` ownership, as for any other I/O.
    match unsafe { uring.submitter().register_buffers(&iovecs) } {
        Ok(()) => Some(addrs),
        Err(e) => {
            tracing::warn!(error = %e, "io_uring fixed buffers unavailable; using plain buffers");
            None
        }
    }
}

macro_rules! on_target {
    ($t:expr, |$fd:ident| $body:expr) => {
        match $t {
            Target::Fd(raw) => {
                let $fd = types::Fd(raw);
                $body
            }
            Target::Fixed(slot) => {
                let $fd = types::Fixed(slot);
                $body
            }
        }
    };
}

/// `pread` of `len` bytes at `offset` into `ptr` (`fixed`: the registered
/// buffer that holds `ptr`).
pub(crate) fn read(
    t: Target,
    ptr: *mut u8,
    len: u32,
    offset: u64,
    fixed: Option<u16>,
) -> squeue::Entry {
    match fixed {
        Some(index) => on_target!(t, |fd| opcode::ReadFixed::new(fd, ptr, len, index)
            .offset(offset)
            .build()),
        None => on_target!(t, |fd| opcode::Read::new(fd, ptr, len)
            .offset(offset)
            .build()),
    }
}

/// `pwrite` of `len` bytes at `offset` from `ptr`.
pub(crate) fn write(
    t: Target,
    ptr: *const u8,
    len: u32,
    offset: u64,
    fixed: Option<u16>,
) -> squeue::Entry {
    match fixed {
        Some(index) => on_target!(t, |fd| opcode::WriteFixed::new(fd, ptr, len, index)
            .offset(offset)
            .build()),
        None => on_target!(t, |fd| opcode::Write::new(fd, ptr, len)
            .offset(offset)
            .build()),
    }
}

/// `fallocate(mode, offset, len)`.
pub(crate) fn fallocate(t: Target, mode: i32, offset: u64, len: u64) -> squeue::Entry {
    on_target!(t, |fd| opcode::Fallocate::new(fd, len)
        .offset(offset)
        .mode(mode)
        .build())
}

/// `fdatasync` (`data_only`) or `fsync`.
pub(crate) fn fsync(t: Target, data_only: bool) -> squeue::Entry {
    let flags = if data_only {
        types::FsyncFlags::DATASYNC
    } else {
        types::FsyncFlags::empty()
    };
    on_target!(t, |fd| opcode::Fsync::new(fd).flags(flags).build())
}

/// Waits for `fd` to be readable (the worker's wake-up eventfd).
pub(crate) fn poll_readable(fd: RawFd) -> squeue::Entry {
    opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build()
}

/// Does nothing; completes with 0 (used in place of a faulted entry).
pub(crate) fn nop() -> squeue::Entry {
    opcode::Nop::new().build()
}

/// A non-blocking eventfd that other threads write to wake the worker.
pub(crate) fn eventfd() -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd takes no pointers; the flags are valid constants.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}
