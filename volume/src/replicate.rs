//! `Replicate`: one set of N bricks holding identical copies (GlusterFS
//! AFR, reduced).
//!
//! - Changes (write, punch, zero) go to every brick of the set that is up,
//!   in parallel; they succeed when a quorum took them. Before a change is
//!   acknowledged, every brick that missed it is marked pending for the
//!   change's regions on the bricks that took it (durably), so heal knows
//!   what to copy and reads know whom to avoid.
//! - Reads go to one brick that is up and that no one marks stale for the
//!   range, spreading load round-robin over the good ones.
//! - Leases: a writer holds the object's lease on a quorum of the set; its
//!   changes carry each brick's epoch, and a brick refuses older epochs.
//! - Activity log: under a lease, a region is marked active on the bricks
//!   before its first change; after a takeover from a writer that did not
//!   release cleanly, the new holder copies every active region from one
//!   good brick to the others before it serves (see [`Replicate::settle`]).
//!
//! A dead brick costs one request timeout (`ping-timeout`) to the calls in
//! flight to it; after that its link is not up and it is skipped until the
//! transport reconnects.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use iobuf::IoBuf;
use tokio::task::JoinSet;
use transport::wire::{
    check_block_crcs, DataRef, LeaseOp, LeaseReq, MarksOp, MarksReq, ObjectId, RangeReq, ReadReq,
    WriteBlocksReq, WriteReq, CRC_BLOCK, FLAG_FUA, LEASE_UNCLEAN, REGION_SIZE,
};
use transport::{BoxFuture, ErrorCode, ErrorReply, Payload, Request, Response};

use crate::disperse::Geometry;
use crate::error::{Result, VolumeError};
use crate::link::{BrickLink, CallFail};
use crate::spec::VolumeSpec;
use crate::xlator::{split, Fid, LeaseAction, LeaseOutcome, Piece, Translator, SIZE_CHUNK};

/// How many bricks of a set a change needs (`quorum-type`, `quorum-count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    /// Bricks that must take a change.
    pub need: usize,
    /// The first brick of the set must be among them (`auto` with an even
    /// set: half the bricks make quorum only with the first one).
    pub first_required: bool,
}

impl Quorum {
    /// The quorum of a set of `n` bricks under `spec`'s options:
    /// `quorum-type` `auto` (default: a majority; with an even `n`, half
    /// including the first brick), `fixed` (`quorum-count` bricks) or
    /// `none` (one brick).
    pub fn from_spec(spec: &VolumeSpec, n: usize) -> Result<Quorum> {
        let bad = |reason: String| VolumeError::Spec {
            volume: spec.name.clone(),
            reason,
        };
        match spec.option("quorum-type", "auto") {
            "auto" => Ok(Quorum {
                need: if n % 2 == 0 { n / 2 } else { n / 2 + 1 }.max(1),
                first_required: n % 2 == 0,
            }),
            "none" => Ok(Quorum {
                need: 1,
                first_required: false,
            }),
            "fixed" => {
                let c = spec.option("quorum-count", "");
                let need: usize = c
                    .parse()
                    .map_err(|_| bad(format!("quorum-count {c:?} is not a number")))?;
                if need == 0 || need > n {
                    return Err(bad(format!("quorum-count {need} is not in 1..={n}")));
                }
                Ok(Quorum {
                    need,
                    first_required: false,
                })
            }
            t => Err(bad(format!("quorum-type {t:?} is not auto, fixed or none"))),
        }
    }

    /// The quorum of a dispersed set of `n` bricks with `k` data
    /// fragments: `quorum-type auto` (default) K + 1 (at most `n`), `fixed`
    /// (`quorum-count`, in `k..=n`), `none` (K, the fewest that hold a
    /// stripe).
    pub fn for_disperse(spec: &VolumeSpec, k: usize, n: usize) -> Result<Quorum> {
        let need = match spec.option("quorum-type", "auto") {
            "auto" => (k + 1).min(n),
            "none" => k,
            "fixed" => {
                let q = Quorum::from_spec(spec, n)?;
                if q.need < k {
                    return Err(VolumeError::Spec {
                        volume: spec.name.clone(),
                        reason: format!(
                            "quorum-count {} is below the {k} fragments a stripe needs",
                            q.need
                        ),
                    });
                }
                q.need
            }
            _ => Quorum::from_spec(spec, n)?.need,
        };
        Ok(Quorum {
            need,
            first_required: false,
        })
    }

    /// Do the bricks marked `true` make quorum?
    pub fn met(&self, ok: &[bool]) -> bool {
        ok.iter().filter(|b| **b).count() >= self.need
            && (!self.first_required || ok.first().copied().unwrap_or(false))
    }
}

/// The regions `[first, first + count)` a chunk range touches.
pub fn regions(offset: u64, len: u64) -> (u32, u32) {
    if len == 0 {
        return (0, 0);
    }
    let first = offset / REGION_SIZE;
    let last = (offset + len - 1) / REGION_SIZE;
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    (clamp(first), clamp(last - first + 1))
}

#[derive(Debug, Clone)]
struct Held {
    /// Each brick's epoch for our lease (0: not granted there).
    epochs: Vec<u64>,
    duration_ms: u32,
    /// Set when a quorum of bricks said a newer writer holds it.
    lost: Option<String>,
    /// Regions marked active under this lease.
    active: HashSet<(ObjectId, u32)>,
}

#[derive(Default)]
struct SetState {
    /// Known pending marks: (chunk, region, brick index against).
    stale: HashSet<(ObjectId, u32, u32)>,
    /// Each link's `ups` when the marks were last loaded.
    seen_ups: Vec<u64>,
    leases: HashMap<Fid, Held>,
}

type Answers = Vec<(usize, std::result::Result<(Response, Payload), CallFail>)>;

/// One replica set.
pub struct Replicate {
    volume: String,
    volume_id: u32,
    chunk_size: u64,
    links: Vec<Arc<BrickLink>>,
    quorum: Quorum,
    owner: u64,
    state: Mutex<SetState>,
    next: AtomicUsize,
    /// Changes hold it shared; a read repair holds it exclusively while it
    /// copies, so a change of this client cannot land between the repair's
    /// read of the good copy and its write of the bad one (which would put
    /// the older bytes back on one brick only).
    repair_gate: tokio::sync::RwLock<()>,
    /// Held while bricks are asked to join a lease, so two changes that
    /// find the same brick missing do not both ask it: each grant raises
    /// the brick's epoch, and a change sent with the first would then be
    /// fenced by the second.
    joins: tokio::sync::Mutex<()>,
    /// Set for the core of a dispersed set: region copies and settles
    /// then rebuild fragments by decoding instead of copying bytes.
    disperse: Option<Arc<Geometry>>,
}

impl std::fmt::Debug for Replicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicate")
            .field("volume", &self.volume)
            .field("links", &self.links)
            .field("quorum", &self.quorum)
            .finish()
    }
}

pub(crate) fn reply_err(r: &Response) -> Option<&ErrorReply> {
    match r {
        Response::Error(e) => Some(e),
        _ => None,
    }
}

impl Replicate {
    /// A set over `links` (in set order); `owner` is this client's lease
    /// owner id.
    pub fn new(spec: &VolumeSpec, links: Vec<Arc<BrickLink>>, owner: u64) -> Result<Replicate> {
        let quorum = Quorum::from_spec(spec, links.len())?;
        Ok(Replicate::build(spec, links, owner, quorum, None))
    }

    /// The core of a dispersed set over `links`: leases, marks, the size
    /// record and the activity log work as for a replica set; the quorum
    /// is [`Quorum::for_disperse`], and heal and settle decode fragments.
    pub fn new_disperse(
        spec: &VolumeSpec,
        links: Vec<Arc<BrickLink>>,
        owner: u64,
        geometry: Arc<Geometry>,
    ) -> Result<Replicate> {
        let quorum = Quorum::for_disperse(spec, geometry.data, links.len())?;
        Ok(Replicate::build(spec, links, owner, quorum, Some(geometry)))
    }

    fn build(
        spec: &VolumeSpec,
        links: Vec<Arc<BrickLink>>,
        owner: u64,
        quorum: Quorum,
        disperse: Option<Arc<Geometry>>,
    ) -> Replicate {
        Replicate {
            volume: spec.name.clone(),
            volume_id: spec.id,
            chunk_size: spec.chunk_size,
            quorum,
            owner,
            state: Mutex::new(SetState {
                seen_ups: vec![0; links.len()],
                ..SetState::default()
            }),
            links,
            next: AtomicUsize::new(0),
            repair_gate: tokio::sync::RwLock::new(()),
            joins: tokio::sync::Mutex::new(()),
            disperse,
        }
    }

    /// K + M of a dispersed set's core (`None` for a replica set).
    pub(crate) fn geometry(&self) -> Option<&Arc<Geometry>> {
        self.disperse.as_ref()
    }

    /// The volume's name.
    pub fn volume(&self) -> &str {
        &self.volume
    }

    /// The volume's id.
    pub fn volume_id(&self) -> u32 {
        self.volume_id
    }

    /// The same set under a newer volume description (`spec`, `links` in
    /// its set order): options such as the quorum come from `spec`, and what
    /// this client holds carries over, matched by brick address — its
    /// leases (a brick new to the set has no epoch yet and is asked to join
    /// the lease on the next change, as a brick that restarts is), the
    /// regions marked active under them, and the pending marks it knows.
    pub fn succeed(&self, spec: &VolumeSpec, links: Vec<Arc<BrickLink>>) -> Result<Replicate> {
        let next = match &self.disperse {
            Some(g) => Replicate::new_disperse(spec, links, self.owner, g.clone())?,
            None => Replicate::new(spec, links, self.owner)?,
        };
        // Old index -> new index, for bricks in both.
        let map: Vec<Option<usize>> = self
            .links
            .iter()
            .map(|o| next.links.iter().position(|n| n.addr() == o.addr()))
            .collect();
        {
            let old = self.st();
            let mut st = next.st();
            for (fid, h) in &old.leases {
                let mut epochs = vec![0; next.links.len()];
                for (i, e) in h.epochs.iter().enumerate() {
                    if let Some(j) = map[i] {
                        epochs[j] = *e;
                    }
                }
                st.leases.insert(
                    *fid,
                    Held {
                        epochs,
                        duration_ms: h.duration_ms,
                        lost: h.lost.clone(),
                        active: h.active.clone(),
                    },
                );
            }
            st.stale = old
                .stale
                .iter()
                .filter_map(|&(o, r, b)| map[b as usize].map(|j| (o, r, j as u32)))
                .collect();
        }
        Ok(next)
    }

    /// The set's bricks.
    pub fn links(&self) -> &[Arc<BrickLink>] {
        &self.links
    }

    /// The set's quorum.
    pub fn quorum(&self) -> Quorum {
        self.quorum
    }

    fn st(&self) -> MutexGuard<'_, SetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn up(&self) -> Vec<bool> {
        self.links.iter().map(|l| l.is_up()).collect()
    }

    pub(crate) fn no_quorum(&self, op: &'static str, up: &[bool]) -> VolumeError {
        VolumeError::NoQuorum {
            volume: self.volume.clone(),
            op,
            need: self.quorum.need,
            set: self.links.len(),
            up: up.iter().filter(|b| **b).count(),
        }
    }

    pub(crate) async fn fan_out(
        &self,
        targets: &[usize],
        mut mk: impl FnMut(usize) -> (Request, Payload),
    ) -> Answers {
        let mut js = JoinSet::new();
        for &i in targets {
            let (req, p) = mk(i);
            let link = self.links[i].clone();
            js.spawn(async move { (i, link.call(req, p).await) });
        }
        let mut out = Vec::with_capacity(targets.len());
        while let Some(r) = js.join_next().await {
            if let Ok(x) = r {
                out.push(x);
            }
        }
        out
    }

    pub(crate) fn transport_err(
        &self,
        op: &'static str,
        i: usize,
        fid: Fid,
        offset: u64,
        f: CallFail,
    ) -> VolumeError {
        match f {
            CallFail::Transport(source) => VolumeError::Transport {
                volume: self.volume.clone(),
                op,
                brick: self.links[i].addr().to_owned(),
                fid,
                offset,
                source: Box::new(source),
            },
            CallFail::Down => self.no_quorum(op, &self.up()),
        }
    }

    /// Loads the pending marks the set's bricks hold, if a brick came up
    /// since the last load (or `force`). Marks only accumulate here, except
    /// on a forced reload, which replaces them with what the bricks say.
    pub async fn load_marks(&self, force: bool) {
        let ups: Vec<u64> = self.links.iter().map(|l| l.ups()).collect();
        if !force && self.st().seen_ups == ups {
            return;
        }
        let up: Vec<usize> = (0..self.links.len())
            .filter(|&i| self.links[i].is_up())
            .collect();
        let vol = self.volume_id;
        let answers = self
            .fan_out(&up, |_| {
                (
                    list_req(
                        MarksOp::ListPending,
                        vol,
                        Fid::of(&ObjectId::default_for(vol)),
                    ),
                    Payload::None,
                )
            })
            .await;
        let mut found = HashSet::new();
        // Only a list from every brick of the set may replace what we know:
        // the marks against a brick may live only on bricks that are down.
        let mut complete = up.len() == self.links.len();
        for (_, a) in answers {
            match a {
                Ok((Response::Marks(m), _)) => {
                    found.extend(m.marks.iter().map(|m| (m.object, m.region, m.target)));
                }
                _ => complete = false,
            }
        }
        let mut st = self.st();
        if force && complete {
            st.stale = found;
        } else {
            st.stale.extend(found);
        }
        st.seen_ups = ups;
    }

    pub(crate) fn stale_for(&self, oid: &ObjectId, first: u32, count: u32, brick: usize) -> bool {
        let st = self.st();
        (first..first.saturating_add(count)).any(|r| st.stale.contains(&(*oid, r, brick as u32)))
    }

    pub(crate) fn lease_epochs(&self, fid: Fid) -> Result<Vec<u64>> {
        let st = self.st();
        match st.leases.get(&fid) {
            None => Ok(vec![0; self.links.len()]),
            Some(h) => match &h.lost {
                Some(d) => Err(VolumeError::Fenced {
                    volume: self.volume.clone(),
                    fid,
                    detail: d.clone(),
                }),
                None => Ok(h.epochs.clone()),
            },
        }
    }

    /// Each brick's epoch of this client's lease on `fid` (0: none).
    pub(crate) fn epochs(&self, fid: Fid) -> Vec<u64> {
        self.st()
            .leases
            .get(&fid)
            .map(|h| h.epochs.clone())
            .unwrap_or_else(|| vec![0; self.links.len()])
    }

    /// Under a lease, bricks that are up but not granted (they were down at
    /// acquire time, or restarted) are asked to join it.
    pub(crate) async fn join_lease(&self, fid: Fid, up: &[bool]) {
        let missing = || {
            let st = self.st();
            let h = st.leases.get(&fid)?;
            let missing: Vec<usize> = (0..self.links.len())
                .filter(|&i| up[i] && h.epochs[i] == 0)
                .collect();
            Some((missing, h.duration_ms)).filter(|(m, _)| !m.is_empty())
        };
        if missing().is_none() {
            return;
        }
        // Looked at again under the lock: another change may have brought
        // them in meanwhile.
        let _joining = self.joins.lock().await;
        let Some((missing, duration_ms)) = missing() else {
            return;
        };
        let answers = self
            .fan_out(&missing, |_| {
                self.lease_req(fid, LeaseOp::Acquire, duration_ms, 0)
            })
            .await;
        let mut st = self.st();
        if let Some(h) = st.leases.get_mut(&fid) {
            for (i, a) in answers {
                if let Ok((Response::Lease(l), _)) = a {
                    h.epochs[i] = l.epoch;
                }
            }
        }
    }

    fn lease_req(&self, fid: Fid, op: LeaseOp, duration_ms: u32, epoch: u64) -> (Request, Payload) {
        (
            Request::Lease(LeaseReq {
                object: fid.chunk(0),
                op,
                duration_ms,
                owner: self.owner,
                epoch,
            }),
            Payload::None,
        )
    }

    /// Activity log: marks the regions active on the bricks that are up
    /// before the first change to them under the lease.
    pub(crate) async fn mark_active(
        &self,
        fid: Fid,
        oid: ObjectId,
        first: u32,
        count: u32,
        up: &[usize],
    ) -> Result<()> {
        let (todo, epoch) = {
            let st = self.st();
            let Some(h) = st.leases.get(&fid) else {
                return Ok(());
            };
            let todo: Vec<u32> = (first..first.saturating_add(count))
                .filter(|r| !h.active.contains(&(oid, *r)))
                .collect();
            (todo, h.epochs.iter().copied().max().unwrap_or(0))
        };
        let (Some(&lo), Some(&hi)) = (todo.first(), todo.last()) else {
            return Ok(());
        };
        let answers = self
            .fan_out(up, |_| {
                (
                    Request::Marks(MarksReq {
                        op: MarksOp::SetActive,
                        target: 0,
                        object: oid,
                        first: lo,
                        count: hi - lo + 1,
                        amount: epoch,
                    }),
                    Payload::None,
                )
            })
            .await;
        let mut ok = vec![false; self.links.len()];
        for (i, a) in answers {
            ok[i] = matches!(a, Ok((Response::Marks(_), _)));
        }
        if !self.quorum.met(&ok) {
            return Err(self.no_quorum("activity mark", &ok));
        }
        let mut st = self.st();
        if let Some(h) = st.leases.get_mut(&fid) {
            h.active.extend((lo..=hi).map(|r| (oid, r)));
        }
        Ok(())
    }

    /// A change (write, punch, zero) of one chunk piece: fan out, mark the
    /// bricks that missed it, check quorum.
    /// `need_clean`: how many bricks clean for the regions must take it
    /// (1 for a replica set; K for a dispersed one, whose reads need K
    /// fragments). `mk(i, chunk, epoch)` makes brick `i`'s request.
    pub(crate) async fn change(
        &self,
        op: &'static str,
        fid: Fid,
        (chunk, offset, len): (u64, u64, u64),
        need_clean: usize,
        mk: impl Fn(usize, ObjectId, u64) -> (Request, Payload),
    ) -> Result<()> {
        self.load_marks(false).await;
        let oid = fid.chunk(chunk);
        let up = self.up();
        if !self.quorum.met(&up) {
            return Err(self
                .unavailable(op, fid, chunk, offset, "down".into())
                .unwrap_or_else(|| self.no_quorum(op, &up)));
        }
        self.join_lease(fid, &up).await;
        let epochs = self.lease_epochs(fid)?;
        // The size record is one mark (region 0) whatever its size: heal
        // copies the size, not bytes.
        let (first, count) = if chunk == SIZE_CHUNK {
            (0, 1)
        } else {
            regions(offset, len)
        };
        // A change must reach a brick that holds every acknowledged change
        // of its regions (no one marks it stale there); acknowledging it on
        // stale copies only would leave no complete copy anywhere.
        let mut clean: Vec<bool> = (0..self.links.len())
            .map(|i| up[i] && !self.stale_for(&oid, first, count, i))
            .collect();
        let enough = |c: &[bool]| c.iter().filter(|g| **g).count() >= need_clean;
        if !enough(&clean) {
            self.load_marks(true).await;
            clean = (0..self.links.len())
                .map(|i| up[i] && !self.stale_for(&oid, first, count, i))
                .collect();
        }
        let no_good_copy = || VolumeError::NoGoodCopy {
            volume: self.volume.clone(),
            fid,
            chunk,
            offset,
        };
        if !enough(&clean) {
            return Err(no_good_copy());
        }
        let leased = epochs.iter().any(|e| *e != 0);
        let targets: Vec<usize> = (0..self.links.len()).filter(|&i| up[i]).collect();
        if leased {
            self.mark_active(fid, oid, first, count, &targets).await?;
        }
        let gate = self.repair_gate.read().await;
        let answers = self.fan_out(&targets, |i| mk(i, oid, epochs[i])).await;
        drop(gate);
        let mut ok = vec![false; self.links.len()];
        let mut fenced = None;
        for (i, a) in answers {
            match a {
                Ok((r, _)) => match reply_err(&r) {
                    // Under a lease, only a brick that granted it to us can
                    // fence us. One that did not (it still holds a dead
                    // writer's unexpired lease) refuses our epoch-0 change:
                    // it missed the change, like a brick that is down.
                    Some(e) if e.code == ErrorCode::StaleEpoch && !(leased && epochs[i] == 0) => {
                        fenced = Some(e.message.clone())
                    }
                    Some(e) => {
                        tracing::warn!(volume = %self.volume, brick = self.links[i].addr(), %fid, op, error = %e, "brick refused a change");
                    }
                    None => ok[i] = true,
                },
                Err(f) => {
                    tracing::warn!(volume = %self.volume, brick = self.links[i].addr(), %fid, op, error = ?f, "brick missed a change");
                }
            }
        }
        if let Some(detail) = fenced {
            if leased {
                if let Some(h) = self.st().leases.get_mut(&fid) {
                    h.lost = Some(detail.clone());
                }
            }
            return Err(VolumeError::Fenced {
                volume: self.volume.clone(),
                fid,
                detail,
            });
        }
        let good: Vec<usize> = (0..ok.len()).filter(|&i| ok[i]).collect();
        let missed: Vec<usize> = (0..ok.len()).filter(|&i| !ok[i]).collect();
        if !missed.is_empty() && !good.is_empty() && count > 0 {
            self.add_pending(oid, first, count, &good, &missed).await?;
        }
        if !self.quorum.met(&ok) {
            let reason = "it did not take the change: down, unreachable or refused".to_string();
            return Err(self
                .unavailable(op, fid, chunk, offset, reason)
                .unwrap_or_else(|| self.no_quorum(op, &ok)));
        }
        if (0..ok.len()).filter(|&i| ok[i] && clean[i]).count() < need_clean {
            return Err(no_good_copy());
        }
        Ok(())
    }

    pub(crate) async fn add_pending(
        &self,
        oid: ObjectId,
        first: u32,
        count: u32,
        good: &[usize],
        missed: &[usize],
    ) -> Result<()> {
        for &t in missed {
            let answers = self
                .fan_out(good, |_| {
                    (
                        Request::Marks(MarksReq {
                            op: MarksOp::AddPending,
                            target: t as u32,
                            object: oid,
                            first,
                            count,
                            amount: 1,
                        }),
                        Payload::None,
                    )
                })
                .await;
            if !answers
                .iter()
                .any(|(_, a)| matches!(a, Ok((Response::Marks(_), _))))
            {
                return Err(VolumeError::NoQuorum {
                    volume: self.volume.clone(),
                    op: "pending mark",
                    need: 1,
                    set: self.links.len(),
                    up: 0,
                });
            }
            let mut st = self.st();
            for r in first..first.saturating_add(count) {
                st.stale.insert((oid, r, t as u32));
            }
        }
        Ok(())
    }

    async fn read_piece(&self, fid: Fid, p: Piece, out: &mut [u8]) -> Result<()> {
        self.load_marks(false).await;
        let oid = fid.chunk(p.chunk);
        let (first, count) = regions(p.offset, p.len);
        let mut cands: Vec<usize> = (0..self.links.len())
            .filter(|&i| self.links[i].is_up() && !self.stale_for(&oid, first, count, i))
            .collect();
        if cands.is_empty() {
            // Marks may have been healed since we loaded them.
            self.load_marks(true).await;
            cands = (0..self.links.len())
                .filter(|&i| self.links[i].is_up() && !self.stale_for(&oid, first, count, i))
                .collect();
        }
        if cands.is_empty() {
            let up = self.up();
            if let Some(e) = self.unavailable("read", fid, p.chunk, p.offset, "down".into()) {
                return Err(e);
            }
            if !up.iter().any(|b| *b) {
                return Err(VolumeError::NoQuorum {
                    volume: self.volume.clone(),
                    op: "read",
                    need: 1,
                    set: self.links.len(),
                    up: 0,
                });
            }
            return Err(VolumeError::NoGoodCopy {
                volume: self.volume.clone(),
                fid,
                chunk: p.chunk,
                offset: p.offset,
            });
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        let mut corrupt = Vec::new();
        for k in 0..cands.len() {
            let i = cands[(start + k) % cands.len()];
            match self.read_blocks(i, oid, p.offset, p.len).await {
                BrickRead::Data(buf) => {
                    let data = buf.as_ref().map(|b| b.as_slice()).unwrap_or(&[]);
                    let n = data.len().min(out.len());
                    out[..n].copy_from_slice(&data[..n]);
                    out[n..].fill(0);
                    if !corrupt.is_empty() {
                        self.repair_after_read(fid, oid, p.offset, p.len, i, &corrupt)
                            .await;
                    }
                    return Ok(());
                }
                BrickRead::Corrupt(detail) => {
                    tracing::warn!(volume = %self.volume, brick = self.links[i].addr(), %fid, chunk = p.chunk, offset = p.offset, %detail, "corrupt copy: reading another replica");
                    last = Some(VolumeError::Corrupt {
                        volume: self.volume.clone(),
                        brick: self.links[i].addr().to_owned(),
                        fid,
                        chunk: p.chunk,
                        offset: p.offset,
                        detail,
                    });
                    corrupt.push(i);
                }
                BrickRead::Failed(e) => {
                    // A set of one brick has no other copy: say which
                    // brick and chunk are out of reach.
                    last = Some(match e {
                        VolumeError::NoQuorum { .. } | VolumeError::Transport { .. } => self
                            .unavailable("read", fid, p.chunk, p.offset, e.to_string())
                            .unwrap_or(e),
                        e => e,
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| self.no_quorum("read", &self.up())))
    }

    /// For a set of one brick (distribute, a stripe column): the error that
    /// names the brick and chunk out of reach. `None` for real replica sets.
    fn unavailable(
        &self,
        op: &'static str,
        fid: Fid,
        chunk: u64,
        offset: u64,
        reason: String,
    ) -> Option<VolumeError> {
        (self.links.len() == 1).then(|| VolumeError::Unavailable {
            volume: self.volume.clone(),
            op,
            brick: self.links[0].addr().to_owned(),
            fid,
            chunk,
            offset,
            reason,
        })
    }

    async fn write_all(&self, fid: Fid, offset: u64, data: &[u8]) -> Result<()> {
        for p in split(offset, data.len() as u64, self.chunk_size) {
            let piece = &data[p.at as usize..(p.at + p.len) as usize];
            // One CRC pass per piece, whatever the number of copies.
            let crcs = transport::wire::block_crcs(p.offset, piece);
            self.change(
                "write",
                fid,
                (p.chunk, p.offset, p.len),
                1,
                |_, oid, epoch| {
                    (
                        Request::WriteBlocks(WriteBlocksReq {
                            write: WriteReq {
                                object: oid,
                                offset: p.offset,
                                epoch,
                                flags: 0,
                                crc32c: 0,
                                data: DataRef::None,
                            },
                            crcs: crcs.clone(),
                        }),
                        Payload::Out(IoBuf::from_slice(piece)),
                    )
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn range_all(&self, zero: bool, fid: Fid, offset: u64, len: u64) -> Result<()> {
        let op = if zero { "zero" } else { "punch" };
        for p in split(offset, len, self.chunk_size) {
            self.range_piece(op, zero, fid, p.chunk, p.offset, p.len)
                .await?;
        }
        Ok(())
    }

    async fn range_piece(
        &self,
        op: &'static str,
        zero: bool,
        fid: Fid,
        chunk: u64,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        self.change(op, fid, (chunk, offset, len), 1, |_, oid, epoch| {
            let r = RangeReq {
                object: oid,
                offset,
                len,
                epoch,
                flags: 0,
            };
            (
                if zero {
                    Request::Zero(r)
                } else {
                    Request::Punch(r)
                },
                Payload::None,
            )
        })
        .await
    }

    async fn size_of(&self, fid: Fid) -> Result<u64> {
        let up: Vec<usize> = (0..self.links.len())
            .filter(|&i| self.links[i].is_up())
            .collect();
        let oid = fid.chunk(SIZE_CHUNK);
        let answers = self
            .fan_out(&up, |_| {
                (
                    Request::Stat(transport::wire::ObjectReq { object: oid }),
                    Payload::None,
                )
            })
            .await;
        let mut size = None;
        for (_, a) in answers {
            match a {
                Ok((Response::Stat(s), _)) => size = Some(size.unwrap_or(0).max(s.size)),
                Ok((Response::Error(e), _)) if e.code == ErrorCode::NotFound => {
                    size = Some(size.unwrap_or(0))
                }
                _ => {}
            }
        }
        size.ok_or_else(|| self.no_quorum("stat", &self.up()))
    }

    async fn flush_all(&self) -> Result<()> {
        let up: Vec<usize> = (0..self.links.len())
            .filter(|&i| self.links[i].is_up())
            .collect();
        let oid = ObjectId::default_for(self.volume_id);
        let answers = self
            .fan_out(&up, |_| {
                (
                    Request::Flush(transport::wire::ObjectReq { object: oid }),
                    Payload::None,
                )
            })
            .await;
        let mut ok = vec![false; self.links.len()];
        for (i, a) in answers {
            ok[i] = matches!(a, Ok((Response::Flush, _)));
        }
        if !self.quorum.met(&ok) {
            return Err(self.no_quorum("flush", &ok));
        }
        Ok(())
    }

    async fn lease_action(&self, fid: Fid, action: LeaseAction) -> Result<LeaseOutcome> {
        let up = self.up();
        let upi: Vec<usize> = (0..self.links.len()).filter(|&i| up[i]).collect();
        match action {
            LeaseAction::Acquire { duration_ms } => {
                if !self.quorum.met(&up) {
                    return Err(self.no_quorum("lease", &up));
                }
                let answers = self
                    .fan_out(&upi, |_| {
                        self.lease_req(fid, LeaseOp::Acquire, duration_ms, 0)
                    })
                    .await;
                let mut epochs = vec![0; self.links.len()];
                let mut unclean = false;
                let mut busy = None;
                for (i, a) in answers {
                    match a {
                        Ok((Response::Lease(l), _)) => {
                            epochs[i] = l.epoch;
                            unclean |= l.flags & LEASE_UNCLEAN != 0;
                        }
                        Ok((Response::Error(e), _)) => busy = Some(e.message),
                        _ => {}
                    }
                }
                let granted: Vec<bool> = epochs.iter().map(|e| *e != 0).collect();
                if !self.quorum.met(&granted) {
                    let back: Vec<usize> = (0..epochs.len()).filter(|&i| granted[i]).collect();
                    self.fan_out(&back, |i| {
                        self.lease_req(fid, LeaseOp::Release, 0, epochs[i])
                    })
                    .await;
                    return Err(match busy {
                        Some(detail) => VolumeError::LeaseBusy {
                            volume: self.volume.clone(),
                            fid,
                            detail,
                        },
                        None => self.no_quorum("lease", &granted),
                    });
                }
                self.st().leases.insert(
                    fid,
                    Held {
                        epochs,
                        duration_ms,
                        lost: None,
                        active: HashSet::new(),
                    },
                );
                Ok(LeaseOutcome { unclean })
            }
            LeaseAction::Renew => {
                let Some(h) = self.st().leases.get(&fid).cloned() else {
                    return Ok(LeaseOutcome::default());
                };
                if let Some(d) = h.lost {
                    return Err(VolumeError::Fenced {
                        volume: self.volume.clone(),
                        fid,
                        detail: d,
                    });
                }
                self.join_lease(fid, &up).await;
                let epochs = self.epochs(fid);
                let holders: Vec<usize> = (0..epochs.len())
                    .filter(|&i| up[i] && epochs[i] != 0)
                    .collect();
                let answers = self
                    .fan_out(&holders, |i| {
                        self.lease_req(fid, LeaseOp::Renew, h.duration_ms, epochs[i])
                    })
                    .await;
                let mut ok = vec![false; self.links.len()];
                let mut refused = 0;
                let mut detail = String::new();
                for (i, a) in answers {
                    match a {
                        Ok((Response::Lease(_), _)) => ok[i] = true,
                        Ok((Response::Error(e), _)) => {
                            refused += 1;
                            detail = e.message;
                        }
                        _ => {}
                    }
                }
                if self.quorum.met(&ok) {
                    return Ok(LeaseOutcome::default());
                }
                if refused > self.links.len() - self.quorum.need {
                    if let Some(h) = self.st().leases.get_mut(&fid) {
                        h.lost = Some(detail.clone());
                    }
                    return Err(VolumeError::Fenced {
                        volume: self.volume.clone(),
                        fid,
                        detail,
                    });
                }
                Err(self.no_quorum("lease renewal", &ok))
            }
            LeaseAction::Release => {
                let Some(h) = self.st().leases.get(&fid).cloned() else {
                    return Ok(LeaseOutcome::default());
                };
                // The writer is done and every brick that is up has what it
                // acknowledged: the activity log of the lease can go.
                let active: BTreeSet<(ObjectId, u32)> = h.active.iter().copied().collect();
                if h.lost.is_none() {
                    for (oid, r) in active {
                        self.fan_out(&upi, |_| {
                            (
                                Request::Marks(MarksReq {
                                    op: MarksOp::ClearActive,
                                    target: 0,
                                    object: oid,
                                    first: r,
                                    count: 1,
                                    amount: 0,
                                }),
                                Payload::None,
                            )
                        })
                        .await;
                        // A dispersed set's staged fragments of the region
                        // are not needed once it is clean: give the space
                        // back (best effort; a leftover is never read).
                        if self.disperse.is_some() && oid.chunk != SIZE_CHUNK {
                            let stage = ObjectId {
                                chunk: oid.chunk | crate::disperse::STAGE_BIT,
                                ..oid
                            };
                            let granted: Vec<usize> =
                                upi.iter().copied().filter(|&i| h.epochs[i] != 0).collect();
                            self.fan_out(&granted, |i| {
                                (
                                    Request::Punch(RangeReq {
                                        object: stage,
                                        offset: u64::from(r) * REGION_SIZE,
                                        len: REGION_SIZE,
                                        epoch: h.epochs[i],
                                        flags: 0,
                                    }),
                                    Payload::None,
                                )
                            })
                            .await;
                        }
                    }
                }
                let holders: Vec<usize> = (0..h.epochs.len())
                    .filter(|&i| up[i] && h.epochs[i] != 0)
                    .collect();
                self.fan_out(&holders, |i| {
                    self.lease_req(fid, LeaseOp::Release, 0, h.epochs[i])
                })
                .await;
                self.st().leases.remove(&fid);
                Ok(LeaseOutcome::default())
            }
        }
    }

    /// Reads a region's bytes (up to the source chunk's size) from brick
    /// `src` and writes them durably to each of `dsts` with the lease
    /// epochs given. Returns the bytes copied per target.
    pub(crate) async fn copy_region(
        &self,
        oid: ObjectId,
        region: u32,
        src: usize,
        dsts: &[usize],
        epochs: &[u64],
    ) -> Result<u64> {
        if let Some(g) = &self.disperse {
            if oid.chunk != SIZE_CHUNK {
                return crate::disperse::rebuild_region(self, g, oid, region, dsts, epochs).await;
            }
        }
        let fid = Fid::of(&oid);
        let start = region as u64 * REGION_SIZE;
        let (r, _) = self.links[src]
            .call(
                Request::Stat(transport::wire::ObjectReq { object: oid }),
                Payload::None,
            )
            .await
            .map_err(|f| self.transport_err("heal stat", src, fid, start, f))?;
        let size = match r {
            Response::Stat(s) => s.size,
            Response::Error(e) if e.code == ErrorCode::NotFound => 0,
            other => {
                return Err(VolumeError::Protocol {
                    volume: self.volume.clone(),
                    op: "heal stat",
                    brick: self.links[src].addr().to_owned(),
                    reply: format!("{other:?}"),
                })
            }
        };
        if oid.chunk == SIZE_CHUNK {
            if size == 0 {
                return Ok(0);
            }
            return self
                .put_region(oid, size - 1, 1, None, dsts, epochs)
                .await
                .map(|_| 0);
        }
        if start >= size {
            return Ok(0);
        }
        let len = (size - start).min(REGION_SIZE);
        let mut data = vec![0u8; len as usize];
        match self.read_blocks(src, oid, start, len).await {
            BrickRead::Data(Some(b)) => {
                let n = b.len().min(data.len());
                data[..n].copy_from_slice(&b.as_slice()[..n]);
            }
            BrickRead::Data(None) => {}
            BrickRead::Corrupt(detail) => {
                return Err(VolumeError::Corrupt {
                    volume: self.volume.clone(),
                    brick: self.links[src].addr().to_owned(),
                    fid,
                    chunk: oid.chunk,
                    offset: start,
                    detail,
                })
            }
            BrickRead::Failed(e) => return Err(e),
        }
        let zeros = data.iter().all(|b| *b == 0);
        let data = (!zeros).then_some(data);
        self.put_region(oid, start, len, data.as_deref(), dsts, epochs)
            .await
    }

    /// Writes `data` (or punches, for `None`) durably to `dsts`; returns the
    /// data bytes written per target.
    pub(crate) async fn put_region(
        &self,
        oid: ObjectId,
        start: u64,
        len: u64,
        data: Option<&[u8]>,
        dsts: &[usize],
        epochs: &[u64],
    ) -> Result<u64> {
        let fid = Fid::of(&oid);
        let zeros = data.is_none();
        let data = data.unwrap_or(&[]);
        let crcs = transport::wire::block_crcs(start, data);
        let answers = self
            .fan_out(dsts, |i| {
                if zeros {
                    (
                        Request::Punch(RangeReq {
                            object: oid,
                            offset: start,
                            len,
                            epoch: epochs[i],
                            flags: 0,
                        }),
                        Payload::None,
                    )
                } else {
                    (
                        Request::WriteBlocks(WriteBlocksReq {
                            write: WriteReq {
                                object: oid,
                                offset: start,
                                epoch: epochs[i],
                                flags: FLAG_FUA,
                                crc32c: 0,
                                data: DataRef::None,
                            },
                            crcs: crcs.clone(),
                        }),
                        Payload::Out(IoBuf::from_slice(data)),
                    )
                }
            })
            .await;
        for (i, a) in answers {
            match a {
                Ok((Response::WriteBlocks(_), _)) | Ok((Response::Punch, _)) => {}
                Ok((r, _)) => {
                    return Err(VolumeError::Brick {
                        volume: self.volume.clone(),
                        op: "heal write",
                        brick: self.links[i].addr().to_owned(),
                        fid,
                        offset: start,
                        reply: reply_err(&r).cloned().unwrap_or_else(|| {
                            ErrorReply::new(ErrorCode::Internal, format!("unexpected {r:?}"))
                        }),
                    })
                }
                Err(f) => return Err(self.transport_err("heal write", i, fid, start, f)),
            }
        }
        // A punch is not made durable by FUA: flush the targets.
        if zeros {
            let answers = self
                .fan_out(dsts, |_| {
                    (
                        Request::Flush(transport::wire::ObjectReq { object: oid }),
                        Payload::None,
                    )
                })
                .await;
            for (i, a) in answers {
                if !matches!(a, Ok((Response::Flush, _))) {
                    return Err(VolumeError::Protocol {
                        volume: self.volume.clone(),
                        op: "heal flush",
                        brick: self.links[i].addr().to_owned(),
                        reply: format!("{a:?}"),
                    });
                }
            }
        }
        Ok(data.len() as u64)
    }

    /// After taking over a lease from a writer that did not release it:
    /// makes every region the activity log marks active identical across
    /// the bricks that are up (copied from one brick no one marks stale
    /// there), then clears those marks. Returns the regions settled.
    pub async fn settle(&self, fid: Fid) -> Result<usize> {
        if let Some(g) = &self.disperse {
            return crate::disperse::settle(self, g, fid).await;
        }
        self.load_marks(true).await;
        let up = self.up();
        let upi: Vec<usize> = (0..self.links.len()).filter(|&i| up[i]).collect();
        let answers = self
            .fan_out(&upi, |_| {
                (
                    list_req(MarksOp::ListActive, self.volume_id, fid),
                    Payload::None,
                )
            })
            .await;
        let mut regions = BTreeSet::new();
        for (_, a) in answers {
            if let Ok((Response::Marks(m), _)) = a {
                regions.extend(m.marks.iter().map(|m| (m.object, m.region)));
            }
        }
        // A brick whose copy of the dead writer's lease had not yet run out
        // when we took it from the others may grant it now.
        self.join_lease(fid, &up).await;
        let epochs = self.epochs(fid);
        let mut settled = 0;
        for (oid, region) in regions {
            let Some(src) = upi
                .iter()
                .copied()
                .find(|&i| !self.stale_for(&oid, region, 1, i))
            else {
                continue;
            };
            // Bricks that did not grant us the lease refuse our writes:
            // they miss the settle and are marked pending for the region
            // (by the bricks that now agree) before its active marks go.
            let (dsts, missed): (Vec<usize>, Vec<usize>) = upi
                .iter()
                .copied()
                .filter(|&i| i != src)
                .partition(|&i| epochs[i] != 0);
            self.copy_region(oid, region, src, &dsts, &epochs).await?;
            if !missed.is_empty() {
                let mut good = dsts.clone();
                good.push(src);
                self.add_pending(oid, region, 1, &good, &missed).await?;
            }
            self.fan_out(&upi, |_| {
                (
                    Request::Marks(MarksReq {
                        op: MarksOp::ClearActive,
                        target: 0,
                        object: oid,
                        first: region,
                        count: 1,
                        amount: 0,
                    }),
                    Payload::None,
                )
            })
            .await;
            settled += 1;
        }
        Ok(settled)
    }
}

/// What reading a range from one brick gave.
pub(crate) enum BrickRead {
    /// The data, checked (`None`: the brick has no such chunk, so zeros).
    Data(Option<IoBuf>),
    /// The brick found the data at rest corrupt, or it failed its CRC32C
    /// check on return: a bad copy.
    Corrupt(String),
    /// Anything else (down, refused, protocol).
    Failed(VolumeError),
}

impl Replicate {
    /// Reads `[offset, offset + len)` of `oid` from brick `i` with a CRC per
    /// 4 KiB piece, and checks the data against them.
    pub(crate) async fn read_blocks(
        &self,
        i: usize,
        oid: ObjectId,
        offset: u64,
        len: u64,
    ) -> BrickRead {
        if len == 0 {
            return BrickRead::Data(None);
        }
        let (req, p) = read_blocks_req(oid, offset, len);
        let answer = self.links[i].call(req, p).await;
        self.read_blocks_answer(i, oid, offset, len, answer)
    }

    /// What brick `i`'s answer to [`read_blocks_req`] means: the data,
    /// checked against the piece CRCs it came with, or why not (so a fan
    /// out of reads, as a dispersed set does, classifies them alike).
    pub(crate) fn read_blocks_answer(
        &self,
        i: usize,
        oid: ObjectId,
        offset: u64,
        len: u64,
        answer: std::result::Result<(Response, Payload), CallFail>,
    ) -> BrickRead {
        let fid = Fid::of(&oid);
        match answer {
            Ok((Response::ReadBlocks(r), payload)) => {
                let buf = payload.into_buf();
                let data = buf.as_ref().map(|b| b.as_slice()).unwrap_or(&[]);
                if data.len() as u64 != len {
                    return BrickRead::Failed(VolumeError::Protocol {
                        volume: self.volume.clone(),
                        op: "read",
                        brick: self.links[i].addr().to_owned(),
                        reply: format!("{} bytes for a read of {len}", data.len()),
                    });
                }
                match check_block_crcs(offset, data, &r.crcs) {
                    Ok(()) => BrickRead::Data(buf),
                    Err(k) => BrickRead::Corrupt(format!(
                        "4 KiB piece {k} of the reply failed its CRC32C on return"
                    )),
                }
            }
            Ok((Response::Error(e), _)) if e.code == ErrorCode::NotFound => BrickRead::Data(None),
            Ok((Response::Error(e), _)) if e.code == ErrorCode::Corrupt => {
                BrickRead::Corrupt(e.message)
            }
            Ok((r, _)) => BrickRead::Failed(VolumeError::Brick {
                volume: self.volume.clone(),
                op: "read",
                brick: self.links[i].addr().to_owned(),
                fid,
                offset,
                reply: reply_err(&r).cloned().unwrap_or_else(|| {
                    ErrorReply::new(ErrorCode::Internal, format!("unexpected {r:?}"))
                }),
            }),
            Err(f) => BrickRead::Failed(self.transport_err("read", i, fid, offset, f)),
        }
    }

    /// Rewrites the whole 4 KiB blocks under `[offset, offset + len)` of
    /// `oid` on bricks `dsts` from brick `src` (checked on the way), durably,
    /// with the lease epochs given. Whole blocks, so a bad byte next to the
    /// range cannot survive under a freshly computed CRC.
    pub(crate) async fn repair_blocks(
        &self,
        oid: ObjectId,
        offset: u64,
        len: u64,
        src: usize,
        dsts: &[usize],
        epochs: &[u64],
    ) -> Result<u64> {
        let fid = Fid::of(&oid);
        let a = offset / CRC_BLOCK * CRC_BLOCK;
        let b = offset.saturating_add(len).div_ceil(CRC_BLOCK) * CRC_BLOCK;
        let data = match self.read_blocks(src, oid, a, b - a).await {
            BrickRead::Data(Some(buf)) => buf.as_slice().to_vec(),
            BrickRead::Data(None) => vec![0u8; (b - a) as usize],
            BrickRead::Corrupt(detail) => {
                return Err(VolumeError::Corrupt {
                    volume: self.volume.clone(),
                    brick: self.links[src].addr().to_owned(),
                    fid,
                    chunk: oid.chunk,
                    offset: a,
                    detail,
                })
            }
            BrickRead::Failed(e) => return Err(e),
        };
        self.put_region(oid, a, b - a, Some(&data), dsts, epochs)
            .await
    }

    /// After a read found bad copies on `bad` and good data on `src`:
    /// repairs them (logged). A repair that fails (the brick refuses our
    /// epoch while another writer holds the lease, or went away) is left
    /// for scrub; the read itself has already succeeded.
    async fn repair_after_read(
        &self,
        fid: Fid,
        oid: ObjectId,
        offset: u64,
        len: u64,
        src: usize,
        bad: &[usize],
    ) {
        let epochs = self.epochs(fid);
        let _gate = self.repair_gate.write().await;
        match self
            .repair_blocks(oid, offset, len, src, bad, &epochs)
            .await
        {
            Ok(_) => {
                for &i in bad {
                    tracing::warn!(volume = %self.volume, brick = self.links[i].addr(), %fid, chunk = oid.chunk, offset, len, source = self.links[src].addr(), "repaired a corrupt copy");
                }
            }
            Err(e) => {
                tracing::warn!(volume = %self.volume, %fid, chunk = oid.chunk, offset, len, error = %e, "could not repair a corrupt copy now; scrub will");
            }
        }
    }
}

/// A `ReadBlocks` of `[offset, offset + len)` of `oid`, with the buffer
/// lent for the answer.
pub(crate) fn read_blocks_req(oid: ObjectId, offset: u64, len: u64) -> (Request, Payload) {
    (
        Request::ReadBlocks(ReadReq {
            object: oid,
            offset,
            len: len as u32,
            data: DataRef::None,
        }),
        Payload::In(IoBuf::alloc(len as usize)),
    )
}

pub(crate) fn list_req(op: MarksOp, volume: u32, fid: Fid) -> Request {
    Request::Marks(MarksReq {
        op,
        target: 0,
        object: ObjectId {
            volume,
            vnode: fid.vnode,
            unique: fid.unique,
            chunk: 0,
        },
        first: 0,
        count: 0,
        amount: 0,
    })
}

trait DefaultFor {
    fn default_for(volume: u32) -> ObjectId;
}

impl DefaultFor for ObjectId {
    fn default_for(volume: u32) -> ObjectId {
        ObjectId {
            volume,
            vnode: 0,
            unique: 0,
            chunk: 0,
        }
    }
}

impl Translator for Replicate {
    fn read(&self, fid: Fid, offset: u64, len: u64) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            let mut out = vec![0u8; len as usize];
            for p in split(offset, len, self.chunk_size) {
                self.read_piece(fid, p, &mut out[p.at as usize..(p.at + p.len) as usize])
                    .await?;
            }
            Ok(out)
        })
    }

    fn write<'a>(&'a self, fid: Fid, offset: u64, data: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write_all(fid, offset, data))
    }

    fn punch(&self, fid: Fid, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.range_all(false, fid, offset, len))
    }

    fn zero(&self, fid: Fid, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.range_all(true, fid, offset, len))
    }

    fn flush(&self, _fid: Fid) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.flush_all())
    }

    fn size(&self, fid: Fid) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.size_of(fid))
    }

    fn grow(&self, fid: Fid, size: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if size == 0 {
                return Ok(());
            }
            self.range_piece("grow", false, fid, SIZE_CHUNK, size - 1, 1)
                .await
        })
    }

    fn lease(&self, fid: Fid, action: LeaseAction) -> BoxFuture<'_, Result<LeaseOutcome>> {
        Box::pin(self.lease_action(fid, action))
    }
}
