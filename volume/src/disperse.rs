//! `Disperse`: one set of K + M bricks holding each chunk as Reed-Solomon
//! fragments (GlusterFS's disperse, reduced). Any K bricks rebuild a
//! stripe, so the set survives M lost bricks at 1 + M/K times the space.
//!
//! Layout (`docs/volume.md`, "Disperse"): a chunk's bytes are cut into
//! stripes of K fragment units of [`FRAGMENT_UNIT`] bytes; brick `i` of
//! the set stores, in its own brick object of the same chunk index,
//! fragment `i` of every stripe, stripe `s` at offset `s * FRAGMENT_UNIT`.
//! Bricks `0..K` hold the data as is (a systematic code), bricks `K..K+M`
//! the parity.
//!
//! What it shares with [`Replicate`] (and reuses from it: the set's "core",
//! a `Replicate` built by [`Replicate::new_disperse`]): brick links, leases
//! with fencing epochs, the quorum, pending marks against bricks that
//! missed a change, the activity log, and the object's size record (a
//! tiny record mirrored on every brick of the set). What differs:
//! - a write cuts the stripes it touches, reading the old stripes first
//!   when it covers them partly (read-modify-write, under a per-region lock
//!   of this client and the object's lease against other clients), and
//!   sends each brick its own fragment;
//! - under a lease, before a change touches fragments in place, the region
//!   is marked active (the dirty flag, durable on the bricks) and the new
//!   fragments are first written to a *stage* object beside the
//!   chunk (chunk index | [`STAGE_BIT`]); after an unclean takeover,
//!   [`settle`] finds stripes whose fragments disagree (a torn write) and
//!   rewrites them from the stage (new data) or, if the stage is not
//!   whole, from the in-place majority (old data): never a mix;
//! - fragments travel with one CRC32C per 4 KiB block (`WriteBlocks`,
//!   `ReadBlocks`, `docs/volume.md` "Integrity"); reads take K fragments
//!   (the data bricks when they can), decoding when one is missing, down,
//!   corrupt at rest, failing its CRCs on return, or answered with an
//!   error; a brick whose fragment was bad gets the rebuilt fragment
//!   written back (logged at warn), and scrub rebuilds bad fragment blocks
//!   with [`repair_fragment_block`];
//! - heal rebuilds the fragments of a marked region by decoding
//!   ([`rebuild_region`]) instead of copying.

use std::sync::Arc;

use iobuf::IoBuf;
use transport::wire::{
    block_crcs, DataRef, MarksOp, MarksReq, ObjectId, WriteBlocksReq, WriteReq, REGION_SIZE,
};
use transport::{BoxFuture, Payload, Request, Response};

use crate::ec::{Codec, EcError};
use crate::error::{Result, VolumeError};
use crate::replicate::{list_req, read_blocks_req, regions, BrickRead, Replicate};
use crate::xlator::{split, Fid, LeaseAction, LeaseOutcome, Translator, SIZE_CHUNK};

/// Bytes of one fragment of one stripe (one page: fragments stay aligned
/// for `O_DIRECT` on the bricks). A stripe holds K of them.
pub const FRAGMENT_UNIT: u64 = 4096;

/// Set in a chunk index to name the stage object of that chunk, where a
/// leased writer puts the new fragments durably before writing them in
/// place. Real chunk indexes stay far below (offsets are u64, chunks at
/// least 1 MiB); [`SIZE_CHUNK`] is never staged.
pub const STAGE_BIT: u64 = 1 << 62;

/// Stripes per fragment region (a pending or active mark covers one
/// region of a brick's fragment object: [`REGION_SIZE`] bytes).
const STRIPES_PER_REGION: u64 = REGION_SIZE / FRAGMENT_UNIT;

/// Write locks of one client, by fragment region (read-modify-write of a
/// stripe must not interleave with another write of the same client).
const LOCKS: usize = 64;

/// K + M and the codec.
pub struct Geometry {
    /// K.
    pub data: usize,
    /// M.
    pub redundancy: usize,
    /// The Reed-Solomon code.
    pub codec: Codec,
}

impl std::fmt::Debug for Geometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}+{} on {}",
            self.data,
            self.redundancy,
            self.codec.backend()
        )
    }
}

impl Geometry {
    /// K + M on the best codec backend.
    pub fn new(data: usize, redundancy: usize) -> std::result::Result<Geometry, EcError> {
        Ok(Geometry {
            data,
            redundancy,
            codec: Codec::new(data, redundancy)?,
        })
    }

    /// Bricks per set.
    pub fn bricks(&self) -> usize {
        self.data + self.redundancy
    }

    /// Data bytes of one stripe.
    pub fn stripe_bytes(&self) -> u64 {
        self.data as u64 * FRAGMENT_UNIT
    }

    /// The K data fragments of `count` whole stripes of `data`.
    fn cut(&self, data: &[u8]) -> Vec<Vec<u8>> {
        let u = FRAGMENT_UNIT as usize;
        let count = data.len() / (self.data * u);
        let mut frags = vec![vec![0u8; count * u]; self.data];
        for s in 0..count {
            for (j, f) in frags.iter_mut().enumerate() {
                let at = (s * self.data + j) * u;
                f[s * u..(s + 1) * u].copy_from_slice(&data[at..at + u]);
            }
        }
        frags
    }

    /// The stripes' data from their K data fragments.
    fn join(&self, frags: &[Vec<u8>]) -> Vec<u8> {
        let u = FRAGMENT_UNIT as usize;
        let count = frags.first().map_or(0, |f| f.len() / u);
        let mut out = vec![0u8; count * self.data * u];
        for s in 0..count {
            for (j, f) in frags.iter().take(self.data).enumerate() {
                let at = (s * self.data + j) * u;
                out[at..at + u].copy_from_slice(&f[s * u..(s + 1) * u]);
            }
        }
        out
    }

    fn encode_all(&self, data: &[u8]) -> std::result::Result<Vec<Vec<u8>>, EcError> {
        let mut frags = self.cut(data);
        let refs: Vec<&[u8]> = frags.iter().map(|f| f.as_slice()).collect();
        let parity = self.codec.encode(&refs)?;
        frags.extend(parity);
        Ok(frags)
    }
}

/// Fragments read from some bricks of a set.
struct Fetched {
    /// Fragment per brick (zero-padded to the length asked), `None` where
    /// not read.
    frags: Vec<Option<Vec<u8>>>,
    /// Bytes each brick really held (0 where it has no such object: the
    /// fragment reads as zeros).
    lens: Vec<usize>,
    /// Bricks whose fragment is bad: answered `Corrupt` (a block at rest
    /// failed its CRC32C), failed its piece CRCs on return, or answered
    /// with another error (not "no such chunk"). Counted as missing; a
    /// read rewrites them from the others.
    bad: Vec<usize>,
    /// The last failure, to report when too few fragments came back.
    last: Option<VolumeError>,
}

impl Fetched {
    fn have(&self) -> usize {
        self.frags.iter().filter(|f| f.is_some()).count()
    }
}

/// Reads `[off, off + len)` of brick object `oid` (`ReadBlocks`: checked
/// at rest by the brick and against the piece CRCs on return) from bricks
/// taken in the order of `sources` until `want` fragments came back (or
/// sources run out), `want` at a time in parallel.
async fn fetch(
    core: &Replicate,
    oid: ObjectId,
    off: u64,
    len: u64,
    sources: &[usize],
    want: usize,
) -> Fetched {
    let n = core.links().len();
    let mut f = Fetched {
        frags: vec![None; n],
        lens: vec![0; n],
        bad: Vec::new(),
        last: None,
    };
    let fid = Fid::of(&oid);
    let mut next = 0;
    while f.have() < want && next < sources.len() {
        let take = (want - f.have()).min(sources.len() - next);
        let batch = &sources[next..next + take];
        next += take;
        let answers = core
            .fan_out(batch, |_| read_blocks_req(oid, off, len))
            .await;
        for (i, a) in answers {
            match core.read_blocks_answer(i, oid, off, len, a) {
                BrickRead::Data(Some(b)) => {
                    let mut v = vec![0u8; len as usize];
                    let m = b.len().min(v.len());
                    v[..m].copy_from_slice(&b.as_slice()[..m]);
                    f.lens[i] = m;
                    f.frags[i] = Some(v);
                }
                BrickRead::Data(None) => f.frags[i] = Some(vec![0u8; len as usize]),
                BrickRead::Corrupt(detail) => {
                    tracing::warn!(volume = core.volume(), brick = core.links()[i].addr(), %fid, chunk = oid.chunk, off, %detail, "corrupt fragment; decoding around it");
                    f.bad.push(i);
                    f.last = Some(VolumeError::Corrupt {
                        volume: core.volume().to_owned(),
                        brick: core.links()[i].addr().to_owned(),
                        fid,
                        chunk: oid.chunk,
                        offset: off,
                        detail,
                    });
                }
                BrickRead::Failed(e @ VolumeError::Brick { .. }) => {
                    tracing::warn!(volume = core.volume(), brick = core.links()[i].addr(), %fid, off, error = %e, "fragment read failed; decoding around it");
                    f.bad.push(i);
                    f.last = Some(e);
                }
                // Down, unreachable, or a protocol error: missing, but
                // nothing to rewrite.
                BrickRead::Failed(e) => f.last = Some(e),
            }
        }
    }
    f
}

/// A `WriteBlocks` of one brick's fragment `frag` at `off` of `oid`, with
/// its piece CRCs (the brick checks them before touching its disk).
fn fragment_write(
    oid: ObjectId,
    off: u64,
    epoch: u64,
    crcs: &[u32],
    frag: &[u8],
) -> (Request, Payload) {
    (
        Request::WriteBlocks(WriteBlocksReq {
            write: WriteReq {
                object: oid,
                offset: off,
                epoch,
                flags: 0,
                crc32c: 0,
                data: DataRef::None,
            },
            crcs: crcs.to_vec(),
        }),
        Payload::Out(IoBuf::from_slice(frag)),
    )
}

fn codec_err(core: &Replicate, source: EcError) -> VolumeError {
    VolumeError::Codec {
        volume: core.volume().to_owned(),
        source,
    }
}

/// The one dispersed set.
pub struct Disperse {
    core: Arc<Replicate>,
    geo: Arc<Geometry>,
    chunk_size: u64,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Disperse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disperse")
            .field("core", &self.core)
            .field("geometry", &self.geo)
            .finish()
    }
}

impl Disperse {
    /// A dispersed set over its core (made by [`Replicate::new_disperse`]
    /// with the same geometry).
    pub fn new(core: Arc<Replicate>, geo: Arc<Geometry>, chunk_size: u64) -> Disperse {
        Disperse {
            core,
            geo,
            chunk_size,
            locks: (0..LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// The set's core (links, leases, marks).
    pub fn core(&self) -> &Arc<Replicate> {
        &self.core
    }

    /// K + M.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Locks the fragment regions of `oid` that stripes `[s0, s0 + count)`
    /// fall in (a read-modify-write must not interleave with another write
    /// of this client to the same stripes). Locks are taken in increasing
    /// index order, so two writers never wait on each other in a cycle.
    async fn lock_stripes(
        &self,
        oid: &ObjectId,
        s0: u64,
        count: u64,
    ) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let first = s0 / STRIPES_PER_REGION;
        let last = (s0 + count.max(1) - 1) / STRIPES_PER_REGION;
        let mut idx: Vec<usize> = (first..=last)
            .map(|r| {
                let h = crc32c::crc32c(
                    &[
                        oid.chunk.to_le_bytes(),
                        r.to_le_bytes(),
                        (u64::from(oid.vnode) << 32 | u64::from(oid.unique)).to_le_bytes(),
                    ]
                    .concat(),
                );
                h as usize % LOCKS
            })
            .collect();
        idx.sort_unstable();
        idx.dedup();
        let mut held = Vec::with_capacity(idx.len());
        for i in idx {
            held.push(self.locks[i].lock().await);
        }
        held
    }

    /// Bricks a read of `oid`'s brick range may use: up and not marked
    /// stale there, data bricks first.
    async fn sources(&self, oid: &ObjectId, off: u64, len: u64) -> Vec<usize> {
        let (first, count) = regions(off, len);
        let pick = || -> Vec<usize> {
            (0..self.geo.bricks())
                .filter(|&i| {
                    self.core.links()[i].is_up() && !self.core.stale_for(oid, first, count, i)
                })
                .collect()
        };
        self.core.load_marks(false).await;
        let mut s = pick();
        if s.len() < self.geo.data {
            // Marks may have been healed since we loaded them.
            self.core.load_marks(true).await;
            s = pick();
        }
        s
    }

    /// The data of stripes `[s0, s0 + count)` of a chunk, from any K good
    /// fragments, and the bricks that answered with an error.
    async fn read_stripes(
        &self,
        fid: Fid,
        chunk: u64,
        s0: u64,
        count: u64,
    ) -> Result<(Vec<u8>, Vec<usize>)> {
        let k = self.geo.data;
        let oid = fid.chunk(chunk);
        let (off, len) = (s0 * FRAGMENT_UNIT, count * FRAGMENT_UNIT);
        let sources = self.sources(&oid, off, len).await;
        let mut f = self.fetch_k(fid, chunk, off, len, &sources).await?;
        if !(0..k).all(|j| f.frags[j].is_some()) {
            self.geo
                .codec
                .reconstruct(&mut f.frags)
                .map_err(|e| codec_err(&self.core, e))?;
        }
        let data: Vec<Vec<u8>> = f.frags.into_iter().take(k).flatten().collect();
        Ok((self.geo.join(&data), f.bad))
    }

    /// K fragments of `[off, off + len)` from `sources`, or why not.
    async fn fetch_k(
        &self,
        fid: Fid,
        chunk: u64,
        off: u64,
        len: u64,
        sources: &[usize],
    ) -> Result<Fetched> {
        let k = self.geo.data;
        let mut f = fetch(&self.core, fid.chunk(chunk), off, len, sources, k).await;
        if f.have() >= k {
            return Ok(f);
        }
        let up = self.core.up().iter().filter(|u| **u).count();
        if up < k {
            return Err(VolumeError::NoQuorum {
                volume: self.core.volume().to_owned(),
                op: "read",
                need: k,
                set: self.geo.bricks(),
                up,
            });
        }
        Err(f.last.take().unwrap_or(VolumeError::NoGoodCopy {
            volume: self.core.volume().to_owned(),
            fid,
            chunk,
            offset: off / FRAGMENT_UNIT * self.geo.stripe_bytes(),
        }))
    }

    /// Gives bricks whose fragments a read found bad (corrupt at rest,
    /// failing their CRCs on return, or answered with an error) their
    /// fragments of stripes `[s0, s0 + count)` back, rebuilt from K others
    /// and written whole (4 KiB blocks, `WriteBlocks` + FUA) under the
    /// caller's lease epochs. Under the stripes' locks, read afresh: a
    /// write of this client may have changed the stripes since the read
    /// that found them bad, and none can land between this read and the
    /// rewrite (the dispersed set's counterpart of a replica set's repair
    /// gate). A repair that fails (another writer holds the lease, the
    /// brick went away) does not fail the read: it is logged and left for
    /// scrub.
    async fn repair(&self, fid: Fid, chunk: u64, s0: u64, count: u64, bad: &[usize]) {
        let oid = fid.chunk(chunk);
        let _held = self.lock_stripes(&oid, s0, count).await;
        let (off, len) = (s0 * FRAGMENT_UNIT, count * FRAGMENT_UNIT);
        let sources: Vec<usize> = self
            .sources(&oid, off, len)
            .await
            .into_iter()
            .filter(|i| !bad.contains(i))
            .collect();
        let result = async {
            let mut f = self.fetch_k(fid, chunk, off, len, &sources).await?;
            // Fragments found bad on the way are rebuilt too.
            let mut targets = bad.to_vec();
            targets.extend(f.bad.iter().copied().filter(|i| !bad.contains(i)));
            for &i in &targets {
                f.frags[i] = None;
            }
            self.geo
                .codec
                .reconstruct(&mut f.frags)
                .map_err(|e| codec_err(&self.core, e))?;
            let epochs = self.core.epochs(fid);
            for &i in &targets {
                if let Some(frag) = &f.frags[i] {
                    self.core
                        .put_region(oid, off, len, Some(frag), &[i], &epochs)
                        .await?;
                    tracing::warn!(volume = self.core.volume(), %fid, chunk, brick = self.core.links()[i].addr(), off, len, "repaired a bad fragment: rebuilt from the others and rewritten");
                }
            }
            Ok::<(), VolumeError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(volume = self.core.volume(), %fid, chunk, off, len, error = %e, "could not repair a bad fragment now; scrub will");
        }
    }

    async fn read_piece(&self, fid: Fid, chunk: u64, coff: u64, out: &mut [u8]) -> Result<()> {
        let sw = self.geo.stripe_bytes();
        let s0 = coff / sw;
        let s1 = (coff + out.len() as u64).div_ceil(sw);
        // Fragment reads stay under the transport's data limit.
        let per = (crate::xlator::MAX_PIECE / FRAGMENT_UNIT).max(1);
        let mut s = s0;
        while s < s1 {
            let n = (s1 - s).min(per);
            let (data, bad) = self.read_stripes(fid, chunk, s, n).await?;
            if !bad.is_empty() {
                self.repair(fid, chunk, s, n, &bad).await;
            }
            let lo = (s * sw).max(coff);
            let hi = ((s + n) * sw).min(coff + out.len() as u64);
            out[(lo - coff) as usize..(hi - coff) as usize]
                .copy_from_slice(&data[(lo - s * sw) as usize..(hi - s * sw) as usize]);
            s += n;
        }
        Ok(())
    }

    /// Writes `data` at `coff` of a chunk: whole stripes, the partial ones
    /// at either end read first.
    async fn write_piece(&self, fid: Fid, chunk: u64, coff: u64, data: &[u8]) -> Result<()> {
        let sw = self.geo.stripe_bytes();
        let end = coff + data.len() as u64;
        let s0 = coff / sw;
        let s1 = end.div_ceil(sw);
        let oid = fid.chunk(chunk);
        let _held = self.lock_stripes(&oid, s0, s1 - s0).await;
        let mut buf = vec![0u8; ((s1 - s0) * sw) as usize];
        let head = coff % sw != 0;
        let tail = end % sw != 0;
        // A bad fragment found here is fixed by the write itself: every
        // brick gets its new fragment of these stripes.
        if head {
            let (old, _) = self.read_stripes(fid, chunk, s0, 1).await?;
            buf[..sw as usize].copy_from_slice(&old);
        }
        if tail && (s1 - 1 != s0 || !head) {
            let (old, _) = self.read_stripes(fid, chunk, s1 - 1, 1).await?;
            let at = ((s1 - 1 - s0) * sw) as usize;
            buf[at..at + sw as usize].copy_from_slice(&old);
        }
        let at = (coff - s0 * sw) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        self.put_stripes(fid, chunk, s0, &buf).await
    }

    /// Encodes whole stripes and writes every brick's fragment: first to
    /// the stage object (under a lease), then in place.
    async fn put_stripes(&self, fid: Fid, chunk: u64, s0: u64, buf: &[u8]) -> Result<()> {
        let count = buf.len() as u64 / self.geo.stripe_bytes();
        let frags = self
            .geo
            .encode_all(buf)
            .map_err(|e| codec_err(&self.core, e))?;
        let (off, len) = (s0 * FRAGMENT_UNIT, count * FRAGMENT_UNIT);
        // One CRC32C per 4 KiB block of each fragment, computed once for
        // the stage and the in-place write alike.
        let crcs: Vec<Vec<u32>> = frags.iter().map(|f| block_crcs(off, f)).collect();
        let leased = self.core.epochs(fid).iter().any(|e| *e != 0);
        if leased {
            self.stage(fid, chunk, off, &frags, &crcs).await?;
        }
        self.core
            .change(
                "write",
                fid,
                (chunk, off, len),
                self.geo.data,
                |i, oid, epoch| fragment_write(oid, off, epoch, &crcs[i], &frags[i]),
            )
            .await
    }

    /// Writes the fragments to the stage object on the bricks that granted
    /// our lease; a quorum must take them before anything is written in
    /// place. Not FUA: the stage guards against the *writer* dying (the
    /// bricks keep what they acknowledged); a brick's own crash loses its
    /// unflushed stage and in-place data alike, as for any unflushed write.
    async fn stage(
        &self,
        fid: Fid,
        chunk: u64,
        off: u64,
        frags: &[Vec<u8>],
        crcs: &[Vec<u32>],
    ) -> Result<()> {
        let up = self.core.up();
        if !self.core.quorum().met(&up) {
            return Err(self.core.no_quorum("write", &up));
        }
        self.core.join_lease(fid, &up).await;
        let epochs = self.core.lease_epochs(fid)?;
        let targets: Vec<usize> = (0..up.len()).filter(|&i| up[i] && epochs[i] != 0).collect();
        let soid = fid.chunk(chunk | STAGE_BIT);
        let answers = self
            .core
            .fan_out(&targets, |i| {
                fragment_write(soid, off, epochs[i], &crcs[i], &frags[i])
            })
            .await;
        let mut ok = vec![false; up.len()];
        for (i, a) in answers {
            ok[i] = matches!(a, Ok((Response::WriteBlocks(_), _)));
        }
        if !self.core.quorum().met(&ok) {
            return Err(self.core.no_quorum("stage write", &ok));
        }
        Ok(())
    }

    async fn write_all(&self, fid: Fid, offset: u64, data: &[u8]) -> Result<()> {
        for p in split(offset, data.len() as u64, self.chunk_size) {
            let piece = &data[p.at as usize..(p.at + p.len) as usize];
            self.write_piece(fid, p.chunk, p.offset, piece).await?;
        }
        Ok(())
    }

    /// Punch and zero write zero fragments (zeros encode to zero parity).
    async fn zero_all(&self, fid: Fid, offset: u64, len: u64) -> Result<()> {
        for p in split(offset, len, self.chunk_size) {
            let zeros = vec![0u8; p.len as usize];
            self.write_piece(fid, p.chunk, p.offset, &zeros).await?;
        }
        Ok(())
    }

    async fn read_all(&self, fid: Fid, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len as usize];
        for p in split(offset, len, self.chunk_size) {
            self.read_piece(
                fid,
                p.chunk,
                p.offset,
                &mut out[p.at as usize..(p.at + p.len) as usize],
            )
            .await?;
        }
        Ok(out)
    }

    /// Reads brick `i`'s fragment object of chunk `chunk` (for checks and
    /// tools): `len` bytes at fragment offset `off`, zeros past its end.
    pub async fn read_fragment(
        &self,
        fid: Fid,
        chunk: u64,
        brick: usize,
        off: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        let f = fetch(&self.core, fid.chunk(chunk), off, len, &[brick], 1).await;
        let Fetched {
            mut frags, last, ..
        } = f;
        frags[brick].take().ok_or_else(|| {
            last.unwrap_or(VolumeError::NoQuorum {
                volume: self.core.volume().to_owned(),
                op: "fragment read",
                need: 1,
                set: self.geo.bricks(),
                up: 0,
            })
        })
    }
}

impl Translator for Disperse {
    fn read(&self, fid: Fid, offset: u64, len: u64) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(self.read_all(fid, offset, len))
    }

    fn write<'a>(&'a self, fid: Fid, offset: u64, data: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write_all(fid, offset, data))
    }

    fn punch(&self, fid: Fid, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.zero_all(fid, offset, len))
    }

    fn zero(&self, fid: Fid, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.zero_all(fid, offset, len))
    }

    fn flush(&self, fid: Fid) -> BoxFuture<'_, Result<()>> {
        self.core.flush(fid)
    }

    fn size(&self, fid: Fid) -> BoxFuture<'_, Result<u64>> {
        self.core.size(fid)
    }

    fn grow(&self, fid: Fid, size: u64) -> BoxFuture<'_, Result<()>> {
        self.core.grow(fid, size)
    }

    fn lease(&self, fid: Fid, action: LeaseAction) -> BoxFuture<'_, Result<LeaseOutcome>> {
        self.core.lease(fid, action)
    }
}

/// Heal of a dispersed set: rebuilds brick `dsts`' fragments of one marked
/// region by decoding K fragments from bricks no one marks there, and
/// writes them durably. Returns the bytes written per target.
pub(crate) async fn rebuild_region(
    core: &Replicate,
    geo: &Geometry,
    oid: ObjectId,
    region: u32,
    dsts: &[usize],
    epochs: &[u64],
) -> Result<u64> {
    if oid.chunk & STAGE_BIT != 0 && oid.chunk != SIZE_CHUNK {
        // Stage objects hold no data of their own.
        return Ok(0);
    }
    let fid = Fid::of(&oid);
    let off = u64::from(region) * REGION_SIZE;
    let sources: Vec<usize> = (0..geo.bricks())
        .filter(|&i| {
            core.links()[i].is_up() && !dsts.contains(&i) && !core.stale_for(&oid, region, 1, i)
        })
        .collect();
    let mut f = fetch(core, oid, off, REGION_SIZE, &sources, geo.data).await;
    if f.have() < geo.data {
        return Err(f.last.take().unwrap_or(VolumeError::NoGoodCopy {
            volume: core.volume().to_owned(),
            fid,
            chunk: oid.chunk,
            offset: off,
        }));
    }
    let held = f.lens.iter().copied().max().unwrap_or(0) as u64;
    let held = held.div_ceil(FRAGMENT_UNIT) * FRAGMENT_UNIT;
    if held == 0 {
        // Nothing there on the good bricks: the targets' fragments must
        // read as zeros too.
        core.put_region(oid, off, REGION_SIZE, None, dsts, epochs)
            .await?;
        return Ok(0);
    }
    for fr in f.frags.iter_mut().flatten() {
        fr.truncate(held as usize);
    }
    geo.codec
        .reconstruct(&mut f.frags)
        .map_err(|e| codec_err(core, e))?;
    for &t in dsts {
        let frag = f.frags[t].as_deref().unwrap_or(&[]);
        let zeros = frag.iter().all(|b| *b == 0);
        core.put_region(oid, off, held, (!zeros).then_some(frag), &[t], epochs)
            .await?;
    }
    // A source found bad on the way (corrupt at rest) gets its fragment
    // back too, whole blocks written with their CRCs.
    for &t in &f.bad {
        if let Some(frag) = f.frags[t].as_deref() {
            core.put_region(oid, off, held, Some(frag), &[t], epochs)
                .await?;
            tracing::warn!(volume = core.volume(), %fid, chunk = oid.chunk, brick = core.links()[t].addr(), off, len = held, "heal: repaired a bad fragment");
        }
    }
    Ok(held)
}

/// Scrub: rebuilds brick `bad`'s fragment block at `off` of `oid` (one
/// fragment unit: brick `bad`'s share of one stripe) from the other
/// bricks' fragments of that stripe, and writes it whole (`WriteBlocks` +
/// FUA, its CRC computed afresh) with the caller's lease `epochs`. Every
/// other fragment that is up and clean is read (`ReadBlocks`, so a bad one
/// is left out), and they must decode to one stripe: a stripe whose
/// fragments disagree (a torn write no settle fixed) is not guessed at.
pub(crate) async fn repair_fragment_block(
    core: &Replicate,
    geo: &Geometry,
    oid: ObjectId,
    off: u64,
    bad: usize,
    epochs: &[u64],
) -> Result<()> {
    let fid = Fid::of(&oid);
    let off = off / FRAGMENT_UNIT * FRAGMENT_UNIT;
    let region = (off / REGION_SIZE) as u32;
    // Pending marks name the brick objects of chunks, not their stages.
    let staged = oid.chunk & STAGE_BIT != 0;
    let sources: Vec<usize> = (0..geo.bricks())
        .filter(|&i| {
            i != bad && core.links()[i].is_up() && (staged || !core.stale_for(&oid, region, 1, i))
        })
        .collect();
    let mut f = fetch(core, oid, off, FRAGMENT_UNIT, &sources, sources.len()).await;
    let present = f.have();
    if present < geo.data {
        return Err(f.last.take().unwrap_or(VolumeError::NoGoodCopy {
            volume: core.volume().to_owned(),
            fid,
            chunk: oid.chunk,
            offset: off,
        }));
    }
    let frags: Vec<Option<&[u8]>> = f.frags.iter().map(|x| x.as_deref()).collect();
    match best_version(geo, &frags) {
        Some((full, agree)) if agree == present => {
            core.put_region(oid, off, FRAGMENT_UNIT, Some(&full[bad]), &[bad], epochs)
                .await?;
            Ok(())
        }
        _ => Err(VolumeError::Heal {
            volume: core.volume().to_owned(),
            reason: format!(
                "{fid} chunk {} fragment offset {off}: the other {present} fragments of the stripe do not decode to one version",
                oid.chunk
            ),
        }),
    }
}

/// The K-subset of `frags` (one stripe) whose decoding agrees with the
/// most present fragments: the full decoded stripe and how many agree.
fn best_version(geo: &Geometry, frags: &[Option<&[u8]>]) -> Option<(Vec<Vec<u8>>, usize)> {
    let present: Vec<usize> = (0..frags.len()).filter(|&i| frags[i].is_some()).collect();
    let k = geo.data;
    if present.len() < k {
        return None;
    }
    let mut best: Option<(Vec<Vec<u8>>, usize)> = None;
    let mut pick: Vec<usize> = (0..k).collect();
    loop {
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; frags.len()];
        for &p in &pick {
            shards[present[p]] = frags[present[p]].map(<[u8]>::to_vec);
        }
        if geo.codec.reconstruct(&mut shards).is_ok() {
            let full: Vec<Vec<u8>> = shards.into_iter().map(Option::unwrap_or_default).collect();
            let agree = present
                .iter()
                .filter(|&&i| frags[i] == Some(full[i].as_slice()))
                .count();
            if best.as_ref().is_none_or(|b| agree > b.1) {
                best = Some((full, agree));
            }
            if agree == present.len() {
                break;
            }
        }
        // Next k-combination of 0..present.len().
        let n = present.len();
        let Some(i) = (0..k).rev().find(|&i| pick[i] != i + n - k) else {
            break;
        };
        pick[i] += 1;
        for j in i + 1..k {
            pick[j] = pick[j - 1] + 1;
        }
    }
    best
}

/// After an unclean lease takeover: makes every stripe of every region the
/// activity log marks active hold fragments of one version, then clears the
/// marks. A torn stripe (fragments that do not decode to one stripe) takes
/// the staged new fragments when the stage is whole, else the version a
/// majority (at least K + 1) of the in-place fragments agree on. Returns
/// the regions settled.
pub(crate) async fn settle(core: &Replicate, geo: &Geometry, fid: Fid) -> Result<usize> {
    core.load_marks(true).await;
    let up = core.up();
    let n = geo.bricks();
    let upi: Vec<usize> = (0..n).filter(|&i| up[i]).collect();
    let answers = core
        .fan_out(&upi, |_| {
            (
                list_req(MarksOp::ListActive, core.volume_id(), fid),
                Payload::None,
            )
        })
        .await;
    let mut active = std::collections::BTreeSet::new();
    for (_, a) in answers {
        if let Ok((Response::Marks(m), _)) = a {
            active.extend(m.marks.iter().map(|m| (m.object, m.region)));
        }
    }
    core.join_lease(fid, &up).await;
    let epochs = core.epochs(fid);
    let mut settled = 0;
    for (oid, region) in active {
        if oid.chunk == SIZE_CHUNK {
            // The size record is mirrored: copy it from a good brick.
            if let Some(src) = upi
                .iter()
                .copied()
                .find(|&i| !core.stale_for(&oid, region, 1, i))
            {
                let dsts: Vec<usize> = upi
                    .iter()
                    .copied()
                    .filter(|&i| i != src && epochs[i] != 0)
                    .collect();
                core.copy_region(oid, region, src, &dsts, &epochs).await?;
            }
        } else if !settle_region(core, geo, oid, region, &upi, &epochs).await? {
            continue;
        }
        core.fan_out(&upi, |_| {
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

/// One stripe's slice `r` of each fragment read.
fn cut<'a>(f: &'a Fetched, r: &std::ops::Range<usize>) -> Vec<Option<&'a [u8]>> {
    f.frags
        .iter()
        .map(|x| x.as_ref().map(|v| &v[r.clone()]))
        .collect()
}

/// Settles one region of one chunk; `false` when it cannot (too few
/// fragments, or a torn stripe with neither a whole stage nor a majority).
async fn settle_region(
    core: &Replicate,
    geo: &Geometry,
    oid: ObjectId,
    region: u32,
    upi: &[usize],
    epochs: &[u64],
) -> Result<bool> {
    let fid = Fid::of(&oid);
    let n = geo.bricks();
    let u = FRAGMENT_UNIT as usize;
    let off = u64::from(region) * REGION_SIZE;
    let usable: Vec<usize> = upi
        .iter()
        .copied()
        .filter(|&i| !core.stale_for(&oid, region, 1, i))
        .collect();
    let here = fetch(core, oid, off, REGION_SIZE, &usable, usable.len()).await;
    if here.have() < geo.data {
        tracing::warn!(volume = core.volume(), %fid, chunk = oid.chunk, region, "too few fragments to settle a region");
        return Ok(false);
    }
    let stage = fetch(
        core,
        ObjectId {
            chunk: oid.chunk | STAGE_BIT,
            ..oid
        },
        off,
        REGION_SIZE,
        &usable,
        usable.len(),
    )
    .await;
    let held = here
        .lens
        .iter()
        .chain(&stage.lens)
        .copied()
        .max()
        .unwrap_or(0);
    let stripes = held.div_ceil(u).min(STRIPES_PER_REGION as usize);
    let mut out: Vec<Vec<u8>> = vec![vec![0u8; stripes * u]; n];
    let mut torn = 0;
    for s in 0..stripes {
        let r = s * u..(s + 1) * u;
        let mine = cut(&here, &r);
        let present = mine.iter().filter(|x| x.is_some()).count();
        let (full, agree) = best_version(geo, &mine).unwrap_or_default();
        let chosen = if agree == present {
            full
        } else {
            torn += 1;
            let st = cut(&stage, &r);
            let sp = st.iter().filter(|x| x.is_some()).count();
            match best_version(geo, &st) {
                // The stage is whole: the writer got to the in-place
                // writes, so this is its new data.
                Some((sfull, sagree)) if sagree == sp && sp >= geo.data => sfull,
                _ if agree > geo.data => full,
                _ => {
                    tracing::warn!(volume = core.volume(), %fid, chunk = oid.chunk, region, stripe = s, "torn stripe with neither a whole stage nor a majority");
                    return Ok(false);
                }
            }
        };
        for (i, f) in chosen.into_iter().enumerate() {
            out[i][r.clone()].copy_from_slice(&f);
        }
    }
    if torn == 0 {
        // Consistent; a fragment that came back bad (corrupt at rest)
        // was left out above and gets its fragment of the version chosen.
        for &i in here
            .bad
            .iter()
            .filter(|&&i| epochs[i] != 0 && !out[i].is_empty())
        {
            core.put_region(oid, off, out[i].len() as u64, Some(&out[i]), &[i], epochs)
                .await?;
            tracing::warn!(volume = core.volume(), %fid, chunk = oid.chunk, region, brick = core.links()[i].addr(), "settle: repaired a bad fragment");
        }
        return Ok(true);
    }
    tracing::info!(volume = core.volume(), %fid, chunk = oid.chunk, region, stripes = torn, "settled torn stripes");
    let (dsts, missed): (Vec<usize>, Vec<usize>) =
        (0..n).partition(|&i| usable.contains(&i) && epochs[i] != 0);
    for &i in &dsts {
        core.put_region(oid, off, out[i].len() as u64, Some(&out[i]), &[i], epochs)
            .await?;
    }
    if !missed.is_empty() && !dsts.is_empty() {
        core.add_pending(oid, region, 1, &dsts, &missed).await?;
    }
    Ok(true)
}
