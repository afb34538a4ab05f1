//! The operations the tester runs and the seeded generator that picks them
//! from the model's current state (mostly valid operations, some that must
//! fail with a given errno).

use std::fmt;

use crate::model::Model;
use crate::rng::Rng;

/// One file operation on slots of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `open(O_CREAT|O_EXCL|O_RDWR, 0644)`.
    Create { slot: usize },
    /// `pwrite` of `len` bytes made from `fill` at `off`.
    Write {
        slot: usize,
        off: u64,
        len: u64,
        fill: u64,
    },
    /// `pread`, checked byte for byte.
    Read { slot: usize, off: u64, len: u64 },
    /// `ftruncate` (grow or shrink).
    Truncate { slot: usize, size: u64 },
    /// `fallocate(FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE)`.
    PunchHole { slot: usize, off: u64, len: u64 },
    /// `fallocate(FALLOC_FL_ZERO_RANGE[|FALLOC_FL_KEEP_SIZE])`.
    ZeroRange {
        slot: usize,
        off: u64,
        len: u64,
        keep_size: bool,
    },
    /// `fallocate(0)`: reserves space, grows the size.
    Allocate { slot: usize, off: u64, len: u64 },
    /// `rename(from, to)`.
    Rename { from: usize, to: usize },
    /// `link(from, to)`.
    Link { from: usize, to: usize },
    /// `unlink`.
    Unlink { slot: usize },
    /// `fsync` on the open descriptor.
    Fsync { slot: usize },
    /// Close the file's descriptor, open it again by this name, read it whole.
    Reopen { slot: usize },
    /// `lseek(SEEK_DATA)` and `lseek(SEEK_HOLE)` from `off`: what they call a
    /// hole must read as zeros, and both stay within the file.
    Seek { slot: usize, off: u64 },
    /// Open by name with `O_APPEND`, write `len` bytes from `fill`, close.
    Append { slot: usize, len: u64, fill: u64 },
    /// Open by name with `O_TRUNC`, close.
    OpenTrunc { slot: usize },
    /// Read through a shared read-only `mmap` (within the file's size).
    MapRead { slot: usize, off: u64, len: u64 },
    /// Write through a shared `mmap` (the file first grown with `ftruncate`
    /// if the range ends past its end), then `msync(MS_SYNC)`.
    MapWrite {
        slot: usize,
        off: u64,
        len: u64,
        fill: u64,
    },
}

/// The relative path of slot `s`: even slots at the top, odd ones in `sub/`,
/// so renames and links also cross directories.
pub fn slot_path(s: usize) -> String {
    if s % 2 == 0 {
        format!("f{s}")
    } else {
        format!("sub/f{s}")
    }
}

impl Op {
    /// A short name of the operation's kind (for counts).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Write { .. } => "write",
            Op::Read { .. } => "read",
            Op::Truncate { .. } => "truncate",
            Op::PunchHole { .. } => "punch",
            Op::ZeroRange { .. } => "zero",
            Op::Allocate { .. } => "allocate",
            Op::Rename { .. } => "rename",
            Op::Link { .. } => "link",
            Op::Unlink { .. } => "unlink",
            Op::Fsync { .. } => "fsync",
            Op::Reopen { .. } => "reopen",
            Op::Seek { .. } => "seek",
            Op::Append { .. } => "append",
            Op::OpenTrunc { .. } => "open-trunc",
            Op::MapRead { .. } => "mapread",
            Op::MapWrite { .. } => "mapwrite",
        }
    }

    /// Every kind, in the order counts are printed.
    pub const KINDS: [&'static str; 17] = [
        "create",
        "write",
        "read",
        "truncate",
        "punch",
        "zero",
        "allocate",
        "rename",
        "link",
        "unlink",
        "fsync",
        "reopen",
        "seek",
        "append",
        "open-trunc",
        "mapread",
        "mapwrite",
    ];
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = slot_path;
        match *self {
            Op::Create { slot } => write!(f, "create {}", p(slot)),
            Op::Write {
                slot,
                off,
                len,
                fill,
            } => write!(
                f,
                "write {} {off:#x}+{len:#x} (..{:#x}) fill {fill:#x}",
                p(slot),
                off + len
            ),
            Op::Read { slot, off, len } => {
                write!(f, "read {} {off:#x}+{len:#x} (..{:#x})", p(slot), off + len)
            }
            Op::Truncate { slot, size } => write!(f, "truncate {} to {size:#x}", p(slot)),
            Op::PunchHole { slot, off, len } => write!(
                f,
                "punch-hole {} {off:#x}+{len:#x} (..{:#x})",
                p(slot),
                off + len
            ),
            Op::ZeroRange {
                slot,
                off,
                len,
                keep_size,
            } => write!(
                f,
                "zero-range{} {} {off:#x}+{len:#x} (..{:#x})",
                if keep_size { "+keep-size" } else { "" },
                p(slot),
                off + len
            ),
            Op::Allocate { slot, off, len } => write!(
                f,
                "allocate {} {off:#x}+{len:#x} (..{:#x})",
                p(slot),
                off + len
            ),
            Op::Rename { from, to } => write!(f, "rename {} -> {}", p(from), p(to)),
            Op::Link { from, to } => write!(f, "link {} -> {}", p(from), p(to)),
            Op::Unlink { slot } => write!(f, "unlink {}", p(slot)),
            Op::Fsync { slot } => write!(f, "fsync {}", p(slot)),
            Op::Reopen { slot } => write!(f, "close+reopen {}", p(slot)),
            Op::Seek { slot, off } => write!(f, "seek-data/hole {} from {off:#x}", p(slot)),
            Op::Append { slot, len, fill } => {
                write!(f, "append {} +{len:#x} fill {fill:#x}", p(slot))
            }
            Op::OpenTrunc { slot } => write!(f, "open(O_TRUNC) {}", p(slot)),
            Op::MapRead { slot, off, len } => write!(
                f,
                "mapread {} {off:#x}+{len:#x} (..{:#x})",
                p(slot),
                off + len
            ),
            Op::MapWrite {
                slot,
                off,
                len,
                fill,
            } => write!(
                f,
                "mapwrite {} {off:#x}+{len:#x} (..{:#x}) fill {fill:#x}",
                p(slot),
                off + len
            ),
        }
    }
}

/// Which operations the file system under test supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// `FALLOC_FL_PUNCH_HOLE`.
    pub punch_hole: bool,
    /// `FALLOC_FL_ZERO_RANGE`.
    pub zero_range: bool,
    /// `fallocate` mode 0.
    pub allocate: bool,
    /// `link(2)`.
    pub links: bool,
    /// Shared `mmap` reads and writes.
    pub mmap: bool,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            punch_hole: true,
            zero_range: true,
            allocate: true,
            links: true,
            mmap: true,
        }
    }
}

/// Size limits of the generated operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// No operation makes a file larger than this.
    pub max_size: u64,
    /// The largest write, read or range.
    pub max_io: u64,
}

/// Picks the next operation from the model's state.
pub fn generate(rng: &mut Rng, model: &Model, features: Features, limits: Limits) -> Op {
    let occupied = model.occupied();
    let empty = model.empty();
    if occupied.is_empty() {
        return Op::Create {
            slot: *rng.pick(&empty),
        };
    }
    let any = rng.below(model.slots() as u64) as usize;
    let file = *rng.pick(&occupied);
    let size = model.file(file).map_or(0, |i| i.data.len() as u64);
    loop {
        let op = match rng.below(112) {
            0..=21 => {
                let (off, len) = range(rng, size, limits);
                Op::Write {
                    slot: file,
                    off,
                    len,
                    fill: rng.next(),
                }
            }
            41..=43 => Op::Seek {
                slot: file,
                off: if rng.below(8) == 0 {
                    size + rng.below(4096)
                } else {
                    rng.below(size.max(1))
                },
            },
            22..=40 => {
                // Reads may run past the end of the file.
                let off = offset(rng, size, limits.max_size);
                Op::Read {
                    slot: file,
                    off,
                    len: length(rng, limits.max_io),
                }
            }
            44..=51 => Op::Truncate {
                slot: file,
                size: match rng.below(3) {
                    0 => rng.below(size + 1),
                    1 => rng.below(limits.max_size + 1),
                    _ => (size + rng.below(8192)).min(limits.max_size),
                },
            },
            52..=57 if features.punch_hole => {
                let off = offset(rng, size, limits.max_size);
                Op::PunchHole {
                    slot: file,
                    off,
                    len: length(rng, limits.max_io),
                }
            }
            58..=63 if features.zero_range => {
                let keep_size = rng.below(2) == 0;
                let (off, len) = range(rng, size, limits);
                Op::ZeroRange {
                    slot: file,
                    off,
                    len,
                    keep_size,
                }
            }
            64..=66 if features.allocate => {
                let (off, len) = range(rng, size, limits);
                Op::Allocate {
                    slot: file,
                    off,
                    len,
                }
            }
            67..=73 => Op::Create {
                // Mostly a free name; now and then a taken one (EEXIST).
                slot: if !empty.is_empty() && rng.below(10) != 0 {
                    *rng.pick(&empty)
                } else {
                    any
                },
            },
            74..=80 => Op::Rename {
                from: if rng.below(20) == 0 { any } else { file },
                to: rng.below(model.slots() as u64) as usize,
            },
            81..=85 if features.links => Op::Link {
                from: file,
                to: if !empty.is_empty() && rng.below(10) != 0 {
                    *rng.pick(&empty)
                } else {
                    any
                },
            },
            86..=91 => Op::Unlink {
                slot: if rng.below(20) == 0 { any } else { file },
            },
            92..=94 => Op::Fsync { slot: file },
            95..=99 => Op::Reopen { slot: file },
            100..=102 => Op::Append {
                slot: file,
                len: length(rng, limits.max_io).min(limits.max_size.saturating_sub(size)),
                fill: rng.next(),
            },
            103..=104 => Op::OpenTrunc { slot: file },
            105..=108 if features.mmap => {
                let off = rng.below(size.max(1));
                Op::MapRead {
                    slot: file,
                    off,
                    len: length(rng, limits.max_io),
                }
            }
            109..=111 if features.mmap => {
                let (off, len) = range(rng, size, limits);
                Op::MapWrite {
                    slot: file,
                    off,
                    len,
                    fill: rng.next(),
                }
            }
            _ => continue,
        };
        return op;
    }
}

/// An offset: anywhere, near the end of the file, page-aligned, or inside.
fn offset(rng: &mut Rng, size: u64, max_size: u64) -> u64 {
    let off = match rng.below(4) {
        0 => rng.below(max_size),
        1 => size.saturating_sub(rng.below(8192)) + rng.below(8192),
        2 => rng.below(max_size / 4096) * 4096,
        _ => rng.below(size + 1),
    };
    off.min(max_size - 1)
}

/// A length: small, whole pages, or anything up to `max_io`.
fn length(rng: &mut Rng, max_io: u64) -> u64 {
    match rng.below(3) {
        0 => 1 + rng.below(512),
        1 => (1 + rng.below((max_io / 4096).max(1))) * 4096,
        _ => 1 + rng.below(max_io),
    }
}

/// An `(offset, length)` that stays within `max_size`.
fn range(rng: &mut Rng, size: u64, limits: Limits) -> (u64, u64) {
    let off = offset(rng, size, limits.max_size);
    let len = length(rng, limits.max_io).min(limits.max_size - off);
    (off, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ops_stay_within_limits_and_cover_every_kind() {
        let limits = Limits {
            max_size: 64 * 1024,
            max_io: 16 * 1024,
        };
        let mut rng = Rng::new(42);
        let mut model = Model::new(6);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20_000 {
            let op = generate(&mut rng, &model, Features::default(), limits);
            seen.insert(op.kind());
            let _ = model.apply(&op);
            for s in model.occupied() {
                assert!(model.file(s).unwrap().data.len() as u64 <= limits.max_size);
            }
        }
        assert_eq!(seen.len(), Op::KINDS.len(), "{seen:?}");
    }

    #[test]
    fn disabled_features_are_never_generated() {
        let limits = Limits {
            max_size: 4096,
            max_io: 1024,
        };
        let features = Features {
            punch_hole: false,
            zero_range: false,
            allocate: false,
            links: false,
            mmap: false,
        };
        let mut rng = Rng::new(1);
        let mut model = Model::new(4);
        for _ in 0..5000 {
            let op = generate(&mut rng, &model, features, limits);
            assert!(
                !matches!(
                    op,
                    Op::PunchHole { .. }
                        | Op::ZeroRange { .. }
                        | Op::Allocate { .. }
                        | Op::Link { .. }
                        | Op::MapRead { .. }
                        | Op::MapWrite { .. }
                ),
                "{op}"
            );
            let _ = model.apply(&op);
        }
    }

    #[test]
    fn one_seed_gives_one_sequence() {
        let limits = Limits {
            max_size: 1 << 20,
            max_io: 1 << 16,
        };
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let mut model = Model::new(8);
            (0..1000)
                .map(|_| {
                    let op = generate(&mut rng, &model, Features::default(), limits);
                    let _ = model.apply(&op);
                    op
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }
}
