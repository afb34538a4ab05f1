//! Scrub: re-check every chunk a volume's bricks hold at rest against the
//! per-block CRC32Cs the bricks keep, and repair bad blocks from another
//! copy of the set.
//!
//! Driven by the client, verified on the bricks: the client lists each
//! brick's chunks (`ListChunks`) and asks the brick to `Verify` them piece
//! by piece, so the bricks re-read their own data locally and no data
//! crosses the network unless a block needs repair. The client drives it
//! because only the client knows the layout (which bricks hold copies of a
//! chunk) and holds the leases a repair write needs; a brick-side scrub
//! would still need a client to repair.
//!
//! A repair in a replica set reads the bad block from another brick of
//! the set whose copy passes its own check (`ReadBlocks`, checked again on
//! return); in a dispersed set it reads the other bricks' fragments of the
//! bad block's stripe and decodes the bad brick's fragment (the fragments
//! must agree). Either way the whole block is rewritten on the bad brick
//! under the object's lease. A block with no good copy (a distribute
//! volume, every copy bad, fewer than K good fragments) is counted
//! `unrepairable`. Objects a writer holds are verified but not repaired
//! (counted unrepairable, with the reason logged; run scrub again later).

use std::collections::BTreeMap;

use transport::wire::{
    ObjectId, Request, Response, ScrubCounts, ScrubStatusReq, VerifyReq, CRC_BLOCK, SCRUB_FOUND,
    SCRUB_GET, SCRUB_PUT,
};
use transport::{Payload, Secret};

use crate::client::Client;
use crate::disperse::{repair_fragment_block, Geometry, FRAGMENT_UNIT};
use crate::error::Result;
use crate::heal::{connect, list_chunks, HEAL_LEASE_MS};
use crate::replicate::{BrickRead, Replicate};
use crate::spec::VolumeSpec;
use crate::xlator::{Fid, LeaseAction, Translator, SIZE_CHUNK};

/// Bytes one `Verify` asks for (the transport's data limit is not involved:
/// no data travels, but the brick reads this much at once).
const VERIFY_PIECE: u64 = 8 << 20;

// A bad block of a fragment object is one brick's share of exactly one
// stripe, so its repair decodes one stripe.
const _: () = assert!(FRAGMENT_UNIT == CRC_BLOCK);

/// What a scrub found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Chunk copies checked (one per brick holding it).
    pub chunks: u64,
    /// Bytes checked against a stored CRC (whole 4 KiB blocks).
    pub bytes: u64,
    /// 4 KiB blocks that did not match their CRC.
    pub corrupt: u64,
    /// Corrupt blocks rewritten from a good copy.
    pub repaired: u64,
    /// Corrupt blocks left as they are (no good copy, or the object was
    /// busy).
    pub unrepairable: u64,
    /// Bricks that were down or could not list their chunks (not checked).
    pub bricks_skipped: Vec<String>,
    /// When the run started and finished (Unix seconds).
    pub started: u64,
    pub finished: u64,
}

impl ScrubReport {
    /// The counts the bricks keep for `scrub status`.
    pub fn counts(&self) -> ScrubCounts {
        ScrubCounts {
            started: self.started,
            finished: self.finished,
            chunks: self.chunks,
            bytes: self.bytes,
            corrupt: self.corrupt,
            repaired: self.repaired,
            unrepairable: self.unrepairable,
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Progress, after each chunk copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubProgress {
    /// The brick being checked.
    pub brick: String,
    /// Chunks of this brick done / in all.
    pub done: u64,
    pub total: u64,
    /// The report so far.
    pub report: ScrubReport,
}

/// Scrubs every set of the volume through `client`'s connections.
pub async fn scrub_with(
    client: &Client,
    mut progress: impl FnMut(&ScrubProgress),
) -> Result<ScrubReport> {
    let volume = client.spec().id;
    let mut report = ScrubReport {
        started: now_secs(),
        ..ScrubReport::default()
    };
    for set in &client.sets() {
        for (i, link) in set.links().iter().enumerate() {
            if !link.is_up() {
                report.bricks_skipped.push(link.addr().to_owned());
                continue;
            }
            let Some(chunks) = list_chunks(set, i, volume).await else {
                report.bricks_skipped.push(link.addr().to_owned());
                continue;
            };
            let total = chunks.len() as u64;
            // Bad blocks by object, repaired under one lease per object.
            let mut bad: BTreeMap<Fid, Vec<(ObjectId, u64)>> = BTreeMap::new();
            for (k, c) in chunks.iter().enumerate() {
                // The size record holds no data.
                if c.object.chunk != SIZE_CHUNK {
                    verify_chunk(set, i, c.object, c.size, &mut report, &mut bad).await;
                }
                report.chunks += 1;
                progress(&ScrubProgress {
                    brick: link.addr().to_owned(),
                    done: k as u64 + 1,
                    total,
                    report: report.clone(),
                });
            }
            for (fid, blocks) in bad {
                repair_object(set, i, fid, &blocks, &mut report).await;
            }
        }
    }
    report.finished = now_secs();
    // Every brick that is up keeps the counts for `scrub status`.
    let counts = report.counts();
    for set in client.sets() {
        let up: Vec<usize> = (0..set.links().len())
            .filter(|&i| set.links()[i].is_up())
            .collect();
        set.fan_out(&up, |_| {
            (
                Request::ScrubStatus(ScrubStatusReq {
                    volume,
                    op: SCRUB_PUT,
                    counts,
                }),
                Payload::None,
            )
        })
        .await;
    }
    Ok(report)
}

/// The newest scrub counts any reachable brick of the volume keeps
/// (`None`: never scrubbed).
pub async fn scrub_status_with(client: &Client) -> Option<ScrubCounts> {
    let volume = client.spec().id;
    let mut best: Option<ScrubCounts> = None;
    for set in client.sets() {
        let up: Vec<usize> = (0..set.links().len())
            .filter(|&i| set.links()[i].is_up())
            .collect();
        let answers = set
            .fan_out(&up, |_| {
                (
                    Request::ScrubStatus(ScrubStatusReq {
                        volume,
                        op: SCRUB_GET,
                        counts: ScrubCounts::default(),
                    }),
                    Payload::None,
                )
            })
            .await;
        for (_, a) in answers {
            if let Ok((Response::ScrubStatus(r), _)) = a {
                if r.flags & SCRUB_FOUND != 0 && best.is_none_or(|b| r.counts.finished > b.finished)
                {
                    best = Some(r.counts);
                }
            }
        }
    }
    best
}

/// `stretto volume scrub NAME status`.
pub async fn scrub_status(spec: &VolumeSpec, secret: Secret) -> Result<Option<ScrubCounts>> {
    let client = connect(spec, secret).await?;
    let r = scrub_status_with(&client).await;
    client.close().await;
    Ok(r)
}

async fn verify_chunk(
    set: &Replicate,
    i: usize,
    object: ObjectId,
    size: u64,
    report: &mut ScrubReport,
    bad: &mut BTreeMap<Fid, Vec<(ObjectId, u64)>>,
) {
    let mut at = 0;
    while at < size {
        let len = (size - at).min(VERIFY_PIECE);
        let answer = set
            .fan_out(&[i], |_| {
                (
                    Request::Verify(VerifyReq {
                        object,
                        offset: at,
                        len: len as u32,
                    }),
                    Payload::None,
                )
            })
            .await;
        match answer.into_iter().next() {
            Some((_, Ok((Response::Verify(v), _)))) => {
                report.bytes += v.checked as u64 * CRC_BLOCK;
                report.corrupt += v.bad.len() as u64;
                for off in v.bad {
                    tracing::warn!(brick = set.links()[i].addr(), chunk = ?object, offset = off, "scrub: corrupt block");
                    bad.entry(Fid::of(&object)).or_default().push((object, off));
                }
            }
            other => {
                tracing::warn!(brick = set.links()[i].addr(), chunk = ?object, offset = at, reply = ?other.map(|(_, r)| r.map(|(r, _)| r)), "scrub: verify failed");
            }
        }
        at += len;
    }
}

async fn repair_object(
    set: &Replicate,
    bad_brick: usize,
    fid: Fid,
    blocks: &[(ObjectId, u64)],
    report: &mut ScrubReport,
) {
    let n = blocks.len() as u64;
    let sources: Vec<usize> = (0..set.links().len())
        .filter(|&j| j != bad_brick && set.links()[j].is_up())
        .collect();
    // A replica needs one other copy; a fragment needs K others to decode.
    let need = set.geometry().map_or(1, |g| g.data);
    if sources.len() < need {
        tracing::warn!(brick = set.links()[bad_brick].addr(), %fid, blocks = n, need, up = sources.len(), "scrub: too few other bricks up to repair from");
        report.unrepairable += n;
        return;
    }
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
            tracing::warn!(%fid, error = %e, "scrub: object busy, corrupt blocks left for the next scrub");
            report.unrepairable += n;
            return;
        }
        // The last writer died holding it: make its active regions
        // identical first, as heal does, before our clean release forgets
        // that they were left unsettled.
        Ok(o) if o.unclean => {
            if let Err(e) = set.settle(fid).await {
                tracing::warn!(%fid, error = %e, "scrub: settling a dead writer's regions failed; corrupt blocks left for the next scrub");
                let _ = set.lease(fid, LeaseAction::Release).await;
                report.unrepairable += n;
                return;
            }
        }
        Ok(_) => {}
    }
    let epochs = set.epochs(fid);
    for &(oid, off) in blocks {
        let fixed = match set.geometry() {
            Some(g) => repair_fragment(set, g, bad_brick, fid, oid, off, &epochs).await,
            None => repair_copy(set, &sources, bad_brick, fid, oid, off, &epochs).await,
        };
        if fixed {
            report.repaired += 1;
        } else {
            report.unrepairable += 1;
        }
    }
    let _ = set.lease(fid, LeaseAction::Release).await;
}

/// A replica set: copies the block from another brick whose copy passes
/// its own check.
async fn repair_copy(
    set: &Replicate,
    sources: &[usize],
    bad_brick: usize,
    fid: Fid,
    oid: ObjectId,
    off: u64,
    epochs: &[u64],
) -> bool {
    for &src in sources {
        // Only a copy that passes its own check is a source.
        if !matches!(
            set.read_blocks(src, oid, off, CRC_BLOCK).await,
            BrickRead::Data(_)
        ) {
            continue;
        }
        match set
            .repair_blocks(oid, off, CRC_BLOCK, src, &[bad_brick], epochs)
            .await
        {
            Ok(_) => {
                tracing::warn!(brick = set.links()[bad_brick].addr(), %fid, chunk = oid.chunk, offset = off, source = set.links()[src].addr(), "scrub: repaired a corrupt block");
                return true;
            }
            Err(e) => {
                tracing::warn!(brick = set.links()[bad_brick].addr(), %fid, chunk = oid.chunk, offset = off, error = %e, "scrub: repair failed");
            }
        }
    }
    false
}

/// A dispersed set: the block is the bad brick's fragment of one stripe
/// (fragment units are one CRC block); it is rebuilt by decoding the
/// stripe from the other bricks' fragments.
async fn repair_fragment(
    set: &Replicate,
    geo: &Geometry,
    bad_brick: usize,
    fid: Fid,
    oid: ObjectId,
    off: u64,
    epochs: &[u64],
) -> bool {
    match repair_fragment_block(set, geo, oid, off, bad_brick, epochs).await {
        Ok(()) => {
            tracing::warn!(brick = set.links()[bad_brick].addr(), %fid, chunk = oid.chunk, offset = off, "scrub: repaired a corrupt fragment block (decoded from the others)");
            true
        }
        Err(e) => {
            tracing::warn!(brick = set.links()[bad_brick].addr(), %fid, chunk = oid.chunk, offset = off, error = %e, "scrub: fragment repair failed");
            false
        }
    }
}

/// `stretto volume scrub NAME`: connects to the volume and runs
/// [`scrub_with`].
pub async fn scrub(
    spec: &VolumeSpec,
    secret: Secret,
    progress: impl FnMut(&ScrubProgress),
) -> Result<ScrubReport> {
    let client = connect(spec, secret).await?;
    let r = scrub_with(&client, progress).await;
    client.close().await;
    r
}
