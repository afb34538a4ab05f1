//! Mounting a volume, and the callback task that keeps this client's
//! caches (and the kernel's) in step with changes made by other clients.
//!
//! Callbacks: the task long-polls the namespace store's change feed. A key
//! changed by a commit that is not this client's own breaks the cached
//! copies: an inode key drops the cached inode and tells the kernel to
//! drop the inode's attributes and pages (`inval_inode`); an entry key
//! drops the cached name and the kernel's dentry (`inval_entry`). A gap in
//! the feed (the brick no longer holds changes that old) drops everything.
//!
//! With a cache directory the cached records outlive the mount
//! ([`crate::snapshot`]): written at unmount (and every
//! [`SNAPSHOT_EVERY`] while mounted) at the feed's head once the callback
//! path has passed it, taken and checked against the feed at the next
//! mount before the kernel gets the mount. One mount at a time uses a
//! cache directory (`DIR/lock`): a mount made right after an unmount
//! waits for the previous process to write its snapshot and end.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuser::{Config, INodeNo, MountOption, Session, SessionACL};
use tokio::task::JoinHandle;
use volume::records::{Change, FeedPos, RecordError};

use crate::fs::{ino_of, FsOptions, Shared, StrettoFs};
use crate::inode::{parse_key, KeyRef};
use crate::namespace::Namespace;
use crate::snapshot;

/// Longest wait for our own commits in flight before a change the feed
/// shows is taken for another client's (then it only costs a re-read).
const OWN_WAIT: Duration = Duration::from_secs(2);
/// How long one change-feed poll waits on the brick.
const FEED_WAIT_MS: u32 = 5_000;
/// How often a live mount writes its attribute snapshot (what a crash
/// leaves for the next mount).
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(300);
/// How long the snapshot at unmount may take (bricks down: none).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(15);
/// The snapshot may take this share of `--cache-size` (held from the data
/// chunks while it exists).
const SNAPSHOT_SHARE: u64 = 8;
/// How long a mount waits for another process to let go of its cache
/// directory.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The feed position the callback task has brought the caches to (None:
/// not known, as after a gap).
type FeedAt = Arc<Mutex<Option<u64>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where and how the attribute snapshot is written.
struct SnapConf {
    dir: PathBuf,
    name: String,
    cap: u64,
    /// Serialises writers; set once the unmount's write began (the
    /// periodic one then stands down).
    write: Mutex<()>,
    closed: AtomicBool,
}

/// What to mount and how.
pub struct MountConfig {
    pub mountpoint: PathBuf,
    pub options: FsOptions,
    /// FUSE session threads.
    pub threads: usize,
    /// Cache directory and its size limit for file data (none: memory only).
    pub cache: Option<(PathBuf, u64)>,
}

/// A live mount. Dropping it unmounts.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    callbacks: Option<JoinHandle<()>>,
    mountpoint: PathBuf,
    rt: tokio::runtime::Handle,
    shared: Arc<Shared>,
    feed_at: FeedAt,
    snap: Option<Arc<SnapConf>>,
    snapshot_note: Option<String>,
    /// Held (flock) while this process uses the cache directory.
    _dir_lock: Option<std::fs::File>,
}

impl Mounted {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// What became of the attribute snapshot at mount, in one line (also
    /// logged at mount, before a background process has its log file).
    pub fn snapshot_note(&self) -> Option<&str> {
        self.snapshot_note.as_deref()
    }

    /// Waits until the file system is unmounted (by `stretto umount` or
    /// `fusermount3 -u`).
    pub fn wait(mut self) -> std::io::Result<()> {
        let r = match self.session.take() {
            Some(s) => s.join(),
            None => Ok(()),
        };
        self.close();
        r
    }

    /// Unmounts and waits for the session to end.
    pub fn unmount(mut self) -> std::io::Result<()> {
        let r = match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        };
        self.close();
        r
    }

    /// Stops the callback task and, with a cache directory, writes the
    /// attribute snapshot (the session has ended: nothing else changes
    /// the caches now).
    fn close(&mut self) {
        let Some(task) = self.callbacks.take() else {
            return;
        };
        task.abort();
        let _ = self.rt.block_on(task);
        let Some(conf) = &self.snap else {
            return;
        };
        let since = *lock(&self.feed_at);
        let s = &self.shared;
        let r = self.rt.block_on(async {
            tokio::time::timeout(SNAPSHOT_WAIT, save_at_unmount(s, since, conf)).await
        });
        match r {
            Ok(Ok((inodes, names, bytes))) => tracing::info!(
                "attribute snapshot written: {inodes} inode records, {names} names, {bytes} bytes"
            ),
            Ok(Err(e)) => tracing::info!("no attribute snapshot at unmount: {e}"),
            Err(_) => {
                tracing::info!(
                    "no attribute snapshot at unmount: the bricks did not answer in time"
                )
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
        self.close();
    }
}

/// Takes `DIR/lock` (flock), waiting up to [`LOCK_WAIT`] for a process
/// that still has it (a mount ending: it writes its snapshot first).
fn lock_cache_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor we own and keep open.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(e);
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::other(format!(
                "the cache directory {} is in use by another mount",
                dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Drops what one feed change makes stale (not our own commits: the
/// caches hold their results); the key, for the kernel, if it was dropped.
fn forget_change(s: &Shared, c: &Change) -> Option<KeyRef> {
    if s.take_own_peek(c.seq) {
        return None;
    }
    let k = parse_key(&c.key)?;
    match &k {
        KeyRef::Inode(fid) => s.forget_inode(*fid),
        KeyRef::Entry(dir, name) => s.forget_entry(*dir, name),
    }
    Some(k)
}

/// Writes the snapshot of what `s` caches, valid at `pos` (the caller
/// has brought the caches past it): inode records, then names, within the
/// cap; returns the counts and bytes written.
fn write_snapshot(
    s: &Shared,
    pos: FeedPos,
    conf: &SnapConf,
    closing: bool,
) -> std::io::Result<(u32, u32, usize)> {
    let _w = lock(&conf.write);
    if conf.closed.load(Ordering::Acquire) && !closing {
        return Ok((0, 0, 0));
    }
    conf.closed.fetch_or(closing, Ordering::AcqRel);
    let cap = usize::try_from(conf.cap).unwrap_or(usize::MAX);
    let mut enc = snapshot::Encoder::new(s.ns.volume(), &conf.name, pos, cap);
    s.snapshot_into(&mut enc);
    let (inodes, names) = enc.counts();
    let bytes = enc.finish();
    if let Some(d) = s.disk() {
        d.reserve(bytes.len() as u64);
    }
    snapshot::store(&conf.dir, &bytes)?;
    Ok((inodes, names, bytes.len()))
}

/// The snapshot at unmount: the store's head now, the feed read from
/// where the callback task stopped up to it, then the caches written.
async fn save_at_unmount(
    s: &Shared,
    since: Option<u64>,
    conf: &SnapConf,
) -> Result<(u32, u32, usize), String> {
    let since = since.ok_or("the change feed position is not known")?;
    let store = s.ns.store();
    let head = store
        .feed_head()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the store cannot name its newest commit")?;
    let from = FeedPos { seq: since, tag: 0 };
    snapshot::read_feed_to(&*store, from, false, head.seq, |c| {
        forget_change(s, c);
    })
    .await
    .map_err(|e| e.to_string())?;
    write_snapshot(s, head, conf, true).map_err(|e| format!("cannot write it: {e}"))
}

/// Takes the snapshot left under `dir` and keeps what the feed says is
/// unchanged: the feed position the caches are valid at if it was used,
/// and what became of it in one line (logged at info too).
fn load_snapshot(
    rt: &tokio::runtime::Handle,
    s: &Shared,
    dir: &Path,
    name: &str,
) -> (Option<u64>, Option<String>) {
    let (start, note) = match take_snapshot(rt, s, dir, name) {
        Ok(None) => return (None, None),
        Ok(Some((start, note))) => (Some(start), note),
        Err(why) => (None, format!("attribute snapshot discarded: {why}")),
    };
    tracing::info!("{note}");
    (start, Some(note))
}

fn take_snapshot(
    rt: &tokio::runtime::Handle,
    s: &Shared,
    dir: &Path,
    name: &str,
) -> Result<Option<(u64, String)>, String> {
    let bytes = match snapshot::take(dir) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let mut snap = snapshot::decode(&bytes).map_err(|e| e.to_string())?;
    if snap.volume != s.ns.volume() || snap.name != name {
        return Err(format!(
            "it is of volume {} (id {}), not {name} (id {})",
            snap.name,
            snap.volume,
            s.ns.volume()
        ));
    }
    let store = s.ns.store();
    let checked = rt
        .block_on(snapshot::check(&*store, &mut snap))
        .map_err(|e| e.to_string())?;
    if let Some(d) = s.disk() {
        for f in &checked.changed_inodes {
            d.remove(*f);
        }
    }
    let note = format!(
        "attribute snapshot trusted: {} inode records, {} names ({} changed keys dropped; feed {} to {})",
        snap.inodes.len(),
        snap.entries.len(),
        checked.dropped,
        snap.pos.seq,
        checked.reached
    );
    s.trust(snap);
    Ok(Some((checked.reached, note)))
}

/// Mounts `client`'s volume at `cfg.mountpoint`. Returns once the kernel
/// has the mount (a `stat` of the mount point reaches the file system).
pub fn mount(
    rt: tokio::runtime::Handle,
    client: Arc<volume::Client>,
    cfg: MountConfig,
) -> std::io::Result<Mounted> {
    let spec = client.spec();
    let dir_lock = match &cfg.cache {
        Some((dir, _)) => Some(lock_cache_dir(dir)?),
        None => None,
    };
    let c2 = client.clone();
    let source: crate::namespace::StoreSource = Arc::new(move || c2.records());
    let ns = match &cfg.cache {
        Some((dir, _)) => {
            let cml = crate::cml::Cml::open(&dir.join("cml")).map_err(std::io::Error::other)?;
            Namespace::with_log(spec.id, source, cml)
        }
        None => Namespace::new(spec.id, source),
    };
    let (done, refused) = rt
        .block_on(ns.replay())
        .map_err(|e| std::io::Error::other(format!("cannot replay the client log: {e}")))?;
    if done + refused > 0 {
        tracing::info!(applied = done, refused, "client log replayed");
    }
    // SAFETY: geteuid/getegid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    rt.block_on(ns.ensure_root(0o755, uid, gid))
        .map_err(|e| std::io::Error::other(format!("cannot make the volume's root: {e}")))?;
    let mut shared = Shared::new(rt.clone(), client, ns, cfg.options.clone());
    if let Some((dir, limit)) = &cfg.cache {
        shared = shared.with_disk_cache(crate::cache::DiskCache::open(dir, spec.id, *limit)?);
    }
    let shared = Arc::new(shared);
    let snap = cfg.cache.as_ref().map(|(dir, limit)| {
        Arc::new(SnapConf {
            dir: dir.clone(),
            name: spec.name.clone(),
            cap: limit / SNAPSHOT_SHARE,
            write: Mutex::new(()),
            closed: AtomicBool::new(false),
        })
    });
    let (start, snapshot_note) = match &snap {
        Some(c) => load_snapshot(&rt, &shared, &c.dir, &c.name),
        None => (None, None),
    };
    let feed_at: FeedAt = Arc::new(Mutex::new(start));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("stretto:{}", spec.name)),
        MountOption::Subtype("stretto".into()),
        MountOption::DefaultPermissions,
        if cfg.options.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    // SAFETY: as above.
    if unsafe { libc::geteuid() } == 0 {
        config.mount_options.push(MountOption::Dev);
        config.mount_options.push(MountOption::Suid);
    }
    config.acl = SessionACL::All;
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = true;
    let session = Session::new(StrettoFs::new(shared.clone()), &cfg.mountpoint, &config)?;
    let notifier = session.notifier();
    // The kernel may block a notification until a request on the same
    // directory finishes, and that request may need the runtime: the
    // notifications are sent from a thread of their own, never from a
    // runtime worker.
    let (tx, rx) = std::sync::mpsc::channel::<KeyRef>();
    std::thread::Builder::new()
        .name("stretto-inval".into())
        .spawn(move || {
            for k in rx {
                // ENOENT (not cached) and errors after unmount are fine.
                let _ = match k {
                    KeyRef::Inode(fid) => notifier.inval_inode(INodeNo(ino_of(fid)), 0, 0),
                    KeyRef::Entry(dir, name) => {
                        notifier.inval_entry(INodeNo(ino_of(dir)), OsStr::from_bytes(&name))
                    }
                };
            }
        })?;
    let callbacks = rt.spawn(follow_changes(
        shared.clone(),
        tx,
        feed_at.clone(),
        snap.clone(),
    ));
    let session = session.spawn()?;
    Ok(Mounted {
        session: Some(session),
        callbacks: Some(callbacks),
        mountpoint: cfg.mountpoint,
        rt,
        shared,
        feed_at,
        snap,
        snapshot_note,
        _dir_lock: dir_lock,
    })
}

/// The callback task (see the module doc). Starts at `feed_at` (where a
/// snapshot left the caches) or, if unknown, at the newest commit with
/// empty caches; with `snap`, writes the snapshot now and then.
async fn follow_changes(
    s: Arc<Shared>,
    notify: std::sync::mpsc::Sender<KeyRef>,
    feed_at: FeedAt,
    snap: Option<Arc<SnapConf>>,
) {
    let mut since = *lock(&feed_at);
    let mut next_save = Instant::now() + SNAPSHOT_EVERY;
    // A head the caches must pass before a snapshot at it is written.
    let mut pending: Option<FeedPos> = None;
    loop {
        let store = s.ns.store();
        let Some(from) = since else {
            match store.changes(u64::MAX >> 1, 1, 0).await {
                Ok((_, newest)) => {
                    // Records read before this point may predate changes
                    // the feed will not report from here: start empty.
                    s.forget_all();
                    since = Some(newest);
                    *lock(&feed_at) = since;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "change feed not reachable yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            continue;
        };
        match store.changes(from, 512, FEED_WAIT_MS).await {
            Ok((changes, newest)) => {
                if changes.iter().any(|c| !s.take_own_peek(c.seq)) {
                    // Perhaps ours, with the reply still on its way.
                    s.own_settled(OWN_WAIT).await;
                }
                let mut last = from;
                for c in &changes {
                    last = last.max(c.seq);
                    if let Some(k) = forget_change(&s, c) {
                        if notify.send(k).is_err() {
                            return;
                        }
                    }
                }
                // An empty answer: no keyed commit up to its newest.
                if changes.is_empty() {
                    last = last.max(newest);
                }
                s.forget_own_upto(last);
                since = Some(last);
                *lock(&feed_at) = since;
                let Some(conf) = &snap else { continue };
                if let Some(p) = pending.filter(|p| last >= p.seq) {
                    pending = None;
                    next_save = Instant::now() + SNAPSHOT_EVERY;
                    let (s2, conf) = (s.clone(), conf.clone());
                    let r =
                        tokio::task::spawn_blocking(move || write_snapshot(&s2, p, &conf, false))
                            .await;
                    match r {
                        Ok(Ok((i, n, b))) => {
                            tracing::debug!(
                                inodes = i,
                                names = n,
                                bytes = b,
                                "attribute snapshot written"
                            )
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "cannot write the attribute snapshot")
                        }
                        Err(_) => {}
                    }
                } else if pending.is_none() && Instant::now() >= next_save {
                    match store.feed_head().await {
                        Ok(Some(h)) => pending = Some(h),
                        _ => next_save = Instant::now() + SNAPSHOT_EVERY,
                    }
                }
            }
            Err(RecordError::FeedGap { .. }) => {
                tracing::info!("change feed has a gap; dropping every cached record");
                s.forget_all();
                since = None;
                *lock(&feed_at) = None;
                pending = None;
            }
            Err(e) => {
                tracing::debug!(error = %e, "change feed poll failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
