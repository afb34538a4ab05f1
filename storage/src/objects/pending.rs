//! A one-shot completion cell: the worker fills it, the caller either
//! `.await`s it (tokio in the brick daemon) or blocks on [`Pending::wait`]
//! (tests, the crash writer). A handful of lines did not justify pulling
//! tokio into the storage crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// A thread sleeps in [`Pending::wait`]: only then does completing
    /// need the condvar (a notify is a system call even with no sleeper,
    /// and async callers, the common case, never sleep on it).
    blocked: bool,
}

struct Cell<T> {
    slot: Mutex<Slot<T>>,
    ready: Condvar,
}

impl<T> Cell<T> {
    fn lock(&self) -> MutexGuard<'_, Slot<T>> {
        // The slot is only ever replaced whole, so a poisoned lock still
        // holds a consistent value.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The result of a store operation, arriving later.
///
/// It is a `Future` and can also be waited for by blocking the thread.
/// Dropping it does not cancel the operation: the operation still runs,
/// and its buffer is dropped (returned to its pool) when it finishes.
#[must_use = "an operation's result (and its buffer) arrive through this"]
pub struct Pending<T> {
    cell: Arc<Cell<T>>,
}

/// The worker's end of a [`Pending`].
pub(crate) struct Completer<T> {
    cell: Arc<Cell<T>>,
}

/// A connected completer and pending result.
pub(crate) fn pair<T>() -> (Completer<T>, Pending<T>) {
    let cell = Arc::new(Cell {
        slot: Mutex::new(Slot {
            value: None,
            waker: None,
            blocked: false,
        }),
        ready: Condvar::new(),
    });
    (Completer { cell: cell.clone() }, Pending { cell })
}

impl<T> Completer<T> {
    /// Delivers the result and wakes whoever waits.
    pub(crate) fn complete(self, value: T) {
        let (waker, blocked) = {
            let mut slot = self.cell.lock();
            slot.value = Some(value);
            (slot.waker.take(), slot.blocked)
        };
        if blocked {
            self.cell.ready.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Pending<T> {
    /// A result that is already there.
    pub fn ready(value: T) -> Pending<T> {
        let (c, p) = pair();
        c.complete(value);
        p
    }

    /// True once the result has arrived.
    pub fn is_ready(&self) -> bool {
        self.cell.lock().value.is_some()
    }

    /// Blocks the calling thread until the result arrives.
    ///
    /// Do not call this from an async task; `.await` the `Pending` instead.
    pub fn wait(self) -> T {
        let mut slot = self.cell.lock();
        loop {
            if let Some(v) = slot.value.take() {
                return v;
            }
            // Set under the lock before sleeping, so the completer, which
            // reads it under the same lock, cannot miss this sleeper.
            slot.blocked = true;
            slot = self
                .cell
                .ready
                .wait(slot)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.cell.lock();
        if let Some(v) = slot.value.take() {
            return Poll::Ready(v);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("ready", &self.is_ready())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wait_gets_value_from_other_thread() {
        let (c, p) = pair::<u32>();
        let t = std::thread::spawn(move || c.complete(7));
        assert_eq!(p.wait(), 7);
        t.join().unwrap();
    }

    #[test]
    fn wait_blocks_until_completed_later() {
        // The waiter is (very likely) asleep when the value arrives; either
        // way it must get it.
        for _ in 0..200 {
            let (c, p) = pair::<u32>();
            let t = std::thread::spawn(move || p.wait());
            std::thread::yield_now();
            c.complete(9);
            assert_eq!(t.join().unwrap(), 9);
        }
    }

    #[test]
    fn completed_before_wait_needs_no_wakeup() {
        let (c, p) = pair::<u32>();
        c.complete(4);
        assert!(p.is_ready());
        assert_eq!(p.wait(), 4);
    }

    #[test]
    fn poll_registers_waker_and_is_woken() {
        let (c, mut p) = pair::<u32>();
        let counter = Arc::new(CountWake(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut p).poll(&mut cx).is_pending());
        c.complete(3);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(Pin::new(&mut p).poll(&mut cx), Poll::Ready(3));
    }
}
