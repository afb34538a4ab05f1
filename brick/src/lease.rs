//! Write leases with fencing epochs, one per object (Fid).
//!
//! A lease gives one writer (an `owner` id) the right to change an object
//! for a bounded time. Every new grant bumps the object's epoch, persisted
//! in the RVM table at root slot [`LEASE_ROOT`] before the grant is
//! answered, so a brick that restarts never hands out an epoch twice.
//! Writes, punches, zeroes and removes carry the writer's epoch; one from
//! an older epoch is refused with `StaleEpoch` (fencing), and one without
//! an epoch (0) is refused while someone holds a live lease.
//!
//! The time bound lives in memory only: after a restart every lease is
//! expired, and the table's `held` flag tells the next holder that the last
//! lease ended without a clean release (its regions may be half-written).
//!
//! Record (value of the table, key = Fid as `volume u32 | vnode u32 |
//! unique u32`, little-endian):
//!
//! ```text
//!  0        8       12
//!  +--------+-------+
//!  | epoch  | flags |   flags bit 0: held (granted, not released)
//!  |  u64   |  u32  |
//!  +--------+-------+
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storage::rvm::{map::PMap, CommitMode, Rvm, RvmError};
use transport::wire::{ErrorCode, LeaseOp, LeaseReply, LeaseReq, ObjectId, LEASE_UNCLEAN};

/// RVM root slot of the lease table.
pub const LEASE_ROOT: u32 = 3;

const REC_EPOCH: usize = 0;
const REC_FLAGS: usize = 8;
const REC_LEN: usize = 12;
const FLAG_HELD: u32 = 1;

/// Longest lease a client may ask for in one grant or renewal.
pub const MAX_LEASE: Duration = Duration::from_secs(300);

type FidKey = [u8; 12];

fn fid_key(o: &ObjectId) -> FidKey {
    let mut k = [0u8; 12];
    k[0..4].copy_from_slice(&o.volume.to_le_bytes());
    k[4..8].copy_from_slice(&o.vnode.to_le_bytes());
    k[8..12].copy_from_slice(&o.unique.to_le_bytes());
    k
}

#[derive(Debug, Clone, Copy, Default)]
struct Record {
    epoch: u64,
    held: bool,
}

#[derive(Debug, Clone, Copy)]
struct Live {
    owner: u64,
    epoch: u64,
    until: Instant,
}

#[derive(Default)]
struct State {
    /// Persisted records read so far (the table is the truth).
    records: HashMap<FidKey, Record>,
    live: HashMap<FidKey, Live>,
}

/// An error for the reply: a code and a message.
pub type Refusal = (ErrorCode, String);

/// The lease table of one brick.
pub struct Leases {
    rvm: Arc<Rvm>,
    map: PMap,
    state: Mutex<State>,
}

impl Leases {
    /// Opens (or creates) the table.
    pub fn open(rvm: Arc<Rvm>) -> Result<Leases, RvmError> {
        let map = PMap::open_or_create(&rvm, LEASE_ROOT)?;
        Ok(Leases {
            rvm,
            map,
            state: Mutex::new(State::default()),
        })
    }

    fn record(&self, st: &mut State, key: &FidKey) -> Result<Record, Refusal> {
        if let Some(r) = st.records.get(key) {
            return Ok(*r);
        }
        let rec = match self.map.get(&*self.rvm, key) {
            Err(e) => return Err((ErrorCode::Io, e.to_string())),
            Ok(None) => Record::default(),
            Ok(Some(v)) if v.len() == REC_LEN => {
                let mut e = [0u8; 8];
                e.copy_from_slice(&v[REC_EPOCH..REC_EPOCH + 8]);
                let mut f = [0u8; 4];
                f.copy_from_slice(&v[REC_FLAGS..REC_FLAGS + 4]);
                Record {
                    epoch: u64::from_le_bytes(e),
                    held: u32::from_le_bytes(f) & FLAG_HELD != 0,
                }
            }
            Ok(Some(_)) => return Err((ErrorCode::Internal, "lease record is malformed".into())),
        };
        st.records.insert(*key, rec);
        Ok(rec)
    }

    fn store(&self, st: &mut State, key: &FidKey, rec: Record) -> Result<(), Refusal> {
        let mut v = [0u8; REC_LEN];
        v[REC_EPOCH..REC_EPOCH + 8].copy_from_slice(&rec.epoch.to_le_bytes());
        let flags = if rec.held { FLAG_HELD } else { 0 };
        v[REC_FLAGS..REC_FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
        let mut tx = self.rvm.begin();
        self.map
            .insert(&mut tx, key, &v)
            .map_err(|e| (ErrorCode::Io, e.to_string()))?;
        tx.commit(CommitMode::Flush)
            .map_err(|e| (ErrorCode::Io, e.to_string()))?;
        st.records.insert(*key, rec);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles a `Lease` request.
    pub fn handle(&self, r: &LeaseReq) -> Result<LeaseReply, Refusal> {
        if r.object.chunk != 0 {
            return Err((
                ErrorCode::Invalid,
                "a lease names a whole object (chunk 0)".into(),
            ));
        }
        if r.owner == 0 {
            return Err((ErrorCode::Invalid, "lease owner 0 is reserved".into()));
        }
        let duration = Duration::from_millis(r.duration_ms as u64).min(MAX_LEASE);
        let key = fid_key(&r.object);
        let now = Instant::now();
        let mut st = self.lock();
        let rec = self.record(&mut st, &key)?;
        let live = st.live.get(&key).copied().filter(|l| l.until > now);
        match r.op {
            LeaseOp::Acquire => {
                if let Some(l) = live {
                    if l.owner != r.owner {
                        let left = l.until.saturating_duration_since(now);
                        return Err((
                            ErrorCode::Busy,
                            format!(
                                "object is leased to another writer at epoch {} for {} ms more",
                                l.epoch,
                                left.as_millis()
                            ),
                        ));
                    }
                }
                // A new grant, even to the same owner: the epoch moves so
                // anything still in flight from an older grant is fenced.
                let unclean = rec.held;
                let next = Record {
                    epoch: rec.epoch + 1,
                    held: true,
                };
                self.store(&mut st, &key, next)?;
                st.live.insert(
                    key,
                    Live {
                        owner: r.owner,
                        epoch: next.epoch,
                        until: now + duration,
                    },
                );
                Ok(LeaseReply {
                    epoch: next.epoch,
                    flags: if unclean { LEASE_UNCLEAN } else { 0 },
                })
            }
            LeaseOp::Renew => {
                let ok = match live {
                    Some(l) => l.owner == r.owner && l.epoch == r.epoch,
                    // Expired (or the brick restarted) and nobody took it
                    // since: the holder may go on.
                    None => rec.held && rec.epoch == r.epoch,
                };
                if !ok {
                    return Err((
                        ErrorCode::StaleEpoch,
                        format!("lease at epoch {} is gone (now {})", r.epoch, rec.epoch),
                    ));
                }
                st.live.insert(
                    key,
                    Live {
                        owner: r.owner,
                        epoch: r.epoch,
                        until: now + duration,
                    },
                );
                Ok(LeaseReply {
                    epoch: r.epoch,
                    flags: 0,
                })
            }
            LeaseOp::Release => {
                let mine = match live {
                    Some(l) => l.owner == r.owner && l.epoch == r.epoch,
                    None => rec.epoch == r.epoch,
                };
                if !mine {
                    return Err((
                        ErrorCode::StaleEpoch,
                        format!("lease at epoch {} is gone (now {})", r.epoch, rec.epoch),
                    ));
                }
                if rec.held {
                    self.store(
                        &mut st,
                        &key,
                        Record {
                            epoch: rec.epoch,
                            held: false,
                        },
                    )?;
                }
                st.live.remove(&key);
                Ok(LeaseReply {
                    epoch: rec.epoch,
                    flags: 0,
                })
            }
        }
    }

    /// May a change at `epoch` (0 = no lease) touch `object` now?
    pub fn check(&self, object: &ObjectId, epoch: u64) -> Result<(), Refusal> {
        let key = fid_key(object);
        let now = Instant::now();
        let mut st = self.lock();
        let rec = self.record(&mut st, &key)?;
        if epoch == 0 {
            if let Some(l) = st.live.get(&key).filter(|l| l.until > now) {
                return Err((
                    ErrorCode::StaleEpoch,
                    format!(
                        "object is leased at epoch {}; a change without a lease is refused",
                        l.epoch
                    ),
                ));
            }
            return Ok(());
        }
        if epoch < rec.epoch {
            return Err((
                ErrorCode::StaleEpoch,
                format!(
                    "epoch {epoch} is older than the object's epoch {}",
                    rec.epoch
                ),
            ));
        }
        if epoch > rec.epoch {
            return Err((
                ErrorCode::Invalid,
                format!("epoch {epoch} was never granted (object at {})", rec.epoch),
            ));
        }
        Ok(())
    }
}
