//! The volume client: connects to a volume's bricks, stacks the
//! translators its layout calls for, and hands out object handles.
//!
//! Stack: one [`Replicate`] per set (a plain distribute volume has sets of
//! one brick), under one [`Distribute`] when there are several sets.
//!
//! Object size: the stat size of the object's size-record chunk
//! ([`crate::xlator::SIZE_CHUNK`]), grown by writes that end past it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;
use transport::{ClientOptions, Secret};

use crate::distribute::Distribute;
use crate::error::{Result, VolumeError};
use crate::link::BrickLink;
use crate::replicate::Replicate;
use crate::spec::VolumeSpec;
use crate::xlator::{Fid, LeaseAction, LeaseOutcome, Translator};

/// Default `ping-timeout`: how long a call waits for a brick before the
/// brick is taken for dead.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Default write-lease life without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// A connected volume.
pub struct Client {
    spec: VolumeSpec,
    links: Vec<Arc<BrickLink>>,
    sets: Vec<Arc<Replicate>>,
    root: Arc<dyn Translator>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("volume", &self.spec.name)
            .field("links", &self.links)
            .finish()
    }
}

/// The `ping-timeout` option of a volume (seconds), or the default.
pub fn ping_timeout(spec: &VolumeSpec) -> Result<Duration> {
    let v = spec.option("ping-timeout", "10");
    v.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0 && s.is_finite())
        .map(Duration::from_secs_f64)
        .ok_or_else(|| VolumeError::Spec {
            volume: spec.name.clone(),
            reason: format!("ping-timeout {v:?} is not a positive number of seconds"),
        })
}

impl Client {
    /// Connects to every brick of `spec` (bricks that do not answer are
    /// retried in the background) and builds the translator stack. The
    /// volume's `ping-timeout` becomes the transport's request timeout.
    pub async fn connect_spec(
        spec: VolumeSpec,
        secret: Secret,
        opts: ClientOptions,
    ) -> Result<Client> {
        let mut opts = opts;
        opts.request_timeout = ping_timeout(&spec)?;
        opts.connect_timeout = opts.connect_timeout.min(opts.request_timeout);
        // `--transport` on the command line wins over the volume option.
        let kind = match transport::rdma::client_transport() {
            Some(k) => k,
            None => spec
                .option("transport", "tcp")
                .parse::<transport::TransportKind>()
                .unwrap_or_default(),
        };
        let mut links = Vec::with_capacity(spec.bricks.len());
        for b in &spec.bricks {
            links.push(BrickLink::connect_via(b, secret.clone(), opts.clone(), kind).await);
        }
        Client::with_links(spec, links)
    }

    /// Builds the stack over links already made (one per brick of `spec`,
    /// in order).
    pub fn with_links(spec: VolumeSpec, links: Vec<Arc<BrickLink>>) -> Result<Client> {
        let bad = |reason: String| VolumeError::Spec {
            volume: spec.name.clone(),
            reason,
        };
        let n = spec.kind.set_size();
        if n == 0 || spec.bricks.is_empty() || spec.bricks.len() % n != 0 {
            return Err(bad(format!(
                "{} bricks do not make sets of {n}",
                spec.bricks.len()
            )));
        }
        if links.len() != spec.bricks.len() {
            return Err(bad(format!(
                "{} links for {} bricks",
                links.len(),
                spec.bricks.len()
            )));
        }
        if !spec.chunk_size.is_power_of_two() || spec.chunk_size < (1 << 20) {
            return Err(bad(format!(
                "chunk size {} is not a power of two of at least 1 MiB",
                spec.chunk_size
            )));
        }
        let owner = loop {
            let o: u64 = rand::random();
            if o != 0 {
                break o;
            }
        };
        let mut sets = Vec::new();
        for s in 0..spec.set_count() {
            let set_links = links[s * n..(s + 1) * n].to_vec();
            sets.push(Arc::new(Replicate::new(&spec, set_links, owner)?));
        }
        let root: Arc<dyn Translator> = if sets.len() == 1 {
            sets[0].clone()
        } else {
            Arc::new(Distribute::new(
                spec.chunk_size,
                sets.iter()
                    .map(|s| s.clone() as Arc<dyn Translator>)
                    .collect(),
            ))
        };
        Ok(Client {
            spec,
            links,
            sets,
            root,
        })
    }

    /// The volume description.
    pub fn spec(&self) -> &VolumeSpec {
        &self.spec
    }

    /// The top of the translator stack.
    pub fn translator(&self) -> Arc<dyn Translator> {
        self.root.clone()
    }

    /// The replica sets, in set order.
    pub fn sets(&self) -> &[Arc<Replicate>] {
        &self.sets
    }

    /// The brick links, in brick order.
    pub fn links(&self) -> &[Arc<BrickLink>] {
        &self.links
    }

    /// A handle on an object, without a lease: its changes are refused
    /// while another client holds the object's lease.
    pub fn object(&self, fid: Fid) -> Object {
        Object {
            root: self.root.clone(),
            sets: self.sets.clone(),
            fid,
            known_size: Arc::new(AtomicU64::new(u64::MAX)),
            lease: None,
            settled: 0,
        }
    }

    /// A handle on an object holding its write lease (from a quorum of each
    /// set; renewed in the background every third of `lease`). Fails with
    /// `LeaseBusy` while another writer holds it. If the last holder did not
    /// release it (it died), the regions it left active are first made
    /// identical on every brick that is up.
    pub async fn open_writer(&self, fid: Fid, lease: Duration) -> Result<Object> {
        let ms = lease.as_millis().clamp(100, u32::MAX as u128) as u32;
        let out: LeaseOutcome = self
            .root
            .lease(fid, LeaseAction::Acquire { duration_ms: ms })
            .await?;
        let mut settled = 0;
        if out.unclean {
            for s in &self.sets {
                let n = s.settle(fid).await?;
                settled += n;
                if n > 0 {
                    tracing::info!(volume = %self.spec.name, %fid, regions = n, "settled the regions a dead writer left active");
                }
            }
        }
        let root = self.root.clone();
        let period = Duration::from_millis(ms as u64 / 3);
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if let Err(e) = root.lease(fid, LeaseAction::Renew).await {
                    tracing::warn!(%fid, error = %e, "lease renewal failed");
                    if matches!(e, VolumeError::Fenced { .. }) {
                        return;
                    }
                }
            }
        })
        .abort_handle();
        let mut o = self.object(fid);
        o.lease = Some(renew);
        o.settled = settled;
        Ok(o)
    }

    /// Reloads every set's view of the pending marks from the bricks (after
    /// a heal, reads may use healed bricks again).
    pub async fn refresh_marks(&self) {
        for s in &self.sets {
            s.load_marks(true).await;
        }
    }

    /// Closes every brick connection.
    pub async fn close(&self) {
        for l in &self.links {
            l.close().await;
        }
    }
}

/// One object of a volume.
pub struct Object {
    root: Arc<dyn Translator>,
    sets: Vec<Arc<Replicate>>,
    fid: Fid,
    /// The size as last seen or grown (`u64::MAX`: not read yet).
    known_size: Arc<AtomicU64>,
    /// The renewal task of the lease this handle holds.
    lease: Option<AbortHandle>,
    /// Regions settled when the lease was taken over.
    settled: usize,
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Object")
            .field("fid", &self.fid)
            .field("leased", &self.lease.is_some())
            .finish()
    }
}

impl Object {
    /// The object's name.
    pub fn fid(&self) -> Fid {
        self.fid
    }

    /// How many active regions a dead writer left that were made
    /// identical across the replicas when this handle took the lease.
    pub fn settled_regions(&self) -> usize {
        self.settled
    }

    /// Reads `len` bytes at `offset` (zeros where nothing was written).
    pub async fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.root.read(self.fid, offset, len).await
    }

    /// Writes `data` at `offset`; acknowledged once a quorum of each set
    /// involved has it and the bricks that missed it are marked.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.root.write(self.fid, offset, data).await?;
        self.grow_to(offset + data.len() as u64).await
    }

    async fn grow_to(&self, end: u64) -> Result<()> {
        let mut known = self.known_size.load(Ordering::Acquire);
        if known == u64::MAX {
            known = self.root.size(self.fid).await?;
            self.known_size.fetch_min(known, Ordering::AcqRel);
            known = self.known_size.load(Ordering::Acquire);
        }
        if end > known {
            self.root.grow(self.fid, end).await?;
            self.known_size.fetch_max(end, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Deallocates `[offset, offset + len)`.
    pub async fn punch(&self, offset: u64, len: u64) -> Result<()> {
        self.root.punch(self.fid, offset, len).await
    }

    /// Zeroes `[offset, offset + len)` (and grows the size to its end).
    pub async fn zero(&self, offset: u64, len: u64) -> Result<()> {
        self.root.zero(self.fid, offset, len).await?;
        self.grow_to(offset + len).await
    }

    /// Makes everything acknowledged so far durable on the bricks.
    pub async fn flush(&self) -> Result<()> {
        self.root.flush(self.fid).await
    }

    /// The object's size: the end of the furthest write or zero.
    pub async fn size(&self) -> Result<u64> {
        let s = self.root.size(self.fid).await?;
        self.known_size.store(s, Ordering::Release);
        Ok(s)
    }

    /// Releases the lease (if held) and closes the handle.
    pub async fn close(mut self) -> Result<()> {
        if let Some(r) = self.lease.take() {
            r.abort();
            self.root.lease(self.fid, LeaseAction::Release).await?;
        }
        Ok(())
    }

    /// Stops renewing the lease without releasing it, as a writer that
    /// crashed would: the lease expires on the bricks and the next holder
    /// settles what this one left active. For tests and fail-over drills.
    pub fn abandon(mut self) {
        if let Some(r) = self.lease.take() {
            r.abort();
        }
        let _ = &self.sets;
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        if let Some(r) = self.lease.take() {
            r.abort();
            // Release in the background if a runtime is still there.
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                let root = self.root.clone();
                let fid = self.fid;
                h.spawn(async move {
                    let _ = root.lease(fid, LeaseAction::Release).await;
                });
            }
        }
    }
}
