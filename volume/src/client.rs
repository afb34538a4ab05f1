//! The volume client: connects to a volume's bricks, stacks the
//! translators its layout calls for, and hands out object handles.
//!
//! Stack: one [`Replicate`] per set (a plain distribute volume has sets of
//! one brick), or one [`Disperse`] per set of a dispersed volume (over a
//! `Replicate` core that keeps its leases and marks), under one
//! [`Distribute`] when there are several sets.
//!
//! Object size: the stat size of the object's size-record chunk
//! ([`crate::xlator::SIZE_CHUNK`]), grown by writes that end past it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;
use transport::wire::GetVolConfig;
use transport::{ClientOptions, Payload, Request, Response, Secret};

use crate::capacity::{self, Capacity};
use crate::disperse::{Disperse, Geometry};
use crate::distribute::Distribute;
use crate::error::{Result, VolumeError};
use crate::link::BrickLink;
use crate::records::RecordStore;
use crate::records_replicated::ReplicatedRecords;
use crate::replicate::Replicate;
use crate::spec::{VolumeKind, VolumeSpec, VolumeState, DEFAULT_STRIPE_UNIT};
use crate::stripe::Stripe;
use crate::volfile::{self, Record};
use crate::xlator::{Fid, LeaseAction, LeaseOutcome, Translator, MAX_PIECE};

/// Default `ping-timeout`: how long a call waits for a brick before the
/// brick is taken for dead.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Default write-lease life without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// A connected volume. Cheap to share: it is a handle on state that a
/// background watcher may swap when the volume's description changes.
pub struct Client {
    shared: Arc<Shared>,
}

/// What a client and its object handles share.
struct Shared {
    /// The translator stack of the newest description seen.
    stack: RwLock<Arc<Stack>>,
    /// Lease owner id of this client (kept across reloads, so the leases it
    /// holds stay its own).
    owner: u64,
    /// How to reach bricks that join the volume (`None`: links were handed
    /// in by the caller, and the client does not reload).
    connect: Option<(Secret, ClientOptions)>,
    /// Generation of the description in `stack`, for watchers.
    generation: watch::Sender<u64>,
    /// The task that watches the volume's generation.
    watcher: Mutex<Option<AbortHandle>>,
}

/// One version of the translator stack.
struct Stack {
    spec: VolumeSpec,
    links: Vec<Arc<BrickLink>>,
    sets: Vec<Arc<Replicate>>,
    dispersed: Vec<Arc<Disperse>>,
    root: Arc<dyn Translator>,
    records: Arc<ReplicatedRecords>,
}

impl Shared {
    fn current(&self) -> Arc<Stack> {
        self.stack.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.current();
        f.debug_struct("Client")
            .field("volume", &st.spec.name)
            .field("generation", &st.spec.generation)
            .field("links", &st.links)
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

/// How often a client asks a brick for the volume's generation.
pub const GENERATION_POLL: Duration = Duration::from_secs(1);

/// Checks that `links` fit `spec` and stacks the translators over them.
fn build_stack(
    spec: VolumeSpec,
    links: Vec<Arc<BrickLink>>,
    owner: u64,
    prev: Option<&Stack>,
) -> Result<Stack> {
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
    // The layout never changes under a volume that holds data, so set `s`
    // of the new description succeeds set `s` of the old (leases, active
    // regions and stale marks carry over).
    let make = |s: usize, spec: &VolumeSpec, set_links: Vec<Arc<BrickLink>>| match prev
        .and_then(|p| p.sets.get(s))
    {
        Some(old) => old.succeed(spec, set_links),
        None => Replicate::new(spec, set_links, owner),
    };
    let mut sets = Vec::new();
    let mut dispersed = Vec::new();
    let parts: Vec<Arc<dyn Translator>> = match spec.kind {
        VolumeKind::Disperse { data, redundancy } => {
            let g = Arc::new(
                Geometry::new(data as usize, redundancy as usize)
                    .map_err(|e| bad(e.to_string()))?,
            );
            let mut tops: Vec<Arc<dyn Translator>> = Vec::new();
            for s in 0..spec.set_count() {
                let set_links = links[s * n..(s + 1) * n].to_vec();
                // `succeed` keeps the old core's geometry.
                let core = Arc::new(match prev.and_then(|p| p.sets.get(s)) {
                    Some(old) => old.succeed(&spec, set_links)?,
                    None => Replicate::new_disperse(&spec, set_links, owner, g.clone())?,
                });
                let d = Arc::new(Disperse::new(core.clone(), g.clone(), spec.chunk_size));
                sets.push(core);
                dispersed.push(d.clone());
                tops.push(d);
            }
            tops
        }
        VolumeKind::Stripe { .. } => {
            // Each column is a set of one brick (its own lease, epochs,
            // CRC checks); the stripe maps offsets over them.
            let unit = stripe_unit(&spec)?;
            let mut column_spec = spec.clone();
            column_spec.options.remove("quorum-type");
            column_spec.options.remove("quorum-count");
            for (i, l) in links.iter().enumerate() {
                sets.push(Arc::new(make(i, &column_spec, vec![l.clone()])?));
            }
            sets.chunks(n)
                .map(|cols| {
                    Arc::new(Stripe::new(
                        unit,
                        cols.iter()
                            .map(|c| c.clone() as Arc<dyn Translator>)
                            .collect(),
                    )) as Arc<dyn Translator>
                })
                .collect()
        }
        _ => {
            for s in 0..spec.set_count() {
                let set_links = links[s * n..(s + 1) * n].to_vec();
                sets.push(Arc::new(make(s, &spec, set_links)?));
            }
            sets.iter()
                .map(|s| s.clone() as Arc<dyn Translator>)
                .collect()
        }
    };
    let root: Arc<dyn Translator> = if parts.len() == 1 {
        parts[0].clone()
    } else {
        Arc::new(Distribute::new(spec.chunk_size, parts))
    };
    // The namespace lives on the first set; a store whose bricks did not
    // change is kept (with what it knows of the heads and its ballot).
    let first = &links[..n];
    let same_quorum = |old: &VolumeSpec| {
        ["quorum-type", "quorum-count"]
            .iter()
            .all(|k| old.option(k, "") == spec.option(k, ""))
    };
    let records = match prev {
        Some(p)
            if same_quorum(&p.spec)
                && p.records.links().len() == n
                && p.records
                    .links()
                    .iter()
                    .zip(first)
                    .all(|(a, b)| Arc::ptr_eq(a, b)) =>
        {
            p.records.clone()
        }
        _ => Arc::new(ReplicatedRecords::new(&spec, first.to_vec(), owner)?),
    };
    Ok(Stack {
        spec,
        links,
        sets,
        dispersed,
        root,
        records,
    })
}

impl Client {
    /// Connects to every brick of `spec` (bricks that do not answer are
    /// retried in the background) and builds the translator stack. The
    /// volume's `ping-timeout` becomes the transport's request timeout.
    ///
    /// The client then watches the volume's generation (asking a brick
    /// every [`GENERATION_POLL`]) and, when it moves, reloads: new options
    /// take effect, bricks that joined (replace-brick) are connected and
    /// bricks that left are dropped, with the leases it holds carried over.
    pub async fn connect_spec(
        spec: VolumeSpec,
        secret: Secret,
        opts: ClientOptions,
    ) -> Result<Client> {
        let opts = link_options(&spec, opts)?;
        let kind = link_transport(&spec);
        let mut links = Vec::with_capacity(spec.bricks.len());
        for b in &spec.bricks {
            links.push(BrickLink::connect_via(b, secret.clone(), opts.clone(), kind).await);
        }
        let client = Client::build(spec, links, Some((secret, opts)))?;
        let weak = Arc::downgrade(&client.shared);
        let task = tokio::spawn(watch_generation(weak)).abort_handle();
        *client
            .shared
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(client)
    }

    /// Builds the stack over links already made (one per brick of `spec`,
    /// in order). Such a client does not reload on its own (see
    /// [`Client::reload`]).
    pub fn with_links(spec: VolumeSpec, links: Vec<Arc<BrickLink>>) -> Result<Client> {
        Client::build(spec, links, None)
    }

    fn build(
        spec: VolumeSpec,
        links: Vec<Arc<BrickLink>>,
        connect: Option<(Secret, ClientOptions)>,
    ) -> Result<Client> {
        let owner = loop {
            let o: u64 = rand::random();
            if o != 0 {
                break o;
            }
        };
        let generation = spec.generation;
        let stack = build_stack(spec, links, owner, None)?;
        Ok(Client {
            shared: Arc::new(Shared {
                stack: RwLock::new(Arc::new(stack)),
                owner,
                connect,
                generation: watch::channel(generation).0,
                watcher: Mutex::new(None),
            }),
        })
    }

    /// The volume description in use.
    pub fn spec(&self) -> VolumeSpec {
        self.shared.current().spec.clone()
    }

    /// A receiver that sees the generation of the description in use each
    /// time the client reloads.
    pub fn watch_generation(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// The top of the translator stack.
    pub fn translator(&self) -> Arc<dyn Translator> {
        self.shared.current().root.clone()
    }

    /// The volume's namespace records (on the bricks of the first set,
    /// replicated with the volume's quorum, commits in one order). The
    /// store follows reloads: ask again rather than keep it across a
    /// change of the first set's bricks.
    pub fn records(&self) -> Arc<dyn RecordStore> {
        self.shared.current().records.clone()
    }

    /// The same store with its heal and info calls.
    pub fn replicated_records(&self) -> Arc<ReplicatedRecords> {
        self.shared.current().records.clone()
    }

    /// The replica sets, in set order (for a stripe volume: one set of one
    /// brick per column, in brick order; for a dispersed volume, each set's
    /// core: its leases, marks and heal).
    pub fn sets(&self) -> Vec<Arc<Replicate>> {
        self.shared.current().sets.clone()
    }

    /// The dispersed sets, in set order (empty unless the volume is
    /// dispersed); their cores are [`Client::sets`].
    pub fn dispersed(&self) -> Vec<Arc<Disperse>> {
        self.shared.current().dispersed.clone()
    }

    /// The brick links, in brick order.
    pub fn links(&self) -> Vec<Arc<BrickLink>> {
        self.shared.current().links.clone()
    }

    /// Switches to a newer description of the same volume: bricks it keeps
    /// keep their links (unless `ping-timeout` changed), bricks new to it
    /// are connected, links to bricks that left are closed. Object handles
    /// follow at their next call. A description that is not newer, or of
    /// another volume, is refused.
    pub async fn reload(&self, spec: VolumeSpec) -> Result<()> {
        reload(&self.shared, spec).await
    }

    /// A handle on an object, without a lease: its changes are refused
    /// while another client holds the object's lease.
    pub fn object(&self, fid: Fid) -> Object {
        Object {
            shared: self.shared.clone(),
            fid,
            known_size: Arc::new(AtomicU64::new(u64::MAX)),
            lease: Mutex::new(None),
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
        let st = self.shared.current();
        let out: LeaseOutcome = st
            .root
            .lease(fid, LeaseAction::Acquire { duration_ms: ms })
            .await?;
        let mut settled = 0;
        if out.unclean {
            for s in &st.sets {
                let n = s.settle(fid).await?;
                settled += n;
                if n > 0 {
                    tracing::info!(volume = %st.spec.name, %fid, regions = n, "settled the regions a dead writer left active");
                }
            }
        }
        let shared = Arc::downgrade(&self.shared);
        let period = Duration::from_millis(ms as u64 / 3);
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let root = shared.current().root.clone();
                drop(shared);
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
        o.lease = Mutex::new(Some(HeldLease {
            renew,
            rt: tokio::runtime::Handle::current(),
        }));
        o.settled = settled;
        Ok(o)
    }

    /// Reloads every set's view of the pending marks from the bricks (after
    /// a heal, reads may use healed bricks again).
    pub async fn refresh_marks(&self) {
        for s in &self.shared.current().sets {
            s.load_marks(true).await;
        }
    }

    /// The volume's usable capacity, from every brick's `BrickStats` (see
    /// [`crate::capacity`]): bricks that are down or fail the call are left
    /// out while their set keeps its quorum.
    pub async fn capacity(&self) -> Result<Capacity> {
        let st = self.shared.current();
        let calls: Vec<_> = st
            .links
            .iter()
            .map(|l| {
                let l = l.clone();
                tokio::spawn(async move {
                    match l.call(Request::BrickStats, Payload::None).await {
                        Ok((Response::BrickStats(s), _)) => Some((s.capacity_bytes, s.free_bytes)),
                        _ => None,
                    }
                })
            })
            .collect();
        let mut answers = Vec::with_capacity(calls.len());
        for c in calls {
            answers.push(c.await.ok().flatten());
        }
        capacity::of_bricks(&st.spec, &answers)
    }

    /// Stops watching the volume and closes every brick connection.
    pub async fn close(&self) {
        if let Some(w) = self
            .shared
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            w.abort();
        }
        for l in &self.shared.current().links {
            l.close().await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Object handles share the state; the watcher holds it weakly and
        // ends by itself once the last handle is gone.
        if Arc::strong_count(&self.shared) == 1 {
            if let Some(w) = self
                .shared
                .watcher
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                w.abort();
            }
        }
    }
}

/// See [`Client::reload`].
async fn reload(shared: &Shared, spec: VolumeSpec) -> Result<()> {
    let old = shared.current();
    if spec.id != old.spec.id || spec.generation <= old.spec.generation {
        return Err(VolumeError::Spec {
            volume: old.spec.name.clone(),
            reason: format!(
                "cannot reload generation {} of volume id {} over generation {} of id {}",
                spec.generation, spec.id, old.spec.generation, old.spec.id
            ),
        });
    }
    let Some((secret, opts)) = &shared.connect else {
        return Err(VolumeError::Spec {
            volume: old.spec.name.clone(),
            reason: "this client was built over given links and cannot connect bricks".into(),
        });
    };
    let opts = link_options(&spec, opts.clone())?;
    let same_timeout = ping_timeout(&spec)? == ping_timeout(&old.spec)?;
    let mut links = Vec::with_capacity(spec.bricks.len());
    for b in &spec.bricks {
        let kept = old
            .links
            .iter()
            .find(|l| same_timeout && l.addr() == b.as_str());
        links.push(match kept {
            Some(l) => l.clone(),
            None => {
                BrickLink::connect_via(b, secret.clone(), opts.clone(), link_transport(&spec)).await
            }
        });
    }
    let generation = spec.generation;
    let stack = build_stack(spec, links, shared.owner, Some(&old))?;
    let gone: Vec<_> = old
        .links
        .iter()
        .filter(|l| !stack.links.iter().any(|n| Arc::ptr_eq(n, l)))
        .cloned()
        .collect();
    *shared.stack.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(stack);
    shared.generation.send_replace(generation);
    for l in gone {
        l.close().await;
    }
    Ok(())
}

/// The transport options a volume's links use: its `ping-timeout` is the
/// request timeout.
fn link_options(spec: &VolumeSpec, mut opts: ClientOptions) -> Result<ClientOptions> {
    opts.request_timeout = ping_timeout(spec)?;
    opts.connect_timeout = opts.connect_timeout.min(opts.request_timeout);
    Ok(opts)
}

/// The transport links use: `--transport` on the command line wins over
/// the volume option `transport` (default tcp).
fn link_transport(spec: &VolumeSpec) -> transport::TransportKind {
    match transport::rdma::client_transport() {
        Some(k) => k,
        None => spec
            .option("transport", "tcp")
            .parse::<transport::TransportKind>()
            .unwrap_or_default(),
    }
}

/// Asks one brick that is up for the volume's description every
/// [`GENERATION_POLL`] and reloads the client when its generation is newer.
async fn watch_generation(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(GENERATION_POLL).await;
        let Some(s) = shared.upgrade() else { return };
        let st = s.current();
        let Some(newer) = newest_description(&st).await else {
            continue;
        };
        let old_gen = st.spec.generation;
        drop(st);
        match newer {
            Record::Volume(spec) => {
                let generation = spec.generation;
                let state = spec.state;
                let name = spec.name.clone();
                match reload(&s, spec).await {
                    Ok(()) => tracing::info!(
                        volume = %name,
                        from = old_gen,
                        to = generation,
                        "volume description changed; client reloaded"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "volume description changed; reload failed")
                    }
                }
                if state != VolumeState::Started {
                    tracing::warn!(volume = %name, ?state, "the volume is no longer started");
                }
            }
            _ => {
                tracing::warn!(volume = %s.current().spec.name, "the volume was deleted; the client keeps its last description");
                return;
            }
        }
    }
}

/// The volume's description from the first brick that is up, if newer than
/// the one in `st`.
async fn newest_description(st: &Stack) -> Option<Record> {
    for l in st.links.iter().filter(|l| l.is_up()) {
        let req = Request::GetVolConfig(GetVolConfig { volume: st.spec.id });
        let Ok((Response::VolConfig(c), _)) = l.call(req, Payload::None).await else {
            continue;
        };
        if c.generation <= st.spec.generation {
            return None;
        }
        match volfile::decode(&c.config) {
            Ok(r) => return Some(r),
            Err(e) => {
                tracing::warn!(brick = l.addr(), error = %e, "brick holds an unreadable volume description");
                continue;
            }
        }
    }
    None
}

/// The stripe unit of a stripe volume (option `stripe-unit`, bytes).
pub fn stripe_unit(spec: &VolumeSpec) -> Result<u64> {
    let v = spec.option("stripe-unit", "");
    if v.is_empty() {
        return Ok(DEFAULT_STRIPE_UNIT);
    }
    match crate::manage::parse_size(v) {
        Some(n) if n.is_power_of_two() && (4096..=spec.chunk_size).contains(&n) => Ok(n),
        _ => Err(VolumeError::Spec {
            volume: spec.name.clone(),
            reason: format!("stripe-unit {v:?} is not a power of two from 4K to the chunk size"),
        }),
    }
}

/// Granularity of [`Object::zero_runs`], [`Object::seek_data`] and
/// [`Object::seek_hole`].
pub const MAP_BLOCK: u64 = 4096;

/// How far one [`Object::seek_data`] or [`Object::seek_hole`] reads before
/// it settles for an answer that is valid but not the closest.
pub const SEEK_SCAN: u64 = 64 << 20;

/// Where a scan for a run ended.
enum Seek {
    /// The run starts here.
    Found(u64),
    /// No such run before the end.
    End,
    /// [`SEEK_SCAN`] bytes scanned without one; everything before here is
    /// of the other kind.
    GaveUp(u64),
}

/// One object of a volume.
pub struct Object {
    /// The client's state: each call goes through the newest stack.
    shared: Arc<Shared>,
    fid: Fid,
    /// The size as last seen or grown (`u64::MAX`: not read yet).
    known_size: Arc<AtomicU64>,
    /// The lease this handle holds (taken out when it is released, by
    /// whichever of [`Object::release`], [`Object::close`] or drop comes
    /// first).
    lease: Mutex<Option<HeldLease>>,
    /// Regions settled when the lease was taken over.
    settled: usize,
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Object")
            .field("fid", &self.fid)
            .field("leased", &self.leased())
            .finish()
    }
}

impl Object {
    fn root(&self) -> Arc<dyn Translator> {
        self.shared.current().root.clone()
    }

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
        self.root().read(self.fid, offset, len).await
    }

    /// Writes `data` at `offset`; acknowledged once a quorum of each set
    /// involved has it and the bricks that missed it are marked.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        let known = self.known_size.load(Ordering::Acquire);
        if known != u64::MAX && end <= known {
            return self.root().write(self.fid, offset, data).await;
        }
        // The size record grows alongside the data, not after it: both are
        // done before the write is acknowledged. (A write that fails may
        // leave the size grown over zeros, as a crash before its
        // acknowledgement may leave either half.)
        let root = self.root();
        let (w, g) = tokio::join!(root.write(self.fid, offset, data), self.grow_to(end));
        w?;
        g
    }

    /// Tells the handle the object's size without asking the bricks: for an
    /// object its caller has just made (size 0), so that the first write
    /// does not ask every brick first.
    pub fn assume_size(&self, size: u64) {
        self.known_size.store(size, Ordering::Release);
    }

    async fn grow_to(&self, end: u64) -> Result<()> {
        let mut known = self.known_size.load(Ordering::Acquire);
        if known == u64::MAX {
            known = self.root().size(self.fid).await?;
            self.known_size.fetch_min(known, Ordering::AcqRel);
            known = self.known_size.load(Ordering::Acquire);
        }
        if end > known {
            self.root().grow(self.fid, end).await?;
            self.known_size.fetch_max(end, Ordering::AcqRel);
        }
        Ok(())
    }

    /// What `[offset, offset + len)` holds, as runs of `(length, zero)`:
    /// blocks of [`MAP_BLOCK`] bytes (counted from `offset`) that read as
    /// zeros or not. The volume keeps no allocation map of its own, so
    /// written zeros count as zeros, and a zero range shorter than a block
    /// is data.
    pub async fn zero_runs(&self, offset: u64, len: u64) -> Result<Vec<(u64, bool)>> {
        let data = self.read(offset, len).await?;
        let mut runs: Vec<(u64, bool)> = Vec::new();
        for block in data.chunks(MAP_BLOCK as usize) {
            let zero = block.iter().all(|&b| b == 0);
            match runs.last_mut() {
                Some(last) if last.1 == zero => last.0 += block.len() as u64,
                _ => runs.push((block.len() as u64, zero)),
            }
        }
        Ok(runs)
    }

    /// `SEEK_DATA` below `end` (the object's size): the first
    /// [`MAP_BLOCK`]-aligned block at or after `offset` that does not read
    /// as zeros (`offset` itself if its block is data), or `None` if there
    /// is none before `end`. After [`SEEK_SCAN`] bytes of zeros the scan
    /// stops and answers where it stopped (zeros taken for data, as POSIX
    /// allows).
    pub async fn seek_data(&self, offset: u64, end: u64) -> Result<Option<u64>> {
        Ok(match self.seek_run(offset, end, false).await? {
            Seek::Found(p) | Seek::GaveUp(p) => Some(p),
            Seek::End => None,
        })
    }

    /// `SEEK_HOLE` below `end` (the object's size): the first
    /// [`MAP_BLOCK`]-aligned block at or after `offset` that reads as zeros
    /// (`offset` itself if its block does), else `end` (the hole at the
    /// end), also when [`SEEK_SCAN`] bytes of data were scanned without
    /// finding one.
    pub async fn seek_hole(&self, offset: u64, end: u64) -> Result<u64> {
        Ok(match self.seek_run(offset, end, true).await? {
            Seek::Found(p) => p,
            Seek::End | Seek::GaveUp(_) => end,
        })
    }

    async fn seek_run(&self, offset: u64, end: u64, zero: bool) -> Result<Seek> {
        let start = offset - offset % MAP_BLOCK;
        let mut pos = start;
        while pos < end {
            if pos - start >= SEEK_SCAN {
                return Ok(Seek::GaveUp(pos.max(offset)));
            }
            let n = (end - pos).min(MAX_PIECE);
            let mut at = pos;
            for (len, z) in self.zero_runs(pos, n).await? {
                if z == zero {
                    return Ok(Seek::Found(at.max(offset)));
                }
                at += len;
            }
            pos += n;
        }
        Ok(Seek::End)
    }

    /// Deallocates `[offset, offset + len)`.
    pub async fn punch(&self, offset: u64, len: u64) -> Result<()> {
        self.root().punch(self.fid, offset, len).await
    }

    /// Zeroes `[offset, offset + len)` (and grows the size to its end).
    pub async fn zero(&self, offset: u64, len: u64) -> Result<()> {
        self.root().zero(self.fid, offset, len).await?;
        self.grow_to(offset + len).await
    }

    /// Makes everything acknowledged so far durable on the bricks.
    pub async fn flush(&self) -> Result<()> {
        self.root().flush(self.fid).await
    }

    /// The object's size: the end of the furthest write or zero.
    pub async fn size(&self) -> Result<u64> {
        let s = self.root().size(self.fid).await?;
        self.known_size.store(s, Ordering::Release);
        Ok(s)
    }

    fn take_lease(&self) -> Option<HeldLease> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Does this handle still hold its lease?
    pub fn leased(&self) -> bool {
        self.lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Releases the lease (if still held) through a shared handle: a
    /// writer shared by several users (a file open more than once) gives
    /// it up when the last of them is done, even if a clone of the handle
    /// is still being dropped elsewhere. Later changes through this handle
    /// are refused (fenced).
    pub async fn release(&self) -> Result<()> {
        if let Some(l) = self.take_lease() {
            l.renew.abort();
            self.root().lease(self.fid, LeaseAction::Release).await?;
        }
        Ok(())
    }

    /// Releases the lease (if held) and closes the handle.
    pub async fn close(self) -> Result<()> {
        self.release().await
    }

    /// Stops renewing the lease without releasing it, as a writer that
    /// crashed would: the lease expires on the bricks and the next holder
    /// settles what this one left active. For tests and fail-over drills.
    pub fn abandon(self) {
        if let Some(l) = self.take_lease() {
            l.renew.abort();
        }
    }
}

/// A lease an [`Object`] holds: its renewal task, and the runtime it was
/// taken on (a handle dropped on a thread outside any runtime still
/// releases it there).
struct HeldLease {
    renew: AbortHandle,
    rt: tokio::runtime::Handle,
}

impl Drop for Object {
    fn drop(&mut self) {
        let held = self
            .lease
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(l) = held {
            l.renew.abort();
            // Released in the background on the runtime the lease was
            // taken on: the last clone of a shared writer may be dropped
            // on any thread (a FUSE worker, after its reply), and a lease
            // left to expire makes the next open settle every region the
            // file has (as after a crash).
            let root = self.root();
            let fid = self.fid;
            l.rt.spawn(async move {
                let _ = root.lease(fid, LeaseAction::Release).await;
            });
        }
    }
}
