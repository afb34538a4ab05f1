//! Persistent region marks of replication, in the brick's RVM.
//!
//! - **Pending marks** (root slot [`PENDING_ROOT`]): "brick `target` of my
//!   set missed writes to this region": a count per (chunk, region,
//!   target), as GlusterFS AFR's changelog. Writers add to it before they
//!   acknowledge a write that some brick missed; heal subtracts what it saw
//!   once the region is copied, so a write missed during the heal keeps its
//!   mark.
//! - **Active marks** (root slot [`ACTIVE_ROOT`]): the activity log, as
//!   DRBD's: regions a lease holder may have writes in flight to, with the
//!   epoch that marked them.
//!
//! Keys (little-endian): pending = `ObjectId (volume u32, vnode u32, unique
//! u32, chunk u64) | region u32 | target u32` (28 bytes); active = the same
//! without `target` (24 bytes). Values: `u64` (count, or epoch). Every
//! change is committed durably before the reply.

use std::sync::{Arc, Mutex};

use storage::rvm::{map::PMap, CommitMode, Rvm, RvmError};
use transport::wire::{
    ErrorCode, Mark, MarksOp, MarksReply, MarksReq, ObjectId, MARKS_MORE, MAX_MARKS,
};

use crate::lease::Refusal;

/// RVM root slot of the pending-mark table.
pub const PENDING_ROOT: u32 = 4;
/// RVM root slot of the activity log.
pub const ACTIVE_ROOT: u32 = 5;

/// Most regions one request may name (a chunk of 4 GiB in 1 MiB regions).
pub const MAX_REGIONS: u32 = 4096;

const K_VOLUME: usize = 0;
const K_VNODE: usize = 4;
const K_UNIQUE: usize = 8;
const K_CHUNK: usize = 12;
const K_REGION: usize = 20;
const K_TARGET: usize = 24;
const ACTIVE_KEY: usize = 24;
const PENDING_KEY: usize = 28;

fn key(o: &ObjectId, region: u32, target: Option<u32>) -> Vec<u8> {
    let mut k = vec![
        0u8;
        if target.is_some() {
            PENDING_KEY
        } else {
            ACTIVE_KEY
        }
    ];
    k[K_VOLUME..K_VOLUME + 4].copy_from_slice(&o.volume.to_le_bytes());
    k[K_VNODE..K_VNODE + 4].copy_from_slice(&o.vnode.to_le_bytes());
    k[K_UNIQUE..K_UNIQUE + 4].copy_from_slice(&o.unique.to_le_bytes());
    k[K_CHUNK..K_CHUNK + 8].copy_from_slice(&o.chunk.to_le_bytes());
    k[K_REGION..K_REGION + 4].copy_from_slice(&region.to_le_bytes());
    if let Some(t) = target {
        k[K_TARGET..K_TARGET + 4].copy_from_slice(&t.to_le_bytes());
    }
    k
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn parse(k: &[u8], v: &[u8]) -> Option<Mark> {
    if (k.len() != PENDING_KEY && k.len() != ACTIVE_KEY) || v.len() != 8 {
        return None;
    }
    Some(Mark {
        object: ObjectId {
            volume: u32_at(k, K_VOLUME),
            vnode: u32_at(k, K_VNODE),
            unique: u32_at(k, K_UNIQUE),
            chunk: u64_at(k, K_CHUNK),
        },
        region: u32_at(k, K_REGION),
        target: if k.len() == PENDING_KEY {
            u32_at(k, K_TARGET)
        } else {
            0
        },
        value: u64_at(v, 0),
    })
}

/// The two mark tables of one brick.
pub struct Marks {
    rvm: Arc<Rvm>,
    pending: PMap,
    active: PMap,
    /// Changes are read-modify-write of counts: one at a time.
    lock: Mutex<()>,
}

fn io(e: RvmError) -> Refusal {
    (ErrorCode::Io, e.to_string())
}

impl Marks {
    /// Opens (or creates) both tables.
    pub fn open(rvm: Arc<Rvm>) -> Result<Marks, RvmError> {
        let pending = PMap::open_or_create(&rvm, PENDING_ROOT)?;
        let active = PMap::open_or_create(&rvm, ACTIVE_ROOT)?;
        Ok(Marks {
            rvm,
            pending,
            active,
            lock: Mutex::new(()),
        })
    }

    /// Handles a `Marks` request.
    pub fn handle(&self, r: &MarksReq) -> Result<MarksReply, Refusal> {
        let changes = matches!(
            r.op,
            MarksOp::AddPending | MarksOp::ClearPending | MarksOp::SetActive | MarksOp::ClearActive
        );
        if changes && (r.count > MAX_REGIONS || r.first.checked_add(r.count).is_none()) {
            return Err((
                ErrorCode::Invalid,
                format!("{} regions from {} is over the limit", r.count, r.first),
            ));
        }
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        match r.op {
            MarksOp::ListPending => {
                Ok(self.list(&self.pending, |m| m.object.volume == r.object.volume))
            }
            MarksOp::ListActive => Ok(self.list(&self.active, |m| {
                m.object.volume == r.object.volume
                    && m.object.vnode == r.object.vnode
                    && m.object.unique == r.object.unique
            })),
            MarksOp::AddPending | MarksOp::ClearPending => {
                let mut tx = self.rvm.begin();
                for region in r.first..r.first + r.count {
                    let k = key(&r.object, region, Some(r.target));
                    let old = match self.pending.get(&tx, &k).map_err(io)? {
                        Some(v) if v.len() == 8 => u64_at(&v, 0),
                        _ => 0,
                    };
                    let new = if r.op == MarksOp::AddPending {
                        old.saturating_add(r.amount)
                    } else {
                        old.saturating_sub(r.amount)
                    };
                    if new == 0 {
                        self.pending.remove(&mut tx, &k).map_err(io)?;
                    } else {
                        self.pending
                            .insert(&mut tx, &k, &new.to_le_bytes())
                            .map_err(io)?;
                    }
                }
                tx.commit(CommitMode::Flush).map_err(io)?;
                Ok(MarksReply::default())
            }
            MarksOp::SetActive | MarksOp::ClearActive => {
                let mut tx = self.rvm.begin();
                for region in r.first..r.first + r.count {
                    let k = key(&r.object, region, None);
                    if r.op == MarksOp::SetActive {
                        self.active
                            .insert(&mut tx, &k, &r.amount.to_le_bytes())
                            .map_err(io)?;
                    } else {
                        self.active.remove(&mut tx, &k).map_err(io)?;
                    }
                }
                tx.commit(CommitMode::Flush).map_err(io)?;
                Ok(MarksReply::default())
            }
        }
    }

    fn list(&self, map: &PMap, keep: impl Fn(&Mark) -> bool) -> MarksReply {
        let mut reply = MarksReply::default();
        for (k, v) in map.iter(&*self.rvm).flatten() {
            let Some(m) = parse(&k, &v) else { continue };
            if !keep(&m) {
                continue;
            }
            if reply.marks.len() == MAX_MARKS {
                reply.flags |= MARKS_MORE;
                break;
            }
            reply.marks.push(m);
        }
        reply.marks.sort();
        reply
    }
}
