//! The volume description (volfile) as the client and the management
//! commands see it. Its byte encoding lives in [`crate::volfile`].

use std::collections::BTreeMap;
use std::fmt;

/// Default chunk size: objects are cut into chunks of this many bytes, and
/// chunk `i` of an object lives on set `hash(fid, i) % sets`.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;

/// How a volume lays its chunks over its bricks (GlusterFS volume types).
/// Several sets of one kind make the `distributed-*` variants: the brick
/// list is cut into sets of [`VolumeKind::set_size`] bricks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// Each chunk on one brick, placed by hash; no redundancy.
    Distribute,
    /// Each chunk mirrored on every brick of its set of `replica` bricks.
    Replicate {
        /// Bricks per set (copies of each chunk).
        replica: u32,
    },
    /// Each object striped over the `count` bricks of its set in units of
    /// the `stripe-unit` option (default [`DEFAULT_STRIPE_UNIT`]): unit `n`
    /// of the object is on brick `n % count`. No redundancy.
    Stripe {
        /// Bricks per set (columns of the stripe).
        count: u32,
    },
    /// Each chunk cut into stripes of `data` fragments plus `redundancy`
    /// Reed-Solomon parity fragments, one per brick of a set of
    /// `data + redundancy` bricks; any `data` of them rebuild a stripe.
    Disperse {
        /// K: data fragments per stripe.
        data: u32,
        /// M: parity fragments per stripe (bricks that may be lost).
        redundancy: u32,
    },
}

/// Default stripe unit of a stripe volume (option `stripe-unit`).
pub const DEFAULT_STRIPE_UNIT: u64 = 128 << 10;

impl VolumeKind {
    /// Bricks per set.
    pub fn set_size(&self) -> usize {
        match self {
            VolumeKind::Distribute => 1,
            VolumeKind::Replicate { replica } => *replica as usize,
            VolumeKind::Stripe { count } => *count as usize,
            VolumeKind::Disperse { data, redundancy } => (*data + *redundancy) as usize,
        }
    }
}

impl fmt::Display for VolumeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeKind::Distribute => write!(f, "distribute"),
            VolumeKind::Replicate { replica } => write!(f, "replica {replica}"),
            VolumeKind::Stripe { count } => write!(f, "stripe {count}"),
            VolumeKind::Disperse { data, redundancy } => write!(f, "disperse {data}+{redundancy}"),
        }
    }
}

/// Life-cycle state of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeState {
    /// Made by `volume create`; clients may not attach yet.
    Created,
    /// `volume start`: clients may attach and do I/O.
    Started,
    /// `volume stop`: clients are refused; data stays.
    Stopped,
}

impl fmt::Display for VolumeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VolumeState::Created => "Created",
            VolumeState::Started => "Started",
            VolumeState::Stopped => "Stopped",
        })
    }
}

/// One volume's description: what every brick of the volume stores (all of
/// them the same, changed all-or-nothing) and what clients fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The volume's name (`[A-Za-z0-9_.-]{1,64}`).
    pub name: String,
    /// Its id: the `volume` part of every Fid in it, never 0 (0 is the pool's
    /// own table).
    pub id: u32,
    /// Layout.
    pub kind: VolumeKind,
    /// Bricks as `HOST:PORT`, in set order: set `s` is bricks
    /// `[s * set_size, (s + 1) * set_size)`.
    pub bricks: Vec<String>,
    /// Chunk size in bytes (a power of two, at least 1 MiB).
    pub chunk_size: u64,
    /// Options set with `volume set` (`quorum-type`, `quorum-count`,
    /// `ping-timeout`, ...); unset keys take their defaults.
    pub options: BTreeMap<String, String>,
    /// Life-cycle state.
    pub state: VolumeState,
    /// Bumped by every change; bricks refuse a description that is not newer
    /// than the one they hold, and clients reload when it moves.
    pub generation: u64,
}

impl VolumeSpec {
    /// Number of sets (`bricks.len() / set_size`).
    pub fn set_count(&self) -> usize {
        self.bricks.len() / self.kind.set_size().max(1)
    }

    /// The bricks of set `s`.
    pub fn set(&self, s: usize) -> &[String] {
        let n = self.kind.set_size();
        &self.bricks[s * n..(s + 1) * n]
    }

    /// An option's value, or `default` when unset.
    pub fn option<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.options.get(key).map(String::as_str).unwrap_or(default)
    }
}
