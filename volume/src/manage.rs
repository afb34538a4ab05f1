//! Volume management across a pool's bricks: `stretto volume create | start |
//! stop | delete | info | status | set | get | list`, and [`fetch`] for
//! clients.
//!
//! # Where things live
//!
//! Every brick keeps opaque volume configurations keyed by a `u32` id, each
//! with a generation that only moves forward (`GetVolConfig` /
//! `PutVolConfig`). Management stores, in the [`crate::volfile`] encoding:
//! - under id [`POOL_TABLE_ID`] (0), the pool's volume table (name → id and
//!   bricks, next id), on every brick of every volume;
//! - under a volume's id, its [`VolumeSpec`] (or a tombstone once deleted),
//!   on that volume's bricks;
//! - under [`STAGING_ID`], the last change the brick was asked to prepare.
//!
//! # How a command finds the pool
//!
//! A command is given any brick address (`--pool`). The table is read from
//! that brick, then from every brick the table names; the newest generation
//! wins. A brick that is in no volume holds no table: it is told about the
//! pool when a volume using it is created (every brick of the new volume gets
//! the table). `volume create` also reads the table from the bricks it is
//! given, so pointing `--pool` at a fresh brick still finds the pool as long
//! as one of the new volume's bricks is already in it. A brick that leaves
//! every volume (its last volume deleted) gets the table written by that
//! delete, and later reads through it still find the newest table by asking
//! the bricks that table names.
//!
//! # All-or-nothing changes
//!
//! A change is a set of configuration writes per brick. Before it, every
//! brick it touches must be reachable and every brick of the volume (or of
//! the pool, for the table) must hold the same generation (if they do not, an
//! earlier change stopped part way after it was decided, and its newest
//! generation is first copied to the bricks that missed it: a committed
//! generation anywhere means every brick had staged it). Then:
//! 1. **prepare**: every brick is read again (still at the generation seen?)
//!    and stores the whole change under [`STAGING_ID`] — this proves each
//!    brick reachable and its metadata writable before anything visible
//!    changes;
//! 2. **commit**: the new generations are written, volume descriptions
//!    first and the pool table last, so a brick that lists a volume holds its
//!    description.
//!
//! Anything that fails before commit leaves every visible configuration as it
//! was. Two administrators changing the same volume at the same moment are
//! not serialised (there is no pool-wide lock); each brick's
//! generation check makes the loser fail, possibly part way, and the next
//! change repairs it as above.
//!
//! This module must not print: the command line formats what it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use thiserror::Error;
use transport::wire::{BrickStats, ErrorCode, GetVolConfig, PutVolConfig, VolConfig};
use transport::{ClientOptions, Payload, Request, Response, Secret, TcpClient, TransportError};

use crate::spec::{VolumeKind, VolumeSpec, VolumeState};
use crate::volfile::{
    self, images_id, ImageEntry, ImageTable, PoolEntry, PoolTable, Record, StagedWrite,
    VolfileError, MAX_VOLUME_ID, POOL_TABLE_ID, STAGING_ID,
};

/// Options `volume set` accepts, with their defaults (what `volume get`
/// shows when unset).
pub const OPTIONS: &[(&str, &str)] = &[
    ("quorum-type", "auto"),
    ("quorum-count", "(unset)"),
    ("ping-timeout", "10"),
    ("transport", "tcp"),
];

/// Smallest chunk size a volume may have.
pub const MIN_CHUNK_SIZE: u64 = 1 << 20;
/// Longest volume name.
pub const MAX_NAME_LEN: usize = 64;

/// What went wrong; nothing was changed unless the variant says so
/// ([`ManageError::PartialCommit`]).
#[derive(Debug, Error)]
pub enum ManageError {
    #[error("bad volume name {name:?}: use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ . - (not starting with - or .)")]
    BadName { name: String },
    #[error("bad brick address {brick:?}: expected HOST:PORT")]
    BadBrick { brick: String },
    #[error("brick {brick} is listed twice")]
    DuplicateBrick { brick: String },
    #[error("a volume needs at least one brick")]
    NoBricks,
    #[error("replica {replica} is not allowed: a replicated volume needs at least 2 copies")]
    BadReplica { replica: u32 },
    #[error("replica {replica} needs a multiple of {replica} bricks, got {got}")]
    BrickCount { replica: u32, got: usize },
    #[error("disperse {data}+{redundancy} is not allowed: {reason}")]
    BadDisperse {
        data: u32,
        redundancy: u32,
        reason: &'static str,
    },
    #[error("disperse {data}+{redundancy} needs a multiple of {} bricks, got {got}", data + redundancy)]
    DisperseBrickCount {
        data: u32,
        redundancy: u32,
        got: usize,
    },
    #[error("bad chunk size {size}: must be a power of two of at least 1 MiB")]
    BadChunkSize { size: u64 },
    #[error("no volume named {name}")]
    NoSuchVolume { name: String },
    #[error("a volume named {name} already exists (id {id})")]
    Exists { name: String, id: u32 },
    #[error("volume {name} is {state}: {hint}")]
    BadState {
        name: String,
        state: VolumeState,
        hint: &'static str,
    },
    #[error("unknown option {key:?} (known: quorum-type, quorum-count, ping-timeout, transport)")]
    UnknownOption { key: String },
    #[error("bad value {value:?} for {key}: expected {expected}")]
    BadValue {
        key: String,
        value: String,
        expected: String,
    },
    #[error("no pool brick given (use --pool HOST:PORT or STRETTO_POOL)")]
    NoPool,
    #[error("brick {brick} is unreachable")]
    Unreachable {
        brick: String,
        #[source]
        source: TransportError,
    },
    #[error("no brick of {what} is reachable (tried {tried})")]
    NothingReachable { what: String, tried: String },
    #[error("brick {brick} failed {op}")]
    Call {
        brick: String,
        op: &'static str,
        #[source]
        source: TransportError,
    },
    #[error("brick {brick} refused {op}: {message} ({code:?})")]
    Refused {
        brick: String,
        op: &'static str,
        code: ErrorCode,
        message: String,
    },
    #[error("brick {brick} sent an unexpected reply to {op}")]
    Unexpected { brick: String, op: &'static str },
    #[error("brick {brick} holds an unreadable configuration {id}")]
    Corrupt {
        brick: String,
        id: u32,
        #[source]
        source: VolfileError,
    },
    #[error("brick {brick} holds {what} under configuration {id} where a {expected} was expected")]
    WrongRecord {
        brick: String,
        id: u32,
        what: &'static str,
        expected: &'static str,
    },
    #[error("brick {brick} already holds volume {other} under id {id} (another pool?)")]
    IdTaken {
        brick: String,
        id: u32,
        other: String,
    },
    #[error("brick {brick} changed configuration {id} while this change was being prepared (generation {seen} became {now}); nothing was changed, try again")]
    Raced {
        brick: String,
        id: u32,
        seen: u64,
        now: u64,
    },
    #[error("the pool has used every volume id")]
    IdsExhausted,
    #[error("cannot encode the new description")]
    Encode(#[source] VolfileError),
    #[error("bad image name {name:?}: use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ . - (not starting with - or .)")]
    BadImageName { name: String },
    #[error("volume {volume} has no image named {name}")]
    NoSuchImage { volume: String, name: String },
    #[error("volume {volume} already has an image named {name}")]
    ImageExists { volume: String, name: String },
    #[error("bad image size {size}: {why}")]
    BadImageSize { size: u64, why: &'static str },
    #[error("image {name} is {size} bytes; shrinking to {requested} would drop data past the new end (not supported: create a smaller image and copy into it)")]
    Shrink {
        name: String,
        size: u64,
        requested: u64,
    },
    #[error("volume {volume} has used every image vnode")]
    VnodesExhausted { volume: String },
    #[error("brick {brick} is not a brick of volume {name}")]
    NotInVolume { brick: String, name: String },
    #[error("brick {brick} is already a brick of volume {volume}")]
    BrickInUse { brick: String, volume: String },
    #[error("brick {brick} holds another volume, {volume}, under id {id} (another pool?)")]
    NotFresh {
        brick: String,
        id: u32,
        volume: String,
    },
    #[error("{what} stopped part way: {done} of {total} writes committed; the next change to it completes it")]
    PartialCommit {
        what: String,
        done: usize,
        total: usize,
        #[source]
        source: Box<ManageError>,
    },
}

/// One brick's line in `volume status`.
#[derive(Debug, Clone)]
pub struct BrickStatus {
    /// `HOST:PORT`.
    pub brick: String,
    /// Reachable and authenticated.
    pub online: bool,
    /// The generation of the volume's description it holds, if it answered.
    pub generation: Option<u64>,
    /// Counters (with `detail`).
    pub stats: Option<BrickStats>,
    /// Why it is not online.
    pub error: Option<String>,
}

/// `volume status`: the description and every brick's state.
#[derive(Debug, Clone)]
pub struct VolumeStatus {
    /// The newest description found.
    pub spec: VolumeSpec,
    /// One entry per brick, in set order.
    pub bricks: Vec<BrickStatus>,
}

// ---------------------------------------------------------------------
// Public operations

/// Creates volume `name` (state `Created`) on `bricks`, all-or-nothing:
/// every brick of the volume and of the pool must be reachable.
pub async fn create(
    pool: &[String],
    secret: &Secret,
    name: &str,
    kind: VolumeKind,
    bricks: &[String],
    chunk_size: u64,
) -> Result<VolumeSpec, ManageError> {
    check_name(name)?;
    check_bricks(kind, bricks)?;
    if chunk_size < MIN_CHUNK_SIZE || !chunk_size.is_power_of_two() {
        return Err(ManageError::BadChunkSize { size: chunk_size });
    }
    let mut s = Session::new(secret);
    // The new volume's bricks must all be there; say which one is not
    // before reading anything else.
    for b in bricks {
        s.connect(b).await?;
    }
    let mut ask: Vec<String> = pool.to_vec();
    ask.extend(bricks.iter().cloned());
    let view = s.read_table(&ask).await?;
    if let Some(e) = view.table.volumes.get(name) {
        return Err(ManageError::Exists {
            name: name.into(),
            id: e.id,
        });
    }
    let members = view.table.members();
    let (table_gens, _) = s.agree(&members, POOL_TABLE_ID).await?;
    let mut participants: BTreeSet<String> = members.clone();
    participants.extend(bricks.iter().cloned());
    let mut table_gen = 0;
    let mut seen_table = BTreeMap::new();
    for b in &participants {
        let g = match table_gens.get(b) {
            Some(g) => *g,
            None => s.get(b, POOL_TABLE_ID).await?.map_or(0, |c| c.generation),
        };
        seen_table.insert(b.clone(), g);
        table_gen = table_gen.max(g);
    }
    let table_gen = table_gen + 1;

    let id = view.table.next_id.max(1);
    if id > MAX_VOLUME_ID {
        return Err(ManageError::IdsExhausted);
    }
    let mut spec_gen = 0;
    let mut seen_spec = BTreeMap::new();
    for b in bricks {
        let cur = s.get(b, id).await?;
        if let Some(c) = &cur {
            if let Record::Volume(other) = decode_at(b, id, &c.config)? {
                return Err(ManageError::IdTaken {
                    brick: b.clone(),
                    id,
                    other: other.name,
                });
            }
        }
        let g = cur.map_or(0, |c| c.generation);
        seen_spec.insert(b.clone(), g);
        spec_gen = spec_gen.max(g);
    }
    let spec = VolumeSpec {
        name: name.to_string(),
        id,
        kind,
        bricks: bricks.to_vec(),
        chunk_size,
        options: BTreeMap::new(),
        state: VolumeState::Created,
        generation: spec_gen + 1,
    };
    let mut table = view.table.clone();
    table.next_id = id + 1;
    table.volumes.insert(
        name.to_string(),
        PoolEntry {
            id,
            bricks: bricks.to_vec(),
        },
    );
    let spec_bytes = volfile::encode_spec(&spec).map_err(ManageError::Encode)?;
    let table_bytes = volfile::encode(&Record::PoolTable(table)).map_err(ManageError::Encode)?;
    let mut change = Change::default();
    for b in bricks {
        change.add(b, id, seen_spec[b], spec.generation, &spec_bytes);
    }
    for b in &participants {
        change.add(b, POOL_TABLE_ID, seen_table[b], table_gen, &table_bytes);
    }
    s.apply(change, &format!("creating volume {name}")).await?;
    Ok(spec)
}

/// Starts a volume (`Created` or `Stopped` → `Started`).
pub async fn start(
    pool: &[String],
    secret: &Secret,
    name: &str,
) -> Result<VolumeSpec, ManageError> {
    modify(pool, secret, name, |spec| match spec.state {
        VolumeState::Started => Err(ManageError::BadState {
            name: spec.name.clone(),
            state: spec.state,
            hint: "it is already started",
        }),
        _ => {
            spec.state = VolumeState::Started;
            Ok(())
        }
    })
    .await
}

/// Stops a started volume.
pub async fn stop(pool: &[String], secret: &Secret, name: &str) -> Result<VolumeSpec, ManageError> {
    modify(pool, secret, name, |spec| match spec.state {
        VolumeState::Started => {
            spec.state = VolumeState::Stopped;
            Ok(())
        }
        _ => Err(ManageError::BadState {
            name: spec.name.clone(),
            state: spec.state,
            hint: "only a started volume can be stopped",
        }),
    })
    .await
}

/// Sets option `key` to `value` (validated; see [`OPTIONS`]).
pub async fn set(
    pool: &[String],
    secret: &Secret,
    name: &str,
    key: &str,
    value: &str,
) -> Result<VolumeSpec, ManageError> {
    modify(pool, secret, name, |spec| {
        let v = check_option(spec, key, value)?;
        spec.options.insert(key.to_string(), v);
        Ok(())
    })
    .await
}

/// An option's effective value, or every option's with `key == "all"`.
pub async fn get(
    pool: &[String],
    secret: &Secret,
    name: &str,
    key: &str,
) -> Result<Vec<(String, String)>, ManageError> {
    if key != "all" && !OPTIONS.iter().any(|(k, _)| *k == key) {
        return Err(ManageError::UnknownOption { key: key.into() });
    }
    let spec = fetch(pool, secret, name).await?;
    Ok(OPTIONS
        .iter()
        .filter(|(k, _)| key == "all" || *k == key)
        .map(|(k, d)| (k.to_string(), spec.option(k, d).to_string()))
        .collect())
}

/// Deletes a volume that is `Created` or `Stopped`: its bricks get a
/// tombstone, and every brick of the pool a table without it.
pub async fn delete(pool: &[String], secret: &Secret, name: &str) -> Result<(), ManageError> {
    let mut s = Session::new(secret);
    let view = s.read_table(pool).await?;
    let entry = view.entry(name)?;
    let (spec_gens, spec) = s.current_spec(name, &entry).await?;
    if spec.state == VolumeState::Started {
        return Err(ManageError::BadState {
            name: name.into(),
            state: spec.state,
            hint: "stop it first",
        });
    }
    let members = view.table.members();
    let (table_gens, _) = s.agree(&members, POOL_TABLE_ID).await?;
    let table_gen = table_gens.values().copied().max().unwrap_or(0) + 1;
    let mut table = view.table.clone();
    table.volumes.remove(name);
    let tomb = volfile::encode(&Record::Deleted {
        id: entry.id,
        name: name.into(),
        generation: spec.generation + 1,
    })
    .map_err(ManageError::Encode)?;
    let table_bytes = volfile::encode(&Record::PoolTable(table)).map_err(ManageError::Encode)?;
    let mut change = Change::default();
    for b in &entry.bricks {
        change.add(b, entry.id, spec_gens[b], spec.generation + 1, &tomb);
    }
    for b in &members {
        change.add(b, POOL_TABLE_ID, table_gens[b], table_gen, &table_bytes);
    }
    s.apply(change, &format!("deleting volume {name}")).await
}

/// The description of `name`, for `volume info`.
pub async fn info(pool: &[String], secret: &Secret, name: &str) -> Result<VolumeSpec, ManageError> {
    fetch(pool, secret, name).await
}

/// Names of the pool's volumes, sorted.
pub async fn list(pool: &[String], secret: &Secret) -> Result<Vec<String>, ManageError> {
    let mut s = Session::new(secret);
    let view = s.read_table(pool).await?;
    Ok(view.table.volumes.keys().cloned().collect())
}

/// For clients: the newest description of `name` any reachable brick holds.
pub async fn fetch(
    pool: &[String],
    secret: &Secret,
    name: &str,
) -> Result<VolumeSpec, ManageError> {
    let mut s = Session::new(secret);
    let view = s.read_table(pool).await?;
    let entry = view.entry(name)?;
    let Some((b, c)) = s.newest(&entry.bricks, entry.id).await? else {
        return Err(ManageError::NoSuchVolume { name: name.into() });
    };
    match decode_at(&b, entry.id, &c.config)? {
        Record::Volume(spec) => Ok(spec),
        Record::Deleted { .. } => Err(ManageError::NoSuchVolume { name: name.into() }),
        other => Err(wrong(&b, entry.id, &other, "volume description")),
    }
}

/// Every brick of `name`: reachable or not, the generation it holds, and
/// with `detail` its counters.
pub async fn status(
    pool: &[String],
    secret: &Secret,
    name: &str,
    detail: bool,
) -> Result<VolumeStatus, ManageError> {
    let spec = fetch(pool, secret, name).await?;
    let mut s = Session::new(secret);
    let mut bricks = Vec::new();
    for b in &spec.bricks {
        let mut st = BrickStatus {
            brick: b.clone(),
            online: false,
            generation: None,
            stats: None,
            error: None,
        };
        match s.get(b, spec.id).await {
            Ok(c) => {
                st.online = true;
                st.generation = c.map(|c| c.generation);
                if detail {
                    match s.stats(b).await {
                        Ok(x) => st.stats = Some(x),
                        Err(e) => st.error = Some(error_line(&e)),
                    }
                }
            }
            Err(e) => st.error = Some(error_line(&e)),
        }
        bricks.push(st);
    }
    Ok(VolumeStatus { spec, bricks })
}

/// The generation of configuration `id` on each of `bricks` (None: the
/// brick holds none). For tests and tools.
pub async fn generations(
    secret: &Secret,
    bricks: &[String],
    id: u32,
) -> Result<Vec<Option<u64>>, ManageError> {
    let mut s = Session::new(secret);
    let mut out = Vec::new();
    for b in bricks {
        out.push(s.get(b, id).await?.map(|c| c.generation));
    }
    Ok(out)
}

/// Parses a size like `65536`, `64K`, `64M`, `1G` (powers of 1024; an
/// optional trailing `B` or `iB` is accepted).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 10),
        'm' | 'M' => (&t[..t.len() - 1], 20),
        'g' | 'G' => (&t[..t.len() - 1], 30),
        't' | 'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

// ---------------------------------------------------------------------
// Validation

fn check_name(name: &str) -> Result<(), ManageError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ManageError::BadName { name: name.into() })
    }
}

fn check_bricks(kind: VolumeKind, bricks: &[String]) -> Result<(), ManageError> {
    if bricks.is_empty() {
        return Err(ManageError::NoBricks);
    }
    if let VolumeKind::Stripe { count } = kind {
        if count < 2 {
            return Err(ManageError::BadValue {
                key: "stripe".into(),
                value: count.to_string(),
                expected: "a stripe count of at least 2".into(),
            });
        }
        if bricks.len() % count as usize != 0 {
            return Err(ManageError::BadValue {
                key: "stripe".into(),
                value: count.to_string(),
                expected: format!(
                    "a brick count that is a multiple of {count} (got {})",
                    bricks.len()
                ),
            });
        }
    }
    if let VolumeKind::Replicate { replica } = kind {
        if replica < 2 {
            return Err(ManageError::BadReplica { replica });
        }
        if bricks.len() % replica as usize != 0 {
            return Err(ManageError::BrickCount {
                replica,
                got: bricks.len(),
            });
        }
    }
    if let VolumeKind::Disperse { data, redundancy } = kind {
        let bad = |reason| ManageError::BadDisperse {
            data,
            redundancy,
            reason,
        };
        if data < 2 {
            return Err(bad("needs at least 2 data fragments (use replica for 1)"));
        }
        if redundancy < 1 {
            return Err(bad("needs at least 1 redundancy fragment"));
        }
        if redundancy >= data {
            return Err(bad("redundancy must be less than data (use replica)"));
        }
        if data + redundancy > 256 {
            return Err(bad("more than 256 fragments per stripe"));
        }
        if bricks.len() % (data + redundancy) as usize != 0 {
            return Err(ManageError::DisperseBrickCount {
                data,
                redundancy,
                got: bricks.len(),
            });
        }
    }
    let mut seen = BTreeSet::new();
    for b in bricks {
        let bad = || ManageError::BadBrick { brick: b.clone() };
        let (host, port) = b.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || host.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        // Compare by socket address when the host is an IP literal, so
        // `[::1]:5` and `[0:0::1]:5` are the same brick.
        let canon = b
            .parse::<std::net::SocketAddr>()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| b.to_ascii_lowercase());
        if !seen.insert(canon) {
            return Err(ManageError::DuplicateBrick { brick: b.clone() });
        }
    }
    Ok(())
}

/// Checks `key = value` for `spec`; returns the value to store.
pub fn check_option(spec: &VolumeSpec, key: &str, value: &str) -> Result<String, ManageError> {
    let bad = |expected: String| ManageError::BadValue {
        key: key.into(),
        value: value.into(),
        expected,
    };
    match key {
        "quorum-type" => match value {
            "auto" | "fixed" | "none" => Ok(value.into()),
            _ => Err(bad("auto, fixed or none".into())),
        },
        "quorum-count" => {
            let max = spec.kind.set_size() as u64;
            // A dispersed set cannot take a write on fewer than K bricks.
            let min = match spec.kind {
                VolumeKind::Disperse { data, .. } => u64::from(data),
                _ => 1,
            };
            match value.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n.to_string()),
                _ => Err(bad(format!("a number of bricks from {min} to {max}"))),
            }
        }
        "ping-timeout" => match value.parse::<u64>() {
            Ok(n) if (1..=86_400).contains(&n) => Ok(n.to_string()),
            _ => Err(bad("seconds, from 1 to 86400".into())),
        },
        "transport" => match value {
            "tcp" | "rdma" | "rdma,tcp" | "tcp,rdma" => Ok(value.into()),
            _ => Err(bad("tcp, rdma, or rdma,tcp".into())),
        },
        "stripe-unit" => {
            // Moving the unit would move every byte already written.
            if !matches!(spec.kind, VolumeKind::Stripe { .. }) {
                return Err(bad("a stripe volume (this one is not)".into()));
            }
            if spec.state != VolumeState::Created {
                return Err(bad("to be set before the volume is first started".into()));
            }
            match parse_size(value) {
                Some(n) if n.is_power_of_two() && (4096..=spec.chunk_size).contains(&n) => {
                    Ok(n.to_string())
                }
                _ => Err(bad(format!(
                    "a power of two from 4K to the chunk size ({})",
                    spec.chunk_size
                ))),
            }
        }
        _ => Err(ManageError::UnknownOption { key: key.into() }),
    }
}

fn error_line(e: &ManageError) -> String {
    let mut line = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !line.contains(&t) {
            line.push_str(": ");
            line.push_str(&t);
        }
        src = s.source();
    }
    line
}

fn decode_at(brick: &str, id: u32, bytes: &[u8]) -> Result<Record, ManageError> {
    volfile::decode(bytes).map_err(|source| ManageError::Corrupt {
        brick: brick.into(),
        id,
        source,
    })
}

fn wrong(brick: &str, id: u32, rec: &Record, expected: &'static str) -> ManageError {
    ManageError::WrongRecord {
        brick: brick.into(),
        id,
        what: match rec {
            Record::Volume(_) => "a volume description",
            Record::Deleted { .. } => "a deleted volume",
            Record::PoolTable(_) => "a pool table",
            Record::Staged(_) => "a staged change",
            Record::Images(_) => "an image table",
        },
        expected,
    }
}

/// Start/stop/set: read the volume's description from all its bricks
/// (all reachable, same generation), change it with `f`, write it back
/// all-or-nothing.
async fn modify(
    pool: &[String],
    secret: &Secret,
    name: &str,
    f: impl FnOnce(&mut VolumeSpec) -> Result<(), ManageError>,
) -> Result<VolumeSpec, ManageError> {
    let mut s = Session::new(secret);
    let view = s.read_table(pool).await?;
    let entry = view.entry(name)?;
    let (gens, spec) = s.current_spec(name, &entry).await?;
    let mut new = spec.clone();
    f(&mut new)?;
    new.generation = spec.generation + 1;
    let bytes = volfile::encode_spec(&new).map_err(ManageError::Encode)?;
    let mut change = Change::default();
    for b in &entry.bricks {
        change.add(b, entry.id, gens[b], new.generation, &bytes);
    }
    s.apply(change, &format!("changing volume {name}")).await?;
    Ok(new)
}

/// What [`replace_brick`] did.
#[derive(Debug, Clone)]
pub struct Replaced {
    /// The new description (the new brick in the old one's place).
    pub spec: VolumeSpec,
    /// Set index of the replaced brick.
    pub set: usize,
    /// Was the old brick reachable (and so told it is out)? When it was
    /// not, it keeps the description it had, at an older generation,
    /// listing itself; the bricks that count no longer list it.
    pub old_reachable: bool,
}

/// `stretto volume replace-brick NAME OLD NEW`: puts brick `new` (running,
/// same pool secret, in no volume) in `old`'s place in volume `name`'s
/// brick list (same set, same position), all-or-nothing, on every
/// reachable brick of the volume, every brick of the pool (for the table)
/// and `new`, which also gets the volume's image table. `old` may be down:
/// the change is then made without it. It does not copy data: see
/// [`crate::heal::full_heal`].
pub async fn replace_brick(
    pool: &[String],
    secret: &Secret,
    name: &str,
    old: &str,
    new: &str,
) -> Result<Replaced, ManageError> {
    check_bricks(VolumeKind::Distribute, &[new.to_string()])?;
    let mut s = Session::new(secret);
    let view = s.read_table(pool).await?;
    let entry = view.entry(name)?;
    let Some(pos) = entry.bricks.iter().position(|b| b == old) else {
        return Err(ManageError::NotInVolume {
            brick: old.into(),
            name: name.into(),
        });
    };
    if let Some((v, _)) = view
        .table
        .volumes
        .iter()
        .find(|(_, e)| e.bricks.iter().any(|b| b == new))
    {
        return Err(ManageError::BrickInUse {
            brick: new.into(),
            volume: v.clone(),
        });
    }
    // The new brick must answer (and so share the secret) before anything
    // is read or written elsewhere.
    s.connect(new).await?;
    let new_spec_gen = match s.get(new, entry.id).await? {
        None => 0,
        Some(c) => match decode_at(new, entry.id, &c.config)? {
            // An old description of this very volume (a brick replaced
            // earlier and now put back) is overwritten; another volume
            // under this id means another pool.
            Record::Volume(other) if other.name != name => {
                return Err(ManageError::NotFresh {
                    brick: new.into(),
                    id: entry.id,
                    volume: other.name,
                })
            }
            _ => c.generation,
        },
    };
    let old_reachable = match s.connect(old).await {
        Ok(_) => true,
        Err(ManageError::Unreachable { .. }) => false,
        Err(e) => return Err(e),
    };
    // The bricks that decide: the volume's, without the old one if it is
    // down.
    let keep: Vec<String> = entry
        .bricks
        .iter()
        .filter(|b| old_reachable || b.as_str() != old)
        .cloned()
        .collect();
    let spec_entry = PoolEntry {
        id: entry.id,
        bricks: keep.clone(),
    };
    let (spec_gens, spec) = s.current_spec(name, &spec_entry).await?;
    let set = match spec.kind {
        VolumeKind::Replicate { replica } => pos / replica.max(1) as usize,
        VolumeKind::Stripe { count } => pos / count.max(1) as usize,
        VolumeKind::Distribute => pos,
        VolumeKind::Disperse { .. } => pos / spec.kind.set_size().max(1),
    };
    let mut new_spec = spec.clone();
    if new_spec.bricks.get(pos).map(String::as_str) != Some(old) {
        // The table and the description disagree on where the brick is:
        // go by the description.
        let Some(p) = new_spec.bricks.iter().position(|b| b == old) else {
            return Err(ManageError::NotInVolume {
                brick: old.into(),
                name: name.into(),
            });
        };
        new_spec.bricks[p] = new.to_string();
    } else {
        new_spec.bricks[pos] = new.to_string();
    }
    new_spec.generation = spec.generation.max(new_spec_gen) + 1;
    let spec_bytes = volfile::encode_spec(&new_spec).map_err(ManageError::Encode)?;

    // The image table, for the new brick.
    let img_id = images_id(entry.id);
    let keep_set: BTreeSet<String> = keep.iter().cloned().collect();
    let (_, images) = s.agree(&keep_set, img_id).await?;
    let new_img_gen = s.get(new, img_id).await?.map_or(0, |c| c.generation);

    // The pool table: every member but a down old brick, plus the new one.
    let members: BTreeSet<String> = view
        .table
        .members()
        .into_iter()
        .filter(|b| old_reachable || b.as_str() != old)
        .collect();
    let (mut table_gens, _) = s.agree(&members, POOL_TABLE_ID).await?;
    let new_table_seen = s.get(new, POOL_TABLE_ID).await?.map_or(0, |c| c.generation);
    table_gens.insert(new.to_string(), new_table_seen);
    let table_gen = table_gens.values().copied().max().unwrap_or(0) + 1;
    let mut table = view.table.clone();
    if let Some(e) = table.volumes.get_mut(name) {
        e.bricks = new_spec.bricks.clone();
    }
    let table_bytes = volfile::encode(&Record::PoolTable(table)).map_err(ManageError::Encode)?;

    let mut change = Change::default();
    for b in &keep {
        change.add(b, entry.id, spec_gens[b], new_spec.generation, &spec_bytes);
    }
    change.add(
        new,
        entry.id,
        new_spec_gen,
        new_spec.generation,
        &spec_bytes,
    );
    if let Some((_, c)) = images {
        let g = c.generation.max(new_img_gen + 1);
        change.add(new, img_id, new_img_gen, g, &c.config);
    }
    for (b, seen) in &table_gens {
        change.add(b, POOL_TABLE_ID, *seen, table_gen, &table_bytes);
    }
    s.apply(
        change,
        &format!("replacing brick {old} of volume {name} with {new}"),
    )
    .await?;
    Ok(Replaced {
        spec: new_spec,
        set,
        old_reachable,
    })
}

// ---------------------------------------------------------------------
// Images: named objects of a volume (VM disks), until the file namespace

/// Largest image: the largest object offset a brick accepts.
pub const MAX_IMAGE_SIZE: u64 = i64::MAX as u64;

fn check_image_size(size: u64) -> Result<(), ManageError> {
    if size == 0 {
        return Err(ManageError::BadImageSize {
            size,
            why: "an image needs at least one byte",
        });
    }
    if size % 512 != 0 {
        return Err(ManageError::BadImageSize {
            size,
            why: "must be a multiple of 512 bytes (a block device's sector)",
        });
    }
    if size > MAX_IMAGE_SIZE {
        return Err(ManageError::BadImageSize {
            size,
            why: "larger than an object can be",
        });
    }
    Ok(())
}

/// Reads volume `volume`'s image table from all of its bricks (rolling an
/// interrupted change forward), lets `f` change it, and commits the new
/// table all-or-nothing (prepare, then commit) when `f` changed it.
async fn modify_images<R>(
    pool: &[String],
    secret: &Secret,
    volume: &str,
    f: impl FnOnce(&VolumeSpec, &mut ImageTable) -> Result<R, ManageError>,
) -> Result<(VolumeSpec, ImageTable, R), ManageError> {
    let mut s = Session::new(secret);
    let view = s.read_table(pool).await?;
    let entry = view.entry(volume)?;
    let (_, spec) = s.current_spec(volume, &entry).await?;
    let id = images_id(entry.id);
    let bricks: BTreeSet<String> = entry.bricks.iter().cloned().collect();
    let (gens, newest) = s.agree(&bricks, id).await?;
    let (generation, old) = match newest {
        None => (
            0,
            ImageTable {
                next_vnode: 1,
                images: BTreeMap::new(),
            },
        ),
        Some((b, c)) => match decode_at(&b, id, &c.config)? {
            Record::Images(t) => (c.generation, t),
            other => return Err(wrong(&b, id, &other, "image table")),
        },
    };
    let mut table = old.clone();
    let r = f(&spec, &mut table)?;
    if table != old {
        let bytes = volfile::encode(&Record::Images(table.clone())).map_err(ManageError::Encode)?;
        let mut change = Change::default();
        for b in &entry.bricks {
            change.add(b, id, gens[b], generation + 1, &bytes);
        }
        s.apply(change, &format!("changing the images of volume {volume}"))
            .await?;
    }
    Ok((spec, table, r))
}

/// `stretto image create NAME SIZE --volume VOL`: a new, empty (sparse)
/// image. Its data is the object `(volume id, vnode, 1)`.
pub async fn image_create(
    pool: &[String],
    secret: &Secret,
    volume: &str,
    name: &str,
    size: u64,
) -> Result<(VolumeSpec, ImageEntry), ManageError> {
    check_name(name).map_err(|_| ManageError::BadImageName { name: name.into() })?;
    check_image_size(size)?;
    let (spec, _, e) = modify_images(pool, secret, volume, |_, t| {
        if t.images.contains_key(name) {
            return Err(ManageError::ImageExists {
                volume: volume.into(),
                name: name.into(),
            });
        }
        let vnode = t.next_vnode.max(1);
        t.next_vnode = vnode.checked_add(1).ok_or(ManageError::VnodesExhausted {
            volume: volume.into(),
        })?;
        let e = ImageEntry {
            vnode,
            unique: 1,
            size,
        };
        t.images.insert(name.to_string(), e);
        Ok(e)
    })
    .await?;
    Ok((spec, e))
}

/// `stretto image list --volume VOL`: the volume and its images. Reads
/// from every reachable brick of the volume (the newest table wins), so it
/// works with bricks down.
pub async fn image_list(
    pool: &[String],
    secret: &Secret,
    volume: &str,
) -> Result<(VolumeSpec, ImageTable), ManageError> {
    let spec = fetch(pool, secret, volume).await?;
    let id = images_id(spec.id);
    let mut s = Session::new(secret);
    let best = s.newest(&spec.bricks, id).await?;
    let table = match best {
        None => ImageTable {
            next_vnode: 1,
            images: BTreeMap::new(),
        },
        Some((b, c)) => match decode_at(&b, id, &c.config)? {
            Record::Images(t) => t,
            other => return Err(wrong(&b, id, &other, "image table")),
        },
    };
    Ok((spec, table))
}

/// One image of a volume (what `stretto nbd serve` exports).
pub async fn image_get(
    pool: &[String],
    secret: &Secret,
    volume: &str,
    name: &str,
) -> Result<(VolumeSpec, ImageEntry), ManageError> {
    let (spec, t) = image_list(pool, secret, volume).await?;
    let e = t
        .images
        .get(name)
        .copied()
        .ok_or_else(|| ManageError::NoSuchImage {
            volume: volume.into(),
            name: name.into(),
        })?;
    Ok((spec, e))
}

/// `stretto image resize NAME SIZE --volume VOL`: grows an image (the new
/// bytes read as zeros). Shrinking is refused: it would drop data.
pub async fn image_resize(
    pool: &[String],
    secret: &Secret,
    volume: &str,
    name: &str,
    size: u64,
) -> Result<ImageEntry, ManageError> {
    check_image_size(size)?;
    let (_, _, e) = modify_images(pool, secret, volume, |_, t| {
        let e = t
            .images
            .get_mut(name)
            .ok_or_else(|| ManageError::NoSuchImage {
                volume: volume.into(),
                name: name.into(),
            })?;
        if size < e.size {
            return Err(ManageError::Shrink {
                name: name.into(),
                size: e.size,
                requested: size,
            });
        }
        e.size = size;
        Ok(*e)
    })
    .await?;
    Ok(e)
}

/// `stretto image delete NAME --volume VOL`: removes the image from the
/// table (all-or-nothing), then its chunks from every brick of the volume.
/// Returns how many bricks could not be reached for that clean-up (their
/// chunks stay as orphans; nothing names them any more).
pub async fn image_delete(
    pool: &[String],
    secret: &Secret,
    volume: &str,
    name: &str,
) -> Result<usize, ManageError> {
    let (spec, _, e) = modify_images(pool, secret, volume, |_, t| {
        t.images
            .remove(name)
            .ok_or_else(|| ManageError::NoSuchImage {
                volume: volume.into(),
                name: name.into(),
            })
    })
    .await?;
    let chunks = e.size.div_ceil(spec.chunk_size.max(1));
    let mut s = Session::new(secret);
    let mut failed = 0;
    for b in &spec.bricks {
        for chunk in 0..chunks {
            let req = Request::Remove(transport::wire::RemoveReq {
                object: transport::ObjectId {
                    volume: spec.id,
                    vnode: e.vnode,
                    unique: e.unique,
                    chunk,
                },
                epoch: 0,
            });
            match s.call(b, "Remove", req).await {
                Ok(Response::Remove) => {}
                Ok(other) => {
                    tracing::warn!(brick = %b, ?other, "could not remove an image chunk");
                    failed += 1;
                    break;
                }
                Err(e) => {
                    tracing::warn!(brick = %b, error = %e, "could not remove an image chunk");
                    failed += 1;
                    break;
                }
            }
        }
    }
    Ok(failed)
}

// ---------------------------------------------------------------------
// Talking to bricks

/// The writes of one change, per brick.
#[derive(Default)]
struct Change {
    /// brick → (write, the generation the brick held when we read it).
    writes: BTreeMap<String, Vec<(StagedWrite, u64)>>,
}

impl Change {
    fn add(&mut self, brick: &str, volume: u32, seen: u64, generation: u64, config: &[u8]) {
        self.writes.entry(brick.to_string()).or_default().push((
            StagedWrite {
                volume,
                generation,
                config: config.to_vec(),
            },
            seen,
        ));
    }
}

struct TableView {
    table: PoolTable,
}

impl TableView {
    /// The table entry of volume `name`.
    fn entry(&self, name: &str) -> Result<PoolEntry, ManageError> {
        self.table
            .volumes
            .get(name)
            .cloned()
            .ok_or_else(|| ManageError::NoSuchVolume { name: name.into() })
    }
}

struct Session {
    secret: Secret,
    conns: BTreeMap<String, TcpClient>,
}

impl Session {
    fn new(secret: &Secret) -> Session {
        Session {
            secret: secret.clone(),
            conns: BTreeMap::new(),
        }
    }

    async fn connect(&mut self, brick: &str) -> Result<&TcpClient, ManageError> {
        if !self.conns.contains_key(brick) {
            let opts = ClientOptions {
                connect_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(15),
                ..ClientOptions::default()
            };
            let c = TcpClient::connect(brick, self.secret.clone(), opts)
                .await
                .map_err(|source| ManageError::Unreachable {
                    brick: brick.into(),
                    source,
                })?;
            self.conns.insert(brick.to_string(), c);
        }
        self.conns
            .get(brick)
            .ok_or_else(|| ManageError::Unexpected {
                brick: brick.into(),
                op: "connect",
            })
    }

    async fn call(
        &mut self,
        brick: &str,
        op: &'static str,
        req: Request,
    ) -> Result<Response, ManageError> {
        let c = self.connect(brick).await?;
        let (resp, _) = c
            .call(req, Payload::None)
            .await
            .map_err(|source| ManageError::Call {
                brick: brick.into(),
                op,
                source,
            })?;
        Ok(resp)
    }

    /// Configuration `id` on `brick`, or None if it holds none.
    async fn get(&mut self, brick: &str, id: u32) -> Result<Option<VolConfig>, ManageError> {
        let op = "GetVolConfig";
        match self
            .call(
                brick,
                op,
                Request::GetVolConfig(GetVolConfig { volume: id }),
            )
            .await?
        {
            Response::VolConfig(c) => Ok(Some(c)),
            Response::Error(e) if e.code == ErrorCode::NotFound => Ok(None),
            Response::Error(e) => Err(ManageError::Refused {
                brick: brick.into(),
                op,
                code: e.code,
                message: e.message,
            }),
            _ => Err(ManageError::Unexpected {
                brick: brick.into(),
                op,
            }),
        }
    }

    async fn put(
        &mut self,
        brick: &str,
        id: u32,
        generation: u64,
        config: Vec<u8>,
    ) -> Result<(), ManageError> {
        let op = "PutVolConfig";
        let req = Request::PutVolConfig(PutVolConfig {
            volume: id,
            generation,
            config,
        });
        match self.call(brick, op, req).await? {
            Response::VolConfigStored { .. } => Ok(()),
            Response::Error(e) => Err(ManageError::Refused {
                brick: brick.into(),
                op,
                code: e.code,
                message: e.message,
            }),
            _ => Err(ManageError::Unexpected {
                brick: brick.into(),
                op,
            }),
        }
    }

    async fn stats(&mut self, brick: &str) -> Result<BrickStats, ManageError> {
        match self.call(brick, "BrickStats", Request::BrickStats).await? {
            Response::BrickStats(s) => Ok(s),
            Response::Error(e) => Err(ManageError::Refused {
                brick: brick.into(),
                op: "BrickStats",
                code: e.code,
                message: e.message,
            }),
            _ => Err(ManageError::Unexpected {
                brick: brick.into(),
                op: "BrickStats",
            }),
        }
    }

    /// The newest configuration `id` among the reachable ones of `bricks`
    /// (unreachable bricks are skipped; at least one must answer), with the
    /// brick it came from; `None` if no brick that answered holds it.
    async fn newest(
        &mut self,
        bricks: &[String],
        id: u32,
    ) -> Result<Option<(String, VolConfig)>, ManageError> {
        let mut best: Option<(String, VolConfig)> = None;
        let mut answered = false;
        let mut last_err = None;
        for b in bricks {
            match self.get(b, id).await {
                Ok(c) => {
                    answered = true;
                    if let Some(c) = c {
                        if best
                            .as_ref()
                            .is_none_or(|(_, x)| c.generation > x.generation)
                        {
                            best = Some((b.clone(), c));
                        }
                    }
                }
                Err(e) => last_err = Some(e),
            }
        }
        if !answered {
            return Err(last_err.unwrap_or(ManageError::NothingReachable {
                what: format!("configuration {id}"),
                tried: bricks.join(", "),
            }));
        }
        Ok(best)
    }

    /// The pool table: asked of `first` (unreachable ones skipped, but at
    /// least one must answer), then of every brick the newest table names;
    /// the newest generation wins. No brick holding one: an empty table.
    async fn read_table(&mut self, first: &[String]) -> Result<TableView, ManageError> {
        if first.is_empty() {
            return Err(ManageError::NoPool);
        }
        let mut best: Option<(u64, PoolTable)> = None;
        let mut asked = BTreeSet::new();
        let mut answered = false;
        let mut queue: Vec<String> = first.to_vec();
        while let Some(b) = queue.pop() {
            if !asked.insert(b.clone()) {
                continue;
            }
            let c = match self.get(&b, POOL_TABLE_ID).await {
                Ok(c) => c,
                Err(ManageError::Unreachable { .. }) => continue,
                Err(e) => return Err(e),
            };
            answered = true;
            let Some(c) = c else { continue };
            let table = match decode_at(&b, POOL_TABLE_ID, &c.config)? {
                Record::PoolTable(t) => t,
                other => return Err(wrong(&b, POOL_TABLE_ID, &other, "pool table")),
            };
            if best.as_ref().is_none_or(|(g, _)| c.generation > *g) {
                queue.extend(table.members());
                best = Some((c.generation, table));
            }
        }
        if !answered {
            return Err(ManageError::NothingReachable {
                what: "the pool".into(),
                tried: first.join(", "),
            });
        }
        Ok(TableView {
            table: best.map(|(_, t)| t).unwrap_or_default(),
        })
    }

    /// Reads configuration `id` from every one of `bricks` (all must be
    /// reachable). If they disagree, an earlier change was decided but
    /// stopped part way: the newest generation is copied to the others.
    /// Returns each brick's generation afterwards and the newest record.
    async fn agree(
        &mut self,
        bricks: &BTreeSet<String>,
        id: u32,
    ) -> Result<(BTreeMap<String, u64>, Option<(String, VolConfig)>), ManageError> {
        let mut gens = BTreeMap::new();
        let mut newest: Option<(String, VolConfig)> = None;
        for b in bricks {
            let c = self.get(b, id).await?;
            let g = c.as_ref().map_or(0, |c| c.generation);
            gens.insert(b.clone(), g);
            if let Some(c) = c {
                if newest
                    .as_ref()
                    .is_none_or(|(_, n)| c.generation > n.generation)
                {
                    newest = Some((b.clone(), c));
                }
            }
        }
        if let Some((from, n)) = &newest {
            let lagging: Vec<String> = gens
                .iter()
                .filter(|(_, g)| **g < n.generation)
                .map(|(b, _)| b.clone())
                .collect();
            for b in lagging {
                tracing::warn!(
                    brick = %b, id, generation = n.generation, from = %from,
                    "completing an interrupted change"
                );
                self.put(&b, id, n.generation, n.config.clone()).await?;
                gens.insert(b, n.generation);
            }
        }
        Ok((gens, newest))
    }

    /// The volume's current description from all of its bricks.
    async fn current_spec(
        &mut self,
        name: &str,
        entry: &PoolEntry,
    ) -> Result<(BTreeMap<String, u64>, VolumeSpec), ManageError> {
        let bricks: BTreeSet<String> = entry.bricks.iter().cloned().collect();
        for b in &entry.bricks {
            self.connect(b).await?;
        }
        let (gens, newest) = self.agree(&bricks, entry.id).await?;
        let Some((b, c)) = newest else {
            return Err(ManageError::NoSuchVolume { name: name.into() });
        };
        match decode_at(&b, entry.id, &c.config)? {
            Record::Volume(spec) => Ok((gens, spec)),
            Record::Deleted { .. } => Err(ManageError::NoSuchVolume { name: name.into() }),
            other => Err(wrong(&b, entry.id, &other, "volume description")),
        }
    }

    /// Prepare then commit `change` (see the module doc).
    async fn apply(&mut self, change: Change, what: &str) -> Result<(), ManageError> {
        // Every brick must be reachable before anything is written.
        for b in change.writes.keys() {
            self.connect(b).await?;
        }
        // Prepare: still at the generations we read? Then stage.
        for (b, writes) in &change.writes {
            for (w, seen) in writes {
                let now = self.get(b, w.volume).await?.map_or(0, |c| c.generation);
                if now != *seen {
                    return Err(ManageError::Raced {
                        brick: b.clone(),
                        id: w.volume,
                        seen: *seen,
                        now,
                    });
                }
            }
            let staged = Record::Staged(writes.iter().map(|(w, _)| w.clone()).collect());
            let bytes = volfile::encode(&staged).map_err(ManageError::Encode)?;
            let g = self.get(b, STAGING_ID).await?.map_or(0, |c| c.generation);
            self.put(b, STAGING_ID, g + 1, bytes).await?;
        }
        // Commit: descriptions first, the pool table last.
        let mut order: Vec<(&String, &StagedWrite)> = Vec::new();
        for (b, writes) in &change.writes {
            order.extend(
                writes
                    .iter()
                    .filter(|(w, _)| w.volume != POOL_TABLE_ID)
                    .map(|(w, _)| (b, w)),
            );
        }
        for (b, writes) in &change.writes {
            order.extend(
                writes
                    .iter()
                    .filter(|(w, _)| w.volume == POOL_TABLE_ID)
                    .map(|(w, _)| (b, w)),
            );
        }
        let total = order.len();
        for (done, (b, w)) in order.into_iter().enumerate() {
            if let Err(e) = self.put(b, w.volume, w.generation, w.config.clone()).await {
                return Err(ManageError::PartialCommit {
                    what: what.to_string(),
                    done,
                    total,
                    source: Box::new(e),
                });
            }
        }
        Ok(())
    }
}
