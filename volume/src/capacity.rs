//! A volume's usable capacity, from what each brick says of its disk
//! (`BrickStats` `capacity_bytes` and `free_bytes`).
//!
//! Per set, by the volume type:
//! - replicate: every brick holds a full copy, so the set holds what its
//!   smallest brick holds (min of total, min of free);
//! - disperse K+M: each brick holds one fragment of K, so K × the smallest
//!   brick;
//! - stripe of `count` columns: each brick holds one column, so `count` ×
//!   the smallest brick;
//! - distribute: the set's one brick.
//!
//! The volume is the sum over its sets. A brick that did not answer is left
//! out of its set's minimum as long as the set still has the quorum it
//! needs for writes (a replica or dispersed set); a set without redundancy
//! (stripe, distribute) needs all its bricks. Otherwise the capacity is
//! unknown and the answer is [`VolumeError::NoQuorum`].
//!
//! Only arithmetic here: asking the bricks is [`crate::Client::capacity`].

use crate::error::{Result, VolumeError};
use crate::replicate::Quorum;
use crate::spec::{VolumeKind, VolumeSpec};

/// What a volume can hold, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// Usable size of the volume.
    pub total_bytes: u64,
    /// Usable free space (what the bricks' file systems give an
    /// unprivileged writer).
    pub free_bytes: u64,
}

/// One brick's answer: `(capacity_bytes, free_bytes)`, `None` if it did not
/// answer.
pub type BrickSpace = Option<(u64, u64)>;

/// The capacity of `spec`'s volume from its bricks' answers (one per brick
/// of `spec.bricks`, in order).
pub fn of_bricks(spec: &VolumeSpec, bricks: &[BrickSpace]) -> Result<Capacity> {
    let n = spec.kind.set_size();
    if n == 0 || bricks.len() != spec.bricks.len() || bricks.len() % n != 0 {
        return Err(VolumeError::Spec {
            volume: spec.name.clone(),
            reason: format!(
                "{} brick answers for {} bricks in sets of {n}",
                bricks.len(),
                spec.bricks.len()
            ),
        });
    }
    let (quorum, width) = match spec.kind {
        VolumeKind::Replicate { .. } => (Quorum::from_spec(spec, n)?, 1),
        VolumeKind::Disperse { data, .. } => (
            Quorum::for_disperse(spec, data as usize, n)?,
            u64::from(data),
        ),
        VolumeKind::Stripe { count } => (all(n), u64::from(count)),
        VolumeKind::Distribute => (all(n), 1),
    };
    let mut sum = Capacity::default();
    for set in bricks.chunks(n) {
        let ok: Vec<bool> = set.iter().map(Option::is_some).collect();
        if !quorum.met(&ok) {
            return Err(VolumeError::NoQuorum {
                volume: spec.name.clone(),
                op: "capacity",
                need: quorum.need,
                set: n,
                up: ok.iter().filter(|b| **b).count(),
            });
        }
        let answers = set.iter().flatten();
        let total = answers.clone().map(|a| a.0).min().unwrap_or(0);
        let free = answers.map(|a| a.1).min().unwrap_or(0);
        sum.total_bytes = sum.total_bytes.saturating_add(total.saturating_mul(width));
        sum.free_bytes = sum.free_bytes.saturating_add(free.saturating_mul(width));
    }
    Ok(sum)
}

/// Every brick of a set of `n`.
fn all(n: usize) -> Quorum {
    Quorum {
        need: n,
        first_required: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::VolumeState;
    use std::collections::BTreeMap;

    fn spec(kind: VolumeKind, bricks: usize) -> VolumeSpec {
        VolumeSpec {
            name: "v".into(),
            id: 1,
            generation: 1,
            kind,
            state: VolumeState::Started,
            chunk_size: crate::DEFAULT_CHUNK_SIZE,
            bricks: (0..bricks)
                .map(|i| format!("127.0.0.1:{}", 7000 + i))
                .collect(),
            options: BTreeMap::new(),
        }
    }

    const G: u64 = 1 << 30;

    fn cap(total: u64, free: u64) -> Capacity {
        Capacity {
            total_bytes: total,
            free_bytes: free,
        }
    }

    #[test]
    fn replicate_is_the_smallest_brick_of_each_set_summed() {
        let s = spec(VolumeKind::Replicate { replica: 3 }, 6);
        let b = [
            Some((10 * G, 4 * G)),
            Some((12 * G, 3 * G)),
            Some((11 * G, 5 * G)),
            Some((20 * G, 20 * G)),
            Some((20 * G, 19 * G)),
            Some((30 * G, 25 * G)),
        ];
        assert_eq!(of_bricks(&s, &b).unwrap(), cap(30 * G, 22 * G));
    }

    #[test]
    fn a_dead_brick_is_skipped_while_the_set_has_quorum() {
        let s = spec(VolumeKind::Replicate { replica: 3 }, 3);
        let b = [None, Some((12 * G, 3 * G)), Some((11 * G, 5 * G))];
        assert_eq!(of_bricks(&s, &b).unwrap(), cap(11 * G, 3 * G));
        let b = [None, None, Some((11 * G, 5 * G))];
        assert!(matches!(
            of_bricks(&s, &b),
            Err(VolumeError::NoQuorum { need: 2, up: 1, .. })
        ));
    }

    #[test]
    fn disperse_is_k_times_the_smallest_fragment_brick() {
        let s = spec(
            VolumeKind::Disperse {
                data: 4,
                redundancy: 2,
            },
            6,
        );
        let mut b = vec![Some((10 * G, 6 * G)); 6];
        b[3] = Some((8 * G, 7 * G));
        assert_eq!(of_bricks(&s, &b).unwrap(), cap(32 * G, 24 * G));
        // K + 1 of 6 make quorum (auto): one brick may be missing.
        b[0] = None;
        assert_eq!(of_bricks(&s, &b).unwrap(), cap(32 * G, 24 * G));
        b[1] = None;
        assert!(matches!(
            of_bricks(&s, &b),
            Err(VolumeError::NoQuorum { need: 5, .. })
        ));
    }

    #[test]
    fn stripe_and_distribute_need_every_brick() {
        let s = spec(VolumeKind::Stripe { count: 2 }, 4);
        let b = [
            Some((10 * G, 2 * G)),
            Some((9 * G, 3 * G)),
            Some((5 * G, 5 * G)),
            Some((5 * G, 4 * G)),
        ];
        assert_eq!(of_bricks(&s, &b).unwrap(), cap(28 * G, 12 * G));
        let s = spec(VolumeKind::Distribute, 2);
        let b = [Some((10 * G, 2 * G)), Some((9 * G, 3 * G))];
        assert_eq!(of_bricks(&s, &b).unwrap(), cap(19 * G, 5 * G));
        assert!(of_bricks(&s, &[Some((1, 1)), None]).is_err());
    }

    #[test]
    fn answers_that_do_not_fit_the_spec_are_refused() {
        let s = spec(VolumeKind::Replicate { replica: 3 }, 3);
        assert!(matches!(
            of_bricks(&s, &[Some((1, 1))]),
            Err(VolumeError::Spec { .. })
        ));
    }
}
