//! A crash-simulating backend for RVM tests: two in-memory files that
//! remember which bytes are durable.
//!
//! Every write lands in the file's current contents (what reads see) and in a
//! list of unsynced writes; `sync` makes the current contents durable. The
//! simulated machine can be made to fail at the n-th I/O (every write and sync
//! from then on returns `EIO`), and [`SimDisk::crash`] then builds what a power
//! cut would leave: the durable bytes, with each 512-byte sector of each
//! unsynced write independently either written or not (in issue order, so
//! later writes may land while earlier ones do not). Reopening RVM on the same
//! `SimDisk` recovers from that state.
//!
//! This is test machinery, kept in the library so integration tests and other
//! crates' tests can use it. It never touches real files.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::file::{RvmFile, RvmFiles};
use super::format::SECTOR;

/// Which of the two RVM files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFileKind {
    Segment,
    Log,
}

/// Called before each write with the file, offset and length; runs outside
/// the simulator's lock, so it may block (a test uses it to hold a log write
/// until other threads have queued their commits).
pub type WriteHook = Arc<dyn Fn(SimFileKind, u64, usize) + Send + Sync>;

#[derive(Default)]
struct SimFile {
    durable: Vec<u8>,
    current: Vec<u8>,
    unsynced: Vec<(u64, Vec<u8>)>,
    writes: u64,
    syncs: u64,
}

#[derive(Default)]
struct SimState {
    files: [SimFile; 2],
    /// I/Os (writes and syncs) done so far.
    ios: u64,
    /// Fail every I/O once `ios` reaches this.
    fail_at: Option<u64>,
    failed: bool,
}

/// Two simulated files with a power switch. Cloning shares the disk.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
    hook: Arc<Mutex<Option<WriteHook>>>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("SimDisk")
            .field("ios", &st.ios)
            .field("fail_at", &st.fail_at)
            .finish()
    }
}

fn idx(kind: SimFileKind) -> usize {
    match kind {
        SimFileKind::Segment => 0,
        SimFileKind::Log => 1,
    }
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// File handles for [`super::Rvm::create_with`] / [`super::Rvm::open_with`].
    pub fn files(&self) -> RvmFiles {
        RvmFiles {
            segment: Box::new(SimHandle {
                disk: self.clone(),
                kind: SimFileKind::Segment,
                path: PathBuf::from("sim:rvm.seg"),
            }),
            log: Box::new(SimHandle {
                disk: self.clone(),
                kind: SimFileKind::Log,
                path: PathBuf::from("sim:rvm.log"),
            }),
        }
    }

    /// Makes the I/O numbered `n` from now (0 = the next one) and every later
    /// one fail with `EIO`, as if the machine lost power just before it.
    pub fn fail_after(&self, n: u64) {
        let mut st = self.lock();
        st.fail_at = Some(st.ios + n);
    }

    /// Number of writes and syncs issued so far (failed ones included).
    pub fn io_count(&self) -> u64 {
        self.lock().ios
    }

    /// True once an injected failure has happened.
    pub fn has_failed(&self) -> bool {
        self.lock().failed
    }

    /// Number of successful syncs of one file.
    pub fn syncs(&self, kind: SimFileKind) -> u64 {
        self.lock().files[idx(kind)].syncs
    }

    /// Number of successful writes to one file.
    pub fn writes(&self, kind: SimFileKind) -> u64 {
        self.lock().files[idx(kind)].writes
    }

    /// Installs (or with `None` removes) the write hook.
    pub fn set_write_hook(&self, hook: Option<WriteHook>) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// Copies of the durable contents of one file.
    pub fn durable(&self, kind: SimFileKind) -> Vec<u8> {
        self.lock().files[idx(kind)].durable.clone()
    }

    /// Overwrites bytes of one file, durably (for corrupting headers in tests).
    pub fn poke(&self, kind: SimFileKind, offset: u64, bytes: &[u8]) {
        let mut st = self.lock();
        let f = &mut st.files[idx(kind)];
        let at = offset as usize;
        for v in [&mut f.durable, &mut f.current] {
            if v.len() < at + bytes.len() {
                v.resize(at + bytes.len(), 0);
            }
            v[at..at + bytes.len()].copy_from_slice(bytes);
        }
    }

    /// Power cut: every file becomes its durable bytes plus, for each
    /// unsynced write in issue order, each 512-byte sector of it applied when
    /// `keep()` says so. Injected failures are cleared, so the disk can be
    /// reopened.
    pub fn crash(&self, keep: &mut dyn FnMut() -> bool) {
        let mut st = self.lock();
        for f in st.files.iter_mut() {
            let mut img = std::mem::take(&mut f.durable);
            for (off, data) in std::mem::take(&mut f.unsynced) {
                let end = off + data.len() as u64;
                let mut s = off;
                while s < end {
                    let e = ((s / SECTOR) + 1) * SECTOR;
                    let e = e.min(end);
                    if keep() {
                        let a = (s - off) as usize;
                        let b = (e - off) as usize;
                        if img.len() < e as usize {
                            img.resize(e as usize, 0);
                        }
                        img[s as usize..e as usize].copy_from_slice(&data[a..b]);
                    }
                    s = e;
                }
            }
            f.current = img.clone();
            f.durable = img;
        }
        st.fail_at = None;
        st.failed = false;
    }

    fn io(&self, kind: SimFileKind, op: impl FnOnce(&mut SimFile)) -> io::Result<()> {
        let mut st = self.lock();
        let n = st.ios;
        st.ios += 1;
        if st.failed || st.fail_at.is_some_and(|f| n >= f) {
            st.failed = true;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        op(&mut st.files[idx(kind)]);
        Ok(())
    }
}

struct SimHandle {
    disk: SimDisk,
    kind: SimFileKind,
    path: PathBuf,
}

impl RvmFile for SimHandle {
    fn path(&self) -> &Path {
        &self.path
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let st = self.disk.lock();
        let f = &st.files[idx(self.kind)];
        let at = offset as usize;
        if at
            .checked_add(buf.len())
            .is_none_or(|e| e > f.current.len())
        {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&f.current[at..at + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let hook = self
            .disk
            .hook
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(h) = hook {
            h(self.kind, offset, buf.len());
        }
        self.disk.io(self.kind, |f| {
            let at = offset as usize;
            if f.current.len() < at + buf.len() {
                f.current.resize(at + buf.len(), 0);
            }
            f.current[at..at + buf.len()].copy_from_slice(buf);
            f.unsynced.push((offset, buf.to_vec()));
            f.writes += 1;
        })
    }

    fn sync(&self) -> io::Result<()> {
        self.disk.io(self.kind, |f| {
            for (off, data) in std::mem::take(&mut f.unsynced) {
                let at = off as usize;
                if f.durable.len() < at + data.len() {
                    f.durable.resize(at + data.len(), 0);
                }
                f.durable[at..at + data.len()].copy_from_slice(&data);
            }
            f.syncs += 1;
        })
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.disk.lock().files[idx(self.kind)].current.len() as u64)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut st = self.disk.lock();
        let f = &mut st.files[idx(self.kind)];
        if (f.current.len() as u64) < len {
            f.current.resize(len as usize, 0);
            f.durable.resize(len as usize, 0);
        }
        Ok(())
    }
}
