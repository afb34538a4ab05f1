//! Byte encoding of the records volume management keeps on bricks: a
//! volume's description ([`VolumeSpec`]), the tombstone a deleted volume
//! leaves, the pool's volume table ([`PoolTable`]), and a staged change
//! ([`StagedWrite`]s, written in the prepare phase of a change).
//!
//! Bricks store these bytes opaquely as volume configurations
//! (`GetVolConfig` / `PutVolConfig`, keyed by a `u32` id, each with a
//! generation that only moves forward):
//!
//! | id                      | record                                       |
//! |-------------------------|----------------------------------------------|
//! | [`POOL_TABLE_ID`] (0)   | [`Record::PoolTable`]                        |
//! | 1 ..= [`MAX_VOLUME_ID`] | [`Record::Volume`] or [`Record::Deleted`]    |
//! | [`STAGING_ID`]          | [`Record::Staged`]: the last prepared change |
//! | [`images_id`]`(v)` = `0x8000_0000 \| v` | [`Record::Images`]: volume `v`'s image table |
//!
//! This module only turns records into bytes and back. Decode checks syntax
//! (magic, version, checksum, lengths, codes, reserved bytes); what a record
//! means (is the name valid, is the replica count sensible) is checked by
//! [`crate::manage`] before it acts. It does no I/O.
//!
//! # Envelope (every record)
//!
//! All integers little-endian.
//!
//! ```text
//!  0        4         6        8          12         16
//!  +--------+---------+--------+----------+----------+------------------+
//!  | magic  | version |  kind  | body_len |  crc32c  | body [body_len]  |
//!  | "SVOL" |  u16=1  |  u16   |   u32    |   u32    |                  |
//!  +--------+---------+--------+----------+----------+------------------+
//! ```
//! `crc32c` covers bytes `0..12` followed by the body, so a record cut
//! short, padded, or with a flipped bit anywhere fails. The record is exactly
//! `16 + body_len` bytes; trailing bytes are an error. `kind`: 1 volume,
//! 2 deleted volume, 3 pool table, 4 staged change, 5 image table.
//!
//! A `str` below is `len u16` then `len` bytes of UTF-8.
//!
//! # Volume body (kind 1)
//!
//! ```text
//!  0     4        5       6          8         12            16           24           32           36         40
//!  +-----+--------+-------+----------+---------+-------------+------------+------------+------------+----------+
//!  | id  | layout | state | reserved | replica | brick_count | chunk_size | generation | option_cnt | reserved |
//!  | u32 |   u8   |  u8   |  u16=0   |   u32   |     u32     |    u64     |    u64     |    u32     |  u32=0   |
//!  +-----+--------+-------+----------+---------+-------------+------------+------------+------------+----------+
//!  40: name str, then brick_count × brick str (set order),
//!      then option_cnt × (key str, value str), keys strictly increasing
//! ```
//! `layout`: 0 distribute (`replica` must be 0), 1 replicate (`replica` ≥ 1),
//! 2 disperse: then bytes 8..12 are two u16, `data` (K ≥ 1) at 8 and
//! `redundancy` (M ≥ 1) at 10, with K + M ≤ 256.
//! 3 stripe (`replica` holds the stripe count, ≥ 2).
//! `state`: 0 created, 1 started, 2 stopped.
//!
//! # Deleted body (kind 2)
//!
//! ```text
//!  0     4          8            16
//!  +-----+----------+------------+----------+
//!  | id  | reserved | generation | name str |
//!  | u32 |  u32=0   |    u64     |          |
//!  +-----+----------+------------+----------+
//! ```
//! A volume's id cannot be removed from a brick (configurations only move
//! forward), so deleting writes this tombstone at the next generation.
//!
//! # Pool table body (kind 3)
//!
//! ```text
//!  0         4            8          16
//!  +---------+------------+----------+------------------------------------+
//!  | next_id | volume_cnt | reserved | volume_cnt × entry                 |
//!  |   u32   |    u32     |  u64=0   |                                    |
//!  +---------+------------+----------+------------------------------------+
//!  entry:  0     4           8
//!          +-----+-----------+----------+------------------------+
//!          | id  | brick_cnt | name str | brick_cnt × brick str  |
//!          | u32 |    u32    |          |                        |
//!          +-----+-----------+----------+------------------------+
//! ```
//! Entries are in strictly increasing name order. Each entry names the
//! volume's bricks so that any brick holding the table can say where the
//! volume's description lives.
//!
//! # Staged change body (kind 4)
//!
//! ```text
//!  0       4          8
//!  +-------+----------+-------------------------------+
//!  | count | reserved | count × write                 |
//!  |  u32  |  u32=0   |                               |
//!  +-------+----------+-------------------------------+
//!  write:  0        4          8            16    20         24
//!          +--------+----------+------------+-----+----------+--------------+
//!          | volume | reserved | generation | len | reserved | config [len] |
//!          |  u32   |  u32=0   |    u64     | u32 |  u32=0   | (a record)   |
//!          +--------+----------+------------+-----+----------+--------------+
//! ```
//! The inner `config` bytes are themselves records; decode checks only
//! their length (they are decoded when used).
//!
//! # Image table body (kind 5)
//!
//! The named objects (VM disk images) of one volume, until the file
//! namespace holds them. An image's data is the object with Fid
//! `(volume, vnode, unique)`.
//!
//! ```text
//!  0           4           8
//!  +-----------+-----------+--------------------------------------+
//!  | next_vnode| image_cnt | image_cnt × entry                    |
//!  |    u32    |    u32    |                                      |
//!  +-----------+-----------+--------------------------------------+
//!  entry:  0       4        8      16
//!          +-------+--------+------+----------+
//!          | vnode | unique | size | name str |
//!          |  u32  |  u32   | u64  |          |
//!          +-------+--------+------+----------+
//! ```
//! Entries are in strictly increasing name order; vnodes are never reused
//! within a volume (`next_vnode` only grows).

use std::collections::BTreeMap;

use thiserror::Error;

use crate::spec::{VolumeKind, VolumeSpec, VolumeState};

/// The first four bytes of every record.
pub const MAGIC: [u8; 4] = *b"SVOL";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Volume configuration id of the pool's volume table on every brick.
pub const POOL_TABLE_ID: u32 = 0;
/// Volume configuration id of the last staged (prepared) change on a brick.
pub const STAGING_ID: u32 = u32::MAX;
/// Largest id a volume can have (ids above are reserved for management).
pub const MAX_VOLUME_ID: u32 = 0x7fff_ffff;
/// High bit of the configuration id that holds a volume's image table.
pub const IMAGES_ID_BIT: u32 = 0x8000_0000;

/// Configuration id of volume `volume`'s image table.
pub fn images_id(volume: u32) -> u32 {
    IMAGES_ID_BIT | volume
}

// Envelope offsets.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_KIND: usize = 6;
const OFF_BODY_LEN: usize = 8;
const OFF_CRC: usize = 12;
/// Size of the envelope before the body.
pub const HEADER_LEN: usize = 16;

// Record kinds.
const KIND_VOLUME: u16 = 1;
const KIND_DELETED: u16 = 2;
const KIND_POOL_TABLE: u16 = 3;
const KIND_STAGED: u16 = 4;
const KIND_IMAGES: u16 = 5;

// Image table body offsets.
const IT_NEXT_VNODE: usize = 0;
const IT_COUNT: usize = 4;
const IT_FIXED: usize = 8;
const ITE_VNODE: usize = 0;
const ITE_UNIQUE: usize = 4;
const ITE_SIZE: usize = 8;
const ITE_FIXED: usize = 16;

// Volume body offsets.
const VOL_ID: usize = 0;
const VOL_LAYOUT: usize = 4;
const VOL_STATE: usize = 5;
const VOL_RESERVED0: usize = 6;
const VOL_REPLICA: usize = 8;
const VOL_BRICK_COUNT: usize = 12;
const VOL_CHUNK_SIZE: usize = 16;
const VOL_GENERATION: usize = 24;
const VOL_OPTION_COUNT: usize = 32;
const VOL_RESERVED1: usize = 36;
const VOL_FIXED: usize = 40;

const LAYOUT_DISTRIBUTE: u8 = 0;
const LAYOUT_REPLICATE: u8 = 1;
const LAYOUT_DISPERSE: u8 = 2;
/// Disperse: K (u16) and M (u16) in the `replica` field.
const VOL_DISPERSE_DATA: usize = 8;
const VOL_DISPERSE_REDUNDANCY: usize = 10;
const LAYOUT_STRIPE: u8 = 3;
const STATE_CREATED: u8 = 0;
const STATE_STARTED: u8 = 1;
const STATE_STOPPED: u8 = 2;

// Deleted body offsets.
const DEL_ID: usize = 0;
const DEL_RESERVED: usize = 4;
const DEL_GENERATION: usize = 8;
const DEL_FIXED: usize = 16;

// Pool table body offsets.
const PT_NEXT_ID: usize = 0;
const PT_VOLUME_COUNT: usize = 4;
const PT_RESERVED: usize = 8;
const PT_FIXED: usize = 16;
const PTE_ID: usize = 0;
const PTE_BRICK_COUNT: usize = 4;
const PTE_FIXED: usize = 8;

// Staged body offsets.
const ST_COUNT: usize = 0;
const ST_RESERVED: usize = 4;
const ST_FIXED: usize = 8;
const STW_VOLUME: usize = 0;
const STW_RESERVED0: usize = 4;
const STW_GENERATION: usize = 8;
const STW_LEN: usize = 16;
const STW_RESERVED1: usize = 20;
const STW_FIXED: usize = 24;

/// The pool's volume table: which volume names exist, their ids and bricks,
/// and the next id to hand out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolTable {
    /// The id the next `volume create` gets (ids are never reused).
    pub next_id: u32,
    /// Volume name → its entry.
    pub volumes: BTreeMap<String, PoolEntry>,
}

/// One volume in the [`PoolTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolEntry {
    /// The volume's id.
    pub id: u32,
    /// The bricks that hold the volume's description, in set order.
    pub bricks: Vec<String>,
}

impl PoolTable {
    /// Every brick that holds the table: the bricks of all its volumes.
    pub fn members(&self) -> std::collections::BTreeSet<String> {
        self.volumes
            .values()
            .flat_map(|e| e.bricks.iter().cloned())
            .collect()
    }
}

/// One write of a staged change: `config` is to become `volume`'s
/// configuration at `generation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedWrite {
    /// Target configuration id.
    pub volume: u32,
    /// Generation it is to be written at.
    pub generation: u64,
    /// The encoded record to write.
    pub config: Vec<u8>,
}

/// A volume's named objects (images), name → where its data lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageTable {
    /// The vnode the next image gets (vnodes are never reused).
    pub next_vnode: u32,
    /// Image name → entry.
    pub images: BTreeMap<String, ImageEntry>,
}

/// One image: the object `(volume, vnode, unique)` and its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageEntry {
    /// The Fid's vnode.
    pub vnode: u32,
    /// The Fid's uniquifier.
    pub unique: u32,
    /// Size in bytes (what an NBD export of it reports).
    pub size: u64,
}

/// Anything stored under a configuration id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A live volume's description.
    Volume(VolumeSpec),
    /// What a deleted volume leaves behind.
    Deleted {
        /// The id the volume had.
        id: u32,
        /// Its name.
        name: String,
        /// Generation of the deletion.
        generation: u64,
    },
    /// The pool's volume table.
    PoolTable(PoolTable),
    /// A prepared, maybe not yet committed change.
    Staged(Vec<StagedWrite>),
    /// A volume's image table.
    Images(ImageTable),
}

/// Why bytes are not a record (decode) or a record cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VolfileError {
    #[error("volume record is {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    Short { len: usize },
    #[error("not a volume record (magic {found:02x?}, expected \"SVOL\")")]
    BadMagic { found: [u8; 4] },
    #[error("volume record format version {found} is not supported (this build reads version {VERSION}); upgrade stretto")]
    UnknownVersion { found: u16 },
    #[error("unknown volume record kind {kind}")]
    UnknownKind { kind: u16 },
    #[error("volume record says its body is {body_len} bytes but {actual} follow the header")]
    Length { body_len: u32, actual: usize },
    #[error("volume record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("volume record body ends early at byte {at} (reading {what})")]
    Truncated { at: usize, what: &'static str },
    #[error("volume record body has {extra} bytes after its last field")]
    Trailing { extra: usize },
    #[error("volume record field {what} holds {value}, which is not allowed")]
    BadField { what: &'static str, value: u64 },
    #[error("volume record string ({what}) is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("volume record lists {what} out of order or twice")]
    Unordered { what: &'static str },
    #[error("{what} is {len} bytes, more than a volume record can hold ({max})")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// Encodes a record into its envelope.
pub fn encode(rec: &Record) -> Result<Vec<u8>, VolfileError> {
    let mut w = Writer::default();
    let kind = match rec {
        Record::Volume(spec) => {
            encode_volume(&mut w, spec)?;
            KIND_VOLUME
        }
        Record::Deleted {
            id,
            name,
            generation,
        } => {
            w.u32(*id);
            w.u32(0);
            w.u64(*generation);
            w.str(name, "volume name")?;
            KIND_DELETED
        }
        Record::PoolTable(t) => {
            w.u32(t.next_id);
            w.u32(count(t.volumes.len(), "pool table volume count")?);
            w.u64(0);
            for (name, e) in &t.volumes {
                w.u32(e.id);
                w.u32(count(e.bricks.len(), "pool table brick count")?);
                w.str(name, "volume name")?;
                for b in &e.bricks {
                    w.str(b, "brick address")?;
                }
            }
            KIND_POOL_TABLE
        }
        Record::Staged(writes) => {
            w.u32(count(writes.len(), "staged write count")?);
            w.u32(0);
            for sw in writes {
                w.u32(sw.volume);
                w.u32(0);
                w.u64(sw.generation);
                w.u32(count(sw.config.len(), "staged config")?);
                w.u32(0);
                w.0.extend_from_slice(&sw.config);
            }
            KIND_STAGED
        }
        Record::Images(t) => {
            w.u32(t.next_vnode);
            w.u32(count(t.images.len(), "image count")?);
            for (name, e) in &t.images {
                w.u32(e.vnode);
                w.u32(e.unique);
                w.u64(e.size);
                w.str(name, "image name")?;
            }
            KIND_IMAGES
        }
    };
    let body = w.0;
    let body_len = count(body.len(), "volume record body")?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..OFF_CRC]), &body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Encodes a volume description (a [`Record::Volume`]).
pub fn encode_spec(spec: &VolumeSpec) -> Result<Vec<u8>, VolfileError> {
    encode(&Record::Volume(spec.clone()))
}

fn count(n: usize, what: &'static str) -> Result<u32, VolfileError> {
    u32::try_from(n).map_err(|_| VolfileError::TooLong {
        what,
        len: n,
        max: u32::MAX as usize,
    })
}

fn encode_volume(w: &mut Writer, spec: &VolumeSpec) -> Result<(), VolfileError> {
    let (layout, replica) = match spec.kind {
        VolumeKind::Distribute => (LAYOUT_DISTRIBUTE, 0),
        VolumeKind::Replicate { replica } => (LAYOUT_REPLICATE, replica),
        VolumeKind::Stripe { count } => (LAYOUT_STRIPE, count),
        VolumeKind::Disperse { data, redundancy } => {
            let (Ok(k), Ok(m)) = (u16::try_from(data), u16::try_from(redundancy)) else {
                return Err(VolfileError::BadField {
                    what: "disperse geometry",
                    value: u64::from(data) << 32 | u64::from(redundancy),
                });
            };
            // Little-endian u32 of (M << 16 | K) is K at 8, M at 10.
            (LAYOUT_DISPERSE, u32::from(m) << 16 | u32::from(k))
        }
    };
    let state = match spec.state {
        VolumeState::Created => STATE_CREATED,
        VolumeState::Started => STATE_STARTED,
        VolumeState::Stopped => STATE_STOPPED,
    };
    w.u32(spec.id);
    w.0.push(layout);
    w.0.push(state);
    w.0.extend_from_slice(&0u16.to_le_bytes());
    w.u32(replica);
    w.u32(count(spec.bricks.len(), "brick count")?);
    w.u64(spec.chunk_size);
    w.u64(spec.generation);
    w.u32(count(spec.options.len(), "option count")?);
    w.u32(0);
    w.str(&spec.name, "volume name")?;
    for b in &spec.bricks {
        w.str(b, "brick address")?;
    }
    for (k, v) in &spec.options {
        w.str(k, "option key")?;
        w.str(v, "option value")?;
    }
    Ok(())
}

/// Decodes one record, checking its envelope and syntax.
pub fn decode(bytes: &[u8]) -> Result<Record, VolfileError> {
    if bytes.len() < HEADER_LEN {
        return Err(VolfileError::Short { len: bytes.len() });
    }
    let head = Reader::new(&bytes[..HEADER_LEN]);
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&bytes[OFF_MAGIC..OFF_MAGIC + 4]);
    if magic != MAGIC {
        return Err(VolfileError::BadMagic { found: magic });
    }
    let version = head.u16_at(OFF_VERSION);
    if version != VERSION {
        return Err(VolfileError::UnknownVersion { found: version });
    }
    let kind = head.u16_at(OFF_KIND);
    let body_len = head.u32_at(OFF_BODY_LEN);
    let body = &bytes[HEADER_LEN..];
    if body.len() != body_len as usize {
        return Err(VolfileError::Length {
            body_len,
            actual: body.len(),
        });
    }
    let stored = head.u32_at(OFF_CRC);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&bytes[..OFF_CRC]), body);
    if stored != computed {
        return Err(VolfileError::Checksum { stored, computed });
    }
    let mut r = Reader::new(body);
    let rec = match kind {
        KIND_VOLUME => Record::Volume(decode_volume(&mut r)?),
        KIND_DELETED => {
            let f = r.take(DEL_FIXED, "deleted record header")?;
            let f = Reader::new(f);
            reserved(f.u32_at(DEL_RESERVED) as u64, "deleted reserved")?;
            let id = f.u32_at(DEL_ID);
            let generation = f.u64_at(DEL_GENERATION);
            let name = r.str("volume name")?;
            Record::Deleted {
                id,
                name,
                generation,
            }
        }
        KIND_POOL_TABLE => {
            let f = Reader::new(r.take(PT_FIXED, "pool table header")?);
            reserved(f.u64_at(PT_RESERVED), "pool table reserved")?;
            let next_id = f.u32_at(PT_NEXT_ID);
            let n = f.u32_at(PT_VOLUME_COUNT);
            let mut volumes = BTreeMap::new();
            let mut last: Option<String> = None;
            for _ in 0..n {
                let e = Reader::new(r.take(PTE_FIXED, "pool table entry")?);
                let id = e.u32_at(PTE_ID);
                let bricks_n = e.u32_at(PTE_BRICK_COUNT);
                let name = r.str("volume name")?;
                let mut bricks = Vec::new();
                for _ in 0..bricks_n {
                    bricks.push(r.str("brick address")?);
                }
                if last.as_ref().is_some_and(|l| *l >= name) {
                    return Err(VolfileError::Unordered {
                        what: "pool table volumes",
                    });
                }
                last = Some(name.clone());
                volumes.insert(name, PoolEntry { id, bricks });
            }
            Record::PoolTable(PoolTable { next_id, volumes })
        }
        KIND_STAGED => {
            let f = Reader::new(r.take(ST_FIXED, "staged header")?);
            reserved(f.u32_at(ST_RESERVED) as u64, "staged reserved")?;
            let n = f.u32_at(ST_COUNT);
            let mut writes = Vec::new();
            for _ in 0..n {
                let h = Reader::new(r.take(STW_FIXED, "staged write")?);
                reserved(h.u32_at(STW_RESERVED0) as u64, "staged write reserved")?;
                reserved(h.u32_at(STW_RESERVED1) as u64, "staged write reserved")?;
                let len = h.u32_at(STW_LEN) as usize;
                let config = r.take(len, "staged config")?.to_vec();
                writes.push(StagedWrite {
                    volume: h.u32_at(STW_VOLUME),
                    generation: h.u64_at(STW_GENERATION),
                    config,
                });
            }
            Record::Staged(writes)
        }
        KIND_IMAGES => {
            let f = Reader::new(r.take(IT_FIXED, "image table header")?);
            let next_vnode = f.u32_at(IT_NEXT_VNODE);
            let n = f.u32_at(IT_COUNT);
            let mut images = BTreeMap::new();
            let mut last: Option<String> = None;
            for _ in 0..n {
                let e = Reader::new(r.take(ITE_FIXED, "image entry")?);
                let name = r.str("image name")?;
                if last.as_ref().is_some_and(|l| *l >= name) {
                    return Err(VolfileError::Unordered { what: "images" });
                }
                last = Some(name.clone());
                images.insert(
                    name,
                    ImageEntry {
                        vnode: e.u32_at(ITE_VNODE),
                        unique: e.u32_at(ITE_UNIQUE),
                        size: e.u64_at(ITE_SIZE),
                    },
                );
            }
            Record::Images(ImageTable { next_vnode, images })
        }
        kind => return Err(VolfileError::UnknownKind { kind }),
    };
    if r.rest() != 0 {
        return Err(VolfileError::Trailing { extra: r.rest() });
    }
    Ok(rec)
}

fn reserved(v: u64, what: &'static str) -> Result<(), VolfileError> {
    if v == 0 {
        Ok(())
    } else {
        Err(VolfileError::BadField { what, value: v })
    }
}

fn decode_volume(r: &mut Reader<'_>) -> Result<VolumeSpec, VolfileError> {
    let f = Reader::new(r.take(VOL_FIXED, "volume header")?);
    reserved(f.u16_at(VOL_RESERVED0) as u64, "volume reserved")?;
    reserved(f.u32_at(VOL_RESERVED1) as u64, "volume reserved")?;
    let replica = f.u32_at(VOL_REPLICA);
    let kind = match f.bytes[VOL_LAYOUT] {
        LAYOUT_DISTRIBUTE if replica == 0 => VolumeKind::Distribute,
        LAYOUT_REPLICATE if replica >= 1 => VolumeKind::Replicate { replica },
        LAYOUT_STRIPE if replica >= 2 => VolumeKind::Stripe { count: replica },
        LAYOUT_DISPERSE => {
            let data = u32::from(f.u16_at(VOL_DISPERSE_DATA));
            let redundancy = u32::from(f.u16_at(VOL_DISPERSE_REDUNDANCY));
            if data == 0 || redundancy == 0 || data + redundancy > 256 {
                return Err(VolfileError::BadField {
                    what: "disperse geometry",
                    value: replica as u64,
                });
            }
            VolumeKind::Disperse { data, redundancy }
        }
        LAYOUT_DISTRIBUTE | LAYOUT_REPLICATE | LAYOUT_STRIPE => {
            return Err(VolfileError::BadField {
                what: "replica",
                value: replica as u64,
            })
        }
        other => {
            return Err(VolfileError::BadField {
                what: "layout",
                value: other as u64,
            })
        }
    };
    let state = match f.bytes[VOL_STATE] {
        STATE_CREATED => VolumeState::Created,
        STATE_STARTED => VolumeState::Started,
        STATE_STOPPED => VolumeState::Stopped,
        other => {
            return Err(VolfileError::BadField {
                what: "state",
                value: other as u64,
            })
        }
    };
    let name = r.str("volume name")?;
    let mut bricks = Vec::new();
    for _ in 0..f.u32_at(VOL_BRICK_COUNT) {
        bricks.push(r.str("brick address")?);
    }
    let mut options = BTreeMap::new();
    let mut last: Option<String> = None;
    for _ in 0..f.u32_at(VOL_OPTION_COUNT) {
        let k = r.str("option key")?;
        let v = r.str("option value")?;
        if last.as_ref().is_some_and(|l| *l >= k) {
            return Err(VolfileError::Unordered { what: "options" });
        }
        last = Some(k.clone());
        options.insert(k, v);
    }
    Ok(VolumeSpec {
        name,
        id: f.u32_at(VOL_ID),
        kind,
        bricks,
        chunk_size: f.u64_at(VOL_CHUNK_SIZE),
        options,
        state,
        generation: f.u64_at(VOL_GENERATION),
    })
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str, what: &'static str) -> Result<(), VolfileError> {
        let len = u16::try_from(s.len()).map_err(|_| VolfileError::TooLong {
            what,
            len: s.len(),
            max: u16::MAX as usize,
        })?;
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A bounds-checked cursor over a body. Fixed-size parts are taken whole
/// first, so the `*_at` readers index inside a slice already known long
/// enough.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }
    fn rest(&self) -> usize {
        self.bytes.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], VolfileError> {
        if self.rest() < n {
            return Err(VolfileError::Truncated { at: self.pos, what });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn str(&mut self, what: &'static str) -> Result<String, VolfileError> {
        let len = self.take(2, what)?;
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        let s = self.take(len, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| VolfileError::NotUtf8 { what })
    }
    fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }
    fn u32_at(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[off..off + 4]);
        u32::from_le_bytes(b)
    }
    fn u64_at(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[off..off + 8]);
        u64::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_the_drawings() {
        assert_eq!(OFF_MAGIC + 4, OFF_VERSION);
        assert_eq!(OFF_CRC + 4, HEADER_LEN);
        assert_eq!(VOL_RESERVED1 + 4, VOL_FIXED);
        assert_eq!(DEL_GENERATION + 8, DEL_FIXED);
        assert_eq!(PT_RESERVED + 8, PT_FIXED);
        assert_eq!(PTE_BRICK_COUNT + 4, PTE_FIXED);
        assert_eq!(ST_RESERVED + 4, ST_FIXED);
        assert_eq!(STW_RESERVED1 + 4, STW_FIXED);
    }
}
