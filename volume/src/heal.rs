//! Self-heal: catching up bricks that missed writes, from the pending
//! marks the other bricks of their set hold.
//!
//! A pending mark says "brick `target` missed changes to this region of
//! this chunk" and lives on the bricks that took those changes. Heal copies
//! each marked region from a brick no one marks for it (the source) to the
//! bricks marked (the targets), makes the copy durable on the targets, and
//! only then subtracts from the marks the counts it saw, so a change missed
//! while healing keeps its mark, and a heal that stops half-way is simply
//! run again. Heal holds the object's write lease while it copies, so no
//! writer changes a region under it (objects whose lease a writer holds
//! are skipped and left for the next run).
//!
//! Split-brain: marks in both directions for one region with no brick
//! left unaccused (A says B missed writes and B says A did, and no third
//! brick is clean). Heal never picks a side by itself: it reports
//! the region, and [`resolve_split_brain`] heals it by a policy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use transport::wire::{
    ChunkEntry, ListChunksReq, Mark, MarksOp, MarksReq, ObjectId, ObjectReq, CHUNKS_MORE,
    MARKS_MORE, REGION_SIZE,
};
use transport::{ClientOptions, Payload, Request, Response, Secret};

use crate::client::Client;
use crate::error::{Result, VolumeError};
use crate::records_replicated::{RecordBrickInfo, RecordHealReport};
use crate::replicate::Replicate;
use crate::spec::VolumeSpec;
use crate::xlator::{Fid, LeaseAction, Translator, SIZE_CHUNK};

/// Lease heal holds on an object while it copies regions of it.
pub(crate) const HEAL_LEASE_MS: u32 = 30_000;

/// Rounds of list-and-heal (a list is cut at `MAX_MARKS` marks per brick).
const MAX_ROUNDS: usize = 64;

/// One healed region, reported as heal goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealProgress {
    /// Set index.
    pub set: usize,
    /// The brick caught up (`HOST:PORT`).
    pub target: String,
    /// The chunk and region copied.
    pub object: ObjectId,
    pub region: u32,
    /// Bytes copied to the target.
    pub bytes: u64,
}

/// A region marked both ways: heal will not choose.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SplitBrain {
    pub set: usize,
    pub object: ObjectId,
    pub region: u32,
    /// The bricks that accuse each other.
    pub bricks: Vec<String>,
}

/// What a heal run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealReport {
    /// Regions copied and cleared (per target brick).
    pub regions_healed: u64,
    /// Bytes written to targets.
    pub bytes_copied: u64,
    /// Regions left for later: source or target down, or a writer holds
    /// the object's lease.
    pub regions_skipped: u64,
    /// Regions in split-brain (not touched).
    pub split_brain: Vec<SplitBrain>,
    /// What the heal of the namespace records did (the first set).
    pub records: Option<RecordHealReport>,
    /// Why the records could not be healed, if they could not.
    pub records_error: Option<String>,
}

/// Pending heal of one brick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrickHealInfo {
    pub brick: String,
    pub set: usize,
    /// Is it reachable now?
    pub up: bool,
    /// Regions other bricks mark it as having missed.
    pub pending_regions: u64,
    /// Their bytes (regions × region size: an upper bound).
    pub pending_bytes: u64,
}

/// `heal info`: what is pending, per brick, and what is in split-brain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealInfo {
    pub bricks: Vec<BrickHealInfo>,
    pub split_brain: Vec<SplitBrain>,
    /// Some brick could not be asked: the picture may be incomplete.
    pub incomplete: bool,
    /// The namespace records' log on each brick of the first set.
    pub records: Vec<RecordBrickInfo>,
}

/// How to settle a split-brain region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitBrainPolicy {
    /// This brick's copy wins (`HOST:PORT`, as in the volume description).
    SourceBrick(String),
    /// The copy whose chunk has the bigger version wins (ties: the brick
    /// first in set order).
    BiggerVersion,
}

/// Marks of one set: (chunk, region) → [(holder, target, count)].
type Marked = BTreeMap<(ObjectId, u32), Vec<(usize, usize, u64)>>;

/// The marked regions of one object: (chunk, region, marks).
type ObjectRegions = Vec<(ObjectId, u32, Vec<(usize, usize, u64)>)>;

async fn list_marks(set: &Replicate, volume: u32) -> (Marked, bool, bool) {
    let links = set.links();
    let up: Vec<usize> = (0..links.len()).filter(|&i| links[i].is_up()).collect();
    let answers = set
        .fan_out(&up, |_| {
            (
                Request::Marks(MarksReq {
                    op: MarksOp::ListPending,
                    target: 0,
                    object: ObjectId {
                        volume,
                        vnode: 0,
                        unique: 0,
                        chunk: 0,
                    },
                    first: 0,
                    count: 0,
                    amount: 0,
                }),
                Payload::None,
            )
        })
        .await;
    let mut marked = Marked::new();
    let mut more = false;
    let mut complete = up.len() == links.len();
    for (holder, a) in answers {
        match a {
            Ok((Response::Marks(r), _)) => {
                more |= r.flags & MARKS_MORE != 0;
                for Mark {
                    object,
                    region,
                    target,
                    value,
                } in r.marks
                {
                    if (target as usize) < links.len() {
                        marked.entry((object, region)).or_default().push((
                            holder,
                            target as usize,
                            value,
                        ));
                    }
                }
            }
            _ => complete = false,
        }
    }
    (marked, more, complete)
}

/// A region is in split-brain when every brick of the set is marked as
/// having missed changes to it (A and B accuse each other, or a longer
/// cycle): no copy is known good. Marks both ways with a third brick that
/// no one accuses are not split-brain: that brick is the source.
fn split_brain_of(marks: &[(usize, usize, u64)], n: usize) -> Option<Vec<usize>> {
    let accused: BTreeSet<usize> = marks.iter().map(|&(_, t, _)| t).collect();
    (n > 1 && accused.len() == n).then(|| accused.into_iter().collect())
}

async fn clear(
    set: &Replicate,
    holder: usize,
    target: usize,
    oid: ObjectId,
    region: u32,
    amount: u64,
) -> bool {
    let a = set
        .fan_out(&[holder], |_| {
            (
                Request::Marks(MarksReq {
                    op: MarksOp::ClearPending,
                    target: target as u32,
                    object: oid,
                    first: region,
                    count: 1,
                    amount,
                }),
                Payload::None,
            )
        })
        .await;
    a.iter()
        .any(|(_, r)| matches!(r, Ok((Response::Marks(_), _))))
}

/// Heals the regions of one set; `resolve` settles split-brain regions by
/// policy instead of skipping them.
async fn heal_set(
    client: &Client,
    s: usize,
    resolve: Option<&SplitBrainPolicy>,
    progress: &mut dyn FnMut(&HealProgress),
    report: &mut HealReport,
) -> Result<()> {
    let sets = client.sets();
    let set: &Arc<Replicate> = &sets[s];
    let links = set.links();
    let volume = client.spec().id;
    let name = client.spec().name.clone();
    for _round in 0..MAX_ROUNDS {
        let (marked, more, _) = list_marks(set, volume).await;
        let mut by_fid: BTreeMap<Fid, ObjectRegions> = BTreeMap::new();
        for ((oid, region), marks) in marked {
            by_fid
                .entry(Fid::of(&oid))
                .or_default()
                .push((oid, region, marks));
        }
        let mut healed_this_round = 0;
        for (fid, regions) in by_fid {
            match set
                .lease(
                    fid,
                    LeaseAction::Acquire {
                        duration_ms: HEAL_LEASE_MS,
                    },
                )
                .await
            {
                Err(e) => {
                    tracing::info!(volume = %name, %fid, error = %e, "heal skips an object it cannot lease");
                    report.regions_skipped += regions.len() as u64;
                    continue;
                }
                // Its writer died: settle what it left active first, or
                // the clean release below would forget it.
                Ok(o) if o.unclean => {
                    if let Err(e) = set.settle(fid).await {
                        let _ = set.lease(fid, LeaseAction::Release).await;
                        return Err(e);
                    }
                }
                Ok(_) => {}
            }
            let epochs = set.epochs(fid);
            let result = async {
                for (oid, region, marks) in regions {
                    let up: Vec<bool> = links.iter().map(|l| l.is_up()).collect();
                    let (src, targets): (usize, Vec<usize>) = if let Some(sb) =
                        split_brain_of(&marks, links.len())
                    {
                        let Some(policy) = resolve else {
                            report.split_brain.push(SplitBrain {
                                set: s,
                                object: oid,
                                region,
                                bricks: sb.iter().map(|&i| links[i].addr().to_owned()).collect(),
                            });
                            continue;
                        };
                        let src = match policy {
                            SplitBrainPolicy::SourceBrick(addr) => {
                                match links.iter().position(|l| l.addr() == addr) {
                                    Some(i) => i,
                                    None => {
                                        return Err(VolumeError::Heal {
                                            volume: name.clone(),
                                            reason: format!("brick {addr} is not in set {s}"),
                                        })
                                    }
                                }
                            }
                            SplitBrainPolicy::BiggerVersion => bigger_version(set, oid, &sb).await,
                        };
                        let t: BTreeSet<usize> = marks
                            .iter()
                            .flat_map(|&(h, t, _)| [h, t])
                            .filter(|&i| i != src)
                            .collect();
                        (src, t.into_iter().collect())
                    } else {
                        let t: BTreeSet<usize> = marks.iter().map(|&(_, t, _)| t).collect();
                        let Some(src) = (0..links.len()).find(|i| up[*i] && !t.contains(i)) else {
                            report.regions_skipped += t.len() as u64;
                            continue;
                        };
                        (src, t.into_iter().collect())
                    };
                    if !up[src] {
                        report.regions_skipped += targets.len() as u64;
                        continue;
                    }
                    // A target that did not grant us the lease (it still
                    // holds another writer's, e.g. a dead one's not yet run
                    // out) would refuse the copy: leave it for a later run.
                    let live: Vec<usize> = targets
                        .iter()
                        .copied()
                        .filter(|&t| up[t] && epochs[t] != 0)
                        .collect();
                    report.regions_skipped += (targets.len() - live.len()) as u64;
                    if live.is_empty() {
                        continue;
                    }
                    let bytes = set.copy_region(oid, region, src, &live, &epochs).await?;
                    // The copy is durable on every live target: now the
                    // marks against them may go (by the counts seen).
                    for &(h, t, count) in &marks {
                        if live.contains(&t) || (resolve.is_some() && t == src) {
                            clear(set, h, t, oid, region, count).await;
                        }
                    }
                    for &t in &live {
                        report.regions_healed += 1;
                        report.bytes_copied += bytes;
                        healed_this_round += 1;
                        progress(&HealProgress {
                            set: s,
                            target: links[t].addr().to_owned(),
                            object: oid,
                            region,
                            bytes,
                        });
                    }
                }
                Ok(())
            }
            .await;
            let _ = set.lease(fid, LeaseAction::Release).await;
            result?;
        }
        if !more || healed_this_round == 0 {
            break;
        }
    }
    set.load_marks(true).await;
    Ok(())
}

async fn bigger_version(set: &Replicate, oid: ObjectId, bricks: &[usize]) -> usize {
    let answers = set
        .fan_out(bricks, |_| {
            (Request::Stat(ObjectReq { object: oid }), Payload::None)
        })
        .await;
    let mut best: Option<(u64, usize)> = None;
    for (i, a) in answers {
        if let Ok((Response::Stat(st), _)) = a {
            let better = match best {
                None => true,
                Some((v, j)) => st.version > v || (st.version == v && i < j),
            };
            if better {
                best = Some((st.version, i));
            }
        }
    }
    best.map(|(_, i)| i).unwrap_or(bricks[0])
}

pub(crate) async fn connect(spec: &VolumeSpec, secret: Secret) -> Result<Client> {
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    Client::connect_spec(spec.clone(), secret, opts).await
}

/// Heals every set of the volume through `client`'s connections; calls
/// `progress` after each region. Regions whose source or target is down,
/// or whose object a writer holds, are skipped (run it again later).
pub async fn heal_with(
    client: &Client,
    mut progress: impl FnMut(&HealProgress),
) -> Result<HealReport> {
    let mut report = HealReport::default();
    // The namespace records first: a brick that missed commits is brought
    // to the set's log (it takes no commit until then).
    match client.replicated_records().heal().await {
        Ok(r) => report.records = Some(r),
        Err(e) => {
            tracing::warn!(volume = %client.spec().name, error = %e, "records not healed");
            report.records_error = Some(e.to_string());
        }
    }
    for s in 0..client.sets().len() {
        heal_set(client, s, None, &mut progress, &mut report).await?;
    }
    report.split_brain.sort();
    Ok(report)
}

/// `stretto volume heal VOL`: connects to the volume and heals it (see
/// [`heal_with`]).
pub async fn heal_volume(
    spec: &VolumeSpec,
    secret: Secret,
    progress: impl FnMut(&HealProgress),
) -> Result<HealReport> {
    let client = connect(spec, secret).await?;
    let r = heal_with(&client, progress).await;
    client.close().await;
    r
}

/// Pending heal per brick and split-brain regions, through `client`.
pub async fn heal_info_with(client: &Client) -> Result<HealInfo> {
    let mut info = HealInfo::default();
    for (s, set) in client.sets().iter().enumerate() {
        let (marked, more, complete) = list_marks(set, client.spec().id).await;
        info.incomplete |= more || !complete;
        let links = set.links();
        let mut per: Vec<BTreeSet<(ObjectId, u32)>> = vec![BTreeSet::new(); links.len()];
        for ((oid, region), marks) in &marked {
            if let Some(sb) = split_brain_of(marks, links.len()) {
                info.split_brain.push(SplitBrain {
                    set: s,
                    object: *oid,
                    region: *region,
                    bricks: sb.iter().map(|&i| links[i].addr().to_owned()).collect(),
                });
            }
            for &(_, t, _) in marks {
                per[t].insert((*oid, *region));
            }
        }
        for (i, l) in links.iter().enumerate() {
            info.bricks.push(BrickHealInfo {
                brick: l.addr().to_owned(),
                set: s,
                up: l.is_up(),
                pending_regions: per[i].len() as u64,
                pending_bytes: per[i].len() as u64 * REGION_SIZE,
            });
        }
    }
    info.records = client.replicated_records().info().await;
    Ok(info)
}

/// `stretto volume heal VOL info`.
pub async fn heal_info(spec: &VolumeSpec, secret: Secret) -> Result<HealInfo> {
    let client = connect(spec, secret).await?;
    let r = heal_info_with(&client).await;
    client.close().await;
    r
}

/// Heals split-brain regions by `policy` (and any other pending region on
/// the way), through `client`.
pub async fn resolve_split_brain_with(
    client: &Client,
    policy: SplitBrainPolicy,
) -> Result<HealReport> {
    let mut report = HealReport::default();
    for s in 0..client.sets().len() {
        heal_set(client, s, Some(&policy), &mut |_| {}, &mut report).await?;
    }
    Ok(report)
}

/// `stretto volume heal VOL split-brain ...`: settles every split-brain
/// region by `policy`.
pub async fn resolve_split_brain(
    spec: &VolumeSpec,
    secret: Secret,
    policy: SplitBrainPolicy,
) -> Result<HealReport> {
    let client = connect(spec, secret).await?;
    let r = resolve_split_brain_with(&client, policy).await;
    client.close().await;
    r
}

// ---------------------------------------------------------------------
// Full heal: filling a brick that has no marks to heal from (a brick that
// just replaced another one), by listing what the other bricks of its set
// hold.

/// One chunk copied by a full heal, reported as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullHealProgress {
    pub set: usize,
    /// The brick filled (`HOST:PORT`).
    pub target: String,
    /// The brick copied from.
    pub source: String,
    pub object: ObjectId,
    /// Data bytes written to the target for this chunk (holes are punched,
    /// not written).
    pub bytes: u64,
    /// Chunks handled so far in this set, and how many it has.
    pub done: u64,
    pub total: u64,
}

/// What a full heal did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FullHealReport {
    /// Chunks copied (per target brick).
    pub chunks_copied: u64,
    /// Data bytes written to targets.
    pub bytes_copied: u64,
    /// Chunks a target already held in full (catch-up mode only).
    pub chunks_present: u64,
    /// Objects skipped because a writer holds their lease (or the lease
    /// could not be had): run the full heal again later.
    pub objects_busy: Vec<Fid>,
    /// Target bricks that were down (nothing copied to them).
    pub targets_down: Vec<String>,
    /// Some source brick was down or could not list its chunks: what it
    /// alone holds was not copied.
    pub incomplete: bool,
}

/// Every chunk of `volume` brick `i` of `set` holds, asked page by page.
pub(crate) async fn list_chunks(set: &Replicate, i: usize, volume: u32) -> Option<Vec<ChunkEntry>> {
    let mut out = Vec::new();
    let mut start = ObjectId {
        volume,
        vnode: 0,
        unique: 0,
        chunk: 0,
    };
    loop {
        let a = set
            .fan_out(&[i], |_| {
                (
                    Request::ListChunks(ListChunksReq { volume, start }),
                    Payload::None,
                )
            })
            .await;
        let r = match a.into_iter().next() {
            Some((_, Ok((Response::ListChunks(r), _)))) => r,
            _ => return None,
        };
        let more = r.flags & CHUNKS_MORE != 0;
        let Some(last) = r.chunks.last().map(|c| c.object) else {
            return Some(out);
        };
        out.extend(r.chunks);
        if !more {
            return Some(out);
        }
        // The next page starts just after the last id listed.
        start = match last.chunk.checked_add(1) {
            Some(chunk) => ObjectId { chunk, ..last },
            None => match last.unique.checked_add(1) {
                Some(unique) => ObjectId {
                    unique,
                    chunk: 0,
                    ..last
                },
                None => match last.vnode.checked_add(1) {
                    Some(vnode) => ObjectId {
                        vnode,
                        unique: 0,
                        chunk: 0,
                        ..last
                    },
                    None => return Some(out),
                },
            },
        };
    }
}

/// Which bricks a full heal fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FullHealTarget {
    /// Copy every chunk the other bricks of its set hold to this brick
    /// (`HOST:PORT`), whatever it already holds: after `replace-brick`,
    /// or to redo one that was interrupted.
    Brick(String),
    /// Catch up every brick: copy to it the chunks some other brick of
    /// its set holds that it lacks or holds shorter.
    Missing,
}

/// Full heal through `client`. For each set and each chunk of the volume
/// any up brick of the set (other than the target) holds, the source is
/// the holder with the largest size (ties: bigger version, then set order).
/// Each chunk is copied region by region in order (holes punched, not
/// written), durably, under the object's lease as heal holds it; an object
/// whose lease a writer holds is skipped and reported. Copying regions in
/// order means an interrupted copy leaves a chunk shorter than its source,
/// which [`FullHealTarget::Missing`] then copies again.
pub async fn full_heal_with(
    client: &Client,
    target: &FullHealTarget,
    mut progress: impl FnMut(&FullHealProgress),
) -> Result<FullHealReport> {
    let volume = client.spec().id;
    let name = client.spec().name.clone();
    let mut report = FullHealReport::default();
    if let FullHealTarget::Brick(b) = target {
        if !client.spec().bricks.iter().any(|x| x == b) {
            return Err(VolumeError::Heal {
                volume: name,
                reason: format!("brick {b} is not in the volume"),
            });
        }
    }
    for (s, set) in client.sets().iter().enumerate() {
        let links = set.links();
        let targets: Vec<usize> = match target {
            FullHealTarget::Brick(b) => match links.iter().position(|l| l.addr() == b) {
                Some(t) => vec![t],
                None => continue,
            },
            FullHealTarget::Missing => (0..links.len()).collect(),
        };
        let up: Vec<bool> = links.iter().map(|l| l.is_up()).collect();
        for (i, l) in links.iter().enumerate() {
            if up[i] {
                continue;
            }
            if targets.contains(&i) {
                report.targets_down.push(l.addr().to_owned());
            } else {
                // A down source may hold chunks no up brick does.
                report.incomplete = true;
            }
        }
        // What each up brick holds.
        let mut held: Vec<Option<BTreeMap<ObjectId, ChunkEntry>>> = vec![None; links.len()];
        for i in 0..links.len() {
            if !up[i] {
                continue;
            }
            match list_chunks(set, i, volume).await {
                Some(l) => held[i] = Some(l.into_iter().map(|c| (c.object, c)).collect()),
                None => report.incomplete = true,
            }
        }
        // chunk -> (source, [targets]).
        let mut work: BTreeMap<ObjectId, (usize, Vec<usize>)> = BTreeMap::new();
        for &t in &targets {
            if !up[t] || held[t].is_none() && matches!(target, FullHealTarget::Missing) {
                continue;
            }
            let mut all: BTreeSet<ObjectId> = BTreeSet::new();
            for (i, h) in held.iter().enumerate() {
                if i != t {
                    all.extend(h.iter().flat_map(|h| h.keys().copied()));
                }
            }
            for oid in all {
                let mut src: Option<(u64, u64, usize)> = None;
                for (i, h) in held.iter().enumerate() {
                    if i == t {
                        continue;
                    }
                    if let Some(c) = h.as_ref().and_then(|h| h.get(&oid)) {
                        let better = src.is_none_or(|(sz, v, _)| (c.size, c.version) > (sz, v));
                        if better {
                            src = Some((c.size, c.version, i));
                        }
                    }
                }
                let Some((size, _, src)) = src else { continue };
                if matches!(target, FullHealTarget::Missing) {
                    let have = held[t].as_ref().and_then(|h| h.get(&oid)).map(|c| c.size);
                    if have.is_some_and(|h| h >= size) {
                        report.chunks_present += 1;
                        continue;
                    }
                }
                work.entry(oid).or_insert((src, Vec::new())).1.push(t);
            }
        }
        let total = work.len() as u64;
        let mut done = 0u64;
        let mut by_fid: BTreeMap<Fid, Vec<(ObjectId, usize, Vec<usize>)>> = BTreeMap::new();
        for (oid, (src, ts)) in work {
            by_fid
                .entry(Fid::of(&oid))
                .or_default()
                .push((oid, src, ts));
        }
        for (fid, chunks) in by_fid {
            match set
                .lease(
                    fid,
                    LeaseAction::Acquire {
                        duration_ms: HEAL_LEASE_MS,
                    },
                )
                .await
            {
                Err(e) => {
                    tracing::info!(volume = %name, %fid, error = %e, "full heal skips an object it cannot lease");
                    report.objects_busy.push(fid);
                    done += chunks.len() as u64;
                    continue;
                }
                Ok(o) if o.unclean => {
                    if let Err(e) = set.settle(fid).await {
                        let _ = set.lease(fid, LeaseAction::Release).await;
                        return Err(e);
                    }
                }
                Ok(_) => {}
            }
            let epochs = set.epochs(fid);
            let result = async {
                for (oid, src, ts) in chunks {
                    let size = held[src]
                        .as_ref()
                        .and_then(|h| h.get(&oid))
                        .map_or(0, |c| c.size);
                    let regions = if oid.chunk == SIZE_CHUNK {
                        1
                    } else {
                        size.div_ceil(REGION_SIZE)
                    };
                    let mut bytes = 0;
                    for region in 0..regions {
                        let Ok(region) = u32::try_from(region) else {
                            break;
                        };
                        bytes += set.copy_region(oid, region, src, &ts, &epochs).await?;
                    }
                    done += 1;
                    for &t in &ts {
                        report.chunks_copied += 1;
                        report.bytes_copied += bytes;
                        progress(&FullHealProgress {
                            set: s,
                            target: links[t].addr().to_owned(),
                            source: links[src].addr().to_owned(),
                            object: oid,
                            bytes,
                            done,
                            total,
                        });
                    }
                }
                Ok(())
            }
            .await;
            let _ = set.lease(fid, LeaseAction::Release).await;
            result?;
        }
    }
    Ok(report)
}

/// `stretto volume heal VOL full [BRICK]` and the copy step of
/// `stretto volume replace-brick`: connects to the volume and runs
/// [`full_heal_with`].
pub async fn full_heal(
    spec: &VolumeSpec,
    secret: Secret,
    target: &FullHealTarget,
    progress: impl FnMut(&FullHealProgress),
) -> Result<FullHealReport> {
    let client = connect(spec, secret).await?;
    let r = full_heal_with(&client, target, progress).await;
    client.close().await;
    r
}
