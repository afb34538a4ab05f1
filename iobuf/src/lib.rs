//! Aligned I/O buffers, owned by one operation at a time.
//!
//! Both data paths of a brick use these buffers: the disk path (io_uring with
//! `O_DIRECT`, which needs 4 KiB-aligned memory, and fixed buffers registered
//! once with the ring) and the network path (a socket read lands in the same
//! buffer that is then handed to the disk; later an RDMA memory region covers
//! the whole pool). Because `transport` and `storage` must not import each
//! other, the buffer type lives in this small crate of its own.
//!
//! A [`BufPool`] is one aligned allocation cut into equal buffers. A buffer taken
//! from it is an [`IoBuf`] that knows its index in the pool (the io_uring fixed
//! buffer index) and goes back to the pool when dropped. [`IoBuf::alloc`] makes
//! a stand-alone aligned buffer for the rare I/O that does not fit a pool buffer.
//!
//! This crate must not know about disks, sockets or protocols.

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex};

/// Alignment of every buffer: enough for `O_DIRECT` on 4 KiB-sector devices.
pub const ALIGN: usize = 4096;

/// One aligned allocation; freed when the last owner drops it.
struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: `Region` owns its allocation exclusively; the raw pointer is only a
// handle to heap memory that any thread may free or access under the rules of
// the buffers carved from it (each buffer is owned by one `IoBuf` at a time).
unsafe impl Send for Region {}
// SAFETY: shared references to `Region` only read `ptr`/`layout`; access to the
// bytes goes through `IoBuf`, which owns its slice exclusively.
unsafe impl Sync for Region {}

impl Region {
    fn new(size: usize) -> Region {
        let size = size.max(ALIGN).next_multiple_of(ALIGN);
        let layout = Layout::from_size_align(size, ALIGN).expect("valid buffer layout");
        // SAFETY: `layout` has a non-zero size (at least ALIGN).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Region { ptr, layout }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated with exactly `layout` in `Region::new` and is
        // freed only here, once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

struct PoolInner {
    region: Region,
    buf_size: usize,
    count: usize,
    free: Mutex<Vec<u32>>,
    available: Condvar,
}

/// A pool of equal, aligned buffers carved from one allocation.
///
/// Cloning a pool is cheap and shares it. Buffers return to the pool when
/// their [`IoBuf`] is dropped.
#[derive(Clone)]
pub struct BufPool {
    inner: Arc<PoolInner>,
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("buf_size", &self.inner.buf_size)
            .field("count", &self.inner.count)
            .finish()
    }
}

impl BufPool {
    /// A pool of `count` buffers of `buf_size` bytes each (rounded up to
    /// [`ALIGN`]).
    ///
    /// # Panics
    /// If `count` is zero or above `u32::MAX`.
    pub fn new(buf_size: usize, count: usize) -> BufPool {
        assert!(
            count > 0 && count <= u32::MAX as usize,
            "buffer count out of range"
        );
        let buf_size = buf_size.max(ALIGN).next_multiple_of(ALIGN);
        let region = Region::new(buf_size * count);
        let free = (0..count as u32).rev().collect();
        BufPool {
            inner: Arc::new(PoolInner {
                region,
                buf_size,
                count,
                free: Mutex::new(free),
                available: Condvar::new(),
            }),
        }
    }

    /// Size of each buffer in bytes.
    pub fn buf_size(&self) -> usize {
        self.inner.buf_size
    }

    /// Number of buffers in the pool.
    pub fn count(&self) -> usize {
        self.inner.count
    }

    /// Number of buffers not currently taken.
    pub fn available(&self) -> usize {
        self.inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The whole pool as `(address, length)` pairs, one per buffer, in index
    /// order: what `io_uring_register_buffers` and an RDMA memory registration
    /// need. The memory stays valid as long as any clone of the pool lives.
    pub fn iovecs(&self) -> Vec<(*mut u8, usize)> {
        (0..self.inner.count)
            .map(|i| (self.buf_ptr(i as u32), self.inner.buf_size))
            .collect()
    }

    fn buf_ptr(&self, index: u32) -> *mut u8 {
        debug_assert!((index as usize) < self.inner.count);
        // SAFETY: `index < count`, so the offset stays inside the region that
        // holds `count * buf_size` bytes.
        unsafe {
            self.inner
                .region
                .ptr
                .as_ptr()
                .add(index as usize * self.inner.buf_size)
        }
    }

    /// Takes a free buffer without waiting; `None` if all are in use.
    pub fn try_take(&self) -> Option<IoBuf> {
        let index = self
            .inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()?;
        Some(self.make(index))
    }

    /// Takes a free buffer, waiting until one is returned if all are in use.
    pub fn take(&self) -> IoBuf {
        let mut free = self.inner.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(index) = free.pop() {
                drop(free);
                return self.make(index);
            }
            free = self
                .inner
                .available
                .wait(free)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn make(&self, index: u32) -> IoBuf {
        IoBuf {
            ptr: NonNull::new(self.buf_ptr(index)).expect("pool memory is non-null"),
            cap: self.inner.buf_size,
            len: 0,
            owner: Owner::Pool {
                pool: self.clone(),
                index,
            },
        }
    }

    fn give_back(&self, index: u32) {
        let mut free = self.inner.free.lock().unwrap_or_else(|e| e.into_inner());
        free.push(index);
        drop(free);
        self.inner.available.notify_one();
    }
}

enum Owner {
    Pool { pool: BufPool, index: u32 },
    Alone(#[allow(dead_code)] Region),
}

/// An aligned buffer owned by one operation at a time.
///
/// It has a capacity (fixed) and a length (the bytes that hold data). I/O
/// calls take it by value and hand it back with their result, so the memory is
/// never shared between an operation in flight and its caller.
pub struct IoBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
    owner: Owner,
}

// SAFETY: an `IoBuf` is the only handle to its bytes (pool buffers are handed
// out once until returned), so moving it to another thread is sound.
unsafe impl Send for IoBuf {}
// SAFETY: `&IoBuf` only allows reading the bytes; mutation needs `&mut IoBuf`.
unsafe impl Sync for IoBuf {}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .field("pool_index", &self.pool_index())
            .finish()
    }
}

impl IoBuf {
    /// A stand-alone aligned buffer of at least `cap` bytes, zero-filled,
    /// with length 0.
    pub fn alloc(cap: usize) -> IoBuf {
        let region = Region::new(cap);
        IoBuf {
            ptr: region.ptr,
            cap: region.layout.size(),
            len: 0,
            owner: Owner::Alone(region),
        }
    }

    /// A stand-alone buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> IoBuf {
        let mut buf = IoBuf::alloc(data.len());
        buf.set_len(data.len());
        buf.as_mut_slice().copy_from_slice(data);
        buf
    }

    /// Capacity in bytes (a multiple of [`ALIGN`]).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes that hold data.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no data.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the data length.
    ///
    /// # Panics
    /// If `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.cap,
            "IoBuf length {len} over capacity {}",
            self.cap
        );
        self.len = len;
    }

    /// The io_uring fixed-buffer index, for buffers taken from a pool.
    pub fn pool_index(&self) -> Option<u32> {
        match &self.owner {
            Owner::Pool { index, .. } => Some(*index),
            Owner::Alone(_) => None,
        }
    }

    /// The bytes that hold data.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `cap` bytes owned by this buffer; `len <= cap`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes that hold data, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The whole capacity, writable (for filling before `set_len`).
    pub fn spare_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `cap` initialised bytes (zeroed at allocation)
        // owned by this buffer; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Raw pointer to the start, for submitting to the kernel.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Raw mutable pointer to the start, for submitting to the kernel.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if let Owner::Pool { pool, index } = &self.owner {
            pool.give_back(*index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_buffers_are_aligned_distinct_and_returned() {
        let pool = BufPool::new(10_000, 4);
        assert_eq!(pool.buf_size(), 12_288);
        let bufs: Vec<IoBuf> = (0..4).map(|_| pool.take()).collect();
        assert!(pool.try_take().is_none());
        let mut idx: Vec<u32> = bufs.iter().map(|b| b.pool_index().unwrap()).collect();
        idx.sort();
        assert_eq!(idx, vec![0, 1, 2, 3]);
        for b in &bufs {
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        }
        drop(bufs);
        assert_eq!(pool.available(), 4);
    }

    #[test]
    fn take_waits_for_a_returned_buffer() {
        let pool = BufPool::new(4096, 1);
        let held = pool.take();
        let p2 = pool.clone();
        let t = std::thread::spawn(move || p2.take().pool_index());
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(held);
        assert_eq!(t.join().unwrap(), Some(0));
    }

    #[test]
    fn alone_buffer_holds_data() {
        let b = IoBuf::from_slice(b"stretto");
        assert_eq!(b.as_slice(), b"stretto");
        assert_eq!(b.capacity(), ALIGN);
        assert_eq!(b.pool_index(), None);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
    }

    #[test]
    #[should_panic]
    fn set_len_past_capacity_panics() {
        IoBuf::alloc(10).set_len(ALIGN + 1);
    }
}
