//! Mounting a volume, and the callback task that keeps this client's
//! caches (and the kernel's) in step with changes made by other clients.
//!
//! Callbacks: the task long-polls the namespace store's change feed. A key
//! changed by a commit that is not this client's own breaks the cached
//! copies: an inode key drops the cached inode and tells the kernel to
//! drop the inode's attributes and pages (`inval_inode`); an entry key
//! drops the cached name and the kernel's dentry (`inval_entry`). A gap in
//! the feed (the brick no longer holds changes that old) drops everything.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, INodeNo, MountOption, Session, SessionACL};
use tokio::task::AbortHandle;
use volume::records::RecordError;

use crate::fs::{ino_of, FsOptions, Shared, StrettoFs};
use crate::inode::{parse_key, KeyRef};
use crate::namespace::Namespace;

/// Longest wait for our own commits in flight before a change the feed
/// shows is taken for another client's (then it only costs a re-read).
const OWN_WAIT: Duration = Duration::from_secs(2);
/// How long one change-feed poll waits on the brick.
const FEED_WAIT_MS: u32 = 5_000;

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
    callbacks: AbortHandle,
    mountpoint: PathBuf,
}

impl Mounted {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Waits until the file system is unmounted (by `stretto umount` or
    /// `fusermount3 -u`).
    pub fn wait(mut self) -> std::io::Result<()> {
        let r = match self.session.take() {
            Some(s) => s.join(),
            None => Ok(()),
        };
        self.callbacks.abort();
        r
    }

    /// Unmounts and waits for the session to end.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.callbacks.abort();
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.callbacks.abort();
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

/// Mounts `client`'s volume at `cfg.mountpoint`. Returns once the kernel
/// has the mount (a `stat` of the mount point reaches the file system).
pub fn mount(
    rt: tokio::runtime::Handle,
    client: Arc<volume::Client>,
    cfg: MountConfig,
) -> std::io::Result<Mounted> {
    let spec = client.spec();
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
    let callbacks = rt.spawn(follow_changes(shared, tx)).abort_handle();
    let session = session.spawn()?;
    Ok(Mounted {
        session: Some(session),
        callbacks,
        mountpoint: cfg.mountpoint,
    })
}

/// The callback task (see the module doc).
async fn follow_changes(s: Arc<Shared>, notify: std::sync::mpsc::Sender<KeyRef>) {
    let mut since = None;
    loop {
        let store = s.ns.store();
        let Some(from) = since else {
            // Start at the newest commit: nothing is cached yet.
            match store.changes(u64::MAX >> 1, 1, 0).await {
                Ok((_, newest)) => since = Some(newest),
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
                for c in changes {
                    last = last.max(c.seq);
                    if s.take_own_peek(c.seq) {
                        continue;
                    }
                    let Some(k) = parse_key(&c.key) else { continue };
                    match &k {
                        KeyRef::Inode(fid) => s.forget_inode(*fid),
                        KeyRef::Entry(dir, name) => s.forget_entry(*dir, name),
                    }
                    if notify.send(k).is_err() {
                        return;
                    }
                }
                s.forget_own_upto(last);
                let _ = newest;
                since = Some(last);
            }
            Err(RecordError::FeedGap { .. }) => {
                tracing::info!("change feed has a gap; dropping every cached record");
                s.forget_all();
                since = None;
            }
            Err(e) => {
                tracing::debug!(error = %e, "change feed poll failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
