//! Fault injection for the object store (STYLE.md rule 13): a plan that
//! makes chosen disk operations fail with a chosen errno, so tests can see
//! disk errors surface as values and the store keep working afterwards.
//!
//! The plan is consulted by the workers just before each disk operation is
//! handed to the kernel. A faulted operation is not submitted at all; its
//! completion carries `-errno` as if the kernel had failed it, so every error
//! path after the kernel is the real one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The kinds of disk operation a fault can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// Opening or creating a chunk file. An `EINVAL` here on an `O_DIRECT`
    /// open exercises the fall-back to buffered I/O.
    Open,
    /// A read from a chunk file (also the read half of a read-modify-write).
    Read,
    /// A write to a chunk file.
    Write,
    /// `fallocate(PUNCH_HOLE)`.
    Punch,
    /// `fallocate(ZERO_RANGE)`.
    Zero,
    /// `fdatasync` of a chunk file or `fsync` of a directory during flush.
    Sync,
    /// Any of the above.
    Any,
}

#[derive(Debug)]
struct Rule {
    op: FaultOp,
    /// Matching operations still to let through before failing.
    skip: u64,
    /// Matching operations still to fail.
    times: u64,
    errno: i32,
}

/// Which disk operations to fail. Share it (`Arc`) between the test and the
/// store's options; rules can be added while the store runs.
#[derive(Debug, Default)]
pub struct FaultPlan {
    rules: Mutex<Vec<Rule>>,
    fired: AtomicU64,
    /// Operations seen, by kind (index: [`FaultOp::index`]).
    seen: [AtomicU64; 6],
}

impl FaultOp {
    fn index(self) -> Option<usize> {
        match self {
            FaultOp::Open => Some(0),
            FaultOp::Read => Some(1),
            FaultOp::Write => Some(2),
            FaultOp::Punch => Some(3),
            FaultOp::Zero => Some(4),
            FaultOp::Sync => Some(5),
            FaultOp::Any => None,
        }
    }
}

impl FaultPlan {
    /// A plan that fails nothing (yet).
    pub fn new() -> FaultPlan {
        FaultPlan::default()
    }

    /// Fails the `nth` (1-based, counted from now) disk operation of kind
    /// `op` with `errno`.
    pub fn fail_nth(&self, op: FaultOp, nth: u64, errno: i32) {
        self.fail_range(op, nth, 1, errno);
    }

    /// Fails the next disk operation of kind `op` with `errno`.
    pub fn fail_next(&self, op: FaultOp, errno: i32) {
        self.fail_nth(op, 1, errno);
    }

    /// Fails `times` operations of kind `op`, starting with the `nth`
    /// (1-based, counted from now).
    pub fn fail_range(&self, op: FaultOp, nth: u64, times: u64, errno: i32) {
        self.lock().push(Rule {
            op,
            skip: nth.saturating_sub(1),
            times,
            errno,
        });
    }

    /// Removes every rule not yet used up.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// How many operations this plan has failed so far.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    /// How many disk operations of kind `op` the store has attempted while
    /// this plan was installed (failed ones included); `Any` sums all kinds.
    /// Lets tests see, for example, how many syncs a flush issued.
    pub fn seen(&self, op: FaultOp) -> u64 {
        match op.index() {
            Some(i) => self.seen[i].load(Ordering::SeqCst),
            None => self.seen.iter().map(|c| c.load(Ordering::SeqCst)).sum(),
        }
    }

    /// Called by a worker before a disk operation of kind `op`: the errno
    /// to fail it with, if a rule says so. Every matching rule counts the
    /// operation, whether or not it fires.
    pub(crate) fn check(&self, op: FaultOp) -> Option<i32> {
        if let Some(i) = op.index() {
            self.seen[i].fetch_add(1, Ordering::SeqCst);
        }
        let mut hit = None;
        let mut rules = self.lock();
        for r in rules.iter_mut() {
            if r.op != op && r.op != FaultOp::Any {
                continue;
            }
            if r.skip > 0 {
                r.skip -= 1;
            } else if r.times > 0 {
                r.times -= 1;
                hit = hit.or(Some(r.errno));
            }
        }
        rules.retain(|r| r.times > 0);
        drop(rules);
        if hit.is_some() {
            self.fired.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_counts_only_matching_ops() {
        let p = FaultPlan::new();
        p.fail_nth(FaultOp::Write, 2, libc::EIO);
        assert_eq!(p.check(FaultOp::Read), None);
        assert_eq!(p.check(FaultOp::Write), None);
        assert_eq!(p.check(FaultOp::Read), None);
        assert_eq!(p.check(FaultOp::Write), Some(libc::EIO));
        assert_eq!(p.check(FaultOp::Write), None);
        assert_eq!(p.fired(), 1);
    }

    #[test]
    fn any_matches_everything_and_range_repeats() {
        let p = FaultPlan::new();
        p.fail_range(FaultOp::Any, 1, 2, libc::ENOSPC);
        assert_eq!(p.check(FaultOp::Sync), Some(libc::ENOSPC));
        assert_eq!(p.check(FaultOp::Read), Some(libc::ENOSPC));
        assert_eq!(p.check(FaultOp::Read), None);
    }
}
