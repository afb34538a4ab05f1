//! Test harness: bricks in-process on loopback (fast), bricks as child
//! processes (for SIGKILL), and channels a test can cut.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use transport::{
    BoxFuture, Channel, ClientOptions, ConnState, Payload, Request, Response, Secret,
    ServerOptions, TcpClient, TransportError,
};
use volume::link::BrickLink;
use volume::{VolumeKind, VolumeSpec, VolumeState};

/// A pool: one secret, brick directories under one temp dir.
pub struct Pool {
    pub root: tempfile::TempDir,
    pub secret_file: PathBuf,
    pub secret: Secret,
}

impl Pool {
    pub fn new() -> Pool {
        let root = tempfile::tempdir().expect("tempdir");
        let secret_file = root.path().join("pool.secret");
        let secret = Secret::save_new(&secret_file).expect("secret");
        Pool {
            root,
            secret_file,
            secret,
        }
    }

    /// `brick init` for brick `i`.
    pub fn init_brick(&self, i: usize) -> PathBuf {
        let dir = self.root.path().join(format!("brick{i}"));
        brick::init(&dir, &self.secret_file).expect("brick init");
        dir
    }
}

/// A brick served in this process.
pub struct InBrick {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    brick: Arc<brick::Brick>,
}

impl InBrick {
    pub async fn start(dir: &Path, secret: &Secret, listen: &str) -> InBrick {
        let brick = Arc::new(brick::Brick::open(dir).expect("open brick"));
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, rx) = watch::channel(false);
        let opts = ServerOptions {
            pool: Some(brick.store().pool().clone()),
            ..ServerOptions::default()
        };
        let handler: Arc<dyn transport::Handler> = brick.clone();
        let secret = secret.clone();
        let task = tokio::spawn(async move {
            let _ = transport::serve_with(listener, secret, handler, rx, opts).await;
        });
        InBrick {
            addr,
            dir: dir.to_path_buf(),
            stop,
            task,
            brick,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let _ = self.brick.shutdown();
    }
}

/// A channel a test can cut and restore (a network partition: calls fail
/// at once with `NotConnected`, the state reads `Down`).
pub struct Cut {
    inner: TcpClient,
    down: AtomicBool,
    state: watch::Sender<ConnState>,
}

impl Cut {
    pub async fn connect(addr: &str, secret: &Secret) -> Arc<Cut> {
        let inner = TcpClient::connect(addr, secret.clone(), client_opts())
            .await
            .expect("connect");
        let (state, _) = watch::channel(ConnState::Up);
        Arc::new(Cut {
            inner,
            down: AtomicBool::new(false),
            state,
        })
    }

    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.state.send_replace(ConnState::Down);
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
        self.state.send_replace(ConnState::Up);
    }
}

impl Channel for Cut {
    fn call(
        &self,
        req: Request,
        payload: Payload,
    ) -> BoxFuture<'_, Result<(Response, Payload), TransportError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(TransportError::NotConnected {
                    opcode: req.opcode(),
                    peer: self.inner.peer().to_owned(),
                    state: ConnState::Down,
                });
            }
            self.inner.call(req, payload).await
        })
    }

    fn state(&self) -> ConnState {
        if self.down.load(Ordering::SeqCst) {
            ConnState::Down
        } else {
            self.inner.state()
        }
    }

    fn watch_state(&self) -> watch::Receiver<ConnState> {
        self.state.subscribe()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.close())
    }
}

pub fn client_opts() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        ..ClientOptions::default()
    }
}

pub fn spec(id: u32, kind: VolumeKind, bricks: Vec<String>, chunk_size: u64) -> VolumeSpec {
    VolumeSpec {
        name: format!("vol{id}"),
        id,
        kind,
        bricks,
        chunk_size,
        options: BTreeMap::new(),
        state: VolumeState::Started,
        generation: 1,
    }
}

/// Links over cuttable channels for each brick.
pub async fn cut_links(addrs: &[String], secret: &Secret) -> (Vec<Arc<BrickLink>>, Vec<Arc<Cut>>) {
    let mut links = Vec::new();
    let mut cuts = Vec::new();
    for a in addrs {
        let c = Cut::connect(a, secret).await;
        links.push(BrickLink::with_channel(a, c.clone() as Arc<dyn Channel>));
        cuts.push(c);
    }
    (links, cuts)
}

/// Reads a whole chunk straight from one brick (zeros past its end; empty
/// if the brick has no such chunk), and its stat size.
pub async fn brick_chunk(
    addr: &str,
    secret: &Secret,
    object: transport::ObjectId,
    len: u64,
) -> (Vec<u8>, Option<u64>) {
    let c = TcpClient::connect(addr, secret.clone(), client_opts())
        .await
        .expect("connect");
    let (r, _) = c
        .call(
            Request::Stat(transport::wire::ObjectReq { object }),
            Payload::None,
        )
        .await
        .expect("stat");
    let size = match r {
        Response::Stat(s) => Some(s.size),
        _ => None,
    };
    let mut out = vec![0u8; len as usize];
    if size.is_some() {
        let (r, p) = c
            .call(
                Request::Read(transport::wire::ReadReq {
                    object,
                    offset: 0,
                    len: len as u32,
                    data: transport::wire::DataRef::None,
                }),
                Payload::In(iobuf::IoBuf::alloc(len as usize)),
            )
            .await
            .expect("read");
        assert!(matches!(r, Response::Read(_)), "{r:?}");
        let b = p.into_buf().expect("buf");
        out[..b.len()].copy_from_slice(b.as_slice());
    }
    c.close().await;
    (out, size)
}

/// A brick served by a child process (this test binary re-run in the
/// `child_brick` role), so that a test can SIGKILL it.
pub struct ChildBrick {
    pub child: Child,
    pub addr: SocketAddr,
}

/// Env var that turns a test binary into a brick server.
pub const CHILD_BRICK: &str = "STRETTO_TEST_CHILD_BRICK";

impl ChildBrick {
    /// `test_name` is the test in this binary that calls
    /// [`child_brick_main`].
    // The child is reaped by `kill9` (also on drop).
    #[allow(clippy::zombie_processes)]
    pub fn start(test_name: &str, dir: &Path, listen: &str) -> ChildBrick {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_BRICK, format!("{}|{}", dir.display(), listen))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child brick");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).expect("read child");
            assert!(n > 0, "child brick exited before it was ready");
            // The test harness may put its own words before ours.
            if let Some((_, a)) = line.trim().split_once("listening on ") {
                let addr = a.parse().expect("addr");
                // Keep draining its stdout so it never blocks.
                std::thread::spawn(move || {
                    let mut sink = String::new();
                    while reader.read_line(&mut sink).unwrap_or(0) > 0 {
                        sink.clear();
                    }
                });
                return ChildBrick { child, addr };
            }
        }
    }

    pub fn kill9(&mut self) {
        // SAFETY: kill(2) on the PID of a child we own and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildBrick {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The body of the child-brick role: serves `dir` on the address given in
/// the environment until killed. Returns at once when not in that role.
pub fn child_brick_main() {
    let Ok(v) = std::env::var(CHILD_BRICK) else {
        return;
    };
    let (dir, listen) = v.split_once('|').expect("dir|addr");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = PathBuf::from(dir);
        let secret = Secret::load(&brick::BrickDir::new(&dir).secret()).expect("secret");
        let b = InBrick::start(&dir, &secret, listen).await;
        println!("listening on {}", b.addr);
        std::future::pending::<()>().await;
    });
}

/// Waits (polling; no deadline on correctness, just a cap) until `f`.
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting for {what}");
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    r.fill_bytes(&mut v);
    v
}
